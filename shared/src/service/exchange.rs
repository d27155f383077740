//! Access tokens on demand: from the cache while more than 5 minutes remain, else one ACS call
//! per (grant, host) however many callers ask at once, in this process (a mutex per key) and
//! across processes and Lambda instances (a lease in the store).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration as StdDuration, Instant};

use chrono::{DateTime, Duration, Utc};
use secrecy::{ExposeSecret, SecretString};

use crate::clients::{AcsClient, RefreshRequest, RetryPolicy, current_user};
use crate::context::Context;
use crate::context::GrantView;
use crate::core::acs::{AcsFailure, resource};
use crate::core::entra::Reason;
use crate::core::grant::GrantId;
use crate::core::hosts::SiteUrl;
use crate::core::seal::{Place, SealError};
use crate::ports::{CachedToken, StoreError, StoredGrant};
use crate::service::{aadsts_code, mark_revoked};

/// A cached access token is used while more than this remains (Microsoft's helper renews
/// 5 minutes before `expires_on`).
pub const MIN_REMAINING: Duration = Duration::minutes(5);
/// How long one caller may hold the ACS lease: longer than the worst-case retried exchange.
const LEASE: Duration = Duration::seconds(25);
/// How long a caller waits for another's exchange before giving up with 503.
const WAIT_FOR_OTHERS: StdDuration = StdDuration::from_secs(25);
const POLL: StdDuration = StdDuration::from_millis(100);
/// Looking the user up is a nicety: never let it hold a request for long.
const IDENTITY_TIMEOUT: StdDuration = StdDuration::from_secs(2);
/// `Retry-After` on 503.
pub const RETRY_AFTER_SECS: u64 = 5;

#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("no grant with this id")]
    UnknownGrant,
    #[error("the host is not an allowed SharePoint host")]
    HostNotAllowed,
    #[error("the refresh token is expired or revoked: the user must open the add-in again")]
    RelaunchRequired {
        renew_url: String,
        /// Why, when the token service said (ENTRA.md §5's reasons).
        reason: Option<Reason>,
    },
    #[error("ACS refused the add-in's client credentials")]
    StsRejectedClient,
    #[error("ACS is unavailable")]
    StsUnavailable,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("a stored token could not be opened: {0}")]
    Seal(#[from] SealError),
}

/// What `/token` answers with.
pub struct IssuedToken {
    pub access_token: SecretString,
    pub expires_at: DateTime<Utc>,
    pub resource: String,
    pub grant: GrantView,
}

impl std::fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedToken")
            .field("access_token", &"[redacted]")
            .field("expires_at", &self.expires_at)
            .field("resource", &self.resource)
            .field("grant", &self.grant)
            .finish()
    }
}

pub struct TokenService {
    ctx: Arc<Context>,
    acs: AcsClient,
    /// One lock per (grant, host) in this process.
    inflight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Names this process in leases.
    owner: String,
}

impl std::fmt::Debug for TokenService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenService")
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

fn lease_owner() -> String {
    let mut b = [0u8; 8];
    // An owner id only needs to differ between processes; fall back to the pid and time.
    if getrandom::fill(&mut b).is_err() {
        return format!(
            "{}-{}",
            std::process::id(),
            Utc::now().timestamp_nanos_opt().unwrap_or(0)
        );
    }
    hex::encode(b)
}

impl TokenService {
    pub fn new(ctx: Arc<Context>, acs: AcsClient) -> Self {
        TokenService {
            ctx,
            acs,
            inflight: Mutex::new(HashMap::new()),
            owner: lease_owner(),
        }
    }

