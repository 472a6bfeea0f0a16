//! `hours` settings (of a step, a scenario or a channel) and a channel's per-recipient cap.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::cx::FileCx;
use super::values::parse_rate;
use crate::lang::expr::Templates;
use crate::lang::hours::{Hours, Schedule};
use crate::lang::model::{Cap, ChannelRules};
use crate::lang::raw::{HoursDef, Sp};

/// A scenario's or a step's `hours`.
pub(super) fn compile_hours(
    h: &Sp<HoursDef>,
    cx: &mut FileCx,
    t: Option<&Templates>,
) -> Option<Arc<Hours>> {
    let d = h.get();
    let holidays: Vec<&str> = d.holidays.iter().map(|x| x.get().as_str()).collect();
    let schedule = match Schedule::parse(
        d.allow.as_ref().map(|a| a.get().as_str()),
        d.quiet.as_ref().map(|q| q.get().as_str()),
        &holidays,
    ) {
        Ok(s) => s,
        Err(e) => {
            // At the key the problem is in.
            let at = if e.starts_with("allow") {
                d.allow.as_ref().map(Sp::span)
            } else if e.starts_with("quiet") {
                d.quiet.as_ref().map(Sp::span)
            } else if e.starts_with("holidays") {
                d.holidays.first().map(Sp::span)
            } else {
                None
            };
            cx.err(at.unwrap_or_else(|| h.span()), format!("hours: {e}"));
            return None;
        }
    };
    let (mut zone, mut tz) = (None, None);
    if let Some(z) = &d.tz {
        if let (true, Some(t)) = (z.get().contains("{{"), t) {
            tz = Some(cx.tmpl(t, z)?);
        } else if !z.get().trim().is_empty() {
            zone = Some(cx.zone(z)?);
        }
    }
    Some(Arc::new(Hours {
        schedule,
        zone,
        tz,
        src: describe(d),
    }))
}

fn describe(d: &HoursDef) -> String {
    let mut parts = Vec::new();
    if let Some(a) = &d.allow {
        parts.push(a.get().clone());
    }
    if let Some(q) = &d.quiet {
        parts.push(format!("quiet {}", q.get()));
    }
    if !d.holidays.is_empty() {
        parts.push(format!("{} holidays", d.holidays.len()));
    }
    parts.join("; ")
}

