//! A broker-only node's metadata (Kafka's observer): a node that is not a
//! voter keeps no Raft log; it fetches the committed metadata from the
//! voters, entry by entry as they commit (a long poll), and applies it to an
//! image of its own exactly as the voters' state machines do. A node that
//! falls behind the voters' kept entries (after a snapshot) gets the whole
//! image instead. Every voter answers fetches from its applied state, so
//! the observer keeps working while the active controller changes; it
//! learns who that is from each answer.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::image::MetadataImage;
use crate::quorum::{CallError, Quorum, VoterClient};
use crate::records::MetadataRecord;

/// How long a voter holds a fetch that has nothing new: the observer then
/// hears of a change as soon as it commits, and of the active controller at
/// least this often.
pub const FETCH_MAX_WAIT: Duration = Duration::from_millis(500);
/// Bound on entries in one fetch answer: each holds at most
/// `MAX_RECORDS_PER_USER_OP` records, so an answer stays far below the
/// peer frame limit.
pub const MAX_ENTRIES_PER_FETCH: usize = 64;
/// Empty long polls in a row from the leader before the next voter is
/// asked once (about two seconds): how an observer leaves an old leader
/// that lost its quorum and still names itself.
const IDLE_POLLS_BEFORE_ROTATING: u32 = 4;
/// Pause after a failed fetch before trying the next voter.
const FETCH_RETRY_BACKOFF: Duration = Duration::from_millis(200);

/// One fetch answer from a voter.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct MetadataChunk {
    /// The active controller as the voter knows it, and the term (leader
    /// epoch) it knows: an isolated old leader still names itself, with an
    /// older term than the others.
    pub(crate) leader: Option<i32>,
    #[serde(default)]
    pub(crate) term: i32,
    /// Committed entries from the offset asked for, in order, as
    /// `(index, records)`; blank and membership entries have none.
    pub(crate) entries: Vec<(u64, Option<Vec<MetadataRecord>>)>,
    /// The whole image (its offset and the records that rebuild it) when
    /// the entries asked for are no longer kept.
    pub(crate) image: Option<(i64, Vec<MetadataRecord>)>,
}

impl MetadataChunk {
    /// A voter's answer to a fetch from `offset`: waits up to
    /// [`FETCH_MAX_WAIT`] for something new.
    pub(crate) async fn serve(quorum: &Quorum, offset: i64) -> Self {
        let mut images = quorum.subscribe();
        if images.borrow().offset <= offset {
            let _ =
                tokio::time::timeout(FETCH_MAX_WAIT, images.wait_for(|i| i.offset > offset)).await;
        }
        let leader = quorum.leader();
        let term = quorum.status().epoch;
        let from = u64::try_from(offset.max(0)).unwrap_or(0);
        match quorum.applied_entries(from, MAX_ENTRIES_PER_FETCH) {
            Some(entries) => Self {
                leader,
                term,
                entries,
                image: None,
            },
            None => {
                let image = quorum.image();
                Self {
                    leader,
                    term,
                    entries: Vec::new(),
                    image: Some((image.offset, image.to_records())),
                }
            }
        }
    }

    /// The image after this chunk, on `image`; `None` when it does not
    /// follow on (a voter's answer to a stale offset): the caller fetches
    /// again from its own offset.
    pub(crate) fn apply_to(self, image: &MetadataImage) -> Option<MetadataImage> {
        let mut next = match self.image {
            Some((offset, records)) => {
                let mut fresh = MetadataImage::default();
                fresh.apply_batch(0, &records);
                fresh.offset = offset;
                fresh
            }
            None => image.clone(),
        };
        for (index, records) in self.entries {
            let index = i64::try_from(index).ok()?;
            if index != next.offset {
                return None;
            }
            if let Some(records) = records {
                next.apply_batch(index, &records);
            }
            next.offset = index + 1;
        }
        Some(next)
    }
}

/// The metadata of a broker-only node, fetched from the voters.
#[derive(Debug)]
pub struct Observer {
    /// Forwarded operations (to the active controller).
    ops: VoterClient,
    /// Metadata fetches (long polls: a connection of their own).
    fetches: VoterClient,
    image: watch::Sender<Arc<MetadataImage>>,
    /// The active controller with the highest term any voter named.
    leader: watch::Sender<(i32, Option<i32>)>,
    /// The cluster this node belongs to: named by its data directory, or
    /// the first one it fetched. Metadata of any other is refused.
    cluster_id: parking_lot::Mutex<Option<String>>,
    /// The voters that said they belong to another cluster (and why).
    refusals: parking_lot::Mutex<BTreeMap<i32, String>>,
    /// Set when a majority of the voters say they belong to another cluster.
    wrong_cluster: watch::Sender<Option<String>>,
    request_timeout: Duration,
    shutdown: CancellationToken,
}

/// Controller requests an observer sends: a fetch from an offset (encoded
/// by the controller layer, which owns the format).
pub(crate) type EncodeFetch = dyn Fn(i64) -> Vec<u8> + Send + Sync;
/// Decodes a voter's answer to a fetch.
pub(crate) type DecodeFetch = dyn Fn(&[u8]) -> Option<MetadataChunk> + Send + Sync;

