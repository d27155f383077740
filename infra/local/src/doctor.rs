//! `spkeeper doctor`: checks a deployment as an operator would before trusting it. The
//! configuration and the secrets' formats, the client secrets' expiry, the clock against the
//! token services, the token services themselves (ACS, Entra ID), SharePoint sites (realm
//! discovery), the webhook (a signed `webhook.test` notice) and the store, read without
//! changing anything. One line per check: `ok`, `warn`, `fail` or `skip`, its name and a short
//! detail that never holds a secret, a token or a key. Exit status: 0 when nothing failed, 1
//! when a check failed, 2 when the configuration itself is unusable (as every command).
//!
//! Every check that goes out has [`CHECK_TIMEOUT`]; they run side by side, so the whole command
//! takes a few seconds at most. Nothing that comes back (headers, bodies, error texts) is
//! trusted: it is parsed without panicking and shown shortened.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::future::join_all;
use reqwest::header::{DATE, HeaderMap};
use secrecy::ExposeSecret;
use serde::Serialize;
use serde_json::Value;

use spkeeper::aws::Aws;
use spkeeper::clients::{
    DeliveryError, SharePointError, describe, discover_realm, http_client, read_capped,
};
use spkeeper::config::{
    EntraCredential, EntraSettings, KeyFile, Needs, Part, Program, SecretDocument, Secrets,
    Settings, StoreChoice, TokenAuth,
};
use spkeeper::core::context_token::is_guid;
use spkeeper::core::grant::{GrantId, days_left, plus_days};
use spkeeper::core::hosts::{HostError, authority_of};
use spkeeper::core::notice::{Notice, rfc3339};
use spkeeper::core::seal::Place;
use spkeeper::service::sweep::CLIENT_SECRET_WARNING_DAYS;
use spkeeper::store::sqlite::{DB_FILE, SealedSample, SqliteStore};

use crate::Failure;
use crate::keys::{self, KEY_FILE};
use crate::setup::{self, Configured, Mode};

/// The longest any one check waits for an answer.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// A clock further than this from the token service's is worth a warning...
const SKEW_WARN_SECONDS: i64 = 60;
/// ...and further than this, a failure: context tokens are checked with 5 minutes' leeway.
const SKEW_FAIL_SECONDS: i64 = 300;
/// Text from outside (headers, bodies, error messages) is shown at most this long.
const OUTSIDE_TEXT: usize = 120;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
    Skip,
}

impl Status {
    fn word(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
            Status::Skip => "skip",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub check: &'static str,
    pub status: Status,
    pub detail: String,
}

fn check(name: &'static str, status: Status, detail: impl Into<String>) -> Check {
    Check {
        check: name,
        status,
        detail: detail.into(),
    }
}

/// `spkeeper doctor [--dev] [--json] [--site URL]...`.
pub async fn run(dev: bool, as_json: bool, sites: &[String]) -> Result<(), Failure> {
    let mode = if dev { Mode::Dev } else { Mode::Plain };
    let configured = match setup::configure(&mode) {
        Ok(c) => c,
        Err(failure) => {
            let msg = match &failure {
                Failure::Usage(m) | Failure::Runtime(m) => m.clone(),
            };
            print(&[check("config", Status::Fail, msg)], as_json);
            return Err(failure);
        }
    };
    let mut checks = vec![check(
        "config",
        Status::Ok,
        describe_config(&configured, dev),
    )];

    // The secrets, as every other command reads them, and what they can do.
    let loaded = load_secrets(&configured).await;
    checks.extend(loaded.checks);
    let secrets = loaded.secrets;
    if let Some((s, needs)) = &secrets {
        checks.extend(secret_checks(&configured.settings, s, *needs));
        checks.push(stored_token_check(&configured.settings, s, *needs).await);
    }
    let now = Utc::now();
    checks.extend(expiry_checks(&configured.settings, now));

    let http = http_client()
        .map_err(|e| Failure::Runtime(format!("cannot build the HTTP client: {e}")))?;
    let settings = &configured.settings;
    let ((token_checks, clock), site_checks, webhook, store) = tokio::join!(
        token_services(&http, settings),
        site_checks(&http, settings, sites),
        webhook_check(&http, settings, secrets.as_ref().map(|(s, _)| s)),
        store_checks(settings),
    );
    checks.push(clock);
    checks.extend(token_checks);
    checks.extend(site_checks);
    checks.push(webhook);
    checks.extend(store);

    print(&checks, as_json);
    if let Some(e) = loaded.config_error {
        return Err(Failure::Usage(e));
    }
    let failed = checks.iter().filter(|c| c.status == Status::Fail).count();
    if failed > 0 {
        return Err(Failure::Runtime(format!(
            "{failed} of {} checks failed",
            checks.len()
        )));
    }
    Ok(())
}

/// The report on stdout. A reader that goes away (`spkeeper doctor | head -1`) ends it
/// quietly: the exit status still says how the checks went.
fn print(checks: &[Check], as_json: bool) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if as_json {
        let json = serde_json::to_string(checks).unwrap_or_else(|_| "[]".into());
        let _ = writeln!(out, "{json}");
        return;
    }
    for c in checks {
        let line = format!("{:<4}  {:<20}  {}", c.status.word(), c.check, c.detail);
        if writeln!(out, "{line}").is_err() {
            return;
        }
    }
}

