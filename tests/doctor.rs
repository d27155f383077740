//! `spkeeper doctor` through the real binary, against local stand-ins for ACS, Entra ID,
//! SharePoint and the webhook (one small server plays them all on a loopback port), against the
//! real `serve --dev` simulator, and against DynamoDB and SQS on moto.
//!
//! Each failure class has its `fail` line and exit status 1; a healthy configuration prints
//! only `ok` and `skip` and exits 0; a malformed variable exits 2 naming it; nothing printed
//! ever holds a secret or a key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::Utc;
use serde_json::{Value, json};

use spkeeper_e2e::*;

const CLIENT_ID: &str = "6f1a8d2c-3b4e-4f5a-9b8c-7d6e5f4a3b2c";
const CLIENT_SECRET: &str = "ZG9jdG9yLWNsaWVudC1zZWNyZXQtMDEyMzQ1Njc4OQ==";
const CLIENT_SECRET_OLD: &str = "ZG9jdG9yLW9sZC1jbGllbnQtc2VjcmV0LTAxMjM0NQ==";
const API_KEY: &str = "doctor-api-key-0123456789abcdef";
const WEBHOOK_SECRET: &str = "whsec_ZG9jdG9yLXdlYmhvb2stc2VjcmV0LTAxMjM0NTY3";
const OTHER_WEBHOOK_SECRET: &str = "whsec_bm90LXRoZS1zZWNyZXQtc3BrZWVwZXItc2lnbnMtd2l0aA==";
const ENTRA_CLIENT_ID: &str = "b3f1c0de-0000-4000-8000-00000000d0c7";
const ENTRA_SECRET: &str = "doctor~entra-secret-0123456789";
/// The tenant the stand-in SharePoint answers for (and the Entra app's tenant).
const REALM: &str = "040f2415-e6e3-4480-96ce-26ef73275f73";

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_spkeeper"))
}

/// How the stand-in behaves.
#[derive(Clone)]
struct Behaviour {
    /// Seconds added to the real time in the `Date` header of the token services' answers.
    date_offset: i64,
    /// What realm discovery answers: 401 with a realm, or this status without one.
    realm_status: u16,
    /// The `token_endpoint` Entra's metadata names; `None`: the right one.
    token_endpoint: Option<String>,
    /// What `POST /hook` answers.
    hook_status: u16,
    /// Every route waits this long before answering (a service that hangs).
    stall: Duration,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            date_offset: 0,
            realm_status: 401,
            token_endpoint: None,
            hook_status: 204,
            stall: Duration::ZERO,
        }
    }
}

struct StandInState {
    base: String,
    b: Behaviour,
}

/// ACS's host (`/metadata/json/1`), Entra ID (`/entra/{tenant}/v2.0/.well-known/…`), a
/// SharePoint host (realm discovery at the root and under `/sites/{x}`) and a webhook receiver
/// that does not look at signatures (`/hook`), on one loopback port.
struct StandIn {
    base: String,
    authority: String,
}

fn date(st: &StandInState) -> HeaderValue {
    let t = Utc::now() + chrono::Duration::seconds(st.b.date_offset);
    HeaderValue::from_str(&t.format("%a, %d %b %Y %H:%M:%S GMT").to_string()).unwrap()
}

async fn acs_metadata(State(st): State<Arc<StandInState>>) -> Response {
    tokio::time::sleep(st.b.stall).await;
    ([(header::DATE, date(&st))], Json(json!({"keys": []}))).into_response()
}

async fn openid_configuration(
    State(st): State<Arc<StandInState>>,
    UrlPath(tenant): UrlPath<String>,
) -> Response {
    tokio::time::sleep(st.b.stall).await;
    let token_endpoint =
        st.b.token_endpoint
            .clone()
            .unwrap_or_else(|| format!("{}/entra/{tenant}/oauth2/v2.0/token", st.base));
    (
        [(header::DATE, date(&st))],
        Json(json!({"issuer": format!("{}/entra/{tenant}/v2.0", st.base), "token_endpoint": token_endpoint})),
    )
        .into_response()
}

async fn realm(State(st): State<Arc<StandInState>>) -> Response {
    tokio::time::sleep(st.b.stall).await;
    if st.b.realm_status != 401 {
        return StatusCode::from_u16(st.b.realm_status)
            .unwrap()
            .into_response();
    }
    let challenge = format!(
        "Bearer realm=\"{REALM}\",client_id=\"00000003-0000-0ff1-ce00-000000000000\",trusted_issuers=\"00000001-0000-0000-c000-000000000000@*\""
    );
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, challenge)],
    )
        .into_response()
}

async fn hook(State(st): State<Arc<StandInState>>) -> StatusCode {
    tokio::time::sleep(st.b.stall).await;
    StatusCode::from_u16(st.b.hook_status).unwrap()
}

