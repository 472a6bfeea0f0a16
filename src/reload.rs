//! Reloading the config folder while the gateway runs (SIGHUP, `POST /api/config/reload`):
//! the new folder is loaded and checked first; a broken one is refused and the running
//! config stays; a good one replaces it at once. Runs keep the version they started with.

use std::sync::Arc;

use serde::Serialize;

use crate::clock::Clock;
use crate::config::live::{short, Live, Refusal, Version};
use crate::config::{self, Config};
use crate::links::Links;
use crate::store::Store;

/// What a reload changed.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Reloaded {
    /// Scenarios whose file changed (new runs start on the new version).
    pub changed: Vec<String>,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Older versions unfinished runs still follow.
    pub versions_in_use: usize,
}

/// Everything a reload touches besides the config itself.
#[derive(Clone)]
pub struct Reloader {
    pub live: Arc<Live>,
    pub store: Arc<dyn Store>,
    pub clock: Clock,
    pub links: Arc<Links>,
    /// One reload at a time: a slower one must not install an older state of the folder.
    pub lock: Arc<tokio::sync::Mutex<()>>,
}

impl Reloader {
    /// Loads and checks the folder again; installs it when it is good.
    pub async fn reload(&self) -> Result<Reloaded, Refusal> {
        let _one = self.lock.lock().await;
        let now = self.clock.now_ms();
        let running = self.live.config();
        let refuse = |errors: Vec<String>| {
            let r = Refusal { at_ms: now, errors };
            self.live.refuse(r.clone());
            for e in &r.errors {
                tracing::error!(error = %e, "the config was not reloaded");
            }
            r
        };
        let next = match config::reload(&running.dir, &running) {
            Ok(next) => next,
            Err(e) => return Err(refuse(e.0.iter().map(|p| p.to_string()).collect())),
        };
        let restart = config::restart_needed(&running, &next);
        if !restart.is_empty() {
            let gateway = running.dir.join(config::GATEWAY_FILE);
            return Err(refuse(
                restart
                    .into_iter()
                    .map(|what| {
                        format!(
                            "{}: {what}: server, database and channel connections change \
                             only on a restart",
                            gateway.display()
                        )
                    })
                    .collect(),
            ));
        }
        let next = Arc::new(next);
        let fail = |e: crate::store::StoreError| refuse(vec![format!("the database: {e}")]);
        prepare(&next, &self.store, now).await.map_err(fail)?;
        let in_use = self.store.versions_in_use().await.map_err(fail)?;
        let report = compare(&running, &next, &in_use);
        next.templates.set_links(self.links.clone());
        self.links.set_targets(Links::targets_of(&next));
        self.live.install(next.clone(), &in_use, now);
        // A switch made while the folder was loading applies to the new config too.
        if let Ok(states) = self.store.scenario_states().await {
            for (id, on, at) in states {
                if let Some(sc) = next.scenario(&id) {
                    sc.set_enabled(on, at);
                }
            }
        }
        // Versions of unfinished runs that are not in memory are compiled now, so that what
        // they wait for is found; a version that no longer compiles fails its run when it
        // next moves (journaled with the reason).
        load_versions(&self.live, &self.store, &in_use).await;
        tracing::info!(
            changed = ?report.changed,
            added = ?report.added,
            removed = ?report.removed,
            "the config was reloaded"
        );
        Ok(report)
    }
}

/// How long the folder must be quiet before a change is loaded: an editor or a `git pull`
/// writes several files, and often a file in several steps.
const SETTLE: std::time::Duration = std::time::Duration::from_millis(300);

