//! Kafka's default partitioner for keyed records (Java's `Utils.murmur2`), so that
//! dev-materiels can tell which of its tasks owns an order that arrives over HTTP. The producers
//! of this project set `partitioner=murmur2_random`, which hashes keys the same way.

/// The partition of `key` among `partitions`, as Kafka's Java client and librdkafka's
/// `murmur2_random` partitioner compute it.
pub fn partition_for(key: &[u8], partitions: i32) -> i32 {
    if partitions <= 0 {
        return 0;
    }
    ((murmur2(key) & 0x7fff_ffff) as i32) % partitions
}

/// MurmurHash2, 32 bits, with Kafka's seed.
pub fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = SEED ^ (data.len() as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_java_client() {
        // Values of org.apache.kafka.common.utils.Utils.murmur2, as Akka's Kafka sharding tests
        // record them.
        for (key, expected) in
            [("1", -1993445489), ("12", 126087238), ("123", -267702483), ("1234", -1614185708), ("12345", -1188365604)]
        {
            assert_eq!(murmur2(key.as_bytes()) as i32, expected, "murmur2({key:?})");
        }
        assert_eq!(partition_for(b"1", 4), ((-1993445489i32 & 0x7fff_ffff) % 4));
    }
}
