//! The transaction coordinator with no broker around: its shards over real
//! partitions on real logs in a temporary directory, a counter for producer
//! ids and a marker sender that records what it is asked.

use std::sync::Mutex as StdMutex;
use std::sync::atomic::{AtomicI64, Ordering};

use futures::future::BoxFuture;
use strom_controller::MetadataRecord;
use strom_protocol::messages::Uuid;
use strom_storage::{FileCache, LoadOptions, LogConfig, ManualClock, PartitionLog};

use super::markers::MarkerResults;
use super::*;
use crate::partition::PartitionState;

/// This broker, and another one partitions move to.
const NODE: i32 = 1;
const OTHER: i32 = 2;
const TOPIC_ID: Uuid = Uuid::from_u128(0x7a);
/// Partitions of `__transaction_state` in these tests.
const PARTITIONS: i32 = 2;

#[derive(Debug, Default)]
struct Counter(AtomicI64);

impl ProducerIdSource for Counter {
    fn next_producer_id(&self) -> Result<i64, ErrorCode> {
        Ok(1000 + self.0.fetch_add(1, Ordering::Relaxed))
    }
}

/// Records every marker request and answers each partition with `answer`.
struct Markers {
    answer: ErrorCode,
    sent: StdMutex<Vec<MarkerRequest>>,
}

impl Markers {
    fn answering(answer: ErrorCode) -> Self {
        Self {
            answer,
            sent: StdMutex::new(Vec::new()),
        }
    }

    fn sent(&self) -> Vec<MarkerRequest> {
        self.sent.lock().unwrap().clone()
    }
}

impl MarkerSender for Markers {
    fn send<'a>(&'a self, request: &'a MarkerRequest) -> BoxFuture<'a, MarkerResults> {
        self.sent.lock().unwrap().push(request.clone());
        let results = request
            .partitions
            .iter()
            .map(|p| (p.clone(), self.answer))
            .collect();
        Box::pin(async move { results })
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    partitions: BTreeMap<i32, Arc<Partition>>,
    image: MetadataImage,
    coordinator: TxnCoordinator,
}

impl Fixture {
    /// `__transaction_state` with [`PARTITIONS`] partitions led here at
    /// epoch 0, and a coordinator that has not synced yet.
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(1_000));
        let mut partitions = BTreeMap::new();
        let mut records = vec![MetadataRecord::Topic {
            name: TRANSACTION_STATE_TOPIC.to_owned(),
            topic_id: TOPIC_ID,
        }];
        for index in 0..PARTITIONS {
            let log = PartitionLog::open(
                dir.path()
                    .join(format!("{TRANSACTION_STATE_TOPIC}-{index}")),
                LogConfig::default(),
                Arc::new(FileCache::new(16)),
                Arc::clone(&clock),
                LoadOptions::default(),
            )
            .unwrap();
            let partition = Partition::new(
                TRANSACTION_STATE_TOPIC.into(),
                index,
                TOPIC_ID,
                Arc::new(log),
                NODE,
                (0, NODE),
            );
            partitions.insert(index, Arc::new(partition));
            records.push(MetadataRecord::Partition {
                topic_id: TOPIC_ID,
                partition: index,
                replicas: vec![NODE],
                isr: vec![NODE],
                leader: NODE,
                leader_epoch: 0,
                partition_epoch: 0,
                adding_replicas: vec![],
                removing_replicas: vec![],
                elr: Vec::new(),
            });
        }
        let mut image = MetadataImage::default();
        image.apply_batch(0, &records);
        let config = TxnConfig::from_properties(&BTreeMap::from([(
            "transaction.state.log.num.partitions".to_owned(),
            PARTITIONS.to_string(),
        )]))
        .unwrap();
        let coordinator = TxnCoordinator::new(config, clock, Arc::new(Counter::default()));
        Self {
            _dir: dir,
            partitions,
            image,
            coordinator,
        }
    }

    /// Moves partition `index` to `leader` at `epoch`, then syncs, as the
    /// metadata publisher will.
    fn lead(&self, index: i32, epoch: i32, leader: i32) {
        self.partitions[&index].apply_state(&PartitionState::single(leader, epoch), 0);
        self.coordinator.sync(&self.partitions);
    }

    async fn init(&self, id: &str) -> Result<(i64, i16), ErrorCode> {
        let markers = Markers::answering(ErrorCode::None);
        self.coordinator
            .init_producer_id(&self.image, &markers, id, 60_000, None, 4)
            .await
    }

    async fn add(&self, id: &str, (pid, epoch): (i64, i16)) -> Result<(), ErrorCode> {
        self.coordinator
            .add_partitions(
                &self.image,
                id,
                pid,
                epoch,
                &[("orders".to_owned(), 0)],
                ErrorCode::ProducerFenced,
            )
            .await
    }

    async fn verify(&self, id: &str, (pid, epoch): (i64, i16)) -> Vec<ErrorCode> {
        self.coordinator
            .verify_partitions(&self.image, id, pid, epoch, &[("orders".to_owned(), 0)])
            .await
    }

    async fn end(
        &self,
        markers: &Markers,
        id: &str,
        (pid, epoch): (i64, i16),
    ) -> Result<(), ErrorCode> {
        self.coordinator
            .end_txn(
                &self.image,
                markers,
                id,
                pid,
                epoch,
                true,
                ErrorCode::ProducerFenced,
            )
            .await
    }

    async fn status(&self, id: &str) -> Option<TxnStatus> {
        let shard = self.coordinator.shard(&self.image, id).ok()?;
        let state = shard.lock().await;
        state.ids.get(id).map(|t| t.status)
    }
}

