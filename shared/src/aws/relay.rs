//! The relay from the DynamoDB outbox to SQS. A notice is written into the outbox of the item
//! whose state change causes it, in that same write; the relay holds the item (a lease, so
//! overlapping sweeps do not both send), sends its notices, and removes what SQS took. The
//! sweep's writes take the lease themselves, for the relay built on the same store
//! ([`DynamoStore::take_leased`]); other items the relay claims first, with a write of its own.
//! A process that dies between the write and the send loses nothing: the notice is still in
//! the item for the next sweep, once the lease lapses. One that dies between the send and the
//! removal sends it again after the lease lapses, with the same id, which consumers drop.
//! Claims and removals go [`CONCURRENCY`] at a time.

use async_trait::async_trait;
use chrono::Duration;
use futures_util::future;
use futures_util::stream::{self, StreamExt, TryStreamExt};

use super::dynamo::{DynamoStore, Holder};
use super::sqs::{Message, SqsQueue};
use crate::core::notice::Notice;
use crate::ports::{NoticeRelay, RelayStats, StoreError};

/// How long a relay holds the notices it claimed, by the wall clock.
pub const CLAIM: Duration = Duration::minutes(2);
/// A relay sends what it holds only while its lease has this much left: more than an SQS
/// send can take ([`super::sqs::SEND_TIMEOUT`], retries included), so no lease lapses, and
/// no other relay claims the item, while its notices are on their way.
pub const SEND_MARGIN: Duration = Duration::seconds(30);
const PAGE: usize = 100;
/// Items claimed, and emptied after the send, at once: each is its own conditional
/// `UpdateItem`, so one at a time they would cost a round trip per notice, twice (at 10 ms a
/// call, 50,000 notices would need 1,000 s of a 300 s invocation).
const CONCURRENCY: usize = crate::service::sweep::CONCURRENCY;

/// Leases items as the store it is built on ([`DynamoStore::relay_owner`]), so it sends what
/// that store's sweep writes leased.
#[derive(Debug, Clone)]
pub struct DynamoRelay {
    store: DynamoStore,
    queue: SqsQueue,
}

impl DynamoRelay {
    pub fn new(store: DynamoStore, queue: SqsQueue) -> Self {
        DynamoRelay { store, queue }
    }

    fn owner(&self) -> &str {
        self.store.relay_owner()
    }

    /// The items the store's sweep writes leased for this relay, once there are `at_least`,
    /// sent without a claim while their leases hold [`SEND_MARGIN`] longer (the others wait
    /// in the outbox index for whoever holds them next).
    async fn send_leased(&self, at_least: usize) -> Result<RelayStats, StoreError> {
        let mut stats = RelayStats::default();
        // A page at a time, each taken (and its leases' margin checked) just before its send:
        // a slow send of one page cannot use up the leases of the pages after it.
        loop {
            let page = self.store.take_leased(at_least, PAGE);
            if page.is_empty() {
                return Ok(stats);
            }
            let (sent, failed) = self.send(&page).await?;
            stats.relayed += sent;
            stats.failed += failed;
        }
    }

    /// Sends the notices of the items this relay holds (leased to it) and removes what SQS
    /// took: (sent, not sent).
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
        // What SQS did not take (its error logged there) stays in the outbox, under our
        // lease until it lapses, for the next relay.
        let sent = self.queue.send(&messages).await;
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
            .map(
                |(h, mine)| async move { self.store.remove_relayed(&h, &mine, self.owner()).await },
            )
            .buffer_unordered(CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        let sent = sent.len() as u64;
        Ok((sent, messages.len() as u64 - sent))
    }
}

#[async_trait]
impl NoticeRelay for DynamoRelay {
    /// What the store's sweep writes leased for this relay, then the outbox index: the items
    /// no live lease holds are claimed first (ours are skipped, having just been sent).
    async fn relay_pending(&self) -> Result<RelayStats, StoreError> {
        let mut stats = self.send_leased(0).await?;
        let mut cursor = None;
        loop {
            let (page, next) = self.store.holders(cursor, PAGE).await?;
            let now = self.store.lease_now();
            let free = page
                .into_iter()
                .filter(|h| h.leased_until.is_none_or(|u| u <= now));
            let claimed: Vec<Holder> = stream::iter(free)
                .map(|h| async move { self.store.claim(&h.key).await })
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
    async fn relay_now(&self, notice: &Notice) -> Result<(), StoreError> {
        let Some(grant) = &notice.grant else {
            return Ok(());
        };
        let key = (format!("G#{}", grant.id), "G".to_string());
        if let Some(claimed) = self.store.claim(&key).await? {
            self.send(std::slice::from_ref(&claimed)).await?;
        }
        Ok(())
    }

    /// Once [`PAGE`] have gathered (full SQS batches; `relay_pending` sends the rest).
    async fn relay_written(&self) -> Result<RelayStats, StoreError> {
        self.send_leased(PAGE).await
    }
}

// A send is over before the margin a relay keeps on its lease is used up.
const _: () = assert!(super::sqs::SEND_TIMEOUT.as_secs() < SEND_MARGIN.num_seconds() as u64);
