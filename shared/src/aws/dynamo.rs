//! The DynamoDB adapter: grants, refresh tokens, the access-token cache, leases and the notice
//! outbox in one table (layout in [`super::table`]).
//!
//! Every state change is conditional on the grant's revision. A notice is written into the
//! `outbox` map of the very item whose state change causes it, in the same write, and a
//! process that dies after it loses nothing: the notice waits in the item (and the `outbox`
//! index) for the relay. The sweep's write also takes the relay's lease on the item
//! ([`GrantStore::advance_all`]), so its notice costs two conditional `UpdateItem`s: that
//! write, and the relay's removal once SQS took it.
//! A launch writes the grant and its refresh token (two items) in one transaction.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder;
use aws_sdk_dynamodb::types::{
    AttributeValue, Get, Put, ReturnValue, ReturnValuesOnConditionCheckFailure, TransactGetItem,
    TransactWriteItem, Update,
};
use chrono::{DateTime, Duration, Utc};
use futures_util::future;
use futures_util::stream::{self, StreamExt, TryStreamExt};

use super::relay::{CLAIM, SEND_MARGIN, SEND_SOON};
use super::table::{
    DUE_INDEX, DUE_PK, DUE_SHARDS, DUE_SK, EMAIL_INDEX, EMAIL_KEY, ENTRA_USER_INDEX,
    ENTRA_USER_KEY, LOGIN_INDEX, LOGIN_KEY, OUTBOX_INDEX, OUTBOX_PARTITION, OUTBOX_PK, OUTBOX_SK,
    PK, SK, TTL,
};
use crate::clock::{Clock, SystemClock};
use crate::core::grant::{GrantId, Kind, relaunch_retention};
use crate::core::notice::{Notice, User};
use crate::ports::{
    ADVANCE_CONCURRENCY, Advance, CachedToken, DueCursor, DuePage, GrantRecord, GrantStore,
    Prefetched, StandardTokens, StoreError, StoredGrant, TokenCache, UserKey, Written,
    entra_user_key, next_rev, user_index,
};

pub type Item = HashMap<String, AttributeValue>;
type Response = aws_smithy_runtime_api::http::Response;

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// A revision as a number attribute ([`next_rev`] keeps it within `i64`).
fn rev_number(rev: u64) -> i64 {
    i64::try_from(rev).unwrap_or(i64::MAX)
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("DynamoDB item: {what}"))
}

/// Any SDK failure: the table is unavailable (throttled, unreachable, misconfigured).
fn sdk<E>(e: SdkError<E, Response>) -> StoreError
where
    aws_sdk_dynamodb::Error: From<SdkError<E, Response>>,
{
    StoreError::unavailable(aws_sdk_dynamodb::Error::from(e))
}

/// Did a single-item write fail only its condition?
fn condition_failed<E: aws_sdk_dynamodb::error::ProvideErrorMetadata>(
    e: &SdkError<E, Response>,
) -> bool {
    e.as_service_error()
        .and_then(|se| se.code())
        .is_some_and(|c| c == "ConditionalCheckFailedException")
}

/// The outcome of a conditional write: `Conflict` when `lost` says only the condition failed.
fn written<T, E>(
    result: Result<T, SdkError<E, Response>>,
    lost: fn(&SdkError<E, Response>) -> bool,
) -> Result<Written, StoreError>
where
    aws_sdk_dynamodb::Error: From<SdkError<E, Response>>,
{
    match result {
        Ok(_) => Ok(Written::Done),
        Err(e) if lost(&e) => Ok(Written::Conflict),
        Err(e) => Err(sdk(e)),
    }
}

/// Did a transaction fail only on conditions (or a competing transaction)?
fn transaction_lost(e: &SdkError<TransactWriteItemsError, Response>) -> bool {
    match e.as_service_error() {
        Some(TransactWriteItemsError::TransactionCanceledException(c)) => {
            c.cancellation_reasons().iter().all(|r| {
                matches!(
                    r.code(),
                    None | Some("None")
                        | Some("ConditionalCheckFailed")
                        | Some("TransactionConflict")
                )
            })
        }
        _ => false,
    }
}

fn key(pk: String, sk: &str) -> Item {
    HashMap::from([(PK.to_string(), s(pk)), (SK.to_string(), s(sk))])
}

fn grant_key(id: &GrantId) -> Item {
    key(format!("G#{id}"), "G")
}

fn refresh_key(id: &GrantId) -> Item {
    key(format!("RT#{id}"), "RT")
}

fn access_key(id: &GrantId, host: &str) -> Item {
    key(format!("AT#{id}"), host)
}

/// Cached access tokens read with a grant, at most ([`GrantStore::load_with_tokens`]).
const MAX_PREFETCHED: usize = 4;

/// A cached access token item.
fn read_access_token(item: &Item) -> Result<CachedToken, StoreError> {
    Ok(CachedToken {
        sealed: get_s(item, "sealed")?,
        expires_at: get_time(item, "expires_at")?,
        resource: get_s(item, "resource")?,
    })
}

fn lease_key(k: &str) -> Item {
    key(format!("L#{k}"), "L")
}

fn realm_key(host: &str) -> Item {
    key(format!("H#{host}"), "H")
}

fn used_key(k: &str) -> Item {
    key(format!("T#{k}"), "T")
}

fn marker_key(m: &str) -> Item {
    key(format!("M#{m}"), "M")
}

fn get_s(item: &Item, name: &str) -> Result<String, StoreError> {
    match item.get(name) {
        Some(AttributeValue::S(v)) => Ok(v.clone()),
        _ => Err(corrupt(name)),
    }
}

fn get_opt_s(item: &Item, name: &str) -> Option<String> {
    match item.get(name) {
        Some(AttributeValue::S(v)) => Some(v.clone()),
        _ => None,
    }
}

fn get_n(item: &Item, name: &str) -> Result<i64, StoreError> {
    match item.get(name) {
        Some(AttributeValue::N(v)) => v.parse().map_err(|_| corrupt(name)),
        _ => Err(corrupt(name)),
    }
}

fn get_time(item: &Item, name: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp(get_n(item, name)?, 0).ok_or_else(|| corrupt(name))
}

