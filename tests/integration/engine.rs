//! Engine semantics over HTTP: waits, sleeps with "overwrite pending", retries, bounds,
//! limits, calls, schedules and fairness.

use std::time::Duration;

use serde_json::json;
use switchboard::store::{IngestOutcome, NewEvent, RunStatus, SqliteStore, Store};

use crate::support::*;

async fn start(t: &TestApp, hook: &str, body: serde_json::Value) -> i64 {
    let (s, b) = t.post(hook, body).await;
    assert_eq!(s, 202, "{b}");
    let runs = t.runs_of(b["event_id"].as_i64().unwrap()).await;
    assert_eq!(runs.len(), 1, "one run expected");
    runs[0].id
}

#[tokio::test]
async fn a_wait_is_answered_by_a_matching_webhook_or_times_out() {
    let cfg = ConfigDir::examples();
    let t = TestApp::spawn(&cfg).await;

    let answered = start(
        &t,
        "appointment-booked",
        json!({"id": 1, "phone": "+1", "time": "Mon", "lang": "ru"}),
    )
    .await;
    let silent = start(
        &t,
        "appointment-booked",
        json!({"id": 2, "phone": "+2", "time": "Tue", "lang": "en"}),
    )
    .await;
    t.status_of(answered, RunStatus::Waiting).await;
    t.status_of(silent, RunStatus::Waiting).await;
    assert_eq!(
        t.messages(answered).await[0]["text"],
        "Ваша запись на Mon. Ответьте 1 для подтверждения, 2 для отмены."
    );

    // A reply for another appointment does not wake run 1.
    let (_, other) = t
        .post("appointment-reply", json!({"id": 99, "answer": "1"}))
        .await;
    assert!(t
        .runs_of(other["event_id"].as_i64().unwrap())
        .await
        .is_empty());
    let (_, reply) = t
        .post("appointment-reply", json!({"id": 1, "answer": " 1 "}))
        .await;
    t.runs_of(reply["event_id"].as_i64().unwrap()).await;
    let run = t.finished(answered).await;
    assert_eq!(run.status, RunStatus::Done);
    assert_eq!(
        t.messages(answered).await[1]["text"],
        "Спасибо, ваша запись подтверждена."
    );

    // Nobody answers appointment 2: a day later the timeout branch tells the operators.
    t.advance(Duration::from_secs(25 * 3600));
    let run = t.finished(silent).await;
    assert_eq!(run.status, RunStatus::Done);
    assert_eq!(run.vars["reply"]["timed_out"], true);
    assert_eq!(
        t.messages(silent).await[1]["text"],
        "The customer +2 did not answer; please call them."
    );
}

#[tokio::test]
async fn a_new_sleep_with_the_same_key_replaces_the_pending_one() {
    let cfg = ConfigDir::examples();
    let t = TestApp::spawn(&cfg).await;
    let cart =
        |n: usize| json!({"cart_id": 5, "email": "a@b.c", "lang": "en", "items": vec![1; n]});

    let first = start(&t, "cart-updated", cart(1)).await;
    let second = start(&t, "cart-updated", cart(2)).await;
    let third = start(&t, "cart-updated", cart(3)).await;
    let other_cart = start(
        &t,
        "cart-updated",
        json!({"cart_id": 6, "email": "x@y.z", "items": [1]}),
    )
    .await;
    t.status_of(third, RunStatus::Sleeping).await;
    assert_eq!(
        t.status_of(first, RunStatus::Cancelled)
            .await
            .journal
            .last()
            .unwrap()["why"],
        format!("replaced by run {second}")
    );
    t.status_of(second, RunStatus::Cancelled).await;
    t.status_of(other_cart, RunStatus::Sleeping).await;

    t.advance(Duration::from_secs(31 * 60));
    t.status_of(third, RunStatus::Done).await;
    t.status_of(other_cart, RunStatus::Done).await;
    assert_eq!(
        t.messages(third).await[0]["text"],
        "You left 3 item(s) in your cart."
    );
    assert!(t.messages(first).await.is_empty());
    assert!(t.messages(second).await.is_empty());
}

