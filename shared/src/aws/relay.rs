//! The relay from the DynamoDB outbox to SQS. A notice is written into the outbox of the item
//! whose state change causes it, in that same write; the relay holds the item (a lease, so
//! overlapping sweeps do not both send), sends its notices, and removes what SQS took. The
//! sweep's writes take the lease themselves, for the relay built on the same store
//! ([`DynamoStore::take_leased`]); other items the relay claims first, with a write of its own.
//!
//! A relay sends a page only with [`SEND_MARGIN`] of its leases left; the send is over within
//! a budget, and the removals before the leases lapse (and by the relay's deadline): no other
//! relay can claim the items, and send their notices again, while a page is on its way. So a
//! notice reaches SQS once, unless SQS took it but its answer did not arrive in time, or a
//! removal fails or runs out of time, or a process dies between the send and the removal:
//! then it is sent again after the lease lapses, with the same id, which receivers drop.
//! A process that dies between the write and the send loses nothing: the notice is still in
//! the item for the next sweep, once the lease lapses. Claims and removals go [`CONCURRENCY`]
//! at a time.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration as StdDuration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use futures_util::future;
use futures_util::stream::{self, StreamExt, TryStreamExt};

use super::dynamo::{DynamoStore, Holder};
use super::sqs::{Message, PAGE_SEND_BUDGET, SqsQueue};
use crate::core::notice::Notice;
use crate::ports::{NoticeRelay, RelayError, RelayStats, StoreError};

/// How long a relay holds the notices it claimed, by the wall clock.
pub const CLAIM: Duration = Duration::minutes(2);
/// A relay sends what it holds only while its lease has this much left: more than a send can
/// take ([`PAGE_SEND_BUDGET`]) and then the removals of what SQS took, so no lease lapses, and
/// no other relay claims the item, while its notices are on their way or being removed.
pub const SEND_MARGIN: Duration = Duration::seconds(45);
/// What a sweep's writes leased is sent once a page has gathered, or as soon as one of those
/// leases comes this near to losing its margin (a sweep queuing a notice now and then does
/// not leave them to lapse, waiting for the next sweep).
pub const SEND_SOON: Duration = Duration::seconds(30);
/// Removals end this long before the first of their leases lapses, whatever is left of them
/// (DynamoDB slow or down): those notices stay in the outbox, and are sent again, with the
/// same ids, once the lease lapses.
const LAPSE_SAFETY: Duration = Duration::seconds(5);
/// A relay with a deadline starts a page only with this much time left; the page's send gets
/// at most two thirds of what is left, its removals the rest.
pub const MIN_PAGE: StdDuration = StdDuration::from_secs(3);
/// The time a sweep keeps for its relay before its deadline: pages of up to 100 notices take
/// a fraction of a second each on DynamoDB and SQS.
pub const RELAY_RESERVE: StdDuration = StdDuration::from_secs(30);

/// How long a send may take, and at most how long the removals after it may (they also end
/// before the leases lapse, and by the relay's deadline).
#[derive(Debug, Clone, Copy)]
struct Budget {
    send: StdDuration,
    removal: Option<StdDuration>,
}

/// What a launch (or a token exchange) gives the notice it just queued: one short round, its
/// claim, send and removal within 4 s, well inside the launch function's 10 s; the sweep sends
/// what this leaves.
const NOW_CLAIM: StdDuration = StdDuration::from_secs(1);
const NOW_BUDGET: Budget = Budget {
    send: StdDuration::from_secs(2),
    removal: Some(StdDuration::from_secs(1)),
};
const PAGE: usize = 100;
/// Items claimed, and emptied after the send, at once: each is its own conditional
/// `UpdateItem`, so one at a time they would cost a round trip per notice, twice (at 10 ms a
/// call, 50,000 notices would need 1,000 s of a 300 s invocation).
const CONCURRENCY: usize = crate::service::sweep::CONCURRENCY;

