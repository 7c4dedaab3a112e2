//! Partition reassignment (KIP-455), as Kafka's controller does it
//! (`ReplicationControlManager.alterPartitionReassignments`,
//! `PartitionReassignmentReplicas`, `PartitionReassignmentRevert` and
//! `PartitionChangeBuilder.completeReassignmentIfNeeded`). Pure, like
//! [`crate::propose`]: an image and a request in, records and answers out.
//!
//! A reassignment to a target replica list runs in three steps:
//! 1. start: the replicas become the target followed by the current
//!    replicas not in it; `adding_replicas` = target − current,
//!    `removing_replicas` = current − target. The ISR is unchanged. The new
//!    replicas create their logs and fetch from the leader.
//! 2. catch up: the leader adds each new replica to the ISR through
//!    AlterPartition as it catches up.
//! 3. complete: the change that leaves every adding replica in the ISR (one
//!    that is left once the removing replicas are taken out of it) also
//!    sets replicas = target, drops the removing replicas from the ISR and
//!    clears both lists; a leader that is removed is replaced by the first
//!    target replica that is live and in sync. Removing a replica bumps the
//!    leader epoch, so a removed follower is fenced from the leader.
//!
//! A target that needs no catching up (a reorder, a smaller replica set
//! still in sync) completes at once, in the start record.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use strom_protocol::error_code::ErrorCode;
use uuid::Uuid;

use crate::controller::ControllerError;
use crate::image::{MetadataImage, PartitionImage, TopicImage};
use crate::records::MetadataRecord;

/// One topic of an AlterPartitionReassignments request: for each partition
/// its target replicas, or `None` to cancel the reassignment in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReassignTopic {
    pub topic: String,
    pub partitions: Vec<(i32, Option<Vec<i32>>)>,
}

/// The answer for one topic of an AlterPartitionReassignments request, in
/// request order: each partition's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicReassignmentResult {
    pub topic: String,
    pub partitions: Vec<(i32, Result<(), ControllerError>)>,
}

/// A reassignment in progress, as ListPartitionReassignments shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OngoingReassignment {
    pub partition: i32,
    /// Every replica now: the target's, then those being removed.
    pub replicas: Vec<i32>,
    pub adding_replicas: Vec<i32>,
    pub removing_replicas: Vec<i32>,
}

/// The reassignments in progress of one topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OngoingTopicReassignments {
    pub topic: String,
    pub partitions: Vec<OngoingReassignment>,
}

/// The state one change asks for, before completion and election (the
/// inputs of Kafka's `PartitionChangeBuilder`).
struct Target {
    replicas: Vec<i32>,
    isr: Vec<i32>,
    adding: Vec<i32>,
    removing: Vec<i32>,
    /// The ISR was made up (a revert that left no in-sync replica): no
    /// replica is known to hold everything any more, so no ELR.
    unclean: bool,
}

/// Kafka's `PartitionReassignmentReplicas.maybeCompleteReassignment`: the
/// replicas and ISR of the completed reassignment, or `None` while an
/// adding replica is out of the ISR, or when taking the removing replicas
/// out would leave the ISR empty.
fn completed(target: &Target) -> Option<(Vec<i32>, Vec<i32>)> {
    if target.adding.is_empty() && target.removing.is_empty() {
        return None;
    }
    let kept = |r: &i32| !target.removing.contains(r);
    let isr: Vec<i32> = target.isr.iter().copied().filter(kept).collect();
    if isr.is_empty() || !target.adding.iter().all(|r| isr.contains(r)) {
        return None;
    }
    let replicas = target.replicas.iter().copied().filter(kept).collect();
    Some((replicas, isr))
}

