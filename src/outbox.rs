//! Delivery of committed outbox rows: HTTP requests and channel operations, with bounded
//! retries and exponential backoff; a conversation's messages leave in order. Every attempt's outcome goes back through the engine,
//! which records it (and resumes the waiting run) in its next transaction.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use serde_json::{json, Map, Value as Json};
use tokio::sync::{mpsc, Semaphore};

use crate::channels::{Channels, Outbound, SendError};
use crate::clock::Clock;
use crate::config::live::Live;
use crate::config::Config;
use crate::engine::{DeliveryResult, OutboxJob, Work, WorkSender};
use crate::store::{OutboxRow, Store};

/// Deliveries in flight at once.
const IN_FLIGHT: usize = 256;
/// Largest response body kept in the journal and run variables.
const RESPONSE_MAX: usize = 64 * 1024;

pub fn job_from_row(row: OutboxRow) -> OutboxJob {
    OutboxJob {
        row,
        lane: "outbox".into(),
    }
}

/// A conversation's queue stops after this long without messages.
const IDLE: Duration = Duration::from_secs(60);

/// Message references of recent sends remembered for edits that name their send's row.
const REMEMBERED_REFS: usize = 10_000;

/// What every delivery needs.
struct Deliverer {
    live: Arc<Live>,
    clock: Clock,
    engine: WorkSender,
    http: reqwest::Client,
    guard: crate::egress::Guard,
    channels: Arc<Channels>,
    store: Arc<dyn Store>,
    /// `switchboard-<database id>-outbox-`: the `Idempotency-Key` of a request, before its row id.
    key_prefix: String,
    /// outbox row → the reference of the message it sent (recent ones, oldest first out).
    refs: Mutex<(HashMap<i64, String>, VecDeque<i64>)>,
}

