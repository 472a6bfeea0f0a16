//! A test's expectations against what its run did.

use serde_json::Value as Json;

use super::{Positions, Seen};
use crate::config::Position;
use crate::lang::raw::TestDef;
use crate::store::RunRow;

/// A run variable by dotted path.
fn var<'a>(run: &'a RunRow, path: &str) -> Option<&'a Json> {
    let mut parts = path.split('.');
    let mut v = run.vars.get(parts.next()?)?;
    for p in parts {
        v = match v {
            Json::Object(m) => m.get(p)?,
            Json::Array(a) => a.get(p.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(v)
}

pub(super) fn check(
    def: &TestDef,
    run: Option<&RunRow>,
    seen: &Seen,
    pos: &Positions,
    failures: &mut Vec<(Position, String)>,
) {
    let e = &def.expect;
    let status = run.map(|r| r.status.as_str()).unwrap_or("not started");
    if let Some(want) = &e.status {
        if want.get() != status {
            let why = run
                .and_then(|r| r.error.clone())
                .map(|e| format!(" ({e})"))
                .unwrap_or_default();
            failures.push((
                pos.at(want.span().start),
                format!("status: expected {}, got {status}{why}", want.get()),
            ));
        }
    }
    let Some(run) = run else {
        return;
    };
    if let Some(want) = &e.error {
        let got = run.error.clone().unwrap_or_default();
        if !got.contains(want.get().as_str()) {
            failures.push((
                pos.at(want.span().start),
                format!(
                    "error: expected one containing {:?}, got {got:?}",
                    want.get()
                ),
            ));
        }
    }
    // Labels, as a subsequence of those the run passed.
    let passed: Vec<&str> = run
        .journal
        .iter()
        .filter_map(|j| j["label"].as_str())
        .collect();
    let mut rest = passed.iter();
    for l in &e.labels {
        if !rest.any(|p| p == l.get()) {
            failures.push((
                pos.at(l.span().start),
                format!(
                    "labels: expected to pass {:?} (in this order), passed {passed:?}",
                    l.get()
                ),
            ));
            break;
        }
    }
    for (path, want) in &e.vars {
        let got = var(run, path);
        if got != Some(want.get()) {
            failures.push((
                pos.at(want.span().start),
                format!(
                    "run.{path}: expected {}, got {}",
                    want.get(),
                    got.map(|g| g.to_string())
                        .unwrap_or_else(|| "nothing".into())
                ),
            ));
        }
    }
    if let Some(want) = &e.sent {
        let shown: Vec<String> = seen
            .sent
            .iter()
            .map(|(to, text, b)| format!("  to {to}: {text:?} {b:?}"))
            .collect();
        for (i, w) in want.iter().enumerate() {
            let m = w.get();
            let Some((to, text, buttons)) = seen.sent.get(i) else {
                failures.push((
                    pos.at(w.span().start),
                    format!(
                        "sent: expected message {} of {}, the run sent {}:\n{}",
                        i + 1,
                        want.len(),
                        seen.sent.len(),
                        shown.join("\n")
                    ),
                ));
                break;
            };
            let mut wrong = Vec::new();
            if m.to.as_ref().is_some_and(|t| t != to) {
                wrong.push(format!(
                    "to {:?}, got {to:?}",
                    m.to.as_deref().unwrap_or("")
                ));
            }
            if m.text.as_ref().is_some_and(|t| !text.contains(t.as_str())) {
                wrong.push(format!(
                    "a text containing {:?}, got {text:?}",
                    m.text.as_deref().unwrap_or("")
                ));
            }
            if m.buttons.as_ref().is_some_and(|b| b != buttons) {
                wrong.push(format!(
                    "buttons {:?}, got {buttons:?}",
                    m.buttons.as_deref().unwrap_or(&[])
                ));
            }
            if !wrong.is_empty() {
                failures.push((
                    pos.at(w.span().start),
                    format!("sent: message {} expected {}", i + 1, wrong.join(", ")),
                ));
            }
        }
        if seen.sent.len() > want.len() {
            failures.push((
                pos.at(want.first().map(|w| w.span().start).unwrap_or(0)),
                format!(
                    "sent: expected {} messages, the run sent {}:\n{}",
                    want.len(),
                    seen.sent.len(),
                    shown.join("\n")
                ),
            ));
        }
    }
    if let Some(want) = &e.requests {
        let shown: Vec<String> = seen
            .requests
            .iter()
            .map(|(m, u)| format!("  {m} {u}"))
            .collect();
        if want.len() != seen.requests.len() {
            failures.push((
                pos.at(want.first().map(|w| w.span().start).unwrap_or(0)),
                format!(
                    "requests: expected {}, the run made {}:\n{}",
                    want.len(),
                    seen.requests.len(),
                    shown.join("\n")
                ),
            ));
        }
        for (w, (method, url)) in want.iter().zip(&seen.requests) {
            let r = w.get();
            let method_ok = r
                .method
                .as_ref()
                .is_none_or(|m| m.eq_ignore_ascii_case(method));
            let url_ok = r.url.as_ref().is_none_or(|u| url.contains(u.as_str()));
            if !method_ok || !url_ok {
                failures.push((
                    pos.at(w.span().start),
                    format!(
                        "requests: expected {} {}, got {method} {url}",
                        r.method.as_deref().unwrap_or("*"),
                        r.url.as_deref().unwrap_or("*")
                    ),
                ));
            }
        }
    }
    if let Some(want) = &e.answers {
        let shown: Vec<String> = seen.answers.iter().map(|a| format!("  {a:?}")).collect();
        let wrong = want.len() != seen.answers.len()
            || want
                .iter()
                .zip(&seen.answers)
                .any(|(w, got)| !got.contains(w.get().as_str()));
        if wrong {
            let expected: Vec<&str> = want.iter().map(|w| w.get().as_str()).collect();
            failures.push((
                pos.at(want.first().map(|w| w.span().start).unwrap_or(0)),
                format!(
                    "answers: expected {} containing {expected:?}, presses got {}:\n{}",
                    want.len(),
                    seen.answers.len(),
                    shown.join("\n")
                ),
            ));
        }
    }
}
