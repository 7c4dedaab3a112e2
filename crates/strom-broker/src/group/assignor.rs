//! KIP-848 server-side partition assignors: the broker, not a client,
//! decides which member of a consumer group reads which partition.
//!
//! The coordinator calls [`Assignor::assign`] with every member's
//! subscription and current assignment and with the metadata of the topics,
//! and gets back the target assignment. Both assignors promise:
//!
//! - an entry for every member, empty when it gets nothing;
//! - every partition of every subscribed topic goes to exactly one member,
//!   and only to a member subscribed to that topic;
//! - subscriptions to topics missing from the metadata, negative partition
//!   counts (read as 0), and current partitions that no longer exist or whose
//!   topic the member left are ignored; a partition two members both claim
//!   stays with one of them (the first by member id);
//! - the same input gives the same output: members, topics and partitions are
//!   visited in sorted order, never in hash order;
//! - feeding an assignment back in as the current one gives it back
//!   unchanged, so a group whose membership and metadata are steady sees no
//!   revocations;
//! - no panic on any input, and time near-linear in the number of partitions.
//!
//! Neither uses [`MemberSpec::rack`]: Kafka took the rack-aware code out of
//! its server-side assignors until it performs better (KAFKA-16694, 3.8),
//! and [`TopicMetadata`] carries no replica racks to match members against.
//!
//! # Uniform
//!
//! Kafka's `UniformAssignor` balances first and keeps partitions where they
//! are second. We do it in three steps, for homogeneous and heterogeneous
//! subscriptions alike:
//!
//! 1. **Keep**: every member keeps the current partitions it may still own.
//! 2. **Hand out**: the partitions nobody kept go one by one to the least
//!    loaded subscriber of their topic; topics with the most partitions per
//!    subscriber go first, as in Kafka's heterogeneous builder.
//! 3. **Balance**: while a member `a` holds at least two partitions more than
//!    a member `b` it can reach, shift one partition along the shortest chain
//!    `a -> x1 -> ... -> b`, where each step hands a partition of some topic
//!    to a member subscribed to it. Only the two ends change size, so the
//!    others keep their load.
//!
//! An assignment with no such chain left minimises the sum of squared member
//! loads, and with it the largest load (Harvey et al., "Semi-matchings for
//! bipartite graphs and load balancing", 2003): when all members share one
//! subscription every chain is a single step and loads differ by at most one;
//! with different subscriptions we reach the best balance the subscriptions
//! allow, where Kafka's single-partition moves may stop short of it.
//!
//! When a member gives a partition away it gives one it got in this run
//! before one it owned already, so only partitions that have to move are
//! revoked. With equal subscriptions the moves only ever go from the largest
//! member down, and a member that joins a balanced group takes the fewest
//! partitions balance allows; a member that leaves only frees its own.
//!
//! # Range
//!
//! Kafka's server-side `RangeAssignor`: per topic, the `n` subscribed members
//! in member id order get contiguous ranges and the first `partitions % n`
//! get one partition extra, so the members of topics with equal partition
//! counts get equal partition numbers, which joins of co-partitioned topics
//! need. It is sticky as Kafka's is: a member keeps its lowest current
//! partitions up to its share (its share plus the extra while extras last),
//! and the partitions left over fill the members that are short, in order.
//!
//! To keep the co-partitioning promise even when current assignments
//! disagree across topics, we decide once per *class* of topics with the
//! same partition count and the same subscribers and give every topic of
//! the class the same answer; partition `p` of the class counts as held by
//! the member that holds `p` in the most of its topics.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use strom_protocol::messages::Uuid;

/// A member of a consumer group, as the coordinator names it.
pub type MemberId = String;

/// What an assignor needs to know about a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicMetadata {
    /// The topic's id; the key it sits under in the topic map is what
    /// subscriptions name.
    pub id: Uuid,
    /// The topic's name, for logs; the assignors go by id.
    pub name: String,
    /// The number of partitions; a negative count is read as none.
    pub partitions: i32,
}

/// One member as the assignor sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberSpec {
    /// The ids of the topics the member subscribes to.
    pub subscribed: BTreeSet<Uuid>,
    /// The partitions the member holds now, by topic id: what stickiness
    /// tries to keep.
    pub current: BTreeMap<Uuid, BTreeSet<i32>>,
    /// The member's rack (`client.rack`); not used by the assignors yet.
    pub rack: Option<String>,
}

/// The target assignment: every member's partitions, by topic id.
pub type Assignment = BTreeMap<MemberId, BTreeMap<Uuid, BTreeSet<i32>>>;

pub use crate::config::Assignor;

impl Assignor {
    /// Computes the target assignment of `members` over `topics`: see the
    /// module documentation for what each assignor promises.
    pub fn assign(
        self,
        members: &BTreeMap<MemberId, MemberSpec>,
        topics: &BTreeMap<Uuid, TopicMetadata>,
    ) -> Assignment {
        let group = Group::new(members, topics);
        match self {
            Self::Uniform => assign_uniform(&group),
            Self::Range => assign_range(&group),
        }
    }
}

/// A topic that exists, has partitions and has subscribers: the only kind
/// an assignor has work for.
#[derive(Debug)]
struct Topic {
    id: Uuid,
    /// At least 1.
    partitions: i32,
    /// Indexes into [`Group::members`], ascending, so in member id order.
    subscribers: Vec<usize>,
}

impl Topic {
    /// The partition count as a length; never fails, as it is positive.
    fn len(&self) -> usize {
        usize::try_from(self.partitions).unwrap_or(0)
    }
}

/// The input with members and topics numbered densely, in sorted order.
#[derive(Debug)]
struct Group<'a> {
    members: Vec<(&'a MemberId, &'a MemberSpec)>,
    topics: Vec<Topic>,
}

