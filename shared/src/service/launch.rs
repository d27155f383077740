//! The launch: SharePoint POSTs a context token; we validate it and store its refresh token.
//! On any failure nothing is written.

use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;

use crate::context::Context;
use crate::core::context_token::{self, Expectations, TokenError};
use crate::core::form_pairs;
use crate::core::grant::{GrantId, Kind, LaunchPlan, Progress, plan_launch, refresh_token_expiry};
use crate::core::hosts::HostError;
use crate::core::notice::{Notice, NoticeType};
use crate::core::seal::{Place, SealError};
use crate::ports::{GrantRecord, StandardTokens, StoreError, Written};
use crate::service::exchange::TokenService;
use crate::service::{RealmError, check_site_realm};

/// Names under which Microsoft's helper accepts the context token (form first, then query).
pub const TOKEN_PARAMS: [&str; 4] = ["SPAppToken", "AppContext", "AppContextToken", "AccessToken"];
/// The best-effort user lookup after a launch never holds the redirect longer than this.
const IDENTIFY_AFTER_LAUNCH: StdDuration = StdDuration::from_secs(3);
/// SharePoint's error text is logged (never shown: anyone can post it), this much at most.
const MAX_SP_ERROR_CHARS: usize = 500;

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("no context token was posted")]
    MissingContextToken,
    #[error("SPHostUrl is missing or is not an absolute http(s) URL")]
    MissingHostUrl,
    #[error("SharePoint could not issue a context token (correlation id {correlation_id})")]
    SharePoint { correlation_id: String },
    #[error("the SharePoint host is not allowed")]
    HostNotAllowed,
    #[error(transparent)]
    Realm(#[from] RealmError),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the refresh token could not be sealed: {0}")]
    Seal(#[from] SealError),
    #[error("this deployment serves no SharePoint add-in launches (SPKEEPER_CLIENT_ID is not set)")]
    AcsNotConfigured,
    #[error("the grant kept changing under this launch")]
    Contention,
}

/// The launch POST, as parsed pairs (first occurrence of a name wins).
pub struct LaunchInput {
    pub form: Vec<(String, String)>,
    pub query: Vec<(String, String)>,
}

impl LaunchInput {
    /// The launch POST as SharePoint sends it: a form body and a query string.
    pub fn parse(body: &[u8], query: Option<&str>) -> Self {
        LaunchInput {
            form: form_pairs(body),
            query: query.map(|q| form_pairs(q.as_bytes())).unwrap_or_default(),
        }
    }

    fn get<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
        pairs
            .iter()
            .find(|(k, v)| k == name && !v.trim().is_empty())
            .map(|(_, v)| v.as_str())
    }

    /// A value from the query string, else from the form.
    pub fn param(&self, name: &str) -> Option<&str> {
        Self::get(&self.query, name).or_else(|| Self::get(&self.form, name))
    }

    /// The context token: under any of Microsoft's names, form first, then query.
    pub fn context_token(&self) -> Option<&str> {
        TOKEN_PARAMS
            .iter()
            .find_map(|n| Self::get(&self.form, n))
            .or_else(|| TOKEN_PARAMS.iter().find_map(|n| Self::get(&self.query, n)))
    }
}

/// SharePoint posted `SPErrorInfo` instead of a token. Anyone can post that text, so it is only
/// logged (escaped, truncated) with a correlation id; the user is shown the id, never the text.
fn sharepoint_error(input: &LaunchInput, info: &str) -> LaunchError {
    let correlation_id = correlation_id();
    let escaped: String = info
        .chars()
        .take(MAX_SP_ERROR_CHARS)
        .flat_map(char::escape_default)
        .collect();
    let sp_correlation: String = input
        .param("SPErrorCorrelationId")
        .or_else(|| input.param("SPCorrelationId"))
        .unwrap_or("")
        .chars()
        .take(64)
        .flat_map(char::escape_default)
        .collect();
    tracing::warn!(%correlation_id, sp_error_info = %escaped, sp_correlation_id = %sp_correlation, "SharePoint posted an error instead of a context token");
    LaunchError::SharePoint { correlation_id }
}

