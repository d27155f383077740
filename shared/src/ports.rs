//! Ports: small traits sized to what each caller needs. Adapters (SQLite here, DynamoDB and
//! SQS in AWS) implement them; item mapping stays inside each adapter.
//!
//! Every state change is conditional on the grant's revision (`rev`), which every write bumps:
//! a launch racing a sweep, overlapping sweeps, and retried Lambdas can neither duplicate a
//! notice nor lose a newer refresh token. A notice is queued in the same atomic write as the
//! state change that causes it.

use std::fmt;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures_util::stream::{self, StreamExt, TryStreamExt};

use crate::core::grant::{GrantId, Kind, Progress};
use crate::core::notice::{Notice, NoticeGrant, NoticeSubject, User};

/// SharePoint's `{StandardTokens}` from the launch, kept for the relaunch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StandardTokens {
    pub language: Option<String>,
    pub client_tag: Option<String>,
    pub product_number: Option<String>,
}

/// A grant without its tokens: what the sweep, the status page and `grants` read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRecord {
    pub id: GrantId,
    pub kind: Kind,
    /// Bumped by every write; every conditional write names the revision it read.
    pub rev: u64,
    /// The tenant id: ACS's realm, or the Entra ID token's `tid`.
    pub realm: String,
    /// The host web (`SPHostUrl`), normalised and allowlisted; for an Entra grant, the site
    /// the user signed in for.
    pub site_url: String,
    pub app_web_url: Option<String>,
    pub standard_tokens: StandardTokens,
    pub sts_uri: String,
    pub target_principal: String,
    pub user: Option<User>,
    /// The refresh token's version: its context token's `nbf`, in epoch seconds.
    pub rt_version: i64,
    pub rt_expires_at: DateTime<Utc>,
    pub progress: Progress,
    /// When the sweep should next look at this grant; `None` when no notice is to come.
    pub next_due_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl GrantRecord {
    /// What a notice about this grant's current refresh token says about it.
    pub fn notice_subject<'a>(&self, renew_url: &'a str) -> NoticeSubject<'a> {
        NoticeSubject {
            grant: NoticeGrant {
                id: self.id.clone(),
                kind: self.kind,
                tenant_id: (self.kind == Kind::Entra).then(|| self.realm.clone()),
                realm: self.realm.clone(),
                site_url: self.site_url.clone(),
                user: self.user.clone(),
            },
            rt_version: self.rt_version,
            rt_expires_at: self.rt_expires_at,
            renew_url,
        }
    }
}

/// A grant with its sealed refresh token (`None` once the token's lifetime has passed and
/// storage has let it go).
#[derive(Clone)]
pub struct StoredGrant {
    pub record: GrantRecord,
    pub sealed_refresh_token: Option<String>,
}

impl fmt::Debug for StoredGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredGrant")
            .field("record", &self.record)
            .field(
                "sealed_refresh_token",
                &self.sealed_refresh_token.as_ref().map(|_| "[sealed]"),
            )
            .finish()
    }
}

/// The outcome of a conditional write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Done,
    /// Someone else wrote first: reload and decide again (or stop).
    Conflict,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage is unavailable: {0}")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("stored data is not readable: {0}")]
    Corrupt(String),
}

impl StoreError {
    pub fn unavailable(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        StoreError::Unavailable(Box::new(e))
    }
}

/// The revision a write after `expected` gives (1 for a new grant). Revisions are stored as
/// signed 64-bit numbers by both stores: one past the end is corrupt data, not a panic.
pub fn next_rev(expected: Option<u64>) -> Result<u64, StoreError> {
    expected
        .map_or(Some(1), |r| r.checked_add(1))
        .filter(|r| i64::try_from(*r).is_ok())
        .ok_or_else(|| StoreError::Corrupt("revision out of range".into()))
}

/// Where the next page of the due index starts: opaque, each adapter writes its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueCursor(pub String);

/// One page of due grants; `next` is `None` after the last page.
#[derive(Debug, Clone)]
pub struct DuePage {
    pub grants: Vec<GrantRecord>,
    pub next: Option<DueCursor>,
}

/// How an app finds its user's grants: by e-mail or login name, compared case-insensitively
/// (the stores index them lower-cased).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserKey {
    Email(String),
    LoginName(String),
}

