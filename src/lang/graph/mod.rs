//! A scenario's step graph: a node per step (and the trigger, the end and called scenarios),
//! an edge per way on (the next step, `if`/`else`, `goto`, an `http` status, an `ask` choice,
//! `exhausted` or `timeout`, an `offer` button, a `call`). Written as Mermaid, Graphviz DOT,
//! or SVG laid out here (no Graphviz needed), optionally with one run's path marked.

mod render;

pub use render::{dot, mermaid, render, svg};

use std::collections::{BTreeMap, HashMap};

use super::model::{Action, Scenario, SendSpec, SleepTime, Trigger};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    Trigger,
    Step(usize),
    End,
    /// A scenario a `call` starts.
    Called,
}

#[derive(Debug, Clone)]
pub struct Node {
    pub id: String,
    pub text: String,
    pub kind: NodeKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edge {
    pub from: String,
    pub to: String,
    pub label: String,
    /// A `call`: the run goes on, the other scenario starts beside it.
    pub dashed: bool,
}

#[derive(Debug, Clone)]
pub struct Graph {
    pub title: String,
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
}

/// How one step went in a run, for a marked graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    Failed,
    Skipped,
}

/// One run's way through the graph: steps with their verdict and what was seen there (shown
/// on hover), and the edges it took as (from step, to step).
#[derive(Debug, Clone, Default)]
pub struct Path {
    pub steps: HashMap<usize, (Verdict, String)>,
    pub edges: Vec<(Option<usize>, Option<usize>)>,
    /// Over many runs: how many took each edge (shown on it, none drawn bold).
    pub counts: HashMap<(Option<usize>, Option<usize>), u64>,
}

impl Path {
    /// Adds one run's way to the counts.
    pub fn count(&mut self, run: &Path) {
        let mut seen = std::collections::HashSet::new();
        for e in &run.edges {
            if seen.insert(*e) {
                *self.counts.entry(*e).or_default() += 1;
            }
        }
    }
}

fn step_id(i: usize) -> String {
    format!("s{i}")
}

fn short(s: &str, max: usize) -> String {
    s.lines()
        .map(|l| short_line(l, max))
        .collect::<Vec<_>>()
        .join("\n")
}

fn short_line(s: &str, max: usize) -> String {
    let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if s.chars().count() <= max {
        s
    } else {
        format!("{}…", s.chars().take(max - 1).collect::<String>())
    }
}

fn to_of(s: &SendSpec) -> String {
    match &s.address {
        Some(a) => format!("{}:{}", s.channel, a.src()),
        None => s.channel.clone(),
    }
}

fn trigger_text(sc: &Scenario) -> String {
    let text = match &sc.trigger {
        Trigger::Webhook(h) => format!("webhook {h}"),
        Trigger::Schedule { cron, tz } => format!("schedule {cron} ({tz})"),
        Trigger::Call => "call".into(),
        Trigger::Link => "trigger link".into(),
        Trigger::Message(c) => format!("message on {c}"),
        Trigger::Click { channel, button } => match button {
            Some(b) => format!("click {b} on {channel}"),
            None => format!("click on {channel}"),
        },
        Trigger::Status(c) => format!("status on {c}"),
        Trigger::Failed(None) => "a failed run or send".into(),
        Trigger::Failed(Some(of)) => format!("a failed run or send of {}", of.join(", ")),
        Trigger::Unmatched(None) => "an event no scenario took".into(),
        Trigger::Unmatched(Some(kind)) => format!("a {kind} no scenario took"),
    };
    match &sc.yearly {
        Some(y) => format!(
            "{text}, then yearly on {} at {}",
            y.date.src,
            y.at.format("%H:%M")
        ),
        None => text,
    }
}

