//! The relay from the DynamoDB outbox to SQS. A notice is written into the outbox of the item
//! whose state change causes it, in that same write; the relay then claims the item (a lease,
//! so overlapping sweeps do not both send), sends its notices, and removes what SQS took.
//! A process that dies between the write and the send loses nothing: the notice is still in
//! the item for the next sweep. One that dies between the send and the removal sends it again
//! after the lease lapses, with the same id, which consumers drop.

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};

use super::dynamo::{DynamoStore, Holder};
use super::sqs::{Message, SqsQueue};
use crate::core::notice::Notice;
use crate::ports::{NoticeRelay, RelayStats, StoreError};

/// How long a relay holds the notices it claimed.
pub const CLAIM: Duration = Duration::minutes(2);
const PAGE: usize = 100;

#[derive(Debug, Clone)]
pub struct DynamoRelay {
    store: DynamoStore,
    queue: SqsQueue,
    owner: String,
}

impl DynamoRelay {
    pub fn new(store: DynamoStore, queue: SqsQueue) -> Self {
        let mut b = [0u8; 8];
        let owner = match getrandom::fill(&mut b) {
            Ok(()) => hex::encode(b),
            Err(_) => format!("pid-{}", std::process::id()),
        };
        DynamoRelay {
            store,
            queue,
            owner,
        }
    }

    /// Sends what the claimed items hold and removes what SQS took: (sent, not sent).
    async fn send(&self, claimed: &[Holder]) -> Result<(u64, u64), StoreError> {
        let messages: Vec<Message> = claimed
            .iter()
            .flat_map(|h| h.notices.iter())
            .map(|(id, body)| Message {
                id: id.clone(),
                body: body.clone(),
            })
            .collect();
        if messages.is_empty() {
            return Ok((0, 0));
        }
        let sent = self.queue.send(&messages).await?;
        for h in claimed {
            let mine: Vec<String> = h
                .notices
                .iter()
                .filter(|(id, _)| sent.contains(id))
                .map(|(id, _)| id.clone())
                .collect();
            if !mine.is_empty() {
                self.store.remove_relayed(h, &mine, &self.owner).await?;
            }
        }
        let sent = sent.len() as u64;
        Ok((sent, messages.len() as u64 - sent))
    }
}

#[async_trait]
impl NoticeRelay for DynamoRelay {
    async fn relay_pending(&self, now: DateTime<Utc>) -> Result<RelayStats, StoreError> {
        let mut stats = RelayStats::default();
        let mut cursor = None;
        loop {
            let (page, next) = self.store.holders(cursor, PAGE).await?;
            let mut claimed = Vec::new();
            for h in page {
                if h.leased_until.is_some_and(|u| u > now) {
                    continue;
                }
                if let Some(current) = self
                    .store
                    .claim(&h.key, &self.owner, now, now + CLAIM)
                    .await?
                {
                    claimed.push(current);
                }
            }
            let (sent, failed) = self.send(&claimed).await?;
            stats.relayed += sent;
            stats.failed += failed;
            match next {
                Some(k) => cursor = Some(k),
                None => break,
            }
        }
        Ok(stats)
    }

    /// For a notice about a grant, right after the write that queued it.
    async fn relay_now(&self, notice: &Notice, now: DateTime<Utc>) -> Result<(), StoreError> {
        let Some(grant) = &notice.grant else {
            return Ok(());
        };
        let key = (format!("G#{}", grant.id), "G".to_string());
        if let Some(claimed) = self
            .store
            .claim(&key, &self.owner, now, now + CLAIM)
            .await?
        {
            self.send(std::slice::from_ref(&claimed)).await?;
        }
        Ok(())
    }
}
