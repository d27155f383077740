//! Entra ID's token endpoint and JWKS, over the one outbound HTTP client (timeouts, no
//! redirects, capped answers). Holds the app's credential and the signing keys (fetched once,
//! again on an unknown `kid`, at most once a minute, and daily).

use std::time::{Duration as StdDuration, Instant};

use chrono::{DateTime, Utc};
use reqwest::header::{ACCEPT, CONTENT_TYPE, RETRY_AFTER};
use secrecy::SecretString;

use super::{ReadError, describe, read_capped};
use crate::config::{AssertionAlg, EntraCredential, EntraSettings};
use crate::core::entra::{
    ClientAuth, EntraFailure, EntraTokens, IdClaims, IdExpectations, IdTokenError, Jwks,
    MIN_RETRY_SECONDS, Thumbprint, TokenForm, classify, client_assertion, parse_tokens,
    validate_id_token,
};
use crate::secrets_cell::SecretsCell;

/// Keys are refetched at least this often (Microsoft: cache for a day).
const JWKS_TTL: StdDuration = StdDuration::from_secs(24 * 3600);
/// An unknown `kid` refetches at most this often. ID tokens come from our own code redemption
/// with Entra (never from the browser), so a new `kid` means a rotation: refetch promptly, but
/// never in a tight loop.
const JWKS_MIN_REFETCH: StdDuration = StdDuration::from_secs(1);

/// Why an ID token could not be checked.
#[derive(Debug, thiserror::Error)]
pub enum IdCheckError {
    #[error(transparent)]
    Token(#[from] IdTokenError),
    #[error("Entra's signing keys could not be fetched: {0}")]
    Keys(String),
}

struct KeyCache {
    jwks: Jwks,
    fetched: Option<Instant>,
}

pub struct EntraClient {
    http: reqwest::Client,
    settings: EntraSettings,
    /// The credential is taken from here at each redemption, so a rotated one (a new
    /// certificate or secret in Secrets Manager) is used without a restart.
    secrets: SecretsCell,
    keys: tokio::sync::Mutex<KeyCache>,
}

impl std::fmt::Debug for EntraClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntraClient")
            .field("client_id", &self.settings.client_id)
            .field("credential", &self.secrets.get().entra)
            .finish_non_exhaustive()
    }
}