// A full-length send leaves its removals at least 10 s before the leases lapse.
const _: () = assert!(
    PAGE_SEND_BUDGET.as_secs() + LAPSE_SAFETY.num_seconds() as u64 + 10
        <= SEND_MARGIN.num_seconds() as u64
);

/// How long the removals after a send may take: until [`LAPSE_SAFETY`] before the first of
/// the `leases` lapses (judged at `lease_now`), within `cap` and what is left before the
/// relay's deadline. Nothing once a lease is that near its end, or if one is unknown.
fn removal_time(
    mut leases: impl Iterator<Item = Option<DateTime<Utc>>>,
    lease_now: DateTime<Utc>,
    cap: Option<StdDuration>,
    before_deadline: Option<StdDuration>,
) -> StdDuration {
    // The first to lapse; none when one is unknown, or there are none.
    let first_lapse = leases
        .try_fold(None, |first: Option<DateTime<Utc>>, l| {
            l.map(|l| Some(first.map_or(l, |f| f.min(l))))
        })
        .flatten();
    let left = first_lapse
        .and_then(|u| (u - lease_now - LAPSE_SAFETY).to_std().ok())
        .unwrap_or_default();
    [cap, before_deadline]
        .into_iter()
        .flatten()
        .fold(left, StdDuration::min)
}

/// The budget of the next page with `before_deadline` left (none: no deadline): the whole
/// send budget, or two thirds of what is left; `None` when too little is left to start one
/// (the relay stops, and says so).
fn page_budget(before_deadline: Option<StdDuration>, stats: &mut RelayStats) -> Option<Budget> {
    let send = match before_deadline {
        None => PAGE_SEND_BUDGET,
        Some(left) if left >= MIN_PAGE => PAGE_SEND_BUDGET.min(left * 2 / 3),
        Some(_) => {
            tracing::warn!(
                "the relay stopped at its deadline; what is left waits in the outbox for the next sweep"
            );
            stats.stopped = true;
            return None;
        }
    };
    Some(Budget {
        send,
        removal: None,
    })
}

fn left_before(deadline: Option<Instant>) -> Option<StdDuration> {
    deadline.map(|d| d.saturating_duration_since(Instant::now()))
}

/// `work`'s output, unless `deadline` comes first: then `None`, and the relay has stopped.
async fn by_deadline<T>(
    deadline: Option<Instant>,
    work: impl std::future::Future<Output = T>,
    stats: &mut RelayStats,
) -> Option<T> {
    match left_before(deadline) {
        None => Some(work.await),
        Some(left) => {
            let done = tokio::time::timeout(left, work).await.ok();
            stats.stopped |= done.is_none();
            done
        }
    }
}

/// What one page did, and whether the relay should go on: not when SQS took none of it (down
/// or throttling: the next relay tries again, and a sweep does not spend its time on it), nor
/// when its removals ran out of time (DynamoDB slow: the run would send them again).
fn went_through(page: RelayStats) -> bool {
    (page.relayed > 0 || page.failed == 0) && page.unremoved == 0
}

