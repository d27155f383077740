//! Entra ID delegated grants (ENTRA.md), pure: the authorize request with PKCE, the token
//! requests (code and refresh) with the client's credential, the answer, the classification of
//! failures by `error` and AADSTS code, the client assertion, and the ID token check. Beside
//! [`super::acs`]: the two kinds differ here and nowhere else in the rules.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Duration, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::context_token::is_guid;

/// Entra refresh tokens die after this many days without a redemption (sliding; ENTRA.md §3).
pub const INACTIVITY_DAYS: i64 = 90;
/// Always asked at sign-in.
pub const OIDC_SCOPES: &str = "openid profile offline_access";
/// Clock skew allowed on ID tokens.
pub const ID_TOKEN_SKEW_SECONDS: i64 = 300;
/// The longest access-token lifetime believed (CAE-capable clients get up to 28 hours).
pub const MAX_ACCESS_TOKEN_LIFETIME: Duration = Duration::hours(30);
/// How long a client assertion is valid (ENTRA.md §4: 5–10 minutes).
pub const ASSERTION_SECONDS: i64 = 600;
/// Microsoft: the first retry of a 5xx no sooner than 5 s.
pub const MIN_RETRY_SECONDS: u64 = 5;
/// AADSTS50196 ("loop detected": we asked too often): back off for minutes.
pub const LOOP_BACKOFF_SECONDS: u64 = 600;

/// `https://{host}/.default`: every delegated SharePoint permission consented for the app.
pub fn default_scope(host: &str) -> String {
    format!("https://{host}/.default")
}

/// base64url(SHA-256(verifier)): the PKCE S256 challenge.
pub fn pkce_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// What `/authorize` is asked.
#[derive(Debug, Clone)]
pub struct AuthorizeRequest<'a> {
    pub client_id: &'a str,
    pub redirect_uri: &'a str,
    /// The resource scopes; the OIDC scopes are added.
    pub scopes: &'a [String],
    pub state: &'a str,
    pub nonce: &'a str,
    pub code_challenge: &'a str,
    pub login_hint: Option<&'a str>,
    pub domain_hint: Option<&'a str>,
}

/// `{authorize endpoint}?client_id=…&response_type=code&response_mode=form_post&…`.
pub fn authorize_url(endpoint: &str, r: &AuthorizeRequest<'_>) -> String {
    let scope = std::iter::once(OIDC_SCOPES.to_string())
        .chain(r.scopes.iter().cloned())
        .collect::<Vec<_>>()
        .join(" ");
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    q.append_pair("client_id", r.client_id)
        .append_pair("response_type", "code")
        .append_pair("response_mode", "form_post")
        .append_pair("redirect_uri", r.redirect_uri)
        .append_pair("scope", &scope)
        .append_pair("state", r.state)
        .append_pair("nonce", r.nonce)
        .append_pair("code_challenge", r.code_challenge)
        .append_pair("code_challenge_method", "S256");
    if let Some(h) = r.login_hint {
        q.append_pair("login_hint", h);
    }
    if let Some(h) = r.domain_hint {
        q.append_pair("domain_hint", h);
    }
    format!("{endpoint}?{}", q.finish())
}

/// How spkeeper authenticates to the token endpoint, as form fields.
pub enum ClientAuth<'a> {
    Secret(&'a SecretString),
    /// A signed client assertion (see [`client_assertion`]).
    Assertion(SecretString),
}

/// A token request body. It holds a credential and a code or refresh token: it never prints.
pub struct TokenForm(SecretString);

impl fmt::Debug for TokenForm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenForm([redacted])")
    }
}

impl TokenForm {
    fn build(client_id: &str, auth: &ClientAuth<'_>, fields: &[(&str, &str)]) -> Self {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        q.append_pair("client_id", client_id);
        for (k, v) in fields {
            q.append_pair(k, v);
        }
        match auth {
            ClientAuth::Secret(s) => {
                q.append_pair("client_secret", s.expose_secret());
            }
            ClientAuth::Assertion(a) => {
                q.append_pair(
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                )
                .append_pair("client_assertion", a.expose_secret());
            }
        }
        TokenForm(SecretString::from(q.finish()))
    }

    /// Redeems a sign-in's authorization code with its PKCE verifier.
    pub fn authorization_code(
        client_id: &str,
        auth: &ClientAuth<'_>,
        code: &SecretString,
        redirect_uri: &str,
        verifier: &SecretString,
    ) -> Self {
        Self::build(
            client_id,
            auth,
            &[
                ("grant_type", "authorization_code"),
                ("code", code.expose_secret()),
                ("redirect_uri", redirect_uri),
                ("code_verifier", verifier.expose_secret()),
            ],
        )
    }