/// What the configuration says, in a line: the kinds served, the public URL, the store.
fn describe_config(c: &Configured, dev: bool) -> String {
    let s = &c.settings;
    let mut parts = Vec::new();
    if let Some(id) = &s.client_id {
        parts.push(format!("ACS add-in {id}"));
    }
    if let Some(e) = &s.entra {
        parts.push(format!("Entra app {} (tenant {})", e.client_id, e.tenant));
    }
    parts.push(format!("public URL {}", s.public_base()));
    parts.push(match &s.store {
        StoreChoice::Sqlite { data_dir } => format!("SQLite in {}", data_dir.display()),
        StoreChoice::DynamoDb { table, .. } => format!("DynamoDB table {table}"),
    });
    if dev {
        parts.push(format!(
            "dev configuration from {}",
            c.data_dir.join(crate::dev::DEV_FILE).display()
        ));
    }
    parts.join("; ")
}

struct LoadedSecrets {
    checks: Vec<Check>,
    /// The secrets and the parts that were checked (without a key file yet, not the keys).
    secrets: Option<(Secrets, Needs)>,
    /// A configuration error (exit 2), already reported as a `fail` line.
    config_error: Option<String>,
}

/// Do the keys open what the store holds? The key ring opening what it just sealed says
/// little; one stored refresh token, opened for its own place, says the keys are the ones the
/// store was sealed with (the right key file, a restored table whose key is still in the ring).
async fn stored_token_check(settings: &Settings, s: &Secrets, needs: Needs) -> Check {
    const NAME: &str = "secrets.stored";
    if needs.get(Part::TokenKeys) == spkeeper::config::Need::No {
        return check(NAME, Status::Skip, "no key file yet (see key_file)");
    }
    let sample = match tokio::time::timeout(CHECK_TIMEOUT, stored_sample(settings)).await {
        Err(_) => return check(NAME, Status::Warn, "the store did not answer within 5 s"),
        Ok(Err(e)) => {
            return check(
                NAME,
                Status::Warn,
                format!("no stored refresh token could be read: {e}"),
            );
        }
        Ok(Ok(None)) => return check(NAME, Status::Skip, "no refresh token stored yet"),
        Ok(Ok(Some(sample))) => sample,
    };
    let place = Place::RefreshToken {
        grant: &sample.grant,
        version: sample.version,
    };
    match s.key_ring.open(&sample.sealed, &place) {
        Ok(_) => check(
            NAME,
            Status::Ok,
            format!(
                "the keys open grant {}'s stored refresh token",
                outside(&sample.grant)
            ),
        ),
        Err(e) => check(
            NAME,
            Status::Fail,
            format!(
                "grant {}'s stored refresh token does not open with these keys ({e}): they are \
                 not the keys the store was sealed with (another key file? a key removed from \
                 token_keys?)",
                outside(&sample.grant)
            ),
        ),
    }
}

/// One stored refresh token, sealed: on SQLite the most recently written, on DynamoDB the
/// first due grant's (a Query of the due index and a read of the grant; never a Scan).
async fn stored_sample(settings: &Settings) -> Result<Option<SealedSample>, String> {
    match &settings.store {
        StoreChoice::Sqlite { data_dir } => Ok(SqliteStore::inspect_dir(data_dir)
            .await
            .map_err(|e| e.to_string())?
            .and_then(|f| f.sample)),
        StoreChoice::DynamoDb { .. } => {
            use spkeeper::ports::GrantStore;
            let sdk = spkeeper::aws::sdk_config().await;
            let aws = Aws::from_settings(&sdk, settings).map_err(|e| e.to_string())?;
            let far = Utc::now() + chrono::Duration::days(3650);
            let mut cursor = None;
            // The first page holds the first due grant of every shard, if there is one.
            for _ in 0..64 {
                let page = aws
                    .dynamo
                    .due(far, cursor.as_ref(), 1)
                    .await
                    .map_err(|e| e.to_string())?;
                if let Some(g) = page.grants.first() {
                    let stored = aws.dynamo.load(&g.id).await.map_err(|e| e.to_string())?;
                    return Ok(stored.and_then(|st| {
                        st.sealed_refresh_token.map(|sealed| SealedSample {
                            grant: st.record.id.as_str().to_string(),
                            version: st.record.rt_version,
                            sealed,
                        })
                    }));
                }
                match page.next {
                    Some(next) => cursor = Some(next),
                    None => return Ok(None),
                }
            }
            Ok(None)
        }
    }
}

/// The key file is not there. Before the first run that is expected; beside a database that
/// holds grants it is the loss of every stored token: a new key file (which any command would
/// make) could never open them, so the only way on is the key file's backup.
async fn missing_key_file(path: &std::path::Path, c: &Configured) -> Check {
    let holding = match &c.settings.store {
        StoreChoice::Sqlite { data_dir } => {
            tokio::time::timeout(CHECK_TIMEOUT, SqliteStore::inspect_dir(data_dir))
                .await
                .ok()
                .and_then(Result::ok)
                .flatten()
        }
        StoreChoice::DynamoDb { .. } => None,
    };
    match holding {
        Some(f) if f.grants > 0 => check(
            "key_file",
            Status::Fail,
            format!(
                "{} is missing, and the database holds {} grants sealed with its keys: restore \
                 it from the backup taken with the database, and run no spkeeper command (which \
                 would make new keys) until then",
                path.display(),
                f.grants
            ),
        ),
        _ => check(
            "key_file",
            Status::Warn,
            format!(
                "{} does not exist yet: the first spkeeper command creates it; keep it with the \
                 database (it opens the stored tokens)",
                path.display()
            ),
        ),
    }
}

