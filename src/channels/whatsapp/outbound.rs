//! The channel operations as Cloud API message payloads, and Meta's error answers as send
//! errors. Pure functions: the client in `mod.rs` posts what these build.

use std::time::Duration;

use serde_json::{json, Value as Json};

use crate::channels::{OutMessage, OutTemplate, SendError};

/// Reply buttons on one message, and characters in a button's title.
pub const MAX_BUTTONS: usize = 3;
pub const BUTTON_TITLE_MAX: usize = 20;
/// Rows in a list message, characters in a row's title and description.
pub const MAX_ROWS: usize = 10;
pub const ROW_TITLE_MAX: usize = 24;
pub const ROW_DESCRIPTION_MAX: usize = 72;
/// Characters in a text message and in an interactive message's body.
pub const TEXT_MAX: usize = 4096;
pub const BODY_MAX: usize = 1024;

/// The id of a reply-keyboard button: pressing it answers with its title as a typed reply.
pub const KEYBOARD_PREFIX: &str = "k:";

/// The label of the button that opens a list message.
const LIST_BUTTON: &str = "Choose";

/// A number as the Cloud API takes it (digits only), from `+48 555-123-456` and the like.
pub fn recipient(to: &str) -> Result<String, SendError> {
    let digits: String = to
        .chars()
        .filter(|c| !matches!(c, '+' | ' ' | '-' | '(' | ')'))
        .collect();
    if digits.len() < 5 || !digits.chars().all(|c| c.is_ascii_digit()) {
        return Err(permanent(format!(
            "'{to}' is not a WhatsApp number (international format, e.g. +48555123456)"
        )));
    }
    Ok(digits)
}

pub fn permanent(message: String) -> SendError {
    SendError {
        message,
        retry: false,
    }
}

/// The message's text with its link buttons written out (WhatsApp has no URL buttons on a
/// free-form message).
fn text_of(m: &OutMessage) -> String {
    let mut text = m.text.clone();
    for l in &m.links {
        text.push_str(&format!("\n{}: {}", l.text, l.url));
    }
    text
}

/// The buttons a message offers, as (id, title): its callback choices, else its
/// reply-keyboard texts.
fn buttons(m: &OutMessage) -> Vec<(String, String)> {
    if !m.choices.is_empty() {
        return m
            .choices
            .iter()
            .map(|c| (c.data.clone(), c.text.clone()))
            .collect();
    }
    m.keyboard
        .iter()
        .enumerate()
        .map(|(i, t)| (format!("{KEYBOARD_PREFIX}{i}"), t.clone()))
        .collect()
}

/// The payload of a free-form message: text, reply buttons (up to 3 with short titles) or
/// a list (up to 10 rows), quoting `reply_to`.
pub fn message(to: &str, m: &OutMessage) -> Result<Json, SendError> {
    let text = text_of(m);
    let buttons = buttons(m);
    let mut body = if buttons.is_empty() {
        if text.chars().count() > TEXT_MAX {
            return Err(permanent(format!(
                "the text has {} characters; WhatsApp takes at most {TEXT_MAX}",
                text.chars().count()
            )));
        }
        json!({"type": "text", "text": {"body": text, "preview_url": false}})
    } else {
        if text.chars().count() > BODY_MAX {
            return Err(permanent(format!(
                "a message with buttons has {} characters; WhatsApp takes at most {BODY_MAX}",
                text.chars().count()
            )));
        }
        json!({"type": "interactive", "interactive": interactive(&text, &buttons)?})
    };
    body["messaging_product"] = json!("whatsapp");
    body["recipient_type"] = json!("individual");
    body["to"] = json!(to);
    if let Some(r) = m.reply_to.as_deref().filter(|r| !r.is_empty()) {
        body["context"] = json!({"message_id": r});
    }
    Ok(body)
}

fn interactive(text: &str, buttons: &[(String, String)]) -> Result<Json, SendError> {
    let fits = |max: usize| buttons.iter().all(|(_, t)| t.chars().count() <= max);
    if buttons.len() <= MAX_BUTTONS && fits(BUTTON_TITLE_MAX) {
        let buttons: Vec<Json> = buttons
            .iter()
            .map(|(id, title)| json!({"type": "reply", "reply": {"id": id, "title": title}}))
            .collect();
        return Ok(json!({"type": "button", "body": {"text": text},
            "action": {"buttons": buttons}}));
    }
    if buttons.len() > MAX_ROWS || !fits(ROW_TITLE_MAX) {
        return Err(permanent(format!(
            "{} choices; WhatsApp shows up to {MAX_BUTTONS} buttons (titles up to {BUTTON_TITLE_MAX} characters) or a list of up to {MAX_ROWS} rows (titles up to {ROW_TITLE_MAX})",
            buttons.len()
        )));
    }
    let rows: Vec<Json> = buttons
        .iter()
        .map(|(id, title)| json!({"id": id, "title": title}))
        .collect();
    Ok(json!({"type": "list", "body": {"text": text},
        "action": {"button": LIST_BUTTON, "sections": [{"rows": rows}]}}))
}

