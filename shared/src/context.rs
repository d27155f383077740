//! What every service and router shares: configuration, secrets, clock, storage and the HTTP
//! client, built once at start.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use secrecy::SecretString;

use crate::clock::Clock;
use crate::config::Settings;
use crate::core::grant::{self, GrantId, Kind, Status};
use crate::core::notice::{Notice, User, rfc3339};
use crate::core::seal::{Place, SealError};
use crate::ports::{GrantRecord, GrantStore, NoticeRelay, TokenCache};
use crate::secrets_cell::SecretsCell;

/// A grant as apps and users see it: the one `grant` object of `/token`, `/handoff` and
/// `/grants` (one serializer), and what the status page shows. Never a token.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GrantView {
    pub id: GrantId,
    pub kind: Kind,
    /// An ACS grant's realm (its tenant id)...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub realm: Option<String>,
    /// ...or an Entra grant's tenant id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    pub site_url: String,
    pub user: Option<User>,
    pub status: Status,
    pub refresh_token_expires_at: String,
    pub days_left: i64,
    pub renew_url: String,
}

#[derive(Clone)]
pub struct Context {
    pub settings: Settings,
    /// The secrets: read them with `secrets.get()` (in Lambda they may change while it runs).
    pub secrets: SecretsCell,
    pub clock: Arc<dyn Clock>,
    pub grants: Arc<dyn GrantStore>,
    pub cache: Arc<dyn TokenCache>,
    /// Moves queued notices to the delivery queue (a no-op for the embedded store).
    pub relay: Arc<dyn NoticeRelay>,
    pub http: reqwest::Client,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("settings", &self.settings)
            .field("secrets", &self.secrets)
            .finish_non_exhaustive()
    }
}

impl Context {
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// Sends `notice` to the delivery queue right after the write that queued it; a failure
    /// (logged) leaves it queued for the next sweep's relay.
    pub async fn relay_now(&self, notice: &Notice) {
        if let Err(e) = self.relay.relay_now(notice).await {
            tracing::warn!(notice_id = %notice.id, error = %e, "notice stays queued for the next sweep");
        }
    }

    /// Opens a value sealed for `place`. One named by a key id this program does not know was
    /// sealed by an instance that started after a key rotation: the secrets are read again
    /// (at most every few seconds) and it is tried once more.
    pub async fn open_sealed(
        &self,
        sealed: &str,
        place: &Place<'_>,
    ) -> Result<SecretString, SealError> {
        match self.secrets.get().key_ring.open(sealed, place) {
            Err(SealError::UnknownKey(kid)) => {
                if self.secrets.refresh_for_unknown_key().await {
                    tracing::info!(key_id = %kid, "a value sealed with a key this instance did not know: secrets read again");
                    self.secrets.get().key_ring.open(sealed, place)
                } else {
                    Err(SealError::UnknownKey(kid))
                }
            }
            other => other,
        }
    }

    /// A signed renew link for the grant, valid 45 days from `now`.
    pub fn renew_url(&self, id: &GrantId, now: DateTime<Utc>) -> String {
        self.secrets
            .get()
            .links
            .renew_url(&self.settings.public_url, id, now)
    }

    pub fn status_of(&self, g: &GrantRecord, now: DateTime<Utc>) -> Status {
        grant::status(g.rt_expires_at, g.progress, now, &self.settings.notice_days)
    }

    /// When the sweep should next look at this grant in this state: its next notice, or for an
    /// Entra grant kept alive, its keep-alive redemption.
    pub fn next_due_at(&self, g: &GrantRecord, progress: grant::Progress) -> Option<DateTime<Utc>> {
        grant::next_check(
            g.kind,
            g.rt_expires_at,
            progress,
            &self.settings.notice_days,
            self.keepalive_days(),
        )
    }

    /// `SPKEEPER_ENTRA_KEEPALIVE_DAYS` (0: off, or no Entra configured).
    pub fn keepalive_days(&self) -> u32 {
        self.settings.entra.as_ref().map_or(0, |e| e.keepalive_days)
    }

    pub fn grant_view(&self, g: &GrantRecord, now: DateTime<Utc>) -> GrantView {
        GrantView {
            id: g.id.clone(),
            kind: g.kind,
            realm: (g.kind == Kind::Acs).then(|| g.realm.clone()),
            tenant_id: (g.kind == Kind::Entra).then(|| g.realm.clone()),
            site_url: g.site_url.clone(),
            user: g.user.clone(),
            status: self.status_of(g, now),
            refresh_token_expires_at: rfc3339(g.rt_expires_at),
            days_left: grant::days_left(g.rt_expires_at, now),
            renew_url: self.renew_url(&g.id, now),
        }
    }
}
