//! The SQS notice queue: `SendMessageBatch` in batches of at most 10 entries and 256 KiB,
//! retrying only the entries that failed.

use std::time::{Duration, Instant};

use aws_sdk_sqs::Client;
use aws_sdk_sqs::config::timeout::TimeoutConfig;
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use futures_util::stream::{self, StreamExt};

use crate::ports::StoreError;
use crate::service::deliver::backoff;

/// SQS's limits for one `SendMessageBatch`.
pub const MAX_BATCH_ENTRIES: usize = 10;
pub const MAX_BATCH_BYTES: usize = 256 * 1024;
/// Rounds of retrying the entries SQS failed (not our fault), with a short backoff.
const RETRY_ROUNDS: u32 = 3;
/// Batches in flight at once: a relay page of 100 notices is ten batches, one round trip
/// instead of ten.
const SEND_CONCURRENCY: usize = 10;
/// Each request ends within this (the SDK's own retries included), or by the end of the whole
/// send's budget when that comes first.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// No request starts with less time than this before the end of its send's budget.
const MIN_REQUEST: Duration = Duration::from_millis(500);
/// The budget of a send of one relay page (100 notices, ten batches at once): long enough for
/// the retry rounds, and well inside the margin a relay keeps on its lease
/// ([`super::relay::SEND_MARGIN`]).
pub const PAGE_SEND_BUDGET: Duration = Duration::from_secs(20);

/// One message: the notice id (also the batch entry id) and its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: String,
    pub body: String,
}

/// What became of a send: the ids SQS took, and those it refused as they are (a sender
/// fault: no retry would change its answer). The others it did not take this time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sent {
    pub accepted: Vec<String>,
    pub refused: Vec<String>,
}

/// The longest SQS lets a message stay hidden is 12 hours from when it was received. A
/// failed delivery sets its delay some seconds after the receive (the batching window, the
/// delivery itself), so the cap keeps a quarter of an hour's margin.
pub const MAX_VISIBILITY_SECONDS: i32 = 12 * 3600 - 15 * 60;

/// How long a notice whose delivery failed stays hidden before its next attempt, by the
/// message's receive count (the attempt that just failed): the embedded outbox's schedule
/// ([`backoff`]: doubling from 2 s, at most 6 h, ±20 %), within SQS's maximum. With the
/// notice queue's `maxReceiveCount` (template.yaml) the attempts span more than a day before
/// the dead-letter queue, as they do in the embedded outbox.
pub fn retry_delay(receive_count: u32, jitter_unit: f64) -> i32 {
    let seconds = backoff(receive_count.max(1), jitter_unit).num_seconds();
    i32::try_from(seconds)
        .unwrap_or(i32::MAX)
        .clamp(0, MAX_VISIBILITY_SECONDS)
}

/// A message's `ApproximateReceiveCount` attribute; 1 when missing or unreadable (the
/// shortest delay: a wrong count never holds a notice back longer than its schedule).
pub fn receive_count(attribute: Option<&str>) -> u32 {
    attribute
        .and_then(|v| v.trim().parse::<u32>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(1)
}

/// A uniform number in [0, 1] for the jitter.
fn unit_random() -> f64 {
    let mut b = [0u8; 4];
    if getrandom::fill(&mut b).is_err() {
        return 0.5;
    }
    f64::from(u32::from_le_bytes(b)) / f64::from(u32::MAX)
}

#[derive(Clone)]
pub struct SqsQueue {
    client: Client,
    url: String,
}

impl std::fmt::Debug for SqsQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqsQueue").field("url", &self.url).finish()
    }
}

/// Splits messages into batches within SQS's entry and size limits.
pub fn batches(messages: &[Message]) -> Vec<Vec<&Message>> {
    let mut out: Vec<Vec<&Message>> = Vec::new();
    let mut bytes = 0;
    for m in messages {
        let size = m.body.len();
        let start_new = match out.last() {
            None => true,
            Some(b) => b.len() == MAX_BATCH_ENTRIES || bytes + size > MAX_BATCH_BYTES,
        };
        if start_new {
            out.push(Vec::new());
            bytes = 0;
        }
        bytes += size;
        if let Some(b) = out.last_mut() {
            b.push(m);
        }
    }
    out
}

