//! The template's roles against what the code really sends. Each function's part of the life
//! runs in this process, composed as its `main.rs` composes it and configured with the
//! environment and secrets the template gives it, against moto through a recording proxy:
//! for ACS grants launch, relaunch, status page, renew link; `/token`, a refused client, a
//! revocation; the sweep's notices and operator notice; delivery from SQS; the app backend's
//! hand-off, lookups and erasure — and for Entra grants sign-in (and signing in again), the
//! status page and renew link, `/token` with rotation, the sweep's keep-alive (refused once,
//! then done) or, without it, its notices, Entra refusing the app's expired secret and
//! revoking the grant. Every AWS call is then checked against the function's role in the
//! template as CloudFormation deploys it for that kind of deployment (ACS and Entra with the
//! keep-alive; ACS only; Entra only without the keep-alive): action, resource, and for table
//! items the partition key against `dynamodb:LeadingKeys`, so a narrowed statement that would
//! break a function in AWS fails here; and every table grant must be used by some call (or be
//! a planned one), so a statement wider than the code needs fails too. The functions' JSON log
//! lines, as Lambda writes them, are checked against the template's metric filters: each
//! alarm counts the lines it is meant to, and no other.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chrono::{DateTime, Duration, Utc};
use secrecy::SecretString;
use serde_json::{Value, json};

use spkeeper::aws::Aws;
use spkeeper::aws::sqs::SqsQueue;
use spkeeper::clients::http_client;
use spkeeper::clock::OffsetClock;
use spkeeper::config::{Needs, Part, Program, Secrets, Settings};
use spkeeper::context::Context;
use spkeeper::core::grant::GrantId;
use spkeeper::core::links::SESSION_COOKIE;
use spkeeper::http::{
    ApiKeyAuth, finish, health_router, launch_router, renew_router, status_router, token_router,
};
use spkeeper::service::exchange::TokenService;
use spkeeper::service::launch::LaunchService;
use spkeeper::service::signin::SIGNIN_COOKIE;
use spkeeper::service::sweep::SweepService;
use spkeeper::testkit::rsa::{RsaKey, jwks};
use spkeeper::testkit::{ContextTokenSpec, mint_context_token, moto};
use spkeeper_e2e::iam::{self, Call};
use spkeeper_e2e::lambda::{AwsFixture, CLIENT_ID, CLIENT_SECRET, REALM, WEBHOOK_SECRET};
use spkeeper_e2e::{Receiver, client};

/// Table grants the template holds for code that is coming, not yet here: (role, action,
/// key pattern).
const PLANNED: &[(&str, &str, &str)] = &[];

/// The DynamoDB and SQS requests of a sweep whose one due grant is an idle Entra grant it
/// keeps alive (BENCHMARKS.md's cost table quotes them): the sweep's 9 Queries; the grant read
/// (with its refresh token) before the redemption and twice under the lease, the lease taken
/// (a PutItem) and let go (the DeleteItem), the rotated refresh token written with the grant,
/// the access token cached (a PutItem); and, not the keep-alive's, the attempt to queue the
/// Entra secret's expiry notice, which the sweep an hour before queued (a conditional PutItem).
const KEEP_ALIVE_REQUESTS: &[(&str, usize)] = &[
    ("DeleteItem", 1),
    ("PutItem", 3),
    ("Query", 9),
    ("TransactGetItems", 3),
    ("TransactWriteItems", 1),
];

const API_KEY: &str = "iam-operations-api-key-0123456789";
const ENTRA_CLIENT_ID: &str = "0b6a7f2e-9c41-4f1e-a1d2-5c3b2a1f0e9d";
const ENTRA_SECRET: &str = "iam-operations-entra-secret~0123456789";
const GRAPH: &str = "https://graph.microsoft.com/.default";

// --- A recording proxy in front of moto ------------------------------------------------------

#[derive(Default)]
struct Recorded {
    /// Which function the calls now being made are for.
    function: Mutex<String>,
    calls: Mutex<Vec<(String, Call)>>,
    /// Each request's operation (`DynamoDB_20120810.Query` → `Query`), in order.
    operations: Mutex<Vec<String>>,
    /// Requests it could not read (they would be unchecked).
    unreadable: Mutex<Vec<String>>,
}

#[derive(Clone)]
struct ProxyState {
    moto: String,
    http: reqwest::Client,
    rec: Arc<Recorded>,
    /// Real names → the template's: table, queue, secret ARNs.
    names: Arc<HashMap<String, String>>,
}

fn key_of(v: &Value) -> Option<String> {
    v["pk"]["S"].as_str().map(String::from)
}

