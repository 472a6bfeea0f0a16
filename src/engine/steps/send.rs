//! `send` and `edit`: messages to a conversation (or to each staff member addressed, in their
//! language), and changes to a message sent before. A click on a `send` button starts the
//! scenarios listening to that button.

use std::sync::Arc;

use minijinja::value::Value;
use serde_json::{json, Value as Json};

use super::offer::chat_of;
use super::{message_entry, Flow};
use crate::channels::{OutAnswer, OutEdit, OutMessage, Outbound};
use crate::config::{EditSpec, EditTarget, Scenario, SendSpec};
use crate::engine::{After, Engine, EventItem};
use crate::store::{RunRow, StoreError, Tx};

impl Engine {
    #[expect(
        clippy::too_many_arguments,
        reason = "the interpreter's working set for one step"
    )]
    pub(super) async fn start_send(
        &mut self,
        tx: &mut dyn Tx,
        run: &mut RunRow,
        sc: &Arc<Scenario>,
        s: &SendSpec,
        pc: usize,
        ctx: &Value,
        entry: &mut Json,
        after: &mut After,
    ) -> Result<Result<Flow, String>, StoreError> {
        let mut messages = tryv!(self.render_messages(s, ctx, run, sc));
        let skip = std::mem::take(&mut after.skip);
        messages.retain(|(channel, m)| !skip.iter().any(|(c, t)| c == channel && *t == m.to));
        let mut shown = Vec::new();
        for (channel, m) in messages {
            shown.push(message_entry(&channel, &m));
            let to = m.to.clone();
            let id = self.send_message(tx, run, pc, &channel, m, after).await?;
            if let Some(name) = &s.save {
                run.vars.insert(
                    name.clone(),
                    json!({"outbox": id, "channel": channel, "to": to}),
                );
            }
        }
        entry["send"] = if shown.len() == 1 {
            shown.remove(0)
        } else {
            json!(shown)
        };
        Ok(Ok(Flow::Next))
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "the interpreter's working set for one step"
    )]
    pub(super) async fn start_edit(
        &mut self,
        tx: &mut dyn Tx,
        run: &mut RunRow,
        sc: &Arc<Scenario>,
        e: &EditSpec,
        pc: usize,
        ctx: &Value,
        entry: &mut Json,
        after: &mut After,
    ) -> Result<Result<Flow, String>, StoreError> {
        let (channel, to, message, of_outbox) = match &e.target {
            EditTarget::Saved(name) => {
                let saved = run.vars.get(name).cloned().unwrap_or(Json::Null);
                let (Some(ch), Some(to)) = (saved["channel"].as_str(), saved["to"].as_str()) else {
                    return Ok(Err(format!("no message saved as '{name}'")));
                };
                (
                    ch.to_string(),
                    to.to_string(),
                    String::new(),
                    saved["outbox"].as_i64(),
                )
            }
            EditTarget::Ref(r) => {
                let to = match &e.message.address {
                    Some(a) => tryv!(a.render(ctx)),
                    None => String::new(),
                };
                (e.message.channel.clone(), to, tryv!(r.render(ctx)), None)
            }
        };
        let wanted = match &e.message.lang {
            Some(l) => Some(tryv!(l.render(ctx))),
            None => None,
        };
        let m = tryv!(self.compose(
            &e.message,
            &channel,
            &e.message.body,
            ctx,
            run,
            sc,
            Some(to.clone()),
            wanted
        ));
        entry["edit"] = json!({"channel": channel, "to": to, "message": message,
            "outbox": of_outbox, "text": m.text});
        let op = Outbound::Edit(OutEdit {
            to,
            message,
            of_outbox,
            text: Some(m.text),
            choices: m.choices,
            links: m.links,
        });
        let (attempts, timeout) = (
            self.cfg.gateway.http_attempts,
            self.cfg.gateway.http_timeout,
        );
        self.enqueue(
            tx,
            run,
            pc,
            "send",
            &channel,
            op.to_json(),
            attempts,
            timeout,
            false,
            after,
        )
        .await?;
        Ok(Ok(Flow::Next))
    }

    /// The messages of a `send`: one, or one per staff member (each in their language) for
    /// `staff:<id>` and `staff:@group`.
    pub(super) fn render_messages(
        &self,
        s: &SendSpec,
        ctx: &Value,
        run: &RunRow,
        sc: &Scenario,
    ) -> Result<Vec<(String, OutMessage)>, String> {
        if s.channel != "staff" {
            return Ok(vec![(
                s.channel.clone(),
                self.render_message(s, &s.body, ctx, run, sc)?,
            )]);
        }
        let who = match &s.address {
            Some(a) => a.render(ctx).map_err(|e| e.0)?,
            None => String::new(),
        };
        let members = self.cfg.gateway.staff_named(who.trim());
        if members.is_empty() {
            return Err(format!("no staff member or group '{who}'"));
        }
        let explicit = match &s.lang {
            Some(l) => Some(l.render(ctx).map_err(|e| e.0)?),
            None => None,
        };
        let mut out = Vec::new();
        for m in members {
            let (channel, chat) =
                self.cfg.gateway.staff_chat(m).ok_or_else(|| {
                    format!("staff member '{}' has no id on a chat channel", m.id)
                })?;
            let lang = explicit.clone().or_else(|| m.language.clone());
            let m = self.compose(s, &channel, &s.body, ctx, run, sc, Some(chat), lang)?;
            out.push((channel, m));
        }
        Ok(out)
    }

    /// A click on a `send` step's button: starts the scenarios listening to it, with
    /// `event.button`; the click itself gets a silent answer.
    pub(super) async fn on_button(
        &mut self,
        tx: &mut dyn Tx,
        ev: &EventItem,
        button: &str,
        outcome: &mut Vec<Json>,
        after: &mut After,
    ) -> Result<(), StoreError> {
        let cfg = self.cfg.clone();
        let scenarios: Vec<_> = cfg
            .scenarios_for_click(&ev.source, button)
            .cloned()
            .collect();
        if scenarios.is_empty() {
            outcome
                .push(json!({"button": button, "verdict": "no scenario listens to this button"}));
            return self
                .answer_click(tx, ev, None, "inactive", None, false, after)
                .await;
        }
        let mut data = (*ev.data).clone();
        data["button"] = json!(button);
        let clicked = EventItem {
            data: std::sync::Arc::new(data),
            ..ev.clone()
        };
        for sc in scenarios {
            let o = self.start_run(tx, &sc, &clicked, after).await?;
            outcome.push(o);
        }
        let op = Outbound::Answer(OutAnswer {
            click: ev.data["click"].as_str().unwrap_or_default().to_string(),
            to: chat_of(ev),
            ..Default::default()
        });
        let channel = ev.source.clone();
        self.channel_action(tx, None, &channel, op, after).await
    }
}
