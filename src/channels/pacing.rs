//! Per-conversation pacing within a platform's limits, shared by channels: each conversation
//! sends no sooner than its pace after its previous message was answered, the account as a
//! whole stays within its budget, and with replicas every send first reserves its slot in
//! the database so that the limits hold across processes. Time is tokio's, so tests can
//! pause it.
//!
//! Pacing does not order messages: the outbox hands a conversation's operations to its
//! channel one at a time, in the order they were produced.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tokio::time::Instant;

use crate::store::Store;

/// Conversations remembered at most; older ones are forgotten (their pace has long passed).
const REMEMBERED: usize = 4096;

/// governor's clock on tokio's time.
#[derive(Clone)]
struct TokioClock(Instant);

impl Clock for TokioClock {
    type Instant = Duration;
    fn now(&self) -> Duration {
        Instant::now().duration_since(self.0)
    }
}

type Budget = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Duration>>;

/// An even pace: one message per `per / n`, no bursts, so no window of `per` ever holds
/// more than `n`.
pub fn spacing((n, per): (u32, Duration)) -> Duration {
    per / n.max(1)
}

pub struct Pacer {
    /// Prefix of the shared reservation keys, e.g. `tg:<channel>`.
    key: String,
    clock: TokioClock,
    budget: Budget,
    budget_spacing: Duration,
    /// When each conversation's previous send was answered.
    last: Mutex<HashMap<String, Instant>>,
    shared: Option<Arc<dyn Store>>,
}

impl Pacer {
    /// `account`: the whole account's limit as (messages, per period).
    pub fn new(key: &str, account: (u32, Duration), shared: Option<Arc<dyn Store>>) -> Pacer {
        let clock = TokioClock(Instant::now());
        let quota = Quota::with_period(spacing(account))
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX));
        Pacer {
            key: key.to_string(),
            budget: RateLimiter::direct_with_clock(quota, clock.clone()),
            clock,
            budget_spacing: spacing(account),
            last: Mutex::new(HashMap::new()),
            shared,
        }
    }

    /// Waits until `conversation` may send again (at `pace`) and the account has budget.
    pub async fn wait_turn(&self, conversation: &str, pace: Duration) {
        let last = self
            .last
            .lock()
            .expect("not poisoned")
            .get(conversation)
            .copied();
        if let Some(t) = last {
            tokio::time::sleep_until(t + pace).await;
        }
        while let Err(not_until) = self.budget.check() {
            tokio::time::sleep(not_until.wait_time_from(self.clock.now())).await;
        }
        self.shared_turn(conversation, pace).await;
    }

    /// Records that the conversation's send was answered now.
    pub fn done(&self, conversation: &str) {
        let now = Instant::now();
        let mut last = self.last.lock().expect("not poisoned");
        if last.len() >= REMEMBERED {
            let horizon = Duration::from_secs(3600);
            last.retain(|_, t| now.duration_since(*t) < horizon);
            if last.len() >= REMEMBERED {
                last.clear();
            }
        }
        last.insert(conversation.to_string(), now);
    }

    /// Delays the conversation's next send (a 429's `retry_after`).
    pub fn hold(&self, conversation: &str, pace: Duration, for_: Duration) {
        let until = Instant::now() + for_;
        // `wait_turn` waits for last + pace.
        let at = until.checked_sub(pace).unwrap_or(until);
        self.last
            .lock()
            .expect("not poisoned")
            .insert(conversation.to_string(), at);
    }

    /// With replicas: waits for this send's slot in the account's and the conversation's
    /// shared pace.
    async fn shared_turn(&self, conversation: &str, pace: Duration) {
        let Some(store) = &self.shared else { return };
        let ms = |d: Duration| d.as_micros().div_ceil(1000) as i64;
        let keys = [
            (format!("{}:bot", self.key), ms(self.budget_spacing)),
            (format!("{}:chat:{conversation}", self.key), ms(pace)),
        ];
        match store.reserve_send(&keys).await {
            Ok(wait) if wait > 0 => tokio::time::sleep(Duration::from_millis(wait as u64)).await,
            Ok(_) => {}
            // The local pace still holds; only the other replicas' sends are not counted.
            Err(e) => {
                tracing::warn!(key = %self.key, error = %e, "reserving a send slot failed")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends `n` messages to `conversation` one after another, each answered at once; the
    /// instants (from the start) at which each went out.
    async fn send_in_turn(p: &Pacer, conversation: &str, pace: Duration, n: usize) -> Vec<u128> {
        let start = Instant::now();
        let mut out = Vec::new();
        for _ in 0..n {
            p.wait_turn(conversation, pace).await;
            out.push(start.elapsed().as_millis());
            p.done(conversation);
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn a_conversation_sends_at_its_pace() {
        let p = Pacer::new("t", (30, Duration::from_secs(1)), None);
        let at = send_in_turn(&p, "1", Duration::from_secs(1), 4).await;
        assert_eq!(at, vec![0, 1000, 2000, 3000]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_account_budget_spaces_conversations_evenly() {
        let p = Arc::new(Pacer::new("t", (2, Duration::from_secs(1)), None));
        let start = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..4 {
            let p = p.clone();
            tasks.push(tokio::spawn(async move {
                p.wait_turn(&c.to_string(), Duration::from_secs(1)).await;
                p.done(&c.to_string());
                start.elapsed().as_millis()
            }));
        }
        let mut at = Vec::new();
        for t in tasks {
            at.push(t.await.unwrap());
        }
        at.sort();
        assert_eq!(at, vec![0, 500, 1000, 1500]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_conversation_does_not_hold_back_another() {
        let p = Arc::new(Pacer::new("t", (100, Duration::from_secs(1)), None));
        let busy = {
            let p = p.clone();
            tokio::spawn(async move { send_in_turn(&p, "busy", Duration::from_secs(1), 5).await })
        };
        let other = send_in_turn(&p, "other", Duration::from_secs(1), 1).await;
        assert_eq!(other, vec![0]);
        // The busy one waits only for the account's 10 ms spacing, then keeps its own pace.
        let busy = busy.await.unwrap();
        assert!(busy[0] <= 10, "{busy:?}");
        assert!(busy.windows(2).all(|w| w[1] - w[0] == 1000), "{busy:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_hold_delays_the_next_send() {
        let p = Pacer::new("t", (30, Duration::from_secs(1)), None);
        let pace = Duration::from_secs(1);
        p.wait_turn("1", pace).await;
        p.done("1");
        p.hold("1", pace, Duration::from_secs(41));
        let at = send_in_turn(&p, "1", pace, 1).await;
        assert_eq!(at, vec![41_000]);
    }
}
