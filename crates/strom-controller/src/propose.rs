//! The propose step: checks one metadata change against the current image,
//! as Kafka's controller does, and produces the records of that operation.
//! Pure: no I/O, no locks; the same image and request give the same answer
//! and the same records (apart from the random ids of new topics). The
//! controller commits the records (see [`crate::metadata_log`]) and applies
//! them to the image (see [`MetadataImage::apply_batch`]).

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use strom_protocol::error_code::ErrorCode;
use strom_protocol::topic::illegal_topic_name;
use uuid::Uuid;

use crate::controller::{
    AlterPartitionRequest, ControllerConfig, ControllerError, CreatePartitionsRequest,
    CreateTopicRequest, CreatedTopic, ElectionType, MAX_PARTITIONS_PER_TOPIC,
    MAX_RECORDS_PER_USER_OP, METADATA_BATCH_BYTES_MAX, METADATA_TOPIC, PRODUCER_ID_BLOCK_SIZE,
    ProducerIdBlock, kafka_uuid_string, random_kafka_uuid,
};
use crate::image::{ConfigResource, MetadataImage, PartitionImage};
use crate::records::{MetadataRecord, encode_batch};

/// Kafka's answer when one operation needs more records than it may write.
const TOO_LARGE_OPERATION: &str = "Unable to perform excessively large batch operation.";

/// The records of one operation, encoded as the one batch the commit step
/// makes durable, with the image offset they were checked against.
#[derive(Debug, Clone)]
pub struct Proposal {
    records: Vec<MetadataRecord>,
    batch: Bytes,
    /// The offset of the image the records were proposed against. Single
    /// writer: the proposal is committed only while that image is the
    /// latest, so the records' checks still hold when they are applied.
    based_on: i64,
}

impl Proposal {
    /// Encodes one operation's records as a batch, refusing an operation
    /// that is too large for one batch (POLICY_VIOLATION, as Kafka does).
    pub fn new(
        records: Vec<MetadataRecord>,
        image: &MetadataImage,
        timestamp_ms: i64,
    ) -> Result<Self, ControllerError> {
        if records.len() > MAX_RECORDS_PER_USER_OP {
            return Err(too_large_operation(records.len()));
        }
        let batch = encode_batch(&records, timestamp_ms).map_err(|e| {
            ControllerError::new(ErrorCode::KafkaStorageError, format!("metadata log: {e}"))
        })?;
        if batch.len() > METADATA_BATCH_BYTES_MAX as usize {
            return Err(ControllerError::new(
                ErrorCode::PolicyViolation,
                format!(
                    "{TOO_LARGE_OPERATION} The change takes {} bytes of metadata, above the limit of {METADATA_BATCH_BYTES_MAX}.",
                    batch.len()
                ),
            ));
        }
        Ok(Self {
            records,
            batch,
            based_on: image.offset,
        })
    }

    pub fn records(&self) -> &[MetadataRecord] {
        &self.records
    }

    /// The batch to commit.
    pub fn batch(&self) -> &Bytes {
        &self.batch
    }

    /// The offset of the image the records were checked against.
    pub fn based_on(&self) -> i64 {
        self.based_on
    }
}

/// A new cluster's id, written once when the metadata log is created.
pub fn cluster_id() -> Vec<MetadataRecord> {
    vec![MetadataRecord::ClusterId {
        cluster_id: kafka_uuid_string(&random_kafka_uuid()),
    }]
}

/// A broker process asking to join (Kafka's BrokerRegistration).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BrokerRegistration {
    pub broker_id: i32,
    /// New at every process start: a retry of the same registration is
    /// recognised, a second process with the same node id is not.
    pub incarnation_id: Uuid,
    pub host: String,
    pub port: u16,
    pub rack: Option<String>,
    /// Whether the process found its data directory shut down cleanly
    /// (Kafka's PreviousBrokerEpoch, KIP-966). After an unclean shutdown its
    /// logs may have lost records they had acknowledged (data not yet
    /// flushed): it leaves every ISR and ELR where another eligible replica
    /// remains. Absent (false) from brokers that do not say.
    #[serde(default)]
    pub clean_shutdown: bool,
}

/// The records of a registration: a new registration starts fenced (Kafka
/// unfences a broker once it has caught up with the metadata). `None` when
/// this incarnation is registered already (a retried request).
///
/// A new process of a broker the metadata still counts live (it restarted
/// before its session expired, or the active controller changed and lost
/// the session) first leaves the ISRs and leaderships that other live
/// in-sync replicas can take over, with new leader epochs, as a missed
/// session would have done. Otherwise it would go on leading with whatever
/// its log kept through the crash: after an unclean shutdown, less than it
/// acknowledged, and followers that hold the rest would truncate to it.
/// Where it is the last live in-sync replica it keeps its place (as Kafka
/// does without KIP-966).
///
/// A process that did not shut down cleanly (KIP-966's
/// `handleBrokerUncleanShutdown`) first leaves every ISR and ELR where
/// another in-sync or eligible replica remains, and loses its leaderships
/// there (see [`unclean_restart`]).
pub fn register_broker(
    image: &MetadataImage,
    registration: &BrokerRegistration,
    min_isr_default: i32,
) -> Option<Vec<MetadataRecord>> {
    let previous = image.brokers.get(&registration.broker_id);
    if previous.is_some_and(|b| b.incarnation_id == Some(registration.incarnation_id)) {
        return None;
    }
    // The registration comes first in its batch: the broker epoch is the
    // record's offset, and a broker counts as caught up once it has applied
    // past its epoch. Batches take one offset each in the quorum's log, so a
    // registration after other records of its batch would have an epoch
    // beyond the batch's offset, and the broker would wait for the next
    // batch, which might never come, to be unfenced.
    let mut records = vec![MetadataRecord::RegisterBroker {
        broker_id: registration.broker_id,
        host: registration.host.clone(),
        port: registration.port,
        rack: registration.rack.clone(),
        fenced: true,
        incarnation_id: Some(registration.incarnation_id),
        epoch: None,
    }];
    if let Some(b) = previous {
        // Computed on the image before the registration: what the previous
        // process held.
        if !registration.clean_shutdown {
            records.extend(unclean_restart(
                image,
                registration.broker_id,
                min_isr_default,
            ));
        } else if !b.fenced {
            records.extend(hand_over(image, registration.broker_id, min_isr_default));
        }
    }
    Some(records)
}

/// The partition changes that take broker `broker_id` out of every ISR
/// (and leadership) where another live in-sync replica remains.
fn hand_over(image: &MetadataImage, broker_id: i32, min_isr_default: i32) -> Vec<MetadataRecord> {
    let live = |id: i32| id != broker_id && image.is_live(id);
    let mut records = Vec::new();
    for topic in image.topics() {
        let min_isr = min_isr(image, topic, min_isr_default);
        for p in &topic.partitions {
            let others_live = p.isr.iter().any(|r| live(*r));
            if (!p.isr.contains(&broker_id) && p.leader != broker_id) || !others_live {
                continue;
            }
            let change = without_broker(p, broker_id, &live, min_isr);
            records.push(change.record(topic.id, p));
        }
    }
    records
}

/// The partition changes for a broker process that registers after an
/// unclean shutdown (KIP-966): its logs may have lost acknowledged records
/// that were not flushed, so it must not lead on what it kept. Wherever
/// another replica is in the ISR or the ELR, it leaves the ISR and the ELR
/// (and its leadership, for the first live in-sync replica, else the first
/// live eligible one, else none until one returns). Where it is the only
/// replica left in either, it keeps its place: no other replica is known
/// to hold more, and Kafka's recovery would elect this last known leader
/// too. (A replaced, empty data directory looks the same as a crash here;
/// telling the two apart needs directory ids, KIP-858.)
fn unclean_restart(
    image: &MetadataImage,
    broker_id: i32,
    min_isr_default: i32,
) -> Vec<MetadataRecord> {
    let live = |id: i32| id != broker_id && image.is_live(id);
    let mut records = Vec::new();
    for topic in image.topics() {
        let min_isr = min_isr(image, topic, min_isr_default);
        for p in &topic.partitions {
            let member = p.isr.contains(&broker_id) || p.elr.contains(&broker_id);
            let others = p.isr.iter().chain(&p.elr).any(|r| *r != broker_id);
            if !member || !others {
                continue;
            }
            let isr: Vec<i32> = p.isr.iter().copied().filter(|r| *r != broker_id).collect();
            let change = Change::new(p, isr, min_isr, Some(broker_id)).elect_if(
                p.leader == broker_id,
                p,
                &live,
            );
            records.push(change.record(topic.id, p));
        }
    }
    records
}

/// Partition `p` without broker `broker_id`: its ISR without it (unless it
/// is the last member, who stays), and, where it led, a new leader from
/// that ISR, else from the ELR (-1 when none is `live`) in the next leader
/// epoch.
fn without_broker(
    p: &PartitionImage,
    broker_id: i32,
    live: &dyn Fn(i32) -> bool,
    min_isr: usize,
) -> Change {
    let shrunk: Vec<i32> = p.isr.iter().copied().filter(|r| *r != broker_id).collect();
    let isr = if shrunk.is_empty() {
        p.isr.clone()
    } else {
        shrunk
    };
    Change::new(p, isr, min_isr, None).elect_if(p.leader == broker_id, p, live)
}

/// A partition's next ISR, ELR and leadership, before it is a record.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Change {
    isr: Vec<i32>,
    elr: Vec<i32>,
    leader: i32,
    leader_epoch: i32,
}

impl Change {
    /// `p` with ISR `isr`, its leader kept, and the ELR that ISR implies
    /// (KIP-966's `maybePopulateTargetElr`): empty when the ISR has at least
    /// `min_isr` members; otherwise the old ISR and ELR members that are not
    /// in the new ISR, but for `unclean` (a broker whose logs may have lost
    /// records), in assignment order.
    fn new(p: &PartitionImage, isr: Vec<i32>, min_isr: usize, unclean: Option<i32>) -> Self {
        let elr = target_elr(p, &p.replicas, &p.removing_replicas, &isr, min_isr, unclean);
        Self {
            isr,
            elr,
            leader: p.leader,
            leader_epoch: p.leader_epoch,
        }
    }

