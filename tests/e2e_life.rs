//! The whole life of a grant through the real `spkeeper` binary: `serve --dev` (the simulator
//! plays SharePoint and ACS), `sweep`, `grants`, `renew-link` and `notices` as separate
//! processes, and a webhook receiver that verifies every signature.
//!
//! launch → token → cached token (no second ACS call) → sweeps at T-30/T-7/T-1 (one notice
//! each, none on a repeat) → expired → renew link → relaunch → renewed. Then: no log line of
//! any process holds a token or a secret.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Duration as Days, Utc};
use secrecy::SecretString;
use serde_json::{Value, json};

use spkeeper::testkit::{ContextTokenSpec, mint_context_token, mint_with_header};
use spkeeper_e2e::*;

const CLIENT_ID: &str = "6f1a8d2c-3b4e-4f5a-9b8c-7d6e5f4a3b2c";
const CLIENT_SECRET: &str = "c2VjcmV0LWZvci1lMmUtdGVzdHMtb25seS0wMTIzNDU2Nzg5";
const API_KEY: &str = "e2e-api-key-0123456789abcdef";
const WEBHOOK_SECRET: &str = "whsec_ZTJlLXdlYmhvb2stc2VjcmV0LTAxMjM0NTY3";

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_spkeeper"))
}

struct Env {
    vars: BTreeMap<String, String>,
    _dir: tempfile::TempDir,
    logs: PathBuf,
}

fn env(receiver: &Receiver, extra: &[(&str, &str)]) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let mut vars: BTreeMap<String, String> = [
        (
            "SPKEEPER_DATA_DIR",
            dir.path().join("data").display().to_string(),
        ),
        ("SPKEEPER_CLIENT_ID", CLIENT_ID.into()),
        ("SPKEEPER_CLIENT_SECRET", CLIENT_SECRET.into()),
        ("SPKEEPER_API_KEY", API_KEY.into()),
        ("SPKEEPER_WEBHOOK_URL", receiver.url()),
        ("SPKEEPER_WEBHOOK_SECRET", WEBHOOK_SECRET.into()),
        // debug: any dependency that would print a header or body gets its chance to
        ("SPKEEPER_LOG", "debug".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for (k, v) in extra {
        vars.insert(k.to_string(), v.to_string());
    }
    Env {
        vars,
        _dir: dir,
        logs,
    }
}

struct Server {
    proc: Proc,
    base: String,
    info: Value,
}

async fn start(env: &Env) -> Server {
    let mut proc = Proc::spawn(
        &bin(),
        &["serve", "--dev", "--addr", "127.0.0.1:0"],
        &env.vars,
        &env.logs,
        "serve",
    );
    let base = proc.wait_for_line("spkeeper listening on ", Duration::from_secs(30));
    let info: Value = get_json(&format!("{base}/dev/info")).await;
    Server { proc, base, info }
}

impl Server {
    fn realm(&self) -> String {
        self.info["realm"].as_str().unwrap().to_string()
    }

    fn launch_url(&self) -> String {
        format!(
            "{}/launch?SPHostUrl={}&SPLanguage=en-US&SPClientTag=0&SPProductNumber=16.0.0.0",
            self.base,
            url::form_urlencoded::byte_serialize(self.base.as_bytes()).collect::<String>()
        )
    }

    async fn set_clock(&self, at: DateTime<Utc>) {
        let r = client()
            .post(format!("{}/dev/clock", self.base))
            .json(&json!({"now": at.to_rfc3339()}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }

    async fn acs_calls(&self) -> u64 {
        let v: Value = get_json(&format!("{}/dev/acs/stats", self.base)).await;
        v["token_requests"].as_u64().unwrap()
    }

    async fn token(&self, grant_id: &str) -> reqwest::Response {
        client()
            .post(format!("{}/token", self.base))
            .bearer_auth(API_KEY)
            .json(&json!({"grant_id": grant_id}))
            .send()
            .await
            .unwrap()
    }
}

/// A CLI command on the server's data directory, which `serve --dev` made: with `--dev`.
fn cli(env: &Env, args: &[&str]) -> (String, String) {
    let args: Vec<&str> = args.iter().copied().chain(["--dev"]).collect();
    let args = args.as_slice();
    let (code, out, err) = run(&bin(), args, &env.vars);
    assert_eq!(code, 0, "spkeeper {args:?} failed:\n{err}");
    std::fs::write(
        env.logs.join(format!(
            "cli-{}.log",
            args.join("_").replace(['/', ':'], "-")
        )),
        format!("{out}{err}"),
    )
    .unwrap();
    (out, err)
}

fn sweep_at(env: &Env, at: DateTime<Utc>) -> Value {
    let (out, _) = cli(env, &["sweep", "--now", &at.to_rfc3339()]);
    assert_eq!(out.lines().count(), 1, "one line of JSON: {out}");
    serde_json::from_str(out.trim()).unwrap()
}

/// Posts a launch (form body) and returns the response.
async fn post_launch(url: &str, body: String, content_type: Option<&str>) -> reqwest::Response {
    let mut req = client().post(url).body(body);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    req.send().await.unwrap()
}

fn form(token: &str) -> String {
    format!(
        "SPAppToken={}",
        url::form_urlencoded::byte_serialize(token.as_bytes()).collect::<String>()
    )
}

async fn assert_code(resp: reqwest::Response, status: u16, code: &str) {
    assert_eq!(resp.status().as_u16(), status, "{code}");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], code);
}

fn spec(server: &Server, now: DateTime<Utc>) -> ContextTokenSpec {
    ContextTokenSpec {
        client_id: CLIENT_ID.into(),
        audience_host: server.base.trim_start_matches("http://").to_string(),
        realm: server.realm(),
        cache_key: "attacker+key=".into(),
        sts_uri: server.info["sts_uri"].as_str().unwrap().to_string(),
        refresh_token: "attacker-refresh-token-value".into(),
        nbf: now,
        lifetime_hours: 12,
        numeric_dates: true,
    }
}

/// Bad launches are refused with their codes and write nothing.
async fn bad_launches_write_nothing(env: &Env, server: &Server) {
    let secret = SecretString::from(CLIENT_SECRET.to_string());
    let now = Utc::now();
    let url = server.launch_url();
    let sign = |claims: &Value| mint_context_token(claims, &secret);

    let wrong_secret = mint_context_token(
        &spec(server, now).claims(),
        &SecretString::from("d3Jvbmctc2VjcmV0".to_string()),
    );
    assert_code(
        post_launch(
            &url,
            form(&wrong_secret),
            Some("application/x-www-form-urlencoded"),
        )
        .await,
        401,
        "invalid_signature",
    )
    .await;

    let expired = sign(&spec(server, now - Days::hours(13)).claims());
    assert_code(
        post_launch(
            &url,
            form(&expired),
            Some("application/x-www-form-urlencoded"),
        )
        .await,
        401,
        "token_expired",
    )
    .await;

    let mut no_aud = spec(server, now).claims();
    no_aud.as_object_mut().unwrap().remove("aud");
    assert_code(
        post_launch(
            &url,
            form(&sign(&no_aud)),
            Some("application/x-www-form-urlencoded"),
        )
        .await,
        401,
        "invalid_audience",
    )
    .await;

    let claims = spec(server, now).claims();
    let key = spkeeper::core::context_token::signing_key(&secret);
    use base64::Engine;
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims.to_string());
    let none = format!(
        "{}.{payload}.",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#)
    );
    for t in [
        none,
        mint_with_header(&json!({"alg":"HS512","typ":"JWT"}), &claims, &key),
        mint_with_header(&json!({"alg":"RS256","typ":"JWT"}), &claims, &key),
    ] {
        assert_code(
            post_launch(&url, form(&t), Some("application/x-www-form-urlencoded")).await,
            401,
            "unsupported_algorithm",
        )
        .await;
    }

    let good = sign(&claims);
    let bad_host = format!(
        "{}/launch?SPHostUrl={}",
        server.base, "https%3A%2F%2Fevil.example.com%2F"
    );
    assert_code(
        post_launch(
            &bad_host,
            form(&good),
            Some("application/x-www-form-urlencoded"),
        )
        .await,
        403,
        "host_not_allowed",
    )
    .await;

    let mut untrusted = spec(server, now);
    untrusted.sts_uri = "https://evil.example.com/tokens/OAuth/2".into();
    assert_code(
        post_launch(
            &url,
            form(&sign(&untrusted.claims())),
            Some("application/x-www-form-urlencoded"),
        )
        .await,
        403,
        "untrusted_sts",
    )
    .await;

    let oversized = format!("{}&pad={}", form(&good), "x".repeat(70 * 1024));
    assert_code(
        post_launch(&url, oversized, Some("application/x-www-form-urlencoded")).await,
        413,
        "payload_too_large",
    )
    .await;

    let not_a_form = json!({"SPAppToken": good}).to_string();
    assert_code(
        post_launch(&url, not_a_form, Some("application/json")).await,
        415,
        "unsupported_media_type",
    )
    .await;

    // The store after all of that: no grant, no notice.
    let (grants, _) = cli(env, &["grants", "--json"]);
    assert_eq!(serde_json::from_str::<Value>(&grants).unwrap(), json!([]));
    let (notices, _) = cli(env, &["notices", "--json"]);
    assert_eq!(serde_json::from_str::<Value>(&notices).unwrap(), json!([]));
}

