//! One conformance suite for every store adapter: the conditional-write rules the services
//! rely on. Each adapter's tests call [`run`] with a probe that reports the notices it queued.

use async_trait::async_trait;
use chrono::{DateTime, Duration, TimeZone, Utc};

use crate::core::grant::{GrantId, Kind, Progress, Stage, refresh_token_expiry};
use crate::core::notice::{Notice, NoticeGrant, NoticeSubject, NoticeType, User};
use crate::ports::{
    Advance, CachedToken, DueCursor, GrantRecord, GrantStore, StandardTokens, TokenCache, UserKey,
    Written,
};

/// Reports the ids of notices queued since the last call (in any order).
#[async_trait]
pub trait NoticeProbe: Send + Sync {
    async fn take(&self) -> Vec<String>;
}

pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 15, 9, 0, 0)
        .single()
        .unwrap_or_default()
}

/// A grant record for tests; `key` picks the grant, `version` the refresh token.
pub fn record(key: &str, version: i64) -> GrantRecord {
    let nbf = t0() + Duration::seconds(version);
    let expires = refresh_token_expiry(nbf);
    GrantRecord {
        id: GrantId::derive("11111111-2222-3333-4444-555555555555", key),
        kind: Kind::Acs,
        rev: 0,
        realm: "11111111-2222-3333-4444-555555555555".into(),
        site_url: "https://contoso.sharepoint.com/sites/a".into(),
        app_web_url: None,
        standard_tokens: StandardTokens {
            language: Some("en-US".into()),
            client_tag: Some("0".into()),
            product_number: Some("16.0.0.0".into()),
        },
        sts_uri: "https://accounts.accesscontrol.windows.net/tokens/OAuth/2".into(),
        target_principal: "00000003-0000-0ff1-ce00-000000000000".into(),
        user: None,
        rt_version: nbf.timestamp(),
        rt_expires_at: expires,
        progress: Progress::None,
        next_due_at: Some(expires - Duration::days(30)),
        created_at: nbf,
        updated_at: nbf,
    }
}

pub fn notice_for(g: &GrantRecord, stage: Stage, now: DateTime<Utc>) -> Notice {
    Notice::for_stage(
        stage,
        g.notice_subject("https://addin.example.com/renew/x?exp=1&sig=s"),
        now,
    )
}

async fn rev_of<S: GrantStore + ?Sized>(s: &S, id: &GrantId) -> u64 {
    s.load(id)
        .await
        .ok()
        .flatten()
        .map(|g| g.record.rev)
        .unwrap_or(0)
}

/// Runs every check. Panics (test failure) on the first broken rule.
pub async fn run<S: GrantStore + TokenCache + ?Sized>(store: &S, probe: &dyn NoticeProbe) {
    create_is_conditional_on_absence(store).await;
    replace_is_conditional_on_the_revision_read(store, probe).await;
    advance_queues_exactly_one_notice_per_winning_write(store, probe).await;
    advance_all_decides_each_move_on_its_own_revision(store, probe).await;
    due_reads_every_due_grant_once_across_pages(store).await;
    set_user_keeps_the_revision(store).await;
    queue_once_queues_once(store, probe).await;
    access_tokens_are_cached_per_grant_and_host(store).await;
    forgetting_access_tokens_drops_every_one_of_that_grant_and_nothing_else(store).await;
    a_grant_loaded_with_its_tokens_is_what_each_read_alone_returns(store).await;
    leases_are_exclusive_until_released_or_lapsed(store).await;
    host_realms_are_remembered_until_they_lapse(store).await;
    users_are_found_by_email_or_login_name_whatever_the_case(store).await;
    forget_erases_the_grant_its_tokens_and_its_queued_notices(store, probe).await;
    a_key_is_used_once(store).await;
    an_entra_user_is_found_by_tenant_and_object_id(store).await;
    a_migration_is_one_conditional_write_and_racing_rotations_keep_one_refresh_token(store).await;
    list_returns_every_grant(store).await;
}

