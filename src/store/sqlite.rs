//! SQLite (WAL) implementation of the store. One process owns a database file: run ids are
//! handed out from memory, and write transactions start with `BEGIN IMMEDIATE`.

use std::str::FromStr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Map, Value as Json};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};

use super::*;

pub struct SqliteStore {
    pool: SqlitePool,
    next_run_id: std::sync::Arc<AtomicI64>,
}

fn parse_json(s: &str) -> Result<Json> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn opt_json(s: Option<String>) -> Result<Option<Json>> {
    s.map(|s| parse_json(&s)).transpose()
}

fn event_row(r: &SqliteRow) -> Result<EventRow> {
    Ok(EventRow {
        id: r.get("id"),
        kind: r.get("kind"),
        source: r.get("source"),
        status: r.get("status"),
        data: parse_json(r.get("data"))?,
        meta: parse_json(r.get("meta"))?,
        outcome: opt_json(r.get("outcome"))?,
        error: r.get("error"),
        received_at: r.get("received_at"),
    })
}

fn run_row(r: &SqliteRow) -> Result<RunRow> {
    let status: String = r.get("status");
    let vars = match parse_json(r.get("vars"))? {
        Json::Object(m) => m,
        _ => Map::new(),
    };
    let journal = match parse_json(r.get("journal"))? {
        Json::Array(a) => a,
        _ => Vec::new(),
    };
    Ok(RunRow {
        id: r.get("id"),
        scenario: r.get("scenario"),
        subject: r.get("subject"),
        status: RunStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("run status '{status}'")))?,
        pc: r.get("pc"),
        vars,
        journal,
        event_id: r.get("event_id"),
        event: parse_json(r.get("event"))?,
        depth: r.get("depth"),
        error: r.get("error"),
        created_at: r.get("created_at"),
        updated_at: r.get("updated_at"),
    })
}

fn outbox_row(r: &SqliteRow) -> Result<OutboxRow> {
    Ok(OutboxRow {
        id: r.get("id"),
        run_id: r.get("run_id"),
        step: r.get("step"),
        kind: r.get("kind"),
        channel: r.get("channel"),
        request: parse_json(r.get("request"))?,
        status: r.get("status"),
        attempts: r.get("attempts"),
        max_attempts: r.get("max_attempts"),
        timeout_ms: r.get("timeout_ms"),
        next_attempt_at: r.get("next_attempt_at"),
        resume: r.get::<i64, _>("resume") != 0,
        response: opt_json(r.get("response"))?,
        last_error: r.get("last_error"),
    })
}

impl SqliteStore {
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
        let pool = SqlitePoolOptions::new()
            // An in-memory database exists once per connection: keep exactly one.
            .max_connections(if in_memory { 1 } else { 4 })
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(opts)
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        let max: Option<i64> = sqlx::query_scalar("SELECT max(id) FROM runs")
            .fetch_one(&pool)
            .await?;
        Ok(SqliteStore {
            pool,
            next_run_id: std::sync::Arc::new(AtomicI64::new(max.unwrap_or(0) + 1)),
        })
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

async fn insert_event(tx: &mut Transaction<'static, Sqlite>, ev: &NewEvent) -> Result<Option<i64>> {
    let status = if ev.rejected.is_some() {
        "rejected"
    } else {
        "pending"
    };
    let id: Option<i64> = sqlx::query_scalar(
        "INSERT INTO events (kind, source, dedupe_key, status, data, meta, error, received_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (dedupe_key) DO NOTHING RETURNING id",
    )
    .bind(&ev.kind)
    .bind(&ev.source)
    .bind(&ev.dedupe_key)
    .bind(status)
    .bind(ev.data.to_string())
    .bind(ev.meta.to_string())
    .bind(&ev.rejected)
    .bind(ev.received_at)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(id)
}

#[async_trait]
impl Store for SqliteStore {
    fn exclusive(&self) -> bool {
        true
    }

