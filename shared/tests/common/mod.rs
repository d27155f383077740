//! Test harness: the real routers and services on an in-memory SQLite store, with a scripted
//! ACS + SharePoint REST stand-in on a loopback port (it answers what each test tells it to
//! and counts what it was asked).
#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde_json::{Value, json};
use tower::ServiceExt;

use aws_config::SdkConfig;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeSerializationInterceptorContextRef;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use spkeeper::aws::Aws;
use spkeeper::clients::{AcsClient, RetryPolicy, http_client};
use spkeeper::clock::{Clock, OffsetClock};
use spkeeper::config::{KeyFile, Secrets, Settings};
use spkeeper::context::Context;
use spkeeper::http::{
    ApiKeyAuth, finish, grants_router, health_router, launch_router, renew_router, status_router,
    token_router,
};
use spkeeper::ports::{GrantRecord, GrantStore, Outbox};
use spkeeper::ports::{NoticeRelay, OutboxIsTheQueue, TokenCache};
use spkeeper::service::exchange::TokenService;
use spkeeper::service::grants::GrantsService;
use spkeeper::service::launch::LaunchService;
use spkeeper::service::sweep::SweepService;
use spkeeper::store::sqlite::SqliteStore;
use spkeeper::testkit::moto;
use spkeeper::testkit::{ContextTokenSpec, mint_context_token};

pub const CLIENT_ID: &str = "a044e184-7de2-4d05-aacf-52118008c44e";
pub const REALM: &str = "040f2415-e6e3-4480-96ce-26ef73275f73";
pub const SECRET: &str = "KQAIUpDUD0sm5Tr83U+jZGYVuPPCPu8BGwoWiAACqNw=";
pub const SECONDARY: &str = "old~secret.from-entra_0123456789";
pub const API_KEY: &str = "test-api-key-0123456789";
pub const PUBLIC: &str = "https://addin.example.com";

