//! Access tokens on demand: from the cache while more than 5 minutes remain, else one call to
//! the token service however many callers ask at once, in this process (a mutex per key) and
//! across processes and Lambda instances (a lease in the store). ACS grants: one call per
//! (grant, host). Entra grants: one redemption per grant whatever the scope (each rotates the
//! refresh token, which is stored before anyone is answered).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration as StdDuration, Instant};

use chrono::{DateTime, Duration, Utc};
use secrecy::{ExposeSecret, SecretString};

use crate::clients::entra::EntraClient;
use crate::clients::{AcsClient, RefreshRequest, RetryPolicy, current_user};
use crate::context::Context;
use crate::context::GrantView;
use crate::core::acs::{AcsFailure, resource};
use crate::core::entra::{EntraFailure, INACTIVITY_DAYS, Reason, default_scope};
use crate::core::grant::{GrantId, Kind, Progress, keepalive_is_due, plus_days};
use crate::core::hosts::SiteUrl;
use crate::core::seal::{Place, SealError};
use crate::ports::{CachedToken, GrantRecord, StoreError, StoredGrant, Written};
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
/// Default cache keys remembered at most (one per grant served; about 100 bytes each).
const MAX_DEFAULT_KEYS: usize = 10_000;
/// `Retry-After` on 503.
pub const RETRY_AFTER_SECS: u64 = 5;
/// A request's one quick retry of a transient Entra failure.
const QUICK_RETRY: StdDuration = StdDuration::from_millis(500);

