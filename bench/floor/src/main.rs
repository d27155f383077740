//! The floor the four functions' cold start is measured against (BENCHMARKS.md): what any
//! Rust Lambda that keeps its secrets in Secrets Manager cannot avoid — the runtime, the AWS
//! SDK's configuration, one `GetSecretValue` at init — and nothing else. Built with the same
//! release profile as the functions; never deployed.

use aws_sdk_secretsmanager::Client;
use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::{Value, json};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let arn =
        std::env::var("SPKEEPER_SECRETS_ARN").map_err(|_| "SPKEEPER_SECRETS_ARN is not set")?;
    let sdk = aws_config::load_from_env().await;
    let secret = Client::new(&sdk)
        .get_secret_value()
        .secret_id(arn)
        .send()
        .await?;
    // Held for the life of the process, as the functions hold theirs; never printed.
    let bytes = secret.secret_string().map_or(0, str::len);
    lambda_runtime::run(service_fn(move |_: LambdaEvent<Value>| async move {
        Ok::<Value, Error>(json!({ "secret_bytes": bytes }))
    }))
    .await
}
