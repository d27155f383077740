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
    ("EntraCredentialSecretArn", Part::EntraCredential),
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
///
/// The table is the stack's own (`Table`) or the one `ExistingTableName` names: a resource is
/// written `!If [CreateTable, <the stack's>, <the named one's>]`, and both branches must name
/// the same thing (else the two are joined with " | ", which no call names). Other `!If`s
/// (a resource only some deployments have) name nothing.
pub fn resource_name(r: &Value) -> String {
    match r {
        Value::Tagged(t) if t.tag == "Sub" => {
            let s = t.value.as_str().unwrap_or("");
            s.strip_prefix("${Table.Arn}")
                .or_else(|| s.strip_prefix(EXISTING_TABLE_ARN))
                .map(|rest| format!("Table{rest}"))
                .unwrap_or_else(|| s.to_string())
        }
        Value::Tagged(t)
            if t.tag == "If"
                && t.value
                    .as_sequence()
                    .and_then(|a| a.first())
                    .and_then(Value::as_str)
                    == Some("CreateTable") =>
        {
            let branch = |i: usize| {
                t.value
                    .as_sequence()
                    .and_then(|a| a.get(i))
                    .map(resource_name)
                    .unwrap_or_default()
            };
            let (created, existing) = (branch(1), branch(2));
            if created == existing {
                created
            } else {
                format!("{created} | {existing}")
            }
        }
        other => target(other).unwrap_or_default(),
    }
}

/// The table's ARN when the stack is pointed at an existing table, as the template writes it.
pub const EXISTING_TABLE_ARN: &str =
    "arn:${AWS::Partition}:dynamodb:${AWS::Region}:${AWS::AccountId}:table/${ExistingTableName}";

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

// --- The template as deployed: parameters, conditions, rules, values ---------------------------

/// Every parameter's value for a deployment: as given, else its default (`""` when it has
/// none and is not given).
pub fn parameter_values(t: &Value, given: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (name, p) in t["Parameters"].as_mapping().into_iter().flatten() {
        let Some(name) = name.as_str() else { continue };
        let default = match &p["Default"] {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => String::new(),
        };
        out.insert(name.to_string(), default);
    }
    for (k, v) in given {
        out.insert(k.to_string(), v.to_string());
    }
    out
}

/// An intrinsic function by its short (`!If`) or long (`Fn::If:`) form: its name and argument.
fn intrinsic(v: &Value) -> Option<(String, &Value)> {
    match v {
        Value::Tagged(t) => {
            let tag = t.tag.to_string();
            Some((tag.trim_start_matches('!').to_string(), &t.value))
        }
        Value::Mapping(m) if m.len() == 1 => {
            let (k, arg) = m.iter().next()?;
            let k = k.as_str()?;
            match k {
                "Ref" | "Condition" => Some((k.to_string(), arg)),
                _ => k.strip_prefix("Fn::").map(|f| (f.to_string(), arg)),
            }
        }
        _ => None,
    }
}

/// The value CloudFormation gives `!Ref` of a pseudo parameter, in the tests' region.
fn pseudo(name: &str) -> Option<&'static str> {
    match name {
        "AWS::Region" => Some("us-east-1"),
        "AWS::AccountId" => Some("123456789012"),
        "AWS::Partition" => Some("aws"),
        "AWS::URLSuffix" => Some("amazonaws.com"),
        "AWS::StackName" => Some("spkeeper"),
        _ => None,
    }
}

/// Evaluates a condition (or a rule's assertion): `!Equals`, `!Not`, `!And`, `!Or`,
/// `!Condition`, over parameter values.
pub fn holds(t: &Value, v: &Value, params: &BTreeMap<String, String>) -> Result<bool, String> {
    let (f, arg) = intrinsic(v).ok_or_else(|| format!("not a condition: {v:?}"))?;
    let args = || arg.as_sequence().cloned().unwrap_or_default();
    match f.as_str() {
        "Equals" => {
            let a = args();
            if a.len() != 2 {
                return Err(format!("Equals takes two values: {arg:?}"));
            }
            let value = |x: &Value| scalar(x, params).ok_or_else(|| format!("not a value: {x:?}"));
            Ok(value(&a[0])? == value(&a[1])?)
        }
        "Not" => Ok(!holds(t, args().first().ok_or("Not of nothing")?, params)?),
        "And" => args()
            .iter()
            .try_fold(true, |acc, x| Ok(acc & holds(t, x, params)?)),
        "Or" => args()
            .iter()
            .try_fold(false, |acc, x| Ok(acc | holds(t, x, params)?)),
        "Condition" => {
            let name = arg.as_str().ok_or("Condition without a name")?;
            let def = &t["Conditions"][name];
            if def.is_null() {
                return Err(format!("no condition {name}"));
            }
            holds(t, def, params)
        }
        other => Err(format!("{other} in a condition")),
    }
}

