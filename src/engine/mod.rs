//! The engine: takes stored events, fired timers and delivery results from a fair queue,
//! and advances runs. Each batch of work commits in one transaction (run state, outbox rows,
//! timers, waits, variables) before anything it caused is sent.

pub mod admin;
mod failures;
pub mod ingest;
pub mod intake;
mod queue;
mod status;
mod steps;

/// Expressions moved to `crate::lang`; the old path keeps working.
pub use crate::lang::expr;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value as Json};
use tokio::sync::{watch, Notify};

use crate::clock::Clock;
use crate::config::live::{Live, Version};
use crate::config::{Action, Config, Scenario};
use crate::store::{
    EventRow, OutboxRow, RunRow, RunStatus, Store, StoreError, SubjectLimit, TimerRow, Tx,
};
pub use intake::{Load, OutboxSender, WorkReceiver, WorkSender};
use queue::FairQueue;
/// Callback data of an `ask`'s choice and of a `send` step's button (for `switchboard test`).
pub use steps::{ASK_PREFIX, BUTTON_PREFIX};

/// Largest number of work items committed in one transaction.
const BATCH: usize = 256;
/// Attempts of a single work item before it is set aside.
const MAX_FAILURES: u32 = 5;
/// Items one lane may contribute to a batch per round.
const PER_LANE: usize = 16;
/// A rescan reads stored events while fewer than this many items are queued.
const RESCAN_ROOM: usize = 4 * BATCH;
/// Events stored this recently are left to their normal path by a rescan.
const RESCAN_GRACE_MS: i64 = 2_000;

/// A stored event ready for processing.
#[derive(Debug, Clone)]
pub struct EventItem {
    pub id: i64,
    pub kind: String,
    pub source: String,
    pub data: Arc<Json>,
    pub meta: Json,
    /// Read back from the database rather than handed over when stored: processed only if
    /// still pending when its batch runs (another copy may have been processed meanwhile).
    pub recheck: bool,
}

impl EventItem {
    /// The event just stored under `id`, handed over as it is.
    pub fn stored(id: i64, ev: crate::store::NewEvent) -> EventItem {
        EventItem {
            id,
            kind: ev.kind,
            source: ev.source,
            data: Arc::new(ev.data),
            meta: ev.meta,
            recheck: false,
        }
    }
}

impl From<EventRow> for EventItem {
    fn from(r: EventRow) -> Self {
        EventItem {
            id: r.id,
            kind: r.kind,
            source: r.source,
            data: Arc::new(r.data),
            meta: r.meta,
            recheck: true,
        }
    }
}

/// The result of one delivery attempt of an outbox row.
#[derive(Debug, Clone)]
pub enum DeliveryResult {
    Delivered(Json),
    /// Failed for good (attempts used up or a permanent error); the last response if any.
    Failed {
        error: String,
        response: Option<Json>,
    },
    /// Failed this time; the next attempt is due at `next_at`.
    Retry {
        error: String,
        next_at: i64,
    },
}

#[derive(Debug, Clone)]
pub struct Delivery {
    pub outbox_id: i64,
    /// The offer whose message this delivered, if any.
    pub offer_id: Option<i64>,
    pub run_id: Option<i64>,
    /// The step that made the request (the run waits there).
    pub step: Option<i64>,
    pub resume: bool,
    pub attempts: i64,
    pub lane: String,
    pub result: DeliveryResult,
    /// For a message of a run that failed for good: its channel and recipient.
    pub message: Option<(String, String)>,
}

/// A request for delivery, handed to the outbox worker after its row is committed.
#[derive(Debug, Clone)]
pub struct OutboxJob {
    pub row: OutboxRow,
    /// The engine lane its results go back to.
    pub lane: String,
}

impl OutboxJob {
    /// The report of an attempt at this job.
    pub fn delivery(&self, attempts: i64, result: DeliveryResult) -> Delivery {
        Delivery {
            outbox_id: self.row.id,
            offer_id: self.row.request["offer_id"].as_i64(),
            run_id: self.row.run_id,
            step: self.row.step,
            resume: self.row.resume,
            attempts,
            lane: self.lane.clone(),
            message: failures::failed_message(&self.row, &result),
            result,
        }
    }
}

pub enum Work {
    Event(EventItem),
    Timer(TimerRow),
    Delivery(Delivery),
    /// Answers a waiting run directly with this event data (dry runs).
    Answer {
        run_id: i64,
        data: Json,
    },
    /// An operator's action; answered after it committed.
    Admin(admin::AdminOp, admin::AdminReply),
    /// Look in the database for work nobody holds: pending events, outbox rows.
    Rescan,
    /// Events to store in the next batch's transaction, and whom to answer.
    Store(ingest::Handoff),
}