impl Observer {
    /// An observer of `voters` (id to `HOST:PORT`) for node `node_id`, of
    /// the cluster `cluster_id` when this node's data directory names one.
    pub(crate) fn new(
        node_id: i32,
        voters: &BTreeMap<i32, String>,
        cluster_id: Option<&str>,
        request_timeout: Duration,
    ) -> Self {
        let ops = VoterClient::new(node_id, voters);
        let fetches = VoterClient::new(node_id, voters);
        if let Some(id) = cluster_id {
            ops.set_cluster_id(id);
            fetches.set_cluster_id(id);
        }
        Self {
            ops,
            fetches,
            image: watch::Sender::new(Arc::new(MetadataImage::default())),
            leader: watch::Sender::new((-1, None)),
            cluster_id: parking_lot::Mutex::new(cluster_id.map(str::to_owned)),
            refusals: parking_lot::Mutex::new(BTreeMap::new()),
            wrong_cluster: watch::Sender::new(None),
            request_timeout,
            shutdown: CancellationToken::new(),
        }
    }

    pub fn image(&self) -> Arc<MetadataImage> {
        Arc::clone(&self.image.borrow())
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<MetadataImage>> {
        self.image.subscribe()
    }

    /// The active controller, as the last voter heard from said.
    pub fn leader(&self) -> Option<i32> {
        self.leader.borrow().1
    }

    /// Takes what a voter said of the leader: a higher term wins; in the
    /// same term, a known leader replaces an unknown one.
    fn heard(&self, term: i32, leader: Option<i32>) {
        self.leader.send_if_modified(|known| {
            let newer =
                term > known.0 || (term == known.0 && leader.is_some() && known.1.is_none());
            if newer && *known != (term, leader) {
                *known = (term, leader);
                true
            } else {
                false
            }
        });
    }

    pub fn voter_ids(&self) -> Vec<i32> {
        self.ops.voter_ids()
    }

    /// Why this node cannot join, once a voter said it belongs to another
    /// cluster.
    pub fn wrong_cluster(&self) -> watch::Receiver<Option<String>> {
        self.wrong_cluster.subscribe()
    }

    /// Calls the controller layer of `voter`.
    pub(crate) async fn call(
        &self,
        voter: i32,
        request: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, CallError> {
        let result = self.ops.call(voter, request, timeout).await;
        self.note(voter, &result);
        if result.is_err() && self.leader() == Some(voter) {
            // Ask the voters again who leads.
            self.leader.send_modify(|known| known.1 = None);
        }
        result
    }

    /// Counts a voter's refusal as of another cluster (and forgets it when
    /// the voter answers); a majority of refusals means this node's data
    /// belongs elsewhere, where one stray voter does not.
    fn note<T>(&self, voter: i32, result: &Result<T, CallError>) {
        let mut refusals = self.refusals.lock();
        match result {
            Err(e @ CallError::WrongCluster { .. }) => {
                refusals.insert(voter, e.to_string());
            }
            Ok(_) => {
                refusals.remove(&voter);
            }
            Err(_) => {}
        }
        let voters = self.ops.voter_ids().len();
        if refusals.len() * 2 > voters
            && let Some(why) = refusals.values().next()
        {
            self.wrong_cluster.send_replace(Some(why.clone()));
        }
    }

    pub fn stop(&self) {
        self.shutdown.cancel();
    }

    /// Fetches and applies the metadata until stopped: from the active
    /// controller when it is known, else from each voter in turn.
    pub(crate) async fn run(self: Arc<Self>, encode: Box<EncodeFetch>, decode: Box<DecodeFetch>) {
        let voters = self.fetches.voter_ids();
        let mut next_voter = 0usize;
        // Empty answers in a row from the voter asked: after a few, ask the
        // next one (an isolated old leader answers, but never with news).
        let mut idle = 0u32;
        loop {
            let voter = match self.leader() {
                Some(l) if voters.contains(&l) && idle < IDLE_POLLS_BEFORE_ROTATING => l,
                _ => {
                    idle = 0;
                    next_voter = (next_voter + 1) % voters.len().max(1);
                    match voters.get(next_voter) {
                        Some(v) => *v,
                        None => return,
                    }
                }
            };
            let offset = self.image.borrow().offset;
            let timeout = FETCH_MAX_WAIT + self.request_timeout;
            let fetched = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                r = self.fetches.call(voter, encode(offset), timeout) => r,
            };
            self.note(voter, &fetched);
            let chunk = match fetched.as_deref().map(&decode) {
                Ok(Some(chunk)) => chunk,
                Ok(None) => {
                    tracing::warn!(voter, "an undecodable metadata fetch answer");
                    idle = IDLE_POLLS_BEFORE_ROTATING;
                    self.backoff().await;
                    continue;
                }
                Err(e) => {
                    tracing::debug!(voter, error = %e, "metadata fetch failed");
                    idle = IDLE_POLLS_BEFORE_ROTATING;
                    self.backoff().await;
                    continue;
                }
            };
            self.heard(chunk.term, chunk.leader);
            let current = self.image();
            match chunk.apply_to(&current) {
                Some(next) if next.offset != current.offset => {
                    if let Err(refused) = self.adopt_cluster(voter, &next.cluster_id) {
                        // A voter that had not yet learnt its cluster id
                        // took the fetch, and answered once it had.
                        self.note(voter, &Err::<(), _>(refused));
                        idle = IDLE_POLLS_BEFORE_ROTATING;
                        self.backoff().await;
                        continue;
                    }
                    idle = 0;
                    self.image.send_replace(Arc::new(next));
                }
                Some(_) => idle += 1,
                None => {
                    // This voter is behind this node: ask another.
                    idle = IDLE_POLLS_BEFORE_ROTATING;
                    self.backoff().await;
                }
            }
        }
    }

    /// Checks the cluster id of fetched metadata against this node's (and
    /// takes it as this node's when it had none yet).
    fn adopt_cluster(&self, voter: i32, fetched: &str) -> Result<(), CallError> {
        if fetched.is_empty() {
            return Ok(());
        }
        let mut ours = self.cluster_id.lock();
        match ours.as_deref() {
            Some(id) if id == fetched => Ok(()),
            Some(id) => Err(CallError::WrongCluster {
                node: u64::try_from(voter).unwrap_or_default(),
                theirs: fetched.to_owned(),
                ours: id.to_owned(),
            }),
            None => {
                *ours = Some(fetched.to_owned());
                self.ops.set_cluster_id(fetched);
                self.fetches.set_cluster_id(fetched);
                Ok(())
            }
        }
    }

    async fn backoff(&self) {
        tokio::select! {
            _ = self.shutdown.cancelled() => {}
            _ = tokio::time::sleep(FETCH_RETRY_BACKOFF) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(id: &str) -> Vec<MetadataRecord> {
        vec![MetadataRecord::ClusterId {
            cluster_id: id.to_owned(),
        }]
    }

    fn chunk(
        entries: Vec<(u64, Option<Vec<MetadataRecord>>)>,
        image: Option<(i64, Vec<MetadataRecord>)>,
    ) -> MetadataChunk {
        MetadataChunk {
            leader: Some(1),
            term: 1,
            entries,
            image,
        }
    }

    #[test]
    fn entries_apply_in_order_and_a_gap_is_refused() {
        let start = MetadataImage::default();
        let next = chunk(vec![(0, None), (1, Some(cluster("one")))], None)
            .apply_to(&start)
            .unwrap();
        assert_eq!((next.offset, next.cluster_id.as_str()), (2, "one"));
        // Entry 3 does not follow offset 2: nothing is applied.
        assert!(
            chunk(vec![(3, Some(cluster("two")))], None)
                .apply_to(&next)
                .is_none()
        );
        // An answer with nothing new leaves the image as it was.
        let same = chunk(Vec::new(), None).apply_to(&next).unwrap();
        assert_eq!(same, next);
    }

    #[test]
    fn a_whole_image_replaces_the_old_one_and_entries_follow_it() {
        let old = chunk(vec![(0, Some(cluster("old")))], None)
            .apply_to(&MetadataImage::default())
            .unwrap();
        let next = chunk(vec![(7, None)], Some((7, cluster("new"))))
            .apply_to(&old)
            .unwrap();
        assert_eq!((next.offset, next.cluster_id.as_str()), (8, "new"));
    }

    #[test]
    fn metadata_of_another_cluster_is_refused_and_a_majority_of_refusals_is_reported() {
        let voters: BTreeMap<i32, String> = (1..=3)
            .map(|id| (id, format!("127.0.0.1:{}", 1000 + id)))
            .collect();
        let named = Observer::new(4, &voters, Some("ours"), Duration::from_secs(1));
        assert!(
            named.adopt_cluster(1, "").is_ok(),
            "no id yet: nothing to check"
        );
        assert!(named.adopt_cluster(1, "ours").is_ok());
        for voter in [1, 2] {
            let refused = named.adopt_cluster(voter, "theirs");
            assert!(
                matches!(&refused, Err(CallError::WrongCluster { theirs, ours, .. }) if theirs == "theirs" && ours == "ours")
            );
            named.note(voter, &refused);
        }
        let why = named.wrong_cluster().borrow().clone();
        assert!(why.is_some_and(|w| w.contains("theirs")));

        // A node without a cluster id takes the first one it fetches and
        // then holds to it.
        let fresh = Observer::new(4, &voters, None, Duration::from_secs(1));
        assert!(fresh.adopt_cluster(2, "first").is_ok());
        assert!(fresh.adopt_cluster(3, "first").is_ok());
        assert!(fresh.adopt_cluster(3, "second").is_err());
        assert!(
            fresh.wrong_cluster().borrow().is_none(),
            "one refusal is not a majority"
        );
    }
}
