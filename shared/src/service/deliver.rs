//! Notice delivery from the embedded outbox: Standard Webhooks, retried with backoff, and
//! dead-lettered (kept, visible in `spkeeper notices`) when the retries run out.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};

use crate::clients::{DeliveryError, WebhookSender};
use crate::ports::{DeliveryOutcome, Outbox, StoreError};

/// Attempts before a notice is dead-lettered: with the backoff below, 31 to 47 hours of trying.
pub const MAX_ATTEMPTS: u32 = 20;
const BATCH: usize = 50;

/// Delay before attempt `attempts + 1`: 2^attempts seconds, at most 6 hours, ±20% jitter.
pub fn backoff(attempts: u32, jitter_unit: f64) -> Duration {
    let base = 2f64.powi(attempts.min(20) as i32).min(6.0 * 3600.0);
    let jitter = 0.8 + 0.4 * jitter_unit.clamp(0.0, 1.0);
    Duration::milliseconds((base * jitter * 1000.0) as i64)
}

fn unit_random() -> f64 {
    let mut b = [0u8; 4];
    if getrandom::fill(&mut b).is_err() {
        return 0.5;
    }
    f64::from(u32::from_le_bytes(b)) / f64::from(u32::MAX)
}

/// Delivers one queued notice body (an SQS message, or an outbox row): its `id` is the
/// webhook id. Returns that id.
pub async fn deliver_body(sender: &WebhookSender, body: &str) -> Result<String, DeliveryError> {
    let id = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["id"].as_str().map(String::from))
        .filter(|id| !id.is_empty())
        .ok_or(DeliveryError::Malformed)?;
    sender.send(&id, body, Utc::now().timestamp()).await?;
    Ok(id)
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryStats {
    pub delivered: u32,
    pub retried: u32,
    pub dead: u32,
}

pub struct Deliverer {
    outbox: Arc<dyn Outbox>,
    sender: WebhookSender,
}

impl Deliverer {
    pub fn new(outbox: Arc<dyn Outbox>, sender: WebhookSender) -> Self {
        Deliverer { outbox, sender }
    }

    /// One pass over what is ready at `now` (wall-clock time).
    pub async fn deliver_ready(&self, now: DateTime<Utc>) -> Result<DeliveryStats, StoreError> {
        let mut stats = DeliveryStats::default();
        for entry in self.outbox.ready(now, BATCH).await? {
            let result = self
                .sender
                .send(&entry.id, &entry.body, now.timestamp())
                .await;
            let attempts = entry.attempts + 1;
            match result {
                Ok(()) => {
                    self.outbox
                        .record_attempt(&entry.id, DeliveryOutcome::Delivered, now)
                        .await?;
                    tracing::info!(notice_id = %entry.id, attempts, "notice delivered");
                    stats.delivered += 1;
                }
                Err(e) if attempts >= MAX_ATTEMPTS => {
                    let reason = e.to_string();
                    self.outbox
                        .record_attempt(&entry.id, DeliveryOutcome::Dead(&reason), now)
                        .await?;
                    tracing::error!(notice_id = %entry.id, attempts, error = %reason, "notice dead-lettered after its last attempt");
                    stats.dead += 1;
                }
                Err(e) => {
                    let reason = e.to_string();
                    let at = now + backoff(attempts, unit_random());
                    self.outbox
                        .record_attempt(&entry.id, DeliveryOutcome::RetryAt(at, &reason), now)
                        .await?;
                    tracing::warn!(notice_id = %entry.id, attempts, error = %reason, retry_at = %at, "notice delivery failed; will retry");
                    stats.retried += 1;
                }
            }
        }
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        assert_eq!(backoff(0, 0.5), Duration::seconds(1));
        assert_eq!(backoff(3, 0.5), Duration::seconds(8));
        assert_eq!(backoff(3, 0.0), Duration::milliseconds(6400));
        assert_eq!(backoff(3, 1.0), Duration::milliseconds(9600));
        assert_eq!(backoff(30, 0.5), Duration::hours(6));
    }

    #[test]
    fn retries_span_more_than_a_day_before_dead_lettering() {
        let total: i64 = (1..MAX_ATTEMPTS)
            .map(|a| backoff(a, 0.0).num_seconds())
            .sum();
        assert!(total > 24 * 3600, "{total}");
    }
}
