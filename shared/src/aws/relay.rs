//! The relay from the DynamoDB outbox to SQS. A notice is written into the outbox of the item
//! whose state change causes it, in that same write; the relay holds the item (a lease, so
//! overlapping sweeps do not both send), sends its notices, and removes what SQS took. The
//! sweep's writes take the lease themselves, for the relay built on the same store
//! ([`DynamoStore::take_leased`]); other items the relay claims first, with a write of its own.
//!
//! A relay sends a page only with [`SEND_MARGIN`] of its leases left; the send is over within
//! a budget, and the removals before the leases lapse: no other relay can claim the items, and
//! send their notices again, while a page is on its way. So a notice reaches SQS once, unless
//! a removal fails or runs out of time (or a process dies between the send and the removal):
//! then it is sent again after the lease lapses, with the same id, which receivers drop.
//! A process that dies between the write and the send loses nothing: the notice is still in
//! the item for the next sweep, once the lease lapses. Claims and removals go [`CONCURRENCY`]
//! at a time.

use std::time::{Duration as StdDuration, Instant};

use async_trait::async_trait;
use chrono::Duration;
use futures_util::future;
use futures_util::stream::{self, StreamExt, TryStreamExt};

use super::dynamo::{DynamoStore, Holder};
use super::sqs::{Message, PAGE_SEND_BUDGET, SqsQueue};
use crate::core::notice::Notice;
use crate::ports::{NoticeRelay, RelayStats, StoreError};

/// How long a relay holds the notices it claimed, by the wall clock.
pub const CLAIM: Duration = Duration::minutes(2);
/// A relay sends what it holds only while its lease has this much left: more than a send can
/// take ([`PAGE_SEND_BUDGET`]) and then the removals of what SQS took ([`REMOVAL_RESERVE`]),
/// so no lease lapses, and no other relay claims the item, while its notices are on their way
/// or being removed.
pub const SEND_MARGIN: Duration = Duration::seconds(45);
/// Removals end this long before the first of their leases lapses, whatever is left of them
/// (DynamoDB slow or down): those notices stay in the outbox, and are sent again, with the
/// same ids, once the lease lapses.
const LAPSE_SAFETY: Duration = Duration::seconds(5);
/// The time a relay keeps for a page's removals before its deadline (a page is at most 100
/// conditional `UpdateItem`s, 16 at a time: well under a second on DynamoDB).
const REMOVAL_RESERVE: StdDuration = StdDuration::from_secs(10);
/// The longest a page of relaying takes before a deadline: its send and its removals.
pub const PAGE_TIME: StdDuration =
    StdDuration::from_secs(PAGE_SEND_BUDGET.as_secs() + REMOVAL_RESERVE.as_secs());

/// How long a send may take, and at most how long the removals after it may (they also end
/// before the leases lapse, and by the relay's deadline).
#[derive(Debug, Clone, Copy)]
struct Budget {
    send: StdDuration,
    removal: Option<StdDuration>,
}

/// A page of a sweep's relaying: its removals go on while the leases hold.
const PAGE_BUDGET: Budget = Budget {
    send: PAGE_SEND_BUDGET,
    removal: None,
};
/// What a launch (or a token exchange) gives the notice it just queued: one short round, well
/// inside its function's timeout; the sweep sends what this leaves.
const NOW_BUDGET: Budget = Budget {
    send: StdDuration::from_secs(3),
    removal: Some(StdDuration::from_secs(2)),
};
const PAGE: usize = 100;
/// Items claimed, and emptied after the send, at once: each is its own conditional
/// `UpdateItem`, so one at a time they would cost a round trip per notice, twice (at 10 ms a
/// call, 50,000 notices would need 1,000 s of a 300 s invocation).
const CONCURRENCY: usize = crate::service::sweep::CONCURRENCY;

// A page's send leaves its removals their reserve before the leases lapse.
const _: () = assert!(
    PAGE_TIME.as_secs() + LAPSE_SAFETY.num_seconds() as u64 <= SEND_MARGIN.num_seconds() as u64
);

/// A page fits before `deadline` (none: always); when it does not, the relay stops (and says
/// so).
fn page_fits(deadline: Option<Instant>) -> bool {
    let fits = deadline.is_none_or(|d| Instant::now() + PAGE_TIME <= d);
    if !fits {
        tracing::warn!(
            "the relay stopped before its deadline; what is left waits in the outbox for the next sweep"
        );
    }
    fits
}

