//! The simulated Microsoft Entra ID (`--dev` only): an `/authorize` page where you pick a user
//! and consent (or decline), the token endpoint (authorization code with PKCE, refresh with
//! rotation, the client's secret or certificate assertion checked), RS256 ID tokens with a
//! JWKS endpoint (and key rotation), 90 days of inactivity on the simulated clock, revoked
//! sessions, and failures on demand (ENTRA.md §5).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Duration, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use spkeeper::config::{EntraCredential, Source};
use spkeeper::core::entra::{INACTIVITY_DAYS, pkce_challenge};
use spkeeper::testkit::rsa::{RsaKey, jwks};

use super::fault::{Switch, Times, to_json};
use super::sim::{Sim, bad_control, display_name, known_users};

/// A failure the simulated Entra plays on its token requests while it is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// An AADSTS code answered as Entra does (`invalid_grant`, `invalid_client`, …).
    Code(u32),
    /// 429 with `Retry-After`.
    TooManyRequests,
    ServerError,
    /// The next code redemption's ID token carries another nonce (as a replayed one would).
    BadIdToken,
}

impl Fault {
    fn parse(mode: &str) -> Option<Fault> {
        match mode {
            "429" => Some(Fault::TooManyRequests),
            "500" => Some(Fault::ServerError),
            "id_token" => Some(Fault::BadIdToken),
            m => m
                .trim_start_matches("AADSTS")
                .parse::<u32>()
                .ok()
                .filter(|c| FAULT_CODES.contains(c))
                .map(Fault::Code),
        }
    }

    pub fn label(self) -> String {
        match self {
            Fault::Code(c) => c.to_string(),
            Fault::TooManyRequests => "429".into(),
            Fault::ServerError => "500".into(),
            Fault::BadIdToken => "id_token".into(),
        }
    }
}

/// The failures the page offers (ENTRA.md §5).
pub const FAULT_CODES: [u32; 8] = [700082, 50173, 70043, 65001, 50057, 7000215, 7000222, 50196];

/// `(error, status, text)` of an AADSTS code.
fn code_answer(code: u32) -> (&'static str, StatusCode, &'static str) {
    match code {
        700082 => (
            "invalid_grant",
            StatusCode::BAD_REQUEST,
            "The refresh token has expired due to inactivity.",
        ),
        50173 => (
            "invalid_grant",
            StatusCode::BAD_REQUEST,
            "The provided grant has expired due to it being revoked.",
        ),
        70043 => (
            "invalid_grant",
            StatusCode::BAD_REQUEST,
            "The refresh token has expired or is invalid due to sign-in frequency checks by conditional access.",
        ),
        65001 => (
            "invalid_grant",
            StatusCode::BAD_REQUEST,
            "The user or administrator has not consented to use the application.",
        ),
        50057 => (
            "invalid_grant",
            StatusCode::BAD_REQUEST,
            "The user account is disabled.",
        ),
        70008 => (
            "invalid_grant",
            StatusCode::BAD_REQUEST,
            "The provided authorization code or refresh token has expired due to inactivity.",
        ),
        54005 => (
            "invalid_grant",
            StatusCode::BAD_REQUEST,
            "OAuth2 Authorization code was already redeemed.",
        ),
        501481 => (
            "invalid_grant",
            StatusCode::BAD_REQUEST,
            "The Code_Verifier does not match the code_challenge supplied in the authorization request.",
        ),
        7000215 => (
            "invalid_client",
            StatusCode::UNAUTHORIZED,
            "Invalid client secret provided.",
        ),
        7000222 => (
            "invalid_client",
            StatusCode::UNAUTHORIZED,
            "The provided client secret keys are expired.",
        ),
        700027 => (
            "invalid_client",
            StatusCode::UNAUTHORIZED,
            "Client assertion failed signature validation.",
        ),
        50196 => (
            "invalid_request",
            StatusCode::BAD_REQUEST,
            "The server terminated an operation because it encountered a client request loop.",
        ),
        _ => (
            "invalid_request",
            StatusCode::BAD_REQUEST,
            "The request is not valid.",
        ),
    }
}