    /// Redeems a refresh token for one resource's scope.
    pub fn refresh_token(
        client_id: &str,
        auth: &ClientAuth<'_>,
        refresh_token: &SecretString,
        scope: &str,
    ) -> Self {
        Self::build(
            client_id,
            auth,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token.expose_secret()),
                ("scope", scope),
            ],
        )
    }

    pub fn body(&self) -> &str {
        self.0.expose_secret()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the client assertion could not be signed")]
pub struct AssertionError;

/// The client assertion (ENTRA.md §4): `aud` = the token endpoint, `iss` = `sub` = client id,
/// a fresh `jti`, `nbf` = now, `exp` = now + 10 minutes; `PS256` with `x5t#S256` (or `RS256`
/// with `x5t`). Signed with `jsonwebtoken`.
pub fn client_assertion(
    key: &EncodingKey,
    thumbprint: Thumbprint<'_>,
    client_id: &str,
    token_endpoint: &str,
    jti: &str,
    now: DateTime<Utc>,
) -> Result<SecretString, AssertionError> {
    let mut header = match thumbprint {
        Thumbprint::S256(t) => {
            let mut h = Header::new(Algorithm::PS256);
            h.x5t_s256 = Some(t.to_string());
            h
        }
        Thumbprint::Sha1(t) => {
            let mut h = Header::new(Algorithm::RS256);
            h.x5t = Some(t.to_string());
            h
        }
    };
    header.typ = Some("JWT".into());
    let now_s = now.timestamp();
    let claims = serde_json::json!({
        "aud": token_endpoint,
        "iss": client_id,
        "sub": client_id,
        "jti": jti,
        "nbf": now_s,
        "iat": now_s,
        "exp": now_s.saturating_add(ASSERTION_SECONDS),
    });
    jsonwebtoken::encode(&header, &claims, key)
        .map(SecretString::from)
        .map_err(|_| AssertionError)
}

/// Which thumbprint the assertion names, and so which algorithm signs it.
#[derive(Debug, Clone, Copy)]
pub enum Thumbprint<'a> {
    /// `x5t#S256`, with PS256.
    S256(&'a str),
    /// `x5t` (SHA-1), with RS256.
    Sha1(&'a str),
}

/// What a successful token request gives.
pub struct EntraTokens {
    pub access_token: SecretString,
    /// A new refresh token (every redemption rotates it); `None`: keep the old one.
    pub refresh_token: Option<SecretString>,
    pub id_token: Option<String>,
    pub expires_at: DateTime<Utc>,
    pub scope: String,
}

impl fmt::Debug for EntraTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EntraTokens")
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "[redacted]"),
            )
            .field("expires_at", &self.expires_at)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// Why the user must sign in again (the `reason` of a `revoked` notice and of `409`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    Inactive,
    Revoked,
    SignInFrequency,
    MfaRequired,
    Consent,
    UserDisabled,
    Blocked,
    Other,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Inactive => "inactive",
            Reason::Revoked => "revoked",
            Reason::SignInFrequency => "sign_in_frequency",
            Reason::MfaRequired => "mfa_required",
            Reason::Consent => "consent",
            Reason::UserDisabled => "user_disabled",
            Reason::Blocked => "blocked",
            Reason::Other => "other",
        }
    }

    /// The reason an AADSTS code gives (ENTRA.md §5), `Other` for any it does not know.
    pub fn of_code(code: Option<u32>) -> Reason {
        match code {
            Some(700082) => Reason::Inactive,
            Some(50173 | 70008 | 70000) => Reason::Revoked,
            Some(70043) => Reason::SignInFrequency,
            Some(50076 | 50079 | 50078) => Reason::MfaRequired,
            Some(65001 | 65004) => Reason::Consent,
            Some(50057) => Reason::UserDisabled,
            Some(53003 | 53000 | 50105) => Reason::Blocked,
            _ => Reason::Other,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a failed token request is handled (ENTRA.md §5: the class from `error`, the reason
/// from the AADSTS code).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntraFailure {
    /// The user must sign in again; the grant is dead until then.
    #[error("Entra refused the grant ({error}, {reason})")]
    Relaunch {
        reason: Reason,
        code: Option<u32>,
        error: String,
    },
    /// Our app is misconfigured: no user can fix it.
    #[error("Entra refused the app's request ({error}{})", .code.map(|c| format!(", AADSTS{c}")).unwrap_or_default())]
    Operator { code: Option<u32>, error: String },
    /// Retry later; `retry_after` seconds at the least.
    #[error("Entra is unavailable ({why})")]
    Transient { retry_after: u64, why: String },
    /// An answer that is none of the above.
    #[error("Entra answered unexpectedly ({0})")]
    Unexpected(String),
}

impl EntraFailure {
    pub fn is_transient(&self) -> bool {
        matches!(self, EntraFailure::Transient { .. })
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    error: Option<String>,
    #[serde(default)]
    error_codes: Vec<Value>,
}

/// Classifies a non-2xx answer. `retry_after` is the `Retry-After` header, if any.
pub fn classify(status: u16, retry_after: Option<&str>, body: &[u8]) -> EntraFailure {
    let parsed: Option<ErrorBody> = serde_json::from_slice(body).ok();
    let error = parsed
        .as_ref()
        .and_then(|b| b.error.clone())
        .unwrap_or_default();
    let code = parsed.as_ref().and_then(|b| {
        b.error_codes
            .iter()
            .find_map(|c| c.as_u64().and_then(|c| u32::try_from(c).ok()))
    });
    let retry_after = retry_after
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| s.min(24 * 3600));
    if code == Some(50196) {
        return EntraFailure::Transient {
            retry_after: retry_after.unwrap_or(0).max(LOOP_BACKOFF_SECONDS),
            why: "AADSTS50196: too many requests for this grant (loop detected)".into(),
        };
    }
    match error.as_str() {
        "invalid_grant" | "interaction_required" | "consent_required" => {
            return EntraFailure::Relaunch {
                reason: Reason::of_code(code),
                code,
                error,
            };
        }
        "invalid_client"
        | "unauthorized_client"
        | "invalid_scope"
        | "invalid_resource"
        | "invalid_request"
        | "unsupported_grant_type" => {
            return EntraFailure::Operator { code, error };
        }
        "temporarily_unavailable" | "server_error" => {
            return EntraFailure::Transient {
                retry_after: retry_after
                    .unwrap_or(MIN_RETRY_SECONDS)
                    .max(MIN_RETRY_SECONDS),
                why: format!("HTTP {status} {error}"),
            };
        }
        _ => {}
    }
    match status {
        408 | 429 | 500..=599 => EntraFailure::Transient {
            retry_after: retry_after
                .unwrap_or(MIN_RETRY_SECONDS)
                .max(MIN_RETRY_SECONDS),
            why: format!("HTTP {status}"),
        },
        _ => EntraFailure::Unexpected(format!("HTTP {status} {error}")),
    }
}

#[derive(Deserialize)]
struct TokenBody {
    token_type: Option<String>,
    access_token: Option<String>,
    refresh_token: Option<String>,
    id_token: Option<String>,
    expires_in: Option<Value>,
    scope: Option<String>,
}

/// Parses a 2xx answer of the token endpoint.
pub fn parse_tokens(body: &[u8], now: DateTime<Utc>) -> Result<EntraTokens, EntraFailure> {
    let b: TokenBody = serde_json::from_slice(body)
        .map_err(|_| EntraFailure::Unexpected("success body is not a token response".into()))?;
    if let Some(tt) = &b.token_type
        && !tt.eq_ignore_ascii_case("bearer")
    {
        return Err(EntraFailure::Unexpected("token_type is not Bearer".into()));
    }
    let access_token = b
        .access_token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| EntraFailure::Unexpected("no access_token".into()))?;
    // `expires_in` is a number (Entra) or a string (older endpoints): seconds.
    let secs = match &b.expires_in {
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(s)) => s.trim().parse::<i64>().ok(),
        _ => None,
    }
    .ok_or_else(|| EntraFailure::Unexpected("no expires_in".into()))?;
    let expires_at = Duration::try_seconds(secs)
        .filter(|d| *d > Duration::zero() && *d <= MAX_ACCESS_TOKEN_LIFETIME)
        .and_then(|d| now.checked_add_signed(d))
        .ok_or_else(|| EntraFailure::Unexpected("the token's lifetime is out of range".into()))?;
    Ok(EntraTokens {
        access_token: SecretString::from(access_token),
        refresh_token: b
            .refresh_token
            .filter(|t| !t.is_empty())
            .map(SecretString::from),
        id_token: b.id_token.filter(|t| !t.is_empty()),
        expires_at,
        scope: b.scope.unwrap_or_default(),
    })
}

