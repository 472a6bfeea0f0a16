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
