//! Kafka request and response messages and their framing.
//!
//! The message structs come from the `kafka-protocol` crate (generated from
//! Kafka 4.1's JSON schemas). Everything else in Strom reaches them through
//! this module, so the source of the structs can be replaced without touching
//! the broker or the client.
//!
//! On the wire every request and response is a frame: a big-endian `i32` size,
//! then that many bytes. A request starts with its header (api key, api
//! version, correlation id, client id, and for flexible versions tagged
//! fields); a response starts with the correlation id (and tagged fields for
//! flexible versions, except ApiVersions, whose response header is always v0).

use bytes::{BufMut, Bytes, BytesMut};
pub use kafka_protocol::messages as kafka;
pub use kafka_protocol::messages::ApiKey;
pub use kafka_protocol::protocol::{
    Decodable, Encodable, Message, Request, StrBytes, VersionRange,
};
pub use uuid::Uuid;

use kafka_protocol::messages::{RequestHeader, ResponseHeader};

/// Kafka's `socket.request.max.bytes` default: the largest request frame read.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 100 * 1024 * 1024;

/// Bytes of the size prefix of every frame.
pub const FRAME_SIZE_PREFIX: usize = 4;

/// Bytes every request header starts with: api key, api version, correlation id.
const REQUEST_HEADER_FIXED: usize = 8;

/// A request read from a connection: the header decoded, the body not yet.
#[derive(Debug, Clone)]
pub struct RequestFrame {
    pub api_key: ApiKey,
    pub api_version: i16,
    pub correlation_id: i32,
    pub client_id: Option<StrBytes>,
    /// The request body, a slice of the frame (decoding it keeps records as
    /// slices of this buffer).
    pub body: Bytes,
}

/// Why a request frame could not be parsed. Carries what is known of the
/// header so the caller can log it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    #[error("request of {0} bytes is shorter than a request header")]
    Truncated(usize),
    #[error("unknown API key {api_key} (correlation id {correlation_id})")]
    UnknownApiKey { api_key: i16, correlation_id: i32 },
    #[error("malformed {api_key:?} v{api_version} request header: {reason}")]
    BadHeader {
        api_key: ApiKey,
        api_version: i16,
        reason: String,
    },
}

/// Why a request body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed {api_key:?} v{api_version} request: {reason}")]
pub struct DecodeError {
    pub api_key: ApiKey,
    pub api_version: i16,
    pub reason: String,
}

/// The request header version for `api_key` at `api_version`, also for
/// versions the key does not support (as Kafka does for ApiVersions, whose
/// future versions must still get an answer).
fn request_header_version(api_key: ApiKey, api_version: i16) -> i16 {
    let range = api_key.valid_versions();
    let clamped = api_version.clamp(range.min, range.max);
    api_key.request_header_version(clamped)
}

/// Parses the header of a request frame (without its size prefix).
pub fn parse_request(frame: Bytes) -> Result<RequestFrame, FrameError> {
    if frame.len() < REQUEST_HEADER_FIXED {
        return Err(FrameError::Truncated(frame.len()));
    }
    let raw_key = i16::from_be_bytes([frame[0], frame[1]]);
    let api_version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let api_key = ApiKey::try_from(raw_key).map_err(|()| FrameError::UnknownApiKey {
        api_key: raw_key,
        correlation_id,
    })?;
    let mut body = frame;
    let header = RequestHeader::decode(&mut body, request_header_version(api_key, api_version))
        .map_err(|e| FrameError::BadHeader {
            api_key,
            api_version,
            reason: e.to_string(),
        })?;
    Ok(RequestFrame {
        api_key,
        api_version,
        correlation_id,
        client_id: header.client_id,
        body,
    })
}

impl RequestFrame {
    /// Whether this build can decode the request's version.
    pub fn version_supported_by_codec(&self) -> bool {
        let range = self.api_key.valid_versions();
        (range.min..=range.max).contains(&self.api_version)
    }

    /// Decodes the body as `T`.
    pub fn decode<T: Decodable>(&self) -> Result<T, DecodeError> {
        let error = |reason: String| DecodeError {
            api_key: self.api_key,
            api_version: self.api_version,
            reason,
        };
        if !self.version_supported_by_codec() {
            return Err(error("unsupported version".to_owned()));
        }
        let mut body = self.body.clone();
        T::decode(&mut body, self.api_version).map_err(|e| error(e.to_string()))
    }
}

/// Encodes a whole response frame (size prefix, header, body) for a request
/// of `api_key` at `api_version`.
pub fn encode_response<T: Encodable>(
    api_key: ApiKey,
    api_version: i16,
    correlation_id: i32,
    body: &T,
) -> Result<BytesMut, String> {
    // ApiVersions answers with header v0 whatever its version, so a client
    // that sent a version we do not know can still read the answer.
    let header_version = if api_key == ApiKey::ApiVersions {
        0
    } else {
        api_key.response_header_version(api_version)
    };
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    encode_frame(&header, header_version, body, api_version)
}

