//! A fake Telegram Bot API on loopback: speaks the real wire format for the methods the
//! gateway uses, records every call, serves injected updates to long polling, and can answer
//! 429 with `retry_after`. It refuses what Telegram refuses (HTML it cannot parse, bad buttons,
//! texts over the limits, callback queries answered twice), so a test sees those errors.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};
use tokio::sync::Notify;

#[derive(Debug, Clone)]
pub struct Call {
    /// Lower-case method name (Telegram's are case-insensitive).
    pub method: String,
    pub params: Value,
    pub at: Instant,
    /// For an accepted sendMessage or editMessageText: the text as the user sees it (HTML
    /// parsed when `parse_mode` is HTML, trimmed as Telegram trims). `None` for other calls,
    /// refused ones, and other parse modes (the fake does not parse Markdown).
    pub shown: Option<String>,
    /// The texts inside `<b>` and `<strong>`, as shown, in the order the tags open.
    pub bold: Vec<String>,
    /// Every tag that held some text, in the order they open.
    pub tags: Vec<Tagged>,
    /// The description of the error the fake answered with (400, 429); `None` on success.
    pub error: Option<String>,
    /// The id of the message the call sent or edited, when it answered with one.
    pub message_id: Option<i64>,
}

impl Call {
    fn new(method: String, params: Value, at: Instant) -> Call {
        Call {
            method,
            params,
            at,
            shown: None,
            bold: Vec::new(),
            tags: Vec::new(),
            error: None,
            message_id: None,
        }
    }
}

#[derive(Default)]
struct Callbacks {
    /// Callback query id → when its update was injected.
    issued: HashMap<String, Instant>,
    answered: HashSet<String>,
    /// Injection → answer, for the injected queries, in the order they were answered.
    delays: Vec<Duration>,
}

#[derive(Default)]
struct State_ {
    calls: Mutex<Vec<Call>>,
    updates: Mutex<Vec<Value>>,
    arrived: Notify,
    next_update: AtomicI64,
    next_message: AtomicI64,
    /// chat id → retry_after seconds for its next sendMessage.
    throttle: Mutex<HashMap<i64, u32>>,
    callbacks: Mutex<Callbacks>,
    /// Refuse answers to callback queries that were never injected.
    strict_callbacks: AtomicBool,
}

#[derive(Clone)]
pub struct FakeTelegram {
    pub url: String,
    state: Arc<State_>,
}

pub const TOKEN: &str = "123:TEST";

impl FakeTelegram {
    pub async fn start() -> FakeTelegram {
        let state = Arc::new(State_::default());
        state.next_update.store(1000, Ordering::Relaxed);
        state.next_message.store(1, Ordering::Relaxed);
        let app = axum::Router::new()
            .route(
                "/{bot}/{method}",
                axum::routing::post(handle).get(handle_get),
            )
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        FakeTelegram { url, state }
    }

    pub fn calls(&self, method: &str) -> Vec<Call> {
        let m = method.to_ascii_lowercase();
        self.state
            .calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.method == m)
            .cloned()
            .collect()
    }

    /// Every call the fake answered with an error, whatever its method.
    pub fn errors(&self) -> Vec<Call> {
        self.state
            .calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.error.is_some())
            .cloned()
            .collect()
    }

    /// Queues an update for getUpdates; returns its update_id. A callback query in it becomes
    /// one the fake has issued (see `strict_callbacks`).
    pub fn inject(&self, mut update: Value) -> i64 {
        let id = match update["update_id"].as_i64() {
            Some(id) => id,
            None => {
                let id = self.state.next_update.fetch_add(1, Ordering::Relaxed);
                update["update_id"] = json!(id);
                id
            }
        };
        if let Some(query) = update["callback_query"]["id"].as_str() {
            // A redelivered update keeps the time of its first delivery.
            self.state
                .callbacks
                .lock()
                .unwrap()
                .issued
                .entry(query.to_string())
                .or_insert_with(Instant::now);
        }
        self.state.updates.lock().unwrap().push(update);
        self.state.arrived.notify_waiters();
        id
    }

    /// From now on, answering a callback query that was never injected is refused, as Telegram
    /// refuses an unknown query id. Off by default: tests may post updates to the gateway's
    /// webhook directly, and the fake does not see those.
    pub fn strict_callbacks(&self) {
        self.state.strict_callbacks.store(true, Ordering::Relaxed);
    }

    /// For each injected callback query answered so far, in the order of the answers: the time
    /// from its injection to its answerCallbackQuery call.
    pub fn answer_delays(&self) -> Vec<Duration> {
        self.state.callbacks.lock().unwrap().delays.clone()
    }

    pub fn throttle_next(&self, chat: i64, retry_after: u32) {
        self.state
            .throttle
            .lock()
            .unwrap()
            .insert(chat, retry_after);
    }

    pub async fn wait_for(&self, method: &str, n: usize) -> Vec<Call> {
        crate::support::eventually(|| async {
            let c = self.calls(method);
            (c.len() >= n).then_some(c)
        })
        .await
    }
}

