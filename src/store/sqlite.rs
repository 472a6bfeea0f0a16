//! SQLite (WAL) implementation of the store. One process owns a database file: run ids are
//! handed out from memory, and write transactions queue on the process's own lock, then start
//! with `BEGIN IMMEDIATE` (a batch's at its first statement).

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Map, Value as Json};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{Connection, QueryBuilder, Row, Sqlite, Transaction};

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

/// Inserts events with ids from the counter; returns the ids that went in (the others
/// repeated a dedupe key).
async fn insert_events(
    tx: &mut SqliteConnection,
    ids: &Ids,
    batch: &[&NewEvent],
) -> Result<(Vec<i64>, HashSet<i64>)> {
    let assigned: Vec<i64> = batch
        .iter()
        .map(|_| ids.event.fetch_add(1, Ordering::Relaxed))
        .collect();
    let rows: Vec<(i64, &NewEvent)> = assigned
        .iter()
        .copied()
        .zip(batch.iter().copied())
        .collect();
    let mut inserted = HashSet::with_capacity(batch.len());
    for chunk in chunks(&rows) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO events (id, kind, source, dedupe_key, status, data, meta, error, received_at) ",
        );
        q.push_values(chunk, |mut b, (id, ev)| {
            b.push_bind(*id)
                .push_bind(ev.kind.clone())
                .push_bind(ev.source.clone())
                .push_bind(ev.dedupe_key.clone())
                .push_bind(if ev.rejected.is_some() {
                    "rejected"
                } else {
                    "pending"
                })
                .push_bind(ev.data.to_string())
                .push_bind(ev.meta.to_string())
                .push_bind(ev.rejected.clone())
                .push_bind(ev.received_at);
        });
        if chunk.iter().all(|(_, ev)| ev.dedupe_key.is_none()) {
            // Nothing to deduplicate: every row goes in, and none has to be read back.
            q.build().execute(&mut *tx).await?;
            inserted.extend(chunk.iter().map(|(id, _)| *id));
        } else {
            q.push(" ON CONFLICT (dedupe_key) DO NOTHING RETURNING id");
            let ids: Vec<i64> = q.build_query_scalar().fetch_all(&mut *tx).await?;
            inserted.extend(ids);
        }
    }
    Ok((assigned, inserted))
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
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let refs: Vec<&NewEvent> = batch.iter().collect();
        let (ids, inserted) = insert_events(&mut tx, &self.ids, &refs).await?;
        let mut out = Vec::with_capacity(batch.len());
        for (ev, id) in batch.iter().zip(ids) {
            if inserted.contains(&id) {
                out.push(if ev.rejected.is_some() {
                    IngestOutcome::Rejected(id)
                } else {
                    IngestOutcome::Accepted(id)
                });
            } else {
                let first: i64 = sqlx::query_scalar("SELECT id FROM events WHERE dedupe_key = $1")
                    .bind(&ev.dedupe_key)
                    .fetch_one(&mut *tx)
                    .await?;
                out.push(IngestOutcome::Duplicate(first));
            }
        }
        tx.commit().await?;
        Ok(out)
    }
    async fn begin(&self) -> Result<Box<dyn Tx>> {
        Ok(Box::new(SqliteTx {
            tx: None,
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
/// outbox rows) are kept until a read needs them or the commit, then written with one
/// statement per table.
///
/// The transaction itself begins (taking the process's write lock) only when the first
/// statement needs it: a batch that reads nothing before its commit holds the database only
/// while its writes go in, not while the engine works out what to write. The process is the
/// file's only writer, so nothing it would have read can change in between.
struct SqliteTx {
    /// The open transaction and the write lock, held until it ends (the transaction is
    /// declared first, so that it is dropped — rolled back — before the lock is released).
    tx: Option<(
        Transaction<'static, Sqlite>,
        tokio::sync::OwnedMutexGuard<()>,
    )>,
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

impl SqliteTx {
    /// The transaction's connection; begins the transaction on first use.
    async fn db(&mut self) -> Result<&mut SqliteConnection> {
        if self.tx.is_none() {
            let lock = self.write.clone().lock_owned().await;
            let tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
            self.tx = Some((tx, lock));
        }
        Ok(&mut *self.tx.as_mut().expect("begun above").0)
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
        insert_events(self.db().await?, &ids, batch).await
    }

    /// The owner recorded on events (PostgreSQL's replicas); none here.
    fn event_owner(&self) -> Option<&str> {
        None
    }

    /// Commits what was written (a transaction that never began has nothing to commit).
    async fn finish(self) -> Result<()> {
        if let Some((tx, _lock)) = self.tx {
            tx.commit().await?;
        }
        Ok(())
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
        let (ids, inserted) = insert_events(self.db().await?, &counters, &[ev]).await?;
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
