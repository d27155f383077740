//! A local Lambda Runtime API (the interface a `provided.al2023` runtime polls), and the AWS
//! side of the Lambda tests: moto resources, the Secrets Manager secrets (one per part), an
//! ACS stand-in.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::sync::Notify;

use spkeeper::aws::Aws;
use spkeeper::config::{KeyFile, Needs, Part, Program, SecretDocument, Secrets, Settings};
use spkeeper::testkit::moto;

/// What a function answered for one invocation.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Response(Value),
    Error(Value),
}

impl Outcome {
    /// The response; a test fails if the function reported an error instead.
    pub fn response(self) -> Value {
        match self {
            Outcome::Response(v) => v,
            Outcome::Error(e) => panic!("the function failed: {e}"),
        }
    }
}

/// The JSON body of an API Gateway (HTTP API) response.
pub fn body_of(r: &Value) -> Value {
    serde_json::from_str(r["body"].as_str().unwrap_or("null")).unwrap_or(Value::Null)
}

/// A grant as a launch would have stored it (for seeding the table).
pub fn grant_record(
    key: &str,
    sts_uri: &str,
    nbf: chrono::DateTime<chrono::Utc>,
    expires: chrono::DateTime<chrono::Utc>,
) -> spkeeper::ports::GrantRecord {
    spkeeper::ports::GrantRecord {
        kind: spkeeper::core::grant::Kind::Acs,
        id: spkeeper::core::grant::GrantId::derive(REALM, key),
        rev: 0,
        realm: REALM.into(),
        site_url: "https://contoso.sharepoint.com/sites/sales".into(),
        app_web_url: None,
        standard_tokens: spkeeper::ports::StandardTokens::default(),
        sts_uri: sts_uri.into(),
        target_principal: spkeeper::core::context_token::SHAREPOINT_PRINCIPAL.into(),
        user: None,
        rt_version: nbf.timestamp(),
        rt_expires_at: expires,
        progress: spkeeper::core::grant::Progress::None,
        next_due_at: None,
        created_at: nbf,
        updated_at: nbf,
    }
}

struct RuntimeState {
    queue: Mutex<VecDeque<(String, Value)>>,
    queued: Notify,
    outcomes: Mutex<HashMap<String, Outcome>>,
    answered: Notify,
    init_error: Mutex<Option<Value>>,
    counter: AtomicUsize,
    /// The function's timeout: each invocation's deadline is this far from its start.
    timeout: Duration,
}

/// The Runtime API: `GET /2018-06-01/runtime/invocation/next` hands out queued events; the
/// function posts each result to `…/{request id}/response` or `…/error`.
#[derive(Clone)]
pub struct RuntimeApi {
    pub addr: SocketAddr,
    state: Arc<RuntimeState>,
}

async fn next(State(st): State<Arc<RuntimeState>>) -> Response {
    loop {
        let notified = st.queued.notified();
        if let Some((id, event)) = st.queue.lock().unwrap().pop_front() {
            let deadline = (std::time::SystemTime::now() + st.timeout)
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis();
            return (
                StatusCode::OK,
                [
                    ("lambda-runtime-aws-request-id", id.clone()),
                    ("lambda-runtime-deadline-ms", deadline.to_string()),
                    (
                        "lambda-runtime-invoked-function-arn",
                        "arn:aws:lambda:eu-west-1:123456789012:function:spkeeper-test".to_string(),
                    ),
                    ("lambda-runtime-trace-id", format!("Root=1-00000000-{id}")),
                    ("content-type", "application/json".to_string()),
                ],
                event.to_string(),
            )
                .into_response();
        }
        notified.await;
    }
}

fn record(st: &RuntimeState, id: String, outcome: Outcome) -> StatusCode {
    st.outcomes.lock().unwrap().insert(id, outcome);
    st.answered.notify_waiters();
    StatusCode::ACCEPTED
}

async fn response(
    State(st): State<Arc<RuntimeState>>,
    Path(id): Path<String>,
    body: Bytes,
) -> StatusCode {
    record(
        &st,
        id,
        Outcome::Response(serde_json::from_slice(&body).unwrap_or(Value::Null)),
    )
}

