//! `ask` answers: a chat message goes to the oldest run asking that chat; a press on one of
//! the question's inline buttons answers that run like a typed reply. A valid answer (or
//! the last invalid one) resumes the run; an invalid one gets the retry text. Once the ask
//! is over, its inline buttons go away.

use std::sync::Arc;

use minijinja::value::Value;
use serde_json::{json, Map, Value as Json};

use super::offer::chat_of;
use super::{message_entry, note, timed_out, Ctx, Flow};
use crate::channels::{Choice, OutEdit, OutMessage, OutRead, Outbound};
use crate::config::{Action, AskSpec, Scenario};
use crate::engine::{After, Engine, EventItem};
use crate::store::{NewWait, RunRow, RunStatus, StoreError, Tx};

/// Callback data of an `ask`'s inline choice: `a:<run>:<choice index>`.
pub const ASK_PREFIX: &str = "a:";

/// `a:<run>:<choice>` → (run, choice index).
/// `a:<run>:<step>:<choice>` → (run, step, choice index); the older `a:<run>:<choice>`
/// names no step.
pub(super) fn parse_press(data: &str) -> Option<(i64, Option<i64>, usize)> {
    let parts: Vec<&str> = data.strip_prefix(ASK_PREFIX)?.split(':').collect();
    match parts[..] {
        [run, choice] => Some((run.parse().ok()?, None, choice.parse().ok()?)),
        [run, step, choice] => Some((
            run.parse().ok()?,
            Some(step.parse().ok()?),
            choice.parse().ok()?,
        )),
        _ => None,
    }
}

/// What a reply answers: its text; for a mail (whose lines come as `event.lines`), the
/// first line that is one of the choices or matches the pattern (a greeting above the answer
/// does not hide it), else its first line.
fn answer_line(ev: &EventItem, a: &AskSpec) -> String {
    let text = ev.data["text"].as_str().unwrap_or_default();
    let Some(lines) = ev.data["lines"].as_array() else {
        return text.to_string();
    };
    let lines: Vec<&str> = lines.iter().filter_map(Json::as_str).collect();
    lines
        .iter()
        .find(|l| {
            a.choices.contains(&crate::config::normalize_reply(l))
                || a.pattern.as_ref().is_some_and(|p| p.is_match(l.trim()))
        })
        .or(lines.first())
        .map(|l| l.to_string())
        .unwrap_or_else(|| text.to_string())
}