impl Work {
    fn lane(&self) -> String {
        match self {
            Work::Event(e) => format!("{}:{}", e.kind, e.source),
            Work::Timer(t) => format!("scenario:{}", t.scenario),
            Work::Delivery(d) => d.lane.clone(),
            Work::Answer { .. } => "answers".into(),
            Work::Admin(..) => "admin".into(),
            Work::Rescan => "rescan".into(),
            Work::Store(_) => "store".into(),
        }
    }
}

/// Whatever a batch caused that must happen only after it committed.
#[derive(Default)]
struct After {
    jobs: Vec<OutboxJob>,
    follow_up: Vec<Work>,
    timers_changed: bool,
    runs: Vec<(i64, String, RunStatus)>,
    replies: Vec<(admin::AdminReply, admin::AdminResult)>,
    /// Recipients (channel, address) the step being run leaves out (over their cap).
    skip: Vec<(String, String)>,
    /// Scenario switches: on or off, made at (ms).
    enable: Vec<(Arc<Scenario>, bool, i64)>,
}

/// The events handed over and not taken back, as one hand-over of about `ingest::GATHER`
/// events at most (hand-overs are not split).
fn take_arrivals(pending: &mut Vec<ingest::Handoff>) -> Option<ingest::Arrivals> {
    let mut taken: Option<ingest::Arrivals> = None;
    let mut used = 0;
    for h in pending.iter() {
        if taken.as_ref().is_some_and(|a| a.len() >= ingest::GATHER) {
            break;
        }
        used += 1;
        match (&mut taken, h.take()) {
            (_, None) => {}
            (None, Some(a)) => taken = Some(a),
            (Some(t), Some(a)) => t.extend(a),
        }
    }
    pending.drain(..used);
    taken
}

/// What the engine's queue holds, so that an event read back from the database and the same
/// event handed over by the ingest are not both processed.
#[derive(Default)]
struct Intake {
    /// Ids of the events in the queue.
    queued: HashSet<i64>,
    /// Events a rescan queued → its round: a late copy from the ingest is dropped.
    rescued: HashMap<i64, u32>,
    round: u32,
    /// A rescan in progress.
    cursor: Option<Rescan>,
}

/// Where a rescan stands: per lane (kind, source) the last event id read, so that stored
/// events come back as fairly as a live burst would be served; only events stored before
/// `before` (ms).
struct Rescan {
    before: i64,
    lanes: Vec<((String, String), i64)>,
}

impl Intake {
    fn push(&mut self, queue: &mut FairQueue<Work>, w: Work, load: &Load) {
        if let Work::Event(e) = &w {
            let late_copy = !e.recheck && self.rescued.remove(&e.id).is_some();
            if late_copy || !self.queued.insert(e.id) {
                load.done(1);
                return;
            }
        }
        queue.push(&w.lane(), w);
    }

    /// An item of a failed batch goes back.
    fn requeue(&mut self, queue: &mut FairQueue<Work>, w: Work) {
        if let Work::Event(e) = &w {
            self.queued.insert(e.id);
        }
        queue.push(&w.lane(), w);
    }
}

/// Records a delivery attempt on its outbox row; the response and error of a final one.
async fn record_delivery(
    tx: &mut dyn Tx,
    d: &Delivery,
    now: i64,
) -> Result<Option<(Option<Json>, Option<String>)>, StoreError> {
    match &d.result {
        DeliveryResult::Retry { error, next_at } => {
            tx.outbox_attempt(d.outbox_id, d.attempts, *next_at, error, now)
                .await?;
            Ok(None)
        }
        DeliveryResult::Delivered(r) => {
            tx.outbox_finish(d.outbox_id, "delivered", d.attempts, Some(r), None, now)
                .await?;
            Ok(Some((Some(r.clone()), None)))
        }
        DeliveryResult::Failed { error, response } => {
            tx.outbox_finish(
                d.outbox_id,
                "failed",
                d.attempts,
                response.as_ref(),
                Some(error),
                now,
            )
            .await?;
            Ok(Some((response.clone(), Some(error.clone()))))
        }
    }
}

/// Longest subject stored as it is: a longer one (a whole message text, say) is stored as its
/// digest, which PostgreSQL's indexes can hold and which still tells subjects apart.
const SUBJECT_KEPT: usize = 512;

fn storable_subject(s: String) -> String {
    if s.len() <= SUBJECT_KEPT && !s.contains('\0') {
        return s;
    }
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(s.as_bytes())))
}

