//! The step interpreter: runs a run's steps from its pointer until it parks (http, sleep,
//! wait), ends, or fails. Every verdict and effect is noted in the run's journal.

use std::sync::Arc;

use minijinja::value::Value;
use serde::Serialize;
use serde_json::{json, Map, Value as Json};

use super::{After, Engine, EventItem, OutboxJob, Work, PARKED_CACHE};
use crate::channels::{Attachment, Choice, LinkButton, Markup, OutEdit, OutMessage, Outbound};
use crate::config::{
    Action, AskSpec, ButtonSpec, EditTarget, HttpBody, Scenario, Scope, SendBody, SendSpec,
    SleepTime, Step, VarRef,
};

/// Callback data of a `send` step's button: `b:<id>`.
pub const BUTTON_PREFIX: &str = "b:";
/// Callback data of an `ask`'s inline choice: `a:<run>:<choice index>`.
pub const ASK_PREFIX: &str = "a:";
use crate::store::{
    NewEvent, NewOutbox, NewTimer, NewWait, OutboxRow, RunRow, RunStatus, StoreError, Tx,
};

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

/// The branch for an HTTP outcome: an exact status first, then a class, then `error`.
pub fn http_branch(
    branches: &[(String, usize)],
    status: Option<u64>,
    failed: bool,
) -> Option<&(String, usize)> {
    if let Some(s) = status {
        let exact = s.to_string();
        let class = format!("{}xx", s / 100);
        if let Some(b) = branches.iter().find(|(k, _)| *k == exact || *k == class) {
            return Some(b);
        }
    }
    if failed {
        return branches.iter().find(|(k, _)| k == "error");
    }
    None
}

fn set_path(map: &mut Map<String, Json>, path: &[String], v: Json) {
    let (last, parents) = path.split_last().expect("paths are non-empty");
    let mut cur = map;
    for p in parents {
        let e = cur.entry(p.clone()).or_insert_with(|| json!({}));
        if !e.is_object() {
            *e = json!({});
        }
        cur = e.as_object_mut().expect("made an object");
    }
    cur.insert(last.clone(), v);
}

fn get_path<'a>(map: &'a Map<String, Json>, path: &[String]) -> Option<&'a Json> {
    let (first, rest) = path.split_first()?;
    let mut cur = map.get(first)?;
    for p in rest {
        cur = cur.get(p)?;
    }
    Some(cur)
}

const SECRET_HEADERS: [&str; 4] = [
    "authorization",
    "x-api-key",
    "cookie",
    "proxy-authorization",
];

fn redact_headers(h: &[(String, String)]) -> Json {
    Json::Object(
        h.iter()
            .map(|(k, v)| {
                let secret = SECRET_HEADERS.contains(&k.to_ascii_lowercase().as_str())
                    || k.to_ascii_lowercase().contains("secret")
                    || k.to_ascii_lowercase().contains("token");
                (k.clone(), json!(if secret { "***" } else { v.as_str() }))
            })
            .collect(),
    )
}

