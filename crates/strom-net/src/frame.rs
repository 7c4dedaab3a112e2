//! Response frames: a big-endian `i32` size, then that many bytes, which
//! start with the correlation id of the request answered.

use bytes::{Bytes, BytesMut};
use strom_protocol::messages::FRAME_SIZE_PREFIX;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::error::{Error, Result};

/// The largest response frame read. A fetch response is bounded by
/// `fetch.max.bytes` (50 MiB by default) but a single batch may exceed it, as
/// may a topic's `max.message.bytes`; 1 GiB leaves room for both while a
/// corrupt size prefix cannot make the client allocate without bound.
pub const MAX_RESPONSE_BYTES: usize = 1 << 30;

/// Bytes of the correlation id every response starts with.
const CORRELATION_ID_BYTES: usize = 4;

/// Reads one response frame (without its size prefix) from `socket`, the
/// connection to `addr`. A size above [`MAX_RESPONSE_BYTES`] or below zero
/// is a protocol error, before anything is allocated.
pub async fn read_frame<R: AsyncRead + Unpin>(addr: &str, socket: &mut R) -> Result<Bytes> {
    let mut size = [0u8; FRAME_SIZE_PREFIX];
    socket
        .read_exact(&mut size)
        .await
        .map_err(|e| Error::io(addr, e))?;
    let size = i32::from_be_bytes(size);
    let size = usize::try_from(size)
        .ok()
        .filter(|&s| s <= MAX_RESPONSE_BYTES)
        .ok_or_else(|| Error::Protocol(format!("{addr} sent a response frame of {size} bytes")))?;
    let mut frame = BytesMut::zeroed(size);
    socket
        .read_exact(&mut frame)
        .await
        .map_err(|e| Error::io(addr, e))?;
    Ok(frame.freeze())
}

/// The correlation id a response frame starts with; `None` for a frame too
/// short to hold one.
pub fn correlation_id(frame: &[u8]) -> Option<i32> {
    let bytes: [u8; CORRELATION_ID_BYTES] = frame.get(..CORRELATION_ID_BYTES)?.try_into().ok()?;
    Some(i32::from_be_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_are_bounded_before_anything_is_allocated() {
        let read = |bytes: &'static [u8]| async move { read_frame("b:1", &mut &bytes[..]).await };
        assert_eq!(&read(&[0, 0, 0, 2, 7, 8]).await.unwrap()[..], &[7, 8]);
        // 2 GiB - 1 bytes, and a negative size.
        assert!(matches!(
            read(&[0x7f, 0xff, 0xff, 0xff]).await,
            Err(Error::Protocol(_))
        ));
        assert!(matches!(
            read(&[0xff, 0xff, 0xff, 0xfe]).await,
            Err(Error::Protocol(_))
        ));
        // A frame cut short is a lost connection.
        assert!(matches!(
            read(&[0, 0, 0, 9, 1]).await,
            Err(Error::Io { .. })
        ));
        assert_eq!(correlation_id(&[0, 0, 1, 0, 0xff]), Some(256));
        assert_eq!(correlation_id(&[0, 0, 1]), None);
    }
}
