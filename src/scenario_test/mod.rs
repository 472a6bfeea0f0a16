//! `switchboard test`: the `[[test]]` tables of scenario files, run offline through the
//! engine (an in-memory database, a clock that only the test moves, no network: messages and
//! requests are recorded and answered here), each checked against its expectations.

mod expect;
mod inputs;
mod report;

pub use report::{junit, report};

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{json, Value as Json};
use tokio::sync::Notify;

use crate::channels::Outbound;
use crate::clock::Clock;
use crate::config::{Config, Position, Scenario};
use crate::engine::{DeliveryResult, Engine, EventItem, Work};
use crate::lang::interpolate::{expand, Expanded};
use crate::lang::raw::{Sp, TestDef, TestFile, TestInput};
use crate::store::{IngestOutcome, NewEvent, SqliteStore, Store};

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

/// `switchboard test`: loads the config folder, runs its tests, writes the JUnit file if asked,
/// prints the outcomes (or the folder's problems); whether everything passed. Blocking.
pub fn command(
    dir: &std::path::Path,
    filter: Option<&str>,
    junit_file: Option<&std::path::Path>,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<bool> {
    let cfg = match crate::config::load(dir) {
        Ok(cfg) => Arc::new(cfg),
        Err(errors) => {
            // A reader that went away (`| head`) is no error of the tests.
            let _ = writeln!(out, "{errors}");
            eprintln!("{} problem(s)", errors.0.len());
            return Ok(false);
        }
    };
    let outcomes = run_all(cfg, filter)?;
    if let Some(path) = junit_file {
        std::fs::write(path, junit(&outcomes)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    match report(&outcomes, out) {
        Ok(passed) => Ok(passed),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(true),
        Err(e) => Err(e.into()),
    }
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
pub(super) struct Seen {
    /// (channel:address, text, button labels)
    pub(super) sent: Vec<(String, String, Vec<String>)>,
    /// (method, url)
    pub(super) requests: Vec<(String, String)>,
    /// The answers presses got (a popup on Telegram and Discord, a message on WhatsApp).
    pub(super) answers: Vec<String>,
}

/// Positions in a scenario file as written, from offsets into its expanded text.
pub(super) struct Positions(Arc<(String, Expanded)>);

impl Positions {
    pub(super) fn at(&self, offset: usize) -> Position {
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
        Arc::new(crate::config::live::Live::new(cfg.clone(), 0)),
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
    let mut played = inputs::Played::default();
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
                    if let Ok(Outbound::Answer(a)) = Outbound::from_json(r) {
                        if !a.text.is_empty() {
                            seen.answers.push(a.text);
                        }
                    } else if let Ok(Outbound::Send(m)) = Outbound::from_json(r) {
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
        match inputs::next_work(&store, cfg, &clock, input.get(), &mut played).await? {
            Ok(work) => queue.extend(work),
            Err(why) => {
                failures.push((at, why));
                return Ok(());
            }
        }
    }
    let runs = store.runs_for_event(first).await?;
    expect::check(def, runs.first(), &seen, pos, failures);
    Ok(())
}
