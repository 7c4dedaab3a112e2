//! Crash recovery: torn tails, flipped bits, missing indexes, and a writer
//! process killed with SIGKILL.
#![allow(clippy::cast_possible_truncation, clippy::unwrap_used)]

mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{batch, open_clean, open_unclean, read_all};
use rand::{Rng, SeedableRng};
use strom_protocol::compression::Compression;
use strom_protocol::record_batch;
use strom_storage::{AppendOrigin, LogConfig};

const EPOCH: i32 = 3;

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// A log left by a crash: three intact batches and a last one, whose bytes
/// start at the returned position of `00000000000000000000.log`.
fn crashed_log(dir: &Path) -> (Vec<bytes::Bytes>, u64, u64) {
    let log = open_clean(dir, LogConfig::default());
    for i in 0..3 {
        log.append_as_leader(
            &batch(4, 40, i, Compression::None),
            EPOCH,
            AppendOrigin::Client,
        )
        .unwrap();
    }
    let intact = read_all(&log);
    let last_start = log.size_bytes();
    log.append_as_leader(
        &batch(1, 12, 9, Compression::None),
        EPOCH,
        AppendOrigin::Client,
    )
    .unwrap();
    let last_end = log.size_bytes();
    drop(log); // no close: as if the process died
    (intact, last_start, last_end)
}

fn assert_recovered_to_intact(dir: &Path, intact: &[bytes::Bytes], what: &str) {
    let log = open_unclean(dir, LogConfig::default());
    assert_eq!(
        log.log_end_offset(),
        12,
        "{what}: log must end after the intact batches"
    );
    assert_eq!(
        read_all(&log),
        intact,
        "{what}: intact batches must be unchanged"
    );
    let info = log
        .append_as_leader(
            &batch(1, 5, 0, Compression::None),
            EPOCH,
            AppendOrigin::Client,
        )
        .unwrap();
    assert_eq!(
        info.first_offset, 12,
        "{what}: appends continue at the next offset"
    );
}

#[test]
fn a_torn_last_batch_is_cut_at_every_byte_position() {
    let template = tempfile::tempdir().unwrap();
    let (intact, start, end) = crashed_log(template.path());
    let log_name = format!("{:020}.log", 0);
    for cut in start..end {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(template.path(), dir.path());
        let file = fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join(&log_name))
            .unwrap();
        file.set_len(cut).unwrap();
        drop(file);
        assert_recovered_to_intact(dir.path(), &intact, &format!("cut at byte {cut}"));
    }
}

#[test]
fn every_single_bit_flip_in_the_last_batch_is_caught() {
    let template = tempfile::tempdir().unwrap();
    let (intact, start, end) = crashed_log(template.path());
    let log_name = format!("{:020}.log", 0);
    let original = fs::read(template.path().join(&log_name)).unwrap();
    for byte in start..end {
        for bit in 0..8 {
            let dir = tempfile::tempdir().unwrap();
            copy_dir(template.path(), dir.path());
            let mut bytes = original.clone();
            bytes[byte as usize] ^= 1 << bit;
            fs::write(dir.path().join(&log_name), &bytes).unwrap();
            assert_recovered_to_intact(
                dir.path(),
                &intact,
                &format!("flip of bit {bit} at byte {byte}"),
            );
        }
    }
}