impl<'a> Group<'a> {
    fn new(
        members: &'a BTreeMap<MemberId, MemberSpec>,
        topics: &BTreeMap<Uuid, TopicMetadata>,
    ) -> Self {
        let members: Vec<(&MemberId, &MemberSpec)> = members.iter().collect();
        let mut index = BTreeMap::new();
        let mut list = Vec::new();
        for (id, metadata) in topics {
            if metadata.partitions > 0 {
                index.insert(*id, list.len());
                list.push(Topic {
                    id: *id,
                    partitions: metadata.partitions,
                    subscribers: Vec::new(),
                });
            }
        }
        for (m, (_, spec)) in members.iter().enumerate() {
            for topic_id in &spec.subscribed {
                if let Some(topic) = index.get(topic_id).and_then(|&t| list.get_mut(t)) {
                    topic.subscribers.push(m);
                }
            }
        }
        list.retain(|topic| !topic.subscribers.is_empty());
        Self {
            members,
            topics: list,
        }
    }

    /// The partitions of topic `t` that member `m` holds now and that exist,
    /// ascending.
    fn current(&self, m: usize, t: usize) -> impl Iterator<Item = i32> + '_ {
        let topic = &self.topics[t];
        self.members[m]
            .1
            .current
            .get(&topic.id)
            .into_iter()
            .flatten()
            .copied()
            .filter(move |&p| (0..topic.partitions).contains(&p))
    }

    /// Whether member `m` holds partition `p` of topic `t` now.
    fn holds_now(&self, m: usize, t: usize, p: i32) -> bool {
        self.members[m]
            .1
            .current
            .get(&self.topics[t].id)
            .is_some_and(|partitions| partitions.contains(&p))
    }

    /// Builds the answer from `partitions_of(m)`: member `m`'s partitions as
    /// (topic index, partition) pairs.
    fn assignment<I>(&self, mut partitions_of: impl FnMut(usize) -> I) -> Assignment
    where
        I: IntoIterator<Item = (usize, i32)>,
    {
        let mut out = Assignment::new();
        for (m, (member_id, _)) in self.members.iter().enumerate() {
            let mut topics: BTreeMap<Uuid, BTreeSet<i32>> = BTreeMap::new();
            for (t, p) in partitions_of(m) {
                topics.entry(self.topics[t].id).or_default().insert(p);
            }
            out.insert((*member_id).clone(), topics);
        }
        out
    }
}

/// A slot of topic `t`'s `taken` table for partition `p`, if `p` exists.
fn slot(taken: &mut [Vec<bool>], t: usize, p: i32) -> Option<&mut bool> {
    let p = usize::try_from(p).ok()?;
    taken.get_mut(t)?.get_mut(p)
}

/// The partitions of one topic that one member gets in a uniform assignment.
#[derive(Debug, Default)]
struct Held {
    /// Partitions the member holds now, so moving them revokes them.
    sticky: Vec<i32>,
    /// Partitions it gets in this run, which it can give away for free.
    fresh: Vec<i32>,
}

impl Held {
    fn is_empty(&self) -> bool {
        self.sticky.is_empty() && self.fresh.is_empty()
    }

    /// Picks the partition to give away: the most recent fresh one, or the
    /// highest sticky one.
    fn take(&mut self) -> Option<i32> {
        self.fresh.pop().or_else(|| self.sticky.pop())
    }
}

/// The uniform assignment as it is being built.
#[derive(Debug)]
struct Uniform<'g, 'a> {
    group: &'g Group<'a>,
    /// Per member: its partitions by topic index; no empty entries, since an
    /// entry is an edge the balancing search follows.
    held: Vec<BTreeMap<usize, Held>>,
    /// Per member: how many partitions it holds.
    load: Vec<usize>,
}

fn assign_uniform(group: &Group<'_>) -> Assignment {
    let mut uniform = Uniform {
        group,
        held: group.members.iter().map(|_| BTreeMap::new()).collect(),
        load: vec![0; group.members.len()],
    };
    uniform.keep_and_hand_out();
    uniform.balance();
    let Uniform { held, .. } = uniform;
    group.assignment(|m| {
        held[m]
            .iter()
            .flat_map(|(&t, h)| h.sticky.iter().chain(&h.fresh).map(move |&p| (t, p)))
            .collect::<Vec<_>>()
    })
}

impl Uniform<'_, '_> {
    /// Steps 1 and 2: members keep what they may, then the rest goes to the
    /// least loaded subscribers.
    fn keep_and_hand_out(&mut self) {
        let topics = &self.group.topics;
        let mut taken: Vec<Vec<bool>> = topics
            .iter()
            .map(|topic| vec![false; topic.len()])
            .collect();
        for (t, topic) in topics.iter().enumerate() {
            for &m in &topic.subscribers {
                for p in self.group.current(m, t) {
                    if let Some(taken) = slot(&mut taken, t, p).filter(|taken| !**taken) {
                        *taken = true;
                        self.held[m].entry(t).or_default().sticky.push(p);
                        self.load[m] += 1;
                    }
                }
            }
        }

        // Kafka's heterogeneous builder hands out the topics with the most
        // partitions per subscriber first: they are the hardest to spread.
        let mut order: Vec<usize> = (0..topics.len()).collect();
        order.sort_by(|&a, &b| {
            let (a, b) = (&topics[a], &topics[b]);
            let per_subscriber = |x: &Topic, y: &Topic| {
                u128::from(x.partitions.unsigned_abs()) * y.subscribers.len() as u128
            };
            per_subscriber(b, a)
                .cmp(&per_subscriber(a, b))
                .then(a.subscribers.len().cmp(&b.subscribers.len()))
        });
        for t in order {
            let topic = &topics[t];
            let free: Vec<i32> = taken[t]
                .iter()
                .zip(0..topic.partitions)
                .filter(|(taken, _)| !**taken)
                .map(|(_, p)| p)
                .collect();
            if free.is_empty() {
                continue;
            }
            let mut by_load: BTreeSet<(usize, usize)> = topic
                .subscribers
                .iter()
                .map(|&m| (self.load[m], m))
                .collect();
            for p in free {
                let Some((load, m)) = by_load.pop_first() else {
                    break;
                };
                self.held[m].entry(t).or_default().fresh.push(p);
                self.load[m] = load + 1;
                by_load.insert((load + 1, m));
            }
        }
    }

