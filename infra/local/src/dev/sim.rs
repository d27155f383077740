//! The simulated SharePoint (AppRedirect.aspx, the REST API's current user) and ACS (the
//! OAuth2 token endpoint, with faults on demand), plus a clock to travel in time and an inbox
//! that receives and verifies the webhooks.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration as StdDuration;
use std::time::Instant;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Duration, Months, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use url::Url;

use spkeeper::clock::OffsetClock;
use spkeeper::context::Context;
use spkeeper::core::context_token::SHAREPOINT_PRINCIPAL;
use spkeeper::core::links::{SESSION_COOKIE, SESSION_HOURS};
use spkeeper::core::notice::rfc3339;
use spkeeper::http::cookie;
use spkeeper::ports::Outbox;
use spkeeper::service::sweep::SweepService;
use spkeeper::testkit::{ContextTokenSpec, mint_context_token};

use super::DevValues;
use super::fault::{Switch, Times, describe, to_json};

/// Simulated people of the simulated tenant.
const USERS: [(&str, &str); 3] = [
    ("megan", "Megan Bowen"),
    ("alex", "Alex Wilber"),
    ("nestor", "Nestor Wilke"),
];
/// The cookie that remembers who is "signed in to SharePoint".
pub const USER_COOKIE: &str = "spdev_user";
/// ACS's access tokens live about 12 hours.
const ACCESS_TOKEN_SECS: i64 = 43_199;
/// How long a press on the page waits for the notices its sweep queued to reach the inbox
/// (the delivery loop looks every second).
const DELIVERY_WAIT: StdDuration = StdDuration::from_secs(5);

/// A failure the simulated ACS plays on its token requests while it is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Fault {
    #[serde(rename = "500")]
    ServerError,
    #[serde(rename = "429")]
    TooManyRequests,
    #[serde(rename = "slow")]
    Slow,
    #[serde(rename = "invalid_grant")]
    InvalidGrant,
    #[serde(rename = "invalid_client")]
    InvalidClient,
}

impl Fault {
    /// Its `mode` in a control request.
    pub fn mode(self) -> &'static str {
        match self {
            Fault::ServerError => "500",
            Fault::TooManyRequests => "429",
            Fault::Slow => "slow",
            Fault::InvalidGrant => "invalid_grant",
            Fault::InvalidClient => "invalid_client",
        }
    }

    /// Its name on the page.
    pub fn label(self) -> &'static str {
        match self {
            Fault::ServerError => "HTTP 500",
            Fault::TooManyRequests => "HTTP 429",
            Fault::Slow => "slow (6 s)",
            Fault::InvalidGrant => "invalid_grant",
            Fault::InvalidClient => "invalid_client",
        }
    }

    pub const ALL: [Fault; 5] = [
        Fault::ServerError,
        Fault::TooManyRequests,
        Fault::Slow,
        Fault::InvalidGrant,
        Fault::InvalidClient,
    ];
}

#[derive(Debug, Clone, Serialize)]
pub struct InboxEntry {
    pub received_at: String,
    pub webhook_id: String,
    pub signature_valid: bool,
    pub notice: Value,
}

pub struct Sim {
    pub ctx: Arc<Context>,
    pub clock: Arc<OffsetClock>,
    pub values: DevValues,
    sim_key: Vec<u8>,
    /// The embedded queue, to show what waits in it (none on DynamoDB: notices go to SQS).
    pub outbox: Option<Arc<dyn Outbox>>,
    sweep: Arc<SweepService>,
    faults: Switch<Fault>,
    token_requests: AtomicU64,
    inbox: Mutex<VecDeque<InboxEntry>>,
    received: AtomicU64,
    /// The simulated Entra ID.
    pub entra: super::entra::EntraSim,
}

#[derive(Serialize, Deserialize)]
struct RefreshClaims {
    sub: String,
    realm: String,
    iat: i64,
    exp: i64,
    jti: String,
}

