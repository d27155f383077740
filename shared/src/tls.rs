//! The certificate authorities this process trusts, read from the system once.
//!
//! Both HTTP stacks — reqwest (ACS, Entra, SharePoint, the webhook) and the AWS SDK's — used to
//! read and parse the system's certificates each on its own at start: about 6 ms apiece on the
//! benchmark machine, and the second reading was most of what a function's cold start added to
//! the floor (BENCHMARKS.md). Now one reading serves both. Which certificates are trusted does
//! not change: the same crate (`rustls-native-certs`) reads them, honouring `SSL_CERT_FILE` and
//! `SSL_CERT_DIR`, and those the TLS library cannot use are left out as before.

use std::sync::{Arc, LazyLock};

use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;

struct Trusted {
    store: Arc<RootCertStore>,
    /// The certificates in `store`, as read (the AWS SDK takes them as PEM).
    #[cfg_attr(not(feature = "aws"), allow(dead_code))]
    certs: Vec<CertificateDer<'static>>,
}

static TRUSTED: LazyLock<Trusted> = LazyLock::new(|| {
    let found = rustls_native_certs::load_native_certs();
    if !found.errors.is_empty() {
        tracing::warn!(
            errors = found.errors.len(),
            "some of the system's certificate authorities could not be read"
        );
    }
    let mut store = RootCertStore::empty();
    let mut certs = Vec::with_capacity(found.certs.len());
    for cert in found.certs {
        if store.add(cert.clone()).is_ok() {
            certs.push(cert);
        }
    }
    if store.is_empty() {
        tracing::warn!(
            "no certificate authorities found on the system (see SSL_CERT_FILE, SSL_CERT_DIR): every TLS connection will fail"
        );
    }
    Trusted {
        store: Arc::new(store),
        certs,
    }
});

/// How many certificate authorities the process trusts.
pub fn trusted_count() -> usize {
    TRUSTED.store.len()
}

/// The TLS configuration for reqwest: aws-lc, TLS 1.2 and 1.3, the system's authorities.
pub fn client_config() -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(Arc::clone(&TRUSTED.store))
        .with_no_client_auth())
}

/// The same authorities as PEM, for the AWS SDK's trust store.
#[cfg(feature = "aws")]
pub fn pem_bundle() -> Vec<u8> {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    let mut pem = Vec::with_capacity(TRUSTED.certs.iter().map(|c| c.len() * 4 / 3 + 80).sum());
    for cert in &TRUSTED.certs {
        pem.extend_from_slice(b"-----BEGIN CERTIFICATE-----\n");
        let b64 = STANDARD.encode(cert.as_ref());
        for line in b64.as_bytes().chunks(64) {
            pem.extend_from_slice(line);
            pem.push(b'\n');
        }
        pem.extend_from_slice(b"-----END CERTIFICATE-----\n");
    }
    pem
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_authorities_are_read_and_usable() {
        // The test machines (and Lambda) have a system store; an empty one would mean every
        // call to ACS, Entra or AWS fails.
        assert!(trusted_count() > 0);
        assert!(client_config().is_ok());
    }

    #[cfg(feature = "aws")]
    #[test]
    fn the_pem_bundle_holds_every_trusted_authority_and_reads_back_to_the_same_bytes() {
        use rustls_pki_types::pem::PemObject;
        let pem = pem_bundle();
        let back: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(back.len(), trusted_count());
        assert_eq!(back, TRUSTED.certs);
    }
}
