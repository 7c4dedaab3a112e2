//! Fetch response frames whose records stay in their segment files: the
//! fields are encoded here, each partition's records are sent from the file
//! with `sendfile` when the frame is written (Kafka's zero-copy
//! `FileRecords.writeTo`).
//!
//! Everything but the records is encoded by the generated message code; this
//! module only splits its output where the records go. Each structure is
//! encoded with its array or records left empty (or null), and the empty
//! value is found at a position computed from the fields before it. The
//! position is checked against the bytes the empty value encodes to, so a
//! change in the generated code fails the frame (and its test) instead of
//! sending a wrong one.

use std::fs::File;
use std::io;
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use strom_protocol::messages::kafka::fetch_response::{FetchableTopicResponse, PartitionData};
use strom_protocol::messages::kafka::{FetchResponse, ResponseHeader};
use strom_protocol::messages::{ApiKey, Encodable};
use strom_protocol::varint;
use strom_storage::LogSlice;

/// Records sent from where they are stored, and how many bytes they are.
pub trait StoredRecords {
    /// Bytes of the records.
    fn size(&self) -> usize;
}

/// Records in a segment file, opened when they are read: a failure to open
/// is that partition's KAFKA_STORAGE_ERROR, not the connection's, and a
/// segment that retention deletes before the answer is written stays
/// readable through the open file.
#[derive(Debug)]
pub struct FileRecords {
    /// What was read, to check for a truncation before the last byte leaves.
    pub slice: LogSlice,
    pub file: Arc<File>,
    pub position: u64,
    pub len: u64,
}

impl FileRecords {
    /// `slice`'s file, opened; `None` for an empty slice.
    pub fn open(slice: LogSlice) -> io::Result<Option<Self>> {
        Ok(slice.file_region()?.map(|(file, position, len)| Self {
            slice,
            file,
            position,
            len,
        }))
    }
}

impl StoredRecords for FileRecords {
    fn size(&self) -> usize {
        usize::try_from(self.len).unwrap_or(usize::MAX)
    }
}

/// One piece of a frame, written in order.
#[derive(Debug)]
pub enum Part<R> {
    Bytes(BytesMut),
    Records(R),
}

/// A whole response frame (size prefix included), as pieces.
#[derive(Debug)]
pub struct Frame<R> {
    pub parts: Vec<Part<R>>,
}

/// First version with compact arrays, strings and bytes, and tagged fields.
const FIRST_FLEXIBLE: i16 = 12;
/// First version naming topics by id instead of by name.
const FIRST_TOPIC_ID: i16 = 13;

/// Encodes `response` at `version`, with `records[i]` sent as the records
/// of the i-th partition in the response's order (topic by topic) where it
/// is `Some`; those partitions' `records` field must be `None`. Partitions
/// without stored records are encoded as they are.
pub fn encode<R: StoredRecords>(
    version: i16,
    correlation_id: i32,
    mut response: FetchResponse,
    records: Vec<Option<R>>,
) -> Result<Frame<R>, String> {
    let flexible = version >= FIRST_FLEXIBLE;
    let mut out = Writer {
        parts: Vec::new(),
        buf: BytesMut::with_capacity(1024),
    };
    out.buf.put_i32(0); // the frame size, filled in at the end
    ResponseHeader::default()
        .with_correlation_id(correlation_id)
        .encode(&mut out.buf, ApiKey::Fetch.response_header_version(version))
        .map_err(|e| e.to_string())?;

    let topics = std::mem::take(&mut response.responses);
    let partitions: usize = topics.iter().map(|t| t.partitions.len()).sum();
    if records.len() != partitions {
        return Err(format!(
            "{} records for {partitions} partitions",
            records.len()
        ));
    }
    // The top level: throttle time, error code and session id, the topics,
    // then the tagged fields (node endpoints).
    let top = encode_struct(&response, version)?;
    let at = 4 + if version >= 7 { 2 + 4 } else { 0 };
    let (head, tail) = split_at_empty(&top, at, empty_array(flexible))?;
    out.buf.extend_from_slice(head);
    put_len(&mut out.buf, topics.len(), flexible)?;
    let mut records = records.into_iter();
    for mut topic in topics {
        let partitions = std::mem::take(&mut topic.partitions);
        let encoded = encode_struct(&topic, version)?;
        let (head, tail) = split_at_empty(
            &encoded,
            topic_field_size(&topic, version),
            empty_array(flexible),
        )?;
        out.buf.extend_from_slice(head);
        put_len(&mut out.buf, partitions.len(), flexible)?;
        for partition in partitions {
            match records.next().flatten() {
                None => partition
                    .encode(&mut out.buf, version)
                    .map_err(|e| e.to_string())?,
                Some(stored) => out.partition(&partition, version, stored)?,
            }
        }
        out.buf.extend_from_slice(tail);
    }
    out.buf.extend_from_slice(tail);

    let Writer { mut parts, buf } = out;
    parts.push(Part::Bytes(buf));
    let size: usize = parts
        .iter()
        .map(|p| match p {
            Part::Bytes(b) => b.len(),
            Part::Records(r) => r.size(),
        })
        .sum::<usize>()
        - strom_protocol::messages::FRAME_SIZE_PREFIX;
    let size = i32::try_from(size).map_err(|_| format!("frame of {size} bytes too large"))?;
    if let Some(Part::Bytes(first)) = parts.first_mut() {
        first[..4].copy_from_slice(&size.to_be_bytes());
    }
    Ok(Frame { parts })
}