    /// Step 3: shift partitions along chains from the most loaded members
    /// until no member can reach one two partitions lighter.
    ///
    /// Members are searched from the most loaded down. A search from `a`
    /// that finds nothing marks every member it reached as settled: they
    /// hold at least `load(a) - 1` each, and as later sources are no heavier
    /// than `a`, no later chain can end among them, so their holdings, and
    /// hence their reach, never change again.
    fn balance(&mut self) {
        let members = self.group.members.len();
        let mut settled = vec![false; members];
        let mut queue: BTreeSet<(Reverse<usize>, usize)> =
            (0..members).map(|m| (Reverse(self.load[m]), m)).collect();
        let mut search = Search::new(members, self.group.topics.len());

        // Every shift lowers the sum of squared loads by at least 2, and every
        // fruitless search settles at least one member.
        let squares: u128 = self.load.iter().map(|&l| (l as u128) * (l as u128)).sum();
        let rounds_max = squares / 2 + members as u128 + 1;
        let mut rounds: u128 = 0;

        while let Some(&(Reverse(load), source)) = queue.first() {
            rounds += 1;
            debug_assert!(
                rounds <= rounds_max,
                "uniform balancing ran past {rounds_max} rounds"
            );
            if rounds > rounds_max {
                break;
            }
            let found = search.run(self, &settled, source);
            match found.and_then(|target| Some((target, search.chain(source, target)?))) {
                Some((target, chain)) => {
                    queue.remove(&(Reverse(load), source));
                    queue.remove(&(Reverse(self.load[target]), target));
                    for (giver, t, receiver) in chain {
                        self.shift(giver, t, receiver);
                    }
                    queue.insert((Reverse(self.load[source]), source));
                    queue.insert((Reverse(self.load[target]), target));
                }
                None => {
                    for &m in &search.reached {
                        settled[m] = true;
                        queue.remove(&(Reverse(self.load[m]), m));
                    }
                }
            }
            search.reset();
        }
    }

    /// Moves one partition of topic `t` from `giver` to `receiver`.
    fn shift(&mut self, giver: usize, t: usize, receiver: usize) {
        let given = self.held[giver].get_mut(&t).and_then(Held::take);
        debug_assert!(
            given.is_some(),
            "member {giver} was to give a partition of topic {t} it lacks"
        );
        let Some(p) = given else { return };
        if self.held[giver].get(&t).is_some_and(Held::is_empty) {
            self.held[giver].remove(&t);
        }
        self.load[giver] -= 1;
        let held = self.held[receiver].entry(t).or_default();
        if self.group.holds_now(receiver, t, p) {
            held.sticky.push(p);
        } else {
            held.fresh.push(p);
        }
        self.load[receiver] += 1;
    }
}

/// A breadth-first search over members and topics: member `x` leads to
/// topic `t` when `x` holds a partition of `t`, and `t` leads to every
/// member subscribed to it. Its buffers are reused across searches.
#[derive(Debug)]
struct Search {
    /// Per member: the topic it was reached through.
    member_via: Vec<Option<usize>>,
    /// Per topic: the member it was reached from.
    topic_via: Vec<Option<usize>>,
    /// The members reached by the last search, the source first.
    reached: Vec<usize>,
    /// The topics reached by the last search.
    topics_reached: Vec<usize>,
    queue: VecDeque<usize>,
}

impl Search {
    fn new(members: usize, topics: usize) -> Self {
        Self {
            member_via: vec![None; members],
            topic_via: vec![None; topics],
            reached: Vec::new(),
            topics_reached: Vec::new(),
            queue: VecDeque::new(),
        }
    }

    /// Looks for the nearest unsettled member two partitions lighter than
    /// `source`.
    fn run(&mut self, uniform: &Uniform<'_, '_>, settled: &[bool], source: usize) -> Option<usize> {
        self.reached.push(source);
        let load_max = uniform.load[source].checked_sub(2)?;
        self.queue.push_back(source);
        while let Some(x) = self.queue.pop_front() {
            for &t in uniform.held[x].keys() {
                if self.topic_via[t].is_some() {
                    continue;
                }
                self.topic_via[t] = Some(x);
                self.topics_reached.push(t);
                for &y in &uniform.group.topics[t].subscribers {
                    if settled[y] || y == source || self.member_via[y].is_some() {
                        continue;
                    }
                    self.member_via[y] = Some(t);
                    self.reached.push(y);
                    if uniform.load[y] <= load_max {
                        return Some(y);
                    }
                    self.queue.push_back(y);
                }
            }
        }
        None
    }

    /// The steps (giver, topic, receiver) from `source` to `target` that the
    /// last search found; `None` if the search left no such chain, which
    /// would be a bug.
    fn chain(&self, source: usize, target: usize) -> Option<Vec<(usize, usize, usize)>> {
        let mut steps = Vec::new();
        let mut receiver = target;
        while receiver != source && steps.len() < self.reached.len() {
            let t = self.member_via[receiver]?;
            let giver = self.topic_via[t]?;
            steps.push((giver, t, receiver));
            receiver = giver;
        }
        debug_assert_eq!(
            receiver, source,
            "the search left no chain to member {target}"
        );
        (receiver == source).then_some(steps)
    }

