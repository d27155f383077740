//! `--dev`: a SharePoint and ACS simulator on the same server, and generated configuration.
//! None of this exists without `--dev`, and none of it is in a Lambda binary.

mod entra;
mod fault;
mod page;
mod sim;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use url::Url;

use spkeeper::config::Source;
use spkeeper::core::hosts::authority_of;

pub use sim::Sim;

use crate::keys;

pub const DEV_FILE: &str = "dev.json";

/// Generated on the first `serve --dev` and kept in `{data dir}/dev.json` (mode 0600), so a
/// restart keeps working with the grants already stored. No `Debug`: it holds secrets.
#[derive(Clone, Serialize, Deserialize)]
pub struct DevValues {
    pub client_id: String,
    pub client_secret: String,
    /// The simulated tenant.
    pub realm: String,
    pub api_key: String,
    pub webhook_secret: String,
    /// Signs the simulator's refresh and access tokens.
    pub sim_key: String,
    /// Where the last `serve --dev` listened.
    pub public_url: String,
    /// The simulator's time travel, shared by every command run on this data directory.
    #[serde(default)]
    pub clock_offset_seconds: i64,
    /// The simulated Entra ID app (filled in on first use by an older dev.json).
    #[serde(default)]
    pub entra_client_id: String,
    #[serde(default)]
    pub entra_client_secret: String,
    /// The simulated Entra's ID-token signing key (PKCS#8 PEM).
    #[serde(default)]
    pub entra_signing_key: String,
}

fn random(n: usize) -> Result<Vec<u8>, String> {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b).map_err(|e| format!("the system random generator failed: {e}"))?;
    Ok(b)
}

