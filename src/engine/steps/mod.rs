//! The step interpreter: runs a run's steps from its pointer until it parks (http, sleep,
//! wait, ask, offer), ends, or fails. Every verdict and effect is noted in the run's journal.
//! Each kind of step has its own file with its start, and its answer and timeout if it has
//! them; this one holds the loop and what the kinds share.

use std::sync::Arc;

use minijinja::value::Value;
use serde::Serialize;
use serde_json::{json, Map, Value as Json};

use super::{After, Engine, OutboxJob, PARKED_CACHE};
use crate::channels::{Attachment, Choice, LinkButton, Markup, OutMessage, Outbound};
use crate::config::{Action, ButtonSpec, Scenario, Scope, SendBody, SendSpec, Step};
use crate::store::{NewOutbox, NewTimer, OutboxRow, RunRow, RunStatus, StoreError, Tx};

/// In a step's start: the value, or the step fails with the error's text.
macro_rules! tryv {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return Ok(Err(e.to_string())),
        }
    };
}

mod ask;
mod call;
mod gate;
mod http;
mod offer;
mod send;
mod sleep;
mod vars;
mod wait;

/// Callback data of a `send` step's button: `b:<id>`.
pub const BUTTON_PREFIX: &str = "b:";
pub use ask::ASK_PREFIX;

/// What expressions see.
#[derive(Serialize)]
pub struct Ctx<'a> {
    pub event: &'a Json,
    pub run: &'a Map<String, Json>,
    pub subject: &'a Map<String, Json>,
    pub global: &'a Map<String, Json>,
    pub meta: Json,
}

impl Ctx<'_> {
    pub fn value(&self) -> Value {
        Value::from_serialize(self)
    }
}

pub(super) fn message_entry(channel: &str, m: &OutMessage) -> Json {
    let mut e = json!({"channel": channel, "to": m.to, "lang": m.lang, "text": m.text});
    if !m.links.is_empty() {
        e["buttons"] = json!(m.links);
    }
    if !m.choices.is_empty() {
        e["choices"] = json!(m.choices.iter().map(|c| &c.text).collect::<Vec<_>>());
    }
    if let Some(s) = &m.subject {
        e["subject"] = json!(s);
    }
    for (key, list) in [("cc", &m.cc), ("bcc", &m.bcc)] {
        if !list.is_empty() {
            e[key] = json!(list);
        }
    }
    e
}

/// Longest journal a run keeps; older entries are dropped (a count is kept).
const JOURNAL_MAX: usize = 500;

pub fn note(run: &mut RunRow, entry: Json) {
    if run.journal.len() >= JOURNAL_MAX {
        run.journal.remove(0);
    }
    run.journal.push(entry);
}

pub fn fail(run: &mut RunRow, why: &str, now: i64) {
    run.status = RunStatus::Failed;
    run.error = Some(why.to_string());
    run.updated_at = now;
    note(
        run,
        json!({"step": run.pc, "result": "failed", "error": why, "at": now}),
    );
}

/// A wait, an ask or an offer ran out of time: its saved value says so, and the run goes
/// on at `next`, else at the next step.
fn timed_out(run: &mut RunRow, action: &str, save: String, next: Option<usize>, now: i64) {
    let mut saved = run.vars.get(&save).cloned().unwrap_or_else(|| json!({}));
    if !saved.is_object() {
        saved = json!({});
    }
    saved["timed_out"] = json!(true);
    run.vars.insert(save, saved);
    {
        let entry = json!({"step": run.pc, "action": action, "result": "timed out", "at": now});
        note(run, entry);
    }
    run.pc = next.map(|i| i as i64).unwrap_or(run.pc + 1);
}

enum Flow {
    Next,
    Jump(usize),
    Park,
    Stop,
}

struct StepState {
    subject_vars: Map<String, Json>,
    subject_dirty: bool,
}

