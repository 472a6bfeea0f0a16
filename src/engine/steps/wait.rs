//! `wait`: the run parks until a webhook with its key arrives (and its condition holds), or
//! until its timeout. The answer is saved with `timed_out: false`, a timeout with `true`.

use std::sync::Arc;

use minijinja::value::Value;
use serde_json::{json, Map, Value as Json};

use super::{note, timed_out, Ctx, Flow};
use crate::config::{Action, Scenario, WaitSpec};
use crate::engine::{After, Engine, EventItem};
use crate::store::{NewWait, RunRow, RunStatus, StoreError, Tx};

impl Engine {
    #[expect(
        clippy::too_many_arguments,
        reason = "the interpreter's working set for one step"
    )]
    pub(super) async fn start_wait(
        &mut self,
        tx: &mut dyn Tx,
        run: &mut RunRow,
        sc: &Arc<Scenario>,
        w: &WaitSpec,
        pc: usize,
        ctx: &Value,
        entry: &mut Json,
        after: &mut After,
    ) -> Result<Result<Flow, String>, StoreError> {
        let now = self.now();
        let key = match (&w.key, &run.subject) {
            (Some(k), _) => tryv!(k.render(ctx)),
            (None, Some(s)) => s.clone(),
            (None, None) => return Ok(Err("wait has no key and the run no subject".into())),
        };
        tx.insert_wait(&NewWait {
            run_id: run.id,
            hook: w.hook.clone(),
            scenario: sc.id.clone(),
            step: pc as i64,
            match_key: key.clone(),
            now,
        })
        .await?;
        if let Some(due) = self.arm_timeout(tx, run, sc, w.timeout, after).await? {
            entry["until"] = json!(crate::clock::rfc3339(due));
        }
        entry["wait"] = json!({"webhook": w.hook, "key": key});
        entry["result"] = json!("waiting");
        run.status = RunStatus::Waiting;
        Ok(Ok(Flow::Park))
    }

    /// Offers a webhook event to runs waiting for it. True when a run took it.
    pub(in crate::engine) async fn answer_wait(
        &mut self,
        tx: &mut dyn Tx,
        ev: &EventItem,
        outcome: &mut Vec<Json>,
        after: &mut After,
    ) -> Result<bool, StoreError> {
        // Runs that started on an older version of their scenario wait where it says.
        let mut waits: Vec<(Arc<Scenario>, usize)> = self
            .cfg
            .waits_for_hook(&ev.source)
            .map(|(sc, j)| (sc.clone(), j))
            .collect();
        for sc in self.live.older() {
            for (j, st) in sc.steps.iter().enumerate() {
                if matches!(&st.action, Action::Wait(w) if w.hook == ev.source) {
                    waits.push((sc.clone(), j));
                }
            }
        }
        for (sc, step) in &waits {
            let (sc, step) = (sc, *step);
            let Action::Wait(w) = &sc.steps[step].action else {
                continue;
            };
            let ctx = Ctx {
                event: &ev.data,
                run: &Map::new(),
                subject: &Map::new(),
                global: &self.globals,
                meta: json!({"event_id": ev.id, "hook": ev.source}),
            }
            .value();
            let key = match w.match_key.render(&ctx) {
                Ok(k) => k,
                Err(e) => {
                    outcome.push(json!({"scenario": sc.id, "wait": step, "error": e.0}));
                    continue;
                }
            };
            for run_id in tx.find_waits(&ev.source, &sc.id, step as i64, &key).await? {
                let Some(mut run) = tx.load_run(run_id).await? else {
                    continue;
                };
                // Another version of the scenario may wait at the same step.
                if !self.live.is_version(sc, run.version.as_deref()) {
                    continue;
                }
                // The run is read under its lock: another replica may have resumed it
                // between finding the wait and taking the lock.
                if run.status != RunStatus::Waiting || run.pc != step as i64 {
                    outcome.push(json!({"scenario": sc.id, "run": run_id,
                        "verdict": "no waiting run: answered by another event"}));
                    continue;
                }
                if let Some(when) = &w.when {
                    let subject_vars = Map::new();
                    let c = Ctx {
                        event: &ev.data,
                        run: &run.vars,
                        subject: &subject_vars,
                        global: &self.globals,
                        meta: json!({"event_id": ev.id, "run_id": run.id}),
                    }
                    .value();
                    match when.truthy(&c) {
                        Ok(true) => {}
                        Ok(false) => {
                            outcome.push(json!({"scenario": sc.id, "run": run_id,
                                "verdict": "wait condition false", "if": when.src, "seen": when.seen(&c)}));
                            continue;
                        }
                        Err(e) => {
                            outcome.push(json!({"scenario": sc.id, "run": run_id, "error": e.0}));
                            continue;
                        }
                    }
                }
                self.resume_wait(tx, &mut run, sc, &w.save, &ev.data, Some(ev.id), after)
                    .await?;
                outcome.push(
                    json!({"scenario": sc.id, "run": run_id, "verdict": "answered a waiting run"}),
                );
                return Ok(true);
            }
        }
        Ok(false)
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "the run, its step and the answer"
    )]
    async fn resume_wait(
        &mut self,
        tx: &mut dyn Tx,
        run: &mut RunRow,
        sc: &Arc<Scenario>,
        save: &str,
        data: &Json,
        event_id: Option<i64>,
        after: &mut After,
    ) -> Result<(), StoreError> {
        tx.clear_parks(run.id).await?;
        after.timers_changed = true;
        run.vars.insert(
            save.to_string(),
            json!({"event": data, "event_id": event_id, "timed_out": false}),
        );
        note(
            run,
            json!({"step": run.pc, "action": "wait", "result": "answered",
            "event_id": event_id, "at": self.now()}),
        );
        run.pc += 1;
        run.status = RunStatus::Running;
        self.execute(tx, run, sc, after).await
    }

    /// Answers a waiting run directly with `data` (dry runs).
    pub(in crate::engine) async fn on_answer(
        &mut self,
        tx: &mut dyn Tx,
        run_id: i64,
        data: &Json,
        after: &mut After,
    ) -> Result<(), StoreError> {
        let Some(mut run) = tx.load_run(run_id).await? else {
            return Ok(());
        };
        let sc = match self.scenario_of(tx, &run).await? {
            Ok(sc) => sc,
            Err(why) => return self.fail_unavailable(tx, run, &why, after).await,
        };
        let Some(Action::Wait(w)) = sc.steps.get(run.pc as usize).map(|s| &s.action) else {
            return Ok(());
        };
        if run.status != RunStatus::Waiting {
            return Ok(());
        }
        let save = w.save.clone();
        self.resume_wait(tx, &mut run, &sc, &save, data, None, after)
            .await
    }

    /// The wait's timeout: the run goes on at `on_timeout`, else at the next step.
    pub(in crate::engine) fn wait_timed_out(&self, run: &mut RunRow, w: &WaitSpec, now: i64) {
        timed_out(run, "wait", w.save.clone(), w.on_timeout, now);
    }
}
