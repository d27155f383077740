//! The pieces of the `/token`, validation and launch benchmarks that can be tested: where a
//! load generator may point, how many requests each worker makes, percentiles, realistic
//! context tokens, the tables printed. The measuring itself is in `main.rs`; benchmarks are
//! never timed tests.

use std::net::IpAddr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::SecretString;
use spkeeper::core::context_token::Expectations;
use spkeeper::core::hosts::HostAllowlist;
use spkeeper::testkit::{ContextTokenSpec, mint_context_token};
use url::Url;

/// At most this many requests per measured run: the generator is a benchmark, not a flood.
pub const MAX_REQUESTS: usize = 200_000;
/// At most this many concurrent workers.
pub const MAX_CONCURRENCY: usize = 256;

/// The base URL of the server under load, if it is on this machine: `http`, a loopback IP
/// literal or `localhost`, no user info. Anything else is refused.
pub fn loopback_base(raw: &str) -> Result<Url, String> {
    let url = Url::parse(raw).map_err(|_| format!("{raw:?} is not a URL"))?;
    if url.scheme() != "http" {
        return Err("the target must be plain http on this machine".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("the target must not carry credentials".into());
    }
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    };
    if !loopback {
        return Err(format!(
            "{} is not a loopback address: the load generator only targets this machine",
            url.host_str().unwrap_or("(none)")
        ));
    }
    Ok(url)
}

/// How many requests each of `concurrency` workers makes so that together they make exactly
/// `requests`; refused beyond [`MAX_REQUESTS`] or [`MAX_CONCURRENCY`].
pub fn split_requests(requests: usize, concurrency: usize) -> Result<Vec<usize>, String> {
    if requests == 0 || requests > MAX_REQUESTS {
        return Err(format!("requests must be 1..={MAX_REQUESTS}"));
    }
    if concurrency == 0 || concurrency > MAX_CONCURRENCY {
        return Err(format!("concurrency must be 1..={MAX_CONCURRENCY}"));
    }
    let (each, rest) = (requests / concurrency, requests % concurrency);
    Ok((0..concurrency)
        .map(|i| each + usize::from(i < rest))
        .collect())
}

/// Latency percentiles (nearest rank) and throughput of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub requests: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub p999: Duration,
    pub max: Duration,
    pub per_second: f64,
}

/// The `q`-quantile of sorted samples by nearest rank: the smallest sample with at least
/// `q` of all samples at or below it.
pub fn nearest_rank(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn summarize(mut samples: Vec<Duration>, wall: Duration) -> Summary {
    samples.sort_unstable();
    let secs = wall.as_secs_f64();
    Summary {
        requests: samples.len(),
        p50: nearest_rank(&samples, 0.50),
        p99: nearest_rank(&samples, 0.99),
        p999: nearest_rank(&samples, 0.999),
        max: samples.last().copied().unwrap_or_default(),
        per_second: if secs > 0.0 {
            samples.len() as f64 / secs
        } else {
            0.0
        },
    }
}

pub fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

/// A markdown table: a header row, its rule, the rows.
pub fn markdown(header: &[&str], rows: &[Vec<String>]) -> String {
    let line = |cells: Vec<String>| format!("| {} |\n", cells.join(" | "));
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    out.push_str(&line(header.iter().map(|_| "---".to_string()).collect()));
    for row in rows {
        out.push_str(&line(row.clone()));
    }
    out
}

/// The size SharePoint's context tokens come in (the "realistic" tokens).
pub const REALISTIC_TOKEN_BYTES: usize = 2800;

/// What the validation benchmark's tokens are checked against.
pub struct TokenSetup {
    pub client_id: String,
    pub audience_host: String,
    pub realm: String,
    pub sts_uri: String,
    /// Strict base64, as ACS client secrets are: the key is its decoding.
    pub secret: SecretString,
}

impl TokenSetup {
    /// What validation expects of this setup's tokens at `now`, with `secrets` (this
    /// setup's secret) and `sts` (the token service hosts) held by the caller.
    pub fn expectations<'a>(
        &'a self,
        secrets: &'a [&'a SecretString],
        sts: &'a HostAllowlist,
        now: DateTime<Utc>,
    ) -> Expectations<'a> {
        Expectations {
            client_id: &self.client_id,
            audience_host: &self.audience_host,
            secrets,
            sts_hosts: sts,
            now,
        }
    }

    pub fn standard() -> Self {
        TokenSetup {
            client_id: "6f1a8d2c-3b4e-4f5a-9b8c-7d6e5f4a3b2c".into(),
            audience_host: "addin.example.com".into(),
            realm: "3f2c9a1e-8b7d-4c6e-a5f4-1d2e3c4b5a69".into(),
            sts_uri: "https://accounts.accesscontrol.windows.net/tokens/OAuth/2".into(),
            secret: SecretString::from("mP3x1Q9zL0vT8cJ2hR5nW7bY4kD6fG1sA0eU3iO8pXo="),
        }
    }

    /// Token `i`: SharePoint's claims (numbers for `nbf`/`exp`, as SharePoint sends them and as
    /// the Node peer's `jsonwebtoken` requires), its
    /// own cache key, and a refresh token sized so the whole token is about
    /// [`REALISTIC_TOKEN_BYTES`], minted with the project's own minting code.
    pub fn token(&self, i: usize, nbf: DateTime<Utc>) -> String {
        let spec = |refresh_len: usize| ContextTokenSpec {
            client_id: self.client_id.clone(),
            audience_host: self.audience_host.clone(),
            realm: self.realm.clone(),
            cache_key: format!("{i:08x}-cache-key-for-user-{i}@contoso.onmicrosoft.com"),
            sts_uri: self.sts_uri.clone(),
            refresh_token: filler(i, refresh_len),
            nbf,
            lifetime_hours: 12,
            numeric_dates: true,
        };
        let empty = mint_context_token(&spec(0).claims(), &self.secret).len();
        // base64url grows 3 bytes to 4: a refresh token of n bytes adds 4n/3 to the token.
        let refresh_len = REALISTIC_TOKEN_BYTES.saturating_sub(empty) * 3 / 4;
        mint_context_token(&spec(refresh_len).claims(), &self.secret)
    }
}

