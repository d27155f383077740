//! The process's HTTP client (ACS, Entra, SharePoint, the webhook) trusts the system's
//! authorities as read once (shared/src/tls.rs). The process is given a CA of its own through
//! `SSL_CERT_FILE`, as an operator would; a server whose certificate it signed is trusted, one
//! signed by another CA is not — even once the variable names the other CA, since the process
//! read its authorities once, early (`sdk_config` starts that reading). Its own test binary, and
//! keep it the only test in this file: the authorities are read once per process, so the
//! variable must be set before anything reads them.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

fn data(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/tls")
        .join(name)
}

/// An HTTPS server on loopback with `who`'s certificate, answering every request with
/// `status` and `body` (blocking, one thread per connection).
fn serve(who: &str, status: &'static str, body: &'static str) -> u16 {
    let certs = CertificateDer::pem_file_iter(data(&format!("{who}-server.pem")))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(data(&format!("{who}-server.key"))).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let config = Arc::clone(&config);
            std::thread::spawn(move || {
                let Ok(conn) = rustls::ServerConnection::new(config) else {
                    return;
                };
                let mut tls = rustls::StreamOwned::new(conn, tcp);
                let mut buf = [0u8; 8192];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let answer = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/x-amz-json-1.0\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(answer.as_bytes());
                let _ = tls.flush();
                tls.conn.send_close_notify();
                let _ = tls.flush();
            });
        }
    });
    port
}

#[tokio::test]
async fn the_http_client_trusts_the_authorities_the_process_read_once_and_no_others() {
    // SAFETY: set before any thread of this test binary reads the environment or the
    // authorities (this is the binary's only test, and the first thing it does).
    unsafe {
        std::env::set_var("SSL_CERT_FILE", data("trusted-ca.pem"));
        std::env::set_var("SSL_CERT_DIR", data("no-such-directory"));
        std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
        std::env::set_var("AWS_REGION", "us-east-1");
        std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
        std::env::remove_var("AWS_ENDPOINT_URL");
        for proxy in [
            "HTTPS_PROXY",
            "https_proxy",
            "HTTP_PROXY",
            "http_proxy",
            "ALL_PROXY",
        ] {
            std::env::remove_var(proxy);
        }
    }
    // What every program does first: the SDK's configuration, which starts the reading.
    let _sdk = spkeeper::aws::sdk_config().await;
    assert_eq!(spkeeper::tls::trusted_count(), 1, "only SSL_CERT_FILE's CA");
    // From here on the system "changes" to the other CA: a client that read the certificates
    // again when built (as reqwest's verifier did) would now trust the stranger and refuse the
    // trusted server. It must keep to the one reading.
    // SAFETY: the reading is done (trusted_count waited for it) and this test runs on a
    // one-thread runtime: nothing else reads the environment now.
    unsafe {
        std::env::set_var("SSL_CERT_FILE", data("stranger-ca.pem"));
    }

    let trusted = serve("trusted", "200 OK", "ok");
    let stranger = serve("stranger", "200 OK", "ok");
    let http = spkeeper::clients::http_client().unwrap();

    let ok = http
        .get(format!("https://localhost:{trusted}/"))
        .send()
        .await
        .expect("reqwest trusts the CA in SSL_CERT_FILE");
    assert_eq!(ok.text().await.unwrap(), "ok");
    let refused = http
        .get(format!("https://localhost:{stranger}/"))
        .send()
        .await;
    assert!(
        refused.is_err(),
        "reqwest must refuse a certificate from a CA the process does not trust"
    );
}
