//! The `sweep` Lambda function: on its EventBridge schedule, one sweep (notices into the
//! outbox, then onto SQS), with its JSON summary in the log and as the result. Safe to run
//! twice at once: every notice is a conditional write.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lambda_events::eventbridge::EventBridgeEvent;
use lambda_runtime::{Error, LambdaEvent, service_fn};
use spkeeper::config::Program;
use spkeeper::service::sweep::{SweepService, SweepSummary};

/// The sweep's deadline is this long before Lambda's: left for what is in flight when it
/// passes (a keep-alive redemption takes at most a few seconds) and the summary. The sweep
/// itself stops visiting grants its relay's reserve ([`spkeeper::aws::relay::RELAY_RESERVE`],
/// 30 s) earlier still, so the relay can send what the visits queued by the deadline.
const DEADLINE_MARGIN: Duration = Duration::from_secs(15);

#[tokio::main]
async fn main() -> Result<(), Error> {
    spkeeper::logging::init_lambda();
    let (ctx, _aws) = spkeeper::aws::init_context(Program::Sweep)
        .await
        .inspect_err(|e| tracing::error!(error = %e, "cannot start"))?;
    let sweep = Arc::new(SweepService::new(ctx));
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<EventBridgeEvent<serde_json::Value>>| {
            let sweep = Arc::clone(&sweep);
            async move { run(&sweep, event).await }
        },
    ))
    .await
}

async fn run(
    sweep: &SweepService,
    event: LambdaEvent<EventBridgeEvent<serde_json::Value>>,
) -> Result<SweepSummary, Error> {
    tracing::info!(scheduled = ?event.payload.time, "sweeping");
    // Stop cleanly before Lambda's deadline: what is left stays due for the next run.
    let remaining_ms = event
        .context
        .deadline
        .saturating_sub(u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0));
    let deadline =
        Instant::now() + Duration::from_millis(remaining_ms).saturating_sub(DEADLINE_MARGIN);
    let summary = sweep
        .run_until(chrono::Utc::now(), false, Some(deadline))
        .await
        .inspect_err(|e| tracing::error!(error = %e, "sweep failed"))?;
    Ok(summary)
}
