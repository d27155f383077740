//! `spkeeper`: the whole system on one machine. This file only parses the command line and
//! wires; the logic lives in the `spkeeper` crate.

mod commands;
mod dev;
mod keys;
mod serve;
mod setup;

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Keeps SharePoint add-in users connected: validates and stores the refresh token from each
/// launch, exchanges it for access tokens, and sends renewal notices before it expires.
///
/// Configuration comes from SPKEEPER_* environment variables (see the README); secrets are
/// never printed.
#[derive(Parser)]
#[command(name = "spkeeper", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Every HTTP route, the sweep on a timer, and notice delivery, on one machine.
    Serve {
        /// Address to listen on (port 0: any free port; the URL is printed).
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: SocketAddr,
        /// Add the SharePoint/ACS simulator and fill in missing configuration with dev values.
        #[arg(long)]
        dev: bool,
        /// Seconds between sweeps.
        #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
        sweep_interval: u64,
    },
    /// Run one sweep and print a one-line JSON summary.
    Sweep {
        /// Sweep as if it were this time (RFC 3339).
        #[arg(long, value_parser = parse_time)]
        now: Option<chrono::DateTime<chrono::Utc>>,
        /// Report what would be sent without writing anything.
        #[arg(long)]
        dry_run: bool,
    },
    /// Every grant, without tokens.
    Grants {
        #[arg(long)]
        json: bool,
    },
    /// Print a signed renew URL for a grant.
    RenewLink {
        /// The grant id (32 lowercase hex digits).
        grant_id: String,
    },
    /// Notices queued and not yet delivered (embedded store).
    Notices {
        #[arg(long)]
        json: bool,
    },
}

fn parse_time(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|_| "expected an RFC 3339 time, e.g. 2026-06-01T00:00:00Z".to_string())
}

/// How a command ended: the contract's exit statuses.
pub enum Failure {
    /// Bad usage or configuration: exit 2.
    Usage(String),
    /// Anything else: exit 1.
    Runtime(String),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    setup::init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve {
                addr,
                dev,
                sweep_interval,
            } => serve::run(addr, dev, sweep_interval).await,
            Command::Sweep { now, dry_run } => commands::sweep(now, dry_run).await,
            Command::Grants { json } => commands::grants(json).await,
            Command::RenewLink { grant_id } => commands::renew_link(&grant_id).await,
            Command::Notices { json } => commands::notices(json).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(1)
        }
    }
}
