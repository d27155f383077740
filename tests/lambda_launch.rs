//! The `launch` binary, run through a local Lambda Runtime API with the API Gateway fixtures.

use std::path::PathBuf;

use chrono::Utc;
use secrecy::SecretString;
use serde_json::Value;

use spkeeper::core::grant::GrantId;
use spkeeper::ports::GrantStore;
use spkeeper::testkit::{ContextTokenSpec, mint_context_token};
use spkeeper_e2e::lambda::*;
use spkeeper_e2e::{Proc, assert_no_secrets};

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_launch"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launch_function_serves_health_launch_and_refusals_from_the_fixtures() {
    // The token service is unreachable on purpose: the first exchange after a launch is best
    // effort and must not fail it.
    let fx = AwsFixture::new(&[("SPKEEPER_STS_HOSTS", "127.0.0.1:9")]).await;
    let rt = RuntimeApi::start().await;
    let (proc, logs) = fx.spawn(&bin(), &rt, "launch");

    let (_, o) = rt.invoke(fixture("apigw-http-healthz.json")).await;
    let r = o.response();
    assert_eq!(r["statusCode"], 200);
    assert_eq!(body_of(&r), serde_json::json!({"status": "ok"}));

    // The fixture as recorded: a browser's launch with no token gets the error as a page.
    let (_, o) = rt.invoke(fixture("apigw-http-launch.json")).await;
    let r = o.response();
    assert_eq!(r["statusCode"], 400);
    assert!(
        r["headers"]["content-type"]
            .as_str()
            .unwrap()
            .starts_with("text/html"),
        "{r}"
    );
    assert!(
        r["body"]
            .as_str()
            .unwrap()
            .contains("missing_context_token"),
        "{r}"
    );
    // and an API client gets JSON
    let mut json_client = fixture("apigw-http-launch.json");
    json_client["headers"]["accept"] = Value::String("application/json".into());
    let r = rt.invoke(json_client).await.1.response();
    assert_eq!(body_of(&r)["error"], "missing_context_token");

    // The same launch carrying a valid context token. contoso.sharepoint.com is out of reach
    // here: its realm (what realm discovery would find) is already in the table's cache.
    seed_host_realm(&fx).await;
    let spec = ContextTokenSpec {
        client_id: CLIENT_ID.into(),
        audience_host: "addin.example.com".into(),
        realm: REALM.into(),
        cache_key: "lambda+user/key=".into(),
        sts_uri: "http://127.0.0.1:9/tokens/OAuth/2".into(),
        refresh_token: "lambda-refresh-token-value".into(),
        nbf: Utc::now(),
        lifetime_hours: 12,
        numeric_dates: false,
    };
    let token = mint_context_token(
        &spec.claims(),
        &SecretString::from(CLIENT_SECRET.to_string()),
    );
    let mut event = fixture("apigw-http-launch.json");
    let form = format!(
        "SPAppToken={}&{}",
        url::form_urlencoded::byte_serialize(token.as_bytes()).collect::<String>(),
        event["body"].as_str().unwrap()
    );
    event["body"] = Value::String(form);
    let (request_id, o) = rt.invoke(event).await;
    let r = o.response();
    assert_eq!(r["statusCode"], 303, "{r}");
    assert_eq!(r["headers"]["location"], "https://addin.example.com/status");
    let cookies = r["cookies"].to_string();
    assert!(
        cookies.contains("__Host-spkeeper_session=")
            && cookies.contains("HttpOnly")
            && cookies.contains("Secure"),
        "{r}"
    );

    // Stored in DynamoDB, sealed.
    let id = GrantId::derive(REALM, "lambda+user/key=");
    let stored = fx
        .aws()
        .dynamo
        .load(&id)
        .await
        .unwrap()
        .expect("grant stored");
    assert_eq!(
        stored.record.site_url,
        "https://contoso.sharepoint.com/sites/sales"
    );
    assert!(
        !stored
            .sealed_refresh_token
            .unwrap()
            .contains("lambda-refresh-token-value")
    );

    // JSON logs carrying the request id, and no secret in them.
    drop(proc);
    let logs = std::fs::read_to_string(logs.path().join("launch.stdout")).unwrap();
    assert!(
        logs.lines()
            .any(|l| l.contains(&request_id) && serde_json::from_str::<Value>(l).is_ok()),
        "{logs}"
    );
    assert_no_secrets(
        &logs,
        &[
            CLIENT_SECRET.into(),
            API_KEY.into(),
            WEBHOOK_SECRET.into(),
            token,
            "lambda-refresh-token-value".into(),
        ],
    );
}