impl StandIn {
    async fn start(b: Behaviour) -> StandIn {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let st = Arc::new(StandInState {
            base: base.clone(),
            b,
        });
        let app = Router::new()
            .route("/metadata/json/1", get(acs_metadata))
            .route(
                "/entra/{tenant}/v2.0/.well-known/openid-configuration",
                get(openid_configuration),
            )
            .route("/_vti_bin/client.svc", get(realm))
            .route("/sites/{site}/_vti_bin/client.svc", get(realm))
            .route("/hook", post(hook))
            .with_state(st);
        tokio::spawn(async move { axum::serve(listener, app).await });
        StandIn {
            authority: base.trim_start_matches("http://").to_string(),
            base,
        }
    }

    fn site(&self) -> String {
        format!("{}/sites/sales", self.base)
    }
}

/// A loopback port nothing listens on.
fn closed_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    addr.to_string()
}

/// One deployment's environment: ACS and Entra both configured, the token services, the
/// SharePoint host and the webhook all on loopback.
struct Deployment {
    vars: BTreeMap<String, String>,
    dir: tempfile::TempDir,
}

impl Deployment {
    fn new(stand_in: &StandIn, webhook_url: &str) -> Deployment {
        let dir = tempfile::tempdir().unwrap();
        let in_days = |d: i64| (Utc::now() + chrono::Duration::days(d)).to_rfc3339();
        let vars = [
            (
                "SPKEEPER_DATA_DIR",
                dir.path().join("data").display().to_string(),
            ),
            ("SPKEEPER_CLIENT_ID", CLIENT_ID.into()),
            ("SPKEEPER_CLIENT_SECRET", CLIENT_SECRET.into()),
            ("SPKEEPER_CLIENT_SECRET_SECONDARY", CLIENT_SECRET_OLD.into()),
            ("SPKEEPER_CLIENT_SECRET_EXPIRES_AT", in_days(200)),
            ("SPKEEPER_PUBLIC_URL", "https://addin.example.com".into()),
            ("SPKEEPER_ALLOWED_SP_HOSTS", stand_in.authority.clone()),
            ("SPKEEPER_STS_HOSTS", stand_in.authority.clone()),
            ("SPKEEPER_API_KEY", API_KEY.into()),
            ("SPKEEPER_WEBHOOK_URL", webhook_url.into()),
            ("SPKEEPER_WEBHOOK_SECRET", WEBHOOK_SECRET.into()),
            ("SPKEEPER_ENTRA_CLIENT_ID", ENTRA_CLIENT_ID.into()),
            ("SPKEEPER_ENTRA_CLIENT_SECRET", ENTRA_SECRET.into()),
            ("SPKEEPER_ENTRA_TENANT", REALM.into()),
            (
                "SPKEEPER_ENTRA_AUTHORITY",
                format!("{}/entra", stand_in.base),
            ),
            ("SPKEEPER_ENTRA_SECRET_EXPIRES_AT", in_days(300)),
            // Anything a dependency would print about a request gets its chance to.
            ("SPKEEPER_LOG", "debug".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        Deployment { vars, dir }
    }

    fn set(&mut self, var: &str, value: &str) -> &mut Self {
        self.vars.insert(var.into(), value.into());
        self
    }

    fn unset(&mut self, var: &str) -> &mut Self {
        self.vars.remove(var);
        self
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// What a first run does: the key file and the database (any command makes them).
    fn first_run(&self) {
        let (code, _, err) = run(&bin(), &["grants"], &self.vars);
        assert_eq!(code, 0, "spkeeper grants: {err}");
    }

    /// Every secret and key this deployment holds, to look for in what doctor prints.
    fn secrets(&self) -> Vec<String> {
        let mut all: Vec<String> = [
            CLIENT_SECRET,
            CLIENT_SECRET_OLD,
            API_KEY,
            WEBHOOK_SECRET,
            WEBHOOK_SECRET.trim_start_matches("whsec_"),
            ENTRA_SECRET,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Ok(text) = std::fs::read_to_string(self.data().join("keys.json")) {
            let keys: Value = serde_json::from_str(&text).unwrap();
            for (_, k) in keys["token_keys"].as_object().unwrap() {
                all.push(k.as_str().unwrap().to_string());
            }
            all.push(keys["link_key"].as_str().unwrap().to_string());
        }
        all
    }
}

/// One run of `spkeeper doctor`.
struct Report {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Report {
    /// (status, check, detail) of each line.
    fn lines(&self) -> Vec<(String, String, String)> {
        self.stdout
            .lines()
            .map(|l| {
                let mut parts = l.splitn(2, char::is_whitespace);
                let status = parts.next().unwrap_or("").to_string();
                let rest = parts.next().unwrap_or("").trim_start();
                let mut parts = rest.splitn(2, char::is_whitespace);
                let check = parts.next().unwrap_or("").to_string();
                let detail = parts.next().unwrap_or("").trim_start().to_string();
                (status, check, detail)
            })
            .collect()
    }

    /// The lines of one check.
    fn of(&self, check: &str) -> Vec<(String, String)> {
        self.lines()
            .into_iter()
            .filter(|(_, c, _)| c == check)
            .map(|(s, _, d)| (s, d))
            .collect()
    }

    /// The one line of `check`: its status and detail.
    fn one(&self, check: &str) -> (String, String) {
        let found = self.of(check);
        assert_eq!(found.len(), 1, "one {check} line in:\n{}", self.stdout);
        found.into_iter().next().unwrap()
    }

    fn assert_line(&self, check: &str, status: &str, detail_has: &str) {
        let (s, d) = self.one(check);
        assert_eq!(s, status, "{check}: {d}\n{}", self.stdout);
        assert!(
            d.contains(detail_has),
            "{check}: {d:?} lacks {detail_has:?}"
        );
    }

    /// The checks that failed.
    fn failed(&self) -> Vec<String> {
        self.lines()
            .into_iter()
            .filter(|(s, _, _)| s == "fail")
            .map(|(_, c, d)| format!("{c}: {d}"))
            .collect()
    }

    fn all_output(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// A healthy deployment that has run once (its key file and database made): the token
/// service and site stand-in, the webhook receiver, and the operator's environment.
async fn healthy() -> (StandIn, Receiver, Deployment) {
    let stand_in = StandIn::start(Behaviour::default()).await;
    let receiver = Receiver::start(WEBHOOK_SECRET).await;
    let d = Deployment::new(&stand_in, &receiver.url());
    d.first_run();
    (stand_in, receiver, d)
}

fn doctor(vars: &BTreeMap<String, String>, args: &[&str]) -> Report {
    let args: Vec<&str> = ["doctor"].iter().chain(args).copied().collect();
    let (code, stdout, stderr) = run(&bin(), &args, vars);
    Report {
        code,
        stdout,
        stderr,
    }
}

fn notice_schema() -> jsonschema::Validator {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas/notice.schema.json"),
    )
    .unwrap();
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&serde_json::from_str(&text).unwrap())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_deployment_prints_only_ok_and_skip_and_exits_0() {
    let (stand_in, receiver, d) = healthy().await;
    let site = stand_in.site();
    let r = doctor(&d.vars, &["--site", &site]);
    assert_eq!(r.code, 0, "{}", r.all_output());
    for (status, check, detail) in r.lines() {
        assert!(
            status == "ok" || status == "skip",
            "{status} {check}: {detail}"
        );
    }
    for check in [
        "config",
        "key_file",
        "secrets.client",
        "secrets.api_key",
        "secrets.token_keys",
        "secrets.link_key",
        "secrets.webhook",
        "secrets.entra",
        "expiry.client_secret",
        "expiry.entra_secret",
        "clock",
        "acs",
        "entra",
        "site",
        "webhook",
        "store",
    ] {
        assert_eq!(r.one(check).0, "ok", "{check}:\n{}", r.stdout);
    }
    r.assert_line("secrets.client", "ok", "secondary");
    r.assert_line("site", "ok", REALM);
    r.assert_line("expiry.client_secret", "ok", "in 200 days");

    // The receiver got one test notice, signed with the secret, and the notice schema allows it.
    let got = receiver.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].signature_valid);
    assert_eq!(got[0].notice["type"], "webhook.test");
    assert_eq!(got[0].id, got[0].notice["id"]);
    let schema = notice_schema();
    let errors: Vec<String> = schema
        .iter_errors(&got[0].notice)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{errors:?}");

    // --json: the same checks, as one array of {check, status, detail}.
    let j = doctor(&d.vars, &["--json", "--site", &site]);
    assert_eq!(j.code, 0);
    let rows: Vec<Value> = serde_json::from_str(j.stdout.trim()).unwrap();
    assert_eq!(j.stdout.trim().lines().count(), 1);
    let text_checks: Vec<(String, String)> =
        r.lines().into_iter().map(|(s, c, _)| (c, s)).collect();
    let json_checks: Vec<(String, String)> = rows
        .iter()
        .map(|row| {
            let o = row.as_object().unwrap();
            assert_eq!(
                o.keys().map(String::as_str).collect::<Vec<_>>(),
                ["check", "detail", "status"]
            );
            (
                row["check"].as_str().unwrap().to_string(),
                row["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(json_checks, text_checks);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_doctor_prints_holds_a_secret_or_a_key() {
    let stand_in = StandIn::start(Behaviour {
        hook_status: 500,
        ..Behaviour::default()
    })
    .await;
    let mut d = Deployment::new(&stand_in, &format!("{}/hook", stand_in.base));
    d.first_run();
    let secrets = d.secrets();
    assert!(secrets.len() >= 8, "the key file's keys are looked for too");
    let site = stand_in.site();
    let mut outputs = vec![
        doctor(&d.vars, &["--site", &site]),
        doctor(&d.vars, &["--json", "--site", &site]),
    ];
    // a receiver with another secret, refusing the signature
    let other = Receiver::start(OTHER_WEBHOOK_SECRET).await;
    d.set("SPKEEPER_WEBHOOK_URL", &other.url());
    outputs.push(doctor(&d.vars, &[]));
    // a secret of the wrong form (the configuration's error names it, never shows it)
    d.set("SPKEEPER_WEBHOOK_SECRET", "plain-not-whsec-secret-value");
    let bad = doctor(&d.vars, &[]);
    assert_eq!(bad.code, 2, "{}", bad.all_output());
    outputs.push(bad);
    for r in &outputs {
        assert!(!r.stdout.is_empty());
        assert_no_secrets(
            &r.all_output(),
            &secrets
                .iter()
                .cloned()
                .chain(["plain-not-whsec-secret-value".to_string()])
                .collect::<Vec<_>>(),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_webhook_fails_the_webhook_check() {
    let stand_in = StandIn::start(Behaviour::default()).await;
    let d = Deployment::new(&stand_in, &format!("http://{}/hook", closed_port()));
    d.first_run();
    let r = doctor(&d.vars, &[]);
    assert_eq!(r.code, 1, "{}", r.all_output());
    r.assert_line("webhook", "fail", "could not connect");
    assert_eq!(r.failed().len(), 1, "{:?}", r.failed());
    assert!(r.stderr.contains("1 of"), "{}", r.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_answering_500_fails_with_the_status() {
    let stand_in = StandIn::start(Behaviour {
        hook_status: 500,
        ..Behaviour::default()
    })
    .await;
    let d = Deployment::new(&stand_in, &format!("{}/hook", stand_in.base));
    d.first_run();
    let r = doctor(&d.vars, &[]);
    assert_eq!(r.code, 1, "{}", r.all_output());
    r.assert_line("webhook", "fail", "HTTP 500");
    assert_eq!(r.failed().len(), 1, "{:?}", r.failed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_verifying_with_another_secret_refuses_the_test_and_doctor_names_the_secret() {
    let stand_in = StandIn::start(Behaviour::default()).await;
    let receiver = Receiver::start(OTHER_WEBHOOK_SECRET).await;
    let d = Deployment::new(&stand_in, &receiver.url());
    d.first_run();
    let r = doctor(&d.vars, &[]);
    assert_eq!(r.code, 1, "{}", r.all_output());
    r.assert_line("webhook", "fail", "HTTP 401");
    r.assert_line("webhook", "fail", "SPKEEPER_WEBHOOK_SECRET");
    let got = receiver.received();
    assert_eq!(got.len(), 1);
    assert!(!got[0].signature_valid, "the receiver saw a bad signature");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_client_secret_fails_and_one_expiring_within_30_days_warns() {
    let (_stand_in, _receiver, mut d) = healthy().await;
    let yesterday = (Utc::now() - chrono::Duration::days(1)).to_rfc3339();
    let soon = (Utc::now() + chrono::Duration::days(10)).to_rfc3339();
    d.set("SPKEEPER_CLIENT_SECRET_EXPIRES_AT", &yesterday)
        .set("SPKEEPER_ENTRA_SECRET_EXPIRES_AT", &soon);
    let r = doctor(&d.vars, &[]);
    assert_eq!(r.code, 1, "{}", r.all_output());
    r.assert_line("expiry.client_secret", "fail", "expired");
    r.assert_line("expiry.entra_secret", "warn", "in 10 days");
    assert_eq!(r.failed().len(), 1, "{:?}", r.failed());

    // Only the warning: exit 0.
    d.unset("SPKEEPER_CLIENT_SECRET_EXPIRES_AT");
    let r = doctor(&d.vars, &[]);
    assert_eq!(r.code, 0, "{}", r.all_output());
    r.assert_line("expiry.client_secret", "skip", "not set");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_whose_host_is_not_allowed_fails_naming_it() {
    let (stand_in, _receiver, d) = healthy().await;
    let good = stand_in.site();
    let r = doctor(
        &d.vars,
        &[
            "--site",
            "https://contoso.sharepoint.com/sites/x",
            "--site",
            &good,
        ],
    );
    assert_eq!(r.code, 1, "{}", r.all_output());
    let sites = r.of("site");
    assert_eq!(sites.len(), 2, "{sites:?}");
    assert_eq!(sites[0].0, "fail");
    assert!(
        sites[0]
            .1
            .contains("https://contoso.sharepoint.com/sites/x")
            && sites[0].1.contains("SPKEEPER_ALLOWED_SP_HOSTS"),
        "{}",
        sites[0].1
    );
    assert_eq!(sites[1].0, "ok", "{}", sites[1].1);
    // Without --site, the check says how to ask for it.
    doctor(&d.vars, &[]).assert_line("site", "skip", "--site https://");
    // Not a URL at all: bad usage.
    let r = doctor(&d.vars, &["--site", "contoso"]);
    assert_eq!(r.code, 2, "{}", r.all_output());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_that_does_not_answer_realm_discovery_with_401_fails() {
    let stand_in = StandIn::start(Behaviour {
        realm_status: 200,
        ..Behaviour::default()
    })
    .await;
    let receiver = Receiver::start(WEBHOOK_SECRET).await;
    let d = Deployment::new(&stand_in, &receiver.url());
    d.first_run();
    let r = doctor(&d.vars, &["--site", &stand_in.site()]);
    assert_eq!(r.code, 1, "{}", r.all_output());
    r.assert_line("site", "fail", "HTTP 200, not 401");
    assert_eq!(r.failed().len(), 1, "{:?}", r.failed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_token_services_fail_and_the_clock_is_then_not_judged() {
    let (_stand_in, _receiver, mut d) = healthy().await;
    let nowhere = closed_port();
    d.set("SPKEEPER_STS_HOSTS", &nowhere).set(
        "SPKEEPER_ENTRA_AUTHORITY",
        &format!("http://{nowhere}/entra"),
    );
    let r = doctor(&d.vars, &[]);
    assert_eq!(r.code, 1, "{}", r.all_output());
    r.assert_line("acs", "fail", &nowhere);
    r.assert_line("acs", "fail", "could not connect");
    r.assert_line("entra", "fail", "could not connect");
    r.assert_line("clock", "skip", "no token service answered");
    assert_eq!(r.failed().len(), 2, "{:?}", r.failed());
}

/// The default list names the global ACS and China's; a deployment reaches only its own
/// cloud's. One token service of the list answering makes the others a warning, not a failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listed_token_service_out_of_reach_warns_when_another_answers() {
    let (stand_in, _receiver, mut d) = healthy().await;
    let nowhere = closed_port();
    d.set(
        "SPKEEPER_STS_HOSTS",
        &format!("{},{nowhere}", stand_in.authority),
    );
    let r = doctor(&d.vars, &[]);
    assert_eq!(r.code, 0, "{}", r.all_output());
    let acs: Vec<(String, String)> = r
        .lines()
        .into_iter()
        .filter(|(_, check, _)| check == "acs")
        .map(|(status, _, detail)| (status, detail))
        .collect();
    assert_eq!(acs.len(), 2, "{acs:?}");
    assert!(
        acs.iter()
            .any(|(st, d)| st == "ok" && d.contains(&stand_in.authority)),
        "{acs:?}"
    );
    assert!(
        acs.iter()
            .any(|(st, d)| st == "warn" && d.contains(&nowhere)),
        "{acs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entra_metadata_naming_another_token_endpoint_fails() {
    let stand_in = StandIn::start(Behaviour {
        token_endpoint: Some("https://login.example.net/other/oauth2/v2.0/token".into()),
        ..Behaviour::default()
    })
    .await;
    let receiver = Receiver::start(WEBHOOK_SECRET).await;
    let d = Deployment::new(&stand_in, &receiver.url());
    d.first_run();
    let r = doctor(&d.vars, &[]);
    assert_eq!(r.code, 1, "{}", r.all_output());
    r.assert_line("entra", "fail", "https://login.example.net/other");
    r.assert_line("entra", "fail", "SPKEEPER_ENTRA_AUTHORITY");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_minutes_off_the_token_service_warns_and_ten_minutes_off_fails() {
    let receiver = Receiver::start(WEBHOOK_SECRET).await;
    for (offset, status, code) in [(-180, "warn", 0), (600, "fail", 1)] {
        let stand_in = StandIn::start(Behaviour {
            date_offset: offset,
            ..Behaviour::default()
        })
        .await;
        let d = Deployment::new(&stand_in, &receiver.url());
        d.first_run();
        let r = doctor(&d.vars, &[]);
        assert_eq!(r.code, code, "{}", r.all_output());
        let way = if offset < 0 { "ahead of" } else { "behind" };
        r.assert_line("clock", status, way);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_that_never_answer_fail_within_seconds_and_doctor_does_not_hang() {
    let stand_in = StandIn::start(Behaviour {
        stall: Duration::from_secs(60),
        ..Behaviour::default()
    })
    .await;
    let d = Deployment::new(&stand_in, &format!("{}/hook", stand_in.base));
    d.first_run();
    let started = Instant::now();
    let r = doctor(&d.vars, &["--site", &stand_in.site()]);
    let took = started.elapsed();
    assert_eq!(r.code, 1, "{}", r.all_output());
    assert!(took < Duration::from_secs(15), "doctor took {took:?}");
    for check in ["acs", "entra", "site", "webhook"] {
        let (status, detail) = r.one(check);
        assert_eq!(status, "fail", "{check}: {detail}");
        assert!(
            detail.contains("timed out") || detail.contains("within 5 s"),
            "{check}: {detail}"
        );
    }
}

#[test]
fn a_malformed_variable_exits_2_with_one_fail_line_naming_it() {
    let mut vars = BTreeMap::new();
    let dir = tempfile::tempdir().unwrap();
    for (k, v) in [
        (
            "SPKEEPER_DATA_DIR",
            dir.path().join("data").display().to_string(),
        ),
        ("SPKEEPER_CLIENT_ID", "not-a-guid".to_string()),
        ("SPKEEPER_CLIENT_SECRET", CLIENT_SECRET.to_string()),
        (
            "SPKEEPER_PUBLIC_URL",
            "https://addin.example.com".to_string(),
        ),
        (
            "SPKEEPER_ALLOWED_SP_HOSTS",
            "contoso.sharepoint.com".to_string(),
        ),
        ("SPKEEPER_API_KEY", API_KEY.to_string()),
    ] {
        vars.insert(k.to_string(), v);
    }
    let r = doctor(&vars, &[]);
    assert_eq!(r.code, 2, "{}", r.all_output());
    assert_eq!(r.stdout.lines().count(), 1, "{}", r.stdout);
    r.assert_line("config", "fail", "SPKEEPER_CLIENT_ID");
    assert!(r.stderr.contains("SPKEEPER_CLIENT_ID"), "{}", r.stderr);
    let j = doctor(&vars, &["--json"]);
    assert_eq!(j.code, 2);
    let rows: Value = serde_json::from_str(j.stdout.trim()).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 1);
    assert_eq!(rows[0]["check"], "config");
    assert_eq!(rows[0]["status"], "fail");
    // Nothing was made on the way.
    assert!(!dir.path().join("data").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_secret_exits_2_naming_it_and_the_other_checks_still_run() {
    let stand_in = StandIn::start(Behaviour::default()).await;
    let mut d = Deployment::new(&stand_in, &format!("{}/hook", stand_in.base));
    d.first_run();
    d.set("SPKEEPER_WEBHOOK_SECRET", "whsec_c2hvcnQ=");
    let r = doctor(&d.vars, &[]);
    assert_eq!(r.code, 2, "{}", r.all_output());
    r.assert_line("secrets", "fail", "SPKEEPER_WEBHOOK_SECRET");
    assert!(r.stderr.contains("SPKEEPER_WEBHOOK_SECRET"), "{}", r.stderr);
    r.assert_line("webhook", "skip", "secrets did not load");
    r.assert_line("acs", "ok", "answered");
    r.assert_line("store", "ok", "0 grants");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_file_others_can_read_fails() {
    use std::os::unix::fs::PermissionsExt;
    let (_stand_in, _receiver, d) = healthy().await;
    let keys = d.data().join("keys.json");
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o644)).unwrap();
    let r = doctor(&d.vars, &[]);
    assert_eq!(r.code, 1, "{}", r.all_output());
    r.assert_line("key_file", "fail", "chmod 600");
    r.assert_line("secrets.token_keys", "skip", "key_file");
    assert_eq!(
        std::fs::metadata(&keys).unwrap().permissions().mode() & 0o777,
        0o644,
        "doctor changes nothing"
    );
}

/// A key file lost beside a database that holds grants: every stored token is sealed with
/// it, and any command would make a new one that opens none of them. Doctor fails, says to
/// restore it, and makes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_key_file_beside_a_database_with_grants_fails_and_says_to_restore_it() {
    let (_stand_in, _receiver, d) = healthy().await;
    {
        use spkeeper::ports::GrantStore;
        let store = spkeeper::store::sqlite::SqliteStore::open_dir(&d.data()).unwrap();
        let nbf = Utc::now();
        let record = spkeeper_e2e::lambda::grant_record(
            "megan",
            "https://accounts.accesscontrol.windows.net/tokens/OAuth/2",
            nbf,
            spkeeper::core::grant::refresh_token_expiry(nbf),
        );
        store
            .put_grant(None, &record, "sealed-elsewhere", None)
            .await
            .unwrap();
    }
    std::fs::remove_file(d.data().join("keys.json")).unwrap();
    let r = doctor(&d.vars, &[]);
    assert_eq!(r.code, 1, "{}", r.all_output());
    r.assert_line("key_file", "fail", "restore it from the backup");
    assert!(
        !d.data().join("keys.json").exists(),
        "doctor made a key file"
    );
}

/// The keys must open what the store holds, not only what they seal themselves: a stored
/// refresh token sealed with the key file opens (ok); one sealed with other keys (another
/// key file, a key removed from the ring) fails the check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_that_do_not_open_the_stored_tokens_fail() {
    use spkeeper::config::{KeyFile, Needs, Part, Secrets};
    use spkeeper::ports::GrantStore;
    let (_stand_in, _receiver, d) = healthy().await;
    let store = spkeeper::store::sqlite::SqliteStore::open_dir(&d.data()).unwrap();
    let ring = |file: KeyFile| {
        Secrets::for_needs(file.into_document(), Needs::only(&[Part::TokenKeys]))
            .unwrap()
            .key_ring
    };
    let ours = ring(
        serde_json::from_str(&std::fs::read_to_string(d.data().join("keys.json")).unwrap())
            .unwrap(),
    );
    let theirs = ring(KeyFile::generate().unwrap());
    for (user, key_ring, minutes, expected) in
        [("megan", &ours, 0, "ok"), ("alex", &theirs, 1, "fail")]
    {
        let nbf = Utc::now() + chrono::Duration::minutes(minutes);
        let record = spkeeper_e2e::lambda::grant_record(
            user,
            "https://accounts.accesscontrol.windows.net/tokens/OAuth/2",
            nbf,
            spkeeper::core::grant::refresh_token_expiry(nbf),
        );
        let place = spkeeper::core::seal::Place::RefreshToken {
            grant: record.id.as_str(),
            version: record.rt_version,
        };
        let sealed = key_ring.seal(b"a refresh token", &place).unwrap();
        store.put_grant(None, &record, &sealed, None).await.unwrap();
        let r = doctor(&d.vars, &[]);
        r.assert_line("secrets.stored", expected, record.id.as_str());
    }
}

/// A reader that stops early (`spkeeper doctor | head -1`) is no crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_goes_away_does_not_crash_doctor() {
    let (_stand_in, _receiver, d) = healthy().await;
    let mut child = std::process::Command::new(bin())
        .arg("doctor")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(&d.vars)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_ne!(out.status.code(), Some(101), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_on_a_fresh_data_directory_warns_and_creates_nothing() {
    let stand_in = StandIn::start(Behaviour::default()).await;
    let receiver = Receiver::start(WEBHOOK_SECRET).await;
    let d = Deployment::new(&stand_in, &receiver.url());
    let r = doctor(&d.vars, &[]);
    assert_eq!(r.code, 0, "{}", r.all_output());
    r.assert_line("key_file", "warn", "does not exist yet");
    r.assert_line("store", "warn", "does not exist yet");
    r.assert_line("secrets.link_key", "skip", "no key file");
    r.assert_line("webhook", "ok", "accepted");
    assert!(!d.data().exists(), "doctor made {}", d.data().display());
}

/// `serve --dev`, then `doctor --dev --site {the simulated site}`: everything is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_dev_against_serve_dev_finds_everything_ok() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let vars: BTreeMap<String, String> = [(
        "SPKEEPER_DATA_DIR".to_string(),
        dir.path().join("data").display().to_string(),
    )]
    .into();
    let mut serve = Proc::spawn(
        &bin(),
        &["serve", "--dev", "--addr", "127.0.0.1:0"],
        &vars,
        &logs,
        "serve",
    );
    let base = serve.wait_for_line("spkeeper listening on ", Duration::from_secs(30));
    let info = get_json(&format!("{base}/dev/info")).await;
    let site = info["site_url"].as_str().unwrap().to_string();
    let sub_site = format!("{base}/sites/dev");
    let r = doctor(&vars, &["--dev", "--site", &site, "--site", &sub_site]);
    assert_eq!(r.code, 0, "{}", r.all_output());
    for (status, check, detail) in r.lines() {
        // No expiry dates in dev, and nothing launched yet: no stored token to open.
        let expected = if check.starts_with("expiry.") || check == "secrets.stored" {
            "skip"
        } else {
            "ok"
        };
        assert_eq!(status, expected, "{check}: {detail}");
    }
    let realm = info["realm"].as_str().unwrap();
    assert!(r.of("site").iter().all(|(_, d)| d.contains(realm)));
    // The simulator's inbox got the test notice, its signature verified.
    let inbox = get_json(&format!("{base}/dev/webhook")).await;
    let tests: Vec<&Value> = inbox
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["notice"]["type"] == "webhook.test")
        .collect();
    assert_eq!(tests.len(), 1, "{inbox}");
    assert_eq!(tests[0]["signature_valid"], true);
    // No dev secret in what doctor printed.
    let dev: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("data/dev.json")).unwrap())
            .unwrap();
    let secrets: Vec<String> = [
        "client_secret",
        "api_key",
        "webhook_secret",
        "sim_key",
        "entra_client_secret",
    ]
    .iter()
    .map(|k| dev[k].as_str().unwrap().to_string())
    .collect();
    assert_no_secrets(&r.all_output(), &secrets);
    serve.stop();
}

mod on_moto {
    use super::*;
    use spkeeper::testkit::moto;

    /// A stack's table, queue and secrets on moto, and the operator's environment for it.
    async fn stack(
        stand_in: &StandIn,
    ) -> (
        aws_config::SdkConfig,
        String,
        BTreeMap<String, String>,
        tempfile::TempDir,
    ) {
        let sdk = moto::sdk_config().await;
        let (table, queue_url) = moto::fresh(&sdk, "doctor").await;
        let keys = serde_json::to_value(spkeeper::config::KeyFile::generate().unwrap()).unwrap();
        let mut secret = json!({"client_secret": CLIENT_SECRET, "api_key": API_KEY});
        for (k, v) in keys.as_object().unwrap() {
            secret[k] = v.clone();
        }
        let arn = moto::create_secret(&sdk, &secret).await;
        let dir = tempfile::tempdir().unwrap();
        let vars: BTreeMap<String, String> = [
            (
                "SPKEEPER_DATA_DIR",
                dir.path().join("data").display().to_string(),
            ),
            ("SPKEEPER_CLIENT_ID", CLIENT_ID.to_string()),
            ("SPKEEPER_PUBLIC_URL", "https://addin.example.com".into()),
            ("SPKEEPER_ALLOWED_SP_HOSTS", stand_in.authority.clone()),
            ("SPKEEPER_STS_HOSTS", stand_in.authority.clone()),
            ("SPKEEPER_STORE", "dynamodb".into()),
            ("SPKEEPER_TABLE", table.clone()),
            ("SPKEEPER_QUEUE_URL", queue_url),
            ("SPKEEPER_SECRETS_ARN", arn),
            ("AWS_ENDPOINT_URL", moto::url()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        (sdk, table, vars, dir)
    }

    /// Secrets Manager that never answers: doctor gives up after 5 s and exits 2, as it does
    /// for a refused read (and as every command does), and does not hang.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn secrets_manager_that_never_answers_exits_2_within_seconds() {
        let stand_in = StandIn::start(Behaviour::default()).await;
        let (_sdk, _table, mut vars, _dir) = stack(&stand_in).await;
        // Accepts connections, never answers.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((conn, _)) = silent.accept().await {
                held.push(conn);
            }
        });
        vars.insert("AWS_ENDPOINT_URL".into(), format!("http://{addr}"));
        let started = Instant::now();
        let r = doctor(&vars, &[]);
        assert_eq!(r.code, 2, "{}", r.all_output());
        r.assert_line("secrets", "fail", "did not answer within 5 s");
        assert!(
            started.elapsed() < Duration::from_secs(25),
            "{:?}",
            started.elapsed()
        );
    }

    /// Turns point-in-time recovery on or off, as an operator (or a restore) leaves it.
    async fn backups(dynamo: &aws_sdk_dynamodb::Client, table: &str, on: bool) {
        dynamo
            .update_continuous_backups()
            .table_name(table)
            .point_in_time_recovery_specification(
                aws_sdk_dynamodb::types::PointInTimeRecoverySpecification::builder()
                    .point_in_time_recovery_enabled(on)
                    .build()
                    .unwrap(),
            )
            .send()
            .await
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_table_without_ttl_or_backups_warns_and_a_missing_table_fails() {
        let stand_in = StandIn::start(Behaviour::default()).await;
        let (sdk, table, mut vars, _dir) = stack(&stand_in).await;
        let dynamo = aws_sdk_dynamodb::Client::new(&sdk);

        // As the stack makes it: TTL on `ttl`, point-in-time recovery on.
        backups(&dynamo, &table, true).await;
        let r = doctor(&vars, &[]);
        assert_eq!(r.code, 0, "{}", r.all_output());
        r.assert_line("key_file", "skip", "Secrets Manager");
        r.assert_line("secrets.token_keys", "ok", "seals");
        r.assert_line("store", "ok", "ACTIVE");
        r.assert_line("store.ttl", "ok", "`ttl`");
        r.assert_line("store.backups", "ok", "on");
        r.assert_line("store.queue", "ok", "0 notices waiting");
        for (status, check, detail) in r.lines() {
            assert!(
                status == "ok" || status == "skip",
                "{status} {check}: {detail}"
            );
        }

        // TTL off, recovery off: warnings, not failures.
        dynamo
            .update_time_to_live()
            .table_name(&table)
            .time_to_live_specification(
                aws_sdk_dynamodb::types::TimeToLiveSpecification::builder()
                    .attribute_name("ttl")
                    .enabled(false)
                    .build()
                    .unwrap(),
            )
            .send()
            .await
            .unwrap();
        backups(&dynamo, &table, false).await;
        let r = doctor(&vars, &[]);
        assert_eq!(r.code, 0, "{}", r.all_output());
        r.assert_line("store.ttl", "warn", "TTL is off");
        r.assert_line("store.backups", "warn", "point-in-time recovery is off");
        r.assert_line("store", "ok", "ACTIVE");

        // A table that is not there, and a queue that is not there: failures naming them.
        vars.insert("SPKEEPER_TABLE".into(), moto::unique("spk-missing"));
        vars.insert(
            "SPKEEPER_QUEUE_URL".into(),
            format!("{}/123456789012/{}", moto::url(), moto::unique("missing")),
        );
        let r = doctor(&vars, &["--json"]);
        assert_eq!(r.code, 1, "{}", r.all_output());
        let rows: Vec<Value> = serde_json::from_str(r.stdout.trim()).unwrap();
        let row = |name: &str| {
            rows.iter()
                .find(|c| c["check"] == name)
                .unwrap_or_else(|| panic!("no {name} in {rows:?}"))
                .clone()
        };
        assert_eq!(row("store")["status"], "fail", "{:?}", row("store"));
        assert!(
            row("store")["detail"]
                .as_str()
                .unwrap()
                .contains("ResourceNotFoundException"),
            "{:?}",
            row("store")
        );
        assert_eq!(row("store.ttl")["status"], "skip");
        assert_eq!(
            row("store.queue")["status"],
            "fail",
            "{:?}",
            row("store.queue")
        );
    }
}
