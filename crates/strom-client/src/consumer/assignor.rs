//! The consumer protocol's partition assignors, run by the group leader in a
//! classic group. [`PartitionAssignor`] is the interface (Kafka's
//! `ConsumerPartitionAssignor`): a name the group agrees on, user data each
//! member sends with its subscription, and the leader's assignment, which
//! may carry user data back. Kafka's `range` and `roundrobin`, which
//! librdkafka and the Java client offer too, are built in, so that a group
//! mixing clients agrees on one.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;

use crate::consumer::TopicPartition;
use crate::error::Result;

/// The built-in assignors' names, in the order a consumer offers them by
/// default (librdkafka's and the Java 2.x client's order).
pub const BUILT_IN: &[&str] = &["range", "roundrobin"];

/// A member's subscription, as its JoinGroup metadata says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subscription {
    pub topics: BTreeSet<String>,
    /// What the member's assignor added ([`PartitionAssignor::user_data`]).
    pub user_data: Option<Bytes>,
    /// The partitions the member owned before this rebalance, when its
    /// client says (consumer protocol v1+; this client writes v0).
    pub owned_partitions: Vec<TopicPartition>,
}

/// What the leader gives a member.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assignment {
    pub partitions: Vec<TopicPartition>,
    pub user_data: Option<Bytes>,
}

impl Assignment {
    pub fn new(partitions: Vec<TopicPartition>) -> Self {
        Self {
            partitions,
            user_data: None,
        }
    }
}

/// A partition assignor for a consumer group: pass one to
/// [`crate::Consumer::with_assignors`].
///
/// Every member of a group must offer an assignor of the name the group
/// uses; the coordinator picks one that all offer, else answers
/// INCONSISTENT_GROUP_PROTOCOL.
pub trait PartitionAssignor: Send + Sync {
    /// The name the group agrees on (the JoinGroup protocol name).
    fn name(&self) -> &str;

    /// User data for this member's subscription to `topics`.
    fn user_data(&self, _topics: &BTreeSet<String>) -> Option<Bytes> {
        None
    }

    /// On the leader: the assignment of each member (by member id) of the
    /// partitions of `partitions` (topic → partition count, for every topic
    /// a member subscribes to that exists). A member left out gets nothing.
    fn assign(
        &self,
        partitions: &BTreeMap<String, i32>,
        subscriptions: &BTreeMap<String, Subscription>,
    ) -> Result<BTreeMap<String, Assignment>>;

    /// On every member, once it has its assignment for `generation`.
    fn on_assignment(&self, _assignment: &Assignment, _generation: i32) {}
}

/// Kafka's `range`: per topic, its subscribers in member id order each take
/// a contiguous range; the first `partitions % subscribers` take one more.
#[derive(Debug, Clone, Copy, Default)]
pub struct RangeAssignor;

/// Kafka's `roundrobin`: every partition of every subscribed topic in
/// (topic, partition) order, dealt to the members in id order, skipping
/// members not subscribed to the partition's topic.
#[derive(Debug, Clone, Copy, Default)]
pub struct RoundRobinAssignor;

impl PartitionAssignor for RangeAssignor {
    fn name(&self) -> &str {
        "range"
    }

    fn assign(
        &self,
        partitions: &BTreeMap<String, i32>,
        subscriptions: &BTreeMap<String, Subscription>,
    ) -> Result<BTreeMap<String, Assignment>> {
        let mut out = empty(subscriptions);
        for (topic, &count) in partitions {
            let subscribers: Vec<&String> = subscriptions
                .iter()
                .filter(|(_, s)| s.topics.contains(topic))
                .map(|(id, _)| id)
                .collect();
            if subscribers.is_empty() {
                continue;
            }
            let n = i32::try_from(subscribers.len()).unwrap_or(i32::MAX);
            let (per, extra) = (count / n, count % n);
            let mut start = 0;
            for (i, member) in subscribers.into_iter().enumerate() {
                let i = i32::try_from(i).unwrap_or(i32::MAX);
                let len = per + i32::from(i < extra);
                let list = &mut out.entry(member.clone()).or_default().partitions;
                list.extend((start..start + len).map(|p| TopicPartition::new(topic, p)));
                start += len;
            }
        }
        Ok(out)
    }
}

