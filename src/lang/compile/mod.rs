//! From raw files to the checked model: every problem is reported with its position and
//! all of them are collected before the load fails.

mod ask;
mod buttons;
mod cx;
mod gateway;
mod hours;
mod http;
mod offer;
mod scenario;
mod send;
mod small;
pub mod values;
mod wait;
mod when;

pub use self::hours::channel_rules_schema;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use self::cx::FileCx;
use self::gateway::compile_gateway;
use self::scenario::compile_scenario;
use super::channel::ChannelKinds;
use super::error::{ConfigError, Position};
use super::expr::Templates;
use super::interpolate::expand;
use super::model::*;
use super::raw;

/// What the compiler asks of the rest of the gateway; config loading wires the real ones.
pub struct Host<'a> {
    /// The channel types, which parse their own sections.
    pub kinds: &'a dyn ChannelKinds,
    /// The value of an environment variable, for `${NAME}` in string values.
    pub env: &'a dyn Fn(&str) -> Option<String>,
}

/// The Fluent messages scenarios may name.
pub trait Messages {
    /// Locales that lack the message `id`.
    fn missing_in(&self, id: &str) -> Vec<String>;
}

/// Parses and compiles the gateway file, with `${NAME}` expanded in every string value.
/// The raw file comes back too: loading needs its template fuel and locales folder.
pub fn gateway(
    file: &Path,
    text: &str,
    host: &Host,
    problems: &mut Vec<ConfigError>,
) -> (raw::GatewayFile, Gateway) {
    let expanded = expand(text, host.env);
    let mut cx = FileCx::new(file, text, &expanded, problems, host);
    let raw_gateway = cx.parse::<raw::GatewayFile>().unwrap_or_default();
    let gateway = compile_gateway(&raw_gateway, &mut cx);
    (raw_gateway, gateway)
}

/// Parses and compiles scenario files in order: each file's text, or why it could not be
/// read, with `${NAME}` expanded in every string value. Ids must be unique and
/// `call`/`cancel` must name one of these scenarios.
pub fn scenarios(
    files: &[(PathBuf, std::io::Result<String>)],
    templates: &Templates,
    gateway: &Gateway,
    i18n: &dyn Messages,
    host: &Host,
    problems: &mut Vec<ConfigError>,
) -> Vec<Arc<Scenario>> {
    let mut scenarios: Vec<Arc<Scenario>> = Vec::new();
    let mut seen_ids: HashMap<String, PathBuf> = HashMap::new();
    let mut cross: Vec<(PathBuf, String, Position, String)> = Vec::new();
    for (file, text) in files {
        let text = match text {
            Ok(t) => t,
            Err(e) => {
                problems.push(ConfigError::at_file(file, format!("cannot read: {e}")));
                continue;
            }
        };
        let expanded = expand(text, host.env);
        let mut cx = FileCx::new(file, text, &expanded, problems, host);
        let Some(raw) = cx.parse::<raw::ScenarioFile>() else {
            continue;
        };
        let mut refs = Vec::new();
        if let Some(sc) = compile_scenario(&raw, &mut cx, templates, gateway, i18n, &mut refs) {
            if let Some(other) = seen_ids.get(&sc.id) {
                cx.err(
                    raw.id.span(),
                    format!(
                        "scenario id '{}' is also used by {}",
                        sc.id,
                        other.display()
                    ),
                );
            } else {
                seen_ids.insert(sc.id.clone(), file.clone());
                scenarios.push(Arc::new(sc));
            }
        }
        for (id, span) in refs {
            cross.push((file.clone(), id, cx.pos(span.start), String::new()));
        }
    }
    for (file, id, pos, _) in cross {
        if !seen_ids.contains_key(&id) {
            problems.push(ConfigError::new(
                &file,
                pos,
                format!("no scenario has id '{id}'"),
            ));
        }
    }
    scenarios
}

#[cfg(test)]
mod testing {
    use super::*;

    use crate::lang::capabilities::{Capabilities, ChoiceLimits, Markup};
    use crate::lang::channel::{Section, SectionCx};

    /// The locale `en` has one message, `hello`.
    struct OnlyHello;

    impl Messages for OnlyHello {
        fn missing_in(&self, id: &str) -> Vec<String> {
            if id == "hello" {
                vec![]
            } else {
                vec!["en".into()]
            }
        }
    }