    /// With the ACS client every host uses: the context's HTTP client, the default retries.
    pub fn for_context(ctx: &Arc<Context>) -> Self {
        Self::new(
            Arc::clone(ctx),
            AcsClient::new(ctx.http.clone(), RetryPolicy::default()),
        )
    }

    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    /// An access token for the grant's user at `host` (default: the grant's host web).
    pub async fn access_token(
        &self,
        id: &GrantId,
        host: Option<&str>,
    ) -> Result<IssuedToken, ExchangeError> {
        let now = self.ctx.now();
        let stored = self
            .ctx
            .grants
            .load(id)
            .await?
            .ok_or(ExchangeError::UnknownGrant)?;
        let rec = &stored.record;
        let host = match host {
            Some(h) => self
                .ctx
                .settings
                .allowed_sp_hosts
                .check_authority(h)
                .map_err(|_| ExchangeError::HostNotAllowed)?,
            None => self.allowed_site(&rec.site_url)?.authority(),
        };

        let status = self.ctx.status_of(rec, now);
        if status.needs_relaunch() || stored.sealed_refresh_token.is_none() {
            return Err(ExchangeError::RelaunchRequired {
                renew_url: self.ctx.renew_url(id, now),
                reason: None,
            });
        }

        if let Some(t) = self.fresh_cached(id, &host, now).await? {
            return Ok(self.issue(&stored, t, now));
        }

        let key = format!("{id}|{host}");
        let lock = self.local_lock(&key);
        let result = {
            let _held = lock.lock().await;
            self.exchange_single_flight(&stored, &host, &key).await
        };
        self.forget_lock(&key, &lock);
        result
    }

    /// A stored site URL, checked against today's allowlist at the moment of use (stored
    /// data may predate a change of the list, or have been written by someone else).
    fn allowed_site(&self, site_url: &str) -> Result<SiteUrl, ExchangeError> {
        self.ctx
            .settings
            .allowed_sp_hosts
            .check_site_url(site_url)
            .map_err(|_| ExchangeError::HostNotAllowed)
    }

    fn local_lock(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(map.entry(key.to_string()).or_default())
    }

    fn forget_lock(&self, key: &str, lock: &Arc<tokio::sync::Mutex<()>>) {
        let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        // Ours and the map's: nobody else is waiting on it.
        if Arc::strong_count(lock) <= 2 {
            map.remove(key);
        }
    }