fn aad_error(code: u32) -> Response {
    let (error, status, text) = code_answer(code);
    (
        status,
        Json(json!({
            "error": error,
            "error_description": format!("AADSTS{code}: {text} Trace ID: 0 Correlation ID: 0"),
            "error_codes": [code],
            "timestamp": "",
            "trace_id": "00000000-0000-0000-0000-000000000000",
            "correlation_id": "00000000-0000-0000-0000-000000000000",
        })),
    )
        .into_response()
}

struct Code {
    user: String,
    redirect_uri: String,
    challenge: String,
    nonce: String,
    issued: DateTime<Utc>,
    used: bool,
}

struct Refresh {
    user: String,
    issued: DateTime<Utc>,
    /// A newer token replaced it (rotation): using it is refused, as holders of a
    /// pre-rotation token have seen (ENTRA.md §3).
    superseded: bool,
}

/// How the app proves itself, as the simulated Entra knows it.
enum AppCredential {
    Secret(String),
    /// The certificate's thumbprints and the public key of its private key.
    Certificate {
        x5t_s256: String,
        x5t: String,
        public: DecodingKey,
    },
}

pub struct EntraSim {
    keys: Mutex<Vec<RsaKey>>,
    codes: Mutex<HashMap<String, Code>>,
    refresh_tokens: Mutex<HashMap<String, Refresh>>,
    /// Sessions revoked at (revokeSignInSessions): tokens issued before die.
    revoked: Mutex<HashMap<String, DateTime<Utc>>>,
    faults: Switch<Fault>,
    credential: AppCredential,
    token_requests: AtomicU64,
    refreshes: AtomicU64,
    stale_refreshes: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn random_token(prefix: &str) -> String {
    let mut b = [0u8; 24];
    let _ = getrandom::fill(&mut b);
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(b))
}

impl EntraSim {
    /// `secrets`: the app's credential as the server loaded it; the certificate's public key
    /// comes from the configured private key (the simulator plays both sides).
    pub fn new(
        signing_key_pem: &str,
        dev_secret: &str,
        credential: Option<&EntraCredential>,
        env: &dyn Source,
    ) -> Result<EntraSim, String> {
        let key = RsaKey::from_pem("dev-1", signing_key_pem)?;
        let credential = match credential {
            Some(EntraCredential::Certificate { x5t_s256, x5t, .. }) => {
                let pem = env
                    .get("SPKEEPER_ENTRA_PRIVATE_KEY")
                    .ok_or("the simulated Entra needs SPKEEPER_ENTRA_PRIVATE_KEY")?;
                let pem = match pem.trim().strip_prefix('@') {
                    Some(path) => {
                        std::fs::read_to_string(path.trim()).map_err(|e| e.to_string())?
                    }
                    None => pem,
                };
                let public = RsaKey::from_pem("app", &pem)?
                    .decoding_key()
                    .ok_or("the app's key has no public half")?;
                AppCredential::Certificate {
                    x5t_s256: x5t_s256.clone(),
                    x5t: x5t.clone(),
                    public,
                }
            }
            Some(EntraCredential::Secret(s)) => {
                AppCredential::Secret(secrecy::ExposeSecret::expose_secret(s).to_string())
            }
            None => AppCredential::Secret(dev_secret.to_string()),
        };
        Ok(EntraSim {
            keys: Mutex::new(vec![key]),
            codes: Mutex::new(HashMap::new()),
            refresh_tokens: Mutex::new(HashMap::new()),
            revoked: Mutex::new(HashMap::new()),
            faults: Switch::new(),
            credential,
            token_requests: AtomicU64::new(0),
            refreshes: AtomicU64::new(0),
            stale_refreshes: AtomicU64::new(0),
        })
    }
}