/// The settings every channel type takes: `hours = { … }` (a fixed zone, no templates) and
/// `limits = { per_recipient = "3/1d", over = "hold" | "drop" }`. They are taken out of the
/// section before the channel's type reads the rest.
pub(super) fn channel_rules(
    name: &str,
    entries: &mut BTreeMap<String, Sp<serde_json::Value>>,
    cx: &mut FileCx,
) -> ChannelRules {
    let mut rules = ChannelRules::default();
    if let Some(h) = entries.remove("hours") {
        let span = h.span();
        match serde_json::from_value::<BTreeMap<String, serde_json::Value>>(h.get().clone()) {
            Ok(map) => {
                let text = |k: &str, cx: &mut FileCx| match map.get(k) {
                    None => None,
                    Some(serde_json::Value::String(s)) => {
                        Some(Sp(toml::Spanned::new(span.clone(), s.clone())))
                    }
                    Some(_) => {
                        cx.err(
                            span.clone(),
                            format!("channel '{name}': `hours.{k}` must be a text"),
                        );
                        None
                    }
                };
                for k in map.keys() {
                    if !["allow", "quiet", "tz", "holidays"].contains(&k.as_str()) {
                        cx.err(
                            span.clone(),
                            format!("channel '{name}': unknown key `hours.{k}` (it takes: allow, quiet, tz, holidays)"),
                        );
                    }
                }
                let holidays = match map.get("holidays") {
                    None => Vec::new(),
                    Some(serde_json::Value::Array(a)) if a.iter().all(|x| x.is_string()) => a
                        .iter()
                        .map(|x| {
                            Sp(toml::Spanned::new(
                                span.clone(),
                                x.as_str().unwrap_or_default().to_string(),
                            ))
                        })
                        .collect(),
                    Some(_) => {
                        cx.err(
                            span.clone(),
                            format!("channel '{name}': `hours.holidays` must be a list of dates"),
                        );
                        Vec::new()
                    }
                };
                let def = HoursDef {
                    allow: text("allow", cx),
                    quiet: text("quiet", cx),
                    tz: text("tz", cx),
                    holidays,
                };
                if def.tz.as_ref().is_some_and(|z| z.get().contains("{{")) {
                    cx.err(
                        span.clone(),
                        format!("channel '{name}': `hours.tz` of a channel is a zone name; a zone from the event belongs in the scenario's or the step's `hours`"),
                    );
                } else {
                    rules.hours = compile_hours(&Sp(toml::Spanned::new(span, def)), cx, None);
                }
            }
            Err(_) => cx.err(span, format!("channel '{name}': `hours` must be a table")),
        }
    }
    if let Some(limits) = entries.get_mut("limits") {
        let span = limits.span();
        let mut value = limits.get().clone();
        if let Some(map) = value.as_object_mut() {
            let rate = map.remove("per_recipient");
            let over = map.remove("over");
            match (rate, over) {
                (Some(serde_json::Value::String(r)), over) => {
                    let drop = match over.as_ref().map(|o| o.as_str()) {
                        None | Some(Some("hold")) => false,
                        Some(Some("drop")) => true,
                        Some(_) => {
                            cx.err(
                                span.clone(),
                                format!("channel '{name}': `limits.over` is \"hold\" or \"drop\""),
                            );
                            false
                        }
                    };
                    match parse_rate(&r) {
                        Some((n, per)) => rules.per_recipient = Some(Cap { n, per, drop }),
                        None => cx.err(
                            span.clone(),
                            format!("channel '{name}': `limits.per_recipient` must look like 3/1d or 1/1h"),
                        ),
                    }
                }
                (Some(_), _) => cx.err(
                    span.clone(),
                    format!("channel '{name}': `limits.per_recipient` must be a text like 3/1d"),
                ),
                (None, Some(_)) => cx.err(
                    span.clone(),
                    format!("channel '{name}': `limits.over` needs `limits.per_recipient`"),
                ),
                (None, None) => {}
            }
            let empty = map.is_empty();
            *limits = Sp(toml::Spanned::new(span, value));
            if empty {
                entries.remove("limits");
            }
        }
    }
    rules
}

/// The JSON Schema of the keys [`channel_rules`] reads, which every channel type takes:
/// `hours` and the `per_recipient` and `over` parts of `limits`. A channel type's own
/// `limits` gain these two properties; a type without limits of its own takes this `limits`.
pub fn channel_rules_schema() -> serde_json::Value {
    serde_json::json!({
        "hours": {
            "description": "Working hours of the channel: a `send`, `ask` or `offer` whose message would go out while closed is held until the window opens. A step's or a scenario's own `hours` take precedence.",
            "type": "object",
            "additionalProperties": false,
            "properties": {
                "allow": {
                    "description": "Open times: weekdays (`Mon`, `Mon-Fri`, `Sat/Sun`, `daily`) and time ranges (`09:00-13:00 14:00-18:00`), groups separated by commas; a range may end after midnight.",
                    "type": "string",
                    "examples": ["Mon-Fri 08:00-19:00"]
                },
                "quiet": {
                    "description": "Closed times in the same form, e.g. `daily 21:00-08:00`; taken out of `allow` (or out of the whole week without `allow`).",
                    "type": "string",
                    "examples": ["daily 21:00-08:00"]
                },
                "tz": {
                    "description": "The zone the times are read in, as an IANA name (no template on a channel). Left out: the recipient's zone (a staff member's `tz`), else the gateway's `timezone`.",
                    "type": "string",
                    "examples": ["Europe/Warsaw"]
                },
                "holidays": {
                    "description": "Whole days off: `2026-12-24`, or `12-25` for every year.",
                    "type": "array",
                    "items": { "type": "string" },
                    "examples": [["12-25", "01-01"]]
                }
            },
            "examples": [{ "allow": "Mon-Fri 08:00-19:00", "holidays": ["12-25", "01-01"] }]
        },
        "limits": {
            "description": "`per_recipient` and `over` cap what one recipient gets from the channel across all scenarios.",
            "type": "object",
            "additionalProperties": false,
            "properties": {
                "per_recipient": {
                    "description": "At most this many messages to one recipient, as `count/period`; the window starts with the recipient's first message.",
                    "type": "string",
                    "examples": ["3/1d"]
                },
                "over": {
                    "description": "A message over `per_recipient`: `hold` (the default) keeps it until the window ends; `drop` leaves a `send` out for that recipient. Questions and offers are always held.",
                    "type": "string",
                    "examples": ["hold"]
                }
            },
            "examples": [{ "per_recipient": "3/1d", "over": "hold" }]
        }
    })
}