#[tokio::test]
async fn a_cancel_step_stops_pending_sleeps_of_another_scenario() {
    let cfg = ConfigDir::examples();
    // The example gateway without the payment hook's signature check.
    let gw = std::fs::read_to_string(cfg.dir().join("gateway.toml")).unwrap();
    let gw: String = gw
        .lines()
        .filter(|l| !l.starts_with("hmac = "))
        .map(|l| format!("{l}\n"))
        .collect();
    cfg.write("gateway.toml", &gw);
    let t = TestApp::spawn(&cfg).await;
    let sleeping = start(
        &t,
        "cart-updated",
        json!({"cart_id": 8, "email": "a@b.c", "items": [1]}),
    )
    .await;
    t.status_of(sleeping, RunStatus::Sleeping).await;
    let paid = start(&t, "payment", json!({"cart_id": 8, "amount": 30})).await;
    let paid = t.finished(paid).await;
    assert_eq!(paid.status, RunStatus::Done, "{:?}", paid.journal);
    t.status_of(sleeping, RunStatus::Cancelled).await;
    t.advance(Duration::from_secs(3600));
    // "only once" per cart: a second payment webhook starts nothing.
    let (_, again) = t.post("payment", json!({"cart_id": 8, "amount": 30})).await;
    let id = again["event_id"].as_i64().unwrap();
    assert!(t.runs_of(id).await.is_empty());
    let ev = t.app.store.event(id).await.unwrap().unwrap();
    assert_eq!(ev.outcome.unwrap()[0]["why"], "only once per subject");
    assert_eq!(t.app.store.globals().await.unwrap()["revenue"], 30);
}

const HTTP_FLOW: &str = r#"
id = "push"
on = { webhook = "push" }
[[step]]
http = { post = "{{ event.url }}", json = { n = "{{ event.n }}" }, headers = { Authorization = "Bearer secret-token" } }
branch = { "2xx" = "ok", "404" = "missing", error = "gave-up" }
[[step]]
label = "missing"
set = { "run.outcome" = '"missing"' }
stop = true
[[step]]
label = "gave-up"
set = { "run.outcome" = '"gave up"' }
stop = true
[[step]]
label = "ok"
set = { "run.outcome" = '"ok"', "run.got" = "run.http.json.ok" }
"#;

#[tokio::test]
async fn outgoing_requests_are_retried_with_backoff_then_branch() {
    let cfg = ConfigDir::with(&[("push.toml", HTTP_FLOW)]);
    let t = TestApp::spawn(&cfg).await;
    let sink = Sink::start().await;

    sink.script(&[503, 500]);
    let ok = start(&t, "push", json!({"url": sink.url("/a"), "n": 1})).await;
    let run = t.finished(ok).await;
    assert_eq!(run.vars["outcome"], "ok", "{:?}", run.journal);
    assert_eq!(run.vars["got"], true);
    let rows = t.app.store.outbox_for_run(ok).await.unwrap();
    assert_eq!(
        (rows[0].status.as_str(), rows[0].attempts),
        ("delivered", 3)
    );
    assert_eq!(sink.received().len(), 3);
    // The journal shows the request with its secret header redacted.
    let sent = run
        .journal
        .iter()
        .find(|e| e["action"] == "http" && e["request"].is_object())
        .unwrap();
    assert_eq!(sent["request"]["headers"]["Authorization"], "***");

    sink.script(&[404]);
    let missing = start(&t, "push", json!({"url": sink.url("/b"), "n": 2})).await;
    assert_eq!(t.finished(missing).await.vars["outcome"], "missing");

    sink.script(&[503, 503, 503, 503]);
    let gave_up = start(&t, "push", json!({"url": sink.url("/c"), "n": 3})).await;
    let run = t.finished(gave_up).await;
    assert_eq!(run.vars["outcome"], "gave up");
    let rows = t.app.store.outbox_for_run(gave_up).await.unwrap();
    assert_eq!((rows[0].status.as_str(), rows[0].attempts), ("failed", 4));
    assert!(run.vars["http"]["error"]
        .as_str()
        .unwrap()
        .contains("after 4 attempts"));
}

#[tokio::test]
async fn a_request_that_fails_without_an_error_branch_fails_the_run() {
    let flow = "id = \"p\"\non = { webhook = \"p\" }\n[[step]]\nhttp = { get = \"http://127.0.0.1:9/nothing-listens\", attempts = 2 }\n";
    let cfg = ConfigDir::with(&[("p.toml", flow)]);
    let t = TestApp::spawn(&cfg).await;
    let run = t.finished(start(&t, "p", json!({})).await).await;
    assert_eq!(run.status, RunStatus::Failed);
    assert!(
        run.error.unwrap().starts_with("request failed"),
        "{:?}",
        run.journal
    );
}

