//! `meta.properties`: the identity of a data directory, at its root, in
//! Kafka's format (`MetaProperties`, version 1):
//!
//! ```text
//! version=1
//! cluster.id=...
//! node.id=1
//! directory.id=...
//! ```
//!
//! It says which node and which cluster the data belongs to, so that a
//! directory moved to another node, or a node pointed at another cluster's
//! controllers, refuses to start rather than serve or overwrite the wrong
//! data. `directory.id` is this directory's own UUID (KIP-858), in Kafka's
//! string form (URL-safe base64, 22 characters), as are cluster ids.
//!
//! The file is small and written rarely (once when the directory is formatted
//! or the cluster id is learnt), always atomically: a crash leaves the old
//! file or the new one, never a torn one.
//!
//! A bottom layer: it uses only [`crate::config`]'s helpers and std.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use strom_controller::controller::{kafka_uuid_string, parse_kafka_uuid};
use uuid::Uuid;

use crate::config::parse_properties;

/// The file's name at the root of each data directory (Kafka's).
pub const FILE_NAME: &str = "meta.properties";

/// What `meta.properties` says about its data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaProperties {
    /// `cluster.id`: the cluster this directory's data belongs to; `None`
    /// until the node has learnt it from the quorum.
    pub cluster_id: Option<String>,
    /// `node.id`: the node this directory belongs to.
    pub node_id: i32,
    /// `directory.id`: this directory's own id.
    pub directory_id: Uuid,
}

/// Why `meta.properties` could not be read or written, or does not match
/// this node. Each is one line naming the file or the directory.
#[derive(Debug, thiserror::Error)]
pub enum MetaPropertiesError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file exists but is not a valid version 1 `meta.properties`.
    #[error("{path} is not a valid meta.properties: {reason}")]
    Garbled { path: PathBuf, reason: String },
    #[error("data directory {}belongs to node {found}, not node {expected}", dir_prefix(.dir))]
    NodeMismatch {
        /// The directory, once the caller has attached it with
        /// [`MetaPropertiesError::in_dir`].
        dir: Option<PathBuf>,
        found: i32,
        expected: i32,
    },
    #[error(
        "data directory {}holds data of cluster {found}, not of cluster {expected} this node joined",
        dir_prefix(.dir)
    )]
    ClusterMismatch {
        dir: Option<PathBuf>,
        found: String,
        expected: String,
    },
}

fn dir_prefix(dir: &Option<PathBuf>) -> String {
    dir.as_ref()
        .map_or_else(String::new, |d| format!("{} ", d.display()))
}

impl MetaPropertiesError {
    /// Names the data directory in a mismatch ([`check_node`] and
    /// [`check_cluster`] see only the file's contents):
    /// `check_node(&found, id).map_err(|e| e.in_dir(dir))`.
    #[must_use]
    pub fn in_dir(self, data_dir: &Path) -> Self {
        match self {
            Self::NodeMismatch {
                found, expected, ..
            } => Self::NodeMismatch {
                dir: Some(data_dir.to_path_buf()),
                found,
                expected,
            },
            Self::ClusterMismatch {
                found, expected, ..
            } => Self::ClusterMismatch {
                dir: Some(data_dir.to_path_buf()),
                found,
                expected,
            },
            other => other,
        }
    }
}

impl MetaProperties {
    /// A new directory's identity: a fresh random directory id.
    pub fn new(node_id: i32, cluster_id: Option<String>) -> Self {
        Self {
            cluster_id,
            node_id,
            directory_id: Uuid::new_v4(),
        }
    }
}

/// Reads `data_dir/meta.properties`: `None` when there is none (a new or a
/// pre-cluster directory), an error naming the file when it cannot be read
/// or is garbled.
pub fn read(data_dir: &Path) -> Result<Option<MetaProperties>, MetaPropertiesError> {
    let path = data_dir.join(FILE_NAME);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(MetaPropertiesError::Io { path, source }),
    };
    parse(&text)
        .map(Some)
        .map_err(|reason| MetaPropertiesError::Garbled { path, reason })
}