/// The keys Entra signs ID tokens with (the JWKS document), by `kid`.
#[derive(Clone, Default)]
pub struct Jwks {
    keys: BTreeMap<String, DecodingKey>,
}

impl fmt::Debug for Jwks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.keys.keys()).finish()
    }
}

#[derive(Deserialize)]
struct JwkSet {
    keys: Vec<Jwk>,
}

#[derive(Deserialize)]
struct Jwk {
    kid: Option<String>,
    kty: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    n: Option<String>,
    e: Option<String>,
}

impl Jwks {
    /// The RSA signing keys of a JWKS document; keys of other types or uses are skipped.
    pub fn parse(body: &[u8]) -> Result<Jwks, IdTokenError> {
        let set: JwkSet = serde_json::from_slice(body)
            .map_err(|_| IdTokenError::Invalid("the JWKS is not a key set"))?;
        let mut keys = BTreeMap::new();
        for k in set.keys {
            let (Some(kid), Some("RSA"), Some(n), Some(e)) =
                (k.kid, k.kty.as_deref(), k.n.as_deref(), k.e.as_deref())
            else {
                continue;
            };
            if k.use_.as_deref().is_some_and(|u| u != "sig") {
                continue;
            }
            if let Ok(key) = DecodingKey::from_rsa_components(n, e) {
                keys.insert(kid, key);
            }
        }
        Ok(Jwks { keys })
    }

