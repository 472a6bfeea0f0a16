//! A Cloud API webhook delivery as events: each `messages[]` item a `message` (or a `click`
//! when it is a press on one of our buttons), each `statuses[]` item a `status`; each keyed
//! by its wamid so that Meta's redeliveries are stored once.

use serde_json::{json, Value as Json};

use super::outbound::KEYBOARD_PREFIX;
use crate::store::NewEvent;

/// A conversation id: the customer's number with its `+`, as scenarios write it.
pub fn conversation(wa_id: &str) -> String {
    format!("+{}", wa_id.trim_start_matches('+'))
}

/// What a delivery held.
#[derive(Debug, Default)]
pub struct Delivery {
    pub events: Vec<NewEvent>,
    /// The customers who wrote (their wa_id), for the 24-hour window.
    pub writers: Vec<String>,
}

/// The events of a delivery; `Err` with a reason when it is not a Cloud API webhook.
/// `media_link`: a link through which a media id can be downloaded, if there is one.
pub fn normalize(
    channel: &str,
    body: &Json,
    now: i64,
    media_link: &dyn Fn(&str) -> Option<String>,
) -> Result<Delivery, String> {
    let Some(entries) = body["entry"].as_array() else {
        return Err("not a WhatsApp webhook: no `entry` list".into());
    };
    let mut out = Delivery::default();
    for entry in entries {
        let Some(changes) = entry["changes"].as_array() else {
            return Err("not a WhatsApp webhook: an entry without `changes`".into());
        };
        for change in changes {
            let value = &change["value"];
            if !value.is_object() {
                return Err("not a WhatsApp webhook: a change without `value`".into());
            }
            let contacts = value["contacts"].as_array().cloned().unwrap_or_default();
            for m in value["messages"].as_array().into_iter().flatten() {
                // A reaction to a message, or a notice that the customer changed their
                // number, is not something they said: it must not answer an ask.
                if matches!(m["type"].as_str(), Some("reaction" | "system")) {
                    continue;
                }
                let ev = message(channel, m, &contacts, now, media_link)?;
                if let Some(w) = m["from"].as_str() {
                    out.writers.push(w.to_string());
                }
                out.events.push(ev);
            }
            for s in value["statuses"].as_array().into_iter().flatten() {
                out.events.push(status(channel, s, now)?);
            }
        }
    }
    Ok(out)
}

fn text_field<'a>(v: &'a Json, what: &str) -> Result<&'a str, String> {
    v.as_str()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| format!("not a WhatsApp webhook: a {what} without its text"))
}

fn message(
    channel: &str,
    m: &Json,
    contacts: &[Json],
    now: i64,
    media_link: &dyn Fn(&str) -> Option<String>,
) -> Result<NewEvent, String> {
    let id = text_field(&m["id"], "message id")?;
    let from = text_field(&m["from"], "message sender")?;
    let kind = m["type"].as_str().unwrap_or("unknown");
    let profile = contacts
        .iter()
        .find(|c| c["wa_id"].as_str() == Some(from))
        .or(contacts.first())
        .and_then(|c| c["profile"]["name"].as_str());
    let chat = conversation(from);
    let mut data = json!({
        "message": id,
        "message_id": id,
        "type": kind,
        "chat": {"id": chat, "type": "private", "wa_id": from},
        "from": {"id": chat, "wa_id": from, "name": profile, "first_name": profile},
        "text": "",
        "lang": null,
        "reply_to": m["context"]["id"],
        "timestamp": m["timestamp"],
    });
    // A press on one of our buttons carries our data: a click, or a reply-keyboard text.
    // A template's quick reply carries the payload we gave it, or the template's own.
    let press = match kind {
        "interactive" => {
            let i = &m["interactive"];
            let reply = match i["type"].as_str() {
                Some("button_reply") => &i["button_reply"],
                Some("list_reply") => &i["list_reply"],
                _ => &Json::Null,
            };
            data["interactive"] = i.clone();
            reply["id"]
                .as_str()
                .map(|d| (d, reply["title"].as_str().unwrap_or_default()))
        }
        "button" => {
            data["button"] = m["button"].clone();
            let b = &m["button"];
            match b["payload"].as_str() {
                Some(p) if is_callback(p) => Some((p, b["text"].as_str().unwrap_or_default())),
                _ => Some((KEYBOARD_PREFIX, b["text"].as_str().unwrap_or_default())),
            }
        }
        _ => None,
    };
    let mut event = "message";
    match press {
        Some((d, title)) if d.starts_with(KEYBOARD_PREFIX) => data["text"] = json!(title),
        Some((d, title)) => {
            event = "click";
            // WhatsApp has no click answers: the press is named by its own wamid.
            data["click"] = json!(id);
            data["data"] = json!(d);
            data["text"] = json!(title);
            // The click names the message its buttons were on.
            data["message"] = m["context"]["id"].clone();
            data["message_id"] = m["context"]["id"].clone();
        }
        None => {}
    }
    match kind {
        "text" => data["text"] = m["text"]["body"].clone(),
        "image" | "document" | "audio" | "video" | "sticker" | "voice" => {
            let media = &m[kind];
            data["media"] = json!({
                "kind": kind, "id": media["id"], "mime_type": media["mime_type"],
                "caption": media["caption"], "filename": media["filename"], "sha256": media["sha256"],
                "url": media["id"].as_str().and_then(media_link),
            });
            data["text"] = json!(media["caption"].as_str().unwrap_or_default());
        }
        "location" => data["location"] = m["location"].clone(),
        "contacts" => data["contacts"] = m["contacts"].clone(),
        _ => {}
    }
    Ok(NewEvent {
        kind: event.into(),
        source: channel.to_string(),
        dedupe_key: Some(format!("whatsapp:{channel}:{id}")),
        data,
        meta: json!({"wamid": id}),
        rejected: None,
        received_at: now,
    })
}