    fn reset(&mut self) {
        for m in self.reached.drain(..) {
            self.member_via[m] = None;
        }
        for t in self.topics_reached.drain(..) {
            self.topic_via[t] = None;
        }
        self.queue.clear();
    }
}

fn assign_range(group: &Group<'_>) -> Assignment {
    // Topics with the same partition count and subscribers form a class that
    // gets one answer, which keeps co-partitioned topics aligned.
    let mut classes: BTreeMap<(i32, &[usize]), Vec<usize>> = BTreeMap::new();
    for (t, topic) in group.topics.iter().enumerate() {
        classes
            .entry((topic.partitions, topic.subscribers.as_slice()))
            .or_default()
            .push(t);
    }
    let mut partitions_of: Vec<Vec<(usize, i32)>> = vec![Vec::new(); group.members.len()];
    for ((partitions, subscribers), topics) in classes {
        let shares = range_shares(group, &topics, partitions, subscribers);
        for (&m, share) in subscribers.iter().zip(shares) {
            for &t in &topics {
                partitions_of[m].extend(share.iter().map(|&p| (t, p)));
            }
        }
    }
    group.assignment(|m| std::mem::take(&mut partitions_of[m]))
}

/// The partitions of a class of `topics` (with `partitions` partitions
/// each, at least 1) that each of `subscribers` (at least one) gets, in the
/// order of `subscribers`.
fn range_shares(
    group: &Group<'_>,
    topics: &[usize],
    partitions: i32,
    subscribers: &[usize],
) -> Vec<Vec<i32>> {
    let k = subscribers.len();
    let n = usize::try_from(partitions).unwrap_or(0);
    let mut shares: Vec<Vec<i32>> = vec![Vec::new(); k];
    if k == 0 {
        return shares;
    }

    // Who holds what now: a partition number goes to the subscriber holding
    // it in the most topics of the class, the first by member id on a tie.
    let mut claims: Vec<(i32, usize)> = Vec::new();
    for &t in topics {
        for (i, &m) in subscribers.iter().enumerate() {
            claims.extend(group.current(m, t).map(|p| (p, i)));
        }
    }
    claims.sort_unstable();
    let mut held: Vec<Vec<i32>> = vec![Vec::new(); k];
    for same_partition in claims.chunk_by(|a, b| a.0 == b.0) {
        let holder = same_partition
            .chunk_by(|a, b| a.1 == b.1)
            .filter_map(|votes| votes.first().map(|&(p, i)| (votes.len(), Reverse(i), p)))
            .max();
        if let Some((_, Reverse(i), p)) = holder {
            held[i].push(p);
        }
    }

    let quota = n / k;
    let mut extras = n % k;
    let mut taken = vec![false; n];
    let mut short = vec![0usize; k];
    let mut has_extra = vec![false; k];
    for (i, held) in held.iter().enumerate() {
        // `held` is ascending: keep the lowest, as Kafka does.
        let mut keep = held.len().min(quota);
        if held.len() > quota && extras > 0 {
            keep += 1;
            extras -= 1;
            has_extra[i] = true;
        }
        short[i] = quota - keep.min(quota);
        for &p in held.iter().take(keep) {
            if let Some(taken) = usize::try_from(p).ok().and_then(|p| taken.get_mut(p)) {
                *taken = true;
            }
            shares[i].push(p);
        }
    }
    let mut free = taken
        .iter()
        .zip(0..partitions)
        .filter(|(taken, _)| !**taken)
        .map(|(_, p)| p);
    for i in 0..k {
        let mut want = short[i];
        if !has_extra[i] && extras > 0 {
            want += 1;
            extras -= 1;
        }
        shares[i].extend(free.by_ref().take(want));
        shares[i].sort_unstable();
    }
    debug_assert!(
        free.next().is_none(),
        "range left partitions of a class unassigned"
    );
    shares
}

#[cfg(test)]
mod tests {
    use super::*;

    const ASSIGNORS: [Assignor; 2] = [Assignor::Uniform, Assignor::Range];

    type Members = BTreeMap<MemberId, MemberSpec>;
    type Topics = BTreeMap<Uuid, TopicMetadata>;

    fn topic_id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn topics(counts: &[(u128, i32)]) -> Topics {
        counts
            .iter()
            .map(|&(n, partitions)| {
                let id = topic_id(n);
                (
                    id,
                    TopicMetadata {
                        id,
                        name: format!("topic-{n}"),
                        partitions,
                    },
                )
            })
            .collect()
    }

    fn member(subscribed: &[u128]) -> MemberSpec {
        MemberSpec {
            subscribed: subscribed.iter().map(|&n| topic_id(n)).collect(),
            ..MemberSpec::default()
        }
    }

    fn with_current(mut spec: MemberSpec, current: &[(u128, &[i32])]) -> MemberSpec {
        for &(n, partitions) in current {
            spec.current
                .insert(topic_id(n), partitions.iter().copied().collect());
        }
        spec
    }

    fn partitions(out: &Assignment, member: &str, topic: u128) -> Vec<i32> {
        out[member]
            .get(&topic_id(topic))
            .map(|p| p.iter().copied().collect())
            .unwrap_or_default()
    }

    fn load(out: &Assignment, member: &str) -> usize {
        out[member].values().map(BTreeSet::len).sum()
    }

    /// The members with `out` as their current assignment.
    fn feed_back(members: &Members, out: &Assignment) -> Members {
        members
            .iter()
            .map(|(id, spec)| {
                let current = out.get(id).cloned().unwrap_or_default();
                (
                    id.clone(),
                    MemberSpec {
                        current,
                        ..spec.clone()
                    },
                )
            })
            .collect()
    }

