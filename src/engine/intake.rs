//! The engine's inbox and the outbox worker's, with the bookkeeping that keeps them bounded
//! and lets stranded work be found again: how much is queued (intake waits while it is too
//! much), and which outbox rows a worker holds (so a rescan re-queues only rows nobody holds).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, Notify};

use super::{OutboxJob, Work};

/// What the engine and the outbox worker have on their hands.
#[derive(Default)]
pub struct Load {
    /// Work items sent to the engine and not yet finished by it.
    engine: AtomicUsize,
    /// Outbox rows handed to the worker whose final result the engine has not been given
    /// (a rescan leaves them alone).
    held: Mutex<HashSet<i64>>,
    room: Notify,
    /// Set when the engine stopped for good while the gateway was meant to run.
    engine_down: AtomicBool,
}

impl Load {
    /// Work queued for the engine or in its hands. Outbox rows are not counted: a row
    /// waiting for a slow receiver, a retry or a platform's rate limit is not the engine
    /// lagging, and must not hold back every other event.
    pub fn len(&self) -> usize {
        self.engine.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `n` items reached the engine other than through a `WorkSender`.
    pub(crate) fn add(&self, n: usize) {
        self.engine.fetch_add(n, Ordering::Relaxed);
    }

    /// The engine finished `n` items.
    pub(crate) fn done(&self, n: usize) {
        if n > 0 {
            self.engine.fetch_sub(n, Ordering::Relaxed);
            self.room.notify_waiters();
        }
    }

    /// Whether the outbox worker holds this row.
    pub(crate) fn holds(&self, outbox_id: i64) -> bool {
        self.held.lock().expect("not poisoned").contains(&outbox_id)
    }

    /// The worker reported the row's final result to the engine.
    pub(crate) fn release(&self, outbox_id: i64) {
        self.held.lock().expect("not poisoned").remove(&outbox_id);
    }

    /// Waits until fewer than `limit` items are queued for the engine; false if that took longer
    /// than `patience`.
    pub async fn wait_for_room(&self, limit: usize, patience: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if self.len() < limit {
                return true;
            }
            if tokio::time::timeout_at(deadline, room).await.is_err() {
                return self.len() < limit;
            }
        }
    }

    pub fn engine_down(&self) -> bool {
        self.engine_down.load(Ordering::SeqCst)
    }

    pub(crate) fn set_engine_down(&self) {
        self.engine_down.store(true, Ordering::SeqCst);
    }
}

/// Sends work to the engine, counting it.
#[derive(Clone)]
pub struct WorkSender {
    tx: mpsc::UnboundedSender<Work>,
    load: Arc<Load>,
}

pub struct WorkReceiver {
    pub(crate) rx: mpsc::UnboundedReceiver<Work>,
}

/// The engine is gone (the gateway is stopping).
#[derive(Debug)]
pub struct Closed;

impl WorkSender {
    pub fn send(&self, w: Work) -> Result<(), Closed> {
        self.load.engine.fetch_add(1, Ordering::Relaxed);
        self.tx.send(w).map_err(|_| {
            self.load.engine.fetch_sub(1, Ordering::Relaxed);
            Closed
        })
    }

    pub fn load(&self) -> &Arc<Load> {
        &self.load
    }
}

/// Hands committed rows to the outbox worker; a row already held is not handed twice.
#[derive(Clone)]
pub struct OutboxSender {
    tx: mpsc::UnboundedSender<OutboxJob>,
    load: Arc<Load>,
}

impl OutboxSender {
    pub fn send(&self, job: OutboxJob) -> Result<(), Closed> {
        let id = job.row.id;
        if !self.load.held.lock().expect("not poisoned").insert(id) {
            return Ok(());
        }
        self.tx.send(job).map_err(|_| {
            self.load.release(id);
            Closed
        })
    }
}

/// The engine's and the outbox worker's queues, sharing one `Load`.
pub fn channels() -> (
    WorkSender,
    WorkReceiver,
    OutboxSender,
    mpsc::UnboundedReceiver<OutboxJob>,
) {
    let load = Arc::new(Load::default());
    let (tx, rx) = mpsc::unbounded_channel();
    let (otx, orx) = mpsc::unbounded_channel();
    (
        WorkSender {
            tx,
            load: load.clone(),
        },
        WorkReceiver { rx },
        OutboxSender { tx: otx, load },
        orx,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn intake_waits_for_room_and_gives_up_after_its_patience() {
        let (work, _rx, _outbox, _orx) = channels();
        for _ in 0..3 {
            work.send(Work::Answer {
                run_id: 1,
                data: serde_json::Value::Null,
            })
            .unwrap();
        }
        let load = work.load().clone();
        assert_eq!(load.len(), 3);
        assert!(!load.wait_for_room(3, Duration::from_secs(1)).await);
        let waiter = {
            let load = load.clone();
            tokio::spawn(async move { load.wait_for_room(3, Duration::from_secs(60)).await })
        };
        tokio::task::yield_now().await;
        load.done(1);
        assert!(waiter.await.unwrap());
    }

    #[test]
    fn a_held_row_is_not_handed_to_the_worker_twice() {
        let (_work, _rx, outbox, mut orx) = channels();
        let row = crate::store::OutboxRow {
            id: 7,
            run_id: None,
            step: None,
            kind: "http".into(),
            channel: String::new(),
            request: serde_json::Value::Null,
            status: "pending".into(),
            attempts: 0,
            max_attempts: 1,
            timeout_ms: 1000,
            next_attempt_at: 0,
            resume: false,
            response: None,
            last_error: None,
            message_ref: None,
            delivery_status: None,
            statuses: Vec::new(),
        };
        let job = OutboxJob {
            row,
            lane: "outbox".into(),
        };
        outbox.send(job.clone()).unwrap();
        outbox.send(job.clone()).unwrap();
        assert!(orx.try_recv().is_ok());
        assert!(orx.try_recv().is_err());
        outbox.load.release(7);
        outbox.send(job).unwrap();
        assert!(orx.try_recv().is_ok());
    }
}
