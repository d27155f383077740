//! The AWS adapters (feature `aws`): DynamoDB store, SQS queue and relay, Secrets Manager,
//! API Gateway IAM auth, and what every Lambda function builds once at init.

pub mod dynamo;
pub mod iam;
pub mod relay;
pub mod secrets;
pub mod sqs;
pub mod table;

use std::sync::Arc;

use aws_config::{BehaviorVersion, SdkConfig};

use crate::clients::{DeliveryError, WebhookSender, http_client};
use crate::clock::SystemClock;
use crate::config::{
    ConfigError, Env, Need, Needs, Program, Secrets, Settings, Source, StoreChoice,
};
use crate::context::Context;
use crate::secrets_cell::{SecretsCell, SecretsSource};
use crate::service::deliver::deliver_body;
pub use aws_sdk_secretsmanager::Client as SecretsClient;
use dynamo::DynamoStore;
use relay::DynamoRelay;
use sqs::SqsQueue;

/// The SDK's configuration from the environment (region, credentials, `AWS_ENDPOINT_URL`).
/// Every program calls this first at start; meanwhile a blocking thread reads the system's
/// certificate authorities for the process's own HTTP client ([`crate::tls::preload`]), so
/// that reading overlaps the SDK's set-up and the secrets' round trip instead of following it.
pub async fn sdk_config() -> SdkConfig {
    crate::tls::preload();
    aws_config::load_defaults(BehaviorVersion::latest()).await
}

/// The table, the queue and the relay between them.
#[derive(Debug, Clone)]
pub struct Aws {
    pub dynamo: DynamoStore,
    pub queue: SqsQueue,
    pub relay: DynamoRelay,
}

impl Aws {
    pub fn new(sdk: &SdkConfig, table: &str, queue_url: &str) -> Self {
        Self::from_clients(
            aws_sdk_dynamodb::Client::new(sdk),
            aws_sdk_sqs::Client::new(sdk),
            table,
            queue_url,
        )
    }

    pub fn from_clients(
        dynamo: aws_sdk_dynamodb::Client,
        sqs: aws_sdk_sqs::Client,
        table: &str,
        queue_url: &str,
    ) -> Self {
        let dynamo = DynamoStore::new(dynamo, table);
        let queue = SqsQueue::new(sqs, queue_url);
        let relay = DynamoRelay::new(dynamo.clone(), queue.clone());
        Aws {
            dynamo,
            queue,
            relay,
        }
    }

    /// The same, its relay's leases timed by `clock` instead of the wall clock (tests: a
    /// lease lapsing without waiting for it).
    pub fn with_lease_clock(self, clock: Arc<dyn crate::clock::Clock>) -> Self {
        let dynamo = self.dynamo.with_lease_clock(clock);
        let relay = DynamoRelay::new(dynamo.clone(), self.queue.clone());
        Aws {
            dynamo,
            queue: self.queue,
            relay,
        }
    }

    /// From `SPKEEPER_TABLE` and `SPKEEPER_QUEUE_URL`.
    pub fn from_settings(sdk: &SdkConfig, settings: &Settings) -> Result<Self, ConfigError> {
        match &settings.store {
            StoreChoice::DynamoDb { table, queue_url } => Ok(Aws::new(sdk, table, queue_url)),
            StoreChoice::Sqlite { .. } => Err(ConfigError::new(
                "SPKEEPER_STORE",
                "must be dynamodb in AWS",
            )),
        }
    }

    pub fn context(
        &self,
        settings: Settings,
        secrets: SecretsCell,
    ) -> Result<Arc<Context>, ConfigError> {
        let http = http_client().map_err(|e| {
            ConfigError::new(
                "SPKEEPER_PUBLIC_URL",
                format!("cannot build the HTTP client: {e}"),
            )
        })?;
        Ok(Arc::new(Context {
            settings,
            secrets,
            clock: Arc::new(SystemClock),
            grants: Arc::new(self.dynamo.clone()),
            cache: Arc::new(self.dynamo.clone()),
            relay: Arc::new(self.relay.clone()),
            http,
        }))
    }
}

/// Settings from the environment, and the secrets `program` uses from the Secrets Manager
/// secrets in `SPKEEPER_SECRETS_ARN`: each part it needs must be there, each part it does not
/// need is dropped (and named in a warning: the function should not be given it); and where
/// the secrets came from (to read them again).
async fn load_with_source(
    sdk: &SdkConfig,
    program: Program,
) -> Result<(Settings, Secrets, SecretsManager), ConfigError> {
    let (settings, source) = secrets_source(sdk, program)?;
    let doc = secrets::load(&source.client, &source.list).await?;
    let needs = source.needs;
    let unused: Vec<&str> = doc
        .parts_present()
        .into_iter()
        .filter(|p| needs.get(*p) == Need::No)
        .flat_map(|p| p.fields().iter().copied())
        .collect();
    if !unused.is_empty() {
        tracing::warn!(
            function = program.name(),
            unused = ?unused,
            "the secrets hold fields this function does not use (ignored): give it only its own secrets"
        );
    }
    let secrets = Secrets::for_needs(doc, needs)?;
    Ok((settings, secrets, source))
}

/// The settings, and where `program`'s secrets are read from (`SPKEEPER_SECRETS_ARN`).
fn secrets_source(
    sdk: &SdkConfig,
    program: Program,
) -> Result<(Settings, SecretsManager), ConfigError> {
    let settings = Settings::from_source(&Env)?;
    let list = Env
        .get(secrets::VAR)
        .ok_or_else(|| ConfigError::new(secrets::VAR, "is required"))?;
    let source = SecretsManager {
        client: aws_sdk_secretsmanager::Client::new(sdk),
        list,
        needs: Needs::of(program, &settings),
    };
    Ok((settings, source))
}

