//! `send` and `edit` steps, their buttons, and the chat message of an `ask` or `offer`.

use std::collections::HashMap;
use std::ops::Range;

use super::buttons::{check_choice, check_choice_count};
use super::cx::FileCx;
use super::values::var_name;
use super::Messages;
use crate::lang::expr::Templates;
use crate::lang::model::*;
use crate::lang::raw::{self, Sp};

pub(super) fn compile_send(
    s: &Sp<raw::SendDef>,
    cx: &mut FileCx,
    t: &Templates,
    gw: &Gateway,
    i18n: &dyn Messages,
) -> Option<SendSpec> {
    let sd = s.get();
    let to = sd.to.get();
    let (channel, address) = match to.split_once(':') {
        Some((c, a)) => (c.to_string(), Some(a.to_string())),
        None => (to.clone(), None),
    };
    if channel == "staff" {
        // `staff:<id>` or `staff:@group`: checked here when it is written out.
        match &address {
            Some(a) if !a.contains("{{") && gw.staff_named(a).is_empty() => cx.err(
                sd.to.span(),
                format!("no staff member or group '{a}' in the staff directory"),
            ),
            None => cx.err(sd.to.span(), "staff needs an id or @group: staff:elena"),
            _ => {}
        }
    } else if !gw.channels.contains_key(&channel) {
        let mut known: Vec<_> = gw.channels.keys().cloned().collect();
        known.sort();
        cx.err(
            sd.to.span(),
            format!(
                "unknown channel '{channel}' (configured: {})",
                known.join(", ")
            ),
        );
    }
    let address = address.and_then(|a| cx.tmpl_str(t, &a, sd.to.span()));
    let body = match (&sd.text, &sd.template) {
        (Some(id), None) => {
            let missing = i18n.missing_in(id.get());
            if !missing.is_empty() {
                cx.err(
                    id.span(),
                    format!(
                        "unknown Fluent message '{}': missing in locale {}",
                        id.get(),
                        missing.join(", ")
                    ),
                );
            }
            let args = sd
                .args
                .iter()
                .flatten()
                .filter_map(|(k, v)| Some((k.clone(), cx.tmpl(t, v)?)))
                .collect();
            SendBody::Fluent {
                id: id.get().clone(),
                args,
            }
        }
        (None, Some(tm)) => SendBody::Template(cx.tmpl(t, tm)?),
        _ => {
            cx.err(
                s.span(),
                "send needs exactly one of `text` (a Fluent message id) or `template`",
            );
            return None;
        }
    };
    let buttons = compile_buttons(&sd.buttons, &channel, cx, t, gw);
    if let (Some(first), Some(c)) = (sd.attachments.first(), gw.channels.get(&channel)) {
        if !cx.caps(c).attachments {
            cx.err(
                first.span(),
                format!("channel '{channel}' ({}) sends no attachments", c.kind()),
            );
        }
    }
    let attachments = sd
        .attachments
        .iter()
        .filter_map(|a| cx.tmpl(t, a))
        .collect();
    let save = match &sd.save {
        Some(_) if channel == "staff" => {
            cx.err(
                sd.to.span(),
                "`save` keeps one message: send to one conversation, not staff",
            );
            None
        }
        Some(v) => var_name(cx, Some(v), ""),
        None => None,
    };
    let mut approved = |wt: &Sp<raw::WindowTemplateDef>| {
        if let Some(c) = gw.channels.get(&channel).filter(|c| !cx.caps(c).templates) {
            cx.err(
                wt.span(),
                format!(
                    "channel '{channel}' ({}) has no message templates",
                    c.kind()
                ),
            );
        }
        let d = wt.get();
        WindowTemplateSpec {
            name: d.name.get().clone(),
            language: d.language.as_ref().and_then(|l| cx.tmpl(t, l)),
            params: d.params.iter().filter_map(|p| cx.tmpl(t, p)).collect(),
        }
    };
    let window_template = sd.window_template.as_ref().map(&mut approved);
    let approved_template = sd.approved_template.as_ref().map(&mut approved);
    check_mail_fields(sd, &channel, cx, gw);
    let embed = sd
        .embed
        .as_ref()
        .and_then(|e| compile_embed(e, &channel, cx, t, gw))
        .map(Box::new);
    Some(SendSpec {
        channel,
        address,
        body,
        lang: sd.lang.as_ref().and_then(|l| cx.tmpl(t, l)),
        buttons,
        reply_to: sd.reply_to.as_ref().and_then(|r| cx.tmpl(t, r)),
        attachments,
        save,
        window_template,
        approved_template,
        subject: sd.subject.as_ref().and_then(|s| cx.tmpl(t, s)),
        cc: sd.cc.iter().filter_map(|a| cx.tmpl(t, a)).collect(),
        bcc: sd.bcc.iter().filter_map(|a| cx.tmpl(t, a)).collect(),
        notification: sd.notification.unwrap_or(false),
        embed,
    })
}