/// The texts sent to `chat`, in order.
pub fn texts_to(fake: &FakeTelegram, chat: i64) -> Vec<String> {
    fake.calls("sendMessage")
        .into_iter()
        .filter(|c| c.params["chat_id"] == chat)
        .map(|c| c.params["text"].as_str().unwrap().to_string())
        .collect()
}

/// The texts sent to `chat`, once there are at least `n`.
pub async fn texts_eventually(fake: &FakeTelegram, chat: i64, n: usize) -> Vec<String> {
    crate::support::eventually(|| async {
        let t = texts_to(fake, chat);
        (t.len() >= n).then_some(t)
    })
    .await
}

pub fn text_update(chat: i64, user: i64, lang: &str, text: &str) -> Value {
    json!({"message": {
        "message_id": 1, "date": 1_700_000_000,
        "chat": if chat < 0 { json!({"id": chat, "type": "group", "title": "Managers"}) }
                else { json!({"id": chat, "type": "private", "first_name": "Ann"}) },
        "from": {"id": user, "is_bot": false, "first_name": "Ann", "language_code": lang},
        "text": text,
    }})
}

/// An error answer: its HTTP status and Telegram's body.
struct Refusal {
    status: StatusCode,
    body: Value,
}

fn bad_request(what: impl std::fmt::Display) -> Refusal {
    Refusal {
        status: StatusCode::BAD_REQUEST,
        body: json!({"ok": false, "error_code": 400, "description": format!("Bad Request: {what}")}),
    }
}

const QUERY_TOO_OLD: &str = "query is too old and response timeout expired or query ID is invalid";

