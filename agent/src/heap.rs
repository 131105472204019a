//! Giving freed heap back to the kernel.
//!
//! glibc's allocator keeps what the program frees for its next allocations and returns
//! it to the kernel only from the top of each arena. The agent allocates in bursts that it
//! then frees for good: start-up (the kernel's BTF, the eBPF object, the verifier's log)
//! left 14 MiB of free heap resident at rest, 13 of the 44 MiB an idle agent held; a
//! scrape at the series limits builds its text (tens of MiB) and drops it. Trimming after
//! start-up and then every [`TRIM_INTERVAL`] returns those pages.

use std::time::Duration;

/// How often freed heap is returned. A trim walks every arena under its lock (a few
/// milliseconds at the series limits), so it is not done per allocation or per scrape.
pub const TRIM_INTERVAL: Duration = Duration::from_secs(10);

/// Returns the free pages of every malloc arena to the kernel (a no-op where the C
/// library is not glibc).
pub fn trim() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim takes no pointers and only rearranges the allocator's free
    // memory, under the allocator's own locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Trims every [`TRIM_INTERVAL`], off the async worker threads, until the runtime stops.
pub async fn trim_periodically() {
    let mut tick = tokio::time::interval(TRIM_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if tokio::task::spawn_blocking(trim).await.is_err() {
            return;
        }
    }
}
