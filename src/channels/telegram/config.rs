//! A Telegram channel's section of the gateway file:
//!
//! ```toml
//! [channels.tg]
//! type = "telegram"
//! token = "${TELEGRAM_TOKEN}"
//! api_url = "https://api.telegram.org"   # a local Bot API server
//! mode = "polling"                        # or "webhook"
//! webhook_secret = "${TELEGRAM_WEBHOOK_SECRET}"
//! limits = { chat = "1/1s", group = "20/1m", bot = "30/1s" }
//! ```

use std::sync::Arc;
use std::time::Duration;

use crate::lang::channel::{Channel, Section, SectionCx};
use crate::lang::model::Secret;

#[derive(Clone)]
pub struct TelegramChannel {
    /// Never printed: `Debug` hides it.
    pub token: Secret,
    pub api_url: Option<reqwest::Url>,
    pub webhook: bool,
    pub webhook_secret: Option<Secret>,
    /// (messages, per period) for one private chat, one group, the whole bot.
    pub per_chat: (u32, Duration),
    pub per_group: (u32, Duration),
    pub per_bot: (u32, Duration),
}

/// The JSON Schema of a Telegram channel's section.
pub fn schema() -> serde_json::Value {
    crate::channels::section_schema(
        "telegram",
        "A Telegram bot.",
        serde_json::json!({
            "token": {
                "description": "The bot's token from @BotFather. Empty: the channel is off and its messages fail (journaled).",
                "type": "string",
                "examples": ["${TELEGRAM_TOKEN}"]
            },
            "api_url": {
                "description": "The Bot API server, e.g. a local one (default `https://api.telegram.org`).",
                "type": "string",
                "examples": ["http://127.0.0.1:8081"]
            },
            "mode": {
                "description": "How updates arrive: `polling` (the default; one `getUpdates` long poll per bot) or `webhook` (Telegram posts them to `{public_url}/telegram/<name>`; needs `webhook_secret`).",
                "type": "string",
                "examples": ["polling"]
            },
            "webhook_secret": {
                "description": "In webhook mode, the secret Telegram sends in `X-Telegram-Bot-Api-Secret-Token` (1-256 of A-Z a-z 0-9 _ -); must not be empty.",
                "type": "string",
                "examples": ["${TELEGRAM_WEBHOOK_SECRET}"]
            },
            "limits": {
                "description": "Send rates as `count/period`: `chat` for one private chat (default `1/1s`), `group` for one group (default `20/1m`), `bot` for the whole bot (default `30/1s`).",
                "type": "object",
                "additionalProperties": false,
                "properties": {
                    "chat": {
                        "description": "Messages to one private chat (default `1/1s`).",
                        "type": "string",
                        "examples": ["1/1s"]
                    },
                    "group": {
                        "description": "Messages to one group (default `20/1m`).",
                        "type": "string",
                        "examples": ["20/1m"]
                    },
                    "bot": {
                        "description": "Messages from the whole bot (default `30/1s`).",
                        "type": "string",
                        "examples": ["30/1s"]
                    }
                },
                "examples": [{ "chat": "1/1s", "group": "20/1m", "bot": "30/1s" }]
            }
        }),
        &["token"],
    )
}

pub fn parse(section: &Section, cx: &mut dyn SectionCx) -> Option<Channel> {
    let token = match section.text("token", cx) {
        Some(t) => cx.env(&t),
        None => {
            cx.err(
                section.span.clone(),
                "a telegram channel needs `token` (e.g. \"${TELEGRAM_TOKEN}\")".into(),
            );
            None
        }
    };
    let api_url = section.text("api_url", cx).and_then(|u| {
        let v = cx.env(&u)?;
        match reqwest::Url::parse(&v) {
            Ok(url) => Some(url),
            Err(e) => {
                cx.err(u.span(), format!("'{v}' is not a URL: {e}"));
                None
            }
        }
    });
    let webhook = match section.text("mode", cx) {
        None => false,
        Some(m) => match m.get().as_str() {
            "polling" => false,
            "webhook" => true,
            other => {
                cx.err(
                    m.span(),
                    format!("unknown mode '{other}' (polling or webhook)"),
                );
                false
            }
        },
    };
    let webhook_secret = section
        .text("webhook_secret", cx)
        .and_then(|w| cx.env(&w))
        .map(Secret);
    if webhook && webhook_secret.is_none() {
        cx.err(
            section.span.clone(),
            "webhook mode needs `webhook_secret` (1-256 of A-Z a-z 0-9 _ -)".into(),
        );
    }
    let limits = section.rates(
        "limits",
        &[
            ("chat", (1, Duration::from_secs(1))),
            ("group", (20, Duration::from_secs(60))),
            ("bot", (30, Duration::from_secs(1))),
        ],
        cx,
    );
    let (per_chat, per_group, per_bot) = (limits[0], limits[1], limits[2]);
    section.finish("telegram", cx);
    let token = token?;
    // A channel without a token stays off (the examples ship one like that).
    let off = token.is_empty().then(|| "no token".to_string());
    Some(Channel {
        kind: "telegram",
        caps: super::CAPABILITIES,
        settings: Arc::new(TelegramChannel {
            token: Secret(token),
            api_url,
            webhook,
            webhook_secret,
            per_chat,
            per_group,
            per_bot,
        }),
        off,
    })
}
