//! The `notify` Lambda function: SQS notices → webhooks with Standard Webhooks signatures.
//! Reports partial batch failures: only the messages whose delivery failed return to the
//! queue (and, after the redrive policy's count, to its dead-letter queue).

use std::sync::Arc;

use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use lambda_runtime::{Error, LambdaEvent, service_fn};
use spkeeper::clients::{WebhookSender, http_client};
use spkeeper::service::deliver::deliver_body;

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let sender = Arc::new(
        init()
            .await
            .inspect_err(|e| tracing::error!(error = %e, "cannot start"))?,
    );
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| {
        let sender = Arc::clone(&sender);
        async move { Ok::<_, Error>(deliver(&sender, event.payload).await) }
    }))
    .await
}

/// Only what delivery needs: no table, no token keys in use.
async fn init() -> Result<WebhookSender, Error> {
    let sdk = spkeeper::aws::sdk_config().await;
    let (settings, secrets) = spkeeper::aws::load_config(&sdk).await?;
    Ok(spkeeper::aws::webhook_sender(
        &settings,
        &secrets,
        http_client()?,
    )?)
}

async fn deliver(sender: &WebhookSender, event: SqsEvent) -> SqsBatchResponse {
    let mut failures = Vec::new();
    for record in event.records {
        let message_id = record.message_id.unwrap_or_default();
        let outcome = match record.body.as_deref() {
            Some(body) => deliver_body(sender, body).await,
            None => Err(spkeeper::clients::DeliveryError::Malformed),
        };
        match outcome {
            Ok(notice_id) => tracing::info!(%notice_id, %message_id, "notice delivered"),
            Err(e) => {
                tracing::warn!(%message_id, error = %e, "notice delivery failed; SQS will retry it");
                let mut failure = BatchItemFailure::default();
                failure.item_identifier = message_id;
                failures.push(failure);
            }
        }
    }
    let mut response = SqsBatchResponse::default();
    response.batch_item_failures = failures;
    response
}
