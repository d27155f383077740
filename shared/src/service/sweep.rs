//! The sweep: reads only the grants with a notice due, sends each the nearest due stage once
//! (a conditional write decides who sends when sweeps overlap), warns operators of an expiring
//! client secret, and lets go of what has outlived its retention.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use futures_util::stream::{self, StreamExt};
use serde::Serialize;

use crate::context::Context;
use crate::core::entra::MIN_RETRY_SECONDS;
use crate::core::grant::{
    Kind, Stage, days_left, due_stage, keepalive_is_due, next_due_at, plus_days,
};
use crate::core::notice::{Notice, NoticeType, rfc3339};
use crate::ports::{Advance, DueCursor, GrantRecord, RelayError, RelayStats, StoreError, Written};
use crate::service::exchange::{ExchangeError, TokenService};

/// How far ahead operators hear that the client secret expires.
pub const CLIENT_SECRET_WARNING_DAYS: i64 = 30;
const PAGE: usize = 100;
/// Due grants visited at once: the writes (and keep-alive redemptions) overlap, bounded.
pub const CONCURRENCY: usize = 16;
/// A keep-alive refused for an operator reason is tried again after this (the alarm fires).
const KEEPALIVE_RETRY_SECS: u64 = 3600;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SweepSummary {
    /// Grants read from the due index.
    pub examined: u64,
    /// Notices queued, by type (every type listed).
    pub notices: BTreeMap<&'static str, u64>,
    /// Grants whose refresh token was found past its expiry.
    pub expired: u64,
    /// Entra grants redeemed to keep them alive (their new refresh tokens stored).
    pub kept_alive: u64,
    /// Keep-alive redemptions that failed for now (retried by later sweeps).
    pub keepalive_failures: u64,
    /// Notices another writer (an overlapping sweep, a launch) got to first.
    pub conflicts: u64,
    /// Notices moved on to the delivery queue (SQS; the embedded outbox is the queue itself).
    pub relayed: u64,
    pub elapsed_ms: u64,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    /// The sweep ran out of time: the rest stays due (or queued, if its relay stopped) for the
    /// next run.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub stopped_early: bool,
    /// Notices the delivery queue did not take this run: they stay in the outbox, for the
    /// next sweep.
    #[serde(skip_serializing_if = "is_zero")]
    pub not_relayed: u64,
    /// Notices the delivery queue refused as they are: they stay in the outbox, and the
    /// stack's NoticeRefusedAlarm fires (the sweep itself does not fail for them: it would
    /// fail every run, and its other work is done).
    #[serde(skip_serializing_if = "is_zero")]
    pub refused: u64,
    /// Notices the delivery queue took that could not be removed from the outbox in time
    /// (DynamoDB slow): they go again, with the same ids, and the run fails.
    #[serde(skip_serializing_if = "is_zero")]
    pub unremoved: u64,
}

/// A sweep that did not do all its work.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    /// The store failed: the sweep stopped there. What it wrote stays written; what it did
    /// not reach stays due, for the next run.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The sweep did its work, but notices it queued (or found queued) wait in the outbox:
    /// the delivery queue did not take them, or the relay's store failed. The next run sends
    /// them.
    #[error("{error}")]
    NotRelayed {
        summary: Box<SweepSummary>,
        error: StoreError,
    },
}