#[derive(Serialize, Deserialize)]
struct AccessClaims {
    sub: String,
    aud: String,
    exp: i64,
    /// Every access token is a new one, as ACS's are, even twice in the same second.
    #[serde(default)]
    jti: String,
}

pub fn display_name(user: &str) -> String {
    USERS
        .iter()
        .find(|(k, _)| *k == user)
        .map(|(_, n)| (*n).to_string())
        .unwrap_or_else(|| user.to_string())
}

pub fn known_users() -> impl Iterator<Item = &'static str> {
    USERS.iter().map(|(k, _)| *k)
}

/// Only letters, digits, dots and dashes, so a user name is safe everywhere it goes.
pub fn clean_user(raw: Option<&str>) -> String {
    let u: String = raw
        .unwrap_or("megan")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'))
        .take(32)
        .collect::<String>()
        .to_ascii_lowercase();
    if u.is_empty() { "megan".into() } else { u }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Sim {
    pub fn new(
        ctx: Arc<Context>,
        clock: Arc<OffsetClock>,
        values: DevValues,
        outbox: Option<Arc<dyn Outbox>>,
        sweep: Arc<SweepService>,
    ) -> Result<Self, String> {
        let sim_key = STANDARD
            .decode(&values.sim_key)
            .map_err(|_| "dev.json: sim_key is not base64".to_string())?;
        let entra = super::entra::EntraSim::new(
            &values.entra_signing_key,
            &values.entra_client_secret,
            ctx.secrets.get().entra.as_ref(),
            &spkeeper::config::Env,
        )?;
        Ok(Sim {
            entra,
            ctx,
            clock,
            values,
            sim_key,
            outbox,
            sweep,
            faults: Switch::new(),
            token_requests: AtomicU64::new(0),
            inbox: Mutex::new(VecDeque::new()),
            received: AtomicU64::new(0),
        })
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.ctx.now()
    }

    /// The add-in's ACS client id as the server runs it (the environment's, else dev.json's).
    pub fn acs_client_id(&self) -> &str {
        self.ctx
            .settings
            .client_id
            .as_deref()
            .unwrap_or(&self.values.client_id)
    }

    pub fn base(&self) -> &str {
        self.ctx.settings.public_base()
    }

    /// The simulated site collection: the server's own base URL.
    pub fn site_url(&self) -> String {
        self.base().to_string()
    }

    pub fn sts_uri(&self) -> String {
        format!("{}/dev/acs/tokens/OAuth/2", self.base())
    }

    /// `{StandardTokens}` as SharePoint expands it.
    pub fn standard_tokens(&self) -> String {
        url::form_urlencoded::Serializer::new(String::new())
            .append_pair("SPHostUrl", &self.site_url())
            .append_pair("SPLanguage", "en-US")
            .append_pair("SPClientTag", "0")
            .append_pair("SPProductNumber", "16.0.25919.12000")
            .finish()
    }

    fn cache_key(&self, user: &str) -> String {
        // Like a real CacheKey: base64, with + / = in it, unique per user and tenant.
        STANDARD.encode(Sha256::digest(
            format!("{user}|{}|spkeeper-dev", self.values.realm).as_bytes(),
        ))
    }

    fn sign<T: Serialize>(&self, claims: &T) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(&self.sim_key),
        )
        .unwrap_or_default()
    }

    fn verify<T: serde::de::DeserializeOwned>(&self, token: &str) -> Option<T> {
        let mut v = Validation::new(Algorithm::HS256);
        v.validate_exp = false;
        v.validate_aud = false;
        v.required_spec_claims.clear();
        jsonwebtoken::decode::<T>(token, &DecodingKey::from_secret(&self.sim_key), &v)
            .ok()
            .map(|d| d.claims)
    }

    /// A context token as SharePoint would post it for `user` now: signed with the add-in's
    /// client secret, `nbf`/`exp` as strings like Microsoft's sample, and a fresh refresh token.
    pub fn context_token(&self, user: &str) -> String {
        let now = self.now();
        let mut jti = [0u8; 12];
        let _ = getrandom::fill(&mut jti);
        let refresh = self.sign(&RefreshClaims {
            sub: user.to_string(),
            realm: self.values.realm.clone(),
            iat: now.timestamp(),
            exp: now
                .checked_add_months(Months::new(6))
                .unwrap_or(now)
                .timestamp(),
            jti: hex::encode(jti),
        });
        let spec = ContextTokenSpec {
            client_id: self.acs_client_id().to_string(),
            audience_host: self.ctx.settings.audience_host.clone(),
            realm: self.values.realm.clone(),
            cache_key: self.cache_key(user),
            sts_uri: self.sts_uri(),
            refresh_token: refresh,
            nbf: now,
            lifetime_hours: 12,
            numeric_dates: false,
        };
        // Always there: the CLI does not start without the client secret.
        self.ctx
            .secrets
            .get()
            .client_secret
            .as_ref()
            .map(|secret| mint_context_token(&spec.claims(), secret))
            .unwrap_or_default()
    }

    pub fn token_requests(&self) -> u64 {
        self.token_requests.load(Ordering::SeqCst)
    }

    pub fn inbox(&self) -> Vec<InboxEntry> {
        lock(&self.inbox).iter().cloned().collect()
    }

    /// How many notices the inbox has received (it keeps the last 200).
    fn received(&self) -> u64 {
        self.received.load(Ordering::SeqCst)
    }

    /// The ACS failure that is on, named by `name` (its mode, or its label on the page).
    pub fn acs_fault_labelled(&self, name: fn(Fault) -> &'static str) -> Option<(String, Times)> {
        self.faults.state().map(|(f, t)| (name(f).to_string(), t))
    }

    /// Is the inbox where notices go (the dev default), rather than a receiver of the user's?
    fn inbox_is_the_webhook(&self) -> bool {
        self.ctx
            .settings
            .webhook_url
            .as_ref()
            .is_some_and(|u| u.as_str() == format!("{}/dev/webhook", self.base()))
    }

    /// After a sweep from the page queued `queued` notices: waits (a few seconds at most) for
    /// the delivery loop to bring them to the inbox, so the page it returns to shows them.
    async fn wait_for_delivery(&self, before: u64, queued: u64) {
        if queued == 0 || !self.inbox_is_the_webhook() {
            return;
        }
        let started = Instant::now();
        while self.received() < before + queued && started.elapsed() < DELIVERY_WAIT {
            tokio::time::sleep(StdDuration::from_millis(50)).await;
        }
    }
}

