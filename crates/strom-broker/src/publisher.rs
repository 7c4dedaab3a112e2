//! The metadata publisher: the one place where metadata images become the
//! broker's state (Kafka's `BrokerMetadataPublisher`).
//!
//! ```text
//! controller ──image──> publisher ──delta──> partitions: create, delete, role, configs
//!                                       └──> coordinators: load, unload; offsets of deleted topics
//!                                       └──> applied offset ──> handlers waiting for their change
//! ```
//!
//! Request handlers never apply metadata themselves: one that changes it
//! (CreateTopics, DeleteTopics, IncrementalAlterConfigs, ...) commits through
//! the controller, then waits until the publisher has applied an image at
//! least that new ([`Publisher::wait_applied`]). In a cluster the images come
//! from the replicated metadata log; the publisher does not change.
//!
//! A partition whose log could not be created or deleted (a full disk) is
//! retried every [`STORAGE_RETRY_INTERVAL`] by applying the image again, until
//! it succeeds.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use strom_controller::MetadataImage;
use tokio::sync::watch;

use tokio_util::sync::CancellationToken;

use crate::config::BrokerConfig;
use crate::group::GroupCoordinator;
use crate::group::store::OFFSETS_TOPIC;
use crate::replica::{ReplicaManager, STORAGE_RETRY_INTERVAL};
use crate::txn::TxnCoordinator;
use crate::txn::store::TRANSACTION_STATE_TOPIC;

/// What changed between two images, as far as this broker acts on it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MetadataDelta {
    /// Topics in the new image that are new or differ (partitions, leaders,
    /// ISR, configs).
    pub changed_topics: BTreeSet<String>,
    /// Topics gone (or recreated with a new id: they are in both sets).
    pub deleted_topics: BTreeSet<String>,
    /// Dynamic broker configs changed: every topic's effective configs may
    /// have.
    pub broker_configs_changed: bool,
}

impl MetadataDelta {
    /// The delta from `previous` to `next`.
    pub fn between(previous: &MetadataImage, next: &MetadataImage) -> Self {
        let mut delta = Self {
            broker_configs_changed: previous.broker_configs != next.broker_configs,
            ..Self::default()
        };
        for topic in next.topics() {
            match previous.topic(&topic.name) {
                Some(old) if Arc::ptr_eq(old, topic) || **old == **topic => {}
                Some(old) => {
                    if old.id != topic.id {
                        delta.deleted_topics.insert(topic.name.clone());
                    }
                    delta.changed_topics.insert(topic.name.clone());
                }
                None => {
                    delta.changed_topics.insert(topic.name.clone());
                }
            }
        }
        for topic in previous.topics() {
            if next.topic(&topic.name).is_none() {
                delta.deleted_topics.insert(topic.name.clone());
            }
        }
        delta
    }

    /// Whether the broker has anything to do for it.
    pub fn is_empty(&self) -> bool {
        self.changed_topics.is_empty()
            && self.deleted_topics.is_empty()
            && !self.broker_configs_changed
    }
}

/// How long Metadata keeps offering a broker after this node saw it fenced.
/// librdkafka (2.x) decommissions a broker that a Metadata response leaves
/// out while it moves that broker's partitions to their new leaders named
/// in the same response; the two race, the partitions lose their leader,
/// and the producer waits for its next one-second scan to ask again. The
/// controller fences a broker and moves its leaderships in one batch (as
/// Kafka's does), so every failover would pay that second. Offered a few
/// scans longer, the broker is dropped only once its partitions have moved.
pub const FENCED_BROKER_OFFERED_FOR: Duration = Duration::from_secs(5);

/// What the publisher noted of the brokers' fencing.
#[derive(Debug)]
struct Fencing {
    /// The offset of the last image noted.
    noted_offset: i64,
    /// The brokers live in it.
    live: HashSet<i32>,
    /// Brokers seen going from live to fenced, and when.
    fenced_at: HashMap<i32, Instant>,
}

/// The offset of the newest image applied, for handlers to wait on.
#[derive(Debug)]
pub struct Publisher {
    applied: watch::Sender<i64>,
    /// Brokers seen going from live to fenced, and when: see
    /// [`FENCED_BROKER_OFFERED_FOR`].
    fencing: parking_lot::Mutex<Fencing>,
    /// The image applied at start, until [`Self::run`] takes it as the one
    /// its first delta starts from.
    applied_at_start: parking_lot::Mutex<Option<Arc<MetadataImage>>>,
}

