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
    "SPKEEPER_API_KEY_SECONDARY",
    "SPKEEPER_TOKEN_AUTH",
    "SPKEEPER_WEBHOOK_URL",
    "SPKEEPER_WEBHOOK_SECRET",
    "SPKEEPER_WEBHOOK_SECRET_SECONDARY",
    "SPKEEPER_RETURN_URL",
    "SPKEEPER_ENTRA_CLIENT_ID",
    "SPKEEPER_ENTRA_TENANT",
    "SPKEEPER_ENTRA_AUTHORITY",
    "SPKEEPER_ENTRA_CLIENT_SECRET",
    "SPKEEPER_ENTRA_CERTIFICATE",
    "SPKEEPER_ENTRA_PRIVATE_KEY",
    "SPKEEPER_ENTRA_ASSERTION_ALG",
    "SPKEEPER_ENTRA_SCOPES",
    "SPKEEPER_ENTRA_KEEPALIVE_DAYS",
    "SPKEEPER_ENTRA_SECRET_EXPIRES_AT",
    "SPKEEPER_RENEW_VIA",
    "SPKEEPER_STORE",
    "SPKEEPER_DATA_DIR",
    "SPKEEPER_TABLE",
    "SPKEEPER_QUEUE_URL",
    "SPKEEPER_SECRETS_ARN",
    "SPKEEPER_SECRETS_REFRESH_SECONDS",
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
    /// The add-in's ACS client id: `None` when the deployment serves no ACS launches.
    pub client_id: Option<String>,
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
    /// Entra ID sign-in: `None` when the deployment serves no Entra grants.
    pub entra: Option<EntraSettings>,
    /// Where renew links of ACS grants lead.
    pub renew_via: RenewVia,
    pub store: StoreChoice,
}

/// `SPKEEPER_RENEW_VIA`: where renew links of ACS grants lead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenewVia {
    /// Back through SharePoint's AppRedirect.aspx (a relaunch of the add-in).
    SharePoint,
    /// To Entra sign-in for the grant's site: the migration from ACS.
    Entra,
}

/// The client-assertion form (ENTRA.md §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssertionAlg {
    /// `PS256` with `x5t#S256` (the default).
    Ps256,
    /// `RS256` with `x5t` (SHA-1), which some tenants still require.
    Rs256,
}

/// The Entra ID app (ENTRA.md), from the `SPKEEPER_ENTRA_*` variables.
#[derive(Debug, Clone)]
pub struct EntraSettings {
    pub client_id: String,
    /// A tenant GUID (lower case), or `organizations`.
    pub tenant: String,
    /// The authority's base URL, without a trailing slash.
    pub authority: String,
    /// Delegated scopes asked at sign-in; `None`: `https://{host}/.default` of the site.
    pub scopes: Option<Vec<String>>,
    /// Redeem a grant idle this many days (0: never).
    pub keepalive_days: u32,
    pub assertion_alg: AssertionAlg,
    pub secret_expires_at: Option<DateTime<Utc>>,
}

impl EntraSettings {
    /// `{authority}/{tenant}/oauth2/v2.0/{path}`.
    fn endpoint(&self, path: &str) -> String {
        format!("{}/{}/oauth2/v2.0/{path}", self.authority, self.tenant)
    }

    pub fn authorize_endpoint(&self) -> String {
        self.endpoint("authorize")
    }

    pub fn token_endpoint(&self) -> String {
        self.endpoint("token")
    }

    /// `{authority}/{tenant}/discovery/v2.0/keys`.
    pub fn jwks_uri(&self) -> String {
        format!("{}/{}/discovery/v2.0/keys", self.authority, self.tenant)
    }

    /// The issuer an ID token of tenant `tid` must carry.
    pub fn issuer_for(&self, tid: &str) -> String {
        format!("{}/{tid}/v2.0", self.authority)
    }

    /// Is the keep-alive redemption on?
    pub fn keepalive(&self) -> bool {
        self.keepalive_days > 0
    }

    fn from_source(src: &dyn Source) -> Result<Option<Self>, ConfigError> {
        let Some(client_id) = src.get("SPKEEPER_ENTRA_CLIENT_ID") else {
            return Ok(None);
        };
        let client_id = client_id.trim().to_ascii_lowercase();
        if !is_guid(&client_id) {
            return Err(ConfigError::new(
                "SPKEEPER_ENTRA_CLIENT_ID",
                "must be a GUID",
            ));
        }
        let tenant = src
            .get("SPKEEPER_ENTRA_TENANT")
            .map(|t| t.trim().to_ascii_lowercase())
            .unwrap_or_else(|| "organizations".into());
        if tenant != "organizations" && !is_guid(&tenant) {
            return Err(ConfigError::new(
                "SPKEEPER_ENTRA_TENANT",
                "must be a tenant GUID or organizations (SharePoint users are work accounts)",
            ));
        }
        let authority_raw = src
            .get("SPKEEPER_ENTRA_AUTHORITY")
            .unwrap_or_else(|| "https://login.microsoftonline.com".into());
        const AUTH: &str = "SPKEEPER_ENTRA_AUTHORITY";
        let authority = Url::parse(authority_raw.trim())
            .map_err(|_| ConfigError::new(AUTH, "must be an absolute URL"))?;
        let scheme_ok = match authority.scheme() {
            "https" => true,
            "http" => is_loopback_url(&authority),
            _ => false,
        };
        if !scheme_ok
            || authority.host().is_none()
            || !authority.username().is_empty()
            || authority.query().is_some()
            || authority.fragment().is_some()
        {
            return Err(ConfigError::new(
                AUTH,
                "must be an https base URL (http only on a loopback host)",
            ));
        }
        let scopes = src.get("SPKEEPER_ENTRA_SCOPES").map(|v| {
            v.split([' ', ','])
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect::<Vec<_>>()
        });
        if scopes.as_ref().is_some_and(Vec::is_empty) {
            return Err(ConfigError::new(
                "SPKEEPER_ENTRA_SCOPES",
                "must list at least one scope",
            ));
        }
        let keepalive_days = match src.get("SPKEEPER_ENTRA_KEEPALIVE_DAYS") {
            None => 30,
            Some(v) => v
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|d| *d < 90)
                .ok_or_else(|| {
                    ConfigError::new(
                        "SPKEEPER_ENTRA_KEEPALIVE_DAYS",
                        "must be a number of days from 0 (off) to 89",
                    )
                })?,
        };
        let assertion_alg = match src
            .get("SPKEEPER_ENTRA_ASSERTION_ALG")
            .map(|a| a.trim().to_ascii_uppercase())
            .as_deref()
        {
            None | Some("PS256") => AssertionAlg::Ps256,
            Some("RS256") => AssertionAlg::Rs256,
            Some(_) => {
                return Err(ConfigError::new(
                    "SPKEEPER_ENTRA_ASSERTION_ALG",
                    "must be PS256 or RS256",
                ));
            }
        };
        Ok(Some(EntraSettings {
            client_id,
            tenant,
            authority: authority.as_str().trim_end_matches('/').to_string(),
            scopes,
            keepalive_days,
            assertion_alg,
            secret_expires_at: rfc3339_var(src, "SPKEEPER_ENTRA_SECRET_EXPIRES_AT")?,
        }))
    }
}

