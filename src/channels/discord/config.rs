//! The sections of a Discord bot and of a Discord webhook in the gateway file:
//!
//! ```toml
//! [channels.dc]
//! type = "discord"
//! token = "${DISCORD_TOKEN}"                    # empty: the channel is off
//! application_id = "${DISCORD_APPLICATION_ID}"
//! public_key = "${DISCORD_PUBLIC_KEY}"          # checks POST /discord/dc (interactions endpoint)
//! mode = "gateway"                              # or "interactions": no gateway session
//! api_url = "https://discord.com"               # a proxy, or a fake in tests
//! limits = { channel = "5/5s", bot = "50/1s" }
//!
//! [channels.alerts]
//! type = "discord-webhook"
//! url = "${DISCORD_WEBHOOK_URL}"                # empty: the channel is off
//! ```

use std::sync::Arc;
use std::time::Duration;

use crate::lang::channel::{Channel, Section, SectionCx};
use crate::lang::model::Secret;

#[derive(Debug, Clone)]
pub struct DiscordChannel {
    pub token: Secret,
    pub application_id: u64,
    /// The application's Ed25519 public key (hex), for the interactions endpoint.
    pub public_key: Option<[u8; 32]>,
    /// Keep a gateway session (messages and clicks arrive over it); else only the HTTP
    /// interactions endpoint receives clicks.
    pub gateway: bool,
    pub api_url: String,
    /// (messages, per period) in one channel and for the whole bot.
    pub per_channel: (u32, Duration),
    pub per_bot: (u32, Duration),
}

#[derive(Debug, Clone)]
pub struct WebhookChannel {
    /// `https://discord.com/api/webhooks/<id>/<token>`: a secret.
    pub url: Secret,
    pub per_webhook: (u32, Duration),
}

fn api_url(section: &Section, cx: &mut dyn SectionCx) -> Option<String> {
    match section.text("api_url", cx) {
        None => Some("https://discord.com".into()),
        Some(u) => {
            let v = cx.env(&u)?;
            match reqwest::Url::parse(&v) {
                Ok(_) => Some(v.trim_end_matches('/').to_string()),
                Err(e) => {
                    cx.err(u.span(), format!("'{v}' is not a URL: {e}"));
                    None
                }
            }
        }
    }
}

/// The JSON Schema of a Discord bot's section.
pub fn schema() -> serde_json::Value {
    crate::channels::section_schema(
        "discord",
        "A Discord bot.",
        serde_json::json!({
            "token": {
                "description": "The bot's token. Empty: the channel is off and its messages fail (journaled).",
                "type": "string",
                "examples": ["${DISCORD_TOKEN}"]
            },
            "application_id": {
                "description": "The application's id (digits); needed when `token` is set.",
                "type": "string",
                "examples": ["${DISCORD_APPLICATION_ID}"]
            },
            "public_key": {
                "description": "The application's public key (64 hex digits), which checks the signature of each request to the interactions endpoint `{public_url}/discord/<name>`; needed with `mode = \"interactions\"`.",
                "type": "string",
                "examples": ["${DISCORD_PUBLIC_KEY}"]
            },
            "mode": {
                "description": "`gateway` (the default) keeps a gateway session, over which messages and button presses arrive; `interactions` keeps none, and presses come to `{public_url}/discord/<name>`.",
                "type": "string",
                "examples": ["gateway"]
            },
            "api_url": {
                "description": "Discord's API address, e.g. a proxy (default `https://discord.com`).",
                "type": "string",
                "examples": ["https://discord.com"]
            },
            "limits": {
                "description": "Send rates as `count/period`: `channel` for one Discord channel (default `5/5s`), `bot` for the whole bot (default `50/1s`).",
                "type": "object",
                "additionalProperties": false,
                "properties": {
                    "channel": {
                        "description": "Messages to one Discord channel (default `5/5s`).",
                        "type": "string",
                        "examples": ["5/5s"]
                    },
                    "bot": {
                        "description": "Messages from the whole bot (default `50/1s`).",
                        "type": "string",
                        "examples": ["50/1s"]
                    }
                },
                "examples": [{ "channel": "5/5s", "bot": "50/1s" }]
            }
        }),
        &["token"],
    )
}

/// The JSON Schema of a Discord webhook's section.
pub fn webhook_schema() -> serde_json::Value {
    crate::channels::section_schema(
        "discord-webhook",
        "A Discord channel's webhook: posts notifications without a bot.",
        serde_json::json!({
            "url": {
                "description": "The webhook's URL (`https://discord.com/api/webhooks/<id>/<token>`), a secret. Empty: the channel is off.",
                "type": "string",
                "examples": ["${DISCORD_WEBHOOK_URL}"]
            },
            "limits": {
                "description": "Send rates as `count/period`: `webhook` for the webhook (default `5/2s`).",
                "type": "object",
                "additionalProperties": false,
                "properties": {
                    "webhook": {
                        "description": "Messages through the webhook (default `5/2s`).",
                        "type": "string",
                        "examples": ["5/2s"]
                    }
                },
                "examples": [{ "webhook": "5/2s" }]
            }
        }),
        &["url"],
    )
}

