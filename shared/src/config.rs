//! Configuration, read once at start into typed structs from an explicit list of variables.
//! A missing or malformed value stops the start with one line naming the variable; the value
//! of a secret variable is never part of that line.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use url::Url;

use crate::core::context_token::is_guid;
use crate::core::grant::NoticeDays;
use crate::core::hosts::{DEFAULT_STS_HOSTS, HostAllowlist, authority_of};
use crate::core::links::LinkSigner;
use crate::core::seal::KeyRing;

/// Every variable the program reads, so `--help` and the README can list them.
pub const VARIABLES: &[&str] = &[
    "SPKEEPER_CLIENT_ID",
    "SPKEEPER_CLIENT_SECRET",
    "SPKEEPER_CLIENT_SECRET_SECONDARY",
    "SPKEEPER_CLIENT_SECRET_EXPIRES_AT",
    "SPKEEPER_PUBLIC_URL",
    "SPKEEPER_ALLOWED_SP_HOSTS",
    "SPKEEPER_STS_HOSTS",
    "SPKEEPER_NOTICE_DAYS",
    "SPKEEPER_API_KEY",
    "SPKEEPER_TOKEN_AUTH",
    "SPKEEPER_WEBHOOK_URL",
    "SPKEEPER_WEBHOOK_SECRET",
    "SPKEEPER_RETURN_URL",
    "SPKEEPER_STORE",
    "SPKEEPER_DATA_DIR",
    "SPKEEPER_TABLE",
    "SPKEEPER_QUEUE_URL",
    "SPKEEPER_SECRETS_ARN",
];

/// A configuration problem: which variable, and what is wrong with it (never its value).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}: {problem}")]
pub struct ConfigError {
    pub var: &'static str,
    pub problem: String,
}

impl ConfigError {
    pub fn new(var: &'static str, problem: impl Into<String>) -> Self {
        ConfigError {
            var,
            problem: problem.into(),
        }
    }
}

/// Where configuration values come from: the environment, or a map in tests and `--dev`.
pub trait Source {
    fn get(&self, var: &str) -> Option<String>;
}

/// The process environment.
pub struct Env;

impl Source for Env {
    fn get(&self, var: &str) -> Option<String> {
        std::env::var(var).ok().filter(|v| !v.trim().is_empty())
    }
}

impl Source for BTreeMap<String, String> {
    fn get(&self, var: &str) -> Option<String> {
        BTreeMap::get(self, var)
            .cloned()
            .filter(|v| !v.trim().is_empty())
    }
}

/// The first source that has a value wins.
pub struct Layered<'a>(pub Vec<&'a dyn Source>);

impl Source for Layered<'_> {
    fn get(&self, var: &str) -> Option<String> {
        self.0.iter().find_map(|s| s.get(var))
    }
}