async fn create_is_conditional_on_absence<S: GrantStore + ?Sized>(s: &S) {
    let g = record("create", 0);
    assert_eq!(
        s.put_grant(None, &g, "v1.k.rt1", None).await.unwrap(),
        Written::Done
    );
    assert_eq!(
        s.put_grant(None, &g, "v1.k.rt2", None).await.unwrap(),
        Written::Conflict
    );
    let stored = s.load(&g.id).await.unwrap().unwrap();
    assert_eq!(stored.record.rev, 1);
    assert_eq!(stored.sealed_refresh_token.as_deref(), Some("v1.k.rt1"));
    let mut expected = g.clone();
    expected.rev = 1;
    assert_eq!(stored.record, expected);
    assert!(
        s.load(&GrantId::derive("x", "absent"))
            .await
            .unwrap()
            .is_none()
    );
}

async fn replace_is_conditional_on_the_revision_read<S: GrantStore + ?Sized>(
    s: &S,
    probe: &dyn NoticeProbe,
) {
    let g = record("replace", 0);
    s.put_grant(None, &g, "v1.k.old", None).await.unwrap();
    let newer = record("replace", 60);
    let renewed = Notice::about_grant(
        NoticeType::Renewed,
        None,
        NoticeSubject {
            grant: NoticeGrant {
                id: newer.id.clone(),
                kind: Kind::Acs,
                tenant_id: None,
                realm: newer.realm.clone(),
                site_url: newer.site_url.clone(),
                user: None,
            },
            rt_version: newer.rt_version,
            rt_expires_at: newer.rt_expires_at,
            renew_url: "https://addin.example.com/renew/x?exp=1&sig=s",
        },
        t0(),
    );
    assert_eq!(
        s.put_grant(Some(7), &newer, "v1.k.new", Some(&renewed))
            .await
            .unwrap(),
        Written::Conflict
    );
    assert!(
        probe.take().await.is_empty(),
        "a conflicting write queued a notice"
    );
    assert_eq!(
        s.put_grant(Some(1), &newer, "v1.k.new", Some(&renewed))
            .await
            .unwrap(),
        Written::Done
    );
    assert_eq!(probe.take().await, vec![renewed.id.clone()]);
    let stored = s.load(&g.id).await.unwrap().unwrap();
    assert_eq!(stored.record.rev, 2);
    assert_eq!(stored.record.rt_version, newer.rt_version);
    assert_eq!(stored.sealed_refresh_token.as_deref(), Some("v1.k.new"));
    // a writer that read revision 1 has lost
    assert_eq!(
        s.put_grant(Some(1), &g, "v1.k.old", None).await.unwrap(),
        Written::Conflict
    );
    assert_eq!(
        s.load(&g.id)
            .await
            .unwrap()
            .unwrap()
            .sealed_refresh_token
            .as_deref(),
        Some("v1.k.new")
    );
}

async fn advance_queues_exactly_one_notice_per_winning_write<S: GrantStore + ?Sized>(
    s: &S,
    probe: &dyn NoticeProbe,
) {
    let g = record("advance", 0);
    s.put_grant(None, &g, "v1.k.rt", None).await.unwrap();
    let now = g.rt_expires_at - Duration::days(30);
    let n = notice_for(&g, Stage::Expiring(30), now);
    let next = Some(g.rt_expires_at - Duration::days(7));
    // two sweeps read revision 1; only the first write wins
    let to_30 = Advance {
        id: g.id.clone(),
        expected_rev: 1,
        progress: Progress::Expiring(30),
        next_due_at: next,
        notice: Some(n.clone()),
    };
    let first = s.advance(&to_30, now).await.unwrap();
    let second = s.advance(&to_30, now).await.unwrap();
    assert_eq!((first, second), (Written::Done, Written::Conflict));
    assert_eq!(probe.take().await, vec![n.id.clone()]);
    let stored = s.load(&g.id).await.unwrap().unwrap().record;
    assert_eq!(stored.progress, Progress::Expiring(30));
    assert_eq!(stored.next_due_at, next);
    assert_eq!(stored.rev, 2);
    assert_eq!(stored.updated_at, now);
    // an advance that clears the due time takes the grant out of the index
    let revoke = Advance {
        expected_rev: 2,
        progress: Progress::Revoked,
        next_due_at: None,
        notice: None,
        ..to_30
    };
    let done = s.advance(&revoke, now).await.unwrap();
    assert_eq!(done, Written::Done);
    assert!(probe.take().await.is_empty());
    let due = all_due(s, g.rt_expires_at + Duration::days(1)).await;
    assert!(due.iter().all(|d| d.id != g.id));
}

