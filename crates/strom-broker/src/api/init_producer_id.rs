//! InitProducerId: a producer id and epoch for an idempotent producer.
//!
//! Without a transactional id Kafka always hands out a fresh producer id with
//! epoch 0 (also when the client names its old id to bump the epoch after an
//! error: a new id serves the same purpose). Transactional ids need the
//! transaction coordinator, which does not exist yet.

use std::sync::Arc;

use strom_protocol::error_code::ErrorCode;
use strom_protocol::messages::kafka::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};

use crate::broker::Broker;

pub async fn handle(
    broker: &Arc<Broker>,
    request: InitProducerIdRequest,
) -> InitProducerIdResponse {
    let failed = |code: ErrorCode| {
        InitProducerIdResponse::default()
            .with_error_code(code.code())
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1)
    };
    if request.transactional_id.is_some() {
        let max = broker
            .config
            .transaction_max_timeout_ms()
            .unwrap_or(900_000);
        if request.transaction_timeout_ms <= 0 || request.transaction_timeout_ms > max {
            return failed(ErrorCode::InvalidTransactionTimeout);
        }
        return failed(ErrorCode::CoordinatorNotAvailable);
    }
    let broker = Arc::clone(broker);
    match super::blocking(move || broker.next_producer_id()).await {
        Some(Ok(id)) => InitProducerIdResponse::default()
            .with_producer_id(ProducerId(id))
            .with_producer_epoch(0),
        Some(Err(e)) => {
            tracing::error!(error = %e, "allocating a producer id failed");
            failed(ErrorCode::UnknownServerError)
        }
        None => failed(ErrorCode::UnknownServerError),
    }
}
