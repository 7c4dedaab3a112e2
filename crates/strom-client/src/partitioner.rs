//! The Java client's default partitioner (`BuiltInPartitioner`, Kafka 3.3+).
//!
//! A record with a key goes to `toPositive(murmur2(key)) % partitions`, the
//! same partition every Java, librdkafka (`murmur2_random`) and Strom
//! producer picks for that key. A record without a key sticks to one
//! partition until about `batch.size` bytes went there, then moves to
//! another chosen at random (KIP-794's uniform sticky partitioning, without
//! its adaptive weighting by queue sizes).

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Kafka's murmur2 seed (`Utils.murmur2`).
const SEED: u32 = 0x9747_b28c;
/// Murmur2's mixing constant and shift.
const M: u32 = 0x5bd1_e995;
const R: u32 = 24;

/// Kafka's `Utils.murmur2`: 32-bit MurmurHash2 of `data` with Kafka's seed,
/// as a Java `int`.
pub fn murmur2(data: &[u8]) -> i32 {
    // Java's int arithmetic wraps, and `>>>` is a logical shift: u32 does
    // both. Java hashes the length as an int; a key cannot reach 2 GiB in
    // Kafka's protocol, so the truncation never happens.
    #[allow(clippy::cast_possible_truncation)]
    let length = data.len() as u32;
    let mut h = SEED ^ length;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        for (i, byte) in tail.iter().enumerate().rev() {
            h ^= u32::from(*byte) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// Kafka's `Utils.toPositive`: clears the sign bit (not `abs`, which
/// overflows on `i32::MIN`).
pub fn to_positive(n: i32) -> i32 {
    n & 0x7fff_ffff
}

/// The partition of a keyed record among `partitions` (at least 1).
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    to_positive(murmur2(key)).unsigned_abs() % partitions.max(1)
}

/// Kafka's default `batch.size`: how many bytes a keyless stream sends to
/// one partition before it moves on.
pub const DEFAULT_BATCH_SIZE: usize = 16_384;

/// Chooses partitions as the Java client's default partitioner does.
#[derive(Debug)]
pub struct DefaultPartitioner {
    batch_size: usize,
    /// The sticky partition of keyless records and the bytes sent to it.
    sticky: Option<(u32, usize)>,
    rng: SmallRng,
}

impl DefaultPartitioner {
    /// A partitioner moving keyless records on after `batch_size` bytes.
    pub fn new(batch_size: usize) -> Self {
        Self {
            batch_size: batch_size.max(1),
            sticky: None,
            rng: SmallRng::seed_from_u64(seed()),
        }
    }

    /// The partition for a record of `size` bytes with `key` among
    /// `partitions`.
    pub fn partition(&mut self, key: Option<&[u8]>, size: usize, partitions: u32) -> u32 {
        let partitions = partitions.max(1);
        if let Some(key) = key {
            return partition_for_key(key, partitions);
        }
        let (partition, sent) = match self.sticky {
            Some((p, sent)) if p < partitions && sent < self.batch_size => (p, sent),
            previous => (self.next_sticky(previous.map(|(p, _)| p), partitions), 0),
        };
        self.sticky = Some((partition, sent.saturating_add(size)));
        partition
    }

    /// A random partition other than `previous` (when there is a choice).
    fn next_sticky(&mut self, previous: Option<u32>, partitions: u32) -> u32 {
        match previous {
            Some(p) if partitions > 1 && p < partitions => {
                let other = self.rng.random_range(0..partitions - 1);
                if other >= p { other + 1 } else { other }
            }
            _ => self.rng.random_range(0..partitions),
        }
    }
}

/// A seed that differs between producers: the clock's nanoseconds. The
/// choice only spreads keyless records, it need not be unpredictable.
fn seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| {
            d.as_secs().rotate_left(32) ^ u64::from(d.subsec_nanos())
        })
}

impl Default for DefaultPartitioner {
    fn default() -> Self {
        Self::new(DEFAULT_BATCH_SIZE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kafka's own vectors (`UtilsTest.testMurmur2`, generated with the Java
    /// client).
    const JAVA_VECTORS: &[(&[u8], i32)] = &[
        (b"21", -973_932_308),
        (b"foobar", -790_332_482),
        (&[12, 42, 56, 24, 109, 111], 274_204_207),
        (b"a-little-bit-long-string", -985_981_536),
        (b"a-little-bit-longer-string", -1_486_304_829),
        (
            b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
            -58_897_971,
        ),
        (b"abc", 479_470_107),
    ];

    #[test]
    fn murmur2_is_the_java_clients() {
        for (key, hash) in JAVA_VECTORS {
            assert_eq!(murmur2(key), *hash, "{}", String::from_utf8_lossy(key));
        }
    }

    #[test]
    fn keyed_records_go_where_the_java_client_puts_them() {
        // toPositive(-790332482) = 1357151166, and 1357151166 % 10 = 6.
        assert_eq!(partition_for_key(b"foobar", 10), 6);
        assert_eq!(to_positive(i32::MIN), 0);
        let mut partitioner = DefaultPartitioner::default();
        for (key, hash) in JAVA_VECTORS {
            for n in 1..=12u32 {
                let want = u32::try_from(hash & 0x7fff_ffff).unwrap() % n;
                assert_eq!(partitioner.partition(Some(key), 100, n), want);
            }
        }
    }

    #[test]
    fn keyless_records_stick_for_a_batch_then_move() {
        let mut partitioner = DefaultPartitioner::new(1000);
        let first = partitioner.partition(None, 100, 6);
        for _ in 0..9 {
            assert_eq!(
                partitioner.partition(None, 100, 6),
                first,
                "sticks for 1000 bytes"
            );
        }
        let next = partitioner.partition(None, 100, 6);
        assert_ne!(next, first, "moves to another partition after a batch");
        // Over many batches every partition gets some.
        let mut seen = [false; 6];
        for _ in 0..10_000 {
            seen[partitioner.partition(None, 1000, 6) as usize] = true;
        }
        assert!(seen.iter().all(|s| *s));
        // One partition: always it; a shrunk topic: never out of range.
        assert_eq!(partitioner.partition(None, 1, 1), 0);
        assert!(partitioner.partition(None, 1, 2) < 2);
    }
}