    /// The members' current assignments.
    fn current_of(members: &Members) -> Assignment {
        members
            .iter()
            .map(|(id, spec)| (id.clone(), spec.current.clone()))
            .collect()
    }

    /// Partitions `before`'s members lose in `after`, among those still in
    /// the group.
    fn revoked(before: &Assignment, after: &Assignment) -> usize {
        before
            .iter()
            .filter_map(|(id, old)| after.get(id).map(|new| (old, new)))
            .map(|(old, new)| {
                old.iter()
                    .map(|(t, ps)| {
                        ps.iter()
                            .filter(|p| !new.get(t).is_some_and(|n| n.contains(p)))
                            .count()
                    })
                    .sum::<usize>()
            })
            .sum()
    }

    /// Checks the promises every assignment keeps: an entry per member,
    /// every partition of every subscribed topic to exactly one subscriber.
    fn check_valid(members: &Members, topics: &Topics, out: &Assignment) {
        assert_eq!(
            out.keys().collect::<Vec<_>>(),
            members.keys().collect::<Vec<_>>()
        );
        let mut owner: BTreeMap<(Uuid, i32), &str> = BTreeMap::new();
        for (id, assigned) in out {
            for (t, ps) in assigned {
                assert!(
                    members[id].subscribed.contains(t),
                    "{id} got unsubscribed topic {t}"
                );
                assert!(!ps.is_empty(), "{id} got an empty entry for {t}");
                let count = topics.get(t).map_or(0, |m| m.partitions);
                for &p in ps {
                    assert!(
                        (0..count).contains(&p),
                        "{id} got {t}-{p}, which does not exist"
                    );
                    if let Some(other) = owner.insert((*t, p), id) {
                        panic!("{t}-{p} went to both {other} and {id}");
                    }
                }
            }
        }
        for (t, meta) in topics {
            if members.values().any(|s| s.subscribed.contains(t)) {
                for p in 0..meta.partitions {
                    assert!(owner.contains_key(&(*t, p)), "{t}-{p} went to nobody");
                }
            }
        }
    }