pub fn parse(section: &Section, cx: &mut dyn SectionCx) -> Option<Channel> {
    let token = match section.text("token", cx) {
        Some(t) => cx.env(&t).unwrap_or_default(),
        None => {
            cx.err(
                section.span.clone(),
                "a discord channel needs `token` (e.g. \"${DISCORD_TOKEN}\"; empty: off)".into(),
            );
            String::new()
        }
    };
    let application_id = match section.text("application_id", cx) {
        None => None,
        Some(a) => {
            let v = cx.env(&a).unwrap_or_default();
            match v.parse::<u64>() {
                Ok(id) => Some(id),
                Err(_) if v.is_empty() => None,
                Err(_) => {
                    cx.err(
                        a.span(),
                        format!("application_id '{v}' is not a Discord id (digits)"),
                    );
                    None
                }
            }
        }
    };
    let public_key = section.text("public_key", cx).and_then(|k| {
        let v = cx.env(&k)?;
        if v.is_empty() {
            return None;
        }
        match hex::decode(&v)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
        {
            Some(key) => Some(key),
            None => {
                cx.err(
                    k.span(),
                    "public_key is the application's key as 64 hex digits".into(),
                );
                None
            }
        }
    });
    let gateway = match section.text("mode", cx) {
        None => true,
        Some(m) => match m.get().as_str() {
            "gateway" => true,
            "interactions" => false,
            other => {
                cx.err(
                    m.span(),
                    format!("unknown mode '{other}' (gateway or interactions)"),
                );
                true
            }
        },
    };
    let api_url = api_url(section, cx);
    let limits = section.rates(
        "limits",
        &[
            ("channel", (5, Duration::from_secs(5))),
            ("bot", (50, Duration::from_secs(1))),
        ],
        cx,
    );
    section.finish("discord", cx);
    let off = token.is_empty().then(|| "no token".to_string());
    if off.is_none() && application_id.is_none() {
        cx.err(
            section.span.clone(),
            "a discord channel with a token needs `application_id` (e.g. \"${DISCORD_APPLICATION_ID}\")".into(),
        );
    }
    if !gateway && public_key.is_none() && off.is_none() {
        cx.err(
            section.span.clone(),
            "mode = \"interactions\" needs `public_key` to check what Discord sends".into(),
        );
    }
    Some(Channel {
        kind: "discord",
        caps: super::CAPABILITIES,
        settings: Arc::new(DiscordChannel {
            token: Secret(token),
            application_id: application_id.unwrap_or(0),
            public_key,
            gateway,
            api_url: api_url.unwrap_or_else(|| "https://discord.com".into()),
            per_channel: limits[0],
            per_bot: limits[1],
        }),
        off,
    })
}

pub fn parse_webhook(section: &Section, cx: &mut dyn SectionCx) -> Option<Channel> {
    let url = match section.text("url", cx) {
        Some(u) => {
            let v = cx.env(&u).unwrap_or_default();
            if !v.is_empty() && reqwest::Url::parse(&v).is_err() {
                // The URL holds the webhook's token: it is not repeated in the message.
                cx.err(u.span(), "`url` is not a URL".into());
            }
            v
        }
        None => {
            cx.err(
                section.span.clone(),
                "a discord-webhook channel needs `url` (e.g. \"${DISCORD_WEBHOOK_URL}\"; empty: off)"
                    .into(),
            );
            String::new()
        }
    };
    let limits = section.rates("limits", &[("webhook", (5, Duration::from_secs(2)))], cx);
    section.finish("discord-webhook", cx);
    let off = url.is_empty().then(|| "no webhook URL".to_string());
    Some(Channel {
        kind: "discord-webhook",
        caps: super::WEBHOOK_CAPABILITIES,
        settings: Arc::new(WebhookChannel {
            url: Secret(url),
            per_webhook: limits[0],
        }),
        off,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bots_and_webhooks_with_their_mistakes() {
        let (problems, gw) = crate::channels::testing::gateway(
            "[channels.dc]\ntype = \"discord\"\ntoken = \"t\"\napplication_id = \"42\"\npublic_key = \"00\"\nmode = \"socket\"\n\n[channels.hook]\ntype = \"discord-webhook\"\nurl = \"not a url\"\n\n[channels.off]\ntype = \"discord\"\ntoken = \"\"\n",
        );
        assert_eq!(
            problems,
            vec![
                "5:14: public_key is the application's key as 64 hex digits",
                "6:8: unknown mode 'socket' (gateway or interactions)",
                "10:7: `url` is not a URL",
            ]
        );
        let dc = gw.channels["dc"].settings::<DiscordChannel>().unwrap();
        assert_eq!((dc.application_id, dc.gateway), (42, true));
        assert!(
            !format!("{dc:?}").contains("\"t\""),
            "the token is never printed"
        );
        assert_eq!(gw.channels["off"].off.as_deref(), Some("no token"));
        assert_eq!(gw.channels["hook"].kind(), "discord-webhook");
    }
}