    async fn ingest(&self, batch: &[NewEvent]) -> Result<Vec<IngestOutcome>> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let mut out = Vec::with_capacity(batch.len());
        for ev in batch {
            match insert_event(&mut tx, ev).await? {
                Some(id) if ev.rejected.is_some() => out.push(IngestOutcome::Rejected(id)),
                Some(id) => out.push(IngestOutcome::Accepted(id)),
                None => {
                    let id: i64 = sqlx::query_scalar("SELECT id FROM events WHERE dedupe_key = $1")
                        .bind(&ev.dedupe_key)
                        .fetch_one(&mut *tx)
                        .await?;
                    out.push(IngestOutcome::Duplicate(id));
                }
            }
        }
        tx.commit().await?;
        Ok(out)
    }

    async fn begin(&self) -> Result<Box<dyn Tx>> {
        let tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        Ok(Box::new(SqliteTx {
            tx,
            next_run_id: self.next_run_id.clone(),
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

    async fn next_timer_due(&self) -> Result<Option<i64>> {
        Ok(sqlx::query_scalar("SELECT min(due_at) FROM timers")
            .fetch_one(&self.pool)
            .await?)
    }

    async fn due_timers(&self, now: i64, limit: i64) -> Result<Vec<TimerRow>> {
        let rows = sqlx::query(
            "SELECT id, run_id, kind, due_at, scenario FROM timers WHERE due_at <= $1
             ORDER BY due_at, id LIMIT $2",
        )
        .bind(now)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| TimerRow {
                id: r.get("id"),
                run_id: r.get("run_id"),
                kind: r.get("kind"),
                due_at: r.get("due_at"),
                scenario: r.get("scenario"),
            })
            .collect())
    }

    async fn open_outbox(&self) -> Result<Vec<OutboxRow>> {
        let rows = sqlx::query("SELECT * FROM outbox WHERE status = 'pending' ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(outbox_row).collect()
    }

    async fn globals(&self) -> Result<Map<String, Json>> {
        let rows = sqlx::query("SELECT name, value FROM globals")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.get::<String, _>("name"), parse_json(r.get("value"))?)))
            .collect()
    }