/// An OAuth2 error as ACS sends it.
fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

pub async fn info(State(sim): State<Arc<Sim>>) -> Json<Value> {
    Json(json!({
        "client_id": sim.acs_client_id(),
        "realm": sim.values.realm,
        "public_url": sim.base(),
        "launch_url": sim.ctx.settings.launch_url(),
        "site_url": sim.site_url(),
        "sts_uri": sim.sts_uri(),
        "now": rfc3339(sim.now()),
        "clock_offset_seconds": sim.clock.offset().num_seconds(),
    }))
}

/// A page that posts `token` to `action` as SharePoint's AppRedirect.aspx does.
pub fn auto_post(action: &str, token: &str, site_url: &str, auto: bool) -> String {
    let attr = |s: &str| html_escape::encode_double_quoted_attribute(s).into_owned();
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Working on it...</title></head>\
         <body{onload}><form method=\"post\" action=\"{action}\">\
         <input type=\"hidden\" name=\"SPAppToken\" value=\"{token}\">\
         <input type=\"hidden\" name=\"SPSiteUrl\" value=\"{site}\">\
         <input type=\"hidden\" name=\"SPSiteTitle\" value=\"Contoso (simulated)\">\
         <input type=\"hidden\" name=\"SPSiteLanguage\" value=\"en-US\">\
         <input type=\"hidden\" name=\"SPCorrelationId\" value=\"00000000-0000-0000-0000-000000000000\">\
         <button type=\"submit\">Launch add-in</button></form></body></html>",
        onload = if auto {
            " onload=\"document.forms[0].submit()\""
        } else {
            ""
        },
        action = attr(action),
        token = attr(token),
        site = attr(site_url),
    )
}

