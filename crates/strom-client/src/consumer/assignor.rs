//! The consumer protocol's partition assignors, run by the group leader in a
//! classic group: Kafka's `range` and `roundrobin`, which librdkafka and the
//! Java client offer too, so that a group mixing them agrees on one.

use std::collections::{BTreeMap, BTreeSet};

use crate::consumer::TopicPartition;

/// The assignors this consumer offers, in order of preference (the
/// librdkafka and Java 2.x default order).
pub(crate) const ASSIGNORS: &[&str] = &["range", "roundrobin"];

/// A member's subscription, as its JoinGroup metadata says.
#[derive(Debug, Clone)]
pub(crate) struct Member {
    pub(crate) id: String,
    pub(crate) topics: BTreeSet<String>,
}

/// Assigns the partitions of `partitions` (topic → partition count) among
/// `members` with the assignor `name`; every member gets an entry.
pub(crate) fn assign(
    name: &str,
    members: &[Member],
    partitions: &BTreeMap<String, i32>,
) -> BTreeMap<String, Vec<TopicPartition>> {
    let mut out: BTreeMap<String, Vec<TopicPartition>> =
        members.iter().map(|m| (m.id.clone(), Vec::new())).collect();
    let mut sorted: Vec<&Member> = members.iter().collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    if name == "roundrobin" {
        // Every partition of every subscribed topic in (topic, partition)
        // order, dealt to the members in id order, skipping members not
        // subscribed to the partition's topic.
        let mut next = 0usize;
        for (topic, &count) in partitions {
            for partition in 0..count {
                for _ in 0..sorted.len() {
                    let member = sorted[next % sorted.len()];
                    next += 1;
                    if member.topics.contains(topic) {
                        out.entry(member.id.clone())
                            .or_default()
                            .push(TopicPartition::new(topic, partition));
                        break;
                    }
                }
            }
        }
        return out;
    }
    // range: per topic, its subscribers in id order each take a contiguous
    // range; the first `count % subscribers` take one more.
    for (topic, &count) in partitions {
        let subscribers: Vec<&Member> = sorted
            .iter()
            .copied()
            .filter(|m| m.topics.contains(topic))
            .collect();
        if subscribers.is_empty() {
            continue;
        }
        let n = i32::try_from(subscribers.len()).unwrap_or(i32::MAX);
        let (per, extra) = (count / n, count % n);
        let mut start = 0;
        for (i, member) in subscribers.iter().enumerate() {
            let i = i32::try_from(i).unwrap_or(i32::MAX);
            let len = per + i32::from(i < extra);
            let list = out.entry(member.id.clone()).or_default();
            list.extend((start..start + len).map(|p| TopicPartition::new(topic, p)));
            start += len;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, topics: &[&str]) -> Member {
        Member {
            id: id.into(),
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
        }
    }

    fn names(list: &[TopicPartition]) -> Vec<String> {
        list.iter()
            .map(|tp| format!("{}-{}", tp.topic, tp.partition))
            .collect()
    }

    #[test]
    fn range_gives_contiguous_ranges_with_the_remainder_first() {
        let members = [member("b", &["t"]), member("a", &["t", "u"])];
        let partitions = BTreeMap::from([("t".to_owned(), 5), ("u".to_owned(), 2)]);
        let out = assign("range", &members, &partitions);
        assert_eq!(names(&out["a"]), ["t-0", "t-1", "t-2", "u-0", "u-1"]);
        assert_eq!(names(&out["b"]), ["t-3", "t-4"]);
    }

    #[test]
    fn roundrobin_deals_partitions_in_turn_to_subscribers() {
        let members = [member("a", &["t"]), member("b", &["t", "u"])];
        let partitions = BTreeMap::from([("t".to_owned(), 3), ("u".to_owned(), 2)]);
        let out = assign("roundrobin", &members, &partitions);
        assert_eq!(names(&out["a"]), ["t-0", "t-2"]);
        assert_eq!(names(&out["b"]), ["t-1", "u-0", "u-1"]);
        let total: usize = out.values().map(Vec::len).sum();
        assert_eq!(total, 5);
    }
}