#[cfg(test)]
mod tests {
    use super::super::testing::{compile_with_env, errors_on_telegram};

    #[test]
    fn mistakes_in_hours_are_reported_where_they_are() {
        let e = errors_on_telegram(
            "id = \"x\"\non = { webhook = \"x\" }\nhours = { allow = \"Mon-Fry 09:00-18:00\" }\n[[step]]\nsend = { to = \"tg:1\", template = \"hi\" }\nhours = { allow = \"Mon 09:00-18:00\", tz = \"Mars/Base\" }\n[[step]]\ngoto = \"a\"\nlabel = \"a\"\nhours = { quiet = \"daily 00:00-24:00\" }\n",
        );
        assert_eq!(
            e,
            [
                "3:19: hours: allow: 'Fry' is not a weekday (Mon, Tue, … or a range like Mon-Fri)",
                "6:43: unknown time zone 'Mars/Base' (an IANA name like Europe/Warsaw)",
                "10:9: `hours` belong to a `send`, `ask` or `offer` step",
                "10:9: hours: these hours are never open",
            ]
        );
    }

    #[test]
    fn channels_take_hours_and_a_per_recipient_cap() {
        let gw = "[channels.tg]\ntype = \"telegram\"\ntoken = \"1:x\"\nhours = { allow = \"Mon-Fri 09:00-18:00\", tz = \"Europe/Warsaw\" }\nlimits = { per_recipient = \"3/1d\", over = \"drop\" }\n";
        let (g, _, problems) =
            compile_with_env(gw, "id = \"x\"\non = { call = true }\n[[step]]\n", &[]);
        assert!(problems.is_empty(), "{problems:?}");
        let rules = &g.rules["tg"];
        assert_eq!(
            rules.hours.as_ref().unwrap().zone,
            Some(chrono_tz::Europe::Warsaw)
        );
        let cap = rules.per_recipient.unwrap();
        assert_eq!((cap.n, cap.per.as_secs(), cap.drop), (3, 86_400, true));
        let bad = "[channels.tg]\ntype = \"telegram\"\ntoken = \"1:x\"\nhours = { allow = \"09:00-18:00\", tz = \"{{ event.tz }}\" }\nlimits = { per_recipient = \"often\", over = \"maybe\" }\n";
        let (_, _, problems) =
            compile_with_env(bad, "id = \"x\"\non = { call = true }\n[[step]]\n", &[]);
        let msgs: Vec<String> = problems
            .iter()
            .map(|p| format!("{}:{}: {}", p.pos.line, p.pos.col, p.message))
            .collect();
        assert_eq!(
            msgs,
            [
                "4:9: channel 'tg': `hours.tz` of a channel is a zone name; a zone from the event belongs in the scenario's or the step's `hours`",
                "5:10: channel 'tg': `limits.over` is \"hold\" or \"drop\"",
                "5:10: channel 'tg': `limits.per_recipient` must look like 3/1d or 1/1h",
            ]
        );
    }
}
