//! [`Topology`]: sources, processors and sinks wired by name (Java's
//! `Topology` and `InternalTopologyBuilder`), split into sub-topologies, and
//! [`TopologyDescription`], whose `Display` is Kafka's `describe()` text.
//!
//! # Rules (Kafka's, checked as nodes are added)
//!
//! - names are unique; a parent must be added before its children; a
//!   processor or sink has at least one parent; a sink is never a parent;
//! - a source reads at least one topic, and a topic is read by one source;
//! - here also: a child's input types must be its parents' output types
//!   (Java finds out with a `ClassCastException` at run time), and a parent
//!   is listed once.
//!
//! # Sub-topologies
//!
//! Nodes connected through parent links (and, later, shared state stores)
//! form a sub-topology. They are numbered 0, 1, ... in the order of their
//! first node in the topology, as `InternalTopologyBuilder.makeNodeGroups`
//! does.
//!
//! # The description
//!
//! `TopologyDescription`'s text is built as Kafka's
//! `InternalTopologyBuilder.TopologyDescription.toString()`:
//!
//! ```text
//! Topologies:
//!    Sub-topology: 0
//!     Source: KSTREAM-SOURCE-0000000000 (topics: [input])
//!       --> KSTREAM-FILTER-0000000001
//!     Processor: KSTREAM-FILTER-0000000001 (stores: [])
//!       --> KSTREAM-SINK-0000000002
//!       <-- KSTREAM-SOURCE-0000000000
//!     Sink: KSTREAM-SINK-0000000002 (topic: output)
//!       <-- KSTREAM-FILTER-0000000001
//!
//! ```
//!
//! Every sub-topology ends with a blank line; the first header has three
//! spaces and the later ones two (Kafka writes `"Topologies:\n "` and then
//! `"  "` before each). Nodes are ordered by the number of paths from them
//! (descending), then by name; `-->` and `<--` lists come from Java
//! `TreeSet`s filled while those sizes were still growing, which
//! [`crate::java`] replays, so the orders match Kafka's even where they look
//! unsorted. A sink with a topic-name extractor prints
//! `(extractor class: NAME)` where NAME is
//! [`TopicNameExtractor::class_name`] (Java prints the object's `toString()`).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use crate::java;
use crate::processor::{Data, ProcessorSupplier, RecordTypes, TopicNameExtractor};
use crate::runtime::{
    ErasedSink, ErasedSource, ErasedSupplier, SinkAdapter, SinkTopic, SourceAdapter,
    SupplierAdapter,
};
use crate::serdes::Serde;
use crate::state::StoreBuilder;
use crate::state::builder::StoreDef;

/// A topology that cannot be built (Java's `TopologyException`; the
/// messages are Kafka's where Kafka has one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TopologyError {
    #[error("Processor {0} is already added.")]
    DuplicateName(String),
    #[error("Predecessor processor {parent} is not added yet for {node}")]
    UnknownParent { node: String, parent: String },
    #[error("Processor {0} must have at least one parent")]
    NoParents(String),
    #[error("Processor {0} cannot be a predecessor of itself.")]
    SelfParent(String),
    #[error("Processor {node} lists parent {parent} more than once")]
    DuplicateParent { node: String, parent: String },
    #[error("Sink {0} cannot be used a parent.")]
    SinkAsParent(String),
    #[error("Source {0}: you must provide at least one topic")]
    NoTopics(String),
    #[error("Topic {0} has already been registered by another source.")]
    TopicAlreadyRegistered(String),
    #[error("{node} reads {expected} but its parent {parent} forwards {actual}")]
    TypeMismatch {
        node: String,
        parent: String,
        expected: String,
        actual: String,
    },
    #[error(
        "{0}: grouping a re-keyed stream needs a repartition topic, and serdes to write it: use group_by_key_with(Grouped::with(key serde, value serde))"
    )]
    RepartitionRequired(String),
    #[error("repartition topic {topic}: {partitions} partitions is not 1 to {max}", max = crate::dsl::MAX_REPARTITION_PARTITIONS)]
    InvalidPartitions { topic: String, partitions: usize },
    #[error("Name \"{name}\" is illegal: {reason}")]
    InvalidName { name: String, reason: String },
    #[error("StateStore {0} is already added.")]
    DuplicateStore(String),
    #[error("Processor {processor} is not added yet for state store {store}")]
    UnknownProcessor { processor: String, store: String },
    #[error("StateStore {0} is not added yet.")]
    UnknownStore(String),
    #[error("{0} is a source or sink: only processors connect to state stores")]
    NotAProcessor(String),
}