/// The secret document, as every command reads it (Secrets Manager, or the key file and the
/// environment), then [`Secrets::for_needs`]: the checks of formats are the configuration's own.
async fn load_secrets(c: &Configured) -> LoadedSecrets {
    let mut checks = Vec::new();
    let mut needs = Needs::of(Program::Cli, &c.settings);
    let doc: SecretDocument =
        match tokio::time::timeout(CHECK_TIMEOUT, setup::secrets_manager_document()).await {
            Err(_) => {
                // As a refused or denied read (and as every other command): exit 2.
                let problem = "SPKEEPER_SECRETS_ARN: Secrets Manager did not answer within 5 s";
                checks.push(check("secrets", Status::Fail, problem));
                return LoadedSecrets {
                    checks,
                    secrets: None,
                    config_error: Some(problem.to_string()),
                };
            }
            Ok(Some(Err(e))) => {
                checks.push(check("secrets", Status::Fail, e.to_string()));
                return LoadedSecrets {
                    checks,
                    secrets: None,
                    config_error: Some(e.to_string()),
                };
            }
            Ok(Some(Ok(doc))) => {
                checks.push(check(
                    "key_file",
                    Status::Skip,
                    "the keys come from Secrets Manager (SPKEEPER_SECRETS_ARN)",
                ));
                doc
            }
            Ok(None) => {
                let path = c.key_dir().join(KEY_FILE);
                let file = match keys::existing::<KeyFile>(&path) {
                    Ok(Some(file)) => {
                        let mode = std::fs::metadata(&path)
                            .map(|m| m.permissions().mode() & 0o777)
                            .unwrap_or(0);
                        checks.push(check(
                            "key_file",
                            Status::Ok,
                            format!("{} (mode {mode:04o})", path.display()),
                        ));
                        Some(file)
                    }
                    Ok(None) => {
                        checks.push(missing_key_file(&path, c).await);
                        None
                    }
                    Err(e) => {
                        checks.push(check("key_file", Status::Fail, e));
                        None
                    }
                };
                if file.is_none() {
                    // No keys to check: the rest of the secrets still are.
                    needs = needs.without(Part::TokenKeys).without(Part::LinkKey);
                }
                file.map(KeyFile::into_document)
                    .unwrap_or_default()
                    .with_env_fallback(&c.source())
            }
        };
    match Secrets::for_needs(doc, needs) {
        Ok(s) => LoadedSecrets {
            checks,
            secrets: Some((s, needs)),
            config_error: None,
        },
        Err(e) => {
            checks.push(check("secrets", Status::Fail, e.to_string()));
            LoadedSecrets {
                checks,
                secrets: None,
                config_error: Some(e.to_string()),
            }
        }
    }
}

/// What each part of the secrets is and does: present, and the keys used once each way.
fn secret_checks(settings: &Settings, s: &Secrets, needs: Needs) -> Vec<Check> {
    use spkeeper::config::Need;
    let mut out = Vec::new();
    let rotation = |secondary: bool| {
        if secondary {
            ", and a secondary one (a rotation)"
        } else {
            ""
        }
    };

    out.push(match (&settings.client_id, &s.client_secret) {
        (None, _) => check(
            "secrets.client",
            Status::Skip,
            "no ACS add-in configured (SPKEEPER_CLIENT_ID)",
        ),
        (Some(_), Some(_)) => check(
            "secrets.client",
            Status::Ok,
            format!(
                "client secret present{}",
                rotation(s.client_secret_secondary.is_some())
            ),
        ),
        (Some(_), None) => check(
            "secrets.client",
            Status::Fail,
            "SPKEEPER_CLIENT_SECRET: is required",
        ),
    });

    out.push(match (settings.token_auth, &s.api_key) {
        (TokenAuth::Iam, None) => check(
            "secrets.api_key",
            Status::Skip,
            "SPKEEPER_TOKEN_AUTH=iam: API Gateway's IAM authorization, no API key",
        ),
        (_, Some(_)) => check(
            "secrets.api_key",
            Status::Ok,
            format!("API key present{}", rotation(s.api_key_secondary.is_some())),
        ),
        (TokenAuth::ApiKey, None) => check(
            "secrets.api_key",
            Status::Fail,
            "SPKEEPER_API_KEY: is required",
        ),
    });

    out.push(if needs.get(Part::TokenKeys) == Need::No {
        check(
            "secrets.token_keys",
            Status::Skip,
            "no key file yet (see key_file)",
        )
    } else {
        let place = Place::RefreshToken {
            grant: "spkeeper-doctor",
            version: 0,
        };
        let probe = b"spkeeper doctor";
        let round_trip = s
            .key_ring
            .seal(probe, &place)
            .and_then(|sealed| s.key_ring.open(&sealed, &place));
        match round_trip {
            Ok(v) if v.expose_secret().as_bytes() == probe => check(
                "secrets.token_keys",
                Status::Ok,
                format!(
                    "active key {:?} seals a value and opens it again",
                    s.key_ring.active_key_id()
                ),
            ),
            Ok(_) => check(
                "secrets.token_keys",
                Status::Fail,
                "the key ring opened a sealed value to something else",
            ),
            Err(e) => check(
                "secrets.token_keys",
                Status::Fail,
                format!("token_keys: {e}"),
            ),
        }
    });

    out.push(if needs.get(Part::LinkKey) == Need::No {
        check(
            "secrets.link_key",
            Status::Skip,
            "no key file yet (see key_file)",
        )
    } else {
        let grant = GrantId::derive("spkeeper-doctor", "spkeeper-doctor");
        let now = Utc::now();
        let signed = s.links.session_value(&grant, now);
        match s.links.verify_session(&signed, now) {
            Ok(g) if g == grant => check(
                "secrets.link_key",
                Status::Ok,
                "signs a value and verifies it again",
            ),
            _ => check(
                "secrets.link_key",
                Status::Fail,
                "link_key: what it signs does not verify",
            ),
        }
    });

    out.push(match &s.webhook_secret {
        None => check(
            "secrets.webhook",
            Status::Skip,
            "no webhook secret (and no SPKEEPER_WEBHOOK_URL)",
        ),
        Some(_) => check(
            "secrets.webhook",
            Status::Ok,
            format!(
                "whsec_ secret present{}",
                rotation(s.webhook_secret_secondary.is_some())
            ),
        ),
    });

    out.push(match (&settings.entra, &s.entra) {
        (None, _) => check(
            "secrets.entra",
            Status::Skip,
            "no Entra app configured (SPKEEPER_ENTRA_CLIENT_ID)",
        ),
        (Some(_), Some(EntraCredential::Secret(_))) => {
            check("secrets.entra", Status::Ok, "Entra client secret present")
        }
        (Some(_), Some(EntraCredential::Certificate { x5t_s256, .. })) => check(
            "secrets.entra",
            Status::Ok,
            format!("certificate and private key parse (x5t#S256 {x5t_s256})"),
        ),
        (Some(_), None) => check(
            "secrets.entra",
            Status::Fail,
            "SPKEEPER_ENTRA_CLIENT_SECRET: is required (or SPKEEPER_ENTRA_CERTIFICATE and SPKEEPER_ENTRA_PRIVATE_KEY)",
        ),
    });
    out
}