/// What the stand-in answers next; when the script is empty it issues a token.
#[derive(Clone)]
pub enum Reply {
    Status(u16, &'static str),
    Slow(Duration),
    /// A 200 whose body is this many bytes.
    Huge(usize),
}

pub struct StubState {
    script: Mutex<VecDeque<Reply>>,
    /// The realm the site's realm challenge names (`None`: the challenge answers 404).
    pub realm: Mutex<Option<String>>,
    pub realm_calls: AtomicUsize,
    pub token_calls: AtomicUsize,
    pub user_calls: AtomicUsize,
    pub forms: Mutex<Vec<BTreeMap<String, String>>>,
    clock: Arc<OffsetClock>,
}

async fn stub_token(
    State(st): State<Arc<StubState>>,
    Form(form): Form<BTreeMap<String, String>>,
) -> Response {
    let n = st.token_calls.fetch_add(1, Ordering::SeqCst) + 1;
    st.forms.lock().unwrap().push(form.clone());
    let next = st.script.lock().unwrap().pop_front();
    match next {
        Some(Reply::Status(code, body)) => {
            return (StatusCode::from_u16(code).unwrap(), body.to_string()).into_response();
        }
        Some(Reply::Slow(d)) => tokio::time::sleep(d).await,
        Some(Reply::Huge(n)) => {
            let body = format!(
                "{{\"access_token\":\"{}\",\"expires_in\":\"3599\"}}",
                "x".repeat(n)
            );
            return (StatusCode::OK, body).into_response();
        }
        None => {}
    }
    // Real ACS is slow enough that concurrent callers overlap; so is this.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let now = st.clock.now().timestamp();
    let resource = form.get("resource").cloned().unwrap_or_default();
    axum::Json(json!({
        "token_type": "Bearer",
        "access_token": format!("at-{n}-secret-access-token"),
        "expires_in": "3599",
        "not_before": now.to_string(),
        "expires_on": (now + 3599).to_string(),
        "resource": resource,
    }))
    .into_response()
}

async fn stub_user(State(st): State<Arc<StubState>>, headers: HeaderMap) -> Response {
    st.user_calls.fetch_add(1, Ordering::SeqCst);
    let ok = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("Bearer at-"));
    if !ok {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    axum::Json(json!({"Title": "Megan Bowen", "Email": "megan@contoso.com", "LoginName": "i:0#.f|membership|megan@contoso.com"}))
        .into_response()
}

async fn stub_realm(State(st): State<Arc<StubState>>, headers: HeaderMap) -> Response {
    st.realm_calls.fetch_add(1, Ordering::SeqCst);
    // Microsoft's helper sends an empty bearer token ("Bearer "; the trailing space is not
    // part of a header value on the wire).
    assert_eq!(
        headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::trim),
        Some("Bearer"),
        "realm discovery sends an empty bearer"
    );
    match st.realm.lock().unwrap().clone() {
        Some(realm) => (
            StatusCode::UNAUTHORIZED,
            [(
                "www-authenticate",
                format!(
                    "Bearer realm=\"{realm}\",client_id=\"00000003-0000-0ff1-ce00-000000000000\""
                ),
            )],
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

pub struct Stub {
    pub addr: SocketAddr,
    pub state: Arc<StubState>,
}

impl Stub {
    pub async fn start(clock: Arc<OffsetClock>) -> Stub {
        let state = Arc::new(StubState {
            script: Mutex::new(VecDeque::new()),
            realm: Mutex::new(Some(REALM.to_string())),
            realm_calls: AtomicUsize::new(0),
            token_calls: AtomicUsize::new(0),
            user_calls: AtomicUsize::new(0),
            forms: Mutex::new(Vec::new()),
            clock,
        });
        let app = Router::new()
            .route("/tokens/OAuth/2", post(stub_token))
            .route("/sites/a/_api/web/currentuser", get(stub_user))
            .route("/sites/a/_vti_bin/client.svc", get(stub_realm))
            .with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Stub { addr, state }
    }

    pub fn script(&self, replies: &[Reply]) {
        self.state
            .script
            .lock()
            .unwrap()
            .extend(replies.iter().cloned());
    }

    /// The realm the site answers for from now on (`None`: it cannot say).
    pub fn set_realm(&self, realm: Option<&str>) {
        *self.state.realm.lock().unwrap() = realm.map(String::from);
    }

    pub fn token_calls(&self) -> usize {
        self.state.token_calls.load(Ordering::SeqCst)
    }

    pub fn last_form(&self) -> BTreeMap<String, String> {
        self.state
            .forms
            .lock()
            .unwrap()
            .last()
            .cloned()
            .unwrap_or_default()
    }

    pub fn sts_uri(&self) -> String {
        format!("http://{}/tokens/OAuth/2", self.addr)
    }

    pub fn site_url(&self) -> String {
        format!("http://{}/sites/a", self.addr)
    }
}

pub struct Harness {
    pub ctx: Arc<Context>,
    pub app: Router,
    pub stub: Stub,
    pub clock: Arc<OffsetClock>,
    pub backend: Backend,
    pub tokens: Arc<TokenService>,
    pub sweep: SweepService,
    /// Notices taken off the SQS queue so far (moto backend).
    drained: Mutex<Vec<Value>>,
}

/// Where the harness keeps its data.
pub enum Backend {
    Sqlite(Arc<SqliteStore>),
    Moto {
        aws: Box<Aws>,
        sdk: Box<SdkConfig>,
        /// What the relays' leases are timed by: the wall clock, moved on by hand.
        leases: Arc<OffsetClock>,
    },
}

type Ports = (
    Backend,
    Arc<dyn GrantStore>,
    Arc<dyn TokenCache>,
    Arc<dyn NoticeRelay>,
);

#[derive(Default)]
pub struct Options {
    pub secondary: bool,
    pub extra_env: Vec<(&'static str, String)>,
    /// More SharePoint hosts to allow beside the stub's.
    pub also_allowed: Vec<String>,
    /// DynamoDB and SQS on moto instead of SQLite.
    pub moto: bool,
    /// With `moto`: record the name of every DynamoDB operation sent.
    pub record_operations: Option<Arc<Mutex<Vec<String>>>>,
    /// With `moto`: record the name of every SQS operation sent.
    pub record_queue_operations: Option<Arc<Mutex<Vec<String>>>>,
}

/// Records each DynamoDB operation the SDK sends.
#[derive(Debug)]
struct RecordOperations(Arc<Mutex<Vec<String>>>);

impl Intercept for RecordOperations {
    fn name(&self) -> &'static str {
        "RecordOperations"
    }

    fn read_before_serialization(
        &self,
        _context: &BeforeSerializationInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(m) = cfg.load::<Metadata>() {
            self.0.lock().unwrap().push(m.name().to_string());
        }
        Ok(())
    }
}

pub async fn moto_backend(
    record: Option<Arc<Mutex<Vec<String>>>>,
) -> (Aws, SdkConfig, Arc<OffsetClock>) {
    moto_backend_recording(record, None).await
}

/// [`moto_backend`], recording the DynamoDB and the SQS operations sent (each where asked).
/// Its relay's leases are timed by the clock returned with it (the wall clock until moved).
pub async fn moto_backend_recording(
    record: Option<Arc<Mutex<Vec<String>>>>,
    record_queue: Option<Arc<Mutex<Vec<String>>>>,
) -> (Aws, SdkConfig, Arc<OffsetClock>) {
    let sdk = moto::sdk_config().await;
    let (table, queue) = moto::fresh(&sdk, "h").await;
    let mut dynamo = aws_sdk_dynamodb::config::Builder::from(&sdk);
    if let Some(r) = record {
        dynamo = dynamo.interceptor(RecordOperations(r));
    }
    let mut sqs = aws_sdk_sqs::config::Builder::from(&sdk);
    if let Some(r) = record_queue {
        sqs = sqs.interceptor(RecordOperations(r));
    }
    let aws = Aws::from_clients(
        aws_sdk_dynamodb::Client::from_conf(dynamo.build()),
        aws_sdk_sqs::Client::from_conf(sqs.build()),
        &table,
        &queue,
    );
    let leases = Arc::new(OffsetClock::new());
    let aws = aws.with_lease_clock(Arc::clone(&leases) as Arc<dyn Clock>);
    (aws, sdk, leases)
}

impl Harness {
    pub async fn new() -> Harness {
        Self::with(Options::default()).await
    }

    pub async fn with(opts: Options) -> Harness {
        let clock = Arc::new(OffsetClock::new());
        let stub = Stub::start(Arc::clone(&clock)).await;
        let mut env: BTreeMap<String, String> = [
            ("SPKEEPER_CLIENT_ID", CLIENT_ID.to_string()),
            ("SPKEEPER_PUBLIC_URL", PUBLIC.to_string()),
            (
                "SPKEEPER_ALLOWED_SP_HOSTS",
                std::iter::once(format!("*.sharepoint.com,{}", stub.addr))
                    .chain(opts.also_allowed.iter().cloned())
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            ("SPKEEPER_STS_HOSTS", stub.addr.to_string()),
            ("SPKEEPER_CLIENT_SECRET", SECRET.to_string()),
            ("SPKEEPER_API_KEY", API_KEY.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        if opts.secondary {
            env.insert("SPKEEPER_CLIENT_SECRET_SECONDARY".into(), SECONDARY.into());
        }
        for (k, v) in opts.extra_env {
            env.insert(k.to_string(), v);
        }
        let settings = Settings::from_source(&env).unwrap();
        let doc = KeyFile::generate()
            .unwrap()
            .into_document()
            .with_env_fallback(&env);
        let secrets = Secrets::from_document(doc, &settings).unwrap();
        let (backend, grants, cache, relay): Ports = if opts.moto {
            let (aws, sdk, leases) =
                moto_backend_recording(opts.record_operations, opts.record_queue_operations).await;
            let parts = (
                Arc::new(aws.dynamo.clone()),
                Arc::new(aws.dynamo.clone()),
                Arc::new(aws.relay.clone()),
            );
            (
                Backend::Moto {
                    aws: Box::new(aws),
                    sdk: Box::new(sdk),
                    leases,
                },
                parts.0,
                parts.1,
                parts.2,
            )
        } else {
            let store = Arc::new(SqliteStore::open_in_memory().unwrap());
            (
                Backend::Sqlite(store.clone()),
                store.clone(),
                store,
                Arc::new(OutboxIsTheQueue),
            )
        };
        let ctx = Arc::new(Context {
            settings,
            secrets: spkeeper::secrets_cell::SecretsCell::fixed(secrets),
            clock: clock.clone() as Arc<dyn Clock>,
            grants,
            cache,
            relay,
            http: http_client().unwrap(),
        });
        let retry = RetryPolicy {
            retries: 2,
            min_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(20),
        };
        let tokens = Arc::new(TokenService::new(
            Arc::clone(&ctx),
            AcsClient::new(ctx.http.clone(), retry),
        ));
        let launch = Arc::new(LaunchService::new(Arc::clone(&ctx), Arc::clone(&tokens)));
        let signin = Arc::new(spkeeper::service::signin::SignInService::new(
            Arc::clone(&ctx),
            tokens.entra(),
        ));
        let app = finish(
            Router::new()
                .merge(launch_router(launch))
                .merge(status_router(Arc::clone(&ctx)))
                .merge(renew_router(Arc::clone(&signin)))
                .merge(spkeeper::http::signin_router(signin))
                .merge(token_router(
                    Arc::clone(&tokens),
                    Arc::new(ApiKeyAuth(ctx.secrets.clone())),
                ))
                .merge(grants_router(
                    Arc::new(GrantsService::new(Arc::clone(&ctx))),
                    Arc::new(ApiKeyAuth(ctx.secrets.clone())),
                ))
                .merge(health_router()),
            &ctx.settings,
        );
        let sweep = SweepService::new(Arc::clone(&ctx));
        Harness {
            ctx,
            app,
            stub,
            clock,
            backend,
            tokens,
            sweep,
            drained: Mutex::new(Vec::new()),
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    pub fn spec(&self, user: &str) -> ContextTokenSpec {
        ContextTokenSpec {
            client_id: CLIENT_ID.into(),
            audience_host: "addin.example.com".into(),
            realm: REALM.into(),
            cache_key: format!("{user}+cache/key="),
            sts_uri: self.stub.sts_uri(),
            refresh_token: format!("refresh-token-of-{user}-{}", self.now().timestamp()),
            nbf: self.now(),
            lifetime_hours: 12,
            numeric_dates: false,
        }
    }

    pub fn token(&self, user: &str) -> String {
        mint_context_token(
            &self.spec(user).claims(),
            &SecretString::from(SECRET.to_string()),
        )
    }

    pub fn grant_id(&self, user: &str) -> spkeeper::core::grant::GrantId {
        spkeeper::core::grant::GrantId::derive(REALM, &format!("{user}+cache/key="))
    }

    pub fn launch_query(&self) -> String {
        format!(
            "SPHostUrl={}&SPLanguage=en-US&SPClientTag=0&SPProductNumber=16.0.0.0",
            urlencode(&self.stub.site_url())
        )
    }

    pub async fn send(&self, req: Request<Body>) -> Response {
        self.app.clone().oneshot(req).await.unwrap()
    }

    pub async fn post_form(&self, query: &str, body: &str) -> Response {
        let req = Request::post(format!("/launch?{query}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Body::from(body.to_string()))
            .unwrap();
        self.send(req).await
    }

    pub async fn launch(&self, token: &str) -> Response {
        self.post_form(
            &self.launch_query(),
            &format!("SPAppToken={}", urlencode(token)),
        )
        .await
    }

    pub async fn token_request(&self, body: Value) -> Response {
        self.send(token_req(&body)).await
    }

    pub async fn get(&self, uri: &str, headers: &[(&str, &str)]) -> Response {
        let mut req = Request::get(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.send(req.body(Body::empty()).unwrap()).await
    }

    pub async fn store_load(
        &self,
        id: &spkeeper::core::grant::GrantId,
    ) -> spkeeper::ports::StoredGrant {
        self.ctx
            .grants
            .load(id)
            .await
            .unwrap()
            .expect("grant stored")
    }

    pub async fn grants(&self) -> Vec<GrantRecord> {
        self.ctx.grants.list().await.unwrap()
    }

    /// Bodies of every notice queued so far (on SQLite: not yet delivered; on moto: relayed
    /// to SQS and taken off the queue, cumulatively).
    pub async fn queued(&self) -> Vec<Value> {
        match &self.backend {
            Backend::Sqlite(store) => store
                .undelivered()
                .await
                .unwrap()
                .iter()
                .map(|e| serde_json::from_str(&e.body).unwrap())
                .collect(),
            Backend::Moto { aws, sdk, leases } => {
                use spkeeper::ports::NoticeRelay;
                // Whoever held them, every lease has lapsed by then.
                leases.advance(spkeeper::aws::relay::CLAIM * 2);
                aws.relay.relay_pending(None).await.unwrap();
                let bodies = moto::drain(sdk, aws.queue.url()).await;
                let mut drained = self.drained.lock().unwrap();
                drained.extend(
                    bodies
                        .iter()
                        .map(|b| serde_json::from_str::<Value>(b).unwrap()),
                );
                drained.clone()
            }
        }
    }
}

pub fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

pub async fn body_json(resp: Response) -> Value {
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
}

pub async fn body_text(resp: Response) -> String {
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Asserts the status and the contract error code.
pub async fn assert_error(resp: Response, status: u16, code: &str) -> Value {
    assert_eq!(resp.status().as_u16(), status, "status for {code}");
    let body = body_json(resp).await;
    assert_eq!(body["error"], code, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    body
}

pub fn token_req(body: &Value) -> Request<Body> {
    Request::post("/token")
        .header("authorization", format!("Bearer {API_KEY}"))
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

/// Polls the futures together on this task, so they interleave at every await.
pub async fn futures_join<F: std::future::Future>(
    futs: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    // Poll them together on this task: the sweeps interleave at every await.
    let mut futs: Vec<_> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in futs.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(Option::unwrap).collect()
}
