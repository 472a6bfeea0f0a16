//! A scenario file: its header (trigger, guard, subject, limits), labels, and the step list,
//! each step handed to the compiler of its kind.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::str::FromStr;

use super::ask::compile_ask;
use super::buttons::check_choice;
use super::cx::FileCx;
use super::hours::compile_hours;
use super::http::compile_http;
use super::offer::compile_offer;
use super::send::{compile_edit, compile_send};
use super::small::{compile_call, compile_cancel, compile_incr, compile_set, compile_sleep};
use super::values::parse_rate;
use super::wait::compile_wait;
use super::Messages;
use crate::lang::expr::Templates;
use crate::lang::model::*;
use crate::lang::raw::{self, Sp};

pub(super) fn compile_scenario(
    raw: &raw::ScenarioFile,
    cx: &mut FileCx,
    t: &Templates,
    gw: &Gateway,
    i18n: &dyn Messages,
    scenario_refs: &mut Vec<(String, Range<usize>)>,
) -> Option<Scenario> {
    let before = cx.problems.len();
    let id = raw.id.get().clone();
    if id.is_empty()
        || !id
            .chars()
            .all(|c| c.is_alphanumeric() || c == '-' || c == '_')
    {
        cx.err(raw.id.span(), "scenario id must be letters, digits, - or _");
    }
    let on = raw.on.get();
    let given = [
        on.webhook.is_some(),
        on.schedule.is_some(),
        on.call == Some(true),
        on.link == Some(true),
        on.message.is_some(),
        on.click.is_some(),
        on.status.is_some(),
        on.failed.is_some(),
        on.unmatched.is_some(),
    ];
    if let (Some(b), None) = (&on.button, &on.click) {
        cx.err(b.span(), "`button` belongs to a `click` trigger");
    }
    let trigger = match given.iter().filter(|b| **b).count() {
        1 => {
            if let Some(h) = &on.webhook {
                Some(Trigger::Webhook(h.get().clone()))
            } else if let Some(s) = &on.schedule {
                let tz = match &on.tz {
                    Some(tz) => match chrono_tz::Tz::from_str(tz.get()) {
                        Ok(z) => z,
                        Err(_) => {
                            cx.err(tz.span(), format!("unknown time zone '{}'", tz.get()));
                            chrono_tz::UTC
                        }
                    },
                    None => chrono_tz::UTC,
                };
                let text = s.get().trim();
                let six = if text.split_whitespace().count() == 5 {
                    format!("0 {text}")
                } else {
                    text.to_string()
                };
                match cron::Schedule::from_str(&six) {
                    Ok(c) => Some(Trigger::Schedule {
                        cron: Box::new(c),
                        tz,
                    }),
                    Err(e) => {
                        cx.err(s.span(), format!("bad cron expression: {e}"));
                        None
                    }
                }
            } else if on.link == Some(true) {
                Some(Trigger::Link)
            } else if let Some(ch) = &on.click {
                match gw.channels.get(ch.get()) {
                    Some(c) if cx.caps(c).choices.is_some() => {
                        if let Some(b) = &on.button {
                            check_choice(cx, gw, ch.get(), b, None);
                        }
                        Some(Trigger::Click {
                            channel: ch.get().clone(),
                            button: on.button.as_ref().map(|b| b.get().clone()),
                        })
                    }
                    Some(c) => {
                        cx.err(
                            ch.span(),
                            format!(
                                "channel '{}' ({}) has no callback buttons",
                                ch.get(),
                                c.kind()
                            ),
                        );
                        None
                    }
                    None => {
                        cx.err(ch.span(), format!("unknown channel '{}'", ch.get()));
                        None
                    }
                }
            } else if let Some(ch) = &on.message {
                match gw.channels.get(ch.get()) {
                    Some(c) if cx.caps(c).replies => Some(Trigger::Message(ch.get().clone())),
                    Some(c) => {
                        cx.err(
                            ch.span(),
                            format!("channel '{}' ({}) receives no messages", ch.get(), c.kind()),
                        );
                        None
                    }
                    None => {
                        cx.err(ch.span(), format!("unknown channel '{}'", ch.get()));
                        None
                    }
                }
            } else if let Some(ch) = &on.status {
                match gw.channels.get(ch.get()) {
                    Some(_) => Some(Trigger::Status(ch.get().clone())),
                    None => {
                        cx.err(ch.span(), format!("unknown channel '{}'", ch.get()));
                        None
                    }
                }
            } else if let Some(f) = &on.failed {
                let ids = match f.get() {
                    raw::FailedDef::One(id) if id == "*" => None,
                    raw::FailedDef::One(id) => Some(vec![id.clone()]),
                    raw::FailedDef::Many(ids) => Some(ids.clone()),
                };
                if ids.as_ref().is_some_and(|ids| ids.is_empty()) {
                    cx.err(f.span(), "`failed` needs \"*\" or at least one scenario id");
                }
                for id in ids.iter().flatten() {
                    scenario_refs.push((id.clone(), f.span()));
                }
                Some(Trigger::Failed(ids))
            } else if let Some(k) = &on.unmatched {
                match k.get().as_str() {
                    "*" => Some(Trigger::Unmatched(None)),
                    kind if UNMATCHED_KINDS.contains(&kind) => {
                        Some(Trigger::Unmatched(Some(kind.to_string())))
                    }
                    kind => {
                        cx.err(
                            k.span(),
                            format!(
                                "unknown event kind '{kind}'; expected \"*\" or one of {}",
                                UNMATCHED_KINDS.join(", ")
                            ),
                        );
                        None
                    }
                }
            } else {
                Some(Trigger::Call)
            }
        }
        _ => {
            cx.err(
                raw.on.span(),
                "`on` needs exactly one of webhook = \"name\", schedule = \"cron\", call = true, link = true, message = \"channel\", click = \"channel\", status = \"channel\", failed = \"scenario\", unmatched = \"kind\"",
            );
            None
        }
    };
    let yearly = super::when::compile_yearly(raw, cx, t);
    let when = raw.when.as_ref().and_then(|w| cx.expr(t, w));
    let subject = raw.subject.as_ref().and_then(|s| cx.tmpl(t, s));
    let mut limit = Limits::default();
    if let Some(l) = &raw.limit {
        let l = l.get();
        limit.once = l.once.unwrap_or(false);
        limit.single = l.single.unwrap_or(false);
        if let Some(p) = &l.per_subject {
            match parse_rate(p.get()) {
                Some(r) => limit.per_subject = Some(r),
                None => cx.err(p.span(), "per_subject must look like 1/5s or 3/1h"),
            }
        }
        if raw.subject.is_none() {
            cx.err(
                raw.limit.as_ref().unwrap().span(),
                "limits need a `subject`",
            );
        }
    }

    let hours = raw
        .hours
        .as_ref()
        .and_then(|h| compile_hours(h, cx, Some(t)));

    // Labels first, so that gotos can point forward.
    let mut labels: HashMap<String, usize> = HashMap::new();
    for (i, st) in raw.steps.iter().enumerate() {
        if let Some(l) = &st.get().label {
            if labels.insert(l.get().clone(), i).is_some() {
                cx.err(l.span(), format!("label '{}' is defined twice", l.get()));
            }
        }
    }
    let target = |cx: &mut FileCx, l: &Sp<String>| -> Option<usize> {
        match labels.get(l.get()) {
            Some(&i) => Some(i),
            None => {
                cx.err(l.span(), format!("goto to a missing label '{}'", l.get()));
                None
            }
        }
    };

    // Messages `send` steps keep for a later `edit`: name → where they go.
    let saved: HashMap<String, Sp<String>> = raw
        .steps
        .iter()
        .filter_map(|s| {
            let sd = s.get().send.as_ref()?.get();
            Some((sd.save.as_ref()?.get().clone(), sd.to.clone()))
        })
        .collect();
    let mut steps = Vec::new();
    for st_sp in &raw.steps {
        let st = st_sp.get();
        let span = st_sp.span();
        let line = cx.pos(span.start).line;
        let mut actions: Vec<&'static str> = Vec::new();
        for (present, name) in [
            (st.goto.is_some(), "goto"),
            (st.set.is_some(), "set"),
            (st.incr.is_some(), "incr"),
            (st.send.is_some(), "send"),
            (st.http.is_some(), "http"),
            (st.call.is_some(), "call"),
            (st.sleep.is_some(), "sleep"),
            (st.cancel.is_some(), "cancel"),
            (st.wait.is_some(), "wait"),
            (st.ask.is_some(), "ask"),
            (st.offer.is_some(), "offer"),
            (st.edit.is_some(), "edit"),
        ] {
            if present {
                actions.push(name);
            }
        }
        if actions.len() > 1 {
            cx.err(
                span.clone(),
                format!(
                    "a step has one action, this one has {}",
                    actions.join(" and ")
                ),
            );
            continue;
        }
        let cond = st.cond.as_ref().and_then(|c| cx.expr(t, c));
        let else_goto = match &st.else_goto {
            Some(e) if st.cond.is_none() => {
                cx.err(e.span(), "`else` needs an `if`");
                None
            }
            Some(e) => target(cx, e),
            None => None,
        };
        if let Some(b) = &st.branch {
            if st.http.is_none() && st.wait.is_none() && st.ask.is_none() && st.offer.is_none() {
                cx.err(
                    b.span(),
                    "`branch` belongs to an `http`, `wait`, `ask` or `offer` step",
                );
            }
        }
        let branch_map: BTreeMap<String, Sp<String>> = st
            .branch
            .as_ref()
            .map(|b| b.get().clone())
            .unwrap_or_default();
        let action = if let Some(g) = &st.goto {
            target(cx, g).map(Action::Goto)
        } else if let Some(set) = &st.set {
            compile_set(set, cx, t)
        } else if let Some(i) = &st.incr {
            compile_incr(i, cx)
        } else if let Some(s) = &st.send {
            compile_send(s, cx, t, gw, i18n).map(Action::Send)
        } else if let Some(h) = &st.http {
            compile_http(h, &branch_map, cx, t, gw, &target).map(|h| Action::Http(Box::new(h)))
        } else if let Some(c) = &st.call {
            compile_call(c, cx, t, scenario_refs)
        } else if let Some(s) = &st.sleep {
            compile_sleep(s, raw, cx, t)
        } else if let Some(c) = &st.cancel {
            compile_cancel(c, cx, t, scenario_refs)
        } else if let Some(w) = &st.wait {
            compile_wait(w, &branch_map, raw, cx, t, &target).map(Action::Wait)
        } else if let Some(o) = &st.offer {
            compile_offer(o, &branch_map, cx, t, gw, i18n, &target)
                .map(|o| Action::Offer(Box::new(o)))
        } else if let Some(e) = &st.edit {
            compile_edit(e, &saved, cx, t, gw, i18n).map(|e| Action::Edit(Box::new(e)))
        } else if let Some(a) = &st.ask {
            compile_ask(a, &branch_map, cx, t, gw, i18n, &target).map(|a| Action::Ask(Box::new(a)))
        } else if st.stop == Some(true) {
            Some(Action::Stop)
        } else {
            Some(Action::Nothing)
        };
        let hours = st.hours.as_ref().and_then(|h| {
            if !matches!(
                action,
                Some(Action::Send(_) | Action::Ask(_) | Action::Offer(_))
            ) {
                cx.err(
                    h.span(),
                    "`hours` belong to a `send`, `ask` or `offer` step",
                );
            }
            compile_hours(h, cx, Some(t))
        });
        if let Some(action) = action {
            steps.push(Step {
                hours,
                label: st.label.as_ref().map(|l| l.get().clone()),
                line,
                cond,
                else_goto,
                action,
                stop: st.stop == Some(true),
            });
        }
    }
    if raw.steps.is_empty() {
        cx.err(raw.id.span(), "a scenario needs at least one [[step]]");
    }
    if cx.problems.len() > before {
        return None;
    }
    let uses_subject_vars = uses_subject_vars(cx.text);
    let mut scenario = Scenario::new(
        id,
        cx.file.to_path_buf(),
        raw.description.clone(),
        raw.enabled.unwrap_or(true),
        trigger?,
        when,
        subject,
        limit,
        steps,
        uses_subject_vars,
    );
    scenario.uses_globals = cx.text.contains("global.");
    scenario.hours = hours;
    scenario.yearly = yearly;
    Some(scenario)
}

