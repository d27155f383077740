//! The embedded store: grants, the access-token cache, leases and the notice outbox in one
//! SQLite file. Every state change runs in one transaction and is conditional on what the
//! caller read (the grant's revision), exactly as the DynamoDB adapter's condition
//! expressions are. Several processes may share the file (WAL, busy timeout): `spkeeper serve`
//! and a `spkeeper sweep` from a terminal can run at once.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration as StdDuration;

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};

use crate::core::grant::{GrantId, Progress, relaunch_retention};
use crate::core::notice::{Notice, User};
use crate::ports::{
    Advance, CachedToken, DeliveryOutcome, DueCursor, DuePage, GrantRecord, GrantStore, Outbox,
    OutboxEntry, Prefetched, StandardTokens, StoreError, StoredGrant, TokenCache, UserKey, Written,
    entra_user_key, next_rev, user_index,
};

/// The database file inside the data directory.
pub const DB_FILE: &str = "spkeeper.sqlite3";
/// Delivered notices are kept this long for inspection, then purged.
const DELIVERED_RETENTION_DAYS: i64 = 30;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS grants (
    id                TEXT PRIMARY KEY,
    rev               INTEGER NOT NULL,
    realm             TEXT NOT NULL,
    site_url          TEXT NOT NULL,
    app_web_url       TEXT,
    sp_language       TEXT,
    sp_client_tag     TEXT,
    sp_product_number TEXT,
    sts_uri           TEXT NOT NULL,
    target_principal  TEXT NOT NULL,
    user_json         TEXT,
    rt_version        INTEGER NOT NULL,
    rt_expires_at     INTEGER NOT NULL,
    refresh_token     TEXT,
    progress          TEXT NOT NULL,
    next_due_at       INTEGER,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL,
    retain_until      INTEGER NOT NULL,
    email_lc          TEXT,
    login_lc          TEXT,
    kind              TEXT NOT NULL DEFAULT 'acs',
    entra_user        TEXT
);
-- Partial index: only grants with a notice to come are in it, like the DynamoDB sparse GSI.
CREATE INDEX IF NOT EXISTS grants_due ON grants(next_due_at, id) WHERE next_due_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS access_tokens (
    grant_id   TEXT NOT NULL,
    host       TEXT NOT NULL,
    sealed     TEXT NOT NULL,
    resource   TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (grant_id, host)
);
CREATE TABLE IF NOT EXISTS leases (
    key        TEXT PRIMARY KEY,
    owner      TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    id              TEXT NOT NULL UNIQUE,
    body            TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER,
    delivered_at    INTEGER,
    dead_at         INTEGER,
    last_error      TEXT
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox(seq) WHERE delivered_at IS NULL;
CREATE TABLE IF NOT EXISTS host_realms (
    host       TEXT PRIMARY KEY,
    realm      TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS used_once (
    key        TEXT PRIMARY KEY,
    expires_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS markers (
    key        TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL
);
"#;

/// What the files of earlier versions lack, added in place; then the indexes that need it.
const MIGRATIONS: &[(&str, &str)] = &[
    ("email_lc", "ALTER TABLE grants ADD COLUMN email_lc TEXT"),
    ("login_lc", "ALTER TABLE grants ADD COLUMN login_lc TEXT"),
    (
        "kind",
        "ALTER TABLE grants ADD COLUMN kind TEXT NOT NULL DEFAULT 'acs'",
    ),
    (
        "entra_user",
        "ALTER TABLE grants ADD COLUMN entra_user TEXT",
    ),
];
/// Fills the lookup columns of a file that had none: run once, when they are added (at every
/// open it would read every grant: 1.5 s of each `spkeeper sweep` at a million grants).
const BACKFILL_LOOKUP: &str = r#"
UPDATE grants SET
    email_lc = NULLIF(lower(trim(json_extract(user_json, '$.email'))), ''),
    login_lc = NULLIF(lower(trim(json_extract(user_json, '$.login_name'))), '')
WHERE user_json IS NOT NULL AND email_lc IS NULL AND login_lc IS NULL;
"#;
const LATE_SCHEMA: &str = r#"
-- Partial indexes: only grants with a known user are in them (the lookup routes).
CREATE INDEX IF NOT EXISTS grants_email ON grants(email_lc) WHERE email_lc IS NOT NULL;
CREATE INDEX IF NOT EXISTS grants_login ON grants(login_lc) WHERE login_lc IS NOT NULL;
-- An Entra user's grant, by tenant and object id (a migrated grant keeps its ACS id).
CREATE UNIQUE INDEX IF NOT EXISTS grants_entra_user ON grants(entra_user) WHERE entra_user IS NOT NULL;
-- The purge reads only what has outlived its retention, not every grant: the refresh tokens
-- still held, by expiry (partial: a purged token leaves the index), and relaunch details by
-- the end of their retention. Created at every open, so files of earlier versions get them.
CREATE INDEX IF NOT EXISTS grants_rt_expiry ON grants(rt_expires_at) WHERE refresh_token IS NOT NULL;
CREATE INDEX IF NOT EXISTS grants_retention ON grants(retain_until);
-- Likewise delivered notices (kept 30 days) and cached access tokens (one per grant and host):
-- either may hold as many rows as there are grants.
CREATE INDEX IF NOT EXISTS outbox_delivered ON outbox(delivered_at) WHERE delivered_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS access_tokens_expiry ON access_tokens(expires_at);
"#;

/// What the purge deletes or clears once it has outlived its retention (`?1` = now), each read
/// through an index (a test explains their plans): never a scan of every grant.
const PURGE_EXPIRED: &[&str] = &[
    "UPDATE grants INDEXED BY grants_rt_expiry SET refresh_token = NULL \
     WHERE refresh_token IS NOT NULL AND rt_expires_at <= ?1",
    "DELETE FROM grants INDEXED BY grants_retention WHERE retain_until <= ?1",
    "DELETE FROM access_tokens INDEXED BY access_tokens_expiry WHERE expires_at <= ?1",
    "DELETE FROM leases WHERE expires_at <= ?1",
    "DELETE FROM used_once WHERE expires_at <= ?1",
];
/// Delivered notices, kept [`DELIVERED_RETENTION_DAYS`] (`?1` = delivered before this).
const PURGE_DELIVERED: &str = "DELETE FROM outbox INDEXED BY outbox_delivered \
     WHERE delivered_at IS NOT NULL AND delivered_at <= ?1";

/// What an existing file holds, in counts ([`SqliteStore::inspect_dir`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSummary {
    pub grants: i64,
    /// Notices not delivered yet, still being tried.
    pub waiting: i64,
    /// Notices the webhook never accepted (`spkeeper notices` lists them).
    pub dead_letters: i64,
    /// The most recently written refresh token, sealed, with its grant and version: whether
    /// the key file opens what the database holds.
    pub sample: Option<SealedSample>,
}

/// A stored refresh token, still sealed: its grant, its version, the sealed value.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedSample {
    pub grant: String,
    pub version: i64,
    pub sealed: String,
}

impl std::fmt::Debug for SealedSample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedSample")
            .field("grant", &self.grant)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
pub struct SqliteStore {
    /// The one connection that writes (SQLite has one writer at a time anyway).
    conn: Arc<Mutex<Connection>>,
    /// Read connections for the hot point reads (`/token`: the grant, the cached access
    /// token), so they neither queue behind writes nor behind each other. Empty for an
    /// in-memory store, whose data only its one connection sees.
    readers: Arc<Readers>,
}

/// How many read connections a file store keeps: the blocking pool runs at most a few reads
/// at once on a small machine; each connection costs a page cache.
const READERS: usize = 4;

/// WAL pages between automatic checkpoints (SQLite's default is 1,000). Each checkpoint runs
/// inside the commit that crosses the mark and ends in two `fsync`s; a sweep of 10,000 notices
/// writes ~50,000 pages, and at 1,000 its ~27 checkpoints spent half a second in `fsync`
/// (strace, BENCHMARKS.md). At 10,000 (a WAL of up to ~40 MB) it makes a few.
const CHECKPOINT_PAGES: i64 = 10_000;

/// A few read-only (`query_only`) connections to the same file. WAL lets them read while the
/// writer writes; each read sees every write committed before it began.
#[derive(Default)]
struct Readers {
    conns: Vec<Mutex<Connection>>,
    next: std::sync::atomic::AtomicUsize,
}

impl Readers {
    fn open(path: &Path, n: usize) -> Result<Self, StoreError> {
        let mut conns = Vec::with_capacity(n);
        for _ in 0..n {
            let conn = Connection::open(path).map_err(StoreError::unavailable)?;
            conn.busy_timeout(StdDuration::from_secs(10))
                .map_err(StoreError::unavailable)?;
            conn.pragma_update(None, "query_only", true)
                .map_err(StoreError::unavailable)?;
            conns.push(Mutex::new(conn));
        }
        Ok(Readers {
            conns,
            next: Default::default(),
        })
    }

    /// A free connection if there is one (starting from the next in turn), else the next in
    /// turn once it is free; `None` without read connections.
    fn take(&self) -> Option<std::sync::MutexGuard<'_, Connection>> {
        let n = self.conns.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        for i in 0..n {
            if let Ok(guard) = self.conns[(start + i) % n].try_lock() {
                return Some(guard);
            }
        }
        Some(
            self.conns[start % n]
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        )
    }
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteStore")
    }
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