/// The payload of a template message: its body parameters (by default the message's text
/// as the one), and the message's choices as the payloads of the template's quick-reply
/// buttons (in order). Its language defaults to the message's.
pub fn template(to: &str, t: &OutTemplate, m: &OutMessage) -> Json {
    let params: Vec<Json> = match t.params.is_empty() {
        true => vec![json!({"type": "text", "text": text_of(m)})],
        false => t
            .params
            .iter()
            .map(|p| json!({"type": "text", "text": p}))
            .collect(),
    };
    let language = t.language.as_deref().or(m.lang.as_deref()).unwrap_or("en");
    let mut components = vec![json!({"type": "body", "parameters": params})];
    for (i, (id, _)) in buttons(m).iter().enumerate() {
        components.push(
            json!({"type": "button", "sub_type": "quick_reply", "index": i.to_string(),
            "parameters": [{"type": "payload", "payload": id}]}),
        );
    }
    json!({
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": to,
        "type": "template",
        "template": {"name": t.name, "language": {"code": language}, "components": components},
    })
}

/// Marks a customer's message read.
pub fn read(message: &str) -> Json {
    json!({"messaging_product": "whatsapp", "status": "read", "message_id": message})
}

/// A file by URL: an image, video or audio by its extension, else a document.
pub fn media(to: &str, url: &str) -> Json {
    let path = url
        .split(['?', '#'])
        .next()
        .unwrap_or(url)
        .to_ascii_lowercase();
    let ext = path.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
    let kind = match ext {
        "jpg" | "jpeg" | "png" => "image",
        "mp4" | "3gp" => "video",
        "mp3" | "ogg" | "aac" | "amr" | "m4a" => "audio",
        _ => "document",
    };
    let mut body = json!({"messaging_product": "whatsapp", "recipient_type": "individual",
        "to": to, "type": kind});
    body[kind] = json!({"link": url});
    body
}

/// How a refused send goes on.
#[derive(Debug)]
pub enum Refusal {
    /// A throughput limit (130429 for the number, 131056 for the customer): the same
    /// message may go after a pause.
    Pause {
        code: i64,
        for_: Duration,
    },
    Failed(SendError),
}