impl SweepError {
    /// What the sweep did, when it got to the end.
    pub fn summary(&self) -> Option<&SweepSummary> {
        match self {
            SweepError::Store(_) => None,
            SweepError::NotRelayed { summary, .. } => Some(summary),
        }
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl SweepSummary {
    fn new(dry_run: bool) -> Self {
        SweepSummary {
            examined: 0,
            notices: NoticeType::QUEUED.iter().map(|t| (t.as_str(), 0)).collect(),
            expired: 0,
            kept_alive: 0,
            keepalive_failures: 0,
            conflicts: 0,
            relayed: 0,
            elapsed_ms: 0,
            dry_run,
            stopped_early: false,
            not_relayed: 0,
            refused: 0,
            unremoved: 0,
        }
    }

    /// What a relay did: its counts, or its error (logged, and the first kept to fail the
    /// run with once the sweep is done).
    fn relay_outcome(
        &mut self,
        relayed: Result<RelayStats, RelayError>,
        error: &mut Option<StoreError>,
    ) {
        let r = match relayed {
            Ok(r) => r,
            Err(RelayError { stats, error: e }) => {
                tracing::warn!(error = %e, "could not relay notices; they stay in the outbox, and the sweep goes on");
                error.get_or_insert(e);
                stats
            }
        };
        self.relayed += r.relayed;
        self.not_relayed += r.failed;
        self.refused += r.refused;
        self.unremoved += r.unremoved;
        self.stopped_early |= r.stopped;
    }

    /// Adds one visit's counts.
    fn add(&mut self, one: &SweepSummary) {
        self.examined += one.examined;
        for (t, n) in &one.notices {
            *self.notices.entry(t).or_default() += n;
        }
        self.expired += one.expired;
        self.kept_alive += one.kept_alive;
        self.keepalive_failures += one.keepalive_failures;
        self.conflicts += one.conflicts;
    }

    fn count(&mut self, t: NoticeType) {
        *self.notices.entry(t.as_str()).or_default() += 1;
    }

    pub fn total_notices(&self) -> u64 {
        self.notices.values().sum()
    }
}

/// A visit's counts and what it decided to write.
type Visited = (SweepSummary, Option<Plan>);

/// What a visit decided to write for one grant.
struct Plan {
    advance: Advance,
    /// The grant's refresh token was found past its expiry.
    expired: bool,
}

pub struct SweepService {
    ctx: Arc<Context>,
    /// Due grants read at a time from each part of the due index ([`PAGE`]).
    page: usize,
    /// Redeems idle Entra grants (the keep-alive).
    tokens: TokenService,
}

impl SweepService {
    pub fn new(ctx: Arc<Context>) -> Self {
        let tokens = TokenService::for_context(&ctx);
        SweepService {
            ctx,
            page: PAGE,
            tokens,
        }
    }

    /// Reads `page` due grants at a time from each part of the due index instead of [`PAGE`]
    /// (tests: a sweep of many pages without seeding thousands of grants).
    pub fn with_page(mut self, page: usize) -> Self {
        self.page = page.max(1);
        self
    }

    pub async fn run(&self, now: DateTime<Utc>, dry_run: bool) -> Result<SweepSummary, SweepError> {
        self.run_until(now, dry_run, None).await
    }

    /// One sweep that stops cleanly before `deadline` (a Lambda's remaining time, less a
    /// margin): what it did not reach stays due, for the next run — nothing is lost, and
    /// nothing is queued twice (every notice is a conditional write). Due grants are visited
    /// [`CONCURRENCY`] at a time, until the relay's [`reserve`](crate::ports::NoticeRelay::reserve)
    /// before the deadline; the relay sends what they queued until the deadline itself.
    pub async fn run_until(
        &self,
        now: DateTime<Utc>,
        dry_run: bool,
        deadline: Option<Instant>,
    ) -> Result<SweepSummary, SweepError> {
        let started = Instant::now();
        let visits_end =
            deadline.map(|d| d.checked_sub(self.ctx.relay.reserve()).unwrap_or(started));
        // In Lambda, a rotated key or client secret since the last run (no-op locally).
        self.ctx.secrets.refresh_if_stale().await;
        let mut summary = SweepSummary::new(dry_run);
        let mut cursor: Option<DueCursor> = None;
        let mut relay_error = None;
        let out_of_time = || visits_end.is_some_and(|d| Instant::now() >= d);
        loop {
            if out_of_time() {
                summary.stopped_early = true;
                break;
            }
            let page = self.ctx.grants.due(now, cursor.as_ref(), self.page).await?;
            let visits: Vec<Result<Option<Visited>, StoreError>> = stream::iter(page.grants)
                .map(|g| async move {
                    if out_of_time() {
                        return Ok(None);
                    }
                    let mut one = SweepSummary::new(dry_run);
                    let plan = self.visit(g, now, dry_run, &mut one).await?;
                    Ok(Some((one, plan)))
                })
                .buffer_unordered(CONCURRENCY)
                .collect()
                .await;
            let mut plans = Vec::new();
            for v in visits {
                match v? {
                    Some((one, plan)) => {
                        summary.add(&one);
                        plans.extend(plan);
                    }
                    None => summary.stopped_early = true,
                }
            }
            // The page's writes together: one transaction on SQLite, one conditional
            // `UpdateItem` each (16 at a time) on DynamoDB.
            self.write(plans, now, dry_run, &mut summary).await?;
            if !dry_run {
                // What the writes queued and hold for the relay goes out as it gathers
                // (DynamoDB). A relay that fails does not stop the sweep: its notices wait in
                // the outbox, and the grants further on (Entra keep-alives among them) are
                // still visited.
                let relayed = self.ctx.relay.relay_written(deadline).await;
                summary.relay_outcome(relayed, &mut relay_error);
            }
            match page.next {
                Some(next) if !summary.stopped_early => cursor = Some(next),
                _ => break,
            }
        }
        if summary.stopped_early {
            tracing::warn!(
                examined = summary.examined,
                "the sweep stopped before its deadline; the next run picks up what is left"
            );
        }

        self.client_secret_warning(now, dry_run, &mut summary)
            .await?;
        if !dry_run {
            // Everything queued reaches the delivery queue by the end of a sweep, including
            // what an earlier run (or a crashed launch) left behind, unless the deadline stops
            // the relay (`stopped_early`: the next run sends the rest).
            let relayed = self.ctx.relay.relay_pending(deadline).await;
            summary.relay_outcome(relayed, &mut relay_error);
            if !summary.stopped_early {
                self.ctx.grants.purge(now).await?;
            }
        }
        summary.elapsed_ms = started.elapsed().as_millis() as u64;
        if !dry_run {
            // The stack's SweepSilentAlarm counts these lines: hours without one is an alarm.
            let line = serde_json::to_string(&summary).unwrap_or_default();
            tracing::info!(event = "sweep_completed", stopped_early = summary.stopped_early, summary = %line, "sweep done");
        }
        // The sweep did its work, but notices wait in the outbox: the run fails (the
        // function's error alarm), and the next one sends them.
        let failure = |message: String| StoreError::unavailable(std::io::Error::other(message));
        let error = relay_error
            .or_else(|| {
                (summary.not_relayed > 0).then(|| {
                    failure(format!(
                        "the delivery queue did not take {} notices; they stay in the outbox for the next sweep",
                        summary.not_relayed
                    ))
                })
            })
            .or_else(|| {
                (summary.unremoved > 0).then(|| {
                    failure(format!(
                        "{} notices went to the delivery queue but could not be removed from the outbox in time; they will be sent again, with the same ids",
                        summary.unremoved
                    ))
                })
            });
        match error {
            Some(error) => Err(SweepError::NotRelayed {
                summary: Box::new(summary),
                error,
            }),
            None => Ok(summary),
        }
    }

    /// One due grant: what to write for it (the nearest due stage's notice, or a new place in
    /// the due index if nothing is due); `None` when there is nothing to write.
    async fn visit(
        &self,
        g: GrantRecord,
        now: DateTime<Utc>,
        dry_run: bool,
        summary: &mut SweepSummary,
    ) -> Result<Option<Plan>, StoreError> {
        summary.examined += 1;
        // An idle Entra grant is redeemed first: its 90 days restart and no notice is due.
        let mut retry_at = None;
        if g.kind == Kind::Entra
            && keepalive_is_due(g.rt_expires_at, g.progress, now, self.ctx.keepalive_days())
        {
            if dry_run {
                summary.kept_alive += 1;
                return Ok(None);
            }
            match self.tokens.keep_alive(&g.id).await {
                Ok(()) => {
                    summary.kept_alive += 1;
                    return Ok(None);
                }
                // The revoked notice went out with the state change.
                Err(ExchangeError::RelaunchRequired { .. }) => {
                    summary.count(NoticeType::Revoked);
                    return Ok(None);
                }
                Err(ExchangeError::Store(e)) => return Err(e),
                Err(e) => {
                    // Later sweeps try again, no sooner than Entra asked (and never under 5 s);
                    // if the grant nears its 90-day mark meanwhile, the stages below go out.
                    summary.keepalive_failures += 1;
                    let wait = match &e {
                        ExchangeError::StsUnavailable { retry_after } => *retry_after,
                        _ => KEEPALIVE_RETRY_SECS,
                    }
                    .max(MIN_RETRY_SECONDS);
                    retry_at = now.checked_add_signed(chrono::Duration::seconds(
                        i64::try_from(wait).unwrap_or(i64::MAX / 1000),
                    ));
                    tracing::warn!(grant_id = %g.id, error = %e, retry_in_s = wait, "keep-alive failed; a later sweep tries again");
                }
            }
        }
        let stage = due_stage(
            g.rt_expires_at,
            g.progress,
            now,
            &self.ctx.settings.notice_days,
        );
        let (progress, notice) = match stage {
            Some(stage) => {
                let renew_url = self.ctx.renew_url(&g.id, now);
                let notice = Notice::for_stage(stage, g.notice_subject(&renew_url), now);
                (stage.progress(), Some(notice))
            }
            // In the index but nothing due (the notice days changed): re-index it.
            None => (g.progress, None),
        };
        let next = match retry_at {
            // The keep-alive's retry, or the next notice stage if that comes first.
            Some(retry) => Some(
                next_due_at(g.rt_expires_at, progress, &self.ctx.settings.notice_days)
                    .filter(|stage| *stage > now)
                    .map_or(retry, |stage| stage.min(retry)),
            ),
            None => self.ctx.next_due_at(&g, progress),
        };
        if notice.is_none() && next == g.next_due_at {
            return Ok(None);
        }
        Ok(Some(Plan {
            advance: Advance {
                id: g.id,
                expected_rev: g.rev,
                progress,
                next_due_at: next,
                notice,
            },
            expired: stage == Some(Stage::Expired),
        }))
    }

    /// Writes a page's plans (each conditional on the revision it was decided on) and counts
    /// what was written.
    async fn write(
        &self,
        plans: Vec<Plan>,
        now: DateTime<Utc>,
        dry_run: bool,
        summary: &mut SweepSummary,
    ) -> Result<(), StoreError> {
        if plans.is_empty() {
            return Ok(());
        }
        let written = if dry_run {
            vec![Written::Done; plans.len()]
        } else {
            let moves: Vec<Advance> = plans.iter().map(|p| p.advance.clone()).collect();
            self.ctx.grants.advance_all(&moves, now).await?
        };
        for (plan, written) in plans.iter().zip(written) {
            match (written, &plan.advance.notice) {
                (Written::Done, Some(n)) => {
                    summary.count(n.kind);
                    summary.expired += u64::from(plan.expired);
                    if !dry_run {
                        tracing::info!(grant_id = %plan.advance.id, notice_id = %n.id, notice_type = n.kind.as_str(), "notice queued");
                    }
                }
                (Written::Done, None) => {}
                (Written::Conflict, _) => summary.conflicts += 1,
            }
        }
        Ok(())
    }

    async fn client_secret_warning(
        &self,
        now: DateTime<Utc>,
        dry_run: bool,
        summary: &mut SweepSummary,
    ) -> Result<(), StoreError> {
        for (client_id, expires_at) in self.ctx.settings.client_secrets_expiring() {
            if now < plus_days(expires_at, -CLIENT_SECRET_WARNING_DAYS) {
                continue;
            }
            let left = days_left(expires_at, now);
            // Every sweep says it (operators' alarms count this event); the notice goes once.
            tracing::warn!(event = "client_secret_expiring", %client_id, days_left = left, expires_at = %rfc3339(expires_at), "a client secret expires soon: rotate it");
            if dry_run {
                continue;
            }
            let notice = Notice::client_secret_expiring(client_id, expires_at, now);
            let marker = format!(
                "client_secret.expiring|{client_id}|{}",
                expires_at.timestamp()
            );
            if self.ctx.grants.queue_once(&marker, &notice).await? == Written::Done {
                summary.count(NoticeType::ClientSecretExpiring);
            }
        }
        Ok(())
    }
}
