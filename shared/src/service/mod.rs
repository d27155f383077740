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
use crate::ports::{StoreError, StoredGrant, Written};

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
        match ctx
            .grants
            .advance(id, rec.rev, Progress::Revoked, None, Some(&notice), now)
            .await?
        {
            Written::Done => {
                tracing::info!(grant_id = %id, notice_id = %notice.id, %reason, "grant revoked; notice queued");
                if let Err(e) = ctx.relay.relay_now(&notice, now).await {
                    tracing::warn!(notice_id = %notice.id, error = %e, "notice stays queued for the next sweep");
                }
                return Ok(());
            }
            Written::Conflict => continue,
        }
    }
    tracing::warn!(grant_id = %id, "could not record the revocation after 5 tries");
    Ok(())
}
