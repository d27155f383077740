//! Entra ID grants through the real `spkeeper serve --dev`, whose simulator plays Entra ID
//! (authorize page, token endpoint with PKCE, client credentials and rotation, JWKS, 90 days of
//! inactivity, revoked sessions, failures on demand): sign-in and every refusal, tokens for two
//! scopes with rotation across two processes, keep-alive, revocation, renewal, keep-alive off,
//! migration from ACS, certificate credentials, and logs without a token or secret.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};

use spkeeper_e2e::*;

const API_KEY: &str = "entra-e2e-api-key-0123456789";

/// A plain `serve` of an ACS-only deployment (no Entra configured): (process, base URL, its dir).
fn acs_only_server() -> (Proc, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let acs_only = vars(
        &dir.path().join("data"),
        &[
            ("SPKEEPER_CLIENT_ID", "6f1a8d2c-3b4e-4f5a-9b8c-7d6e5f4a3b2c"),
            (
                "SPKEEPER_CLIENT_SECRET",
                "c2VjcmV0LWZvci1lMmUtdGVzdHMtb25seS0wMTIzNDU2Nzg5",
            ),
            ("SPKEEPER_PUBLIC_URL", "http://127.0.0.1:1"),
            ("SPKEEPER_ALLOWED_SP_HOSTS", "contoso.sharepoint.com"),
        ],
    );
    let mut plain = Proc::spawn(
        &bin(),
        &["serve", "--addr", "127.0.0.1:0"],
        &acs_only,
        dir.path(),
        "plain",
    );
    let base = plain.wait_for_line("spkeeper listening on ", Duration::from_secs(30));
    (plain, base, dir)
}

/// A form post (reqwest's `form` feature is not on).
trait Form {
    fn form_of<K: AsRef<str>, V: AsRef<str>>(self, pairs: &[(K, V)]) -> Self;
}

impl Form for reqwest::RequestBuilder {
    fn form_of<K: AsRef<str>, V: AsRef<str>>(self, pairs: &[(K, V)]) -> Self {
        let mut ser = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in pairs {
            ser.append_pair(k.as_ref(), v.as_ref());
        }
        self.header("content-type", "application/x-www-form-urlencoded")
            .body(ser.finish())
    }
}

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_spkeeper"))
}