/// The ACS and Entra secrets' configured expiry.
fn expiry_checks(settings: &Settings, now: DateTime<Utc>) -> Vec<Check> {
    let mut out = Vec::new();
    if settings.client_id.is_some() {
        out.push(match settings.client_secret_expires_at {
            Some(at) => {
                let (status, detail) = expiry(at, now);
                check("expiry.client_secret", status, detail)
            }
            None => check(
                "expiry.client_secret",
                Status::Skip,
                "SPKEEPER_CLIENT_SECRET_EXPIRES_AT is not set: nothing warns before it expires",
            ),
        });
    }
    if let Some(e) = &settings.entra {
        out.push(match e.secret_expires_at {
            Some(at) => {
                let (status, detail) = expiry(at, now);
                check("expiry.entra_secret", status, detail)
            }
            None => check(
                "expiry.entra_secret",
                Status::Skip,
                "SPKEEPER_ENTRA_SECRET_EXPIRES_AT is not set: nothing warns before it expires",
            ),
        });
    }
    out
}

/// A secret expiring at `at`, seen at `now`: `fail` once past, `warn` within the 30 days the
/// sweep warns operators in, else `ok`.
pub fn expiry(at: DateTime<Utc>, now: DateTime<Utc>) -> (Status, String) {
    let when = rfc3339(at);
    if at <= now {
        let ago = days_left(now, at);
        (
            Status::Fail,
            format!("expired {when} ({ago} days ago): ACS/Entra refuse it; rotate it"),
        )
    } else if now >= plus_days(at, -CLIENT_SECRET_WARNING_DAYS) {
        (
            Status::Warn,
            format!("expires {when}, in {} days: rotate it", days_left(at, now)),
        )
    } else {
        (
            Status::Ok,
            format!("expires {when}, in {} days", days_left(at, now)),
        )
    }
}

/// This machine's clock (`local`) against another's (`remote`, from an HTTP `Date` header,
/// whole seconds): context tokens carry `nbf`/`exp` and ACS checks its tokens with little
/// leeway, so a minute off is worth a warning and five minutes (the leeway spkeeper gives
/// context tokens) a failure.
pub fn clock_skew(local: DateTime<Utc>, remote: DateTime<Utc>) -> (Status, String) {
    let skew = (local - remote).num_seconds();
    let size = skew.unsigned_abs();
    let direction = if skew >= 0 { "ahead of" } else { "behind" };
    let status = if size > SKEW_FAIL_SECONDS.unsigned_abs() {
        Status::Fail
    } else if size > SKEW_WARN_SECONDS.unsigned_abs() {
        Status::Warn
    } else {
        Status::Ok
    };
    let detail = match status {
        Status::Ok => format!("this machine's clock is within {size} s of"),
        _ => format!(
            "this machine's clock is {size} s {direction} (tokens are checked against it: sync it with NTP)"
        ),
    };
    (status, detail)
}

/// The `Date` header of an answer, if it is a valid HTTP date.
pub fn http_date(headers: &HeaderMap) -> Option<DateTime<Utc>> {
    let v = headers.get(DATE)?.to_str().ok()?;
    DateTime::parse_from_rfc2822(v.trim())
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Text from outside, safe to show: control characters replaced, at most [`OUTSIDE_TEXT`]
/// characters.
fn outside(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(OUTSIDE_TEXT)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().count() > OUTSIDE_TEXT {
        out.push('…');
    }
    out
}

/// What went wrong with a request: the kind, and the innermost cause (DNS, TLS, refused),
/// which names neither the URL nor anything sent.
fn transport(e: &reqwest::Error) -> String {
    let mut cause: Option<String> = None;
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        cause = Some(s.to_string());
        source = s.source();
    }
    match cause {
        Some(c) => format!("{} ({})", describe(e), outside(&c)),
        None => describe(e),
    }
}

