//! Properties of the security rules, checked with proptest over generated inputs (default case
//! counts: the suite takes seconds). The invariant checkers are the fuzz targets' own
//! (`spkeeper::fuzzing`), so a property and a fuzz target cannot drift apart.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use proptest::prelude::*;
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use url::Url;

use spkeeper::core::context_token::{ACS_PRINCIPAL, SHAREPOINT_PRINCIPAL};
use spkeeper::core::grant::GrantId;
use spkeeper::core::hosts::HostAllowlist;
use spkeeper::core::links::{LinkError, LinkSigner};
use spkeeper::core::seal::{KeyRing, Place, SealError};
use spkeeper::fuzzing::{
    self, AUDIENCE_HOST, CLIENT_ID, HS256_HEADER, NOW, OTHER_REALM, REALM, SP_HOSTS,
};

fn at(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(secs, 0).expect("a time")
}

/// `s` with the case of each ASCII letter flipped where `mask` says so.
fn recase(s: &str, mask: &[bool]) -> String {
    s.chars()
        .zip(mask.iter().cycle())
        .map(|(c, flip)| {
            if *flip {
                if c.is_ascii_lowercase() {
                    c.to_ascii_uppercase()
                } else {
                    c.to_ascii_lowercase()
                }
            } else {
                c
            }
        })
        .collect()
}

fn mask() -> impl Strategy<Value = Vec<bool>> {
    prop::collection::vec(any::<bool>(), 1..8)
}

/// A principal-and-realm claim: right (in any case), or one of the ways it goes wrong.
fn principal_claim(principal: &'static str) -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => (mask(), mask()).prop_map(move |(m1, m2)| json!(format!(
            "{}@{}",
            recase(principal, &m1),
            recase(REALM, &m2)
        ))),
        1 => Just(json!(format!("{principal}@{OTHER_REALM}"))),
        1 => Just(json!(format!("{SHAREPOINT_PRINCIPAL}@{REALM}"))),
        1 => Just(json!(format!("{ACS_PRINCIPAL}@{REALM}"))),
        1 => "[ -~]{0,40}".prop_map(|s| json!(s)),
        1 => Just(Value::Null),
    ]
}

fn audience_claim() -> impl Strategy<Value = Value> {
    let ours = format!("{CLIENT_ID}/{AUDIENCE_HOST}");
    let ours2 = ours.clone();
    prop_oneof![
        4 => (mask(), mask()).prop_map(move |(m1, m2)| json!(format!(
            "{}@{}",
            recase(&ours, &m1),
            recase(REALM, &m2)
        ))),
        1 => "[ -~]{0,12}".prop_map(move |junk| json!(format!("{ours2}{junk}@{REALM}"))),
        1 => "[ -~]{0,60}".prop_map(|s| json!(s)),
        1 => Just(json!(42)),
    ]
}

/// `nbf`/`exp`: seconds from `NOW` in `range`, as a number or a string (both are Microsoft's).
fn time_claim(range: std::ops::Range<i64>) -> impl Strategy<Value = Value> {
    (range, any::<bool>()).prop_map(|(off, as_string)| {
        if as_string {
            json!((NOW + off).to_string())
        } else {
            json!(NOW + off)
        }
    })
}

fn sts_uri() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => Just("https://accounts.accesscontrol.windows.net/tokens/OAuth/2".to_string()),
        1 => Just("https://accounts.accesscontrol.chinacloudapi.cn/tokens/OAuth/2".to_string()),
        1 => Just("http://accounts.accesscontrol.windows.net/tokens/OAuth/2".to_string()),
        1 => Just("https://accounts.accesscontrol.windows.net.evil.com/".to_string()),
        1 => Just("https://u@accounts.accesscontrol.windows.net/".to_string()),
        1 => "https://[a-z.]{1,30}(:[0-9]{1,5})?/".prop_map(|s| s),
    ]
}

fn signing_key() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => Just(fuzzing::primary_key()),
        2 => Just(fuzzing::secondary_key()),
        1 => Just(fuzzing::PRIMARY_SECRET.as_bytes().to_vec()),
        1 => prop::collection::vec(any::<u8>(), 0..40),
    ]
}

