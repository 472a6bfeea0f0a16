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
pub use crate::lang::schema::json_schema;
pub use crate::lang::{model, raw};

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