#[test]
fn missing_torn_and_wrong_indexes_are_rebuilt_never_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        index_interval_bytes: 200,
        segment_bytes: 6_000,
        ..LogConfig::default()
    };
    let log = open_clean(dir.path(), config.clone());
    for i in 0..200 {
        log.append_as_leader(
            &batch(2, 50, i * 10, Compression::None),
            0,
            AppendOrigin::Client,
        )
        .unwrap();
    }
    let expected = read_all(&log);
    let ts_answer = log.offset_for_timestamp(1000, None).unwrap();
    log.close().unwrap();
    drop(log);

    let bases: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".index"))
        .collect();
    assert!(bases.len() >= 4, "{} segments", bases.len());
    // Damage every index differently: missing, torn, garbage, shuffled.
    for (i, name) in bases.iter().enumerate() {
        let path = dir.path().join(name);
        let time_path = path.with_extension("timeindex");
        match i % 4 {
            0 => fs::remove_file(&path).unwrap(),
            1 => {
                let mut b = fs::read(&path).unwrap();
                b.truncate(b.len().saturating_sub(3));
                fs::write(&path, b).unwrap();
                fs::remove_file(&time_path).unwrap();
            }
            2 => {
                let len = fs::metadata(&path).unwrap().len() as usize;
                fs::write(&path, vec![0x5a; len]).unwrap();
            }
            _ => {
                let mut b = fs::read(&path).unwrap();
                b.reverse();
                fs::write(&path, b).unwrap();
                fs::write(&time_path, vec![0xff; 24]).unwrap();
            }
        }
    }
    let log = open_clean(dir.path(), config);
    assert_eq!(read_all(&log), expected);
    assert_eq!(log.offset_for_timestamp(1000, None).unwrap(), ts_answer);
    for offset in (0..400).step_by(7) {
        let bytes = log
            .read(offset, 1, None, true)
            .unwrap()
            .records
            .read()
            .unwrap();
        let header = record_batch::validate_batch(&bytes).unwrap();
        assert!(header.base_offset <= offset && offset <= header.last_offset());
    }
}

/// Not a test on its own: the child process of
/// `acknowledged_batches_survive_sigkill`, started with `STROM_CHILD_LOG_DIR`.
#[test]
#[ignore = "the child process of acknowledged_batches_survive_sigkill"]
fn child_appender() {
    let dir =
        std::env::var("STROM_CHILD_LOG_DIR").expect("run by acknowledged_batches_survive_sigkill");
    let config = LogConfig {
        flush_messages: Some(1),
        segment_bytes: 4 << 20,
        ..LogConfig::default()
    };
    let log = open_unclean(Path::new(&dir), config);
    let mut rng = rand::rngs::StdRng::seed_from_u64(log.log_end_offset() as u64);
    loop {
        let offset = log.log_end_offset();
        let value_len = if rng.random_bool(0.2) {
            200_000
        } else {
            rng.random_range(1..2000)
        };
        // The content is a function of the offset, so the parent can check it.
        let b = batch(3, value_len, offset, Compression::None);
        let info = log
            .append_as_leader(&b, EPOCH, AppendOrigin::Client)
            .unwrap();
        println!("acked {} {}", info.first_offset, value_len);
    }
}

#[test]
fn acknowledged_batches_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let mut acked: Vec<(i64, usize)> = Vec::new();
    for round in 0..6 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "child_appender",
                "--include-ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("STROM_CHILD_LOG_DIR", dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let kill_after = rng.random_range(5..120);
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut seen = 0;
        while seen < kill_after {
            assert!(Instant::now() < deadline, "child made no progress");
            let Some(line) = lines.next() else { break };
            if let Some((offset, len)) = parse_ack(&line.unwrap()) {
                acked.push((offset, len));
                seen += 1;
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // Acks printed before the kill are still in the pipe: they count.
        for line in lines.map_while(Result::ok) {
            if let Some(ack) = parse_ack(&line) {
                acked.push(ack);
            }
        }
        assert!(seen > 0, "round {round}: child never acknowledged");

        let log = open_unclean(dir.path(), LogConfig::default());
        let stored = read_all(&log);
        let last_acked = acked.last().unwrap().0 + 2;
        assert!(
            log.log_end_offset() > last_acked,
            "round {round}: acknowledged data lost"
        );
        // Every batch is consistent; every acknowledged one has its content.
        let mut by_offset = std::collections::HashMap::new();
        let mut next = 0;
        for b in &stored {
            let header = record_batch::validate_batch(b).unwrap();
            assert_eq!(header.base_offset, next, "offsets continue without gaps");
            next = header.next_offset();
            by_offset.insert(header.base_offset, b.clone());
        }
        for (offset, len) in &acked {
            let b = by_offset
                .get(offset)
                .unwrap_or_else(|| panic!("acknowledged batch at {offset} missing"));
            assert_eq!(
                common::values(b),
                common::values(&batch(3, *len, *offset, Compression::None))
            );
        }
    }
}

fn parse_ack(line: &str) -> Option<(i64, usize)> {
    let rest = line.strip_prefix("acked ")?;
    let (offset, len) = rest.split_once(' ')?;
    Some((offset.parse().ok()?, len.trim().parse().ok()?))
}
