//! Channel operations as Discord messages: markdown text (data escaped), choices as buttons
//! (5 to a row, 5 rows), link buttons, a reply-keyboard's texts as buttons too, files as
//! links (Discord shows their previews), a reply to a message, and no mentions of everyone.

use serenity::builder::{
    CreateActionRow, CreateAllowedMentions, CreateButton, CreateEmbed, CreateEmbedFooter,
    CreateMessage, EditMessage,
};
use serenity::model::id::MessageId;

use crate::channels::{Choice, LinkButton, OutEdit, OutEmbed, OutMessage, SendError};

/// Buttons on one row, rows on one message.
pub const ROW: usize = 5;
pub const ROWS: usize = 5;
/// Characters in a button's label, bytes in its custom id, characters in a message.
pub const LABEL_MAX: usize = 80;
pub const CUSTOM_ID_MAX: usize = 100;
pub const CONTENT_MAX: usize = 2000;
/// Custom id of a reply-keyboard button: its press is a typed reply.
pub const KEYBOARD_PREFIX: &str = "k:";

pub fn permanent(message: String) -> SendError {
    SendError {
        message,
        retry: false,
    }
}

/// A button's label cut to what Discord shows.
fn label(text: &str) -> String {
    text.chars().take(LABEL_MAX).collect()
}

/// The rows of buttons: choices, then reply-keyboard texts, then links; refused when they do
/// not fit in 5 rows of 5.
pub fn rows(
    choices: &[Choice],
    keyboard: &[String],
    links: &[LinkButton],
) -> Result<Vec<CreateActionRow>, SendError> {
    let mut buttons: Vec<CreateButton> = Vec::new();
    for c in choices {
        if c.data.len() > CUSTOM_ID_MAX {
            return Err(permanent(format!(
                "discord: a button's data is longer than {CUSTOM_ID_MAX} bytes: {}",
                c.data
            )));
        }
        buttons.push(CreateButton::new(c.data.clone()).label(label(&c.text)));
    }
    for (i, k) in keyboard.iter().enumerate() {
        buttons.push(CreateButton::new(format!("{KEYBOARD_PREFIX}{i}")).label(label(k)));
    }
    for l in links {
        buttons.push(CreateButton::new_link(l.url.clone()).label(label(&l.text)));
    }
    if buttons.len() > ROW * ROWS {
        return Err(permanent(format!(
            "discord: {} buttons do not fit on a message ({ROWS} rows of {ROW})",
            buttons.len()
        )));
    }
    Ok(buttons
        .chunks(ROW)
        .map(|row| CreateActionRow::Buttons(row.to_vec()))
        .collect())
}

/// The text with the files written under it, within Discord's length.
pub fn content(text: &str, files: &[String]) -> Result<String, SendError> {
    let mut out = text.to_string();
    for f in files {
        out.push('\n');
        out.push_str(f);
    }
    if out.chars().count() > CONTENT_MAX {
        return Err(permanent(format!(
            "discord: a message is at most {CONTENT_MAX} characters; this one has {}",
            out.chars().count()
        )));
    }
    Ok(out)
}

/// A rich card within Discord's limits (title 256, description 4096, field name 256 and value
/// 1024 characters, footer 2048, 6000 in all).
pub fn embed(e: &OutEmbed) -> Result<CreateEmbed, SendError> {
    let len = |s: &Option<String>| s.as_deref().map_or(0, |s| s.chars().count());
    let limits = [
        ("title", len(&e.title), 256),
        ("description", len(&e.description), 4096),
        ("footer", len(&e.footer), 2048),
    ];
    for (what, n, max) in limits {
        if n > max {
            return Err(permanent(format!(
                "discord: an embed's {what} is at most {max} characters; this one has {n}"
            )));
        }
    }
    let mut total = limits.iter().map(|(_, n, _)| n).sum::<usize>();
    let mut b = CreateEmbed::new();
    for (name, value, inline) in &e.fields {
        let (n, v) = (name.chars().count(), value.chars().count());
        if n > 256 || v > 1024 {
            return Err(permanent(format!(
                "discord: an embed field's name is at most 256 characters and its value 1024 ({n} and {v} here)"
            )));
        }
        total += n + v;
        b = b.field(name, value, *inline);
    }
    if total > 6000 {
        return Err(permanent(format!(
            "discord: an embed holds at most 6000 characters; this one {total}"
        )));
    }
    if let Some(t) = &e.title {
        b = b.title(t);
    }
    if let Some(d) = &e.description {
        b = b.description(d);
    }
    if let Some(u) = e.url.as_deref().filter(|u| !u.is_empty()) {
        b = b.url(u);
    }
    if let Some(c) = e.color {
        b = b.colour(c);
    }
    if let Some(f) = &e.footer {
        b = b.footer(CreateEmbedFooter::new(f));
    }
    Ok(b)
}

