//! From raw files to the checked model: every problem is reported with its position and
//! all of them are collected before the load fails.

mod ask;
mod buttons;
mod cx;
mod gateway;
mod http;
mod offer;
mod scenario;
mod send;
mod small;
pub mod values;
mod wait;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use self::cx::FileCx;
use self::gateway::compile_gateway;
use self::scenario::compile_scenario;
use super::channel::ChannelKinds;
use super::error::{ConfigError, Position};
use super::expr::Templates;
use super::model::*;
use super::raw;

/// What the compiler asks of the rest of the gateway; config loading wires the real ones.
pub struct Host<'a> {
    /// The channel types, which parse their own sections.
    pub kinds: &'a dyn ChannelKinds,
    /// The value of an environment variable, for `${NAME}`.
    pub env: &'a dyn Fn(&str) -> Option<String>,
}

/// The Fluent messages scenarios may name.
pub trait Messages {
    /// Locales that lack the message `id`.
    fn missing_in(&self, id: &str) -> Vec<String>;
}

fn toml_error(file: &Path, text: &str, e: toml::de::Error) -> ConfigError {
    let pos = Position::of(text, e.span().map(|s| s.start).unwrap_or(0));
    // One line per problem: TOML's multi-line messages are joined.
    let message = e
        .message()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    // The TOML parser says nothing of some characters (a NUL, say).
    let message = if message.is_empty() {
        "this is not valid TOML (a control character?)".to_string()
    } else {
        message
    };
    ConfigError::new(file, pos, message)
}

/// Parses and compiles the gateway file. The raw file comes back too: loading needs its
/// template fuel and locales folder.
pub fn gateway(
    file: &Path,
    text: &str,
    host: &Host,
    problems: &mut Vec<ConfigError>,
) -> (raw::GatewayFile, Gateway) {
    let raw_gateway = match toml::from_str::<raw::GatewayFile>(text) {
        Ok(g) => g,
        Err(e) => {
            problems.push(toml_error(file, text, e));
            raw::GatewayFile::default()
        }
    };
    let gateway = compile_gateway(
        &raw_gateway,
        &mut FileCx {
            file,
            text,
            problems,
            host,
        },
    );
    (raw_gateway, gateway)
}

/// Parses and compiles scenario files in order: each file's text, or why it could not be
/// read. Ids must be unique and `call`/`cancel` must name one of these scenarios.
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
        let raw: raw::ScenarioFile = match toml::from_str(text) {
            Ok(r) => r,
            Err(e) => {
                problems.push(toml_error(file, text, e));
                continue;
            }
        };
        let mut cx = FileCx {
            file,
            text,
            problems,
            host,
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
            cross.push((
                file.clone(),
                id,
                Position::of(text, span.start),
                String::new(),
            ));
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

    /// Problems of one scenario file next to a gateway file, as `line:col: message`.
    fn check(gateway_text: &str, scenario: &str) -> Vec<String> {
        let host = Host {
            kinds: &Kinds,
            env: &|_| None,
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
        scenarios(&files, &templates, &gw, &OnlyHello, &host, &mut problems);
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
    use super::testing::errors;

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
}