/// A transactional id hashed to partition `index`.
fn id_in(index: i32) -> String {
    (0..)
        .map(|n| format!("txn-{n}"))
        .find(|id| store::partition_for(id, PARTITIONS) == index)
        .unwrap()
}

#[tokio::test]
async fn a_resigned_partition_answers_not_coordinator_and_its_reelection_replays_it() {
    let f = Fixture::new();
    let (a, b) = (id_in(0), id_in(1));
    assert_eq!(
        f.init(&a).await.err(),
        Some(ErrorCode::NotCoordinator),
        "nothing is loaded before the first sync"
    );
    f.coordinator.sync(&f.partitions);
    let producer_a = f.init(&a).await.unwrap();
    let producer_b = f.init(&b).await.unwrap();
    assert_ne!(producer_a.0, producer_b.0);
    f.add(&a, producer_a).await.unwrap();
    f.add(&b, producer_b).await.unwrap();

    // Partition 0 moves to another broker: a's id is not coordinated here.
    f.lead(0, 1, OTHER);
    assert_eq!(f.init(&a).await.err(), Some(ErrorCode::NotCoordinator));
    assert_eq!(
        f.add(&a, producer_a).await.err(),
        Some(ErrorCode::NotCoordinator)
    );
    assert_eq!(f.verify(&a, producer_a).await, [ErrorCode::NotCoordinator]);
    // b's partition is still here, and works.
    assert_eq!(f.verify(&b, producer_b).await, [ErrorCode::None]);
    let markers = Markers::answering(ErrorCode::None);
    f.end(&markers, &b, producer_b).await.unwrap();
    assert_eq!(f.status(&b).await, Some(TxnStatus::CompleteCommit));
    assert_eq!(markers.sent()[0].coordinator_epoch, 0);

    // Partition 0 comes back at epoch 2: the load replays a's transaction.
    f.lead(0, 2, NODE);
    assert_eq!(f.status(&a).await, Some(TxnStatus::Ongoing));
    assert_eq!(f.verify(&a, producer_a).await, [ErrorCode::None]);
    let shard = f.coordinator.shard(&f.image, &a).unwrap();
    assert_eq!((shard.index(), shard.coordinator_epoch()), (0, 2));
    let markers = Markers::answering(ErrorCode::None);
    f.end(&markers, &a, producer_a).await.unwrap();
    let sent = markers.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].coordinator_epoch, 2, "the new leader epoch");
    assert_eq!(sent[0].partitions, [("orders".to_owned(), 0)]);
    assert_eq!(f.status(&a).await, Some(TxnStatus::CompleteCommit));
}

#[tokio::test]
async fn a_stale_election_or_resignation_changes_nothing() {
    let f = Fixture::new();
    let a = id_in(0);
    f.coordinator.sync(&f.partitions);
    let producer = f.init(&a).await.unwrap();
    let loaded = f.coordinator.shard(&f.image, &a).unwrap();
    // A second sync, an election at the same or an older epoch, and a
    // resignation older than the shard keep the loaded shard as it is.
    f.coordinator.sync(&f.partitions);
    let log: Arc<dyn CoordinatorLog> = Arc::clone(&f.partitions[&0]) as _;
    assert!(!f.coordinator.on_elected(0, 0, Arc::clone(&log)));
    assert!(!f.coordinator.on_elected(0, -1, log));
    f.coordinator.on_resigned(0, Some(-1));
    let shard = f.coordinator.shard(&f.image, &a).unwrap();
    assert!(Arc::ptr_eq(&loaded, &shard), "not reloaded");
    assert_eq!(f.status(&a).await, Some(TxnStatus::Empty));
    // A shard whose partition was re-elected meanwhile cannot write: the
    // newer epoch's shard owns the ids.
    f.partitions[&0].apply_state(&PartitionState::single(NODE, 1), 0);
    assert_eq!(
        f.add(&a, producer).await.err(),
        Some(ErrorCode::NotCoordinator)
    );
    f.coordinator.sync(&f.partitions);
    f.add(&a, producer).await.unwrap();
    assert_eq!(f.status(&a).await, Some(TxnStatus::Ongoing));
}

#[tokio::test]
async fn a_load_finds_transactions_left_in_prepare_and_the_timer_completes_them() {
    let f = Fixture::new();
    let a = id_in(1);
    f.coordinator.sync(&f.partitions);
    let producer = f.init(&a).await.unwrap();
    f.add(&a, producer).await.unwrap();
    // No marker can be written: the commit is decided but stays prepared.
    let unreachable = Markers::answering(ErrorCode::NotLeaderOrFollower);
    f.end(&unreachable, &a, producer).await.unwrap();
    assert_eq!(f.status(&a).await, Some(TxnStatus::PrepareCommit));

    f.lead(1, 1, OTHER);
    f.lead(1, 2, NODE);
    assert_eq!(f.status(&a).await, Some(TxnStatus::PrepareCommit));
    let markers = Markers::answering(ErrorCode::None);
    f.coordinator.tick(&markers).await;
    let sent = markers.sent();
    assert_eq!(sent.len(), 1);
    assert!(sent[0].commit);
    assert_eq!(sent[0].coordinator_epoch, 2);
    assert_eq!(f.status(&a).await, Some(TxnStatus::CompleteCommit));
}
