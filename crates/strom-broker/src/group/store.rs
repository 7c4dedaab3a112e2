//! What the group coordinator keeps in `__consumer_offsets`: committed offsets
//! and group state, as records whose key says what they are about and whose
//! value is the latest state (a null value deletes the key). The topic is
//! compacted, so the latest record per key is what survives; the coordinator
//! replays the partitions at start to rebuild its state.
//!
//! Keys and values are JSON. A group's records go to the partition
//! `abs(javaHashCode(group)) % offsets.topic.num.partitions`, as Kafka places
//! them, so one partition holds everything about a group, in order.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use strom_protocol::builder::RecordBatchBuilder;
use strom_protocol::compression::Compression;
use strom_protocol::messages::Uuid;
use strom_protocol::record;

pub use strom_protocol::topic::OFFSETS_TOPIC;
/// Bound on one decoded record batch of the offsets topic when replaying.
const MAX_REPLAY_BATCH_BYTES: usize = 256 << 20;

/// What a record is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RecordKey {
    /// A committed offset of a group for one partition.
    Offset {
        group: String,
        topic: String,
        partition: i32,
    },
    /// A group's membership and assignment.
    Group { group: String },
}

impl RecordKey {
    pub fn group(&self) -> &str {
        match self {
            Self::Offset { group, .. } | Self::Group { group } => group,
        }
    }
}

/// A committed offset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetValue {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
    pub commit_timestamp_ms: i64,
}

/// A classic-protocol member as persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassicMemberValue {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    /// The member's protocols in its preference order.
    pub protocols: Vec<ProtocolValue>,
    #[serde(with = "hex")]
    pub assignment: Vec<u8>,
}

/// A classic-protocol member's protocol and its metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProtocolValue {
    pub name: String,
    #[serde(with = "hex")]
    pub metadata: Vec<u8>,
}

/// Client bytes (subscriptions, assignments) as hex strings: twice their
/// size, where JSON number arrays take three to four times.
mod hex {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    const DIGITS: &[u8; 16] = b"0123456789abcdef";

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        let mut text = String::with_capacity(bytes.len() * 2);
        for b in bytes {
            text.push(char::from(DIGITS[usize::from(b >> 4)]));
            text.push(char::from(DIGITS[usize::from(b & 0xf)]));
        }
        s.serialize_str(&text)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        let digit = |c: u8| -> Result<u8, D::Error> {
            char::from(c)
                .to_digit(16)
                .and_then(|v| u8::try_from(v).ok())
                .ok_or_else(|| D::Error::custom("not a hex digit"))
        };
        text.as_bytes()
            .chunks(2)
            .map(|pair| match pair {
                [hi, lo] => Ok(digit(*hi)? << 4 | digit(*lo)?),
                _ => Err(D::Error::custom("odd number of hex digits")),
            })
            .collect()
    }
}

/// A KIP-848 member as persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerMemberValue {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub rebalance_timeout_ms: i32,
    pub subscribed_topic_names: Vec<String>,
    /// KIP-848 regex subscription (absent in records written before it).
    #[serde(default)]
    pub subscribed_topic_regex: Option<String>,
    pub server_assignor: Option<String>,
    pub member_epoch: i32,
    pub previous_member_epoch: i32,
    pub assigned: Vec<(Uuid, Vec<i32>)>,
    pub pending_revocation: Vec<(Uuid, Vec<i32>)>,
    /// A static member that left with epoch -2 and may come back.
    #[serde(default)]
    pub left_static: bool,
}

/// Partitions by topic id, as persisted.
pub type TopicPartitionList = Vec<(Uuid, Vec<i32>)>;

/// A group's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum GroupValue {
    Classic {
        protocol_type: Option<String>,
        protocol_name: Option<String>,
        generation: i32,
        leader: Option<String>,
        members: Vec<ClassicMemberValue>,
        /// When the group became empty (offset expiry counts from there).
        #[serde(default)]
        empty_since_ms: Option<i64>,
    },
    Consumer {
        group_epoch: i32,
        assignment_epoch: i32,
        assignor: String,
        members: Vec<ConsumerMemberValue>,
        target: Vec<(String, TopicPartitionList)>,
        #[serde(default)]
        empty_since_ms: Option<i64>,
    },
}

/// One record: a key and a value, or `None` to delete the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Offset(RecordKey, Option<OffsetValue>),
    Group(RecordKey, Option<GroupValue>),
}

impl Record {
    pub fn key(&self) -> &RecordKey {
        match self {
            Self::Offset(k, _) | Self::Group(k, _) => k,
        }
    }

    /// The group, topic and partition of an offset tombstone.
    pub fn offset_tombstone(&self) -> Option<(&str, &str, i32)> {
        match self {
            Self::Offset(
                RecordKey::Offset {
                    group,
                    topic,
                    partition,
                },
                None,
            ) => Some((group, topic, *partition)),
            _ => None,
        }
    }

    /// Whether this is an offset (committed or a tombstone) of `group`,
    /// `topic`, `partition`.
    pub fn is_offset_of(&self, group: &str, topic: &str, partition: i32) -> bool {
        matches!(
            self,
            Self::Offset(RecordKey::Offset { group: g, topic: t, partition: p }, _)
                if g == group && t == topic && *p == partition
        )
    }

    pub fn offset(group: &str, topic: &str, partition: i32, value: Option<OffsetValue>) -> Self {
        Self::Offset(
            RecordKey::Offset {
                group: group.to_owned(),
                topic: topic.to_owned(),
                partition,
            },
            value,
        )
    }