    pub fn knows(&self, kid: &str) -> bool {
        self.keys.contains_key(kid)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// Who signed in, from a valid ID token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdClaims {
    /// The tenant id (lower case).
    pub tid: String,
    /// The user's object id in the tenant (lower case): with `tid`, who the user is.
    pub oid: String,
    /// For display and hints only: never decides who is who.
    pub preferred_username: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdTokenError {
    /// Signed with a key the JWKS at hand does not have: fetch the JWKS again.
    #[error("the ID token is signed with an unknown key {0:?}")]
    UnknownKey(String),
    #[error("the ID token is not valid: {0}")]
    Invalid(&'static str),
}

/// What an ID token must say.
pub struct IdExpectations<'a> {
    pub client_id: &'a str,
    /// The configured tenant (a GUID) or `organizations`.
    pub tenant: &'a str,
    /// `{authority}` without a trailing slash: `iss` must be `{authority}/{tid}/v2.0`.
    pub authority: &'a str,
    pub nonce: &'a str,
    pub now: DateTime<Utc>,
}

#[derive(Deserialize)]
struct RawId {
    aud: Option<Value>,
    iss: Option<String>,
    tid: Option<String>,
    oid: Option<String>,
    nonce: Option<String>,
    exp: Option<i64>,
    nbf: Option<i64>,
    iat: Option<i64>,
    preferred_username: Option<String>,
    name: Option<String>,
}

/// Validates an ID token (ENTRA.md §6): RS256 with the JWKS key its `kid` names, `aud` = our
/// client id, `iss` = `{authority}/{tid}/v2.0` with a GUID `tid` (the configured tenant, if
/// one is), `exp`/`nbf`/`iat` within skew, and `nonce` = the one sent.
pub fn validate_id_token(
    token: &str,
    jwks: &Jwks,
    x: &IdExpectations<'_>,
) -> Result<IdClaims, IdTokenError> {
    let header = jsonwebtoken::decode_header(token.trim())
        .map_err(|_| IdTokenError::Invalid("not a JWT"))?;
    if header.alg != Algorithm::RS256 {
        return Err(IdTokenError::Invalid("not RS256"));
    }
    let kid = header.kid.ok_or(IdTokenError::Invalid("no kid"))?;
    let key = jwks
        .keys
        .get(&kid)
        .ok_or_else(|| IdTokenError::UnknownKey(kid.clone()))?;
    let mut v = Validation::new(Algorithm::RS256);
    // Times, audience and issuer are checked below against `now` and the token's own `tid`.
    v.validate_exp = false;
    v.validate_nbf = false;
    v.validate_aud = false;
    v.required_spec_claims = ["exp", "nbf", "aud", "iss"]
        .into_iter()
        .map(String::from)
        .collect();
    let raw = jsonwebtoken::decode::<RawId>(token.trim(), key, &v)
        .map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::MissingRequiredClaim(_) => {
                IdTokenError::Invalid("a required claim (exp, nbf, aud, iss) is missing")
            }
            _ => IdTokenError::Invalid("bad signature or claims"),
        })?
        .claims;

