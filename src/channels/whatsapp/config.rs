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
