//! A fake Discord on loopback: the REST API under `/api/v10` and the gateway WebSocket, as
//! strict as Discord. It refuses what Discord refuses (a missing or wrong bot token, messages
//! over the limits, bad buttons, replies to unknown messages, interactions answered late or
//! twice) with Discord's error JSON, answers 429 on demand and notes clients that retry too
//! early, and drives the gateway as Discord does (HELLO, IDENTIFY → READY, heartbeats, RESUME
//! replaying what the client missed, message content blanked without the intent). Every REST
//! call is recorded.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ed25519_dalek::{Signer, SigningKey};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message as Frame;

use crate::support::eventually_within;

pub const TOKEN: &str = "MTAwMDAwMDAwMDAwMDAwMDAx.GfakeD.discord-test-bot-token";
pub const BOT_ID: &str = "1000000000000000001";
/// A bot's application id is its user id.
pub const APP_ID: &str = BOT_ID;
pub const BOT_NAME: &str = "switchboard";
/// Discord's answer to an interaction is due within this, or the user sees "This interaction
/// failed".
pub const ANSWER_WITHIN: Duration = Duration::from_secs(3);
/// An interaction token stays valid this long for follow-ups and edits.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(15 * 60);

const DISCORD_EPOCH_MS: u64 = 1_420_070_400_000;
const GUILD_MESSAGES: u64 = 1 << 9;
const DIRECT_MESSAGES: u64 = 1 << 12;
const MESSAGE_CONTENT: u64 = 1 << 15;
const EPHEMERAL: u64 = 1 << 6;
const LOADING: u64 = 1 << 7;

/// One REST request, as it arrived.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    /// The full path, `/api/v10/...`.
    pub path: String,
    /// The query string without `?` (serenity writes `&wait=true`).
    pub query: String,
    /// The JSON body (the `payload_json` part of a multipart body); `Null` when empty, the raw
    /// text as a string when it was not JSON.
    pub body: Value,
    /// The status the fake answered with.
    pub status: u16,
    pub at: Instant,
}

/// What became of an interaction the fake dispatched.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub id: String,
    /// Dispatch → first accepted answer.
    pub acknowledged_after: Option<Duration>,
    pub callback_type: Option<u8>,
    /// The user saw "This interaction failed": no answer within 3 s.
    pub failed: bool,
    /// The text the answer showed: a type 4 or 7 answer's content, else the first content a
    /// follow-up or an edit of the original response gave.
    pub content: Option<String>,
    pub ephemeral: bool,
}

struct Stored {
    channel_id: String,
    /// Posted by the bot (or one of its interactions' answers) or by a webhook: shown by
    /// `messages`, editable.
    posted: bool,
    message: Value,
}

#[derive(Default)]
struct Messages {
    by_id: HashMap<String, Stored>,
    /// Ids of posted messages in the order they were posted.
    order: Vec<String>,
}

struct Interaction {
    id: String,
    token: String,
    channel_id: String,
    /// The message the clicked button is on.
    message_id: String,
    dispatched: Option<Instant>,
    acknowledged: Option<(Duration, u8)>,
    failed: bool,
    content: Option<String>,
    ephemeral: bool,
    /// The message `@original` names once answered.
    original: Option<String>,
}

struct Limit {
    prefix: String,
    retry_after: f64,
    /// Set when the 429 was answered: requests before this are too early.
    until: Option<Instant>,
}

struct Session {
    id: String,
    intents: u64,
    /// Every dispatch of the session: (sequence, frame).
    log: Vec<(u64, String)>,
}

struct Conn {
    id: u64,
    tx: mpsc::UnboundedSender<Cmd>,
}