/// The calls IAM authorizes for one request (a transaction is one per item).
fn calls_of(target: &str, body: &Value, names: &HashMap<String, String>) -> Option<Vec<Call>> {
    let named = |real: &Value| {
        real.as_str().map(|r| {
            names
                .get(r)
                .cloned()
                .unwrap_or_else(|| format!("unknown:{r}"))
        })
    };
    let (service, op) = target.split_once('.')?;
    let call = |action: String, resource: String, keys: Vec<String>| Call {
        action,
        resource,
        keys,
    };
    match service {
        s if s.starts_with("DynamoDB_") => {
            let table = named(&body["TableName"]);
            match op {
                "GetItem" | "UpdateItem" | "DeleteItem" => Some(vec![call(
                    format!("dynamodb:{op}"),
                    table?,
                    key_of(&body["Key"]).into_iter().collect(),
                )]),
                "PutItem" => Some(vec![call(
                    "dynamodb:PutItem".into(),
                    table?,
                    key_of(&body["Item"]).into_iter().collect(),
                )]),
                "Query" | "Scan" => {
                    let (resource, keys) = match body["IndexName"].as_str() {
                        Some(index) => (format!("{}/index/{index}", table?), vec![]),
                        // A Query of the table names its partition key among its values
                        // (what `dynamodb:LeadingKeys` is checked against).
                        None => (
                            table?,
                            body["ExpressionAttributeValues"]
                                .as_object()
                                .into_iter()
                                .flatten()
                                .filter_map(|(_, v)| v["S"].as_str().map(String::from))
                                .collect(),
                        ),
                    };
                    Some(vec![call(format!("dynamodb:{op}"), resource, keys)])
                }
                // Authorized as one GetItem per item.
                "TransactGetItems" => body["TransactItems"]
                    .as_array()?
                    .iter()
                    .map(|item| {
                        let get = &item["Get"];
                        Some(call(
                            "dynamodb:GetItem".into(),
                            named(&get["TableName"])?,
                            key_of(&get["Key"]).into_iter().collect(),
                        ))
                    })
                    .collect(),
                "TransactWriteItems" => body["TransactItems"]
                    .as_array()?
                    .iter()
                    .map(|item| {
                        let (kind, inner) = item.as_object()?.iter().next()?;
                        let (action, key) = match kind.as_str() {
                            "Put" => ("dynamodb:PutItem", key_of(&inner["Item"])),
                            "Update" => ("dynamodb:UpdateItem", key_of(&inner["Key"])),
                            "Delete" => ("dynamodb:DeleteItem", key_of(&inner["Key"])),
                            "ConditionCheck" => {
                                ("dynamodb:ConditionCheckItem", key_of(&inner["Key"]))
                            }
                            _ => return None,
                        };
                        Some(call(
                            action.into(),
                            named(&inner["TableName"])?,
                            key.into_iter().collect(),
                        ))
                    })
                    .collect(),
                other => Some(vec![call(format!("dynamodb:{other}"), table?, vec![])]),
            }
        }
        "AmazonSQS" => {
            // SendMessageBatch is authorized as sqs:SendMessage.
            let action = match op {
                "SendMessageBatch" => "SendMessage",
                "DeleteMessageBatch" => "DeleteMessage",
                "ChangeMessageVisibilityBatch" => "ChangeMessageVisibility",
                other => other,
            };
            Some(vec![call(
                format!("sqs:{action}"),
                named(&body["QueueUrl"])?,
                vec![],
            )])
        }
        "secretsmanager" => Some(vec![call(
            format!("secretsmanager:{op}"),
            named(&body["SecretId"])?,
            vec![],
        )]),
        _ => None,
    }
}

async fn proxy(
    State(st): State<ProxyState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let function = st.rec.function.lock().unwrap().clone();
    if let Some((_, op)) = target.rsplit_once('.') {
        st.rec.operations.lock().unwrap().push(op.to_string());
    }
    match calls_of(&target, &parsed, &st.names) {
        Some(calls) => st
            .rec
            .calls
            .lock()
            .unwrap()
            .extend(calls.into_iter().map(|c| (function.clone(), c))),
        None => st
            .rec
            .unreadable
            .lock()
            .unwrap()
            .push(format!("{function}: {method} {uri} target={target:?}")),
    }
    let mut req = st.http.request(method, format!("{}{uri}", st.moto));
    for (k, v) in &headers {
        if k != "host" && k != "content-length" {
            req = req.header(k, v);
        }
    }
    match req.body(body).send().await {
        Ok(r) => {
            let status = r.status();
            let mut out = HeaderMap::new();
            for (k, v) in r.headers() {
                if k != "content-length" && k != "transfer-encoding" {
                    out.insert(k.clone(), v.clone());
                }
            }
            let bytes = r.bytes().await.unwrap_or_default();
            (status, out, bytes).into_response()
        }
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}

async fn start_proxy(st: ProxyState) -> SocketAddr {
    let app = Router::new().fallback(proxy).with_state(st);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

// --- ACS, SharePoint and Entra ID stand-ins --------------------------------------------------

/// How the stand-in checks the Entra app's credential.
enum EntraCredentialCheck {
    Secret(String),
    /// A client assertion: PS256 with `x5t#S256`, for this client at this token endpoint.
    Assertion,
}

/// Entra ID's token endpoint and keys, as much of them as the functions use: code redemption
/// (with the nonce the sign-in sent), refresh with rotation, RS256 ID tokens and their JWKS,
/// and an error on demand.
struct EntraStub {
    key: RsaKey,
    /// `http://{stub}`: the authority the deployment is configured with.
    authority: String,
    credential: EntraCredentialCheck,
    /// code → the nonce of its sign-in.
    codes: HashMap<String, String>,
    /// The refresh tokens still valid (each redemption replaces the one it used).
    refresh_tokens: HashSet<String>,
    /// The next token request fails with this AADSTS code.
    fault: Option<u32>,
    oid: String,
    issued: u64,
}

#[derive(Default)]
struct StubState {
    /// ACS refuses the refresh token.
    invalid_grant: AtomicBool,
    /// ACS refuses the add-in's client credentials.
    refuse_client: AtomicBool,
    entra: Mutex<Option<EntraStub>>,
}

impl StubState {
    fn entra<T>(&self, f: impl FnOnce(&mut EntraStub) -> T) -> T {
        f(self
            .entra
            .lock()
            .unwrap()
            .as_mut()
            .expect("the Entra stand-in"))
    }
}

async fn acs(State(st): State<Arc<StubState>>, body: Bytes) -> Response {
    if st.refuse_client.load(Ordering::SeqCst) {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"error": "invalid_client", "error_description": "AADSTS7000222: The provided client secret keys are expired."})),
        )
            .into_response();
    }
    if st.invalid_grant.load(Ordering::SeqCst) {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "invalid_grant", "error_description": "AADSTS70000"})),
        )
            .into_response();
    }
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let now = Utc::now().timestamp();
    axum::Json(json!({
        "token_type": "Bearer",
        "access_token": "iam-operations-access-token",
        "expires_in": "3599",
        "not_before": now.to_string(),
        "expires_on": (now + 3599).to_string(),
        "resource": form.get("resource").cloned().unwrap_or_default(),
    }))
    .into_response()
}