/// An answer with the times around it: the local clock at the midpoint of the request.
struct Answer {
    status: u16,
    headers: HeaderMap,
    local: DateTime<Utc>,
    resp: reqwest::Response,
}

async fn get(http: &reqwest::Client, url: &str) -> Result<Answer, String> {
    let sent = Utc::now();
    match tokio::time::timeout(CHECK_TIMEOUT, http.get(url).send()).await {
        Err(_) => Err("no answer within 5 s".into()),
        Ok(Err(e)) => Err(transport(&e)),
        Ok(Ok(resp)) => {
            let received = Utc::now();
            Ok(Answer {
                status: resp.status().as_u16(),
                headers: resp.headers().clone(),
                local: sent + (received - sent) / 2,
                resp,
            })
        }
    }
}

/// Where a URL points, without its path or query (which can carry a token).
fn origin(url: &url::Url) -> String {
    format!("{}://{}", url.scheme(), authority_of(url))
}

/// ACS (each `SPKEEPER_STS_HOSTS` host answers at all) and Entra ID (its metadata names the
/// token endpoint spkeeper posts to), and the clock against the first of them to answer.
async fn token_services(http: &reqwest::Client, settings: &Settings) -> (Vec<Check>, Check) {
    let acs =
        async {
            if settings.client_id.is_none() {
                return vec![(
                    check(
                        "acs",
                        Status::Skip,
                        "no ACS add-in configured (SPKEEPER_CLIENT_ID)",
                    ),
                    None,
                )];
            }
            // ACS's metadata document; any HTTP answer shows the host is there and speaks TLS.
            let results = join_all(settings.sts_hosts.origins().into_iter().map(
                |host| async move {
                    match get(http, &format!("{host}/metadata/json/1")).await {
                        Ok(a) => {
                            let date = http_date(&a.headers).map(|d| (host.clone(), a.local, d));
                            let c = check(
                                "acs",
                                Status::Ok,
                                format!("{host} answered (HTTP {})", a.status),
                            );
                            (c, date)
                        }
                        Err(e) => (check("acs", Status::Fail, format!("{host}: {e}")), None),
                    }
                },
            ))
            .await;
            // A deployment lives in one cloud: the default list names the global ACS and China's,
            // and only one of them need answer. Any that does makes the others a warning.
            let mut answered = results;
            if answered.iter().any(|(c, _)| c.status == Status::Ok) {
                for (c, _) in answered
                    .iter_mut()
                    .filter(|(c, _)| c.status == Status::Fail)
                {
                    c.status = Status::Warn;
                    c.detail = format!(
                        "{} (another token service answered; a launch whose token names this one \
                     would fail)",
                        c.detail
                    );
                }
            }
            answered
        };
    let entra = async {
        match &settings.entra {
            Some(e) => entra_metadata(http, e).await,
            None => (
                check(
                    "entra",
                    Status::Skip,
                    "no Entra app configured (SPKEEPER_ENTRA_CLIENT_ID)",
                ),
                None,
            ),
        }
    };
    let (acs, entra) = tokio::join!(acs, entra);
    let mut checks = Vec::new();
    let mut dates = Vec::new();
    for (c, date) in acs.into_iter().chain([entra]) {
        checks.push(c);
        dates.extend(date);
    }
    let clock = match dates.first() {
        Some((host, local, remote)) => {
            let (status, detail) = clock_skew(*local, *remote);
            check("clock", status, format!("{detail} {host}"))
        }
        None => check(
            "clock",
            Status::Skip,
            "no token service answered with a Date header",
        ),
    };
    (checks, clock)
}

async fn entra_metadata(
    http: &reqwest::Client,
    e: &EntraSettings,
) -> (Check, Option<(String, DateTime<Utc>, DateTime<Utc>)>) {
    let url = format!(
        "{}/{}/v2.0/.well-known/openid-configuration",
        e.authority, e.tenant
    );
    let answer = match get(http, &url).await {
        Ok(a) => a,
        Err(problem) => {
            return (
                check("entra", Status::Fail, format!("{}: {problem}", e.authority)),
                None,
            );
        }
    };
    let date = http_date(&answer.headers).map(|d| (e.authority.clone(), answer.local, d));
    if answer.status != 200 {
        return (
            check(
                "entra",
                Status::Fail,
                format!("{url} answered HTTP {}, not 200", answer.status),
            ),
            date,
        );
    }
    let body = match tokio::time::timeout(CHECK_TIMEOUT, read_capped(answer.resp)).await {
        Ok(Ok(b)) => b,
        Ok(Err(problem)) => {
            return (
                check("entra", Status::Fail, format!("{url}: {problem}")),
                date,
            );
        }
        Err(_) => {
            return (
                check(
                    "entra",
                    Status::Fail,
                    format!("{url}: the answer took over 5 s"),
                ),
                date,
            );
        }
    };
    let named = serde_json::from_slice::<Value>(&body).ok().and_then(|v| {
        v.get("token_endpoint")
            .and_then(Value::as_str)
            .map(String::from)
    });
    let ours = e.token_endpoint();
    let c = match named {
        None => check(
            "entra",
            Status::Fail,
            format!("{url} is not an OpenID metadata document (no token_endpoint)"),
        ),
        Some(t) if t == ours => check(
            "entra",
            Status::Ok,
            format!(
                "{} (tenant {}): its metadata names {ours}",
                e.authority, e.tenant
            ),
        ),
        Some(t) => check(
            "entra",
            Status::Fail,
            format!(
                "its metadata names the token endpoint {}, spkeeper posts to {ours}: check SPKEEPER_ENTRA_AUTHORITY and SPKEEPER_ENTRA_TENANT",
                outside(&t)
            ),
        ),
    };
    (c, date)
}

