//! Faults, chosen and timed by a seeded schedule, and what each does to the
//! cluster: processes killed, paused and restarted, links cut, a disk
//! filled, unflushed data lost.

use std::fmt;
use std::fs;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rand::Rng;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use serde::Serialize;

/// A kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// kill -9, then start again after the hold.
    Kill,
    /// SIGSTOP past the broker session timeout, then SIGCONT.
    Pause,
    /// Cut every link between one node and the others.
    Isolate,
    /// Cut the cluster in a minority and a majority.
    Split,
    /// Cut the link between two nodes.
    CutLink,
    /// Fill the node's data directory (a small tmpfs) to the last byte.
    DiskFull,
    /// kill -9, then cut every partition log back to its recovery point
    /// (where the broker last fsynced it), as a power loss would.
    LoseUnflushed,
    /// Step the node's wall clock minutes ahead or behind (libfaketime),
    /// then back, as a misbehaving NTP would; monotonic time is untouched.
    ClockSkew,
}

impl Fault {
    /// Every kind, in the order a smoke run injects them.
    pub const ALL: [Self; 8] = [
        Self::Kill,
        Self::Pause,
        Self::Isolate,
        Self::Split,
        Self::CutLink,
        Self::DiskFull,
        Self::LoseUnflushed,
        Self::ClockSkew,
    ];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Kill => "kill",
            Self::Pause => "pause",
            Self::Isolate => "isolate",
            Self::Split => "split",
            Self::CutLink => "cut-link",
            Self::DiskFull => "disk-full",
            Self::LoseUnflushed => "lose-unflushed",
            Self::ClockSkew => "clock-skew",
        }
    }

    /// The kind named `name`.
    pub fn parse(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|f| f.name() == name)
            .with_context(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|f| f.name()).collect();
                format!("unknown fault {name:?} (one of {})", names.join(", "))
            })
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Whom a fault strikes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// The active controller.
    Controller,
    /// The leader of a partition the workloads use.
    PartitionLeader,
    /// Any node.
    Random,
}

/// One step of the schedule.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub fault: Fault,
    pub target: Target,
    /// How long the fault lasts.
    pub hold: Duration,
    /// How long the cluster runs undisturbed afterwards.
    pub quiet: Duration,
}

/// `count` steps drawn from `faults` by `rng`; with `each_once`, every kind
/// in `faults` once, in order. Targets favour the controller and partition
/// leaders, where faults hurt most.
pub fn schedule(rng: &mut StdRng, faults: &[Fault], count: usize, each_once: bool) -> Vec<Step> {
    let kinds: Vec<Fault> = if each_once {
        faults.to_vec()
    } else {
        (0..count)
            .filter_map(|_| faults.choose(rng).copied())
            .collect()
    };
    kinds
        .into_iter()
        .map(|fault| Step {
            fault,
            target: match rng.random_range(0..4) {
                0 => Target::Controller,
                1 | 2 => Target::PartitionLeader,
                _ => Target::Random,
            },
            hold: Duration::from_millis(rng.random_range(3_000..8_000)),
            quiet: Duration::from_millis(rng.random_range(2_000..5_000)),
        })
        .collect()
}

/// libfaketime's multi-threaded library, as Debian's `libfaketime` package
/// installs it, or `STROM_CHAOS_FAKETIME` when set.
pub fn faketime_library() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("STROM_CHAOS_FAKETIME") {
        return Ok(PathBuf::from(path));
    }
    const NAME: &str = "faketime/libfaketimeMT.so.1";
    let mut candidates = vec![Path::new("/usr/lib").join(NAME)];
    if let Ok(entries) = fs::read_dir("/usr/lib") {
        candidates.extend(entries.flatten().map(|e| e.path().join(NAME)));
    }
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .context("clock-skew needs libfaketime (Debian: apt-get install libfaketime, or set STROM_CHAOS_FAKETIME to libfaketimeMT.so.1)")
}