    let aud_ok = match &raw.aud {
        Some(Value::String(a)) => a.eq_ignore_ascii_case(x.client_id),
        Some(Value::Array(a)) => {
            a.len() == 1
                && a[0]
                    .as_str()
                    .is_some_and(|s| s.eq_ignore_ascii_case(x.client_id))
        }
        _ => false,
    };
    if !aud_ok {
        return Err(IdTokenError::Invalid("aud is not this app"));
    }
    let tid = raw
        .tid
        .map(|t| t.to_ascii_lowercase())
        .filter(|t| is_guid(t))
        .ok_or(IdTokenError::Invalid("tid is not a tenant id"))?;
    if x.tenant != "organizations" && !x.tenant.eq_ignore_ascii_case(&tid) {
        return Err(IdTokenError::Invalid("tid is not the configured tenant"));
    }
    let expected_iss = format!("{}/{tid}/v2.0", x.authority);
    if !raw
        .iss
        .as_deref()
        .is_some_and(|i| i.eq_ignore_ascii_case(&expected_iss))
    {
        return Err(IdTokenError::Invalid("iss is not the tenant's issuer"));
    }
    let skew = ID_TOKEN_SKEW_SECONDS;
    let now = x.now.timestamp();
    let exp = raw.exp.ok_or(IdTokenError::Invalid("no exp"))?;
    if exp.saturating_add(skew) < now {
        return Err(IdTokenError::Invalid("expired"));
    }
    for t in [raw.nbf, raw.iat].into_iter().flatten() {
        if t.saturating_sub(skew) > now {
            return Err(IdTokenError::Invalid("not yet valid"));
        }
    }
    let nonce_ok = raw.nonce.as_deref().is_some_and(|n| {
        use subtle::ConstantTimeEq;
        bool::from(n.as_bytes().ct_eq(x.nonce.as_bytes()))
    });
    if !nonce_ok {
        return Err(IdTokenError::Invalid("nonce is not the one sent"));
    }
    let oid = raw
        .oid
        .map(|o| o.to_ascii_lowercase())
        .filter(|o| is_guid(o))
        .ok_or(IdTokenError::Invalid("oid is not an object id"))?;
    Ok(IdClaims {
        tid,
        oid,
        preferred_username: raw.preferred_username.unwrap_or_default(),
        name: raw.name.unwrap_or_default(),
    })
}