/// What one page did, and whether the relay should go on: not when SQS took none of it (down
/// or throttling: the next relay tries again, and a sweep does not spend its time on it).
fn went_through(page: RelayStats) -> bool {
    page.relayed > 0 || page.failed == 0
}

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
    /// in the outbox index for whoever holds them next); `false` with the stats when it
    /// stopped short (the deadline, or SQS taking nothing).
    async fn send_leased(
        &self,
        at_least: usize,
        deadline: Option<Instant>,
    ) -> Result<(RelayStats, bool), StoreError> {
        let mut stats = RelayStats::default();
        // A page at a time, each taken (and its leases' margin checked) just before its send:
        // a slow send of one page cannot use up the leases of the pages after it.
        loop {
            if !page_fits(deadline) {
                return Ok((stats, false));
            }
            let page = self.store.take_leased(at_least, PAGE);
            if page.is_empty() {
                return Ok((stats, true));
            }
            let one = self.send(&page, PAGE_BUDGET, deadline).await?;
            stats.add(one);
            if !went_through(one) {
                return Ok((stats, false));
            }
        }
    }

    /// Sends the notices of the items this relay holds (leased to it), and removes what SQS
    /// took, each within its `budget`; the removals also end [`LAPSE_SAFETY`] before the first
    /// lease lapses, and by `deadline`.
    async fn send(
        &self,
        claimed: &[Holder],
        budget: Budget,
        deadline: Option<Instant>,
    ) -> Result<RelayStats, StoreError> {
        let messages: Vec<Message> = claimed
            .iter()
            .flat_map(|h| h.notices.iter())
            .map(|(id, body)| Message {
                id: id.clone(),
                body: body.clone(),
            })
            .collect();
        if messages.is_empty() {
            return Ok(RelayStats::default());
        }
        // What SQS did not take (its error logged there) stays in the outbox, under our
        // lease until it lapses, for the next relay.
        let sent = self.queue.send(&messages, budget.send).await;
        // Owned, so the futures hold no borrowed closure arguments (async_trait's Send check).
        let removals: Vec<(Holder, Vec<String>)> = claimed
            .iter()
            .filter_map(|h| {
                let mine: Vec<String> = h
                    .notices
                    .iter()
                    .filter(|(id, _)| sent.accepted.contains(id))
                    .map(|(id, _)| id.clone())
                    .collect();
                (!mine.is_empty()).then(|| (h.clone(), mine))
            })
            .collect();
        let lease_left = claimed
            .iter()
            .filter_map(|h| h.leased_until)
            .min()
            .and_then(|u| (u - self.store.lease_now() - LAPSE_SAFETY).to_std().ok())
            .unwrap_or_default();
        let mut removal_time = budget.removal.map_or(lease_left, |r| r.min(lease_left));
        if let Some(d) = deadline {
            removal_time = removal_time.min(d.saturating_duration_since(Instant::now()));
        }
        let removed = tokio::time::timeout(
            removal_time,
            stream::iter(removals)
                .map(|(h, mine)| async move {
                    self.store.remove_relayed(&h, &mine, self.owner()).await
                })
                .buffer_unordered(CONCURRENCY)
                .collect::<Vec<_>>(),
        )
        .await
        .map_err(|_| {
            StoreError::unavailable(std::io::Error::other(
                "DynamoDB did not remove the relayed notices in time; they are sent again, with \
                 the same ids, once the lease lapses",
            ))
        })?;
        removed.into_iter().collect::<Result<Vec<()>, _>>()?;
        let (accepted, refused) = (sent.accepted.len() as u64, sent.refused.len() as u64);
        Ok(RelayStats {
            relayed: accepted,
            failed: (messages.len() as u64).saturating_sub(accepted + refused),
            refused,
        })
    }
}

#[async_trait]
impl NoticeRelay for DynamoRelay {
    /// What the store's sweep writes leased for this relay, then the outbox index: the items
    /// no live lease holds are claimed first (ours are skipped, having just been sent).
    async fn relay_pending(&self, deadline: Option<Instant>) -> Result<RelayStats, StoreError> {
        let (mut stats, went_on) = self.send_leased(0, deadline).await?;
        if !went_on {
            return Ok(stats);
        }
        let mut cursor = None;
        loop {
            if !page_fits(deadline) {
                break;
            }
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
            // Claims that took so long their margin is gone wait for the lease to lapse.
            let sendable = self.store.lease_now() + SEND_MARGIN;
            let claimed: Vec<Holder> = claimed
                .into_iter()
                .filter(|h| h.leased_until.is_some_and(|u| u > sendable))
                .collect();
            let one = self.send(&claimed, PAGE_BUDGET, deadline).await?;
            stats.add(one);
            match next {
                Some(k) if went_through(one) => cursor = Some(k),
                _ => break,
            }
        }
        Ok(stats)
    }

    /// For a notice about a grant, right after the write that queued it: one short send.
    async fn relay_now(&self, notice: &Notice) -> Result<(), StoreError> {
        let Some(grant) = &notice.grant else {
            return Ok(());
        };
        let key = (format!("G#{}", grant.id), "G".to_string());
        if let Some(claimed) = self.store.claim(&key).await? {
            self.send(std::slice::from_ref(&claimed), NOW_BUDGET, None)
                .await?;
        }
        Ok(())
    }

    /// Once [`PAGE`] have gathered (full SQS batches; `relay_pending` sends the rest).
    async fn relay_written(&self, deadline: Option<Instant>) -> Result<RelayStats, StoreError> {
        Ok(self.send_leased(PAGE, deadline).await?.0)
    }

    fn page_time(&self) -> StdDuration {
        PAGE_TIME
    }
}
