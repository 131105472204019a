//! The CPUs' ring buffers of records, read in place and merged into one time order.
//!
//! The kernel side writes each record into the ring of the CPU it runs on (one ring for
//! all CPUs made every record take a lock and move cache lines between CPUs); a budget
//! too small for a ring per CPU gives neighbouring CPUs a shared one. Within a ring,
//! records are in the order their programs took their place. Across rings, a connection's records
//! can sit in different rings (a thread that moved between CPUs, a close handled on
//! another CPU), and its parser needs them in the order they happened: a request before
//! its response. So a drain takes what every ring holds, and hands over in time order
//! (`exit_ns` of each record's header) only what no ring can still precede:
//!
//! - a record is timestamped a moment before it is written, so a record with an older
//!   timestamp than one already read can still be on its way; [`COMMIT_MARGIN_NS`] bounds
//!   that moment generously;
//! - a ring's later records are not older than its newest one read, less that moment
//!   (another CPU sharing the ring may have taken its timestamp first).
//!
//! The watermark is the oldest of those bounds over all rings; what is newer stays in its
//! ring for the next drain. A causally earlier record (the request a thread read before
//! it wrote the response) was written before the later one, so it is never left behind.
//!
//! The rings are mapped as the kernel lays them out (`kernel/bpf/ringbuf.c`): a consumer
//! page the reader writes, then a read-only producer page followed by the data pages.
//! The kernel offers the data pages twice in a row, so that a record that wraps is
//! contiguous; the agent maps them once (the second mapping would count every ring page
//! twice in its resident memory: 16 MiB by default) and copies the rare wrapped record.

use std::{
    os::fd::{AsFd, AsRawFd, BorrowedFd},
    ptr::NonNull,
    sync::atomic::{AtomicU32, AtomicU64, Ordering},
};

use agent_common::EventHeader;
use aya::maps::MapData;

/// How long a record may take from its timestamp to being in its ring. A program runs
/// for a microsecond or less; an interrupt in the middle adds tens. Records newer than
/// this wait for the next drain; a longer margin would hold back more of a burst and
/// fill its ring sooner.
pub const COMMIT_MARGIN_NS: u64 = 250_000;

/// The kernel's record header: length with flags, page offset.
const RECORD_HEADER: u64 = 8;
const BUSY_BIT: u32 = 1 << 31;
const DISCARD_BIT: u32 = 1 << 30;

/// Where a record's timestamp sits.
const EXIT_NS_AT: usize = std::mem::offset_of!(EventHeader, exit_ns);

