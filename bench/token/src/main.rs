//! `bench-token`: measures what issue 11 asks of the `/token` path and of context-token
//! validation, and prints markdown tables. Run by `infra/scripts/bench-token` (not part of CI).
//!
//! - `token`: `POST /token` load against a local `spkeeper serve --dev` (loopback only, a
//!   bounded number of requests), cached and uncached, at several concurrencies; with
//!   `--proxy`, the DynamoDB requests per cached call counted by `proxy`.
//! - `proxy`: a counting HTTP proxy in front of moto (requests by operation).
//! - `validate`: `core::context_token::validate` on realistic tokens beside the Node peer,
//!   and the launch's CPU path without I/O.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bench_token::{
    MAX_REQUESTS, Summary, TokenSetup, aws_operation, is_dynamodb_read, loopback_base, markdown,
    ms, split_requests, summarize,
};
use chrono::Utc;
use clap::{Parser, Subcommand};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use spkeeper::core::context_token::validate;
use spkeeper::core::grant::{GrantId, plan_launch, refresh_token_expiry};
use spkeeper::core::hosts::HostAllowlist;
use spkeeper::core::seal::{KeyRing, Place};
use spkeeper::service::launch::LaunchInput;
use url::Url;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Parser)]
#[command(about = "Benchmarks of /token, context-token validation and the launch CPU path")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// POST /token against a local `spkeeper serve --dev`.
    Token {
        /// The server's base URL (loopback only).
        #[arg(long)]
        base: String,
        /// The server's dev configuration (its `api_key` authorizes /token).
        #[arg(long)]
        dev_json: PathBuf,
        /// Measured requests per concurrency level.
        #[arg(long, default_value_t = 5000)]
        requests: usize,
        #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
        concurrency: Vec<usize>,
        /// Uncached requests per level (each needs its own launched grant).
        #[arg(long, default_value_t = 500)]
        uncached_requests: usize,
        /// A second allowed host (same server) whose access tokens are not cached yet: asking
        /// for it forces a miss and a simulated ACS exchange.
        #[arg(long)]
        miss_host: Option<String>,
        /// The counting proxy in front of the server's DynamoDB (moto): count the requests
        /// per cached call.
        #[arg(long)]
        proxy: Option<String>,
    },
    /// A counting proxy: forwards everything to `upstream`, counts requests by operation.
    Proxy {
        #[arg(long)]
        listen: String,
        #[arg(long)]
        upstream: String,
    },
    /// A fresh table (the project's own definition) and queue in the moto named by
    /// `SPKEEPER_TEST_MOTO_URL`; prints `TABLE QUEUE_URL`.
    MotoSetup,
    /// Context-token validation (and the launch CPU path) beside the Node peer.
    Validate {
        #[arg(long, default_value_t = 20_000)]
        tokens: usize,
        #[arg(long, default_value_t = 7)]
        rounds: usize,
        /// The directory of the Node peer (`validate.js`, with its node_modules installed).
        #[arg(long)]
        node: Option<PathBuf>,
    },
}

fn main() -> Result<(), Error> {
    match Cli::parse().command {
        Command::Token {
            base,
            dev_json,
            requests,
            concurrency,
            uncached_requests,
            miss_host,
            proxy,
        } => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(token_bench(TokenArgs {
                base,
                dev_json,
                requests,
                concurrency,
                uncached_requests,
                miss_host,
                proxy,
            })),
        Command::Proxy { listen, upstream } => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?
            .block_on(proxy(listen, upstream)),
        Command::MotoSetup => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(async {
                loopback_base(&spkeeper::testkit::moto::url())?;
                let sdk = spkeeper::testkit::moto::sdk_config().await;
                let (table, queue) = spkeeper::testkit::moto::fresh(&sdk, "bench").await;
                println!("{table} {queue}");
                Ok(())
            }),
        Command::Validate {
            tokens,
            rounds,
            node,
        } => validate_bench(tokens, rounds, node),
    }
}