/// SharePoint's page → the auto-posted form → our 303 and cookie. Returns the token posted.
async fn launch_from_sharepoint(server: &Server, html: &str) -> String {
    let (action, token) = launch_form(html);
    assert!(
        action.starts_with(&format!("{}/launch?", server.base)),
        "{action}"
    );
    let resp = post_launch(
        &action,
        form(&token),
        Some("application/x-www-form-urlencoded"),
    )
    .await;
    assert_eq!(resp.status().as_u16(), 303);
    assert_eq!(
        resp.headers()["location"],
        format!("{}/status", server.base).as_str()
    );
    let cookie = resp.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let status = client()
        .get(format!("{}/status", server.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), 200);
    let page = status.text().await.unwrap();
    assert!(
        page.contains("Megan Bowen"),
        "the user was identified after launch"
    );
    token
}

/// Opens a SharePoint page (the site's launch button, or AppRedirect.aspx) and launches from it.
async fn launch_via(server: &Server, page_url: &str) -> String {
    let page = client()
        .get(page_url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    launch_from_sharepoint(server, &page).await
}

/// A context token and the refresh token inside it: both must stay out of the logs.
fn token_secrets(context_token: &str) -> [String; 2] {
    let rt = jwt_claims(context_token)["refreshtoken"]
        .as_str()
        .unwrap()
        .to_string();
    [context_token.to_string(), rt]
}

fn types(received: &[Received]) -> Vec<String> {
    received
        .iter()
        .map(|r| r.notice["type"].as_str().unwrap_or("").to_string())
        .collect()
}

async fn run_life(extra: &[(&str, &str)]) {
    let receiver = Receiver::start(WEBHOOK_SECRET).await;
    let env = env(&receiver, extra);
    let mut server = start(&env).await;
    let mut secrets: Vec<String> = vec![
        CLIENT_SECRET.into(),
        API_KEY.into(),
        WEBHOOK_SECRET.into(),
        WEBHOOK_SECRET.trim_start_matches("whsec_").into(),
    ];

    bad_launches_write_nothing(&env, &server).await;

    // Launch from the simulated SharePoint page.
    let first = launch_via(&server, &format!("{}/dev/sharepoint", server.base)).await;
    secrets.extend(token_secrets(&first));
    let (grants, _) = cli(&env, &["grants", "--json"]);
    let grants: Value = serde_json::from_str(&grants).unwrap();
    assert_eq!(grants.as_array().unwrap().len(), 1);
    let gid = grants[0]["id"].as_str().unwrap().to_string();
    assert_eq!(grants[0]["status"], "active");
    let expires: DateTime<Utc> = grants[0]["refresh_token_expires_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    // An access token, then the same one from the cache: no second ACS call.
    let resp = server.token(&gid).await;
    assert_eq!(resp.status(), 200);
    let a: Value = resp.json().await.unwrap();
    let calls = server.acs_calls().await;
    let b: Value = server.token(&gid).await.json().await.unwrap();
    assert_eq!(a["access_token"], b["access_token"]);
    assert_eq!(
        server.acs_calls().await,
        calls,
        "cached: no second ACS call"
    );
    assert_eq!(a["grant"]["status"], "active");
    secrets.push(a["access_token"].as_str().unwrap().to_string());

    // The sweeps: one notice per stage, none on a repeat.
    let mut expected = Vec::new();
    for days in [30i64, 7, 1] {
        let at = expires - Days::days(days) + Days::minutes(5);
        server.set_clock(at).await;
        let s = sweep_at(&env, at);
        assert_eq!(s["notices"]["refresh_token.expiring"], 1, "T-{days}: {s}");
        let again = sweep_at(&env, at);
        assert_eq!(
            again["notices"]["refresh_token.expiring"], 0,
            "repeat at T-{days}: {again}"
        );
        expected.push("refresh_token.expiring".to_string());
        let got = receiver
            .wait_for(expected.len(), Duration::from_secs(20))
            .await;
        assert_eq!(types(&got), expected);
        assert_eq!(got.last().unwrap().notice["days_left"], days);
    }

    // Expired: one notice; the token route now asks for a relaunch.
    let after = expires + Days::hours(1);
    server.set_clock(after).await;
    let s = sweep_at(&env, after);
    assert_eq!(
        (
            s["notices"]["refresh_token.expired"].as_u64(),
            s["expired"].as_u64()
        ),
        (Some(1), Some(1)),
        "{s}"
    );
    assert_eq!(sweep_at(&env, after)["notices"]["refresh_token.expired"], 0);
    expected.push("refresh_token.expired".into());
    let got = receiver
        .wait_for(expected.len(), Duration::from_secs(20))
        .await;
    assert_eq!(types(&got), expected);
    let resp = server.token(&gid).await;
    assert_eq!(resp.status().as_u16(), 409);
    let conflict: Value = resp.json().await.unwrap();
    assert_eq!(conflict["error"], "relaunch_required");

    // The renew link in the notice → SharePoint's AppRedirect.aspx → a fresh launch.
    let renew_url = got.last().unwrap().notice["renew_url"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(renew_url.starts_with(&format!("{}/renew/{gid}?", server.base)));
    let hop = client().get(&renew_url).send().await.unwrap();
    assert_eq!(hop.status().as_u16(), 302);
    let app_redirect = hop.headers()["location"].to_str().unwrap().to_string();
    assert!(
        app_redirect.starts_with(&format!(
            "{}/_layouts/15/AppRedirect.aspx?client_id={CLIENT_ID}&redirect_uri=",
            server.base
        )),
        "{app_redirect}"
    );
    let second = launch_via(&server, &app_redirect).await;
    secrets.extend(token_secrets(&second));

    // The all-clear.
    expected.push("refresh_token.renewed".into());
    let got = receiver
        .wait_for(expected.len(), Duration::from_secs(20))
        .await;
    assert_eq!(types(&got), expected);
    assert!(
        got.iter().all(|r| r.signature_valid),
        "every webhook signature verified"
    );
    let ids: std::collections::BTreeSet<_> = got.iter().map(|r| r.id.clone()).collect();
    assert_eq!(ids.len(), got.len(), "one id per notice");
    assert!(got.iter().all(|r| r.notice["id"] == r.id.as_str()));
    let resp = server.token(&gid).await;
    assert_eq!(resp.status(), 200, "renewed: tokens again");
    let renewed: Value = resp.json().await.unwrap();
    assert_eq!(renewed["grant"]["status"], "active");
    secrets.push(renewed["access_token"].as_str().unwrap().to_string());

    // The CLI's renew link verifies too, and nothing is left undelivered.
    let (link, _) = cli(&env, &["renew-link", &gid]);
    let hop = client().get(link.trim()).send().await.unwrap();
    assert_eq!(hop.status().as_u16(), 302);
    let (notices, _) = cli(&env, &["notices", "--json"]);
    assert_eq!(serde_json::from_str::<Value>(&notices).unwrap(), json!([]));

    // No log line of any process carries a token or a secret.
    server.proc.stop();
    secrets.extend(key_material(Path::new(&env.vars["SPKEEPER_DATA_DIR"])));
    let mut logs = server.proc.output();
    for entry in std::fs::read_dir(&env.logs).unwrap() {
        logs.push_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap_or_default());
    }
    assert!(logs.contains("notice delivered"), "the logs were captured");
    assert_no_secrets(&logs, &secrets);
}

/// Every key and secret in the data directory's private files (ids such as the realm are
/// not secrets and are logged on purpose).
fn key_material(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let read = |file: &str| -> Value {
        std::fs::read_to_string(dir.join(file))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null)
    };
    let keys = read("keys.json");
    out.push(keys["link_key"].as_str().unwrap_or_default().to_string());
    if let Some(ring) = keys["token_keys"].as_object() {
        out.extend(ring.values().filter_map(Value::as_str).map(String::from));
    }
    let dev = read("dev.json");
    for field in ["client_secret", "api_key", "webhook_secret", "sim_key"] {
        out.push(dev[field].as_str().unwrap_or_default().to_string());
    }
    assert!(
        out.iter().filter(|s| !s.is_empty()).count() >= 6,
        "key files were read"
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_life_on_the_embedded_store() {
    run_life(&[]).await;
}

/// The same life, unchanged, with the grants in DynamoDB and the notices through SQS (moto).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_life_on_dynamodb_and_sqs() {
    let sdk = spkeeper::testkit::moto::sdk_config().await;
    let (table, queue) = spkeeper::testkit::moto::fresh(&sdk, "e2e").await;
    let moto = spkeeper::testkit::moto::url();
    run_life(&[
        ("SPKEEPER_STORE", "dynamodb"),
        ("SPKEEPER_TABLE", &table),
        ("SPKEEPER_QUEUE_URL", &queue),
        ("AWS_ENDPOINT_URL", &moto),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_deliveries_are_retried_until_the_receiver_takes_them() {
    let receiver = Receiver::start(WEBHOOK_SECRET).await;
    let env = env(&receiver, &[]);
    let server = start(&env).await;
    receiver.fail_next(2);
    launch_via(&server, &format!("{}/dev/sharepoint", server.base)).await;
    let (grants, _) = cli(&env, &["grants", "--json"]);
    let expires: DateTime<Utc> =
        serde_json::from_str::<Value>(&grants).unwrap()[0]["refresh_token_expires_at"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
    let at = expires - Days::days(30);
    server.set_clock(at).await;
    sweep_at(&env, at);
    // two failures (1 s, then 2 s of backoff with jitter), then delivery
    let got = receiver.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(types(&got), vec!["refresh_token.expiring"]);
    assert!(got[0].signature_valid);
}

/// What the README's walkthrough has the user look at: the page, the inbox on it, `/status`,
/// and the curl of step 2.
struct Walk<'a> {
    server: &'a Server,
    env: &'a Env,
    browser: Browser,
    key: String,
    grant: String,
}

/// A notice as the page's Webhook inbox shows it.
#[derive(Debug)]
struct InboxRow {
    text: String,
    renew_link: Option<String>,
    body: Value,
    /// The body is unfolded (`<details open>`).
    unfolded: bool,
}

/// The inbox on the page, newest first: each row's text, its renew link (an `<a href>`) and
/// its body (the escaped JSON in the row under it).
fn inbox_rows(page: &Page) -> Vec<InboxRow> {
    page.html
        .split("<tr class=\"notice\">")
        .skip(1)
        .map(|chunk| {
            let (row, rest) = chunk.split_once("</tr>").unwrap();
            let renew_link = row
                .split_once("<a class=\"renew-link\" href=\"")
                .map(|(_, r)| {
                    html_escape::decode_html_entities(r.split('"').next().unwrap()).into_owned()
                });
            let unfolded = rest.split_once("<details").unwrap().1.starts_with(" open");
            let pre = rest
                .split_once("<pre>")
                .unwrap()
                .1
                .split_once("</pre>")
                .unwrap()
                .0;
            InboxRow {
                text: page_text(row),
                renew_link,
                unfolded,
                body: serde_json::from_str(&html_escape::decode_html_entities(pre)).unwrap(),
            }
        })
        .collect()
}

/// The text of the element with this id on the page.
fn by_id(page: &Page, id: &str) -> String {
    let start = page
        .html
        .find(&format!("id=\"{id}\">"))
        .unwrap_or_else(|| panic!("no #{id} on the page"));
    let rest = &page.html[start..];
    let inner = &rest[rest.find('>').unwrap() + 1..];
    page_text(&inner[..inner.find('<').unwrap()])
}

impl Walk<'_> {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.base)
    }

    async fn sharepoint(&self) -> Page {
        self.browser.open(&self.url("/dev/sharepoint")).await
    }

    /// "ACS token requests so far", as the page shows it.
    async fn acs_requests(&self) -> u64 {
        by_id(&self.sharepoint().await, "acs-token-requests")
            .parse()
            .unwrap()
    }

    /// The README's curl: (status, Retry-After, body).
    /// The README's `token` answers `409 relaunch_required` with a renew link.
    async fn answers_relaunch_required(&self) {
        let (code, _, body) = self.curl().await;
        assert_eq!(
            (code, body["error"].as_str()),
            (409, Some("relaunch_required")),
            "{body}"
        );
        assert!(body["renew_url"].is_string());
    }

    async fn curl(&self) -> (u16, Option<String>, Value) {
        let resp = client()
            .post(self.url("/token"))
            .header("Authorization", format!("Bearer {}", self.key))
            .header("content-type", "application/json")
            .body(format!("{{\"grant_id\":\"{}\"}}", self.grant))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        (status, retry_after, resp.json().await.unwrap())
    }

    /// Reloads the page until the inbox holds `n` notices (delivery takes about a second).
    async fn inbox_until(&self, n: usize) -> (Page, Vec<InboxRow>) {
        for _ in 0..100 {
            let page = self.sharepoint().await;
            let rows = inbox_rows(&page);
            if rows.len() >= n {
                return (page, rows);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("the page's inbox did not show {n} notices");
    }

    async fn status_page(&self) -> Page {
        self.browser.open(&self.url("/status")).await
    }

    fn grants(&self) -> Value {
        serde_json::from_str(&cli(self.env, &["grants", "--json"]).0).unwrap()
    }
}

/// The newest notice on the page: of this type and days left, its signature checked, a renew
/// link for the grant, and its body the notice itself.
fn assert_newest(rows: &[InboxRow], walk: &Walk<'_>, kind: &str, days: i64) {
    let newest = &rows[0];
    assert!(newest.unfolded, "the newest body is unfolded");
    assert!(
        rows[1..].iter().all(|r| !r.unfolded),
        "the others are folded"
    );
    assert_eq!(newest.body["type"], kind, "{newest:?}");
    assert_eq!(newest.body["days_left"], days, "{newest:?}");
    assert_eq!(newest.body["grant"]["id"], walk.grant.as_str());
    assert_eq!(
        newest.body["renew_url"].as_str(),
        newest.renew_link.as_deref()
    );
    assert!(
        newest
            .renew_link
            .as_deref()
            .is_some_and(|l| l.starts_with(&walk.url(&format!("/renew/{}?", walk.grant)))),
        "{newest:?}"
    );
    let created = newest.body["created_at"].as_str().unwrap();
    assert!(
        newest.text.starts_with(&format!(
            "{created} {kind} {} {days} signature ok renew link",
            &walk.grant[..8]
        )),
        "{newest:?}"
    );
}

/// The README's "Five minutes with the simulator", steps 1 to 5, as written: `serve --dev` with
/// nothing configured, a browser that opens the README's URLs and presses the page's buttons
/// (posting the page's own forms), the README's curl, the README's CLI commands, and at each
/// step what the README says the user sees there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_walkthrough_works_with_nothing_but_serve_dev() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join(".spkeeper");
    let env = Env {
        vars: BTreeMap::from([("SPKEEPER_DATA_DIR".to_string(), data.display().to_string())]),
        logs: dir.path().to_path_buf(),
        _dir: dir,
    };
    let server = start(&env).await;
    let mut walk = Walk {
        server: &server,
        env: &env,
        browser: Browser::new(),
        key: String::new(),
        grant: String::new(),
    };

    // 1. Launch: the page's button, then /status with the site, the user (looked up with the
    // launch's own access token), "connected until" six months from now, and Renew now.
    let page = walk.sharepoint().await;
    let launched_at = Utc::now();
    let status = walk.browser.press(&page, "Launch add-in").await;
    assert_eq!(
        (status.status, status.url.as_str()),
        (200, walk.url("/status").as_str())
    );
    let text = page_text(&status.html);
    assert!(text.contains("The add-in is connected"), "{text}");
    assert!(text.contains(&format!("Site {}", server.base)), "{text}");
    assert!(
        text.contains("User Megan Bowen <megan@contoso.example>"),
        "{text}"
    );
    let six_months = |t: DateTime<Utc>| {
        t.checked_add_months(chrono::Months::new(6))
            .unwrap()
            .format("Connected until %Y-%m-%d")
            .to_string()
    };
    assert!(
        text.contains(&six_months(launched_at)) || text.contains(&six_months(Utc::now())),
        "{text}"
    );
    assert!(text.contains("Renew now"), "{text}");

    // 2. The curl, with KEY from dev.json and GRANT from `grants --json --dev`. The launch made
    // the first ACS call: the counter reads 1, and the curl is answered from that cached token.
    let dev: Value =
        serde_json::from_str(&std::fs::read_to_string(data.join("dev.json")).unwrap()).unwrap();
    walk.key = dev["api_key"].as_str().unwrap().to_string();
    walk.grant = walk.grants()[0]["id"].as_str().unwrap().to_string();
    assert_eq!(walk.acs_requests().await, 1, "the launch's own exchange");
    let (code, _, first) = walk.curl().await;
    assert_eq!(code, 200, "{first}");
    assert_eq!(first["token_type"], "Bearer");
    assert_eq!(walk.acs_requests().await, 1, "from the cache");
    // forget the cached access tokens: a miss (ACS asked), then a hit
    let page = walk
        .browser
        .press(&walk.sharepoint().await, "forget cached access tokens")
        .await;
    assert_eq!(by_id(&page, "acs-token-requests"), "1");
    let (code, _, fresh) = walk.curl().await;
    assert_eq!(code, 200);
    // (compared without printing: a failing test shows no token)
    assert!(
        fresh["access_token"] != first["access_token"],
        "a new token"
    );
    assert_eq!(walk.acs_requests().await, 2, "a cache miss asks ACS");
    let (code, _, again) = walk.curl().await;
    assert_eq!(code, 200);
    assert!(
        again["access_token"] == fresh["access_token"],
        "the same token"
    );
    assert_eq!(walk.acs_requests().await, 2, "a cache hit does not");

    // 3. Travel in time: each press shows the new notice in the page's inbox (with its
    // signature checked, renew link and body), and /status, reloaded, follows the clock.
    let mut page = walk.sharepoint().await;
    for (n, (kind, days, headline)) in [
        (
            "refresh_token.expiring",
            30,
            "The connection ends in 30 days",
        ),
        ("refresh_token.expiring", 7, "The connection ends in 7 days"),
        ("refresh_token.expiring", 1, "The connection ends in 1 day"),
        ("refresh_token.expired", 0, "The connection has expired"),
    ]
    .into_iter()
    .enumerate()
    {
        page = walk.browser.press(&page, "jump to the next notice").await;
        let rows = inbox_rows(&page);
        assert_eq!(
            rows.len(),
            n + 1,
            "the notice is on the page the button returns to"
        );
        assert_newest(&rows, &walk, kind, days);
        let status = walk.status_page().await;
        assert_eq!(
            status.status, 200,
            "the session went along: {}",
            status.html
        );
        assert!(
            page_text(&status.html).contains(headline),
            "{}",
            status.html
        );
    }
    walk.answers_relaunch_required().await;
    // a browser whose session has ended is told so, and what to do
    let signed_out = Browser::new().open(&walk.url("/status")).await;
    assert_eq!(signed_out.status, 401);
    let text = page_text(&signed_out.html);
    assert!(
        text.contains("your session has ended")
            && text.contains("Open the add-in from your SharePoint site"),
        "{text}"
    );
    // the inbox as JSON is what the page shows
    let inbox: Value = get_json(&walk.url("/dev/webhook")).await;
    let shown: Vec<Value> = inbox_rows(&page).into_iter().map(|r| r.body).collect();
    let mut listed: Vec<Value> = inbox
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert!(e["received_at"].is_string() && e["webhook_id"] == e["notice"]["id"]);
            assert_eq!(e["signature_valid"], true);
            e["notice"].clone()
        })
        .collect();
    listed.reverse();
    assert_eq!(shown, listed, "newest first on the page");
    // +1 day moves the clock by hand
    let simulated_now = |p: &Page| -> DateTime<Utc> {
        let t = page_text(&p.html);
        let at = t.split("Simulated now: ").nth(1).unwrap();
        at.split(' ').next().unwrap().parse().unwrap()
    };
    let was = simulated_now(&page);
    page = walk.browser.press(&page, "+1 day").await;
    let moved = simulated_now(&page) - was;
    // (real time goes on meanwhile)
    assert!(
        moved >= Days::days(1) && moved < Days::days(1) + Days::minutes(1),
        "{moved}"
    );
    // the CLI runs on the same configuration and simulated time
    assert_eq!(walk.grants()[0]["status"], "expired");
    assert_eq!(
        serde_json::from_str::<Value>(&cli(&env, &["notices", "--json"]).0).unwrap(),
        json!([]),
        "all delivered"
    );
    let swept: Value = serde_json::from_str(cli(&env, &["sweep"]).0.trim()).unwrap();
    assert_eq!(
        swept["notices"]["refresh_token.expired"], 0,
        "once: {swept}"
    );
    let (cli_link, _) = cli(&env, &["renew-link", &walk.grant]);
    assert_eq!(
        client()
            .get(cli_link.trim())
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        302
    );

    // 4. Renew: the expired notice's renew link on the page → AppRedirect.aspx → a fresh
    // launch → /status; the all-clear lands in the inbox; tokens again.
    let link = inbox_rows(&page)[0].renew_link.clone().unwrap();
    let hop = walk.browser.send("GET", &link, None).await;
    assert_eq!(hop.status().as_u16(), 302);
    let to = hop.headers()["location"].to_str().unwrap().to_string();
    assert!(
        to.starts_with(&walk.url("/_layouts/15/AppRedirect.aspx?")),
        "{to}"
    );
    let app_redirect = walk.browser.open(&to).await;
    let status = walk.browser.press(&app_redirect, "Launch add-in").await;
    assert_eq!(status.url, walk.url("/status"));
    assert!(page_text(&status.html).contains("The add-in is connected"));
    let (_, rows) = walk.inbox_until(5).await;
    assert_newest(
        &rows,
        &walk,
        "refresh_token.renewed",
        rows[0].body["days_left"].as_i64().unwrap(),
    );
    assert!(rows[0].body["days_left"].as_i64().unwrap() >= 181);
    assert_eq!(walk.curl().await.0, 200);

    // 5. Break ACS: failures stay on until turned off (or for the requests chosen); forget the
    // cached access tokens so the curl reaches ACS.
    let before = walk.grants();
    for (button, slow) in [
        ("HTTP 500", false),
        ("HTTP 429", false),
        ("slow (6 s)", true),
    ] {
        let page = walk.browser.press(&walk.sharepoint().await, button).await;
        assert_eq!(
            by_id(&page, "acs-fault"),
            format!("{button}, until turned off")
        );
        let page = walk
            .browser
            .press(&page, "forget cached access tokens")
            .await;
        let calls = by_id(&page, "acs-token-requests").parse::<u64>().unwrap();
        let started = std::time::Instant::now();
        let (code, retry_after, body) = walk.curl().await;
        assert_eq!(
            (code, body["error"].as_str()),
            (503, Some("sts_unavailable")),
            "{button}: {body}"
        );
        assert_eq!(retry_after.as_deref(), Some("5"), "{button}");
        assert_eq!(
            walk.acs_requests().await,
            calls + 3,
            "{button}: three tries"
        );
        if slow {
            assert!(
                started.elapsed() >= Duration::from_secs(15),
                "three 5-second timeouts"
            );
        } else {
            // still on: the next curl fails too
            assert_eq!(walk.curl().await.0, 503, "{button}");
        }
        let page = walk
            .browser
            .press(&walk.sharepoint().await, "turn off")
            .await;
        assert_eq!(by_id(&page, "acs-fault"), "nothing: it answers normally");
    }
    assert_eq!(walk.grants(), before, "the grant is untouched");
    // for the next 3 requests: the three tries of one curl, then ACS answers again
    // HTTP 500 for the next `count` requests, pressed on the page.
    let fail_next = async |count: &str| {
        walk.browser
            .press_in(
                &walk.sharepoint().await,
                Some("/dev/acs/fault"),
                "HTTP 500",
                &[("count", count)],
            )
            .await
    };
    let page = fail_next("3").await;
    assert_eq!(
        by_id(&page, "acs-fault"),
        "HTTP 500, for the next 3 requests"
    );
    walk.browser
        .press(&page, "forget cached access tokens")
        .await;
    assert_eq!(walk.curl().await.0, 503);
    assert_eq!(walk.curl().await.0, 200);
    // for the next request only: the retry succeeds
    let page = fail_next("1").await;
    assert_eq!(by_id(&page, "acs-fault"), "HTTP 500, for the next request");
    let page = walk
        .browser
        .press(&page, "forget cached access tokens")
        .await;
    let calls = by_id(&page, "acs-token-requests").parse::<u64>().unwrap();
    assert_eq!(walk.curl().await.0, 200);
    let page = walk.sharepoint().await;
    assert_eq!(by_id(&page, "acs-token-requests"), (calls + 2).to_string());
    assert_eq!(by_id(&page, "acs-fault"), "nothing: it answers normally");
    // invalid_client: an operator problem
    let page = walk.browser.press(&page, "invalid_client").await;
    let page = walk
        .browser
        .press(&page, "forget cached access tokens")
        .await;
    let (code, _, body) = walk.curl().await;
    assert_eq!(
        (code, body["error"].as_str()),
        (502, Some("sts_rejected_client")),
        "{body}"
    );
    let page = walk.browser.press(&page, "turn off").await;
    // invalid_grant: the user revoked the add-in
    let page = walk.browser.press(&page, "invalid_grant").await;
    let page = walk
        .browser
        .press(&page, "forget cached access tokens")
        .await;
    let calls = by_id(&page, "acs-token-requests").parse::<u64>().unwrap();
    walk.answers_relaunch_required().await;
    let (_, rows) = walk.inbox_until(6).await;
    assert_newest(
        &rows,
        &walk,
        "refresh_token.revoked",
        rows[0].body["days_left"].as_i64().unwrap(),
    );
    assert_eq!(walk.curl().await.0, 409);
    assert_eq!(
        walk.acs_requests().await,
        calls + 1,
        "a revoked grant does not ask ACS"
    );
    // turned off, a launch brings it back
    let page = walk
        .browser
        .press(&walk.sharepoint().await, "turn off")
        .await;
    let status = walk.browser.press(&page, "Launch add-in").await;
    assert!(page_text(&status.html).contains("The add-in is connected"));
    let (_, rows) = walk.inbox_until(7).await;
    assert_eq!(rows[0].body["type"], "refresh_token.renewed");
    assert_eq!(walk.curl().await.0, 200);
}

/// The page's inbox shows whatever reached `/dev/webhook` as text: a forged notice is flagged,
/// its fields escaped, and a renew link that is not http(s) is not a link.
#[tokio::test]
async fn the_page_inbox_escapes_what_it_received_and_flags_a_bad_signature() {
    let dir = tempfile::tempdir().unwrap();
    let env = Env {
        vars: BTreeMap::from([(
            "SPKEEPER_DATA_DIR".to_string(),
            dir.path().join("data").display().to_string(),
        )]),
        logs: dir.path().to_path_buf(),
        _dir: dir,
    };
    let server = start(&env).await;
    // An unsigned notice whose link looks like a real one: shown, never as a link.
    let phishing =
        json!({"type": "refresh_token.expiring", "renew_url": "https://evil.example/renew"});
    let forged = json!({"type": "<script>alert(1)</script>", "created_at": "<b>now</b>",
        "grant": {"id": "é<i>ü€xyzxyz"}, "renew_url": "javascript:alert(1)", "days_left": "<b>"});
    for notice in [&phishing, &forged] {
        let r = client()
            .post(format!("{}/dev/webhook", server.base))
            .header("content-type", "application/json")
            .body(notice.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400, "no signature");
    }
    let page = Browser::new()
        .open(&format!("{}/dev/sharepoint", server.base))
        .await;
    assert_eq!(page.status, 200);
    assert!(!page.html.contains("<script>alert"), "escaped");
    assert!(!page.html.contains("<b>now"), "escaped");
    assert!(!page.html.contains("href=\"javascript:"), "not a link");
    assert!(
        !page.html.contains("href=\"https://evil.example"),
        "not a link"
    );
    let rows = inbox_rows(&page);
    assert_eq!(rows.len(), 2);
    let row = rows
        .iter()
        .find(|r| r.body == forged)
        .expect("the body, escaped, reads back as it came");
    for r in &rows {
        assert!(r.renew_link.is_none(), "{r:?}");
        assert!(r.text.contains("BAD SIGNATURE"), "{r:?}");
    }
    assert!(row.text.contains("BAD SIGNATURE"));
}

/// The JSON twins of the page's ACS controls, as the README gives them: a failure stays on
/// until `{"mode":"off"}`, or for `count` requests; the stats say what is on; forgetting the
/// cached access tokens sends the next `/token` to ACS; nonsense is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acs_failures_by_json_stay_on_until_turned_off_or_for_their_count() {
    let receiver = Receiver::start(WEBHOOK_SECRET).await;
    let env = env(&receiver, &[]);
    let server = start(&env).await;
    launch_via(&server, &format!("{}/dev/sharepoint", server.base)).await;
    let (grants, _) = cli(&env, &["grants", "--json"]);
    let gid = serde_json::from_str::<Value>(&grants).unwrap()[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let post = |path: &str, body: Value| {
        client()
            .post(format!("{}{path}", server.base))
            .json(&body)
            .send()
    };
    let stats_url = format!("{}/dev/acs/stats", server.base);
    let stats = || get_json(&stats_url);

    let r = post("/dev/acs/fault", json!({"mode": "500", "count": 3}))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let on = json!({"mode": "500", "remaining": 3});
    assert_eq!(r.json::<Value>().await.unwrap()["fault"], on);
    assert_eq!(stats().await["fault"], on);
    // cached: ACS is not asked
    assert_eq!(server.token(&gid).await.status(), 200);
    assert_eq!(stats().await["fault"], on);
    let r = post("/dev/access-tokens/forget", json!({})).await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"grants": 1}));
    let calls = server.acs_calls().await;
    assert_code(server.token(&gid).await, 503, "sts_unavailable").await;
    assert_eq!(server.acs_calls().await, calls + 3);
    assert_eq!(
        stats().await["fault"],
        Value::Null,
        "three requests, then off"
    );
    assert_eq!(server.token(&gid).await.status(), 200);

    // without a count: on until turned off
    let r = post("/dev/acs/fault", json!({"mode": "invalid_client"}))
        .await
        .unwrap();
    let until_off = json!({"mode": "invalid_client", "remaining": null});
    assert_eq!(r.json::<Value>().await.unwrap()["fault"], until_off);
    post("/dev/access-tokens/forget", json!({})).await.unwrap();
    for _ in 0..3 {
        assert_code(server.token(&gid).await, 502, "sts_rejected_client").await;
    }
    assert_eq!(stats().await["fault"], until_off);
    let r = post("/dev/acs/fault", json!({"mode": "off"}))
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["fault"], Value::Null);
    assert_eq!(server.token(&gid).await.status(), 200);

    for bad in [
        json!({"mode": "teapot"}),
        json!({"mode": "500", "count": 0}),
        json!({"mode": "500", "count": "lots"}),
        json!({"mode": "500", "count": 100_000}),
    ] {
        let r = post("/dev/acs/fault", bad.clone()).await.unwrap();
        assert_code(r, 400, "bad_request").await;
    }
    assert_eq!(
        stats().await["fault"],
        Value::Null,
        "a refused request changes nothing"
    );
}