/// The record of `p` changed to `target`: completes the reassignment when
/// it can, then elects a new leader when the current one is not in the new
/// ISR (the first replica in order that is in the ISR and `live`, -1 if
/// none). The leader epoch bumps with a new leader, and when a replica is
/// removed (Kafka's `triggerLeaderEpochBumpForReplicaReassignmentIfNeeded`:
/// the removed replica's fetches are then fenced); the partition epoch bumps
/// with every change. `None` when nothing changes.
fn build(
    topic_id: Uuid,
    p: &PartitionImage,
    mut target: Target,
    live: &dyn Fn(i32) -> bool,
    min_isr: usize,
) -> Option<MetadataRecord> {
    if let Some((replicas, isr)) = completed(&target) {
        target.replicas = replicas;
        target.isr = isr;
        target.adding.clear();
        target.removing.clear();
    }
    let leader = if target.isr.contains(&p.leader) {
        p.leader
    } else {
        target
            .replicas
            .iter()
            .copied()
            .find(|r| target.isr.contains(r) && live(*r))
            .unwrap_or(-1)
    };
    let removed_any = p.replicas.iter().any(|r| !target.replicas.contains(r));
    // Eligible replicas (KIP-966) by the ISR's rule, none after an unclean
    // revert.
    let elr = if target.unclean {
        Vec::new()
    } else {
        crate::propose::target_elr(
            p,
            &target.replicas,
            &target.removing,
            &target.isr,
            min_isr,
            None,
        )
    };
    if target.replicas == p.replicas
        && target.isr == p.isr
        && elr == p.elr
        && leader == p.leader
        && target.adding == p.adding_replicas
        && target.removing == p.removing_replicas
    {
        return None;
    }
    let leader_epoch = if leader != p.leader || removed_any {
        p.leader_epoch + 1
    } else {
        p.leader_epoch
    };
    Some(MetadataRecord::Partition {
        topic_id,
        partition: p.partition,
        replicas: target.replicas,
        isr: target.isr,
        leader,
        leader_epoch,
        partition_epoch: p.partition_epoch + 1,
        adding_replicas: target.adding,
        removing_replicas: target.removing,
        elr,
    })
}

/// The AlterPartition hook: when `new_isr` completes the reassignment in
/// progress on `p`, the one record of the new ISR and the completion;
/// `None` when there is no reassignment or it is not complete yet (the
/// caller writes the plain ISR change).
pub fn complete_if_needed(
    topic_id: Uuid,
    p: &PartitionImage,
    new_isr: &[i32],
    live: &dyn Fn(i32) -> bool,
    min_isr: usize,
) -> Option<MetadataRecord> {
    let target = Target {
        replicas: p.replicas.clone(),
        isr: new_isr.to_vec(),
        adding: p.adding_replicas.clone(),
        removing: p.removing_replicas.clone(),
        unclean: false,
    };
    completed(&target)?;
    build(topic_id, p, target, live, min_isr)
}

/// Kafka's `validateManualPartitionAssignment`, with its messages: not
/// empty, every broker registered, none twice.
fn validate_target(image: &MetadataImage, target: &[i32]) -> Result<(), ControllerError> {
    let invalid = |m: String| Err(ControllerError::new(ErrorCode::InvalidReplicaAssignment, m));
    if target.is_empty() {
        return invalid(
            "The manual partition assignment includes an empty replica list.".to_owned(),
        );
    }
    let mut sorted = target.to_vec();
    sorted.sort_unstable();
    let mut previous = None;
    for broker in sorted {
        if !image.brokers.contains_key(&broker) {
            return invalid(format!(
                "The manual partition assignment includes broker {broker}, but no such broker is registered."
            ));
        }
        if previous == Some(broker) {
            return invalid(format!(
                "The manual partition assignment includes the broker {broker} more than once."
            ));
        }
        previous = Some(broker);
    }
    Ok(())
}

/// The replication factor a partition has, or will have once its
/// reassignment completes (KIP-860's check of
/// `allow_replication_factor_change`).
fn replication_factor(p: &PartitionImage) -> usize {
    if !p.is_reassigning() {
        return p.replicas.len();
    }
    let mut set: BTreeSet<i32> = p.replicas.iter().copied().collect();
    set.extend(&p.adding_replicas);
    for r in &p.removing_replicas {
        set.remove(r);
    }
    set.len()
}

