//! The rules `template.yaml` must keep that cfn-lint cannot check: reliability (visibility
//! timeout, dead-letter queues, partial batch failures, a retry schedule of more than a day),
//! least privilege (each function only its own secrets, keys used only through Secrets
//! Manager, table actions limited by key prefix, no Scan, no wildcard actions), limits
//! (access logs, throttling, reserved concurrency), and agreement with the code (each
//! function's binary exists; the table is the DynamoDB adapter's; each function is given
//! exactly the secrets its code needs; the alarms count the lines the code logs).
//!
//! A deployment serves ACS launches, Entra sign-ins or both, with or without the Entra
//! keep-alive: the rules that depend on it are checked on the template as CloudFormation
//! would deploy it for each kind of deployment (conditions decided, `AWS::NoValue` gone), with
//! each function's environment evaluated and read by the program's own configuration code
//! (`Settings`, `Needs::of`). The template's `Rules` are checked against the program too: they
//! refuse a deployment exactly when a function would not start with it (or a secret would
//! be deployed that no function reads). Each rule also has a test that breaks it and expects
//! the checker to say so.

use std::collections::BTreeSet;
use std::path::Path;

use std::collections::BTreeMap;

use serde_norway::Value;
use spkeeper::aws::sqs::retry_delay;
use spkeeper::config::{AssertionAlg, Needs, Part, Program, RenewVia, Settings};
use spkeeper_e2e::iam::{
    self, actions, filter_matches, leading_keys, part_of_parameter, readable_secrets, refs,
    statements, table_grants, target, template,
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
            // Lambda retries a failed asynchronous run twice by default: three sweeps for one
            // tick, each meeting the same outage. The next tick is the retry.
            let function = target(&tgt["Arn"]).unwrap_or_default();
            let retries = &t["Resources"][function.as_str()]["Properties"]["EventInvokeConfig"]["MaximumRetryAttempts"];
            if num(retries) != Some(0) {
                v.push(format!(
                    "{function}: a failed sweep must not be retried by Lambda (EventInvokeConfig MaximumRetryAttempts 0)"
                ));
            }
            // It stops visiting 45 s before its timeout (the relay's reserve and a margin).
            let timeout = num(&t["Resources"][function.as_str()]["Properties"]["Timeout"]);
            if timeout.is_none_or(|s| s < 120) {
                v.push(format!(
                    "{function}: the sweep needs a timeout of at least 120 s, to visit grants before the last 45 s"
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
    v.extend(check_limits(t));
    // Each table statement names the same table or index whichever table the stack uses.
    for (role, _) in of_type(t, "AWS::IAM::Role") {
        for s in iam::statements(t, &role) {
            for r in iam::resources(&s) {
                let n = iam::resource_name(&r);
                if n.contains(" | ") {
                    v.push(format!(
                        "{role}: a table statement names {n} (own table | ExistingTableName)"
                    ));
                }
            }
        }
    }
    // The rules over every combination of kinds: check_rules (its own tests; it takes a while).
    for d in deployments() {
        v.extend(
            check_deployment(t, &d.params())
                .into_iter()
                .map(|x| format!("{}: {x}", d.name)),
        );
    }

    // Secrets come from Secrets Manager, never as parameters or plain environment.
    for (p, _) in t["Parameters"].as_mapping().into_iter().flatten() {
        let p = p.as_str().unwrap_or("");
        if p.contains("Secret")
            && part_of_parameter(p).is_none()
            && !matches!(
                p,
                "SecretsKmsKeyArn" | "ClientSecretExpiresAt" | "EntraSecretExpiresAt"
            )
        {
            v.push(format!("parameter {p} looks like a secret"));
        }
    }
    let env = &t["Globals"]["Function"]["Environment"]["Variables"];
    for secret in [
        "SPKEEPER_CLIENT_SECRET",
        "SPKEEPER_CLIENT_SECRET_SECONDARY",
        "SPKEEPER_API_KEY",
        "SPKEEPER_WEBHOOK_SECRET",
        "SPKEEPER_ENTRA_CLIENT_SECRET",
        "SPKEEPER_ENTRA_CERTIFICATE",
        "SPKEEPER_ENTRA_PRIVATE_KEY",
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
        "EntraSecretExpired",
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
    // Which logged events each alarm counts depends on the deployment: check_alarms.
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

// --- Deployments ----------------------------------------------------------------------------

const ACS_CLIENT_ID: &str = "6f1a8d2c-3b4e-4f5a-9b8c-7d6e5f4a3b2c";
const ENTRA_CLIENT_ID: &str = "0b6a7f2e-9c41-4f1e-a1d2-5c3b2a1f0e9d";
const TENANT: &str = "040f2415-e6e3-4480-96ce-26ef73275f73";
const KMS_KEY: &str = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab";

/// A secret's ARN as the deployer gives it (with Secrets Manager's six-character suffix).
fn arn(name: &str) -> String {
    format!("arn:aws:secretsmanager:us-east-1:123456789012:secret:spkeeper/{name}-AbCdEf")
}

/// One kind of deployment: the parameters a deployer sets (the rest keep their defaults).
struct Deployment {
    name: &'static str,
    given: Vec<(&'static str, String)>,
}

impl Deployment {
    fn params(&self) -> Vec<(&str, &str)> {
        self.given.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }
}

/// What every deployment sets.
fn base() -> Vec<(&'static str, String)> {
    vec![
        ("PublicUrl", "https://addin.example.com".into()),
        ("AllowedSharePointHosts", "*.sharepoint.com".into()),
        ("TokenKeysSecretArn", arn("token-keys")),
        ("LinkKeySecretArn", arn("link-key")),
        ("WebhookSecretArn", arn("webhook-secret")),
        ("WebhookUrl", "https://hooks.example.com/spkeeper".into()),
        ("SecretsKmsKeyArn", KMS_KEY.into()),
    ]
}

fn acs() -> Vec<(&'static str, String)> {
    vec![
        ("ClientId", ACS_CLIENT_ID.into()),
        ("ClientSecretArn", arn("client-secret")),
        ("ClientSecretExpiresAt", "2027-03-01T00:00:00Z".into()),
    ]
}

fn entra() -> Vec<(&'static str, String)> {
    vec![
        ("EntraClientId", ENTRA_CLIENT_ID.into()),
        ("EntraCredentialSecretArn", arn("entra-credential")),
    ]
}

/// ACS only, Entra only (with every Entra parameter set away from its default), both kinds
/// migrating (without a customer KMS key), and Entra without the keep-alive.
fn deployments() -> Vec<Deployment> {
    let with = |parts: &[Vec<(&'static str, String)>]| {
        let mut given = base();
        for p in parts {
            given.extend(p.iter().cloned());
        }
        given
    };
    vec![
        Deployment {
            name: "ACS only",
            given: with(&[acs()]),
        },
        Deployment {
            name: "Entra only",
            given: with(&[
                entra(),
                vec![
                    ("EntraTenant", TENANT.into()),
                    ("EntraAuthority", "https://login.microsoftonline.us".into()),
                    (
                        "EntraScopes",
                        "https://contoso.sharepoint.com/AllSites.Write".into(),
                    ),
                    ("EntraKeepAliveDays", "21".into()),
                    ("EntraSecretExpiresAt", "2027-06-01T00:00:00Z".into()),
                    ("EntraAssertionAlg", "RS256".into()),
                ],
            ]),
        },
        Deployment {
            name: "ACS and Entra, migrating",
            given: with(&[
                acs(),
                entra(),
                vec![
                    ("RenewVia", "entra".into()),
                    ("SecretsKmsKeyArn", String::new()),
                ],
            ]),
        },
        Deployment {
            name: "Entra without keep-alive",
            given: with(&[entra(), vec![("EntraKeepAliveDays", "0".into())]]),
        },
        Deployment {
            name: "ACS and Entra in a VPC",
            given: with(&[
                acs(),
                entra(),
                vec![
                    ("VpcSubnetIds", SUBNETS.into()),
                    ("VpcSecurityGroupIds", SECURITY_GROUPS.into()),
                ],
            ]),
        },
        Deployment {
            name: "ACS and Entra on a restored table",
            given: with(&[
                acs(),
                entra(),
                vec![("ExistingTableName", RESTORED_TABLE.into())],
            ]),
        },
    ]
}

/// An operator's subnets and security group (VPC parameters).
const SUBNETS: &str = "subnet-0a1b2c3d,subnet-4e5f6a7b";
const SECURITY_GROUPS: &str = "sg-0123abcd";

/// The functions that call SharePoint (realm discovery, the user lookup) or the webhook, and
/// so run in the operator's subnets when VpcSubnetIds is set.
fn reaches_on_premises(program: Program) -> bool {
    matches!(
        program,
        Program::Launch | Program::Exchange | Program::Notify
    )
}

/// The Lambda network-interface actions a function in a VPC needs from its role.
const ENI_ACTIONS: [&str; 6] = [
    "ec2:CreateNetworkInterface",
    "ec2:DescribeNetworkInterfaces",
    "ec2:DescribeSubnets",
    "ec2:DeleteNetworkInterface",
    "ec2:AssignPrivateIpAddresses",
    "ec2:UnassignPrivateIpAddresses",
];

/// With VpcSubnetIds, exactly the functions that call SharePoint or the webhook run in the
/// given subnets with the given security groups, and exactly their roles may manage network
/// interfaces; without it, no function is in a VPC and no role has EC2 actions.
fn check_vpc(resolved: &Value, params: &BTreeMap<String, String>) -> Vec<String> {
    let mut v = Vec::new();
    let in_vpc = params.get("VpcSubnetIds").is_some_and(|s| !s.is_empty());
    for (name, f) in of_type(resolved, "AWS::Serverless::Function") {
        let Some(program) = program_of(f) else {
            continue;
        };
        let want = in_vpc && reaches_on_premises(program);
        let config = &f["Properties"]["VpcConfig"];
        if want {
            let subnets = iam::refs(&config["SubnetIds"]);
            let groups = iam::refs(&config["SecurityGroupIds"]);
            if !subnets.contains("VpcSubnetIds") || !groups.contains("VpcSecurityGroupIds") {
                v.push(format!(
                    "{name}: not in the VPC the parameters give (VpcConfig {config:?})"
                ));
            }
        } else if !config.is_null() {
            v.push(format!("{name}: in a VPC it has no need of"));
        }
        let Some(role) = iam::role_of(resolved, &name) else {
            continue;
        };
        let actions: BTreeSet<String> = iam::statements(resolved, &role)
            .iter()
            .flat_map(iam::actions)
            .filter(|a| a.starts_with("ec2:"))
            .collect();
        let needed: BTreeSet<String> = if want {
            ENI_ACTIONS.iter().map(|a| a.to_string()).collect()
        } else {
            BTreeSet::new()
        };
        if actions != needed {
            v.push(format!(
                "{role}: EC2 actions {actions:?}, where the VPC setting needs {needed:?}"
            ));
        }
    }
    v
}

/// The table a point-in-time restore made, in the deployment pointed at it.
const RESTORED_TABLE: &str = "spkeeper-restored-2026-11-26";

/// The table the functions use is the stack's own, or the one `ExistingTableName` names (a
/// restore): every function's `SPKEEPER_TABLE`, every table statement of every role and the
/// `TableName` output name that one, and the stack creates no table beside a named one.
fn check_table_choice(resolved: &Value, params: &BTreeMap<String, String>) -> Vec<String> {
    let mut v = Vec::new();
    let created = !of_type(resolved, "AWS::DynamoDB::Table").is_empty();
    let (name, arn) = match params.get("ExistingTableName").filter(|n| !n.is_empty()) {
        Some(n) => {
            if created {
                v.push(format!("creates a table beside {n}"));
            }
            (
                n.clone(),
                format!("arn:aws:dynamodb:us-east-1:123456789012:table/{n}"),
            )
        }
        None => {
            if !created {
                v.push("creates no table and names none".into());
            }
            (resource_value("Table"), resource_value("Table.Arn"))
        }
    };
    for (f, _) in of_type(resolved, "AWS::Serverless::Function") {
        let env = iam::function_env(resolved, &f, params, &resource_value);
        if env.get("SPKEEPER_TABLE") != Some(&name) {
            v.push(format!(
                "{f}: SPKEEPER_TABLE is {:?}, not {name}",
                env.get("SPKEEPER_TABLE")
            ));
        }
    }
    for (role, _) in of_type(resolved, "AWS::IAM::Role") {
        for s in iam::statements(resolved, &role) {
            if !iam::actions(&s).iter().any(|a| a.starts_with("dynamodb:")) {
                continue;
            }
            for r in iam::resources(&s) {
                match iam::evaluate(&r, params, &resource_value) {
                    Some(a) if a == arn || a.starts_with(&format!("{arn}/index/")) => {}
                    other => v.push(format!(
                        "{role}: a table statement names {other:?}, not {arn}"
                    )),
                }
            }
        }
    }
    let output = iam::evaluate(
        &resolved["Outputs"]["TableName"]["Value"],
        params,
        &resource_value,
    );
    if output.as_ref() != Some(&name) {
        v.push(format!("output TableName is {output:?}, not {name}"));
    }
    v
}

/// What a function resource's `!Ref`/`!GetAtt` stands for in the tests: a recognisable name.
fn resource_value(name: &str) -> String {
    format!("resource:{name}")
}

/// What the deployment serves, as the program reads it.
#[derive(Debug, Clone, Copy)]
struct Kinds {
    acs: bool,
    entra: bool,
    keepalive: bool,
}

impl Kinds {
    fn of(settings: &Settings) -> Kinds {
        Kinds {
            acs: settings.client_id.is_some(),
            entra: settings.entra.is_some(),
            keepalive: settings.entra.as_ref().is_some_and(|e| e.keepalive()),
        }
    }
}

/// A function as a deployment configures it: its resource name, its program, its settings as
/// the program reads them from its environment (or why it would not start), the environment.
type Configured = (
    String,
    Program,
    Result<Settings, String>,
    BTreeMap<String, String>,
);

/// Each function as the deployment configures it: its settings as the program reads them
/// from the environment the template gives it, or why it would not start.
fn function_settings(resolved: &Value, params: &BTreeMap<String, String>) -> Vec<Configured> {
    of_type(resolved, "AWS::Serverless::Function")
        .into_iter()
        .filter_map(|(name, f)| {
            let program = program_of(f)?;
            let env = iam::function_env(resolved, &name, params, &resource_value);
            let settings = Settings::from_source(&env).map_err(|e| e.to_string());
            Some((name, program, settings, env))
        })
        .collect()
}

/// The rules for one deployment: the template resolved for its parameters.
fn check_deployment(t: &Value, given: &[(&str, &str)]) -> Vec<String> {
    let mut v = Vec::new();
    let params = iam::parameter_values(t, given);
    match iam::refused_by_rules(t, &params) {
        Ok(refused) if refused.is_empty() => {}
        Ok(refused) => v.push(format!("the template's rules refuse it: {refused:?}")),
        Err(e) => v.push(format!("the template's rules cannot be read: {e}")),
    }
    let resolved = match iam::resolve(t, &params) {
        Ok(r) => r,
        Err(e) => return vec![format!("the template cannot be resolved: {e}")],
    };
    v.extend(check_table_choice(&resolved, &params));
    v.extend(check_vpc(&resolved, &params));
    let functions = function_settings(&resolved, &params);
    let mut kinds = None;
    for (name, program, settings, env) in &functions {
        let settings = match settings {
            Ok(s) => s,
            Err(e) => {
                v.push(format!("{name}: would not start: {e}"));
                continue;
            }
        };
        kinds.get_or_insert(Kinds::of(settings));
        v.extend(check_wiring(name, settings, &params));
        v.extend(check_secrets(
            &resolved, &params, name, *program, settings, env,
        ));
    }
    if let Some(kinds) = kinds {
        v.extend(check_table_access(&resolved, kinds));
        v.extend(check_alarms(&resolved, kinds));
        v.extend(check_silence(&resolved, kinds));
    }
    v
}

/// Would every function start with these parameters? (Its settings read, and every secret
/// part it needs among the secrets it is given.) Else why not.
fn starts(t: &Value, params: &BTreeMap<String, String>) -> Result<(), String> {
    let resolved = iam::resolve(t, params)?;
    for (name, program, settings, env) in function_settings(&resolved, params) {
        let settings = settings.map_err(|e| format!("{name}: {e}"))?;
        let given: BTreeSet<Part> = env
            .get("SPKEEPER_SECRETS_ARN")
            .map(String::as_str)
            .unwrap_or("")
            .split(',')
            .filter(|a| !a.trim().is_empty())
            .filter_map(|a| {
                params
                    .iter()
                    .find(|(_, v)| v.as_str() == a.trim())
                    .and_then(|(p, _)| part_of_parameter(p))
            })
            .collect();
        if let Some(missing) = Needs::of(program, &settings)
            .used()
            .into_iter()
            .find(|p| !given.contains(p))
        {
            return Err(format!("{name}: needs {missing:?}, which it is not given"));
        }
    }
    Ok(())
}

/// The template's `Rules` against the program, over every combination of the parameters that
/// choose the kinds (each client id and its secret set or not, renew links via SharePoint or
/// Entra, keep-alive on or off): they refuse a deployment exactly when a function would not
/// start with it, or when it would deploy a client secret for a kind it does not serve; and
/// every deployment they accept keeps every rule above.
fn check_rules(t: &Value) -> Vec<String> {
    let mut v = Vec::new();
    let on_off = |name: &'static str, value: String| [(name, String::new()), (name, value)];
    for client in on_off("ClientId", ACS_CLIENT_ID.into()) {
        for client_secret in on_off("ClientSecretArn", arn("client-secret")) {
            for entra in on_off("EntraClientId", ENTRA_CLIENT_ID.into()) {
                for entra_secret in on_off("EntraCredentialSecretArn", arn("entra-credential")) {
                    for renew in ["sharepoint", "entra"] {
                        for keepalive in ["30", "0"] {
                            let mut given = base();
                            given.extend([
                                client.clone(),
                                client_secret.clone(),
                                entra.clone(),
                                entra_secret.clone(),
                                ("RenewVia", renew.into()),
                                ("EntraKeepAliveDays", keepalive.into()),
                            ]);
                            let given: Vec<(&str, &str)> =
                                given.iter().map(|(k, x)| (*k, x.as_str())).collect();
                            let params = iam::parameter_values(t, &given);
                            let name = format!(
                                "ClientId {:?}, ClientSecretArn {:?}, EntraClientId {:?}, EntraCredentialSecretArn {:?}, RenewVia {renew}, EntraKeepAliveDays {keepalive}",
                                !client.1.is_empty(),
                                !client_secret.1.is_empty(),
                                !entra.1.is_empty(),
                                !entra_secret.1.is_empty(),
                            );
                            let refused = match iam::refused_by_rules(t, &params) {
                                Ok(r) => r,
                                Err(e) => return vec![format!("the rules cannot be read: {e}")],
                            };
                            let dangling = (client.1.is_empty() && !client_secret.1.is_empty())
                                || (entra.1.is_empty() && !entra_secret.1.is_empty());
                            match (refused.is_empty(), starts(t, &params)) {
                                (true, Ok(())) if dangling => v.push(format!(
                                    "the rules accept a client secret for a kind the deployment does not serve ({name})"
                                )),
                                (true, Ok(())) => v.extend(
                                    check_deployment(t, &given)
                                        .into_iter()
                                        .map(|x| format!("{name}: {x}")),
                                ),
                                (true, Err(why)) => v.push(format!(
                                    "the rules accept a deployment a function would not start with ({name}): {why}"
                                )),
                                (false, Ok(())) if !dangling => v.push(format!(
                                    "the rules refuse a deployment every function would start with ({name}): {refused:?}"
                                )),
                                (false, _) => {}
                            }
                        }
                    }
                }
            }
        }
    }
    v
}

/// Every `SPKEEPER_*` setting the parameters control reaches the program as set.
fn check_wiring(name: &str, s: &Settings, p: &BTreeMap<String, String>) -> Vec<String> {
    let mut v = Vec::new();
    let param = |k: &str| p.get(k).cloned().unwrap_or_default();
    let opt = |k: &str| Some(param(k)).filter(|x| !x.is_empty());
    let time = |k: &str| {
        opt(k).and_then(|x| {
            chrono::DateTime::parse_from_rfc3339(&x)
                .ok()
                .map(|t| t.with_timezone(&chrono::Utc))
        })
    };
    let mut expect = |var: &str, ok: bool| {
        if !ok {
            v.push(format!("{name}: {var} does not carry its parameter"));
        }
    };
    expect(
        "SPKEEPER_CLIENT_ID",
        s.client_id == opt("ClientId").map(|c| c.to_ascii_lowercase()),
    );
    expect(
        "SPKEEPER_CLIENT_SECRET_EXPIRES_AT",
        s.client_secret_expires_at == time("ClientSecretExpiresAt"),
    );
    expect(
        "SPKEEPER_ENTRA_CLIENT_ID",
        s.entra.as_ref().map(|e| e.client_id.clone())
            == opt("EntraClientId").map(|c| c.to_ascii_lowercase()),
    );
    expect(
        "SPKEEPER_RENEW_VIA",
        s.renew_via
            == match param("RenewVia").as_str() {
                "entra" => RenewVia::Entra,
                _ => RenewVia::SharePoint,
            },
    );
    if let Some(e) = &s.entra {
        expect(
            "SPKEEPER_ENTRA_TENANT",
            e.tenant == param("EntraTenant").to_ascii_lowercase(),
        );
        expect(
            "SPKEEPER_ENTRA_AUTHORITY",
            e.authority == param("EntraAuthority").trim_end_matches('/'),
        );
        expect(
            "SPKEEPER_ENTRA_SCOPES",
            e.scopes
                == opt("EntraScopes").map(|x| {
                    x.split([' ', ','])
                        .filter(|s| !s.is_empty())
                        .map(String::from)
                        .collect()
                }),
        );
        expect(
            "SPKEEPER_ENTRA_KEEPALIVE_DAYS",
            e.keepalive_days.to_string() == param("EntraKeepAliveDays"),
        );
        expect(
            "SPKEEPER_ENTRA_SECRET_EXPIRES_AT",
            e.secret_expires_at == time("EntraSecretExpiresAt"),
        );
        expect(
            "SPKEEPER_ENTRA_ASSERTION_ALG",
            e.assertion_alg
                == match param("EntraAssertionAlg").as_str() {
                    "RS256" => AssertionAlg::Rs256,
                    _ => AssertionAlg::Ps256,
                },
        );
    }
    v
}

/// Each function is given exactly the secrets of the parts its code uses (`Needs::of`, from
/// the settings it reads), its role may read exactly those, and decrypt them (with a customer
/// key) only through Secrets Manager and only for them.
fn check_secrets(
    t: &Value,
    params: &BTreeMap<String, String>,
    name: &str,
    program: Program,
    settings: &Settings,
    env: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut v = Vec::new();
    let needs: BTreeSet<Part> = Needs::of(program, settings).used().into_iter().collect();
    let list = env.get("SPKEEPER_SECRETS_ARN").cloned().unwrap_or_default();
    let mut given_params = BTreeSet::new();
    for a in list.split(',').map(str::trim) {
        match params
            .iter()
            .find(|(p, value)| value.as_str() == a && part_of_parameter(p).is_some())
        {
            Some((p, _)) if !a.is_empty() => {
                given_params.insert(p.clone());
            }
            _ => v.push(format!(
                "{name}: SPKEEPER_SECRETS_ARN names {a:?}, not the ARN of a secret parameter (it is {list:?})"
            )),
        }
    }
    let given: BTreeSet<Part> = given_params
        .iter()
        .filter_map(|p| part_of_parameter(p))
        .collect();
    if given != needs {
        v.push(format!(
            "{name}: given the secrets of {given:?}, but its code uses {needs:?}"
        ));
    }
    let Some(role) = iam::role_of(t, name) else {
        return v;
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
    v
}

/// The item families of the table (`shared/src/aws/table.rs`): grants, refresh tokens,
/// access tokens, leases, operator markers, the per-host realm cache and items used once
/// (hand-off tickets, Entra sign-in states).
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

/// What a function's code does with the table in a deployment of these kinds.
struct Uses {
    /// Redeems refresh tokens: reads them, caches access tokens.
    redeems: bool,
    /// Writes refresh tokens (always whole: PutItem, in the grant's transaction).
    writes_refresh_tokens: bool,
    /// Takes (and releases) leases: redeems under single flight.
    leases: bool,
    /// Marks items used once (T#): hand-off tickets, Entra sign-in states.
    uses_once: bool,
    /// The indexes it queries.
    indexes: &'static [&'static str],
}

fn uses(program: Program, k: Kinds) -> Uses {
    match program {
        Program::Launch => Uses {
            redeems: true,
            writes_refresh_tokens: true,
            // Only an ACS launch exchanges at once; a sign-in's code redemption takes no lease.
            leases: k.acs,
            uses_once: k.entra,
            indexes: if k.entra { &["by_entra_user"] } else { &[] },
        },
        Program::Exchange => Uses {
            redeems: true,
            // Entra rotates the refresh token on every redemption; ACS never does.
            writes_refresh_tokens: k.entra,
            leases: true,
            uses_once: true,
            indexes: &["by_email", "by_login"],
        },
        Program::Sweep => Uses {
            redeems: k.keepalive,
            writes_refresh_tokens: k.keepalive,
            leases: k.keepalive,
            uses_once: false,
            indexes: &["due", "outbox"],
        },
        Program::Notify | Program::Cli => Uses {
            redeems: false,
            writes_refresh_tokens: false,
            leases: false,
            uses_once: false,
            indexes: &[],
        },
    }
}

/// Table access in a deployment: every statement on items is limited by partition-key
/// prefix to known item families; queries only on the indexes the code uses; only functions
/// that redeem refresh tokens touch token items (the sweep, with the keep-alive, only to read
/// a refresh token and store what a redemption gives, never to read a cached access token),
/// only those that store them write refresh tokens (whole, with PutItem), only those that
/// redeem under single flight take leases; only leases are ever deleted, but for exchange
/// erasing a grant's own items; notify has no table access.
fn check_table_access(t: &Value, kinds: Kinds) -> Vec<String> {
    let mut v = Vec::new();
    for (name, f) in of_type(t, "AWS::Serverless::Function") {
        let (Some(program), Some(role)) = (program_of(f), iam::role_of(t, &name)) else {
            continue;
        };
        let u = uses(program, kinds);
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
                    for r in iam::resources(&s) {
                        let r = iam::resource_name(&r);
                        if let Some(index) = r.strip_prefix("Table/index/")
                            && !u.indexes.contains(&index)
                        {
                            v.push(format!(
                                "{role}: Query on index {index}, which its code does not use in this deployment"
                            ));
                        }
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
                let any = p == "*";
                if !any && !KEY_PATTERNS.contains(&p.as_str()) {
                    v.push(format!("{role}: {action} on unknown key prefix {p}"));
                }
                let erasing = program == Program::Exchange && action == "dynamodb:DeleteItem";
                let token_item = any || p == "RT#*" || p == "AT#*";
                let keep_alive_use = matches!(
                    (action.as_str(), p.as_str()),
                    ("dynamodb:GetItem", "RT#*")
                        | ("dynamodb:PutItem", "RT#*")
                        | ("dynamodb:PutItem", "AT#*")
                );
                let token_ok = match program {
                    Program::Launch | Program::Exchange => true,
                    Program::Sweep => u.redeems && keep_alive_use,
                    _ => false,
                };
                if token_item && !token_ok {
                    v.push(format!("{role}: {action} on token items ({p})"));
                }
                let writes_rt = (any || p == "RT#*") && action != "dynamodb:GetItem";
                if writes_rt
                    && !erasing
                    && !(u.writes_refresh_tokens && action == "dynamodb:PutItem")
                {
                    v.push(format!("{role}: {action} writes refresh tokens ({p})"));
                }
                let lease = (any || p == "L#*")
                    && matches!(action.as_str(), "dynamodb:PutItem" | "dynamodb:DeleteItem");
                if lease && !u.leases {
                    v.push(format!(
                        "{role}: {action} on leases ({p}), but its code takes none in this deployment"
                    ));
                }
                if (any || p == "T#*") && action == "dynamodb:PutItem" && !u.uses_once {
                    v.push(format!(
                        "{role}: {action} on items used once ({p}), but its code marks none in this deployment"
                    ));
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

/// A log line as the functions write it in Lambda (`tracing-subscriber`'s JSON: the event's
/// fields under `fields`; `tests/iam_operations.rs` checks the filters against real ones).
fn logged(level: &str, fields: serde_json::Value) -> serde_json::Value {
    serde_json::json!({"level": level, "fields": fields})
}

fn sts_rejected(aadsts: Option<u32>) -> serde_json::Value {
    let mut f = serde_json::json!({
        "message": "Entra refused the app's credentials or request",
        "grant_id": "0123456789abcdef0123456789abcdef",
        "event": "sts_rejected_client",
        "outcome": "sts_rejected_client",
        "error": "invalid_client",
        "elapsed_ms": 12,
    });
    if let Some(code) = aadsts {
        f["aadsts"] = serde_json::json!(code);
    }
    logged("ERROR", f)
}

fn secret_expiring() -> serde_json::Value {
    logged(
        "WARN",
        serde_json::json!({"message": "a client secret expires soon: rotate it",
            "event": "client_secret_expiring", "client_id": ENTRA_CLIENT_ID, "days_left": 12,
            "expires_at": "2027-06-01T00:00:00Z"}),
    )
}

/// The line the relay logs for a notice SQS refused as it is (shared/src/aws/sqs.rs).
fn notice_refused() -> serde_json::Value {
    logged(
        "ERROR",
        serde_json::json!({"message": "SQS refused a notice as it is; it stays queued, and an operator must look",
            "event": "notice_refused", "notice_id": "ntc_0123456789abcdef", "code": "InvalidMessageContents"}),
    )
}

/// Every alarm: its name, the metrics it reads (its own, or those of its metric math) and it.
fn alarms(t: &Value) -> Vec<(String, BTreeSet<String>, &Value)> {
    of_type(t, "AWS::CloudWatch::Alarm")
        .into_iter()
        .map(|(name, a)| {
            let p = &a["Properties"];
            let mut metrics: BTreeSet<String> = p["MetricName"]
                .as_str()
                .map(String::from)
                .into_iter()
                .collect();
            for m in p["Metrics"].as_sequence().into_iter().flatten() {
                if let Some(n) = m["MetricStat"]["Metric"]["MetricName"].as_str() {
                    metrics.insert(n.to_string());
                }
            }
            (name, metrics, a)
        })
        .collect()
}

/// The metrics that count `line` in `group`'s log (through the metric filters).
fn counting(t: &Value, group: &str, line: &serde_json::Value) -> BTreeSet<String> {
    of_type(t, "AWS::Logs::MetricFilter")
        .iter()
        .filter(|(_, f)| target(&f["Properties"]["LogGroupName"]).as_deref() == Some(group))
        .filter(|(_, f)| {
            f["Properties"]["FilterPattern"]
                .as_str()
                .is_some_and(|p| filter_matches(p, line).unwrap_or(false))
        })
        .flat_map(|(_, f)| {
            f["Properties"]["MetricTransformations"]
                .as_sequence()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|m| m["MetricName"].as_str().map(String::from))
        .collect()
}

/// The metrics that count `line` in `group`'s log, each with an alarm on it (that every alarm
/// notifies the topic is a rule of its own).
fn alarmed_metrics(t: &Value, group: &str, line: &serde_json::Value) -> BTreeSet<String> {
    let alarmed: BTreeSet<String> = alarms(t).into_iter().flat_map(|(_, m, _)| m).collect();
    counting(t, group, line)
        .into_iter()
        .filter(|m| alarmed.contains(m))
        .collect()
}

/// Is there one alarm that reads both a metric counting `failed` and one counting `worked`
/// (in `group`)? An alarm on failures alone would fire on one bad request among good ones;
/// silence is failures and nothing else.
fn weighed_together(
    t: &Value,
    group: &str,
    failed: &serde_json::Value,
    worked: &serde_json::Value,
) -> bool {
    let (f, w) = (counting(t, group, failed), counting(t, group, worked));
    alarms(t)
        .iter()
        .any(|(_, m, _)| m.intersection(&f).next().is_some() && m.intersection(&w).next().is_some())
}

fn event_line(event: &str, fields: serde_json::Value) -> serde_json::Value {
    let mut f = fields;
    f["event"] = serde_json::json!(event);
    logged("INFO", f)
}

fn outcome_line(outcome: &str) -> serde_json::Value {
    logged(
        "INFO",
        serde_json::json!({"message": "exchanged refresh token at ACS", "outcome": outcome,
            "grant_id": "0123456789abcdef0123456789abcdef", "elapsed_ms": 40}),
    )
}

/// Silence, alarmed: every launch (or Entra sign-in) refused with none accepted; the token
/// services unavailable with nothing issued; the sweep not completing for hours (missing
/// data breaching); notices waiting on the queue for over an hour.
fn check_silence(t: &Value, kinds: Kinds) -> Vec<String> {
    let mut v = Vec::new();
    for (name, f) in of_type(t, "AWS::Serverless::Function") {
        let (Some(program), Some(group)) = (program_of(f), iam::log_group_of(t, &name)) else {
            continue;
        };
        if program == Program::Launch {
            let mut pairs = Vec::new();
            if kinds.acs {
                pairs.push(("launch_refused", "launch_accepted"));
            }
            if kinds.entra {
                pairs.push(("sign_in_refused", "sign_in_accepted"));
            }
            for (refused, accepted) in pairs {
                let no = event_line(
                    refused,
                    serde_json::json!({"error": "invalid_token", "status": 401}),
                );
                let yes = event_line(
                    accepted,
                    serde_json::json!({"grant_id": "0123456789abcdef0123456789abcdef"}),
                );
                if !weighed_together(t, &group, &no, &yes) {
                    v.push(format!(
                        "{name}: no alarm weighs {refused} against {accepted} in {group}"
                    ));
                }
            }
        }
        if uses(program, kinds).redeems
            && !weighed_together(
                t,
                &group,
                &outcome_line("sts_unavailable"),
                &outcome_line("issued"),
            )
        {
            v.push(format!(
                "{name}: no alarm weighs sts_unavailable against issued in {group}"
            ));
        }
        if program == Program::Sweep {
            let done = event_line(
                "sweep_completed",
                serde_json::json!({"stopped_early": false}),
            );
            let counted = counting(t, &group, &done);
            let silent = alarms(t).into_iter().any(|(_, m, a)| {
                let p = &a["Properties"];
                m.intersection(&counted).next().is_some()
                    && p["TreatMissingData"].as_str() == Some("breaching")
                    && p["ComparisonOperator"].as_str() == Some("LessThanThreshold")
            });
            if !silent {
                v.push(format!(
                    "{name}: no alarm fires when sweep_completed stops (missing data breaching) in {group}"
                ));
            }
        }
    }
    let backlog = alarms(t).into_iter().any(|(_, _, a)| {
        let p = &a["Properties"];
        p["Namespace"].as_str() == Some("AWS/SQS")
            && p["MetricName"].as_str() == Some("ApproximateAgeOfOldestMessage")
            && p["Dimensions"]
                .as_sequence()
                .into_iter()
                .flatten()
                .any(|d| {
                    d["Name"].as_str() == Some("QueueName")
                        && target(&d["Value"]).as_deref() == Some("NoticeQueue")
                })
            && num(&p["Threshold"]).is_some_and(|s| s <= 3600)
    });
    if !backlog {
        v.push("no alarm on notices waiting over an hour on NoticeQueue".into());
    }
    v
}

/// Alarms on what the code logs: every function that redeems tokens has its
/// `sts_rejected_client` lines counted by an alarm; with Entra, an expired Entra secret
/// (AADSTS7000222) has an alarm of its own that no other refusal sets off; the sweep's
/// `client_secret_expiring` lines are counted.
fn check_alarms(t: &Value, kinds: Kinds) -> Vec<String> {
    let mut v = Vec::new();
    for pattern in of_type(t, "AWS::Logs::MetricFilter")
        .iter()
        .filter_map(|(_, f)| f["Properties"]["FilterPattern"].as_str())
    {
        if let Err(e) = filter_matches(pattern, &sts_rejected(None)) {
            v.push(format!("metric filter {pattern:?} does not parse: {e}"));
        }
    }
    for (name, f) in of_type(t, "AWS::Serverless::Function") {
        let Some(program) = program_of(f) else {
            continue;
        };
        let Some(group) = iam::log_group_of(t, &name) else {
            v.push(format!("{name}: no log group of its own"));
            continue;
        };
        let u = uses(program, kinds);
        let refusals = [
            (Some(7000222), "an expired Entra secret"),
            (Some(7000215), "a wrong Entra secret"),
            (None, "an ACS refusal"),
        ];
        if u.redeems {
            for (code, what) in refusals {
                if alarmed_metrics(t, &group, &sts_rejected(code)).is_empty() {
                    v.push(format!(
                        "{name}: no alarm counts its sts_rejected_client lines ({what}) in {group}"
                    ));
                }
            }
        }
        if u.redeems && kinds.entra && program != Program::Notify {
            let expired = alarmed_metrics(t, &group, &sts_rejected(Some(7000222)));
            let others: BTreeSet<String> = refusals[1..]
                .iter()
                .flat_map(|(code, _)| alarmed_metrics(t, &group, &sts_rejected(*code)))
                .collect();
            if expired.difference(&others).next().is_none() {
                v.push(format!(
                    "{name}: no alarm of its own for an expired Entra client secret (aadsts 7000222) in {group}"
                ));
            }
        }
        if program == Program::Sweep && alarmed_metrics(t, &group, &secret_expiring()).is_empty() {
            v.push(format!(
                "{name}: no alarm counts client_secret_expiring in {group}"
            ));
        }
        // The sweep tries every refused notice again each run, so its log alone tells.
        if program == Program::Sweep && alarmed_metrics(t, &group, &notice_refused()).is_empty() {
            v.push(format!("{name}: no alarm counts notice_refused in {group}"));
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

#[test]
fn the_template_rules_accept_exactly_the_deployments_that_start_and_each_keeps_every_rule() {
    let violations = check_rules(&template());
    assert!(
        violations.is_empty(),
        "template.yaml's Rules disagree with the program:\n{}",
        violations.join("\n")
    );
}

/// Applies `change` to the template and expects a violation mentioning `expected`.
fn broken(change: impl FnOnce(&mut Value), expected: &str) {
    broken_by(check, change, expected)
}

fn broken_by(checker: fn(&Value) -> Vec<String>, change: impl FnOnce(&mut Value), expected: &str) {
    let mut t = template();
    change(&mut t);
    let violations = checker(&t);
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
fn a_sweep_function_lambda_retries_is_reported() {
    broken(
        |t| {
            if let Some(m) = res(t, "SweepFunction")["Properties"].as_mapping_mut() {
                m.remove("EventInvokeConfig");
            }
        },
        "must not be retried by Lambda",
    );
}

#[test]
fn a_sweep_function_with_a_short_timeout_is_reported() {
    broken(
        |t| res(t, "SweepFunction")["Properties"]["Timeout"] = Value::from(60),
        "a timeout of at least 120 s",
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
fn a_stack_pointed_at_a_restored_table_that_still_uses_its_own_is_reported() {
    // A function left on the stack's own table.
    broken(
        |t| {
            t["Globals"]["Function"]["Environment"]["Variables"]["SPKEEPER_TABLE"] =
                yaml("!Ref Table")
        },
        "SPKEEPER_TABLE",
    );
    // A statement that names only the stack's own table.
    broken(
        |t| statement(t, "LaunchRole", "ReadItems")["Resource"] = yaml("!GetAtt Table.Arn"),
        "a table statement names",
    );
    // A statement whose two branches name different indexes.
    broken(
        |t| {
            statement(t, "LaunchRole", "FindEntraUsers")["Resource"] = yaml(&format!(
                "!If [CreateTable, !Sub \"${{Table.Arn}}/index/by_entra_user\", !Sub \"{}/index/by_email\"]",
                iam::EXISTING_TABLE_ARN
            ))
        },
        "a table statement names",
    );
    // A table created beside the named one.
    broken(
        |t| {
            res(t, "Table")
                .as_mapping_mut()
                .expect("a resource")
                .remove("Condition");
        },
        "creates a table beside",
    );
    // The output naming the stack's own table.
    broken(
        |t| t["Outputs"]["TableName"]["Value"] = yaml("!Ref Table"),
        "output TableName",
    );
}

#[test]
fn a_vpc_setting_that_misses_a_function_or_its_role_is_reported() {
    // notify outside the VPC: an internal webhook receiver is out of reach.
    broken(
        |t| {
            res(t, "NotifyFunction")["Properties"]
                .as_mapping_mut()
                .expect("properties")
                .remove("VpcConfig");
        },
        "NotifyFunction: not in the VPC",
    );
    // The sweep in a VPC it has no need of (it calls neither SharePoint nor the webhook).
    broken(
        |t| {
            let config = res(t, "LaunchFunction")["Properties"]["VpcConfig"].clone();
            res(t, "SweepFunction")["Properties"]["VpcConfig"] = config;
        },
        "SweepFunction: in a VPC it has no need of",
    );
    // A role without the network-interface actions (Lambda cannot attach the function).
    broken(
        |t| {
            let list =
                res(t, "ExchangeRole")["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
                    .as_sequence_mut()
                    .expect("statements");
            list.retain(|s| !format!("{s:?}").contains("VpcNetworkInterfaces"));
        },
        "ExchangeRole: EC2 actions",
    );
    // The network-interface actions whether or not the stack is in a VPC.
    broken(
        |t| unconditional(t, "NotifyRole", "VpcNetworkInterfaces"),
        "NotifyRole: EC2 actions",
    );
}

#[test]
fn the_rules_refuse_subnets_without_security_groups_and_the_reverse() {
    let t = template();
    let refused = |vpc: &[(&str, &str)]| {
        let mut all: Vec<(&str, String)> = base();
        all.extend(acs());
        all.extend(vpc.iter().map(|(k, v)| (*k, v.to_string())));
        let all: Vec<(&str, &str)> = all.iter().map(|(k, v)| (*k, v.as_str())).collect();
        iam::refused_by_rules(&t, &iam::parameter_values(&t, &all)).unwrap()
    };
    let vpc_rule = |r: &Vec<String>| {
        r.iter()
            .any(|x| x.starts_with("VpcNeedsSubnetsAndSecurityGroups"))
    };
    assert!(vpc_rule(&refused(&[("VpcSubnetIds", SUBNETS)])));
    assert!(vpc_rule(&refused(&[(
        "VpcSecurityGroupIds",
        SECURITY_GROUPS
    )])));
    assert!(refused(&[]).is_empty());
    assert!(
        refused(&[
            ("VpcSubnetIds", SUBNETS),
            ("VpcSecurityGroupIds", SECURITY_GROUPS)
        ])
        .is_empty()
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
            statement(t, "LaunchRole", "AcsLeases")["Condition"]["ForAllValues:StringLike"]["dynamodb:LeadingKeys"] =
                yaml(r#"["L#*", "G#*"]"#)
        },
        "LaunchRole: may delete items other than leases",
    );
    broken(
        |t| {
            statement(t, "ExchangeRole", "ReleaseLeases")["Action"] =
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

// --- Kinds of deployment: ACS, Entra, both; the keep-alive ----------------------------------

/// A statement of `role` with its `!If [condition, …]` taken away: granted in every deployment.
fn unconditional(t: &mut Value, role: &str, sid: &str) {
    let list = res(t, role)["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
        .as_sequence_mut()
        .expect("statements");
    for s in list.iter_mut() {
        let inner = match s {
            Value::Tagged(tg) if tg.value[1]["Sid"].as_str() == Some(sid) => tg.value[1].clone(),
            _ => continue,
        };
        *s = inner;
        return;
    }
    panic!("no conditional statement {sid} in {role}");
}

fn env_var<'a>(t: &'a mut Value, function: &str, var: &str) -> &'a mut Value {
    &mut res(t, function)["Properties"]["Environment"]["Variables"][var]
}

#[test]
fn the_rules_refuse_a_deployment_of_neither_kind_and_a_kind_without_its_secret() {
    let t = template();
    let refused = |given: &[(&str, &str)]| {
        let mut all: Vec<(&str, String)> = base();
        all.extend(given.iter().map(|(k, v)| (*k, v.to_string())));
        let all: Vec<(&str, &str)> = all.iter().map(|(k, v)| (*k, v.as_str())).collect();
        iam::refused_by_rules(&t, &iam::parameter_values(&t, &all)).unwrap()
    };
    let (cs, es) = (arn("client-secret"), arn("entra-credential"));
    assert!(
        refused(&[])
            .iter()
            .any(|r| r.starts_with("SomeKindConfigured"))
    );
    assert!(
        refused(&[("ClientId", ACS_CLIENT_ID)])
            .iter()
            .any(|r| r.starts_with("AcsHasItsSecret"))
    );
    assert!(
        refused(&[("EntraClientId", ENTRA_CLIENT_ID), ("ClientSecretArn", &cs)])
            .iter()
            .any(|r| r.starts_with("AcsHasItsSecret"))
    );
    assert!(
        refused(&[("EntraClientId", ENTRA_CLIENT_ID)])
            .iter()
            .any(|r| r.starts_with("EntraHasItsSecret"))
    );
    assert!(
        refused(&[
            ("EntraClientId", ENTRA_CLIENT_ID),
            ("EntraCredentialSecretArn", &es),
            ("RenewVia", "entra")
        ])
        .iter()
        .any(|r| r.starts_with("RenewViaEntraNeedsBothKinds"))
    );
    assert_eq!(
        refused(&[
            ("EntraClientId", ENTRA_CLIENT_ID),
            ("EntraCredentialSecretArn", &es)
        ]),
        Vec::<String>::new()
    );
}

#[test]
fn rules_that_let_through_a_deployment_that_would_not_start_are_reported() {
    for rule in [
        "SomeKindConfigured",
        "AcsHasItsSecret",
        "EntraHasItsSecret",
        "RenewViaEntraNeedsBothKinds",
    ] {
        broken_by(
            check_rules,
            |t| {
                t["Rules"].as_mapping_mut().unwrap().remove(rule);
            },
            "the rules accept",
        );
    }
    // A rule stricter than the program: Entra-only deployments refused.
    broken_by(
        check_rules,
        |t| {
            t["Rules"]["SomeKindConfigured"]["Assertions"][0]["Assert"] =
                yaml(r#"!Not [!Equals [!Ref ClientId, ""]]"#)
        },
        "the rules refuse a deployment every function would start with",
    );
}

#[test]
fn an_entra_setting_that_does_not_reach_the_functions_is_reported() {
    broken(
        |t| {
            t["Globals"]["Function"]["Environment"]["Variables"]
                .as_mapping_mut()
                .unwrap()
                .remove("SPKEEPER_ENTRA_TENANT");
        },
        "SPKEEPER_ENTRA_TENANT does not carry its parameter",
    );
    broken(
        |t| {
            t["Globals"]["Function"]["Environment"]["Variables"]["SPKEEPER_ENTRA_KEEPALIVE_DAYS"] =
                Value::from("30")
        },
        "SPKEEPER_ENTRA_KEEPALIVE_DAYS does not carry its parameter",
    );
    broken(
        |t| {
            t["Globals"]["Function"]["Environment"]["Variables"]
                .as_mapping_mut()
                .unwrap()
                .remove("SPKEEPER_ENTRA_CLIENT_ID");
        },
        // Entra-only deployments then configure no kind at all.
        "Entra only: LaunchFunction: would not start: SPKEEPER_CLIENT_ID",
    );
    broken(
        |t| {
            t["Globals"]["Function"]["Environment"]["Variables"]["SPKEEPER_RENEW_VIA"] =
                Value::from("sharepoint")
        },
        "SPKEEPER_RENEW_VIA does not carry its parameter",
    );
}

#[test]
fn the_entra_credential_given_where_its_code_does_not_use_it_is_reported() {
    // To the sweep whatever the keep-alive.
    broken(
        |t| {
            *env_var(t, "SweepFunction", "SPKEEPER_SECRETS_ARN") = yaml(
                r#"!If [HasEntra, !Join [",", [!Ref LinkKeySecretArn, !Ref TokenKeysSecretArn, !Ref EntraCredentialSecretArn]], !Ref LinkKeySecretArn]"#,
            )
        },
        "Entra without keep-alive: SweepFunction: given the secrets",
    );
    // To notify.
    broken(
        |t| {
            *env_var(t, "NotifyFunction", "SPKEEPER_SECRETS_ARN") = yaml(
                r#"!If [HasEntra, !Join [",", [!Ref WebhookSecretArn, !Ref EntraCredentialSecretArn]], !Ref WebhookSecretArn]"#,
            )
        },
        "NotifyFunction: given the secrets",
    );
    // The ACS client secret to an Entra-only deployment's launch: an empty ARN in the list.
    broken(
        |t| {
            *env_var(t, "LaunchFunction", "SPKEEPER_SECRETS_ARN") = yaml(
                r#"!Join [",", [!Ref TokenKeysSecretArn, !Ref LinkKeySecretArn, !Ref ClientSecretArn, !If [HasEntra, !Ref EntraCredentialSecretArn, !Ref LinkKeySecretArn]]]"#,
            )
        },
        "Entra only: LaunchFunction: SPKEEPER_SECRETS_ARN names \"\"",
    );
}

#[test]
fn the_entra_credential_not_given_where_its_code_uses_it_is_reported() {
    broken(
        |t| {
            *env_var(t, "ExchangeFunction", "SPKEEPER_SECRETS_ARN") = yaml(
                r#"!Join ["", [!Ref TokenKeysSecretArn, !Sub ",${LinkKeySecretArn}", !If [HasAcs, !Sub ",${ClientSecretArn}", ""]]]"#,
            )
        },
        "Entra only: ExchangeFunction: given the secrets",
    );
    // The keep-alive redeems: it opens and seals refresh tokens too.
    broken(
        |t| {
            *env_var(t, "SweepFunction", "SPKEEPER_SECRETS_ARN") = yaml(
                r#"!If [EntraKeepAlive, !Join [",", [!Ref LinkKeySecretArn, !Ref EntraCredentialSecretArn]], !Ref LinkKeySecretArn]"#,
            )
        },
        "Entra only: SweepFunction: given the secrets",
    );
}

#[test]
fn a_role_that_may_read_the_entra_credential_its_function_is_not_given_is_reported() {
    broken(
        |t| {
            statement(t, "ExchangeRole", "Secrets")["Resource"] = yaml(
                "[!Ref TokenKeysSecretArn, !Ref LinkKeySecretArn, !Ref EntraCredentialSecretArn, !If [HasAcs, !Ref ClientSecretArn, !Ref AWS::NoValue]]",
            )
        },
        "ACS only: ExchangeRole: may read the secrets",
    );
    broken(
        |t| {
            statement(t, "SweepRole", "Secrets")["Resource"] = yaml(
                "[!Ref LinkKeySecretArn, !If [HasEntra, !Ref TokenKeysSecretArn, !Ref AWS::NoValue], !If [HasEntra, !Ref EntraCredentialSecretArn, !Ref AWS::NoValue]]",
            )
        },
        "Entra without keep-alive: SweepRole: may read the secrets",
    );
    broken(
        |t| {
            statement(t, "SweepRole", "SecretsKey")["Condition"]["StringEquals"]["kms:EncryptionContext:SecretARN"] =
                yaml(
                    "[!Ref LinkKeySecretArn, !Ref TokenKeysSecretArn, !Ref EntraCredentialSecretArn]",
                )
        },
        "SweepRole: kms:Decrypt not limited by encryption context",
    );
}

#[test]
fn exchange_storing_refresh_tokens_without_entra_is_reported() {
    broken(
        |t| unconditional(t, "ExchangeRole", "StoreRotations"),
        "ACS only: ExchangeRole: dynamodb:PutItem writes refresh tokens (RT#*)",
    );
    // A refresh token item is written whole, in the grant's transaction.
    broken(
        |t| {
            statement(t, "ExchangeRole", "StoreRotations")["Action"] =
                Value::from("dynamodb:UpdateItem")
        },
        "Entra only: ExchangeRole: dynamodb:UpdateItem writes refresh tokens (RT#*)",
    );
}

#[test]
fn keep_alive_grants_without_the_keep_alive_are_reported() {
    broken(
        |t| unconditional(t, "SweepRole", "KeepAliveWrites"),
        "Entra without keep-alive: SweepRole: dynamodb:PutItem on token items (RT#*)",
    );
    broken(
        |t| unconditional(t, "SweepRole", "KeepAliveReads"),
        "ACS only: SweepRole: dynamodb:GetItem on token items (RT#*)",
    );
    broken(
        |t| unconditional(t, "SweepRole", "KeepAliveLeases"),
        "ACS only: SweepRole: dynamodb:DeleteItem on leases (L#*)",
    );
}

#[test]
fn a_keep_alive_that_may_read_cached_access_tokens_is_reported() {
    broken(
        |t| {
            statement(t, "SweepRole", "KeepAliveReads")["Condition"]["ForAllValues:StringLike"]["dynamodb:LeadingKeys"] =
                yaml(r#"["G#*", "RT#*", "AT#*"]"#)
        },
        "Entra only: SweepRole: dynamodb:GetItem on token items (AT#*)",
    );
}

#[test]
fn sign_in_grants_without_entra_and_lease_grants_without_acs_are_reported() {
    broken(
        |t| unconditional(t, "LaunchRole", "SignInStates"),
        "ACS only: LaunchRole: dynamodb:PutItem on items used once (T#*)",
    );
    broken(
        |t| unconditional(t, "LaunchRole", "FindEntraUsers"),
        "ACS only: LaunchRole: Query on index by_entra_user",
    );
    broken(
        |t| unconditional(t, "LaunchRole", "AcsLeases"),
        "Entra only: LaunchRole: dynamodb:PutItem on leases (L#*)",
    );
    // Only launch looks Entra users up.
    broken(
        |t| {
            statement(t, "ExchangeRole", "FindGrants")["Resource"] = yaml(
                r#"[!Sub "${Table.Arn}/index/by_email", !Sub "${Table.Arn}/index/by_login", !Sub "${Table.Arn}/index/by_entra_user"]"#,
            )
        },
        "ExchangeRole: Query on index by_entra_user",
    );
}

#[test]
fn entra_refusals_that_no_alarm_counts_are_reported() {
    // A filter on the wrong JSON path (the fields are under `fields`).
    broken(
        |t| {
            res(t, "EntraSecretExpiredExchangeFilter")["Properties"]["FilterPattern"] =
                Value::from("{ $.aadsts = 7000222 }")
        },
        "ExchangeFunction: no alarm of its own for an expired Entra client secret",
    );
    // A filter that counts every refusal as an expired secret.
    broken(
        |t| {
            res(t, "EntraSecretExpiredLaunchFilter")["Properties"]["FilterPattern"] =
                Value::from("{ $.fields.event = \"sts_rejected_client\" }")
        },
        "LaunchFunction: no alarm of its own for an expired Entra client secret",
    );
    // A quoted number never equals the logged number.
    broken(
        |t| {
            res(t, "EntraSecretExpiredSweepFilter")["Properties"]["FilterPattern"] = Value::from(
                "{ ($.fields.event = \"sts_rejected_client\") && ($.fields.aadsts = \"7000222\") }",
            )
        },
        "SweepFunction: no alarm of its own for an expired Entra client secret",
    );
    // The keep-alive's refusals in the sweep's log, counted by nothing.
    broken(
        |t| {
            t["Resources"]
                .as_mapping_mut()
                .unwrap()
                .remove("StsRejectedClientSweepFilter");
        },
        "SweepFunction: no alarm counts its sts_rejected_client lines",
    );
    broken(
        |t| {
            t["Resources"]
                .as_mapping_mut()
                .unwrap()
                .remove("EntraSecretExpiredAlarm");
        },
        "no alarm of its own for an expired Entra client secret",
    );
}

#[test]
fn a_sweep_that_stops_running_without_an_alarm_is_reported() {
    // Missing data read as fine: a sweep that never runs again is never noticed.
    broken(
        |t| {
            res(t, "SweepSilentAlarm")["Properties"]["TreatMissingData"] =
                Value::from("notBreaching")
        },
        "SweepFunction: no alarm fires when sweep_completed stops",
    );
    // The filter on a line the sweep does not write.
    broken(
        |t| {
            res(t, "SweepCompletedFilter")["Properties"]["FilterPattern"] =
                Value::from("{ $.fields.event = \"sweep_done\" }")
        },
        "SweepFunction: no alarm fires when sweep_completed stops",
    );
}

#[test]
fn every_launch_refused_without_an_alarm_is_reported() {
    broken(
        |t| {
            t["Resources"]
                .as_mapping_mut()
                .unwrap()
                .remove("LaunchesAllRefusedAlarm");
        },
        "LaunchFunction: no alarm weighs launch_refused against launch_accepted",
    );
    // Entra sign-ins not counted as accepted.
    broken(
        |t| {
            res(t, "LaunchAcceptedFilter")["Properties"]["FilterPattern"] =
                Value::from("{ $.fields.event = \"launch_accepted\" }")
        },
        "LaunchFunction: no alarm weighs sign_in_refused against sign_in_accepted",
    );
}

#[test]
fn token_services_down_without_an_alarm_is_reported() {
    broken(
        |t| {
            t["Resources"]
                .as_mapping_mut()
                .unwrap()
                .remove("StsIssuedExchangeFilter");
        },
        "ExchangeFunction: no alarm weighs sts_unavailable against issued",
    );
    broken(
        |t| {
            t["Resources"]
                .as_mapping_mut()
                .unwrap()
                .remove("StsUnavailableLaunchFilter");
        },
        "LaunchFunction: no alarm weighs sts_unavailable against issued",
    );
}

#[test]
fn notices_waiting_for_hours_without_an_alarm_is_reported() {
    broken(
        |t| res(t, "NoticeBacklogAlarm")["Properties"]["Threshold"] = Value::from(86400),
        "no alarm on notices waiting over an hour on NoticeQueue",
    );
}

#[test]
fn the_filter_evaluator_reads_patterns_as_cloudwatch_does() {
    let line = serde_json::json!({"level": "ERROR", "fields": {"event": "sts_rejected_client", "aadsts": 7000222, "list": [1, 2]}});
    for (pattern, expected) in [
        ("{ $.fields.event = \"sts_rejected_client\" }", true),
        ("{ $.fields.event = sts_rejected_client }", true),
        ("{ $.fields.event = \"sts_*\" }", true),
        ("{ $.fields.event != \"sts_rejected_client\" }", false),
        ("{ $.fields.aadsts = 7000222 }", true),
        ("{ $.fields.aadsts = \"7000222\" }", false),
        ("{ $.fields.aadsts > 7000000 && $.level = \"ERROR\" }", true),
        ("{ ($.fields.aadsts = 1) || ($.fields.list[1] = 2) }", true),
        ("{ $.aadsts = 7000222 }", false),
        ("{ $.fields.missing != 3 }", false),
    ] {
        assert_eq!(
            filter_matches(pattern, &line).unwrap(),
            expected,
            "{pattern}"
        );
    }
    assert!(filter_matches("$.a = 1", &line).is_err());
    assert!(filter_matches("{ $.a = }", &line).is_err());
}

#[test]
fn an_acs_only_deployment_has_no_entra_grants_and_an_entra_only_one_no_acs_grants() {
    let t = template();
    let grants = |given: Vec<(&'static str, String)>, role: &str| {
        let mut all = base();
        all.extend(given);
        let all: Vec<(&str, &str)> = all.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = iam::resolve(&t, &iam::parameter_values(&t, &all)).unwrap();
        (table_grants(&r, role), readable_secrets(&r, role).0)
    };
    let (acs_exchange, acs_secrets) = grants(acs(), "ExchangeRole");
    assert!(!acs_exchange["dynamodb:PutItem"].contains("RT#*"));
    assert!(!acs_secrets.contains("EntraCredentialSecretArn"));
    let (acs_sweep, _) = grants(acs(), "SweepRole");
    assert!(!acs_sweep.contains_key("dynamodb:GetItem"));
    let (entra_launch, entra_secrets) = grants(entra(), "LaunchRole");
    assert!(!entra_launch["dynamodb:PutItem"].contains("L#*"));
    assert!(!entra_launch.contains_key("dynamodb:DeleteItem"));
    assert!(!entra_secrets.contains("ClientSecretArn"));
    let (entra_sweep, sweep_secrets) = grants(entra(), "SweepRole");
    assert_eq!(
        entra_sweep["dynamodb:PutItem"],
        ["AT#*", "L#*", "M#*", "RT#*"].map(String::from).into()
    );
    assert_eq!(
        sweep_secrets,
        [
            "EntraCredentialSecretArn",
            "LinkKeySecretArn",
            "TokenKeysSecretArn"
        ]
        .map(String::from)
        .into()
    );
}
