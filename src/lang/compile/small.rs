//! The small steps: `set`, `incr`, `call`, `sleep` and `cancel`.

use std::collections::BTreeMap;
use std::ops::Range;

use super::cx::FileCx;
use super::values::{literal_or_expr, parse_var};
use crate::lang::expr::Templates;
use crate::lang::model::*;
use crate::lang::raw::{self, Sp};

pub(super) fn compile_set(
    set: &Sp<BTreeMap<String, Sp<serde_json::Value>>>,
    cx: &mut FileCx,
    t: &Templates,
) -> Option<Action> {
    let mut assigns = Vec::new();
    for (k, v) in set.get() {
        let tgt = match parse_var(k) {
            Ok(t) => t,
            Err(e) => {
                cx.err(v.span(), e);
                continue;
            }
        };
        if let Some(value) = literal_or_expr(cx, t, v) {
            assigns.push(Assign { target: tgt, value });
        }
    }
    Some(Action::Set(assigns))
}

pub(super) fn compile_incr(i: &Sp<String>, cx: &mut FileCx) -> Option<Action> {
    match parse_var(i.get()) {
        Ok(v) => Some(Action::Incr(v)),
        Err(e) => {
            cx.err(i.span(), e);
            None
        }
    }
}

/// `call` names another scenario: `scenario_refs` collects it to check once all are known.
pub(super) fn compile_call(
    c: &Sp<raw::CallDef>,
    cx: &mut FileCx,
    t: &Templates,
    scenario_refs: &mut Vec<(String, Range<usize>)>,
) -> Option<Action> {
    let c = c.get();
    scenario_refs.push((c.scenario.get().clone(), c.scenario.span()));
    let vars = c
        .vars
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), literal_or_expr(cx, t, v)?)))
        .collect();
    let item = match &c.item_name {
        Some(n) if c.for_each.is_none() => {
            cx.err(
                n.span(),
                "`as` names the item of `for_each`: add `for_each`",
            );
            None
        }
        Some(n) if !is_name(n.get()) || n.get() == "index" => {
            cx.err(
                n.span(),
                format!(
                    "`as` must be a plain name (letters, digits, `_`) other than `index`, not '{}'",
                    n.get()
                ),
            );
            None
        }
        Some(n) => Some(n.get().clone()),
        None => Some("item".to_string()),
    };
    if let (Some(_), Some(name)) = (&c.for_each, &item) {
        for (k, v) in &c.vars {
            if k == name || k == "index" {
                cx.err(
                    v.span(),
                    format!(
                        "`vars.{k}` would be replaced by the fan-out's `{k}`: name it differently"
                    ),
                );
            }
        }
    }
    let for_each = match &c.for_each {
        Some(e) => Some((cx.expr(t, e)?, item?)),
        None => None,
    };
    Some(Action::Call(CallSpec {
        scenario: c.scenario.get().clone(),
        vars,
        for_each,
    }))
}

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

pub(super) fn compile_sleep(
    s: &Sp<raw::SleepDef>,
    sc: &raw::ScenarioFile,
    cx: &mut FileCx,
    t: &Templates,
) -> Option<Action> {
    let sd = s.get();
    let at = sd.at.as_ref().and_then(|a| super::when::time_of_day(cx, a));
    let time = match (&sd.duration, &sd.until, &sd.at) {
        (Some(d), None, None) => cx.duration(d).map(SleepTime::For),
        (None, Some(u), _) => cx.expr(t, u).map(SleepTime::Until),
        (None, None, Some(_)) => Some(SleepTime::Next),
        (Some(_), _, Some(a)) => {
            cx.err(a.span(), "`at` goes with `until`, or alone; not with `for`");
            None
        }
        _ => {
            cx.err(
                s.span(),
                "sleep needs exactly one of `for` or `until` (or `at` alone)",
            );
            None
        }
    };
    let tz = match &sd.tz {
        Some(z) if sd.duration.is_some() => {
            cx.err(z.span(), "`tz` goes with `until` or `at`");
            None
        }
        Some(z) => super::when::zone_tmpl(cx, t, z),
        None => None,
    };
    let key = sd.key.as_ref().and_then(|k| cx.tmpl(t, k));
    if sc.subject.is_none() && sd.key.is_some() {
        cx.err(s.span(), "a sleep `key` replaces pending sleeps of the same subject: the scenario needs a `subject`");
    }
    time.map(|time| Action::Sleep(SleepSpec { time, key, at, tz }))
}

/// `cancel` may name another scenario: `scenario_refs` collects it to check once all are known.
pub(super) fn compile_cancel(
    c: &Sp<raw::CancelDef>,
    cx: &mut FileCx,
    t: &Templates,
    scenario_refs: &mut Vec<(String, Range<usize>)>,
) -> Option<Action> {
    let c = c.get();
    if let Some(s) = &c.scenario {
        scenario_refs.push((s.get().clone(), s.span()));
    }
    Some(Action::Cancel(CancelSpec {
        scenario: c.scenario.as_ref().map(|s| s.get().clone()),
        subject: c.subject.as_ref().and_then(|s| cx.tmpl(t, s)),
        key: c.key.as_ref().and_then(|k| cx.tmpl(t, k)),
    }))
}

#[cfg(test)]
mod tests {
    use super::super::testing::errors;

    fn call(def: &str) -> Vec<String> {
        errors(&format!(
            "id = \"a\"\non = {{ call = true }}\n[[step]]\ncall = {{ scenario = \"a\", {def} }}\n"
        ))
    }

    #[test]
    fn a_fan_out_names_its_item_plainly() {
        assert!(call("for_each = \"event.list\", as = \"contact\"").is_empty());
        assert!(call("for_each = \"event.list\"").is_empty());
        let errs = call("for_each = \"event.list\", as = \"index\"");
        assert!(
            errs[0].starts_with("4:56: `as` must be a plain name"),
            "{errs:?}"
        );
        let errs = call("as = \"contact\"");
        assert!(errs[0].contains("add `for_each`"), "{errs:?}");
        let errs = call("for_each = \"event.list +\"");
        assert!(errs[0].contains("bad expression"), "{errs:?}");
    }
}
