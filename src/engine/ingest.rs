//! Group commit for inbound events: one writer takes whatever has arrived, stores it in one
//! transaction (deduplicating), answers every sender, then hands accepted events to the engine.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::{EventItem, Work, WorkSender};
use crate::store::{IngestOutcome, NewEvent, Store, StoreError};

type Request = (NewEvent, oneshot::Sender<Result<IngestOutcome, String>>);

#[derive(Clone)]
pub struct Ingest {
    tx: mpsc::Sender<Request>,
}

impl Ingest {
    pub fn start(
        store: Arc<dyn Store>,
        engine: WorkSender,
    ) -> (Ingest, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel::<Request>(8192);
        let task = tokio::spawn(writer(store, engine, rx));
        (Ingest { tx }, task)
    }

    /// Stores the event; returns once it is durable (or refused).
    pub async fn submit(&self, ev: NewEvent) -> Result<IngestOutcome, String> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send((ev, done))
            .await
            .map_err(|_| "the gateway is shutting down".to_string())?;
        wait.await
            .map_err(|_| "the gateway is shutting down".to_string())?
    }
}

async fn writer(store: Arc<dyn Store>, engine: WorkSender, mut rx: mpsc::Receiver<Request>) {
    let mut buf: Vec<Request> = Vec::with_capacity(512);
    while rx.recv_many(&mut buf, 512).await > 0 {
        let events: Vec<NewEvent> = buf.iter().map(|(e, _)| e.clone()).collect();
        let mut result = store.ingest(&events).await;
        if let Err(StoreError::Db(e)) = &result {
            tracing::warn!(error = %e, "storing events failed; retrying once");
            result = store.ingest(&events).await;
        }
        match result {
            Ok(outcomes) => {
                let mut counts: HashMap<(String, &'static str), u64> = HashMap::new();
                for ((ev, reply), outcome) in buf.drain(..).zip(outcomes) {
                    *counts
                        .entry((ev.kind.clone(), outcome_label(outcome)))
                        .or_default() += 1;
                    if let IngestOutcome::Accepted(id) = outcome {
                        let _ = engine.send(Work::Event(EventItem {
                            id,
                            kind: ev.kind,
                            source: ev.source,
                            data: Arc::new(ev.data),
                            meta: ev.meta,
                        }));
                    }
                    let _ = reply.send(Ok(outcome));
                }
                for ((kind, outcome), n) in counts {
                    metrics::counter!("switchboard_events_total", "kind" => kind, "outcome" => outcome)
                        .increment(n);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "storing events failed");
                for (_, reply) in buf.drain(..) {
                    let _ = reply.send(Err(format!("could not store the event: {e}")));
                }
            }
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
