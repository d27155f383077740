//! The Secrets Manager secrets (`SPKEEPER_SECRETS_ARN`: one ARN, or several separated by
//! commas), read at start (and again as they age: `crate::secrets_cell`) and merged into one
//! document. Each secret holds some of the fields (README, "Deploy to AWS"), so a function is
//! given, and its role may read, only the
//! secrets whose parts it uses. A field in two of them is a configuration error. If one cannot
//! be read the program does not start: it fails closed, with a line that says which and why.

use aws_sdk_secretsmanager::Client;

use crate::config::{ConfigError, SecretDocument};

pub const VAR: &str = "SPKEEPER_SECRETS_ARN";

/// The ARNs (or names: Secrets Manager takes either, and neither has a comma) of the list, in
/// order, each once (the same secret twice is one document, not a
/// duplicate of every field).
pub fn arns(list: &str) -> Result<Vec<String>, ConfigError> {
    let mut out: Vec<String> = Vec::new();
    for arn in list.split(',').map(str::trim).filter(|a| !a.is_empty()) {
        if !out.iter().any(|a| a == arn) {
            out.push(arn.to_string());
        }
    }
    if out.is_empty() {
        return Err(ConfigError::new(VAR, "is required"));
    }
    Ok(out)
}

/// Reads every secret of the list (at once) and merges them.
pub async fn load(client: &Client, list: &str) -> Result<SecretDocument, ConfigError> {
    let arns = arns(list)?;
    let mut reads = tokio::task::JoinSet::new();
    for (i, arn) in arns.iter().enumerate() {
        let (client, arn) = (client.clone(), arn.clone());
        reads.spawn(async move { (i, load_one(&client, &arn).await) });
    }
    let mut docs: Vec<(usize, SecretDocument)> = Vec::with_capacity(arns.len());
    let mut first_error: Option<(usize, ConfigError)> = None;
    while let Some(done) = reads.join_next().await {
        match done {
            Ok((i, Ok(doc))) => docs.push((i, doc)),
            Ok((i, Err(e))) => {
                if first_error.as_ref().is_none_or(|(j, _)| i < *j) {
                    first_error = Some((i, e));
                }
            }
            Err(_) => return Err(ConfigError::new(VAR, "reading the secrets was interrupted")),
        }
    }
    if let Some((_, e)) = first_error {
        return Err(e);
    }
    docs.sort_by_key(|(i, _)| *i);
    docs.into_iter()
        .try_fold(SecretDocument::default(), |merged, (_, doc)| {
            merged.merge(doc)
        })
}

async fn load_one(client: &Client, arn: &str) -> Result<SecretDocument, ConfigError> {
    let out = client
        .get_secret_value()
        .secret_id(arn)
        .send()
        .await
        .map_err(|e| {
            let e = aws_sdk_secretsmanager::Error::from(e);
            ConfigError::new(
                VAR,
                format!("cannot read the secret {arn} ({})", error_kind(&e)),
            )
        })?;
    let text = out
        .secret_string()
        .ok_or_else(|| ConfigError::new(VAR, format!("the secret {arn} has no string value")))?;
    // The parser's message could quote the value: it is not passed on.
    serde_json::from_str(text).map_err(|_| {
        ConfigError::new(
            VAR,
            format!("the secret {arn} is not the JSON object spkeeper expects"),
        )
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_is_split_trimmed_and_deduplicated() {
        let a = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:spk/client-AbCdEf";
        let b = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:spk/link-key-GhIjKl";
        assert_eq!(arns(a).unwrap(), [a]);
        assert_eq!(arns(&format!(" {a} ,{b},{a},")).unwrap(), [a, b]);
        assert_eq!(arns(" , ").unwrap_err().var, VAR);
    }
}