#[derive(Clone)]
pub(crate) enum NodeKind {
    Source {
        topics: Vec<String>,
        source: Arc<dyn ErasedSource>,
    },
    Processor {
        supplier: Arc<dyn ErasedSupplier>,
    },
    Sink {
        topic: SinkTopicName,
        sink: Arc<dyn ErasedSink>,
    },
}

/// What a sink prints in the description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SinkTopicName {
    Static(String),
    Extractor(String),
}

#[derive(Clone)]
pub(crate) struct NodeDef {
    pub(crate) name: String,
    /// Indices into `Topology::nodes`, in the order given (Kafka connects
    /// and forwards in that order).
    pub(crate) parents: Vec<usize>,
    /// State stores this node uses; none can be added yet, but the
    /// description already prints them (`(stores: [..])`).
    pub(crate) stores: Vec<String>,
    pub(crate) kind: NodeKind,
    /// What the node forwards; `None` for sinks.
    output: Option<RecordTypes>,
}

/// A processing graph: sources, processors and sinks connected by name.
#[derive(Clone, Default)]
pub struct Topology {
    /// In the order added, which is a topological order (parents first).
    pub(crate) nodes: Vec<NodeDef>,
    by_name: HashMap<String, usize>,
    /// Source node of each source topic.
    pub(crate) source_topics: HashMap<String, usize>,
    /// State stores, by name.
    pub(crate) stores: BTreeMap<String, StoreDef>,
    /// Repartition topics the application creates and owns, by their name
    /// in the topology (without the `<application.id>-` prefix they carry
    /// on the cluster), with a partition count when one was asked for.
    pub(crate) repartition_topics: BTreeMap<String, Option<usize>>,
}

