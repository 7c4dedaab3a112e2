//! Incremental fetch sessions (KIP-227).
//!
//! A client opens a session with a full fetch (session id 0, epoch 0); the
//! broker answers with a session id. Later fetches (epoch 1, 2, ...) name only
//! partitions that changed and those to forget; the broker answers only
//! partitions with news: records, an error, or a changed high watermark, last
//! stable offset or log start offset. Epoch -1 closes a session.
//!
//! The cache holds `max.incremental.fetch.session.cache.slots` sessions (Kafka
//! default 1000); when full, the least recently used session goes (its client
//! gets FETCH_SESSION_ID_NOT_FOUND and starts over with a full fetch).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use strom_protocol::error_code::ErrorCode;
use strom_protocol::messages::Uuid;

/// Session id meaning "no session".
pub const INVALID_SESSION_ID: i32 = 0;
/// Epoch of a request that opens a session.
pub const INITIAL_EPOCH: i32 = 0;
/// Epoch of a request that closes a session (or fetches without one).
pub const FINAL_EPOCH: i32 = -1;
/// Bound on the partitions one session tracks: a consumer fetches from the
/// partitions it is assigned; 100,000 is far above any assignment.
const MAX_SESSION_PARTITIONS: usize = 100_000;

/// A partition as a fetch names it: topic name (resolved) and index.
pub type PartitionKey = (Arc<str>, i32);

/// How a fetch wants one partition read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchParams {
    pub topic_id: Uuid,
    pub fetch_offset: i64,
    pub partition_max_bytes: i32,
    pub current_leader_epoch: i32,
    /// The epoch of the last batch the fetcher has (Fetch v12+, -1 when
    /// not given): a follower's log is checked against the leader's epochs.
    pub last_fetched_epoch: i32,
    /// A follower's log start offset (Fetch v5+, -1 when not given):
    /// KIP-392 sends consumers only to followers holding their offset.
    pub log_start_offset: i64,
}

/// What the client last heard about a partition.
#[derive(Debug, Clone, Copy)]
struct Sent {
    high_watermark: i64,
    last_stable_offset: i64,
    log_start_offset: i64,
}

#[derive(Debug)]
struct SessionPartition {
    params: FetchParams,
    /// Position in the fetch order; partitions that returned data move to
    /// the end so that one busy partition cannot starve the others.
    order: u64,
    sent: Option<Sent>,
}

#[derive(Debug)]
struct FetchSession {
    /// The epoch the next request must carry.
    next_epoch: i32,
    partitions: BTreeMap<PartitionKey, SessionPartition>,
    next_order: u64,
    last_used: Instant,
}

impl FetchSession {
    fn upsert(&mut self, key: PartitionKey, params: FetchParams) {
        if let Some(p) = self.partitions.get_mut(&key) {
            p.params = params;
        } else if self.partitions.len() < MAX_SESSION_PARTITIONS {
            self.next_order += 1;
            self.partitions.insert(
                key,
                SessionPartition {
                    params,
                    order: self.next_order,
                    sent: None,
                },
            );
        }
    }

    fn fetch_list(&self) -> Vec<(PartitionKey, FetchParams)> {
        let mut list: Vec<_> = self
            .partitions
            .iter()
            .map(|(k, p)| (p.order, k.clone(), p.params))
            .collect();
        list.sort_by_key(|(order, _, _)| *order);
        list.into_iter().map(|(_, k, p)| (k, p)).collect()
    }
}

/// How a fetch request relates to sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionContext {
    /// No session: answer every requested partition.
    Sessionless,
    /// A full fetch that opened session `id` (0 when the cache had no room).
    Full { id: i32 },
    /// An incremental fetch in session `id`: answer only partitions with news.
    Incremental { id: i32 },
}

/// The outcome of a partition read, as far as the session cares.
#[derive(Debug, Clone, Copy)]
pub struct PartitionOutcome {
    pub error: bool,
    pub has_records: bool,
    pub high_watermark: i64,
    pub last_stable_offset: i64,
    pub log_start_offset: i64,
}

