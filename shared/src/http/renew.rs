//! `GET /renew/{grant_id}?exp=…&sig=…`: the link in every notice. Verified, then sent back
//! through SharePoint's AppRedirect.aspx on the stored, still-allowlisted host.

use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::error::{ApiError, link_error, sign_in_error};
use super::into_response;
use crate::config::RenewVia;
use crate::core::form_pairs;
use crate::core::grant::GrantId;
use crate::core::grant::Kind;
use crate::core::links::{LinkError, relaunch_url};
use crate::service::signin::{SignInService, renew_begin};

/// The renew route needs sign-in for Entra grants (and for ACS grants migrating to Entra).
pub fn router(svc: Arc<SignInService>) -> Router {
    Router::new()
        .route("/renew/{grant_id}", get(renew))
        .with_state(svc)
}

async fn renew(
    State(svc): State<Arc<SignInService>>,
    raw_id: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Response {
    // A path that is not even UTF-8 is a bad link like any other.
    let raw_id = raw_id.map(|Path(p)| p).unwrap_or_default();
    let result = redirect(&svc, &raw_id, query.as_deref().unwrap_or("")).await;
    if let Err(e) = &result {
        tracing::info!(error = e.code, "renew link refused");
    }
    into_response(result)
}

async fn redirect(svc: &SignInService, raw_id: &str, query: &str) -> Result<Response, ApiError> {
    let ctx = svc.context();
    let now = ctx.now();
    let q = form_pairs(query.as_bytes());
    let get = |name: &str| q.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let id = GrantId::parse(raw_id).ok_or_else(|| link_error(LinkError::BadSignature))?;
    let (Some(exp), Some(sig)) = (get("exp"), get("sig")) else {
        return Err(link_error(LinkError::BadSignature));
    };
    ctx.secrets
        .get()
        .links
        .verify_renew(&id, exp, sig, now)
        .map_err(link_error)?;

    let stored = ctx
        .grants
        .load(&id)
        .await
        .map_err(|e| ApiError::internal(&e))?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_grant",
                "We no longer know this connection. Open the add-in from SharePoint.",
            )
        })?;
    // The host was allowlisted when stored; it must still be now.
    let site = ctx
        .settings
        .allowed_sp_hosts
        .check_site_url(&stored.record.site_url)
        .map_err(|_| {
            ApiError::new(
                StatusCode::FORBIDDEN,
                "host_not_allowed",
                "This SharePoint host is no longer allowed for this add-in.",
            )
        })?;
    let g = &stored.record;
    let via_entra = g.kind == Kind::Entra || ctx.settings.renew_via == RenewVia::Entra;
    let mut resp = StatusCode::FOUND.into_response();
    let target = if via_entra {
        // Entra sign-in for the grant's site, the user and tenant hinted; for an ACS grant,
        // the migration (its user's sign-in carries the grant over).
        let begun = renew_begin(svc, g).map_err(|e| sign_in_error(&e))?;
        resp.headers_mut().insert(
            header::SET_COOKIE,
            HeaderValue::from_str(&begun.cookie).map_err(|e| ApiError::internal(&e))?,
        );
        tracing::info!(grant_id = %id, kind = %g.kind, "renew link followed; signing in with Entra ID");
        begun.location
    } else {
        let client_id = ctx
            .settings
            .client_id
            .as_deref()
            .ok_or_else(ApiError::not_found)?;
        tracing::info!(grant_id = %id, "renew link followed; relaunching through SharePoint");
        relaunch_url(&site, client_id, &ctx.settings.public_url)
    };
    resp.headers_mut().insert(
        header::LOCATION,
        HeaderValue::from_str(&target).map_err(|e| ApiError::internal(&e))?,
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}
