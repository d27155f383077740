//! `/renew`, `/status`, `/healthz`, and the sweep over the real store.

mod common;

use std::collections::HashMap;

use chrono::Duration;
use serde_json::Value;
use url::Url;

use common::*;
use spkeeper::core::grant::Progress;

async fn launched(h: &Harness, user: &str) -> spkeeper::core::grant::GrantId {
    assert_eq!(h.launch(&h.token(user)).await.status().as_u16(), 303);
    h.grant_id(user)
}

fn renew_path(link: &str) -> String {
    let u = Url::parse(link).unwrap();
    format!("{}?{}", u.path(), u.query().unwrap())
}

#[tokio::test]
async fn renew_link_redirects_to_the_stored_hosts_app_redirect() {
    let h = Harness::new().await;
    let id = launched(&h, "megan").await;
    let link = h.ctx.renew_url(&id, h.now());
    let resp = h.get(&renew_path(&link), &[]).await;
    assert_eq!(resp.status().as_u16(), 302);
    let location = Url::parse(resp.headers()["location"].to_str().unwrap()).unwrap();
    assert_eq!(
        location.as_str().split('?').next().unwrap(),
        format!("{}/_layouts/15/AppRedirect.aspx", h.stub.site_url())
    );
    let q: HashMap<_, _> = location.query_pairs().into_owned().collect();
    assert_eq!(q["client_id"], CLIENT_ID);
    assert_eq!(
        q["redirect_uri"],
        "https://addin.example.com/launch?{StandardTokens}&SPHasRedirectedToSharePoint=1"
    );
}

#[tokio::test]
async fn tampered_renew_link_is_invalid_link_with_no_redirect() {
    let h = Harness::new().await;
    let id = launched(&h, "megan").await;
    let other = launched(&h, "other").await;
    let link = renew_path(&h.ctx.renew_url(&id, h.now()));
    let cases = [
        link.replace(id.as_str(), other.as_str()),
        link.replace("sig=", "sig=A"),
        format!("/renew/{id}"),
        format!("/renew/{id}?exp=1&sig=abc"),
        "/renew/not-a-grant?exp=1&sig=abc".to_string(),
    ];
    for path in cases {
        let resp = h.get(&path, &[]).await;
        assert!(resp.headers().get("location").is_none());
        assert_error(resp, 403, "invalid_link").await;
    }
}

#[tokio::test]
async fn expired_renew_link_is_link_expired() {
    let h = Harness::new().await;
    let id = launched(&h, "megan").await;
    let link = renew_path(&h.ctx.renew_url(&id, h.now()));
    h.clock.advance(Duration::days(45) + Duration::minutes(1));
    let resp = h.get(&link, &[("accept", "text/html")]).await;
    assert_eq!(resp.status().as_u16(), 403);
    assert!(body_text(resp).await.contains("link_expired"));
    assert_error(h.get(&link, &[]).await, 403, "link_expired").await;
}

#[tokio::test]
async fn renew_link_for_a_forgotten_grant_is_unknown_grant() {
    let h = Harness::new().await;
    let id = h.grant_id("never-launched");
    let link = renew_path(&h.ctx.renew_url(&id, h.now()));
    assert_error(h.get(&link, &[]).await, 404, "unknown_grant").await;
}

#[tokio::test]
async fn renew_link_to_a_host_no_longer_allowed_is_host_not_allowed() {
    let h = Harness::new().await;
    let id = launched(&h, "megan").await;
    // the same data under a configuration that no longer allows the stored host
    let strict = Harness::with(Options {
        extra_env: vec![("SPKEEPER_ALLOWED_SP_HOSTS", "contoso.sharepoint.com".into())],
        ..Options::default()
    })
    .await;
    let stored = h.store_load(&id).await;
    strict
        .ctx
        .grants
        .put_grant(
            None,
            &stored.record,
            stored.sealed_refresh_token.as_deref().unwrap(),
            None,
        )
        .await
        .unwrap();
    let link = renew_path(&strict.ctx.renew_url(&id, strict.now()));
    let resp = strict.get(&link, &[]).await;
    assert!(resp.headers().get("location").is_none());
    assert_error(resp, 403, "host_not_allowed").await;
}

#[tokio::test]
async fn status_without_a_session_explains_how_to_connect() {
    let h = Harness::new().await;
    let resp = h.get("/status", &[("accept", "text/html")]).await;
    assert_eq!(resp.status().as_u16(), 401);
    let page = body_text(resp).await;
    assert!(
        page.contains("Open the add-in from your SharePoint site"),
        "{page}"
    );
    assert_error(
        h.get("/status", &[("cookie", "spkeeper_session=forged.1.x")])
            .await,
        401,
        "no_session",
    )
    .await;
}

#[tokio::test]
async fn status_with_the_launch_cookie_shows_the_grant() {
    let h = Harness::new().await;
    let resp = h.launch(&h.token("megan")).await;
    let cookie = resp.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let resp = h.get("/status", &[("cookie", &cookie)]).await;
    assert_eq!(resp.status().as_u16(), 200);
    let page = body_text(resp).await;
    assert!(page.contains(&h.stub.site_url()));
    assert!(page.contains("Megan Bowen"));
    assert!(page.contains("Connected until"));
    assert!(page.contains("/renew/"));
    assert!(page.contains("Renew now"));
}

#[tokio::test]
async fn healthz_is_ok_and_unknown_routes_are_json_404() {
    let h = Harness::new().await;
    let resp = h.get("/healthz", &[]).await;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(body_json(resp).await, serde_json::json!({"status": "ok"}));
    assert_error(h.get("/nope", &[]).await, 404, "not_found").await;
    assert_error(h.get("/launch", &[]).await, 405, "method_not_allowed").await;
}

