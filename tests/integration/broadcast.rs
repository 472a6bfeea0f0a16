//! Fan-out: a `call` with `for_each` starting one run per item, bounded by `max_fan_out`;
//! starting a scenario by hand through the admin API with one event, a list or CSV.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use switchboard::store::RunStatus;

use crate::support::*;

const BLAST: &str = r#"id = "blast"
on = { webhook = "blast" }
[[step]]
call = { scenario = "notify", for_each = "event.contacts", as = "contact", vars = { campaign = "event.campaign" } }
"#;

const NOTIFY: &str = r#"id = "notify"
on = { call = true }
when = 'event.contact.name != "skip"'
[[step]]
send = { to = "ops", template = "{{ event.campaign }} #{{ event.index }} for {{ event.contact.name }}{% if meta.test %} (test){% endif %}" }
"#;

fn config(max_fan_out: Option<u32>) -> ConfigDir {
    let cfg = ConfigDir::with(&[("blast.toml", BLAST), ("notify.toml", NOTIFY)]);
    if let Some(n) = max_fan_out {
        let gw = std::fs::read_to_string(cfg.dir().join("gateway.toml")).unwrap();
        cfg.write(
            "gateway.toml",
            &gw.replace("[defaults]\n", &format!("[defaults]\nmax_fan_out = {n}\n")),
        );
    }
    cfg
}

fn contacts(n: usize) -> Vec<Value> {
    (0..n).map(|i| json!({"name": format!("c{i}")})).collect()
}

/// The `notify` runs, once `n` of them have finished.
async fn finished_notify_runs(t: &TestApp, n: usize) -> Vec<switchboard::store::RunSummary> {
    eventually_within(Duration::from_secs(120), || async {
        let runs = t
            .app
            .store
            .list_runs(&switchboard::store::RunFilter {
                scenario: Some("notify".into()),
                limit: 5000,
                ..Default::default()
            })
            .await
            .unwrap();
        (runs.len() == n && runs.iter().all(|r| !r.status.is_active())).then_some(runs)
    })
    .await
}

#[tokio::test]
async fn a_fan_out_over_a_thousand_contacts_starts_a_journaled_run_for_each() {
    let _heavy = HEAVY.lock().await;
    let cfg = config(None);
    let t = TestApp::spawn(&cfg).await;
    let began = Instant::now();
    let (s, b) = t
        .post(
            "blast",
            json!({"campaign": "spring", "contacts": contacts(1000)}),
        )
        .await;
    assert_eq!(s, 202, "{b}");
    let parent = t.runs_of(b["event_id"].as_i64().unwrap()).await[0].id;
    let parent = t.status_of(parent, RunStatus::Done).await;
    let call = parent
        .journal
        .iter()
        .find(|e| e["action"] == "call")
        .unwrap();
    assert_eq!(call["started"], 1000, "{call}");
    assert_eq!(call["result"], "started 1000 runs of notify");

    let runs = finished_notify_runs(&t, 1000).await;
    let runs_done = began.elapsed();
    let mut outbox = Vec::with_capacity(runs.len());
    for r in &runs {
        outbox.push(settled_outbox(&t, r.id).await);
    }
    let delivered = began.elapsed();
    for (r, rows) in runs.iter().zip(&outbox) {
        assert_eq!(r.status, RunStatus::Done, "{r:?}");
        let run = t.app.store.run(r.id).await.unwrap().unwrap();
        assert!(
            run.journal.iter().any(|e| e["action"] == "send"),
            "{:?}",
            run.journal
        );
        // Each child knows its parent.
        let ev = t
            .app
            .store
            .event(run.event_id.unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(ev.meta["parent_run"], parent.id);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].status, "delivered");
        let i = run.event["index"].as_u64().unwrap();
        assert_eq!(
            rows[0].request["text"],
            format!("spring #{i} for c{i}"),
            "{}",
            rows[0].request
        );
    }
    println!(
        "fan-out of 1000: all runs done after {:.2} s, every message delivered after {:.2} s",
        runs_done.as_secs_f64(),
        delivered.as_secs_f64()
    );

    // The same thousand started by hand in one request: one transaction, answered with
    // every run once committed.
    let list: Vec<Value> = (0..1000)
        .map(|i| json!({"campaign": "hand", "index": i, "contact": {"name": format!("h{i}")}}))
        .collect();
    let began = Instant::now();
    let (s, b) = t
        .api(
            reqwest::Method::POST,
            "/api/scenarios/notify/start",
            Some(json!(list)),
        )
        .await;
    let answered = began.elapsed();
    assert_eq!(s, 200, "{b}");
    let runs = b["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1000);
    assert!(runs.iter().all(Value::is_i64));
    println!(
        "start by hand of 1000 events: answered after {:.2} s",
        answered.as_secs_f64()
    );
}

