//! The DynamoDB + SQS adapters on moto (the real wire protocols): the conformance suite every
//! store passes, and the concurrency Lambda brings.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use serde_json::Value;

use aws_sdk_dynamodb::types::AttributeValue as AttrValue;
use common::*;
use spkeeper::aws::Aws;
use spkeeper::aws::dynamo::{DynamoStore, outbox_of};
use spkeeper::aws::relay::{CLAIM, DynamoRelay, SEND_MARGIN};
use spkeeper::aws::sqs::{PAGE_SEND_BUDGET, SqsQueue};
use spkeeper::clients::{AcsClient, RetryPolicy};
use spkeeper::clock::{Clock, OffsetClock};
use spkeeper::core::grant::{GrantId, Progress, Stage};
use spkeeper::ports::{Advance, GrantRecord, GrantStore, NoticeRelay, Written};
use spkeeper::service::exchange::TokenService;
use spkeeper::service::sweep::SweepService;
use spkeeper::store::conformance::{self, NoticeProbe};
use spkeeper::testkit::moto;

/// What reached the queue: relay everything (every lease lapsed), then drain SQS.
struct QueueProbe {
    aws: Aws,
    sdk: aws_config::SdkConfig,
    leases: Arc<OffsetClock>,
}

#[async_trait]
impl NoticeProbe for QueueProbe {
    async fn take(&self) -> Vec<String> {
        self.leases.advance(CLAIM * 2);
        self.aws.relay.relay_pending(None).await.unwrap();
        moto::drain(&self.sdk, self.aws.queue.url())
            .await
            .iter()
            .map(|b| {
                serde_json::from_str::<Value>(b).unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    }
}

#[tokio::test]
async fn dynamodb_and_sqs_pass_the_conformance_suite() {
    let (aws, sdk, leases) = moto_backend(None).await;
    let probe = QueueProbe {
        aws: aws.clone(),
        sdk,
        leases,
    };
    conformance::run(&aws.dynamo, &probe).await;
}

async fn launch_many(h: &Harness, n: usize) -> Vec<GrantId> {
    let mut ids = Vec::new();
    for i in 0..n {
        assert_eq!(
            h.launch(&h.token(&format!("user{i}")))
                .await
                .status()
                .as_u16(),
            303
        );
        ids.push(h.grant_id(&format!("user{i}")));
    }
    ids
}

/// Writes `n` grants straight through the store (as launches would), all due at once.
async fn seed_due(h: &Harness, n: usize) -> chrono::DateTime<chrono::Utc> {
    let template = conformance::record("seed", 0);
    // A few writers at a time: moto serialises its writes and turns away a flood.
    let grants = Arc::clone(&h.ctx.grants);
    let mut next = 0;
    while next < n {
        let batch: Vec<_> = (next..n.min(next + 8))
            .map(|i| {
                let grants = Arc::clone(&grants);
                let mut g = conformance::record(&format!("seed-{i}"), 0);
                g.site_url = "https://contoso.sharepoint.com/sites/a".into();
                tokio::spawn(async move {
                    grants
                        .put_grant(None, &g, "v1.k.sealed", None)
                        .await
                        .unwrap()
                })
            })
            .collect();
        for t in batch {
            t.await.unwrap();
        }
        next += 8;
    }
    template.rt_expires_at - Duration::days(30) + Duration::hours(1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_sweeps_at_once_over_500_due_grants_queue_one_notice_id_per_grant_and_stage() {
    let h = moto_harness().await;
    let t0 = std::time::Instant::now();
    let at = seed_due(&h, 500).await;
    eprintln!("seeded in {:?}", t0.elapsed());
    let sweeps: Vec<_> = (0..4)
        .map(|_| {
            let sweep = SweepService::new(Arc::clone(&h.ctx));
            tokio::spawn(async move { sweep.run(at, false).await.unwrap() })
        })
        .collect();
    let mut total = 0;
    let mut conflicts = 0;
    for s in sweeps {
        let s = s.await.unwrap();
        total += s.notices["refresh_token.expiring"];
        conflicts += s.conflicts;
    }
    eprintln!("swept in {:?}", t0.elapsed());
    assert_eq!(total, 500, "each grant's notice written once");
    let Backend::Moto { aws, sdk, .. } = &h.backend else {
        unreachable!()
    };
    let bodies = moto::drain(sdk, aws.queue.url()).await;
    let ids: BTreeSet<String> = bodies
        .iter()
        .map(|b| {
            serde_json::from_str::<Value>(b).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(ids.len(), 500, "one notice id per (grant, stage)");
    assert_eq!(bodies.len(), 500, "and each on the queue once");
    let grants: BTreeSet<String> = bodies
        .iter()
        .map(|b| {
            serde_json::from_str::<Value>(b).unwrap()["grant"]["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(grants.len(), 500);
    println!("4 sweeps over 500 grants: {conflicts} lost races, as expected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_token_requests_across_instances_make_one_acs_call() {
    let h = moto_harness().await;
    let id = launch_many(&h, 1).await.remove(0);
    let before = h.stub.token_calls();
    // 50 separate services: as many Lambda instances, no shared memory, one table.
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let svc = TokenService::new(
                Arc::clone(&h.ctx),
                AcsClient::new(h.ctx.http.clone(), RetryPolicy::default()),
            );
            let id = id.clone();
            tokio::spawn(async move {
                svc.access_token(&id, Some("contoso.sharepoint.com"), None)
                    .await
                    .map(|t| t.expires_at)
            })
        })
        .collect();
    let mut expiries = BTreeSet::new();
    for t in tasks {
        expiries.insert(t.await.unwrap().expect("every caller gets the token"));
    }
    assert_eq!(
        h.stub.token_calls() - before,
        1,
        "one ACS call for 50 callers"
    );
    assert_eq!(expiries.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_launch_racing_a_sweep_never_loses_the_newer_refresh_token() {
    let h = moto_harness().await;
    let ids = launch_many(&h, 12).await;
    let exp = h.store_load(&ids[0]).await.record.rt_expires_at;
    // T-30: every grant is due, and every user relaunches at the same moment.
    h.clock.set(exp - Duration::days(30) + Duration::hours(1));
    let sweep = SweepService::new(Arc::clone(&h.ctx));
    let now = h.now();
    let sweeping = tokio::spawn(async move { sweep.run(now, false).await.unwrap() });
    let tokens: Vec<String> = (0..ids.len())
        .map(|i| h.token(&format!("user{i}")))
        .collect();
    let launches: Vec<_> = tokens.iter().map(|t| h.launch(t)).collect();
    for l in futures_join(launches).await {
        assert_eq!(l.status().as_u16(), 303);
    }
    sweeping.await.unwrap();

    let notices = h.queued().await;
    for (i, id) in ids.iter().enumerate() {
        let g = h.store_load(id).await;
        assert!(
            g.record.rt_version >= now.timestamp() - 5,
            "user{i}: the newer refresh token is stored"
        );
        let rt = h
            .ctx
            .secrets
            .get()
            .key_ring
            .open(
                g.sealed_refresh_token.as_deref().unwrap(),
                &spkeeper::core::seal::Place::RefreshToken {
                    grant: id.as_str(),
                    version: g.record.rt_version,
                },
            )
            .unwrap();
        assert!(
            secrecy::ExposeSecret::expose_secret(&rt)
                .ends_with(&format!("-{}", g.record.rt_version))
        );
        // Whichever came first, the record is consistent: an expiring notice for the old
        // token means a renewed one for the new; none means a fresh start.
        let of = |t: &str| {
            notices
                .iter()
                .filter(|n| n["grant"]["id"] == id.as_str() && n["type"] == t)
                .count()
        };
        assert_eq!(
            of("refresh_token.expiring"),
            of("refresh_token.renewed"),
            "user{i}"
        );
        assert!(matches!(g.record.progress, Progress::None));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn token_requests_racing_fifty_relaunches_never_answer_a_spurious_relaunch_required() {
    let h = Arc::new(
        Harness::with(Options {
            moto: true,
            ..Options::default()
        })
        .await,
    );
    let id = launch_many(&h, 1).await.remove(0);
    let body = serde_json::json!({"grant_id": id.as_str()});
    let first = h.token_request(body.clone()).await;
    let status = first.status().as_u16();
    assert_eq!(status, 200, "{}", body_json(first).await);

    // 50 relaunches, each a newer refresh token (its own nbf), one after another...
    let base = h.now();
    let relaunches = {
        let h = Arc::clone(&h);
        tokio::spawn(async move {
            for i in 1..=50 {
                let mut spec = h.spec("user0");
                spec.nbf = base + Duration::seconds(i);
                spec.refresh_token = format!("relaunch-{i}");
                let token = spkeeper::testkit::mint_context_token(
                    &spec.claims(),
                    &secrecy::SecretString::from(SECRET.to_string()),
                );
                assert_eq!(h.launch(&token).await.status().as_u16(), 303);
            }
        })
    };
    // ...while four callers keep asking for tokens.
    let callers: Vec<_> = (0..4)
        .map(|_| {
            let h = Arc::clone(&h);
            let body = body.clone();
            let relaunching = relaunches.abort_handle();
            tokio::spawn(async move {
                let mut statuses = BTreeMap::new();
                while !relaunching.is_finished() {
                    let status = h.token_request(body.clone()).await.status().as_u16();
                    *statuses.entry(status).or_insert(0u32) += 1;
                }
                statuses
            })
        })
        .collect();
    relaunches.await.unwrap();
    let mut all = BTreeMap::new();
    for c in callers {
        for (status, n) in c.await.unwrap() {
            *all.entry(status).or_insert(0u32) += n;
        }
    }
    println!("token answers during 50 relaunches: {all:?}");
    assert!(all.values().sum::<u32>() >= 20, "the race ran: {all:?}");
    assert_eq!(
        all.keys().copied().collect::<Vec<_>>(),
        vec![200],
        "{all:?}"
    );
    assert_eq!(
        h.store_load(&id).await.record.rt_version,
        (base + Duration::seconds(50)).timestamp()
    );
}

#[tokio::test]
async fn a_crash_between_the_store_update_and_the_sqs_send_loses_no_notice() {
    let h = moto_harness().await;
    let id = launch_many(&h, 1).await.remove(0);
    let Backend::Moto { aws, sdk, leases } = &h.backend else {
        unreachable!()
    };
    let exp = h.store_load(&id).await.record.rt_expires_at;
    let at = exp - Duration::days(30) + Duration::hours(1);

    // The process "dies" after the transaction and before the send: its relay cannot reach
    // SQS (a queue that does not exist), exactly where a crash would stop it.
    let dead_queue = SqsQueue::new(
        aws_sdk_sqs::Client::new(sdk),
        format!("{}-gone", aws.queue.url()),
    );
    let crashed = spkeeper::context::Context {
        relay: Arc::new(DynamoRelay::new(aws.dynamo.clone(), dead_queue)),
        ..(*h.ctx).clone()
    };
    let result = SweepService::new(Arc::new(crashed)).run(at, false).await;
    assert!(result.is_err(), "the relay failed mid-sweep");
    assert_eq!(
        h.store_load(&id).await.record.progress,
        Progress::Expiring(30),
        "the state change is written"
    );
    assert!(
        moto::drain(sdk, aws.queue.url()).await.is_empty(),
        "nothing reached the queue"
    );

    // The next sweep (after the crashed one's claim lapses) sends it, once, with its id.
    leases.advance(CLAIM + Duration::seconds(1));
    let later = at + Duration::hours(1);
    let s = SweepService::new(Arc::clone(&h.ctx))
        .run(later, false)
        .await
        .unwrap();
    assert_eq!(
        s.notices["refresh_token.expiring"], 0,
        "no second notice is written"
    );
    assert_eq!(s.relayed, 1);
    let bodies = moto::drain(sdk, aws.queue.url()).await;
    assert_eq!(bodies.len(), 1);
    let n: Value = serde_json::from_str(&bodies[0]).unwrap();
    assert_eq!(
        (n["type"].as_str(), n["days_left"].as_i64()),
        (Some("refresh_token.expiring"), Some(30))
    );
    let again = SweepService::new(Arc::clone(&h.ctx))
        .run(later + Duration::hours(1), false)
        .await
        .unwrap();
    assert_eq!(again.relayed, 0);
}

/// A harness on moto that records the DynamoDB and the SQS operations it sends, apart.
async fn recording_both() -> (Harness, Arc<Mutex<Vec<String>>>, Arc<Mutex<Vec<String>>>) {
    let (ops, queue_ops) = (
        Arc::new(Mutex::new(Vec::new())),
        Arc::new(Mutex::new(Vec::new())),
    );
    let h = Harness::with(Options {
        moto: true,
        record_operations: Some(Arc::clone(&ops)),
        record_queue_operations: Some(Arc::clone(&queue_ops)),
        ..Options::default()
    })
    .await;
    (h, ops, queue_ops)
}

/// The notice ids on the queue, drained (a repeated id is kept twice).
async fn queued_ids(h: &Harness) -> Vec<String> {
    let Backend::Moto { aws, sdk, .. } = &h.backend else {
        unreachable!()
    };
    let mut ids: Vec<String> = moto::drain(sdk, aws.queue.url())
        .await
        .iter()
        .map(|b| {
            serde_json::from_str::<Value>(b).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    ids.sort();
    ids
}

/// The ids of the notices still in the outbox of every grant's item.
async fn every_outbox_id(h: &Harness) -> Vec<String> {
    let grants: Vec<GrantId> = h
        .ctx
        .grants
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|g| g.id)
        .collect();
    outbox_ids(h, &grants).await
}

/// SQS holds `n` notices, each id once (and they are taken off the queue).
async fn assert_queued_once(h: &Harness, n: usize) {
    let ids = queued_ids(h).await;
    assert_eq!(ids.len(), n);
    assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), n, "each once");
}

/// The ids of the notices queued in the outbox of these grants' items.
async fn outbox_ids(h: &Harness, ids: &[GrantId]) -> Vec<String> {
    let (aws, _) = moto_parts(h);
    let mut out = Vec::new();
    for id in ids {
        let item = aws
            .dynamo
            .client()
            .get_item()
            .table_name(aws.dynamo.table())
            .key("pk", AttrValue::S(format!("G#{id}")))
            .key("sk", AttrValue::S("G".into()))
            .consistent_read(true)
            .send()
            .await
            .unwrap()
            .item
            .unwrap();
        out.extend(outbox_of(&item).into_iter().map(|(id, _)| id));
    }
    out.sort();
    out
}

/// Another process's store and relay on the same table and queue: its own relay owner, the
/// same (wall) clock for leases.
fn another_process(h: &Harness, queue: SqsQueue) -> (DynamoStore, DynamoRelay) {
    let (aws, leases) = moto_parts(h);
    let store = DynamoStore::new(aws.dynamo.client().clone(), aws.dynamo.table())
        .with_lease_clock(Arc::clone(leases) as Arc<dyn Clock>);
    let relay = DynamoRelay::new(store.clone(), queue);
    (store, relay)
}

/// Measured 2026-11-26, 30 notices: 60 UpdateItems, 9 Queries (the 8 due shards, one outbox
/// page), 3 SendMessageBatch. The advance takes the relay's lease in its own write, so the
/// sweep's relay sends without a claim: per notice, that write and the removal.
#[tokio::test]
async fn a_sweep_queues_each_notice_with_two_update_items() {
    const N: usize = 30;
    let (h, ops, queue_ops) = recording_both().await;
    let at = seed_due(&h, N).await;
    counted(&ops);
    counted(&queue_ops);
    let s = SweepService::new(Arc::clone(&h.ctx))
        .run(at, false)
        .await
        .unwrap();
    let (dynamo, sqs) = (counted(&ops), counted(&queue_ops));
    println!("a sweep of {N} notices sent {dynamo:?} and {sqs:?}");
    assert_eq!(s.notices["refresh_token.expiring"], N as u64);
    assert_eq!(s.relayed, N as u64);
    assert_eq!(dynamo.get("UpdateItem"), Some(&(2 * N)), "{dynamo:?}");
    assert_eq!(
        sqs,
        BTreeMap::from([("SendMessageBatch".to_string(), N / 10)]),
        "full batches of 10"
    );
    assert_queued_once(&h, N).await;
    assert!(every_outbox_id(&h).await.is_empty(), "every outbox emptied");
}

/// Past a page of notices the sweep does not wait for its end to send them: the leased
/// notices go out as they gather, so a long sweep never holds more than about two pages.
/// (Pages of 8 per shard here: 200 due grants make four or so rounds of the 8 shards.)
#[tokio::test]
async fn a_long_sweep_sends_its_notices_as_they_gather_not_all_at_its_end() {
    const N: usize = 200;
    // One log for both services: the SQS sends in order among the due index's pages.
    let log = Arc::new(Mutex::new(Vec::new()));
    let h = Harness::with(Options {
        moto: true,
        record_operations: Some(Arc::clone(&log)),
        record_queue_operations: Some(Arc::clone(&log)),
        ..Options::default()
    })
    .await;
    let at = seed_due(&h, N).await;
    log.lock().unwrap().clear();
    let s = SweepService::new(Arc::clone(&h.ctx))
        .with_page(8)
        .run(at, false)
        .await
        .unwrap();
    assert_eq!(s.relayed, N as u64);
    let log = log.lock().unwrap().clone();
    let first_send = log.iter().position(|op| op == "SendMessageBatch").unwrap();
    // The due index's Queries, less the outbox's one at the end.
    let due_queries = log.iter().filter(|op| *op == "Query").count() - 1;
    let due_queries_before = log[..first_send].iter().filter(|op| *op == "Query").count();
    assert!(
        due_queries_before < due_queries,
        "the first send came after all {due_queries} of the due index's pages"
    );
    let ids = queued_ids(&h).await;
    assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), N);
    assert_eq!(ids.len(), N, "each once");
}

/// A sweep that finds the item leased by another relay (which claimed the notices already
/// in it) writes its advance without the lease: the new notice waits in the outbox, and is
/// sent, once, with the other one, by the relay that holds the item after that lease.
#[tokio::test]
async fn a_notice_whose_item_another_relay_holds_is_still_queued_exactly_once() {
    let h = moto_harness().await;
    let (aws, leases) = moto_parts(&h);
    let mut g = conformance::record("held", 0);
    g.site_url = "https://contoso.sharepoint.com/sites/a".into();
    let at = g.rt_expires_at - Duration::days(30) + Duration::hours(1);
    let earlier = conformance::notice_for(&g, Stage::Expiring(60), at - Duration::days(30));
    h.ctx
        .grants
        .put_grant(None, &g, "v1.k.sealed", Some(&earlier))
        .await
        .unwrap();
    let (other, _) = another_process(&h, aws.queue.clone());
    let key = (format!("G#{}", g.id), "G".to_string());
    let held = other
        .claim(&key)
        .await
        .unwrap()
        .expect("the other relay holds the item");
    assert_eq!(held.notices.len(), 1);

    let s = SweepService::new(Arc::clone(&h.ctx))
        .run(at, false)
        .await
        .unwrap();
    assert_eq!(
        s.notices["refresh_token.expiring"], 1,
        "the advance is written"
    );
    assert_eq!((s.conflicts, s.relayed), (0, 0), "{s:?}");
    assert_eq!(
        h.store_load(&g.id).await.record.progress,
        Progress::Expiring(30)
    );
    assert!(
        queued_ids(&h).await.is_empty(),
        "nothing sent under another's lease"
    );
    let waiting = outbox_ids(&h, std::slice::from_ref(&g.id)).await;
    assert_eq!(waiting.len(), 2, "both notices wait in the item");

    // The other relay died holding it: after its lease, the next relay sends both, once.
    leases.advance(CLAIM + Duration::seconds(1));
    let relayed = aws.relay.relay_pending(None).await.unwrap();
    assert_eq!(relayed.relayed, 2);
    assert_eq!(queued_ids(&h).await, waiting);
    leases.advance(CLAIM * 2);
    assert_eq!(aws.relay.relay_pending(None).await.unwrap().relayed, 0);
    assert!(queued_ids(&h).await.is_empty());
}

/// A sweep that dies after its advances (their leases taken, nothing sent) loses nothing: a
/// sweep before those leases lapse sends nothing (the dead one might still); one after sends
/// each notice once.
#[tokio::test]
async fn a_sweep_that_dies_after_its_advances_loses_nothing_and_sends_nothing_twice() {
    const N: usize = 3;
    let h = moto_harness().await;
    let at = seed_due(&h, N).await;
    let (_, leases) = moto_parts(&h);
    // The dying process: its own store (relay owner) and a queue it cannot reach.
    assert!(
        SweepService::new(process_without_sqs(&h))
            .run(at, false)
            .await
            .is_err()
    );
    assert_eq!(every_outbox_id(&h).await.len(), N, "every notice written");

    leases.advance(CLAIM - Duration::seconds(10));
    let before = SweepService::new(Arc::clone(&h.ctx))
        .run(at, false)
        .await
        .unwrap();
    assert_eq!(
        (before.total_notices(), before.relayed),
        (0, 0),
        "{before:?}"
    );
    assert!(queued_ids(&h).await.is_empty());

    leases.advance(Duration::seconds(10));
    let after = SweepService::new(Arc::clone(&h.ctx))
        .run(at, false)
        .await
        .unwrap();
    assert_eq!(
        (after.total_notices(), after.relayed),
        (0, N as u64),
        "{after:?}"
    );
    assert_queued_once(&h, N).await;
    assert!(every_outbox_id(&h).await.is_empty());
}

/// The move a sweep writes for a due grant: to T-30, with its notice.
fn advance_with_notice(g: &GrantRecord, now: DateTime<Utc>) -> Advance {
    Advance {
        id: g.id.clone(),
        expected_rev: g.rev,
        progress: Progress::Expiring(30),
        next_due_at: None,
        notice: Some(conformance::notice_for(g, Stage::Expiring(30), now)),
    }
}

/// Another process whose relay cannot reach SQS (a queue that does not exist): where a crash
/// or an outage stops it, after its writes.
fn process_without_sqs(h: &Harness) -> Arc<spkeeper::context::Context> {
    process_on(h, queue_that_is_down(h))
}

/// Another process's context (its own store and relay) sending to `queue`.
fn process_on(h: &Harness, queue: SqsQueue) -> Arc<spkeeper::context::Context> {
    let (store, relay) = another_process(h, queue);
    Arc::new(spkeeper::context::Context {
        grants: Arc::new(store),
        relay: Arc::new(relay),
        ..(*h.ctx).clone()
    })
}

/// `moves` written by a process that died before its relay ran, its leases since lapsed:
/// each item waits in the outbox for a claim (as what a launch writes does).
async fn left_by_a_dead_process(h: &Harness, moves: &[Advance], at: DateTime<Utc>) {
    let (aws, leases) = moto_parts(h);
    let (dead, _) = another_process(h, aws.queue.clone());
    dead.advance_all(moves, at).await.unwrap();
    leases.advance(CLAIM);
}

/// A queue that does not exist: every send fails.
fn queue_that_is_down(h: &Harness) -> SqsQueue {
    let Backend::Moto { aws, sdk, .. } = &h.backend else {
        unreachable!()
    };
    SqsQueue::new(
        aws_sdk_sqs::Client::new(sdk),
        format!("{}-down", aws.queue.url()),
    )
}

/// The move a sweep writes for each of the harness's grants, due at `at`.
async fn every_grant_advanced(h: &Harness, at: DateTime<Utc>) -> Vec<Advance> {
    h.ctx
        .grants
        .list()
        .await
        .unwrap()
        .iter()
        .map(|g| advance_with_notice(g, at))
        .collect()
}

/// Once every lease has lapsed, the harness's relay sends the `n` notices waiting, each once.
async fn after_the_leases_all_go_out_once(h: &Harness, n: usize) {
    let (aws, leases) = moto_parts(h);
    leases.advance(CLAIM);
    assert_eq!(
        aws.relay.relay_pending(None).await.unwrap().relayed,
        n as u64
    );
    assert_queued_once(h, n).await;
}

/// A harness on moto.
async fn moto_harness() -> Harness {
    Harness::with(Options {
        moto: true,
        ..Options::default()
    })
    .await
}

/// One due grant on a fresh moto harness, advanced to T-30 by the sweep's write (which took
/// the relay's lease): the harness, the sweep's `now`, and the move written.
async fn one_advanced() -> (Harness, DateTime<Utc>, Advance) {
    let h = moto_harness().await;
    let at = seed_due(&h, 1).await;
    let g = h.ctx.grants.list().await.unwrap().remove(0);
    let m = advance_with_notice(&g, at);
    assert_eq!(
        h.ctx
            .grants
            .advance_all(std::slice::from_ref(&m), at)
            .await
            .unwrap(),
        [Written::Done]
    );
    (h, at, m)
}

/// Its AWS adapters, and the clock their leases are timed by.
fn moto_parts(h: &Harness) -> (&Aws, &Arc<OffsetClock>) {
    let Backend::Moto { aws, leases, .. } = &h.backend else {
        unreachable!()
    };
    (aws, leases)
}

/// A sweep's `now` is its start: by its last page, minutes old. The lease its writes take is
/// timed by the wall clock all the same, so no other relay (a launch's, judging by its own
/// clock) claims and sends a notice the sweep is about to send.
#[tokio::test]
async fn a_sweep_whose_now_is_long_past_still_holds_the_leases_its_writes_take() {
    let (h, at, _) = one_advanced().await;
    let (aws, _) = moto_parts(&h);
    assert!(at < chrono::Utc::now() - CLAIM, "the sweep's now is old");
    let (_, launch_relay) = another_process(&h, aws.queue.clone());
    assert_eq!(launch_relay.relay_pending(None).await.unwrap().relayed, 0);
    assert_eq!(aws.relay.relay_pending(None).await.unwrap().relayed, 1);
    assert_eq!(queued_ids(&h).await.len(), 1, "sent once");
}

/// A lease the sweep's write took lapses before its relay runs (a stuck process): another
/// relay claims and sends the item, and this one, when it runs, does not send it again.
#[tokio::test]
async fn a_relay_lets_go_of_what_it_leased_once_the_lease_lapses() {
    let (h, _, written) = one_advanced().await;
    let (aws, leases) = moto_parts(&h);
    leases.advance(CLAIM);
    let (_, other_relay) = another_process(&h, aws.queue.clone());
    assert_eq!(other_relay.relay_pending(None).await.unwrap().relayed, 1);
    assert_eq!(aws.relay.relay_pending(None).await.unwrap().relayed, 0);
    let notice = written.notice.as_ref().unwrap();
    assert_eq!(queued_ids(&h).await, std::slice::from_ref(&notice.id));
}

/// With less than the send margin left on its lease, a relay does not send what its sweep
/// leased as it is (the lease could lapse on the way, and another relay send it too): it claims
/// the item afresh, then sends it, once; no other relay can claim it meanwhile.
#[tokio::test]
async fn a_relay_sends_a_lease_with_too_little_time_left_only_once_it_claimed_it_afresh() {
    let (h, _, _) = one_advanced().await;
    let (aws, leases) = moto_parts(&h);
    leases.advance(CLAIM - SEND_MARGIN + Duration::seconds(1));
    assert!(aws.dynamo.take_leased(0, usize::MAX).is_empty());
    let (_, other_relay) = another_process(&h, aws.queue.clone());
    assert_eq!(
        other_relay.relay_pending(None).await.unwrap().relayed,
        0,
        "not another relay's to take"
    );
    assert_eq!(aws.relay.relay_pending(None).await.unwrap().relayed, 1);
    assert!(every_outbox_id(&h).await.is_empty());
    assert_queued_once(&h, 1).await;
}

/// While this process sends an item's notices, it does not claim the item again, even where
/// the lease is its own and has lost its margin (a launch's relay beside a sweep's page).
#[tokio::test]
async fn an_item_this_process_is_sending_is_not_claimed_again_meanwhile() {
    let (h, _, _) = one_advanced().await;
    let (aws, leases) = moto_parts(&h);
    let page = aws.dynamo.take_leased(0, 1);
    leases.advance(CLAIM - SEND_MARGIN + Duration::seconds(1));
    let sending = aws.dynamo.in_flight(&page);
    assert!(aws.dynamo.claim(&page[0].key).await.unwrap().is_none());
    drop(sending);
    assert!(
        aws.dynamo.claim(&page[0].key).await.unwrap().is_some(),
        "its own lease, its margin gone, once no longer in flight"
    );
}

/// What a store's sweep writes leased and no relay took is let go once the lease lapses, at
/// the next write if no relay comes: a warm process's list cannot grow without bound.
#[tokio::test]
async fn leased_items_no_relay_took_are_let_go_once_their_lease_lapses() {
    let h = moto_harness().await;
    let at = seed_due(&h, 2).await;
    let (aws, leases) = moto_parts(&h);
    let grants = h.ctx.grants.list().await.unwrap();
    aws.dynamo
        .advance_all(&[advance_with_notice(&grants[0], at)], at)
        .await
        .unwrap();
    leases.advance(CLAIM);
    aws.dynamo
        .advance_all(&[advance_with_notice(&grants[1], at)], at)
        .await
        .unwrap();
    let kept = aws.dynamo.take_leased(0, usize::MAX);
    assert_eq!(
        kept.iter().map(|h| h.key.0.clone()).collect::<Vec<_>>(),
        [format!("G#{}", grants[1].id)]
    );
    assert!(
        aws.dynamo.take_leased(0, usize::MAX).is_empty(),
        "taken once"
    );
}

/// A dry run writes nothing, so it takes no lease either: only the due index is read.
#[tokio::test]
async fn a_dry_run_sweep_on_dynamodb_reads_the_due_index_and_writes_nothing() {
    let (h, ops, queue_ops) = recording_both().await;
    let at = seed_due(&h, 3).await;
    counted(&ops);
    counted(&queue_ops);
    let s = SweepService::new(Arc::clone(&h.ctx))
        .run(at, true)
        .await
        .unwrap();
    assert_eq!(s.notices["refresh_token.expiring"], 3);
    assert_eq!(counted(&ops), BTreeMap::from([("Query".to_string(), 8)]));
    assert!(counted(&queue_ops).is_empty());
    let (aws, _) = moto_parts(&h);
    assert!(aws.dynamo.take_leased(0, usize::MAX).is_empty());
}

#[tokio::test]
async fn the_sweep_only_queries_the_index_and_never_scans() {
    let (h, ops) = recording().await;
    let ids = launch_many(&h, 3).await;
    let exp = h.store_load(&ids[0]).await.record.rt_expires_at;
    ops.lock().unwrap().clear();
    let s = SweepService::new(Arc::clone(&h.ctx))
        .run(exp - Duration::days(7), false)
        .await
        .unwrap();
    assert_eq!(s.notices["refresh_token.expiring"], 3);
    let seen = counted(&ops);
    assert!(!seen.contains_key("Scan"), "{seen:?}");
    assert!(
        seen.contains_key("Query") && seen.contains_key("UpdateItem"),
        "{seen:?}"
    );
    // Nothing that reads an item by key: the sweep never touches a token.
    let allowed = ["Query", "UpdateItem", "PutItem"];
    assert!(
        seen.keys().all(|op| allowed.contains(&op.as_str())),
        "the sweep sent {seen:?}"
    );
    // and `spkeeper grants`, the one operator listing, is the only Scan there is
    ops.lock().unwrap().clear();
    h.ctx.grants.list().await.unwrap();
    assert_eq!(ops.lock().unwrap().as_slice(), ["Scan"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_concurrent_redemptions_of_one_ticket_on_dynamodb_make_exactly_one_winner() {
    let h = Arc::new(
        Harness::with(Options {
            moto: true,
            extra_env: vec![(
                "SPKEEPER_RETURN_URL",
                "https://app.example.com/after-launch".into(),
            )],
            ..Options::default()
        })
        .await,
    );
    let resp = h.launch(&h.token("user0")).await;
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    let ticket = url::Url::parse(&location)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "ticket")
        .unwrap()
        .1
        .into_owned();
    let tries: Vec<_> = (0..2)
        .map(|_| {
            let (h, ticket) = (Arc::clone(&h), ticket.clone());
            tokio::spawn(async move {
                let req = axum::http::Request::post("/handoff")
                    .header("authorization", format!("Bearer {API_KEY}"))
                    .body(axum::body::Body::from(
                        serde_json::json!({ "ticket": ticket }).to_string(),
                    ))
                    .unwrap();
                h.send(req).await.status().as_u16()
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tries {
        statuses.push(t.await.unwrap());
    }
    statuses.sort_unstable();
    assert_eq!(statuses, vec![200, 409]);
}

/// DynamoDB lets go of an Entra grant's refresh token 90 days after its last redemption (the
/// item's TTL is the grant's `rt_expires_at`), and of its details 180 days after that (the
/// relaunch retention, as for ACS); a rotation moves both.
#[tokio::test]
async fn an_entra_refresh_token_item_expires_90_days_after_its_last_redemption() {
    use aws_sdk_dynamodb::types::AttributeValue;
    use spkeeper::core::entra::INACTIVITY_DAYS;
    use spkeeper::core::grant::{Kind, relaunch_retention};
    use spkeeper::ports::GrantStore;
    let (aws, sdk, _) = moto_backend(None).await;
    let client = aws_sdk_dynamodb::Client::new(&sdk);
    let ttl_of = |pk: String, sk: &'static str| {
        let client = client.clone();
        let table = aws.dynamo.table().to_string();
        async move {
            let item = client
                .get_item()
                .table_name(table)
                .key("pk", AttributeValue::S(pk))
                .key("sk", AttributeValue::S(sk.into()))
                .send()
                .await
                .unwrap()
                .item
                .expect("the item exists");
            item["ttl"].as_n().unwrap().parse::<i64>().unwrap()
        }
    };
    let mut g = conformance::record("entra-ttl", 0);
    g.kind = Kind::Entra;
    let signed_in = conformance::t0();
    g.rt_expires_at = signed_in + Duration::days(INACTIVITY_DAYS);
    aws.dynamo
        .put_grant(None, &g, "v2.k.rt0", None)
        .await
        .unwrap();
    let (rt_key, details_key) = (format!("RT#{}", g.id), format!("G#{}", g.id));
    assert_eq!(
        ttl_of(rt_key.clone(), "RT").await,
        g.rt_expires_at.timestamp()
    );
    assert_eq!(
        ttl_of(details_key.clone(), "G").await,
        relaunch_retention(g.rt_expires_at).timestamp()
    );

    // Redeemed 40 days later: the rotation's write moves both.
    let mut rotated = g.clone();
    rotated.rt_version += 1;
    rotated.rt_expires_at = signed_in + Duration::days(40 + INACTIVITY_DAYS);
    aws.dynamo
        .put_grant(Some(1), &rotated, "v2.k.rt1", None)
        .await
        .unwrap();
    assert_eq!(
        ttl_of(rt_key, "RT").await,
        rotated.rt_expires_at.timestamp()
    );
    assert_eq!(
        ttl_of(details_key, "G").await,
        relaunch_retention(rotated.rt_expires_at).timestamp()
    );
}

/// What one user costs on DynamoDB (BENCHMARKS.md's cost table rests on these counts): a
/// first launch (realm discovery, the grant stored, the first access token exchanged and
/// cached), a relaunch, and a cached `/token`.
#[tokio::test]
async fn a_launch_a_relaunch_and_a_cached_token_send_these_dynamodb_requests() {
    let (h, ops) = recording().await;
    ops.lock().unwrap().clear();
    assert_eq!(h.launch(&h.token("megan")).await.status().as_u16(), 303);
    let first = counted(&ops);
    let mut spec = h.spec("megan");
    spec.nbf = h.now() + Duration::seconds(60);
    spec.refresh_token = "relaunched".into();
    let relaunch = spkeeper::testkit::mint_context_token(
        &spec.claims(),
        &secrecy::SecretString::from(SECRET.to_string()),
    );
    assert_eq!(h.launch(&relaunch).await.status().as_u16(), 303);
    let again = counted(&ops);
    let id = h.ctx.grants.list().await.unwrap()[0].id.clone();
    counted(&ops);
    let body = serde_json::json!({"grant_id": id.as_str()});
    assert_eq!(h.token_request(body).await.status().as_u16(), 200);
    let cached = counted(&ops);
    println!("first launch: {first:?}\nrelaunch: {again:?}\ncached /token: {cached:?}");
    let total = |m: &BTreeMap<String, usize>| m.values().sum::<usize>();
    // Measured 2026-11-26: 12 (4 GetItem, 3 PutItem, 2 TransactGetItems, 1 each of
    // TransactWriteItems, UpdateItem, DeleteItem), 5 and 1 (the grant, its refresh token and
    // the cached token in one TransactGetItems). More is a regression.
    assert!(total(&first) <= 12, "{first:?}");
    assert!(total(&again) <= 5, "{again:?}");
    assert_eq!(
        cached,
        BTreeMap::from([("TransactGetItems".to_string(), 1)])
    );
    assert!(!first.contains_key("Scan") && !again.contains_key("Scan"));
}

/// A cached `POST /token` reads the grant, its refresh token and the cached token in one
/// request: at once when the caller names the host, and from its second call on an instance
/// when it names neither host nor scope (the first teaches the instance the grant's host).
#[tokio::test]
async fn a_cached_token_is_one_dynamodb_request_when_the_host_is_named_or_known() {
    let (h, ops) = recording().await;
    assert_eq!(h.launch(&h.token("megan")).await.status().as_u16(), 303);
    let record = h.ctx.grants.list().await.unwrap().remove(0);
    let site = url::Url::parse(&record.site_url).unwrap();
    let host = spkeeper::core::hosts::authority_of(&site);
    let one = BTreeMap::from([("TransactGetItems".to_string(), 1)]);

    // A new instance, the host named: one request.
    counted(&ops);
    let tokens = TokenService::for_context(&h.ctx);
    let named = tokens
        .access_token(&record.id, Some(&host), None)
        .await
        .unwrap();
    assert_eq!(counted(&ops), one);

    // Another new instance, nothing named: it learns the host from the grant first.
    let tokens = TokenService::for_context(&h.ctx);
    let first = tokens.access_token(&record.id, None, None).await.unwrap();
    assert_eq!(
        counted(&ops),
        BTreeMap::from([
            ("GetItem".to_string(), 1),
            ("TransactGetItems".to_string(), 1)
        ])
    );
    let second = tokens.access_token(&record.id, None, None).await.unwrap();
    assert_eq!(counted(&ops), one);
    // The same cached token every time, and nothing asked of ACS.
    assert_eq!(named.expires_at, first.expires_at);
    assert_eq!(first.expires_at, second.expires_at);
}

/// A harness on moto that records every DynamoDB operation it sends, by name.
async fn recording() -> (Harness, Arc<Mutex<Vec<String>>>) {
    let ops = Arc::new(Mutex::new(Vec::new()));
    let h = Harness::with(Options {
        moto: true,
        record_operations: Some(Arc::clone(&ops)),
        ..Options::default()
    })
    .await;
    (h, ops)
}

/// The operations recorded since the last call, counted by name (and forgotten).
fn counted(ops: &Arc<Mutex<Vec<String>>>) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for op in ops.lock().unwrap().drain(..) {
        *m.entry(op).or_default() += 1;
    }
    m
}

/// Records when each DynamoDB operation starts and when it has its answer, in order.
#[derive(Debug)]
struct RecordSpans(Arc<Mutex<Vec<String>>>);

impl aws_smithy_runtime_api::client::interceptors::Intercept for RecordSpans {
    fn name(&self) -> &'static str {
        "RecordSpans"
    }

    fn read_before_serialization(
        &self,
        _context: &aws_smithy_runtime_api::client::interceptors::context::BeforeSerializationInterceptorContextRef<'_>,
        _components: &aws_smithy_runtime_api::client::runtime_components::RuntimeComponents,
        cfg: &mut aws_smithy_types::config_bag::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        self.push("start", cfg);
        Ok(())
    }

    fn read_after_execution(
        &self,
        _context: &aws_smithy_runtime_api::client::interceptors::context::FinalizerInterceptorContextRef<'_>,
        _components: &aws_smithy_runtime_api::client::runtime_components::RuntimeComponents,
        cfg: &mut aws_smithy_types::config_bag::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        self.push("end", cfg);
        Ok(())
    }
}

impl RecordSpans {
    fn push(&self, when: &str, cfg: &aws_smithy_types::config_bag::ConfigBag) {
        if let Some(m) = cfg.load::<aws_smithy_runtime_api::client::orchestrator::Metadata>() {
            self.0.lock().unwrap().push(format!("{when} {}", m.name()));
        }
    }
}

#[tokio::test]
async fn the_eight_shards_of_the_due_index_are_queried_at_once() {
    let sdk = moto::sdk_config().await;
    let (table, queue) = moto::fresh(&sdk, "shards").await;
    let spans = Arc::new(Mutex::new(Vec::new()));
    let dynamo = aws_sdk_dynamodb::config::Builder::from(&sdk)
        .interceptor(RecordSpans(Arc::clone(&spans)))
        .build();
    let aws = Aws::from_clients(
        aws_sdk_dynamodb::Client::from_conf(dynamo),
        aws_sdk_sqs::Client::new(&sdk),
        &table,
        &queue,
    );
    let page = spkeeper::ports::GrantStore::due(&aws.dynamo, chrono::Utc::now(), None, 100)
        .await
        .unwrap();
    assert!(page.grants.is_empty() && page.next.is_none());
    let spans = spans.lock().unwrap().clone();
    // One round trip: every shard's Query is on its way before the first answer comes back
    // (one after the other, an empty sweep waited for eight).
    assert_eq!(spans.len(), 16, "{spans:?}");
    assert!(
        spans[..8].iter().all(|s| s == "start Query"),
        "the shards were queried one after another: {spans:?}"
    );
}

#[tokio::test]
async fn a_relay_page_goes_to_sqs_as_ten_batches_at_once() {
    let sdk = moto::sdk_config().await;
    let (_table, queue) = moto::fresh(&sdk, "batches").await;
    let spans = Arc::new(Mutex::new(Vec::new()));
    let sqs = aws_sdk_sqs::config::Builder::from(&sdk)
        .interceptor(RecordSpans(Arc::clone(&spans)))
        .build();
    let queue = SqsQueue::new(aws_sdk_sqs::Client::from_conf(sqs), &queue);
    let messages: Vec<spkeeper::aws::sqs::Message> = (0..100)
        .map(|i| spkeeper::aws::sqs::Message {
            id: format!("n-{i}"),
            body: format!("{{\"id\":\"n-{i}\"}}"),
        })
        .collect();
    let sent = queue.send(&messages, PAGE_SEND_BUDGET).await;
    assert_eq!(sent.accepted.len(), 100);
    let spans = spans.lock().unwrap().clone();
    assert_eq!(spans.len(), 20, "{spans:?}");
    // One round trip: every batch is on its way before the first answer comes back.
    assert!(
        spans[..10].iter().all(|s| s == "start SendMessageBatch"),
        "the batches went one after another: {spans:?}"
    );
    let mut got = moto::drain(&sdk, queue.url()).await;
    got.sort();
    got.dedup();
    assert_eq!(got.len(), 100, "each message once");
}

/// A batch SQS turns away whole (here an entry id it does not accept) costs only its own
/// notices: the ids of the batches it took are all returned, so the relay removes them from
/// the outbox and never sends them again.
#[tokio::test]
async fn a_batch_sqs_refuses_does_not_lose_the_ids_of_the_batches_it_took() {
    let sdk = moto::sdk_config().await;
    let (_table, queue) = moto::fresh(&sdk, "refused").await;
    let queue = SqsQueue::new(aws_sdk_sqs::Client::new(&sdk), &queue);
    let messages: Vec<spkeeper::aws::sqs::Message> = (0..30)
        .map(|i| spkeeper::aws::sqs::Message {
            id: if i == 25 {
                "not an id".to_string()
            } else {
                format!("n-{i}")
            },
            body: format!("{{\"id\":\"n-{i}\"}}"),
        })
        .collect();
    let mut sent = queue.send(&messages, PAGE_SEND_BUDGET).await.accepted;
    sent.sort_by_key(|id| id[2..].parse::<u32>().unwrap());
    let expected: Vec<String> = (0..20).map(|i| format!("n-{i}")).collect();
    assert_eq!(sent, expected, "the two batches SQS took");
    assert_eq!(moto::drain(&sdk, queue.url()).await.len(), 20);
}

/// SQS down in the middle of a long sweep: the sweep still visits every due grant (writing
/// each notice into the outbox), then fails, so the function's error alarm fires; once the
/// leases lapse, a relay sends each notice once.
#[tokio::test]
async fn a_sweep_visits_every_due_grant_while_sqs_is_down_and_then_fails() {
    const N: usize = 120;
    let h = moto_harness().await;
    let at = seed_due(&h, N).await;
    let err = SweepService::new(process_without_sqs(&h))
        .with_page(8)
        .run(at, false)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("did not take {N} notices")),
        "{err}"
    );
    assert_eq!(
        every_outbox_id(&h).await.len(),
        N,
        "every due grant visited"
    );
    assert!(queued_ids(&h).await.is_empty());

    after_the_leases_all_go_out_once(&h, N).await;
}

/// Write request units as DynamoDB bills them (the table, and each of the five indexes, all of
/// which project every attribute), from the items as written on moto, with a refresh token of
/// realistic size (1,500 bytes, as in a 2.8 KB context token): a relaunch, the sweep's advance
/// of a grant to T-30 (its notice and the relay's lease in the write) and the relay's removal.
/// The cost table in BENCHMARKS.md is made from these figures.
#[tokio::test]
async fn the_write_units_of_a_relaunch_and_of_a_notice_with_their_indexes() {
    use spkeeper::aws::table::{WriteUnits, write_units};
    let h = moto_harness().await;
    let (aws, leases) = moto_parts(&h);
    let get = |pk: String, sk: &'static str| {
        let (client, table) = (aws.dynamo.client().clone(), aws.dynamo.table().to_string());
        async move {
            client
                .get_item()
                .table_name(table)
                .key("pk", AttrValue::S(pk))
                .key("sk", AttrValue::S(sk.into()))
                .consistent_read(true)
                .send()
                .await
                .unwrap()
                .item
                .unwrap()
        }
    };
    let launch = |spec: &spkeeper::testkit::ContextTokenSpec| {
        let token = spkeeper::testkit::mint_context_token(
            &spec.claims(),
            &secrecy::SecretString::from(SECRET.to_string()),
        );
        let h = &h;
        async move { assert_eq!(h.launch(&token).await.status().as_u16(), 303) }
    };
    let mut spec = h.spec("megan");
    spec.refresh_token = "a".repeat(1500);
    launch(&spec).await;
    let id = h.grant_id("megan");
    let (grant, refresh) = ((format!("G#{id}"), "G"), (format!("RT#{id}"), "RT"));
    // The user as the launch's best-effort lookup records it (it may time out on a busy
    // machine): a grant whose user is known, as most are, in the lookup indexes.
    let user = spkeeper::core::notice::User {
        title: "Megan Bowen".into(),
        email: "MeganB@contoso.onmicrosoft.com".into(),
        login_name: "i:0#.f|membership|meganb@contoso.onmicrosoft.com".into(),
        oid: None,
    };
    h.ctx.grants.set_user(&id, &user).await.unwrap();
    let g0 = get(grant.0.clone(), grant.1).await;
    let rt0 = get(refresh.0.clone(), refresh.1).await;
    spec.nbf += Duration::seconds(60);
    spec.refresh_token = "b".repeat(1500);
    launch(&spec).await;
    let g1 = get(grant.0.clone(), grant.1).await;
    let rt1 = get(refresh.0.clone(), refresh.1).await;
    let twice = |w: WriteUnits| WriteUnits {
        table: 2 * w.table,
        indexes: 2 * w.indexes,
    };
    let (g, rt) = (
        write_units(Some(&g0), Some(&g1)),
        write_units(Some(&rt0), Some(&rt1)),
    );
    let relaunch = twice(WriteUnits {
        table: g.table + rt.table,
        indexes: g.indexes + rt.indexes,
    });

    // The sweep at T-30, its relay cut off after the write; then a relay sends the notice.
    let at = h.store_load(&id).await.record.rt_expires_at - Duration::days(30);
    let s = SweepService::new(process_without_sqs(&h))
        .run(at, false)
        .await;
    assert!(s.is_err(), "its relay could not send");
    let g2 = get(grant.0.clone(), grant.1).await;
    leases.advance(CLAIM);
    assert_eq!(aws.relay.relay_pending(None).await.unwrap().relayed, 1);
    let g3 = get(grant.0.clone(), grant.1).await;
    let (advance, removal) = (
        write_units(Some(&g1), Some(&g2)),
        write_units(Some(&g2), Some(&g3)),
    );
    let size = spkeeper::aws::table::item_size;
    println!(
        "grant item {} / {} / {} bytes, refresh token item {} bytes\n\
         relaunch {relaunch:?}\nadvance {advance:?}\nremoval {removal:?}",
        size(&g1),
        size(&g2),
        size(&g3),
        size(&rt1)
    );
    // Measured 2026-11-26 with items of 683 / 1,464 / 690 bytes (grant: after the relaunch,
    // with its notice, emptied) and 2,123 (refresh token). The relaunch is a transaction (twice
    // the units) of the grant, which moves in `due` and changes in `by_email` and `by_login`,
    // and its refresh token; the advance moves the grant in `due`, puts it in `outbox`, and
    // changes it in the two lookup indexes; the removal takes it out of `outbox`. More is a
    // regression; fewer, redo the cost table.
    assert_eq!(
        relaunch,
        WriteUnits {
            table: 8,
            indexes: 8
        }
    );
    assert_eq!(
        advance,
        WriteUnits {
            table: 2,
            indexes: 9
        }
    );
    assert_eq!(
        removal,
        WriteUnits {
            table: 2,
            indexes: 5
        }
    );
}

/// What a sweep leased is taken a page at a time, each judged by the clock when it is taken:
/// a page sent after a slow one is not sent once too little of its lease is left.
#[tokio::test]
async fn each_page_of_leased_notices_is_judged_by_the_clock_when_it_is_taken() {
    let h = moto_harness().await;
    let at = seed_due(&h, 2).await;
    let (aws, leases) = moto_parts(&h);
    let moves = every_grant_advanced(&h, at).await;
    aws.dynamo.advance_all(&moves, at).await.unwrap();
    assert_eq!(aws.dynamo.take_leased(0, 1).len(), 1, "the first page");
    leases.advance(CLAIM - SEND_MARGIN + Duration::seconds(1));
    assert!(
        aws.dynamo.take_leased(0, 1).is_empty(),
        "too late for the second"
    );
    // After the leases, both wait for a claim (the first was taken here, never sent).
    leases.advance(SEND_MARGIN);
    assert_eq!(aws.relay.relay_pending(None).await.unwrap().relayed, 2);
    assert_queued_once(&h, 2).await;
}

/// Sets a delay SQS does not take (over 900 s) on the batch entries whose body holds `.0`:
/// SQS (and moto) then refuse those entries as a sender fault, as real SQS refuses a body
/// holding a character it does not take.
#[derive(Debug)]
struct RefuseBodiesWith(String);

impl aws_smithy_runtime_api::client::interceptors::Intercept for RefuseBodiesWith {
    fn name(&self) -> &'static str {
        "RefuseBodiesWith"
    }

    fn modify_before_serialization(
        &self,
        context: &mut aws_smithy_runtime_api::client::interceptors::context::BeforeSerializationInterceptorContextMut<'_>,
        _components: &aws_smithy_runtime_api::client::runtime_components::RuntimeComponents,
        _cfg: &mut aws_smithy_types::config_bag::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        use aws_sdk_sqs::operation::send_message_batch::SendMessageBatchInput;
        if let Some(input) = context.input_mut().downcast_mut::<SendMessageBatchInput>() {
            for e in input.entries.iter_mut().flatten() {
                if e.message_body.contains(&self.0) {
                    e.delay_seconds = Some(901);
                }
            }
        }
        Ok(())
    }
}

/// Another process whose SQS refuses, as they are, the notices whose body holds `marker`.
fn process_whose_sqs_refuses(h: &Harness, marker: &str) -> Arc<spkeeper::context::Context> {
    let Backend::Moto { aws, sdk, .. } = &h.backend else {
        unreachable!()
    };
    let sqs = aws_sdk_sqs::config::Builder::from(&**sdk)
        .interceptor(RefuseBodiesWith(marker.to_string()))
        .build();
    process_on(
        h,
        SqsQueue::new(aws_sdk_sqs::Client::from_conf(sqs), aws.queue.url()),
    )
}

/// A notice SQS refuses as it is (a sender fault: no retry changes the answer) does not fail
/// the sweep, which would then fail every run: it is counted as `refused` (its log line feeds
/// NoticeRefusedAlarm) and stays in the outbox; the others go out, each once.
#[tokio::test]
async fn a_notice_sqs_refuses_as_it_is_stays_queued_and_does_not_fail_the_sweep() {
    const N: usize = 12;
    let h = moto_harness().await;
    let at = seed_due(&h, N).await;
    let (_, leases) = moto_parts(&h);
    let refused = h.ctx.grants.list().await.unwrap()[3].id.clone();
    let ctx = process_whose_sqs_refuses(&h, refused.as_str());
    let summary = SweepService::new(Arc::clone(&ctx))
        .run(at, false)
        .await
        .unwrap();
    assert_eq!(
        (summary.relayed, summary.refused, summary.not_relayed),
        (N as u64 - 1, 1, 0),
        "{summary:?}"
    );
    let json = serde_json::to_value(&summary).unwrap();
    assert_eq!(json["refused"], 1, "in the printed summary: {json}");
    assert_eq!(queued_ids(&h).await.len(), N - 1);
    let left = outbox_ids(&h, std::slice::from_ref(&refused)).await;
    assert_eq!(left.len(), 1, "still queued");

    // The next sweep tries it again, still without failing.
    leases.advance(CLAIM);
    let again = SweepService::new(ctx).run(at, false).await.unwrap();
    assert_eq!((again.relayed, again.refused), (0, 1), "{again:?}");
    assert_eq!(outbox_ids(&h, &[refused]).await, left);
}

/// A relay starts no page with less than a few seconds before its deadline: what waits goes
/// out, once, with time enough.
#[tokio::test]
async fn a_relay_starts_no_page_without_a_few_seconds_before_its_deadline() {
    use spkeeper::aws::relay::MIN_PAGE;
    use std::time::{Duration as StdDuration, Instant};
    let (h, _, _) = one_advanced().await;
    let (aws, _) = moto_parts(&h);
    let short = Instant::now() + MIN_PAGE - StdDuration::from_millis(500);
    let stats = aws.relay.relay_pending(Some(short)).await.unwrap();
    assert_eq!((stats.relayed, stats.stopped), (0, true), "{stats:?}");
    assert!(queued_ids(&h).await.is_empty());
    let enough = Instant::now() + MIN_PAGE + StdDuration::from_secs(5);
    assert_eq!(
        aws.relay.relay_pending(Some(enough)).await.unwrap().relayed,
        1
    );
    assert_queued_once(&h, 1).await;
}

/// A sweep stops visiting its relay's reserve before its deadline, and its relay still sends,
/// in that time, what waits in the outbox; the next run, with time, does the rest.
#[tokio::test]
async fn a_sweep_on_dynamodb_stops_visiting_before_its_deadline_and_still_relays() {
    use spkeeper::aws::relay::RELAY_RESERVE;
    use std::time::{Duration as StdDuration, Instant};
    let h = moto_harness().await;
    let at = seed_due(&h, 3).await;
    let g = h.ctx.grants.list().await.unwrap().remove(0);
    left_by_a_dead_process(&h, &[advance_with_notice(&g, at)], at).await;
    let sweep = SweepService::new(Arc::clone(&h.ctx));
    let short = Instant::now() + RELAY_RESERVE - StdDuration::from_secs(1);
    let s = sweep.run_until(at, false, Some(short)).await.unwrap();
    assert!(s.stopped_early && s.examined == 0, "{s:?}");
    assert_eq!(s.relayed, 1, "the relay still had its time: {s:?}");
    let enough = Instant::now() + RELAY_RESERVE + StdDuration::from_secs(60);
    let s = sweep.run_until(at, false, Some(enough)).await.unwrap();
    assert_eq!(
        (s.examined, s.relayed, s.stopped_early),
        (2, 2, false),
        "{s:?}"
    );
    assert_queued_once(&h, 3).await;
}

/// The notice a launch (or a token exchange) queues goes to SQS at once, in the launch's own
/// short send: not at the next sweep.
#[tokio::test]
async fn a_notice_relayed_now_is_on_sqs_without_a_sweep() {
    let h = moto_harness().await;
    let at = seed_due(&h, 1).await;
    let (aws, _) = moto_parts(&h);
    let g = h.ctx.grants.list().await.unwrap().remove(0);
    let m = advance_with_notice(&g, at);
    // Written without a lease, as a launch writes.
    assert_eq!(h.ctx.grants.advance(&m, at).await.unwrap(), Written::Done);
    let notice = m.notice.as_ref().unwrap();
    aws.relay.relay_now(notice).await.unwrap();
    let Backend::Moto { sdk, .. } = &h.backend else {
        unreachable!()
    };
    let on_sqs = moto::drain(sdk, aws.queue.url()).await;
    assert_eq!(on_sqs.len(), 1, "on SQS at once");
    assert!(on_sqs[0].contains(&notice.id));
    assert!(
        every_outbox_id(&h).await.is_empty(),
        "and out of the outbox"
    );
}

/// A sweep queuing a notice now and then does not wait for a full page while what its writes
/// leased loses its margin: once the oldest lease comes near to it, the store hands the relay
/// what it has.
#[tokio::test]
async fn leased_notices_are_handed_over_before_their_leases_lose_the_margin_without_a_full_page() {
    use spkeeper::aws::relay::SEND_SOON;
    let (h, _, _) = one_advanced().await;
    let (aws, leases) = moto_parts(&h);
    assert!(
        aws.dynamo.take_leased(100, 100).is_empty(),
        "not yet a page"
    );
    leases.advance(CLAIM - SEND_MARGIN - SEND_SOON + Duration::seconds(1));
    assert_eq!(
        aws.dynamo.take_leased(100, 100).len(),
        1,
        "sent before it is too late"
    );
}

/// SQS taking none of a page (down, throttling) ends the relay's run there: the rest waits in
/// the outbox for the next relay, which sends each once.
#[tokio::test]
async fn a_relay_stops_after_a_page_sqs_took_none_of() {
    const N: usize = 120;
    let h = moto_harness().await;
    let at = seed_due(&h, N).await;
    left_by_a_dead_process(&h, &every_grant_advanced(&h, at).await, at).await;
    let (_, relay) = another_process(&h, queue_that_is_down(&h));
    let stats = relay.relay_pending(None).await.unwrap();
    assert_eq!(
        (stats.relayed, stats.failed),
        (0, 100),
        "one page: {stats:?}"
    );
    after_the_leases_all_go_out_once(&h, N).await;
}

/// A removal sent late, under a lease that has since lapsed and been taken again by the same
/// relay (a warm process), changes nothing: the newer lease, and the notice, stay.
#[tokio::test]
async fn a_late_removal_does_not_end_a_newer_lease_of_the_same_relay() {
    let (h, _, written) = one_advanced().await;
    let (aws, leases) = moto_parts(&h);
    let first = aws.dynamo.take_leased(0, 1).remove(0);
    leases.advance(CLAIM);
    let second = aws.dynamo.claim(&first.key).await.unwrap().unwrap();
    assert_ne!(first.leased_until, second.leased_until);
    let id = written.notice.as_ref().unwrap().id.clone();
    aws.dynamo
        .remove_relayed(&first, std::slice::from_ref(&id), aws.dynamo.relay_owner())
        .await
        .unwrap();
    let (holders, _) = aws.dynamo.holders(None, 10).await.unwrap();
    assert_eq!(holders.len(), 1, "still in the outbox");
    assert_eq!(
        holders[0].leased_until, second.leased_until,
        "the newer lease holds"
    );
    assert_eq!(holders[0].notices.len(), 1);
}

/// Holds every SQS request for a while before it goes out (blocking its thread): a slow send.
#[derive(Debug)]
struct SlowSqs(std::time::Duration);

impl aws_smithy_runtime_api::client::interceptors::Intercept for SlowSqs {
    fn name(&self) -> &'static str {
        "SlowSqs"
    }

    fn read_before_transmit(
        &self,
        _context: &aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef<'_>,
        _components: &aws_smithy_runtime_api::client::runtime_components::RuntimeComponents,
        _cfg: &mut aws_smithy_types::config_bag::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        std::thread::sleep(self.0);
        Ok(())
    }
}

/// While a relay sends a page of what its sweep leased, its own process does not claim those
/// items again, even once their leases have lost the margin (a launch's relay_now beside a
/// sweep): the notice goes out once.
#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn a_page_being_sent_is_not_claimed_again_by_its_own_process() {
    let (h, _, written) = one_advanced().await;
    let (aws, leases) = moto_parts(&h);
    let Backend::Moto { sdk, .. } = &h.backend else {
        unreachable!()
    };
    let sqs = aws_sdk_sqs::config::Builder::from(&**sdk)
        .interceptor(SlowSqs(std::time::Duration::from_secs(2)))
        .build();
    // The same store (its relay identity and leases), with a slow SQS.
    let slow = DynamoRelay::new(
        aws.dynamo.clone(),
        SqsQueue::new(aws_sdk_sqs::Client::from_conf(sqs), aws.queue.url()),
    );
    let sending = tokio::spawn(async move { slow.relay_pending(None).await.unwrap() });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    leases.advance(CLAIM - SEND_MARGIN + Duration::seconds(1));
    let item = (format!("G#{}", written.id), "G".to_string());
    assert!(
        aws.dynamo.claim(&item).await.unwrap().is_none(),
        "claimed while its page was on its way"
    );
    assert_eq!(sending.await.unwrap().relayed, 1);
    assert_queued_once(&h, 1).await;
}

/// Holds every removal of relayed notices (an `UpdateItem` that REMOVEs) for a while before it
/// goes out (blocking its thread): DynamoDB slow.
#[derive(Debug)]
struct SlowRemovals(std::time::Duration);

impl aws_smithy_runtime_api::client::interceptors::Intercept for SlowRemovals {
    fn name(&self) -> &'static str {
        "SlowRemovals"
    }

    fn read_before_serialization(
        &self,
        context: &aws_smithy_runtime_api::client::interceptors::context::BeforeSerializationInterceptorContextRef<'_>,
        _components: &aws_smithy_runtime_api::client::runtime_components::RuntimeComponents,
        _cfg: &mut aws_smithy_types::config_bag::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        use aws_sdk_dynamodb::operation::update_item::UpdateItemInput;
        let removal = context
            .input()
            .downcast_ref::<UpdateItemInput>()
            .and_then(|i| i.update_expression.as_deref())
            .is_some_and(|e| e.contains("REMOVE"));
        if removal {
            std::thread::sleep(self.0);
        }
        Ok(())
    }
}

/// Removals that run out of time (DynamoDB slow) are counted, not hidden: SQS has the notice,
/// the outbox may still, and it goes again with the same id; the sweep fails on the count.
/// (The slow removal blocks its thread, so here the relay ends after its deadline, by the
/// rest of that sleep.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removals_that_run_out_of_time_are_counted() {
    use std::time::{Duration as StdDuration, Instant};
    let h = moto_harness().await;
    let at = seed_due(&h, 1).await;
    let (aws, leases) = moto_parts(&h);
    let g = h.ctx.grants.list().await.unwrap().remove(0);
    let m = advance_with_notice(&g, at);
    assert_eq!(h.ctx.grants.advance(&m, at).await.unwrap(), Written::Done);
    let Backend::Moto { sdk, .. } = &h.backend else {
        unreachable!()
    };
    let slow = aws_sdk_dynamodb::config::Builder::from(&**sdk)
        .interceptor(SlowRemovals(StdDuration::from_secs(8)))
        .build();
    let store = DynamoStore::new(
        aws_sdk_dynamodb::Client::from_conf(slow),
        aws.dynamo.table(),
    )
    .with_lease_clock(Arc::clone(leases) as Arc<dyn Clock>);
    let relay = DynamoRelay::new(store, aws.queue.clone());
    // Room for the outbox query and the claim before the page's minimum, on a busy machine.
    let deadline = Instant::now() + spkeeper::aws::relay::MIN_PAGE + StdDuration::from_millis(1500);
    let stats = relay.relay_pending(Some(deadline)).await.unwrap();
    assert_eq!((stats.relayed, stats.unremoved), (1, 1), "{stats:?}");
}