async fn error(
    State(st): State<Arc<RuntimeState>>,
    Path(id): Path<String>,
    body: Bytes,
) -> StatusCode {
    record(
        &st,
        id,
        Outcome::Error(serde_json::from_slice(&body).unwrap_or(Value::Null)),
    )
}

async fn init_error(State(st): State<Arc<RuntimeState>>, _h: HeaderMap, body: Bytes) -> StatusCode {
    *st.init_error.lock().unwrap() = Some(serde_json::from_slice(&body).unwrap_or(Value::Null));
    st.answered.notify_waiters();
    StatusCode::ACCEPTED
}

impl RuntimeApi {
    /// For a function whose timeout is 30 s (notify's in template.yaml; more than launch's and
    /// exchange's, which do not read their deadline).
    pub async fn start() -> RuntimeApi {
        Self::with_timeout(Duration::from_secs(30)).await
    }

    /// For a function whose timeout is `timeout` (the sweep's: 300 s in template.yaml).
    pub async fn with_timeout(timeout: Duration) -> RuntimeApi {
        let state = Arc::new(RuntimeState {
            queue: Mutex::default(),
            queued: Notify::new(),
            outcomes: Mutex::default(),
            answered: Notify::new(),
            init_error: Mutex::default(),
            counter: AtomicUsize::new(0),
            timeout,
        });
        let app = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next))
            .route(
                "/2018-06-01/runtime/invocation/{id}/response",
                post(response),
            )
            .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
            .route("/2018-06-01/runtime/init/error", post(init_error))
            .with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        RuntimeApi { addr, state }
    }

    /// The environment Lambda gives a function.
    pub fn env(&self, function: &str) -> BTreeMap<String, String> {
        [
            ("AWS_LAMBDA_RUNTIME_API", self.addr.to_string()),
            ("AWS_LAMBDA_FUNCTION_NAME", format!("spkeeper-{function}")),
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512".into()),
            ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".into()),
            (
                "AWS_LAMBDA_LOG_GROUP_NAME",
                format!("/aws/lambda/spkeeper-{function}"),
            ),
            (
                "AWS_LAMBDA_LOG_STREAM_NAME",
                "2026/11/25/[$LATEST]0123456789abcdef".into(),
            ),
            ("AWS_LAMBDA_LOG_FORMAT", "JSON".into()),
            ("AWS_LAMBDA_LOG_LEVEL", "DEBUG".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Queues `event`, waits for the function's answer; returns (request id, outcome).
    pub async fn invoke(&self, event: Value) -> (String, Outcome) {
        let id = format!(
            "req-{:04}-{}",
            self.state.counter.fetch_add(1, Ordering::SeqCst),
            moto::unique("r")
        );
        self.state
            .queue
            .lock()
            .unwrap()
            .push_back((id.clone(), event));
        self.state.queued.notify_waiters();
        let start = Instant::now();
        loop {
            let answered = self.state.answered.notified();
            if let Some(o) = self.state.outcomes.lock().unwrap().remove(&id) {
                return (id, o);
            }
            if let Some(e) = self.state.init_error.lock().unwrap().clone() {
                panic!("the function failed to start: {e}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "no answer to {id}"
            );
            let _ = tokio::time::timeout(Duration::from_millis(200), answered).await;
        }
    }

    pub fn init_error(&self) -> Option<Value> {
        self.state.init_error.lock().unwrap().clone()
    }
}

/// A fixture from `infra/events/`.
pub fn fixture(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../infra/events")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub const CLIENT_ID: &str = "6f1a8d2c-3b4e-4f5a-9b8c-7d6e5f4a3b2c";
pub const REALM: &str = "040f2415-e6e3-4480-96ce-26ef73275f73";
pub const CLIENT_SECRET: &str = "bGFtYmRhLXRlc3QtY2xpZW50LXNlY3JldC0wMTIzNDU2";
pub const API_KEY: &str = "lambda-test-api-key-0123456789";
pub const WEBHOOK_SECRET: &str = "whsec_bGFtYmRhLXdlYmhvb2stc2VjcmV0LTAxMjM0";
pub const ENTRA_CLIENT_ID: &str = "b3f1c0de-0000-4000-8000-00000000c0de";
pub const ENTRA_SECRET: &str = "lambda~entra-secret-0123456789";
pub const ENTRA_OID: &str = "0b1d0000-0000-4000-8000-000000000001";

/// moto's table, queue and secrets for one test, and the environment a function gets.
pub struct AwsFixture {
    pub sdk: aws_config::SdkConfig,
    pub table: String,
    pub queue_url: String,
    /// Every field, as one document (what the test's own context reads).
    pub secret: Value,
    /// One Secrets Manager secret per part, as the README lays them out: their ARNs.
    pub secret_arns: BTreeMap<Part, String>,
    pub env: BTreeMap<String, String>,
}

impl AwsFixture {
    /// `extra` overrides or adds `SPKEEPER_*` variables.
    pub async fn new(extra: &[(&str, &str)]) -> AwsFixture {
        let sdk = moto::sdk_config().await;
        let (table, queue_url) = moto::fresh(&sdk, "fn").await;
        let keys = serde_json::to_value(KeyFile::generate().unwrap()).unwrap();
        let mut secret = json!({
            "client_secret": CLIENT_SECRET,
            "api_key": API_KEY,
            "webhook_secret": WEBHOOK_SECRET,
            "entra_client_secret": ENTRA_SECRET,
        });
        for (k, v) in keys.as_object().unwrap() {
            secret[k] = v.clone();
        }
        let mut secret_arns = BTreeMap::new();
        for part in Part::ALL {
            let fields: serde_json::Map<String, Value> = part
                .fields()
                .iter()
                .filter_map(|f| secret.get(*f).map(|v| (f.to_string(), v.clone())))
                .collect();
            let arn = moto::create_secret(&sdk, &Value::Object(fields)).await;
            secret_arns.insert(part, arn);
        }
        let mut env: BTreeMap<String, String> = [
            ("SPKEEPER_CLIENT_ID", CLIENT_ID.to_string()),
            ("SPKEEPER_PUBLIC_URL", "https://addin.example.com".into()),
            ("SPKEEPER_ALLOWED_SP_HOSTS", "*.sharepoint.com".into()),
            ("SPKEEPER_STORE", "dynamodb".into()),
            ("SPKEEPER_TABLE", table.clone()),
            ("SPKEEPER_QUEUE_URL", queue_url.clone()),
            ("AWS_ENDPOINT_URL", moto::url()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_SESSION_TOKEN", "testing".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        for (k, v) in extra {
            env.insert(k.to_string(), v.to_string());
        }
        AwsFixture {
            sdk,
            table,
            queue_url,
            secret,
            secret_arns,
            env,
        }
    }

    /// `SPKEEPER_SECRETS_ARN` for a function: the secrets of the parts it uses, as the template
    /// gives them (`tests/template.rs` holds the template to the same rule).
    pub fn secrets_arn_for(&self, function: &str) -> String {
        let program = Program::from_name(function).unwrap_or(Program::Cli);
        let settings = Settings::from_source(&self.env).unwrap();
        Needs::of(program, &settings)
            .used()
            .iter()
            .map(|p| self.secret_arns[p].clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn aws(&self) -> Aws {
        Aws::new(&self.sdk, &self.table, &self.queue_url)
    }

    /// A fixture whose functions use `entra` as their Entra ID, with `extra` settings.
    pub async fn with_entra(entra: &EntraStub, extra: &[(&str, &str)]) -> AwsFixture {
        let env = entra.env();
        let mut all: Vec<(&str, &str)> =
            env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        all.extend_from_slice(extra);
        AwsFixture::new(&all).await
    }

    /// Rotates the token keys as the README says: a new key, `rotated`, joins the ring and
    /// becomes the active one, in Secrets Manager (the running functions are not told) and in
    /// what [`AwsFixture::context`] builds from.
    pub async fn rotate_token_keys(&mut self, rotated: &str) {
        let fresh = KeyFile::generate().unwrap();
        let key = fresh.token_keys.values().next().unwrap().clone();
        self.secret["token_keys"][rotated] = Value::String(key);
        self.secret["active_token_key"] = Value::String(rotated.to_string());
        let part: serde_json::Map<String, Value> = Part::TokenKeys
            .fields()
            .iter()
            .filter_map(|f| self.secret.get(*f).map(|v| (f.to_string(), v.clone())))
            .collect();
        self.put_part(Part::TokenKeys, Value::Object(part)).await;
    }

    /// Replaces one part's secret in Secrets Manager with `value` (`put-secret-value`, as an
    /// operator rotating it does); the running functions are not told.
    pub async fn put_part(&self, part: Part, value: Value) {
        spkeeper::aws::SecretsClient::new(&self.sdk)
            .put_secret_value()
            .secret_id(&self.secret_arns[&part])
            .secret_string(value.to_string())
            .send()
            .await
            .unwrap_or_else(|e| panic!("putting {part:?}'s secret in moto: {e}"));
    }

    /// The same context a function builds, for seeding and inspecting.
    pub fn context(&self) -> Arc<spkeeper::context::Context> {
        let settings = Settings::from_source(&self.env).unwrap();
        let doc: SecretDocument = serde_json::from_value(self.secret.clone()).unwrap();
        let secrets = Secrets::from_document(doc, &settings).unwrap();
        self.aws()
            .context(
                settings,
                spkeeper::secrets_cell::SecretsCell::fixed(secrets),
            )
            .unwrap()
    }

    /// `bin` started as `function` against the Runtime API `rt`, with [`Self::env_for`]; its
    /// output goes to the directory returned with it (kept as long as the directory is).
    pub fn spawn(
        &self,
        bin: &std::path::Path,
        rt: &RuntimeApi,
        function: &str,
    ) -> (crate::Proc, tempfile::TempDir) {
        let logs = tempfile::tempdir().unwrap();
        let proc = crate::Proc::spawn(bin, &[], &self.env_for(rt, function), logs.path(), function);
        (proc, logs)
    }

    /// The function's environment: ours (with only its own secrets, unless the test set
    /// `SPKEEPER_SECRETS_ARN` itself) and the Runtime API's.
    pub fn env_for(&self, rt: &RuntimeApi, function: &str) -> BTreeMap<String, String> {
        let mut env = self.env.clone();
        env.entry("SPKEEPER_SECRETS_ARN".into())
            .or_insert_with(|| self.secrets_arn_for(function));
        env.extend(rt.env(function));
        env
    }
}

/// A stand-in for ACS's token endpoint that counts what it is asked.
#[derive(Clone)]
pub struct AcsStub {
    pub addr: SocketAddr,
    calls: Arc<AtomicUsize>,
    secrets: Arc<Mutex<Option<Vec<String>>>>,
}

#[derive(Clone)]
struct AcsState {
    calls: Arc<AtomicUsize>,
    refuse_client: bool,
    /// The registered client secrets; `None`: any.
    secrets: Arc<Mutex<Option<Vec<String>>>>,
}

async fn acs(State(st): State<AcsState>, body: Bytes) -> Response {
    let n = st.calls.fetch_add(1, Ordering::SeqCst) + 1;
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let registered = st.secrets.lock().unwrap().clone();
    let unregistered = registered.is_some_and(|secrets| {
        !form
            .get("client_secret")
            .is_some_and(|s| secrets.contains(s))
    });
    if st.refuse_client || unregistered {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"error": "invalid_client", "error_description": "AADSTS7000222: The provided client secret keys are expired."})),
        )
            .into_response();
    }
    let now = chrono::Utc::now().timestamp();
    axum::Json(json!({
        "token_type": "Bearer",
        "access_token": format!("lambda-access-token-{n}"),
        "expires_in": "3599",
        "not_before": now.to_string(),
        "expires_on": (now + 3599).to_string(),
        "resource": form.get("resource").cloned().unwrap_or_default(),
    }))
    .into_response()
}

impl AcsStub {
    pub async fn start() -> AcsStub {
        Self::serve(false).await
    }

    /// One that refuses the add-in's client credentials (`invalid_client`).
    pub async fn refusing_the_client() -> AcsStub {
        Self::serve(true).await
    }

    async fn serve(refuse_client: bool) -> AcsStub {
        let calls = Arc::new(AtomicUsize::new(0));
        let secrets = Arc::new(Mutex::new(None));
        let app = Router::new()
            .route("/tokens/OAuth/2", post(acs))
            .with_state(AcsState {
                calls: Arc::clone(&calls),
                refuse_client,
                secrets: Arc::clone(&secrets),
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        AcsStub {
            addr,
            calls,
            secrets,
        }
    }

    /// From now on only these client secrets are registered for the add-in (a rotation adds
    /// the new one, then the old one expires); before the first call, any is taken.
    pub fn accept_secrets(&self, secrets: &[&str]) {
        *self.secrets.lock().unwrap() = Some(secrets.iter().map(|s| s.to_string()).collect());
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    pub fn sts_uri(&self) -> String {
        format!("http://{}/tokens/OAuth/2", self.addr)
    }
}

/// A stand-in for Entra ID (token endpoint, JWKS) and for a SharePoint site's realm
/// challenge, for the functions' Entra routes: it issues one expected code, rotates refresh
/// tokens (`entra-rt-0`, `entra-rt-1`, …) and refuses any but the newest.
#[derive(Clone)]
pub struct EntraStub {
    pub addr: SocketAddr,
    state: Arc<Mutex<EntraState>>,
}

struct EntraState {
    key: spkeeper::testkit::rsa::RsaKey,
    /// (code, PKCE challenge, nonce) a sign-in may redeem.
    expected: Option<(String, String, String)>,
    current: u32,
    refreshes: u32,
    authority: String,
    /// The client secrets the app registration holds now.
    secrets: Vec<String>,
}

async fn entra_token(State(st): State<Arc<Mutex<EntraState>>>, body: Bytes) -> Response {
    let f: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let bad = |code: u32, error: &str| {
        (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": error, "error_description": format!("AADSTS{code}: refused"), "error_codes": [code]})),
        )
            .into_response()
    };
    let mut st = st.lock().unwrap();
    if f.get("client_id").map(String::as_str) != Some(ENTRA_CLIENT_ID)
        || !f
            .get("client_secret")
            .is_some_and(|s| st.secrets.contains(s))
    {
        return bad(7000215, "invalid_client");
    }
    let now = chrono::Utc::now().timestamp();
    let mut answer = json!({"token_type": "Bearer", "expires_in": 3599, "scope": f.get("scope").cloned().unwrap_or_default()});
    match f.get("grant_type").map(String::as_str) {
        Some("authorization_code") => {
            let Some((code, challenge, nonce)) = st.expected.take() else {
                return bad(70008, "invalid_grant");
            };
            let verifier = f.get("code_verifier").cloned().unwrap_or_default();
            if f.get("code") != Some(&code)
                || spkeeper::core::entra::pkce_challenge(&verifier) != challenge
            {
                return bad(501481, "invalid_grant");
            }
            answer["id_token"] = json!(st.key.sign(&json!({
                "aud": ENTRA_CLIENT_ID, "tid": REALM, "oid": ENTRA_OID, "nonce": nonce,
                "iss": format!("{}/{REALM}/v2.0", st.authority),
                "preferred_username": "megan@contoso.com", "name": "Megan Bowen",
                "iat": now, "nbf": now, "exp": now + 3600,
            })));
        }
        Some("refresh_token") => {
            if f.get("refresh_token") != Some(&format!("entra-rt-{}", st.current)) {
                return bad(70008, "invalid_grant");
            }
            st.current += 1;
            st.refreshes += 1;
        }
        _ => return bad(70003, "unsupported_grant_type"),
    }
    answer["access_token"] = json!(format!("entra-at-{}", st.current));
    answer["refresh_token"] = json!(format!("entra-rt-{}", st.current));
    axum::Json(answer).into_response()
}

impl EntraStub {
    pub async fn start() -> EntraStub {
        let state = Arc::new(Mutex::new(EntraState {
            key: spkeeper::testkit::rsa::RsaKey::generate("lambda-1").unwrap(),
            expected: None,
            current: 0,
            refreshes: 0,
            authority: String::new(),
            secrets: vec![ENTRA_SECRET.to_string()],
        }));
        let jwks_state = Arc::clone(&state);
        let app = Router::new()
            .route("/{tenant}/oauth2/v2.0/token", post(entra_token))
            .route(
                "/{tenant}/discovery/v2.0/keys",
                get(move || {
                    let st = Arc::clone(&jwks_state);
                    async move {
                        let st = st.lock().unwrap();
                        axum::Json(spkeeper::testkit::rsa::jwks(&[&st.key]))
                    }
                }),
            )
            .route(
                "/sites/a/_vti_bin/client.svc",
                get(|| async {
                    (
                        StatusCode::UNAUTHORIZED,
                        [("www-authenticate", format!("Bearer realm=\"{REALM}\",client_id=\"00000003-0000-0ff1-ce00-000000000000\""))],
                    )
                }),
            )
            .with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        state.lock().unwrap().authority = format!("http://{addr}");
        tokio::spawn(async move { axum::serve(listener, app).await });
        EntraStub { addr, state }
    }

    pub fn authority(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn site_url(&self) -> String {
        format!("http://{}/sites/a", self.addr)
    }

    /// The next sign-in may redeem `code`, for this PKCE challenge and nonce.
    pub fn expect(&self, code: &str, challenge: &str, nonce: &str) {
        self.state.lock().unwrap().expected = Some((code.into(), challenge.into(), nonce.into()));
    }

    /// Starts the refresh-token chain at `entra-rt-{n}` (a seeded grant's).
    pub fn current(&self) -> u32 {
        self.state.lock().unwrap().current
    }

    pub fn refreshes(&self) -> u32 {
        self.state.lock().unwrap().refreshes
    }

    /// The client secrets the app registration holds from now on (a rotation adds the new
    /// one, then removes the old one).
    pub fn accept_secrets(&self, secrets: &[&str]) {
        self.state.lock().unwrap().secrets = secrets.iter().map(|s| s.to_string()).collect();
    }

    /// Stores an Entra grant for this stand-in's site as a sign-in `idle_days` ago would have,
    /// with refresh token `entra-rt-0` sealed by the functions' keys.
    pub async fn seed_grant(
        &self,
        ctx: &spkeeper::context::Context,
        idle_days: i64,
    ) -> spkeeper::core::grant::GrantId {
        use spkeeper::core::seal::Place;
        let redeemed = chrono::Utc::now() - chrono::Duration::days(idle_days);
        let expires = redeemed + chrono::Duration::days(spkeeper::core::entra::INACTIVITY_DAYS);
        let id = spkeeper::core::grant::GrantId::entra(REALM, ENTRA_OID);
        let mut record = grant_record("unused", "https://unused", redeemed, expires);
        record.id = id.clone();
        record.kind = spkeeper::core::grant::Kind::Entra;
        record.site_url = self.site_url();
        record.next_due_at = ctx.next_due_at(&record, record.progress);
        let sealed = ctx
            .secrets
            .get()
            .key_ring
            .seal(
                b"entra-rt-0",
                &Place::RefreshToken {
                    grant: id.as_str(),
                    version: record.rt_version,
                },
            )
            .unwrap();
        ctx.grants
            .put_grant(None, &record, &sealed, None)
            .await
            .unwrap();
        id
    }

    /// The refresh token stored for `id`, opened with the functions' keys.
    pub async fn stored_refresh_token(
        ctx: &spkeeper::context::Context,
        id: &spkeeper::core::grant::GrantId,
    ) -> String {
        use spkeeper::core::seal::Place;
        let g = ctx.grants.load(id).await.unwrap().unwrap();
        let rt = ctx
            .secrets
            .get()
            .key_ring
            .open(
                g.sealed_refresh_token.as_deref().unwrap(),
                &Place::RefreshToken {
                    grant: id.as_str(),
                    version: g.record.rt_version,
                },
            )
            .unwrap();
        secrecy::ExposeSecret::expose_secret(&rt).to_string()
    }

    /// The environment that points a function at this stand-in.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("SPKEEPER_ENTRA_CLIENT_ID".into(), ENTRA_CLIENT_ID.into()),
            ("SPKEEPER_ENTRA_AUTHORITY".into(), self.authority()),
            (
                "SPKEEPER_ALLOWED_SP_HOSTS".into(),
                format!("*.sharepoint.com,{}", self.addr),
            ),
        ]
    }
}
