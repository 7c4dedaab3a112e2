//! Builds complete v2 record batches: for tests, clients and the broker's own
//! control batches.
//!
//! The header follows Kafka's `MemoryRecordsBuilder`: the base timestamp is
//! the first record's, timestamp deltas are relative to it, the max timestamp
//! is the largest record timestamp, the last offset delta is the last record's.

use bytes::Bytes;

use crate::compression::{self, Compression, CompressionError};
use crate::record::{EndTxnMarker, encode_record};
use crate::record_batch::{
    Attributes, BatchHeader, LOG_OVERHEAD, MAGIC_V2, NO_PARTITION_LEADER_EPOCH, NO_PRODUCER_EPOCH,
    NO_PRODUCER_ID, NO_SEQUENCE, NO_TIMESTAMP, RECORD_BATCH_OVERHEAD, TimestampType, update_crc,
};

/// Accumulates records, then [`RecordBatchBuilder::build`]s one batch with a
/// correct header and CRC32C, compressed as asked.
#[derive(Debug, Clone)]
pub struct RecordBatchBuilder {
    compression: Compression,
    /// Codec level; `None` is the codec's (Kafka's) default.
    level: Option<i32>,
    base_offset: i64,
    partition_leader_epoch: i32,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    attributes: Attributes,
    /// The batch so far: room for the header, then the records, uncompressed.
    /// An uncompressed batch is built in place.
    buf: Vec<u8>,
    count: i32,
    /// The first record's timestamp.
    base_timestamp: Option<i64>,
    max_timestamp: i64,
    /// The last record's offset delta.
    last_offset_delta: Option<i32>,
}

impl RecordBatchBuilder {
    /// An empty batch at base offset 0, partition leader epoch -1, without
    /// producer id, CreateTime.
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
            buf: vec![0; RECORD_BATCH_OVERHEAD],
            count: 0,
            base_timestamp: None,
            max_timestamp: NO_TIMESTAMP,
            last_offset_delta: None,
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

    /// Sets the timestamp-type bit. The max timestamp stays the largest pushed
    /// timestamp: push records at the append time to build a LogAppendTime
    /// batch as a broker stamps it.
    #[must_use]
    pub fn timestamp_type(mut self, timestamp_type: TimestampType) -> Self {
        self.attributes = self.attributes.with_timestamp_type(timestamp_type);
        self
    }

    /// The codec's level; `None` for its default. See [`compression::compress`].
    #[must_use]
    pub fn compression_level(mut self, level: Option<i32>) -> Self {
        self.level = level;
        self
    }

    /// Adds a record at the next offset: the offset delta after the last
    /// record's, 0 for the first.
    ///
    /// # Panics
    /// If the record is 2 GiB or larger, or the offset delta would pass `i32::MAX`.
    pub fn push(
        &mut self,
        timestamp_ms: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&str, Option<&[u8]>)],
    ) {
        let offset_delta = match self.last_offset_delta {
            None => 0,
            Some(last) => last.checked_add(1).expect("offset delta below i32::MAX"),
        };
        self.push_with_offset_delta(offset_delta, timestamp_ms, key, value, headers);
    }

    /// Adds a record at an explicit offset delta. Compacted batches keep their
    /// records' original offsets, so deltas may skip values, but they increase
    /// strictly (Kafka's builder refuses anything else too).
    ///
    /// # Panics
    /// If `offset_delta` is negative or not above the last record's, or the
    /// record is 2 GiB or larger.
    pub fn push_with_offset_delta(
        &mut self,
        offset_delta: i32,
        timestamp_ms: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&str, Option<&[u8]>)],
    ) {
        assert!(
            offset_delta >= 0
                && self
                    .last_offset_delta
                    .is_none_or(|last| offset_delta > last),
            "offset delta {offset_delta} after {:?}: deltas must increase from 0",
            self.last_offset_delta
        );
        let base_timestamp = *self.base_timestamp.get_or_insert(timestamp_ms);
        encode_record(
            &mut self.buf,
            offset_delta,
            timestamp_ms.wrapping_sub(base_timestamp),
            key,
            value,
            headers,
        );
        self.max_timestamp = self.max_timestamp.max(timestamp_ms);
        self.count += 1;
        self.last_offset_delta = Some(offset_delta);
    }

    /// Records pushed so far.
    pub fn len(&self) -> usize {
        usize::try_from(self.count).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Size of the batch built without compression, header included: what a
    /// producer compares with its batch size limit before it knows the
    /// compression ratio.
    pub fn estimated_size(&self) -> usize {
        self.buf.len()
    }

    /// The finished batch. An empty builder gives a valid header-only batch
    /// (record count 0, last offset delta 0, timestamps -1).
    ///
    /// Fails only if the compressor does, or the batch reaches 2 GiB.
    pub fn build(self) -> Result<Bytes, CompressionError> {
        let mut batch = if self.compression == Compression::None {
            self.buf
        } else {
            let records = &self.buf[RECORD_BATCH_OVERHEAD..];
            let mut out = Vec::with_capacity(RECORD_BATCH_OVERHEAD + records.len() / 2);
            out.resize(RECORD_BATCH_OVERHEAD, 0);
            compression::compress(self.compression, self.level, records, &mut out)?;
            out
        };
        let batch_length =
            i32::try_from(batch.len() - LOG_OVERHEAD).map_err(|_| CompressionError::TooLarge {
                max: usize::try_from(i32::MAX).unwrap_or(usize::MAX),
            })?;
        let header = BatchHeader {
            base_offset: self.base_offset,
            batch_length,
            partition_leader_epoch: self.partition_leader_epoch,
            magic: MAGIC_V2,
            crc: 0,
            attributes: self.attributes,
            last_offset_delta: self.last_offset_delta.unwrap_or(0),
            base_timestamp: self.base_timestamp.unwrap_or(NO_TIMESTAMP),
            max_timestamp: self.max_timestamp,
            producer_id: self.producer_id,
            producer_epoch: self.producer_epoch,
            base_sequence: self.base_sequence,
            record_count: self.count,
        };
        header.write_to(&mut batch);
        update_crc(&mut batch);
        debug_assert!(
            crate::record_batch::validate_batch(&batch).is_ok(),
            "built an invalid batch"
        );
        Ok(Bytes::from(batch))
    }
}