/// Delivers committed rows. HTTP requests go out side by side (a bounded number at once);
/// a conversation's messages and edits go out one at a time in the order they were
/// committed, each after the platform answered the previous one (retries included); click
/// answers go out at once.
pub async fn worker(
    live: Arc<Live>,
    clock: Clock,
    engine: WorkSender,
    channels: Arc<Channels>,
    store: Arc<dyn Store>,
    mut rx: mpsc::UnboundedReceiver<OutboxJob>,
) {
    let guard = crate::egress::Guard::new(live.config().gateway.http.clone());
    let http = guard.client(IN_FLIGHT);
    // Without it the keys would repeat across databases; the first delivery needs it anyway.
    let database = loop {
        match store.database_id().await {
            Ok(id) => break id,
            Err(e) => {
                tracing::warn!(error = %e, "reading the database id failed; trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    let d = Arc::new(Deliverer {
        key_prefix: format!("switchboard-{database}-outbox-"),
        live,
        clock,
        engine,
        http,
        guard,
        channels,
        store,
        refs: Mutex::default(),
    });
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut conversations: HashMap<String, mpsc::UnboundedSender<(OutboxJob, Outbound)>> =
        HashMap::new();
    let mut prune_at = 1024;
    while let Some(job) = rx.recv().await {
        if job.row.kind == "http" {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let d = d.clone();
            tokio::spawn(async move {
                d.deliver(job, None).await;
                drop(permit);
            });
            continue;
        }
        let op = match Outbound::from_json(&job.row.request) {
            Ok(Outbound::Send(mut m)) => {
                m.idempotency_key = Some(format!("{}{}", d.key_prefix, job.row.id));
                Outbound::Send(m)
            }
            Ok(op) => op,
            Err(e) => {
                let result = DeliveryResult::Failed {
                    error: e.message,
                    response: None,
                };
                let _ = d
                    .engine
                    .send(Work::Delivery(job.delivery(job.row.attempts + 1, result)));
                d.engine.load().release(job.row.id);
                continue;
            }
        };
        let Some(conversation) = op.conversation() else {
            let d = d.clone();
            tokio::spawn(async move { d.deliver(job, Some(op)).await });
            continue;
        };
        let key = format!("{}\u{1f}{conversation}", job.row.channel);
        // Stopped queues are dropped once the map has doubled, not on every job.
        if conversations.len() >= prune_at {
            conversations.retain(|_, q| !q.is_closed());
            prune_at = (conversations.len() * 2).max(1024);
        }
        let mut item = (job, op);
        loop {
            let queue = conversations.entry(key.clone()).or_insert_with(|| {
                let (tx, rx) = mpsc::unbounded_channel();
                tokio::spawn(d.clone().conversation(rx));
                tx
            });
            match queue.send(item) {
                Ok(()) => break,
                // The conversation's queue just stopped for idleness: start another.
                Err(mpsc::error::SendError(back)) => {
                    item = back;
                    conversations.remove(&key);
                }
            }
        }
    }
}

impl Deliverer {
    /// One conversation's operations, one at a time.
    async fn conversation(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<(OutboxJob, Outbound)>) {
        loop {
            let (job, op) = match tokio::time::timeout(IDLE, rx.recv()).await {
                Ok(Some(item)) => item,
                Ok(None) => return,
                Err(_) => {
                    // Whatever arrived before the close is still delivered, in order.
                    rx.close();
                    match rx.try_recv() {
                        Ok(item) => item,
                        Err(_) => return,
                    }
                }
            };
            self.deliver(job, Some(op)).await;
        }
    }

    async fn deliver(&self, job: OutboxJob, op: Option<Outbound>) {
        deliver(self, job, op).await
    }

    fn remember(&self, row: i64, message: &str) {
        let mut refs = self.refs.lock().expect("not poisoned");
        let (map, order) = &mut *refs;
        map.insert(row, message.to_string());
        order.push_back(row);
        while order.len() > REMEMBERED_REFS {
            if let Some(old) = order.pop_front() {
                map.remove(&old);
            }
        }
    }

    /// The reference of the message an edit names by its send's row: remembered from the
    /// delivery, else as committed.
    async fn resolve(&self, op: &mut Outbound) -> Result<(), SendError> {
        let Outbound::Edit(e) = op else { return Ok(()) };
        let (Some(row), true) = (e.of_outbox, e.message.is_empty()) else {
            return Ok(());
        };
        let known = self.refs.lock().expect("not poisoned").0.get(&row).cloned();
        if let Some(m) = known {
            e.message = m;
            return Ok(());
        }
        let sent = self.store.outbox(row).await.map_err(|err| SendError {
            message: format!("reading outbox row {row}: {err}"),
            retry: true,
        })?;
        match sent {
            Some(r) if r.status == "delivered" => {
                match r.response.as_ref().and_then(|v| v["message"].as_str()) {
                    Some(m) => {
                        e.message = m.to_string();
                        Ok(())
                    }
                    None => Err(SendError {
                        message: format!(
                            "the message of outbox row {row} has no reference to edit"
                        ),
                        retry: false,
                    }),
                }
            }
            // Delivered a moment ago, not yet committed; or still on its way.
            Some(r) if r.status == "pending" => Err(SendError {
                message: format!("the message to edit (outbox row {row}) is not sent yet"),
                retry: true,
            }),
            _ => Err(SendError {
                message: format!("the message to edit (outbox row {row}) was never sent"),
                retry: false,
            }),
        }
    }
}

fn backoff(cfg: &Config) -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(cfg.gateway.retry_delay)
        .with_max_delay(cfg.gateway.retry_max_delay)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
}

async fn deliver(d: &Deliverer, job: OutboxJob, mut op: Option<Outbound>) {
    // A reload changes the retry delays of the attempts that start after it.
    let cfg = d.live.config();
    let (cfg, clock, engine, http, channels) = (&*cfg, &d.clock, &d.engine, &d.http, &*d.channels);
    let row = &job.row;
    clock.sleep_until(row.next_attempt_at, None).await;
    let mut attempts = row.attempts;
    let mut delays = backoff(cfg).skip(attempts.max(0) as usize);
    loop {
        attempts += 1;
        let outcome = match &mut op {
            None => {
                send_http(
                    http,
                    &d.guard,
                    cfg.gateway.http.max_response_bytes,
                    row,
                    &d.key_prefix,
                )
                .await
            }
            Some(op) => match d.resolve(op).await {
                Err(e) => Err((e, None)),
                Ok(()) => channels
                    .deliver(&row.channel, op)
                    .await
                    .map(|sent| {
                        if let Some(m) = &sent.message {
                            d.remember(row.id, m);
                        }
                        sent.to_json()
                    })
                    .map_err(|e| (e, None)),
            },
        };
        if let Err((_, response)) = &outcome {
            let code = response
                .as_ref()
                .and_then(|r| r["status"].as_u64())
                .map(|s| s.to_string())
                .unwrap_or_else(|| "network".into());
            metrics::counter!("switchboard_platform_errors_total",
                "channel" => row.channel.clone(), "code" => code)
            .increment(1);
        }
        let result = match outcome {
            Ok(resp) => DeliveryResult::Delivered(resp),
            Err((e, response)) if !e.retry || attempts >= row.max_attempts => {
                DeliveryResult::Failed {
                    error: if e.retry {
                        format!("{} (after {attempts} attempts)", e.message)
                    } else {
                        e.message
                    },
                    response,
                }
            }
            Err((e, _)) => {
                let delay = delays.next().unwrap_or(cfg.gateway.retry_max_delay);
                DeliveryResult::Retry {
                    error: e.message,
                    next_at: clock.now_ms() + delay.as_millis() as i64,
                }
            }
        };
        let next = match &result {
            DeliveryResult::Retry { next_at, .. } => Some(*next_at),
            _ => None,
        };
        let label = match &result {
            DeliveryResult::Delivered(_) => "delivered",
            DeliveryResult::Failed { .. } => "failed",
            DeliveryResult::Retry { .. } => "retry",
        };
        let kind = if row.kind == "http" { "http" } else { "send" };
        metrics::counter!("switchboard_outbox_attempts_total", "kind" => kind, "result" => label)
            .increment(1);
        tracing::debug!(outbox = row.id, attempts, "delivery attempt");
        let _ = engine.send(Work::Delivery(job.delivery(attempts, result)));
        match next {
            Some(at) => clock.sleep_until(at, None).await,
            None => {
                // After the report is queued: a rescan then finds the one or the other.
                engine.load().release(row.id);
                return;
            }
        }
    }
}

async fn send_http(
    http: &reqwest::Client,
    guard: &crate::egress::Guard,
    max_body: usize,
    job: &OutboxRow,
    key_prefix: &str,
) -> Result<Json, (SendError, Option<Json>)> {
    let r = &job.request;
    let bad = |m: String| {
        (
            SendError {
                message: m,
                retry: false,
            },
            None,
        )
    };
    let method = r["method"].as_str().unwrap_or("GET");
    let method = reqwest::Method::from_bytes(method.as_bytes()).map_err(|e| bad(e.to_string()))?;
    let url = r["url"].as_str().unwrap_or_default();
    let parsed = reqwest::Url::parse(url).map_err(|e| bad(format!("'{url}' is not a URL: {e}")))?;
    guard
        .check_url(&parsed)
        .map_err(|r| bad(format!("{}: {r}", redact(&parsed))))?;
    let mut req = http
        .request(method, url)
        .timeout(Duration::from_millis(job.timeout_ms.max(1) as u64))
        .header("Idempotency-Key", format!("{key_prefix}{}", job.id));
    for h in r["headers"].as_array().into_iter().flatten() {
        if let (Some(k), Some(v)) = (h[0].as_str(), h[1].as_str()) {
            req = req.header(k, v);
        }
    }
    let body = &r["body"];
    if let Some(j) = body.get("json") {
        req = req.json(j);
    } else if let Some(f) = body.get("form").and_then(Json::as_array) {
        let pairs: Vec<(String, String)> = f
            .iter()
            .map(|p| {
                (
                    p[0].as_str().unwrap_or_default().to_string(),
                    p[1].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        req = req.form(&pairs);
    } else if let Some(raw) = body.get("raw").and_then(Json::as_str) {
        req = req.body(raw.to_string());
    }
    let started = std::time::Instant::now();
    let resp = req.send().await.map_err(|e| {
        let shown = redact(&parsed);
        match crate::egress::refusal(&e) {
            // Refused by the address check: trying again gives the same answer.
            Some(r) => bad(format!("{shown}: {r}")),
            None => (
                SendError {
                    message: format!("request to {shown} failed: {}", error_chain(&e)),
                    retry: true,
                },
                None,
            ),
        }
    })?;
    let status = resp.status();
    let headers: Map<String, Json> = resp
        .headers()
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_string(), json!(v.to_str().ok()?))))
        .collect();
    let bytes = match read_capped(resp, max_body).await {
        Ok(b) => b,
        Err(why) => return Err(bad(format!("{}: {why}", redact(&parsed)))),
    };
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(RESPONSE_MAX)]).to_string();
    let parsed: Json = serde_json::from_slice(&bytes).unwrap_or(Json::Null);
    let captured = json!({"status": status.as_u16(), "headers": headers, "json": parsed, "body": text,
            "duration_ms": started.elapsed().as_millis() as u64});
    if status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408 {
        return Err((
            SendError {
                message: format!("{url} answered {status}"),
                retry: true,
            },
            Some(captured),
        ));
    }
    Ok(captured)
}