    /// When `needed`, a new leader in the next leader epoch: the first
    /// live in-sync replica in assignment order; when none, the first live
    /// eligible one (KIP-966), which becomes the only in-sync replica, the
    /// others staying eligible; -1 when neither is live.
    fn elect_if(mut self, needed: bool, p: &PartitionImage, live: &dyn Fn(i32) -> bool) -> Self {
        if !needed {
            return self;
        }
        self.leader_epoch = p.leader_epoch + 1;
        self.leader = elect(&p.replicas, &self.isr, live);
        let chosen = elect(&p.replicas, &self.elr, live);
        if self.leader == -1 && chosen != -1 {
            self.elr.retain(|r| *r != chosen);
            // The in-sync members left (not live) become eligible: they
            // held everything up to the high watermark too.
            for r in std::mem::replace(&mut self.isr, vec![chosen]) {
                if !self.elr.contains(&r) {
                    self.elr.push(r);
                }
            }
            self.elr
                .sort_by_key(|r| p.replicas.iter().position(|x| x == r));
            self.leader = chosen;
        }
        self
    }

    fn record(self, topic_id: Uuid, p: &PartitionImage) -> MetadataRecord {
        partition_change(
            topic_id,
            p,
            self.isr,
            self.leader,
            self.leader_epoch,
            self.elr,
        )
    }
}

/// The ELR of `p` once its replicas are `replicas` (of which `removing` are
/// leaving) and its ISR is `isr` (KIP-966's `maybePopulateTargetElr`): empty
/// when the ISR has at least the effective `min_isr` members (bounded by
/// the replication factor without the replicas being removed, as the
/// leader's high watermark rule is); otherwise the members of the old ISR
/// and ELR that are still replicas and not in the new ISR, but for
/// `unclean` (a broker whose logs may have lost records), in assignment
/// order.
pub(crate) fn target_elr(
    p: &PartitionImage,
    replicas: &[i32],
    removing: &[i32],
    isr: &[i32],
    min_isr: usize,
    unclean: Option<i32>,
) -> Vec<i32> {
    let replication_factor = replicas.len().saturating_sub(removing.len()).max(1);
    if isr.len() >= min_isr.min(replication_factor).max(1) {
        return Vec::new();
    }
    replicas
        .iter()
        .copied()
        .filter(|r| p.isr.contains(r) || p.elr.contains(r))
        .filter(|r| !isr.contains(r) && Some(*r) != unclean)
        .collect()
}

/// `min.insync.replicas` of `topic` (its config, else the cluster's dynamic
/// default, else `default`, the controller's static property); [`Change`]
/// bounds it by each partition's replication factor, as Kafka's
/// `getTopicEffectiveMinIsr` does.
pub(crate) fn min_isr(
    image: &MetadataImage,
    topic: &crate::image::TopicImage,
    default: i32,
) -> usize {
    let configured = topic
        .configs
        .get(MIN_INSYNC_REPLICAS)
        .or_else(|| {
            image
                .broker_configs
                .get(&None)
                .and_then(|c| c.get(MIN_INSYNC_REPLICAS))
        })
        .and_then(|v| v.trim().parse::<i32>().ok())
        .unwrap_or(default);
    usize::try_from(configured.max(1)).unwrap_or(1)
}

/// Kafka's `min.insync.replicas`.
pub const MIN_INSYNC_REPLICAS: &str = "min.insync.replicas";

/// Kafka's `unclean.leader.election.enable` (topic config, else the
/// cluster-wide dynamic broker config, else `default`): whether a partition
/// whose in-sync replicas are all down may be led by another live replica,
/// which may have lost acknowledged records.
pub const UNCLEAN_LEADER_ELECTION: &str = "unclean.leader.election.enable";

pub(crate) fn unclean_allowed(
    image: &MetadataImage,
    topic: &crate::image::TopicImage,
    default: bool,
) -> bool {
    topic
        .configs
        .get(UNCLEAN_LEADER_ELECTION)
        .or_else(|| {
            image
                .broker_configs
                .get(&None)
                .and_then(|c| c.get(UNCLEAN_LEADER_ELECTION))
        })
        .map_or(default, |v| v.eq_ignore_ascii_case("true"))
}

/// Unclean election: the first live replica in assignment order, which
/// becomes the only in-sync replica.
fn elect_unclean(replicas: &[i32], live: &dyn Fn(i32) -> bool) -> Option<i32> {
    replicas.iter().copied().find(|r| live(*r))
}

/// The first replica in assignment order that is in `isr` and live: Kafka's
/// clean leader election (`PartitionChangeBuilder`).
fn elect(replicas: &[i32], isr: &[i32], live: &dyn Fn(i32) -> bool) -> i32 {
    replicas
        .iter()
        .copied()
        .find(|r| isr.contains(r) && live(*r))
        .unwrap_or(-1)
}

/// Fences broker `broker_id` (a missed session, or a controlled shutdown):
/// the fence record, then for every partition it led a new leader from the
/// rest of the ISR (leader -1 when none is live, keeping the broker as the
/// last ISR member, as Kafka does, so it can lead again when it returns),
/// and it leaves every other ISR. With `unclean_default` (a broker that
/// failed, not a controlled shutdown), a partition left without a live
/// in-sync replica gets another live replica as leader and sole ISR member
/// where `unclean.leader.election.enable` allows it. `None` when it is not
/// registered or already fenced.
pub fn fence_broker(
    image: &MetadataImage,
    broker_id: i32,
    unclean_default: Option<bool>,
    min_isr_default: i32,
) -> Option<Vec<MetadataRecord>> {
    let broker = image.brokers.get(&broker_id).filter(|b| !b.fenced)?;
    let mut records = vec![MetadataRecord::FenceBroker {
        broker_id,
        epoch: broker.epoch,
    }];
    let live = |id: i32| id != broker_id && image.is_live(id);
    for topic in image.topics() {
        let min_isr = min_isr(image, topic, min_isr_default);
        for p in &topic.partitions {
            if !p.isr.contains(&broker_id) && p.leader != broker_id {
                continue;
            }
            let mut change = without_broker(p, broker_id, &live, min_isr);
            if p.leader == broker_id
                && change.leader == -1
                && unclean_default.is_some_and(|d| unclean_allowed(image, topic, d))
                && let Some(chosen) = elect_unclean(&p.replicas, &live)
            {
                change.leader = chosen;
                change.isr = vec![chosen];
                // An unclean election leaves nobody known to hold more.
                change.elr.clear();
            }
            if change.isr == p.isr && change.leader == p.leader && change.elr == p.elr {
                continue;
            }
            records.push(change.record(topic.id, p));
        }
    }
    Some(records)
}

/// Unfences broker `broker_id` and elects a leader for the partitions that
/// have none and keep it in their ISR or ELR (the first live in-sync
/// replica, else the first live eligible one: see [`Change::elect_if`]), or
/// (unclean election, where
/// `unclean.leader.election.enable` allows it, `unclean_default` otherwise)
/// that have no leader and list it as a replica. `None` when it is not
/// registered or not fenced.
pub fn unfence_broker(
    image: &MetadataImage,
    broker_id: i32,
    unclean_default: bool,
    min_isr_default: i32,
) -> Option<Vec<MetadataRecord>> {
    let broker = image.brokers.get(&broker_id).filter(|b| b.fenced)?;
    let mut records = vec![MetadataRecord::UnfenceBroker {
        broker_id,
        epoch: broker.epoch,
    }];
    let live = |id: i32| id == broker_id || image.is_live(id);
    for topic in image.topics() {
        let min_isr = min_isr(image, topic, min_isr_default);
        for p in &topic.partitions {
            if p.leader == -1 && (p.isr.contains(&broker_id) || p.elr.contains(&broker_id)) {
                let change = Change::new(p, p.isr.clone(), min_isr, None).elect_if(true, p, &live);
                if change.leader != -1 || change.elr != p.elr {
                    records.push(change.record(topic.id, p));
                }
            } else if p.leader == -1
                && p.replicas.contains(&broker_id)
                && unclean_allowed(image, topic, unclean_default)
            {
                records.push(partition_change(
                    topic.id,
                    p,
                    vec![broker_id],
                    broker_id,
                    p.leader_epoch + 1,
                    Vec::new(),
                ));
            }
        }
    }
    Some(records)
}

/// A change of `p`'s ISR or leadership that keeps its replicas and any
/// reassignment in progress.
fn partition_change(
    topic_id: Uuid,
    p: &crate::image::PartitionImage,
    isr: Vec<i32>,
    leader: i32,
    leader_epoch: i32,
    elr: Vec<i32>,
) -> MetadataRecord {
    MetadataRecord::Partition {
        topic_id,
        partition: p.partition,
        replicas: p.replicas.clone(),
        isr,
        leader,
        leader_epoch,
        partition_epoch: p.partition_epoch + 1,
        adding_replicas: p.adding_replicas.clone(),
        removing_replicas: p.removing_replicas.clone(),
        elr,
    }
}