#[test]
fn bad_configuration_stops_the_cli_with_exit_2_naming_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data").display().to_string();
    let base = BTreeMap::from([("SPKEEPER_DATA_DIR".to_string(), data)]);
    let (code, _, err) = run(&bin(), &["grants"], &base);
    assert_eq!(code, 2);
    assert_eq!(
        err.trim().lines().last().unwrap(),
        "error: SPKEEPER_CLIENT_ID: is required (or SPKEEPER_ENTRA_CLIENT_ID, for Entra ID sign-in)"
    );

    let mut env = base.clone();
    for (k, v) in [
        ("SPKEEPER_CLIENT_ID", CLIENT_ID),
        ("SPKEEPER_PUBLIC_URL", "https://addin.example.com"),
        ("SPKEEPER_ALLOWED_SP_HOSTS", "*.sharepoint.com"),
        ("SPKEEPER_CLIENT_SECRET", CLIENT_SECRET),
        ("SPKEEPER_API_KEY", "short"),
    ] {
        env.insert(k.into(), v.into());
    }
    let (code, out, err) = run(&bin(), &["sweep"], &env);
    assert_eq!(code, 2);
    assert!(
        err.contains("SPKEEPER_API_KEY") && !err.contains("short") && out.is_empty(),
        "{err}"
    );

    env.insert("SPKEEPER_API_KEY".into(), API_KEY.into());
    env.insert("SPKEEPER_NOTICE_DAYS".into(), "30,soon".into());
    let (code, _, err) = run(&bin(), &["sweep"], &env);
    assert_eq!(
        (code, err.contains("SPKEEPER_NOTICE_DAYS")),
        (2, true),
        "{err}"
    );

    env.remove("SPKEEPER_NOTICE_DAYS");
    let (code, out, _) = run(&bin(), &["sweep", "--dry-run"], &env);
    assert_eq!(code, 0);
    let summary: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(summary["examined"], 0);

    let (code, _, err) = run(&bin(), &["renew-link", "not-a-grant"], &env);
    assert_eq!((code, err.contains("not a grant id")), (2, true));
    let (code, _, err) = run(
        &bin(),
        &["renew-link", "0123456789abcdef0123456789abcdef"],
        &env,
    );
    assert_eq!((code, err.contains("no grant")), (1, true));
    let (code, _, _) = run(&bin(), &["frobnicate"], &env);
    assert_eq!(code, 2);
    let (code, _, _) = run(&bin(), &["sweep", "--now", "yesterday"], &env);
    assert_eq!(code, 2);

    let (code, help, _) = run(&bin(), &["serve", "--help"], &env);
    assert_eq!(code, 0);
    assert!(!help.contains(CLIENT_SECRET) && !help.contains(API_KEY));
}

