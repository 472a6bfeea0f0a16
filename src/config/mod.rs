//! Loading `bot-configs/`: reads the folder and the locales, wires the real channel
//! capabilities, Fluent messages and environment into the compiler (`crate::lang`), and
//! assembles the `Config` the gateway runs.

pub mod live;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::i18n::I18n;
use crate::lang::compile::{self, Host, Messages};
use crate::lang::expr::Templates;

pub use crate::lang::error::{ConfigError, ConfigErrors, Position};
pub use crate::lang::model::*;
pub use crate::lang::{model, raw};

/// The JSON Schema of the config files (`switchboard schema`), for editors: the language's,
/// with each channel type's section as the schema of `[channels.<name>]`.
pub fn json_schema() -> serde_json::Value {
    let mut schema = crate::lang::schema::json_schema();
    let sections: Vec<serde_json::Value> = crate::channels::REGISTRY
        .iter()
        .map(|kind| channel_section(kind))
        .collect();
    if let Some(serde_json::Value::Object(channels)) =
        schema.pointer_mut("/definitions/gateway/properties/channels")
    {
        channels.insert(
            "additionalProperties".into(),
            serde_json::json!({ "oneOf": sections }),
        );
    }
    schema
}

/// The schema of a channel type's section with the keys every type takes (`hours`, and
/// `per_recipient` and `over` in `limits`), which the language reads before the type does.
fn channel_section(kind: &crate::channels::Kind) -> serde_json::Value {
    use serde_json::Value as Json;
    let mut section = (kind.schema)();
    let Some(Json::Object(properties)) = section.get_mut("properties") else {
        return section;
    };
    let Json::Object(shared) = compile::channel_rules_schema() else {
        return section;
    };
    for (key, common) in shared {
        let Some(own) = properties.get_mut(&key) else {
            properties.insert(key, common);
            continue;
        };
        // The type's own table (its `limits`) gains the shared keys and their description.
        if let (Some(Json::String(d)), Some(more)) = (
            own.get_mut("description"),
            common.get("description").and_then(Json::as_str),
        ) {
            d.push(' ');
            d.push_str(more);
        }
        if let (Some(Json::Object(p)), Some(Json::Object(more))) =
            (own.get_mut("properties"), common.get("properties"))
        {
            p.extend(more.clone());
        }
    }
    section
}

/// The gateway file's name inside the config folder; every other `*.toml` is a scenario.
pub const GATEWAY_FILE: &str = "gateway.toml";

/// Everything loaded from one config folder.
/// The ending of files that hold tests of scenarios beside them.
pub const TEST_FILE_SUFFIX: &str = ".test.toml";

pub struct Config {
    pub dir: PathBuf,
    pub gateway: Gateway,
    pub scenarios: Vec<Arc<Scenario>>,
    pub templates: Templates,
    pub i18n: I18n,
    /// The locales folder the texts came from.
    pub locales: PathBuf,
    /// The text of every scenario file, as loaded.
    sources: Vec<(PathBuf, String)>,
    /// Scenario id → the SHA-256 (hex) of its file's text: the version new runs start with.
    hashes: HashMap<String, String>,
    /// The parts of the gateway file a running gateway cannot change: `[server]`,
    /// `[database]` and each channel's connection (everything but `hours` and the
    /// per-recipient limit). A reload that changes them is refused.
    pub restart_only: toml::Table,
    by_id: HashMap<String, usize>,
    by_hook: HashMap<String, Vec<usize>>,
    by_channel: HashMap<String, Vec<usize>>,
    /// hook name → (scenario index, step index) of `wait` steps listening to it.
    waits_by_hook: HashMap<String, Vec<(usize, usize)>>,
}

