//! `sleep` and `cancel`: a sleeping run is a durable timer (a keyed sleep replaces the
//! subject's earlier one); `cancel` ends other parked runs of a scenario and subject.

use std::sync::Arc;

use minijinja::value::Value;
use serde_json::{json, Value as Json};

use super::{note, Flow};
use crate::config::{CancelSpec, Scenario, SleepSpec, SleepTime};
use crate::engine::{After, Engine};
use crate::store::{NewTimer, RunRow, RunStatus, StoreError, Tx};

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

impl Engine {
    #[expect(
        clippy::too_many_arguments,
        reason = "the interpreter's working set for one step"
    )]
    pub(super) async fn start_sleep(
        &mut self,
        tx: &mut dyn Tx,
        run: &mut RunRow,
        sc: &Arc<Scenario>,
        s: &SleepSpec,
        ctx: &Value,
        entry: &mut Json,
        after: &mut After,
    ) -> Result<Result<Flow, String>, StoreError> {
        let now = self.now();
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
                self.cancel_run(
                    tx,
                    other,
                    &format!("replaced by run {}", run.id),
                    now,
                    after,
                )
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
        Ok(Ok(Flow::Park))
    }

    /// A sleeping run's timer fired: it goes on at the next step.
    pub(in crate::engine) fn sleep_woke(&self, run: &mut RunRow, now: i64) {
        {
            let entry = json!({"step": run.pc, "action": "sleep", "result": "woke", "at": now});
            note(run, entry);
        }
        run.pc += 1;
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "the interpreter's working set for one step"
    )]
    pub(super) async fn start_cancel(
        &mut self,
        tx: &mut dyn Tx,
        run: &RunRow,
        sc: &Arc<Scenario>,
        c: &CancelSpec,
        ctx: &Value,
        entry: &mut Json,
        after: &mut After,
    ) -> Result<Result<Flow, String>, StoreError> {
        let now = self.now();
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
            self.cancel_run(
                tx,
                other,
                &format!("cancelled by run {}", run.id),
                now,
                after,
            )
            .await?;
            cancelled.push(other);
        }
        after.timers_changed = true;
        entry["cancelled"] = json!(cancelled);
        Ok(Ok(Flow::Next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_from_text_and_numbers() {
        assert_eq!(parse_time(&json!("1970-01-01T00:00:10Z")), Some(10_000));
        assert_eq!(parse_time(&json!(10)), Some(10_000));
        assert_eq!(parse_time(&json!("soon")), None);
    }
}