/// A rich card: on a channel with embeds, within Discord's limits.
fn compile_embed(
    e: &Sp<raw::EmbedDef>,
    channel: &str,
    cx: &mut FileCx,
    t: &Templates,
    gw: &Gateway,
) -> Option<EmbedSpec> {
    if let Some(c) = gw.channels.get(channel).filter(|c| !cx.caps(c).embeds) {
        cx.err(
            e.span(),
            format!("channel '{channel}' ({}) has no embeds", c.kind()),
        );
        return None;
    }
    let d = e.get();
    if d.fields.len() > 25 {
        cx.err(
            e.span(),
            format!("an embed has at most 25 fields, not {}", d.fields.len()),
        );
    }
    let color = d.color.as_ref().and_then(|c| {
        match c
            .get()
            .strip_prefix('#')
            .and_then(|h| u32::from_str_radix(h, 16).ok())
        {
            Some(v) if c.get().len() == 7 => Some(v),
            _ => {
                cx.err(
                    c.span(),
                    format!("color '{}' should look like #e67e22", c.get()),
                );
                None
            }
        }
    });
    let mut opt = |v: &Option<Sp<String>>| v.as_ref().and_then(|s| cx.tmpl(t, s));
    let (title, description, url, footer) = (
        opt(&d.title),
        opt(&d.description),
        opt(&d.url),
        opt(&d.footer),
    );
    let fields = d
        .fields
        .iter()
        .filter_map(|f| Some((cx.tmpl(t, &f.name)?, cx.tmpl(t, &f.value)?, f.inline)))
        .collect();
    Some(EmbedSpec {
        title,
        description,
        url,
        color,
        fields,
        footer,
    })
}

/// `subject`, `cc`, `bcc` and `notification` need a mail channel.
fn check_mail_fields(sd: &raw::SendDef, channel: &str, cx: &mut FileCx, gw: &Gateway) {
    let Some(c) = gw.channels.get(channel).filter(|c| !cx.caps(c).mail) else {
        return;
    };
    let given = [
        ("subject", sd.subject.as_ref().map(|s| s.span())),
        ("cc", sd.cc.first().map(|s| s.span())),
        ("bcc", sd.bcc.first().map(|s| s.span())),
        (
            "notification",
            sd.notification.is_some().then(|| sd.to.span()),
        ),
    ];
    for (key, span) in given {
        if let Some(span) = span {
            cx.err(
                span,
                format!(
                    "channel '{channel}' ({}) has no `{key}`: it is for e-mail",
                    c.kind()
                ),
            );
        }
    }
}

/// URL buttons and callback buttons (with an `id`), the latter checked against the channel.
pub(super) fn compile_buttons(
    defs: &[Sp<raw::ButtonDef>],
    channel: &str,
    cx: &mut FileCx,
    t: &Templates,
    gw: &Gateway,
) -> Vec<ButtonSpec> {
    let mut out = Vec::new();
    let mut choices = 0;
    let mut first_choice = None;
    for b in defs {
        let bd = b.get();
        match (&bd.url, &bd.id) {
            (Some(url), None) => {
                if let (Some(label), Some(url)) = (cx.tmpl(t, &bd.text), cx.tmpl(t, url)) {
                    out.push(ButtonSpec::Link { label, url });
                }
            }
            (None, Some(id)) => {
                choices += 1;
                first_choice.get_or_insert(b.span());
                let caps = gw.channels.get(channel).map(|c| (c.kind(), cx.caps(c)));
                if let Some((kind, c)) = caps.filter(|(_, c)| c.choices.is_none()) {
                    let _ = c;
                    cx.err(
                        b.span(),
                        format!("channel '{channel}' ({kind}) has no callback buttons: give this button a `url`"),
                    );
                } else if channel == "staff" {
                    cx.err(
                        b.span(),
                        "callback buttons go to one conversation, not staff",
                    );
                }
                check_choice(cx, gw, channel, id, Some(&bd.text));
                if let Some(label) = cx.tmpl(t, &bd.text) {
                    out.push(ButtonSpec::Choice {
                        id: id.get().clone(),
                        label,
                    });
                }
            }
            _ => cx.err(b.span(), "a button has either a `url` or an `id`"),
        }
    }
    if let Some(span) = first_choice {
        check_choice_count(cx, gw, channel, choices, span);
    }
    out
}

