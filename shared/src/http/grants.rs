//! The add-in app's backend routes beside `/token`, authorized alike: `POST /handoff` (trade a
//! launch's ticket for its grant), `GET /grants/{id}`, `GET /grants?email=…|login_name=…`
//! and `DELETE /grants/{id}` (erasure).

use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;

use super::error::{ApiError, grants_error};
use super::token::require;
use super::{TokenAuthorizer, into_response, read_body};
use crate::core::form_pairs;
use crate::core::grant::GrantId;
use crate::ports::UserKey;
use crate::service::grants::GrantsService;

#[derive(Clone)]
struct GrantsState {
    grants: Arc<GrantsService>,
    auth: Arc<dyn TokenAuthorizer>,
}

pub fn router(grants: Arc<GrantsService>, auth: Arc<dyn TokenAuthorizer>) -> Router {
    Router::new()
        .route("/handoff", post(handoff))
        .route("/grants", get(find))
        .route("/grants/{grant_id}", get(one).delete(forget))
        .with_state(GrantsState { grants, auth })
}

fn bad_request(message: &str) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
}

fn no_store(mut resp: Response) -> Response {
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn logged(route: &'static str, result: Result<Response, ApiError>) -> Response {
    if let Err(e) = &result {
        tracing::info!(
            route,
            error = e.code,
            status = e.status.as_u16(),
            "request refused"
        );
    }
    into_response(result.map(no_store))
}

/// The path's grant id; anything else (not UTF-8 either) is the contract's 400, after the
/// caller was authorized.
fn grant_id(raw: RawId) -> Result<GrantId, ApiError> {
    raw.ok()
        .and_then(|Path(raw)| GrantId::parse(raw.as_str()))
        .ok_or_else(|| bad_request("grant_id must be 32 lowercase hex digits."))
}

#[derive(Deserialize)]
struct HandoffRequest {
    ticket: String,
}

async fn handoff(State(st): State<GrantsState>, req: Request) -> Response {
    let result = async {
        let (parts, body) = req.into_parts();
        require(st.auth.as_ref(), &parts)?;
        let bytes = read_body(&parts.headers, body).await?;
        let req: HandoffRequest = serde_json::from_slice(&bytes)
            .map_err(|_| bad_request("The body must be JSON: {\"ticket\":\"…\"}."))?;
        let grant = st
            .grants
            .handoff(&req.ticket)
            .await
            .map_err(|e| grants_error(&e))?;
        Ok(axum::Json(json!({ "grant": grant })).into_response())
    }
    .await;
    logged("handoff", result)
}

type RawId = Result<Path<String>, PathRejection>;

async fn one(State(st): State<GrantsState>, raw: RawId, parts: Parts) -> Response {
    let result = async {
        require(st.auth.as_ref(), &parts)?;
        let grant = st
            .grants
            .get(&grant_id(raw)?)
            .await
            .map_err(|e| grants_error(&e))?;
        Ok(axum::Json(json!({ "grant": grant })).into_response())
    }
    .await;
    logged("grants", result)
}

async fn forget(State(st): State<GrantsState>, raw: RawId, parts: Parts) -> Response {
    let result = async {
        require(st.auth.as_ref(), &parts)?;
        st.grants
            .forget(&grant_id(raw)?)
            .await
            .map_err(|e| grants_error(&e))?;
        Ok(StatusCode::NO_CONTENT.into_response())
    }
    .await;
    logged("grants", result)
}

async fn find(State(st): State<GrantsState>, parts: Parts) -> Response {
    let result = async {
        require(st.auth.as_ref(), &parts)?;
        let q = form_pairs(parts.uri.query().unwrap_or("").as_bytes());
        let get = |name: &str| {
            q.iter()
                .find(|(k, v)| k == name && !v.trim().is_empty())
                .map(|(_, v)| v.as_str())
        };
        let key = match (get("email"), get("login_name")) {
            (Some(e), None) => UserKey::email(e),
            (None, Some(l)) => UserKey::login_name(l),
            _ => {
                return Err(bad_request(
                    "Give exactly one of email or login_name (and optionally site).",
                ));
            }
        };
        let grants = st
            .grants
            .find(&key, get("site"))
            .await
            .map_err(|e| grants_error(&e))?;
        Ok(axum::Json(json!({ "grants": grants })).into_response())
    }
    .await;
    logged("grants", result)
}
