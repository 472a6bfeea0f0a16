//! `switchboard test`: the `[[test]]` tables of scenario files, run offline through the
//! engine (an in-memory database, a clock that only the test moves, no network: messages and
//! requests are recorded and answered here), each checked against its expectations.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{json, Value as Json};
use tokio::sync::Notify;

use crate::channels::Outbound;
use crate::clock::Clock;
use crate::config::{Action, Config, Position, Scenario};
use crate::engine::{DeliveryResult, Engine, EventItem, Work};
use crate::lang::interpolate::{expand, Expanded};
use crate::lang::raw::{Sp, TestDef, TestFile, TestInput};
use crate::store::{IngestOutcome, NewEvent, RunRow, RunStatus, SqliteStore, Store};

/// Where a test's clock starts unless it says: a Monday morning.
const DEFAULT_START: &str = "2026-01-05T10:00:00Z";

/// One test's result.
pub struct Outcome {
    pub file: PathBuf,
    pub pos: Position,
    pub scenario: String,
    pub name: String,
    /// What did not go as expected, each with the position it is about.
    pub failures: Vec<(Position, String)>,
    pub took: Duration,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// A file's tests, parsed for their positions (the scenario compiler checked their keys).
#[derive(serde::Deserialize)]
struct TestsOf {
    #[serde(default, rename = "test")]
    tests: Vec<Sp<TestDef>>,
}

/// Runs every test of the scenarios in `cfg` whose name contains `filter`, on as many
/// threads as there are cores, each test on a runtime of its thread; the outcomes come in
/// file order. Blocking: call it off the async runtime (`spawn_blocking`).
pub fn run_all(cfg: Arc<Config>, filter: Option<&str>) -> anyhow::Result<Vec<Outcome>> {
    let mut scenarios: Vec<Arc<Scenario>> = cfg.scenarios.to_vec();
    scenarios.sort_by(|a, b| a.file.cmp(&b.file));
    let env = |k: &str| std::env::var(k).ok();
    // Trigger links made in tests are signed with a throwaway key.
    cfg.templates
        .set_links(Arc::new(crate::links::Links::for_config(
            &cfg,
            crate::links::Links::random_key().as_bytes(),
            "http://127.0.0.1:8080",
            Clock::default(),
        )));
    let mut jobs = VecDeque::new();
    let mut add = |sc: &Arc<Scenario>,
                   path: &PathBuf,
                   file: Arc<(String, Expanded)>,
                   tests: Vec<Sp<TestDef>>| {
        let tests = Arc::new(tests);
        for i in 0..tests.len() {
            if filter.is_some_and(|f| !tests[i].get().name.contains(f)) {
                continue;
            }
            jobs.push_back((
                jobs.len(),
                sc.clone(),
                path.clone(),
                tests.clone(),
                i,
                file.clone(),
            ));
        }
    };
    for sc in &scenarios {
        let source = std::fs::read_to_string(&sc.file)
            .with_context(|| format!("reading {}", sc.file.display()))?;
        let expanded = expand(&source, &env);
        let parsed: TestsOf = toml::from_str(&expanded.text)
            .with_context(|| format!("reading the tests of {}", sc.file.display()))?;
        add(sc, &sc.file, Arc::new((source, expanded)), parsed.tests);
    }
    // Tests kept beside their scenario, in `*.test.toml` files.
    let mut test_files: Vec<PathBuf> = std::fs::read_dir(&cfg.dir)
        .with_context(|| format!("reading {}", cfg.dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.to_string_lossy()
                .ends_with(crate::config::TEST_FILE_SUFFIX)
        })
        .collect();
    test_files.sort();
    for path in test_files {
        let source = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let expanded = expand(&source, &env);
        let at = |offset: usize| Position::of(&source, expanded.source_offset(offset));
        let parsed: TestFile = match toml::from_str(&expanded.text) {
            Ok(p) => p,
            Err(e) => {
                let pos = at(e.span().map_or(0, |s| s.start));
                anyhow::bail!(
                    "{}:{}:{}: {}",
                    path.display(),
                    pos.line,
                    pos.col,
                    e.message()
                );
            }
        };
        let Some(sc) = scenarios.iter().find(|s| s.id == *parsed.scenario.get()) else {
            let pos = at(parsed.scenario.span().start);
            anyhow::bail!(
                "{}:{}:{}: no scenario '{}' to test",
                path.display(),
                pos.line,
                pos.col,
                parsed.scenario.get()
            );
        };
        add(sc, &path, Arc::new((source, expanded)), parsed.tests);
    }
    let n = jobs.len();
    let jobs = std::sync::Mutex::new(jobs);
    let results = std::sync::Mutex::new(Vec::with_capacity(n));
    let width = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(n.max(1));
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..width)
            .map(|_| {
                scope.spawn(|| -> anyhow::Result<()> {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    // One database per thread, emptied between tests: opening and migrating
                    // one takes longer than most tests.
                    let store = Arc::new(rt.block_on(SqliteStore::open("sqlite::memory:"))?);
                    loop {
                        let Some((order, sc, path, tests, i, file)) =
                            jobs.lock().expect("not poisoned").pop_front()
                        else {
                            return Ok(());
                        };
                        let started = Instant::now();
                        let pos = Positions(file);
                        let t = &tests[i];
                        let failures = rt.block_on(run_one(&cfg, &store, &sc, t, &pos));
                        let outcome = Outcome {
                            file: path,
                            pos: pos.at(t.span().start),
                            scenario: sc.id.clone(),
                            name: t.get().name.clone(),
                            failures,
                            took: started.elapsed(),
                        };
                        results.lock().expect("not poisoned").push((order, outcome));
                    }
                })
            })
            .collect();
        for w in workers {
            w.join()
                .map_err(|_| anyhow::anyhow!("a test thread panicked"))??;
        }
        anyhow::Ok(())
    })?;
    let mut out = results.into_inner().expect("not poisoned");
    out.sort_by_key(|(order, _)| *order);
    Ok(out.into_iter().map(|(_, o)| o).collect())
}