fn message(state: &State_, chat: &Value, text: &Value) -> Value {
    let id = state.next_message.fetch_add(1, Ordering::Relaxed);
    let chat_id = chat
        .as_i64()
        .or_else(|| chat.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or(0);
    let chat = if chat_id < 0 {
        json!({"id": chat_id, "type": "group", "title": "Managers"})
    } else {
        json!({"id": chat_id, "type": "private", "first_name": "Ann"})
    };
    json!({"message_id": id, "date": 1_700_000_000, "chat": chat, "text": text,
           "from": {"id": 1, "is_bot": true, "first_name": "Test", "username": "test_bot"}})
}

async fn handle_get(
    state: State<Arc<State_>>,
    path: Path<(String, String)>,
) -> (StatusCode, Json<Value>) {
    answer(state, path, json!({})).await
}

/// Parameters come as JSON, or as multipart form data (setWebhook, for its certificate).
async fn handle(
    state: State<Arc<State_>>,
    path: Path<(String, String)>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> (StatusCode, Json<Value>) {
    let ct = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let params = if let Some(b) = ct.split("boundary=").nth(1) {
        multipart_fields(&body, b.trim_matches('"'))
    } else {
        serde_json::from_slice(&body).unwrap_or(json!({}))
    };
    answer(state, path, params).await
}

fn multipart_fields(body: &[u8], boundary: &str) -> Value {
    let text = String::from_utf8_lossy(body);
    let mut out = serde_json::Map::new();
    for part in text.split(&format!("--{boundary}")) {
        let Some((head, value)) = part.split_once("\r\n\r\n") else {
            continue;
        };
        let Some(name) = head
            .split("name=\"")
            .nth(1)
            .and_then(|n| n.split('"').next())
        else {
            continue;
        };
        out.insert(name.to_string(), json!(value.trim_end_matches("\r\n")));
    }
    Value::Object(out)
}

async fn answer(
    State(state): State<Arc<State_>>,
    Path((_bot, method)): Path<(String, String)>,
    params: Value,
) -> (StatusCode, Json<Value>) {
    let method = method.to_ascii_lowercase();
    let mut call = Call::new(method, params, Instant::now());
    if call.method == "getupdates" {
        let params = call.params.clone();
        state.calls.lock().unwrap().push(call);
        return (StatusCode::OK, Json(poll(&state, &params).await));
    }
    // The call is recorded once answered, so a test that sees it also sees its outcome.
    let result = respond(&state, &mut call);
    let answer = match result {
        Ok(result) => {
            call.message_id = result["message_id"].as_i64();
            (StatusCode::OK, Json(json!({"ok": true, "result": result})))
        }
        Err(refusal) => {
            call.error = refusal.body["description"].as_str().map(str::to_string);
            (refusal.status, Json(refusal.body))
        }
    };
    state.calls.lock().unwrap().push(call);
    answer
}

async fn poll(state: &State_, params: &Value) -> Value {
    let offset = params["offset"].as_i64().unwrap_or(0);
    let wait = Duration::from_secs(params["timeout"].as_u64().unwrap_or(0).min(1));
    let deadline = Instant::now() + wait;
    loop {
        let notified = state.arrived.notified();
        let ready: Vec<Value> = state
            .updates
            .lock()
            .unwrap()
            .iter()
            .filter(|u| u["update_id"].as_i64().unwrap_or(0) >= offset)
            .cloned()
            .collect();
        if !ready.is_empty() || Instant::now() >= deadline {
            return json!({"ok": true, "result": ready});
        }
        let _ = tokio::time::timeout(deadline - Instant::now(), notified).await;
    }
}

fn respond(state: &State_, call: &mut Call) -> Result<Value, Refusal> {
    let params = &call.params;
    match call.method.as_str() {
        "getme" => Ok(
            json!({"id": 1, "is_bot": true, "first_name": "Test", "username": "test_bot",
            "can_join_groups": true, "can_read_all_group_messages": false, "supports_inline_queries": false,
            "can_connect_to_business": false, "has_main_web_app": false}),
        ),
        "sendmessage" => {
            let chat = params["chat_id"].as_i64().unwrap_or(0);
            if let Some(secs) = state.throttle.lock().unwrap().remove(&chat) {
                return Err(Refusal {
                    status: StatusCode::TOO_MANY_REQUESTS,
                    body: json!({"ok": false, "error_code": 429,
                        "description": format!("Too Many Requests: retry after {secs}"),
                        "parameters": {"retry_after": secs}}),
                });
            }
            check_keyboard(&params["reply_markup"])?;
            let sent = shown_text(call, "message is too long")?;
            Ok(message(state, &call.params["chat_id"], &sent))
        }
        "senddocument" => {
            // A document by URL: Telegram fetches it, so it must be an http(s) URL.
            let url = params["document"].as_str().unwrap_or_default();
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(Refusal {
                    status: StatusCode::BAD_REQUEST,
                    body: json!({"ok": false, "error_code": 400,
                        "description": "Bad Request: wrong HTTP URL specified"}),
                });
            }
            Ok(message(state, &params["chat_id"], &json!(url)))
        }
        "editmessagetext" => {
            check_keyboard(&params["reply_markup"])?;
            let sent = shown_text(call, "MESSAGE_TOO_LONG")?;
            Ok(message(state, &call.params["chat_id"], &sent))
        }
        "editmessagereplymarkup" => {
            check_keyboard(&params["reply_markup"])?;
            Ok(message(state, &params["chat_id"], &params["text"]))
        }
        "answercallbackquery" => answer_callback(state, params, call.at),
        "setwebhook" | "deletewebhook" => Ok(json!(true)),
        _ => Err(Refusal {
            status: StatusCode::NOT_FOUND,
            body: json!({"ok": false, "error_code": 404, "description": "Not Found: method not found"}),
        }),
    }
}

/// Checks a sendMessage or editMessageText text as Telegram does, fills in what the user sees,
/// and returns the text the fake's answer carries.
fn shown_text(call: &mut Call, too_long: &str) -> Result<Value, Refusal> {
    let text = call.params["text"].as_str().unwrap_or_default();
    let mode = call.params["parse_mode"].as_str().unwrap_or_default();
    let html = if mode.eq_ignore_ascii_case("html") {
        parse_html(text).map_err(|reason| bad_request(format!("can't parse entities: {reason}")))?
    } else if mode.is_empty() {
        Html {
            text: text.trim().to_string(),
            tags: Vec::new(),
        }
    } else {
        return Ok(call.params["text"].clone());
    };
    if html.text.is_empty() {
        return Err(bad_request("message text is empty"));
    }
    if html.text.chars().count() > 4096 {
        return Err(bad_request(too_long));
    }
    call.bold = html.bold();
    call.shown = Some(html.text.clone());
    call.tags = html.tags;
    Ok(json!(html.text))
}

/// An inline keyboard's buttons: a non-empty text, callback data of 1–64 bytes.
fn check_keyboard(markup: &Value) -> Result<(), Refusal> {
    // Multipart requests carry the markup as a JSON string.
    let parsed;
    let markup = match markup.as_str() {
        Some(s) => {
            parsed = serde_json::from_str(s).unwrap_or(Value::Null);
            &parsed
        }
        None => markup,
    };
    let buttons = markup["inline_keyboard"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_array)
        .flatten();
    for button in buttons {
        // Telegram itself drops a button without text silently; a missing button is a bug
        // worth an error here.
        if button["text"].as_str().unwrap_or_default().is_empty() {
            return Err(bad_request("inline keyboard button text must be non-empty"));
        }
        if let Some(data) = button.get("callback_data") {
            let len = data.as_str().map_or(0, str::len);
            if !(1..=64).contains(&len) {
                return Err(bad_request("BUTTON_DATA_INVALID"));
            }
        }
    }
    Ok(())
}

fn answer_callback(state: &State_, params: &Value, at: Instant) -> Result<Value, Refusal> {
    let text = params["text"].as_str().unwrap_or_default();
    if text.chars().count() > 200 {
        return Err(bad_request("MESSAGE_TOO_LONG"));
    }
    let id = params["callback_query_id"].as_str().unwrap_or_default();
    let mut callbacks = state.callbacks.lock().unwrap();
    let issued = callbacks.issued.get(id).copied();
    let unknown = issued.is_none() && state.strict_callbacks.load(Ordering::Relaxed);
    if unknown || !callbacks.answered.insert(id.to_string()) {
        return Err(bad_request(QUERY_TOO_OLD));
    }
    if let Some(injected) = issued {
        callbacks
            .delays
            .push(at.saturating_duration_since(injected));
    }
    Ok(json!(true))
}

pub fn click_update(chat: i64, user: i64, name: &str, data: &str, message_id: i64) -> Value {
    json!({"callback_query": {
        "id": format!("cb-{user}-{}", rand_suffix()),
        "from": {"id": user, "is_bot": false, "first_name": name, "language_code": "en"},
        "message": {"message_id": message_id, "date": 1_700_000_000,
            "chat": {"id": chat, "type": "group", "title": "Managers"}, "text": "offer"},
        "chat_instance": "ci-1",
        "data": data,
    }})
}

fn rand_suffix() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

// HTML as Telegram's Bot API parses it (TDLib's `parse_html`), with its error messages and
// byte offsets. Two rules are stricter than Telegram, which keeps such text literally: a `&`
// that starts no entity, and an unquoted attribute value. Telegram's documentation asks for
// both to be escaped or quoted, and either one in the gateway's output means data went into
// HTML unescaped.

/// A text sent with `parse_mode` HTML, as the user sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Html {
    /// Tags removed, entities decoded, white space around it trimmed.
    pub text: String,
    /// Every tag that held some text, in the order they open.
    pub tags: Vec<Tagged>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tagged {
    /// The tag's name in lower case, as written: `b` and `strong` stay apart.
    pub tag: String,
    /// The text inside it, decoded, not trimmed.
    pub text: String,
    /// The `href` of `a`, the `emoji-id` of `tg-emoji`, the language of
    /// `<code class="language-…">`, `expandable` for such a blockquote; otherwise empty.
    pub argument: String,
}

impl Html {
    /// The texts inside `<b>` and `<strong>`.
    pub fn bold(&self) -> Vec<String> {
        self.tagged(&["b", "strong"])
    }

    /// The texts inside any of these tags, in the order the tags open.
    pub fn tagged(&self, names: &[&str]) -> Vec<String> {
        self.tags
            .iter()
            .filter(|t| names.contains(&t.tag.as_str()))
            .map(|t| t.text.clone())
            .collect()
    }
}

/// The tags Telegram takes; `span` only as a spoiler.
const SUPPORTED_TAGS: &str =
    "b strong i em u ins s strike del span tg-spoiler a code pre blockquote tg-emoji";

/// TDLib's white space; NUL too, which is what it reads past the end of the text.
fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\r' | b'\n' | b'\x0b' | 0)
}