impl Engine {
    #[expect(
        clippy::too_many_arguments,
        reason = "the interpreter's working set for one step"
    )]
    pub(super) async fn start_ask(
        &mut self,
        tx: &mut dyn Tx,
        run: &mut RunRow,
        sc: &Arc<Scenario>,
        a: &AskSpec,
        pc: usize,
        ctx: &Value,
        entry: &mut Json,
        after: &mut After,
    ) -> Result<Result<Flow, String>, StoreError> {
        let now = self.now();
        let mut m = tryv!(self.render_message(&a.question, &a.question.body, ctx, run, sc));
        self.ask_buttons(a, run.id, pc as i64, &mut m);
        entry["send"] = message_entry(&a.question.channel, &m);
        let chat = m.to.clone();
        let question = self
            .send_message(tx, run, pc, &a.question.channel, m, after)
            .await?;
        tx.insert_wait(&NewWait {
            run_id: run.id,
            hook: format!("chat:{}", a.question.channel),
            scenario: sc.id.clone(),
            step: pc as i64,
            match_key: chat.clone(),
            now,
        })
        .await?;
        if let Some(due) = self.arm_timeout(tx, run, sc, a.timeout, after).await? {
            entry["until"] = json!(crate::clock::rfc3339(due));
        }
        run.vars.insert(
            a.save.clone(),
            json!({"attempts": 0, "question": question, "chat": chat}),
        );
        entry["result"] = json!("waiting");
        run.status = RunStatus::Waiting;
        Ok(Ok(Flow::Park))
    }

    /// An ask's answer buttons on its question: reply-keyboard buttons, or the choices as
    /// callback buttons that carry the run and the choice.
    fn ask_buttons(&self, a: &AskSpec, run_id: i64, step: i64, m: &mut OutMessage) {
        m.keyboard = a.reply_buttons.clone();
        if a.inline {
            m.choices = a
                .labels
                .iter()
                .enumerate()
                .map(|(i, l)| Choice {
                    text: l.clone(),
                    data: format!("{ASK_PREFIX}{run_id}:{step}:{i}"),
                })
                .collect();
        }
    }

    /// Gives a chat message to the oldest run asking that chat. True when one took it.
    pub(in crate::engine) async fn answer_ask(
        &mut self,
        tx: &mut dyn Tx,
        ev: &EventItem,
        outcome: &mut Vec<Json>,
        after: &mut After,
    ) -> Result<bool, StoreError> {
        let Some(chat) = chat_of(ev) else {
            return Ok(false);
        };
        // A reply that names the message it answers (e-mail threads) answers only the run
        // that sent that message, and only if that run asked the one who replies. Where
        // replies are threaded, one that names no message of ours answers no ask: its sender
        // is only a claim (anyone can write `From: ada@example.com`).
        if ev.data.get("thread").is_some_and(Json::is_null) {
            outcome.push(json!({"from": chat,
                "verdict": "a message that replies to none of ours answers no ask"}));
            return Ok(false);
        }
        let thread_run = ev.data["thread"]["run"].as_i64();
        let waiting = tx
            .find_waits_any(&format!("chat:{}", ev.source), &chat)
            .await?;
        if let Some(r) = thread_run.filter(|r| !waiting.contains(r)) {
            outcome.push(json!({"run": r, "from": chat,
                "verdict": "a reply to this run's message from someone it is not asking: it answers nothing"}));
            return Ok(false);
        }
        for run_id in waiting
            .into_iter()
            .filter(|id| thread_run.is_none_or(|r| r == *id))
        {
            let Some(run) = tx.load_run(run_id).await? else {
                continue;
            };
            let sc = match self.scenario_of(tx, &run).await? {
                Ok(sc) => sc,
                Err(why) => {
                    self.fail_unavailable(tx, run, &why, after).await?;
                    continue;
                }
            };
            if run.status != RunStatus::Waiting {
                continue;
            }
            let Some(Action::Ask(a)) = sc.steps.get(run.pc as usize).map(|s| &s.action) else {
                continue;
            };
            let text = answer_line(ev, a);
            self.reply_to_ask(tx, ev, run, &sc, a, &text, after).await?;
            outcome.push(json!({"scenario": sc.id, "run": run_id, "verdict": "answered an ask"}));
            return Ok(true);
        }
        Ok(false)
    }

    /// A press on an ask's inline button: answers that run if it still asks this chat.
    pub(super) async fn on_ask_press(
        &mut self,
        tx: &mut dyn Tx,
        ev: &EventItem,
        (run_id, step, choice): (i64, Option<i64>, usize),
        outcome: &mut Vec<Json>,
        after: &mut After,
    ) -> Result<(), StoreError> {
        let chat = chat_of(ev).unwrap_or_default();
        // The run must be asking the chat the press came from: a forged press from another
        // chat answers nothing.
        let asking = tx
            .find_waits_any(&format!("chat:{}", ev.source), &chat)
            .await?
            .contains(&run_id);
        let run = match asking {
            true => tx.load_run(run_id).await?,
            false => None,
        };
        let sc = match &run {
            Some(r) => match self.scenario_of(tx, r).await? {
                Ok(sc) => Some(sc),
                Err(why) => {
                    self.fail_unavailable(tx, r.clone(), &why, after).await?;
                    None
                }
            },
            None => None,
        };
        let (Some(run), Some(sc)) = (run, sc) else {
            outcome.push(json!({"run": run_id, "verdict": "no run asks this chat"}));
            return self
                .answer_click(tx, ev, None, "inactive", None, false, after)
                .await;
        };
        // A button of an earlier question (a link in an old e-mail) answers nothing.
        let label = match sc.steps.get(run.pc as usize).map(|s| &s.action) {
            Some(Action::Ask(a))
                if run.status == RunStatus::Waiting && step.is_none_or(|s| s == run.pc) =>
            {
                a.labels.get(choice).cloned()
            }
            _ => None,
        };
        let Some(label) = label else {
            outcome.push(json!({"run": run_id, "verdict": "the ask is over"}));
            return self
                .answer_click(tx, ev, Some(run_id), "inactive", None, false, after)
                .await;
        };
        self.answer_click(tx, ev, Some(run_id), "answered", None, false, after)
            .await?;
        let Some(Action::Ask(a)) = sc.steps.get(run.pc as usize).map(|s| &s.action) else {
            return Ok(());
        };
        self.reply_to_ask(tx, ev, run, &sc, a, &label, after)
            .await?;
        outcome.push(json!({"scenario": sc.id, "run": run_id, "verdict": "answered an ask"}));
        Ok(())
    }

    /// Takes `text` as the reply to the run's ask.
    #[expect(clippy::too_many_arguments, reason = "the run, its ask and the reply")]
    async fn reply_to_ask(
        &mut self,
        tx: &mut dyn Tx,
        ev: &EventItem,
        mut run: RunRow,
        sc: &Arc<Scenario>,
        a: &AskSpec,
        text: &str,
        after: &mut After,
    ) -> Result<(), StoreError> {
        let now = self.now();
        let mut value = crate::config::normalize_reply(text);
        // "Yes, 1 please" with a pattern such as `\b([123])\b`: its first group is the value.
        if !a.choices.contains(&value) {
            if let Some(g) = a
                .pattern
                .as_ref()
                .and_then(|p| p.captures(text.trim()))
                .and_then(|c| c.get(1))
            {
                value = crate::config::normalize_reply(g.as_str());
            }
        }
        let asked = run.vars.get(&a.save).cloned().unwrap_or(Json::Null);
        let attempts = asked["attempts"].as_i64().unwrap_or(0) + 1;
        let ctx = minijinja::context! {
            reply => value.clone(),
            event => minijinja::Value::from_serialize(&*ev.data),
            run => minijinja::Value::from_serialize(&run.vars),
            global => minijinja::Value::from_serialize(&self.globals),
        };
        let valid = a.choices.contains(&value)
            || a.pattern.as_ref().is_some_and(|p| p.is_match(text.trim()))
            || a.valid
                .as_ref()
                .is_some_and(|v| v.truthy(&ctx).unwrap_or(false))
            || (a.choices.is_empty()
                && a.pattern.is_none()
                && a.valid.is_none()
                && !value.is_empty());
        let pc = run.pc;
        self.mark_read(tx, ev, run.id, after).await?;
        // The question answered or asked again: its buttons go away.
        self.drop_ask_buttons(tx, &run, a, after).await?;
        if valid || attempts > a.retries as i64 {
            tx.clear_parks(run.id).await?;
            after.timers_changed = true;
            run.vars.insert(
                a.save.clone(),
                json!({"text": text, "value": value, "attempts": attempts,
                    "timed_out": false, "exhausted": !valid, "message": ev.data["message"]}),
            );
            let (result, next) = if valid {
                ("answered", a.branch(&value))
            } else {
                ("no valid answer; retries used up", a.branch("exhausted"))
            };
            note(
                &mut run,
                json!({"step": pc, "action": "ask", "result": result,
                    "reply": text, "event_id": ev.id, "at": now}),
            );
            run.pc = next.map(|i| i as i64).unwrap_or(pc + 1);
            run.status = RunStatus::Running;
            return self.execute(tx, &mut run, sc, after).await;
        }
        let mut state = json!({"text": text, "value": value, "attempts": attempts,
            "chat": asked["chat"]});
        let body = a.retry.as_ref().unwrap_or(&a.question.body);
        let empty = Map::new();
        let ctx = Ctx {
            event: &run.event,
            run: &run.vars,
            subject: &empty,
            global: &self.globals,
            meta: json!({"run_id": run.id, "scenario": sc.id, "subject": run.subject}),
        }
        .value();
        let entry = match self.render_message(&a.question, body, &ctx, &run, sc) {
            Ok(mut m) => {
                self.ask_buttons(a, run.id, pc, &mut m);
                let question = self
                    .send_message(tx, &run, pc as usize, &a.question.channel, m, after)
                    .await?;
                state["question"] = json!(question);
                json!({"step": pc, "action": "ask", "result": "invalid answer, asked again",
                    "reply": text, "event_id": ev.id, "at": now})
            }
            Err(e) => json!({"step": pc, "action": "ask", "result": "invalid answer",
                "reply": text, "error": e, "at": now}),
        };
        run.vars.insert(a.save.clone(), state);
        note(&mut run, entry);
        run.updated_at = now;
        tx.save_run(&run).await
    }

    /// The ask's timeout: its buttons go away and the run goes on at its `timeout` branch,
    /// else at the next step.
    pub(in crate::engine) async fn ask_timed_out(
        &mut self,
        tx: &mut dyn Tx,
        run: &mut RunRow,
        a: &AskSpec,
        now: i64,
        after: &mut After,
    ) -> Result<(), StoreError> {
        self.drop_ask_buttons(tx, run, a, after).await?;
        timed_out(run, "ask", a.save.clone(), a.branch("timeout"), now);
        Ok(())
    }

    /// Tells the customer their reply was read, on channels that show it (WhatsApp's blue
    /// ticks). A press is a message of its own there, named by its `click`.
    async fn mark_read(
        &mut self,
        tx: &mut dyn Tx,
        ev: &EventItem,
        run_id: i64,
        after: &mut After,
    ) -> Result<(), StoreError> {
        let shows = self
            .cfg
            .gateway
            .channels
            .get(&ev.source)
            .is_some_and(|c| c.caps.read_receipts);
        let message = match ev.kind.as_str() {
            "click" => &ev.data["click"],
            _ => &ev.data["message"],
        };
        let (true, Some(message)) = (shows, message.as_str()) else {
            return Ok(());
        };
        let op = Outbound::Read(OutRead {
            to: chat_of(ev).unwrap_or_default(),
            message: message.to_string(),
        });
        let channel = ev.source.clone();
        self.channel_action(tx, Some(run_id), &channel, op, after)
            .await
    }

    /// Removes the inline buttons of the run's last question.
    async fn drop_ask_buttons(
        &mut self,
        tx: &mut dyn Tx,
        run: &RunRow,
        a: &AskSpec,
        after: &mut After,
    ) -> Result<(), StoreError> {
        if !a.inline {
            return Ok(());
        }
        let asked = run.vars.get(&a.save).cloned().unwrap_or(Json::Null);
        let (Some(question), Some(chat)) = (asked["question"].as_i64(), asked["chat"].as_str())
        else {
            return Ok(());
        };
        let op = Outbound::Edit(OutEdit {
            to: chat.to_string(),
            of_outbox: Some(question),
            ..Default::default()
        });
        let channel = a.question.channel.clone();
        self.channel_action(tx, Some(run.id), &channel, op, after)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presses_carry_the_run_and_the_choice() {
        assert_eq!(parse_press("a:42:1"), Some((42, None, 1)));
        assert_eq!(parse_press("a:42:3:1"), Some((42, Some(3), 1)));
        assert_eq!(parse_press("a:42"), None);
        assert_eq!(parse_press("a:1:2:3:4"), None);
        assert_eq!(parse_press("o:42:1"), None);
        assert_eq!(parse_press("a:x:1"), None);
    }
}
