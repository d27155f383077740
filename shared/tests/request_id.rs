//! Request ids in answers and log lines. Alone in its own test binary: it captures logs with
//! a subscriber set for its thread only, and tracing caches whether a callsite is enabled
//! process-wide, so other tests running beside it on other threads (with no subscriber) could
//! leave the request's span disabled — the span, and so its id, would be missing from the line.

mod common;

use common::*;

/// Captures what the request logs, on this thread (the test's runtime is single-threaded).
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

/// Every answer carries a request id of our own making (never the caller's), an error page
/// shows it for the user to quote, and the request's log lines carry the same id.
#[tokio::test]
async fn every_answer_has_a_request_id_shown_on_error_pages_and_in_its_log_lines() {
    let logs = Captured::default();
    let _guard = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_ansi(false)
            .finish(),
    );
    let h = Harness::new().await;
    let resp = h
        .get(
            "/renew/0123456789abcdef0123456789abcdef?exp=1&sig=abc",
            &[
                ("accept", "text/html"),
                ("x-request-id", "forged-by-the-caller"),
            ],
        )
        .await;
    assert_eq!(resp.status().as_u16(), 403);
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(
        id.len() >= 16 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    let page = body_text(resp).await;
    assert!(
        page.contains(&format!("Request id: <code>{id}</code>")),
        "{page}"
    );
    let logged = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let line = logged
        .lines()
        .find(|l| l.contains("renew link refused"))
        .unwrap_or_else(|| panic!("no log line: {logged}"));
    assert!(line.contains(&format!("request_id={id}")), "{line}");
    assert!(!logged.contains("forged"), "{logged}");

    // JSON answers carry it too, one per request.
    let a = h.get("/healthz", &[]).await;
    let b = h.get("/nope", &[]).await;
    let (a, b) = (&a.headers()["x-request-id"], &b.headers()["x-request-id"]);
    assert_ne!(a, b);
}
