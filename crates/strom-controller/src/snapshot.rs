//! Image snapshots: the [`MetadataImage`] as of one metadata log offset,
//! written next to the metadata log so a restart replays only the records
//! after it (Kafka's KRaft snapshots, KIP-630).
//!
//! A snapshot is named after the offset it covers up to (exclusive) and the
//! epoch, as Kafka names them: `<offset, 20 digits>-<epoch, 10 digits>.checkpoint`
//! (the epoch is 0 until there is a quorum). The file is a header and a JSON
//! body:
//!
//! ```text
//! magic "STRMSNAP" (8) | format version u16 | body length u32 | CRC32C of the body u32 | body
//! ```
//!
//! The body holds the offset, the epoch and the records that rebuild the
//! image on an empty one ([`MetadataImage::to_records`]), so loading replays
//! records exactly as the log does. Written atomically (temporary file,
//! fsync, rename, fsync of the directory); read strictly: any mismatch (size,
//! magic, version, checksum, JSON, offset) makes the snapshot invalid, and an
//! invalid snapshot is logged and ignored, never trusted and never fatal.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::image::MetadataImage;
use crate::records::MetadataRecord;

/// Identifies a snapshot file.
const SNAPSHOT_MAGIC: &[u8; 8] = b"STRMSNAP";
/// The snapshot format written; a file of another version is ignored (full
/// replay), so a change of format costs one slow start, never a wrong image.
pub const SNAPSHOT_FORMAT_VERSION: u16 = 1;
const MAGIC_OFFSET: usize = 0;
const VERSION_OFFSET: usize = MAGIC_OFFSET + SNAPSHOT_MAGIC.len();
const BODY_LENGTH_OFFSET: usize = VERSION_OFFSET + size_of::<u16>();
const CRC_OFFSET: usize = BODY_LENGTH_OFFSET + size_of::<u32>();
/// Bytes before the body.
pub const SNAPSHOT_HEADER_BYTES: usize = CRC_OFFSET + size_of::<u32>();
const _: () = assert!(SNAPSHOT_HEADER_BYTES == 18);
/// Bound on a snapshot file read at start: an image of a million partitions
/// takes about 250 MiB of JSON records; a larger file is not one this broker
/// wrote, and reading it whole would take that much memory.
pub const SNAPSHOT_BYTES_MAX: u64 = 1 << 30;
/// Snapshots kept: the newest, and one before it in case the newest cannot
/// be read (a bad disk block); with both gone, a start replays the whole log.
pub const SNAPSHOTS_RETAINED: usize = 2;
const SNAPSHOT_SUFFIX: &str = ".checkpoint";
const TEMP_SUFFIX: &str = ".tmp";

/// Why a snapshot could not be written or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    #[error("snapshot I/O: {0}")]
    Io(#[from] io::Error),
    /// The file is not a valid snapshot (or not the one its name says).
    #[error("corrupt snapshot: {0}")]
    Corrupt(String),
    /// The image could not be encoded.
    #[error("encoding a snapshot: {0}")]
    Encode(String),
}

/// The JSON body of a snapshot.
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotBody {
    /// The image covers the records below this offset.
    offset: i64,
    /// The quorum epoch of the last record covered (0 until there is a quorum).
    epoch: i32,
    /// The records that rebuild the image on an empty one.
    records: Vec<MetadataRecord>,
    /// Where the image stands in the controller quorum's Raft log (the last
    /// entry applied and the membership), opaque here: `None` in snapshots
    /// written before the quorum, whose image is the quorum's starting point.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    quorum: Option<serde_json::Value>,
}

/// The file name of the snapshot covering records below `offset`.
pub fn snapshot_file_name(offset: i64, epoch: i32) -> String {
    format!("{offset:020}-{epoch:010}{SNAPSHOT_SUFFIX}")
}

/// The offset a snapshot file name says it covers, `None` for other files.
pub fn parse_snapshot_file_name(name: &str) -> Option<i64> {
    let stem = name.strip_suffix(SNAPSHOT_SUFFIX)?;
    let (offset, epoch) = stem.split_once('-')?;
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(offset, 20) || !digits(epoch, 10) {
        return None;
    }
    offset.parse().ok()
}

