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

/// A required text setting with `${VAR}` replaced; reported when missing.
fn required(section: &Section, key: &str, example: &str, cx: &mut dyn SectionCx) -> Option<String> {
    match section.text(key, cx) {
        Some(t) => cx.env(&t),
        None => {
            cx.err(
                section.span.clone(),
                format!("a whatsapp channel needs `{key}` (e.g. \"{example}\")"),
            );
            None
        }
    }
}

pub fn parse(section: &Section, cx: &mut dyn SectionCx) -> Option<Channel> {
    let token = required(section, "token", "${WHATSAPP_TOKEN}", cx);
    let phone_number_id = required(
        section,
        "phone_number_id",
        "${WHATSAPP_PHONE_NUMBER_ID}",
        cx,
    );
    let app_secret = required(section, "app_secret", "${WHATSAPP_APP_SECRET}", cx);
    let verify_token = required(section, "verify_token", "${WHATSAPP_VERIFY_TOKEN}", cx);
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
    let (token, phone_number_id, app_secret, verify_token, api_url, api_version) = (
        token?,
        phone_number_id?,
        app_secret?,
        verify_token?,
        api_url?,
        api_version?,
    );
    // A channel without a token stays off (the examples ship one like that); a live one must
    // be able to check what Meta sends it.
    let off = token.is_empty().then(|| "no token".to_string());
    if off.is_none() {
        for (key, v) in [
            ("phone_number_id", &phone_number_id),
            ("app_secret", &app_secret),
            ("verify_token", &verify_token),
        ] {
            if v.is_empty() {
                cx.err(
                    section.span.clone(),
                    format!("a whatsapp channel with a token needs a non-empty `{key}`"),
                );
            }
        }
    }
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