/// AlterPartition (KIP-497): the partition leader asks to change the ISR,
/// checked as Kafka's `ReplicationControlManager.validateAlterPartitionData`
/// does, in its order. The answer is the record of the new ISR (same leader,
/// same leader epoch: an ISR change never bumps the leader epoch since
/// KAFKA-15021; the partition epoch + 1), or no record when the ISR is the
/// one asked for already (the caller answers the current state).
///
/// Refusals: the sender's broker epoch not the registered one
/// (STALE_BROKER_EPOCH); an unknown topic id (UNKNOWN_TOPIC_ID) or partition
/// (UNKNOWN_TOPIC_OR_PARTITION); a leader or partition epoch newer than
/// this controller's (NOT_CONTROLLER: Kafka's hint that the sender talks to
/// a controller behind the newest one, so it retries); an older leader epoch
/// (FENCED_LEADER_EPOCH); a sender that is not the leader (INVALID_REQUEST);
/// an older partition epoch (INVALID_UPDATE_VERSION: another change went
/// first); an ISR naming a non-replica, a replica twice, or not the leader
/// (INVALID_REQUEST); an ISR member that is not registered or is fenced (a
/// fenced broker includes one in controlled shutdown here:
/// INELIGIBLE_REPLICA, KIP-841). Kafka checks every member of the new ISR
/// for eligibility, not only the ones added; so does this.
pub fn alter_partition(
    image: &MetadataImage,
    request: &AlterPartitionRequest,
    min_isr_default: i32,
) -> Result<Option<MetadataRecord>, ControllerError> {
    let refuse = |code, message: String| Err(ControllerError::new(code, message));
    let registered = image.brokers.get(&request.broker_id).map(|b| b.epoch);
    if registered != Some(request.broker_epoch) {
        return refuse(
            ErrorCode::StaleBrokerEpoch,
            format!(
                "broker {} epoch {} is not registered",
                request.broker_id, request.broker_epoch
            ),
        );
    }
    let Some(topic) = image.topic_by_id(&request.topic_id) else {
        return refuse(
            ErrorCode::UnknownTopicId,
            format!("no topic with id {}", kafka_uuid_string(&request.topic_id)),
        );
    };
    let Some(p) = image.partition_by_id(&request.topic_id, request.partition) else {
        return refuse(
            ErrorCode::UnknownTopicOrPartition,
            format!("no partition {}-{}", topic.name, request.partition),
        );
    };
    let name = format!("{}-{}", topic.name, p.partition);
    if request.leader_epoch > p.leader_epoch || request.partition_epoch > p.partition_epoch {
        return refuse(
            ErrorCode::NotController,
            format!(
                "{name}: leader epoch {} and partition epoch {} are newer than this controller's {} and {}",
                request.leader_epoch, request.partition_epoch, p.leader_epoch, p.partition_epoch
            ),
        );
    }
    if request.leader_epoch < p.leader_epoch {
        return refuse(
            ErrorCode::FencedLeaderEpoch,
            format!(
                "{name}: leader epoch {} is older than the current {}",
                request.leader_epoch, p.leader_epoch
            ),
        );
    }
    if request.broker_id != p.leader {
        return refuse(
            ErrorCode::InvalidRequest,
            format!(
                "{name}: broker {} is not the leader ({})",
                request.broker_id, p.leader
            ),
        );
    }
    if request.partition_epoch < p.partition_epoch {
        return refuse(
            ErrorCode::InvalidUpdateVersion,
            format!(
                "{name}: partition epoch {} is older than the current {}",
                request.partition_epoch, p.partition_epoch
            ),
        );
    }
    let unique: BTreeSet<i32> = request.new_isr.iter().copied().collect();
    if unique.len() != request.new_isr.len() || !unique.iter().all(|r| p.replicas.contains(r)) {
        return refuse(
            ErrorCode::InvalidRequest,
            format!(
                "{name}: ISR {:?} is not a set of the replicas {:?}",
                request.new_isr, p.replicas
            ),
        );
    }
    if !unique.contains(&p.leader) {
        return refuse(
            ErrorCode::InvalidRequest,
            format!(
                "{name}: ISR {:?} does not hold the leader {}",
                request.new_isr, p.leader
            ),
        );
    }
    let ineligible: Vec<String> = request
        .new_isr
        .iter()
        .filter_map(|r| match image.brokers.get(r) {
            None => Some(format!("{r} (not registered)")),
            Some(b) if b.fenced => Some(format!("{r} (fenced)")),
            Some(_) => None,
        })
        .collect();
    if !ineligible.is_empty() {
        return refuse(
            ErrorCode::IneligibleReplica,
            format!(
                "{name}: ISR {:?} names ineligible replicas: {}",
                request.new_isr,
                ineligible.join(", ")
            ),
        );
    }
    if request.new_isr == p.isr {
        return Ok(None);
    }
    // KIP-455: the ISR that takes in the last adding replica completes
    // the reassignment in the same record (Kafka's `alterPartition` →
    // `PartitionChangeBuilder.completeReassignmentIfNeeded`).
    let live = |id: i32| image.is_live(id);
    let min_isr = min_isr(image, topic, min_isr_default);
    if let Some(completed) =
        crate::reassign::complete_if_needed(topic.id, p, &request.new_isr, &live, min_isr)
    {
        return Ok(Some(completed));
    }
    Ok(Some(
        Change::new(p, request.new_isr.clone(), min_isr, None).record(topic.id, p),
    ))
}

/// The results of one ElectLeaders request, by topic: for each partition
/// `Ok` (a new leader was elected) or why not.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TopicElection {
    pub topic: String,
    pub partitions: Vec<(i32, Result<(), ControllerError>)>,
}

/// ElectLeaders (KIP-460), as Kafka's `ReplicationControlManager.electLeaders`:
/// for the partitions named (`None`: every partition of every topic), the
/// records of the elections and each partition's result. With `None`, the
/// partitions that need no election are left out of the answer (each topic
/// is still listed), as Kafka does. A partition named twice is elected once.
pub fn elect_leaders(
    image: &MetadataImage,
    election: ElectionType,
    targets: Option<&[(String, Vec<i32>)]>,
) -> (Vec<MetadataRecord>, Vec<TopicElection>) {
    let mut records = Vec::new();
    let mut elected = BTreeSet::new();
    let mut results = Vec::new();
    let mut one = |topic: &str,
                   partition: i32,
                   records: &mut Vec<MetadataRecord>|
     -> Result<(), ControllerError> {
        if elected.contains(&(topic.to_owned(), partition)) {
            return Ok(());
        }
        let record = elect_leader(image, topic, partition, election)?;
        elected.insert((topic.to_owned(), partition));
        records.push(record);
        Ok(())
    };
    match targets {
        None => {
            for topic in image.topics() {
                let partitions = topic
                    .partitions
                    .iter()
                    .map(|p| (p.partition, one(&topic.name, p.partition, &mut records)))
                    .filter(|(_, r)| !matches!(r, Err(e) if e.code == ErrorCode::ElectionNotNeeded))
                    .collect();
                results.push(TopicElection {
                    topic: topic.name.clone(),
                    partitions,
                });
            }
        }
        Some(targets) => {
            for (topic, partitions) in targets {
                let partitions = partitions
                    .iter()
                    .map(|p| (*p, one(topic, *p, &mut records)))
                    .collect();
                results.push(TopicElection {
                    topic: topic.clone(),
                    partitions,
                });
            }
        }
    }
    (records, results)
}

/// One partition's election (Kafka's `electLeader` and
/// `PartitionChangeBuilder`). A live replica is one registered and not
/// fenced (Strom fences a broker in controlled shutdown).
///
/// - PREFERRED: the first replica, when it is live and in the ISR
///   (ELECTION_NOT_NEEDED when it leads already). Otherwise, a partition
///   whose leader is gone gets the first live in-sync replica; one whose
///   leader is fine keeps it (PREFERRED_LEADER_NOT_AVAILABLE).
/// - UNCLEAN: only for a partition without a leader (ELECTION_NOT_NEEDED
///   otherwise): the first live in-sync replica, else the first live
///   eligible one (KIP-966, which loses nothing), else the first live
///   replica, which becomes the only in-sync one and may lack acknowledged
///   records (ELIGIBLE_LEADERS_NOT_AVAILABLE when no replica is live).
///
/// A new leader bumps the leader epoch and the partition epoch.
pub fn elect_leader(
    image: &MetadataImage,
    topic: &str,
    partition: i32,
    election: ElectionType,
) -> Result<MetadataRecord, ControllerError> {
    let Some(t) = image.topic(topic) else {
        return Err(ControllerError::new(
            ErrorCode::UnknownTopicOrPartition,
            format!("No such topic as {topic}"),
        ));
    };
    let Some(p) = image.partition(topic, partition) else {
        return Err(ControllerError::new(
            ErrorCode::UnknownTopicOrPartition,
            format!("No such partition as {topic}-{partition}"),
        ));
    };
    let preferred = p.replicas.first().copied().unwrap_or(-1);
    let not_needed = match election {
        ElectionType::Preferred => p.leader == preferred,
        ElectionType::Unclean => p.leader != -1,
    };
    if not_needed {
        return Err(ControllerError::new(
            ErrorCode::ElectionNotNeeded,
            format!("{topic}-{partition} is led by {} already", p.leader),
        ));
    }
    let live = |id: i32| image.is_live(id);
    let valid = |id: i32| p.isr.contains(&id) && live(id);
    let (leader, isr) = match election {
        ElectionType::Preferred if valid(preferred) => (preferred, p.isr.clone()),
        ElectionType::Preferred if valid(p.leader) => (p.leader, p.isr.clone()),
        ElectionType::Preferred => (elect(&p.replicas, &p.isr, &live), p.isr.clone()),
        ElectionType::Unclean => {
            // A live in-sync or eligible replica (KIP-966) holds everything
            // up to the high watermark: no need to lose anything.
            let clean = Change {
                isr: p.isr.clone(),
                elr: p.elr.clone(),
                leader: p.leader,
                leader_epoch: p.leader_epoch,
            }
            .elect_if(true, p, &live);
            if clean.leader != -1 {
                return Ok(clean.record(t.id, p));
            }
            match elect_unclean(&p.replicas, &live) {
                Some(chosen) => (chosen, vec![chosen]),
                None => (-1, p.isr.clone()),
            }
        }
    };
    if leader == p.leader {
        return Err(match election {
            ElectionType::Preferred => ControllerError::new(
                ErrorCode::PreferredLeaderNotAvailable,
                format!(
                    "the preferred replica {preferred} of {topic}-{partition} is not live and in sync (ISR {:?})",
                    p.isr
                ),
            ),
            ElectionType::Unclean => ControllerError::new(
                ErrorCode::EligibleLeadersNotAvailable,
                format!(
                    "no replica of {topic}-{partition} is live ({:?})",
                    p.replicas
                ),
            ),
        });
    }
    // The ELR stays while the ISR does; an unclean election clears it.
    let elr = if isr == p.isr {
        p.elr.clone()
    } else {
        Vec::new()
    };
    Ok(partition_change(
        t.id,
        p,
        isr,
        leader,
        p.leader_epoch + 1,
        elr,
    ))
}

