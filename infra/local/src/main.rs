//! `spkeeper`: the whole system on one machine. This file only parses the command line and
//! wires; the logic lives in the `spkeeper` crate.

mod commands;
mod dev;
mod doctor;
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
#[command(name = "spkeeper", version, about, disable_help_flag = true)]
struct Cli {
    /// Print help (-h and --help print the same).
    #[arg(short, long, action = clap::ArgAction::HelpLong, global = true)]
    help: Option<bool>,
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
        /// Sweep as if it were this time (RFC 3339). Outside --dev, a time in the future
        /// needs --dry-run (or --force).
        #[arg(long, value_parser = parse_time)]
        now: Option<chrono::DateTime<chrono::Utc>>,
        /// Report what would be sent without writing anything.
        #[arg(long)]
        dry_run: bool,
        /// With a future --now: write anyway (a deliberate rehearsal).
        #[arg(long)]
        force: bool,
        /// Use the dev configuration and simulated clock made by `serve --dev`.
        #[arg(long)]
        dev: bool,
    },
    /// Every grant, without tokens.
    Grants {
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
        /// Use the dev configuration made by `serve --dev`.
        #[arg(long)]
        dev: bool,
    },
    /// Print a signed renew URL for a grant.
    RenewLink {
        /// The grant id (32 lowercase hex digits).
        grant_id: String,
        /// Use the dev configuration made by `serve --dev`.
        #[arg(long)]
        dev: bool,
    },
    /// Ask every ACS grant's user to sign in with the Entra app: one grant.migration_required
    /// notice per grant, once (needs SPKEEPER_RENEW_VIA=entra).
    Migrate {
        /// Count what would be queued, queue nothing.
        #[arg(long)]
        dry_run: bool,
        /// Use the dev configuration made by `serve --dev`.
        #[arg(long)]
        dev: bool,
    },
    /// Erase a grant: its refresh token, cached access tokens, details and queued notices.
    Forget {
        /// The grant id (32 lowercase hex digits).
        grant_id: String,
        /// Use the dev configuration made by `serve --dev`.
        #[arg(long)]
        dev: bool,
    },
    /// Check the configuration and reach what spkeeper depends on: the token services,
    /// SharePoint sites, the webhook (a signed webhook.test notice) and the store. One line per
    /// check (ok, warn, fail, skip); exit 1 if a check failed, 2 if the configuration is unusable.
    Doctor {
        /// One JSON array of {"check","status","detail"} objects instead of lines.
        #[arg(long)]
        json: bool,
        /// A SharePoint site to check with realm discovery (repeat for several).
        #[arg(long = "site", value_name = "URL", value_parser = parse_site)]
        sites: Vec<String>,
        /// Use the dev configuration made by `serve --dev`.
        #[arg(long)]
        dev: bool,
    },
    /// Print a shell completion script (bash, zsh, fish).
    ///
    /// bash: `spkeeper completions bash > /etc/bash_completion.d/spkeeper`; zsh: save it as
    /// `_spkeeper` in a directory on $fpath; fish: save it as
    /// ~/.config/fish/completions/spkeeper.fish.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Notices queued and not yet delivered: on the embedded store all of them, dead letters
    /// included; on DynamoDB those not yet on SQS, or with --dead-letter-queue the notices SQS
    /// gave up on.
    Notices {
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
        /// On DynamoDB: list the notice dead-letter queue (the stack's NoticeDeadLetterQueueUrl)
        /// instead, without deleting anything.
        #[arg(long, value_name = "URL")]
        dead_letter_queue: Option<String>,
        /// Use the dev configuration made by `serve --dev`.
        #[arg(long)]
        dev: bool,
    },
}

fn parse_time(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|_| "expected an RFC 3339 time, e.g. 2026-06-01T00:00:00Z".to_string())
}

fn parse_site(s: &str) -> Result<String, String> {
    url::Url::parse(s.trim())
        .ok()
        .filter(|u| matches!(u.scheme(), "https" | "http") && u.host().is_some())
        .map(|_| s.trim().to_string())
        .ok_or_else(|| {
            "expected a site's absolute URL, e.g. https://contoso.sharepoint.com/sites/sales"
                .to_string()
        })
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
    if let Command::Completions { shell } = cli.command {
        use clap::CommandFactory;
        clap_complete::generate(
            shell,
            &mut Cli::command(),
            "spkeeper",
            &mut std::io::stdout(),
        );
        return ExitCode::SUCCESS;
    }
    spkeeper::logging::init_cli();
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
            Command::Sweep {
                now,
                dry_run,
                force,
                dev,
            } => commands::sweep(now, dry_run, force, dev).await,
            Command::Grants { json, dev } => commands::grants(json, dev).await,
            Command::RenewLink { grant_id, dev } => commands::renew_link(&grant_id, dev).await,
            Command::Forget { grant_id, dev } => commands::forget(&grant_id, dev).await,
            Command::Migrate { dry_run, dev } => commands::migrate(dry_run, dev).await,
            Command::Notices {
                json,
                dev,
                dead_letter_queue,
            } => commands::notices(json, dev, dead_letter_queue.as_deref()).await,
            Command::Doctor { json, sites, dev } => doctor::run(dev, json, &sites).await,
            Command::Completions { .. } => Ok(()),
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
