//! How one admin call reaches the brokers: where each item's request goes
//! ([`Dest`]), the retry engine that sends, settles and retries items
//! ([`Round`]) until the API timeout, and small helpers every family uses.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Debug;
use std::future::Future;
use std::time::{Duration, Instant};

use strom_protocol::messages::kafka::{FindCoordinatorRequest, TopicName};
use strom_protocol::messages::{Request, StrBytes};

use crate::cluster::{Cluster, GROUP_KEY, Route};
use crate::consumer::TopicPartition;
use crate::error::{Error, ErrorCode, Result};

use super::Admin;

/// v4+ looks up several keys at once; v6 adds share groups.
const FIND_COORDINATOR_VERSION: i16 = 5;

/// Where a request for an item goes.
#[derive(Debug, Clone)]
pub(super) enum Dest {
    /// Any broker.
    Any,
    /// The controller the metadata names, else any broker.
    Controller,
    /// The broker with this id.
    Node(i32),
    /// The coordinator of this group.
    Coordinator(String),
    /// The leader of this partition.
    Leader(TopicPartition),
}

impl Admin {
    /// Runs `attempt` until it succeeds, fails for good, or `deadline`
    /// passes.
    pub(super) async fn retrying<T, F, Fut>(
        &self,
        deadline: Instant,
        what: &str,
        mut attempt: F,
    ) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut failures = 0u32;
        loop {
            match within(deadline, attempt()).await {
                Err(e) if e.is_retriable() => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(timed_out(what, self.api_timeout, Some(&e)));
                    }
                    if e.needs_metadata_refresh() {
                        self.cluster.mark_stale();
                    }
                    failures = failures.saturating_add(1);
                    let wait = self.cluster.retry_backoff(failures);
                    tokio::time::sleep(wait.min(deadline - now)).await;
                }
                other => return other,
            }
        }
    }

    /// Waits before another round (`retry.backoff.ms`, doubling per round
    /// up to `retry.backoff.max.ms`), or times out what is still pending;
    /// `false` when no round is to follow.
    pub(super) async fn backoff<K: Ord + Clone + Debug, T>(
        &self,
        round: &mut Round<K, T>,
        deadline: Instant,
        what: &str,
    ) -> bool {
        if round.pending.is_empty() {
            return false;
        }
        let now = Instant::now();
        if now >= deadline {
            round.time_out(what, self.api_timeout);
            return false;
        }
        round.rounds = round.rounds.saturating_add(1);
        let wait = self.cluster.retry_backoff(round.rounds);
        tokio::time::sleep(wait.min(deadline - now)).await;
        true
    }

    /// Asks about each of `keys` with requests made by `build` (one per
    /// destination broker, all at once), settles each key's answer from
    /// `parse`, and asks again about those with retriable errors until the
    /// API timeout. `build` gets the request version and the keys of that
    /// request, `parse` those and the broker that answered.
    pub(super) async fn each<K, T, R>(
        &self,
        deadline: Instant,
        keys: impl IntoIterator<Item = K>,
        max: i16,
        dest: impl Fn(&K) -> Dest,
        build: impl Fn(i16, &[K]) -> R,
        parse: impl Fn(Sent<'_, K>, R::Response) -> Vec<(K, Result<T>)>,
    ) -> BTreeMap<K, Result<T>>
    where
        K: Ord + Clone + Debug,
        R: Request,
    {
        let mut round = Round::new(keys);
        let what = api_name::<R>();
        while !round.pending.is_empty() {
            let batches = match self.routes(&round.pending, &dest, deadline).await {
                Ok((batches, failed)) => {
                    for (key, error) in failed {
                        round.settle(&self.cluster, key, Err(error));
                    }
                    batches
                }
                Err(e) => {
                    let keys: Vec<K> = round.pending.iter().cloned().collect();
                    round.request_failed(e, keys);
                    HashMap::new()
                }
            };
            let build = &build;
            let answers =
                futures::future::join_all(batches.into_iter().map(|(route, keys)| async move {
                    let answer = self
                        .cluster
                        .send_built(route, max, deadline, |version| build(version, &keys))
                        .await;
                    (route, keys, answer)
                }))
                .await;
            for (route, keys, answer) in answers {
                match answer {
                    Ok((version, response)) => {
                        let mut unanswered: BTreeSet<K> = keys.iter().cloned().collect();
                        let sent = Sent {
                            version,
                            keys: &keys,
                            node: match route {
                                Route::Node(id) | Route::Coordinator(id) => id,
                                Route::Bootstrap(_) => -1,
                            },
                        };
                        for (key, result) in parse(sent, response) {
                            // Answers for something not asked are ignored.
                            if !unanswered.remove(&key) {
                                continue;
                            }
                            if matches!(dest(&key), Dest::Leader(_)) {
                                round.settle_from_leader(&self.cluster, key, result);
                            } else {
                                round.settle(&self.cluster, key, result);
                            }
                        }
                        for key in unanswered {
                            let error = no_answer(&format!("{key:?}"));
                            round.settle(&self.cluster, key, Err(error));
                        }
                    }
                    Err(e) => round.request_failed(e, keys),
                }
            }
            if !self.backoff(&mut round, deadline, &what).await {
                break;
            }
        }
        round.done
    }

    /// Where each pending key's request goes this round, refreshing the
    /// metadata (every round for leaders, when stale otherwise) and looking
    /// up coordinators; keys that cannot be routed come back with their
    /// error. Fails when the metadata cannot be had.
    #[allow(clippy::type_complexity, reason = "a private helper's two lists")]
    pub(super) async fn routes<K: Ord + Clone + Debug>(
        &self,
        keys: &BTreeSet<K>,
        dest: &impl Fn(&K) -> Dest,
        deadline: Instant,
    ) -> Result<(HashMap<Route, Vec<K>>, Vec<(K, Error)>)> {
        let dests: Vec<(K, Dest)> = keys.iter().map(|k| (k.clone(), dest(k))).collect();
        let leader_topics: BTreeSet<String> = dests
            .iter()
            .filter_map(|(_, d)| match d {
                Dest::Leader(tp) => Some(tp.topic.clone()),
                _ => None,
            })
            .collect();
        if !leader_topics.is_empty() {
            let topics: Vec<String> = leader_topics.into_iter().collect();
            within(deadline, self.cluster.fetch_metadata(Some(&topics), false)).await?;
        }
        if dests.iter().any(|(_, d)| !matches!(d, Dest::Leader(_))) {
            within(deadline, self.cluster.maybe_refresh()).await?;
        }
        let groups: BTreeSet<String> = dests
            .iter()
            .filter_map(|(_, d)| match d {
                Dest::Coordinator(group) => Some(group.clone()),
                _ => None,
            })
            .collect();
        let coordinators = if groups.is_empty() {
            Ok(BTreeMap::new())
        } else {
            self.find_coordinators(&groups, deadline).await
        };
        let mut batches: HashMap<Route, Vec<K>> = HashMap::new();
        let mut failed = Vec::new();
        for (key, dest) in dests {
            let route = match dest {
                Dest::Any => Ok(self.any_route()),
                Dest::Controller => {
                    let (_, controller) = self.cluster.cluster_id_and_controller();
                    Ok(if self.cluster.broker(controller).is_some() {
                        Route::Node(controller)
                    } else {
                        self.any_route()
                    })
                }
                Dest::Node(id) => Ok(Route::Node(id)),
                Dest::Coordinator(group) => match &coordinators {
                    Ok(found) => found
                        .get(&group)
                        .cloned()
                        .unwrap_or_else(|| Err(no_answer(&format!("group {group}"))))
                        .map(Route::Coordinator),
                    Err(e) => Err(e.clone()),
                },
                Dest::Leader(tp) => self.leader_route(&tp),
            };
            match route {
                Ok(route) => batches.entry(route).or_default().push(key),
                Err(error) => failed.push((key, error)),
            }
        }
        Ok((batches, failed))
    }

    /// The coordinator of each of `groups`, each a broker the metadata
    /// knows: one FindCoordinator for all (v4+), one per group before.
    ///
    /// Not [`Cluster::find_coordinator`], which asks for one key: a call on
    /// many groups looks them all up in one request, and within the call's
    /// deadline.
    pub(super) async fn find_coordinators(
        &self,
        groups: &BTreeSet<String>,
        deadline: Instant,
    ) -> Result<BTreeMap<String, Result<i32>>> {
        let groups: Vec<&String> = groups.iter().collect();
        let mut found = BTreeMap::new();
        let mut rest = groups.as_slice();
        while let Some(&first) = rest.first() {
            let (version, response) = self
                .cluster
                .send_built(
                    self.any_route(),
                    FIND_COORDINATOR_VERSION,
                    deadline,
                    |version| {
                        let request = FindCoordinatorRequest::default().with_key_type(GROUP_KEY);
                        if version >= 4 {
                            request
                                .with_coordinator_keys(rest.iter().map(|g| str_bytes(g)).collect())
                        } else {
                            request.with_key(str_bytes(first))
                        }
                    },
                )
                .await?;
            if version >= 4 {
                for c in response.coordinators {
                    let result = Error::check(c.error_code, c.error_message.as_deref())
                        .map(|()| c.node_id.0);
                    if rest.iter().any(|g| g.as_str() == c.key.as_str()) {
                        found.insert(c.key.to_string(), result);
                    }
                }
                rest = &[];
            } else {
                let result = Error::check(response.error_code, response.error_message.as_deref())
                    .map(|()| response.node_id.0);
                found.insert(first.clone(), result);
                rest = rest.get(1..).unwrap_or_default();
            }
        }
        // A coordinator newer than the metadata: learn its address.
        let unknown = |found: &BTreeMap<String, Result<i32>>| {
            found
                .values()
                .any(|r| matches!(r, Ok(id) if self.cluster.broker(*id).is_none()))
        };
        if unknown(&found) {
            within(deadline, self.cluster.fetch_metadata(Some(&[]), false)).await?;
            for result in found.values_mut() {
                if let Ok(id) = *result
                    && self.cluster.broker(id).is_none()
                {
                    *result = Err(Error::kafka(
                        ErrorCode::CoordinatorNotAvailable.code(),
                        Some(&format!("coordinator {id} is not in the metadata")),
                    ));
                }
            }
        }
        Ok(found)
    }

    /// A broker for requests any broker answers: the first the metadata
    /// knows that could be reached ([`Cluster::any_broker`]), else the first
    /// bootstrap address.
    pub(super) fn any_route(&self) -> Route {
        self.cluster
            .any_broker()
            .map_or(Route::Bootstrap(0), Route::Node)
    }

    /// The leader of `tp` from the cached metadata.
    pub(super) fn leader_route(&self, tp: &TopicPartition) -> Result<Route> {
        let info = match self.cluster.cached_topic(&tp.topic) {
            Some(result) => result?,
            None => return Err(unknown_topic(&tp.topic)),
        };
        let partition = info.partition(tp.partition).ok_or_else(|| {
            Error::kafka(
                ErrorCode::UnknownTopicOrPartition.code(),
                Some(&format!("{} has no partition {}", tp.topic, tp.partition)),
            )
        })?;
        if partition.leader < 0 || self.cluster.broker(partition.leader).is_none() {
            return Err(Error::kafka(
                ErrorCode::LeaderNotAvailable.code(),
                Some(&format!("{}-{} has no leader", tp.topic, tp.partition)),
            ));
        }
        Ok(Route::Node(partition.leader))
    }
}

