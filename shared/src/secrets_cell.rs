//! The secrets a running program uses, and how they change while it runs. In Lambda they come
//! from Secrets Manager and an instance lives for hours: a rotated token key (or client
//! secret, webhook secret, link key) must reach it without a redeploy. So the secrets are read
//! again every [`REFRESH_EVERY`] (`SPKEEPER_SECRETS_REFRESH_SECONDS`), and at once (at most every [`MIN_GAP`]) when a sealed value names a key
//! id this instance does not know: another instance, started after the rotation, sealed it.
//! Locally (`spkeeper serve`) they are fixed: the key file and the environment change only with
//! a restart.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::config::{ConfigError, Secrets};

/// How old the secrets may get before a request reads them again, by default.
pub const REFRESH_EVERY: Duration = Duration::from_secs(5 * 60);
/// The longest a read of the secrets may hold the request that made it: a slow Secrets
/// Manager costs one request this much at most, then the secrets in use stay.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(3);
/// The variable that sets it otherwise (seconds).
pub const REFRESH_VAR: &str = "SPKEEPER_SECRETS_REFRESH_SECONDS";

/// The refresh period `SPKEEPER_SECRETS_REFRESH_SECONDS` gives (1 to 3600 seconds), or
/// [`REFRESH_EVERY`] when it is unset.
pub fn refresh_every(value: Option<&str>) -> Result<Duration, ConfigError> {
    match value {
        None => Ok(REFRESH_EVERY),
        Some(v) => v
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|s| (1..=3600).contains(s))
            .map(Duration::from_secs)
            .ok_or_else(|| {
                ConfigError::new(REFRESH_VAR, "must be a number of seconds from 1 to 3600")
            }),
    }
}
/// The least time between two reads, whatever asks: sealed values come only from the store,
/// yet a batch of them under a new key must not make every request read Secrets Manager.
pub const MIN_GAP: Duration = Duration::from_secs(1);

/// Where fresh secrets come from.
#[async_trait]
pub trait SecretsSource: Send + Sync {
    async fn fetch(&self) -> Result<Secrets, ConfigError>;
}

/// The current secrets (cheap to read: an `Arc`), and their source if they can change.
#[derive(Clone)]
pub struct SecretsCell {
    current: Arc<RwLock<Arc<Secrets>>>,
    refresh: Option<Arc<Refresh>>,
}

struct Refresh {
    source: Arc<dyn SecretsSource>,
    /// How old the secrets may get.
    every: Duration,
    /// `last` counts from here.
    since: Instant,
    /// When they were last read (or last tried), in milliseconds after `since`: every request
    /// looks at it, so it is an atomic, read without a lock.
    last: AtomicU64,
    /// One reader at a time.
    reading: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for SecretsCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretsCell")
            .field("secrets", &self.get())
            .field("refreshing", &self.refresh.is_some())
            .finish()
    }
}

impl SecretsCell {
    /// Secrets that never change while the program runs.
    pub fn fixed(secrets: Secrets) -> Self {
        SecretsCell {
            current: Arc::new(RwLock::new(Arc::new(secrets))),
            refresh: None,
        }
    }

    /// Secrets read at `read_at` from `source`, read again from it once older than `every`.
    pub fn refreshing(
        secrets: Secrets,
        source: Arc<dyn SecretsSource>,
        read_at: Instant,
        every: Duration,
    ) -> Self {
        SecretsCell {
            current: Arc::new(RwLock::new(Arc::new(secrets))),
            refresh: Some(Arc::new(Refresh {
                source,
                every,
                since: read_at,
                last: AtomicU64::new(0),
                reading: tokio::sync::Mutex::new(()),
            })),
        }
    }