struct TokenArgs {
    base: String,
    dev_json: PathBuf,
    requests: usize,
    concurrency: Vec<usize>,
    uncached_requests: usize,
    miss_host: Option<String>,
    proxy: Option<String>,
}

/// What one `/token` call asks for.
#[derive(Clone)]
struct Ask {
    grant: GrantId,
    host: Option<String>,
}

struct Target {
    client: reqwest::Client,
    base: Url,
    api_key: SecretString,
}

impl Target {
    fn url(&self, path: &str) -> Result<Url, Error> {
        Ok(self.base.join(path)?)
    }

    /// Launches the add-in for `user` through the simulator, as a browser would; returns the
    /// grant's id.
    async fn launch(&self, user: &str) -> Result<GrantId, Error> {
        let mut page = self.url("/dev/sharepoint")?;
        page.query_pairs_mut().append_pair("user", user);
        let html = self.client.get(page).send().await?.text().await?;
        let (action, token) = spkeeper_e2e::launch_form(&html);
        let action = loopback_base(&action)?;
        let body: String = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("SPAppToken", &token)
            .finish();
        let resp = self
            .client
            .post(action)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await?;
        if resp.status() != StatusCode::SEE_OTHER {
            return Err(format!("launch answered {}", resp.status()).into());
        }
        let claims = spkeeper_e2e::jwt_claims(&token);
        let realm = claims["aud"]
            .as_str()
            .and_then(|a| a.rsplit_once('@'))
            .map(|(_, r)| r.to_string())
            .ok_or("the context token has no audience realm")?;
        let appctx: Value = serde_json::from_str(claims["appctx"].as_str().unwrap_or("{}"))?;
        let cache_key = appctx["CacheKey"].as_str().ok_or("no CacheKey")?;
        Ok(GrantId::derive(&realm, cache_key))
    }

    async fn token(&self, ask: &Ask) -> Result<Duration, Error> {
        let body = match &ask.host {
            Some(h) => json!({"grant_id": ask.grant.as_str(), "host": h}),
            None => json!({"grant_id": ask.grant.as_str()}),
        };
        let started = Instant::now();
        let resp = self
            .client
            .post(self.url("/token")?)
            .bearer_auth(self.api_key.expose_secret())
            .json(&body)
            .send()
            .await?;
        let status = resp.status();
        let _ = resp.bytes().await?;
        let took = started.elapsed();
        if status != StatusCode::OK {
            return Err(format!("/token answered {status}").into());
        }
        Ok(took)
    }

    /// `asks` (one per request) by `concurrency` workers, each one request after the other.
    async fn run(
        self: &Arc<Self>,
        asks: Arc<Vec<Ask>>,
        concurrency: usize,
    ) -> Result<Summary, Error> {
        let shares = split_requests(asks.len(), concurrency)?;
        let next = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let mut workers = Vec::new();
        for share in shares {
            let (me, asks, next) = (Arc::clone(self), Arc::clone(&asks), Arc::clone(&next));
            workers.push(tokio::spawn(async move {
                let mut took = Vec::with_capacity(share);
                for _ in 0..share {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    took.push(me.token(&asks[i]).await?);
                }
                Ok::<_, Error>(took)
            }));
        }
        let mut samples = Vec::with_capacity(asks.len());
        for w in workers {
            samples.extend(w.await??);
        }
        Ok(summarize(samples, started.elapsed()))
    }
}

fn row(kind: &str, concurrency: usize, s: &Summary) -> Vec<String> {
    vec![
        kind.to_string(),
        concurrency.to_string(),
        s.requests.to_string(),
        ms(s.p50),
        ms(s.p99),
        ms(s.p999),
        ms(s.max),
        format!("{:.0}", s.per_second),
    ]
}

