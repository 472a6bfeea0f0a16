//! The persistence boundary: events, runs, outbox, timers, waits, limits and variables.
//! The engine talks only to these traits; SQLite implements them today and another
//! backend (PostgreSQL) can be added beside it without touching the engine.

mod postgres;
mod rows;
mod sql;
mod sqlite;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};

pub use postgres::PgStore;
pub use sqlite::{file_of as sqlite_file, SqliteStore};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    // The driver's error is shown in the message, not chained as a source: chained, every
    // cause would be printed twice.
    #[error("database: {0}")]
    Db(sqlx::Error),
    /// From statements run directly on a SQLite connection's handle.
    #[error("database: {0}")]
    Sqlite(rusqlite::Error),
    #[error("migration: {0}")]
    Migrate(sqlx::migrate::MigrateError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("unsupported database URL '{0}' (use sqlite://path or postgres://…)")]
    Unsupported(String),
    #[error("this replica was presumed dead and its work handed to others")]
    Fenced,
    #[error("{0}")]
    Busy(String),
}

impl StoreError {
    /// The database could not be reached or refused service for the moment (connection
    /// lost, pool exhausted, server shutting down, file locked, a deadlock between
    /// transactions): no statement is to blame, and trying again later is right.
    pub fn unavailable(&self) -> bool {
        if let StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) = self {
            return matches!(
                e.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            );
        }
        let StoreError::Db(e) = self else {
            return matches!(self, StoreError::Busy(_));
        };
        match e {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Protocol(_) => true,
            sqlx::Error::Database(d) => {
                let code = d.code().unwrap_or_default();
                if code.len() == 5 {
                    // PostgreSQL: connection exceptions (08…), operator intervention (57P…),
                    // insufficient resources (53…), a database not accepting connections;
                    // and a deadlock or serialization failure, which no statement causes alone.
                    code.starts_with("08")
                        || code.starts_with("57P")
                        || code.starts_with("53")
                        || code == "55000"
                        || code == "40001"
                        || code == "40P01"
                } else {
                    // SQLite: busy (5) and locked (6), with their extended codes.
                    code.parse::<u32>().is_ok_and(|c| matches!(c & 0xff, 5 | 6))
                }
            }
            _ => false,
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Db(e)
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Sqlite(e)
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        StoreError::Migrate(e)
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

pub use crate::lang::model::PoolOptions;

/// Opens the store a URL names: `postgres://…` is PostgreSQL; `sqlite://path` or a bare
/// path is a SQLite file.
pub async fn open(url: &str, pool: &PoolOptions) -> Result<std::sync::Arc<dyn Store>> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(std::sync::Arc::new(PgStore::open(url, pool).await?))
    } else if url.starts_with("sqlite:") || !url.contains("://") {
        Ok(std::sync::Arc::new(SqliteStore::open(url).await?))
    } else {
        Err(StoreError::Unsupported(url.to_string()))
    }
}

/// Opens the store for a gateway that writes to it. A SQLite file has one such writer: a
/// second gateway on the same file is refused (readers such as `journal` are not).
pub async fn open_writer(url: &str, pool: &PoolOptions) -> Result<std::sync::Arc<dyn Store>> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return open(url, pool).await;
    }
    let lock = sqlite::writer_lock(url)?;
    let mut store = SqliteStore::open(url).await?;
    store.hold(lock);
    Ok(std::sync::Arc::new(store))
}

/// Applies the migrations of the database a URL names, without registering a replica.
pub async fn migrate(url: &str) -> Result<()> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        PgStore::migrate(url).await
    } else {
        open(url, &PoolOptions::default()).await.map(|_| ())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Running,
    Waiting,
    Sleeping,
    Done,
    Failed,
    Cancelled,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Waiting => "waiting",
            RunStatus::Sleeping => "sleeping",
            RunStatus::Done => "done",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<RunStatus> {
        Some(match s {
            "running" => RunStatus::Running,
            "waiting" => RunStatus::Waiting,
            "sleeping" => RunStatus::Sleeping,
            "done" => RunStatus::Done,
            "failed" => RunStatus::Failed,
            "cancelled" => RunStatus::Cancelled,
            _ => return None,
        })
    }

    pub fn is_active(self) -> bool {
        matches!(
            self,
            RunStatus::Running | RunStatus::Waiting | RunStatus::Sleeping
        )
    }
}

