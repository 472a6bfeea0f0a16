//! Telegram through teloxide: the channel operations as Bot API calls (HTML text, inline and
//! reply keyboards, edits, callback answers), paced per chat within Telegram's limits, and
//! inbound updates (long polling or webhook) turned into `message` and `click` events.

pub mod config;
mod inbound;
mod webhook;

use std::sync::{Arc, Mutex};

use serde_json::json;
use teloxide::payloads::{
    AnswerCallbackQuerySetters, EditMessageReplyMarkupSetters, EditMessageTextSetters,
    SendMessageSetters, SetWebhookSetters,
};
use teloxide::requests::Requester;
use teloxide::types::{
    CallbackQueryId, ChatId, InlineKeyboardButton, InlineKeyboardMarkup, KeyboardButton,
    KeyboardMarkup, MessageId, ParseMode, ReplyMarkup, ReplyParameters,
};
use teloxide::{ApiError, Bot, RequestError};
use tokio::task::JoinHandle;

pub use inbound::{normalize, poll, store_updates};

use super::pacing::{spacing, Pacer};
use super::{
    Adapter, Capabilities, Choice, ChoiceLimits, Context, Delivered, LinkButton, Markup, OutAnswer,
    OutEdit, OutMessage, Outbound, SendError,
};
use crate::clock::Clock;
use crate::engine::ingest::Ingest;
pub use config::TelegramChannel;

/// How often one message is tried when Telegram answers 429.
const MAX_429: u32 = 5;

/// Telegram: HTML text, inline callback buttons (64 bytes of data each), URL buttons, reply
/// keyboards, edits and callback answers.
pub const CAPABILITIES: Capabilities = Capabilities {
    replies: true,
    choices: Some(ChoiceLimits {
        max: 100,
        label_max: None,
        data_max: 64,
    }),
    keyboard: true,
    keyboard_max: None,
    links: true,
    edits: true,
    answers: true,
    attachments: true,
    templates: false,
    read_receipts: false,
    mail: false,
    embeds: false,
    markup: Markup::Html,
};

/// Telegram shows no read receipts: marking a message read does nothing.
fn no_read_receipts() -> Delivered {
    Delivered {
        message: None,
        detail: serde_json::json!({"skipped": "Telegram has no read receipts"}),
    }
}

pub struct Telegram {
    pub name: String,
    pub bot: Bot,
    pub cfg: TelegramChannel,
    pacer: Pacer,
    /// `ok` once Telegram answered, else what went wrong.
    status: Mutex<String>,
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
            pacer: Pacer::new(&format!("tg:{name}"), cfg.per_bot, shared),
            status: Mutex::new("connecting".into()),
        }
    }

    pub fn set_status(&self, s: &str) {
        *self.status.lock().expect("not poisoned") = s.to_string();
    }

    /// One message or edit, at the chat's pace; a 429 holds the chat for its `retry_after`.
    async fn paced(&self, to: &str, op: &Outbound) -> Result<Delivered, SendError> {
        let chat = to.trim().parse::<i64>().map_err(|_| SendError {
            message: format!("'{to}' is not a Telegram chat id"),
            retry: false,
        })?;
        // Groups (negative ids) have their own, slower budget.
        let mut pace = spacing(self.cfg.per_chat);
        if chat < 0 {
            pace = pace.max(spacing(self.cfg.per_group));
        }
        let conversation = chat.to_string();
        let mut tries = 0;
        loop {
            self.pacer.wait_turn(&conversation, pace).await;
            let sent = match op {
                Outbound::Send(m) => self.send_message(chat, m).await,
                Outbound::Edit(e) => self.edit_message(chat, e).await,
                Outbound::Answer(a) => self.answer_click(a).await,
                Outbound::Read(_) => Ok(no_read_receipts()),
            };
            self.pacer.done(&conversation);
            match sent {
                Err(RequestError::RetryAfter(secs)) if tries < MAX_429 => {
                    tries += 1;
                    metrics::counter!("switchboard_platform_errors_total",
                        "channel" => self.name.clone(), "code" => "429")
                    .increment(1);
                    self.pacer.hold(&conversation, pace, secs.duration());
                }
                Err(e) => return Err(send_error(&self.name, e)),
                Ok(sent) => {
                    if let Outbound::Send(m) = op {
                        self.send_attachments(chat, &conversation, pace, m).await?;
                    }
                    return Ok(sent);
                }
            }
        }
    }

    /// The message's files, each a document of its own after the text, at the chat's pace.
    async fn send_attachments(
        &self,
        chat: i64,
        conversation: &str,
        pace: std::time::Duration,
        m: &OutMessage,
    ) -> Result<(), SendError> {
        for a in &m.attachments {
            let url = reqwest::Url::parse(&a.url).map_err(|e| SendError {
                message: format!(
                    "the message was sent; attachment '{}' is not a URL: {e}",
                    a.url
                ),
                retry: false,
            })?;
            self.pacer.wait_turn(conversation, pace).await;
            let sent = self
                .bot
                .send_document(ChatId(chat), teloxide::types::InputFile::url(url))
                .await;
            self.pacer.done(conversation);
            // The text went out: trying the whole message again would repeat it.
            sent.map_err(|e| SendError {
                message: format!(
                    "the message was sent; attachment {} failed: {}",
                    a.url,
                    send_error(&self.name, e).message
                ),
                retry: false,
            })?;
        }
        Ok(())
    }

    async fn answer_click(&self, a: &OutAnswer) -> Result<Delivered, RequestError> {
        let mut req = self
            .bot
            .answer_callback_query(CallbackQueryId(a.click.clone()));
        if !a.text.is_empty() {
            // Telegram takes at most 200 characters here.
            req = req.text(a.text.chars().take(200).collect::<String>());
        }
        if a.alert {
            req = req.show_alert(true);
        }
        req.await?;
        Ok(Delivered {
            message: None,
            detail: json!({"channel": self.name, "answered": true}),
        })
    }

    async fn edit_message(&self, chat: i64, e: &OutEdit) -> Result<Delivered, RequestError> {
        let id = MessageId(e.message.trim().parse::<i32>().unwrap_or(0));
        let keyboard = inline_keyboard(&e.choices, &e.links);
        // Without a reply markup the buttons go away.
        match &e.text {
            Some(text) => {
                let mut req = self
                    .bot
                    .edit_message_text(ChatId(chat), id, text.clone())
                    .parse_mode(ParseMode::Html);
                if let Some(kb) = keyboard {
                    req = req.reply_markup(kb);
                }
                req.await?;
            }
            None => {
                let mut req = self.bot.edit_message_reply_markup(ChatId(chat), id);
                if let Some(kb) = keyboard {
                    req = req.reply_markup(kb);
                }
                req.await?;
            }
        }
        Ok(Delivered {
            message: Some(id.0.to_string()),
            detail: json!({"channel": self.name, "chat_id": chat, "edited": true}),
        })
    }

    async fn send_message(&self, chat: i64, m: &OutMessage) -> Result<Delivered, RequestError> {
        let mut req = self
            .bot
            .send_message(ChatId(chat), m.text.clone())
            .parse_mode(ParseMode::Html);
        if let Some(kb) = inline_keyboard(&m.choices, &m.links) {
            req = req.reply_markup(kb);
        } else if !m.keyboard.is_empty() {
            let row = m.keyboard.iter().map(|b| KeyboardButton::new(b.clone()));
            req = req.reply_markup(ReplyMarkup::Keyboard(
                KeyboardMarkup::new(vec![row.collect::<Vec<_>>()])
                    .one_time_keyboard()
                    .resize_keyboard(),
            ));
        }
        if let Some(id) = m.reply_to.as_deref().and_then(|r| r.trim().parse().ok()) {
            req = req.reply_parameters(ReplyParameters::new(MessageId(id)));
        }
        let msg = req.await?;
        Ok(Delivered {
            message: Some(msg.id.0.to_string()),
            detail: json!({"channel": self.name, "chat_id": chat}),
        })
    }
}

