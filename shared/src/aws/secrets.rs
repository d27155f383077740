//! The one Secrets Manager secret (`SPKEEPER_SECRETS_ARN`), read once at start. If it cannot
//! be read the program does not start: it fails closed, with a line that says why.

use aws_sdk_secretsmanager::Client;

use crate::config::{ConfigError, SecretDocument};

const VAR: &str = "SPKEEPER_SECRETS_ARN";

pub async fn load(client: &Client, arn: &str) -> Result<SecretDocument, ConfigError> {
    let out = client
        .get_secret_value()
        .secret_id(arn)
        .send()
        .await
        .map_err(|e| {
            let e = aws_sdk_secretsmanager::Error::from(e);
            ConfigError::new(VAR, format!("cannot read the secret ({})", error_kind(&e)))
        })?;
    let text = out
        .secret_string()
        .ok_or_else(|| ConfigError::new(VAR, "the secret has no string value"))?;
    serde_json::from_str(text)
        .map_err(|_| ConfigError::new(VAR, "the secret is not the JSON object spkeeper expects"))
}

/// The error's kind, never its message (which could echo request details).
fn error_kind(e: &aws_sdk_secretsmanager::Error) -> &'static str {
    use aws_sdk_secretsmanager::Error as E;
    match e {
        E::ResourceNotFoundException(_) => "not found",
        E::DecryptionFailure(_) => "KMS could not decrypt it",
        E::InvalidRequestException(_) | E::InvalidParameterException(_) => "invalid request",
        E::InternalServiceError(_) => "Secrets Manager internal error",
        _ => "access denied or Secrets Manager unreachable",
    }
}
