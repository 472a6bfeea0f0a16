//! Group commit for inbound events: one writer takes whatever has arrived, stores it in one
//! transaction (deduplicating), answers every sender, then hands accepted events to the engine.
//! While the engine lags behind, the writer waits before storing more (and after a while
//! answers "busy"), so that latency and memory stay bounded.

use std::collections::HashMap;
use std::sync::Arc;
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

/// Most events stored in one transaction.
const GATHER: usize = 512;

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
    while rx.recv_many(&mut buf, GATHER).await > 0 {
        if !engine.load().wait_for_room(backlog.max, backlog.wait).await {
            metrics::counter!("switchboard_busy_total").increment(buf.len() as u64);
            for (_, reply) in buf.drain(..) {
                let _ = reply.send(Err(SubmitError::Busy));
            }
            continue;
        }
        // Wait for the turn to write; what arrives meanwhile goes into the same transaction.
        let turn = store.write_turn().await;
        while buf.len() < GATHER {
            match rx.try_recv() {
                Ok(r) => buf.push(r),
                Err(_) => break,
            }
        }
        let (events, replies): (Vec<NewEvent>, Vec<_>) = buf.drain(..).unzip();
        let results = store_batch(&*store, &turn, &events).await;
        drop(turn);
        let mut counts: HashMap<(String, &'static str), u64> = HashMap::new();
        for ((ev, reply), result) in events.into_iter().zip(replies).zip(results) {
            let outcome = match result {
                Ok(o) => o,
                Err(e) => {
                    let _ = reply.send(Err(SubmitError::Unavailable(format!(
                        "could not store the event: {e}"
                    ))));
                    continue;
                }
            };
            *counts
                .entry((ev.kind.clone(), outcome_label(outcome)))
                .or_default() += 1;
            if let IngestOutcome::Accepted(id) = outcome {
                let _ = engine.send(Work::Event(EventItem::stored(id, ev)));
            }
            let _ = reply.send(Ok(outcome));
        }
        for ((kind, outcome), n) in counts {
            metrics::counter!("switchboard_events_total", "kind" => kind, "outcome" => outcome)
                .increment(n);
        }
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
