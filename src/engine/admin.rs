//! Operator actions that change state: retrying a failed run or request, cancelling a run,
//! switching a scenario on or off, writing global variables. They go through the engine so
//! they commit in its transactions like any other work.

use std::sync::{Arc, Mutex};

use serde_json::{json, Value as Json};
use tokio::sync::oneshot;

use super::{steps, After, Engine, OutboxJob};
use crate::config::Action;
use crate::store::{NewEvent, RunStatus, StoreError, Tx};

#[derive(Debug, Clone)]
pub enum AdminOp {
    RetryRun(i64),
    RetryOutbox(i64),
    CancelRun(i64),
    SetEnabled(String, bool),
    SetGlobal(String, Json),
    DeleteGlobal(String),
    /// Starts a scenario once per event, whatever its trigger (`manual` events).
    Start {
        scenario: String,
        events: Vec<Json>,
        test: bool,
        /// The caller's idempotency key: the same key again starts nothing new.
        key: Option<String>,
    },
}

/// Why an operator action was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// The request itself is wrong (too many events).
    #[error("{0}")]
    Invalid(String),
}

pub type AdminResult = Result<Json, AdminError>;

/// Where the answer goes once the action has committed. Shared so that a retried batch
/// still holds it.
#[derive(Clone)]
pub struct AdminReply(Arc<Mutex<Option<oneshot::Sender<AdminResult>>>>);

impl AdminReply {
    pub fn new() -> (AdminReply, oneshot::Receiver<AdminResult>) {
        let (tx, rx) = oneshot::channel();
        (AdminReply(Arc::new(Mutex::new(Some(tx)))), rx)
    }

    pub(super) fn send(&self, r: AdminResult) {
        if let Some(tx) = self.0.lock().expect("not poisoned").take() {
            let _ = tx.send(r);
        }
    }
}

impl Engine {
    pub(super) async fn on_admin(
        &mut self,
        tx: &mut dyn Tx,
        op: &AdminOp,
        reply: &AdminReply,
        after: &mut After,
    ) -> Result<(), StoreError> {
        let result = self.admin(tx, op, after).await?;
        after.replies.push((reply.clone(), result));
        Ok(())
    }

    async fn admin(
        &mut self,
        tx: &mut dyn Tx,
        op: &AdminOp,
        after: &mut After,
    ) -> Result<AdminResult, StoreError> {
        let now = self.now();
        Ok(match op {
            AdminOp::RetryRun(id) => {
                let Some(mut run) = tx.load_run(*id).await? else {
                    return Ok(Err(AdminError::NotFound(format!("no run {id}"))));
                };
                if run.status != RunStatus::Failed {
                    return Ok(Err(AdminError::Conflict(format!(
                        "only failed runs can be retried; run {id} is {}",
                        run.status.as_str()
                    ))));
                }
                let sc = match self.scenario_of(tx, &run).await? {
                    Ok(sc) => sc,
                    Err(why) => return Ok(Err(AdminError::Conflict(why))),
                };
                run.error = None;
                let http_step = matches!(
                    sc.steps.get(run.pc as usize).map(|s| &s.action),
                    Some(Action::Http(_))
                );
                let failed_request = if http_step {
                    match tx.last_outbox_of(run.id, run.pc).await? {
                        Some(row) if row.status == "failed" => tx.reset_outbox(row.id, now).await?,
                        _ => None,
                    }
                } else {
                    None
                };
                {
                    let entry =
                        json!({"step": run.pc, "result": "retried by an operator", "at": now});
                    steps::note(&mut run, entry);
                }
                match failed_request {
                    Some(row) => {
                        // The request goes out again; its response resumes the run.
                        run.status = RunStatus::Waiting;
                        run.updated_at = now;
                        tx.save_run(&run).await?;
                        after.jobs.push(OutboxJob {
                            row,
                            lane: format!("scenario:{}", run.scenario),
                        });
                    }
                    None => {
                        run.status = RunStatus::Running;
                        self.execute(tx, &mut run, &sc, after).await?;
                    }
                }
                Ok(json!({"run": id, "status": run.status}))
            }
            AdminOp::RetryOutbox(id) => {
                let Some(row) = tx.reset_outbox(*id, now).await? else {
                    return Ok(Err(match self.store.outbox(*id).await? {
                        None => AdminError::NotFound(format!("no outbox row {id}")),
                        Some(r) => AdminError::Conflict(format!(
                            "only failed requests can be retried; outbox row {id} is {}",
                            r.status
                        )),
                    }));
                };
                let mut lane = "outbox".to_string();
                if let (true, Some(run_id)) = (row.resume, row.run_id) {
                    if let Some(mut run) = tx.load_run(run_id).await? {
                        lane = format!("scenario:{}", run.scenario);
                        if run.status == RunStatus::Failed && Some(run.pc) == row.step {
                            run.status = RunStatus::Waiting;
                            run.error = None;
                            run.updated_at = now;
                            let entry = json!({"step": run.pc, "result": "request retried by an operator",
                                "outbox_id": id, "at": now});
                            steps::note(&mut run, entry);
                            tx.save_run(&run).await?;
                        }
                    }
                }
                after.jobs.push(OutboxJob { row, lane });
                Ok(json!({"outbox_id": id, "status": "pending"}))
            }
            AdminOp::CancelRun(id) => {
                let Some(run) = tx.load_run(*id).await? else {
                    return Ok(Err(AdminError::NotFound(format!("no run {id}"))));
                };
                if !run.status.is_active() {
                    return Ok(Err(AdminError::Conflict(format!(
                        "run {id} is {}, not active",
                        run.status.as_str()
                    ))));
                }
                self.cancel_run(tx, *id, "cancelled by an operator", now, after)
                    .await?;
                after.timers_changed = true;
                Ok(json!({"run": id, "status": "cancelled"}))
            }
            AdminOp::SetEnabled(scenario, on) => {
                let Some(sc) = self.cfg.scenario(scenario).cloned() else {
                    return Ok(Err(AdminError::NotFound(format!(
                        "no scenario '{scenario}'"
                    ))));
                };
                tx.set_enabled(scenario, *on, now).await?;
                after.enable.push((sc, *on, now));
                Ok(json!({"scenario": scenario, "enabled": on}))
            }
            AdminOp::SetGlobal(name, value) => {
                self.globals.insert(name.clone(), value.clone());
                tx.put_global(name, value, now).await?;
                Ok(json!({"name": name, "value": value}))
            }
            AdminOp::DeleteGlobal(name) => {
                if !tx.delete_global(name).await? {
                    return Ok(Err(AdminError::NotFound(format!(
                        "no global variable '{name}'"
                    ))));
                }
                self.globals.remove(name);
                Ok(json!({"name": name, "deleted": true}))
            }
            AdminOp::Start {
                scenario,
                events,
                test,
                key,
            } => {
                self.start_by_hand(tx, scenario, events, *test, key.as_deref(), after)
                    .await?
            }
        })
    }