/// What the run did that tests look at.
#[derive(Default)]
struct Seen {
    /// (channel:address, text, button labels)
    sent: Vec<(String, String, Vec<String>)>,
    /// (method, url)
    requests: Vec<(String, String)>,
}

/// Positions in a scenario file as written, from offsets into its expanded text.
struct Positions(Arc<(String, Expanded)>);

impl Positions {
    fn at(&self, offset: usize) -> Position {
        Position::of(&self.0 .0, self.0 .1.source_offset(offset))
    }
}

/// A test's failures (none: it passed).
async fn run_one(
    cfg: &Arc<Config>,
    store: &Arc<SqliteStore>,
    sc: &Arc<Scenario>,
    t: &Sp<TestDef>,
    pos: &Positions,
) -> Vec<(Position, String)> {
    let mut failures = Vec::new();
    let ran = async {
        store.clear().await?;
        drive(cfg, store.clone(), sc, t, pos, &mut failures).await
    };
    if let Err(e) = ran.await {
        failures.push((pos.at(t.span().start), format!("could not run: {e:#}")));
    }
    failures
}

async fn drive(
    cfg: &Arc<Config>,
    store: Arc<SqliteStore>,
    sc: &Arc<Scenario>,
    t: &Sp<TestDef>,
    pos: &Positions,
    failures: &mut Vec<(Position, String)>,
) -> anyhow::Result<()> {
    let def = t.get();
    let start = match &def.at {
        Some(at) => match chrono::DateTime::parse_from_rfc3339(at.get().trim()) {
            Ok(d) => d.timestamp_millis(),
            Err(e) => {
                failures.push((
                    pos.at(at.span().start),
                    format!("`at` is not an RFC 3339 time: {e}"),
                ));
                return Ok(());
            }
        },
        None => chrono::DateTime::parse_from_rfc3339(DEFAULT_START)?.timestamp_millis(),
    };
    let store: Arc<dyn Store> = store;
    let clock = Clock::frozen_at(start);
    let (work_tx, mut work_rx, outbox_tx, mut outbox_rx) = crate::engine::intake::channels();
    let mut engine = Engine::new(
        cfg.clone(),
        store.clone(),
        clock.clone(),
        outbox_tx,
        Arc::new(Notify::new()),
        work_tx,
        "http://127.0.0.1:8080".into(),
    )
    .await?;
    let ev = NewEvent {
        kind: "simulate".into(),
        source: sc.id.clone(),
        dedupe_key: None,
        data: Json::Object(def.event.clone()),
        meta: json!({}),
        rejected: None,
        received_at: clock.now_ms(),
    };
    let IngestOutcome::Accepted(first) = store.ingest(std::slice::from_ref(&ev)).await?[0] else {
        anyhow::bail!("the event was not accepted");
    };
    let mut queue: VecDeque<Work> = VecDeque::from([Work::Event(EventItem::stored(first, ev))]);
    let mut http: VecDeque<&Sp<crate::lang::raw::TestHttpReply>> = def.http.iter().collect();
    let mut inputs: VecDeque<&Sp<TestInput>> = def.then.iter().collect();
    let mut seen = Seen::default();
    // Time passing (`after`): the clock steps from one due timer to the next up to here, each
    // timer's work done at its own time, as the gateway would.
    let mut until: Option<i64> = None;
    // Bounded, so that a scenario that loops forever ends its test.
    for _ in 0..10_000 {
        while let Some(w) = queue.pop_front() {
            engine.process(std::slice::from_ref(&w)).await?;
            while let Ok(job) = outbox_rx.try_recv() {
                let r = &job.row.request;
                let response = if job.row.kind == "http" {
                    seen.requests.push((
                        r["method"].as_str().unwrap_or("").to_string(),
                        r["url"].as_str().unwrap_or("").to_string(),
                    ));
                    let reply = http.pop_front().map(Sp::get);
                    let status = reply.and_then(|h| h.status).unwrap_or(200);
                    let body = reply.and_then(|h| h.body.clone()).unwrap_or_default();
                    let json = reply
                        .and_then(|h| h.json.clone())
                        .or_else(|| serde_json::from_str(&body).ok())
                        .unwrap_or(Json::Null);
                    json!({"status": status, "headers": {}, "json": json, "body": body})
                } else {
                    if let Ok(Outbound::Send(m)) = Outbound::from_json(r) {
                        let buttons = m
                            .links
                            .iter()
                            .map(|b| b.text.clone())
                            .chain(m.choices.iter().map(|c| c.text.clone()))
                            .collect();
                        let to = match m.to.as_str() {
                            "" => job.row.channel.clone(),
                            to => format!("{}:{to}", job.row.channel),
                        };
                        seen.sent.push((to, m.text, buttons));
                    }
                    json!({"message": format!("m{}", job.row.id)})
                };
                queue.push_back(Work::Delivery(
                    job.delivery(1, DeliveryResult::Delivered(response)),
                ));
            }
            while let Ok(w) = work_rx.rx.try_recv() {
                queue.push_back(w);
            }
        }
        if let Some(target) = until {
            let now = clock.now_ms();
            match store.due_timers(target, 1).await?.into_iter().next() {
                Some(t) => {
                    if t.due_at > now {
                        clock.advance(Duration::from_millis((t.due_at - now) as u64));
                    }
                    let due = store.due_timers(clock.now_ms(), 10_000).await?;
                    queue.extend(due.into_iter().map(Work::Timer));
                }
                None => {
                    clock.advance(Duration::from_millis((target - now).max(0) as u64));
                    until = None;
                }
            }
            continue;
        }
        let Some(input) = inputs.pop_front() else {
            break;
        };
        let at = pos.at(input.span().start);
        if let Some(after) = &input.get().after {
            match crate::lang::compile::values::parse_duration(after) {
                Ok(d) => until = Some(clock.now_ms() + d.as_millis() as i64),
                Err(e) => {
                    failures.push((at, format!("after: {e}")));
                    return Ok(());
                }
            }
            continue;
        }
        match next_work(&store, cfg, &clock, input.get()).await? {
            Ok(work) => queue.extend(work),
            Err(why) => {
                failures.push((at, why));
                return Ok(());
            }
        }
    }
    let runs = store.runs_for_event(first).await?;
    check(def, runs.first(), &seen, pos, failures);
    Ok(())
}