#[tokio::test]
async fn a_list_longer_than_max_fan_out_fails_the_step_and_starts_none() {
    let cfg = config(Some(5));
    let t = TestApp::spawn(&cfg).await;
    let (_, b) = t
        .post("blast", json!({"campaign": "x", "contacts": contacts(6)}))
        .await;
    let parent = t.runs_of(b["event_id"].as_i64().unwrap()).await[0].id;
    let run = t.finished(parent).await;
    assert_eq!(run.status, RunStatus::Failed);
    assert!(
        run.error
            .as_deref()
            .unwrap()
            .contains("for_each gave 6 items; max_fan_out is 5"),
        "{:?}",
        run.error
    );
    assert!(runs_of_scenario(&t, "notify").await.is_empty());

    // Five are fine; an item the guard refuses starts no run.
    let mut list = contacts(4);
    list.push(json!({"name": "skip"}));
    let (_, b) = t
        .post("blast", json!({"campaign": "x", "contacts": list}))
        .await;
    let parent = t.runs_of(b["event_id"].as_i64().unwrap()).await[0].id;
    assert_eq!(t.finished(parent).await.status, RunStatus::Done);
    finished_notify_runs(&t, 4).await;
}

async fn start(t: &TestApp, path: &str, body: reqwest::Body, ct: &str) -> (u16, Value) {
    let resp = t
        .http
        .post(format!("{}{path}", t.app.admin_url()))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", ct)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_start_api_takes_an_event_a_list_or_csv() {
    let cfg = config(Some(3));
    let t = TestApp::spawn(&cfg).await;
    let json_ct = "application/json";

    // One event: its run is named in the answer and journaled as started by hand.
    let one = json!({"campaign": "one", "index": 0, "contact": {"name": "Ada"}});
    let (s, b) = start(
        &t,
        "/api/scenarios/notify/start",
        one.to_string().into(),
        json_ct,
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let id = b["runs"][0].as_i64().unwrap();
    assert_eq!(b["items"][0]["started"], true);
    let run = t.status_of(id, RunStatus::Done).await;
    assert_eq!(run.journal[0]["result"], "started by hand");
    assert_eq!(t.messages(id).await[0]["text"], "one #0 for Ada");

    // A list, in order; the guard refuses one, and the answer says so.
    let list = json!([
        {"campaign": "l", "index": 0, "contact": {"name": "Bob"}},
        {"campaign": "l", "index": 1, "contact": {"name": "skip"}},
        {"campaign": "l", "index": 2, "contact": {"name": "Cy"}},
    ]);
    let (s, b) = start(
        &t,
        "/api/scenarios/notify/start",
        list.to_string().into(),
        json_ct,
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["items"][1]["started"], false);
    assert_eq!(b["items"][1]["why"], "guard false");
    assert!(b["runs"][1].is_null());
    let cy = b["runs"][2].as_i64().unwrap();
    t.status_of(cy, RunStatus::Done).await;
    assert_eq!(t.messages(cy).await[0]["text"], "l #2 for Cy");

    // CSV: one event per row, fields named by the header; a test start is marked.
    let csv = "campaign,index\ncsv,7\ncsv,8\n";
    let (s, b) = start(
        &t,
        "/api/scenarios/blast/start?test=true",
        csv.into(),
        "text/csv",
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["test"], true);
    let runs: Vec<i64> = b["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_i64().unwrap())
        .collect();
    assert_eq!(runs.len(), 2);
    let run = t.finished(runs[1]).await;
    assert_eq!(run.event, json!({"campaign": "csv", "index": "8"}));
    assert_eq!(run.journal[0]["result"], "started by hand (test)");

    // `meta.test` reaches the templates.
    let (s, b) = start(
        &t,
        "/api/scenarios/notify/start?test=true",
        one.to_string().into(),
        json_ct,
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let id = b["runs"][0].as_i64().unwrap();
    t.status_of(id, RunStatus::Done).await;
    assert_eq!(t.messages(id).await[0]["text"], "one #0 for Ada (test)");

    // Bad input: 4xx with a reason, nothing started.
    let before = runs_of_scenario(&t, "blast").await.len();
    let (s, b) = start(
        &t,
        "/api/scenarios/blast/start",
        "campaign,index\nok,1\nbad\n".into(),
        "text/csv",
    )
    .await;
    assert_eq!(s, 400);
    assert_eq!(b["error"], "CSV line 3: 1 fields, but the header row has 2");
    let (s, b) = start(
        &t,
        "/api/scenarios/blast/start",
        "[{},{},{},{}]".into(),
        json_ct,
    )
    .await;
    assert_eq!(s, 400);
    assert!(
        b["error"].as_str().unwrap().contains("max_fan_out is 3"),
        "{b}"
    );
    let (s, _) = start(&t, "/api/scenarios/blast/start", "[1]".into(), json_ct).await;
    assert_eq!(s, 400);
    let (s, _) = start(&t, "/api/scenarios/blast/start", "x".into(), "text/plain").await;
    assert_eq!(s, 415);
    let (s, b) = start(&t, "/api/scenarios/nope/start", "{}".into(), json_ct).await;
    assert_eq!(s, 404);
    assert_eq!(b["error"], "no scenario 'nope'");
    assert_eq!(runs_of_scenario(&t, "blast").await.len(), before);
}

#[tokio::test]
async fn the_broadcast_view_shows_each_recipients_message_statuses() {
    use crate::fake_whatsapp::FakeWhatsApp;
    let fake = FakeWhatsApp::start().await;
    let cfg = ConfigDir::with(&[
        (
            "tell.toml",
            "id = \"tell\"\non = { webhook = \"tell\" }\n[[step]]\ncall = { scenario = \"one\", for_each = \"event.phones\", as = \"phone\" }\n",
        ),
        (
            "one.toml",
            "id = \"one\"\non = { call = true }\nsubject = \"phone:{{ event.phone }}\"\n[[step]]\nsend = { to = \"wa:{{ event.phone }}\", template = \"Sale starts today\" }\n",
        ),
    ]);
    cfg.write(
        "gateway.toml",
        &format!(
            "[defaults]\nretry_delay = \"50ms\"\nretry_max_delay = \"200ms\"\n\n{}",
            fake.channel("window_template = { name = \"order_update\", language = \"en\" }\n")
        ),
    );
    let t = TestApp::spawn(&cfg).await;
    let phones = ["+48555000801", "+48555000802", "+48555000803"];
    let (_, b) = t.post("tell", json!({"phones": phones})).await;
    let parent = t.runs_of(b["event_id"].as_i64().unwrap()).await[0].id;
    t.status_of(parent, RunStatus::Done).await;

    // Meta reports: the first read, the second delivered, the third failed.
    let reports: [&[&str]; 3] = [&["delivered", "read"], &["delivered"], &["failed"]];
    for (phone, statuses) in phones.iter().zip(reports) {
        let to = phone.trim_start_matches('+');
        let wamid = fake.wait_accepted(to, 1).await[0].wamid.clone().unwrap();
        for s in statuses {
            let error = (*s == "failed").then_some(131026);
            let status = fake.status(&wamid, to, s, error);
            assert_eq!(fake.deliver(&t.app.url(), "wa", status).await, vec![200]);
        }
    }
    eventually(|| async {
        let mut seen = Vec::new();
        for r in runs_of_scenario(&t, "one").await {
            let rows = t.app.store.outbox_for_run(r).await.unwrap();
            seen.push(rows.first()?.delivery_status.clone()?);
        }
        seen.sort();
        (seen == ["delivered", "failed", "read"]).then_some(())
    })
    .await;

    // The journal pages' broadcast view: one row per recipient with its statuses.
    let (client, session) = pages_session(&t).await;
    let page = client
        .get(format!("{}/ui/broadcast?run={parent}", t.app.admin_url()))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert_eq!(html.matches("<tr class=\"member\"").count(), 3, "{html}");
    for (phone, seen) in [
        ("+48555000801", "delivered, read"),
        ("+48555000802", "delivered"),
        ("+48555000803", "delivered, failed"),
    ] {
        let row = html
            .split("<tr class=\"member\"")
            .find(|r| r.contains(phone))
            .unwrap_or_else(|| panic!("{phone} in {html}"));
        assert!(
            row.contains(&format!("<span class=\"msg-statuses\">{seen}</span>")),
            "{phone}: {row}"
        );
    }
    assert!(html.contains("data-status=\"failed\""), "{html}");
}

#[tokio::test]
async fn a_start_sent_again_with_its_idempotency_key_starts_nothing_new() {
    let cfg = config(Some(3));
    let t = TestApp::spawn(&cfg).await;
    let list = json!([
        {"campaign": "k", "index": 0, "contact": {"name": "Ada"}},
        {"campaign": "k", "index": 1, "contact": {"name": "Bob"}},
    ]);
    let send = |key: &'static str| {
        t.http
            .post(format!("{}/api/scenarios/notify/start", t.app.admin_url()))
            .bearer_auth(ADMIN_TOKEN)
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .body(list.to_string())
            .send()
    };
    let first: Value = send("batch-7").await.unwrap().json().await.unwrap();
    assert_eq!(first["items"][0]["started"], true, "{first}");
    assert_eq!(first["items"][1]["started"], true, "{first}");
    let again = send("batch-7").await.unwrap();
    assert_eq!(again.status(), 200);
    let again: Value = again.json().await.unwrap();
    for i in 0..2 {
        assert_eq!(again["items"][i]["started"], false, "{again}");
        assert_eq!(
            again["items"][i]["why"],
            "already started by an earlier request with the same key"
        );
        assert!(again["runs"][i].is_null());
    }
    // Another key is another start.
    let other: Value = send("batch-8").await.unwrap().json().await.unwrap();
    assert_eq!(other["items"][1]["started"], true, "{other}");
    assert_eq!(runs_of_scenario(&t, "notify").await.len(), 4);
}
