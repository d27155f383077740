//! Helpers for the end-to-end tests: real processes, a webhook receiver that verifies every
//! signature, an HTTP client that does not follow redirects, and (in [`lambda`]) a local
//! Lambda Runtime API with the AWS resources a function needs; (in [`iam`]) the template's
//! permissions as data.

pub mod iam;
pub mod lambda;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

/// A process that is stopped when dropped; its output goes to files for later inspection.
pub struct Proc {
    child: Option<Child>,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

impl Proc {
    pub fn spawn(
        bin: &Path,
        args: &[&str],
        env: &BTreeMap<String, String>,
        logs: &Path,
        name: &str,
    ) -> Proc {
        let stdout = logs.join(format!("{name}.stdout"));
        let stderr = logs.join(format!("{name}.stderr"));
        let child = Command::new(bin)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).expect("stdout file"))
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("spawn");
        Proc {
            child: Some(child),
            stdout,
            stderr,
        }
    }

    /// Waits for a line of standard output starting with `prefix`; returns the rest.
    pub fn wait_for_line(&mut self, prefix: &str, timeout: Duration) -> String {
        let start = Instant::now();
        loop {
            let out = std::fs::read_to_string(&self.stdout).unwrap_or_default();
            if let Some(line) = out.lines().find(|l| l.starts_with(prefix)) {
                return line[prefix.len()..].trim().to_string();
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!(
                    "process exited ({status}) before printing {prefix:?}:\n{}",
                    std::fs::read_to_string(&self.stderr).unwrap_or_default()
                );
            }
            assert!(
                start.elapsed() < timeout,
                "timed out waiting for {prefix:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the process to exit on its own; its status, or `None` on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Stops the process politely (SIGTERM) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn output(&self) -> String {
        format!(
            "{}{}",
            std::fs::read_to_string(&self.stdout).unwrap_or_default(),
            std::fs::read_to_string(&self.stderr).unwrap_or_default()
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs a command to completion: (exit code, stdout, stderr).
pub fn run(bin: &Path, args: &[&str], env: &BTreeMap<String, String>) -> (i32, String, String) {
    let out = Command::new(bin)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env)
        .output()
        .expect("run");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One webhook as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub id: String,
    pub signature_valid: bool,
    pub notice: Value,
    body: Bytes,
    headers: HeaderMap,
}

impl Received {
    /// Does a receiver holding `secret` verify this webhook (Standard Webhooks: one of its
    /// signatures is by that secret)?
    pub fn verifies_with(&self, secret: &str) -> bool {
        standardwebhooks::Webhook::new(secret)
            .map(|wh| wh.verify(&self.body, &self.headers).is_ok())
            .unwrap_or(false)
    }
}

/// A webhook receiver that verifies each Standard Webhooks signature with the shared secret
/// and answers 2xx only when it verifies.
#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    got: Arc<Mutex<Vec<Received>>>,
    fail_next: Arc<Mutex<u32>>,
    refuse: Arc<Mutex<Vec<String>>>,
}

struct ReceiverState {
    secret: String,
    got: Arc<Mutex<Vec<Received>>>,
    fail_next: Arc<Mutex<u32>>,
    refuse: Arc<Mutex<Vec<String>>>,
}

async fn receive(
    State(st): State<Arc<ReceiverState>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    {
        let mut fail = st.fail_next.lock().unwrap();
        if *fail > 0 {
            *fail -= 1;
            return StatusCode::SERVICE_UNAVAILABLE;
        }
    }
    let refused = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|id| st.refuse.lock().unwrap().iter().any(|r| r == id));
    if refused {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    let valid = standardwebhooks::Webhook::new(&st.secret)
        .map(|wh| wh.verify(&body, &headers).is_ok())
        .unwrap_or(false);
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    st.got.lock().unwrap().push(Received {
        id,
        signature_valid: valid,
        notice: serde_json::from_slice(&body).unwrap_or(Value::Null),
        body,
        headers,
    });
    if valid {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::UNAUTHORIZED
    }
}

impl Receiver {
    pub async fn start(secret: &str) -> Receiver {
        let got = Arc::new(Mutex::new(Vec::new()));
        let fail_next = Arc::new(Mutex::new(0));
        let refuse = Arc::new(Mutex::new(Vec::new()));
        let st = Arc::new(ReceiverState {
            secret: secret.to_string(),
            got: Arc::clone(&got),
            fail_next: Arc::clone(&fail_next),
            refuse: Arc::clone(&refuse),
        });
        let app = Router::new().route("/hook", post(receive)).with_state(st);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver {
            addr,
            got,
            fail_next,
            refuse,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn received(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// Deliveries of this notice id always get a 500.
    pub fn refuse(&self, id: &str) {
        self.refuse.lock().unwrap().push(id.to_string());
    }

    /// The next `n` deliveries get a 503.
    pub fn fail_next(&self, n: u32) {
        *self.fail_next.lock().unwrap() = n;
    }

    /// Waits until `n` webhooks have arrived.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let start = Instant::now();
        loop {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            assert!(
                start.elapsed() < timeout,
                "expected {n} webhooks, got {}: {got:?}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// An HTTP client that never follows redirects (the tests look at each hop).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// GET a URL and parse its JSON answer.
pub async fn get_json(url: &str) -> Value {
    client()
        .get(url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The `action` and `SPAppToken` of the auto-posting form SharePoint serves.
pub fn launch_form(html: &str) -> (String, String) {
    let grab = |after: &str| -> String {
        let start = html
            .find(after)
            .unwrap_or_else(|| panic!("{after} not in page"))
            + after.len();
        let end = start + html[start..].find('"').unwrap();
        html_escape::decode_html_entities(&html[start..end]).into_owned()
    };
    (
        grab("<form method=\"post\" action=\""),
        grab("name=\"SPAppToken\" value=\""),
    )
}

/// The claims of a JWT, unverified (to learn what secrets a test token carried).
pub fn jwt_claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap_or("");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap_or_default())
        .unwrap_or(Value::Null)
}

/// Fails if any of `secrets` appears in `text` (or a long enough piece of one does).
pub fn assert_no_secrets(text: &str, secrets: &[String]) {
    for s in secrets.iter().filter(|s| s.len() >= 8) {
        assert!(
            !text.contains(s.as_str()),
            "a secret or token reached the logs: {}…",
            &s[..6]
        );
        // A token's signature alone is as good as the token.
        if let Some(sig) = s.rsplit('.').next().filter(|sig| sig.len() >= 20) {
            assert!(!text.contains(sig), "a token signature reached the logs");
        }
    }
}

/// A page a [`Browser`] landed on, after any redirects.
#[derive(Debug, Clone)]
pub struct Page {
    pub status: u16,
    pub url: String,
    pub html: String,
}

/// A browser, as far as the README's walkthrough needs one: it keeps cookies (the `Secure`
/// ones too, as browsers do on loopback), follows redirects, reads pages and presses their
/// buttons, posting exactly the form the page holds.
#[derive(Default)]
pub struct Browser {
    cookies: Mutex<BTreeMap<String, String>>,
}

/// The value of `name="…"` in a tag, decoded.
fn tag_attr(tag: &str, name: &str) -> Option<String> {
    let key = format!(" {name}=\"");
    let start = tag.find(&key)? + key.len();
    let end = start + tag[start..].find('"')?;
    Some(html_escape::decode_html_entities(&tag[start..end]).into_owned())
}

/// The text of some HTML, without its tags, decoded and with its spaces collapsed.
pub fn page_text(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => {
                in_tag = true;
                out.push(' ');
            }
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    let text = html_escape::decode_html_entities(&out).into_owned();
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The form holding the button labelled `label` (in a form whose action starts with `action`,
/// when given): its action and what pressing the button posts — hidden inputs, each select's
/// selected option (or `choose`'s value for it), and the button's own name and value.
pub fn form_for_button(
    html: &str,
    action: Option<&str>,
    label: &str,
    choose: &[(&str, &str)],
) -> Option<(String, Vec<(String, String)>)> {
    for chunk in html.split("<form").skip(1) {
        let Some(form) = chunk.split("</form>").next() else {
            continue;
        };
        let open = &form[..form.find('>')?];
        let form_action = tag_attr(open, "action").unwrap_or_default();
        if action.is_some_and(|a| !form_action.starts_with(a)) {
            continue;
        }
        let button = form.split("<button").skip(1).find_map(|b| {
            let (tag, rest) = b.split_once('>')?;
            let text = page_text(rest.split("</button>").next()?);
            (text == label).then(|| (tag_attr(tag, "name"), tag_attr(tag, "value")))
        });
        let Some((name, value)) = button else {
            continue;
        };
        let mut fields = Vec::new();
        for input in form.split("<input").skip(1) {
            let tag = input.split('>').next().unwrap_or("");
            if let (Some(n), Some(v)) = (tag_attr(tag, "name"), tag_attr(tag, "value")) {
                fields.push((n, v));
            }
        }
        for select in form.split("<select").skip(1) {
            let tag = select.split('>').next().unwrap_or("");
            let Some(n) = tag_attr(tag, "name") else {
                continue;
            };
            let options = select.split("</select>").next().unwrap_or("");
            let chosen = choose
                .iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.to_string());
            let selected = options
                .split("<option")
                .skip(1)
                .map(|o| o.split('>').next().unwrap_or(""))
                .find(|o| o.contains(" selected"))
                .or_else(|| options.split("<option").nth(1))
                .and_then(|o| tag_attr(o, "value"));
            if let Some(v) = chosen.or(selected) {
                fields.push((n, v));
            }
        }
        if let (Some(n), Some(v)) = (name, value) {
            fields.push((n, v));
        }
        return Some((form_action, fields));
    }
    None
}

impl Browser {
    pub fn new() -> Self {
        Self::default()
    }

    fn cookie_header(&self) -> String {
        let jar = self.cookies.lock().unwrap();
        jar.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn keep_cookies(&self, resp: &reqwest::Response) {
        let mut jar = self.cookies.lock().unwrap();
        for v in resp.headers().get_all("set-cookie") {
            let v = v.to_str().unwrap_or("");
            let Some((name, value)) = v.split(';').next().and_then(|kv| kv.split_once('=')) else {
                continue;
            };
            if v.to_ascii_lowercase().contains("max-age=0") {
                jar.remove(name.trim());
            } else {
                jar.insert(name.trim().to_string(), value.trim().to_string());
            }
        }
    }

    /// One request, no redirect followed; cookies kept.
    pub async fn send(
        &self,
        method: &str,
        url: &str,
        form: Option<&[(String, String)]>,
    ) -> reqwest::Response {
        let mut req = client()
            .request(method.parse().unwrap(), url)
            .header("accept", "text/html,application/xhtml+xml,*/*;q=0.8");
        let cookies = self.cookie_header();
        if !cookies.is_empty() {
            req = req.header("cookie", cookies);
        }
        if let Some(fields) = form {
            let body = url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(fields)
                .finish();
            req = req
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body);
        }
        let resp = req.send().await.unwrap();
        self.keep_cookies(&resp);
        resp
    }

    /// Follows redirects from a first answer to the page it ends on.
    async fn land(&self, mut url: String, mut resp: reqwest::Response) -> Page {
        for _ in 0..10 {
            if !resp.status().is_redirection() {
                let status = resp.status().as_u16();
                let html = resp.text().await.unwrap();
                return Page { status, url, html };
            }
            let location = resp.headers()["location"].to_str().unwrap().to_string();
            url = url::Url::parse(&url)
                .unwrap()
                .join(&location)
                .unwrap()
                .to_string();
            resp = self.send("GET", &url, None).await;
        }
        panic!("too many redirects, last at {url}");
    }

    /// Opens a URL, as typing it in or following a link does.
    pub async fn open(&self, url: &str) -> Page {
        let resp = self.send("GET", url, None).await;
        self.land(url.to_string(), resp).await
    }

    /// Presses the button labelled `label` on `page`.
    pub async fn press(&self, page: &Page, label: &str) -> Page {
        self.press_in(page, None, label, &[]).await
    }

    /// Presses a button in a form whose action starts with `action`, with `choose` picked in
    /// its selects.
    pub async fn press_in(
        &self,
        page: &Page,
        action: Option<&str>,
        label: &str,
        choose: &[(&str, &str)],
    ) -> Page {
        let (form_action, fields) = form_for_button(&page.html, action, label, choose)
            .unwrap_or_else(|| panic!("no button {label:?} on {}", page.url));
        let target = url::Url::parse(&page.url)
            .unwrap()
            .join(&form_action)
            .unwrap()
            .to_string();
        let resp = self.send("POST", &target, Some(&fields)).await;
        self.land(target, resp).await
    }
}
