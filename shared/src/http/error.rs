//! Contract errors: `{"error":"<code>","message":"<one human sentence>"}`, or the same as a
//! small page for a browser. One function per concern maps service errors to them; anything
//! unexpected becomes an opaque 500 with the full chain logged (never sent).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::core::context_token::TokenError;
use crate::core::links::LinkError;
use crate::service::RealmError;
use crate::service::exchange::ExchangeError;
use crate::service::grants::GrantsError;
use crate::service::launch::LaunchError;
use crate::service::signin::SignInError;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub renew_url: Option<String>,
    /// Why a relaunch is required (`409 relaunch_required`), when known.
    pub reason: Option<&'static str>,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            renew_url: None,
            reason: None,
            retry_after: None,
        }
    }

    /// Logs the whole error chain and answers with nothing of it.
    pub fn internal(err: &(dyn std::error::Error + 'static)) -> Self {
        let mut chain = err.to_string();
        let mut source = err.source();
        while let Some(s) = source {
            chain.push_str(": ");
            chain.push_str(&s.to_string());
            source = s.source();
        }
        tracing::error!(error = %chain, "internal error");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "Something went wrong on our side. Please try again later.",
        )
    }

    pub fn payload_too_large() -> Self {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "The request body is larger than 64 KiB.",
        )
    }

    pub fn not_found() -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "There is nothing at this address.",
        )
    }
}

/// Put in the response's extensions so the HTML negotiation can render the same error.
#[derive(Debug, Clone)]
pub struct ErrorDetails(pub ApiError);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"error": self.code, "message": self.message});
        if let Some(u) = &self.renew_url {
            body["renew_url"] = json!(u);
        }
        if let Some(r) = self.reason {
            body["reason"] = json!(r);
        }
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED && self.code == "unauthorized" {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        resp.extensions_mut().insert(ErrorDetails(self));
        resp
    }
}

pub fn token_error(e: &TokenError) -> ApiError {
    let (status, message) = match e {
        TokenError::Malformed(_) => (
            StatusCode::BAD_REQUEST,
            "The context token from SharePoint could not be read.",
        ),
        TokenError::UnsupportedAlgorithm => (
            StatusCode::UNAUTHORIZED,
            "The context token is signed with an algorithm other than HS256.",
        ),
        TokenError::InvalidSignature => (
            StatusCode::UNAUTHORIZED,
            "The context token's signature does not match this add-in's client secret.",
        ),
        TokenError::Expired => (
            StatusCode::UNAUTHORIZED,
            "The context token has expired; open the add-in from SharePoint again.",
        ),
        TokenError::NotYetValid => (
            StatusCode::UNAUTHORIZED,
            "The context token is not valid yet; check the server's clock.",
        ),
        TokenError::InvalidAudience => (
            StatusCode::UNAUTHORIZED,
            "The context token was issued for another add-in or host.",
        ),
        TokenError::InvalidIssuer => (
            StatusCode::UNAUTHORIZED,
            "The context token was not issued by ACS for SharePoint.",
        ),
        TokenError::UntrustedSts => (
            StatusCode::FORBIDDEN,
            "The context token names a token service that is not trusted.",
        ),
    };
    ApiError::new(status, e.code(), message)
}

pub fn launch_error(e: &LaunchError) -> ApiError {
    match e {
        LaunchError::MissingContextToken => ApiError::new(
            StatusCode::BAD_REQUEST,
            "missing_context_token",
            "No context token was posted. Open the add-in from SharePoint.",
        ),
        LaunchError::MissingHostUrl => ApiError::new(
            StatusCode::BAD_REQUEST,
            "missing_host_url",
            "SPHostUrl is missing or is not an absolute http(s) URL.",
        ),
        LaunchError::SharePoint { correlation_id } => ApiError::new(
            StatusCode::BAD_REQUEST,
            "sharepoint_error",
            format!(
                "SharePoint could not launch the add-in. If this keeps happening, give your administrator this reference: {correlation_id}."
            ),
        ),
        LaunchError::HostNotAllowed => ApiError::new(
            StatusCode::FORBIDDEN,
            "host_not_allowed",
            "This SharePoint host is not allowed for this add-in.",
        ),
        LaunchError::Realm(r) => realm_error(r),
        LaunchError::Token(t) => token_error(t),
        LaunchError::AcsNotConfigured => ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "This deployment serves no SharePoint add-in launches.",
        ),
        LaunchError::Store(_) | LaunchError::Seal(_) | LaunchError::Contention => {
            ApiError::internal(e)
        }
    }
}