impl UserKey {
    pub fn email(v: &str) -> Self {
        UserKey::Email(v.trim().to_lowercase())
    }

    pub fn login_name(v: &str) -> Self {
        UserKey::LoginName(v.trim().to_lowercase())
    }

    pub fn value(&self) -> &str {
        match self {
            UserKey::Email(v) | UserKey::LoginName(v) => v,
        }
    }
}

/// The index values of a user: lower-cased e-mail and login name, `None` when empty.
pub fn user_index(user: Option<&User>) -> (Option<String>, Option<String>) {
    let lc = |v: &str| Some(v.trim().to_lowercase()).filter(|v| !v.is_empty());
    match user {
        Some(u) => (lc(&u.email), lc(&u.login_name)),
        None => (None, None),
    }
}

/// The index value of an Entra grant's user: `{tid}|{oid}` (`None` for ACS grants).
pub fn entra_user_key(g: &GrantRecord) -> Option<String> {
    match (g.kind, g.user.as_ref().and_then(|u| u.oid.as_deref())) {
        (Kind::Entra, Some(oid)) => Some(format!("{}|{oid}", g.realm)),
        _ => None,
    }
}

/// One grant's move to a new notice progress, for [`GrantStore::advance_all`].
#[derive(Debug, Clone)]
pub struct Advance {
    pub id: GrantId,
    /// The revision the move was decided on.
    pub expected_rev: u64,
    pub progress: Progress,
    pub next_due_at: Option<DateTime<Utc>>,
    /// Queued in the same atomic write.
    pub notice: Option<Notice>,
}

/// Moves written at once by the default [`GrantStore::advance_all`].
pub const ADVANCE_CONCURRENCY: usize = 16;

/// A grant and the cached access tokens read with it ([`GrantStore::load_with_tokens`]).
pub struct Prefetched {
    pub grant: Option<StoredGrant>,
    /// Cache key → what the cache held, for the keys that were read; a key absent here was
    /// not read (ask the [`TokenCache`]).
    pub tokens: std::collections::HashMap<String, Option<CachedToken>>,
}

#[async_trait]
pub trait GrantStore: Send + Sync {
    async fn load(&self, id: &GrantId) -> Result<Option<StoredGrant>, StoreError>;

    /// [`GrantStore::load`], and where the store can do it in the same request, the grant's
    /// cached access tokens under `cache_keys` (so a cached `/token` costs one read). By
    /// default the tokens are not read.
    async fn load_with_tokens(
        &self,
        id: &GrantId,
        cache_keys: &[String],
    ) -> Result<Prefetched, StoreError> {
        let _ = cache_keys;
        Ok(Prefetched {
            grant: self.load(id).await?,
            tokens: std::collections::HashMap::new(),
        })
    }

    /// Creates the grant (`expected_rev` = `None`: it must not exist) or replaces it
    /// (`expected_rev` = the revision read), refresh token included. The record's `rev` is the
    /// new revision. `notice`, if any, is queued in the same atomic write.
    async fn put_grant(
        &self,
        expected_rev: Option<u64>,
        grant: &GrantRecord,
        sealed_refresh_token: &str,
        notice: Option<&Notice>,
    ) -> Result<Written, StoreError>;

    /// Moves a grant's notice progress if it is still at `m.expected_rev`, queueing its notice
    /// in the same atomic write.
    async fn advance(&self, m: &Advance, now: DateTime<Utc>) -> Result<Written, StoreError>;

    /// Several [`advance`](Self::advance)s, each conditional on its own revision and decided
    /// on its own (one that lost its race does not hold back the others); the outcomes come
    /// in the order of `moves`. A store that can commit them together does (SQLite: one
    /// transaction, instead of one per notice); by default they are written
    /// [`ADVANCE_CONCURRENCY`] at a time (DynamoDB: one conditional `UpdateItem` each, which
    /// also takes the relay's lease on the item for [`NoticeRelay::relay_written`]).
    async fn advance_all(
        &self,
        moves: &[Advance],
        now: DateTime<Utc>,
    ) -> Result<Vec<Written>, StoreError> {
        stream::iter(0..moves.len())
            .map(|i| self.advance(&moves[i], now))
            .buffered(ADVANCE_CONCURRENCY)
            .try_collect()
            .await
    }

    /// Best effort: records who the user is (does not bump the revision).
    async fn set_user(&self, id: &GrantId, user: &User) -> Result<(), StoreError>;