async fn advance_all_decides_each_move_on_its_own_revision<S: GrantStore + ?Sized>(
    s: &S,
    probe: &dyn NoticeProbe,
) {
    let (won, lost, after) = (
        record("batch-won", 0),
        record("batch-lost", 0),
        record("batch-after", 0),
    );
    for g in [&won, &lost, &after] {
        s.put_grant(None, g, "v1.k.rt", None).await.unwrap();
    }
    let now = won.rt_expires_at - Duration::days(30);
    let next = Some(won.rt_expires_at - Duration::days(7));
    let moves: Vec<Advance> = [(&won, 1), (&lost, 7), (&after, 1)]
        .into_iter()
        .map(|(g, rev)| Advance {
            id: g.id.clone(),
            expected_rev: rev,
            progress: Progress::Expiring(30),
            next_due_at: next,
            notice: Some(notice_for(g, Stage::Expiring(30), now)),
        })
        .collect();
    let written = s.advance_all(&moves, now).await.unwrap();
    assert_eq!(
        written,
        vec![Written::Done, Written::Conflict, Written::Done],
        "a stale revision loses alone, in its place"
    );
    let mut queued = probe.take().await;
    queued.sort();
    let mut expected = vec![
        moves[0].notice.as_ref().unwrap().id.clone(),
        moves[2].notice.as_ref().unwrap().id.clone(),
    ];
    expected.sort();
    assert_eq!(queued, expected, "only the winners' notices are queued");
    for (g, progress, rev) in [
        (&won, Progress::Expiring(30), 2),
        (&lost, Progress::None, 1),
        (&after, Progress::Expiring(30), 2),
    ] {
        let stored = s.load(&g.id).await.unwrap().unwrap().record;
        assert_eq!((stored.progress, stored.rev), (progress, rev), "{}", g.id);
    }
    assert!(s.advance_all(&[], now).await.unwrap().is_empty());
}

/// Every grant due at `now`, through all pages.
pub async fn all_due<S: GrantStore + ?Sized>(s: &S, now: DateTime<Utc>) -> Vec<GrantRecord> {
    let mut out = Vec::new();
    let mut cursor: Option<DueCursor> = None;
    for _ in 0..10_000 {
        let page = s.due(now, cursor.as_ref(), 100).await.unwrap();
        out.extend(page.grants);
        match page.next {
            Some(next) => cursor = Some(next),
            None => return out,
        }
    }
    panic!("the due index never ends");
}