/// Whether any expression or target mentions `subject.` (subject variables are then loaded).
pub(super) fn uses_subject_vars(text: &str) -> bool {
    text.match_indices("subject.").any(|(i, _)| {
        !text[..i]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '.')
    })
}

#[cfg(test)]
mod tests {
    use super::super::testing::errors;
    use super::*;

    #[test]
    fn missing_labels_bad_expressions_channels_and_messages_are_reported() {
        let errs = errors(
            r#"id = "a"
on = { webhook = "h" }
when = 'event.x >'
[[step]]
goto = "nowhere"
[[step]]
send = { to = "telegram:1", text = "nope" }
"#,
        );
        let all = errs.join("\n");
        assert!(all.contains("3:17: bad expression"), "{all}");
        assert!(
            all.contains("5:8: goto to a missing label 'nowhere'"),
            "{all}"
        );
        assert!(all.contains("7:15: unknown channel 'telegram'"), "{all}");
        assert!(all.contains("7:36: unknown Fluent message 'nope'"), "{all}");
    }

    #[test]
    fn one_action_per_step() {
        let errs = errors(
            "id = \"a\"\non = { webhook = \"h\" }\n[[step]]\nstop = true\nincr = \"run.a\"\ngoto = \"x\"\nlabel = \"x\"\n",
        );
        assert!(errs[0].contains("one action"), "{errs:?}");
    }

    #[test]
    fn subject_variable_use_is_detected() {
        assert!(uses_subject_vars("if = 'subject.tries > 2'"));
        assert!(!uses_subject_vars("x = '{{ meta.subject }}'"));
    }
}
