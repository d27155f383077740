//! Fuzz targets: one function per target, taking the fuzzer's bytes, running the real code with
//! fixed, realistic expectations and asserting its invariants, so a fuzzer finds wrong answers
//! and not only panics. `fuzz/fuzz_targets/*.rs` (cargo-fuzz, nightly) and
//! `tests/fuzz_replay.rs` (stable, every corpus file) call exactly these functions.
//!
//! Compiled only for tests and the `testkit` feature: never in a Lambda binary. A panic here is
//! either a panic of the code under test or a violated invariant (the assertion says which).
//!
//! The invariants are written against the rules (PROTOCOL.md §2–3, README), not against the
//! implementation: each checker re-derives what must hold from the raw input with its own code.

use std::net::IpAddr;
use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chrono::{DateTime, Duration, Utc};
use hmac::{Hmac, KeyInit, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sha2::{Sha256, Sha512};
use url::{Host, Url};

use crate::core::acs::{self, AcsFailure, MAX_ACCESS_TOKEN_LIFETIME};
use crate::core::context_token::{
    self, ACS_PRINCIPAL, CLOCK_SKEW_SECONDS, ContextToken, Expectations, SHAREPOINT_PRINCIPAL,
    TokenError,
};
use crate::core::grant::GrantId;
use crate::core::hosts::{DEFAULT_STS_HOSTS, HostAllowlist, realm_from_challenge};
use crate::core::links::{LinkError, LinkSigner};
use crate::service::launch::{LaunchInput, TOKEN_PARAMS};
use crate::testkit::mint_with_header;

// ---------------------------------------------------------------------------------------------
// The fixed, realistic configuration every target runs under.
// ---------------------------------------------------------------------------------------------

/// The add-in's client id (Microsoft's documented example).
pub const CLIENT_ID: &str = "a044e184-7de2-4d05-aacf-52118008c44e";
/// The add-in's public host: the audience host of Microsoft's example.
pub const AUDIENCE_HOST: &str = "fabrikam.com";
/// The tenant of Microsoft's example.
pub const REALM: &str = "040f2415-e6e3-4480-96ce-26ef73275f73";
/// Another tenant.
pub const OTHER_REALM: &str = "11111111-e6e3-4480-96ce-26ef73275f73";
/// Primary client secret: strict base64 (AppRegNew style), so the key is its decoding.
pub const PRIMARY_SECRET: &str = "KQAIUpDUD0sm5Tr83U+jZGYVuPPCPu8BGwoWiAACqNw=";
/// Secondary client secret: Entra style, not base64, so the key is its UTF-8 bytes.
pub const SECONDARY_SECRET: &str = "Ab1~cD2.eF3_gH4-iJ5~kL6.mN7_oP8-qR9~sT0";
/// "Now" for every target: 2026-06-01T00:00:00Z.
pub const NOW: i64 = 1_780_272_000;
/// The SharePoint allowlist the host and launch targets use when the input names none.
pub const SP_HOSTS: &str = "contoso.sharepoint.com, *.fabrikam.com, *.bücher.example, \
     127.0.0.1:8080, sp.local:8443, [::1]:8443, localhost:8080";
/// The STS hosts every `DEFAULT_STS_HOSTS` names, spelled out independently.
const STS_HOSTS: [&str; 2] = [
    "accounts.accesscontrol.windows.net",
    "accounts.accesscontrol.chinacloudapi.cn",
];
/// The link-signing key of the renew-link target.
pub const LINK_KEY: &[u8] = b"spkeeper fuzzing link-signing key, 32 bytes or more";
/// The public URL renew links point to.
pub const PUBLIC_URL: &str = "https://addin.example.com";
/// A well-formed JWT header, as SharePoint sends it.
pub const HS256_HEADER: &str = r#"{"typ":"JWT","alg":"HS256"}"#;

/// `NOW` as a time.
pub fn now() -> DateTime<Utc> {
    at(NOW)
}

fn at(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(secs, 0).unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
}

/// The HMAC key of the primary secret, computed here from the rule, not by the code under test.
pub fn primary_key() -> Vec<u8> {
    STANDARD
        .decode(PRIMARY_SECRET)
        .unwrap_or_else(|_| unreachable!("the primary secret is base64"))
}

/// The HMAC key of the secondary secret: its UTF-8 bytes.
pub fn secondary_key() -> Vec<u8> {
    SECONDARY_SECRET.as_bytes().to_vec()
}

/// Validates `token` as the launch would, under the fixed configuration, at `now`.
pub fn validate_at(token: &str, now: DateTime<Utc>) -> Result<ContextToken, TokenError> {
    let primary = SecretString::from(PRIMARY_SECRET.to_string());
    let secondary = SecretString::from(SECONDARY_SECRET.to_string());
    let sts = HostAllowlist::parse(DEFAULT_STS_HOSTS, false)
        .unwrap_or_else(|e| panic!("the default STS hosts parse: {e}"));
    context_token::validate(
        token,
        &Expectations {
            client_id: CLIENT_ID,
            audience_host: AUDIENCE_HOST,
            secrets: &[&primary, &secondary],
            sts_hosts: &sts,
            now,
        },
    )
}

/// Microsoft's documented context-token payload, valid from an hour before `now` for 12 hours.
pub fn sample_claims(now: i64) -> Value {
    json!({
        "aud": format!("{CLIENT_ID}/{AUDIENCE_HOST}@{REALM}"),
        "iss": format!("{ACS_PRINCIPAL}@{REALM}"),
        "nbf": (now - 3600).to_string(),
        "exp": (now - 3600 + 12 * 3600).to_string(),
        "appctxsender": format!("{SHAREPOINT_PRINCIPAL}@{REALM}"),
        "appctx": "{\"CacheKey\":\"KQAIUpDUD0sm5Tr83U+jZGYVuPPCPu8BGwoWiAACqNw=\",\"SecurityTokenServiceUri\":\"https://accounts.accesscontrol.windows.net/tokens/OAuth/2\"}",
        "refreshtoken": "IAAAAC1Lv5w0OrcFAmJx0xk6rBhPSGbD3FbXUR8sXfp4P-8bAAAAAA",
        "isbrowserhostedapp": "true"
    })
}

/// `base64url(header).base64url(payload).base64url(HMAC)`: any bytes as the payload, HS512 when
/// the header says so, else HS256 (the signature an attacker with the key could make).
pub fn sign_raw(header: &[u8], payload: &[u8], key: &[u8]) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let hs512 = serde_json::from_slice::<Value>(header)
        .ok()
        .is_some_and(|h| h["alg"] == "HS512");
    let sig = if hs512 {
        hmac512(key, input.as_bytes())
    } else {
        hmac256(key, input.as_bytes())
    };
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
}

fn hmac256(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(msg);
    mac.finalize().into_bytes().to_vec()
}

fn hmac512(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut mac = <Hmac<Sha512> as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(msg);
    mac.finalize().into_bytes().to_vec()
}

/// Reads the fuzzer's bytes as a stream of choices; an exhausted stream reads as zeros, so the
/// empty input is the first (well-formed) choice everywhere.
struct Bytes<'a> {
    data: &'a [u8],
}

impl<'a> Bytes<'a> {
    fn new(data: &'a [u8]) -> Self {
        Bytes { data }
    }

    fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }

    fn below(&mut self, n: usize) -> usize {
        usize::from(self.byte()) % n.max(1)
    }

    fn i32(&mut self) -> i32 {
        i32::from_be_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }

    /// A short string: a length byte (at most 63), then that many bytes, lossily decoded.
    fn string(&mut self) -> String {
        let len = usize::from(self.byte() % 64).min(self.data.len());
        let (s, rest) = self.data.split_at(len);
        self.data = rest;
        String::from_utf8_lossy(s).into_owned()
    }
}

// ---------------------------------------------------------------------------------------------
// Context tokens.
// ---------------------------------------------------------------------------------------------

fn decode_json_part(part: &str) -> Option<Value> {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).ok()?).ok()
}

