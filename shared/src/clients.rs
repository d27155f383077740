//! Outbound HTTP: ACS, SharePoint's REST API, and webhooks. One `reqwest` client (rustls),
//! built once at start, with the contract's timeouts and no redirects: a redirect would
//! carry a client secret or a bearer token to wherever it points.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use chrono::{DateTime, Utc};
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::Url;

pub mod entra;

use crate::core::acs::{
    AccessToken, AcsFailure, TokenRequestForm, classify_failure, parse_success,
};
use crate::core::hosts::{SiteUrl, realm_from_challenge};
use crate::core::notice::User;

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
pub const TOTAL_TIMEOUT: Duration = Duration::from_secs(5);
/// The most of a response body we read from anyone.
pub const RESPONSE_CAP: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum HttpClientError {
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error(transparent)]
    Build(#[from] reqwest::Error),
}

/// The process's HTTP client, trusting the system's authorities as read once and early
/// ([`crate::tls`]); a system with none fails here, at start, not at every call.
pub fn http_client() -> Result<reqwest::Client, HttpClientError> {
    let tls = crate::tls::client_config()?;
    Ok(reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(TOTAL_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("spkeeper/", env!("CARGO_PKG_VERSION")))
        .build()?)
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("response body over {RESPONSE_CAP} bytes")]
    TooLarge,
    #[error("reading the response failed: {0}")]
    Transport(#[source] reqwest::Error),
}

/// Reads at most [`RESPONSE_CAP`] bytes of a body; more is an error, not a truncation.
pub async fn read_capped(mut resp: reqwest::Response) -> Result<Vec<u8>, ReadError> {
    if resp
        .content_length()
        .is_some_and(|n| n > RESPONSE_CAP as u64)
    {
        return Err(ReadError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(ReadError::Transport)? {
        if body.len() + chunk.len() > RESPONSE_CAP {
            return Err(ReadError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Describes a transport error without its URL's query or anything it carried.
pub fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "could not connect".into()
    } else {
        "transport error".into()
    }
}

/// How the ACS client retries transient failures.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub retries: usize,
    pub min_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        // Three attempts in all, jittered: worst case about 3 × 5 s + 1.5 s, inside API
        // Gateway's 30 s.
        RetryPolicy {
            retries: 2,
            min_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(1),
        }
    }
}

#[derive(Clone)]
pub struct AcsClient {
    http: reqwest::Client,
    retry: RetryPolicy,
}

impl std::fmt::Debug for AcsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcsClient")
            .field("retry", &self.retry)
            .finish()
    }
}

/// What one exchange needs.
pub struct RefreshRequest<'a> {
    pub sts_uri: &'a Url,
    pub client_id: &'a str,
    pub realm: &'a str,
    /// Primary first; the secondary is tried once if ACS refuses the primary.
    pub secrets: &'a [&'a SecretString],
    pub refresh_token: &'a SecretString,
    pub resource: &'a str,
}

impl AcsClient {
    pub fn new(http: reqwest::Client, retry: RetryPolicy) -> Self {
        AcsClient { http, retry }
    }

    /// The refresh-token grant, with retries for transient failures only and one retry with
    /// the secondary secret when ACS refuses the primary (`invalid_client`).
    pub async fn refresh(
        &self,
        req: &RefreshRequest<'_>,
        now: DateTime<Utc>,
    ) -> Result<AccessToken, AcsFailure> {
        let mut secrets = req.secrets.iter();
        let Some(primary) = secrets.next() else {
            return Err(AcsFailure::InvalidClient(
                "no client secret configured".into(),
            ));
        };
        let first = self.with_retries(req, primary, now).await;
        match (first, secrets.next()) {
            (Err(AcsFailure::InvalidClient(reason)), Some(secondary)) => {
                tracing::warn!(event = "sts_rejected_client", %reason, "ACS refused the primary client secret; trying the secondary");
                self.with_retries(req, secondary, now).await
            }
            (result, _) => result,
        }
    }