struct Dev {
    proc: Proc,
    base: String,
    vars: BTreeMap<String, String>,
    logs: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

fn vars(data: &std::path::Path, extra: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut v: BTreeMap<String, String> = [
        ("SPKEEPER_DATA_DIR", data.display().to_string()),
        ("SPKEEPER_API_KEY", API_KEY.to_string()),
        ("SPKEEPER_LOG", "debug".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for (k, val) in extra {
        v.insert(k.to_string(), val.to_string());
    }
    v
}

async fn start(extra: &[(&str, &str)]) -> Dev {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let v = vars(&dir.path().join("data"), extra);
    let mut d = start_with(v, &logs, "serve").await;
    d._dir = Some(dir);
    d
}

async fn start_with(vars: BTreeMap<String, String>, logs: &std::path::Path, name: &str) -> Dev {
    let mut proc = Proc::spawn(
        &bin(),
        &["serve", "--dev", "--addr", "127.0.0.1:0"],
        &vars,
        logs,
        name,
    );
    let base = proc.wait_for_line("spkeeper listening on ", Duration::from_secs(30));
    Dev {
        proc,
        base,
        vars,
        logs: logs.to_path_buf(),
        _dir: None,
    }
}

impl Dev {
    fn cli(&self, args: &[&str]) -> String {
        let args: Vec<&str> = args.iter().copied().chain(["--dev"]).collect();
        let (code, out, err) = run(&bin(), &args, &self.vars);
        assert_eq!(code, 0, "spkeeper {args:?}: {err}");
        out
    }

    fn grants(&self) -> Vec<Value> {
        serde_json::from_str::<Value>(&self.cli(&["grants", "--json"]))
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }

    async fn post_json(&self, path: &str, body: Value) -> Value {
        client()
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn fault(&self, mode: &str) {
        self.post_json("/dev/entra/fault", json!({"mode": mode, "count": 1}))
            .await;
    }

    async fn stats(&self) -> Value {
        get_json(&format!("{}/dev/entra/stats", self.base)).await
    }

    async fn token(&self, body: Value) -> reqwest::Response {
        client()
            .post(format!("{}/token", self.base))
            .bearer_auth(API_KEY)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// Moves the simulated clock by `days` and runs a sweep; returns its summary.
    async fn travel(&self, days: i64) -> Value {
        let r = self
            .post_json("/dev/clock", json!({"advance_days": days, "sweep": true}))
            .await;
        r["sweep"].clone()
    }

    async fn inbox(&self, n: usize) -> Vec<Value> {
        for _ in 0..100 {
            let got: Value = get_json(&format!("{}/dev/webhook", self.base)).await;
            let got = got.as_array().cloned().unwrap_or_default();
            if got.len() >= n {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the inbox did not get {n} notices");
    }

    fn site(&self) -> String {
        self.base.clone()
    }

    fn logs(&mut self) -> String {
        self.proc.stop();
        let mut all = String::new();
        for e in std::fs::read_dir(&self.logs).unwrap() {
            all.push_str(&std::fs::read_to_string(e.unwrap().path()).unwrap_or_default());
        }
        all
    }
}

/// The `action` and fields of the first form in `html`.
fn form_of(html: &str) -> (String, Vec<(String, String)>) {
    let decode = |s: &str| html_escape::decode_html_entities(s).into_owned();
    let attr = |tag: &str, name: &str| {
        let key = format!("{name}=\"");
        tag.find(&key).map(|i| {
            let rest = &tag[i + key.len()..];
            decode(&rest[..rest.find('"').unwrap_or(rest.len())])
        })
    };
    let form_start = html.find("<form").expect("a form");
    let tag_end = html[form_start..].find('>').unwrap() + form_start;
    let action = attr(&html[form_start..tag_end], "action").unwrap_or_default();
    let body = &html[tag_end..html[tag_end..].find("</form>").unwrap() + tag_end];
    let fields = body
        .split("<input")
        .skip(1)
        .filter_map(|i| Some((attr(i, "name")?, attr(i, "value").unwrap_or_default())))
        .collect();
    (action, fields)
}

/// A sign-in through `/connect` (or a renew link) and the simulated Entra: `user` consents
/// (or declines). Returns the callback's answer.
struct SignIn {
    cookie: String,
    authorize: url::Url,
}

async fn begin(dev: &Dev, url: &str) -> SignIn {
    let r = client().get(url).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 302, "{url}: {:?}", r.text().await);
    let cookie = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|c| c.to_str().unwrap().to_string())
        .find(|c| c.starts_with("__Host-spkeeper_signin="))
        .expect("the sign-in cookie");
    for attr in [
        "HttpOnly",
        "Secure",
        "SameSite=None",
        "Path=/",
        "Max-Age=600",
    ] {
        assert!(cookie.contains(attr), "{attr}: {cookie}");
    }
    let authorize = url::Url::parse(r.headers()["location"].to_str().unwrap()).unwrap();
    assert!(
        authorize
            .as_str()
            .starts_with(&format!("{}/dev/entra/", dev.base))
    );
    SignIn {
        cookie: cookie.split(';').next().unwrap().to_string(),
        authorize,
    }
}

impl SignIn {
    fn q(&self) -> BTreeMap<String, String> {
        self.authorize.query_pairs().into_owned().collect()
    }

    /// What the simulated Entra posts back (`consent` or `decline`).
    async fn decide(&self, dev: &Dev, user: &str, decision: &str) -> Vec<(String, String)> {
        let page = client().get(self.authorize.clone()).send().await.unwrap();
        assert_eq!(page.status().as_u16(), 200, "{:?}", page.text().await);
        let q = self.q();
        let mut form: Vec<(&str, String)> = [
            "client_id",
            "redirect_uri",
            "state",
            "nonce",
            "code_challenge",
            "scope",
        ]
        .iter()
        .map(|k| (*k, q.get(*k).cloned().unwrap_or_default()))
        .collect();
        form.push(("user", user.to_string()));
        form.push(("decision", decision.to_string()));
        let html = client()
            .post(format!("{}/dev/entra/authorize/decide", dev.base))
            .form_of(&form)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let (action, fields) = form_of(&html);
        assert_eq!(action, format!("{}/callback", dev.base));
        fields
    }

    async fn callback(
        &self,
        dev: &Dev,
        fields: &[(String, String)],
        cookie: bool,
    ) -> reqwest::Response {
        let mut r = client()
            .post(format!("{}/callback", dev.base))
            .form_of(fields);
        if cookie {
            r = r.header("cookie", &self.cookie);
        }
        r.send().await.unwrap()
    }

    async fn complete(&self, dev: &Dev, user: &str) -> reqwest::Response {
        let fields = self.decide(dev, user, "consent").await;
        self.callback(dev, &fields, true).await
    }
}

fn connect_url(dev: &Dev) -> String {
    format!(
        "{}/connect?site={}",
        dev.base,
        url::form_urlencoded::byte_serialize(dev.site().as_bytes()).collect::<String>()
    )
}

async fn sign_in(dev: &Dev, user: &str) -> reqwest::Response {
    begin(dev, &connect_url(dev))
        .await
        .complete(dev, user)
        .await
}

async fn assert_code(resp: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(resp.status().as_u16(), status, "{code}");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], code, "{body}");
    body
}

/// `user` signs in (303), and their Entra grant's id.
async fn signed_in(dev: &Dev, user: &str) -> String {
    assert_eq!(sign_in(dev, user).await.status().as_u16(), 303);
    entra_grant(dev, user)["id"].as_str().unwrap().to_string()
}

fn entra_grant(dev: &Dev, user: &str) -> Value {
    dev.grants()
        .into_iter()
        .find(|g| g["kind"] == "entra" && g["user"]["email"] == format!("{user}@contoso.example"))
        .unwrap_or_else(|| panic!("no Entra grant of {user}"))
}

#[tokio::test]
async fn a_sign_in_stores_an_entra_grant_and_tokens_come_for_two_scopes_with_rotation() {
    let mut dev = start(&[]).await;
    let si = begin(&dev, &connect_url(&dev)).await;
    let q = si.q();
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["response_mode"], "form_post");
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["redirect_uri"], format!("{}/callback", dev.base));
    let host = dev.base.trim_start_matches("http://").to_string();
    assert_eq!(
        q["scope"],
        format!("openid profile offline_access https://{host}/.default")
    );
    let resp = si.complete(&dev, "megan").await;
    assert_eq!(resp.status().as_u16(), 303);
    assert_eq!(
        resp.headers()["location"],
        format!("{}/status", dev.base).as_str()
    );
    let cookies: Vec<String> = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|c| c.to_str().unwrap().to_string())
        .collect();
    assert!(
        cookies
            .iter()
            .any(|c| c.starts_with("__Host-spkeeper_session="))
    );
    assert!(
        cookies
            .iter()
            .any(|c| c.starts_with("__Host-spkeeper_signin=;") && c.contains("Max-Age=0"))
    );

    let g = entra_grant(&dev, "megan");
    assert_eq!(g["user"]["oid"].as_str().unwrap().len(), 36);
    assert_eq!(g["status"], "active");
    assert_eq!(g["days_left"], 90);
    let id = g["id"].as_str().unwrap().to_string();