/// A 36-character GUID, 8-4-4-4-12 hex digits (written here, not borrowed from the code).
fn is_guid_text(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// `nbf`/`exp` per PROTOCOL.md §2: a JSON number or a string of decimal digits, seconds since
/// the epoch, never negative, representable as a time.
fn claimed_time(v: Option<&Value>) -> Option<i64> {
    let secs = match v? {
        Value::Number(n) => match n.as_i64() {
            Some(i) => i,
            None => {
                let f = n.as_f64()?.trunc();
                if !f.is_finite() || f.abs() > 1e17 {
                    return None;
                }
                f as i64
            }
        },
        Value::String(s) => {
            let s = s.trim();
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            s.parse().ok()?
        }
        _ => return None,
    };
    (secs >= 0 && DateTime::from_timestamp(secs, 0).is_some()).then_some(secs)
}

/// The invariant of a validated token: every rule of PROTOCOL.md §2 holds for the token as
/// sent, re-checked here from its raw text, and the result reports what the token says.
pub fn assert_token_satisfies_every_rule(token: &str, t: &ContextToken, now: DateTime<Utc>) {
    let token = token.trim();
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "a validated token has three parts");

    // HS256 only, signed with a configured secret's key.
    let header = decode_json_part(parts[0]).expect("a validated token's header is JSON");
    assert_eq!(
        header.get("alg").and_then(Value::as_str),
        Some("HS256"),
        "only HS256 validates: {header}"
    );
    let input = format!("{}.{}", parts[0], parts[1]);
    let signed = [primary_key(), secondary_key()]
        .iter()
        .any(|k| URL_SAFE_NO_PAD.encode(hmac256(k, input.as_bytes())) == parts[2]);
    assert!(
        signed,
        "a validated token is signed with a configured secret"
    );

    let claims = decode_json_part(parts[1]).expect("a validated token's payload is JSON");
    let c = claims.as_object().expect("the payload is an object");
    let text = |name: &str| -> &str {
        c.get(name)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("a validated token has a string {name}"))
    };

    // Audience: {client_id}/{host}@{realm}, case-insensitive, realm a GUID.
    let aud = text("aud");
    let (principal, realm) = aud.rsplit_once('@').expect("aud names a realm");
    assert!(
        principal.eq_ignore_ascii_case(&format!("{CLIENT_ID}/{AUDIENCE_HOST}")),
        "audience {aud:?} is ours"
    );
    assert!(is_guid_text(realm), "the realm {realm:?} is a GUID");
    let realm = realm.to_ascii_lowercase();
    assert_eq!(t.realm, realm, "the realm reported is the audience's");

    // Issuer and sender: the ACS and SharePoint principals, in the same realm.
    assert_eq!(
        text("iss").to_ascii_lowercase(),
        format!("{ACS_PRINCIPAL}@{realm}"),
        "the issuer is ACS in the audience's realm"
    );
    assert_eq!(
        text("appctxsender").to_ascii_lowercase(),
        format!("{SHAREPOINT_PRINCIPAL}@{realm}"),
        "the sender is SharePoint in the audience's realm"
    );
    assert_eq!(t.target_principal, SHAREPOINT_PRINCIPAL);

    // Lifetime, within the skew of now.
    let skew = CLOCK_SKEW_SECONDS;
    let exp = claimed_time(c.get("exp")).expect("a validated token has a readable exp");
    let nbf = claimed_time(c.get("nbf")).expect("a validated token has a readable nbf");
    assert_eq!(
        t.expires.timestamp(),
        exp,
        "the expiry reported is the claim"
    );
    assert_eq!(t.not_before.timestamp(), nbf, "nbf reported is the claim");
    assert!(
        i128::from(exp) >= i128::from(now.timestamp()) - i128::from(skew),
        "not expired: exp {exp} now {now}"
    );
    assert!(
        i128::from(nbf) <= i128::from(now.timestamp()) + i128::from(skew),
        "already valid: nbf {nbf} now {now}"
    );

    // appctx: JSON inside a string, with a CacheKey and an allowlisted https STS.
    let appctx: Value = serde_json::from_str(text("appctx")).expect("appctx is JSON");
    let cache_key = appctx
        .get("CacheKey")
        .and_then(Value::as_str)
        .expect("appctx has a CacheKey");
    assert!(!cache_key.trim().is_empty(), "the CacheKey is not blank");
    assert_eq!(t.cache_key, cache_key);
    let sts = appctx
        .get("SecurityTokenServiceUri")
        .and_then(Value::as_str)
        .expect("appctx has an STS");
    let sts = Url::parse(sts.trim()).expect("the STS is a URL");
    assert_eq!(sts.scheme(), "https", "the STS is https: {sts}");
    assert!(
        sts.host_str().is_some_and(|h| STS_HOSTS.contains(&h)),
        "the STS host is allowlisted: {sts}"
    );
    assert_eq!(sts.port(), None, "the STS uses the default port: {sts}");
    assert!(sts.username().is_empty() && sts.password().is_none());
    assert_eq!(t.sts_uri, sts);

    let refresh = text("refreshtoken");
    assert!(!refresh.is_empty(), "the refresh token is not empty");
    assert_eq!(t.refresh_token.expose_secret(), refresh);
}

fn check_token(token: &str, now: DateTime<Utc>) -> Result<ContextToken, TokenError> {
    let result = validate_at(token, now);
    if let Ok(t) = &result {
        assert_token_satisfies_every_rule(token, t, now);
    }
    result
}

/// Target `context_token`: the input is the token text.
pub fn context_token(data: &[u8]) {
    let token = String::from_utf8_lossy(data);
    let _ = check_token(&token, now());
}

/// What a generated part of a token should make of it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Verdict {
    Good,
    /// Refused; with the error code when this part alone is wrong.
    Bad(Option<&'static str>),
    /// Fuzzer-chosen text: no prediction.
    Unknown,
}

use Verdict::{Bad, Good, Unknown};

const AUD: Option<&str> = Some("invalid_audience");
const ISS: Option<&str> = Some("invalid_issuer");
const EXPIRED: Option<&str> = Some("token_expired");
const NOT_YET: Option<&str> = Some("token_not_yet_valid");
const MALFORMED: Option<&str> = Some("malformed_context_token");
const ALG: Option<&str> = Some("unsupported_algorithm");
const SIG: Option<&str> = Some("invalid_signature");
const STS: Option<&str> = Some("untrusted_sts");

