//! Wall-clock time as Unix milliseconds, with an offset that tests move forward instead of
//! waiting (timers and waits then fire as if the time had passed).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

#[derive(Clone, Default)]
pub struct Clock {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    offset_ms: AtomicI64,
    /// A clock that stands still: `offset_ms` is the time itself.
    frozen: std::sync::atomic::AtomicBool,
    changed: Notify,
}

impl Clock {
    pub fn now_ms(&self) -> i64 {
        let offset = self.inner.offset_ms.load(Ordering::Relaxed);
        if self.inner.frozen.load(Ordering::Relaxed) {
            return offset;
        }
        chrono::Utc::now().timestamp_millis() + offset
    }

    /// A clock that reads `at_ms` until it is moved (offline scenario tests).
    pub fn frozen_at(at_ms: i64) -> Clock {
        let c = Clock::default();
        c.inner.offset_ms.store(at_ms, Ordering::Relaxed);
        c.inner.frozen.store(true, Ordering::Relaxed);
        c
    }

    /// A clock that reads `at_ms` now and runs on from there (tests start on a chosen day).
    pub fn starting_at(at_ms: i64) -> Clock {
        let c = Clock::default();
        c.inner.offset_ms.store(
            at_ms - chrono::Utc::now().timestamp_millis(),
            Ordering::Relaxed,
        );
        c
    }

    /// Moves this clock forward; sleepers on it wake and re-check.
    pub fn advance(&self, by: Duration) {
        self.inner
            .offset_ms
            .fetch_add(by.as_millis() as i64, Ordering::Relaxed);
        self.inner.changed.notify_waiters();
    }

    /// Sleeps until the clock reads `at_ms` (or `extra` wakes it first).
    pub async fn sleep_until(&self, at_ms: i64, extra: Option<&Notify>) {
        let changed = self.inner.changed.notified();
        let wait = at_ms - self.now_ms();
        if wait <= 0 {
            return;
        }
        let sleep = tokio::time::sleep(Duration::from_millis(wait as u64));
        match extra {
            Some(n) => {
                tokio::select! {
                    _ = sleep => {}
                    _ = changed => {}
                    _ = n.notified() => {}
                }
            }
            None => {
                tokio::select! {
                    _ = sleep => {}
                    _ = changed => {}
                }
            }
        }
    }
}

pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