/// The environment that puts a node's wall clock under `file`: libfaketime
/// preloaded, reading its offset from the file (again every second), with
/// monotonic clocks left alone (tokio's timers and Raft's elections).
pub fn faketime_env(library: &Path, file: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("LD_PRELOAD", library.display().to_string()),
        ("FAKETIME_TIMESTAMP_FILE", file.display().to_string()),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1".to_owned()),
        ("FAKETIME_CACHE_DURATION", "1".to_owned()),
    ]
}

/// Sets the wall-clock offset, in seconds, that the node reading `file`
/// sees (within a second). Replaced whole, so that no half-written offset
/// is ever read.
pub fn set_clock_offset(file: &Path, seconds: i64) -> Result<()> {
    let temp = file.with_extension("tmp");
    fs::write(&temp, format!("{seconds:+}\n"))
        .with_context(|| format!("writing {}", temp.display()))?;
    fs::rename(&temp, file).with_context(|| format!("replacing {}", file.display()))
}

/// Cuts every partition log under `data_dir` back to its recovery point
/// (`recovery-point-offset-checkpoint`: where the broker last fsynced it),
/// as a power loss would lose what the page cache held. The node must be
/// dead. Returns how many bytes were cut. Brokers fsync a log when a
/// segment rolls (as Kafka, not per write), so in a short run the recovery
/// points are mostly 0 and this empties the node's partition logs, the
/// internal topics' too: it comes back with nothing and must fetch it all.
pub fn lose_unflushed(data_dir: &Path) -> Result<u64> {
    let checkpoint = data_dir.join("recovery-point-offset-checkpoint");
    let points = match fs::read_to_string(&checkpoint) {
        Ok(text) => {
            parse_checkpoint(&text).with_context(|| format!("reading {}", checkpoint.display()))?
        }
        // Never written: nothing was ever fsynced.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", checkpoint.display())),
    };
    let mut cut = 0;
    for entry in
        fs::read_dir(data_dir).with_context(|| format!("listing {}", data_dir.display()))?
    {
        let dir = entry?.path();
        let Some(name) = dir.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        // Partition directories are `topic-N`; the metadata log is not one.
        let Some((topic, partition)) = name
            .rsplit_once('-')
            .and_then(|(t, p)| Some((t, p.parse::<i32>().ok()?)))
        else {
            continue;
        };
        if !dir.is_dir() || topic.starts_with("__cluster_metadata") {
            continue;
        }
        let point = points
            .iter()
            .find(|(t, p, _)| t == topic && *p == partition)
            .map_or(0, |(_, _, o)| *o);
        cut += cut_partition(&dir, point)?;
    }
    Ok(cut)
}

/// `(topic, partition, offset)` entries of a checkpoint file.
pub(crate) fn parse_checkpoint(text: &str) -> Result<Vec<(String, i32, i64)>> {
    let mut lines = text.lines();
    let (Some("0"), Some(_count)) = (lines.next(), lines.next()) else {
        bail!("not a version 0 checkpoint");
    };
    lines
        .map(|line| {
            let mut words = line.split_whitespace();
            match (words.next(), words.next(), words.next()) {
                (Some(t), Some(p), Some(o)) => Ok((t.to_owned(), p.parse()?, o.parse()?)),
                _ => bail!("bad checkpoint line {line:?}"),
            }
        })
        .collect()
}

/// Cuts one partition's segments at the first batch at or past `point`,
/// and drops the indexes of the segments cut (the broker rebuilds them).
fn cut_partition(dir: &Path, point: i64) -> Result<u64> {
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("log") {
            continue;
        }
        if let Some(base) = path
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.parse::<i64>().ok())
        {
            segments.push((base, path));
        }
    }
    segments.sort();
    let mut cut = 0;
    for (i, (base, path)) in segments.iter().enumerate() {
        let (base, path) = (*base, path.as_path());
        let len = fs::metadata(path)?.len();
        // A whole segment past the point goes, unless it is the only one
        // left: an empty segment after a cut one would leave a hole.
        if base >= point && i > 0 {
            fs::remove_file(path)?;
            for ext in ["index", "timeindex", "txnindex"] {
                let _ = fs::remove_file(path.with_extension(ext));
            }
            cut += len;
            continue;
        }
        let keep = if base >= point {
            0
        } else {
            first_batch_at(path, point)?
        };
        if keep < len {
            fs::OpenOptions::new()
                .write(true)
                .open(path)?
                .set_len(keep)?;
            cut += len - keep;
            for ext in ["index", "timeindex"] {
                let _ = fs::remove_file(path.with_extension(ext));
            }
        }
    }
    Ok(cut)
}