fn random_id() -> String {
    let mut b = [0u8; 16];
    let _ = getrandom::fill(&mut b);
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

impl EntraClient {
    /// `secrets` holds the Entra credential (`None` there: every redemption fails as
    /// unexpected, naming it).
    pub fn new(http: reqwest::Client, settings: EntraSettings, secrets: SecretsCell) -> Self {
        EntraClient {
            http,
            settings,
            secrets,
            keys: tokio::sync::Mutex::new(KeyCache {
                jwks: Jwks::default(),
                fetched: None,
            }),
        }
    }

    pub fn settings(&self) -> &EntraSettings {
        &self.settings
    }

    /// The credential as form fields: the secret, or a fresh client assertion.
    fn auth<'a>(
        &self,
        credential: Option<&'a EntraCredential>,
        now: DateTime<Utc>,
    ) -> Result<ClientAuth<'a>, EntraFailure> {
        let credential = credential.ok_or_else(|| {
            EntraFailure::Unexpected("this program holds no Entra credential".into())
        })?;
        match credential {
            EntraCredential::Secret(s) => Ok(ClientAuth::Secret(s)),
            EntraCredential::Certificate { key, x5t_s256, x5t } => {
                let thumbprint = match self.settings.assertion_alg {
                    AssertionAlg::Ps256 => Thumbprint::S256(x5t_s256),
                    AssertionAlg::Rs256 => Thumbprint::Sha1(x5t),
                };
                client_assertion(
                    key,
                    thumbprint,
                    &self.settings.client_id,
                    &self.settings.token_endpoint(),
                    &random_id(),
                    now,
                )
                .map(ClientAuth::Assertion)
                .map_err(|e| EntraFailure::Unexpected(e.to_string()))
            }
        }
    }

    async fn post(&self, form: TokenForm, now: DateTime<Utc>) -> Result<EntraTokens, EntraFailure> {
        let transient = |why: String| EntraFailure::Transient {
            retry_after: MIN_RETRY_SECONDS,
            why,
        };
        let resp = self
            .http
            .post(self.settings.token_endpoint())
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(ACCEPT, "application/json")
            .body(form.body().to_string())
            .send()
            .await
            .map_err(|e| transient(describe(&e)))?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = read_capped(resp).await.map_err(|e| match e {
            ReadError::TooLarge => EntraFailure::Unexpected("response too large".into()),
            ReadError::Transport(e) => transient(describe(&e)),
        })?;
        if (200..300).contains(&status) {
            parse_tokens(&body, now)
        } else {
            Err(classify(status, retry_after.as_deref(), &body))
        }
    }

    /// Redeems a sign-in's code (with its PKCE verifier).
    pub async fn redeem_code(
        &self,
        code: &SecretString,
        redirect_uri: &str,
        verifier: &SecretString,
        now: DateTime<Utc>,
    ) -> Result<EntraTokens, EntraFailure> {
        self.with_credential(now, |auth| {
            TokenForm::authorization_code(
                &self.settings.client_id,
                auth,
                code,
                redirect_uri,
                verifier,
            )
        })
        .await
    }

    /// Redeems a refresh token for one resource's scope.
    pub async fn refresh(
        &self,
        refresh_token: &SecretString,
        scope: &str,
        now: DateTime<Utc>,
    ) -> Result<EntraTokens, EntraFailure> {
        self.with_credential(now, |auth| {
            TokenForm::refresh_token(&self.settings.client_id, auth, refresh_token, scope)
        })
        .await
    }

    /// Posts the form `make` builds with the app's credential as it is now. If Entra refuses
    /// the credential (`invalid_client`: a rotation reached Secrets Manager and the app
    /// registration before this instance read it), the secrets are read again at once (at
    /// most once a second) and, if they changed, the form is posted once more with the new
    /// one. Entra checks the client before the code or refresh token, so neither was used.
    async fn with_credential(
        &self,
        now: DateTime<Utc>,
        make: impl Fn(&ClientAuth<'_>) -> TokenForm,
    ) -> Result<EntraTokens, EntraFailure> {
        let secrets = self.secrets.get();
        let result = self
            .post(make(&self.auth(secrets.entra.as_ref(), now)?), now)
            .await;
        let refused_client = matches!(&result, Err(EntraFailure::Operator { error, .. }) if error == "invalid_client");
        if !refused_client || !self.secrets.refresh_at_once().await {
            return result;
        }
        let fresh = self.secrets.get();
        if std::sync::Arc::ptr_eq(&secrets, &fresh) {
            return result;
        }
        tracing::info!("Entra refused the app's credential; trying the credential read just now");
        self.post(make(&self.auth(fresh.entra.as_ref(), now)?), now)
            .await
    }

    async fn fetch_keys(&self) -> Result<Jwks, IdCheckError> {
        let resp = self
            .http
            .get(self.settings.jwks_uri())
            .header(ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| IdCheckError::Keys(describe(&e)))?;
        if !resp.status().is_success() {
            return Err(IdCheckError::Keys(format!(
                "HTTP {}",
                resp.status().as_u16()
            )));
        }
        let body = read_capped(resp)
            .await
            .map_err(|e| IdCheckError::Keys(e.to_string()))?;
        Ok(Jwks::parse(&body)?)
    }

    /// Validates an ID token with the JWKS, fetched once per instance, again when a token
    /// names an unknown `kid` (keys rotate), and daily.
    pub async fn id_claims(
        &self,
        token: &str,
        nonce: &str,
        now: DateTime<Utc>,
    ) -> Result<IdClaims, IdCheckError> {
        let x = IdExpectations {
            client_id: &self.settings.client_id,
            tenant: &self.settings.tenant,
            authority: &self.settings.authority,
            nonce,
            now,
        };
        let mut cache = self.keys.lock().await;
        let stale = cache.fetched.is_none_or(|t| t.elapsed() > JWKS_TTL);
        if stale {
            cache.jwks = self.fetch_keys().await?;
            cache.fetched = Some(Instant::now());
        }
        match validate_id_token(token, &cache.jwks, &x) {
            Err(IdTokenError::UnknownKey(kid))
                if cache
                    .fetched
                    .is_some_and(|t| t.elapsed() >= JWKS_MIN_REFETCH)
                    || stale =>
            {
                if stale {
                    return Err(IdTokenError::UnknownKey(kid).into());
                }
                tracing::info!(%kid, "ID token signed with a key not in the cached JWKS; fetching it again");
                cache.jwks = self.fetch_keys().await?;
                cache.fetched = Some(Instant::now());
                Ok(validate_id_token(token, &cache.jwks, &x)?)
            }
            other => Ok(other?),
        }
    }
}