/// The sessions of this broker.
#[derive(Debug)]
pub struct FetchSessionCache {
    sessions: HashMap<i32, FetchSession>,
    max_sessions: usize,
    next_id: i32,
}

impl FetchSessionCache {
    pub fn new(max_sessions: usize) -> Self {
        Self {
            sessions: HashMap::new(),
            max_sessions,
            // Ids need not be secret, only unique while live and never 0.
            next_id: i32::try_from(std::process::id() % 1_000_000).unwrap_or(0) + 1,
        }
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Interprets a request's session fields: which partitions to read, and
    /// in which context to answer. `Err` is the top-level fetch error.
    pub fn begin(
        &mut self,
        session_id: i32,
        epoch: i32,
        requested: Vec<(PartitionKey, FetchParams)>,
        forgotten: &[PartitionKey],
    ) -> Result<(SessionContext, Vec<(PartitionKey, FetchParams)>), ErrorCode> {
        if epoch == INITIAL_EPOCH || epoch == FINAL_EPOCH {
            if session_id != INVALID_SESSION_ID {
                self.sessions.remove(&session_id);
            }
            if epoch == FINAL_EPOCH {
                return Ok((SessionContext::Sessionless, requested));
            }
            let id = self.create(&requested);
            return Ok((SessionContext::Full { id }, requested));
        }
        let Some(session) = self.sessions.get_mut(&session_id) else {
            return Err(ErrorCode::FetchSessionIdNotFound);
        };
        if session.next_epoch != epoch {
            return Err(ErrorCode::InvalidFetchSessionEpoch);
        }
        session.next_epoch = next_epoch(epoch);
        session.last_used = Instant::now();
        for key in forgotten {
            session.partitions.remove(key);
        }
        for (key, params) in requested {
            session.upsert(key, params);
        }
        Ok((
            SessionContext::Incremental { id: session_id },
            session.fetch_list(),
        ))
    }

    fn create(&mut self, requested: &[(PartitionKey, FetchParams)]) -> i32 {
        if self.max_sessions == 0 {
            return INVALID_SESSION_ID;
        }
        if self.sessions.len() >= self.max_sessions
            && let Some(oldest) = self
                .sessions
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(id, _)| *id)
        {
            self.sessions.remove(&oldest);
        }
        let id = loop {
            let id = self.next_id;
            self.next_id = if self.next_id == i32::MAX {
                1
            } else {
                self.next_id + 1
            };
            if !self.sessions.contains_key(&id) {
                break id;
            }
        };
        let mut session = FetchSession {
            next_epoch: next_epoch(INITIAL_EPOCH),
            partitions: BTreeMap::new(),
            next_order: 0,
            last_used: Instant::now(),
        };
        for (key, params) in requested {
            session.upsert(key.clone(), *params);
        }
        self.sessions.insert(id, session);
        id
    }

    /// After the reads: decides which partitions the response carries (all,
    /// except in an incremental fetch) and remembers what the client was told.
    pub fn finish(
        &mut self,
        context: &SessionContext,
        outcomes: &[(PartitionKey, PartitionOutcome)],
    ) -> Vec<bool> {
        let id = match context {
            SessionContext::Sessionless => return vec![true; outcomes.len()],
            SessionContext::Full { id } | SessionContext::Incremental { id } => *id,
        };
        let incremental = matches!(context, SessionContext::Incremental { .. });
        let Some(session) = self.sessions.get_mut(&id) else {
            return vec![true; outcomes.len()];
        };
        outcomes
            .iter()
            .map(|(key, outcome)| {
                let mut order = session.next_order;
                let Some(p) = session.partitions.get_mut(key) else {
                    return true;
                };
                let changed = p.sent.is_none_or(|s| {
                    s.high_watermark != outcome.high_watermark
                        || s.last_stable_offset != outcome.last_stable_offset
                        || s.log_start_offset != outcome.log_start_offset
                });
                let include = !incremental || outcome.error || outcome.has_records || changed;
                if include {
                    p.sent = Some(Sent {
                        high_watermark: outcome.high_watermark,
                        last_stable_offset: outcome.last_stable_offset,
                        log_start_offset: outcome.log_start_offset,
                    });
                }
                if outcome.has_records {
                    order += 1;
                    p.order = order;
                    session.next_order = order;
                }
                include
            })
            .collect()
    }
}

