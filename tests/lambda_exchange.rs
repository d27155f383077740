//! The `exchange` binary, run through a local Lambda Runtime API with the API Gateway fixture,
//! with an API key and with IAM authorization.

use std::path::PathBuf;

use chrono::{Duration, Utc};
use serde_json::{Value, json};

use spkeeper::config::Part;
use spkeeper::core::grant::{GrantId, refresh_token_expiry};
use spkeeper_e2e::Proc;
use spkeeper_e2e::lambda::*;

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_exchange"))
}

/// A grant as a launch would have stored it, with its refresh token sealed by the function's
/// own keys.
async fn seed(fx: &AwsFixture, acs: &AcsStub) -> GrantId {
    seed_for(fx, acs, "exchange-user").await
}

async fn seed_for(fx: &AwsFixture, acs: &AcsStub, user: &str) -> GrantId {
    let ctx = fx.context();
    let nbf = Utc::now() - Duration::hours(1);
    let record = grant_record(user, &acs.sts_uri(), nbf, refresh_token_expiry(nbf));
    let id = record.id.clone();
    let sealed = ctx
        .secrets
        .get()
        .key_ring
        .seal(
            b"exchange-refresh-token",
            &spkeeper::core::seal::Place::RefreshToken {
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

/// A running `exchange` with a seeded grant, its ACS stand-in, and where its logs go.
struct Running {
    fx: AwsFixture,
    acs: AcsStub,
    id: GrantId,
    rt: RuntimeApi,
    logs: tempfile::TempDir,
    proc: Proc,
}

async fn start(acs: AcsStub, extra: &[(&str, &str)]) -> Running {
    let sts = acs.addr.to_string();
    let mut env = vec![("SPKEEPER_STS_HOSTS", sts.as_str())];
    env.extend_from_slice(extra);
    let fx = AwsFixture::new(&env).await;
    let id = seed(&fx, &acs).await;
    let rt = RuntimeApi::start().await;
    let (proc, logs) = fx.spawn(&bin(), &rt, "exchange");
    Running {
        fx,
        acs,
        id,
        rt,
        logs,
        proc,
    }
}

/// `POST /token` for `grant` with the API key: the function's answer.
async fn with_api_key(ex: &Running, grant: &GrantId) -> Value {
    let bearer = format!("Bearer {API_KEY}");
    let (_, outcome) = ex.rt.invoke(token_event(grant, Some(&bearer), false)).await;
    outcome.response()
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
    let ex = start(AcsStub::start().await, &[]).await;

    let bearer = format!("Bearer {API_KEY}");
    let r = with_api_key(&ex, &ex.id).await;
    assert_eq!(r["statusCode"], 200, "{r}");
    let b = body_of(&r);
    assert_eq!(b["access_token"], "lambda-access-token-1");
    assert_eq!(b["grant"]["id"], ex.id.as_str());
    // cached: a second call does not reach ACS
    let r = with_api_key(&ex, &ex.id).await;
    assert_eq!((r["statusCode"].as_u64(), ex.acs.calls()), (Some(200), 1));

    let r = ex
        .rt
        .invoke(token_event(&ex.id, None, true))
        .await
        .1
        .response();
    assert_eq!(
        (r["statusCode"].as_u64(), body_of(&r)["error"].as_str()),
        (Some(401), Some("unauthorized"))
    );
    let stranger = token_event(&GrantId::derive("x", "y"), Some(&bearer), false);
    let r = ex.rt.invoke(stranger).await.1.response();
    assert_eq!(
        (r["statusCode"].as_u64(), body_of(&r)["error"].as_str()),
        (Some(404), Some("unknown_grant"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_function_with_iam_auth_trusts_only_api_gateways_iam_caller() {
    let ex = start(AcsStub::start().await, &[("SPKEEPER_TOKEN_AUTH", "iam")]).await;

    // The fixture as recorded: an IAM-signed call (API Gateway checked the signature).
    let (_, o) = ex.rt.invoke(fixture("apigw-http-token-iam.json")).await;
    let r = o.response();
    assert_eq!(
        (r["statusCode"].as_u64(), body_of(&r)["error"].as_str()),
        (Some(404), Some("unknown_grant"))
    );
    let r = ex
        .rt
        .invoke(token_event(&ex.id, None, true))
        .await
        .1
        .response();
    assert_eq!(r["statusCode"], 200, "{r}");
    // without API Gateway's IAM identity, even with the API key, nobody gets in
    let with_key = token_event(&ex.id, Some(&format!("Bearer {API_KEY}")), false);
    let r = ex.rt.invoke(with_key).await.1.response();
    assert_eq!(
        (r["statusCode"].as_u64(), body_of(&r)["error"].as_str()),
        (Some(401), Some("unauthorized"))
    );
}

/// The template's `sts_rejected_client` alarm counts log lines whose JSON has
/// `fields.event = "sts_rejected_client"`: this is the line the function writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_function_logs_the_event_the_sts_rejected_client_alarm_counts() {
    let mut ex = start(AcsStub::refusing_the_client().await, &[]).await;
    let with_key = token_event(&ex.id, Some(&format!("Bearer {API_KEY}")), false);
    let r = ex.rt.invoke(with_key).await.1.response();
    assert_eq!(
        (r["statusCode"].as_u64(), body_of(&r)["error"].as_str()),
        (Some(502), Some("sts_rejected_client"))
    );
    ex.proc.stop();
    let out = std::fs::read_to_string(ex.logs.path().join("exchange.stdout")).unwrap();
    let events: Vec<Value> = out
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["fields"]["event"] == "sts_rejected_client")
        .collect();
    assert!(
        !events.is_empty(),
        "no sts_rejected_client event in:\n{out}"
    );
    assert_eq!(events[0]["level"], "ERROR");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_function_redeems_entra_grants_per_scope_and_stores_each_rotation() {
    let entra = EntraStub::start().await;
    let fx = AwsFixture::with_entra(&entra, &[("SPKEEPER_TOKEN_AUTH", "iam")]).await;
    // An Entra grant as a sign-in stored it: refresh token entra-rt-0.
    let ctx = fx.context();
    let id = entra.seed_grant(&ctx, 0).await;
    let rt = RuntimeApi::start().await;
    let (_proc, _logs) = fx.spawn(&bin(), &rt, "exchange");

    for (n, scope) in [
        (1, "https://graph.microsoft.com/.default"),
        (2, "https://graph.microsoft.com/User.Read"),
    ] {
        let mut e = fixture("apigw-http-token-entra.json");
        e["body"] = Value::String(json!({"grant_id": id.as_str(), "scope": scope}).to_string());
        let r = rt.invoke(e).await.1.response();
        assert_eq!(r["statusCode"], 200, "{r}");
        let body = body_of(&r);
        assert_eq!(body["resource"], scope);
        assert_eq!(body["grant"]["kind"], "entra");
        // the rotated refresh token was stored before the answer
        assert_eq!(entra.current(), n);
        assert_eq!(
            EntraStub::stored_refresh_token(&ctx, &id).await,
            format!("entra-rt-{n}")
        );
    }
    assert_eq!(entra.refreshes(), 2);
}

/// `POST /token` for `grant` at another SharePoint host of the tenant (a host not cached yet:
/// the call reaches ACS), with the API key.
async fn for_host(ex: &Running, host: &str) -> Value {
    let mut e = token_event(&ex.id, Some(&format!("Bearer {API_KEY}")), false);
    e["body"] = Value::String(json!({"grant_id": ex.id, "host": host}).to_string());
    ex.rt.invoke(e).await.1.response()
}

/// The README's ACS client secret rotation on a running instance: the new secret registered
/// beside the old one, the secret's fields swapped (new primary, old secondary), the old one
/// expiring at ACS; the instance, reading its secrets every second here, exchanges with the
/// new one, without a redeploy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_exchange_instance_exchanges_with_a_rotated_client_secret_without_a_redeploy() {
    const NEW: &str = "cm90YXRlZC1jbGllbnQtc2VjcmV0LTIwMjc=";
    let ex = start(
        AcsStub::start().await,
        &[("SPKEEPER_SECRETS_REFRESH_SECONDS", "1")],
    )
    .await;
    ex.acs.accept_secrets(&[CLIENT_SECRET]);
    let r = for_host(&ex, "contoso.sharepoint.com").await;
    assert_eq!(r["statusCode"], 200, "{r}");

    ex.acs.accept_secrets(&[CLIENT_SECRET, NEW]);
    ex.fx
        .put_part(
            Part::ClientSecret,
            json!({"client_secret": NEW, "client_secret_secondary": CLIENT_SECRET}),
        )
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    ex.acs.accept_secrets(&[NEW]);

    let r = for_host(&ex, "fabrikam.sharepoint.com").await;
    assert_eq!(r["statusCode"], 200, "{r}");
    assert_eq!(ex.acs.calls(), 2, "one exchange per host, none refused");
}

/// The README's API key rotation on a running instance: the old key as `api_key_secondary`
/// and the new one as `api_key` — both accepted — then the secondary removed — the old one
/// refused. No redeploy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_exchange_instance_follows_an_api_key_rotation_without_a_redeploy() {
    const NEW: &str = "rotated-api-key-0123456789abcdef";
    let ex = start(
        AcsStub::start().await,
        &[("SPKEEPER_SECRETS_REFRESH_SECONDS", "1")],
    )
    .await;
    let with = async |key: &str| {
        let e = token_event(&ex.id, Some(&format!("Bearer {key}")), false);
        ex.rt.invoke(e).await.1.response()["statusCode"].clone()
    };
    assert_eq!(with(API_KEY).await, 200);
    assert_eq!(with(NEW).await, 401);

    ex.fx
        .put_part(
            Part::ApiKey,
            json!({"api_key": NEW, "api_key_secondary": API_KEY}),
        )
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(with(NEW).await, 200);
    assert_eq!(with(API_KEY).await, 200, "the old key, during the overlap");

    ex.fx.put_part(Part::ApiKey, json!({"api_key": NEW})).await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(with(NEW).await, 200);
    assert_eq!(with(API_KEY).await, 401, "the old key, after the overlap");
}

/// Entra refusing the app's credential makes an instance read its secrets at once: a
/// credential rotated in Secrets Manager and the app registration together (no overlap) is
/// used on the next redemption, not five minutes later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entra_refusal_of_the_credential_reads_the_secrets_again_at_once() {
    const NEW: &str = "entra-secret-rotated-at-once";
    let entra = EntraStub::start().await;
    let fx = AwsFixture::with_entra(&entra, &[("SPKEEPER_TOKEN_AUTH", "iam")]).await;
    let id = entra.seed_grant(&fx.context(), 0).await;
    let rt = RuntimeApi::start().await;
    let (_proc, _logs) = fx.spawn(&bin(), &rt, "exchange");
    let mut e = fixture("apigw-http-token-entra.json");
    e["body"] = Value::String(json!({"grant_id": id.as_str()}).to_string());
    let r = rt.invoke(e.clone()).await.1.response();
    assert_eq!(r["statusCode"], 200, "{r}");

    fx.put_part(Part::EntraCredential, json!({"entra_client_secret": NEW}))
        .await;
    entra.accept_secrets(&[NEW]);
    // Reads are at least a second apart, whatever asks.
    tokio::time::sleep(spkeeper::secrets_cell::MIN_GAP).await;
    e["body"] = Value::String(
        json!({"grant_id": id.as_str(), "scope": "https://graph.microsoft.com/User.Read"})
            .to_string(),
    );
    let r = rt.invoke(e).await.1.response();
    assert_eq!(r["statusCode"], 200, "{r}");
    assert_eq!(entra.refreshes(), 2);
}

/// The README's Entra credential rotation on a running instance, without a redeploy: the new
/// secret is registered beside the old one, put in Secrets Manager, and the old one removed
/// from the registration; the instance (reading its secrets every second here) redeems with
/// the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_exchange_instance_redeems_with_a_rotated_entra_secret_without_a_redeploy() {
    const NEW: &str = "entra-secret-rotated-2027";
    let entra = EntraStub::start().await;
    let fx = AwsFixture::with_entra(
        &entra,
        &[
            ("SPKEEPER_TOKEN_AUTH", "iam"),
            ("SPKEEPER_SECRETS_REFRESH_SECONDS", "1"),
        ],
    )
    .await;
    let id = entra.seed_grant(&fx.context(), 0).await;
    let rt = RuntimeApi::start().await;
    let (_proc, _logs) = fx.spawn(&bin(), &rt, "exchange");
    // Each scope is a redemption of its own (nothing cached for it yet).
    let token = async |scope: &str| {
        let mut e = fixture("apigw-http-token-entra.json");
        e["body"] = Value::String(json!({"grant_id": id.as_str(), "scope": scope}).to_string());
        rt.invoke(e).await.1.response()
    };
    let r = token("https://graph.microsoft.com/.default").await;
    assert_eq!(r["statusCode"], 200, "{r}");

    entra.accept_secrets(&[ENTRA_SECRET, NEW]);
    fx.put_part(Part::EntraCredential, json!({"entra_client_secret": NEW}))
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    entra.accept_secrets(&[NEW]);

    let r = token("https://graph.microsoft.com/User.Read").await;
    assert_eq!(r["statusCode"], 200, "{r}");
    assert_eq!(entra.refreshes(), 2);
}

/// A token key added and made active while an instance runs (the README's rotation): the
/// grants a newer instance seals with it open here too. The instance reads its secrets again
/// when a sealed value names a key it does not know, without a redeploy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_instance_opens_what_was_sealed_with_a_key_added_after_it_started() {
    let mut ex = start(AcsStub::start().await, &[]).await;
    let r = with_api_key(&ex, &ex.id).await;
    assert_eq!(r["statusCode"], 200, "{r}");

    ex.fx.rotate_token_keys("k-rotated").await;
    // An instance reads its secrets at most once a second, whatever asks.
    tokio::time::sleep(spkeeper::secrets_cell::MIN_GAP).await;
    let sealed_after = seed_for(&ex.fx, &ex.acs, "rotated-user").await;
    let stored = ex
        .fx
        .context()
        .grants
        .load(&sealed_after)
        .await
        .unwrap()
        .unwrap();
    assert!(
        stored
            .sealed_refresh_token
            .as_deref()
            .is_some_and(|s| s.split('.').nth(1) == Some("k-rotated")),
        "the new grant is sealed with the new key"
    );
    let r = with_api_key(&ex, &sealed_after).await;
    assert_eq!(r["statusCode"], 200, "{r}");
    assert_eq!(body_of(&r)["grant"]["id"], sealed_after.as_str());
    // What it sealed before the rotation still opens (the old key stays in the ring).
    let r = with_api_key(&ex, &ex.id).await;
    assert_eq!(r["statusCode"], 200, "{r}");
}