fn ts(t: DateTime<Utc>) -> i64 {
    t.timestamp()
}

fn from_ts(secs: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp(secs, 0).ok_or_else(|| corrupt("timestamp out of range"))
}

impl SqliteStore {
    /// Opens (creating if needed) `{data_dir}/spkeeper.sqlite3`.
    pub fn open_dir(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(data_dir)
            .map_err(StoreError::unavailable)?;
        Self::open(&data_dir.join(DB_FILE))
    }

    /// Opens the file, creating it private (0600): SQLite gives its WAL and shared-memory
    /// files the same mode.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Err(e) = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            && e.kind() != std::io::ErrorKind::AlreadyExists
        {
            return Err(StoreError::unavailable(e));
        }
        let conn = Connection::open(path).map_err(StoreError::unavailable)?;
        let mut store = Self::init(conn, true)?;
        // After the writer has set WAL mode and created the schema.
        store.readers = Arc::new(Readers::open(path, READERS)?);
        Ok(store)
    }

    /// What `spkeeper doctor` reads: the data directory's file opened as it is, without
    /// creating, migrating or writing anything (`query_only`). `None` when there is no file yet
    /// (the first `spkeeper serve` or command creates it).
    pub async fn inspect_dir(data_dir: &Path) -> Result<Option<FileSummary>, StoreError> {
        let path = data_dir.join(DB_FILE);
        tokio::task::spawn_blocking(move || {
            if !path.exists() {
                return Ok(None);
            }
            let conn = Connection::open_with_flags(
                &path,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(sql)?;
            conn.busy_timeout(StdDuration::from_secs(2)).map_err(sql)?;
            conn.pragma_update(None, "query_only", true).map_err(sql)?;
            let count = |q: &str| conn.query_row(q, [], |r| r.get::<_, i64>(0)).map_err(sql);
            let sample = conn
                .query_row(
                    "SELECT id, rt_version, refresh_token FROM grants \
                     WHERE refresh_token IS NOT NULL ORDER BY updated_at DESC LIMIT 1",
                    [],
                    |r| {
                        Ok(SealedSample {
                            grant: r.get(0)?,
                            version: r.get(1)?,
                            sealed: r.get(2)?,
                        })
                    },
                )
                .optional()
                .map_err(sql)?;
            Ok(Some(FileSummary {
                sample,
                grants: count("SELECT count(*) FROM grants")?,
                waiting: count("SELECT count(*) FROM outbox WHERE delivered_at IS NULL AND dead_at IS NULL")?,
                dead_letters: count("SELECT count(*) FROM outbox WHERE delivered_at IS NULL AND dead_at IS NOT NULL")?,
            }))
        })
        .await
        .map_err(StoreError::unavailable)?
    }

    pub fn open_in_memory() -> Result<Self, StoreError> {
        let conn = Connection::open_in_memory().map_err(StoreError::unavailable)?;
        Self::init(conn, false)
    }

    fn init(conn: Connection, wal: bool) -> Result<Self, StoreError> {
        conn.busy_timeout(StdDuration::from_secs(10))
            .map_err(StoreError::unavailable)?;
        if wal {
            conn.pragma_update(None, "journal_mode", "WAL")
                .map_err(StoreError::unavailable)?;
            conn.pragma_update(None, "synchronous", "NORMAL")
                .map_err(StoreError::unavailable)?;
            conn.pragma_update(None, "wal_autocheckpoint", CHECKPOINT_PAGES)
                .map_err(StoreError::unavailable)?;
        }
        conn.execute_batch(SCHEMA)
            .map_err(StoreError::unavailable)?;
        let columns: Vec<String> = conn
            .prepare("SELECT name FROM pragma_table_info('grants')")
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .map_err(StoreError::unavailable)?;
        for (column, add) in MIGRATIONS {
            if !columns.iter().any(|c| c == column) {
                conn.execute_batch(add).map_err(StoreError::unavailable)?;
            }
        }
        if !columns.iter().any(|c| c == "email_lc") {
            conn.execute_batch(BACKFILL_LOOKUP)
                .map_err(StoreError::unavailable)?;
        }
        conn.execute_batch(LATE_SCHEMA)
            .map_err(StoreError::unavailable)?;
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
            readers: Arc::default(),
        })
    }

    /// Benchmarks only (feature `bench`): writes grants at revision 1 (replacing any with the
    /// same id), each with its sealed refresh token, in one transaction, through the same row
    /// mapping as [`put_grant`](GrantStore::put_grant). No route or command reaches it.
    #[cfg(feature = "bench")]
    pub async fn insert_new_grants(
        &self,
        grants: Vec<(GrantRecord, String)>,
    ) -> Result<(), StoreError> {
        self.call(move |c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql)?;
            for (g, rt) in &grants {
                insert_grant(&tx, g, rt, 1)?;
            }
            tx.commit().map_err(sql)
        })
        .await
    }

    /// Runs `f` on the connection off the async runtime.
    async fn call<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            let mut guard = conn
                .lock()
                .map_err(|_| corrupt("connection lock poisoned"))?;
            f(&mut guard)
        })
        .await
        .map_err(StoreError::unavailable)?
    }

    /// Runs the read `f` off the async runtime on a read connection (the writer's when there
    /// are none: an in-memory store).
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (readers, writer) = (Arc::clone(&self.readers), Arc::clone(&self.conn));
        tokio::task::spawn_blocking(move || match readers.take() {
            Some(conn) => f(&conn),
            None => {
                let conn = writer
                    .lock()
                    .map_err(|_| corrupt("connection lock poisoned"))?;
                f(&conn)
            }
        })
        .await
        .map_err(StoreError::unavailable)?
    }
}

