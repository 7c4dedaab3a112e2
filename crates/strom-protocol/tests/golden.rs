//! Record batches written by another Kafka client, byte for byte: the test
//! vectors of Sarama (the Go client, MIT licence; `record_test.go`,
//! `recordBatchTestCases`). Their CRCs come from Sarama's CRC32C, so the
//! batches check our header parsing, CRC, record decoding and codecs against an
//! independent implementation that talks to real Kafka brokers.
#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use strom_protocol::compression::Compression;
use strom_protocol::record::{self, Record, RecordHeader};
use strom_protocol::record_batch::{RECORD_BATCH_OVERHEAD, validate_batch};

/// The header every vector shares up to the CRC: base offset 0, the given
/// batch length, partition leader epoch 0, magic 2.
fn prefix(batch_length: u8) -> Vec<u8> {
    let mut out = vec![0; 11];
    out.push(batch_length);
    out.extend([0, 0, 0, 0, 2]);
    out
}

/// From the attributes to the record count, given the attributes' low byte:
/// last offset delta 0, base timestamp 1479847795000 (2016-11-22T20:49:55Z),
/// max timestamp 0 (Sarama leaves it so), producer id 0, producer epoch 0,
/// base sequence 0, the record count.
fn middle(attributes: u8, record_count: u8, base_timestamp: bool) -> Vec<u8> {
    let mut out = vec![0, attributes, 0, 0, 0, 0];
    if base_timestamp {
        out.extend([0, 0, 1, 88, 141, 205, 89, 56]);
    } else {
        out.extend([0; 8]);
    }
    out.extend([0; 8 + 8 + 2 + 4]);
    out.extend([0, 0, 0, record_count]);
    out
}

fn batch(batch_length: u8, crc: [u8; 4], attributes: u8, count: u8, records: &[u8]) -> Bytes {
    let mut out = prefix(batch_length);
    out.extend(crc);
    out.extend(middle(attributes, count, count > 0));
    out.extend(records);
    Bytes::from(out)
}

/// The one record of the non-empty vectors, uncompressed.
#[rustfmt::skip]
const RECORD: [u8; 21] = [
    40,          // length 20
    0,           // attributes
    10,          // timestamp delta 5 ms
    0,           // offset delta 0
    8, 1, 2, 3, 4, // key length 4, key
    6, 5, 6, 7,  // value length 3, value
    2,           // one header
    6, 8, 9, 10, // header key length 3, key (bytes 8, 9, 10: valid UTF-8)
    4, 11, 12,   // header value length 2, value
];

fn expected_record() -> Record {
    Record {
        offset_delta: 0,
        timestamp_delta: 5,
        key: Some(Bytes::from_static(&[1, 2, 3, 4])),
        value: Some(Bytes::from_static(&[5, 6, 7])),
        headers: vec![RecordHeader {
            key: "\u{8}\t\n".into(),
            value: Some(Bytes::from_static(&[11, 12])),
        }],
        attributes: 0,
    }
}

fn check_one_record(batch: &Bytes, codec: Compression) {
    let header = validate_batch(batch).unwrap();
    assert_eq!(header.compression(), Some(codec));
    assert_eq!(header.record_count, 1);
    assert_eq!(header.base_timestamp, 1_479_847_795_000);
    let records = record::decode_records(batch, 1 << 20).unwrap();
    assert_eq!(records, [expected_record()], "{codec}");
    assert_eq!(records[0].offset(&header), 0);
    assert_eq!(records[0].timestamp(&header), 1_479_847_795_005);
}

#[test]
fn empty_batches() {
    let empty = batch(49, [89, 95, 183, 221], 0, 0, &[]);
    let header = validate_batch(&empty).unwrap();
    assert_eq!((header.record_count, header.last_offset_delta), (0, 0));
    assert!(record::decode_records(&empty, 0).unwrap().is_empty());

    let control = batch(49, [81, 46, 67, 217], 0x20, 0, &[]);
    let header = validate_batch(&control).unwrap();
    assert!(header.is_control() && !header.is_transactional());
    assert!(record::decode_records(&control, 0).unwrap().is_empty());
}

#[test]
fn uncompressed_record() {
    let batch = batch(70, [84, 121, 97, 253], 0, 1, &RECORD);
    check_one_record(&batch, Compression::None);
    // Our encoder writes Sarama's bytes.
    let mut section = Vec::new();
    record::encode_record(
        &mut section,
        0,
        5,
        Some(&[1, 2, 3, 4]),
        Some(&[5, 6, 7]),
        &[("\u{8}\t\n", Some(&[11, 12]))],
    );
    assert_eq!(section, RECORD);
    assert_eq!(batch[RECORD_BATCH_OVERHEAD..], RECORD);
}

#[test]
fn gzip_record() {
    #[rustfmt::skip]
    let gzip = [
        31, 139, 8, 0, 0, 9, 110, 136, 0, 255, 0, 21, 0, 234, 255, 40, 0, 10, 0, 8, 1, 2,
        3, 4, 6, 5, 6, 7, 2, 6, 8, 9, 10, 4, 11, 12, 3, 0, 173, 201, 88, 103, 21, 0, 0, 0,
    ];
    check_one_record(
        &batch(95, [231, 74, 206, 165], 1, 1, &gzip),
        Compression::Gzip,
    );
}

/// Sarama writes one raw snappy block, as librdkafka does.
#[test]
fn raw_snappy_record() {
    #[rustfmt::skip]
    let snappy = [21, 80, 40, 0, 10, 0, 8, 1, 2, 3, 4, 6, 5, 6, 7, 2, 6, 8, 9, 10, 4, 11, 12];
    check_one_record(
        &batch(72, [21, 0, 159, 97], 2, 1, &snappy),
        Compression::Snappy,
    );
}

/// An LZ4 frame unlike Kafka's own: FLG 0x64 (content checksum on), BD 0x70
/// (4 MiB blocks). Readers take any valid frame.
#[test]
fn lz4_record_with_content_checksum() {
    #[rustfmt::skip]
    let lz4 = [
        4, 34, 77, 24, 100, 112, 185, 21, 0, 0, 128, 40, 0, 10, 0, 8, 1, 2, 3, 4, 6, 5, 6, 7, 2,
        6, 8, 9, 10, 4, 11, 12, 0, 0, 0, 0, 12, 59, 239, 146,
    ];
    check_one_record(
        &batch(89, [169, 74, 119, 197], 3, 1, &lz4),
        Compression::Lz4,
    );
}

#[test]
fn a_flipped_bit_in_a_vector_fails_its_crc() {
    let mut bytes = batch(70, [84, 121, 97, 253], 0, 1, &RECORD).to_vec();
    bytes[RECORD_BATCH_OVERHEAD + 5] ^= 1;
    assert!(validate_batch(&bytes).is_err());
}
