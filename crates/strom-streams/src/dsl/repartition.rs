//! Repartition topics: [`KStream::repartition`], and the topic an
//! aggregation puts before itself when the key changed
//! ([`KStream::group_by`], or [`KStream::group_by_key_with`] after `map`,
//! `flat_map`, `select_key` or `process`), so that all records of one key
//! are counted by one task (Java's `Grouped`, `Repartitioned` and
//! `KStreamImpl.createRepartitionedSource`).
//!
//! # Names (Kafka's)
//!
//! A repartition topic is named after a prefix plus `-repartition`: the
//! [`Grouped`] or [`Repartitioned`] name when there is one, else the
//! aggregation's store name (for grouping) or a generated
//! `KSTREAM-REPARTITION-n` (for `repartition`). On the cluster it carries
//! the application id in front (`<application.id>-<prefix>-repartition`),
//! and the application creates it (`cleanup.policy=delete`,
//! `retention.ms=-1`, `segment.bytes=52428800`).
//!
//! It adds three nodes: a pass-through `KSTREAM-FILTER-n`, a
//! `KSTREAM-SINK-n` writing the topic and a `KSTREAM-SOURCE-n` reading it
//! (a new sub-topology starts there). All three numbers are always taken;
//! unless the prefix is itself a generated name (`KSTREAM…-` and ten
//! digits), the nodes are named after the topic instead:
//! `<topic>-filter`, `<topic>-sink`, `<topic>-source`.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use super::{BuilderState, FILTER_NAME, FnProcessor, KStream, Named, SINK_NAME, SOURCE_NAME, lock};
use crate::processor::{Data, ProcessorContext, Record};
use crate::serdes::Serde;

const REPARTITION_NAME: &str = "KSTREAM-REPARTITION-";
const REPARTITION_TOPIC_SUFFIX: &str = "-repartition";

/// The most partitions [`Repartitioned::with_number_of_partitions`] asks
/// for: Kafka's own limit is the broker's, but a typo of a few zeros should
/// fail at build time rather than create a huge topic.
pub const MAX_REPARTITION_PARTITIONS: usize = 100_000;

/// How a stream is grouped: the serdes of the repartition topic, and
/// optionally its name (which also names the key-selecting node of
/// [`KStream::group_by`]) (Java's `Grouped`).
#[derive(Debug, Clone)]
pub struct Grouped<KS, VS> {
    name: Option<String>,
    key_serde: KS,
    value_serde: VS,
}

impl<KS: Serde, VS: Serde> Grouped<KS, VS> {
    pub fn with(key_serde: KS, value_serde: VS) -> Self {
        Self {
            name: None,
            key_serde,
            value_serde,
        }
    }

    /// The repartition topic becomes `<name>-repartition`.
    pub fn as_(name: impl Into<String>, key_serde: KS, value_serde: VS) -> Self {
        Self {
            name: Some(name.into()),
            ..Self::with(key_serde, value_serde)
        }
    }
}

/// How [`KStream::repartition`] writes its topic: serdes, optionally a name
/// and a partition count (Java's `Repartitioned`).
#[derive(Debug, Clone)]
pub struct Repartitioned<KS, VS> {
    name: Option<String>,
    key_serde: KS,
    value_serde: VS,
    partitions: Option<usize>,
}

impl<KS: Serde, VS: Serde> Repartitioned<KS, VS> {
    pub fn with(key_serde: KS, value_serde: VS) -> Self {
        Self {
            name: None,
            key_serde,
            value_serde,
            partitions: None,
        }
    }

    /// The topic becomes `<name>-repartition`.
    pub fn as_(name: impl Into<String>, key_serde: KS, value_serde: VS) -> Self {
        Self {
            name: Some(name.into()),
            ..Self::with(key_serde, value_serde)
        }
    }

    /// The topic's partition count; without it, as many as the upstream
    /// sub-topology has tasks.
    pub fn with_number_of_partitions(mut self, partitions: usize) -> Self {
        self.partitions = Some(partitions);
        self
    }
}