/// The simulated user's object id in the simulated tenant.
pub fn oid_of(user: &str, tenant: &str) -> String {
    let h = hex::encode(&Sha256::digest(format!("oid|{user}|{tenant}").as_bytes())[..16]);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// The simulated user's sign-in name (the same e-mail the simulated SharePoint reports).
pub fn upn_of(user: &str) -> String {
    format!("{user}@contoso.example")
}

fn authority(sim: &Sim) -> String {
    format!("{}/dev/entra", sim.base())
}

fn attr(s: &str) -> String {
    html_escape::encode_double_quoted_attribute(s).into_owned()
}

fn page(title: &str, body: &str) -> Response {
    let mut resp = Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title>\
         <style>body{{font-family:system-ui,sans-serif;max-width:34rem;margin:3rem auto;padding:0 1rem}}\
         button{{font-size:1rem;margin:.3rem 0;padding:.5rem 1rem;width:100%}}.muted{{color:#666}}</style>\
         </head><body>{body}</body></html>",
        t = html_escape::encode_text(title)
    ))
    .into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// `GET /dev/entra/{tenant}/oauth2/v2.0/authorize`: checks the request as Entra does and
/// shows the sign-in page (pick a user, consent or decline).
pub async fn authorize(
    State(sim): State<Arc<Sim>>,
    Path(_tenant): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let get = |k: &str| q.get(k).map(String::as_str).unwrap_or("");
    let problem = if !get("client_id").eq_ignore_ascii_case(&sim.values.entra_client_id)
        && Some(get("client_id"))
            != sim
                .ctx
                .settings
                .entra
                .as_ref()
                .map(|e| e.client_id.as_str())
    {
        Some("AADSTS700016: the application was not found in the directory.")
    } else if get("redirect_uri") != sim.ctx.settings.callback_url() {
        Some(
            "AADSTS50011: the redirect URI does not match the ones registered for the app (platform Web).",
        )
    } else if get("response_type") != "code" {
        Some("AADSTS900144: response_type must be code.")
    } else if get("code_challenge_method") != "S256" || get("code_challenge").len() < 43 {
        Some("AADSTS9002325: PKCE with S256 is required.")
    } else if get("state").is_empty() || get("nonce").is_empty() {
        Some("the request has no state or nonce.")
    } else if !get("scope").split(' ').any(|s| s == "offline_access") {
        Some("offline_access was not asked: no refresh token would be issued.")
    } else {
        None
    };
    if let Some(p) = problem {
        return (
            StatusCode::BAD_REQUEST,
            page(
                "Sign-in error",
                &format!(
                    "<h1>Sorry, but we're having trouble signing you in.</h1><p>{}</p>",
                    html_escape::encode_text(p)
                ),
            ),
        )
            .into_response();
    }
    let hint = get("login_hint").to_ascii_lowercase();
    let hidden: String = [
        "client_id",
        "redirect_uri",
        "state",
        "nonce",
        "code_challenge",
        "scope",
    ]
    .iter()
    .map(|k| {
        format!(
            "<input type=\"hidden\" name=\"{k}\" value=\"{}\">",
            attr(get(k))
        )
    })
    .collect();
    let users: String = known_users()
        .map(|u| {
            let hinted = if upn_of(u) == hint { " (suggested)" } else { "" };
            format!(
                "<form method=\"post\" action=\"/dev/entra/authorize/decide\">{hidden}\
                 <input type=\"hidden\" name=\"user\" value=\"{u}\">\
                 <button name=\"decision\" value=\"consent\">Sign in as {name} &lt;{upn}&gt;{hinted}</button></form>",
                name = html_escape::encode_text(&display_name(u)),
                upn = upn_of(u),
            )
        })
        .collect();
    page(
        "Sign in to your account",
        &format!(
            "<h1>Sign in — Contoso (simulated Entra ID)</h1>\
             <p class=\"muted\">spkeeper's <code>--dev</code> simulator. The app asks for: <code>{scope}</code></p>\
             {users}\
             <form method=\"post\" action=\"/dev/entra/authorize/decide\">{hidden}\
             <input type=\"hidden\" name=\"user\" value=\"megan\">\
             <button name=\"decision\" value=\"decline\">Cancel (decline consent)</button></form>",
            scope = html_escape::encode_text(get("scope")),
        ),
    )
}

/// The sign-in page's answer: a code (or `access_denied`) posted back to the app, as
/// `response_mode=form_post` does.
pub async fn decide(State(sim): State<Arc<Sim>>, body: Bytes) -> Response {
    let f: BTreeMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let get = |k: &str| f.get(k).map(String::as_str).unwrap_or("");
    let redirect = get("redirect_uri");
    if redirect != sim.ctx.settings.callback_url() {
        return (
            StatusCode::BAD_REQUEST,
            page("Sign-in error", "<p>AADSTS50011: wrong redirect URI.</p>"),
        )
            .into_response();
    }
    let user = super::sim::clean_user(Some(get("user")));
    let mut fields = vec![("state", get("state").to_string())];
    if get("decision") == "consent" {
        let code = random_token("sim-code-");
        lock(&sim.entra.codes).insert(
            code.clone(),
            Code {
                user,
                redirect_uri: redirect.to_string(),
                challenge: get("code_challenge").to_string(),
                nonce: get("nonce").to_string(),
                issued: sim.now(),
                used: false,
            },
        );
        fields.push(("code", code));
    } else {
        fields.push(("error", "access_denied".into()));
        fields.push((
            "error_description",
            "AADSTS65004: User declined to consent to access the app.".into(),
        ));
    }
    let inputs: String = fields
        .iter()
        .map(|(k, v)| format!("<input type=\"hidden\" name=\"{k}\" value=\"{}\">", attr(v)))
        .collect();
    let mut resp = Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Working...</title></head>\
         <body onload=\"document.forms[0].submit()\"><form method=\"post\" action=\"{}\">{inputs}\
         <noscript><button type=\"submit\">Continue</button></noscript></form></body></html>",
        attr(redirect)
    ))
    .into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Checks the app's credential as Entra does: the secret, or a client assertion signed with the
/// certificate's key (PS256 + `x5t#S256`, or RS256 + `x5t`) for this token endpoint.
fn client_ok(sim: &Sim, f: &BTreeMap<String, String>, endpoint: &str) -> Result<(), u32> {
    match &sim.entra.credential {
        AppCredential::Secret(expected) => match f.get("client_secret") {
            Some(s) if s == expected => Ok(()),
            _ => Err(7000215),
        },
        AppCredential::Certificate {
            x5t_s256,
            x5t,
            public,
        } => {
            if f.get("client_assertion_type").map(String::as_str)
                != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
            {
                return Err(700027);
            }
            let a = f.get("client_assertion").ok_or(700027u32)?;
            let header = jsonwebtoken::decode_header(a).map_err(|_| 700027u32)?;
            let thumb_ok = match header.alg {
                Algorithm::PS256 => header.x5t_s256.as_deref() == Some(x5t_s256.as_str()),
                Algorithm::RS256 => header.x5t.as_deref() == Some(x5t.as_str()),
                _ => false,
            };
            if !thumb_ok {
                return Err(700027);
            }
            let mut v = Validation::new(header.alg);
            v.set_audience(&[endpoint]);
            v.leeway = 300;
            let claims = jsonwebtoken::decode::<Value>(a, public, &v)
                .map_err(|_| 700027u32)?
                .claims;
            let app = f.get("client_id").map(String::as_str).unwrap_or("");
            if claims["iss"] != app || claims["sub"] != app || !claims["jti"].is_string() {
                return Err(700027);
            }
            Ok(())
        }
    }
}

/// `POST /dev/entra/{tenant}/oauth2/v2.0/token`.
pub async fn token(
    State(sim): State<Arc<Sim>>,
    Path(tenant): Path<String>,
    body: Bytes,
) -> Response {
    sim.entra.token_requests.fetch_add(1, Ordering::SeqCst);
    let f: BTreeMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let now = sim.now();
    let endpoint = format!("{}/{tenant}/oauth2/v2.0/token", authority(&sim));
    let app = sim
        .ctx
        .settings
        .entra
        .as_ref()
        .map(|e| e.client_id.clone())
        .unwrap_or_else(|| sim.values.entra_client_id.clone());
    if f.get("client_id") != Some(&app) {
        return aad_error(700016);
    }
    let fault = sim.entra.faults.take();
    match fault {
        Some(Fault::TooManyRequests) => {
            let mut r = (StatusCode::TOO_MANY_REQUESTS, Json(json!({"error": "temporarily_unavailable", "error_description": "AADSTS90033: throttled"}))).into_response();
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("7"));
            return r;
        }
        Some(Fault::ServerError) => {
            return (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({"error": "server_error", "error_description": "AADSTS50033: something went wrong"}))).into_response();
        }
        Some(Fault::Code(c)) => return aad_error(c),
        Some(Fault::BadIdToken) | None => {}
    }
    if let Err(code) = client_ok(&sim, &f, &endpoint) {
        return aad_error(code);
    }
    let realm = sim.values.realm.clone();
    let (user, id_nonce) = match f.get("grant_type").map(String::as_str) {
        Some("authorization_code") => {
            let mut codes = lock(&sim.entra.codes);
            let Some(c) = f.get("code").and_then(|k| codes.get_mut(k)) else {
                return aad_error(70008);
            };
            if c.used {
                return aad_error(54005);
            }
            c.used = true;
            if now - c.issued > Duration::minutes(10) {
                return aad_error(70008);
            }
            if f.get("redirect_uri") != Some(&c.redirect_uri) {
                return aad_error(50011);
            }
            let verifier = f.get("code_verifier").map(String::as_str).unwrap_or("");
            if pkce_challenge(verifier) != c.challenge {
                return aad_error(501481);
            }
            (c.user.clone(), Some(c.nonce.clone()))
        }
        Some("refresh_token") => {
            sim.entra.refreshes.fetch_add(1, Ordering::SeqCst);
            let mut rts = lock(&sim.entra.refresh_tokens);
            let Some(r) = f.get("refresh_token").and_then(|k| rts.get_mut(k)) else {
                return aad_error(70008);
            };
            if r.superseded {
                sim.entra.stale_refreshes.fetch_add(1, Ordering::SeqCst);
                return aad_error(70008);
            }
            if lock(&sim.entra.revoked)
                .get(&r.user)
                .is_some_and(|at| r.issued <= *at)
            {
                return aad_error(50173);
            }
            if now - r.issued > Duration::days(INACTIVITY_DAYS) {
                return aad_error(700082);
            }
            let scope = f.get("scope").map(String::as_str).unwrap_or("");
            if scope
                .split(' ')
                .filter(|s| s.starts_with("https://"))
                .count()
                != 1
            {
                return aad_error(70011);
            }
            r.superseded = true;
            (r.user.clone(), None)
        }
        _ => return aad_error(70003),
    };
    // Rotation: every redemption gives a new refresh token.
    let rt = random_token("sim-rt-");
    lock(&sim.entra.refresh_tokens).insert(
        rt.clone(),
        Refresh {
            user: user.clone(),
            issued: now,
            superseded: false,
        },
    );
    let mut answer = json!({
        "token_type": "Bearer",
        "scope": f.get("scope").cloned().unwrap_or_default(),
        "expires_in": 3599,
        "ext_expires_in": 3599,
        "access_token": random_token("sim-at-"),
        "refresh_token": rt,
    });
    if let Some(nonce) = id_nonce {
        let t = now.timestamp();
        let nonce = if fault == Some(Fault::BadIdToken) {
            format!("{nonce}-replayed")
        } else {
            nonce
        };
        let claims = json!({
            "aud": app, "iss": format!("{}/{realm}/v2.0", authority(&sim)), "tid": realm,
            "oid": oid_of(&user, &realm), "sub": format!("sub-{user}"), "nonce": nonce,
            "preferred_username": upn_of(&user), "name": display_name(&user),
            "iat": t, "nbf": t, "exp": t + 3600, "ver": "2.0",
        });
        let keys = lock(&sim.entra.keys);
        answer["id_token"] = json!(keys[0].sign(&claims));
    }
    Json(answer).into_response()
}

