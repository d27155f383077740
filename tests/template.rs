//! The rules `template.yaml` must keep that cfn-lint cannot check: reliability (visibility
//! timeout, dead-letter queues, partial batch failures, a retry schedule of more than a day),
//! least privilege (each function only its own secrets, keys used only through Secrets
//! Manager, table actions limited by key prefix, no Scan, no wildcard actions), limits
//! (access logs, throttling, reserved concurrency), and agreement with the code (each
//! function's binary exists; the table is the DynamoDB adapter's; each function is given
//! exactly the secrets its code needs). Each rule also has a test that breaks it and expects
//! the checker to say so.

use std::collections::BTreeSet;
use std::path::Path;

use serde_norway::Value;
use spkeeper::aws::sqs::retry_delay;
use spkeeper::config::{Needs, Part, Program, TokenAuth};
use spkeeper_e2e::iam::{
    self, actions, leading_keys, part_of_parameter, readable_secrets, refs, statements,
    table_grants, target, template,
};

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn num(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn resources(t: &Value) -> Vec<(String, &Value)> {
    t["Resources"]
        .as_mapping()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| k.as_str().map(|k| (k.to_string(), v)))
                .collect()
        })
        .unwrap_or_default()
}

fn of_type<'a>(t: &'a Value, kind: &str) -> Vec<(String, &'a Value)> {
    resources(t)
        .into_iter()
        .filter(|(_, r)| r["Type"].as_str() == Some(kind))
        .collect()
}

/// A function property, or the template's global default for it.
fn fn_prop<'a>(t: &'a Value, f: &'a Value, name: &str) -> &'a Value {
    match &f["Properties"][name] {
        Value::Null => &t["Globals"]["Function"][name],
        v => v,
    }
}

/// Binaries the workspace builds (`[[bin]] name = …` in every member's Cargo.toml).
fn workspace_binaries() -> BTreeSet<String> {
    let ws: toml::Table = std::fs::read_to_string(root().join("Cargo.toml"))
        .unwrap()
        .parse()
        .unwrap();
    let mut bins = BTreeSet::new();
    for member in ws["workspace"]["members"].as_array().unwrap() {
        let path = root().join(member.as_str().unwrap()).join("Cargo.toml");
        let pkg: toml::Table = std::fs::read_to_string(path).unwrap().parse().unwrap();
        for b in pkg
            .get("bin")
            .and_then(|b| b.as_array())
            .into_iter()
            .flatten()
        {
            if let Some(name) = b.get("name").and_then(|n| n.as_str()) {
                bins.insert(name.to_string());
            }
        }
    }
    bins
}