struct Writer<R> {
    parts: Vec<Part<R>>,
    buf: BytesMut,
}

impl<R: StoredRecords> Writer<R> {
    /// A partition whose records are `stored`: its fields up to the records,
    /// their length, the records as a part of their own, then the fields
    /// after them (the tagged fields).
    fn partition(
        &mut self,
        partition: &PartitionData,
        version: i16,
        stored: R,
    ) -> Result<(), String> {
        if partition.records.is_some() {
            return Err("a partition has records both encoded and stored".to_owned());
        }
        let flexible = version >= FIRST_FLEXIBLE;
        let encoded = encode_struct(partition, version)?;
        let at = partition_fields_before_records(partition, version)?;
        let null: &[u8] = if flexible { &[0] } else { &[0xff; 4] };
        let (head, tail) = split_at_empty(&encoded, at, null)?;
        self.buf.extend_from_slice(head);
        put_len(&mut self.buf, stored.size(), flexible)?;
        let fields = std::mem::replace(&mut self.buf, BytesMut::with_capacity(256));
        self.parts.push(Part::Bytes(fields));
        self.parts.push(Part::Records(stored));
        self.buf.extend_from_slice(tail);
        Ok(())
    }
}

fn encode_struct<T: Encodable>(value: &T, version: i16) -> Result<BytesMut, String> {
    let mut buf = BytesMut::new();
    value.encode(&mut buf, version).map_err(|e| e.to_string())?;
    Ok(buf)
}

/// `encoded` split around the `empty` value expected at `at`.
fn split_at_empty<'a>(
    encoded: &'a [u8],
    at: usize,
    empty: &[u8],
) -> Result<(&'a [u8], &'a [u8]), String> {
    let end = at + empty.len();
    if encoded.get(at..end) != Some(empty) {
        return Err(format!(
            "the fetch response layout changed: no empty value at byte {at}"
        ));
    }
    Ok((&encoded[..at], &encoded[end..]))
}

fn empty_array(flexible: bool) -> &'static [u8] {
    if flexible { &[1] } else { &[0; 4] }
}

/// The length before an array or bytes: `len + 1` as an unsigned varint in
/// flexible versions (0 is null), an i32 before them.
fn put_len(buf: &mut BytesMut, len: usize, flexible: bool) -> Result<(), String> {
    if flexible {
        let len = u32::try_from(len + 1).map_err(|_| format!("{len} elements or bytes"))?;
        varint::put_unsigned_varint(buf, len);
    } else {
        buf.put_i32(i32::try_from(len).map_err(|_| format!("{len} elements or bytes"))?);
    }
    Ok(())
}

/// Bytes [`put_len`] writes for `len`.
fn len_size(len: usize, flexible: bool) -> usize {
    if flexible {
        varint::unsigned_varint_len(u32::try_from(len + 1).unwrap_or(u32::MAX))
    } else {
        4
    }
}

/// Bytes of a topic's name (or id) field, which precedes its partitions.
fn topic_field_size(topic: &FetchableTopicResponse, version: i16) -> usize {
    let name = topic.topic.0.len();
    if version >= FIRST_TOPIC_ID {
        16
    } else if version >= FIRST_FLEXIBLE {
        len_size(name, true) + name
    } else {
        2 + name // an i16 length
    }
}