impl Config {
    pub fn new(
        dir: PathBuf,
        gateway: Gateway,
        scenarios: Vec<Arc<Scenario>>,
        templates: Templates,
        i18n: I18n,
    ) -> Config {
        let mut by_id = HashMap::new();
        let mut by_hook: HashMap<String, Vec<usize>> = HashMap::new();
        let mut by_channel: HashMap<String, Vec<usize>> = HashMap::new();
        let mut waits_by_hook: HashMap<String, Vec<(usize, usize)>> = HashMap::new();
        for (i, sc) in scenarios.iter().enumerate() {
            by_id.insert(sc.id.clone(), i);
            match &sc.trigger {
                Trigger::Webhook(h) => by_hook.entry(h.clone()).or_default().push(i),
                Trigger::Message(c) => by_channel.entry(c.clone()).or_default().push(i),
                _ => {}
            }
            for (j, st) in sc.steps.iter().enumerate() {
                if let Action::Wait(w) = &st.action {
                    waits_by_hook
                        .entry(w.hook.clone())
                        .or_default()
                        .push((i, j));
                }
            }
        }
        Config {
            dir,
            gateway,
            scenarios,
            templates,
            i18n,
            locales: PathBuf::new(),
            sources: Vec::new(),
            hashes: HashMap::new(),
            restart_only: toml::Table::new(),
            by_id,
            by_hook,
            by_channel,
            waits_by_hook,
        }
    }