#[derive(Deserialize)]
pub struct AppRedirectQuery {
    client_id: Option<String>,
    redirect_uri: Option<String>,
}

fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host() == b.host()
        && a.port_or_known_default() == b.port_or_known_default()
}

/// `/_vti_bin/client.svc` with an empty bearer token: SharePoint's realm challenge, which the
/// launch uses to check the host web belongs to the token's tenant.
pub async fn realm_challenge(State(sim): State<Arc<Sim>>) -> Response {
    let challenge = format!(
        "Bearer realm=\"{}\",client_id=\"{SHAREPOINT_PRINCIPAL}\",trusted_issuers=\"00000001-0000-0000-c000-000000000000@*\"",
        sim.values.realm
    );
    let mut resp = StatusCode::UNAUTHORIZED.into_response();
    if let Ok(v) = header::HeaderValue::from_str(&challenge) {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    resp
}

/// `/_layouts/15/AppRedirect.aspx?client_id=…&redirect_uri=…`: checks the add-in and its
/// redirect URI as SharePoint does, expands `{StandardTokens}`, and posts a fresh token.
pub async fn app_redirect(
    State(sim): State<Arc<Sim>>,
    headers: HeaderMap,
    Query(q): Query<AppRedirectQuery>,
) -> Response {
    let client_ok = q
        .client_id
        .as_deref()
        .is_some_and(|c| c.eq_ignore_ascii_case(sim.acs_client_id()));
    if !client_ok {
        return (StatusCode::BAD_REQUEST, Html("<p>Sorry, something went wrong: the app's client id is not registered in this tenant.</p>")).into_response();
    }
    let redirect = q
        .redirect_uri
        .unwrap_or_default()
        .replace("{StandardTokens}", &sim.standard_tokens());
    let valid = Url::parse(&redirect)
        .ok()
        .filter(|u| same_origin(u, &sim.ctx.settings.public_url));
    let Some(target) = valid else {
        return (StatusCode::BAD_REQUEST, Html("<p>Sorry, something went wrong: the redirect URI is not the app's registered domain.</p>")).into_response();
    };
    let user = clean_user(cookie(&headers, USER_COOKIE));
    let token = sim.context_token(&user);
    Html(auto_post(target.as_str(), &token, &sim.site_url(), true)).into_response()
}

/// The ACS token endpoint: the refresh-token grant, answered with string-typed fields.
pub async fn acs_token(State(sim): State<Arc<Sim>>, body: Bytes) -> Response {
    sim.token_requests.fetch_add(1, Ordering::SeqCst);
    let fault = sim.faults.take();
    match fault {
        Some(Fault::ServerError) => {
            return (StatusCode::INTERNAL_SERVER_ERROR, "ACS is having a bad day").into_response();
        }
        Some(Fault::TooManyRequests) => {
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, "1")],
                "slow down",
            )
                .into_response();
        }
        Some(Fault::InvalidGrant) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                "AADSTS50173: The provided grant has expired due to it being revoked.",
            );
        }
        Some(Fault::InvalidClient) => {
            return oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "AADSTS7000222: The provided client secret keys are expired.",
            );
        }
        Some(Fault::Slow) => tokio::time::sleep(StdDuration::from_secs(6)).await,
        None => {}
    }
    let form: BTreeMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let realm = &sim.values.realm;
    if form.get("grant_type").map(String::as_str) != Some("refresh_token") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "AADSTS70003: only refresh_token here.",
        );
    }
    let expected_client = format!("{}@{realm}", sim.acs_client_id());
    if !form
        .get("client_id")
        .is_some_and(|c| c.eq_ignore_ascii_case(&expected_client))
    {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "AADSTS700016: Application not found in the directory.",
        );
    }
    let presented = form
        .get("client_secret")
        .map(String::as_bytes)
        .unwrap_or_default();
    let secret_ok = sim
        .ctx
        .secrets
        .get()
        .client_secrets()
        .iter()
        .any(|s| bool::from(s.expose_secret().as_bytes().ct_eq(presented)));
    if !secret_ok {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "AADSTS7000215: Invalid client secret provided.",
        );
    }
    let now = sim.now();
    let refresh = form
        .get("refresh_token")
        .and_then(|t| sim.verify::<RefreshClaims>(t))
        .filter(|c| c.realm == *realm);
    let Some(refresh) = refresh else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "AADSTS9002313: Invalid request. Request is malformed or invalid.",
        );
    };
    if now.timestamp() >= refresh.exp {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "AADSTS700082: The refresh token has expired.",
        );
    }
    let resource = form.get("resource").cloned().unwrap_or_default();
    let resource_ok = resource
        .rsplit_once('@')
        .and_then(|(left, r)| (r == realm).then_some(left))
        .and_then(|left| left.split_once('/'))
        .is_some_and(|(principal, host)| principal == SHAREPOINT_PRINCIPAL && !host.is_empty());
    if !resource_ok {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_resource",
            "AADSTS500011: The resource principal was not found.",
        );
    }
    let expires_on = now.timestamp() + ACCESS_TOKEN_SECS;
    let mut jti = [0u8; 12];
    let _ = getrandom::fill(&mut jti);
    let access = sim.sign(&AccessClaims {
        sub: refresh.sub,
        aud: resource.clone(),
        exp: expires_on,
        jti: hex::encode(jti),
    });
    Json(json!({
        "token_type": "Bearer",
        "access_token": access,
        "expires_in": ACCESS_TOKEN_SECS.to_string(),
        "not_before": now.timestamp().to_string(),
        "expires_on": expires_on.to_string(),
        "resource": resource,
    }))
    .into_response()
}

