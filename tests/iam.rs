//! `template.yaml`'s permissions as data: which role each function runs as, which secrets it
//! is given, and what each role's statements allow on the table (by action and partition-key
//! prefix), the queue and the secrets. `tests/template.rs` checks its rules with it, and
//! `tests/iam_operations.rs` checks every AWS call the code makes against it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_norway::Value;
use spkeeper::config::Part;

/// The template, parsed.
pub fn template() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../template.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("template.yaml: {e}"));
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("template.yaml is not YAML: {e}"))
}

/// The template parameter holding the ARN of each part's secret (README, "Deploy to AWS").
pub const SECRET_PARAMETERS: &[(&str, Part)] = &[
    ("ClientSecretArn", Part::ClientSecret),
    ("TokenKeysSecretArn", Part::TokenKeys),
    ("LinkKeySecretArn", Part::LinkKey),
    ("ApiKeySecretArn", Part::ApiKey),
    ("WebhookSecretArn", Part::WebhookSecret),
];

pub fn secret_parameter(part: Part) -> &'static str {
    SECRET_PARAMETERS
        .iter()
        .find(|(_, p)| *p == part)
        .map(|(name, _)| *name)
        .unwrap_or("")
}

pub fn part_of_parameter(name: &str) -> Option<Part> {
    SECRET_PARAMETERS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, p)| *p)
}

/// `!Ref X` / `!GetAtt X.Y` → "X"; plain strings as they are.
pub fn target(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Tagged(t) => match &t.value {
            Value::String(s) => Some(s.split('.').next().unwrap_or(s).to_string()),
            Value::Sequence(seq) => seq.first().and_then(target),
            _ => None,
        },
        _ => None,
    }
}

/// Every `!Ref` name inside `v` (through `!Join`, `!If` and lists).
pub fn refs(v: &Value) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    collect_refs(v, &mut out);
    out
}

fn collect_refs(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Tagged(t) if t.tag == "Ref" => {
            if let Some(s) = t.value.as_str() {
                out.insert(s.to_string());
            }
        }
        Value::Tagged(t) => collect_refs(&t.value, out),
        Value::Sequence(seq) => seq.iter().for_each(|x| collect_refs(x, out)),
        Value::Mapping(m) => m.values().for_each(|x| collect_refs(x, out)),
        _ => {}
    }
}

/// A resource of the template by name.
pub fn resource<'a>(t: &'a Value, name: &str) -> &'a Value {
    &t["Resources"][name]
}

/// The serverless functions: (resource name, binary).
pub fn functions(t: &Value) -> Vec<(String, String)> {
    t["Resources"]
        .as_mapping()
        .into_iter()
        .flatten()
        .filter(|(_, r)| r["Type"].as_str() == Some("AWS::Serverless::Function"))
        .filter_map(|(k, r)| {
            Some((
                k.as_str()?.to_string(),
                r["Metadata"]["BuildProperties"]["Binary"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            ))
        })
        .collect()
}

/// The function resource built from `binary`.
pub fn function_of(t: &Value, binary: &str) -> Option<String> {
    functions(t)
        .into_iter()
        .find(|(_, b)| b == binary)
        .map(|(name, _)| name)
}

/// A function's environment variable, or the template's global one.
pub fn env_var<'a>(t: &'a Value, function: &str, var: &str) -> &'a Value {
    match &resource(t, function)["Properties"]["Environment"]["Variables"][var] {
        Value::Null => &t["Globals"]["Function"]["Environment"]["Variables"][var],
        v => v,
    }
}

/// The role a function runs as.
pub fn role_of(t: &Value, function: &str) -> Option<String> {
    target(&resource(t, function)["Properties"]["Role"])
}

/// A role's statements, with `!If [condition, statement, AWS::NoValue]` taken as the
/// statement (the condition may hold).
pub fn statements(t: &Value, role: &str) -> Vec<Value> {
    resource(t, role)["Properties"]["Policies"]
        .as_sequence()
        .into_iter()
        .flatten()
        .flat_map(|p| {
            p["PolicyDocument"]["Statement"]
                .as_sequence()
                .cloned()
                .unwrap_or_default()
        })
        .map(|s| match &s {
            Value::Tagged(tagged) => tagged
                .value
                .as_sequence()
                .and_then(|x| x.get(1))
                .cloned()
                .unwrap_or(Value::Null),
            other => other.clone(),
        })
        .filter(|s| !s.is_null())
        .collect()
}

