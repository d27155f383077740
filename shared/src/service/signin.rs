//! Entra ID sign-in (CONTRACT "Entra ID grants"): `/connect` sends the user to `/authorize`
//! with PKCE, a state and a nonce kept in a short-lived signed cookie; `/callback` checks the
//! state once, redeems the code, validates the ID token and stores the grant — or, for a
//! migration link, carries the user's ACS grant over when the signed-in user is its user.
//! Nothing is stored on any failure.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Duration, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::clients::entra::{EntraClient, IdCheckError};
use crate::context::Context;
use crate::core::entra::{
    AuthorizeRequest, EntraFailure, INACTIVITY_DAYS, IdClaims, authorize_url, default_scope,
    login_name_upn, pkce_challenge,
};
use crate::core::grant::{GrantId, Kind, Progress, plus_days};
use crate::core::hosts::{HostError, SiteUrl};
use crate::core::notice::{Notice, NoticeType, User};
use crate::core::seal::{Place, SealError};
use crate::ports::{CachedToken, GrantRecord, StandardTokens, StoreError, StoredGrant, Written};
use crate::service::{RealmError, check_site_realm};

/// The sign-in cookie: `__Host-`, so no sibling subdomain can set it.
pub const SIGNIN_COOKIE: &str = "__Host-spkeeper_signin";
/// How long a sign-in may take (ENTRA.md: a code lives about 10 minutes).
pub const SIGNIN_MINUTES: i64 = 10;

#[derive(Debug, thiserror::Error)]
pub enum SignInError {
    #[error("Entra ID sign-in is not configured")]
    NotConfigured,
    #[error("no site was given")]
    MissingSite,
    #[error("the site's host is not allowed")]
    HostNotAllowed,
    #[error("the sign-in state is missing, foreign, expired or used")]
    InvalidState,
    #[error("the user declined the sign-in or the consent")]
    Declined,
    #[error("Entra answered the sign-in with an error ({0})")]
    StsError(String),
    #[error("Entra refused the app's credentials")]
    StsRejectedClient,
    #[error("Entra is unavailable")]
    StsUnavailable { retry_after: u64 },
    #[error("the ID token is not valid: {0}")]
    InvalidIdToken(String),
    #[error(transparent)]
    Realm(#[from] RealmError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the refresh token could not be sealed: {0}")]
    Seal(#[from] SealError),
}

/// What `/connect` answers: the cookie to set and where to send the browser.
pub struct Begun {
    pub cookie: String,
    pub location: String,
}

/// A completed sign-in.
#[derive(Debug, Clone)]
pub struct SignedIn {
    pub grant_id: GrantId,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A new grant, or a new refresh token for the user's grant.
    Stored,
    /// The user's ACS grant became an Entra grant under its id.
    Migrated,
    /// A migration link followed by someone other than its grant's user: they got a grant of
    /// their own, and the page says so.
    SomeoneElsesLink,
}

/// What the sign-in cookie holds (signed, not secret from its own browser).
#[derive(Serialize, Deserialize)]
struct State {
    state: String,
    nonce: String,
    verifier: String,
    site: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    migrate_from: Option<String>,
}

fn random_b64(n: usize) -> Result<String, SignInError> {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b).map_err(|_| SignInError::StsError("no randomness".into()))?;
    Ok(URL_SAFE_NO_PAD.encode(b))
}

pub struct SignInService {
    ctx: Arc<Context>,
    client: Option<Arc<EntraClient>>,
}

impl SignInService {
    pub fn new(ctx: Arc<Context>, client: Option<Arc<EntraClient>>) -> Self {
        SignInService { ctx, client }
    }

    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    fn client(&self) -> Result<&EntraClient, SignInError> {
        self.client.as_deref().ok_or(SignInError::NotConfigured)
    }

    fn site(&self, raw: Option<&str>) -> Result<SiteUrl, SignInError> {
        let raw = raw
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or(SignInError::MissingSite)?;
        self.ctx
            .settings
            .allowed_sp_hosts
            .check_site_url(raw)
            .map_err(|e| match e {
                HostError::NotAUrl => SignInError::MissingSite,
                _ => SignInError::HostNotAllowed,
            })
    }