/// A parsed point in time: RFC 3339 text, or Unix seconds (or milliseconds, if large).
fn parse_time(v: &Json) -> Option<i64> {
    match v {
        Json::Number(n) => {
            let x = n.as_f64()?;
            Some(if x > 1e12 {
                x as i64
            } else {
                (x * 1000.0) as i64
            })
        }
        Json::String(s) => chrono::DateTime::parse_from_rfc3339(s.trim())
            .ok()
            .map(|d| d.timestamp_millis())
            .or_else(|| {
                s.trim()
                    .parse::<f64>()
                    .ok()
                    .and_then(|x| parse_time(&json!(x)))
            }),
        _ => None,
    }
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
            let flow = self
                .step(tx, run, sc, step, pc, &ctx, &mut entry, &mut st, after)
                .await?;
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
        let now = self.now();
        macro_rules! tryv {
            ($e:expr) => {
                match $e {
                    Ok(v) => v,
                    Err(e) => return Ok(Err(e.to_string())),
                }
            };
        }
        Ok(Ok(match &step.action {
            Action::Nothing => Flow::Next,
            Action::Stop => Flow::Stop,
            Action::Goto(to) => {
                entry["goto"] = json!(to);
                Flow::Jump(*to)
            }
            Action::Set(assigns) => {
                let mut values = Vec::with_capacity(assigns.len());
                for a in assigns {
                    values.push(tryv!(a.value.render(ctx)));
                }
                let mut shown = Map::new();
                for (a, v) in assigns.iter().zip(values) {
                    shown.insert(a.target.display(), v.clone());
                    self.assign(tx, run, st, &a.target, v, now).await?;
                }
                entry["set"] = Json::Object(shown);
                Flow::Next
            }
            Action::Incr(target) => {
                let cur = match target.scope {
                    crate::config::Scope::Run => get_path(&run.vars, &target.path),
                    crate::config::Scope::Subject => get_path(&st.subject_vars, &target.path),
                    crate::config::Scope::Global => get_path(&self.globals, &target.path),
                };
                let n = match cur {
                    None | Some(Json::Null) => 0,
                    Some(v) => tryv!(v
                        .as_i64()
                        .ok_or_else(|| format!("{} is not a whole number: {v}", target.display()))),
                };
                entry["set"] = json!({ target.display(): n + 1 });
                self.assign(tx, run, st, target, json!(n + 1), now).await?;
                Flow::Next
            }
            Action::Send(s) => {
                let messages = tryv!(self.render_messages(s, ctx, run, sc));
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
                Flow::Next
            }
            Action::Edit(e) => {
                let (channel, to, message, of_outbox) = match &e.target {
                    EditTarget::Saved(name) => {
                        let saved = run.vars.get(name).cloned().unwrap_or(Json::Null);
                        let (Some(ch), Some(to)) =
                            (saved["channel"].as_str(), saved["to"].as_str())
                        else {
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
                Flow::Next
            }
            Action::Offer(o) => {
                let request = match self.post_offer(tx, run, sc, o, pc, ctx, after).await? {
                    Ok(r) => r,
                    Err(e) => return Ok(Err(e)),
                };
                entry["send"] = message_entry(&o.message.channel, &request);
                entry["offer_id"] = json!(request.offer_id);
                entry["result"] = json!("waiting for a click");
                run.status = RunStatus::Waiting;
                Flow::Park
            }
            Action::Ask(a) => {
                let mut m = tryv!(self.render_message(&a.question, &a.question.body, ctx, run, sc));
                self.ask_buttons(a, run.id, &mut m);
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
                Flow::Park
            }
            Action::Http(h) => {
                let url = tryv!(h.url.render(ctx));
                if let Err(e) = reqwest::Url::parse(&url) {
                    return Ok(Err(format!("'{url}' is not a URL: {e}")));
                }
                let mut headers = Vec::new();
                for (k, t) in &h.headers {
                    headers.push((k.clone(), tryv!(t.render(ctx))));
                }
                let body = match &h.body {
                    HttpBody::None => Json::Null,
                    HttpBody::Json(v) => json!({"json": tryv!(v.render(ctx))}),
                    HttpBody::Form(fields) => {
                        let mut out = Vec::new();
                        for (k, t) in fields {
                            out.push(json!([k, tryv!(t.render(ctx))]));
                        }
                        json!({"form": out})
                    }
                    HttpBody::Raw(t) => json!({"raw": tryv!(t.render(ctx))}),
                };
                let request =
                    json!({"method": h.method, "url": url, "headers": headers, "body": body});
                entry["request"] = json!({"method": h.method, "url": url,
                    "headers": redact_headers(&headers), "body": body});
                let id = self
                    .enqueue(
                        tx, run, pc, "http", "http", request, h.attempts, h.timeout, true, after,
                    )
                    .await?;
                entry["outbox_id"] = json!(id);
                entry["result"] = json!("sent, awaiting the response");
                run.status = RunStatus::Waiting;
                Flow::Park
            }
            Action::Call(c) => {
                let max = self.cfg.gateway.max_call_depth as i64;
                if run.depth + 1 > max {
                    return Ok(Err(format!("call depth limit of {max} reached")));
                }
                let mut vars = Map::new();
                for (k, v) in &c.vars {
                    vars.insert(k.clone(), tryv!(v.render(ctx)));
                }
                let ev = NewEvent {
                    kind: "call".into(),
                    source: c.scenario.clone(),
                    dedupe_key: None,
                    data: Json::Object(vars),
                    meta: json!({"depth": run.depth + 1, "parent_run": run.id}),
                    rejected: None,
                    received_at: now,
                };
                if let Some(id) = tx.insert_event(&ev).await? {
                    entry["event_id"] = json!(id);
                    after.follow_up.push(Work::Event(EventItem {
                        id,
                        kind: ev.kind,
                        source: ev.source,
                        data: Arc::new(ev.data),
                        meta: ev.meta,
                    }));
                }
                Flow::Next
            }
            Action::Sleep(s) => {
                let due = match &s.time {
                    SleepTime::For(d) => now + d.as_millis() as i64,
                    SleepTime::Until(e) => {
                        let v = tryv!(e.eval_json(ctx));
                        tryv!(parse_time(&v).ok_or_else(|| format!(
                            "sleep until: '{v}' is not a time (RFC 3339 or Unix seconds)"
                        )))
                    }
                };
                let key = match &s.key {
                    Some(k) => Some(tryv!(k.render(ctx))),
                    None => None,
                };
                if let Some(k) = &key {
                    let replaced = tx
                        .take_keyed_timers(&sc.id, run.subject.as_deref(), k)
                        .await?;
                    for other in replaced.into_iter().filter(|r| *r != run.id) {
                        self.cancel_run(tx, other, &format!("replaced by run {}", run.id), now)
                            .await?;
                    }
                    entry["key"] = json!(k);
                }
                tx.insert_timer(&NewTimer {
                    run_id: run.id,
                    kind: "sleep".into(),
                    due_at: due,
                    scenario: sc.id.clone(),
                    subject: run.subject.clone(),
                    key,
                })
                .await?;
                after.timers_changed = true;
                entry["until"] = json!(crate::clock::rfc3339(due));
                entry["result"] = json!("sleeping");
                run.status = RunStatus::Sleeping;
                Flow::Park
            }
            Action::Cancel(c) => {
                let scenario = c.scenario.clone().unwrap_or_else(|| sc.id.clone());
                let subject = match &c.subject {
                    Some(t) => Some(tryv!(t.render(ctx))),
                    None => run.subject.clone(),
                };
                let runs = match &c.key {
                    Some(k) => {
                        let k = tryv!(k.render(ctx));
                        tx.take_keyed_timers(&scenario, subject.as_deref(), &k)
                            .await?
                    }
                    None => tx.parked_runs(&scenario, subject.as_deref()).await?,
                };
                let mut cancelled = Vec::new();
                for other in runs.into_iter().filter(|r| *r != run.id) {
                    self.cancel_run(tx, other, &format!("cancelled by run {}", run.id), now)
                        .await?;
                    cancelled.push(other);
                }
                after.timers_changed = true;
                entry["cancelled"] = json!(cancelled);
                Flow::Next
            }
            Action::Wait(w) => {
                let key = match (&w.key, &run.subject) {
                    (Some(k), _) => tryv!(k.render(ctx)),
                    (None, Some(s)) => s.clone(),
                    (None, None) => {
                        return Ok(Err("wait has no key and the run no subject".into()))
                    }
                };
                tx.insert_wait(&NewWait {
                    run_id: run.id,
                    hook: w.hook.clone(),
                    scenario: sc.id.clone(),
                    step: pc as i64,
                    match_key: key.clone(),
                    now,
                })
                .await?;
                if let Some(due) = self.arm_timeout(tx, run, sc, w.timeout, after).await? {
                    entry["until"] = json!(crate::clock::rfc3339(due));
                }
                entry["wait"] = json!({"webhook": w.hook, "key": key});
                entry["result"] = json!("waiting");
                run.status = RunStatus::Waiting;
                Flow::Park
            }
        }))
    }

    async fn assign(
        &mut self,
        tx: &mut dyn Tx,
        run: &mut RunRow,
        st: &mut StepState,
        target: &VarRef,
        v: Json,
        now: i64,
    ) -> Result<(), StoreError> {
        match target.scope {
            Scope::Run => set_path(&mut run.vars, &target.path, v),
            Scope::Subject => {
                set_path(&mut st.subject_vars, &target.path, v);
                st.subject_dirty = true;
            }
            Scope::Global => {
                self.lock_globals(tx).await?;
                set_path(&mut self.globals, &target.path, v);
                let name = &target.path[0];
                let whole = self.globals.get(name).cloned().unwrap_or(Json::Null);
                tx.put_global(name, &whole, now).await?;
            }
        }
        Ok(())
    }

    /// Before the first write to a global in a batch: with replicas, lock the globals and
    /// read them as committed, so that an `incr` on two replicas never loses one.
    async fn lock_globals(&mut self, tx: &mut dyn Tx) -> Result<(), StoreError> {
        if !self.globals_locked {
            if let Some(fresh) = tx.lock_globals().await? {
                self.globals = fresh;
            }
            self.globals_locked = true;
        }
        Ok(())
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
            },
            lane,
        });
        Ok(id)
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

    /// The messages of a `send`: one, or one per staff member (each in their language) for
    /// `staff:<id>` and `staff:@group`.
    fn render_messages(
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
                self.cfg
                    .i18n
                    .render_with(&lang, id, &fargs, &|v| markup.escape(v))?
            }
        };
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
            ..Default::default()
        })
    }

    /// An ask's answer buttons on its question: reply-keyboard buttons, or the choices as
    /// callback buttons that carry the run and the choice.
    pub(super) fn ask_buttons(&self, a: &AskSpec, run_id: i64, m: &mut OutMessage) {
        m.keyboard = a.reply_buttons.clone();
        if a.inline {
            m.choices = a
                .labels
                .iter()
                .enumerate()
                .map(|(i, l)| Choice {
                    text: l.clone(),
                    data: format!("{ASK_PREFIX}{run_id}:{i}"),
                })
                .collect();
        }
    }

    /// The markup of a channel's texts.
    pub(super) fn markup(&self, channel: &str) -> Markup {
        self.cfg
            .gateway
            .channels
            .get(channel)
            .map(|c| crate::channels::capabilities(c).markup)
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
    ) -> Result<(), StoreError> {
        self.http_parked.remove(&run_id);
        tx.clear_parks(run_id).await?;
        if let Some(mut other) = tx.load_run(run_id).await? {
            if other.status.is_active() {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_status_beats_class_and_error_is_last() {
        let b = vec![
            ("404".to_string(), 1),
            ("4xx".to_string(), 2),
            ("error".to_string(), 3),
        ];
        assert_eq!(http_branch(&b, Some(404), false).unwrap().1, 1);
        assert_eq!(http_branch(&b, Some(400), false).unwrap().1, 2);
        assert_eq!(http_branch(&b, Some(503), true).unwrap().1, 3);
        assert!(http_branch(&b, Some(200), false).is_none());
    }

    #[test]
    fn times_parse_from_text_and_numbers() {
        assert_eq!(parse_time(&json!("1970-01-01T00:00:10Z")), Some(10_000));
        assert_eq!(parse_time(&json!(10)), Some(10_000));
        assert_eq!(parse_time(&json!("soon")), None);
    }

    #[test]
    fn secret_headers_are_redacted() {
        let h = redact_headers(&[
            ("Authorization".into(), "Bearer x".into()),
            ("X-Id".into(), "1".into()),
        ]);
        assert_eq!(h["Authorization"], "***");
        assert_eq!(h["X-Id"], "1");
    }
}