/// Every rule; the violations found, as sentences.
fn check(t: &Value) -> Vec<String> {
    let mut v = Vec::new();
    let functions = of_type(t, "AWS::Serverless::Function");
    let bins = workspace_binaries();
    let mut code_uris = BTreeSet::new();

    if functions.len() != 4 {
        v.push(format!(
            "four functions expected, found {}",
            functions.len()
        ));
    }
    for (name, f) in &functions {
        if fn_prop(t, f, "Runtime").as_str() != Some("provided.al2023") {
            v.push(format!("{name}: runtime must be provided.al2023"));
        }
        if fn_prop(t, f, "Architectures")
            .as_sequence()
            .map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>())
            != Some(vec!["arm64"])
        {
            v.push(format!("{name}: architecture must be arm64"));
        }
        if fn_prop(t, f, "Handler").as_str() != Some("bootstrap") {
            v.push(format!("{name}: handler must be bootstrap"));
        }
        if num(fn_prop(t, f, "MemorySize")).unwrap_or(0) < 512 {
            v.push(format!(
                "{name}: memory below 512 MB makes TLS at cold start slow"
            ));
        }
        if num(fn_prop(t, f, "Timeout")).is_none() {
            v.push(format!("{name}: no timeout"));
        }
        if fn_prop(t, f, "LoggingConfig")["LogFormat"].as_str() != Some("JSON") {
            v.push(format!("{name}: logs must be JSON"));
        }
        code_uris.insert(format!("{:?}", fn_prop(t, f, "CodeUri")));
        if f["Metadata"]["BuildMethod"].as_str() != Some("rust-cargolambda") {
            v.push(format!("{name}: BuildMethod must be rust-cargolambda"));
        }
        match f["Metadata"]["BuildProperties"]["Binary"].as_str() {
            Some(b) if bins.contains(b) => {}
            Some(b) => v.push(format!("{name}: binary {b} is not built by the workspace")),
            None => v.push(format!("{name}: no BuildProperties.Binary")),
        }
        if f["Properties"]["Role"].is_null() {
            v.push(format!("{name}: needs its own role"));
        }
    }
    if code_uris.len() != 1 {
        v.push("the functions must share one CodeUri (one build)".into());
    }

    // HTTP routes: public except /token, which is IAM-authorized.
    let mut routes = BTreeSet::new();
    for (_, f) in &functions {
        for (_, e) in f["Properties"]["Events"].as_mapping().into_iter().flatten() {
            if e["Type"].as_str() == Some("HttpApi") {
                let p = &e["Properties"];
                let auth = p["Auth"]["Authorizer"]
                    .as_str()
                    .unwrap_or("NONE")
                    .to_string();
                routes.insert(format!(
                    "{} {} {auth}",
                    p["Method"].as_str().unwrap_or(""),
                    p["Path"].as_str().unwrap_or("")
                ));
            }
        }
    }
    for r in [
        "POST /launch NONE",
        "GET /status NONE",
        "GET /renew/{grant_id} NONE",
        "GET /healthz NONE",
        "POST /token AWS_IAM",
    ] {
        if !routes.contains(r) {
            v.push(format!(
                "route missing or wrongly authorized: {r} (have {routes:?})"
            ));
        }
    }

    // Notices: partial batch failures, and a queue that cannot lose them.
    let queues = of_type(t, "AWS::SQS::Queue");
    let mut sqs_events = 0;
    for (name, f) in &functions {
        for (_, e) in f["Properties"]["Events"].as_mapping().into_iter().flatten() {
            if e["Type"].as_str() != Some("SQS") {
                continue;
            }
            sqs_events += 1;
            let p = &e["Properties"];
            let reports = p["FunctionResponseTypes"].as_sequence().is_some_and(|s| {
                s.iter()
                    .any(|x| x.as_str() == Some("ReportBatchItemFailures"))
            });
            if !reports {
                v.push(format!(
                    "{name}: the SQS source must report batch item failures"
                ));
            }
            let Some(qname) = target(&p["Queue"]) else {
                v.push(format!("{name}: SQS event has no queue"));
                continue;
            };
            let Some((_, q)) = queues.iter().find(|(n, _)| *n == qname) else {
                v.push(format!("{name}: queue {qname} is not in the template"));
                continue;
            };
            let timeout = num(fn_prop(t, f, "Timeout")).unwrap_or(i64::MAX / 8);
            let visibility = num(&q["Properties"]["VisibilityTimeout"]).unwrap_or(30);
            if visibility < 6 * timeout {
                v.push(format!(
                    "{qname}: visibility timeout {visibility} s is under 6 × {name}'s {timeout} s"
                ));
            }
            let redrive = &q["Properties"]["RedrivePolicy"];
            if target(&redrive["deadLetterTargetArn"]).is_none() {
                v.push(format!("{qname}: no dead-letter queue"));
            }
            // notify hides a failed notice for `retry_delay(receive count)`; the receives
            // before the dead-letter queue must span a day even at the shortest jitter.
            let receives = num(&redrive["maxReceiveCount"]).unwrap_or(0);
            let span: i64 = (1..receives.max(1))
                .map(|r| i64::from(retry_delay(u32::try_from(r).unwrap_or(u32::MAX), 0.0)))
                .sum();
            if span < 24 * 3600 {
                v.push(format!(
                    "{qname}: maxReceiveCount {receives} retries for {span} s, under 24 h"
                ));
            }
            if num(&q["Properties"]["MessageRetentionPeriod"]).unwrap_or(345_600) < 4 * 86_400 {
                v.push(format!(
                    "{qname}: retention must outlast a long weekend (4 days)"
                ));
            }
        }
    }
    if sqs_events != 1 {
        v.push("exactly one function must consume the notice queue".into());
    }

    // The schedule: a parameter, hourly by default, retried, dead-lettered.
    let rules = of_type(t, "AWS::Events::Rule");
    let scheduled = rules
        .iter()
        .find(|(_, r)| !r["Properties"]["ScheduleExpression"].is_null());
    match scheduled {
        None => v.push("no sweep schedule".into()),
        Some((name, r)) => {
            let p = &r["Properties"];
            let param = target(&p["ScheduleExpression"]).unwrap_or_default();
            if t["Parameters"][param.as_str()]["Default"].as_str() != Some("rate(1 hour)") {
                v.push(format!(
                    "{name}: the schedule must be a parameter, hourly by default"
                ));
            }
            let tgt = &p["Targets"][0];
            if tgt["RetryPolicy"].is_null() || target(&tgt["DeadLetterConfig"]["Arn"]).is_none() {
                v.push(format!(
                    "{name}: the sweep target needs a retry policy and a dead-letter queue"
                ));
            }
        }
    }

    // Least privilege: no Scan, no wildcard action, anywhere.
    for (name, _) in of_type(t, "AWS::IAM::Role") {
        for s in statements(t, &name) {
            for a in actions(&s) {
                if a.contains('*') {
                    v.push(format!("{name}: wildcard action {a}"));
                }
                if a.eq_ignore_ascii_case("dynamodb:Scan") {
                    v.push(format!("{name}: may Scan"));
                }
            }
        }
    }
    v.extend(check_secrets(t));
    v.extend(check_table_access(t));
    v.extend(check_limits(t));

    // Secrets come from Secrets Manager, never as parameters or plain environment.
    for (p, _) in t["Parameters"].as_mapping().into_iter().flatten() {
        let p = p.as_str().unwrap_or("");
        if p.contains("Secret")
            && part_of_parameter(p).is_none()
            && !matches!(p, "SecretsKmsKeyArn" | "ClientSecretExpiresAt")
        {
            v.push(format!("parameter {p} looks like a secret"));
        }
    }
    let env = &t["Globals"]["Function"]["Environment"]["Variables"];
    for secret in [
        "SPKEEPER_CLIENT_SECRET",
        "SPKEEPER_API_KEY",
        "SPKEEPER_WEBHOOK_SECRET",
    ] {
        if !env[secret].is_null() {
            v.push(format!(
                "{secret} must come from the secret, not the environment"
            ));
        }
    }

    // The table is the adapter's.
    match of_type(t, "AWS::DynamoDB::Table").first() {
        None => v.push("no table".into()),
        Some((name, table)) => v.extend(check_table(name, &table["Properties"])),
    }

    // Alarms, and what the deployer reads back.
    let alarms = of_type(t, "AWS::CloudWatch::Alarm");
    let watched: BTreeSet<String> = alarms
        .iter()
        .flat_map(|(_, a)| {
            let p = &a["Properties"];
            let mut w = vec![p["MetricName"].as_str().unwrap_or("").to_string()];
            w.extend(
                p["Dimensions"]
                    .as_sequence()
                    .into_iter()
                    .flatten()
                    .filter_map(|d| target(&d["Value"])),
            );
            w
        })
        .collect();
    for (name, _) in &functions {
        if !watched.contains(name) {
            v.push(format!("no errors alarm for {name}"));
        }
    }
    for q in [
        "NoticeDeadLetterQueue",
        "SweepDeadLetterQueue",
        "StsRejectedClient",
        "ClientSecretExpiring",
    ] {
        if !watched.contains(q) {
            v.push(format!("no alarm on {q}"));
        }
    }
    if alarms
        .iter()
        .any(|(_, a)| target(&a["Properties"]["AlarmActions"]).is_none())
    {
        v.push("every alarm must notify the alarm topic".into());
    }
    // The alarms on logged events count exactly what the functions log (the Lambda tests show
    // the JSON shape: the event is under `fields`).
    let filters: BTreeSet<String> = of_type(t, "AWS::Logs::MetricFilter")
        .iter()
        .filter_map(|(_, f)| f["Properties"]["FilterPattern"].as_str().map(String::from))
        .collect();
    for event in ["sts_rejected_client", "client_secret_expiring"] {
        let pattern = format!("{{ $.fields.event = \"{event}\" }}");
        if !filters.contains(&pattern) {
            v.push(format!("no metric filter {pattern}"));
        }
    }
    for o in ["ApiUrl", "LaunchUrl", "TableName", "NoticeQueueName"] {
        if t["Outputs"][o].is_null() {
            v.push(format!("output {o} missing"));
        }
    }
    v
}