/// Why a ring could not be mapped.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    #[error("cannot read the ring buffer's size")]
    Info(#[source] aya::maps::MapError),
    #[error("cannot map the ring buffer's {part}")]
    Map {
        part: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// One CPU's ring, mapped.
struct Ring {
    map: MapData,
    consumer: NonNull<AtomicU64>,
    /// The producer page followed by the data.
    producer: NonNull<AtomicU64>,
    data: *const u8,
    mask: u64,
    /// The reader's position: records before it were handed over.
    position: u64,
    page: usize,
}

// SAFETY: the mappings belong to the ring alone and live as long as it does; the
// positions are atomics shared with the kernel only.
unsafe impl Send for Ring {}

impl Ring {
    fn new(map: MapData) -> Result<Ring, RingError> {
        let size = map.info().map_err(RingError::Info)?.max_entries() as usize;
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let fd = map.fd().as_fd().as_raw_fd();
        let mmap = |len: usize, prot: i32, offset: usize, part: &'static str| {
            // SAFETY: a fresh shared mapping of the map's fd; the kernel checks the range.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    prot,
                    libc::MAP_SHARED,
                    fd,
                    offset as libc::off_t,
                )
            };
            if p == libc::MAP_FAILED {
                Err(RingError::Map {
                    part,
                    source: std::io::Error::last_os_error(),
                })
            } else {
                Ok(p)
            }
        };
        let consumer = mmap(page, libc::PROT_READ | libc::PROT_WRITE, 0, "consumer page")?;
        let producer = match mmap(page + size, libc::PROT_READ, page, "data pages") {
            Ok(p) => p,
            Err(e) => {
                // SAFETY: mapped just above, used nowhere.
                unsafe { libc::munmap(consumer, page) };
                return Err(e);
            }
        };
        let consumer = NonNull::new(consumer.cast::<AtomicU64>()).expect("mmap succeeded");
        let producer = NonNull::new(producer.cast::<AtomicU64>()).expect("mmap succeeded");
        // SAFETY: the consumer page holds the consumer position at offset 0.
        let position = unsafe { consumer.as_ref() }.load(Ordering::Acquire);
        Ok(Ring {
            map,
            consumer,
            producer,
            // SAFETY: the data follows the producer page within the mapping.
            data: unsafe { producer.as_ptr().cast::<u8>().add(page) },
            mask: size as u64 - 1,
            position,
            page,
        })
    }

    fn producer_position(&self) -> u64 {
        // SAFETY: the producer page holds the producer position at offset 0.
        unsafe { self.producer.as_ref() }.load(Ordering::Acquire)
    }

    /// The length and flags of the record at `position`.
    fn header_at(&self, position: u64) -> u32 {
        // SAFETY: `position` is below the producer position, so a record header is there;
        // headers are 8-byte aligned and the ring's size is a multiple of 8, so a header
        // never wraps.
        unsafe {
            let header = self.data.add((position & self.mask) as usize);
            (*header.cast::<AtomicU32>()).load(Ordering::Acquire)
        }
    }

    /// `len` bytes of the record at `position` from `offset` into its sample: in place,
    /// or copied into `scratch` where they wrap around the ring's end.
    fn bytes_at<'a>(
        &'a self,
        position: u64,
        offset: usize,
        len: usize,
        scratch: &'a mut Vec<u8>,
    ) -> &'a [u8] {
        let size = self.mask as usize + 1;
        let start = ((position + RECORD_HEADER) as usize + offset) & self.mask as usize;
        // SAFETY: a written record's bytes are below the producer position, within the
        // one mapping of the data pages (a record is smaller than the ring).
        unsafe {
            if start + len <= size {
                std::slice::from_raw_parts(self.data.add(start), len)
            } else {
                let first = size - start;
                scratch.clear();
                scratch.extend_from_slice(std::slice::from_raw_parts(self.data.add(start), first));
                scratch.extend_from_slice(std::slice::from_raw_parts(self.data, len - first));
                scratch
            }
        }
    }

    /// Hands the space up to `position` back to the kernel.
    fn release(&mut self, position: u64) {
        self.position = position;
        // SAFETY: the consumer page holds the consumer position at offset 0.
        unsafe { self.consumer.as_ref() }.store(position, Ordering::Release);
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: both were mapped in `new` with these lengths.
        unsafe {
            libc::munmap(self.consumer.as_ptr().cast(), self.page);
            libc::munmap(
                self.producer.as_ptr().cast(),
                self.page + self.mask as usize + 1,
            );
        }
    }
}

/// A record found in a ring: when it happened, where it is.
#[derive(Clone, Copy)]
struct Found {
    exit_ns: u64,
    ring: u32,
    position: u64,
    /// The position after it.
    next: u64,
}

/// Keeps of `found` (every ring's records, each ring's in ring order) what can be handed
/// over below `watermark`, in time order: each ring's records up to its first one past the
/// watermark (that one holds back the rest of its ring), sorted by time, ring order kept
/// among equal times.
fn settle(found: &mut Vec<Found>, held_back: &mut [bool], watermark: u64) {
    held_back.iter_mut().for_each(|h| *h = false);
    found.retain(|f| {
        let keep = !held_back[f.ring as usize] && f.exit_ns <= watermark;
        if !keep {
            held_back[f.ring as usize] = true;
        }
        keep
    });
    found.sort_by_key(|f| (f.exit_ns, f.ring, f.position));
}

/// Every CPU's ring, read as one.
pub struct Rings {
    rings: Vec<Ring>,
    /// Reused between drains.
    found: Vec<Found>,
    ends: Vec<u64>,
    held_back: Vec<bool>,
    /// A wrapped record, copied.
    scratch: Vec<u8>,
}

