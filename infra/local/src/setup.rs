//! Reads configuration once, opens the store, and builds the shared context.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use spkeeper::aws::Aws;
use spkeeper::aws::secrets::VAR as SECRETS_ARN;
use spkeeper::clients::http_client;
use spkeeper::clock::{Clock, OffsetClock};
use spkeeper::config::{
    ConfigError, Env, Layered, SecretDocument, Secrets, Settings, Source, StoreChoice,
};
use spkeeper::context::Context;
use spkeeper::ports::{GrantStore, NoticeRelay, OutboxIsTheQueue, TokenCache};
use spkeeper::store::sqlite::SqliteStore;

type Ports = (
    Backend,
    Arc<dyn GrantStore>,
    Arc<dyn TokenCache>,
    Arc<dyn NoticeRelay>,
);

fn aws_sdk_secretsmanager_client(sdk: &aws_config::SdkConfig) -> spkeeper::aws::SecretsClient {
    spkeeper::aws::SecretsClient::new(sdk)
}

use crate::Failure;
use crate::dev::DevValues;
use crate::keys;

/// The data directory, needed before the rest of the configuration is read.
pub fn data_dir() -> PathBuf {
    PathBuf::from(
        Env.get("SPKEEPER_DATA_DIR")
            .unwrap_or_else(|| ".spkeeper".into()),
    )
}

/// Where the data lives.
pub enum Backend {
    Sqlite(Arc<SqliteStore>),
    /// DynamoDB and SQS (`SPKEEPER_STORE=dynamodb`), e.g. on moto or against AWS itself.
    Aws(Box<Aws>),
}

pub struct Loaded {
    pub ctx: Arc<Context>,
    pub backend: Backend,
    /// The clock: real time, or the simulator's adjustable clock with `--dev`.
    pub clock: Arc<OffsetClock>,
    pub dev: Option<DevValues>,
}

/// Whether a command runs with `--dev`. Dev values (generated configuration for whatever the
/// environment leaves unset), the simulator and its clock exist only for a command given
/// `--dev`; a plain command never reads them, and refuses a data directory that holds them.
pub enum Mode {
    /// `serve --dev`, listening on this base URL: creates the dev configuration if needed.
    DevServe { listening: String },
    /// Any other command with `--dev`: uses the dev configuration `serve --dev` made.
    Dev,
    /// Without `--dev`: production configuration only.
    Plain,
}

/// The configuration a command runs with, read before anything is opened: the settings, the
/// dev values with `--dev`, and where the secrets come from.
pub struct Configured {
    pub settings: Settings,
    pub dev: Option<DevValues>,
    /// `SPKEEPER_DATA_DIR`.
    pub data_dir: PathBuf,
    dev_source: BTreeMap<String, String>,
}

impl Configured {
    /// The environment, then (with `--dev`) the dev values for what it leaves unset.
    pub fn source(&self) -> Layered<'_> {
        Layered(vec![&Env, &self.dev_source])
    }

    /// Where the local key file lives (when the secrets are not in Secrets Manager).
    pub fn key_dir(&self) -> &Path {
        match &self.settings.store {
            StoreChoice::Sqlite { data_dir } => data_dir,
            StoreChoice::DynamoDb { .. } => &self.data_dir,
        }
    }
}