pub fn exchange_error(e: &ExchangeError) -> ApiError {
    match e {
        ExchangeError::UnknownGrant => ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_grant",
            "There is no grant with this id.",
        ),
        ExchangeError::HostNotAllowed => ApiError::new(
            StatusCode::BAD_REQUEST,
            "host_not_allowed",
            "This host is not an allowed SharePoint host.",
        ),
        ExchangeError::RelaunchRequired { renew_url, reason } => ApiError {
            renew_url: Some(renew_url.clone()),
            reason: reason.map(|r| r.as_str()),
            ..ApiError::new(
                StatusCode::CONFLICT,
                "relaunch_required",
                "The user's refresh token is expired or revoked; they must sign in again (open the add-in, or follow the renew link).",
            )
        },
        ExchangeError::StsRejectedClient => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "sts_rejected_client",
            "The token service refused the app's client credentials; an operator must check the client secret or certificate.",
        ),
        ExchangeError::StsUnavailable { retry_after } => ApiError {
            retry_after: Some((*retry_after).max(1)),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "sts_unavailable",
                "The token service is not answering; try again shortly.",
            )
        },
        ExchangeError::BadScope(why) => ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("The scope is not one this grant can be asked for: {why}."),
        ),
        ExchangeError::Store(_) | ExchangeError::Seal(_) => ApiError::internal(e),
    }
}

pub fn grants_error(e: &GrantsError) -> ApiError {
    match e {
        GrantsError::UnknownGrant => ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_grant",
            "There is no grant with this id.",
        ),
        GrantsError::InvalidTicket => ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_ticket",
            "This ticket was not issued by spkeeper, or was altered.",
        ),
        GrantsError::TicketExpired => ApiError::new(
            StatusCode::GONE,
            "ticket_expired",
            "This ticket has expired (tickets last 120 seconds); have the user open the add-in again.",
        ),
        GrantsError::TicketUsed => ApiError::new(
            StatusCode::CONFLICT,
            "ticket_used",
            "This ticket was used already; a ticket works once.",
        ),
        GrantsError::Store(_) => ApiError::internal(e),
    }
}

pub fn realm_error(e: &RealmError) -> ApiError {
    match e {
        RealmError::Mismatch => ApiError::new(
            StatusCode::FORBIDDEN,
            "host_realm_mismatch",
            "The SharePoint site belongs to another tenant than the one that signed in.",
        ),
        RealmError::Unreachable(_) => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "sharepoint_unreachable",
            "The SharePoint site could not be reached to confirm its tenant; try again shortly.",
        ),
        RealmError::Store(_) => ApiError::internal(e),
    }
}

pub fn sign_in_error(e: &SignInError) -> ApiError {
    match e {
        SignInError::Realm(r) => realm_error(r),
        SignInError::NotConfigured => ApiError::new(
            StatusCode::NOT_FOUND,
            "entra_not_configured",
            "Sign-in with Microsoft Entra ID is not configured here.",
        ),
        SignInError::MissingSite => ApiError::new(
            StatusCode::BAD_REQUEST,
            "missing_site",
            "Say which SharePoint site to connect: /connect?site=https://…",
        ),
        SignInError::HostNotAllowed => ApiError::new(
            StatusCode::FORBIDDEN,
            "host_not_allowed",
            "This SharePoint host is not allowed for this app.",
        ),
        SignInError::InvalidState => ApiError::new(
            StatusCode::FORBIDDEN,
            "invalid_state",
            "This sign-in is not one this browser started, or it was used or took too long. Start again.",
        ),
        SignInError::Declined => ApiError::new(
            StatusCode::FORBIDDEN,
            "sign_in_declined",
            "The sign-in was cancelled or the permissions were declined. Nothing was connected.",
        ),
        SignInError::StsError(_) => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "sts_error",
            "Microsoft Entra ID could not complete the sign-in. Try again, or ask your administrator.",
        ),
        SignInError::StsRejectedClient => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "sts_rejected_client",
            "Microsoft Entra ID refused this app's credentials; an operator must check them.",
        ),
        SignInError::StsUnavailable { retry_after } => ApiError {
            retry_after: Some((*retry_after).max(1)),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "sts_unavailable",
                "Microsoft Entra ID is not answering; try again shortly.",
            )
        },
        SignInError::InvalidIdToken(_) => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_id_token",
            "The sign-in could not be verified.",
        ),
        SignInError::Store(_) | SignInError::Seal(_) => ApiError::internal(e),
    }
}

pub fn link_error(e: LinkError) -> ApiError {
    match e {
        LinkError::BadSignature => ApiError::new(
            StatusCode::FORBIDDEN,
            "invalid_link",
            "This renew link is not valid.",
        ),
        LinkError::Expired => ApiError::new(
            StatusCode::FORBIDDEN,
            "link_expired",
            "This renew link has expired. Open the add-in from SharePoint instead.",
        ),
    }
}