/// The due partition of a grant: spreads the index's writes and the sweep's reads.
pub fn due_partition(id: &GrantId) -> String {
    let first = u8::from_str_radix(&id.as_str()[..2], 16).unwrap_or(0);
    format!("DUE#{}", first % DUE_SHARDS)
}

/// Sorts by due time, then grant id: `{epoch seconds, 12 digits}#{grant id}`.
fn due_sort_key(due: DateTime<Utc>, id: &GrantId) -> String {
    format!("{:012}#{id}", due.timestamp().max(0))
}

/// Where an item waits in the outbox index: by when its first notice was queued.
fn outbox_sort_key(notice: &Notice, pk: &str) -> String {
    let created = DateTime::parse_from_rfc3339(&notice.created_at)
        .map(|t| t.timestamp())
        .unwrap_or_else(|_| Utc::now().timestamp());
    format!("{:012}#{pk}", created.max(0))
}

/// An update expression with generated placeholders.
#[derive(Default, Clone)]
struct Expr {
    sets: Vec<String>,
    removes: Vec<String>,
    names: HashMap<String, String>,
    values: Item,
}

impl Expr {
    fn name(&mut self, attr: &str) -> String {
        let p = format!("#n{}", self.names.len());
        self.names.insert(p.clone(), attr.to_string());
        p
    }

    fn value(&mut self, v: AttributeValue) -> String {
        let p = format!(":v{}", self.values.len());
        self.values.insert(p.clone(), v);
        p
    }

    fn set(&mut self, attr: &str, v: AttributeValue) {
        let (a, v) = (self.name(attr), self.value(v));
        self.sets.push(format!("{a} = {v}"));
    }

    fn remove(&mut self, attr: &str) {
        let a = self.name(attr);
        self.removes.push(a);
    }

    /// `SET outbox.{notice id} = body` and index the item in the outbox (keeping its place if
    /// it is already there).
    fn queue(&mut self, notice: &Notice, pk: &str) {
        let (map, id, body) = (
            self.name("outbox"),
            self.name(&notice.id),
            self.value(s(notice.to_json())),
        );
        self.sets.push(format!("{map}.{id} = {body}"));
        self.set(OUTBOX_PK, s(OUTBOX_PARTITION));
        let (osk, at) = (
            self.name(OUTBOX_SK),
            self.value(s(outbox_sort_key(notice, pk))),
        );
        self.sets
            .push(format!("{osk} = if_not_exists({osk}, {at})"));
    }

    fn expression(&self) -> String {
        let mut e = String::new();
        if !self.sets.is_empty() {
            e.push_str("SET ");
            e.push_str(&self.sets.join(", "));
        }
        if !self.removes.is_empty() {
            e.push_str(" REMOVE ");
            e.push_str(&self.removes.join(", "));
        }
        e
    }
}

/// The grant's fields, as attributes (`None` = the attribute must not be there).
fn grant_attributes(g: &GrantRecord, rev: u64) -> Vec<(&'static str, Option<AttributeValue>)> {
    let opt = |v: &Option<String>| v.as_ref().map(s);
    let (email_lc, login_lc) = user_index(g.user.as_ref());
    vec![
        ("kind", Some(s(g.kind.as_str()))),
        (ENTRA_USER_KEY, entra_user_key(g).map(s)),
        (EMAIL_KEY, email_lc.map(s)),
        (LOGIN_KEY, login_lc.map(s)),
        ("rev", Some(n(rev_number(rev)))),
        ("realm", Some(s(&g.realm))),
        ("site_url", Some(s(&g.site_url))),
        ("app_web_url", opt(&g.app_web_url)),
        ("sp_language", opt(&g.standard_tokens.language)),
        ("sp_client_tag", opt(&g.standard_tokens.client_tag)),
        ("sp_product_number", opt(&g.standard_tokens.product_number)),
        ("sts_uri", Some(s(&g.sts_uri))),
        ("target_principal", Some(s(&g.target_principal))),
        (
            "user",
            g.user
                .as_ref()
                .map(|u| s(serde_json::to_string(u).unwrap_or_default())),
        ),
        ("rt_version", Some(n(g.rt_version))),
        ("rt_expires_at", Some(n(g.rt_expires_at.timestamp()))),
        ("progress", Some(s(g.progress.to_string()))),
        ("created_at", Some(n(g.created_at.timestamp()))),
        ("updated_at", Some(n(g.updated_at.timestamp()))),
        (
            TTL,
            Some(n(relaunch_retention(g.rt_expires_at).timestamp())),
        ),
        ("next_due_at", g.next_due_at.map(|d| n(d.timestamp()))),
        (DUE_PK, g.next_due_at.map(|_| s(due_partition(&g.id)))),
        (DUE_SK, g.next_due_at.map(|d| s(due_sort_key(d, &g.id)))),
    ]
}

/// A new grant's item: every field, with an (empty or one-notice) outbox.
fn new_grant_item(grant: &GrantRecord, rev: u64, notice: Option<&Notice>) -> Item {
    let pk = format!("G#{}", grant.id);
    let mut item = grant_key(&grant.id);
    item.extend(
        grant_attributes(grant, rev)
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k.to_string(), v))),
    );
    let mut outbox = HashMap::new();
    if let Some(notice) = notice {
        outbox.insert(notice.id.clone(), s(notice.to_json()));
        item.insert(OUTBOX_PK.into(), s(OUTBOX_PARTITION));
        item.insert(OUTBOX_SK.into(), s(outbox_sort_key(notice, &pk)));
    }
    item.insert("outbox".into(), AttributeValue::M(outbox));
    item
}

/// A grant's refresh-token item, which DynamoDB's TTL deletes at the token's expiry.
fn refresh_item(grant: &GrantRecord, sealed_refresh_token: &str) -> Item {
    let mut rt = refresh_key(&grant.id);
    rt.insert("sealed".into(), s(sealed_refresh_token));
    rt.insert("rt_version".into(), n(grant.rt_version));
    rt.insert(TTL.into(), n(grant.rt_expires_at.timestamp()));
    rt
}

