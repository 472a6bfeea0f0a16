//! A fake WhatsApp Cloud API (Graph API) on loopback. It answers sends in the real wire
//! format, refuses what Meta refuses (no `messaging_product`, too many buttons, titles over
//! their limits, a quote of an unknown message) with Meta's error JSON, answers 131047,
//! 131056, 130429 or a 5xx on demand, and delivers webhooks — messages and statuses —
//! signed with the app secret, retrying a delivery that did not get a 200 as Meta does.
//! Media customers sent are served as Meta serves them: the id gives a URL, the URL the
//! bytes, both only with the access token. Template messages must name an approved template
//! with its number of body parameters; read receipts must name a known message.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::support::eventually;

pub const TOKEN: &str = "EAAtest";
pub const APP_SECRET: &str = "test-app-secret";
pub const VERIFY_TOKEN: &str = "test-verify-token";
pub const PHONE_ID: &str = "1055";
pub const VERSION: &str = "v21.0";

/// One send the fake answered.
#[derive(Debug, Clone)]
pub struct Sent {
    /// The recipient, digits only as sent.
    pub to: String,
    pub body: Value,
    /// The wamid it answered with; `None` when it refused the send.
    pub wamid: Option<String>,
    /// Meta's error code when it refused.
    pub error: Option<i64>,
}

impl Sent {
    /// The text the customer sees: a text's body, an interactive message's body, or a
    /// template's first body parameter.
    pub fn text(&self) -> String {
        let b = &self.body;
        b["text"]["body"]
            .as_str()
            .or(b["interactive"]["body"]["text"].as_str())
            .or(b["template"]["components"][0]["parameters"][0]["text"].as_str())
            .unwrap_or_default()
            .to_string()
    }
}

/// A scripted answer to a recipient's next send.
#[derive(Debug, Clone, Copy)]
pub enum Script {
    /// Meta's error with this code (HTTP 400, or 500 for 131000).
    Meta(i64),
    /// A bare HTTP status.
    Http(u16),
}

#[derive(Default)]
struct St {
    sent: Mutex<Vec<Sent>>,
    next: AtomicU64,
    script: Mutex<HashMap<String, VecDeque<Script>>>,
    /// Every wamid the fake has given out (sent messages and customers' messages).
    known: Mutex<HashSet<String>>,
    /// Media id → (mime type, bytes).
    media: Mutex<HashMap<String, (String, Vec<u8>)>>,
    /// Approved templates: name → (body parameters, quick-reply buttons).
    templates: Mutex<HashMap<String, (usize, usize)>>,
    /// The messages marked read, in order.
    read: Mutex<Vec<String>>,
    /// While true, accepted sends are recorded (wamid given) but not answered.
    held: tokio::sync::watch::Sender<bool>,
    url: std::sync::OnceLock<String>,
}

#[derive(Clone)]
pub struct FakeWhatsApp {
    pub url: String,
    st: Arc<St>,
    http: reqwest::Client,
}

/// `(code, title, details)` of the errors the fake knows.
fn meta_error(code: i64) -> (u16, &'static str, &'static str) {
    match code {
        131047 => (400, "Re-engagement message", "Message failed to send because more than 24 hours have passed since the customer last replied to this number."),
        131056 => (400, "(Business Account, Consumer Account) pair rate limit hit", "Too many messages sent from the sender phone number to the same recipient phone number in a short period of time."),
        130429 => (400, "Rate limit hit", "Cloud API message throughput has been reached."),
        131026 => (400, "Message Undeliverable", "Unable to deliver message."),
        131000 => (500, "Something went wrong", "Message failed to send due to an unknown error."),
        132000 => (400, "Number of parameters does not match the expected number of params", "body: number of localizable_params does not match the expected number of params."),
        132001 => (404, "Template name does not exist in the translation", "template name is not approved in this language."),
        132012 => (400, "Parameter format does not match format in the created template", "A parameter is malformed."),
        190 => (401, "Invalid OAuth access token", "The access token could not be decrypted."),
        _ => (400, "Invalid parameter", "Parameter value is not valid."),
    }
}

fn error_json(code: i64, details: &str) -> (StatusCode, Json<Value>) {
    let (status, title, _) = meta_error(code);
    (
        StatusCode::from_u16(status).unwrap(),
        Json(json!({"error": {
            "message": format!("(#{code}) {title}"),
            "type": "OAuthException",
            "code": code,
            "error_data": {"messaging_product": "whatsapp", "details": details},
            "fbtrace_id": "AfakeTrace",
        }})),
    )
}

