//! What keeps work flowing when something goes wrong: a value the database refuses, a
//! database outage, an engine that dies, and more traffic than the engine keeps up with.

use std::time::Duration;

use serde_json::json;
use sqlx::Connection;
use switchboard::store::RunStatus;

use crate::support::*;

/// Runs a statement on the test's database itself (a trigger, say).
async fn execute(database: &str, sql: &str) {
    if database.starts_with("postgres") {
        let mut c = sqlx::PgConnection::connect(database).await.unwrap();
        sqlx::raw_sql(sql).execute(&mut c).await.unwrap();
    } else {
        let mut c = sqlx::SqliteConnection::connect(database).await.unwrap();
        sqlx::raw_sql(sql).execute(&mut c).await.unwrap();
    }
}

/// The database refuses rows whose `column` of `table` mentions `poison`.
async fn poison(database: &str, table: &str, column: &str) {
    let sql = if database.starts_with("postgres") {
        format!(
            "CREATE FUNCTION refuse_poison_{table}() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF NEW.{column}::text LIKE '%poison%' THEN RAISE EXCEPTION 'poisoned row'; END IF;
               RETURN NEW;
             END $$;
             CREATE TRIGGER refuse_poison BEFORE INSERT ON {table}
               FOR EACH ROW EXECUTE FUNCTION refuse_poison_{table}();"
        )
    } else {
        format!(
            "CREATE TRIGGER refuse_poison_{table} BEFORE INSERT ON {table}
             WHEN NEW.{column} LIKE '%poison%' BEGIN SELECT RAISE(ABORT, 'poisoned row'); END;"
        )
    };
    execute(database, &sql).await;
}

const NOTE: &str = r#"
id = "note"
on = { webhook = "note" }
subject = "{{ event.who }}"

[[step]]
set = { "run.seen" = "event.who" }
"#;

/// item 10: one bad value does not poison a batch
#[tokio::test]
async fn one_bad_value_does_not_poison_a_batch() {
    let cfg = ConfigDir::with(&[("note.toml", NOTE)]);
    let t = TestApp::spawn(&cfg).await;

    // NUL characters cannot be stored in PostgreSQL: refused with a reason on either store.
    let (status, body) = t.post("note", json!({"who": "a\u{0}b"})).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("NUL"), "{body}");

    // A subject of a few kilobytes (too long for an index) still starts its run, once.
    let long = "x".repeat(3000);
    let (status, body) = t.post("note", json!({"who": long})).await;
    assert_eq!(status, 202, "{body}");
    let run = t.runs_of(body["event_id"].as_i64().unwrap()).await[0].clone();
    let run = t.finished(run.id).await;
    assert_eq!(run.status, RunStatus::Done);
    assert!(run.subject.unwrap().starts_with("sha256:"));

    // A row the database refuses while storing fails alone; the rest of its group commit
    // is stored.
    poison(&t.database, "events", "data").await;
    let posts = (0..40).map(|i| {
        let who = if i == 17 {
            "poison".to_string()
        } else {
            format!("w{i}")
        };
        let t = &t;
        async move { (who.clone(), t.post("note", json!({ "who": who })).await) }
    });
    let answers = futures::future::join_all(posts).await;
    for (who, (status, body)) in &answers {
        if who == "poison" {
            assert_eq!(*status, 503, "{body}");
            assert!(
                body["error"].as_str().unwrap().contains("poisoned row"),
                "{body}"
            );
        } else {
            assert_eq!(*status, 202, "{who}: {body}");
        }
    }
}

/// item 10: a failing engine item is set aside as a journaled failure, not retried forever
#[tokio::test]
async fn a_failing_engine_item_is_set_aside_and_the_rest_goes_on() {
    let cfg = ConfigDir::with(&[("note.toml", NOTE)]);
    let t = TestApp::spawn(&cfg).await;
    poison(&t.database, "runs", "subject").await;

    let mut ids = Vec::new();
    for who in ["w1", "poison", "w2", "w3"] {
        let (status, body) = t.post("note", json!({ "who": who })).await;
        assert_eq!(status, 202, "{body}");
        ids.push((who, body["event_id"].as_i64().unwrap()));
    }
    for (who, id) in ids {
        let ev = eventually_within(Duration::from_secs(60), || async {
            let ev = t.app.store.event(id).await.unwrap()?;
            (ev.status != "pending").then_some(ev)
        })
        .await;
        if who == "poison" {
            assert_eq!(ev.status, "failed");
            let outcome = ev.outcome.unwrap().to_string();
            assert!(outcome.contains("poisoned row"), "{outcome}");
            assert!(t.runs_of(id).await.is_empty());
        } else {
            assert_eq!(ev.status, "done");
            let runs = t.runs_of(id).await;
            assert_eq!(t.finished(runs[0].id).await.vars["seen"], who);
        }
    }
}

const RELAY: &str = r#"
id = "relay"
on = { webhook = "relay" }

[[step]]
http = { post = "{{ event.to }}", json = { n = "{{ event.n }}" } }

[[step]]
set = { "run.answered" = "run.http.status" }
"#;

