//! The `notify` Lambda function: SQS notices → webhooks with Standard Webhooks signatures.
//! Reports partial batch failures: only the messages whose delivery failed return to the
//! queue (and, after the redrive policy's count, to its dead-letter queue).

use std::sync::Arc;

use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use lambda_runtime::{Error, LambdaEvent, service_fn};
use spkeeper::clients::{DeliveryError, WebhookSender, http_client};
use spkeeper::config::Program;
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

/// Only what delivery needs: no table, and of the secrets only the webhook secret.
async fn init() -> Result<WebhookSender, Error> {
    let sdk = spkeeper::aws::sdk_config().await;
    let (settings, secrets) = spkeeper::aws::load_config(&sdk, Program::Notify).await?;
    Ok(spkeeper::aws::webhook_sender(
        &settings,
        &secrets,
        http_client()?,
    )?)
}

/// Delivers the batch's records at once (so one slow receiver costs one timeout, not ten)
/// and names the messages that failed.
async fn deliver(sender: &Arc<WebhookSender>, event: SqsEvent) -> SqsBatchResponse {
    let mut deliveries = tokio::task::JoinSet::new();
    for record in event.records {
        let sender = Arc::clone(sender);
        deliveries.spawn(async move {
            let message_id = record.message_id.unwrap_or_default();
            let outcome = match record.body.as_deref() {
                Some(body) => deliver_body(&sender, body).await,
                None => Err(DeliveryError::Malformed),
            };
            match outcome {
                Ok(notice_id) => {
                    tracing::info!(%notice_id, %message_id, "notice delivered");
                    None
                }
                Err(e) => {
                    tracing::warn!(%message_id, error = %e, "notice delivery failed; SQS will retry it");
                    Some(message_id)
                }
            }
        });
    }
    let mut failures = Vec::new();
    while let Some(done) = deliveries.join_next().await {
        // A delivery task cannot panic in a release build (panic = abort); in any case, a
        // task that did not finish is not a delivery, but its id is lost with it, so the
        // whole batch is retried instead.
        match done {
            Ok(Some(id)) => failures.push(failure(id)),
            Ok(None) => {}
            Err(_) => return retry_everything(),
        }
    }
    let mut response = SqsBatchResponse::default();
    response.batch_item_failures = failures;
    response
}

fn failure(message_id: String) -> BatchItemFailure {
    let mut f = BatchItemFailure::default();
    f.item_identifier = message_id;
    f
}

/// An empty item identifier makes Lambda treat the whole batch as failed.
fn retry_everything() -> SqsBatchResponse {
    let mut response = SqsBatchResponse::default();
    response.batch_item_failures = vec![failure(String::new())];
    response
}