/// Starts (or replaces) a reassignment of `p` to `target`
/// (Kafka's `changePartitionReassignment`).
fn start(
    image: &MetadataImage,
    topic: &TopicImage,
    p: &PartitionImage,
    target: &[i32],
    allow_replication_factor_change: bool,
    min_isr: usize,
) -> Result<Option<MetadataRecord>, ControllerError> {
    if !allow_replication_factor_change {
        let current = replication_factor(p);
        if current != target.len() {
            return Err(ControllerError::new(
                ErrorCode::InvalidReplicationFactor,
                format!(
                    "The replication factor is changed from {current} to {}",
                    target.len()
                ),
            ));
        }
    }
    validate_target(image, target)?;
    let removing: Vec<i32> = p
        .replicas
        .iter()
        .copied()
        .filter(|r| !target.contains(r))
        .collect();
    let adding: Vec<i32> = target
        .iter()
        .copied()
        .filter(|r| !p.replicas.contains(r))
        .collect();
    let mut replicas = target.to_vec();
    replicas.extend(&removing);
    let live = |id: i32| image.is_live(id);
    Ok(build(
        topic.id,
        p,
        Target {
            replicas,
            isr: p.isr.clone(),
            adding,
            removing,
            unclean: false,
        },
        &live,
        min_isr,
    ))
}

/// Cancels the reassignment in progress on `p`, going back to the replicas
/// it had (Kafka's `cancelPartitionReassignment` and
/// `PartitionReassignmentRevert`): the adding replicas leave the replicas
/// and the ISR. When that empties the ISR, the first remaining replica
/// becomes its only member, an unclean election, refused unless
/// `unclean.leader.election.enable` allows it for the topic.
fn cancel(
    image: &MetadataImage,
    topic: &TopicImage,
    p: &PartitionImage,
    unclean_default: bool,
    min_isr: usize,
) -> Result<Option<MetadataRecord>, ControllerError> {
    if !p.is_reassigning() {
        return Err(ControllerError::new(
            ErrorCode::NoReassignmentInProgress,
            "No partition reassignment is in progress.",
        ));
    }
    let kept = |r: &i32| !p.adding_replicas.contains(r);
    let replicas: Vec<i32> = p.replicas.iter().copied().filter(kept).collect();
    let mut isr: Vec<i32> = p.isr.iter().copied().filter(kept).collect();
    if isr.is_empty() {
        let Some(&first) = replicas.first() else {
            return Err(ControllerError::new(
                ErrorCode::InvalidReplicaAssignment,
                "Invalid replica assignment: addingReplicas contains all replicas.",
            ));
        };
        if !crate::propose::unclean_allowed(image, topic, unclean_default) {
            return Err(ControllerError::new(
                ErrorCode::InvalidReplicaAssignment,
                format!(
                    "Unable to revert partition assignment for {}:{} because it would require an unclean leader election.",
                    topic.name, p.partition
                ),
            ));
        }
        isr.push(first);
    }
    let unclean = p.isr.iter().all(|r| !kept(r));
    let live = |id: i32| image.is_live(id);
    Ok(build(
        topic.id,
        p,
        Target {
            replicas,
            isr,
            adding: Vec::new(),
            removing: Vec::new(),
            unclean,
        },
        &live,
        min_isr,
    ))
}

