//! `POST /token`: an access token for the app's backend.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::json;
use subtle::{Choice, ConstantTimeEq};

use super::error::{ApiError, exchange_error};
use super::{into_response, read_body};
use crate::core::grant::GrantId;
use crate::core::notice::rfc3339;
use crate::secrets_cell::SecretsCell;
use crate::service::exchange::TokenService;

/// Decides whether a `/token` caller may have tokens.
pub trait TokenAuthorizer: Send + Sync {
    fn authorize(&self, request: &Parts) -> bool;
}

/// `Authorization: Bearer {SPKEEPER_API_KEY}` (or, during a rotation, the previous key,
/// `api_key_secondary`), compared in constant time against the keys the secrets hold now: in
/// Lambda a rotated key is accepted within minutes, without a redeploy.
pub struct ApiKeyAuth(pub SecretsCell);

impl TokenAuthorizer for ApiKeyAuth {
    fn authorize(&self, request: &Parts) -> bool {
        let Some(value) = request
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        else {
            return false;
        };
        let Some((scheme, key)) = value.trim().split_once(' ') else {
            return false;
        };
        let secrets = self.0.get();
        // Every key is compared, whichever matches.
        let matched = secrets.api_keys().iter().fold(Choice::from(0), |m, k| {
            m | key.trim().as_bytes().ct_eq(k.expose_secret().as_bytes())
        });
        scheme.eq_ignore_ascii_case("bearer") && bool::from(matched)
    }
}

/// The app-backend routes' check: `/token`, `/handoff` and `/grants` are authorized alike.
pub(crate) fn require(auth: &dyn TokenAuthorizer, request: &Parts) -> Result<(), ApiError> {
    if auth.authorize(request) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "A valid API key is required.",
        ))
    }
}

#[derive(Clone)]
struct TokenState {
    tokens: Arc<TokenService>,
    auth: Arc<dyn TokenAuthorizer>,
}

pub fn router(tokens: Arc<TokenService>, auth: Arc<dyn TokenAuthorizer>) -> Router {
    Router::new()
        .route("/token", post(token))
        .with_state(TokenState { tokens, auth })
}

#[derive(Deserialize)]
struct TokenRequest {
    grant_id: String,
    #[serde(default)]
    host: Option<String>,
    /// Entra grants: one resource's scope.
    #[serde(default)]
    scope: Option<String>,
}

fn bad_request(message: &str) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
}

async fn token(State(st): State<TokenState>, req: Request) -> Response {
    let result = handle(&st, req).await;
    if let Err(e) = &result {
        tracing::info!(
            error = e.code,
            status = e.status.as_u16(),
            "token request refused"
        );
    }
    into_response(result)
}

async fn handle(st: &TokenState, req: Request) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    require(st.auth.as_ref(), &parts)?;
    let bytes = read_body(&parts.headers, body).await?;
    let req: TokenRequest = serde_json::from_slice(&bytes)
        .map_err(|_| bad_request("The body must be JSON: {\"grant_id\":\"…\",\"host\":\"…\"}."))?;
    let id = GrantId::parse(req.grant_id.trim())
        .ok_or_else(|| bad_request("grant_id must be 32 lowercase hex digits."))?;
    let host = req.host.as_deref().map(str::trim).filter(|h| !h.is_empty());

    let issued = st
        .tokens
        .access_token(
            &id,
            host,
            req.scope
                .as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty()),
        )
        .await
        .map_err(|e| exchange_error(&e))?;
    let body = json!({
        "access_token": issued.access_token.expose_secret(),
        "token_type": "Bearer",
        "expires_at": rfc3339(issued.expires_at),
        "resource": issued.resource,
        "grant": issued.grant,
    });
    let mut resp = axum::Json(body).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}