    async fn schedule_last(&self, scenario: &str) -> Result<Option<i64>> {
        Ok(
            sqlx::query_scalar("SELECT last_fire FROM schedules WHERE scenario = $1")
                .bind(scenario)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn set_schedule_last(&self, scenario: &str, at: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO schedules (scenario, last_fire) VALUES ($1, $2)
             ON CONFLICT (scenario) DO UPDATE SET last_fire = excluded.last_fire",
        )
        .bind(scenario)
        .bind(at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn event(&self, id: i64) -> Result<Option<EventRow>> {
        sqlx::query("SELECT * FROM events WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(event_row)
            .transpose()
    }

    async fn run(&self, id: i64) -> Result<Option<RunRow>> {
        sqlx::query("SELECT * FROM runs WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(run_row)
            .transpose()
    }

    async fn recent_events(&self, limit: i64) -> Result<Vec<EventRow>> {
        let rows = sqlx::query("SELECT * FROM events ORDER BY id DESC LIMIT $1")
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(event_row).collect()
    }

    async fn runs_for_event(&self, event_id: i64) -> Result<Vec<RunRow>> {
        let rows = sqlx::query("SELECT * FROM runs WHERE event_id = $1 ORDER BY id")
            .bind(event_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(run_row).collect()
    }

    async fn outbox_for_run(&self, run_id: i64) -> Result<Vec<OutboxRow>> {
        let rows = sqlx::query("SELECT * FROM outbox WHERE run_id = $1 ORDER BY id")
            .bind(run_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(outbox_row).collect()
    }

    async fn counts(&self) -> Result<Counts> {
        let mut c = Counts {
            events: sqlx::query_scalar("SELECT count(*) FROM events")
                .fetch_one(&self.pool)
                .await?,
            timers: sqlx::query_scalar("SELECT count(*) FROM timers")
                .fetch_one(&self.pool)
                .await?,
            waits: sqlx::query_scalar("SELECT count(*) FROM waits")
                .fetch_one(&self.pool)
                .await?,
            ..Counts::default()
        };
        for r in sqlx::query("SELECT status, count(*) AS n FROM runs GROUP BY status")
            .fetch_all(&self.pool)
            .await?
        {
            c.runs_by_status.insert(r.get("status"), r.get("n"));
        }
        for r in sqlx::query("SELECT status, count(*) AS n FROM outbox GROUP BY status")
            .fetch_all(&self.pool)
            .await?
        {
            c.outbox_by_status.insert(r.get("status"), r.get("n"));
        }
        Ok(c)
    }
}

struct SqliteTx {
    tx: Transaction<'static, Sqlite>,
    next_run_id: std::sync::Arc<AtomicI64>,
}

#[async_trait]
impl Tx for SqliteTx {
    async fn new_run_id(&mut self) -> Result<i64> {
        Ok(self.next_run_id.fetch_add(1, Ordering::Relaxed))
    }

    async fn save_run(&mut self, run: &RunRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO runs (id, scenario, subject, status, pc, vars, journal, event_id, event,
                               depth, error, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
             ON CONFLICT (id) DO UPDATE SET status = excluded.status, pc = excluded.pc,
                vars = excluded.vars, journal = excluded.journal, error = excluded.error,
                updated_at = excluded.updated_at",
        )
        .bind(run.id)
        .bind(&run.scenario)
        .bind(&run.subject)
        .bind(run.status.as_str())
        .bind(run.pc)
        .bind(Json::Object(run.vars.clone()).to_string())
        .bind(serde_json::to_string(&run.journal).unwrap_or_else(|_| "[]".into()))
        .bind(run.event_id)
        .bind(run.event.to_string())
        .bind(run.depth)
        .bind(&run.error)
        .bind(run.created_at)
        .bind(run.updated_at)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn load_run(&mut self, id: i64) -> Result<Option<RunRow>> {
        sqlx::query("SELECT * FROM runs WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *self.tx)
            .await?
            .as_ref()
            .map(run_row)
            .transpose()
    }

    async fn active_run_exists(&mut self, scenario: &str, subject: &str) -> Result<bool> {
        let n: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM runs WHERE scenario = $1 AND subject = $2
             AND status IN ('running', 'waiting', 'sleeping') LIMIT 1",
        )
        .bind(scenario)
        .bind(subject)
        .fetch_optional(&mut *self.tx)
        .await?;
        Ok(n.is_some())
    }

    async fn insert_event(&mut self, ev: &NewEvent) -> Result<Option<i64>> {
        insert_event(&mut self.tx, ev).await
    }

    async fn finish_event(
        &mut self,
        id: i64,
        status: &str,
        outcome: &Json,
        now: i64,
    ) -> Result<()> {
        sqlx::query("UPDATE events SET status = $1, outcome = $2, processed_at = $3 WHERE id = $4")
            .bind(status)
            .bind(outcome.to_string())
            .bind(now)
            .bind(id)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    async fn insert_outbox(&mut self, row: &NewOutbox) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "INSERT INTO outbox (run_id, step, kind, channel, request, status, attempts,
                                 max_attempts, timeout_ms, next_attempt_at, resume, created_at,
                                 updated_at)
             VALUES ($1, $2, $3, $4, $5, 'pending', 0, $6, $7, $8, $9, $8, $8) RETURNING id",
        )
        .bind(row.run_id)
        .bind(row.step)
        .bind(&row.kind)
        .bind(&row.channel)
        .bind(row.request.to_string())
        .bind(row.max_attempts)
        .bind(row.timeout_ms)
        .bind(row.now)
        .bind(row.resume as i64)
        .fetch_one(&mut *self.tx)
        .await?)
    }

    async fn outbox_attempt(
        &mut self,
        id: i64,
        attempts: i64,
        next_at: i64,
        error: &str,
        now: i64,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE outbox SET attempts = $1, next_attempt_at = $2, last_error = $3,
             updated_at = $4 WHERE id = $5 AND status = 'pending'",
        )
        .bind(attempts)
        .bind(next_at)
        .bind(error)
        .bind(now)
        .bind(id)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn outbox_finish(
        &mut self,
        id: i64,
        status: &str,
        attempts: i64,
        response: Option<&Json>,
        error: Option<&str>,
        now: i64,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE outbox SET status = $1, attempts = $2, response = $3, last_error = $4,
             updated_at = $5 WHERE id = $6",
        )
        .bind(status)
        .bind(attempts)
        .bind(response.map(|r| r.to_string()))
        .bind(error)
        .bind(now)
        .bind(id)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn insert_timer(&mut self, t: &NewTimer) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "INSERT INTO timers (run_id, kind, due_at, scenario, subject, key)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(t.run_id)
        .bind(&t.kind)
        .bind(t.due_at)
        .bind(&t.scenario)
        .bind(&t.subject)
        .bind(&t.key)
        .fetch_one(&mut *self.tx)
        .await?)
    }

    async fn delete_timer(&mut self, id: i64) -> Result<bool> {
        let r = sqlx::query("DELETE FROM timers WHERE id = $1")
            .bind(id)
            .execute(&mut *self.tx)
            .await?;
        Ok(r.rows_affected() == 1)
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
        .fetch_all(&mut *self.tx)
        .await?)
    }

    async fn parked_runs(&mut self, scenario: &str, subject: Option<&str>) -> Result<Vec<i64>> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM runs WHERE scenario = $1 AND ($2 IS NULL OR subject = $2)
             AND status IN ('waiting', 'sleeping') ORDER BY id",
        )
        .bind(scenario)
        .bind(subject)
        .fetch_all(&mut *self.tx)
        .await?)
    }

    async fn clear_parks(&mut self, run_id: i64) -> Result<()> {
        sqlx::query("DELETE FROM timers WHERE run_id = $1")
            .bind(run_id)
            .execute(&mut *self.tx)
            .await?;
        sqlx::query("DELETE FROM waits WHERE run_id = $1")
            .bind(run_id)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    async fn insert_wait(&mut self, w: &NewWait) -> Result<()> {
        sqlx::query(
            "INSERT INTO waits (run_id, hook, scenario, step, match_key, created_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(w.run_id)
        .bind(&w.hook)
        .bind(&w.scenario)
        .bind(w.step)
        .bind(&w.match_key)
        .bind(w.now)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn find_waits(
        &mut self,
        hook: &str,
        scenario: &str,
        step: i64,
        match_key: &str,
    ) -> Result<Vec<i64>> {
        Ok(sqlx::query_scalar(
            "SELECT run_id FROM waits WHERE hook = $1 AND scenario = $2 AND step = $3
             AND match_key = $4 ORDER BY id LIMIT 16",
        )
        .bind(hook)
        .bind(scenario)
        .bind(step)
        .bind(match_key)
        .fetch_all(&mut *self.tx)
        .await?)
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
        .fetch_optional(&mut *self.tx)
        .await?;
        Ok(row.map(|r| SubjectLimit {
            total: r.get("total"),
            window_start: r.get("window_start"),
            window_count: r.get("window_count"),
        }))
    }

    async fn put_subject_limit(
        &mut self,
        scenario: &str,
        subject: &str,
        l: &SubjectLimit,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO subject_limits (scenario, subject, total, window_start, window_count)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (scenario, subject) DO UPDATE SET total = excluded.total,
                window_start = excluded.window_start, window_count = excluded.window_count",
        )
        .bind(scenario)
        .bind(subject)
        .bind(l.total)
        .bind(l.window_start)
        .bind(l.window_count)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn subject_vars(&mut self, subject: &str) -> Result<Map<String, Json>> {
        let v: Option<String> =
            sqlx::query_scalar("SELECT vars FROM subject_vars WHERE subject = $1")
                .bind(subject)
                .fetch_optional(&mut *self.tx)
                .await?;
        Ok(match v.map(|v| parse_json(&v)).transpose()? {
            Some(Json::Object(m)) => m,
            _ => Map::new(),
        })
    }

    async fn put_subject_vars(&mut self, subject: &str, vars: &Map<String, Json>) -> Result<()> {
        sqlx::query(
            "INSERT INTO subject_vars (subject, vars) VALUES ($1, $2)
             ON CONFLICT (subject) DO UPDATE SET vars = excluded.vars",
        )
        .bind(subject)
        .bind(Json::Object(vars.clone()).to_string())
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn put_global(&mut self, name: &str, value: &Json, now: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO globals (name, value, updated_at) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE SET value = excluded.value,
                updated_at = excluded.updated_at",
        )
        .bind(name)
        .bind(value.to_string())
        .bind(now)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        self.tx.commit().await?;
        Ok(())
    }
}