#[tokio::test]
async fn bounds_end_runs_with_a_journaled_failure() {
    let cfg = ConfigDir::with(&[
        ("loop.toml", "id = \"loop\"\non = { webhook = \"loop\" }\n[[step]]\nlabel = \"top\"\nincr = \"run.n\"\n[[step]]\ngoto = \"top\"\n"),
        ("fuel.toml", "id = \"fuel\"\non = { webhook = \"fuel\" }\n[[step]]\nsend = { to = \"ops\", template = \"{% for i in range(1000) %}{% for j in range(1000) %}x{% endfor %}{% endfor %}\" }\n"),
        ("rec.toml", "id = \"rec\"\non = { call = true }\n[[step]]\ncall = { scenario = \"rec\" }\n"),
        ("kick.toml", "id = \"kick\"\non = { webhook = \"kick\" }\n[[step]]\ncall = { scenario = \"rec\", vars = { x = 1 } }\n"),
    ]);
    let t = TestApp::spawn(&cfg).await;

    let run = t.finished(start(&t, "loop", json!({})).await).await;
    assert_eq!(run.status, RunStatus::Failed);
    assert!(run.error.unwrap().contains("limit of 50 steps"));
    assert_eq!(run.vars["n"], 25);

    let run = t.finished(start(&t, "fuel", json!({})).await).await;
    assert_eq!(run.status, RunStatus::Failed);
    assert!(run.error.unwrap().contains("fuel"));

    let kick = t.finished(start(&t, "kick", json!({})).await).await;
    assert_eq!(kick.status, RunStatus::Done);
    // The chain of calls stops at the depth limit (8) with a failed run.
    let failed = eventually(|| async {
        let c = t.app.store.counts().await.unwrap();
        (c.runs_by_status.get("failed") == Some(&3)).then_some(c)
    })
    .await;
    assert_eq!(failed.runs_by_status["done"], 8, "{failed:?}");
}

#[tokio::test]
async fn a_call_passes_variables_to_another_scenario() {
    let cfg = ConfigDir::with(&[
        ("a.toml", "id = \"a\"\non = { webhook = \"a\" }\n[[step]]\ncall = { scenario = \"b\", vars = { who = \"event.name\", n = 2 } }\n"),
        ("b.toml", "id = \"b\"\non = { call = true }\nwhen = 'event.n == 2'\n[[step]]\nsend = { to = \"ops\", template = \"hi {{ event.who }}\" }\n"),
    ]);
    let t = TestApp::spawn(&cfg).await;
    start(&t, "a", json!({"name": "Ada"})).await;
    let runs = eventually(|| async {
        let ev = t.app.store.recent_events(10).await.unwrap();
        let call = ev
            .into_iter()
            .find(|e| e.kind == "call" && e.status == "done")?;
        Some(t.app.store.runs_for_event(call.id).await.unwrap())
    })
    .await;
    assert_eq!(t.messages(runs[0].id).await[0]["text"], "hi Ada");
}

#[tokio::test]
async fn subject_limits_hold() {
    let cfg = ConfigDir::with(&[(
        "l.toml",
        "id = \"l\"\non = { webhook = \"l\" }\nsubject = \"s:{{ event.k }}\"\nlimit = { per_subject = \"2/1h\" }\n[[step]]\nstop = true\n",
    ), (
        "single.toml",
        "id = \"single\"\non = { webhook = \"one\" }\nsubject = \"s:{{ event.k }}\"\nlimit = { single = true }\n[[step]]\nsleep = { for = \"1h\" }\n",
    )]);
    let t = TestApp::spawn(&cfg).await;
    let mut started = 0;
    for _ in 0..4 {
        let (_, b) = t.post("l", json!({"k": 1})).await;
        started += t.runs_of(b["event_id"].as_i64().unwrap()).await.len();
    }
    assert_eq!(started, 2);
    t.advance(Duration::from_secs(3601));
    let (_, b) = t.post("l", json!({"k": 1})).await;
    assert_eq!(t.runs_of(b["event_id"].as_i64().unwrap()).await.len(), 1);

    let first = start(&t, "one", json!({"k": 1})).await;
    t.status_of(first, RunStatus::Sleeping).await;
    let (_, b) = t.post("one", json!({"k": 1})).await;
    assert!(t.runs_of(b["event_id"].as_i64().unwrap()).await.is_empty());
    start(&t, "one", json!({"k": 2})).await;
}

