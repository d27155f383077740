//! `GET /status`: the signed-in user's grant, as a page.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;

use super::error::ApiError;
use super::pages::{escape, escape_attr, html};
use super::{cookie, into_response};
use crate::context::Context;
use crate::core::grant::Status;
use crate::core::links::{SESSION_COOKIE, SESSION_HOURS};

pub fn router(ctx: Arc<Context>) -> Router {
    Router::new().route("/status", get(status)).with_state(ctx)
}

fn no_session() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "no_session",
        format!(
            "You are not signed in here, or your session has ended (a session lasts \
             {SESSION_HOURS} hours after you open the add-in). Open the add-in from your \
             SharePoint site to see its connection."
        ),
    )
}

async fn status(State(ctx): State<Arc<Context>>, headers: HeaderMap) -> Response {
    into_response(page(&ctx, &headers).await)
}

async fn page(ctx: &Context, headers: &HeaderMap) -> Result<Response, ApiError> {
    let now = ctx.now();
    let id = cookie(headers, SESSION_COOKIE)
        .and_then(|v| ctx.secrets.get().links.verify_session(v, now).ok())
        .ok_or_else(no_session)?;
    let stored = ctx
        .grants
        .load(&id)
        .await
        .map_err(|e| ApiError::internal(&e))?
        .ok_or_else(no_session)?;
    let g = &stored.record;
    let s = ctx.grant_view(g, now);

    let user = g
        .user
        .as_ref()
        .map(|u| {
            if u.email.is_empty() {
                escape(&u.title)
            } else {
                format!("{} &lt;{}&gt;", escape(&u.title), escape(&u.email))
            }
        })
        .unwrap_or_else(|| "<span class=\"muted\">not known yet</span>".into());
    let headline = match s.status {
        Status::Active => "The add-in is connected".to_string(),
        Status::Expiring => format!(
            "The connection ends in {} day{}",
            s.days_left,
            if s.days_left == 1 { "" } else { "s" }
        ),
        Status::Expired => "The connection has expired".to_string(),
        Status::Revoked => "The connection was revoked".to_string(),
    };
    let advice = if s.status.needs_relaunch() {
        "<p class=\"warn\">The add-in can no longer act for you. Reconnect to restore it.</p>"
    } else {
        "<p class=\"muted\">SharePoint's permission lasts six months from your last launch. Renew any time to restart it.</p>"
    };
    let body = format!(
        "<h1>{headline}</h1>{advice}<dl>\
         <dt>Site</dt><dd><a href=\"{site_attr}\">{site}</a></dd>\
         <dt>User</dt><dd>{user}</dd>\
         <dt>Connected until</dt><dd>{until}</dd>\
         <dt>Days left</dt><dd>{days}</dd>\
         <dt>Status</dt><dd>{status}</dd></dl>\
         <p><a class=\"button\" href=\"{renew}\">Renew now</a></p>\
         <p class=\"muted\">Grant <code>{id}</code></p>",
        site_attr = escape_attr(&g.site_url),
        site = escape(&g.site_url),
        until = escape(&s.refresh_token_expires_at),
        days = s.days_left,
        status = s.status,
        renew = escape_attr(&s.renew_url),
        id = g.id,
    );
    Ok(html(StatusCode::OK, "Connection status", &body))
}
