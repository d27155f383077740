//! `/dev/sharepoint`: the simulated SharePoint site, with the controls of the simulator.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{Html, IntoResponse, Response};
use html_escape::{encode_double_quoted_attribute as attr, encode_text as text};
use serde::Deserialize;

use spkeeper::core::grant::days_left;
use spkeeper::core::notice::rfc3339;

use spkeeper::http::cookie;

use super::fault::describe;
use super::sim::{
    self, Fault, InboxEntry, Sim, USER_COOKIE, clean_user, display_name, known_users,
};

#[derive(Deserialize)]
pub struct PageQuery {
    user: Option<String>,
}

const STYLE: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;color:#242424}\
header{background:#03787c;color:#fff;padding:.7rem 1.5rem;font-weight:600}main{max-width:62rem;margin:1.5rem auto;padding:0 1rem}\
section{border:1px solid #e1e1e1;border-radius:6px;padding:1rem 1.2rem;margin-bottom:1rem}h2{font-size:1.05rem;margin-top:0}\
button{background:#03787c;color:#fff;border:0;border-radius:4px;padding:.45rem .9rem;font-size:.95rem;cursor:pointer;margin:.15rem}\
button.light{background:#e9f1f1;color:#03787c}table{border-collapse:collapse;width:100%;font-size:.9rem}\
td,th{border-bottom:1px solid #eee;padding:.3rem .4rem;text-align:left}form{display:inline}.muted{color:#666;font-size:.85rem}\
code{background:#f4f4f4;padding:0 .2rem}.bad{color:#a4262c}.ok{color:#107c10}\
pre{background:#f8f8f8;padding:.5rem;margin:.2rem 0;overflow-x:auto;font-size:.8rem}tr.notice-body td{border-bottom:1px solid #ddd}";

fn button(action: &str, fields: &[(&str, &str)], label: &str, light: bool) -> String {
    let inputs: String = fields
        .iter()
        .map(|(k, v)| {
            format!(
                "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
                attr(k),
                attr(v)
            )
        })
        .collect();
    format!(
        "<form method=\"post\" action=\"{}\">{inputs}<button{}>{}</button></form>",
        attr(action),
        if light { " class=\"light\"" } else { "" },
        text(label)
    )
}

/// One form for a token service's failures: how long (until turned off, or the next 1 or 3
/// requests), then a button per failure (`mode`).
fn fault_form(action: &str, modes: &[(String, String)]) -> String {
    let buttons: String = modes
        .iter()
        .map(|(mode, label)| {
            format!(
                "<button class=\"light\" name=\"mode\" value=\"{}\">{}</button>",
                attr(mode),
                text(label)
            )
        })
        .collect();
    format!(
        "<form method=\"post\" action=\"{}\"><label>For <select name=\"count\">\
         <option value=\"until_off\" selected>until turned off</option>\
         <option value=\"1\">the next request</option>\
         <option value=\"3\">the next 3 requests</option></select></label> {buttons}</form>",
        attr(action)
    )
}

/// A notice in the inbox: when, what, for whom, its signature, its renew link (a link, if the
/// signature verified), and
/// its JSON body (escaped; the newest one unfolded).
fn inbox_row(e: &InboxEntry, newest: bool) -> String {
    let n = &e.notice;
    // A link only from a notice whose signature checked out: anyone can post to the inbox.
    let renew = n["renew_url"]
        .as_str()
        .filter(|_| e.signature_valid)
        .filter(|u| u.starts_with("https://") || u.starts_with("http://"))
        .map(|u| {
            format!(
                "<a class=\"renew-link\" href=\"{}\">renew link</a>",
                attr(u)
            )
        })
        .unwrap_or_else(|| "—".into());
    let body = serde_json::to_string_pretty(n).unwrap_or_default();
    format!(
        "<tr class=\"notice\"><td>{}</td><td><b>{}</b></td><td><code>{}</code></td><td>{}</td><td class=\"{}\">{}</td><td>{renew}</td></tr>\
         <tr class=\"notice-body\"><td colspan=\"6\"><details{}><summary class=\"muted\">body</summary><pre>{}</pre></details></td></tr>",
        text(n["created_at"].as_str().unwrap_or(&e.received_at)),
        text(n["type"].as_str().unwrap_or("?")),
        text(
            &n["grant"]["id"]
                .as_str()
                .map(|s| s.chars().take(8).collect::<String>())
                .unwrap_or_else(|| "-".into())
        ),
        n["days_left"]
            .as_i64()
            .map(|d| d.to_string())
            .unwrap_or_else(|| "—".into()),
        if e.signature_valid { "ok" } else { "bad" },
        if e.signature_valid {
            "signature ok"
        } else {
            "BAD SIGNATURE"
        },
        if newest { " open" } else { "" },
        text(&body),
    )
}

pub async fn sharepoint(
    State(sim): State<Arc<Sim>>,
    headers: axum::http::HeaderMap,
    Query(q): Query<PageQuery>,
) -> Response {
    let user = clean_user(q.user.as_deref().or(cookie(&headers, USER_COOKIE)));
    let now = sim.now();
    let launch_action = format!(
        "{}?{}",
        sim.ctx.settings.launch_url(),
        sim.standard_tokens()
    );
    let token = sim.context_token(&user);
    let launch_form = sim::auto_post(&launch_action, &token, &sim.site_url(), false);
    // Only the <form> of the auto-post page, as a button on this page.
    let launch_form = launch_form
        .split_once("<form")
        .and_then(|(_, rest)| rest.split_once("</form>"))
        .map(|(inner, _)| format!("<form{inner}</form>"))
        .unwrap_or_default();

    let users: String = known_users()
        .map(|u| {
            if u == user {
                format!("<b>{}</b> ", text(&display_name(u)))
            } else {
                format!(
                    "<a href=\"/dev/sharepoint?user={u}\">{}</a> ",
                    text(&display_name(u))
                )
            }
        })
        .collect();

    let grants = sim.ctx.grants.list().await.unwrap_or_default();
    let grant_rows: String = grants
        .iter()
        .map(|g| {
            let status = sim.ctx.status_of(g, now);
            let who = g.user.as_ref().map(|u| u.title.clone()).unwrap_or_else(|| "?".into());
            format!(
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><a href=\"{}\">renew link</a></td></tr>",
                &g.id.as_str()[..8],
                text(&who),
                status,
                rfc3339(g.rt_expires_at),
                days_left(g.rt_expires_at, now),
                g.progress,
                attr(&sim.ctx.renew_url(&g.id, now)),
            )
        })
        .collect();
    let pending = match &sim.outbox {
        Some(outbox) => format!(
            "{} notice(s) waiting for delivery.",
            outbox.undelivered().await.map(|v| v.len()).unwrap_or(0)
        ),
        None => "Notices go to the SQS queue.".to_string(),
    };
    let inbox_rows: String = sim
        .inbox()
        .iter()
        .rev()
        .take(20)
        .enumerate()
        .map(|(i, e)| inbox_row(e, i == 0))
        .collect();

    let offset_days = sim.clock.offset().num_seconds() as f64 / 86_400.0;
    let clock_buttons: String = [
        ("1", "+1 day"),
        ("7", "+7 days"),
        ("30", "+30 days"),
        ("60", "+60 days"),
        ("150", "+150 days"),
    ]
    .iter()
    .map(|(d, label)| {
        button(
            "/dev/clock",
            &[("advance_days", d), ("sweep", "1")],
            label,
            true,
        )
    })
    .collect();
    let acs_fault_form = fault_form(
        "/dev/acs/fault",
        &Fault::ALL.map(|f| (f.mode().to_string(), f.label().to_string())),
    );
    let entra_fault_form = fault_form(
        "/dev/entra/fault",
        &super::entra::FAULT_CODES
            .iter()
            .map(|c| c.to_string())
            .chain(["429".to_string(), "500".to_string()])
            .map(|m| (m.clone(), m))
            .collect::<Vec<_>>(),
    );
    let connect = format!(
        "/connect?site={}",
        url::form_urlencoded::byte_serialize(sim.site_url().as_bytes()).collect::<String>()
    );
    let body = format!(
        "<header>Contoso · simulated SharePoint (spkeeper --dev)</header><main>\
        <section><h2>1 · Launch the add-in</h2>\
        <p>Signed in to SharePoint as: {users}</p>\
        {launch_form}\
        <p>Or, as an Entra ID app does since ACS was switched off: \
        <a class=\"button\" href=\"{connect}\">Sign in with Microsoft</a> \
        (the simulated Entra ID: pick a user, consent or decline).</p>\
        <p class=\"muted\">The button posts a real context token (HS256, signed with the add-in's client secret) to \
        <code>{launch}</code>, as SharePoint's AppRedirect.aspx does. Client id <code>{client}</code>, tenant <code>{realm}</code>.</p></section>\
        <section><h2>2 · Travel in time</h2><p>Simulated now: <b>{now}</b> ({offset:+.1} days from real time)</p>\
        {next} {clock_buttons} {reset} {sweep}\
        <p class=\"muted\">Each jump runs a sweep; notices fall due 30, 7 and 1 days before the refresh token expires, six months after the launch.</p></section>\
        <section><h2>3 · Grants and access tokens</h2><table><tr><th>grant</th><th>user</th><th>status</th><th>refresh token expires</th><th>days</th><th>notices</th><th></th></tr>{grant_rows}</table>\
        <p class=\"muted\">{pending}</p>\
        <p>ACS token requests so far: <b id=\"acs-token-requests\">{requests}</b> · Entra ID token requests so far: <b id=\"entra-token-requests\">{entra_requests}</b> {forget}</p>\
        <p class=\"muted\">The launch itself asks ACS once, for the access token that looks the user up in SharePoint; spkeeper caches that token. \
        <code>/token</code> answers from the cache while the cached access token has more than 5 minutes left (ACS's last about 12 hours, Entra's one): \
        forget them and the next <code>/token</code> asks the token service again. Grants and refresh tokens stay.</p></section>\
        <section><h2>4 · Webhook inbox</h2><table><tr><th>created</th><th>type</th><th>grant</th><th>days left</th><th>signature</th><th>renew link</th></tr>{inbox_rows}</table>\
        <p class=\"muted\">The last 20 notices, newest first, as spkeeper delivered them here (also as JSON: <a href=\"/dev/webhook\">GET /dev/webhook</a>).</p></section>\
        <section><h2>5 · Make ACS misbehave</h2><p>ACS now answers with: <b id=\"acs-fault\">{acs_fault}</b></p>{acs_fault_form} {acs_off}\
        <p class=\"muted\">A failure stays on until you turn it off, or for the number of token requests you choose. \
        spkeeper tries ACS three times on a 500, a 429 or a timeout (slow: 6 s, past its 5-second limit) before it answers <code>503 sts_unavailable</code>; \
        <code>invalid_grant</code> revokes the grant (<code>409 relaunch_required</code>), <code>invalid_client</code> is <code>502 sts_rejected_client</code>. \
        Forget the cached access tokens first, or <code>/token</code> answers from the cache without asking ACS.</p></section>\
        <section><h2>6 · Make Entra ID misbehave</h2><p>Entra ID now answers with: <b id=\"entra-fault\">{entra_fault}</b></p>{entra_fault_form} {entra_off}\
        <p class=\"muted\">AADSTS codes, as Entra's token endpoint answers them; as for ACS, on until turned off or for the requests you choose.</p>\
        <p>{rotate} {revoke}</p></section>\
        </main>",
        connect = attr(&connect),
        entra_off = button("/dev/entra/fault", &[("mode", "off")], "turn off", false),
        entra_fault = text(&describe(sim.entra.fault())),
        entra_requests = sim.entra.token_requests(),
        acs_fault = text(&describe(sim.acs_fault_labelled(Fault::label))),
        forget = button(
            "/dev/access-tokens/forget",
            &[],
            "forget cached access tokens",
            true
        ),
        rotate = button(
            "/dev/entra/rotate-keys",
            &[],
            "rotate Entra's signing key",
            true
        ),
        revoke = button(
            "/dev/entra/revoke",
            &[("user", "megan")],
            "revoke Megan's sessions",
            true
        ),
        launch = text(&sim.ctx.settings.launch_url()),
        client = text(sim.acs_client_id()),
        realm = text(&sim.values.realm),
        now = rfc3339(now),
        offset = offset_days,
        next = button(
            "/dev/clock",
            &[("next_notice", "1"), ("sweep", "1")],
            "jump to the next notice",
            false
        ),
        reset = button(
            "/dev/clock",
            &[("reset", "1"), ("sweep", "1")],
            "back to real time",
            true
        ),
        sweep = button("/dev/sweep", &[], "sweep now", false),
        acs_off = button("/dev/acs/fault", &[("mode", "off")], "turn off", false),
        requests = sim.token_requests(),
    );
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Contoso · simulated SharePoint</title>\
         <style>{STYLE}</style></head><body>{body}</body></html>"
    );
    let mut resp = Html(html).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("{USER_COOKIE}={user}; Path=/; SameSite=Lax")) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}