enum Cmd {
    Send(String),
    /// Close the TCP connection with a reset, no close frame.
    Drop,
    Close(u16, &'static str),
}

#[derive(Default)]
struct Gateway {
    seq: u64,
    sessions: u64,
    session: Option<Session>,
    /// The identified or resumed connection dispatches go to.
    conn: Option<Conn>,
    identifies: usize,
    resumes: usize,
    readies: usize,
    heartbeats: usize,
    identify_payloads: Vec<Value>,
}

struct St {
    calls: Mutex<Vec<Call>>,
    next_id: AtomicU64,
    messages: Mutex<Messages>,
    forbidden: Mutex<Vec<String>>,
    /// Webhook id → (token, channel id).
    webhooks: Mutex<HashMap<String, (String, String)>>,
    interactions: Mutex<Vec<Interaction>>,
    limits: Mutex<Vec<Limit>>,
    too_early: AtomicUsize,
    gateway: Mutex<Gateway>,
    heartbeat_ms: AtomicU64,
    conn_ids: AtomicU64,
    api_url: String,
    ws_url: String,
}

#[derive(Clone)]
pub struct FakeDiscord {
    st: Arc<St>,
}

impl FakeDiscord {
    pub async fn start() -> FakeDiscord {
        let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ws = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let st = Arc::new(St {
            calls: Mutex::default(),
            next_id: AtomicU64::new((now_ms - DISCORD_EPOCH_MS) << 22),
            messages: Mutex::default(),
            forbidden: Mutex::default(),
            webhooks: Mutex::default(),
            interactions: Mutex::default(),
            limits: Mutex::default(),
            too_early: AtomicUsize::new(0),
            gateway: Mutex::default(),
            heartbeat_ms: AtomicU64::new(41_250),
            conn_ids: AtomicU64::new(1),
            api_url: format!("http://{}", api.local_addr().unwrap()),
            ws_url: format!("ws://{}", ws.local_addr().unwrap()),
        });
        let app = axum::Router::new().fallback(rest).with_state(st.clone());
        tokio::spawn(async move { axum::serve(api, app).await.unwrap() });
        let gw = st.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = ws.accept().await {
                tokio::spawn(connection(gw.clone(), tcp));
            }
        });
        FakeDiscord { st }
    }

    /// What `HttpBuilder::proxy` takes: `http://127.0.0.1:PORT`.
    pub fn api_url(&self) -> String {
        self.st.api_url.clone()
    }

    /// The gateway: `ws://127.0.0.1:PORT`.
    pub fn ws_url(&self) -> String {
        self.st.ws_url.clone()
    }

    /// The heartbeat interval HELLO announces to connections opened from now on.
    pub fn set_heartbeat_interval(&self, every: Duration) {
        self.st
            .heartbeat_ms
            .store(every.as_millis() as u64, Ordering::Relaxed);
    }

    /// Sends to this channel answer 403 Missing Access (the bot is not in it).
    pub fn forbid_channel(&self, channel_id: &str) {
        self.st
            .forbidden
            .lock()
            .unwrap()
            .push(channel_id.to_string());
    }

    /// An incoming webhook posting into `channel_id`.
    pub fn add_webhook(&self, id: &str, token: &str, channel_id: &str) {
        self.st
            .webhooks
            .lock()
            .unwrap()
            .insert(id.into(), (token.into(), channel_id.into()));
    }

    /// The next request whose path starts with `route_prefix` (with or without `/api/v10`)
    /// answers 429 asking to wait `retry_after` seconds; requests to it before then answer
    /// 429 again and count in `too_early`.
    pub fn rate_limit_next(&self, route_prefix: &str, retry_after: f64) {
        self.st.limits.lock().unwrap().push(Limit {
            prefix: route_prefix.to_string(),
            retry_after,
            until: None,
        });
    }

    /// Requests that came while a 429 asked to wait.
    pub fn too_early(&self) -> usize {
        self.st.too_early.load(Ordering::Relaxed)
    }

    /// Every REST request whose path starts with `path_prefix` (with or without `/api/v10`).
    pub fn calls(&self, path_prefix: &str) -> Vec<Call> {
        self.st
            .calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| route_matches(path_prefix, &c.path))
            .cloned()
            .collect()
    }

    /// Waits up to 30 s for `n` requests under `path_prefix`.
    pub async fn wait_for(&self, path_prefix: &str, n: usize) -> Vec<Call> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let calls = self.calls(path_prefix);
            if calls.len() >= n {
                return calls;
            }
            assert!(
                Instant::now() < deadline,
                "expected {n} requests to {path_prefix} within 30 s, {} came: {calls:#?}",
                calls.len()
            );
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
    }

    /// The messages posted in a channel (by the bot, its interaction answers and webhooks), as
    /// they are now, in the order they were posted. Ephemeral answers are included with flag
    /// 64; a deferred answer not yet followed up is a message with flag 128 (loading).
    pub fn messages(&self, channel_id: &str) -> Vec<Value> {
        let m = self.st.messages.lock().unwrap();
        m.order
            .iter()
            .map(|id| &m.by_id[id])
            .filter(|s| s.channel_id == channel_id)
            .map(|s| s.message.clone())
            .collect()
    }

    /// A message the fake knows (posted or built by `message_create`), as it is now.
    pub fn message(&self, id: &str) -> Option<Value> {
        let m = self.st.messages.lock().unwrap();
        m.by_id.get(id).map(|s| s.message.clone())
    }

    fn snowflake(&self) -> String {
        self.st.next_id.fetch_add(1, Ordering::Relaxed).to_string()
    }

    /// A MESSAGE_CREATE payload from a user; the fake remembers the message so the bot can
    /// reply to it.
    pub fn message_create(
        &self,
        channel_id: &str,
        guild_id: Option<&str>,
        user_id: &str,
        username: &str,
        content: &str,
        reply_to: Option<&Value>,
    ) -> Value {
        let mut m = json!({
            "id": self.snowflake(),
            "channel_id": channel_id,
            "author": user(user_id, username),
            "content": content,
            "timestamp": now_timestamp(),
            "edited_timestamp": null,
            "tts": false,
            "mention_everyone": false,
            "mentions": [],
            "mention_roles": [],
            "attachments": [],
            "embeds": [],
            "components": [],
            "pinned": false,
            "type": 0,
            "flags": 0,
            "nonce": self.snowflake(),
        });
        if let Some(g) = guild_id {
            m["guild_id"] = json!(g);
            m["member"] = json!({"roles": [], "joined_at": now_timestamp(), "deaf": false,
                "mute": false, "flags": 0});
        }
        if let Some(r) = reply_to {
            m["type"] = json!(19);
            m["message_reference"] = json!({"type": 0, "message_id": r["id"],
                "channel_id": r["channel_id"], "guild_id": guild_id});
            let mut quoted = r.clone();
            quoted.as_object_mut().unwrap().remove("referenced_message");
            m["referenced_message"] = quoted;
            if r["author"]["id"] == BOT_ID {
                m["mentions"] = json!([bot_user()]);
            }
        }
        self.st.messages.lock().unwrap().by_id.insert(
            m["id"].as_str().unwrap().to_string(),
            Stored {
                channel_id: channel_id.to_string(),
                posted: false,
                message: m.clone(),
            },
        );
        m
    }

    /// An INTERACTION_CREATE payload for a click on the button `custom_id` of `message` (as
    /// it is now, if the fake knows it). Panics when the message has no such button, since no
    /// user could click it. The 3 s for the answer start when it is dispatched.
    pub fn button_interaction(
        &self,
        message: &Value,
        guild_id: Option<&str>,
        user_id: &str,
        username: &str,
        locale: &str,
        custom_id: &str,
    ) -> (Value, String) {
        let message_id = message["id"]
            .as_str()
            .expect("message without id")
            .to_string();
        let message = self.message(&message_id).unwrap_or_else(|| message.clone());
        let clickable = message["components"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|row| row["components"].as_array().into_iter().flatten())
            .any(|c| c["type"] == 2 && c["custom_id"] == custom_id && c["disabled"] != true);
        assert!(
            clickable,
            "message {message_id} has no enabled button {custom_id:?}: {}",
            message["components"]
        );
        let id = self.snowflake();
        let token = format!("aW50ZXJhY3Rpb246{id}:fake-token");
        let channel_id = message["channel_id"].as_str().unwrap().to_string();
        let mut i = json!({
            "id": id,
            "application_id": APP_ID,
            "type": 3,
            "token": token,
            "version": 1,
            "channel_id": channel_id,
            "data": {"custom_id": custom_id, "component_type": 2},
            "message": message,
            "locale": locale,
            "entitlements": [],
            "authorizing_integration_owners": {},
            "attachment_size_limit": 8_388_608,
        });
        match guild_id {
            Some(g) => {
                i["guild_id"] = json!(g);
                i["guild_locale"] = json!("en-US");
                i["member"] = json!({"user": user(user_id, username), "roles": [],
                    "joined_at": now_timestamp(), "deaf": false, "mute": false, "flags": 0,
                    "permissions": "1024"});
            }
            None => i["user"] = user(user_id, username),
        }
        self.st.interactions.lock().unwrap().push(Interaction {
            id: id.clone(),
            token,
            channel_id,
            message_id,
            dispatched: None,
            acknowledged: None,
            failed: false,
            content: None,
            ephemeral: false,
            original: None,
        });
        (i, id)
    }

    /// The interactions dispatched so far, in order.
    pub fn interaction_outcomes(&self) -> Vec<Outcome> {
        let now = Instant::now();
        self.st
            .interactions
            .lock()
            .unwrap()
            .iter()
            .filter_map(|i| {
                let at = i.dispatched?;
                Some(Outcome {
                    id: i.id.clone(),
                    acknowledged_after: i.acknowledged.map(|a| a.0),
                    callback_type: i.acknowledged.map(|a| a.1),
                    failed: i.failed
                        || (i.acknowledged.is_none() && now.duration_since(at) > ANSWER_WITHIN),
                    content: i.content.clone(),
                    ephemeral: i.ephemeral,
                })
            })
            .collect()
    }

    /// Sends a dispatch (op 0) with the next sequence number to the bot's session, or keeps it
    /// for the RESUME replay when no connection is open. Panics before the first IDENTIFY
    /// (Discord has no session to send it to: wait for `wait_ready` first). A MESSAGE_CREATE
    /// the session's intents do not cover is not sent and gives 0; without MESSAGE_CONTENT a
    /// guild message that does not mention the bot arrives with its content blanked.
    pub fn dispatch(&self, event: &str, d: Value) -> u64 {
        if event == "INTERACTION_CREATE" {
            let mut inters = self.st.interactions.lock().unwrap();
            if let Some(i) = inters.iter_mut().find(|i| d["id"] == i.id.as_str()) {
                i.dispatched = Some(Instant::now());
            }
        }
        let mut gw = self.st.gateway.lock().unwrap();
        let intents = gw
            .session
            .as_ref()
            .expect("dispatch before the bot identified: wait_ready() first")
            .intents;
        let Some(d) = as_delivered(event, d, intents) else {
            return 0;
        };
        gw.seq += 1;
        let seq = gw.seq;
        let frame = json!({"op": 0, "t": event, "s": seq, "d": d}).to_string();
        gw.session.as_mut().unwrap().log.push((seq, frame.clone()));
        if let Some(c) = &gw.conn {
            let _ = c.tx.send(Cmd::Send(frame));
        }
        seq
    }

    /// Sends a raw gateway payload (op 7 reconnect, op 9 invalid session…) to the open
    /// connection.
    pub fn send_raw(&self, payload: Value) {
        if let Some(c) = &self.st.gateway.lock().unwrap().conn {
            let _ = c.tx.send(Cmd::Send(payload.to_string()));
        }
    }

    /// Resets the bot's connection (TCP RST, no close frame); the session stays resumable.
    pub fn drop_connection(&self) {
        let conn = self.st.gateway.lock().unwrap().conn.take();
        if let Some(c) = conn {
            let _ = c.tx.send(Cmd::Drop);
        }
    }

    pub fn identifies(&self) -> usize {
        self.st.gateway.lock().unwrap().identifies
    }

    pub fn resumes(&self) -> usize {
        self.st.gateway.lock().unwrap().resumes
    }

    pub fn heartbeats(&self) -> usize {
        self.st.gateway.lock().unwrap().heartbeats
    }

    /// The `d` of every IDENTIFY, in order.
    pub fn identify_payloads(&self) -> Vec<Value> {
        self.st.gateway.lock().unwrap().identify_payloads.clone()
    }

    /// Waits up to 30 s until a READY was sent.
    pub async fn wait_ready(&self) {
        eventually_within(Duration::from_secs(30), || async {
            (self.st.gateway.lock().unwrap().readies > 0).then_some(())
        })
        .await
    }

    /// Waits up to 30 s until `n` RESUMEs were answered with RESUMED.
    pub async fn wait_resumed(&self, n: usize) {
        eventually_within(Duration::from_secs(30), || async {
            (self.resumes() >= n).then_some(())
        })
        .await
    }
}

/// The key pair Discord would sign HTTP interactions with: `(public key in hex, signing key)`.
pub fn interaction_keys() -> (String, SigningKey) {
    let key = SigningKey::from_bytes(&[7; 32]);
    (hex::encode(key.verifying_key().to_bytes()), key)
}

/// The `X-Signature-Ed25519` of a request: the timestamp bytes followed by the raw body.
pub fn sign(key: &SigningKey, timestamp: &str, body: &[u8]) -> String {
    let mut signed = timestamp.as_bytes().to_vec();
    signed.extend_from_slice(body);
    hex::encode(key.sign(&signed).to_bytes())
}

