//! After a run, the replicas themselves: below both of their high
//! watermarks, two replicas of a partition hold the same batches, byte for
//! byte (a follower copies the leader's batches as they are). Read from the
//! nodes' data directories once the cluster has stopped cleanly (each wrote
//! its `replication-offset-checkpoint`). A divergence here is what a broken
//! truncation leaves, whether or not a reader happened to see it.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use anyhow::{Context, Result};

use crate::checker::{Anomaly, Kind};
use crate::nemesis::parse_checkpoint;

/// Kafka's file of high watermarks in a data directory.
const HIGH_WATERMARKS: &str = "replication-offset-checkpoint";
/// Where a batch's attributes sit: base offset (8), length (4), partition
/// leader epoch (4), magic (1), CRC (4).
const ATTRIBUTES_AT: usize = 21;
/// The attributes' transactional bit.
const TRANSACTIONAL: i16 = 0x10;
/// Where its last offset delta sits, after the attributes (2).
const LAST_OFFSET_DELTA_AT: usize = ATTRIBUTES_AT + 2;
/// Where its producer id sits (then the producer epoch): after the last
/// offset delta (4), first and max timestamps (8 each).
const PRODUCER_ID_AT: usize = LAST_OFFSET_DELTA_AT + 4 + 16;

/// A partition's batches on one node, by base offset: last offset and bytes.
type Batches = BTreeMap<i64, (i64, Vec<u8>)>;
/// One node's replica of a partition: the node, its high watermark, its
/// batches.
type Replica = (usize, i64, Batches);

/// The replicas of some topics' partitions, read from the nodes' data
/// directories.
#[derive(Debug, Default)]
pub struct Logs {
    replicas: BTreeMap<(String, i32), Vec<Replica>>,
}

impl Logs {
    /// Reads the replicas of `topics`' partitions under `node_dirs` (node
    /// `n` at `n - 1`), with each node's checkpointed high watermarks.
    pub fn read(node_dirs: &[impl AsRef<Path>], topics: &[&str]) -> Result<Self> {
        let mut replicas: BTreeMap<(String, i32), Vec<Replica>> = BTreeMap::new();
        for (i, dir) in node_dirs.iter().enumerate() {
            let dir = dir.as_ref();
            let text = match fs::read_to_string(dir.join(HIGH_WATERMARKS)) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
            };
            for (topic, partition, high_watermark) in parse_checkpoint(&text)? {
                if !topics.contains(&topic.as_str()) {
                    continue;
                }
                let batches = read_batches(&dir.join(format!("{topic}-{partition}")))?;
                replicas.entry((topic, partition)).or_default().push((
                    i + 1,
                    high_watermark,
                    batches,
                ));
            }
        }
        Ok(Self { replicas })
    }

    /// One anomaly per pair of nodes and partition that differ below both
    /// high watermarks, at the first offset where they do.
    pub fn divergences(&self) -> Vec<Anomaly> {
        let mut anomalies = Vec::new();
        for ((topic, partition), nodes) in &self.replicas {
            for (x, (a, hw_a, batches_a)) in nodes.iter().enumerate() {
                for (b, hw_b, batches_b) in &nodes[x + 1..] {
                    let below = (*hw_a).min(*hw_b);
                    if let Some(offset) = first_difference(batches_a, batches_b, below) {
                        anomalies.push(Anomaly {
                            kind: Kind::ReplicaDivergence,
                            message: format!(
                                "{topic}/{partition}: nodes {a} and {b} differ at offset {offset}, below both high watermarks ({hw_a} and {hw_b})"
                            ),
                            ops: Vec::new(),
                            places: Vec::new(),
                        });
                    }
                }
            }
        }
        anomalies
    }

    /// The producer id and epoch of the non-transactional batch holding
    /// `offset`, on a replica whose high watermark is past it (a
    /// transactional workload never sends a value twice, so a copy there
    /// is never the client's).
    fn producer_at(&self, topic: &str, partition: i32, offset: i64) -> Option<(i64, i16)> {
        let nodes = self.replicas.get(&(topic.to_owned(), partition))?;
        nodes.iter().find_map(|(_, high_watermark, batches)| {
            let (_, (last, bytes)) = batches.range(..=offset).next_back()?;
            if *last < offset || *high_watermark <= offset {
                return None;
            }
            let attributes = bytes.get(ATTRIBUTES_AT..ATTRIBUTES_AT + 2)?;
            if i16::from_be_bytes(attributes.try_into().ok()?) & TRANSACTIONAL != 0 {
                return None;
            }
            let id = bytes.get(PRODUCER_ID_AT..PRODUCER_ID_AT + 8)?;
            let epoch = bytes.get(PRODUCER_ID_AT + 8..PRODUCER_ID_AT + 10)?;
            Some((
                i64::from_be_bytes(id.try_into().ok()?),
                i16::from_be_bytes(epoch.try_into().ok()?),
            ))
        })
    }

    /// Whether a value read at `places` was written once and then sent
    /// again by the same producer under higher epochs only (librdkafka's
    /// epoch bump re-sends what it had not seen acknowledged): the first
    /// place by offset has the lowest epoch, every other a higher one.
    pub fn is_epoch_bump_resend(&self, places: &[(String, i32, i64)]) -> bool {
        let mut found: Vec<(i64, i64, i16)> = Vec::new();
        for (topic, partition, offset) in places {
            match self.producer_at(topic, *partition, *offset) {
                Some((id, epoch)) if id >= 0 => found.push((*offset, id, epoch)),
                _ => return false,
            }
        }
        found.sort_unstable();
        // Each copy under a higher epoch than the one before it: two copies
        // under one epoch are a retry the broker failed to recognise.
        found.len() > 1
            && places
                .iter()
                .all(|(t, p, _)| (t, p) == (&places[0].0, &places[0].1))
            && found
                .windows(2)
                .all(|w| w[0].1 == w[1].1 && w[1].2 > w[0].2)
    }
}