/// The program a function resource runs (by its binary).
fn program_of(f: &Value) -> Option<Program> {
    Program::from_name(f["Metadata"]["BuildProperties"]["Binary"].as_str()?)
}

/// Each function is given exactly the secrets of the parts its code uses (`Needs::of`), its
/// role may read exactly those, and decrypt them (with a customer key) only through Secrets
/// Manager and only for them.
fn check_secrets(t: &Value) -> Vec<String> {
    let mut v = Vec::new();
    for (name, f) in of_type(t, "AWS::Serverless::Function") {
        let Some(program) = program_of(f) else {
            continue;
        };
        let auth = match iam::env_var(t, &name, "SPKEEPER_TOKEN_AUTH").as_str() {
            Some("iam") => TokenAuth::Iam,
            _ => TokenAuth::ApiKey,
        };
        let needs: BTreeSet<Part> = Needs::for_auth(program, auth, false)
            .used()
            .into_iter()
            .collect();
        let given_params = refs(iam::env_var(t, &name, "SPKEEPER_SECRETS_ARN"));
        let given: BTreeSet<Part> = given_params
            .iter()
            .filter_map(|p| part_of_parameter(p))
            .collect();
        if given.len() != given_params.len() {
            v.push(format!(
                "{name}: SPKEEPER_SECRETS_ARN names more than the secret parameters: {given_params:?}"
            ));
        }
        if given != needs {
            v.push(format!(
                "{name}: given the secrets of {given:?}, but its code uses {needs:?}"
            ));
        }
        let Some(role) = iam::role_of(t, &name) else {
            continue;
        };
        let (readable, others) = readable_secrets(t, &role);
        if readable != given_params || !others.is_empty() {
            v.push(format!(
                "{role}: may read the secrets {readable:?} {others:?}, but {name} is given {given_params:?}"
            ));
        }
        for s in statements(t, &role) {
            if !actions(&s).iter().any(|a| a.starts_with("kms:")) {
                continue;
            }
            let c = &s["Condition"]["StringEquals"];
            let via = match &c["kms:ViaService"] {
                Value::Tagged(sub) if sub.tag == "Sub" => sub.value.as_str().unwrap_or(""),
                other => other.as_str().unwrap_or(""),
            };
            if via != "secretsmanager.${AWS::Region}.amazonaws.com" {
                v.push(format!(
                    "{role}: kms:Decrypt without kms:ViaService = Secrets Manager of the region"
                ));
            }
            if refs(&c["kms:EncryptionContext:SecretARN"]) != given_params {
                v.push(format!(
                    "{role}: kms:Decrypt not limited by encryption context to its own secrets"
                ));
            }
        }
    }
    v
}