/// Callback buttons in one row above the URL buttons, one per row; `None` when there are
/// neither.
fn inline_keyboard(choices: &[Choice], links: &[LinkButton]) -> Option<InlineKeyboardMarkup> {
    let mut rows = Vec::new();
    if !choices.is_empty() {
        rows.push(
            choices
                .iter()
                .map(|c| InlineKeyboardButton::callback(c.text.clone(), c.data.clone()))
                .collect(),
        );
    }
    for l in links {
        if let Ok(url) = reqwest::Url::parse(&l.url) {
            rows.push(vec![InlineKeyboardButton::url(l.text.clone(), url)]);
        }
    }
    (!rows.is_empty()).then(|| InlineKeyboardMarkup::new(rows))
}

#[async_trait::async_trait]
impl Adapter for Telegram {
    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
    }

    fn status(&self) -> (String, bool) {
        let s = self.status.lock().expect("not poisoned").clone();
        let ok = s == "ok";
        (s, ok)
    }

    async fn deliver(&self, op: &Outbound) -> Result<Delivered, SendError> {
        match op {
            // Not a message: answered at once, outside the chat's and the bot's budget.
            Outbound::Answer(a) => self
                .answer_click(a)
                .await
                .map_err(|e| send_error(&self.name, e)),
            Outbound::Send(m) => self.paced(&m.to, op).await,
            Outbound::Edit(e) => self.paced(&e.to, op).await,
            Outbound::Read(_) => Ok(no_read_receipts()),
        }
    }

    fn routes(self: Arc<Self>, ingest: Ingest, clock: Clock) -> Option<axum::Router> {
        self.cfg
            .webhook
            .then(|| webhook::router(self.clone(), ingest, clock))
    }

    fn start(self: Arc<Self>, cx: &Context) -> Vec<JoinHandle<()>> {
        if !self.cfg.webhook {
            return vec![tokio::spawn(poll(
                self,
                cx.store.clone(),
                cx.ingest.clone(),
                cx.clock.clone(),
                cx.stop.clone(),
            ))];
        }
        let url = format!(
            "{}/telegram/{}",
            cx.public_url.trim_end_matches('/'),
            self.name
        );
        let secret = self
            .cfg
            .webhook_secret
            .clone()
            .map(|s| s.0)
            .unwrap_or_default();
        vec![tokio::spawn(async move {
            let url = match reqwest::Url::parse(&url) {
                Ok(u) => u,
                Err(e) => {
                    self.set_status(&format!("bad webhook URL {url}: {e}"));
                    return;
                }
            };
            match self.bot.set_webhook(url).secret_token(secret).await {
                Ok(_) => self.set_status("ok"),
                Err(e) => {
                    self.set_status(&format!("setWebhook failed: {e}"));
                    tracing::error!(channel = %self.name, error = %e, "setWebhook failed");
                }
            }
        })]
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

/// The `telegram` channel type.
pub static KIND: super::Kind = super::Kind {
    name: "telegram",
    parse: config::parse,
    schema: config::schema,
    start: |name, ch, shared| {
        let cfg = ch.settings::<TelegramChannel>()?;
        Some(Arc::new(Telegram::new(name, cfg, shared)))
    },
};