/// The first offset below `below` that both logs hold but not the same
/// batch at (a batch of one at an offset the other holds in another batch,
/// or in a batch of other bytes).
fn first_difference(a: &Batches, b: &Batches, below: i64) -> Option<i64> {
    let covers = |batches: &Batches, offset: i64| {
        batches
            .range(..=offset)
            .next_back()
            .is_some_and(|(_, (last, _))| *last >= offset)
    };
    for (base, (last, bytes)) in a.range(..below) {
        if *last >= below {
            break;
        }
        match b.get(base) {
            Some((_, other)) if other == bytes => {}
            Some(_) => return Some(*base),
            None if covers(b, *base) => return Some(*base),
            None => {}
        }
    }
    // Batches only `b` starts, inside what `a` holds.
    b.range(..below)
        .filter(|(base, (last, _))| *last < below && !a.contains_key(base))
        .find(|(base, _)| covers(a, **base))
        .map(|(base, _)| *base)
}

/// The batches of a partition directory's segments (a missing directory
/// holds none). A torn batch at a segment's end ends that segment.
fn read_batches(dir: &Path) -> Result<Batches> {
    let mut batches = Batches::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(batches),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    for entry in entries {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("log") {
            continue;
        }
        let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let mut at = 0usize;
        while let Some(header) = bytes.get(at..at + LAST_OFFSET_DELTA_AT + 4) {
            let base = i64::from_be_bytes(header[..8].try_into()?);
            let length = i32::from_be_bytes(header[8..12].try_into()?);
            let delta = i32::from_be_bytes(header[LAST_OFFSET_DELTA_AT..].try_into()?);
            let Some(end) = usize::try_from(length)
                .ok()
                .filter(|l| *l > 0)
                .and_then(|l| at.checked_add(12 + l))
                .filter(|end| *end <= bytes.len())
            else {
                break;
            };
            batches.insert(base, (base + i64::from(delta), bytes[at..end].to_vec()));
            at = end;
        }
    }
    Ok(batches)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch of `records` records from `base`, by producer (id, epoch),
    /// its payload bytes all `fill`.
    fn batch(base: i64, records: i32, producer: (i64, i16), fill: u8) -> Vec<u8> {
        let mut body = vec![0u8; 4 + 1 + 4 + 2]; // leader epoch, magic, CRC, attributes
        body.extend((records - 1).to_be_bytes());
        body.extend([0u8; 16]); // timestamps
        body.extend(producer.0.to_be_bytes());
        body.extend(producer.1.to_be_bytes());
        body.extend([0u8; 8]); // base sequence, record count
        body.extend([fill; 10]);
        let mut b = base.to_be_bytes().to_vec();
        b.extend(i32::try_from(body.len()).unwrap_or(i32::MAX).to_be_bytes());
        b.extend(body);
        b
    }

    const P: (i64, i16) = (7, 0);

    fn node(dir: &Path, hw: i64, batches: &[Vec<u8>]) {
        let part = dir.join("chaos-0");
        fs::create_dir_all(&part).unwrap();
        fs::write(part.join("00000000000000000000.log"), batches.concat()).unwrap();
        fs::write(dir.join(HIGH_WATERMARKS), format!("0\n1\nchaos 0 {hw}\n")).unwrap();
    }

    fn divergences(dirs: &[&Path]) -> Result<Vec<Anomaly>> {
        Ok(Logs::read(dirs, &["chaos"])?.divergences())
    }

    #[test]
    fn equal_replicas_and_tails_above_the_high_watermark_pass() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let (n1, n2) = (dir.path().join("n1"), dir.path().join("n2"));
        node(
            &n1,
            5,
            &[batch(0, 2, P, 1), batch(2, 3, P, 2), batch(5, 1, P, 7)],
        );
        // Shorter, and a different tail at and above its high watermark.
        node(&n2, 2, &[batch(0, 2, P, 1), batch(2, 3, P, 9)]);
        assert!(divergences(&[&n1, &n2])?.is_empty());
        Ok(())
    }

    #[test]
    fn a_different_batch_below_both_high_watermarks_is_divergence() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let (n1, n2, n3) = (
            dir.path().join("n1"),
            dir.path().join("n2"),
            dir.path().join("n3"),
        );
        node(&n1, 5, &[batch(0, 2, P, 1), batch(2, 3, P, 2)]);
        node(&n2, 5, &[batch(0, 2, P, 1), batch(2, 3, P, 3)]);
        // Same records, cut into other batches.
        node(&n3, 5, &[batch(0, 3, P, 1), batch(3, 2, P, 2)]);
        let found = divergences(&[&n1, &n2, &n3])?;
        let messages: Vec<&str> = found.iter().map(|a| a.message.as_str()).collect();
        assert_eq!(found.len(), 3, "{messages:?}");
        assert!(found.iter().all(|a| a.kind == Kind::ReplicaDivergence));
        assert!(
            messages[0].contains("nodes 1 and 2 differ at offset 2"),
            "{messages:?}"
        );
        Ok(())
    }

    #[test]
    fn a_replica_that_starts_later_is_compared_where_both_hold_data() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let (n1, n2) = (dir.path().join("n1"), dir.path().join("n2"));
        node(
            &n1,
            6,
            &[batch(0, 2, P, 1), batch(2, 3, P, 2), batch(5, 1, P, 4)],
        );
        node(&n2, 6, &[batch(5, 1, P, 4)]);
        assert!(divergences(&[&n1, &n2])?.is_empty());
        Ok(())
    }

    #[test]
    fn a_copy_under_a_higher_epoch_of_the_same_producer_is_an_epoch_bump_resend() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let n1 = dir.path().join("n1");
        node(
            &n1,
            10,
            &[
                batch(0, 2, (7, 0), 1),
                batch(2, 2, (8, 0), 2),
                batch(4, 1, (7, 1), 1),
                batch(5, 1, (7, 1), 1),
                batch(6, 2, (7, 0), 3),
                batch(8, 1, (7, 2), 4),
            ],
        );
        let logs = Logs::read(&[&n1], &["chaos"])?;
        let at = |offsets: &[i64]| -> Vec<(String, i32, i64)> {
            offsets
                .iter()
                .map(|o| ("chaos".to_owned(), 0, *o))
                .collect()
        };
        assert!(logs.is_epoch_bump_resend(&at(&[0, 4])));
        assert!(logs.is_epoch_bump_resend(&at(&[0, 4, 8])), "epochs 0, 1, 2");
        assert!(
            !logs.is_epoch_bump_resend(&at(&[0, 4, 5])),
            "two copies under epoch 1: a retry the broker did not recognise"
        );
        assert!(
            !logs.is_epoch_bump_resend(&at(&[0, 10])),
            "at or above the high watermark"
        );
        assert!(!logs.is_epoch_bump_resend(&at(&[0, 2])), "another producer");
        assert!(
            !logs.is_epoch_bump_resend(&at(&[0, 6])),
            "the same epoch: the broker's"
        );
        assert!(
            !logs.is_epoch_bump_resend(&at(&[4, 6])),
            "the later copy has the lower epoch"
        );
        assert!(
            !logs.is_epoch_bump_resend(&at(&[0, 40])),
            "an offset no replica holds"
        );
        Ok(())
    }
}