/// `GET /dev/entra/{tenant}/discovery/v2.0/keys`: the JWKS.
pub async fn keys(State(sim): State<Arc<Sim>>) -> Json<Value> {
    let keys = lock(&sim.entra.keys);
    Json(jwks(&keys.iter().collect::<Vec<_>>()))
}

/// `GET /dev/entra/{tenant}/v2.0/.well-known/openid-configuration`: the metadata document as
/// Entra publishes it (`spkeeper doctor` checks its `token_endpoint` is where spkeeper posts).
pub async fn openid_configuration(
    State(sim): State<Arc<Sim>>,
    Path(tenant): Path<String>,
) -> Response {
    if tenant.is_empty()
        || !tenant
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return StatusCode::NOT_FOUND.into_response();
    }
    let base = format!("{}/{tenant}", authority(&sim));
    // A multi-tenant document names no tenant in its issuer: Entra writes a placeholder.
    let issuer_tenant = if tenant.len() == 36 {
        tenant.as_str()
    } else {
        "{tenantid}"
    };
    Json(json!({
        "issuer": format!("{}/{issuer_tenant}/v2.0", authority(&sim)),
        "authorization_endpoint": format!("{base}/oauth2/v2.0/authorize"),
        "token_endpoint": format!("{base}/oauth2/v2.0/token"),
        "jwks_uri": format!("{base}/discovery/v2.0/keys"),
        "response_modes_supported": ["query", "fragment", "form_post"],
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
    }))
    .into_response()
}