fn read_grant(item: &Item) -> Result<GrantRecord, StoreError> {
    let pk = get_s(item, PK)?;
    let id = pk
        .strip_prefix("G#")
        .and_then(GrantId::parse)
        .ok_or_else(|| corrupt("grant key"))?;
    Ok(GrantRecord {
        id,
        // Grants written before kinds existed are ACS grants.
        kind: get_opt_s(item, "kind")
            .map(|k| k.parse().map_err(StoreError::Corrupt))
            .transpose()?
            .unwrap_or(Kind::Acs),
        rev: u64::try_from(get_n(item, "rev")?).map_err(|_| corrupt("rev"))?,
        realm: get_s(item, "realm")?,
        site_url: get_s(item, "site_url")?,
        app_web_url: get_opt_s(item, "app_web_url"),
        standard_tokens: StandardTokens {
            language: get_opt_s(item, "sp_language"),
            client_tag: get_opt_s(item, "sp_client_tag"),
            product_number: get_opt_s(item, "sp_product_number"),
        },
        sts_uri: get_s(item, "sts_uri")?,
        target_principal: get_s(item, "target_principal")?,
        user: get_opt_s(item, "user")
            .map(|j| serde_json::from_str::<User>(&j).map_err(|_| corrupt("user")))
            .transpose()?,
        rt_version: get_n(item, "rt_version")?,
        rt_expires_at: get_time(item, "rt_expires_at")?,
        progress: get_s(item, "progress")?
            .parse()
            .map_err(StoreError::Corrupt)?,
        next_due_at: item
            .contains_key("next_due_at")
            .then(|| get_time(item, "next_due_at"))
            .transpose()?,
        created_at: get_time(item, "created_at")?,
        updated_at: get_time(item, "updated_at")?,
    })
}

/// An item's queued notices: notice id → body.
pub fn outbox_of(item: &Item) -> Vec<(String, String)> {
    match item.get("outbox") {
        Some(AttributeValue::M(m)) => {
            let mut v: Vec<(String, String)> = m
                .iter()
                .filter_map(|(id, body)| body.as_s().ok().map(|b| (id.clone(), b.clone())))
                .collect();
            v.sort();
            v
        }
        _ => Vec::new(),
    }
}

/// An item that holds queued notices, as the relay sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub key: (String, String),
    pub notices: Vec<(String, String)>,
    /// A relay holds it until then.
    pub leased_until: Option<DateTime<Utc>>,
    /// Which relay (its `relay_owner`).
    pub leased_by: Option<String>,
}

fn holder(item: &Item) -> Result<Holder, StoreError> {
    Ok(Holder {
        key: (get_s(item, PK)?, get_s(item, SK)?),
        notices: outbox_of(item),
        leased_until: item
            .contains_key("relay_until")
            .then(|| get_time(item, "relay_until"))
            .transpose()?,
        leased_by: item.get("relay_owner").and_then(|v| v.as_s().ok()).cloned(),
    })
}

impl Holder {
    /// Its lease is still held at `now` (by whoever took it).
    pub(crate) fn leased_at(&self, now: DateTime<Utc>) -> bool {
        self.leased_until.is_some_and(|u| u > now)
    }

    /// `owner` may claim it at `now`: no live lease, or one of `owner`'s own without the
    /// margin to send under ([`DynamoStore::claim`]).
    pub(crate) fn claimable_by(&self, owner: &str, now: DateTime<Utc>) -> bool {
        !self.leased_at(now)
            || (self.leased_by.as_deref() == Some(owner) && !self.leased_at(now + SEND_MARGIN))
    }
}

/// This store's relay identity (`relay_owner` on the items it leases), and the items its sweep
/// writes leased for it, waiting for [`DynamoStore::take_leased`]. One per
/// [`DynamoStore::new`], shared by its clones and by the relay built on it.
///
/// Leases are timed by `clock`, the wall clock: never by the `now` a sweep or a launch was
/// given (a sweep's is its start, minutes old by its last page), since other processes judge
/// the same leases by theirs.
struct Leases {
    owner: String,
    taken: Mutex<Vec<Holder>>,
    /// The items whose notices this process is sending or removing right now: never claimed
    /// again meanwhile, even where the lease is this relay's own ([`DynamoStore::claim`]).
    /// How many pages hold each (a page taken twice, in a race, keeps it marked until both
    /// are done).
    in_flight: Mutex<HashMap<(String, String), usize>>,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for Leases {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Leases")
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

impl Leases {
    fn new(clock: Arc<dyn Clock>) -> Self {
        let mut b = [0u8; 8];
        let owner = match getrandom::fill(&mut b) {
            Ok(()) => hex::encode(b),
            Err(_) => format!("pid-{}", std::process::id()),
        };
        Leases {
            owner,
            taken: Mutex::new(Vec::new()),
            in_flight: Mutex::new(HashMap::new()),
            clock,
        }
    }

    fn taken(&self) -> std::sync::MutexGuard<'_, Vec<Holder>> {
        // A panic elsewhere cannot leave the list half-written: keep using it.
        self.taken.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn in_flight(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), usize>> {
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks `holders` in flight until the guard is dropped.
    fn mark(self: &Arc<Self>, holders: &[Holder]) -> InFlight {
        let keys: Vec<(String, String)> = holders.iter().map(|h| h.key.clone()).collect();
        let mut in_flight = self.in_flight();
        for k in &keys {
            *in_flight.entry(k.clone()).or_default() += 1;
        }
        InFlight {
            leases: Arc::clone(self),
            keys,
        }
    }

    /// Keeps `h` for the relay, and lets go of what lapsed before `now` (which another relay
    /// may claim): the list holds at most what was leased since, even if no relay runs.
    fn keep(&self, h: Holder, now: DateTime<Utc>) {
        let mut taken = self.taken();
        taken.retain(|t| t.leased_at(now));
        taken.push(h);
    }
}

/// Items marked in flight ([`DynamoStore::in_flight`]) until this is dropped.
pub struct InFlight {
    leases: Arc<Leases>,
    keys: Vec<(String, String)>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut in_flight = self.leases.in_flight();
        for k in &self.keys {
            if let Some(n) = in_flight.get_mut(k) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    in_flight.remove(k);
                }
            }
        }
    }
}

#[derive(Clone)]
pub struct DynamoStore {
    client: Client,
    table: String,
    leases: Arc<Leases>,
}

