//! `switchboard simulate`: a dry run of one scenario on an in-memory database. It prints each
//! verdict and each message or request the run would send, and sends nothing.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use serde_json::{json, Value as Json};
use tokio::sync::Notify;

use crate::clock::Clock;
use crate::config::Action;
use crate::engine::{DeliveryResult, Engine, EventItem, Work};
use crate::store::{IngestOutcome, NewEvent, RunStatus, SqliteStore, Store};

pub struct SimOptions<'a> {
    pub config_dir: &'a Path,
    pub scenario: &'a str,
    pub event: Json,
    /// Answers for waits, in order: plain text becomes `{"text": …}`, a JSON object is used as is.
    pub replies: Vec<String>,
    pub http_status: u16,
}

/// Runs the simulation and returns the printed lines.
pub async fn simulate(opts: SimOptions<'_>) -> anyhow::Result<Vec<String>> {
    let cfg = Arc::new(crate::config::load(opts.config_dir)?);
    let sc = cfg
        .scenario(opts.scenario)
        .with_context(|| {
            format!(
                "no scenario '{}' in {}",
                opts.scenario,
                opts.config_dir.display()
            )
        })?
        .clone();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open("sqlite::memory:").await?);
    let clock = Clock::default();
    let (work_tx, mut work_rx, outbox_tx, mut outbox_rx) = crate::engine::intake::channels();
    let public_url = cfg
        .gateway
        .public_url
        .clone()
        .unwrap_or_else(|| "http://127.0.0.1:8080".into());
    // Links made in a dry run are signed with a throwaway key: they show the shape, and
    // never work against a real gateway.
    cfg.templates
        .set_links(Arc::new(crate::links::Links::for_config(
            &cfg,
            crate::links::Links::random_key().as_bytes(),
            &public_url,
            clock.clone(),
        )));
    let mut engine = Engine::new(
        Arc::new(crate::config::live::Live::new(cfg.clone(), 0)),
        store.clone(),
        clock.clone(),
        outbox_tx,
        Arc::new(Notify::new()),
        work_tx,
        public_url,
    )
    .await?;

    let mut out = Vec::new();
    let ev = NewEvent {
        kind: "simulate".into(),
        source: sc.id.clone(),
        dedupe_key: None,
        data: opts.event.clone(),
        meta: json!({}),
        rejected: None,
        received_at: clock.now_ms(),
    };
    let IngestOutcome::Accepted(first) = store.ingest(std::slice::from_ref(&ev)).await?[0] else {
        bail!("the event was not accepted");
    };
    let mut events = vec![first];
    let mut queue: VecDeque<Work> = VecDeque::new();
    queue.push_back(Work::Event(EventItem {
        id: first,
        kind: ev.kind,
        source: ev.source,
        data: Arc::new(ev.data),
        meta: ev.meta,
        recheck: false,
    }));
    let mut replies: VecDeque<String> = opts.replies.into();
    let mut printed: HashMap<i64, usize> = HashMap::new();
    let mut outcome_shown = 0usize;
    let mut yearly_shown = false;
    for _ in 0..10_000 {
        while let Some(w) = queue.pop_front() {
            engine.process(std::slice::from_ref(&w)).await?;
            // New journal lines: the event's verdicts, then each run's steps.
            if let Some(e) = store.event(first).await? {
                let o = e
                    .outcome
                    .and_then(|o| o.as_array().cloned())
                    .unwrap_or_default();
                for line in o.iter().skip(outcome_shown) {
                    if line.get("run").is_none() {
                        out.push(crate::journal::outcome_line(line));
                    }
                }
                outcome_shown = o.len();
            }
            for ev in &events {
                for run in store.runs_for_event(*ev).await? {
                    let seen = printed.entry(run.id).or_insert_with(|| {
                        out.push(format!(
                            "run {} of {} (subject {})",
                            run.id,
                            run.scenario,
                            run.subject.as_deref().unwrap_or("-")
                        ));
                        0
                    });
                    for e in run.journal.iter().skip(*seen) {
                        out.push(format!("  {}", crate::journal::step_line(e)));
                    }
                    *seen = run.journal.len();
                }
            }
            while let Ok(job) = outbox_rx.try_recv() {
                let r = &job.row.request;
                let response = if job.row.kind == "http" {
                    out.push(format!(
                        "  would send {} (assuming it answers {})",
                        crate::journal::request_text(r),
                        opts.http_status
                    ));
                    json!({"status": opts.http_status, "headers": {}, "json": null, "body": ""})
                } else {
                    out.push(format!(
                        "  would send {}",
                        crate::journal::message_text(&job.row.channel, r)
                    ));
                    json!({"simulated": true})
                };
                queue.push_back(Work::Delivery(
                    job.delivery(1, DeliveryResult::Delivered(response)),
                ));
            }
            while let Ok(w) = work_rx.rx.try_recv() {
                if let Work::Event(e) = &w {
                    events.push(e.id);
                }
                queue.push_back(w);
            }
        }
        // Nothing left to do now: let time pass for sleeps and held messages, answer waits
        // from --reply.
        let mut progressed = false;
        for ev in events.clone() {
            for run in store.runs_for_event(ev).await? {
                match run.status {
                    RunStatus::Sleeping => {
                        // A yearly scenario's run schedules next year's when it wakes: one
                        // year is shown, not every one after it.
                        let yearly = cfg
                            .scenario(&run.scenario)
                            .is_some_and(|sc| sc.yearly.is_some());
                        if yearly && yearly_shown {
                            out.push(format!(
                                "  run {} would sleep until next year (not simulated)",
                                run.id
                            ));
                            continue;
                        }
                        for t in store.due_timers(i64::MAX, 1000).await? {
                            if t.run_id == run.id && (t.kind == "sleep" || t.kind == "hold") {
                                out.push(format!("  (run {}: letting the time pass)", run.id));
                                queue.push_back(Work::Timer(t));
                                progressed = true;
                                yearly_shown |= yearly;
                            }
                        }
                    }
                    RunStatus::Waiting
                        if store
                            .outbox_for_run(run.id)
                            .await?
                            .iter()
                            .all(|o| o.status != "pending") =>
                    {
                        let step = cfg
                            .scenario(&run.scenario)
                            .and_then(|sc| sc.steps.get(run.pc as usize))
                            .map(|st| &st.action);
                        match (replies.pop_front(), step) {
                            (_, Some(Action::Offer(_))) => out.push(format!(
                                "  run {} would wait for a click on its offer",
                                run.id
                            )),
                            (Some(reply), Some(Action::Ask(a))) => {
                                out.push(format!("  (run {}: the chat replies {reply:?})", run.id));
                                let now = clock.now_ms();
                                if let Some(ev) = reply_to_ask(&store, &run, a, &reply, now).await?
                                {
                                    events.push(ev.id);
                                    queue.push_back(Work::Event(ev));
                                    progressed = true;
                                }
                            }
                            (Some(reply), _) => {
                                let data = match serde_json::from_str::<Json>(&reply) {
                                    Ok(v @ Json::Object(_)) => v,
                                    _ => json!({"text": reply, "button": reply}),
                                };
                                out.push(format!("  (run {}: answered with {data})", run.id));
                                queue.push_back(Work::Answer {
                                    run_id: run.id,
                                    data,
                                });
                                progressed = true;
                            }
                            (None, _) => out.push(format!(
                                "  run {} would wait here (pass --reply to answer it)",
                                run.id
                            )),
                        }
                    }
                    _ => {}
                }
            }
        }
        if !progressed {
            break;
        }
    }
    for ev in events {
        for run in store.runs_for_event(ev).await? {
            out.push(crate::journal::run_header(&run));
        }
    }
    Ok(out)
}

/// A reply to the question `run` asks, as a message from the chat the question went to
/// (stored, ready for the engine); `None` if the store refused it.
pub(crate) async fn reply_to_ask(
    store: &Arc<dyn Store>,
    run: &crate::store::RunRow,
    ask: &crate::config::AskSpec,
    text: &str,
    now: i64,
) -> anyhow::Result<Option<EventItem>> {
    let rows = store.outbox_for_run(run.id).await?;
    let chat = rows
        .iter()
        .rev()
        .find_map(|o| o.request["to"].as_str().map(str::to_string))
        .unwrap_or_default();
    let ev = NewEvent {
        kind: "message".into(),
        source: ask.question.channel.clone(),
        dedupe_key: None,
        data: json!({"chat": {"id": chat}, "from": {"id": chat}, "text": text}),
        meta: json!({}),
        rejected: None,
        received_at: now,
    };
    Ok(match store.ingest(std::slice::from_ref(&ev)).await?[0] {
        IngestOutcome::Accepted(id) => Some(EventItem::stored(id, ev)),
        _ => None,
    })
}
