//! The 24-hour customer-service window: when each customer last wrote to the number, kept
//! in the database (so it holds across replicas and restarts). Inside the window any
//! message may go; outside it only a pre-approved template.

use std::sync::{Arc, OnceLock};

use crate::clock::Clock;
use crate::store::Store;

/// How long after a customer's message free-form messages may be sent.
pub const WINDOW_MS: i64 = 24 * 3600 * 1000;

/// Whether a customer may get a free-form message now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Open {
    Yes,
    /// They wrote last at this time (ms), or never.
    No(Option<i64>),
}

pub struct Window {
    channel: String,
    /// Set when the channel starts (before the HTTP server does).
    store: OnceLock<(Arc<dyn Store>, Clock)>,
}

impl Window {
    pub fn new(channel: &str) -> Window {
        Window {
            channel: channel.to_string(),
            store: OnceLock::new(),
        }
    }

    pub fn attach(&self, store: Arc<dyn Store>, clock: Clock) {
        let _ = self.store.set((store, clock));
    }

    fn key(&self, wa_id: &str) -> String {
        format!(
            "whatsapp_window:{}:{}",
            self.channel,
            wa_id.trim_start_matches('+')
        )
    }

    /// Records that these customers wrote at `at` (ms).
    pub async fn opened(&self, writers: &[String], at: i64) {
        let Some((store, _)) = self.store.get() else {
            return;
        };
        let mut seen = std::collections::HashSet::new();
        for w in writers.iter().filter(|w| seen.insert(w.as_str())) {
            if let Err(e) = store.put_setting(&self.key(w), &at.to_string()).await {
                tracing::warn!(channel = %self.channel, error = %e, "recording a customer's last message failed");
            }
        }
    }

    /// Whether the window to this customer (digits) is open now.
    pub async fn open(&self, wa_id: &str) -> Result<Open, String> {
        let Some((store, clock)) = self.store.get() else {
            return Err("the channel has not started".into());
        };
        let last = store
            .setting(&self.key(wa_id))
            .await
            .map_err(|e| format!("reading the customer's last message time failed: {e}"))?
            .and_then(|v| v.parse::<i64>().ok());
        Ok(match last {
            Some(t) if clock.now_ms() - t < WINDOW_MS => Open::Yes,
            other => Open::No(other),
        })
    }
}