/// The byte position of the first batch in segment `path` whose base
/// offset is at or past `point` (the file's length if none is).
fn first_batch_at(path: &Path, point: i64) -> Result<u64> {
    let mut bytes = Vec::new();
    fs::File::open(path)?.read_to_end(&mut bytes)?;
    let mut pos: usize = 0;
    while let (Some(base), Some(len)) = (bytes.get(pos..pos + 8), bytes.get(pos + 8..pos + 12)) {
        let base = i64::from_be_bytes(base.try_into()?);
        let len = i32::from_be_bytes(len.try_into()?);
        if base >= point || len <= 0 {
            break;
        }
        let Some(next) = usize::try_from(len)
            .ok()
            .and_then(|l| pos.checked_add(12 + l))
        else {
            break;
        };
        if next > bytes.len() {
            break;
        }
        pos = next;
    }
    Ok(u64::try_from(pos)?)
}

/// Fills the file system of `dir` with a file `filler` until no space is
/// left. Returns the bytes written.
pub fn fill(dir: &Path) -> Result<u64> {
    use std::io::Write as _;
    let path = dir.join("chaos-filler");
    let mut file =
        fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let chunk = vec![0u8; 1 << 20];
    let mut written = 0u64;
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += u64::try_from(n)?,
            Err(_) => break,
        }
    }
    // What a small write can still take.
    while let Ok(n) = file.write(&chunk[..4096]) {
        if n == 0 {
            break;
        }
        written += u64::try_from(n)?;
    }
    Ok(written)
}

/// Removes what [`fill`] wrote.
pub fn unfill(dir: &Path) -> Result<()> {
    let path = dir.join("chaos-filler");
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(base: i64, payload: usize) -> Vec<u8> {
        let mut b = base.to_be_bytes().to_vec();
        b.extend(i32::try_from(payload).unwrap_or(0).to_be_bytes());
        b.extend(vec![7u8; payload]);
        b
    }

    #[test]
    fn a_log_is_cut_at_the_first_batch_past_its_recovery_point() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let part = dir.path().join("chaos-1");
        fs::create_dir(&part)?;
        let mut first = batch(0, 50);
        first.extend(batch(3, 40));
        first.extend(batch(5, 30));
        fs::write(part.join("00000000000000000000.log"), &first)?;
        fs::write(part.join("00000000000000000000.index"), b"x")?;
        fs::write(part.join("00000000000000000008.log"), batch(8, 10))?;
        fs::write(
            dir.path().join("recovery-point-offset-checkpoint"),
            "0\n1\nchaos 1 5\n",
        )?;
        let cut = lose_unflushed(dir.path())?;
        assert_eq!(cut, 42 + 22);
        assert_eq!(
            fs::metadata(part.join("00000000000000000000.log"))?.len(),
            62 + 52
        );
        assert!(!part.join("00000000000000000008.log").exists());
        assert!(!part.join("00000000000000000000.index").exists());
        Ok(())
    }

    #[test]
    fn a_schedule_is_the_same_for_the_same_seed() {
        use rand::SeedableRng;
        let a = schedule(&mut StdRng::seed_from_u64(7), &Fault::ALL, 10, false);
        let b = schedule(&mut StdRng::seed_from_u64(7), &Fault::ALL, 10, false);
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
        let once = schedule(&mut StdRng::seed_from_u64(7), &Fault::ALL, 0, true);
        let kinds: Vec<Fault> = once.iter().map(|s| s.fault).collect();
        assert_eq!(kinds, Fault::ALL);
    }
}