/// Each `--site`: an allowed host, answering realm discovery with a realm.
async fn site_checks(http: &reqwest::Client, settings: &Settings, sites: &[String]) -> Vec<Check> {
    if sites.is_empty() {
        return vec![check(
            "site",
            Status::Skip,
            "give --site https://… to check a site",
        )];
    }
    join_all(sites.iter().map(|raw| site_check(http, settings, raw))).await
}

async fn site_check(http: &reqwest::Client, settings: &Settings, raw: &str) -> Check {
    let shown = outside(raw);
    let site = match settings.allowed_sp_hosts.check_site_url(raw) {
        Ok(site) => site,
        Err(e) => {
            let why = match e {
                HostError::NotAllowed => {
                    "its host is not in SPKEEPER_ALLOWED_SP_HOSTS: spkeeper refuses launches and sign-ins from it"
                }
                HostError::Scheme => {
                    "https is required (http only for a loopback host listed in SPKEEPER_ALLOWED_SP_HOSTS)"
                }
                HostError::UserInfo => "a site URL carries no user info",
                HostError::NotAUrl => "not an absolute https URL",
            };
            return check("site", Status::Fail, format!("{shown}: {why}"));
        }
    };
    let found = tokio::time::timeout(CHECK_TIMEOUT, discover_realm(http, &site)).await;
    match found {
        Err(_) => check(
            "site",
            Status::Fail,
            format!("{site}: realm discovery had no answer within 5 s"),
        ),
        Ok(Ok(realm)) => match settings.entra.as_ref().map(|e| e.tenant.as_str()) {
            Some(tenant) if is_guid(tenant) && tenant != realm => check(
                "site",
                Status::Warn,
                format!(
                    "{site}: realm {realm}, not SPKEEPER_ENTRA_TENANT {tenant}: its Entra sign-ins would be refused (host_realm_mismatch)"
                ),
            ),
            _ => check("site", Status::Ok, format!("{site}: realm {realm}")),
        },
        Ok(Err(SharePointError::Status(status))) => check(
            "site",
            Status::Fail,
            format!(
                "{site}: realm discovery (GET /_vti_bin/client.svc) answered HTTP {status}, not 401 with a realm: is it a SharePoint site?"
            ),
        ),
        Ok(Err(SharePointError::Shape)) => check(
            "site",
            Status::Fail,
            format!(
                "{site}: realm discovery answered 401 without a Bearer realm in WWW-Authenticate"
            ),
        ),
        Ok(Err(e)) => check("site", Status::Fail, format!("{site}: {e}")),
    }
}

/// A signed `webhook.test` notice to `SPKEEPER_WEBHOOK_URL`; a 2xx answer is delivery.
async fn webhook_check(
    http: &reqwest::Client,
    settings: &Settings,
    secrets: Option<&Secrets>,
) -> Check {
    let Some(url) = &settings.webhook_url else {
        return check(
            "webhook",
            Status::Skip,
            "no SPKEEPER_WEBHOOK_URL: notices wait in the queue (spkeeper notices)",
        );
    };
    let Some(secrets) = secrets else {
        return check(
            "webhook",
            Status::Skip,
            "the secrets did not load: nothing to sign a test with",
        );
    };
    let to = origin(url);
    let sender = match spkeeper::aws::webhook_sender(settings, secrets, http.clone()) {
        Ok(s) => s,
        Err(e) => return check("webhook", Status::Fail, e.to_string()),
    };
    let mut nonce = [0u8; 16];
    if getrandom::fill(&mut nonce).is_err() {
        return check(
            "webhook",
            Status::Fail,
            "the system random generator failed",
        );
    }
    let now = Utc::now();
    let notice = Notice::webhook_test(&hex::encode(nonce), now);
    let sent = tokio::time::timeout(
        CHECK_TIMEOUT,
        sender.send(&notice.id, &notice.to_json(), now.timestamp()),
    )
    .await;
    match sent {
        Ok(Ok(())) => check(
            "webhook",
            Status::Ok,
            format!("{to} accepted a signed webhook.test notice ({})", notice.id),
        ),
        Ok(Err(DeliveryError::Status(status @ (401 | 403)))) => check(
            "webhook",
            Status::Fail,
            format!(
                "{to} refused a signed webhook.test notice with HTTP {status}: does the receiver verify with the same whsec_ secret (SPKEEPER_WEBHOOK_SECRET)?"
            ),
        ),
        Ok(Err(DeliveryError::Status(status))) => check(
            "webhook",
            Status::Fail,
            format!("{to} answered a signed webhook.test notice with HTTP {status}"),
        ),
        Ok(Err(e)) => check("webhook", Status::Fail, format!("{to}: {e}")),
        Err(_) => check(
            "webhook",
            Status::Fail,
            format!("{to}: no answer within 5 s"),
        ),
    }
}

