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

    /// Serves `next` from now on. Older versions are kept only where runs use them.
    pub fn install(&self, next: Arc<Config>, in_use: &[String], now_ms: i64) {
        let current = self.config();
        {
            let mut older = write(&self.older);
            // The versions being replaced stay available to the runs that started on them.
            for sc in &current.scenarios {
                if let Some(hash) = current.version_of(&sc.id) {
                    if next.version_of(&sc.id) != Some(hash) {
                        older.insert(hash.to_string(), sc.clone());
                    }
                }
            }
            older.retain(|hash, sc| {
                in_use.contains(hash) && next.version_of(&sc.id) != Some(hash.as_str())
            });
        }
        // What did not compile against the old config may against the new one.
        write(&self.broken).clear();
        self.current.store(next);
        *write(&self.refused) = None;
        self.loaded_at
            .store(now_ms, std::sync::atomic::Ordering::Relaxed);
        self.generation.send_modify(|g| *g += 1);
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

    /// Compiles a stored version (its text) against the current config and keeps it.
    pub fn add(&self, hash: &str, id: &str, text: &str) -> Result<Arc<Scenario>, String> {
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
                write(&self.broken).insert(hash.to_string(), why.clone());
                Err(why)
            }
        }
    }

    /// Older versions in memory, for lookups by what they wait for.
    pub fn older(&self) -> Vec<Arc<Scenario>> {
        read(&self.older).values().cloned().collect()
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

    /// Whether a webhook is known to the current config or waited for by a run of an older
    /// version (whose hook the current config may no longer name).
    pub fn hook_known(&self, hook: &str) -> bool {
        self.config().hook_known(hook)
            || read(&self.older).values().any(|sc| {
                sc.steps
                    .iter()
                    .any(|st| matches!(&st.action, super::Action::Wait(w) if w.hook == hook))
            })
    }

    /// Whether `sc` is the version a run with `version` follows.
    pub fn is_version(&self, sc: &Arc<Scenario>, version: Option<&str>) -> bool {
        match self.scenario(&sc.id, version) {
            Version::Found(found) => Arc::ptr_eq(&found, sc),
            _ => false,
        }
    }
}

/// How versions are shown: the first 12 hex digits.
pub fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}