/// The control batch a partition leader appends when a transaction ends, as
/// Kafka's `MemoryRecords.withEndTransactionMarker`: uncompressed,
/// transactional and control, base sequence -1, one record holding `marker`
/// at `timestamp_ms`.
pub fn end_txn_marker_batch(
    base_offset: i64,
    timestamp_ms: i64,
    partition_leader_epoch: i32,
    producer_id: i64,
    producer_epoch: i16,
    marker: EndTxnMarker,
) -> Bytes {
    let mut builder = RecordBatchBuilder::new(Compression::None)
        .base_offset(base_offset)
        .partition_leader_epoch(partition_leader_epoch)
        .producer(producer_id, producer_epoch, NO_SEQUENCE)
        .transactional(true)
        .control(true);
    builder.push(
        timestamp_ms,
        Some(&marker.key()),
        Some(&marker.value()),
        &[],
    );
    match builder.build() {
        Ok(batch) => batch,
        // Uncompressed and 80 bytes: neither a codec nor the size can fail.
        Err(e) => unreachable!("a marker batch always builds: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::record::{ControlRecordType, RecordHeader, decode_records, records};
    use crate::record_batch::validate_batch;

    fn key_of(i: usize) -> Option<Vec<u8>> {
        (!i.is_multiple_of(3)).then(|| format!("key-{i}").into_bytes())
    }

    /// A value of `len` bytes that compresses somewhat, or `None` for every
    /// fifth record.
    fn value_of(i: usize, len: usize) -> Option<Vec<u8>> {
        (i % 5 != 4).then(|| (0..len).map(|j| ((i + j / 7) % 251) as u8).collect())
    }

    /// Timestamps that go up and down; the first (1009) is not the smallest.
    fn timestamp_of(i: usize) -> i64 {
        1_000 + ((i as i64 + 5) * 7) % 13
    }

    #[test]
    fn builds_valid_batches_that_decode_for_every_codec() {
        for codec in Compression::ALL {
            for (count, value_len) in [(1, 5), (1000, 20), (1, 1 << 20)] {
                let mut builder = RecordBatchBuilder::new(codec)
                    .base_offset(500)
                    .partition_leader_epoch(4)
                    .producer(42, 3, 7);
                for i in 0..count {
                    builder.push(
                        timestamp_of(i),
                        key_of(i).as_deref(),
                        value_of(i, value_len).as_deref(),
                        &[("dup", Some(b"1")), ("dup", None), ("x", Some(b""))],
                    );
                }
                assert_eq!(builder.len(), count);
                let estimated = builder.estimated_size();
                let batch = builder.build().unwrap();
                if codec == Compression::None {
                    assert_eq!(batch.len(), estimated);
                }
                let header = validate_batch(&batch).unwrap();
                assert_eq!(header.compression(), Some(codec));
                assert_eq!(header.timestamp_type(), TimestampType::CreateTime);
                assert!(!header.is_transactional() && !header.is_control());
                assert_eq!(header.base_offset, 500);
                assert_eq!(header.partition_leader_epoch, 4);
                assert_eq!(header.record_count, count as i32);
                assert_eq!(header.last_offset_delta, count as i32 - 1);
                assert_eq!(
                    header.base_timestamp, 1_009,
                    "the first record's, not the smallest"
                );
                let max = (0..count).map(timestamp_of).max().unwrap();
                assert_eq!(header.max_timestamp, max);
                assert_eq!(
                    (
                        header.producer_id,
                        header.producer_epoch,
                        header.base_sequence
                    ),
                    (42, 3, 7)
                );
                let decoded = decode_records(&batch, 2 << 20).unwrap();
                assert_eq!(decoded.len(), count);
                for (i, r) in decoded.iter().enumerate() {
                    assert_eq!(r.offset(&header), 500 + i as i64);
                    assert_eq!(r.sequence(&header), 7 + i as i32);
                    assert_eq!(r.timestamp(&header), timestamp_of(i));
                    assert_eq!(r.key.as_deref(), key_of(i).as_deref(), "{codec} {i}");
                    assert_eq!(r.value.as_deref(), value_of(i, value_len).as_deref());
                    assert_eq!(
                        r.headers,
                        [
                            RecordHeader {
                                key: "dup".into(),
                                value: Some(Bytes::from_static(b"1"))
                            },
                            RecordHeader {
                                key: "dup".into(),
                                value: None
                            },
                            RecordHeader {
                                key: "x".into(),
                                value: Some(Bytes::new())
                            },
                        ]
                    );
                }
            }
        }
    }

    #[test]
    fn uncompressed_records_are_slices_of_the_batch() {
        let mut builder = RecordBatchBuilder::new(Compression::None);
        builder.push(1, Some(b"key"), Some(b"value"), &[("h", Some(b"hv"))]);
        let batch = builder.build().unwrap();
        let record = records(&batch, 0).unwrap().next().unwrap().unwrap();
        let within = |b: &Bytes| batch.as_ptr_range().contains(&b.as_ptr());
        assert!(within(record.key.as_ref().unwrap()));
        assert!(within(record.value.as_ref().unwrap()));
        assert!(within(record.headers[0].value.as_ref().unwrap()));
    }

    #[test]
    fn an_empty_builder_builds_a_header_only_batch() {
        for codec in Compression::ALL {
            let builder = RecordBatchBuilder::new(codec);
            assert!(builder.is_empty());
            let batch = builder.build().unwrap();
            let header = validate_batch(&batch).unwrap();
            assert_eq!(header.record_count, 0);
            assert_eq!(header.last_offset_delta, 0);
            assert_eq!((header.base_timestamp, header.max_timestamp), (-1, -1));
            assert!(decode_records(&batch, 1024).unwrap().is_empty(), "{codec}");
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
        let expected: Vec<u8> = vec![
            0, 0, 0, 0, 0, 0, 0, 0,        // base offset 0
            0, 0, 0, 0x3a,                 // batch length: 49 header bytes + 9 record bytes
            0xff, 0xff, 0xff, 0xff,        // partition leader epoch -1
            2,                             // magic
            0xab, 0x87, 0xac, 0x80,        // CRC32C of the bytes from attributes on (computed
                                           // with an independent bitwise CRC-32C in Python)
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
        assert_eq!(batch[..], expected[..]);
    }

    #[test]
    fn offset_delta_gaps_are_kept() {
        let mut builder = RecordBatchBuilder::new(Compression::Zstd).base_offset(100);
        builder.push_with_offset_delta(2, 10, Some(b"a"), None, &[]);
        builder.push_with_offset_delta(5, 9, Some(b"b"), None, &[]);
        builder.push(11, Some(b"c"), None, &[]);
        let batch = builder.build().unwrap();
        let header = validate_batch(&batch).unwrap();
        assert_eq!(header.last_offset_delta, 6);
        assert_eq!(header.next_offset(), 107);
        assert_eq!(header.base_timestamp, 10);
        assert_eq!(header.max_timestamp, 11);
        let offsets: Vec<(i64, i64)> = decode_records(&batch, 1024)
            .unwrap()
            .iter()
            .map(|r| (r.offset(&header), r.timestamp(&header)))
            .collect();
        assert_eq!(offsets, [(102, 10), (105, 9), (106, 11)]);
    }

    #[test]
    #[should_panic(expected = "deltas must increase")]
    fn offset_deltas_must_increase() {
        let mut builder = RecordBatchBuilder::new(Compression::None);
        builder.push_with_offset_delta(3, 0, None, None, &[]);
        builder.push_with_offset_delta(3, 0, None, None, &[]);
    }

    #[test]
    fn log_append_time_gives_every_record_the_max_timestamp() {
        let mut builder =
            RecordBatchBuilder::new(Compression::Gzip).timestamp_type(TimestampType::LogAppendTime);
        builder.push(50, None, Some(b"a"), &[]);
        builder.push(70, None, Some(b"b"), &[]);
        let batch = builder.build().unwrap();
        let header = validate_batch(&batch).unwrap();
        assert_eq!(header.timestamp_type(), TimestampType::LogAppendTime);
        for r in decode_records(&batch, 1024).unwrap() {
            assert_eq!(r.timestamp(&header), 70);
        }
    }

    #[test]
    fn end_txn_marker_batches_are_control_batches() {
        for commit in [true, false] {
            let marker = EndTxnMarker {
                commit,
                coordinator_epoch: 9,
            };
            let batch = end_txn_marker_batch(40, 77, 3, 5, 1, marker);
            let header = validate_batch(&batch).unwrap();
            assert!(header.is_control() && header.is_transactional());
            assert_eq!(header.compression(), Some(Compression::None));
            assert_eq!((header.base_offset, header.partition_leader_epoch), (40, 3));
            assert_eq!(
                (
                    header.producer_id,
                    header.producer_epoch,
                    header.base_sequence
                ),
                (5, 1, -1)
            );
            assert_eq!((header.record_count, header.max_timestamp), (1, 77));
            let records = decode_records(&batch, 1024).unwrap();
            let key = records[0].key.as_ref().unwrap();
            assert_eq!(
                ControlRecordType::parse(key).unwrap(),
                if commit {
                    ControlRecordType::Commit
                } else {
                    ControlRecordType::Abort
                }
            );
            assert_eq!(key[..], [0, 0, 0, u8::from(commit)]);
            assert_eq!(records[0].value.as_deref(), Some(&[0, 0, 0, 0, 0, 9][..]));
            assert_eq!(EndTxnMarker::from_record(&records[0]).unwrap(), marker);
        }
    }

    #[test]
    fn levels_change_the_output_not_the_records() {
        let mut fast = RecordBatchBuilder::new(Compression::Gzip).compression_level(Some(1));
        let mut best = RecordBatchBuilder::new(Compression::Gzip).compression_level(Some(9));
        for i in 0..500 {
            let value = value_of(i, 200);
            fast.push(i as i64, None, value.as_deref(), &[]);
            best.push(i as i64, None, value.as_deref(), &[]);
        }
        let (fast, best) = (fast.build().unwrap(), best.build().unwrap());
        assert!(best.len() < fast.len());
        assert_eq!(
            decode_records(&fast, 1 << 20).unwrap(),
            decode_records(&best, 1 << 20).unwrap()
        );
    }

    type Pushed = (
        i64,
        Option<Vec<u8>>,
        Option<Vec<u8>>,
        Vec<(String, Option<Vec<u8>>)>,
    );

    fn pushed() -> impl Strategy<Value = Pushed> {
        let bytes = || prop::option::of(prop::collection::vec(any::<u8>(), 0..40));
        (
            any::<i64>(),
            bytes(),
            bytes(),
            prop::collection::vec(
                (
                    prop::sample::select(vec!["a", "b", "ü", ""]).prop_map(String::from),
                    bytes(),
                ),
                0..4,
            ),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn what_is_pushed_decodes(records_in in prop::collection::vec(pushed(), 0..30), codec in 0u8..5) {
            let codec = Compression::from_id(codec).unwrap();
            let mut builder = RecordBatchBuilder::new(codec);
            for (ts, key, value, headers) in &records_in {
                let headers: Vec<(&str, Option<&[u8]>)> =
                    headers.iter().map(|(k, v)| (k.as_str(), v.as_deref())).collect();
                builder.push(*ts, key.as_deref(), value.as_deref(), &headers);
            }
            let batch = builder.build().unwrap();
            let header = validate_batch(&batch).unwrap();
            let decoded = decode_records(&batch, 1 << 20).unwrap();
            prop_assert_eq!(decoded.len(), records_in.len());
            let mut section = Vec::new();
            for (i, (r, (ts, key, value, headers))) in decoded.iter().zip(&records_in).enumerate() {
                prop_assert_eq!(r.offset_delta, i as i32);
                prop_assert_eq!(r.timestamp(&header), *ts);
                prop_assert_eq!(r.key.as_deref(), key.as_deref());
                prop_assert_eq!(r.value.as_deref(), value.as_deref());
                let got: Vec<(&str, Option<&[u8]>)> =
                    r.headers.iter().map(|h| (h.key.as_str(), h.value.as_deref())).collect();
                let want: Vec<(&str, Option<&[u8]>)> =
                    headers.iter().map(|(k, v)| (k.as_str(), v.as_deref())).collect();
                prop_assert_eq!(got, want);
                r.encode(&mut section);
            }
            if codec == Compression::None {
                // Decoded records encode back to the very bytes.
                prop_assert_eq!(&section[..], &batch[RECORD_BATCH_OVERHEAD..]);
            }
        }
    }
}
