//! SQLite (WAL) implementation of the store. One process owns a database file: run ids are
//! handed out from memory, and write transactions queue on the process's own lock, then start
//! with `BEGIN IMMEDIATE` (a batch's at its first statement).

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::TransactionBehavior;
use serde_json::{Map, Value as Json};
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{Connection, QueryBuilder, Row, Sqlite};

use super::rows::*;
use super::sql::{impl_store, impl_tx};
use super::*;

/// Records a delivery status on the row that sent its message (`Tx::outbox_status`), once
/// per status. One statement, so that a status never overwrites another that came meanwhile.
const OUTBOX_STATUS: &str = "UPDATE outbox SET
        statuses = json_insert(coalesce(statuses, '[]'), '$[#]', json($4)),
        delivery_status = CASE WHEN delivery_status = 'failed'
            OR (delivery_status = 'read' AND $3 <> 'failed')
            OR (delivery_status = 'delivered' AND $3 = 'sent')
            THEN delivery_status ELSE $3 END,
        last_error = coalesce($5, last_error), updated_at = $6
    WHERE channel = $1 AND message_ref = $2
      AND NOT EXISTS (SELECT 1 FROM json_each(coalesce(outbox.statuses, '[]'))
                      WHERE json_extract(value, '$.status') = $3)
    RETURNING *";

row_mappers!(SqliteRow);

pub struct SqliteStore {
    pool: SqlitePool,
    ids: Arc<Ids>,
    /// The owner of queued rows: always this process.
    me: Arc<str>,
    /// A gateway's exclusive lock on the file (released when the process ends, however).
    _writer: Option<Arc<std::fs::File>>,
    /// Held by each write transaction of this process, so that they queue here, in order,
    /// instead of in SQLite's busy handler, which sleeps 1, 2, 5, 10… ms between tries.
    write: Arc<tokio::sync::Mutex<()>>,
}

/// The file of a SQLite database URL (`sqlite://path`, `sqlite:path` or a bare path);
/// `None` for an in-memory database or another kind of URL.
pub fn file_of(url: &str) -> Option<&str> {
    if url.contains("://") && !url.starts_with("sqlite://") {
        return None;
    }
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    let path = path.split('?').next().unwrap_or(path);
    (!path.is_empty() && !path.contains(":memory:")).then_some(path)
}

/// Takes the writer's lock of a SQLite database (`<file>.lock` beside it): the ids of new
/// rows are handed out in memory, so two gateways on one file would collide.
pub fn writer_lock(url: &str) -> Result<Option<std::fs::File>> {
    let Some(path) = file_of(url) else {
        return Ok(None);
    };
    let lock_path = format!("{path}.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| StoreError::Busy(format!("cannot open the lock file {lock_path}: {e}")))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Busy(format!(
            "another gateway is running on {path} (it holds {lock_path}); one gateway process per SQLite file — use PostgreSQL for several"
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(StoreError::Busy(format!(
            "cannot lock {lock_path}: {e}"
        ))),
    }
}

/// Row ids handed out in memory: this process is the file's only writer, and knowing an id
/// before the insert lets a batch of rows go in with one statement.
struct Ids {
    run: AtomicI64,
    event: AtomicI64,
    outbox: AtomicI64,
}

