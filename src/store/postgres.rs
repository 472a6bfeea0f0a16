//! PostgreSQL implementation of the store, for one or several replicas on one database.
//!
//! Every replica registers itself in `replicas` and keeps its row fresh. Events and outbox
//! rows carry the replica that owns them; rows of a replica not seen for a lease period are
//! handed to a live one. Each write transaction first takes a key-share lock on its own
//! replica row, so a replica presumed dead can commit nothing after its work was taken over.
//! Run ids, event ids and outbox ids come from sequences in blocks of 100, so that a batch
//! of rows goes in with one statement as on SQLite.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde_json::{Map, Value as Json};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection, Postgres, QueryBuilder, Row, Transaction};

use super::rows::*;
use super::sql::{impl_store, impl_tx};
use super::*;

/// Records a delivery status on the row that sent its message (`Tx::outbox_status`), once
/// per status. One statement (the row locked), so that a status never overwrites another
/// that another replica recorded meanwhile.
const OUTBOX_STATUS: &str = "UPDATE outbox SET
        statuses = (coalesce(statuses, '[]')::jsonb || jsonb_build_array($4::jsonb))::text,
        delivery_status = CASE WHEN delivery_status = 'failed'
            OR (delivery_status = 'read' AND $3::text <> 'failed')
            OR (delivery_status = 'delivered' AND $3::text = 'sent')
            THEN delivery_status ELSE $3::text END,
        last_error = coalesce($5::text, last_error), updated_at = $6
    WHERE channel = $1 AND message_ref = $2
      AND NOT coalesce(statuses, '[]')::jsonb
          @> jsonb_build_array(jsonb_build_object('status', $3::text))
    RETURNING *";

row_mappers!(PgRow);

/// Ids per block; the sequences' increment (see the migration).
const BLOCK: i64 = 100;

pub struct PgStore {
    pool: PgPool,
    ids: Arc<Ids>,
    /// This replica's row in `replicas`.
    me: Arc<str>,
    lease_ms: i64,
}

struct Ids {
    run: Block,
    event: Block,
    outbox: Block,
}

/// The rest of a block of ids taken from a sequence.
struct Block {
    seq: &'static str,
    left: Mutex<std::ops::Range<i64>>,
}

impl Block {
    fn new(seq: &'static str) -> Block {
        Block {
            seq,
            left: Mutex::new(0..0),
        }
    }

    async fn take(&self, conn: &mut PgConnection, n: usize) -> Result<Vec<i64>> {
        let mut out = Vec::with_capacity(n);
        {
            let mut left = self.left.lock().expect("not poisoned");
            out.extend(left.by_ref().take(n));
        }
        if out.len() < n {
            let need = (n - out.len()) as i64;
            let bases: Vec<i64> = sqlx::query_scalar(&format!(
                "SELECT nextval('{}') FROM generate_series(1, $1)",
                self.seq
            ))
            .bind((need + BLOCK - 1) / BLOCK)
            .fetch_all(&mut *conn)
            .await?;
            let mut rest = 0..0;
            for base in bases {
                let mut block = base..base + BLOCK;
                out.extend(block.by_ref().take(n - out.len()));
                rest = block;
            }
            *self.left.lock().expect("not poisoned") = rest;
        }
        Ok(out)
    }
}

/// A name for this process among the replicas: host, process id and a random part.
fn replica_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "host".into());
    format!(
        "{host}-{}-{:06x}",
        std::process::id(),
        rand::random::<u32>() & 0xff_ffff
    )
}

/// Takes the key-share lock on this replica's row: fails when the replica was presumed
/// dead, and keeps a takeover from removing it until the transaction ends.
async fn fence(conn: &mut PgConnection, me: &str) -> Result<()> {
    let alive: Option<i64> =
        sqlx::query_scalar("SELECT 1::BIGINT FROM replicas WHERE id = $1 FOR KEY SHARE")
            .bind(me)
            .fetch_optional(&mut *conn)
            .await?;
    match alive {
        Some(_) => Ok(()),
        None => Err(StoreError::Fenced),
    }
}