impl fmt::Debug for DynamoStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DynamoStore")
            .field("table", &self.table)
            .finish()
    }
}

impl DynamoStore {
    /// The keys of every access token cached for the grant (a Query on their own partition).
    async fn access_token_keys(&self, id: &GrantId) -> Result<Vec<Item>, StoreError> {
        let mut keys = Vec::new();
        let mut start = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("#p = :p")
                .expression_attribute_names("#p", PK)
                .expression_attribute_values(":p", s(format!("AT#{id}")))
                .projection_expression("#p, sk")
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(sdk)?;
            for item in page.items() {
                keys.push(key(get_s(item, PK)?, &get_s(item, SK)?));
            }
            match page.last_evaluated_key {
                Some(k) => start = Some(k),
                None => return Ok(keys),
            }
        }
    }

    /// Deletes the items, in transactions of at most 100 (a grant has a handful of hosts).
    async fn delete_all(&self, keys: &[Item]) -> Result<(), StoreError> {
        for chunk in keys.chunks(100) {
            let mut tx = self.client.transact_write_items();
            for k in chunk {
                let delete = aws_sdk_dynamodb::types::Delete::builder()
                    .table_name(&self.table)
                    .set_key(Some(k.clone()))
                    .build()
                    .map_err(StoreError::unavailable)?;
                tx = tx.transact_items(TransactWriteItem::builder().delete(delete).build());
            }
            tx.send().await.map_err(sdk)?;
        }
        Ok(())
    }
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        DynamoStore {
            client,
            table: table.into(),
            leases: Arc::new(Leases::new(Arc::new(SystemClock))),
        }
    }

    /// The same, its leases timed by `clock` (tests: a lease lapsing without waiting two
    /// minutes). Call before cloning the store or building its relay.
    pub fn with_lease_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.leases = Arc::new(Leases::new(clock));
        self
    }

    /// The time leases are taken and judged by (the wall clock).
    pub fn lease_now(&self) -> DateTime<Utc> {
        self.leases.clock.now()
    }

    /// Who this store's relay is: the `relay_owner` of the items it leases.
    pub fn relay_owner(&self) -> &str {
        &self.leases.owner
    }

    /// The items this store's sweep writes leased for its relay since they were last taken,
    /// as written (every notice in them, leftovers of an earlier crash included), once there
    /// are `at_least` or one is within [`SEND_SOON`] of losing its margin, oldest first, at
    /// most `at_most` of them (one page: each page is taken as it is sent, so each is judged
    /// by the clock of its own send). Only those whose lease holds
    /// [`SEND_MARGIN`] longer are taken: the rest are let go (a lapsed one may have been
    /// claimed by another relay since), and wait in the outbox index for whoever holds them
    /// next.
    pub fn take_leased(&self, at_least: usize, at_most: usize) -> Vec<Holder> {
        self.take_leased_to_send(at_least, at_most).0
    }

    /// [`Self::take_leased`], the page marked in flight ([`Self::in_flight`]) in the same
    /// moment, until the guard is dropped: no claim of this process's slips in between.
    pub fn take_leased_to_send(&self, at_least: usize, at_most: usize) -> (Vec<Holder>, InFlight) {
        let mut taken = self.leases.taken();
        let sendable = self.lease_now() + SEND_MARGIN;
        taken.retain(|h| h.leased_at(sendable));
        let urgent = taken.iter().any(|h| !h.leased_at(sendable + SEND_SOON));
        let page: Vec<Holder> = if taken.is_empty() || (taken.len() < at_least && !urgent) {
            Vec::new()
        } else {
            let n = taken.len().min(at_most);
            taken.drain(..n).collect()
        };
        let sending = self.leases.mark(&page);
        (page, sending)
    }

    /// Marks `holders` as being sent (and their notices removed) by this process until the
    /// guard is dropped: [`Self::claim`] leaves them alone meanwhile.
    pub fn in_flight(&self, holders: &[Holder]) -> InFlight {
        self.leases.mark(holders)
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Writes `item` unless an item with its key exists (`Conflict` then).
    async fn put_new(&self, item: Item) -> Result<Written, StoreError> {
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        written(result, condition_failed)
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// Benchmarks only (feature `bench`): writes new grants at revision 1, each with its sealed
    /// refresh token, the items a launch writes, with `BatchWriteItem` (unconditional, 25
    /// items a request; what DynamoDB leaves unprocessed is sent again). No route or command
    /// reaches it.
    #[cfg(feature = "bench")]
    pub async fn insert_new_grants(
        &self,
        grants: &[(GrantRecord, String)],
    ) -> Result<(), StoreError> {
        use aws_sdk_dynamodb::types::{PutRequest, WriteRequest};
        let items: Vec<Item> = grants
            .iter()
            .flat_map(|(g, rt)| [new_grant_item(g, 1, None), refresh_item(g, rt)])
            .collect();
        for chunk in items.chunks(25) {
            let mut pending = chunk
                .iter()
                .map(|item| {
                    PutRequest::builder()
                        .set_item(Some(item.clone()))
                        .build()
                        .map(|p| WriteRequest::builder().put_request(p).build())
                        .map_err(StoreError::unavailable)
                })
                .collect::<Result<Vec<_>, _>>()?;
            while !pending.is_empty() {
                let out = self
                    .client
                    .batch_write_item()
                    .request_items(&self.table, pending)
                    .send()
                    .await
                    .map_err(sdk)?;
                pending = out
                    .unprocessed_items
                    .and_then(|mut m| m.remove(&self.table))
                    .unwrap_or_default();
            }
        }
        Ok(())
    }

    async fn get(&self, key: Item) -> Result<Option<Item>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key))
            .consistent_read(true)
            .send()
            .await
            .map_err(sdk)?;
        Ok(out.item)
    }

    /// A conditional `UpdateItem`, to send.
    fn update_request(&self, key: Item, expr: Expr, condition: &str) -> UpdateItemFluentBuilder {
        self.client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key))
            .update_expression(expr.expression())
            .condition_expression(condition)
            .set_expression_attribute_names(Some(expr.names).filter(|m| !m.is_empty()))
            .set_expression_attribute_values(Some(expr.values).filter(|m| !m.is_empty()))
    }

    /// A conditional `UpdateItem`: `Conflict` when the condition fails.
    async fn update(&self, key: Item, expr: Expr, condition: &str) -> Result<Written, StoreError> {
        let result = self.update_request(key, expr, condition).send().await;
        written(result, condition_failed)
    }

    /// A sweep's move: [`GrantStore::advance`], and when it queues a notice, the relay's lease
    /// on the item in the same write (unless another relay holds a live one), so this store's
    /// relay sends the item's notices without claiming it first ([`Self::take_leased`]).
    async fn advance_leased(&self, m: &Advance, now: DateTime<Utc>) -> Result<Written, StoreError> {
        let (plain, rev_condition) = advance_expr(m, now)?;
        if m.notice.is_none() {
            return self.update(grant_key(&m.id), plain, &rev_condition).await;
        }
        let at = self.lease_now();
        let mut e = plain.clone();
        e.set("relay_owner", s(self.relay_owner()));
        e.set("relay_until", n((at + CLAIM).timestamp()));
        let (until, now_v) = (e.name("relay_until"), e.value(n(at.timestamp())));
        let condition =
            format!("{rev_condition} AND (attribute_not_exists({until}) OR {until} <= {now_v})");
        let result = self
            .update_request(grant_key(&m.id), e, &condition)
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(out) => {
                // The item as written: its whole outbox, under our lease. (One that does not
                // read back waits in the outbox index for a relay after the lease lapses.)
                if let Some(h) = out.attributes.as_ref().and_then(|i| holder(i).ok()) {
                    self.leases.keep(h, at);
                }
                Ok(Written::Done)
            }
            Err(err) if condition_failed(&err) => {
                let old_rev = match err.as_service_error() {
                    Some(UpdateItemError::ConditionalCheckFailedException(c)) => {
                        c.item().map(|i| get_n(i, "rev"))
                    }
                    _ => None,
                };
                match old_rev {
                    // Someone else wrote first.
                    Some(Ok(rev)) if rev != rev_number(m.expected_rev) => Ok(Written::Conflict),
                    // Another relay holds a live lease (or the old item did not say): the
                    // plain advance, whose notice waits in the outbox for that relay or a
                    // later `relay_pending`.
                    _ => self.update(grant_key(&m.id), plain, &rev_condition).await,
                }
            }
            Err(err) => Err(sdk(err)),
        }
    }

    /// Queries a partition of an index for sort keys ≤ `until`, from `start`.
    async fn query(
        &self,
        index: &str,
        (pk, sk): (&str, &str),
        partition: &str,
        until: &str,
        start: Option<Item>,
        limit: usize,
    ) -> Result<(Vec<Item>, Option<Item>), StoreError> {
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(index)
            .key_condition_expression("#p = :p AND #s <= :until")
            .expression_attribute_names("#p", pk)
            .expression_attribute_names("#s", sk)
            .expression_attribute_values(":p", s(partition))
            .expression_attribute_values(":until", s(until))
            .set_exclusive_start_key(start)
            .limit(i32::try_from(limit.max(1)).unwrap_or(i32::MAX))
            .send()
            .await
            .map_err(sdk)?;
        Ok((out.items.unwrap_or_default(), out.last_evaluated_key))
    }

    /// Items holding notices not yet relayed, a page at a time (relay, `spkeeper notices`).
    pub async fn holders(
        &self,
        start: Option<Item>,
        limit: usize,
    ) -> Result<(Vec<Holder>, Option<Item>), StoreError> {
        let (items, next) = self
            .query(
                OUTBOX_INDEX,
                (OUTBOX_PK, OUTBOX_SK),
                OUTBOX_PARTITION,
                "~",
                start,
                limit,
            )
            .await?;
        let holders = items.iter().map(holder).collect::<Result<Vec<_>, _>>()?;
        Ok((holders, next))
    }

    /// Takes an item's queued notices for this store's relay for [`CLAIM`] from now (the
    /// wall clock), unless another relay holds them; returns them as they are now. A lease of
    /// this relay's own with less than [`SEND_MARGIN`] left (a sweep's write it could not send
    /// in time) is taken again, fresh, unless this process is sending it
    /// ([`Self::in_flight`]).
    pub async fn claim(&self, item: &(String, String)) -> Result<Option<Holder>, StoreError> {
        // The clock is read under the lock: a page taken after this check was taken later,
        // with its margin still whole, so this claim's condition cannot match its lease.
        let now = {
            let in_flight = self.leases.in_flight();
            if in_flight.contains_key(item) {
                return Ok(None);
            }
            self.lease_now()
        };
        let (pk, sk) = item;
        let until = now + CLAIM;
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(pk.clone(), sk)))
            .update_expression("SET relay_owner = :o, relay_until = :u")
            .condition_expression(
                "attribute_exists(outbox_pk) AND (attribute_not_exists(relay_until) OR relay_until <= :now \
                 OR (relay_owner = :o AND relay_until <= :margin))",
            )
            .expression_attribute_values(":o", s(self.relay_owner()))
            .expression_attribute_values(":u", n(until.timestamp()))
            .expression_attribute_values(":now", n(now.timestamp()))
            .expression_attribute_values(":margin", n((now + SEND_MARGIN).timestamp()))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        match result {
            Ok(out) => out.attributes.as_ref().map(holder).transpose(),
            Err(e) if condition_failed(&e) => Ok(None),
            Err(e) => Err(sdk(e)),
        }
    }

    /// Removes relayed notices from an item this owner holds, under the lease they were sent
    /// under. When they were all it had, the item leaves the outbox index; if more arrived
    /// meanwhile, they stay for the next relay.
    pub async fn remove_relayed(
        &self,
        claimed: &Holder,
        sent: &[String],
        owner: &str,
    ) -> Result<(), StoreError> {
        let (pk, sk) = &claimed.key;
        let everything = claimed.notices.iter().all(|(id, _)| sent.contains(id));
        let attempt = |drop_index: bool| {
            let mut e = Expr::default();
            for id in sent {
                let (map, nid) = (e.name("outbox"), e.name(id));
                e.removes.push(format!("{map}.{nid}"));
            }
            e.remove("relay_owner");
            e.remove("relay_until");
            let owner_v = e.value(s(owner));
            let mut condition = format!("relay_owner = {owner_v}");
            // Under the very lease it sent under: a late removal (a process that sent, stalled,
            // and woke after its lease lapsed and it leased the item again) never ends a
            // newer lease another send of ours is counting on.
            if let Some(until) = claimed.leased_until {
                let (name, v) = (e.name("relay_until"), e.value(n(until.timestamp())));
                condition.push_str(&format!(" AND {name} = {v}"));
            }
            if drop_index {
                e.remove(OUTBOX_PK);
                e.remove(OUTBOX_SK);
                let map = e.name("outbox");
                let count = e.value(n(claimed.notices.len() as i64));
                condition.push_str(&format!(" AND size({map}) = {count}"));
            }
            (e, condition)
        };
        if everything {
            let (e, condition) = attempt(true);
            if self.update(key(pk.clone(), sk), e, &condition).await? == Written::Done {
                return Ok(());
            }
        }
        // Our lease lapsed (another relay sends them: a duplicate id that consumers drop), or
        // new notices arrived: keep the item indexed.
        let (e, condition) = attempt(false);
        if self.update(key(pk.clone(), sk), e, &condition).await? == Written::Conflict {
            // No longer under the lease they were sent under (it lapsed and was taken, or
            // the grant was erased): whoever holds them sends them again, with the same ids.
            tracing::warn!(
                notices = sent.len(),
                "relayed notices were not removed: their item is no longer under this relay's lease"
            );
        }
        Ok(())
    }
}