    /// Scenarios started by a click on button `button` under a message on `channel`.
    pub fn scenarios_for_click<'a>(
        &'a self,
        channel: &'a str,
        button: &'a str,
    ) -> impl Iterator<Item = &'a Arc<Scenario>> {
        self.scenarios.iter().filter(move |sc| match &sc.trigger {
            Trigger::Click {
                channel: c,
                button: b,
            } => c == channel && b.as_deref().is_none_or(|b| b == button),
            _ => false,
        })
    }

    /// Scenarios started by messages on a chat channel.
    pub fn scenarios_for_messages(&self, channel: &str) -> impl Iterator<Item = &Arc<Scenario>> {
        self.by_channel
            .get(channel)
            .into_iter()
            .flatten()
            .map(|&i| &self.scenarios[i])
    }

    /// Scenarios started by delivery statuses on a channel.
    pub fn scenarios_for_status<'a>(
        &'a self,
        channel: &'a str,
    ) -> impl Iterator<Item = &'a Arc<Scenario>> {
        self.scenarios
            .iter()
            .filter(move |sc| matches!(&sc.trigger, Trigger::Status(c) if c == channel))
    }

    /// Scenarios started by failed runs and sends of scenario `failed`.
    pub fn scenarios_for_failure<'a>(
        &'a self,
        failed: &'a str,
    ) -> impl Iterator<Item = &'a Arc<Scenario>> {
        self.scenarios.iter().filter(move |sc| match &sc.trigger {
            Trigger::Failed(ids) => ids
                .as_ref()
                .is_none_or(|ids| ids.iter().any(|i| i == failed)),
            _ => false,
        })
    }

    /// Whether any scenario follows failures (else nothing is looked up when a run fails).
    pub fn has_failure_scenarios(&self) -> bool {
        self.scenarios
            .iter()
            .any(|sc| matches!(sc.trigger, Trigger::Failed(_)))
    }

    /// Scenarios started by an event of `kind` that started no run. Delivery statuses go
    /// only to a fallback that names them: every message sent has several.
    pub fn scenarios_for_unmatched<'a>(
        &'a self,
        kind: &'a str,
    ) -> impl Iterator<Item = &'a Arc<Scenario>> {
        self.scenarios.iter().filter(move |sc| match &sc.trigger {
            Trigger::Unmatched(Some(k)) => k == kind,
            Trigger::Unmatched(None) => kind != "status",
            _ => false,
        })
    }

    /// The version (SHA-256 of the file's text) new runs of scenario `id` start with.
    pub fn version_of(&self, id: &str) -> Option<&str> {
        self.hashes.get(id).map(String::as_str)
    }

    /// Every scenario's version: (hash, scenario id, the file's text).
    pub fn versions(&self) -> Vec<(String, String, String)> {
        self.scenarios
            .iter()
            .filter_map(|sc| {
                let hash = self.hashes.get(&sc.id)?;
                let (_, text) = self.sources.iter().find(|(f, _)| *f == sc.file)?;
                Some((hash.clone(), sc.id.clone(), text.clone()))
            })
            .collect()
    }

    /// Compiles another version of scenario `id` (a text stored earlier) against this
    /// config: its gateway, locales and the other scenarios as they are now.
    pub fn compile_version(&self, id: &str, text: &str) -> Result<Arc<Scenario>, ConfigErrors> {
        let env = |k: &str| std::env::var(k).ok();
        let host = Host {
            kinds: &crate::channels::Registry,
            env: &env,
        };
        let current = self.scenario(id).map(|sc| sc.file.clone());
        let path = current
            .clone()
            .unwrap_or_else(|| self.dir.join(format!("{id}.toml")));
        let mut texts: Vec<(PathBuf, std::io::Result<String>)> = self
            .sources
            .iter()
            .filter(|(f, _)| Some(f) != current.as_ref())
            .map(|(f, t)| (f.clone(), Ok(t.clone())))
            .collect();
        texts.push((path.clone(), Ok(text.to_string())));
        let mut problems = Vec::new();
        let compiled = compile::scenarios(
            &texts,
            &self.templates,
            &self.gateway,
            &self.i18n,
            &host,
            &mut problems,
        );
        let problems: Vec<ConfigError> = problems.into_iter().filter(|p| p.file == path).collect();
        match compiled
            .into_iter()
            .find(|sc| sc.file == path && sc.id == id)
        {
            Some(sc) if problems.is_empty() => Ok(sc),
            _ if problems.is_empty() => Err(ConfigErrors(vec![ConfigError::at_file(
                &path,
                format!("this version does not define scenario '{id}'"),
            )])),
            _ => Err(ConfigErrors(problems)),
        }
    }

    pub fn scenario(&self, id: &str) -> Option<&Arc<Scenario>> {
        self.by_id.get(id).map(|&i| &self.scenarios[i])
    }

    pub fn scenarios_for_hook(&self, hook: &str) -> impl Iterator<Item = &Arc<Scenario>> {
        self.by_hook
            .get(hook)
            .into_iter()
            .flatten()
            .map(|&i| &self.scenarios[i])
    }

    pub fn waits_for_hook(&self, hook: &str) -> impl Iterator<Item = (&Arc<Scenario>, usize)> {
        self.waits_by_hook
            .get(hook)
            .into_iter()
            .flatten()
            .map(|&(i, j)| (&self.scenarios[i], j))
    }

    /// A hook is known when the gateway configures it or a scenario or wait listens to it;
    /// with a fallback for unmatched webhooks, every hook is.
    pub fn hook_known(&self, hook: &str) -> bool {
        self.scenarios_for_unmatched("webhook").next().is_some()
            || self.gateway.hooks.contains_key(hook)
            || self.by_hook.contains_key(hook)
            || self.waits_by_hook.contains_key(hook)
    }
}

impl Messages for I18n {
    fn missing_in(&self, id: &str) -> Vec<String> {
        I18n::missing_in(self, id)
            .into_iter()
            .map(str::to_string)
            .collect()
    }
}

/// Loads and checks the whole folder. Every problem is collected before failing.
pub fn load(dir: &Path) -> Result<Config, ConfigErrors> {
    load_dir(dir, None).map_err(ConfigErrors)
}

/// Loads the folder again for a running gateway: the template environment of `running` is
/// kept when the fuel is the same. Parts that need a restart are compared by the caller.
pub fn reload(dir: &Path, running: &Config) -> Result<Config, ConfigErrors> {
    load_dir(dir, Some(&running.templates)).map_err(ConfigErrors)
}

