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
    let message = raw::SendDef {
        to: od.to.clone(),
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
    };
    let message = compile_chat_message("offer", message, o.span(), cx, t, gw, i18n)?;
    let ch = message.channel.clone();
    let mut buttons = Vec::new();
    for b in &od.buttons {
        check_choice(cx, gw, &ch, &b.id, Some(&b.text));
        if let Some(label) = cx.tmpl(t, &b.text) {
            buttons.push(OfferButton {
                id: b.id.get().clone(),
                label,
                decline: b.decline.unwrap_or(false),
            });
        }
    }
    check_choice_count(cx, gw, &ch, od.buttons.len(), o.span());
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
        buttons,
        who,
        timeout: od.timeout.as_ref().and_then(|d| cx.duration(d)),
        taken: od.taken.as_ref().and_then(|tk| cx.tmpl(t, tk)),
        branches: out,
    })
}