/// Claims built part by part from the fuzzer's choices, with what each part should do.
struct Built {
    header: Value,
    key: Vec<u8>,
    claims: Map<String, Value>,
    verdicts: Vec<(&'static str, Verdict)>,
}

fn upper_first_half(s: &str) -> String {
    let half = s.len() / 2;
    s.char_indices()
        .map(|(i, c)| if i < half { c.to_ascii_uppercase() } else { c })
        .collect()
}

/// A lifetime claim: an offset from `NOW` and a representation.
fn time_claim(
    b: &mut Bytes<'_>,
    offsets: &[i64],
    good: impl Fn(i64) -> bool,
    bad: Option<&'static str>,
) -> (Option<Value>, Verdict) {
    let off = offsets[b.below(offsets.len())];
    let secs = NOW + off;
    let by_offset = if good(off) { Good } else { Bad(bad) };
    match b.below(14) {
        0 => (Some(json!(secs.to_string())), by_offset),
        1 => (Some(json!(secs)), by_offset),
        2 => (Some(json!(format!(" {secs} "))), by_offset),
        // a fraction is cut off
        3 => (Some(json!(secs as f64 + 0.5)), by_offset),
        4 => (Some(json!(format!("+{secs}"))), Bad(bad)),
        5 => (Some(json!("")), Bad(bad)),
        6 => (Some(json!("-5")), Bad(bad)),
        7 => (Some(json!(true)), Bad(bad)),
        8 => (None, Bad(bad)),
        9 => (Some(json!(1e300)), Bad(bad)),
        10 => (Some(json!(u64::MAX)), Bad(bad)),
        11 => (Some(json!(i64::MAX.to_string())), Bad(bad)),
        12 => (Some(json!(format!("{secs}.0"))), Bad(bad)),
        _ => (Some(json!(b.string())), Unknown),
    }
}

fn build_claims(b: &mut Bytes<'_>) -> Built {
    let mut verdicts = Vec::new();
    let mut claims = Map::new();

    let (key, v) = match b.below(5) {
        0 | 1 => (primary_key(), Good),
        2 => (secondary_key(), Good),
        // the text of a base64 secret is not its key: one key per secret, never both
        3 => (PRIMARY_SECRET.as_bytes().to_vec(), Bad(SIG)),
        _ => (b"some other add-in's secret".to_vec(), Bad(SIG)),
    };
    verdicts.push(("key", v));

    let (header, v) = match b.below(9) {
        0 => (json!({"typ":"JWT","alg":"HS256"}), Good),
        1 => (json!({"alg":"HS256"}), Good),
        2 => (json!({"typ":"JWT","alg":"HS256","kid":"k1"}), Good),
        3 => (json!({"typ":"JWT","alg":"none"}), Bad(ALG)),
        4 => (json!({"typ":"JWT","alg":"HS512"}), Bad(ALG)),
        5 => (json!({"typ":"JWT","alg":"RS256"}), Bad(ALG)),
        6 => (json!({"typ":"JWT","alg":"hs256"}), Bad(ALG)),
        7 => (json!({"typ":"JWT"}), Bad(MALFORMED)),
        _ => (json!({"typ":"JWT","alg":b.string()}), Unknown),
    };
    verdicts.push(("header", v));

    // The realm as the audience writes it; the other claims may write it in another case.
    let realm = if b.byte() & 1 == 0 {
        REALM.to_string()
    } else {
        REALM.to_ascii_uppercase()
    };
    let other_case = |r: &str| {
        if r == REALM {
            REALM.to_ascii_uppercase()
        } else {
            REALM.to_string()
        }
    };
    let ours = format!("{CLIENT_ID}/{AUDIENCE_HOST}");
    let (aud, v) = match b.below(16) {
        0 => (Some(json!(format!("{ours}@{realm}"))), Good),
        1 => (
            Some(json!(format!("{}@{realm}", ours.to_ascii_uppercase()))),
            Good,
        ),
        2 => (
            Some(json!(format!("{}@{realm}", upper_first_half(&ours)))),
            Good,
        ),
        3 => (
            Some(json!(format!(
                "11111111-7de2-4d05-aacf-52118008c44e/{AUDIENCE_HOST}@{realm}"
            ))),
            Bad(AUD),
        ),
        4 => (
            Some(json!(format!("{CLIENT_ID}/evil.com@{realm}"))),
            Bad(AUD),
        ),
        5 => (
            Some(json!(format!("{CLIENT_ID}/{AUDIENCE_HOST}:443@{realm}"))),
            Bad(AUD),
        ),
        6 => (Some(json!(ours.clone())), Bad(AUD)),
        7 => (Some(json!(format!("{ours}@not-a-guid"))), Bad(AUD)),
        8 => (Some(json!(format!("{ours}@{realm}@{realm}"))), Bad(AUD)),
        9 => (Some(json!(format!("{ours}@{realm} "))), Bad(AUD)),
        10 => (Some(json!(42)), Bad(AUD)),
        11 => (Some(json!([format!("{ours}@{realm}")])), Bad(AUD)),
        12 => (None, Bad(AUD)),
        // non-ASCII case folding is not case-insensitivity: "İ" is not "i"
        13 => (
            Some(json!(format!("{CLIENT_ID}/FABR\u{130}KAM.COM@{realm}"))),
            Bad(AUD),
        ),
        14 => (Some(json!(format!("{ours}/@{realm}"))), Bad(AUD)),
        _ => (Some(json!(b.string())), Unknown),
    };
    if let Some(aud) = aud {
        claims.insert("aud".into(), aud);
    }
    verdicts.push(("aud", v));

    for (name, principal, other_principal) in [
        ("iss", ACS_PRINCIPAL, SHAREPOINT_PRINCIPAL),
        ("appctxsender", SHAREPOINT_PRINCIPAL, ACS_PRINCIPAL),
    ] {
        let (value, v) = match b.below(10) {
            0 => (Some(json!(format!("{principal}@{realm}"))), Good),
            1 => (
                Some(json!(format!(
                    "{}@{}",
                    principal.to_ascii_uppercase(),
                    other_case(&realm)
                ))),
                Good,
            ),
            2 => (Some(json!(format!("{other_principal}@{realm}"))), Bad(ISS)),
            3 => (Some(json!(format!("{principal}@{OTHER_REALM}"))), Bad(ISS)),
            4 => (Some(json!(principal)), Bad(ISS)),
            5 => (Some(json!(format!("@{realm}"))), Bad(ISS)),
            6 => (None, Bad(ISS)),
            7 => (Some(json!(7)), Bad(if name == "iss" { None } else { ISS })),
            8 => (
                Some(json!(format!("{principal}@{realm}@{realm}"))),
                Bad(ISS),
            ),
            _ => (Some(json!(b.string())), Unknown),
        };
        if let Some(value) = value {
            claims.insert(name.into(), value);
        }
        verdicts.push((name, v));
    }

    let skew = CLOCK_SKEW_SECONDS;
    let (exp, v) = time_claim(
        b,
        &[
            11 * 3600,
            -12 * 3600,
            -skew - 1,
            -skew,
            -skew + 1,
            -1,
            0,
            1,
            3600,
            10 * 365 * 86400,
        ],
        |off| off >= -skew,
        EXPIRED,
    );
    if let Some(exp) = exp {
        claims.insert("exp".into(), exp);
    }
    verdicts.push(("exp", v));
    let (nbf, v) = time_claim(
        b,
        &[
            -3600,
            -12 * 3600,
            -1,
            0,
            1,
            skew - 1,
            skew,
            skew + 1,
            3600,
            365 * 86400,
        ],
        |off| off <= skew,
        NOT_YET,
    );
    if let Some(nbf) = nbf {
        claims.insert("nbf".into(), nbf);
    }
    verdicts.push(("nbf", v));

    let (sts, sts_v) = match b.below(18) {
        0 => (
            Some(json!(
                "https://accounts.accesscontrol.windows.net/tokens/OAuth/2"
            )),
            Good,
        ),
        1 => (
            Some(json!(
                "https://accounts.accesscontrol.chinacloudapi.cn/tokens/OAuth/2"
            )),
            Good,
        ),
        2 => (
            Some(json!(
                "HTTPS://Accounts.AccessControl.Windows.NET/tokens/OAuth/2"
            )),
            Good,
        ),
        3 => (
            Some(json!("https://accounts.accesscontrol.windows.net:443/x")),
            Good,
        ),
        4 => (
            Some(json!(" https://accounts.accesscontrol.windows.net/ ")),
            Good,
        ),
        5 => (
            Some(json!(
                "http://accounts.accesscontrol.windows.net/tokens/OAuth/2"
            )),
            Bad(STS),
        ),
        6 => (
            Some(json!(
                "https://accounts.accesscontrol.windows.net.evil.com/"
            )),
            Bad(STS),
        ),
        7 => (
            Some(json!("https://user@accounts.accesscontrol.windows.net/")),
            Bad(STS),
        ),
        8 => (
            Some(json!("https://accounts.accesscontrol.windows.net./")),
            Bad(STS),
        ),
        9 => (
            Some(json!("https://accounts.accesscontrol.windows.net:444/")),
            Bad(STS),
        ),
        10 => (
            Some(json!(
                "https://evil.com\\@accounts.accesscontrol.windows.net/"
            )),
            Bad(STS),
        ),
        11 => (
            Some(json!("https://login.microsoftonline.de/tokens/OAuth/2")),
            Bad(STS),
        ),
        12 => (Some(json!("not a url")), Bad(STS)),
        13 => (Some(json!("")), Bad(MALFORMED)),
        14 => (None, Bad(MALFORMED)),
        15 => (Some(json!("https://127.0.0.1/")), Bad(STS)),
        16 => (Some(json!(5)), Bad(MALFORMED)),
        _ => (Some(json!(b.string())), Unknown),
    };
    let (cache_key, key_v) = match b.below(6) {
        0 => (
            Some(json!("KQAIUpDUD0sm5Tr83U+jZGYVuPPCPu8BGwoWiAACqNw=")),
            Good,
        ),
        1 => (Some(json!("")), Bad(MALFORMED)),
        2 => (Some(json!("  ")), Bad(MALFORMED)),
        3 => (None, Bad(MALFORMED)),
        4 => (Some(json!(12)), Bad(MALFORMED)),
        _ => {
            let s = b.string();
            let v = if s.trim().is_empty() {
                Bad(MALFORMED)
            } else {
                Good
            };
            (Some(json!(s)), v)
        }
    };
    let mut appctx = Map::new();
    if let Some(k) = cache_key {
        appctx.insert("CacheKey".into(), k);
    }
    if let Some(s) = sts {
        appctx.insert("SecurityTokenServiceUri".into(), s);
    }
    let appctx = Value::Object(appctx);
    let (appctx, v) = match b.below(4) {
        0 => (Some(json!(appctx.to_string())), Good),
        // an object where a JSON string is due
        1 => (Some(appctx), Bad(MALFORMED)),
        2 => (Some(json!("{not json")), Bad(MALFORMED)),
        _ => (None, Bad(MALFORMED)),
    };
    if let Some(a) = appctx {
        claims.insert("appctx".into(), a);
    }
    verdicts.push(("appctx", v));
    if v == Good {
        verdicts.push(("CacheKey", key_v));
        verdicts.push(("SecurityTokenServiceUri", sts_v));
    }

    let (rt, v) = match b.below(5) {
        0 => (
            Some(json!(
                "IAAAAC1Lv5w0OrcFAmJx0xk6rBhPSGbD3FbXUR8sXfp4P-8bAAAAAA"
            )),
            Good,
        ),
        1 => (Some(json!("")), Bad(MALFORMED)),
        2 => (None, Bad(MALFORMED)),
        3 => (Some(json!(["rt"])), Bad(MALFORMED)),
        _ => {
            let s = b.string();
            let v = if s.is_empty() { Bad(MALFORMED) } else { Good };
            (Some(json!(s)), v)
        }
    };
    if let Some(rt) = rt {
        claims.insert("refreshtoken".into(), rt);
    }
    verdicts.push(("refreshtoken", v));

    match b.below(4) {
        0 => {
            claims.insert("isbrowserhostedapp".into(), json!("true"));
        }
        1 => {
            claims.insert("isbrowserhostedapp".into(), json!(false));
        }
        2 => {}
        _ => {
            claims.insert(format!("x-{}", b.string()), json!(b.string()));
        }
    }

    Built {
        header,
        key,
        claims,
        verdicts,
    }
}

/// Target `context_token_signed`: the input becomes a token signed with a key of the fixed
/// configuration (or a wrong one), so the checks after the signature are reached.
///
/// First byte even: the rest of the input is the JSON payload, as raw bytes, under the header
/// and key that byte picks. First byte odd: the rest picks each claim from realistic good and
/// bad variants (see `build_claims`), and the verdict is predicted: all parts good means the
/// token validates; exactly one bad part means it is refused with that part's error code.
pub fn context_token_signed(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let now = now();
    if mode & 1 == 0 {
        let key = match (mode >> 1) & 3 {
            0 | 1 => primary_key(),
            2 => secondary_key(),
            _ => PRIMARY_SECRET.as_bytes().to_vec(),
        };
        let header: &[u8] = match (mode >> 3) & 3 {
            0 => HS256_HEADER.as_bytes(),
            1 => br#"{"alg":"HS256"}"#,
            2 => br#"{"typ":"JWT","alg":"none"}"#,
            _ => br#"{"typ":"JWT","alg":"HS512"}"#,
        };
        let _ = check_token(&sign_raw(header, rest, &key), now);
        return;
    }

    let built = build_claims(&mut Bytes::new(rest));
    let token = mint_with_header(&built.header, &Value::Object(built.claims), &built.key);
    let result = check_token(&token, now);

    if built.verdicts.iter().any(|(_, v)| *v == Unknown) {
        return;
    }
    let bad: Vec<_> = built.verdicts.iter().filter(|(_, v)| *v != Good).collect();
    match (bad.as_slice(), &result) {
        ([], Ok(_)) => {}
        ([], Err(e)) => panic!("a token with every claim right is refused: {e:?}"),
        ([(part, _), ..], Ok(_)) => {
            panic!("a token with a wrong {part} validates")
        }
        ([(part, Bad(Some(code)))], Err(e)) => {
            assert_eq!(e.code(), *code, "a token whose only fault is its {part}")
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------
// Hosts.
// ---------------------------------------------------------------------------------------------

/// One allowlist entry, as the README states the rules, normalised by the URL parser.
#[derive(Debug)]
enum Entry {
    Exact(String, Option<u16>),
    Suffix(String),
}

fn entries(list: &str) -> Vec<Entry> {
    list.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .filter_map(|e| match e.strip_prefix("*.") {
            Some(s) => Url::parse(&format!("https://{s}/"))
                .ok()
                .and_then(|u| u.host_str().map(|h| Entry::Suffix(format!(".{h}")))),
            None => Url::parse(&format!("https://{e}/"))
                .ok()
                .and_then(|u| u.host_str().map(|h| Entry::Exact(h.to_string(), u.port()))),
        })
        .collect()
}

fn host_listed(entries: &[Entry], host: &str, port: Option<u16>) -> bool {
    entries.iter().any(|e| match e {
        Entry::Exact(h, p) => h == host && *p == port,
        Entry::Suffix(s) => {
            port.is_none()
                && host.len() > s.len()
                && host.ends_with(s.as_str())
                && host[..host.len() - s.len()]
                    .split('.')
                    .all(|label| !label.is_empty())
        }
    })
}

fn loopback(host: Option<Host<&str>>) -> bool {
    match host {
        Some(Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(Host::Ipv4(a)) => IpAddr::V4(a).is_loopback(),
        Some(Host::Ipv6(a)) => IpAddr::V6(a).is_loopback(),
        None => false,
    }
}

/// Should `raw` pass `list`? The README's rules, from the parsed URL.
fn url_allowed(entries: &[Entry], raw: &str) -> bool {
    let Ok(url) = Url::parse(raw.trim()) else {
        return false;
    };
    let Some(host) = url.host_str() else {
        return false;
    };
    let https = url.scheme() == "https";
    let http = url.scheme() == "http";
    (https || http)
        && !url.cannot_be_a_base()
        && url.username().is_empty()
        && url.password().is_none()
        && host_listed(entries, host, url.port())
        && (https
            || loopback(url.host())
                && entries
                    .iter()
                    .any(|e| matches!(e, Entry::Exact(h, p) if h == host && *p == url.port())))
}

/// The invariants of one allowlist on one input: `check_url`, `check_site_url`,
/// `check_authority`, each against the README's rules.
pub fn assert_hosts_verdicts(list_text: &str, list: &HostAllowlist, raw: &str) {
    let entries = entries(list_text);
    let expected = url_allowed(&entries, raw);
    let checked = list.check_url(raw);
    assert_eq!(
        checked.is_ok(),
        expected,
        "{raw:?} against {list:?}: {checked:?}"
    );
    if let Ok(url) = &checked {
        assert!(url.username().is_empty() && url.password().is_none());
        let host = url.host_str().unwrap_or_default();
        assert!(host_listed(&entries, host, url.port()), "{url} is listed");
        assert!(
            url.scheme() == "https" || loopback(url.host()),
            "http only for loopback: {url}"
        );
    }

    let site = list.check_site_url(raw);
    assert_eq!(
        site.is_ok(),
        checked.is_ok(),
        "site URL and URL agree on {raw:?}"
    );
    if let (Ok(site), Ok(url)) = (&site, &checked) {
        assert_eq!(site.url().host_str(), url.host_str());
        assert_eq!(site.url().port(), url.port());
        assert_eq!(site.url().scheme(), url.scheme());
        assert!(site.url().query().is_none() && site.url().fragment().is_none());
        assert!(
            !site.as_str().ends_with('/'),
            "{site} has no trailing slash"
        );
        let again = list.check_site_url(site.as_str());
        assert_eq!(again.as_ref(), Ok(site), "a site URL checks as itself");
        assert_eq!(
            list.check_authority(&site.authority()).as_deref(),
            Ok(site.authority().as_str()),
            "a site's authority checks as itself"
        );
        let joined = Url::parse(&site.join("_layouts/15/AppRedirect.aspx"))
            .expect("a joined site URL parses");
        assert_eq!(
            joined.host_str(),
            url.host_str(),
            "joining stays on the host"
        );
        assert_eq!(joined.port(), url.port());
    }

    let authority = list.check_authority(raw);
    if let Ok(a) = &authority {
        assert!(
            !a.chars()
                .any(|c| matches!(c, '/' | '\\' | '@' | '?' | '#') || c.is_whitespace()),
            "{a:?} is a bare authority"
        );
        let url = Url::parse(&format!("https://{a}/")).expect("an authority makes a URL");
        assert!(
            host_listed(&entries, url.host_str().unwrap_or_default(), url.port()),
            "{a} is listed"
        );
        assert_eq!(list.check_authority(a).as_ref(), Ok(a), "idempotent");
    }
}

/// Known finding: an allowlist entry may hold `;`, quotes and the like, which break the CSP
/// header its sources go into (SECURITY.md).
pub const CSP_SOURCE: &str = "allowlist-csp-source";
/// Known finding: `*.com.` passes as a wildcard of "two labels" (SECURITY.md).
pub const WILDCARD_LABELS: &str = "allowlist-wildcard-labels";

/// Whether the check of a reported finding is switched off for this process, so that a long
/// fuzzing run can explore past it: `SPKEEPER_FUZZ_SKIP_KNOWN=id,id`. Never set by the tests:
/// until the finding is fixed, its reproducer in `fuzz/regressions/` fails the replay.
fn skipping(id: &str) -> bool {
    static SKIP: OnceLock<Vec<String>> = OnceLock::new();
    SKIP.get_or_init(|| {
        std::env::var("SPKEEPER_FUZZ_SKIP_KNOWN")
            .map(|v| v.split(',').map(|s| s.trim().to_string()).collect())
            .unwrap_or_default()
    })
    .iter()
    .any(|s| s == id)
}

/// The invariants of a parsed allowlist itself: wildcards only where allowed, each of at least
/// two non-empty labels; CSP sources that cannot break out of the header.
pub fn assert_allowlist_shape(list_text: &str, list: &HostAllowlist, wildcards: bool) {
    let entries = entries(list_text);
    let sources = list.origins();
    assert_eq!(
        sources.len(),
        list_text
            .split(',')
            .filter(|e| !e.trim().is_empty())
            .count(),
        "one CSP source per entry"
    );
    assert_eq!(sources.len(), entries.len(), "every entry is a host");
    for (source, entry) in sources.iter().zip(&entries) {
        assert!(
            skipping(CSP_SOURCE)
                || !source.chars().any(|c| c.is_whitespace()
                    || c.is_control()
                    || matches!(c, ';' | ',' | '\'' | '"')),
            "the CSP source {source:?} stays one source"
        );
        match entry {
            Entry::Suffix(s) => {
                assert!(wildcards, "wildcards only where allowed: {list_text:?}");
                let labels: Vec<&str> = s[1..].split('.').collect();
                assert!(
                    skipping(WILDCARD_LABELS)
                        || labels.len() >= 2 && labels.iter().all(|l| !l.is_empty()),
                    "a wildcard covers a domain of at least two labels: *{s} from {list_text:?}"
                );
                assert_eq!(source, &format!("https://*{s}"));
            }
            Entry::Exact(h, p) => {
                let authority = match p {
                    Some(p) => format!("{h}:{p}"),
                    None => h.clone(),
                };
                let loop_host = Url::parse(&format!("http://{h}/"))
                    .ok()
                    .is_some_and(|u| loopback(u.host()));
                let scheme = if loop_host { "http" } else { "https" };
                assert_eq!(source, &format!("{scheme}://{authority}"));
            }
        }
    }
}

/// The invariant of realm discovery: a realm found is a lower-case GUID named as the `realm`
/// of a Bearer challenge among the values.
pub fn assert_realm_verdict(values: &[&str]) {
    let Some(realm) = realm_from_challenge(values.iter().copied()) else {
        return;
    };
    assert!(is_guid_text(&realm), "{realm:?} is a GUID");
    assert_eq!(realm, realm.to_ascii_lowercase());
    assert!(
        values.iter().any(|v| {
            let v = v.trim();
            v.get(..6).is_some_and(|s| s.eq_ignore_ascii_case("bearer"))
                && v[6..].starts_with(char::is_whitespace)
                && v.to_ascii_lowercase().contains(&realm)
                && v.to_ascii_lowercase().contains("realm")
        }),
        "{realm} comes from a Bearer challenge in {values:?}"
    );
}

/// Target `hosts`. The input is `[list]\n[url]`: an empty list line means `SP_HOSTS`; a list
/// line starting with `!` is parsed as an STS list (no wildcards). The URL line (the rest) is
/// checked as a URL, a site URL and a bare authority; its lines are also read as
/// `WWW-Authenticate` values.
pub fn hosts(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (head, rest) = text.split_once('\n').unwrap_or(("", &text));
    let (wildcards, list_text) = match head.strip_prefix('!') {
        Some(l) => (false, l),
        None => (true, head),
    };
    let list_text = if list_text.trim().is_empty() {
        SP_HOSTS
    } else {
        list_text
    };
    let (list_text, list, wildcards) = match HostAllowlist::parse(list_text, wildcards) {
        Ok(l) => (list_text, l, wildcards),
        // a list the parser refuses: check the URL against SP_HOSTS instead
        Err(_) => {
            let fixed = HostAllowlist::parse(SP_HOSTS, true)
                .unwrap_or_else(|e| panic!("SP_HOSTS parses: {e}"));
            (SP_HOSTS, fixed, true)
        }
    };
    assert_allowlist_shape(list_text, &list, wildcards);
    assert_hosts_verdicts(list_text, &list, rest);
    let values: Vec<&str> = rest.split('\n').collect();
    assert_realm_verdict(&values);
}

// ---------------------------------------------------------------------------------------------
// Renew links and session cookies.
// ---------------------------------------------------------------------------------------------

/// Target `renew_link`. The input picks a grant, a signing time and a checking time, and then,
/// for each of grant, `exp`, `sig` and a session cookie, either the genuine value the signer
/// produced or one made from the input. The verdict is predicted exactly: a renew link
/// verifies iff grant, `exp` and `sig` are the signer's own for that grant, before `exp`;
/// otherwise it is a bad signature (expired only when genuine). The same for the cookie, and a
/// cookie's parts never pass as a renew link, nor a link as a cookie, nor either under another
/// key.
pub fn renew_link(data: &[u8]) {
    let mut b = Bytes::new(data);
    let flags = b.byte();
    let grant_bytes: Vec<u8> = (0..16).map(|_| b.byte()).collect();
    let grant = GrantId::parse(&hex::encode(&grant_bytes))
        .unwrap_or_else(|| unreachable!("32 lowercase hex digits are a grant id"));
    // signed within about ±68 years of NOW, in 64-second steps
    let signed_at = at(NOW + i64::from(b.i32() / 32) * 64);
    let day = 86_400;
    let checked_at = signed_at
        + Duration::seconds(match b.below(8) {
            0 => 0,
            1 => 44 * day,
            2 => 45 * day - 1,
            3 => 45 * day,
            4 => 12 * 3600 - 1,
            5 => 12 * 3600,
            6 => -day,
            _ => i64::from(b.i32()),
        });
    let fuzz_grant = b.string();
    let fuzz_exp = b.string();
    let fuzz_sig = b.string();
    let fuzz_cookie = b.string();

    let signer = LinkSigner::new(LINK_KEY);
    let other = LinkSigner::new(b"another deployment's link key, also long");
    let public = Url::parse(PUBLIC_URL).unwrap_or_else(|_| unreachable!("a URL"));
    let link =
        Url::parse(&signer.renew_url(&public, &grant, signed_at)).expect("a renew URL is a URL");
    assert_eq!(
        link.path(),
        format!("/renew/{grant}"),
        "the link names its grant"
    );
    let query = |name: &str| {
        link.query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
            .expect("the link has exp and sig")
    };
    let (genuine_exp, genuine_sig) = (query("exp"), query("sig"));
    let cookie = signer.session_value(&grant, signed_at);
    let mut cookie_parts = cookie.split('.');
    let (Some(cookie_grant), Some(cookie_exp), Some(cookie_sig), None) = (
        cookie_parts.next(),
        cookie_parts.next(),
        cookie_parts.next(),
        cookie_parts.next(),
    ) else {
        panic!("a session cookie is grant.exp.sig: {cookie}")
    };
    assert_eq!(cookie_grant, grant.as_str());

    let grant_text = if flags & 1 == 0 {
        grant.as_str().to_string()
    } else {
        fuzz_grant
    };
    let exp_text = match (flags >> 1) & 3 {
        0 => genuine_exp.clone(),
        1 => fuzz_exp,
        2 => cookie_exp.to_string(),
        _ => format!("{genuine_exp}{fuzz_exp}"),
    };
    let sig_text = match (flags >> 3) & 3 {
        0 => genuine_sig.clone(),
        1 => fuzz_sig,
        2 => cookie_sig.to_string(),
        _ => format!("{genuine_sig}{fuzz_sig}"),
    };
    if let Some(g) = GrantId::parse(&grant_text) {
        let genuine = g == grant && exp_text == genuine_exp && sig_text == genuine_sig;
        let exp_secs: i64 = genuine_exp
            .parse()
            .expect("the signer writes exp in digits");
        let expected = match (genuine, checked_at.timestamp() < exp_secs) {
            (true, true) => Ok(()),
            (true, false) => Err(LinkError::Expired),
            (false, _) => Err(LinkError::BadSignature),
        };
        assert_eq!(
            signer.verify_renew(&g, &exp_text, &sig_text, checked_at),
            expected,
            "renew link {g}/{exp_text:?}/{sig_text:?} at {checked_at}"
        );
        assert_eq!(
            other.verify_renew(&g, &exp_text, &sig_text, checked_at),
            Err(LinkError::BadSignature),
            "a link never verifies under another key"
        );
        if genuine {
            let later = Duration::days(45);
            assert_eq!(exp_secs, (signed_at + later).timestamp(), "valid 45 days");
        }
    }

    let cookie_text = match (flags >> 5) & 3 {
        0 => cookie.clone(),
        1 => fuzz_cookie,
        2 => format!("{grant_text}.{exp_text}.{sig_text}"),
        _ => format!("{cookie}{fuzz_cookie}"),
    };
    let cookie_exp_secs: i64 = cookie_exp.parse().expect("the signer writes exp in digits");
    let expected = match (
        cookie_text == cookie,
        checked_at.timestamp() < cookie_exp_secs,
    ) {
        (true, true) => Ok(grant.clone()),
        (true, false) => Err(LinkError::Expired),
        (false, _) => Err(LinkError::BadSignature),
    };
    assert_eq!(
        signer.verify_session(&cookie_text, checked_at),
        expected,
        "session cookie {cookie_text:?} at {checked_at}"
    );
    assert_eq!(
        other.verify_session(&cookie_text, checked_at),
        Err(LinkError::BadSignature)
    );
}

// ---------------------------------------------------------------------------------------------
// ACS answers.
// ---------------------------------------------------------------------------------------------

/// An epoch-seconds field of an ACS answer: a string of an integer, or an integer.
fn acs_seconds(v: &Value) -> Option<i64> {
    match v {
        Value::String(s) => s.trim().parse().ok(),
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
}

/// The two fields of an OAuth2 error body, read as any typed reader reads them (serde: unknown
/// fields skipped unchecked, duplicates refused, a two-element array read by position). The
/// invariants below are about the classification, not about JSON.
#[derive(Deserialize)]
struct OAuthError {
    error: Option<String>,
    error_description: Option<String>,
}

/// `error` and `error_description`, both empty when the body is not such an error.
fn oauth_error_fields(body: &[u8]) -> (String, String) {
    serde_json::from_slice::<OAuthError>(body)
        .map(|e| {
            (
                e.error.unwrap_or_default(),
                e.error_description.unwrap_or_default(),
            )
        })
        .unwrap_or_default()
}

/// A whole AADSTS code in a description (not a prefix of a longer number).
fn mentions_code(description: &str, code: &str) -> bool {
    description.match_indices(code).any(|(i, _)| {
        !description[i + code.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit())
    })
}

/// The invariants of one ACS answer at `now`: a success parsed has a non-empty token and a
/// lifetime in (now, now + 7 days], read from the fields ACS sends; a failure is classified
/// only as the rules allow.
pub fn assert_acs_verdicts(status: u16, body: &[u8], now: DateTime<Utc>) {
    if let Ok(t) = acs::parse_success(body, now) {
        assert!(!t.token.expose_secret().is_empty(), "a token is not empty");
        assert!(t.expires_at > now, "a token is not born expired");
        assert!(
            now.checked_add_signed(MAX_ACCESS_TOKEN_LIFETIME)
                .is_some_and(|l| t.expires_at <= l),
            "a token lives at most 7 days: {:?}",
            t.expires_at
        );
        if let Ok(Value::Object(o)) = serde_json::from_slice::<Value>(body) {
            let field = |k: &str| o.get(k).filter(|v| !v.is_null());
            assert_eq!(
                field("access_token").and_then(Value::as_str),
                Some(t.token.expose_secret()),
                "the token is the answer's access_token"
            );
            if let Some(tt) = field("token_type") {
                assert!(
                    tt.as_str()
                        .is_some_and(|s| s.eq_ignore_ascii_case("bearer")),
                    "only Bearer tokens: {tt}"
                );
            }
            let expected = match (field("expires_on"), field("expires_in")) {
                (Some(on), _) => acs_seconds(on).and_then(|s| DateTime::from_timestamp(s, 0)),
                (None, Some(secs)) => acs_seconds(secs)
                    .and_then(Duration::try_seconds)
                    .and_then(|d| now.checked_add_signed(d)),
                (None, None) => None,
            };
            assert_eq!(Some(t.expires_at), expected, "the lifetime is the answer's");
            assert_eq!(
                t.resource,
                field("resource").and_then(Value::as_str).unwrap_or(""),
                "the resource is the answer's"
            );
        }
    }

    let failure = acs::classify_failure(status, body);
    let (error, description) = oauth_error_fields(body);
    let client_code = ["AADSTS7000222", "AADSTS7000215", "AADSTS700016"]
        .iter()
        .any(|c| mentions_code(&description, c));
    let grant_code = ["AADSTS700082", "AADSTS70043", "AADSTS50173"]
        .iter()
        .any(|c| mentions_code(&description, c));
    let transient_status = matches!(status, 408 | 429 | 500..=599);
    let label = match &failure {
        AcsFailure::InvalidGrant(l)
        | AcsFailure::InvalidClient(l)
        | AcsFailure::Transient(l)
        | AcsFailure::Unexpected(l) => l,
    };
    assert!(
        label.starts_with(&format!("HTTP {status}")),
        "the label names the status: {label:?}"
    );
    match &failure {
        AcsFailure::InvalidClient(_) => assert!(
            client_code || matches!(error.as_str(), "invalid_client" | "unauthorized_client"),
            "invalid client only from the client codes or errors: {failure:?}"
        ),
        AcsFailure::InvalidGrant(_) => assert!(
            !client_code && (grant_code || error == "invalid_grant"),
            "relaunch only from invalid_grant or its codes: {failure:?}"
        ),
        AcsFailure::Transient(_) => assert!(
            !client_code
                && !grant_code
                && (transient_status
                    || matches!(error.as_str(), "temporarily_unavailable" | "server_error")),
            "transient only from 408/429/5xx or the transient errors: {failure:?}"
        ),
        AcsFailure::Unexpected(_) => assert!(
            !client_code && !grant_code && !transient_status,
            "a classifiable answer is not unexpected: {failure:?}"
        ),
    }
    if client_code {
        assert!(matches!(failure, AcsFailure::InvalidClient(_)));
    } else if grant_code || error == "invalid_grant" {
        assert!(
            matches!(failure, AcsFailure::InvalidGrant(_)),
            "{error} {description:?}: {failure:?}"
        );
    }
    assert_eq!(
        failure.is_transient(),
        matches!(failure, AcsFailure::Transient(_))
    );
}

/// Target `acs_response`: two bytes of HTTP status (big-endian), one byte choosing `now`
/// (mostly `NOW`; the ends of the calendar too), then the body.
pub fn acs_response(data: &[u8]) {
    let mut b = Bytes::new(data);
    let status = u16::from_be_bytes([b.byte(), b.byte()]);
    let now = match b.byte() {
        253 => DateTime::<Utc>::UNIX_EPOCH,
        254 => DateTime::<Utc>::MAX_UTC,
        255 => DateTime::<Utc>::MIN_UTC,
        _ => now(),
    };
    assert_acs_verdicts(status, b.data, now);
}

// ---------------------------------------------------------------------------------------------
// The launch form.
// ---------------------------------------------------------------------------------------------

fn first_value<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, v)| k == name && !v.trim().is_empty())
        .map(|(_, v)| v.as_str())
}

/// The invariants of a parsed launch: the context token is found under Microsoft's names only,
/// never blank, from the form when the form has one; parameters come from the query first.
pub fn assert_launch_verdicts(input: &LaunchInput) {
    let names = ["SPAppToken", "AppContext", "AppContextToken", "AccessToken"];
    assert_eq!(
        TOKEN_PARAMS, names,
        "Microsoft's four names, SPAppToken first"
    );
    let named = |pairs: &[(String, String)]| {
        pairs
            .iter()
            .filter(|(k, v)| names.contains(&k.as_str()) && !v.trim().is_empty())
            .map(|(_, v)| v.clone())
            .collect::<Vec<_>>()
    };
    let (in_form, in_query) = (named(&input.form), named(&input.query));
    match input.context_token() {
        None => assert!(
            in_form.is_empty() && in_query.is_empty(),
            "a token under one of Microsoft's names is found"
        ),
        Some(token) => {
            assert!(!token.trim().is_empty(), "a token found is not blank");
            if in_form.is_empty() {
                assert!(in_query.iter().any(|t| t == token), "from the query");
            } else {
                assert!(in_form.iter().any(|t| t == token), "form before query");
            }
            // the first of the names present wins, SPAppToken first
            let first_name = names
                .iter()
                .find(|n| first_value(&input.form, n).is_some())
                .or_else(|| {
                    names
                        .iter()
                        .find(|n| first_value(&input.query, n).is_some())
                });
            let source = if in_form.is_empty() {
                &input.query
            } else {
                &input.form
            };
            assert_eq!(
                first_name.and_then(|n| first_value(source, n)),
                Some(token),
                "the first of Microsoft's names present, first occurrence"
            );
        }
    }
    for name in [
        "SPHostUrl",
        "SPAppWebUrl",
        "SPErrorInfo",
        "SPLanguage",
        "SPClientTag",
        "SPProductNumber",
        "SPAppToken",
        "",
    ] {
        let expected = first_value(&input.query, name).or_else(|| first_value(&input.form, name));
        assert_eq!(
            input.param(name),
            expected,
            "{name}: query first, then form"
        );
    }
}

/// Target `launch_form`: `[query]\n[form body]` (no newline: the whole input is the body and
/// there is no query). The launch's pure steps run on what is found: the token is validated
/// and `SPHostUrl`/`SPAppWebUrl` are checked against `SP_HOSTS`, each with its invariants.
pub fn launch_form(data: &[u8]) {
    let (query, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (Some(String::from_utf8_lossy(&data[..i])), &data[i + 1..]),
        None => (None, data),
    };
    let input = LaunchInput::parse(body, query.as_deref());
    assert_launch_verdicts(&input);
    if let Some(token) = input.context_token() {
        let _ = check_token(token, now());
    }
    let list = HostAllowlist::parse(SP_HOSTS, true).unwrap_or_else(|e| panic!("SP_HOSTS: {e}"));
    for name in ["SPHostUrl", "SPAppWebUrl"] {
        if let Some(url) = input.param(name) {
            assert_hosts_verdicts(SP_HOSTS, &list, url);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Every target by name, and the seeds of its corpus.
// ---------------------------------------------------------------------------------------------

/// The targets, as named in `fuzz/Cargo.toml` and `fuzz/corpus/`.
pub const TARGETS: [&str; 6] = [
    "context_token",
    "context_token_signed",
    "hosts",
    "renew_link",
    "acs_response",
    "launch_form",
];

/// Runs target `name` on `data`. Panics on an unknown name, so a corpus directory without a
/// target cannot pass unnoticed.
pub fn run(name: &str, data: &[u8]) {
    match name {
        "context_token" => context_token(data),
        "context_token_signed" => context_token_signed(data),
        "hosts" => hosts(data),
        "renew_link" => renew_link(data),
        "acs_response" => acs_response(data),
        "launch_form" => launch_form(data),
        other => panic!("no fuzz target named {other:?}"),
    }
}

/// A token of Microsoft's sample shape, valid at `NOW`, signed with `key`.
fn sample_token(claims: &Value, key: &[u8]) -> String {
    sign_raw(HS256_HEADER.as_bytes(), claims.to_string().as_bytes(), key)
}

fn with(mut claims: Value, name: &str, value: Value) -> Value {
    claims[name] = value;
    claims
}

/// The realistic inputs each corpus starts from (written by `fuzz_replay`'s ignored
/// `write_seed_corpora`; replayed by the stable tests, so they stay meaningful).
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    let sample = sample_claims(NOW);
    let valid = sample_token(&sample, &primary_key());
    let url_enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let strings: Vec<String> = match target {
        "context_token" => {
            let numeric = with(
                with(sample.clone(), "nbf", json!(NOW - 3600)),
                "exp",
                json!(NOW + 11 * 3600),
            );
            vec![
                valid.clone(),
                sample_token(&sample, &secondary_key()),
                sample_token(&numeric, &primary_key()),
                // Microsoft's documented example as it is: expired long before NOW
                sample_token(
                    &with(
                        with(sample.clone(), "nbf", json!("1335822895")),
                        "exp",
                        json!("1335866095"),
                    ),
                    &primary_key(),
                ),
                sign_raw(
                    br#"{"typ":"JWT","alg":"none"}"#,
                    sample.to_string().as_bytes(),
                    &primary_key(),
                ),
                sign_raw(
                    br#"{"typ":"JWT","alg":"RS256"}"#,
                    sample.to_string().as_bytes(),
                    &primary_key(),
                ),
                sign_raw(
                    br#"{"typ":"JWT","alg":"HS512"}"#,
                    sample.to_string().as_bytes(),
                    &primary_key(),
                ),
                format!("  {valid}\n"),
                format!("{valid}="),
                format!("{valid}.x"),
                "e30.e30.".into(),
                "a.b.c".into(),
                String::new(),
            ]
        }
        "context_token_signed" => {
            let mut out: Vec<Vec<u8>> = Vec::new();
            // raw payloads under each key and header the mode byte picks
            for mode in [0u8, 4, 6, 8, 16, 24] {
                let mut v = vec![mode];
                v.extend_from_slice(sample.to_string().as_bytes());
                out.push(v);
            }
            let mut dup = vec![0u8];
            dup.extend_from_slice(
                format!(
                    "{{\"aud\":\"x\",{}",
                    sample.to_string().trim_start_matches('{')
                )
                .as_bytes(),
            );
            out.push(dup);
            // structured: every part good, then each part alone through its variants
            out.push(vec![1]);
            for position in 0..16 {
                for variant in 1..18u8 {
                    let mut v = vec![1u8; 1];
                    v.extend(std::iter::repeat_n(0u8, position));
                    v.push(variant);
                    out.push(v);
                }
            }
            return out;
        }
        "hosts" => [
            "\nhttps://contoso.sharepoint.com/sites/dev/",
            "\nhttps://Contoso.SharePoint.com:443/sites/Dev/?SPLanguage=en-US#x",
            "\nhttps://team.fabrikam.com/sites/a",
            "\nhttps://fabrikam.com/",
            "\nhttps://a.b.fabrikam.com./",
            "\nhttps://a..fabrikam.com/",
            "\nhttps://contoso.sharepoint.com.evil.com/",
            "\nhttps://evilcontoso.sharepoint.com/",
            "\nhttps://evil.com\\@contoso.sharepoint.com/",
            "\nhttps://contoso.sharepoint.com@evil.com/",
            "\nhttps://user:pass@contoso.sharepoint.com/",
            "\nhttp://contoso.sharepoint.com/",
            "\nhttp://127.0.0.1:8080/launch",
            "\nhttp://0x7f.1:8080/",
            "\nhttp://localhost:8080/x",
            "\nhttps://sp.local:8443/",
            "\nhttps://sp.local/",
            "\nhttps://[::1]:8443/",
            "\nhttp://[0:0:0:0:0:0:0:1]:8443/",
            "\nhttps://a.xn--bcher-kva.example/",
            "\nhttps://a.bücher.example/",
            "\nhttps://contoso.share\tpoint.com/",
            "\njavascript:alert(1)",
            "\n//contoso.sharepoint.com/",
            "\ncontoso.sharepoint.com",
            "\nContoso.SharePoint.com",
            "\n127.0.0.1:8080",
            "\ncontoso.sharepoint.com:443",
            "\nBearer realm=\"040f2415-e6e3-4480-96ce-26ef73275f73\",client_id=\"00000003-0000-0ff1-ce00-000000000000\",trusted_issuers=\"00000001-0000-0000-c000-000000000000@*\",authorization_uri=\"https://login.windows.net/common/oauth2/authorize\"",
            "\nNTLM\nBearer realm=\"040F2415-E6E3-4480-96CE-26EF73275F73\",client_id=\"00000003-0000-0ff1-ce00-000000000000\"",
            "\nbearer  client_id=\"x\", realm=040f2415-e6e3-4480-96ce-26ef73275f73",
            "\nBasic realm=\"040f2415-e6e3-4480-96ce-26ef73275f73\"",
            "!accounts.accesscontrol.windows.net,accounts.accesscontrol.chinacloudapi.cn\nhttps://accounts.accesscontrol.windows.net/tokens/OAuth/2",
            "!accounts.accesscontrol.windows.net\nhttps://login.microsoftonline.de/tokens/OAuth/2",
            "!127.0.0.1:9000\nhttp://127.0.0.1:9000/tokens/OAuth/2",
            "*.sharepoint.com, sp.example.com:8443\nhttps://x.sharepoint.com",
            "*.sharepoint.com\nhttps://sharepoint.com",
            "sp.example.com:8080\nhttp://sp.example.com:8080/",
            "*.com\nhttps://evil.com/",
            "[::1]:8080,localhost\nhttp://[::1]:8080/",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        "renew_link" => {
            let mut out = vec![Vec::new()];
            for flags in [0u8, 1, 2, 4, 6, 8, 16, 24, 32, 64, 96, 0x7f] {
                for checked in 0..8u8 {
                    let mut v = vec![flags];
                    v.extend_from_slice(&[0x5a; 16]);
                    v.extend_from_slice(&[0, 0, 0, 0, checked, 0, 0, 0x10, 0]);
                    for s in ["0123456789abcdef0123456789abcdef", "1780272000", "AAAA", "x.y.z"] {
                        v.push(s.len() as u8);
                        v.extend_from_slice(s.as_bytes());
                    }
                    out.push(v);
                }
            }
            return out;
        }
        "acs_response" => {
            let resource = format!(
                "00000003-0000-0ff1-ce00-000000000000/contoso.sharepoint.com@{REALM}"
            );
            let trace = "\\r\\nTrace ID: 2f6c0d0e-4b9a-8c7d-6e5f-4a3b2c1d0e9f\\r\\nCorrelation ID: 9d1f0c2e-3b4a-5c6d-7e8f-9a0b1c2d3e4f\\r\\nTimestamp: 2026-06-01 00:00:00Z";
            let mut out = Vec::new();
            let answers: Vec<(u16, u8, String)> = vec![
                (200, 0, format!(r#"{{"token_type":"Bearer","access_token":"eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.e30.sig","expires_in":"43199","not_before":"{NOW}","expires_on":"{}","resource":"{resource}"}}"#, NOW + 43199)),
                (200, 0, r#"{"token_type":"Bearer","access_token":"a","expires_in":"3600"}"#.into()),
                (200, 0, r#"{"access_token":"a","expires_in":3600}"#.into()),
                (200, 0, r#"{"access_token":"a","expires_on":"9999999999"}"#.into()),
                (200, 254, r#"{"access_token":"a","expires_in":"3600"}"#.into()),
                (200, 255, r#"{"access_token":"a","expires_in":"3600"}"#.into()),
                (200, 253, r#"{"access_token":"a","expires_on":"60"}"#.into()),
                (200, 0, r#"{"token_type":"mac","access_token":"a","expires_in":"3600"}"#.into()),
                (200, 0, "<html><body>Sign in</body></html>".into()),
                (400, 0, format!(r#"{{"error":"invalid_grant","error_description":"AADSTS70000: Provided grant is invalid or malformed.{trace}"}}"#)),
                (400, 0, format!(r#"{{"error":"invalid_grant","error_description":"AADSTS700082: The refresh token has expired due to inactivity.{trace}"}}"#)),
                (400, 0, format!(r#"{{"error":"invalid_grant","error_description":"AADSTS70043: The refresh token has expired or is invalid due to sign-in frequency checks by conditional access.{trace}"}}"#)),
                (400, 0, format!(r#"{{"error":"invalid_grant","error_description":"AADSTS50173: The provided grant has expired due to it being revoked.{trace}"}}"#)),
                (401, 0, format!(r#"{{"error":"invalid_client","error_description":"AADSTS7000222: The provided client secret keys for app '{CLIENT_ID}' are expired.{trace}"}}"#)),
                (401, 0, format!(r#"{{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided.{trace}"}}"#)),
                (400, 0, format!(r#"{{"error":"unauthorized_client","error_description":"AADSTS700016: Application with identifier '{CLIENT_ID}' was not found in the directory.{trace}"}}"#)),
                (400, 0, r#"{"error":"invalid_request","error_description":"AADSTS700430: other"}"#.into()),
                (400, 0, "Token request failed.".into()),
                (401, 0, String::new()),
                (429, 0, String::new()),
                (503, 0, "<html><body>Service Unavailable</body></html>".into()),
                (500, 0, r#"{"error":"server_error","error_description":"AADSTS90033: A transient error has occurred."}"#.into()),
                (400, 0, r#"{"error":"temporarily_unavailable"}"#.into()),
                (400, 0, r#"["invalid_grant","AADSTS50173"]"#.into()),
                (400, 0, r#"{"error":"invalid_grant","error":"invalid_client"}"#.into()),
            ];
            for (status, now, body) in answers {
                let mut v = status.to_be_bytes().to_vec();
                v.push(now);
                v.extend_from_slice(body.as_bytes());
                out.push(v);
            }
            return out;
        }
        "launch_form" => {
            let query = format!(
                "SPHostUrl={}&SPLanguage=en-US&SPClientTag=0&SPProductNumber=16.0.23019.12004&SPAppWebUrl={}",
                url_enc("https://contoso.sharepoint.com/sites/dev"),
                url_enc("https://contoso-a1b2c3.fabrikam.com/sites/dev/addin"),
            );
            let form = format!(
                "SPAppToken={}&SPSiteUrl={}&SPSiteTitle=Dev%20site&SPSiteLogoUrl=&SPSiteLanguage=en-US&SPSiteCulture=en-US&SPRedirectMessage=EndpointAuthorityMatches&SPCorrelationId=9d1f0c2e-3b4a-5c6d-7e8f-9a0b1c2d3e4f&SPErrorCorrelationId=&SPErrorInfo=",
                url_enc(&valid),
                url_enc("https://contoso.sharepoint.com/sites/dev"),
            );
            vec![
                format!("{query}\n{form}"),
                format!("{query}\nSPErrorInfo=The+app+principal+is+not+trusted.&SPErrorCorrelationId=9d1f0c2e-3b4a-5c6d-7e8f-9a0b1c2d3e4f"),
                format!("{query}&AppContext={}\nSPSiteTitle=x", url_enc(&valid)),
                format!("{query}&SPAppToken=from-query\n{form}"),
                format!("{query}\nSPAppToken=+&AccessToken={}", url_enc(&valid)),
                format!("{query}\nAppContextToken=a&SPAppToken=b&SPAppToken=c"),
                format!("SPHostUrl=https%3A%2F%2Fevil.com&SPHostUrl={}\n{form}", url_enc("https://contoso.sharepoint.com")),
                format!("SPHostUrl=http%3A%2F%2F127.0.0.1%3A8080%2Fsites%2Fdev&SPLanguage=en-US\n{form}"),
                form.clone(),
                "\n".into(),
                "SPHostUrl=%ZZ&SPAppToken=%E2%82\nSPAppToken=%00".into(),
            ]
        }
        _ => Vec::new(),
    };
    strings.into_iter().map(String::into_bytes).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_token_validates_under_the_fixed_configuration() {
        let token = mint_with_header(
            &serde_json::from_str(HS256_HEADER).unwrap(),
            &sample_claims(NOW),
            &primary_key(),
        );
        let t = check_token(&token, now()).unwrap();
        assert_eq!(t.realm, REALM);
    }

    #[test]
    fn the_empty_structured_input_is_a_valid_token() {
        // mode 1 with no more bytes: every part takes its first, well-formed variant
        context_token_signed(&[1]);
        let b = build_claims(&mut Bytes::new(&[]));
        assert!(b.verdicts.iter().all(|(_, v)| *v == Good));
    }

    #[test]
    fn every_target_takes_the_empty_input() {
        context_token(b"");
        context_token_signed(b"");
        hosts(b"");
        renew_link(b"");
        acs_response(b"");
        launch_form(b"");
    }
}