impl SqliteStore {
    /// Empties every table, for an in-memory database used again by the next offline test
    /// (ids go on counting).
    pub async fn clear(&self) -> Result<()> {
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'table'
             AND name NOT LIKE 'sqlite_%' AND name <> '_sqlx_migrations'",
        )
        .fetch_all(&self.pool)
        .await?;
        for t in tables {
            sqlx::query(&format!("DELETE FROM \"{t}\""))
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    /// Opens (creating if needed) and migrates the database.
    pub async fn open(url: &str) -> Result<SqliteStore> {
        let opts = if url.starts_with("sqlite:") {
            SqliteConnectOptions::from_str(url)?
        } else {
            SqliteConnectOptions::new().filename(url)
        };
        let in_memory = url.contains(":memory:");
        let opts = opts
            .create_if_missing(true)
            .journal_mode(if in_memory {
                SqliteJournalMode::Memory
            } else {
                SqliteJournalMode::Wal
            })
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .statement_cache_capacity(256);
        if !in_memory {
            // Switching a new file to WAL needs it to itself: do that, and the migrations,
            // on one connection before the pool opens several.
            let mut first = SqliteConnection::connect_with(&opts).await?;
            sqlx::migrate!("./migrations/sqlite")
                .run(&mut first)
                .await?;
            first.close().await?;
        }
        let pool = SqlitePoolOptions::new()
            // An in-memory database exists once per connection: keep exactly one.
            .max_connections(if in_memory { 1 } else { 4 })
            // A connection here is a thread of this process, not a socket that can drop: a
            // check before each use would only cost a hand-off to that thread and back.
            .test_before_acquire(false)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(opts)
            .await?;
        if in_memory {
            sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        }
        // Ids continue after the highest ever handed out: the rows may be gone (pruned), but
        // their ids went out to receivers (`Idempotency-Key`) and into journals.
        let mut next = Vec::new();
        for (sql, floor) in [
            ("SELECT max(id) FROM runs", "id_floor:runs"),
            ("SELECT max(id) FROM events", "id_floor:events"),
            ("SELECT max(id) FROM outbox", "id_floor:outbox"),
        ] {
            let max: Option<i64> = sqlx::query_scalar(sql).fetch_one(&pool).await?;
            let floor: Option<String> =
                sqlx::query_scalar("SELECT value FROM settings WHERE name = $1")
                    .bind(floor)
                    .fetch_optional(&pool)
                    .await?;
            let floor = floor.and_then(|f| f.parse::<i64>().ok()).unwrap_or(0);
            next.push(AtomicI64::new(max.unwrap_or(0).max(floor) + 1));
        }
        let mut next = next.into_iter();
        let mut take = || next.next().expect("three counters");
        Ok(SqliteStore {
            pool,
            ids: Arc::new(Ids {
                run: take(),
                event: take(),
                outbox: take(),
            }),
            me: "local".into(),
            _writer: None,
            write: Arc::default(),
        })
    }

    /// Keeps the writer's lock for as long as the store lives.
    pub fn hold(&mut self, lock: Option<std::fs::File>) {
        self._writer = lock.map(Arc::new);
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

/// Runs `f` on `conn`'s SQLite handle here, on the calling thread: its statements are
/// prepared and stepped directly, not each handed to the driver's thread and back (on a busy
/// machine every hand-off waits for that thread to be scheduled). A batch's rows take a few
/// microseconds each this way, so the caller is held up no longer than by the hand-offs.
///
/// Taking the handle queues an "unlock" command for the driver's thread, which may find the
/// handle free before it has read that command. Unread ones would pile up with quick
/// successive calls until the command queue is full, and the next call would then wait for
/// room while holding the handle the thread waits for. So the connection is left *unsettled*:
/// before `direct` runs on it again, some command through the driver must have been answered
/// (`settle`, or any query) — which means every earlier one has been read.
async fn direct<T>(
    conn: &mut SqliteConnection,
    f: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T>,
) -> Result<T> {
    let mut handle = conn.lock_handle().await?;
    // SAFETY: while `handle` is held, the driver's thread makes no call on this database
    // handle or its statements. The connection made from it does not close the handle when
    // dropped, and it is dropped (finalizing the statements it prepared) before `handle`.
    let db = unsafe { rusqlite::Connection::from_handle(handle.as_raw_handle().as_ptr()) }?;
    let out = f(&db);
    drop(db);
    Ok(out?)
}

/// Waits until the driver's thread has read every command queued on `conn` (see `direct`).
async fn settle(conn: &mut SqliteConnection) {
    // Should it fail, the thread is gone, and its queue with it.
    let _ = conn.ping().await;
}

/// Gives an unsettled connection back to the pool once it is settled, without waiting here.
fn release(mut conn: PoolConnection<Sqlite>) {
    // Without a runtime (the process is ending) it is dropped as it is.
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(async move {
            settle(&mut conn).await;
            drop(conn);
        });
    }
}

/// Inserts events with ids from the counter; returns the ids that went in (the others
/// repeated a dedupe key).
fn insert_events(
    db: &rusqlite::Connection,
    ids: &Ids,
    batch: &[&NewEvent],
) -> rusqlite::Result<(Vec<i64>, HashSet<i64>)> {
    macro_rules! insert {
        () => {
            "INSERT INTO events (id, kind, source, dedupe_key, status, data, meta, error, received_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
        };
    }
    const PLAIN: &str = insert!();
    const KEYED: &str = concat!(insert!(), " ON CONFLICT (dedupe_key) DO NOTHING");
    let mut assigned = Vec::with_capacity(batch.len());
    let mut inserted = HashSet::with_capacity(batch.len());
    for ev in batch {
        let id = ids.event.fetch_add(1, Ordering::Relaxed);
        assigned.push(id);
        let mut stmt = if ev.dedupe_key.is_some() {
            db.prepare_cached(KEYED)?
        } else {
            db.prepare_cached(PLAIN)?
        };
        let n = stmt.execute(rusqlite::params![
            id,
            ev.kind,
            ev.source,
            ev.dedupe_key,
            ev.status(),
            ev.data.to_string(),
            ev.meta.to_string(),
            ev.rejected,
            ev.received_at,
        ])?;
        if n == 1 {
            inserted.insert(id);
        }
    }
    Ok((assigned, inserted))
}

/// The id of the stored event that has `key`.
fn event_with_key(db: &rusqlite::Connection, key: Option<&str>) -> rusqlite::Result<i64> {
    db.prepare_cached("SELECT id FROM events WHERE dedupe_key = ?1")?
        .query_row([key], |r| r.get(0))
}

impl_store!(SqliteStore, Sqlite, "instr", {
    fn exclusive(&self) -> bool {
        true
    }
    async fn ingest(&self, batch: &[NewEvent]) -> Result<Vec<IngestOutcome>> {
        let turn = self.write_turn().await;
        self.ingest_in_turn(&turn, batch).await
    }
    async fn write_turn(&self) -> WriteTurn {
        WriteTurn(Some(self.write.clone().lock_owned().await))
    }
    async fn ingest_in_turn(
        &self,
        turn: &WriteTurn,
        batch: &[NewEvent],
    ) -> Result<Vec<IngestOutcome>> {
        let ours = matches!(&turn.0, Some(g) if Arc::ptr_eq(tokio::sync::OwnedMutexGuard::mutex(g), &self.write));
        let _own = if ours {
            None
        } else {
            Some(self.write.lock().await)
        };
        let mut conn = self.pool.acquire().await?;
        let ids = self.ids.clone();
        let stored = direct(&mut conn, |db| {
            // Rolled back when dropped uncommitted (an error below).
            let tx = rusqlite::Transaction::new_unchecked(db, TransactionBehavior::Immediate)?;
            let refs: Vec<&NewEvent> = batch.iter().collect();
            let (assigned, inserted) = insert_events(&tx, &ids, &refs)?;
            let mut out = Vec::with_capacity(batch.len());
            for (ev, id) in batch.iter().zip(assigned) {
                out.push(if inserted.contains(&id) {
                    ev.stored_as(id)
                } else {
                    IngestOutcome::Duplicate(event_with_key(&tx, ev.dedupe_key.as_deref())?)
                });
            }
            tx.commit()?;
            Ok(out)
        })
        .await;
        release(conn);
        stored
    }
    async fn begin(&self) -> Result<Box<dyn Tx>> {
        Ok(Box::new(SqliteTx {
            held: None,
            pool: self.pool.clone(),
            write: self.write.clone(),
            ids: self.ids.clone(),
            me: self.me.clone(),
            runs: HashMap::new(),
            arrived: HashMap::new(),
            finished_events: Vec::new(),
            new_outbox: Vec::new(),
            finished_outbox: Vec::new(),
            counters: HashMap::new(),
        }))
    }
    async fn pending_events(&self, after_id: i64, limit: i64) -> Result<Vec<EventRow>> {
        let rows = sqlx::query(
            "SELECT * FROM events WHERE status = 'pending' AND id > $1 ORDER BY id LIMIT $2",
        )
        .bind(after_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(event_row).collect()
    }
    async fn pending_lanes(&self) -> Result<Vec<(String, String)>> {
        Ok(
            sqlx::query_as("SELECT DISTINCT kind, source FROM events WHERE status = 'pending'")
                .fetch_all(&self.pool)
                .await?,
        )
    }
    async fn pending_lane_events(
        &self,
        lane: &(String, String),
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<EventRow>> {
        let rows = sqlx::query(
            "SELECT * FROM events WHERE status = 'pending' AND kind = $1 AND source = $2
             AND id > $3 ORDER BY id LIMIT $4",
        )
        .bind(&lane.0)
        .bind(&lane.1)
        .bind(after_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(event_row).collect()
    }
    async fn next_timer_due(&self) -> Result<Option<i64>> {
        Ok(sqlx::query_scalar("SELECT min(due_at) FROM timers")
            .fetch_one(&self.pool)
            .await?)
    }
    async fn due_timers(&self, now: i64, limit: i64) -> Result<Vec<TimerRow>> {
        let rows = sqlx::query(
            "SELECT id, run_id, kind, due_at, scenario, subject, key FROM timers WHERE due_at <= $1
             ORDER BY due_at, id LIMIT $2",
        )
        .bind(now)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(timer_row).collect())
    }
    async fn open_outbox(&self) -> Result<Vec<OutboxRow>> {
        let rows = sqlx::query("SELECT * FROM outbox WHERE status = 'pending' ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(outbox_row).collect()
    }
    async fn prune(&self, before: i64, limit: i64) -> Result<u64> {
        let _write = self.write.lock().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        // What is deleted may hold the highest ids yet: remember them, so that the next
        // start does not hand them out again.
        for (name, counter) in [
            ("id_floor:runs", &self.ids.run),
            ("id_floor:events", &self.ids.event),
            ("id_floor:outbox", &self.ids.outbox),
        ] {
            let highest = counter.load(Ordering::Relaxed) - 1;
            sqlx::query(
                "INSERT INTO settings (name, value) VALUES ($1, $2)
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            )
            .bind(name)
            .bind(highest.to_string())
            .execute(&mut *tx)
            .await?;
        }
        let runs: Vec<i64> = sqlx::query_scalar(
            "SELECT id FROM runs WHERE updated_at < $1
             AND status IN ('done', 'failed', 'cancelled') ORDER BY updated_at LIMIT $2",
        )
        .bind(before)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        let ids = serde_json::to_string(&runs).unwrap_or_else(|_| "[]".into());
        let mut n = sqlx::query(
            "DELETE FROM outbox WHERE run_id IN (SELECT value FROM json_each($1))
             AND status IN ('delivered', 'failed')",
        )
        .bind(&ids)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        n += sqlx::query("DELETE FROM runs WHERE id IN (SELECT value FROM json_each($1))")
            .bind(&ids)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        n += sqlx::query(
            // A single-use link's event is what makes it used: it stays until the link
            // expires (`meta.keep_until`; without an expiry, for good).
            "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE received_at < $1
             AND status != 'pending'
             AND (dedupe_key IS NULL OR dedupe_key NOT LIKE 'link:%'
                  OR coalesce(json_extract(meta, '$.keep_until'), 9e18) < $1)
             ORDER BY id LIMIT $2)",
        )
        .bind(before)
        .bind(limit)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        n += sqlx::query(
            "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE run_id IS NULL
             AND updated_at < $1 AND status IN ('delivered', 'failed') LIMIT $2)",
        )
        .bind(before)
        .bind(limit)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        // Statuses of messages sent from elsewhere never find their row.
        n += sqlx::query(
            "DELETE FROM early_statuses WHERE message_ref IN
             (SELECT message_ref FROM early_statuses WHERE at < $1 LIMIT $2)",
        )
        .bind(before)
        .bind(limit)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        // Versions of scenarios no gateway has loaded since and no run follows.
        n += sqlx::query(
            "DELETE FROM scenario_versions WHERE hash IN (SELECT hash FROM scenario_versions
             WHERE seen_at < $1 AND NOT EXISTS
             (SELECT 1 FROM runs WHERE runs.version = scenario_versions.hash) LIMIT $2)",
        )
        .bind(before)
        .bind(limit)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(n)
    }
});

/// A write transaction. Frequent writes (run states, finished events, new and finished
/// outbox rows) are kept until a read needs them or the commit, then written in one go on
/// the connection's handle (`direct`), one prepared statement per table.
///
/// The transaction itself begins (taking the process's write lock) only when the first
/// statement needs it: a batch that reads nothing before its commit holds the database only
/// while its writes go in, not while the engine works out what to write — and its `BEGIN`,
/// rows and `COMMIT` go in one hand-off. The process is the file's only writer, so nothing it
/// would have read can change in between.
struct SqliteTx {
    held: Option<Held>,
    pool: SqlitePool,
    write: Arc<tokio::sync::Mutex<()>>,
    ids: Arc<Ids>,
    me: Arc<str>,
    runs: HashMap<i64, SavedRun>,
    arrived: HashMap<i64, ArrivedEvent>,
    finished_events: Vec<FinishedEvent>,
    new_outbox: Vec<(i64, NewOutbox)>,
    finished_outbox: Vec<FinishedOutbox>,
    /// scenario → (runs refused by limits, last start)
    counters: HashMap<String, (i64, Option<i64>)>,
}

/// The connection a transaction writes on, with the process's write lock, from its first
/// statement to its end.
struct Held {
    conn: PoolConnection<Sqlite>,
    /// Whether `BEGIN` has run on it (and neither `COMMIT` nor `ROLLBACK` since).
    begun: bool,
    /// Whether `direct` ran on it since a command through the driver was last answered.
    unsettled: bool,
    lock: tokio::sync::OwnedMutexGuard<()>,
}

/// The writes a transaction has buffered, taken out to be written.
#[derive(Default)]
struct Buffered {
    arrived: Vec<ArrivedEvent>,
    new_outbox: Vec<(i64, NewOutbox)>,
    runs: Vec<SavedRun>,
    finished_outbox: Vec<FinishedOutbox>,
    counters: Vec<(String, (i64, Option<i64>))>,
    finished_events: Vec<FinishedEvent>,
}

impl Buffered {
    fn is_empty(&self) -> bool {
        self.arrived.is_empty()
            && self.new_outbox.is_empty()
            && self.runs.is_empty()
            && self.finished_outbox.is_empty()
            && self.counters.is_empty()
            && self.finished_events.is_empty()
    }

    /// Writes the rows, table by table (events first: outbox rows and runs refer to them).
    fn write(&self, db: &rusqlite::Connection, me: &str) -> rusqlite::Result<()> {
        use rusqlite::params;
        if !self.arrived.is_empty() {
            let mut q = db.prepare_cached(
                "INSERT INTO events (id, kind, source, status, data, meta, error, outcome,
                                     received_at, processed_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?;
            for e in &self.arrived {
                q.execute(params![
                    e.id,
                    e.kind,
                    e.source,
                    e.status,
                    e.data,
                    e.meta,
                    e.error,
                    e.outcome,
                    e.received_at,
                    e.processed_at,
                ])?;
            }
        }
        if !self.new_outbox.is_empty() {
            let mut q = db.prepare_cached(
                "INSERT INTO outbox (id, run_id, step, kind, channel, request, status, attempts,
                                     max_attempts, timeout_ms, next_attempt_at, resume,
                                     created_at, updated_at, owner)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', 0, ?7, ?8, ?9, ?10, ?9, ?9, ?11)",
            )?;
            for (id, o) in &self.new_outbox {
                q.execute(params![
                    id,
                    o.run_id,
                    o.step,
                    o.kind,
                    o.channel,
                    o.request.to_string(),
                    o.max_attempts,
                    o.timeout_ms,
                    o.now,
                    o.resume as i64,
                    me,
                ])?;
            }
        }
        write_runs(db, &self.runs)?;
        if !self.finished_outbox.is_empty() {
            let mut q = db.prepare_cached(
                "UPDATE outbox SET status = ?2, attempts = ?3, response = ?4, last_error = ?5,
                                   updated_at = ?6, message_ref = ?7
                 WHERE id = ?1",
            )?;
            for f in &self.finished_outbox {
                q.execute(params![
                    f.id,
                    f.status,
                    f.attempts,
                    f.response,
                    f.error,
                    f.now,
                    f.message_ref,
                ])?;
            }
        }
        for (scenario, (limited, fired)) in &self.counters {
            db.prepare_cached(
                "INSERT INTO scenario_counters (scenario, limited, last_fired) VALUES (?1, ?2, ?3)
                 ON CONFLICT (scenario) DO UPDATE
                 SET limited = scenario_counters.limited + excluded.limited,
                     last_fired = coalesce(excluded.last_fired, scenario_counters.last_fired)",
            )?
            .execute(params![scenario, limited, fired])?;
        }
        if !self.finished_events.is_empty() {
            let mut q = db.prepare_cached(
                "UPDATE events SET status = ?2, outcome = ?3, processed_at = ?4 WHERE id = ?1",
            )?;
            for e in &self.finished_events {
                q.execute(params![e.id, e.status, e.outcome, e.now])?;
            }
        }
        Ok(())
    }
}

/// Writes runs as saved: new ones inserted, the others' changing columns updated.
fn write_runs(db: &rusqlite::Connection, runs: &[SavedRun]) -> rusqlite::Result<()> {
    if runs.is_empty() {
        return Ok(());
    }
    let mut q = db.prepare_cached(
        "INSERT INTO runs (id, scenario, subject, status, pc, vars, journal, event_id, event,
                           depth, error, created_at, updated_at, version)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
         ON CONFLICT (id) DO UPDATE SET status = excluded.status, pc = excluded.pc,
           vars = excluded.vars, journal = excluded.journal, error = excluded.error,
           updated_at = excluded.updated_at",
    )?;
    for r in runs {
        q.execute(rusqlite::params![
            r.id,
            r.scenario,
            r.subject,
            r.status.as_str(),
            r.pc,
            r.vars,
            r.journal,
            r.event_id,
            r.event,
            r.depth,
            r.error,
            r.created_at,
            r.updated_at,
            r.version,
        ])?;
    }
    Ok(())
}

impl SqliteTx {
    /// The connection and the write lock, taken on first use (no `BEGIN` yet).
    async fn hold(&mut self) -> Result<&mut Held> {
        if self.held.is_none() {
            let lock = self.write.clone().lock_owned().await;
            let conn = self.pool.acquire().await?;
            self.held = Some(Held {
                conn,
                begun: false,
                unsettled: false,
                lock,
            });
        }
        Ok(self.held.as_mut().expect("taken above"))
    }