/// What a request carried, for the parser of its answer.
#[derive(Debug, Clone, Copy)]
pub(super) struct Sent<'a, K> {
    pub(super) version: i16,
    pub(super) keys: &'a [K],
    /// The broker that answered (-1 for a bootstrap address).
    pub(super) node: i32,
}

/// The keys of one admin call still to be answered, those answered, and the
/// last retriable error seen (for the timeout's message).
#[derive(Debug)]
pub(super) struct Round<K, T> {
    pub(super) pending: BTreeSet<K>,
    pub(super) done: BTreeMap<K, Result<T>>,
    pub(super) last: Option<Error>,
    /// Rounds retried so far, for the backoff.
    pub(super) rounds: u32,
}

impl<K: Ord + Clone + Debug, T> Round<K, T> {
    pub(super) fn new(keys: impl IntoIterator<Item = K>) -> Self {
        Self {
            pending: keys.into_iter().collect(),
            done: BTreeMap::new(),
            last: None,
            rounds: 0,
        }
    }

    pub(super) fn finish(&mut self, key: K, result: Result<T>) {
        self.pending.remove(&key);
        self.done.insert(key, result);
    }

    /// Records `key`'s answer, or keeps it pending when the error is worth
    /// another attempt (marking the metadata stale if the error says it is).
    pub(super) fn settle(&mut self, cluster: &Cluster, key: K, result: Result<T>) {
        self.settle_as(cluster, key, result, worth_retrying);
    }