fn load_dir(dir: &Path, keep: Option<&Templates>) -> Result<Config, Vec<ConfigError>> {
    let env = |k: &str| std::env::var(k).ok();
    let host = Host {
        kinds: &crate::channels::Registry,
        env: &env,
    };
    let mut problems = Vec::new();
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.filter_map(|e| e.ok()).map(|e| e.path()).collect(),
        Err(e) => {
            return Err(vec![ConfigError::at_file(
                dir,
                format!("cannot read the config folder: {e}"),
            )])
        }
    };
    // `*.test.toml` files hold tests of scenarios (`switchboard test`), not scenarios.
    files.retain(|p| {
        p.extension().is_some_and(|e| e == "toml")
            && !p.to_string_lossy().ends_with(TEST_FILE_SUFFIX)
    });
    files.sort();

    let gateway_path = dir.join(GATEWAY_FILE);
    let gateway_text = std::fs::read_to_string(&gateway_path).unwrap_or_default();
    let (raw_gateway, gateway) =
        compile::gateway(&gateway_path, &gateway_text, &host, &mut problems);
    if !problems.is_empty() && toml::from_str::<toml::Table>(&gateway_text).is_err() {
        // Scenarios checked against a gateway file that does not parse would only repeat
        // it as unknown channels and staff.
        return Err(problems);
    }
    let fuel = raw_gateway.defaults.template_fuel.unwrap_or(20_000);
    let templates = match keep {
        Some(t) if t.fuel() == fuel => t.clone(),
        _ => Templates::new(fuel),
    };
    let locales = match &raw_gateway.defaults.locales {
        Some(l) => dir.join(l.get()),
        None => {
            let beside = dir.join("..").join("locales");
            if beside.is_dir() {
                beside
            } else {
                dir.join("locales")
            }
        }
    };
    let i18n = I18n::load(&locales, &gateway.language, &mut problems);
    if !i18n.languages().any(|l| l == gateway.language) {
        problems.push(ConfigError::at_file(
            &locales,
            format!(
                "the default language '{}' has no locale folder",
                gateway.language
            ),
        ));
    }

    let texts: Vec<(PathBuf, std::io::Result<String>)> = files
        .into_iter()
        .filter(|f| *f != gateway_path)
        .map(|f| {
            let text = std::fs::read_to_string(&f);
            (f, text)
        })
        .collect();
    let scenarios = compile::scenarios(&texts, &templates, &gateway, &i18n, &host, &mut problems);
    if !problems.is_empty() {
        return Err(problems);
    }
    let sources: Vec<(PathBuf, String)> = texts
        .into_iter()
        .filter_map(|(f, t)| Some((f, t.ok()?)))
        .collect();
    let hashes = scenarios
        .iter()
        .filter_map(|sc| {
            let (_, text) = sources.iter().find(|(f, _)| *f == sc.file)?;
            Some((sc.id.clone(), version_hash(text)))
        })
        .collect();
    let mut cfg = Config::new(dir.to_path_buf(), gateway, scenarios, templates, i18n);
    cfg.sources = sources;
    cfg.locales = locales;
    cfg.hashes = hashes;
    cfg.restart_only = restart_only(&gateway_text);
    Ok(cfg)
}