impl fmt::Debug for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Topology")
            .field(
                "nodes",
                &self
                    .nodes
                    .iter()
                    .map(|n| n.name.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Topology {
    pub fn new() -> Self {
        Self::default()
    }

    fn check_new_name(&self, name: &str) -> Result<(), TopologyError> {
        if self.by_name.contains_key(name) {
            return Err(TopologyError::DuplicateName(name.to_owned()));
        }
        Ok(())
    }

    /// Resolves parent names and checks Kafka's rules plus types.
    fn resolve_parents(
        &self,
        name: &str,
        parents: &[&str],
        input: Option<RecordTypes>,
    ) -> Result<Vec<usize>, TopologyError> {
        if parents.is_empty() {
            return Err(TopologyError::NoParents(name.to_owned()));
        }
        let mut resolved = Vec::with_capacity(parents.len());
        for &parent in parents {
            if parent == name {
                return Err(TopologyError::SelfParent(name.to_owned()));
            }
            let Some(&index) = self.by_name.get(parent) else {
                return Err(TopologyError::UnknownParent {
                    node: name.to_owned(),
                    parent: parent.to_owned(),
                });
            };
            if resolved.contains(&index) {
                return Err(TopologyError::DuplicateParent {
                    node: name.to_owned(),
                    parent: parent.to_owned(),
                });
            }
            let Some(output) = self.nodes[index].output else {
                return Err(TopologyError::SinkAsParent(parent.to_owned()));
            };
            if let Some(input) = input
                && !input.matches(&output)
            {
                return Err(TopologyError::TypeMismatch {
                    node: name.to_owned(),
                    parent: parent.to_owned(),
                    expected: input.to_string(),
                    actual: output.to_string(),
                });
            }
            resolved.push(index);
        }
        Ok(resolved)
    }

    fn push(&mut self, node: NodeDef) {
        self.by_name.insert(node.name.clone(), self.nodes.len());
        self.nodes.push(node);
    }

    /// Adds a source reading `topics` with the given serdes (Java's
    /// `addSource(name, keyDeserializer, valueDeserializer, topics...)`).
    pub fn add_source<KS: Serde, VS: Serde>(
        &mut self,
        name: &str,
        topics: &[&str],
        key_serde: KS,
        value_serde: VS,
    ) -> Result<&mut Self, TopologyError> {
        if topics.is_empty() {
            return Err(TopologyError::NoTopics(name.to_owned()));
        }
        self.check_new_name(name)?;
        let mut seen: Vec<&str> = Vec::with_capacity(topics.len());
        for &topic in topics {
            if self.source_topics.contains_key(topic) || seen.contains(&topic) {
                return Err(TopologyError::TopicAlreadyRegistered(topic.to_owned()));
            }
            seen.push(topic);
        }
        let index = self.nodes.len();
        for &topic in topics {
            self.source_topics.insert(topic.to_owned(), index);
        }
        self.push(NodeDef {
            name: name.to_owned(),
            parents: Vec::new(),
            stores: Vec::new(),
            kind: NodeKind::Source {
                topics: topics.iter().map(|&t| t.to_owned()).collect(),
                source: Arc::new(SourceAdapter {
                    key_serde,
                    value_serde,
                }),
            },
            output: Some(RecordTypes::of::<KS::Target, VS::Target>()),
        });
        Ok(self)
    }

    /// Adds a processor below `parents`; each task gets its own processor
    /// from `supplier`.
    pub fn add_processor<KIn: Data, VIn: Data, KOut: Data, VOut: Data>(
        &mut self,
        name: &str,
        supplier: impl ProcessorSupplier<KIn, VIn, KOut, VOut>,
        parents: &[&str],
    ) -> Result<&mut Self, TopologyError> {
        self.check_new_name(name)?;
        let parents = self.resolve_parents(name, parents, Some(RecordTypes::of::<KIn, VIn>()))?;
        self.push(NodeDef {
            name: name.to_owned(),
            parents,
            stores: Vec::new(),
            kind: NodeKind::Processor {
                supplier: Arc::new(SupplierAdapter::<_, KIn, VIn, KOut, VOut>::new(supplier)),
            },
            output: Some(RecordTypes::of::<KOut, VOut>()),
        });
        Ok(self)
    }

    /// Adds a sink writing to `topic`.
    pub fn add_sink<KS: Serde, VS: Serde>(
        &mut self,
        name: &str,
        topic: &str,
        key_serde: KS,
        value_serde: VS,
        parents: &[&str],
    ) -> Result<&mut Self, TopologyError> {
        let sink = SinkAdapter {
            topic: SinkTopic::Static(topic.to_owned()),
            key_serde,
            value_serde,
        };
        self.add_sink_node(
            name,
            SinkTopicName::Static(topic.to_owned()),
            Arc::new(sink),
            RecordTypes::of::<KS::Target, VS::Target>(),
            parents,
        )
    }

    /// Adds a sink that picks each record's topic with `extractor`.
    pub fn add_sink_with_extractor<KS: Serde, VS: Serde>(
        &mut self,
        name: &str,
        extractor: impl TopicNameExtractor<KS::Target, VS::Target>,
        key_serde: KS,
        value_serde: VS,
        parents: &[&str],
    ) -> Result<&mut Self, TopologyError> {
        let class_name = extractor.class_name();
        let sink = SinkAdapter {
            topic: SinkTopic::Extractor(Box::new(extractor)),
            key_serde,
            value_serde,
        };
        self.add_sink_node(
            name,
            SinkTopicName::Extractor(class_name),
            Arc::new(sink),
            RecordTypes::of::<KS::Target, VS::Target>(),
            parents,
        )
    }

    fn add_sink_node(
        &mut self,
        name: &str,
        topic: SinkTopicName,
        sink: Arc<dyn ErasedSink>,
        input: RecordTypes,
        parents: &[&str],
    ) -> Result<&mut Self, TopologyError> {
        self.check_new_name(name)?;
        let parents = self.resolve_parents(name, parents, Some(input))?;
        self.push(NodeDef {
            name: name.to_owned(),
            parents,
            stores: Vec::new(),
            kind: NodeKind::Sink { topic, sink },
            output: None,
        });
        Ok(self)
    }

    /// Adds a state store and connects it to `processors` (Java's
    /// `addStateStore(storeBuilder, processorNames...)`); each task gets its
    /// own instance, and processors sharing a store share a sub-topology.
    pub fn add_state_store<KS: Serde, VS: Serde>(
        &mut self,
        store: StoreBuilder<KS, VS>,
        processors: &[&str],
    ) -> Result<&mut Self, TopologyError> {
        let name = store.name().to_owned();
        if self.stores.contains_key(&name) {
            return Err(TopologyError::DuplicateStore(name));
        }
        for processor in processors {
            self.check_processor(processor, &name)?;
        }
        self.stores.insert(name.clone(), store.into_def());
        self.connect_processor_and_state_stores_unchecked(processors, &name);
        Ok(self)
    }

    /// Connects `processor` to stores added before (Java's
    /// `connectProcessorAndStateStores`).
    pub fn connect_processor_and_state_stores(
        &mut self,
        processor: &str,
        stores: &[&str],
    ) -> Result<&mut Self, TopologyError> {
        for store in stores {
            if !self.stores.contains_key(*store) {
                return Err(TopologyError::UnknownStore((*store).to_owned()));
            }
            self.check_processor(processor, store)?;
        }
        for store in stores {
            self.connect_processor_and_state_stores_unchecked(&[processor], store);
        }
        Ok(self)
    }

    fn check_processor(&self, processor: &str, store: &str) -> Result<(), TopologyError> {
        let Some(&index) = self.by_name.get(processor) else {
            return Err(TopologyError::UnknownProcessor {
                processor: processor.to_owned(),
                store: store.to_owned(),
            });
        };
        match self.nodes[index].kind {
            NodeKind::Processor { .. } => Ok(()),
            _ => Err(TopologyError::NotAProcessor(processor.to_owned())),
        }
    }

    fn connect_processor_and_state_stores_unchecked(&mut self, processors: &[&str], store: &str) {
        for processor in processors {
            if let Some(&index) = self.by_name.get(*processor) {
                let stores = &mut self.nodes[index].stores;
                if !stores.iter().any(|s| s == store) {
                    stores.push(store.to_owned());
                }
            }
        }
    }

    /// Marks `topic` as a repartition topic of the application (Java's
    /// `addInternalTopic`): on a cluster its name gets the
    /// `<application.id>-` prefix, and the application creates it with
    /// `partitions` partitions, or as many as the sub-topology writing it
    /// has tasks.
    pub(crate) fn add_repartition_topic(&mut self, topic: &str, partitions: Option<usize>) {
        self.repartition_topics.insert(topic.to_owned(), partitions);
    }

    /// The name `topic` has on the cluster for application
    /// `application_id`: internal topics carry the application id as a
    /// prefix (Kafka's `decorateTopic`), other topics are as written.
    pub(crate) fn runtime_topic(&self, application_id: &str, topic: &str) -> String {
        if self.repartition_topics.contains_key(topic) {
            format!("{application_id}-{topic}")
        } else {
            topic.to_owned()
        }
    }

    /// The source node of each source topic, by its name on the cluster.
    pub(crate) fn runtime_source_topics(&self, application_id: &str) -> HashMap<String, usize> {
        self.source_topics
            .iter()
            .map(|(topic, &node)| (self.runtime_topic(application_id, topic), node))
            .collect()
    }

    /// Records store names on a processor for the description only.
    #[cfg(test)]
    pub(crate) fn set_store_names_for_test(&mut self, node: &str, stores: &[&str]) {
        if let Some(&index) = self.by_name.get(node) {
            self.nodes[index].stores = stores.iter().map(|&s| s.to_owned()).collect();
        }
    }

    /// The node indices of each sub-topology, by sub-topology id, each in
    /// topology order (Kafka's `makeNodeGroups`: groups numbered in the
    /// order of their first node).
    pub(crate) fn subtopologies(&self) -> Vec<Vec<usize>> {
        // Union-find over parent links.
        let mut root: Vec<usize> = (0..self.nodes.len()).collect();
        fn find(root: &mut [usize], mut i: usize) -> usize {
            while root[i] != i {
                root[i] = root[root[i]];
                i = root[i];
            }
            i
        }
        let mut store_user: HashMap<&str, usize> = HashMap::new();
        for (i, node) in self.nodes.iter().enumerate() {
            // Processors sharing a store belong to one task, as Kafka's
            // `makeNodeGroups` groups them.
            let shared = node
                .stores
                .iter()
                .filter_map(|s| store_user.insert(s.as_str(), i));
            for p in node
                .parents
                .iter()
                .copied()
                .chain(shared.collect::<Vec<_>>())
            {
                let (a, b) = (find(&mut root, i), find(&mut root, p));
                if a != b {
                    root[a] = b;
                }
            }
        }
        let mut group_of_root: HashMap<usize, usize> = HashMap::new();
        let mut groups: Vec<Vec<usize>> = Vec::new();
        for i in 0..self.nodes.len() {
            let r = find(&mut root, i);
            let group = *group_of_root.entry(r).or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
            groups[group].push(i);
        }
        groups
    }

    /// Kafka's `Topology.describe()`.
    pub fn describe(&self) -> TopologyDescription {
        let subtopologies = self
            .subtopologies()
            .iter()
            .enumerate()
            .map(|(id, members)| {
                self.describe_subtopology(u32::try_from(id).unwrap_or(u32::MAX), members)
            })
            .collect();
        TopologyDescription { subtopologies }
    }

    /// `InternalTopologyBuilder.describeSubtopology`, replayed: nodes are
    /// connected in `HashMap` iteration order, each connection adds the
    /// child's current size to the parent and all its current ancestors,
    /// and the `TreeSet`s of predecessors and successors see the sizes of
    /// the moment.
    fn describe_subtopology(&self, id: u32, members: &[usize]) -> SubtopologyDescription {
        let names: Vec<&str> = members
            .iter()
            .map(|&m| self.nodes[m].name.as_str())
            .collect();
        let local: HashMap<&str, usize> = names.iter().enumerate().map(|(i, &n)| (n, i)).collect();
        let owned_names: Vec<String> = names.iter().map(|&n| n.to_owned()).collect();
        let visit_order: Vec<usize> = java::default_hash_order(&owned_names)
            .iter()
            .map(|n| local[n.as_str()])
            .collect();

        let count = members.len();
        let mut size = vec![1usize; count];
        let mut predecessors = vec![java::TreeSet::default(); count];
        let mut successors = vec![java::TreeSet::default(); count];
        // The predecessor sets as plain lists, for the size walk.
        let mut parent_lists: Vec<Vec<usize>> = vec![Vec::new(); count];

        fn add_size(size: &mut [usize], parent_lists: &[Vec<usize>], node: usize, delta: usize) {
            size[node] += delta;
            for &p in &parent_lists[node] {
                add_size(size, parent_lists, p, delta);
            }
        }

        for &node in &visit_order {
            for &parent in &self.nodes[members[node]].parents {
                let parent = local[self.nodes[parent].name.as_str()];
                let compare = |a: usize, b: usize| {
                    if a == b {
                        std::cmp::Ordering::Equal
                    } else if size[a] != size[b] {
                        size[b].cmp(&size[a])
                    } else {
                        java::compare_strings(names[a], names[b])
                    }
                };
                if predecessors[node].insert(parent, &compare) {
                    parent_lists[node].push(parent);
                }
                successors[parent].insert(node, &compare);
                let delta = size[node];
                add_size(&mut size, &parent_lists, parent, delta);
            }
        }

        let mut order: Vec<usize> = (0..count).collect();
        order.sort_by(|&a, &b| {
            size[b]
                .cmp(&size[a])
                .then_with(|| java::compare_strings(names[a], names[b]))
        });
        let to_names = |set: &java::TreeSet| {
            set.keys()
                .into_iter()
                .map(|i| names[i].to_owned())
                .collect::<Vec<_>>()
        };
        let nodes = order
            .into_iter()
            .map(|i| {
                let def = &self.nodes[members[i]];
                let kind = match &def.kind {
                    NodeKind::Source { topics, .. } => NodeDescriptionKind::Source {
                        topics: java::copied_hash_set_order(topics),
                    },
                    NodeKind::Processor { .. } => NodeDescriptionKind::Processor {
                        stores: java::copied_hash_set_order(&java::default_hash_order(&def.stores)),
                    },
                    NodeKind::Sink {
                        topic: SinkTopicName::Static(topic),
                        ..
                    } => NodeDescriptionKind::Sink {
                        topic: topic.clone(),
                    },
                    NodeKind::Sink {
                        topic: SinkTopicName::Extractor(class_name),
                        ..
                    } => NodeDescriptionKind::SinkWithExtractor {
                        class_name: class_name.clone(),
                    },
                };
                NodeDescription {
                    name: def.name.clone(),
                    kind,
                    predecessors: to_names(&predecessors[i]),
                    successors: to_names(&successors[i]),
                }
            })
            .collect();
        SubtopologyDescription { id, nodes }
    }
}

/// Kafka's `TopologyDescription`; `Display` gives `describe().toString()`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TopologyDescription {
    pub subtopologies: Vec<SubtopologyDescription>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubtopologyDescription {
    pub id: u32,
    /// In Kafka's order: most paths below first, then by name.
    pub nodes: Vec<NodeDescription>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeDescription {
    pub name: String,
    pub kind: NodeDescriptionKind,
    pub predecessors: Vec<String>,
    pub successors: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NodeDescriptionKind {
    /// Topics in the order Kafka prints them (a Java `HashSet`'s).
    Source {
        topics: Vec<String>,
    },
    Processor {
        stores: Vec<String>,
    },
    Sink {
        topic: String,
    },
    SinkWithExtractor {
        class_name: String,
    },
}

fn node_names(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

impl fmt::Display for NodeDescription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let successors = node_names(&self.successors);
        let predecessors = node_names(&self.predecessors);
        match &self.kind {
            NodeDescriptionKind::Source { topics } => {
                write!(
                    f,
                    "Source: {} (topics: {})\n      --> {successors}",
                    self.name,
                    java::collection_to_string(topics)
                )
            }
            NodeDescriptionKind::Processor { stores } => write!(
                f,
                "Processor: {} (stores: {})\n      --> {successors}\n      <-- {predecessors}",
                self.name,
                java::collection_to_string(stores)
            ),
            NodeDescriptionKind::Sink { topic } => write!(
                f,
                "Sink: {} (topic: {topic})\n      <-- {predecessors}",
                self.name
            ),
            NodeDescriptionKind::SinkWithExtractor { class_name } => {
                write!(
                    f,
                    "Sink: {} (extractor class: {class_name})\n      <-- {predecessors}",
                    self.name
                )
            }
        }
    }
}

impl fmt::Display for SubtopologyDescription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "Sub-topology: {}", self.id)?;
        for node in &self.nodes {
            writeln!(f, "    {node}")?;
        }
        writeln!(f)
    }
}

