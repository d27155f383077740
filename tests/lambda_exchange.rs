//! The `exchange` binary, run through a local Lambda Runtime API with the API Gateway fixture,
//! with an API key and with IAM authorization.

use std::path::PathBuf;

use chrono::{Duration, Utc};
use secrecy::ExposeSecret;
use serde_json::{Value, json};

use spkeeper::core::grant::{GrantId, Progress, refresh_token_expiry};
use spkeeper::ports::{GrantRecord, StandardTokens};
use spkeeper_e2e::Proc;
use spkeeper_e2e::lambda::*;

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_exchange"))
}

fn response(o: Outcome) -> Value {
    match o {
        Outcome::Response(v) => v,
        Outcome::Error(e) => panic!("the function failed: {e}"),
    }
}

fn body(r: &Value) -> Value {
    serde_json::from_str(r["body"].as_str().unwrap_or("null")).unwrap_or(Value::Null)
}

/// A grant as a launch would have stored it, with its refresh token sealed by the function's
/// own keys.
async fn seed(fx: &AwsFixture, acs: &AcsStub) -> GrantId {
    let ctx = fx.context();
    let id = GrantId::derive(REALM, "exchange-user");
    let nbf = Utc::now() - Duration::hours(1);
    let record = GrantRecord {
        id: id.clone(),
        rev: 0,
        realm: REALM.into(),
        site_url: "https://contoso.sharepoint.com/sites/sales".into(),
        app_web_url: None,
        standard_tokens: StandardTokens::default(),
        sts_uri: acs.sts_uri(),
        target_principal: "00000003-0000-0ff1-ce00-000000000000".into(),
        user: None,
        rt_version: nbf.timestamp(),
        rt_expires_at: refresh_token_expiry(nbf),
        progress: Progress::None,
        next_due_at: None,
        created_at: nbf,
        updated_at: nbf,
    };
    let sealed = ctx
        .secrets
        .key_ring
        .seal(b"exchange-refresh-token", id.as_str())
        .unwrap();
    ctx.grants
        .put_grant(None, &record, &sealed, None)
        .await
        .unwrap();
    id
}

fn token_event(grant: &GrantId, authorization: Option<&str>, iam: bool) -> Value {
    let mut e = fixture("apigw-http-token-iam.json");
    e["body"] =
        Value::String(json!({"grant_id": grant, "host": "contoso.sharepoint.com"}).to_string());
    if let Some(a) = authorization {
        e["headers"]["authorization"] = Value::String(a.into());
    }
    if !iam {
        e["requestContext"]
            .as_object_mut()
            .unwrap()
            .remove("authorizer");
    }
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_function_issues_tokens_to_holders_of_the_api_key() {
    let acs = AcsStub::start().await;
    let fx = AwsFixture::new(&[("SPKEEPER_STS_HOSTS", &acs.addr.to_string())]).await;
    let id = seed(&fx, &acs).await;
    let rt = RuntimeApi::start().await;
    let logs = tempfile::tempdir().unwrap();
    let _proc = Proc::spawn(
        &bin(),
        &[],
        &fx.env_for(&rt, "exchange"),
        logs.path(),
        "exchange",
    );

    let bearer = format!("Bearer {API_KEY}");
    let r = response(rt.invoke(token_event(&id, Some(&bearer), false)).await.1);
    assert_eq!(r["statusCode"], 200, "{r}");
    let b = body(&r);
    assert_eq!(b["access_token"], "lambda-access-token-1");
    assert_eq!(b["grant"]["id"], id.as_str());
    // cached: a second call does not reach ACS
    let r = response(rt.invoke(token_event(&id, Some(&bearer), false)).await.1);
    assert_eq!((r["statusCode"].as_u64(), acs.calls()), (Some(200), 1));

    let r = response(rt.invoke(token_event(&id, None, true)).await.1);
    assert_eq!(
        (r["statusCode"].as_u64(), body(&r)["error"].as_str()),
        (Some(401), Some("unauthorized"))
    );
    let r = response(
        rt.invoke(token_event(
            &GrantId::derive("x", "y"),
            Some(&bearer),
            false,
        ))
        .await
        .1,
    );
    assert_eq!(
        (r["statusCode"].as_u64(), body(&r)["error"].as_str()),
        (Some(404), Some("unknown_grant"))
    );
    let _ = fx.context().secrets.client_secret.expose_secret();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_function_with_iam_auth_trusts_only_api_gateways_iam_caller() {
    let acs = AcsStub::start().await;
    let fx = AwsFixture::new(&[
        ("SPKEEPER_STS_HOSTS", &acs.addr.to_string()),
        ("SPKEEPER_TOKEN_AUTH", "iam"),
    ])
    .await;
    let id = seed(&fx, &acs).await;
    let rt = RuntimeApi::start().await;
    let logs = tempfile::tempdir().unwrap();
    let _proc = Proc::spawn(
        &bin(),
        &[],
        &fx.env_for(&rt, "exchange"),
        logs.path(),
        "exchange",
    );

    // The fixture as recorded: an IAM-signed call (API Gateway checked the signature).
    let (_, o) = rt.invoke(fixture("apigw-http-token-iam.json")).await;
    let r = response(o);
    assert_eq!(
        (r["statusCode"].as_u64(), body(&r)["error"].as_str()),
        (Some(404), Some("unknown_grant"))
    );
    let r = response(rt.invoke(token_event(&id, None, true)).await.1);
    assert_eq!(r["statusCode"], 200, "{r}");
    // without API Gateway's IAM identity, even with the API key, nobody gets in
    let r = response(
        rt.invoke(token_event(&id, Some(&format!("Bearer {API_KEY}")), false))
            .await
            .1,
    );
    assert_eq!(
        (r["statusCode"].as_u64(), body(&r)["error"].as_str()),
        (Some(401), Some("unauthorized"))
    );
}
