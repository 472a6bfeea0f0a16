//! `ask` steps: a question, accepted answers, retries, buttons and branches.

use std::collections::BTreeMap;

use super::buttons::{check_choice, check_choice_count};
use super::cx::FileCx;
use super::send::compile_chat_message;
use super::values::var_name;
use super::Messages;
use crate::lang::expr::Templates;
use crate::lang::model::*;
use crate::lang::raw::{self, Sp};

pub(super) fn compile_ask(
    a: &Sp<raw::AskDef>,
    branches: &BTreeMap<String, Sp<String>>,
    cx: &mut FileCx,
    t: &Templates,
    gw: &Gateway,
    i18n: &dyn Messages,
    target: &dyn Fn(&mut FileCx, &Sp<String>) -> Option<usize>,
) -> Option<AskSpec> {
    let ad = a.get();
    let question = raw::SendDef {
        to: ad.to.clone(),
        text: ad.text.clone(),
        template: ad.template.clone(),
        args: Some(ad.args.clone()),
        lang: ad.lang.clone(),
        buttons: Vec::new(),
        reply_to: None,
        attachments: Vec::new(),
        save: None,
        window_template: ad.window_template.clone(),
        approved_template: None,
        subject: ad.subject.clone(),
        cc: Vec::new(),
        bcc: Vec::new(),
        notification: None,
        embed: None,
    };
    let question = compile_chat_message("ask", question, a.span(), cx, t, gw, i18n)?;
    let retry = ad.retry_text.as_ref().map(|id| {
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
        let args = match &question.body {
            SendBody::Fluent { args, .. } => {
                args.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
            }
            SendBody::Template(_) => Vec::new(),
        };
        SendBody::Fluent {
            id: id.get().clone(),
            args,
        }
    });
    let choices: Vec<String> = ad.choices.iter().map(|c| normalize_reply(c)).collect();
    let (mut inline, mut reply_buttons) = (false, Vec::new());
    match ad.buttons.as_ref().map(|b| (b, b.get())) {
        None => {}
        Some((_, serde_json::Value::String(s))) if s == "inline" => inline = true,
        Some((_, serde_json::Value::String(s))) if s == "keyboard" => {
            reply_buttons = ad.choices.clone()
        }
        Some((b, serde_json::Value::Array(items))) => {
            for i in items {
                match i {
                    serde_json::Value::String(s) => reply_buttons.push(s.clone()),
                    other => cx.err(b.span(), format!("a reply button is a text, not {other}")),
                }
            }
        }
        Some((b, _)) => cx.err(
            b.span(),
            "buttons must be \"inline\", \"keyboard\" or a list of reply-button texts",
        ),
    }
    let ch = question.channel.clone();
    if let (Some(b), Some(c)) = (&ad.buttons, gw.channels.get(&ch)) {
        let caps = cx.caps(c);
        if inline && caps.choices.is_none() {
            cx.err(
                b.span(),
                format!("channel '{ch}' ({}) has no callback buttons", c.kind()),
            );
        } else if inline && ad.choices.is_empty() {
            cx.err(b.span(), "inline buttons show the `choices`: list them");
        } else if inline {
            for (i, label) in ad.choices.iter().enumerate() {
                // The callback data is the run and the choice's index.
                let id = Sp(toml::Spanned::new(b.span(), i.to_string()));
                let label = Sp(toml::Spanned::new(b.span(), label.clone()));
                check_choice(cx, gw, &ch, &id, Some(&label));
            }
            check_choice_count(cx, gw, &ch, ad.choices.len(), b.span());
        } else if !reply_buttons.is_empty() && !caps.keyboard {
            cx.err(
                b.span(),
                format!("channel '{ch}' ({}) has no reply buttons", c.kind()),
            );
        } else if let Some((max, label_max)) = caps.keyboard_max {
            if reply_buttons.len() > max {
                cx.err(
                    b.span(),
                    format!(
                        "{} reply buttons; channel '{ch}' ({}) shows at most {max}",
                        reply_buttons.len(),
                        c.kind()
                    ),
                );
            }
            for label in &reply_buttons {
                let n = label.chars().count();
                if n > label_max {
                    cx.err(
                        b.span(),
                        format!(
                            "reply button '{label}' is {n} characters; channel '{ch}' ({}) shows at most {label_max}",
                            c.kind()
                        ),
                    );
                }
            }
        }
    }
    let mut out = Vec::new();
    for (k, l) in branches {
        let known = k == "exhausted" || k == "timeout" || choices.contains(&normalize_reply(k));
        if !known {
            cx.err(
                l.span(),
                format!("unknown ask branch '{k}' (a choice, exhausted or timeout)"),
            );
        }
        if let Some(i) = target(cx, l) {
            out.push((normalize_reply(k), i));
        }
    }
    Some(AskSpec {
        question,
        retry,
        choices,
        valid: ad.valid.as_ref().and_then(|v| cx.expr(t, v)),
        pattern: ad
            .pattern
            .as_ref()
            .and_then(|p| match regex::Regex::new(p.get()) {
                Ok(r) => Some(r),
                Err(e) => {
                    cx.err(p.span(), format!("bad pattern: {e}"));
                    None
                }
            }),
        reply_buttons,
        labels: ad.choices.clone(),
        inline,
        retries: ad.retries.unwrap_or(2),
        timeout: ad.timeout.as_ref().and_then(|d| cx.duration(d)),
        save: var_name(cx, ad.save.as_ref(), "answer")?,
        branches: out,
    })
}
