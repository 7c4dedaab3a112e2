//! The quorum's state machine: the [`MetadataImage`]. Applying a committed
//! entry replays its metadata records into a new image (the apply step of
//! the controller, [`MetadataImage::apply_batch`]) and publishes it; the
//! image's offset is then the entry's index + 1, so "the metadata offset" a
//! broker reports is where it stands in the quorum's log.
//!
//! Snapshots are image snapshots ([`crate::snapshot`]) that also record the
//! last applied entry and the membership, written next to the Raft log; a
//! start loads the newest and openraft replays the committed entries after it.

use std::io::{self, Cursor};
use std::sync::Arc;

use futures::StreamExt;
use openraft::storage::{EntryResponder, RaftStateMachine, Snapshot};
use openraft::{EntryPayload, RaftSnapshotBuilder};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{Applied, LogId, Snap, TypeConfig};
use crate::image::MetadataImage;
use crate::snapshot::{self, SnapshotStore};

/// Stored membership of this type config.
pub(crate) type Membership = openraft::alias::StoredMembershipOf<TypeConfig>;
type Meta = super::SnapMeta;

/// What a snapshot records beyond the image.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Position {
    applied: Option<LogId>,
    membership: Membership,
}

/// The image, where it stands in the log, and the current snapshot.
#[derive(Debug, Clone)]
pub(crate) struct StateMachine {
    inner: Arc<Mutex<Inner>>,
    images: watch::Sender<Arc<MetadataImage>>,
    snapshots: SnapshotStore,
}

#[derive(Debug)]
struct Inner {
    image: Arc<MetadataImage>,
    applied: Option<LogId>,
    membership: Membership,
    /// The newest snapshot: its metadata and file bytes.
    current: Option<(Meta, Vec<u8>)>,
}

fn io_error(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

fn snapshot_epoch(applied: Option<LogId>) -> i32 {
    applied.map_or(0, |l| i32::try_from(l.leader_id.term).unwrap_or(i32::MAX))
}

impl StateMachine {
    /// Starts from the newest snapshot in `snapshots`, or from `base` (an
    /// image from before the quorum, or an empty one) when there is none.
    pub(crate) fn open(snapshots: SnapshotStore, base: MetadataImage) -> Self {
        let (image, applied, membership, current) = match snapshots.load_newest_with(0, i64::MAX) {
            Some((image, Some(position), bytes)) => {
                match serde_json::from_value::<Position>(position) {
                    Ok(p) => {
                        let meta = p.applied.map(|applied| Meta {
                            last_log_id: Some(applied),
                            last_membership: p.membership.clone(),
                        });
                        let current = meta.map(|m| (m, bytes));
                        (image, p.applied, p.membership, current)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "a metadata snapshot with an unreadable quorum position; starting from the log");
                        (base, None, Membership::default(), None)
                    }
                }
            }
            // A snapshot from before the quorum: the quorum starts on it.
            Some((image, None, _)) => (image, None, Membership::default(), None),
            None => (base, None, Membership::default(), None),
        };
        let (images, _) = watch::channel(Arc::new(image.clone()));
        Self {
            inner: Arc::new(Mutex::new(Inner {
                image: Arc::new(image),
                applied,
                membership,
                current,
            })),
            images,
            snapshots,
        }
    }

    /// Receives every image applied.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Arc<MetadataImage>> {
        self.images.subscribe()
    }

    /// Writes the starting image as a snapshot without a quorum position
    /// (before the first entry is applied), so a restart starts from it.
    pub(crate) fn save_base(&self) -> io::Result<()> {
        let image = Arc::clone(&self.inner.lock().image);
        let bytes = snapshot::encode_with(&image, 0, None).map_err(io_error)?;
        self.snapshots
            .write_bytes(image.offset, 0, &bytes)
            .map_err(io_error)?;
        Ok(())
    }

    fn build(&self) -> io::Result<Snap> {
        let (image, applied, membership) = {
            let inner = self.inner.lock();
            (
                Arc::clone(&inner.image),
                inner.applied,
                inner.membership.clone(),
            )
        };
        let position = serde_json::to_value(Position {
            applied,
            membership: membership.clone(),
        })
        .map_err(io_error)?;
        let epoch = snapshot_epoch(applied);
        let bytes = snapshot::encode_with(&image, epoch, Some(&position)).map_err(io_error)?;
        self.snapshots
            .write_bytes(image.offset, epoch, &bytes)
            .map_err(io_error)?;
        let meta = Meta {
            last_log_id: applied,
            last_membership: membership,
        };
        self.inner.lock().current = Some((meta.clone(), bytes.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Cursor::new(bytes),
        })
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = Cursor<Vec<u8>>;

    async fn build_snapshot(&mut self) -> Result<Snap, io::Error> {
        self.build()
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = Cursor<Vec<u8>>;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, Membership), io::Error> {
        let inner = self.inner.lock();
        Ok((inner.applied, inner.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: futures::Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + Send,
    {
        let mut image = (*self.inner.lock().image).clone();
        let mut replies = Vec::new();
        let mut applied = None;
        let mut membership = None;
        while let Some(next) = entries.next().await {
            let (entry, responder) = next?;
            let index = i64::try_from(entry.log_id.index).map_err(io_error)?;
            match &entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(command) => image.apply_batch(index, &command.records),
                EntryPayload::Membership(m) => {
                    membership = Some(Membership::new(Some(entry.log_id), m.clone()));
                }
            }
            image.offset = index + 1;
            applied = Some(entry.log_id);
            if let Some(responder) = responder {
                replies.push((responder, image.offset));
            }
        }
        let image = Arc::new(image);
        {
            let mut inner = self.inner.lock();
            inner.image = Arc::clone(&image);
            if applied.is_some() {
                inner.applied = applied;
            }
            if let Some(m) = membership {
                inner.membership = m;
            }
        }
        // Published before the writers hear back: a write that returns is
        // in the image its caller reads next.
        self.images.send_replace(image);
        for (responder, offset) in replies {
            responder.send(Applied { offset });
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Cursor<Vec<u8>>,
    ) -> Result<(), io::Error> {
        let bytes = snapshot.into_inner();
        let (image, _) = snapshot::decode_with(&bytes).map_err(io_error)?;
        let epoch = snapshot_epoch(meta.last_log_id);
        self.snapshots
            .write_bytes(image.offset, epoch, &bytes)
            .map_err(io_error)?;
        let image = Arc::new(image);
        {
            let mut inner = self.inner.lock();
            inner.image = Arc::clone(&image);
            inner.applied = meta.last_log_id;
            inner.membership = meta.last_membership.clone();
            inner.current = Some((meta.clone(), bytes));
        }
        self.images.send_replace(image);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snap>, io::Error> {
        Ok(self
            .inner
            .lock()
            .current
            .as_ref()
            .map(|(meta, bytes)| Snapshot {
                meta: meta.clone(),
                snapshot: Cursor::new(bytes.clone()),
            }))
    }
}
