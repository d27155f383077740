//! `openapi.yaml` and `schemas/notice.schema.json` against the real thing: every route's real
//! answers (every documented status) validate against the document with a JSON Schema
//! validator (the `jsonschema` crate), real notices of every type validate against the notice
//! schema, and `template.yaml`'s routes are exactly the document's paths. (Also: the LICENSE
//! file is the license Cargo.toml names.)

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Mutex;

use axum::body::Body;
use axum::http::Request;
use axum::response::Response;
use chrono::Duration;
use serde_json::{Value, json};
use spkeeper::core::notice::Notice;

use common::*;

fn repo_file(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The OpenAPI document, and every (path, method, status) a test has seen answered.
struct Spec {
    doc: Value,
    seen: Mutex<BTreeSet<(String, String, String)>>,
}

impl Spec {
    fn load() -> Spec {
        let doc: Value = serde_norway::from_str(&repo_file("openapi.yaml")).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        Spec {
            doc,
            seen: Mutex::new(BTreeSet::new()),
        }
    }

    /// Follows a local `$ref`.
    fn resolve<'a>(&'a self, v: &'a Value) -> &'a Value {
        match v.get("$ref").and_then(Value::as_str) {
            Some(r) => self
                .doc
                .pointer(r.trim_start_matches('#'))
                .unwrap_or_else(|| panic!("dangling $ref {r}")),
            None => v,
        }
    }

    /// Every documented (path, method, status).
    fn documented(&self) -> BTreeSet<(String, String, String)> {
        let mut all = BTreeSet::new();
        for (path, item) in self.doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                if method == "parameters" {
                    continue;
                }
                for status in op["responses"].as_object().unwrap().keys() {
                    all.insert((path.clone(), method.clone(), status.clone()));
                }
            }
        }
        all
    }

    /// Checks one real answer: its status is documented for the route, and a JSON body
    /// validates against the documented schema.
    fn check(&self, path: &str, method: &str, status: u16, body: Option<&Value>) {
        let op = &self.doc["paths"][path][method];
        assert!(op.is_object(), "{method} {path} is not in openapi.yaml");
        let resp = self.resolve(&op["responses"][status.to_string()]);
        assert!(
            resp.is_object(),
            "{method} {path} answered {status}, which openapi.yaml does not document"
        );
        if let Some(body) = body {
            let schema = self.resolve(&resp["content"]["application/json"]["schema"]);
            assert!(
                schema.is_object(),
                "{method} {path} {status}: no JSON schema documented"
            );
            // The schema with the document's components beside it, so its $refs resolve.
            let mut root = schema.clone();
            root["components"] = self.doc["components"].clone();
            let validator = jsonschema::draft202012::new(&root).unwrap();
            let errors: Vec<String> = validator
                .iter_errors(body)
                .map(|e| format!("{e} at {}", e.instance_path()))
                .collect();
            assert!(
                errors.is_empty(),
                "{method} {path} {status}: {body} does not match openapi.yaml: {errors:?}"
            );
        }
        self.seen.lock().unwrap().insert((
            path.to_string(),
            method.to_string(),
            status.to_string(),
        ));
    }

    async fn answer(&self, path: &str, method: &str, resp: Response) -> (u16, Option<Value>) {
        let status = resp.status().as_u16();
        let is_json = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.starts_with("application/json"));
        let text = body_text(resp).await;
        let body = is_json.then(|| serde_json::from_str::<Value>(&text).unwrap());
        self.check(path, method, status, body.as_ref());
        (status, body)
    }
}

fn api(method: &str, uri: &str, body: Option<Value>, key: &str) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .unwrap()
}

fn launch_req(query: &str, body: String, content_type: &str) -> Request<Body> {
    Request::post(format!("/launch?{query}"))
        .header("content-type", content_type)
        .header("accept", "application/json")
        .body(Body::from(body))
        .unwrap()
}