pub struct Engine {
    /// The config of the batch being processed: the current one, read at its start.
    cfg: Arc<Config>,
    live: Arc<Live>,
    store: Arc<dyn Store>,
    clock: Clock,
    outbox: OutboxSender,
    timers: Arc<Notify>,
    me: WorkSender,
    globals: Map<String, Json>,
    /// The externally reachable base URL, `meta.public_url` in templates.
    public_url: String,
    /// Runs parked on an `http` step, as last saved. Only kept when this engine is the
    /// database's sole writer; it spares a read per response.
    http_parked: HashMap<i64, RunRow>,
    cache_runs: bool,
    /// Whether this batch holds the globals' lock (replicas: a write re-reads them first).
    globals_locked: bool,
    /// Whether any scenario reads or writes globals (else nothing re-reads them per batch).
    uses_globals: bool,
    /// Whether a scenario of `cfg` does.
    cfg_globals: bool,
    step_histograms: HashMap<&'static str, metrics::Histogram>,
    /// When this process started (ms): events stored since reach the engine directly.
    started_at: i64,
}

/// Most runs kept in `Engine::http_parked`.
const PARKED_CACHE: usize = 10_000;

impl Engine {
    pub async fn new(
        live: Arc<Live>,
        store: Arc<dyn Store>,
        clock: Clock,
        outbox: OutboxSender,
        timers: Arc<Notify>,
        me: WorkSender,
        public_url: String,
    ) -> Result<Engine, StoreError> {
        let globals = store.globals().await?;
        let cfg = live.config();
        let cfg_globals = cfg.scenarios.iter().any(|s| s.uses_globals);
        let uses_globals = cfg_globals || live.older_uses_globals();
        let started_at = clock.now_ms();
        Ok(Engine {
            cfg,
            live,
            clock,
            outbox,
            timers,
            me,
            globals,
            public_url,
            http_parked: HashMap::new(),
            step_histograms: HashMap::new(),
            started_at,
            cache_runs: store.exclusive(),
            globals_locked: false,
            uses_globals,
            cfg_globals,
            store,
        })
    }

    /// Serves work until `stop` turns true and the queue is drained.
    pub async fn run(mut self, rx: WorkReceiver, mut stop: watch::Receiver<bool>) {
        let mut rx = rx.rx;
        let mut queue: FairQueue<Work> = FairQueue::default();
        let mut intake = Intake::default();
        let mut buf = Vec::with_capacity(BATCH);
        let mut failures = 0u32;
        // Events handed over by the ingest, stored by the next batch.
        let mut arrived: Vec<ingest::Handoff> = Vec::new();
        loop {
            if queue.is_empty() && intake.cursor.is_none() && arrived.is_empty() {
                tokio::select! {
                    n = rx.recv_many(&mut buf, 4096) => {
                        if n == 0 { return; }
                    }
                    _ = stop.changed() => { if *stop.borrow() { return; } }
                }
            }
            while let Ok(w) = rx.try_recv() {
                buf.push(w);
                if buf.len() >= 65_536 {
                    break;
                }
            }
            let mut rescan = false;
            for w in buf.drain(..) {
                match w {
                    Work::Rescan => {
                        rescan = true;
                        self.load().done(1);
                    }
                    Work::Store(a) => arrived.push(a),
                    w => intake.push(&mut queue, w, self.load()),
                }
            }
            if rescan {
                self.start_rescan(&mut intake, &queue).await;
            }
            if intake.cursor.is_some() && queue.len() < RESCAN_ROOM {
                self.rescan_page(&mut intake, &mut queue).await;
                if queue.is_empty() && arrived.is_empty() {
                    continue;
                }
            }
            let mut arrivals = take_arrivals(&mut arrived);
            if arrivals.is_none() && queue.is_empty() {
                continue;
            }
            if failures > 0 {
                // While batches fail, arriving events are stored by themselves and queued.
                if let Some(a) = arrivals.take() {
                    self.store_alone(a, &mut intake, &mut queue).await;
                }
                if queue.is_empty() {
                    continue;
                }
            }
            // After a failed batch, items go one at a time until one succeeds, so that a
            // single bad item cannot hold back the rest.
            let batch = queue.take(if failures > 0 { 1 } else { BATCH }, PER_LANE);
            for w in &batch {
                if let Work::Event(e) = w {
                    intake.queued.remove(&e.id);
                }
            }
            self.refresh_config();
            let started = std::time::Instant::now();
            let result = self.process_with(&batch, arrivals.as_ref()).await;
            tracing::debug!(
                items = batch.len(),
                arrived = arrivals.as_ref().map_or(0, |a| a.len()),
                queued = queue.len(),
                micros = started.elapsed().as_micros() as u64,
                "batch"
            );
            let e = match result {
                Ok(stored) => {
                    failures = 0;
                    self.load().done(batch.len());
                    if let (Some(a), Some((outcomes, rest))) = (arrivals, stored) {
                        let n = a.len();
                        self.load().add(rest.len());
                        for w in rest {
                            intake.push(&mut queue, w, self.load());
                        }
                        a.answer(outcomes.into_iter().map(Ok).collect());
                        self.load().done(n);
                    }
                    continue;
                }
                Err(e) => e,
            };
            // The transaction rolled back; nothing of the batch happened.
            self.http_parked.clear();
            self.globals = self
                .store
                .globals()
                .await
                .unwrap_or_else(|_| self.globals.clone());
            metrics::counter!("switchboard_engine_failed_batches_total").increment(1);
            // While the database is out of reach, no item is to blame: wait for it.
            if !e.unavailable() {
                failures += 1;
            }
            if batch.len() == 1 && failures > MAX_FAILURES {
                failures = 0;
                self.set_aside(&batch[0], &e).await;
                self.load().done(1);
            } else {
                tracing::error!(error = %e, items = batch.len(), "engine batch failed; retrying");
                tokio::time::sleep(Duration::from_millis(100 * failures.clamp(1, 20) as u64)).await;
                for w in batch {
                    intake.requeue(&mut queue, w);
                }
            }
            // The events the batch was to store are stored by themselves, after it.
            if let Some(a) = arrivals {
                self.store_alone(a, &mut intake, &mut queue).await;
            }
        }
    }