/// The item families of the table (`shared/src/aws/table.rs`): grants, refresh tokens,
/// access tokens, leases, operator markers, the per-host realm cache and used hand-off
/// tickets.
const KEY_PATTERNS: &[&str] = &["G#*", "RT#*", "AT#*", "L#*", "M#*", "H#*", "T#*"];
/// What erasure (`DELETE /grants/{id}`, the exchange function) deletes: a grant's items.
const ERASED: &[&str] = &["G#*", "RT#*", "AT#*"];
/// What the adapter sends by key (Query on the indexes, and on a grant's access tokens when
/// it is erased).
const ITEM_ACTIONS: &[&str] = &[
    "dynamodb:GetItem",
    "dynamodb:PutItem",
    "dynamodb:UpdateItem",
    "dynamodb:DeleteItem",
];

/// Table access: every statement on items is limited by partition-key prefix to known item
/// families; only leases are ever deleted, but for exchange erasing a grant's own items;
/// only launch and exchange touch token items, and only launch writes a refresh token; notify
/// has no table access.
fn check_table_access(t: &Value) -> Vec<String> {
    let mut v = Vec::new();
    for (name, f) in of_type(t, "AWS::Serverless::Function") {
        let (Some(program), Some(role)) = (program_of(f), iam::role_of(t, &name)) else {
            continue;
        };
        for s in statements(t, &role) {
            let table_actions: Vec<String> = actions(&s)
                .into_iter()
                .filter(|a| a.starts_with("dynamodb:"))
                .collect();
            if table_actions.is_empty() {
                continue;
            }
            if program == Program::Notify {
                v.push(format!("{role}: notify needs no table access"));
            }
            let on_items = iam::resources(&s)
                .iter()
                .any(|r| iam::resource_name(r) == "Table");
            for a in &table_actions {
                if a == "dynamodb:Query" {
                    let erasure_lookup = program == Program::Exchange
                        && leading_keys(&s).is_some_and(|k| k == ["AT#*"]);
                    if on_items && !erasure_lookup {
                        v.push(format!("{role}: Query on the table, not an index"));
                    }
                } else if !ITEM_ACTIONS.contains(&a.as_str()) {
                    v.push(format!("{role}: {a} is not an action the adapter uses"));
                }
            }
            if on_items && leading_keys(&s).is_none() {
                v.push(format!(
                    "{role}: {table_actions:?} on any item of the table (no dynamodb:LeadingKeys condition)"
                ));
            }
        }
        for (action, patterns) in table_grants(t, &role) {
            for p in &patterns {
                if p != "*" && !KEY_PATTERNS.contains(&p.as_str()) {
                    v.push(format!("{role}: {action} on unknown key prefix {p}"));
                }
                let any = p == "*";
                if (any || p == "RT#*" || p == "AT#*")
                    && !matches!(program, Program::Launch | Program::Exchange)
                {
                    v.push(format!("{role}: {action} on token items ({p})"));
                }
                let erasing = program == Program::Exchange && action == "dynamodb:DeleteItem";
                if (any || p == "RT#*")
                    && action != "dynamodb:GetItem"
                    && program != Program::Launch
                    && !erasing
                {
                    v.push(format!("{role}: {action} writes refresh tokens ({p})"));
                }
            }
            let deletable = |p: &String| {
                p == "L#*" || (program == Program::Exchange && ERASED.contains(&p.as_str()))
            };
            if action == "dynamodb:DeleteItem" && !patterns.iter().all(deletable) {
                v.push(format!(
                    "{role}: may delete items other than leases: {patterns:?}"
                ));
            }
        }
    }
    v
}