/// Reloads when a `.toml` file of the config folder or a `.ftl` file of its locales changes.
pub fn watch(
    reloader: Reloader,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    use notify_debouncer_mini::notify::RecursiveMode;
    use notify_debouncer_mini::{new_debouncer, DebounceEventResult};

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut debouncer = new_debouncer(SETTLE, move |res: DebounceEventResult| {
        let relevant = match res {
            Ok(events) => events.iter().any(|e| {
                e.path
                    .extension()
                    .is_some_and(|x| x == "toml" || x == "ftl")
            }),
            Err(e) => {
                tracing::warn!(error = %e, "watching the config folder");
                false
            }
        };
        if relevant {
            let _ = tx.send(());
        }
    })?;
    let cfg = reloader.live.config();
    let mut folders = vec![cfg.dir.clone()];
    if cfg.locales.is_dir() && !cfg.locales.starts_with(&cfg.dir) {
        folders.push(cfg.locales.clone());
    }
    for f in &folders {
        debouncer
            .watcher()
            .watch(f, RecursiveMode::Recursive)
            .map_err(|e| anyhow::anyhow!("watching {}: {e}", f.display()))?;
    }
    tracing::info!(folders = ?folders, "reloading when the config changes");
    Ok(tokio::spawn(async move {
        let _keep = debouncer;
        loop {
            tokio::select! {
                got = rx.recv() => if got.is_none() { return },
                _ = stop.changed() => return,
            }
            while rx.try_recv().is_ok() {}
            // A refusal is logged and shown; the next change tries again.
            let _ = reloader.reload().await;
        }
    }))
}

/// Applies the operators' switches to a freshly loaded config and records its versions.
pub async fn prepare(cfg: &Config, store: &Arc<dyn Store>, now: i64) -> crate::store::Result<()> {
    for (id, on, at) in store.scenario_states().await? {
        if let Some(sc) = cfg.scenario(&id) {
            sc.set_enabled(on, at);
        }
    }
    store.put_scenario_versions(&cfg.versions(), now).await
}

/// The version of its scenario a run follows, for reading (the journal pages).
pub async fn scenario_of_run(
    live: &Live,
    store: &Arc<dyn Store>,
    run: &crate::store::RunRow,
) -> Option<Arc<crate::config::Scenario>> {
    match live.scenario(&run.scenario, run.version.as_deref()) {
        Version::Found(sc) => Some(sc),
        Version::Missing(_) => None,
        Version::Unknown(hash) => {
            let (id, text) = store.scenario_version(&hash).await.ok()??;
            live.learn(&hash, &id, &text).ok()
        }
    }
}

/// Compiles the versions in `hashes` that are neither current nor in memory.
pub async fn load_versions(live: &Live, store: &Arc<dyn Store>, hashes: &[String]) {
    let cfg = live.config();
    let wanted: Vec<&String> = hashes
        .iter()
        .filter(|h| {
            !cfg.scenarios
                .iter()
                .any(|sc| cfg.version_of(&sc.id) == Some(h))
        })
        .collect();
    if wanted.is_empty() {
        return;
    }
    for hash in wanted {
        match store.scenario_version(hash).await {
            Ok(Some((id, text))) => {
                if let Err(why) = live.add(hash, &id, &text) {
                    tracing::warn!(version = short(hash), "{why}");
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "reading a scenario version failed"),
        }
    }
}

fn compare(running: &Config, next: &Config, in_use: &[String]) -> Reloaded {
    let mut r = Reloaded {
        changed: Vec::new(),
        added: Vec::new(),
        removed: Vec::new(),
        versions_in_use: 0,
    };
    for sc in &next.scenarios {
        match running.version_of(&sc.id) {
            None => r.added.push(sc.id.clone()),
            Some(h) if Some(h) != next.version_of(&sc.id) => r.changed.push(sc.id.clone()),
            Some(_) => {}
        }
    }
    for sc in &running.scenarios {
        if next.scenario(&sc.id).is_none() {
            r.removed.push(sc.id.clone());
        }
    }
    r.versions_in_use = in_use
        .iter()
        .filter(|h| {
            !next
                .scenarios
                .iter()
                .any(|sc| next.version_of(&sc.id) == Some(h))
        })
        .count();
    r
}