impl Rings {
    pub fn new(maps: Vec<MapData>) -> Result<Rings, RingError> {
        let rings = maps
            .into_iter()
            .map(Ring::new)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Rings {
            ends: vec![0; rings.len()],
            held_back: vec![false; rings.len()],
            rings,
            found: Vec::new(),
            scratch: Vec::new(),
        })
    }

    /// The rings' file descriptors, to wait on.
    pub fn fds(&self) -> impl Iterator<Item = BorrowedFd<'_>> {
        self.rings.iter().map(|r| r.map.fd().as_fd())
    }

    /// Bytes of all rings together.
    pub fn capacity(&self) -> u64 {
        self.rings.iter().map(|r| r.mask + 1).sum()
    }

    /// Bytes written and not yet handed over, over all rings.
    pub fn waiting(&self) -> u64 {
        self.rings
            .iter()
            .map(|r| r.producer_position().saturating_sub(r.position))
            .sum()
    }

    /// Hands `handle` every record that no ring can still precede, in time order, and
    /// frees their space. `now_ns` is the monotonic clock read before the drain. Returns
    /// how many records were handed over.
    pub fn drain(&mut self, now_ns: u64, mut handle: impl FnMut(&[u8])) -> usize {
        self.found.clear();
        let settled = now_ns.saturating_sub(COMMIT_MARGIN_NS);
        let mut watermark = u64::MAX;
        for (index, ring) in self.rings.iter().enumerate() {
            let end = ring.producer_position();
            let mut position = ring.position;
            let mut newest = 0;
            while position < end {
                let len = ring.header_at(position);
                if len & BUSY_BIT != 0 {
                    // Reserved, not yet written: it and what follows wait.
                    break;
                }
                let sample = (len & !(BUSY_BIT | DISCARD_BIT)) as usize;
                let next = position + ((sample as u64 + RECORD_HEADER + 7) & !7);
                // A discarded record (the kernel side discards none) passes at once, as
                // does one too short to be a record (the decoder reports it).
                let exit_ns = if len & DISCARD_BIT == 0 && sample >= EXIT_NS_AT + 8 {
                    let b = ring.bytes_at(position, EXIT_NS_AT, 8, &mut self.scratch);
                    u64::from_ne_bytes(b.try_into().expect("8 bytes"))
                } else {
                    0
                };
                newest = newest.max(exit_ns);
                self.found.push(Found {
                    exit_ns,
                    ring: index as u32,
                    position,
                    next,
                });
                position = next;
            }
            // Later records of this ring are no older than its newest less the commit
            // margin, and no older than `settled` (or they would be here already).
            watermark = watermark.min(newest.saturating_sub(COMMIT_MARGIN_NS).max(settled));
        }
        settle(&mut self.found, &mut self.held_back, watermark);
        let mut taken = 0;
        self.ends.iter_mut().for_each(|e| *e = 0);
        for f in &self.found {
            let ring = &self.rings[f.ring as usize];
            let len = ring.header_at(f.position);
            if len & DISCARD_BIT == 0 {
                let sample = (len & !(BUSY_BIT | DISCARD_BIT)) as usize;
                handle(ring.bytes_at(f.position, 0, sample, &mut self.scratch));
                taken += 1;
            }
            let end = &mut self.ends[f.ring as usize];
            *end = (*end).max(f.next);
        }
        for (ring, &end) in self.rings.iter_mut().zip(&self.ends) {
            if end > ring.position {
                ring.release(end);
            }
        }
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(ring: u32, times: &[u64]) -> Vec<Found> {
        times
            .iter()
            .enumerate()
            .map(|(i, &exit_ns)| Found {
                exit_ns,
                ring,
                position: i as u64 * 64,
                next: (i as u64 + 1) * 64,
            })
            .collect()
    }

    fn order(found: &[Found]) -> Vec<(u32, u64)> {
        found.iter().map(|f| (f.ring, f.exit_ns)).collect()
    }

    #[test]
    fn rings_merge_into_time_order_below_the_watermark() {
        let mut all = found(0, &[10, 30, 50]);
        all.extend(found(1, &[20, 40, 60]));
        let mut held = vec![false; 2];
        settle(&mut all, &mut held, 45);
        assert_eq!(order(&all), [(0, 10), (1, 20), (0, 30), (1, 40)]);
        assert_eq!(held, [true, true]);
    }

    #[test]
    fn a_record_past_the_watermark_holds_back_the_rest_of_its_ring() {
        // Ring 0's second record is past the watermark; its third (older, written later
        // by a nested program) waits with it, so the ring is released as a prefix.
        let mut all = found(0, &[10, 90, 15]);
        all.extend(found(1, &[12]));
        let mut held = vec![false; 2];
        settle(&mut all, &mut held, 50);
        assert_eq!(order(&all), [(0, 10), (1, 12)]);
    }

    #[test]
    fn equal_times_keep_ring_order() {
        let mut all = found(1, &[5, 5]);
        all.extend(found(0, &[5]));
        let mut held = vec![false; 2];
        settle(&mut all, &mut held, u64::MAX);
        let positions: Vec<(u32, u64)> = all.iter().map(|f| (f.ring, f.position)).collect();
        assert_eq!(positions, [(0, 0), (1, 0), (1, 64)]);
    }
}