async fn due_reads_every_due_grant_once_across_pages<S: GrantStore + ?Sized>(s: &S) {
    // A distinct time range from the other checks' grants.
    let base = Utc
        .with_ymd_and_hms(2031, 3, 1, 0, 0, 0)
        .single()
        .unwrap_or_default();
    let mut ids = Vec::new();
    for i in 0..7 {
        let mut g = record(&format!("due-{i}"), 0);
        g.next_due_at = Some(base + Duration::hours(i64::from(i % 4)));
        s.put_grant(None, &g, "v1.k.rt", None).await.unwrap();
        ids.push((g.next_due_at, g.id.clone()));
    }
    let mut not_due = record("due-later", 0);
    not_due.next_due_at = Some(base + Duration::days(10));
    s.put_grant(None, &not_due, "v1.k.rt", None).await.unwrap();
    let mut never = record("due-never", 0);
    never.next_due_at = None;
    s.put_grant(None, &never, "v1.k.rt", None).await.unwrap();

    let now = base + Duration::hours(5);
    ids.sort();
    // A page of one per partition makes the cursor carry on within partitions too.
    for limit in [1, 3] {
        let mut seen = Vec::new();
        let mut cursor: Option<DueCursor> = None;
        let mut pages = 0;
        loop {
            let page = s.due(now, cursor.as_ref(), limit).await.unwrap();
            assert!(page.grants.len() <= limit * s.due_partitions());
            for g in page.grants.iter().filter(|g| g.next_due_at >= Some(base)) {
                seen.push((g.next_due_at, g.id.clone()));
            }
            pages += 1;
            assert!(pages < 100, "the due index never ends");
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        seen.sort();
        assert_eq!(
            seen, ids,
            "every due grant, each once, nothing that is not due (pages of {limit})"
        );
    }
}

async fn set_user_keeps_the_revision<S: GrantStore + ?Sized>(s: &S) {
    let g = record("user", 0);
    s.put_grant(None, &g, "v1.k.rt", None).await.unwrap();
    let u = User {
        title: "Megan Bowen".into(),
        email: "megan@contoso.com".into(),
        login_name: "i:0#.f|membership|megan@contoso.com".into(),
        oid: None,
    };
    s.set_user(&g.id, &u).await.unwrap();
    let stored = s.load(&g.id).await.unwrap().unwrap().record;
    assert_eq!(stored.user, Some(u));
    assert_eq!(stored.rev, rev_of(s, &g.id).await);
    assert_eq!(stored.rev, 1);
}

async fn queue_once_queues_once<S: GrantStore + ?Sized>(s: &S, probe: &dyn NoticeProbe) {
    let n = Notice::client_secret_expiring("cid", t0() + Duration::days(20), t0());
    assert_eq!(
        s.queue_once("client_secret:1", &n).await.unwrap(),
        Written::Done
    );
    assert_eq!(
        s.queue_once("client_secret:1", &n).await.unwrap(),
        Written::Conflict
    );
    assert_eq!(probe.take().await, vec![n.id]);
}

async fn access_tokens_are_cached_per_grant_and_host<S: TokenCache + ?Sized>(s: &S) {
    let id = GrantId::derive("r", "cache");
    assert!(
        s.get_access_token(&id, "a.sharepoint.com")
            .await
            .unwrap()
            .is_none()
    );
    let t = CachedToken {
        sealed: "v1.k.at".into(),
        expires_at: t0() + Duration::hours(12),
        resource: "00000003-0000-0ff1-ce00-000000000000/a.sharepoint.com@r".into(),
    };
    s.put_access_token(&id, "a.sharepoint.com", &t)
        .await
        .unwrap();
    let got = s
        .get_access_token(&id, "a.sharepoint.com")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (got.sealed.as_str(), got.expires_at),
        ("v1.k.at", t.expires_at)
    );
    assert_eq!(got.resource, t.resource);
    assert!(
        s.get_access_token(&id, "b.sharepoint.com")
            .await
            .unwrap()
            .is_none()
    );
    let newer = CachedToken {
        sealed: "v1.k.at2".into(),
        ..t
    };
    s.put_access_token(&id, "a.sharepoint.com", &newer)
        .await
        .unwrap();
    assert_eq!(
        s.get_access_token(&id, "a.sharepoint.com")
            .await
            .unwrap()
            .unwrap()
            .sealed,
        "v1.k.at2"
    );
}

/// What [`GrantStore::load_with_tokens`] returns is what `load` and `get_access_token` return
/// one at a time: the grant, and for each key it read, the token or its absence.
async fn a_grant_loaded_with_its_tokens_is_what_each_read_alone_returns<
    S: GrantStore + TokenCache + ?Sized,