/// An Entra error answer (ENTRA.md §5).
fn aad_error(code: u32) -> Response {
    let (status, error) = match code {
        7000222 | 7000215 => (StatusCode::UNAUTHORIZED, "invalid_client"),
        _ => (StatusCode::BAD_REQUEST, "invalid_grant"),
    };
    (
        status,
        axum::Json(json!({"error": error, "error_description": format!("AADSTS{code}: refused by the stand-in"), "error_codes": [code]})),
    )
        .into_response()
}

/// The claims of a JWT, unchecked (the stand-in reads what spkeeper signed).
fn jwt_part(jwt: &str, i: usize) -> Value {
    jwt.split('.')
        .nth(i)
        .and_then(|p| URL_SAFE_NO_PAD.decode(p).ok())
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null)
}

async fn entra_token(
    State(st): State<Arc<StubState>>,
    Path(tenant): Path<String>,
    body: Bytes,
) -> Response {
    let f: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    st.entra(|e| {
        let endpoint = format!("{}/{tenant}/oauth2/v2.0/token", e.authority);
        let client_ok = f.get("client_id").map(String::as_str) == Some(ENTRA_CLIENT_ID)
            && match &e.credential {
                EntraCredentialCheck::Secret(s) => f.get("client_secret") == Some(s),
                EntraCredentialCheck::Assertion => f.get("client_assertion").is_some_and(|a| {
                    let (h, c) = (jwt_part(a, 0), jwt_part(a, 1));
                    h["alg"] == "PS256"
                        && h["x5t#S256"].is_string()
                        && c["aud"] == endpoint.as_str()
                        && c["iss"] == ENTRA_CLIENT_ID
                }),
            };
        if !client_ok {
            return aad_error(7000215);
        }
        if let Some(code) = e.fault.take() {
            return aad_error(code);
        }
        let nonce = match f.get("grant_type").map(String::as_str) {
            Some("authorization_code") => match f.get("code").and_then(|c| e.codes.remove(c)) {
                Some(nonce) => Some(nonce),
                None => return aad_error(70008),
            },
            Some("refresh_token") => {
                if !f
                    .get("refresh_token")
                    .is_some_and(|r| e.refresh_tokens.remove(r))
                {
                    return aad_error(70008);
                }
                None
            }
            _ => return aad_error(70003),
        };
        e.issued += 1;
        let rt = format!("iam-operations-entra-rt-{}-{}", e.oid, e.issued);
        e.refresh_tokens.insert(rt.clone());
        let mut answer = json!({
            "token_type": "Bearer",
            "scope": f.get("scope").cloned().unwrap_or_default(),
            "expires_in": 3599,
            "access_token": format!("iam-operations-entra-at-{}", e.issued),
            "refresh_token": rt,
        });
        if let Some(nonce) = nonce {
            let now = Utc::now().timestamp();
            answer["id_token"] = json!(e.key.sign(&json!({
                "aud": ENTRA_CLIENT_ID, "iss": format!("{}/{REALM}/v2.0", e.authority),
                "tid": REALM, "oid": e.oid, "nonce": nonce, "ver": "2.0",
                "preferred_username": "megan@contoso.com", "name": "Megan Bowen",
                "iat": now, "nbf": now, "exp": now + 3600,
            })));
        }
        axum::Json(answer).into_response()
    })
}

async fn entra_keys(State(st): State<Arc<StubState>>) -> Response {
    st.entra(|e| axum::Json(jwks(&[&e.key])).into_response())
}

async fn current_user() -> Response {
    axum::Json(json!({"Title": "Megan Bowen", "Email": "megan@contoso.com", "LoginName": "i:0#.f|membership|megan@contoso.com"}))
        .into_response()
}

/// How SharePoint answers an anonymous client.svc request: its realm (realm discovery).
async fn realm() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(
            "www-authenticate",
            format!("Bearer realm=\"{REALM}\",client_id=\"00000003-0000-0ff1-ce00-000000000000\""),
        )],
    )
        .into_response()
}

/// SharePoint, ACS and Entra ID on one loopback port.
async fn start_stub(st: Arc<StubState>, entra: Option<EntraCredentialCheck>) -> SocketAddr {
    let app = Router::new()
        .route("/tokens/OAuth/2", post(acs))
        .route("/{tenant}/oauth2/v2.0/token", post(entra_token))
        .route("/{tenant}/discovery/v2.0/keys", get(entra_keys))
        .route("/sites/a/_api/web/currentuser", get(current_user))
        .route("/_vti_bin/client.svc", get(realm))
        .route("/sites/a/_vti_bin/client.svc", get(realm))
        .with_state(Arc::clone(&st));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    if let Some(credential) = entra {
        *st.entra.lock().unwrap() = Some(EntraStub {
            key: RsaKey::generate("iam-operations").unwrap(),
            authority: format!("http://{addr}"),
            credential,
            codes: HashMap::new(),
            refresh_tokens: HashSet::new(),
            fault: None,
            oid: random_guid(),
            issued: 0,
        });
    }
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

fn random_guid() -> String {
    let h = moto::unique("").replace(|c: char| !c.is_ascii_hexdigit(), "");
    let h = format!("{h:0>32}");
    let h = &h[h.len() - 32..];
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
    .to_ascii_lowercase()
}

/// A PEM certificate (its thumbprints are hashes of its DER, all Entra checks) and a real RSA
/// private key, as the README has them put in the Entra credential's secret.
fn certificate() -> (String, String) {
    let key = RsaKey::generate("app").unwrap();
    let der: Vec<u8> = (0..300u32).map(|i| (i * 7 % 251) as u8).collect();
    let cert = format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        STANDARD.encode(der)
    );
    (cert, key.private_pem)
}

// --- The functions' log lines, as Lambda writes them ----------------------------------------

static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// Appends every log line to [`LOGS`].
#[derive(Clone, Copy)]
struct Capture;

impl std::io::Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        LOGS.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Capture {
        Capture
    }
}

