//! `proxy`: stands between spkeeper and moto, counts every AWS request by operation (its
//! `X-Amz-Target`, e.g. `DynamoDB_20120810.UpdateItem`, `AmazonSQS.SendMessageBatch`), and can
//! add latency to each DynamoDB call, as a far-away table would.
//!
//! ```text
//! proxy --listen 127.0.0.1:5070 --upstream http://127.0.0.1:5060 [--dynamodb-latency-ms 10]
//! curl -s 127.0.0.1:5070/__bench/counts      # {"DynamoDB_20120810.Query": 9, ...}
//! curl -s -X POST 127.0.0.1:5070/__bench/reset
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use clap::Parser;
use http::StatusCode;

type Failure = Box<dyn std::error::Error + Send + Sync>;

#[derive(Parser)]
struct Cli {
    #[arg(long)]
    listen: SocketAddr,
    /// moto's base URL.
    #[arg(long)]
    upstream: String,
    /// Added before forwarding each DynamoDB request.
    #[arg(long, default_value_t = 0)]
    dynamodb_latency_ms: u64,
}

struct Proxy {
    upstream: String,
    latency: Duration,
    http: reqwest::Client,
    counts: Mutex<BTreeMap<String, u64>>,
}

#[tokio::main]
async fn main() -> Result<(), Failure> {
    let cli = Cli::parse();
    let proxy = Arc::new(Proxy {
        upstream: cli.upstream.trim_end_matches('/').to_string(),
        latency: Duration::from_millis(cli.dynamodb_latency_ms),
        http: reqwest::Client::builder().build()?,
        counts: Mutex::new(BTreeMap::new()),
    });
    let app = Router::new()
        .route("/__bench/counts", get(counts))
        .route("/__bench/reset", post(reset))
        .fallback(forward)
        .with_state(proxy);
    let listener = tokio::net::TcpListener::bind(cli.listen).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

async fn counts(State(p): State<Arc<Proxy>>) -> Response {
    let counts = p.counts.lock().map(|c| c.clone()).unwrap_or_default();
    axum::Json(counts).into_response()
}

async fn reset(State(p): State<Arc<Proxy>>) -> StatusCode {
    if let Ok(mut c) = p.counts.lock() {
        c.clear();
    }
    StatusCode::NO_CONTENT
}

async fn forward(State(p): State<Arc<Proxy>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let target = parts
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("other")
        .to_string();
    if let Ok(mut c) = p.counts.lock() {
        *c.entry(target.clone()).or_default() += 1;
    }
    if target.starts_with("DynamoDB_") && !p.latency.is_zero() {
        tokio::time::sleep(p.latency).await;
    }
    let Ok(body) = axum::body::to_bytes(body, usize::MAX).await else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let path = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let mut headers = parts.headers.clone();
    headers.remove(http::header::HOST);
    headers.remove(http::header::CONTENT_LENGTH);
    let sent = p
        .http
        .request(parts.method, format!("{}{path}", p.upstream))
        .headers(headers)
        .body(body)
        .send()
        .await;
    let answer = match sent {
        Ok(a) => a,
        Err(_) => return StatusCode::BAD_GATEWAY.into_response(),
    };
    let status = answer.status();
    let headers = answer.headers().clone();
    let bytes: Bytes = answer.bytes().await.unwrap_or_default();
    let mut out = Response::new(axum::body::Body::from(bytes));
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    out.headers_mut().remove(http::header::TRANSFER_ENCODING);
    out.headers_mut().remove(http::header::CONTENT_LENGTH);
    out
}