/// Reads the configuration for `mode`: the dev values (`--dev`), the settings, and the rules
/// between them. Nothing is opened yet (`serve --dev` creates its dev values).
pub fn configure(mode: &Mode) -> Result<Configured, Failure> {
    let dir = data_dir();
    let dev = match mode {
        Mode::DevServe { listening } => {
            Some(DevValues::load_or_create(&dir, listening).map_err(Failure::Runtime)?)
        }
        Mode::Dev => Some(
            DevValues::existing(&dir)
                .map_err(Failure::Runtime)?
                .ok_or_else(|| {
                    Failure::Usage(format!(
                        "{} holds no dev configuration: start `spkeeper serve --dev` first",
                        dir.display()
                    ))
                })?,
        ),
        Mode::Plain => {
            if DevValues::exists(&dir) {
                return Err(Failure::Usage(format!(
                    "{} holds a dev configuration (made by `spkeeper serve --dev`): add --dev to \
                     use it, or point SPKEEPER_DATA_DIR at another directory for production",
                    dir.display()
                )));
            }
            None
        }
    };
    let dev_source: BTreeMap<String, String> =
        dev.as_ref().map(|d| d.as_source(&Env)).unwrap_or_default();
    let settings = Settings::from_source(&Layered(vec![&Env, &dev_source]))
        .map_err(|e| Failure::Usage(e.to_string()))?;
    // Against DynamoDB the keys are the functions' own, from Secrets Manager: a local key file
    // would seal and sign with keys production rejects. Only --dev (a stand-in for AWS, e.g. on
    // moto) keeps its keys in the data directory.
    if matches!(settings.store, StoreChoice::DynamoDb { .. })
        && matches!(mode, Mode::Plain)
        && Env.get(SECRETS_ARN).is_none()
    {
        return Err(Failure::Usage(
            "SPKEEPER_SECRETS_ARN is required with SPKEEPER_STORE=dynamodb: the keys are the \
             functions' own (the stack's secret ARNs, comma-separated), never a local key file"
                .into(),
        ));
    }
    Ok(Configured {
        settings,
        dev,
        data_dir: dir,
        dev_source,
    })
}

/// The secret document from the Secrets Manager secrets in `SPKEEPER_SECRETS_ARN`, or `None`
/// when it is not set (locally: the key file and the environment).
pub async fn secrets_manager_document() -> Option<Result<SecretDocument, ConfigError>> {
    let arns = Env.get(SECRETS_ARN)?;
    let sdk = spkeeper::aws::sdk_config().await;
    let client = aws_sdk_secretsmanager_client(&sdk);
    Some(spkeeper::aws::secrets::load(&client, &arns).await)
}

pub async fn load(mode: Mode) -> Result<Loaded, Failure> {
    let configured = configure(&mode)?;
    let runtime = |e: &dyn std::fmt::Display| Failure::Runtime(e.to_string());
    let (backend, grants, cache, relay): Ports = match &configured.settings.store {
        StoreChoice::Sqlite { data_dir } => {
            let store = Arc::new(SqliteStore::open_dir(data_dir).map_err(|e| runtime(&e))?);
            let parts = (store.clone(), store.clone());
            (
                Backend::Sqlite(store),
                parts.0,
                parts.1,
                Arc::new(OutboxIsTheQueue),
            )
        }
        StoreChoice::DynamoDb { .. } => {
            let sdk = spkeeper::aws::sdk_config().await;
            let aws = Aws::from_settings(&sdk, &configured.settings)
                .map_err(|e| Failure::Usage(e.to_string()))?;
            let parts = (
                Arc::new(aws.dynamo.clone()),
                Arc::new(aws.dynamo.clone()),
                Arc::new(aws.relay.clone()),
            );
            (Backend::Aws(Box::new(aws)), parts.0, parts.1, parts.2)
        }
    };
    // In AWS the secrets are Secrets Manager secrets; locally, the key file and the
    // environment.
    let doc = match secrets_manager_document().await {
        Some(doc) => doc.map_err(|e| Failure::Usage(e.to_string()))?,
        None => keys::key_file(configured.key_dir())
            .map_err(Failure::Runtime)?
            .into_document()
            .with_env_fallback(&configured.source()),
    };
    let Configured { settings, dev, .. } = configured;
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
        // The key file and the environment change only with a restart.
        secrets: spkeeper::secrets_cell::SecretsCell::fixed(secrets),
        clock: clock.clone() as Arc<dyn Clock>,
        grants,
        cache,
        relay,
        http,
    });
    Ok(Loaded {
        ctx,
        backend,
        clock,
        dev,
    })
}