impl FakeWhatsApp {
    pub async fn start() -> FakeWhatsApp {
        let st = Arc::new(St::default());
        st.next.store(1, Ordering::Relaxed);
        // The templates the tests and the example use, as approved.
        st.templates.lock().unwrap().extend([
            ("order_update".to_string(), (1, 0)),
            ("appointment_reminder".to_string(), (2, 0)),
            ("appointment_confirmation".to_string(), (1, 3)),
            ("reopen_conversation".to_string(), (1, 0)),
        ]);
        let app = axum::Router::new()
            .route("/{version}/{phone}/messages", axum::routing::post(send))
            .route("/{version}/{media}", axum::routing::get(media_info))
            .route("/media-bytes/{media}", axum::routing::get(media_bytes))
            .with_state(st.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        st.url.set(url.clone()).unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        FakeWhatsApp {
            url,
            st,
            http: reqwest::Client::new(),
        }
    }

    /// The gateway section of a channel named `wa` on this fake.
    pub fn channel(&self, extra: &str) -> String {
        format!(
            "[channels.wa]\ntype = \"whatsapp\"\ntoken = \"{TOKEN}\"\nphone_number_id = \"{PHONE_ID}\"\napp_secret = \"{APP_SECRET}\"\nverify_token = \"{VERIFY_TOKEN}\"\napi_url = \"{}\"\napi_version = \"{VERSION}\"\n{extra}\n",
            self.url
        )
    }

    /// Every send, in the order the fake answered them.
    pub fn sent(&self) -> Vec<Sent> {
        self.st.sent.lock().unwrap().clone()
    }

    /// The messages marked read, in order.
    pub fn read(&self) -> Vec<String> {
        self.st.read.lock().unwrap().clone()
    }

    /// Waits until `n` messages were marked read.
    pub async fn wait_read(&self, n: usize) -> Vec<String> {
        eventually(|| async {
            let r = self.read();
            (r.len() >= n).then_some(r)
        })
        .await
    }

    /// The sends to one recipient that the fake accepted.
    pub fn accepted_to(&self, to: &str) -> Vec<Sent> {
        let to = to.trim_start_matches('+');
        self.sent()
            .into_iter()
            .filter(|s| s.to == to && s.wamid.is_some())
            .collect()
    }

    /// Waits until `n` sends to `to` were accepted.
    pub async fn wait_accepted(&self, to: &str, n: usize) -> Vec<Sent> {
        eventually(|| async {
            let s = self.accepted_to(to);
            (s.len() >= n).then_some(s)
        })
        .await
    }

    /// Accepted sends from now on get their wamid at once but their answer only after
    /// `release_answers` (Meta's statuses can overtake a slow answer).
    pub fn hold_answers(&self) {
        self.st.held.send_replace(true);
    }

    pub fn release_answers(&self) {
        self.st.held.send_replace(false);
    }

    /// The recipient's next sends are answered with these, in order.
    pub fn script(&self, to: &str, answers: &[Script]) {
        self.st
            .script
            .lock()
            .unwrap()
            .entry(to.trim_start_matches('+').to_string())
            .or_default()
            .extend(answers);
    }

    fn wamid(&self) -> String {
        let id = format!(
            "wamid.HBgL{:08}",
            self.st.next.fetch_add(1, Ordering::Relaxed)
        );
        self.st.known.lock().unwrap().insert(id.clone());
        id
    }

    /// A customer's text message, as a webhook `value`; its wamid.
    pub fn text(&self, from: &str, name: &str, body: &str) -> (Value, String) {
        let id = self.wamid();
        let m = json!({"from": from, "id": id, "timestamp": now_secs(), "type": "text",
            "text": {"body": body}});
        (message_value(from, name, m), id)
    }

    /// A customer's image with a caption; the file is kept under its media id.
    pub fn image(
        &self,
        from: &str,
        media_id: &str,
        bytes: &[u8],
        caption: &str,
    ) -> (Value, String) {
        self.st
            .media
            .lock()
            .unwrap()
            .insert(media_id.into(), ("image/jpeg".into(), bytes.to_vec()));
        let id = self.wamid();
        let m = json!({"from": from, "id": id, "timestamp": now_secs(), "type": "image",
            "image": {"id": media_id, "mime_type": "image/jpeg", "sha256": "x", "caption": caption}});
        (message_value(from, "Customer", m), id)
    }

    /// A press on a reply button (or a list row) of our message `on`.
    pub fn press(
        &self,
        from: &str,
        on: &str,
        id: &str,
        title: &str,
        list: bool,
    ) -> (Value, String) {
        let wamid = self.wamid();
        let interactive = if list {
            json!({"type": "list_reply", "list_reply": {"id": id, "title": title, "description": ""}})
        } else {
            json!({"type": "button_reply", "button_reply": {"id": id, "title": title}})
        };
        let m = json!({"from": from, "id": wamid, "timestamp": now_secs(), "type": "interactive",
            "context": {"from": PHONE_ID, "id": on}, "interactive": interactive});
        (message_value(from, "Customer", m), wamid)
    }

    /// A press on a template's quick-reply button of our message `on`: its payload and text.
    pub fn quick_reply(&self, from: &str, on: &str, payload: &str, text: &str) -> (Value, String) {
        let wamid = self.wamid();
        let m = json!({"from": from, "id": wamid, "timestamp": now_secs(), "type": "button",
            "context": {"from": PHONE_ID, "id": on}, "button": {"payload": payload, "text": text}});
        (message_value(from, "Customer", m), wamid)
    }

    /// A delivery status of a message we sent; `error`: Meta's code for `failed`.
    pub fn status(&self, wamid: &str, to: &str, status: &str, error: Option<i64>) -> Value {
        let mut s = json!({"id": wamid, "status": status, "timestamp": now_secs(),
            "recipient_id": to.trim_start_matches('+')});
        if let Some(code) = error {
            let (_, title, details) = meta_error(code);
            s["errors"] = json!([{"code": code, "title": title, "message": title,
                "error_data": {"details": details}}]);
        }
        json!({"messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550001055", "phone_number_id": PHONE_ID},
            "statuses": [s]})
    }