/// The work one input makes: a reply to the asking (or waiting) run, or the event a waiting
/// run gets.
async fn next_work(
    store: &Arc<dyn Store>,
    cfg: &Config,
    clock: &Clock,
    input: &TestInput,
) -> anyhow::Result<Result<Vec<Work>, String>> {
    let mut waiting = Vec::new();
    let filter = crate::store::RunFilter {
        status: Some(RunStatus::Waiting),
        limit: 1000,
        ..Default::default()
    };
    let mut ids: Vec<i64> = store
        .list_runs(&filter)
        .await?
        .iter()
        .map(|r| r.id)
        .collect();
    ids.sort();
    for id in ids {
        waiting.extend(store.run(id).await?);
    }
    let step_of = |r: &RunRow| {
        cfg.scenario(&r.scenario)
            .and_then(|sc| sc.steps.get(r.pc as usize))
            .map(|s| &s.action)
    };
    if let Some(text) = &input.reply {
        for run in &waiting {
            match step_of(run) {
                Some(Action::Ask(a)) => {
                    // The reply comes from the chat the question went to.
                    let rows = store.outbox_for_run(run.id).await?;
                    let chat = rows
                        .iter()
                        .rev()
                        .find_map(|o| o.request["to"].as_str().map(str::to_string))
                        .unwrap_or_default();
                    let ev = NewEvent {
                        kind: "message".into(),
                        source: a.question.channel.clone(),
                        dedupe_key: None,
                        data: json!({"chat": {"id": chat}, "from": {"id": chat}, "text": text}),
                        meta: json!({}),
                        rejected: None,
                        received_at: clock.now_ms(),
                    };
                    let IngestOutcome::Accepted(id) =
                        store.ingest(std::slice::from_ref(&ev)).await?[0]
                    else {
                        anyhow::bail!("the reply was not accepted");
                    };
                    return Ok(Ok(vec![Work::Event(EventItem::stored(id, ev))]));
                }
                Some(Action::Wait(_)) => {
                    return Ok(Ok(vec![Work::Answer {
                        run_id: run.id,
                        data: json!({"text": text}),
                    }]))
                }
                _ => {}
            }
        }
        return Ok(Err(format!("reply {text:?}: no run asks or waits for one")));
    }
    if let Some(button) = &input.click {
        for run in &waiting {
            if let Some(Action::Offer(o)) = step_of(run) {
                return click(store, cfg, clock, run, o, button, input.by.as_deref()).await;
            }
        }
        return Ok(Err(format!("click {button:?}: no run waits on an offer")));
    }
    if let Some(body) = &input.webhook {
        if let Some(run) = waiting
            .iter()
            .find(|r| matches!(step_of(r), Some(Action::Wait(_))))
        {
            return Ok(Ok(vec![Work::Answer {
                run_id: run.id,
                data: Json::Object(body.clone()),
            }]));
        }
        return Ok(Err("webhook: no run waits for one".into()));
    }
    Ok(Err(
        "an input needs `reply`, `webhook`, `click` or `after`".into()
    ))
}