#[tokio::test]
async fn every_documented_answer_is_given_and_matches_openapi_yaml() {
    let spec = Spec::load();
    let mute = Stub::start(std::sync::Arc::new(spkeeper::clock::OffsetClock::new())).await;
    mute.set_realm(None);
    let h = Harness::with(Options {
        extra_env: vec![(
            "SPKEEPER_RETURN_URL",
            "https://app.example.com/after-launch".into(),
        )],
        also_allowed: vec![mute.addr.to_string()],
        ..Options::default()
    })
    .await;
    let form = |token: &str| format!("SPAppToken={}", urlencode(token));
    let json_form = "application/x-www-form-urlencoded";

    // /launch
    let resp = h
        .send(launch_req(
            &h.launch_query(),
            form(&h.token("megan")),
            json_form,
        ))
        .await;
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_string();
    spec.answer("/launch", "post", resp).await;
    let hand_off: BTreeMap<String, String> = url::Url::parse(&location)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect();
    let id = hand_off["grant_id"].clone();
    for (query, body, ct) in [
        (h.launch_query(), "SPSiteUrl=x".to_string(), json_form),
        (h.launch_query(), form(&h.token("x")), "application/json"),
        (
            "SPHostUrl=https%3A%2F%2Fevil.example.com".into(),
            form(&h.token("x")),
            json_form,
        ),
        (h.launch_query(), "x".repeat(70 * 1024), json_form),
    ] {
        spec.answer(
            "/launch",
            "post",
            h.send(launch_req(&query, body, ct)).await,
        )
        .await;
    }
    let wrong_secret = spkeeper::testkit::mint_context_token(
        &h.spec("x").claims(),
        &secrecy::SecretString::from("d3Jvbmctc2VjcmV0".to_string()),
    );
    spec.answer(
        "/launch",
        "post",
        h.send(launch_req(
            &h.launch_query(),
            form(&wrong_secret),
            json_form,
        ))
        .await,
    )
    .await;

    // a site whose realm cannot be discovered
    let mute_query = format!("SPHostUrl={}", urlencode(&mute.site_url()));
    spec.answer(
        "/launch",
        "post",
        h.send(launch_req(&mute_query, form(&h.token("y")), json_form))
            .await,
    )
    .await;

    // /status
    let session = cookie.split(';').next().unwrap().to_string();
    spec.answer(
        "/status",
        "get",
        h.get("/status", &[("cookie", &session)]).await,
    )
    .await;
    spec.answer("/status", "get", h.get("/status", &[]).await)
        .await;

    // /token
    let token = |body: Value| api("POST", "/token", Some(body), API_KEY);
    spec.answer(
        "/token",
        "post",
        h.send(token(json!({"grant_id": id}))).await,
    )
    .await;
    spec.answer("/token", "post", h.send(token(json!({"x": 1}))).await)
        .await;
    spec.answer(
        "/token",
        "post",
        h.send(api(
            "POST",
            "/token",
            Some(json!({"grant_id": id})),
            "wrong-key-0123456789",
        ))
        .await,
    )
    .await;
    spec.answer(
        "/token",
        "post",
        h.send(token(
            json!({"grant_id": "0123456789abcdef0123456789abcdef"}),
        ))
        .await,
    )
    .await;
    h.stub.script(&[Reply::Status(
        401,
        r#"{"error":"invalid_client","error_description":"AADSTS7000222: expired"}"#,
    )]);
    spec.answer(
        "/token",
        "post",
        h.send(token(json!({"grant_id": id, "host": "a.sharepoint.com"})))
            .await,
    )
    .await;
    h.stub.script(&[
        Reply::Status(500, ""),
        Reply::Status(500, ""),
        Reply::Status(500, ""),
    ]);
    spec.answer(
        "/token",
        "post",
        h.send(token(json!({"grant_id": id, "host": "b.sharepoint.com"})))
            .await,
    )
    .await;

    // /handoff
    let ticket = hand_off["ticket"].clone();
    let handoff = |t: &str| api("POST", "/handoff", Some(json!({ "ticket": t })), API_KEY);
    spec.answer("/handoff", "post", h.send(handoff(&ticket)).await)
        .await;
    spec.answer("/handoff", "post", h.send(handoff(&ticket)).await)
        .await;
    spec.answer("/handoff", "post", h.send(handoff("forged")).await)
        .await;
    spec.answer(
        "/handoff",
        "post",
        h.send(api(
            "POST",
            "/handoff",
            Some(json!({"ticket": ticket})),
            "nope-0123456789abc",
        ))
        .await,
    )
    .await;

    // /grants and /grants/{grant_id}
    for (uri, key) in [
        ("/grants?email=megan@contoso.com", API_KEY),
        ("/grants", API_KEY),
        ("/grants?email=megan@contoso.com", "nope-0123456789abc"),
    ] {
        spec.answer("/grants", "get", h.send(api("GET", uri, None, key)).await)
            .await;
    }
    let one = format!("/grants/{id}");
    for (method, uri, key) in [
        ("GET", one.as_str(), API_KEY),
        ("GET", "/grants/NOPE", API_KEY),
        ("GET", one.as_str(), "nope-0123456789abc"),
        ("GET", "/grants/0123456789abcdef0123456789abcdef", API_KEY),
        ("DELETE", "/grants/NOPE", API_KEY),
        ("DELETE", one.as_str(), "nope-0123456789abc"),
    ] {
        spec.answer(
            "/grants/{grant_id}",
            &method.to_ascii_lowercase(),
            h.send(api(method, uri, None, key)).await,
        )
        .await;
    }

    // /renew/{grant_id}, while the grant exists
    let renew = body_json(h.send(token(json!({"grant_id": id}))).await).await["grant"]["renew_url"]
        .as_str()
        .unwrap()
        .trim_start_matches(PUBLIC)
        .to_string();
    spec.answer("/renew/{grant_id}", "get", h.get(&renew, &[]).await)
        .await;
    spec.answer(
        "/renew/{grant_id}",
        "get",
        h.get(&format!("/renew/{id}?exp=1&sig=x"), &[]).await,
    )
    .await;

    // a second user: expired (409), then its ticket after erasure (404), erasure (204, 404)
    let resp = h.launch(&h.token("alex")).await;
    let alex_ticket: BTreeMap<String, String> =
        url::Url::parse(resp.headers()["location"].to_str().unwrap())
            .unwrap()
            .query_pairs()
            .into_owned()
            .collect();
    let alex = alex_ticket["grant_id"].clone();
    let alex_renew =
        body_json(h.send(token(json!({"grant_id": alex}))).await).await["grant"]["renew_url"]
            .as_str()
            .unwrap()
            .trim_start_matches(PUBLIC)
            .to_string();
    let delete = api("DELETE", &format!("/grants/{alex}"), None, API_KEY);
    spec.answer("/grants/{grant_id}", "delete", h.send(delete).await)
        .await;
    spec.answer(
        "/grants/{grant_id}",
        "delete",
        h.send(api("DELETE", &format!("/grants/{alex}"), None, API_KEY))
            .await,
    )
    .await;
    spec.answer(
        "/handoff",
        "post",
        h.send(handoff(&alex_ticket["ticket"])).await,
    )
    .await;
    spec.answer("/renew/{grant_id}", "get", h.get(&alex_renew, &[]).await)
        .await;

    let exp = h
        .store_load(&spkeeper::core::grant::GrantId::parse(&id).unwrap())
        .await
        .record
        .rt_expires_at;
    h.clock.set(exp + Duration::hours(1));
    spec.answer(
        "/token",
        "post",
        h.send(token(json!({"grant_id": id}))).await,
    )
    .await;
    h.clock.advance(Duration::seconds(1));
    let old_ticket = {
        h.clock.set(h.now() - Duration::days(1));
        let t = spkeeper::service::grants::issue_ticket(
            &h.ctx,
            &spkeeper::core::grant::GrantId::parse(&id).unwrap(),
            h.now(),
        );
        h.clock.set(h.now() + Duration::days(1));
        t
    };
    spec.answer("/handoff", "post", h.send(handoff(&old_ticket)).await)
        .await;

    // /healthz
    spec.answer("/healthz", "get", h.get("/healthz", &[]).await)
        .await;

    let seen = spec.seen.lock().unwrap().clone();
    // The Entra sign-in routes need the simulated Entra ID: tests/e2e_entra.rs checks their
    // answers against this document through the real binary.
    let missing: Vec<_> = spec
        .documented()
        .difference(&seen)
        .filter(|(path, _, _)| path != "/connect" && path != "/callback")
        .cloned()
        .collect();
    assert!(
        missing.is_empty(),
        "documented but never produced by this test: {missing:?}"
    );
}

