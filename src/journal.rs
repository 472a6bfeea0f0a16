//! Human-readable lines for journal entries: used by `switchboard journal` and `simulate`.

use serde_json::Value as Json;

use crate::store::{EventRow, RunRow};

fn compact(v: &Json) -> String {
    match v {
        Json::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

/// `to channel:address [lang]: text` for a rendered message.
pub fn message_text(channel: &str, m: &Json) -> String {
    let mut s = format!(
        "to {channel}{} [{}]: {}",
        m["to"]
            .as_str()
            .map(|t| format!(":{t}"))
            .unwrap_or_default(),
        m["lang"].as_str().unwrap_or(""),
        m["text"].as_str().unwrap_or("")
    );
    for b in m["buttons"].as_array().into_iter().flatten() {
        s.push_str(&format!(
            " [{}]({})",
            b["text"].as_str().unwrap_or(""),
            b["url"].as_str().unwrap_or("")
        ));
    }
    s
}

/// `METHOD url body` for a rendered HTTP request.
pub fn request_text(r: &Json) -> String {
    let mut s = format!(
        "{} {}",
        r["method"].as_str().unwrap_or(""),
        r["url"].as_str().unwrap_or("")
    );
    if !r["body"].is_null() {
        s.push(' ');
        s.push_str(&r["body"].to_string());
    }
    s
}

/// One line for one step entry of a run's journal.
pub fn step_line(e: &Json) -> String {
    let mut s = String::new();
    let action = e["action"].as_str().unwrap_or("");
    if let Some(step) = e["step"].as_i64() {
        s.push_str(&format!("step {step}"));
        if let Some(l) = e["line"].as_i64() {
            s.push_str(&format!(" (line {l})"));
        }
        if let Some(l) = e["label"].as_str() {
            s.push_str(&format!(" [{l}]"));
        }
        s.push_str(": ");
    }
    s.push_str(action);
    if let Some(cond) = e["if"].as_str() {
        let seen: Vec<String> = e["seen"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{k} = {}", compact(v)))
            .collect();
        s.push_str(&format!(
            " if {cond} → {} ({})",
            e["verdict"],
            if seen.is_empty() {
                "no variables".into()
            } else {
                seen.join(", ")
            }
        ));
    }
    if let Some(set) = e["set"].as_object() {
        let parts: Vec<String> = set
            .iter()
            .map(|(k, v)| format!("{k} = {}", compact(v)))
            .collect();
        s.push_str(&format!(" {}", parts.join(", ")));
    }
    // One message, or one per recipient (a staff group).
    let sends = match e.get("send") {
        Some(Json::Array(all)) => all.iter().collect(),
        Some(one) if !one.is_null() => vec![one],
        _ => Vec::new(),
    };
    let texts: Vec<String> = sends
        .iter()
        .map(|m| message_text(m["channel"].as_str().unwrap_or(""), m))
        .collect();
    if !texts.is_empty() {
        s.push_str(&format!(" {}", texts.join("; ")));
    }
    if let Some(r) = e.get("request").filter(|v| !v.is_null()) {
        s.push_str(&format!(" {}", request_text(r)));
    }
    if let Some(w) = e.get("wait").filter(|v| v.is_object()) {
        s.push_str(&format!(
            " for webhook {} with key {}",
            w["webhook"], w["key"]
        ));
    }
    if let Some(u) = e["until"].as_str() {
        s.push_str(&format!(" until {u}"));
    }
    if let Some(k) = e["key"].as_str() {
        s.push_str(&format!(" (key {k})"));
    }
    if let Some(st) = e["status"].as_u64() {
        s.push_str(&format!(" status {st}"));
    }
    if let Some(b) = e["branch"].as_str() {
        s.push_str(&format!(" → branch {b}"));
    }
    if let Some(c) = e["cancelled"].as_array() {
        s.push_str(&format!(" cancelled runs {c:?}"));
    }
    if let Some(r) = e["result"].as_str() {
        s.push_str(&format!(" — {r}"));
    }
    if let Some(ms) = e["ms"].as_f64().filter(|ms| *ms >= 1.0) {
        s.push_str(&format!(" ({ms:.0} ms)"));
    }
    if let Some(err) = e["error"].as_str() {
        s.push_str(&format!(": {err}"));
    }
    if let Some(why) = e["why"].as_str() {
        s.push_str(&format!(" ({why})"));
    }
    s
}

pub fn event_line(ev: &EventRow) -> String {
    let mut s = format!(
        "event {} {} {} [{}] at {}",
        ev.id,
        ev.kind,
        ev.source,
        ev.status,
        crate::clock::rfc3339(ev.received_at)
    );
    if let Some(e) = &ev.error {
        s.push_str(&format!(": {e}"));
    }
    for o in ev
        .outcome
        .iter()
        .flat_map(|o| o.as_array().into_iter().flatten())
    {
        s.push_str(&format!("\n  {}", outcome_line(o)));
    }
    s
}

pub fn outcome_line(o: &Json) -> String {
    let mut s = o["scenario"].as_str().unwrap_or("-").to_string();
    if let Some(r) = o["run"].as_i64() {
        s.push_str(&format!(" → run {r}"));
    }
    if let Some(st) = o["status"].as_str() {
        s.push_str(&format!(" ({st})"));
    }
    if let Some(v) = o["verdict"].as_str() {
        s.push_str(&format!(": {v}"));
    }
    if let Some(c) = o["if"].as_str() {
        s.push_str(&format!(" — {c}"));
        if let Some(seen) = o["seen"].as_object() {
            let parts: Vec<String> = seen
                .iter()
                .map(|(k, v)| format!("{k} = {}", compact(v)))
                .collect();
            s.push_str(&format!(" saw {}", parts.join(", ")));
        }
    }
    if let Some(w) = o["why"].as_str() {
        s.push_str(&format!(" ({w})"));
    }
    if let Some(e) = o["error"].as_str() {
        s.push_str(&format!(": {e}"));
    }
    s
}

pub fn run_header(r: &RunRow) -> String {
    format!(
        "run {} {} subject={} [{}]{}",
        r.id,
        r.scenario,
        r.subject.as_deref().unwrap_or("-"),
        r.status.as_str(),
        r.error
            .as_ref()
            .map(|e| format!(": {e}"))
            .unwrap_or_default()
    )
}