/// A press on a button of the offer `run` waits on, from `by` (a staff member, who presses on
/// their own message, or a user id), as the channel would report it.
async fn click(
    store: &Arc<dyn Store>,
    cfg: &Config,
    clock: &Clock,
    run: &RunRow,
    o: &crate::config::OfferSpec,
    button: &str,
    by: Option<&str>,
) -> anyhow::Result<Result<Vec<Work>, String>> {
    let Some(index) = o.buttons.iter().position(|b| b.id == button) else {
        let ids: Vec<&str> = o.buttons.iter().map(|b| b.id.as_str()).collect();
        return Ok(Err(format!(
            "click {button:?}: the offer has no such button (it has {})",
            ids.join(", ")
        )));
    };
    let mut tx = store.begin().await?;
    let Some(offer) = tx.open_offer_of(run.id).await? else {
        return Ok(Err(format!("click {button:?}: the offer is not open")));
    };
    let messages = tx.offer_messages(offer.id).await?;
    tx.commit().await?;
    let gw = &cfg.gateway;
    let staff = by.and_then(|b| gw.staff.iter().find(|s| s.id == b));
    // The clicker's own message when the offer went to them, else the first one.
    let own = |m: &&crate::store::OfferMessage| {
        staff.is_some_and(|s| {
            gw.staff_id(s, &m.channel)
                .is_some_and(|id| id.trim_start_matches('@') == m.chat_id)
        })
    };
    let Some(m) = messages.iter().find(own).or(messages.first()) else {
        return Ok(Err(format!(
            "click {button:?}: the offer has no message yet"
        )));
    };
    let (user, name) = match staff {
        Some(s) => (
            gw.staff_id(s, &m.channel)
                .map(|id| id.trim_start_matches('@').to_string())
                .unwrap_or_else(|| s.id.clone()),
            s.name.clone(),
        ),
        None => {
            let who = by.unwrap_or("1").to_string();
            (who.clone(), who)
        }
    };
    let ev = NewEvent {
        kind: "click".into(),
        source: m.channel.clone(),
        dedupe_key: None,
        data: json!({
            "click": format!("test-{}-{index}", offer.id),
            "data": format!("o:{}:{index}", offer.id),
            "message": m.message_id,
            "chat": {"id": m.chat_id},
            "from": {"id": user, "first_name": name},
        }),
        meta: json!({}),
        rejected: None,
        received_at: clock.now_ms(),
    };
    let IngestOutcome::Accepted(id) = store.ingest(std::slice::from_ref(&ev)).await?[0] else {
        anyhow::bail!("the click was not accepted");
    };
    Ok(Ok(vec![Work::Event(EventItem::stored(id, ev))]))
}

