//! The config a running gateway serves, replaced as a whole by a reload, and the older
//! versions of scenarios that unfinished runs still follow.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use super::{Config, Scenario};

/// What a run's version of its scenario resolves to.
pub enum Version {
    Found(Arc<Scenario>),
    /// A version this process has not compiled yet: its text is in the store.
    Unknown(String),
    /// Why the run cannot go on.
    Missing(String),
}

/// A refused reload: when, and what was wrong.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Refusal {
    pub at_ms: i64,
    pub errors: Vec<String>,
}

pub struct Live {
    current: ArcSwap<Config>,
    /// Versions other than the current ones that runs use: hash → compiled scenario.
    older: RwLock<HashMap<String, Arc<Scenario>>>,
    /// Versions that do not compile against the current config: hash → why.
    broken: RwLock<HashMap<String, String>>,
    refused: RwLock<Option<Refusal>>,
    /// `[hooks.*]` settings a reload removed, kept while older versions wait on the hook:
    /// the hook stays open for their runs with its secret still checked.
    retired_hooks: RwLock<HashMap<String, super::Hook>>,
    /// Whether an older version in memory reads or writes globals.
    older_globals: std::sync::atomic::AtomicBool,
    loaded_at: std::sync::atomic::AtomicI64,
    generation: watch::Sender<u64>,
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

impl Live {
    pub fn new(cfg: Arc<Config>, now_ms: i64) -> Live {
        Live {
            current: ArcSwap::new(cfg),
            older: RwLock::default(),
            broken: RwLock::default(),
            refused: RwLock::default(),
            retired_hooks: RwLock::default(),
            older_globals: false.into(),
            loaded_at: now_ms.into(),
            generation: watch::channel(0).0,
        }
    }

    /// The config new events are served with.
    pub fn config(&self) -> Arc<Config> {
        self.current.load_full()
    }