>(
    s: &S,
) {
    let g = record("prefetch", 0);
    s.put_grant(None, &g, "v1.k.rt", None).await.unwrap();
    let t = CachedToken {
        sealed: "v1.k.at-prefetch".into(),
        expires_at: t0() + Duration::hours(12),
        resource: "r".into(),
    };
    s.put_access_token(&g.id, "a.sharepoint.com", &t)
        .await
        .unwrap();
    let keys = [
        "a.sharepoint.com".to_string(),
        "b.sharepoint.com".to_string(),
    ];
    let read = s.load_with_tokens(&g.id, &keys).await.unwrap();
    let alone = s.load(&g.id).await.unwrap().unwrap();
    let together = read.grant.expect("the grant");
    assert_eq!(together.record, alone.record);
    assert_eq!(together.sealed_refresh_token, alone.sealed_refresh_token);
    for (key, token) in &read.tokens {
        let alone = s.get_access_token(&g.id, key).await.unwrap();
        assert_eq!(
            token.as_ref().map(|t| (&t.sealed, t.expires_at)),
            alone.as_ref().map(|t| (&t.sealed, t.expires_at)),
            "{key}"
        );
    }
    let absent = s
        .load_with_tokens(&GrantId::derive("x", "prefetch-absent"), &keys)
        .await
        .unwrap();
    assert!(absent.grant.is_none());
}

async fn forgetting_access_tokens_drops_every_one_of_that_grant_and_nothing_else<
    S: GrantStore + TokenCache + ?Sized,
>(
    s: &S,
) {
    let g = record("forget-tokens", 0);
    s.put_grant(None, &g, "v1.k.rt", None).await.unwrap();
    let other = GrantId::derive("r", "forget-tokens-other");
    let t = CachedToken {
        sealed: "v1.k.at".into(),
        expires_at: t0() + Duration::hours(12),
        resource: "r".into(),
    };
    for key in ["a.sharepoint.com", "https://graph.microsoft.com/.default"] {
        s.put_access_token(&g.id, key, &t).await.unwrap();
    }
    s.put_access_token(&other, "a.sharepoint.com", &t)
        .await
        .unwrap();

    s.forget_access_tokens(&g.id).await.unwrap();
    for key in ["a.sharepoint.com", "https://graph.microsoft.com/.default"] {
        assert!(
            s.get_access_token(&g.id, key).await.unwrap().is_none(),
            "{key} was forgotten"
        );
    }
    assert!(
        s.get_access_token(&other, "a.sharepoint.com")
            .await
            .unwrap()
            .is_some(),
        "another grant's token stays"
    );
    let kept = s.load(&g.id).await.unwrap().expect("the grant stays");
    assert_eq!(kept.sealed_refresh_token.as_deref(), Some("v1.k.rt"));
    // nothing cached: nothing to do, no error
    s.forget_access_tokens(&g.id).await.unwrap();
}

async fn leases_are_exclusive_until_released_or_lapsed<S: TokenCache + ?Sized>(s: &S) {
    let now = t0();
    let until = now + Duration::seconds(30);
    assert!(s.try_lease("acs:x", "a", now, until).await.unwrap());
    assert!(!s.try_lease("acs:x", "b", now, until).await.unwrap());
    assert!(s.try_lease("acs:y", "b", now, until).await.unwrap());
    // releasing someone else's lease does nothing
    s.release_lease("acs:x", "b").await.unwrap();
    assert!(!s.try_lease("acs:x", "b", now, until).await.unwrap());
    s.release_lease("acs:x", "a").await.unwrap();
    assert!(s.try_lease("acs:x", "b", now, until).await.unwrap());
    // a lapsed lease can be taken over
    assert!(
        s.try_lease("acs:x", "c", until, until + Duration::seconds(30))
            .await
            .unwrap()
    );
}

async fn host_realms_are_remembered_until_they_lapse<S: TokenCache + ?Sized>(s: &S) {
    let now = t0();
    let realm = "040f2415-e6e3-4480-96ce-26ef73275f73";
    assert_eq!(
        s.get_host_realm("a.sharepoint.com", now).await.unwrap(),
        None
    );
    s.put_host_realm("a.sharepoint.com", realm, now + Duration::hours(24))
        .await
        .unwrap();
    assert_eq!(
        s.get_host_realm("a.sharepoint.com", now).await.unwrap(),
        Some(realm.to_string())
    );
    assert_eq!(
        s.get_host_realm("b.sharepoint.com", now).await.unwrap(),
        None
    );
    assert_eq!(
        s.get_host_realm("a.sharepoint.com", now + Duration::hours(24))
            .await
            .unwrap(),
        None,
        "a lapsed realm must be discovered again"
    );
}

