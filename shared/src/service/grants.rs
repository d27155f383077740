//! What the add-in's own app needs beside spkeeper: the hand-off after a launch (a single-use
//! ticket the app's backend trades for the grant), lookups by user, and erasure.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use url::Url;

use crate::context::{Context, GrantView};
use crate::core::grant::GrantId;
use crate::core::links::LinkError;
use crate::ports::{GrantRecord, StoreError, UserKey, Written};

#[derive(Debug, thiserror::Error)]
pub enum GrantsError {
    #[error("no grant with this id")]
    UnknownGrant,
    #[error("the ticket is not one spkeeper issued")]
    InvalidTicket,
    #[error("the ticket has expired")]
    TicketExpired,
    #[error("the ticket was used already")]
    TicketUsed,
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct GrantsService {
    ctx: Arc<Context>,
}

impl GrantsService {
    pub fn new(ctx: Arc<Context>) -> Self {
        GrantsService { ctx }
    }

    fn view(&self, g: &GrantRecord, now: DateTime<Utc>) -> GrantView {
        self.ctx.grant_view(g, now)
    }

    pub async fn get(&self, id: &GrantId) -> Result<GrantView, GrantsError> {
        let stored = self
            .ctx
            .grants
            .load(id)
            .await?
            .ok_or(GrantsError::UnknownGrant)?;
        Ok(self.view(&stored.record, self.ctx.now()))
    }

    /// The grants of a user, optionally on one site (a site URL, or a bare host).
    pub async fn find(
        &self,
        key: &UserKey,
        site: Option<&str>,
    ) -> Result<Vec<GrantView>, GrantsError> {
        let now = self.ctx.now();
        let site = site.map(SiteFilter::new);
        Ok(self
            .ctx
            .grants
            .find_by_user(key)
            .await?
            .iter()
            .filter(|g| site.as_ref().is_none_or(|s| s.matches(&g.site_url)))
            .map(|g| self.view(g, now))
            .collect())
    }

    /// Erases the grant everywhere at once (right to erasure). Logged with the grant id only.
    pub async fn forget(&self, id: &GrantId) -> Result<(), GrantsError> {
        if !self.ctx.grants.forget(id).await? {
            return Err(GrantsError::UnknownGrant);
        }
        tracing::info!(event = "grant_forgotten", grant_id = %id, "grant erased");
        Ok(())
    }

    /// Trades a hand-off ticket for its grant, once.
    pub async fn handoff(&self, ticket: &str) -> Result<GrantView, GrantsError> {
        let now = self.ctx.now();
        let t = self
            .ctx
            .secrets
            .get()
            .links
            .verify_ticket(ticket.trim(), now)
            .map_err(|e| match e {
                LinkError::BadSignature => GrantsError::InvalidTicket,
                LinkError::Expired => GrantsError::TicketExpired,
            })?;
        match self
            .ctx
            .cache
            .use_once(&format!("ticket|{}", t.id), t.expires_at)
            .await?
        {
            Written::Done => {}
            Written::Conflict => {
                tracing::warn!(grant_id = %t.grant, "hand-off ticket presented again");
                return Err(GrantsError::TicketUsed);
            }
        }
        tracing::info!(grant_id = %t.grant, "hand-off ticket redeemed");
        self.get(&t.grant).await
    }
}

/// A fresh hand-off ticket for the grant (a random id makes it single-use).
pub fn issue_ticket(ctx: &Context, id: &GrantId, now: DateTime<Utc>) -> String {
    let mut nonce = [0u8; 16];
    // Without randomness two tickets of one second could share an id: the second would then
    // be refused as used, never accepted twice.
    let _ = getrandom::fill(&mut nonce);
    ctx.secrets.get().links.ticket(id, &hex::encode(nonce), now)
}

/// Where a launch sends the browser: `{RETURN_URL}?grant_id=…&ticket=…&{SharePoint's standard
/// tokens}` when the app has a return page, else spkeeper's own `/status`.
pub fn handoff_location(
    ctx: &Context,
    id: &GrantId,
    standard_tokens: &[(&str, String)],
    now: DateTime<Utc>,
) -> String {
    match &ctx.settings.return_url {
        Some(base) => {
            let mut url = base.clone();
            {
                let mut q = url.query_pairs_mut();
                q.append_pair("grant_id", id.as_str())
                    .append_pair("ticket", &issue_ticket(ctx, id, now));
                for (k, v) in standard_tokens {
                    q.append_pair(k, v);
                }
            }
            url.to_string()
        }
        None => format!("{}/status", ctx.settings.public_base()),
    }
}

/// `site=` of a lookup: a site URL (compared normalised, case-insensitively) or a bare host.
enum SiteFilter {
    Url(String),
    Host(String),
}

impl SiteFilter {
    fn new(raw: &str) -> Self {
        let raw = raw.trim();
        match Url::parse(raw) {
            Ok(u) if u.host().is_some() => SiteFilter::Url(normalise(u.as_str())),
            _ => SiteFilter::Host(raw.to_ascii_lowercase()),
        }
    }

    fn matches(&self, site_url: &str) -> bool {
        match self {
            SiteFilter::Url(u) => normalise(site_url) == *u,
            SiteFilter::Host(h) => Url::parse(site_url)
                .ok()
                .is_some_and(|u| crate::core::hosts::authority_of(&u) == *h),
        }
    }
}

fn normalise(url: &str) -> String {
    url.trim_end_matches('/').to_lowercase()
}