fn parse(text: &str) -> Result<MetaProperties, String> {
    let props: BTreeMap<String, String> = parse_properties(text);
    let get = |key: &str| props.get(key).map(|v| v.trim()).filter(|v| !v.is_empty());
    match get("version") {
        Some("1") => {}
        Some("0") => {
            return Err(
                "version 0 (a ZooKeeper-mode directory) is not supported; only version=1"
                    .to_owned(),
            );
        }
        Some(other) => return Err(format!("unknown version {other:?}; expected version=1")),
        None => return Err("no version".to_owned()),
    }
    let node_id = get("node.id")
        .ok_or("no node.id")?
        .parse::<i32>()
        .ok()
        .filter(|id| *id >= 0)
        .ok_or_else(|| format!("node.id {:?} is not a node id", get("node.id")))?;
    let directory_id = get("directory.id").ok_or("no directory.id")?;
    let directory_id = parse_kafka_uuid(directory_id)
        .or_else(|| Uuid::parse_str(directory_id).ok())
        .ok_or_else(|| format!("directory.id {directory_id:?} is not a UUID"))?;
    let cluster_id = get("cluster.id").map(str::to_owned);
    if let Some(id) = &cluster_id
        && !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(format!("cluster.id {id:?} is not a cluster id"));
    }
    Ok(MetaProperties {
        cluster_id,
        node_id,
        directory_id,
    })
}

/// Writes `data_dir/meta.properties` atomically: a temporary file, fsynced,
/// renamed over the old one, then the directory fsynced so the rename
/// survives a power loss. Creates `data_dir` if needed.
pub fn write(data_dir: &Path, m: &MetaProperties) -> Result<(), MetaPropertiesError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| MetaPropertiesError::Io { path, source }
    };
    if let Some(id) = &m.cluster_id
        && (id.is_empty()
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
    {
        return Err(MetaPropertiesError::Garbled {
            path: data_dir.join(FILE_NAME),
            reason: format!("refusing to write cluster.id {id:?}: not a cluster id"),
        });
    }
    std::fs::create_dir_all(data_dir).map_err(io(data_dir))?;
    let mut text = String::from("#\n# Written by Strom: the identity of this data directory.\n");
    text.push_str("version=1\n");
    if let Some(id) = &m.cluster_id {
        text.push_str(&format!("cluster.id={id}\n"));
    }
    text.push_str(&format!("node.id={}\n", m.node_id));
    text.push_str(&format!(
        "directory.id={}\n",
        kafka_uuid_string(&m.directory_id)
    ));
    let path = data_dir.join(FILE_NAME);
    let tmp = data_dir.join(format!("{FILE_NAME}.tmp"));
    let mut file = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    file.write_all(text.as_bytes()).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    drop(file);
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    std::fs::File::open(data_dir)
        .and_then(|d| d.sync_all())
        .map_err(io(data_dir))?;
    Ok(())
}

/// Checks that the directory belongs to node `node_id`.
pub fn check_node(found: &MetaProperties, node_id: i32) -> Result<(), MetaPropertiesError> {
    if found.node_id == node_id {
        Ok(())
    } else {
        Err(MetaPropertiesError::NodeMismatch {
            dir: None,
            found: found.node_id,
            expected: node_id,
        })
    }
}