fn types(notices: &[Value]) -> Vec<String> {
    notices
        .iter()
        .map(|n| n["type"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn sweep_sends_each_stage_once_then_expired_once() {
    let h = Harness::new().await;
    let id = launched(&h, "megan").await;
    let exp = h.store_load(&id).await.record.rt_expires_at;
    let mut seen = Vec::new();
    for (at, expected) in [
        (exp - Duration::days(31), None),
        (
            exp - Duration::days(30),
            Some(("refresh_token.expiring", 30)),
        ),
        (exp - Duration::days(29), None),
        (exp - Duration::days(7), Some(("refresh_token.expiring", 7))),
        (exp - Duration::days(1), Some(("refresh_token.expiring", 1))),
        (exp, Some(("refresh_token.expired", 0))),
        (exp + Duration::days(3), None),
    ] {
        h.clock.set(at);
        let first = h.sweep.run(at, false).await.unwrap();
        let repeat = h.sweep.run(at, false).await.unwrap();
        assert_eq!(repeat.total_notices(), 0, "a repeat sweep sends nothing");
        let queued = h.queued().await;
        let new: Vec<Value> = queued[seen.len()..].to_vec();
        seen = queued;
        match expected {
            None => assert!(new.is_empty(), "nothing due at {at}: {new:?}"),
            Some((t, days)) => {
                assert_eq!(types(&new), vec![t.to_string()], "at {at}");
                assert_eq!(new[0]["days_left"], days);
                assert_eq!(new[0]["grant"]["id"], id.as_str());
                assert_eq!(new[0]["grant"]["user"]["email"], "megan@contoso.com");
                assert_eq!(first.notices[t], 1);
            }
        }
    }
    assert_eq!(h.store_load(&id).await.record.progress, Progress::Expired);
}

#[tokio::test]
async fn late_sweep_sends_only_the_nearest_due_stage() {
    let h = Harness::new().await;
    let id = launched(&h, "megan").await;
    let exp = h.store_load(&id).await.record.rt_expires_at;
    let at = exp - Duration::days(3);
    let s = h.sweep.run(at, false).await.unwrap();
    assert_eq!(s.notices["refresh_token.expiring"], 1);
    let q = h.queued().await;
    assert_eq!(q.len(), 1);
    assert_eq!(q[0]["days_left"], 3);
    assert_eq!(
        h.store_load(&id).await.record.progress,
        Progress::Expiring(7)
    );
}

#[tokio::test]
async fn overlapping_sweeps_send_one_notice_per_grant_and_stage() {
    let h = Harness::new().await;
    for i in 0..40 {
        launched(&h, &format!("user{i}")).await;
    }
    let exp = h.grants().await[0].rt_expires_at;
    let at = exp - Duration::days(30) + Duration::hours(1);
    let runs = (0..4).map(|_| {
        let s = SweepHandle(&h.sweep);
        async move { s.0.run(at, false).await.unwrap() }
    });
    let summaries = futures_join(runs).await;
    let total: u64 = summaries.iter().map(|s| s.total_notices()).sum();
    assert_eq!(total, 40);
    let q = h.queued().await;
    let ids: std::collections::BTreeSet<_> = q
        .iter()
        .map(|n| n["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!((q.len(), ids.len()), (40, 40));
}

struct SweepHandle<'a>(&'a spkeeper::service::sweep::SweepService);

#[tokio::test]
async fn dry_run_counts_but_writes_nothing() {
    let h = Harness::new().await;
    let id = launched(&h, "megan").await;
    let exp = h.store_load(&id).await.record.rt_expires_at;
    let s = h.sweep.run(exp - Duration::days(7), true).await.unwrap();
    assert_eq!(s.notices["refresh_token.expiring"], 1);
    assert!(h.queued().await.is_empty());
    assert_eq!(h.store_load(&id).await.record.progress, Progress::None);
}

#[tokio::test]
async fn client_secret_expiry_is_announced_once_thirty_days_ahead() {
    let h = Harness::new().await;
    let expires = h.now() + Duration::days(60);
    let h = Harness::with(Options {
        extra_env: vec![(
            "SPKEEPER_CLIENT_SECRET_EXPIRES_AT",
            spkeeper::core::notice::rfc3339(expires),
        )],
        ..Options::default()
    })
    .await;
    let s = h
        .sweep
        .run(expires - Duration::days(31), false)
        .await
        .unwrap();
    assert_eq!(s.notices["client_secret.expiring"], 0);
    let s = h
        .sweep
        .run(expires - Duration::days(29), false)
        .await
        .unwrap();
    assert_eq!(s.notices["client_secret.expiring"], 1);
    let s = h
        .sweep
        .run(expires - Duration::days(2), false)
        .await
        .unwrap();
    assert_eq!(s.notices["client_secret.expiring"], 0);
    let q = h.queued().await;
    assert_eq!(types(&q), vec!["client_secret.expiring"]);
    assert!(q[0]["grant"].is_null());
    assert_eq!(q[0]["days_left"], 29);
}

#[tokio::test]
async fn sweep_summary_has_the_contract_fields() {
    let h = Harness::new().await;
    let s = h.sweep.run(h.now(), false).await.unwrap();
    let v = serde_json::to_value(&s).unwrap();
    for k in ["examined", "notices", "expired", "elapsed_ms"] {
        assert!(v.get(k).is_some(), "{k}");
    }
    for t in [
        "refresh_token.expiring",
        "refresh_token.expired",
        "refresh_token.revoked",
        "refresh_token.renewed",
        "client_secret.expiring",
    ] {
        assert_eq!(v["notices"][t], 0);
    }
}
