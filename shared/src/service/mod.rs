//! Services: the use cases, composed from the core and the ports.

pub mod deliver;
pub mod exchange;
pub mod grants;
pub mod launch;
pub mod signin;
pub mod sweep;

use chrono::{DateTime, Utc};

use crate::context::Context;
use crate::core::entra::Reason;
use crate::core::grant::Progress;
use crate::core::notice::Notice;
use crate::ports::{Advance, StoreError, StoredGrant, Written};

/// The AADSTS number in a text (`"… AADSTS700082 …"`), if any.
pub fn aadsts_code(text: &str) -> Option<u32> {
    let at = text.find("AADSTS")? + "AADSTS".len();
    let digits: String = text[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// The token service refused the refresh token before its expiry (either kind): the grant is
/// revoked. One `revoked` notice, with why, in the same write as the state change — unless a
/// newer refresh token arrived meanwhile, or a notice already said so.
pub(crate) async fn mark_revoked(
    ctx: &Context,
    used: &StoredGrant,
    reason: Reason,
    code: Option<u32>,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let id = &used.record.id;
    for _ in 0..5 {
        let Some(current) = ctx.grants.load(id).await? else {
            return Ok(());
        };
        let rec = current.record;
        if rec.rt_version != used.record.rt_version
            || matches!(rec.progress, Progress::Revoked | Progress::Expired)
            || now >= rec.rt_expires_at
        {
            return Ok(());
        }
        let renew_url = ctx.renew_url(id, now);
        let notice = Notice::revoked(reason.as_str(), code, rec.notice_subject(&renew_url), now);
        let revoke = Advance {
            id: id.clone(),
            expected_rev: rec.rev,
            progress: Progress::Revoked,
            next_due_at: None,
            notice: Some(notice.clone()),
        };
        match ctx.grants.advance(&revoke, now).await? {
            Written::Done => {
                tracing::info!(grant_id = %id, notice_id = %notice.id, %reason, "grant revoked; notice queued");
                ctx.relay_now(&notice).await;
                return Ok(());
            }
            Written::Conflict => continue,
        }
    }
    tracing::warn!(grant_id = %id, "could not record the revocation after 5 tries");
    Ok(())
}

/// How long a discovered host realm is trusted before it is discovered again.
pub const HOST_REALM_TTL: chrono::Duration = chrono::Duration::hours(24);
/// Realm discovery never holds a request longer than this.
const REALM_DISCOVERY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Why a site is not tied to the tenant a token names.
#[derive(Debug, thiserror::Error)]
pub enum RealmError {
    #[error("the SharePoint host answers for another realm than the token's")]
    Mismatch,
    #[error("the SharePoint host's realm could not be discovered: {0}")]
    Unreachable(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A site belongs to `realm` (the tenant a context token or an ID token names): its realm,
/// cached per host, else discovered as Microsoft's helper does, must be the same. Both kinds
/// of grant are held to it, so a token of one tenant is never stored against another's site.
pub async fn check_site_realm(
    ctx: &Context,
    site: &crate::core::hosts::SiteUrl,
    realm: &str,
    now: DateTime<Utc>,
) -> Result<(), RealmError> {
    let host = site.authority();
    let known = match ctx.cache.get_host_realm(&host, now).await? {
        Some(known) => known,
        None => {
            let discovery = crate::clients::discover_realm(&ctx.http, site);
            let discovered = match tokio::time::timeout(REALM_DISCOVERY_TIMEOUT, discovery).await {
                Ok(Ok(realm)) => realm,
                failed => {
                    let why = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => "timed out".to_string(),
                    };
                    tracing::warn!(host = %host, error = %why, "realm discovery failed");
                    return Err(RealmError::Unreachable(why));
                }
            };
            let until = now.checked_add_signed(HOST_REALM_TTL).unwrap_or(now);
            ctx.cache.put_host_realm(&host, &discovered, until).await?;
            tracing::info!(host = %host, realm = %discovered, "host realm discovered");
            discovered
        }
    };
    if known.eq_ignore_ascii_case(realm) {
        Ok(())
    } else {
        tracing::warn!(host = %host, host_realm = %known, token_realm = %realm, "refused: the host answers for another realm");
        Err(RealmError::Mismatch)
    }
}