async fn token_bench(a: TokenArgs) -> Result<(), Error> {
    let base = loopback_base(&a.base)?;
    let dev: Value = serde_json::from_str(&std::fs::read_to_string(&a.dev_json)?)?;
    let api_key = SecretString::from(
        dev["api_key"]
            .as_str()
            .ok_or("the dev configuration has no api_key")?
            .to_string(),
    );
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .pool_max_idle_per_host(bench_token::MAX_CONCURRENCY)
        .build()?;
    let target = Arc::new(Target {
        client,
        base,
        api_key,
    });
    let header = [
        "`/token`",
        "concurrency",
        "requests",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "req/s",
    ];
    let mut rows = Vec::new();

    // Cached: one grant, its access token cached by the launch.
    let grant = target.launch("bench-cached").await?;
    let cached = Ask { grant, host: None };
    target.token(&cached).await?;
    for &c in &a.concurrency {
        let warm = Arc::new(vec![cached.clone(); 200.max(c)]);
        target.run(warm, c).await?;
        let asks = Arc::new(vec![cached.clone(); a.requests.min(MAX_REQUESTS)]);
        rows.push(row("cached", c, &target.run(asks, c).await?));
    }

    // Uncached: a fresh grant per request, asked for a host it has no token for yet, so every
    // call is a miss answered by the simulated ACS.
    if let Some(miss_host) = &a.miss_host {
        for &c in &a.concurrency {
            let mut asks = Vec::with_capacity(a.uncached_requests);
            for i in 0..a.uncached_requests {
                let grant = target.launch(&format!("bench-c{c}-u{i}")).await?;
                asks.push(Ask {
                    grant,
                    host: Some(miss_host.clone()),
                });
            }
            rows.push(row("uncached", c, &target.run(Arc::new(asks), c).await?));
        }
    }
    println!("{}", markdown(&header, &rows));

    if let Some(proxy) = &a.proxy {
        let proxy = loopback_base(proxy)?;
        let n = 1000;
        target
            .client
            .post(proxy.join("/__bench/reset")?)
            .send()
            .await?;
        target.run(Arc::new(vec![cached.clone(); n]), 1).await?;
        let counts: BTreeMap<String, usize> = target
            .client
            .get(proxy.join("/__bench/counts")?)
            .send()
            .await?
            .json()
            .await?;
        let reads: usize = counts
            .iter()
            .filter(|(op, _)| is_dynamodb_read(op))
            .map(|(_, n)| n)
            .sum();
        let rows: Vec<Vec<String>> = counts
            .iter()
            .map(|(op, k)| {
                vec![
                    op.clone(),
                    k.to_string(),
                    format!("{:.2}", *k as f64 / n as f64),
                ]
            })
            .chain(std::iter::once(vec![
                "**reads**".into(),
                reads.to_string(),
                format!("**{:.2}**", reads as f64 / n as f64),
            ]))
            .collect();
        println!("DynamoDB requests for {n} cached `/token` calls (concurrency 1):\n");
        println!(
            "{}",
            markdown(&["operation", "requests", "per call"], &rows)
        );
    }
    Ok(())
}

#[derive(Clone)]
struct ProxyState {
    client: reqwest::Client,
    upstream: Url,
    counts: Arc<Mutex<BTreeMap<String, usize>>>,
}

