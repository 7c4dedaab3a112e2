//! Starting the real `strom` binary for tests, and librdkafka clients for it.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::message::BorrowedMessage;
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::{Offset, TopicPartitionList};

pub mod cluster;
pub mod numbered;
pub mod raw;

/// How long a broker may take to print its ready line (debug build, recovery).
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a clean shutdown may take.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// A `strom broker` child process on a free port. Killed on drop.
#[derive(Debug)]
pub struct BrokerProcess {
    child: Option<Child>,
    pub bootstrap: String,
    /// `http://HOST:PORT/metrics`, from the broker's second stdout line.
    pub metrics_url: String,
    pub data_dir: PathBuf,
    stderr_path: PathBuf,
}

impl BrokerProcess {
    /// Starts a broker with its data in `data_dir` and extra `--set` properties.
    pub fn start(data_dir: &Path, properties: &[&str]) -> Self {
        Self::start_at(data_dir, "127.0.0.1:0", properties)
    }

    /// Starts a broker listening on `listen` (a restart on the address an
    /// earlier broker had, for clients that reconnect).
    pub fn start_at(data_dir: &Path, listen: &str, properties: &[&str]) -> Self {
        Self::start_binary(
            Path::new(env!("CARGO_BIN_EXE_strom-e2e")),
            data_dir,
            listen,
            properties,
        )
    }

    /// Starts another `strom` binary (a benchmark's baseline build).
    pub fn start_binary(binary: &Path, data_dir: &Path, listen: &str, properties: &[&str]) -> Self {
        let stderr_path = data_dir.with_extension("stderr.log");
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stderr_path)
            .unwrap();
        let mut command = Command::new(binary);
        command
            // A free metrics port too: a restart on a fixed Kafka port
            // would otherwise take the default 9644, shared by parallel tests.
            .args([
                "broker",
                "--listen",
                listen,
                "--metrics",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(data_dir)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .env("STROM_LOG", "info");
        for p in properties {
            command.args(["--set", p]);
        }
        let mut child = command.spawn().expect("strom binary starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            // The ready line, then the metrics line.
            for _ in 0..2 {
                if let Some(Ok(line)) = lines.next() {
                    let _ = tx.send(line);
                }
            }
            // Keep draining so the broker never blocks on a full pipe.
            for _ in lines {}
        });
        let line = match rx.recv_timeout(READY_TIMEOUT) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "broker did not become ready; stderr:\n{}",
                    read_to_string(&stderr_path)
                );
            }
        };
        let addr = line
            .split("listening on ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("unexpected ready line {line:?}"))
            .to_owned();
        let metrics_line = rx
            .recv_timeout(READY_TIMEOUT)
            .unwrap_or_else(|_| panic!("no metrics line after the ready line"));
        let metrics_url = metrics_line
            .split("metrics on ")
            .nth(1)
            .unwrap_or_else(|| panic!("unexpected metrics line {metrics_line:?}"))
            .to_owned();
        Self {
            child: Some(child),
            bootstrap: addr,
            metrics_url,
            data_dir: data_dir.to_path_buf(),
            stderr_path,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// SIGTERM and wait for a clean exit (code 0).
    pub fn stop(mut self) {
        let mut child = self.child.take().unwrap();
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "broker exited with {status}; stderr:\n{}",
                    read_to_string(&self.stderr_path)
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "broker did not stop after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: a crash.
    pub fn kill9(mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    pub fn stderr(&self) -> String {
        read_to_string(&self.stderr_path)
    }

    pub fn producer(&self, settings: &[(&str, &str)]) -> BaseProducer {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.bootstrap)
            .set("linger.ms", "5");
        for (k, v) in settings {
            config.set(*k, *v);
        }
        config.create().expect("producer")
    }

    /// An admin client and a runtime to wait on its futures.
    pub fn admin(&self) -> (AdminClient<DefaultClientContext>, tokio::runtime::Runtime) {
        let admin = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create()
            .expect("admin client");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        (admin, runtime)
    }

    /// Creates `topic` with `partitions` partitions (replication factor 1).
    pub fn create_topic(&self, topic: &str, partitions: i32) {
        self.create_topic_with(topic, partitions, &[]);
    }

    /// Creates `topic` with `partitions` partitions and topic `configs`.
    pub fn create_topic_with(&self, topic: &str, partitions: i32, configs: &[(&str, &str)]) {
        let (admin, runtime) = self.admin();
        let mut new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
        for (k, v) in configs {
            new = new.set(k, v);
        }
        let result = runtime
            .block_on(admin.create_topics(&[new], &AdminOptions::new()))
            .unwrap();
        assert!(result[0].is_ok(), "{result:?}");
    }

    /// Settings of a group consumer that commits only when told to and
    /// starts at the beginning of partitions with no commit.
    pub fn group_config(&self, group: &str) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.bootstrap)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest");
        config
    }

    /// A consumer that reads by assignment and never joins its group.
    pub fn consumer(&self) -> BaseConsumer {
        ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("group.id", "strom-tests-unused")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .create()
            .expect("consumer")
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn read_to_string(path: &Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    s
}

/// A consumer polled on its own thread, handing each record to a callback,
/// until stopped; stopping closes the consumer (a dynamic group member
/// leaves its group).
pub struct Poller {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Poller {
    pub fn spawn<C: ConsumerContext + 'static>(
        consumer: BaseConsumer<C>,
        mut on_record: impl FnMut(&BaseConsumer<C>, &BorrowedMessage<'_>) + Send + 'static,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    if let Some(Ok(m)) = consumer.poll(Duration::from_millis(20)) {
                        on_record(&consumer, &m);
                    }
                }
            })
        };
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops polling and closes the consumer.
    pub fn close(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().expect("poller thread");
        }
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// Polls `producer` until everything is delivered.
pub fn flush(producer: &BaseProducer) {
    producer
        .flush(Duration::from_secs(60))
        .expect("all messages delivered");
}

/// Assigns `consumer` to `topic`/`partition` from `offset`.
pub fn assign(consumer: &BaseConsumer, topic: &str, partition: i32, offset: i64) {
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(topic, partition, Offset::Offset(offset))
        .unwrap();
    consumer.assign(&list).unwrap();
}

/// Waits up to `timeout` for `child` to exit and collects its output:
/// `Ok` if it exited, `Err` with what it wrote if it was still running at
/// the deadline and was killed.
pub fn wait_for_exit(
    mut child: Child,
    timeout: Duration,
) -> Result<std::process::Output, std::process::Output> {
    let exited = wait_until(timeout, || child.try_wait().unwrap().is_some());
    if !exited {
        let _ = child.kill();
    }
    let output = child.wait_with_output().unwrap();
    if exited { Ok(output) } else { Err(output) }
}

/// Waits up to `timeout` for `condition`.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    condition()
}