/// JSON lines as `spkeeper::logging::init_lambda` writes them with `LogFormat: JSON`.
fn capture_logs() {
    let _ = tracing_subscriber::fmt()
        .json()
        .with_target(false)
        .without_time()
        .with_ansi(false)
        .with_max_level(tracing_subscriber::filter::LevelFilter::INFO)
        .with_writer(Capture)
        .try_init();
}

fn log_lines() -> Vec<Value> {
    String::from_utf8_lossy(&LOGS.lock().unwrap())
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

// --- The functions, composed as their mains compose them ----------------------------------

/// Which kinds of grant the deployment serves.
#[derive(Debug, Clone, Copy)]
struct Kinds {
    acs: bool,
    entra: bool,
    keepalive_days: u32,
}

struct World {
    fx: AwsFixture,
    template: serde_norway::Value,
    rec: Arc<Recorded>,
    sdk: aws_config::SdkConfig,
    /// The template's parameters as the deployment sets them.
    params: Vec<(&'static str, String)>,
    stub: SocketAddr,
    stub_state: Arc<StubState>,
    receiver: Receiver,
}

impl World {
    /// A fresh table, queue and secrets on moto behind the recorder, the stand-ins, and the
    /// template's parameters for a deployment of `kinds` with those resources.
    async fn new(kinds: Kinds) -> World {
        capture_logs();
        let stub_state = Arc::new(StubState::default());
        // Both kinds: the Entra credential is a certificate; Entra only: a client secret.
        let (entra_doc, check) = match (kinds.entra, kinds.acs) {
            (false, _) => (None, None),
            (true, true) => {
                let (cert, key) = certificate();
                (
                    Some(json!({"entra_certificate": cert, "entra_private_key": key})),
                    Some(EntraCredentialCheck::Assertion),
                )
            }
            (true, false) => (
                Some(json!({"entra_client_secret": ENTRA_SECRET})),
                Some(EntraCredentialCheck::Secret(ENTRA_SECRET.into())),
            ),
        };
        let stub = start_stub(Arc::clone(&stub_state), check).await;
        let receiver = Receiver::start(WEBHOOK_SECRET).await;
        let mut fx = AwsFixture::new(&[]).await;
        if let Some(doc) = entra_doc {
            let arn = moto::create_secret(&fx.sdk, &doc).await;
            fx.secret_arns.insert(Part::EntraCredential, arn);
        }

        let rec = Arc::new(Recorded::default());
        let template = iam::template();
        let mut names = HashMap::from([
            (fx.table.clone(), "Table".to_string()),
            (fx.queue_url.clone(), "NoticeQueue".to_string()),
        ]);
        for (part, arn) in &fx.secret_arns {
            names.insert(arn.clone(), iam::secret_parameter(*part).to_string());
        }
        let proxy = start_proxy(ProxyState {
            moto: moto::url(),
            http: reqwest::Client::new(),
            rec: Arc::clone(&rec),
            names: Arc::new(names),
        })
        .await;
        let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(format!("http://{proxy}"))
            .region(aws_sdk_dynamodb::config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
                "testing", "testing", None, None, "moto",
            ))
            .load()
            .await;

        let arn = |part: Part| fx.secret_arns[&part].clone();
        let mut params = vec![
            ("PublicUrl", "https://addin.example.com".to_string()),
            ("AllowedSharePointHosts", format!("*.sharepoint.com,{stub}")),
            ("StsHosts", stub.to_string()),
            ("TokenKeysSecretArn", arn(Part::TokenKeys)),
            ("LinkKeySecretArn", arn(Part::LinkKey)),
            ("WebhookSecretArn", arn(Part::WebhookSecret)),
            ("WebhookUrl", receiver.url()),
        ];
        if kinds.acs {
            params.push(("ClientId", CLIENT_ID.into()));
            params.push(("ClientSecretArn", arn(Part::ClientSecret)));
        }
        if kinds.entra {
            params.push(("EntraClientId", ENTRA_CLIENT_ID.into()));
            params.push(("EntraCredentialSecretArn", arn(Part::EntraCredential)));
            params.push(("EntraAuthority", format!("http://{stub}")));
            params.push(("EntraKeepAliveDays", kinds.keepalive_days.to_string()));
        }
        let w = World {
            fx,
            template,
            rec,
            sdk,
            params,
            stub,
            stub_state,
            receiver,
        };
        let refused = iam::refused_by_rules(&w.template, &w.parameters()).unwrap();
        assert!(
            refused.is_empty(),
            "the template refuses {kinds:?}: {refused:?}"
        );
        w
    }

    fn parameters(&self) -> BTreeMap<String, String> {
        let given: Vec<(&str, &str)> = self.params.iter().map(|(k, v)| (*k, v.as_str())).collect();
        iam::parameter_values(&self.template, &given)
    }

    fn set_param(&mut self, name: &'static str, value: String) {
        self.params.retain(|(k, _)| *k != name);
        self.params.push((name, value));
    }

    /// The template as CloudFormation deploys it for this deployment.
    fn resolved(&self) -> serde_norway::Value {
        iam::resolve(&self.template, &self.parameters()).unwrap()
    }

    fn now_for(&self, function: &str) {
        *self.rec.function.lock().unwrap() = function.to_string();
    }

    /// A function's context as its `main.rs` builds it: the environment the template gives it
    /// (evaluated for this deployment and these resources), and the secrets it names, read
    /// through the proxy and checked as the function checks them. `clock`: the sweep's
    /// simulated time.
    async fn context(&self, program: Program, clock: Option<Arc<OffsetClock>>) -> Arc<Context> {
        self.now_for(program.name());
        let resolved = self.resolved();
        let f = iam::function_of(&resolved, program.name()).expect("function");
        let (table, queue) = (self.fx.table.clone(), self.fx.queue_url.clone());
        let names = move |name: &str| match name {
            "Table" => table.clone(),
            "NoticeQueue" => queue.clone(),
            other => format!("resource:{other}"),
        };
        let env = iam::function_env(&resolved, &f, &self.parameters(), &names);
        let settings = Settings::from_source(&env)
            .unwrap_or_else(|e| panic!("{f} would not start with the template's environment: {e}"));
        let doc = spkeeper::aws::secrets::load(
            &spkeeper::aws::SecretsClient::new(&self.sdk),
            &env["SPKEEPER_SECRETS_ARN"],
        )
        .await
        .unwrap();
        let secrets = Secrets::for_needs(doc, Needs::of(program, &settings))
            .unwrap_or_else(|e| panic!("{f} would not start with the template's secrets: {e}"));
        let ctx = Aws::new(&self.sdk, &self.fx.table, &self.fx.queue_url)
            .context(
                settings,
                spkeeper::secrets_cell::SecretsCell::fixed(secrets),
            )
            .unwrap();
        match clock {
            None => ctx,
            Some(clock) => {
                let c = Arc::try_unwrap(ctx).expect("a new context");
                Arc::new(Context { clock, ..c })
            }
        }
    }

    fn token(&self, nbf: DateTime<Utc>) -> String {
        let spec = ContextTokenSpec {
            client_id: CLIENT_ID.into(),
            audience_host: "addin.example.com".into(),
            realm: REALM.into(),
            cache_key: "megan+cache/key=".into(),
            sts_uri: format!("http://{}/tokens/OAuth/2", self.stub),
            refresh_token: format!("iam-operations-refresh-token-{}", nbf.timestamp()),
            nbf,
            lifetime_hours: 12,
            numeric_dates: false,
        };
        mint_context_token(
            &spec.claims(),
            &SecretString::from(CLIENT_SECRET.to_string()),
        )
    }

    fn site(&self) -> String {
        format!("http://{}/sites/a", self.stub)
    }

    fn entra_grant(&self) -> GrantId {
        GrantId::entra(REALM, &self.stub_state.entra(|e| e.oid.clone()))
    }
}

/// The launch function's routes and the exchange function's, each served with its own context.
struct Apps {
    launch_ctx: Arc<Context>,
    launch: String,
    exchange_ctx: Arc<Context>,
    exchange: String,
}

async fn apps(w: &World) -> Apps {
    let launch_ctx = w.context(Program::Launch, None).await;
    let tokens = Arc::new(TokenService::for_context(&launch_ctx));
    let signin = Arc::new(spkeeper::service::signin::SignInService::new(
        Arc::clone(&launch_ctx),
        tokens.entra(),
    ));
    let launch = serve(finish(
        Router::new()
            .merge(launch_router(Arc::new(LaunchService::new(
                Arc::clone(&launch_ctx),
                tokens,
            ))))
            .merge(status_router(Arc::clone(&launch_ctx)))
            .merge(renew_router(Arc::clone(&signin)))
            .merge(spkeeper::http::signin_router(signin))
            .merge(health_router()),
        &launch_ctx.settings,
    ))
    .await;
    let exchange_ctx = w.context(Program::Exchange, None).await;
    let auth: Arc<dyn spkeeper::http::TokenAuthorizer> =
        Arc::new(ApiKeyAuth(spkeeper::secrets_cell::SecretsCell::fixed({
            // The template deploys IAM authorization; the test calls with a key instead.
            let mut s = (*exchange_ctx.secrets.get()).clone();
            s.api_key = Some(SecretString::from(API_KEY.to_string()));
            s
        })));
    let exchange = serve(finish(
        Router::new()
            .merge(token_router(
                Arc::new(TokenService::for_context(&exchange_ctx)),
                Arc::clone(&auth),
            ))
            .merge(spkeeper::http::grants_router(
                Arc::new(spkeeper::service::grants::GrantsService::new(Arc::clone(
                    &exchange_ctx,
                ))),
                auth,
            ))
            .merge(health_router()),
        &exchange_ctx.settings,
    ))
    .await;
    Apps {
        launch_ctx,
        launch,
        exchange_ctx,
        exchange,
    }
}

/// A launch as SharePoint posts it, with a context token of `nbf`.
async fn launch(w: &World, app: &str, nbf: DateTime<Utc>) -> reqwest::Response {
    let query = format!(
        "SPHostUrl={}&SPLanguage=en-US&SPClientTag=0&SPProductNumber=16.0.0.0",
        enc(&w.site())
    );
    client()
        .post(format!("{app}/launch?{query}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("SPAppToken={}", enc(&w.token(nbf))))
        .send()
        .await
        .unwrap()
}

/// The value of cookie `name` among a response's `Set-Cookie` headers, as `name=value`.
fn cookie(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|c| c.to_str().ok())
        .filter_map(|c| c.split(';').next())
        .find(|c| c.starts_with(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} cookie"))
        .to_string()
}

/// An Entra sign-in as the browser makes it: `/connect`, Entra's form post to `/callback`.
async fn sign_in(w: &World, app: &str) -> reqwest::Response {
    let http = client();
    let r = http
        .get(format!("{app}/connect?site={}", enc(&w.site())))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302, "{:?}", r.text().await);
    let state_cookie = cookie(&r, SIGNIN_COOKIE);
    let location = url::Url::parse(r.headers()["location"].to_str().unwrap()).unwrap();
    let q: HashMap<String, String> = location.query_pairs().into_owned().collect();
    let code = format!("code-{}", moto::unique("c"));
    w.stub_state
        .entra(|e| e.codes.insert(code.clone(), q["nonce"].clone()));
    http.post(format!("{app}/callback"))
        .header("cookie", state_cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("code={}&state={}", enc(&code), enc(&q["state"])))
        .send()
        .await
        .unwrap()
}

async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// `POST /token` as the app's backend sends it.
async fn token(apps: &Apps, body: Value) -> reqwest::Response {
    client()
        .post(format!("{}/token", apps.exchange))
        .header("authorization", format!("Bearer {API_KEY}"))
        .json(&body)
        .send()
        .await
        .unwrap()
}

// --- The lives --------------------------------------------------------------------------------

/// An ACS grant: launch, status page, renew link; the sweep's 30-day notice and operator
/// notice; a relaunch; tokens, a refused client, a revocation; delivery; the app backend.
async fn acs_life(w: &mut World, apps: &Apps) {
    w.now_for("launch");
    let http = client();
    let first = launch(w, &apps.launch, Utc::now()).await;
    assert_eq!(first.status(), 303, "{:?}", first.text().await);
    let session = cookie(&first, SESSION_COOKIE);
    let status = http
        .get(format!("{}/status", apps.launch))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), 200);
    let id = GrantId::derive(REALM, "megan+cache/key=");
    let renew = apps.launch_ctx.renew_url(&id, Utc::now());
    let renew = renew.replace("https://addin.example.com", &apps.launch);
    assert_eq!(http.get(renew).send().await.unwrap().status(), 302);

    // sweep: the 30-day notice, and the operator notice about the client secret.
    let expires =
        w.fx.context()
            .grants
            .load(&id)
            .await
            .unwrap()
            .unwrap()
            .record
            .rt_expires_at;
    let sweep_at = expires - Duration::days(29);
    w.set_param(
        "ClientSecretExpiresAt",
        (sweep_at + Duration::days(10)).to_rfc3339(),
    );
    let sweep_ctx = w.context(Program::Sweep, None).await;
    let summary = SweepService::new(sweep_ctx)
        .run(sweep_at, false)
        .await
        .unwrap();
    assert_eq!(summary.notices["refresh_token.expiring"], 1, "{summary:?}");
    assert_eq!(summary.notices["client_secret.expiring"], 1, "{summary:?}");

    // launch again: a relaunch replaces the grant and sends `renewed` at once.
    w.now_for("launch");
    let again = launch(w, &apps.launch, Utc::now() + Duration::seconds(60)).await;
    assert_eq!(again.status(), 303);

    // exchange: an access token for another host; ACS refuses the client; ACS refuses the
    // refresh token.
    w.now_for("exchange");
    let for_host = |host: &str| json!({"grant_id": id, "host": host});
    assert_eq!(
        token(apps, for_host("contoso.sharepoint.com"))
            .await
            .status(),
        200
    );
    w.stub_state.refuse_client.store(true, Ordering::SeqCst);
    assert_eq!(
        token(apps, for_host("fabrikam.sharepoint.com"))
            .await
            .status(),
        502
    );
    w.stub_state.refuse_client.store(false, Ordering::SeqCst);
    w.stub_state.invalid_grant.store(true, Ordering::SeqCst);
    assert_eq!(
        token(apps, for_host("fabrikam.sharepoint.com"))
            .await
            .status(),
        409
    );

    deliver(w, 3).await;
    app_backend(w, apps, &id, "megan@contoso.com").await;
}