/// Meta's error answer (`{"error": {"code", "message", "error_data": {"details"}}}`) as a
/// refusal. `customer_pause`: how long to hold a customer after 131056.
pub fn refusal(status: u16, body: &Json, customer_pause: Duration) -> Refusal {
    let e = &body["error"];
    let code = e["code"].as_i64().unwrap_or(0);
    let title = e["error_user_title"]
        .as_str()
        .or(e["message"].as_str())
        .unwrap_or("no error message");
    let details = e["error_data"]["details"].as_str().unwrap_or_default();
    let mut message = format!("whatsapp {status}: {title}");
    if !message.contains(&format!("#{code}")) && code != 0 {
        message = format!("whatsapp {status}: (#{code}) {title}");
    }
    if !details.is_empty() {
        message.push_str(&format!(" — {details}"));
    }
    match code {
        130429 => Refusal::Pause {
            code,
            for_: Duration::from_secs(1),
        },
        131056 => Refusal::Pause {
            code,
            for_: customer_pause,
        },
        // Undeliverable, unsupported, outside the window: sending again cannot help.
        131026 | 131051 | 131047 | 470 => Refusal::Failed(permanent(message)),
        // Throttled application or temporary trouble on Meta's side.
        4 | 80007 | 131000 | 131016 | 133004 => Refusal::Failed(SendError {
            message,
            retry: true,
        }),
        _ => Refusal::Failed(SendError {
            message,
            retry: status >= 500 || status == 429,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channels::Choice;

    fn choices(n: usize, title: &str) -> Vec<Choice> {
        (0..n)
            .map(|i| Choice {
                text: format!("{title}{i}"),
                data: format!("a:1:{i}"),
            })
            .collect()
    }

    #[test]
    fn numbers_lose_their_punctuation_and_words_are_refused() {
        assert_eq!(recipient("+48 555-123-456").unwrap(), "48555123456");
        assert!(!recipient("ada@example.com").unwrap_err().retry);
    }

    #[test]
    fn three_short_choices_are_buttons_more_are_a_list_too_many_fail() {
        let mut m = OutMessage {
            to: "+48555".into(),
            text: "Pick".into(),
            choices: choices(3, "c"),
            reply_to: Some("wamid.Q".into()),
            ..Default::default()
        };
        let b = message("48555", &m).unwrap();
        assert_eq!(b["interactive"]["type"], "button");
        assert_eq!(
            b["interactive"]["action"]["buttons"][2]["reply"]["id"],
            "a:1:2"
        );
        assert_eq!(b["context"]["message_id"], "wamid.Q");
        m.choices = choices(4, "c");
        let l = message("48555", &m).unwrap();
        assert_eq!(l["interactive"]["type"], "list");
        assert_eq!(
            l["interactive"]["action"]["sections"][0]["rows"][3]["title"],
            "c3"
        );
        m.choices = choices(11, "c");
        assert!(!message("48555", &m).unwrap_err().retry);
        m.choices = choices(2, "a title of twenty-five ch");
        assert!(message("48555", &m).is_err());
    }

    #[test]
    fn keyboard_texts_become_buttons_and_links_are_written_out() {
        let m = OutMessage {
            to: "1".into(),
            text: "Hi".into(),
            keyboard: vec!["Yes".into(), "No".into()],
            links: vec![crate::channels::LinkButton {
                text: "Open".into(),
                url: "https://x.example/1".into(),
            }],
            ..Default::default()
        };
        let b = message("48555", &m).unwrap();
        assert_eq!(
            b["interactive"]["body"]["text"],
            "Hi\nOpen: https://x.example/1"
        );
        assert_eq!(
            b["interactive"]["action"]["buttons"][1]["reply"]["id"],
            "k:1"
        );
        assert_eq!(b["messaging_product"], "whatsapp");
    }

    #[test]
    fn meta_errors_pause_fail_or_retry() {
        let err = |code: i64, status: u16| {
            refusal(
                status,
                &json!({"error": {"message": format!("(#{code}) Title {code}"), "code": code,
                    "error_data": {"messaging_product": "whatsapp", "details": "why"}}}),
                Duration::from_secs(6),
            )
        };
        assert!(
            matches!(err(131056, 400), Refusal::Pause { for_, .. } if for_ == Duration::from_secs(6))
        );
        assert!(matches!(err(130429, 400), Refusal::Pause { .. }));
        match err(131047, 400) {
            Refusal::Failed(e) => {
                assert!(!e.retry);
                assert_eq!(e.message, "whatsapp 400: (#131047) Title 131047 — why");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            err(1, 503),
            Refusal::Failed(SendError { retry: true, .. })
        ));
        assert!(matches!(
            err(100, 400),
            Refusal::Failed(SendError { retry: false, .. })
        ));
    }

    #[test]
    fn templates_take_their_params_or_the_text_and_map_choices_to_quick_replies() {
        let m = OutMessage {
            to: "1".into(),
            lang: Some("pl".into()),
            text: "Pick".into(),
            choices: choices(2, "c"),
            ..Default::default()
        };
        let t = OutTemplate {
            name: "reminder".into(),
            language: None,
            params: Vec::new(),
        };
        let b = template("48555", &t, &m);
        assert_eq!(b["template"]["language"]["code"], "pl");
        let c = &b["template"]["components"];
        assert_eq!(c[0]["parameters"][0]["text"], "Pick");
        assert_eq!(c[2]["index"], "1");
        assert_eq!(c[2]["parameters"][0]["payload"], "a:1:1");
        let t = OutTemplate {
            params: vec!["Fri".into(), "10:00".into()],
            language: Some("en_US".into()),
            ..t
        };
        let b = template("48555", &t, &m);
        assert_eq!(b["template"]["language"]["code"], "en_US");
        assert_eq!(
            b["template"]["components"][0]["parameters"][1]["text"],
            "10:00"
        );
    }

    #[test]
    fn media_kinds_follow_the_extension() {
        assert_eq!(
            media("1", "https://x/a.PNG?s=1")["image"]["link"],
            "https://x/a.PNG?s=1"
        );
        assert_eq!(media("1", "https://x/a.pdf")["type"], "document");
    }
}
