//! `call`: starts another scenario with a `call` event, one level deeper; the calling run
//! goes on without waiting for it.

use minijinja::value::Value;
use serde_json::{json, Map, Value as Json};

use super::Flow;
use crate::config::CallSpec;
use crate::engine::{After, Engine, EventItem, Work};
use crate::store::{NewEvent, RunRow, StoreError, Tx};

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
            after.follow_up.push(Work::Event(EventItem::stored(id, ev)));
        }
        Ok(Ok(Flow::Next))
    }
}