/// A transaction-long advisory lock on a name: serializes read-modify-write of rows that
/// may not exist yet (subject limits, subject variables, globals) across replicas.
async fn lock_name(conn: &mut PgConnection, name: &str) -> Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(name)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

impl PgStore {
    /// Connects, migrates and registers this process as a replica.
    pub async fn open(url: &str, opts: &PoolOptions) -> Result<PgStore> {
        let connect = PgConnectOptions::from_str(url)?.application_name("switchboard");
        let pool = PgPoolOptions::new()
            .max_connections(opts.max_connections.max(2))
            .min_connections(opts.min_connections)
            .acquire_timeout(opts.acquire_timeout)
            .connect_with(connect)
            .await?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        let me: Arc<str> = replica_name().into();
        sqlx::query(
            "INSERT INTO replicas (id, host, started_at, seen_at)
             VALUES ($1, $2, sb_now_ms(), sb_now_ms())",
        )
        .bind(&*me)
        .bind(me.rsplitn(3, '-').last().unwrap_or_default())
        .execute(&pool)
        .await?;
        Ok(PgStore {
            pool,
            ids: Arc::new(Ids {
                run: Block::new("run_ids"),
                event: Block::new("event_ids"),
                outbox: Block::new("outbox_ids"),
            }),
            me,
            lease_ms: opts.lease.as_millis() as i64,
        })
    }

    /// Applies the migrations only.
    pub async fn migrate(url: &str) -> Result<()> {
        let mut conn = PgConnection::connect_with(&PgConnectOptions::from_str(url)?).await?;
        sqlx::migrate!("./migrations/postgres")
            .run(&mut conn)
            .await?;
        conn.close().await?;
        Ok(())
    }

    async fn begin_fenced(&self) -> Result<Transaction<'static, Postgres>> {
        let mut tx = self.pool.begin().await?;
        fence(&mut tx, &self.me).await?;
        Ok(tx)
    }
}

/// Inserts events with ids from the counter; returns the ids that went in (the others
/// repeated a dedupe key).
async fn insert_events(
    tx: &mut Transaction<'static, Postgres>,
    ids: &Ids,
    me: &str,
    batch: &[&NewEvent],
) -> Result<(Vec<i64>, HashSet<i64>)> {
    let assigned = ids.event.take(tx, batch.len()).await?;
    let rows: Vec<(i64, &NewEvent)> = assigned
        .iter()
        .copied()
        .zip(batch.iter().copied())
        .collect();
    let mut inserted = HashSet::with_capacity(batch.len());
    for chunk in chunks(&rows) {
        let mut q = QueryBuilder::<Postgres>::new(
            "INSERT INTO events (id, kind, source, dedupe_key, status, data, meta, error, received_at,
                                 owner) ",
        );
        q.push_values(chunk, |mut b, (id, ev)| {
            b.push_bind(*id)
                .push_bind(ev.kind.clone())
                .push_bind(ev.source.clone())
                .push_bind(ev.dedupe_key.clone())
                .push_bind(ev.status())
                .push_bind(ev.data.to_string())
                .push_bind(ev.meta.to_string())
                .push_bind(ev.rejected.clone())
                .push_bind(ev.received_at)
                .push_bind(me.to_string());
        });
        if chunk.iter().all(|(_, ev)| ev.dedupe_key.is_none()) {
            // Nothing to deduplicate: every row goes in, and none has to be read back.
            q.build().execute(&mut **tx).await?;
            inserted.extend(chunk.iter().map(|(id, _)| *id));
        } else {
            q.push(" ON CONFLICT (dedupe_key) DO NOTHING RETURNING id");
            let ids: Vec<i64> = q.build_query_scalar().fetch_all(&mut **tx).await?;
            inserted.extend(ids);
        }
    }
    Ok((assigned, inserted))
}