fn guid() -> Result<String, String> {
    let b = random(16)?;
    let h = hex::encode(b);
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

impl DevValues {
    fn generate(public_url: &str) -> Result<Self, String> {
        Ok(DevValues {
            client_id: guid()?,
            // AppRegNew secrets are base64 of 32 bytes.
            client_secret: STANDARD.encode(random(32)?),
            realm: guid()?,
            api_key: format!("dev-{}", hex::encode(random(16)?)),
            webhook_secret: format!("whsec_{}", STANDARD.encode(random(24)?)),
            sim_key: STANDARD.encode(random(32)?),
            public_url: public_url.to_string(),
            clock_offset_seconds: 0,
            entra_client_id: String::new(),
            entra_client_secret: String::new(),
            entra_signing_key: String::new(),
        })
        .and_then(Self::with_entra)
    }

    /// Fills in the simulated Entra app where this file has none (a dev.json from before).
    fn with_entra(mut self) -> Result<Self, String> {
        if self.entra_client_id.is_empty() {
            self.entra_client_id = guid()?;
        }
        if self.entra_client_secret.is_empty() {
            // Entra secrets look like this: not base64.
            self.entra_client_secret = format!("dev~{}", hex::encode(random(20)?));
        }
        if self.entra_signing_key.is_empty() {
            self.entra_signing_key = spkeeper::testkit::rsa::RsaKey::generate("dev-1")?.private_pem;
        }
        Ok(self)
    }

    pub fn load_or_create(dir: &Path, listening: &str) -> Result<Self, String> {
        let path = dir.join(DEV_FILE);
        let loaded: DevValues = keys::load_or_create(&path, || Self::generate(listening))?;
        let had_entra = !loaded.entra_signing_key.is_empty();
        let mut values = loaded.with_entra()?;
        if values.public_url != listening || !had_entra {
            values.public_url = listening.to_string();
            values.save(&path)?;
        }
        Ok(values)
    }

    /// Does `dir` hold a dev configuration?
    pub fn exists(dir: &Path) -> bool {
        dir.join(DEV_FILE).exists()
    }

    pub fn existing(dir: &Path) -> Result<Option<Self>, String> {
        keys::existing(&dir.join(DEV_FILE))
    }

    /// Remembers the simulator's clock offset for the other commands.
    pub fn save_offset(dir: &Path, offset_seconds: i64) -> Result<(), String> {
        let path = dir.join(DEV_FILE);
        let mut values =
            Self::existing(dir)?.ok_or_else(|| format!("{} is missing", path.display()))?;
        values.clock_offset_seconds = offset_seconds;
        values.save(&path)
    }

    /// Replaces the file atomically, keeping it private.
    fn save(&self, path: &Path) -> Result<(), String> {
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self).map_err(|e| e.to_string())?;
        let _ = fs::remove_file(&tmp);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
        fs::rename(&tmp, path).map_err(|e| format!("cannot replace {}: {e}", path.display()))
    }

    /// Configuration for whatever `env` leaves unset: the simulator plays SharePoint and ACS
    /// on the add-in's own origin, and the webhook inbox receives the notices.
    pub fn as_source(&self, env: &dyn Source) -> BTreeMap<String, String> {
        let public = env
            .get("SPKEEPER_PUBLIC_URL")
            .unwrap_or_else(|| self.public_url.clone());
        let authority = Url::parse(&public)
            .map(|u| authority_of(&u))
            .unwrap_or_default();
        let base = public.trim_end_matches('/').to_string();
        [
            ("SPKEEPER_CLIENT_ID", self.client_id.clone()),
            ("SPKEEPER_CLIENT_SECRET", self.client_secret.clone()),
            ("SPKEEPER_PUBLIC_URL", public.clone()),
            ("SPKEEPER_ALLOWED_SP_HOSTS", authority.clone()),
            ("SPKEEPER_STS_HOSTS", authority),
            ("SPKEEPER_API_KEY", self.api_key.clone()),
            ("SPKEEPER_WEBHOOK_URL", format!("{base}/dev/webhook")),
            ("SPKEEPER_WEBHOOK_SECRET", self.webhook_secret.clone()),
            // The simulated Entra ID: any work account of the simulated tenant.
            ("SPKEEPER_ENTRA_CLIENT_ID", self.entra_client_id.clone()),
            (
                "SPKEEPER_ENTRA_CLIENT_SECRET",
                self.entra_client_secret.clone(),
            ),
            ("SPKEEPER_ENTRA_AUTHORITY", format!("{base}/dev/entra")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

/// The simulator's routes. SharePoint's own paths are at the root, as on a real site
/// collection whose URL is the server's base URL.
pub fn router(sim: Arc<Sim>) -> Router {
    Router::new()
        .route("/dev/sharepoint", get(page::sharepoint))
        .route("/dev/info", get(sim::info))
        .route("/_layouts/15/AppRedirect.aspx", get(sim::app_redirect))
        .route("/_api/web/currentuser", get(sim::current_user))
        .route("/_vti_bin/client.svc", get(sim::realm_challenge))
        // Every site collection of a SharePoint host answers realm discovery for its tenant.
        .route(
            "/sites/{site}/_vti_bin/client.svc",
            get(sim::realm_challenge),
        )
        .route("/dev/acs/tokens/OAuth/2", post(sim::acs_token))
        .route("/dev/acs/fault", post(sim::set_fault))
        .route("/dev/acs/stats", get(sim::acs_stats))
        .route("/dev/access-tokens/forget", post(sim::forget_access_tokens))
        .route("/dev/clock", post(sim::set_clock))
        .route("/dev/sweep", post(sim::sweep_now))
        .route("/dev/webhook", post(sim::receive_webhook).get(sim::inbox))
        .route(
            "/dev/entra/{tenant}/oauth2/v2.0/authorize",
            get(entra::authorize),
        )
        .route("/dev/entra/authorize/decide", post(entra::decide))
        .route("/dev/entra/{tenant}/oauth2/v2.0/token", post(entra::token))
        .route("/dev/entra/{tenant}/discovery/v2.0/keys", get(entra::keys))
        .route(
            "/dev/entra/{tenant}/v2.0/.well-known/openid-configuration",
            get(entra::openid_configuration),
        )
        .route("/dev/entra/fault", post(entra::set_fault))
        .route("/dev/entra/rotate-keys", post(entra::rotate_keys))
        .route("/dev/entra/revoke", post(entra::revoke_sessions))
        .route("/dev/entra/stats", get(entra::stats))
        .with_state(sim)
        .layer(axum::middleware::map_response(simulated_pages_policy))
}

/// The simulator plays SharePoint, whose pages submit forms by script: its pages carry their
/// own policy, which the server's default (no script at all) would otherwise replace.
async fn simulated_pages_policy(mut resp: axum::response::Response) -> axum::response::Response {
    let is_page = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("text/html"));
    if is_page {
        resp.headers_mut().insert(
            axum::http::header::CONTENT_SECURITY_POLICY,
            axum::http::HeaderValue::from_static(
                "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; \
                 form-action 'self'; frame-ancestors 'none'",
            ),
        );
    }
    resp
}
