//! `call`: starts another scenario with a `call` event, one level deeper; the calling run
//! goes on without waiting for it. With `for_each`, one `call` event per item of a list (a
//! fan-out), bounded by `max_fan_out`: every child event is stored in the step's transaction
//! and handed to the engine's queue like any other event, so each child is a run of its own.

use minijinja::value::Value;
use serde_json::{json, Map, Value as Json};

use super::Flow;
use crate::config::CallSpec;
use crate::engine::{After, Engine, EventItem, Work};
use crate::store::{NewEvent, RunRow, StoreError, Tx};

/// Child event ids a fan-out notes in the calling run's journal (the broadcast view reads
/// them); a longer list is still started, and its count noted.
const NOTED_IDS: usize = 10_000;

impl Engine {
    pub(super) async fn start_call(
        &mut self,
        tx: &mut dyn Tx,
        run: &RunRow,
        c: &CallSpec,
        ctx: &Value,
        entry: &mut Json,
        after: &mut After,
    ) -> Result<Result<Flow, String>, StoreError> {
        let now = self.now();
        let max = self.cfg.gateway.max_call_depth as i64;
        if run.depth + 1 > max {
            return Ok(Err(format!("call depth limit of {max} reached")));
        }
        let mut vars = Map::new();
        for (k, v) in &c.vars {
            vars.insert(k.clone(), tryv!(v.render(ctx)));
        }
        let event = |data: Map<String, Json>| NewEvent {
            kind: "call".into(),
            source: c.scenario.clone(),
            dedupe_key: None,
            data: Json::Object(data),
            meta: json!({"depth": run.depth + 1, "parent_run": run.id}),
            rejected: None,
            received_at: now,
        };
        let Some((list, name)) = &c.for_each else {
            let ev = event(vars);
            if let Some(id) = tx.insert_event(&ev).await? {
                entry["event_id"] = json!(id);
                after.follow_up.push(Work::Event(EventItem::stored(id, ev)));
            }
            return Ok(Ok(Flow::Next));
        };
        let items = match tryv!(list.eval_json(ctx)) {
            Json::Array(items) => items,
            Json::Null => Vec::new(),
            other => {
                return Ok(Err(format!(
                    "for_each gave {}, not a list",
                    kind_of(&other)
                )))
            }
        };
        let limit = self.cfg.gateway.max_fan_out as usize;
        if items.len() > limit {
            return Ok(Err(format!(
                "for_each gave {} items; max_fan_out is {limit}",
                items.len()
            )));
        }
        let mut ids = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            let mut data = vars.clone();
            data.insert(name.clone(), item);
            data.insert("index".into(), json!(i));
            let ev = event(data);
            if let Some(id) = tx.insert_event(&ev).await? {
                ids.push(id);
                after.follow_up.push(Work::Event(EventItem::stored(id, ev)));
            }
        }
        entry["started"] = json!(ids.len());
        entry["result"] = json!(format!("started {} runs of {}", ids.len(), c.scenario));
        ids.truncate(NOTED_IDS);
        entry["event_ids"] = json!(ids);
        Ok(Ok(Flow::Next))
    }
}

fn kind_of(v: &Json) -> &'static str {
    match v {
        Json::Null => "nothing",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a text",
        Json::Array(_) => "a list",
        Json::Object(_) => "a map",
    }
}
