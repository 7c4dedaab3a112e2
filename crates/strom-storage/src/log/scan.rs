//! Sequential reading of the batches in a region of a `.log` file, for
//! recovery, index rebuilds and searches that look inside batches.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use strom_protocol::record_batch::{
    BatchError, BatchHeader, LOG_OVERHEAD, MIN_BATCH_LENGTH, RECORD_BATCH_OVERHEAD,
    peek_offset_and_size,
};

/// Bytes read from the file at a time. Large enough that a scan runs at the
/// speed of the page cache, small enough to be a fine per-scan allocation.
const SCAN_CHUNK_BYTES: usize = 1 << 20;

/// One step of a scan.
#[derive(Debug)]
pub(crate) enum Scanned<'a> {
    /// A batch whose length field is sane and whose bytes are all in the file.
    /// Nothing else (magic, CRC) has been checked.
    Batch {
        position: u64,
        header: BatchHeader,
        bytes: &'a [u8],
    },
    /// The bytes at [`BatchScanner::position`] are not a batch that fits in the region.
    Invalid { error: BatchError },
    /// The region ends exactly after the previous batch.
    End,
}

/// Reads batches one after another from `[start, end)` of a file.
#[derive(Debug)]
pub(crate) struct BatchScanner<'f> {
    file: &'f File,
    /// Position of the next batch.
    position: u64,
    end: u64,
    buf: Vec<u8>,
    /// File position of `buf[0]`.
    buf_start: u64,
}

impl<'f> BatchScanner<'f> {
    pub(crate) fn new(file: &'f File, start: u64, end: u64) -> Self {
        Self {
            file,
            position: start,
            end,
            buf: Vec::new(),
            buf_start: start,
        }
    }

    /// Position of the next batch (after `End` or `Invalid`, where valid data ends).
    pub(crate) fn position(&self) -> u64 {
        self.position
    }

    /// The next batch. A batch is only returned whole.
    pub(crate) fn next_batch(&mut self) -> io::Result<Scanned<'_>> {
        let position = self.position;
        if position >= self.end {
            return Ok(Scanned::End);
        }
        let remaining = self.end - position;
        if remaining < LOG_OVERHEAD as u64 {
            return Ok(self.invalid_truncated(LOG_OVERHEAD, remaining));
        }
        if !self.fill(position, LOG_OVERHEAD)? {
            return Ok(self.invalid_truncated(LOG_OVERHEAD, self.available(position)));
        }
        let at = self.index_of(position);
        let Some((_, size)) = peek_offset_and_size(&self.buf[at..]) else {
            return Ok(self.invalid_truncated(LOG_OVERHEAD, 0));
        };
        if size < LOG_OVERHEAD as i64 + i64::from(MIN_BATCH_LENGTH) {
            let length = i32::try_from(size - LOG_OVERHEAD as i64).unwrap_or(i32::MIN);
            return Ok(Scanned::Invalid {
                error: BatchError::InvalidLength(length),
            });
        }
        let size = size as u64;
        if size > remaining {
            return Ok(
                self.invalid_truncated(usize::try_from(size).unwrap_or(usize::MAX), remaining)
            );
        }
        let Ok(size) = usize::try_from(size) else {
            return Ok(self.invalid_truncated(usize::MAX, remaining));
        };
        if !self.fill(position, size)? {
            return Ok(self.invalid_truncated(size, self.available(position)));
        }
        let at = self.index_of(position);
        let bytes = &self.buf[at..at + size];
        let header = match BatchHeader::parse(bytes) {
            Ok(h) => h,
            Err(error) => return Ok(Scanned::Invalid { error }),
        };
        debug_assert!(bytes.len() >= RECORD_BATCH_OVERHEAD);
        self.position = position + size as u64;
        Ok(Scanned::Batch {
            position,
            header,
            bytes,
        })
    }

    fn invalid_truncated(&self, needed: usize, available: u64) -> Scanned<'static> {
        Scanned::Invalid {
            error: BatchError::Truncated {
                needed,
                available: usize::try_from(available).unwrap_or(usize::MAX),
            },
        }
    }

    fn index_of(&self, position: u64) -> usize {
        // Positions handled are within the buffer, which fits in memory.
        usize::try_from(position - self.buf_start).unwrap_or(usize::MAX)
    }

    fn available(&self, position: u64) -> u64 {
        (self.buf_start + self.buf.len() as u64).saturating_sub(position)
    }

    /// Makes `[position, position + len)` present in `buf`; false if the file
    /// ends first.
    fn fill(&mut self, position: u64, len: usize) -> io::Result<bool> {
        if self.available(position) >= len as u64 {
            return Ok(true);
        }
        // Drop consumed bytes, then read a chunk (or the whole batch if larger).
        let keep_from = self.index_of(position).min(self.buf.len());
        self.buf.drain(..keep_from);
        self.buf_start = position;
        let want = len.max(SCAN_CHUNK_BYTES);
        let want = want.min(usize::try_from(self.end - position).unwrap_or(usize::MAX));
        let have = self.buf.len();
        if want > have {
            self.buf.resize(want, 0);
            let mut filled = have;
            while filled < want {
                let n = self
                    .file
                    .read_at(&mut self.buf[filled..], position + filled as u64)?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            self.buf.truncate(filled);
        }
        Ok(self.buf.len() >= len)
    }
}