fn sql(e: rusqlite::Error) -> StoreError {
    StoreError::unavailable(e)
}

const GRANT_COLUMNS: &str = "id, rev, realm, site_url, app_web_url, sp_language, sp_client_tag, sp_product_number, \
     sts_uri, target_principal, user_json, rt_version, rt_expires_at, progress, next_due_at, created_at, updated_at, kind";

fn read_grant(row: &Row<'_>) -> rusqlite::Result<Result<GrantRecord, StoreError>> {
    let id: String = row.get(0)?;
    let rev: i64 = row.get(1)?;
    let user_json: Option<String> = row.get(10)?;
    let progress: String = row.get(13)?;
    let next_due: Option<i64> = row.get(14)?;
    let kind: String = row.get(17)?;
    let record = (|| -> Result<GrantRecord, StoreError> {
        Ok(GrantRecord {
            id: GrantId::parse(&id).ok_or_else(|| corrupt("grant id"))?,
            kind: kind.parse().map_err(StoreError::Corrupt)?,
            rev: u64::try_from(rev).map_err(|_| corrupt("revision"))?,
            realm: row.get(2).map_err(sql)?,
            site_url: row.get(3).map_err(sql)?,
            app_web_url: row.get(4).map_err(sql)?,
            standard_tokens: StandardTokens {
                language: row.get(5).map_err(sql)?,
                client_tag: row.get(6).map_err(sql)?,
                product_number: row.get(7).map_err(sql)?,
            },
            sts_uri: row.get(8).map_err(sql)?,
            target_principal: row.get(9).map_err(sql)?,
            user: user_json
                .map(|j| serde_json::from_str::<User>(&j).map_err(|_| corrupt("user")))
                .transpose()?,
            rt_version: row.get(11).map_err(sql)?,
            rt_expires_at: from_ts(row.get(12).map_err(sql)?)?,
            progress: progress.parse::<Progress>().map_err(StoreError::Corrupt)?,
            next_due_at: next_due.map(from_ts).transpose()?,
            created_at: from_ts(row.get(15).map_err(sql)?)?,
            updated_at: from_ts(row.get(16).map_err(sql)?)?,
        })
    })();
    Ok(record)
}

/// Writes a grant's row (created or replaced) at revision `rev`, refresh token included.
fn insert_grant(
    conn: &Connection,
    g: &GrantRecord,
    sealed_refresh_token: &str,
    rev: i64,
) -> Result<(), StoreError> {
    let user = g
        .user
        .as_ref()
        .map(|u| serde_json::to_string(u).unwrap_or_default());
    let (email_lc, login_lc) = user_index(g.user.as_ref());
    conn.prepare_cached(
        "INSERT OR REPLACE INTO grants (id, rev, realm, site_url, app_web_url, sp_language, sp_client_tag, \
         sp_product_number, sts_uri, target_principal, user_json, rt_version, rt_expires_at, refresh_token, \
         progress, next_due_at, created_at, updated_at, retain_until, email_lc, login_lc, kind, entra_user) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23)",
    )
    .and_then(|mut insert| {
        insert.execute(params![
            g.id.as_str(),
            rev,
            g.realm,
            g.site_url,
            g.app_web_url,
            g.standard_tokens.language,
            g.standard_tokens.client_tag,
            g.standard_tokens.product_number,
            g.sts_uri,
            g.target_principal,
            user,
            g.rt_version,
            ts(g.rt_expires_at),
            sealed_refresh_token,
            g.progress.to_string(),
            g.next_due_at.map(ts),
            ts(g.created_at),
            ts(g.updated_at),
            ts(relaunch_retention(g.rt_expires_at)),
            email_lc,
            login_lc,
            g.kind.as_str(),
            entra_user_key(g),
        ])
    })
    .map_err(sql)?;
    Ok(())
}