impl PartitionAssignor for RoundRobinAssignor {
    fn name(&self) -> &str {
        "roundrobin"
    }

    fn assign(
        &self,
        partitions: &BTreeMap<String, i32>,
        subscriptions: &BTreeMap<String, Subscription>,
    ) -> Result<BTreeMap<String, Assignment>> {
        let mut out = empty(subscriptions);
        let members: Vec<(&String, &Subscription)> = subscriptions.iter().collect();
        if members.is_empty() {
            return Ok(out);
        }
        let mut next = 0usize;
        for (topic, &count) in partitions {
            for partition in 0..count {
                for _ in 0..members.len() {
                    let (id, subscription) = members[next % members.len()];
                    next += 1;
                    if subscription.topics.contains(topic) {
                        out.entry(id.clone())
                            .or_default()
                            .partitions
                            .push(TopicPartition::new(topic, partition));
                        break;
                    }
                }
            }
        }
        Ok(out)
    }
}

/// An empty assignment for every member.
fn empty(subscriptions: &BTreeMap<String, Subscription>) -> BTreeMap<String, Assignment> {
    subscriptions
        .keys()
        .map(|id| (id.clone(), Assignment::default()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(list: &[(&str, &[&str])]) -> BTreeMap<String, Subscription> {
        list.iter()
            .map(|(id, topics)| {
                (
                    (*id).to_owned(),
                    Subscription {
                        topics: topics.iter().map(|t| (*t).to_owned()).collect(),
                        ..Subscription::default()
                    },
                )
            })
            .collect()
    }

    fn names(assignment: &Assignment) -> Vec<String> {
        assignment
            .partitions
            .iter()
            .map(|tp| format!("{}-{}", tp.topic, tp.partition))
            .collect()
    }

    #[test]
    fn range_gives_contiguous_ranges_with_the_remainder_first() {
        let members = members(&[("b", &["t"]), ("a", &["t", "u"])]);
        let partitions = BTreeMap::from([("t".to_owned(), 5), ("u".to_owned(), 2)]);
        let out = RangeAssignor.assign(&partitions, &members).unwrap();
        assert_eq!(names(&out["a"]), ["t-0", "t-1", "t-2", "u-0", "u-1"]);
        assert_eq!(names(&out["b"]), ["t-3", "t-4"]);
    }

    #[test]
    fn roundrobin_deals_partitions_in_turn_to_subscribers() {
        let members = members(&[("a", &["t"]), ("b", &["t", "u"])]);
        let partitions = BTreeMap::from([("t".to_owned(), 3), ("u".to_owned(), 2)]);
        let out = RoundRobinAssignor.assign(&partitions, &members).unwrap();
        assert_eq!(names(&out["a"]), ["t-0", "t-2"]);
        assert_eq!(names(&out["b"]), ["t-1", "u-0", "u-1"]);
        let total: usize = out.values().map(|a| a.partitions.len()).sum();
        assert_eq!(total, 5);
    }

    #[test]
    fn every_member_gets_an_entry_even_with_nothing_to_assign() {
        let members = members(&[("a", &["t"]), ("b", &["gone"])]);
        let partitions = BTreeMap::from([("t".to_owned(), 1)]);
        for assignor in [
            &RangeAssignor as &dyn PartitionAssignor,
            &RoundRobinAssignor,
        ] {
            let out = assignor.assign(&partitions, &members).unwrap();
            assert_eq!(names(&out["a"]), ["t-0"], "{}", assignor.name());
            assert!(out["b"].partitions.is_empty(), "{}", assignor.name());
        }
    }
}