/// The store, read without changing anything: the SQLite file, or the DynamoDB table (its TTL
/// and point-in-time recovery) and the SQS queue.
async fn store_checks(settings: &Settings) -> Vec<Check> {
    match &settings.store {
        StoreChoice::Sqlite { data_dir } => {
            let path = data_dir.join(DB_FILE);
            let found =
                tokio::time::timeout(CHECK_TIMEOUT, SqliteStore::inspect_dir(data_dir)).await;
            vec![match found {
                Err(_) => check(
                    "store",
                    Status::Fail,
                    format!("{}: no answer within 5 s (locked?)", path.display()),
                ),
                Ok(Err(e)) => check("store", Status::Fail, format!("{}: {e}", path.display())),
                Ok(Ok(None)) => check(
                    "store",
                    Status::Warn,
                    format!(
                        "{} does not exist yet: the first spkeeper command creates it",
                        path.display()
                    ),
                ),
                Ok(Ok(Some(f))) if f.dead_letters > 0 => check(
                    "store",
                    Status::Warn,
                    format!(
                        "{}: {} grants, {} notices waiting, {} dead letters the webhook never accepted (spkeeper notices)",
                        path.display(),
                        f.grants,
                        f.waiting,
                        f.dead_letters
                    ),
                ),
                Ok(Ok(Some(f))) => check(
                    "store",
                    Status::Ok,
                    format!(
                        "{}: {} grants, {} notices waiting",
                        path.display(),
                        f.grants,
                        f.waiting
                    ),
                ),
            }]
        }
        StoreChoice::DynamoDb { .. } => {
            let Ok(sdk) = tokio::time::timeout(CHECK_TIMEOUT, spkeeper::aws::sdk_config()).await
            else {
                return vec![check(
                    "store",
                    Status::Fail,
                    "the AWS configuration (region, credentials) did not load within 5 s",
                )];
            };
            match Aws::from_settings(&sdk, settings) {
                Ok(aws) => aws_checks(&aws).await,
                Err(e) => vec![check("store", Status::Fail, e.to_string())],
            }
        }
    }
}

/// What an AWS call's failure was: the service's error code and message, or why it never got
/// an answer.
fn aws_problem<E, R>(e: &aws_sdk_dynamodb::error::SdkError<E, R>) -> String
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    use aws_sdk_dynamodb::error::SdkError;
    match e {
        SdkError::ServiceError(s) => format!(
            "{}: {}",
            s.err().code().unwrap_or("error"),
            outside(s.err().message().unwrap_or(""))
        ),
        SdkError::TimeoutError(_) => "timed out".into(),
        _ => {
            let mut cause = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                cause = s.to_string();
                source = s.source();
            }
            format!("no answer ({})", outside(&cause))
        }
    }
}