fn queue_notice(tx: &rusqlite::Transaction<'_>, notice: &Notice) -> Result<(), StoreError> {
    let created = DateTime::parse_from_rfc3339(&notice.created_at)
        .map(|t| t.timestamp())
        .unwrap_or_else(|_| Utc::now().timestamp());
    // The id is deterministic: queueing the same notice twice keeps one.
    tx.prepare_cached("INSERT OR IGNORE INTO outbox (id, body, created_at) VALUES (?1, ?2, ?3)")
        .and_then(|mut insert| insert.execute(params![notice.id, notice.to_json(), created]))
        .map_err(sql)?;
    Ok(())
}

fn read_outbox(row: &Row<'_>) -> rusqlite::Result<OutboxEntry> {
    let created: i64 = row.get(3)?;
    let attempts: i64 = row.get(2)?;
    let next: Option<i64> = row.get(4)?;
    let dead: Option<i64> = row.get(6)?;
    let created_at = DateTime::from_timestamp(created, 0).unwrap_or_default();
    Ok(OutboxEntry {
        id: row.get(0)?,
        body: row.get(1)?,
        attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
        created_at,
        next_attempt_at: next
            .and_then(|n| DateTime::from_timestamp(n, 0))
            .unwrap_or(created_at),
        last_error: row.get(5)?,
        dead: dead.is_some(),
    })
}

/// A grant and its refresh token, by id.
fn load_grant(c: &Connection, id: &str) -> Result<Option<StoredGrant>, StoreError> {
    let row = c
        .prepare_cached(&format!(
            "SELECT {GRANT_COLUMNS}, refresh_token FROM grants WHERE id = ?1"
        ))
        .and_then(|mut st| {
            st.query_row(params![id], |row| {
                Ok((read_grant(row)?, row.get::<_, Option<String>>(18)?))
            })
            .optional()
        })
        .map_err(sql)?;
    match row {
        None => Ok(None),
        Some((record, rt)) => Ok(Some(StoredGrant {
            record: record?,
            sealed_refresh_token: rt,
        })),
    }
}