    /// Changes (a counter) each time a new config is installed.
    pub fn installed(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// When the current config was loaded (ms).
    pub fn loaded_at(&self) -> i64 {
        self.loaded_at.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The last reload refused since the current config was installed.
    pub fn refused(&self) -> Option<Refusal> {
        read(&self.refused).clone()
    }

    pub fn refuse(&self, refusal: Refusal) {
        *write(&self.refused) = Some(refusal);
    }

    /// Serves `next` from now on. Older versions are kept only where runs use them, and the
    /// versions being replaced until the next install (a batch still being served by the
    /// outgoing config may start runs on them).
    pub fn install(&self, next: Arc<Config>, in_use: &[String], now_ms: i64) {
        let current = self.config();
        {
            let mut older = write(&self.older);
            let mut replaced = Vec::new();
            for sc in &current.scenarios {
                if let Some(hash) = current.version_of(&sc.id) {
                    if next.version_of(&sc.id) != Some(hash) {
                        older.insert(hash.to_string(), sc.clone());
                        replaced.push(hash.to_string());
                    }
                }
            }
            older.retain(|hash, sc| {
                (in_use.contains(hash) || replaced.contains(hash))
                    && next.version_of(&sc.id) != Some(hash.as_str())
            });
        }
        {
            let mut retired = write(&self.retired_hooks);
            for (name, hook) in &current.gateway.hooks {
                if !next.gateway.hooks.contains_key(name) {
                    retired.insert(name.clone(), hook.clone());
                }
            }
            for name in next.gateway.hooks.keys() {
                retired.remove(name);
            }
        }
        self.after_change();
        // What did not compile against the old config may against the new one.
        write(&self.broken).clear();
        self.current.store(next);
        *write(&self.refused) = None;
        self.loaded_at
            .store(now_ms, std::sync::atomic::Ordering::Relaxed);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Drops older versions no unfinished run uses.
    pub fn prune(&self, in_use: &[String]) {
        write(&self.older).retain(|hash, _| in_use.contains(hash));
        self.after_change();
    }

    /// Keeps what depends on the older versions in step with them.
    fn after_change(&self) {
        let older = read(&self.older);
        self.older_globals.store(
            older.values().any(|sc| sc.uses_globals),
            std::sync::atomic::Ordering::Relaxed,
        );
        write(&self.retired_hooks).retain(|name, _| older.values().any(|sc| waits_on(sc, name)));
    }

    /// Whether an older version in memory reads or writes globals.
    pub fn older_uses_globals(&self) -> bool {
        self.older_globals
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The scenario a run follows: `version` of scenario `id` (`None`: runs from before
    /// versions, which follow the current one).
    pub fn scenario(&self, id: &str, version: Option<&str>) -> Version {
        let cfg = self.config();
        let current = cfg.scenario(id);
        match version {
            // Runs from before versions were recorded follow the current one.
            None => match current {
                Some(sc) => Version::Found(sc.clone()),
                None => Version::Missing("the scenario is no longer configured".into()),
            },
            Some(hash) if cfg.version_of(id) == Some(hash) => match current {
                Some(sc) => Version::Found(sc.clone()),
                None => Version::Missing("the scenario is no longer configured".into()),
            },
            // Another version, or a scenario since removed: its runs finish as they began.
            Some(hash) => {
                if let Some(sc) = read(&self.older).get(hash) {
                    return Version::Found(sc.clone());
                }
                if let Some(why) = read(&self.broken).get(hash) {
                    return Version::Missing(why.clone());
                }
                Version::Unknown(hash.to_string())
            }
        }
    }

    /// Compiles a stored version (its text) against the current config and keeps it; one that
    /// does not compile is remembered as such (until the next install).
    pub fn add(&self, hash: &str, id: &str, text: &str) -> Result<Arc<Scenario>, String> {
        self.compile(hash, id, text, true)
    }

    /// Like `add`, for a version another replica loaded: one that does not compile here is
    /// not remembered (this replica may not have loaded the config it belongs to yet).
    pub fn learn(&self, hash: &str, id: &str, text: &str) -> Result<Arc<Scenario>, String> {
        self.compile(hash, id, text, false)
    }

    fn compile(
        &self,
        hash: &str,
        id: &str,
        text: &str,
        remember_broken: bool,
    ) -> Result<Arc<Scenario>, String> {
        if let Some(sc) = read(&self.older).get(hash) {
            return Ok(sc.clone());
        }
        if let Some(why) = read(&self.broken).get(hash) {
            return Err(why.clone());
        }
        let cfg = self.config();
        if cfg.version_of(id) == Some(hash) {
            if let Some(sc) = cfg.scenario(id) {
                return Ok(sc.clone());
            }
        }
        match cfg.compile_version(id, text) {
            Ok(sc) => {
                write(&self.older).insert(hash.to_string(), sc.clone());
                self.after_change();
                Ok(sc)
            }
            Err(e) => {
                let why = format!(
                    "version {} of scenario '{id}' does not compile against the current config: {}",
                    short(hash),
                    e.0.iter()
                        .map(|p| p.message.as_str())
                        .collect::<Vec<_>>()
                        .join("; ")
                );
                if remember_broken {
                    write(&self.broken).insert(hash.to_string(), why.clone());
                }
                Err(why)
            }
        }
    }

    /// Older versions in memory, for lookups by what they wait for.
    pub fn older(&self) -> Vec<Arc<Scenario>> {
        read(&self.older).values().cloned().collect()
    }

    /// Whether a version is current or in memory.
    pub fn known(&self, hash: &str) -> bool {
        let cfg = self.config();
        read(&self.older).contains_key(hash)
            || cfg
                .scenarios
                .iter()
                .any(|sc| cfg.version_of(&sc.id) == Some(hash))
    }

    /// Older versions in memory: (hash, scenario id).
    pub fn older_versions(&self) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = read(&self.older)
            .iter()
            .map(|(h, sc)| (h.clone(), sc.id.clone()))
            .collect();
        v.sort();
        v
    }

    /// The settings a webhook is received with: the current config's, or, for a hook only an
    /// older version waits on, those it had when a reload removed it. `None`: unknown.
    pub fn hook(&self, name: &str) -> Option<super::Hook> {
        let cfg = self.config();
        if let Some(h) = cfg.gateway.hooks.get(name) {
            return Some(h.clone());
        }
        if cfg.hook_known(name) {
            return Some(super::Hook::default());
        }
        if read(&self.older).values().any(|sc| waits_on(sc, name)) {
            return Some(
                read(&self.retired_hooks)
                    .get(name)
                    .cloned()
                    .unwrap_or_default(),
            );
        }
        None
    }

    /// Whether `sc` is the version a run with `version` follows.
    pub fn is_version(&self, sc: &Arc<Scenario>, version: Option<&str>) -> bool {
        match self.scenario(&sc.id, version) {
            Version::Found(found) => Arc::ptr_eq(&found, sc),
            _ => false,
        }
    }
}

/// Whether a scenario has a `wait` for webhook `hook`.
fn waits_on(sc: &Scenario, hook: &str) -> bool {
    sc.steps
        .iter()
        .any(|st| matches!(&st.action, super::Action::Wait(w) if w.hook == hook))
}

/// How versions are shown: the first 12 hex digits.
pub fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}