prop_compose! {
    fn claims()(
        aud in audience_claim(),
        iss in principal_claim(ACS_PRINCIPAL),
        sender in principal_claim(SHAREPOINT_PRINCIPAL),
        // mostly inside the skew, so that validation often gets past the lifetime
        nbf in time_claim(-2 * 86_400..1_200),
        exp in time_claim(-1_200..2 * 86_400),
        cache_key in "[ -~]{0,20}",
        sts in sts_uri(),
        refresh in "[ -~]{0,20}",
    ) -> Value {
        json!({
            "aud": aud,
            "iss": iss,
            "appctxsender": sender,
            "nbf": nbf,
            "exp": exp,
            "appctx": json!({"CacheKey": cache_key, "SecurityTokenServiceUri": sts}).to_string(),
            "refreshtoken": refresh,
            "isbrowserhostedapp": "true",
        })
    }
}

proptest! {
    /// Whatever the claims and key, a token that validates satisfies every rule of
    /// PROTOCOL.md §2 (re-checked from its raw text by the fuzz target's checker).
    #[test]
    fn a_validated_token_always_satisfies_every_claim_rule(
        claims in claims(),
        key in signing_key(),
    ) {
        let token = fuzzing::sign_raw(HS256_HEADER.as_bytes(), claims.to_string().as_bytes(), &key);
        if let Ok(t) = fuzzing::validate_at(&token, fuzzing::now()) {
            fuzzing::assert_token_satisfies_every_rule(&token, &t, fuzzing::now());
        }
    }

    /// And the converse: claims that follow every rule, in any ASCII case, with a lifetime
    /// around now (within the skew), validate under either configured secret.
    #[test]
    fn a_token_that_follows_every_rule_validates(
        m in prop::collection::vec(mask(), 5),
        nbf_off in -12 * 3600i64..=300,
        exp_off in -300i64..=12 * 3600,
        secondary in any::<bool>(),
        as_strings in any::<bool>(),
    ) {
        let time = |off: i64| if as_strings { json!((NOW + off).to_string()) } else { json!(NOW + off) };
        let claims = json!({
            "aud": format!("{}@{}", recase(&format!("{CLIENT_ID}/{AUDIENCE_HOST}"), &m[0]), recase(REALM, &m[1])),
            "iss": format!("{}@{}", recase(ACS_PRINCIPAL, &m[2]), recase(REALM, &m[3])),
            "appctxsender": format!("{SHAREPOINT_PRINCIPAL}@{}", recase(REALM, &m[4])),
            "nbf": time(nbf_off),
            "exp": time(exp_off),
            "appctx": "{\"CacheKey\":\"k+/=\",\"SecurityTokenServiceUri\":\"https://accounts.accesscontrol.windows.net/tokens/OAuth/2\"}",
            "refreshtoken": "rt",
        });
        let key = if secondary { fuzzing::secondary_key() } else { fuzzing::primary_key() };
        let token = fuzzing::sign_raw(HS256_HEADER.as_bytes(), claims.to_string().as_bytes(), &key);
        let t = fuzzing::validate_at(&token, fuzzing::now());
        prop_assert!(t.is_ok(), "{claims}: {:?}", t.err());
        let t = t.unwrap_or_else(|_| unreachable!());
        prop_assert_eq!(t.realm.as_str(), REALM);
        fuzzing::assert_token_satisfies_every_rule(&token, &t, fuzzing::now());
    }
}

// ---------------------------------------------------------------------------------------------
// Hosts.
// ---------------------------------------------------------------------------------------------

fn label() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("contoso".to_string()),
        Just("sharepoint".to_string()),
        Just("com".to_string()),
        Just("fabrikam".to_string()),
        Just("evil".to_string()),
        Just("sp".to_string()),
        Just("local".to_string()),
        Just("localhost".to_string()),
        Just("127".to_string()),
        Just("0".to_string()),
        Just("1".to_string()),
        Just("xn--bcher-kva".to_string()),
        Just("bücher".to_string()),
        Just("example".to_string()),
        Just(String::new()),
        "[a-zA-Z0-9-]{1,6}",
    ]
}

