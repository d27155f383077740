//! The examples in `examples/` run here against the real `spkeeper serve --dev`:
//!
//! - each webhook receiver (Python with the `standardwebhooks` PyPI package, TypeScript with
//!   the npm one) gets the real notices of a grant's life — launch, the T-30/T-7/T-1 reminders,
//!   expiry, renewal through the notice's own renew link — and must verify, process and record
//!   each once; then a tampered copy, a copy signed with another secret, a stale one and an
//!   unsigned one are refused with 401, and redeliveries are answered 2xx but not processed again;
//! - the hand-off app receives a launch at `SPKEEPER_RETURN_URL`, trades the ticket for the grant
//!   (never trusting the URL's `grant_id`), gets an access token and uses it without showing it.
//!
//! The runtimes and packages come from `./infra/scripts/test` (`.venv` with
//! `examples/python/requirements.txt`, `npm ci` in `examples/node`). When one is missing these
//! tests fail and say what to run: they never skip.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::{Value, json};

use spkeeper_e2e::*;

const API_KEY: &str = "examples-api-key-0123456789abcdef";
const WEBHOOK_SECRET: &str = "whsec_ZXhhbXBsZXMtd2ViaG9vay1zZWNyZXQtMDEyMzQ1";
const OTHER_SECRET: &str = "whsec_bm90LXRoZS1zZWNyZXQtc3BrZWVwZXItc2lnbnMtd2l0aA==";
const WAIT: Duration = Duration::from_secs(30);

fn spkeeper() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_spkeeper"))
}

/// The repository's root (this test is declared by `infra/local`).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

const INSTALL_HINT: &str = "run ./infra/scripts/test once (it installs what the examples need), \
     or by hand: python3 -m venv .venv && .venv/bin/pip install -r examples/python/requirements.txt; \
     cd examples/node && npm ci";

/// `.venv/bin/python` with the `standardwebhooks` package, or a failure saying how to get it.
fn python() -> PathBuf {
    let python = root().join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: {INSTALL_HINT}",
        python.display()
    );
    let ok = Command::new(&python)
        .args(["-c", "import standardwebhooks"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "the standardwebhooks package is not installed in .venv: {INSTALL_HINT}"
    );
    python
}