/// Encodes `image` as a snapshot file's bytes.
pub fn encode(image: &MetadataImage) -> Result<Vec<u8>, SnapshotError> {
    encode_with(image, 0, None)
}

/// Encodes `image` with the quorum epoch of its last record and its
/// position in the quorum's log ([`decode_with`] gives them back).
pub fn encode_with(
    image: &MetadataImage,
    epoch: i32,
    quorum: Option<&serde_json::Value>,
) -> Result<Vec<u8>, SnapshotError> {
    let body = SnapshotBody {
        offset: image.offset,
        epoch,
        records: image.to_records(),
        quorum: quorum.cloned(),
    };
    let body = serde_json::to_vec(&body).map_err(|e| SnapshotError::Encode(e.to_string()))?;
    let body_len = u32::try_from(body.len())
        .ok()
        .filter(|len| u64::from(*len) + SNAPSHOT_HEADER_BYTES as u64 <= SNAPSHOT_BYTES_MAX)
        .ok_or_else(|| {
            SnapshotError::Encode(format!(
                "{} bytes, above the limit of {SNAPSHOT_BYTES_MAX}",
                body.len()
            ))
        })?;
    let mut out = Vec::with_capacity(SNAPSHOT_HEADER_BYTES + body.len());
    out.extend_from_slice(SNAPSHOT_MAGIC);
    out.extend_from_slice(&SNAPSHOT_FORMAT_VERSION.to_be_bytes());
    out.extend_from_slice(&body_len.to_be_bytes());
    out.extend_from_slice(&crc32c::crc32c(&body).to_be_bytes());
    debug_assert_eq!(out.len(), SNAPSHOT_HEADER_BYTES);
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decodes a snapshot file's bytes into the image it holds (with
/// `controller_id` left at its default: the node sets it).
pub fn decode(bytes: &[u8]) -> Result<MetadataImage, SnapshotError> {
    decode_with(bytes).map(|(image, _)| image)
}

/// Decodes a snapshot file's bytes into its image and its quorum position
/// (`None` in a snapshot written before the quorum).
pub fn decode_with(
    bytes: &[u8],
) -> Result<(MetadataImage, Option<serde_json::Value>), SnapshotError> {
    let corrupt = |why: String| SnapshotError::Corrupt(why);
    let header = bytes
        .get(..SNAPSHOT_HEADER_BYTES)
        .ok_or_else(|| corrupt(format!("{} bytes, shorter than the header", bytes.len())))?;
    if &header[MAGIC_OFFSET..VERSION_OFFSET] != SNAPSHOT_MAGIC {
        return Err(corrupt("bad magic".to_owned()));
    }
    let be_u16 = |at: usize| u16::from_be_bytes([header[at], header[at + 1]]);
    let be_u32 = |at: usize| {
        u32::from_be_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    let version = be_u16(VERSION_OFFSET);
    if version != SNAPSHOT_FORMAT_VERSION {
        return Err(corrupt(format!("unknown format version {version}")));
    }
    let body = &bytes[SNAPSHOT_HEADER_BYTES..];
    let body_len = be_u32(BODY_LENGTH_OFFSET);
    if u64::from(body_len) != body.len() as u64 {
        return Err(corrupt(format!(
            "body of {} bytes, the header says {body_len}",
            body.len()
        )));
    }
    let crc = be_u32(CRC_OFFSET);
    if crc32c::crc32c(body) != crc {
        return Err(corrupt("checksum mismatch".to_owned()));
    }
    let body: SnapshotBody =
        serde_json::from_slice(body).map_err(|e| corrupt(format!("body: {e}")))?;
    if body.offset < 0 {
        return Err(corrupt(format!("negative offset {}", body.offset)));
    }
    let mut image = MetadataImage::default();
    image.apply_batch(0, &body.records);
    image.offset = body.offset;
    Ok((image, body.quorum))
}

/// The snapshots of one metadata log, in a directory (the log's own).
#[derive(Debug, Clone)]
pub struct SnapshotStore {
    dir: PathBuf,
}

impl SnapshotStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The snapshots present, oldest first: `(offset, path)`.
    pub fn list(&self) -> io::Result<Vec<(i64, PathBuf)>> {
        let mut found = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            if let Some(offset) = entry
                .file_name()
                .to_str()
                .and_then(parse_snapshot_file_name)
            {
                found.push((offset, entry.path()));
            }
        }
        found.sort();
        Ok(found)
    }

    /// Writes a snapshot of `image` atomically, then keeps the newest
    /// [`SNAPSHOTS_RETAINED`] snapshots at or below its offset and deletes
    /// the others (older ones, and any beyond it: those were not trusted at
    /// start, or the image would be there). Returns the snapshot's path.
    pub fn write(&self, image: &MetadataImage) -> Result<PathBuf, SnapshotError> {
        self.write_bytes(image.offset, 0, &encode(image)?)
    }

    /// Writes snapshot bytes made by [`encode_with`] for `offset` and
    /// `epoch`, as [`SnapshotStore::write`] does.
    pub fn write_bytes(
        &self,
        offset: i64,
        epoch: i32,
        bytes: &[u8],
    ) -> Result<PathBuf, SnapshotError> {
        let name = snapshot_file_name(offset, epoch);
        let path = self.dir.join(&name);
        // A temporary file a crash leaves behind is removed when the metadata
        // log is opened (it removes `*.tmp` in its directory) and is never
        // read as a snapshot.
        let tmp = self.dir.join(format!("{name}{TEMP_SUFFIX}"));
        {
            let mut file = File::create(&tmp)?;
            file.write_all(bytes)?;
            file.sync_all()?;
        }
        fs::rename(&tmp, &path)?;
        strom_storage::checkpoint::sync_dir(&self.dir)?;
        self.retain(offset)?;
        Ok(path)
    }

    fn retain(&self, newest: i64) -> io::Result<()> {
        let snapshots = self.list()?;
        let kept: Vec<i64> = snapshots
            .iter()
            .map(|(offset, _)| *offset)
            .filter(|offset| *offset <= newest)
            .rev()
            .take(SNAPSHOTS_RETAINED)
            .collect();
        for (offset, path) in snapshots {
            if !kept.contains(&offset) {
                match fs::remove_file(&path) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// The image of the newest valid snapshot whose offset lies within
    /// `[log_start_offset, log_end_offset]` (a snapshot beyond the log end
    /// covers records the log does not have; one below the log start would
    /// leave a gap). Invalid snapshots are logged and skipped; `None` when
    /// there is none to use, and the whole log is replayed.
    pub fn load_newest(&self, log_start_offset: i64, log_end_offset: i64) -> Option<MetadataImage> {
        self.load_newest_with(log_start_offset, log_end_offset)
            .map(|(image, _, _)| image)
    }

    /// [`SnapshotStore::load_newest`] with the snapshot's quorum position
    /// and its bytes.
    pub fn load_newest_with(
        &self,
        log_start_offset: i64,
        log_end_offset: i64,
    ) -> Option<(MetadataImage, Option<serde_json::Value>, Vec<u8>)> {
        let snapshots = match self.list() {
            Ok(snapshots) => snapshots,
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot list metadata snapshots; replaying the whole metadata log");
                return None;
            }
        };
        for (offset, path) in snapshots.into_iter().rev() {
            match load(&path, offset, log_start_offset, log_end_offset) {
                Ok(found) => return Some(found),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "ignoring a metadata snapshot")
                }
            }
        }
        None
    }
}

