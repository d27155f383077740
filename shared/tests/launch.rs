//! `POST /launch`: every error code of the contract, and that a refused launch writes nothing.

mod common;

use axum::body::Body;
use axum::http::Request;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::Duration;
use secrecy::SecretString;
use serde_json::json;

use common::*;
use spkeeper::core::grant::{Progress, refresh_token_expiry};
use spkeeper::testkit::{mint_context_token, mint_with_header};

async fn assert_nothing_written(h: &Harness) {
    assert!(
        h.grants().await.is_empty(),
        "a refused launch stored a grant"
    );
    assert!(
        h.queued().await.is_empty(),
        "a refused launch queued a notice"
    );
}

#[tokio::test]
async fn valid_launch_stores_the_grant_and_redirects_to_status_with_a_session_cookie() {
    let h = Harness::new().await;
    let resp = h.launch(&h.token("megan")).await;
    assert_eq!(resp.status().as_u16(), 303);
    assert_eq!(
        resp.headers()["location"],
        "https://addin.example.com/status"
    );
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(cookie.starts_with("__Host-spkeeper_session="), "{cookie}");
    for attr in ["HttpOnly", "Secure", "SameSite=None", "Path=/"] {
        assert!(cookie.contains(attr), "{attr} missing: {cookie}");
    }

    let grants = h.grants().await;
    assert_eq!(grants.len(), 1);
    let g = &grants[0];
    assert_eq!(g.id, h.grant_id("megan"));
    assert_eq!(g.realm, REALM);
    assert_eq!(g.site_url, h.stub.site_url());
    assert_eq!(
        g.standard_tokens.product_number.as_deref(),
        Some("16.0.0.0")
    );
    let nbf = chrono::DateTime::from_timestamp(g.rt_version, 0).unwrap();
    assert_eq!(g.rt_expires_at, refresh_token_expiry(nbf));
    assert_eq!(g.progress, Progress::None);
    assert_eq!(g.next_due_at, Some(g.rt_expires_at - Duration::days(30)));

    // the refresh token is stored sealed, never in clear
    let stored = h.store_load(&g.id).await;
    let sealed = stored.sealed_refresh_token.unwrap();
    assert!(!sealed.contains("refresh-token-of-megan"));
    assert!(sealed.starts_with("v2."));

    // best effort after launch: the user was looked up with a fresh access token
    assert_eq!(h.stub.token_calls(), 1);
    assert_eq!(
        g.user.as_ref().map(|u| u.email.as_str()),
        Some("megan@contoso.com")
    );
}

#[tokio::test]
async fn token_is_accepted_under_microsofts_other_names_and_in_the_query() {
    let h = Harness::new().await;
    for (i, name) in ["AppContext", "AppContextToken", "AccessToken"]
        .iter()
        .enumerate()
    {
        let user = format!("user{i}");
        let resp = h
            .post_form(
                &h.launch_query(),
                &format!("{name}={}", urlencode(&h.token(&user))),
            )
            .await;
        assert_eq!(resp.status().as_u16(), 303, "{name}");
    }
    let q = format!(
        "{}&SPAppToken={}",
        h.launch_query(),
        urlencode(&h.token("query"))
    );
    assert_eq!(h.post_form(&q, "").await.status().as_u16(), 303);
    assert_eq!(h.grants().await.len(), 4);
}

#[tokio::test]
async fn launch_without_a_token_is_missing_context_token() {
    let h = Harness::new().await;
    assert_error(
        h.post_form(&h.launch_query(), "SPSiteUrl=x").await,
        400,
        "missing_context_token",
    )
    .await;
    assert_nothing_written(&h).await;
}

#[tokio::test]
async fn sharepoint_error_info_is_logged_never_echoed_and_the_user_gets_a_reference() {
    let h = Harness::new().await;
    let body = assert_error(
        h.post_form(
            &h.launch_query(),
            "SPErrorInfo=Your+account+is+locked.+Call+%2B1-555-0100+now",
        )
        .await,
        400,
        "sharepoint_error",
    )
    .await;
    let message = body["message"].as_str().unwrap();
    assert!(!message.contains("555"), "{message}");
    assert!(!message.contains("locked"), "{message}");
    // a reference to quote: 16 hex digits
    let reference = message
        .split(|c: char| !c.is_ascii_hexdigit())
        .find(|w| w.len() == 16);
    assert!(reference.is_some(), "{message}");
    assert_nothing_written(&h).await;
}