/// The production variables, all set: nothing is left for dev values to fill.
fn production_env(data: &str) -> BTreeMap<String, String> {
    [
        ("SPKEEPER_DATA_DIR", data),
        ("SPKEEPER_CLIENT_ID", CLIENT_ID),
        ("SPKEEPER_CLIENT_SECRET", CLIENT_SECRET),
        ("SPKEEPER_PUBLIC_URL", "https://addin.example.com"),
        ("SPKEEPER_ALLOWED_SP_HOSTS", "*.sharepoint.com"),
        ("SPKEEPER_API_KEY", API_KEY),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

#[tokio::test]
async fn a_plain_command_never_uses_a_dev_configuration_beside_it() {
    let receiver = Receiver::start(WEBHOOK_SECRET).await;
    let env = env(&receiver, &[]);
    // `serve --dev` leaves its configuration (and a shifted clock) in the data directory.
    let mut dev = start(&env).await;
    dev.set_clock(Utc::now() + chrono::Duration::days(170))
        .await;
    dev.proc.stop();
    let data = env.vars["SPKEEPER_DATA_DIR"].clone();

    // A production `serve` on that directory refuses to start: no simulator, no dev values,
    // no simulated clock can reach it.
    let prod = production_env(&data);
    let (code, out, err) = run(&bin(), &["serve", "--addr", "127.0.0.1:0"], &prod);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("dev configuration") && err.contains("--dev"),
        "{err}"
    );
    assert!(!out.contains("listening"), "{out}");
    for args in [
        &["sweep"][..],
        &["grants"],
        &["notices"],
        &["renew-link", "0123456789abcdef0123456789abcdef"],
    ] {
        let (code, _, err) = run(&bin(), args, &prod);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains("dev configuration"), "{args:?}: {err}");
    }
    // With --dev it is the dev configuration, on purpose.
    let (code, out, err) = run(&bin(), &["grants", "--json", "--dev"], &prod);
    assert_eq!((code, out.trim()), (0, "[]"), "{err}");

    // --dev on a directory without one is a usage error, not a silent production run.
    let fresh = tempfile::tempdir().unwrap();
    let clean = production_env(&fresh.path().join("data").display().to_string());
    let (code, _, err) = run(&bin(), &["grants", "--dev"], &clean);
    assert_eq!(code, 2, "{err}");
    // ...and a plain command there never mounts a dev route.
    let mut plain = Proc::spawn(
        &bin(),
        &["serve", "--addr", "127.0.0.1:0"],
        &clean,
        fresh.path(),
        "serve",
    );
    let base = plain.wait_for_line("spkeeper listening on ", Duration::from_secs(30));
    let mut tried = Vec::new();
    for (method, path) in [
        ("GET", "/dev/sharepoint"),
        ("GET", "/dev/info"),
        ("POST", "/dev/clock"),
        (
            "GET",
            "/_layouts/15/AppRedirect.aspx?client_id=x&redirect_uri=y",
        ),
        ("GET", "/_api/web/currentuser"),
        ("GET", "/_vti_bin/client.svc"),
        ("GET", "/sites/dev/_vti_bin/client.svc"),
        ("POST", "/dev/acs/tokens/OAuth/2"),
        (
            "GET",
            "/dev/entra/organizations/v2.0/.well-known/openid-configuration",
        ),
        ("POST", "/dev/acs/fault"),
        ("GET", "/dev/acs/stats"),
        ("POST", "/dev/access-tokens/forget"),
        ("POST", "/dev/sweep"),
        ("GET", "/dev/webhook"),
        ("POST", "/dev/webhook"),
        ("GET", "/dev/entra/organizations/oauth2/v2.0/authorize"),
        ("POST", "/dev/entra/authorize/decide"),
        ("POST", "/dev/entra/organizations/oauth2/v2.0/token"),
        ("GET", "/dev/entra/organizations/discovery/v2.0/keys"),
        ("POST", "/dev/entra/fault"),
        ("POST", "/dev/entra/rotate-keys"),
        ("POST", "/dev/entra/revoke"),
        ("GET", "/dev/entra/stats"),
    ] {
        tried.push(path.split('?').next().unwrap().to_string());
        let r = client()
            .request(method.parse().unwrap(), format!("{base}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 404, "{method} {path}");
    }
    // every route of the simulator was tried
    for route in dev_routes() {
        assert!(
            tried.contains(
                &route
                    .replace("{tenant}", "organizations")
                    .replace("{site}", "dev")
            ),
            "{route} is a dev route: add it to this test"
        );
    }
    plain.stop();
}

/// The paths the simulator's router mounts, read from its source.
fn dev_routes() -> Vec<String> {
    let source =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/dev/mod.rs"))
            .unwrap();
    let routes: Vec<String> = source
        .split(".route(")
        .skip(1)
        .filter_map(|r| r.split('"').nth(1).map(String::from))
        .collect();
    assert!(routes.len() >= 20, "the routes were read: {routes:?}");
    routes
}

/// Against DynamoDB the CLI uses the functions' keys (Secrets Manager) or none: it never makes
/// a local key file that would print renew links production rejects.
#[test]
fn the_cli_on_dynamodb_without_the_secrets_arn_refuses_and_makes_no_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut env = production_env(&data.display().to_string());
    for (k, v) in [
        ("SPKEEPER_STORE", "dynamodb"),
        ("SPKEEPER_TABLE", "spkeeper"),
        (
            "SPKEEPER_QUEUE_URL",
            "https://sqs.us-east-1.amazonaws.com/1/q",
        ),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ] {
        env.insert(k.into(), v.into());
    }
    for args in [
        &["renew-link", "0123456789abcdef0123456789abcdef"][..],
        &["sweep"],
        &["grants"],
        &["serve", "--addr", "127.0.0.1:0"],
    ] {
        let (code, out, err) = run(&bin(), args, &env);
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert!(
            err.contains("SPKEEPER_SECRETS_ARN") && err.lines().count() == 1,
            "{args:?}: {err}"
        );
        assert!(!out.contains("https://"), "{args:?}: {out}");
    }
    assert!(!data.exists(), "a key file was made in {}", data.display());
}

#[test]
fn a_sweep_in_the_future_outside_dev_needs_dry_run_or_force() {
    let dir = tempfile::tempdir().unwrap();
    let env = production_env(&dir.path().join("data").display().to_string());
    let future = (Utc::now() + chrono::Duration::days(175)).to_rfc3339();
    let (code, out, err) = run(&bin(), &["sweep", "--now", &future], &env);
    assert_eq!(code, 2, "{out}");
    assert!(
        err.contains("--dry-run") && err.contains("--force"),
        "{err}"
    );
    for extra in ["--dry-run", "--force"] {
        let (code, out, err) = run(&bin(), &["sweep", "--now", &future, extra], &env);
        assert_eq!(code, 0, "{extra}: {err}");
        assert!(out.contains("\"examined\""), "{out}");
    }
    // The past (or now) needs neither.
    let past = (Utc::now() - chrono::Duration::days(1)).to_rfc3339();
    assert_eq!(run(&bin(), &["sweep", "--now", &past], &env).0, 0);
}

/// `-h` and `--help` print the same, every option has a line of help, and the completions
/// command prints a script for each shell that names every command.
#[test]
fn help_is_the_same_either_way_and_completions_cover_every_command() {
    let env = BTreeMap::new();
    let commands = [
        "serve",
        "sweep",
        "grants",
        "renew-link",
        "migrate",
        "forget",
        "completions",
        "notices",
    ];
    for args in std::iter::once(vec![]).chain(commands.iter().map(|c| vec![*c])) {
        let short: Vec<&str> = args.iter().copied().chain(["-h"]).collect();
        let long: Vec<&str> = args.iter().copied().chain(["--help"]).collect();
        let (code_s, out_s, _) = run(&bin(), &short, &env);
        let (code_l, out_l, _) = run(&bin(), &long, &env);
        assert_eq!((code_s, code_l), (0, 0), "{args:?}");
        assert_eq!(out_s, out_l, "{args:?}: -h and --help differ");
        // every option line carries its help text
        // (on the same line, or indented on the next)
        let lines: Vec<&str> = out_l.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let opt = line.trim_start();
            if !opt.starts_with('-') {
                continue;
            }
            let indent = line.len() - opt.len();
            let same_line = opt
                .split_once("  ")
                .is_some_and(|(_, t)| !t.trim().is_empty());
            let next_line = lines.get(i + 1).is_some_and(|n| {
                let t = n.trim_start();
                !t.is_empty() && !t.starts_with('-') && n.len() - t.len() > indent
            });
            assert!(same_line || next_line, "{args:?}: no help for {line:?}");
        }
    }
    for shell in ["bash", "zsh", "fish"] {
        let (code, out, err) = run(&bin(), &["completions", shell], &env);
        assert_eq!(code, 0, "{shell}: {err}");
        for c in commands {
            assert!(out.contains(c), "{shell}: {c} missing");
        }
    }
    let (code, _, err) = run(&bin(), &["completions", "cmd.exe"], &env);
    assert_eq!(code, 2, "{err}");
}

