//! The hand-off to the add-in's own app, grant lookup and erasure: every code of the contract.

mod common;

use std::collections::BTreeMap;

use axum::body::Body;
use axum::http::Request;
use chrono::Duration;
use serde_json::{Value, json};

use common::*;

const RETURN: &str = "https://app.example.com/after-launch?tenant=contoso";

async fn with_return_url() -> Harness {
    Harness::with(Options {
        extra_env: vec![("SPKEEPER_RETURN_URL", RETURN.to_string())],
        ..Options::default()
    })
    .await
}

/// Launches `user` and returns the hand-off's query (`grant_id`, `ticket`, standard tokens).
async fn launch_and_hand_off(h: &Harness, user: &str) -> BTreeMap<String, String> {
    let resp = h.launch(&h.token(user)).await;
    assert_eq!(resp.status().as_u16(), 303);
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    assert!(location.starts_with(RETURN), "{location}");
    url::Url::parse(&location)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect()
}

fn req(method: &str, uri: &str, body: Option<Value>) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", format!("Bearer {API_KEY}"))
        .header("content-type", "application/json")
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .unwrap()
}

async fn handoff(h: &Harness, ticket: &str) -> axum::response::Response {
    h.send(req("POST", "/handoff", Some(json!({ "ticket": ticket }))))
        .await
}

#[tokio::test]
async fn a_launch_with_a_return_url_hands_off_with_a_ticket_and_the_standard_tokens() {
    let h = with_return_url().await;
    let resp = h.launch(&h.token("megan")).await;
    assert_eq!(resp.status().as_u16(), 303);
    assert!(
        resp.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .starts_with("__Host-spkeeper_session="),
        "the session cookie is set in both cases"
    );
    let q: BTreeMap<String, String> = url::Url::parse(resp.headers()["location"].to_str().unwrap())
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect();
    assert_eq!(q["tenant"], "contoso", "the app's own query is kept");
    assert_eq!(q["grant_id"], h.grant_id("megan").as_str());
    assert!(q["ticket"].starts_with(h.grant_id("megan").as_str()));
    assert_eq!(q["SPHostUrl"], h.stub.site_url());
    assert_eq!(q["SPLanguage"], "en-US");
    assert_eq!(q["SPClientTag"], "0");
    assert_eq!(q["SPProductNumber"], "16.0.0.0");
    assert!(!q.contains_key("SPAppWebUrl"), "only when given");
}

#[tokio::test]
async fn a_ticket_is_traded_once_for_its_grant() {
    let h = with_return_url().await;
    let q = launch_and_hand_off(&h, "megan").await;
    let resp = handoff(&h, &q["ticket"]).await;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let grant = body_json(resp).await["grant"].clone();
    assert_eq!(grant["id"], q["grant_id"].as_str());
    assert_eq!(grant["kind"], "acs");
    assert_eq!(grant["realm"], REALM);
    assert_eq!(grant["site_url"], h.stub.site_url());
    assert_eq!(grant["user"]["email"], "megan@contoso.com");
    assert_eq!(grant["status"], "active");
    assert!(grant["days_left"].as_i64().unwrap() >= 180);
    assert!(grant["renew_url"].as_str().unwrap().contains("/renew/"));
    let text = grant.to_string();
    assert!(!text.contains("refresh-token-of") && !text.contains("at-"));

    assert_error(handoff(&h, &q["ticket"]).await, 409, "ticket_used").await;
}

#[tokio::test]
async fn two_concurrent_redemptions_of_one_ticket_make_exactly_one_winner() {
    let h = with_return_url().await;
    let q = launch_and_hand_off(&h, "megan").await;
    let statuses: Vec<u16> = futures_join((0..8).map(|_| handoff(&h, &q["ticket"])))
        .await
        .iter()
        .map(|r| r.status().as_u16())
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 409).count(),
        7,
        "{statuses:?}"
    );
}

#[tokio::test]
async fn a_ticket_older_than_120_seconds_is_ticket_expired() {
    let h = with_return_url().await;
    let q = launch_and_hand_off(&h, "megan").await;
    h.clock.advance(Duration::seconds(121));
    assert_error(handoff(&h, &q["ticket"]).await, 410, "ticket_expired").await;
}

