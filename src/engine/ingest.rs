//! Group commit for inbound events: the intake takes whatever has arrived and, on a database
//! this process alone writes (SQLite) while the engine has little on its hands, hands it to
//! the engine, whose next batch stores it in its own transaction (deduplicating) —
//! processing in the same transaction as many of the events as the batch has room for — and
//! then answers every sender; if that batch does not start within a moment (the engine is
//! held up), the intake stores them itself. Otherwise (replicas on PostgreSQL, or the engine
//! busy) the intake stores them in a transaction of its own and then hands them to the
//! engine, so that storing goes on beside the engine's work. While the engine lags behind,
//! the intake waits before handing over more (and after a while answers "busy"), so that
//! latency and memory stay bounded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value as Json;
use sha2::Digest;
use tokio::sync::{mpsc, oneshot};

use super::{EventItem, Work, WorkSender};
use crate::store::{IngestOutcome, NewEvent, Store, StoreError, WriteTurn};

/// Why an event was not stored.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SubmitError {
    /// The engine is behind; try again after a moment.
    #[error("the gateway is busy; retry after a moment")]
    Busy,
    #[error("{0}")]
    Unavailable(String),
}

type Request = (
    NewEvent,
    oneshot::Sender<Result<IngestOutcome, SubmitError>>,
);

/// Most events handed over at once (and stored in one transaction).
pub(super) const GATHER: usize = 512;

/// Longest deduplication key stored as it is; longer ones are stored as their digest.
const KEY_KEPT: usize = 512;

#[derive(Clone)]
pub struct Ingest {
    tx: mpsc::Sender<Request>,
}

/// How much queued work the writer lets build up, and how long a sender waits for room.
#[derive(Debug, Clone, Copy)]
pub struct Backlog {
    pub max: usize,
    pub wait: Duration,
}

impl Ingest {
    pub fn start(
        store: Arc<dyn Store>,
        engine: WorkSender,
        backlog: Backlog,
    ) -> (Ingest, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel::<Request>(8192);
        let task = tokio::spawn(writer(store, engine, backlog, rx));
        (Ingest { tx }, task)
    }

    /// Stores the event; returns once it is durable (or refused).
    pub async fn submit(&self, mut ev: NewEvent) -> Result<IngestOutcome, SubmitError> {
        clean(&mut ev);
        let (done, wait) = oneshot::channel();
        let closed = || SubmitError::Unavailable("the gateway is shutting down".into());
        self.tx.send((ev, done)).await.map_err(|_| closed())?;
        wait.await.map_err(|_| closed())?
    }
}

/// Makes an event storable whatever its source: NUL characters (which PostgreSQL refuses in
/// text and JSON) become U+FFFD, and a long deduplication key is replaced by its digest.
/// Sources that can refuse such input (webhooks) do so before it gets here.
fn clean(ev: &mut NewEvent) {
    strip_nul(&mut ev.data);
    strip_nul(&mut ev.meta);
    if let Some(r) = &mut ev.rejected {
        if r.contains('\0') {
            *r = r.replace('\0', "\u{fffd}");
        }
    }
    if let Some(k) = &mut ev.dedupe_key {
        if k.len() > KEY_KEPT || k.contains('\0') {
            *k = format!("sha256:{}", hex::encode(sha2::Sha256::digest(k.as_bytes())));
        }
    }
}