/// Every grant item of a paged Scan or Query (`page` reads one page from a start key), in the
/// order `spkeeper grants` and the lookups show them.
async fn grants_of_pages<F, Fut>(mut page: F) -> Result<Vec<GrantRecord>, StoreError>
where
    F: FnMut(Option<Item>) -> Fut,
    Fut: std::future::Future<Output = Result<(Vec<Item>, Option<Item>), StoreError>>,
{
    let mut out = Vec::new();
    let mut start = None;
    loop {
        let (items, next) = page(start).await?;
        for item in &items {
            out.push(read_grant(item)?);
        }
        match next {
            Some(k) => start = Some(k),
            None => break,
        }
    }
    out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    Ok(out)
}

/// An advance's update (the revision bumped, the progress and due index moved, the notice
/// queued) and its condition (the revision it was decided on).
fn advance_expr(m: &Advance, now: DateTime<Utc>) -> Result<(Expr, String), StoreError> {
    let Advance {
        id,
        expected_rev,
        progress,
        next_due_at,
        notice,
    } = m;
    let (expected_rev, progress, next_due_at) = (*expected_rev, *progress, *next_due_at);
    let mut e = Expr::default();
    e.set("rev", n(rev_number(next_rev(Some(expected_rev))?)));
    e.set("progress", s(progress.to_string()));
    e.set("updated_at", n(now.timestamp()));
    match next_due_at {
        Some(due) => {
            e.set("next_due_at", n(due.timestamp()));
            e.set(DUE_PK, s(due_partition(id)));
            e.set(DUE_SK, s(due_sort_key(due, id)));
        }
        // Out of the due index: nothing more is due for this refresh token.
        None => {
            e.remove("next_due_at");
            e.remove(DUE_PK);
            e.remove(DUE_SK);
        }
    }
    if let Some(notice) = notice {
        e.queue(notice, &format!("G#{id}"));
    }
    let (rev_name, expected) = (e.name("rev"), e.value(n(rev_number(expected_rev))));
    Ok((e, format!("{rev_name} = {expected}")))
}

