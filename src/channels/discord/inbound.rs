//! What Discord sends, as events: a message in a guild channel, a thread or a DM → `message`;
//! a press on one of our buttons → `click` (a reply-keyboard button → `message` with its
//! label as the text). The fields are those of the other chat channels.

use serde_json::{json, Value as Json};
use serenity::model::application::{ActionRowComponent, ButtonKind, ComponentInteraction};
use serenity::model::channel::Message;
use serenity::model::user::User;

use super::outbound::KEYBOARD_PREFIX;
use crate::store::NewEvent;

fn user(u: &User) -> Json {
    json!({
        "id": u.id.get().to_string(),
        "username": u.name,
        "first_name": u.global_name.clone().unwrap_or_else(|| u.name.clone()),
        "bot": u.bot,
    })
}

fn chat(channel_id: u64, guild_id: Option<u64>) -> Json {
    json!({
        "id": channel_id.to_string(),
        "type": if guild_id.is_some() { "guild" } else { "private" },
        "guild_id": guild_id.map(|g| g.to_string()),
    })
}

fn event(channel: &str, kind: &str, key: String, data: Json, now: i64) -> NewEvent {
    NewEvent {
        kind: kind.into(),
        source: channel.to_string(),
        dedupe_key: Some(key),
        data,
        meta: json!({"discord": true}),
        rejected: None,
        received_at: now,
    }
}

/// A message someone wrote; `None` for a bot's (our own included).
pub fn message(channel: &str, m: &Message, now: i64) -> Option<NewEvent> {
    if m.author.bot {
        return None;
    }
    let id = m.id.get().to_string();
    let data = json!({
        "message": id,
        "message_id": id,
        "chat": chat(m.channel_id.get(), m.guild_id.map(|g| g.get())),
        "from": user(&m.author),
        "text": m.content,
        "lang": null,
        "reply_to": m.referenced_message.as_ref().map(|r| r.id.get().to_string())
            .or_else(|| m.message_reference.as_ref().and_then(|r| r.message_id).map(|i| i.get().to_string())),
        "attachments": m.attachments.iter().map(|a| json!({
            "name": a.filename, "url": a.url, "size": a.size, "content_type": a.content_type})).collect::<Vec<_>>(),
    });
    Some(event(
        channel,
        "message",
        format!("discord:{channel}:m:{id}"),
        data,
        now,
    ))
}

/// The label of the button with `custom_id` on a message.
fn label_of(m: &Message, custom_id: &str) -> Option<String> {
    m.components
        .iter()
        .flat_map(|r| &r.components)
        .find_map(|c| match c {
            ActionRowComponent::Button(b) => match &b.data {
                ButtonKind::NonLink { custom_id: id, .. } if id == custom_id => b.label.clone(),
                _ => None,
            },
            _ => None,
        })
}

/// The click id an answer needs: the application and the interaction's token.
pub fn click_id(application_id: u64, token: &str) -> String {
    format!("{application_id}:{token}")
}

/// A button press.
pub fn press(channel: &str, i: &ComponentInteraction, now: i64) -> NewEvent {
    let id = i.id.get().to_string();
    let custom_id = &i.data.custom_id;
    let message_id = i.message.id.get().to_string();
    let mut data = json!({
        "interaction": id,
        "click": click_id(i.application_id.get(), &i.token),
        "data": custom_id,
        "from": user(&i.user),
        "lang": i.locale,
        "chat": chat(i.channel_id.get(), i.guild_id.map(|g| g.get())),
        "message": message_id,
        "message_id": message_id,
        "text": label_of(&i.message, custom_id),
    });
    let key = format!("discord:{channel}:i:{id}");
    if custom_id.starts_with(KEYBOARD_PREFIX) {
        // A reply-keyboard button: as if its label was typed.
        data["message"] = json!(id);
        data["reply_to"] = json!(message_id);
        return event(channel, "message", key, data, now);
    }
    event(channel, "click", key, data, now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_press_on_a_keyboard_button_is_a_typed_reply() {
        let msg = json!({"id": "20", "channel_id": "10", "author": {"id": "1", "username": "bot", "bot": true},
            "content": "Confirm?", "timestamp": "2026-12-01T10:00:00Z", "tts": false, "mention_everyone": false,
            "mentions": [], "mention_roles": [], "attachments": [], "embeds": [], "pinned": false, "type": 0,
            "components": [{"type": 1, "components": [{"type": 2, "style": 1, "label": "Yes", "custom_id": "k:0"}]}]});
        let i: ComponentInteraction = serde_json::from_value(json!({
            "id": "30", "application_id": "5", "type": 3, "token": "tok", "version": 1, "channel_id": "10",
            "user": {"id": "7", "username": "ada"}, "data": {"custom_id": "k:0", "component_type": 2},
            "message": msg, "locale": "pl", "entitlements": [], "attachment_size_limit": 8388608,
        }))
        .unwrap();
        let ev = press("dc", &i, 1);
        assert_eq!(ev.kind, "message");
        assert_eq!(ev.data["text"], "Yes");
        assert_eq!(ev.data["chat"]["id"], "10");
        assert_eq!(ev.data["lang"], "pl");
        assert_eq!(ev.dedupe_key.as_deref(), Some("discord:dc:i:30"));
    }
}
