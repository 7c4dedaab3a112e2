//! Metadata records. Each is stored as the JSON value of one record in a v2
//! record batch of the metadata log; the records of one controller operation
//! share a batch, so an operation takes effect whole or not at all.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use strom_protocol::builder::RecordBatchBuilder;
use strom_protocol::compression::Compression;
use strom_protocol::record;
use uuid::Uuid;

use crate::image::ConfigResource;

/// One change to the cluster metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum MetadataRecord {
    /// The cluster's id, written once when the metadata log is created.
    ClusterId { cluster_id: String },
    /// A broker and where clients reach it (BrokerRegistration). A new
    /// registration starts fenced; its broker epoch is the record's offset.
    RegisterBroker {
        broker_id: i32,
        host: String,
        port: u16,
        rack: Option<String>,
        /// Whether clients are kept away from it (absent in records from
        /// before the quorum: unfenced).
        #[serde(default)]
        fenced: bool,
        /// The broker process's id, new at every start.
        #[serde(default)]
        incarnation_id: Option<Uuid>,
        /// The broker epoch, given only when an image is rebuilt from a
        /// snapshot (otherwise the record's offset is the epoch).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        epoch: Option<i64>,
    },
    /// A broker missed its session or asked to be fenced: clients no longer
    /// see it (Kafka's FenceBrokerRecord).
    FenceBroker { broker_id: i32, epoch: i64 },
    /// A registered broker caught up with the metadata and heartbeats: it
    /// serves clients (Kafka's UnfenceBrokerRecord).
    UnfenceBroker { broker_id: i32, epoch: i64 },
    /// A topic exists (its partitions follow as `Partition` records).
    Topic { name: String, topic_id: Uuid },
    /// A partition's replica set and leadership (Kafka's PartitionRecord,
    /// and PartitionChangeRecord carried as the full new state).
    Partition {
        topic_id: Uuid,
        partition: i32,
        replicas: Vec<i32>,
        isr: Vec<i32>,
        leader: i32,
        leader_epoch: i32,
        partition_epoch: i32,
        /// A reassignment in progress (KIP-455): the replicas being added,
        /// which `replicas` lists already. Absent in records from before
        /// reassignment, and when none is in progress.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        adding_replicas: Vec<i32>,
        /// The replicas a reassignment in progress removes once the added
        /// ones are in sync; `replicas` still lists them.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        removing_replicas: Vec<i32>,
        /// Eligible leader replicas (KIP-966): replicas that left the ISR
        /// while it was below `min.insync.replicas`, so that they hold every
        /// record up to the high watermark (which does not move meanwhile),
        /// and may lead when no in-sync replica can. Empty once the ISR
        /// reaches the minimum again; absent in records from before ELR.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        elr: Vec<i32>,
    },
    /// A config value set (`Some`) or removed (`None`).
    Config {
        resource: ConfigResource,
        name: String,
        value: Option<String>,
    },
    /// A topic and its partitions are gone.
    RemoveTopic { topic_id: Uuid },
    /// Producer ids below `next_block_start` are handed out.
    ProducerIds {
        broker_id: i32,
        next_block_start: i64,
    },
}

/// Encodes records as one uncompressed record batch.
pub fn encode_batch(records: &[MetadataRecord], timestamp_ms: i64) -> Result<Bytes, String> {
    let mut builder = RecordBatchBuilder::new(Compression::None);
    for r in records {
        let value = serde_json::to_vec(r).map_err(|e| e.to_string())?;
        builder.push(timestamp_ms, None, Some(&value), &[]);
    }
    builder.build().map_err(|e| e.to_string())
}

/// Decodes the records of one stored batch.
pub fn decode_batch(batch: &Bytes) -> Result<Vec<MetadataRecord>, String> {
    let mut out = Vec::new();
    for r in record::records(batch, crate::controller::MAX_METADATA_BATCH_BYTES)
        .map_err(|e| e.to_string())?
    {
        let r = r.map_err(|e| e.to_string())?;
        let value = r.value.ok_or("metadata record without a value")?;
        out.push(serde_json::from_slice(&value).map_err(|e| e.to_string())?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_through_a_batch() {
        let records = vec![
            MetadataRecord::ClusterId {
                cluster_id: "abc".to_owned(),
            },
            MetadataRecord::Topic {
                name: "orders".to_owned(),
                topic_id: Uuid::new_v4(),
            },
            MetadataRecord::Config {
                resource: ConfigResource::Topic("orders".to_owned()),
                name: "retention.ms".to_owned(),
                value: Some("1000".to_owned()),
            },
        ];
        let batch = encode_batch(&records, 1).unwrap();
        assert_eq!(decode_batch(&batch).unwrap(), records);
    }

    #[test]
    fn a_partition_record_from_before_reassignment_loads() {
        let id = Uuid::from_u128(3);
        let old = format!(
            r#"{{"type":"partition","topic_id":"{id}","partition":0,"replicas":[1,2],"isr":[1],"leader":1,"leader_epoch":2,"partition_epoch":3}}"#
        );
        let record: MetadataRecord = serde_json::from_str(&old).unwrap();
        assert_eq!(
            record,
            MetadataRecord::Partition {
                topic_id: id,
                partition: 0,
                replicas: vec![1, 2],
                isr: vec![1],
                leader: 1,
                leader_epoch: 2,
                partition_epoch: 3,
                adding_replicas: vec![],
                removing_replicas: vec![],
                elr: Vec::new(),
            }
        );
        // Without a reassignment the record is written as before.
        assert_eq!(serde_json::to_string(&record).unwrap(), old);
    }
}
