//! Entra ID sign-in: `GET /connect?site=…` and `POST /callback` (Entra's form_post; a `GET`
//! with a query is accepted too).

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::error::{ApiError, sign_in_error};
use super::launch::signed_in_redirect;
use super::pages::{escape, html};
use super::{cookie, into_response, media_type, read_body};
use crate::core::form_pairs;
use crate::service::signin::{Outcome, SIGNIN_COOKIE, SignInService};

pub fn router(svc: Arc<SignInService>) -> Router {
    Router::new()
        .route("/connect", get(connect))
        .route("/callback", get(callback).post(callback))
        .with_state(svc)
}

/// Expires the sign-in cookie: a state works once.
fn clear_sign_in_cookie() -> String {
    format!("{SIGNIN_COOKIE}=; Path=/; Max-Age=0; HttpOnly; Secure; SameSite=None")
}

async fn connect(State(svc): State<Arc<SignInService>>, req: Request) -> Response {
    let result = (|| -> Result<Response, ApiError> {
        let q = form_pairs(req.uri().query().unwrap_or("").as_bytes());
        let get = |n: &str| q.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        let begun = svc
            .begin(get("site"), get("login_hint"), None, None)
            .map_err(|e| sign_in_error(&e))?;
        let mut resp = StatusCode::FOUND.into_response();
        let h = resp.headers_mut();
        h.insert(
            header::LOCATION,
            HeaderValue::from_str(&begun.location).map_err(|e| ApiError::internal(&e))?,
        );
        h.insert(
            header::SET_COOKIE,
            HeaderValue::from_str(&begun.cookie).map_err(|e| ApiError::internal(&e))?,
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Ok(resp)
    })();
    if let Err(e) = &result {
        tracing::info!(
            error = e.code,
            status = e.status.as_u16(),
            "sign-in refused"
        );
    }
    into_response(result)
}

async fn callback(State(svc): State<Arc<SignInService>>, req: Request) -> Response {
    let result = handle_callback(&svc, req).await;
    if let Err(e) = &result {
        tracing::info!(
            event = "sign_in_refused",
            error = e.code,
            status = e.status.as_u16(),
            "sign-in callback refused"
        );
    }
    into_response(result)
}

async fn handle_callback(svc: &SignInService, req: Request) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let params = if parts.method == Method::POST {
        let bytes = read_body(&parts.headers, body).await?;
        if media_type(&parts.headers).as_deref() != Some("application/x-www-form-urlencoded") {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "The callback must be a form post (application/x-www-form-urlencoded).",
            ));
        }
        form_pairs(&bytes)
    } else {
        form_pairs(parts.uri.query().unwrap_or("").as_bytes())
    };
    let signed_in = svc
        .finish(&params, cookie(&parts.headers, SIGNIN_COOKIE))
        .await
        .map_err(|e| sign_in_error(&e))?;
    let ctx = svc.context();
    let clear = clear_sign_in_cookie();
    if signed_in.outcome == Outcome::SomeoneElsesLink {
        // The link carried someone else's ACS grant: they keep it; this user got their own.
        let now = ctx.now();
        let mut resp = html(
            StatusCode::OK,
            "Connected with your own account",
            &format!(
                "<h1>You are connected with your own account</h1>\
                 <p>The link you followed belonged to someone else's connection, so it was left \
                 as it was. Your own connection is ready.</p>\
                 <p class=\"muted\">Grant <code>{}</code></p>",
                escape(signed_in.grant_id.as_str())
            ),
        );
        let session = ctx
            .secrets
            .get()
            .links
            .session_value(&signed_in.grant_id, now);
        for c in [
            format!(
                "{}={session}; Path=/; Max-Age={}; HttpOnly; Secure; SameSite=None",
                crate::core::links::SESSION_COOKIE,
                crate::core::links::SESSION_HOURS * 3600
            ),
            clear,
        ] {
            resp.headers_mut().append(
                header::SET_COOKIE,
                HeaderValue::from_str(&c).map_err(|e| ApiError::internal(&e))?,
            );
        }
        return Ok(resp);
    }
    signed_in_redirect(ctx, &signed_in.grant_id, &[], &[clear])
}