fn notice_validator() -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(&repo_file("schemas/notice.schema.json")).unwrap();
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap()
}

#[tokio::test]
async fn real_notices_of_every_type_match_the_notice_schema() {
    let h = Harness::with(Options {
        extra_env: vec![(
            "SPKEEPER_CLIENT_SECRET_EXPIRES_AT",
            (chrono::Utc::now() + Duration::days(10)).to_rfc3339(),
        )],
        ..Options::default()
    })
    .await;
    // client_secret.expiring
    h.sweep.run(h.now(), false).await.unwrap();
    // expiring, then renewed by a relaunch
    assert_eq!(h.launch(&h.token("megan")).await.status().as_u16(), 303);
    let id = h.grant_id("megan");
    let exp = h.store_load(&id).await.record.rt_expires_at;
    h.clock.set(exp - Duration::days(30) + Duration::hours(1));
    h.sweep.run(h.now(), false).await.unwrap();
    assert_eq!(h.launch(&h.token("megan")).await.status().as_u16(), 303);
    // revoked (ACS says invalid_grant on a cold cache)
    h.stub.script(&[Reply::Status(
        400,
        r#"{"error":"invalid_grant","error_description":"AADSTS50173: revoked"}"#,
    )]);
    let _ = h
        .token_request(json!({"grant_id": id.as_str(), "host": "c.sharepoint.com"}))
        .await;
    // expired: another user, past expiry
    assert_eq!(h.launch(&h.token("alex")).await.status().as_u16(), 303);
    let alex_exp = h.store_load(&h.grant_id("alex")).await.record.rt_expires_at;
    h.clock.set(alex_exp + Duration::hours(1));
    h.sweep.run(h.now(), false).await.unwrap();

    let notices = h.queued().await;
    let validator = notice_validator();
    let mut types = BTreeSet::new();
    for n in &notices {
        let errors: Vec<String> = validator.iter_errors(n).map(|e| e.to_string()).collect();
        assert!(
            errors.is_empty(),
            "{n} does not match the schema: {errors:?}"
        );
        types.insert(n["type"].as_str().unwrap().to_string());
    }
    assert_eq!(
        types,
        [
            "client_secret.expiring",
            "refresh_token.expired",
            "refresh_token.expiring",
            "refresh_token.renewed",
            "refresh_token.revoked",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    );
}

#[test]
fn the_notice_schema_refuses_what_no_notice_looks_like() {
    let v = notice_validator();
    let good = json!({
        "version": 1, "id": "ntc_0123456789abcdef0123456789abcdef",
        "type": "refresh_token.expiring", "created_at": "2027-04-25T22:16:00Z",
        "grant": {"id": "a11af3a28442410f8fd8e4eebacce37d", "realm": "r",
                  "site_url": "https://contoso.sharepoint.com/sites/a", "user": null},
        "refresh_token_expires_at": "2027-05-25T22:15:56Z", "days_left": 30,
        "renew_url": "https://addin.example.com/renew/a11af3a28442410f8fd8e4eebacce37d?exp=1&sig=x"
    });
    assert!(v.is_valid(&good));
    for (field, bad) in [
        ("version", json!(2)),
        ("type", json!("refresh_token.vanished")),
        ("grant", json!(null)),
        ("days_left", json!(-1)),
        ("access_token", json!("leaked")),
    ] {
        let mut n = good.clone();
        n[field] = bad;
        assert!(!v.is_valid(&n), "{field}");
    }
}

#[test]
fn a_webhook_test_notice_matches_the_schema_and_carries_no_grant() {
    let v = notice_validator();
    let test: Value =
        serde_json::from_str(&Notice::webhook_test("nonce", chrono::Utc::now()).to_json()).unwrap();
    let errors: Vec<String> = v.iter_errors(&test).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{test} does not match: {errors:?}");
    // It is about no grant and no secret: either would make it something else.
    for (field, value) in [
        (
            "grant",
            json!({"id": "a11af3a28442410f8fd8e4eebacce37d", "realm": "r",
                   "site_url": "https://contoso.sharepoint.com/sites/a", "user": null}),
        ),
        ("client_secret_expires_at", json!("2027-05-25T22:15:56Z")),
        (
            "renew_url",
            json!("https://addin.example.com/renew/a11af3a28442410f8fd8e4eebacce37d?exp=1&sig=x"),
        ),
    ] {
        let mut n = test.clone();
        n[field] = value;
        assert!(!v.is_valid(&n), "webhook.test with {field}");
    }
    // client_secret.expiring still needs its expiry.
    let mut n = test.clone();
    n["type"] = json!("client_secret.expiring");
    assert!(!v.is_valid(&n));
    n["client_secret_expires_at"] = json!("2027-05-25T22:15:56Z");
    assert!(v.is_valid(&n));
}

/// `template.yaml`'s HTTP routes are exactly the document's operations.
#[test]
fn template_routes_and_openapi_paths_agree() {
    let spec = Spec::load();
    let mut documented = BTreeSet::new();
    for (path, item) in spec.doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if method != "parameters" {
                documented.insert((method.to_ascii_uppercase(), path.clone()));
            }
        }
    }
    let template: serde_norway::Value =
        serde_norway::from_str(&repo_file("template.yaml")).unwrap();
    let mut routed = BTreeSet::new();
    for (_, resource) in template["Resources"].as_mapping().unwrap() {
        let Some(events) = resource["Properties"]["Events"].as_mapping() else {
            continue;
        };
        for (_, event) in events {
            if event["Type"].as_str() == Some("HttpApi") {
                let p = &event["Properties"];
                routed.insert((
                    p["Method"].as_str().unwrap().to_ascii_uppercase(),
                    p["Path"].as_str().unwrap().to_string(),
                ));
            }
        }
    }
    assert_eq!(routed, documented);
}

#[test]
fn the_license_file_is_the_license_cargo_toml_names() {
    let manifest = repo_file("Cargo.toml");
    assert!(
        manifest.contains("license = \"MIT\""),
        "Cargo.toml names MIT"
    );
    let license = repo_file("LICENSE");
    assert!(license.starts_with("MIT License"), "{license}");
    assert!(license.contains("Permission is hereby granted, free of charge"));
}
