//! `strom broker` and its properties as an operator gives them: security
//! settings Strom cannot honour yet stop it at start (failing closed), and
//! unknown properties are warned about with the name that was probably meant.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{BrokerProcess, wait_for_exit, wait_until};

/// How long a broker refusing its configuration may take to exit (debug
/// build); it exits before opening any file or port.
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `strom broker` with `args` and waits for it to exit, killing it at
/// the deadline (a broker that started would otherwise run forever).
fn broker_exit(args: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_strom-e2e"))
        .args(["broker", "--metrics", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_exit(child, EXIT_TIMEOUT).unwrap_or_else(|killed| killed)
}

#[test]
fn security_settings_stop_the_broker_instead_of_serving_plaintext() {
    // The command from the defect report: it used to start a plaintext
    // broker with no authentication on the SASL_SSL port.
    let output = broker_exit(&[
        "--set",
        "listeners=SASL_SSL://127.0.0.1:0",
        "--set",
        "sasl.enabled.mechanisms=PLAIN",
        "--set",
        "super.users=User:admin",
        "--set",
        "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "exited with {}", output.status);
    assert!(!stdout.contains("listening"), "it must not serve: {stdout}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains("listeners=SASL_SSL://127.0.0.1:0") && stderr.contains("SASL_SSL"),
        "{stderr}"
    );

    // Each kind of setting on its own, with a plaintext listener.
    for setting in [
        "sasl.enabled.mechanisms=PLAIN",
        "ssl.keystore.location=server.keystore.jks",
        "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "super.users=User:admin",
        "listener.name.plaintext.plain.sasl.jaas.config=x",
    ] {
        let output = broker_exit(&["--listen", "127.0.0.1:0", "--set", setting]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let name = setting.split('=').next().unwrap();
        assert!(!output.status.success(), "{setting}: {}", output.status);
        assert!(stderr.contains(name), "{setting}: {stderr}");
    }
}

#[test]
fn unknown_properties_are_warned_about_with_the_likely_name() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(
        &dir.path().join("data"),
        &[
            "log.retention.hourz=2",
            "retention.ms=1000",
            "num.network.threads=3",
        ],
    );
    let warned = wait_until(Duration::from_secs(10), || {
        broker.stderr().contains("log.retention.hourz")
    });
    let stderr = broker.stderr();
    assert!(warned, "{stderr}");
    assert!(
        stderr.contains(
            "the configuration 'log.retention.hourz' was supplied but isn't a known config (did you mean log.retention.hours?)"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("the broker-wide setting is log.retention.ms"),
        "{stderr}"
    );
    assert!(
        stderr.contains("have no effect in Strom: num.network.threads"),
        "{stderr}"
    );
    broker.stop();
}

#[test]
fn the_example_server_properties_starts_a_broker_without_warnings() {
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../config/server.properties"
    );
    let dir = tempfile::tempdir().unwrap();
    // The flags take precedence over the file's fixed port and directory.
    let mut child = Command::new(env!("CARGO_BIN_EXE_strom-e2e"))
        .args(["broker", "--config", example, "--listen", "127.0.0.1:0"])
        .args(["--metrics", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut ready = String::new();
    // read_line returns at the ready line, or at EOF if the broker exits.
    std::io::BufRead::read_line(&mut stdout, &mut ready).unwrap();
    let stopped = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(ready.contains("listening on 127.0.0.1:"), "{ready}{stderr}");
    assert!(stopped.success() && output.status.success(), "{stderr}");
    assert!(!stderr.contains("WARN"), "{stderr}");
    assert!(!stderr.contains("isn't a known config"), "{stderr}");
}