impl Publisher {
    /// A publisher whose `image` was applied at start.
    pub fn new(image: &Arc<MetadataImage>) -> Self {
        Self {
            applied: watch::Sender::new(image.offset),
            fencing: parking_lot::Mutex::new(Fencing {
                noted_offset: image.offset,
                live: image.live_brokers().map(|b| b.id).collect(),
                fenced_at: HashMap::new(),
            }),
            applied_at_start: parking_lot::Mutex::new(Some(Arc::clone(image))),
        }
    }

    /// The offset of each image as it is applied.
    pub fn subscribe_applied(&self) -> watch::Receiver<i64> {
        self.applied.subscribe()
    }

    /// The brokers fenced in `image` that Metadata still offers: fenced
    /// less than [`FENCED_BROKER_OFFERED_FOR`] ago, as this node saw it.
    pub fn recently_fenced(&self, image: &MetadataImage) -> Vec<i32> {
        let fencing = self.fencing.lock();
        // An image newer than the last one noted: a broker live then and
        // fenced here was fenced just now.
        let newer = image.offset > fencing.noted_offset;
        image
            .brokers
            .values()
            .filter(|b| b.fenced)
            .filter(|b| match fencing.fenced_at.get(&b.id) {
                Some(at) => at.elapsed() < FENCED_BROKER_OFFERED_FOR,
                None => newer && fencing.live.contains(&b.id),
            })
            .map(|b| b.id)
            .collect()
    }

    /// Notes the brokers live before and fenced in `next`; forgets the ones
    /// live again or gone.
    fn note_fencing(&self, next: &MetadataImage) {
        let mut fencing = self.fencing.lock();
        let Fencing {
            noted_offset,
            live,
            fenced_at,
        } = &mut *fencing;
        fenced_at.retain(|id, _| next.brokers.get(id).is_some_and(|b| b.fenced));
        for b in next.brokers.values().filter(|b| b.fenced) {
            if live.contains(&b.id) {
                fenced_at.insert(b.id, Instant::now());
            }
        }
        *live = next.live_brokers().map(|b| b.id).collect();
        *noted_offset = next.offset;
    }

    /// Waits until an image at `offset` or later has been applied (or the
    /// publisher has stopped: the broker is shutting down).
    pub async fn wait_applied(&self, offset: i64) {
        let mut applied = self.applied.subscribe();
        let _ = applied.wait_for(|applied| *applied >= offset).await;
    }

    /// Receives every image from `images` until `shutdown`, and applies
    /// each to `targets`: partitions first (their logs, roles and configs),
    /// then what depends on them.
    pub async fn run(
        self: Arc<Self>,
        mut images: watch::Receiver<Arc<MetadataImage>>,
        targets: Targets,
        shutdown: CancellationToken,
    ) {
        let targets = Arc::new(targets);
        // The images committed between the start's and this task's first
        // poll are applied now: marking the current one seen instead would
        // leave it unapplied (and anyone waiting for it waiting) until the
        // next change, which on an idle node never comes.
        let mut previous = self
            .applied_at_start
            .lock()
            .take()
            .unwrap_or_else(|| images.borrow().clone());
        images.mark_changed();
        let mut retry = tokio::time::interval(STORAGE_RETRY_INTERVAL);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let retrying = tokio::select! {
                () = shutdown.cancelled() => return,
                changed = images.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    false
                }
                _ = retry.tick() => true,
            };
            if retrying && !targets.replicas.has_storage_errors() {
                continue;
            }
            let image = images.borrow_and_update().clone();
            // Before the (slower) apply: Metadata answers from the newest
            // image, which already leaves the broker out.
            self.note_fencing(&image);
            let delta = MetadataDelta::between(&previous, &image);
            if !delta.is_empty() || retrying {
                publish(&targets, &image, &delta).await;
            }
            self.applied.send_replace(image.offset);
            previous = image;
        }
    }
}