/// Checks that the directory's data is of cluster `cluster_id` (a directory
/// that has not learnt its cluster yet matches any).
pub fn check_cluster(found: &MetaProperties, cluster_id: &str) -> Result<(), MetaPropertiesError> {
    match &found.cluster_id {
        Some(id) if id != cluster_id => Err(MetaPropertiesError::ClusterMismatch {
            dir: None,
            found: id.clone(),
            expected: cluster_id.to_owned(),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> tempfile::TempDir {
        tempfile::tempdir().expect("temp dir")
    }

    #[test]
    fn round_trip_in_kafkas_format() {
        let d = dir();
        assert!(read(d.path()).unwrap().is_none(), "absent is None");
        let m = MetaProperties::new(3, Some("MkU3OEVBNTcwNTJENDM2Qg".to_owned()));
        write(d.path(), &m).unwrap();
        assert_eq!(read(d.path()).unwrap(), Some(m.clone()));
        let text = std::fs::read_to_string(d.path().join("meta.properties")).unwrap();
        let props = parse_properties(&text);
        assert_eq!(props["version"], "1");
        assert_eq!(props["node.id"], "3");
        assert_eq!(props["cluster.id"], "MkU3OEVBNTcwNTJENDM2Qg");
        assert_eq!(props["directory.id"].len(), 22, "Kafka's UUID form");
        assert!(!d.path().join("meta.properties.tmp").exists());
        // Rewritten with the cluster id learnt later; no cluster id at first.
        let unjoined = MetaProperties {
            cluster_id: None,
            ..m.clone()
        };
        write(d.path(), &unjoined).unwrap();
        assert_eq!(read(d.path()).unwrap(), Some(unjoined));
        // A file Kafka wrote reads too (hyphenated UUIDs accepted as well).
        std::fs::write(
            d.path().join("meta.properties"),
            "#\n#Sun Dec 06 21:00:00 UTC 2026\nnode.id=1\ndirectory.id=J8LyKsgZR0ml4Is1YDQHDA\nversion=1\ncluster.id=4L6g3nShT-eMCtK--X86sw\n",
        )
        .unwrap();
        let kafka = read(d.path()).unwrap().unwrap();
        assert_eq!(kafka.node_id, 1);
        assert_eq!(kafka.cluster_id.as_deref(), Some("4L6g3nShT-eMCtK--X86sw"));
    }

    #[test]
    fn a_garbled_file_is_an_error_naming_it() {
        let d = dir();
        for text in [
            "",
            "version=0\nbroker.id=1\n",
            "version=2\nnode.id=1\ndirectory.id=J8LyKsgZR0ml4Is1YDQHDA\n",
            "version=1\ndirectory.id=J8LyKsgZR0ml4Is1YDQHDA\n",
            "version=1\nnode.id=one\ndirectory.id=J8LyKsgZR0ml4Is1YDQHDA\n",
            "version=1\nnode.id=1\n",
            "version=1\nnode.id=1\ndirectory.id=nope\n",
            "version=1\nnode.id=1\ndirectory.id=J8LyKsgZR0ml4Is1YDQHDA\ncluster.id=a b/c\n",
            "\u{0}\u{1}garbage",
        ] {
            std::fs::write(d.path().join("meta.properties"), text).unwrap();
            let err = read(d.path()).expect_err(text).to_string();
            assert!(err.contains("meta.properties"), "{err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
    }

    #[test]
    fn another_nodes_or_clusters_directory_is_refused() {
        let m = MetaProperties::new(2, Some("clusterA".to_owned()));
        assert!(check_node(&m, 2).is_ok());
        let err = check_node(&m, 1)
            .unwrap_err()
            .in_dir(Path::new("/data/n1"))
            .to_string();
        assert_eq!(err, "data directory /data/n1 belongs to node 2, not node 1");
        assert!(check_cluster(&m, "clusterA").is_ok());
        let err = check_cluster(&m, "clusterB")
            .unwrap_err()
            .in_dir(Path::new("/data/n1"))
            .to_string();
        assert_eq!(
            err,
            "data directory /data/n1 holds data of cluster clusterA, not of cluster clusterB this node joined"
        );
        let unjoined = MetaProperties::new(2, None);
        assert!(check_cluster(&unjoined, "clusterB").is_ok());
    }

    #[test]
    fn an_unwritable_directory_is_an_error_naming_the_path() {
        let d = dir();
        let file = d.path().join("not-a-dir");
        std::fs::write(&file, "x").unwrap();
        let err = write(&file, &MetaProperties::new(1, None))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not-a-dir"), "{err}");
        let err = write(d.path(), &MetaProperties::new(1, Some("a\nb".to_owned())))
            .unwrap_err()
            .to_string();
        assert!(!err.contains('\n'), "{err}");
    }
}