    /// Runs `f` directly on the transaction's connection, beginning the transaction first if
    /// it has not begun (in the same hand-off).
    async fn within<T>(
        &mut self,
        f: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T>,
    ) -> Result<T> {
        let held = self.hold().await?;
        if held.unsettled {
            settle(&mut held.conn).await;
        }
        held.unsettled = true;
        let begin = !held.begun;
        // Until the call says otherwise (a panic in it leaves the transaction to `Drop`).
        held.begun = true;
        let out = direct(&mut held.conn, |db| {
            if begin {
                db.execute_batch("BEGIN IMMEDIATE")?;
            }
            let out = f(db);
            if out.is_err() && begin && !db.is_autocommit() {
                // Nothing else is in this transaction yet: end it here.
                let _ = db.execute_batch("ROLLBACK");
            }
            // SQLite ends a transaction itself after some errors (a full disk, say).
            Ok((out, !db.is_autocommit()))
        })
        .await;
        match out {
            Ok((out, open)) => {
                held.begun = open;
                Ok(out?)
            }
            // Nothing ran: the handle was not reached, or `BEGIN` failed.
            Err(e) => {
                held.begun = !begin;
                Err(e)
            }
        }
    }

    /// The transaction's connection (for statements through the driver); begins the
    /// transaction on first use.
    async fn db(&mut self) -> Result<&mut SqliteConnection> {
        if !self.hold().await?.begun {
            self.within(|_| Ok(())).await?;
        }
        let held = self.held.as_mut().expect("held above");
        // The caller's query through the driver is answered after every earlier command.
        held.unsettled = false;
        Ok(&mut *held.conn)
    }