    /// `/connect?site=…` (and renew links of Entra grants, and migration links of ACS ones).
    pub fn begin(
        &self,
        site: Option<&str>,
        login_hint: Option<&str>,
        domain_hint: Option<&str>,
        migrate_from: Option<&GrantId>,
    ) -> Result<Begun, SignInError> {
        let client = self.client()?;
        let site = self.site(site)?;
        let entra = client.settings();
        let st = State {
            state: random_b64(32)?,
            nonce: random_b64(32)?,
            verifier: random_b64(48)?,
            site: site.as_str().to_string(),
            migrate_from: migrate_from.map(|g| g.to_string()),
        };
        let scopes = entra
            .scopes
            .clone()
            .unwrap_or_else(|| vec![default_scope(&site.authority())]);
        let location = authorize_url(
            &entra.authorize_endpoint(),
            &AuthorizeRequest {
                client_id: &entra.client_id,
                redirect_uri: &self.ctx.settings.callback_url(),
                scopes: &scopes,
                state: &st.state,
                nonce: &st.nonce,
                code_challenge: &pkce_challenge(&st.verifier),
                login_hint: login_hint.filter(|h| !h.is_empty()),
                domain_hint: domain_hint.filter(|h| !h.is_empty()),
            },
        );
        let exp = self
            .ctx
            .now()
            .timestamp()
            .saturating_add(SIGNIN_MINUTES * 60);
        let payload = serde_json::to_vec(&st).map_err(|_| SignInError::StsError("state".into()))?;
        let value = self.ctx.secrets.get().links.sign_in_cookie(&payload, exp);
        // SameSite=None: Entra's form_post back to /callback is a cross-site POST.
        let cookie = format!(
            "{SIGNIN_COOKIE}={value}; Path=/; Max-Age={}; HttpOnly; Secure; SameSite=None",
            SIGNIN_MINUTES * 60
        );
        tracing::info!(site = %site, migration = migrate_from.is_some(), "sign-in begun");
        Ok(Begun { cookie, location })
    }

    /// `/callback`: the form post (or query) Entra sends back, with the sign-in cookie.
    pub async fn finish(
        &self,
        params: &[(String, String)],
        cookie: Option<&str>,
    ) -> Result<SignedIn, SignInError> {
        let client = self.client()?;
        let now = self.ctx.now();
        let get = |name: &str| {
            params
                .iter()
                .find(|(k, v)| k == name && !v.is_empty())
                .map(|(_, v)| v.as_str())
        };

        // The state first: nothing from a request that is not our own sign-in is looked at.
        let st: State = cookie
            .and_then(|c| {
                self.ctx
                    .secrets
                    .get()
                    .links
                    .verify_sign_in_cookie(c, now)
                    .ok()
            })
            .and_then(|p| serde_json::from_slice(&p).ok())
            .ok_or(SignInError::InvalidState)?;
        let same = get("state").is_some_and(|s| {
            use subtle::ConstantTimeEq;
            bool::from(s.as_bytes().ct_eq(st.state.as_bytes()))
        });
        if !same {
            return Err(SignInError::InvalidState);
        }
        let until = now + Duration::minutes(SIGNIN_MINUTES);
        if self
            .ctx
            .cache
            .use_once(&format!("signin|{}", st.state), until)
            .await?
            == Written::Conflict
        {
            tracing::warn!("a sign-in state was presented again");
            return Err(SignInError::InvalidState);
        }

        if let Some(error) = get("error") {
            let described: String = get("error_description")
                .unwrap_or("")
                .chars()
                .take(300)
                .flat_map(char::escape_default)
                .collect();
            let error_text: String = error
                .chars()
                .take(64)
                .flat_map(char::escape_default)
                .collect();
            tracing::warn!(error = %error_text, description = %described, "Entra answered the sign-in with an error");
            return Err(if error == "access_denied" {
                SignInError::Declined
            } else {
                SignInError::StsError(error.chars().take(64).collect())
            });
        }
        let code = get("code")
            .map(|c| SecretString::from(c.to_string()))
            .ok_or_else(|| SignInError::StsError("no code".into()))?;

        let tokens = client
            .redeem_code(
                &code,
                &self.ctx.settings.callback_url(),
                &SecretString::from(st.verifier.clone()),
                now,
            )
            .await
            .map_err(|e| redemption_error(&e))?;
        let refresh_token = tokens.refresh_token.clone().ok_or_else(|| {
            SignInError::StsError("no refresh token (is offline_access consented?)".into())
        })?;
        let id_token = tokens
            .id_token
            .as_deref()
            .ok_or_else(|| SignInError::InvalidIdToken("no ID token".into()))?;
        let who = client
            .id_claims(id_token, &st.nonce, now)
            .await
            .map_err(|e| match e {
                IdCheckError::Token(t) => SignInError::InvalidIdToken(t.to_string()),
                IdCheckError::Keys(why) => {
                    tracing::warn!(error = %why, "Entra's signing keys could not be fetched");
                    SignInError::StsUnavailable { retry_after: 5 }
                }
            })?;

        let site = self.site(Some(&st.site))?;
        // The site must belong to the signed-in user's tenant, as a launch's must belong to
        // its token's: a user of one tenant is never stored against another's site.
        check_site_realm(&self.ctx, &site, &who.tid, now).await?;
        let migrate_from = st.migrate_from.as_deref().and_then(GrantId::parse);
        let (target, outcome) = self.target(&who, migrate_from.as_ref()).await?;
        self.store(&target, outcome, &who, &site, &refresh_token, now)
            .await?;

        // The code redemption's access token, for the default scope: the first /token is a
        // cache hit.
        if client.settings().scopes.is_none() {
            let scope = default_scope(&site.authority());
            if let Ok(sealed) = self.ctx.secrets.get().key_ring.seal(
                tokens.access_token.expose_secret().as_bytes(),
                &Place::AccessToken {
                    grant: target.as_str(),
                    resource: &scope,
                },
            ) {
                let cached = CachedToken {
                    sealed,
                    expires_at: tokens.expires_at,
                    resource: scope.clone(),
                };
                if let Err(e) = self
                    .ctx
                    .cache
                    .put_access_token(&target, &scope, &cached)
                    .await
                {
                    tracing::warn!(grant_id = %target, error = %e, "could not cache the first access token");
                }
            }
        }
        tracing::info!(event = "sign_in_accepted", grant_id = %target, outcome = ?outcome, "sign-in accepted");
        Ok(SignedIn {
            grant_id: target,
            outcome,
        })
    }