/// An Entra grant: sign-in, status page, renew link, signing in again; `/token` for Graph
/// (a rotation) and from the cache; the sweep — the keep-alive (Entra refusing the expired
/// secret once, then redeeming) or, without it, the 30-day notice — and the operator notice
/// about the Entra secret; a sign-in and `/token` refused for the expired secret; the grant
/// revoked; delivery; the app backend.
async fn entra_life(w: &mut World, apps: &Apps, keepalive: bool) {
    w.now_for("launch");
    let http = client();
    let signed_in = sign_in(w, &apps.launch).await;
    assert_eq!(signed_in.status(), 303, "{:?}", signed_in.text().await);
    let id = w.entra_grant();
    let status = http
        .get(format!("{}/status", apps.launch))
        .header("cookie", cookie(&signed_in, SESSION_COOKIE))
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), 200);
    let renew = apps.launch_ctx.renew_url(&id, Utc::now());
    let renew = renew.replace("https://addin.example.com", &apps.launch);
    assert_eq!(http.get(renew).send().await.unwrap().status(), 302);
    let again = sign_in(w, &apps.launch).await;
    assert_eq!(again.status(), 303, "{:?}", again.text().await);

    w.now_for("exchange");
    let r = token(apps, json!({"grant_id": id, "scope": GRAPH})).await;
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    assert_eq!(token(apps, json!({"grant_id": id})).await.status(), 200);

    // sweep: a month on, and the Entra secret expires ten days later.
    let now = Utc::now();
    let at = if keepalive {
        now + Duration::days(31)
    } else {
        let expires =
            w.fx.context()
                .grants
                .load(&id)
                .await
                .unwrap()
                .unwrap()
                .record
                .rt_expires_at;
        expires - Duration::days(29)
    };
    w.set_param(
        "EntraSecretExpiresAt",
        (at + Duration::days(10)).to_rfc3339(),
    );
    let clock = Arc::new(OffsetClock::new());
    clock.set(at);
    let sweep = SweepService::new(w.context(Program::Sweep, Some(Arc::clone(&clock))).await);
    if keepalive {
        w.stub_state.entra(|e| e.fault = Some(7000222));
        let refused = sweep.run(at, false).await.unwrap();
        assert_eq!(refused.keepalive_failures, 1, "{refused:?}");
        let later = at + Duration::hours(2);
        clock.set(later);
        let before = w.rec.operations.lock().unwrap().len();
        let kept = sweep.run(later, false).await.unwrap();
        assert_eq!(kept.kept_alive, 1, "{kept:?}");
        // What a keep-alive costs (BENCHMARKS.md's cost table): this sweep's requests, less
        // the 8 + 1 Queries every sweep makes (the due shards, the outbox).
        let mut made: BTreeMap<String, usize> = BTreeMap::new();
        for op in &w.rec.operations.lock().unwrap()[before..] {
            *made.entry(op.clone()).or_default() += 1;
        }
        let expected: BTreeMap<String, usize> = KEEP_ALIVE_REQUESTS
            .iter()
            .map(|(op, n)| (op.to_string(), *n))
            .collect();
        assert_eq!(made, expected, "a sweep with one keep-alive");
    } else {
        let summary = sweep.run(at, false).await.unwrap();
        assert_eq!(summary.notices["refresh_token.expiring"], 1, "{summary:?}");
        assert_eq!(summary.notices["client_secret.expiring"], 1, "{summary:?}");
    }

    // Entra says the secret expired: at sign-in, and at /token; then it revokes the grant.
    w.now_for("launch");
    w.stub_state.entra(|e| e.fault = Some(7000222));
    assert_eq!(sign_in(w, &apps.launch).await.status(), 502);
    w.now_for("exchange");
    let fresh_scope = "https://fabrikam.sharepoint.com/.default";
    w.stub_state.entra(|e| e.fault = Some(7000222));
    let r = token(apps, json!({"grant_id": id, "scope": fresh_scope})).await;
    assert_eq!(r.status(), 502, "{:?}", r.text().await);
    w.stub_state.entra(|e| e.fault = Some(50173));
    let r = token(apps, json!({"grant_id": id, "scope": fresh_scope})).await;
    assert_eq!(r.status(), 409, "{:?}", r.text().await);

    deliver(w, 2).await;
    app_backend(w, apps, &id, "megan@contoso.com").await;
}

