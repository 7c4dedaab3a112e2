//! ApiVersions: which APIs and versions this broker implements.

use strom_protocol::error_code::ErrorCode;
use strom_protocol::messages::kafka::{
    ApiVersionsRequest, ApiVersionsResponse, api_versions_response::ApiVersion,
};
use strom_protocol::messages::{ApiKey, RequestFrame};

use super::{Reply, RequestContext, SUPPORTED_APIS, respond};

/// The advertised APIs, as the response lists them.
fn api_keys() -> Vec<ApiVersion> {
    SUPPORTED_APIS
        .iter()
        .map(|(key, min, max)| {
            ApiVersion::default()
                .with_api_key(*key as i16)
                .with_min_version(*min)
                .with_max_version(*max)
        })
        .collect()
}

/// Kafka's rule for the client software name and version (v3+).
fn valid_software_field(s: &str) -> bool {
    let bytes = s.as_bytes();
    let edge = |b: u8| b.is_ascii_alphanumeric();
    let inner = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'.';
    match (bytes.first(), bytes.last()) {
        (Some(f), Some(l)) => edge(*f) && edge(*l) && bytes.iter().all(|b| inner(*b)),
        _ => false,
    }
}

/// Answers ApiVersions, at any version: it runs before the version check,
/// as a client may ask in a version from the future.
pub fn handle(ctx: &RequestContext<'_>) -> Reply {
    let frame = ctx.header();
    let (min, max) = super::supported_versions(ApiKey::ApiVersions).unwrap_or((0, 0));
    if frame.api_version < min || frame.api_version > max {
        // Kafka answers a version it does not know with a v0 response naming
        // the supported range, so the client can retry with one it knows.
        let response = ApiVersionsResponse::default()
            .with_error_code(ErrorCode::UnsupportedVersion.code())
            .with_api_keys(api_keys());
        let unsupported = RequestFrame {
            api_version: 0,
            ..frame.clone()
        };
        return respond(&unsupported, &response);
    }
    let request: ApiVersionsRequest = match frame.decode() {
        Ok(r) => r,
        Err(e) => return Reply::Close(e.to_string()),
    };
    if frame.api_version >= 3
        && !(valid_software_field(&request.client_software_name)
            && valid_software_field(&request.client_software_version))
    {
        let response =
            ApiVersionsResponse::default().with_error_code(ErrorCode::InvalidRequest.code());
        return respond(frame, &response);
    }
    respond(
        frame,
        &ApiVersionsResponse::default().with_api_keys(api_keys()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn software_names_follow_kafkas_pattern() {
        assert!(valid_software_field("librdkafka"));
        assert!(valid_software_field("2.12.1"));
        assert!(valid_software_field("apache-kafka-java"));
        assert!(!valid_software_field(""));
        assert!(!valid_software_field("-x"));
        assert!(!valid_software_field("a b"));
        assert!(!valid_software_field("x."));
    }
}