/// An event to store. `kind` is `webhook`, `schedule` or `call`; `source` the hook name or
/// scenario id.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub kind: String,
    pub source: String,
    pub dedupe_key: Option<String>,
    pub data: Json,
    pub meta: Json,
    /// A rejected event is journaled but never processed.
    pub rejected: Option<String>,
    pub received_at: i64,
}

impl NewEvent {
    /// The status it is stored with.
    pub fn status(&self) -> &'static str {
        if self.rejected.is_some() {
            "rejected"
        } else {
            "pending"
        }
    }

    /// What storing it under `id` came to.
    pub fn stored_as(&self, id: i64) -> IngestOutcome {
        if self.rejected.is_some() {
            IngestOutcome::Rejected(id)
        } else {
            IngestOutcome::Accepted(id)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestOutcome {
    Accepted(i64),
    Duplicate(i64),
    Rejected(i64),
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct EventRow {
    pub id: i64,
    pub kind: String,
    pub source: String,
    pub status: String,
    pub data: Json,
    pub meta: Json,
    pub outcome: Option<Json>,
    pub error: Option<String>,
    pub received_at: i64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RunRow {
    pub id: i64,
    pub scenario: String,
    pub subject: Option<String>,
    pub status: RunStatus,
    pub pc: i64,
    pub vars: Map<String, Json>,
    pub journal: Vec<Json>,
    pub event_id: Option<i64>,
    /// The data of the event that started the run (`event` in templates).
    pub event: Json,
    pub depth: i64,
    pub error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    /// The SHA-256 of the scenario file the run started with (`None`: before versions).
    pub version: Option<String>,
}

#[derive(Debug, Clone)]
pub struct NewOutbox {
    pub run_id: Option<i64>,
    pub step: Option<i64>,
    pub kind: String,
    pub channel: String,
    pub request: Json,
    pub max_attempts: i64,
    pub timeout_ms: i64,
    pub resume: bool,
    pub now: i64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct OutboxRow {
    pub id: i64,
    pub run_id: Option<i64>,
    pub step: Option<i64>,
    pub kind: String,
    pub channel: String,
    pub request: Json,
    pub status: String,
    pub attempts: i64,
    pub max_attempts: i64,
    pub timeout_ms: i64,
    pub next_attempt_at: i64,
    pub resume: bool,
    pub response: Option<Json>,
    pub last_error: Option<String>,
    /// The reference of the message it sent (a wamid, a Telegram message id), once delivered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_ref: Option<String>,
    /// The furthest delivery status the platform reported: `sent`, `delivered`, `read`, or
    /// `failed` (which ends it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery_status: Option<String>,
    /// Every delivery status as it came, once each: `{status, at, timestamp, error}`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub statuses: Vec<Json>,
}

/// A delivery status of a sent message, as the platform reported it.
#[derive(Debug, Clone)]
pub struct DeliveryStatus<'a> {
    pub channel: &'a str,
    pub message_ref: &'a str,
    /// `sent`, `delivered`, `read`, `failed`, …
    pub status: &'a str,
    /// What the row's `statuses` list keeps.
    pub entry: &'a Json,
    /// The platform's error, for a failed one: it becomes the row's `last_error`.
    pub error: Option<&'a str>,
}

/// An address a channel no longer sends to.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Suppression {
    pub channel: String,
    pub address: String,
    /// `unsubscribed`, or `bounced: <status> <the remote server's reason>`.
    pub reason: String,
    /// Since when (Unix ms).
    pub at: i64,
}

#[derive(Debug, Clone)]
pub struct NewTimer {
    pub run_id: i64,
    pub kind: String,
    pub due_at: i64,
    pub scenario: String,
    pub subject: Option<String>,
    pub key: Option<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TimerRow {
    pub id: i64,
    pub run_id: i64,
    /// `sleep` or `wait_timeout`.
    pub kind: String,
    /// Unix milliseconds.
    pub due_at: i64,
    pub scenario: String,
    pub subject: Option<String>,
    pub key: Option<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct WaitRow {
    pub id: i64,
    pub run_id: i64,
    pub hook: String,
    pub scenario: String,
    pub step: i64,
    pub match_key: String,
    pub created_at: i64,
}

/// A run without its journal and variables, for lists.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RunSummary {
    pub id: i64,
    pub scenario: String,
    pub subject: Option<String>,
    pub status: RunStatus,
    pub pc: i64,
    pub event_id: Option<i64>,
    pub error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub scenario: Option<String>,
    pub status: Option<RunStatus>,
    /// Unix milliseconds, inclusive.
    pub from: Option<i64>,
    /// Unix milliseconds, exclusive.
    pub to: Option<i64>,
    /// Text searched in the event data and the subject.
    pub q: Option<String>,
    /// Only runs with a smaller id (paging).
    pub before: Option<i64>,
    pub limit: i64,
}

#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub source: Option<String>,
    pub status: Option<String>,
    pub q: Option<String>,
    pub before: Option<i64>,
    pub limit: i64,
}

/// Per-scenario counts for the operator.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct ScenarioStats {
    pub scenario: String,
    pub started: i64,
    pub done: i64,
    pub failed: i64,
    pub active: i64,
    pub cancelled: i64,
    pub limited: i64,
    /// Unix milliseconds of the last run started.
    pub last_fired: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct NewWait {
    pub run_id: i64,
    pub hook: String,
    pub scenario: String,
    pub step: i64,
    pub match_key: String,
    pub now: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct OfferRow {
    pub id: i64,
    pub run_id: i64,
    pub step: i64,
    pub channel: String,
    /// The address as the step wrote it: a chat, or `staff` and a member or `@group`.
    pub chat_id: String,
    pub text: String,
    /// `open`, `taken` or `expired`.
    pub status: String,
    /// User ids that declined.
    pub excluded: Vec<String>,
    pub winner: Option<Json>,
}

/// One recipient's message of an offer: an offer to a chat has one, an offer to several
/// people one per person.
#[derive(Debug, Clone, Serialize)]
pub struct OfferMessage {
    pub channel: String,
    pub chat_id: String,
    /// The message's reference, once the channel gave it out.
    pub message_id: Option<String>,
    /// The outbox row that sends it.
    pub outbox_id: Option<i64>,
    /// What it says, in the channel's markup and the recipient's language.
    pub text: String,
    pub lang: Option<String>,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct SubjectLimit {
    pub total: i64,
    pub window_start: i64,
    pub window_count: i64,
}

/// Counts for the journal summary.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct Counts {
    pub events: i64,
    pub runs_by_status: std::collections::BTreeMap<String, i64>,
    pub outbox_by_status: std::collections::BTreeMap<String, i64>,
    pub timers: i64,
    pub waits: i64,
}

/// A process's turn to write (`Store::write_turn`), until dropped.
#[derive(Default)]
pub struct WriteTurn(pub(crate) Option<tokio::sync::OwnedMutexGuard<()>>);

#[async_trait]
pub trait Store: Send + Sync {
    /// True when this process is the database's only writer (an embedded file), so that the
    /// engine may keep copies of rows it wrote.
    fn exclusive(&self) -> bool;
    /// Stores a batch of events in one transaction; duplicates (same `dedupe_key`) are
    /// reported with the id of the first delivery.
    async fn ingest(&self, batch: &[NewEvent]) -> Result<Vec<IngestOutcome>>;
    /// Waits for this process's turn to write, where its writers queue in the process
    /// (SQLite); elsewhere at once. A writer holding it can gather more work meanwhile and
    /// then store it with `ingest_in_turn`.
    async fn write_turn(&self) -> WriteTurn {
        WriteTurn::default()
    }
    /// `ingest` by a writer that holds `turn`.
    async fn ingest_in_turn(
        &self,
        _turn: &WriteTurn,
        batch: &[NewEvent],
    ) -> Result<Vec<IngestOutcome>> {
        self.ingest(batch).await
    }
    /// A write transaction: every effect of a batch of engine work commits together.
    async fn begin(&self) -> Result<Box<dyn Tx>>;

    async fn pending_events(&self, after_id: i64, limit: i64) -> Result<Vec<EventRow>>;
    /// The (kind, source) pairs of this process's pending events.
    async fn pending_lanes(&self) -> Result<Vec<(String, String)>>;
    /// Pending events of one (kind, source), oldest first.
    async fn pending_lane_events(
        &self,
        lane: &(String, String),
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<EventRow>>;
    async fn next_timer_due(&self) -> Result<Option<i64>>;
    async fn due_timers(&self, now: i64, limit: i64) -> Result<Vec<TimerRow>>;
    async fn open_outbox(&self) -> Result<Vec<OutboxRow>>;
    async fn globals(&self) -> Result<Map<String, Json>>;
    async fn schedule_last(&self, scenario: &str) -> Result<Option<i64>>;
    async fn set_schedule_last(&self, scenario: &str, at: i64) -> Result<()>;

    async fn event(&self, id: i64) -> Result<Option<EventRow>>;
    async fn run(&self, id: i64) -> Result<Option<RunRow>>;
    async fn recent_events(&self, limit: i64) -> Result<Vec<EventRow>>;
    async fn runs_for_event(&self, event_id: i64) -> Result<Vec<RunRow>>;
    async fn outbox_for_run(&self, run_id: i64) -> Result<Vec<OutboxRow>>;
    async fn counts(&self) -> Result<Counts>;

    async fn list_runs(&self, f: &RunFilter) -> Result<Vec<RunSummary>>;
    async fn list_events(&self, f: &EventFilter) -> Result<Vec<EventRow>>;
    async fn scenario_stats(&self) -> Result<Vec<ScenarioStats>>;
    async fn list_timers(&self, limit: i64) -> Result<Vec<TimerRow>>;
    async fn list_waits(&self, limit: i64) -> Result<Vec<WaitRow>>;
    async fn outbox(&self, id: i64) -> Result<Option<OutboxRow>>;
    /// Scenarios an operator switched on or off.
    /// Operators' switches: scenario, on or off, when (ms).
    async fn scenario_states(&self) -> Result<Vec<(String, bool, i64)>>;
    /// Records versions of scenario files being served: (hash, scenario id, text), seen `now`.
    async fn put_scenario_versions(
        &self,
        versions: &[(String, String, String)],
        now: i64,
    ) -> Result<()>;
    /// One version: (scenario id, text).
    async fn scenario_version(&self, hash: &str) -> Result<Option<(String, String)>>;
    /// The versions unfinished runs use.
    async fn versions_in_use(&self) -> Result<Vec<String>>;
    /// The delivered outbox row of `channel` whose message has reference `message_ref`.
    async fn outbox_by_ref(&self, channel: &str, message_ref: &str) -> Result<Option<OutboxRow>>;
    /// Puts an address on a channel's suppression list (kept: the first reason).
    async fn suppress(&self, channel: &str, address: &str, reason: &str, now: i64) -> Result<()>;
    /// Why an address is on a channel's suppression list, and since when.
    async fn suppressed(&self, channel: &str, address: &str) -> Result<Option<(String, i64)>>;
    /// The suppression lists (of one channel), newest first.
    async fn list_suppressions(
        &self,
        channel: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Suppression>>;
    /// Takes an address off a channel's suppression list; false if it was not on it.
    async fn unsuppress(&self, channel: &str, address: &str) -> Result<bool>;
    async fn setting(&self, name: &str) -> Result<Option<String>>;
    async fn put_setting(&self, name: &str, value: &str) -> Result<()>;
    /// The setting's value; `value` is stored first when there is none, so that replicas
    /// starting together agree on one.
    async fn setting_or_put(&self, name: &str, value: &str) -> Result<String>;
    /// A random name of this database, made once: it tells apart the requests of two
    /// databases whose row ids coincide (`Idempotency-Key`).
    async fn database_id(&self) -> Result<String> {
        let fresh: String = {
            use rand::Rng;
            rand::thread_rng()
                .sample_iter(rand::distributions::Alphanumeric)
                .take(12)
                .map(char::from)
                .collect::<String>()
                .to_lowercase()
        };
        self.setting_or_put("database_id", &fresh).await
    }
    /// Deletes up to `limit` finished runs, and events and outbox rows, last touched before
    /// `before`; returns how many rows went.
    async fn prune(&self, before: i64, limit: i64) -> Result<u64>;
    /// Whether the database answers.
    async fn ping(&self) -> Result<()>;

    // Several replicas on one database. An exclusive store has one process, so these are
    // trivially true or empty there.

    /// Records that this replica is alive; false when the others presumed it dead and took
    /// its work, after which it must stop.
    async fn heartbeat(&self) -> Result<bool> {
        Ok(true)
    }
    /// Removes replicas not seen for a lease period and hands their pending events and
    /// outbox rows to this replica; returns them for its queues.
    async fn take_over(&self) -> Result<(Vec<EventRow>, Vec<OutboxRow>)> {
        Ok((Vec::new(), Vec::new()))
    }
    /// Takes or renews the named lease; true while this replica holds it.
    async fn hold_lease(&self, _name: &str) -> Result<bool> {
        Ok(true)
    }
    /// Gives up the named lease if this replica holds it.
    async fn release_lease(&self, _name: &str) -> Result<()> {
        Ok(())
    }
    /// Reserves the next send under each key, `(key, spacing in ms)` in order, each no sooner
    /// than the one before; returns how many milliseconds to wait before sending.
    async fn reserve_send(&self, _keys: &[(String, i64)]) -> Result<i64> {
        Ok(0)
    }
    /// Leaves the replicas on a clean stop: what this one had not finished goes to the
    /// others at once, and the leases it held are free.
    async fn retire(&self) -> Result<()> {
        Ok(())
    }
    /// The lease period, for the loops that renew leases and look for dead replicas.
    fn lease(&self) -> std::time::Duration {
        std::time::Duration::from_secs(15)
    }
    /// This replica's name in the database.
    fn replica(&self) -> &str {
        "local"
    }
}

#[async_trait]
pub trait Tx: Send {
    async fn new_run_id(&mut self) -> Result<i64>;
    async fn save_run(&mut self, run: &RunRow) -> Result<()>;
    async fn load_run(&mut self, id: i64) -> Result<Option<RunRow>>;
    /// A stored version of a scenario file: (scenario id, text).
    async fn scenario_version(&mut self, hash: &str) -> Result<Option<(String, String)>>;
    /// Reads (and, with replicas, locks) the runs a batch is about to load, in one round
    /// trip; `load_run` then answers from memory.
    async fn prefetch_runs(&mut self, _ids: &[i64]) -> Result<()> {
        Ok(())
    }
    async fn active_run_exists(&mut self, scenario: &str, subject: &str) -> Result<bool>;

    async fn insert_event(&mut self, ev: &NewEvent) -> Result<Option<i64>>;
    /// Stores arriving events in this transaction, as `Store::ingest` would. Events without
    /// a deduplication key are written at commit, so one that is also finished in this
    /// transaction is written once, finished.
    async fn ingest(&mut self, batch: &[NewEvent]) -> Result<Vec<IngestOutcome>>;
    /// Keeps a status whose message's delivery is not recorded yet (once per status).
    async fn keep_early_status(
        &mut self,
        s: &DeliveryStatus<'_>,
        data: &Json,
        event_id: i64,
        now: i64,
    ) -> Result<()>;
    /// The kept statuses of a message, removed: (channel, status event data, event id).
    async fn take_early_statuses(&mut self, message_ref: &str) -> Result<Vec<(String, Json, i64)>>;
    /// Whether the event still waits to be processed.
    async fn event_pending(&mut self, id: i64) -> Result<bool>;
    /// An event's kind and meta (where it came from).
    async fn event_origin(&mut self, id: i64) -> Result<Option<(String, Json)>>;
    async fn finish_event(&mut self, id: i64, status: &str, outcome: &Json, now: i64)
        -> Result<()>;

    async fn insert_outbox(&mut self, row: &NewOutbox) -> Result<i64>;
    /// Records one failed attempt and when the next one is due.
    async fn outbox_attempt(
        &mut self,
        id: i64,
        attempts: i64,
        next_at: i64,
        error: &str,
        now: i64,
    ) -> Result<()>;
    /// Final state: `delivered` or `failed`.
    async fn outbox_finish(
        &mut self,
        id: i64,
        status: &str,
        attempts: i64,
        response: Option<&Json>,
        error: Option<&str>,
        now: i64,
    ) -> Result<()>;

    async fn insert_timer(&mut self, t: &NewTimer) -> Result<i64>;
    /// True when the timer still existed (it fires); false when it was cancelled.
    async fn delete_timer(&mut self, id: i64) -> Result<bool>;
    /// Removes pending sleeps with this scenario, subject and key; returns their runs.
    async fn take_keyed_timers(
        &mut self,
        scenario: &str,
        subject: Option<&str>,
        key: &str,
    ) -> Result<Vec<i64>>;
    /// Runs of a scenario (and subject) that are sleeping or waiting.
    async fn parked_runs(&mut self, scenario: &str, subject: Option<&str>) -> Result<Vec<i64>>;
    /// Drops every timer and wait of a run.
    async fn clear_parks(&mut self, run_id: i64) -> Result<()>;

    async fn insert_wait(&mut self, w: &NewWait) -> Result<()>;
    /// The oldest run waiting at (scenario, step) for `hook` with this key.
    async fn find_waits(
        &mut self,
        hook: &str,
        scenario: &str,
        step: i64,
        match_key: &str,
    ) -> Result<Vec<i64>>;

    async fn insert_offer(
        &mut self,
        run_id: i64,
        step: i64,
        channel: &str,
        chat_id: &str,
        text: &str,
        now: i64,
    ) -> Result<i64>;
    async fn load_offer(&mut self, id: i64) -> Result<Option<OfferRow>>;
    /// The first-click-wins compare-and-set: true for the one caller that took an open offer.
    async fn claim_offer(&mut self, id: i64, winner: &Json) -> Result<bool>;
    /// Closes an open offer without a winner; true when it was open.
    async fn expire_offer(&mut self, id: i64) -> Result<bool>;
    async fn exclude_from_offer(&mut self, id: i64, user: &str) -> Result<()>;
    /// Records a recipient's message of an offer, sent by outbox row `m.outbox_id`.
    async fn add_offer_message(&mut self, offer_id: i64, m: &OfferMessage) -> Result<()>;
    /// The offer's messages, in the order they were sent.
    async fn offer_messages(&mut self, offer_id: i64) -> Result<Vec<OfferMessage>>;
    /// The reference the channel gave out for the message that outbox row `outbox_id` sent
    /// (an offer of an earlier version has one message and no outbox row recorded).
    async fn set_offer_message(
        &mut self,
        offer_id: i64,
        outbox_id: i64,
        message_id: &str,
    ) -> Result<()>;
    /// The open offer a run is waiting on, if any.
    async fn open_offer_of(&mut self, run_id: i64) -> Result<Option<OfferRow>>;

    /// Runs waiting on `hook` with this key at any step, oldest first.
    async fn find_waits_any(&mut self, hook: &str, match_key: &str) -> Result<Vec<i64>>;

    async fn subject_limit(
        &mut self,
        scenario: &str,
        subject: &str,
    ) -> Result<Option<SubjectLimit>>;
    async fn put_subject_limit(
        &mut self,
        scenario: &str,
        subject: &str,
        l: &SubjectLimit,
    ) -> Result<()>;
    async fn subject_vars(&mut self, subject: &str) -> Result<Map<String, Json>>;
    async fn put_subject_vars(&mut self, subject: &str, vars: &Map<String, Json>) -> Result<()>;
    async fn put_global(&mut self, name: &str, value: &Json, now: i64) -> Result<()>;
    /// The global variables as committed, locked until this transaction ends so that a
    /// read-modify-write by another replica waits (an exclusive store returns `None`: its
    /// engine's copy is current).
    async fn lock_globals(&mut self) -> Result<Option<Map<String, Json>>> {
        Ok(None)
    }
    async fn delete_global(&mut self, name: &str) -> Result<bool>;

    /// Counts a run start (`limited` false) or a start refused by a limit.
    async fn bump_counter(&mut self, scenario: &str, limited: bool, now: i64) -> Result<()>;
    async fn set_enabled(&mut self, scenario: &str, enabled: bool, now: i64) -> Result<()>;
    /// Records a delivery status on the outbox row that sent the message, once per status;
    /// the row, if one sent it and the status is new to it.
    async fn outbox_status(&mut self, s: &DeliveryStatus<'_>) -> Result<Option<OutboxRow>>;
    /// Puts a failed outbox row (or one whose message the platform reported failed) back to
    /// pending with fresh attempts; the row, if it was failed.
    async fn reset_outbox(&mut self, id: i64, now: i64) -> Result<Option<OutboxRow>>;
    /// The newest outbox row a run's step made.
    async fn last_outbox_of(&mut self, run_id: i64, step: i64) -> Result<Option<OutboxRow>>;

    async fn commit(self: Box<Self>) -> Result<()>;
}

#[cfg(test)]
mod tests {
    use sqlx::{Connection, SqliteConnection};

    use super::StoreError;

    #[tokio::test]
    async fn a_locked_database_is_unavailable_and_a_refused_row_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        let mut a = SqliteConnection::connect(&url).await.unwrap();
        let mut b = SqliteConnection::connect(&url).await.unwrap();
        sqlx::raw_sql("PRAGMA busy_timeout = 0; CREATE TABLE t (id INTEGER PRIMARY KEY);")
            .execute(&mut a)
            .await
            .unwrap();
        sqlx::raw_sql("PRAGMA busy_timeout = 0;")
            .execute(&mut b)
            .await
            .unwrap();

        // Another writer holds the file: nothing this statement did is to blame.
        sqlx::raw_sql("BEGIN IMMEDIATE")
            .execute(&mut a)
            .await
            .unwrap();
        let busy = sqlx::query("INSERT INTO t (id) VALUES (1)")
            .execute(&mut b)
            .await
            .map_err(StoreError::from)
            .unwrap_err();
        assert!(busy.unavailable(), "{busy}");
        sqlx::raw_sql("COMMIT").execute(&mut a).await.unwrap();

        // The row itself is refused: retrying it alone will not help.
        sqlx::query("INSERT INTO t (id) VALUES (1)")
            .execute(&mut b)
            .await
            .unwrap();
        let refused = sqlx::query("INSERT INTO t (id) VALUES (1)")
            .execute(&mut b)
            .await
            .map_err(StoreError::from)
            .unwrap_err();
        assert!(!refused.unavailable(), "{refused}");
        assert!(StoreError::from(sqlx::Error::PoolTimedOut).unavailable());

        // The same through statements run directly on a handle.
        let c = rusqlite::Connection::open(dir.path().join("t.db")).unwrap();
        c.busy_timeout(std::time::Duration::ZERO).unwrap();
        sqlx::raw_sql("BEGIN IMMEDIATE")
            .execute(&mut a)
            .await
            .unwrap();
        let busy = StoreError::from(c.execute("INSERT INTO t (id) VALUES (2)", []).unwrap_err());
        assert!(busy.unavailable(), "{busy}");
        sqlx::raw_sql("COMMIT").execute(&mut a).await.unwrap();
        let refused = StoreError::from(c.execute("INSERT INTO t (id) VALUES (1)", []).unwrap_err());
        assert!(!refused.unavailable(), "{refused}");
    }
}
