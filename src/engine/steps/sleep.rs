//! `sleep` and `cancel`: a sleeping run is a durable timer (a keyed sleep replaces the
//! subject's earlier one); `cancel` ends other parked runs of a scenario and subject.
//! A yearly trigger's run is such a sleep before its first step.

use std::sync::Arc;

use minijinja::value::Value;
use serde_json::{json, Value as Json};

use super::{fail, note, Ctx, Flow};
use crate::config::{CancelSpec, Scenario, SleepSpec, SleepTime, Yearly};
use crate::engine::{After, Engine};
use crate::lang::dates::{self, When};
use crate::store::{NewTimer, RunRow, RunStatus, StoreError, TimerRow, Tx};

/// The key of a yearly run's timer: a newer event for the subject replaces it.
const YEARLY_KEY: &str = "yearly";

/// When a sleep until `w` ends: with `at`, that local time on `w`'s date in `tz`; without
/// it, `w` itself (read in `tz` if it names no zone).
fn sleep_until(w: &When, at: Option<chrono::NaiveTime>, tz: chrono_tz::Tz) -> Result<i64, String> {
    let Some(at) = at else {
        return w.timestamp_ms(tz);
    };
    let day = match w {
        When::Floating { local, .. } => local.date(),
        When::Zoned { .. } => w.in_zone(tz)?.local().date(),
    };
    dates::at_local(day, at, tz)
        .map(|d| d.timestamp_millis())
        .ok_or_else(|| format!("{day} at {at} does not exist in {tz}"))
}

