//! Builds complete v2 record batches: for tests, clients and the broker's own
//! control batches.

use bytes::Bytes;

use crate::compression::{self, Compression, CompressionError};
use crate::record::encode_record;
use crate::record_batch::{
    Attributes, BatchHeader, LOG_OVERHEAD, MAGIC_V2, NO_PARTITION_LEADER_EPOCH, NO_PRODUCER_EPOCH,
    NO_PRODUCER_ID, NO_SEQUENCE, NO_TIMESTAMP, RECORD_BATCH_OVERHEAD, TimestampType, update_crc,
};

/// Accumulates records, then [`RecordBatchBuilder::build`]s one batch with a
/// correct header and CRC32C, compressed as asked.
#[derive(Debug, Clone)]
pub struct RecordBatchBuilder {
    compression: Compression,
    level: Option<i32>,
    base_offset: i64,
    partition_leader_epoch: i32,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    attributes: Attributes,
    /// Encoded records, uncompressed.
    records: Vec<u8>,
    count: i32,
    base_timestamp: Option<i64>,
    max_timestamp: i64,
    next_offset_delta: i32,
}

impl RecordBatchBuilder {
    pub fn new(compression: Compression) -> Self {
        Self {
            compression,
            level: None,
            base_offset: 0,
            partition_leader_epoch: NO_PARTITION_LEADER_EPOCH,
            producer_id: NO_PRODUCER_ID,
            producer_epoch: NO_PRODUCER_EPOCH,
            base_sequence: NO_SEQUENCE,
            attributes: Attributes::default().with_compression(compression),
            records: Vec::new(),
            count: 0,
            base_timestamp: None,
            max_timestamp: NO_TIMESTAMP,
            next_offset_delta: 0,
        }
    }

    #[must_use]
    pub fn base_offset(mut self, base_offset: i64) -> Self {
        self.base_offset = base_offset;
        self
    }

    #[must_use]
    pub fn partition_leader_epoch(mut self, epoch: i32) -> Self {
        self.partition_leader_epoch = epoch;
        self
    }

    /// Idempotent or transactional producer fields.
    #[must_use]
    pub fn producer(mut self, producer_id: i64, producer_epoch: i16, base_sequence: i32) -> Self {
        self.producer_id = producer_id;
        self.producer_epoch = producer_epoch;
        self.base_sequence = base_sequence;
        self
    }

    #[must_use]
    pub fn transactional(mut self, on: bool) -> Self {
        self.attributes = self.attributes.with_transactional(on);
        self
    }

    #[must_use]
    pub fn control(mut self, on: bool) -> Self {
        self.attributes = self.attributes.with_control(on);
        self
    }

    #[must_use]
    pub fn timestamp_type(mut self, timestamp_type: TimestampType) -> Self {
        self.attributes = self.attributes.with_timestamp_type(timestamp_type);
        self
    }

    #[must_use]
    pub fn compression_level(mut self, level: Option<i32>) -> Self {
        self.level = level;
        self
    }

