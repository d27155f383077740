//! A system with no certificate authority: the process's HTTP client is not built (an error
//! at start naming SSL_CERT_FILE and SSL_CERT_DIR), rather than built to fail every call. Its
//! own test binary, and keep it the only test in this file: the authorities are read once per
//! process, so the variables must be set before anything reads them.

#[test]
fn with_no_certificate_authority_the_http_client_is_not_built() {
    let empty = std::env::temp_dir().join(format!("spkeeper-no-cas-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let file = empty.join("none.pem");
    std::fs::write(&file, "").unwrap();
    // SAFETY: the only test in this binary, before any thread reads the environment.
    unsafe {
        std::env::set_var("SSL_CERT_FILE", &file);
        std::env::set_var("SSL_CERT_DIR", &empty);
    }
    let err = spkeeper::clients::http_client().unwrap_err();
    assert!(
        err.to_string().contains("no certificate authorities found"),
        "{err}"
    );
    std::fs::remove_dir_all(&empty).unwrap();
}