/// `node`, with the Node example's packages installed and its TypeScript compiled now (so the
/// JavaScript run is always the current source's), or a failure saying what is missing.
fn node_receiver() -> (PathBuf, Vec<String>) {
    let node = PathBuf::from("node");
    let version = Command::new(&node).arg("--version").output();
    assert!(
        version.as_ref().is_ok_and(|o| o.status.success()),
        "node is not installed (the Node example needs Node.js 20 or later): {version:?}"
    );
    let dir = root().join("examples/node");
    let tsc = dir.join("node_modules/typescript/bin/tsc");
    assert!(
        tsc.exists() && dir.join("node_modules/standardwebhooks").exists(),
        "examples/node/node_modules is missing or incomplete: {INSTALL_HINT}"
    );
    // Once per test process: two tests compiling into dist/ at once could each run the other's
    // half-written output.
    static COMPILED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let compiled = COMPILED.get_or_init(|| {
        let out = Command::new(&node)
            .arg(&tsc)
            .arg("-p")
            .arg(&dir)
            .output()
            .map_err(|e| format!("cannot run tsc: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    });
    if let Err(e) = compiled {
        panic!("the Node example does not compile:\n{e}");
    }
    (
        node,
        vec![dir.join("dist/receiver.js").display().to_string()],
    )
}

fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// `spkeeper serve --dev` on its own data directory, with `extra` configuration.
struct Server {
    proc: Proc,
    base: String,
    vars: BTreeMap<String, String>,
}

fn start_spkeeper(dir: &Path, extra: &[(&str, &str)]) -> Server {
    let mut vars = vars(&[
        ("SPKEEPER_DATA_DIR", &dir.join("data").display().to_string()),
        ("SPKEEPER_API_KEY", API_KEY),
    ]);
    vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let mut proc = Proc::spawn(
        &spkeeper(),
        &["serve", "--dev", "--addr", "127.0.0.1:0"],
        &vars,
        dir,
        "spkeeper",
    );
    let base = proc.wait_for_line("spkeeper listening on ", WAIT);
    Server { proc, base, vars }
}

impl Server {
    /// Launches the add-in from the simulated SharePoint as `user`; returns where spkeeper
    /// sends the browser after the launch (the 303's `Location`).
    async fn launch(&self, user: &str) -> String {
        let page = client()
            .get(format!("{}/dev/sharepoint?user={user}", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        self.post_launch(&page).await
    }

    /// Posts the auto-submitting form of a SharePoint page (the launch page or AppRedirect.aspx).
    async fn post_launch(&self, page: &str) -> String {
        let (action, token) = launch_form(page);
        let resp = client()
            .post(&action)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!(
                "SPAppToken={}",
                url::form_urlencoded::byte_serialize(token.as_bytes()).collect::<String>()
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 303, "the launch is accepted");
        resp.headers()["location"].to_str().unwrap().to_string()
    }

    /// Moves the simulated clock just past the next notice and sweeps; returns the sweep.
    async fn next_notice(&self) -> Value {
        let resp = client()
            .post(format!("{}/dev/clock", self.base))
            .json(&json!({"next_notice": true, "sweep": true}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.json::<Value>().await.unwrap()["sweep"].clone()
    }

    async fn token(&self, grant_id: &str) -> Value {
        let resp = client()
            .post(format!("{}/token", self.base))
            .bearer_auth(API_KEY)
            .json(&json!({"grant_id": grant_id}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.json().await.unwrap()
    }

    /// `spkeeper notices --json --dev` on this server's data directory.
    fn undelivered(&self) -> Value {
        let (code, out, err) = run(&spkeeper(), &["notices", "--json", "--dev"], &self.vars);
        assert_eq!(code, 0, "{err}");
        serde_json::from_str(&out).unwrap()
    }
}

/// The JSON lines an example receiver printed so far.
fn events(receiver: &Proc) -> Vec<Value> {
    std::fs::read_to_string(&receiver.stdout)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect()
}

fn of_kind(events: &[Value], kind: &str) -> Vec<Value> {
    events
        .iter()
        .filter(|e| e["event"] == kind)
        .cloned()
        .collect()
}

/// Waits until the receiver has printed `n` events of `kind`.
async fn wait_for(receiver: &Proc, kind: &str, n: usize) -> Vec<Value> {
    let start = Instant::now();
    loop {
        let got = of_kind(&events(receiver), kind);
        if got.len() >= n {
            return got;
        }
        assert!(
            start.elapsed() < WAIT,
            "expected {n} {kind} events, got {}:\n{}",
            got.len(),
            receiver.output()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One delivery as a Standard Webhooks sender makes it; the answer's status.
async fn deliver(url: &str, headers: &[(&str, String)], body: &str) -> u16 {
    let mut req = client()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string());
    for (name, value) in headers {
        req = req.header(*name, value);
    }
    req.send().await.unwrap().status().as_u16()
}

/// The three Standard Webhooks headers for `body`, signed with `secret` at `timestamp`.
fn signed(secret: &str, id: &str, timestamp: i64, body: &str) -> Vec<(&'static str, String)> {
    let signature = standardwebhooks::Webhook::new(secret)
        .unwrap()
        .sign(id, timestamp, body.as_bytes())
        .unwrap();
    vec![
        ("webhook-id", id.to_string()),
        ("webhook-timestamp", timestamp.to_string()),
        ("webhook-signature", signature),
    ]
}

/// The example receiver `program` (its own SQLite file, on a free port) and a `serve --dev`
/// delivering to it with the same webhook secret, in one temporary directory (returned: the
/// two live as long as it does), and the receiver's URL.
fn receiver_and_spkeeper(
    name: &str,
    program: &Path,
    args: &[String],
) -> (tempfile::TempDir, Proc, String, Server) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("receiver.sqlite3").display().to_string();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut receiver = Proc::spawn(
        program,
        &args,
        &vars(&[
            ("SPKEEPER_WEBHOOK_SECRET", WEBHOOK_SECRET),
            ("RECEIVER_ADDR", "127.0.0.1:0"),
            ("RECEIVER_DB", &db),
        ]),
        dir.path(),
        name,
    );
    let hook = receiver.wait_for_line("receiver listening on ", WAIT);
    let server = start_spkeeper(
        dir.path(),
        &[
            ("SPKEEPER_WEBHOOK_URL", &hook),
            ("SPKEEPER_WEBHOOK_SECRET", WEBHOOK_SECRET),
        ],
    );
    (dir, receiver, hook, server)
}

/// The receiver's story: every real notice of a grant's life verified, processed and recorded
/// once; forgeries refused with 401; redeliveries answered 2xx and not processed again.
async fn receiver_takes_real_notices_once_and_refuses_forgeries(
    name: &str,
    program: &Path,
    args: &[String],
) {
    let (_dir, receiver, hook, server) = receiver_and_spkeeper(name, program, args);

    // A launch, then the clock jumped to each notice in turn: the real deliveries.
    let landed = server.launch("megan").await;
    assert_eq!(landed, format!("{}/status", server.base));
    let mut expected = Vec::new();
    for (kind, days) in [
        ("refresh_token.expiring", 30),
        ("refresh_token.expiring", 7),
        ("refresh_token.expiring", 1),
        ("refresh_token.expired", 0),
    ] {
        let sweep = server.next_notice().await;
        assert_eq!(sweep["notices"][kind], 1, "{sweep}");
        expected.push((kind.to_string(), days));
        let processed = wait_for(&receiver, "processed", expected.len()).await;
        let seen: Vec<(String, i64)> = processed
            .iter()
            .map(|e| {
                (
                    e["type"].as_str().unwrap().to_string(),
                    e["days_left"].as_i64().unwrap(),
                )
            })
            .collect();
        assert_eq!(seen, expected, "{name} processed the notices in order");
    }

    // The expired notice's own renew link: SharePoint, a fresh launch, and the all-clear.
    let processed = wait_for(&receiver, "processed", 4).await;
    let renew_url = processed[3]["notice"]["renew_url"].as_str().unwrap();
    let hop = client().get(renew_url).send().await.unwrap();
    assert_eq!(hop.status().as_u16(), 302, "the recorded renew link works");
    let app_redirect = hop.headers()["location"].to_str().unwrap().to_string();
    let page = client()
        .get(&app_redirect)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    server.post_launch(&page).await;
    let processed = wait_for(&receiver, "processed", 5).await;
    assert_eq!(processed[4]["type"], "refresh_token.renewed");

    // Each real notice was processed once, under its own id, for the launched grant; spkeeper
    // holds nothing back (every delivery was answered 2xx); nothing real was refused.
    let grant_id = processed[0]["grant_id"].as_str().unwrap().to_string();
    let ids: std::collections::BTreeSet<&str> = processed
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 5, "one id per notice");
    for e in &processed {
        assert_eq!(e["grant_id"], grant_id.as_str());
        assert_eq!(e["notice"]["id"], e["id"]);
        assert!(e["id"].as_str().unwrap().starts_with("ntc_"), "{e}");
    }
    let start = Instant::now();
    let delivered = loop {
        // spkeeper records a delivery after the receiver's answer: give it a moment.
        let delivered = server.proc.output().matches("notice delivered").count();
        if delivered >= 5 && server.undelivered() == json!([]) {
            break delivered;
        }
        assert!(
            start.elapsed() < WAIT,
            "spkeeper still holds notices back ({delivered} delivered): {}",
            server.undelivered()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(delivered, 5, "spkeeper delivered each notice once");
    assert!(
        of_kind(&events(&receiver), "rejected").is_empty(),
        "{name} refused a real notice:\n{}",
        receiver.output()
    );

    // Forgeries: refused with 401, nothing processed.
    let first = &processed[0]["notice"];
    let id = first["id"].as_str().unwrap();
    let body = first.to_string();
    let now = Utc::now().timestamp();
    let mut tampered = first.clone();
    tampered["days_left"] = json!(300);
    tampered["renew_url"] = json!("https://evil.example.com/renew");
    assert_eq!(
        deliver(
            &hook,
            &signed(WEBHOOK_SECRET, id, now, &body),
            &tampered.to_string()
        )
        .await,
        401,
        "a tampered body under a genuine signature"
    );
    assert_eq!(
        deliver(&hook, &signed(OTHER_SECRET, id, now, &body), &body).await,
        401,
        "signed with another secret"
    );
    assert_eq!(
        deliver(&hook, &signed(WEBHOOK_SECRET, id, now - 600, &body), &body).await,
        401,
        "a correctly signed copy ten minutes old (a replay)"
    );
    assert_eq!(deliver(&hook, &[], &body).await, 401, "no signature at all");
    let mut bad_header = signed(WEBHOOK_SECRET, id, now, &body);
    bad_header[2].1 = "garbage".into();
    assert_eq!(
        deliver(&hook, &bad_header, &body).await,
        401,
        "a malformed signature header"
    );
    wait_for(&receiver, "rejected", 5).await;

    // Redeliveries of a notice already processed (a fresh signature, as spkeeper's retry would
    // have, and the very same request twice): 2xx, so spkeeper stops, but no second processing.
    let again = signed(WEBHOOK_SECRET, id, now, &body);
    for _ in 0..2 {
        let status = deliver(&hook, &again, &body).await;
        assert!((200..300).contains(&status), "a duplicate is answered 2xx");
    }
    // Each answered delivery printed one line: wait for both, then look at what they were.
    let start = Instant::now();
    while of_kind(&events(&receiver), "processed").len()
        + of_kind(&events(&receiver), "duplicate").len()
        < 7
    {
        assert!(start.elapsed() < WAIT, "{}", receiver.output());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let all = events(&receiver);
    let duplicates = of_kind(&all, "duplicate");
    assert_eq!(
        duplicates.len(),
        2,
        "both redeliveries were seen as duplicates"
    );
    assert!(duplicates.iter().all(|e| e["id"] == id));
    let processed = of_kind(&all, "processed");
    assert_eq!(processed.len(), 5, "no forgery or duplicate was processed");
    assert_eq!(
        processed.iter().filter(|e| e["id"] == id).count(),
        1,
        "the redelivered notice was processed once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_receiver_processes_each_real_notice_once_and_refuses_forgeries() {
    let python = python();
    let script = root().join("examples/python/receiver.py");
    receiver_takes_real_notices_once_and_refuses_forgeries(
        "python-receiver",
        &python,
        &[script.display().to_string()],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_receiver_processes_each_real_notice_once_and_refuses_forgeries() {
    let (node, args) = node_receiver();
    receiver_takes_real_notices_once_and_refuses_forgeries("node-receiver", &node, &args).await;
}

/// `spkeeper doctor`'s signed `webhook.test` notice: the receiver verifies it, answers 2xx
/// (so doctor reports the webhook `ok`) and does nothing with it.
async fn receiver_takes_doctors_test_notice_as_a_no_op(
    name: &str,
    program: &Path,
    args: &[String],
) {
    let (_dir, receiver, _hook, server) = receiver_and_spkeeper(name, program, args);
    let (code, out, err) = run(&spkeeper(), &["doctor", "--dev"], &server.vars);
    assert_eq!(code, 0, "{out}{err}");
    let webhook: Vec<&str> = out.lines().filter(|l| l.contains(" webhook ")).collect();
    assert_eq!(webhook.len(), 1, "{out}");
    assert!(webhook[0].starts_with("ok "), "{out}");
    let processed = wait_for(&receiver, "processed", 1).await;
    assert_eq!(processed[0]["type"], "webhook.test");
    assert!(
        processed[0]["action"]
            .as_str()
            .unwrap()
            .starts_with("nothing to do"),
        "{}",
        processed[0]
    );
    assert!(of_kind(&events(&receiver), "rejected").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_receiver_accepts_doctors_webhook_test_and_does_nothing() {
    let python = python();
    let script = root().join("examples/python/receiver.py");
    receiver_takes_doctors_test_notice_as_a_no_op(
        "python-receiver",
        &python,
        &[script.display().to_string()],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_receiver_accepts_doctors_webhook_test_and_does_nothing() {
    let (node, args) = node_receiver();
    receiver_takes_doctors_test_notice_as_a_no_op("node-receiver", &node, &args).await;
}

/// A free loopback port (the hand-off app must be named in spkeeper's configuration before
/// either starts).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The app's answer to a GET: (status, `Location`, the session cookie set, page text).
async fn app_get(url: &str, cookie: Option<&str>) -> (u16, String, Option<String>, String) {
    let mut req = client().get(url);
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    };
    let location = header("location").unwrap_or_default();
    let cookie = header("set-cookie").map(|c| c.split(';').next().unwrap().to_string());
    (status, location, cookie, resp.text().await.unwrap())
}

/// Follows a launch into the app: the hand-off page, then its redirect home with the session.
/// Returns the session cookie and the home page.
async fn sign_in(app: &str, landed: &str) -> (String, u16, String) {
    let (status, location, cookie, _) = app_get(landed, None).await;
    assert_eq!(status, 303, "the ticket was accepted");
    assert_eq!(location, "/");
    let cookie = cookie.expect("the app started a session");
    let (status, _, _, page) = app_get(&format!("{app}/"), Some(&cookie)).await;
    (cookie, status, page)
}

fn query_param(url: &str, name: &str) -> String {
    url::Url::parse(url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| panic!("{name} not in {url}"))
}

fn with_param(url: &str, name: &str, value: &str) -> String {
    let mut u = url::Url::parse(url).unwrap();
    let pairs: Vec<(String, String)> = u
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == name {
                value.into()
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    u.query_pairs_mut().clear().extend_pairs(pairs);
    u.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handoff_app_signs_in_by_ticket_not_by_url_and_gets_a_token() {
    let python = python();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let app = format!("http://127.0.0.1:{port}");
    let server = start_spkeeper(
        dir.path(),
        &[("SPKEEPER_RETURN_URL", &format!("{app}/after-launch"))],
    );
    let mut app_proc = Proc::spawn(
        &python,
        &[&root()
            .join("examples/handoff-app/app.py")
            .display()
            .to_string()],
        &vars(&[
            ("SPKEEPER_URL", &server.base),
            ("SPKEEPER_API_KEY", API_KEY),
            ("APP_ADDR", &format!("127.0.0.1:{port}")),
        ]),
        dir.path(),
        "handoff-app",
    );
    assert_eq!(
        app_proc.wait_for_line("handoff-app listening on ", WAIT),
        app
    );

    // A launch lands on the app's return page with a grant id and a ticket.
    let landed = server.launch("megan").await;
    assert!(
        landed.starts_with(&format!("{app}/after-launch?grant_id=")),
        "{landed}"
    );
    let megan = query_param(&landed, "grant_id");
    let ticket = query_param(&landed, "ticket");

    // The app trades the ticket, starts its session, gets a token and uses it; the page shows
    // the user and the site, and never the token.
    let (megan_cookie, status, page) = sign_in(&app, &landed).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("Hello, Megan Bowen"), "{page}");
    assert!(page.contains(&server.base), "the site is shown: {page}");
    assert!(page.contains("ready, valid until"), "{page}");
    assert!(
        page.contains("<dt>SharePoint says you are</dt><dd>Megan Bowen</dd>"),
        "the token worked against SharePoint's REST API: {page}"
    );
    let token = server.token(&megan).await; // the same token, from spkeeper's cache
    let access_token = token["access_token"].as_str().unwrap().to_string();
    assert!(!page.contains(&access_token), "the page shows no token");

    // The ticket was used once: the same link again signs nobody in.
    let (status, _, cookie, page) = app_get(&landed, None).await;
    assert_eq!((status, cookie), (400, None), "{page}");
    assert!(page.contains("ticket_used"), "{page}");

    // A forged ticket signs nobody in either.
    let forged = with_param(&landed, "ticket", &format!("{ticket}x"));
    let (status, _, cookie, _) = app_get(&forged, None).await;
    assert_eq!((status, cookie), (400, None));

    // Alex edits the grant id in his landing URL to Megan's: the ticket decides, he is Alex.
    let alex_landed = server.launch("alex").await;
    let alex = query_param(&alex_landed, "grant_id");
    assert_ne!(alex, megan);
    let edited = with_param(&alex_landed, "grant_id", &megan);
    let (_, status, page) = sign_in(&app, &edited).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("Hello, Alex Wilber"), "{page}");
    assert!(!page.contains("Megan"), "nothing of Megan's: {page}");

    // No session, no page.
    let (status, _, _, _) = app_get(&format!("{app}/"), None).await;
    assert_eq!(status, 401);

    // Past the refresh token's expiry the app offers the grant's renew link.
    let resp = client()
        .post(format!("{}/dev/clock", server.base))
        .json(&json!({"advance_days": 200, "sweep": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (status, _, _, page) = app_get(&format!("{app}/"), Some(&megan_cookie)).await;
    assert_eq!(status, 409, "{page}");
    assert!(
        page.contains(&format!(
            "href=\"{}/renew/{megan}?",
            html_escape::encode_double_quoted_attribute(&server.base)
        )),
        "{page}"
    );

    // Neither the app nor spkeeper logged the token or the ticket.
    app_proc.stop();
    let logs = format!("{}{}", app_proc.output(), server.proc.output());
    assert!(logs.contains("signed in"), "the app's logs were captured");
    assert_no_secrets(&logs, &[access_token, ticket, API_KEY.to_string()]);
}
