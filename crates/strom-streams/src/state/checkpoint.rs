//! A task directory's `.checkpoint` file: for each changelog partition, the
//! offset after the last record its local store holds (Kafka's
//! `OffsetCheckpoint`), so that restoration after a clean stop starts there
//! instead of at the beginning. Kafka deletes it when a task starts
//! processing under exactly-once, and writes it at commits and at a clean
//! close.
//!
//! The format is Kafka's text file, so that its tools read ours:
//!
//! ```text
//! 0                            the version
//! 2                            how many entries follow
//! app-counts-changelog 0 1234  topic, partition, offset
//! app-totals-changelog 0 56
//! ```
//!
//! It is written to a temporary file, synced, and renamed over the old one:
//! a crash leaves either the old file or the new one. A file that does not
//! parse is an error the caller handles by restoring from the beginning.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

/// The file's name inside a task directory.
pub const CHECKPOINT_FILE: &str = ".checkpoint";
/// The only version Kafka writes.
const VERSION: u32 = 0;
/// Bound on the entries read: a task has one changelog partition per
/// store, and no topology has anywhere near this many stores.
const MAX_ENTRIES: usize = 100_000;

/// Offsets by (changelog topic, partition).
pub type Offsets = BTreeMap<(String, i32), i64>;

/// Reads `dir/.checkpoint`: no file is no offsets. Negative offsets are
/// left out, as Kafka skips them.
pub fn read(dir: &Path) -> io::Result<Offsets> {
    let text = match fs::read_to_string(dir.join(CHECKPOINT_FILE)) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Offsets::new()),
        Err(e) => return Err(e),
    };
    parse(&text)
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

fn parse(text: &str) -> io::Result<Offsets> {
    let mut lines = text.lines();
    let version = lines.next().map(str::trim);
    if version != Some("0") {
        return Err(invalid(format!(
            "unknown checkpoint version {version:?} (expected {VERSION})"
        )));
    }
    let expected: usize = lines
        .next()
        .and_then(|l| l.trim().parse().ok())
        .ok_or_else(|| invalid("checkpoint without an entry count".to_owned()))?;
    if expected > MAX_ENTRIES {
        return Err(invalid(format!(
            "checkpoint claims {expected} entries (at most {MAX_ENTRIES})"
        )));
    }
    let mut offsets = Offsets::new();
    let mut found = 0;
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [topic, partition, offset] = fields[..] else {
            return Err(invalid(format!("malformed checkpoint line {line:?}")));
        };
        let partition: i32 = partition
            .parse()
            .map_err(|_| invalid(format!("malformed partition in {line:?}")))?;
        let offset: i64 = offset
            .parse()
            .map_err(|_| invalid(format!("malformed offset in {line:?}")))?;
        found += 1;
        if offset >= 0 {
            offsets.insert((topic.to_owned(), partition), offset);
        }
    }
    if found != expected {
        return Err(invalid(format!(
            "expected {expected} checkpoint entries but found {found}"
        )));
    }
    Ok(offsets)
}

/// Replaces `dir/.checkpoint` with `offsets`, atomically.
pub fn write(dir: &Path, offsets: &Offsets) -> io::Result<()> {
    let mut text = format!("{VERSION}\n{}\n", offsets.len());
    for ((topic, partition), offset) in offsets {
        text.push_str(&format!("{topic} {partition} {offset}\n"));
    }
    let tmp: PathBuf = dir.join(format!("{CHECKPOINT_FILE}.tmp"));
    {
        let mut file = File::create(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
    }
    fs::rename(&tmp, dir.join(CHECKPOINT_FILE))?;
    File::open(dir)?.sync_all()
}

/// Removes `dir/.checkpoint` (a task that starts writing to its stores
/// again no longer matches it until the next commit writes a new one).
pub fn delete(dir: &Path) -> io::Result<()> {
    match fs::remove_file(dir.join(CHECKPOINT_FILE)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_in_kafkas_format() {
        let dir = tempfile_dir();
        assert!(read(&dir).unwrap().is_empty(), "no file, no offsets");
        let offsets = Offsets::from([
            (("wc-counts-changelog".to_owned(), 2), 1234),
            (("wc-totals-changelog".to_owned(), 2), 0),
        ]);
        write(&dir, &offsets).unwrap();
        assert_eq!(
            fs::read_to_string(dir.join(CHECKPOINT_FILE)).unwrap(),
            "0\n2\nwc-counts-changelog 2 1234\nwc-totals-changelog 2 0\n"
        );
        assert_eq!(read(&dir).unwrap(), offsets);
        delete(&dir).unwrap();
        delete(&dir).unwrap();
        assert!(read(&dir).unwrap().is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_damaged_file_is_an_error_and_negative_offsets_are_skipped() {
        assert_eq!(
            parse("0\n1\nt 0 -1\n").unwrap(),
            Offsets::new(),
            "Kafka skips a negative offset"
        );
        for bad in [
            "",
            "1\n0\n",
            "0\n",
            "0\n2\nt 0 5\n",
            "0\n1\nt zero 5\n",
            "0\n1\nt 0\n",
            "0\n1\nt 0 5 extra\n",
            "0\n999999999\n",
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{bad:?}: {e}");
        }
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "strom-streams-checkpoint-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        fs::create_dir_all(&dir).unwrap();
        dir
    }
}