/// A grant's cached access token under `key` (a host or a scope).
fn access_token(c: &Connection, id: &str, key: &str) -> Result<Option<CachedToken>, StoreError> {
    let row: Option<(String, i64, String)> = c
        .prepare_cached(
            "SELECT sealed, expires_at, resource FROM access_tokens WHERE grant_id = ?1 AND host = ?2",
        )
        .and_then(|mut st| {
            st.query_row(params![id, key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()
        })
        .map_err(sql)?;
    row.map(|(sealed, exp, resource)| {
        Ok(CachedToken {
            sealed,
            expires_at: from_ts(exp)?,
            resource,
        })
    })
    .transpose()
}

const OUTBOX_COLUMNS: &str = "id, body, attempts, created_at, next_attempt_at, last_error, dead_at";

#[async_trait]
impl GrantStore for SqliteStore {
    async fn load(&self, id: &GrantId) -> Result<Option<StoredGrant>, StoreError> {
        let id = id.as_str().to_string();
        self.read(move |c| load_grant(c, &id)).await
    }

    /// The grant and its cached tokens in one trip to the blocking pool, on one read
    /// connection (a cached `/token` used to wait for two).
    async fn load_with_tokens(
        &self,
        id: &GrantId,
        cache_keys: &[String],
    ) -> Result<Prefetched, StoreError> {
        let id = id.as_str().to_string();
        let keys = cache_keys.to_vec();
        self.read(move |c| {
            let grant = load_grant(c, &id)?;
            let mut tokens = std::collections::HashMap::with_capacity(keys.len());
            for key in keys {
                let token = access_token(c, &id, &key)?;
                tokens.insert(key, token);
            }
            Ok(Prefetched { grant, tokens })
        })
        .await
    }

    async fn put_grant(
        &self,
        expected_rev: Option<u64>,
        grant: &GrantRecord,
        sealed_refresh_token: &str,
        notice: Option<&Notice>,
    ) -> Result<Written, StoreError> {
        let g = grant.clone();
        let rt = sealed_refresh_token.to_string();
        let notice = notice.cloned();
        self.call(move |c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql)?;
            let current: Option<i64> = tx
                .query_row(
                    "SELECT rev FROM grants WHERE id = ?1",
                    params![g.id.as_str()],
                    |r| r.get(0),
                )
                .optional()
                .map_err(sql)?;
            let matches = match (expected_rev, current) {
                (None, None) => true,
                (Some(e), Some(c)) => u64::try_from(c).ok() == Some(e),
                _ => false,
            };
            if !matches {
                return Ok(Written::Conflict);
            }
            // Within i64: `next_rev` says so.
            let new_rev = next_rev(expected_rev)? as i64;
            insert_grant(&tx, &g, &rt, new_rev)?;
            if let Some(n) = &notice {
                queue_notice(&tx, n)?;
            }
            tx.commit().map_err(sql)?;
            Ok(Written::Done)
        })
        .await
    }

    async fn advance(&self, m: &Advance, now: DateTime<Utc>) -> Result<Written, StoreError> {
        let mut written = self.advance_all(std::slice::from_ref(m), now).await?;
        written.pop().ok_or_else(|| corrupt("no outcome"))
    }

    /// One transaction for all of them: one commit (and one write of each page they share)
    /// instead of one per notice.
    async fn advance_all(
        &self,
        moves: &[Advance],
        now: DateTime<Utc>,
    ) -> Result<Vec<Written>, StoreError> {
        let moves = moves.to_vec();
        self.call(move |c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql)?;
            let mut written = Vec::with_capacity(moves.len());
            for m in &moves {
                let changed = tx
                    .prepare_cached(
                        "UPDATE grants SET progress = ?1, next_due_at = ?2, rev = rev + 1, updated_at = ?3 \
                         WHERE id = ?4 AND rev = ?5",
                    )
                    .and_then(|mut update| {
                        update.execute(params![
                            m.progress.to_string(),
                            m.next_due_at.map(ts),
                            ts(now),
                            m.id.as_str(),
                            i64::try_from(m.expected_rev).unwrap_or(i64::MAX)
                        ])
                    })
                    .map_err(sql)?;
                if changed == 0 {
                    written.push(Written::Conflict);
                    continue;
                }
                if let Some(n) = &m.notice {
                    queue_notice(&tx, n)?;
                }
                written.push(Written::Done);
            }
            tx.commit().map_err(sql)?;
            Ok(written)
        })
        .await
    }

    async fn set_user(&self, id: &GrantId, user: &User) -> Result<(), StoreError> {
        let id = id.as_str().to_string();
        let (email_lc, login_lc) = user_index(Some(user));
        let user = serde_json::to_string(user).map_err(|_| corrupt("user"))?;
        self.call(move |c| {
            c.execute(
                "UPDATE grants SET user_json = ?1, email_lc = ?2, login_lc = ?3 WHERE id = ?4",
                params![user, email_lc, login_lc, id],
            )
            .map_err(sql)?;
            Ok(())
        })
        .await
    }

    async fn due(
        &self,
        now: DateTime<Utc>,
        cursor: Option<&DueCursor>,
        limit: usize,
    ) -> Result<DuePage, StoreError> {
        // The cursor is "{due}|{id}" of the last grant returned.
        let (after_due, after_id) = match cursor {
            None => (i64::MIN, String::new()),
            Some(DueCursor(c)) => {
                let (d, id) = c.split_once('|').ok_or_else(|| corrupt("due cursor"))?;
                (
                    d.parse::<i64>().map_err(|_| corrupt("due cursor"))?,
                    id.to_string(),
                )
            }
        };
        let grants: Vec<GrantRecord> = self
            .call(move |c| {
                let mut stmt = c
                    .prepare_cached(&format!(
                        "SELECT {GRANT_COLUMNS} FROM grants INDEXED BY grants_due \
                         WHERE next_due_at IS NOT NULL AND next_due_at <= ?1 \
                           AND (next_due_at > ?2 OR (next_due_at = ?2 AND id > ?3)) \
                         ORDER BY next_due_at, id LIMIT ?4"
                    ))
                    .map_err(sql)?;
                let rows = stmt
                    .query_map(
                        params![ts(now), after_due, after_id, limit as i64],
                        read_grant,
                    )
                    .map_err(sql)?;
                rows.map(|r| r.map_err(sql)?).collect()
            })
            .await?;
        let next = match grants.last() {
            Some(last) if grants.len() == limit => last
                .next_due_at
                .map(|d| DueCursor(format!("{}|{}", ts(d), last.id))),
            _ => None,
        };
        Ok(DuePage { grants, next })
    }

    async fn list(&self) -> Result<Vec<GrantRecord>, StoreError> {
        self.call(move |c| {
            let mut stmt = c
                .prepare(&format!(
                    "SELECT {GRANT_COLUMNS} FROM grants ORDER BY created_at, id"
                ))
                .map_err(sql)?;
            let rows = stmt.query_map([], read_grant).map_err(sql)?;
            rows.map(|r| r.map_err(sql)?).collect()
        })
        .await
    }

    async fn find_by_user(&self, key: &UserKey) -> Result<Vec<GrantRecord>, StoreError> {
        let (index, column) = match key {
            UserKey::Email(_) => ("grants_email", "email_lc"),
            UserKey::LoginName(_) => ("grants_login", "login_lc"),
        };
        let value = key.value().to_string();
        self.call(move |c| {
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT {GRANT_COLUMNS} FROM grants INDEXED BY {index} \
                     WHERE {column} IS NOT NULL AND {column} = ?1 ORDER BY created_at, id"
                ))
                .map_err(sql)?;
            let rows = stmt.query_map(params![value], read_grant).map_err(sql)?;
            rows.map(|r| r.map_err(sql)?).collect()
        })
        .await
    }

    async fn find_entra_user(&self, tid: &str, oid: &str) -> Result<Option<GrantId>, StoreError> {
        let key = format!("{tid}|{oid}");
        self.call(move |c| {
            let id: Option<String> = c
                .query_row(
                    "SELECT id FROM grants INDEXED BY grants_entra_user \
                     WHERE entra_user IS NOT NULL AND entra_user = ?1",
                    params![key],
                    |r| r.get(0),
                )
                .optional()
                .map_err(sql)?;
            id.map(|i| GrantId::parse(&i).ok_or_else(|| corrupt("grant id")))
                .transpose()
        })
        .await
    }

    async fn forget(&self, id: &GrantId) -> Result<bool, StoreError> {
        let id = id.as_str().to_string();
        self.call(move |c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql)?;
            let existed = tx
                .execute("DELETE FROM grants WHERE id = ?1", params![id])
                .map_err(sql)?
                > 0;
            tx.execute("DELETE FROM access_tokens WHERE grant_id = ?1", params![id])
                .map_err(sql)?;
            // Its notices, delivered or not: they name the user.
            tx.execute(
                "DELETE FROM outbox WHERE json_extract(body, '$.grant.id') = ?1",
                params![id],
            )
            .map_err(sql)?;
            tx.commit().map_err(sql)?;
            Ok(existed)
        })
        .await
    }

    async fn queue_once(&self, marker: &str, notice: &Notice) -> Result<Written, StoreError> {
        let marker = marker.to_string();
        let notice = notice.clone();
        self.call(move |c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql)?;
            let inserted = tx
                .execute(
                    "INSERT OR IGNORE INTO markers (key, created_at) VALUES (?1, ?2)",
                    params![marker, Utc::now().timestamp()],
                )
                .map_err(sql)?;
            if inserted == 0 {
                return Ok(Written::Conflict);
            }
            queue_notice(&tx, &notice)?;
            tx.commit().map_err(sql)?;
            Ok(Written::Done)
        })
        .await
    }

    async fn purge(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        let now = ts(now);
        let delivered_before = now - Duration::days(DELIVERED_RETENTION_DAYS).num_seconds();
        self.call(move |c| {
            let tx = c.transaction().map_err(sql)?;
            let mut n = 0;
            let statements = PURGE_EXPIRED.iter().map(|s| (*s, now));
            for (statement, until) in statements.chain([(PURGE_DELIVERED, delivered_before)]) {
                n += tx
                    .prepare_cached(statement)
                    .and_then(|mut s| s.execute(params![until]))
                    .map_err(sql)?;
            }
            tx.commit().map_err(sql)?;
            Ok(n as u64)
        })
        .await
    }
}

#[async_trait]
impl TokenCache for SqliteStore {
    async fn get_access_token(
        &self,
        id: &GrantId,
        host: &str,
    ) -> Result<Option<CachedToken>, StoreError> {
        let (id, host) = (id.as_str().to_string(), host.to_string());
        self.read(move |c| access_token(c, &id, &host)).await
    }