/// notify: delivery from the queue; one refused delivery is held back for its backoff.
async fn deliver(w: &World, at_least: u32) {
    let notify_ctx = w.context(Program::Notify, None).await;
    let sender = spkeeper::aws::webhook_sender(
        &notify_ctx.settings,
        &notify_ctx.secrets.get(),
        http_client().unwrap(),
    )
    .unwrap();
    let queue = SqsQueue::new(aws_sdk_sqs::Client::new(&w.sdk), w.fx.queue_url.clone());
    w.receiver.fail_next(1);
    let mut delivered = 0;
    for _ in 0..6 {
        delivered += spkeeper::aws::consume_once(&queue, &sender, 1)
            .await
            .unwrap();
        if delivered >= at_least {
            break;
        }
    }
    assert!(delivered >= at_least, "{delivered}");
}

/// exchange, for the app's backend: a hand-off, lookups, and erasure.
async fn app_backend(w: &World, apps: &Apps, id: &GrantId, email: &str) {
    w.now_for("exchange");
    let http = client();
    let api = |method: Method, path: String, body: Option<Value>| {
        let mut r = http
            .request(method, format!("{}{path}", apps.exchange))
            .header("authorization", format!("Bearer {API_KEY}"));
        if let Some(b) = body {
            r = r.json(&b);
        }
        r.send()
    };
    let ticket = spkeeper::service::grants::issue_ticket(&apps.exchange_ctx, id, Utc::now());
    let handed = api(
        Method::POST,
        "/handoff".into(),
        Some(json!({"ticket": ticket})),
    )
    .await
    .unwrap();
    assert_eq!(handed.status(), 200);
    for path in [
        format!("/grants?email={email}"),
        format!("/grants?login_name={}", enc(email)),
        format!("/grants/{id}"),
    ] {
        assert_eq!(api(Method::GET, path, None).await.unwrap().status(), 200);
    }
    assert_eq!(
        api(Method::DELETE, format!("/grants/{id}"), None)
            .await
            .unwrap()
            .status(),
        204
    );
}