    /// Each event is stored, then starts its run in this same transaction, so that the
    /// answer can name the runs (guards and limits apply as to any event).
    async fn start_by_hand(
        &mut self,
        tx: &mut dyn Tx,
        scenario: &str,
        events: &[Json],
        test: bool,
        key: Option<&str>,
        after: &mut After,
    ) -> Result<AdminResult, StoreError> {
        let Some(sc) = self.cfg.scenario(scenario).cloned() else {
            return Ok(Err(AdminError::NotFound(format!(
                "no scenario '{scenario}'"
            ))));
        };
        let max = self.cfg.gateway.max_fan_out as usize;
        if events.len() > max {
            return Ok(Err(AdminError::Invalid(format!(
                "{} events; max_fan_out is {max}",
                events.len()
            ))));
        }
        let mut runs = Vec::with_capacity(events.len());
        let mut items = Vec::with_capacity(events.len());
        for (index, data) in events.iter().enumerate() {
            let now = self.now();
            let ev = NewEvent {
                kind: MANUAL.into(),
                source: sc.id.clone(),
                // The same event at the same place under the same key: a repeat. (A form
                // sent again with another file is not.)
                dedupe_key: key.map(|k| {
                    use sha2::Digest;
                    let digest = sha2::Sha256::digest(data.to_string().as_bytes());
                    format!("start:{}:{k}:{index}:{}", sc.id, hex::encode(&digest[..8]))
                }),
                data: data.clone(),
                meta: json!({"test": test}),
                rejected: None,
                received_at: now,
            };
            let Some(id) = tx.insert_event(&ev).await? else {
                runs.push(Json::Null);
                items.push(json!({"index": index, "run": null, "started": false,
                    "why": "already started by an earlier request with the same key"}));
                continue;
            };
            let ev = super::EventItem::stored(id, ev);
            let outcome = self.start_run(tx, &sc, &ev, after).await?;
            tx.finish_event(id, "done", &json!([outcome.clone()]), self.now())
                .await?;
            let run = outcome["run"].as_i64();
            runs.push(json!(run));
            let mut item = json!({"index": index, "event_id": id, "run": run,
                "started": run.is_some()});
            if let Some(st) = outcome.get("status") {
                item["status"] = st.clone();
            }
            if run.is_none() {
                item["why"] = outcome["why"]
                    .as_str()
                    .or(outcome["error"].as_str())
                    .or(outcome["verdict"].as_str())
                    .map(String::from)
                    .unwrap_or_else(|| outcome.to_string())
                    .into();
            }
            items.push(item);
        }
        Ok(Ok(
            json!({"scenario": sc.id, "test": test, "runs": runs, "items": items}),
        ))
    }
}

/// The kind of event an operator's start stores.
pub const MANUAL: &str = "manual";

/// How a start by hand opens its run's journal; `test` also becomes `meta.test`.
pub(super) fn started_by_hand(test: bool, at: i64) -> Json {
    let result = if test {
        "started by hand (test)"
    } else {
        "started by hand"
    };
    json!({"action": "start", "result": result, "test": test, "at": at})
}

/// Whether a run was started by hand as a test (its journal opens so).
pub(super) fn test_run(journal: &[Json]) -> bool {
    journal
        .first()
        .is_some_and(|e| e["action"] == "start" && e["test"] == true)
}
