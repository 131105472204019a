//! Hashing for the connection table's integer keys (connection ids, pids and fds).
//!
//! The standard library's SipHash resists hash flooding by outside input; these keys come
//! from the kernel, not from the network, and with SipHash the table's lookups were an
//! eighth of the agent's CPU per record. A multiply-and-rotate per word spreads the
//! connection id's counter bits (its low 12 bits are a CPU number, the next a slot) over
//! the whole hash.

use std::{
    collections::HashMap,
    hash::{BuildHasherDefault, Hasher},
};

pub type IdBuildHasher = BuildHasherDefault<IdHasher>;
pub type IdMap<K, V> = HashMap<K, V, IdBuildHasher>;

#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

/// 2^64 / φ, odd: multiplying by it moves every input bit into the high bits.
const SPREAD: u64 = 0x9e37_79b9_7f4a_7c15;

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(26) ^ n).wrapping_mul(SPREAD);
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_i32(&mut self, n: i32) {
        self.write_u64(n as u32 as u64);
    }

    fn finish(&self) -> u64 {
        // hashbrown takes the bucket from the low bits and a tag from the top 7: fold
        // the high half, where the multiply put the entropy, into the low.
        self.0 ^ (self.0 >> 32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn connection_ids_of_one_cpu_spread_over_buckets() {
        // Ids as the kernel makes them: a per-CPU counter above a 12-bit CPU number.
        let build = IdBuildHasher::default();
        let mut buckets = [0u32; 64];
        for n in 0..64_000u64 {
            let id = (n << 12) | 1;
            buckets[(build.hash_one(id) & 63) as usize] += 1;
        }
        // 1,000 per bucket if even; allow a tenth either way.
        assert!(
            buckets.iter().all(|&b| (900..=1100).contains(&b)),
            "{buckets:?}"
        );
    }

    #[test]
    fn pid_fd_pairs_are_told_apart() {
        let build = IdBuildHasher::default();
        let mut seen = std::collections::HashSet::new();
        for pid in 1..200u32 {
            for fd in 0..200i32 {
                assert!(seen.insert(build.hash_one((pid, fd))), "{pid} {fd}");
            }
        }
    }
}
