//! Logging for every host: the level comes from the usual variables, and the crates that can
//! see raw requests never log below INFO, whatever level is asked for.
//!
//! At TRACE, `lambda_runtime` logs every raw event (an API Gateway event carries the context
//! token, cookies and the `Authorization` header), the AWS SDK logs whole responses (a
//! `GetSecretValue` answer is the secret), and hyper/h2/reqwest log headers. Turning the level
//! up is an ordinary debugging step, so those targets are capped here, not left to operators.

use std::io::IsTerminal;

use tracing::Level;
use tracing_subscriber::filter::{EnvFilter, FilterExt, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

/// Targets (prefixes) that never log below INFO.
pub const CAPPED_TARGETS: &[&str] = &[
    "lambda_runtime",
    "lambda_runtime_api_client",
    "lambda_http",
    "aws_",
    "hyper",
    "h2",
    "reqwest",
    "rustls",
    "tower",
    "axum",
    "rusqlite",
];

/// The hard cap: every target at any level, but [`CAPPED_TARGETS`] at INFO at most.
pub fn caps() -> Targets {
    CAPPED_TARGETS
        .iter()
        .fold(Targets::new().with_default(Level::TRACE), |t, target| {
            t.with_target(*target, Level::INFO)
        })
}

fn filter(directives: &str) -> EnvFilter {
    EnvFilter::builder().parse_lossy(directives)
}

/// A Lambda function: the level from `AWS_LAMBDA_LOG_LEVEL`, else `RUST_LOG`, else INFO; JSON
/// when `AWS_LAMBDA_LOG_FORMAT=JSON` (CloudWatch adds the time). Writes to stdout.
pub fn init_lambda() {
    let level = std::env::var("AWS_LAMBDA_LOG_LEVEL")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".into());
    let json = std::env::var("AWS_LAMBDA_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let base = tracing_subscriber::fmt::layer()
        .with_target(false)
        .without_time()
        .with_ansi(false);
    let layer = if json {
        base.json().boxed()
    } else {
        base.boxed()
    };
    let _ = Registry::default()
        .with(layer.with_filter(filter(&level).and(caps())))
        .try_init();
}

/// The `spkeeper` CLI: the level from `SPKEEPER_LOG` (e.g. `debug`), else INFO; readable lines
/// on stderr, coloured only on a terminal.
pub fn init_cli() {
    let level = std::env::var("SPKEEPER_LOG").unwrap_or_else(|_| "info".into());
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = Registry::default()
        .with(layer.with_filter(filter(&level).and(caps())))
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allows(target: &str, level: Level) -> bool {
        caps().would_enable(target, &level)
    }

    #[test]
    fn raw_request_loggers_are_capped_at_info() {
        for target in [
            "lambda_runtime::layers::api_response",
            "lambda_http",
            "aws_smithy_runtime::client::orchestrator",
            "aws_sdk_secretsmanager",
            "hyper_util::client",
            "h2::codec",
            "reqwest::connect",
        ] {
            assert!(!allows(target, Level::TRACE), "{target} at TRACE");
            assert!(!allows(target, Level::DEBUG), "{target} at DEBUG");
            assert!(allows(target, Level::INFO), "{target} at INFO");
        }
        assert!(allows("spkeeper::service::launch", Level::TRACE));
    }
}
