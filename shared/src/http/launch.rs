//! `POST /launch`: SharePoint's redirect target.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use url::Url;

use super::error::{ApiError, launch_error};
use super::{into_response, media_type, read_body};
use crate::config::Settings;
use crate::context::Context;
use crate::core::grant::GrantId;
use crate::core::links::{SESSION_COOKIE, SESSION_HOURS};
use crate::service::grants::handoff_location;
use crate::service::launch::{LaunchInput, LaunchService};

pub fn router(svc: Arc<LaunchService>) -> Router {
    Router::new().route("/launch", post(launch)).with_state(svc)
}

async fn launch(State(svc): State<Arc<LaunchService>>, req: Request) -> Response {
    let result = handle(&svc, req).await;
    if let Err(e) = &result {
        tracing::info!(
            event = "launch_refused",
            error = e.code,
            status = e.status.as_u16(),
            "launch refused"
        );
    }
    into_response(result)
}

/// Login CSRF: a browser's cross-site form post carries `Origin`. When it is there it must be
/// an allowed SharePoint host (AppRedirect.aspx posts from the host web) or our own public
/// origin; anything else, `null` included, is refused before the body is looked at.
fn check_origin(headers: &HeaderMap, settings: &Settings) -> Result<(), ApiError> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let allowed = origin.to_str().ok().is_some_and(|o| {
        Url::parse(o).is_ok_and(|u| {
            u.origin() == settings.public_url.origin()
                || (u.path() == "/"
                    && u.query().is_none()
                    && settings.allowed_sp_hosts.check_url(o).is_ok())
        })
    });
    if allowed {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
            "This launch did not come from an allowed SharePoint site.",
        ))
    }
}

async fn handle(svc: &LaunchService, req: Request) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let bytes = read_body(&parts.headers, body).await?;
    if media_type(&parts.headers).as_deref() != Some("application/x-www-form-urlencoded") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "The launch must be an HTML form post (application/x-www-form-urlencoded).",
        ));
    }
    check_origin(&parts.headers, &svc.context().settings)?;
    let input = LaunchInput::parse(&bytes, parts.uri.query());
    let launched = svc.launch(&input).await.map_err(|e| launch_error(&e))?;

    signed_in_redirect(
        svc.context(),
        &launched.grant_id,
        &launched.standard_tokens,
        &[],
    )
}

/// `303` to the hand-off (the app's `RETURN_URL` with a ticket, else `/status`) with the session
/// cookie: how a launch and an Entra sign-in both end. `extra_cookies` are set too.
pub(crate) fn signed_in_redirect(
    ctx: &Context,
    id: &GrantId,
    standard_tokens: &[(&str, String)],
    extra_cookies: &[String],
) -> Result<Response, ApiError> {
    let now = ctx.now();
    let session = ctx.secrets.get().links.session_value(id, now);
    // SameSite=None: SharePoint may show the add-in in a frame of another site. Secure is kept
    // even on a loopback URL: browsers accept Secure cookies from http://localhost.
    let cookie = format!(
        "{SESSION_COOKIE}={session}; Path=/; Max-Age={}; HttpOnly; Secure; SameSite=None",
        SESSION_HOURS * 3600
    );
    let location = handoff_location(ctx, id, standard_tokens, now);
    let mut resp = StatusCode::SEE_OTHER.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::LOCATION,
        HeaderValue::from_str(&location).map_err(|e| ApiError::internal(&e))?,
    );
    for c in std::iter::once(&cookie).chain(extra_cookies) {
        h.append(
            header::SET_COOKIE,
            HeaderValue::from_str(c).map_err(|e| ApiError::internal(&e))?,
        );
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}