fn rfc3339_var(src: &dyn Source, var: &'static str) -> Result<Option<DateTime<Utc>>, ConfigError> {
    src.get(var)
        .map(|v| {
            DateTime::parse_from_rfc3339(v.trim())
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| ConfigError::new(var, "must be an RFC 3339 time"))
        })
        .transpose()
}

impl Settings {
    pub fn from_source(src: &dyn Source) -> Result<Self, ConfigError> {
        let entra = EntraSettings::from_source(src)?;
        let client_id = match src.get("SPKEEPER_CLIENT_ID") {
            Some(id) => {
                let id = id.trim().to_ascii_lowercase();
                if !is_guid(&id) {
                    return Err(ConfigError::new("SPKEEPER_CLIENT_ID", "must be a GUID"));
                }
                Some(id)
            }
            None if entra.is_some() => None,
            None => {
                return Err(ConfigError::new(
                    "SPKEEPER_CLIENT_ID",
                    "is required (or SPKEEPER_ENTRA_CLIENT_ID, for Entra ID sign-in)",
                ));
            }
        };
        let renew_via = match src
            .get("SPKEEPER_RENEW_VIA")
            .map(|v| v.trim().to_ascii_lowercase())
            .as_deref()
        {
            None | Some("sharepoint") => RenewVia::SharePoint,
            Some("entra") if entra.is_some() && client_id.is_some() => RenewVia::Entra,
            Some("entra") => {
                return Err(ConfigError::new(
                    "SPKEEPER_RENEW_VIA",
                    "entra needs both kinds configured (SPKEEPER_CLIENT_ID and SPKEEPER_ENTRA_CLIENT_ID)",
                ));
            }
            Some(_) => {
                return Err(ConfigError::new(
                    "SPKEEPER_RENEW_VIA",
                    "must be sharepoint or entra",
                ));
            }
        };

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

        let client_secret_expires_at = rfc3339_var(src, "SPKEEPER_CLIENT_SECRET_EXPIRES_AT")?;

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
            entra,
            renew_via,
            store,
        })
    }

    /// Client secrets with a configured expiry: the ACS add-in's and the Entra app's.
    pub fn client_secrets_expiring(&self) -> Vec<(&str, DateTime<Utc>)> {
        let acs = self.client_id.as_deref().zip(self.client_secret_expires_at);
        let entra = self
            .entra
            .as_ref()
            .and_then(|e| e.secret_expires_at.map(|t| (e.client_id.as_str(), t)));
        acs.into_iter().chain(entra).collect()
    }

    /// `{PUBLIC_URL}/callback`: the redirect URI registered for the Entra app (platform Web).
    pub fn callback_url(&self) -> String {
        format!("{}/callback", self.public_base())
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

/// The parts of the secret document, one per use. In AWS each part lives in its own Secrets
/// Manager secret (README, "Deploy to AWS"), so a function's role can read only the parts the
/// function uses; locally the key file and the environment hold them all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Part {
    /// `client_secret` (and `client_secret_secondary` during a rotation): verifies context
    /// tokens and authenticates spkeeper to ACS.
    ClientSecret,
    /// `token_keys` and `active_token_key`: seal and open refresh and access tokens.
    TokenKeys,
    /// `link_key` (and `link_key_secondary` during a rotation): signs renew links and session
    /// cookies.
    LinkKey,
    /// `api_key` (and `api_key_secondary` during a rotation): the bearer key of the app-backend
    /// routes when API Gateway's IAM auth is not used.
    ApiKey,
    /// `webhook_secret` (and `webhook_secret_secondary` during a rotation): signs webhooks.
    WebhookSecret,
    /// `entra_client_secret`, or `entra_certificate` and `entra_private_key`: authenticate
    /// spkeeper to Entra ID (ENTRA.md §4).
    EntraCredential,
}

impl Part {
    pub const ALL: [Part; 6] = [
        Part::ClientSecret,
        Part::TokenKeys,
        Part::LinkKey,
        Part::ApiKey,
        Part::WebhookSecret,
        Part::EntraCredential,
    ];

    /// The document fields that make up this part.
    pub fn fields(self) -> &'static [&'static str] {
        match self {
            Part::ClientSecret => &["client_secret", "client_secret_secondary"],
            Part::TokenKeys => &["token_keys", "active_token_key"],
            Part::LinkKey => &["link_key", "link_key_secondary"],
            Part::ApiKey => &["api_key", "api_key_secondary"],
            Part::WebhookSecret => &["webhook_secret", "webhook_secret_secondary"],
            Part::EntraCredential => &[
                "entra_client_secret",
                "entra_certificate",
                "entra_private_key",
            ],
        }
    }

    /// The name a problem with this part is reported under: the variable that sets it locally,
    /// or its document field for the key parts (which have no variable).
    pub fn var(self) -> &'static str {
        match self {
            Part::ClientSecret => "SPKEEPER_CLIENT_SECRET",
            Part::TokenKeys => "token_keys",
            Part::LinkKey => "link_key",
            Part::ApiKey => "SPKEEPER_API_KEY",
            Part::WebhookSecret => "SPKEEPER_WEBHOOK_SECRET",
            Part::EntraCredential => "SPKEEPER_ENTRA_CLIENT_SECRET",
        }
    }

    fn missing(self) -> ConfigError {
        let field = self.fields()[0];
        let problem = if self.var() == field {
            "is required in the secrets".to_string()
        } else {
            format!("is required (`{field}` in the secrets)")
        };
        ConfigError::new(self.var(), problem)
    }
}