/// A URL as the journal shows it: without a password, and with the values of its query
/// string, where secrets often travel, replaced by `***`.
pub fn redact(url: &reqwest::Url) -> String {
    let mut u = url.clone();
    if u.password().is_some() {
        let _ = u.set_password(Some("***"));
    }
    let keys: Vec<String> = u.query_pairs().map(|(k, _)| k.into_owned()).collect();
    if !keys.is_empty() {
        u.query_pairs_mut()
            .clear()
            .extend_pairs(keys.iter().map(|k| (k.as_str(), "***")));
    }
    u.to_string()
}

/// The response body, read as it arrives, up to `max` bytes.
async fn read_capped(mut resp: reqwest::Response, max: usize) -> Result<Vec<u8>, String> {
    if resp.content_length().is_some_and(|n| n as usize > max) {
        return Err(format!("response over {max} bytes"));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| format!("reading the response failed: {}", error_chain(&e)))?
    {
        if body.len() + chunk.len() > max {
            return Err(format!("response over {max} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn urls_in_the_journal_keep_no_secrets() {
        let u = reqwest::Url::parse("https://bot:pw@crm.example/x?token=s3cret&id=7").unwrap();
        assert_eq!(
            super::redact(&u),
            "https://bot:***@crm.example/x?token=***&id=***"
        );
        let plain = reqwest::Url::parse("https://crm.example/deals/7").unwrap();
        assert_eq!(super::redact(&plain), "https://crm.example/deals/7");
    }
}
