//! The `notify` binary, run through a local Lambda Runtime API with the SQS fixture: webhooks
//! signed per Standard Webhooks, and a partial batch response naming only what failed.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;

use spkeeper::config::Part;
use spkeeper_e2e::lambda::*;
use spkeeper_e2e::{Receiver, assert_no_secrets};

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
    let (_proc, _logs) = fx.spawn(&bin(), &rt, "notify");

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

/// The README's webhook secret rotation, step by step, on one running instance and without a
/// recycle: it reads its secret again as it ages (`SPKEEPER_SECRETS_REFRESH_SECONDS`, one
/// second here), signs with both secrets while the receivers move, then with the new one only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_notify_instance_follows_a_webhook_secret_rotation_without_a_recycle() {
    const NEW: &str = "whsec_cm90YXRlZC13ZWJob29rLXNlY3JldC01Njc4OQ==";
    let receiver = Receiver::start(WEBHOOK_SECRET).await;
    let fx = AwsFixture::new(&[
        ("SPKEEPER_WEBHOOK_URL", &receiver.url()),
        ("SPKEEPER_SECRETS_REFRESH_SECONDS", "1"),
    ])
    .await;
    let rt = RuntimeApi::start().await;
    let (_proc, _logs) = fx.spawn(&bin(), &rt, "notify");
    let deliver_one = async || {
        let mut one = fixture("sqs-notices.json");
        one["Records"].as_array_mut().unwrap().truncate(1);
        let before = receiver.received().len();
        let response = match rt.invoke(one).await.1 {
            Outcome::Response(v) => v,
            Outcome::Error(e) => panic!("{e}"),
        };
        let got = receiver.wait_for(before + 1, Duration::from_secs(10)).await;
        (response, got[before].clone())
    };

    let (response, got) = deliver_one().await;
    assert_eq!(response, json!({"batchItemFailures": []}));
    assert!(got.verifies_with(WEBHOOK_SECRET) && !got.verifies_with(NEW));

    // 1. The new secret as webhook_secret_secondary: every notice signed with both.
    fx.put_part(
        Part::WebhookSecret,
        json!({"webhook_secret": WEBHOOK_SECRET, "webhook_secret_secondary": NEW}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (response, got) = deliver_one().await;
    assert_eq!(response, json!({"batchItemFailures": []}));
    assert!(
        got.verifies_with(WEBHOOK_SECRET) && got.verifies_with(NEW),
        "a receiver with either secret verifies it"
    );

    // 2. The receivers moved: the new secret alone. The old receiver now refuses.
    fx.put_part(Part::WebhookSecret, json!({"webhook_secret": NEW}))
        .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (response, got) = deliver_one().await;
    assert!(got.verifies_with(NEW) && !got.verifies_with(WEBHOOK_SECRET));
    assert_eq!(
        response["batchItemFailures"].as_array().map(Vec::len),
        Some(1),
        "{response}"
    );
}

/// notify with `SPKEEPER_SECRETS_ARN` = `arns`: it must exit at init; what it printed.
async fn refused_start(fx: &mut AwsFixture, arns: Vec<String>) -> String {
    fx.env.insert("SPKEEPER_SECRETS_ARN".into(), arns.join(","));
    let rt = RuntimeApi::start().await;
    let (mut proc, _logs) = fx.spawn(&bin(), &rt, "notify");
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

/// The fixture's notices, put on moto's queue and received from it: an SQS event whose
/// receipt handles are real (so the function's visibility changes reach the queue).
async fn received_batch(fx: &AwsFixture, visibility: i32) -> serde_json::Value {
    let sqs = aws_sdk_sqs::Client::new(&fx.sdk);
    let mut event = fixture("sqs-notices.json");
    for r in event["Records"].as_array().unwrap() {
        sqs.send_message()
            .queue_url(&fx.queue_url)
            .message_body(r["body"].as_str().unwrap())
            .send()
            .await
            .unwrap();
    }
    let mut got = Vec::new();
    while got.len() < 2 {
        let out = receive(&sqs, &fx.queue_url, visibility, 1).await;
        got.extend(out);
    }
    for r in event["Records"].as_array_mut().unwrap() {
        let m = got
            .iter()
            .find(|m| m.body() == r["body"].as_str())
            .expect("each notice was received");
        r["messageId"] = json!(m.message_id().unwrap());
        r["receiptHandle"] = json!(m.receipt_handle().unwrap());
        r["attributes"]["ApproximateReceiveCount"] = json!(count_of(m).to_string());
    }
    event
}

async fn receive(
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
    visibility: i32,
    wait: i32,
) -> Vec<aws_sdk_sqs::types::Message> {
    sqs.receive_message()
        .queue_url(queue_url)
        .max_number_of_messages(10)
        .visibility_timeout(visibility)
        .wait_time_seconds(wait)
        .message_system_attribute_names(
            aws_sdk_sqs::types::MessageSystemAttributeName::ApproximateReceiveCount,
        )
        .send()
        .await
        .unwrap()
        .messages
        .unwrap_or_default()
}

fn count_of(m: &aws_sdk_sqs::types::Message) -> u32 {
    m.attributes()
        .and_then(|a| {
            a.get(&aws_sdk_sqs::types::MessageSystemAttributeName::ApproximateReceiveCount)
        })
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// A failed delivery is not left to the queue's fixed visibility timeout: the function hides
/// the message for its backoff by receive count (seconds after the first failure, hours after
/// many) and reports it as failed; the delivered one is not reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_delivery_is_hidden_for_its_backoff_by_receive_count_and_reported() {
    let refused = "ntc_9a8b7c6d5e4f30211203f4e5d6c7b8a9";
    let receiver = Receiver::start(WEBHOOK_SECRET).await;
    receiver.refuse(refused);
    let fx = AwsFixture::new(&[("SPKEEPER_WEBHOOK_URL", &receiver.url())]).await;
    let sqs = aws_sdk_sqs::Client::new(&fx.sdk);
    let rt = RuntimeApi::start().await;
    let (_proc, logs) = fx.spawn(&bin(), &rt, "notify");
    let is_refused =
        |m: &aws_sdk_sqs::types::Message| m.body().is_some_and(|b| b.contains(refused));

    // First failure (receive count 1): back after about 2 s, not after the 30 s it was
    // received with.
    let event = received_batch(&fx, 30).await;
    let refused_id = event["Records"][1]["messageId"].clone();
    let response = rt.invoke(event).await.1;
    assert_eq!(
        response,
        Outcome::Response(json!({"batchItemFailures": [{"itemIdentifier": refused_id}]}))
    );
    let started = std::time::Instant::now();
    let again = loop {
        let got = receive(&sqs, &fx.queue_url, 3, 1).await;
        if let Some(m) = got.into_iter().find(|m| is_refused(m)) {
            break m;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the refused notice did not come back within seconds: its visibility was not shortened to its backoff"
        );
    };
    assert_eq!(count_of(&again), 2);

    // As if it had failed fifteen times already: hidden for hours, not for the 3 s it was
    // just received with.
    let mut event = fixture("sqs-notices.json");
    let mut record = event["Records"][1].clone();
    record["messageId"] = json!(again.message_id().unwrap());
    record["receiptHandle"] = json!(again.receipt_handle().unwrap());
    record["attributes"]["ApproximateReceiveCount"] = json!("16");
    event["Records"] = json!([record]);
    let response = rt.invoke(event).await.1;
    assert_eq!(
        response,
        Outcome::Response(
            json!({"batchItemFailures": [{"itemIdentifier": again.message_id().unwrap()}]})
        )
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    let got = receive(&sqs, &fx.queue_url, 30, 2).await;
    assert!(
        !got.iter().any(is_refused),
        "a notice that failed sixteen times must stay hidden for hours"
    );

    let log = std::fs::read_to_string(logs.path().join("notify.stdout")).unwrap();
    assert!(log.contains("retry_in_seconds"), "{log}");
}
