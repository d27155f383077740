//! The rules `template.yaml` must keep that cfn-lint cannot check: reliability (visibility
//! timeout, dead-letter queues, partial batch failures), least privilege (no Scan, no
//! wildcard actions), and agreement with the code (each function's binary exists; the table
//! is the DynamoDB adapter's). Each rule also has a test that breaks it and expects the
//! checker to say so.

use std::collections::BTreeSet;
use std::path::Path;

use serde_norway::Value;

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn template() -> Value {
    let text = std::fs::read_to_string(root().join("template.yaml")).expect("template.yaml");
    serde_norway::from_str(&text).expect("template.yaml is YAML")
}

/// `!Ref X` / `!GetAtt X.Y` → "X"; plain strings as they are.
fn target(v: &Value) -> Option<String> {
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
            if num(&redrive["maxReceiveCount"]).unwrap_or(0) < 5 {
                v.push(format!("{qname}: maxReceiveCount must be at least 5"));
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
    for (name, role) in of_type(t, "AWS::IAM::Role") {
        for policy in role["Properties"]["Policies"]
            .as_sequence()
            .into_iter()
            .flatten()
        {
            let statements = policy["PolicyDocument"]["Statement"]
                .as_sequence()
                .cloned()
                .unwrap_or_default();
            for s in statements {
                // `!If [cond, statement, AWS::NoValue]`
                let s = match &s {
                    Value::Tagged(tagged) => tagged
                        .value
                        .as_sequence()
                        .and_then(|x| x.get(1))
                        .cloned()
                        .unwrap_or(Value::Null),
                    other => other.clone(),
                };
                let actions: Vec<String> = match &s["Action"] {
                    Value::String(a) => vec![a.clone()],
                    Value::Sequence(a) => a
                        .iter()
                        .filter_map(|x| x.as_str().map(String::from))
                        .collect(),
                    _ => vec![],
                };
                for a in actions {
                    if a.contains('*') {
                        v.push(format!("{name}: wildcard action {a}"));
                    }
                    if a.eq_ignore_ascii_case("dynamodb:Scan") {
                        v.push(format!("{name}: may Scan"));
                    }
                }
            }
        }
    }

    // Secrets come from Secrets Manager, never as parameters or plain environment.
    for (p, _) in t["Parameters"].as_mapping().into_iter().flatten() {
        let p = p.as_str().unwrap_or("");
        if p.contains("Secret")
            && !matches!(
                p,
                "SecretsArn" | "SecretsKmsKeyArn" | "ClientSecretExpiresAt"
            )
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