/// Reads and checks the snapshot at `path`, named for `offset`.
fn load(
    path: &Path,
    offset: i64,
    log_start_offset: i64,
    log_end_offset: i64,
) -> Result<(MetadataImage, Option<serde_json::Value>, Vec<u8>), SnapshotError> {
    if offset > log_end_offset || offset < log_start_offset {
        return Err(SnapshotError::Corrupt(format!(
            "covers offsets below {offset}, outside the metadata log [{log_start_offset}, {log_end_offset}]"
        )));
    }
    let len = fs::metadata(path)?.len();
    if len > SNAPSHOT_BYTES_MAX {
        return Err(SnapshotError::Corrupt(format!(
            "{len} bytes, above the limit of {SNAPSHOT_BYTES_MAX}"
        )));
    }
    let bytes = fs::read(path)?;
    let (image, quorum) = decode_with(&bytes)?;
    if image.offset != offset {
        return Err(SnapshotError::Corrupt(format!(
            "holds offset {}, its name says {offset}",
            image.offset
        )));
    }
    Ok((image, quorum, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::ConfigResource;

    fn image() -> MetadataImage {
        let mut image = MetadataImage::default();
        let topic_id = uuid::Uuid::from_u128(7);
        image.apply_batch(
            0,
            &[
                MetadataRecord::ClusterId {
                    cluster_id: "abc".to_owned(),
                },
                MetadataRecord::RegisterBroker {
                    broker_id: 1,
                    host: "localhost".to_owned(),
                    port: 9092,
                    rack: Some("r1".to_owned()),
                    fenced: false,
                    incarnation_id: None,
                    epoch: None,
                },
                MetadataRecord::Topic {
                    name: "orders".to_owned(),
                    topic_id,
                },
                MetadataRecord::Partition {
                    topic_id,
                    partition: 0,
                    // A reassignment to [2] in progress: it must
                    // survive a snapshot.
                    replicas: vec![2, 1],
                    isr: vec![1],
                    leader: 1,
                    leader_epoch: 3,
                    partition_epoch: 4,
                    adding_replicas: vec![2],
                    removing_replicas: vec![1],
                    elr: Vec::new(),
                },
                MetadataRecord::Config {
                    resource: ConfigResource::Topic("orders".to_owned()),
                    name: "retention.ms".to_owned(),
                    value: Some("1000".to_owned()),
                },
                MetadataRecord::Config {
                    resource: ConfigResource::Broker(None),
                    name: "log.retention.ms".to_owned(),
                    value: Some("5".to_owned()),
                },
                MetadataRecord::ProducerIds {
                    broker_id: 1,
                    next_block_start: 2000,
                },
            ],
        );
        image
    }

    #[test]
    fn an_image_round_trips_through_a_snapshot() {
        let image = image();
        assert_eq!(image.offset, 7);
        assert_eq!(decode(&encode(&image).unwrap()).unwrap(), image);
    }

    #[test]
    fn every_damaged_snapshot_is_refused() {
        let bytes = encode(&image()).unwrap();
        // Truncated anywhere, and every byte flipped: never accepted.
        for len in 0..bytes.len() {
            assert!(decode(&bytes[..len]).is_err(), "truncated to {len}");
        }
        for at in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[at] ^= 0x40;
            assert!(decode(&flipped).is_err(), "byte {at} flipped");
        }
        let mut longer = bytes.clone();
        longer.push(b' ');
        assert!(decode(&longer).is_err());
    }

    #[test]
    fn file_names_are_kafkas() {
        assert_eq!(
            snapshot_file_name(42, 0),
            "00000000000000000042-0000000000.checkpoint"
        );
        assert_eq!(
            parse_snapshot_file_name("00000000000000000042-0000000000.checkpoint"),
            Some(42)
        );
        for other in [
            "00000000000000000042.log",
            "00000000000000000042-0000000000.checkpoint.tmp",
            "42-0.checkpoint",
            "leader-epoch-checkpoint",
        ] {
            assert_eq!(parse_snapshot_file_name(other), None, "{other}");
        }
    }

    #[test]
    fn the_store_keeps_the_newest_two_and_skips_what_it_cannot_trust() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::new(dir.path());
        let mut image = image();
        for offset in [10, 20, 30] {
            image.offset = offset;
            store.write(&image).unwrap();
        }
        let offsets: Vec<i64> = store.list().unwrap().iter().map(|(o, _)| *o).collect();
        assert_eq!(offsets, vec![20, 30]);
        assert_eq!(store.load_newest(0, 30).unwrap().offset, 30);
        // Beyond the log end: not trusted, the older one is used.
        assert_eq!(store.load_newest(0, 25).unwrap().offset, 20);
        // A corrupt newest: the older one is used.
        let newest = dir.path().join(snapshot_file_name(30, 0));
        let mut bytes = fs::read(&newest).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&newest, &bytes).unwrap();
        assert_eq!(store.load_newest(0, 30).unwrap().offset, 20);
        // A file named for another offset than it holds.
        fs::rename(
            dir.path().join(snapshot_file_name(20, 0)),
            dir.path().join(snapshot_file_name(21, 0)),
        )
        .unwrap();
        assert!(store.load_newest(0, 30).is_none());
    }
}