/// A statement's actions.
pub fn actions(s: &Value) -> Vec<String> {
    match &s["Action"] {
        Value::String(a) => vec![a.clone()],
        Value::Sequence(a) => a
            .iter()
            .filter_map(|x| x.as_str().map(String::from))
            .collect(),
        _ => vec![],
    }
}

/// A statement's resources.
pub fn resources(s: &Value) -> Vec<Value> {
    match &s["Resource"] {
        Value::Sequence(r) => r.clone(),
        Value::Null => vec![],
        r => vec![r.clone()],
    }
}

/// What a resource value names: `Table`, `Table/index/{name}`, a `!GetAtt`/`!Ref` target,
/// or the plain string.
pub fn resource_name(r: &Value) -> String {
    match r {
        Value::Tagged(t) if t.tag == "Sub" => {
            let s = t.value.as_str().unwrap_or("");
            s.strip_prefix("${Table.Arn}")
                .map(|rest| format!("Table{rest}"))
                .unwrap_or_else(|| s.to_string())
        }
        other => target(other).unwrap_or_default(),
    }
}

/// The partition-key patterns a statement is limited to, if it is
/// (`ForAllValues:StringLike` on `dynamodb:LeadingKeys`).
pub fn leading_keys(s: &Value) -> Option<Vec<String>> {
    let v = &s["Condition"]["ForAllValues:StringLike"]["dynamodb:LeadingKeys"];
    match v {
        Value::Sequence(p) => Some(
            p.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect(),
        ),
        Value::String(p) => Some(vec![p.clone()]),
        _ => None,
    }
}

/// IAM's `StringLike` for the patterns used here (`*` at the end, or alone).
fn like(pattern: &str, value: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => value.starts_with(prefix),
        None => pattern == value,
    }
}

/// One AWS call, as IAM authorizes it: the action, the resource (as [`resource_name`] names
/// it), and for table items the partition keys involved.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Call {
    pub action: String,
    pub resource: String,
    pub keys: Vec<String>,
}

/// Does one of `role`'s Allow statements allow `call`? (There are no Deny statements.)
pub fn allows(t: &Value, role: &str, call: &Call) -> bool {
    statements(t, role).iter().any(|s| {
        s["Effect"].as_str() == Some("Allow")
            && actions(s).contains(&call.action)
            && resources(s)
                .iter()
                .any(|r| resource_name(r) == call.resource)
            && match leading_keys(s) {
                None => true,
                Some(patterns) => call
                    .keys
                    .iter()
                    .all(|k| patterns.iter().any(|p| like(p, k))),
            }
    })
}

/// A role's grants on table items: action → partition-key patterns (`*` when a statement on
/// the table has no key condition).
pub fn table_grants(t: &Value, role: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for s in statements(t, role) {
        if !resources(&s).iter().any(|r| resource_name(r) == "Table") {
            continue;
        }
        let patterns = leading_keys(&s).unwrap_or_else(|| vec!["*".into()]);
        for a in actions(&s)
            .into_iter()
            .filter(|a| a.starts_with("dynamodb:"))
        {
            out.entry(a).or_default().extend(patterns.iter().cloned());
        }
    }
    out
}

/// The secret parameters a statement set lets a role read (`GetSecretValue` resources), and
/// any other resource it names (a wildcard, a literal ARN).
pub fn readable_secrets(t: &Value, role: &str) -> (BTreeSet<String>, Vec<String>) {
    let mut params = BTreeSet::new();
    let mut others = Vec::new();
    for s in statements(t, role) {
        if !actions(&s)
            .iter()
            .any(|a| a == "secretsmanager:GetSecretValue")
        {
            continue;
        }
        for r in resources(&s) {
            match (&r, target(&r)) {
                (Value::Tagged(tag), Some(name)) if tag.tag == "Ref" => {
                    params.insert(name);
                }
                (_, name) => others.push(name.unwrap_or_default()),
            }
        }
    }
    (params, others)
}