    /// Checks that no member of a uniform assignment can pass a partition
    /// along a chain to one that holds two fewer: the balance is optimal.
    fn check_no_improving_chain(members: &Members, topics: &Topics, out: &Assignment) {
        for (source, assigned) in out {
            let mut seen: BTreeSet<&str> = BTreeSet::from([source.as_str()]);
            let mut frontier: Vec<&BTreeMap<Uuid, BTreeSet<i32>>> = vec![assigned];
            while let Some(held) = frontier.pop() {
                for t in held.keys().filter(|t| topics.contains_key(t)) {
                    for (id, spec) in members {
                        if spec.subscribed.contains(t) && seen.insert(id) {
                            assert!(
                                load(out, id) + 2 > load(out, source),
                                "{source} ({}) could pass a partition to {id} ({})",
                                load(out, source),
                                load(out, id)
                            );
                            frontier.push(&out[id]);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn names_round_trip() {
        for assignor in ASSIGNORS {
            assert_eq!(Assignor::from_name(assignor.name()), Some(assignor));
        }
        assert_eq!(Assignor::DEFAULT, Assignor::Uniform);
        assert_eq!(Assignor::from_name("sticky"), None);
        assert_eq!(Assignor::from_name("Uniform"), None);
    }

    #[test]
    fn empty_group_gets_empty_assignment() {
        for assignor in ASSIGNORS {
            assert!(
                assignor
                    .assign(&Members::new(), &topics(&[(1, 3)]))
                    .is_empty()
            );
        }
    }

    #[test]
    fn every_member_gets_an_entry() {
        let members = Members::from([
            ("a".into(), member(&[])),
            ("b".into(), member(&[1])),
            ("c".into(), member(&[9])),
        ]);
        let topics = topics(&[(1, 0), (2, 4)]);
        for assignor in ASSIGNORS {
            let out = assignor.assign(&members, &topics);
            check_valid(&members, &topics, &out);
            assert!(out.values().all(BTreeMap::is_empty), "{out:?}");
        }
    }

    #[test]
    fn bad_input_is_ignored() {
        let spec = with_current(
            member(&[1, 2, 7]),
            &[(1, &[-1, 0, 5, 99]), (2, &[0]), (3, &[0]), (7, &[0])],
        );
        let members = Members::from([("a".into(), spec), ("b".into(), member(&[1, 2]))]);
        let topics = topics(&[(1, 6), (2, -3), (3, 2)]);
        for assignor in ASSIGNORS {
            let out = assignor.assign(&members, &topics);
            check_valid(&members, &topics, &out);
            assert_eq!(out["a"].len() + out["b"].len(), 2, "{out:?}");
        }
    }

    #[test]
    fn uniform_spreads_a_new_group_evenly() {
        let members: Members = (0..3).map(|i| (format!("m{i}"), member(&[1, 2]))).collect();
        let topics = topics(&[(1, 5), (2, 6)]);
        let out = Assignor::Uniform.assign(&members, &topics);
        check_valid(&members, &topics, &out);
        let loads: Vec<usize> = members.keys().map(|m| load(&out, m)).collect();
        assert_eq!(loads.iter().sum::<usize>(), 11);
        assert!(
            loads.iter().max() <= Some(&4) && loads.iter().min() >= Some(&3),
            "{loads:?}"
        );
    }

    #[test]
    fn uniform_keeps_a_balanced_assignment() {
        let members = Members::from([
            (
                "a".into(),
                with_current(member(&[1, 2]), &[(1, &[2, 3]), (2, &[0])]),
            ),
            (
                "b".into(),
                with_current(member(&[1, 2]), &[(1, &[0]), (2, &[1, 2])]),
            ),
            (
                "c".into(),
                with_current(member(&[1, 2]), &[(1, &[1]), (2, &[3])]),
            ),
        ]);
        let topics = topics(&[(1, 4), (2, 4)]);
        let out = Assignor::Uniform.assign(&members, &topics);
        for (id, spec) in &members {
            assert_eq!(out[id], spec.current, "{id}");
        }
    }

    #[test]
    fn uniform_gives_a_doubly_claimed_partition_to_one() {
        let members = Members::from([
            ("a".into(), with_current(member(&[1]), &[(1, &[0, 1])])),
            ("b".into(), with_current(member(&[1]), &[(1, &[1, 2])])),
        ]);
        let topics = topics(&[(1, 4)]);
        let out = Assignor::Uniform.assign(&members, &topics);
        check_valid(&members, &topics, &out);
        assert_eq!(partitions(&out, "a", 1), [0, 1]);
        assert_eq!(partitions(&out, "b", 1), [2, 3]);
    }

    #[test]
    fn uniform_join_takes_only_the_surplus() {
        // 10 partitions over a, b: 5 each. With c there are shares 4, 3, 3:
        // one member keeps 4, the other 3, and c gets 1 + 2 = 3.
        let members = Members::from([
            (
                "a".into(),
                with_current(member(&[1]), &[(1, &[0, 1, 2, 3, 4])]),
            ),
            (
                "b".into(),
                with_current(member(&[1]), &[(1, &[5, 6, 7, 8, 9])]),
            ),
            ("c".into(), member(&[1])),
        ]);
        let topics = topics(&[(1, 10)]);
        let out = Assignor::Uniform.assign(&members, &topics);
        check_valid(&members, &topics, &out);
        assert_eq!(revoked(&current_of(&members), &out), 3);
        assert_eq!(load(&out, "c"), 3);
    }

    #[test]
    fn uniform_leave_moves_only_the_leavers_partitions() {
        let members = Members::from([
            ("a".into(), with_current(member(&[1]), &[(1, &[0, 1, 2])])),
            ("b".into(), with_current(member(&[1]), &[(1, &[3, 4, 5])])),
        ]);
        let topics = topics(&[(1, 9)]);
        let out = Assignor::Uniform.assign(&members, &topics);
        check_valid(&members, &topics, &out);
        assert_eq!(revoked(&current_of(&members), &out), 0);
        assert_eq!(["a", "b"].map(|m| load(&out, m)), [5, 4]);
    }

    #[test]
    fn uniform_balances_through_a_chain() {
        // a can only take topic 1, c only topic 2, b both. Loads 3, 2, 1 have
        // no single improving move; the chain a -> b -> c makes them 2, 2, 2.
        let members = Members::from([
            ("a".into(), with_current(member(&[1]), &[(1, &[0, 1, 2])])),
            ("b".into(), with_current(member(&[1, 2]), &[(2, &[0, 1])])),
            ("c".into(), with_current(member(&[2]), &[(2, &[2])])),
        ]);
        let topics = topics(&[(1, 3), (2, 3)]);
        let out = Assignor::Uniform.assign(&members, &topics);
        check_valid(&members, &topics, &out);
        assert_eq!(["a", "b", "c"].map(|m| load(&out, m)), [2, 2, 2]);
        assert_eq!(revoked(&current_of(&members), &out), 2);
    }

    #[test]
    fn uniform_chains_pass_on_fresh_partitions_first() {
        // b sits between a (only topic 1) and c (only topic 2). To pass a's
        // surplus on to c, b gives away the topic 2 partitions it just got,
        // not partition 0, which it holds already.
        let members = Members::from([
            (
                "a".into(),
                with_current(member(&[1]), &[(1, &[0, 1, 2, 3, 4, 5])]),
            ),
            ("b".into(), with_current(member(&[1, 2]), &[(2, &[0])])),
            ("c".into(), with_current(member(&[2]), &[(2, &[1])])),
        ]);
        let topics = topics(&[(1, 6), (2, 4)]);
        let out = Assignor::Uniform.assign(&members, &topics);
        check_valid(&members, &topics, &out);
        check_no_improving_chain(&members, &topics, &out);
        let mut loads = ["a", "b", "c"].map(|m| load(&out, m));
        loads.sort_unstable();
        assert_eq!(loads, [3, 3, 4]);
        assert_eq!(revoked(&current_of(&members), &out), 6 - load(&out, "a"));
    }

    #[test]
    fn uniform_heterogeneous_is_as_balanced_as_subscriptions_allow() {
        // Only a subscribes to topic 1, so it keeps all 6 partitions.
        let members = Members::from([
            ("a".into(), member(&[1, 2])),
            ("b".into(), member(&[2, 3])),
            ("c".into(), member(&[3])),
        ]);
        let topics = topics(&[(1, 6), (2, 4), (3, 2)]);
        let out = Assignor::Uniform.assign(&members, &topics);
        check_valid(&members, &topics, &out);
        assert_eq!(["a", "b", "c"].map(|m| load(&out, m)), [6, 4, 2]);
        check_no_improving_chain(&members, &topics, &out);
    }

    #[test]
    fn range_gives_contiguous_ranges_in_member_order() {
        let members: Members = ["c", "a", "b"]
            .iter()
            .map(|m| (m.to_string(), member(&[1])))
            .collect();
        let topics = topics(&[(1, 7)]);
        let out = Assignor::Range.assign(&members, &topics);
        check_valid(&members, &topics, &out);
        assert_eq!(partitions(&out, "a", 1), [0, 1, 2]);
        assert_eq!(partitions(&out, "b", 1), [3, 4]);
        assert_eq!(partitions(&out, "c", 1), [5, 6]);
    }

    #[test]
    fn range_splits_each_topic_among_its_own_subscribers() {
        let members = Members::from([
            ("a".into(), member(&[1, 2])),
            ("b".into(), member(&[1])),
            ("c".into(), member(&[2])),
        ]);
        let topics = topics(&[(1, 3), (2, 4)]);
        let out = Assignor::Range.assign(&members, &topics);
        check_valid(&members, &topics, &out);
        assert_eq!(partitions(&out, "a", 1), [0, 1]);
        assert_eq!(partitions(&out, "b", 1), [2]);
        assert_eq!(partitions(&out, "a", 2), [0, 1]);
        assert_eq!(partitions(&out, "c", 2), [2, 3]);
    }

    #[test]
    fn range_co_partitions_even_when_current_disagrees() {
        let members = Members::from([
            (
                "a".into(),
                with_current(
                    member(&[1, 2, 3]),
                    &[(1, &[0, 1]), (2, &[2, 3]), (3, &[0, 1])],
                ),
            ),
            (
                "b".into(),
                with_current(
                    member(&[1, 2, 3]),
                    &[(1, &[2, 3]), (2, &[0, 1]), (3, &[2, 3])],
                ),
            ),
        ]);
        let topics = topics(&[(1, 4), (2, 4), (3, 4)]);
        let out = Assignor::Range.assign(&members, &topics);
        check_valid(&members, &topics, &out);
        // Two topics of three say a holds 0 and 1.
        for t in 1..=3 {
            assert_eq!(partitions(&out, "a", t), [0, 1], "topic {t}");
            assert_eq!(partitions(&out, "b", t), [2, 3], "topic {t}");
        }
    }

    #[test]
    fn range_is_sticky_when_a_member_joins() {
        let members = Members::from([
            (
                "a".into(),
                with_current(member(&[1]), &[(1, &[0, 1, 2, 3])]),
            ),
            ("b".into(), member(&[1])),
            (
                "c".into(),
                with_current(member(&[1]), &[(1, &[4, 5, 6, 7])]),
            ),
        ]);
        let topics = topics(&[(1, 8)]);
        let out = Assignor::Range.assign(&members, &topics);
        check_valid(&members, &topics, &out);
        // Shares 3, 3, 2: a keeps 0..3 (with the extra), c keeps 4..7 up to
        // its share plus the last extra, b gets the rest.
        assert_eq!(partitions(&out, "a", 1), [0, 1, 2]);
        assert_eq!(partitions(&out, "c", 1), [4, 5, 6]);
        assert_eq!(partitions(&out, "b", 1), [3, 7]);
        let again = Assignor::Range.assign(&feed_back(&members, &out), &topics);
        assert_eq!(again, out);
    }

    /// xorshift64*: a small deterministic generator for property tests.
    struct Rng(u64);

    impl Rng {
        fn next_u64(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        /// A number in `0..n`; `n` must be positive.
        fn below(&mut self, n: u64) -> u64 {
            self.next_u64() % n
        }

        fn chance(&mut self, percent: u64) -> bool {
            self.below(100) < percent
        }

        fn int(&mut self, range: std::ops::Range<i32>) -> i32 {
            let span = u64::try_from(range.end - range.start).unwrap();
            range.start + i32::try_from(self.below(span)).unwrap()
        }
    }

    /// A random group: topics 1..=6 may exist (some with bad counts), topic
    /// ids up to 7 may be subscribed, and current assignments are noisy.
    fn random_group(rng: &mut Rng, homogeneous: bool) -> (Members, Topics) {
        let mut topics = Topics::new();
        for n in 1..=6u128 {
            if rng.chance(80) {
                let partitions = if rng.chance(5) { -1 } else { rng.int(0..25) };
                let id = topic_id(n);
                let name = format!("topic-{n}");
                topics.insert(
                    id,
                    TopicMetadata {
                        id,
                        name,
                        partitions,
                    },
                );
            }
        }
        let pick = |rng: &mut Rng| -> BTreeSet<Uuid> {
            (1..=7u128)
                .filter(|_| rng.chance(45))
                .map(topic_id)
                .collect()
        };
        let shared = pick(rng);
        let count = rng.below(12);
        let members = (0..count)
            .map(|_| {
                let subscribed = if homogeneous {
                    shared.clone()
                } else {
                    pick(rng)
                };
                let mut current: BTreeMap<Uuid, BTreeSet<i32>> = BTreeMap::new();
                for n in 1..=7u128 {
                    if rng.chance(40) {
                        let ps = (0..rng.below(8)).map(|_| rng.int(-2..27)).collect();
                        current.insert(topic_id(n), ps);
                    }
                }
                let id = format!("member-{:04}", rng.below(10_000));
                (
                    id,
                    MemberSpec {
                        subscribed,
                        current,
                        rack: None,
                    },
                )
            })
            .collect();
        (members, topics)
    }

    /// The fewest partitions the members of a homogeneous group must lose
    /// to reach a balanced assignment when they hold `loads` of `total`.
    fn fewest_revocations(loads: &[usize], total: usize) -> usize {
        if loads.is_empty() {
            return 0;
        }
        let (quota, extras) = (total / loads.len(), total % loads.len());
        let surplus: usize = loads.iter().map(|&l| l.saturating_sub(quota)).sum();
        let above = loads.iter().filter(|&&l| l > quota).count();
        surplus - extras.min(above)
    }

    fn subscribed_partitions(spec: &MemberSpec, topics: &Topics) -> usize {
        spec.subscribed
            .iter()
            .filter_map(|t| topics.get(t))
            .map(|t| usize::try_from(t.partitions.max(0)).unwrap())
            .sum()
    }

    #[test]
    fn random_groups_keep_every_promise() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for case in 0..3000 {
            let homogeneous = case % 2 == 0;
            let (members, topics) = random_group(&mut rng, homogeneous);
            for assignor in ASSIGNORS {
                let out = assignor.assign(&members, &topics);
                check_valid(&members, &topics, &out);
                assert_eq!(
                    assignor.assign(&members, &topics),
                    out,
                    "case {case}: not deterministic"
                );
                let steady = feed_back(&members, &out);
                assert_eq!(
                    assignor.assign(&steady, &topics),
                    out,
                    "case {case}: {assignor:?} not stable"
                );
            }
        }
    }

    #[test]
    fn random_groups_uniform_balance() {
        let mut rng = Rng(0x1234_5678_9abc_def1);
        for case in 0..3000 {
            let homogeneous = case % 2 == 0;
            let (members, topics) = random_group(&mut rng, homogeneous);
            let out = Assignor::Uniform.assign(&members, &topics);
            check_no_improving_chain(&members, &topics, &out);
            if homogeneous
                && members
                    .values()
                    .any(|s| subscribed_partitions(s, &topics) > 0)
            {
                let loads: Vec<usize> = members.keys().map(|m| load(&out, m)).collect();
                let (min, max) = (loads.iter().min().unwrap(), loads.iter().max().unwrap());
                assert!(max - min <= 1, "case {case}: loads {loads:?}");
            }
        }
    }

    #[test]
    fn random_groups_uniform_moves_the_fewest_on_join_and_leave() {
        let mut rng = Rng(0xdead_beef_cafe_f00d);
        for case in 0..2000 {
            let (members, topics) = random_group(&mut rng, true);
            let Some(spec) = members.values().next() else {
                continue;
            };
            let total = subscribed_partitions(spec, &topics);
            let steady = Assignor::Uniform.assign(&members, &topics);
            let members = feed_back(&members, &steady);

            let mut joined = members.clone();
            let newcomer = MemberSpec {
                current: BTreeMap::new(),
                ..spec.clone()
            };
            joined.insert("member-new".into(), newcomer);
            let out = Assignor::Uniform.assign(&joined, &topics);
            check_valid(&joined, &topics, &out);
            let mut loads: Vec<usize> = members.keys().map(|m| load(&steady, m)).collect();
            loads.push(0);
            assert_eq!(
                revoked(&steady, &out),
                fewest_revocations(&loads, total),
                "case {case}: join"
            );

            let leaver = members
                .keys()
                .nth(usize::try_from(rng.below(members.len() as u64)).unwrap());
            let mut left = members.clone();
            left.remove(leaver.unwrap());
            let out = Assignor::Uniform.assign(&left, &topics);
            check_valid(&left, &topics, &out);
            let loads: Vec<usize> = left.keys().map(|m| load(&steady, m)).collect();
            assert_eq!(
                revoked(&steady, &out),
                fewest_revocations(&loads, total),
                "case {case}: leave"
            );
        }
    }

    #[test]
    fn random_groups_range_shares_and_co_partitioning() {
        let mut rng = Rng(0x0bad_5eed_0bad_5eed);
        for case in 0..3000 {
            let (members, topics) = random_group(&mut rng, case % 2 == 0);
            let out = Assignor::Range.assign(&members, &topics);
            // Per class of topics (partition count, subscribers): the shares
            // of its first topic.
            let mut classes: BTreeMap<(i32, Vec<&MemberId>), Vec<Vec<i32>>> = BTreeMap::new();
            for (t, meta) in &topics {
                let subscribers: Vec<&MemberId> = members
                    .iter()
                    .filter(|(_, s)| s.subscribed.contains(t))
                    .map(|(m, _)| m)
                    .collect();
                if subscribers.is_empty() || meta.partitions <= 0 {
                    continue;
                }
                let k = subscribers.len();
                let n = usize::try_from(meta.partitions).unwrap();
                let sizes: Vec<usize> = subscribers
                    .iter()
                    .map(|m| out[*m].get(t).map_or(0, BTreeSet::len))
                    .collect();
                assert!(
                    sizes.iter().all(|&s| s == n / k || s == n / k + 1),
                    "case {case}: {sizes:?}"
                );
                assert_eq!(
                    sizes.iter().filter(|&&s| s == n / k + 1).count(),
                    n % k,
                    "case {case}"
                );
                let shares: Vec<Vec<i32>> = subscribers
                    .iter()
                    .map(|m| partitions_of_topic(&out, m, t))
                    .collect();
                let first = classes
                    .entry((meta.partitions, subscribers))
                    .or_insert_with(|| shares.clone());
                assert_eq!(first, &shares, "case {case}: topics of a class differ");
            }
        }
    }

    fn partitions_of_topic(out: &Assignment, member: &str, topic: &Uuid) -> Vec<i32> {
        out[member]
            .get(topic)
            .map(|p| p.iter().copied().collect())
            .unwrap_or_default()
    }

    #[test]
    fn large_group_is_valid_and_balanced() {
        let topics: Topics = topics(&(1..=10).map(|n| (n, 100)).collect::<Vec<_>>());
        let all: Vec<u128> = (1..=10).collect();
        let mut members: Members = (0..100)
            .map(|i| (format!("m{i:03}"), member(&all)))
            .collect();
        let out = Assignor::Uniform.assign(&members, &topics);
        check_valid(&members, &topics, &out);
        assert!(members.keys().all(|m| load(&out, m) == 10));
        members = feed_back(&members, &out);
        members.insert("m100".into(), member(&all));
        let joined = Assignor::Uniform.assign(&members, &topics);
        check_valid(&members, &topics, &joined);
        assert_eq!(
            revoked(&out, &joined),
            fewest_revocations(
                &[10; 100].iter().copied().chain([0]).collect::<Vec<_>>(),
                1000
            )
        );
    }
}