/// Bound on the elections of one automatic rebalance, Kafka's
/// `maxElectionsPerImbalance`: each is a record of one metadata batch, and
/// brokers move that many leaderships at once; the rest wait for the next
/// check, which follows at once when the bound was reached.
pub const MAX_ELECTIONS_PER_IMBALANCE: usize = 1000;

/// The partitions a broker is the first replica of: how many, and those
/// another broker (or none) leads.
type PreferredPartitions<'a> = (
    usize,
    Vec<(
        &'a crate::image::TopicImage,
        &'a crate::image::PartitionImage,
    )>,
);

/// `auto.leader.rebalance.enable`'s check: the preferred-replica elections
/// due now (at most [`MAX_ELECTIONS_PER_IMBALANCE`]). For each broker, the
/// partitions whose first replica it is and that another broker (or none)
/// leads are its imbalanced ones; when they are more than
/// `imbalance_percentage` percent of the partitions it is first replica
/// of (Kafka's `leader.imbalance.per.broker.percentage`, the ratio of the
/// ZooKeeper controller's `checkAndTriggerAutoLeaderRebalance`; KRaft's
/// controller elects every imbalanced partition, as a percentage of 0 does
/// here), each of them whose first replica is live and in sync is moved
/// back to it. A partition with the preferred replica not live and in sync
/// keeps its leader.
pub fn rebalance_leaders(image: &MetadataImage, imbalance_percentage: i32) -> Vec<MetadataRecord> {
    // By preferred replica: (partitions it is first of, imbalanced ones).
    let mut by_broker: BTreeMap<i32, PreferredPartitions<'_>> = BTreeMap::new();
    for topic in image.topics() {
        for p in &topic.partitions {
            let Some(&preferred) = p.replicas.first() else {
                continue;
            };
            let entry = by_broker.entry(preferred).or_default();
            entry.0 += 1;
            if p.leader != preferred {
                entry.1.push((topic, p));
            }
        }
    }
    let mut records = Vec::new();
    for (broker, (total, imbalanced)) in by_broker {
        // imbalanced / total > percentage / 100, in integers.
        let exceeds =
            (imbalanced.len() as i128) * 100 > (total as i128) * i128::from(imbalance_percentage);
        if imbalanced.is_empty() || !exceeds || !image.is_live(broker) {
            continue;
        }
        for (topic, p) in imbalanced {
            if records.len() >= MAX_ELECTIONS_PER_IMBALANCE {
                return records;
            }
            if p.isr.contains(&broker) {
                records.push(partition_change(
                    topic.id,
                    p,
                    p.isr.clone(),
                    broker,
                    p.leader_epoch + 1,
                    p.elr.clone(),
                ));
            }
        }
    }
    records
}

/// Kafka writes one CreateTopics request's topics as one operation, bounded
/// by MAX_RECORDS_PER_USER_OP: over it, no topic of the request is created.
pub fn create_topics_bound(
    image: &MetadataImage,
    config: &ControllerConfig,
    requests: &[CreateTopicRequest],
) -> Result<(), ControllerError> {
    let planned: usize = requests
        .iter()
        .filter_map(|r| create_topic(image, config, r).ok())
        .map(|(records, _)| records.len())
        .sum();
    if planned > MAX_RECORDS_PER_USER_OP {
        return Err(too_large_operation(planned));
    }
    Ok(())
}

/// A new topic: its record, one record per partition (round-robin
/// placement unless the request assigns replicas), and its configs.
pub fn create_topic(
    image: &MetadataImage,
    config: &ControllerConfig,
    request: &CreateTopicRequest,
) -> Result<(Vec<MetadataRecord>, CreatedTopic), ControllerError> {
    let name = &request.name;
    validate_new_topic_name(image, name)?;
    let brokers = placement_order(image);
    let assignments: Vec<Vec<i32>> = if request.assignments.is_empty() {
        let partitions = match request.num_partitions {
            -1 => config.num_partitions,
            n if n <= 0 => {
                return Err(ControllerError::new(
                    ErrorCode::InvalidPartitions,
                    "Number of partitions was set to an invalid non-positive value.",
                ));
            }
            n => n,
        };
        if partitions > MAX_PARTITIONS_PER_TOPIC {
            return Err(ControllerError::new(
                ErrorCode::InvalidPartitions,
                format!(
                    "Number of partitions {partitions} is above the limit of {MAX_PARTITIONS_PER_TOPIC}."
                ),
            ));
        }
        let replication_factor = match request.replication_factor {
            -1 => config.default_replication_factor,
            n if n <= 0 => {
                return Err(ControllerError::new(
                    ErrorCode::InvalidReplicationFactor,
                    "Replication factor must be larger than 0, or -1 to use the default value.",
                ));
            }
            n => n,
        };
        let rf = usize::try_from(replication_factor).unwrap_or(0);
        if rf > brokers.len() {
            return Err(ControllerError::new(
                ErrorCode::InvalidReplicationFactor,
                format!(
                    "Unable to replicate the partition {replication_factor} time(s): The target replication factor of {replication_factor} cannot be reached because only {} broker(s) are registered.",
                    brokers.len()
                ),
            ));
        }
        assign_replicas(&brokers, partitions, rf)
    } else {
        if request.num_partitions != -1 || request.replication_factor != -1 {
            return Err(ControllerError::new(
                ErrorCode::InvalidRequest,
                "Both numPartitions or replicationFactor and replicasAssignments were set. Both cannot be used at the same time.",
            ));
        }
        let mut by_partition = request.assignments.clone();
        by_partition.sort_by_key(|(p, _)| *p);
        let count = i32::try_from(by_partition.len()).unwrap_or(i32::MAX);
        if count > MAX_PARTITIONS_PER_TOPIC {
            return Err(ControllerError::new(
                ErrorCode::InvalidPartitions,
                "Too many partitions.",
            ));
        }
        for (i, (p, _)) in by_partition.iter().enumerate() {
            if usize::try_from(*p).ok() != Some(i) {
                return Err(ControllerError::new(
                    ErrorCode::InvalidReplicaAssignment,
                    "Partitions should be a consecutive 0-based integer sequence",
                ));
            }
        }
        let assignments: Vec<Vec<i32>> = by_partition.into_iter().map(|(_, r)| r).collect();
        validate_assignments(image, &assignments)?;
        assignments
    };
    let topic_id = random_kafka_uuid();
    let mut records = vec![MetadataRecord::Topic {
        name: name.clone(),
        topic_id,
    }];
    for (p, replicas) in assignments.iter().enumerate() {
        records.push(MetadataRecord::Partition {
            topic_id,
            partition: i32::try_from(p).unwrap_or(i32::MAX),
            replicas: replicas.clone(),
            isr: replicas.clone(),
            leader: replicas.first().copied().unwrap_or(-1),
            leader_epoch: 0,
            partition_epoch: 0,
            adding_replicas: Vec::new(),
            removing_replicas: Vec::new(),
            elr: Vec::new(),
        });
    }
    for (key, value) in &request.configs {
        records.push(MetadataRecord::Config {
            resource: ConfigResource::Topic(name.clone()),
            name: key.clone(),
            value: Some(value.clone()),
        });
    }
    let created = CreatedTopic {
        topic_id,
        num_partitions: i32::try_from(assignments.len()).unwrap_or(i32::MAX),
        replication_factor: assignments
            .first()
            .map_or(0, |r| i16::try_from(r.len()).unwrap_or(i16::MAX)),
    };
    Ok((records, created))
}

/// Deletes topic `name`: its record and the deleted topic's id.
pub fn delete_topic(
    image: &MetadataImage,
    name: &str,
) -> Result<(Vec<MetadataRecord>, Uuid), ControllerError> {
    let topic = image.topic(name).ok_or_else(|| {
        ControllerError::new(
            ErrorCode::UnknownTopicOrPartition,
            "This server does not host this topic-partition.",
        )
    })?;
    let topic_id = topic.id;
    Ok((vec![MetadataRecord::RemoveTopic { topic_id }], topic_id))
}

/// The bound on one CreatePartitions request: the partitions it adds over
/// all its topics (see [`MAX_RECORDS_PER_USER_OP`]).
pub fn create_partitions_bound(
    image: &MetadataImage,
    requests: &[CreatePartitionsRequest],
) -> Result<(), ControllerError> {
    let added: usize = requests
        .iter()
        .filter_map(|r| {
            let current = image.topic(&r.name)?.partitions.len();
            usize::try_from(r.count).ok()?.checked_sub(current)
        })
        .sum();
    if added > MAX_RECORDS_PER_USER_OP {
        return Err(too_large_operation(added));
    }
    Ok(())
}

/// Grows one topic to the requested partition count: one record per new
/// partition.
pub fn create_partitions(
    image: &MetadataImage,
    request: CreatePartitionsRequest,
) -> Result<Vec<MetadataRecord>, ControllerError> {
    let topic = image.topic(&request.name).ok_or_else(|| {
        ControllerError::new(
            ErrorCode::UnknownTopicOrPartition,
            "This server does not host this topic-partition.",
        )
    })?;
    let current = i32::try_from(topic.partitions.len()).unwrap_or(i32::MAX);
    if request.count < current {
        return Err(ControllerError::new(
            ErrorCode::InvalidPartitions,
            format!(
                "Topic currently has {current} partitions, which is higher than the requested {}.",
                request.count
            ),
        ));
    }
    if request.count == current {
        return Err(ControllerError::new(
            ErrorCode::InvalidPartitions,
            format!("Topic already has {current} partitions."),
        ));
    }
    if request.count > MAX_PARTITIONS_PER_TOPIC {
        return Err(ControllerError::new(
            ErrorCode::InvalidPartitions,
            "Too many partitions.",
        ));
    }
    let added = usize::try_from(request.count - current).unwrap_or(0);
    let assignments = match request.assignments {
        Some(a) => {
            if a.len() != added {
                return Err(ControllerError::new(
                    ErrorCode::InvalidReplicaAssignment,
                    format!(
                        "Increasing the number of partitions by {added} but {} assignments provided.",
                        a.len()
                    ),
                ));
            }
            validate_assignments(image, &a)?;
            a
        }
        None => {
            let rf = topic.partitions.first().map_or(1, |p| p.replicas.len());
            let brokers = placement_order(image);
            if rf > brokers.len() {
                return Err(ControllerError::new(
                    ErrorCode::InvalidReplicationFactor,
                    "Not enough brokers for the topic's replication factor.",
                ));
            }
            let all = assign_replicas(&brokers, request.count, rf);
            all.into_iter().skip(topic.partitions.len()).collect()
        }
    };
    Ok(assignments
        .into_iter()
        .enumerate()
        .map(|(i, replicas)| MetadataRecord::Partition {
            topic_id: topic.id,
            partition: current + i32::try_from(i).unwrap_or(0),
            isr: replicas.clone(),
            leader: replicas.first().copied().unwrap_or(-1),
            replicas,
            leader_epoch: 0,
            partition_epoch: 0,
            adding_replicas: Vec::new(),
            removing_replicas: Vec::new(),
            elr: Vec::new(),
        })
        .collect())
}

