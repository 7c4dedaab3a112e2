//! Several Strom processes form one cluster (the controller quorum and the
//! broker lifecycle): real processes on loopback through strom-testkit,
//! seen through librdkafka (the `rdkafka` crate) and Strom's own admin.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};

mod common;

use common::cluster::{DEADLINE, eventually, rd_brokers, strom_admin, three_nodes};

fn rd_consumer(bootstrap: &str) -> BaseConsumer {
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "cluster-test")
        .create()
        .unwrap()
}

fn rd_admin(bootstrap: &str) -> AdminClient<DefaultClientContext> {
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap()
}

async fn create_topic(bootstrap: &str, name: &str, partitions: i32, rf: i32) -> Result<(), String> {
    let admin = rd_admin(bootstrap);
    // Short: after a failover a client may first ask the dead controller.
    let options = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics(
            &[NewTopic::new(name, partitions, TopicReplication::Fixed(rf))],
            &options,
        )
        .await
        .map_err(|e| e.to_string())?;
    match &results[0] {
        Ok(_) => Ok(()),
        Err((_, code)) => Err(format!("{code:?}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_form_one_cluster_and_any_node_takes_admin_requests() {
    let cluster = three_nodes().await;
    let ids = cluster.node_ids();
    // Every node lists the three brokers, the same cluster id and controller.
    let mut seen = Vec::new();
    for &id in &ids {
        let bootstrap = cluster.addr(id).to_string();
        let b = bootstrap.clone();
        let brokers = eventually("three brokers", move || {
            let found = rd_brokers(&b);
            (found == vec![1, 2, 3]).then_some(found)
        })
        .await;
        assert_eq!(brokers, vec![1, 2, 3]);
        let described = strom_admin(&bootstrap).describe_cluster().await.unwrap();
        assert_eq!(described.brokers.len(), 3);
        seen.push((described.cluster_id, described.controller));
    }
    assert!(seen[0].0.as_ref().is_some_and(|c| c.len() == 22));
    assert!(
        seen.iter().all(|s| *s == seen[0]),
        "nodes disagree: {seen:?}"
    );
    let controller = seen[0].1.unwrap();
    // A topic with three replicas created through a node that is not the
    // active controller: every node's metadata shows it.
    let other = *ids.iter().find(|id| **id != controller).unwrap();
    create_topic(&cluster.addr(other).to_string(), "replicated", 3, 3)
        .await
        .unwrap();
    for &id in &ids {
        let bootstrap = cluster.addr(id).to_string();
        let replicas = eventually("the topic everywhere", move || {
            let consumer = rd_consumer(&bootstrap);
            let m = consumer
                .fetch_metadata(Some("replicated"), Duration::from_secs(5))
                .ok()?;
            let t = m.topics().first()?;
            let replicas: Vec<usize> = t.partitions().iter().map(|p| p.replicas().len()).collect();
            (replicas.len() == 3).then_some(replicas)
        })
        .await;
        assert_eq!(replicas, vec![3, 3, 3]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_active_controller_elects_another_and_admin_requests_succeed_again() {
    let mut cluster = three_nodes().await;
    let first = cluster.addr(1).to_string();
    let old = strom_admin(&first)
        .describe_cluster()
        .await
        .unwrap()
        .controller
        .unwrap();
    cluster.kill(old).await.unwrap();
    let survivor = *cluster.node_ids().iter().find(|id| **id != old).unwrap();
    let bootstrap = cluster.addr(survivor).to_string();
    // Admin requests keep coming until one succeeds on the new controller.
    let deadline = Instant::now() + DEADLINE;
    loop {
        match create_topic(&bootstrap, "after-failover", 1, 1).await {
            Ok(()) => break,
            Err(e) => assert!(Instant::now() < deadline, "never created: {e}"),
        }
    }
    let b = bootstrap.clone();
    let brokers = eventually("the killed broker fenced", move || {
        let found = rd_brokers(&b);
        (found.len() == 2).then_some(found)
    })
    .await;
    assert!(!brokers.contains(&old));
    let new = strom_admin(&bootstrap)
        .describe_cluster()
        .await
        .unwrap()
        .controller;
    assert!(
        new.is_some_and(|c| c != old),
        "controller {new:?} after killing {old}"
    );
    // The killed node comes back with its data and rejoins.
    cluster.restart(old).await.unwrap();
    let b = cluster.addr(old).to_string();
    eventually("three brokers again", move || {
        (rd_brokers(&b) == vec![1, 2, 3]).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_broker_is_fenced_after_its_session_and_unfenced_when_it_resumes() {
    let cluster = three_nodes().await;
    let first = cluster.addr(1).to_string();
    let controller = strom_admin(&first)
        .describe_cluster()
        .await
        .unwrap()
        .controller
        .unwrap();
    let paused = *cluster
        .node_ids()
        .iter()
        .find(|id| **id != controller)
        .unwrap();
    cluster.pause(paused).unwrap();
    let watcher = cluster.addr(controller).to_string();
    let b = watcher.clone();
    eventually("the paused broker fenced", move || {
        (!rd_brokers(&b).contains(&paused)).then_some(())
    })
    .await;
    cluster.resume(paused).unwrap();
    eventually("the broker unfenced", move || {
        (rd_brokers(&watcher) == vec![1, 2, 3]).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_majority_of_controllers_metadata_writes_fail_and_resume_when_one_returns() {
    let mut cluster = three_nodes().await;
    let [a, b, c] = cluster.node_ids()[..] else {
        unreachable!()
    };
    cluster.kill(b).await.unwrap();
    cluster.kill(c).await.unwrap();
    let bootstrap = cluster.addr(a).to_string();
    // One request to the survivor itself (a client would redirect it to the
    // controller it knows, whose freed port another test may have taken).
    let survivor = cluster.addr(a);
    let refused = tokio::task::spawn_blocking(move || {
        common::raw::RawConnection::connect(survivor, Duration::from_secs(30))
            .unwrap()
            .create_topic("no-quorum", 1, 1)
            .unwrap()
    })
    .await
    .unwrap();
    // REQUEST_TIMED_OUT after the controller's write timeout.
    assert_eq!(refused.0, 7, "a write without a quorum: {refused:?}");
    assert!(
        rd_consumer(&bootstrap)
            .fetch_metadata(Some("no-quorum"), Duration::from_secs(5))
            .map(|m| m.topics().iter().all(|t| t.partitions().is_empty()))
            .unwrap_or(true)
    );
    cluster.restart(b).await.unwrap();
    let deadline = Instant::now() + DEADLINE;
    loop {
        match create_topic(&bootstrap, "with-quorum", 1, 1).await {
            Ok(()) => break,
            Err(e) => assert!(Instant::now() < deadline, "never created: {e}"),
        }
    }
}
