//! `seed`: writes N synthetic grants straight into a store, sealed like real ones, through the
//! store's own code. Configuration is the environment `spkeeper` itself reads.
//!
//! ```text
//! seed sqlite   --grants 1000000 --due 0.01   # into $SPKEEPER_DATA_DIR (its keys.json)
//! seed setup-aws --table T --queue Q --secret S   # table, queue and secret on moto
//! seed dynamodb --grants 20000 --due 0.01     # $SPKEEPER_TABLE, keys from $SPKEEPER_SECRETS_ARN
//! ```

use std::path::PathBuf;
use std::time::Instant;

use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};

use bench_sweep::{due_count, grant, sealed_refresh_token};
use spkeeper::config::{Env, KeyFile, Secrets, Settings};
use spkeeper::core::grant::NoticeDays;
use spkeeper::core::seal::KeyRing;
use spkeeper::ports::GrantRecord;
use spkeeper::store::sqlite::SqliteStore;

type Failure = Box<dyn std::error::Error + Send + Sync>;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone, Copy)]
struct Amount {
    /// How many grants.
    #[arg(long)]
    grants: u64,
    /// The fraction of them with a notice due at `--now`.
    #[arg(long, default_value_t = 0.01)]
    due: f64,
    /// The time the grants are laid out around (RFC 3339; default: now).
    #[arg(long)]
    now: Option<DateTime<Utc>>,
}

#[derive(Subcommand)]
enum Command {
    /// Into the embedded store of $SPKEEPER_DATA_DIR (run `spkeeper sweep --dry-run` once
    /// first: it creates the store and its key file).
    Sqlite {
        #[command(flatten)]
        amount: Amount,
        /// Grants per transaction.
        #[arg(long, default_value_t = 20_000)]
        batch: usize,
    },
    /// Creates the table, the notice queue and a secret holding fresh keys (and the client
    /// secret and API key from the environment); prints them as `export` lines.
    SetupAws {
        #[arg(long)]
        table: String,
        #[arg(long)]
        queue: String,
        #[arg(long)]
        secret: String,
    },
    /// Into $SPKEEPER_TABLE (empty), the items a launch writes, 25 items a `BatchWriteItem`.
    Dynamodb {
        #[command(flatten)]
        amount: Amount,
    },
}

fn data_dir() -> PathBuf {
    PathBuf::from(std::env::var("SPKEEPER_DATA_DIR").unwrap_or_else(|_| ".spkeeper".into()))
}

/// The keys `spkeeper` itself reads from the data directory (plus the environment's
/// secrets, as it does).
fn local_keys(settings: &Settings) -> Result<KeyRing, Failure> {
    let path = data_dir().join("keys.json");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        format!(
            "{}: {e} (run `spkeeper sweep --dry-run` first)",
            path.display()
        )
    })?;
    let file: KeyFile = serde_json::from_str(&text)?;
    let secrets = Secrets::from_document(file.into_document().with_env_fallback(&Env), settings)?;
    Ok(secrets.key_ring)
}

#[tokio::main]
async fn main() -> Result<(), Failure> {
    match Cli::parse().command {
        Command::Sqlite { amount, batch } => seed_sqlite(amount, batch.max(1)).await,
        Command::SetupAws {
            table,
            queue,
            secret,
        } => setup_aws(&table, &queue, &secret).await,
        Command::Dynamodb { amount } => seed_dynamodb(amount).await,
    }
}

async fn seed_sqlite(amount: Amount, batch: usize) -> Result<(), Failure> {
    let settings = Settings::from_source(&Env)?;
    let keys = local_keys(&settings)?;
    let store = SqliteStore::open_dir(&data_dir())?;
    let now = amount.now.unwrap_or_else(Utc::now);
    let due = due_count(amount.grants, amount.due);
    let started = Instant::now();
    let mut i = 0;
    while i < amount.grants {
        let end = (i + batch as u64).min(amount.grants);
        let rows = sealed_grants(i..end, due, now, &settings.notice_days, &keys)?;
        store.insert_new_grants(rows).await?;
        i = end;
    }
    report(amount.grants, due, started);
    Ok(())
}

/// Grants `range` (the first `due` of all of them due at `now`), each with its refresh token
/// sealed as a launch seals it.
fn sealed_grants(
    range: std::ops::Range<u64>,
    due: u64,
    now: DateTime<Utc>,
    notice_days: &NoticeDays,
    keys: &KeyRing,
) -> Result<Vec<(GrantRecord, String)>, Failure> {
    range
        .map(|i| {
            let g = grant(i, i < due, now, notice_days);
            let sealed = sealed_refresh_token(&g, i, keys)?;
            Ok((g, sealed))
        })
        .collect()
}

async fn seed_dynamodb(amount: Amount) -> Result<(), Failure> {
    let sdk = spkeeper::aws::sdk_config().await;
    let settings = Settings::from_source(&Env)?;
    let arns = std::env::var(spkeeper::aws::secrets::VAR)?;
    let doc = spkeeper::aws::secrets::load(&spkeeper::aws::SecretsClient::new(&sdk), &arns).await?;
    let keys = Secrets::from_document(doc, &settings)?.key_ring;
    let aws = spkeeper::aws::Aws::from_settings(&sdk, &settings)?;
    let now = amount.now.unwrap_or_else(Utc::now);
    let due = due_count(amount.grants, amount.due);
    let started = Instant::now();
    let mut i = 0;
    while i < amount.grants {
        let end = (i + 500).min(amount.grants);
        let rows = sealed_grants(i..end, due, now, &settings.notice_days, &keys)?;
        aws.dynamo.insert_new_grants(&rows).await?;
        i = end;
    }
    report(amount.grants, due, started);
    Ok(())
}

fn report(grants: u64, due: u64, started: Instant) {
    println!(
        "{}",
        serde_json::json!({
            "grants": grants,
            "due": due,
            "seconds": started.elapsed().as_secs_f64(),
        })
    );
}

async fn setup_aws(table: &str, queue: &str, secret: &str) -> Result<(), Failure> {
    let sdk = spkeeper::aws::sdk_config().await;
    spkeeper::aws::table::create(&aws_sdk_dynamodb::Client::new(&sdk), table).await?;
    let queue_url = aws_sdk_sqs::Client::new(&sdk)
        .create_queue()
        .queue_name(queue)
        .send()
        .await?
        .queue_url
        .ok_or("no queue URL")?;
    let mut doc = serde_json::to_value(KeyFile::generate()?)?;
    for (field, var) in [
        ("client_secret", "SPKEEPER_CLIENT_SECRET"),
        ("api_key", "SPKEEPER_API_KEY"),
    ] {
        if let Ok(v) = std::env::var(var) {
            doc[field] = serde_json::Value::String(v);
        }
    }
    let arn = aws_sdk_secretsmanager::Client::new(&sdk)
        .create_secret()
        .name(secret)
        .secret_string(doc.to_string())
        .send()
        .await?
        .arn
        .ok_or("no secret ARN")?;
    println!("export SPKEEPER_TABLE={table}");
    println!("export SPKEEPER_QUEUE_URL={queue_url}");
    println!("export SPKEEPER_SECRETS_ARN={arn}");
    Ok(())
}