async fn users_are_found_by_email_or_login_name_whatever_the_case<S: GrantStore + ?Sized>(s: &S) {
    let megan = User {
        title: "Megan Bowen".into(),
        email: "Megan.Bowen@Contoso.com".into(),
        login_name: "i:0#.f|membership|megan.bowen@contoso.com".into(),
        oid: None,
    };
    let mut g = record("lookup-a", 0);
    g.user = Some(megan.clone());
    s.put_grant(None, &g, "v1.k.rt", None).await.unwrap();
    // a second grant of hers (another tenant), and one of nobody known yet
    let mut g2 = record("lookup-b", 0);
    g2.user = Some(megan.clone());
    s.put_grant(None, &g2, "v1.k.rt", None).await.unwrap();
    s.put_grant(None, &record("lookup-c", 0), "v1.k.rt", None)
        .await
        .unwrap();

    let ids = |v: Vec<GrantRecord>| v.into_iter().map(|g| g.id).collect::<Vec<_>>();
    let by_email = ids(s
        .find_by_user(&UserKey::email("megan.bowen@CONTOSO.com"))
        .await
        .unwrap());
    assert_eq!(by_email.len(), 2, "{by_email:?}");
    assert!(by_email.contains(&g.id) && by_email.contains(&g2.id));
    let by_login = ids(s
        .find_by_user(&UserKey::login_name(
            "I:0#.F|Membership|MEGAN.BOWEN@contoso.com",
        ))
        .await
        .unwrap());
    assert_eq!(by_login.len(), 2);
    assert!(
        s.find_by_user(&UserKey::email("nobody@contoso.com"))
            .await
            .unwrap()
            .is_empty()
    );

    // The user's details change (a later lookup, or a relaunch): the index follows.
    let renamed = User {
        email: "megan@fabrikam.com".into(),
        ..megan.clone()
    };
    s.set_user(&g.id, &renamed).await.unwrap();
    assert_eq!(
        ids(s
            .find_by_user(&UserKey::email("megan.bowen@contoso.com"))
            .await
            .unwrap()),
        vec![g2.id.clone()]
    );
    assert_eq!(
        ids(s
            .find_by_user(&UserKey::email("MEGAN@fabrikam.com"))
            .await
            .unwrap()),
        vec![g.id.clone()]
    );
    let rev = rev_of(s, &g2.id).await;
    let mut relaunched = record("lookup-b", 10);
    relaunched.user = Some(User {
        email: String::new(),
        ..megan
    });
    s.put_grant(Some(rev), &relaunched, "v1.k.rt2", None)
        .await
        .unwrap();
    assert!(
        s.find_by_user(&UserKey::email("megan.bowen@contoso.com"))
            .await
            .unwrap()
            .is_empty(),
        "an e-mail the user no longer has finds nothing"
    );
}

async fn forget_erases_the_grant_its_tokens_and_its_queued_notices<
    S: GrantStore + TokenCache + ?Sized,
>(
    s: &S,
    probe: &dyn NoticeProbe,
) {
    let _ = probe.take().await;
    let mut g = record("forget", 0);
    g.user = Some(User {
        title: "Alex Wilber".into(),
        email: "alex@contoso.com".into(),
        login_name: "alex@contoso.com".into(),
        oid: None,
    });
    s.put_grant(None, &g, "v1.k.rt", None).await.unwrap();
    s.put_access_token(
        &g.id,
        "a.sharepoint.com",
        &CachedToken {
            sealed: "v2.k.at".into(),
            expires_at: t0() + Duration::hours(12),
            resource: "r".into(),
        },
    )
    .await
    .unwrap();
    // a notice waiting in the store
    let now = g.rt_expires_at - Duration::days(30);
    let notice = notice_for(&g, Stage::Expiring(30), now);
    let rev = rev_of(s, &g.id).await;
    assert_eq!(
        s.advance(
            &Advance {
                id: g.id.clone(),
                expected_rev: rev,
                progress: Progress::Expiring(30),
                next_due_at: Some(g.rt_expires_at - Duration::days(7)),
                notice: Some(notice.clone()),
            },
            now,
        )
        .await
        .unwrap(),
        Written::Done
    );

    assert!(s.forget(&g.id).await.unwrap());
    assert!(s.load(&g.id).await.unwrap().is_none());
    assert!(
        s.get_access_token(&g.id, "a.sharepoint.com")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        s.find_by_user(&UserKey::email("alex@contoso.com"))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        !probe.take().await.contains(&notice.id),
        "a forgotten grant's queued notice is never sent"
    );
    let due = all_due(s, g.rt_expires_at + Duration::days(1)).await;
    assert!(
        due.iter().all(|d| d.id != g.id),
        "the sweep never sees it again"
    );
    assert!(!s.forget(&g.id).await.unwrap(), "nothing left to forget");
}