/// AlterPartitionReassignments: for each partition named, starts, replaces
/// or (with no target) cancels its reassignment, and answers each one
/// (UNKNOWN_TOPIC_OR_PARTITION, INVALID_REPLICA_ASSIGNMENT,
/// INVALID_REPLICATION_FACTOR when `allow_replication_factor_change` is
/// false and the target's size differs, NO_REASSIGNMENT_IN_PROGRESS for a
/// cancel of nothing). The records of the partitions that succeeded form
/// one operation; a partition named twice is changed twice, in order.
pub fn alter_partition_reassignments(
    image: &MetadataImage,
    topics: &[ReassignTopic],
    allow_replication_factor_change: bool,
    unclean_default: bool,
    min_isr_default: i32,
) -> (Vec<MetadataRecord>, Vec<TopicReassignmentResult>) {
    // Each change is checked against the image the earlier ones made.
    let mut working = image.clone();
    let mut records = Vec::new();
    let mut results = Vec::with_capacity(topics.len());
    for request in topics {
        let mut partitions = Vec::with_capacity(request.partitions.len());
        for (partition, target) in &request.partitions {
            let result = (|| {
                let Some(topic) = working.topic(&request.topic).cloned() else {
                    return Err(ControllerError::new(
                        ErrorCode::UnknownTopicOrPartition,
                        format!("Unable to find a topic named {}.", request.topic),
                    ));
                };
                let Some(p) = usize::try_from(*partition)
                    .ok()
                    .and_then(|i| topic.partitions.get(i))
                else {
                    return Err(ControllerError::new(
                        ErrorCode::UnknownTopicOrPartition,
                        format!("Unable to find partition {}:{partition}.", request.topic),
                    ));
                };
                let min_isr = crate::propose::min_isr(&working, &topic, min_isr_default);
                match target {
                    Some(target) => start(
                        &working,
                        &topic,
                        p,
                        target,
                        allow_replication_factor_change,
                        min_isr,
                    ),
                    None => cancel(&working, &topic, p, unclean_default, min_isr),
                }
            })();
            match result {
                Ok(Some(record)) => {
                    let offset = working.offset;
                    working.apply(&record, offset);
                    records.push(record);
                    partitions.push((*partition, Ok(())));
                }
                Ok(None) => partitions.push((*partition, Ok(()))),
                Err(e) => partitions.push((*partition, Err(e))),
            }
        }
        results.push(TopicReassignmentResult {
            topic: request.topic.clone(),
            partitions,
        });
    }
    (records, results)
}