async fn proxy(listen: String, upstream: String) -> Result<(), Error> {
    let listen = loopback_base(&format!("http://{listen}"))?;
    let upstream = loopback_base(&upstream)?;
    let state = ProxyState {
        client: reqwest::Client::builder().no_proxy().build()?,
        upstream,
        counts: Arc::default(),
    };
    let app = axum::Router::new().fallback(forward).with_state(state);
    let addr = format!(
        "{}:{}",
        listen.host_str().unwrap_or("127.0.0.1"),
        listen.port().unwrap_or(80)
    );
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

async fn forward(
    State(st): State<ProxyState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let lock = || st.counts.lock().unwrap_or_else(|p| p.into_inner());
    match (uri.path(), &method) {
        ("/__bench/counts", &Method::GET) => {
            return axum::Json(lock().clone()).into_response();
        }
        ("/__bench/reset", &Method::POST) => {
            lock().clear();
            return StatusCode::NO_CONTENT.into_response();
        }
        _ => {}
    }
    let op = aws_operation(headers.get("x-amz-target").and_then(|v| v.to_str().ok()));
    *lock().entry(op).or_default() += 1;
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let Ok(url) = st.upstream.join(path) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let mut req = st.client.request(method, url).body(body);
    for (name, value) in &headers {
        if name != "host" && name != "content-length" {
            req = req.header(name, value);
        }
    }
    match req.send().await {
        Ok(resp) => {
            let status = resp.status();
            let mut out = HeaderMap::new();
            for (name, value) in resp.headers() {
                if name != "content-length" && name != "transfer-encoding" {
                    out.insert(name, value.clone());
                }
            }
            let body = resp.bytes().await.unwrap_or_default();
            (status, out, body).into_response()
        }
        Err(_) => StatusCode::BAD_GATEWAY.into_response(),
    }
}

/// µs per token of the fastest and the median round.
fn rounds(
    n: usize,
    rounds: usize,
    mut once: impl FnMut() -> Result<(), Error>,
) -> Result<(f64, f64), Error> {
    let mut per = Vec::with_capacity(rounds);
    for _ in 0..rounds.max(1) {
        let started = Instant::now();
        once()?;
        per.push(started.elapsed().as_secs_f64() * 1e6 / n as f64);
    }
    per.sort_by(f64::total_cmp);
    Ok((per[0], per[per.len() / 2]))
}

fn validate_bench(n: usize, rounds_n: usize, node: Option<PathBuf>) -> Result<(), Error> {
    let n = n.clamp(1, MAX_REQUESTS);
    let setup = TokenSetup::standard();
    let now = Utc::now();
    let tokens: Vec<String> = (0..n).map(|i| setup.token(i, now)).collect();
    let avg_len = tokens.iter().map(String::len).sum::<usize>() / n;
    let sts = HostAllowlist::parse("accounts.accesscontrol.windows.net", false)?;
    let secrets = [&setup.secret];
    let exp = setup.expectations(&secrets, &sts, now);
    let (best, median) = rounds(n, rounds_n, || {
        for t in &tokens {
            black_box(validate(black_box(t), &exp)?);
        }
        Ok(())
    })?;
    let mut rows = vec![vec![
        "spkeeper `context_token::validate` (release profile)".to_string(),
        format!("{best:.2}"),
        format!("{median:.2}"),
        "1.00".to_string(),
    ]];

    // The launch's CPU path: the form and query parsed, the host web allowlisted, the token
    // validated, the grant id derived, the refresh token sealed, the plan made.
    let sites = HostAllowlist::parse("*.sharepoint.com", true)?;
    let mut keys = BTreeMap::new();
    keys.insert("k1".to_string(), vec![7u8; 32]);
    let ring = KeyRing::new("k1", &keys)?;
    let query = "SPHostUrl=https%3A%2F%2Fcontoso.sharepoint.com%2Fsites%2Fdev&SPLanguage=en-US&SPClientTag=0&SPProductNumber=16.0.24000.12000";
    let bodies: Vec<String> = tokens
        .iter()
        .map(|t| {
            url::form_urlencoded::Serializer::new(String::new())
                .append_pair("SPAppToken", t)
                .finish()
        })
        .collect();
    let (l_best, l_median) = rounds(n, rounds_n, || {
        for body in &bodies {
            let input = LaunchInput::parse(black_box(body.as_bytes()), Some(query));
            let token = input.context_token().ok_or("no token")?;
            let site = sites.check_site_url(input.param("SPHostUrl").ok_or("no host")?)?;
            let ct = validate(token, &exp)?;
            let id = GrantId::derive(&ct.realm, &ct.cache_key);
            let version = ct.not_before.timestamp();
            let sealed = ring.seal(
                ct.refresh_token.expose_secret().as_bytes(),
                &Place::RefreshToken {
                    grant: id.as_str(),
                    version,
                },
            )?;
            black_box((
                site,
                sealed,
                refresh_token_expiry(ct.not_before),
                plan_launch(None, version),
            ));
        }
        Ok(())
    })?;
    rows.push(vec![
        "spkeeper `/launch` CPU path, no I/O (release profile)".into(),
        format!("{l_best:.2}"),
        format!("{l_median:.2}"),
        "—".into(),
    ]);

    if let Some(dir) = node {
        let file = std::env::temp_dir().join(format!("bench-token-{}.json", std::process::id()));
        std::fs::write(
            &file,
            json!({"secret": setup.secret.expose_secret(), "tokens": tokens, "rounds": rounds_n})
                .to_string(),
        )?;
        let out = std::process::Command::new("node")
            .arg(dir.join("validate.js"))
            .arg(&file)
            .output();
        let _ = std::fs::remove_file(&file);
        let out = out?;
        if !out.status.success() {
            return Err(format!(
                "the Node peer failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        let v: Value = serde_json::from_slice(&out.stdout)?;
        let (nb, nm) = (
            v["best_us"].as_f64().ok_or("node: no best_us")?,
            v["median_us"].as_f64().ok_or("node: no median_us")?,
        );
        rows.push(vec![
            format!(
                "Node {} `jsonwebtoken` {} `verify` + `JSON.parse(appctx)` (pnpjs v2)",
                v["node"].as_str().unwrap_or("?"),
                v["jsonwebtoken"].as_str().unwrap_or("?")
            ),
            format!("{nb:.2}"),
            format!("{nm:.2}"),
            format!("{:.2}", nm / median),
        ]);
        rows[0][3] = format!("**{:.2}× faster than Node** (medians)", nm / median);
    }
    // Where validation's time goes: its steps, each alone, on the same tokens.
    let parts: Vec<(&str, &str)> = tokens
        .iter()
        .filter_map(|t| {
            let (message, _) = t.rsplit_once('.')?;
            let (_, payload) = message.split_once('.')?;
            Some((message, payload))
        })
        .collect();
    let key = spkeeper::core::context_token::signing_key(&setup.secret);
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let decoded: Vec<Vec<u8>> = parts
        .iter()
        .map(|(_, p)| b64.decode(p).unwrap_or_default())
        .collect();
    let section = |name: &str, f: &dyn Fn(usize)| -> Result<Vec<String>, Error> {
        let (best, median) = rounds(parts.len(), rounds_n, || {
            (0..parts.len()).for_each(|i| f(black_box(i)));
            Ok(())
        })?;
        Ok(vec![
            format!("— of which: {name}"),
            format!("{best:.2}"),
            format!("{median:.2}"),
            "—".into(),
        ])
    };
    let steps = [
        section("HMAC-SHA256 of the signed part (aws-lc)", &|i| {
            let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &key);
            black_box(aws_lc_rs::hmac::sign(&key, parts[i].0.as_bytes()));
        })?,
        section("base64url decoding of the claims", &|i| {
            black_box(b64.decode(parts[i].1).ok());
        })?,
        section("JSON parsing of the claims (into values)", &|i| {
            black_box(serde_json::from_slice::<BTreeMap<String, Value>>(&decoded[i]).ok());
        })?,
    ];
    for (k, step) in steps.into_iter().enumerate() {
        rows.insert(1 + k, step);
    }
    println!("{n} tokens of {avg_len} bytes on average, {rounds_n} rounds; µs per token:\n");
    println!(
        "{}",
        markdown(&["path", "best round", "median round", "vs Node"], &rows)
    );
    Ok(())
}