/// Parses `html` as Telegram does; the error is the reason Telegram gives after
/// "can't parse entities: ".
pub fn parse_html(html: &str) -> Result<Html, String> {
    struct Open {
        tag: String,
        argument: String,
        /// Where its text starts in `out`.
        start: usize,
        /// Its place among the tags, by opening.
        nth: usize,
    }
    let src = html.as_bytes();
    let at = |i: usize| src.get(i).copied().unwrap_or(0);
    // Slices between ASCII delimiters, so always whole UTF-8 characters.
    let text_of = |from: usize, to: usize| String::from_utf8_lossy(&src[from..to]).into_owned();
    let mut out = String::with_capacity(src.len());
    let mut open: Vec<Open> = Vec::new();
    let mut tags: Vec<(usize, Tagged)> = Vec::new();
    let mut opened = 0;
    let mut i = 0;
    while i < src.len() {
        match src[i] {
            b'&' => {
                let (c, next) = entity(src, i)?;
                out.push(c);
                i = next;
            }
            b'<' if at(i + 1) != b'/' => {
                let begin = i;
                i += 1;
                while !is_space(at(i)) && at(i) != b'>' {
                    i += 1;
                }
                if i >= src.len() {
                    return Err(format!("Unclosed start tag at byte offset {begin}"));
                }
                let tag = text_of(begin + 1, i).to_ascii_lowercase();
                if !SUPPORTED_TAGS.split(' ').any(|t| t == tag) {
                    return Err(format!(
                        "Unsupported start tag \"{tag}\" at byte offset {begin}"
                    ));
                }
                let unclosed = || format!("Unclosed start tag \"{tag}\" at byte offset {begin}");
                let mut argument = String::new();
                let mut class = None;
                loop {
                    while i < src.len() && is_space(at(i)) {
                        i += 1;
                    }
                    if at(i) == b'>' {
                        break;
                    }
                    if i >= src.len() {
                        return Err(unclosed());
                    }
                    let name_start = i;
                    while !is_space(at(i)) && !matches!(at(i), b'=' | b'>' | b'/' | b'"' | b'\'') {
                        i += 1;
                    }
                    let name = text_of(name_start, i);
                    if name.is_empty() {
                        return Err(format!(
                            "Empty attribute name in the tag \"{tag}\" at byte offset {begin}"
                        ));
                    }
                    while i < src.len() && is_space(at(i)) {
                        i += 1;
                    }
                    if at(i) != b'=' {
                        if i >= src.len() {
                            return Err(unclosed());
                        }
                        // An attribute without a value: only this one means something.
                        if tag == "blockquote" && name == "expandable" {
                            argument = name;
                        }
                        continue;
                    }
                    i += 1;
                    while i < src.len() && is_space(at(i)) {
                        i += 1;
                    }
                    if i >= src.len() {
                        return Err(unclosed());
                    }
                    let quote = at(i);
                    if quote != b'"' && quote != b'\'' {
                        return Err(format!(
                            "Unquoted value of the attribute \"{name}\" in the tag \"{tag}\" at byte offset {i}"
                        ));
                    }
                    i += 1;
                    let mut value = String::new();
                    loop {
                        match at(i) {
                            _ if i >= src.len() => {
                                return Err(format!("Unclosed start tag at byte offset {begin}"))
                            }
                            c if c == quote => {
                                i += 1;
                                break;
                            }
                            b'&' => {
                                let (c, next) = entity(src, i)?;
                                value.push(c);
                                i = next;
                            }
                            _ => {
                                let from = i;
                                while i < src.len() && at(i) != quote && at(i) != b'&' {
                                    i += 1;
                                }
                                value.push_str(&text_of(from, i));
                            }
                        }
                    }
                    if i >= src.len() {
                        return Err(format!("Unclosed start tag at byte offset {begin}"));
                    }
                    match (tag.as_str(), name.as_str()) {
                        ("a", "href") | ("tg-emoji", "emoji-id") => argument = value,
                        ("code", "class") => {
                            if let Some(language) = value.strip_prefix("language-") {
                                argument = language.to_string();
                            }
                        }
                        ("span", "class") => class = Some(value),
                        _ => {}
                    }
                }
                i += 1;
                if tag == "span" && class.as_deref() != Some("tg-spoiler") {
                    return Err(format!(
                        "Tag \"span\" must have class \"tg-spoiler\" at byte offset {begin}"
                    ));
                }
                open.push(Open {
                    tag,
                    argument,
                    start: out.len(),
                    nth: opened,
                });
                opened += 1;
            }
            b'<' => {
                let begin = i;
                let Some(top) = open.pop() else {
                    return Err(format!("Unexpected end tag at byte offset {begin}"));
                };
                i += 2;
                while !is_space(at(i)) && at(i) != b'>' {
                    i += 1;
                }
                let name = text_of(begin + 2, i).to_ascii_lowercase();
                while i < src.len() && is_space(at(i)) {
                    i += 1;
                }
                if at(i) != b'>' {
                    return Err(format!("Unclosed end tag at byte offset {begin}"));
                }
                i += 1;
                // `</>` closes whatever is open.
                if !name.is_empty() && name != top.tag {
                    return Err(format!(
                        "Unmatched end tag at byte offset {begin}, expected \"</{}>\", found \"</{name}>\"",
                        top.tag
                    ));
                }
                // Like Telegram, an empty tag makes no entity and is not checked further.
                if out.len() > top.start {
                    let emoji_id = top.argument.bytes().all(|b| b.is_ascii_digit())
                        && top.argument.parse::<i64>().is_ok_and(|id| id > 0);
                    if top.tag == "tg-emoji" && !emoji_id {
                        return Err("Invalid custom emoji identifier specified".into());
                    }
                    tags.push((
                        top.nth,
                        Tagged {
                            tag: top.tag,
                            text: out[top.start..].to_string(),
                            argument: top.argument,
                        },
                    ));
                }
            }
            _ => {
                let from = i;
                while i < src.len() && src[i] != b'&' && src[i] != b'<' {
                    i += 1;
                }
                out.push_str(&text_of(from, i));
            }
        }
    }
    if let Some(top) = open.last() {
        return Err(format!(
            "Can't find end tag corresponding to start tag \"{}\"",
            top.tag
        ));
    }
    tags.sort_by_key(|(nth, _)| *nth);
    Ok(Html {
        text: out.trim().to_string(),
        tags: tags.into_iter().map(|(_, t)| t).collect(),
    })
}

