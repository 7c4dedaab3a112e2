//! SASL: no mechanism is enabled until the security work, so a handshake is
//! answered with UNSUPPORTED_SASL_MECHANISM and the (empty) list of enabled
//! mechanisms, as Kafka answers a mechanism it does not enable.

use strom_protocol::error_code::ErrorCode;
use strom_protocol::messages::kafka::{SaslHandshakeRequest, SaslHandshakeResponse};

use super::RequestContext;
use crate::broker::Broker;

pub fn handshake(
    _broker: &Broker,
    request: SaslHandshakeRequest,
    _ctx: &RequestContext<'_>,
) -> SaslHandshakeResponse {
    tracing::info!(mechanism = %request.mechanism.as_str(), "SASL handshake refused: no mechanism is enabled");
    SaslHandshakeResponse::default()
        .with_error_code(ErrorCode::UnsupportedSaslMechanism.code())
        .with_mechanisms(Vec::new())
}