fn action_text(a: &Action) -> String {
    match a {
        Action::Nothing => "check".into(),
        Action::Goto(_) => "goto".into(),
        Action::Set(v) => format!(
            "set {}",
            v.iter()
                .map(|a| a.target.display())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Action::Incr(v) => format!("incr {}", v.display()),
        Action::Send(s) => format!("send to {}", to_of(s)),
        Action::Http(h) => format!("http {} {}", h.method, h.url.src()),
        Action::Call(c) => format!("call {}", c.scenario),
        Action::Sleep(s) => {
            let at =
                s.at.map(|t| format!(" at {}", t.format("%H:%M")))
                    .unwrap_or_default();
            match &s.time {
                SleepTime::For(d) => format!("sleep {}{at}", humantime::format_duration(*d)),
                SleepTime::Until(e) => format!("sleep until {}{at}", e.src),
                SleepTime::Next => format!("sleep until the next{at}"),
            }
        }
        Action::Cancel(c) => format!(
            "cancel {}",
            c.scenario.clone().unwrap_or_else(|| "this scenario".into())
        ),
        Action::Wait(w) => format!("wait for {}", w.hook),
        Action::Ask(a) => format!("ask {}", to_of(&a.question)),
        Action::Offer(o) => format!("offer to {}", to_of(&o.message)),
        Action::Edit(e) => format!("edit on {}", e.message.channel),
        Action::Stop => "stop".into(),
    }
}

/// The step graph of a scenario.
pub fn graph(sc: &Scenario) -> Graph {
    let n = sc.steps.len();
    let target = |i: usize| {
        if i < n {
            step_id(i)
        } else {
            "finish".to_string()
        }
    };
    let mut nodes = vec![Node {
        id: "trigger".into(),
        text: trigger_text(sc),
        kind: NodeKind::Trigger,
    }];
    // (from, to) → labels, in the order they were found.
    let mut edges: Vec<((String, String), Vec<String>, bool)> = Vec::new();
    let mut add = |from: &str, to: String, label: &str, dashed: bool| {
        match edges.iter_mut().find(|(k, _, _)| k.0 == from && k.1 == to) {
            // An edge taken whatever happens says nothing more with labels.
            Some((_, labels, _)) if label.is_empty() => labels.clear(),
            Some((_, labels, _)) => {
                if !labels.is_empty() && !labels.iter().any(|l| l == label) {
                    labels.push(label.to_string());
                }
            }
            None => edges.push((
                (from.to_string(), to),
                if label.is_empty() {
                    vec![]
                } else {
                    vec![label.to_string()]
                },
                dashed,
            )),
        }
    };
    add("trigger", target(0), "", false);
    let mut called: BTreeMap<String, ()> = BTreeMap::new();
    for (i, st) in sc.steps.iter().enumerate() {
        let me = step_id(i);
        let mut text = action_text(&st.action);
        if let Some(l) = &st.label {
            text = format!("{l}: {text}");
        }
        if let Some(c) = &st.cond {
            text = format!("{text}\nif {}", c.src);
            add(&me, target(st.else_goto.unwrap_or(i + 1)), "else", false);
        }
        nodes.push(Node {
            id: me.clone(),
            text: short(&text, 60),
            kind: NodeKind::Step(i),
        });
        let next = if st.stop { n } else { i + 1 };
        let branches: &[(String, usize)] = match &st.action {
            Action::Http(h) => &h.branches,
            Action::Ask(a) => &a.branches,
            Action::Offer(o) => &o.branches,
            _ => &[],
        };
        for (key, to) in branches {
            add(&me, target(*to), key, false);
        }
        match &st.action {
            Action::Goto(to) => add(&me, target(*to), "", false),
            Action::Stop => add(&me, "finish".into(), "", false),
            Action::Wait(w) => {
                add(&me, target(next), "event", false);
                let t = w.on_timeout.unwrap_or(next);
                if w.timeout.is_some() {
                    add(&me, target(t), "timeout", false);
                }
            }
            Action::Ask(a) => {
                add(&me, target(next), "answer", false);
                for key in ["exhausted", "timeout"] {
                    let applies = key == "exhausted" || a.timeout.is_some();
                    if applies && a.branch(key).is_none() {
                        add(&me, target(next), key, false);
                    }
                }
            }
            Action::Offer(o) => {
                for b in &o.buttons {
                    if o.branch(&b.id).is_none() && !b.decline {
                        add(&me, target(next), &b.id, false);
                    }
                }
                if o.timeout.is_some() && o.branch("timeout").is_none() {
                    add(&me, target(next), "timeout", false);
                }
            }
            Action::Http(h) => add(
                &me,
                target(next),
                if h.branches.is_empty() { "" } else { "other" },
                false,
            ),
            Action::Call(c) => {
                called.insert(c.scenario.clone(), ());
                add(&me, format!("call_{}", c.scenario), "starts", true);
                add(&me, target(next), "", false);
            }
            _ => add(&me, target(next), "", false),
        }
    }
    nodes.push(Node {
        id: "finish".into(),
        text: "finish".into(),
        kind: NodeKind::End,
    });
    for c in called.keys() {
        nodes.push(Node {
            id: format!("call_{c}"),
            text: format!("scenario {c}"),
            kind: NodeKind::Called,
        });
    }
    Graph {
        title: sc.id.clone(),
        nodes,
        edges: edges
            .into_iter()
            .map(|((from, to), labels, dashed)| Edge {
                from,
                to,
                label: labels.join(" / "),
                dashed,
            })
            .collect(),
    }
}

/// A run's way through its scenario's graph, read from its journal: each step's last
/// verdict (with what it saw and did, for the hover) and the moves between steps.
pub fn path_of(journal: &[serde_json::Value], finished: bool) -> Path {
    let mut path = Path::default();
    let mut last: Option<usize> = None;
    for e in journal {
        let Some(step) = e["step"].as_u64().map(|s| s as usize) else {
            continue;
        };
        let result = e["result"].as_str().unwrap_or("");
        let verdict = if result == "error" || result == "failed" || result.starts_with("failed:") {
            Verdict::Failed
        } else if result == "skipped" {
            Verdict::Skipped
        } else {
            Verdict::Ok
        };
        let mut hover = vec![format!(
            "{}: {result}",
            e["action"].as_str().unwrap_or("step")
        )];
        if let Some(seen) = e["seen"].as_object().filter(|s| !s.is_empty()) {
            for (k, v) in seen {
                hover.push(format!("{k} = {v}"));
            }
        }
        if let Some(err) = e["error"].as_str() {
            hover.push(err.to_string());
        }
        path.steps.insert(step, (verdict, hover.join("\n")));
        if last != Some(step) {
            path.edges.push((last, Some(step)));
            last = Some(step);
        }
    }
    if finished {
        path.edges.push((last, None));
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_texts_keep_their_start() {
        assert_eq!(short("a  b\nc", 10), "a b\nc");
        assert_eq!(short("abcdefghijkl", 5), "abcd…");
    }
}
