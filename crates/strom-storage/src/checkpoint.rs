//! Kafka's small checkpoint files: a version line, a count line, then one
//! entry per line. Written atomically (temp file, fsync, rename, fsync of the
//! directory), read strictly: anything malformed is an error, never half-used.
//!
//! Used for `recovery-point-offset-checkpoint` and `log-start-offset-checkpoint`
//! (entries `topic partition offset`) and per partition for
//! `leader-epoch-checkpoint` (entries `epoch start_offset`).

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

/// The only checkpoint format version Kafka has written.
const CHECKPOINT_VERSION: u32 = 0;
/// Bound on entries read from one file, so a corrupt count cannot make us
/// allocate without limit: far more partitions than one broker holds.
const MAX_CHECKPOINT_ENTRIES: usize = 10_000_000;

/// Writes `entries` (already formatted, one per line, no newline) to `path`
/// atomically.
pub fn write(path: &Path, entries: &[String]) -> io::Result<()> {
    let mut text = format!("{CHECKPOINT_VERSION}\n{}\n", entries.len());
    for entry in entries {
        text.push_str(entry);
        text.push('\n');
    }
    let tmp = path.with_extension("tmp");
    {
        let mut file = File::create(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Reads the entries of the checkpoint at `path`. `Ok(None)` if it does not
/// exist; `Err(InvalidData)` if it is malformed in any way.
pub fn read(path: &Path) -> io::Result<Option<Vec<String>>> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let invalid = |why: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {why}", path.display()),
        )
    };
    let mut lines = text.lines();
    let version: u32 = lines
        .next()
        .and_then(|l| l.trim().parse().ok())
        .ok_or_else(|| invalid("missing version"))?;
    if version != CHECKPOINT_VERSION {
        return Err(invalid("unknown version"));
    }
    let count: usize = lines
        .next()
        .and_then(|l| l.trim().parse().ok())
        .ok_or_else(|| invalid("missing entry count"))?;
    if count > MAX_CHECKPOINT_ENTRIES {
        return Err(invalid("entry count out of range"));
    }
    let entries: Vec<String> = lines.map(str::to_owned).collect();
    if entries.len() != count {
        return Err(invalid("entry count does not match"));
    }
    Ok(Some(entries))
}

/// Parses `topic partition offset` entries.
pub fn parse_partition_offsets(entries: &[String]) -> io::Result<Vec<(String, i32, i64)>> {
    entries
        .iter()
        .map(|line| {
            let mut parts = line.split(' ');
            let (Some(topic), Some(partition), Some(offset), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad checkpoint entry {line:?}"),
                ));
            };
            let partition = partition
                .parse()
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad partition"))?;
            let offset = offset
                .parse()
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad offset"))?;
            Ok((topic.to_owned(), partition, offset))
        })
        .collect()
}

/// Parses `a b` pairs of integers (leader epoch checkpoints).
pub fn parse_pairs(entries: &[String]) -> io::Result<Vec<(i32, i64)>> {
    entries
        .iter()
        .map(|line| {
            let mut parts = line.split(' ');
            match (
                parts.next().map(str::parse),
                parts.next().map(str::parse),
                parts.next(),
            ) {
                (Some(Ok(a)), Some(Ok(b)), None) => Ok((a, b)),
                _ => Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad checkpoint entry {line:?}"),
                )),
            }
        })
        .collect()
}

/// Makes a rename or a new file in `dir` durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_strict_reading() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("recovery-point-offset-checkpoint");
        assert!(read(&path).unwrap().is_none());
        write(&path, &["orders 0 42".to_owned(), "orders 1 7".to_owned()]).unwrap();
        let entries = read(&path).unwrap().unwrap();
        assert_eq!(
            parse_partition_offsets(&entries).unwrap(),
            vec![("orders".to_owned(), 0, 42), ("orders".to_owned(), 1, 7)]
        );
        fs::write(&path, "0\n3\norders 0 42\n").unwrap();
        assert!(read(&path).is_err());
        fs::write(&path, "1\n0\n").unwrap();
        assert!(read(&path).is_err());
        assert!(parse_pairs(&["1 2 3".to_owned()]).is_err());
    }
}
