//! Validation of SharePoint context tokens (PROTOCOL.md §2), all of it:
//! HS256 only; key from the client secret (base64-decoded when it is strict base64, else its
//! UTF-8 bytes); primary then secondary secret; `nbf`/`exp` as numbers or strings with 5 minutes
//! of skew; `aud`, `iss`, `exp`, `nbf` required; audience `{client_id}/{public host}@{realm}`
//! compared case-insensitively; issuer and `appctxsender` principals with one realm; `appctx`
//! parsed from its string; `refreshtoken` and `CacheKey` present; STS host allowlisted.

use std::collections::HashSet;
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chrono::{DateTime, Duration, Utc};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::Value;
use url::Url;

use super::hosts::HostAllowlist;

/// The ACS principal: `iss` = `{ACS_PRINCIPAL}@{realm}`.
pub const ACS_PRINCIPAL: &str = "00000001-0000-0000-c000-000000000000";
/// SharePoint's principal: `appctxsender` = `{SHAREPOINT_PRINCIPAL}@{realm}`.
pub const SHAREPOINT_PRINCIPAL: &str = "00000003-0000-0ff1-ce00-000000000000";
/// Clock skew allowed on `nbf` and `exp` (the .NET default).
pub const CLOCK_SKEW_SECONDS: i64 = 300;

/// Why a context token was refused. Each maps to one contract error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the context token is malformed: {0}")]
    Malformed(&'static str),
    #[error("the context token is signed with an algorithm other than HS256")]
    UnsupportedAlgorithm,
    #[error("the context token's signature does not match the client secret")]
    InvalidSignature,
    #[error("the context token has expired")]
    Expired,
    #[error("the context token is not valid yet")]
    NotYetValid,
    #[error("the context token is meant for another add-in or host")]
    InvalidAudience,
    #[error("the context token was not issued by ACS for SharePoint")]
    InvalidIssuer,
    #[error("the context token names a token service that is not trusted")]
    UntrustedSts,
}

impl TokenError {
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::Malformed(_) => "malformed_context_token",
            TokenError::UnsupportedAlgorithm => "unsupported_algorithm",
            TokenError::InvalidSignature => "invalid_signature",
            TokenError::Expired => "token_expired",
            TokenError::NotYetValid => "token_not_yet_valid",
            TokenError::InvalidAudience => "invalid_audience",
            TokenError::InvalidIssuer => "invalid_issuer",
            TokenError::UntrustedSts => "untrusted_sts",
        }
    }
}

/// What the validator needs to know about us.
pub struct Expectations<'a> {
    /// The add-in's client id (GUID).
    pub client_id: &'a str,
    /// `host[:port]` of `SPKEEPER_PUBLIC_URL`.
    pub audience_host: &'a str,
    /// Primary secret first, then the secondary one if configured.
    pub secrets: &'a [&'a SecretString],
    pub sts_hosts: &'a HostAllowlist,
    pub now: DateTime<Utc>,
}

/// A validated context token: what the rest of the system may use.
pub struct ContextToken {
    /// The tenant id (GUID), lower case.
    pub realm: String,
    pub cache_key: String,
    pub refresh_token: SecretString,
    pub sts_uri: Url,
    /// The principal before `@` in `appctxsender` (SharePoint's), used for the ACS resource.
    pub target_principal: String,
    pub not_before: DateTime<Utc>,
    pub expires: DateTime<Utc>,
}

impl fmt::Debug for ContextToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContextToken")
            .field("realm", &self.realm)
            .field("sts_uri", &self.sts_uri.as_str())
            .field("target_principal", &self.target_principal)
            .field("not_before", &self.not_before)
            .field("expires", &self.expires)
            .field("refresh_token", &"[redacted]")
            .finish()
    }
}

/// The claims, loosely typed: presence and shape are checked here, claim by claim, so each
/// failure gets its own error code.
#[derive(Deserialize)]
struct RawClaims {
    aud: Option<Value>,
    iss: Option<Value>,
    nbf: Option<Value>,
    exp: Option<Value>,
    appctxsender: Option<Value>,
    appctx: Option<Value>,
    refreshtoken: Option<Value>,
}

#[derive(Deserialize)]
struct AppCtx {
    #[serde(rename = "CacheKey")]
    cache_key: Option<String>,
    #[serde(rename = "SecurityTokenServiceUri")]
    sts_uri: Option<String>,
}