fn user(id: &str, username: &str) -> Value {
    json!({"id": id, "username": username, "discriminator": "0", "global_name": username,
        "avatar": null})
}

fn bot_user() -> Value {
    json!({"id": BOT_ID, "username": BOT_NAME, "discriminator": "0", "global_name": null,
        "avatar": null, "bot": true})
}

fn now_timestamp() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, false)
}

fn route_matches(prefix: &str, path: &str) -> bool {
    path.starts_with(prefix)
        || path
            .strip_prefix("/api/v10")
            .is_some_and(|p| p.starts_with(prefix))
}

/// A dispatch as the session's intents let Discord send it.
fn as_delivered(event: &str, mut d: Value, intents: u64) -> Option<Value> {
    if event != "MESSAGE_CREATE" && event != "MESSAGE_UPDATE" {
        return Some(d);
    }
    let in_guild = d.get("guild_id").is_some_and(|g| !g.is_null());
    let needed = if in_guild {
        GUILD_MESSAGES
    } else {
        DIRECT_MESSAGES
    };
    if intents & needed == 0 {
        return None;
    }
    let mentions_bot = d["mentions"]
        .as_array()
        .is_some_and(|m| m.iter().any(|u| u["id"] == BOT_ID));
    if in_guild && intents & MESSAGE_CONTENT == 0 && !mentions_bot && d["author"]["id"] != BOT_ID {
        d["content"] = json!("");
        d["embeds"] = json!([]);
        d["attachments"] = json!([]);
        d["components"] = json!([]);
    }
    Some(d)
}

// ---------------------------------------------------------------------------------------------
// REST

fn reply(status: u16, body: Value) -> Response {
    (StatusCode::from_u16(status).unwrap(), Json(body)).into_response()
}

fn error(status: u16, code: u64, message: &str) -> Response {
    reply(status, json!({"message": message, "code": code}))
}

fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

/// The `payload_json` part of a multipart body.
fn payload_json(content_type: &str, body: &[u8]) -> Option<Vec<u8>> {
    let boundary = content_type.split("boundary=").nth(1)?.trim_matches('"');
    let text = String::from_utf8_lossy(body);
    text.split(&format!("--{boundary}")).find_map(|part| {
        let (head, rest) = part.split_once("\r\n\r\n")?;
        head.contains("name=\"payload_json\"")
            .then(|| rest.trim_end_matches("\r\n").as_bytes().to_vec())
    })
}