/// A run variable by dotted path.
fn var<'a>(run: &'a RunRow, path: &str) -> Option<&'a Json> {
    let mut parts = path.split('.');
    let mut v = run.vars.get(parts.next()?)?;
    for p in parts {
        v = match v {
            Json::Object(m) => m.get(p)?,
            Json::Array(a) => a.get(p.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(v)
}

fn check(
    def: &TestDef,
    run: Option<&RunRow>,
    seen: &Seen,
    pos: &Positions,
    failures: &mut Vec<(Position, String)>,
) {
    let e = &def.expect;
    let status = run.map(|r| r.status.as_str()).unwrap_or("not started");
    if let Some(want) = &e.status {
        if want.get() != status {
            let why = run
                .and_then(|r| r.error.clone())
                .map(|e| format!(" ({e})"))
                .unwrap_or_default();
            failures.push((
                pos.at(want.span().start),
                format!("status: expected {}, got {status}{why}", want.get()),
            ));
        }
    }
    let Some(run) = run else {
        return;
    };
    if let Some(want) = &e.error {
        let got = run.error.clone().unwrap_or_default();
        if !got.contains(want.get().as_str()) {
            failures.push((
                pos.at(want.span().start),
                format!(
                    "error: expected one containing {:?}, got {got:?}",
                    want.get()
                ),
            ));
        }
    }
    // Labels, as a subsequence of those the run passed.
    let passed: Vec<&str> = run
        .journal
        .iter()
        .filter_map(|j| j["label"].as_str())
        .collect();
    let mut rest = passed.iter();
    for l in &e.labels {
        if !rest.any(|p| p == l.get()) {
            failures.push((
                pos.at(l.span().start),
                format!(
                    "labels: expected to pass {:?} (in this order), passed {passed:?}",
                    l.get()
                ),
            ));
            break;
        }
    }
    for (path, want) in &e.vars {
        let got = var(run, path);
        if got != Some(want.get()) {
            failures.push((
                pos.at(want.span().start),
                format!(
                    "run.{path}: expected {}, got {}",
                    want.get(),
                    got.map(|g| g.to_string())
                        .unwrap_or_else(|| "nothing".into())
                ),
            ));
        }
    }
    if let Some(want) = &e.sent {
        let shown: Vec<String> = seen
            .sent
            .iter()
            .map(|(to, text, b)| format!("  to {to}: {text:?} {b:?}"))
            .collect();
        for (i, w) in want.iter().enumerate() {
            let m = w.get();
            let Some((to, text, buttons)) = seen.sent.get(i) else {
                failures.push((
                    pos.at(w.span().start),
                    format!(
                        "sent: expected message {} of {}, the run sent {}:\n{}",
                        i + 1,
                        want.len(),
                        seen.sent.len(),
                        shown.join("\n")
                    ),
                ));
                break;
            };
            let mut wrong = Vec::new();
            if m.to.as_ref().is_some_and(|t| t != to) {
                wrong.push(format!(
                    "to {:?}, got {to:?}",
                    m.to.as_deref().unwrap_or("")
                ));
            }
            if m.text.as_ref().is_some_and(|t| !text.contains(t.as_str())) {
                wrong.push(format!(
                    "a text containing {:?}, got {text:?}",
                    m.text.as_deref().unwrap_or("")
                ));
            }
            if m.buttons.as_ref().is_some_and(|b| b != buttons) {
                wrong.push(format!(
                    "buttons {:?}, got {buttons:?}",
                    m.buttons.as_deref().unwrap_or(&[])
                ));
            }
            if !wrong.is_empty() {
                failures.push((
                    pos.at(w.span().start),
                    format!("sent: message {} expected {}", i + 1, wrong.join(", ")),
                ));
            }
        }
        if seen.sent.len() > want.len() {
            failures.push((
                pos.at(want.first().map(|w| w.span().start).unwrap_or(0)),
                format!(
                    "sent: expected {} messages, the run sent {}:\n{}",
                    want.len(),
                    seen.sent.len(),
                    shown.join("\n")
                ),
            ));
        }
    }
    if let Some(want) = &e.requests {
        let shown: Vec<String> = seen
            .requests
            .iter()
            .map(|(m, u)| format!("  {m} {u}"))
            .collect();
        if want.len() != seen.requests.len() {
            failures.push((
                pos.at(want.first().map(|w| w.span().start).unwrap_or(0)),
                format!(
                    "requests: expected {}, the run made {}:\n{}",
                    want.len(),
                    seen.requests.len(),
                    shown.join("\n")
                ),
            ));
        }
        for (w, (method, url)) in want.iter().zip(&seen.requests) {
            let r = w.get();
            let method_ok = r
                .method
                .as_ref()
                .is_none_or(|m| m.eq_ignore_ascii_case(method));
            let url_ok = r.url.as_ref().is_none_or(|u| url.contains(u.as_str()));
            if !method_ok || !url_ok {
                failures.push((
                    pos.at(w.span().start),
                    format!(
                        "requests: expected {} {}, got {method} {url}",
                        r.method.as_deref().unwrap_or("*"),
                        r.url.as_deref().unwrap_or("*")
                    ),
                ));
            }
        }
    }
}

/// The outcomes as JUnit XML (one suite per scenario).
pub fn junit(outcomes: &[Outcome]) -> anyhow::Result<String> {
    use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
    let mut report = Report::new("switchboard");
    let mut suites: Vec<TestSuite> = Vec::new();
    for o in outcomes {
        let status = if o.passed() {
            TestCaseStatus::success()
        } else {
            let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
            s.set_message(
                o.failures
                    .iter()
                    .map(|(p, m)| format!("{}:{}:{}: {m}", o.file.display(), p.line, p.col))
                    .collect::<Vec<_>>()
                    .join("\n"),
            );
            s
        };
        let mut case = TestCase::new(o.name.clone(), status);
        case.set_time(o.took);
        case.set_classname(o.scenario.clone());
        match suites.iter_mut().find(|s| s.name.as_str() == o.scenario) {
            Some(s) => {
                s.add_test_case(case);
            }
            None => {
                let mut s = TestSuite::new(o.scenario.clone());
                s.add_test_case(case);
                suites.push(s);
            }
        }
    }
    report.add_test_suites(suites);
    Ok(report.to_string()?)
}

/// Prints and returns whether every test passed.
pub fn report(outcomes: &[Outcome], out: &mut dyn std::io::Write) -> std::io::Result<bool> {
    let mut failed = 0;
    for o in outcomes {
        let ms = o.took.as_secs_f64() * 1000.0;
        if o.passed() {
            writeln!(out, "ok    {} › {} ({ms:.1} ms)", o.scenario, o.name)?;
        } else {
            failed += 1;
            writeln!(out, "FAIL  {} › {} ({ms:.1} ms)", o.scenario, o.name)?;
            for (p, m) in &o.failures {
                writeln!(out, "{}:{}:{}: {m}", o.file.display(), p.line, p.col)?;
            }
        }
    }
    let total: Duration = outcomes.iter().map(|o| o.took).sum();
    writeln!(
        out,
        "{} passed, {failed} failed ({} tests in {:.0} ms)",
        outcomes.len() - failed,
        outcomes.len(),
        total.as_secs_f64() * 1000.0
    )?;
    Ok(failed == 0)
}