/// Bytes of a partition's fields before its records: index, error code,
/// high watermark, last stable offset, log start offset (v5+), aborted
/// transactions, preferred read replica (v11+).
fn partition_fields_before_records(
    partition: &PartitionData,
    version: i16,
) -> Result<usize, String> {
    let flexible = version >= FIRST_FLEXIBLE;
    // A null array is a length of its own (-1, or 0 in flexible versions).
    let aborted = match &partition.aborted_transactions {
        None => len_size(0, flexible),
        Some(list) => {
            let mut size = len_size(list.len(), flexible);
            for t in list {
                size += t.compute_size(version).map_err(|e| e.to_string())?;
            }
            size
        }
    };
    let log_start = if version >= 5 { 8 } else { 0 };
    let preferred = if version >= 11 { 4 } else { 0 };
    Ok(4 + 2 + 8 + 8 + log_start + aborted + preferred)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use strom_protocol::messages::kafka::fetch_response::{
        AbortedTransaction, EpochEndOffset, LeaderIdAndEpoch, NodeEndpoint,
    };
    use strom_protocol::messages::kafka::{BrokerId, ProducerId, TopicName};
    use strom_protocol::messages::{StrBytes, Uuid, encode_response};

    use super::*;

    impl StoredRecords for Bytes {
        fn size(&self) -> usize {
            Bytes::len(self)
        }
    }

    fn partition(index: i32, version: i16) -> PartitionData {
        let mut p = PartitionData::default()
            .with_partition_index(index)
            .with_error_code(if index == 2 { 6 } else { 0 })
            .with_high_watermark(1000 + i64::from(index))
            .with_last_stable_offset(900)
            .with_log_start_offset(if version >= 5 { 7 } else { -1 });
        if index % 2 == 0 {
            p = p.with_aborted_transactions(Some(vec![
                AbortedTransaction::default()
                    .with_producer_id(ProducerId(42))
                    .with_first_offset(17);
                usize::try_from(index).unwrap() + 1
            ]));
        }
        if version >= 11 && index == 3 {
            p = p.with_preferred_read_replica(BrokerId(2));
        }
        if version >= 12 && index == 1 {
            p = p
                .with_diverging_epoch(EpochEndOffset::default().with_epoch(3).with_end_offset(99))
                .with_current_leader(
                    LeaderIdAndEpoch::default()
                        .with_leader_id(BrokerId(1))
                        .with_leader_epoch(4),
                );
        }
        p
    }

    fn records(index: i32) -> Option<Bytes> {
        // Partition 2 has none (an error), partition 4 an empty read.
        match index {
            2 => None,
            4 => Some(Bytes::new()),
            _ => Some(Bytes::from(vec![
                u8::try_from(index).unwrap();
                300 * usize::try_from(index).unwrap()
            ])),
        }
    }

    fn response(version: i16, with_records: bool) -> FetchResponse {
        let topics = [("orders", 0..3), ("payments-with-a-longer-name", 3..5)]
            .into_iter()
            .map(|(name, range)| {
                let mut topic = FetchableTopicResponse::default().with_partitions(
                    range
                        .map(|i| {
                            let p = partition(i, version);
                            if with_records {
                                p.with_records(records(i))
                            } else {
                                p
                            }
                        })
                        .collect(),
                );
                if version >= FIRST_TOPIC_ID {
                    topic.topic_id = Uuid::from_u128(0x1234_5678_9abc_def0_1122_3344_5566_7788);
                } else {
                    topic.topic = TopicName(StrBytes::from_static_str(name));
                }
                topic
            })
            .collect();
        let mut response = FetchResponse::default()
            .with_throttle_time_ms(5)
            .with_responses(topics);
        if version >= 7 {
            response = response.with_error_code(0).with_session_id(77);
        }
        if version >= 16 {
            response = response.with_node_endpoints(vec![
                NodeEndpoint::default()
                    .with_node_id(BrokerId(2))
                    .with_host(StrBytes::from_static_str("10.0.0.2"))
                    .with_port(9092)
                    .with_rack(Some(StrBytes::from_static_str("rack-b"))),
            ]);
        }
        response
    }

    fn joined(frame: Frame<Bytes>) -> Vec<u8> {
        let mut out = Vec::new();
        for part in frame.parts {
            match part {
                Part::Bytes(b) => out.extend_from_slice(&b),
                Part::Records(r) => out.extend_from_slice(&r),
            }
        }
        out
    }

    #[test]
    fn frames_with_stored_records_equal_the_generated_encoding_at_every_version() {
        for version in 4..=17 {
            let expected = encode_response(ApiKey::Fetch, version, 31, &response(version, true))
                .unwrap_or_else(|e| panic!("v{version}: {e}"));
            // Records of the partitions that have some are stored; the
            // others are encoded as they are (null records).
            let mut plain = response(version, false);
            let mut stored = Vec::new();
            for topic in &mut plain.responses {
                for p in &mut topic.partitions {
                    match records(p.partition_index) {
                        Some(r) if p.partition_index != 4 => {
                            p.records = None;
                            stored.push(Some(r));
                        }
                        r => {
                            p.records = r;
                            stored.push(None);
                        }
                    }
                }
            }
            let frame =
                encode(version, 31, plain, stored).unwrap_or_else(|e| panic!("v{version}: {e}"));
            let parts = frame.parts.len();
            assert_eq!(
                parts, 7,
                "v{version}: three stored records between four encoded parts"
            );
            assert_eq!(joined(frame), expected.to_vec(), "v{version}");
        }
    }

    #[test]
    fn a_frame_without_stored_records_is_one_part() {
        let frame = encode::<Bytes>(17, 1, FetchResponse::default(), Vec::new()).unwrap();
        let expected = encode_response(ApiKey::Fetch, 17, 1, &FetchResponse::default()).unwrap();
        assert_eq!(frame.parts.len(), 1);
        assert_eq!(joined(frame), expected.to_vec());
    }

    #[test]
    fn records_that_do_not_match_the_partitions_are_refused() {
        let err = encode::<Bytes>(17, 1, response(17, false), vec![None]).unwrap_err();
        assert!(err.contains("1 records for 5 partitions"), "{err}");
        let mut both = response(17, true);
        both.responses.truncate(1);
        let stored = vec![Some(Bytes::from_static(b"x")), None, None];
        let err = encode(17, 1, both, stored).unwrap_err();
        assert!(err.contains("both encoded and stored"), "{err}");
    }
}
