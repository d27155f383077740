//! The sweep under a deadline: it stops cleanly, leaves the rest due for the next run, and
//! between the runs every due notice goes out exactly once.

mod common;

use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

use chrono::Duration;

use common::*;
use spkeeper::ports::GrantStore;
use spkeeper::store::conformance;

/// `n` grants due at once (their 30-day notice), written straight through the store.
async fn seed(h: &Harness, n: usize) -> chrono::DateTime<chrono::Utc> {
    let grants: Arc<dyn GrantStore> = Arc::clone(&h.ctx.grants);
    for i in 0..n {
        let g = conformance::record(&format!("deadline-{i}"), 0);
        grants
            .put_grant(None, &g, "v2.k.sealed", None)
            .await
            .unwrap();
    }
    let g = conformance::record("deadline-0", 0);
    g.rt_expires_at - Duration::days(30) + Duration::hours(1)
}

#[tokio::test]
async fn a_sweep_out_of_time_stops_cleanly_and_the_next_run_sends_the_rest_once() {
    let h = Harness::new().await;
    let at = seed(&h, 450).await;

    // no time at all: nothing examined, nothing lost
    let s = h
        .sweep
        .run_until(at, false, Some(Instant::now()))
        .await
        .unwrap();
    assert!(s.stopped_early);
    assert_eq!(s.examined, 0);

    // a little time: some of it
    let first = h
        .sweep
        .run_until(
            at,
            false,
            Some(Instant::now() + StdDuration::from_millis(30)),
        )
        .await
        .unwrap();
    // then the rest, and then nothing
    let second = h.sweep.run_until(at, false, None).await.unwrap();
    assert!(!second.stopped_early);
    let third = h.sweep.run(at, false).await.unwrap();
    let sent = |s: &spkeeper::service::sweep::SweepSummary| s.notices["refresh_token.expiring"];
    assert_eq!(
        sent(&first) + sent(&second),
        450,
        "every due notice, once: {first:?} {second:?}"
    );
    assert_eq!(sent(&third), 0);
    let queued = h.queued().await;
    let mut ids: Vec<&str> = queued.iter().map(|n| n["id"].as_str().unwrap()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 450, "no notice twice");
    println!(
        "first run (30 ms): {} notices; second: {}",
        sent(&first),
        sent(&second)
    );
}