/// Session epochs count up and wrap past i32::MAX to 1 (never 0 or -1).
fn next_epoch(epoch: i32) -> i32 {
    if epoch == i32::MAX { 1 } else { epoch + 1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(p: i32) -> PartitionKey {
        (Arc::from("t"), p)
    }

    fn params(offset: i64) -> FetchParams {
        FetchParams {
            topic_id: Uuid::nil(),
            fetch_offset: offset,
            partition_max_bytes: 1024,
            current_leader_epoch: -1,
            last_fetched_epoch: -1,
            log_start_offset: -1,
        }
    }

    fn outcome(hw: i64, has_records: bool) -> PartitionOutcome {
        PartitionOutcome {
            error: false,
            has_records,
            high_watermark: hw,
            last_stable_offset: hw,
            log_start_offset: 0,
        }
    }

    #[test]
    fn incremental_fetches_answer_only_what_changed() {
        let mut cache = FetchSessionCache::new(10);
        let (ctx, list) = cache
            .begin(0, 0, vec![(key(0), params(0)), (key(1), params(0))], &[])
            .unwrap();
        let SessionContext::Full { id } = ctx else {
            panic!("{ctx:?}")
        };
        assert_ne!(id, 0);
        assert_eq!(list.len(), 2);
        assert_eq!(
            cache.finish(
                &ctx,
                &[(key(0), outcome(5, true)), (key(1), outcome(0, false))]
            ),
            [true, true]
        );

        // Epoch 1 names nothing new: both partitions are read, only news returned.
        let (ctx, list) = cache.begin(id, 1, vec![], &[]).unwrap();
        assert_eq!(ctx, SessionContext::Incremental { id });
        assert_eq!(list.len(), 2);
        assert_eq!(
            list[0].0,
            key(1),
            "the partition that returned data moved to the end"
        );
        assert_eq!(
            cache.finish(
                &ctx,
                &[(key(1), outcome(0, false)), (key(0), outcome(6, false))]
            ),
            [false, true]
        );

        // Forget a partition; wrong epochs and unknown sessions are errors.
        let (_, list) = cache.begin(id, 2, vec![], &[key(1)]).unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(
            cache.begin(id, 2, vec![], &[]).unwrap_err(),
            ErrorCode::InvalidFetchSessionEpoch
        );
        assert_eq!(
            cache.begin(id + 1, 1, vec![], &[]).unwrap_err(),
            ErrorCode::FetchSessionIdNotFound
        );
        // Closing.
        let (ctx, _) = cache
            .begin(id, FINAL_EPOCH, vec![(key(0), params(0))], &[])
            .unwrap();
        assert_eq!(ctx, SessionContext::Sessionless);
        assert!(cache.is_empty());
    }

    #[test]
    fn the_cache_is_bounded() {
        let mut cache = FetchSessionCache::new(2);
        let mut ids = Vec::new();
        for _ in 0..3 {
            let (ctx, _) = cache.begin(0, 0, vec![(key(0), params(0))], &[]).unwrap();
            let SessionContext::Full { id } = ctx else {
                panic!()
            };
            ids.push(id);
        }
        assert_eq!(cache.len(), 2);
        assert_eq!(
            cache.begin(ids[0], 1, vec![], &[]).unwrap_err(),
            ErrorCode::FetchSessionIdNotFound
        );
        assert!(cache.begin(ids[2], 1, vec![], &[]).is_ok());
        let mut none = FetchSessionCache::new(0);
        assert_eq!(
            none.begin(0, 0, vec![], &[]).unwrap().0,
            SessionContext::Full { id: 0 }
        );
    }
}
