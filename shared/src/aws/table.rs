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

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, GlobalSecondaryIndex, KeySchemaElement,
    KeyType, Projection, ProjectionType, ScalarAttributeType,
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

/// The five indexes: name, partition key, sort key. An item is in an index when it has its
/// partition key attribute (each sort key here is set with it).
const INDEXES: [(&str, &str, &str); 5] = [
    (DUE_INDEX, DUE_PK, DUE_SK),
    (OUTBOX_INDEX, OUTBOX_PK, OUTBOX_SK),
    (EMAIL_INDEX, EMAIL_KEY, PK),
    (LOGIN_INDEX, LOGIN_KEY, PK),
    (ENTRA_USER_INDEX, ENTRA_USER_KEY, PK),
];

pub fn indexes() -> Vec<GlobalSecondaryIndex> {
    INDEXES
        .iter()
        .map(|(name, pk, sk)| index(name, pk, sk))
        .collect()
}

pub const BILLING: BillingMode = BillingMode::PayPerRequest;

/// An item's size as DynamoDB bills it: each attribute's name and value, strings and binaries
/// by length, numbers at a byte per two significant digits (leading and trailing zeros are
/// not stored) and one more, maps and lists 3
/// bytes and a byte per element besides their contents.
pub fn item_size(item: &HashMap<String, AttributeValue>) -> usize {
    item.iter().map(|(k, v)| k.len() + value_size(v)).sum()
}

fn value_size(v: &AttributeValue) -> usize {
    use AttributeValue as A;
    // Significant digits: leading and trailing zeros are not stored.
    let number = |n: &str| {
        let digits: String = n.chars().filter(char::is_ascii_digit).collect();
        digits
            .trim_start_matches('0')
            .trim_end_matches('0')
            .len()
            .div_ceil(2)
            + 1
    };
    match v {
        A::S(s) => s.len(),
        A::N(n) => number(n),
        A::B(b) => b.as_ref().len(),
        A::Bool(_) | A::Null(_) => 1,
        A::Ss(v) => v.iter().map(String::len).sum(),
        A::Ns(v) => v.iter().map(|n| number(n)).sum(),
        A::Bs(v) => v.iter().map(|b| b.as_ref().len()).sum(),
        A::M(m) => {
            3 + m
                .iter()
                .map(|(k, v)| 1 + k.len() + value_size(v))
                .sum::<usize>()
        }
        A::L(l) => 3 + l.iter().map(|v| 1 + value_size(v)).sum::<usize>(),
        _ => 0,
    }
}

/// Write request units by where they are spent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteUnits {
    pub table: u64,
    pub indexes: u64,
}

impl WriteUnits {
    pub fn total(&self) -> u64 {
        self.table + self.indexes
    }
}

/// What one write that turns the item `before` into `after` (`None`: absent) costs on
/// demand, by DynamoDB's rules: on the table a unit per KB of the larger image; on each index
/// (all five project every attribute) a put per KB of an entry that appears, a delete per KB
/// of one that goes, both when its index key changes, and one write per KB when it stays and
/// anything in it changed. A transaction costs twice this.
pub fn write_units(
    before: Option<&HashMap<String, AttributeValue>>,
    after: Option<&HashMap<String, AttributeValue>>,
) -> WriteUnits {
    let kb = |item: Option<&HashMap<String, AttributeValue>>| {
        item.map_or(0, |i| item_size(i).div_ceil(1024).max(1) as u64)
    };
    let (was, is) = (kb(before), kb(after));
    let key_of = |item: Option<&HashMap<String, AttributeValue>>, pk: &str, sk: &str| {
        item.and_then(|i| Some((i.get(pk)?.clone(), i.get(sk).cloned())))
    };
    let indexes = INDEXES
        .iter()
        .map(
            |(_, pk, sk)| match (key_of(before, pk, sk), key_of(after, pk, sk)) {
                (None, None) => 0,
                (None, Some(_)) => is,
                (Some(_), None) => was,
                (Some(old), Some(new)) if old != new => was + is,
                (Some(_), Some(_)) if before != after => is,
                _ => 0,
            },
        )
        .sum();
    WriteUnits {
        table: was.max(is),
        indexes,
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn item(pairs: &[(&str, AttributeValue)]) -> HashMap<String, AttributeValue> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    fn s(v: &str) -> AttributeValue {
        AttributeValue::S(v.into())
    }

    #[test]
    fn an_item_is_sized_as_dynamodb_bills_it() {
        let i = item(&[
            ("pk", s("G#abc")),
            ("rev", AttributeValue::N("12345".into())),
            ("ok", AttributeValue::Bool(true)),
            (
                "outbox",
                AttributeValue::M(HashMap::from([("n1".to_string(), s("body"))])),
            ),
        ]);
        // 2+5, 3+(3 digits+1), 2+1, 6+(3+1+2+4)
        assert_eq!(item_size(&i), 7 + 7 + 3 + 16);
        let n = |s: &str| value_size(&AttributeValue::N(s.into()));
        assert_eq!(n("0.00120"), 2, "leading and trailing zeros are not stored");
        assert_eq!(n("1700000000"), 2);
        assert_eq!(n("-1234.5"), 4);
        assert_eq!(n("0"), 1);
    }

    #[test]
    fn a_write_costs_a_unit_per_kb_of_its_larger_image_on_the_table() {
        let small = item(&[("pk", s("G#a")), ("v", s(&"x".repeat(100)))]);
        let big = item(&[("pk", s("G#a")), ("v", s(&"x".repeat(2100)))]);
        assert_eq!(write_units(None, Some(&small)).table, 1);
        assert_eq!(write_units(Some(&small), Some(&big)).table, 3);
        assert_eq!(write_units(Some(&big), None).table, 3);
        assert_eq!(
            write_units(Some(&big), Some(&small)).indexes,
            0,
            "in no index"
        );
    }

    #[test]
    fn a_write_costs_each_index_by_whether_the_item_enters_leaves_moves_or_stays() {
        let base = [("pk", s("G#a")), ("email_lc", s("m@x"))];
        let plain = item(&base);
        let due = |at: &str| {
            let mut i = item(&base);
            i.insert(DUE_PK.into(), s("DUE#1"));
            i.insert(DUE_SK.into(), s(at));
            i
        };
        // Enters `due` (a put); stays in `by_email` with a change (one write).
        assert_eq!(write_units(Some(&plain), Some(&due("t1"))).indexes, 2);
        // Moves in `due` (a delete and a put) and stays in `by_email`.
        assert_eq!(write_units(Some(&due("t1")), Some(&due("t2"))).indexes, 3);
        // Leaves `due`.
        assert_eq!(write_units(Some(&due("t1")), Some(&plain)).indexes, 2);
        // Nothing changed: nothing written to an index.
        assert_eq!(write_units(Some(&plain), Some(&plain)).indexes, 0);
    }
}