/// The HMAC key for a client secret: its base64 decoding if it is strict (canonical, padded)
/// base64, else its UTF-8 bytes. One key per secret, never both.
pub fn signing_key(secret: &SecretString) -> Vec<u8> {
    let s = secret.expose_secret();
    match STANDARD.decode(s) {
        Ok(bytes) if !bytes.is_empty() => bytes,
        _ => s.as_bytes().to_vec(),
    }
}

/// Validates a context token. Signature first: nothing about the claims is looked at, or
/// reported, before the token is known to be ours.
pub fn validate(token: &str, exp: &Expectations<'_>) -> Result<ContextToken, TokenError> {
    let token = token.trim();
    check_header(token)?;

    let mut validation = Validation::new(Algorithm::HS256);
    // jsonwebtoken requires these two to be present as strings. `exp` and `nbf` are required
    // and checked below instead: SharePoint sends them as strings in Microsoft's own sample,
    // which jsonwebtoken's numeric check would refuse.
    validation.required_spec_claims = HashSet::from(["aud".to_string(), "iss".to_string()]);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    // The audience is compared case-insensitively below (TokenHelper does).
    validation.validate_aud = false;

    let mut last_error = TokenError::InvalidSignature;
    for secret in exp.secrets {
        let key = DecodingKey::from_secret(&signing_key(secret));
        match jsonwebtoken::decode::<RawClaims>(token, &key, &validation) {
            Ok(data) => return check_claims(data.claims, exp),
            Err(e) => {
                last_error = map_jwt_error(e.kind());
                if last_error != TokenError::InvalidSignature {
                    return Err(last_error);
                }
            }
        }
    }
    Err(last_error)
}

/// Reads the header ourselves, so that `none`, `HS512`, `RS256` and friends are refused as
/// unsupported algorithms, whatever the JWT library knows of them.
fn check_header(token: &str) -> Result<(), TokenError> {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed("not three dot-separated parts"));
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| TokenError::Malformed("header is not base64url"))?;
    let header: Value =
        serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed("header is not JSON"))?;
    match header.get("alg").and_then(Value::as_str) {
        Some("HS256") => Ok(()),
        Some(_) => Err(TokenError::UnsupportedAlgorithm),
        None => Err(TokenError::Malformed("header has no alg")),
    }
}

fn map_jwt_error(kind: &ErrorKind) -> TokenError {
    match kind {
        ErrorKind::InvalidSignature => TokenError::InvalidSignature,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            TokenError::UnsupportedAlgorithm
        }
        ErrorKind::MissingRequiredClaim(c) if c == "aud" => TokenError::InvalidAudience,
        ErrorKind::MissingRequiredClaim(c) if c == "iss" => TokenError::InvalidIssuer,
        ErrorKind::InvalidAudience => TokenError::InvalidAudience,
        ErrorKind::InvalidIssuer => TokenError::InvalidIssuer,
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        _ => TokenError::Malformed("not a decodable JWT"),
    }
}

/// `nbf`/`exp`: a JSON number, or a string of decimal digits (Microsoft's sample).
fn numeric_date(v: Option<&Value>) -> Option<DateTime<Utc>> {
    let secs = match v? {
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))?,
        Value::String(s) => {
            let s = s.trim();
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            s.parse::<i64>().ok()?
        }
        _ => return None,
    };
    if secs < 0 {
        return None;
    }
    DateTime::from_timestamp(secs, 0)
}

/// `principal@realm`, both parts non-empty.
fn split_principal(v: &str) -> Option<(&str, &str)> {
    let (principal, realm) = v.rsplit_once('@')?;
    (!principal.is_empty() && !realm.is_empty()).then_some((principal, realm))
}