/// `/_api/web/currentuser`: who the bearer access token belongs to.
pub async fn current_user(State(sim): State<Arc<Sim>>, headers: HeaderMap) -> Response {
    let claims = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|t| sim.verify::<AccessClaims>(t))
        .filter(|c| c.exp > sim.now().timestamp());
    let Some(c) = claims else {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer realm=\"\"")],
            "",
        )
            .into_response();
    };
    let email = format!("{}@contoso.example", c.sub);
    let user = json!({
        "Title": display_name(&c.sub),
        "Email": email,
        "LoginName": format!("i:0#.f|membership|{email}"),
    });
    let verbose = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("odata=verbose"));
    Json(if verbose { json!({ "d": user }) } else { user }).into_response()
}

/// Reads a dev control request: JSON, or a form from the dev page (then answer with a redirect).
fn control_input(headers: &HeaderMap, body: &[u8]) -> (BTreeMap<String, Value>, bool) {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        let map = serde_json::from_slice::<BTreeMap<String, Value>>(body).unwrap_or_default();
        (map, false)
    } else {
        let map = url::form_urlencoded::parse(body)
            .into_owned()
            .map(|(k, v)| (k, Value::String(v)))
            .collect();
        (map, true)
    }
}

fn number(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn truthy(v: Option<&Value>) -> bool {
    matches!(v, Some(Value::Bool(true)))
        || matches!(v, Some(Value::String(s)) if s == "1" || s == "true")
}

fn back_to_page() -> Response {
    Redirect::to("/dev/sharepoint").into_response()
}

/// `POST /dev/acs/fault` `{"mode":"500|429|slow|invalid_grant|invalid_client|off","count":N}`:
/// the failure stays on until turned off (`mode=off`; `clear` too), or for the next `count`
/// token requests (absent, empty or `until_off`: until turned off).
pub async fn set_fault(State(sim): State<Arc<Sim>>, headers: HeaderMap, body: Bytes) -> Response {
    let (input, from_page) = control_input(&headers, &body);
    let mode = input.get("mode").and_then(Value::as_str).unwrap_or("");
    if matches!(mode, "off" | "clear") {
        sim.faults.turn_off();
    } else {
        let fault = Fault::ALL.into_iter().find(|f| f.mode() == mode);
        let times = Times::parse(input.get("count"));
        match (fault, times) {
            (Some(f), Ok(t)) => sim.faults.turn_on(f, t),
            (None, _) => {
                return bad_control(
                    "mode must be 500, 429, slow, invalid_grant, invalid_client or off",
                );
            }
            (_, Err(e)) => return bad_control(&e),
        }
    }
    let state = sim.acs_fault_labelled(Fault::mode);
    tracing::info!(fault = %describe(sim.acs_fault_labelled(Fault::label)), "simulated ACS failure switched");
    if from_page {
        back_to_page()
    } else {
        Json(json!({"fault": to_json(state)})).into_response()
    }
}

pub fn bad_control(message: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": "bad_request", "message": message})),
    )
        .into_response()
}

