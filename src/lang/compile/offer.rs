//! `offer` steps: a message with buttons that the first allowed click claims.

use std::collections::BTreeMap;

use super::buttons::{check_choice, check_choice_count};
use super::cx::FileCx;
use super::send::compile_chat_message;
use super::Messages;
use crate::lang::expr::{Templates, Tmpl};
use crate::lang::model::*;
use crate::lang::raw::{self, Sp};

pub(super) fn compile_offer(
    o: &Sp<raw::OfferDef>,
    branches: &BTreeMap<String, Sp<String>>,
    cx: &mut FileCx,
    t: &Templates,
    gw: &Gateway,
    i18n: &dyn Messages,
    target: &dyn Fn(&mut FileCx, &Sp<String>) -> Option<usize>,
) -> Option<OfferSpec> {
    let od = o.get();
    let span = od.to.span();
    let addresses: Vec<String> = match od.to.get() {
        serde_json::Value::String(a) => vec![a.clone()],
        serde_json::Value::Array(list) if !list.is_empty() => list
            .iter()
            .filter_map(|a| a.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    };
    let listed = od.to.get().as_array().map_or(1, Vec::len);
    if addresses.is_empty() || addresses.len() != listed {
        cx.err(
            span,
            "offer `to` is an address (tg:-1001, staff:@sales) or a list of addresses",
        );
        return None;
    }
    let mut messages = Vec::new();
    let mut channels: Vec<String> = Vec::new();
    for to in addresses {
        let message = raw::SendDef {
            to: Sp(toml::Spanned::new(span.clone(), to)),
            text: od.text.clone(),
            template: od.template.clone(),
            args: Some(od.args.clone()),
            lang: od.lang.clone(),
            buttons: od.links.clone(),
            reply_to: None,
            attachments: Vec::new(),
            save: None,
            window_template: None,
            approved_template: None,
            subject: od.subject.clone(),
            cc: Vec::new(),
            bcc: Vec::new(),
            notification: None,
            embed: None,
        };
        let Some(message) = compile_chat_message("offer", message, o.span(), cx, t, gw, i18n)
        else {
            continue;
        };
        for ch in recipient_channels(&message, span.clone(), cx, gw) {
            if !channels.contains(&ch) {
                channels.push(ch);
            }
        }
        messages.push(message);
    }
    if messages.is_empty() {
        return None;
    }
    let message = messages.remove(0);
    let mut buttons = Vec::new();
    for b in &od.buttons {
        for ch in &channels {
            check_choice(cx, gw, ch, &b.id, Some(&b.text));
        }
        if let Some(label) = cx.tmpl(t, &b.text) {
            buttons.push(OfferButton {
                id: b.id.get().clone(),
                label,
                decline: b.decline.unwrap_or(false),
            });
        }
    }
    for ch in &channels {
        check_choice_count(cx, gw, ch, od.buttons.len(), o.span());
    }
    if od.buttons.is_empty() {
        buttons.push(OfferButton {
            id: "accept".into(),
            label: Tmpl::Const("Accept".into()),
            decline: false,
        });
    }
    let who = match od.who.as_ref().map(|w| (w, w.get())) {
        None => Who::Any,
        Some((_, serde_json::Value::String(s))) if s == "any" => Who::Any,
        Some((_, serde_json::Value::String(s))) if s == "staff" => Who::Staff,
        Some((_, serde_json::Value::Array(ids))) => Who::Users(
            ids.iter()
                .map(|v| match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect(),
        ),
        Some((w, _)) => {
            cx.err(
                w.span(),
                "who must be \"any\", \"staff\" or a list of user ids",
            );
            Who::Any
        }
    };
    let mut out = Vec::new();
    for (k, l) in branches {
        if k != "timeout" && !buttons.iter().any(|b| &b.id == k) {
            cx.err(
                l.span(),
                format!("unknown offer branch '{k}' (a button id or timeout)"),
            );
        }
        if let Some(i) = target(cx, l) {
            out.push((k.clone(), i));
        }
    }
    Some(OfferSpec {
        message,
        also: messages,
        buttons,
        who,
        timeout: od.timeout.as_ref().and_then(|d| cx.duration(d)),
        taken: od.taken.as_ref().and_then(|tk| cx.tmpl(t, tk)),
        branches: out,
    })
}

/// The channels an offer's messages go out on: its own, or, for `staff:<id>` and
/// `staff:@group` written out, each member's, which must have callback buttons.
fn recipient_channels(
    message: &SendSpec,
    span: std::ops::Range<usize>,
    cx: &mut FileCx,
    gw: &Gateway,
) -> Vec<String> {
    if message.channel != "staff" {
        return vec![message.channel.clone()];
    }
    let Some(Tmpl::Const(address)) = &message.address else {
        // A templated address is resolved when the step runs.
        return Vec::new();
    };
    let mut out: Vec<String> = Vec::new();
    for m in gw.staff_named(address) {
        let Some((ch, _)) = gw.staff_chat(m) else {
            cx.err(
                span.clone(),
                format!("staff member '{}' has no id on a chat channel", m.id),
            );
            continue;
        };
        let c = &gw.channels[&ch];
        if cx.caps(c).choices.is_none() {
            cx.err(
                span.clone(),
                format!(
                    "offer needs callback buttons; staff member '{}' is on channel '{ch}' ({}), which has none",
                    m.id,
                    c.kind()
                ),
            );
        } else {
            out.push(ch);
        }
    }
    out
}