// --- The checks -------------------------------------------------------------------------------

/// Every recorded call allowed by the role (in the deployed template) of the function that made
/// it, and every table grant of every role used by some call (or planned).
fn check_calls(w: &World) {
    let calls = w.rec.calls.lock().unwrap().clone();
    assert!(
        w.rec.unreadable.lock().unwrap().is_empty(),
        "requests the recorder could not read: {:?}",
        w.rec.unreadable.lock().unwrap()
    );
    let t = &w.resolved();
    let mut refused = Vec::new();
    let mut used: BTreeMap<String, Vec<Call>> = BTreeMap::new();
    for (function, call) in &calls {
        let role = iam::function_of(t, function)
            .and_then(|f| iam::role_of(t, &f))
            .unwrap_or_default();
        if !iam::allows(t, &role, call) {
            refused.push(format!("{function} ({role}): {call:?}"));
        }
        used.entry(role).or_default().push(call.clone());
    }
    let summary: BTreeSet<String> = calls
        .iter()
        .map(|(f, c)| format!("{f}: {} {} {:?}", c.action, c.resource, prefixes(&c.keys)))
        .collect();
    assert!(
        refused.is_empty(),
        "the template refuses calls the code makes:\n{}\n\nall calls:\n{}",
        refused.join("\n"),
        summary.iter().cloned().collect::<Vec<_>>().join("\n")
    );

    let mut unused = Vec::new();
    for function in Program::FUNCTIONS {
        let role = iam::function_of(t, function.name())
            .and_then(|f| iam::role_of(t, &f))
            .unwrap_or_default();
        let calls = used.get(&role).cloned().unwrap_or_default();
        for (action, patterns) in iam::table_grants(t, &role) {
            for p in patterns {
                let planned = PLANNED.contains(&(role.as_str(), action.as_str(), p.as_str()));
                let exercised = calls.iter().any(|c| {
                    c.action == action
                        && c.resource == "Table"
                        && c.keys
                            .iter()
                            .any(|k| p == "*" || k.starts_with(p.trim_end_matches('*')))
                });
                if !exercised && !planned {
                    unused.push(format!("{role}: {action} on {p}"));
                }
            }
        }
        // And every index a role may query.
        for s in iam::statements(t, &role) {
            if !iam::actions(&s).iter().any(|a| a == "dynamodb:Query") {
                continue;
            }
            for r in iam::resources(&s) {
                let r = iam::resource_name(&r);
                if r.starts_with("Table/index/")
                    && !calls
                        .iter()
                        .any(|c| c.action == "dynamodb:Query" && c.resource == r)
                {
                    unused.push(format!("{role}: dynamodb:Query on {r}"));
                }
            }
        }
    }
    assert!(
        unused.is_empty(),
        "grants no call used (narrow them, or list them as planned):\n{}\n\nall calls:\n{}",
        unused.join("\n"),
        summary.into_iter().collect::<Vec<_>>().join("\n")
    );
}