#[tokio::test]
async fn a_schedule_fires_on_its_cron_times() {
    let cfg = ConfigDir::with(&[(
        "tick.toml",
        "id = \"tick\"\non = { schedule = \"*/5 * * * *\", tz = \"Europe/Warsaw\" }\n[[step]]\nincr = \"global.ticks\"\n",
    )]);
    let started = chrono::Utc::now().timestamp_millis();
    let t = TestApp::spawn(&cfg).await;
    t.advance(Duration::from_secs(5 * 60 + 1));
    // Every five minutes on the wall clock: count the boundaries the clock went past.
    let now = t.app.clock.now_ms();
    let five = 300_000;
    let expected = now / five - started / five;
    let ticks = eventually(|| async {
        let g = t.app.store.globals().await.unwrap();
        g.get("ticks")
            .filter(|v| v.as_i64() == Some(expected))
            .cloned()
    })
    .await;
    assert!(ticks == 1 || ticks == 2);
    t.advance(Duration::from_secs(5 * 60));
    eventually(|| async {
        let g = t.app.store.globals().await.unwrap();
        g.get("ticks")
            .filter(|v| v.as_i64() == Some(expected + 1))
            .cloned()
    })
    .await;
}

#[tokio::test]
async fn a_burst_for_one_scenario_does_not_hold_back_another() {
    let _heavy = HEAVY.lock().await;
    let cfg = ConfigDir::with(&[
        ("busy.toml", "id = \"busy\"\non = { webhook = \"busy\" }\n[[step]]\nset = { \"run.x\" = \"event.n * 2\" }\n"),
        ("quiet.toml", "id = \"quiet\"\non = { webhook = \"quiet\" }\n[[step]]\nstop = true\n"),
    ]);
    // 10,000 stored events for `busy`, then one for `quiet`, all waiting when the gateway starts.
    {
        let store = SqliteStore::open(&cfg.db()).await.unwrap();
        let ev = |hook: &str, n: i64| NewEvent {
            kind: "webhook".into(),
            source: hook.into(),
            dedupe_key: None,
            data: json!({"n": n}),
            meta: json!({}),
            rejected: None,
            received_at: 0,
        };
        let burst: Vec<NewEvent> = (0..10_000).map(|n| ev("busy", n)).collect();
        store.ingest(&burst).await.unwrap();
        let out = store.ingest(&[ev("quiet", 0)]).await.unwrap();
        assert!(matches!(out[0], IngestOutcome::Accepted(10_001)));
        // Closed before the gateway opens the file: closing checkpoints the write-ahead log.
        store.pool().close().await;
    }
    let t = TestApp::spawn_on(&cfg, &cfg.db()).await;
    // What is asserted is the order, not the time: on a loaded machine start-up with 10,001
    // queued events may take a while.
    let store = t.app.store.clone();
    let quiet = eventually_within(Duration::from_secs(120), || {
        let store = store.clone();
        async move {
            let runs = store.runs_for_event(10_001).await.unwrap();
            runs.into_iter().find(|r| r.status == RunStatus::Done)
        }
    })
    .await;
    // Run ids are handed out in processing order: the quiet event went in the first batches,
    // not behind the 10,000 (first come, first served would make it run 10,001).
    assert!(quiet.id <= 300, "quiet run was number {}", quiet.id);
    eventually_within(Duration::from_secs(180), || async {
        let c = t.app.store.counts().await.unwrap();
        (c.runs_by_status.get("done") == Some(&10_001)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn subject_variables_are_shared_by_runs_of_one_subject() {
    let cfg = ConfigDir::with(&[(
        "tries.toml",
        r#"id = "tries"
on = { webhook = "try" }
subject = "user:{{ event.user }}"
[[step]]
incr = "subject.tries"
[[step]]
if = "subject.tries > 2"
goto = "blocked"
[[step]]
set = { "run.verdict" = '"allowed"', "run.link" = 'meta.public_url ~ "/u/" ~ event.user' }
stop = true
[[step]]
label = "blocked"
set = { "run.verdict" = '"blocked"' }
"#,
    )]);
    let t = TestApp::spawn(&cfg).await;
    let mut verdicts = Vec::new();
    for user in ["ann", "ann", "bob", "ann"] {
        let run = t
            .finished(start(&t, "try", json!({"user": user})).await)
            .await;
        verdicts.push(run.vars["verdict"].as_str().unwrap().to_string());
        if verdicts.len() == 1 {
            assert_eq!(run.vars["link"], format!("{}/u/ann", t.app.url()));
        }
    }
    assert_eq!(verdicts, ["allowed", "allowed", "allowed", "blocked"]);
}