/// A GUID in its usual 8-4-4-4-12 form.
pub fn is_guid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    let lens = [8, 4, 4, 4, 12];
    groups.len() == 5
        && groups
            .iter()
            .zip(lens)
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn check_claims(c: RawClaims, exp: &Expectations<'_>) -> Result<ContextToken, TokenError> {
    let skew = Duration::seconds(CLOCK_SKEW_SECONDS);

    // Lifetime. A token without a readable `exp` has no proven lifetime: it is refused as
    // expired; likewise a missing `nbf` as not yet valid.
    let expires = numeric_date(c.exp.as_ref()).ok_or(TokenError::Expired)?;
    let not_before = numeric_date(c.nbf.as_ref()).ok_or(TokenError::NotYetValid)?;
    // The arithmetic is on `now` (a sane time), never on the token's numbers, which may sit
    // at the very ends of the calendar.
    let (Some(earliest), Some(latest)) = (
        exp.now.checked_sub_signed(skew),
        exp.now.checked_add_signed(skew),
    ) else {
        return Err(TokenError::Malformed("the clock is out of range"));
    };
    if expires < earliest {
        return Err(TokenError::Expired);
    }
    if not_before > latest {
        return Err(TokenError::NotYetValid);
    }

    // Audience: {client_id}/{host[:port]}@{realm}, case-insensitive.
    let aud = c
        .aud
        .as_ref()
        .and_then(Value::as_str)
        .ok_or(TokenError::InvalidAudience)?;
    let (aud_principal, realm) = split_principal(aud).ok_or(TokenError::InvalidAudience)?;
    let expected = format!("{}/{}", exp.client_id, exp.audience_host);
    if !aud_principal.eq_ignore_ascii_case(&expected) || !is_guid(realm) {
        return Err(TokenError::InvalidAudience);
    }

    // Issuer: the ACS principal, in the same realm.
    let iss = c
        .iss
        .as_ref()
        .and_then(Value::as_str)
        .ok_or(TokenError::InvalidIssuer)?;
    match split_principal(iss) {
        Some((p, r)) if p.eq_ignore_ascii_case(ACS_PRINCIPAL) && r.eq_ignore_ascii_case(realm) => {}
        _ => return Err(TokenError::InvalidIssuer),
    }

    // Sender: SharePoint, in the same realm. Its principal is the ACS resource's target.
    let sender = c
        .appctxsender
        .as_ref()
        .and_then(Value::as_str)
        .ok_or(TokenError::InvalidIssuer)?;
    let target_principal = match split_principal(sender) {
        Some((p, r))
            if p.eq_ignore_ascii_case(SHAREPOINT_PRINCIPAL) && r.eq_ignore_ascii_case(realm) =>
        {
            p.to_ascii_lowercase()
        }
        _ => return Err(TokenError::InvalidIssuer),
    };

    // appctx is JSON inside a string.
    let appctx_text = c
        .appctx
        .as_ref()
        .and_then(Value::as_str)
        .ok_or(TokenError::Malformed("appctx is missing"))?;
    let appctx: AppCtx = serde_json::from_str(appctx_text)
        .map_err(|_| TokenError::Malformed("appctx is not a JSON string"))?;
    let cache_key = appctx
        .cache_key
        .filter(|k| !k.trim().is_empty())
        .ok_or(TokenError::Malformed("appctx has no CacheKey"))?;
    let sts = appctx
        .sts_uri
        .filter(|s| !s.trim().is_empty())
        .ok_or(TokenError::Malformed(
            "appctx has no SecurityTokenServiceUri",
        ))?;
    let sts_uri = exp
        .sts_hosts
        .check_url(&sts)
        .map_err(|_| TokenError::UntrustedSts)?;

    let refresh_token = c
        .refreshtoken
        .as_ref()
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or(TokenError::Malformed("refreshtoken is missing"))?;

    Ok(ContextToken {
        realm: realm.to_ascii_lowercase(),
        cache_key,
        refresh_token: SecretString::from(refresh_token.to_string()),
        sts_uri,
        target_principal,
        not_before,
        expires,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{ContextTokenSpec, mint_context_token, mint_with_header};
    use chrono::TimeZone;
    use serde_json::json;

    const CLIENT_ID: &str = "a044e184-7de2-4d05-aacf-52118008c44e";
    const REALM: &str = "040f2415-e6e3-4480-96ce-26ef73275f73";
    const HOST: &str = "fabrikam.com";

    fn sts() -> HostAllowlist {
        HostAllowlist::parse(super::super::hosts::DEFAULT_STS_HOSTS, false).unwrap()
    }

    fn secret() -> SecretString {
        SecretString::from("KQAIUpDUD0sm5Tr83U+jZGYVuPPCPu8BGwoWiAACqNw=".to_string())
    }

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(secs, 0).unwrap()
    }

    fn check(token: &str, now: i64, secrets: &[&SecretString]) -> Result<ContextToken, TokenError> {
        let sts = sts();
        validate(
            token,
            &Expectations {
                client_id: CLIENT_ID,
                audience_host: HOST,
                secrets,
                sts_hosts: &sts,
                now: at(now),
            },
        )
    }

    /// Microsoft's documented example, claim for claim: string `nbf`/`exp`, `appctx` as a JSON
    /// string, string `isbrowserhostedapp`.
    fn microsoft_sample() -> Value {
        json!({
            "aud": "a044e184-7de2-4d05-aacf-52118008c44e/fabrikam.com@040f2415-e6e3-4480-96ce-26ef73275f73",
            "iss": "00000001-0000-0000-c000-000000000000@040f2415-e6e3-4480-96ce-26ef73275f73",
            "nbf": "1335822895",
            "exp": "1335866095",
            "appctxsender": "00000003-0000-0ff1-ce00-000000000000@040f2415-e6e3-4480-96ce-26ef73275f73",
            "appctx": "{\"CacheKey\":\"KQAIUpDUD0sm5Tr83U+jZGYVuPPCPu8BGwoWiAACqNw=\",\"SecurityTokenServiceUri\":\"https://accounts.accesscontrol.windows.net/tokens/OAuth/2\"}",
            "refreshtoken": "IAAAAC1Lv5w0OrcFAmJx0xk6rBhPSGbD3FbXUR8sXfp4P-8bAAAAAA",
            "isbrowserhostedapp": "true"
        })
    }

    fn sign(claims: &Value) -> String {
        mint_context_token(claims, &secret())
    }

    const SAMPLE_NOW: i64 = 1335822895 + 3600;

    #[test]
    fn microsoft_documented_example_is_accepted() {
        let t = check(&sign(&microsoft_sample()), SAMPLE_NOW, &[&secret()]).unwrap();
        assert_eq!(t.realm, REALM);
        assert_eq!(t.cache_key, "KQAIUpDUD0sm5Tr83U+jZGYVuPPCPu8BGwoWiAACqNw=");
        assert_eq!(t.target_principal, SHAREPOINT_PRINCIPAL);
        assert_eq!(
            t.sts_uri.as_str(),
            "https://accounts.accesscontrol.windows.net/tokens/OAuth/2"
        );
        assert_eq!(t.not_before, at(1335822895));
        assert_eq!(t.expires, at(1335866095));
        assert_eq!(
            t.refresh_token.expose_secret(),
            "IAAAAC1Lv5w0OrcFAmJx0xk6rBhPSGbD3FbXUR8sXfp4P-8bAAAAAA"
        );
    }

    /// Microsoft's sample payload, signed outside this project (Python's `hmac` with the
    /// base64-decoded secret) and pasted here, so the verifier is not only checked against
    /// tokens minted by our own code.
    const HAND_SIGNED_SAMPLE: &str = "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9.eyJhdWQiOiJhMDQ0ZTE4NC03ZGUyLTRkMDUtYWFjZi01MjExODAwOGM0NGUvZmFicmlrYW0uY29tQDA0MGYyNDE1LWU2ZTMtNDQ4MC05NmNlLTI2ZWY3MzI3NWY3MyIsImlzcyI6IjAwMDAwMDAxLTAwMDAtMDAwMC1jMDAwLTAwMDAwMDAwMDAwMEAwNDBmMjQxNS1lNmUzLTQ0ODAtOTZjZS0yNmVmNzMyNzVmNzMiLCJuYmYiOiIxMzM1ODIyODk1IiwiZXhwIjoiMTMzNTg2NjA5NSIsImFwcGN0eHNlbmRlciI6IjAwMDAwMDAzLTAwMDAtMGZmMS1jZTAwLTAwMDAwMDAwMDAwMEAwNDBmMjQxNS1lNmUzLTQ0ODAtOTZjZS0yNmVmNzMyNzVmNzMiLCJhcHBjdHgiOiJ7XCJDYWNoZUtleVwiOlwiS1FBSVVwRFVEMHNtNVRyODNVK2paR1lWdVBQQ1B1OEJHd29XaUFBQ3FOdz1cIixcIlNlY3VyaXR5VG9rZW5TZXJ2aWNlVXJpXCI6XCJodHRwczovL2FjY291bnRzLmFjY2Vzc2NvbnRyb2wud2luZG93cy5uZXQvdG9rZW5zL09BdXRoLzJcIn0iLCJyZWZyZXNodG9rZW4iOiJJQUFBQUMxTHY1dzBPcmNGQW1KeDB4azZyQmhQU0diRDNGYlhVUjhzWGZwNFAtOGJBQUFBQUEiLCJpc2Jyb3dzZXJob3N0ZWRhcHAiOiJ0cnVlIn0.DXWS9QnPvjOXO5LDKdegkvApTWqXE0giwvvUaZ2-558";

    #[test]
    fn hand_signed_microsoft_sample_is_accepted() {
        let t = check(HAND_SIGNED_SAMPLE, SAMPLE_NOW, &[&secret()]).unwrap();
        assert_eq!(t.realm, REALM);
        assert_eq!(t.cache_key, "KQAIUpDUD0sm5Tr83U+jZGYVuPPCPu8BGwoWiAACqNw=");
        let wrong = SecretString::from("d3Jvbmcgc2VjcmV0".to_string());
        assert_eq!(
            check(HAND_SIGNED_SAMPLE, SAMPLE_NOW, &[&wrong]).unwrap_err(),
            TokenError::InvalidSignature
        );
    }

    #[test]
    fn numeric_nbf_and_exp_are_accepted_too() {
        let mut c = microsoft_sample();
        c["nbf"] = json!(1335822895);
        c["exp"] = json!(1335866095);
        assert!(check(&sign(&c), SAMPLE_NOW, &[&secret()]).is_ok());
    }

    #[test]
    fn boolean_isbrowserhostedapp_is_accepted() {
        let mut c = microsoft_sample();
        c["isbrowserhostedapp"] = json!(true);
        assert!(check(&sign(&c), SAMPLE_NOW, &[&secret()]).is_ok());
    }

    #[test]
    fn wrong_secret_is_refused_with_invalid_signature() {
        let other = SecretString::from("c29tZSBvdGhlciBzZWNyZXQgdmFsdWUgaGVyZSE=".to_string());
        let token = mint_context_token(&microsoft_sample(), &other);
        assert_eq!(
            check(&token, SAMPLE_NOW, &[&secret()]).unwrap_err(),
            TokenError::InvalidSignature
        );
    }

    #[test]
    fn tampered_payload_is_refused_with_invalid_signature() {
        let token = sign(&microsoft_sample());
        let mut parts: Vec<String> = token.split('.').map(String::from).collect();
        let mut c = microsoft_sample();
        c["exp"] = json!("9999999999");
        parts[1] = URL_SAFE_NO_PAD.encode(c.to_string());
        assert_eq!(
            check(&parts.join("."), SAMPLE_NOW, &[&secret()]).unwrap_err(),
            TokenError::InvalidSignature
        );
    }

    #[test]
    fn secondary_secret_is_accepted_during_rotation() {
        let old = SecretString::from("old-secret~not/base64!".to_string());
        let token = mint_context_token(&microsoft_sample(), &old);
        assert!(check(&token, SAMPLE_NOW, &[&secret(), &old]).is_ok());
        assert_eq!(
            check(&token, SAMPLE_NOW, &[&secret()]).unwrap_err(),
            TokenError::InvalidSignature
        );
    }

    #[test]
    fn base64_secret_keys_with_its_decoding_not_its_text() {
        let s = secret();
        assert_eq!(signing_key(&s), STANDARD.decode(s.expose_secret()).unwrap());
        // signed with the text of a base64 secret: refused
        let token = mint_with_header(
            &json!({"typ":"JWT","alg":"HS256"}),
            &microsoft_sample(),
            s.expose_secret().as_bytes(),
        );
        assert_eq!(
            check(&token, SAMPLE_NOW, &[&s]).unwrap_err(),
            TokenError::InvalidSignature
        );
    }

    #[test]
    fn non_base64_secret_keys_with_its_utf8_bytes() {
        // Entra-generated secrets contain "~" and are not base64.
        let s = SecretString::from("Ab1~cD2.eF3_gH4-iJ5~kL6.mN7_oP8-qR9~sT0".to_string());
        assert_eq!(signing_key(&s), s.expose_secret().as_bytes());
        let token = mint_context_token(&microsoft_sample(), &s);
        assert!(check(&token, SAMPLE_NOW, &[&s]).is_ok());
        // unpadded base64-looking text is not strict base64: UTF-8 bytes too
        let unpadded = SecretString::from("YWJj".repeat(3) + "YQ");
        assert_eq!(signing_key(&unpadded), unpadded.expose_secret().as_bytes());
    }

    #[test]
    fn alg_none_is_refused_with_unsupported_algorithm() {
        let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"none"}"#);
        let payload = URL_SAFE_NO_PAD.encode(microsoft_sample().to_string());
        for token in [
            format!("{header}.{payload}."),
            format!("{header}.{payload}.xyz"),
        ] {
            assert_eq!(
                check(&token, SAMPLE_NOW, &[&secret()]).unwrap_err(),
                TokenError::UnsupportedAlgorithm
            );
        }
    }

    #[test]
    fn hs512_is_refused_with_unsupported_algorithm() {
        let key = signing_key(&secret());
        let token = mint_with_header(
            &json!({"typ":"JWT","alg":"HS512"}),
            &microsoft_sample(),
            &key,
        );
        assert_eq!(
            check(&token, SAMPLE_NOW, &[&secret()]).unwrap_err(),
            TokenError::UnsupportedAlgorithm
        );
    }

    #[test]
    fn rs256_is_refused_with_unsupported_algorithm_not_verified_with_the_hmac_key() {
        // An RS256 header whose "signature" is an HMAC with the client secret: the classic
        // algorithm-confusion attack. It must be refused before any verification.
        let key = signing_key(&secret());
        let token = mint_with_header(
            &json!({"typ":"JWT","alg":"RS256"}),
            &microsoft_sample(),
            &key,
        );
        assert_eq!(
            check(&token, SAMPLE_NOW, &[&secret()]).unwrap_err(),
            TokenError::UnsupportedAlgorithm
        );
    }

    #[test]
    fn lifetimes_at_the_ends_of_the_calendar_are_judged_without_panicking() {
        let max = DateTime::<Utc>::MAX_UTC.timestamp();
        let mut claims = microsoft_sample();
        claims["exp"] = json!(max.to_string());
        let t = check(&sign(&claims), SAMPLE_NOW, &[&secret()]).unwrap();
        assert_eq!(t.expires.timestamp(), max);
        // the lifecycle is computed from `nbf`, which validation bounds by `now`
        let rt = crate::core::grant::refresh_token_expiry(t.not_before);
        assert!(crate::core::grant::relaunch_retention(rt) > rt);

        for (nbf, exp, err) in [
            (json!(max), json!(max), TokenError::NotYetValid),
            (
                json!(max.to_string()),
                json!("1335866095"),
                TokenError::NotYetValid,
            ),
            (json!("1335822895"), json!(1e300), TokenError::Expired),
            (json!("1335822895"), json!(i64::MAX), TokenError::Expired),
            (json!("1335822895"), json!(u64::MAX), TokenError::Expired),
            (json!(-1e300), json!(max), TokenError::NotYetValid),
        ] {
            let mut claims = microsoft_sample();
            claims["nbf"] = nbf.clone();
            claims["exp"] = exp.clone();
            assert_eq!(
                check(&sign(&claims), SAMPLE_NOW, &[&secret()]).unwrap_err(),
                err,
                "nbf {nbf} exp {exp}"
            );
        }
        // and a clock at the end of time does not panic either
        assert!(check(&sign(&microsoft_sample()), max, &[&secret()]).is_err());
    }

    #[test]
    fn expired_token_is_refused_with_token_expired() {
        let exp = 1335866095;
        let t = sign(&microsoft_sample());
        assert!(check(&t, exp + CLOCK_SKEW_SECONDS, &[&secret()]).is_ok());
        assert_eq!(
            check(&t, exp + CLOCK_SKEW_SECONDS + 1, &[&secret()]).unwrap_err(),
            TokenError::Expired
        );
    }

    #[test]
    fn future_token_is_refused_with_token_not_yet_valid() {
        let nbf = 1335822895;
        let t = sign(&microsoft_sample());
        assert!(check(&t, nbf - CLOCK_SKEW_SECONDS, &[&secret()]).is_ok());
        assert_eq!(
            check(&t, nbf - CLOCK_SKEW_SECONDS - 1, &[&secret()]).unwrap_err(),
            TokenError::NotYetValid
        );
    }

    #[test]
    fn missing_or_unreadable_lifetime_claims_are_refused() {
        for (claim, value, err) in [
            ("exp", Value::Null, TokenError::Expired),
            ("exp", json!("soon"), TokenError::Expired),
            ("exp", json!("-5"), TokenError::Expired),
            ("nbf", Value::Null, TokenError::NotYetValid),
            ("nbf", json!("later"), TokenError::NotYetValid),
            ("nbf", json!(1.5e300), TokenError::NotYetValid),
        ] {
            let mut c = microsoft_sample();
            if value.is_null() {
                c.as_object_mut().unwrap().remove(claim);
            } else {
                c[claim] = value;
            }
            assert_eq!(
                check(&sign(&c), SAMPLE_NOW, &[&secret()]).unwrap_err(),
                err,
                "{claim}"
            );
        }
    }

    #[test]
    fn missing_aud_is_refused_with_invalid_audience() {
        let mut c = microsoft_sample();
        c.as_object_mut().unwrap().remove("aud");
        assert_eq!(
            check(&sign(&c), SAMPLE_NOW, &[&secret()]).unwrap_err(),
            TokenError::InvalidAudience
        );
    }

    #[test]
    fn audience_is_compared_case_insensitively() {
        let mut c = microsoft_sample();
        c["aud"] = json!(
            "A044E184-7DE2-4D05-AACF-52118008C44E/FABRIKAM.COM@040F2415-E6E3-4480-96CE-26EF73275F73"
        );
        c["iss"] =
            json!("00000001-0000-0000-c000-000000000000@040F2415-E6E3-4480-96CE-26EF73275F73");
        c["appctxsender"] =
            json!("00000003-0000-0ff1-ce00-000000000000@040f2415-e6e3-4480-96ce-26ef73275f73");
        let t = check(&sign(&c), SAMPLE_NOW, &[&secret()]).unwrap();
        assert_eq!(t.realm, REALM);
    }

    #[test]
    fn wrong_audience_is_refused_with_invalid_audience() {
        for aud in [
            json!(
                "a044e184-7de2-4d05-aacf-52118008c44e/evil.com@040f2415-e6e3-4480-96ce-26ef73275f73"
            ),
            json!(
                "11111111-7de2-4d05-aacf-52118008c44e/fabrikam.com@040f2415-e6e3-4480-96ce-26ef73275f73"
            ),
            json!(
                "a044e184-7de2-4d05-aacf-52118008c44e/fabrikam.com:8443@040f2415-e6e3-4480-96ce-26ef73275f73"
            ),
            json!("a044e184-7de2-4d05-aacf-52118008c44e/fabrikam.com@"),
            json!("a044e184-7de2-4d05-aacf-52118008c44e/fabrikam.com@not-a-guid"),
            json!("a044e184-7de2-4d05-aacf-52118008c44e/fabrikam.com"),
            json!([
                "a044e184-7de2-4d05-aacf-52118008c44e/fabrikam.com@040f2415-e6e3-4480-96ce-26ef73275f73"
            ]),
            json!(42),
        ] {
            let mut c = microsoft_sample();
            c["aud"] = aud.clone();
            assert_eq!(
                check(&sign(&c), SAMPLE_NOW, &[&secret()]).unwrap_err(),
                TokenError::InvalidAudience,
                "{aud}"
            );
        }
    }

    #[test]
    fn wrong_issuer_or_realm_is_refused_with_invalid_issuer() {
        let other_realm = "11111111-e6e3-4480-96ce-26ef73275f73";
        for (claim, value) in [
            (
                "iss",
                json!(format!("00000002-0000-0000-c000-000000000000@{REALM}")),
            ),
            ("iss", json!(format!("{ACS_PRINCIPAL}@{other_realm}"))),
            ("iss", Value::Null),
            (
                "appctxsender",
                json!(format!("00000004-0000-0ff1-ce00-000000000000@{REALM}")),
            ),
            (
                "appctxsender",
                json!(format!("{SHAREPOINT_PRINCIPAL}@{other_realm}")),
            ),
            ("appctxsender", Value::Null),
        ] {
            let mut c = microsoft_sample();
            if value.is_null() {
                c.as_object_mut().unwrap().remove(claim);
            } else {
                c[claim] = value.clone();
            }
            assert_eq!(
                check(&sign(&c), SAMPLE_NOW, &[&secret()]).unwrap_err(),
                TokenError::InvalidIssuer,
                "{claim} {value}"
            );
        }
    }

    #[test]
    fn untrusted_sts_is_refused() {
        for sts in [
            "https://evil.example.com/tokens/OAuth/2",
            "http://accounts.accesscontrol.windows.net/tokens/OAuth/2",
            "https://accounts.accesscontrol.windows.net.evil.com/tokens/OAuth/2",
            "https://user@accounts.accesscontrol.windows.net/tokens/OAuth/2",
            "not a url",
        ] {
            let mut c = microsoft_sample();
            c["appctx"] =
                json!(json!({"CacheKey": "k", "SecurityTokenServiceUri": sts}).to_string());
            assert_eq!(
                check(&sign(&c), SAMPLE_NOW, &[&secret()]).unwrap_err(),
                TokenError::UntrustedSts,
                "{sts}"
            );
        }
    }

    #[test]
    fn appctx_must_be_a_json_string_with_cache_key_and_sts() {
        for appctx in [
            json!({"CacheKey":"k","SecurityTokenServiceUri":"https://accounts.accesscontrol.windows.net/tokens/OAuth/2"}),
            json!("{not json"),
            json!(
                "{\"SecurityTokenServiceUri\":\"https://accounts.accesscontrol.windows.net/tokens/OAuth/2\"}"
            ),
            json!(
                "{\"CacheKey\":\"\",\"SecurityTokenServiceUri\":\"https://accounts.accesscontrol.windows.net/tokens/OAuth/2\"}"
            ),
            json!("{\"CacheKey\":\"k\"}"),
        ] {
            let mut c = microsoft_sample();
            c["appctx"] = appctx.clone();
            assert!(
                matches!(
                    check(&sign(&c), SAMPLE_NOW, &[&secret()]),
                    Err(TokenError::Malformed(_))
                ),
                "{appctx}"
            );
        }
    }

    #[test]
    fn missing_refresh_token_is_malformed() {
        let mut c = microsoft_sample();
        c.as_object_mut().unwrap().remove("refreshtoken");
        assert!(matches!(
            check(&sign(&c), SAMPLE_NOW, &[&secret()]),
            Err(TokenError::Malformed(_))
        ));
    }

    #[test]
    fn garbage_is_malformed() {
        for t in ["", "abc", "a.b", "a.b.c.d", "!!!.e30.sig", "e30.e30.sig"] {
            assert!(
                matches!(
                    check(t, SAMPLE_NOW, &[&secret()]),
                    Err(TokenError::Malformed(_))
                ),
                "{t}"
            );
        }
        // a valid header with a payload that is not JSON
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256"}"#);
        let t = format!("{header}.bm90IGpzb24.sig");
        assert!(check(&t, SAMPLE_NOW, &[&secret()]).is_err());
    }

    #[test]
    fn spec_minter_round_trips() {
        let spec = ContextTokenSpec {
            client_id: CLIENT_ID.into(),
            audience_host: HOST.into(),
            realm: REALM.into(),
            cache_key: "ck+/=".into(),
            sts_uri: "https://accounts.accesscontrol.windows.net/tokens/OAuth/2".into(),
            refresh_token: "rt".into(),
            nbf: at(SAMPLE_NOW),
            lifetime_hours: 12,
            numeric_dates: true,
        };
        let t = check(
            &mint_context_token(&spec.claims(), &secret()),
            SAMPLE_NOW,
            &[&secret()],
        )
        .unwrap();
        assert_eq!(t.cache_key, "ck+/=");
    }

    #[test]
    fn debug_print_hides_the_refresh_token() {
        let t = check(&sign(&microsoft_sample()), SAMPLE_NOW, &[&secret()]).unwrap();
        let printed = format!("{t:?}");
        assert!(!printed.contains("IAAAAC1Lv5w0"));
        assert!(printed.contains("[redacted]"));
    }
}
