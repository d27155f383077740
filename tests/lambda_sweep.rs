//! The `sweep` binary, run through a local Lambda Runtime API with the EventBridge fixture.

use std::path::PathBuf;

use chrono::{Duration, Utc};
use serde_json::Value;

use spkeeper::config::Part;
use spkeeper::testkit::moto;
use spkeeper_e2e::lambda::*;
use spkeeper_e2e::{Proc, assert_no_secrets};

/// The sweep function's timeout in template.yaml (tests/template.rs holds it to at least
/// 120 s): the sweep keeps its last 45 s for its relay and the summary.
const SWEEP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sweep"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweep_function_queues_due_notices_on_sqs_once_however_often_it_runs() {
    let fx = AwsFixture::new(&[]).await;
    // Of the secrets, the sweep is given only the link key, as in the template.
    assert_eq!(fx.secrets_arn_for("sweep"), fx.secret_arns[&Part::LinkKey]);
    let ctx = fx.context();
    // A grant whose refresh token expires in ten days: the 30-day stage is overdue.
    let expires = Utc::now() + Duration::days(10);
    let mut record = grant_record(
        "sweep-user",
        "https://accounts.accesscontrol.windows.net/tokens/OAuth/2",
        expires - Duration::days(182),
        expires,
    );
    record.next_due_at = Some(expires - Duration::days(30));
    let id = record.id.clone();
    ctx.grants
        .put_grant(None, &record, "v1.k.sealed", None)
        .await
        .unwrap();

    let rt = RuntimeApi::with_timeout(SWEEP_TIMEOUT).await;
    let (_proc, _logs) = fx.spawn(&bin(), &rt, "sweep");

    let summary = match rt.invoke(fixture("eventbridge-scheduled.json")).await.1 {
        Outcome::Response(v) => v,
        Outcome::Error(e) => panic!("{e}"),
    };
    assert_eq!(summary["notices"]["refresh_token.expiring"], 1, "{summary}");
    assert_eq!(summary["relayed"], 1, "{summary}");
    let again = match rt.invoke(fixture("eventbridge-scheduled.json")).await.1 {
        Outcome::Response(v) => v,
        Outcome::Error(e) => panic!("{e}"),
    };
    assert_eq!(again["notices"]["refresh_token.expiring"], 0, "{again}");

    let bodies = moto::drain(&fx.sdk, &fx.queue_url).await;
    assert_eq!(bodies.len(), 1);
    let n: Value = serde_json::from_str(&bodies[0]).unwrap();
    assert_eq!(
        (n["type"].as_str(), n["grant"]["id"].as_str()),
        (Some("refresh_token.expiring"), Some(id.as_str()))
    );
    assert_eq!(n["days_left"], 10);
    assert!(
        n["renew_url"]
            .as_str()
            .unwrap()
            .starts_with("https://addin.example.com/renew/")
    );
}

/// The sweep with `SPKEEPER_SECRETS_ARN` = the secrets of `parts`, and its Runtime API.
async fn spawn_with(parts: &[Part]) -> (RuntimeApi, tempfile::TempDir, Proc) {
    let mut fx = AwsFixture::new(&[]).await;
    let arns: Vec<String> = parts.iter().map(|p| fx.secret_arns[p].clone()).collect();
    fx.env.insert("SPKEEPER_SECRETS_ARN".into(), arns.join(","));
    let rt = RuntimeApi::with_timeout(SWEEP_TIMEOUT).await;
    let (proc, logs) = fx.spawn(&bin(), &rt, "sweep");
    (rt, logs, proc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweep_function_does_not_start_without_the_link_key_and_names_it() {
    let (_rt, _logs, mut proc) = spawn_with(&[
        Part::ClientSecret,
        Part::TokenKeys,
        Part::ApiKey,
        Part::WebhookSecret,
    ])
    .await;
    let status = proc
        .wait_exit(std::time::Duration::from_secs(30))
        .expect("the function exits at init");
    assert!(!status.success());
    let out = proc.output();
    assert!(
        out.contains("link_key") && out.contains("is required"),
        "{out}"
    );
}

/// Given every secret, the sweep still keeps only the link key, and says the rest should not
/// be given to it (least privilege is the template's job; this is the function's part).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweep_function_given_every_secret_warns_and_uses_only_the_link_key() {
    let (rt, _logs, mut proc) = spawn_with(&Part::ALL).await;
    let summary = rt
        .invoke(fixture("eventbridge-scheduled.json"))
        .await
        .1
        .response();
    assert_eq!(summary["examined"], 0, "{summary}");
    proc.stop();
    let out = proc.output();
    let warning = out
        .lines()
        .find(|l| l.contains("does not use"))
        .unwrap_or_else(|| panic!("no warning: {out}"));
    for field in ["client_secret", "token_keys", "api_key", "webhook_secret"] {
        assert!(warning.contains(field), "{warning}");
    }
    assert!(!warning.contains("link_key"), "{warning}");
    assert_no_secrets(
        &out,
        &[CLIENT_SECRET.into(), API_KEY.into(), WEBHOOK_SECRET.into()],
    );
}

/// An Entra grant idle for 40 days (keep-alive after 30 by default): the scheduled sweep
/// redeems it with Entra, stores the new refresh token (its 90 days start over) and queues no
/// notice; the next run finds nothing due.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweep_function_keeps_idle_entra_grants_alive_and_stores_the_rotation() {
    let entra = EntraStub::start().await;
    let fx = AwsFixture::with_entra(&entra, &[]).await;
    // With the keep-alive on, the sweep reads the Entra credential and the token keys too.
    let arns = fx.secrets_arn_for("sweep");
    for part in [Part::LinkKey, Part::TokenKeys, Part::EntraCredential] {
        assert!(arns.contains(&fx.secret_arns[&part]), "{part:?} in {arns}");
    }
    let ctx = fx.context();
    let id = entra.seed_grant(&ctx, 40).await;

    let rt = RuntimeApi::with_timeout(SWEEP_TIMEOUT).await;
    let (mut proc, _logs) = fx.spawn(&bin(), &rt, "sweep");
    let summary = rt
        .invoke(fixture("eventbridge-scheduled.json"))
        .await
        .1
        .response();
    assert_eq!(
        (summary["examined"].as_u64(), summary["kept_alive"].as_u64()),
        (Some(1), Some(1)),
        "{summary}"
    );
    assert_eq!(entra.refreshes(), 1);
    assert_eq!(
        EntraStub::stored_refresh_token(&ctx, &id).await,
        "entra-rt-1"
    );
    let g = ctx.grants.load(&id).await.unwrap().unwrap().record;
    let left = g.rt_expires_at - Utc::now();
    assert!(left > Duration::days(89), "{left}");

    let again = rt
        .invoke(fixture("eventbridge-scheduled.json"))
        .await
        .1
        .response();
    assert_eq!(again["examined"], 0, "{again}");
    assert_eq!(entra.refreshes(), 1);
    assert!(moto::drain(&fx.sdk, &fx.queue_url).await.is_empty());
    proc.stop();
    assert_no_secrets(
        &proc.output(),
        &[
            ENTRA_SECRET.into(),
            "entra-rt-0".into(),
            "entra-rt-1".into(),
        ],
    );
}