    /// Takes the buffered writes out.
    fn take_buffered(&mut self) -> Buffered {
        let mut arrived: Vec<ArrivedEvent> = self.arrived.drain().map(|(_, e)| e).collect();
        arrived.sort_unstable_by_key(|e| e.id);
        Buffered {
            arrived,
            new_outbox: std::mem::take(&mut self.new_outbox),
            runs: self.runs.drain().map(|(_, r)| r).collect(),
            finished_outbox: std::mem::take(&mut self.finished_outbox),
            counters: self.counters.drain().collect(),
            finished_events: std::mem::take(&mut self.finished_events),
        }
    }

    /// Writes the buffered runs (a read of runs follows).
    async fn flush_runs(&mut self) -> Result<()> {
        if self.runs.is_empty() {
            return Ok(());
        }
        let runs: Vec<SavedRun> = self.runs.drain().map(|(_, r)| r).collect();
        self.within(|db| write_runs(db, &runs)).await
    }

    /// Writes everything buffered (a read follows).
    async fn flush(&mut self) -> Result<()> {
        let rows = self.take_buffered();
        if rows.is_empty() {
            return Ok(());
        }
        let me = self.me.clone();
        self.within(|db| rows.write(db, &me)).await
    }

    /// Ids for `n` new events.
    async fn event_ids(&mut self, n: usize) -> Result<Vec<i64>> {
        Ok((0..n)
            .map(|_| self.ids.event.fetch_add(1, Ordering::Relaxed))
            .collect())
    }