#[tokio::test]
async fn launch_without_sp_host_url_is_missing_host_url() {
    let h = Harness::new().await;
    let body = format!("SPAppToken={}", urlencode(&h.token("megan")));
    assert_error(
        h.post_form("SPLanguage=en-US", &body).await,
        400,
        "missing_host_url",
    )
    .await;
    assert_error(
        h.post_form("SPHostUrl=%2Fsites%2Fa", &body).await,
        400,
        "missing_host_url",
    )
    .await;
    assert_nothing_written(&h).await;
}

#[tokio::test]
async fn unreadable_token_is_malformed_context_token() {
    let h = Harness::new().await;
    assert_error(
        h.post_form(&h.launch_query(), "SPAppToken=not-a-jwt").await,
        400,
        "malformed_context_token",
    )
    .await;
    let mut claims = h.spec("megan").claims();
    claims.as_object_mut().unwrap().remove("refreshtoken");
    let t = mint_context_token(&claims, &SecretString::from(SECRET.to_string()));
    assert_error(h.launch(&t).await, 400, "malformed_context_token").await;
    assert_nothing_written(&h).await;
}

#[tokio::test]
async fn wrong_secret_is_invalid_signature() {
    let h = Harness::new().await;
    let t = mint_context_token(
        &h.spec("megan").claims(),
        &SecretString::from("d3Jvbmc=".to_string()),
    );
    assert_error(h.launch(&t).await, 401, "invalid_signature").await;
    assert_nothing_written(&h).await;
}

#[tokio::test]
async fn expired_token_is_token_expired() {
    let h = Harness::new().await;
    let mut spec = h.spec("megan");
    spec.nbf = h.now() - Duration::hours(13);
    let t = mint_context_token(&spec.claims(), &SecretString::from(SECRET.to_string()));
    assert_error(h.launch(&t).await, 401, "token_expired").await;
    assert_nothing_written(&h).await;
}

#[tokio::test]
async fn future_token_is_token_not_yet_valid() {
    let h = Harness::new().await;
    let mut spec = h.spec("megan");
    spec.nbf = h.now() + Duration::hours(1);
    let t = mint_context_token(&spec.claims(), &SecretString::from(SECRET.to_string()));
    assert_error(h.launch(&t).await, 401, "token_not_yet_valid").await;
    assert_nothing_written(&h).await;
}

#[tokio::test]
async fn missing_or_foreign_audience_is_invalid_audience() {
    let h = Harness::new().await;
    let mut claims = h.spec("megan").claims();
    claims.as_object_mut().unwrap().remove("aud");
    let t = mint_context_token(&claims, &SecretString::from(SECRET.to_string()));
    assert_error(h.launch(&t).await, 401, "invalid_audience").await;
    let mut spec = h.spec("megan");
    spec.audience_host = "other-addin.example.com".into();
    let t = mint_context_token(&spec.claims(), &SecretString::from(SECRET.to_string()));
    assert_error(h.launch(&t).await, 401, "invalid_audience").await;
    assert_nothing_written(&h).await;
}

#[tokio::test]
async fn foreign_issuer_is_invalid_issuer() {
    let h = Harness::new().await;
    let mut claims = h.spec("megan").claims();
    claims["appctxsender"] = json!(format!("00000004-0000-0ff1-ce00-000000000000@{REALM}"));
    let t = mint_context_token(&claims, &SecretString::from(SECRET.to_string()));
    assert_error(h.launch(&t).await, 401, "invalid_issuer").await;
    assert_nothing_written(&h).await;
}

#[tokio::test]
async fn alg_none_hs512_and_rs256_are_unsupported_algorithm() {
    let h = Harness::new().await;
    let claims = h.spec("megan").claims();
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let none = format!(
        "{}.{payload}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#)
    );
    let key = spkeeper::core::context_token::signing_key(&SecretString::from(SECRET.to_string()));
    let hs512 = mint_with_header(&json!({"alg":"HS512","typ":"JWT"}), &claims, &key);
    let rs256 = mint_with_header(&json!({"alg":"RS256","typ":"JWT"}), &claims, &key);
    for t in [none, hs512, rs256] {
        assert_error(h.launch(&t).await, 401, "unsupported_algorithm").await;
    }
    assert_nothing_written(&h).await;
}

