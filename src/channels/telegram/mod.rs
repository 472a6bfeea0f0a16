//! Telegram through teloxide: per-chat ordered sending within Telegram's limits, and inbound
//! updates (long polling or webhook) turned into `message` events.

mod inbound;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde_json::{json, Value as Json};
use teloxide::payloads::{AnswerCallbackQuerySetters, EditMessageTextSetters, SendMessageSetters};
use teloxide::requests::Requester;
use teloxide::types::{
    CallbackQueryId, ChatId, InlineKeyboardButton, InlineKeyboardMarkup, KeyboardButton,
    KeyboardMarkup, MessageId, ParseMode, ReplyMarkup, ReplyParameters,
};
use teloxide::{ApiError, Bot, RequestError};
use tokio::sync::{mpsc, oneshot};

pub use inbound::{normalize, poll, store_updates, WebhookCheck};

use super::SendError;
use crate::config::TelegramChannel;

/// How often one message is tried when Telegram answers 429.
const MAX_429: u32 = 5;
/// A chat's sender stops after this long without messages.
const IDLE: Duration = Duration::from_secs(60);

pub struct Telegram {
    pub name: String,
    pub bot: Bot,
    pub cfg: TelegramChannel,
    chats: Mutex<HashMap<i64, mpsc::UnboundedSender<Job>>>,
    bot_limit: DefaultDirectRateLimiter,
    /// With replicas: the store where every replica reserves its sends, so that the chat's
    /// and the bot's pace hold across them.
    shared: Option<Arc<dyn crate::store::Store>>,
    /// `ok` once Telegram answered, else what went wrong.
    status: Mutex<String>,
}

struct Job {
    request: Json,
    done: oneshot::Sender<Result<Json, SendError>>,
}

/// An even pace: one message per `per / n`, no bursts, so no window of `per` ever holds
/// more than `n`.
fn spacing((n, per): (u32, Duration)) -> Duration {
    per / n.max(1)
}

fn quota(limit: (u32, Duration)) -> Quota {
    Quota::with_period(spacing(limit)).unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
}

impl Telegram {
    pub fn new(
        name: &str,
        cfg: &TelegramChannel,
        shared: Option<Arc<dyn crate::store::Store>>,
    ) -> Telegram {
        let mut bot = Bot::new(cfg.token.0.clone());
        if let Some(url) = &cfg.api_url {
            bot = bot.set_api_url(url.clone());
        }
        Telegram {
            name: name.to_string(),
            bot,
            cfg: cfg.clone(),
            chats: Mutex::new(HashMap::new()),
            bot_limit: RateLimiter::direct(quota(cfg.per_bot)),
            shared,
            status: Mutex::new("connecting".into()),
        }
    }

    pub fn status(&self) -> String {
        self.status.lock().expect("not poisoned").clone()
    }

    pub fn set_status(&self, s: &str) {
        *self.status.lock().expect("not poisoned") = s.to_string();
    }

    /// Sends in order per chat, within the chat's and the bot's limits; a busy chat waits
    /// alone.
    pub async fn send(self: &Arc<Self>, request: &Json) -> Result<Json, SendError> {
        if request["method"] == "answerCallbackQuery" {
            // Not a chat message: answered at once, whatever the chat's queue holds.
            self.bot_limit.until_ready().await;
            return self
                .answer_callback(request)
                .await
                .map_err(|e| send_error(&self.name, e));
        }
        let chat = request["to"]
            .as_str()
            .and_then(|t| t.trim().parse::<i64>().ok())
            .ok_or_else(|| SendError {
                message: format!("'{}' is not a Telegram chat id", request["to"]),
                retry: false,
            })?;
        let (done, result) = oneshot::channel();
        let mut job = Job {
            request: request.clone(),
            done,
        };
        loop {
            let queue = self.queue(chat);
            match queue.send(job) {
                Ok(()) => break,
                // The chat's sender just stopped for idleness: start another.
                Err(mpsc::error::SendError(j)) => job = j,
            }
        }
        result.await.unwrap_or_else(|_| {
            Err(SendError {
                message: "the sender stopped".into(),
                retry: true,
            })
        })
    }

    fn queue(self: &Arc<Self>, chat: i64) -> mpsc::UnboundedSender<Job> {
        let mut chats = self.chats.lock().expect("not poisoned");
        if let Some(q) = chats.get(&chat).filter(|q| !q.is_closed()) {
            return q.clone();
        }
        let (tx, rx) = mpsc::unbounded_channel();
        chats.insert(chat, tx.clone());
        tokio::spawn(self.clone().chat_sender(chat, rx));
        tx
    }