fn required(src: &dyn Source, var: &'static str) -> Result<String, ConfigError> {
    src.get(var)
        .map(|v| v.trim().to_string())
        .ok_or_else(|| ConfigError::new(var, "is required"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenAuth {
    /// `Authorization: Bearer {SPKEEPER_API_KEY}`.
    ApiKey,
    /// API Gateway's IAM authorizer identified the caller.
    Iam,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreChoice {
    Sqlite { data_dir: PathBuf },
    DynamoDb { table: String, queue_url: String },
}

/// Everything that is not a secret.
#[derive(Debug, Clone)]
pub struct Settings {
    pub client_id: String,
    pub public_url: Url,
    /// `host[:port]` of the public URL: the accepted audience host.
    pub audience_host: String,
    pub allowed_sp_hosts: HostAllowlist,
    pub sts_hosts: HostAllowlist,
    pub notice_days: NoticeDays,
    pub client_secret_expires_at: Option<DateTime<Utc>>,
    pub token_auth: TokenAuth,
    pub webhook_url: Option<Url>,
    /// The add-in app's page that receives the user after a launch, with a hand-off ticket.
    pub return_url: Option<Url>,
    pub store: StoreChoice,
}

impl Settings {
    pub fn from_source(src: &dyn Source) -> Result<Self, ConfigError> {
        let client_id = required(src, "SPKEEPER_CLIENT_ID")?.to_ascii_lowercase();
        if !is_guid(&client_id) {
            return Err(ConfigError::new("SPKEEPER_CLIENT_ID", "must be a GUID"));
        }

        let public_raw = required(src, "SPKEEPER_PUBLIC_URL")?;
        let public_url = parse_public_url(&public_raw)?;
        let audience_host = authority_of(&public_url);

        let allowed_sp_hosts =
            HostAllowlist::parse(&required(src, "SPKEEPER_ALLOWED_SP_HOSTS")?, true)
                .map_err(|e| ConfigError::new("SPKEEPER_ALLOWED_SP_HOSTS", e))?;
        let sts_hosts = HostAllowlist::parse(
            &src.get("SPKEEPER_STS_HOSTS")
                .unwrap_or_else(|| DEFAULT_STS_HOSTS.to_string()),
            false,
        )
        .map_err(|e| ConfigError::new("SPKEEPER_STS_HOSTS", e))?;

        let notice_days = match src.get("SPKEEPER_NOTICE_DAYS") {
            Some(v) => {
                NoticeDays::parse(&v).map_err(|e| ConfigError::new("SPKEEPER_NOTICE_DAYS", e))?
            }
            None => NoticeDays::default(),
        };

        let client_secret_expires_at = src
            .get("SPKEEPER_CLIENT_SECRET_EXPIRES_AT")
            .map(|v| {
                DateTime::parse_from_rfc3339(v.trim())
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|_| {
                        ConfigError::new(
                            "SPKEEPER_CLIENT_SECRET_EXPIRES_AT",
                            "must be an RFC 3339 time",
                        )
                    })
            })
            .transpose()?;

        let token_auth = match src.get("SPKEEPER_TOKEN_AUTH").as_deref().map(str::trim) {
            None | Some("api_key") | Some("apikey") => TokenAuth::ApiKey,
            Some("iam") => TokenAuth::Iam,
            Some(_) => {
                return Err(ConfigError::new(
                    "SPKEEPER_TOKEN_AUTH",
                    "must be api_key or iam",
                ));
            }
        };

        // Notices carry renew links and the hand-off carries a ticket: both travel encrypted,
        // except to this machine.
        let webhook_url = optional_https_url(src, "SPKEEPER_WEBHOOK_URL")?;
        let return_url = optional_https_url(src, "SPKEEPER_RETURN_URL")?;
        if return_url
            .as_ref()
            .is_some_and(|u| u.fragment().is_some() || !u.username().is_empty())
        {
            return Err(ConfigError::new(
                "SPKEEPER_RETURN_URL",
                "must not have a fragment or user info",
            ));
        }

        let store = match src.get("SPKEEPER_STORE").as_deref().map(str::trim) {
            None | Some("sqlite") => StoreChoice::Sqlite {
                data_dir: PathBuf::from(
                    src.get("SPKEEPER_DATA_DIR")
                        .unwrap_or_else(|| ".spkeeper".into()),
                ),
            },
            Some("dynamodb") => StoreChoice::DynamoDb {
                table: required(src, "SPKEEPER_TABLE")?,
                queue_url: required(src, "SPKEEPER_QUEUE_URL")?,
            },
            Some(_) => {
                return Err(ConfigError::new(
                    "SPKEEPER_STORE",
                    "must be sqlite or dynamodb",
                ));
            }
        };

        Ok(Settings {
            client_id,
            public_url,
            audience_host,
            allowed_sp_hosts,
            sts_hosts,
            notice_days,
            client_secret_expires_at,
            token_auth,
            webhook_url,
            return_url,
            store,
        })
    }

    /// `{PUBLIC_URL}/launch`.
    pub fn launch_url(&self) -> String {
        format!("{}/launch", self.public_base())
    }

    /// The public URL without a trailing slash.
    pub fn public_base(&self) -> &str {
        self.public_url.as_str().trim_end_matches('/')
    }

    /// Is the public URL on a loopback host (dev and tests)?
    pub fn public_is_loopback(&self) -> bool {
        is_loopback_url(&self.public_url)
    }
}

/// An optional absolute https URL (http only on a loopback host).
fn optional_https_url(src: &dyn Source, var: &'static str) -> Result<Option<Url>, ConfigError> {
    src.get(var)
        .map(|v| {
            let u = Url::parse(v.trim())
                .map_err(|_| ConfigError::new(var, "must be an absolute URL"))?;
            match u.scheme() {
                "https" if u.host().is_some() => Ok(u),
                "http" if is_loopback_url(&u) => Ok(u),
                _ => Err(ConfigError::new(
                    var,
                    "must be an https URL (http only on a loopback host)",
                )),
            }
        })
        .transpose()
}

pub fn is_loopback_url(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        None => false,
    }
}

fn parse_public_url(raw: &str) -> Result<Url, ConfigError> {
    const VAR: &str = "SPKEEPER_PUBLIC_URL";
    let url = Url::parse(raw).map_err(|_| ConfigError::new(VAR, "must be an absolute URL"))?;
    if url.host().is_none() || !url.username().is_empty() || url.password().is_some() {
        return Err(ConfigError::new(
            VAR,
            "must be an absolute URL with a host and no user info",
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(ConfigError::new(VAR, "must not have a query or fragment"));
    }
    if url.path() != "/" {
        return Err(ConfigError::new(VAR, "must be a base URL without a path"));
    }
    match url.scheme() {
        "https" => Ok(url),
        "http" if is_loopback_url(&url) => Ok(url),
        _ => Err(ConfigError::new(
            VAR,
            "must use https (http only on a loopback host)",
        )),
    }
}

/// The secret document: one JSON object, the Secrets Manager secret in AWS; locally the key
/// file under the data directory holds its key fields and the environment the rest.
#[derive(Default, Clone, Deserialize)]
pub struct SecretDocument {
    #[serde(default)]
    pub client_secret: Option<SecretString>,
    #[serde(default)]
    pub client_secret_secondary: Option<SecretString>,
    #[serde(default)]
    pub api_key: Option<SecretString>,
    #[serde(default)]
    pub webhook_secret: Option<SecretString>,
    /// Key id → base64 of 32 random bytes.
    #[serde(default)]
    pub token_keys: BTreeMap<String, SecretString>,
    #[serde(default)]
    pub active_token_key: String,
    /// base64 of at least 32 random bytes.
    #[serde(default)]
    pub link_key: Option<SecretString>,
}

impl fmt::Debug for SecretDocument {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretDocument")
            .field("token_key_ids", &self.token_keys.keys().collect::<Vec<_>>())
            .field("active_token_key", &self.active_token_key)
            .finish_non_exhaustive()
    }
}

impl SecretDocument {
    /// Fills fields this document lacks from `src` (the environment, locally).
    pub fn with_env_fallback(mut self, src: &dyn Source) -> Self {
        let pick = |have: Option<SecretString>, var: &str| {
            have.or_else(|| src.get(var).map(SecretString::from))
        };
        self.client_secret = pick(self.client_secret, "SPKEEPER_CLIENT_SECRET");
        self.client_secret_secondary = pick(
            self.client_secret_secondary,
            "SPKEEPER_CLIENT_SECRET_SECONDARY",
        );
        self.api_key = pick(self.api_key, "SPKEEPER_API_KEY");
        self.webhook_secret = pick(self.webhook_secret, "SPKEEPER_WEBHOOK_SECRET");
        self
    }
}

/// The secrets in their usable form. Nothing here prints.
#[derive(Clone)]
pub struct Secrets {
    pub client_secret: SecretString,
    pub client_secret_secondary: Option<SecretString>,
    pub api_key: Option<SecretString>,
    pub webhook_secret: Option<SecretString>,
    pub key_ring: KeyRing,
    pub links: LinkSigner,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secrets")
            .field("key_ring", &self.key_ring)
            .finish_non_exhaustive()
    }
}

fn decode_key(var: &'static str, v: &SecretString, min_len: usize) -> Result<Vec<u8>, ConfigError> {
    let bytes = STANDARD
        .decode(v.expose_secret().trim())
        .map_err(|_| ConfigError::new(var, "must be base64"))?;
    if bytes.len() < min_len {
        return Err(ConfigError::new(
            var,
            format!("must decode to at least {min_len} bytes"),
        ));
    }
    Ok(bytes)
}

impl Secrets {
    /// Checks the document against what the settings need.
    pub fn from_document(doc: SecretDocument, settings: &Settings) -> Result<Self, ConfigError> {
        let client_secret = doc
            .client_secret
            .filter(|s| !s.expose_secret().trim().is_empty())
            .ok_or_else(|| ConfigError::new("SPKEEPER_CLIENT_SECRET", "is required"))?;
        let api_key = doc.api_key.filter(|s| !s.expose_secret().trim().is_empty());
        if settings.token_auth == TokenAuth::ApiKey {
            match &api_key {
                None => {
                    return Err(ConfigError::new(
                        "SPKEEPER_API_KEY",
                        "is required unless SPKEEPER_TOKEN_AUTH=iam",
                    ));
                }
                Some(k) if k.expose_secret().len() < 16 => {
                    return Err(ConfigError::new(
                        "SPKEEPER_API_KEY",
                        "must be at least 16 characters",
                    ));
                }
                Some(_) => {}
            }
        }
        let webhook_secret = doc
            .webhook_secret
            .filter(|s| !s.expose_secret().trim().is_empty());
        if let Some(ws) = &webhook_secret {
            let raw = ws.expose_secret().trim();
            let key = raw.strip_prefix("whsec_").ok_or_else(|| {
                ConfigError::new("SPKEEPER_WEBHOOK_SECRET", "must start with whsec_")
            })?;
            if STANDARD.decode(key).map(|k| k.len()).unwrap_or(0) < 16 {
                return Err(ConfigError::new(
                    "SPKEEPER_WEBHOOK_SECRET",
                    "must be whsec_ followed by base64 of at least 16 bytes",
                ));
            }
        } else if settings.webhook_url.is_some() {
            return Err(ConfigError::new(
                "SPKEEPER_WEBHOOK_SECRET",
                "is required when SPKEEPER_WEBHOOK_URL is set",
            ));
        }

        let mut keys = BTreeMap::new();
        for (id, v) in &doc.token_keys {
            keys.insert(id.clone(), decode_key("token_keys", v, 32)?);
        }
        let key_ring = KeyRing::new(&doc.active_token_key, &keys)
            .map_err(|e| ConfigError::new("token_keys", e.to_string()))?;
        let link_key = doc
            .link_key
            .as_ref()
            .ok_or_else(|| ConfigError::new("link_key", "is required"))?;
        let links = LinkSigner::new(&decode_key("link_key", link_key, 32)?);

        Ok(Secrets {
            client_secret,
            client_secret_secondary: doc
                .client_secret_secondary
                .filter(|s| !s.expose_secret().trim().is_empty()),
            api_key,
            webhook_secret,
            key_ring,
            links,
        })
    }

    /// Primary first, then secondary.
    pub fn client_secrets(&self) -> Vec<&SecretString> {
        std::iter::once(&self.client_secret)
            .chain(self.client_secret_secondary.as_ref())
            .collect()
    }
}

/// The local key file (`{data dir}/keys.json`, mode 0600): the key fields of the secret
/// document, generated on first run. No `Debug`: it holds keys.
#[derive(Serialize, Deserialize)]
pub struct KeyFile {
    pub token_keys: BTreeMap<String, String>,
    pub active_token_key: String,
    pub link_key: String,
}

impl KeyFile {
    /// Fresh key material: a key ring with one key, and a link-signing key.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut token_key = [0u8; 32];
        let mut link_key = [0u8; 32];
        getrandom::fill(&mut token_key)?;
        getrandom::fill(&mut link_key)?;
        let id = format!("k{}", Utc::now().format("%Y%m%d"));
        Ok(KeyFile {
            token_keys: BTreeMap::from([(id.clone(), STANDARD.encode(token_key))]),
            active_token_key: id,
            link_key: STANDARD.encode(link_key),
        })
    }

    pub fn into_document(self) -> SecretDocument {
        SecretDocument {
            token_keys: self
                .token_keys
                .into_iter()
                .map(|(k, v)| (k, SecretString::from(v)))
                .collect(),
            active_token_key: self.active_token_key,
            link_key: Some(SecretString::from(self.link_key)),
            ..SecretDocument::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> BTreeMap<String, String> {
        [
            ("SPKEEPER_CLIENT_ID", "A044E184-7DE2-4D05-AACF-52118008C44E"),
            ("SPKEEPER_PUBLIC_URL", "https://addin.example.com"),
            ("SPKEEPER_ALLOWED_SP_HOSTS", "*.sharepoint.com"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    fn with(extra: &[(&str, &str)]) -> BTreeMap<String, String> {
        let mut m = base();
        for (k, v) in extra {
            m.insert(k.to_string(), v.to_string());
        }
        m
    }

    #[test]
    fn minimal_configuration_gets_the_documented_defaults() {
        let s = Settings::from_source(&base()).unwrap();
        assert_eq!(s.client_id, "a044e184-7de2-4d05-aacf-52118008c44e");
        assert_eq!(s.audience_host, "addin.example.com");
        assert_eq!(s.launch_url(), "https://addin.example.com/launch");
        assert_eq!(s.notice_days.days(), &[30, 7, 1]);
        assert_eq!(s.token_auth, TokenAuth::ApiKey);
        assert_eq!(
            s.store,
            StoreChoice::Sqlite {
                data_dir: ".spkeeper".into()
            }
        );
        assert!(
            s.sts_hosts
                .check_url("https://accounts.accesscontrol.windows.net/tokens/OAuth/2")
                .is_ok()
        );
    }

    #[test]
    fn each_missing_required_variable_is_named() {
        for var in [
            "SPKEEPER_CLIENT_ID",
            "SPKEEPER_PUBLIC_URL",
            "SPKEEPER_ALLOWED_SP_HOSTS",
        ] {
            let mut m = base();
            m.remove(var);
            assert_eq!(Settings::from_source(&m).unwrap_err().var, var);
        }
        let m = with(&[("SPKEEPER_STORE", "dynamodb")]);
        assert_eq!(Settings::from_source(&m).unwrap_err().var, "SPKEEPER_TABLE");
    }

    #[test]
    fn malformed_values_are_named() {
        for (var, value) in [
            ("SPKEEPER_CLIENT_ID", "not-a-guid"),
            ("SPKEEPER_PUBLIC_URL", "http://addin.example.com"),
            ("SPKEEPER_PUBLIC_URL", "https://addin.example.com/app"),
            ("SPKEEPER_PUBLIC_URL", "addin.example.com"),
            ("SPKEEPER_ALLOWED_SP_HOSTS", "*.com"),
            ("SPKEEPER_STS_HOSTS", "*.windows.net"),
            ("SPKEEPER_NOTICE_DAYS", "30,x"),
            ("SPKEEPER_CLIENT_SECRET_EXPIRES_AT", "tomorrow"),
            ("SPKEEPER_TOKEN_AUTH", "magic"),
            ("SPKEEPER_WEBHOOK_URL", "ftp://x"),
            ("SPKEEPER_WEBHOOK_URL", "http://hooks.example.com/notices"),
            ("SPKEEPER_RETURN_URL", "http://app.example.com/after-launch"),
            (
                "SPKEEPER_RETURN_URL",
                "https://app.example.com/after-launch#x",
            ),
            ("SPKEEPER_RETURN_URL", "/relative"),
            ("SPKEEPER_STORE", "postgres"),
        ] {
            let err = Settings::from_source(&with(&[(var, value)])).unwrap_err();
            assert_eq!(err.var, var, "{value}");
        }
    }

    #[test]
    fn loopback_public_url_may_use_http_and_keeps_its_port() {
        let s = Settings::from_source(&with(&[("SPKEEPER_PUBLIC_URL", "http://127.0.0.1:8080")]))
            .unwrap();
        assert_eq!(s.audience_host, "127.0.0.1:8080");
        assert!(s.public_is_loopback());
    }

    fn doc() -> SecretDocument {
        KeyFile::generate().unwrap().into_document()
    }

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn secrets_need_a_client_secret_and_an_api_key() {
        let s = Settings::from_source(&base()).unwrap();
        let err = Secrets::from_document(doc(), &s).unwrap_err();
        assert_eq!(err.var, "SPKEEPER_CLIENT_SECRET");
        let d = doc().with_env_fallback(&env(&[("SPKEEPER_CLIENT_SECRET", "s3cr3t-value")]));
        assert_eq!(
            Secrets::from_document(d, &s).unwrap_err().var,
            "SPKEEPER_API_KEY"
        );
        let d = doc().with_env_fallback(&env(&[
            ("SPKEEPER_CLIENT_SECRET", "s3cr3t-value"),
            ("SPKEEPER_API_KEY", "0123456789abcdef0123"),
        ]));
        let secrets = Secrets::from_document(d, &s).unwrap();
        assert_eq!(secrets.client_secrets().len(), 1);
    }

    #[test]
    fn webhook_url_needs_a_whsec_secret() {
        let s = Settings::from_source(&with(&[(
            "SPKEEPER_WEBHOOK_URL",
            "https://hooks.example.com/x",
        )]))
        .unwrap();
        let base_env = [
            ("SPKEEPER_CLIENT_SECRET", "s"),
            ("SPKEEPER_API_KEY", "0123456789abcdef0123"),
        ];
        let d = doc().with_env_fallback(&env(&base_env));
        assert_eq!(
            Secrets::from_document(d, &s).unwrap_err().var,
            "SPKEEPER_WEBHOOK_SECRET"
        );
        let mut e = base_env.to_vec();
        e.push(("SPKEEPER_WEBHOOK_SECRET", "plain"));
        let d = doc().with_env_fallback(&env(&e));
        assert_eq!(
            Secrets::from_document(d, &s).unwrap_err().var,
            "SPKEEPER_WEBHOOK_SECRET"
        );
        e.pop();
        e.push((
            "SPKEEPER_WEBHOOK_SECRET",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        ));
        let d = doc().with_env_fallback(&env(&e));
        assert!(Secrets::from_document(d, &s).is_ok());
    }

    #[test]
    fn config_errors_never_contain_the_secret_value() {
        let s = Settings::from_source(&base()).unwrap();
        let d = doc().with_env_fallback(&env(&[
            ("SPKEEPER_CLIENT_SECRET", "s"),
            ("SPKEEPER_API_KEY", "short-key-XYZ"),
        ]));
        let err = Secrets::from_document(d, &s).unwrap_err().to_string();
        assert!(!err.contains("short-key-XYZ"), "{err}");
        let printed = format!(
            "{:?}",
            doc().with_env_fallback(&env(&[("SPKEEPER_CLIENT_SECRET", "hunter2hunter2")]))
        );
        assert!(!printed.contains("hunter2"));
    }
}
