//! `spkeeper sweep | grants | renew-link | notices`.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use spkeeper::config::RenewVia;
use spkeeper::core::grant::{GrantId, Kind, days_left};
use spkeeper::core::notice::rfc3339;
use spkeeper::core::notice::{Notice, NoticeType};
use spkeeper::ports::Outbox;
use spkeeper::ports::Written;
use spkeeper::service::grants::{GrantsError, GrantsService};
use spkeeper::service::sweep::SweepService;

use crate::Failure;
use crate::setup::{self, Backend, Mode};

fn runtime(e: impl std::fmt::Display) -> Failure {
    Failure::Runtime(e.to_string())
}

fn mode(dev: bool) -> Mode {
    if dev { Mode::Dev } else { Mode::Plain }
}

/// How far ahead of the clock `--now` may be before it counts as "in the future".
const NOW_SLACK: chrono::Duration = chrono::Duration::minutes(5);

pub async fn sweep(
    now: Option<DateTime<Utc>>,
    dry_run: bool,
    force: bool,
    dev: bool,
) -> Result<(), Failure> {
    // A sweep "in the future" against real grants sends real notices early and marks grants
    // expired that are not: outside the simulator it must be a dry run or a deliberate --force.
    if let Some(t) = now
        && !dev
        && !dry_run
        && !force
        && t > Utc::now() + NOW_SLACK
    {
        return Err(Failure::Usage(
            "--now is in the future: this would send real notices early; add --dry-run to see \
             what it would do, or --force for a deliberate rehearsal"
                .into(),
        ));
    }
    let loaded = setup::load(mode(dev)).await?;
    let now = now.unwrap_or_else(|| loaded.ctx.now());
    let result = SweepService::new(loaded.ctx).run(now, dry_run).await;
    // A sweep that did its work but could not relay every notice still prints its summary
    // (what it did, and `not_relayed`), then fails.
    let summary = match &result {
        Ok(summary) => Some(summary),
        Err(e) => e.summary(),
    };
    if let Some(summary) = summary {
        println!("{}", serde_json::to_string(summary).map_err(runtime)?);
    }
    result.map(|_| ()).map_err(runtime)
}

pub async fn grants(as_json: bool, dev: bool) -> Result<(), Failure> {
    let loaded = setup::load(mode(dev)).await?;
    let ctx = &loaded.ctx;
    let now = ctx.now();
    let grants = ctx.grants.list().await.map_err(runtime)?;
    let rows: Vec<Value> = grants
        .iter()
        .map(|g| {
            json!({
                "id": g.id,
                "kind": g.kind,
                "realm": g.realm,
                "site_url": g.site_url,
                "user": g.user,
                "status": ctx.status_of(g, now),
                "refresh_token_expires_at": rfc3339(g.rt_expires_at),
                "days_left": days_left(g.rt_expires_at, now),
                "notices_sent": g.progress.to_string(),
            })
        })
        .collect();
    if as_json {
        println!("{}", Value::Array(rows));
        return Ok(());
    }
    if rows.is_empty() {
        println!("no grants yet");
        return Ok(());
    }
    println!(
        "{:<32}  {:<5}  {:<9}  {:<20}  {:>4}  {:<12}  {:<24}  SITE",
        "GRANT", "KIND", "STATUS", "EXPIRES", "DAYS", "NOTICES", "USER"
    );
    for (g, r) in grants.iter().zip(&rows) {
        let user = g
            .user
            .as_ref()
            .map(|u| {
                if u.email.is_empty() {
                    u.title.clone()
                } else {
                    u.email.clone()
                }
            })
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<32}  {:<5}  {:<9}  {:<20}  {:>4}  {:<12}  {:<24}  {}",
            g.id,
            g.kind.as_str(),
            r["status"].as_str().unwrap_or(""),
            r["refresh_token_expires_at"].as_str().unwrap_or(""),
            r["days_left"],
            r["notices_sent"].as_str().unwrap_or(""),
            user,
            g.site_url
        );
    }
    Ok(())
}