    async fn with_retries(
        &self,
        req: &RefreshRequest<'_>,
        secret: &SecretString,
        now: DateTime<Utc>,
    ) -> Result<AccessToken, AcsFailure> {
        let form = TokenRequestForm::refresh_token(
            req.client_id,
            req.realm,
            secret,
            req.refresh_token,
            req.resource,
        );
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.retry.min_delay)
            .with_max_delay(self.retry.max_delay)
            .with_max_times(self.retry.retries)
            .with_jitter();
        (|| self.attempt(req.sts_uri, &form, now))
            .retry(backoff)
            .when(AcsFailure::is_transient)
            .notify(|e, after| tracing::warn!(error = %e, retry_in_ms = after.as_millis() as u64, "ACS request failed; retrying"))
            .await
    }

    async fn attempt(
        &self,
        sts_uri: &Url,
        form: &TokenRequestForm,
        now: DateTime<Utc>,
    ) -> Result<AccessToken, AcsFailure> {
        let resp = self
            .http
            .post(sts_uri.clone())
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(ACCEPT, "application/json")
            .body(form.body().to_string())
            .send()
            .await
            .map_err(|e| AcsFailure::Transient(describe(&e)))?;
        let status = resp.status().as_u16();
        let body = read_capped(resp).await.map_err(|e| match e {
            ReadError::TooLarge => AcsFailure::Unexpected("response too large".into()),
            ReadError::Transport(e) => AcsFailure::Transient(describe(&e)),
        })?;
        if (200..300).contains(&status) {
            parse_success(&body, now)
        } else {
            Err(classify_failure(status, &body))
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SharePointError {
    #[error("SharePoint answered HTTP {0}")]
    Status(u16),
    #[error("SharePoint request failed: {0}")]
    Transport(String),
    #[error("SharePoint's answer is not what was asked for")]
    Shape,
}

#[derive(Deserialize)]
struct SpUser {
    #[serde(rename = "Title", default)]
    title: String,
    #[serde(rename = "Email", default)]
    email: String,
    #[serde(rename = "LoginName", default)]
    login_name: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SpUserAnswer {
    /// `odata=verbose`
    Verbose { d: SpUser },
    /// `odata=nometadata` / `minimalmetadata`
    Plain(SpUser),
}

/// `{site}/_api/web/currentuser?$select=Title,Email,LoginName` with the user's access token.
pub async fn current_user(
    http: &reqwest::Client,
    site: &SiteUrl,
    access_token: &SecretString,
) -> Result<User, SharePointError> {
    let url = site.join("_api/web/currentuser?$select=Title,Email,LoginName");
    let bearer = HeaderValue::from_str(&format!("Bearer {}", access_token.expose_secret()))
        .map_err(|_| SharePointError::Transport("access token is not a header value".into()))?;
    let resp = http
        .get(url)
        .header(AUTHORIZATION, bearer)
        .header(ACCEPT, "application/json;odata=nometadata")
        .send()
        .await
        .map_err(|e| SharePointError::Transport(describe(&e)))?;
    let status = resp.status().as_u16();
    if !(200..300).contains(&status) {
        return Err(SharePointError::Status(status));
    }
    let body = read_capped(resp)
        .await
        .map_err(|e| SharePointError::Transport(e.to_string()))?;
    let user =
        match serde_json::from_slice::<SpUserAnswer>(&body).map_err(|_| SharePointError::Shape)? {
            SpUserAnswer::Verbose { d } => d,
            SpUserAnswer::Plain(u) => u,
        };
    if user.title.is_empty() && user.email.is_empty() && user.login_name.is_empty() {
        return Err(SharePointError::Shape);
    }
    Ok(User {
        title: user.title,
        email: user.email,
        login_name: user.login_name,
        oid: None,
    })
}

/// The realm (tenant id) a SharePoint site answers for, discovered as Microsoft's helper does
/// (`TokenHelper.GetRealmFromTargetUrl`): `GET {site}/_vti_bin/client.svc` with an empty
/// bearer token answers 401 with `WWW-Authenticate: Bearer realm="{GUID}",…`.
pub async fn discover_realm(
    http: &reqwest::Client,
    site: &SiteUrl,
) -> Result<String, SharePointError> {
    let resp = http
        .get(site.join("_vti_bin/client.svc"))
        .header(AUTHORIZATION, HeaderValue::from_static("Bearer "))
        .send()
        .await
        .map_err(|e| SharePointError::Transport(describe(&e)))?;
    let status = resp.status().as_u16();
    let realm = realm_from_challenge(
        resp.headers()
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    );
    if status != 401 {
        return Err(SharePointError::Status(status));
    }
    realm.ok_or(SharePointError::Shape)
}

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("the receiver answered HTTP {0}")]
    Status(u16),
    #[error("delivery failed: {0}")]
    Transport(String),
    #[error("the notice could not be signed")]
    Signing,
    #[error("the message is not a notice")]
    Malformed,
}

/// Standard Webhooks delivery: `webhook-id`, `webhook-timestamp`, `webhook-signature`.
pub struct WebhookSender {
    http: reqwest::Client,
    url: Url,
    /// One per secret: every webhook carries a signature by each.
    signers: Vec<standardwebhooks::Webhook>,
}

impl std::fmt::Debug for WebhookSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSender")
            .field("url", &self.url.as_str())
            .finish_non_exhaustive()
    }
}