prop_compose! {
    fn url_text()(
        scheme in prop_oneof![Just("https"), Just("http"), Just("HTTPS"), Just("ftp")],
        userinfo in prop_oneof![4 => Just(""), 1 => Just("user@"), 1 => Just("u:p@"), 1 => Just("evil.com\\@")],
        labels in prop::collection::vec(label(), 1..5),
        trailing_dot in prop::bool::weighted(0.1),
        port in prop_oneof![4 => Just(None), 1 => Just(Some(443u16)), 1 => Just(Some(8080)), 1 => Just(Some(8443)), 1 => any::<u16>().prop_map(Some)],
        path in "(/[a-zA-Z0-9%._-]{0,8}){0,3}/?",
        query in prop_oneof![Just(""), Just("?SPLanguage=en-US"), Just("#x")],
    ) -> String {
        let host = labels.join(".") + if trailing_dot { "." } else { "" };
        let port = port.map(|p| format!(":{p}")).unwrap_or_default();
        format!("{scheme}://{userinfo}{host}{port}{path}{query}")
    }
}

proptest! {
    /// A URL passes the allowlist exactly when its host equals a listed host (and port), or
    /// ends in a listed `.suffix` after non-empty labels on the default port; over https, or
    /// http to a loopback host listed exactly; with no user info. Anything else is refused.
    #[test]
    fn a_host_either_matches_the_allowlist_exactly_or_is_refused(url in url_text()) {
        let list = HostAllowlist::parse(SP_HOSTS, true).expect("SP_HOSTS parses");
        fuzzing::assert_hosts_verdicts(SP_HOSTS, &list, &url);
    }

    /// The same for a bare `host[:port]` (the `host` of `/token`).
    #[test]
    fn a_bare_authority_either_matches_the_allowlist_exactly_or_is_refused(
        labels in prop::collection::vec(label(), 1..5),
        port in prop_oneof![Just(String::new()), Just(":443".to_string()), Just(":8080".to_string()), Just(":8443".to_string())],
    ) {
        let list = HostAllowlist::parse(SP_HOSTS, true).expect("SP_HOSTS parses");
        let authority = format!("{}{port}", labels.join("."));
        fuzzing::assert_hosts_verdicts(SP_HOSTS, &list, &authority);
        let by_url = list.check_url(&format!("https://{authority}/")).is_ok();
        prop_assert_eq!(list.check_authority(&authority).is_ok(), by_url, "{}", authority);
    }
}

// ---------------------------------------------------------------------------------------------
// Renew links and session cookies.
// ---------------------------------------------------------------------------------------------

fn grant() -> impl Strategy<Value = GrantId> {
    any::<[u8; 16]>().prop_map(|b| GrantId::parse(&hex::encode(b)).expect("32 hex digits"))
}

fn link_parts(link: &str) -> (String, String) {
    let url = Url::parse(link).expect("a renew link is a URL");
    let get = |name: &str| {
        url.query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
            .expect("exp and sig")
    };
    (get("exp"), get("sig"))
}