    /// Delivers a webhook `value` to the gateway's channel as Meta does: signed, and again
    /// (up to 5 times) until it gets a 200. The statuses the gateway answered with.
    pub async fn deliver(&self, gateway: &str, channel: &str, value: Value) -> Vec<u16> {
        let body = envelope(value).to_string();
        let mut answers = Vec::new();
        for attempt in 0..5 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
            }
            let status = self
                .post_signed(gateway, channel, &body, Some(&sign(APP_SECRET, &body)))
                .await;
            answers.push(status);
            if status == 200 {
                break;
            }
        }
        answers
    }

    /// One webhook POST with the given signature header (none: no header).
    pub async fn post_signed(
        &self,
        gateway: &str,
        channel: &str,
        body: &str,
        signature: Option<&str>,
    ) -> u16 {
        let mut req = self
            .http
            .post(format!("{gateway}/whatsapp/{channel}"))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(s) = signature {
            req = req.header("x-hub-signature-256", s);
        }
        req.send().await.unwrap().status().as_u16()
    }
}

/// A webhook body around one change's `value`.
pub fn envelope(value: Value) -> Value {
    json!({"object": "whatsapp_business_account",
        "entry": [{"id": "WABA-1", "changes": [{"field": "messages", "value": value}]}]})
}

pub fn sign(secret: &str, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn now_secs() -> String {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string()
}

fn message_value(from: &str, name: &str, m: Value) -> Value {
    json!({"messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550001055", "phone_number_id": PHONE_ID},
        "contacts": [{"profile": {"name": name}, "wa_id": from}],
        "messages": [m]})
}