/// The positive default of the parameter `v` refers to (`!Ref`, or inside `!If`).
fn param_default(t: &Value, v: &Value) -> Option<i64> {
    refs(v)
        .iter()
        .filter_map(|p| num(&t["Parameters"][p.as_str()]["Default"]))
        .find(|d| *d > 0)
}

/// API access logs (route, status, request id, IAM caller) to a kept log group; default route
/// throttling; reserved concurrency for launch and exchange.
fn check_limits(t: &Value) -> Vec<String> {
    let mut v = Vec::new();
    let apis = of_type(t, "AWS::Serverless::HttpApi");
    if apis.is_empty() {
        v.push("no HTTP API".into());
    }
    for (name, api) in &apis {
        let p = &api["Properties"];
        let logs = &p["AccessLogSettings"];
        let kept = target(&logs["DestinationArn"]).is_some_and(|group| {
            let g = iam::resource(t, &group);
            g["Type"].as_str() == Some("AWS::Logs::LogGroup")
                && !g["Properties"]["RetentionInDays"].is_null()
        });
        if !kept {
            v.push(format!(
                "{name}: no access logs to a log group of the template with a retention"
            ));
        }
        let format: serde_json::Value = logs["Format"]
            .as_str()
            .and_then(|f| serde_json::from_str(f).ok())
            .unwrap_or_default();
        let fields: BTreeSet<&str> = format
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(_, v)| v.as_str())
            .collect();
        for var in [
            "$context.requestId",
            "$context.routeKey",
            "$context.status",
            "$context.identity.userArn",
            "$context.identity.caller",
        ] {
            if !fields.contains(var) {
                v.push(format!(
                    "{name}: the access log format (one JSON object) lacks {var}"
                ));
            }
        }
        let throttle = &p["DefaultRouteSettings"];
        for limit in ["ThrottlingBurstLimit", "ThrottlingRateLimit"] {
            if param_default(t, &throttle[limit]).is_none() {
                v.push(format!(
                    "{name}: DefaultRouteSettings.{limit} must be a parameter with a default"
                ));
            }
        }
    }
    for program in [Program::Launch, Program::Exchange] {
        let Some(f) = iam::function_of(t, program.name()) else {
            continue;
        };
        let reserved = &iam::resource(t, &f)["Properties"]["ReservedConcurrentExecutions"];
        if param_default(t, reserved).is_none() {
            v.push(format!(
                "{f}: ReservedConcurrentExecutions must be a parameter with a default"
            ));
        }
    }
    v
}

/// An index as (name, key schema, projection).
type Index = (String, Vec<(String, String)>, String);