/// The due index's cursor: where each shard not yet read to its end goes on (`None`: from its
/// start). A shard missing from it is done.
type ShardStarts = Vec<(u8, Option<Item>)>;

fn encode_cursor(shards: &[(u8, Item)]) -> DueCursor {
    let shards: serde_json::Map<String, serde_json::Value> = shards
        .iter()
        .map(|(shard, key)| {
            let key: serde_json::Map<String, serde_json::Value> = key
                .iter()
                .filter_map(|(k, v)| v.as_s().ok().map(|v| (k.clone(), v.clone().into())))
                .collect();
            (shard.to_string(), key.into())
        })
        .collect();
    DueCursor(serde_json::json!({ "shards": shards }).to_string())
}

fn decode_cursor(c: &DueCursor) -> Result<ShardStarts, StoreError> {
    let v: serde_json::Value = serde_json::from_str(&c.0).map_err(|_| corrupt("due cursor"))?;
    let shards = v["shards"]
        .as_object()
        .ok_or_else(|| corrupt("due cursor"))?;
    shards
        .iter()
        .map(|(shard, key)| {
            let shard = shard
                .parse::<u8>()
                .ok()
                .filter(|s| *s < DUE_SHARDS)
                .ok_or_else(|| corrupt("due cursor"))?;
            let key: Item = key
                .as_object()
                .ok_or_else(|| corrupt("due cursor"))?
                .iter()
                .map(|(k, v)| {
                    v.as_str()
                        .map(|v| (k.clone(), s(v)))
                        .ok_or_else(|| corrupt("due cursor"))
                })
                .collect::<Result<_, _>>()?;
            if key.is_empty() {
                return Err(corrupt("due cursor"));
            }
            Ok((shard, Some(key)))
        })
        .collect()
}

#[async_trait]
impl GrantStore for DynamoStore {
    /// One `TransactGetItems` for the grant and its refresh token: a snapshot, serialized with
    /// the launch's `TransactWriteItems`, so a reader racing a relaunch never sees the new
    /// record beside the old token (or the other way round).
    async fn load(&self, id: &GrantId) -> Result<Option<StoredGrant>, StoreError> {
        Ok(self.load_with_tokens(id, &[]).await?.grant)
    }

