//! Reads configuration once, opens the store, and builds the shared context.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use spkeeper::clients::http_client;
use spkeeper::clock::{Clock, OffsetClock};
use spkeeper::config::{Env, Layered, Secrets, Settings, Source, StoreChoice};
use spkeeper::context::Context;
use spkeeper::store::sqlite::SqliteStore;

use crate::Failure;
use crate::dev::DevValues;
use crate::keys;

pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SPKEEPER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

/// The data directory, needed before the rest of the configuration is read.
pub fn data_dir() -> PathBuf {
    PathBuf::from(
        Env.get("SPKEEPER_DATA_DIR")
            .unwrap_or_else(|| ".spkeeper".into()),
    )
}

pub struct Loaded {
    pub ctx: Arc<Context>,
    pub store: Arc<SqliteStore>,
    /// The clock: real time, or the simulator's adjustable clock with `--dev`.
    pub clock: Arc<OffsetClock>,
    pub dev: Option<DevValues>,
}

/// What `--dev` adds: generated values for whatever the environment leaves unset.
pub enum Mode {
    /// `serve --dev`, listening on this base URL.
    Dev { listening: String },
    /// Any other command: a data directory made by `serve --dev` lends its values.
    Plain,
}

pub async fn load(mode: Mode) -> Result<Loaded, Failure> {
    let dir = data_dir();
    let dev = match &mode {
        Mode::Dev { listening } => {
            Some(DevValues::load_or_create(&dir, listening).map_err(Failure::Runtime)?)
        }
        Mode::Plain => DevValues::existing(&dir).map_err(Failure::Runtime)?,
    };
    if let (Mode::Plain, Some(_)) = (&mode, &dev) {
        tracing::info!(
            "using the dev configuration in {} for variables the environment does not set",
            dir.display()
        );
    }
    let dev_source: BTreeMap<String, String> =
        dev.as_ref().map(|d| d.as_source(&Env)).unwrap_or_default();
    let source = Layered(vec![&Env, &dev_source]);

    let settings = Settings::from_source(&source).map_err(|e| Failure::Usage(e.to_string()))?;
    let store = match &settings.store {
        StoreChoice::Sqlite { data_dir } => {
            Arc::new(SqliteStore::open_dir(data_dir).map_err(|e| Failure::Runtime(e.to_string()))?)
        }
        StoreChoice::DynamoDb { .. } => {
            return Err(Failure::Usage(
                "SPKEEPER_STORE: dynamodb is served by the Lambda functions; the CLI runs on sqlite".into(),
            ));
        }
    };
    let key_dir = match &settings.store {
        StoreChoice::Sqlite { data_dir } => data_dir.clone(),
        StoreChoice::DynamoDb { .. } => dir,
    };
    let doc = keys::key_file(&key_dir)
        .map_err(Failure::Runtime)?
        .into_document()
        .with_env_fallback(&source);
    let secrets =
        Secrets::from_document(doc, &settings).map_err(|e| Failure::Usage(e.to_string()))?;
    let http = http_client()
        .map_err(|e| Failure::Runtime(format!("cannot build the HTTP client: {e}")))?;

    let clock = Arc::new(OffsetClock::new());
    if let Some(offset) = dev
        .as_ref()
        .map(|d| d.clock_offset_seconds)
        .filter(|o| *o != 0)
    {
        clock.advance(chrono::Duration::seconds(offset));
        tracing::info!(
            offset_days = offset / 86_400,
            "the dev clock is shifted (time travel in the simulator)"
        );
    }
    let ctx = Arc::new(Context {
        settings,
        secrets,
        clock: clock.clone() as Arc<dyn Clock>,
        grants: store.clone(),
        cache: store.clone(),
        http,
    });
    Ok(Loaded {
        ctx,
        store,
        clock,
        dev,
    })
}
