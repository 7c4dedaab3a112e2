//! A data directory of many partition logs.
#![allow(clippy::cast_possible_truncation, clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::{batch, read_all};
use strom_protocol::compression::Compression;
use strom_storage::manager::CLEAN_SHUTDOWN_FILE;
use strom_storage::{
    AppendOrigin, LogConfig, LogManager, LogManagerConfig, SystemClock, TopicPartition,
};

fn open(dir: &std::path::Path, open_files_max: usize) -> Arc<LogManager> {
    let config = LogManagerConfig {
        open_files_max,
        ..LogManagerConfig::new(dir)
    };
    LogManager::open(config, Arc::new(SystemClock), &|_| LogConfig::default()).unwrap()
}

#[test]
fn many_partitions_share_a_bounded_set_of_open_files() {
    let dir = tempfile::tempdir().unwrap();
    let manager = open(dir.path(), 16);
    let partitions: Vec<TopicPartition> =
        (0..300).map(|p| TopicPartition::new("orders", p)).collect();
    for tp in &partitions {
        let log = manager.get_or_create(tp, LogConfig::default()).unwrap();
        log.append_as_leader(&batch(2, 10, 0, Compression::None), 0, AppendOrigin::Client)
            .unwrap();
        assert!(manager.file_cache().open_files() <= 16);
    }
    for tp in &partitions {
        assert_eq!(read_all(&manager.get(tp).unwrap()).len(), 1);
    }
    assert!(manager.file_cache().open_files() <= 16);
    manager.shutdown().unwrap();
    assert!(dir.path().join(CLEAN_SHUTDOWN_FILE).exists());
    drop(manager);

    // A clean restart loads everything and consumes the marker.
    let manager = open(dir.path(), 16);
    assert!(!dir.path().join(CLEAN_SHUTDOWN_FILE).exists());
    assert_eq!(manager.logs().len(), 300);
    assert!(manager.file_cache().open_files() <= 16);
    for tp in &partitions {
        assert_eq!(manager.get(tp).unwrap().log_end_offset(), 2);
    }
}

#[test]
fn unclean_stop_recovers_and_deletion_is_final() {
    let dir = tempfile::tempdir().unwrap();
    let manager = open(dir.path(), 64);
    let a = TopicPartition::new("a", 0);
    let b = TopicPartition::new("b", 3);
    for tp in [&a, &b] {
        let log = manager.get_or_create(tp, LogConfig::default()).unwrap();
        for i in 0..10 {
            log.append_as_leader(
                &batch(1, 100, i, Compression::Snappy),
                0,
                AppendOrigin::Client,
            )
            .unwrap();
        }
    }
    assert!(manager.delete(&b).unwrap());
    assert!(!dir.path().join("b-3").exists());
    // A second process may not use the directory meanwhile.
    assert!(
        LogManager::open(
            LogManagerConfig::new(dir.path()),
            Arc::new(SystemClock),
            &|_| LogConfig::default()
        )
        .is_err()
    );
    drop(manager); // no shutdown: unclean

    let manager = open(dir.path(), 64);
    assert_eq!(manager.logs().len(), 1);
    let log = manager.get(&a).unwrap();
    assert_eq!(log.log_end_offset(), 10);
    assert_eq!(read_all(&log).len(), 10);
    assert!(manager.get(&b).is_none());
}

#[test]
fn background_flushes_rolled_segments() {
    let dir = tempfile::tempdir().unwrap();
    let manager = open(dir.path(), 64);
    let tp = TopicPartition::new("t", 0);
    let config = LogConfig {
        segment_bytes: 1000,
        ..LogConfig::default()
    };
    let log = manager.get_or_create(&tp, config).unwrap();
    for i in 0..20 {
        log.append_as_leader(
            &batch(1, 200, i, Compression::None),
            0,
            AppendOrigin::Client,
        )
        .unwrap();
    }
    assert_eq!(log.recovery_point(), 0);
    manager.run_periodic();
    let active_base = *log.segment_base_offsets().last().unwrap();
    assert_eq!(
        log.recovery_point(),
        active_base,
        "rolled segments are fsynced and counted"
    );
    manager.checkpoint().unwrap();
    let text =
        std::fs::read_to_string(dir.path().join("recovery-point-offset-checkpoint")).unwrap();
    assert!(text.contains(&format!("t 0 {active_base}")), "{text}");
}

/// Deleting a log closes every handle of its files (the space of a deleted
/// file comes back only with its last handle), even of segments a reader
/// opened again after the log was written; the longest legal topic names
/// delete too (their delete directory name is cut to fit the file system).
#[test]
fn deletion_closes_every_file_and_fits_long_names() {
    let dir = tempfile::tempdir().unwrap();
    let manager = open(dir.path(), 64);
    let long = TopicPartition::new("t".repeat(249), 99_999);
    let short = TopicPartition::new("kept", 0);
    let config = LogConfig {
        segment_bytes: 1024,
        ..LogConfig::default()
    };
    for tp in [&long, &short] {
        let log = manager.get_or_create(tp, config.clone()).unwrap();
        for i in 0..10 {
            log.append_as_leader(
                &batch(1, 300, i, Compression::None),
                0,
                AppendOrigin::Client,
            )
            .unwrap();
        }
        assert!(log.segment_base_offsets().len() > 2);
    }
    // Every segment of the long one opened by a read.
    assert_eq!(read_all(&manager.get(&long).unwrap()).len(), 10);
    let open_before = manager.file_cache().open_files();
    assert!(manager.delete(&long).unwrap());
    assert_eq!(
        std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().len() > 200)
            .count(),
        0,
        "no directory of the deleted log remains"
    );
    let open_after = manager.file_cache().open_files();
    assert!(open_after < open_before);
    // What stays open belongs to the log that was not deleted.
    let short_log = manager.get(&short).unwrap();
    short_log.release_files();
    assert_eq!(manager.file_cache().open_files(), 0);
    assert_eq!(read_all(&short_log).len(), 10, "released files open again");
    manager.shutdown().unwrap();
}