    fn load(&self) -> &Arc<Load> {
        self.me.load()
    }

    /// Stores arriving events in a transaction of their own, answers their senders and
    /// queues the accepted ones.
    async fn store_alone(
        &mut self,
        a: ingest::Arrivals,
        intake: &mut Intake,
        queue: &mut FairQueue<Work>,
    ) {
        let n = a.len();
        let accepted = a.store_alone(&*self.store, None).await;
        self.load().add(accepted.len());
        for e in accepted {
            intake.push(queue, Work::Event(e), self.load());
        }
        self.load().done(n);
    }

    /// Takes up a reloaded config (a batch is served by one config throughout).
    fn refresh_config(&mut self) {
        let cfg = self.live.config();
        if !Arc::ptr_eq(&cfg, &self.cfg) {
            self.cfg_globals = cfg.scenarios.iter().any(|s| s.uses_globals);
            self.cfg = cfg;
        }
        self.uses_globals = self.cfg_globals || self.live.older_uses_globals();
    }

    /// Fails a run that cannot go on because its version of its scenario is not available
    /// (journaled with why); it was answered or pressed, so it would otherwise wait on.
    async fn fail_unavailable(
        &mut self,
        tx: &mut dyn Tx,
        mut run: RunRow,
        why: &str,
        after: &mut After,
    ) -> Result<(), StoreError> {
        if !run.status.is_active() {
            return Ok(());
        }
        tx.clear_parks(run.id).await?;
        steps::fail(&mut run, why, self.now());
        self.run_failed(tx, &mut run, after).await?;
        tx.save_run(&run).await
    }

    /// The version of its scenario a run follows: the one it started with, compiled from
    /// its stored text when this process has not seen it yet. `Err` says why there is none.
    pub(crate) async fn scenario_of(
        &mut self,
        tx: &mut dyn Tx,
        run: &RunRow,
    ) -> Result<Result<Arc<Scenario>, String>, StoreError> {
        // Most runs follow the version of the config this batch is served by.
        if let Some(v) = &run.version {
            if self.cfg.version_of(&run.scenario) == Some(v.as_str()) {
                if let Some(sc) = self.cfg.scenario(&run.scenario) {
                    return Ok(Ok(sc.clone()));
                }
            }
        }
        match self.live.scenario(&run.scenario, run.version.as_deref()) {
            Version::Found(sc) => Ok(Ok(sc)),
            Version::Missing(why) => Ok(Err(why)),
            Version::Unknown(hash) => Ok(match tx.scenario_version(&hash).await? {
                Some((id, text)) => {
                    let found = self.live.add(&hash, &id, &text);
                    if found.as_ref().is_ok_and(|sc| sc.uses_globals) {
                        self.uses_globals = true;
                    }
                    found
                }
                None => Err(format!(
                    "version {} of scenario '{}' is not in the database",
                    crate::config::live::short(&hash),
                    run.scenario
                )),
            }),
        }
    }

