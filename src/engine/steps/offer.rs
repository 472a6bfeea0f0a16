//! First click wins: an `offer` posts a message with buttons to a chat, or to each staff
//! member addressed; the engine takes clicks one at a time, so the claim (a compare-and-set in
//! the store) has exactly one winner across all the messages. Every click is answered, every
//! message is closed (edited, or followed by a short notice where the channel cannot edit),
//! and the run continues with `claim.*`.

use std::sync::Arc;

use minijinja::value::Value;
use serde_json::{json, Map, Value as Json};

use super::ask::parse_press;
use super::{message_entry, note, timed_out, Flow, BUTTON_PREFIX};
use crate::channels::{Choice, OutAnswer, OutEdit, OutMessage, Outbound};
use crate::config::{Action, OfferSpec, Scenario, Who};
use crate::engine::{After, Engine, EventItem};
use crate::store::{OfferMessage, OfferRow, RunRow, RunStatus, StoreError, Tx};

/// How an offer ended, for the texts its messages are closed with.
enum Closed<'a> {
    Taken {
        spec: &'a OfferSpec,
        claim: &'a Json,
        run: &'a RunRow,
    },
    Expired,
}

/// `o:<offer id>:<button index>`: short enough for any channel's callback data.
fn parse_data(data: &str) -> Option<(i64, usize)> {
    let mut it = data.strip_prefix("o:")?.split(':');
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

pub fn callback_data(offer: i64, button: usize) -> String {
    format!("o:{offer}:{button}")
}

impl Engine {
    /// Answers a click with a built-in text (`switchboard-click-<what>`) in the clicker's
    /// language: the platform's language of the user, else the staff member's.
    #[expect(clippy::too_many_arguments, reason = "the click and its answer")]
    pub(super) async fn answer_click(
        &mut self,
        tx: &mut dyn Tx,
        ev: &EventItem,
        run_id: Option<i64>,
        what: &str,
        name: Option<&str>,
        alert: bool,
        after: &mut After,
    ) -> Result<(), StoreError> {
        let user = user_of(ev);
        let staff_lang = self
            .cfg
            .gateway
            .staff_on(&ev.source, &user)
            .and_then(|s| s.language.clone());
        let mut args = Map::new();
        if let Some(n) = name {
            args.insert("name".into(), json!(n));
        }
        let text = self.cfg.i18n.builtin(
            &[ev.data["lang"].as_str(), staff_lang.as_deref()],
            &format!("switchboard-click-{what}"),
            &args,
        );
        let op = Outbound::Answer(OutAnswer {
            click: ev.data["click"].as_str().unwrap_or_default().to_string(),
            text,
            alert,
            to: chat_of(ev),
        });
        let channel = ev.source.clone();
        self.channel_action(tx, run_id, &channel, op, after).await
    }

    pub(in crate::engine) async fn on_click(
        &mut self,
        tx: &mut dyn Tx,
        ev: &EventItem,
        outcome: &mut Vec<Json>,
        after: &mut After,
    ) -> Result<(), StoreError> {
        let now = self.now();
        let data = ev.data["data"].as_str().unwrap_or_default();
        if let Some(press) = parse_press(data) {
            return self.on_ask_press(tx, ev, press, outcome, after).await;
        }
        if let Some(button) = data.strip_prefix(BUTTON_PREFIX) {
            return self.on_button(tx, ev, button, outcome, after).await;
        }
        let Some((offer_id, button)) = parse_data(data) else {
            outcome.push(json!({"verdict": "a button of no offer"}));
            return self
                .answer_click(tx, ev, None, "inactive", None, false, after)
                .await;
        };
        let Some(offer) = tx.load_offer(offer_id).await? else {
            outcome.push(json!({"verdict": "unknown offer"}));
            return self
                .answer_click(tx, ev, None, "inactive", None, false, after)
                .await;
        };
        // The click must come from one of the offer's own messages: callback data alone can
        // be forged from another chat.
        let messages = tx.offer_messages(offer_id).await?;
        let chat = chat_of(ev);
        let clicked = messages.iter().position(|m| {
            m.channel == ev.source
                && chat.as_deref() == Some(m.chat_id.as_str())
                && m.message_id
                    .as_deref()
                    .is_none_or(|id| ev.data["message"].as_str() == Some(id))
        });
        if clicked.is_none() {
            outcome.push(json!({"offer": offer_id, "verdict": "a click from another message"}));
            return self
                .answer_click(tx, ev, None, "inactive", None, false, after)
                .await;
        }
        let user = user_of(ev);
        let run_id = Some(offer.run_id);
        if offer.status != "open" {
            let winner = offer.winner.as_ref().and_then(|w| w["name"].as_str());
            let (what, verdict) = match (&offer.winner, winner) {
                (Some(_), Some(name)) => ("taken-by", format!("already taken by {name}")),
                (Some(_), None) => ("taken", "already taken".to_string()),
                (None, _) => ("expired", "expired".to_string()),
            };
            outcome.push(json!({"offer": offer_id, "verdict": verdict}));
            return self
                .answer_click(tx, ev, run_id, what, winner, true, after)
                .await;
        }
        let Some(mut run) = tx.load_run(offer.run_id).await? else {
            return self
                .answer_click(tx, ev, None, "inactive", None, false, after)
                .await;
        };
        let sc = match self.scenario_of(tx, &run).await? {
            Ok(sc) => sc,
            Err(why) => {
                self.fail_unavailable(tx, run, &why, after).await?;
                return self
                    .answer_click(tx, ev, run_id, "inactive", None, false, after)
                    .await;
            }
        };
        let Some(Action::Offer(spec)) = sc.steps.get(offer.step as usize).map(|s| &s.action) else {
            return self
                .answer_click(tx, ev, run_id, "inactive", None, false, after)
                .await;
        };
        let staff = self.cfg.gateway.staff_on(&ev.source, &user).cloned();
        let allowed = match &spec.who {
            Who::Any => true,
            Who::Staff => staff.is_some(),
            Who::Users(ids) => ids.contains(&user),
        };
        if !allowed {
            outcome.push(json!({"offer": offer_id, "user": user, "verdict": "not allowed"}));
            return self
                .answer_click(tx, ev, run_id, "not-allowed", None, true, after)
                .await;
        }
        if offer.excluded.contains(&user) {
            return self
                .answer_click(tx, ev, run_id, "already-declined", None, true, after)
                .await;
        }
        let Some(b) = spec.buttons.get(button) else {
            return self
                .answer_click(tx, ev, run_id, "inactive", None, false, after)
                .await;
        };
        if b.decline {
            tx.exclude_from_offer(offer_id, &user).await?;
            outcome.push(json!({"offer": offer_id, "user": user, "verdict": "declined"}));
            return self
                .answer_click(tx, ev, run_id, "declined", None, false, after)
                .await;
        }
        let from = &ev.data["from"];
        let name = staff
            .as_ref()
            .map(|s| s.name.clone())
            .or_else(|| from["first_name"].as_str().map(str::to_string))
            .unwrap_or_else(|| user.clone());
        let claim = json!({
            "user_id": user, "name": name, "username": from["username"], "button": b.id,
            "staff": staff, "channel": ev.source, "chat": ev.data["chat"],
            "time": crate::clock::rfc3339(now),
            "timed_out": false,
        });
        if !tx.claim_offer(offer_id, &claim).await? {
            // Another click won in the meantime: name its winner.
            let winner = tx.load_offer(offer_id).await?.and_then(|o| o.winner);
            let name = winner.as_ref().and_then(|w| w["name"].as_str());
            let what = if name.is_some() { "taken-by" } else { "taken" };
            outcome.push(json!({"offer": offer_id, "verdict": "already taken", "winner": name}));
            return self
                .answer_click(tx, ev, run_id, what, name, true, after)
                .await;
        }
        outcome
            .push(json!({"offer": offer_id, "user": user, "verdict": "won", "run": offer.run_id}));
        self.answer_click(tx, ev, run_id, "yours", None, false, after)
            .await?;
        let closed = Closed::Taken {
            spec,
            claim: &claim,
            run: &run,
        };
        self.close_messages(tx, &offer, &messages, &closed, clicked, after)
            .await?;
        if run.status == RunStatus::Waiting && run.pc == offer.step {
            tx.clear_parks(run.id).await?;
            after.timers_changed = true;
            run.vars.insert("claim".into(), claim);
            {
                let entry = json!({"step": run.pc, "action": "offer", "result": format!("taken by {name}"),
                    "event_id": ev.id, "at": now});
                note(&mut run, entry);
            }
            run.pc = spec.branch(&b.id).map(|i| i as i64).unwrap_or(run.pc + 1);
            run.status = RunStatus::Running;
            self.execute(tx, &mut run, &sc, after).await?;
        }
        Ok(())
    }

    /// What a recipient's message says once the offer is closed.
    fn closed_text(&self, closed: &Closed, m: &OfferMessage) -> String {
        match closed {
            Closed::Taken { spec, claim, run } => self.taken_text(spec, m, claim, run),
            Closed::Expired => format!("{}\n\n⌛", m.text),
        }
    }

    fn taken_text(&self, spec: &OfferSpec, m: &OfferMessage, claim: &Json, run: &RunRow) -> String {
        let markup = self.markup(&m.channel);
        let name = markup.escape(claim["name"].as_str().unwrap_or(""));
        let default = || match markup {
            crate::channels::Markup::Html => format!("{}\n\n✅ <b>{name}</b>", m.text),
            crate::channels::Markup::WhatsApp => format!("{}\n\n✅ *{name}*", m.text),
            crate::channels::Markup::Markdown => format!("{}\n\n✅ **{name}**", m.text),
            crate::channels::Markup::Plain => format!("{}\n\n✅ {name}", m.text),
        };
        match &spec.taken {
            Some(t) => {
                let ctx = minijinja::context! {
                    claim => minijinja::Value::from_serialize(claim),
                    run => minijinja::Value::from_serialize(&run.vars),
                    event => minijinja::Value::from_serialize(&run.event),
                    // Already in the channel's markup.
                    text => minijinja::Value::from_safe_string(m.text.clone()),
                };
                t.render_in(&ctx, markup).unwrap_or_else(|_| default())
            }
            None => default(),
        }
    }

    /// Closes each recipient's message: edited where the channel can edit (and for the
    /// clicker, as on any channel), else followed by a short notice in the recipient's
    /// language. A message whose reference is not known yet is edited once it is.
    async fn close_messages(
        &mut self,
        tx: &mut dyn Tx,
        offer: &OfferRow,
        messages: &[OfferMessage],
        closed: &Closed<'_>,
        clicked: Option<usize>,
        after: &mut After,
    ) -> Result<(), StoreError> {
        for (i, m) in messages.iter().enumerate() {
            if clicked == Some(i) || self.edits(&m.channel) {
                self.edit_message(tx, offer, m, closed, after).await?;
                continue;
            }
            let (what, name) = match closed {
                Closed::Taken { claim, .. } => match claim["name"].as_str() {
                    Some(n) => ("taken-by", Some(n)),
                    None => ("taken", None),
                },
                Closed::Expired => ("expired", None),
            };
            let mut args = Map::new();
            if let Some(n) = name {
                args.insert("name".into(), json!(n));
            }
            let text = self.cfg.i18n.builtin(
                &[m.lang.as_deref()],
                &format!("switchboard-click-{what}"),
                &args,
            );
            let op = Outbound::Send(OutMessage {
                to: m.chat_id.clone(),
                lang: m.lang.clone(),
                text: self.markup(&m.channel).escape(&text),
                reply_to: m.message_id.clone(),
                run_id: Some(offer.run_id),
                ..Default::default()
            });
            self.channel_action(tx, Some(offer.run_id), &m.channel, op, after)
                .await?;
        }
        Ok(())
    }

    fn edits(&self, channel: &str) -> bool {
        self.cfg
            .gateway
            .channels
            .get(channel)
            .is_some_and(|c| c.caps.edits)
    }

    async fn edit_message(
        &mut self,
        tx: &mut dyn Tx,
        offer: &OfferRow,
        m: &OfferMessage,
        closed: &Closed<'_>,
        after: &mut After,
    ) -> Result<(), StoreError> {
        let Some(message) = m.message_id.clone() else {
            return Ok(());
        };
        let op = Outbound::Edit(OutEdit {
            to: m.chat_id.clone(),
            message,
            text: Some(self.closed_text(closed, m)),
            ..Default::default()
        });
        self.channel_action(tx, Some(offer.run_id), &m.channel, op, after)
            .await
    }

    /// Records the reference of the message outbox row `outbox_id` sent. An offer closed
    /// before it was known (its timeout or a click came first) missed that message's edit:
    /// make it now.
    pub(in crate::engine) async fn offer_message_known(
        &mut self,
        tx: &mut dyn Tx,
        offer_id: i64,
        outbox_id: i64,
        message_id: &str,
        after: &mut After,
    ) -> Result<(), StoreError> {
        tx.set_offer_message(offer_id, outbox_id, message_id)
            .await?;
        let Some(offer) = tx.load_offer(offer_id).await? else {
            return Ok(());
        };
        if offer.status == "open" {
            return Ok(());
        }
        let messages = tx.offer_messages(offer_id).await?;
        let Some(m) = messages
            .iter()
            .find(|m| m.outbox_id.is_none_or(|o| o == outbox_id))
        else {
            return Ok(());
        };
        let winner = offer.winner.clone().unwrap_or(Json::Null);
        let clicked = winner["channel"].as_str() == Some(m.channel.as_str())
            && chat_id(&winner["chat"]).as_deref() == Some(m.chat_id.as_str());
        // Where the channel cannot edit, the others were told by a notice already.
        if !clicked && !self.edits(&m.channel) {
            return Ok(());
        }
        if offer.status != "taken" {
            return self
                .edit_message(tx, &offer, m, &Closed::Expired, after)
                .await;
        }
        let Some(run) = tx.load_run(offer.run_id).await? else {
            return Ok(());
        };
        let Ok(sc) = self.scenario_of(tx, &run).await? else {
            return Ok(());
        };
        let Some(Action::Offer(spec)) = sc.steps.get(offer.step as usize).map(|s| &s.action) else {
            return Ok(());
        };
        let closed = Closed::Taken {
            spec,
            claim: &winner,
            run: &run,
        };
        self.edit_message(tx, &offer, m, &closed, after).await
    }

    /// The offer's timeout: the run goes on at its `timeout` branch, else at the next step,
    /// with `claim.timed_out`.
    pub(in crate::engine) async fn offer_timed_out(
        &mut self,
        tx: &mut dyn Tx,
        run: &mut RunRow,
        o: &OfferSpec,
        now: i64,
        after: &mut After,
    ) -> Result<(), StoreError> {
        let next = o.branch("timeout");
        self.expire_offer(tx, run, after).await?;
        timed_out(run, "offer", "claim".to_string(), next, now);
        Ok(())
    }

    /// The offer's timeout: closes it (buttons removed) unless someone won meanwhile.
    async fn expire_offer(
        &mut self,
        tx: &mut dyn Tx,
        run: &mut RunRow,
        after: &mut After,
    ) -> Result<(), StoreError> {
        self.close_offer(tx, run.id, after).await?;
        run.vars.insert("claim".into(), json!({"timed_out": true}));
        Ok(())
    }

    /// Closes the run's open offer, if any: its buttons go, clicks are told it expired.
    pub(in crate::engine) async fn close_offer(
        &mut self,
        tx: &mut dyn Tx,
        run_id: i64,
        after: &mut After,
    ) -> Result<(), StoreError> {
        if let Some(offer) = tx.open_offer_of(run_id).await? {
            if tx.expire_offer(offer.id).await? {
                let messages = tx.offer_messages(offer.id).await?;
                self.close_messages(tx, &offer, &messages, &Closed::Expired, None, after)
                    .await?;
            }
        }
        Ok(())
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "the interpreter's working set for one step"
    )]
    pub(super) async fn start_offer(
        &mut self,
        tx: &mut dyn Tx,
        run: &mut RunRow,
        sc: &Arc<Scenario>,
        o: &OfferSpec,
        pc: usize,
        ctx: &Value,
        entry: &mut Json,
        after: &mut After,
    ) -> Result<Result<Flow, String>, StoreError> {
        let request = match self.post_offer(tx, run, sc, o, pc, ctx, after).await? {
            Ok(r) => r,
            Err(e) => return Ok(Err(e)),
        };
        let mut shown: Vec<Json> = request
            .iter()
            .map(|(channel, m)| message_entry(channel, m))
            .collect();
        entry["send"] = if shown.len() == 1 {
            shown.remove(0)
        } else {
            json!(shown)
        };
        entry["offer_id"] = json!(request.first().and_then(|(_, m)| m.offer_id));
        entry["result"] = json!("waiting for a click");
        run.status = RunStatus::Waiting;
        Ok(Ok(Flow::Park))
    }

    /// Posts the offer to each recipient: its chat, each staff member addressed (in their
    /// language), each address of its list; the run waits for a click or the timeout.
    #[expect(
        clippy::too_many_arguments,
        reason = "the interpreter's working set for one step"
    )]
    async fn post_offer(
        &mut self,
        tx: &mut dyn Tx,
        run: &mut RunRow,
        sc: &Scenario,
        spec: &OfferSpec,
        pc: usize,
        ctx: &Value,
        after: &mut After,
    ) -> Result<Result<Vec<(String, OutMessage)>, String>, StoreError> {
        let now = self.now();
        let mut messages = Vec::new();
        for s in std::iter::once(&spec.message).chain(&spec.also) {
            match self.render_messages(s, ctx, run, sc) {
                Ok(r) => messages.extend(r),
                Err(e) => return Ok(Err(e)),
            }
        }
        let Some(first) = messages.first().map(|(_, m)| m.clone()) else {
            return Ok(Err("an offer to nobody".to_string()));
        };
        let mut labels = Vec::with_capacity(spec.buttons.len());
        for b in &spec.buttons {
            match b.label.render(ctx) {
                Ok(l) => labels.push(l),
                Err(e) => return Ok(Err(e.0)),
            }
        }
        // The offer is kept under its first address as written: a chat, or a staff member or
        // group.
        let (channel, chat) = match (&spec.message.address, spec.message.channel.as_str()) {
            (Some(a), "staff") => match a.render(ctx) {
                Ok(a) => ("staff".to_string(), a.trim().to_string()),
                Err(e) => return Ok(Err(e.0)),
            },
            _ => (spec.message.channel.clone(), first.to.clone()),
        };
        let offer = tx
            .insert_offer(run.id, pc as i64, &channel, &chat, &first.text, now)
            .await?;
        for (channel, request) in &mut messages {
            for (i, label) in labels.iter().enumerate() {
                request.choices.push(Choice {
                    text: label.clone(),
                    data: callback_data(offer, i),
                });
            }
            request.offer_id = Some(offer);
            let outbox = self
                .send_message(tx, run, pc, channel, request.clone(), after)
                .await?;
            let m = OfferMessage {
                channel: channel.clone(),
                chat_id: request.to.clone(),
                message_id: None,
                outbox_id: Some(outbox),
                text: request.text.clone(),
                lang: request.lang.clone(),
            };
            tx.add_offer_message(offer, &m).await?;
        }
        self.arm_timeout(tx, run, sc, spec.timeout, after).await?;
        run.vars.remove("claim");
        Ok(Ok(messages))
    }
}

/// The clicking user's id on the platform.
fn user_of(ev: &EventItem) -> String {
    match &ev.data["from"]["id"] {
        Json::Number(n) => n.to_string(),
        Json::String(s) => s.clone(),
        _ => String::new(),
    }
}

/// The conversation a click came from.
pub(super) fn chat_of(ev: &EventItem) -> Option<String> {
    chat_id(&ev.data["chat"])
}

/// A chat's id, whether the platform gives it as a number or a string.
fn chat_id(chat: &Json) -> Option<String> {
    match &chat["id"] {
        Json::Number(n) => Some(n.to_string()),
        Json::String(s) => Some(s.clone()),
        _ => None,
    }
}
