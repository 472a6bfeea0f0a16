//! Several replicas on one database: each keeps its registration fresh and, now and then,
//! takes over the queued work of replicas that stopped answering. A replica that finds it
//! was presumed dead stops at once: its work is with the others already. Scenario switches
//! made through another replica are picked up here too.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::engine::OutboxSender;
use crate::engine::{EventItem, Work, WorkSender};
use crate::store::Store;

pub async fn upkeep(
    live: Arc<crate::config::live::Live>,
    store: Arc<dyn Store>,
    engine: WorkSender,
    outbox: OutboxSender,
    stop: Arc<watch::Sender<bool>>,
    fenced: Arc<AtomicBool>,
) {
    let mut stopped = stop.subscribe();
    let lease = store.lease();
    let beat = (lease / 5).max(Duration::from_millis(100));
    let sweep = (lease / 2).max(Duration::from_millis(200));
    let mut next_sweep = tokio::time::Instant::now();
    loop {
        match store.heartbeat().await {
            Ok(true) => {}
            Ok(false) => {
                tracing::error!(
                    replica = store.replica(),
                    "this replica was presumed dead and its work was taken over; stopping"
                );
                fenced.store(true, Ordering::SeqCst);
                let _ = stop.send(true);
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "replica heartbeat failed");
                // The database was out of reach, maybe for everyone: give the other replicas
                // a lease to show they are alive before presuming any of them dead.
                next_sweep = tokio::time::Instant::now() + lease;
            }
        }
        // The versions unfinished runs follow, whichever replica started them: their runs
        // may move here. Versions no run follows any more are let go.
        match store.versions_in_use().await {
            Ok(in_use) => {
                for hash in in_use.iter().filter(|h| !live.known(h)) {
                    match store.scenario_version(hash).await {
                        Ok(Some((id, text))) => {
                            if let Err(why) = live.learn(hash, &id, &text) {
                                tracing::debug!("{why}");
                            }
                        }
                        Ok(None) => {}
                        Err(e) => tracing::warn!(error = %e, "reading a scenario version failed"),
                    }
                }
                live.prune(&in_use);
            }
            Err(e) => tracing::warn!(error = %e, "reading scenario versions failed"),
        }
        // Scenarios an operator switched on or off through another replica.
        let cfg = live.config();
        match store.scenario_states().await {
            Ok(states) => {
                for (id, on, at) in states {
                    if let Some(sc) = cfg.scenario(&id) {
                        sc.set_enabled(on, at);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "reading scenario switches failed"),
        }
        if tokio::time::Instant::now() >= next_sweep {
            next_sweep = tokio::time::Instant::now() + sweep;
            match store.take_over().await {
                Ok((events, rows)) => {
                    for ev in events {
                        let _ = engine.send(Work::Event(EventItem::from(ev)));
                    }
                    for row in rows {
                        let _ = outbox.send(crate::outbox::job_from_row(row));
                    }
                }
                Err(e) => tracing::warn!(error = %e, "looking for work of dead replicas failed"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(beat) => {}
            _ = stopped.changed() => return,
        }
    }
}