/// What the publisher drives: the partitions, then the coordinators that
/// shard by them.
#[derive(Debug)]
pub struct Targets {
    /// For each topic's effective configs.
    pub config: BrokerConfig,
    pub replicas: Arc<ReplicaManager>,
    pub groups: Arc<GroupCoordinator>,
    pub txn: Arc<TxnCoordinator>,
    /// A deleted topic's series go on every broker, not only on the one
    /// that took the DeleteTopics.
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// Applies one image.
async fn publish(targets: &Arc<Targets>, image: &Arc<MetadataImage>, delta: &MetadataDelta) {
    let for_task = Arc::clone(targets);
    let image_for_task = Arc::clone(image);
    let applied = tokio::task::spawn_blocking(move || {
        // Partitions that fail are logged here and retried.
        let _ = for_task
            .replicas
            .apply_image(&image_for_task, &for_task.config);
        // Then the coordinators follow the partitions they shard by: a
        // partition led here is loaded, one no longer led is unloaded.
        let replicas = &for_task.replicas;
        for_task
            .groups
            .sync(&replicas.topic_partitions(OFFSETS_TOPIC));
        for_task
            .txn
            .sync(&replicas.topic_partitions(TRANSACTION_STATE_TOPIC));
    })
    .await;
    if let Err(e) = applied {
        tracing::error!(error = %e, offset = image.offset, "applying the metadata image failed");
    }
    // Committed offsets of deleted topics go (Kafka's
    // `onPartitionsDeleted`), before anyone waiting for this image is told.
    targets
        .groups
        .on_topics_deleted(&delta.deleted_topics)
        .await;
    for topic in &delta.deleted_topics {
        targets.metrics.forget_topic(topic);
    }
}

#[cfg(test)]
mod tests {
    use strom_controller::{ConfigResource, MetadataRecord};
    use strom_protocol::messages::Uuid;

    use super::*;

    fn topic(name: &str, id: u128) -> MetadataRecord {
        MetadataRecord::Topic {
            name: name.to_owned(),
            topic_id: Uuid::from_u128(id),
        }
    }

    fn partition(id: u128, leader_epoch: i32, isr: &[i32]) -> MetadataRecord {
        MetadataRecord::Partition {
            topic_id: Uuid::from_u128(id),
            partition: 0,
            replicas: vec![1, 2],
            isr: isr.to_vec(),
            leader: 1,
            leader_epoch,
            partition_epoch: leader_epoch,
            adding_replicas: vec![],
            removing_replicas: vec![],
            elr: Vec::new(),
        }
    }

    fn after(image: &MetadataImage, records: &[MetadataRecord]) -> MetadataImage {
        let mut next = image.clone();
        next.apply_batch(image.offset, records);
        next
    }

    fn names(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    #[test]
    fn the_delta_names_what_changed_and_nothing_else() {
        let empty = MetadataImage::default();
        let one = after(
            &empty,
            &[
                topic("a", 1),
                partition(1, 0, &[1, 2]),
                topic("b", 2),
                partition(2, 0, &[1]),
            ],
        );
        let delta = MetadataDelta::between(&empty, &one);
        assert_eq!(delta.changed_topics, names(&["a", "b"]));
        assert!(delta.deleted_topics.is_empty());
        assert!(MetadataDelta::between(&one, &one).is_empty());

        // The ISR of a shrinks: only a changed.
        let shrunk = after(&one, &[partition(1, 0, &[1])]);
        let delta = MetadataDelta::between(&one, &shrunk);
        assert_eq!(delta.changed_topics, names(&["a"]));

        // b is deleted; a is recreated with a new id (deleted and changed).
        let recreated = after(
            &shrunk,
            &[
                MetadataRecord::RemoveTopic {
                    topic_id: Uuid::from_u128(2),
                },
                MetadataRecord::RemoveTopic {
                    topic_id: Uuid::from_u128(1),
                },
                topic("a", 3),
                partition(3, 0, &[1]),
            ],
        );
        let delta = MetadataDelta::between(&shrunk, &recreated);
        assert_eq!(delta.deleted_topics, names(&["a", "b"]));
        assert_eq!(delta.changed_topics, names(&["a"]));

        // A dynamic broker config changes every topic's effective configs.
        let configured = after(
            &recreated,
            &[MetadataRecord::Config {
                resource: ConfigResource::Broker(None),
                name: "log.retention.ms".to_owned(),
                value: Some("1000".to_owned()),
            }],
        );
        let delta = MetadataDelta::between(&recreated, &configured);
        assert!(delta.broker_configs_changed && delta.changed_topics.is_empty());
    }
}