    /// Records an item that failed alone again and again as a failure of its own (the event
    /// failed, the run failed), so that it is neither retried forever nor lost. If even that
    /// cannot be written, the item stays as it is in the database for a rescan to find.
    async fn set_aside(&mut self, w: &Work, error: &StoreError) {
        let now = self.now();
        let reason = format!("failed {MAX_FAILURES} times and was set aside: {error}");
        tracing::error!(error = %error, "engine work failed repeatedly; set aside");
        let written = async {
            let mut tx = self.store.begin().await?;
            let mut after = After::default();
            let run = match w {
                Work::Event(e) => {
                    let outcome = json!([{"verdict": "failed", "error": reason}]);
                    tx.finish_event(e.id, "failed", &outcome, now).await?;
                    None
                }
                Work::Timer(t) => {
                    if tx.delete_timer(t.id).await? {
                        Some(t.run_id)
                    } else {
                        None
                    }
                }
                Work::Delivery(d) => {
                    record_delivery(&mut *tx, d, now).await?;
                    d.run_id.filter(|_| d.resume)
                }
                // Dropped: the operator is told the action did not happen.
                Work::Admin(..) | Work::Answer { .. } | Work::Rescan | Work::Store(_) => None,
            };
            if let Some(id) = run {
                if let Some(mut run) = tx.load_run(id).await? {
                    if run.status.is_active() {
                        tx.clear_parks(run.id).await?;
                        steps::fail(&mut run, &reason, now);
                        self.run_failed(&mut *tx, &mut run, &mut after).await?;
                        tx.save_run(&run).await?;
                    }
                }
            }
            tx.commit().await?;
            for w in after.follow_up {
                let _ = self.me.send(w);
            }
            Ok::<(), StoreError>(())
        }
        .await;
        if let Err(e) = written {
            tracing::error!(error = %e, "recording the failure failed; left for a later rescan");
        }
    }