pub async fn acs_stats(State(sim): State<Arc<Sim>>) -> Json<Value> {
    Json(json!({
        "token_requests": sim.token_requests(),
        "fault": to_json(sim.acs_fault_labelled(Fault::mode)),
    }))
}

/// `POST /dev/access-tokens/forget`: drops every cached access token (of every grant), so the
/// next `/token` asks the simulated ACS or Entra again. Grants and refresh tokens stay.
pub async fn forget_access_tokens(
    State(sim): State<Arc<Sim>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (_, from_page) = control_input(&headers, &body);
    let forgotten = async {
        let grants = sim.ctx.grants.list().await?;
        for g in &grants {
            sim.ctx.cache.forget_access_tokens(&g.id).await?;
        }
        Ok::<usize, spkeeper::ports::StoreError>(grants.len())
    }
    .await;
    match (forgotten, from_page) {
        (Ok(n), false) => Json(json!({"grants": n})).into_response(),
        (Ok(n), true) => {
            tracing::info!(grants = n, "cached access tokens forgotten");
            back_to_page()
        }
        (Err(e), _) => {
            tracing::error!(error = %e, "could not forget the cached access tokens");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(json!({"error": "internal_error", "message": "the store failed; see the server's log"})),
            )
                .into_response()
        }
    }
}