/// The stats so far, with the error that ended the run.
fn ended(stats: RelayStats, result: Result<(), StoreError>) -> Result<RelayStats, RelayError> {
    match result {
        Ok(()) => Ok(stats),
        Err(error) => Err(RelayError { stats, error }),
    }
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

    /// The items the store's sweep writes leased for this relay ([`DynamoStore::take_leased`]:
    /// once there are `at_least`, or one is about to lose its margin), sent without a claim.
    /// `false` when it stopped short (the deadline, or SQS taking nothing).
    async fn send_leased(
        &self,
        at_least: usize,
        deadline: Option<Instant>,
        stats: &mut RelayStats,
    ) -> Result<bool, StoreError> {
        // A page at a time, each taken (and its leases' margin checked) just before its send:
        // a slow send of one page cannot use up the leases of the pages after it.
        loop {
            let Some(budget) = page_budget(left_before(deadline), stats) else {
                return Ok(false);
            };
            let (page, _sending) = self.store.take_leased_to_send(at_least, PAGE);
            if page.is_empty() {
                return Ok(true);
            }
            if !went_through(self.send(&page, budget, deadline, stats).await?) {
                return Ok(false);
            }
        }
    }

    /// The outbox index, a page at a time: the items no live lease holds are claimed, then
    /// sent.
    async fn send_unleased(
        &self,
        deadline: Option<Instant>,
        stats: &mut RelayStats,
    ) -> Result<(), StoreError> {
        let mut cursor = None;
        loop {
            if page_budget(left_before(deadline), stats).is_none() {
                return Ok(());
            }
            let Some(page) = by_deadline(deadline, self.store.holders(cursor, PAGE), stats).await
            else {
                return Ok(());
            };
            let (page, next) = page?;
            let now = self.store.lease_now();
            let owner = self.owner();
            let free = page.into_iter().filter(|h| h.claimable_by(owner, now));
            let claims = stream::iter(free)
                .map(|h| async move { self.store.claim(&h.key).await })
                .buffer_unordered(CONCURRENCY)
                .try_filter_map(|current| future::ready(Ok(current)))
                .try_collect::<Vec<Holder>>();
            // Claims cut short by the deadline leave their items leased, for a later relay.
            let Some(claimed) = by_deadline(deadline, claims, stats).await else {
                return Ok(());
            };
            let claimed = claimed?;
            // Claims that took so long their margin is gone wait for the lease to lapse.
            let sendable = self.store.lease_now() + SEND_MARGIN;
            let claimed: Vec<Holder> = claimed
                .into_iter()
                .filter(|h| h.leased_at(sendable))
                .collect();
            let Some(budget) = page_budget(left_before(deadline), stats) else {
                return Ok(());
            };
            let page = self.send(&claimed, budget, deadline, stats).await?;
            match next {
                Some(k) if went_through(page) => cursor = Some(k),
                _ => return Ok(()),
            }
        }
    }

    /// Sends the notices of the items this relay holds (leased to it), and removes what SQS
    /// took, each within its `budget`; the removals also end [`LAPSE_SAFETY`] before the first
    /// lease lapses, and by `deadline`. Adds what it did to `stats` (before the removals, so a
    /// removal's error loses no count), and returns it.
    async fn send(
        &self,
        claimed: &[Holder],
        budget: Budget,
        deadline: Option<Instant>,
        stats: &mut RelayStats,
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
        let _sending = self.store.in_flight(claimed);
        // What SQS did not take (its error logged there) stays in the outbox, under our
        // lease until it lapses, for the next relay.
        let sent = self.queue.send(&messages, budget.send).await;
        let (accepted, refused) = (sent.accepted.len() as u64, sent.refused.len() as u64);
        let mut page = RelayStats {
            relayed: accepted,
            failed: (messages.len() as u64).saturating_sub(accepted + refused),
            refused,
            ..RelayStats::default()
        };
        stats.add(page);
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
        let removal_time = removal_time(
            claimed.iter().map(|h| h.leased_until),
            self.store.lease_now(),
            budget.removal,
            left_before(deadline),
        );
        let removing: usize = removals.iter().map(|(_, mine)| mine.len()).sum();
        // Counted as each finishes, so a timeout knows how many did.
        let removed_so_far = AtomicUsize::new(0);
        let done = &removed_so_far;
        let removed = tokio::time::timeout(
            removal_time,
            stream::iter(removals)
                .map(|(h, mine)| async move {
                    let r = self.store.remove_relayed(&h, &mine, self.owner()).await;
                    if r.is_ok() {
                        done.fetch_add(mine.len(), Ordering::Relaxed);
                    }
                    r
                })
                .buffer_unordered(CONCURRENCY)
                .collect::<Vec<_>>(),
        )
        .await;
        match removed {
            Ok(removed) => {
                removed.into_iter().collect::<Result<Vec<()>, _>>()?;
            }
            // Out of time (the lease's end, or the deadline: DynamoDB slow): SQS has them, and
            // the outbox still does, so they go again, with the same ids, once the lease
            // lapses. Counted (the sweep then fails), and this run stops here.
            Err(_) => {
                let left = removing.saturating_sub(removed_so_far.load(Ordering::Relaxed));
                tracing::warn!(
                    notices = left,
                    "up to this many relayed notices could not be removed in time; they will be sent again, with the same ids"
                );
                page.unremoved = left as u64;
                stats.unremoved += page.unremoved;
            }
        }
        Ok(page)
    }
}