/// How much a program needs one part of the secrets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Not used: dropped when the secrets are read, so it cannot be used.
    No,
    /// Used when configured, checked if present.
    IfPresent,
    /// Required: the program does not start without it.
    Yes,
}

/// The programs spkeeper is deployed as: the four Lambda functions (named as their binaries)
/// and the local CLI, which runs everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Program {
    Launch,
    Exchange,
    Sweep,
    Notify,
    Cli,
}

impl Program {
    pub const FUNCTIONS: [Program; 4] = [
        Program::Launch,
        Program::Exchange,
        Program::Sweep,
        Program::Notify,
    ];

    /// The binary's name.
    pub fn name(self) -> &'static str {
        match self {
            Program::Launch => "launch",
            Program::Exchange => "exchange",
            Program::Sweep => "sweep",
            Program::Notify => "notify",
            Program::Cli => "spkeeper",
        }
    }

    pub fn from_name(name: &str) -> Option<Program> {
        Program::FUNCTIONS
            .into_iter()
            .chain([Program::Cli])
            .find(|p| p.name() == name)
    }
}

/// Which parts of the secrets a program uses. A part it needs must be there (it does not start
/// otherwise, and the error names the part); a part it does not need is dropped when the
/// secrets are read, so the program cannot use it even if it was given it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Needs([Need; 6]);

impl Needs {
    /// Exactly these parts, each required.
    pub fn only(parts: &[Part]) -> Needs {
        let mut n = [Need::No; 6];
        for p in parts {
            n[*p as usize] = Need::Yes;
        }
        Needs(n)
    }

    /// What each program uses (check the code before changing this: the template's roles and
    /// secrets follow it, and `tests/template.rs` holds the two together).
    /// - launch: validates context tokens and makes the first exchange (client secret), seals
    ///   the refresh token (token keys), signs the session cookie and renew links (link key);
    /// - exchange: the same, plus the API key unless API Gateway's IAM auth identifies callers;
    /// - sweep: signs the renew links in notices (link key); it never opens a token;
    /// - notify: signs webhooks (webhook secret), nothing else;
    /// - the CLI runs everything; the API key and the webhook secret are checked if present.
    /// - with Entra configured, launch (it redeems sign-in codes), exchange and the CLI need the
    ///   Entra credential, and so does the sweep when it keeps grants alive (which also opens
    ///   and seals refresh tokens: the token keys);
    /// - without ACS configured, nobody needs the ACS client secret.
    pub fn of(program: Program, settings: &Settings) -> Needs {
        let mut n = Self::for_auth(program, settings.token_auth, settings.webhook_url.is_some());
        if settings.client_id.is_none() {
            n.0[Part::ClientSecret as usize] = Need::No;
        }
        if let Some(entra) = &settings.entra {
            let uses = match program {
                Program::Launch | Program::Exchange | Program::Cli => true,
                Program::Sweep => entra.keepalive(),
                Program::Notify => false,
            };
            if uses {
                n.0[Part::EntraCredential as usize] = Need::Yes;
                n.0[Part::TokenKeys as usize] = Need::Yes;
            }
        }
        n
    }

    /// [`Needs::of`] from the two settings it depends on.
    pub fn for_auth(program: Program, token_auth: TokenAuth, webhook_url: bool) -> Needs {
        use Part::*;
        match program {
            Program::Launch => Needs::only(&[ClientSecret, TokenKeys, LinkKey]),
            Program::Exchange => match token_auth {
                TokenAuth::ApiKey => Needs::only(&[ClientSecret, TokenKeys, LinkKey, ApiKey]),
                TokenAuth::Iam => Needs::only(&[ClientSecret, TokenKeys, LinkKey]),
            },
            Program::Sweep => Needs::only(&[LinkKey]),
            Program::Notify => Needs::only(&[WebhookSecret]),
            Program::Cli => {
                let mut n = Needs::only(&[ClientSecret, TokenKeys, LinkKey]);
                n.0[ApiKey as usize] = match token_auth {
                    TokenAuth::ApiKey => Need::Yes,
                    TokenAuth::Iam => Need::IfPresent,
                };
                n.0[WebhookSecret as usize] = if webhook_url {
                    Need::Yes
                } else {
                    Need::IfPresent
                };
                n
            }
        }
    }

    pub fn get(&self, part: Part) -> Need {
        self.0[part as usize]
    }

    /// The same, but `part` is not used (`spkeeper doctor` on a data directory whose key file
    /// does not exist yet checks the rest).
    pub fn without(mut self, part: Part) -> Needs {
        self.0[part as usize] = Need::No;
        self
    }

    /// The parts used at all (required or if present).
    pub fn used(&self) -> Vec<Part> {
        Part::ALL
            .into_iter()
            .filter(|p| self.get(*p) != Need::No)
            .collect()
    }
}

/// The secret document: a JSON object. In AWS it is the merge of the Secrets Manager secrets a
/// function is given (each holding some of the fields); locally the key file under the data
/// directory holds its key fields and the environment the rest.
#[derive(Default, Clone, Deserialize)]
pub struct SecretDocument {
    #[serde(default)]
    pub client_secret: Option<SecretString>,
    #[serde(default)]
    pub client_secret_secondary: Option<SecretString>,
    #[serde(default)]
    pub api_key: Option<SecretString>,
    /// The previous API key, accepted too while the app's backends move to the new one.
    #[serde(default)]
    pub api_key_secondary: Option<SecretString>,
    #[serde(default)]
    pub webhook_secret: Option<SecretString>,
    /// A second secret every webhook is also signed with, while receivers move to it.
    #[serde(default)]
    pub webhook_secret_secondary: Option<SecretString>,
    /// Key id → base64 of 32 random bytes.
    #[serde(default)]
    pub token_keys: BTreeMap<String, SecretString>,
    #[serde(default)]
    pub active_token_key: String,
    /// base64 of at least 32 random bytes.
    #[serde(default)]
    pub link_key: Option<SecretString>,
    /// The previous link key: what it signed (renew links already sent, sessions) still
    /// verifies while the new one signs.
    #[serde(default)]
    pub link_key_secondary: Option<SecretString>,
    #[serde(default)]
    pub entra_client_secret: Option<SecretString>,
    /// PEM.
    #[serde(default)]
    pub entra_certificate: Option<SecretString>,
    /// PEM (PKCS#8 or PKCS#1 RSA).
    #[serde(default)]
    pub entra_private_key: Option<SecretString>,
}

