//! InitProducerId: a producer id and epoch for an idempotent or
//! transactional producer.
//!
//! Without a transactional id Kafka always hands out a fresh producer id with
//! epoch 0 (also when the client names its old id to bump the epoch after an
//! error: a new id serves the same purpose). With one, the transaction
//! coordinator bumps the id's epoch, fencing earlier instances, and aborts
//! their open transaction.

use std::sync::Arc;

use strom_protocol::error_code::ErrorCode;
use strom_protocol::messages::kafka::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};

use super::RequestContext;
use crate::broker::Broker;

pub async fn handle(
    broker: &Arc<Broker>,
    request: InitProducerIdRequest,
    ctx: &RequestContext<'_>,
) -> InitProducerIdResponse {
    let version = ctx.api_version();
    let failed = |code: ErrorCode| {
        InitProducerIdResponse::default()
            .with_error_code(code.code())
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1)
    };
    if let Some(transactional_id) = &request.transactional_id {
        if transactional_id.is_empty() {
            return failed(ErrorCode::InvalidRequest);
        }
        let max = broker.txn.config.max_timeout_ms;
        if request.transaction_timeout_ms <= 0 || request.transaction_timeout_ms > max {
            return failed(ErrorCode::InvalidTransactionTimeout);
        }
        // KIP-360 (v3+): a producer that names its id and epoch asks for a
        // bump of exactly that epoch.
        let expected = (version >= 3 && request.producer_id.0 >= 0)
            .then_some((request.producer_id.0, request.producer_epoch));
        let image = match super::txn::txn_image(broker).await {
            Ok(image) => image,
            Err(code) => return failed(code),
        };
        return match broker
            .txn
            .init_producer_id(
                &image,
                &super::txn::ClusterMarkerSender::new(broker),
                transactional_id.as_str(),
                request.transaction_timeout_ms,
                expected,
                version,
            )
            .await
        {
            Ok((producer_id, epoch)) => InitProducerIdResponse::default()
                .with_producer_id(ProducerId(producer_id))
                .with_producer_epoch(epoch),
            Err(code) => failed(code),
        };
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