    /// Grants whose `next_due_at` ≤ `now`, a page at a time: at most `limit` from each of the
    /// store's [`due_partitions`](Self::due_partitions), read at once (a page may be short, even
    /// empty, before the last). Reads only what is due: never a scan.
    async fn due(
        &self,
        now: DateTime<Utc>,
        cursor: Option<&DueCursor>,
        limit: usize,
    ) -> Result<DuePage, StoreError>;

    /// How many parts the due index is read in at once (DynamoDB: its shards); a page of
    /// [`due`](Self::due) holds at most `limit` times this many grants.
    fn due_partitions(&self) -> usize {
        1
    }

    /// Every grant, for `spkeeper grants` (operators; pages internally).
    async fn list(&self) -> Result<Vec<GrantRecord>, StoreError>;

    /// The grants of a user, from an index on the lower-cased e-mail or login name (never a
    /// scan), kept right when a relaunch or a lookup changes the user's details.
    async fn find_by_user(&self, key: &UserKey) -> Result<Vec<GrantRecord>, StoreError>;

    /// The grant of an Entra user (tenant and object id), wherever it lives: under the id their
    /// first sign-in derived, or under the ACS grant it was migrated into.
    async fn find_entra_user(&self, tid: &str, oid: &str) -> Result<Option<GrantId>, StoreError>;

    /// Erases a grant at once: its refresh token, cached access tokens, details, index entries
    /// and the notices still queued in the store. `false` when there was no such grant.
    async fn forget(&self, id: &GrantId) -> Result<bool, StoreError>;

    /// Queues `notice` unless a notice under `marker` was queued before (operator notices
    /// that are not about a grant). `Conflict` when it was.
    async fn queue_once(&self, marker: &str, notice: &Notice) -> Result<Written, StoreError>;

    /// Lets go of what has outlived its retention (refresh tokens past expiry, relaunch
    /// details past expiry + 180 days, expired access tokens). A no-op where storage expires
    /// items itself (DynamoDB TTL). Returns how many items went.
    async fn purge(&self, now: DateTime<Utc>) -> Result<u64, StoreError>;
}

/// How queued notices reach their delivery queue.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct RelayStats {
    pub relayed: u64,
    /// Notices the delivery queue did not take this time (it was down, slow or throttling;
    /// logged where it failed): they stay in the outbox for the next relay.
    pub failed: u64,
    /// Notices the delivery queue refused as they are (SQS: a sender fault), which no retry
    /// will change: they stay in the outbox, and each refusal is logged as the
    /// `notice_refused` event, which the stack's NoticeRefusedAlarm counts.
    pub refused: u64,
    /// Notices the delivery queue took whose removal from the outbox ran out of time: sent
    /// again, with the same ids, once their lease lapses.
    pub unremoved: u64,
    /// The relay stopped at its deadline: what it did not reach waits in the outbox.
    pub stopped: bool,
}

impl RelayStats {
    pub fn add(&mut self, other: RelayStats) {
        self.relayed += other.relayed;
        self.failed += other.failed;
        self.refused += other.refused;
        self.unremoved += other.unremoved;
        self.stopped |= other.stopped;
    }
}

/// A relay's run ended by its store's error, with what it did before.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct RelayError {
    pub stats: RelayStats,
    pub error: StoreError,
}

/// Moves notices from the outbox (written atomically with each state change) to the delivery
/// queue. Where the outbox is itself the queue (SQLite), there is nothing to move.
///
/// A relay given a `deadline` is done by then: it starts no page without a few seconds left,
/// and cuts each page's send and removals to fit; what it did not reach waits in the outbox.
#[async_trait]
pub trait NoticeRelay: Send + Sync {
    /// Everything still waiting; the sweep calls this, so nothing waits longer than a sweep.
    /// A queue that refuses notices is counted in [`RelayStats`], not an error: an error is
    /// the store's.
    async fn relay_pending(&self, deadline: Option<Instant>) -> Result<RelayStats, RelayError>;

    /// Best effort, right after the write that queued `notice`, within a few seconds (a
    /// launch is waiting): a failure leaves it for [`relay_pending`](Self::relay_pending).
    async fn relay_now(&self, notice: &Notice) -> Result<(), StoreError>;