impl fmt::Debug for SecretDocument {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretDocument")
            .field("fields", &self.fields_present())
            .field("token_key_ids", &self.token_keys.keys().collect::<Vec<_>>())
            .field("active_token_key", &self.active_token_key)
            .finish_non_exhaustive()
    }
}

fn filled(s: &Option<SecretString>) -> bool {
    s.as_ref()
        .is_some_and(|s| !s.expose_secret().trim().is_empty())
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
        self.api_key_secondary = pick(self.api_key_secondary, "SPKEEPER_API_KEY_SECONDARY");
        self.webhook_secret = pick(self.webhook_secret, "SPKEEPER_WEBHOOK_SECRET");
        self.webhook_secret_secondary = pick(
            self.webhook_secret_secondary,
            "SPKEEPER_WEBHOOK_SECRET_SECONDARY",
        );
        self.entra_client_secret = pick(self.entra_client_secret, "SPKEEPER_ENTRA_CLIENT_SECRET");
        self.entra_certificate = pick(self.entra_certificate, "SPKEEPER_ENTRA_CERTIFICATE");
        self.entra_private_key = pick(self.entra_private_key, "SPKEEPER_ENTRA_PRIVATE_KEY");
        self
    }

    /// The names of the fields that have a value (never the values).
    pub fn fields_present(&self) -> Vec<&'static str> {
        [
            ("client_secret", filled(&self.client_secret)),
            (
                "client_secret_secondary",
                filled(&self.client_secret_secondary),
            ),
            ("token_keys", !self.token_keys.is_empty()),
            ("active_token_key", !self.active_token_key.trim().is_empty()),
            ("link_key", filled(&self.link_key)),
            ("link_key_secondary", filled(&self.link_key_secondary)),
            ("api_key", filled(&self.api_key)),
            ("api_key_secondary", filled(&self.api_key_secondary)),
            ("webhook_secret", filled(&self.webhook_secret)),
            (
                "webhook_secret_secondary",
                filled(&self.webhook_secret_secondary),
            ),
            ("entra_client_secret", filled(&self.entra_client_secret)),
            ("entra_certificate", filled(&self.entra_certificate)),
            ("entra_private_key", filled(&self.entra_private_key)),
        ]
        .into_iter()
        .filter_map(|(name, present)| present.then_some(name))
        .collect()
    }

    /// The parts with at least one field present.
    pub fn parts_present(&self) -> Vec<Part> {
        let fields = self.fields_present();
        Part::ALL
            .into_iter()
            .filter(|p| p.fields().iter().any(|f| fields.contains(f)))
            .collect()
    }

    /// One document from two (the secrets a function is given). A field present in both is a
    /// configuration error: which value counts would depend on the order of the list.
    pub fn merge(self, other: SecretDocument) -> Result<SecretDocument, ConfigError> {
        let ours = self.fields_present();
        if let Some(both) = other
            .fields_present()
            .into_iter()
            .find(|f| ours.contains(f))
        {
            return Err(ConfigError::new(
                "SPKEEPER_SECRETS_ARN",
                format!("`{both}` is in more than one of the secrets; keep each field in one"),
            ));
        }
        let either = |a: Option<SecretString>, b: Option<SecretString>| {
            if filled(&a) { a } else { b }
        };
        Ok(SecretDocument {
            client_secret: either(self.client_secret, other.client_secret),
            client_secret_secondary: either(
                self.client_secret_secondary,
                other.client_secret_secondary,
            ),
            api_key: either(self.api_key, other.api_key),
            api_key_secondary: either(self.api_key_secondary, other.api_key_secondary),
            webhook_secret: either(self.webhook_secret, other.webhook_secret),
            webhook_secret_secondary: either(
                self.webhook_secret_secondary,
                other.webhook_secret_secondary,
            ),
            token_keys: if self.token_keys.is_empty() {
                other.token_keys
            } else {
                self.token_keys
            },
            active_token_key: if self.active_token_key.trim().is_empty() {
                other.active_token_key
            } else {
                self.active_token_key
            },
            link_key: either(self.link_key, other.link_key),
            link_key_secondary: either(self.link_key_secondary, other.link_key_secondary),
            entra_client_secret: either(self.entra_client_secret, other.entra_client_secret),
            entra_certificate: either(self.entra_certificate, other.entra_certificate),
            entra_private_key: either(self.entra_private_key, other.entra_private_key),
        })
    }
}

/// The secrets in their usable form. Nothing here prints. A part the program does not need is
/// absent: no client secret (`client_secrets()` is empty, so nothing verifies or authenticates
/// with it), an empty key ring (sealing and opening fail), a link signer with a key made up at
/// start and never kept (nothing it signs verifies anywhere, nothing real verifies in it).
#[derive(Clone)]
pub struct Secrets {
    pub client_secret: Option<SecretString>,
    pub client_secret_secondary: Option<SecretString>,
    pub api_key: Option<SecretString>,
    pub api_key_secondary: Option<SecretString>,
    pub webhook_secret: Option<SecretString>,
    pub webhook_secret_secondary: Option<SecretString>,
    pub key_ring: KeyRing,
    pub links: LinkSigner,
    /// How spkeeper proves itself to Entra ID, when Entra is configured and this program uses it.
    pub entra: Option<EntraCredential>,
}

/// The Entra app's credential (ENTRA.md §4). Nothing here prints.
#[derive(Clone)]
pub enum EntraCredential {
    Secret(SecretString),
    /// A certificate and its private key, for the client assertion.
    Certificate {
        /// The private key, ready to sign (PS256 or RS256).
        key: jsonwebtoken::EncodingKey,
        /// base64url(SHA-256 of the certificate's DER): the assertion's `x5t#S256`.
        x5t_s256: String,
        /// base64url(SHA-1 of the certificate's DER): `x5t`, for the RS256 form.
        x5t: String,
    },
}