async fn aws_checks(aws: &Aws) -> Vec<Check> {
    use aws_sdk_dynamodb::types::{PointInTimeRecoveryStatus, TableStatus, TimeToLiveStatus};
    let table = aws.dynamo.table().to_string();
    let client = aws.dynamo.client();
    let timeout = |what: &str| format!("{what}: no answer within 5 s");
    let mut out = Vec::new();
    let queue = aws.queue.url().to_string();

    // The four questions at once: the whole store check takes one timeout at most.
    let (described, ttl, backups, attrs) = tokio::join!(
        tokio::time::timeout(
            CHECK_TIMEOUT,
            client.describe_table().table_name(&table).send(),
        ),
        tokio::time::timeout(
            CHECK_TIMEOUT,
            client.describe_time_to_live().table_name(&table).send(),
        ),
        tokio::time::timeout(
            CHECK_TIMEOUT,
            client
                .describe_continuous_backups()
                .table_name(&table)
                .send(),
        ),
        tokio::time::timeout(
            CHECK_TIMEOUT,
            aws.queue
                .client()
                .get_queue_attributes()
                .queue_url(&queue)
                .attribute_names(
                    aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages,
                )
                .attribute_names(
                    aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
                )
                .send(),
        ),
    );
    let table_ok = match described {
        Err(_) => {
            out.push(check("store", Status::Fail, timeout(&table)));
            false
        }
        Ok(Err(e)) => {
            out.push(check(
                "store",
                Status::Fail,
                format!("table {table}: {}", aws_problem(&e)),
            ));
            false
        }
        Ok(Ok(d)) => {
            let status = d.table().and_then(|t| t.table_status());
            let items = d.table().and_then(|t| t.item_count()).unwrap_or(0);
            out.push(match status {
                Some(TableStatus::Active) => check(
                    "store",
                    Status::Ok,
                    format!("table {table} is ACTIVE (about {items} items)"),
                ),
                Some(s) => check(
                    "store",
                    Status::Warn,
                    format!("table {table} is {}, not ACTIVE", s.as_str()),
                ),
                None => check(
                    "store",
                    Status::Fail,
                    format!("table {table}: DescribeTable gave no status"),
                ),
            });
            true
        }
    };

    if table_ok {
        out.push(match ttl {
            Err(_) => check("store.ttl", Status::Fail, timeout(&table)),
            Ok(Err(e)) => check("store.ttl", Status::Fail, aws_problem(&e)),
            Ok(Ok(t)) => {
                let d = t.time_to_live_description();
                let status = d.and_then(|d| d.time_to_live_status());
                let attribute = d.and_then(|d| d.attribute_name()).unwrap_or("");
                let expected = spkeeper::aws::table::TTL;
                match status {
                    Some(TimeToLiveStatus::Enabled) if attribute == expected => check(
                        "store.ttl",
                        Status::Ok,
                        format!("TTL is on, on `{expected}`"),
                    ),
                    Some(TimeToLiveStatus::Enabled) => check(
                        "store.ttl",
                        Status::Warn,
                        format!(
                            "TTL is on `{}`, not `{expected}`: expired tokens stay in the table",
                            outside(attribute)
                        ),
                    ),
                    Some(TimeToLiveStatus::Enabling) => check(
                        "store.ttl",
                        Status::Warn,
                        "TTL is being turned on (DynamoDB takes up to an hour)",
                    ),
                    _ => check(
                        "store.ttl",
                        Status::Warn,
                        format!(
                            "TTL is off: refresh tokens and relaunch details stay after their expiry (turn it on, on `{expected}`)"
                        ),
                    ),
                }
            }
        });

        out.push(match backups {
            Err(_) => check("store.backups", Status::Fail, timeout(&table)),
            Ok(Err(e)) => check("store.backups", Status::Fail, aws_problem(&e)),
            Ok(Ok(b)) => {
                let on = b
                    .continuous_backups_description()
                    .and_then(|d| d.point_in_time_recovery_description())
                    .and_then(|p| p.point_in_time_recovery_status())
                    == Some(&PointInTimeRecoveryStatus::Enabled);
                if on {
                    check("store.backups", Status::Ok, "point-in-time recovery is on")
                } else {
                    check(
                        "store.backups",
                        Status::Warn,
                        "point-in-time recovery is off: a lost table loses every grant (the stack turns it on)",
                    )
                }
            }
        });
    } else {
        for name in ["store.ttl", "store.backups"] {
            out.push(check(name, Status::Skip, "the table did not answer"));
        }
    }

    out.push(match attrs {
        Err(_) => check("store.queue", Status::Fail, timeout(&queue)),
        Ok(Err(e)) => check(
            "store.queue",
            Status::Fail,
            format!("{queue}: {}", aws_problem(&e)),
        ),
        Ok(Ok(a)) => {
            use aws_sdk_sqs::types::QueueAttributeName as A;
            let n = |name: A| {
                a.attributes()
                    .and_then(|m| m.get(&name))
                    .map(|v| outside(v))
                    .unwrap_or_else(|| "?".into())
            };
            check(
                "store.queue",
                Status::Ok,
                format!(
                    "{queue}: {} notices waiting, {} being delivered",
                    n(A::ApproximateNumberOfMessages),
                    n(A::ApproximateNumberOfMessagesNotVisible)
                ),
            )
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone};

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 26, 12, 0, 0).unwrap()
    }

    #[test]
    fn a_clock_within_a_minute_of_the_token_service_is_ok() {
        for secs in [0, 1, -1, 59, -60, 60] {
            let (status, _) = clock_skew(t0() + Duration::seconds(secs), t0());
            assert_eq!(status, Status::Ok, "{secs} s");
        }
    }

    #[test]
    fn a_clock_over_a_minute_off_is_a_warning_either_way() {
        for secs in [61, -61, 299, -300, 300] {
            let (status, detail) = clock_skew(t0() + Duration::seconds(secs), t0());
            assert_eq!(status, Status::Warn, "{secs} s");
            let way = if secs > 0 { "ahead of" } else { "behind" };
            assert!(detail.contains(way), "{detail}");
            assert!(detail.contains(&format!("{} s", secs.abs())), "{detail}");
        }
    }

    #[test]
    fn a_clock_over_five_minutes_off_fails() {
        for secs in [301, -301, 86_400, -86_400 * 365] {
            let (status, _) = clock_skew(t0() + Duration::seconds(secs), t0());
            assert_eq!(status, Status::Fail, "{secs} s");
        }
        // Whatever a Date header says: no overflow, no panic.
        let (status, _) = clock_skew(DateTime::<Utc>::MAX_UTC, DateTime::<Utc>::MIN_UTC);
        assert_eq!(status, Status::Fail);
    }

    #[test]
    fn a_secret_fails_once_past_and_warns_within_thirty_days() {
        let now = t0();
        assert_eq!(expiry(now - Duration::seconds(1), now).0, Status::Fail);
        assert_eq!(expiry(now, now).0, Status::Fail);
        assert_eq!(expiry(now + Duration::hours(1), now).0, Status::Warn);
        assert_eq!(expiry(now + Duration::days(30), now).0, Status::Warn);
        let (status, detail) = expiry(now + Duration::days(31), now);
        assert_eq!(status, Status::Ok);
        assert!(detail.contains("in 31 days"), "{detail}");
        let (_, detail) = expiry(now - Duration::days(3), now);
        assert!(detail.contains("3 days ago"), "{detail}");
    }

    #[test]
    fn the_date_header_is_read_as_an_http_date_and_anything_else_is_ignored() {
        let mut h = HeaderMap::new();
        assert_eq!(http_date(&h), None);
        h.insert(DATE, "Thu, 26 Nov 2026 12:00:00 GMT".parse().unwrap());
        assert_eq!(http_date(&h), Some(t0()));
        for bad in [
            "yesterday",
            "",
            "Thu, 99 Nov 2026 12:00:00 GMT",
            "1700000000",
        ] {
            h.insert(DATE, bad.parse().unwrap());
            assert_eq!(http_date(&h), None, "{bad:?}");
        }
        h.insert(
            DATE,
            reqwest::header::HeaderValue::from_bytes(b"\xff\xfe").unwrap(),
        );
        assert_eq!(http_date(&h), None);
    }

    #[test]
    fn text_from_outside_is_shortened_and_has_no_control_characters() {
        let long = "é".repeat(500);
        let shown = outside(&long);
        assert_eq!(shown.chars().count(), OUTSIDE_TEXT + 1);
        assert!(shown.ends_with('…'));
        assert_eq!(outside("a\nb\u{1b}[31m"), "a b [31m");
    }
}