/// Whether a template button's payload is callback data we gave it (an ask's choice, an
/// offer's button, a `send`'s button) rather than the template's own.
fn is_callback(payload: &str) -> bool {
    ["a:", "o:", "b:"].iter().any(|p| payload.starts_with(p))
}

fn status(channel: &str, s: &Json, now: i64) -> Result<NewEvent, String> {
    let id = text_field(&s["id"], "status's message id")?;
    let state = text_field(&s["status"], "status")?;
    let recipient = s["recipient_id"].as_str().unwrap_or_default();
    let first = &s["errors"][0];
    let error = first.is_object().then(|| {
        json!({"code": first["code"], "title": first["title"], "message": first["message"],
            "details": first["error_data"]["details"]})
    });
    Ok(NewEvent {
        kind: "status".into(),
        source: channel.to_string(),
        dedupe_key: Some(format!("whatsapp:{channel}:status:{id}:{state}")),
        data: json!({
            "message": id,
            "status": state,
            "chat": {"id": conversation(recipient), "type": "private", "wa_id": recipient},
            "timestamp": s["timestamp"],
            "error": error,
            "errors": s["errors"],
        }),
        meta: json!({"wamid": id, "status": state}),
        rejected: None,
        received_at: now,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_links(_: &str) -> Option<String> {
        None
    }

    fn delivery(value: Json) -> Json {
        json!({"object": "whatsapp_business_account",
            "entry": [{"id": "1", "changes": [{"field": "messages", "value": value}]}]})
    }

    #[test]
    fn texts_and_presses_become_messages_and_clicks() {
        let body = delivery(json!({
            "messaging_product": "whatsapp",
            "contacts": [{"profile": {"name": "Ada"}, "wa_id": "48555"}],
            "messages": [
                {"from": "48555", "id": "wamid.1", "timestamp": "1", "type": "text", "text": {"body": "hi"}},
                {"from": "48555", "id": "wamid.2", "timestamp": "2", "type": "interactive",
                 "context": {"from": "1", "id": "wamid.Q"},
                 "interactive": {"type": "button_reply", "button_reply": {"id": "a:7:1", "title": "2"}}},
                {"from": "48555", "id": "wamid.3", "timestamp": "3", "type": "interactive",
                 "interactive": {"type": "list_reply", "list_reply": {"id": "k:0", "title": "Yes", "description": "d"}}},
                {"from": "48555", "id": "wamid.4", "timestamp": "4", "type": "image",
                 "image": {"id": "media-1", "mime_type": "image/jpeg", "caption": "look"}},
                {"from": "48555", "id": "wamid.5", "timestamp": "5", "type": "reaction",
                 "reaction": {"message_id": "wamid.Q", "emoji": "👍"}},
            ]
        }));
        let d = normalize("wa", &body, 5, &no_links).unwrap();
        let e = &d.events;
        assert_eq!(d.writers, vec!["48555"; 4]);
        assert_eq!(d.events.len(), 4, "the reaction is no event");
        assert_eq!(
            (e[0].kind.as_str(), &e[0].data["text"]),
            ("message", &json!("hi"))
        );
        assert_eq!(e[0].data["chat"]["id"], "+48555");
        assert_eq!(e[0].data["from"]["name"], "Ada");
        assert_eq!(e[0].dedupe_key.as_deref(), Some("whatsapp:wa:wamid.1"));
        assert_eq!(e[1].kind, "click");
        assert_eq!(e[1].data["data"], "a:7:1");
        assert_eq!(e[1].data["message"], "wamid.Q");
        assert_eq!(
            (e[2].kind.as_str(), &e[2].data["text"]),
            ("message", &json!("Yes"))
        );
        assert_eq!(e[3].data["media"]["id"], "media-1");
        assert_eq!(e[3].data["text"], "look");
    }

    #[test]
    fn statuses_are_status_events_keyed_by_message_and_state() {
        let body = delivery(json!({"statuses": [{"id": "wamid.S", "status": "failed",
            "recipient_id": "48555", "timestamp": "9",
            "errors": [{"code": 131047, "title": "Re-engagement message", "error_data": {"details": "24h"}}]}]}));
        let d = normalize("wa", &body, 5, &no_links).unwrap();
        assert_eq!(d.events[0].kind, "status");
        assert_eq!(d.events[0].data["error"]["code"], 131047);
        assert_eq!(
            d.events[0].dedupe_key.as_deref(),
            Some("whatsapp:wa:status:wamid.S:failed")
        );
        assert!(d.writers.is_empty());
    }

    #[test]
    fn malformed_deliveries_get_a_reason() {
        assert!(normalize("wa", &json!({"object": "x"}), 0, &no_links).is_err());
        assert!(normalize("wa", &json!({"entry": [{}]}), 0, &no_links).is_err());
        let no_id = delivery(json!({"messages": [{"from": "1", "type": "text"}]}));
        assert!(normalize("wa", &no_id, 0, &no_links)
            .unwrap_err()
            .contains("message id"));
        assert!(normalize("wa", &json!([1, 2]), 0, &no_links).is_err());
    }
}