/// The Entra client, when Entra is configured and this program holds its credential (which
/// it then takes from the context's secrets at each redemption: a rotation reaches it).
fn entra_client(ctx: &Context) -> Option<Arc<EntraClient>> {
    let settings = ctx.settings.entra.clone()?;
    ctx.secrets.get().entra.as_ref()?;
    Some(Arc::new(EntraClient::new(
        ctx.http.clone(),
        settings,
        ctx.secrets.clone(),
    )))
}

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
    #[error("the scope is not one this grant can be asked for: {0}")]
    BadScope(&'static str),
    #[error("the token service refused the app's client credentials")]
    StsRejectedClient,
    #[error("the token service is unavailable")]
    StsUnavailable {
        /// Seconds for `Retry-After`.
        retry_after: u64,
    },
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

/// What one caller wants, and the keys that serialise it.
struct Target {
    /// The access-token cache's key: the host (ACS) or the scope (Entra).
    cache_key: String,
    /// The in-process lock and the cross-process lease.
    lock_key: String,
    lease_key: String,
    kind: Kind,
}

pub struct TokenService {
    ctx: Arc<Context>,
    acs: AcsClient,
    entra: Option<Arc<EntraClient>>,
    /// One lock per (grant, host) in this process.
    inflight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Each grant's default cache key as last seen (its site's host, or that host's default
    /// scope): a guess, checked after the load, that lets a call naming neither host nor
    /// scope read its cached token with the grant in one request.
    default_keys: Mutex<HashMap<GrantId, String>>,
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
        let entra = entra_client(&ctx);
        TokenService {
            ctx,
            acs,
            entra,
            inflight: Mutex::new(HashMap::new()),
            default_keys: Mutex::new(HashMap::new()),
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

    /// The Entra client this service redeems with (shared with sign-in: one JWKS cache).
    pub fn entra(&self) -> Option<Arc<EntraClient>> {
        self.entra.clone()
    }

    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    /// An access token for the grant's user at `host` (default: the grant's host web), or, for
    /// an Entra grant, for `scope` (default: `https://{host}/.default`).
    pub async fn access_token(
        &self,
        id: &GrantId,
        host: Option<&str>,
        scope: Option<&str>,
    ) -> Result<IssuedToken, ExchangeError> {
        let now = self.ctx.now();
        let guesses = self.cache_key_guesses(id, host, scope);
        let mut prefetched = self.ctx.grants.load_with_tokens(id, &guesses).await?;
        let stored = prefetched.grant.take().ok_or(ExchangeError::UnknownGrant)?;
        let rec = &stored.record;
        let defaulted = host.is_none() && scope.is_none();
        let host = match host {
            Some(h) => self
                .ctx
                .settings
                .allowed_sp_hosts
                .check_authority(h)
                .map_err(|_| ExchangeError::HostNotAllowed)?,
            None => self.allowed_site(&rec.site_url)?.authority(),
        };
        let target = match rec.kind {
            Kind::Acs => {
                if scope.is_some() {
                    return Err(ExchangeError::BadScope("scope is for Entra grants only"));
                }
                Target {
                    cache_key: host.clone(),
                    lock_key: format!("{id}|{host}"),
                    lease_key: format!("acs|{id}|{host}"),
                    kind: Kind::Acs,
                }
            }
            Kind::Entra => {
                let scope = match scope {
                    Some(s) => self.checked_scope(s)?,
                    None => default_scope(&host),
                };
                Target {
                    cache_key: scope,
                    // Every redemption rotates the one refresh token: one at a time per grant.
                    lock_key: format!("{id}|entra"),
                    lease_key: format!("entra|{id}"),
                    kind: Kind::Entra,
                }
            }
        };

        let status = self.ctx.status_of(rec, now);
        if status.needs_relaunch() || stored.sealed_refresh_token.is_none() {
            return Err(ExchangeError::RelaunchRequired {
                renew_url: self.ctx.renew_url(id, now),
                reason: None,
            });
        }

        if defaulted {
            self.remember_default_key(id, &target.cache_key);
        }
        let read = prefetched.tokens.remove(&target.cache_key);
        if let Some(t) = self.fresh_cached(id, &target.cache_key, now, read).await? {
            return Ok(self.issue(&stored.record, t, now));
        }

        self.serialised(&stored, &target, false).await
    }

    /// The cache keys a call may need, before the grant says its kind and site: for a host,
    /// an ACS grant's key (the host) and an Entra grant's (its default scope); for a scope,
    /// that scope; for neither, the grant's default key as last seen here. Anything that does
    /// not check out is left to the checks after the load.
    fn cache_key_guesses(
        &self,
        id: &GrantId,
        host: Option<&str>,
        scope: Option<&str>,
    ) -> Vec<String> {
        match (host, scope) {
            (_, Some(scope)) => self.checked_scope(scope).into_iter().collect(),
            (Some(host), None) => self
                .ctx
                .settings
                .allowed_sp_hosts
                .check_authority(host)
                .map(|h| vec![default_scope(&h), h])
                .unwrap_or_default(),
            (None, None) => self
                .default_keys
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(id)
                .cloned()
                .into_iter()
                .collect(),
        }
    }

    fn remember_default_key(&self, id: &GrantId, key: &str) {
        let mut keys = self.default_keys.lock().unwrap_or_else(|p| p.into_inner());
        // A hint per grant this instance served; bounded so a long-lived process does not grow.
        if keys.len() >= MAX_DEFAULT_KEYS && !keys.contains_key(id) {
            keys.clear();
        }
        if keys.get(id).map(String::as_str) != Some(key) {
            keys.insert(id.clone(), key.to_string());
        }
    }

    /// The sweep's keep-alive: redeems an idle Entra grant once (storing the rotated refresh
    /// token), unless someone redeemed it meanwhile.
    pub async fn keep_alive(&self, id: &GrantId) -> Result<(), ExchangeError> {
        let stored = self.load(id).await?;
        let scope = default_scope(&self.allowed_site(&stored.record.site_url)?.authority());
        let target = Target {
            cache_key: scope,
            lock_key: format!("{id}|entra"),
            lease_key: format!("entra|{id}"),
            kind: Kind::Entra,
        };
        self.serialised(&stored, &target, true).await.map(|_| ())
    }

    async fn load(&self, id: &GrantId) -> Result<StoredGrant, ExchangeError> {
        self.ctx
            .grants
            .load(id)
            .await?
            .ok_or(ExchangeError::UnknownGrant)
    }

    /// [`Self::single_flight`] under this process's lock for the target.
    async fn serialised(
        &self,
        stored: &StoredGrant,
        target: &Target,
        redeem_anyway: bool,
    ) -> Result<IssuedToken, ExchangeError> {
        let lock = self.local_lock(&target.lock_key);
        let result = {
            let _held = lock.lock().await;
            self.single_flight(stored, target, redeem_anyway).await
        };
        self.forget_lock(&target.lock_key, &lock);
        result
    }

    /// A scope asked for an Entra grant: one resource's, on an allowed SharePoint host or
    /// Microsoft Graph (ENTRA.md §3: one resource per request). Returned in one canonical form
    /// (what Entra is sent, and the cache's key), so spellings of one scope are one scope.
    fn checked_scope(&self, scope: &str) -> Result<String, ExchangeError> {
        const GRAPH: [&str; 4] = [
            "graph.microsoft.com",
            "graph.microsoft.us",
            "dod-graph.microsoft.us",
            "microsoftgraph.chinacloudapi.cn",
        ];
        let scope = scope.trim();
        // Letters, digits and what a scope URL needs: no space (a second scope), no user info,
        // query, fragment, backslash, percent-escape or control character.
        if scope.is_empty()
            || scope.len() > 512
            || !scope
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"./:-_".contains(&b))
        {
            return Err(ExchangeError::BadScope(
                "one https resource scope, plainly written",
            ));
        }
        let url = url::Url::parse(scope)
            .map_err(|_| ExchangeError::BadScope("not a resource scope URL"))?;
        if url.scheme() != "https" || url.host().is_none() || url.path().len() < 2 {
            return Err(ExchangeError::BadScope("one https resource scope"));
        }
        let host = crate::core::hosts::authority_of(&url);
        let allowed = GRAPH.contains(&host.as_str())
            || self
                .ctx
                .settings
                .allowed_sp_hosts
                .check_authority(&host)
                .is_ok();
        if !allowed {
            return Err(ExchangeError::BadScope(
                "the scope's host is neither an allowed SharePoint host nor Microsoft Graph",
            ));
        }
        Ok(format!("https://{host}{}", url.path()))
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

    /// The cached token for `host` (or scope) if it has more than [`MIN_REMAINING`] left:
    /// `read` if the cache was read with the grant, else from the cache now.
    async fn fresh_cached(
        &self,
        id: &GrantId,
        host: &str,
        now: DateTime<Utc>,
        read: Option<Option<CachedToken>>,
    ) -> Result<Option<(SecretString, DateTime<Utc>, String)>, ExchangeError> {
        let cached = match read {
            Some(read) => read,
            None => self.ctx.cache.get_access_token(id, host).await?,
        };
        let Some(t) = cached else {
            return Ok(None);
        };
        if t.expires_at - now <= MIN_REMAINING {
            return Ok(None);
        }
        let place = Place::AccessToken {
            grant: id.as_str(),
            resource: host,
        };
        match self.ctx.open_sealed(&t.sealed, &place).await {
            Ok(token) => Ok(Some((token, t.expires_at, t.resource))),
            Err(e) => {
                // A token sealed under a retired key: fetch a new one rather than fail.
                tracing::warn!(grant_id = %id, error = %e, "cached access token does not open; fetching a new one");
                Ok(None)
            }
        }
    }

    /// The grant's refresh token, opened for its own place (grant and version).
    async fn open_refresh_token(
        &self,
        rec: &GrantRecord,
        sealed: &str,
    ) -> Result<SecretString, SealError> {
        let place = Place::RefreshToken {
            grant: rec.id.as_str(),
            version: rec.rt_version,
        };
        self.ctx.open_sealed(sealed, &place).await
    }

    /// Takes the lease for `target` (waiting for another holder to finish, and answering from
    /// the cache it filled), then asks the token service once. `redeem_anyway`: the keep-alive,
    /// which must redeem even when an access token is cached.
    async fn single_flight(
        &self,
        stored: &StoredGrant,
        target: &Target,
        redeem_anyway: bool,
    ) -> Result<IssuedToken, ExchangeError> {
        let id = &stored.record.id;
        let started = Instant::now();
        loop {
            let now = self.ctx.now();
            if !redeem_anyway
                && let Some(t) = self.fresh_cached(id, &target.cache_key, now, None).await?
            {
                return Ok(self.issue(&stored.record, t, now));
            }
            if self
                .ctx
                .cache
                .try_lease(&target.lease_key, &self.owner, now, now + LEASE)
                .await?
            {
                break;
            }
            if started.elapsed() > WAIT_FOR_OTHERS {
                return Err(ExchangeError::StsUnavailable {
                    retry_after: RETRY_AFTER_SECS,
                });
            }
            tokio::time::sleep(POLL).await;
        }

        // Whoever held the lease before us may have just cached a token (it writes the cache
        // before it lets go): look once more before asking. The keep-alive redeems anyway, so
        // it never reads the cache (the sweep's role may not read access tokens).
        let now = self.ctx.now();
        let cached = if redeem_anyway {
            Ok(None)
        } else {
            self.fresh_cached(id, &target.cache_key, now, None).await
        };
        let result = match cached {
            Ok(Some(t)) => Ok(self.issue(&stored.record, t, now)),
            Ok(None) => match target.kind {
                Kind::Acs => self.exchange(stored, &target.cache_key).await,
                Kind::Entra => {
                    self.entra_exchange(id, &target.cache_key, redeem_anyway)
                        .await
                }
            },
            Err(e) => Err(e),
        };
        if let Err(e) = self
            .ctx
            .cache
            .release_lease(&target.lease_key, &self.owner)
            .await
        {
            tracing::warn!(grant_id = %id, error = %e, "could not release the lease; it will lapse");
        }
        result
    }

    /// Redeems an Entra grant's refresh token for `scope`, under the grant's lease: reads the
    /// grant afresh (the token may have rotated while we waited), stores the new refresh token
    /// before answering, and classifies failures (ENTRA.md §5).
    async fn entra_exchange(
        &self,
        id: &GrantId,
        scope: &str,
        keep_alive: bool,
    ) -> Result<IssuedToken, ExchangeError> {
        let client = self.entra.as_ref().ok_or_else(|| {
            tracing::error!(grant_id = %id, event = "sts_rejected_client", "an Entra grant, but no Entra app is configured");
            ExchangeError::StsRejectedClient
        })?;
        let now = self.ctx.now();
        let stored = self.load(id).await?;
        let rec = &stored.record;
        let relaunch = |reason| ExchangeError::RelaunchRequired {
            renew_url: self.ctx.renew_url(id, now),
            reason,
        };
        if self.ctx.status_of(rec, now).needs_relaunch() {
            return Err(relaunch(None));
        }
        if keep_alive
            && !keepalive_is_due(
                rec.rt_expires_at,
                rec.progress,
                now,
                self.ctx.keepalive_days(),
            )
        {
            // Redeemed by someone else since the sweep read it.
            return Ok(self.issue(
                rec,
                (SecretString::from(String::new()), now, String::new()),
                now,
            ));
        }
        let sealed = stored
            .sealed_refresh_token
            .as_deref()
            .ok_or_else(|| relaunch(None))?;
        let refresh_token = self.open_refresh_token(rec, sealed).await?;
        let started = Instant::now();
        let mut outcome = client.refresh(&refresh_token, scope, now).await;
        // A request retries at most once, quickly; the sweep leaves retries to later sweeps.
        if !keep_alive
            && let Err(EntraFailure::Transient { retry_after, .. }) = &outcome
            && *retry_after <= RETRY_AFTER_SECS
        {
            tokio::time::sleep(QUICK_RETRY).await;
            outcome = client.refresh(&refresh_token, scope, self.ctx.now()).await;
        }
        let elapsed_ms = started.elapsed().as_millis() as u64;
        let why = if keep_alive { "keep-alive" } else { "token" };
        match outcome {
            Ok(tokens) => {
                // Erased while Entra answered: nothing of it is kept, nothing is handed out.
                let updated = self
                    .store_rotation(&stored, tokens.refresh_token.as_ref(), now)
                    .await?
                    .ok_or(ExchangeError::UnknownGrant)?;
                tracing::info!(grant_id = %id, scope, outcome = "issued", rotated = tokens.refresh_token.is_some(), elapsed_ms, why, "redeemed the refresh token at Entra");
                let sealed = self.ctx.secrets.get().key_ring.seal(
                    tokens.access_token.expose_secret().as_bytes(),
                    &Place::AccessToken {
                        grant: id.as_str(),
                        resource: scope,
                    },
                )?;
                let cached = CachedToken {
                    sealed,
                    expires_at: tokens.expires_at,
                    resource: scope.to_string(),
                };
                self.ctx.cache.put_access_token(id, scope, &cached).await?;
                Ok(self.issue(
                    &updated,
                    (tokens.access_token, tokens.expires_at, scope.to_string()),
                    now,
                ))
            }
            Err(EntraFailure::Relaunch {
                reason,
                code,
                error,
            }) => {
                let aadsts = code.unwrap_or(0);
                // Consent, MFA or a Conditional Access block for one extra resource says
                // nothing of the refresh token: the grant stays alive for its own scope.
                let own_scope = self
                    .allowed_site(&rec.site_url)
                    .map(|s| default_scope(&s.authority()))
                    .is_ok_and(|d| d == scope);
                let scope_only = !own_scope
                    && matches!(
                        reason,
                        Reason::Consent | Reason::MfaRequired | Reason::Blocked
                    );
                tracing::warn!(grant_id = %id, outcome = "relaunch", error = %error, aadsts, %reason, scope_only, elapsed_ms, why, "Entra refused the refresh token for this scope");
                if !scope_only {
                    mark_revoked(&self.ctx, &stored, reason, code, now).await?;
                }
                Err(relaunch(Some(reason)))
            }
            Err(EntraFailure::Operator { code, error }) => {
                // An operator problem: this event is what the alarm counts.
                tracing::error!(grant_id = %id, event = "sts_rejected_client", outcome = "sts_rejected_client", %error, aadsts = code.unwrap_or(0), elapsed_ms, why, "Entra refused the app's credentials or request");
                Err(ExchangeError::StsRejectedClient)
            }
            Err(EntraFailure::Transient {
                retry_after,
                why: w,
            }) => {
                tracing::warn!(grant_id = %id, outcome = "sts_unavailable", error = %w, retry_after, elapsed_ms, why, "Entra is unavailable");
                Err(ExchangeError::StsUnavailable { retry_after })
            }
            Err(EntraFailure::Unexpected(w)) => {
                tracing::warn!(grant_id = %id, outcome = "sts_unavailable", error = %w, elapsed_ms, why, "Entra answered unexpectedly");
                Err(ExchangeError::StsUnavailable {
                    retry_after: RETRY_AFTER_SECS,
                })
            }
        }
    }

    /// Stores what a redemption gave: the rotated refresh token (or the same one, when Entra
    /// sent none), its 90 days restarted, before anyone is answered. Conditional on the
    /// revision; a write that loses to another writer is tried again on the fresh record —
    /// unless a newer refresh token (a sign-in) arrived meanwhile, which then stays. Returns the
    /// record as stored.
    async fn store_rotation(
        &self,
        used: &StoredGrant,
        new_rt: Option<&SecretString>,
        now: DateTime<Utc>,
    ) -> Result<Option<GrantRecord>, ExchangeError> {
        let id = &used.record.id;
        for _ in 0..5 {
            let Some(current) = self.ctx.grants.load(id).await? else {
                tracing::warn!(grant_id = %id, "the grant was erased during its redemption");
                return Ok(None);
            };
            if current.record.rt_version != used.record.rt_version {
                tracing::info!(grant_id = %id, "a newer refresh token arrived during the redemption; it stays");
                return Ok(Some(current.record));
            }
            let mut rec = current.record.clone();
            let sealed = match new_rt {
                Some(rt) => {
                    rec.rt_version = rec.rt_version.saturating_add(1).max(now.timestamp());
                    self.ctx.secrets.get().key_ring.seal(
                        rt.expose_secret().as_bytes(),
                        &Place::RefreshToken {
                            grant: id.as_str(),
                            version: rec.rt_version,
                        },
                    )?
                }
                None => match current.sealed_refresh_token {
                    Some(s) => s,
                    None => return Ok(Some(current.record)),
                },
            };
            rec.rt_expires_at = plus_days(now, INACTIVITY_DAYS);
            rec.updated_at = now;
            // A redemption restarts the 90 days: the notice stages start over.
            if matches!(rec.progress, Progress::Expiring(_)) {
                rec.progress = Progress::None;
            }
            rec.next_due_at = self.ctx.next_due_at(&rec, rec.progress);
            match self
                .ctx
                .grants
                .put_grant(Some(current.record.rev), &rec, &sealed, None)
                .await?
            {
                Written::Done => {
                    rec.rev = current.record.rev.saturating_add(1);
                    return Ok(Some(rec));
                }
                Written::Conflict => continue,
            }
        }
        tracing::error!(grant_id = %id, "could not store the rotated refresh token after 5 tries");
        Err(ExchangeError::Store(StoreError::Corrupt(
            "the grant kept changing during its redemption".into(),
        )))
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
        let refresh_token = self.open_refresh_token(rec, sealed).await?;
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
        let all = self.ctx.secrets.get();
        let secrets = all.client_secrets();
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
                let sealed = self.ctx.secrets.get().key_ring.seal(
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
                Ok(self.issue(rec, (at.token, at.expires_at, cached.resource), now))
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
                Err(ExchangeError::StsUnavailable {
                    retry_after: RETRY_AFTER_SECS,
                })
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
        rec: &GrantRecord,
        (token, expires_at, resource): (SecretString, DateTime<Utc>, String),
        now: DateTime<Utc>,
    ) -> IssuedToken {
        IssuedToken {
            access_token: token,
            expires_at,
            resource,
            grant: self.ctx.grant_view(rec, now),
        }
    }
}
