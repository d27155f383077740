//! HTTP: one axum `Router` per concern (launch, status, token, renew, health), each built from
//! its dependencies. A Lambda serves its routers with `lambda_http`; the CLI mounts them all on
//! one local server. [`finish`] adds what every host needs: contract 404/405 errors and HTML
//! pages for browsers.

pub mod error;
pub mod pages;

mod launch;
mod renew;
mod status;
mod token;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

pub use launch::router as launch_router;
pub use renew::router as renew_router;
pub use status::router as status_router;
pub use token::{ApiKeyAuth, TokenAuthorizer, router as token_router};

use error::{ApiError, ErrorDetails};

/// The largest request body any route reads.
pub const BODY_LIMIT: usize = 64 * 1024;

pub fn health_router() -> Router {
    Router::new().route(
        "/healthz",
        get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
    )
}

/// Adds the contract's 404/405 errors, HTML error pages for browsers, and safe headers.
pub fn finish(router: Router) -> Router {
    router
        .fallback(|| async { ApiError::not_found() })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "This method is not allowed here.",
            )
        })
        .layer(middleware::from_fn(negotiate))
}

fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.to_ascii_lowercase().contains("text/html"))
}

/// A browser (`Accept: text/html`) gets an error as a small page with the same status.
async fn negotiate(req: Request, next: Next) -> Response {
    let html = wants_html(req.headers());
    let mut resp = next.run(req).await;
    if html && let Some(ErrorDetails(e)) = resp.extensions().get::<ErrorDetails>() {
        resp = pages::error_page(e);
    }
    let h = resp.headers_mut();
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    resp
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

/// `name=value` pairs of a query string or form body (first occurrence wins where it matters).
pub(crate) fn pairs(raw: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(raw).into_owned().collect()
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