/// Mentions the operator writes (`<@id>`, `<@&role>`) ping; `@everyone` and `@here` never do.
pub fn mentions() -> CreateAllowedMentions {
    CreateAllowedMentions::new().all_users(true).all_roles(true)
}

/// The message to `channel` (the conversation `m.to` resolved).
pub fn message(m: &OutMessage, channel: u64) -> Result<CreateMessage, SendError> {
    let files: Vec<String> = m.attachments.iter().map(|a| a.url.clone()).collect();
    let mut b = CreateMessage::new()
        .content(content(&m.text, &files)?)
        .components(rows(&m.choices, &m.keyboard, &m.links)?)
        .allowed_mentions(mentions());
    if let Some(e) = &m.embed {
        b = b.embed(embed(e)?);
    }
    if let Some(r) = m.reply_to.as_deref().filter(|r| !r.is_empty()) {
        let id: u64 = r
            .parse()
            .map_err(|_| permanent(format!("discord: '{r}' is not a message id")))?;
        b = b.reference_message((
            serenity::model::id::ChannelId::new(channel),
            MessageId::new(id),
        ));
    }
    Ok(b)
}

pub fn edit(e: &OutEdit) -> Result<EditMessage, SendError> {
    let mut b = EditMessage::new()
        .components(rows(&e.choices, &[], &e.links)?)
        .allowed_mentions(mentions());
    if let Some(t) = &e.text {
        b = b.content(content(t, &[])?);
    }
    Ok(b)
}

/// A channel's id as written in `dc:<id>` (a DM is a channel too).
pub fn channel_id(to: &str) -> Result<u64, SendError> {
    to.trim()
        .parse::<u64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| permanent(format!("discord: '{to}' is not a channel id (digits)")))
}

/// A message id given out as a reference.
pub fn message_id(r: &str) -> Result<MessageId, SendError> {
    r.parse::<u64>()
        .ok()
        .filter(|id| *id > 0)
        .map(MessageId::new)
        .ok_or_else(|| permanent(format!("discord: '{r}' is not a message id")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn choice(i: usize) -> Choice {
        Choice {
            text: format!("Choice {i}"),
            data: format!("o:1:{i}"),
        }
    }

    #[test]
    fn buttons_go_five_to_a_row_and_too_many_are_refused() {
        let five_rows = rows(
            &(0..24).map(choice).collect::<Vec<_>>(),
            &[],
            &[LinkButton {
                text: "Open".into(),
                url: "https://example.com".into(),
            }],
        )
        .unwrap();
        assert_eq!(five_rows.len(), 5);
        let e = rows(&(0..26).map(choice).collect::<Vec<_>>(), &[], &[])
            .err()
            .unwrap();
        assert!(
            !e.retry && e.message.contains("26 buttons"),
            "{}",
            e.message
        );
        let long = Choice {
            text: "x".into(),
            data: "d".repeat(101),
        };
        assert!(rows(&[long], &[], &[]).is_err());
    }

    #[test]
    fn text_and_ids_are_checked() {
        assert!(content(&"x".repeat(2001), &[]).is_err());
        assert_eq!(
            content("see", &["https://f/1.pdf".into()]).unwrap(),
            "see\nhttps://f/1.pdf"
        );
        assert_eq!(channel_id("123").unwrap(), 123);
        assert!(channel_id("-100").is_err());
        assert!(message_id("abc").is_err());
    }
}