proptest! {
    /// A renew link verifies for its own grant until its expiry, and for nothing else: not
    /// for another grant, another expiry, or under another key.
    #[test]
    fn a_renew_link_verifies_only_for_its_own_grant_and_before_its_expiry(
        own in grant(),
        other in grant(),
        signed in -(1i64 << 31)..(1i64 << 31),
        after in -86_400i64..50 * 86_400,
        shift in 1i64..1_000_000,
    ) {
        let signer = LinkSigner::new(fuzzing::LINK_KEY);
        let signed_at = at(NOW + signed);
        let public = Url::parse(fuzzing::PUBLIC_URL).expect("a URL");
        let (exp, sig) = link_parts(&signer.renew_url(&public, &own, signed_at));
        let exp_secs: i64 = exp.parse().expect("digits");
        let now = signed_at + Duration::seconds(after);
        let expected = if now.timestamp() < exp_secs { Ok(()) } else { Err(LinkError::Expired) };
        prop_assert_eq!(signer.verify_renew(&own, &exp, &sig, now), expected);
        if other != own {
            prop_assert_eq!(signer.verify_renew(&other, &exp, &sig, now), Err(LinkError::BadSignature));
        }
        let later = (exp_secs + shift).to_string();
        prop_assert_eq!(signer.verify_renew(&own, &later, &sig, now), Err(LinkError::BadSignature));
        let stranger = LinkSigner::new(b"a different deployment's link key");
        prop_assert_eq!(stranger.verify_renew(&own, &exp, &sig, now), Err(LinkError::BadSignature));
    }

    /// A session cookie's expiry and signature never pass as a renew link, whenever they are
    /// presented, and a renew link's never pass as a session cookie.
    #[test]
    fn a_session_cookie_never_passes_as_a_renew_link(
        own in grant(),
        signed in -(1i64 << 31)..(1i64 << 31),
        after in -86_400i64..86_400,
    ) {
        let signer = LinkSigner::new(fuzzing::LINK_KEY);
        let signed_at = at(NOW + signed);
        let now = signed_at + Duration::seconds(after);
        let cookie = signer.session_value(&own, signed_at);
        let parts: Vec<&str> = cookie.split('.').collect();
        prop_assert_eq!(parts.len(), 3);
        prop_assert_eq!(signer.verify_renew(&own, parts[1], parts[2], now), Err(LinkError::BadSignature));

        let public = Url::parse(fuzzing::PUBLIC_URL).expect("a URL");
        let (exp, sig) = link_parts(&signer.renew_url(&public, &own, signed_at));
        prop_assert_eq!(
            signer.verify_session(&format!("{own}.{exp}.{sig}"), now),
            Err(LinkError::BadSignature)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Sealing.
// ---------------------------------------------------------------------------------------------

/// A place, from few enough values that two draws are often the same place, or differ in one
/// field only.
#[derive(Debug, Clone)]
enum PlaceSpec {
    Refresh(String, i64),
    Access(String, String),
}

impl PlaceSpec {
    fn place(&self) -> Place<'_> {
        match self {
            PlaceSpec::Refresh(grant, version) => Place::RefreshToken {
                grant,
                version: *version,
            },
            PlaceSpec::Access(grant, resource) => Place::AccessToken { grant, resource },
        }
    }
}

fn place_spec() -> impl Strategy<Value = PlaceSpec> {
    let grant = prop_oneof![
        Just("a".to_string()),
        Just("ab".to_string()),
        Just("0123456789abcdef0123456789abcdef".to_string()),
        "[a-f0-9]{0,3}",
    ];
    let version = prop_oneof![Just(100i64), Just(101), Just(0), Just(-1), any::<i64>()];
    let resource = prop_oneof![
        Just("100".to_string()),
        Just("contoso.sharepoint.com".to_string()),
        Just("fabrikam.sharepoint.com".to_string()),
        Just(String::new()),
        Just("c".to_string()),
        Just("bc".to_string()),
    ];
    prop_oneof![
        (grant.clone(), version).prop_map(|(g, v)| PlaceSpec::Refresh(g, v)),
        (grant, resource).prop_map(|(g, r)| PlaceSpec::Access(g, r)),
    ]
}

fn ring(active: &str) -> KeyRing {
    let mut keys = BTreeMap::new();
    keys.insert("k1".to_string(), vec![1u8; 32]);
    keys.insert("k2".to_string(), vec![2u8; 32]);
    KeyRing::new(active, &keys).expect("a key ring")
}

proptest! {
    /// A sealed value opens, to what was sealed, only in the place it was sealed for: same
    /// purpose, same grant, same version (refresh token) or resource (access token). Any other
    /// place refuses it. A rotated ring still opens it.
    #[test]
    fn sealing_round_trips_only_with_the_same_place(
        plaintext in "\\PC{0,64}",
        sealed_for in place_spec(),
        opened_at in place_spec(),
    ) {
        let r = ring("k1");
        let sealed = r.seal(plaintext.as_bytes(), &sealed_for.place()).expect("seals");
        let opened = r.open(&sealed, &opened_at.place());
        if sealed_for.place() == opened_at.place() {
            let opened = opened.expect("opens in its own place");
            prop_assert_eq!(opened.expose_secret(), plaintext.as_str());
            let rotated = ring("k2").open(&sealed, &opened_at.place()).expect("after rotation");
            prop_assert_eq!(rotated.expose_secret(), plaintext.as_str());
        } else {
            prop_assert_eq!(opened.err(), Some(SealError::Open));
        }
    }
}