/// A scalar of a condition: a literal, or `!Ref` of a parameter.
fn scalar(v: &Value, params: &BTreeMap<String, String>) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        other => match intrinsic(other)? {
            (f, arg) if f == "Ref" => {
                let name = arg.as_str()?;
                params
                    .get(name)
                    .cloned()
                    .or_else(|| pseudo(name).map(String::from))
            }
            _ => None,
        },
    }
}

/// Every condition of the template, decided for these parameter values.
pub fn conditions(
    t: &Value,
    params: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, bool>, String> {
    let mut out = BTreeMap::new();
    for (name, _) in t["Conditions"].as_mapping().into_iter().flatten() {
        let name = name.as_str().unwrap_or_default();
        let cond = Value::Tagged(Box::new(serde_norway::value::TaggedValue {
            tag: serde_norway::value::Tag::new("Condition"),
            value: Value::String(name.to_string()),
        }));
        out.insert(name.to_string(), holds(t, &cond, params)?);
    }
    Ok(out)
}

/// The assertions of the template's `Rules` that these parameter values break (their
/// descriptions): CloudFormation refuses such a deployment before creating anything.
pub fn refused_by_rules(
    t: &Value,
    params: &BTreeMap<String, String>,
) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for (name, rule) in t["Rules"].as_mapping().into_iter().flatten() {
        let name = name.as_str().unwrap_or_default();
        if !rule["RuleCondition"].is_null() && !holds(t, &rule["RuleCondition"], params)? {
            continue;
        }
        for a in rule["Assertions"].as_sequence().into_iter().flatten() {
            if !holds(t, &a["Assert"], params)? {
                out.push(format!(
                    "{name}: {}",
                    a["AssertDescription"].as_str().unwrap_or("")
                ));
            }
        }
    }
    Ok(out)
}

/// `v` with every `!If` decided and every `AWS::NoValue` gone (`None`: `v` itself is gone).
fn decide(v: &Value, conds: &BTreeMap<String, bool>) -> Result<Option<Value>, String> {
    if let Some((f, arg)) = intrinsic(v) {
        if f == "If" {
            let a = arg.as_sequence().ok_or("If without a list")?;
            let name = a
                .first()
                .and_then(Value::as_str)
                .ok_or("If without a condition")?;
            let holds = *conds
                .get(name)
                .ok_or_else(|| format!("no condition {name}"))?;
            let pick = a
                .get(if holds { 1 } else { 2 })
                .ok_or("If without branches")?;
            return decide(pick, conds);
        }
        if f == "Ref" && arg.as_str() == Some("AWS::NoValue") {
            return Ok(None);
        }
    }
    Ok(Some(match v {
        Value::Tagged(t) => Value::Tagged(Box::new(serde_norway::value::TaggedValue {
            tag: t.tag.clone(),
            value: decide(&t.value, conds)?.unwrap_or(Value::Null),
        })),
        Value::Mapping(m) => {
            let mut out = serde_norway::Mapping::new();
            for (k, x) in m {
                if let Some(x) = decide(x, conds)? {
                    out.insert(k.clone(), x);
                }
            }
            Value::Mapping(out)
        }
        Value::Sequence(s) => {
            let mut out = Vec::new();
            for x in s {
                if let Some(x) = decide(x, conds)? {
                    out.push(x);
                }
            }
            Value::Sequence(out)
        }
        other => other.clone(),
    }))
}

/// What CloudFormation deploys with these parameter values: the template's `Globals`,
/// `Resources` and `Outputs` with every `!If` decided, `AWS::NoValue` removed, and the
/// resources and outputs whose condition does not hold left out. Everything else (`!Ref`,
/// `!GetAtt`, `!Sub`, `!Join`) stays as written; the parameters are `params`.
pub fn resolve(t: &Value, params: &BTreeMap<String, String>) -> Result<Value, String> {
    let conds = conditions(t, params)?;
    let mut out = serde_norway::Mapping::new();
    for section in ["Globals", "Resources", "Outputs"] {
        if let Some(v) = decide(&t[section], &conds)? {
            out.insert(Value::from(section), v);
        }
    }
    let mut out = Value::Mapping(out);
    for section in ["Resources", "Outputs"] {
        if let Some(m) = out[section].as_mapping_mut() {
            let gone: Vec<Value> = m
                .iter()
                .filter(|(_, r)| {
                    r["Condition"]
                        .as_str()
                        .is_some_and(|c| !conds.get(c).copied().unwrap_or(false))
                })
                .map(|(k, _)| k.clone())
                .collect();
            for k in gone {
                m.remove(&k);
            }
        }
    }
    Ok(out)
}

