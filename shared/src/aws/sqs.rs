//! The SQS notice queue: `SendMessageBatch` in batches of at most 10 entries and 256 KiB,
//! retrying only the entries that failed.

use std::time::Duration;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;

use crate::ports::StoreError;

/// SQS's limits for one `SendMessageBatch`.
pub const MAX_BATCH_ENTRIES: usize = 10;
pub const MAX_BATCH_BYTES: usize = 256 * 1024;
/// Rounds of retrying the entries SQS failed (not our fault), with a short backoff.
const RETRY_ROUNDS: u32 = 3;

/// One message: the notice id (also the batch entry id) and its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: String,
    pub body: String,
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

    /// Sends every message; returns the ids SQS accepted. Entries SQS failed through no fault
    /// of ours are retried; the rest are left to the caller (they stay in the outbox).
    pub async fn send(&self, messages: &[Message]) -> Result<Vec<String>, StoreError> {
        let mut sent = Vec::new();
        for batch in batches(messages) {
            let mut pending: Vec<&Message> = batch;
            for round in 0..=RETRY_ROUNDS {
                if pending.is_empty() {
                    break;
                }
                if round > 0 {
                    tokio::time::sleep(Duration::from_millis(100 * 2u64.pow(round))).await;
                }
                let entries = pending
                    .iter()
                    .map(|m| {
                        SendMessageBatchRequestEntry::builder()
                            .id(&m.id)
                            .message_body(&m.body)
                            .build()
                            .map_err(StoreError::unavailable)
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let out = self
                    .client
                    .send_message_batch()
                    .queue_url(&self.url)
                    .set_entries(Some(entries))
                    .send()
                    .await
                    .map_err(|e| StoreError::unavailable(aws_sdk_sqs::Error::from(e)))?;
                sent.extend(out.successful().iter().map(|s| s.id().to_string()));
                let mut retry = Vec::new();
                for f in out.failed() {
                    if f.sender_fault() {
                        tracing::error!(
                            notice_id = f.id(),
                            code = f.code(),
                            "SQS refused a notice; it stays queued"
                        );
                    } else if let Some(m) = pending.iter().find(|m| m.id == f.id()) {
                        retry.push(*m);
                    }
                }
                pending = retry;
            }
            for m in pending {
                tracing::warn!(notice_id = %m.id, "SQS kept failing a notice; it stays queued for the next sweep");
            }
        }
        Ok(sent)
    }
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