/// `POST /dev/entra/rotate-keys`: a new signing key (published beside the old one).
pub async fn rotate_keys(State(sim): State<Arc<Sim>>) -> Response {
    let mut keys = lock(&sim.entra.keys);
    let kid = format!("dev-{}", keys.len() + 1);
    match RsaKey::generate(&kid) {
        Ok(k) => {
            keys.insert(0, k);
            keys.truncate(2);
            tracing::info!(%kid, "simulated Entra rotated its signing key");
            Json(json!({"kid": kid})).into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
    }
}

/// `POST /dev/entra/revoke` `user=megan`: revokes the user's sessions (AADSTS50173 next).
pub async fn revoke_sessions(State(sim): State<Arc<Sim>>, body: Bytes) -> Response {
    let f: BTreeMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let user = super::sim::clean_user(f.get("user").map(String::as_str));
    lock(&sim.entra.revoked).insert(user.clone(), sim.now());
    Json(json!({"revoked": user})).into_response()
}

impl EntraSim {
    /// The Entra failure that is on, if any (by its mode), and for how long.
    pub fn fault(&self) -> Option<(String, Times)> {
        self.faults.state().map(|(f, t)| (f.label(), t))
    }

    pub fn token_requests(&self) -> u64 {
        self.token_requests.load(Ordering::SeqCst)
    }
}

/// `POST /dev/entra/fault` `mode=700082|50173|…|429|500|id_token|off&count=N`: as for ACS, the
/// failure stays on until turned off (`mode=off`; `clear` too), or for the next `count` token
/// requests (absent, empty or `until_off`: until turned off).
pub async fn set_fault(State(sim): State<Arc<Sim>>, headers: HeaderMap, body: Bytes) -> Response {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let input: BTreeMap<String, Value> = if is_json {
        serde_json::from_slice(&body).unwrap_or_default()
    } else {
        url::form_urlencoded::parse(&body)
            .into_owned()
            .map(|(k, v)| (k, Value::String(v)))
            .collect()
    };
    let mode = match input.get("mode") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    };
    if matches!(mode.as_str(), "off" | "clear") {
        sim.entra.faults.turn_off();
    } else {
        match (Fault::parse(&mode), Times::parse(input.get("count"))) {
            (Some(f), Ok(t)) => sim.entra.faults.turn_on(f, t),
            (None, _) => {
                return bad_control(&format!(
                    "mode must be one of {FAULT_CODES:?}, 429, 500, id_token or off"
                ));
            }
            (_, Err(e)) => return bad_control(&e),
        }
    }
    let state = sim.entra.fault();
    tracing::info!(fault = %super::fault::describe(state.clone()), "simulated Entra failure switched");
    if is_json {
        Json(json!({"fault": to_json(state)})).into_response()
    } else {
        axum::response::Redirect::to("/dev/sharepoint").into_response()
    }
}

/// `GET /dev/entra/stats`: what the simulated Entra was asked.
pub async fn stats(State(sim): State<Arc<Sim>>) -> Json<Value> {
    let e = &sim.entra;
    Json(json!({
        "token_requests": e.token_requests.load(Ordering::SeqCst),
        "refreshes": e.refreshes.load(Ordering::SeqCst),
        // Redemptions of a refresh token that a newer one had replaced: a keeper that stores
        // every rotation makes none.
        "stale_refreshes": e.stale_refreshes.load(Ordering::SeqCst),
        "live_refresh_tokens": lock(&e.refresh_tokens).values().filter(|r| !r.superseded).count(),
        "fault": to_json(e.fault()),
        "kids": lock(&e.keys).iter().map(|k| k.kid.clone()).collect::<Vec<_>>(),
        "client_id": sim.ctx.settings.entra.as_ref().map(|x| x.client_id.clone()),
        "authority": authority(&sim),
        "tenant": sim.values.realm,
    }))
}