/// A string as CloudFormation would compute it: literals, `!Ref` (parameters, pseudo
/// parameters, and resources through `names`), `!GetAtt` (through `names`, as `X.Attr`),
/// `!Sub` (its string form), `!Join`. `None` for anything else.
pub fn evaluate(
    v: &Value,
    params: &BTreeMap<String, String>,
    names: &dyn Fn(&str) -> String,
) -> Option<String> {
    match v {
        Value::String(s) => return Some(s.clone()),
        Value::Number(n) => return Some(n.to_string()),
        Value::Bool(b) => return Some(b.to_string()),
        _ => {}
    }
    let (f, arg) = intrinsic(v)?;
    let named = |name: &str| {
        params
            .get(name)
            .cloned()
            .or_else(|| pseudo(name).map(String::from))
            .unwrap_or_else(|| names(name))
    };
    match f.as_str() {
        "Ref" => Some(named(arg.as_str()?)),
        "GetAtt" => match arg {
            Value::String(s) => Some(names(s)),
            Value::Sequence(a) => Some(names(&format!(
                "{}.{}",
                a.first()?.as_str()?,
                a.get(1)?.as_str()?
            ))),
            _ => None,
        },
        "Sub" => {
            let mut s = arg.as_str()?.to_string();
            let mut out = String::new();
            while let Some(at) = s.find("${") {
                out.push_str(&s[..at]);
                let end = s[at..].find('}')? + at;
                let name = &s[at + 2..end];
                out.push_str(&if name.contains('.') && !name.starts_with("AWS::") {
                    names(name)
                } else {
                    named(name)
                });
                s = s[end + 1..].to_string();
            }
            out.push_str(&s);
            Some(out)
        }
        "Join" => {
            let a = arg.as_sequence()?;
            let sep = a.first()?.as_str()?;
            let parts: Option<Vec<String>> = a
                .get(1)?
                .as_sequence()?
                .iter()
                .map(|x| evaluate(x, params, names))
                .collect();
            Some(parts?.join(sep))
        }
        _ => None,
    }
}

/// A function's environment as Lambda gives it: the template's global variables and its own,
/// evaluated (a variable that is not a string, e.g. an undecided `!If`, is left out).
pub fn function_env(
    resolved: &Value,
    function: &str,
    params: &BTreeMap<String, String>,
    names: &dyn Fn(&str) -> String,
) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for vars in [
        &resolved["Globals"]["Function"]["Environment"]["Variables"],
        &resolved["Resources"][function]["Properties"]["Environment"]["Variables"],
    ] {
        for (k, v) in vars.as_mapping().into_iter().flatten() {
            if let (Some(k), Some(v)) = (k.as_str(), evaluate(v, params, names)) {
                env.insert(k.to_string(), v);
            }
        }
    }
    env
}

/// The log group a function writes to (its `LoggingConfig.LogGroup`).
pub fn log_group_of(t: &Value, function: &str) -> Option<String> {
    target(&resource(t, function)["Properties"]["LoggingConfig"]["LogGroup"])
}

// --- CloudWatch Logs metric filters -----------------------------------------------------------

/// Does a CloudWatch Logs JSON filter pattern (`{ $.a.b = "x" && ($.c = 1 || $.d != 2) }`)
/// match this log line? The subset the template uses: selectors with `.` and `[n]`, the six
/// comparisons, strings (with `*` wildcards), numbers, `&&`, `||`, parentheses. A selector the
/// line lacks matches nothing.
pub fn filter_matches(pattern: &str, line: &serde_json::Value) -> Result<bool, String> {
    let p = pattern.trim();
    let inner = p
        .strip_prefix('{')
        .and_then(|p| p.strip_suffix('}'))
        .ok_or_else(|| format!("not a JSON filter pattern: {pattern}"))?;
    let tokens = lex(inner)?;
    let mut pos = 0;
    let m = parse_or(&tokens, &mut pos, line)?;
    if pos != tokens.len() {
        return Err(format!("unexpected {:?} in {pattern}", tokens.get(pos)));
    }
    Ok(m)
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Sel(String),
    Op(String),
    Str(String),
    Num(f64),
    And,
    Or,
    Open,
    Close,
}