/// Whether any string or key in the value holds a NUL character.
pub fn has_nul(v: &Json) -> bool {
    match v {
        Json::String(s) => s.contains('\0'),
        Json::Array(a) => a.iter().any(has_nul),
        Json::Object(m) => m.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

fn strip_nul(v: &mut Json) {
    if !has_nul(v) {
        return;
    }
    match v {
        Json::String(s) => *s = s.replace('\0', "\u{fffd}"),
        Json::Array(a) => a.iter_mut().for_each(strip_nul),
        Json::Object(m) => {
            let entries = std::mem::take(m);
            for (k, mut v) in entries {
                strip_nul(&mut v);
                m.insert(k.replace('\0', "\u{fffd}"), v);
            }
        }
        _ => {}
    }
}

async fn writer(
    store: Arc<dyn Store>,
    engine: WorkSender,
    backlog: Backlog,
    mut rx: mpsc::Receiver<Request>,
) {
    let mut buf: Vec<Request> = Vec::with_capacity(GATHER);
    // The last hand-over, and when the intake takes it back if the engine has not taken it.
    // Events are stored and processed in the order they arrived: while it is untaken, later
    // events join it or are stored together with it, never before it.
    let mut last: Option<(Handoff, tokio::time::Instant)> = None;
    loop {
        let received = match &last {
            Some((_, due)) => tokio::select! {
                n = rx.recv_many(&mut buf, GATHER) => Some(n),
                _ = tokio::time::sleep_until(*due) => None,
            },
            None => Some(rx.recv_many(&mut buf, GATHER).await),
        };
        if received.is_none_or(|n| n == 0) {
            // An engine held up in a long batch does not hold up intake: the events it has
            // not taken are stored here and queued for it, as they would be under load.
            if let Some(a) = last.take().and_then(|(h, _)| h.take()) {
                let n = a.len();
                store_here(&*store, &engine, a, None, n).await;
            }
            if received.is_none() {
                continue;
            }
            return;
        }
        if !engine.load().wait_for_room(backlog.max, backlog.wait).await {
            metrics::counter!("switchboard_busy_total").increment(buf.len() as u64);
            for (_, reply) in buf.drain(..) {
                let _ = reply.send(Err(SubmitError::Busy));
            }
            continue;
        }
        // With replicas, a batch can wait for another replica's locks: the events are stored
        // here, so that their senders are not kept waiting with it. Under load and for a
        // burst, too: storing here goes on beside the engine's work, and a sender that waits
        // for its events to be stored (a poller) is not kept waiting for their processing.
        if !store.exclusive() || engine.load().len() + buf.len() >= HAND_OVER_BELOW {
            // Wait for the turn to write; what arrives meanwhile goes into the same transaction.
            let turn = store.write_turn().await;
            while buf.len() < GATHER {
                match rx.try_recv() {
                    Ok(r) => buf.push(r),
                    Err(_) => break,
                }
            }
            let (events, replies): (Vec<NewEvent>, Vec<_>) = buf.drain(..).unzip();
            let fresh = Arrivals { events, replies };
            // An untaken hand-over goes first.
            let (all, counted) = match last.take().and_then(|(h, _)| h.take()) {
                Some(mut earlier) => {
                    let n = earlier.len();
                    earlier.extend(fresh);
                    (earlier, n)
                }
                None => (fresh, 0),
            };
            store_here(&*store, &engine, all, Some(turn), counted).await;
            continue;
        }
        let (events, replies): (Vec<NewEvent>, Vec<_>) = buf.drain(..).unzip();
        let fresh = Arrivals { events, replies };
        let n = fresh.len();
        // Counted as the events they are, not as one item, so that the backlog stays bounded.
        engine.load().add(n);
        let fresh = match &last {
            Some((h, _)) => match h.join(fresh) {
                Ok(()) => continue,
                Err(fresh) => fresh,
            },
            None => fresh,
        };
        let handoff = Handoff(Arc::new(Mutex::new(Some(fresh))));
        // If the engine is gone, the senders hear that the gateway is shutting down.
        if engine.send(Work::Store(handoff.clone())).is_err() {
            engine.load().done(n);
            last = None;
            continue;
        }
        // The send counted the hand-over once more.
        engine.load().done(1);
        last = Some((handoff, tokio::time::Instant::now() + HANDOFF_WAIT));
    }
}

/// Stores events here (holding `turn` if given), queues the accepted ones for the engine, and
/// counts done the `counted` items a hand-over had added to its load.
async fn store_here(
    store: &dyn Store,
    engine: &WorkSender,
    a: Arrivals,
    turn: Option<WriteTurn>,
    counted: usize,
) {
    for e in a.store_alone(store, turn).await {
        let _ = engine.send(Work::Event(e));
    }
    engine.load().done(counted);
}

/// Events are handed to the engine while, with them, it has fewer work items than this on
/// its hands: a burst (a poller's page of updates) is stored beside the engine's work.
const HAND_OVER_BELOW: usize = 64;

/// How long handed-over events wait for the engine's next batch before the intake stores
/// them itself.
const HANDOFF_WAIT: Duration = Duration::from_millis(50);

/// Events handed to the engine; taken by whichever comes first: the engine's next batch, or
/// the intake (after `HANDOFF_WAIT`, or to store them before later events). The taker
/// answers the senders and counts them done.
#[derive(Clone)]
pub struct Handoff(Arc<Mutex<Option<Arrivals>>>);

impl Handoff {
    pub(super) fn take(&self) -> Option<Arrivals> {
        self.0.lock().expect("not poisoned").take()
    }

    /// Adds later events to the hand-over if nobody has taken it yet.
    fn join(&self, later: Arrivals) -> Result<(), Arrivals> {
        match &mut *self.0.lock().expect("not poisoned") {
            Some(a) => {
                a.extend(later);
                Ok(())
            }
            None => Err(later),
        }
    }
}

/// Events handed over to the engine, which stores them in its next batch's transaction —
/// processing as many as that batch has room for in the same transaction — and then
/// answers their senders.
pub struct Arrivals {
    pub(super) events: Vec<NewEvent>,
    replies: Vec<oneshot::Sender<Result<IngestOutcome, SubmitError>>>,
}

impl Arrivals {
    pub(super) fn len(&self) -> usize {
        self.events.len()
    }

    /// Takes in another hand-over (both are answered together).
    pub(super) fn extend(&mut self, other: Arrivals) {
        self.events.extend(other.events);
        self.replies.extend(other.replies);
    }

    /// Answers every sender with its event's result, once the events are durable.
    pub(super) fn answer(self, results: Vec<Result<IngestOutcome, StoreError>>) {
        let mut counts: HashMap<(String, &'static str), u64> = HashMap::new();
        for ((ev, reply), result) in self.events.into_iter().zip(self.replies).zip(results) {
            let outcome = match result {
                Ok(o) => o,
                Err(e) => {
                    let _ = reply.send(Err(SubmitError::Unavailable(format!(
                        "could not store the event: {e}"
                    ))));
                    continue;
                }
            };
            *counts.entry((ev.kind, outcome_label(outcome))).or_default() += 1;
            let _ = reply.send(Ok(outcome));
        }
        for ((kind, outcome), n) in counts {
            metrics::counter!("switchboard_events_total", "kind" => kind, "outcome" => outcome)
                .increment(n);
        }
    }

    /// Stores the events in a transaction of their own (holding `turn` if given), answers
    /// their senders and returns the accepted ones.
    pub(super) async fn store_alone(
        self,
        store: &dyn Store,
        turn: Option<WriteTurn>,
    ) -> Vec<EventItem> {
        let turn = match turn {
            Some(t) => t,
            None => store.write_turn().await,
        };
        let results = store_batch(store, &turn, &self.events).await;
        drop(turn);
        let accepted = self
            .events
            .iter()
            .zip(&results)
            .filter_map(|(ev, r)| match r {
                Ok(IngestOutcome::Accepted(id)) => Some(EventItem::stored(*id, ev.clone())),
                _ => None,
            })
            .collect();
        self.answer(results);
        accepted
    }
}

/// Stores a batch in one transaction; if that fails, each event alone, so that one event the
/// database refuses fails by itself and not with everyone else's.
async fn store_batch(
    store: &dyn Store,
    turn: &WriteTurn,
    events: &[NewEvent],
) -> Vec<Result<IngestOutcome, StoreError>> {
    let mut result = store.ingest_in_turn(turn, events).await;
    if let Err(e) = &result {
        tracing::warn!(error = %e, events = events.len(), "storing events failed; retrying");
        if e.unavailable() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        result = store.ingest_in_turn(turn, events).await;
    }
    match result {
        Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
        Err(e) if events.len() == 1 || e.unavailable() => {
            tracing::error!(error = %e, "storing events failed");
            let msg = e.to_string();
            events
                .iter()
                .map(|_| Err(StoreError::Busy(msg.clone())))
                .collect()
        }
        Err(_) => {
            let mut out = Vec::with_capacity(events.len());
            for ev in events {
                out.push(match store.ingest_in_turn(turn, std::slice::from_ref(ev)).await {
                    Ok(mut o) => Ok(o.remove(0)),
                    Err(e) => {
                        tracing::error!(error = %e, source = %ev.source, "storing an event failed");
                        Err(e)
                    }
                });
            }
            out
        }
    }
}

fn outcome_label(o: IngestOutcome) -> &'static str {
    match o {
        IngestOutcome::Accepted(_) => "accepted",
        IngestOutcome::Duplicate(_) => "duplicate",
        IngestOutcome::Rejected(_) => "rejected",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nul_characters_and_long_keys_are_made_storable() {
        let mut ev = NewEvent {
            kind: "message".into(),
            source: "tg".into(),
            dedupe_key: Some("k".repeat(3000)),
            data: json!({"text": "a\u{0}b", "k\u{0}": ["\u{0}"]}),
            meta: json!({}),
            rejected: None,
            received_at: 0,
        };
        clean(&mut ev);
        assert!(!has_nul(&ev.data));
        assert_eq!(
            ev.data,
            json!({"text": "a\u{fffd}b", "k\u{fffd}": ["\u{fffd}"]})
        );
        let key = ev.dedupe_key.unwrap();
        assert!(key.starts_with("sha256:") && key.len() == 7 + 64, "{key}");
    }
}