/// item 11: work stranded by a short database outage resumes without a restart
#[tokio::test]
async fn work_survives_a_database_outage_without_a_restart() {
    // A real outage of a PostgreSQL database: its connections are cut and new ones refused.
    let _heavy = HEAVY.lock().await;
    let cfg = ConfigDir::with(&[("relay.toml", RELAY)]);
    let gw = std::fs::read_to_string(cfg.dir().join("gateway.toml")).unwrap();
    cfg.write(
        "gateway.toml",
        &format!("{gw}\n[database]\nacquire_timeout = \"300ms\"\n"),
    );
    let database = crate::pg::fresh_db().await;
    let t = TestApp::spawn_on(&cfg, &database).await;
    let sink = Sink::start().await;
    sink.hold();
    let mut events = Vec::new();
    for n in 0..20 {
        let (status, body) = t.post("relay", json!({"to": sink.url("/r"), "n": n})).await;
        assert_eq!(status, 202, "{body}");
        events.push(body["event_id"].as_i64().unwrap());
    }
    // Every request is out and unanswered; the runs wait for the answers.
    sink.wait_for(20).await;

    let failures = || async {
        let text = t
            .http
            .get(format!("{}/metrics", t.app.admin_url()))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find(|l| l.starts_with("switchboard_engine_failed_batches_total"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let before = failures().await;
    let name = database.rsplit('/').next().unwrap().to_string();
    let admin = database.replace(&format!("/{name}"), "/postgres");
    let mut c = sqlx::PgConnection::connect(&admin).await.unwrap();
    sqlx::query(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"))
        .execute(&mut c)
        .await
        .unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
        .bind(&name)
        .execute(&mut c)
        .await
        .unwrap();
    // The answers arrive while the database is away; the engine cannot record them.
    sink.release();
    // Longer than an item used to be kept before it was dropped until a restart.
    eventually_within(Duration::from_secs(60), || async {
        (failures().await >= before + 12.0).then_some(())
    })
    .await;
    sqlx::query(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"))
        .execute(&mut c)
        .await
        .unwrap();

    for id in events {
        let runs = eventually_within(Duration::from_secs(60), || async {
            let runs = t.app.store.runs_for_event(id).await.ok()?;
            (!runs.is_empty()).then_some(runs)
        })
        .await;
        let run = eventually_within(Duration::from_secs(60), || async {
            let r = t.app.store.run(runs[0].id).await.ok()??;
            (!r.status.is_active()).then_some(r)
        })
        .await;
        assert_eq!(run.status, RunStatus::Done, "{:?}", run.error);
        assert_eq!(run.vars["answered"], 200);
    }
    assert_eq!(sink.received().len(), 20, "nothing was sent twice");
}

/// item 11: an engine that dies stops the gateway with an error
#[tokio::test]
async fn a_dead_engine_stops_the_gateway_with_an_error() {
    let cfg = ConfigDir::with(&[("note.toml", NOTE)]);
    let t = TestApp::spawn(&cfg).await;
    let (status, _) = t.post("note", json!({"who": "before"})).await;
    assert_eq!(status, 202);
    t.app.crash_engine();
    let stopped = tokio::time::timeout(Duration::from_secs(60), t.app.run_until_stopped())
        .await
        .expect("the gateway stops by itself");
    let err = stopped
        .expect_err("a dead engine is an error exit")
        .to_string();
    assert!(err.contains("engine stopped"), "{err}");
}

/// item 14: backpressure — intake waits while the engine lags, then answers 503 with Retry-After
#[tokio::test]
async fn intake_waits_while_the_engine_lags_then_answers_busy() {
    // The engine is held up for real: its batches write a global, and this test holds the
    // database lock that guards the globals (PostgreSQL, where intake does not need it).
    let cfg = ConfigDir::with(&[(
        "count.toml",
        "id = \"count\"\non = { webhook = \"count\" }\n[[step]]\nset = { \"global.n\" = \"event.n\" }\n",
    )]);
    let mut gw = std::fs::read_to_string(cfg.dir().join("gateway.toml")).unwrap();
    gw = gw.replacen(
        "[defaults]",
        "[server]\nmax_backlog = 5\nbacklog_wait = \"300ms\"\n\n[defaults]",
        1,
    );
    cfg.write("gateway.toml", &gw);
    let database = crate::pg::fresh_db().await;
    let t = TestApp::spawn_on(&cfg, &database).await;
    let mut lock = sqlx::PgConnection::connect(&database).await.unwrap();
    sqlx::query("SELECT pg_advisory_lock(hashtextextended('globals', 0))")
        .execute(&mut lock)
        .await
        .unwrap();
    let mut events = Vec::new();
    for n in 0..5 {
        let (status, body) = t.post("count", json!({ "n": n })).await;
        assert_eq!(status, 202, "{body}");
        events.push(body["event_id"].as_i64().unwrap());
    }
    // Five events the engine has not finished: the next one is not stored.
    let res = t
        .http
        .post(format!("{}/hooks/count", t.app.url()))
        .json(&json!({"n": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["retry-after"], "1");
    let body: serde_json::Value = res.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("busy"), "{body}");

    // Room again once the engine caught up.
    sqlx::query("SELECT pg_advisory_unlock(hashtextextended('globals', 0))")
        .execute(&mut lock)
        .await
        .unwrap();
    for id in events {
        let run = t.runs_of(id).await[0].clone();
        assert_eq!(t.finished(run.id).await.status, RunStatus::Done);
    }
    let (status, body) = t.post("count", json!({"n": 6})).await;
    assert_eq!(status, 202, "{body}");
}
