//! strom-client's admin client against the real broker, cross-checked with
//! an independent client (librdkafka): what one creates, alters, commits or
//! deletes, the other sees; and Kafka's error codes for what must fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{BrokerProcess, Poller, flush};
use rdkafka::admin::{
    AdminClient, AdminOptions, ConfigSource as RdConfigSource, NewTopic as RdNewTopic,
    ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::BaseRecord;
use rdkafka::{Offset, TopicPartitionList};
use strom_client::admin::{
    AlterConfigOp, CommittedOffset, ConfigResource, ConfigSource, IsolationLevel, NewTopic,
    OffsetSpec, TopicPartition,
};
use strom_client::{Admin, ClientConfig, Error, ErrorCode};

/// How long anything asynchronous (a group settling, a commit) may take in a
/// debug build.
const SETTLE: Duration = Duration::from_secs(60);
/// librdkafka's blocking calls.
const RD_TIMEOUT: Duration = Duration::from_secs(30);

fn start(dir: &tempfile::TempDir, properties: &[&str]) -> BrokerProcess {
    BrokerProcess::start(&dir.path().join("broker"), properties)
}

fn admin(broker: &BrokerProcess) -> Admin {
    let config: ClientConfig = [
        ("bootstrap.servers", broker.bootstrap.as_str()),
        ("default.api.timeout.ms", "30000"),
    ]
    .into_iter()
    .collect();
    Admin::new(&config).unwrap()
}

fn rd_admin(broker: &BrokerProcess) -> AdminClient<DefaultClientContext> {
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .create()
        .unwrap()
}

fn code<T: std::fmt::Debug>(result: &Result<T, Error>) -> Option<ErrorCode> {
    match result {
        Err(e) => e.code(),
        Ok(v) => panic!("expected an error, got {v:?}"),
    }
}

fn tp(topic: &str, partition: i32) -> TopicPartition {
    TopicPartition::new(topic, partition)
}

/// The partition count librdkafka's metadata gives `topic` (None: unknown).
fn rd_partitions(broker: &BrokerProcess, topic: &str) -> Option<usize> {
    tokio::task::block_in_place(|| {
        let consumer = broker.consumer();
        let metadata = consumer.fetch_metadata(Some(topic), RD_TIMEOUT).unwrap();
        let t = metadata.topics().iter().find(|t| t.name() == topic)?;
        t.error().is_none().then(|| t.partitions().len())
    })
}

/// A topic config's value as librdkafka describes it.
async fn rd_config(broker: &BrokerProcess, topic: &str, name: &str) -> (Option<String>, bool) {
    let admin = rd_admin(broker);
    let results = admin
        .describe_configs(&[ResourceSpecifier::Topic(topic)], &AdminOptions::new())
        .await
        .unwrap();
    let resource = results.into_iter().next().unwrap().unwrap();
    let entry = resource.get(name).unwrap();
    (entry.value.clone(), entry.source == RdConfigSource::Default)
}

/// Polls `condition` (async) until it holds or `SETTLE` passes.
async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + SETTLE;
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_created_here_are_seen_by_librdkafka_and_back() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(&dir, &[]);
    let admin = admin(&broker);

    // validate_only checks without creating.
    let validated = admin
        .create_topics(&[NewTopic::new("gamma", 2, 1)], true)
        .await;
    assert_eq!(validated["gamma"].as_ref().unwrap().partitions, 2);
    let described = admin.describe_topics(&["gamma"]).await;
    assert_eq!(
        code(&described["gamma"]),
        Some(ErrorCode::UnknownTopicOrPartition)
    );

    let created = admin
        .create_topics(
            &[
                NewTopic::new("alpha", 3, 1).config("retention.ms", "12345"),
                NewTopic::new("beta", 1, -1),
            ],
            false,
        )
        .await;
    let alpha = created["alpha"].as_ref().unwrap();
    assert_eq!((alpha.partitions, alpha.replication_factor), (3, 1));
    assert!(!alpha.topic_id.is_nil());
    let retention = alpha
        .configs
        .iter()
        .find(|c| c.name == "retention.ms")
        .unwrap();
    assert_eq!(retention.value.as_deref(), Some("12345"));
    assert_eq!(retention.source, ConfigSource::DynamicTopic);
    assert!(created["beta"].is_ok(), "{created:?}");
    assert_eq!(rd_partitions(&broker, "alpha"), Some(3));
    assert_eq!(
        rd_config(&broker, "alpha", "retention.ms").await,
        (Some("12345".to_owned()), false)
    );

    // Kafka's error codes, each topic on its own.
    let failed = admin
        .create_topics(
            &[
                NewTopic::new("alpha", 1, 1),
                NewTopic::new("zero", 0, 1),
                NewTopic::new("badvalue", 1, 1).config("retention.ms", "soon"),
                NewTopic::new("badname", 1, 1).config("no.such.config", "1"),
                NewTopic::new("fine", 1, 1),
            ],
            false,
        )
        .await;
    assert_eq!(code(&failed["alpha"]), Some(ErrorCode::TopicAlreadyExists));
    assert_eq!(code(&failed["zero"]), Some(ErrorCode::InvalidPartitions));
    assert_eq!(code(&failed["badvalue"]), Some(ErrorCode::InvalidConfig));
    assert_eq!(code(&failed["badname"]), Some(ErrorCode::InvalidConfig));
    assert!(failed["fine"].is_ok());

    // librdkafka creates, this client describes.
    let rd = rd_admin(&broker);
    let results = rd
        .create_topics(
            &[RdNewTopic::new("delta", 2, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    assert!(results[0].is_ok(), "{results:?}");
    let described = admin.describe_topics(&["delta", "nope"]).await;
    let delta = described["delta"].as_ref().unwrap();
    assert_eq!(delta.name, "delta");
    assert!(!delta.id.is_nil() && !delta.internal);
    assert_eq!(delta.partitions.len(), 2);
    let brokers = admin.describe_cluster().await.unwrap().brokers;
    for (i, p) in delta.partitions.iter().enumerate() {
        assert_eq!(p.partition, i32::try_from(i).unwrap());
        assert_eq!(p.leader, brokers[0].id);
        assert_eq!(
            (p.replicas.as_slice(), p.isr.as_slice()),
            (&[p.leader][..], &[p.leader][..])
        );
    }
    assert_eq!(
        code(&described["nope"]),
        Some(ErrorCode::UnknownTopicOrPartition)
    );

    let names = |listings: Vec<strom_client::admin::TopicListing>| -> Vec<String> {
        listings.into_iter().map(|l| l.name).collect()
    };
    assert_eq!(
        names(admin.list_topics(false).await.unwrap()),
        ["alpha", "beta", "delta", "fine"]
    );

    // Partitions are only ever added.
    let grown = admin
        .create_partitions(
            &BTreeMap::from([
                ("alpha".to_owned(), 5),
                ("delta".to_owned(), 1),
                ("nope".to_owned(), 4),
            ]),
            false,
        )
        .await;
    assert!(grown["alpha"].is_ok(), "{grown:?}");
    assert_eq!(code(&grown["delta"]), Some(ErrorCode::InvalidPartitions));
    assert_eq!(
        code(&grown["nope"]),
        Some(ErrorCode::UnknownTopicOrPartition)
    );
    assert_eq!(rd_partitions(&broker, "alpha"), Some(5));
    let checked = admin
        .create_partitions(&BTreeMap::from([("delta".to_owned(), 4)]), true)
        .await;
    assert!(checked["delta"].is_ok());
    assert_eq!(rd_partitions(&broker, "delta"), Some(2));

    let deleted = admin.delete_topics(&["beta", "nope"]).await;
    assert!(deleted["beta"].is_ok());
    assert_eq!(
        code(&deleted["nope"]),
        Some(ErrorCode::UnknownTopicOrPartition)
    );
    assert_eq!(rd_partitions(&broker, "beta"), None);
    // librdkafka deletes, this client no longer sees it.
    let results = rd
        .delete_topics(&["fine"], &AdminOptions::new())
        .await
        .unwrap();
    assert!(results[0].is_ok(), "{results:?}");
    assert_eq!(
        names(admin.list_topics(false).await.unwrap()),
        ["alpha", "delta"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configs_are_described_and_altered_incrementally() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(
        &dir,
        &["log.retention.hours=100", "log.segment.bytes=536870912"],
    );
    let admin = admin(&broker);
    broker_create(&broker, "conf", 1).await;
    let conf = ConfigResource::topic("conf");

    let alter = |ops: Vec<AlterConfigOp>| BTreeMap::from([(conf.clone(), ops)]);
    let result = admin
        .incremental_alter_configs(
            &alter(vec![
                AlterConfigOp::set("retention.ms", "60000"),
                AlterConfigOp::set("cleanup.policy", "compact"),
            ]),
            false,
        )
        .await;
    assert!(result[&conf].is_ok(), "{result:?}");
    assert_eq!(
        rd_config(&broker, "conf", "retention.ms").await,
        (Some("60000".to_owned()), false)
    );
    let result = admin
        .incremental_alter_configs(
            &alter(vec![AlterConfigOp::append("cleanup.policy", "delete")]),
            false,
        )
        .await;
    assert!(result[&conf].is_ok(), "{result:?}");
    assert_eq!(
        rd_config(&broker, "conf", "cleanup.policy")
            .await
            .0
            .as_deref(),
        Some("compact,delete")
    );
    let result = admin
        .incremental_alter_configs(
            &alter(vec![
                AlterConfigOp::subtract("cleanup.policy", "compact"),
                AlterConfigOp::delete("retention.ms"),
            ]),
            false,
        )
        .await;
    assert!(result[&conf].is_ok(), "{result:?}");
    assert_eq!(
        rd_config(&broker, "conf", "cleanup.policy")
            .await
            .0
            .as_deref(),
        Some("delete")
    );

    // Described here: the deleted setting falls back to the broker's
    // log.retention.hours. Kafka describes a value that only
    // log.retention.hours sets as DEFAULT_CONFIG with no synonyms (its
    // synonyms start at log.retention.ms); segment.bytes, which the broker's
    // log.segment.bytes sets, is STATIC_BROKER_CONFIG with its chain.
    let described = admin
        .describe_configs(std::slice::from_ref(&conf), true)
        .await;
    let entries = described[&conf].as_ref().unwrap();
    let retention = entries.iter().find(|e| e.name == "retention.ms").unwrap();
    assert_eq!(retention.value.as_deref(), Some("360000000"));
    assert_eq!(retention.source, ConfigSource::Default);
    assert!(retention.synonyms.is_empty(), "{retention:?}");
    assert!(!retention.read_only && !retention.sensitive);
    let segment = entries.iter().find(|e| e.name == "segment.bytes").unwrap();
    assert_eq!(
        (segment.value.as_deref(), segment.source),
        (Some("536870912"), ConfigSource::StaticBroker)
    );
    assert!(
        segment
            .synonyms
            .iter()
            .any(|s| s.name == "log.segment.bytes" && s.value.as_deref() == Some("536870912")),
        "{segment:?}"
    );
    let policy = entries.iter().find(|e| e.name == "cleanup.policy").unwrap();
    assert_eq!(policy.source, ConfigSource::DynamicTopic);
    let segment_ms = entries.iter().find(|e| e.name == "segment.ms").unwrap();
    assert!(segment_ms.is_default && segment_ms.source == ConfigSource::Default);
    // Without synonyms, none are sent.
    let plain = admin
        .describe_configs(std::slice::from_ref(&conf), false)
        .await;
    assert!(
        plain[&conf]
            .as_ref()
            .unwrap()
            .iter()
            .all(|e| e.synonyms.is_empty())
    );

    // The broker's own configs, asked of that broker.
    let cluster = admin.describe_cluster().await.unwrap();
    let me = ConfigResource::broker(cluster.brokers[0].id);
    let described = admin
        .describe_configs(std::slice::from_ref(&me), false)
        .await;
    let hours = described[&me]
        .as_ref()
        .unwrap()
        .iter()
        .find(|e| e.name == "log.retention.hours")
        .unwrap()
        .clone();
    assert_eq!(hours.value.as_deref(), Some("100"));
    assert_eq!(hours.source, ConfigSource::StaticBroker);

    // validate_only changes nothing; bad values and names are INVALID_CONFIG;
    // an unknown topic is UNKNOWN_TOPIC_OR_PARTITION.
    let result = admin
        .incremental_alter_configs(&alter(vec![AlterConfigOp::set("retention.ms", "1")]), true)
        .await;
    assert!(result[&conf].is_ok());
    assert_eq!(
        rd_config(&broker, "conf", "retention.ms")
            .await
            .0
            .as_deref(),
        Some("360000000")
    );
    let nope = ConfigResource::topic("nope");
    let result = admin
        .incremental_alter_configs(
            &BTreeMap::from([
                (
                    conf.clone(),
                    vec![AlterConfigOp::set("retention.ms", "soon")],
                ),
                (nope.clone(), vec![AlterConfigOp::set("retention.ms", "1")]),
            ]),
            false,
        )
        .await;
    assert_eq!(code(&result[&conf]), Some(ErrorCode::InvalidConfig));
    assert_eq!(
        code(&result[&nope]),
        Some(ErrorCode::UnknownTopicOrPartition)
    );
    let result = admin
        .incremental_alter_configs(
            &alter(vec![AlterConfigOp::set("no.such.config", "1")]),
            false,
        )
        .await;
    assert_eq!(code(&result[&conf]), Some(ErrorCode::InvalidConfig));
    let described = admin
        .describe_configs(std::slice::from_ref(&nope), false)
        .await;
    assert_eq!(
        code(&described[&nope]),
        Some(ErrorCode::UnknownTopicOrPartition)
    );
    // Dynamic broker configs: the cluster default, then this broker's own,
    // each taking over the topic's value in turn; librdkafka sees the
    // broker's.
    let topic_retention = || async {
        let described = admin
            .describe_configs(std::slice::from_ref(&conf), false)
            .await;
        let entry = described[&conf]
            .as_ref()
            .unwrap()
            .iter()
            .find(|e| e.name == "retention.ms")
            .unwrap()
            .clone();
        (entry.value, entry.source)
    };
    let defaults = ConfigResource::broker_defaults();
    let set_retention = |resource: &ConfigResource, ms: &str| {
        BTreeMap::from([(
            resource.clone(),
            vec![AlterConfigOp::set("log.retention.ms", ms)],
        )])
    };
    let result = admin
        .incremental_alter_configs(&set_retention(&defaults, "7200000"), false)
        .await;
    assert!(result[&defaults].is_ok(), "{result:?}");
    assert_eq!(
        topic_retention().await,
        (
            Some("7200000".to_owned()),
            ConfigSource::DynamicDefaultBroker
        )
    );
    let result = admin
        .incremental_alter_configs(&set_retention(&me, "3600000"), false)
        .await;
    assert!(result[&me].is_ok(), "{result:?}");
    assert_eq!(
        topic_retention().await,
        (Some("3600000".to_owned()), ConfigSource::DynamicBroker)
    );
    let rd_broker = rd_admin(&broker)
        .describe_configs(
            &[ResourceSpecifier::Broker(cluster.brokers[0].id)],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    let resource = rd_broker.into_iter().next().unwrap().unwrap();
    let entry = resource.get("log.retention.ms").unwrap();
    assert_eq!(entry.value.as_deref(), Some("3600000"));
    assert_eq!(entry.source, RdConfigSource::DynamicBroker);
}

/// Creates `topic` with librdkafka.
async fn broker_create(broker: &BrokerProcess, topic: &str, partitions: i32) {
    let results = rd_admin(broker)
        .create_topics(
            &[RdNewTopic::new(
                topic,
                partitions,
                TopicReplication::Fixed(1),
            )],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    assert!(results[0].is_ok(), "{results:?}");
}

/// Produces `count` records to `topic`/`partition` with librdkafka, the
/// i-th with timestamp `base_ts + i`.
fn rd_produce(broker: &BrokerProcess, topic: &str, partition: i32, count: i64, base_ts: i64) {
    tokio::task::block_in_place(|| {
        let producer = broker.producer(&[]);
        for i in 0..count {
            let value = format!("value-{i}");
            producer
                .send(
                    BaseRecord::<(), _>::to(topic)
                        .partition(partition)
                        .payload(&value)
                        .timestamp(base_ts + i),
                )
                .unwrap();
        }
        flush(&producer);
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_and_records_agree_with_librdkafka() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(&dir, &[]);
    let admin = admin(&broker);
    broker_create(&broker, "records", 2).await;
    let base_ts = 1_700_000_000_000;
    rd_produce(&broker, "records", 0, 10, base_ts);
    rd_produce(&broker, "records", 1, 3, base_ts + 100);

    let specs = BTreeMap::from([
        (tp("records", 0), OffsetSpec::Latest),
        (tp("records", 1), OffsetSpec::Earliest),
    ]);
    let listed = admin
        .list_offsets(&specs, IsolationLevel::ReadUncommitted)
        .await;
    assert_eq!(listed[&tp("records", 0)].as_ref().unwrap().offset, 10);
    assert_eq!(listed[&tp("records", 1)].as_ref().unwrap().offset, 0);
    let (low, high) = tokio::task::block_in_place(|| {
        broker
            .consumer()
            .fetch_watermarks("records", 1, RD_TIMEOUT)
            .unwrap()
    });
    assert_eq!((low, high), (0, 3));

    let specs = BTreeMap::from([
        (tp("records", 0), OffsetSpec::MaxTimestamp),
        (tp("records", 1), OffsetSpec::Timestamp(base_ts + 101)),
    ]);
    let listed = admin
        .list_offsets(&specs, IsolationLevel::ReadCommitted)
        .await;
    let max = listed[&tp("records", 0)].as_ref().unwrap();
    assert_eq!((max.offset, max.timestamp), (9, base_ts + 9));
    let at = listed[&tp("records", 1)].as_ref().unwrap();
    assert_eq!(at.offset, 1);
    // librdkafka finds the same offset for the timestamp.
    let rd_at = tokio::task::block_in_place(|| {
        let mut list = TopicPartitionList::new();
        list.add_partition_offset("records", 1, Offset::Offset(base_ts + 101))
            .unwrap();
        broker
            .consumer()
            .offsets_for_times(list, RD_TIMEOUT)
            .unwrap()
    });
    assert_eq!(
        rd_at.find_partition("records", 1).unwrap().offset(),
        Offset::Offset(at.offset)
    );

    // Records deleted here move librdkafka's low watermark.
    let deleted = admin
        .delete_records(&BTreeMap::from([
            (tp("records", 0), 4),
            (tp("records", 1), -1),
            (tp("records", 7), 1),
            (tp("nope", 0), 1),
        ]))
        .await;
    assert_eq!(*deleted[&tp("records", 0)].as_ref().unwrap(), 4);
    assert_eq!(*deleted[&tp("records", 1)].as_ref().unwrap(), 3);
    assert_eq!(
        code(&deleted[&tp("records", 7)]),
        Some(ErrorCode::UnknownTopicOrPartition)
    );
    assert_eq!(
        code(&deleted[&tp("nope", 0)]),
        Some(ErrorCode::UnknownTopicOrPartition)
    );
    let (low, high) = tokio::task::block_in_place(|| {
        broker
            .consumer()
            .fetch_watermarks("records", 0, RD_TIMEOUT)
            .unwrap()
    });
    assert_eq!((low, high), (4, 10));
    let beyond = admin
        .delete_records(&BTreeMap::from([(tp("records", 0), 11)]))
        .await;
    assert_eq!(
        code(&beyond[&tp("records", 0)]),
        Some(ErrorCode::OffsetOutOfRange)
    );
    let earliest = admin
        .list_offsets(
            &BTreeMap::from([(tp("records", 0), OffsetSpec::Earliest)]),
            IsolationLevel::ReadUncommitted,
        )
        .await;
    assert_eq!(earliest[&tp("records", 0)].as_ref().unwrap().offset, 4);

    // The cluster: one broker, where the test connected.
    let cluster = admin.describe_cluster().await.unwrap();
    assert!(
        cluster
            .cluster_id
            .as_deref()
            .is_some_and(|id| !id.is_empty())
    );
    assert_eq!(cluster.brokers.len(), 1);
    let b = &cluster.brokers[0];
    assert_eq!(format!("{}:{}", b.host, b.port), broker.bootstrap);
    assert_eq!(cluster.controller, Some(b.id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_librdkafka_group_is_listed_described_and_its_offsets_managed() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(&dir, &[]);
    let admin = admin(&broker);
    broker_create(&broker, "grouped", 2).await;
    rd_produce(&broker, "grouped", 0, 6, 1_700_000_000_000);
    rd_produce(&broker, "grouped", 1, 4, 1_700_000_000_000);

    // A librdkafka member reads everything and commits each record.
    let consumer: BaseConsumer = broker
        .group_config("g1")
        .set("client.id", "rd-member")
        .create()
        .unwrap();
    consumer.subscribe(&["grouped"]).unwrap();
    let poller = Poller::spawn(consumer, |consumer, m| {
        consumer.commit_message(m, CommitMode::Sync).unwrap();
    });
    eventually("the commits of all 10 records", || async {
        admin
            .list_group_offsets("g1", None)
            .await
            .is_ok_and(|offsets| {
                let offset = |p| {
                    offsets
                        .get(&tp("grouped", p))
                        .cloned()
                        .flatten()
                        .map(|o| o.offset)
                };
                (offset(0), offset(1)) == (Some(6), Some(4))
            })
    })
    .await;
    let only_one = admin
        .list_group_offsets("g1", Some(&[tp("grouped", 1), tp("grouped", 5)]))
        .await
        .unwrap();
    assert_eq!(only_one[&tp("grouped", 1)].as_ref().unwrap().offset, 4);
    assert_eq!(only_one.len(), 2);
    assert_eq!(only_one[&tp("grouped", 5)], None);

    let listed = admin.list_groups().await.unwrap();
    let g1 = listed.iter().find(|g| g.group_id == "g1").unwrap();
    assert_eq!(g1.protocol_type, "consumer");
    assert_eq!(g1.state.as_deref(), Some("Stable"));
    assert_eq!(g1.group_type.as_deref(), Some("classic"));

    let ids = |listings: Vec<strom_client::admin::GroupListing>| -> Vec<String> {
        listings.into_iter().map(|g| g.group_id).collect()
    };
    let stable = admin.list_groups_matching(&["stable"], &[]).await.unwrap();
    assert_eq!(ids(stable), ["g1"]);
    let classic = admin.list_groups_matching(&[], &["classic"]).await.unwrap();
    assert_eq!(ids(classic), ["g1"]);
    assert!(
        admin
            .list_groups_matching(&["Empty"], &[])
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        admin
            .list_groups_matching(&[], &["consumer"])
            .await
            .unwrap()
            .is_empty()
    );

    // The committed offsets live in Kafka's internal topic, listed only
    // when asked for.
    let topics = admin.list_topics(true).await.unwrap();
    assert!(
        topics
            .iter()
            .any(|t| t.name == "__consumer_offsets" && t.internal),
        "{topics:?}"
    );
    let topics = admin.list_topics(false).await.unwrap();
    assert!(topics.iter().all(|t| !t.internal), "{topics:?}");

    let described = admin.describe_groups(&["g1", "nope"]).await;
    let g1 = described["g1"].as_ref().unwrap();
    assert_eq!(
        (
            g1.state.as_str(),
            g1.protocol_type.as_str(),
            g1.group_type.as_str()
        ),
        ("Stable", "consumer", "classic")
    );
    assert!(!g1.protocol.is_empty());
    let cluster = admin.describe_cluster().await.unwrap();
    assert_eq!(g1.coordinator, cluster.brokers[0].id);
    assert_eq!(g1.members.len(), 1);
    let member = &g1.members[0];
    assert_eq!(member.client_id, "rd-member");
    assert!(!member.client_host.is_empty() && !member.member_id.is_empty());
    assert_eq!(
        member.assignment,
        BTreeMap::from([("grouped".to_owned(), vec![0, 1])])
    );
    assert_eq!(code(&described["nope"]), Some(ErrorCode::GroupIdNotFound));

    // While the member is there, the group can be neither deleted nor
    // committed to from outside.
    let deleted = admin.delete_groups(&["g1"]).await;
    assert_eq!(code(&deleted["g1"]), Some(ErrorCode::NonEmptyGroup));
    let altered = admin
        .alter_group_offsets(
            "g1",
            &BTreeMap::from([(tp("grouped", 0), CommittedOffset::new(1))]),
        )
        .await
        .unwrap();
    assert_eq!(
        code(&altered[&tp("grouped", 0)]),
        Some(ErrorCode::UnknownMemberId)
    );
    let deleted = admin
        .delete_group_offsets("g1", &[tp("grouped", 0)])
        .await
        .unwrap();
    assert_eq!(
        code(&deleted[&tp("grouped", 0)]),
        Some(ErrorCode::GroupSubscribedToTopic)
    );

    tokio::task::block_in_place(|| poller.close());
    eventually("the group to empty", || async {
        admin.describe_groups(&["g1"]).await["g1"]
            .as_ref()
            .is_ok_and(|g| g.state == "Empty" && g.members.is_empty())
    })
    .await;

    // Offsets altered here are what a librdkafka member of the group reads.
    let mut epoch_and_metadata = CommittedOffset::new(1);
    epoch_and_metadata.metadata = "by strom-client".to_owned();
    let altered = admin
        .alter_group_offsets(
            "g1",
            &BTreeMap::from([
                (tp("grouped", 0), CommittedOffset::new(3)),
                (tp("grouped", 1), epoch_and_metadata.clone()),
            ]),
        )
        .await
        .unwrap();
    assert!(altered.values().all(Result::is_ok), "{altered:?}");
    let committed = tokio::task::block_in_place(|| {
        let consumer: BaseConsumer = broker.group_config("g1").create().unwrap();
        let mut list = TopicPartitionList::new();
        list.add_partition("grouped", 0);
        list.add_partition("grouped", 1);
        consumer.committed_offsets(list, RD_TIMEOUT).unwrap()
    });
    let rd_offset = |p| committed.find_partition("grouped", p).unwrap().offset();
    assert_eq!(
        (rd_offset(0), rd_offset(1)),
        (Offset::Offset(3), Offset::Offset(1))
    );
    let offsets = admin.list_group_offsets("g1", None).await.unwrap();
    assert_eq!(offsets[&tp("grouped", 1)], Some(epoch_and_metadata));

    let deleted = admin
        .delete_group_offsets("g1", &[tp("grouped", 1)])
        .await
        .unwrap();
    assert!(deleted[&tp("grouped", 1)].is_ok(), "{deleted:?}");
    let offsets = admin.list_group_offsets("g1", None).await.unwrap();
    assert_eq!(
        offsets,
        BTreeMap::from([(tp("grouped", 0), Some(CommittedOffset::new(3)))])
    );

    let deleted = admin.delete_groups(&["g1", "nope"]).await;
    assert!(deleted["g1"].is_ok(), "{deleted:?}");
    assert_eq!(code(&deleted["nope"]), Some(ErrorCode::GroupIdNotFound));
    assert_eq!(
        code(&admin.describe_groups(&["g1"]).await["g1"]),
        Some(ErrorCode::GroupIdNotFound)
    );
    assert!(
        admin
            .list_groups()
            .await
            .unwrap()
            .iter()
            .all(|g| g.group_id != "g1")
    );
    assert_eq!(
        code(
            &admin
                .delete_group_offsets("nope", &[tp("grouped", 0)])
                .await
        ),
        Some(ErrorCode::GroupIdNotFound)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kip_848_group_is_described_through_consumer_group_describe() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(&dir, &["group.consumer.heartbeat.interval.ms=500"]);
    let admin = admin(&broker);
    broker_create(&broker, "next-gen", 3).await;
    let consumer: BaseConsumer = broker
        .group_config("kip848")
        .set("group.protocol", "consumer")
        .set("client.id", "rd-next-gen")
        .create()
        .unwrap();
    consumer.subscribe(&["next-gen"]).unwrap();
    let poller = Poller::spawn(consumer, |_, _| {});

    eventually("the member to own every partition", || async {
        admin.describe_groups(&["kip848"]).await["kip848"]
            .as_ref()
            .is_ok_and(|g| {
                g.members.len() == 1
                    && g.members[0].assignment
                        == BTreeMap::from([("next-gen".to_owned(), vec![0, 1, 2])])
            })
    })
    .await;
    let described = admin.describe_groups(&["kip848"]).await;
    let group = described["kip848"].as_ref().unwrap();
    assert_eq!(
        (group.group_type.as_str(), group.protocol_type.as_str()),
        ("consumer", "consumer")
    );
    assert_eq!(group.state, "Stable");
    assert!(!group.protocol.is_empty(), "the server-side assignor");
    assert_eq!(group.members[0].client_id, "rd-next-gen");
    let listed = admin.list_groups().await.unwrap();
    let listing = listed.iter().find(|g| g.group_id == "kip848").unwrap();
    assert_eq!(listing.group_type.as_deref(), Some("consumer"));
    let consumer = admin
        .list_groups_matching(&[], &["consumer"])
        .await
        .unwrap();
    assert_eq!(consumer.len(), 1);
    assert_eq!(consumer[0].group_id, "kip848");

    tokio::task::block_in_place(|| poller.close());
    eventually("the member to leave", || async {
        admin.describe_groups(&["kip848"]).await["kip848"]
            .as_ref()
            .is_ok_and(|g| g.members.is_empty())
    })
    .await;
    let deleted = admin.delete_groups(&["kip848"]).await;
    assert!(deleted["kip848"].is_ok(), "{deleted:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_made_while_the_broker_is_down_complete_once_it_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("broker");
    let broker = start(&dir, &[]);
    let listen = broker.bootstrap.clone();
    let admin = std::sync::Arc::new(admin(&broker));
    let created = admin
        .create_topics(&[NewTopic::new("kept", 2, 1)], false)
        .await;
    assert!(created["kept"].is_ok(), "{created:?}");
    // A group that only commits (no members), created by the commit.
    let altered = admin
        .alter_group_offsets(
            "keeper",
            &BTreeMap::from([(tp("kept", 1), CommittedOffset::new(0))]),
        )
        .await
        .unwrap();
    assert!(altered.values().all(Result::is_ok), "{altered:?}");
    tokio::task::block_in_place(|| broker.stop());

    // Asked while nothing listens: the calls retry lost connections.
    let offsets = tokio::spawn({
        let admin = std::sync::Arc::clone(&admin);
        async move { admin.list_group_offsets("keeper", None).await }
    });
    let described = tokio::spawn({
        let admin = std::sync::Arc::clone(&admin);
        async move { admin.describe_topics(&["kept"]).await }
    });
    let _broker = tokio::task::block_in_place(|| BrokerProcess::start_at(&data, &listen, &[]));
    let offsets = offsets.await.unwrap().unwrap();
    assert_eq!(offsets[&tp("kept", 1)].as_ref().map(|o| o.offset), Some(0));
    let described = described.await.unwrap();
    assert_eq!(described["kept"].as_ref().unwrap().partitions.len(), 2);
}