impl WebhookSender {
    /// Each secret is `whsec_` + base64 (checked when configuration is read); the first is
    /// the secret, a second one is signed with too during a rotation.
    pub fn new(
        http: reqwest::Client,
        url: Url,
        secrets: &[&SecretString],
    ) -> Result<Self, DeliveryError> {
        let signers = secrets
            .iter()
            .map(|s| {
                standardwebhooks::Webhook::new(s.expose_secret())
                    .map_err(|_| DeliveryError::Signing)
            })
            .collect::<Result<Vec<_>, _>>()?;
        if signers.is_empty() {
            return Err(DeliveryError::Signing);
        }
        Ok(WebhookSender { http, url, signers })
    }

    /// The `webhook-signature` header: one `v1,…` signature per secret, space-separated.
    fn signature(&self, id: &str, body: &str, timestamp: i64) -> Result<String, DeliveryError> {
        let signatures = self
            .signers
            .iter()
            .map(|s| {
                s.sign(id, timestamp, body.as_bytes())
                    .map_err(|_| DeliveryError::Signing)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(signatures.join(" "))
    }

    /// Delivers one notice body; a 2xx answer is delivery. `timestamp` is the sending time
    /// (wall clock, epoch seconds).
    pub async fn send(&self, id: &str, body: &str, timestamp: i64) -> Result<(), DeliveryError> {
        let signature = self.signature(id, body, timestamp)?;
        let resp = self
            .http
            .post(self.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| DeliveryError::Transport(describe(&e)))?;
        let status = resp.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(DeliveryError::Status(status.as_u16()))
        }
    }
}

#[cfg(test)]
mod webhook_tests {
    use super::*;

    const OLD: &str = "whsec_b2xkLXdlYmhvb2stc2VjcmV0LTAxMjM0NTY3";
    const NEW: &str = "whsec_bmV3LXdlYmhvb2stc2VjcmV0LTAxMjM0NTY3";

    fn verifies(secret: &str, id: &str, body: &str, ts: i64, signature: &str) -> bool {
        let mut h = axum::http::HeaderMap::new();
        for (k, v) in [
            ("webhook-id", id.to_string()),
            ("webhook-timestamp", ts.to_string()),
            ("webhook-signature", signature.to_string()),
        ] {
            h.insert(k, v.parse().unwrap());
        }
        standardwebhooks::Webhook::new(secret)
            .unwrap()
            .verify(body.as_bytes(), &h)
            .is_ok()
    }

    #[test]
    fn during_a_webhook_secret_rotation_receivers_with_either_secret_verify_each_notice() {
        let url = Url::parse("https://hooks.example.com/x").unwrap();
        let (old, new) = (SecretString::from(OLD), SecretString::from(NEW));
        let both = WebhookSender::new(reqwest::Client::new(), url.clone(), &[&old, &new]).unwrap();
        let ts = chrono::Utc::now().timestamp();
        let (id, body) = ("ntc_0123", r#"{"type":"refresh_token.expiring"}"#);
        let sig = both.signature(id, body, ts).unwrap();
        assert_eq!(sig.split(' ').count(), 2, "{sig}");
        assert!(verifies(OLD, id, body, ts, &sig));
        assert!(verifies(NEW, id, body, ts, &sig));
        // Outside a rotation, one signature, and only its secret verifies it.
        let one = WebhookSender::new(reqwest::Client::new(), url, &[&new]).unwrap();
        let sig = one.signature(id, body, ts).unwrap();
        assert!(!sig.contains(' ') && verifies(NEW, id, body, ts, &sig));
        assert!(!verifies(OLD, id, body, ts, &sig));
        assert!(!verifies(
            OLD,
            id,
            "{}",
            ts,
            &both.signature(id, body, ts).unwrap()
        ));
    }
}