/// A random id to quote to support: 16 hex digits.
pub fn correlation_id() -> String {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        return format!("{:016x}", Utc::now().timestamp_nanos_opt().unwrap_or(0));
    }
    hex::encode(b)
}

#[derive(Debug, Clone)]
pub struct Launched {
    pub grant_id: GrantId,
    pub plan: LaunchPlan,
    /// SharePoint's standard tokens of this launch (host web normalised and allowlisted), for
    /// the hand-off to the add-in's own app.
    pub standard_tokens: Vec<(&'static str, String)>,
}

pub struct LaunchService {
    ctx: Arc<Context>,
    tokens: Arc<TokenService>,
}

impl LaunchService {
    pub fn new(ctx: Arc<Context>, tokens: Arc<TokenService>) -> Self {
        LaunchService { ctx, tokens }
    }

    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    pub async fn launch(&self, input: &LaunchInput) -> Result<Launched, LaunchError> {
        let now = self.ctx.now();
        let settings = &self.ctx.settings;

        let Some(token) = input.context_token() else {
            return Err(match input.param("SPErrorInfo") {
                Some(info) => sharepoint_error(input, info),
                None => LaunchError::MissingContextToken,
            });
        };

        let host_url = input
            .param("SPHostUrl")
            .ok_or(LaunchError::MissingHostUrl)?;
        let site = settings
            .allowed_sp_hosts
            .check_site_url(host_url)
            .map_err(|e| match e {
                HostError::NotAUrl => LaunchError::MissingHostUrl,
                _ => LaunchError::HostNotAllowed,
            })?;
        let app_web = input
            .param("SPAppWebUrl")
            .map(|u| settings.allowed_sp_hosts.check_site_url(u))
            .transpose()
            .map_err(|_| LaunchError::HostNotAllowed)?;

        let client_id = settings
            .client_id
            .as_deref()
            .ok_or(LaunchError::AcsNotConfigured)?;
        let all = self.ctx.secrets.get();
        let secrets = all.client_secrets();
        let ct = context_token::validate(
            token,
            &Expectations {
                client_id,
                audience_host: &settings.audience_host,
                secrets: &secrets,
                sts_hosts: &settings.sts_hosts,
                now,
            },
        )?;

        // The host web (and the app web) must answer for the token's realm: a token of one
        // tenant is never stored against another tenant's site.
        check_site_realm(&self.ctx, &site, &ct.realm, now).await?;
        if let Some(app_web) = &app_web {
            check_site_realm(&self.ctx, app_web, &ct.realm, now).await?;
        }

        let id = GrantId::derive(&ct.realm, &ct.cache_key);
        let rt_version = ct.not_before.timestamp();
        let sealed = self.ctx.secrets.get().key_ring.seal(
            ct.refresh_token.expose_secret().as_bytes(),
            &Place::RefreshToken {
                grant: id.as_str(),
                version: rt_version,
            },
        )?;
        let rt_expires_at = refresh_token_expiry(ct.not_before);
        let incoming = GrantRecord {
            id: id.clone(),
            kind: Kind::Acs,
            rev: 0,
            realm: ct.realm.clone(),
            site_url: site.as_str().to_string(),
            app_web_url: app_web.as_ref().map(|a| a.as_str().to_string()),
            standard_tokens: StandardTokens {
                language: input.param("SPLanguage").map(String::from),
                client_tag: input.param("SPClientTag").map(String::from),
                product_number: input.param("SPProductNumber").map(String::from),
            },
            sts_uri: ct.sts_uri.to_string(),
            target_principal: ct.target_principal.clone(),
            user: None,
            rt_version,
            rt_expires_at,
            progress: Progress::None,
            next_due_at: None,
            created_at: now,
            updated_at: now,
        };

        let plan = self.store(incoming, &sealed, now).await?;
        tracing::info!(event = "launch_accepted", grant_id = %id, realm = %ct.realm, outcome = ?plan, "launch accepted");

        if plan != LaunchPlan::Stale {
            // Prime the access-token cache and learn who the user is; never fail the launch.
            match tokio::time::timeout(
                IDENTIFY_AFTER_LAUNCH,
                self.tokens.access_token(&id, None, None),
            )
            .await
            {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(grant_id = %id, error = %e, "first exchange after launch failed")
                }
                Err(_) => tracing::warn!(grant_id = %id, "first exchange after launch timed out"),
            }
        }
        let standard_tokens = [
            ("SPHostUrl", Some(site.as_str().to_string())),
            ("SPLanguage", input.param("SPLanguage").map(String::from)),
            ("SPClientTag", input.param("SPClientTag").map(String::from)),
            (
                "SPProductNumber",
                input.param("SPProductNumber").map(String::from),
            ),
            (
                "SPAppWebUrl",
                app_web.as_ref().map(|a| a.as_str().to_string()),
            ),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect();
        Ok(Launched {
            grant_id: id,
            plan,
            standard_tokens,
        })
    }