    async fn put_access_token(
        &self,
        id: &GrantId,
        host: &str,
        token: &CachedToken,
    ) -> Result<(), StoreError> {
        let (id, host) = (id.as_str().to_string(), host.to_string());
        let token = token.clone();
        self.call(move |c| {
            c.execute(
                "INSERT OR REPLACE INTO access_tokens (grant_id, host, sealed, resource, expires_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![id, host, token.sealed, token.resource, ts(token.expires_at)],
            )
            .map_err(sql)?;
            Ok(())
        })
        .await
    }

    async fn forget_access_tokens(&self, id: &GrantId) -> Result<(), StoreError> {
        let id = id.as_str().to_string();
        self.call(move |c| {
            c.execute("DELETE FROM access_tokens WHERE grant_id = ?1", params![id])
                .map_err(sql)?;
            Ok(())
        })
        .await
    }

    async fn try_lease(
        &self,
        key: &str,
        owner: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let (key, owner) = (key.to_string(), owner.to_string());
        self.call(move |c| {
            let changed = c
                .execute(
                    "INSERT INTO leases (key, owner, expires_at) VALUES (?1, ?2, ?3) \
                     ON CONFLICT(key) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at \
                     WHERE leases.expires_at <= ?4",
                    params![key, owner, ts(until), ts(now)],
                )
                .map_err(sql)?;
            Ok(changed == 1)
        })
        .await
    }

    async fn release_lease(&self, key: &str, owner: &str) -> Result<(), StoreError> {
        let (key, owner) = (key.to_string(), owner.to_string());
        self.call(move |c| {
            c.execute(
                "DELETE FROM leases WHERE key = ?1 AND owner = ?2",
                params![key, owner],
            )
            .map_err(sql)?;
            Ok(())
        })
        .await
    }

    async fn use_once(&self, key: &str, until: DateTime<Utc>) -> Result<Written, StoreError> {
        let key = key.to_string();
        self.call(move |c| {
            let inserted = c
                .execute(
                    "INSERT OR IGNORE INTO used_once (key, expires_at) VALUES (?1, ?2)",
                    params![key, ts(until)],
                )
                .map_err(sql)?;
            Ok(if inserted == 1 {
                Written::Done
            } else {
                Written::Conflict
            })
        })
        .await
    }

