//! The ACS refresh-token grant (PROTOCOL.md §3), pure: the request form, the string-typed
//! response, and the classification of failures.

use std::fmt;

use chrono::{DateTime, Duration, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// The longest access-token lifetime believed (ACS gives about 12 hours).
pub const MAX_ACCESS_TOKEN_LIFETIME: Duration = Duration::days(7);

/// `{target principal}/{host authority}@{realm}`.
pub fn resource(target_principal: &str, host_authority: &str, realm: &str) -> String {
    format!("{target_principal}/{host_authority}@{realm}")
}

/// The form body of a refresh-token request. It holds the client secret and the refresh token,
/// so it is a secret itself: it never prints.
pub struct TokenRequestForm(SecretString);

impl fmt::Debug for TokenRequestForm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenRequestForm([redacted])")
    }
}

impl TokenRequestForm {
    pub fn refresh_token(
        client_id: &str,
        realm: &str,
        client_secret: &SecretString,
        refresh_token: &SecretString,
        resource: &str,
    ) -> Self {
        let client = format!("{client_id}@{realm}");
        let body = serde_urlencoded::to_string([
            ("grant_type", "refresh_token"),
            ("client_id", client.as_str()),
            ("client_secret", client_secret.expose_secret()),
            ("refresh_token", refresh_token.expose_secret()),
            ("resource", resource),
        ])
        .unwrap_or_default();
        TokenRequestForm(SecretString::from(body))
    }

    pub fn body(&self) -> &str {
        self.0.expose_secret()
    }
}

/// An access token from ACS.
pub struct AccessToken {
    pub token: SecretString,
    pub expires_at: DateTime<Utc>,
    pub resource: String,
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("token", &"[redacted]")
            .field("expires_at", &self.expires_at)
            .field("resource", &self.resource)
            .finish()
    }
}

/// Why an exchange failed, as far as the caller needs to know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AcsFailure {
    /// The refresh token is expired or revoked: the user must relaunch.
    #[error("ACS refused the refresh token ({0})")]
    InvalidGrant(String),
    /// ACS refused our client credentials: an operator problem.
    #[error("ACS refused the client credentials ({0})")]
    InvalidClient(String),
    /// 429, 5xx, timeouts, connection errors: worth retrying, the grant is fine.
    #[error("ACS is unavailable ({0})")]
    Transient(String),
    /// Any other answer: not retried, not blamed on the grant.
    #[error("ACS answered unexpectedly ({0})")]
    Unexpected(String),
}

impl AcsFailure {
    pub fn is_transient(&self) -> bool {
        matches!(self, AcsFailure::Transient(_))
    }
}

/// ACS answers with every field as a string (`"expires_in":"43199"`); accept numbers too.
#[derive(Deserialize)]
#[serde(untagged)]
enum StrOrNum {
    S(String),
    N(i64),
}

impl StrOrNum {
    fn as_i64(&self) -> Option<i64> {
        match self {
            StrOrNum::S(s) => s.trim().parse().ok(),
            StrOrNum::N(n) => Some(*n),
        }
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    token_type: Option<String>,
    access_token: Option<String>,
    expires_in: Option<StrOrNum>,
    expires_on: Option<StrOrNum>,
    resource: Option<String>,
}

#[derive(Deserialize)]
struct ErrorResponse {
    error: Option<String>,
    error_description: Option<String>,
}

/// AADSTS codes that mean the refresh token is dead (PROTOCOL.md §3).
const GRANT_CODES: [&str; 3] = ["AADSTS700082", "AADSTS70043", "AADSTS50173"];
/// AADSTS codes that mean our client credentials are wrong or expired.
const CLIENT_CODES: [&str; 3] = ["AADSTS7000222", "AADSTS7000215", "AADSTS700016"];

fn mentions(description: &str, codes: &[&str]) -> Option<String> {
    codes.iter().find_map(|code| {
        // "AADSTS70043" must not match inside "AADSTS700430".
        description.match_indices(code).find_map(|(i, _)| {
            let next = description[i + code.len()..].chars().next();
            (!next.is_some_and(|c| c.is_ascii_digit())).then(|| (*code).to_string())
        })
    })
}

/// Parses a 2xx answer. `now` anchors `expires_in` when `expires_on` is absent.
pub fn parse_success(body: &[u8], now: DateTime<Utc>) -> Result<AccessToken, AcsFailure> {
    let r: TokenResponse = serde_json::from_slice(body)
        .map_err(|_| AcsFailure::Unexpected("success body is not a token response".into()))?;
    let token = r
        .access_token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| AcsFailure::Unexpected("no access_token".into()))?;
    if let Some(tt) = &r.token_type
        && !tt.eq_ignore_ascii_case("bearer")
    {
        return Err(AcsFailure::Unexpected("token_type is not Bearer".into()));
    }
    let expires_at = match (&r.expires_on, &r.expires_in) {
        (Some(on), _) => on.as_i64().and_then(|s| DateTime::from_timestamp(s, 0)),
        (None, Some(secs)) => secs
            .as_i64()
            .and_then(Duration::try_seconds)
            .and_then(|d| now.checked_add_signed(d)),
        (None, None) => {
            return Err(AcsFailure::Unexpected("no expires_on or expires_in".into()));
        }
    }
    .ok_or_else(|| AcsFailure::Unexpected("the token's lifetime is not a time".into()))?;
    // ACS issues access tokens for about 12 hours. A lifetime outside (now, now + a week] is
    // not one ACS gives: refuse it rather than cache a token for years.
    let latest = now.checked_add_signed(MAX_ACCESS_TOKEN_LIFETIME);
    if expires_at <= now || latest.is_none_or(|l| expires_at > l) {
        return Err(AcsFailure::Unexpected(
            "the token's lifetime is out of range".into(),
        ));
    }
    Ok(AccessToken {
        token: SecretString::from(token),
        expires_at,
        resource: r.resource.unwrap_or_default(),
    })
}