async fn an_entra_user_is_found_by_tenant_and_object_id<S: GrantStore + ?Sized>(s: &S) {
    let tid = "11111111-2222-3333-4444-555555555555";
    let oid = "99999999-8888-7777-6666-555555555555";
    assert_eq!(s.find_entra_user(tid, oid).await.unwrap(), None);
    // An ACS grant migrated to Entra keeps its id: the user is found there.
    let mut g = record("migrated", 0);
    g.kind = Kind::Entra;
    g.user = Some(User {
        title: "Nestor Wilke".into(),
        email: "nestor@contoso.com".into(),
        login_name: "nestor@contoso.com".into(),
        oid: Some(oid.into()),
    });
    s.put_grant(None, &g, "v2.k.rt", None).await.unwrap();
    assert_eq!(
        s.find_entra_user(tid, oid).await.unwrap(),
        Some(g.id.clone())
    );
    let loaded = s.load(&g.id).await.unwrap().unwrap().record;
    assert_eq!(loaded.kind, Kind::Entra);
    assert_eq!(loaded.user.and_then(|u| u.oid).as_deref(), Some(oid));
    // another tenant's user with the same object id is someone else
    assert_eq!(
        s.find_entra_user("22222222-2222-3333-4444-555555555555", oid)
            .await
            .unwrap(),
        None
    );
    // an ACS grant is never found this way
    assert_eq!(
        record("create", 0).kind,
        Kind::Acs,
        "the conformance records are ACS grants"
    );
}

/// The Entra operations on the store: an ACS grant becomes an Entra grant under its id in one
/// write conditional on the revision read; its keep-alive date is in the due index; of
/// rotations racing from one revision exactly one lands, and an older token never replaces it.
async fn a_migration_is_one_conditional_write_and_racing_rotations_keep_one_refresh_token<
    S: GrantStore + ?Sized,