#[async_trait]
impl NoticeRelay for DynamoRelay {
    /// What the store's sweep writes leased for this relay, then the outbox index: the items
    /// no live lease holds (or only a lease of this relay's own, its margin gone) are claimed
    /// first.
    async fn relay_pending(&self, deadline: Option<Instant>) -> Result<RelayStats, RelayError> {
        let mut stats = RelayStats::default();
        let result = match self.send_leased(0, deadline, &mut stats).await {
            Ok(true) => self.send_unleased(deadline, &mut stats).await,
            Ok(false) => Ok(()),
            Err(e) => Err(e),
        };
        ended(stats, result)
    }

    /// For a notice about a grant, right after the write that queued it: one short send.
    async fn relay_now(&self, notice: &Notice) -> Result<(), StoreError> {
        let Some(grant) = &notice.grant else {
            return Ok(());
        };
        let key = (format!("G#{}", grant.id), "G".to_string());
        // The claim too is bounded: a launch is waiting (and a sweep's keep-alive, near its
        // deadline). Cut short, the notice waits for the sweep (if the claim was written, its
        // lease lapses first).
        let Ok(claimed) = tokio::time::timeout(NOW_CLAIM, self.store.claim(&key)).await else {
            tracing::warn!(notice_id = %notice.id, "DynamoDB did not answer the claim in time; the notice waits for the sweep");
            return Ok(());
        };
        if let Some(claimed) = claimed? {
            let mut stats = RelayStats::default();
            self.send(std::slice::from_ref(&claimed), NOW_BUDGET, None, &mut stats)
                .await?;
        }
        Ok(())
    }

    /// Once [`PAGE`] have gathered (full SQS batches; `relay_pending` sends the rest), or one
    /// of them is about to lose its margin.
    async fn relay_written(&self, deadline: Option<Instant>) -> Result<RelayStats, RelayError> {
        let mut stats = RelayStats::default();
        let result = self.send_leased(PAGE, deadline, &mut stats).await;
        ended(stats, result.map(|_| ()))
    }

    fn reserve(&self) -> StdDuration {
        RELAY_RESERVE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(seconds: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + seconds, 0).unwrap()
    }

    #[test]
    fn removals_end_five_seconds_before_the_first_lease_lapses() {
        let leases = [Some(at(120)), Some(at(60)), Some(at(90))];
        assert_eq!(
            removal_time(leases.into_iter(), at(0), None, None),
            StdDuration::from_secs(55)
        );
    }

    #[test]
    fn a_lease_about_to_lapse_or_unknown_leaves_no_time_for_removals() {
        let none = StdDuration::ZERO;
        assert_eq!(
            removal_time([Some(at(4))].into_iter(), at(0), None, None),
            none
        );
        assert_eq!(
            removal_time([Some(at(-9))].into_iter(), at(0), None, None),
            none
        );
        let unknown = [Some(at(120)), None];
        assert_eq!(removal_time(unknown.into_iter(), at(0), None, None), none);
        assert_eq!(removal_time(std::iter::empty(), at(0), None, None), none);
    }

    #[test]
    fn removals_end_by_the_deadline_and_within_their_cap() {
        let lease = || [Some(at(120))].into_iter();
        let secs = StdDuration::from_secs;
        assert_eq!(removal_time(lease(), at(0), Some(secs(2)), None), secs(2));
        assert_eq!(removal_time(lease(), at(0), None, Some(secs(7))), secs(7));
        assert_eq!(
            removal_time(lease(), at(0), Some(secs(2)), Some(secs(1))),
            secs(1)
        );
        assert_eq!(
            removal_time(lease(), at(0), Some(secs(600)), None),
            secs(115)
        );
    }
}