/// What Meta refuses in a template message: `(code, details)`.
fn template_problem(
    t: &Value,
    approved: &HashMap<String, (usize, usize)>,
) -> Option<(i64, String)> {
    let bad = |p: &str| Some((100, p.to_string()));
    let (Some(name), Some(_)) = (t["name"].as_str(), t["language"]["code"].as_str()) else {
        return bad("template needs name and language.code.");
    };
    let Some(&(params, buttons)) = approved.get(name) else {
        return Some((132001, format!("template name ({name}) does not exist")));
    };
    let components = match &t["components"] {
        Value::Null => Vec::new(),
        Value::Array(c) => c.clone(),
        _ => return bad("template.components must be a list."),
    };
    let mut body = 0;
    let mut quick = 0;
    for c in &components {
        let list = c["parameters"].as_array().cloned().unwrap_or_default();
        match c["type"].as_str() {
            Some("body") => {
                for p in &list {
                    if p["type"] != "text" || p["text"].as_str().is_none_or(|s| s.is_empty()) {
                        return Some((132012, "body parameters are {type: text, text}.".into()));
                    }
                }
                body += list.len();
            }
            Some("button") => {
                let index = c["index"].as_str().and_then(|i| i.parse::<usize>().ok());
                if c["sub_type"] != "quick_reply" || index.is_none() {
                    return bad(
                        "a button component needs sub_type quick_reply and a string index.",
                    );
                }
                let ok = list.len() == 1
                    && list[0]["type"] == "payload"
                    && list[0]["payload"].as_str().is_some_and(|p| !p.is_empty());
                if !ok {
                    return Some((
                        132012,
                        "a quick reply takes one {type: payload, payload}.".into(),
                    ));
                }
                quick += 1;
            }
            Some("header") => {}
            _ => return bad("component type must be header, body or button."),
        }
    }
    if body != params {
        return Some((
            132000,
            format!("body: {body} parameters given, template {name} has {params}."),
        ));
    }
    (quick > buttons).then(|| {
        (
            132000,
            format!("{quick} quick replies given, template {name} has {buttons}."),
        )
    })
}

