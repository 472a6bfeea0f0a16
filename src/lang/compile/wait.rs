//! `wait` steps: park a run until a matching webhook arrives or the timeout passes.

use std::collections::BTreeMap;

use super::cx::FileCx;
use super::values::var_name;
use crate::lang::expr::Templates;
use crate::lang::model::*;
use crate::lang::raw::{self, Sp};

pub(super) fn compile_wait(
    w: &Sp<raw::WaitDef>,
    branches: &BTreeMap<String, Sp<String>>,
    sc: &raw::ScenarioFile,
    cx: &mut FileCx,
    t: &Templates,
    target: &dyn Fn(&mut FileCx, &Sp<String>) -> Option<usize>,
) -> Option<WaitSpec> {
    let wd = w.get();
    let same_hook = sc
        .on
        .get()
        .webhook
        .as_ref()
        .is_some_and(|h| h.get() == wd.webhook.get());
    let match_key = match (
        &wd.match_key,
        same_hook.then_some(()).and(sc.subject.as_ref()),
    ) {
        (Some(m), _) => cx.tmpl(t, m),
        (None, Some(subject)) => cx.tmpl(t, subject),
        (None, None) => {
            cx.err(
                w.span(),
                "wait needs `match`: a template over the incoming event giving the key to compare with this run's key",
            );
            None
        }
    };
    if wd.key.is_none() && sc.subject.is_none() {
        cx.err(
            w.span(),
            "wait needs `key` (a template over the run) when the scenario has no `subject`",
        );
    }
    let mut on_timeout = None;
    for (k, l) in branches {
        if k == "timeout" {
            on_timeout = target(cx, l);
        } else {
            cx.err(l.span(), format!("unknown wait branch '{k}' (use timeout)"));
        }
    }
    if on_timeout.is_some() && wd.timeout.is_none() {
        cx.err(w.span(), "branch.timeout needs a `timeout` on the wait");
    }
    Some(WaitSpec {
        hook: wd.webhook.get().clone(),
        match_key: match_key?,
        key: wd.key.as_ref().and_then(|k| cx.tmpl(t, k)),
        when: wd.when.as_ref().and_then(|e| cx.expr(t, e)),
        timeout: wd.timeout.as_ref().and_then(|d| cx.duration(d)),
        save: var_name(cx, wd.save.as_ref(), "reply")?,
        on_timeout,
    })
}