/// On DynamoDB, `notices --dead-letter-queue` lists the notices SQS gave up on and leaves them
/// there (listing twice shows the same); on the embedded store the option is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notices_lists_the_dead_letter_queue_on_dynamodb_and_leaves_it_there() {
    use spkeeper::testkit::moto;
    let sdk = moto::sdk_config().await;
    let (table, queue) = moto::fresh(&sdk, "dlq").await;
    let (_, dead_letters) = moto::fresh(&sdk, "dlq").await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let grant = "0123456789abcdef0123456789abcdef";
    let ids = ["ntc_dead_letter_one", "ntc_dead_letter_two"];
    for id in ids {
        let body = json!({"id": id, "type": "refresh_token.expired", "grant": {"id": grant},
            "created_at": "2026-11-20T00:00:00Z"});
        sqs.send_message()
            .queue_url(&dead_letters)
            .message_body(body.to_string())
            .send()
            .await
            .unwrap();
    }

    let dir = tempfile::tempdir().unwrap();
    let sqlite_env = production_env(&dir.path().join("data").display().to_string());
    let env = dynamodb_env(&sdk, &sqlite_env, &table, &queue).await;
    for _ in 0..2 {
        let args = ["notices", "--dead-letter-queue", &dead_letters, "--json"];
        let (code, out, err) = run(&bin(), &args, &env);
        assert_eq!(code, 0, "{err}");
        let rows: Value = serde_json::from_str(&out).unwrap();
        let mut listed: Vec<&str> = rows
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap())
            .collect();
        listed.sort();
        assert_eq!(listed, ids, "{out}");
        for r in rows.as_array().unwrap() {
            assert_eq!(r["dead_letter"], true, "{r}");
            assert_eq!(r["grant_id"], grant, "{r}");
            assert_eq!(r["type"], "refresh_token.expired", "{r}");
        }
    }
    // The table form says so too.
    let (code, out, err) = run(
        &bin(),
        &["notices", "--dead-letter-queue", &dead_letters],
        &env,
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.matches("dead letter").count(), 2, "{out}");
    // Nothing was taken off the queue, and the notice queue was not touched.
    assert_eq!(moto::drain(&sdk, &dead_letters).await.len(), 2);
    assert!(moto::drain(&sdk, &queue).await.is_empty());

    // Not a queue URL: bad usage, named.
    for not_a_url in ["", "not a url", "ftp://queue"] {
        let (code, _, err) = run(&bin(), &["notices", "--dead-letter-queue", not_a_url], &env);
        assert_eq!(code, 2, "{not_a_url:?}: {err}");
        assert!(err.contains("--dead-letter-queue"), "{err}");
    }
    let (code, _, err) = run(
        &bin(),
        &["notices", "--dead-letter-queue", &dead_letters],
        &sqlite_env,
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("SPKEEPER_STORE=dynamodb"), "{err}");
}