/// Sets (`Some`) or removes (`None`) config values, all or nothing: one
/// record per change, none if a topic does not exist. The values were
/// checked by the caller (the broker knows the config definitions).
pub fn alter_configs(
    image: &MetadataImage,
    changes: Vec<(ConfigResource, String, Option<String>)>,
) -> Result<Vec<MetadataRecord>, ControllerError> {
    for (resource, _, _) in &changes {
        if let ConfigResource::Topic(name) = resource
            && image.topic(name).is_none()
        {
            return Err(ControllerError::new(
                ErrorCode::UnknownTopicOrPartition,
                format!("Topic {name} does not exist."),
            ));
        }
    }
    // A new min.insync.replicas clears the ELRs it applies to (as Kafka
    // does): they were formed under the old minimum, and the high
    // watermark may move under the new one without their members.
    let mut cleared: Vec<MetadataRecord> = Vec::new();
    let mut seen = BTreeSet::new();
    for (resource, name, _) in &changes {
        if name != MIN_INSYNC_REPLICAS {
            continue;
        }
        for topic in image.topics() {
            let applies = match resource {
                ConfigResource::Topic(t) => *t == topic.name,
                ConfigResource::Broker(_) => true,
            };
            if !applies || !seen.insert(topic.id) {
                continue;
            }
            for p in topic.partitions.iter().filter(|p| !p.elr.is_empty()) {
                cleared.push(partition_change(
                    topic.id,
                    p,
                    p.isr.clone(),
                    p.leader,
                    p.leader_epoch,
                    Vec::new(),
                ));
            }
        }
    }
    Ok(changes
        .into_iter()
        .map(|(resource, name, value)| MetadataRecord::Config {
            resource,
            name,
            value,
        })
        .chain(cleared)
        .collect())
}

/// Hands broker `broker_id` the next block of producer ids.
pub fn allocate_producer_ids(
    image: &MetadataImage,
    broker_id: i32,
) -> (Vec<MetadataRecord>, ProducerIdBlock) {
    let start = image.next_producer_id_block;
    (
        vec![MetadataRecord::ProducerIds {
            broker_id,
            next_block_start: start + PRODUCER_ID_BLOCK_SIZE,
        }],
        ProducerIdBlock {
            start,
            len: PRODUCER_ID_BLOCK_SIZE,
        },
    )
}

/// POLICY_VIOLATION for an operation of `records` metadata records.
pub(crate) fn too_large_operation(records: usize) -> ControllerError {
    ControllerError::new(
        ErrorCode::PolicyViolation,
        format!(
            "{TOO_LARGE_OPERATION} The request needs {records} metadata records, above the limit of {MAX_RECORDS_PER_USER_OP} per operation (a topic takes one record plus one per partition)."
        ),
    )
}

/// Kafka's topic name rules for new topics.
fn validate_new_topic_name(image: &MetadataImage, name: &str) -> Result<(), ControllerError> {
    if let Some(why) = illegal_topic_name(name) {
        return Err(ControllerError::new(ErrorCode::InvalidTopicException, why));
    }
    if name == METADATA_TOPIC {
        return Err(ControllerError::new(
            ErrorCode::InvalidTopicException,
            format!("Topic name {name} is reserved for the cluster metadata."),
        ));
    }
    if image.topic(name).is_some() {
        return Err(ControllerError::new(
            ErrorCode::TopicAlreadyExists,
            format!("Topic '{name}' already exists."),
        ));
    }
    // Kafka: '.' and '_' collide in metric names, so topics differing only in
    // them cannot coexist.
    let normalized = name.replace('.', "_");
    if let Some(other) = image
        .topics()
        .find(|t| t.name.replace('.', "_") == normalized)
    {
        return Err(ControllerError::new(
            ErrorCode::InvalidTopicException,
            format!(
                "Topic '{name}' collides with existing topic: {}",
                other.name
            ),
        ));
    }
    Ok(())
}

fn validate_assignments(
    image: &MetadataImage,
    assignments: &[Vec<i32>],
) -> Result<(), ControllerError> {
    let mut rf = None;
    for replicas in assignments {
        if replicas.is_empty() {
            return Err(ControllerError::new(
                ErrorCode::InvalidReplicaAssignment,
                "Empty replica assignment.",
            ));
        }
        let unique: BTreeSet<_> = replicas.iter().collect();
        if unique.len() != replicas.len() {
            return Err(ControllerError::new(
                ErrorCode::InvalidReplicaAssignment,
                "Duplicate brokers in a replica assignment.",
            ));
        }
        if let Some(b) = replicas.iter().find(|b| !image.brokers.contains_key(b)) {
            return Err(ControllerError::new(
                ErrorCode::InvalidReplicaAssignment,
                format!("Replica assignment names broker {b}, which is not registered."),
            ));
        }
        if *rf.get_or_insert(replicas.len()) != replicas.len() {
            return Err(ControllerError::new(
                ErrorCode::InvalidReplicaAssignment,
                "All partitions should have the same number of replicas.",
            ));
        }
    }
    Ok(())
}

/// Spreads `partitions` partitions of `rf` replicas round-robin over
/// `brokers`, each partition led by a different broker in turn.
fn assign_replicas(brokers: &[i32], partitions: i32, rf: usize) -> Vec<Vec<i32>> {
    let n = brokers.len().max(1);
    (0..usize::try_from(partitions).unwrap_or(0))
        .map(|p| (0..rf).map(|j| brokers[(p + j) % n]).collect())
        .collect()
}

