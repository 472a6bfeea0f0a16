//! Durable time: fires stored timers (sleeps, wait timeouts) when due, and turns cron
//! schedules into events (deduplicated by their fire time, so a restart never doubles one).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::{watch, Notify};

use crate::clock::Clock;
use crate::config::{Config, Trigger};
use crate::engine::ingest::Ingest;
use crate::engine::{Work, WorkSender};
use crate::store::{NewEvent, Store};

/// How long the timer loop sleeps at most between looks at the table: with replicas,
/// another one may have stored a timer this one was not told about.
const IDLE: i64 = 30_000;
const IDLE_SHARED: i64 = 1_000;
/// A due timer handed to the engine and still in the table this long after is handed over
/// again (the engine may have lost it to a database outage); firing is idempotent.
const RESEND: i64 = 30_000;

pub async fn timer_worker(
    store: Arc<dyn Store>,
    clock: Clock,
    engine: WorkSender,
    wake: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    // Due timers handed to the engine → when.
    let mut in_flight: HashMap<i64, i64> = HashMap::new();
    let idle = if store.exclusive() { IDLE } else { IDLE_SHARED };
    loop {
        if *stop.borrow() {
            return;
        }
        let now = clock.now_ms();
        let due = match store.due_timers(now, 1024).await {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "reading timers failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let ids: std::collections::HashSet<i64> = due.iter().map(|t| t.id).collect();
        // Timers the engine has handled are gone from the table; forget them.
        in_flight.retain(|id, _| ids.contains(id));
        let mut sent = 0;
        for t in due {
            let handed = in_flight.get(&t.id).copied();
            if handed.is_none_or(|at| now - at >= RESEND) {
                if handed.is_some() {
                    tracing::warn!(
                        timer = t.id,
                        "a due timer is still unfired; handing it over again"
                    );
                }
                in_flight.insert(t.id, now);
                sent += 1;
                let _ = engine.send(Work::Timer(t));
            }
        }
        let next = if !ids.is_empty() {
            // Due timers are with the engine: look again once it has committed something.
            now + if sent == 0 { 50 } else { 10 }
        } else {
            match store.next_timer_due().await {
                Ok(Some(at)) => at.min(now + idle),
                _ => now + idle,
            }
        };
        tokio::select! {
            _ = clock.sleep_until(next, Some(&wake)) => {}
            _ = stop.changed() => {}
        }
    }
}

/// Keeps one task per scheduled scenario of the current config, started again after a
/// reload. The first ones start before this returns (their first fire counts from now).
pub fn schedules(
    live: Arc<crate::config::live::Live>,
    store: Arc<dyn Store>,
    clock: Clock,
    ingest: Ingest,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let mut installed = live.installed();
    let (mut stop_these, these) = watch::channel(false);
    let mut tasks = start_schedules(&live.config(), &store, &clock, &ingest, &these);
    tokio::spawn(async move {
        loop {
            let ended = tokio::select! {
                r = installed.changed() => r.is_err(),
                _ = stop.wait_for(|s| *s) => true,
            };
            let _ = stop_these.send(true);
            for t in tasks.drain(..) {
                let _ = t.await;
            }
            if ended {
                return;
            }
            let (tx, these) = watch::channel(false);
            stop_these = tx;
            tasks = start_schedules(&live.config(), &store, &clock, &ingest, &these);
        }
    })
}

/// One task per scheduled scenario.
pub fn start_schedules(
    cfg: &Arc<Config>,
    store: &Arc<dyn Store>,
    clock: &Clock,
    ingest: &Ingest,
    stop: &watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for sc in &cfg.scenarios {
        let Trigger::Schedule { cron, tz } = &sc.trigger else {
            continue;
        };
        let (id, cron, tz) = (sc.id.clone(), cron.clone(), *tz);
        let (store, clock, ingest, mut stop) =
            (store.clone(), clock.clone(), ingest.clone(), stop.clone());
        // The first fire is the next one after start-up (or after the last stored fire).
        let started = clock.now_ms();
        tasks.push(tokio::spawn(async move {
            let mut last = match store.schedule_last(&id).await {
                Ok(Some(t)) => t,
                _ => started,
            };
            loop {
                let from = chrono::DateTime::from_timestamp_millis(last)
                    .unwrap_or_default()
                    .with_timezone(&tz);
                let Some(next) = cron.after(&from).next() else {
                    return;
                };
                let at = next.timestamp_millis();
                tokio::select! {
                    _ = clock.sleep_until(at, None) => {}
                    _ = stop.changed() => return,
                }
                if clock.now_ms() < at {
                    continue;
                }
                let ev = NewEvent {
                    kind: "schedule".into(),
                    source: id.clone(),
                    dedupe_key: Some(format!("schedule:{id}:{at}")),
                    data: json!({"scheduled_at": next.to_rfc3339(), "timezone": tz.name()}),
                    meta: json!({}),
                    rejected: None,
                    received_at: clock.now_ms(),
                };
                match ingest.submit(ev).await {
                    Ok(_) => {
                        last = at;
                        if let Err(e) = store.set_schedule_last(&id, at).await {
                            tracing::error!(error = %e, scenario = %id, "saving schedule state failed");
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, scenario = %id, "scheduling failed");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        }));
    }
    tasks
}

/// Deletes journal rows (finished runs, processed events, delivered or failed requests)
/// older than `keep`, a thousand at a time, so that it never holds the database for long.
pub async fn retention_worker(
    live: Arc<crate::config::live::Live>,
    store: Arc<dyn Store>,
    clock: Clock,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        // Read each time: a reload may change it.
        let cfg = live.config();
        let keep = cfg.gateway.retention;
        // The versions being served are kept fresh, so that only those no gateway serves and
        // no run follows are pruned.
        if let Err(e) = store
            .put_scenario_versions(&cfg.versions(), clock.now_ms())
            .await
        {
            tracing::warn!(error = %e, "recording scenario versions failed");
        }
        let every = (keep / 10).clamp(Duration::from_secs(1), Duration::from_secs(600));
        let before = clock.now_ms() - keep.as_millis() as i64;
        loop {
            match store.prune(before, 1000).await {
                Ok(0) => break,
                Ok(n) => {
                    tracing::info!(rows = n, "pruned old journal rows");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, "pruning the journal failed");
                    break;
                }
            }
        }
        tokio::select! {
            _ = clock.sleep_until(clock.now_ms() + every.as_millis() as i64, None) => {}
            _ = stop.changed() => return,
        }
    }
}