/// The metrics the deployed template's filters on `group` count `line` under.
fn metrics_counting(t: &serde_norway::Value, group: &str, line: &Value) -> BTreeSet<String> {
    t["Resources"]
        .as_mapping()
        .into_iter()
        .flatten()
        .map(|(_, r)| r)
        .filter(|r| r["Type"].as_str() == Some("AWS::Logs::MetricFilter"))
        .filter(|r| iam::target(&r["Properties"]["LogGroupName"]).as_deref() == Some(group))
        .filter(|r| {
            r["Properties"]["FilterPattern"]
                .as_str()
                .is_some_and(|p| iam::filter_matches(p, line).unwrap())
        })
        .flat_map(|r| {
            r["Properties"]["MetricTransformations"]
                .as_sequence()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|m| m["MetricName"].as_str().map(String::from))
        .collect()
}

fn prefixes(keys: &[String]) -> Vec<String> {
    keys.iter()
        .map(|k| k.split_inclusive('#').next().unwrap_or(k).to_string())
        .collect()
}

// --- The deployments --------------------------------------------------------------------------

/// A kind of log line: what it is, which function writes it, how to recognise it, and the
/// metrics (with alarms) that must count it.
type Case = (
    &'static str,
    &'static str,
    Box<dyn Fn(&&Value) -> bool>,
    &'static [&'static str],
);

/// ACS and Entra (its credential a certificate) with the keep-alive: every grant of every role
/// is used; and the log lines of every refusal are counted by the alarms meant for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acs_and_entra_with_keep_alive_every_call_allowed_and_every_grant_used() {
    let mut w = World::new(Kinds {
        acs: true,
        entra: true,
        keepalive_days: 30,
    })
    .await;
    let apps = apps(&w).await;
    acs_life(&mut w, &apps).await;
    entra_life(&mut w, &apps, true).await;
    check_calls(&w);

    // The alarms count what the functions log, as Lambda writes it.
    let t = w.resolved();
    let lines = log_lines();
    let group =
        |function: &str| iam::log_group_of(&t, &iam::function_of(&t, function).unwrap()).unwrap();
    let expired_secret = |l: &&Value| {
        l["fields"]["event"] == "sts_rejected_client" && l["fields"]["aadsts"] == 7000222
    };
    let cases: [Case; 9] = [
        (
            "an Entra sign-in refused for an expired secret",
            "launch",
            Box::new(move |l| expired_secret(l) && l["fields"]["grant_id"].is_null()),
            &["EntraSecretExpired", "StsRejectedClient"],
        ),
        (
            "/token refused by Entra for an expired secret",
            "exchange",
            Box::new(move |l| expired_secret(l) && l["fields"]["why"] == "token"),
            &["EntraSecretExpired", "StsRejectedClient"],
        ),
        (
            "the keep-alive refused by Entra for an expired secret",
            "sweep",
            Box::new(move |l| expired_secret(l) && l["fields"]["why"] == "keep-alive"),
            &["EntraSecretExpired", "StsRejectedClient"],
        ),
        (
            "/token refused by ACS (invalid_client)",
            "exchange",
            Box::new(|l| {
                l["fields"]["event"] == "sts_rejected_client" && l["fields"]["aadsts"].is_null()
            }),
            &["StsRejectedClient"],
        ),
        (
            "the Entra secret's expiry ahead",
            "sweep",
            Box::new(|l| {
                l["fields"]["event"] == "client_secret_expiring"
                    && l["fields"]["client_id"] == ENTRA_CLIENT_ID
            }),
            &["ClientSecretExpiring"],
        ),
        // What the alarms on silence weigh (README, "What the alarms mean").
        (
            "an ACS launch accepted",
            "launch",
            Box::new(|l| l["fields"]["event"] == "launch_accepted"),
            &["LaunchAccepted"],
        ),
        (
            "an Entra sign-in accepted",
            "launch",
            Box::new(|l| l["fields"]["event"] == "sign_in_accepted"),
            &["LaunchAccepted"],
        ),
        (
            "a token issued for /token",
            "exchange",
            Box::new(|l| l["fields"]["outcome"] == "issued" && l["fields"]["why"] == "token"),
            &["StsIssued"],
        ),
        (
            "a sweep completed",
            "sweep",
            Box::new(|l| l["fields"]["event"] == "sweep_completed"),
            &["SweepCompleted"],
        ),
    ];
    for (what, function, is, expected) in cases {
        let line = lines
            .iter()
            .find(|l| is(l))
            .unwrap_or_else(|| panic!("no log line for {what}"));
        assert_eq!(
            metrics_counting(&t, &group(function), line),
            expected.iter().map(|m| m.to_string()).collect(),
            "{what}: {line}"
        );
    }
    // Lambda's log lines carry no token and no secret.
    let text = String::from_utf8_lossy(&LOGS.lock().unwrap()).to_string();
    for secret in [
        "iam-operations-refresh-token",
        "iam-operations-access-token",
        "iam-operations-entra-rt",
        "iam-operations-entra-at",
        "PRIVATE KEY",
        ENTRA_SECRET,
        CLIENT_SECRET,
    ] {
        assert!(!text.contains(secret), "a log line holds {secret}");
    }
}

/// An ACS-only deployment: its roles hold nothing for Entra, and every grant is used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acs_only_every_call_allowed_and_every_grant_used() {
    let mut w = World::new(Kinds {
        acs: true,
        entra: false,
        keepalive_days: 30,
    })
    .await;
    let apps = apps(&w).await;
    acs_life(&mut w, &apps).await;
    check_calls(&w);
}

/// An Entra-only deployment (its credential a client secret) without the keep-alive: its roles
/// hold nothing only ACS launches or the keep-alive need, and every grant is used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entra_only_without_keep_alive_every_call_allowed_and_every_grant_used() {
    let mut w = World::new(Kinds {
        acs: false,
        entra: true,
        keepalive_days: 0,
    })
    .await;
    let apps = apps(&w).await;
    entra_life(&mut w, &apps, false).await;
    check_calls(&w);
}