    /// Adds a record at the next offset.
    pub fn push(
        &mut self,
        timestamp_ms: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&str, Option<&[u8]>)],
    ) {
        self.push_with_offset_delta(self.next_offset_delta, timestamp_ms, key, value, headers);
    }

    /// Adds a record at an explicit offset delta (at or above the next one):
    /// compacted batches keep their original offsets and have gaps.
    pub fn push_with_offset_delta(
        &mut self,
        offset_delta: i32,
        timestamp_ms: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&str, Option<&[u8]>)],
    ) {
        let offset_delta = offset_delta.max(self.next_offset_delta);
        let base_timestamp = *self.base_timestamp.get_or_insert(timestamp_ms);
        encode_record(
            &mut self.records,
            offset_delta,
            timestamp_ms.wrapping_sub(base_timestamp),
            key,
            value,
            headers,
        );
        self.max_timestamp = self.max_timestamp.max(timestamp_ms);
        self.count += 1;
        self.next_offset_delta = offset_delta + 1;
    }

    /// Records added so far.
    pub fn len(&self) -> usize {
        usize::try_from(self.count).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Size of the batch if built without compression.
    pub fn estimated_size(&self) -> usize {
        RECORD_BATCH_OVERHEAD + self.records.len()
    }

    /// The finished batch.
    pub fn build(self) -> Result<Bytes, CompressionError> {
        let mut batch = vec![0u8; RECORD_BATCH_OVERHEAD];
        compression::compress(self.compression, self.level, &self.records, &mut batch)?;
        let batch_length =
            i32::try_from(batch.len() - LOG_OVERHEAD).map_err(|_| CompressionError::TooLarge {
                max: i32::MAX as usize,
            })?;
        let header = BatchHeader {
            base_offset: self.base_offset,
            batch_length,
            partition_leader_epoch: self.partition_leader_epoch,
            magic: MAGIC_V2,
            crc: 0,
            attributes: self.attributes,
            last_offset_delta: (self.next_offset_delta - 1).max(0),
            base_timestamp: self.base_timestamp.unwrap_or(NO_TIMESTAMP),
            max_timestamp: self.max_timestamp,
            producer_id: self.producer_id,
            producer_epoch: self.producer_epoch,
            base_sequence: self.base_sequence,
            record_count: self.count,
        };
        header.write_to(&mut batch);
        update_crc(&mut batch);
        Ok(Bytes::from(batch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{ControlRecordType, EndTxnMarker, decode_records, records};
    use crate::record_batch::validate_batch;

    #[test]
    fn builds_valid_batches_that_decode_for_every_codec() {
        for codec in Compression::ALL {
            for (count, value_len) in [(1, 5), (1000, 20), (1, 1 << 20)] {
                let mut builder = RecordBatchBuilder::new(codec).producer(42, 3, 7);
                for i in 0..count {
                    let value = vec![(i % 256) as u8; value_len];
                    let key = (i % 3 != 0).then(|| format!("key-{i}"));
                    builder.push(
                        1_000 + i as i64,
                        key.as_deref().map(str::as_bytes),
                        (i % 5 != 0).then_some(&value[..]),
                        &[("dup", Some(b"1")), ("dup", None), ("x", Some(b"2"))],
                    );
                }
                let batch = builder.build().unwrap();
                let header = validate_batch(&batch).unwrap();
                assert_eq!(header.compression(), Some(codec));
                assert_eq!(header.record_count, count as i32);
                assert_eq!(header.last_offset_delta, count as i32 - 1);
                assert_eq!(header.base_timestamp, 1_000);
                assert_eq!(header.max_timestamp, 1_000 + count as i64 - 1);
                assert_eq!(
                    (
                        header.producer_id,
                        header.producer_epoch,
                        header.base_sequence
                    ),
                    (42, 3, 7)
                );
                let decoded = decode_records(&batch, 1 << 30).unwrap();
                assert_eq!(decoded.len(), count);
                for (i, r) in decoded.iter().enumerate() {
                    assert_eq!(r.offset(&header), i as i64);
                    assert_eq!(r.timestamp(&header), 1_000 + i as i64);
                    assert_eq!(
                        r.key.as_deref(),
                        (i % 3 != 0)
                            .then(|| format!("key-{i}"))
                            .as_deref()
                            .map(str::as_bytes)
                    );
                    assert_eq!(
                        r.value.as_ref().map(|v| v.len()),
                        (i % 5 != 0).then_some(value_len)
                    );
                    let keys: Vec<&str> = r.headers.iter().map(|h| h.key.as_str()).collect();
                    assert_eq!(keys, ["dup", "dup", "x"]);
                    assert_eq!(r.headers[1].value, None);
                }
            }
        }
    }

    /// A batch computed by hand from Kafka's format description: one record,
    /// key "k", value "v", no headers, base timestamp 0x0102030405.
    #[test]
    fn golden_uncompressed_batch() {
        let mut builder = RecordBatchBuilder::new(Compression::None);
        builder.push(0x01_0203_0405, Some(b"k"), Some(b"v"), &[]);
        let batch = builder.build().unwrap();
        #[rustfmt::skip]
        let expected_without_crc: Vec<u8> = vec![
            0, 0, 0, 0, 0, 0, 0, 0,        // base offset 0
            0, 0, 0, 0x3a,                 // batch length: 49 header bytes + 9 record bytes
            0xff, 0xff, 0xff, 0xff,        // partition leader epoch -1
            2,                             // magic
            0, 0, 0, 0,                    // crc (checked separately)
            0, 0,                          // attributes: no compression, CreateTime
            0, 0, 0, 0,                    // last offset delta 0
            0, 0, 0, 1, 2, 3, 4, 5,        // base timestamp
            0, 0, 0, 1, 2, 3, 4, 5,        // max timestamp
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // producer id -1
            0xff, 0xff,                    // producer epoch -1
            0xff, 0xff, 0xff, 0xff,        // base sequence -1
            0, 0, 0, 1,                    // record count 1
            0x10,                          // record length 8 (zig-zag), then 8 bytes:
            0,                             // attributes
            0,                             // timestamp delta 0
            0,                             // offset delta 0
            0x02, b'k',                    // key length 1, "k"
            0x02, b'v',                    // value length 1, "v"
            0,                             // no headers
        ];
        let mut without_crc = batch.to_vec();
        without_crc[17..21].fill(0);
        assert_eq!(without_crc, expected_without_crc);
        assert_eq!(
            u32::from_be_bytes(batch[17..21].try_into().unwrap()),
            crc32c::crc32c(&batch[21..])
        );
    }

    #[test]
    fn control_batches_carry_markers() {
        let marker = EndTxnMarker {
            commit: true,
            coordinator_epoch: 9,
        };
        let mut builder = RecordBatchBuilder::new(Compression::None)
            .producer(5, 1, -1)
            .transactional(true)
            .control(true);
        builder.push(
            77,
            Some(&marker.record_type().key()),
            Some(&marker.value()),
            &[],
        );
        let batch = builder.build().unwrap();
        let header = validate_batch(&batch).unwrap();
        assert!(header.is_control() && header.is_transactional());
        let record = records(&batch, 1024).unwrap().next().unwrap().unwrap();
        let key = record.key.unwrap();
        assert_eq!(
            ControlRecordType::parse(&key),
            Some(ControlRecordType::Commit)
        );
        assert_eq!(
            EndTxnMarker::decode(&key, &record.value.unwrap()).unwrap(),
            marker
        );
    }

    #[test]
    fn hostile_record_sections_are_errors() {
        let mut builder = RecordBatchBuilder::new(Compression::None);
        builder.push(1, Some(b"key"), Some(b"value"), &[("h", Some(b"v"))]);
        let good = builder.build().unwrap();
        // Every truncation and every single-byte corruption of the records
        // either decodes or errors; none panics. Count mismatch is an error.
        for cut in RECORD_BATCH_OVERHEAD..good.len() {
            let mut bad = good[..cut].to_vec();
            let len = i32::try_from(bad.len() - LOG_OVERHEAD).unwrap();
            bad[8..12].copy_from_slice(&len.to_be_bytes());
            assert!(
                decode_records(&Bytes::from(bad), 1 << 20).is_err(),
                "cut at {cut}"
            );
        }
        for i in RECORD_BATCH_OVERHEAD..good.len() {
            for v in [0x00, 0x7f, 0x80, 0xff] {
                let mut bad = good.to_vec();
                bad[i] = v;
                let _ = decode_records(&Bytes::from(bad), 1 << 20);
            }
        }
        let mut extra_count = good.to_vec();
        extra_count[57..61].copy_from_slice(&2i32.to_be_bytes());
        assert!(matches!(
            decode_records(&Bytes::from(extra_count), 1 << 20),
            Err(crate::record::RecordError::CountMismatch {
                expected: 2,
                found: 1
            })
        ));
    }
}