#[tokio::test]
async fn host_outside_the_allowlist_is_host_not_allowed() {
    let h = Harness::new().await;
    let body = format!("SPAppToken={}", urlencode(&h.token("megan")));
    for host in [
        "https://evil.example.com/sites/a",
        "https://contoso.sharepoint.com.evil.com/",
        "https://user@contoso.sharepoint.com/",
        "http://contoso.sharepoint.com/",
        "https://contoso.sharepoint.com:8443/",
    ] {
        let q = format!("SPHostUrl={}", urlencode(host));
        assert_error(h.post_form(&q, &body).await, 403, "host_not_allowed").await;
    }
    // an app web outside the allowlist is refused too
    let q = format!(
        "{}&SPAppWebUrl={}",
        h.launch_query(),
        urlencode("https://evil.example.com/app")
    );
    assert_error(h.post_form(&q, &body).await, 403, "host_not_allowed").await;
    assert_nothing_written(&h).await;
}

#[tokio::test]
async fn untrusted_token_service_is_untrusted_sts() {
    let h = Harness::new().await;
    let mut spec = h.spec("megan");
    spec.sts_uri = "https://evil.example.com/tokens/OAuth/2".into();
    let t = mint_context_token(&spec.claims(), &SecretString::from(SECRET.to_string()));
    assert_error(h.launch(&t).await, 403, "untrusted_sts").await;
    assert_nothing_written(&h).await;
}

#[tokio::test]
async fn body_over_64_kib_is_payload_too_large() {
    let h = Harness::new().await;
    let big = format!(
        "SPAppToken={}&pad={}",
        urlencode(&h.token("megan")),
        "x".repeat(64 * 1024)
    );
    assert_error(
        h.post_form(&h.launch_query(), &big).await,
        413,
        "payload_too_large",
    )
    .await;
    // without a Content-Length (streamed) too
    let stream = futures_stream(big.into_bytes());
    let req = Request::post(format!("/launch?{}", h.launch_query()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(stream)
        .unwrap();
    assert_error(h.send(req).await, 413, "payload_too_large").await;
    assert_nothing_written(&h).await;
}

fn futures_stream(bytes: Vec<u8>) -> Body {
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        bytes.chunks(8192).map(|c| Ok(c.to_vec())).collect();
    Body::from_stream(tokio_stream_iter(chunks))
}

fn tokio_stream_iter(
    items: Vec<Result<Vec<u8>, std::io::Error>>,
) -> impl futures_core::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    struct Iter(std::vec::IntoIter<Result<Vec<u8>, std::io::Error>>);
    impl futures_core::Stream for Iter {
        type Item = Result<Vec<u8>, std::io::Error>;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            std::task::Poll::Ready(self.0.next())
        }
    }
    Iter(items.into_iter())
}

#[tokio::test]
async fn a_body_that_is_not_a_form_is_unsupported_media_type() {
    let h = Harness::new().await;
    let json_body = json!({"SPAppToken": h.token("megan")}).to_string();
    for ct in [Some("application/json"), Some("text/plain"), None] {
        let mut req = Request::post(format!("/launch?{}", h.launch_query()));
        if let Some(ct) = ct {
            req = req.header("content-type", ct);
        }
        let resp = h
            .send(req.body(Body::from(json_body.clone())).unwrap())
            .await;
        assert_error(resp, 415, "unsupported_media_type").await;
    }
    assert_nothing_written(&h).await;
}

#[tokio::test]
async fn form_content_type_with_a_charset_is_a_form() {
    let h = Harness::new().await;
    let req = Request::post(format!("/launch?{}", h.launch_query()))
        .header(
            "content-type",
            "Application/X-WWW-Form-Urlencoded; charset=utf-8",
        )
        .body(Body::from(format!(
            "SPAppToken={}",
            urlencode(&h.token("megan"))
        )))
        .unwrap();
    assert_eq!(h.send(req).await.status().as_u16(), 303);
}

#[tokio::test]
async fn a_browser_gets_the_error_as_a_readable_page() {
    let h = Harness::new().await;
    let req = Request::post(format!("/launch?{}", h.launch_query()))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("accept", "text/html,application/xhtml+xml")
        .body(Body::from(
            "SPErrorInfo=%3Cscript%3Ealert(1)%3C%2Fscript%3E",
        ))
        .unwrap();
    let resp = h.send(req).await;
    assert_eq!(resp.status().as_u16(), 400);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let csp = resp.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("frame-ancestors 'self' https://*.sharepoint.com"),
        "{csp}"
    );
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert_eq!(
        resp.headers()["strict-transport-security"],
        "max-age=31536000"
    );
    let page = body_text(resp).await;
    assert!(page.contains("sharepoint_error"));
    assert!(!page.contains("script"), "SharePoint's text is never shown");
}

