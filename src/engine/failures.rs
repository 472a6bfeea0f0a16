//! Failure scenarios (`on = { failed = … }`) and the fallback for events that started no run
//! (`on = { unmatched = … }`). A failure is stored as a `failed` event in the transaction that
//! records it, deduplicated by a key of its own, and then processed like any other event.

use serde_json::{json, Value as Json};

use super::{After, Delivery, Engine, EventItem, Work};
use crate::config::{Trigger, UNMATCHED_KINDS};
use crate::store::{NewEvent, RunRow, RunStatus, StoreError, Tx};

/// The kind of the events that start failure scenarios.
pub const FAILED_KIND: &str = "failed";

/// Where and why a run or one of its sends failed.
struct Failure<'a> {
    kind: &'static str,
    run: &'a RunRow,
    step: Option<i64>,
    reason: &'a str,
    channel: Option<&'a str>,
    to: Option<&'a str>,
    outbox_id: Option<i64>,
    dedupe_key: String,
}

impl Engine {
    /// A run became `failed` in this transaction: the event for the failure scenarios that
    /// follow its scenario is stored, and noted in the run's journal. Call before the run is
    /// saved. A run of a failure scenario starts none (no loops); neither does a failure seen
    /// again (a repeated result, a retried batch): the key is the run and how many times it
    /// has failed, so a run an operator retried and that fails again is reported again.
    pub(super) async fn run_failed(
        &mut self,
        tx: &mut dyn Tx,
        run: &mut RunRow,
        after: &mut After,
    ) -> Result<(), StoreError> {
        if run.status != RunStatus::Failed || !self.follows_failures_of(tx, run).await? {
            return Ok(());
        }
        let failures = run
            .journal
            .iter()
            .filter(|e| e["result"] == "failed" && e.get("action").is_none())
            .count();
        // A failed request the run waited for is the failure's cause: its row is named.
        let outbox_id = run
            .journal
            .iter()
            .rev()
            .take(3)
            .find(|e| {
                e["step"] == run.pc && e["result"] == "failed" && e.get("outbox_id").is_some()
            })
            .and_then(|e| e["outbox_id"].as_i64());
        let reason = run.error.clone().unwrap_or_default();
        let f = Failure {
            kind: "run",
            run: &*run,
            step: Some(run.pc),
            reason: &reason,
            channel: None,
            to: None,
            outbox_id,
            dedupe_key: format!("failed:run:{}:{failures}", run.id),
        };
        if let Some(id) = self.store_failure(tx, f, after).await? {
            let now = self.now();
            super::steps::note(
                run,
                json!({"step": run.pc, "result": "failure reported", "event_id": id, "at": now}),
            );
        }
        Ok(())
    }

    /// A message a run's step sent could not be delivered, for good. A delivery that resumes
    /// its run (a request the run waits for) is reported through the run's own failure if it
    /// makes the run fail, so that one failure starts the failure scenarios once.
    pub(super) async fn send_failed(
        &mut self,
        tx: &mut dyn Tx,
        d: &Delivery,
        error: &str,
        after: &mut After,
    ) -> Result<(), StoreError> {
        let (Some((channel, to)), Some(run_id), false) = (&d.message, d.run_id, d.resume) else {
            return Ok(());
        };
        if !self.cfg.has_failure_scenarios() {
            return Ok(());
        }
        let Some(run) = tx.load_run(run_id).await? else {
            return Ok(());
        };
        if !self.follows_failures_of(tx, &run).await? {
            return Ok(());
        }
        let f = Failure {
            kind: "send",
            run: &run,
            step: d.step,
            reason: error,
            channel: Some(channel),
            to: Some(to),
            outbox_id: Some(d.outbox_id),
            dedupe_key: format!("failed:send:{}", d.outbox_id),
        };
        self.store_failure(tx, f, after).await?;
        Ok(())
    }

    /// Whether a failure of this run starts failure scenarios: some follow its scenario, and
    /// it is neither a run of a failure scenario nor one such a run started through `call`
    /// (at any depth), so that a failure scenario never leads to itself.
    async fn follows_failures_of(&self, tx: &mut dyn Tx, run: &RunRow) -> Result<bool, StoreError> {
        if self.is_failure_scenario(&run.scenario)
            || self
                .cfg
                .scenarios_for_failure(&run.scenario)
                .next()
                .is_none()
        {
            return Ok(false);
        }
        // Up the chain of calls: each event names the run that called, one level up.
        let mut event = run.event_id.filter(|_| run.depth > 0);
        for _ in 0..=self.cfg.gateway.max_call_depth {
            let Some(id) = event else { break };
            let Some((kind, meta)) = tx.event_origin(id).await? else {
                break;
            };
            if kind == FAILED_KIND {
                return Ok(false);
            }
            let Some(parent) = meta["parent_run"].as_i64() else {
                break;
            };
            let Some(caller) = tx.load_run(parent).await? else {
                break;
            };
            if self.is_failure_scenario(&caller.scenario) {
                return Ok(false);
            }
            event = caller.event_id.filter(|_| caller.depth > 0);
        }
        Ok(true)
    }