#[tokio::test]
async fn a_forged_or_edited_ticket_is_invalid_ticket() {
    let h = with_return_url().await;
    let q = launch_and_hand_off(&h, "megan").await;
    launch_and_hand_off(&h, "alex").await;
    // the user edits the grant id in the URL: the ticket is bound to its grant
    let edited = q["ticket"].replacen(h.grant_id("megan").as_str(), h.grant_id("alex").as_str(), 1);
    let session_like = format!("{}.1.2", h.grant_id("megan"));
    for bad in ["", "x", edited.as_str(), session_like.as_str()] {
        assert_error(handoff(&h, bad).await, 400, "invalid_ticket").await;
    }
    // the genuine one still works: refusals do not use it up
    assert_eq!(handoff(&h, &q["ticket"]).await.status().as_u16(), 200);
}

#[tokio::test]
async fn app_backend_routes_need_the_api_key() {
    let h = with_return_url().await;
    let q = launch_and_hand_off(&h, "megan").await;
    let id = q["grant_id"].clone();
    for (method, uri) in [
        ("POST", "/handoff".to_string()),
        ("GET", format!("/grants/{id}")),
        ("GET", "/grants?email=megan@contoso.com".to_string()),
        ("DELETE", format!("/grants/{id}")),
    ] {
        let r = Request::builder()
            .method(method)
            .uri(&uri)
            .header("authorization", "Bearer wrong-key-0123456789")
            .body(Body::from(json!({"ticket": q["ticket"]}).to_string()))
            .unwrap();
        assert_error(h.send(r).await, 401, "unauthorized").await;
    }
    // and nothing happened: the ticket and the grant are intact
    assert_eq!(handoff(&h, &q["ticket"]).await.status().as_u16(), 200);
}

#[tokio::test]
async fn malformed_app_backend_requests_are_bad_request() {
    let h = Harness::new().await;
    let r = Request::post("/handoff")
        .header("authorization", format!("Bearer {API_KEY}"))
        .body(Body::from("not json"))
        .unwrap();
    assert_error(h.send(r).await, 400, "bad_request").await;
    for uri in [
        "/grants",
        "/grants?site=x",
        "/grants?email=a@b.c&login_name=x",
        "/grants/NOT-A-GRANT",
    ] {
        assert_error(h.send(req("GET", uri, None)).await, 400, "bad_request").await;
    }
}

#[tokio::test]
async fn grants_are_found_by_id_email_login_name_and_site() {
    let h = Harness::new().await;
    assert_eq!(h.launch(&h.token("megan")).await.status().as_u16(), 303);
    let id = h.grant_id("megan");
    let one = body_json(h.send(req("GET", &format!("/grants/{id}"), None)).await).await;
    assert_eq!(one["grant"]["id"], id.as_str());

    let site = urlencode(&h.stub.site_url());
    for uri in [
        "/grants?email=MEGAN@Contoso.com".to_string(),
        "/grants?login_name=i:0%23.f%7Cmembership%7Cmegan@contoso.com".to_string(),
        format!("/grants?email=megan@contoso.com&site={site}"),
        format!("/grants?email=megan@contoso.com&site={}", h.stub.addr),
    ] {
        let found = body_json(h.send(req("GET", &uri, None)).await).await;
        let grants = found["grants"].as_array().unwrap();
        assert_eq!(grants.len(), 1, "{uri}: {found}");
        assert_eq!(
            grants[0], one["grant"],
            "{uri}: one grant object everywhere"
        );
    }
    for uri in [
        "/grants?email=nobody@contoso.com",
        "/grants?email=megan@contoso.com&site=https://other.sharepoint.com/sites/x",
    ] {
        let found = body_json(h.send(req("GET", uri, None)).await).await;
        assert_eq!(found["grants"], json!([]), "{uri}");
    }
    assert_error(
        h.send(req("GET", "/grants/0123456789abcdef0123456789abcdef", None))
            .await,
        404,
        "unknown_grant",
    )
    .await;
}