impl fmt::Debug for EntraCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EntraCredential::Secret(_) => f.write_str("EntraCredential::Secret([redacted])"),
            EntraCredential::Certificate { x5t_s256, .. } => f
                .debug_struct("EntraCredential::Certificate")
                .field("x5t#S256", x5t_s256)
                .finish_non_exhaustive(),
        }
    }
}

impl EntraCredential {
    /// A value of `SPKEEPER_ENTRA_CERTIFICATE`/`_PRIVATE_KEY`: the PEM text, or `@path`.
    fn pem_text(var: &'static str, v: &SecretString) -> Result<String, ConfigError> {
        let raw = v.expose_secret().trim();
        match raw.strip_prefix('@') {
            Some(path) => std::fs::read_to_string(path.trim())
                .map_err(|e| ConfigError::new(var, format!("cannot read {}: {e}", path.trim()))),
            None => Ok(raw.to_string()),
        }
    }

    fn from_document(
        secret: Option<SecretString>,
        certificate: Option<SecretString>,
        private_key: Option<SecretString>,
    ) -> Result<Option<Self>, ConfigError> {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use rustls_pki_types::CertificateDer;
        use rustls_pki_types::pem::PemObject;
        use sha1::Sha1;
        use sha2::{Digest, Sha256};
        const CERT: &str = "SPKEEPER_ENTRA_CERTIFICATE";
        const KEY: &str = "SPKEEPER_ENTRA_PRIVATE_KEY";
        match (certificate, private_key) {
            (Some(cert), Some(key)) => {
                let der = CertificateDer::from_pem_slice(Self::pem_text(CERT, &cert)?.as_bytes())
                    .map_err(|_| {
                    ConfigError::new(CERT, "must be a PEM certificate (or @path to one)")
                })?;
                let key_pem = SecretString::from(Self::pem_text(KEY, &key)?);
                let key =
                    jsonwebtoken::EncodingKey::from_rsa_pem(key_pem.expose_secret().as_bytes())
                        .map_err(|_| {
                            ConfigError::new(KEY, "must be a PEM RSA private key (or @path to one)")
                        })?;
                Ok(Some(EntraCredential::Certificate {
                    key,
                    x5t_s256: URL_SAFE_NO_PAD.encode(Sha256::digest(der.as_ref())),
                    x5t: URL_SAFE_NO_PAD.encode(Sha1::digest(der.as_ref())),
                }))
            }
            (Some(_), None) => Err(ConfigError::new(
                KEY,
                "is required with SPKEEPER_ENTRA_CERTIFICATE",
            )),
            (None, Some(_)) => Err(ConfigError::new(
                CERT,
                "is required with SPKEEPER_ENTRA_PRIVATE_KEY",
            )),
            (None, None) => Ok(secret.map(EntraCredential::Secret)),
        }
    }
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secrets")
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "[redacted]"),
            )
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

/// A non-empty value, or `None`.
fn nonempty(s: Option<SecretString>) -> Option<SecretString> {
    s.filter(|s| !s.expose_secret().trim().is_empty())
}

/// The value of a part the program uses: required ones must be there.
fn take(
    part: Part,
    need: Need,
    v: Option<SecretString>,
) -> Result<Option<SecretString>, ConfigError> {
    match (need, nonempty(v)) {
        (Need::No, _) => Ok(None),
        (Need::Yes, None) => Err(part.missing()),
        (_, v) => Ok(v),
    }
}

impl Secrets {
    /// Checks the document against what the local program (the CLI) needs: everything.
    pub fn from_document(doc: SecretDocument, settings: &Settings) -> Result<Self, ConfigError> {
        Self::for_needs(doc, Needs::of(Program::Cli, settings))
    }

    /// Keeps and checks exactly the parts in `needs`; drops the rest.
    pub fn for_needs(doc: SecretDocument, needs: Needs) -> Result<Self, ConfigError> {
        let client_secret = take(
            Part::ClientSecret,
            needs.get(Part::ClientSecret),
            doc.client_secret,
        )?;
        let client_secret_secondary = match needs.get(Part::ClientSecret) {
            Need::No => None,
            _ => nonempty(doc.client_secret_secondary),
        };

        let api_key = take(Part::ApiKey, needs.get(Part::ApiKey), doc.api_key)?;
        let api_key_secondary = match needs.get(Part::ApiKey) {
            Need::No => None,
            _ => nonempty(doc.api_key_secondary),
        };
        for (k, var) in [
            (&api_key, Part::ApiKey.var()),
            (&api_key_secondary, "SPKEEPER_API_KEY_SECONDARY"),
        ] {
            if k.as_ref().is_some_and(|k| k.expose_secret().len() < 16) {
                return Err(ConfigError::new(var, "must be at least 16 characters"));
            }
        }

        let webhook_secret = take(
            Part::WebhookSecret,
            needs.get(Part::WebhookSecret),
            doc.webhook_secret,
        )?;
        let webhook_secret_secondary = match needs.get(Part::WebhookSecret) {
            Need::No => None,
            _ => nonempty(doc.webhook_secret_secondary),
        };
        for (ws, var) in [
            (&webhook_secret, Part::WebhookSecret.var()),
            (
                &webhook_secret_secondary,
                "SPKEEPER_WEBHOOK_SECRET_SECONDARY",
            ),
        ] {
            let Some(ws) = ws else { continue };
            let raw = ws.expose_secret().trim();
            let key = raw
                .strip_prefix("whsec_")
                .ok_or_else(|| ConfigError::new(var, "must start with whsec_"))?;
            if STANDARD.decode(key).map(|k| k.len()).unwrap_or(0) < 16 {
                return Err(ConfigError::new(
                    var,
                    "must be whsec_ followed by base64 of at least 16 bytes",
                ));
            }
        }

        let key_ring = match (needs.get(Part::TokenKeys), doc.token_keys.is_empty()) {
            (Need::No, _) | (Need::IfPresent, true) => KeyRing::empty(),
            (Need::Yes, true) => return Err(Part::TokenKeys.missing()),
            _ => {
                let mut keys = BTreeMap::new();
                for (id, v) in &doc.token_keys {
                    keys.insert(id.clone(), decode_key("token_keys", v, 32)?);
                }
                KeyRing::new(&doc.active_token_key, &keys)
                    .map_err(|e| ConfigError::new("token_keys", e.to_string()))?
            }
        };

        let link_key_secondary = match needs.get(Part::LinkKey) {
            Need::No => None,
            _ => nonempty(doc.link_key_secondary)
                .map(|k| decode_key("link_key_secondary", &k, 32))
                .transpose()?,
        };
        let links = match take(Part::LinkKey, needs.get(Part::LinkKey), doc.link_key)? {
            Some(k) => LinkSigner::with_previous(
                &decode_key("link_key", &k, 32)?,
                link_key_secondary.as_deref(),
            ),
            None => {
                // Made up here, never kept: nothing signed with it verifies anywhere.
                let mut k = [0u8; 32];
                getrandom::fill(&mut k).map_err(|_| {
                    ConfigError::new("link_key", "the system random generator failed")
                })?;
                LinkSigner::new(&k)
            }
        };

        let entra = match needs.get(Part::EntraCredential) {
            Need::No => None,
            need => {
                let credential = EntraCredential::from_document(
                    nonempty(doc.entra_client_secret),
                    nonempty(doc.entra_certificate),
                    nonempty(doc.entra_private_key),
                )?;
                if need == Need::Yes && credential.is_none() {
                    return Err(ConfigError::new(
                        "SPKEEPER_ENTRA_CLIENT_SECRET",
                        "is required (or SPKEEPER_ENTRA_CERTIFICATE and SPKEEPER_ENTRA_PRIVATE_KEY)",
                    ));
                }
                credential
            }
        };

        Ok(Secrets {
            client_secret,
            client_secret_secondary,
            api_key,
            api_key_secondary,
            webhook_secret,
            webhook_secret_secondary,
            key_ring,
            links,
            entra,
        })
    }

