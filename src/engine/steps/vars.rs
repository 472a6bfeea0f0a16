//! `set` and `incr`: writes to run, subject and global variables. A write to a global takes
//! the globals' lock first, so that replicas never lose one another's writes.

use minijinja::value::Value;
use serde_json::{json, Map, Value as Json};

use super::{Flow, StepState};
use crate::config::{Assign, Scope, VarRef};
use crate::engine::Engine;
use crate::store::{RunRow, StoreError, Tx};

fn set_path(map: &mut Map<String, Json>, path: &[String], v: Json) {
    let (last, parents) = path.split_last().expect("paths are non-empty");
    let mut cur = map;
    for p in parents {
        let e = cur.entry(p.clone()).or_insert_with(|| json!({}));
        if !e.is_object() {
            *e = json!({});
        }
        cur = e.as_object_mut().expect("made an object");
    }
    cur.insert(last.clone(), v);
}

fn get_path<'a>(map: &'a Map<String, Json>, path: &[String]) -> Option<&'a Json> {
    let (first, rest) = path.split_first()?;
    let mut cur = map.get(first)?;
    for p in rest {
        cur = cur.get(p)?;
    }
    Some(cur)
}

impl Engine {
    pub(super) async fn start_set(
        &mut self,
        tx: &mut dyn Tx,
        run: &mut RunRow,
        st: &mut StepState,
        assigns: &[Assign],
        ctx: &Value,
        entry: &mut Json,
    ) -> Result<Result<Flow, String>, StoreError> {
        let now = self.now();
        let mut values = Vec::with_capacity(assigns.len());
        for a in assigns {
            values.push(tryv!(a.value.render(ctx)));
        }
        let mut shown = Map::new();
        for (a, v) in assigns.iter().zip(values) {
            shown.insert(a.target.display(), v.clone());
            self.assign(tx, run, st, &a.target, v, now).await?;
        }
        entry["set"] = Json::Object(shown);
        Ok(Ok(Flow::Next))
    }

    pub(super) async fn start_incr(
        &mut self,
        tx: &mut dyn Tx,
        run: &mut RunRow,
        st: &mut StepState,
        target: &VarRef,
        entry: &mut Json,
    ) -> Result<Result<Flow, String>, StoreError> {
        let now = self.now();
        let cur = match target.scope {
            crate::config::Scope::Run => get_path(&run.vars, &target.path),
            crate::config::Scope::Subject => get_path(&st.subject_vars, &target.path),
            crate::config::Scope::Global => get_path(&self.globals, &target.path),
        };
        let n = match cur {
            None | Some(Json::Null) => 0,
            Some(v) => tryv!(v
                .as_i64()
                .ok_or_else(|| format!("{} is not a whole number: {v}", target.display()))),
        };
        entry["set"] = json!({ target.display(): n + 1 });
        self.assign(tx, run, st, target, json!(n + 1), now).await?;
        Ok(Ok(Flow::Next))
    }

    async fn assign(
        &mut self,
        tx: &mut dyn Tx,
        run: &mut RunRow,
        st: &mut StepState,
        target: &VarRef,
        v: Json,
        now: i64,
    ) -> Result<(), StoreError> {
        match target.scope {
            Scope::Run => set_path(&mut run.vars, &target.path, v),
            Scope::Subject => {
                set_path(&mut st.subject_vars, &target.path, v);
                st.subject_dirty = true;
            }
            Scope::Global => {
                self.lock_globals(tx).await?;
                set_path(&mut self.globals, &target.path, v);
                let name = &target.path[0];
                let whole = self.globals.get(name).cloned().unwrap_or(Json::Null);
                tx.put_global(name, &whole, now).await?;
            }
        }
        Ok(())
    }

    /// Before the first write to a global in a batch: with replicas, lock the globals and
    /// read them as committed, so that an `incr` on two replicas never loses one.
    pub(super) async fn lock_globals(&mut self, tx: &mut dyn Tx) -> Result<(), StoreError> {
        if !self.globals_locked {
            if let Some(fresh) = tx.lock_globals().await? {
                self.globals = fresh;
            }
            self.globals_locked = true;
        }
        Ok(())
    }
}