    /// [`Round::settle`] for an answer from a partition's leader: there an
    /// unknown topic or partition is retried too, as the Java client does,
    /// since the leader may not have caught up with the metadata that sent
    /// the request to it; the next round's metadata says whether the topic
    /// exists.
    pub(super) fn settle_from_leader(&mut self, cluster: &Cluster, key: K, result: Result<T>) {
        self.settle_as(cluster, key, result, Error::is_retriable);
    }

    pub(super) fn settle_as(
        &mut self,
        cluster: &Cluster,
        key: K,
        result: Result<T>,
        retry: impl Fn(&Error) -> bool,
    ) {
        match result {
            Err(e) if retry(&e) => {
                if e.needs_metadata_refresh() || e.code() == Some(ErrorCode::NotController) {
                    cluster.mark_stale();
                }
                self.last = Some(e);
            }
            other => self.finish(key, other),
        }
    }

    /// A whole request for `keys` failed: retried if the error is
    /// retriable, each key's answer otherwise.
    pub(super) fn request_failed(&mut self, error: Error, keys: Vec<K>) {
        if error.is_retriable() {
            // A request cut short at the deadline says less than the
            // broker's last answer.
            if !(matches!(error, Error::Timeout(_)) && self.last.is_some()) {
                self.last = Some(error);
            }
        } else {
            for key in keys {
                self.finish(key, Err(error.clone()));
            }
        }
    }