>(
    s: &S,
) {
    let tid = "11111111-2222-3333-4444-555555555555";
    let oid = "77777777-8888-7777-6666-555555555555";
    let user = User {
        title: "Megan Bowen".into(),
        email: "megan@contoso.com".into(),
        login_name: "i:0#.f|membership|megan@contoso.com".into(),
        oid: None,
    };
    let mut acs = record("migrate", 0);
    acs.user = Some(user.clone());
    s.put_grant(None, &acs, "v2.k.acs", None).await.unwrap();

    // A distinct time range from the other checks' grants.
    let signed_in = Utc
        .with_ymd_and_hms(2033, 6, 1, 0, 0, 0)
        .single()
        .unwrap_or_default();
    let keepalive_at = signed_in + Duration::days(30);
    let mut entra = acs.clone();
    entra.kind = Kind::Entra;
    entra.user = Some(User {
        oid: Some(oid.into()),
        ..user
    });
    entra.rt_version = signed_in.timestamp();
    entra.rt_expires_at = signed_in + Duration::days(crate::core::entra::INACTIVITY_DAYS);
    entra.progress = Progress::None;
    entra.next_due_at = Some(keepalive_at);
    entra.updated_at = signed_in;
    // from a revision that is not the one stored: nothing changes
    assert_eq!(
        s.put_grant(Some(9), &entra, "v2.k.entra", None)
            .await
            .unwrap(),
        Written::Conflict
    );
    assert_eq!(s.find_entra_user(tid, oid).await.unwrap(), None);
    assert_eq!(
        s.put_grant(Some(1), &entra, "v2.k.entra", None)
            .await
            .unwrap(),
        Written::Done
    );
    let stored = s.load(&acs.id).await.unwrap().unwrap();
    assert_eq!(stored.record.kind, Kind::Entra);
    assert_eq!(stored.record.rev, 2);
    assert_eq!(stored.sealed_refresh_token.as_deref(), Some("v2.k.entra"));
    assert_eq!(
        s.find_entra_user(tid, oid).await.unwrap(),
        Some(acs.id.clone())
    );
    assert!(
        s.find_by_user(&UserKey::email("MEGAN@contoso.com"))
            .await
            .unwrap()
            .iter()
            .any(|g| g.id == acs.id && g.kind == Kind::Entra),
        "the user's lookup follows the migration"
    );

    // the keep-alive date is read from the due index, not before
    let due_ids = |now| async move {
        all_due(s, now)
            .await
            .into_iter()
            .map(|g| g.id)
            .collect::<Vec<_>>()
    };
    assert!(
        !due_ids(keepalive_at - Duration::seconds(1))
            .await
            .contains(&acs.id)
    );
    assert!(due_ids(keepalive_at).await.contains(&acs.id));

    // eight rotations race from revision 2: one lands, the rest lose and change nothing
    let mut rotations = Vec::new();
    for i in 1..=8_i64 {
        let mut r = entra.clone();
        r.rt_version = entra.rt_version + i;
        r.rt_expires_at = entra.rt_expires_at + Duration::seconds(i);
        rotations.push((r, format!("v2.k.rotated-{i}")));
    }
    let outcomes = futures_util::future::join_all(
        rotations
            .iter()
            .map(|(r, sealed)| s.put_grant(Some(2), r, sealed, None)),
    )
    .await;
    let winners: Vec<usize> = outcomes
        .iter()
        .enumerate()
        .filter(|(_, w)| matches!(w, Ok(Written::Done)))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(winners.len(), 1, "{outcomes:?}");
    assert!(
        outcomes
            .iter()
            .all(|w| matches!(w, Ok(Written::Done | Written::Conflict))),
        "{outcomes:?}"
    );
    let (won, won_sealed) = &rotations[winners[0]];
    let stored = s.load(&acs.id).await.unwrap().unwrap();
    assert_eq!(stored.record.rev, 3);
    assert_eq!(stored.record.rt_version, won.rt_version);
    assert_eq!(
        stored.sealed_refresh_token.as_deref(),
        Some(won_sealed.as_str())
    );
    // the token the sign-in stored (older) cannot come back from the revision it was read at
    assert_eq!(
        s.put_grant(Some(2), &entra, "v2.k.entra", None)
            .await
            .unwrap(),
        Written::Conflict
    );
    assert_eq!(
        s.load(&acs.id)
            .await
            .unwrap()
            .unwrap()
            .sealed_refresh_token
            .as_deref(),
        Some(won_sealed.as_str())
    );
}

async fn a_key_is_used_once<S: TokenCache + ?Sized>(s: &S) {
    let until = t0() + Duration::seconds(120);
    assert_eq!(s.use_once("ticket-a", until).await.unwrap(), Written::Done);
    assert_eq!(
        s.use_once("ticket-a", until).await.unwrap(),
        Written::Conflict
    );
    assert_eq!(s.use_once("ticket-b", until).await.unwrap(), Written::Done);
}

async fn list_returns_every_grant<S: GrantStore + ?Sized>(s: &S) {
    let all = s.list().await.unwrap();
    for key in ["create", "replace", "advance", "user", "due-0", "due-never"] {
        let id = GrantId::derive("11111111-2222-3333-4444-555555555555", key);
        assert!(all.iter().any(|g| g.id == id), "{key} missing from list");
    }
}