/// The UPN in an ACS login name (`i:0#.f|membership|megan@contoso.com` → the part after the
/// last `|`), lower case.
pub fn login_name_upn(login_name: &str) -> String {
    login_name
        .rsplit('|')
        .next()
        .unwrap_or(login_name)
        .trim()
        .to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::rsa::{RsaKey, jwks};
    use chrono::TimeZone;
    use serde_json::json;

    const CLIENT: &str = "b3f1c0de-0000-4000-8000-000000000001";
    const TID: &str = "040f2415-e6e3-4480-96ce-26ef73275f73";
    const OID: &str = "11111111-2222-3333-4444-555555555555";
    const AUTHORITY: &str = "https://login.microsoftonline.com";

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 1, 12, 0, 0).unwrap()
    }

    fn body(error: &str, code: u32) -> Vec<u8> {
        json!({"error": error, "error_description": format!("AADSTS{code}: text that changes"),
               "error_codes": [code], "trace_id": "t", "correlation_id": "c"})
        .to_string()
        .into_bytes()
    }

    /// ENTRA.md §5, row by row.
    #[test]
    fn every_documented_error_is_classified_with_its_reason() {
        use Reason::*;
        for (error, code, reason) in [
            ("invalid_grant", 700082, Inactive),
            ("invalid_grant", 70008, Revoked),
            ("invalid_grant", 70000, Revoked),
            ("invalid_grant", 50173, Revoked),
            ("interaction_required", 70043, SignInFrequency),
            ("interaction_required", 50076, MfaRequired),
            ("interaction_required", 50079, MfaRequired),
            ("interaction_required", 50078, MfaRequired),
            ("consent_required", 65001, Consent),
            ("invalid_grant", 65004, Consent),
            ("invalid_grant", 50057, UserDisabled),
            ("interaction_required", 53003, Blocked),
            ("invalid_grant", 53000, Blocked),
            ("invalid_grant", 50105, Blocked),
            ("invalid_grant", 54005, Other),
            ("invalid_grant", 999999, Other),
        ] {
            assert_eq!(
                classify(400, None, &body(error, code)),
                EntraFailure::Relaunch {
                    reason,
                    code: Some(code),
                    error: error.into()
                },
                "{error} {code}"
            );
        }
        for (error, code) in [
            ("invalid_client", 7000215),
            ("invalid_client", 7000222),
            ("unauthorized_client", 700016),
            ("invalid_client", 700027),
            ("invalid_client", 50012),
            ("invalid_request", 50011),
            ("invalid_scope", 65005),
            ("invalid_resource", 650057),
            ("unsupported_grant_type", 1),
        ] {
            assert_eq!(
                classify(401, None, &body(error, code)),
                EntraFailure::Operator {
                    code: Some(code),
                    error: error.into()
                },
                "{error} {code}"
            );
        }
        for (status, error, code) in [
            (503, "temporarily_unavailable", 90033),
            (500, "server_error", 50033),
            (500, "server_error", 50087),
            (503, "temporarily_unavailable", 90006),
            (500, "server_error", 90024),
            (500, "server_error", 90090),
            (500, "server_error", 40010),
        ] {
            assert!(
                classify(status, None, &body(error, code)).is_transient(),
                "{code}"
            );
        }
    }

    #[test]
    fn the_class_comes_from_error_not_from_the_code() {
        // A relaunch code under an operator error stays an operator problem, and vice versa.
        assert!(matches!(
            classify(400, None, &body("invalid_client", 700082)),
            EntraFailure::Operator { .. }
        ));
        assert!(matches!(
            classify(400, None, &body("invalid_grant", 7000222)),
            EntraFailure::Relaunch {
                reason: Reason::Other,
                ..
            }
        ));
    }

    #[test]
    fn throttling_honours_retry_after_never_under_five_seconds() {
        assert_eq!(
            classify(429, Some("120"), b"{}"),
            EntraFailure::Transient {
                retry_after: 120,
                why: "HTTP 429".into()
            }
        );
        for (status, ra) in [(429, None), (500, Some("0")), (503, Some("junk"))] {
            match classify(status, ra, b"") {
                EntraFailure::Transient { retry_after, .. } => {
                    assert_eq!(retry_after, MIN_RETRY_SECONDS, "{status} {ra:?}")
                }
                other => panic!("{other:?}"),
            }
        }
        // absurd Retry-After values are capped at a day
        match classify(429, Some("99999999999999999999"), b"") {
            EntraFailure::Transient { retry_after, .. } => {
                assert_eq!(retry_after, MIN_RETRY_SECONDS)
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn loop_detected_backs_off_for_minutes() {
        match classify(400, None, &body("invalid_request", 50196)) {
            EntraFailure::Transient { retry_after, .. } => {
                assert!(retry_after >= 300, "{retry_after}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn other_answers_are_unexpected() {
        assert!(matches!(
            classify(404, None, b"<html>"),
            EntraFailure::Unexpected(_)
        ));
    }

    #[test]
    fn a_rotation_answer_gives_the_new_refresh_token() {
        let t = parse_tokens(
            br#"{"token_type":"Bearer","access_token":"at","refresh_token":"rt2","id_token":"x.y.z","expires_in":3599,"scope":"https://c.sharepoint.com/AllSites.Read"}"#,
            now(),
        )
        .unwrap();
        assert_eq!(t.refresh_token.unwrap().expose_secret(), "rt2");
        assert_eq!(t.expires_at, now() + Duration::seconds(3599));
        assert!(!format!("{:?}", parse_tokens(br#"{"access_token":"secret-at","refresh_token":"secret-rt","expires_in":"60"}"#, now()).unwrap()).contains("secret"));
        // no refresh token: keep the old one
        let t = parse_tokens(br#"{"access_token":"at","expires_in":"3600"}"#, now()).unwrap();
        assert!(t.refresh_token.is_none());
    }

    #[test]
    fn absurd_or_missing_lifetimes_are_refused_without_panicking() {
        for b in [
            r#"{"access_token":"a","expires_in":0}"#,
            r#"{"access_token":"a","expires_in":-5}"#,
            r#"{"access_token":"a","expires_in":9223372036854775807}"#,
            r#"{"access_token":"a","expires_in":1e300}"#,
            r#"{"access_token":"a","expires_in":"forever"}"#,
            r#"{"access_token":"a"}"#,
            r#"{"expires_in":60}"#,
            r#"{"access_token":"a","expires_in":60,"token_type":"pop"}"#,
        ] {
            assert!(
                matches!(
                    parse_tokens(b.as_bytes(), now()),
                    Err(EntraFailure::Unexpected(_))
                ),
                "{b}"
            );
        }
        assert!(
            parse_tokens(
                br#"{"access_token":"a","expires_in":60}"#,
                DateTime::<Utc>::MAX_UTC
            )
            .is_err()
        );
    }

    #[test]
    fn authorize_asks_for_a_code_by_form_post_with_pkce_and_hints() {
        let scopes = vec!["https://contoso.sharepoint.com/.default".to_string()];
        let url = authorize_url(
            "https://login.microsoftonline.com/organizations/oauth2/v2.0/authorize",
            &AuthorizeRequest {
                client_id: CLIENT,
                redirect_uri: "https://addin.example.com/callback",
                scopes: &scopes,
                state: "st",
                nonce: "no",
                code_challenge: &pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
                login_hint: Some("megan@contoso.com"),
                domain_hint: Some(TID),
            },
        );
        let u = url::Url::parse(&url).unwrap();
        let q: BTreeMap<String, String> = u.query_pairs().into_owned().collect();
        assert_eq!(q["response_type"], "code");
        assert_eq!(q["response_mode"], "form_post");
        assert_eq!(q["code_challenge_method"], "S256");
        // RFC 7636 appendix B's example
        assert_eq!(
            q["code_challenge"],
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        assert_eq!(
            q["scope"],
            "openid profile offline_access https://contoso.sharepoint.com/.default"
        );
        assert_eq!(q["login_hint"], "megan@contoso.com");
        assert_eq!(q["domain_hint"], TID);
    }

    #[test]
    fn token_forms_carry_the_credential_and_never_print() {
        let secret = SecretString::from("entra-secret".to_string());
        let rt = SecretString::from("old-rt".to_string());
        let f = TokenForm::refresh_token(CLIENT, &ClientAuth::Secret(&secret), &rt, "s");
        let pairs: BTreeMap<String, String> = url::form_urlencoded::parse(f.body().as_bytes())
            .into_owned()
            .collect();
        assert_eq!(pairs["grant_type"], "refresh_token");
        assert_eq!(pairs["client_secret"], "entra-secret");
        assert_eq!(pairs["scope"], "s");
        assert!(!format!("{f:?}").contains("entra-secret"));
        let f = TokenForm::authorization_code(
            CLIENT,
            &ClientAuth::Assertion(SecretString::from("a.b.c".to_string())),
            &SecretString::from("code".to_string()),
            "https://addin.example.com/callback",
            &SecretString::from("verifier".to_string()),
        );
        let pairs: BTreeMap<String, String> = url::form_urlencoded::parse(f.body().as_bytes())
            .into_owned()
            .collect();
        assert_eq!(pairs["client_assertion"], "a.b.c");
        assert_eq!(pairs["code_verifier"], "verifier");
        assert!(!pairs.contains_key("client_secret"));
    }

    #[test]
    fn a_client_assertion_is_ps256_with_x5t_s256_by_default_and_rs256_with_x5t_on_request() {
        let key = RsaKey::generate("app").unwrap();
        let endpoint = "https://login.microsoftonline.com/organizations/oauth2/v2.0/token";
        for (thumb, alg, field) in [
            (Thumbprint::S256("s256-thumb"), Algorithm::PS256, "x5t#S256"),
            (Thumbprint::Sha1("sha1-thumb"), Algorithm::RS256, "x5t"),
        ] {
            let a = client_assertion(&key.encoding_key(), thumb, CLIENT, endpoint, "jti-1", now())
                .unwrap();
            let header: Value = serde_json::from_slice(
                &URL_SAFE_NO_PAD
                    .decode(a.expose_secret().split('.').next().unwrap())
                    .unwrap(),
            )
            .unwrap();
            assert_eq!(header["alg"], format!("{alg:?}"));
            assert!(header[field].is_string(), "{header}");
            let mut v = Validation::new(alg);
            v.set_audience(&[endpoint]);
            v.validate_exp = false;
            let c =
                jsonwebtoken::decode::<Value>(a.expose_secret(), &key.decoding_key().unwrap(), &v)
                    .unwrap()
                    .claims;
            assert_eq!(
                (c["iss"].as_str(), c["sub"].as_str()),
                (Some(CLIENT), Some(CLIENT))
            );
            assert_eq!(c["jti"], "jti-1");
            assert_eq!(
                c["exp"].as_i64().unwrap() - c["nbf"].as_i64().unwrap(),
                ASSERTION_SECONDS
            );
        }
    }

    fn id_claims() -> Value {
        json!({"aud": CLIENT, "iss": format!("{AUTHORITY}/{TID}/v2.0"), "tid": TID, "oid": OID,
               "nonce": "n-1", "exp": now().timestamp() + 3600, "nbf": now().timestamp() - 10,
               "iat": now().timestamp() - 10, "preferred_username": "megan@contoso.com",
               "name": "Megan Bowen"})
    }

    fn expect(tenant: &str) -> IdExpectations<'_> {
        IdExpectations {
            client_id: CLIENT,
            tenant,
            authority: AUTHORITY,
            nonce: "n-1",
            now: now(),
        }
    }

    #[test]
    fn a_valid_id_token_names_the_user_by_tid_and_oid() {
        let k = RsaKey::generate("k1").unwrap();
        let keys = Jwks::parse(jwks(&[&k]).to_string().as_bytes()).unwrap();
        let c = validate_id_token(&k.sign(&id_claims()), &keys, &expect("organizations")).unwrap();
        assert_eq!((c.tid.as_str(), c.oid.as_str()), (TID, OID));
        assert_eq!(c.preferred_username, "megan@contoso.com");
        validate_id_token(&k.sign(&id_claims()), &keys, &expect(TID)).unwrap();
    }

    #[test]
    fn an_unknown_kid_asks_for_the_jwks_again() {
        let k1 = RsaKey::generate("k1").unwrap();
        let k2 = RsaKey::generate("k2").unwrap();
        let keys = Jwks::parse(jwks(&[&k1]).to_string().as_bytes()).unwrap();
        assert_eq!(
            validate_id_token(&k2.sign(&id_claims()), &keys, &expect("organizations")),
            Err(IdTokenError::UnknownKey("k2".into()))
        );
    }

    #[test]
    fn every_broken_id_token_rule_is_refused() {
        let k = RsaKey::generate("k1").unwrap();
        let keys = Jwks::parse(jwks(&[&k]).to_string().as_bytes()).unwrap();
        let other = RsaKey::generate("k1").unwrap();
        let n = now().timestamp();
        let cases: Vec<(&str, String)> = vec![
            (
                "another app",
                k.sign(&{
                    let mut c = id_claims();
                    c["aud"] = json!("c0ffee00-0000-4000-8000-000000000000");
                    c
                }),
            ),
            (
                "no aud",
                k.sign(&{
                    let mut c = id_claims();
                    c.as_object_mut().unwrap().remove("aud");
                    c
                }),
            ),
            (
                "another issuer",
                k.sign(&{
                    let mut c = id_claims();
                    c["iss"] = json!("https://evil.example.com/x/v2.0");
                    c
                }),
            ),
            (
                "issuer of another tenant",
                k.sign(&{
                    let mut c = id_claims();
                    c["iss"] = json!(format!(
                        "{AUTHORITY}/11111111-2222-3333-4444-555555555555/v2.0"
                    ));
                    c
                }),
            ),
            (
                "tid not a guid",
                k.sign(&{
                    let mut c = id_claims();
                    c["tid"] = json!("common");
                    c["iss"] = json!(format!("{AUTHORITY}/common/v2.0"));
                    c
                }),
            ),
            (
                "expired",
                k.sign(&{
                    let mut c = id_claims();
                    c["exp"] = json!(n - 3600);
                    c
                }),
            ),
            (
                "not yet",
                k.sign(&{
                    let mut c = id_claims();
                    c["nbf"] = json!(n + 3600);
                    c
                }),
            ),
            (
                "no nbf",
                k.sign(&{
                    let mut c = id_claims();
                    c.as_object_mut().unwrap().remove("nbf");
                    c
                }),
            ),
            (
                "replayed nonce",
                k.sign(&{
                    let mut c = id_claims();
                    c["nonce"] = json!("n-0");
                    c
                }),
            ),
            (
                "no nonce",
                k.sign(&{
                    let mut c = id_claims();
                    c.as_object_mut().unwrap().remove("nonce");
                    c
                }),
            ),
            (
                "no oid",
                k.sign(&{
                    let mut c = id_claims();
                    c.as_object_mut().unwrap().remove("oid");
                    c
                }),
            ),
            ("forged key, same kid", other.sign(&id_claims())),
            (
                "alg none",
                format!(
                    "{}.{}.",
                    URL_SAFE_NO_PAD.encode(r#"{"alg":"none","kid":"k1"}"#),
                    URL_SAFE_NO_PAD.encode(id_claims().to_string())
                ),
            ),
            ("garbage", "not.a.jwt".into()),
        ];
        for (what, token) in cases {
            assert!(
                matches!(
                    validate_id_token(&token, &keys, &expect("organizations")),
                    Err(IdTokenError::Invalid(_))
                ),
                "{what}"
            );
        }
        // a configured tenant refuses the others
        let mut c = id_claims();
        let t2 = "11111111-2222-3333-4444-555555555555";
        c["tid"] = json!(t2);
        c["iss"] = json!(format!("{AUTHORITY}/{t2}/v2.0"));
        assert!(validate_id_token(&k.sign(&c), &keys, &expect(TID)).is_err());
        assert!(validate_id_token(&k.sign(&c), &keys, &expect("organizations")).is_ok());
    }

    #[test]
    fn a_login_names_upn_is_its_last_part() {
        assert_eq!(
            login_name_upn("i:0#.f|membership|Megan@Contoso.com"),
            "megan@contoso.com"
        );
        assert_eq!(login_name_upn("megan@contoso.com"), "megan@contoso.com");
    }
}