#[tokio::test]
async fn the_grant_object_is_the_same_on_token_handoff_and_grants() {
    let h = with_return_url().await;
    let q = launch_and_hand_off(&h, "megan").await;
    let id = q["grant_id"].clone();
    let from_token =
        body_json(h.token_request(json!({ "grant_id": id })).await).await["grant"].clone();
    let from_handoff = body_json(handoff(&h, &q["ticket"]).await).await["grant"].clone();
    let from_grants =
        body_json(h.send(req("GET", &format!("/grants/{id}"), None)).await).await["grant"].clone();
    let keys = |v: &Value| {
        v.as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect::<Vec<String>>()
    };
    assert_eq!(
        keys(&from_token),
        [
            "days_left",
            "id",
            "kind",
            "realm",
            "refresh_token_expires_at",
            "renew_url",
            "site_url",
            "status",
            "user"
        ]
    );
    // renew links are signed at the moment of the answer; everything else is identical
    let without_link = |mut v: Value| {
        v.as_object_mut().unwrap().remove("renew_url");
        v
    };
    assert_eq!(without_link(from_token.clone()), without_link(from_handoff));
    assert_eq!(without_link(from_token), without_link(from_grants));
}

#[tokio::test]
async fn erasure_removes_the_grant_its_tokens_and_its_notices_at_once() {
    let h = Harness::new().await;
    assert_eq!(h.launch(&h.token("megan")).await.status().as_u16(), 303);
    assert_eq!(h.launch(&h.token("alex")).await.status().as_u16(), 303);
    let id = h.grant_id("megan");
    // a notice waiting for delivery
    let exp = h.store_load(&id).await.record.rt_expires_at;
    h.clock.set(exp - Duration::days(30) + Duration::hours(1));
    h.sweep.run(h.now(), false).await.unwrap();
    let queued = h.queued().await;
    assert!(queued.iter().any(|n| n["grant"]["id"] == id.as_str()));

    let resp = h.send(req("DELETE", &format!("/grants/{id}"), None)).await;
    assert_eq!(resp.status().as_u16(), 204);

    assert_error(
        h.token_request(json!({"grant_id": id.as_str()})).await,
        404,
        "unknown_grant",
    )
    .await;
    assert_error(
        h.send(req("GET", &format!("/grants/{id}"), None)).await,
        404,
        "unknown_grant",
    )
    .await;
    // (the stand-in SharePoint says every user is Megan: alex's grant is found, hers is not)
    let found = body_json(
        h.send(req("GET", "/grants?email=megan@contoso.com", None))
            .await,
    )
    .await;
    let found: Vec<&str> = found["grants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["id"].as_str().unwrap())
        .collect();
    assert_eq!(found, vec![h.grant_id("alex").as_str()]);
    assert!(
        h.queued()
            .await
            .iter()
            .all(|n| n["grant"]["id"] != id.as_str()),
        "its queued notices went with it"
    );
    // the sweep never notices it again; the other user's grant goes on
    h.clock.set(exp + Duration::days(1));
    let s = h.sweep.run(h.now(), false).await.unwrap();
    assert_eq!(s.examined, 1, "only alex's grant is left");
    assert_error(
        h.send(req("DELETE", &format!("/grants/{id}"), None)).await,
        404,
        "unknown_grant",
    )
    .await;
}

#[tokio::test]
async fn a_path_that_is_not_utf8_is_the_contracts_error_after_the_caller_is_authorized() {
    let h = Harness::new().await;
    let unauth = Request::get("/grants/%ff")
        .header("authorization", "Bearer wrong-key-0123456789")
        .body(Body::empty())
        .unwrap();
    assert_error(h.send(unauth).await, 401, "unauthorized").await;
    for method in ["GET", "DELETE"] {
        assert_error(
            h.send(req(method, "/grants/%ff", None)).await,
            400,
            "bad_request",
        )
        .await;
    }
    assert_error(
        h.get("/renew/%ff?exp=1&sig=x", &[]).await,
        403,
        "invalid_link",
    )
    .await;
}