/// The program's secrets in Secrets Manager, read again as they age (a rotation reaches
/// running functions without a redeploy: [`SecretsCell`]).
struct SecretsManager {
    client: aws_sdk_secretsmanager::Client,
    list: String,
    needs: Needs,
}

#[async_trait::async_trait]
impl SecretsSource for SecretsManager {
    async fn fetch(&self) -> Result<Secrets, ConfigError> {
        let doc = secrets::load(&self.client, &self.list).await?;
        Secrets::for_needs(doc, self.needs)
    }
}

/// The settings, and `program`'s secrets read now and again every
/// `SPKEEPER_SECRETS_REFRESH_SECONDS` (five minutes by default) as the function runs.
pub async fn load_refreshing(
    sdk: &SdkConfig,
    program: Program,
) -> Result<(Settings, SecretsCell), ConfigError> {
    let every =
        crate::secrets_cell::refresh_every(Env.get(crate::secrets_cell::REFRESH_VAR).as_deref())?;
    let (settings, secrets, source) = load_with_source(sdk, program).await?;
    let cell = SecretsCell::refreshing(secrets, Arc::new(source), std::time::Instant::now(), every);
    Ok((settings, cell))
}

/// What a Lambda function with the table needs, built once at init. Its secrets are read
/// again every few minutes, and at once when a sealed value names a key it does not know.
pub async fn init_context(program: Program) -> Result<(Arc<Context>, Aws), ConfigError> {
    let sdk = sdk_config().await;
    let (settings, cell) = load_refreshing(&sdk, program).await?;
    let aws = Aws::from_settings(&sdk, &settings)?;
    let ctx = aws.context(settings, cell)?;
    Ok((ctx, aws))
}

/// The notice queue (`SPKEEPER_QUEUE_URL`) on its own, for a function without the table.
pub fn notice_queue(sdk: &SdkConfig, settings: &Settings) -> Result<SqsQueue, ConfigError> {
    match &settings.store {
        StoreChoice::DynamoDb { queue_url, .. } => {
            Ok(SqsQueue::new(aws_sdk_sqs::Client::new(sdk), queue_url))
        }
        StoreChoice::Sqlite { .. } => Err(ConfigError::new(
            "SPKEEPER_STORE",
            "must be dynamodb in AWS",
        )),
    }
}

/// The webhook sender from the settings and secrets.
pub fn webhook_sender(
    settings: &Settings,
    secrets: &Secrets,
    http: reqwest::Client,
) -> Result<WebhookSender, ConfigError> {
    let url = settings.webhook_url.clone().ok_or_else(|| {
        ConfigError::new("SPKEEPER_WEBHOOK_URL", "is required to deliver notices")
    })?;
    if secrets.webhook_secret.is_none() {
        return Err(ConfigError::new(
            "SPKEEPER_WEBHOOK_SECRET",
            "is required to deliver notices",
        ));
    }
    WebhookSender::new(http, url, &secrets.webhook_secrets())
        .map_err(|e| ConfigError::new("SPKEEPER_WEBHOOK_SECRET", e.to_string()))
}

/// One round of delivering from SQS outside Lambda (`spkeeper serve` on DynamoDB): receive,
/// deliver, delete what was delivered. What fails is hidden for its backoff
/// ([`sqs::retry_delay`]) and ends in the queue's dead-letter queue, as with the `notify`
/// function.
pub async fn consume_once(
    queue: &SqsQueue,
    sender: &WebhookSender,
    wait_seconds: i32,
) -> Result<u32, crate::ports::StoreError> {
    let out = queue
        .client()
        .receive_message()
        .queue_url(queue.url())
        .max_number_of_messages(10)
        .wait_time_seconds(wait_seconds)
        .message_system_attribute_names(
            aws_sdk_sqs::types::MessageSystemAttributeName::ApproximateReceiveCount,
        )
        .send()
        .await
        .map_err(|e| crate::ports::StoreError::unavailable(aws_sdk_sqs::Error::from(e)))?;
    let mut delivered = 0;
    for m in out.messages() {
        let (Some(body), Some(receipt)) = (m.body(), m.receipt_handle()) else {
            continue;
        };
        match deliver_body(sender, body).await {
            Ok(id) => {
                queue
                    .client()
                    .delete_message()
                    .queue_url(queue.url())
                    .receipt_handle(receipt)
                    .send()
                    .await
                    .map_err(|e| {
                        crate::ports::StoreError::unavailable(aws_sdk_sqs::Error::from(e))
                    })?;
                tracing::info!(notice_id = %id, "notice delivered");
                delivered += 1;
            }
            Err(e) => {
                let count = sqs::receive_count(
                    m.attributes()
                        .and_then(|a| {
                            a.get(&aws_sdk_sqs::types::MessageSystemAttributeName::ApproximateReceiveCount)
                        })
                        .map(String::as_str),
                );
                let retry = queue.retry_later(receipt, count).await;
                log_failure(m.message_id(), &e, count, retry);
            }
        }
    }
    Ok(delivered)
}

/// One failed delivery, and when it is tried again (or that SQS's own visibility timeout
/// decides, if the delay could not be set).
pub fn log_failure(
    message_id: Option<&str>,
    e: &DeliveryError,
    receive_count: u32,
    retry: Result<i32, crate::ports::StoreError>,
) {
    let message_id = message_id.unwrap_or("");
    match retry {
        Ok(delay) => tracing::warn!(
            message_id,
            error = %e,
            receive_count,
            retry_in_seconds = delay,
            "notice delivery failed; retried after a backoff"
        ),
        Err(ve) => tracing::warn!(
            message_id,
            error = %e,
            receive_count,
            visibility_error = %ve,
            "notice delivery failed; retried after the queue's visibility timeout"
        ),
    }
}