    /// Inserts events that carry a deduplication key at once (ids assigned, ids inserted).
    async fn insert_keyed(&mut self, batch: &[&NewEvent]) -> Result<(Vec<i64>, HashSet<i64>)> {
        let ids = self.ids.clone();
        self.within(|db| insert_events(db, &ids, batch)).await
    }

    /// Writes what is buffered and commits, in one hand-off (a transaction that never began
    /// and has nothing to write has nothing to commit).
    async fn finish(mut self) -> Result<()> {
        let rows = self.take_buffered();
        if rows.is_empty() && self.held.as_ref().is_none_or(|h| !h.begun) {
            return Ok(());
        }
        let me = self.me.clone();
        self.within(|db| {
            rows.write(db, &me)?;
            db.execute_batch("COMMIT")
        })
        .await?;
        if let Some(h) = self.held.take() {
            // The lock goes now; the connection once it is settled.
            release(h.conn);
        }
        Ok(())
    }
}

impl Drop for SqliteTx {
    /// A transaction dropped before its end (an error) is rolled back before its connection
    /// goes back to the pool and the write lock is released.
    fn drop(&mut self) {
        let Some(held) = self.held.take() else {
            return;
        };
        let Held {
            mut conn,
            lock,
            begun,
            unsettled,
        } = held;
        if !begun {
            if unsettled {
                release(conn);
            }
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    if unsettled {
                        settle(&mut conn).await;
                    }
                    let rollback = |db: &rusqlite::Connection| {
                        // SQLite may have ended it already (after a full disk, say).
                        if db.is_autocommit() {
                            Ok(())
                        } else {
                            db.execute_batch("ROLLBACK")
                        }
                    };
                    if direct(&mut conn, rollback).await.is_err() {
                        // Closing the connection rolls back whatever it had open.
                        drop(conn.detach());
                        return;
                    }
                    drop(lock);
                    settle(&mut conn).await;
                });
            }
            Err(_) => {
                drop(conn.detach());
                drop(lock);
            }
        }
    }
}