/// The entity starting with the `&` at `pos`, and where the text goes on: `&lt;`, `&gt;`,
/// `&amp;`, `&quot;` and numeric ones (`&#NNN;`, `&#xHH;`); like Telegram, the `;` may be left
/// out.
fn entity(src: &[u8], pos: usize) -> Result<(char, usize), String> {
    let at = |i: usize| src.get(i).copied().unwrap_or(0);
    let mut end = pos + 1;
    let code = if at(end) == b'#' {
        end += 1;
        let radix = if at(end) == b'x' {
            end += 1;
            16
        } else {
            10
        };
        let mut code: u64 = 0;
        while let Some(d) = (at(end) as char).to_digit(radix) {
            code = code.saturating_mul(radix.into()).saturating_add(d.into());
            end += 1;
        }
        (code != 0 && code < 0x10ffff && end - pos < 10).then_some(code as u32)
    } else {
        while at(end).is_ascii_alphabetic() {
            end += 1;
        }
        match &src[pos + 1..end] {
            b"lt" => Some('<' as u32),
            b"gt" => Some('>' as u32),
            b"amp" => Some('&' as u32),
            b"quot" => Some('"' as u32),
            _ => None,
        }
    };
    let Some(code) = code else {
        return Err(format!(
            "Character \"&\" at byte offset {pos} starts no entity (write \"&amp;\")"
        ));
    };
    let Some(c) = char::from_u32(code) else {
        return Err(
            "Text contains invalid Unicode characters after decoding HTML entities, \
                    check for unmatched surrogate code units"
                .into(),
        );
    };
    if at(end) == b';' {
        end += 1;
    }
    Ok((c, end))
}