    /// Two channel types: `log` only writes; `telegram` has what Telegram has.
    struct Kinds;

    impl ChannelKinds for Kinds {
        fn names(&self) -> Vec<&'static str> {
            vec!["log", "telegram"]
        }

        fn parse(
            &self,
            kind: &str,
            section: &Section,
            cx: &mut dyn SectionCx,
        ) -> Option<Option<Channel>> {
            let (kind, caps) = match kind {
                "log" => ("log", Capabilities::WRITE_ONLY),
                "telegram" => {
                    section.text("token", cx);
                    (
                        "telegram",
                        Capabilities {
                            replies: true,
                            choices: Some(ChoiceLimits {
                                max: 100,
                                label_max: None,
                                data_max: 64,
                            }),
                            keyboard: true,
                            keyboard_max: None,
                            links: true,
                            edits: true,
                            answers: true,
                            attachments: true,
                            templates: false,
                            read_receipts: false,
                            mail: false,
                            embeds: false,
                            markup: Markup::Html,
                        },
                    )
                }
                _ => return None,
            };
            section.finish(kind, cx);
            Some(Some(Channel {
                kind,
                caps,
                settings: std::sync::Arc::new(()),
                off: None,
            }))
        }
    }

    /// A gateway file and one scenario file (`s.toml`) compiled with the environment `env`:
    /// the gateway, the scenario if it compiled, and the problems.
    pub(super) fn compile_with_env(
        gateway_text: &str,
        scenario: &str,
        env: &[(&str, &str)],
    ) -> (Gateway, Vec<Arc<Scenario>>, Vec<ConfigError>) {
        let lookup = |name: &str| {
            env.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        };
        let host = Host {
            kinds: &Kinds,
            env: &lookup,
        };
        let mut problems = Vec::new();
        let (raw, gw) = gateway(
            Path::new("gateway.toml"),
            gateway_text,
            &host,
            &mut problems,
        );
        let templates = Templates::new(raw.defaults.template_fuel.unwrap_or(20_000));
        let files = [(PathBuf::from("s.toml"), Ok(scenario.to_string()))];
        let compiled = scenarios(&files, &templates, &gw, &OnlyHello, &host, &mut problems);
        (gw, compiled, problems)
    }

    /// Problems of one scenario file next to a gateway file, as `line:col: message`.
    fn check(gateway_text: &str, scenario: &str) -> Vec<String> {
        let (_, _, problems) = compile_with_env(gateway_text, scenario, &[]);
        problems
            .iter()
            .map(|e| format!("{}:{}: {}", e.pos.line, e.pos.col, e.message))
            .collect()
    }

    pub(super) fn errors(scenario: &str) -> Vec<String> {
        check("[defaults]\nlanguage = \"en\"\n", scenario)
    }

    /// Problems of a scenario next to a gateway file with a Telegram channel `tg`.
    pub(super) fn errors_on_telegram(scenario: &str) -> Vec<String> {
        check(
            "[defaults]\nlanguage = \"en\"\n[channels.tg]\ntype = \"telegram\"\ntoken = \"1:x\"\n",
            scenario,
        )
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::testing::{compile_with_env, errors};
    use crate::lang::model::Trigger;

    #[test]
    fn a_good_scenario_loads() {
        let errs = errors(
            r#"id = "a"
on = { webhook = "h" }
when = 'event.x > 1'
subject = "x:{{ event.id }}"
[[step]]
set = { "run.y" = "event.x * 2", "global.n" = 3 }
[[step]]
send = { to = "log", text = "hello", args = { name = "{{ run.y }}" } }
"#,
        );
        assert!(errs.is_empty(), "{errs:?}");
    }

    #[test]
    fn unknown_keys_report_their_position() {
        let errs =
            errors("id = \"a\"\non = { webhook = \"h\" }\n[[step]]\nsnd = { to = \"log\" }\n");
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].starts_with("4:1: unknown field `snd`"), "{errs:?}");
    }

    #[test]
    fn env_references_are_expanded_in_every_string_value() {
        let gateway = r#"[defaults]
language = "${LANG_CODE}"
retry_delay = "${DELAY}"

[channels.tg]
type = "telegram"
token = "${TG_TOKEN}"

[hooks.crm]
idempotency_field = "${ID_FIELD}"
secret = { header = "${SECRET_HEADER}", value = "${CRM_SECRET}" }

[[staff]]
id = "elena"
name = "${ELENA_NAME}"
groups = ["${GROUP}", "all"]
"#;
        let scenario = r#"id = "a"
on = { webhook = "${HOOK}" }
when = 'event.stage == "${STAGE}"'
subject = "deal:{{ event.id }}-$${NOT_A_VARIABLE}"
[[step]]
set = { "run.y" = "${EXPR}" }
[[step]]
send = { to = "log", text = "hello" }
"#;
        let env = [
            ("LANG_CODE", "en"),
            ("DELAY", "3s"),
            ("TG_TOKEN", "1:x"),
            ("ID_FIELD", "event_id"),
            ("SECRET_HEADER", "X-Crm"),
            ("CRM_SECRET", "s3cret"),
            ("ELENA_NAME", "Elena \"E\" K."),
            ("GROUP", "sales"),
            ("HOOK", "crm"),
            ("STAGE", "new"),
            ("EXPR", "event.n * 2"),
        ];
        let (gw, scenarios, problems) = compile_with_env(gateway, scenario, &env);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(gw.language, "en");
        assert_eq!(gw.retry_delay, Duration::from_secs(3));
        let crm = &gw.hooks["crm"];
        assert_eq!(crm.idempotency_field.as_deref(), Some("event_id"));
        assert_eq!(crm.secret, Some(("X-Crm".into(), "s3cret".into())));
        assert_eq!(gw.staff[0].name, "Elena \"E\" K.");
        assert_eq!(gw.staff[0].groups, ["sales", "all"]);
        let sc = &scenarios[0];
        assert!(matches!(&sc.trigger, Trigger::Webhook(h) if h == "crm"));
        assert_eq!(sc.when.as_ref().unwrap().src, "event.stage == \"new\"");
        assert_eq!(
            sc.subject.as_ref().unwrap().source(),
            "deal:{{ event.id }}-${NOT_A_VARIABLE}"
        );
    }

    #[test]
    fn unset_variables_and_references_in_keys_are_reported_where_they_are() {
        let gateway = "[defaults]\nlanguage = \"en\"\nretry_delay = \"${DELAY}\"\n\
                       [hooks.\"${HOOK}\"]\nidempotency_field = \"id\"\n";
        let scenario = "id = \"a\"\non = { webhook = \"h\" }\n[[step]]\n\
                        set = { \"run.y\" = \"1 + ${UNSET_A}\" }\n";
        let (_, _, problems) = compile_with_env(gateway, scenario, &[]);
        let problems: Vec<String> = problems.iter().map(ToString::to_string).collect();
        // One problem per value: neither a bad duration nor a bad expression follows.
        assert_eq!(
            problems,
            [
                "gateway.toml:3:16: environment variable DELAY is not set",
                "gateway.toml:4:8: `${…}` is not expanded in keys, only in string values",
                "s.toml:4:24: environment variable UNSET_A is not set",
            ],
        );
    }

    #[test]
    fn a_reference_where_no_text_belongs_is_reported_as_such() {
        let (_, _, problems) = compile_with_env(
            "[server]\nmax_body_bytes = \"${MAX_BODY}\"\n",
            "id = \"a\"\non = { webhook = \"h\" }\n[[step]]\nstop = true\n",
            &[("MAX_BODY", "1024")],
        );
        assert_eq!(problems.len(), 1, "{problems:?}");
        let p = problems[0].to_string();
        assert!(p.starts_with("gateway.toml:2:18: invalid type"), "{p}");
        assert!(p.contains("expands only into text"), "{p}");
    }

    #[test]
    fn a_dollar_brace_that_starts_no_reference_is_reported() {
        let (_, _, problems) = compile_with_env(
            "[defaults]\nlanguage = \"en\"\n",
            "id = \"a\"\non = { webhook = \"h\" }\n[[step]]\n\
             send = { to = \"log\", template = \"costs ${PRICE\" }\n",
            &[("PRICE", "5")],
        );
        let problems: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("s.toml:4:40: `${` starts no environment reference"),
            "{problems:?}"
        );
    }
}
