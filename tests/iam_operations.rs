//! The template's roles against what the code really sends. Each function's part of the life
//! (launch, relaunch, status page, renew link; `/token`, a revocation; the sweep, an operator
//! notice; delivery from SQS) runs in this process, composed as its `main.rs` composes it,
//! against moto through a recording proxy. Every AWS call is then checked against the
//! function's role in `template.yaml` (action, resource, and for table items the partition
//! key against `dynamodb:LeadingKeys`), so a narrowed statement that would break a function
//! in AWS fails here; and every table grant must be used by some call (or be a planned
//! one), so a statement wider than the code needs fails too.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde_json::{Value, json};

use spkeeper::aws::Aws;
use spkeeper::aws::sqs::SqsQueue;
use spkeeper::clients::http_client;
use spkeeper::config::{Needs, Program, Secrets, Settings};
use spkeeper::context::Context;
use spkeeper::core::grant::GrantId;
use spkeeper::http::{
    ApiKeyAuth, finish, health_router, launch_router, renew_router, status_router, token_router,
};
use spkeeper::service::exchange::TokenService;
use spkeeper::service::launch::LaunchService;
use spkeeper::service::sweep::SweepService;
use spkeeper::testkit::{ContextTokenSpec, mint_context_token, moto};
use spkeeper_e2e::iam::{self, Call};
use spkeeper_e2e::lambda::{AwsFixture, CLIENT_ID, CLIENT_SECRET, REALM, WEBHOOK_SECRET};
use spkeeper_e2e::{Receiver, client};

/// Table grants the template holds for code that is coming, not yet here: the per-host realm
/// cache launch will read and write (`H#`).
const PLANNED: &[(&str, &str, &str)] = &[];

const API_KEY: &str = "iam-operations-api-key-0123456789";

// --- A recording proxy in front of moto ------------------------------------------------------

