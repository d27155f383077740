//! Small, readable HTML pages. Every value that did not come from this file is escaped.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use html_escape::{encode_double_quoted_attribute as attr, encode_text as text};

use super::error::ApiError;

const STYLE: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:40rem;margin:3rem auto;\
padding:0 1rem;color:#1b1b1b;line-height:1.5}h1{font-size:1.4rem}dl{display:grid;grid-template-columns:max-content 1fr;\
gap:.3rem 1rem}dt{color:#555}.button{display:inline-block;background:#0f6cbd;color:#fff;padding:.5rem 1rem;\
border-radius:4px;text-decoration:none;border:0;font-size:1rem;cursor:pointer}.muted{color:#666;font-size:.9rem}\
.warn{color:#a4262c}code{background:#f3f3f3;padding:0 .2rem}";

/// A whole page around `body` (already HTML).
pub fn layout(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{} · spkeeper</title><style>{STYLE}</style></head><body>{body}</body></html>",
        text(title)
    )
}

pub fn html(status: StatusCode, title: &str, body: &str) -> Response {
    let mut resp = (status, Html(layout(title, body))).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // The Content-Security-Policy (with `frame-ancestors`) is added to every page by
    // `http::finish`, which knows the allowed hosts.
    resp
}

/// The page a browser gets for an API error: the same status, code and sentence.
/// `request_id` is printed for the user to quote to support (it is on the log lines too).
pub fn error_page(e: &ApiError, request_id: &str) -> Response {
    let title = e.status.canonical_reason().unwrap_or("Error");
    let mut body = format!(
        "<h1>{}</h1><p>{}</p><p class=\"muted\">Error code: <code>{}</code> · Request id: \
         <code>{}</code></p>",
        text(title),
        text(&e.message),
        text(e.code),
        text(request_id)
    );
    if let Some(u) = &e.renew_url {
        body.push_str(&format!(
            "<p><a class=\"button\" href=\"{}\">Reconnect through SharePoint</a></p>",
            attr(u)
        ));
    }
    let mut resp = html(e.status, title, &body);
    if let Some(secs) = e.retry_after {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

pub fn escape(s: &str) -> String {
    text(s).into_owned()
}

pub fn escape_attr(s: &str) -> String {
    attr(s).into_owned()
}