    /// Writes the grant, conditional on what was read; rereads and decides again on conflict.
    async fn store(
        &self,
        incoming: GrantRecord,
        sealed: &str,
        now: DateTime<Utc>,
    ) -> Result<LaunchPlan, LaunchError> {
        for _ in 0..5 {
            let stored = self.ctx.grants.load(&incoming.id).await?;
            if stored
                .as_ref()
                .is_some_and(|s| s.record.kind == Kind::Entra)
            {
                // The user's grant moved to Entra (a migration): an ACS launch never takes it
                // back; the Entra refresh token stays.
                tracing::info!(grant_id = %incoming.id, "an ACS launch for a grant migrated to Entra: kept as it is");
                return Ok(LaunchPlan::Stale);
            }
            let plan = plan_launch(
                stored
                    .as_ref()
                    .map(|s| (s.record.rt_version, s.record.progress)),
                incoming.rt_version,
            );
            let mut record = incoming.clone();
            let mut notice = None;
            let expected_rev = stored.as_ref().map(|s| s.record.rev);
            match (&plan, &stored) {
                (LaunchPlan::Stale, _) => return Ok(plan),
                (LaunchPlan::Create, _) => {
                    record.next_due_at = self.ctx.next_due_at(&record, Progress::None);
                }
                (LaunchPlan::Replace { renewed }, Some(old)) => {
                    record.created_at = old.record.created_at;
                    record.user = old.record.user.clone();
                    record.next_due_at = self.ctx.next_due_at(&record, Progress::None);
                    if *renewed {
                        let renew_url = self.ctx.renew_url(&record.id, now);
                        notice = Some(Notice::about_grant(
                            NoticeType::Renewed,
                            None,
                            record.notice_subject(&renew_url),
                            now,
                        ));
                    }
                }
                (LaunchPlan::Refresh, Some(old)) => {
                    record.created_at = old.record.created_at;
                    record.user = old.record.user.clone();
                    record.progress = old.record.progress;
                    record.next_due_at = old.record.next_due_at;
                }
                (_, None) => return Err(LaunchError::Contention),
            }
            match self
                .ctx
                .grants
                .put_grant(expected_rev, &record, sealed, notice.as_ref())
                .await?
            {
                Written::Done => {
                    if let Some(n) = &notice {
                        tracing::info!(grant_id = %record.id, notice_id = %n.id, "renewed notice queued");
                        self.ctx.relay_now(n).await;
                    }
                    return Ok(plan);
                }
                Written::Conflict => continue,
            }
        }
        Err(LaunchError::Contention)
    }
}