impl_store!(PgStore, Postgres, "strpos", {
    fn exclusive(&self) -> bool {
        false
    }
    async fn ingest(&self, batch: &[NewEvent]) -> Result<Vec<IngestOutcome>> {
        let mut tx = self.begin().await?;
        let out = tx.ingest(batch).await?;
        tx.commit().await?;
        Ok(out)
    }
    async fn begin(&self) -> Result<Box<dyn Tx>> {
        let tx = self.begin_fenced().await?;
        Ok(Box::new(PgTx {
            tx,
            ids: self.ids.clone(),
            me: self.me.clone(),
            loaded: HashMap::new(),
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
            "SELECT * FROM events WHERE status = 'pending' AND owner = $3 AND id > $1
             ORDER BY id LIMIT $2",
        )
        .bind(after_id)
        .bind(limit)
        .bind(&*self.me)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(event_row).collect()
    }
    async fn pending_lanes(&self) -> Result<Vec<(String, String)>> {
        Ok(sqlx::query_as(
            "SELECT DISTINCT kind, source FROM events WHERE status = 'pending' AND owner = $1",
        )
        .bind(&*self.me)
        .fetch_all(&self.pool)
        .await?)
    }
    async fn pending_lane_events(
        &self,
        lane: &(String, String),
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<EventRow>> {
        let rows = sqlx::query(
            "SELECT * FROM events WHERE status = 'pending' AND owner = $1 AND kind = $2
             AND source = $3 AND id > $4 ORDER BY id LIMIT $5",
        )
        .bind(&*self.me)
        .bind(&lane.0)
        .bind(&lane.1)
        .bind(after_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(event_row).collect()
    }
    async fn next_timer_due(&self) -> Result<Option<i64>> {
        // A timer another replica claimed is not due here before its claim runs out.
        Ok(
            sqlx::query_scalar("SELECT min(GREATEST(due_at, claimed_until)) FROM timers")
                .fetch_one(&self.pool)
                .await?,
        )
    }
    async fn due_timers(&self, now: i64, limit: i64) -> Result<Vec<TimerRow>> {
        let rows = sqlx::query(
            "UPDATE timers SET claimed_until = sb_now_ms() + $3 WHERE id IN (
                SELECT id FROM timers WHERE due_at <= $1 AND claimed_until < sb_now_ms()
                ORDER BY due_at, id LIMIT $2 FOR UPDATE SKIP LOCKED)
             RETURNING id, run_id, kind, due_at, scenario, subject, key",
        )
        .bind(now)
        .bind(limit)
        .bind(self.lease_ms)
        .fetch_all(&self.pool)
        .await?;
        let mut due: Vec<TimerRow> = rows.iter().map(timer_row).collect();
        due.sort_by_key(|t| (t.due_at, t.id));
        Ok(due)
    }
    async fn open_outbox(&self) -> Result<Vec<OutboxRow>> {
        let rows =
            sqlx::query("SELECT * FROM outbox WHERE status = 'pending' AND owner = $1 ORDER BY id")
                .bind(&*self.me)
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(outbox_row).collect()
    }
    async fn prune(&self, before: i64, limit: i64) -> Result<u64> {
        let mut tx = self.pool.begin().await?;
        let runs: Vec<i64> = sqlx::query_scalar(
            "SELECT id FROM runs WHERE updated_at < $1
             AND status IN ('done', 'failed', 'cancelled') ORDER BY updated_at LIMIT $2",
        )
        .bind(before)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        let mut n = sqlx::query(
            "DELETE FROM outbox WHERE run_id = ANY($1) AND status IN ('delivered', 'failed')",
        )
        .bind(&runs)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        n += sqlx::query("DELETE FROM runs WHERE id = ANY($1)")
            .bind(&runs)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        n += sqlx::query(
            // A single-use link's event is what makes it used: it stays until the link
            // expires (`meta.keep_until`; without an expiry, for good).
            "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE received_at < $1
             AND status != 'pending'
             AND (dedupe_key IS NULL OR dedupe_key NOT LIKE 'link:%'
                  OR coalesce((meta::jsonb->>'keep_until')::bigint, 9000000000000000000) < $1)
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
    async fn heartbeat(&self) -> Result<bool> {
        let r = sqlx::query("UPDATE replicas SET seen_at = sb_now_ms() WHERE id = $1")
            .bind(&*self.me)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }
    async fn take_over(&self) -> Result<(Vec<EventRow>, Vec<OutboxRow>)> {
        let mut tx = self.begin_fenced().await?;
        let dead: Vec<String> = sqlx::query_scalar(
            "DELETE FROM replicas WHERE seen_at < sb_now_ms() - $1 AND id <> $2 RETURNING id",
        )
        .bind(self.lease_ms)
        .bind(&*self.me)
        .fetch_all(&mut *tx)
        .await?;
        for id in &dead {
            tracing::warn!(replica = %id, "replica not seen for a lease period; taking over its work");
        }
        // Rows whose owner is gone: just removed, or removed by another replica that died
        // before it finished taking over.
        let orphan = "status = 'pending' AND (owner IS NULL OR NOT EXISTS
                      (SELECT 1 FROM replicas r WHERE r.id = owner))";
        let events = sqlx::query(&format!(
            "UPDATE events SET owner = $1 WHERE {orphan} RETURNING *"
        ))
        .bind(&*self.me)
        .fetch_all(&mut *tx)
        .await?;
        let outbox = sqlx::query(&format!(
            "UPDATE outbox SET owner = $1 WHERE {orphan} RETURNING *"
        ))
        .bind(&*self.me)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut events = events.iter().map(event_row).collect::<Result<Vec<_>>>()?;
        events.sort_by_key(|e| e.id);
        let mut outbox = outbox.iter().map(outbox_row).collect::<Result<Vec<_>>>()?;
        outbox.sort_by_key(|o| o.id);
        if !events.is_empty() || !outbox.is_empty() {
            tracing::info!(
                events = events.len(),
                outbox = outbox.len(),
                "took over work of replicas that are gone"
            );
        }
        Ok((events, outbox))
    }
    async fn hold_lease(&self, name: &str) -> Result<bool> {
        let held: Option<String> = sqlx::query_scalar(
            "INSERT INTO leases (name, owner, until_at) VALUES ($1, $2, sb_now_ms() + $3)
             ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, until_at = excluded.until_at
             WHERE leases.owner = excluded.owner OR leases.until_at < sb_now_ms()
             RETURNING owner",
        )
        .bind(name)
        .bind(&*self.me)
        .bind(self.lease_ms)
        .fetch_optional(&self.pool)
        .await?;
        Ok(held.is_some())
    }
    async fn release_lease(&self, name: &str) -> Result<()> {
        sqlx::query("DELETE FROM leases WHERE name = $1 AND owner = $2")
            .bind(name)
            .bind(&*self.me)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
    async fn reserve_send(&self, keys: &[(String, i64)]) -> Result<i64> {
        let mut at = 0i64;
        let mut now = 0i64;
        for (key, spacing) in keys {
            let row = sqlx::query(
                "INSERT INTO send_slots (key, next_at) VALUES ($1, GREATEST(sb_now_ms(), $2) + $3)
                 ON CONFLICT (key) DO UPDATE
                 SET next_at = GREATEST(send_slots.next_at, sb_now_ms(), $2) + $3
                 RETURNING next_at - $3 AS at, sb_now_ms() AS now",
            )
            .bind(key)
            .bind(at)
            .bind(*spacing)
            .fetch_one(&self.pool)
            .await?;
            at = row.get("at");
            now = row.get("now");
        }
        Ok((at - now).max(0))
    }
    async fn retire(&self) -> Result<()> {
        sqlx::query("DELETE FROM leases WHERE owner = $1")
            .bind(&*self.me)
            .execute(&self.pool)
            .await?;
        sqlx::query("DELETE FROM replicas WHERE id = $1")
            .bind(&*self.me)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
    fn lease(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.lease_ms as u64)
    }
    fn replica(&self) -> &str {
        &self.me
    }
});

/// A write transaction. Frequent writes (run states, finished events, new and finished
/// outbox rows) are kept until a read needs them or the commit, then written with one
/// statement per table.
struct PgTx {
    tx: Transaction<'static, Postgres>,
    ids: Arc<Ids>,
    me: Arc<str>,
    /// Runs read (and locked) ahead by `prefetch_runs`, as committed.
    loaded: HashMap<i64, RunRow>,
    runs: HashMap<i64, SavedRun>,
    arrived: HashMap<i64, ArrivedEvent>,
    finished_events: Vec<FinishedEvent>,
    new_outbox: Vec<(i64, NewOutbox)>,
    finished_outbox: Vec<FinishedOutbox>,
    /// scenario → (runs refused by limits, last start)
    counters: HashMap<String, (i64, Option<i64>)>,
}

impl PgTx {
    /// The transaction's connection.
    async fn db(&mut self) -> Result<&mut PgConnection> {
        Ok(&mut *self.tx)
    }

    /// Ids for `n` new events.
    async fn event_ids(&mut self, n: usize) -> Result<Vec<i64>> {
        self.ids.event.take(&mut self.tx, n).await
    }

    /// Inserts events that carry a deduplication key at once (ids assigned, ids inserted).
    async fn insert_keyed(&mut self, batch: &[&NewEvent]) -> Result<(Vec<i64>, HashSet<i64>)> {
        insert_events(&mut self.tx, &self.ids, &self.me, batch).await
    }

    /// The replica recorded as the events' owner.
    fn event_owner(&self) -> Option<&str> {
        Some(&self.me)
    }

    /// Writes what is buffered and commits.
    async fn finish(mut self) -> Result<()> {
        self.flush().await?;
        Ok(self.tx.commit().await?)
    }
}

/// The buffered writes: one multi-row statement per table (row counts in a few shapes, so
/// that the prepared statements are reused).
impl PgTx {
    async fn flush_runs(&mut self) -> Result<()> {
        if self.runs.is_empty() {
            return Ok(());
        }
        let runs: Vec<SavedRun> = self.runs.drain().map(|(_, r)| r).collect();
        for chunk in chunks(&runs) {
            let mut q = QueryBuilder::<Postgres>::new(
                "INSERT INTO runs (id, scenario, subject, status, pc, vars, journal, event_id, event,
                                   depth, error, created_at, updated_at, version) ",
            );
            q.push_values(chunk, |mut b, r| {
                b.push_bind(r.id)
                    .push_bind(r.scenario.clone())
                    .push_bind(r.subject.clone())
                    .push_bind(r.status.as_str())
                    .push_bind(r.pc)
                    .push_bind(r.vars.clone())
                    .push_bind(r.journal.clone())
                    .push_bind(r.event_id)
                    .push_bind(r.event.clone())
                    .push_bind(r.depth)
                    .push_bind(r.error.clone())
                    .push_bind(r.created_at)
                    .push_bind(r.updated_at)
                    .push_bind(r.version.clone());
            });
            q.push(
                " ON CONFLICT (id) DO UPDATE SET status = excluded.status, pc = excluded.pc,
                   vars = excluded.vars, journal = excluded.journal, error = excluded.error,
                   updated_at = excluded.updated_at",
            );
            q.build().execute(self.db().await?).await?;
        }
        Ok(())
    }

    /// Writes the events this transaction stored, with the status each has by now.
    async fn flush_arrived(&mut self) -> Result<()> {
        if self.arrived.is_empty() {
            return Ok(());
        }
        let mut rows: Vec<ArrivedEvent> = self.arrived.drain().map(|(_, e)| e).collect();
        rows.sort_unstable_by_key(|e| e.id);
        let owner = self.event_owner().map(str::to_string);
        for chunk in chunks(&rows) {
            let mut q = QueryBuilder::<Postgres>::new(
                "INSERT INTO events (id, kind, source, status, data, meta, error, outcome,
                                     received_at, processed_at",
            );
            q.push(if owner.is_some() { ", owner) " } else { ") " });
            q.push_values(chunk, |mut b, e| {
                b.push_bind(e.id)
                    .push_bind(e.kind.clone())
                    .push_bind(e.source.clone())
                    .push_bind(e.status.clone())
                    .push_bind(e.data.clone())
                    .push_bind(e.meta.clone())
                    .push_bind(e.error.clone())
                    .push_bind(e.outcome.clone())
                    .push_bind(e.received_at)
                    .push_bind(e.processed_at);
                if let Some(o) = &owner {
                    b.push_bind(o.clone());
                }
            });
            q.build().execute(self.db().await?).await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        self.flush_arrived().await?;
        let new_outbox = std::mem::take(&mut self.new_outbox);
        for chunk in chunks(&new_outbox) {
            let mut q = QueryBuilder::<Postgres>::new(
                "INSERT INTO outbox (id, run_id, step, kind, channel, request, status, attempts,
                                     max_attempts, timeout_ms, next_attempt_at, resume,
                                     created_at, updated_at, owner) ",
            );
            q.push_values(chunk, |mut b, (id, o)| {
                b.push_bind(*id)
                    .push_bind(o.run_id)
                    .push_bind(o.step)
                    .push_bind(o.kind.clone())
                    .push_bind(o.channel.clone())
                    .push_bind(o.request.to_string())
                    .push_bind("pending")
                    .push_bind(0i64)
                    .push_bind(o.max_attempts)
                    .push_bind(o.timeout_ms)
                    .push_bind(o.now)
                    .push_bind(o.resume as i64)
                    .push_bind(o.now)
                    .push_bind(o.now)
                    .push_bind(self.me.to_string());
            });
            q.build().execute(self.db().await?).await?;
        }
        self.flush_runs().await?;
        let finished = std::mem::take(&mut self.finished_outbox);
        for chunk in chunks(&finished) {
            let mut q = QueryBuilder::<Postgres>::new(
                "UPDATE outbox SET status = v.column2, attempts = v.column3, response = v.column4,
                        last_error = v.column5, updated_at = v.column6, message_ref = v.column7
                 FROM (",
            );
            q.push_values(chunk, |mut b, f| {
                b.push_bind(f.id)
                    .push_bind(f.status.clone())
                    .push_bind(f.attempts)
                    .push_bind(f.response.clone())
                    .push_bind(f.error.clone())
                    .push_bind(f.now)
                    .push_bind(f.message_ref.clone());
            });
            q.push(") AS v WHERE outbox.id = v.column1");
            q.build().execute(self.db().await?).await?;
        }
        for (scenario, (limited, fired)) in std::mem::take(&mut self.counters) {
            sqlx::query(
                "INSERT INTO scenario_counters (scenario, limited, last_fired) VALUES ($1, $2, $3)
                 ON CONFLICT (scenario) DO UPDATE
                 SET limited = scenario_counters.limited + excluded.limited,
                     last_fired = coalesce(excluded.last_fired, scenario_counters.last_fired)",
            )
            .bind(scenario)
            .bind(limited)
            .bind(fired)
            .execute(self.db().await?)
            .await?;
        }
        let events = std::mem::take(&mut self.finished_events);
        for chunk in chunks(&events) {
            let mut q = QueryBuilder::<Postgres>::new(
                "UPDATE events SET status = v.column2, outcome = v.column3, processed_at = v.column4
                 FROM (",
            );
            q.push_values(chunk, |mut b, e| {
                b.push_bind(e.id)
                    .push_bind(e.status.clone())
                    .push_bind(e.outcome.clone())
                    .push_bind(e.now);
            });
            q.push(") AS v WHERE events.id = v.column1");
            q.build().execute(self.db().await?).await?;
        }
        Ok(())
    }
}

impl_tx!(PgTx, Postgres, {
    async fn new_run_id(&mut self) -> Result<i64> {
        let id = self.ids.run.take(&mut self.tx, 1).await?;
        Ok(id[0])
    }
    async fn load_run(&mut self, id: i64) -> Result<Option<RunRow>> {
        if let Some(r) = self.runs.get(&id) {
            return r.row().map(Some);
        }
        if let Some(r) = self.loaded.get(&id) {
            return Ok(Some(r.clone()));
        }
        // Locked until the commit: a replica working on the same run waits and then sees
        // what this one did.
        sqlx::query("SELECT * FROM runs WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(self.db().await?)
            .await?
            .as_ref()
            .map(run_row)
            .transpose()
    }
    async fn prefetch_runs(&mut self, ids: &[i64]) -> Result<()> {
        let want: Vec<i64> = ids
            .iter()
            .copied()
            .filter(|id| !self.loaded.contains_key(id) && !self.runs.contains_key(id))
            .collect();
        if want.is_empty() {
            return Ok(());
        }
        // Locked in id order, as every batch does, so that two batches do not deadlock.
        let rows = sqlx::query("SELECT * FROM runs WHERE id = ANY($1) ORDER BY id FOR UPDATE")
            .bind(&want)
            .fetch_all(self.db().await?)
            .await?;
        for r in &rows {
            let run = run_row(r)?;
            self.loaded.insert(run.id, run);
        }
        Ok(())
    }
    async fn active_run_exists(&mut self, scenario: &str, subject: &str) -> Result<bool> {
        lock_name(
            &mut self.tx,
            &format!("limit\u{1f}{scenario}\u{1f}{subject}"),
        )
        .await?;
        self.flush_runs().await?;
        let n: Option<i64> = sqlx::query_scalar(
            "SELECT 1::BIGINT FROM runs WHERE scenario = $1 AND subject = $2
             AND status IN ('running', 'waiting', 'sleeping') LIMIT 1",
        )
        .bind(scenario)
        .bind(subject)
        .fetch_optional(self.db().await?)
        .await?;
        Ok(n.is_some())
    }
    async fn insert_event(&mut self, ev: &NewEvent) -> Result<Option<i64>> {
        let (ids, inserted) = insert_events(&mut self.tx, &self.ids, &self.me, &[ev]).await?;
        Ok(ids.into_iter().find(|id| inserted.contains(id)))
    }
    async fn insert_outbox(&mut self, row: &NewOutbox) -> Result<i64> {
        let id = self.ids.outbox.take(&mut self.tx, 1).await?[0];
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
            "DELETE FROM timers WHERE scenario = $1 AND subject IS NOT DISTINCT FROM $2 AND key = $3
             AND kind = 'sleep' RETURNING run_id",
        )
        .bind(scenario)
        .bind(subject)
        .bind(key)
        .fetch_all(self.db().await?)
        .await?)
    }
    async fn load_offer(&mut self, id: i64) -> Result<Option<OfferRow>> {
        // Clicks on one offer on several replicas queue here; each then sees the offer as
        // the one before left it (taken, and by whom).
        sqlx::query("SELECT * FROM offers WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(self.db().await?)
            .await?
            .as_ref()
            .map(offer_row)
            .transpose()
    }
    async fn exclude_from_offer(&mut self, id: i64, user: &str) -> Result<()> {
        sqlx::query(
            "UPDATE offers SET excluded = (excluded::jsonb || to_jsonb($2::text))::text WHERE id = $1",
        )
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
        lock_name(
            &mut self.tx,
            &format!("limit\u{1f}{scenario}\u{1f}{subject}"),
        )
        .await?;
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
        lock_name(&mut self.tx, &format!("subject\u{1f}{subject}")).await?;
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
    async fn lock_globals(&mut self) -> Result<Option<Map<String, Json>>> {
        lock_name(&mut self.tx, "globals").await?;
        let rows = sqlx::query("SELECT name, value FROM globals")
            .fetch_all(self.db().await?)
            .await?;
        rows.iter()
            .map(|r| Ok((r.get::<String, _>("name"), parse_json(r.get("value"))?)))
            .collect::<Result<Map<String, Json>>>()
            .map(Some)
    }
    async fn reset_outbox(&mut self, id: i64, now: i64) -> Result<Option<OutboxRow>> {
        self.flush().await?;
        sqlx::query(
            "UPDATE outbox SET status = 'pending', attempts = 0, next_attempt_at = $2,
                    last_error = NULL, updated_at = $2, owner = $3, message_ref = NULL,
                    delivery_status = NULL, statuses = NULL
             WHERE id = $1 AND (status = 'failed' OR delivery_status = 'failed') RETURNING *",
        )
        .bind(id)
        .bind(now)
        .bind(self.me.to_string())
        .fetch_optional(self.db().await?)
        .await?
        .as_ref()
        .map(outbox_row)
        .transpose()
    }
});