#[tokio::test]
async fn an_older_context_token_never_overwrites_a_newer_one() {
    let h = Harness::new().await;
    let older = h.token("megan");
    h.clock.advance(Duration::hours(1));
    let newer = h.token("megan");
    assert_eq!(h.launch(&newer).await.status().as_u16(), 303);
    let after_newer = h.store_load(&h.grant_id("megan")).await;
    // the older token is still within its 12 hours: accepted, but it must not replace
    assert_eq!(h.launch(&older).await.status().as_u16(), 303);
    let after_older = h.store_load(&h.grant_id("megan")).await;
    assert_eq!(after_older.record.rt_version, after_newer.record.rt_version);
    assert_eq!(
        after_older.sealed_refresh_token,
        after_newer.sealed_refresh_token
    );
}

#[tokio::test]
async fn relaunch_after_a_notice_queues_renewed_and_resets_the_stages() {
    let h = Harness::new().await;
    h.launch(&h.token("megan")).await;
    let id = h.grant_id("megan");
    let g = h.store_load(&id).await.record;
    // the T-30 notice goes out
    h.clock
        .set(g.rt_expires_at - Duration::days(30) + Duration::minutes(1));
    let s = h.sweep.run(h.now(), false).await.unwrap();
    assert_eq!(s.notices["refresh_token.expiring"], 1);
    // the user relaunches
    assert_eq!(h.launch(&h.token("megan")).await.status().as_u16(), 303);
    let renewed: Vec<_> = h
        .queued()
        .await
        .into_iter()
        .filter(|n| n["type"] == "refresh_token.renewed")
        .collect();
    assert_eq!(renewed.len(), 1);
    assert_eq!(renewed[0]["grant"]["id"], id.as_str());
    let after = h.store_load(&id).await.record;
    assert_eq!(after.progress, Progress::None);
    assert!(after.rt_expires_at > g.rt_expires_at);
    assert_eq!(
        after.next_due_at,
        Some(after.rt_expires_at - Duration::days(30))
    );
    assert_eq!(after.created_at, g.created_at);
    // a relaunch with nothing sent is not "renewed"
    h.clock.advance(Duration::hours(1));
    h.launch(&h.token("megan")).await;
    let renewed_count = h
        .queued()
        .await
        .iter()
        .filter(|n| n["type"] == "refresh_token.renewed")
        .count();
    assert_eq!(renewed_count, 1);
}

#[tokio::test]
async fn launch_survives_acs_being_down() {
    let h = Harness::new().await;
    h.stub.script(&[
        Reply::Status(503, ""),
        Reply::Status(503, ""),
        Reply::Status(503, ""),
    ]);
    let resp = h.launch(&h.token("megan")).await;
    assert_eq!(
        resp.status().as_u16(),
        303,
        "identity lookup is best effort"
    );
    assert_eq!(h.grants().await.len(), 1);
    assert!(h.grants().await[0].user.is_none());
}

#[tokio::test]
async fn a_token_of_one_tenant_is_never_stored_against_another_tenants_host() {
    let h = Harness::new().await;
    h.stub
        .set_realm(Some("11111111-2222-3333-4444-555555555555"));
    assert_error(
        h.launch(&h.token("megan")).await,
        403,
        "host_realm_mismatch",
    )
    .await;
    assert_nothing_written(&h).await;
    assert_eq!(
        h.stub.token_calls(),
        0,
        "no access token was fetched for it"
    );
}

#[tokio::test]
async fn an_app_web_of_another_tenant_is_host_realm_mismatch() {
    let h = Harness::new().await;
    // The host web answers for the token's realm; the app web's host (another tenant's, on
    // another port here) does not.
    drop(h);
    let other = another_tenants_site().await;
    let h = Harness::with(Options {
        also_allowed: vec![other.addr.to_string()],
        ..Options::default()
    })
    .await;
    let q = format!(
        "{}&SPAppWebUrl={}",
        h.launch_query(),
        urlencode(&other.site_url())
    );
    assert_error(
        h.post_form(&q, &format!("SPAppToken={}", urlencode(&h.token("megan"))))
            .await,
        403,
        "host_realm_mismatch",
    )
    .await;
    assert_nothing_written(&h).await;
}