    /// The same `TransactGetItems`, with the cached access tokens under `cache_keys` as more
    /// items of it: a cached `/token` is one request.
    async fn load_with_tokens(
        &self,
        id: &GrantId,
        cache_keys: &[String],
    ) -> Result<Prefetched, StoreError> {
        let get = |key: Item| {
            Get::builder()
                .table_name(&self.table)
                .set_key(Some(key))
                .build()
                .map(|g| TransactGetItem::builder().get(g).build())
                .map_err(StoreError::unavailable)
        };
        let mut request = self
            .client
            .transact_get_items()
            .transact_items(get(grant_key(id))?)
            .transact_items(get(refresh_key(id))?);
        // At most a few (the caller's guesses); a transaction takes up to 100 items.
        for k in cache_keys.iter().take(MAX_PREFETCHED) {
            request = request.transact_items(get(access_key(id, k))?);
        }
        let out = request.send().await.map_err(sdk)?;
        let mut items = out
            .responses
            .unwrap_or_default()
            .into_iter()
            .map(|r| r.item);
        let (grant, rt) = (items.next().flatten(), items.next().flatten());
        let mut tokens = HashMap::new();
        for (k, item) in cache_keys.iter().take(MAX_PREFETCHED).zip(items) {
            tokens.insert(k.clone(), item.map(|i| read_access_token(&i)).transpose()?);
        }
        let Some(grant) = grant else {
            return Ok(Prefetched {
                grant: None,
                tokens,
            });
        };
        let record = read_grant(&grant)?;
        // The refresh token belongs to this record only if it is the same version.
        let sealed = rt
            .filter(|i| get_n(i, "rt_version").ok() == Some(record.rt_version))
            .map(|i| get_s(&i, "sealed"))
            .transpose()?;
        Ok(Prefetched {
            grant: Some(StoredGrant {
                record,
                sealed_refresh_token: sealed,
            }),
            tokens,
        })
    }

    async fn put_grant(
        &self,
        expected_rev: Option<u64>,
        grant: &GrantRecord,
        sealed_refresh_token: &str,
        notice: Option<&Notice>,
    ) -> Result<Written, StoreError> {
        let new_rev = next_rev(expected_rev)?;
        let pk = format!("G#{}", grant.id);
        let details = match expected_rev {
            // A new grant: the whole item, with an (empty or one-notice) outbox.
            None => {
                let put = Put::builder()
                    .table_name(&self.table)
                    .set_item(Some(new_grant_item(grant, new_rev, notice)))
                    .condition_expression("attribute_not_exists(pk)")
                    .build()
                    .map_err(StoreError::unavailable)?;
                TransactWriteItem::builder().put(put).build()
            }
            // A replacement: every field, keeping the notices still in its outbox.
            Some(rev) => {
                let mut e = Expr::default();
                for (attr, v) in grant_attributes(grant, new_rev) {
                    match v {
                        Some(v) => e.set(attr, v),
                        None => e.remove(attr),
                    }
                }
                if let Some(notice) = notice {
                    e.queue(notice, &pk);
                }
                let expected = e.value(n(rev_number(rev)));
                let rev_name = e.name("rev");
                let update = Update::builder()
                    .table_name(&self.table)
                    .set_key(Some(grant_key(&grant.id)))
                    .update_expression(e.expression())
                    .condition_expression(format!("{rev_name} = {expected}"))
                    .set_expression_attribute_names(Some(e.names))
                    .set_expression_attribute_values(Some(e.values))
                    .build()
                    .map_err(StoreError::unavailable)?;
                TransactWriteItem::builder().update(update).build()
            }
        };
        let rt = Put::builder()
            .table_name(&self.table)
            .set_item(Some(refresh_item(grant, sealed_refresh_token)))
            .build()
            .map_err(StoreError::unavailable)?;
        let result = self
            .client
            .transact_write_items()
            .transact_items(details)
            .transact_items(TransactWriteItem::builder().put(rt).build())
            .send()
            .await;
        written(result, transaction_lost)
    }

    async fn advance(&self, m: &Advance, now: DateTime<Utc>) -> Result<Written, StoreError> {
        let (e, condition) = advance_expr(m, now)?;
        self.update(grant_key(&m.id), e, &condition).await
    }

    /// [`ADVANCE_CONCURRENCY`] conditional `UpdateItem`s at a time, each of which queues a
    /// notice also taking the relay's lease on its item: the sweep's relay sends those
    /// notices without a claim of its own (two `UpdateItem`s per notice, not three).
    async fn advance_all(
        &self,
        moves: &[Advance],
        now: DateTime<Utc>,
    ) -> Result<Vec<Written>, StoreError> {
        stream::iter(0..moves.len())
            .map(|i| self.advance_leased(&moves[i], now))
            .buffered(ADVANCE_CONCURRENCY)
            .try_collect()
            .await
    }

    async fn set_user(&self, id: &GrantId, user: &User) -> Result<(), StoreError> {
        let json = serde_json::to_string(user).map_err(|_| corrupt("user"))?;
        let mut e = Expr::default();
        e.set("user", s(json));
        // The lookup indexes follow the user's details.
        let (email_lc, login_lc) = user_index(Some(user));
        for (attr, v) in [(EMAIL_KEY, email_lc), (LOGIN_KEY, login_lc)] {
            match v {
                Some(v) => e.set(attr, s(v)),
                None => e.remove(attr),
            }
        }
        self.update(grant_key(id), e, "attribute_exists(pk)")
            .await?;
        Ok(())
    }

    /// The eight shards of the due index are read at once (one round trip for an empty
    /// sweep, not eight), each a `Query` of at most `limit` from where it stopped.
    async fn due(
        &self,
        now: DateTime<Utc>,
        cursor: Option<&DueCursor>,
        limit: usize,
    ) -> Result<DuePage, StoreError> {
        let starts: ShardStarts = match cursor {
            Some(c) => decode_cursor(c)?,
            None => (0..DUE_SHARDS).map(|shard| (shard, None)).collect(),
        };
        // Every grant due at or before `now`, whatever its id: "{now}#~" sorts after them all.
        let until = format!("{:012}#~", now.timestamp().max(0));
        let pages = future::try_join_all(starts.into_iter().map(|(shard, start)| {
            let until = until.as_str();
            async move {
                let partition = format!("DUE#{shard}");
                let (items, last) = self
                    .query(DUE_INDEX, (DUE_PK, DUE_SK), &partition, until, start, limit)
                    .await?;
                Ok::<_, StoreError>((shard, items, last))
            }
        }))
        .await?;
        let mut grants = Vec::new();
        let mut more = Vec::new();
        for (shard, items, last) in pages {
            for item in &items {
                grants.push(read_grant(item)?);
            }
            if let Some(key) = last {
                more.push((shard, key));
            }
        }
        let next = (!more.is_empty()).then(|| encode_cursor(&more));
        Ok(DuePage { grants, next })
    }