/// What realm discovery of the fixtures' host would find, cached as a launch caches it.
async fn seed_host_realm(fx: &AwsFixture) {
    use spkeeper::ports::TokenCache;
    fx.aws()
        .dynamo
        .put_host_realm(
            "contoso.sharepoint.com",
            REALM,
            Utc::now() + chrono::Duration::hours(1),
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_logging_never_shows_tokens_cookies_or_bearers() {
    let fx = AwsFixture::new(&[("SPKEEPER_STS_HOSTS", "127.0.0.1:9")]).await;
    seed_host_realm(&fx).await;
    let rt = RuntimeApi::start().await;
    let logs = tempfile::tempdir().unwrap();
    let mut env = fx.env_for(&rt, "launch");
    // Every way an operator turns logging up.
    env.insert("AWS_LAMBDA_LOG_LEVEL".into(), "TRACE".into());
    env.insert("RUST_LOG".into(), "trace".into());
    let proc = Proc::spawn(&bin(), &[], &env, logs.path(), "launch");

    let spec = ContextTokenSpec {
        client_id: CLIENT_ID.into(),
        audience_host: "addin.example.com".into(),
        realm: REALM.into(),
        cache_key: "trace+user/key=".into(),
        sts_uri: "http://127.0.0.1:9/tokens/OAuth/2".into(),
        refresh_token: "trace-refresh-token-value".into(),
        nbf: Utc::now(),
        lifetime_hours: 12,
        numeric_dates: false,
    };
    let token = mint_context_token(
        &spec.claims(),
        &SecretString::from(CLIENT_SECRET.to_string()),
    );
    let mut event = fixture("apigw-http-launch.json");
    event["body"] = Value::String(format!(
        "SPAppToken={}&{}",
        url::form_urlencoded::byte_serialize(token.as_bytes()).collect::<String>(),
        event["body"].as_str().unwrap()
    ));
    event["headers"]["authorization"] = Value::String("Bearer trace-bearer-value-0123".into());
    event["cookies"] = serde_json::json!(["__Host-spkeeper_session=trace-cookie-value-0123"]);
    let (_, o) = rt.invoke(event).await;
    assert_eq!(o.response()["statusCode"], 303);

    drop(proc);
    let logs = std::fs::read_to_string(logs.path().join("launch.stdout")).unwrap();
    // It did log at TRACE (our own targets are not capped)...
    assert!(logs.lines().count() > 3, "{logs}");
    // ...but nothing that saw the raw event or the secret's answer.
    assert_no_secrets(
        &logs,
        &[
            token.clone(),
            token.split('.').nth(1).unwrap().to_string(),
            "trace-refresh-token-value".into(),
            "trace-bearer-value-0123".into(),
            "trace-cookie-value-0123".into(),
            CLIENT_SECRET.into(),
            API_KEY.into(),
            WEBHOOK_SECRET.into(),
        ],
    );
    for key in fx.secret["token_keys"].as_object().unwrap().values() {
        assert!(
            !logs.contains(key.as_str().unwrap()),
            "a token key is in the log"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launch_function_refuses_to_start_without_its_secret() {
    let mut fx = AwsFixture::new(&[]).await;
    fx.env.insert(
        "SPKEEPER_SECRETS_ARN".into(),
        "arn:aws:secretsmanager:us-east-1:123456789012:secret:missing".into(),
    );
    let rt = RuntimeApi::start().await;
    let (mut proc, _logs) = fx.spawn(&bin(), &rt, "launch");
    let status = proc
        .wait_exit(std::time::Duration::from_secs(30))
        .expect("the function exits at init");
    assert!(!status.success());
    let out = proc.output();
    assert!(
        out.contains("SPKEEPER_SECRETS_ARN") && out.contains("cannot read the secret"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launch_function_signs_users_in_with_entra_from_the_fixtures() {
    let entra = EntraStub::start().await;
    let fx = AwsFixture::with_entra(&entra, &[]).await;
    let rt = RuntimeApi::start().await;
    let (proc, logs) = fx.spawn(&bin(), &rt, "launch");

    // The fixtures as recorded: /connect for a SharePoint Online site...
    let r = rt
        .invoke(fixture("apigw-http-connect.json"))
        .await
        .1
        .response();
    assert_eq!(r["statusCode"], 302, "{r}");
    let location = r["headers"]["location"].as_str().unwrap();
    assert!(
        location.starts_with(&format!(
            "{}/organizations/oauth2/v2.0/authorize?",
            entra.authority()
        )),
        "{location}"
    );
    assert!(
        r["cookies"].to_string().contains("__Host-spkeeper_signin="),
        "{r}"
    );
    // ...and a callback whose state this function never issued: refused, as a page.
    let r = rt
        .invoke(fixture("apigw-http-callback.json"))
        .await
        .1
        .response();
    assert_eq!(r["statusCode"], 403, "{r}");
    assert!(r["body"].as_str().unwrap().contains("invalid_state"));
    // the id to quote to support is API Gateway's, as in its access log
    assert_eq!(r["headers"]["x-request-id"], "Fq4xWhz9DoEEMkE=", "{r}");

    // A whole sign-in for the stand-in's site.
    let mut connect = fixture("apigw-http-connect.json");
    let site = entra.site_url();
    connect["rawQueryString"] = Value::String(format!(
        "site={}",
        url::form_urlencoded::byte_serialize(site.as_bytes()).collect::<String>()
    ));
    connect["queryStringParameters"] = serde_json::json!({ "site": site });
    let r = rt.invoke(connect).await.1.response();
    assert_eq!(r["statusCode"], 302, "{r}");
    let q: std::collections::BTreeMap<String, String> =
        url::Url::parse(r["headers"]["location"].as_str().unwrap())
            .unwrap()
            .query_pairs()
            .into_owned()
            .collect();
    let cookie = r["cookies"][0]
        .as_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    entra.expect("lambda-code", &q["code_challenge"], &q["nonce"]);
    let mut callback = fixture("apigw-http-callback.json");
    callback["body"] = Value::String(format!("code=lambda-code&state={}", q["state"]));
    callback["cookies"] = serde_json::json!([cookie]);
    let r = rt.invoke(callback).await.1.response();
    assert_eq!(r["statusCode"], 303, "{r}");
    assert_eq!(r["headers"]["location"], "https://addin.example.com/status");
    assert!(
        r["cookies"]
            .to_string()
            .contains("__Host-spkeeper_session="),
        "{r}"
    );

    let id = GrantId::entra(REALM, ENTRA_OID);
    let stored = fx.aws().dynamo.load(&id).await.unwrap().expect("stored");
    assert_eq!(stored.record.kind, spkeeper::core::grant::Kind::Entra);
    assert_eq!(stored.record.site_url, site);
    drop(proc);
    let out = std::fs::read_to_string(logs.path().join("launch.stdout")).unwrap();
    assert_no_secrets(
        &out,
        &[
            ENTRA_SECRET.into(),
            "entra-rt-0".into(),
            "lambda-code".into(),
        ],
    );
}