    /// Which grant the signed-in user's refresh token goes to.
    async fn target(
        &self,
        who: &IdClaims,
        migrate_from: Option<&GrantId>,
    ) -> Result<(GrantId, Outcome), SignInError> {
        // The user's own grant: wherever an earlier sign-in (or migration) put it.
        let own = match self.ctx.grants.find_entra_user(&who.tid, &who.oid).await? {
            Some(id) => id,
            None => GrantId::entra(&who.tid, &who.oid),
        };
        let Some(acs_id) = migrate_from else {
            return Ok((own, Outcome::Stored));
        };
        if *acs_id == own {
            // Their migration link, followed again after the migration.
            return Ok((own, Outcome::Stored));
        }
        let acs = self.ctx.grants.load(acs_id).await?;
        let same_person = acs.as_ref().is_some_and(|a| {
            a.record.kind == Kind::Acs
                && a.record.realm.eq_ignore_ascii_case(&who.tid)
                && a.record
                    .user
                    .as_ref()
                    .is_some_and(|u| same_user(u, &who.preferred_username))
        });
        let has_own = self.ctx.grants.load(&own).await?.is_some();
        match (same_person, has_own) {
            // One grant per user and tenant: the ACS grant becomes theirs, unless they already
            // have an Entra grant (which then gets the new token; the ACS grant stays).
            (true, false) => Ok((acs_id.clone(), Outcome::Migrated)),
            (true, true) => Ok((own, Outcome::Stored)),
            (false, _) => {
                tracing::warn!(grant_id = %acs_id, "a migration link was followed by someone other than its grant's user");
                Ok((own, Outcome::SomeoneElsesLink))
            }
        }
    }