    /// The secrets each webhook is signed with: the secret, and the second one during a
    /// rotation (Standard Webhooks: one signature per secret, space-separated).
    pub fn webhook_secrets(&self) -> Vec<&SecretString> {
        self.webhook_secret
            .iter()
            .chain(self.webhook_secret_secondary.as_ref())
            .collect()
    }

    /// The API keys accepted now: the key, and the previous one during a rotation.
    pub fn api_keys(&self) -> Vec<&SecretString> {
        self.api_key
            .iter()
            .chain(self.api_key_secondary.as_ref())
            .collect()
    }

    /// Primary first, then secondary; empty for a program that does not hold them.
    pub fn client_secrets(&self) -> Vec<&SecretString> {
        self.client_secret
            .iter()
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
    /// The previous link key during a rotation (docs/production-serve.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_key_secondary: Option<String>,
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
            link_key_secondary: None,
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
            link_key_secondary: self.link_key_secondary.map(SecretString::from),
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
        assert_eq!(
            s.client_id.as_deref(),
            Some("a044e184-7de2-4d05-aacf-52118008c44e")
        );
        assert!(s.entra.is_none());
        assert_eq!(s.renew_via, RenewVia::SharePoint);
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
    fn entra_alone_is_enough_and_gets_the_documented_defaults() {
        let mut m = base();
        m.remove("SPKEEPER_CLIENT_ID");
        m.insert(
            "SPKEEPER_ENTRA_CLIENT_ID".into(),
            "B3F1C0DE-0000-4000-8000-000000000001".into(),
        );
        let s = Settings::from_source(&m).unwrap();
        assert_eq!(s.client_id, None);
        let e = s.entra.unwrap();
        assert_eq!(e.client_id, "b3f1c0de-0000-4000-8000-000000000001");
        assert_eq!(e.tenant, "organizations");
        assert_eq!(
            e.token_endpoint(),
            "https://login.microsoftonline.com/organizations/oauth2/v2.0/token"
        );
        assert_eq!(
            e.jwks_uri(),
            "https://login.microsoftonline.com/organizations/discovery/v2.0/keys"
        );
        assert_eq!(
            e.issuer_for("040f2415-e6e3-4480-96ce-26ef73275f73"),
            "https://login.microsoftonline.com/040f2415-e6e3-4480-96ce-26ef73275f73/v2.0"
        );
        assert_eq!(e.keepalive_days, 30);
        assert_eq!(e.assertion_alg, AssertionAlg::Ps256);
        assert!(e.scopes.is_none());
    }

    #[test]
    fn with_neither_kind_configured_the_start_names_both() {
        let mut m = base();
        m.remove("SPKEEPER_CLIENT_ID");
        let err = Settings::from_source(&m).unwrap_err();
        assert_eq!(err.var, "SPKEEPER_CLIENT_ID");
        assert!(err.problem.contains("SPKEEPER_ENTRA_CLIENT_ID"), "{err}");
    }

    #[test]
    fn malformed_entra_values_are_named() {
        let entra = (
            "SPKEEPER_ENTRA_CLIENT_ID",
            "b3f1c0de-0000-4000-8000-000000000001",
        );
        for (var, value) in [
            ("SPKEEPER_ENTRA_CLIENT_ID", "nope"),
            ("SPKEEPER_ENTRA_TENANT", "common"),
            ("SPKEEPER_ENTRA_TENANT", "consumers"),
            ("SPKEEPER_ENTRA_AUTHORITY", "http://login.example.com"),
            ("SPKEEPER_ENTRA_AUTHORITY", "ftp://x"),
            ("SPKEEPER_ENTRA_KEEPALIVE_DAYS", "90"),
            ("SPKEEPER_ENTRA_KEEPALIVE_DAYS", "-1"),
            ("SPKEEPER_ENTRA_ASSERTION_ALG", "HS256"),
            ("SPKEEPER_ENTRA_SCOPES", " , "),
            ("SPKEEPER_ENTRA_SECRET_EXPIRES_AT", "soon"),
            ("SPKEEPER_RENEW_VIA", "carrier-pigeon"),
        ] {
            let err = Settings::from_source(&with(&[entra, (var, value)])).unwrap_err();
            assert_eq!(err.var, var, "{value}");
        }
        // migration needs both kinds
        let mut m = with(&[("SPKEEPER_RENEW_VIA", "entra")]);
        assert_eq!(
            Settings::from_source(&m).unwrap_err().var,
            "SPKEEPER_RENEW_VIA"
        );
        m.insert(entra.0.into(), entra.1.into());
        assert_eq!(
            Settings::from_source(&m).unwrap().renew_via,
            RenewVia::Entra
        );
        // a loopback authority may use http (dev, tests)
        let s = Settings::from_source(&with(&[
            entra,
            ("SPKEEPER_ENTRA_AUTHORITY", "http://127.0.0.1:9000/"),
            ("SPKEEPER_ENTRA_KEEPALIVE_DAYS", "0"),
        ]))
        .unwrap();
        let e = s.entra.unwrap();
        assert_eq!(e.authority, "http://127.0.0.1:9000");
        assert!(!e.keepalive());
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
    fn a_previous_api_key_is_accepted_beside_the_key_and_held_to_the_same_length() {
        let s = Settings::from_source(&base()).unwrap();
        let with_previous = |previous: &str| {
            doc().with_env_fallback(&env(&[
                ("SPKEEPER_CLIENT_SECRET", "s3cr3t-value"),
                ("SPKEEPER_API_KEY", "0123456789abcdef0123"),
                ("SPKEEPER_API_KEY_SECONDARY", previous),
            ]))
        };
        let secrets = Secrets::from_document(with_previous("fedcba9876543210fedc"), &s).unwrap();
        assert_eq!(secrets.api_keys().len(), 2);
        assert_eq!(
            Secrets::from_document(with_previous("short"), &s)
                .unwrap_err()
                .var,
            "SPKEEPER_API_KEY_SECONDARY"
        );
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

    const CLIENT_SECRET: &str = "client-secret-value-XYZ";
    const API_KEY: &str = "api-key-value-0123456789";
    const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    /// One document per part, as the Secrets Manager secrets in the README.
    fn part_doc(part: Part) -> SecretDocument {
        let keys = doc();
        let mut d = SecretDocument::default();
        match part {
            Part::ClientSecret => d.client_secret = Some(CLIENT_SECRET.into()),
            Part::TokenKeys => {
                d.token_keys = keys.token_keys;
                d.active_token_key = keys.active_token_key;
            }
            Part::LinkKey => d.link_key = keys.link_key,
            Part::ApiKey => d.api_key = Some(API_KEY.into()),
            Part::WebhookSecret => d.webhook_secret = Some(WEBHOOK_SECRET.into()),
            Part::EntraCredential => d.entra_client_secret = Some("entra-secret-value-XYZ".into()),
        }
        d
    }

    fn merged(parts: &[Part]) -> SecretDocument {
        parts
            .iter()
            .try_fold(SecretDocument::default(), |d, p| d.merge(part_doc(*p)))
            .unwrap()
    }

    fn every_function() -> Vec<(Program, TokenAuth)> {
        vec![
            (Program::Launch, TokenAuth::Iam),
            (Program::Exchange, TokenAuth::Iam),
            (Program::Exchange, TokenAuth::ApiKey),
            (Program::Sweep, TokenAuth::Iam),
            (Program::Notify, TokenAuth::Iam),
        ]
    }

    #[test]
    fn each_function_needs_only_what_it_uses() {
        let used = |p, auth| Needs::for_auth(p, auth, true).used();
        use Part::*;
        assert_eq!(
            used(Program::Launch, TokenAuth::ApiKey),
            [ClientSecret, TokenKeys, LinkKey]
        );
        assert_eq!(
            used(Program::Exchange, TokenAuth::Iam),
            [ClientSecret, TokenKeys, LinkKey]
        );
        assert_eq!(
            used(Program::Exchange, TokenAuth::ApiKey),
            [ClientSecret, TokenKeys, LinkKey, ApiKey]
        );
        assert_eq!(used(Program::Sweep, TokenAuth::ApiKey), [LinkKey]);
        assert_eq!(used(Program::Notify, TokenAuth::ApiKey), [WebhookSecret]);
        // for_auth is the ACS deployment: the Entra credential comes in with Entra (`of`)
        assert_eq!(
            used(Program::Cli, TokenAuth::ApiKey),
            [ClientSecret, TokenKeys, LinkKey, ApiKey, WebhookSecret]
        );
    }

    #[test]
    fn with_entra_the_redeeming_functions_need_its_credential_and_acs_parts_go_when_acs_does() {
        let entra_only = Settings::from_source(&{
            let mut m = with(&[(
                "SPKEEPER_ENTRA_CLIENT_ID",
                "b3f1c0de-0000-4000-8000-000000000001",
            )]);
            m.remove("SPKEEPER_CLIENT_ID");
            m.insert("SPKEEPER_TOKEN_AUTH".into(), "iam".into());
            m
        })
        .unwrap();
        use Part::*;
        let used = |p| Needs::of(p, &entra_only).used();
        assert_eq!(used(Program::Launch), [TokenKeys, LinkKey, EntraCredential]);
        assert_eq!(
            used(Program::Exchange),
            [TokenKeys, LinkKey, EntraCredential]
        );
        assert_eq!(used(Program::Sweep), [TokenKeys, LinkKey, EntraCredential]);
        assert_eq!(used(Program::Notify), [WebhookSecret]);
        let mut off = entra_only.clone();
        if let Some(e) = off.entra.as_mut() {
            e.keepalive_days = 0;
        }
        assert_eq!(
            Needs::of(Program::Sweep, &off).used(),
            [LinkKey],
            "no keep-alive: the sweep opens no token"
        );
        // and it does not start without the credential, naming it
        let err = Secrets::for_needs(
            merged(&[TokenKeys, LinkKey]),
            Needs::of(Program::Launch, &entra_only),
        )
        .unwrap_err();
        assert_eq!(err.var, "SPKEEPER_ENTRA_CLIENT_SECRET");
    }

    #[test]
    fn each_function_starts_with_only_its_own_parts() {
        for (program, auth) in every_function() {
            let needs = Needs::for_auth(program, auth, true);
            let result = Secrets::for_needs(merged(&needs.used()), needs);
            assert!(result.is_ok(), "{program:?} {auth:?}: {:?}", result.err());
        }
    }

    #[test]
    fn a_function_without_a_part_it_needs_does_not_start_and_names_it() {
        for (program, auth) in every_function() {
            let needs = Needs::for_auth(program, auth, true);
            for missing in needs.used() {
                let given: Vec<Part> = needs.used().into_iter().filter(|p| *p != missing).collect();
                let err = Secrets::for_needs(merged(&given), needs).unwrap_err();
                assert_eq!(err.var, missing.var(), "{program:?} without {missing:?}");
                assert!(
                    err.to_string().contains(missing.fields()[0]),
                    "the error names the field: {err}"
                );
            }
        }
    }

    #[test]
    fn parts_a_function_does_not_use_are_dropped_and_cannot_be_used() {
        let everything = merged(&Part::ALL);
        let real = Secrets::for_needs(everything.clone(), Needs::only(&Part::ALL)).unwrap();
        let grant = crate::core::grant::GrantId::derive("realm", "user");
        let now = Utc::now();
        let place = crate::core::seal::Place::RefreshToken {
            grant: grant.as_str(),
            version: 1,
        };
        let sealed = real.key_ring.seal(b"refresh-token", &place).unwrap();
        let session = real.links.session_value(&grant, now);

        let notify =
            Secrets::for_needs(everything.clone(), Needs::only(&[Part::WebhookSecret])).unwrap();
        assert!(notify.client_secrets().is_empty(), "no client secret");
        assert!(notify.api_key.is_none());
        assert!(notify.key_ring.seal(b"x", &place).is_err(), "cannot seal");
        assert!(
            notify.key_ring.open(&sealed, &place).is_err(),
            "cannot open"
        );
        assert!(
            notify.links.verify_session(&session, now).is_err(),
            "cannot verify what the link key signed"
        );
        let forged = notify.links.session_value(&grant, now);
        assert!(
            real.links.verify_session(&forged, now).is_err(),
            "nothing it signs verifies"
        );
        assert!(notify.webhook_secret.is_some());

        let sweep = Secrets::for_needs(everything, Needs::only(&[Part::LinkKey])).unwrap();
        assert!(sweep.client_secrets().is_empty());
        assert!(sweep.webhook_secret.is_none() && sweep.api_key.is_none());
        assert!(sweep.key_ring.open(&sealed, &place).is_err());
        assert_eq!(sweep.links.verify_session(&session, now).unwrap(), grant);
    }

    #[test]
    fn link_key_secondary_verifies_what_the_previous_key_signed_and_a_bad_one_is_named() {
        let now = Utc::now();
        let grant = crate::core::grant::GrantId::derive("realm", "key");
        let before = part_doc(Part::LinkKey);
        let previous = before.link_key.clone().unwrap();
        let signed_before = Secrets::for_needs(before, Needs::only(&[Part::LinkKey]))
            .unwrap()
            .links
            .session_value(&grant, now);
        let rotated = SecretDocument {
            link_key: Some(SecretString::from(STANDARD.encode([7u8; 32]))),
            link_key_secondary: Some(previous),
            ..SecretDocument::default()
        };
        let links = Secrets::for_needs(rotated, Needs::only(&[Part::LinkKey]))
            .unwrap()
            .links;
        assert_eq!(links.verify_session(&signed_before, now).unwrap(), grant);
        let signed_after = links.session_value(&grant, now);
        assert_ne!(signed_after, signed_before, "the new key signs");
        for bad in ["not base64!", "c2hvcnQ="] {
            let doc = SecretDocument {
                link_key_secondary: Some(SecretString::from(bad)),
                ..part_doc(Part::LinkKey)
            };
            let Err(err) = Secrets::for_needs(doc, Needs::only(&[Part::LinkKey])) else {
                panic!("{bad}: refused");
            };
            assert_eq!(err.var, "link_key_secondary", "{err}");
        }
    }

    #[test]
    fn a_key_file_with_a_previous_link_key_verifies_what_it_signed() {
        let json = serde_json::to_value(KeyFile::generate().unwrap()).unwrap();
        let read = |v: &serde_json::Value| -> Secrets {
            let file: KeyFile = serde_json::from_value(v.clone()).unwrap();
            Secrets::for_needs(file.into_document(), Needs::only(&[Part::LinkKey])).unwrap()
        };
        let grant = crate::core::grant::GrantId::derive("r", "k");
        let signed = read(&json).links.session_value(&grant, Utc::now());
        assert!(
            json.get("link_key_secondary").is_none(),
            "written as before"
        );
        // The operator's edit of keys.json: a new link_key, the old one as secondary.
        let mut rotated = json.clone();
        rotated["link_key_secondary"] = json["link_key"].clone();
        rotated["link_key"] = serde_json::Value::String(STANDARD.encode([9u8; 32]));
        assert_eq!(
            read(&rotated).links.verify_session(&signed, Utc::now()),
            Ok(grant)
        );
    }

    #[test]
    fn documents_merge_and_a_field_in_two_of_them_is_refused() {
        let d = merged(&Part::ALL);
        assert_eq!(
            d.fields_present(),
            [
                "client_secret",
                "token_keys",
                "active_token_key",
                "link_key",
                "api_key",
                "webhook_secret",
                "entra_client_secret"
            ]
        );
        let err = part_doc(Part::ClientSecret)
            .merge(part_doc(Part::LinkKey))
            .unwrap()
            .merge(part_doc(Part::ClientSecret))
            .unwrap_err();
        assert_eq!(err.var, "SPKEEPER_SECRETS_ARN");
        assert!(err.problem.contains("client_secret"), "{err}");
        assert!(!err.to_string().contains(CLIENT_SECRET), "{err}");
        // Two documents with different key rings: which one counts would be a guess.
        assert!(
            part_doc(Part::TokenKeys)
                .merge(part_doc(Part::TokenKeys))
                .unwrap_err()
                .problem
                .contains("token_keys")
        );
        // Empty values are absent, not duplicates.
        let empty = SecretDocument {
            client_secret: Some("  ".into()),
            ..SecretDocument::default()
        };
        assert!(empty.merge(part_doc(Part::ClientSecret)).is_ok());
    }

    #[test]
    fn a_document_and_the_secrets_print_no_values() {
        let d = merged(&Part::ALL);
        let printed = format!("{d:?}");
        let s = format!(
            "{:?}",
            Secrets::for_needs(d, Needs::only(&Part::ALL)).unwrap()
        );
        for out in [printed, s] {
            for secret in [CLIENT_SECRET, API_KEY, WEBHOOK_SECRET] {
                assert!(!out.contains(secret), "{out}");
            }
        }
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