/// ListPartitionReassignments: the reassignments in progress among the
/// partitions named (`None`: every partition of every topic). Unknown
/// topics and partitions, and partitions not being reassigned, are left
/// out; so is a topic with none left, as Kafka does.
pub fn list_partition_reassignments(
    image: &MetadataImage,
    topics: Option<&[(String, Vec<i32>)]>,
) -> Vec<OngoingTopicReassignments> {
    let ongoing = |p: &PartitionImage| {
        p.is_reassigning().then(|| OngoingReassignment {
            partition: p.partition,
            replicas: p.replicas.clone(),
            adding_replicas: p.adding_replicas.clone(),
            removing_replicas: p.removing_replicas.clone(),
        })
    };
    let listed: Vec<(String, Vec<OngoingReassignment>)> = match topics {
        None => image
            .topics()
            .map(|t| {
                (
                    t.name.clone(),
                    t.partitions.iter().filter_map(ongoing).collect(),
                )
            })
            .collect(),
        Some(topics) => topics
            .iter()
            .filter_map(|(name, partitions)| {
                let t = image.topic(name)?;
                let found = partitions
                    .iter()
                    .filter_map(|i| usize::try_from(*i).ok().and_then(|i| t.partitions.get(i)))
                    .filter_map(ongoing)
                    .collect();
                Some((t.name.clone(), found))
            })
            .collect(),
    };
    listed
        .into_iter()
        .filter(|(_, partitions)| !partitions.is_empty())
        .map(|(topic, partitions)| OngoingTopicReassignments { topic, partitions })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOPIC_ID: Uuid = Uuid::from_u128(7);

    /// Brokers 1 to 4 (`fenced` ones fenced), and topic "t" with one
    /// partition on `replicas`, in sync, led by the first.
    fn image(replicas: &[i32], fenced: &[i32]) -> MetadataImage {
        let mut records = Vec::new();
        for id in 1..=4 {
            records.push(MetadataRecord::RegisterBroker {
                broker_id: id,
                host: "localhost".to_owned(),
                port: 9000 + u16::try_from(id).unwrap(),
                rack: None,
                fenced: fenced.contains(&id),
                incarnation_id: Some(Uuid::from_u128(id as u128)),
                epoch: None,
            });
        }
        records.push(MetadataRecord::Topic {
            name: "t".to_owned(),
            topic_id: TOPIC_ID,
        });
        records.push(MetadataRecord::Partition {
            topic_id: TOPIC_ID,
            partition: 0,
            replicas: replicas.to_vec(),
            isr: replicas.to_vec(),
            leader: replicas[0],
            leader_epoch: 5,
            partition_epoch: 9,
            adding_replicas: vec![],
            removing_replicas: vec![],
            elr: Vec::new(),
        });
        let mut image = MetadataImage::default();
        image.apply_batch(0, &records);
        image
    }

    fn reassign(
        image: &MetadataImage,
        target: Option<Vec<i32>>,
        allow_rf_change: bool,
    ) -> Result<MetadataImage, ControllerError> {
        let (records, results) = alter_partition_reassignments(
            image,
            &[ReassignTopic {
                topic: "t".to_owned(),
                partitions: vec![(0, target)],
            }],
            allow_rf_change,
            false,
            1,
        );
        let (_, result) = results[0].partitions[0].clone();
        result?;
        let mut next = image.clone();
        let offset = next.offset;
        next.apply_batch(offset, &records);
        Ok(next)
    }

    fn p0(image: &MetadataImage) -> &PartitionImage {
        image.partition("t", 0).unwrap()
    }

    /// The leader's AlterPartition to `isr`, applied.
    fn alter_isr(image: &MetadataImage, isr: Vec<i32>) -> MetadataImage {
        let p = p0(image);
        let leader = image.brokers[&p.leader].clone();
        let request = crate::controller::AlterPartitionRequest {
            broker_id: leader.id,
            broker_epoch: leader.epoch,
            topic_id: TOPIC_ID,
            partition: 0,
            leader_epoch: p.leader_epoch,
            new_isr: isr,
            partition_epoch: p.partition_epoch,
        };
        let record = crate::propose::alter_partition(image, &request, 1)
            .unwrap()
            .unwrap();
        let mut next = image.clone();
        let offset = next.offset;
        next.apply(&record, offset);
        next
    }

    /// replicas, ISR, adding, removing, leader, leader epoch, partition epoch.
    type State = (Vec<i32>, Vec<i32>, Vec<i32>, Vec<i32>, i32, i32, i32);

    fn state(p: &PartitionImage) -> State {
        (
            p.replicas.clone(),
            p.isr.clone(),
            p.adding_replicas.clone(),
            p.removing_replicas.clone(),
            p.leader,
            p.leader_epoch,
            p.partition_epoch,
        )
    }

    #[test]
    fn a_move_adds_then_completes_when_the_new_replica_is_in_sync() {
        let image = image(&[1, 2, 3], &[]);
        let started = reassign(&image, Some(vec![2, 3, 4]), false).unwrap();
        // Target first, then the replica being removed; the ISR and the
        // leadership are unchanged while 4 catches up.
        assert_eq!(
            state(p0(&started)),
            (vec![2, 3, 4, 1], vec![1, 2, 3], vec![4], vec![1], 1, 5, 10)
        );
        assert_eq!(
            list_partition_reassignments(&started, None),
            vec![OngoingTopicReassignments {
                topic: "t".to_owned(),
                partitions: vec![OngoingReassignment {
                    partition: 0,
                    replicas: vec![2, 3, 4, 1],
                    adding_replicas: vec![4],
                    removing_replicas: vec![1],
                }],
            }]
        );
        // 4 joins the ISR: the same record completes the reassignment, and
        // the leader 1, removed, gives way to the first target replica in
        // sync, with a new leader epoch.
        let done = alter_isr(&started, vec![1, 2, 3, 4]);
        assert_eq!(
            state(p0(&done)),
            (vec![2, 3, 4], vec![2, 3, 4], vec![], vec![], 2, 6, 11)
        );
        assert!(list_partition_reassignments(&done, None).is_empty());
    }

    #[test]
    fn a_removed_follower_bumps_the_leader_epoch_but_keeps_the_leader() {
        let image = image(&[1, 2, 3], &[]);
        let started = reassign(&image, Some(vec![1, 2, 4]), false).unwrap();
        assert_eq!(p0(&started).replicas, vec![1, 2, 4, 3]);
        let done = alter_isr(&started, vec![1, 2, 3, 4]);
        assert_eq!(
            state(p0(&done)),
            (vec![1, 2, 4], vec![1, 2, 4], vec![], vec![], 1, 6, 11)
        );
    }

    #[test]
    fn an_isr_change_without_every_adding_replica_does_not_complete() {
        let image = image(&[1, 2], &[]);
        let started = reassign(&image, Some(vec![3, 4]), false).unwrap();
        assert_eq!(p0(&started).adding_replicas, vec![3, 4]);
        let half = alter_isr(&started, vec![1, 2, 3]);
        assert_eq!(
            state(p0(&half)),
            (
                vec![3, 4, 1, 2],
                vec![1, 2, 3],
                vec![3, 4],
                vec![1, 2],
                1,
                5,
                11
            )
        );
        let done = alter_isr(&half, vec![1, 2, 3, 4]);
        assert_eq!(
            state(p0(&done)),
            (vec![3, 4], vec![3, 4], vec![], vec![], 3, 6, 12)
        );
    }

    #[test]
    fn a_target_already_in_sync_completes_at_once() {
        let image = image(&[1, 2, 3], &[]);
        // Shrinking: one record, the leader moves off the removed 1.
        let shrunk = reassign(&image, Some(vec![3, 2]), true).unwrap();
        assert_eq!(
            state(p0(&shrunk)),
            (vec![3, 2], vec![2, 3], vec![], vec![], 3, 6, 10)
        );
        // Reordering changes the replicas only.
        let reordered = reassign(&image, Some(vec![3, 1, 2]), false).unwrap();
        assert_eq!(
            state(p0(&reordered)),
            (vec![3, 1, 2], vec![1, 2, 3], vec![], vec![], 1, 5, 10)
        );
        // The same replicas: nothing to write, success.
        let (records, results) = alter_partition_reassignments(
            &image,
            &[ReassignTopic {
                topic: "t".to_owned(),
                partitions: vec![(0, Some(vec![1, 2, 3]))],
            }],
            false,
            false,
            1,
        );
        assert!(records.is_empty());
        assert_eq!(results[0].partitions, vec![(0, Ok(()))]);
    }

    #[test]
    fn a_cancel_goes_back_to_the_original_replicas() {
        let image = image(&[1, 2, 3], &[]);
        let started = reassign(&image, Some(vec![2, 3, 4]), false).unwrap();
        let cancelled = reassign(&started, None, false).unwrap();
        // The adding replica leaves; removing it from the replicas bumps the
        // leader epoch.
        assert_eq!(
            state(p0(&cancelled)),
            (vec![2, 3, 1], vec![1, 2, 3], vec![], vec![], 1, 6, 11)
        );
        assert!(list_partition_reassignments(&cancelled, None).is_empty());
        // A cancel of nothing.
        let err = reassign(&cancelled, None, false).unwrap_err();
        assert_eq!(err.code, ErrorCode::NoReassignmentInProgress);
    }

    #[test]
    fn a_cancel_that_empties_the_isr_needs_unclean_election() {
        let image = image(&[1], &[]);
        let started = reassign(&image, Some(vec![2]), false).unwrap();
        // The ISR is [2] only (say 1 fell behind): reverting leaves no
        // in-sync replica.
        let mut moved = started.clone();
        let p = p0(&started).clone();
        let offset = moved.offset;
        moved.apply(
            &MetadataRecord::Partition {
                topic_id: TOPIC_ID,
                partition: 0,
                replicas: p.replicas.clone(),
                isr: vec![2],
                leader: 2,
                leader_epoch: p.leader_epoch + 1,
                partition_epoch: p.partition_epoch + 1,
                adding_replicas: vec![2],
                removing_replicas: vec![1],
                elr: Vec::new(),
            },
            offset,
        );
        let err = reassign(&moved, None, false).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidReplicaAssignment);
        let (records, results) = alter_partition_reassignments(
            &moved,
            &[ReassignTopic {
                topic: "t".to_owned(),
                partitions: vec![(0, None)],
            }],
            false,
            true,
            1,
        );
        assert_eq!(results[0].partitions, vec![(0, Ok(()))]);
        assert!(matches!(
            &records[..],
            [MetadataRecord::Partition { replicas, isr, leader: 1, .. }] if *replicas == vec![1] && *isr == vec![1]
        ));
    }

    #[test]
    fn refusals_carry_kafkas_codes() {
        let image = image(&[1, 2, 3], &[]);
        let code = |target: Option<Vec<i32>>, allow: bool| {
            reassign(&image, target, allow)
                .map(|_| ())
                .unwrap_err()
                .code
        };
        assert_eq!(
            code(Some(vec![2, 3, 9]), false),
            ErrorCode::InvalidReplicaAssignment
        );
        assert_eq!(
            code(Some(vec![2, 2, 3]), false),
            ErrorCode::InvalidReplicaAssignment
        );
        assert_eq!(
            code(Some(vec![]), true),
            ErrorCode::InvalidReplicaAssignment
        );
        assert_eq!(
            code(Some(vec![1, 2]), false),
            ErrorCode::InvalidReplicationFactor
        );
        assert_eq!(code(None, false), ErrorCode::NoReassignmentInProgress);
        // With the change allowed, a smaller set is fine.
        assert!(reassign(&image, Some(vec![1, 2]), true).is_ok());
        let (records, results) = alter_partition_reassignments(
            &image,
            &[
                ReassignTopic {
                    topic: "nope".to_owned(),
                    partitions: vec![(0, Some(vec![1]))],
                },
                ReassignTopic {
                    topic: "t".to_owned(),
                    partitions: vec![(1, Some(vec![1])), (0, Some(vec![4, 2, 3]))],
                },
            ],
            false,
            false,
            1,
        );
        let codes: Vec<Vec<(i32, Option<ErrorCode>)>> = results
            .iter()
            .map(|t| {
                t.partitions
                    .iter()
                    .map(|(p, r)| (*p, r.as_ref().err().map(|e| e.code)))
                    .collect()
            })
            .collect();
        assert_eq!(
            codes,
            vec![
                vec![(0, Some(ErrorCode::UnknownTopicOrPartition))],
                vec![(1, Some(ErrorCode::UnknownTopicOrPartition)), (0, None)],
            ]
        );
        // Only the valid partition's change is written.
        assert_eq!(records.len(), 1);
    }

    #[test]
    fn the_replication_factor_check_counts_the_target_of_a_reassignment_in_progress() {
        let image = image(&[1, 2], &[]);
        let started = reassign(&image, Some(vec![1, 2, 3]), true).unwrap();
        // The partition is becoming 3 replicas: a 3-replica target keeps it.
        assert!(reassign(&started, Some(vec![1, 2, 4]), false).is_ok());
        assert_eq!(
            reassign(&started, Some(vec![1, 2]), false)
                .map(|_| ())
                .unwrap_err()
                .code,
            ErrorCode::InvalidReplicationFactor
        );
    }

    #[test]
    fn a_removed_leader_goes_to_a_live_in_sync_target_replica() {
        // 2 is fenced: the leadership skips it.
        let image = image(&[1, 2, 3], &[2]);
        let started = reassign(&image, Some(vec![2, 3, 4]), false).unwrap();
        let p = p0(&started);
        let leader = image.brokers[&1].clone();
        let record = crate::propose::alter_partition(
            &started,
            &crate::controller::AlterPartitionRequest {
                broker_id: 1,
                broker_epoch: leader.epoch,
                topic_id: TOPIC_ID,
                partition: 0,
                leader_epoch: p.leader_epoch,
                new_isr: vec![1, 3, 4],
                partition_epoch: p.partition_epoch,
            },
            1,
        )
        .unwrap()
        .unwrap();
        assert!(matches!(
            record,
            MetadataRecord::Partition { leader: 3, ref isr, ref replicas, .. }
                if *isr == vec![3, 4] && *replicas == vec![2, 3, 4]
        ));
    }

    #[test]
    fn listing_names_only_partitions_in_progress() {
        let image = image(&[1, 2, 3], &[]);
        let started = reassign(&image, Some(vec![2, 3, 4]), false).unwrap();
        let named = |topics: &[(String, Vec<i32>)]| {
            list_partition_reassignments(&started, Some(topics))
                .into_iter()
                .map(|t| (t.topic, t.partitions.len()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            named(&[("t".to_owned(), vec![0, 5])]),
            vec![("t".to_owned(), 1)]
        );
        assert!(named(&[("t".to_owned(), vec![1])]).is_empty());
        assert!(named(&[("nope".to_owned(), vec![0])]).is_empty());
    }
}
