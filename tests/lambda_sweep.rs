//! The `sweep` binary, run through a local Lambda Runtime API with the EventBridge fixture.

use std::path::PathBuf;

use chrono::{Duration, Utc};
use serde_json::Value;

use spkeeper::testkit::moto;
use spkeeper_e2e::Proc;
use spkeeper_e2e::lambda::*;

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sweep"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweep_function_queues_due_notices_on_sqs_once_however_often_it_runs() {
    let fx = AwsFixture::new(&[]).await;
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

    let rt = RuntimeApi::start().await;
    let logs = tempfile::tempdir().unwrap();
    let _proc = Proc::spawn(&bin(), &[], &fx.env_for(&rt, "sweep"), logs.path(), "sweep");

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