    async fn get_host_realm(
        &self,
        host: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<String>, StoreError> {
        let host = host.to_string();
        self.call(move |c| {
            c.query_row(
                "SELECT realm FROM host_realms WHERE host = ?1 AND expires_at > ?2",
                params![host, ts(now)],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql)
        })
        .await
    }

    async fn put_host_realm(
        &self,
        host: &str,
        realm: &str,
        until: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let (host, realm) = (host.to_string(), realm.to_string());
        self.call(move |c| {
            c.execute(
                "INSERT OR REPLACE INTO host_realms (host, realm, expires_at) VALUES (?1, ?2, ?3)",
                params![host, realm, ts(until)],
            )
            .map_err(sql)?;
            Ok(())
        })
        .await
    }
}

#[async_trait]
impl Outbox for SqliteStore {
    async fn ready(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        self.call(move |c| {
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT {OUTBOX_COLUMNS} FROM outbox \
                     WHERE delivered_at IS NULL AND dead_at IS NULL \
                       AND (next_attempt_at IS NULL OR next_attempt_at <= ?1) \
                     ORDER BY seq LIMIT ?2"
                ))
                .map_err(sql)?;
            let rows = stmt
                .query_map(params![ts(now), limit as i64], read_outbox)
                .map_err(sql)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(sql)
        })
        .await
    }

    async fn record_attempt(
        &self,
        id: &str,
        outcome: DeliveryOutcome<'_>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let id = id.to_string();
        let (delivered, retry_at, dead, error) = match outcome {
            DeliveryOutcome::Delivered => (Some(ts(now)), None, None, None),
            DeliveryOutcome::RetryAt(at, e) => (None, Some(ts(at)), None, Some(e.to_string())),
            DeliveryOutcome::Dead(e) => (None, None, Some(ts(now)), Some(e.to_string())),
        };
        self.call(move |c| {
            c.execute(
                "UPDATE outbox SET attempts = attempts + 1, delivered_at = ?1, \
                 next_attempt_at = COALESCE(?2, next_attempt_at), dead_at = ?3, \
                 last_error = COALESCE(?4, last_error) WHERE id = ?5",
                params![delivered, retry_at, dead, error, id],
            )
            .map_err(sql)?;
            Ok(())
        })
        .await
    }

    async fn undelivered(&self) -> Result<Vec<OutboxEntry>, StoreError> {
        self.call(move |c| {
            let mut stmt = c
                .prepare(&format!(
                    "SELECT {OUTBOX_COLUMNS} FROM outbox WHERE delivered_at IS NULL ORDER BY seq"
                ))
                .map_err(sql)?;
            let rows = stmt.query_map([], read_outbox).map_err(sql)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(sql)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The embedded queue is the outbox table: what is ready there was queued.
    struct OutboxProbe<'a>(&'a SqliteStore);

    #[async_trait]
    impl crate::store::conformance::NoticeProbe for OutboxProbe<'_> {
        async fn take(&self) -> Vec<String> {
            let far = Utc::now() + Duration::days(36500);
            let ready = self.0.ready(far, 1000).await.unwrap();
            for e in &ready {
                self.0
                    .record_attempt(&e.id, DeliveryOutcome::Delivered, Utc::now())
                    .await
                    .unwrap();
            }
            ready.into_iter().map(|e| e.id).collect()
        }
    }

    #[tokio::test]
    async fn a_file_from_before_the_lookup_index_is_migrated_and_indexed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        {
            // The previous release's grants table: no email_lc/login_lc, no kind/entra_user.
            let old = Connection::open(&path).unwrap();
            let before = SCHEMA
                .replace(
                    "    retain_until      INTEGER NOT NULL,\n",
                    "    retain_until      INTEGER NOT NULL\n",
                )
                .replace(
                    "    email_lc          TEXT,\n    login_lc          TEXT,\n    kind              TEXT NOT NULL DEFAULT 'acs',\n    entra_user        TEXT\n",
                    "",
                );
            assert!(
                !before.contains("email_lc") && !before.contains("entra_user"),
                "the old schema has none of the later columns"
            );
            old.execute_batch(&before).unwrap();
            let g = crate::store::conformance::record("old", 0);
            old.execute(
                &format!(
                    "INSERT INTO grants (id, rev, realm, site_url, sts_uri, target_principal, user_json, \
                     rt_version, rt_expires_at, progress, created_at, updated_at, retain_until) \
                     VALUES ('{}', 1, 'r', 's', 'u', 'p', ?1, 1, 1, 'none', 1, 1, 1)",
                    g.id
                ),
                params![r#"{"title":"Megan","email":"Megan@Contoso.com","login_name":"megan"}"#],
            )
            .unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        let found = store
            .find_by_user(&UserKey::email("megan@contoso.com"))
            .await
            .unwrap();
        assert_eq!(found.len(), 1);
        let by_login = store
            .find_by_user(&UserKey::login_name("MEGAN"))
            .await
            .unwrap();
        assert_eq!(by_login.len(), 1);
        let indexes: Vec<String> = store
            .call(|c| {
                c.prepare("SELECT name FROM sqlite_master WHERE type = 'index'")
                    .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
                    .map_err(sql)
            })
            .await
            .unwrap();
        for purge_index in ["grants_rt_expiry", "grants_retention"] {
            assert!(
                indexes.iter().any(|i| i == purge_index),
                "{purge_index} in {indexes:?}"
            );
        }
    }

    #[tokio::test]
    async fn the_lookup_backfill_runs_once_when_its_columns_are_added_not_at_every_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        let store = SqliteStore::open(&path).unwrap();
        let g = crate::store::conformance::record("no-rescan", 0);
        store.put_grant(None, &g, "v2.k.rt", None).await.unwrap();
        // A row the backfill would fill (a user, no lookup values): written by hand, as no
        // version since the columns exist writes one.
        store
            .call(|c| {
                c.execute(
                    "UPDATE grants SET user_json = ?1, email_lc = NULL, login_lc = NULL",
                    params![r#"{"title":"M","email":"m@contoso.com","login_name":"m"}"#],
                )
                .map_err(sql)
            })
            .await
            .unwrap();
        drop(store);
        let reopened = SqliteStore::open(&path).unwrap();
        assert!(
            reopened
                .find_by_user(&UserKey::email("m@contoso.com"))
                .await
                .unwrap()
                .is_empty(),
            "opening a current file read no grant"
        );
    }

    #[tokio::test]
    async fn sqlite_store_passes_the_conformance_suite() {
        let store = SqliteStore::open_in_memory().unwrap();
        crate::store::conformance::run(&store, &OutboxProbe(&store)).await;
    }

    #[tokio::test]
    async fn file_store_with_read_connections_passes_the_conformance_suite() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_dir(dir.path()).unwrap();
        assert_eq!(store.readers.conns.len(), READERS);
        crate::store::conformance::run(&store, &OutboxProbe(&store)).await;
    }

    /// An access token cached for the next hour.
    fn an_hour_of(sealed: &str) -> CachedToken {
        CachedToken {
            sealed: sealed.into(),
            expires_at: Utc::now() + Duration::hours(1),
            resource: "r".into(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn token_reads_do_not_wait_for_the_writer_connection() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_dir(dir.path()).unwrap();
        let g = crate::store::conformance::record("reader", 100);
        store.put_grant(None, &g, "v1.k.rt", None).await.unwrap();
        let token = an_hour_of("v1.k.at");
        store.put_access_token(&g.id, "h", &token).await.unwrap();

        // A long write (or a sweep) holds the writer connection...
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let writer = Arc::clone(&store.conn);
        let holder = std::thread::spawn(move || {
            let _guard = writer.lock().unwrap();
            held_tx.send(()).unwrap();
            let _ = done_rx.recv_timeout(StdDuration::from_secs(10));
        });
        held_rx.recv().unwrap();
        // ...and the reads /token makes still answer at once.
        let loaded = tokio::time::timeout(StdDuration::from_secs(2), store.load(&g.id)).await;
        let cached = tokio::time::timeout(
            StdDuration::from_secs(2),
            store.get_access_token(&g.id, "h"),
        )
        .await;
        done_tx.send(()).unwrap();
        holder.join().unwrap();
        assert!(
            loaded
                .expect("load waited for the writer")
                .unwrap()
                .is_some()
        );
        assert_eq!(
            cached
                .expect("the cache read waited for the writer")
                .unwrap()
                .map(|t| t.sealed),
            Some(token.sealed)
        );
    }

    #[tokio::test]
    async fn inspecting_a_data_directory_creates_nothing_and_counts_what_is_there() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        assert_eq!(SqliteStore::inspect_dir(&data).await.unwrap(), None);
        assert!(!data.exists(), "inspecting made the directory");
        let store = SqliteStore::open_dir(&data).unwrap();
        let n = Notice::client_secret_expiring("cid", Utc::now(), Utc::now());
        store.queue_once("doctor-test", &n).await.unwrap();
        assert_eq!(
            SqliteStore::inspect_dir(&data).await.unwrap(),
            Some(FileSummary {
                grants: 0,
                waiting: 1,
                dead_letters: 0,
                sample: None,
            })
        );
    }

    #[tokio::test]
    async fn read_connections_see_each_write_at_once_and_never_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_dir(dir.path()).unwrap();
        let id = GrantId::derive("r", "fresh");
        for i in 0..20 {
            let token = an_hour_of(&format!("v1.k.{i}"));
            store.put_access_token(&id, "h", &token).await.unwrap();
            let read = store.get_access_token(&id, "h").await.unwrap();
            assert_eq!(read.map(|t| t.sealed), Some(token.sealed));
        }
        let refused = store
            .read(|c| {
                c.execute("DELETE FROM access_tokens", [])
                    .map_err(sql)
                    .map(|_| ())
            })
            .await;
        assert!(refused.is_err(), "a read connection wrote");
    }

    /// A file store checkpoints its WAL every [`CHECKPOINT_PAGES`], not SQLite's 1,000: a
    /// large sweep spent half its time in those checkpoints' fsyncs.
    #[tokio::test]
    async fn a_file_store_checkpoints_its_wal_every_ten_thousand_pages() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_dir(dir.path()).unwrap();
        let pages: i64 = store
            .call(|c| {
                c.query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0))
                    .map_err(sql)
            })
            .await
            .unwrap();
        assert_eq!(pages, CHECKPOINT_PAGES);
    }

    /// A cached `/token` reads the grant and the tokens it names in one trip to the blocking
    /// pool: every named key comes back, held or not (the default reads none of them).
    #[tokio::test]
    async fn a_grant_and_the_tokens_named_are_read_together() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_dir(dir.path()).unwrap();
        let g = crate::store::conformance::record("together", 0);
        store.put_grant(None, &g, "v1.k.rt", None).await.unwrap();
        let token = an_hour_of("v1.k.at");
        store.put_access_token(&g.id, "h", &token).await.unwrap();
        let keys = ["h".to_string(), "other".to_string()];
        let read = store.load_with_tokens(&g.id, &keys).await.unwrap();
        assert_eq!(read.grant.map(|s| s.record.id), Some(g.id));
        assert_eq!(read.tokens.len(), 2);
        assert_eq!(
            read.tokens["h"].as_ref().map(|t| t.sealed.as_str()),
            Some("v1.k.at")
        );
        assert!(read.tokens["other"].is_none());
    }

    #[tokio::test]
    async fn outbox_retries_then_dead_letters_and_keeps_undelivered_visible() {
        let store = SqliteStore::open_in_memory().unwrap();
        let n = Notice::client_secret_expiring("cid", Utc::now() + Duration::days(3), Utc::now());
        store.queue_once("m", &n).await.unwrap();
        let now = Utc::now();
        let ready = store.ready(now, 10).await.unwrap();
        assert_eq!(ready.len(), 1);
        assert_eq!(ready[0].body, n.to_json());
        let later = now + Duration::seconds(60);
        store
            .record_attempt(&n.id, DeliveryOutcome::RetryAt(later, "HTTP 500"), now)
            .await
            .unwrap();
        assert!(
            store.ready(now, 10).await.unwrap().is_empty(),
            "not before its retry time"
        );
        let again = store.ready(later, 10).await.unwrap();
        assert_eq!(
            (again[0].attempts, again[0].last_error.as_deref()),
            (1, Some("HTTP 500"))
        );
        store
            .record_attempt(&n.id, DeliveryOutcome::Dead("HTTP 500"), later)
            .await
            .unwrap();
        assert!(
            store
                .ready(later + Duration::days(1), 10)
                .await
                .unwrap()
                .is_empty()
        );
        let undelivered = store.undelivered().await.unwrap();
        assert!(
            undelivered[0].dead,
            "a dead letter stays visible, never silently dropped"
        );
    }

    #[tokio::test]
    async fn purge_drops_refresh_tokens_at_expiry_and_details_180_days_later() {
        let store = SqliteStore::open_in_memory().unwrap();
        let g = crate::store::conformance::record("purge", 0);
        store.put_grant(None, &g, "v1.k.rt", None).await.unwrap();
        store
            .purge(g.rt_expires_at - Duration::seconds(1))
            .await
            .unwrap();
        assert!(
            store
                .load(&g.id)
                .await
                .unwrap()
                .unwrap()
                .sealed_refresh_token
                .is_some()
        );
        store.purge(g.rt_expires_at).await.unwrap();
        let kept = store.load(&g.id).await.unwrap().unwrap();
        assert!(
            kept.sealed_refresh_token.is_none(),
            "the refresh token goes at its expiry"
        );
        store
            .purge(g.rt_expires_at + Duration::days(179))
            .await
            .unwrap();
        assert!(
            store.load(&g.id).await.unwrap().is_some(),
            "relaunch details outlive it"
        );
        store
            .purge(g.rt_expires_at + Duration::days(180))
            .await
            .unwrap();
        assert!(store.load(&g.id).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn file_store_is_shared_between_two_connections() {
        let dir = tempfile::tempdir().unwrap();
        let a = SqliteStore::open_dir(dir.path()).unwrap();
        let b = SqliteStore::open_dir(dir.path()).unwrap();
        let g = crate::store::conformance::record("shared", 100);
        assert_eq!(
            a.put_grant(None, &g, "v1.k.x", None).await.unwrap(),
            Written::Done
        );
        assert!(b.load(&g.id).await.unwrap().is_some());
        assert_eq!(
            b.put_grant(None, &g, "v1.k.x", None).await.unwrap(),
            Written::Conflict
        );
    }

    #[tokio::test]
    async fn the_purge_reads_only_what_has_expired_through_its_indexes() {
        let store = SqliteStore::open_in_memory().unwrap();
        let plans: Vec<(String, String)> = store
            .call(|c| {
                let mut plans = Vec::new();
                for statement in PURGE_EXPIRED.iter().chain([&PURGE_DELIVERED]) {
                    let plan = c
                        .prepare(&format!("EXPLAIN QUERY PLAN {statement}"))
                        .and_then(|mut s| {
                            s.query_map(params![1], |r| r.get::<_, String>(3))?
                                .collect::<rusqlite::Result<Vec<_>>>()
                        })
                        .map_err(sql)?;
                    plans.push((statement.to_string(), plan.join("; ")));
                }
                Ok(plans)
            })
            .await
            .unwrap();
        for (table, index) in [
            ("grants", "grants_rt_expiry"),
            ("grants", "grants_retention"),
            ("access_tokens", "access_tokens_expiry"),
            ("outbox", "outbox_delivered"),
        ] {
            let (statement, plan) = plans
                .iter()
                .find(|(s, _)| s.contains(index))
                .unwrap_or_else(|| panic!("no purge statement uses {index}"));
            assert!(plan.contains(index), "{statement}: {plan}");
            assert!(
                !plan.contains(&format!("SCAN {table}")),
                "{statement}: {plan}"
            );
        }
    }

    #[tokio::test]
    async fn the_sweep_query_uses_the_partial_due_index() {
        let store = SqliteStore::open_in_memory().unwrap();
        let plan: String = store
            .call(|c| {
                c.query_row(
                    "EXPLAIN QUERY PLAN SELECT id FROM grants INDEXED BY grants_due \
                     WHERE next_due_at IS NOT NULL AND next_due_at <= 1 ORDER BY next_due_at, id LIMIT 5",
                    [],
                    |r| r.get::<_, String>(3),
                )
                .map_err(sql)
            })
            .await
            .unwrap();
        assert!(plan.contains("grants_due"), "{plan}");
        assert!(!plan.starts_with("SCAN grants"), "{plan}");
    }
}