async fn rest(
    State(st): State<Arc<St>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    let at = Instant::now();
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let bytes = if content_type.starts_with("multipart/form-data") {
        payload_json(content_type, &raw).unwrap_or_default()
    } else {
        raw.to_vec()
    };
    let body = if bytes.is_empty() {
        Ok(Value::Null)
    } else {
        serde_json::from_slice::<Value>(&bytes)
            .map_err(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    let path = uri.path().to_string();
    let query = uri.query().unwrap_or_default().to_string();
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
    let response = answer(&st, method.as_str(), &path, &query, auth, body.clone());
    st.calls.lock().unwrap().push(Call {
        method: method.to_string(),
        path,
        query,
        body: body.unwrap_or_else(|raw| raw),
        status: response.status().as_u16(),
        at,
    });
    response
}

fn answer(
    st: &St,
    method: &str,
    path: &str,
    query: &str,
    auth: Option<&str>,
    body: Result<Value, Value>,
) -> Response {
    let Some(route) = path.strip_prefix("/api/v10/") else {
        return error(404, 0, "404: Not Found");
    };
    let segs: Vec<&str> = route.split('/').collect();
    // Webhook and interaction-token routes need no bot token, but a wrong one is refused.
    let token_route = matches!(segs[..], ["webhooks", ..] | ["interactions", ..]);
    let authorized = auth == Some(&format!("Bot {TOKEN}")) || (token_route && auth.is_none());
    if !authorized {
        return error(401, 0, "401: Unauthorized");
    }
    if let Some(limited) = rate_limited(st, path) {
        return limited;
    }
    let body = match body {
        Ok(b) => b,
        Err(_) => return error(400, 50109, "The request body contains invalid JSON."),
    };
    match (method, segs.as_slice()) {
        ("GET", ["gateway"]) => reply(200, json!({"url": st.ws_url})),
        ("GET", ["gateway", "bot"]) => reply(
            200,
            json!({"url": st.ws_url, "shards": 1, "session_start_limit":
                {"total": 1000, "remaining": 999, "reset_after": 14_400_000, "max_concurrency": 1}}),
        ),
        ("GET", ["users", "@me"]) => reply(200, bot_user()),
        // A DM channel with a user: one per user (its id is the user's plus one here).
        ("POST", ["users", "@me", "channels"]) => {
            match body["recipient_id"]
                .as_str()
                .and_then(|r| r.parse::<u64>().ok())
            {
                Some(user_id) => reply(
                    200,
                    json!({"id": (user_id + 1).to_string(), "type": 1, "last_message_id": null,
                        "recipients": [user(&user_id.to_string(), "user")], "flags": 0}),
                ),
                None => error(400, 50035, "Invalid Form Body"),
            }
        }
        ("POST", ["channels", channel, "messages"]) => create_message(st, channel, &body),
        ("PATCH", ["channels", channel, "messages", id]) => {
            if let Some(refused) = channel_refused(st, channel) {
                return refused;
            }
            match edit(st, channel, id, &body) {
                Ok(m) => reply(200, m),
                Err(r) => *r,
            }
        }
        ("POST", ["interactions", id, token, "callback"]) => callback(st, id, token, &body),
        ("POST", ["webhooks", id, token]) => {
            if *id == APP_ID && interaction_by_token(st, token).is_some() {
                follow_up(st, token, &body)
            } else {
                execute_webhook(st, id, token, query, &body)
            }
        }
        ("PATCH", ["webhooks", app, token, "messages", id]) if *app == APP_ID => {
            edit_interaction_message(st, token, id, &body)
        }
        (_, ["gateway" | "users" | "channels" | "interactions" | "webhooks", ..]) => {
            error(405, 0, "405: Method Not Allowed")
        }
        _ => error(404, 0, "404: Not Found"),
    }
}

fn rate_limited(st: &St, path: &str) -> Option<Response> {
    let now = Instant::now();
    let mut limits = st.limits.lock().unwrap();
    limits.retain(|l| l.until.is_none_or(|u| u > now));
    if let Some(l) = limits
        .iter()
        .find(|l| l.until.is_some() && route_matches(&l.prefix, path))
    {
        st.too_early.fetch_add(1, Ordering::Relaxed);
        let left = l.until.unwrap().duration_since(now).as_secs_f64();
        return Some(too_many(&l.prefix, left));
    }
    let l = limits.iter_mut().find(|l| route_matches(&l.prefix, path))?;
    l.until = Some(now + Duration::from_secs_f64(l.retry_after));
    Some(too_many(&l.prefix, l.retry_after))
}

fn too_many(prefix: &str, retry_after: f64) -> Response {
    let retry_after = (retry_after * 1000.0).ceil() / 1000.0;
    let reset = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        + retry_after;
    let bucket: u64 = prefix.bytes().fold(1469598103934665603, |h, b| {
        (h ^ b as u64).wrapping_mul(1099511628211)
    });
    let mut r = reply(
        429,
        json!({"message": "You are being rate limited.", "retry_after": retry_after,
            "global": false}),
    );
    let h = r.headers_mut();
    for (name, value) in [
        ("retry-after", format!("{}", retry_after.ceil() as u64)),
        ("x-ratelimit-limit", "5".into()),
        ("x-ratelimit-remaining", "0".into()),
        ("x-ratelimit-reset", format!("{reset:.3}")),
        ("x-ratelimit-reset-after", format!("{retry_after:.3}")),
        ("x-ratelimit-bucket", format!("{bucket:016x}")),
        ("x-ratelimit-scope", "user".into()),
    ] {
        h.insert(name, value.parse().unwrap());
    }
    r
}

fn channel_refused(st: &St, channel: &str) -> Option<Response> {
    if !is_snowflake(channel) {
        return Some(form_error(vec![(
            vec!["channel_id".into()],
            "NUMBER_TYPE_COERCE",
            format!("Value \"{channel}\" is not snowflake."),
        )]));
    }
    st.forbidden
        .lock()
        .unwrap()
        .iter()
        .any(|c| c == channel)
        .then(|| error(403, 50001, "Missing Access"))
}

fn is_snowflake(s: &str) -> bool {
    !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit())
}

type Problem = (Vec<String>, &'static str, String);

/// An error answer, boxed: a `Response` is large.
type Refused = Box<Response>;

fn form_error(problems: Vec<Problem>) -> Response {
    let mut errors = json!({});
    for (path, code, message) in problems {
        let mut node = &mut errors;
        for p in path {
            node = node
                .as_object_mut()
                .unwrap()
                .entry(p)
                .or_insert_with(|| json!({}));
        }
        node.as_object_mut()
            .unwrap()
            .entry("_errors")
            .or_insert_with(|| json!([]))
            .as_array_mut()
            .unwrap()
            .push(json!({"code": code, "message": message}));
    }
    reply(
        400,
        json!({"code": 50035, "message": "Invalid Form Body", "errors": errors}),
    )
}

fn chars(v: &Value) -> usize {
    v.as_str().map_or(0, |s| s.chars().count())
}

/// A path into a request body, for Discord's nested `errors`.
macro_rules! at {
    ($($p:expr),*) => { vec![$($p.to_string()),*] };
}

fn too_long(max: usize) -> String {
    format!("Must be {max} or fewer in length.")
}

/// Checks a message's content, embeds and components as Discord does; each problem is a path
/// into the body with Discord's error code.
fn message_problems(m: &Value) -> Vec<Problem> {
    let mut out: Vec<Problem> = Vec::new();
    match &m["content"] {
        Value::Null => {}
        Value::String(s) if s.chars().count() > 2000 => {
            out.push((at!["content"], "BASE_TYPE_MAX_LENGTH", too_long(2000)))
        }
        Value::String(_) => {}
        _ => out.push((
            at!["content"],
            "STRING_TYPE_CONVERT",
            "Not a string.".into(),
        )),
    }
    match &m["embeds"] {
        Value::Null => {}
        Value::Array(embeds) => embed_problems(embeds, &mut out),
        _ => out.push((at!["embeds"], "LIST_TYPE_CONVERT", "Not a list.".into())),
    }
    match &m["components"] {
        Value::Null => {}
        Value::Array(rows) => component_problems(rows, &mut out),
        _ => out.push((at!["components"], "LIST_TYPE_CONVERT", "Not a list.".into())),
    }
    out
}

fn embed_problems(embeds: &[Value], out: &mut Vec<Problem>) {
    if embeds.len() > 10 {
        out.push((at!["embeds"], "BASE_TYPE_MAX_LENGTH", too_long(10)));
    }
    let mut total = 0;
    for (i, e) in embeds.iter().enumerate() {
        for (path, v, max) in [
            (at!["embeds", i, "title"], &e["title"], 256),
            (at!["embeds", i, "description"], &e["description"], 4096),
            (
                at!["embeds", i, "footer", "text"],
                &e["footer"]["text"],
                2048,
            ),
            (
                at!["embeds", i, "author", "name"],
                &e["author"]["name"],
                256,
            ),
        ] {
            total += chars(v);
            if chars(v) > max {
                out.push((path, "BASE_TYPE_MAX_LENGTH", too_long(max)));
            }
        }
        let fields = e["fields"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        if fields.len() > 25 {
            out.push((
                at!["embeds", i, "fields"],
                "BASE_TYPE_MAX_LENGTH",
                too_long(25),
            ));
        }
        for (j, f) in fields.iter().enumerate() {
            for (field, max) in [("name", 256), ("value", 1024)] {
                total += chars(&f[field]);
                let path = at!["embeds", i, "fields", j, field];
                if !f[field].is_string() {
                    out.push((path, "BASE_TYPE_REQUIRED", "This field is required".into()));
                } else if chars(&f[field]) > max {
                    out.push((path, "BASE_TYPE_MAX_LENGTH", too_long(max)));
                }
            }
        }
    }
    if total > 6000 {
        out.push((
            at!["embeds"],
            "MAX_EMBED_SIZE_EXCEEDED",
            "Embed size exceeds maximum size of 6000".into(),
        ));
    }
}

fn component_problems(rows: &[Value], out: &mut Vec<Problem>) {
    if rows.len() > 5 {
        out.push((at!["components"], "BASE_TYPE_MAX_LENGTH", too_long(5)));
    }
    let mut custom_ids: Vec<&str> = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        if row["type"] != 1 {
            out.push((
                at!["components", i, "type"],
                "UNION_TYPE_CHOICES",
                "Value of field \"type\" must be one of (1,).".into(),
            ));
            continue;
        }
        let items = row["components"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        if items.is_empty() || items.len() > 5 {
            out.push((
                at!["components", i, "components"],
                "BASE_TYPE_BAD_LENGTH",
                "Must be between 1 and 5 in length.".into(),
            ));
        }
        for (j, c) in items.iter().enumerate() {
            let path = |field: &str| at!["components", i, "components", j, field];
            let custom_id = c["custom_id"].as_str();
            if let Some(id) = custom_id {
                if id.is_empty() || id.chars().count() > 100 {
                    out.push((
                        path("custom_id"),
                        "BASE_TYPE_BAD_LENGTH",
                        "Must be between 1 and 100 in length.".into(),
                    ));
                }
                if custom_ids.contains(&id) {
                    out.push((
                        path("custom_id"),
                        "COMPONENT_CUSTOM_ID_DUPLICATED",
                        "Component custom id cannot be duplicated".into(),
                    ));
                }
                custom_ids.push(id);
            }
            match c["type"].as_u64() {
                Some(2) => {
                    let style = c["style"].as_u64();
                    if chars(&c["label"]) > 80 {
                        out.push((path("label"), "BASE_TYPE_MAX_LENGTH", too_long(80)));
                    }
                    if c["label"].is_null() && c["emoji"].is_null() {
                        out.push((
                            path("label"),
                            "BASE_TYPE_REQUIRED",
                            "This field is required".into(),
                        ));
                    }
                    match style {
                        Some(1..=4) => {
                            if custom_id.is_none() {
                                out.push((
                                    path("custom_id"),
                                    "BASE_TYPE_REQUIRED",
                                    "This field is required".into(),
                                ));
                            }
                            if !c["url"].is_null() {
                                out.push((
                                    path("url"),
                                    "BUTTON_COMPONENT_URL_NOT_ALLOWED",
                                    "A URL is only allowed on link buttons".into(),
                                ));
                            }
                        }
                        Some(5) => {
                            if !c["url"].is_string() {
                                out.push((
                                    path("url"),
                                    "BASE_TYPE_REQUIRED",
                                    "This field is required".into(),
                                ));
                            } else if chars(&c["url"]) > 512 {
                                out.push((path("url"), "BASE_TYPE_MAX_LENGTH", too_long(512)));
                            }
                            if custom_id.is_some() {
                                out.push((
                                    path("custom_id"),
                                    "BUTTON_COMPONENT_CUSTOM_ID_NOT_ALLOWED",
                                    "A custom id is not allowed on link buttons".into(),
                                ));
                            }
                        }
                        _ => out.push((
                            path("style"),
                            "BASE_TYPE_CHOICES",
                            "Value must be one of {1, 2, 3, 4, 5}.".into(),
                        )),
                    }
                }
                // Select menus fill a row on their own.
                Some(3 | 5 | 6 | 7 | 8) => {
                    if custom_id.is_none() {
                        out.push((
                            path("custom_id"),
                            "BASE_TYPE_REQUIRED",
                            "This field is required".into(),
                        ));
                    }
                    if items.len() > 1 {
                        out.push((
                            at!["components", i, "components"],
                            "COMPONENT_LAYOUT_WIDTH_EXCEEDED",
                            "The specified component exceeds the maximum width".into(),
                        ));
                    }
                    let options = c["options"].as_array().map_or(0, Vec::len);
                    if c["type"] == 3 && !(1..=25).contains(&options) {
                        out.push((
                            path("options"),
                            "BASE_TYPE_BAD_LENGTH",
                            "Must be between 1 and 25 in length.".into(),
                        ));
                    }
                }
                _ => out.push((
                    path("type"),
                    "UNION_TYPE_CHOICES",
                    "Value of field \"type\" must be one of (2, 3, 5, 6, 7, 8).".into(),
                )),
            }
        }
    }
}

fn is_empty_message(m: &Value) -> bool {
    let none = |k: &str| m[k].as_array().is_none_or(Vec::is_empty);
    m["content"].as_str().is_none_or(str::is_empty)
        && none("embeds")
        && none("components")
        && none("sticker_ids")
        && m["poll"].is_null()
}

/// Refuses a message Discord would refuse, or passes it on.
fn valid(m: &Value) -> Result<(), Refused> {
    let problems = message_problems(m);
    if !problems.is_empty() {
        return Err(form_error(problems).into());
    }
    if is_empty_message(m) {
        return Err(error(400, 50006, "Cannot send an empty message").into());
    }
    Ok(())
}

/// A message as Discord answers it, stored as posted.
fn post(
    st: &St,
    channel_id: &str,
    author: Value,
    body: &Value,
    referenced: Option<Value>,
    webhook_id: Option<&str>,
) -> Value {
    let id = st.next_id.fetch_add(1, Ordering::Relaxed).to_string();
    let flags = body["flags"].as_u64().unwrap_or(0);
    let mut m = json!({
        "id": id,
        "channel_id": channel_id,
        "author": author,
        "content": body["content"].as_str().unwrap_or_default(),
        "timestamp": now_timestamp(),
        "edited_timestamp": null,
        "tts": body["tts"].as_bool().unwrap_or(false),
        "mention_everyone": false,
        "mentions": [],
        "mention_roles": [],
        "attachments": [],
        "embeds": body["embeds"].as_array().cloned().unwrap_or_default(),
        "components": body["components"].as_array().cloned().unwrap_or_default(),
        "pinned": false,
        "type": 0,
        "flags": flags,
    });
    if let Some(w) = webhook_id {
        m["webhook_id"] = json!(w);
    }
    if let Some(r) = referenced {
        m["type"] = json!(19);
        m["message_reference"] = json!({"type": 0, "message_id": r["id"],
            "channel_id": r["channel_id"], "guild_id": r["guild_id"]});
        m["referenced_message"] = r;
    }
    let mut msgs = st.messages.lock().unwrap();
    msgs.by_id.insert(
        id.clone(),
        Stored {
            channel_id: channel_id.to_string(),
            posted: true,
            message: m.clone(),
        },
    );
    msgs.order.push(id);
    m
}

fn create_message(st: &St, channel: &str, body: &Value) -> Response {
    if let Some(refused) = channel_refused(st, channel) {
        return refused;
    }
    if let Err(refused) = valid(body) {
        return *refused;
    }
    let mut referenced = None;
    let reference = &body["message_reference"];
    if !reference.is_null() {
        let id = reference["message_id"].as_str().unwrap_or_default();
        let same_channel = reference["channel_id"]
            .as_str()
            .is_none_or(|c| c == channel);
        let found = {
            let msgs = st.messages.lock().unwrap();
            msgs.by_id
                .get(id)
                .filter(|s| s.channel_id == channel && same_channel)
                .map(|s| {
                    let mut m = s.message.clone();
                    m.as_object_mut().unwrap().remove("referenced_message");
                    m
                })
        };
        match found {
            Some(m) => referenced = Some(m),
            // Discord sends without the reply when asked not to fail.
            None if reference["fail_if_not_exists"] == false => {}
            None => {
                return form_error(vec![(
                    at!["message_reference"],
                    "MESSAGE_REFERENCE_UNKNOWN_MESSAGE",
                    "Unknown message".into(),
                )])
            }
        }
    }
    reply(200, post(st, channel, bot_user(), body, referenced, None))
}

/// Applies an edit to a posted message in `channel` after checking the result.
fn edit(st: &St, channel: &str, id: &str, patch: &Value) -> Result<Value, Refused> {
    let mut msgs = st.messages.lock().unwrap();
    let Some(stored) = msgs.by_id.get_mut(id).filter(|s| s.channel_id == channel) else {
        return Err(error(404, 10008, "Unknown Message").into());
    };
    if !stored.posted {
        return Err(error(403, 50005, "Cannot edit a message authored by another user").into());
    }
    let mut m = stored.message.clone();
    for key in ["content", "embeds", "components"] {
        if let Some(v) = patch.get(key) {
            m[key] = if v.is_null() {
                if key == "content" {
                    json!("")
                } else {
                    json!([])
                }
            } else {
                v.clone()
            };
        }
    }
    let problems = message_problems(patch);
    if !problems.is_empty() {
        return Err(form_error(problems).into());
    }
    if is_empty_message(&m) {
        return Err(error(400, 50006, "Cannot send an empty message").into());
    }
    let flags = m["flags"].as_u64().unwrap_or(0);
    m["flags"] = json!(flags & !LOADING);
    m["edited_timestamp"] = json!(now_timestamp());
    stored.message = m.clone();
    Ok(m)
}

fn interaction_by_token(st: &St, token: &str) -> Option<usize> {
    st.interactions
        .lock()
        .unwrap()
        .iter()
        .position(|i| i.token == token && i.dispatched.is_some())
}

fn callback(st: &St, id: &str, token: &str, body: &Value) -> Response {
    let now = Instant::now();
    let mut inters = st.interactions.lock().unwrap();
    let Some(i) = inters
        .iter_mut()
        .find(|i| i.id == id && i.dispatched.is_some())
    else {
        return error(404, 10062, "Unknown interaction");
    };
    if i.token != token {
        return error(401, 50027, "Invalid Webhook Token");
    }
    if i.acknowledged.is_some() {
        return error(400, 40060, "Interaction has already been acknowledged.");
    }
    let elapsed = now.duration_since(i.dispatched.unwrap());
    if elapsed > ANSWER_WITHIN {
        i.failed = true;
        return error(404, 10062, "Unknown interaction");
    }
    let data = &body["data"];
    let flags = data["flags"].as_u64().unwrap_or(0);
    let kind = body["type"].as_u64().unwrap_or(0) as u8;
    match kind {
        4 => {
            if let Err(refused) = valid(data) {
                return *refused;
            }
            let m = post(st, &i.channel_id, bot_user(), data, None, None);
            i.original = m["id"].as_str().map(String::from);
            i.content = Some(m["content"].as_str().unwrap().to_string());
            i.ephemeral = flags & EPHEMERAL != 0;
        }
        5 => {
            let loading = json!({"flags": (flags & EPHEMERAL) | LOADING});
            let m = post(st, &i.channel_id, bot_user(), &loading, None, None);
            i.original = m["id"].as_str().map(String::from);
            i.ephemeral = flags & EPHEMERAL != 0;
        }
        6 => i.original = Some(i.message_id.clone()),
        7 => {
            let (channel, message) = (i.channel_id.clone(), i.message_id.clone());
            let m = match edit(st, &channel, &message, data) {
                Ok(m) => m,
                Err(refused) => return *refused,
            };
            i.original = Some(message);
            i.content = Some(m["content"].as_str().unwrap_or_default().to_string());
        }
        _ => {
            return form_error(vec![(
                at!["type"],
                "BASE_TYPE_CHOICES",
                "Value must be one of {4, 5, 6, 7, 8, 9, 10, 12} for a component interaction."
                    .into(),
            )])
        }
    }
    i.acknowledged = Some((elapsed, kind));
    no_content()
}

/// The interaction a token belongs to, if it may still be followed up.
fn answered(i: &Interaction) -> Result<(), Refused> {
    if i.acknowledged.is_none() {
        return Err(error(404, 10015, "Unknown Webhook").into());
    }
    if i.dispatched.unwrap().elapsed() > TOKEN_LIFETIME {
        return Err(error(401, 50027, "Invalid Webhook Token").into());
    }
    Ok(())
}

fn follow_up(st: &St, token: &str, body: &Value) -> Response {
    let mut inters = st.interactions.lock().unwrap();
    let i = inters.iter_mut().find(|i| i.token == token).unwrap();
    if let Err(refused) = answered(i) {
        return *refused;
    }
    let original_loading = i.original.as_ref().and_then(|id| {
        let msgs = st.messages.lock().unwrap();
        let flags = msgs.by_id.get(id)?.message["flags"].as_u64()?;
        (flags & LOADING != 0).then(|| id.clone())
    });
    // The first follow-up after a deferred answer replaces the "is thinking…" message.
    let result = match original_loading {
        Some(id) => edit(st, &i.channel_id.clone(), &id, body),
        None => valid(body).map(|()| post(st, &i.channel_id, bot_user(), body, None, None)),
    };
    match result {
        Ok(m) => {
            if i.content.is_none() {
                i.content = m["content"].as_str().map(String::from);
                // What the clicker saw: the first follow-up, only to them or to everyone.
                i.ephemeral = m["flags"].as_u64().unwrap_or(0) & EPHEMERAL != 0;
            }
            reply(200, m)
        }
        Err(refused) => *refused,
    }
}

fn edit_interaction_message(st: &St, token: &str, id: &str, body: &Value) -> Response {
    let mut inters = st.interactions.lock().unwrap();
    let Some(i) = inters
        .iter_mut()
        .find(|i| i.token == token && i.dispatched.is_some())
    else {
        return error(404, 10015, "Unknown Webhook");
    };
    if let Err(refused) = answered(i) {
        return *refused;
    }
    let target = if id == "@original" {
        i.original.clone().unwrap_or_default()
    } else {
        id.to_string()
    };
    match edit(st, &i.channel_id.clone(), &target, body) {
        Ok(m) => {
            if i.content.is_none() {
                i.content = m["content"].as_str().map(String::from);
            }
            reply(200, m)
        }
        Err(refused) => *refused,
    }
}

fn execute_webhook(st: &St, id: &str, token: &str, query: &str, body: &Value) -> Response {
    let Some((known, channel)) = st.webhooks.lock().unwrap().get(id).cloned() else {
        return error(404, 10015, "Unknown Webhook");
    };
    if known != token {
        return error(401, 50027, "Invalid Webhook Token");
    }
    if let Err(refused) = valid(body) {
        return *refused;
    }
    let author = json!({"id": id, "username": body["username"].as_str().unwrap_or("Captain Hook"),
        "discriminator": "0000", "avatar": null, "bot": true});
    let m = post(st, &channel, author, body, None, Some(id));
    if query.split('&').any(|kv| kv == "wait=true") {
        reply(200, m)
    } else {
        no_content()
    }
}

// ---------------------------------------------------------------------------------------------
// Gateway

async fn connection(st: Arc<St>, tcp: tokio::net::TcpStream) {
    let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
        return;
    };
    let conn_id = st.conn_ids.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let hello =
        json!({"op": 10, "d": {"heartbeat_interval": st.heartbeat_ms.load(Ordering::Relaxed)}});
    if ws.send(Frame::Text(hello.to_string())).await.is_err() {
        return;
    }
    let mut authenticated = false;
    loop {
        tokio::select! {
            cmd = rx.recv() => match cmd {
                Some(Cmd::Send(text)) => {
                    if ws.send(Frame::Text(text)).await.is_err() {
                        break;
                    }
                }
                Some(Cmd::Close(code, reason)) => {
                    let frame = CloseFrame { code: code.into(), reason: reason.into() };
                    let _ = ws.send(Frame::Close(Some(frame))).await;
                    break;
                }
                Some(Cmd::Drop) | None => {
                    // A reset, as when a network path dies: no close frame, no FIN.
                    let _ = ws.get_ref().set_zero_linger();
                    break;
                }
            },
            frame = ws.next() => match frame {
                Some(Ok(Frame::Text(text))) => on_op(&st, conn_id, &tx, &mut authenticated, &text),
                Some(Ok(Frame::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
        }
    }
    let mut gw = st.gateway.lock().unwrap();
    if gw.conn.as_ref().is_some_and(|c| c.id == conn_id) {
        gw.conn = None;
    }
}

fn token_ok(d: &Value) -> bool {
    let token = d["token"].as_str().unwrap_or_default();
    token.strip_prefix("Bot ").unwrap_or(token) == TOKEN
}

/// Answers one gateway payload from the client. Everything sent goes through `tx`, in order
/// with dispatches, under the gateway lock.
fn on_op(
    st: &St,
    conn_id: u64,
    tx: &mpsc::UnboundedSender<Cmd>,
    authenticated: &mut bool,
    text: &str,
) {
    let send = |v: Value| {
        let _ = tx.send(Cmd::Send(v.to_string()));
    };
    let close = |code, reason| {
        let _ = tx.send(Cmd::Close(code, reason));
    };
    let Ok(p) = serde_json::from_str::<Value>(text) else {
        return close(4002, "Error while decoding payload.");
    };
    let d = &p["d"];
    let mut gw = st.gateway.lock().unwrap();
    match p["op"].as_u64() {
        Some(1) => {
            gw.heartbeats += 1;
            send(json!({"op": 11}));
        }
        Some(2) => {
            if *authenticated {
                return close(4005, "Already authenticated.");
            }
            gw.identify_payloads.push(d.clone());
            if !token_ok(d) {
                return close(4004, "Authentication failed.");
            }
            let Some(intents) = d["intents"].as_u64() else {
                return close(4013, "Invalid intent(s).");
            };
            gw.identifies += 1;
            gw.sessions += 1;
            gw.seq += 1;
            let session_id = format!("fake-session-{}", gw.sessions);
            let ready = json!({"op": 0, "t": "READY", "s": gw.seq, "d": {
                "v": 10,
                "user": bot_user(),
                "guilds": [],
                "session_id": session_id,
                "resume_gateway_url": st.ws_url,
                "shard": [0, 1],
                "application": {"id": APP_ID, "flags": 0},
            }})
            .to_string();
            gw.session = Some(Session {
                id: session_id,
                intents,
                log: vec![(gw.seq, ready.clone())],
            });
            let _ = tx.send(Cmd::Send(ready));
            gw.readies += 1;
            *authenticated = true;
            gw.conn = Some(Conn {
                id: conn_id,
                tx: tx.clone(),
            });
        }
        Some(6) => {
            if !token_ok(d) {
                return close(4004, "Authentication failed.");
            }
            let seq = d["seq"].as_u64();
            let current = gw.seq;
            let resumable = gw.session.as_ref().is_some_and(|s| {
                d["session_id"] == s.id.as_str() && seq.is_some_and(|n| n <= current)
            });
            if !resumable {
                return send(json!({"op": 9, "d": false}));
            }
            let seq = seq.unwrap();
            for (_, frame) in gw
                .session
                .as_ref()
                .unwrap()
                .log
                .iter()
                .filter(|(s, _)| *s > seq)
            {
                let _ = tx.send(Cmd::Send(frame.clone()));
            }
            gw.seq += 1;
            let resumed = json!({"op": 0, "t": "RESUMED", "s": gw.seq, "d": {}}).to_string();
            let seq = gw.seq;
            gw.session
                .as_mut()
                .unwrap()
                .log
                .push((seq, resumed.clone()));
            let _ = tx.send(Cmd::Send(resumed));
            gw.resumes += 1;
            *authenticated = true;
            gw.conn = Some(Conn {
                id: conn_id,
                tx: tx.clone(),
            });
        }
        Some(3 | 4 | 8) if *authenticated => {}
        Some(3 | 4 | 8) => close(4003, "Not authenticated."),
        _ => close(4001, "Unknown opcode."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serenity::all::{
        ButtonStyle, ChannelId, Client, ClientBuilder, Context, CreateActionRow, CreateButton,
        CreateInteractionResponse, CreateInteractionResponseMessage, CreateMessage, EditMessage,
        EventHandler, GatewayIntents, Http, HttpBuilder, Interaction as SerenityInteraction,
        Message,
    };

    const CHANNEL: &str = "2000000000000000002";
    const GUILD: &str = "3000000000000000003";

    fn http(fake: &FakeDiscord) -> Http {
        HttpBuilder::new(TOKEN)
            .proxy(fake.api_url())
            .ratelimiter_disabled(true)
            .build()
    }

    fn button(id: &str) -> CreateButton {
        CreateButton::new(id).label(id).style(ButtonStyle::Primary)
    }

    /// What the bot's handler saw, in the order the handler tasks ran.
    struct Recorder(mpsc::UnboundedSender<String>);

    #[serenity::async_trait]
    impl EventHandler for Recorder {
        async fn message(&self, _: Context, msg: Message) {
            let _ = self.0.send(format!("message:{}", msg.content));
        }

        async fn interaction_create(&self, ctx: Context, interaction: SerenityInteraction) {
            let SerenityInteraction::Component(click) = interaction else {
                return;
            };
            let _ = self.0.send(format!("click:{}", click.data.custom_id));
            if click.data.custom_id == "yes" {
                let update = CreateInteractionResponseMessage::new()
                    .content("Taken: yes")
                    .components(vec![]);
                click
                    .create_response(&ctx.http, CreateInteractionResponse::UpdateMessage(update))
                    .await
                    .unwrap();
            }
        }
    }

    async fn connected_bot(fake: &FakeDiscord) -> (Client, mpsc::UnboundedReceiver<String>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let intents = GatewayIntents::GUILD_MESSAGES
            | GatewayIntents::DIRECT_MESSAGES
            | GatewayIntents::MESSAGE_CONTENT;
        let client = ClientBuilder::new_with_http(http(fake), intents)
            .event_handler(Recorder(tx))
            .await
            .unwrap();
        *client.ws_url.lock().await = fake.ws_url();
        (client, rx)
    }

    async fn next_seen(rx: &mut mpsc::UnboundedReceiver<String>) -> String {
        tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("the handler saw nothing within 30 s")
            .unwrap()
    }

    #[tokio::test]
    async fn serenity_sends_a_message_with_buttons_and_too_many_rows_are_refused() {
        let fake = FakeDiscord::start().await;
        let http = http(&fake);
        let me = http.get_current_user().await.unwrap();
        assert_eq!(me.id.to_string(), BOT_ID);
        let rows = vec![CreateActionRow::Buttons(vec![button("yes"), button("no")])];
        let sent = ChannelId::new(CHANNEL.parse().unwrap())
            .send_message(
                &http,
                CreateMessage::new().content("Deal?").components(rows),
            )
            .await
            .unwrap();
        assert_eq!(sent.content, "Deal?");
        assert_eq!(sent.author.id.to_string(), BOT_ID);
        assert_eq!(sent.components[0].components.len(), 2);
        let calls = fake.wait_for("/channels/", 1).await;
        assert_eq!(
            calls[0].body["components"][0]["components"][1]["custom_id"],
            "no"
        );
        assert_eq!(fake.messages(CHANNEL)[0]["id"], sent.id.to_string());
        let channel = ChannelId::new(CHANNEL.parse().unwrap());
        let edited = channel
            .edit_message(&http, sent.id, EditMessage::new().content("Deal!"))
            .await
            .unwrap();
        assert_eq!(edited.content, "Deal!");
        assert!(edited.edited_timestamp.is_some());
        assert_eq!(fake.messages(CHANNEL)[0]["content"], "Deal!");
        let unknown = channel
            .edit_message(&http, 42, EditMessage::new().content("?"))
            .await;
        assert!(unknown.is_err());
        assert_eq!(fake.calls("/channels/").pop().unwrap().status, 404);

        let six = (0..6)
            .map(|i| CreateActionRow::Buttons(vec![button(&format!("b{i}"))]))
            .collect::<Vec<_>>();
        let refused = ChannelId::new(CHANNEL.parse().unwrap())
            .send_message(
                &http,
                CreateMessage::new().content("Too many").components(six),
            )
            .await;
        assert!(refused.is_err(), "{refused:?}");
        let last = fake.calls("/channels/").pop().unwrap();
        assert_eq!(last.status, 400);
        assert_eq!(fake.messages(CHANNEL).len(), 1);
    }

    #[tokio::test]
    async fn discord_refusals_come_with_discord_codes() {
        let fake = FakeDiscord::start().await;
        let http = reqwest::Client::new();
        let url = format!("{}/api/v10/channels/{CHANNEL}/messages", fake.api_url());
        let send = |body: Value, auth: &'static str| {
            http.post(&url)
                .header("authorization", auth)
                .json(&body)
                .send()
        };
        let bot = "Bot MTAwMDAwMDAwMDAwMDAwMDAx.GfakeD.discord-test-bot-token";
        let answer = |r: reqwest::Response| async move {
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        };
        let (status, body) =
            answer(send(json!({"content": "hi"}), "Bot nope").await.unwrap()).await;
        assert_eq!((status, body["code"].clone()), (401, json!(0)));
        let long = "x".repeat(2001);
        let (status, body) = answer(send(json!({"content": long}), bot).await.unwrap()).await;
        assert_eq!(status, 400);
        assert_eq!(
            body["errors"]["content"]["_errors"][0]["code"],
            "BASE_TYPE_MAX_LENGTH"
        );
        let (_, body) = answer(send(json!({"content": ""}), bot).await.unwrap()).await;
        assert_eq!(body["code"], 50006);
        let twice = json!({"content": "x", "components": [{"type": 1, "components": [
            {"type": 2, "style": 1, "label": "a", "custom_id": "same"},
            {"type": 2, "style": 5, "label": "b", "url": "https://example.com", "custom_id": "x"},
            {"type": 2, "style": 2, "label": "c", "custom_id": "same"}]}]});
        let (_, body) = answer(send(twice, bot).await.unwrap()).await;
        let row = &body["errors"]["components"]["0"]["components"];
        assert_eq!(
            row["1"]["custom_id"]["_errors"][0]["code"],
            "BUTTON_COMPONENT_CUSTOM_ID_NOT_ALLOWED"
        );
        assert_eq!(
            row["2"]["custom_id"]["_errors"][0]["code"],
            "COMPONENT_CUSTOM_ID_DUPLICATED"
        );
        let reply = json!({"content": "x", "message_reference": {"message_id": "42"}});
        let (_, body) = answer(send(reply, bot).await.unwrap()).await;
        assert_eq!(
            body["errors"]["message_reference"]["_errors"][0]["code"],
            "MESSAGE_REFERENCE_UNKNOWN_MESSAGE"
        );
        let theirs = fake.message_create(CHANNEL, Some(GUILD), "7", "ann", "hello", None);
        let reply = json!({"content": "hi Ann", "message_reference": {"message_id": theirs["id"]}});
        let (status, body) = answer(send(reply, bot).await.unwrap()).await;
        assert_eq!(status, 200);
        assert_eq!(body["referenced_message"]["content"], "hello");
        fake.forbid_channel(CHANNEL);
        let (status, body) = answer(send(json!({"content": "x"}), bot).await.unwrap()).await;
        assert_eq!((status, body["code"].clone()), (403, json!(50001)));

        fake.rate_limit_next("/channels/", 5.0);
        let limited = send(json!({"content": "x"}), bot).await.unwrap();
        assert_eq!(limited.status(), 429);
        assert_eq!(limited.headers()["x-ratelimit-remaining"], "0");
        assert_eq!(limited.headers()["retry-after"], "5");
        assert_eq!(fake.too_early(), 0);
        assert_eq!(
            send(json!({"content": "x"}), bot).await.unwrap().status(),
            429
        );
        assert_eq!(fake.too_early(), 1);

        let hook = format!("{}/api/v10/webhooks/55/secret?wait=true", fake.api_url());
        let unknown = http
            .post(&hook)
            .json(&json!({"content": "x"}))
            .send()
            .await
            .unwrap();
        assert_eq!(answer(unknown).await.1["code"], 10015);
        fake.add_webhook("55", "secret", "4000000000000000004");
        let posted = http
            .post(&hook)
            .json(&json!({"content": "x"}))
            .send()
            .await
            .unwrap();
        assert_eq!(answer(posted).await.1["webhook_id"], "55");
        assert_eq!(fake.messages("4000000000000000004").len(), 1);
    }

    #[tokio::test]
    async fn serenity_gets_messages_and_clicks_and_resumes_after_a_reset() {
        let fake = FakeDiscord::start().await;
        let http = http(&fake);
        let rows = vec![CreateActionRow::Buttons(vec![button("yes"), button("no")])];
        let offer = ChannelId::new(CHANNEL.parse().unwrap())
            .send_message(
                &http,
                CreateMessage::new().content("Deal?").components(rows),
            )
            .await
            .unwrap();
        let offer = fake.message(&offer.id.to_string()).unwrap();
        fake.set_heartbeat_interval(Duration::from_millis(300));
        let (mut client, mut seen) = connected_bot(&fake).await;
        let bot = tokio::spawn(async move { client.start().await });
        fake.wait_ready().await;
        eventually_within(Duration::from_secs(30), || async {
            (fake.heartbeats() > 0).then_some(())
        })
        .await;
        assert_eq!(fake.identifies(), 1);
        let identify = &fake.identify_payloads()[0];
        assert_eq!(
            identify["intents"],
            (GUILD_MESSAGES | DIRECT_MESSAGES | MESSAGE_CONTENT)
        );

        let hello = fake.message_create(CHANNEL, Some(GUILD), "7", "ann", "hello", None);
        fake.dispatch("MESSAGE_CREATE", hello);
        let (click, click_id) =
            fake.button_interaction(&offer, Some(GUILD), "7", "ann", "de", "yes");
        serde_json::from_value::<SerenityInteraction>(click.clone()).unwrap();
        fake.dispatch("INTERACTION_CREATE", click);
        let dm = fake.message_create("5000000000000000005", None, "7", "ann", "dm", None);
        fake.dispatch("MESSAGE_CREATE", dm);
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(next_seen(&mut seen).await);
        }
        got.sort();
        assert_eq!(got, ["click:yes", "message:dm", "message:hello"]);
        let outcome = eventually_within(Duration::from_secs(30), || async {
            fake.interaction_outcomes()
                .into_iter()
                .find(|o| o.id == click_id && o.callback_type.is_some())
        })
        .await;
        assert_eq!(outcome.callback_type, Some(7));
        assert!(!outcome.failed);
        assert_eq!(fake.messages(CHANNEL)[0]["content"], "Taken: yes");
        assert_eq!(fake.messages(CHANNEL)[0]["components"], json!([]));

        fake.drop_connection();
        let missed = fake.message_create(CHANNEL, Some(GUILD), "7", "ann", "while away", None);
        fake.dispatch("MESSAGE_CREATE", missed);
        fake.wait_resumed(1).await;
        let after = fake.message_create(CHANNEL, Some(GUILD), "7", "ann", "after", None);
        fake.dispatch("MESSAGE_CREATE", after);
        let mut got = vec![next_seen(&mut seen).await, next_seen(&mut seen).await];
        got.sort();
        assert_eq!(got, ["message:after", "message:while away"]);
        assert_eq!(
            fake.identifies(),
            1,
            "a reset session is resumed, not identified again"
        );
        // Discord asks for a reconnect (op 7) now and then: the client resumes.
        fake.send_raw(json!({"op": 7, "d": null}));
        fake.wait_resumed(2).await;
        assert_eq!(fake.identifies(), 1);
        // Nothing was missed this time, so nothing is replayed twice.
        let last = fake.message_create(CHANNEL, Some(GUILD), "7", "ann", "last", None);
        fake.dispatch("MESSAGE_CREATE", last);
        assert_eq!(next_seen(&mut seen).await, "message:last");

        let late_offer = ChannelId::new(CHANNEL.parse().unwrap())
            .send_message(
                &http,
                CreateMessage::new()
                    .content("Again?")
                    .components(vec![CreateActionRow::Buttons(vec![button("later")])]),
            )
            .await
            .unwrap();
        let late_offer = fake.message(&late_offer.id.to_string()).unwrap();
        let (click, late_id) =
            fake.button_interaction(&late_offer, None, "7", "ann", "en-US", "later");
        let token = click["token"].as_str().unwrap().to_string();
        fake.dispatch("INTERACTION_CREATE", click);
        assert_eq!(next_seen(&mut seen).await, "click:later");
        // The deadline is Discord's real 3 s, measured by the fake.
        tokio::time::sleep(ANSWER_WITHIN + Duration::from_millis(200)).await;
        let answer = json!({"type": 4, "data": {"content": "too late"}});
        let refused = http
            .create_interaction_response(
                late_id.parse::<u64>().unwrap().into(),
                &token,
                &answer,
                vec![],
            )
            .await;
        assert!(refused.is_err());
        let last = fake.calls("/interactions/").pop().unwrap();
        assert_eq!(last.status, 404);
        let outcome = fake
            .interaction_outcomes()
            .into_iter()
            .find(|o| o.id == late_id)
            .unwrap();
        assert!(outcome.failed);
        assert_eq!(outcome.callback_type, None);
        bot.abort();
    }

    type Socket = tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >;

    async fn receive(ws: &mut Socket) -> Frame {
        tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .expect("nothing from the gateway within 30 s")
            .unwrap()
            .unwrap()
    }

    async fn receive_json(ws: &mut Socket) -> Value {
        match receive(ws).await {
            Frame::Text(t) => serde_json::from_str(&t).unwrap(),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// A gateway connection that said HELLO and got the answer to its IDENTIFY.
    async fn identified(fake: &FakeDiscord, token: &str, intents: u64) -> (Socket, Frame) {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("{}/?v=10", fake.ws_url()))
            .await
            .unwrap();
        let hello = receive_json(&mut ws).await;
        assert_eq!(hello["op"], 10);
        let identify = json!({"op": 2, "d": {"token": token, "intents": intents,
            "properties": {"os": "linux", "browser": "test", "device": "test"}}});
        ws.send(Frame::Text(identify.to_string())).await.unwrap();
        let answer = receive(&mut ws).await;
        (ws, answer)
    }

    #[tokio::test]
    async fn the_gateway_checks_the_token_and_applies_intents() {
        let fake = FakeDiscord::start().await;
        let (_, refused) = identified(&fake, "Bot wrong", GUILD_MESSAGES).await;
        let Frame::Close(Some(close)) = refused else {
            panic!("expected a close frame, got {refused:?}");
        };
        assert_eq!(u16::from(close.code), 4004);

        let (mut ws, ready) = identified(&fake, TOKEN, GUILD_MESSAGES).await;
        let Frame::Text(ready) = ready else {
            panic!("expected READY, got {ready:?}");
        };
        let ready: Value = serde_json::from_str(&ready).unwrap();
        assert_eq!(
            (ready["t"].as_str(), ready["s"].as_u64()),
            (Some("READY"), Some(1))
        );
        ws.send(Frame::Text(json!({"op": 1, "d": 1}).to_string()))
            .await
            .unwrap();
        assert_eq!(receive_json(&mut ws).await["op"], 11);
        assert_eq!(fake.heartbeats(), 1);

        // Without MESSAGE_CONTENT a guild message comes without its text; without
        // DIRECT_MESSAGES a DM does not come at all.
        let guild = fake.message_create(CHANNEL, Some(GUILD), "7", "ann", "secret", None);
        let seq = fake.dispatch("MESSAGE_CREATE", guild);
        let dm = fake.message_create("5000000000000000005", None, "7", "ann", "hi", None);
        assert_eq!(fake.dispatch("MESSAGE_CREATE", dm), 0);
        let got = receive_json(&mut ws).await;
        assert_eq!(
            (got["s"].as_u64(), got["d"]["content"].as_str()),
            (Some(seq), Some(""))
        );
    }

    #[tokio::test]
    async fn deferred_answers_are_followed_up_and_answering_twice_is_refused() {
        let fake = FakeDiscord::start().await;
        let (_ws, _) = identified(&fake, TOKEN, GUILD_MESSAGES).await;
        fake.wait_ready().await;
        let http = reqwest::Client::new();
        let api = format!("{}/api/v10", fake.api_url());
        let offer = http
            .post(format!("{api}/channels/{CHANNEL}/messages"))
            .header("authorization", format!("Bot {TOKEN}"))
            .json(
                &json!({"content": "Deal?", "components": [{"type": 1, "components": [
                {"type": 2, "style": 3, "label": "Yes", "custom_id": "yes"}]}]}),
            )
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap();
        let (click, id) = fake.button_interaction(&offer, None, "7", "ann", "en-US", "yes");
        let token = click["token"].as_str().unwrap().to_string();
        let callback = format!("{api}/interactions/{id}/{token}/callback");
        let early = http
            .post(&callback)
            .json(&json!({"type": 5}))
            .send()
            .await
            .unwrap();
        assert_eq!(
            early.status(),
            404,
            "not dispatched yet: unknown to Discord"
        );
        fake.dispatch("INTERACTION_CREATE", click);
        let deferred = json!({"type": 5, "data": {"flags": 64}});
        let answered = http.post(&callback).json(&deferred).send().await.unwrap();
        assert_eq!(answered.status(), 204);
        let again = http.post(&callback).json(&deferred).send().await.unwrap();
        assert_eq!(again.json::<Value>().await.unwrap()["code"], 40060);

        let follow_up = format!("{api}/webhooks/{APP_ID}/{token}");
        let done = http
            .post(&follow_up)
            .json(&json!({"content": "Done", "flags": 64}))
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap();
        let edited = http
            .patch(format!("{follow_up}/messages/@original?&thread_id=1"))
            .json(&json!({"content": "Done!"}))
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap();
        assert_eq!(
            edited["id"], done["id"],
            "the follow-up replaced the loading message"
        );
        let shown = fake.messages(CHANNEL);
        assert_eq!(shown.len(), 2);
        assert_eq!(
            (shown[1]["content"].as_str(), shown[1]["flags"].as_u64()),
            (Some("Done!"), Some(64))
        );

        let outcome = fake.interaction_outcomes().pop().unwrap();
        assert_eq!(outcome.id, id);
        assert_eq!(outcome.callback_type, Some(5));
        assert!(outcome.ephemeral && !outcome.failed);
        assert!(outcome.acknowledged_after.unwrap() < ANSWER_WITHIN);
        assert_eq!(outcome.content.as_deref(), Some("Done"));
        let calls = fake.calls("/webhooks/");
        assert_eq!(
            calls
                .iter()
                .map(|c| (c.method.as_str(), c.query.as_str()))
                .collect::<Vec<_>>(),
            [("POST", ""), ("PATCH", "&thread_id=1")]
        );
        assert!(calls[0].at <= calls[1].at);
    }

    #[test]
    fn signatures_verify_with_serenity() {
        let (public, key) = interaction_keys();
        let body = br#"{"type":1}"#;
        let signature = sign(&key, "1700000000", body);
        let verifier = serenity::interactions_endpoint::Verifier::new(&public);
        assert!(verifier.verify(&signature, "1700000000", body).is_ok());
        assert!(verifier.verify(&signature, "1700000001", body).is_err());
    }
}