    async fn chat_sender(self: Arc<Self>, chat: i64, mut rx: mpsc::UnboundedReceiver<Job>) {
        // One message per chat at a time, the next no sooner than the pace after the previous
        // one was answered: what Telegram receives is spaced by at least the pace. Groups
        // (negative ids) have their own, slower budget.
        let mut pace = spacing(self.cfg.per_chat);
        if chat < 0 {
            pace = pace.max(spacing(self.cfg.per_group));
        }
        let mut last_done: Option<tokio::time::Instant> = None;
        loop {
            let job = match tokio::time::timeout(IDLE, rx.recv()).await {
                Ok(Some(job)) => job,
                Ok(None) => return,
                Err(_) => {
                    self.chats.lock().expect("not poisoned").remove(&chat);
                    rx.close();
                    match rx.try_recv() {
                        Ok(job) => job,
                        Err(_) => return,
                    }
                }
            };
            let mut tries = 0;
            let result = loop {
                if let Some(t) = last_done {
                    tokio::time::sleep_until(t + pace).await;
                }
                self.bot_limit.until_ready().await;
                self.shared_pace(chat, pace).await;
                let sent = self.send_now(chat, &job.request).await;
                last_done = Some(tokio::time::Instant::now());
                match sent {
                    Err(RequestError::RetryAfter(secs)) if tries < MAX_429 => {
                        tries += 1;
                        metrics::counter!("switchboard_platform_errors_total",
                            "channel" => self.name.clone(), "code" => "429")
                        .increment(1);
                        tokio::time::sleep(secs.duration()).await;
                    }
                    other => break other.map_err(|e| send_error(&self.name, e)),
                }
            };
            let _ = job.done.send(result);
        }
    }

    /// With replicas: waits for this message's slot in the bot's and the chat's shared pace.
    async fn shared_pace(&self, chat: i64, pace: Duration) {
        let Some(store) = &self.shared else { return };
        let ms = |d: Duration| d.as_micros().div_ceil(1000) as i64;
        let keys = [
            (
                format!("tg:{}:bot", self.name),
                ms(spacing(self.cfg.per_bot)),
            ),
            (format!("tg:{}:chat:{chat}", self.name), ms(pace)),
        ];
        match store.reserve_send(&keys).await {
            Ok(wait) if wait > 0 => tokio::time::sleep(Duration::from_millis(wait as u64)).await,
            Ok(_) => {}
            // The local pace still holds; only the other replicas' sends are not counted.
            Err(e) => {
                tracing::warn!(channel = %self.name, error = %e, "reserving a send slot failed")
            }
        }
    }

    async fn answer_callback(&self, request: &Json) -> Result<Json, RequestError> {
        let id = request["callback_id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let mut req = self.bot.answer_callback_query(CallbackQueryId(id));
        if let Some(text) = request["text"].as_str().filter(|t| !t.is_empty()) {
            // Telegram takes at most 200 characters here.
            req = req.text(text.chars().take(200).collect::<String>());
        }
        if request["alert"] == true {
            req = req.show_alert(true);
        }
        req.await?;
        Ok(json!({"channel": self.name, "answered": true}))
    }

    async fn send_now(&self, chat: i64, request: &Json) -> Result<Json, RequestError> {
        let text = request["text"].as_str().unwrap_or_default().to_string();
        if request["method"] == "editMessageText" {
            let id = MessageId(request["message_id"].as_i64().unwrap_or(0) as i32);
            // Without a reply markup the buttons go away.
            self.bot
                .edit_message_text(ChatId(chat), id, text)
                .parse_mode(ParseMode::Html)
                .await?;
            return Ok(
                json!({"channel": self.name, "chat_id": chat, "message_id": id.0, "edited": true}),
            );
        }
        let mut rows = Vec::new();
        for b in request["buttons"].as_array().into_iter().flatten() {
            if let (Some(label), Some(url)) = (b["text"].as_str(), b["url"].as_str()) {
                if let Ok(url) = reqwest::Url::parse(url) {
                    rows.push(vec![InlineKeyboardButton::url(label.to_string(), url)]);
                }
            }
        }
        let callbacks: Vec<InlineKeyboardButton> = request["callback_buttons"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|b| {
                Some(InlineKeyboardButton::callback(
                    b["text"].as_str()?.to_string(),
                    b["data"].as_str()?.to_string(),
                ))
            })
            .collect();
        if !callbacks.is_empty() {
            rows.insert(0, callbacks);
        }
        let mut req = self
            .bot
            .send_message(ChatId(chat), text)
            .parse_mode(ParseMode::Html);
        let reply_keyboard: Vec<KeyboardButton> = request["reply_keyboard"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|b| Some(KeyboardButton::new(b.as_str()?.to_string())))
            .collect();
        if !rows.is_empty() {
            req = req.reply_markup(InlineKeyboardMarkup::new(rows));
        } else if !reply_keyboard.is_empty() {
            req = req.reply_markup(ReplyMarkup::Keyboard(
                KeyboardMarkup::new(vec![reply_keyboard])
                    .one_time_keyboard()
                    .resize_keyboard(),
            ));
        }
        if let Some(id) = request["reply_to"].as_i64() {
            req = req.reply_parameters(ReplyParameters::new(MessageId(id as i32)));
        }
        let msg = req.await?;
        Ok(json!({"channel": self.name, "chat_id": chat, "message_id": msg.id.0}))
    }
}

fn send_error(channel: &str, e: RequestError) -> SendError {
    let (retry, code) = match &e {
        RequestError::Network(_) | RequestError::Io(_) => (true, "network".to_string()),
        RequestError::RetryAfter(_) => (true, "429".to_string()),
        RequestError::Api(
            ApiError::BotBlocked | ApiError::ChatNotFound | ApiError::UserDeactivated,
        ) => (false, "403".to_string()),
        RequestError::Api(_) => (false, "400".to_string()),
        _ => (true, "other".to_string()),
    };
    metrics::counter!("switchboard_platform_errors_total", "channel" => channel.to_string(), "code" => code)
        .increment(1);
    SendError {
        message: format!("telegram: {e}"),
        retry,
    }
}