/// What Meta refuses in a send's payload; `None` when it is well formed.
fn malformed(b: &Value, known: &HashSet<String>) -> Option<String> {
    let chars = |v: &Value| v.as_str().map(|s| s.chars().count());
    if b["messaging_product"] != "whatsapp" {
        return Some("The parameter messaging_product is required.".into());
    }
    let to = b["to"].as_str().unwrap_or_default();
    if to.is_empty() || !to.chars().all(|c| c.is_ascii_digit()) {
        return Some(format!("Invalid recipient '{to}'."));
    }
    if let Some(q) = b["context"]["message_id"].as_str() {
        if !known.contains(q) {
            return Some(format!("Unknown context message_id '{q}'."));
        }
    }
    match b["type"].as_str().unwrap_or("text") {
        "text" => match chars(&b["text"]["body"]) {
            Some(1..=4096) => None,
            _ => Some("text.body must have 1 to 4096 characters.".into()),
        },
        "interactive" => {
            let i = &b["interactive"];
            if !matches!(chars(&i["body"]["text"]), Some(1..=1024)) {
                return Some("interactive.body.text must have 1 to 1024 characters.".into());
            }
            match i["type"].as_str() {
                Some("button") => {
                    let buttons = i["action"]["buttons"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default();
                    if buttons.is_empty() || buttons.len() > 3 {
                        return Some(format!("buttons: {} given, 1 to 3 allowed.", buttons.len()));
                    }
                    let mut ids = HashSet::new();
                    for btn in &buttons {
                        if btn["type"] != "reply" {
                            return Some("button type must be reply.".into());
                        }
                        if !matches!(chars(&btn["reply"]["title"]), Some(1..=20)) {
                            return Some(
                                "Button title length invalid. Min length: 1, Max length: 20".into(),
                            );
                        }
                        let id = btn["reply"]["id"].as_str().unwrap_or_default();
                        if id.is_empty() || id.len() > 256 || !ids.insert(id.to_string()) {
                            return Some("Button ids must be unique, 1 to 256 characters.".into());
                        }
                    }
                    None
                }
                Some("list") => {
                    if !matches!(chars(&i["action"]["button"]), Some(1..=20)) {
                        return Some("action.button must have 1 to 20 characters.".into());
                    }
                    let sections = i["action"]["sections"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default();
                    let rows: Vec<Value> = sections
                        .iter()
                        .flat_map(|s| s["rows"].as_array().cloned().unwrap_or_default())
                        .collect();
                    if sections.is_empty() || rows.is_empty() || rows.len() > 10 {
                        return Some(format!("rows: {} given, 1 to 10 allowed.", rows.len()));
                    }
                    for r in &rows {
                        if !matches!(chars(&r["title"]), Some(1..=24)) {
                            return Some("Row title length invalid. Max length: 24".into());
                        }
                        if chars(&r["description"]).is_some_and(|n| n > 72) {
                            return Some("Row description length invalid. Max length: 72".into());
                        }
                    }
                    None
                }
                _ => Some("interactive.type must be button or list.".into()),
            }
        }
        // Checked on its own, with Meta's template error codes.
        "template" => None,
        kind @ ("image" | "document" | "audio" | "video") => b[kind]["link"]
            .as_str()
            .is_none()
            .then(|| format!("{kind}.link is required.")),
        other => Some(format!("Unsupported message type '{other}'.")),
    }
}

async fn send(
    State(st): State<Arc<St>>,
    Path((version, phone)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> (StatusCode, Json<Value>) {
    if !authorized(&headers) {
        return error_json(190, "Bad token.");
    }
    if version != VERSION || phone != PHONE_ID {
        return error_json(100, "Unknown phone number id or version.");
    }
    let Ok(b) = serde_json::from_slice::<Value>(&body) else {
        return error_json(100, "The request body is not JSON.");
    };
    // A read receipt: not a message, answered with success.
    if b["status"] == "read" {
        let id = b["message_id"].as_str().unwrap_or_default().to_string();
        if b["messaging_product"] != "whatsapp" || !st.known.lock().unwrap().contains(&id) {
            return error_json(100, &format!("Invalid message_id '{id}'."));
        }
        st.read.lock().unwrap().push(id);
        return (StatusCode::OK, Json(json!({"success": true})));
    }
    let to = b["to"].as_str().unwrap_or_default().to_string();
    let record = |wamid: Option<String>, error: Option<i64>| {
        st.sent.lock().unwrap().push(Sent {
            to: to.clone(),
            body: b.clone(),
            wamid,
            error,
        })
    };
    let problem = malformed(&b, &st.known.lock().unwrap());
    if let Some(p) = problem {
        record(None, Some(100));
        return error_json(100, &p);
    }
    if b["type"] == "template" {
        let problem = template_problem(&b["template"], &st.templates.lock().unwrap());
        if let Some((code, p)) = problem {
            record(None, Some(code));
            return error_json(code, &p);
        }
    }
    let scripted = st
        .script
        .lock()
        .unwrap()
        .get_mut(&to)
        .and_then(|q| q.pop_front());
    match scripted {
        Some(Script::Meta(code)) => {
            record(None, Some(code));
            let (_, _, details) = meta_error(code);
            return error_json(code, details);
        }
        Some(Script::Http(status)) => {
            record(None, Some(status as i64));
            return (
                StatusCode::from_u16(status).unwrap(),
                Json(json!({"error": {"message": "Service temporarily unavailable", "code": 2}})),
            );
        }
        None => {}
    }
    let id = format!("wamid.HBgL{:08}", st.next.fetch_add(1, Ordering::Relaxed));
    st.known.lock().unwrap().insert(id.clone());
    record(Some(id.clone()), None);
    let _ = st.held.subscribe().wait_for(|held| !held).await;
    (
        StatusCode::OK,
        Json(json!({"messaging_product": "whatsapp",
            "contacts": [{"input": to, "wa_id": to}],
            "messages": [{"id": id}]})),
    )
}

fn authorized(headers: &HeaderMap) -> bool {
    headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {TOKEN}"))
}

/// `GET /{version}/{media_id}`: where the file is.
async fn media_info(
    State(st): State<Arc<St>>,
    Path((_, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> (StatusCode, Json<Value>) {
    if !authorized(&headers) {
        return error_json(190, "Bad token.");
    }
    let Some((mime, bytes)) = st.media.lock().unwrap().get(&id).cloned() else {
        return error_json(100, "Unknown media id.");
    };
    (
        StatusCode::OK,
        Json(
            json!({"messaging_product": "whatsapp", "id": id, "mime_type": mime,
            "sha256": "x", "file_size": bytes.len(),
            "url": format!("{}/media-bytes/{id}", st.url.get().unwrap())}),
        ),
    )
}

/// The file itself.
async fn media_bytes(
    State(st): State<Arc<St>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<([(axum::http::HeaderName, String); 1], Vec<u8>), StatusCode> {
    if !authorized(&headers) {
        return Err(StatusCode::UNAUTHORIZED);
    }
    let (mime, bytes) = st
        .media
        .lock()
        .unwrap()
        .get(&id)
        .cloned()
        .ok_or(StatusCode::NOT_FOUND)?;
    Ok(([(axum::http::header::CONTENT_TYPE, mime)], bytes))
}