/// The journal's words for a sleep: when it ends in the zone, and whether that is past.
pub(in crate::engine) fn sleeping_note(due: i64, now: i64, tz: chrono_tz::Tz, why: &str) -> String {
    let mut s = format!("sleeping until {}{why}", dates::rfc3339_in(due, tz));
    if due <= now {
        s.push_str(": that time is past, waking at once");
    }
    s
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
        let tz = match &s.tz {
            Some(t) => tryv!(dates::zone(&tryv!(t.render(ctx)))),
            None => self.cfg.gateway.timezone,
        };
        let due = match &s.time {
            SleepTime::For(d) => now + d.as_millis() as i64,
            SleepTime::Until(e) => {
                let v = tryv!(e.eval(ctx));
                let w = tryv!(When::from_value(&v, None).map_err(|e| format!("sleep until: {e}")));
                tryv!(sleep_until(&w, s.at, tz))
            }
            SleepTime::Next => {
                let at = s.at.unwrap_or_default();
                tryv!(dates::next_time_of_day(now, at, tz)
                    .map(|d| d.timestamp_millis())
                    .ok_or("sleep: the time is out of range"))
            }
        };
        let key = match &s.key {
            Some(k) => Some(tryv!(k.render(ctx))),
            None => None,
        };
        if let Some(k) = &key {
            entry["key"] = json!(k);
        }
        self.park_until(tx, run, sc, key, due, after).await?;
        entry["until"] = json!(crate::clock::rfc3339(due));
        entry["result"] = json!("sleeping");
        entry["note"] = json!(sleeping_note(due, now, tz, ""));
        if s.at.is_some() || s.tz.is_some() {
            entry["tz"] = json!(tz.name());
        }
        run.status = RunStatus::Sleeping;
        Ok(Ok(Flow::Park))
    }

    /// The run's sleep timer; a keyed one replaces (cancels) the subject's runs sleeping
    /// under the same key.
    async fn park_until(
        &mut self,
        tx: &mut dyn Tx,
        run: &RunRow,
        sc: &Scenario,
        key: Option<String>,
        due: i64,
        after: &mut After,
    ) -> Result<(), StoreError> {
        if let Some(k) = &key {
            let replaced = tx
                .take_keyed_timers(&sc.id, run.subject.as_deref(), k)
                .await?;
            let (why, now) = (format!("replaced by run {}", run.id), self.now());
            for other in replaced.into_iter().filter(|r| *r != run.id) {
                self.cancel_run(tx, other, &why, now, after).await?;
            }
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
        Ok(())
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

impl Engine {
    /// A new run of a yearly scenario sleeps until the date's next anniversary instead of
    /// running its steps, replacing the subject's earlier sleeping run.
    pub(in crate::engine) async fn start_yearly(
        &mut self,
        tx: &mut dyn Tx,
        mut run: RunRow,
        sc: &Arc<Scenario>,
        y: &Yearly,
        ctx: &Value,
        after: &mut After,
    ) -> Result<Json, StoreError> {
        let now = self.now();
        if let Err(e) = self
            .park_yearly(tx, &mut run, sc, y, ctx, now, after)
            .await?
        {
            fail(&mut run, &format!("yearly: {e}"), now);
            self.run_failed(tx, &mut run, after).await?;
        }
        tx.save_run(&run).await?;
        after.runs.push((run.id, run.scenario.clone(), run.status));
        Ok(json!({"scenario": sc.id, "subject": run.subject, "run": run.id, "status": run.status}))
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "the interpreter's working set for one step"
    )]
    async fn park_yearly(
        &mut self,
        tx: &mut dyn Tx,
        run: &mut RunRow,
        sc: &Arc<Scenario>,
        y: &Yearly,
        ctx: &Value,
        after_ms: i64,
        after: &mut After,
    ) -> Result<Result<(), String>, StoreError> {
        let now = self.now();
        let tz = match &y.tz {
            Some(t) => tryv!(dates::zone(&tryv!(t.render(ctx)))),
            None => self.cfg.gateway.timezone,
        };
        let v = tryv!(y.date.eval(ctx));
        let date = tryv!(When::from_value(&v, None)).local().date();
        let due = tryv!(dates::next_anniversary(date, y.at, tz, after_ms)
            .map(|d| d.timestamp_millis())
            .ok_or_else(|| format!("{date} has no anniversary in range")));
        self.park_until(tx, run, sc, Some(YEARLY_KEY.into()), due, after)
            .await?;
        // Before the first step: waking goes to step 0.
        run.pc = -1;
        run.status = RunStatus::Sleeping;
        note(
            run,
            json!({"step": 0, "action": "sleep", "result": "sleeping", "key": YEARLY_KEY,
                "until": crate::clock::rfc3339(due), "tz": tz.name(), "date": date.to_string(),
                "note": sleeping_note(due, now, tz, " (yearly)"), "at": now}),
        );
        Ok(Ok(()))
    }

    /// A yearly run's day came: next year's run is scheduled first (whatever this one does),
    /// then this one runs its steps, unless the scenario is disabled. `false`: it does not.
    pub(in crate::engine) async fn yearly_woke(
        &mut self,
        tx: &mut dyn Tx,
        run: &mut RunRow,
        sc: &Arc<Scenario>,
        t: &TimerRow,
        after: &mut After,
    ) -> Result<bool, StoreError> {
        if sc.yearly.is_none() {
            return Ok(true);
        }
        let now = self.now();
        // Next year's run follows the scenario as it is configured now (this run may follow
        // an earlier version); the operator's switch is the current one's.
        let current = self.cfg.scenario(&run.scenario).cloned();
        let enabled = current.as_ref().is_none_or(|c| c.enabled());
        let Some(nsc) = current.filter(|c| c.yearly.is_some()) else {
            note(
                run,
                json!({"step": 0, "action": "sleep", "result": "woke", "key": YEARLY_KEY,
                    "next": "no next year's run: the scenario is no longer configured as yearly",
                    "at": now}),
            );
            run.pc = 0;
            return Ok(true);
        };
        let Some(y) = &nsc.yearly else {
            return Ok(true);
        };
        let mut next = RunRow {
            id: tx.new_run_id().await?,
            status: RunStatus::Sleeping,
            pc: -1,
            vars: Default::default(),
            journal: Vec::new(),
            error: None,
            created_at: now,
            updated_at: now,
            // Next year's run follows the scenario as it is then configured.
            version: self.cfg.version_of(&run.scenario).map(str::to_string),
            ..run.clone()
        };
        let empty = Default::default();
        let ctx = Ctx {
            event: &run.event,
            run: &empty,
            subject: &empty,
            global: &self.globals,
            meta: json!({"run_id": next.id, "event_id": run.event_id, "scenario": nsc.id,
                "subject": run.subject, "now": crate::clock::rfc3339(now), "now_ms": now,
                "public_url": self.public_url}),
        }
        .value();
        let parked = self
            .park_yearly(tx, &mut next, &nsc, y, &ctx, t.due_at.max(now), after)
            .await?;
        let next_year = match parked {
            Ok(()) => {
                tx.save_run(&next).await?;
                after
                    .runs
                    .push((next.id, next.scenario.clone(), next.status));
                format!("next year's run is {}", next.id)
            }
            Err(e) => format!("next year's run could not be scheduled: {e}"),
        };
        run.updated_at = now;
        if !enabled {
            note(
                run,
                json!({"step": 0, "action": "sleep", "result": "skipped",
                    "why": "the scenario is disabled", "next": next_year, "at": now}),
            );
            run.status = RunStatus::Cancelled;
            tx.save_run(run).await?;
            after.runs.push((run.id, run.scenario.clone(), run.status));
            return Ok(false);
        }
        note(
            run,
            json!({"step": 0, "action": "sleep", "result": "woke", "key": YEARLY_KEY,
                "next": next_year, "at": now}),
        );
        run.pc = 0;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleeps_end_on_the_date_at_the_local_time() {
        let tz = dates::zone("Europe/Warsaw").unwrap();
        let at = dates::parse_hhmm("10:00").ok();
        let ms = |s: &str| {
            chrono::DateTime::parse_from_rfc3339(s)
                .unwrap()
                .timestamp_millis()
        };
        let day = When::parse_str("2026-03-29", None).unwrap();
        assert_eq!(
            sleep_until(&day, at, tz).unwrap(),
            ms("2026-03-29T08:00:00Z")
        );
        // Late on the 29th in New York is already the 30th in Warsaw.
        let late = When::parse_str("2026-03-29T20:00:00-04:00", None).unwrap();
        assert_eq!(
            sleep_until(&late, at, tz).unwrap(),
            ms("2026-03-30T08:00:00Z")
        );
        assert_eq!(
            sleep_until(&day, None, tz).unwrap(),
            ms("2026-03-28T23:00:00Z")
        );
        assert_eq!(
            sleeping_note(ms("2026-03-29T08:00:00Z"), 0, tz, ""),
            "sleeping until 2026-03-29T10:00:00+02:00"
        );
        assert!(sleeping_note(0, 1, tz, "").ends_with("waking at once"));
    }
}