    pub fn group(group: &str, value: Option<GroupValue>) -> Self {
        Self::Group(
            RecordKey::Group {
                group: group.to_owned(),
            },
            value,
        )
    }
}

/// The offsets-topic partition of `group`: Kafka's
/// `Utils.abs(groupId.hashCode()) % partitions`.
pub fn partition_for(group: &str, partitions: i32) -> i32 {
    let hash = group.encode_utf16().fold(0i32, |h, unit| {
        h.wrapping_mul(31).wrapping_add(i32::from(unit))
    });
    let abs = if hash == i32::MIN { 0 } else { hash.abs() };
    abs % partitions.max(1)
}

/// Encodes records as one uncompressed batch.
pub fn encode(records: &[Record], timestamp_ms: i64) -> Result<Bytes, String> {
    build(
        RecordBatchBuilder::new(Compression::None),
        records,
        timestamp_ms,
    )
}

fn build(
    mut builder: RecordBatchBuilder,
    records: &[Record],
    timestamp_ms: i64,
) -> Result<Bytes, String> {
    for r in records {
        let key = serde_json::to_vec(r.key()).map_err(|e| e.to_string())?;
        let value = match r {
            Record::Offset(_, v) => v.as_ref().map(serde_json::to_vec).transpose(),
            Record::Group(_, v) => v.as_ref().map(serde_json::to_vec).transpose(),
        }
        .map_err(|e| e.to_string())?;
        builder.push(timestamp_ms, Some(&key), value.as_deref(), &[]);
    }
    builder.build().map_err(|e| e.to_string())
}

/// Encodes records as one uncompressed transactional batch of a producer
/// (TxnOffsetCommit), with sequence 0 as Kafka writes it.
pub fn encode_txn(
    records: &[Record],
    timestamp_ms: i64,
    producer_id: i64,
    producer_epoch: i16,
) -> Result<Bytes, String> {
    let builder = RecordBatchBuilder::new(Compression::None)
        .producer(producer_id, producer_epoch, 0)
        .transactional(true);
    build(builder, records, timestamp_ms)
}

/// Whether a stored control batch is a transaction's commit marker.
pub fn is_commit_marker(batch: &[u8]) -> bool {
    let batch = Bytes::copy_from_slice(batch);
    record::records(&batch, MAX_REPLAY_BATCH_BYTES)
        .ok()
        .and_then(|mut records| records.next())
        .and_then(Result::ok)
        .and_then(|r| record::EndTxnMarker::from_record(&r).ok())
        .is_some_and(|m| m.commit)
}

/// Decodes the records of one stored batch; records that are not ours (or
/// not readable) are skipped with a log line, never trusted.
pub fn decode(batch: &Bytes) -> Vec<Record> {
    let mut out = Vec::new();
    let records = match record::records(batch, MAX_REPLAY_BATCH_BYTES) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "skipping an unreadable batch in the offsets topic");
            return out;
        }
    };
    for r in records {
        let Ok(r) = r else {
            tracing::warn!("skipping an unreadable record in the offsets topic");
            break;
        };
        let Some(key) = r
            .key
            .as_ref()
            .and_then(|k| serde_json::from_slice::<RecordKey>(k).ok())
        else {
            tracing::warn!("skipping a record with an unknown key in the offsets topic");
            continue;
        };
        let parsed = match &key {
            RecordKey::Offset { .. } => match &r.value {
                None => Some(Record::Offset(key, None)),
                Some(v) => serde_json::from_slice(v)
                    .ok()
                    .map(|v| Record::Offset(key, Some(v))),
            },
            RecordKey::Group { .. } => match &r.value {
                None => Some(Record::Group(key, None)),
                Some(v) => serde_json::from_slice(v)
                    .ok()
                    .map(|v| Record::Group(key, Some(v))),
            },
        };
        match parsed {
            Some(record) => out.push(record),
            None => {
                tracing::warn!("skipping a record with an unreadable value in the offsets topic")
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_match_kafka() {
        // Java: "my-group".hashCode() == -1906497762; abs % 50 == 12.
        assert_eq!(partition_for("my-group", 50), 12);
        assert_eq!(partition_for("", 50), 0);
        assert!((0..50).contains(&partition_for("ünïcödé-group", 50)));
    }

    #[test]
    fn records_round_trip() {
        let records = vec![
            Record::offset(
                "g",
                "t",
                3,
                Some(OffsetValue {
                    offset: 42,
                    leader_epoch: 1,
                    metadata: Some("m".into()),
                    commit_timestamp_ms: 7,
                }),
            ),
            Record::offset("g", "t", 4, None),
            Record::group("g", None),
            Record::group(
                "g",
                Some(GroupValue::Classic {
                    protocol_type: Some("consumer".into()),
                    protocol_name: Some("range".into()),
                    generation: 3,
                    leader: Some("m".into()),
                    members: vec![ClassicMemberValue {
                        member_id: "m".into(),
                        instance_id: None,
                        client_id: "c".into(),
                        client_host: "/127.0.0.1".into(),
                        session_timeout_ms: 10_000,
                        rebalance_timeout_ms: 20_000,
                        protocols: vec![ProtocolValue {
                            name: "range".into(),
                            metadata: vec![0, 1, 0xab, 0xff],
                        }],
                        assignment: (0..=255).collect(),
                    }],
                    empty_since_ms: Some(5),
                }),
            ),
        ];
        let batch = encode(&records, 1).unwrap();
        assert_eq!(decode(&batch), records);
    }
}