fn grant_id(raw: &str) -> Result<GrantId, Failure> {
    GrantId::parse(raw.trim()).ok_or_else(|| {
        Failure::Usage(format!(
            "{raw:?} is not a grant id (32 lowercase hex digits)"
        ))
    })
}

/// `spkeeper migrate`: one `grant.migration_required` notice per ACS grant, once each, whose
/// link leads to Entra sign-in (which carries the grant over).
pub async fn migrate(dry_run: bool, dev: bool) -> Result<(), Failure> {
    let loaded = setup::load(mode(dev)).await?;
    let ctx = &loaded.ctx;
    if ctx.settings.renew_via != RenewVia::Entra {
        return Err(Failure::Usage(
            "SPKEEPER_RENEW_VIA: must be entra, so that the notices' links lead to Entra sign-in"
                .into(),
        ));
    }
    let now = ctx.now();
    let (mut acs, mut queued, mut before) = (0u64, 0u64, 0u64);
    for g in ctx.grants.list().await.map_err(runtime)? {
        if g.kind != Kind::Acs {
            continue;
        }
        acs += 1;
        if dry_run {
            continue;
        }
        let renew_url = ctx.renew_url(&g.id, now);
        let notice = Notice::about_grant(
            NoticeType::MigrationRequired,
            None,
            g.notice_subject(&renew_url),
            now,
        );
        match ctx
            .grants
            .queue_once(&format!("migration_required|{}", g.id), &notice)
            .await
            .map_err(runtime)?
        {
            Written::Done => queued += 1,
            Written::Conflict => before += 1,
        }
    }
    // On DynamoDB, to SQS now (each waits in its own marker item): not at the next sweep.
    if queued > 0 {
        match ctx.relay.relay_pending(None).await {
            Ok(r) if r.failed + r.refused > 0 => {
                tracing::warn!(
                    failed = r.failed,
                    refused = r.refused,
                    "the notices SQS did not take stay queued for the next sweep"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "the notices stay queued for the next sweep"),
        }
    }
    println!(
        "{}",
        json!({"acs_grants": acs, "queued": queued, "queued_before": before, "dry_run": dry_run})
    );
    Ok(())
}

/// `DELETE /grants/{id}` from the command line.
pub async fn forget(raw: &str, dev: bool) -> Result<(), Failure> {
    let id = grant_id(raw)?;
    let loaded = setup::load(mode(dev)).await?;
    match GrantsService::new(loaded.ctx).forget(&id).await {
        Ok(()) => {
            println!("forgot grant {id}");
            Ok(())
        }
        Err(GrantsError::UnknownGrant) => Err(Failure::Runtime(format!("no grant {id}"))),
        Err(e) => Err(runtime(e)),
    }
}

pub async fn renew_link(raw: &str, dev: bool) -> Result<(), Failure> {
    let id = grant_id(raw)?;
    let loaded = setup::load(mode(dev)).await?;
    let ctx = &loaded.ctx;
    if ctx.grants.load(&id).await.map_err(runtime)?.is_none() {
        return Err(Failure::Runtime(format!("no grant {id}")));
    }
    println!("{}", ctx.renew_url(&id, ctx.now()));
    Ok(())
}

/// At most this many dead letters are listed (a dead-letter queue keeps 14 days' worth).
const DEAD_LETTERS_SHOWN: usize = 1000;

pub async fn notices(
    as_json: bool,
    dev: bool,
    dead_letter_queue: Option<&str>,
) -> Result<(), Failure> {
    let loaded = setup::load(mode(dev)).await?;
    let rows = match (&loaded.backend, dead_letter_queue) {
        (Backend::Sqlite(_), Some(_)) => {
            return Err(Failure::Usage(
                "--dead-letter-queue is for SPKEEPER_STORE=dynamodb; the embedded store lists its dead letters without it".into(),
            ));
        }
        // What SQS gave up on: read, not deleted (hidden while the list is read, then shown again).
        (Backend::Aws(aws), Some(url)) => {
            if !url::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "https" | "http")) {
                return Err(Failure::Usage(
                    "--dead-letter-queue must be the queue's URL (the stack's NoticeDeadLetterQueueUrl)".into(),
                ));
            }
            let dlq = spkeeper::aws::sqs::SqsQueue::new(aws.queue.client().clone(), url);
            dlq.peek(DEAD_LETTERS_SHOWN, 30)
                .await
                .map_err(runtime)?
                .iter()
                .map(|m| {
                    let id = serde_json::from_str::<Value>(&m.body)
                        .ok()
                        .and_then(|n| n["id"].as_str().map(String::from))
                        .unwrap_or_else(|| m.message_id.clone());
                    row(
                        &id,
                        &m.body,
                        json!({
                            "attempts": m.receive_count,
                            "dead_letter": true,
                            "last_error": "the webhook receiver never accepted it",
                            "sqs_message_id": m.message_id,
                            "sent_at": m.sent_at.map(rfc3339),
                        }),
                    )
                })
                .collect()
        }
        (Backend::Sqlite(store), None) => store
            .undelivered()
            .await
            .map_err(runtime)?
            .iter()
            .map(|e| {
                row(
                    &e.id,
                    &e.body,
                    json!({
                        "attempts": e.attempts,
                        "next_attempt_at": rfc3339(e.next_attempt_at),
                        "last_error": e.last_error,
                        "dead_letter": e.dead,
                    }),
                )
            })
            .collect(),
        // On DynamoDB, what has not reached SQS yet; SQS and its dead-letter queue hold the rest.
        (Backend::Aws(aws), None) => {
            let mut rows = Vec::new();
            let mut cursor = None;
            loop {
                let (holders, next) = aws.dynamo.holders(cursor, 100).await.map_err(runtime)?;
                for h in holders {
                    for (id, body) in &h.notices {
                        rows.push(row(id, body, json!({"state": "not yet on SQS"})));
                    }
                }
                match next {
                    Some(n) => cursor = Some(n),
                    None => break,
                }
            }
            rows
        }
    };
    if as_json {
        println!("{}", Value::Array(rows));
        return Ok(());
    }
    if rows.is_empty() {
        println!("no notices waiting");
        return Ok(());
    }
    println!(
        "{:<36}  {:<24}  {:<32}  {:>8}  STATE",
        "NOTICE", "TYPE", "GRANT", "ATTEMPTS"
    );
    for r in &rows {
        let state = if r["dead_letter"] == true {
            format!("dead letter ({})", r["last_error"].as_str().unwrap_or(""))
        } else if let Some(err) = r["last_error"].as_str() {
            format!(
                "retry at {} ({err})",
                r["next_attempt_at"].as_str().unwrap_or("")
            )
        } else {
            r["state"].as_str().unwrap_or("queued").to_string()
        };
        println!(
            "{:<36}  {:<24}  {:<32}  {:>8}  {state}",
            r["id"].as_str().unwrap_or(""),
            r["type"].as_str().unwrap_or(""),
            r["grant_id"].as_str().unwrap_or("-"),
            r["attempts"].as_u64().unwrap_or(0),
        );
    }
    Ok(())
}

/// One queued notice for `notices`: its id, what it is, and how its delivery stands.
fn row(id: &str, body: &str, status: Value) -> Value {
    let notice: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let mut r = json!({
        "id": id,
        "type": notice["type"],
        "grant_id": notice["grant"]["id"],
        "created_at": notice["created_at"],
        "notice": notice,
    });
    if let (Some(r), Some(s)) = (r.as_object_mut(), status.as_object()) {
        r.extend(s.clone());
    }
    r
}