/// A scenario file's version: the SHA-256 of its text, in hex.
pub fn version_hash(text: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

/// Sections of the gateway file that take a restart to change: what the listeners, the
/// store, the outgoing-request guard and the channels' sessions were built from.
const RESTART_ONLY: [&str; 4] = ["server", "database", "http", "channels"];

/// The parts of a gateway file that take a restart to change (see `Config::restart_only`).
fn restart_only(gateway_text: &str) -> toml::Table {
    let mut table = toml::from_str::<toml::Table>(gateway_text).unwrap_or_default();
    table.retain(|k, _| RESTART_ONLY.contains(&k));
    if let Some(toml::Value::Table(channels)) = table.get_mut("channels") {
        for (_, ch) in channels.iter_mut() {
            let Some(ch) = ch.as_table_mut() else {
                continue;
            };
            ch.remove("hours");
            if let Some(toml::Value::Table(limits)) = ch.get_mut("limits") {
                limits.remove("per_recipient");
                limits.remove("over");
            }
        }
    }
    table
}

/// What differs between two configs' restart-only parts, as `[section]` names.
pub fn restart_needed(running: &Config, next: &Config) -> Vec<String> {
    let (a, b) = (&running.restart_only, &next.restart_only);
    let mut changed = Vec::new();
    for key in RESTART_ONLY.iter().filter(|k| **k != "channels") {
        if a.get(*key) != b.get(*key) {
            changed.push(format!("[{key}]"));
        }
    }
    let empty = toml::Table::new();
    let channels = |t: &toml::Table| -> toml::Table {
        match t.get("channels") {
            Some(toml::Value::Table(c)) => c.clone(),
            _ => empty.clone(),
        }
    };
    let (ca, cb) = (channels(a), channels(b));
    let mut names: Vec<&String> = ca.keys().chain(cb.keys()).collect();
    names.sort();
    names.dedup();
    for name in names {
        match (ca.get(name), cb.get(name)) {
            (Some(x), Some(y)) if x == y => {}
            (Some(_), Some(_)) => changed.push(format!("[channels.{name}] changed")),
            (None, _) => changed.push(format!("[channels.{name}] added")),
            (_, None) => changed.push(format!("[channels.{name}] removed")),
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use serde_json::Value as Json;

    use super::compile;
    use crate::lang::schema::tests::agrees;

    /// Each channel type's section in the schema, by type name.
    fn sections() -> Vec<(String, Json)> {
        let schema = super::json_schema();
        let one_of = schema
            .pointer("/definitions/gateway/properties/channels/additionalProperties/oneOf")
            .and_then(Json::as_array)
            .expect("the channels' sections")
            .clone();
        one_of
            .into_iter()
            .map(|s| {
                let name = s
                    .pointer("/properties/type/const")
                    .and_then(Json::as_str)
                    .expect("a section fixes its type")
                    .to_string();
                (name, s)
            })
            .collect()
    }

    fn section(sections: &[(String, Json)], kind: &str) -> Json {
        sections
            .iter()
            .find(|(n, _)| n == kind)
            .map(|(_, s)| s.clone())
            .unwrap_or_else(|| panic!("no section of type '{kind}'"))
    }

    /// Calls `f` with the path and schema of every property under `schema`, nested ones too.
    fn each_property(schema: &Json, at: &str, f: &mut dyn FnMut(&str, &Json)) {
        if let Some(Json::Object(properties)) = schema.get("properties") {
            for (key, p) in properties {
                let path = format!("{at}.{key}");
                f(&path, p);
                each_property(p, &path, f);
            }
        }
    }

    #[test]
    fn the_channel_schema_has_every_type() {
        let names: Vec<String> = sections().into_iter().map(|(n, _)| n).collect();
        let kinds: Vec<&str> = crate::channels::REGISTRY.iter().map(|k| k.name).collect();
        assert_eq!(names, kinds);
        let channels = &super::json_schema()["definitions"]["gateway"]["properties"]["channels"];
        assert!(channels["description"].is_string() && channels["examples"].is_array());
    }

    /// Every key of every section, nested ones too, has a description and an example.
    #[test]
    fn every_key_of_the_channel_schema_has_a_description_and_an_example() {
        let mut missing = Vec::new();
        for (name, s) in sections() {
            each_property(&s, &name, &mut |path, p| {
                let described = p
                    .get("description")
                    .and_then(Json::as_str)
                    .is_some_and(|d| !d.trim().is_empty());
                if !described {
                    missing.push(format!("{path}: no description"));
                }
                let example = p
                    .get("examples")
                    .and_then(Json::as_array)
                    .is_some_and(|e| !e.is_empty());
                if !example {
                    missing.push(format!("{path}: no example"));
                }
            });
        }
        assert!(missing.is_empty(), "{missing:#?}");
    }

    /// Each example is of its key's declared type, and a table's example uses only its keys.
    #[test]
    fn channel_schema_examples_agree_with_the_declared_types() {
        let mut wrong = Vec::new();
        for (name, s) in sections() {
            each_property(&s, &name, &mut |path, p| {
                for example in p
                    .get("examples")
                    .and_then(Json::as_array)
                    .into_iter()
                    .flatten()
                {
                    if let Err(e) = agrees(p, example) {
                        wrong.push(format!("{path}: {e}"));
                    }
                }
            });
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
        let port = serde_json::json!({ "type": ["integer", "string"] });
        assert!(agrees(&port, &serde_json::json!(587)).is_ok());
        assert!(agrees(&port, &serde_json::json!(true)).is_err());
        let table =
            serde_json::json!({ "type": "object", "properties": { "a": { "type": "string" } } });
        assert!(agrees(&table, &serde_json::json!({ "a": "x" })).is_ok());
        assert!(agrees(&table, &serde_json::json!({ "a": 1 })).is_err());
        assert!(agrees(&table, &serde_json::json!({ "b": "x" })).is_err());
    }

    /// The keys a parser reads, as it lists them when it reports the unknown key `zzz` in the
    /// section `[channels.x]` written as `text` (`None`: nothing reported about `zzz`).
    fn keys_read(text: &str) -> Option<Vec<String>> {
        let (problems, _) = crate::channels::testing::gateway(text);
        let problem = problems.iter().find(|p| p.contains("zzz"))?;
        let (_, list) = problem.rsplit_once('(')?;
        let list = list.trim_end_matches(')');
        let list = list.strip_prefix("it takes: ").unwrap_or(list);
        let mut keys: Vec<String> = list.split(", ").map(str::to_string).collect();
        keys.sort();
        Some(keys)
    }

    /// Each section and each table in it has a property for every key its parser reads (and
    /// none it does not), as the parser lists them when it reports an unknown key.
    #[test]
    fn the_channel_schema_has_every_key_the_parsers_read() {
        let Json::Object(shared) = compile::channel_rules_schema() else {
            panic!("the shared keys are a table");
        };
        let own_keys = |schema: &Json, shared: Option<&Json>| -> Vec<String> {
            let mut keys: Vec<String> = schema["properties"]
                .as_object()
                .into_iter()
                .flat_map(|p| p.keys())
                .filter(|k| {
                    shared
                        .and_then(|s| s.get("properties"))
                        .is_none_or(|s| s.get(k.as_str()).is_none())
                })
                .cloned()
                .collect();
            keys.sort();
            keys
        };
        let mut checked = 0;
        for (name, s) in sections() {
            let head = format!("[channels.x]\ntype = \"{name}\"\n");
            let kind = crate::channels::REGISTRY.iter().find(|k| k.name == name);
            let mut top = own_keys(&(kind.unwrap().schema)(), None);
            top.retain(|k| k != "type");
            assert_eq!(
                keys_read(&format!("{head}zzz = \"\"\n")),
                Some(top),
                "{name}"
            );
            for (key, p) in s["properties"].as_object().unwrap() {
                if p.get("properties").is_none() {
                    continue;
                }
                // A type's table less the keys the language takes out of it first (its
                // `limits` less `per_recipient` and `over`); `hours` is the language's own.
                let expected = match own_keys(p, shared.get(key.as_str())) {
                    // A log channel's `limits` has no rates: nothing lists its keys.
                    keys if keys.is_empty() && key == "limits" => continue,
                    keys if keys.is_empty() => own_keys(p, None),
                    keys => keys,
                };
                let read = keys_read(&format!("{head}{key} = {{ zzz = \"\" }}\n"));
                assert_eq!(read, Some(expected), "{name}.{key}");
                checked += 1;
            }
        }
        assert!(checked >= 14, "tables checked: {checked}");
    }

    /// The channel sections of a gateway file, checked against the schema: problems as
    /// `channel: key: what is wrong`.
    fn check_channels(gateway: &toml::Table, sections: &[(String, Json)]) -> Vec<String> {
        let mut problems = Vec::new();
        let channels = gateway.get("channels").and_then(toml::Value::as_table);
        for (name, ch) in channels.into_iter().flatten() {
            let ch = serde_json::to_value(ch).expect("TOML is JSON");
            let kind = ch["type"].as_str().unwrap_or_default();
            let schema = section(sections, kind);
            if let Err(e) = agrees(&schema, &ch) {
                problems.push(format!("{name}: {e}"));
            }
        }
        problems
    }

    /// Every key the example gateway file and the README's gateway examples set in a channel
    /// section is a key of its type's section, of the declared type.
    #[test]
    fn the_example_gateway_files_follow_the_channel_schema() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let sections = sections();
        let text = std::fs::read_to_string(root.join("bot-configs/gateway.toml")).unwrap();
        let gateway: toml::Table = toml::from_str(&text).unwrap();
        let channels = gateway["channels"].as_table().unwrap();
        assert!(channels.len() >= 5, "the example configures its channels");
        let problems = check_channels(&gateway, &sections);
        assert!(
            problems.is_empty(),
            "bot-configs/gateway.toml: {problems:#?}"
        );

        let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
        let mut checked = 0;
        for block in readme.split("```toml\n").skip(1) {
            let block = block.split("```").next().unwrap_or_default();
            if !block.contains("[channels.") {
                continue;
            }
            let gateway: toml::Table = toml::from_str(block)
                .unwrap_or_else(|e| panic!("a README example does not parse: {e}\n{block}"));
            let problems = check_channels(&gateway, &sections);
            assert!(problems.is_empty(), "README.md: {problems:#?}\n{block}");
            checked += 1;
        }
        assert!(checked >= 5, "the README's channel examples: {checked}");

        // A key the schema lacks is found.
        let typo: toml::Table =
            toml::from_str("[channels.tg]\ntype = \"telegram\"\ntoken = \"\"\ntokn = \"\"\n")
                .unwrap();
        assert_eq!(
            check_channels(&typo, &sections),
            vec!["tg: tokn: no such key"]
        );
    }

    /// The examples of each type's keys, written together as one section, are read by the
    /// type's parser without problems.
    #[test]
    fn the_channel_schema_examples_parse_as_channels() {
        let env = |name: &str| {
            Some(match name {
                n if n.ends_with("_URL") => "https://example.com/api/webhooks/1/x".to_string(),
                n if n.ends_with("_ID") => "1234567890".to_string(),
                n if n.ends_with("_KEY") => "ab".repeat(32),
                _ => "value".to_string(),
            })
        };
        let host = compile::Host {
            kinds: &crate::channels::Registry,
            env: &env,
        };
        for (name, s) in sections() {
            let mut section = toml::Table::new();
            for (key, p) in s["properties"].as_object().unwrap() {
                let example = p["examples"][0].clone();
                section.insert(key.clone(), toml::Value::try_from(example).unwrap());
            }
            let mut channels = toml::Table::new();
            channels.insert("x".into(), toml::Value::Table(section));
            let mut file = toml::Table::new();
            file.insert("channels".into(), toml::Value::Table(channels));
            let text = toml::to_string(&file).unwrap();
            let mut problems = Vec::new();
            let (_, gateway) =
                compile::gateway(Path::new("gateway.toml"), &text, &host, &mut problems);
            let problems: Vec<&str> = problems.iter().map(|p| p.message.as_str()).collect();
            assert!(problems.is_empty(), "{name}: {problems:#?}\n{text}");
            assert_eq!(gateway.channels["x"].kind(), name);
            assert_eq!(gateway.channels["x"].off, None, "{name}");
        }
    }
}