/// Classifies a non-2xx answer.
pub fn classify_failure(status: u16, body: &[u8]) -> AcsFailure {
    let parsed: Option<ErrorResponse> = serde_json::from_slice(body).ok();
    let error = parsed
        .as_ref()
        .and_then(|e| e.error.clone())
        .unwrap_or_default();
    let description = parsed
        .as_ref()
        .and_then(|e| e.error_description.clone())
        .unwrap_or_default();
    let label = if error.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status} {error}")
    };

    if let Some(code) = mentions(&description, &CLIENT_CODES) {
        return AcsFailure::InvalidClient(format!("{label} {code}"));
    }
    if let Some(code) = mentions(&description, &GRANT_CODES) {
        return AcsFailure::InvalidGrant(format!("{label} {code}"));
    }
    match error.as_str() {
        "invalid_grant" => return AcsFailure::InvalidGrant(label),
        "invalid_client" | "unauthorized_client" => return AcsFailure::InvalidClient(label),
        "temporarily_unavailable" | "server_error" => return AcsFailure::Transient(label),
        _ => {}
    }
    match status {
        408 | 429 | 500..=599 => AcsFailure::Transient(label),
        _ => AcsFailure::Unexpected(label),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).unwrap()
    }

    #[test]
    fn request_form_has_the_five_fields_of_the_refresh_token_grant() {
        let f = TokenRequestForm::refresh_token(
            "cid",
            "realm",
            &SecretString::from("s+/=".to_string()),
            &SecretString::from("rt&x".to_string()),
            &resource(
                "00000003-0000-0ff1-ce00-000000000000",
                "contoso.sharepoint.com",
                "realm",
            ),
        );
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(f.body()).unwrap();
        assert_eq!(
            pairs,
            vec![
                ("grant_type".into(), "refresh_token".into()),
                ("client_id".into(), "cid@realm".into()),
                ("client_secret".into(), "s+/=".into()),
                ("refresh_token".into(), "rt&x".into()),
                (
                    "resource".into(),
                    "00000003-0000-0ff1-ce00-000000000000/contoso.sharepoint.com@realm".into()
                ),
            ]
        );
        assert!(!format!("{f:?}").contains("rt&x"));
    }

    #[test]
    fn string_typed_success_response_is_parsed() {
        let body = br#"{"token_type":"Bearer","access_token":"eyJ0","expires_in":"43199",
            "not_before":"1780272000","expires_on":"1780315199","resource":"00000003-0000-0ff1-ce00-000000000000/contoso.sharepoint.com@r"}"#;
        let t = parse_success(body, now()).unwrap();
        assert_eq!(t.expires_at.timestamp(), 1780315199);
        assert_eq!(t.token.expose_secret(), "eyJ0");
        assert!(t.resource.contains("contoso"));
        assert!(!format!("{t:?}").contains("eyJ0"));
    }

    #[test]
    fn expires_in_is_used_when_expires_on_is_missing() {
        let t = parse_success(br#"{"access_token":"a","expires_in":"3600"}"#, now()).unwrap();
        assert_eq!(t.expires_at, now() + Duration::hours(1));
        let t = parse_success(br#"{"access_token":"a","expires_in":60}"#, now()).unwrap();
        assert_eq!(t.expires_at, now() + Duration::minutes(1));
    }

    #[test]
    fn absurd_lifetimes_are_refused_without_panicking() {
        for body in [
            r#"{"access_token":"a","expires_in":"9223372036854775807"}"#.to_string(),
            r#"{"access_token":"a","expires_in":9223372036854775807}"#.to_string(),
            r#"{"access_token":"a","expires_in":"-9223372036854775808"}"#.to_string(),
            r#"{"access_token":"a","expires_in":"315360000"}"#.to_string(),
            r#"{"access_token":"a","expires_in":"0"}"#.to_string(),
            r#"{"access_token":"a","expires_on":"9223372036854775807"}"#.to_string(),
            r#"{"access_token":"a","expires_on":"8210266876799"}"#.to_string(),
            r#"{"access_token":"a","expires_on":"-8334601228800"}"#.to_string(),
            r#"{"access_token":"a","expires_on":"1","expires_in":"3600"}"#.to_string(),
            format!(r#"{{"access_token":"a","expires_in":{}}}"#, u64::MAX),
        ] {
            assert!(
                matches!(
                    parse_success(body.as_bytes(), now()),
                    Err(AcsFailure::Unexpected(_))
                ),
                "{body}"
            );
        }
        // at the clock's own end, nothing panics either
        assert!(
            parse_success(
                br#"{"access_token":"a","expires_in":"3600"}"#,
                DateTime::<Utc>::MAX_UTC
            )
            .is_err()
        );
    }

    #[test]
    fn success_without_token_or_expiry_is_unexpected() {
        for body in [
            &br#"{"expires_in":"3600"}"#[..],
            br#"{"access_token":"a"}"#,
            br#"{"access_token":"a","expires_in":"x"}"#,
            br#"{"access_token":"a","expires_in":"1","token_type":"mac"}"#,
            b"<html>",
        ] {
            assert!(matches!(
                parse_success(body, now()),
                Err(AcsFailure::Unexpected(_))
            ));
        }
    }

    #[test]
    fn invalid_grant_means_relaunch() {
        assert!(matches!(
            classify_failure(
                400,
                br#"{"error":"invalid_grant","error_description":"AADSTS70000: bad"}"#
            ),
            AcsFailure::InvalidGrant(_)
        ));
        assert!(matches!(
            classify_failure(400, br#"{"error":"invalid_request","error_description":"AADSTS700082: The refresh token has expired due to inactivity."}"#),
            AcsFailure::InvalidGrant(_)
        ));
        assert!(matches!(
            classify_failure(
                401,
                br#"{"error":"x","error_description":"AADSTS50173: grant revoked"}"#
            ),
            AcsFailure::InvalidGrant(_)
        ));
    }

    #[test]
    fn invalid_client_means_operator_problem() {
        for body in [
            &br#"{"error":"invalid_client"}"#[..],
            br#"{"error":"unauthorized_client"}"#,
            br#"{"error":"invalid_request","error_description":"AADSTS7000222: The provided client secret keys are expired."}"#,
        ] {
            assert!(matches!(classify_failure(401, body), AcsFailure::InvalidClient(_)));
        }
    }

    #[test]
    fn rate_limits_and_server_errors_are_transient() {
        for status in [408, 429, 500, 502, 503, 504] {
            assert!(classify_failure(status, b"").is_transient(), "{status}");
        }
        assert!(classify_failure(400, br#"{"error":"temporarily_unavailable"}"#).is_transient());
    }

    #[test]
    fn other_client_errors_are_unexpected_not_revocations() {
        assert!(matches!(
            classify_failure(400, b"Token request failed"),
            AcsFailure::Unexpected(_)
        ));
        assert!(matches!(
            classify_failure(404, b""),
            AcsFailure::Unexpected(_)
        ));
    }

    #[test]
    fn aadsts_codes_match_whole_numbers_only() {
        assert!(matches!(
            classify_failure(
                400,
                br#"{"error":"invalid_request","error_description":"AADSTS700430: other"}"#
            ),
            AcsFailure::Unexpected(_)
        ));
    }
}
