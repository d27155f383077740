//! The `notify` Lambda function: SQS notices → webhooks with Standard Webhooks signatures.
//! Reports partial batch failures: only the messages whose delivery failed return to the
//! queue. Each of those is first hidden for its backoff by receive count (the embedded
//! outbox's schedule, `spkeeper::aws::sqs::retry_delay`), so a receiver that is down is tried
//! again and again for more than a day, not every few minutes until the redrive policy's
//! count sends the notice to the dead-letter queue.

use std::sync::Arc;

use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use lambda_runtime::{Error, LambdaEvent, service_fn};
use spkeeper::aws::sqs::{SqsQueue, receive_count};
use spkeeper::clients::{DeliveryError, WebhookSender, http_client};
use spkeeper::config::{Program, Settings};
use spkeeper::secrets_cell::SecretsCell;
use spkeeper::service::deliver::deliver_body;

/// What a delivery needs: the webhook secrets (read again as they age, so a rotation reaches
/// a running instance), where to send, and the queue to hold back failed notices.
struct Notify {
    settings: Settings,
    secrets: SecretsCell,
    http: reqwest::Client,
    queue: SqsQueue,
}

impl Notify {
    /// The sender for this batch: signed with the webhook secrets as they are now.
    async fn sender(&self) -> Result<WebhookSender, spkeeper::config::ConfigError> {
        self.secrets.refresh_if_stale().await;
        spkeeper::aws::webhook_sender(&self.settings, &self.secrets.get(), self.http.clone())
    }
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    spkeeper::logging::init_lambda();
    let notify = Arc::new(
        init()
            .await
            .inspect_err(|e| tracing::error!(error = %e, "cannot start"))?,
    );
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| {
        let notify = Arc::clone(&notify);
        async move { Ok::<_, Error>(deliver(&notify, event.payload).await) }
    }))
    .await
}

/// Only what delivery needs: no table, and of the secrets only the webhook secret. A start
/// without a webhook URL or secret stops here, not at the first notice.
async fn init() -> Result<Notify, Error> {
    let sdk = spkeeper::aws::sdk_config().await;
    let (settings, secrets) = spkeeper::aws::load_refreshing(&sdk, Program::Notify).await?;
    let http = http_client()?;
    spkeeper::aws::webhook_sender(&settings, &secrets.get(), http.clone())?;
    let queue = spkeeper::aws::notice_queue(&sdk, &settings)?;
    Ok(Notify {
        settings,
        secrets,
        http,
        queue,
    })
}

/// Delivers the batch's records at once (so one slow receiver costs one timeout, not ten)
/// and names the messages that failed, each hidden for its backoff first.
async fn deliver(notify: &Arc<Notify>, event: SqsEvent) -> SqsBatchResponse {
    let sender = match notify.sender().await {
        Ok(s) => Arc::new(s),
        Err(e) => {
            // Checked at start, and a secret read again is checked before it is used: not
            // expected; the batch goes back to the queue as it is.
            tracing::error!(error = %e, "cannot sign notices");
            return retry_everything();
        }
    };
    let mut deliveries = tokio::task::JoinSet::new();
    for record in event.records {
        let notify = Arc::clone(notify);
        let sender = Arc::clone(&sender);
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
                    let count = receive_count(
                        record
                            .attributes
                            .get("ApproximateReceiveCount")
                            .map(String::as_str),
                    );
                    // Without a receipt handle (or if SQS refuses the change) the queue's own
                    // visibility timeout applies: the notice is still retried.
                    let retry = match record.receipt_handle.as_deref() {
                        Some(handle) => notify.queue.retry_later(handle, count).await,
                        None => Err(spkeeper::ports::StoreError::Corrupt(
                            "the record has no receipt handle".into(),
                        )),
                    };
                    spkeeper::aws::log_failure(Some(&message_id), &e, count, retry);
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