/// A size prefix, then `header` and `body` at their versions.
fn encode_frame<H: Encodable, T: Encodable>(
    header: &H,
    header_version: i16,
    body: &T,
    api_version: i16,
) -> Result<BytesMut, String> {
    let size = header
        .compute_size(header_version)
        .and_then(|h| body.compute_size(api_version).map(|b| h + b))
        .map_err(|e| e.to_string())?;
    let mut buf = BytesMut::with_capacity(FRAME_SIZE_PREFIX + size);
    buf.put_i32(i32::try_from(size).map_err(|_| format!("frame of {size} bytes too large"))?);
    header
        .encode(&mut buf, header_version)
        .map_err(|e| e.to_string())?;
    body.encode(&mut buf, api_version)
        .map_err(|e| e.to_string())?;
    debug_assert_eq!(buf.len(), FRAME_SIZE_PREFIX + size);
    Ok(buf)
}

/// Encodes a whole request frame (size prefix, header, body); for clients and
/// tests.
pub fn encode_request<T: Encodable>(
    api_key: ApiKey,
    api_version: i16,
    correlation_id: i32,
    client_id: Option<&str>,
    body: &T,
) -> Result<BytesMut, String> {
    let header_version = request_header_version(api_key, api_version);
    let header = RequestHeader::default()
        .with_request_api_key(api_key as i16)
        .with_request_api_version(api_version)
        .with_correlation_id(correlation_id)
        .with_client_id(client_id.map(|c| StrBytes::from_string(c.to_owned())));
    encode_frame(&header, header_version, body, api_version)
}

/// Decodes a response frame (without its size prefix); for clients and tests.
pub fn decode_response<T: Decodable>(
    api_key: ApiKey,
    api_version: i16,
    frame: Bytes,
) -> Result<(i32, T), String> {
    let header_version = if api_key == ApiKey::ApiVersions {
        0
    } else {
        api_key.response_header_version(api_version)
    };
    let mut buf = frame;
    let header = ResponseHeader::decode(&mut buf, header_version).map_err(|e| e.to_string())?;
    let body = T::decode(&mut buf, api_version).map_err(|e| e.to_string())?;
    Ok((header.correlation_id, body))
}

#[cfg(test)]
mod tests {
    use super::kafka::{ApiVersionsRequest, ApiVersionsResponse, MetadataRequest};
    use super::*;

    fn without_prefix(mut frame: BytesMut) -> Bytes {
        let _ = frame.split_to(FRAME_SIZE_PREFIX);
        frame.freeze()
    }

    #[test]
    fn request_round_trip_through_parse() {
        let body = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("strom-test"))
            .with_client_software_version(StrBytes::from_static_str("1"));
        let frame = encode_request(ApiKey::ApiVersions, 3, 42, Some("me"), &body).unwrap();
        let size = i32::from_be_bytes(frame[..4].try_into().unwrap());
        assert_eq!(size as usize, frame.len() - 4);
        let parsed = parse_request(without_prefix(frame)).unwrap();
        assert_eq!(
            (parsed.api_key, parsed.api_version, parsed.correlation_id),
            (ApiKey::ApiVersions, 3, 42)
        );
        assert_eq!(parsed.client_id.as_deref(), Some("me"));
        let decoded: ApiVersionsRequest = parsed.decode().unwrap();
        assert_eq!(decoded, body);
    }

    #[test]
    fn api_versions_response_has_header_v0_even_when_flexible() {
        let response = ApiVersionsResponse::default();
        let frame = encode_response(ApiKey::ApiVersions, 3, 7, &response).unwrap();
        // size, correlation id, then straight into the body: error code 0.
        assert_eq!(&frame[4..8], &7i32.to_be_bytes());
        assert_eq!(&frame[8..10], &0i16.to_be_bytes());
        // A v3 body at defaults writes no tagged fields (librdkafka 2.0 needs that):
        // error code, empty compact array, throttle time, zero tagged fields.
        assert_eq!(&frame[8..], &[0, 0, 1, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn hostile_headers_and_bodies_are_errors() {
        assert_eq!(
            parse_request(Bytes::from_static(&[0, 3, 0])).unwrap_err(),
            FrameError::Truncated(3)
        );
        assert!(matches!(
            parse_request(Bytes::from_static(&[0x7f, 0x7f, 0, 0, 0, 0, 0, 1])),
            Err(FrameError::UnknownApiKey {
                api_key: 0x7f7f,
                correlation_id: 1
            })
        ));
        // Metadata v0 with a topic array claiming 2^31-1 entries in 4 bytes:
        // an error, not an allocation of hundreds of GiB.
        let frame = Bytes::from_static(&[
            0, 3, 0, 0, 0, 0, 0, 9, 0xff, 0xff, 0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 0,
        ]);
        let parsed = parse_request(frame).unwrap();
        assert!(parsed.decode::<MetadataRequest>().is_err());
        // The same with a compact (flexible, v9+) array claiming 2^32-2 entries.
        let frame = Bytes::from_static(&[
            0, 3, 0, 12, 0, 0, 0, 9, 0xff, 0xff, 0, 0xff, 0xff, 0xff, 0xff, 0x0f, 1, 0,
        ]);
        let parsed = parse_request(frame).unwrap();
        assert!(parsed.decode::<MetadataRequest>().is_err());
    }
}
