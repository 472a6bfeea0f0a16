//! A fake Telegram Bot API on loopback: speaks the real wire format for the methods the
//! gateway uses, records every call, serves injected updates to long polling, and can answer
//! 429 with `retry_after`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Value};
use tokio::sync::Notify;

#[derive(Debug, Clone)]
pub struct Call {
    /// Lower-case method name (Telegram's are case-insensitive).
    pub method: String,
    pub params: Value,
    pub at: Instant,
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

    /// Queues an update for getUpdates; returns its update_id.
    pub fn inject(&self, mut update: Value) -> i64 {
        let id = match update["update_id"].as_i64() {
            Some(id) => id,
            None => {
                let id = self.state.next_update.fetch_add(1, Ordering::Relaxed);
                update["update_id"] = json!(id);
                id
            }
        };
        self.state.updates.lock().unwrap().push(update);
        self.state.arrived.notify_waiters();
        id
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

pub fn text_update(chat: i64, user: i64, lang: &str, text: &str) -> Value {
    json!({"message": {
        "message_id": 1, "date": 1_700_000_000,
        "chat": if chat < 0 { json!({"id": chat, "type": "group", "title": "Managers"}) }
                else { json!({"id": chat, "type": "private", "first_name": "Ann"}) },
        "from": {"id": user, "is_bot": false, "first_name": "Ann", "language_code": lang},
        "text": text,
    }})
}

fn ok(result: Value) -> Json<Value> {
    Json(json!({"ok": true, "result": result}))
}

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

async fn handle_get(state: State<Arc<State_>>, path: Path<(String, String)>) -> Json<Value> {
    answer(state, path, json!({})).await
}

/// Parameters come as JSON, or as multipart form data (setWebhook, for its certificate).
async fn handle(
    state: State<Arc<State_>>,
    path: Path<(String, String)>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Json<Value> {
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
) -> Json<Value> {
    let method = method.to_ascii_lowercase();
    if method != "getupdates" {
        state.calls.lock().unwrap().push(Call {
            method: method.clone(),
            params: params.clone(),
            at: Instant::now(),
        });
    }
    match method.as_str() {
        "getme" => ok(
            json!({"id": 1, "is_bot": true, "first_name": "Test", "username": "test_bot",
            "can_join_groups": true, "can_read_all_group_messages": false, "supports_inline_queries": false}),
        ),
        "getupdates" => {
            state.calls.lock().unwrap().push(Call {
                method,
                params: params.clone(),
                at: Instant::now(),
            });
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
                    return ok(Value::Array(ready));
                }
                let _ = tokio::time::timeout(deadline - Instant::now(), notified).await;
            }
        }
        "sendmessage" => {
            let chat = params["chat_id"].as_i64().unwrap_or(0);
            if let Some(secs) = state.throttle.lock().unwrap().remove(&chat) {
                return Json(json!({"ok": false, "error_code": 429,
                    "description": format!("Too Many Requests: retry after {secs}"),
                    "parameters": {"retry_after": secs}}));
            }
            ok(message(&state, &params["chat_id"], &params["text"]))
        }
        "editmessagetext" | "editmessagereplymarkup" => {
            ok(message(&state, &params["chat_id"], &params["text"]))
        }
        "answercallbackquery" | "setwebhook" | "deletewebhook" => ok(json!(true)),
        _ => Json(
            json!({"ok": false, "error_code": 404, "description": "Not Found: method not found"}),
        ),
    }
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