fn lex(s: &str) -> Result<Vec<Tok>, String> {
    let c: Vec<char> = s.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    while i < c.len() {
        let ch = c[i];
        match ch {
            ' ' | '\t' | '\n' => i += 1,
            '(' => {
                out.push(Tok::Open);
                i += 1
            }
            ')' => {
                out.push(Tok::Close);
                i += 1
            }
            '&' if c.get(i + 1) == Some(&'&') => {
                out.push(Tok::And);
                i += 2
            }
            '|' if c.get(i + 1) == Some(&'|') => {
                out.push(Tok::Or);
                i += 2
            }
            '=' | '!' | '<' | '>' => {
                let two: String = c[i..(i + 2).min(c.len())].iter().collect();
                let op = if ["!=", "<=", ">="].contains(&two.as_str()) {
                    two
                } else if ch == '!' {
                    return Err("! without =".into());
                } else {
                    ch.to_string()
                };
                i += op.len();
                out.push(Tok::Op(op));
            }
            '"' => {
                let mut v = String::new();
                i += 1;
                while i < c.len() && c[i] != '"' {
                    if c[i] == '\\' && i + 1 < c.len() {
                        i += 1;
                    }
                    v.push(c[i]);
                    i += 1;
                }
                if i == c.len() {
                    return Err("unterminated string".into());
                }
                i += 1;
                out.push(Tok::Str(v));
            }
            '$' => {
                let start = i;
                i += 1;
                while i < c.len() && (c[i].is_alphanumeric() || "._[]-".contains(c[i])) {
                    i += 1;
                }
                out.push(Tok::Sel(c[start..i].iter().collect()));
            }
            d if d.is_ascii_digit() || d == '-' => {
                let start = i;
                i += 1;
                while i < c.len() && (c[i].is_ascii_digit() || c[i] == '.') {
                    i += 1;
                }
                let n: String = c[start..i].iter().collect();
                out.push(Tok::Num(n.parse().map_err(|_| format!("bad number {n}"))?));
            }
            w if w.is_alphabetic() => {
                let start = i;
                while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                    i += 1;
                }
                out.push(Tok::Str(c[start..i].iter().collect()));
            }
            other => return Err(format!("unexpected {other:?}")),
        }
    }
    Ok(out)
}

fn parse_or(t: &[Tok], pos: &mut usize, line: &serde_json::Value) -> Result<bool, String> {
    let mut v = parse_and(t, pos, line)?;
    while t.get(*pos) == Some(&Tok::Or) {
        *pos += 1;
        v |= parse_and(t, pos, line)?;
    }
    Ok(v)
}

fn parse_and(t: &[Tok], pos: &mut usize, line: &serde_json::Value) -> Result<bool, String> {
    let mut v = parse_term(t, pos, line)?;
    while t.get(*pos) == Some(&Tok::And) {
        *pos += 1;
        v &= parse_term(t, pos, line)?;
    }
    Ok(v)
}

fn parse_term(t: &[Tok], pos: &mut usize, line: &serde_json::Value) -> Result<bool, String> {
    match t.get(*pos) {
        Some(Tok::Open) => {
            *pos += 1;
            let v = parse_or(t, pos, line)?;
            if t.get(*pos) != Some(&Tok::Close) {
                return Err("missing )".into());
            }
            *pos += 1;
            Ok(v)
        }
        Some(Tok::Sel(sel)) => {
            let (Some(Tok::Op(op)), Some(value)) = (t.get(*pos + 1), t.get(*pos + 2)) else {
                return Err(format!("{sel} without a comparison"));
            };
            *pos += 3;
            let Some(found) = select(sel, line) else {
                return Ok(false);
            };
            Ok(compare(found, op, value))
        }
        other => Err(format!("unexpected {other:?}")),
    }
}

fn select<'a>(sel: &str, line: &'a serde_json::Value) -> Option<&'a serde_json::Value> {
    let mut cur = line;
    let rest = sel.strip_prefix('$')?;
    for part in rest.split('.').filter(|p| !p.is_empty()) {
        let (name, mut idx) = match part.find('[') {
            Some(b) => (&part[..b], &part[b..]),
            None => (part, ""),
        };
        if !name.is_empty() {
            cur = cur.get(name)?;
        }
        while let Some(close) = idx.find(']') {
            let n: usize = idx[1..close].parse().ok()?;
            cur = cur.get(n)?;
            idx = &idx[close + 1..];
        }
    }
    Some(cur)
}

fn compare(found: &serde_json::Value, op: &str, value: &Tok) -> bool {
    match value {
        Tok::Num(n) => {
            let Some(x) = found.as_f64() else {
                return false;
            };
            match op {
                "=" => x == *n,
                "!=" => x != *n,
                "<" => x < *n,
                ">" => x > *n,
                "<=" => x <= *n,
                ">=" => x >= *n,
                _ => false,
            }
        }
        Tok::Str(s) => {
            let Some(x) = found.as_str() else {
                return false;
            };
            let eq = wildcard(s, x);
            match op {
                "=" => eq,
                "!=" => !eq,
                _ => false,
            }
        }
        _ => false,
    }
}

/// `*` matches any run of characters.
fn wildcard(pattern: &str, s: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == s;
    }
    let mut rest = s;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            let Some(r) = rest.strip_prefix(part) else {
                return false;
            };
            rest = r;
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            let Some(at) = rest.find(part) else {
                return false;
            };
            rest = &rest[at + part.len()..];
        }
    }
    true
}
