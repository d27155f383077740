//! The `sweep` binary, run through a local Lambda Runtime API with the EventBridge fixture.

use std::path::PathBuf;

use chrono::{Duration, Utc};
use serde_json::Value;

use spkeeper::core::grant::{GrantId, Progress};
use spkeeper::ports::{GrantRecord, StandardTokens};
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
    let id = GrantId::derive(REALM, "sweep-user");
    let record = GrantRecord {
        id: id.clone(),
        rev: 0,
        realm: REALM.into(),
        site_url: "https://contoso.sharepoint.com/sites/sales".into(),
        app_web_url: None,
        standard_tokens: StandardTokens::default(),
        sts_uri: "https://accounts.accesscontrol.windows.net/tokens/OAuth/2".into(),
        target_principal: "00000003-0000-0ff1-ce00-000000000000".into(),
        user: None,
        rt_version: (expires - Duration::days(182)).timestamp(),
        rt_expires_at: expires,
        progress: Progress::None,
        next_due_at: Some(expires - Duration::days(30)),
        created_at: Utc::now(),
        updated_at: Utc::now(),
    };
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