#[tokio::test]
async fn a_host_whose_realm_cannot_be_discovered_is_sharepoint_unreachable() {
    let h = Harness::new().await;
    h.stub.set_realm(None);
    assert_error(
        h.launch(&h.token("megan")).await,
        502,
        "sharepoint_unreachable",
    )
    .await;
    assert_nothing_written(&h).await;
}

#[tokio::test]
async fn a_hosts_realm_is_discovered_once_and_cached() {
    let h = Harness::new().await;
    for user in ["megan", "alex", "nestor"] {
        assert_eq!(h.launch(&h.token(user)).await.status().as_u16(), 303);
    }
    assert_eq!(
        h.stub
            .state
            .realm_calls
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    // A day later it is asked again.
    h.clock.advance(Duration::hours(25));
    assert_eq!(h.launch(&h.token("megan")).await.status().as_u16(), 303);
    assert_eq!(
        h.stub
            .state
            .realm_calls
            .load(std::sync::atomic::Ordering::SeqCst),
        2
    );
}

#[tokio::test]
async fn a_replayed_token_cannot_move_a_grant_to_another_tenants_host() {
    let other = another_tenants_site().await;
    let h = Harness::with(Options {
        also_allowed: vec![other.addr.to_string()],
        ..Options::default()
    })
    .await;
    let token = h.token("megan");
    assert_eq!(h.launch(&token).await.status().as_u16(), 303);
    // The same token replayed with SPHostUrl on another (allowlisted) tenant's host.
    let q = format!(
        "SPHostUrl={}&SPLanguage=en-US&SPClientTag=0&SPProductNumber=16.0.0.0",
        urlencode(&other.site_url())
    );
    assert_error(
        h.post_form(&q, &format!("SPAppToken={}", urlencode(&token)))
            .await,
        403,
        "host_realm_mismatch",
    )
    .await;
    let g = h.store_load(&h.grant_id("megan")).await;
    assert_eq!(g.record.site_url, h.stub.site_url(), "site_url unchanged");
}

#[tokio::test]
async fn a_launch_from_a_foreign_origin_is_origin_not_allowed() {
    let h = Harness::new().await;
    for origin in [
        "https://evil.example.com",
        "null",
        "https://addin.example.com.evil.net",
    ] {
        let req = Request::post(format!("/launch?{}", h.launch_query()))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("origin", origin)
            .body(Body::from(format!(
                "SPAppToken={}",
                urlencode(&h.token("megan"))
            )))
            .unwrap();
        assert_error(h.send(req).await, 403, "origin_not_allowed").await;
    }
    assert_nothing_written(&h).await;
    // SharePoint's own origin and ours are fine.
    for (user, origin) in [
        ("a", "https://contoso.sharepoint.com".to_string()),
        ("b", PUBLIC.to_string()),
        ("c", format!("http://{}", h.stub.addr)),
    ] {
        let req = Request::post(format!("/launch?{}", h.launch_query()))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("origin", origin.as_str())
            .body(Body::from(format!(
                "SPAppToken={}",
                urlencode(&h.token(user))
            )))
            .unwrap();
        assert_eq!(h.send(req).await.status().as_u16(), 303, "{origin}");
    }
}

#[tokio::test]
async fn a_token_expiring_at_the_end_of_the_calendar_is_handled_without_panicking() {
    let h = Harness::new().await;
    let mut claims = h.spec("megan").claims();
    claims["exp"] = json!(
        chrono::DateTime::<chrono::Utc>::MAX_UTC
            .timestamp()
            .to_string()
    );
    let token = mint_context_token(&claims, &SecretString::from(SECRET.to_string()));
    assert_eq!(h.launch(&token).await.status().as_u16(), 303);
    let g = h.store_load(&h.grant_id("megan")).await.record;
    let nbf = chrono::DateTime::from_timestamp(g.rt_version, 0).unwrap();
    assert_eq!(g.rt_expires_at, refresh_token_expiry(nbf));
}

/// A SharePoint site of another tenant: its realm challenge names another realm.
async fn another_tenants_site() -> Stub {
    let other = Stub::start(std::sync::Arc::new(spkeeper::clock::OffsetClock::new())).await;
    other.set_realm(Some("11111111-2222-3333-4444-555555555555"));
    other
}
