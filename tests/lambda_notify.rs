//! The `notify` binary, run through a local Lambda Runtime API with the SQS fixture: webhooks
//! signed per Standard Webhooks, and a partial batch response naming only what failed.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;

use spkeeper::config::Part;
use spkeeper_e2e::lambda::*;
use spkeeper_e2e::{Proc, Receiver, assert_no_secrets};

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_notify"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_function_delivers_signed_webhooks_and_reports_only_failed_messages() {
    let receiver = Receiver::start(WEBHOOK_SECRET).await;
    // The second notice of the fixture will be refused by the receiver.
    receiver.refuse("ntc_9a8b7c6d5e4f30211203f4e5d6c7b8a9");
    let fx = AwsFixture::new(&[("SPKEEPER_WEBHOOK_URL", &receiver.url())]).await;
    // Of the secrets, notify is given only the webhook secret, as in the template.
    assert_eq!(
        fx.secrets_arn_for("notify"),
        fx.secret_arns[&Part::WebhookSecret]
    );
    let rt = RuntimeApi::start().await;
    let logs = tempfile::tempdir().unwrap();
    let _proc = Proc::spawn(
        &bin(),
        &[],
        &fx.env_for(&rt, "notify"),
        logs.path(),
        "notify",
    );

    let response = match rt.invoke(fixture("sqs-notices.json")).await.1 {
        Outcome::Response(v) => v,
        Outcome::Error(e) => panic!("{e}"),
    };
    assert_eq!(
        response,
        json!({"batchItemFailures": [{"itemIdentifier": "2e1424d4-f796-459a-8184-9c92662be6da"}]})
    );
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].id, "ntc_5f0c8f1e2d3c4b5a69788796a5b4c3d2");
    assert!(got[0].signature_valid, "signed per Standard Webhooks");
    assert_eq!(got[0].notice["type"], "refresh_token.expiring");

    // Everything delivered: an empty failure list.
    let mut one = fixture("sqs-notices.json");
    one["Records"].as_array_mut().unwrap().truncate(1);
    let response = match rt.invoke(one).await.1 {
        Outcome::Response(v) => v,
        Outcome::Error(e) => panic!("{e}"),
    };
    assert_eq!(response, json!({"batchItemFailures": []}));
}

/// notify with `SPKEEPER_SECRETS_ARN` = `arns`: it must exit at init; what it printed.
async fn refused_start(fx: &mut AwsFixture, arns: Vec<String>) -> String {
    fx.env.insert("SPKEEPER_SECRETS_ARN".into(), arns.join(","));
    let rt = RuntimeApi::start().await;
    let logs = tempfile::tempdir().unwrap();
    let mut proc = Proc::spawn(
        &bin(),
        &[],
        &fx.env_for(&rt, "notify"),
        logs.path(),
        "notify",
    );
    let status = proc
        .wait_exit(Duration::from_secs(30))
        .expect("the function exits at init");
    assert!(!status.success());
    proc.output()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_function_does_not_start_without_the_webhook_secret_and_names_it() {
    let mut fx = AwsFixture::new(&[("SPKEEPER_WEBHOOK_URL", "https://hooks.example.com/n")]).await;
    let others = [
        Part::ClientSecret,
        Part::TokenKeys,
        Part::LinkKey,
        Part::ApiKey,
    ]
    .iter()
    .map(|p| fx.secret_arns[p].clone())
    .collect();
    let out = refused_start(&mut fx, others).await;
    assert!(
        out.contains("SPKEEPER_WEBHOOK_SECRET") && out.contains("webhook_secret"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_function_refuses_a_field_given_by_two_secrets() {
    let mut fx = AwsFixture::new(&[("SPKEEPER_WEBHOOK_URL", "https://hooks.example.com/n")]).await;
    let other = spkeeper::testkit::moto::create_secret(
        &fx.sdk,
        &json!({"webhook_secret": "whsec_c2Vjb25kLXdlYmhvb2stc2VjcmV0LTAxMjM0"}),
    )
    .await;
    let arns = vec![fx.secret_arns[&Part::WebhookSecret].clone(), other];
    let out = refused_start(&mut fx, arns).await;
    assert!(
        out.contains("webhook_secret") && out.contains("more than one"),
        "{out}"
    );
    assert_no_secrets(&out, &[WEBHOOK_SECRET.into()]);
}