    pub(super) fn time_out(&mut self, what: &str, after: Duration) {
        let error = timed_out(what, after, self.last.as_ref());
        for key in std::mem::take(&mut self.pending) {
            self.done.insert(key, Err(error.clone()));
        }
    }
}

impl Cluster {
    /// Sends the request `build` makes for the newest version both sides
    /// support up to `max` (requests whose fields differ by version are built
    /// for the version they go out in) on `route`; the version and answer.
    ///
    /// The answer is awaited until `deadline` at most (and
    /// `request.timeout.ms`): an admin call ends at its API timeout even when
    /// that is shorter. Only the wait is cut short, never the write, so the
    /// connection stays usable; a late answer is dropped by its reader.
    pub(super) async fn send_built<R: Request>(
        &self,
        route: Route,
        max: i16,
        deadline: Instant,
        build: impl FnOnce(i16) -> R,
    ) -> Result<(i16, R::Response)> {
        let conn = tokio::time::timeout_at(deadline.into(), self.connection(route))
            .await
            .map_err(|_| Error::Timeout(format!("connecting for {}", api_name::<R>())))??;
        let version = conn.version::<R>(max)?;
        // `start` at the version chosen, which it keeps (it is the cap).
        let in_flight = conn.start::<R>(version, &build(version)).await?;
        let response = tokio::time::timeout_at(deadline.into(), in_flight.response())
            .await
            .unwrap_or_else(|_| {
                Err(Error::Timeout(format!(
                    "{} to {} at the API timeout",
                    api_name::<R>(),
                    conn.addr()
                )))
            });
        if matches!(&response, Err(e) if e.needs_metadata_refresh()) {
            self.mark_stale();
        }
        response.map(|r| (version, r))
    }
}