    /// Creates or replaces the grant with the new refresh token, conditional on what was read.
    async fn store(
        &self,
        id: &GrantId,
        outcome: Outcome,
        who: &IdClaims,
        site: &SiteUrl,
        refresh_token: &SecretString,
        now: DateTime<Utc>,
    ) -> Result<(), SignInError> {
        let user = User {
            title: who.name.clone(),
            email: who.preferred_username.clone(),
            login_name: who.preferred_username.clone(),
            oid: Some(who.oid.clone()),
        };
        for _ in 0..5 {
            let prev: Option<StoredGrant> = self.ctx.grants.load(id).await?;
            let version = prev.as_ref().map_or(now.timestamp(), |p| {
                p.record.rt_version.saturating_add(1).max(now.timestamp())
            });
            let mut record = GrantRecord {
                id: id.clone(),
                kind: Kind::Entra,
                rev: 0,
                realm: who.tid.clone(),
                site_url: site.as_str().to_string(),
                app_web_url: None,
                standard_tokens: StandardTokens::default(),
                sts_uri: String::new(),
                target_principal: String::new(),
                user: Some(user.clone()),
                rt_version: version,
                rt_expires_at: plus_days(now, INACTIVITY_DAYS),
                progress: Progress::None,
                next_due_at: None,
                created_at: prev.as_ref().map_or(now, |p| p.record.created_at),
                updated_at: now,
            };
            record.next_due_at = self.ctx.next_due_at(&record, Progress::None);
            let renew_url = self.ctx.renew_url(id, now);
            let notice = match (outcome, &prev) {
                (Outcome::Migrated, _) => Some(Notice {
                    migrated_from: Some("acs".into()),
                    ..Notice::about_grant(
                        NoticeType::Renewed,
                        None,
                        record.notice_subject(&renew_url),
                        now,
                    )
                }),
                (_, Some(p)) if p.record.progress.any_notice_sent() => Some(Notice::about_grant(
                    NoticeType::Renewed,
                    None,
                    record.notice_subject(&renew_url),
                    now,
                )),
                _ => None,
            };
            let sealed = self.ctx.secrets.get().key_ring.seal(
                refresh_token.expose_secret().as_bytes(),
                &Place::RefreshToken {
                    grant: id.as_str(),
                    version,
                },
            )?;
            match self
                .ctx
                .grants
                .put_grant(
                    prev.as_ref().map(|p| p.record.rev),
                    &record,
                    &sealed,
                    notice.as_ref(),
                )
                .await?
            {
                Written::Done => {
                    if let Some(n) = &notice {
                        tracing::info!(grant_id = %id, notice_id = %n.id, "renewed notice queued");
                        self.ctx.relay_now(n).await;
                    }
                    return Ok(());
                }
                Written::Conflict => continue,
            }
        }
        Err(SignInError::Store(StoreError::Corrupt(
            "the grant kept changing under this sign-in".into(),
        )))
    }
}

/// Is the ACS grant's user the one who signed in? Their e-mail, or their login name's UPN,
/// equals the ID token's `preferred_username` (case-insensitive).
fn same_user(acs_user: &User, preferred_username: &str) -> bool {
    let pu = preferred_username.trim().to_lowercase();
    !pu.is_empty()
        && (acs_user.email.trim().to_lowercase() == pu
            || login_name_upn(&acs_user.login_name) == pu)
}

fn redemption_error(e: &EntraFailure) -> SignInError {
    match e {
        EntraFailure::Operator { code, error } => {
            tracing::error!(event = "sts_rejected_client", %error, aadsts = code.unwrap_or(0), "Entra refused the app's credentials or request");
            SignInError::StsRejectedClient
        }
        EntraFailure::Transient { retry_after, why } => {
            tracing::warn!(error = %why, "Entra is unavailable");
            SignInError::StsUnavailable {
                retry_after: *retry_after,
            }
        }
        EntraFailure::Relaunch { error, code, .. } => {
            tracing::warn!(%error, aadsts = code.unwrap_or(0), "Entra refused the code");
            SignInError::StsError(error.clone())
        }
        EntraFailure::Unexpected(why) => SignInError::StsError(why.clone()),
    }
}

/// The renew link's target for grants that renew through Entra: an Entra grant, or an ACS
/// grant with `SPKEEPER_RENEW_VIA=entra` (the migration).
pub fn renew_begin(svc: &SignInService, g: &GrantRecord) -> Result<Begun, SignInError> {
    let hint = g.user.as_ref().map(|u| u.email.as_str());
    let migrate = (g.kind == Kind::Acs).then_some(&g.id);
    svc.begin(Some(&g.site_url), hint, Some(&g.realm), migrate)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(email: &str, login: &str) -> User {
        User {
            title: "Megan".into(),
            email: email.into(),
            login_name: login.into(),
            oid: None,
        }
    }

    #[test]
    fn the_same_person_by_email_or_login_upn_case_insensitively() {
        assert!(same_user(
            &user("Megan@Contoso.com", ""),
            "megan@contoso.com"
        ));
        assert!(same_user(
            &user("", "i:0#.f|membership|MEGAN@contoso.com"),
            "megan@contoso.com"
        ));
        assert!(!same_user(
            &user("alex@contoso.com", "i:0#.f|membership|alex@contoso.com"),
            "megan@contoso.com"
        ));
        assert!(!same_user(&user("", ""), ""), "nobody matches nobody");
    }
}