/// The brokers new replicas go to, in placement order: the live
/// (unfenced) ones, alternating between racks as Kafka's rack-aware
/// assignment does (`r1 b1, r2 b3, r1 b2, r2 b4`), so consecutive replicas
/// of a partition land on different racks; and rotated by the number of
/// partitions already placed, so the leaders of successive topics do not
/// all land on the first broker.
fn placement_order(image: &MetadataImage) -> Vec<i32> {
    let mut by_rack: BTreeMap<Option<&str>, Vec<i32>> = BTreeMap::new();
    for b in image.live_brokers() {
        by_rack.entry(b.rack.as_deref()).or_default().push(b.id);
    }
    let mut racks: Vec<std::collections::VecDeque<i32>> =
        by_rack.into_values().map(Into::into).collect();
    let mut order = Vec::new();
    while racks.iter().any(|r| !r.is_empty()) {
        for rack in &mut racks {
            if let Some(id) = rack.pop_front() {
                order.push(id);
            }
        }
    }
    let placed: usize = image.topics().map(|t| t.partitions.len()).sum();
    if !order.is_empty() {
        let shift = placed % order.len();
        order.rotate_left(shift);
    }
    order
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// An image of two brokers and topic "orders" (2 partitions), built by
    /// applying records: no files, no controller.
    fn image() -> MetadataImage {
        let mut image = MetadataImage::default();
        let mut records = Vec::new();
        for id in [1, 2] {
            records.push(MetadataRecord::RegisterBroker {
                broker_id: id,
                host: "localhost".to_owned(),
                port: 9000 + u16::try_from(id).unwrap(),
                rack: None,
                fenced: false,
                incarnation_id: Some(Uuid::from_u128(id as u128)),
                epoch: None,
            });
        }
        image.apply_batch(0, &records);
        let (topic, _) = create_topic(
            &image,
            &ControllerConfig::default(),
            &request("orders", 2, 2),
        )
        .unwrap();
        image.apply_batch(2, &topic);
        image
    }

    fn request(name: &str, partitions: i32, rf: i16) -> CreateTopicRequest {
        CreateTopicRequest {
            name: name.to_owned(),
            num_partitions: partitions,
            replication_factor: rf,
            assignments: vec![],
            configs: BTreeMap::from([("retention.ms".to_owned(), "1000".to_owned())]),
        }
    }

    #[test]
    fn a_new_topic_is_its_record_its_partitions_round_robin_and_its_configs() {
        let image = image();
        let (records, created) = create_topic(
            &image,
            &ControllerConfig::default(),
            &request("events", 3, 2),
        )
        .unwrap();
        assert_eq!((created.num_partitions, created.replication_factor), (3, 2));
        assert!(
            matches!(&records[0], MetadataRecord::Topic { name, topic_id } if name == "events" && *topic_id == created.topic_id)
        );
        let placements: Vec<(Vec<i32>, i32)> = records[1..4]
            .iter()
            .map(|r| match r {
                MetadataRecord::Partition {
                    replicas, leader, ..
                } => (replicas.clone(), *leader),
                other => panic!("expected a partition record, got {other:?}"),
            })
            .collect();
        assert_eq!(
            placements,
            vec![(vec![1, 2], 1), (vec![2, 1], 2), (vec![1, 2], 1)]
        );
        assert!(
            matches!(&records[4], MetadataRecord::Config { name, .. } if name == "retention.ms")
        );
        assert_eq!(records.len(), 5);
        // The image is not changed by proposing.
        assert!(image.topic("events").is_none());
    }

    #[test]
    fn proposals_are_checked_against_the_image() {
        let image = image();
        let config = ControllerConfig::default();
        fn code<T>(r: Result<T, ControllerError>) -> ErrorCode {
            r.map(|_| ()).unwrap_err().code
        }
        assert_eq!(
            code(create_topic(&image, &config, &request("orders", 1, 1))),
            ErrorCode::TopicAlreadyExists
        );
        assert_eq!(
            code(create_topic(&image, &config, &request("wide", 1, 3))),
            ErrorCode::InvalidReplicationFactor
        );
        assert_eq!(
            code(delete_topic(&image, "missing")),
            ErrorCode::UnknownTopicOrPartition
        );
        let grow = |count| CreatePartitionsRequest {
            name: "orders".to_owned(),
            count,
            assignments: None,
        };
        assert_eq!(
            code(create_partitions(&image, grow(2))),
            ErrorCode::InvalidPartitions
        );
        let added = create_partitions(&image, grow(4)).unwrap();
        assert!(matches!(
            added.as_slice(),
            [
                MetadataRecord::Partition { partition: 2, .. },
                MetadataRecord::Partition { partition: 3, .. }
            ]
        ));
        assert_eq!(
            code(alter_configs(
                &image,
                vec![(
                    ConfigResource::Topic("missing".to_owned()),
                    "retention.ms".to_owned(),
                    None
                )]
            )),
            ErrorCode::UnknownTopicOrPartition
        );
        // A retried registration of the same process is no change; a new
        // process registers anew, fenced.
        let mut registration = BrokerRegistration {
            broker_id: 1,
            incarnation_id: Uuid::from_u128(1),
            host: "localhost".to_owned(),
            port: 9001,
            rack: None,
            clean_shutdown: true,
        };
        assert!(register_broker(&image, &registration, 1).is_none());
        registration.incarnation_id = Uuid::from_u128(9);
        let records = register_broker(&image, &registration, 1).unwrap();
        // The registration first: its offset is the broker epoch.
        assert!(matches!(
            records[..],
            [MetadataRecord::RegisterBroker { fenced: true, .. }, ..]
        ));
        let (_, block) = allocate_producer_ids(&image, 1);
        assert_eq!(block.start, image.next_producer_id_block);
    }

    #[test]
    fn a_restarted_broker_loses_its_leaderships_before_it_registers_again() {
        // Broker 1 leads partition 0 of `orders` (ISR [1, 2]) and is in
        // partition 1's ISR when it restarts before its session expired.
        let image = image();
        let before = image.topic("orders").unwrap().partitions[0].clone();
        assert_eq!(before.leader, 1);
        let registration = BrokerRegistration {
            broker_id: 1,
            incarnation_id: Uuid::from_u128(9),
            host: "localhost".to_owned(),
            port: 9001,
            rack: None,
            clean_shutdown: true,
        };
        let records = register_broker(&image, &registration, 1).unwrap();
        let mut after = image.clone();
        after.apply_batch(image.offset + 1, &records);
        let orders = after.topic("orders").unwrap();
        let p0 = &orders.partitions[0];
        assert_eq!(p0.leader, 2, "led by the rest of the ISR");
        assert_eq!(p0.leader_epoch, before.leader_epoch + 1);
        assert_eq!(p0.isr, [2]);
        assert_eq!(orders.partitions[1].isr, [2]);
        assert!(after.brokers[&1].fenced);
        assert_eq!(after.brokers[&1].incarnation_id, Some(Uuid::from_u128(9)));

        // The last live member of an ISR keeps its place (and leadership),
        // as in Kafka without KIP-966.
        let mut alone = after.clone();
        let p0 = &orders.partitions[0];
        alone.apply_batch(
            after.offset + 1,
            &[partition_change(
                orders.id,
                p0,
                vec![2],
                2,
                p0.leader_epoch,
                Vec::new(),
            )],
        );
        let registration = BrokerRegistration {
            broker_id: 2,
            incarnation_id: Uuid::from_u128(10),
            host: "localhost".to_owned(),
            port: 9002,
            rack: None,
            clean_shutdown: true,
        };
        let records = register_broker(&alone, &registration, 1).unwrap();
        let mut restarted = alone.clone();
        restarted.apply_batch(alone.offset + 1, &records);
        let p0 = &restarted.topic("orders").unwrap().partitions[0];
        assert_eq!((p0.leader, p0.isr.clone()), (2, vec![2]));
    }

    #[test]
    fn a_proposal_is_one_batch_within_kafkas_bounds() {
        let image = image();
        let proposal = Proposal::new(cluster_id(), &image, 1).unwrap();
        assert_eq!(proposal.based_on(), image.offset);
        assert_eq!(
            crate::records::decode_batch(proposal.batch()).unwrap(),
            proposal.records()
        );
        let too_many = vec![
            MetadataRecord::RemoveTopic {
                topic_id: Uuid::nil()
            };
            MAX_RECORDS_PER_USER_OP + 1
        ];
        assert_eq!(
            Proposal::new(too_many, &image, 1).unwrap_err().code,
            ErrorCode::PolicyViolation
        );
    }

    /// Partition 0 of "orders" after `records`.
    fn p0(image: &MetadataImage) -> (i32, Vec<i32>) {
        let p = image.partition("orders", 0).unwrap();
        (p.leader, p.isr.clone())
    }

    #[test]
    fn unclean_election_only_where_allowed_and_never_at_a_controlled_shutdown() {
        let mut image = image();
        assert_eq!(p0(&image), (1, vec![1, 2]));
        // Broker 2 fails, then broker 1 shuts down: 1 is the last in-sync
        // replica, so the partition keeps it and has no leader.
        let records = fence_broker(&image, 2, Some(true), 1).unwrap();
        image.apply_batch(10, &records);
        assert_eq!(p0(&image), (1, vec![1]));
        let records = fence_broker(&image, 1, None, 1).unwrap();
        image.apply_batch(20, &records);
        assert_eq!(p0(&image), (-1, vec![1]));
        // Broker 2 comes back: out of sync, it leads only by an unclean
        // election, and only where that is allowed.
        let clean = unfence_broker(&image, 2, false, 1).unwrap();
        assert_eq!(clean.len(), 1, "only the unfence record: {clean:?}");
        let mut unclean = image.clone();
        unclean.apply_batch(30, &unfence_broker(&image, 2, true, 1).unwrap());
        assert_eq!(p0(&unclean), (2, vec![2]));
        // The topic's own setting wins over the default.
        let mut by_topic = image.clone();
        let topic_id = image.topic("orders").unwrap().id;
        by_topic.apply_batch(
            30,
            &[MetadataRecord::Config {
                resource: ConfigResource::Topic("orders".to_owned()),
                name: UNCLEAN_LEADER_ELECTION.to_owned(),
                value: Some("true".to_owned()),
            }],
        );
        let records = unfence_broker(&by_topic, 2, false, 1).unwrap();
        by_topic.apply_batch(31, &records);
        assert_eq!(p0(&by_topic), (2, vec![2]));
        assert_eq!(by_topic.topic("orders").unwrap().id, topic_id);
    }

    #[test]
    fn a_failed_leader_without_in_sync_followers_is_replaced_uncleanly_if_allowed() {
        let mut image = image();
        // Partition 0's ISR is only its leader 1.
        let records = fence_broker(&image, 2, Some(false), 1).unwrap();
        image.apply_batch(10, &records);
        let records = unfence_broker(&image, 2, false, 1).unwrap();
        image.apply_batch(11, &records);
        assert_eq!(p0(&image), (1, vec![1]));
        // Broker 1 fails (its session expired).
        let clean = fence_broker(&image, 1, Some(false), 1).unwrap();
        let mut after = image.clone();
        after.apply_batch(20, &clean);
        assert_eq!(p0(&after), (-1, vec![1]));
        let unclean = fence_broker(&image, 1, Some(true), 1).unwrap();
        let mut after = image.clone();
        after.apply_batch(20, &unclean);
        assert_eq!(p0(&after), (2, vec![2]));
    }

    fn alter(image: &MetadataImage, new_isr: Vec<i32>) -> AlterPartitionRequest {
        let p = image.partition("orders", 0).unwrap();
        AlterPartitionRequest {
            broker_id: p.leader,
            broker_epoch: image.brokers[&p.leader].epoch,
            topic_id: image.topic("orders").unwrap().id,
            partition: 0,
            leader_epoch: p.leader_epoch,
            new_isr,
            partition_epoch: p.partition_epoch,
        }
    }

    #[test]
    fn an_isr_change_is_checked_as_kafka_does_and_keeps_the_leader_epoch() {
        let mut image = image();
        let code = |image: &MetadataImage, request: AlterPartitionRequest| {
            alter_partition(image, &request, 1).unwrap_err().code
        };
        let good = alter(&image, vec![1]);
        for (request, expected) in [
            (
                AlterPartitionRequest {
                    broker_epoch: good.broker_epoch + 100,
                    ..good.clone()
                },
                ErrorCode::StaleBrokerEpoch,
            ),
            (
                AlterPartitionRequest {
                    topic_id: Uuid::from_u128(7),
                    ..good.clone()
                },
                ErrorCode::UnknownTopicId,
            ),
            (
                AlterPartitionRequest {
                    partition: 9,
                    ..good.clone()
                },
                ErrorCode::UnknownTopicOrPartition,
            ),
            (
                AlterPartitionRequest {
                    leader_epoch: good.leader_epoch + 1,
                    ..good.clone()
                },
                ErrorCode::NotController,
            ),
            (
                AlterPartitionRequest {
                    broker_id: 2,
                    broker_epoch: image.brokers[&2].epoch,
                    ..good.clone()
                },
                ErrorCode::InvalidRequest,
            ),
            (
                AlterPartitionRequest {
                    new_isr: vec![1, 1],
                    ..good.clone()
                },
                ErrorCode::InvalidRequest,
            ),
            (
                AlterPartitionRequest {
                    new_isr: vec![1, 3],
                    ..good.clone()
                },
                ErrorCode::InvalidRequest,
            ),
            (
                AlterPartitionRequest {
                    new_isr: vec![2],
                    ..good.clone()
                },
                ErrorCode::InvalidRequest,
            ),
        ] {
            assert_eq!(code(&image, request.clone()), expected, "{request:?}");
        }
        // The same ISR: nothing to write.
        assert_eq!(
            alter_partition(&image, &alter(&image, vec![1, 2]), 1),
            Ok(None)
        );
        // A shrink: one record, same leader and leader epoch, next partition epoch.
        let before = image.partition("orders", 0).unwrap().clone();
        let record = alter_partition(&image, &good, 1).unwrap().unwrap();
        image.apply_batch(10, &[record]);
        let after = image.partition("orders", 0).unwrap().clone();
        assert_eq!(after.isr, vec![1]);
        assert_eq!(
            (after.leader, after.leader_epoch, after.partition_epoch),
            (
                before.leader,
                before.leader_epoch,
                before.partition_epoch + 1
            )
        );
        // The request that was answered is now stale.
        assert_eq!(code(&image, good.clone()), ErrorCode::InvalidUpdateVersion);
        // Broker 2 fenced: it may not join the ISR.
        let mut fenced = image.clone();
        fenced.apply_batch(11, &fence_broker(&image, 2, None, 1).unwrap());
        assert_eq!(
            code(&fenced, alter(&fenced, vec![1, 2])),
            ErrorCode::IneligibleReplica
        );
        // Live, it may.
        let record = alter_partition(&image, &alter(&image, vec![1, 2]), 1)
            .unwrap()
            .unwrap();
        image.apply_batch(12, &[record]);
        assert_eq!(p0(&image), (1, vec![1, 2]));
        // A leader epoch older than the current one (the leader moved).
        let old = alter(&image, vec![1]);
        image.apply_batch(13, &fence_broker(&image, 1, None, 1).unwrap());
        assert_eq!(p0(&image), (2, vec![2]));
        let old = AlterPartitionRequest {
            broker_id: 2,
            broker_epoch: image.brokers[&2].epoch,
            ..old
        };
        assert_eq!(code(&image, old), ErrorCode::FencedLeaderEpoch);
    }

    fn election(
        image: &MetadataImage,
        election: ElectionType,
        partition: i32,
    ) -> Result<(i32, Vec<i32>, i32), ErrorCode> {
        let before = image.partition("orders", partition).unwrap().clone();
        let record = elect_leader(image, "orders", partition, election).map_err(|e| e.code)?;
        let mut after = image.clone();
        after.apply_batch(image.offset, &[record]);
        let p = after.partition("orders", partition).unwrap();
        assert_eq!(p.partition_epoch, before.partition_epoch + 1);
        assert_eq!(p.leader_epoch, before.leader_epoch + 1);
        Ok((p.leader, p.isr.clone(), p.leader_epoch))
    }

    #[test]
    fn preferred_and_unclean_elections_answer_as_kafka_does() {
        let mut image = image();
        assert_eq!(
            election(&image, ElectionType::Preferred, 0),
            Err(ErrorCode::ElectionNotNeeded)
        );
        assert_eq!(
            election(&image, ElectionType::Unclean, 0),
            Err(ErrorCode::ElectionNotNeeded)
        );
        assert_eq!(
            elect_leader(&image, "missing", 0, ElectionType::Preferred)
                .unwrap_err()
                .code,
            ErrorCode::UnknownTopicOrPartition
        );
        assert_eq!(
            elect_leader(&image, "orders", 5, ElectionType::Preferred)
                .unwrap_err()
                .code,
            ErrorCode::UnknownTopicOrPartition
        );
        // Broker 1 fails: partition 0 moves to 2, and 1 leaves the ISR.
        image.apply_batch(10, &fence_broker(&image, 1, Some(false), 1).unwrap());
        assert_eq!(p0(&image), (2, vec![2]));
        assert_eq!(
            election(&image, ElectionType::Preferred, 0),
            Err(ErrorCode::PreferredLeaderNotAvailable)
        );
        // Back, but out of sync: still not available.
        image.apply_batch(20, &unfence_broker(&image, 1, false, 1).unwrap());
        assert_eq!(
            election(&image, ElectionType::Preferred, 0),
            Err(ErrorCode::PreferredLeaderNotAvailable)
        );
        // In sync again (the leader's AlterPartition): the preferred
        // replica leads again, with the next leader epoch.
        let record = alter_partition(&image, &alter(&image, vec![2, 1]), 1)
            .unwrap()
            .unwrap();
        image.apply_batch(30, &[record]);
        let epoch = image.partition("orders", 0).unwrap().leader_epoch;
        assert_eq!(
            election(&image, ElectionType::Preferred, 0),
            Ok((1, vec![2, 1], epoch + 1))
        );

        // Unclean: only a leaderless partition, in-sync replicas first.
        let mut image = self::image();
        image.apply_batch(10, &fence_broker(&image, 2, Some(false), 1).unwrap());
        image.apply_batch(20, &fence_broker(&image, 1, Some(false), 1).unwrap());
        assert_eq!(p0(&image), (-1, vec![1]));
        assert_eq!(
            election(&image, ElectionType::Unclean, 0),
            Err(ErrorCode::EligibleLeadersNotAvailable)
        );
        assert_eq!(
            election(&image, ElectionType::Preferred, 0),
            Err(ErrorCode::PreferredLeaderNotAvailable)
        );
        // Broker 2 returns, out of sync: an unclean election makes it the
        // leader and sole in-sync replica.
        image.apply_batch(30, &unfence_broker(&image, 2, false, 1).unwrap());
        assert_eq!(p0(&image), (-1, vec![1]));
        let (leader, isr, _) = election(&image, ElectionType::Unclean, 0).unwrap();
        assert_eq!((leader, isr), (2, vec![2]));
    }

    #[test]
    fn electing_every_partition_answers_only_those_that_needed_it() {
        let mut image = image();
        image.apply_batch(10, &fence_broker(&image, 1, Some(false), 1).unwrap());
        image.apply_batch(20, &unfence_broker(&image, 1, false, 1).unwrap());
        // Partition 0 (preferred 1) is led by 2; partition 1 by its
        // preferred 2.
        let (records, results) = elect_leaders(&image, ElectionType::Preferred, None);
        assert!(records.is_empty());
        assert_eq!(results.len(), 1);
        assert_eq!(results[0].topic, "orders");
        let codes: Vec<(i32, ErrorCode)> = results[0]
            .partitions
            .iter()
            .map(|(p, r)| (*p, r.as_ref().map_or_else(|e| e.code, |()| ErrorCode::None)))
            .collect();
        assert_eq!(codes, vec![(0, ErrorCode::PreferredLeaderNotAvailable)]);
        // Named, every partition is answered; one named twice is elected once.
        let targets = vec![
            ("orders".to_owned(), vec![1, 0, 0]),
            ("missing".to_owned(), vec![0]),
        ];
        let record = alter_partition(&image, &alter(&image, vec![2, 1]), 1)
            .unwrap()
            .unwrap();
        image.apply_batch(30, &[record]);
        let (records, results) = elect_leaders(&image, ElectionType::Preferred, Some(&targets));
        assert_eq!(records.len(), 1);
        let codes: Vec<Vec<(i32, ErrorCode)>> = results
            .iter()
            .map(|t| {
                t.partitions
                    .iter()
                    .map(|(p, r)| (*p, r.as_ref().map_or_else(|e| e.code, |()| ErrorCode::None)))
                    .collect()
            })
            .collect();
        assert_eq!(
            codes,
            vec![
                vec![
                    (1, ErrorCode::ElectionNotNeeded),
                    (0, ErrorCode::None),
                    (0, ErrorCode::None)
                ],
                vec![(0, ErrorCode::UnknownTopicOrPartition)]
            ]
        );
    }

    /// An image of brokers 1..=3 and topic "t" with partitions placed as
    /// `placements` (replicas, then the leader and ISR they have now).
    fn placed(placements: &[(&[i32], i32, &[i32])]) -> MetadataImage {
        let mut image = MetadataImage::default();
        let topic_id = Uuid::from_u128(99);
        let mut records = Vec::new();
        for id in 1..=3 {
            records.push(MetadataRecord::RegisterBroker {
                broker_id: id,
                host: "localhost".to_owned(),
                port: 9000,
                rack: None,
                fenced: false,
                incarnation_id: None,
                epoch: None,
            });
        }
        records.push(MetadataRecord::Topic {
            name: "t".to_owned(),
            topic_id,
        });
        for (i, (replicas, leader, isr)) in placements.iter().enumerate() {
            records.push(MetadataRecord::Partition {
                topic_id,
                partition: i32::try_from(i).unwrap(),
                replicas: replicas.to_vec(),
                isr: isr.to_vec(),
                leader: *leader,
                leader_epoch: 3,
                partition_epoch: 5,
                adding_replicas: vec![],
                removing_replicas: vec![],
                elr: Vec::new(),
            });
        }
        image.apply_batch(0, &records);
        image
    }

    /// Applies `records` as the next batch of `image`'s log.
    fn apply(image: &mut MetadataImage, offset: &mut i64, records: &[MetadataRecord]) {
        *offset += 10;
        image.apply_batch(*offset, records);
    }

    /// Partition 0 of topic "t": (leader, ISR, ELR, leader epoch).
    fn state(image: &MetadataImage) -> (i32, Vec<i32>, Vec<i32>, i32) {
        let p = image.partition("t", 0).unwrap();
        (p.leader, p.isr.clone(), p.elr.clone(), p.leader_epoch)
    }

    fn shrink_to(image: &MetadataImage, new_isr: Vec<i32>, min_isr: i32) -> MetadataRecord {
        let p = image.partition("t", 0).unwrap();
        let request = AlterPartitionRequest {
            broker_id: p.leader,
            broker_epoch: image.brokers[&p.leader].epoch,
            topic_id: image.topic("t").unwrap().id,
            partition: 0,
            leader_epoch: p.leader_epoch,
            new_isr,
            partition_epoch: p.partition_epoch,
        };
        alter_partition(image, &request, min_isr).unwrap().unwrap()
    }

    fn restart(id: i32, clean_shutdown: bool) -> BrokerRegistration {
        BrokerRegistration {
            broker_id: id,
            incarnation_id: Uuid::from_u128(1000 + id as u128),
            host: "localhost".to_owned(),
            port: 9000,
            rack: None,
            clean_shutdown,
        }
    }

    #[test]
    fn replicas_leaving_an_isr_below_min_isr_stay_eligible_and_lead_when_no_in_sync_one_can() {
        let mut image = placed(&[(&[1, 2, 3], 1, &[1, 2, 3])]);
        let mut at = 100;
        // min.insync.replicas=2: down to 2 members, nobody is eligible
        // beyond the ISR; below it, the one that leaves is.
        let shrunk = shrink_to(&image, vec![1, 2], 2);
        apply(&mut image, &mut at, &[shrunk]);
        assert_eq!(state(&image), (1, vec![1, 2], vec![], 3));
        let shrunk = shrink_to(&image, vec![1], 2);
        apply(&mut image, &mut at, &[shrunk]);
        assert_eq!(state(&image), (1, vec![1], vec![2], 3));
        // The leader fails: the eligible replica takes over, alone in the
        // ISR, and the old leader becomes eligible in its place.
        let fenced = fence_broker(&image, 1, Some(false), 2).unwrap();
        apply(&mut image, &mut at, &fenced);
        assert_eq!(state(&image), (2, vec![2], vec![1], 4));
        // It comes back after an unclean shutdown: it may have lost what it
        // acknowledged, so it is no longer eligible.
        let registered = register_broker(&image, &restart(1, false), 2).unwrap();
        apply(&mut image, &mut at, &registered);
        assert_eq!(state(&image), (2, vec![2], vec![], 4));

        // With the ISR back at the minimum, the ELR empties.
        let mut image = placed(&[(&[1, 2, 3], 1, &[1])]);
        let shrunk = shrink_to(&image, vec![1, 3], 2);
        apply(&mut image, &mut at, &[shrunk]);
        assert_eq!(state(&image), (1, vec![1, 3], vec![], 3));
    }

    #[test]
    fn a_leader_back_from_an_unclean_shutdown_gives_way_to_an_eligible_replica() {
        // The soak's "last replica standing" (seeds 42 and 49): the ISR is
        // down to the leader, which loses unflushed records in a crash and
        // restarts before its session ends.
        let mut image = placed(&[(&[1, 2, 3], 1, &[1, 2])]);
        let mut at = 100;
        let shrunk = shrink_to(&image, vec![1], 2);
        apply(&mut image, &mut at, &[shrunk]);
        assert_eq!(state(&image), (1, vec![1], vec![2], 3));
        let registered = register_broker(&image, &restart(1, false), 2).unwrap();
        apply(&mut image, &mut at, &registered);
        assert_eq!(state(&image), (2, vec![2], vec![], 4));

        // The same with the eligible replica down too: nobody leads until
        // it is back, and then it does.
        let mut image = placed(&[(&[1, 2, 3], 1, &[1, 2])]);
        let shrunk = shrink_to(&image, vec![1], 2);
        apply(&mut image, &mut at, &[shrunk]);
        let fenced = fence_broker(&image, 2, Some(false), 2).unwrap();
        apply(&mut image, &mut at, &fenced);
        let registered = register_broker(&image, &restart(1, false), 2).unwrap();
        apply(&mut image, &mut at, &registered);
        assert_eq!(state(&image), (-1, vec![], vec![2], 4));
        let unfenced = unfence_broker(&image, 2, false, 2).unwrap();
        apply(&mut image, &mut at, &unfenced);
        assert_eq!(state(&image), (2, vec![2], vec![], 5));

        // After a clean shutdown it keeps its place.
        let mut image = placed(&[(&[1, 2, 3], 1, &[1, 2])]);
        let shrunk = shrink_to(&image, vec![1], 2);
        apply(&mut image, &mut at, &[shrunk]);
        let fenced = fence_broker(&image, 1, None, 2).unwrap();
        let fenced: Vec<_> = fenced
            .into_iter()
            .filter(|r| matches!(r, MetadataRecord::FenceBroker { .. }))
            .collect();
        apply(&mut image, &mut at, &fenced);
        let registered = register_broker(&image, &restart(1, true), 2).unwrap();
        assert!(
            registered
                .iter()
                .all(|r| matches!(r, MetadataRecord::RegisterBroker { .. })),
            "{registered:?}"
        );
    }

    #[test]
    fn an_isr_back_at_the_minimum_by_any_path_clears_the_elr() {
        let mut at = 100;
        // A reassignment from [1,2,3] to [1,2,4] completed by ISR [1,4]: the
        // ISR is at the minimum again, so replica 2 is no longer eligible
        // (the high watermark moves without it from here on).
        let mut image = placed(&[(&[1, 2, 3], 1, &[1, 2])]);
        let shrunk = shrink_to(&image, vec![1], 2);
        apply(&mut image, &mut at, &[shrunk]);
        assert_eq!(state(&image).2, vec![2]);
        apply(
            &mut image,
            &mut at,
            &[MetadataRecord::RegisterBroker {
                broker_id: 4,
                host: "localhost".to_owned(),
                port: 9000,
                rack: None,
                fenced: false,
                incarnation_id: None,
                epoch: None,
            }],
        );
        let (started, _) = crate::reassign::alter_partition_reassignments(
            &image,
            &[crate::reassign::ReassignTopic {
                topic: "t".to_owned(),
                partitions: vec![(0, Some(vec![1, 2, 4]))],
            }],
            false,
            false,
            2,
        );
        apply(&mut image, &mut at, &started);
        assert_eq!(state(&image).2, vec![2], "still below the minimum");
        let completed = shrink_to(&image, vec![1, 4], 2);
        apply(&mut image, &mut at, &[completed]);
        let p = image.partition("t", 0).unwrap();
        assert_eq!(
            (p.replicas.clone(), p.isr.clone(), p.elr.clone()),
            (vec![1, 2, 4], vec![1, 4], vec![])
        );

        // A new min.insync.replicas clears the ELRs it applies to.
        let mut image = placed(&[(&[1, 2, 3], 1, &[1, 2])]);
        let shrunk = shrink_to(&image, vec![1], 2);
        apply(&mut image, &mut at, &[shrunk]);
        let records = alter_configs(
            &image,
            vec![(
                ConfigResource::Topic("t".to_owned()),
                MIN_INSYNC_REPLICAS.to_owned(),
                Some("1".to_owned()),
            )],
        )
        .unwrap();
        apply(&mut image, &mut at, &records);
        assert_eq!(state(&image), (1, vec![1], vec![], 3));
    }

    #[test]
    fn an_unclean_election_takes_an_eligible_replica_first() {
        let mut at = 100;
        // 3 comes before 2 in assignment order: a plain unclean election
        // would take it.
        let mut image = placed(&[(&[1, 3, 2], 1, &[1, 2])]);
        let shrunk = shrink_to(&image, vec![1], 2);
        apply(&mut image, &mut at, &[shrunk]);
        // Broker 2 (eligible) is down when 1 fails: no leader.
        for id in [2, 1] {
            let fenced = fence_broker(&image, id, Some(false), 2).unwrap();
            apply(&mut image, &mut at, &fenced);
        }
        assert_eq!(state(&image).0, -1);
        // 3 is live but was never eligible; 2 comes back (unfenced without
        // the election, as an operator's ElectLeaders may race it).
        let unfenced: Vec<_> = unfence_broker(&image, 2, false, 2)
            .unwrap()
            .into_iter()
            .filter(|r| matches!(r, MetadataRecord::UnfenceBroker { .. }))
            .collect();
        apply(&mut image, &mut at, &unfenced);
        let elected = elect_leader(&image, "t", 0, ElectionType::Unclean).unwrap();
        assert!(
            matches!(&elected, MetadataRecord::Partition { leader: 2, isr, .. } if *isr == vec![2]),
            "{elected:?}"
        );
    }

    #[test]
    fn the_last_replica_standing_keeps_its_place_after_an_unclean_shutdown() {
        // Nobody else is in sync or eligible: it holds the most there is.
        let image = placed(&[(&[1, 2, 3], 1, &[1])]);
        let registered = register_broker(&image, &restart(1, false), 1).unwrap();
        assert!(
            registered
                .iter()
                .all(|r| matches!(r, MetadataRecord::RegisterBroker { .. })),
            "{registered:?}"
        );
        // A follower's unclean restart takes it out of the ISR.
        let image = placed(&[(&[1, 2, 3], 1, &[1, 2, 3])]);
        let registered = register_broker(&image, &restart(3, false), 1).unwrap();
        assert!(
            matches!(&registered[1], MetadataRecord::Partition { isr, leader: 1, .. } if *isr == vec![1, 2]),
            "{registered:?}"
        );
    }

    /// The (partition, new leader) of each rebalance election.
    fn moves(image: &MetadataImage, percentage: i32) -> Vec<(i32, i32)> {
        rebalance_leaders(image, percentage)
            .into_iter()
            .map(|r| match r {
                MetadataRecord::Partition {
                    partition,
                    leader,
                    leader_epoch,
                    partition_epoch,
                    ..
                } => {
                    assert_eq!((leader_epoch, partition_epoch), (4, 6));
                    (partition, leader)
                }
                other => panic!("expected a partition record, got {other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_rebalance_moves_leaders_back_only_past_the_imbalance_percentage() {
        // Broker 1 is preferred for 4 partitions and leads 3: 25% imbalance.
        // Broker 2 is preferred for 1 and leads none: 100%, but the
        // preferred replica is out of sync there.
        let image = placed(&[
            (&[1, 2, 3], 1, &[1, 2, 3]),
            (&[1, 2, 3], 1, &[1, 2, 3]),
            (&[1, 3, 2], 1, &[1, 3, 2]),
            (&[1, 2, 3], 2, &[1, 2, 3]),
            (&[2, 1, 3], 1, &[1, 3]),
        ]);
        assert_eq!(moves(&image, 10), vec![(3, 1)]);
        // 25% is not above 25%.
        assert_eq!(moves(&image, 25), vec![]);
        assert_eq!(moves(&image, 0), vec![(3, 1)]);
        // Nothing to do on a balanced cluster.
        let balanced = placed(&[(&[1, 2], 1, &[1, 2]), (&[2, 1], 2, &[2])]);
        assert_eq!(moves(&balanced, 0), vec![]);
        // A preferred replica that is fenced is not elected.
        let mut fenced = image.clone();
        let epoch = fenced.brokers[&1].epoch;
        fenced.apply_batch(
            100,
            &[MetadataRecord::FenceBroker {
                broker_id: 1,
                epoch,
            }],
        );
        assert_eq!(moves(&fenced, 0), vec![]);
    }
}