/// `step` (metadata through [`Cluster`]) cut short at `deadline`, so that a
/// call ends at its API timeout even when `request.timeout.ms` is longer.
/// Metadata requests are small enough to be written whole at once, so the
/// cut falls while waiting for the answer, which the connection drops when
/// it comes.
pub(super) async fn within<T>(
    deadline: Instant,
    step: impl Future<Output = Result<T>>,
) -> Result<T> {
    tokio::time::timeout_at(deadline.into(), step)
        .await
        .unwrap_or_else(|_| Err(Error::Timeout("metadata at the API timeout".to_owned())))
}

/// Whether an item's error is worth another attempt: Kafka's retriable
/// codes, except an unknown topic, which the admin client reports at once
/// (so does the Java client's).
pub(super) fn worth_retrying(error: &Error) -> bool {
    error.is_retriable()
        && !matches!(
            error.code(),
            Some(ErrorCode::UnknownTopicOrPartition | ErrorCode::UnknownTopicId)
        )
}

/// Whether a partition's error code is really the group's: the coordinator
/// moved or is loading, so the whole request is retried.
pub(super) fn is_coordinator_error(code: i16) -> bool {
    [
        ErrorCode::NotCoordinator,
        ErrorCode::CoordinatorNotAvailable,
        ErrorCode::CoordinatorLoadInProgress,
    ]
    .iter()
    .any(|c| c.code() == code)
}

pub(super) fn timed_out(what: &str, after: Duration, last: Option<&Error>) -> Error {
    Error::Timeout(match last {
        Some(e) => format!("{what} after {after:?}; last error: {e}"),
        None => format!("{what} after {after:?}"),
    })
}

pub(super) fn no_answer(what: &str) -> Error {
    Error::Protocol(format!("the broker's answer left out {what}"))
}

pub(super) fn unknown_topic(topic: &str) -> Error {
    Error::kafka(
        ErrorCode::UnknownTopicOrPartition.code(),
        Some(&format!("unknown topic {topic}")),
    )
}

pub(super) fn api_name<R: Request>() -> String {
    strom_protocol::messages::ApiKey::try_from(R::KEY)
        .map_or_else(|()| format!("API {}", R::KEY), |k| format!("{k:?}"))
}

pub(super) fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_owned())
}

pub(super) fn topic_name(s: &str) -> TopicName {
    TopicName(str_bytes(s))
}

/// A leader epoch; -1 is none.
pub(super) fn epoch(epoch: i32) -> Option<i32> {
    (epoch >= 0).then_some(epoch)
}

/// `items` grouped by topic, in topic then item order.
pub(super) fn by_topic<'a, V>(
    items: &'a [TopicPartition],
    value: impl Fn(&'a TopicPartition) -> V,
) -> BTreeMap<&'a str, Vec<V>> {
    let mut topics: BTreeMap<&str, Vec<V>> = BTreeMap::new();
    for tp in items {
        topics.entry(tp.topic.as_str()).or_default().push(value(tp));
    }
    topics
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ClientConfig, NetworkConfig};

    #[test]
    pub(super) fn a_leader_not_knowing_a_topic_is_asked_again() {
        let config: ClientConfig = [("bootstrap.servers", "127.0.0.1:1")].into_iter().collect();
        let cluster = Cluster::new(NetworkConfig::from_config(&config).unwrap());
        let mut round: Round<i32, ()> = Round::new([1, 2, 3]);
        round.settle_from_leader(&cluster, 1, Err(unknown_topic("t")));
        round.settle(&cluster, 2, Err(unknown_topic("t")));
        round.settle(&cluster, 3, Ok(()));
        assert_eq!(round.pending, BTreeSet::from([1]));
        assert_eq!(
            round.done[&2].as_ref().unwrap_err().code(),
            Some(ErrorCode::UnknownTopicOrPartition)
        );
        round.time_out("ListOffsets", Duration::from_millis(5));
        assert!(matches!(&round.done[&1], Err(Error::Timeout(m)) if m.contains("unknown topic t")));
    }
}