/// `POST /dev/clock` `{"now":"RFC 3339"}`, `{"advance_days":N}`, `{"next_notice":true}` or
/// `{"reset":true}`; add `"sweep":true` to sweep at the new time.
///
/// A browser that held a valid session when it pressed the button keeps it across the jump:
/// its session (12 hours on the simulated clock, as in production) is issued again at the new
/// time, as if the user had opened the add-in just then, so `/status` goes on showing the grant.
pub async fn set_clock(State(sim): State<Arc<Sim>>, headers: HeaderMap, body: Bytes) -> Response {
    let (input, from_page) = control_input(&headers, &body);
    let session = cookie(&headers, SESSION_COOKIE).and_then(|v| {
        sim.ctx
            .secrets
            .get()
            .links
            .verify_session(v, sim.now())
            .ok()
    });
    if let Some(at) = input
        .get("now")
        .and_then(Value::as_str)
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
    {
        sim.clock.set(at.with_timezone(&Utc));
    } else if let Some(days) = number(input.get("advance_days")) {
        sim.clock.advance(Duration::days(days.clamp(-3650, 3650)));
    } else if truthy(input.get("reset")) {
        sim.clock.reset();
    } else if truthy(input.get("next_notice")) {
        // Just past the earliest notice any grant has coming.
        let grants = sim.ctx.grants.list().await.unwrap_or_default();
        match grants.iter().filter_map(|g| g.next_due_at).min() {
            Some(due) if due > sim.now() => sim.clock.set(due + Duration::minutes(1)),
            Some(_) => {}
            None => {
                return (
                    StatusCode::CONFLICT,
                    Json(
                        json!({"error": "nothing_due", "message": "no grant has a notice to come"}),
                    ),
                )
                    .into_response();
            }
        }
    } else {
        return bad_control("give now, advance_days, next_notice or reset");
    }
    tracing::info!(now = %rfc3339(sim.now()), "simulated clock moved");
    if let Err(e) =
        super::DevValues::save_offset(&crate::setup::data_dir(), sim.clock.offset().num_seconds())
    {
        tracing::warn!(error = %e, "could not remember the clock offset for other commands");
    }
    let received = sim.received();
    let summary = if truthy(input.get("sweep")) {
        match sim.sweep.run(sim.now(), false).await {
            Ok(s) => {
                if from_page {
                    sim.wait_for_delivery(received, s.notices.values().sum())
                        .await;
                }
                serde_json::to_value(s).unwrap_or(Value::Null)
            }
            Err(e) => json!({"error": e.to_string()}),
        }
    } else {
        Value::Null
    };
    let mut resp = if from_page {
        back_to_page()
    } else {
        Json(json!({"now": rfc3339(sim.now()), "offset_seconds": sim.clock.offset().num_seconds(), "sweep": summary})).into_response()
    };
    if let Some(id) = session {
        let value = sim.ctx.secrets.get().links.session_value(&id, sim.now());
        let carried = format!(
            "{SESSION_COOKIE}={value}; Path=/; Max-Age={}; HttpOnly; Secure; SameSite=None",
            SESSION_HOURS * 3600
        );
        if let Ok(v) = header::HeaderValue::from_str(&carried) {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    resp
}

/// `POST /dev/sweep`: one sweep at the simulated time.
pub async fn sweep_now(State(sim): State<Arc<Sim>>, headers: HeaderMap, body: Bytes) -> Response {
    let (_, from_page) = control_input(&headers, &body);
    let received = sim.received();
    let result = sim.sweep.run(sim.now(), false).await;
    match (result, from_page) {
        (Ok(s), true) => {
            sim.wait_for_delivery(received, s.notices.values().sum())
                .await;
            back_to_page()
        }
        (Ok(s), false) => Json(s).into_response(),
        (Err(e), _) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": "internal_error", "message": e.to_string()})),
        )
            .into_response(),
    }
}

/// `POST /dev/webhook`: a receiver that checks the Standard Webhooks signature.
pub async fn receive_webhook(
    State(sim): State<Arc<Sim>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let valid = sim
        .ctx
        .secrets
        .get()
        .webhook_secret
        .as_ref()
        .and_then(|s| standardwebhooks::Webhook::new(s.expose_secret()).ok())
        .is_some_and(|wh| wh.verify(&body, &headers).is_ok());
    let entry = InboxEntry {
        received_at: rfc3339(Utc::now()),
        webhook_id: headers
            .get("webhook-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string(),
        signature_valid: valid,
        notice: serde_json::from_slice(&body).unwrap_or(Value::Null),
    };
    {
        let mut inbox = lock(&sim.inbox);
        inbox.push_back(entry);
        while inbox.len() > 200 {
            inbox.pop_front();
        }
    }
    sim.received.fetch_add(1, Ordering::SeqCst);
    if valid {
        StatusCode::NO_CONTENT.into_response()
    } else {
        (StatusCode::BAD_REQUEST, "signature does not verify").into_response()
    }
}

pub async fn inbox(State(sim): State<Arc<Sim>>) -> Json<Vec<InboxEntry>> {
    Json(sim.inbox())
}