fn check_table(name: &str, p: &Value) -> Vec<String> {
    use spkeeper::aws::table;
    let mut v = Vec::new();
    let attrs: BTreeSet<(String, String)> = p["AttributeDefinitions"]
        .as_sequence()
        .into_iter()
        .flatten()
        .map(|a| {
            (
                a["AttributeName"].as_str().unwrap_or("").to_string(),
                a["AttributeType"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let expected: BTreeSet<(String, String)> = table::attribute_definitions()
        .iter()
        .map(|a| {
            (
                a.attribute_name().to_string(),
                a.attribute_type().as_str().to_string(),
            )
        })
        .collect();
    if attrs != expected {
        v.push(format!(
            "{name}: attributes {attrs:?} are not the adapter's {expected:?}"
        ));
    }
    let keys = |schema: &Value| -> Vec<(String, String)> {
        schema
            .as_sequence()
            .into_iter()
            .flatten()
            .map(|k| {
                (
                    k["AttributeName"].as_str().unwrap_or("").to_string(),
                    k["KeyType"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    };
    let adapter_keys =
        |schema: &[aws_sdk_dynamodb::types::KeySchemaElement]| -> Vec<(String, String)> {
            schema
                .iter()
                .map(|k| {
                    (
                        k.attribute_name().to_string(),
                        k.key_type().as_str().to_string(),
                    )
                })
                .collect()
        };
    if keys(&p["KeySchema"]) != adapter_keys(&table::key_schema()) {
        v.push(format!("{name}: key schema differs from the adapter's"));
    }
    let indexes: BTreeSet<Index> = p["GlobalSecondaryIndexes"]
        .as_sequence()
        .into_iter()
        .flatten()
        .map(|i| {
            (
                i["IndexName"].as_str().unwrap_or("").to_string(),
                keys(&i["KeySchema"]),
                i["Projection"]["ProjectionType"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect();
    let expected_indexes: BTreeSet<Index> = table::indexes()
        .iter()
        .map(|i| {
            (
                i.index_name().to_string(),
                adapter_keys(i.key_schema()),
                i.projection()
                    .and_then(|p| p.projection_type())
                    .map(|t| t.as_str().to_string())
                    .unwrap_or_default(),
            )
        })
        .collect();
    if indexes != expected_indexes {
        v.push(format!(
            "{name}: indexes {indexes:?} are not the adapter's {expected_indexes:?}"
        ));
    }
    let ttl = &p["TimeToLiveSpecification"];
    if ttl["AttributeName"].as_str() != Some(table::TTL) || ttl["Enabled"].as_bool() != Some(true) {
        v.push(format!(
            "{name}: TTL must be on, on attribute {}",
            table::TTL
        ));
    }
    if p["BillingMode"].as_str() != Some(table::BILLING.as_str()) {
        v.push(format!("{name}: billing must be on demand"));
    }
    if p["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"].as_bool() != Some(true) {
        v.push(format!("{name}: point-in-time recovery must be on"));
    }
    if p["DeletionProtectionEnabled"].is_null() {
        v.push(format!(
            "{name}: deletion protection must be set (a parameter)"
        ));
    }
    v
}

#[test]
fn template_keeps_every_rule() {
    let violations = check(&template());
    assert!(
        violations.is_empty(),
        "template.yaml breaks its rules:\n{}",
        violations.join("\n")
    );
}

/// Applies `change` to the template and expects a violation mentioning `expected`.
fn broken(change: impl FnOnce(&mut Value), expected: &str) {
    let mut t = template();
    change(&mut t);
    let violations = check(&t);
    assert!(
        violations.iter().any(|v| v.contains(expected)),
        "expected a violation about {expected:?}, got {violations:?}"
    );
}

fn res<'a>(t: &'a mut Value, name: &str) -> &'a mut Value {
    &mut t["Resources"][name]
}

#[test]
fn a_visibility_timeout_under_six_times_the_notify_timeout_is_reported() {
    broken(
        |t| res(t, "NotifyFunction")["Properties"]["Timeout"] = Value::from(60),
        "visibility timeout",
    );
}

#[test]
fn a_notice_queue_without_dead_letter_queue_is_reported() {
    broken(
        |t| {
            if let Some(m) = res(t, "NoticeQueue")["Properties"].as_mapping_mut() {
                m.remove("RedrivePolicy");
            }
        },
        "no dead-letter queue",
    );
}

#[test]
fn too_few_receives_before_dead_lettering_is_reported() {
    broken(
        |t| {
            res(t, "NoticeQueue")["Properties"]["RedrivePolicy"]["maxReceiveCount"] = Value::from(2)
        },
        "maxReceiveCount",
    );
}

#[test]
fn a_short_retention_is_reported() {
    broken(
        |t| res(t, "NoticeQueue")["Properties"]["MessageRetentionPeriod"] = Value::from(86_400),
        "long weekend",
    );
}

#[test]
fn an_sqs_source_without_batch_item_failures_is_reported() {
    broken(
        |t| {
            if let Some(m) =
                res(t, "NotifyFunction")["Properties"]["Events"]["Notices"]["Properties"]
                    .as_mapping_mut()
            {
                m.remove("FunctionResponseTypes");
            }
        },
        "batch item failures",
    );
}

#[test]
fn a_policy_that_may_scan_is_reported() {
    broken(
        |t| {
            res(t, "SweepRole")["Properties"]["Policies"][0]["PolicyDocument"]["Statement"][1]["Action"] =
                Value::from("dynamodb:Scan")
        },
        "may Scan",
    );
}

#[test]
fn a_wildcard_action_is_reported() {
    broken(
        |t| {
            res(t, "NotifyRole")["Properties"]["Policies"][0]["PolicyDocument"]["Statement"][1]["Action"] =
                Value::from("sqs:*")
        },
        "wildcard action",
    );
}

#[test]
fn a_binary_the_workspace_does_not_build_is_reported() {
    broken(
        |t| {
            res(t, "SweepFunction")["Metadata"]["BuildProperties"]["Binary"] =
                Value::from("sweeper")
        },
        "not built by the workspace",
    );
}

#[test]
fn a_table_that_differs_from_the_adapter_is_reported() {
    broken(
        |t| {
            res(t, "Table")["Properties"]["GlobalSecondaryIndexes"][0]["IndexName"] =
                Value::from("work")
        },
        "indexes",
    );
    broken(
        |t| {
            res(t, "Table")["Properties"]["TimeToLiveSpecification"]["AttributeName"] =
                Value::from("expires")
        },
        "TTL",
    );
}

#[test]
fn small_memory_and_a_public_token_route_are_reported() {
    broken(
        |t| t["Globals"]["Function"]["MemorySize"] = Value::from(256),
        "memory below 512",
    );
    broken(
        |t| {
            if let Some(m) =
                res(t, "ExchangeFunction")["Properties"]["Events"]["Token"]["Properties"]
                    .as_mapping_mut()
            {
                m.remove("Auth");
            }
        },
        "POST /token AWS_IAM",
    );
}

#[test]
fn a_secret_as_a_parameter_is_reported() {
    broken(
        |t| {
            t["Parameters"]["ClientSecret"] =
                serde_norway::from_str("{Type: String, NoEcho: true}").unwrap();
        },
        "looks like a secret",
    );
}

/// A role's statement by its Sid (inside `!If` too), to break.
fn statement<'a>(t: &'a mut Value, role: &str, sid: &str) -> &'a mut Value {
    let sid_of = |s: &Value| -> Option<String> {
        let s = match s {
            Value::Tagged(tg) => &tg.value[1],
            other => other,
        };
        s["Sid"].as_str().map(String::from)
    };
    let list = res(t, role)["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
        .as_sequence_mut()
        .expect("statements");
    let i = list
        .iter()
        .position(|s| sid_of(s).as_deref() == Some(sid))
        .unwrap_or_else(|| panic!("no statement {sid} in {role}"));
    match &mut list[i] {
        Value::Tagged(tg) => &mut tg.value[1],
        other => other,
    }
}

fn yaml(text: &str) -> Value {
    serde_norway::from_str(text).unwrap()
}

#[test]
fn the_old_ten_receives_of_180_s_are_reported_as_under_a_day() {
    broken(
        |t| {
            res(t, "NoticeQueue")["Properties"]["RedrivePolicy"]["maxReceiveCount"] =
                Value::from(10)
        },
        "under 24 h",
    );
}

#[test]
fn a_function_given_a_secret_its_code_does_not_use_is_reported() {
    broken(
        |t| {
            res(t, "NotifyFunction")["Properties"]["Environment"]["Variables"]["SPKEEPER_SECRETS_ARN"] =
                yaml(r#"!Join [",", [!Ref WebhookSecretArn, !Ref LinkKeySecretArn]]"#)
        },
        "NotifyFunction: given the secrets",
    );
    // One secret for everything, given to every function, as before the split.
    broken(
        |t| {
            for f in [
                "LaunchFunction",
                "ExchangeFunction",
                "SweepFunction",
                "NotifyFunction",
            ] {
                if let Some(m) =
                    res(t, f)["Properties"]["Environment"]["Variables"].as_mapping_mut()
                {
                    m.remove("SPKEEPER_SECRETS_ARN");
                }
            }
            t["Globals"]["Function"]["Environment"]["Variables"]["SPKEEPER_SECRETS_ARN"] =
                yaml("!Ref ClientSecretArn");
        },
        "SweepFunction: given the secrets",
    );
}

#[test]
fn a_function_not_given_a_secret_its_code_needs_is_reported() {
    broken(
        |t| {
            res(t, "LaunchFunction")["Properties"]["Environment"]["Variables"]["SPKEEPER_SECRETS_ARN"] =
                yaml(r#"!Join [",", [!Ref ClientSecretArn, !Ref LinkKeySecretArn]]"#)
        },
        "LaunchFunction: given the secrets",
    );
}

#[test]
fn a_role_that_may_read_another_functions_secret_is_reported() {
    broken(
        |t| {
            statement(t, "SweepRole", "Secrets")["Resource"] =
                yaml("[!Ref LinkKeySecretArn, !Ref ClientSecretArn]")
        },
        "SweepRole: may read the secrets",
    );
    broken(
        |t| statement(t, "NotifyRole", "Secrets")["Resource"] = Value::from("*"),
        "NotifyRole: may read the secrets",
    );
}

#[test]
fn a_key_usable_outside_secrets_manager_or_for_other_secrets_is_reported() {
    broken(
        |t| {
            if let Some(m) = statement(t, "NotifyRole", "SecretsKey")["Condition"]["StringEquals"]
                .as_mapping_mut()
            {
                m.remove("kms:ViaService");
            }
        },
        "NotifyRole: kms:Decrypt without kms:ViaService",
    );
    broken(
        |t| {
            statement(t, "SweepRole", "SecretsKey")["Condition"]["StringEquals"]["kms:EncryptionContext:SecretARN"] =
                yaml("[!Ref LinkKeySecretArn, !Ref TokenKeysSecretArn]")
        },
        "SweepRole: kms:Decrypt not limited by encryption context",
    );
}

#[test]
fn table_access_without_a_key_prefix_condition_is_reported() {
    broken(
        |t| {
            if let Some(m) = statement(t, "ExchangeRole", "PutItems").as_mapping_mut() {
                m.remove("Condition");
            }
        },
        "ExchangeRole: [\"dynamodb:PutItem\"] on any item of the table",
    );
}

#[test]
fn a_sweep_that_may_touch_token_items_is_reported() {
    broken(
        |t| {
            statement(t, "SweepRole", "UpdateNotices")["Condition"]["ForAllValues:StringLike"]["dynamodb:LeadingKeys"] =
                yaml(r#"["G#*", "M#*", "RT#*"]"#)
        },
        "SweepRole: dynamodb:UpdateItem on token items (RT#*)",
    );
}

#[test]
fn exchange_writing_refresh_tokens_is_reported() {
    broken(
        |t| {
            statement(t, "ExchangeRole", "PutItems")["Condition"]["ForAllValues:StringLike"]["dynamodb:LeadingKeys"] =
                yaml(r#"["AT#*", "L#*", "RT#*"]"#)
        },
        "ExchangeRole: dynamodb:PutItem writes refresh tokens",
    );
}

#[test]
fn deleting_anything_but_leases_is_reported() {
    broken(
        |t| {
            statement(t, "LaunchRole", "ReleaseLeases")["Condition"]["ForAllValues:StringLike"]["dynamodb:LeadingKeys"] =
                yaml(r#"["L#*", "G#*"]"#)
        },
        "LaunchRole: may delete items other than leases",
    );
    broken(
        |t| {
            statement(t, "LaunchRole", "ReleaseLeases")["Action"] =
                Value::from("dynamodb:BatchWriteItem")
        },
        "not an action the adapter uses",
    );
}

#[test]
fn an_api_without_access_logs_or_the_iam_caller_in_them_is_reported() {
    broken(
        |t| {
            if let Some(m) = res(t, "Api")["Properties"].as_mapping_mut() {
                m.remove("AccessLogSettings");
            }
        },
        "Api: no access logs",
    );
    broken(
        |t| {
            let p = &mut res(t, "Api")["Properties"]["AccessLogSettings"]["Format"];
            let without = p
                .as_str()
                .unwrap_or("")
                .replace("$context.identity.userArn", "-");
            *p = Value::from(without);
        },
        "lacks $context.identity.userArn",
    );
}

#[test]
fn an_api_without_default_route_throttling_is_reported() {
    broken(
        |t| {
            if let Some(m) = res(t, "Api")["Properties"].as_mapping_mut() {
                m.remove("DefaultRouteSettings");
            }
        },
        "DefaultRouteSettings.ThrottlingRateLimit",
    );
}

#[test]
fn exchange_without_reserved_concurrency_is_reported() {
    broken(
        |t| {
            if let Some(m) = res(t, "ExchangeFunction")["Properties"].as_mapping_mut() {
                m.remove("ReservedConcurrentExecutions");
            }
        },
        "ExchangeFunction: ReservedConcurrentExecutions",
    );
}

#[test]
fn the_template_trusts_the_same_token_services_as_the_code() {
    let t = iam::template();
    assert_eq!(
        t["Parameters"]["StsHosts"]["Default"].as_str(),
        Some(spkeeper::core::hosts::DEFAULT_STS_HOSTS),
        "login.microsoftonline.de (Microsoft Cloud Deutschland) closed in 2021"
    );
}