    fn is_failure_scenario(&self, id: &str) -> bool {
        self.cfg
            .scenario(id)
            .is_some_and(|sc| matches!(sc.trigger, Trigger::Failed(_)))
    }

    async fn store_failure(
        &mut self,
        tx: &mut dyn Tx,
        f: Failure<'_>,
        after: &mut After,
    ) -> Result<Option<i64>, StoreError> {
        let run = f.run;
        // The step as the run's own version has it.
        let sc = match self.live.scenario(&run.scenario, run.version.as_deref()) {
            crate::config::live::Version::Found(sc) => Some(sc),
            _ => None,
        };
        let at = |i: i64| sc.as_ref().and_then(|sc| sc.steps.get(i.max(0) as usize));
        let step = f.step.map(|i| {
            let label = at(i).and_then(|s| s.label.clone());
            json!({"index": i, "label": label})
        });
        let action = f
            .step
            .and_then(|i| Some(at(i)?.action.name()))
            .map(|a| a.to_string());
        let ev = NewEvent {
            kind: FAILED_KIND.into(),
            source: run.scenario.clone(),
            dedupe_key: Some(f.dedupe_key),
            data: json!({
                "kind": f.kind, "run": run.id, "scenario": run.scenario, "subject": run.subject,
                "step": step, "action": action, "reason": f.reason, "channel": f.channel,
                "to": f.to, "outbox_id": f.outbox_id, "event": run.event,
            }),
            meta: json!({"depth": run.depth, "failed_run": run.id}),
            rejected: None,
            received_at: self.now(),
        };
        let id = tx.insert_event(&ev).await?;
        if let Some(id) = id {
            after.follow_up.push(Work::Event(EventItem::stored(id, ev)));
        }
        Ok(id)
    }

    /// After an event's listeners had their say (`outcome[listened..]`): if none started a
    /// run (a limit refusing one counts as started), the fallback scenarios for its kind
    /// start with its data and `unmatched = {kind, source, event_id}`.
    pub(super) async fn fallback(
        &mut self,
        tx: &mut dyn Tx,
        ev: &EventItem,
        listened: usize,
        outcome: &mut Vec<Json>,
        after: &mut After,
    ) -> Result<(), StoreError> {
        if !UNMATCHED_KINDS.contains(&ev.kind.as_str()) {
            return Ok(());
        }
        let matched = outcome
            .get(listened..)
            .unwrap_or_default()
            .iter()
            .any(|o| o.get("run").is_some() || o["verdict"] == "limited");
        if matched {
            return Ok(());
        }
        let fallbacks: Vec<_> = self
            .cfg
            .scenarios_for_unmatched(&ev.kind)
            .cloned()
            .collect();
        if fallbacks.is_empty() {
            return Ok(());
        }
        let unmatched = json!({"kind": ev.kind, "source": ev.source, "event_id": ev.id});
        let mut data = match &*ev.data {
            Json::Object(m) => Json::Object(m.clone()),
            other => json!({"data": other}),
        };
        data["unmatched"] = unmatched;
        let item = EventItem {
            data: std::sync::Arc::new(data),
            ..ev.clone()
        };
        for sc in fallbacks {
            let started = self.start_run(tx, &sc, &item, after).await?;
            outcome
                .push(json!({"verdict": "unmatched: went to the fallback", "fallback": started}));
        }
        Ok(())
    }
}

/// The channel and recipient of a run's message whose delivery failed for good; `None` for
/// anything else (requests, edits, click answers, a delivery that went through).
pub(super) fn failed_message(
    row: &crate::store::OutboxRow,
    result: &super::DeliveryResult,
) -> Option<(String, String)> {
    let failed = matches!(result, super::DeliveryResult::Failed { .. });
    if !failed || row.run_id.is_none() || row.kind != "send" || row.request["op"] != "send" {
        return None;
    }
    let to = row.request["to"].as_str().unwrap_or_default();
    Some((row.channel.clone(), to.to_string()))
}