/// Java's `"KSTREAM.*-[0-9]{10}"` (a whole-string match): a name the
/// builder generated.
fn is_generated_name(name: &str) -> bool {
    name.starts_with("KSTREAM")
        && name.len() >= "KSTREAM".len() + 11
        && name
            .rsplit_once('-')
            .is_some_and(|(_, n)| n.len() == 10 && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Kafka's longest topic name.
const MAX_TOPIC_NAME_LENGTH: usize = 249;

/// Kafka's rules for a topic name (`Topic.validate`; `Named` names follow
/// them too): letters, digits, `.`, `_` and `-`, at most 249 characters.
/// The application id is checked by the broker when the topic is created.
fn legal_topic_name(topic: &str) -> Result<(), String> {
    if topic.len() > MAX_TOPIC_NAME_LENGTH {
        return Err(format!(
            "the topic name is {} characters long, the most is {MAX_TOPIC_NAME_LENGTH}",
            topic.len()
        ));
    }
    if let Some(c) = topic
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "{c:?} is not allowed: only ASCII letters and digits, '.', '_' and '-'"
        ));
    }
    Ok(())
}

impl BuilderState {
    /// Adds a repartition topic named after `prefix` below `parent`: filter,
    /// sink and source (see the module docs). Returns the source's name,
    /// where the repartitioned stream comes out.
    fn add_repartition<KS: Serde, VS: Serde>(
        &mut self,
        prefix: &str,
        parent: &str,
        key_serde: KS,
        value_serde: VS,
        partitions: Option<usize>,
    ) -> String {
        let topic = if prefix.ends_with(REPARTITION_TOPIC_SUFFIX) {
            prefix.to_owned()
        } else {
            format!("{prefix}{REPARTITION_TOPIC_SUFFIX}")
        };
        // Kafka always takes the three numbers.
        let generated_sink = self.new_name(SINK_NAME);
        let generated_filter = self.new_name(FILTER_NAME);
        let generated_source = self.new_name(SOURCE_NAME);
        let (sink, filter, source) = if is_generated_name(prefix) {
            (generated_sink, generated_filter, generated_source)
        } else {
            (
                format!("{topic}-sink"),
                format!("{topic}-filter"),
                format!("{topic}-source"),
            )
        };
        if let Err(reason) = legal_topic_name(&topic) {
            self.keep(Err(crate::TopologyError::InvalidName {
                name: prefix.to_owned(),
                reason,
            }));
            return source;
        }
        if partitions.is_some_and(|p| !(1..=MAX_REPARTITION_PARTITIONS).contains(&p)) {
            self.keep(Err(crate::TopologyError::InvalidPartitions {
                topic,
                partitions: partitions.unwrap_or(0),
            }));
            return source;
        }
        let pass = Arc::new(
            |ctx: &mut ProcessorContext<'_, KS::Target, VS::Target>,
             r: Record<KS::Target, VS::Target>| ctx.forward(r),
        );
        let (key_serde, value_serde) = (Arc::new(key_serde), Arc::new(value_serde));
        self.topology.add_repartition_topic(&topic, partitions);
        let result = self
            .topology
            .add_processor(&filter, move || FnProcessor(Arc::clone(&pass)), &[parent])
            .and_then(|t| {
                t.add_sink(
                    &sink,
                    &topic,
                    Arc::clone(&key_serde),
                    Arc::clone(&value_serde),
                    &[filter.as_str()],
                )
            })
            .and_then(|t| t.add_source(&source, &[topic.as_str()], key_serde, value_serde))
            .map(|_| ());
        self.keep(result);
        source
    }
}

/// Adds a grouped stream's repartition topic: given the topic's name
/// prefix and the parent node, returns the source node's name.
type AddRepartition = Arc<dyn Fn(&mut BuilderState, &str, &str) -> String + Send + Sync>;

/// A repartition topic an aggregation must put before itself.
#[derive(Clone)]
pub(super) struct PendingRepartition {
    /// [`Grouped`]'s name: the topic's prefix instead of the store's name.
    pub(super) name: Option<String>,
    add: AddRepartition,
    /// The source node of the topic once added under [`Grouped`]'s name:
    /// further aggregations of the same grouped stream read it too, as
    /// Kafka's `GroupedStreamAggregateBuilder` reuses a named repartition
    /// node (a generated name makes one topic per aggregation).
    built: Arc<Mutex<Option<String>>>,
}