/// The CLI's environment on DynamoDB and SQS (moto): `base` (a production environment) with
/// its secrets moved to a Secrets Manager secret.
async fn dynamodb_env(
    sdk: &aws_config::SdkConfig,
    base: &BTreeMap<String, String>,
    table: &str,
    queue: &str,
) -> BTreeMap<String, String> {
    use spkeeper::testkit::moto;
    let mut document = json!({"client_secret": CLIENT_SECRET, "api_key": API_KEY,
        "webhook_secret": WEBHOOK_SECRET});
    let keys = serde_json::to_value(spkeeper::config::KeyFile::generate().unwrap()).unwrap();
    for (k, v) in keys.as_object().unwrap() {
        document[k] = v.clone();
    }
    let secret_arn = moto::create_secret(sdk, &document).await;
    let mut env = base.clone();
    env.remove("SPKEEPER_CLIENT_SECRET");
    env.remove("SPKEEPER_API_KEY");
    for (k, v) in [
        ("SPKEEPER_STORE", "dynamodb"),
        ("SPKEEPER_TABLE", table),
        ("SPKEEPER_QUEUE_URL", queue),
        ("SPKEEPER_SECRETS_ARN", secret_arn.as_str()),
        ("AWS_ENDPOINT_URL", moto::url().as_str()),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ] {
        env.insert(k.into(), v.into());
    }
    env
}

