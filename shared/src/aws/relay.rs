//! The relay from the DynamoDB outbox to SQS. A notice is written into the outbox of the item
//! whose state change causes it, in that same write; the relay then claims the item (a lease,
//! so overlapping sweeps do not both send), sends its notices, and removes what SQS took.
//! A process that dies between the write and the send loses nothing: the notice is still in
//! the item for the next sweep. One that dies between the send and the removal sends it again
//! after the lease lapses, with the same id, which consumers drop. Claims and removals go
//! [`CONCURRENCY`] at a time.

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use futures_util::future;
use futures_util::stream::{self, StreamExt, TryStreamExt};

use super::dynamo::{DynamoStore, Holder};
use super::sqs::{Message, SqsQueue};
use crate::core::notice::Notice;
use crate::ports::{NoticeRelay, RelayStats, StoreError};

/// How long a relay holds the notices it claimed.
pub const CLAIM: Duration = Duration::minutes(2);
const PAGE: usize = 100;
/// Items claimed, and emptied after the send, at once: each is its own conditional
/// `UpdateItem`, so one at a time they would cost a round trip per notice, twice (at 10 ms a
/// call, 50,000 notices would need 1,000 s of a 300 s invocation).
const CONCURRENCY: usize = crate::service::sweep::CONCURRENCY;

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
        // Owned, so the futures hold no borrowed closure arguments (async_trait's Send check).
        let removals: Vec<(Holder, Vec<String>)> = claimed
            .iter()
            .filter_map(|h| {
                let mine: Vec<String> = h
                    .notices
                    .iter()
                    .filter(|(id, _)| sent.contains(id))
                    .map(|(id, _)| id.clone())
                    .collect();
                (!mine.is_empty()).then(|| (h.clone(), mine))
            })
            .collect();
        stream::iter(removals)
            .map(|(h, mine)| async move { self.store.remove_relayed(&h, &mine, &self.owner).await })
            .buffer_unordered(CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
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
            let free = page
                .into_iter()
                .filter(|h| h.leased_until.is_none_or(|u| u <= now));
            let claimed: Vec<Holder> = stream::iter(free)
                .map(|h| async move {
                    self.store
                        .claim(&h.key, &self.owner, now, now + CLAIM)
                        .await
                })
                .buffer_unordered(CONCURRENCY)
                .try_filter_map(|current| future::ready(Ok(current)))
                .try_collect()
                .await?;
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