    fn due_partitions(&self) -> usize {
        usize::from(DUE_SHARDS)
    }

    /// Operators only (`spkeeper grants`): a paginated Scan of the grant items. The sweep
    /// never calls it, and no Lambda role may Scan.
    async fn list(&self) -> Result<Vec<GrantRecord>, StoreError> {
        grants_of_pages(|start| async move {
            let page = self
                .client
                .scan()
                .table_name(&self.table)
                .filter_expression("sk = :g")
                .expression_attribute_values(":g", s("G"))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(sdk)?;
            Ok((page.items.unwrap_or_default(), page.last_evaluated_key))
        })
        .await
    }

    async fn find_by_user(&self, key: &UserKey) -> Result<Vec<GrantRecord>, StoreError> {
        let (index, attr) = match key {
            UserKey::Email(_) => (EMAIL_INDEX, EMAIL_KEY),
            UserKey::LoginName(_) => (LOGIN_INDEX, LOGIN_KEY),
        };
        grants_of_pages(|start| async move {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(index)
                .key_condition_expression("#k = :v")
                .expression_attribute_names("#k", attr)
                .expression_attribute_values(":v", s(key.value()))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(sdk)?;
            Ok((page.items.unwrap_or_default(), page.last_evaluated_key))
        })
        .await
    }

    async fn find_entra_user(&self, tid: &str, oid: &str) -> Result<Option<GrantId>, StoreError> {
        let page = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(ENTRA_USER_INDEX)
            .key_condition_expression("#k = :v")
            .expression_attribute_names("#k", ENTRA_USER_KEY)
            .expression_attribute_values(":v", s(format!("{tid}|{oid}")))
            .limit(1)
            .send()
            .await
            .map_err(sdk)?;
        page.items()
            .first()
            .map(|item| {
                get_s(item, PK)?
                    .strip_prefix("G#")
                    .and_then(GrantId::parse)
                    .ok_or_else(|| corrupt("grant key"))
            })
            .transpose()
    }

    /// One transaction deletes the grant item (its details, index entries and the notices in
    /// its outbox), its refresh token and its cached access tokens (found with a Query on
    /// their own partition).
    async fn forget(&self, id: &GrantId) -> Result<bool, StoreError> {
        let mut keys = vec![grant_key(id), refresh_key(id)];
        keys.extend(self.access_token_keys(id).await?);
        let existed = self.get(grant_key(id)).await?.is_some();
        self.delete_all(&keys).await?;
        Ok(existed)
    }

    async fn queue_once(&self, marker: &str, notice: &Notice) -> Result<Written, StoreError> {
        let mut item = marker_key(marker);
        let pk = format!("M#{marker}");
        item.insert("created_at".into(), n(Utc::now().timestamp()));
        item.insert(
            "outbox".into(),
            AttributeValue::M(HashMap::from([(notice.id.clone(), s(notice.to_json()))])),
        );
        item.insert(OUTBOX_PK.into(), s(OUTBOX_PARTITION));
        item.insert(OUTBOX_SK.into(), s(outbox_sort_key(notice, &pk)));
        self.put_new(item).await
    }

    /// DynamoDB's TTL lets go of expired items by itself.
    async fn purge(&self, _now: DateTime<Utc>) -> Result<u64, StoreError> {
        Ok(0)
    }
}

#[async_trait]
impl TokenCache for DynamoStore {
    async fn get_access_token(
        &self,
        id: &GrantId,
        host: &str,
    ) -> Result<Option<CachedToken>, StoreError> {
        self.get(access_key(id, host))
            .await?
            .map(|item| read_access_token(&item))
            .transpose()
    }

    async fn put_access_token(
        &self,
        id: &GrantId,
        host: &str,
        token: &CachedToken,
    ) -> Result<(), StoreError> {
        let mut item = access_key(id, host);
        item.insert("sealed".into(), s(&token.sealed));
        item.insert("resource".into(), s(&token.resource));
        item.insert("expires_at".into(), n(token.expires_at.timestamp()));
        item.insert(TTL.into(), n(token.expires_at.timestamp()));
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(sdk)?;
        Ok(())
    }

    async fn forget_access_tokens(&self, id: &GrantId) -> Result<(), StoreError> {
        let keys = self.access_token_keys(id).await?;
        self.delete_all(&keys).await
    }

    async fn try_lease(
        &self,
        key: &str,
        owner: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut item = lease_key(key);
        item.insert("owner".into(), s(owner));
        item.insert("lease_until".into(), n(until.timestamp()));
        item.insert(TTL.into(), n((until + Duration::hours(1)).timestamp()));
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk) OR lease_until <= :now")
            .expression_attribute_values(":now", n(now.timestamp()))
            .send()
            .await;
        Ok(written(result, condition_failed)? == Written::Done)
    }

    async fn use_once(&self, key: &str, until: DateTime<Utc>) -> Result<Written, StoreError> {
        let mut item = used_key(key);
        item.insert(TTL.into(), n(until.timestamp()));
        self.put_new(item).await
    }

    async fn get_host_realm(
        &self,
        host: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<String>, StoreError> {
        let Some(item) = self.get(realm_key(host)).await? else {
            return Ok(None);
        };
        // TTL deletes lazily: an item past its time is not an answer.
        if get_time(&item, TTL)? <= now {
            return Ok(None);
        }
        get_s(&item, "realm").map(Some)
    }

    async fn put_host_realm(
        &self,
        host: &str,
        realm: &str,
        until: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut item = realm_key(host);
        item.insert("realm".into(), s(realm));
        item.insert(TTL.into(), n(until.timestamp()));
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(sdk)?;
        Ok(())
    }

    async fn release_lease(&self, key: &str, owner: &str) -> Result<(), StoreError> {
        let result = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(lease_key(key)))
            .condition_expression("#o = :o")
            .expression_attribute_names("#o", "owner")
            .expression_attribute_values(":o", s(owner))
            .send()
            .await;
        written(result, condition_failed).map(|_| ())
    }
}
