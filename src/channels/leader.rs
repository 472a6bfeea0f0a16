//! One worker per account across replicas: a channel that must have a single reader (a
//! Telegram long poller, an IMAP mailbox, a gateway session) holds a named lease in the
//! database while it works; the others wait and take over when the lease runs out. With a
//! single process (SQLite) the lease is always held.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::store::Store;

pub struct Leader {
    store: Arc<dyn Store>,
    lease: String,
    shared: bool,
    holding: bool,
    what: String,
}

/// What [`Leader::turn`] found.
pub enum Turn {
    /// This replica holds the lease; `fresh` when it has just taken it (state another
    /// replica kept, such as an offset, must be read again).
    Lead { fresh: bool },
    /// The process is stopping.
    Stop,
}

impl Leader {
    /// `lease`: the lease's name, e.g. `telegram_poll:tg`; `what`: the work, for the log.
    pub fn new(store: Arc<dyn Store>, lease: &str, what: &str) -> Leader {
        let shared = !store.exclusive();
        Leader {
            store,
            lease: lease.to_string(),
            shared,
            holding: !shared,
            what: what.to_string(),
        }
    }

    /// Whether other replicas may take over (then work in slices shorter than the lease).
    pub fn shared(&self) -> bool {
        self.shared
    }

    /// Waits until this replica holds the lease (renewing it when it does), or the stop.
    pub async fn turn(&mut self, stop: &mut watch::Receiver<bool>) -> Turn {
        if !self.shared {
            return Turn::Lead { fresh: false };
        }
        loop {
            match self.store.hold_lease(&self.lease).await {
                Ok(true) => {
                    let fresh = !self.holding;
                    if fresh {
                        tracing::info!(lease = %self.lease, "this replica does {} now", self.what);
                    }
                    self.holding = true;
                    return Turn::Lead { fresh };
                }
                Ok(false) => {
                    if self.holding {
                        tracing::warn!(lease = %self.lease, "another replica does {} now", self.what);
                    }
                    self.holding = false;
                    let wait = (self.store.lease() / 4)
                        .clamp(Duration::from_millis(200), Duration::from_secs(5));
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = stop.changed() => return Turn::Stop,
                    }
                }
                Err(e) => {
                    tracing::warn!(lease = %self.lease, error = %e, "renewing the lease failed");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = stop.changed() => return Turn::Stop,
                    }
                }
            }
        }
    }
}
