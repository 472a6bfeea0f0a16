//! A WhatsApp Cloud API channel's section of the gateway file (one business number):
//!
//! ```toml
//! [channels.wa]
//! type = "whatsapp"
//! token = "${WHATSAPP_TOKEN}"                 # empty: the channel is off
//! phone_number_id = "${WHATSAPP_PHONE_NUMBER_ID}"
//! app_secret = "${WHATSAPP_APP_SECRET}"       # signs Meta's webhooks
//! verify_token = "${WHATSAPP_VERIFY_TOKEN}"   # the subscription handshake
//! api_url = "https://graph.facebook.com"      # a proxy, or a fake in tests
//! api_version = "v21.0"
//! window_template = { name = "reopen_conversation", language = "en" }
//! limits = { number = "80/1s", customer = "1/6s" }
//! ```

use std::sync::Arc;
use std::time::Duration;

use crate::lang::channel::{Channel, Section, SectionCx};
use crate::lang::model::Secret;

/// A pre-approved message template, sent outside the 24-hour window with the message's text
/// as its one body parameter.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowTemplate {
    pub name: String,
    pub language: String,
}

#[derive(Clone)]
pub struct WhatsAppChannel {
    /// Never printed: `Debug` hides these.
    pub token: Secret,
    pub app_secret: Secret,
    pub verify_token: Secret,
    pub phone_number_id: String,
    pub api_url: reqwest::Url,
    pub api_version: String,
    pub window_template: Option<WindowTemplate>,
    /// (messages, per period) for the whole number and for one customer.
    pub per_number: (u32, Duration),
    pub per_customer: (u32, Duration),
}

/// The settings a live channel needs besides its token, with an example each.
const NEEDED: [(&str, &str); 3] = [
    ("phone_number_id", "${WHATSAPP_PHONE_NUMBER_ID}"),
    ("app_secret", "${WHATSAPP_APP_SECRET}"),
    ("verify_token", "${WHATSAPP_VERIFY_TOKEN}"),
];