impl Engine {
    /// Runs steps until the run parks, ends or fails, then saves it.
    pub(super) async fn execute(
        &mut self,
        tx: &mut dyn Tx,
        run: &mut RunRow,
        sc: &Arc<Scenario>,
        after: &mut After,
    ) -> Result<(), StoreError> {
        let mut st = StepState {
            subject_vars: match (&run.subject, sc.uses_subject_vars) {
                (Some(s), true) => tx.subject_vars(s).await?,
                _ => Map::new(),
            },
            subject_dirty: false,
        };
        let max_steps = self.cfg.gateway.max_steps;
        let mut taken = 0u32;
        while run.status == RunStatus::Running {
            let now = self.now();
            run.updated_at = now;
            let pc = run.pc.max(0) as usize;
            let Some(step) = sc.steps.get(pc) else {
                run.status = RunStatus::Done;
                break;
            };
            taken += 1;
            if taken > max_steps {
                fail(
                    run,
                    &format!("the limit of {max_steps} steps per event was reached (a goto loop?)"),
                    now,
                );
                break;
            }
            let writes_global = match &step.action {
                Action::Set(assigns) => assigns.iter().any(|a| a.target.scope == Scope::Global),
                Action::Incr(target) => target.scope == Scope::Global,
                _ => false,
            };
            if writes_global {
                // The step reads what it writes: read it as committed, under the lock.
                self.lock_globals(tx).await?;
            }
            let meta = json!({
                "run_id": run.id, "scenario": sc.id, "subject": run.subject,
                "event_id": run.event_id, "now": crate::clock::rfc3339(now), "now_ms": now,
                "public_url": self.public_url,
                "test": super::admin::test_run(&run.journal),
            });
            let ctx = Ctx {
                event: &run.event,
                run: &run.vars,
                subject: &st.subject_vars,
                global: &self.globals,
                meta,
            }
            .value();
            let mut entry =
                json!({"step": pc, "line": step.line, "action": step.action.name(), "at": now});
            if let Some(l) = &step.label {
                entry["label"] = json!(l);
            }
            if let Some(cond) = &step.cond {
                entry["if"] = json!(cond.src);
                entry["seen"] = Json::Object(cond.seen(&ctx));
                match cond.truthy(&ctx) {
                    Ok(true) => entry["verdict"] = json!(true),
                    Ok(false) => {
                        entry["verdict"] = json!(false);
                        entry["result"] = json!("skipped");
                        note(run, entry);
                        run.pc = step.else_goto.unwrap_or(pc + 1) as i64;
                        continue;
                    }
                    Err(e) => {
                        entry["result"] = json!("error");
                        note(run, entry);
                        fail(
                            run,
                            &format!("step {pc} (line {}): condition: {e}", step.line),
                            now,
                        );
                        break;
                    }
                }
            }
            let started = std::time::Instant::now();
            let flow = match self
                .gate(tx, run, sc, step, &ctx, &mut entry, after)
                .await?
            {
                Ok(None) => {
                    self.step(tx, run, sc, step, pc, &ctx, &mut entry, &mut st, after)
                        .await?
                }
                Ok(Some(flow)) => Ok(flow),
                Err(e) => Err(e),
            };
            let took = started.elapsed().as_secs_f64();
            self.step_histogram(step.action.name()).record(took);
            entry["ms"] = json!((took * 1e5).round() / 100.0);
            match flow {
                Ok(flow) => {
                    if entry.get("result").is_none() {
                        entry["result"] = json!("ok");
                    }
                    note(run, entry);
                    match flow {
                        Flow::Next if step.stop => run.status = RunStatus::Done,
                        Flow::Next => run.pc = pc as i64 + 1,
                        Flow::Jump(to) => run.pc = to as i64,
                        Flow::Park => {}
                        Flow::Stop => run.status = RunStatus::Done,
                    }
                }
                Err(msg) => {
                    entry["result"] = json!("error");
                    entry["error"] = json!(msg);
                    note(run, entry);
                    fail(run, &format!("step {pc} (line {}): {msg}", step.line), now);
                }
            }
        }
        if st.subject_dirty {
            if let Some(s) = &run.subject {
                tx.put_subject_vars(s, &st.subject_vars).await?;
            }
        }
        self.run_failed(tx, run, after).await?;
        // A run leaves its sleeps and waits through the code that resumes it, so a finished
        // run has none left to clear.
        tx.save_run(run).await?;
        if self.cache_runs
            && run.status == RunStatus::Waiting
            && self.http_parked.len() < PARKED_CACHE
            && matches!(
                sc.steps.get(run.pc as usize).map(|s| &s.action),
                Some(Action::Http(_))
            )
        {
            self.http_parked.insert(run.id, run.clone());
        }
        after.runs.push((run.id, run.scenario.clone(), run.status));
        Ok(())
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "the interpreter's working set for one step"
    )]
    async fn step(
        &mut self,
        tx: &mut dyn Tx,
        run: &mut RunRow,
        sc: &Arc<Scenario>,
        step: &Step,
        pc: usize,
        ctx: &Value,
        entry: &mut Json,
        st: &mut StepState,
        after: &mut After,
    ) -> Result<Result<Flow, String>, StoreError> {
        Ok(match &step.action {
            Action::Nothing => Ok(Flow::Next),
            Action::Stop => Ok(Flow::Stop),
            Action::Goto(to) => {
                entry["goto"] = json!(to);
                Ok(Flow::Jump(*to))
            }
            Action::Set(assigns) => self.start_set(tx, run, st, assigns, ctx, entry).await?,
            Action::Incr(target) => self.start_incr(tx, run, st, target, entry).await?,
            Action::Send(s) => {
                self.start_send(tx, run, sc, s, pc, ctx, entry, after)
                    .await?
            }
            Action::Edit(e) => {
                self.start_edit(tx, run, sc, e, pc, ctx, entry, after)
                    .await?
            }
            Action::Offer(o) => {
                self.start_offer(tx, run, sc, o, pc, ctx, entry, after)
                    .await?
            }
            Action::Ask(a) => {
                self.start_ask(tx, run, sc, a, pc, ctx, entry, after)
                    .await?
            }
            Action::Http(h) => self.start_http(tx, run, h, pc, ctx, entry, after).await?,
            Action::Call(c) => self.start_call(tx, run, c, ctx, entry, after).await?,
            Action::Sleep(s) => self.start_sleep(tx, run, sc, s, ctx, entry, after).await?,
            Action::Cancel(c) => self.start_cancel(tx, run, sc, c, ctx, entry, after).await?,
            Action::Wait(w) => {
                self.start_wait(tx, run, sc, w, pc, ctx, entry, after)
                    .await?
            }
        })
    }

    #[expect(clippy::too_many_arguments, reason = "an outbox row's fields")]
    async fn enqueue(
        &mut self,
        tx: &mut dyn Tx,
        run: &RunRow,
        pc: usize,
        kind: &str,
        channel: &str,
        request: Json,
        attempts: u32,
        timeout: std::time::Duration,
        resume: bool,
        after: &mut After,
    ) -> Result<i64, StoreError> {
        let now = self.now();
        let row = NewOutbox {
            run_id: Some(run.id),
            step: Some(pc as i64),
            kind: kind.into(),
            channel: channel.into(),
            request,
            max_attempts: attempts as i64,
            timeout_ms: timeout.as_millis() as i64,
            resume,
            now,
        };
        let lane = format!("scenario:{}", run.scenario);
        self.enqueue_row(tx, row, lane, after).await
    }

    /// Stores an outbox row; once the batch commits, the row goes to the outbox worker.
    pub(super) async fn enqueue_row(
        &mut self,
        tx: &mut dyn Tx,
        row: NewOutbox,
        lane: String,
        after: &mut After,
    ) -> Result<i64, StoreError> {
        let id = tx.insert_outbox(&row).await?;
        after.jobs.push(OutboxJob {
            row: OutboxRow {
                id,
                run_id: row.run_id,
                step: row.step,
                kind: row.kind,
                channel: row.channel,
                request: row.request,
                status: "pending".into(),
                attempts: 0,
                max_attempts: row.max_attempts,
                timeout_ms: row.timeout_ms,
                next_attempt_at: row.now,
                resume: row.resume,
                response: None,
                last_error: None,
                message_ref: None,
                delivery_status: None,
                statuses: Vec::new(),
            },
            lane,
        });
        Ok(id)
    }

    /// Queues a channel operation (answer a click, edit a message) outside any step.
    pub(super) async fn channel_action(
        &mut self,
        tx: &mut dyn Tx,
        run_id: Option<i64>,
        channel: &str,
        op: Outbound,
        after: &mut After,
    ) -> Result<(), StoreError> {
        let now = self.now();
        let request = op.to_json();
        let row = NewOutbox {
            run_id,
            step: None,
            kind: "send".into(),
            channel: channel.into(),
            request,
            max_attempts: self.cfg.gateway.http_attempts as i64,
            timeout_ms: self.cfg.gateway.http_timeout.as_millis() as i64,
            resume: false,
            now,
        };
        self.enqueue_row(tx, row, format!("clicks:{channel}"), after)
            .await?;
        Ok(())
    }

    /// Renders a message: its address, language, text (Fluent or template) and buttons.
    pub(super) fn render_message(
        &self,
        s: &SendSpec,
        body: &SendBody,
        ctx: &Value,
        run: &RunRow,
        sc: &Scenario,
    ) -> Result<OutMessage, String> {
        let address = match &s.address {
            Some(a) => Some(a.render(ctx).map_err(|e| e.0)?),
            None => None,
        };
        let wanted = match &s.lang {
            Some(l) => Some(l.render(ctx).map_err(|e| e.0)?),
            None => None,
        };
        self.compose(s, &s.channel, body, ctx, run, sc, address, wanted)
    }

    #[expect(clippy::too_many_arguments, reason = "a message's parts")]
    fn compose(
        &self,
        s: &SendSpec,
        channel: &str,
        body: &SendBody,
        ctx: &Value,
        run: &RunRow,
        sc: &Scenario,
        address: Option<String>,
        wanted: Option<String>,
    ) -> Result<OutMessage, String> {
        let lang = self.cfg.i18n.resolve(wanted.as_deref());
        let markup = self.markup(channel);
        let mut subject = match &s.subject {
            Some(t) => Some(t.render(ctx).map_err(|e| e.0)?),
            None => None,
        };
        let text = match body {
            SendBody::Template(t) => t.render_in(ctx, markup).map_err(|e| e.0)?,
            SendBody::Fluent { id, args } => {
                let mut fargs = Map::new();
                for (k, v) in run
                    .vars
                    .iter()
                    .chain(run.event.as_object().into_iter().flatten())
                {
                    if !v.is_object() && !v.is_array() {
                        fargs.entry(k.clone()).or_insert_with(|| v.clone());
                    }
                }
                for (k, t) in args {
                    fargs.insert(k.clone(), json!(t.render(ctx).map_err(|e| e.0)?));
                }
                // A mail's subject: the message's `<id>-subject`, in the same language.
                let subject_id = format!("{id}-subject");
                if subject.is_none() && self.cfg.i18n.has(&lang, &subject_id) {
                    subject = Some(self.cfg.i18n.render(&lang, &subject_id, &fargs)?);
                }
                self.cfg
                    .i18n
                    .render_with(&lang, id, &fargs, &|v| markup.escape(v))?
            }
        };
        let mut cc = Vec::with_capacity(s.cc.len());
        for a in &s.cc {
            cc.push(a.render(ctx).map_err(|e| e.0)?.trim().to_string());
        }
        let embed = match &s.embed {
            Some(e) => Some(Box::new(render_embed(e, ctx, markup)?)),
            None => None,
        };
        let mut bcc = Vec::with_capacity(s.bcc.len());
        for a in &s.bcc {
            bcc.push(a.render(ctx).map_err(|e| e.0)?.trim().to_string());
        }
        let mut links = Vec::with_capacity(s.buttons.len());
        let mut choices = Vec::new();
        for b in &s.buttons {
            match b {
                ButtonSpec::Link { label, url } => links.push(LinkButton {
                    text: label.render(ctx).map_err(|e| e.0)?,
                    url: url.render(ctx).map_err(|e| e.0)?,
                }),
                ButtonSpec::Choice { id, label } => choices.push(Choice {
                    text: label.render(ctx).map_err(|e| e.0)?,
                    data: format!("{BUTTON_PREFIX}{id}"),
                }),
            }
        }
        let mut attachments = Vec::with_capacity(s.attachments.len());
        for a in &s.attachments {
            attachments.push(Attachment {
                url: a.render(ctx).map_err(|e| e.0)?.trim().to_string(),
            });
        }
        let reply_to = match &s.reply_to {
            Some(r) => Some(r.render(ctx).map_err(|e| e.0)?.trim().to_string()),
            None => None,
        };
        let window_template = match &s.window_template {
            Some(w) => Some(render_window_template(w, ctx)?),
            None => None,
        };
        let approved_template = match &s.approved_template {
            Some(w) => Some(Box::new(render_window_template(w, ctx)?)),
            None => None,
        };
        Ok(OutMessage {
            to: address.unwrap_or_default(),
            lang: Some(lang),
            text,
            links,
            choices,
            attachments,
            reply_to: reply_to.filter(|r| !r.is_empty()),
            run_id: Some(run.id),
            scenario: Some(sc.id.clone()),
            window_template,
            approved_template,
            subject: subject
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty()),
            cc: cc.into_iter().filter(|a| !a.is_empty()).collect(),
            bcc: bcc.into_iter().filter(|a| !a.is_empty()).collect(),
            notification: s.notification,
            embed,
            ..Default::default()
        })
    }

    /// The markup of a channel's texts.
    pub(super) fn markup(&self, channel: &str) -> Markup {
        self.cfg
            .gateway
            .channels
            .get(channel)
            .map(|c| c.caps.markup)
            .unwrap_or(Markup::Plain)
    }

    pub(super) async fn send_message(
        &mut self,
        tx: &mut dyn Tx,
        run: &RunRow,
        pc: usize,
        channel: &str,
        m: OutMessage,
        after: &mut After,
    ) -> Result<i64, StoreError> {
        let request = Outbound::Send(m).to_json();
        let (attempts, timeout) = (
            self.cfg.gateway.http_attempts,
            self.cfg.gateway.http_timeout,
        );
        self.enqueue(
            tx, run, pc, "send", channel, request, attempts, timeout, false, after,
        )
        .await
    }

    /// The timer that ends a wait, an ask or an offer; its due time.
    pub(super) async fn arm_timeout(
        &mut self,
        tx: &mut dyn Tx,
        run: &RunRow,
        sc: &Scenario,
        timeout: Option<std::time::Duration>,
        after: &mut After,
    ) -> Result<Option<i64>, StoreError> {
        let Some(t) = timeout else {
            return Ok(None);
        };
        let due = self.now() + t.as_millis() as i64;
        tx.insert_timer(&NewTimer {
            run_id: run.id,
            kind: "wait_timeout".into(),
            due_at: due,
            scenario: sc.id.clone(),
            subject: run.subject.clone(),
            key: None,
        })
        .await?;
        after.timers_changed = true;
        Ok(Some(due))
    }

    /// The duration histogram of one kind of step; looked up once per kind.
    fn step_histogram(&mut self, action: &'static str) -> &metrics::Histogram {
        self.step_histograms.entry(action).or_insert_with(
            || metrics::histogram!("switchboard_step_duration_seconds", "action" => action),
        )
    }

    pub(super) async fn cancel_run(
        &mut self,
        tx: &mut dyn Tx,
        run_id: i64,
        why: &str,
        now: i64,
        after: &mut After,
    ) -> Result<(), StoreError> {
        self.http_parked.remove(&run_id);
        tx.clear_parks(run_id).await?;
        if let Some(mut other) = tx.load_run(run_id).await? {
            if other.status.is_active() {
                // Its offer closes with it: a later click must not win a cancelled run.
                self.close_offer(tx, run_id, after).await?;
                other.status = RunStatus::Cancelled;
                other.updated_at = now;
                {
                    let entry =
                        json!({"step": other.pc, "result": "cancelled", "why": why, "at": now});
                    note(&mut other, entry);
                }
                tx.save_run(&other).await?;
            }
        }
        Ok(())
    }
}
/// A step's message template, rendered for the channel.
/// A rich card's texts: the description and field values in the channel's markup, the rest
/// as written.
fn render_embed(
    e: &crate::config::EmbedSpec,
    ctx: &Value,
    markup: Markup,
) -> Result<crate::channels::OutEmbed, String> {
    let plain = |t: &Option<crate::lang::expr::Tmpl>| -> Result<Option<String>, String> {
        t.as_ref()
            .map(|t| t.render(ctx).map_err(|e| e.0))
            .transpose()
    };
    let rich = |t: &crate::lang::expr::Tmpl| t.render_in(ctx, markup).map_err(|e| e.0);
    let mut fields = Vec::with_capacity(e.fields.len());
    for (name, value, inline) in &e.fields {
        fields.push((rich(name)?, rich(value)?, *inline));
    }
    Ok(crate::channels::OutEmbed {
        title: plain(&e.title)?,
        description: e.description.as_ref().map(rich).transpose()?,
        url: plain(&e.url)?.map(|u| u.trim().to_string()),
        color: e.color,
        fields,
        footer: plain(&e.footer)?,
    })
}

fn render_window_template(
    w: &crate::config::WindowTemplateSpec,
    ctx: &Value,
) -> Result<crate::channels::OutTemplate, String> {
    let language = match &w.language {
        Some(l) => Some(l.render(ctx).map_err(|e| e.0)?.trim().to_string()),
        None => None,
    };
    let params = w
        .params
        .iter()
        .map(|p| p.render(ctx).map_err(|e| e.0))
        .collect::<Result<_, _>>()?;
    Ok(crate::channels::OutTemplate {
        name: w.name.clone(),
        language: language.filter(|l| !l.is_empty()),
        params,
    })
}
