//! HTTP: one axum `Router` per concern (launch, status, token, renew, health), each built from
//! its dependencies. A Lambda serves its routers with `lambda_http`; the CLI mounts them all on
//! one local server. [`finish`] adds what every host needs: contract 404/405 errors and HTML
//! pages for browsers.

pub mod error;
pub mod pages;

mod grants;
mod launch;
mod renew;
mod signin;
mod status;
mod token;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

pub use grants::router as grants_router;
pub use launch::router as launch_router;
pub use renew::router as renew_router;
pub use signin::router as signin_router;
pub use status::router as status_router;
pub use token::{ApiKeyAuth, TokenAuthorizer, router as token_router};

use crate::config::Settings;
use crate::secrets_cell::SecretsCell;
use error::{ApiError, ErrorDetails};

/// The largest request body any route reads.
pub const BODY_LIMIT: usize = 64 * 1024;

pub fn health_router() -> Router {
    Router::new().route(
        "/healthz",
        get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
    )
}

/// Headers every response gets, computed once from the settings.
#[derive(Clone)]
struct SafeHeaders {
    /// For HTML pages that set no policy of their own: nothing but our inline style, forms only
    /// to us, and framing only by us and the allowed SharePoint hosts (add-in parts).
    csp: HeaderValue,
    /// `Strict-Transport-Security`, when the public URL is https.
    hsts: Option<HeaderValue>,
}

impl SafeHeaders {
    fn new(settings: &Settings) -> Self {
        let hosts = settings.allowed_sp_hosts.origins().join(" ");
        let policy = format!(
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; base-uri 'none'; \
             form-action 'self'; frame-ancestors 'self' {hosts}"
        );
        SafeHeaders {
            csp: HeaderValue::from_str(policy.trim_end()).unwrap_or_else(|_| {
                HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'")
            }),
            hsts: (settings.public_url.scheme() == "https")
                .then(|| HeaderValue::from_static("max-age=31536000")),
        }
    }
}

/// Adds the contract's 404/405 errors, HTML error pages for browsers, a request id (the
/// `x-request-id` header, on error pages and on every log line the request writes), and safe
/// headers (`nosniff`, no referrer, a Content-Security-Policy on every page, HSTS over https).
pub fn finish(router: Router, settings: &Settings) -> Router {
    router
        .fallback(|| async { ApiError::not_found() })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "This method is not allowed here.",
            )
        })
        .layer(middleware::from_fn_with_state(
            SafeHeaders::new(settings),
            negotiate,
        ))
}

/// Before each request, reads the secrets again if they are old ([`SecretsCell`]): a rotated
/// key or client secret reaches a running Lambda instance within minutes, without a redeploy.
pub fn refreshing_secrets(router: Router, secrets: SecretsCell) -> Router {
    router.layer(middleware::from_fn_with_state(secrets, refresh_secrets))
}

async fn refresh_secrets(State(secrets): State<SecretsCell>, req: Request, next: Next) -> Response {
    secrets.refresh_if_stale().await;
    next.run(req).await
}

fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.to_ascii_lowercase().contains("text/html"))
}

/// A browser (`Accept: text/html`) gets an error as a small page with the same status.
async fn negotiate(State(safe): State<SafeHeaders>, req: Request, next: Next) -> Response {
    use tracing::Instrument;
    let html = wants_html(req.headers());
    let id = request_id(req.extensions());
    let span = tracing::info_span!("request", request_id = %id);
    let mut resp = next.run(req).instrument(span).await;
    if html && let Some(ErrorDetails(e)) = resp.extensions().get::<ErrorDetails>() {
        resp = pages::error_page(e, &id);
    }
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    let is_page = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.to_ascii_lowercase().starts_with("text/html"));
    let h = resp.headers_mut();
    if is_page && !h.contains_key(header::CONTENT_SECURITY_POLICY) {
        h.insert(header::CONTENT_SECURITY_POLICY, safe.csp.clone());
    }
    if let Some(hsts) = &safe.hsts {
        h.insert(header::STRICT_TRANSPORT_SECURITY, hsts.clone());
    }
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    resp
}

/// The id to quote to support for one request: API Gateway's (so it matches the access log)
/// in Lambda, else a fresh random one. Never taken from the caller's headers.
fn request_id(extensions: &axum::http::Extensions) -> String {
    #[cfg(feature = "aws")]
    if let Some(id) =
        crate::aws::iam::apigw_request_id(extensions).filter(|id| plain_request_id(id))
    {
        return id;
    }
    #[cfg(not(feature = "aws"))]
    let _ = extensions;
    let mut bytes = [0u8; 12];
    if getrandom::fill(&mut bytes).is_err() {
        return "unknown".into();
    }
    hex::encode(bytes)
}

/// An id fit for a header, a log line and a page: 1–64 letters, digits, `-`, `_` or `=`.
#[cfg_attr(not(feature = "aws"), allow(dead_code))]
fn plain_request_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'='))
}

/// Reads a request body of at most [`BODY_LIMIT`] bytes.
pub(crate) async fn read_body(
    headers: &HeaderMap,
    body: axum::body::Body,
) -> Result<axum::body::Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > BODY_LIMIT as u64) {
        return Err(ApiError::payload_too_large());
    }
    axum::body::to_bytes(body, BODY_LIMIT)
        .await
        .map_err(|_| ApiError::payload_too_large())
}

/// The media type of the request, lower case, without parameters.
pub(crate) fn media_type(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
}

/// A cookie's value from the `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

pub(crate) fn into_response<T: IntoResponse>(r: Result<T, ApiError>) -> Response {
    match r {
        Ok(ok) => ok.into_response(),
        Err(e) => e.into_response(),
    }
}
