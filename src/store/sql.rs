//! The parts of the `Store` and `Tx` implementations that read and write alike on SQLite and
//! PostgreSQL. Each macro takes the backend's own methods and adds these, in one
//! `#[async_trait]` impl; they use the row mappers of `rows.rs` and the backend's `pool`,
//! `tx`, `runs` and `counters` fields.

/// `impl_store!(Type, Database, "text search function", { own methods })`
macro_rules! impl_store {
    ($store:ty, $db:ty, $find:literal, { $($own:tt)* }) => {
        #[async_trait]
        impl Store for $store {
            $($own)*

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

            async fn list_runs(&self, f: &RunFilter) -> Result<Vec<RunSummary>> {
                let mut q = QueryBuilder::<$db>::new(
                    "SELECT id, scenario, subject, status, pc, event_id, error, created_at, updated_at
                     FROM runs WHERE 1 = 1",
                );
                if let Some(s) = &f.scenario {
                    q.push(" AND scenario = ").push_bind(s.clone());
                }
                if let Some(s) = f.status {
                    q.push(" AND status = ").push_bind(s.as_str());
                }
                if let Some(t) = f.from {
                    q.push(" AND created_at >= ").push_bind(t);
                }
                if let Some(t) = f.to {
                    q.push(" AND created_at < ").push_bind(t);
                }
                if let Some(b) = f.before {
                    q.push(" AND id < ").push_bind(b);
                }
                if let Some(text) = &f.q {
                    q.push(concat!(" AND (", $find, "(event, "))
                    .push_bind(text.clone());
                    q.push(concat!(") > 0 OR ", $find, "(subject, "))
                    .push_bind(text.clone());
                    q.push(") > 0)");
                }
                q.push(" ORDER BY id DESC LIMIT ").push_bind(f.limit);
                let rows = q.build().fetch_all(&self.pool).await?;
                rows.iter().map(summary_row).collect()
            }

            async fn list_events(&self, f: &EventFilter) -> Result<Vec<EventRow>> {
                let mut q = QueryBuilder::<$db>::new("SELECT * FROM events WHERE 1 = 1");
                if let Some(s) = &f.source {
                    q.push(" AND source = ").push_bind(s.clone());
                }
                if let Some(s) = &f.status {
                    q.push(" AND status = ").push_bind(s.clone());
                }
                if let Some(b) = f.before {
                    q.push(" AND id < ").push_bind(b);
                }
                if let Some(text) = &f.q {
                    q.push(concat!(" AND ", $find, "(data, "))
                        .push_bind(text.clone())
                        .push(") > 0");
                }
                q.push(" ORDER BY id DESC LIMIT ").push_bind(f.limit);
                let rows = q.build().fetch_all(&self.pool).await?;
                rows.iter().map(event_row).collect()
            }

            async fn scenario_stats(&self) -> Result<Vec<ScenarioStats>> {
                let mut by: std::collections::BTreeMap<String, ScenarioStats> = Default::default();
                for r in sqlx::query(
                    "SELECT scenario, status, count(*) AS n FROM runs GROUP BY scenario, status",
                )
                .fetch_all(&self.pool)
                .await?
                {
                    let scenario: String = r.get("scenario");
                    let n: i64 = r.get("n");
                    let e = by.entry(scenario.clone()).or_insert_with(|| ScenarioStats {
                        scenario,
                        ..Default::default()
                    });
                    e.started += n;
                    match RunStatus::parse(r.get("status")) {
                        Some(RunStatus::Done) => e.done += n,
                        Some(RunStatus::Failed) => e.failed += n,
                        Some(RunStatus::Cancelled) => e.cancelled += n,
                        _ => e.active += n,
                    }
                }
                for r in sqlx::query("SELECT scenario, limited, last_fired FROM scenario_counters")
                    .fetch_all(&self.pool)
                    .await?
                {
                    let scenario: String = r.get("scenario");
                    let e = by.entry(scenario.clone()).or_insert_with(|| ScenarioStats {
                        scenario,
                        ..Default::default()
                    });
                    e.limited = r.get("limited");
                    e.last_fired = r.get("last_fired");
                }
                Ok(by.into_values().collect())
            }

            async fn list_timers(&self, limit: i64) -> Result<Vec<TimerRow>> {
                let rows = sqlx::query("SELECT * FROM timers ORDER BY due_at, id LIMIT $1")
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?;
                Ok(rows.iter().map(timer_row).collect())
            }

            async fn list_waits(&self, limit: i64) -> Result<Vec<WaitRow>> {
                let rows = sqlx::query("SELECT * FROM waits ORDER BY id LIMIT $1")
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?;
                Ok(rows
                    .iter()
                    .map(|r| WaitRow {
                        id: r.get("id"),
                        run_id: r.get("run_id"),
                        hook: r.get("hook"),
                        scenario: r.get("scenario"),
                        step: r.get("step"),
                        match_key: r.get("match_key"),
                        created_at: r.get("created_at"),
                    })
                    .collect())
            }

            async fn outbox(&self, id: i64) -> Result<Option<OutboxRow>> {
                sqlx::query("SELECT * FROM outbox WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?
                    .as_ref()
                    .map(outbox_row)
                    .transpose()
            }

            async fn put_scenario_versions(
                &self,
                versions: &[(String, String, String)],
                now: i64,
            ) -> Result<()> {
                for chunk in versions.chunks(200) {
                    let mut q = QueryBuilder::<$db>::new(
                        "INSERT INTO scenario_versions (hash, scenario, source, seen_at) ",
                    );
                    q.push_values(chunk, |mut b, (hash, id, source)| {
                        b.push_bind(hash.clone())
                            .push_bind(id.clone())
                            .push_bind(source.clone())
                            .push_bind(now);
                    });
                    q.push(" ON CONFLICT (hash) DO UPDATE SET seen_at = excluded.seen_at");
                    q.build().execute(&self.pool).await?;
                }
                Ok(())
            }

            async fn scenario_version(&self, hash: &str) -> Result<Option<(String, String)>> {
                Ok(sqlx::query_as("SELECT scenario, source FROM scenario_versions WHERE hash = $1")
                    .bind(hash)
                    .fetch_optional(&self.pool)
                    .await?)
            }

            async fn versions_in_use(&self) -> Result<Vec<String>> {
                Ok(sqlx::query_scalar(
                    "SELECT DISTINCT version FROM runs
                     WHERE status IN ('running', 'waiting', 'sleeping') AND version IS NOT NULL",
                )
                .fetch_all(&self.pool)
                .await?)
            }

            async fn scenario_states(&self) -> Result<Vec<(String, bool, i64)>> {
                let rows = sqlx::query("SELECT scenario, enabled, updated_at FROM scenario_state")
                    .fetch_all(&self.pool)
                    .await?;
                Ok(rows
                    .iter()
                    .map(|r| {
                        (
                            r.get("scenario"),
                            r.get::<i64, _>("enabled") != 0,
                            r.get::<i64, _>("updated_at"),
                        )
                    })
                    .collect())
            }

            async fn setting(&self, name: &str) -> Result<Option<String>> {
                Ok(
                    sqlx::query_scalar("SELECT value FROM settings WHERE name = $1")
                        .bind(name)
                        .fetch_optional(&self.pool)
                        .await?,
                )
            }

            async fn setting_or_put(&self, name: &str, value: &str) -> Result<String> {
                sqlx::query(
                    "INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
                )
                .bind(name)
                .bind(value)
                .execute(&self.pool)
                .await?;
                Ok(
                    sqlx::query_scalar("SELECT value FROM settings WHERE name = $1")
                        .bind(name)
                        .fetch_one(&self.pool)
                        .await?,
                )
            }

            async fn outbox_by_ref(
                &self,
                channel: &str,
                message_ref: &str,
            ) -> Result<Option<OutboxRow>> {
                sqlx::query(
                    "SELECT * FROM outbox WHERE channel = $1 AND message_ref = $2 ORDER BY id LIMIT 1",
                )
                .bind(channel)
                .bind(message_ref)
                .fetch_optional(&self.pool)
                .await?
                .as_ref()
                .map(outbox_row)
                .transpose()
            }

            async fn suppress(
                &self,
                channel: &str,
                address: &str,
                reason: &str,
                now: i64,
            ) -> Result<()> {
                sqlx::query(
                    "INSERT INTO suppressions (channel, address, reason, at) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (channel, address) DO NOTHING",
                )
                .bind(channel)
                .bind(address)
                .bind(reason)
                .bind(now)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn list_suppressions(
                &self,
                channel: Option<&str>,
                limit: i64,
            ) -> Result<Vec<Suppression>> {
                let rows = sqlx::query(
                    "SELECT channel, address, reason, at FROM suppressions
                     WHERE (CAST($1 AS TEXT) IS NULL OR channel = $1) ORDER BY at DESC, address LIMIT $2",
                )
                .bind(channel)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?;
                Ok(rows
                    .iter()
                    .map(|r| Suppression {
                        channel: r.get("channel"),
                        address: r.get("address"),
                        reason: r.get("reason"),
                        at: r.get("at"),
                    })
                    .collect())
            }

            async fn unsuppress(&self, channel: &str, address: &str) -> Result<bool> {
                let done = sqlx::query("DELETE FROM suppressions WHERE channel = $1 AND address = $2")
                    .bind(channel)
                    .bind(address)
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn suppressed(&self, channel: &str, address: &str) -> Result<Option<(String, i64)>> {
                let row = sqlx::query(
                    "SELECT reason, at FROM suppressions WHERE channel = $1 AND address = $2",
                )
                .bind(channel)
                .bind(address)
                .fetch_optional(&self.pool)
                .await?;
                Ok(row.map(|r| (r.get("reason"), r.get("at"))))
            }

            async fn put_setting(&self, name: &str, value: &str) -> Result<()> {
                sqlx::query(
                    "INSERT INTO settings (name, value) VALUES ($1, $2)
                     ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                )
                .bind(name)
                .bind(value)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn ping(&self) -> Result<()> {
                sqlx::query("SELECT 1").execute(&self.pool).await?;
                Ok(())
            }
        }
    };
}
pub(super) use impl_store;

/// `impl_tx!(Type, Database, { own methods })`. The type writes what it buffers with its own
/// `flush_runs` (the runs) and `flush` (everything), and has `runs`, `arrived` and
/// `counters` fields.
macro_rules! impl_tx {
    ($tx:ty, $db:ty, { $($own:tt)* }) => {
        #[async_trait]
        impl Tx for $tx {
            $($own)*

            async fn save_run(&mut self, run: &RunRow) -> Result<()> {
                self.runs.insert(run.id, SavedRun::new(run));
                Ok(())
            }

            async fn scenario_version(&mut self, hash: &str) -> Result<Option<(String, String)>> {
                Ok(sqlx::query_as("SELECT scenario, source FROM scenario_versions WHERE hash = $1")
                    .bind(hash)
                    .fetch_optional(self.db().await?)
                    .await?)
            }

            async fn ingest(&mut self, batch: &[NewEvent]) -> Result<Vec<IngestOutcome>> {
                let keyed: Vec<&NewEvent> =
                    batch.iter().filter(|e| e.dedupe_key.is_some()).collect();
                let mut keyed_out = Vec::with_capacity(keyed.len());
                if !keyed.is_empty() {
                    let (ids, inserted) = self.insert_keyed(&keyed).await?;
                    for (ev, id) in keyed.iter().zip(ids) {
                        keyed_out.push(if inserted.contains(&id) {
                            ev.stored_as(id)
                        } else {
                            let first: i64 =
                                sqlx::query_scalar("SELECT id FROM events WHERE dedupe_key = $1")
                                    .bind(&ev.dedupe_key)
                                    .fetch_one(self.db().await?)
                                    .await?;
                            IngestOutcome::Duplicate(first)
                        });
                    }
                }
                let mut keyed_out = keyed_out.into_iter();
                let mut ids = self.event_ids(batch.len() - keyed.len()).await?.into_iter();
                let mut out = Vec::with_capacity(batch.len());
                for ev in batch {
                    if ev.dedupe_key.is_some() {
                        out.push(keyed_out.next().expect("one outcome per keyed event"));
                        continue;
                    }
                    let id = ids.next().expect("one id per event without a key");
                    self.arrived.insert(id, ArrivedEvent::new(id, ev));
                    out.push(ev.stored_as(id));
                }
                Ok(out)
            }

            async fn event_pending(&mut self, id: i64) -> Result<bool> {
                if let Some(e) = self.arrived.get(&id) {
                    return Ok(e.status == "pending");
                }
                let status: Option<String> =
                    sqlx::query_scalar("SELECT status FROM events WHERE id = $1")
                        .bind(id)
                        .fetch_optional(self.db().await?)
                        .await?;
                Ok(status.as_deref() == Some("pending"))
            }

            async fn event_origin(&mut self, id: i64) -> Result<Option<(String, Json)>> {
                if let Some(e) = self.arrived.get(&id) {
                    return Ok(Some((e.kind.clone(), parse_json(&e.meta)?)));
                }
                let row: Option<(String, String)> =
                    sqlx::query_as("SELECT kind, meta FROM events WHERE id = $1")
                        .bind(id)
                        .fetch_optional(self.db().await?)
                        .await?;
                row.map(|(kind, meta)| Ok((kind, parse_json(&meta)?)))
                    .transpose()
            }

            async fn finish_event(
                &mut self,
                id: i64,
                status: &str,
                outcome: &Json,
                now: i64,
            ) -> Result<()> {
                if let Some(e) = self.arrived.get_mut(&id) {
                    e.status = status.to_string();
                    e.outcome = Some(outcome.to_string());
                    e.processed_at = Some(now);
                    return Ok(());
                }
                self.finished_events.push(FinishedEvent {
                    id,
                    status: status.to_string(),
                    outcome: outcome.to_string(),
                    now,
                });
                Ok(())
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
                .execute(self.db().await?)
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
                self.finished_outbox.push(FinishedOutbox {
                    id,
                    status: status.to_string(),
                    attempts,
                    response: response.map(|r| r.to_string()),
                    error: error.map(str::to_string),
                    now,
                    message_ref: response
                        .filter(|_| status == "delivered")
                        .and_then(|r| r["message"].as_str())
                        .map(str::to_string),
                });
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
                .fetch_one(self.db().await?)
                .await?)
            }

            async fn delete_timer(&mut self, id: i64) -> Result<bool> {
                let r = sqlx::query("DELETE FROM timers WHERE id = $1")
                    .bind(id)
                    .execute(self.db().await?)
                    .await?;
                Ok(r.rows_affected() == 1)
            }

            async fn parked_runs(&mut self, scenario: &str, subject: Option<&str>) -> Result<Vec<i64>> {
                self.flush_runs().await?;
                Ok(sqlx::query_scalar(
                    "SELECT id FROM runs WHERE scenario = $1 AND ($2 IS NULL OR subject = $2)
                     AND status IN ('waiting', 'sleeping') ORDER BY id",
                )
                .bind(scenario)
                .bind(subject)
                .fetch_all(self.db().await?)
                .await?)
            }

            async fn clear_parks(&mut self, run_id: i64) -> Result<()> {
                sqlx::query("DELETE FROM timers WHERE run_id = $1")
                    .bind(run_id)
                    .execute(self.db().await?)
                    .await?;
                sqlx::query("DELETE FROM waits WHERE run_id = $1")
                    .bind(run_id)
                    .execute(self.db().await?)
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
                .execute(self.db().await?)
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
                .fetch_all(self.db().await?)
                .await?)
            }

            async fn insert_offer(
                &mut self,
                run_id: i64,
                step: i64,
                channel: &str,
                chat_id: &str,
                text: &str,
                now: i64,
            ) -> Result<i64> {
                Ok(sqlx::query_scalar(
                    "INSERT INTO offers (run_id, step, channel, chat_id, text, status, created_at)
                     VALUES ($1, $2, $3, $4, $5, 'open', $6) RETURNING id",
                )
                .bind(run_id)
                .bind(step)
                .bind(channel)
                .bind(chat_id)
                .bind(text)
                .bind(now)
                .fetch_one(self.db().await?)
                .await?)
            }

            async fn claim_offer(&mut self, id: i64, winner: &Json) -> Result<bool> {
                let r = sqlx::query(
                    "UPDATE offers SET status = 'taken', winner = $2 WHERE id = $1 AND status = 'open'",
                )
                .bind(id)
                .bind(winner.to_string())
                .execute(self.db().await?)
                .await?;
                Ok(r.rows_affected() == 1)
            }

            async fn expire_offer(&mut self, id: i64) -> Result<bool> {
                let r =
                    sqlx::query("UPDATE offers SET status = 'expired' WHERE id = $1 AND status = 'open'")
                        .bind(id)
                        .execute(self.db().await?)
                        .await?;
                Ok(r.rows_affected() == 1)
            }

            async fn add_offer_message(&mut self, offer_id: i64, m: &OfferMessage) -> Result<()> {
                sqlx::query(
                    "INSERT INTO offer_messages (offer_id, channel, chat_id, message_id, outbox_id, text, lang)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(offer_id)
                .bind(&m.channel)
                .bind(&m.chat_id)
                .bind(&m.message_id)
                .bind(m.outbox_id)
                .bind(&m.text)
                .bind(&m.lang)
                .execute(self.db().await?)
                .await?;
                Ok(())
            }

            async fn offer_messages(&mut self, offer_id: i64) -> Result<Vec<OfferMessage>> {
                Ok(sqlx::query("SELECT * FROM offer_messages WHERE offer_id = $1 ORDER BY id")
                    .bind(offer_id)
                    .fetch_all(self.db().await?)
                    .await?
                    .iter()
                    .map(offer_message_row)
                    .collect())
            }

            async fn set_offer_message(
                &mut self,
                offer_id: i64,
                outbox_id: i64,
                message_id: &str,
            ) -> Result<()> {
                sqlx::query(
                    "UPDATE offer_messages SET message_id = $3
                     WHERE offer_id = $1 AND (outbox_id = $2 OR outbox_id IS NULL)",
                )
                .bind(offer_id)
                .bind(outbox_id)
                .bind(message_id)
                .execute(self.db().await?)
                .await?;
                Ok(())
            }

            async fn open_offer_of(&mut self, run_id: i64) -> Result<Option<OfferRow>> {
                sqlx::query(
                    "SELECT * FROM offers WHERE run_id = $1 AND status = 'open' ORDER BY id DESC LIMIT 1",
                )
                .bind(run_id)
                .fetch_optional(self.db().await?)
                .await?
                .as_ref()
                .map(offer_row)
                .transpose()
            }

            async fn find_waits_any(&mut self, hook: &str, match_key: &str) -> Result<Vec<i64>> {
                Ok(sqlx::query_scalar(
                    "SELECT run_id FROM waits WHERE hook = $1 AND match_key = $2 ORDER BY id LIMIT 16",
                )
                .bind(hook)
                .bind(match_key)
                .fetch_all(self.db().await?)
                .await?)
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
                .execute(self.db().await?)
                .await?;
                Ok(())
            }

            async fn put_subject_vars(&mut self, subject: &str, vars: &Map<String, Json>) -> Result<()> {
                sqlx::query(
                    "INSERT INTO subject_vars (subject, vars) VALUES ($1, $2)
                     ON CONFLICT (subject) DO UPDATE SET vars = excluded.vars",
                )
                .bind(subject)
                .bind(Json::Object(vars.clone()).to_string())
                .execute(self.db().await?)
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
                .execute(self.db().await?)
                .await?;
                Ok(())
            }

            async fn delete_global(&mut self, name: &str) -> Result<bool> {
                let r = sqlx::query("DELETE FROM globals WHERE name = $1")
                    .bind(name)
                    .execute(self.db().await?)
                    .await?;
                Ok(r.rows_affected() > 0)
            }

            async fn bump_counter(&mut self, scenario: &str, limited: bool, now: i64) -> Result<()> {
                let e = self.counters.entry(scenario.to_string()).or_default();
                if limited {
                    e.0 += 1;
                } else {
                    e.1 = Some(now);
                }
                Ok(())
            }

            async fn set_enabled(&mut self, scenario: &str, enabled: bool, now: i64) -> Result<()> {
                sqlx::query(
                    "INSERT INTO scenario_state (scenario, enabled, updated_at) VALUES ($1, $2, $3)
                     ON CONFLICT (scenario) DO UPDATE SET enabled = excluded.enabled,
                        updated_at = excluded.updated_at",
                )
                .bind(scenario)
                .bind(enabled as i64)
                .bind(now)
                .execute(self.db().await?)
                .await?;
                Ok(())
            }

            async fn outbox_status(&mut self, s: &DeliveryStatus<'_>) -> Result<Option<OutboxRow>> {
                self.flush().await?;
                // `OUTBOX_STATUS` is the backend's own statement.
                sqlx::query(OUTBOX_STATUS)
                    .bind(s.channel)
                    .bind(s.message_ref)
                    .bind(s.status)
                    .bind(s.entry.to_string())
                    .bind(s.error)
                    .bind(s.entry["at"].as_i64().unwrap_or_default())
                    .fetch_optional(self.db().await?)
                    .await?
                    .as_ref()
                    .map(outbox_row)
                    .transpose()
            }

            async fn keep_early_status(
                &mut self,
                s: &DeliveryStatus<'_>,
                data: &Json,
                event_id: i64,
                now: i64,
            ) -> Result<()> {
                self.flush().await?;
                sqlx::query(
                    "INSERT INTO early_statuses (message_ref, status, channel, data, event_id, at)
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                )
                .bind(s.message_ref)
                .bind(s.status)
                .bind(s.channel)
                .bind(data.to_string())
                .bind(event_id)
                .bind(now)
                .execute(self.db().await?)
                .await?;
                Ok(())
            }

            async fn take_early_statuses(
                &mut self,
                message_ref: &str,
            ) -> Result<Vec<(String, Json, i64)>> {
                self.flush().await?;
                let rows: Vec<(String, String, i64)> = sqlx::query_as(
                    "DELETE FROM early_statuses WHERE message_ref = $1
                     RETURNING channel, data, event_id",
                )
                .bind(message_ref)
                .fetch_all(self.db().await?)
                .await?;
                rows.into_iter()
                    .map(|(channel, data, id)| {
                        let data = serde_json::from_str(&data)
                            .map_err(|e| StoreError::Corrupt(format!("early status: {e}")))?;
                        Ok((channel, data, id))
                    })
                    .collect()
            }

            async fn last_outbox_of(&mut self, run_id: i64, step: i64) -> Result<Option<OutboxRow>> {
                self.flush().await?;
                sqlx::query("SELECT * FROM outbox WHERE run_id = $1 AND step = $2 ORDER BY id DESC LIMIT 1")
                    .bind(run_id)
                    .bind(step)
                    .fetch_optional(self.db().await?)
                    .await?
                    .as_ref()
                    .map(outbox_row)
                    .transpose()
            }

            async fn commit(self: Box<Self>) -> Result<()> {
                // Writes what is buffered, then commits.
                self.finish().await
            }
        }
    };
}
pub(super) use impl_tx;