    async fn fresh_cached(
        &self,
        id: &GrantId,
        host: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<(SecretString, DateTime<Utc>, String)>, ExchangeError> {
        let Some(t) = self.ctx.cache.get_access_token(id, host).await? else {
            return Ok(None);
        };
        if t.expires_at - now <= MIN_REMAINING {
            return Ok(None);
        }
        let place = Place::AccessToken {
            grant: id.as_str(),
            resource: host,
        };
        match self.ctx.secrets.key_ring.open(&t.sealed, &place) {
            Ok(token) => Ok(Some((token, t.expires_at, t.resource))),
            Err(e) => {
                // A token sealed under a retired key: fetch a new one rather than fail.
                tracing::warn!(grant_id = %id, error = %e, "cached access token does not open; fetching a new one");
                Ok(None)
            }
        }
    }

    async fn exchange_single_flight(
        &self,
        stored: &StoredGrant,
        host: &str,
        key: &str,
    ) -> Result<IssuedToken, ExchangeError> {
        let id = &stored.record.id;
        let lease_key = format!("acs|{key}");
        let started = Instant::now();
        loop {
            let now = self.ctx.now();
            if let Some(t) = self.fresh_cached(id, host, now).await? {
                return Ok(self.issue(stored, t, now));
            }
            if self
                .ctx
                .cache
                .try_lease(&lease_key, &self.owner, now, now + LEASE)
                .await?
            {
                break;
            }
            if started.elapsed() > WAIT_FOR_OTHERS {
                return Err(ExchangeError::StsUnavailable);
            }
            tokio::time::sleep(POLL).await;
        }

        // Whoever held the lease before us may have just cached a token (it writes the cache
        // before it lets go): look once more before asking ACS.
        let now = self.ctx.now();
        let result = match self.fresh_cached(id, host, now).await {
            Ok(Some(t)) => Ok(self.issue(stored, t, now)),
            Ok(None) => self.exchange(stored, host).await,
            Err(e) => Err(e),
        };
        if let Err(e) = self.ctx.cache.release_lease(&lease_key, &self.owner).await {
            tracing::warn!(grant_id = %id, error = %e, "could not release the ACS lease; it will lapse");
        }
        result
    }

    async fn exchange(
        &self,
        stored: &StoredGrant,
        host: &str,
    ) -> Result<IssuedToken, ExchangeError> {
        let rec = &stored.record;
        let id = &rec.id;
        let now = self.ctx.now();
        let sealed = stored.sealed_refresh_token.as_deref().ok_or_else(|| {
            ExchangeError::RelaunchRequired {
                renew_url: self.ctx.renew_url(id, now),
                reason: None,
            }
        })?;
        let refresh_token = self.ctx.secrets.key_ring.open(
            sealed,
            &Place::RefreshToken {
                grant: id.as_str(),
                version: rec.rt_version,
            },
        )?;
        let sts_uri = self
            .ctx
            .settings
            .sts_hosts
            .check_url(&rec.sts_uri)
            .map_err(|_| ExchangeError::StsRejectedClient)?;
        let resource = resource(&rec.target_principal, host, &rec.realm);
        // A grant from ACS launches in a deployment that no longer serves them.
        let client_id = self
            .ctx
            .settings
            .client_id
            .as_deref()
            .ok_or(ExchangeError::StsRejectedClient)?;
        let secrets = self.ctx.secrets.client_secrets();
        let started = Instant::now();
        let outcome = self
            .acs
            .refresh(
                &RefreshRequest {
                    sts_uri: &sts_uri,
                    client_id,
                    realm: &rec.realm,
                    secrets: &secrets,
                    refresh_token: &refresh_token,
                    resource: &resource,
                },
                now,
            )
            .await;
        let elapsed_ms = started.elapsed().as_millis() as u64;

        match outcome {
            Ok(at) => {
                tracing::info!(grant_id = %id, host, outcome = "issued", elapsed_ms, "exchanged refresh token at ACS");
                let sealed = self.ctx.secrets.key_ring.seal(
                    at.token.expose_secret().as_bytes(),
                    &Place::AccessToken {
                        grant: id.as_str(),
                        resource: host,
                    },
                )?;
                let cached = CachedToken {
                    sealed,
                    expires_at: at.expires_at,
                    resource: if at.resource.is_empty() {
                        resource.clone()
                    } else {
                        at.resource.clone()
                    },
                };
                self.ctx.cache.put_access_token(id, host, &cached).await?;
                if rec.user.is_none()
                    && let Ok(site) = self.allowed_site(&rec.site_url)
                    && site.authority() == host
                {
                    self.identify(id, &site, &at.token).await;
                }
                Ok(self.issue(stored, (at.token, at.expires_at, cached.resource), now))
            }
            Err(AcsFailure::InvalidGrant(label)) => {
                tracing::warn!(grant_id = %id, outcome = "invalid_grant", reason = %label, elapsed_ms, "ACS refused the refresh token");
                let code = aadsts_code(&label);
                // ACS's invalid_grant without a code: the refresh token was revoked.
                let reason = match code {
                    None => Reason::Revoked,
                    c => Reason::of_code(c),
                };
                mark_revoked(&self.ctx, stored, reason, code, now).await?;
                Err(ExchangeError::RelaunchRequired {
                    renew_url: self.ctx.renew_url(id, now),
                    reason: Some(reason),
                })
            }
            Err(AcsFailure::InvalidClient(reason)) => {
                // An operator problem: this event is what the alarm counts.
                tracing::error!(grant_id = %id, event = "sts_rejected_client", outcome = "sts_rejected_client", %reason, elapsed_ms, "ACS refused the add-in's client credentials");
                Err(ExchangeError::StsRejectedClient)
            }
            Err(e) => {
                tracing::warn!(grant_id = %id, outcome = "sts_unavailable", error = %e, elapsed_ms, "ACS exchange failed");
                Err(ExchangeError::StsUnavailable)
            }
        }
    }

    /// Best effort: who the user is, for notices.
    async fn identify(&self, id: &GrantId, site: &SiteUrl, token: &SecretString) {
        let lookup = current_user(&self.ctx.http, site, token);
        match tokio::time::timeout(IDENTITY_TIMEOUT, lookup).await {
            Ok(Ok(user)) => match self.ctx.grants.set_user(id, &user).await {
                Ok(()) => tracing::info!(grant_id = %id, "user identified"),
                Err(e) => tracing::warn!(grant_id = %id, error = %e, "could not store the user"),
            },
            Ok(Err(e)) => tracing::warn!(grant_id = %id, error = %e, "could not look the user up"),
            Err(_) => tracing::warn!(grant_id = %id, "looking the user up timed out"),
        }
    }

    fn issue(
        &self,
        stored: &StoredGrant,
        (token, expires_at, resource): (SecretString, DateTime<Utc>, String),
        now: DateTime<Utc>,
    ) -> IssuedToken {
        IssuedToken {
            access_token: token,
            expires_at,
            resource,
            grant: self.ctx.grant_view(&stored.record, now),
        }
    }
}