impl_tx!(SqliteTx, Sqlite, {
    async fn new_run_id(&mut self) -> Result<i64> {
        Ok(self.ids.run.fetch_add(1, Ordering::Relaxed))
    }
    async fn load_run(&mut self, id: i64) -> Result<Option<RunRow>> {
        if let Some(r) = self.runs.get(&id) {
            return r.row().map(Some);
        }
        sqlx::query("SELECT * FROM runs WHERE id = $1")
            .bind(id)
            .fetch_optional(self.db().await?)
            .await?
            .as_ref()
            .map(run_row)
            .transpose()
    }
    async fn active_run_exists(&mut self, scenario: &str, subject: &str) -> Result<bool> {
        self.flush_runs().await?;
        let n: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM runs WHERE scenario = $1 AND subject = $2
             AND status IN ('running', 'waiting', 'sleeping') LIMIT 1",
        )
        .bind(scenario)
        .bind(subject)
        .fetch_optional(self.db().await?)
        .await?;
        Ok(n.is_some())
    }
    async fn insert_event(&mut self, ev: &NewEvent) -> Result<Option<i64>> {
        let counters = self.ids.clone();
        let (ids, inserted) = self
            .within(|db| insert_events(db, &counters, &[ev]))
            .await?;
        Ok(ids.into_iter().find(|id| inserted.contains(id)))
    }
    async fn insert_outbox(&mut self, row: &NewOutbox) -> Result<i64> {
        let id = self.ids.outbox.fetch_add(1, Ordering::Relaxed);
        self.new_outbox.push((id, row.clone()));
        Ok(id)
    }
    async fn take_keyed_timers(
        &mut self,
        scenario: &str,
        subject: Option<&str>,
        key: &str,
    ) -> Result<Vec<i64>> {
        Ok(sqlx::query_scalar(
            "DELETE FROM timers WHERE scenario = $1 AND subject IS $2 AND key = $3
             AND kind = 'sleep' RETURNING run_id",
        )
        .bind(scenario)
        .bind(subject)
        .bind(key)
        .fetch_all(self.db().await?)
        .await?)
    }
    async fn load_offer(&mut self, id: i64) -> Result<Option<OfferRow>> {
        sqlx::query("SELECT * FROM offers WHERE id = $1")
            .bind(id)
            .fetch_optional(self.db().await?)
            .await?
            .as_ref()
            .map(offer_row)
            .transpose()
    }
    async fn exclude_from_offer(&mut self, id: i64, user: &str) -> Result<()> {
        sqlx::query("UPDATE offers SET excluded = json_insert(excluded, '$[#]', $2) WHERE id = $1")
            .bind(id)
            .bind(user)
            .execute(self.db().await?)
            .await?;
        Ok(())
    }
    async fn subject_limit(
        &mut self,
        scenario: &str,
        subject: &str,
    ) -> Result<Option<SubjectLimit>> {
        let row = sqlx::query(
            "SELECT total, window_start, window_count FROM subject_limits
             WHERE scenario = $1 AND subject = $2",
        )
        .bind(scenario)
        .bind(subject)
        .fetch_optional(self.db().await?)
        .await?;
        Ok(row.map(|r| SubjectLimit {
            total: r.get("total"),
            window_start: r.get("window_start"),
            window_count: r.get("window_count"),
        }))
    }
    async fn subject_vars(&mut self, subject: &str) -> Result<Map<String, Json>> {
        let v: Option<String> =
            sqlx::query_scalar("SELECT vars FROM subject_vars WHERE subject = $1")
                .bind(subject)
                .fetch_optional(self.db().await?)
                .await?;
        Ok(match v.map(|v| parse_json(&v)).transpose()? {
            Some(Json::Object(m)) => m,
            _ => Map::new(),
        })
    }
    async fn reset_outbox(&mut self, id: i64, now: i64) -> Result<Option<OutboxRow>> {
        self.flush().await?;
        sqlx::query(
            "UPDATE outbox SET status = 'pending', attempts = 0, next_attempt_at = $2,
                    last_error = NULL, updated_at = $2, message_ref = NULL,
                    delivery_status = NULL, statuses = NULL
             WHERE id = $1 AND (status = 'failed' OR delivery_status = 'failed') RETURNING *",
        )
        .bind(id)
        .bind(now)
        .fetch_optional(self.db().await?)
        .await?
        .as_ref()
        .map(outbox_row)
        .transpose()
    }
});
