//! The one DynamoDB table: its keys, its two sparse indexes and its TTL attribute. The same
//! definition creates the table in tests and is checked against `template.yaml`.
//!
//! | item | pk | sk | notes |
//! |---|---|---|---|
//! | grant (relaunch details, notice state, its outbox) | `G#{grant}` | `G` | `ttl` = refresh-token expiry + 180 days |
//! | refresh token (sealed) | `RT#{grant}` | `RT` | `ttl` = its expiry; its own partition, so a role can be denied it by key prefix |
//! | access token (sealed) | `AT#{grant}` | `{host}` | `ttl` = its expiry |
//! | ACS lease | `L#{key}` | `L` | single flight across instances |
//! | SharePoint host's realm | `H#{host}` | `H` | `ttl` = when it must be discovered again |
//! | hand-off ticket used | `T#{ticket id}` | `T` | `ttl` = the ticket's expiry |
//! | operator notice marker (and its outbox) | `M#{key}` | `M` | a notice sent once |
//!
//! Each state change is one conditional write to one item, and the notice it causes goes into
//! that same item's `outbox` map in that same write: no transaction on the sweep's path, and
//! nothing to lose between the write and the send. Two sparse indexes hold only the work:
//! - `due` (`due_pk` = `DUE#{shard}`, `due_sk` = due time + grant id): grants with a notice to
//!   come; the sweep Queries it and never Scans;
//! - `outbox` (`outbox_pk` = `OUTBOX`, `outbox_sk`): items holding notices not yet on SQS.
//!
//! Two more hold only grants with a known user, for the app's lookups (`GET /grants?…`):
//! - `by_email` (`email_lc` = the lower-cased e-mail, `pk`) and `by_login` (`login_lc`, `pk`);
//! - `by_entra_user` (`entra_user` = `{tid}|{oid}`, `pk`): an Entra user's grant, wherever its
//!   id came from (a migrated grant keeps its ACS id).

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType,
};

pub const PK: &str = "pk";
pub const SK: &str = "sk";
pub const DUE_INDEX: &str = "due";
pub const DUE_PK: &str = "due_pk";
pub const DUE_SK: &str = "due_sk";
pub const OUTBOX_INDEX: &str = "outbox";
pub const OUTBOX_PK: &str = "outbox_pk";
pub const OUTBOX_SK: &str = "outbox_sk";
pub const EMAIL_INDEX: &str = "by_email";
pub const EMAIL_KEY: &str = "email_lc";
pub const LOGIN_INDEX: &str = "by_login";
pub const LOGIN_KEY: &str = "login_lc";
pub const ENTRA_USER_INDEX: &str = "by_entra_user";
pub const ENTRA_USER_KEY: &str = "entra_user";
pub const TTL: &str = "ttl";
/// Grants are spread over this many due partitions (by the first byte of their id).
pub const DUE_SHARDS: u8 = 8;
pub const OUTBOX_PARTITION: &str = "OUTBOX";

fn key(name: &str, kind: KeyType) -> KeySchemaElement {
    KeySchemaElement::builder()
        .attribute_name(name)
        .key_type(kind)
        .build()
        .unwrap_or_else(|_| unreachable!("both fields are set"))
}

fn string_attr(name: &str) -> AttributeDefinition {
    AttributeDefinition::builder()
        .attribute_name(name)
        .attribute_type(ScalarAttributeType::S)
        .build()
        .unwrap_or_else(|_| unreachable!("both fields are set"))
}

/// `AttributeDefinitions`: every key attribute is a string.
pub fn attribute_definitions() -> Vec<AttributeDefinition> {
    [
        PK,
        SK,
        DUE_PK,
        DUE_SK,
        OUTBOX_PK,
        OUTBOX_SK,
        EMAIL_KEY,
        LOGIN_KEY,
        ENTRA_USER_KEY,
    ]
    .iter()
    .map(|n| string_attr(n))
    .collect()
}

pub fn key_schema() -> Vec<KeySchemaElement> {
    vec![key(PK, KeyType::Hash), key(SK, KeyType::Range)]
}

/// Every index projects every attribute: no item in them holds a token (tokens live in their
/// own items), and the sweep, the relay and the lookups need the grant's fields.
fn index(name: &str, pk: &str, sk: &str) -> GlobalSecondaryIndex {
    GlobalSecondaryIndex::builder()
        .index_name(name)
        .set_key_schema(Some(vec![key(pk, KeyType::Hash), key(sk, KeyType::Range)]))
        .projection(
            Projection::builder()
                .projection_type(ProjectionType::All)
                .build(),
        )
        .build()
        .unwrap_or_else(|_| unreachable!("name and key schema are set"))
}

pub fn indexes() -> Vec<GlobalSecondaryIndex> {
    vec![
        index(DUE_INDEX, DUE_PK, DUE_SK),
        index(OUTBOX_INDEX, OUTBOX_PK, OUTBOX_SK),
        index(EMAIL_INDEX, EMAIL_KEY, PK),
        index(LOGIN_INDEX, LOGIN_KEY, PK),
        index(ENTRA_USER_INDEX, ENTRA_USER_KEY, PK),
    ]
}

pub const BILLING: BillingMode = BillingMode::PayPerRequest;

/// Creates the table (tests, and `spkeeper` against a fresh moto) and turns TTL on.
pub async fn create(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
) -> Result<(), aws_sdk_dynamodb::Error> {
    client
        .create_table()
        .table_name(table)
        .set_attribute_definitions(Some(attribute_definitions()))
        .set_key_schema(Some(key_schema()))
        .set_global_secondary_indexes(Some(indexes()))
        .billing_mode(BILLING)
        .send()
        .await?;
    client
        .update_time_to_live()
        .table_name(table)
        .time_to_live_specification(
            aws_sdk_dynamodb::types::TimeToLiveSpecification::builder()
                .attribute_name(TTL)
                .enabled(true)
                .build()
                .unwrap_or_else(|_| unreachable!("both fields are set")),
        )
        .send()
        .await?;
    Ok(())
}
