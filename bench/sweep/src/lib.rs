//! Synthetic grants for the sweep benchmark (issue 11): what `seed` writes into a store.
//!
//! Grant `i` of `n` is the same on every run (no randomness beyond a hash of `i`): its tenant,
//! site, user, and refresh-token expiry, spread over the six months a refresh token lives. The
//! first `due` grants have their first notice due at `now` (their tokens expire within 29
//! days); the others are due 31 days or more after `now`. Ids are hashes, so the due grants are
//! spread over the whole due index (and over DynamoDB's due shards).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Duration, Utc};

use spkeeper::core::grant::{
    GrantId, Kind, NoticeDays, Progress, next_check, refresh_token_expiry,
};
use spkeeper::core::notice::User;
use spkeeper::core::seal::{KeyRing, Place, SealError};
use spkeeper::ports::{GrantRecord, StandardTokens};

/// Tenants the grants are spread over.
pub const TENANTS: u64 = 100;
/// Bytes of a synthetic refresh token (an ACS refresh token is an opaque string of this order).
pub const REFRESH_TOKEN_BYTES: usize = 768;
/// How much earlier than its expiry a refresh token was issued (six months, give or take the
/// months' lengths: `refresh_token_expiry` decides the exact expiry).
const LIFETIME_DAYS: i64 = 183;

/// SplitMix64: a well-mixed 64-bit hash of `x`.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// How many of `n` grants are due for a fraction `due_fraction` (rounded to the nearest).
pub fn due_count(n: u64, due_fraction: f64) -> u64 {
    ((n as f64) * due_fraction.clamp(0.0, 1.0)).round() as u64
}

fn tenant_id(t: u64) -> String {
    let h = mix(t ^ 0x7465_6e61_6e74);
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        h >> 32,
        (h >> 16) & 0xffff,
        h & 0xfff,
        (h >> 52) & 0xfff,
        mix(h) & 0xffff_ffff_ffff
    )
}

/// Grant `i`: due at `now` when `due`, else first due 31 to 153 days after `now`.
pub fn grant(i: u64, due: bool, now: DateTime<Utc>, days: &NoticeDays) -> GrantRecord {
    let h = mix(i);
    let t = h % TENANTS;
    let realm = tenant_id(t);
    let id = GrantId::derive(&realm, &format!("bench-cache-key-{i}"));
    // Seconds until expiry: within 29 days (a notice due now), or 31 days to six months.
    let span = |from_days: i64, to_days: i64| {
        let secs = (to_days - from_days) * 86_400;
        from_days * 86_400 + i64::try_from((h >> 8) % u64::try_from(secs).unwrap_or(1)).unwrap_or(0)
    };
    let until_expiry = if due {
        span(0, 29) + 3600
    } else {
        span(31, LIFETIME_DAYS - 1)
    };
    let nbf = now + Duration::seconds(until_expiry) - Duration::days(LIFETIME_DAYS);
    let expires = refresh_token_expiry(nbf);
    let email = format!("user{i}@tenant{t}.example.com");
    GrantRecord {
        id,
        kind: Kind::Acs,
        rev: 1,
        realm,
        site_url: format!("https://tenant{t}.sharepoint.com/sites/site{}", i % 50),
        app_web_url: None,
        standard_tokens: StandardTokens {
            language: Some("en-US".into()),
            client_tag: Some("0".into()),
            product_number: Some("16.0.0.0".into()),
        },
        sts_uri: "https://accounts.accesscontrol.windows.net/tokens/OAuth/2".into(),
        target_principal: "00000003-0000-0ff1-ce00-000000000000".into(),
        user: Some(User {
            title: format!("User {i}"),
            login_name: format!("i:0#.f|membership|{email}"),
            email,
            oid: None,
        }),
        rt_version: nbf.timestamp(),
        rt_expires_at: expires,
        progress: Progress::None,
        next_due_at: next_check(Kind::Acs, expires, Progress::None, days, 0),
        created_at: nbf,
        updated_at: nbf,
    }
}

/// A refresh token for grant `g`, sealed as a launch seals it (its place: the grant and the
/// token's version).
pub fn sealed_refresh_token(g: &GrantRecord, i: u64, keys: &KeyRing) -> Result<String, SealError> {
    let mut raw = Vec::with_capacity(REFRESH_TOKEN_BYTES);
    let mut x = i;
    while raw.len() < REFRESH_TOKEN_BYTES {
        x = mix(x);
        raw.extend_from_slice(&x.to_le_bytes());
    }
    raw.truncate(REFRESH_TOKEN_BYTES * 3 / 4);
    let token = URL_SAFE_NO_PAD.encode(raw);
    keys.seal(
        token.as_bytes(),
        &Place::RefreshToken {
            grant: g.id.as_str(),
            version: g.rt_version,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_790_000_000, 0).unwrap()
    }

    #[test]
    fn the_first_due_grants_are_due_now_and_the_rest_later() {
        let days = NoticeDays::default();
        let n = 2000;
        let due = due_count(n, 0.01);
        assert_eq!(due, 20);
        for i in 0..n {
            let g = grant(i, i < due, now(), &days);
            let next = g.next_due_at.unwrap();
            if i < due {
                assert!(next <= now(), "{i}: {next}");
                assert!(g.rt_expires_at > now(), "{i}: not yet expired");
            } else {
                assert!(next > now() + Duration::hours(24), "{i}: {next}");
            }
        }
    }

    #[test]
    fn expiries_spread_over_six_months_and_ids_are_unique() {
        let days = NoticeDays::default();
        let grants: Vec<_> = (0..5000).map(|i| grant(i, false, now(), &days)).collect();
        let until = |g: &GrantRecord| (g.rt_expires_at - now()).num_days();
        assert!(grants.iter().all(|g| (31..=184).contains(&until(g))));
        assert!(grants.iter().any(|g| until(g) < 40) && grants.iter().any(|g| until(g) > 170));
        let mut ids: Vec<_> = grants.iter().map(|g| g.id.as_str().to_string()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), grants.len());
    }

    #[test]
    fn a_seeded_refresh_token_opens_only_in_its_place() {
        let keys = KeyRing::new(
            "k1",
            &std::collections::BTreeMap::from([("k1".to_string(), vec![7u8; 32])]),
        )
        .unwrap();
        let g = grant(3, true, now(), &NoticeDays::default());
        let sealed = sealed_refresh_token(&g, 3, &keys).unwrap();
        let place = |version| Place::RefreshToken {
            grant: g.id.as_str(),
            version,
        };
        assert!(keys.open(&sealed, &place(g.rt_version)).is_ok());
        assert!(keys.open(&sealed, &place(g.rt_version + 1)).is_err());
    }
}