#[derive(Default)]
struct Recorded {
    /// Which function the calls now being made are for.
    function: Mutex<String>,
    calls: Mutex<Vec<(String, Call)>>,
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

// --- ACS and SharePoint ---------------------------------------------------------------------

#[derive(Default)]
struct StubState {
    invalid_grant: AtomicBool,
}

async fn acs(State(st): State<Arc<StubState>>, body: Bytes) -> Response {
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

async fn start_stub(st: Arc<StubState>) -> SocketAddr {
    let app = Router::new()
        .route("/tokens/OAuth/2", post(acs))
        .route("/sites/a/_api/web/currentuser", get(current_user))
        .route("/_vti_bin/client.svc", get(realm))
        .route("/sites/a/_vti_bin/client.svc", get(realm))
        .with_state(st);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

// --- The functions, composed as their mains compose them ----------------------------------

struct World {
    fx: AwsFixture,
    template: serde_norway::Value,
    rec: Arc<Recorded>,
    sdk: aws_config::SdkConfig,
    env: BTreeMap<String, String>,
    stub: SocketAddr,
}

impl World {
    fn now_for(&self, function: &str) {
        *self.rec.function.lock().unwrap() = function.to_string();
    }

    /// The secrets the template gives `function`, read (through the proxy) and checked as
    /// the function reads them.
    async fn context(&self, program: Program) -> Arc<Context> {
        self.now_for(program.name());
        let f = iam::function_of(&self.template, program.name()).expect("function");
        let arns: Vec<String> = iam::refs(iam::env_var(&self.template, &f, "SPKEEPER_SECRETS_ARN"))
            .iter()
            .filter_map(|p| iam::part_of_parameter(p))
            .map(|part| self.fx.secret_arns[&part].clone())
            .collect();
        let settings = Settings::from_source(&self.env).unwrap();
        let doc = spkeeper::aws::secrets::load(
            &aws_sdk_secretsmanager_client(&self.sdk),
            &arns.join(","),
        )
        .await
        .unwrap();
        let secrets = Secrets::for_needs(doc, Needs::of(program, &settings)).unwrap();
        Aws::new(&self.sdk, &self.fx.table, &self.fx.queue_url)
            .context(settings, secrets)
            .unwrap()
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
}

fn aws_sdk_secretsmanager_client(sdk: &aws_config::SdkConfig) -> spkeeper::aws::SecretsClient {
    spkeeper::aws::SecretsClient::new(sdk)
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

async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_aws_call_of_each_function_is_allowed_by_its_role_and_every_table_grant_is_used() {
    let stub_state = Arc::new(StubState::default());
    let stub = start_stub(Arc::clone(&stub_state)).await;
    let receiver = Receiver::start(WEBHOOK_SECRET).await;
    let fx = AwsFixture::new(&[]).await;

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

    let mut env = fx.env.clone();
    env.insert(
        "SPKEEPER_ALLOWED_SP_HOSTS".into(),
        format!("*.sharepoint.com,{stub}"),
    );
    env.insert("SPKEEPER_STS_HOSTS".into(), stub.to_string());
    env.insert("SPKEEPER_TOKEN_AUTH".into(), "iam".into());
    env.insert("SPKEEPER_WEBHOOK_URL".into(), receiver.url());
    let mut w = World {
        fx,
        template,
        rec: Arc::clone(&rec),
        sdk,
        env,
        stub,
    };

    // launch: a first launch (grant and refresh token, first exchange, the user), its status
    // page and renew link.
    let launch_ctx = w.context(Program::Launch).await;
    let tokens = Arc::new(TokenService::for_context(&launch_ctx));
    let signin = Arc::new(spkeeper::service::signin::SignInService::new(
        Arc::clone(&launch_ctx),
        tokens.entra(),
    ));
    let launch_app = serve(finish(
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
    let http = client();
    let first = launch(&w, &launch_app, Utc::now()).await;
    assert_eq!(first.status(), 303, "{:?}", first.text().await);
    let cookie = first
        .headers()
        .get("set-cookie")
        .and_then(|c| c.to_str().ok())
        .and_then(|c| c.split(';').next())
        .unwrap()
        .to_string();
    let status = http
        .get(format!("{launch_app}/status"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), 200);
    let id = GrantId::derive(REALM, "megan+cache/key=");
    let renew = launch_ctx.renew_url(&id, Utc::now());
    let renew = renew.replace("https://addin.example.com", &launch_app);
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
    let sweep_at = expires - chrono::Duration::days(29);
    w.env.insert(
        "SPKEEPER_CLIENT_SECRET_EXPIRES_AT".into(),
        (sweep_at + chrono::Duration::days(10)).to_rfc3339(),
    );
    let sweep_ctx = w.context(Program::Sweep).await;
    let summary = SweepService::new(sweep_ctx)
        .run(sweep_at, false)
        .await
        .unwrap();
    assert_eq!(summary.notices["refresh_token.expiring"], 1, "{summary:?}");
    assert_eq!(summary.notices["client_secret.expiring"], 1, "{summary:?}");

    // launch again: a relaunch replaces the grant and sends `renewed` at once.
    w.now_for("launch");
    let again = launch(&w, &launch_app, Utc::now() + chrono::Duration::seconds(60)).await;
    assert_eq!(again.status(), 303);

    // exchange: an access token for another host, then ACS refuses the refresh token.
    let exchange_ctx = w.context(Program::Exchange).await;
    let exchange_auth: Arc<dyn spkeeper::http::TokenAuthorizer> =
        Arc::new(ApiKeyAuth(SecretString::from(API_KEY.to_string())));
    let exchange_app = serve(finish(
        Router::new()
            .merge(token_router(
                Arc::new(TokenService::for_context(&exchange_ctx)),
                Arc::clone(&exchange_auth),
            ))
            .merge(spkeeper::http::grants_router(
                Arc::new(spkeeper::service::grants::GrantsService::new(Arc::clone(
                    &exchange_ctx,
                ))),
                exchange_auth,
            ))
            .merge(health_router()),
        &exchange_ctx.settings,
    ))
    .await;
    let token = |host: &str| {
        http.post(format!("{exchange_app}/token"))
            .header("authorization", format!("Bearer {API_KEY}"))
            .json(&json!({"grant_id": id, "host": host}))
            .send()
    };
    assert_eq!(token("contoso.sharepoint.com").await.unwrap().status(), 200);
    stub_state.invalid_grant.store(true, Ordering::SeqCst);
    assert_eq!(
        token("fabrikam.sharepoint.com").await.unwrap().status(),
        409
    );

    // notify: delivery from the queue; one refused delivery is held back for its backoff.
    let notify_ctx = w.context(Program::Notify).await;
    let settings = Settings::from_source(&w.env).unwrap();
    let sender =
        spkeeper::aws::webhook_sender(&settings, &notify_ctx.secrets, http_client().unwrap())
            .unwrap();
    let queue = SqsQueue::new(aws_sdk_sqs::Client::new(&w.sdk), w.fx.queue_url.clone());
    receiver.fail_next(1);
    let mut delivered = 0;
    for _ in 0..5 {
        delivered += spkeeper::aws::consume_once(&queue, &sender, 1)
            .await
            .unwrap();
        if delivered >= 3 {
            break;
        }
    }
    assert!(delivered >= 3, "{delivered}");

    // exchange, for the app's backend: a hand-off, lookups, and erasure.
    w.now_for("exchange");
    let api = |method: Method, path: String, body: Option<Value>| {
        let mut r = http
            .request(method, format!("{exchange_app}{path}"))
            .header("authorization", format!("Bearer {API_KEY}"));
        if let Some(b) = body {
            r = r.json(&b);
        }
        r.send()
    };
    let ticket = spkeeper::service::grants::issue_ticket(&exchange_ctx, &id, Utc::now());
    let handed = api(
        Method::POST,
        "/handoff".into(),
        Some(json!({"ticket": ticket})),
    )
    .await
    .unwrap();
    assert_eq!(handed.status(), 200);
    for path in [
        "/grants?email=megan@contoso.com".to_string(),
        "/grants?login_name=i:0%23.f%7Cmembership%7Cmegan@contoso.com".to_string(),
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

    // Every call allowed by the role of the function that made it.
    let calls = rec.calls.lock().unwrap().clone();
    assert!(
        rec.unreadable.lock().unwrap().is_empty(),
        "requests the recorder could not read: {:?}",
        rec.unreadable.lock().unwrap()
    );
    let t = &w.template;
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

    // And every table grant is used by its function's code (or planned).
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
    }
    assert!(
        unused.is_empty(),
        "grants no call used (narrow them, or list them as planned):\n{}\n\nall calls:\n{}",
        unused.join("\n"),
        summary.into_iter().collect::<Vec<_>>().join("\n")
    );
}

fn prefixes(keys: &[String]) -> Vec<String> {
    keys.iter()
        .map(|k| k.split_inclusive('#').next().unwrap_or(k).to_string())
        .collect()
}