impl SqsQueue {
    pub fn new(client: Client, url: impl Into<String>) -> Self {
        SqsQueue {
            client,
            url: url.into(),
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Hides a message whose delivery failed for its [`retry_delay`] (instead of the queue's
    /// fixed visibility timeout); returns the delay in seconds.
    pub async fn retry_later(
        &self,
        receipt_handle: &str,
        receive_count: u32,
    ) -> Result<i32, StoreError> {
        let delay = retry_delay(receive_count, unit_random());
        self.client
            .change_message_visibility()
            .queue_url(&self.url)
            .receipt_handle(receipt_handle)
            .visibility_timeout(delay)
            .send()
            .await
            .map_err(|e| StoreError::unavailable(aws_sdk_sqs::Error::from(e)))?;
        Ok(delay)
    }

    /// Sends every message, [`SEND_CONCURRENCY`] batches of ten at a time, and is done within
    /// `budget`, however SQS answers: no request starts that could end after it. Returns what
    /// SQS took and what it refused, from every batch, whatever became of the others. Entries
    /// SQS failed through no fault of ours are retried; what it never took (refused, or its
    /// request failed: both logged here, without bodies) is left to the caller: it stays in
    /// the outbox.
    pub async fn send(&self, messages: &[Message], budget: Duration) -> Sent {
        let end = Instant::now() + budget;
        // Owned batches: the futures must not hold references into a closure's arguments
        // (the relay's async_trait futures are `Send`).
        let owned: Vec<Vec<Message>> = batches(messages)
            .into_iter()
            .map(|b| b.into_iter().cloned().collect())
            .collect();
        let sent: Vec<Sent> = stream::iter(owned)
            .map(|batch| async move { self.send_batch(&batch, end).await })
            .buffer_unordered(SEND_CONCURRENCY)
            .collect()
            .await;
        let mut all = Sent::default();
        for s in sent {
            all.accepted.extend(s.accepted);
            all.refused.extend(s.refused);
        }
        all
    }

    /// One batch, its entries SQS failed through no fault of ours retried while a request
    /// can still be given [`MIN_REQUEST`] before `end`.
    async fn send_batch(&self, batch: &[Message], end: Instant) -> Sent {
        let mut sent = Sent::default();
        let mut pending: Vec<&Message> = batch.iter().collect();
        for round in 0..=RETRY_ROUNDS {
            if pending.is_empty() {
                break;
            }
            if round > 0 {
                let pause = Duration::from_millis(100 * 2u64.pow(round));
                if Instant::now() + pause + MIN_REQUEST > end {
                    break;
                }
                tokio::time::sleep(pause).await;
            }
            // Each request ends by `end` (its timeout is what is left, at most
            // REQUEST_TIMEOUT), and none starts with less than MIN_REQUEST left (not even a
            // batch's first, one waiting behind the others in a large send).
            let request_timeout =
                REQUEST_TIMEOUT.min(end.saturating_duration_since(Instant::now()));
            if request_timeout < MIN_REQUEST {
                break;
            }
            let entries: Vec<SendMessageBatchRequestEntry> = pending
                .iter()
                .filter_map(|m| {
                    SendMessageBatchRequestEntry::builder()
                        .id(&m.id)
                        .message_body(&m.body)
                        .build()
                        .ok()
                })
                .collect();
            let timeouts = TimeoutConfig::builder()
                .connect_timeout(request_timeout)
                .operation_timeout(request_timeout)
                .build();
            let out = match self
                .client
                .send_message_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .customize()
                .config_override(aws_sdk_sqs::config::Builder::new().timeout_config(timeouts))
                .send()
                .await
            {
                Ok(out) => out,
                Err(e) => {
                    tracing::warn!(
                        error = %aws_sdk_sqs::Error::from(e),
                        notices = pending.len(),
                        "SQS did not take a batch of notices; they stay queued for the next relay"
                    );
                    return sent;
                }
            };
            sent.accepted
                .extend(out.successful().iter().map(|s| s.id().to_string()));
            let mut retry = Vec::new();
            for f in out.failed() {
                if f.sender_fault() {
                    // Counted by the stack's NoticeRefusedAlarm (its metric filter).
                    tracing::error!(
                        event = "notice_refused",
                        notice_id = f.id(),
                        code = f.code(),
                        "SQS refused a notice as it is; it stays queued, and an operator must look"
                    );
                    sent.refused.push(f.id().to_string());
                } else if let Some(m) = pending.iter().find(|m| m.id == f.id()) {
                    retry.push(*m);
                }
            }
            pending = retry;
        }
        for m in pending {
            tracing::warn!(notice_id = %m.id, "SQS kept failing a notice; it stays queued for the next sweep");
        }
        sent
    }

    /// Reads up to `limit` messages without deleting them (`spkeeper notices
    /// --dead-letter-queue`). Each receive hides what it returns for `hide_for` seconds, so the
    /// next returns others; the reading ends when a receive brings nothing not yet seen, and
    /// then every message read is made visible again at once. SQS samples its servers, so a
    /// queue being written to may show fewer than it holds.
    pub async fn peek(&self, limit: usize, hide_for: i32) -> Result<Vec<Peeked>, StoreError> {
        use aws_sdk_sqs::types::MessageSystemAttributeName as A;
        let mut out: Vec<Peeked> = Vec::new();
        let mut receipts: Vec<String> = Vec::new();
        while out.len() < limit {
            let got = self
                .client
                .receive_message()
                .queue_url(&self.url)
                .max_number_of_messages(10)
                .visibility_timeout(hide_for)
                .wait_time_seconds(1)
                .message_system_attribute_names(A::ApproximateReceiveCount)
                .message_system_attribute_names(A::SentTimestamp)
                .send()
                .await
                .map_err(|e| StoreError::unavailable(aws_sdk_sqs::Error::from(e)))?;
            let before = out.len();
            for m in got.messages() {
                receipts.extend(m.receipt_handle().map(String::from));
                let id = m.message_id().unwrap_or_default();
                if out.iter().any(|p| p.message_id == id) || out.len() >= limit {
                    continue;
                }
                let attr = |a: A| {
                    m.attributes()
                        .and_then(|all| all.get(&a))
                        .map(String::as_str)
                };
                out.push(Peeked {
                    message_id: id.to_string(),
                    body: m.body().unwrap_or_default().to_string(),
                    receive_count: receive_count(attr(A::ApproximateReceiveCount)),
                    sent_at: attr(A::SentTimestamp)
                        .and_then(|t| t.trim().parse::<i64>().ok())
                        .and_then(chrono::DateTime::from_timestamp_millis),
                });
            }
            if out.len() == before {
                break;
            }
        }
        self.show_again(&receipts).await;
        Ok(out)
    }

    /// Makes received messages visible again now (if this fails they reappear when their
    /// visibility timeout ends).
    async fn show_again(&self, receipts: &[String]) {
        use aws_sdk_sqs::types::ChangeMessageVisibilityBatchRequestEntry as Entry;
        for chunk in receipts.chunks(MAX_BATCH_ENTRIES) {
            let entries: Vec<Entry> = chunk
                .iter()
                .enumerate()
                .filter_map(|(i, r)| {
                    Entry::builder()
                        .id(i.to_string())
                        .receipt_handle(r)
                        .visibility_timeout(0)
                        .build()
                        .ok()
                })
                .collect();
            let sent = self
                .client
                .change_message_visibility_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await;
            if let Err(e) = sent {
                tracing::warn!(error = %aws_sdk_sqs::Error::from(e), "could not make the messages read visible again; they reappear when their visibility timeout ends");
            }
        }
    }
}

/// A message read, not deleted ([`SqsQueue::peek`]).
#[derive(Debug, Clone)]
pub struct Peeked {
    pub message_id: String,
    pub body: String,
    pub receive_count: u32,
    pub sent_at: Option<chrono::DateTime<chrono::Utc>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(i: usize, size: usize) -> Message {
        Message {
            id: format!("ntc_{i}"),
            body: "x".repeat(size),
        }
    }

    #[test]
    fn retries_back_off_exponentially_within_the_sqs_maximum() {
        assert_eq!(retry_delay(1, 0.5), 2);
        assert_eq!(retry_delay(2, 0.5), 4);
        assert_eq!(retry_delay(10, 0.5), 1024);
        let mut previous = 0;
        for r in 1..=40 {
            let (low, high) = (retry_delay(r, 0.0), retry_delay(r, 1.0));
            assert!(low <= high && high <= MAX_VISIBILITY_SECONDS, "{r}");
            assert!(high <= 12 * 3600, "SQS takes at most 12 hours");
            assert!(low >= previous, "never shorter than the one before ({r})");
            previous = low;
        }
        assert_eq!(
            retry_delay(0, 0.5),
            retry_delay(1, 0.5),
            "a missing count is the first"
        );
    }

    #[test]
    fn attempts_up_to_the_outbox_maximum_span_more_than_a_day() {
        use crate::service::deliver::MAX_ATTEMPTS;
        // The delays after each failed receive but the last, at the shortest jitter.
        let total: i64 = (1..MAX_ATTEMPTS)
            .map(|r| i64::from(retry_delay(r, 0.0)))
            .sum();
        assert!(total >= 24 * 3600, "{total} s");
    }

    #[test]
    fn the_receive_count_is_read_from_the_attribute() {
        assert_eq!(receive_count(Some("7")), 7);
        assert_eq!(receive_count(Some(" 3 ")), 3);
        assert_eq!(receive_count(Some("0")), 1);
        assert_eq!(receive_count(Some("many")), 1);
        assert_eq!(receive_count(None), 1);
    }

    #[test]
    fn batches_hold_at_most_ten_entries() {
        let m: Vec<_> = (0..23).map(|i| msg(i, 100)).collect();
        let b = batches(&m);
        assert_eq!(b.iter().map(Vec::len).collect::<Vec<_>>(), vec![10, 10, 3]);
    }

    #[test]
    fn batches_stay_within_256_kib() {
        let m: Vec<_> = (0..5).map(|i| msg(i, 100 * 1024)).collect();
        let b = batches(&m);
        assert_eq!(b.iter().map(Vec::len).collect::<Vec<_>>(), vec![2, 2, 1]);
        assert!(
            b.iter()
                .all(|b| b.iter().map(|m| m.body.len()).sum::<usize>() <= MAX_BATCH_BYTES)
        );
    }
}