/// Refresh-token-like text (base64url alphabet, different for every `i`).
fn filler(i: usize, len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            // xorshift64: cheap, deterministic, different per token.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(ALPHABET[(x % 64) as usize])
        })
        .collect()
}

/// The DynamoDB operation of a request through the counting proxy (`X-Amz-Target:
/// DynamoDB_20120810.GetItem` → `GetItem`; SQS's JSON protocol likewise).
pub fn aws_operation(target: Option<&str>) -> String {
    target
        .and_then(|t| t.rsplit_once('.').map(|(_, op)| op))
        .filter(|op| !op.is_empty())
        .unwrap_or("(other)")
        .to_string()
}

/// The read operations of DynamoDB: what "reads per cached call" counts.
pub fn is_dynamodb_read(op: &str) -> bool {
    matches!(
        op,
        "GetItem" | "BatchGetItem" | "TransactGetItems" | "Query" | "Scan"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use spkeeper::core::context_token::validate;
    use spkeeper::core::hosts::HostAllowlist;

    #[test]
    fn non_loopback_targets_are_refused() {
        for bad in [
            "http://10.0.0.1:8080",
            "http://example.com",
            "https://127.0.0.1:8080",
            "http://user:pw@127.0.0.1:8080",
            "http://[2001:db8::1]:80",
            "not a url",
        ] {
            assert!(loopback_base(bad).is_err(), "{bad} was accepted");
        }
        for good in [
            "http://127.0.0.1:8080",
            "http://127.9.9.9",
            "http://[::1]:9",
            "http://localhost:1",
        ] {
            assert!(loopback_base(good).is_ok(), "{good} was refused");
        }
    }

    #[test]
    fn requests_are_bounded_and_split_exactly_between_workers() {
        assert_eq!(split_requests(10, 4), Ok(vec![3, 3, 2, 2]));
        assert_eq!(split_requests(16, 16), Ok(vec![1; 16]));
        assert!(split_requests(MAX_REQUESTS + 1, 1).is_err());
        assert!(split_requests(0, 1).is_err());
        assert!(split_requests(10, 0).is_err());
        assert!(split_requests(10, MAX_CONCURRENCY + 1).is_err());
    }

    #[test]
    fn percentiles_are_the_nearest_rank_of_the_samples() {
        let samples: Vec<Duration> = (1..=1000).rev().map(Duration::from_micros).collect();
        let s = summarize(samples, Duration::from_secs(2));
        assert_eq!(s.p50, Duration::from_micros(500));
        assert_eq!(s.p99, Duration::from_micros(990));
        assert_eq!(s.p999, Duration::from_micros(999));
        assert_eq!(s.max, Duration::from_micros(1000));
        assert_eq!(s.per_second, 500.0);
        assert_eq!(nearest_rank(&[], 0.5), Duration::ZERO);
    }

    #[test]
    fn realistic_tokens_weigh_about_2_8_kb_differ_and_validate() {
        let setup = TokenSetup::standard();
        let now = Utc::now();
        let sts = HostAllowlist::parse("accounts.accesscontrol.windows.net", false).unwrap();
        let secrets = [&setup.secret];
        let exp = setup.expectations(&secrets, &sts, now);
        let (a, b) = (setup.token(1, now), setup.token(2, now));
        assert_ne!(a, b);
        for t in [&a, &b] {
            assert!(
                (REALISTIC_TOKEN_BYTES - 8..=REALISTIC_TOKEN_BYTES + 8).contains(&t.len()),
                "{}",
                t.len()
            );
            assert!(validate(t, &exp).is_ok());
        }
    }

    #[test]
    fn aws_requests_are_counted_by_operation_and_reads_are_known() {
        assert_eq!(
            aws_operation(Some("DynamoDB_20120810.GetItem")),
            "GetItem".to_string()
        );
        assert_eq!(
            aws_operation(Some("AmazonSQS.SendMessageBatch")),
            "SendMessageBatch"
        );
        assert_eq!(aws_operation(None), "(other)");
        assert!(is_dynamodb_read("TransactGetItems") && is_dynamodb_read("GetItem"));
        assert!(!is_dynamodb_read("PutItem") && !is_dynamodb_read("UpdateItem"));
    }

    #[test]
    fn tables_are_markdown() {
        let t = markdown(&["a", "b"], &[vec!["1".into(), "2".into()]]);
        assert_eq!(t, "| a | b |\n| --- | --- |\n| 1 | 2 |\n");
    }
}