pub(super) fn compile_edit(
    e: &Sp<raw::EditDef>,
    saved: &HashMap<String, Sp<String>>,
    cx: &mut FileCx,
    t: &Templates,
    gw: &Gateway,
    i18n: &dyn Messages,
) -> Option<EditSpec> {
    let ed = e.get();
    let (to, target) = match &ed.to {
        Some(to) => (to.clone(), EditTarget::Ref(cx.tmpl(t, &ed.message)?)),
        None => {
            let name = var_name(cx, Some(&ed.message), "")?;
            let Some(to) = saved.get(&name) else {
                cx.err(
                    ed.message.span(),
                    format!("no `send` in this scenario saves '{name}' (send = {{ …, save = \"{name}\" }}); or give `to` and a message reference"),
                );
                return None;
            };
            (to.clone(), EditTarget::Saved(name))
        }
    };
    let def = raw::SendDef {
        to,
        text: ed.text.clone(),
        template: ed.template.clone(),
        args: ed.args.clone(),
        lang: ed.lang.clone(),
        buttons: ed.buttons.clone(),
        reply_to: None,
        attachments: Vec::new(),
        save: None,
        window_template: None,
        approved_template: None,
        subject: None,
        cc: Vec::new(),
        bcc: Vec::new(),
        notification: None,
        embed: None,
    };
    let message = compile_send(&Sp(toml::Spanned::new(e.span(), def)), cx, t, gw, i18n)?;
    {
        if let Some(c) = gw.channels.get(&message.channel) {
            if !cx.caps(c).edits {
                cx.err(
                    e.span(),
                    format!(
                        "channel '{}' ({}) cannot edit messages",
                        message.channel,
                        c.kind()
                    ),
                );
            }
        }
    }
    Some(EditSpec { target, message })
}

/// The message of an `ask` or `offer`: it must go to a chat on a chat channel, which is where
/// replies and clicks come from; an offer may also go to staff, one message per member.
pub(super) fn compile_chat_message(
    what: &str,
    def: raw::SendDef,
    span: Range<usize>,
    cx: &mut FileCx,
    t: &Templates,
    gw: &Gateway,
    i18n: &dyn Messages,
) -> Option<SendSpec> {
    let to = def.to.get().clone();
    let channel = to.split(':').next().unwrap_or_default();
    if what == "offer" && channel == "staff" {
        // One message per member, each on their own channel: checked with the buttons.
        return compile_send(&Sp(toml::Spanned::new(span, def)), cx, t, gw, i18n);
    }
    let caps = gw.channels.get(channel).map(|c| (c.kind(), cx.caps(c)));
    let lacks = match (what, caps) {
        ("ask", Some((_, c))) if !c.replies => Some("replies"),
        ("offer", Some((_, c))) if c.choices.is_none() => Some("callback buttons"),
        _ => None,
    };
    match (caps, lacks) {
        (Some((kind, _)), Some(lacks)) => cx.err(
            def.to.span(),
            format!("{what} needs a channel with {lacks}; channel '{channel}' ({kind}) has none"),
        ),
        (Some(_), None) if to.contains(':') => {}
        _ => cx.err(
            def.to.span(),
            format!("{what} needs `channel:conversation` on a configured channel, e.g. tg:{{{{ event.chat.id }}}}, not '{to}'"),
        ),
    }
    compile_send(&Sp(toml::Spanned::new(span, def)), cx, t, gw, i18n)
}

#[cfg(test)]
mod tests {
    use super::super::testing::errors_on_telegram;

    #[test]
    fn mail_fields_need_a_mail_channel() {
        let all = errors_on_telegram(
            r#"id = "a"
on = { webhook = "h" }
[[step]]
send = { to = "tg:1", template = "Hi", subject = "S", cc = ["x@example.com"], notification = true }
"#,
        );
        assert_eq!(
            all,
            vec![
                "4:50: channel 'tg' (telegram) has no `subject`: it is for e-mail",
                "4:61: channel 'tg' (telegram) has no `cc`: it is for e-mail",
                "4:15: channel 'tg' (telegram) has no `notification`: it is for e-mail",
            ]
        );
    }

    #[test]
    fn asks_offers_edits_and_clicks_load_on_a_channel_that_has_them() {
        let all = errors_on_telegram(
            r#"id = "a"
on = { click = "tg", button = "ack" }
[[step]]
ask = { to = "tg:{{ event.chat.id }}", template = "Yes?", choices = ["Yes", "No"], buttons = "inline" }
[[step]]
send = { to = "tg:1", template = "Hi", buttons = [{ id = "ack", text = "OK" }], save = "note" }
[[step]]
edit = { message = "note", template = "Done" }
[[step]]
edit = { to = "tg:{{ event.chat.id }}", message = "{{ event.message }}", template = "Seen" }
"#,
        );
        assert!(all.is_empty(), "{all:?}");
        let all = errors_on_telegram(
            r#"id = "a"
on = { click = "log" }
[[step]]
edit = { message = "nothing", template = "Done" }
[[step]]
edit = { to = "log:x", message = "1", template = "Done" }
"#,
        )
        .join("\n");
        assert!(
            all.contains("2:16: channel 'log' (log) has no callback buttons"),
            "{all}"
        );
        assert!(
            all.contains("4:20: no `send` in this scenario saves 'nothing'"),
            "{all}"
        );
        assert!(
            all.contains("6:8: channel 'log' (log) cannot edit messages"),
            "{all}"
        );
    }
}