#[cfg(test)]
mod tests {
    // The benchmark includes this file without compiling its tests: what only they use is
    // imported inside them.
    use super::*;
    use teloxide::{ApiError, Bot, RequestError};

    fn bot(fake: &FakeTelegram) -> Bot {
        Bot::new(TOKEN).set_api_url(reqwest::Url::parse(&fake.url).unwrap())
    }

    fn api_error(r: Result<impl std::fmt::Debug, RequestError>) -> String {
        match r {
            // teloxide knows some descriptions by name and keeps the others whole.
            Err(RequestError::Api(ApiError::Unknown(e))) => e,
            Err(RequestError::Api(e)) => e.to_string(),
            other => panic!("expected an API error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn html_telegram_cannot_parse_is_an_api_error_and_what_it_can_is_shown() {
        use teloxide::payloads::{EditMessageTextSetters, SendMessageSetters};
        use teloxide::requests::Requester;
        use teloxide::types::{ChatId, ParseMode};
        let fake = FakeTelegram::start().await;
        let bot = bot(&fake);
        let bad = bot
            .send_message(ChatId(5), "<b>Deal</b> for <Ann>")
            .parse_mode(ParseMode::Html)
            .await;
        let Err(RequestError::Api(ApiError::CantParseEntities(e))) = bad else {
            panic!("expected CantParseEntities, got {bad:?}");
        };
        assert_eq!(
            e,
            "Bad Request: can't parse entities: Unsupported start tag \"ann\" at byte offset 16"
        );
        let sent = bot
            .send_message(ChatId(5), "<b>Deal</b> for &lt;Ann&gt; &amp; co")
            .parse_mode(ParseMode::Html)
            .await
            .unwrap();
        assert_eq!(sent.text(), Some("Deal for <Ann> & co"));
        bot.edit_message_text(ChatId(5), sent.id, "<i>taken</i> by <b>Ann</b>")
            .parse_mode(ParseMode::Html)
            .await
            .unwrap();
        // Without a parse mode, tags are text.
        bot.send_message(ChatId(5), " a <b> b ").await.unwrap();

        let calls = fake.calls("sendMessage");
        assert_eq!(calls[0].error.as_deref(), Some(e.as_str()));
        assert_eq!(calls[0].shown, None);
        assert_eq!(calls[1].shown.as_deref(), Some("Deal for <Ann> & co"));
        assert_eq!(calls[1].bold, vec!["Deal"]);
        assert_eq!(calls[2].shown.as_deref(), Some("a <b> b"));
        let edit = &fake.calls("editMessageText")[0];
        assert_eq!(edit.shown.as_deref(), Some("taken by Ann"));
        assert_eq!(edit.bold, vec!["Ann"]);
        assert_eq!(edit.tags[0].tag, "i");
        assert_eq!(fake.errors().len(), 1);
    }

    #[tokio::test]
    async fn empty_and_too_long_texts_and_bad_buttons_are_refused() {
        use teloxide::payloads::SendMessageSetters;
        use teloxide::requests::Requester;
        use teloxide::types::{
            ChatId, InlineKeyboardButton, InlineKeyboardMarkup, MessageId, ParseMode,
        };
        let fake = FakeTelegram::start().await;
        let bot = bot(&fake);
        let html = |text: String| {
            bot.send_message(ChatId(5), text)
                .parse_mode(ParseMode::Html)
        };
        assert_eq!(
            api_error(html("<b> </b>".into()).await),
            "Bad Request: message text is empty"
        );
        // 4096 characters after parsing are fine, one more is not.
        html(format!("<b>{}</b>", "я".repeat(4096))).await.unwrap();
        assert_eq!(
            api_error(html(format!("{}&amp;", "я".repeat(4096))).await),
            "Bad Request: message is too long"
        );
        assert_eq!(
            api_error(
                bot.edit_message_text(ChatId(5), MessageId(1), "x".repeat(4097))
                    .await
            ),
            "Bad Request: MESSAGE_TOO_LONG"
        );
        let keyboard = |text: &str, data: String| {
            InlineKeyboardMarkup::new([[InlineKeyboardButton::callback(text.to_string(), data)]])
        };
        let with = |markup| bot.send_message(ChatId(5), "offer").reply_markup(markup);
        with(keyboard("Accept", "d".repeat(64))).await.unwrap();
        for (text, data, error) in [
            ("Accept", "d".repeat(65), "Bad Request: BUTTON_DATA_INVALID"),
            ("Accept", String::new(), "Bad Request: BUTTON_DATA_INVALID"),
            (
                "",
                "d".into(),
                "Bad Request: inline keyboard button text must be non-empty",
            ),
        ] {
            assert_eq!(api_error(with(keyboard(text, data)).await), error);
        }
        assert_eq!(fake.errors().len(), 6);
    }

    #[tokio::test]
    async fn callback_queries_are_answered_once_and_unknown_ones_only_when_not_strict() {
        use teloxide::payloads::AnswerCallbackQuerySetters;
        use teloxide::requests::Requester;
        use teloxide::types::CallbackQueryId;
        let fake = FakeTelegram::start().await;
        let bot = bot(&fake);
        let answer = |id: &str| bot.answer_callback_query(CallbackQueryId(id.to_string()));
        let click = click_update(-5, 7, "Ann", "o:1:0", 1);
        let id = click["callback_query"]["id"].as_str().unwrap().to_string();
        fake.inject(click);
        let injected = Instant::now();
        assert_eq!(
            api_error(answer(&id).text("x".repeat(201)).await),
            "Bad Request: MESSAGE_TOO_LONG"
        );
        let asked = Instant::now();
        answer(&id).text("y".repeat(200)).await.unwrap();
        let answered = injected.elapsed();
        assert_eq!(
            api_error(answer(&id).await),
            format!("Bad Request: {QUERY_TOO_OLD}")
        );
        // Posted to a webhook by a test, the fake never saw it: fine until strict.
        answer("cb-webhook").await.unwrap();
        fake.strict_callbacks();
        assert_eq!(
            api_error(answer("cb-never-issued").await),
            format!("Bad Request: {QUERY_TOO_OLD}")
        );
        let delays = fake.answer_delays();
        assert_eq!(delays.len(), 1);
        // Measured from the injection to the answer: at least until it was asked, at most
        // until it came back.
        assert!(delays[0] >= asked - injected, "{delays:?}");
        assert!(delays[0] <= answered, "{delays:?}");
        assert_eq!(fake.errors().len(), 3);
    }

    fn refused(html: &str) -> String {
        parse_html(html).expect_err(html)
    }

    #[test]
    fn tags_are_removed_and_entities_decoded() {
        let h = parse_html("New deal <b>A &amp; B &lt;x&gt;</b> &quot;ok&quot; &#65;&#x42; 1 > 0")
            .unwrap();
        assert_eq!(h.text, "New deal A & B <x> \"ok\" AB 1 > 0");
        assert_eq!(h.bold(), vec!["A & B <x>"]);
    }

    #[test]
    fn every_supported_tag_is_taken_and_recorded_in_opening_order() {
        let h = parse_html(concat!(
            "<b>1<i>2</i></b><STRONG>3</STRONG><em>4</em><u>5</u><ins>6</ins><s>7</s>",
            "<strike>8</strike><del>9</del><span class=\"tg-spoiler\">a</span>",
            "<tg-spoiler>b</tg-spoiler><a href=\"https://x.example/?a=1&amp;b=2\">c</a>",
            "<code>d</code><pre><code class=\"language-rust\">e</code></pre>",
            "<blockquote>f</blockquote><blockquote expandable>g</blockquote>",
            "<tg-emoji emoji-id=\"5368324170671202286\">👍</tg-emoji>",
        ))
        .unwrap();
        assert_eq!(h.text, "123456789abcdefg👍");
        let tags: Vec<_> = h.tags.iter().map(|t| t.tag.as_str()).collect();
        assert_eq!(
            tags,
            [
                "b",
                "i",
                "strong",
                "em",
                "u",
                "ins",
                "s",
                "strike",
                "del",
                "span",
                "tg-spoiler",
                "a",
                "code",
                "pre",
                "code",
                "blockquote",
                "blockquote",
                "tg-emoji"
            ]
        );
        assert_eq!(h.bold(), vec!["12", "3"]);
        assert_eq!(h.tags[11].argument, "https://x.example/?a=1&b=2");
        assert_eq!(h.tags[14].argument, "rust");
        assert_eq!(h.tags[16].argument, "expandable");
        assert_eq!(h.tags[17].argument, "5368324170671202286");
    }

    #[test]
    fn telegram_refuses_these_with_its_own_words() {
        for (html, reason) in [
            ("<br>", "Unsupported start tag \"br\" at byte offset 0"),
            ("a < b", "Unsupported start tag \"\" at byte offset 2"),
            (
                "price <100 and >50",
                "Unsupported start tag \"100\" at byte offset 6",
            ),
            ("x <b", "Unclosed start tag at byte offset 2"),
            ("<a href", "Unclosed start tag \"a\" at byte offset 0"),
            ("<a href=\"x\"", "Unclosed start tag at byte offset 0"),
            (
                "<a =\"x\">y</a>",
                "Empty attribute name in the tag \"a\" at byte offset 0",
            ),
            (
                "<span>x</span>",
                "Tag \"span\" must have class \"tg-spoiler\" at byte offset 0",
            ),
            (
                "<span class=\"tg-other\">x</span>",
                "Tag \"span\" must have class \"tg-spoiler\" at byte offset 0",
            ),
            ("x</b>", "Unexpected end tag at byte offset 1"),
            ("<b>x</b", "Unclosed end tag at byte offset 4"),
            ("<b>x</ b>", "Unclosed end tag at byte offset 4"),
            (
                "<b>x</i>",
                "Unmatched end tag at byte offset 4, expected \"</b>\", found \"</i>\"",
            ),
            (
                "<b><i>x</b></i>",
                "Unmatched end tag at byte offset 7, expected \"</i>\", found \"</b>\"",
            ),
            (
                "<b>x",
                "Can't find end tag corresponding to start tag \"b\"",
            ),
            (
                "<tg-emoji emoji-id=\"x\">y</tg-emoji>",
                "Invalid custom emoji identifier specified",
            ),
            (
                "<tg-emoji emoji-id=\"-5\">y</tg-emoji>",
                "Invalid custom emoji identifier specified",
            ),
            ("<b>привет</b> <br>", "Unsupported start tag \"br\" at byte offset 20"),
            (
                "&#xD800;",
                "Text contains invalid Unicode characters after decoding HTML entities, check for unmatched surrogate code units",
            ),
        ] {
            assert_eq!(refused(html), reason, "{html}");
        }
    }

    #[test]
    fn a_bare_ampersand_and_an_unquoted_value_are_refused() {
        for (html, offset) in [
            ("Tom & Jerry", 4),
            ("&nbsp;", 0),
            ("&copy 2024", 0),
            ("&#0;", 0),
            ("&#X41;", 0),
            ("<a href=\"?a=1&b=2\">x</a>", 13),
        ] {
            assert_eq!(
                refused(html),
                format!(
                    "Character \"&\" at byte offset {offset} starts no entity (write \"&amp;\")"
                ),
                "{html}"
            );
        }
        assert_eq!(
            refused("<a href=x>y</a>"),
            "Unquoted value of the attribute \"href\" in the tag \"a\" at byte offset 8"
        );
    }

    #[test]
    fn what_telegram_tolerates_is_accepted() {
        for (html, text) in [
            ("&lt&gt", "<>"),
            ("&#65&#x42;", "AB"),
            ("a > b", "a > b"),
            ("<B>x</B>", "x"),
            ("<b >x</b >", "x"),
            ("<b>x</>", "x"),
            ("<i class='y' title=\"z\">x</i>", "x"),
            ("<b></b>empty", "empty"),
            ("<tg-emoji emoji-id=\"x\"></tg-emoji>e", "e"),
            ("  \n padded <b>x</b> \n", "padded x"),
        ] {
            assert_eq!(parse_html(html).unwrap().text, text, "{html}");
        }
        assert!(parse_html("<b></b>").unwrap().tags.is_empty());
    }

    #[test]
    fn escaped_data_stays_data_while_the_template_s_tags_stay_tags() {
        let h = parse_html("Deal <b>&lt;b&gt;Boiler&lt;/b&gt; &amp; co</b>").unwrap();
        assert_eq!(h.text, "Deal <b>Boiler</b> & co");
        assert_eq!(h.bold(), vec!["<b>Boiler</b> & co"]);
    }
}