/// `spkeeper sweep` on DynamoDB with SQS out of reach: the sweep does its work (the notice
/// waits in the outbox), prints its summary with `not_relayed`, and exits 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_command_prints_its_summary_and_exits_1_when_sqs_does_not_take_its_notices() {
    use spkeeper::ports::GrantStore;
    use spkeeper::store::conformance;
    use spkeeper::testkit::moto;
    let sdk = moto::sdk_config().await;
    let (table, queue) = moto::fresh(&sdk, "sweep-cli").await;
    let store =
        spkeeper::aws::dynamo::DynamoStore::new(aws_sdk_dynamodb::Client::new(&sdk), &table);
    let g = conformance::record("sweep-cli", 0);
    store
        .put_grant(None, &g, "v1.k.sealed", None)
        .await
        .unwrap();
    let at = g.rt_expires_at - Days::days(30) + Days::hours(1);

    let dir = tempfile::tempdir().unwrap();
    let base = production_env(&dir.path().join("data").display().to_string());
    let down = format!("{queue}-down");
    let env = dynamodb_env(&sdk, &base, &table, &down).await;
    let args = ["sweep", "--now", &at.to_rfc3339(), "--force"];
    let (code, out, err) = run(&bin(), &args, &env);
    assert_eq!(code, 1, "{out}{err}");
    let summary: Value = serde_json::from_str(out.trim()).expect("the summary, on stdout");
    assert_eq!(summary["notices"]["refresh_token.expiring"], 1, "{summary}");
    assert_eq!(summary["not_relayed"], 1, "{summary}");
    assert!(err.contains("did not take 1 notices"), "{err}");

    // The notice waits in the outbox (under the first run's lease for two minutes, then for
    // any relay); a sweep with SQS back does not queue it again, and exits 0.
    let (holders, _) = store.holders(None, 10).await.unwrap();
    assert_eq!(holders.len(), 1, "in the outbox");
    let env = dynamodb_env(&sdk, &base, &table, &queue).await;
    let (code, out, err) = run(&bin(), &args, &env);
    assert_eq!(code, 0, "{out}{err}");
    let summary: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        summary["notices"]["refresh_token.expiring"], 0,
        "queued once: {summary}"
    );
    assert!(summary.get("not_relayed").is_none(), "{summary}");
}