impl fmt::Debug for PendingRepartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingRepartition")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl PendingRepartition {
    /// Adds the topic (named after `prefix` unless [`Grouped`] named it)
    /// below `parent`, or finds the one a named grouping already added;
    /// returns the source node the aggregation reads.
    pub(super) fn add(&self, state: &mut BuilderState, store: &str, parent: &str) -> String {
        let mut built = self.built.lock().unwrap_or_else(PoisonError::into_inner);
        if let (Some(_), Some(source)) = (&self.name, built.as_ref()) {
            // Kafka still takes the three numbers.
            for prefix in [SINK_NAME, FILTER_NAME, SOURCE_NAME] {
                state.new_name(prefix);
            }
            return source.clone();
        }
        let prefix = self.name.as_deref().unwrap_or(store);
        let source = (self.add)(state, prefix, parent);
        *built = Some(source.clone());
        source
    }

    fn new<KS: Serde, VS: Serde>(grouped: Grouped<KS, VS>) -> Self {
        let key_serde = Arc::new(grouped.key_serde);
        let value_serde = Arc::new(grouped.value_serde);
        Self {
            name: grouped.name,
            add: Arc::new(move |state, prefix, parent| {
                state.add_repartition(
                    prefix,
                    parent,
                    Arc::clone(&key_serde),
                    Arc::clone(&value_serde),
                    None,
                )
            }),
            built: Arc::new(Mutex::new(None)),
        }
    }
}

impl<K: Data, V: Data> KStream<K, V> {
    /// Writes the stream to a repartition topic and reads it back (Java's
    /// `repartition()`): records are spread by their current key, and what
    /// comes after runs in a new sub-topology.
    pub fn repartition<KS, VS>(&self, repartitioned: Repartitioned<KS, VS>) -> KStream<K, V>
    where
        KS: Serde<Target = K>,
        VS: Serde<Target = V>,
    {
        let mut state = lock(&self.state);
        let prefix = repartitioned
            .name
            .unwrap_or_else(|| state.new_name(REPARTITION_NAME));
        let source = state.add_repartition(
            &prefix,
            &self.node,
            repartitioned.key_serde,
            repartitioned.value_serde,
            repartitioned.partitions,
        );
        drop(state);
        KStream::new(Arc::clone(&self.state), source)
    }

    /// Groups by the current key (Java's `groupByKey(Grouped)`): after a
    /// key-changing operation (`map`, `flat_map`, `select_key`, `process`)
    /// the aggregation reads a repartition topic written with `grouped`'s
    /// serdes, as in Kafka; otherwise the serdes are not used.
    pub fn group_by_key_with<KS, VS>(
        &self,
        grouped: Grouped<KS, VS>,
    ) -> super::stateful::KGroupedStream<K, V>
    where
        KS: Serde<Target = K>,
        VS: Serde<Target = V>,
    {
        let repartition = self
            .repartition_required
            .then(|| PendingRepartition::new(grouped));
        super::stateful::KGroupedStream::new(self.clone(), repartition)
    }

    /// Groups by a new key `selector` computes (Java's `groupBy`): a
    /// `KSTREAM-KEY-SELECT-n` node (named after [`Grouped::as_`]'s name
    /// when given) and a repartition topic before the aggregation.
    pub fn group_by<KR: Data, KS, VS>(
        &self,
        selector: impl Fn(&K, &V) -> KR + Send + Sync + 'static,
        grouped: Grouped<KS, VS>,
    ) -> super::stateful::KGroupedStream<KR, V>
    where
        KS: Serde<Target = KR>,
        VS: Serde<Target = V>,
    {
        let named = grouped.name.clone().map(Named);
        let rekeyed = self.select_key_named(selector, named);
        let repartition = PendingRepartition::new(grouped);
        super::stateful::KGroupedStream::new(rekeyed, Some(repartition))
    }
}

#[cfg(test)]
mod tests {
    use super::is_generated_name;

    #[test]
    fn generated_names_are_recognised_as_java_matches_them() {
        assert!(is_generated_name(
            "KSTREAM-AGGREGATE-STATE-STORE-0000000003"
        ));
        assert!(is_generated_name("KSTREAM-REPARTITION-0000000012"));
        assert!(!is_generated_name("counts"));
        assert!(!is_generated_name("KSTREAM-AGGREGATE-000000003"));
        assert!(!is_generated_name(
            "KTABLE-AGGREGATE-STATE-STORE-0000000003"
        ));
        assert!(!is_generated_name("KSTREAM0000000003"));
    }
}