    // the sign-in's own access token answers the default scope: no redemption yet
    let r = dev.token(json!({"grant_id": id})).await;
    assert_eq!(r.status().as_u16(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["resource"], format!("https://{host}/.default"));
    assert_eq!(body["grant"]["kind"], "entra");
    assert!(body["grant"]["tenant_id"].is_string() && body["grant"].get("realm").is_none());
    assert_eq!(dev.stats().await["refreshes"], 0);

    // Graph: one redemption, which rotates the refresh token; then from the cache
    let graph = json!({"grant_id": id, "scope": "https://graph.microsoft.com/.default"});
    for _ in 0..3 {
        let r = dev.token(graph.clone()).await;
        assert_eq!(r.status().as_u16(), 200);
    }
    let s = dev.stats().await;
    assert_eq!(
        (s["refreshes"].as_u64(), s["stale_refreshes"].as_u64()),
        (Some(1), Some(0)),
        "{s}"
    );
    assert_eq!(s["live_refresh_tokens"], 1, "{s}");

    // a scope for neither an allowed SharePoint host nor Graph
    assert_code(
        dev.token(json!({"grant_id": id, "scope": "https://evil.example.com/.default"}))
            .await,
        400,
        "bad_request",
    )
    .await;

    // nothing of it reached a log: no refresh, access or authorization code, ID token or secret
    let logs = dev.logs();
    for needle in ["sim-rt-", "sim-at-", "sim-code-", "eyJ", "dev~"] {
        assert!(!logs.contains(needle), "{needle} reached the logs");
    }
}

#[tokio::test]
async fn every_sign_in_refusal_has_its_code_and_nothing_is_stored() {
    let dev = start(&[]).await;
    let get = |p: String| async move { client().get(p).send().await.unwrap() };
    assert_code(
        get(format!("{}/connect", dev.base)).await,
        400,
        "missing_site",
    )
    .await;
    assert_code(
        get(format!(
            "{}/connect?site=https://evil.example.com/sites/a",
            dev.base
        ))
        .await,
        403,
        "host_not_allowed",
    )
    .await;

    // the state: no cookie, another sign-in's cookie, a replay
    let a = begin(&dev, &connect_url(&dev)).await;
    let b = begin(&dev, &connect_url(&dev)).await;
    let fields = a.decide(&dev, "megan", "consent").await;
    assert_code(a.callback(&dev, &fields, false).await, 403, "invalid_state").await;
    assert_code(b.callback(&dev, &fields, true).await, 403, "invalid_state").await;
    assert_eq!(a.callback(&dev, &fields, true).await.status().as_u16(), 303);
    assert_code(a.callback(&dev, &fields, true).await, 403, "invalid_state").await;
    let first = dev.grants();
    assert_eq!(first.len(), 1);

    // declined consent
    let si = begin(&dev, &connect_url(&dev)).await;
    let fields = si.decide(&dev, "alex", "decline").await;
    assert_code(
        si.callback(&dev, &fields, true).await,
        403,
        "sign_in_declined",
    )
    .await;
    // another error from Entra
    let si = begin(&dev, &connect_url(&dev)).await;
    let state = si.q()["state"].clone();
    let fields = vec![
        ("state".to_string(), state),
        ("error".to_string(), "server_error".to_string()),
        (
            "error_description".to_string(),
            "<script>x</script>".to_string(),
        ),
    ];
    assert_code(si.callback(&dev, &fields, true).await, 502, "sts_error").await;
    // the token endpoint: a bad ID token, our credentials refused, Entra down
    for (fault, status, code) in [
        ("id_token", 401, "invalid_id_token"),
        ("7000222", 502, "sts_rejected_client"),
        ("7000215", 502, "sts_rejected_client"),
        ("500", 503, "sts_unavailable"),
    ] {
        dev.fault(fault).await;
        let r = sign_in(&dev, "alex").await;
        if status == 503 {
            assert!(r.headers().contains_key("retry-after"));
        }
        assert_code(r, status, code).await;
    }
    assert_eq!(dev.grants(), first, "no refused sign-in stored anything");

    // a deployment without Entra
    let (mut plain, base, _dir) = acs_only_server();
    assert_code(
        get(format!(
            "{base}/connect?site=https://contoso.sharepoint.com"
        ))
        .await,
        404,
        "entra_not_configured",
    )
    .await;
    plain.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_token_calls_across_two_scopes_and_two_processes_keep_the_newest_refresh_token() {
    fifty_calls(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_token_calls_across_two_processes_on_dynamodb_keep_the_newest_refresh_token() {
    let (env, _) = moto_env().await;
    fifty_calls(
        &env.iter()
            .map(|(k, v)| (*k, v.as_str()))
            .collect::<Vec<_>>(),
    )
    .await;
}

async fn fifty_calls(extra: &[(&str, &str)]) {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let data = dir.path().join("data");
    let a = start_with(vars(&data, extra), &logs, "a").await;
    // B shares A's store and A's simulated Entra (and A's public URL).
    let authority = format!("{}/dev/entra", a.base);
    let mut b_extra = extra.to_vec();
    b_extra.push(("SPKEEPER_PUBLIC_URL", a.base.as_str()));
    b_extra.push(("SPKEEPER_ENTRA_AUTHORITY", &authority));
    let b_vars = vars(&data, &b_extra);
    let b = start_with(b_vars, &logs, "b").await;
    assert_eq!(sign_in(&a, "megan").await.status().as_u16(), 303);
    let id = entra_grant(&a, "megan")["id"].as_str().unwrap().to_string();
    let host = a.base.trim_start_matches("http://").to_string();
    let scopes = [
        format!("https://{host}/AllSites.Read"),
        "https://graph.microsoft.com/.default".to_string(),
    ];
    let bases = [a.base.clone(), b.base.clone()];
    let calls: Vec<_> = (0..50)
        .map(|i| {
            let (base, scope, id) = (
                bases[i % 2].clone(),
                scopes[(i / 2) % 2].clone(),
                id.clone(),
            );
            tokio::spawn(async move {
                client()
                    .post(format!("{base}/token"))
                    .bearer_auth(API_KEY)
                    .json(&json!({"grant_id": id, "scope": scope}))
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for c in calls {
        statuses.push(c.await.unwrap());
    }
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let s = a.stats().await;
    assert_eq!(
        s["stale_refreshes"], 0,
        "an older refresh token was used: {s}"
    );
    assert!(
        s["refreshes"].as_u64().unwrap() <= 2,
        "one redemption per scope: {s}"
    );
    assert_eq!(s["live_refresh_tokens"], 1, "{s}");
    // and what is stored is the last one Entra issued: a new scope redeems it, and only the
    // newest is accepted
    let r = b
        .token(json!({"grant_id": id, "scope": "https://graph.microsoft.com/User.Read"}))
        .await;
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(a.stats().await["stale_refreshes"], 0);
}

#[tokio::test]
async fn an_entra_life_kept_alive_then_revoked_then_renewed() {
    entra_life(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_entra_life_on_dynamodb_and_sqs() {
    let (env, _keep) = moto_env().await;
    entra_life(
        &env.iter()
            .map(|(k, v)| (*k, v.as_str()))
            .collect::<Vec<_>>(),
    )
    .await;
}

/// DynamoDB and SQS on moto for a server: a fresh table and queue.
async fn moto_env() -> (Vec<(&'static str, String)>, ()) {
    let sdk = spkeeper::testkit::moto::sdk_config().await;
    let (table, queue) = spkeeper::testkit::moto::fresh(&sdk, "entra").await;
    (
        vec![
            ("SPKEEPER_STORE", "dynamodb".to_string()),
            ("SPKEEPER_TABLE", table),
            ("SPKEEPER_QUEUE_URL", queue),
            ("AWS_ENDPOINT_URL", spkeeper::testkit::moto::url()),
            ("AWS_ACCESS_KEY_ID", "testing".to_string()),
            ("AWS_SECRET_ACCESS_KEY", "testing".to_string()),
            ("AWS_REGION", "us-east-1".to_string()),
            ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
        ],
        (),
    )
}

async fn entra_life(extra: &[(&str, &str)]) {
    let dev = start(extra).await;
    assert_eq!(sign_in(&dev, "megan").await.status().as_u16(), 303);
    let g = entra_grant(&dev, "megan");
    let id = g["id"].as_str().unwrap().to_string();
    assert_eq!(
        dev.token(json!({"grant_id": id})).await.status().as_u16(),
        200
    );

    // 31 idle days: the keep-alive is due, but Entra throttles (429, Retry-After 7): the sweep
    // backs off — the next sweep a moment later does not hammer Entra
    dev.fault("429").await;
    let s = dev.travel(31).await;
    assert_eq!(
        (s["kept_alive"].as_u64(), s["keepalive_failures"].as_u64()),
        (Some(0), Some(1)),
        "{s}"
    );
    let s = dev.travel(0).await;
    assert_eq!(
        (s["kept_alive"].as_u64(), s["keepalive_failures"].as_u64()),
        (Some(0), Some(0)),
        "{s}"
    );
    // a day later the sweep redeems it once, silently; its 90 days start over
    let s = dev.travel(1).await;
    assert_eq!(s["kept_alive"], 1, "{s}");
    assert_eq!(s["notices"]["refresh_token.expiring"], 0);
    assert_eq!(entra_grant(&dev, "megan")["days_left"], 90);
    assert_eq!(
        dev.travel(0).await["kept_alive"],
        0,
        "once, not every sweep"
    );
    // months of it: each 31 idle days, one more redemption, each rotating the token
    for _ in 0..3 {
        assert_eq!(dev.travel(31).await["kept_alive"], 1);
    }
    let st = dev.stats().await;
    assert_eq!(
        (st["refreshes"].as_u64(), st["stale_refreshes"].as_u64()),
        (Some(4), Some(0)),
        "{st}"
    );
    assert_eq!(st["live_refresh_tokens"], 1);

    // the administrator revokes her sessions: the next keep-alive finds it, one revoked notice
    dev.post_json_form("/dev/entra/revoke", &[("user", "megan")])
        .await;
    let s = dev.travel(31).await;
    assert_eq!(s["notices"]["refresh_token.revoked"], 1, "{s}");
    let inbox = dev.inbox(1).await;
    let n = &inbox[0]["notice"];
    assert_eq!(n["type"], "refresh_token.revoked");
    assert_eq!(n["reason"], "revoked");
    assert_eq!(n["error_code"], 50173);
    assert_eq!(n["grant"]["kind"], "entra");
    assert!(n["grant"]["tenant_id"].is_string() && n["grant"]["user"]["oid"].is_string());
    let r = dev
        .token(json!({"grant_id": id, "scope": "https://graph.microsoft.com/.default"}))
        .await;
    let body = assert_code(r, 409, "relaunch_required").await;
    assert!(body["renew_url"].is_string());
    assert_eq!(
        dev.travel(1).await["notices"]["refresh_token.revoked"],
        0,
        "once"
    );

    // the renew link: Entra sign-in for her, hinted; she signs in; the all-clear goes out
    let renew = n["renew_url"].as_str().unwrap();
    let si = begin(&dev, renew).await;
    let q = si.q();
    assert_eq!(q["login_hint"], "megan@contoso.example");
    assert!(q["domain_hint"].len() == 36, "{q:?}");
    assert_eq!(si.complete(&dev, "megan").await.status().as_u16(), 303);
    let inbox = dev.inbox(2).await;
    assert_eq!(inbox[1]["notice"]["type"], "refresh_token.renewed");
    assert!(inbox.iter().all(|e| e["signature_valid"] == true));
    assert_eq!(
        entra_grant(&dev, "megan")["id"],
        id.as_str(),
        "the same grant"
    );
    assert_eq!(
        dev.token(json!({"grant_id": id, "scope": "https://graph.microsoft.com/.default"}))
            .await
            .status()
            .as_u16(),
        200
    );

    let mut dev = dev;
    let logs = dev.logs();
    for needle in ["sim-rt-", "sim-at-", "sim-code-", "eyJ", "dev~", API_KEY] {
        assert!(!logs.contains(needle), "{needle} reached the logs");
    }
}

#[tokio::test]
async fn with_keep_alive_off_the_stages_come_before_the_inactivity_mark_then_expired() {
    let dev = start(&[("SPKEEPER_ENTRA_KEEPALIVE_DAYS", "0")]).await;
    let id = signed_in(&dev, "alex").await;
    let mut days = Vec::new();
    for _ in 0..3 {
        let r = dev
            .post_json("/dev/clock", json!({"next_notice": true, "sweep": true}))
            .await;
        assert_eq!(r["sweep"]["notices"]["refresh_token.expiring"], 1, "{r}");
        assert_eq!(r["sweep"]["kept_alive"], 0);
    }
    for e in dev.inbox(3).await {
        days.push(e["notice"]["days_left"].as_i64().unwrap());
        assert_eq!(e["notice"]["type"], "refresh_token.expiring");
    }
    assert_eq!(days, [30, 7, 1]);
    let r = dev
        .post_json("/dev/clock", json!({"next_notice": true, "sweep": true}))
        .await;
    assert_eq!(r["sweep"]["notices"]["refresh_token.expired"], 1, "{r}");
    assert_code(
        dev.token(json!({"grant_id": id, "scope": "https://graph.microsoft.com/.default"}))
            .await,
        409,
        "relaunch_required",
    )
    .await;
    assert_eq!(dev.stats().await["refreshes"], 0, "never redeemed");
}

/// An ACS launch through the simulated SharePoint as `user`.
async fn acs_launch(dev: &Dev, user: &str) {
    let info: Value = get_json(&format!("{}/dev/info", dev.base)).await;
    let redirect = format!(
        "{}/launch?{{StandardTokens}}&SPHasRedirectedToSharePoint=1",
        dev.base
    );
    let url = format!(
        "{}/_layouts/15/AppRedirect.aspx?client_id={}&redirect_uri={}",
        dev.base,
        info["client_id"].as_str().unwrap(),
        url::form_urlencoded::byte_serialize(redirect.as_bytes()).collect::<String>()
    );
    let html = client()
        .get(url)
        .header("cookie", format!("spdev_user={user}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let (action, fields) = form_of(&html);
    let r = client().post(action).form_of(&fields).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 303);
}

#[tokio::test]
async fn a_migration_carries_an_acs_grant_over_only_for_its_own_user() {
    migration(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_migration_on_dynamodb_and_sqs() {
    let (env, _) = moto_env().await;
    migration(
        &env.iter()
            .map(|(k, v)| (*k, v.as_str()))
            .collect::<Vec<_>>(),
    )
    .await;
}

async fn migration(extra: &[(&str, &str)]) {
    let mut env = extra.to_vec();
    env.push(("SPKEEPER_RENEW_VIA", "entra"));
    let dev = start(&env).await;
    acs_launch(&dev, "megan").await;
    acs_launch(&dev, "alex").await;
    let acs: Vec<Value> = dev
        .grants()
        .into_iter()
        .filter(|g| g["kind"] == "acs")
        .collect();
    assert_eq!(acs.len(), 2);
    let megan_acs = acs
        .iter()
        .find(|g| g["user"]["email"] == "megan@contoso.example")
        .unwrap();
    let alex_acs = acs
        .iter()
        .find(|g| g["user"]["email"] == "alex@contoso.example")
        .unwrap();

    // migrate: one notice per ACS grant, once
    let out: Value = serde_json::from_str(dev.cli(&["migrate"]).trim()).unwrap();
    assert_eq!(
        (out["acs_grants"].as_u64(), out["queued"].as_u64()),
        (Some(2), Some(2))
    );
    let again: Value = serde_json::from_str(dev.cli(&["migrate"]).trim()).unwrap();
    assert_eq!(
        (again["queued"].as_u64(), again["queued_before"].as_u64()),
        (Some(0), Some(2))
    );
    let inbox = dev.inbox(2).await;
    let link_of = |gid: &Value| {
        inbox
            .iter()
            .find(|e| e["notice"]["grant"]["id"] == *gid)
            .map(|e| {
                assert_eq!(e["notice"]["type"], "grant.migration_required");
                e["notice"]["renew_url"].as_str().unwrap().to_string()
            })
            .unwrap()
    };

    // Megan follows her link and signs in as herself: her grant becomes an Entra grant
    let si = begin(&dev, &link_of(&megan_acs["id"])).await;
    assert_eq!(si.q()["login_hint"], "megan@contoso.example");
    assert_eq!(si.complete(&dev, "megan").await.status().as_u16(), 303);
    let g = entra_grant(&dev, "megan");
    assert_eq!(g["id"], megan_acs["id"], "under the ACS grant's id");
    let inbox = dev.inbox(3).await;
    assert_eq!(inbox[2]["notice"]["type"], "refresh_token.renewed");
    assert_eq!(inbox[2]["notice"]["migrated_from"], "acs");
    // her later sign-ins find that grant, and an ACS launch never takes it back
    assert_eq!(sign_in(&dev, "megan").await.status().as_u16(), 303);
    acs_launch(&dev, "megan").await;
    let g = entra_grant(&dev, "megan");
    assert_eq!(g["id"], megan_acs["id"]);
    assert_eq!(g["kind"], "entra");
    assert_eq!(
        dev.grants().iter().filter(|g| g["kind"] == "entra").count(),
        1
    );

    // Nestor follows Alex's link: Alex's grant stays as it was; Nestor gets his own
    let si = begin(&dev, &link_of(&alex_acs["id"])).await;
    let r = si.complete(&dev, "nestor").await;
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.text().await.unwrap().contains("belonged to someone else"));
    let after = dev.grants();
    let alex_now = after.iter().find(|g| g["id"] == alex_acs["id"]).unwrap();
    assert_eq!(alex_now["kind"], "acs");
    assert!(
        after
            .iter()
            .any(|g| g["kind"] == "entra" && g["user"]["email"] == "nestor@contoso.example")
    );
}

/// A PEM "certificate" (the thumbprints are hashes of its DER) and a real RSA private key.
fn certificate() -> (String, String) {
    let key = spkeeper::testkit::rsa::RsaKey::generate("app").unwrap();
    let der: Vec<u8> = (0..300u32).map(|i| (i * 7 % 251) as u8).collect();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let cert = format!("-----BEGIN CERTIFICATE-----\n{b64}\n-----END CERTIFICATE-----\n");
    (cert, key.private_pem)
}

#[tokio::test]
async fn certificate_credentials_sign_in_with_ps256_by_default_and_rs256_on_request() {
    let (cert, key) = certificate();
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("app.key");
    std::fs::write(&key_path, &key).unwrap();
    let key_ref = format!("@{}", key_path.display());
    for alg in ["PS256", "RS256"] {
        let mut dev = start(&[
            ("SPKEEPER_ENTRA_CERTIFICATE", cert.as_str()),
            ("SPKEEPER_ENTRA_PRIVATE_KEY", key_ref.as_str()),
            ("SPKEEPER_ENTRA_ASSERTION_ALG", alg),
        ])
        .await;
        assert_eq!(sign_in(&dev, "megan").await.status().as_u16(), 303, "{alg}");
        let id = entra_grant(&dev, "megan")["id"]
            .as_str()
            .unwrap()
            .to_string();
        let r = dev
            .token(json!({"grant_id": id, "scope": "https://graph.microsoft.com/.default"}))
            .await;
        assert_eq!(r.status().as_u16(), 200, "{alg}");
        let logs = dev.logs();
        assert!(
            !logs.contains("BEGIN PRIVATE KEY") && !logs.contains("eyJ"),
            "{alg}"
        );
    }
}

#[tokio::test]
async fn a_rotated_signing_key_is_fetched_again() {
    let dev = start(&[]).await;
    assert_eq!(sign_in(&dev, "megan").await.status().as_u16(), 303);
    dev.post_json_form("/dev/entra/rotate-keys", &[]).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(sign_in(&dev, "alex").await.status().as_u16(), 303);
    assert_eq!(dev.stats().await["kids"].as_array().unwrap().len(), 2);
}

impl Dev {
    async fn post_json_form(&self, path: &str, form: &[(&str, &str)]) {
        let r = client()
            .post(format!("{}{path}", self.base))
            .form_of(form)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
    }
}

/// `openapi.yaml`'s answer for (path, method, status), checked with the jsonschema crate.
fn check_openapi(path: &str, method: &str, status: u16, body: Option<&Value>) {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../openapi.yaml"))
        .unwrap();
    let doc: Value = serde_norway::from_str(&text).unwrap();
    let resolve = |v: &Value| -> Value {
        match v.get("$ref").and_then(Value::as_str) {
            Some(r) => doc
                .pointer(r.trim_start_matches('#'))
                .cloned()
                .unwrap_or(Value::Null),
            None => v.clone(),
        }
    };
    let resp = resolve(&doc["paths"][path][method]["responses"][status.to_string()]);
    assert!(
        resp.is_object(),
        "{method} {path} answered {status}, undocumented"
    );
    if let Some(body) = body {
        let mut schema = resolve(&resp["content"]["application/json"]["schema"]);
        assert!(
            schema.is_object(),
            "{method} {path} {status}: no JSON schema"
        );
        schema["components"] = doc["components"].clone();
        let v = jsonschema::draft202012::new(&schema).unwrap();
        let errors: Vec<String> = v.iter_errors(body).map(|e| e.to_string()).collect();
        assert!(
            errors.is_empty(),
            "{method} {path} {status}: {body}: {errors:?}"
        );
    }
}

async fn answered(path: &str, method: &str, r: reqwest::Response, seen: &mut Vec<u16>) -> u16 {
    let status = r.status().as_u16();
    let json = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/json"));
    let text = r.text().await.unwrap();
    let body = json.then(|| serde_json::from_str::<Value>(&text).unwrap());
    check_openapi(path, method, status, body.as_ref());
    seen.push(status);
    status
}

#[tokio::test]
async fn every_documented_sign_in_answer_is_given_and_matches_openapi_yaml() {
    let dev = start(&[("SPKEEPER_RENEW_VIA", "entra")]).await;
    let (mut connect, mut callback) = (Vec::new(), Vec::new());
    let get = |p: String| async move { client().get(p).send().await.unwrap() };
    answered(
        "/connect",
        "get",
        get(connect_url(&dev)).await,
        &mut connect,
    )
    .await;
    answered(
        "/connect",
        "get",
        get(format!("{}/connect", dev.base)).await,
        &mut connect,
    )
    .await;
    answered(
        "/connect",
        "get",
        get(format!(
            "{}/connect?site=https://evil.example.com",
            dev.base
        ))
        .await,
        &mut connect,
    )
    .await;

    let post = |si: &SignIn, fields: Vec<(String, String)>| {
        let cookie = si.cookie.clone();
        let base = dev.base.clone();
        async move {
            client()
                .post(format!("{base}/callback"))
                .header("cookie", cookie)
                .form_of(&fields)
                .send()
                .await
                .unwrap()
        }
    };
    let si = begin(&dev, &connect_url(&dev)).await;
    let fields = si.decide(&dev, "megan", "consent").await;
    answered(
        "/callback",
        "post",
        post(&si, fields.clone()).await,
        &mut callback,
    )
    .await;
    answered("/callback", "post", post(&si, fields).await, &mut callback).await;
    for (fault, user) in [("id_token", "alex"), ("7000222", "alex"), ("500", "alex")] {
        dev.fault(fault).await;
        let si = begin(&dev, &connect_url(&dev)).await;
        let fields = si.decide(&dev, user, "consent").await;
        answered("/callback", "post", post(&si, fields).await, &mut callback).await;
    }
    let r = client()
        .post(format!("{}/callback", dev.base))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    answered("/callback", "post", r, &mut callback).await;
    // someone else's migration link: 200, a page
    acs_launch(&dev, "nestor").await;
    let nestor = dev
        .grants()
        .into_iter()
        .find(|g| g["kind"] == "acs")
        .unwrap();
    let renew = client()
        .get(format!(
            "{}/renew/{}",
            dev.base,
            nestor["id"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(
        renew.status().as_u16(),
        403,
        "an unsigned renew link is refused"
    );
    let link = dev.cli(&["renew-link", nestor["id"].as_str().unwrap()]);
    let si = begin(&dev, link.trim()).await;
    let fields = si.decide(&dev, "alex", "consent").await;
    answered("/callback", "post", post(&si, fields).await, &mut callback).await;
    // the query form of the callback
    let si = begin(&dev, &connect_url(&dev)).await;
    let fields = si.decide(&dev, "megan", "consent").await;
    let q = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(&fields)
        .finish();
    let r = client()
        .get(format!("{}/callback?{q}", dev.base))
        .header("cookie", &si.cookie)
        .send()
        .await
        .unwrap();
    let mut get_seen = Vec::new();
    assert_eq!(answered("/callback", "get", r, &mut get_seen).await, 303);

    // a deployment without Entra: 404 on both
    let (mut plain, base, _dir) = acs_only_server();
    answered(
        "/connect",
        "get",
        get(format!(
            "{base}/connect?site=https://contoso.sharepoint.com"
        ))
        .await,
        &mut connect,
    )
    .await;
    let r = client()
        .post(format!("{base}/callback"))
        .form_of(&[("state", "x"), ("code", "y")])
        .send()
        .await
        .unwrap();
    answered("/callback", "post", r, &mut callback).await;
    plain.stop();

    connect.sort_unstable();
    connect.dedup();
    callback.sort_unstable();
    callback.dedup();
    assert_eq!(connect, [302, 400, 403, 404]);
    assert_eq!(callback, [200, 303, 401, 403, 404, 415, 502, 503]);
}

#[tokio::test]
async fn when_the_keep_alive_keeps_failing_the_stages_go_out_before_the_inactivity_mark() {
    let dev = start(&[]).await;
    assert_eq!(sign_in(&dev, "nestor").await.status().as_u16(), 303);
    // Entra keeps failing (500) through day 61: the keep-alive never succeeds...
    dev.post_json("/dev/entra/fault", json!({"mode": "500", "count": 100}))
        .await;
    let s = dev.travel(61).await;
    assert_eq!(s["kept_alive"], 0, "{s}");
    assert_eq!(s["keepalive_failures"], 1, "{s}");
    // ...so the 30-day notice goes out, as for a grant without keep-alive
    assert_eq!(s["notices"]["refresh_token.expiring"], 1, "{s}");
    let inbox = dev.inbox(1).await;
    assert_eq!(inbox[0]["notice"]["days_left"], 29);
    assert_eq!(entra_grant(&dev, "nestor")["status"], "expiring");
    // Entra comes back: the next sweep's keep-alive succeeds and the 90 days start over
    dev.post_json("/dev/entra/fault", json!({"mode": "clear"}))
        .await;
    let s = dev.travel(1).await;
    assert_eq!(s["kept_alive"], 1, "{s}");
    let g = entra_grant(&dev, "nestor");
    assert_eq!(
        (g["status"].as_str(), g["days_left"].as_i64()),
        (Some("active"), Some(90))
    );
}

#[tokio::test]
async fn a_refusal_for_one_extra_scope_leaves_the_grant_alive() {
    let dev = start(&[]).await;
    let id = signed_in(&dev, "alex").await;
    // the app asks Graph for a permission the user never consented to
    dev.fault("65001").await;
    let r = dev
        .token(json!({"grant_id": id, "scope": "https://graph.microsoft.com/Mail.Send"}))
        .await;
    let body = assert_code(r, 409, "relaunch_required").await;
    assert_eq!(body["reason"], "consent");
    // the grant itself is fine: still active, its own scope still served, no notice
    assert_eq!(entra_grant(&dev, "alex")["status"], "active");
    assert_eq!(
        dev.token(json!({"grant_id": id})).await.status().as_u16(),
        200
    );
    let s = dev.travel(0).await;
    assert_eq!(s["notices"]["refresh_token.revoked"], 0, "{s}");
    let inbox: Value = get_json(&format!("{}/dev/webhook", dev.base)).await;
    assert_eq!(inbox, json!([]));
    // but consent removed for the grant's own scope is a revocation
    dev.post_json("/dev/entra/fault", json!({"mode": "65001"}))
        .await;
    let host = dev.base.trim_start_matches("http://").to_string();
    let r = dev
        .token(json!({"grant_id": id, "scope": format!("https://{host}/AllSites.Read")}))
        .await;
    assert_code(r, 409, "relaunch_required").await;
    assert_eq!(
        entra_grant(&dev, "alex")["status"],
        "active",
        "AllSites.Read is not the default scope"
    );
    dev.post_json("/dev/entra/fault", json!({"mode": "65001"}))
        .await;
    let r = dev
        .token(json!({"grant_id": id, "scope": format!("https://{host}/.default")}))
        .await;
    assert_eq!(r.status().as_u16(), 200, "cached: no redemption was needed");
}

#[tokio::test]
async fn a_scope_is_one_plainly_written_resource_and_its_spellings_share_one_cache_entry() {
    let dev = start(&[]).await;
    let id = signed_in(&dev, "megan").await;
    for bad in [
        "https://evil.com@graph.microsoft.com/.default",
        "https://graph.microsoft.com\\.evil.com/.default",
        "https://graph.microsoft.com/.default?x=https://evil.com",
        "https://graph.microsoft.com/.default#x",
        "https://graph.microsoft.com/.default%20offline_access",
        "https://graph.microsoft.com/.default offline_access",
        "https://graph.microsoft.com/.default\u{0}",
        "http://graph.microsoft.com/.default",
        "https://graph.microsoft.com",
    ] {
        assert_code(
            dev.token(json!({"grant_id": id, "scope": bad})).await,
            400,
            "bad_request",
        )
        .await;
    }
    for spelling in [
        "https://graph.microsoft.com/.default",
        "https://GRAPH.microsoft.com/.default",
        "https://graph.microsoft.com:443/.default",
    ] {
        let r = dev.token(json!({"grant_id": id, "scope": spelling})).await;
        assert_eq!(r.status().as_u16(), 200, "{spelling}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["resource"], "https://graph.microsoft.com/.default");
    }
    assert_eq!(
        dev.stats().await["refreshes"],
        1,
        "one redemption for one scope"
    );
}

#[tokio::test]
async fn a_grant_erased_while_entra_answers_gets_no_token_back() {
    let dev = start(&[]).await;
    let id = signed_in(&dev, "megan").await;
    // Entra fails once (the request retries after 500 ms); the grant is erased meanwhile
    dev.fault("500").await;
    let (base, gid) = (dev.base.clone(), id.clone());
    let in_flight = tokio::spawn(async move {
        client()
            .post(format!("{base}/token"))
            .bearer_auth(API_KEY)
            .json(&json!({"grant_id": gid, "scope": "https://graph.microsoft.com/.default"}))
            .send()
            .await
            .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let erased = client()
        .delete(format!("{}/grants/{id}", dev.base))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(erased.status().as_u16(), 204);
    assert_code(in_flight.await.unwrap(), 404, "unknown_grant").await;
    assert!(dev.grants().is_empty());
}

#[tokio::test]
async fn a_sign_in_is_never_stored_against_another_tenants_site() {
    // B is another tenant's SharePoint (its simulator answers for another realm).
    let b = start(&[]).await;
    let b_host = b.base.trim_start_matches("http://").to_string();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let hosts = format!("127.0.0.1:{port},{b_host},*.sharepoint.com");
    let mut v = vars(
        &dir.path().join("data"),
        &[("SPKEEPER_ALLOWED_SP_HOSTS", hosts.as_str())],
    );
    v.insert(
        "SPKEEPER_PUBLIC_URL".into(),
        format!("http://127.0.0.1:{port}"),
    );
    let mut proc = Proc::spawn(
        &bin(),
        &["serve", "--dev", "--addr", &format!("127.0.0.1:{port}")],
        &v,
        &logs,
        "a",
    );
    let base = proc.wait_for_line("spkeeper listening on ", Duration::from_secs(30));
    let a = Dev {
        proc,
        base,
        vars: v,
        logs,
        _dir: Some(dir),
    };
    let connect = |site: &str| {
        format!(
            "{}/connect?site={}",
            a.base,
            url::form_urlencoded::byte_serialize(site.as_bytes()).collect::<String>()
        )
    };
    let r = begin(&a, &connect(&b.base))
        .await
        .complete(&a, "megan")
        .await;
    assert_code(r, 403, "host_realm_mismatch").await;
    let r = begin(
        &a,
        &connect("https://fabrikam.sharepoint.com/sites/finance"),
    )
    .await
    .complete(&a, "megan")
    .await;
    assert_code(r, 502, "sharepoint_unreachable").await;
    assert!(a.grants().is_empty(), "nothing stored");
    // its own tenant's site is fine
    assert_eq!(sign_in(&a, "megan").await.status().as_u16(), 303);
}

#[tokio::test]
async fn an_error_from_entra_cannot_forge_a_log_line() {
    let mut dev = start(&[]).await;
    let si = begin(&dev, &connect_url(&dev)).await;
    let fields = vec![
        ("state".to_string(), si.q()["state"].clone()),
        (
            "error".to_string(),
            "server_error\nFORGED event=\"sts_rejected_client\"".to_string(),
        ),
    ];
    assert_code(si.callback(&dev, &fields, true).await, 502, "sts_error").await;
    let logs = dev.logs();
    assert!(
        logs.lines().all(|l| !l.starts_with("FORGED")),
        "a forged line"
    );
}

/// The README's step 7 failure controls work as step 5's ACS ones: pressed on the page, an
/// Entra failure stays on until turned off (or for the requests chosen), the page says what is
/// on, and once the cached access tokens are forgotten `/token` meets it.
#[tokio::test]
async fn entra_failures_from_the_page_stay_on_until_turned_off_like_the_acs_ones() {
    let dev = start(&[]).await;
    let id = signed_in(&dev, "megan").await;
    let browser = Browser::new();
    let by_id = |page: &Page, id: &str| {
        let start = page.html.find(&format!("id=\"{id}\">")).unwrap();
        let rest = &page.html[start..];
        let inner = &rest[rest.find('>').unwrap() + 1..];
        page_text(&inner[..inner.find('<').unwrap()])
    };
    let entra_state = |page: &Page| by_id(page, "entra-fault");
    let page = browser.open(&format!("{}/dev/sharepoint", dev.base)).await;
    assert_eq!(entra_state(&page), "nothing: it answers normally");
    // the sign-in's access token is cached: /token does not meet a failure until it is forgotten
    let page = browser
        .press_in(&page, Some("/dev/entra/fault"), "500", &[])
        .await;
    assert_eq!(entra_state(&page), "500, until turned off");
    assert_eq!(dev.token(json!({"grant_id": id})).await.status(), 200);
    let page = browser.press(&page, "forget cached access tokens").await;
    let requests = |p: &Page| by_id(p, "entra-token-requests").parse::<u64>().unwrap();
    let before = requests(&page);
    for _ in 0..2 {
        let r = dev.token(json!({"grant_id": id})).await;
        assert_eq!(r.headers()["retry-after"], "5");
        assert_code(r, 503, "sts_unavailable").await;
    }
    let page = browser.open(&format!("{}/dev/sharepoint", dev.base)).await;
    assert_eq!(requests(&page), before + 4, "one quick retry each");
    let page = browser
        .press_in(&page, Some("/dev/entra/fault"), "turn off", &[])
        .await;
    assert_eq!(entra_state(&page), "nothing: it answers normally");
    assert_eq!(dev.token(json!({"grant_id": id})).await.status(), 200);

    // for the next request: one 429 (Retry-After 7, longer than a request waits), then normal
    let page = browser
        .press_in(&page, Some("/dev/entra/fault"), "429", &[("count", "1")])
        .await;
    assert_eq!(entra_state(&page), "429, for the next request");
    browser.press(&page, "forget cached access tokens").await;
    let r = dev.token(json!({"grant_id": id})).await;
    assert_eq!(r.headers()["retry-after"], "7");
    assert_code(r, 503, "sts_unavailable").await;
    let page = browser.open(&format!("{}/dev/sharepoint", dev.base)).await;
    assert_eq!(entra_state(&page), "nothing: it answers normally");
    assert_eq!(dev.token(json!({"grant_id": id})).await.status(), 200);

    // revoked sessions, as AADSTS50173: 409 with the reason, and a revoked notice
    let page = browser
        .press_in(&page, Some("/dev/entra/fault"), "50173", &[])
        .await;
    assert_eq!(entra_state(&page), "50173, until turned off");
    assert_eq!(
        dev.stats().await["fault"],
        json!({"mode": "50173", "remaining": null}),
        "GET /dev/entra/stats says what is on"
    );
    browser.press(&page, "forget cached access tokens").await;
    let body = assert_code(
        dev.token(json!({"grant_id": id})).await,
        409,
        "relaunch_required",
    )
    .await;
    assert_eq!(body["reason"], "revoked");
    let inbox = dev.inbox(1).await;
    assert_eq!(inbox[0]["notice"]["type"], "refresh_token.revoked");
    assert_eq!(inbox[0]["notice"]["error_code"], 50173);
}
