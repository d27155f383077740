//! `POST /token`: every error code of the contract, the cache, single flight, and ACS faults.

mod common;

use std::time::Duration as StdDuration;

use axum::body::Body;
use axum::http::Request;
use chrono::Duration;
use serde_json::json;

use common::*;
use spkeeper::core::grant::Progress;

async fn launched(h: &Harness, user: &str) -> String {
    assert_eq!(h.launch(&h.token(user)).await.status().as_u16(), 303);
    h.grant_id(user).as_str().to_string()
}

#[tokio::test]
async fn valid_request_gets_an_access_token_and_the_grant_summary() {
    let h = Harness::new().await;
    let id = launched(&h, "megan").await;
    let resp = h.token_request(json!({"grant_id": id})).await;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let body = body_json(resp).await;
    assert!(body["access_token"].as_str().unwrap().starts_with("at-"));
    assert_eq!(body["token_type"], "Bearer");
    let host = h.stub.addr.to_string();
    assert_eq!(
        body["resource"],
        format!("00000003-0000-0ff1-ce00-000000000000/{host}@{REALM}")
    );
    assert!(body["expires_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(body["grant"]["id"], id.as_str());
    assert_eq!(body["grant"]["status"], "active");
    assert!(body["grant"]["days_left"].as_i64().unwrap() >= 180);
    assert!(
        body["grant"]["renew_url"]
            .as_str()
            .unwrap()
            .starts_with("https://addin.example.com/renew/")
    );
    assert!(body["grant"]["refresh_token_expires_at"].is_string());

    // the ACS request was the refresh-token grant of PROTOCOL.md §3
    let form = h.stub.last_form();
    assert_eq!(form["grant_type"], "refresh_token");
    assert_eq!(form["client_id"], format!("{CLIENT_ID}@{REALM}"));
    assert_eq!(form["client_secret"], SECRET);
    assert!(form["refresh_token"].starts_with("refresh-token-of-megan"));
    assert_eq!(
        form["resource"],
        format!("00000003-0000-0ff1-ce00-000000000000/{host}@{REALM}")
    );
}

#[tokio::test]
async fn cached_token_is_served_without_a_second_acs_call() {
    let h = Harness::new().await;
    let id = launched(&h, "megan").await;
    let calls = h.stub.token_calls();
    let a = body_json(h.token_request(json!({"grant_id": id})).await).await;
    let b = body_json(h.token_request(json!({"grant_id": id})).await).await;
    assert_eq!(a["access_token"], b["access_token"]);
    assert_eq!(h.stub.token_calls(), calls, "served from the cache");
}

#[tokio::test]
async fn a_token_with_five_minutes_or_less_left_is_renewed() {
    let h = Harness::new().await;
    let id = launched(&h, "megan").await;
    let first = body_json(h.token_request(json!({"grant_id": id})).await).await;
    let calls = h.stub.token_calls();
    // the stand-in issues tokens for 3599 s: 55 minutes later, under 5 minutes remain
    h.clock.advance(Duration::minutes(55));
    let second = body_json(h.token_request(json!({"grant_id": id})).await).await;
    assert_ne!(first["access_token"], second["access_token"]);
    assert_eq!(h.stub.token_calls(), calls + 1);
}

#[tokio::test]
async fn fifty_concurrent_requests_with_a_cold_cache_make_one_acs_call() {
    let h = Harness::new().await;
    let id = launched(&h, "megan").await;
    // a host whose cache is cold
    let before = h.stub.token_calls();
    let body = json!({"grant_id": id, "host": "contoso.sharepoint.com"});
    let handles: Vec<_> = (0..50)
        .map(|_| {
            let (app, req) = (h.app.clone(), token_req(&body));
            tokio::spawn(async move { tower::ServiceExt::oneshot(app, req).await.unwrap() })
        })
        .collect();
    let mut responses = Vec::new();
    for handle in handles {
        responses.push(handle.await.unwrap());
    }
    let mut tokens = std::collections::BTreeSet::new();
    for r in responses {
        assert_eq!(r.status().as_u16(), 200);
        tokens.insert(
            body_json(r).await["access_token"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(
        h.stub.token_calls() - before,
        1,
        "one ACS call for 50 callers"
    );
    assert_eq!(tokens.len(), 1);
    assert!(h.stub.last_form()["resource"].contains("/contoso.sharepoint.com@"));
}

#[tokio::test]
async fn missing_or_wrong_api_key_is_unauthorized() {
    let h = Harness::new().await;
    let id = launched(&h, "megan").await;
    for auth in [
        None,
        Some("Bearer wrong-key-wrong-key"),
        Some(API_KEY),
        Some("Basic dGVzdA=="),
    ] {
        let mut req = Request::post("/token").header("content-type", "application/json");
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let resp = h
            .send(
                req.body(Body::from(json!({"grant_id": id}).to_string()))
                    .unwrap(),
            )
            .await;
        assert_eq!(resp.headers()["www-authenticate"], "Bearer");
        assert_error(resp, 401, "unauthorized").await;
    }
}

/// During an API key rotation (`api_key_secondary`, the previous key) both keys are
/// accepted; anything else is still refused.
#[tokio::test]
async fn during_an_api_key_rotation_the_key_and_the_previous_one_are_accepted() {
    const PREVIOUS: &str = "the-previous-api-key-0123456789";
    let h = Harness::with(Options {
        extra_env: vec![("SPKEEPER_API_KEY_SECONDARY", PREVIOUS.to_string())],
        ..Options::default()
    })
    .await;
    let id = launched(&h, "megan").await;
    let call = |key: String| {
        Request::post("/token")
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {key}"))
            .body(Body::from(json!({"grant_id": id}).to_string()))
            .unwrap()
    };
    for key in [API_KEY, PREVIOUS] {
        let resp = h.send(call(key.to_string())).await;
        assert_eq!(resp.status(), 200, "{key}");
    }
    for key in [
        "wrong-key-wrong-key",
        "",
        &PREVIOUS[1..],
        &format!("{PREVIOUS}x"),
    ] {
        let resp = h.send(call(key.to_string())).await;
        assert_error(resp, 401, "unauthorized").await;
    }
}

#[tokio::test]
async fn malformed_bodies_are_bad_request() {
    let h = Harness::new().await;
    for body in [
        json!("nope"),
        json!({}),
        json!({"grant_id": "XYZ"}),
        json!({"grant_id": 5}),
    ] {
        assert_error(h.token_request(body).await, 400, "bad_request").await;
    }
    let req = Request::post("/token")
        .header("authorization", format!("Bearer {API_KEY}"))
        .body(Body::from("{not json"))
        .unwrap();
    assert_error(h.send(req).await, 400, "bad_request").await;
}

#[tokio::test]
async fn unknown_grant_is_unknown_grant() {
    let h = Harness::new().await;
    assert_error(
        h.token_request(json!({"grant_id": "0123456789abcdef0123456789abcdef"}))
            .await,
        404,
        "unknown_grant",
    )
    .await;
}

#[tokio::test]
async fn host_outside_the_allowlist_is_host_not_allowed() {
    let h = Harness::new().await;
    let id = launched(&h, "megan").await;
    for host in [
        "evil.example.com",
        "contoso.sharepoint.com.evil.com",
        "a@contoso.sharepoint.com",
        "contoso.sharepoint.com/x",
    ] {
        assert_error(
            h.token_request(json!({"grant_id": id, "host": host})).await,
            400,
            "host_not_allowed",
        )
        .await;
    }
}

#[tokio::test]
async fn expired_refresh_token_is_relaunch_required_without_asking_acs() {
    let h = Harness::new().await;
    let id = launched(&h, "megan").await;
    let g = h.store_load(&h.grant_id("megan")).await.record;
    h.clock.set(g.rt_expires_at + Duration::minutes(1));
    let calls = h.stub.token_calls();
    let body = assert_error(
        h.token_request(json!({"grant_id": id})).await,
        409,
        "relaunch_required",
    )
    .await;
    assert!(
        body["renew_url"]
            .as_str()
            .unwrap()
            .contains(&format!("/renew/{id}?exp="))
    );
    assert_eq!(h.stub.token_calls(), calls);
}

#[tokio::test]
async fn invalid_grant_is_relaunch_required_and_sends_revoked_once() {
    let h = Harness::new().await;
    let id = launched(&h, "megan").await;
    h.stub.script(&[Reply::Status(
        400,
        r#"{"error":"invalid_grant","error_description":"AADSTS70000"}"#,
    )]);
    let body = assert_error(
        h.token_request(json!({"grant_id": id, "host": "contoso.sharepoint.com"}))
            .await,
        409,
        "relaunch_required",
    )
    .await;
    assert!(body["renew_url"].is_string());
    let g = h.store_load(&h.grant_id("megan")).await.record;
    assert_eq!(g.progress, Progress::Revoked);
    assert_eq!(g.next_due_at, None);
    let calls = h.stub.token_calls();
    // later requests do not ask ACS again, and do not notify again
    assert_error(
        h.token_request(json!({"grant_id": id})).await,
        409,
        "relaunch_required",
    )
    .await;
    assert_eq!(h.stub.token_calls(), calls);
    let revoked = h
        .queued()
        .await
        .into_iter()
        .filter(|n| n["type"] == "refresh_token.revoked")
        .count();
    assert_eq!(revoked, 1);
}

#[tokio::test]
async fn invalid_client_is_sts_rejected_client() {
    let h = Harness::new().await;
    let id = launched(&h, "megan").await;
    h.stub.script(&[Reply::Status(
        401,
        r#"{"error":"invalid_client","error_description":"AADSTS7000222: expired"}"#,
    )]);
    let calls = h.stub.token_calls();
    assert_error(
        h.token_request(json!({"grant_id": id, "host": "contoso.sharepoint.com"}))
            .await,
        502,
        "sts_rejected_client",
    )
    .await;
    assert_eq!(
        h.stub.token_calls(),
        calls + 1,
        "no retry without a secondary secret"
    );
    assert_eq!(
        h.store_load(&h.grant_id("megan")).await.record.progress,
        Progress::None
    );
}

#[tokio::test]
async fn invalid_client_is_retried_once_with_the_secondary_secret() {
    let h = Harness::with(Options {
        secondary: true,
        ..Options::default()
    })
    .await;
    let id = launched(&h, "megan").await;
    h.stub
        .script(&[Reply::Status(401, r#"{"error":"invalid_client"}"#)]);
    let calls = h.stub.token_calls();
    let resp = h
        .token_request(json!({"grant_id": id, "host": "contoso.sharepoint.com"}))
        .await;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(h.stub.token_calls(), calls + 2);
    assert_eq!(h.stub.last_form()["client_secret"], SECONDARY);
}

#[tokio::test]
async fn transient_failures_are_retried_then_sts_unavailable_with_retry_after() {
    let h = Harness::new().await;
    let id = launched(&h, "megan").await;
    let before = h.store_load(&h.grant_id("megan")).await;
    h.stub.script(&[
        Reply::Status(500, ""),
        Reply::Status(429, ""),
        Reply::Status(503, ""),
    ]);
    let calls = h.stub.token_calls();
    let resp = h
        .token_request(json!({"grant_id": id, "host": "contoso.sharepoint.com"}))
        .await;
    assert_eq!(resp.headers()["retry-after"], "5");
    assert_error(resp, 503, "sts_unavailable").await;
    assert_eq!(h.stub.token_calls(), calls + 3, "three attempts in all");
    let after = h.store_load(&h.grant_id("megan")).await;
    assert_eq!(after.record, before.record, "the grant is unchanged");
}

#[tokio::test]
async fn one_transient_failure_is_retried_to_success() {
    let h = Harness::new().await;
    let id = launched(&h, "megan").await;
    h.stub.script(&[Reply::Status(502, "")]);
    let calls = h.stub.token_calls();
    let resp = h
        .token_request(json!({"grant_id": id, "host": "contoso.sharepoint.com"}))
        .await;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(h.stub.token_calls(), calls + 2);
}

#[tokio::test]
async fn slow_acs_times_out_as_transient() {
    let h = Harness::new().await;
    let id = launched(&h, "megan").await;
    h.stub.script(&[Reply::Slow(StdDuration::from_secs(6))]);
    let started = std::time::Instant::now();
    let resp = h
        .token_request(json!({"grant_id": id, "host": "contoso.sharepoint.com"}))
        .await;
    assert_eq!(
        resp.status().as_u16(),
        200,
        "the retry after the 5 s timeout succeeds"
    );
    let took = started.elapsed();
    assert!(
        took >= StdDuration::from_secs(5) && took < StdDuration::from_secs(9),
        "{took:?}"
    );
}

#[tokio::test]
async fn no_token_or_secret_reaches_an_error_body() {
    let h = Harness::new().await;
    let id = launched(&h, "megan").await;
    h.stub
        .script(&[Reply::Status(401, r#"{"error":"invalid_client"}"#)]);
    let text = body_text(
        h.token_request(json!({"grant_id": id, "host": "contoso.sharepoint.com"}))
            .await,
    )
    .await;
    assert!(
        !text.contains(SECRET) && !text.contains("refresh-token-of") && !text.contains("at-"),
        "{text}"
    );
}

#[tokio::test]
async fn an_oversized_acs_answer_is_refused_not_read_and_not_retried() {
    let h = Harness::new().await;
    let id = launched(&h, "megan").await;
    h.stub.script(&[Reply::Huge(100 * 1024)]);
    let calls = h.stub.token_calls();
    let resp = h
        .token_request(json!({"grant_id": id, "host": "contoso.sharepoint.com"}))
        .await;
    assert_error(resp, 503, "sts_unavailable").await;
    assert_eq!(h.stub.token_calls(), calls + 1);
    // just under the cap is fine
    h.stub.script(&[Reply::Huge(60 * 1024)]);
    let resp = h
        .token_request(json!({"grant_id": id, "host": "contoso.sharepoint.com"}))
        .await;
    assert_eq!(resp.status().as_u16(), 200);
}

#[tokio::test]
async fn a_refresh_token_moved_into_the_access_token_cache_is_never_served() {
    use spkeeper::ports::CachedToken;
    let h = Harness::new().await;
    let id = launched(&h, "megan").await;
    let gid = h.grant_id("megan");
    let host = h.stub.addr.to_string();
    // Someone who can write the store, but holds no key, copies the sealed refresh token
    // into the access-token cache of the same grant and host.
    let sealed_rt = h
        .ctx
        .grants
        .load(&gid)
        .await
        .unwrap()
        .unwrap()
        .sealed_refresh_token
        .unwrap();
    h.ctx
        .cache
        .put_access_token(
            &gid,
            &host,
            &CachedToken {
                sealed: sealed_rt,
                expires_at: h.now() + Duration::hours(10),
                resource: "moved".into(),
            },
        )
        .await
        .unwrap();
    let resp = h.token_request(json!({"grant_id": id})).await;
    assert_eq!(resp.status().as_u16(), 200);
    let body = body_json(resp).await;
    let served = body["access_token"].as_str().unwrap();
    assert!(
        !served.starts_with("refresh-token-of-"),
        "the refresh token was served"
    );
    assert!(served.starts_with("at-"), "{served}");
}

#[tokio::test]
async fn an_access_token_moved_to_another_host_is_never_served_there() {
    let h = Harness::new().await;
    let id = launched(&h, "megan").await;
    let gid = h.grant_id("megan");
    let host = h.stub.addr.to_string();
    let cached = h
        .ctx
        .cache
        .get_access_token(&gid, &host)
        .await
        .unwrap()
        .unwrap();
    h.ctx
        .cache
        .put_access_token(&gid, "contoso.sharepoint.com", &cached)
        .await
        .unwrap();
    let calls = h.stub.token_calls();
    let body = body_json(
        h.token_request(json!({"grant_id": id, "host": "contoso.sharepoint.com"}))
            .await,
    )
    .await;
    assert_eq!(h.stub.token_calls(), calls + 1, "a new token was fetched");
    assert!(
        body["resource"]
            .as_str()
            .unwrap()
            .contains("/contoso.sharepoint.com@"),
        "{body}"
    );
}

#[tokio::test]
async fn a_stored_site_no_longer_allowed_is_refused_at_use() {
    let h = Harness::new().await;
    launched(&h, "megan").await;
    // A grant whose stored host web is not (or no longer) on the allowlist.
    let mut g = h.store_load(&h.grant_id("megan")).await;
    let rev = g.record.rev;
    g.record.site_url = "https://evil.example.com/sites/a".into();
    g.record.user = None;
    assert_eq!(
        h.ctx
            .grants
            .put_grant(
                Some(rev),
                &g.record,
                g.sealed_refresh_token.as_deref().unwrap(),
                None
            )
            .await
            .unwrap(),
        spkeeper::ports::Written::Done
    );
    let (calls, users) = (
        h.stub.token_calls(),
        h.stub
            .state
            .user_calls
            .load(std::sync::atomic::Ordering::SeqCst),
    );
    assert_error(
        h.token_request(json!({"grant_id": g.record.id.as_str()}))
            .await,
        400,
        "host_not_allowed",
    )
    .await;
    assert_eq!(h.stub.token_calls(), calls, "no ACS call for it");
    assert_eq!(
        h.stub
            .state
            .user_calls
            .load(std::sync::atomic::Ordering::SeqCst),
        users
    );
}