/// The JSON Schema of a WhatsApp channel's section.
pub fn schema() -> serde_json::Value {
    crate::channels::section_schema(
        "whatsapp",
        "A WhatsApp Business number on the Cloud API. Meta's webhook goes to `{public_url}/whatsapp/<name>`.",
        serde_json::json!({
            "token": {
                "description": "The Cloud API access token. Empty: the channel is off (its messages fail, journaled) and needs nothing else.",
                "type": "string",
                "examples": ["${WHATSAPP_TOKEN}"]
            },
            "phone_number_id": {
                "description": "The business number's id in the Cloud API; needed when `token` is set.",
                "type": "string",
                "examples": ["${WHATSAPP_PHONE_NUMBER_ID}"]
            },
            "app_secret": {
                "description": "The Meta app's secret, which checks `X-Hub-Signature-256` of each webhook delivery; needed when `token` is set, and must not be empty.",
                "type": "string",
                "examples": ["${WHATSAPP_APP_SECRET}"]
            },
            "verify_token": {
                "description": "The token Meta sends in the webhook subscription handshake; needed when `token` is set.",
                "type": "string",
                "examples": ["${WHATSAPP_VERIFY_TOKEN}"]
            },
            "api_url": {
                "description": "The Graph API's address, e.g. a proxy (default `https://graph.facebook.com`).",
                "type": "string",
                "examples": ["https://graph.facebook.com"]
            },
            "api_version": {
                "description": "The Graph API version, like `v21.0` (the default).",
                "type": "string",
                "examples": ["v21.0"]
            },
            "window_template": {
                "description": "The approved template sent outside the 24-hour window by steps without a `window_template` of their own, with the message's text as its one body parameter. Needs both `name` and `language`.",
                "type": "object",
                "additionalProperties": false,
                "properties": {
                    "name": {
                        "description": "The template's name as approved by Meta.",
                        "type": "string",
                        "examples": ["reopen_conversation"]
                    },
                    "language": {
                        "description": "The template's language code.",
                        "type": "string",
                        "examples": ["en"]
                    }
                },
                "required": ["name", "language"],
                "examples": [{ "name": "reopen_conversation", "language": "en" }]
            },
            "limits": {
                "description": "Send rates as `count/period`: `number` for the whole number (default `80/1s`), `customer` for one customer (default `1/6s`).",
                "type": "object",
                "additionalProperties": false,
                "properties": {
                    "number": {
                        "description": "Messages from the whole number (default `80/1s`).",
                        "type": "string",
                        "examples": ["80/1s"]
                    },
                    "customer": {
                        "description": "Messages to one customer (default `1/6s`).",
                        "type": "string",
                        "examples": ["1/6s"]
                    }
                },
                "examples": [{ "number": "80/1s", "customer": "1/6s" }]
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
                "a whatsapp channel needs `token` (e.g. \"${WHATSAPP_TOKEN}\"; empty: off)".into(),
            );
            None
        }
    };
    let [phone_number_id, app_secret, verify_token] =
        NEEDED.map(|(key, _)| section.text(key, cx).and_then(|v| cx.env(&v)));
    let api_url = match section.text("api_url", cx) {
        None => Some(reqwest::Url::parse("https://graph.facebook.com").expect("a URL")),
        Some(u) => cx.env(&u).and_then(|v| match reqwest::Url::parse(&v) {
            Ok(url) => Some(url),
            Err(e) => {
                cx.err(u.span(), format!("'{v}' is not a URL: {e}"));
                None
            }
        }),
    };
    let api_version = match section.text("api_version", cx) {
        None => Some("v21.0".to_string()),
        Some(v) => {
            let ok = v.get().strip_prefix('v').is_some_and(|n| {
                !n.is_empty() && n.chars().all(|c| c.is_ascii_digit() || c == '.')
            });
            if !ok {
                cx.err(
                    v.span(),
                    format!("api_version '{}' should look like v21.0", v.get()),
                );
            }
            Some(v.get().clone())
        }
    };
    let window_template = {
        let t = section.texts("window_template", cx);
        for (k, v) in &t {
            if k != "name" && k != "language" {
                cx.err(
                    v.span(),
                    format!("unknown window_template key '{k}' (name, language)"),
                );
            }
        }
        match (t.get("name"), t.get("language")) {
            (Some(n), Some(l)) => Some(WindowTemplate {
                name: n.get().clone(),
                language: l.get().clone(),
            }),
            (None, None) => None,
            (Some(v), None) | (None, Some(v)) => {
                cx.err(
                    v.span(),
                    "window_template needs both `name` and `language`".into(),
                );
                None
            }
        }
    };
    let limits = section.rates(
        "limits",
        &[
            ("number", (80, Duration::from_secs(1))),
            ("customer", (1, Duration::from_secs(6))),
        ],
        cx,
    );
    let (per_number, per_customer) = (limits[0], limits[1]);
    section.finish("whatsapp", cx);
    let (token, api_url, api_version) = (token?, api_url?, api_version?);
    // A channel without a token stays off (the examples ship one like that) and needs
    // nothing else; a live one must know its number and check what Meta sends it.
    let off = token.is_empty().then(|| "no token".to_string());
    if off.is_none() {
        for ((key, example), v) in NEEDED
            .iter()
            .zip([&phone_number_id, &app_secret, &verify_token])
        {
            if v.as_deref().unwrap_or_default().is_empty() {
                cx.err(
                    section.span.clone(),
                    format!("a whatsapp channel with a token needs `{key}` (e.g. \"{example}\")"),
                );
            }
        }
    }
    let [phone_number_id, app_secret, verify_token] =
        [phone_number_id, app_secret, verify_token].map(Option::unwrap_or_default);
    Some(Channel {
        kind: "whatsapp",
        caps: super::CAPABILITIES,
        settings: Arc::new(WhatsAppChannel {
            token: Secret(token),
            app_secret: Secret(app_secret),
            verify_token: Secret(verify_token),
            phone_number_id,
            api_url,
            api_version,
            window_template,
            per_number,
            per_customer,
        }),
        off,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The problems of a gateway text and its `wa` channel.
    fn parsed(text: &str) -> (Vec<String>, Option<Channel>) {
        let (problems, gw) = crate::channels::testing::gateway(text);
        (problems, gw.channels.get("wa").cloned())
    }

    #[test]
    fn without_a_token_the_channel_is_off_and_needs_nothing_else() {
        let (problems, ch) = parsed("[channels.wa]\ntype = \"whatsapp\"\ntoken = \"\"\n");
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(ch.unwrap().off.as_deref(), Some("no token"));
    }

    #[test]
    fn a_live_channel_needs_its_number_and_secrets_and_takes_limits() {
        let (problems, _) = parsed(
            "[channels.wa]\ntype = \"whatsapp\"\ntoken = \"t\"\nverify_token = \"v\"\nlimits = { customer = \"1/0s\", pair = \"1/1s\" }\napi_version = \"21\"\n",
        );
        assert_eq!(
            problems,
            vec![
                "6:15: api_version '21' should look like v21.0",
                "5:10: unknown limit 'pair' (number, customer)",
                "5:10: customer limit must look like 1/1s or 20/1m",
                "1:1: a whatsapp channel with a token needs `phone_number_id` (e.g. \"${WHATSAPP_PHONE_NUMBER_ID}\")",
                "1:1: a whatsapp channel with a token needs `app_secret` (e.g. \"${WHATSAPP_APP_SECRET}\")",
            ]
        );
        let (problems, ch) = parsed(
            "[channels.wa]\ntype = \"whatsapp\"\ntoken = \"t\"\nphone_number_id = \"1\"\napp_secret = \"s\"\nverify_token = \"v\"\nlimits = { number = \"40/1s\" }\nwindow_template = { name = \"hello\", language = \"en\" }\n",
        );
        assert!(problems.is_empty(), "{problems:?}");
        let ch = ch.unwrap();
        let wa = ch.settings::<WhatsAppChannel>().unwrap();
        assert_eq!(ch.off, None);
        assert_eq!(
            (wa.per_number, wa.per_customer),
            ((40, Duration::from_secs(1)), (1, Duration::from_secs(6)))
        );
        assert_eq!(wa.api_url.as_str(), "https://graph.facebook.com/");
        assert_eq!(wa.window_template.as_ref().unwrap().name, "hello");
    }
}