    /// What this process's [`GrantStore::advance_all`]s queued and already hold for the relay
    /// (DynamoDB: the lease taken in the same write), with no read of the outbox, once enough
    /// have gathered to fill its requests ([`relay_pending`](Self::relay_pending) sends the
    /// rest). The sweep calls it after each page's writes, so however long a sweep, what waits
    /// is at most one page of the due index's notices (a page spans every shard) and fewer
    /// than a hundred more. A failure leaves them in the outbox. By default there is nothing to
    /// send.
    async fn relay_written(&self, _deadline: Option<Instant>) -> Result<RelayStats, RelayError> {
        Ok(RelayStats::default())
    }

    /// The time a sweep keeps for its relay: it stops visiting grants this long before its
    /// deadline, so its relay can send what the visits queued. Nothing, where the outbox is
    /// the queue.
    fn reserve(&self) -> Duration {
        Duration::ZERO
    }
}

/// The embedded store's relay: its outbox table is the queue the delivery loop reads.
#[derive(Debug, Default, Clone, Copy)]
pub struct OutboxIsTheQueue;

#[async_trait]
impl NoticeRelay for OutboxIsTheQueue {
    async fn relay_pending(&self, _deadline: Option<Instant>) -> Result<RelayStats, RelayError> {
        Ok(RelayStats::default())
    }

    async fn relay_now(&self, _notice: &Notice) -> Result<(), StoreError> {
        Ok(())
    }
}

/// An access token in the cache, sealed.
#[derive(Clone)]
pub struct CachedToken {
    pub sealed: String,
    pub expires_at: DateTime<Utc>,
    pub resource: String,
}

#[async_trait]
pub trait TokenCache: Send + Sync {
    async fn get_access_token(
        &self,
        id: &GrantId,
        host: &str,
    ) -> Result<Option<CachedToken>, StoreError>;

    async fn put_access_token(
        &self,
        id: &GrantId,
        host: &str,
        token: &CachedToken,
    ) -> Result<(), StoreError>;

    /// Drops every access token cached for the grant (every host and scope); the grant and
    /// its refresh token stay. The next `/token` asks the token service again.
    async fn forget_access_tokens(&self, id: &GrantId) -> Result<(), StoreError>;

    /// Takes the lease `key` for `owner` until `until`, if it is free or has lapsed.
    async fn try_lease(
        &self,
        key: &str,
        owner: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    async fn release_lease(&self, key: &str, owner: &str) -> Result<(), StoreError>;

    /// The realm (tenant id) a SharePoint host answered for, if it was discovered and is still
    /// fresh at `now` (PROTOCOL.md §3, realm discovery).
    async fn get_host_realm(
        &self,
        host: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<String>, StoreError>;

    /// Marks `key` used until `until` (a hand-off ticket's id): `Done` the first time,
    /// `Conflict` after. Exactly one of any number of concurrent callers gets `Done`.
    async fn use_once(&self, key: &str, until: DateTime<Utc>) -> Result<Written, StoreError>;

    /// Remembers a host's realm until `until`.
    async fn put_host_realm(
        &self,
        host: &str,
        realm: &str,
        until: DateTime<Utc>,
    ) -> Result<(), StoreError>;
}

/// A queued notice, as the delivery side sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    pub id: String,
    pub body: String,
    pub attempts: u32,
    pub created_at: DateTime<Utc>,
    pub next_attempt_at: DateTime<Utc>,
    pub last_error: Option<String>,
    /// Gave up after the last attempt: the embedded dead-letter queue.
    pub dead: bool,
}

/// The embedded notice queue (the outbox table): what the local delivery loop reads.
#[derive(Debug, Clone, Copy)]
pub enum DeliveryOutcome<'a> {
    Delivered,
    RetryAt(DateTime<Utc>, &'a str),
    Dead(&'a str),
}

#[async_trait]
pub trait Outbox: Send + Sync {
    /// Undelivered, not dead, whose next attempt is due.
    async fn ready(&self, now: DateTime<Utc>, limit: usize)
    -> Result<Vec<OutboxEntry>, StoreError>;

    async fn record_attempt(
        &self,
        id: &str,
        outcome: DeliveryOutcome<'_>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// Everything not yet delivered, dead letters included.
    async fn undelivered(&self) -> Result<Vec<OutboxEntry>, StoreError>;
}
