//! The certificate authorities the process's own HTTP client (ACS, Entra, SharePoint, the
//! webhook) trusts: the system's, read once.
//!
//! reqwest's default verifier read and parsed them when the client was built, after the
//! secrets had arrived: ~6 ms on the benchmark machine (145 certificates, a bundle and a
//! directory of PEM files), on the cold start's critical path, after the AWS SDK had read the
//! same files for its own connections. Now a blocking thread reads them while the SDK sets up
//! and the secrets are on their way ([`preload`], from [`crate::aws::sdk_config`]), and the
//! client takes them from there. On Linux (Lambda, and the servers `serve` runs on) which
//! authorities are trusted does not change: the same crate (`rustls-native-certs`) reads them,
//! honouring `SSL_CERT_FILE` and `SSL_CERT_DIR`, and those the TLS library cannot use are left
//! out as before. On macOS and Windows the certificates are the system's too, but the system's
//! own verdicts (revocation, distrust set by policy) are not consulted, as reqwest's platform
//! verifier did: run `serve` there for development, not for production. (The AWS SDK keeps its
//! own reading: it takes extra authorities only as PEM, and decoding them again per connection
//! pool cost more than it saved.) A system with no authority at all is an error when the client
//! is built, not a failure at every call.

use std::sync::{Arc, LazyLock};

use rustls::RootCertStore;

static TRUSTED: LazyLock<Arc<RootCertStore>> = LazyLock::new(|| {
    let found = rustls_native_certs::load_native_certs();
    if !found.errors.is_empty() {
        tracing::warn!(
            errors = found.errors.len(),
            "some of the system's certificate authorities could not be read"
        );
    }
    let mut store = RootCertStore::empty();
    store.add_parsable_certificates(found.certs);
    Arc::new(store)
});

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "no certificate authorities found on the system (see SSL_CERT_FILE, SSL_CERT_DIR): no server could be trusted"
    )]
    NoAuthorities,
    #[error("cannot configure TLS: {0}")]
    Config(#[from] rustls::Error),
}

/// Starts reading the authorities on a blocking thread, if a Tokio runtime is there to run
/// it; whoever needs them first waits for that reading rather than starting another.
pub fn preload() {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn_blocking(|| LazyLock::force(&TRUSTED).len());
    }
}

/// How many certificate authorities the process trusts.
pub fn trusted_count() -> usize {
    TRUSTED.len()
}

/// The TLS configuration for reqwest: aws-lc, TLS 1.2 and 1.3, the system's authorities
/// (none is an error).
pub fn client_config() -> Result<rustls::ClientConfig, TlsError> {
    if TRUSTED.is_empty() {
        return Err(TlsError::NoAuthorities);
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(Arc::clone(&TRUSTED))
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_authorities_are_read_and_usable() {
        // The test machines (and Lambda) have a system store; an empty one would mean every
        // call to ACS, Entra or a webhook fails.
        assert!(trusted_count() > 0);
        assert!(client_config().is_ok());
    }
}