impl fmt::Display for TopologyDescription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Kafka: "Topologies:\n " and then "  " before each sub-topology.
        write!(f, "Topologies:\n ")?;
        for subtopology in &self.subtopologies {
            write!(f, "  {subtopology}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StreamsError;
    use crate::processor::{Processor, ProcessorContext, Record};
    use crate::serdes::StringSerde;

    struct PassThrough;

    impl Processor<String, String, String, String> for PassThrough {
        fn process(
            &mut self,
            ctx: &mut ProcessorContext<'_, String, String>,
            record: Record<String, String>,
        ) -> Result<(), StreamsError> {
            ctx.forward(record)
        }
    }

    fn processor(t: &mut Topology, name: &str, parents: &[&str]) {
        t.add_processor(name, || PassThrough, parents).unwrap();
    }

    /// A real Kafka Streams `describe()` (a payments demo's README, written by
    /// Kafka 3.x: old `branch()` naming, a repartition), rebuilt node by node
    /// with the Processor API. Its `-->` lists are not in name order
    /// (`BRANCHCHILD-0000000006, ...05`), which only the replay of Java's
    /// HashMap and TreeSet reproduces.
    #[test]
    fn describe_matches_a_real_kafka_description() {
        let mut t = Topology::new();
        t.add_source(
            "KSTREAM-SOURCE-0000000000",
            &["payment-topic"],
            StringSerde,
            StringSerde,
        )
        .unwrap();
        processor(
            &mut t,
            "KSTREAM-PEEK-0000000001",
            &["KSTREAM-SOURCE-0000000000"],
        );
        processor(
            &mut t,
            "KSTREAM-FILTER-0000000002",
            &["KSTREAM-PEEK-0000000001"],
        );
        processor(
            &mut t,
            "KSTREAM-PEEK-0000000003",
            &["KSTREAM-FILTER-0000000002"],
        );
        processor(
            &mut t,
            "KSTREAM-BRANCH-0000000004",
            &["KSTREAM-PEEK-0000000003"],
        );
        processor(
            &mut t,
            "KSTREAM-BRANCHCHILD-0000000005",
            &["KSTREAM-BRANCH-0000000004"],
        );
        processor(
            &mut t,
            "KSTREAM-BRANCHCHILD-0000000006",
            &["KSTREAM-BRANCH-0000000004"],
        );
        processor(
            &mut t,
            "KSTREAM-MAPVALUES-0000000007",
            &["KSTREAM-BRANCHCHILD-0000000006"],
        );
        processor(
            &mut t,
            "KSTREAM-MERGE-0000000008",
            &[
                "KSTREAM-BRANCHCHILD-0000000005",
                "KSTREAM-MAPVALUES-0000000007",
            ],
        );
        processor(
            &mut t,
            "KSTREAM-PEEK-0000000009",
            &["KSTREAM-MERGE-0000000008"],
        );
        processor(
            &mut t,
            "KSTREAM-MAP-0000000010",
            &["KSTREAM-PEEK-0000000009"],
        );
        processor(
            &mut t,
            "KSTREAM-BRANCH-0000000015",
            &["KSTREAM-PEEK-0000000009"],
        );
        processor(
            &mut t,
            "KSTREAM-BRANCHCHILD-0000000016",
            &["KSTREAM-BRANCH-0000000015"],
        );
        processor(
            &mut t,
            "KSTREAM-BRANCHCHILD-0000000017",
            &["KSTREAM-BRANCH-0000000015"],
        );
        t.add_sink(
            "KSTREAM-SINK-0000000018",
            "rails-foo-topic",
            StringSerde,
            StringSerde,
            &["KSTREAM-BRANCHCHILD-0000000016"],
        )
        .unwrap();
        t.add_sink(
            "KSTREAM-SINK-0000000019",
            "rails-bar-topic",
            StringSerde,
            StringSerde,
            &["KSTREAM-BRANCHCHILD-0000000017"],
        )
        .unwrap();
        processor(
            &mut t,
            "balance-repartition-filter",
            &["KSTREAM-MAP-0000000010"],
        );
        t.add_sink(
            "balance-repartition-sink",
            "balance-repartition",
            StringSerde,
            StringSerde,
            &["balance-repartition-filter"],
        )
        .unwrap();
        t.add_source(
            "balance-repartition-source",
            &["balance-repartition"],
            StringSerde,
            StringSerde,
        )
        .unwrap();
        processor(
            &mut t,
            "KSTREAM-AGGREGATE-0000000011",
            &["balance-repartition-source"],
        );
        t.set_store_names_for_test("KSTREAM-AGGREGATE-0000000011", &["balance"]);

        let expected = "Topologies:
   Sub-topology: 0
    Source: KSTREAM-SOURCE-0000000000 (topics: [payment-topic])
      --> KSTREAM-PEEK-0000000001
    Processor: KSTREAM-PEEK-0000000001 (stores: [])
      --> KSTREAM-FILTER-0000000002
      <-- KSTREAM-SOURCE-0000000000
    Processor: KSTREAM-FILTER-0000000002 (stores: [])
      --> KSTREAM-PEEK-0000000003
      <-- KSTREAM-PEEK-0000000001
    Processor: KSTREAM-PEEK-0000000003 (stores: [])
      --> KSTREAM-BRANCH-0000000004
      <-- KSTREAM-FILTER-0000000002
    Processor: KSTREAM-BRANCH-0000000004 (stores: [])
      --> KSTREAM-BRANCHCHILD-0000000006, KSTREAM-BRANCHCHILD-0000000005
      <-- KSTREAM-PEEK-0000000003
    Processor: KSTREAM-BRANCHCHILD-0000000006 (stores: [])
      --> KSTREAM-MAPVALUES-0000000007
      <-- KSTREAM-BRANCH-0000000004
    Processor: KSTREAM-BRANCHCHILD-0000000005 (stores: [])
      --> KSTREAM-MERGE-0000000008
      <-- KSTREAM-BRANCH-0000000004
    Processor: KSTREAM-MAPVALUES-0000000007 (stores: [])
      --> KSTREAM-MERGE-0000000008
      <-- KSTREAM-BRANCHCHILD-0000000006
    Processor: KSTREAM-MERGE-0000000008 (stores: [])
      --> KSTREAM-PEEK-0000000009
      <-- KSTREAM-BRANCHCHILD-0000000005, KSTREAM-MAPVALUES-0000000007
    Processor: KSTREAM-PEEK-0000000009 (stores: [])
      --> KSTREAM-BRANCH-0000000015, KSTREAM-MAP-0000000010
      <-- KSTREAM-MERGE-0000000008
    Processor: KSTREAM-BRANCH-0000000015 (stores: [])
      --> KSTREAM-BRANCHCHILD-0000000016, KSTREAM-BRANCHCHILD-0000000017
      <-- KSTREAM-PEEK-0000000009
    Processor: KSTREAM-MAP-0000000010 (stores: [])
      --> balance-repartition-filter
      <-- KSTREAM-PEEK-0000000009
    Processor: KSTREAM-BRANCHCHILD-0000000016 (stores: [])
      --> KSTREAM-SINK-0000000018
      <-- KSTREAM-BRANCH-0000000015
    Processor: KSTREAM-BRANCHCHILD-0000000017 (stores: [])
      --> KSTREAM-SINK-0000000019
      <-- KSTREAM-BRANCH-0000000015
    Processor: balance-repartition-filter (stores: [])
      --> balance-repartition-sink
      <-- KSTREAM-MAP-0000000010
    Sink: KSTREAM-SINK-0000000018 (topic: rails-foo-topic)
      <-- KSTREAM-BRANCHCHILD-0000000016
    Sink: KSTREAM-SINK-0000000019 (topic: rails-bar-topic)
      <-- KSTREAM-BRANCHCHILD-0000000017
    Sink: balance-repartition-sink (topic: balance-repartition)
      <-- balance-repartition-filter

  Sub-topology: 1
    Source: balance-repartition-source (topics: [balance-repartition])
      --> KSTREAM-AGGREGATE-0000000011
    Processor: KSTREAM-AGGREGATE-0000000011 (stores: [balance])
      --> none
      <-- balance-repartition-source

";
        assert_eq!(t.describe().to_string(), expected);
    }
}