    /// Starts looking for stored work nobody holds: outbox rows at once, events page by page
    /// as the queue has room.
    async fn start_rescan(&mut self, intake: &mut Intake, queue: &FairQueue<Work>) {
        intake.round += 1;
        let round = intake.round;
        intake.rescued.retain(|_, r| *r + 1 >= round);
        // The first rescan is the start-up's: everything stored before this process started
        // is unattended (what it stored itself comes through the ingest).
        let before = if round == 1 {
            self.started_at - 1
        } else {
            self.now() - RESCAN_GRACE_MS
        };
        intake.cursor = match self.store.pending_lanes().await {
            Ok(lanes) => Some(Rescan {
                before,
                lanes: lanes.into_iter().map(|l| (l, 0)).collect(),
            }),
            Err(e) => {
                tracing::warn!(error = %e, "rescanning events failed; trying at the next rescan");
                None
            }
        };
        let rows = match self.store.open_outbox().await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "rescanning the outbox failed");
                return;
            }
        };
        // A row the worker does not hold has had its final result sent to the engine
        // before the release: it is queued here, unless it was lost.
        let loose: Vec<_> = rows
            .into_iter()
            .filter(|r| !self.load().holds(r.id))
            .collect();
        if loose.is_empty() {
            return;
        }
        let reported: HashSet<i64> = queue
            .iter()
            .filter_map(|w| match w {
                Work::Delivery(d) => Some(d.outbox_id),
                _ => None,
            })
            .collect();
        let mut n = 0;
        for row in loose.into_iter().filter(|r| !reported.contains(&r.id)) {
            n += 1;
            let _ = self.outbox.send(crate::outbox::job_from_row(row));
        }
        if n > 0 {
            tracing::warn!(
                rows = n,
                "outbox rows found unattended; delivering them again"
            );
        }
    }

    /// Reads the next stored events of every lane in the rescan, a page per lane.
    async fn rescan_page(&mut self, intake: &mut Intake, queue: &mut FairQueue<Work>) {
        const PAGE: i64 = 128;
        let Some(mut scan) = intake.cursor.take() else {
            return;
        };
        let mut n = 0;
        let mut lanes = Vec::with_capacity(scan.lanes.len());
        for (lane, after) in std::mem::take(&mut scan.lanes) {
            let page = match self.store.pending_lane_events(&lane, after, PAGE).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "rescanning events failed; trying at the next rescan");
                    return;
                }
            };
            if let (Some(last), true) = (page.last(), page.len() as i64 == PAGE) {
                lanes.push((lane, last.id));
            }
            for ev in page {
                if ev.received_at > scan.before || intake.queued.contains(&ev.id) {
                    continue;
                }
                n += 1;
                intake.rescued.insert(ev.id, intake.round);
                self.load().add(1);
                intake.push(queue, Work::Event(EventItem::from(ev)), self.load());
            }
        }
        if !lanes.is_empty() {
            scan.lanes = lanes;
            intake.cursor = Some(scan);
        }
        if n > 0 {
            tracing::info!(events = n, "queued stored events");
        }
    }

    pub(crate) async fn process(&mut self, batch: &[Work]) -> Result<(), StoreError> {
        self.process_with(batch, None).await.map(|_| ())
    }

    /// Processes a batch in one transaction that also stores `arrivals`: of their accepted
    /// events, as many as the batch has room for (taken fairly across lanes) are processed
    /// in it too. Returns the arrivals' outcomes and the accepted events left to queue.
    async fn process_with(
        &mut self,
        batch: &[Work],
        arrivals: Option<&ingest::Arrivals>,
    ) -> Result<Option<(Vec<crate::store::IngestOutcome>, Vec<Work>)>, StoreError> {
        if !self.cache_runs && self.uses_globals {
            // Other replicas may have changed them.
            self.globals = self.store.globals().await?;
        }
        self.globals_locked = false;
        let mut tx = self.store.begin().await?;
        // The runs that responses and timers resume, read in one go.
        let resumed: Vec<i64> = batch
            .iter()
            .filter_map(|w| match w {
                Work::Delivery(d) if d.resume => d.run_id,
                Work::Timer(t) => Some(t.run_id),
                _ => None,
            })
            .collect();
        if !resumed.is_empty() {
            tx.prefetch_runs(&resumed).await?;
        }
        let mut direct = Vec::new();
        let mut stored = None;
        if let Some(a) = arrivals {
            let outcomes = tx.ingest(&a.events).await?;
            let mut fresh = FairQueue::default();
            for (ev, o) in a.events.iter().zip(&outcomes) {
                if let crate::store::IngestOutcome::Accepted(id) = o {
                    let w = Work::Event(EventItem::stored(*id, ev.clone()));
                    fresh.push(&w.lane(), w);
                }
            }
            direct = fresh.take(BATCH.saturating_sub(batch.len()), PER_LANE);
            let rest = fresh.take(usize::MAX, usize::MAX);
            stored = Some((outcomes, rest));
        }
        let mut after = After::default();
        for w in batch.iter().chain(&direct) {
            match w {
                Work::Event(e) => {
                    if e.recheck && !tx.event_pending(e.id).await? {
                        continue;
                    }
                    self.on_event(&mut *tx, e, &mut after).await?
                }
                Work::Timer(t) => self.on_timer(&mut *tx, t, &mut after).await?,
                Work::Delivery(d) => self.on_delivery(&mut *tx, d, &mut after).await?,
                Work::Answer { run_id, data } => {
                    self.on_answer(&mut *tx, *run_id, data, &mut after).await?
                }
                Work::Admin(op, reply) => self.on_admin(&mut *tx, op, reply, &mut after).await?,
                Work::Rescan | Work::Store(_) => {}
            }
        }
        // On failure the caller reloads the globals this batch changed in memory.
        tx.commit().await?;
        for (run, scenario, status) in &after.runs {
            tracing::info!(target: "journal", run = run, scenario = %scenario, status = status.as_str(), "run");
        }
        for (sc, on, at) in after.enable {
            sc.set_enabled(on, at);
        }
        for (reply, result) in after.replies {
            reply.send(result);
        }
        let mut transitions: HashMap<(&str, &'static str), u64> = HashMap::new();
        for (_, scenario, status) in &after.runs {
            *transitions
                .entry((scenario.as_str(), status.as_str()))
                .or_default() += 1;
        }
        for ((scenario, status), n) in transitions {
            metrics::counter!("switchboard_run_transitions_total",
                "scenario" => scenario.to_string(), "status" => status)
            .increment(n);
        }
        for job in after.jobs {
            let _ = self.outbox.send(job);
        }
        for w in after.follow_up {
            let _ = self.me.send(w);
        }
        if after.timers_changed {
            self.timers.notify_one();
        }
        Ok(stored)
    }

    fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    async fn on_event(
        &mut self,
        tx: &mut dyn Tx,
        ev: &EventItem,
        after: &mut After,
    ) -> Result<(), StoreError> {
        let mut outcome: Vec<Json> = Vec::new();
        let cfg = self.cfg.clone();
        // An event that answers a waiting run, an asking run or an offer goes there only.
        let consumed = match ev.kind.as_str() {
            "webhook" => self.answer_wait(tx, ev, &mut outcome, after).await?,
            "message" => self.answer_ask(tx, ev, &mut outcome, after).await?,
            // Recorded on the message it is about, and it may start scenarios too.
            "status" => {
                self.record_status(tx, ev, &mut outcome).await?;
                false
            }
            "click" => {
                self.on_click(tx, ev, &mut outcome, after).await?;
                true
            }
            _ => false,
        };
        if consumed {
            return tx
                .finish_event(ev.id, "done", &Json::Array(outcome), self.now())
                .await;
        }
        let scenarios: Vec<Arc<Scenario>> = match ev.kind.as_str() {
            "webhook" => cfg.scenarios_for_hook(&ev.source).cloned().collect(),
            "message" => cfg.scenarios_for_messages(&ev.source).cloned().collect(),
            "status" => cfg.scenarios_for_status(&ev.source).cloned().collect(),
            failures::FAILED_KIND => cfg.scenarios_for_failure(&ev.source).cloned().collect(),
            _ => cfg.scenario(&ev.source).cloned().into_iter().collect(),
        };
        let listened = outcome.len();
        if scenarios.is_empty() {
            outcome.push(json!({"verdict": "no scenario listens to this event"}));
        }
        for sc in scenarios {
            let o = self.start_run(tx, &sc, ev, after).await?;
            outcome.push(o);
        }
        self.fallback(tx, ev, listened, &mut outcome, after).await?;
        tx.finish_event(ev.id, "done", &Json::Array(outcome), self.now())
            .await
    }

    async fn start_run(
        &mut self,
        tx: &mut dyn Tx,
        sc: &Arc<Scenario>,
        ev: &EventItem,
        after: &mut After,
    ) -> Result<Json, StoreError> {
        if !sc.enabled() {
            return Ok(json!({"scenario": sc.id, "verdict": "disabled"}));
        }
        let now = self.now();
        let empty = Map::new();
        let ctx = steps::Ctx {
            event: &ev.data,
            run: &empty,
            subject: &empty,
            global: &self.globals,
            meta: json!({"event_id": ev.id, "scenario": sc.id, "now": crate::clock::rfc3339(now),
                "now_ms": now, "public_url": self.public_url,
                "test": ev.kind == admin::MANUAL && ev.meta["test"] == true}),
        }
        .value();
        let mut first = Vec::new();
        if ev.kind == admin::MANUAL {
            first.push(admin::started_by_hand(ev.meta["test"] == true, now));
        }
        if let Some(when) = &sc.when {
            match when.truthy(&ctx) {
                Ok(true) => first.push(json!({"action": "when", "if": when.src,
                    "seen": when.seen(&ctx), "verdict": true, "at": now})),
                Ok(false) => {
                    return Ok(json!({"scenario": sc.id, "verdict": "guard false",
                        "if": when.src, "seen": when.seen(&ctx)}))
                }
                Err(e) => {
                    return Ok(json!({"scenario": sc.id, "verdict": "guard error",
                        "if": when.src, "error": e.0}))
                }
            }
        }
        let subject = match &sc.subject {
            Some(t) => match t.render(&ctx) {
                Ok(s) => Some(storable_subject(s)),
                Err(e) => {
                    return Ok(json!({"scenario": sc.id, "verdict": "subject error", "error": e.0}))
                }
            },
            None => None,
        };
        if let Some(subj) = &subject {
            if let Some(why) = self.limited(tx, sc, subj, now).await? {
                tx.bump_counter(&sc.id, true, now).await?;
                return Ok(
                    json!({"scenario": sc.id, "subject": subj, "verdict": "limited", "why": why}),
                );
            }
        }
        tx.bump_counter(&sc.id, false, now).await?;
        let depth = ev.meta.get("depth").and_then(Json::as_i64).unwrap_or(0);
        let mut run = RunRow {
            id: tx.new_run_id().await?,
            scenario: sc.id.clone(),
            subject: subject.clone(),
            status: RunStatus::Running,
            pc: 0,
            vars: Map::new(),
            journal: first,
            event_id: Some(ev.id),
            event: (*ev.data).clone(),
            depth,
            error: None,
            created_at: now,
            updated_at: now,
            version: self.cfg.version_of(&sc.id).map(str::to_string),
        };
        if let Some(y) = &sc.yearly {
            return self.start_yearly(tx, run, sc, y, &ctx, after).await;
        }
        self.execute(tx, &mut run, sc, after).await?;
        Ok(json!({"scenario": sc.id, "subject": subject, "run": run.id, "status": run.status}))
    }

    /// Applies the scenario's subject limits; `Some(reason)` when this run may not start.
    async fn limited(
        &mut self,
        tx: &mut dyn Tx,
        sc: &Scenario,
        subject: &str,
        now: i64,
    ) -> Result<Option<String>, StoreError> {
        let l = &sc.limit;
        if l.single && tx.active_run_exists(&sc.id, subject).await? {
            return Ok(Some("a run for this subject is still active".into()));
        }
        if !l.once && l.per_subject.is_none() {
            return Ok(None);
        }
        let mut state = tx
            .subject_limit(&sc.id, subject)
            .await?
            .unwrap_or(SubjectLimit {
                total: 0,
                window_start: now,
                window_count: 0,
            });
        if l.once && state.total > 0 {
            return Ok(Some("only once per subject".into()));
        }
        if let Some((n, per)) = l.per_subject {
            if now - state.window_start >= per.as_millis() as i64 {
                state.window_start = now;
                state.window_count = 0;
            }
            if state.window_count >= n as i64 {
                return Ok(Some(format!(
                    "at most {n} per {} per subject",
                    humantime::format_duration(per)
                )));
            }
        }
        state.total += 1;
        state.window_count += 1;
        tx.put_subject_limit(&sc.id, subject, &state).await?;
        Ok(None)
    }

    async fn on_timer(
        &mut self,
        tx: &mut dyn Tx,
        t: &TimerRow,
        after: &mut After,
    ) -> Result<(), StoreError> {
        if !tx.delete_timer(t.id).await? {
            return Ok(()); // cancelled, replaced or already fired
        }
        after.timers_changed = true;
        let Some(mut run) = tx.load_run(t.run_id).await? else {
            return Ok(());
        };
        let sc = match self.scenario_of(tx, &run).await? {
            Ok(sc) => sc,
            Err(why) => {
                steps::fail(&mut run, &why, self.now());
                self.run_failed(tx, &mut run, after).await?;
                tx.save_run(&run).await?;
                return Ok(());
            }
        };
        let now = self.now();
        match (t.kind.as_str(), run.status) {
            ("sleep", RunStatus::Sleeping) if run.pc < 0 && sc.yearly.is_some() => {
                if !self.yearly_woke(tx, &mut run, &sc, t, after).await? {
                    return Ok(());
                }
            }
            ("sleep", RunStatus::Sleeping) => self.sleep_woke(&mut run, now),
            ("hold", RunStatus::Sleeping) => self.hold_ended(&mut run, now),
            ("wait_timeout", RunStatus::Waiting) => {
                tx.clear_parks(run.id).await?;
                match sc.steps.get(run.pc as usize).map(|s| &s.action) {
                    Some(Action::Wait(w)) => self.wait_timed_out(&mut run, w, now),
                    Some(Action::Ask(a)) => self.ask_timed_out(tx, &mut run, a, now, after).await?,
                    Some(Action::Offer(o)) => {
                        self.offer_timed_out(tx, &mut run, o, now, after).await?
                    }
                    _ => {
                        steps::fail(
                            &mut run,
                            "the waiting step moved: the scenario changed",
                            now,
                        );
                        self.run_failed(tx, &mut run, after).await?;
                        tx.save_run(&run).await?;
                        return Ok(());
                    }
                }
            }
            _ => return Ok(()),
        }
        run.status = RunStatus::Running;
        self.execute(tx, &mut run, &sc, after).await
    }

    async fn on_delivery(
        &mut self,
        tx: &mut dyn Tx,
        d: &Delivery,
        after: &mut After,
    ) -> Result<(), StoreError> {
        let now = self.now();
        let Some((response, error)) = record_delivery(tx, d, now).await? else {
            return Ok(());
        };
        if let Some(e) = &error {
            self.send_failed(tx, d, e, after).await?;
        }
        if let Some(m) = response.as_ref().and_then(|r| r["message"].as_str()) {
            self.apply_early_statuses(tx, m).await?;
        }
        // A message the channel deliberately did not send (an address on its suppression
        // list) is said in the run's journal, not only on the outbox row.
        if let (Some(why), Some(run_id)) = (
            response.as_ref().and_then(|r| r["not_sent"].as_str()),
            d.run_id,
        ) {
            if let Some(mut run) = tx.load_run(run_id).await? {
                steps::note(
                    &mut run,
                    json!({"step": d.step, "action": "send", "result": format!("not sent: {why}"),
                        "outbox_id": d.outbox_id, "at": now}),
                );
                self.http_parked.remove(&run.id);
                tx.save_run(&run).await?;
            }
        }
        if let (Some(offer), Some(r)) = (d.offer_id, &response) {
            if let Some(m) = r["message"].as_str() {
                self.offer_message_known(tx, offer, d.outbox_id, m, after)
                    .await?;
            }
        }
        let (true, Some(run_id)) = (d.resume, d.run_id) else {
            return Ok(());
        };
        self.on_http_response(tx, run_id, d, response, error, now, after)
            .await
    }
}
