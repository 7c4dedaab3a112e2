//! A small tmpfs for a test that fills a disk: mounted on a directory,
//! unmounted on drop (even when the test fails). Mounting needs root; a test
//! that cannot mount says so and skips.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A mounted tmpfs.
#[derive(Debug)]
pub struct Tmpfs {
    dir: PathBuf,
    /// The directory it is mounted on, when the tmpfs made it.
    _temp: Option<tempfile::TempDir>,
}

impl Tmpfs {
    /// Mounts a tmpfs with `options` (`size=16m`) on a new temporary
    /// directory; `None`, with the reason printed, when this process may
    /// not mount (the caller skips its test).
    pub fn mount(options: &str) -> Option<Self> {
        let temp = match tempfile::tempdir() {
            Ok(t) => t,
            Err(e) => {
                eprintln!("skipped: no temporary directory for a tmpfs: {e}");
                return None;
            }
        };
        match Self::mount_on(temp.path(), options) {
            Ok(mut t) => {
                t._temp = Some(temp);
                Some(t)
            }
            Err(why) => {
                eprintln!("skipped: cannot mount a tmpfs (needs root): {why}");
                None
            }
        }
    }

    /// Mounts a tmpfs with `options` on `dir` (created if missing), or says
    /// why it could not.
    pub fn mount_on(dir: &Path, options: &str) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("running mount: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "mount on {}: {}",
                dir.display(),
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(Self {
            dir: dir.to_owned(),
            _temp: None,
        })
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Bytes free for an unprivileged writer.
    pub fn available_bytes(&self) -> u64 {
        rustix::fs::statvfs(&self.dir).map_or(0, |s| s.f_bavail * s.f_frsize)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount").arg(&self.dir).output();
        if !unmounted.is_ok_and(|o| o.status.success()) {
            // A process still holds files there (a failed test's broker):
            // detach it.
            let _ = Command::new("umount").arg("-l").arg(&self.dir).output();
        }
    }
}
