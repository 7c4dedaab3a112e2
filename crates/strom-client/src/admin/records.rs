//! Records and offsets of partitions: DeleteRecords and ListOffsets, each
//! on the partition's leader.

use std::collections::BTreeMap;

use strom_protocol::messages::kafka::{
    BrokerId, DeleteRecordsRequest, ListOffsetsRequest,
    delete_records_request::{DeleteRecordsPartition, DeleteRecordsTopic},
    list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic},
};

use crate::consumer::TopicPartition;
use crate::error::{Error, Result};

use super::Admin;
use super::routing::{Dest, Sent, by_topic, epoch, topic_name};

const DELETE_RECORDS_VERSION: i16 = 2;
/// v7 adds MAX_TIMESTAMP, v10 the timeout.
const LIST_OFFSETS_VERSION: i16 = 10;
/// ListOffsets' special timestamps.
const EARLIEST_TIMESTAMP: i64 = -2;
const LATEST_TIMESTAMP: i64 = -1;
const MAX_TIMESTAMP: i64 = -3;
/// The first ListOffsets version that knows [`MAX_TIMESTAMP`].
const MAX_TIMESTAMP_MIN_VERSION: i16 = 7;

/// Which offset of a partition ListOffsets looks up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OffsetSpec {
    /// The log start offset.
    Earliest,
    /// The log end offset (or the last stable offset, reading committed).
    Latest,
    /// The offset of the record with the largest timestamp (KIP-734).
    MaxTimestamp,
    /// The first offset whose timestamp is at least this (ms since the
    /// epoch).
    Timestamp(i64),
}

impl OffsetSpec {
    fn timestamp(self) -> i64 {
        match self {
            Self::Earliest => EARLIEST_TIMESTAMP,
            Self::Latest => LATEST_TIMESTAMP,
            Self::MaxTimestamp => MAX_TIMESTAMP,
            Self::Timestamp(ts) => ts,
        }
    }
}

/// Which records ListOffsets counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum IsolationLevel {
    /// Everything written: Latest is the high watermark.
    #[default]
    ReadUncommitted,
    /// Committed transactions only: Latest is the last stable offset.
    ReadCommitted,
}

/// What ListOffsets found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListedOffset {
    /// -1 when no record matches a timestamp.
    pub offset: i64,
    /// The record's timestamp, -1 for Earliest and Latest.
    pub timestamp: i64,
    pub leader_epoch: Option<i32>,
}

impl Admin {
    /// Deletes the records of each partition below the offset given (-1: the
    /// high watermark), on the partition's leader; each partition's new low
    /// watermark. OFFSET_OUT_OF_RANGE for an offset above the high watermark.
    pub async fn delete_records(
        &self,
        before: &BTreeMap<TopicPartition, i64>,
    ) -> BTreeMap<TopicPartition, Result<i64>> {
        let deadline = self.deadline();
        let timeout_ms = self.timeout_ms();
        self.each(
            deadline,
            before.keys().cloned(),
            DELETE_RECORDS_VERSION,
            |tp| Dest::Leader(tp.clone()),
            |_, keys| {
                DeleteRecordsRequest::default()
                    .with_topics(
                        by_topic(keys, |tp| tp)
                            .into_iter()
                            .map(|(topic, partitions)| {
                                DeleteRecordsTopic::default()
                                    .with_name(topic_name(topic))
                                    .with_partitions(
                                        partitions
                                            .into_iter()
                                            .map(|tp| {
                                                DeleteRecordsPartition::default()
                                                    .with_partition_index(tp.partition)
                                                    .with_offset(
                                                        before.get(tp).copied().unwrap_or(-1),
                                                    )
                                            })
                                            .collect(),
                                    )
                            })
                            .collect(),
                    )
                    .with_timeout_ms(timeout_ms)
            },
            |_, response| {
                response
                    .topics
                    .into_iter()
                    .flat_map(|t| {
                        let topic = t.name.0.to_string();
                        t.partitions.into_iter().map(move |p| {
                            let tp = TopicPartition::new(&topic, p.partition_index);
                            (
                                tp,
                                Error::check(p.error_code, None).map(|()| p.low_watermark),
                            )
                        })
                    })
                    .collect()
            },
        )
        .await
    }

    /// Looks up an offset of each partition on its leader: the earliest, the
    /// latest, the one with the largest timestamp, or the first at a
    /// timestamp; counting committed records only with
    /// [`IsolationLevel::ReadCommitted`].
    pub async fn list_offsets(
        &self,
        specs: &BTreeMap<TopicPartition, OffsetSpec>,
        isolation: IsolationLevel,
    ) -> BTreeMap<TopicPartition, Result<ListedOffset>> {
        let deadline = self.deadline();
        let timeout_ms = self.timeout_ms();
        self.each(
            deadline,
            specs.keys().cloned(),
            LIST_OFFSETS_VERSION,
            |tp| Dest::Leader(tp.clone()),
            |version, keys| {
                let request = ListOffsetsRequest::default()
                    // A consumer, not a follower.
                    .with_replica_id(BrokerId(-1))
                    .with_topics(
                        by_topic(keys, |tp| tp)
                            .into_iter()
                            .map(|(topic, partitions)| {
                                ListOffsetsTopic::default()
                                    .with_name(topic_name(topic))
                                    .with_partitions(
                                        partitions
                                            .into_iter()
                                            .map(|tp| {
                                                let spec = specs
                                                    .get(tp)
                                                    .copied()
                                                    .unwrap_or(OffsetSpec::Latest);
                                                ListOffsetsPartition::default()
                                                    .with_partition_index(tp.partition)
                                                    .with_timestamp(spec.timestamp())
                                            })
                                            .collect(),
                                    )
                            })
                            .collect(),
                    )
                    .with_timeout_ms(timeout_ms);
                // v1 knows only uncommitted reads.
                match isolation {
                    IsolationLevel::ReadCommitted if version >= 2 => {
                        request.with_isolation_level(1)
                    }
                    _ => request,
                }
            },
            |Sent { version, .. }, response| {
                response
                    .topics
                    .into_iter()
                    .flat_map(|t| {
                        let topic = t.name.0.to_string();
                        t.partitions.into_iter().map(move |p| {
                            let tp = TopicPartition::new(&topic, p.partition_index);
                            (tp, p.error_code, p.offset, p.timestamp, p.leader_epoch)
                        })
                    })
                    .map(|(tp, code, offset, timestamp, leader_epoch)| {
                        let spec = specs.get(&tp).copied();
                        let result = if spec == Some(OffsetSpec::MaxTimestamp)
                            && version < MAX_TIMESTAMP_MIN_VERSION
                        {
                            Err(Error::Unsupported(format!(
                                "ListOffsets for the max timestamp (v{MAX_TIMESTAMP_MIN_VERSION}+)"
                            )))
                        } else {
                            Error::check(code, None).map(|()| ListedOffset {
                                offset,
                                timestamp,
                                leader_epoch: epoch(leader_epoch),
                            })
                        };
                        (tp, result)
                    })
                    .collect()
            },
        )
        .await
    }
}