    /// The secrets now.
    pub fn get(&self) -> Arc<Secrets> {
        match self.current.read() {
            Ok(g) => Arc::clone(&g),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Reads the secrets again if they are older than the refresh period (at the start of a
    /// request, a sweep or a batch of notices). A failed read keeps the ones in use.
    pub async fn refresh_if_stale(&self) {
        if let Some(r) = &self.refresh {
            self.refresh_older_than(r.every).await;
        }
    }

    /// A sealed value names a key id this program does not know: reads the secrets again,
    /// unless they were read within [`MIN_GAP`]. True if they were read (then try again).
    pub async fn refresh_for_unknown_key(&self) -> bool {
        self.refresh_at_once().await
    }

    /// Reads the secrets again now (a token service refused a credential that may have been
    /// rotated), unless they were read within [`MIN_GAP`]. True if they were read.
    pub async fn refresh_at_once(&self) -> bool {
        self.refresh_older_than(MIN_GAP).await
    }

    async fn refresh_older_than(&self, age: Duration) -> bool {
        let Some(r) = &self.refresh else {
            return false;
        };
        let age_ms = u64::try_from(age.as_millis()).unwrap_or(u64::MAX);
        let now_ms = || u64::try_from(r.since.elapsed().as_millis()).unwrap_or(u64::MAX);
        let fresh = || now_ms().saturating_sub(r.last.load(Ordering::Acquire)) < age_ms;
        // The common case, on every request: fresh enough, no lock taken.
        if fresh() {
            return false;
        }
        // Whoever waits here while another reads finds them fresh afterwards.
        let _reading = r.reading.lock().await;
        if fresh() {
            return false;
        }
        r.last.store(now_ms(), Ordering::Release);
        let fetched = tokio::time::timeout(FETCH_TIMEOUT, r.source.fetch())
            .await
            .unwrap_or_else(|_| {
                Err(ConfigError::new(
                    "SPKEEPER_SECRETS_ARN",
                    "Secrets Manager did not answer within 3 s",
                ))
            });
        match fetched {
            Ok(fresh) => {
                let fresh = Arc::new(fresh);
                match self.current.write() {
                    Ok(mut g) => *g = fresh,
                    Err(poisoned) => *poisoned.into_inner() = fresh,
                }
                tracing::debug!("secrets read again");
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not read the secrets again; keeping the ones in use");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;

    use super::*;
    use crate::config::{KeyFile, Needs, Part, SecretDocument};

    /// A source of token keys (replaced by the test to rotate them), counting its reads.
    struct Counting {
        reads: AtomicU32,
        doc: std::sync::Mutex<serde_json::Value>,
    }

    fn secrets_of(doc: &serde_json::Value) -> Secrets {
        let doc: SecretDocument = serde_json::from_value(doc.clone()).unwrap();
        Secrets::for_needs(doc, Needs::only(&[Part::TokenKeys])).unwrap()
    }

    #[async_trait]
    impl SecretsSource for Counting {
        async fn fetch(&self) -> Result<Secrets, ConfigError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            Ok(secrets_of(&self.doc.lock().unwrap()))
        }
    }

    /// Fresh key material whose token key is named `kid`.
    fn keys(kid: &str) -> serde_json::Value {
        let mut k = KeyFile::generate().unwrap();
        let key = k.token_keys.values().next().unwrap().clone();
        k.token_keys = [(kid.to_string(), key)].into();
        k.active_token_key = kid.to_string();
        serde_json::to_value(k).unwrap()
    }

    fn cell(age: Duration) -> (SecretsCell, Arc<Counting>) {
        let first = keys("k1");
        let source = Arc::new(Counting {
            reads: AtomicU32::new(0),
            doc: std::sync::Mutex::new(first.clone()),
        });
        let read_at = Instant::now().checked_sub(age).unwrap();
        let cell =
            SecretsCell::refreshing(secrets_of(&first), source.clone(), read_at, REFRESH_EVERY);
        (cell, source)
    }

    #[tokio::test]
    async fn secrets_younger_than_five_minutes_are_not_read_again() {
        let (cell, source) = cell(Duration::from_secs(60));
        cell.refresh_if_stale().await;
        assert_eq!(source.reads.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn secrets_older_than_five_minutes_are_read_again_and_used() {
        let (cell, source) = cell(REFRESH_EVERY + Duration::from_secs(1));
        assert_eq!(cell.get().key_ring.active_key_id(), "k1");
        *source.doc.lock().unwrap() = keys("k2");
        cell.refresh_if_stale().await;
        assert_eq!(source.reads.load(Ordering::SeqCst), 1);
        assert_eq!(cell.get().key_ring.active_key_id(), "k2");
        // Fresh now: the next request does not read them.
        cell.refresh_if_stale().await;
        assert_eq!(source.reads.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_unknown_key_reads_them_at_once_but_not_twice_within_a_second() {
        let (cell, source) = cell(MIN_GAP + Duration::from_millis(10));
        assert!(cell.refresh_for_unknown_key().await);
        assert!(!cell.refresh_for_unknown_key().await);
        assert_eq!(source.reads.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn the_refresh_period_is_five_minutes_unless_set_from_one_second_to_an_hour() {
        assert_eq!(refresh_every(None), Ok(REFRESH_EVERY));
        assert_eq!(refresh_every(Some(" 60 ")), Ok(Duration::from_secs(60)));
        assert_eq!(refresh_every(Some("1")), Ok(Duration::from_secs(1)));
        for bad in ["0", "3601", "-5", "5m", "1e3", "18446744073709551616"] {
            assert_eq!(
                refresh_every(Some(bad)).unwrap_err().var,
                REFRESH_VAR,
                "{bad}"
            );
        }
    }

    /// A source that never answers.
    struct Hanging;

    #[async_trait]
    impl SecretsSource for Hanging {
        async fn fetch(&self) -> Result<Secrets, ConfigError> {
            std::future::pending().await
        }
    }

    #[tokio::test]
    async fn a_secrets_read_that_hangs_gives_up_after_three_seconds_and_keeps_the_secrets() {
        let first = keys("k1");
        let read_at = Instant::now().checked_sub(REFRESH_EVERY * 2).unwrap();
        let cell = SecretsCell::refreshing(
            secrets_of(&first),
            Arc::new(Hanging),
            read_at,
            REFRESH_EVERY,
        );
        let started = Instant::now();
        cell.refresh_if_stale().await;
        assert!(started.elapsed() < FETCH_TIMEOUT + Duration::from_secs(1));
        assert_eq!(cell.get().key_ring.active_key_id(), "k1");
    }

    #[tokio::test]
    async fn fixed_secrets_are_never_read_again() {
        let first = keys("k1");
        let cell = SecretsCell::fixed(secrets_of(&first));
        assert!(!cell.refresh_for_unknown_key().await);
        cell.refresh_if_stale().await;
    }
}
