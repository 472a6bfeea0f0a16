//! Failure scenarios (`on = { failed = … }`): started once per failed run or message that
//! could not be sent, never by their own failures; and the fallback for events that started
//! no run (`on = { unmatched = … }`).

use serde_json::{json, Value};
use switchboard::store::{EventFilter, EventRow, RunRow, RunStatus};

use crate::fake_telegram::{FakeTelegram, TOKEN};
use crate::support::*;

/// Sends everything it is told about a failure to the log channel, and keeps it in `run.seen`.
const ALERT: &str = r#"id = "alert"
on = { failed = "*" }
[[step]]
set = { "run.seen" = "event" }
[[step]]
send = { to = "ops", template = "{{ event.kind }} in {{ event.scenario }}: {{ event.reason }}" }
"#;

/// Spins until the step limit stops it.
fn looping(id: &str, hook: &str) -> String {
    format!(
        "id = \"{id}\"\non = {{ webhook = \"{hook}\" }}\n[[step]]\nset = {{ \"run.n\" = \"1\" }}\n\
         [[step]]\nlabel = \"spin\"\ngoto = \"spin\"\n"
    )
}

const MARKER: &str = "id = \"marker\"\non = { webhook = \"marker\" }\n[[step]]\nstop = true\n";

/// The events stored so far, once a `marker` webhook posted now and everything stored
/// before it have been processed.
async fn events_after_marker(t: &TestApp) -> Vec<EventRow> {
    let (s, b) = t.post("marker", json!({})).await;
    assert_eq!(s, 202, "{b}");
    let marker = b["event_id"].as_i64().unwrap();
    t.runs_of(marker).await;
    eventually(|| async {
        let all = t
            .app
            .store
            .list_events(&EventFilter {
                limit: 500,
                ..Default::default()
            })
            .await
            .unwrap();
        all.iter().all(|e| e.status != "pending").then_some(all)
    })
    .await
}

/// Adds the fake Bot API as channel `tg` to the folder's gateway file.
fn with_telegram(cfg: &ConfigDir, fake: &FakeTelegram) {
    let gw = std::fs::read_to_string(cfg.dir().join("gateway.toml")).unwrap();
    cfg.write(
        "gateway.toml",
        &format!(
            "{gw}\n[channels.tg]\ntype = \"telegram\"\ntoken = \"{TOKEN}\"\napi_url = \"{}\"\n",
            fake.url
        ),
    );
}

fn failed_events(events: &[EventRow]) -> Vec<&EventRow> {
    events.iter().filter(|e| e.kind == "failed").collect()
}

async fn runs(t: &TestApp, scenario: &str) -> Vec<RunRow> {
    let mut out = Vec::new();
    for id in runs_of_scenario(t, scenario).await {
        out.push(t.finished(id).await);
    }
    out
}

#[tokio::test]
async fn a_message_refused_for_good_starts_the_failure_scenario_once_with_its_recipient() {
    let fake = FakeTelegram::start().await;
    let notify = r#"id = "notify"
on = { webhook = "notify" }
[[step]]
label = "tell"
send = { to = "tg:{{ event.chat }}", template = "Your file", attachments = ["{{ event.file }}"] }
[[step]]
set = { "run.after" = "1" }
"#;
    let cfg = ConfigDir::with(&[
        ("notify.toml", notify),
        ("alert.toml", ALERT),
        ("marker.toml", MARKER),
    ]);
    with_telegram(&cfg, &fake);
    let t = TestApp::spawn(&cfg).await;

    // Telegram refuses a document that is not an http(s) URL: a permanent error.
    let (s, b) = t
        .post("notify", json!({"chat": 500, "file": "ftp://files/a.pdf"}))
        .await;
    assert_eq!(s, 202, "{b}");
    let run = t.runs_of(b["event_id"].as_i64().unwrap()).await[0].id;
    // The message's failure does not stop the run; it is reported on its own.
    assert_eq!(t.finished(run).await.status, RunStatus::Done);
    let rows = settled_outbox(&t, run).await;
    let row = rows
        .iter()
        .find(|r| r.status == "failed")
        .expect("a failed row");

    let alerts = eventually(|| async {
        let ids = runs_of_scenario(&t, "alert").await;
        (!ids.is_empty()).then_some(ids)
    })
    .await;
    let alert = t.finished(alerts[0]).await;
    assert_eq!(alert.status, RunStatus::Done);
    let seen = &alert.vars["seen"];
    assert_eq!(seen["kind"], "send");
    assert_eq!(seen["run"], run);
    assert_eq!(seen["scenario"], "notify");
    assert_eq!(seen["channel"], "tg");
    assert_eq!(seen["to"], row.request["to"]);
    assert_eq!(seen["outbox_id"], row.id);
    assert_eq!(seen["step"], json!({"index": 0, "label": "tell"}));
    assert_eq!(seen["action"], "send");
    assert_eq!(seen["event"]["file"], "ftp://files/a.pdf");
    let reason = seen["reason"].as_str().unwrap();
    assert!(reason.contains("wrong HTTP URL"), "{reason}");
    assert!(t.messages(alert.id).await[0]["text"]
        .as_str()
        .unwrap()
        .starts_with("send in notify: "));

    // Once: one failure event, one alert run, after everything stored has been processed.
    let events = events_after_marker(&t).await;
    assert_eq!(failed_events(&events).len(), 1, "{events:?}");
    assert_eq!(runs_of_scenario(&t, "alert").await.len(), 1);
}

#[tokio::test]
async fn a_run_failing_on_a_step_starts_the_failure_scenarios_that_follow_its_scenario() {
    let only_a =
        "id = \"only-a\"\non = { failed = \"a\" }\n[[step]]\nset = { \"run.seen\" = \"event\" }\n";
    let cfg = ConfigDir::with(&[
        ("a.toml", &looping("a", "a")),
        ("b.toml", &looping("b", "b")),
        ("alert.toml", ALERT),
        ("only-a.toml", only_a),
        ("marker.toml", MARKER),
    ]);
    let t = TestApp::spawn(&cfg).await;

    let (_, a) = t.post("a", json!({"deal": 7})).await;
    let a = t.runs_of(a["event_id"].as_i64().unwrap()).await[0].id;
    let (_, b) = t.post("b", json!({"deal": 8})).await;
    let b = t.runs_of(b["event_id"].as_i64().unwrap()).await[0].id;
    let failed_a = t.status_of(a, RunStatus::Failed).await;
    t.status_of(b, RunStatus::Failed).await;
    // The run's journal says its failure was reported.
    assert!(failed_a
        .journal
        .iter()
        .any(|e| e["result"] == "failure reported"));

    let events = events_after_marker(&t).await;
    assert_eq!(failed_events(&events).len(), 2, "{events:?}");

    // `failed = "a"`: only a's failure.
    let only = runs(&t, "only-a").await;
    assert_eq!(only.len(), 1);
    let seen = &only[0].vars["seen"];
    assert_eq!(seen["kind"], "run");
    assert_eq!(seen["run"], a);
    assert_eq!(seen["scenario"], "a");
    assert_eq!(seen["step"], json!({"index": 1, "label": "spin"}));
    assert_eq!(seen["action"], "goto");
    assert_eq!(seen["event"], json!({"deal": 7}));
    assert_eq!(seen["to"], Value::Null);
    let reason = seen["reason"].as_str().unwrap();
    assert!(reason.contains("the limit of 50 steps"), "{reason}");
    assert_eq!(Some(reason), failed_a.error.as_deref());

    // `failed = "*"`: both, once each.
    let all = runs(&t, "alert").await;
    let mut failed: Vec<i64> = all
        .iter()
        .map(|r| r.vars["seen"]["run"].as_i64().unwrap())
        .collect();
    failed.sort();
    assert_eq!(failed, [a, b]);
}

#[tokio::test]
async fn a_failing_failure_scenario_starts_no_other() {
    let broken = "id = \"broken-alert\"\non = { failed = \"*\" }\n[[step]]\nlabel = \"spin\"\ngoto = \"spin\"\n";
    let cfg = ConfigDir::with(&[
        ("boom.toml", &looping("boom", "boom")),
        ("broken.toml", broken),
        ("alert.toml", ALERT),
        ("marker.toml", MARKER),
    ]);
    let t = TestApp::spawn(&cfg).await;

    let (_, b) = t.post("boom", json!({})).await;
    let boom = t.runs_of(b["event_id"].as_i64().unwrap()).await[0].id;
    t.status_of(boom, RunStatus::Failed).await;

    // Both failure scenarios ran for boom's failure; the broken one failed itself.
    let broken_runs = eventually(|| async {
        let ids = runs_of_scenario(&t, "broken-alert").await;
        (!ids.is_empty()).then_some(ids)
    })
    .await;
    let broken_run = t.status_of(broken_runs[0], RunStatus::Failed).await;
    assert!(!broken_run
        .journal
        .iter()
        .any(|e| e["result"] == "failure reported"));

    let events = events_after_marker(&t).await;
    let failed = failed_events(&events);
    assert_eq!(failed.len(), 1, "{events:?}");
    assert_eq!(failed[0].source, "boom");
    assert_eq!(runs_of_scenario(&t, "broken-alert").await.len(), 1);
    let alerts = runs(&t, "alert").await;
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].vars["seen"]["run"], boom);
}

#[tokio::test]
async fn an_event_that_starts_no_run_goes_to_the_fallback() {
    let deal = "id = \"deal\"\non = { webhook = \"deal\" }\nwhen = 'event.stage == \"new\"'\n[[step]]\nstop = true\n";
    let fallback = "id = \"fallback\"\non = { unmatched = \"webhook\" }\n[[step]]\nset = { \"run.seen\" = \"event\" }\n";
    let off = "id = \"off\"\nenabled = false\non = { webhook = \"off\" }\n[[step]]\nstop = true\n";
    let once = "id = \"once\"\non = { webhook = \"once\" }\nsubject = \"x\"\nlimit = { once = true }\n[[step]]\nstop = true\n";
    let cfg = ConfigDir::with(&[
        ("deal.toml", deal),
        ("fallback.toml", fallback),
        ("off.toml", off),
        ("once.toml", once),
    ]);
    let t = TestApp::spawn(&cfg).await;

    // A hook no scenario listens to: accepted because a fallback takes unmatched webhooks.
    let (id, runs, outcome) = post_for_outcome(&t, "nobody-listens", json!({"id": 1})).await;
    assert_eq!(runs.len(), 1);
    let run = t.finished(runs[0].id).await;
    assert_eq!(run.scenario, "fallback");
    assert_eq!(
        run.vars["seen"],
        json!({"id": 1, "unmatched": {"kind": "webhook", "source": "nobody-listens", "event_id": id}})
    );
    assert!(
        outcome.contains("no scenario listens to this event"),
        "{outcome}"
    );
    assert!(outcome.contains("went to the fallback"), "{outcome}");

    // The only listener's guard is false: the fallback.
    let (_, runs, outcome) = post_for_outcome(&t, "deal", json!({"stage": "won"})).await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].scenario, "fallback");
    assert!(outcome.contains("guard false"), "{outcome}");

    // Matched: the listener's run only.
    let (_, runs, outcome) = post_for_outcome(&t, "deal", json!({"stage": "new"})).await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].scenario, "deal");
    assert!(!outcome.contains("fallback"), "{outcome}");

    // A disabled listener: the fallback.
    let (_, runs, outcome) = post_for_outcome(&t, "off", json!({})).await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].scenario, "fallback");
    assert!(outcome.contains("disabled"), "{outcome}");

    // A limit that refuses the run: matched all the same, no fallback.
    let (_, runs, _) = post_for_outcome(&t, "once", json!({})).await;
    assert_eq!(runs[0].scenario, "once");
    let (_, runs, outcome) = post_for_outcome(&t, "once", json!({})).await;
    assert!(runs.is_empty(), "{runs:?}");
    assert!(outcome.contains("limited"), "{outcome}");
    assert!(!outcome.contains("fallback"), "{outcome}");
}

/// Posts to a hook; the event's id, the runs it started and its outcome in the journal.
async fn post_for_outcome(t: &TestApp, hook: &str, body: Value) -> (i64, Vec<RunRow>, String) {
    let (s, b) = t.post(hook, body).await;
    assert_eq!(s, 202, "{b}");
    let id = b["event_id"].as_i64().unwrap();
    let runs = t.runs_of(id).await;
    let ev = t.app.store.event(id).await.unwrap().unwrap();
    (id, runs, ev.outcome.unwrap_or_default().to_string())
}

#[tokio::test]
async fn bad_failure_and_fallback_triggers_are_reported_with_their_position() {
    let cfg = ConfigDir::with(&[
        (
            "a.toml",
            "id = \"a\"\non = { failed = \"nope\" }\n[[step]]\nstop = true\n",
        ),
        (
            "b.toml",
            "id = \"b\"\non = { unmatched = \"clicks\" }\n[[step]]\nstop = true\n",
        ),
        (
            "c.toml",
            "id = \"c\"\non = { failed = [] }\n[[step]]\nstop = true\n",
        ),
        (
            "d.toml",
            "id = \"d\"\non = { failed = [\"a\", \"d\"] }\n[[step]]\nstop = true\n",
        ),
    ]);
    let Err(e) = switchboard::config::load(&cfg.dir()) else {
        panic!("the folder should not load");
    };
    let text = e.to_string();
    assert!(text.contains("a.toml:2:17:"), "{text}");
    assert!(text.contains("'nope'"), "{text}");
    assert!(
        text.contains("b.toml:2:20: unknown event kind 'clicks'"),
        "{text}"
    );
    assert!(
        text.contains("c.toml:2:17: `failed` needs \"*\" or at least one scenario id"),
        "{text}"
    );
    assert!(!text.contains("d.toml"), "{text}");
}

#[tokio::test]
async fn the_example_reports_each_message_the_examples_could_not_send() {
    let cfg = ConfigDir::examples();
    let t = TestApp::spawn(&cfg).await;

    // Without tokens the chat channels are off: the supervisors' messages fail at once.
    let (_, b) = t
        .post(
            "call-rated",
            json!({"operator": "Ivan", "rating": 2, "call_id": "c-1"}),
        )
        .await;
    let run = t.runs_of(b["event_id"].as_i64().unwrap()).await[0].id;
    t.finished(run).await;
    let failed: Vec<_> = settled_outbox(&t, run)
        .await
        .into_iter()
        .filter(|r| r.status == "failed")
        .collect();
    assert!(!failed.is_empty());

    let alerts = eventually(|| async {
        let ids = runs_of_scenario(&t, "alert-on-failure").await;
        (ids.len() == failed.len()).then_some(ids)
    })
    .await;
    let mut texts = Vec::new();
    for id in alerts {
        assert_eq!(t.finished(id).await.status, RunStatus::Done);
        texts.push(
            t.messages(id).await[0]["text"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    for row in &failed {
        let to = row.request["to"].as_str().unwrap();
        let prefix = format!(
            "Could not send a message of operator-rating (run {run}) to {}:{to}: ",
            row.channel
        );
        assert!(
            texts.iter().any(|t| t.starts_with(&prefix)),
            "{prefix} in {texts:?}"
        );
    }
}

#[tokio::test]
async fn a_scenario_a_failure_scenario_calls_reports_no_failure_either() {
    let report =
        "id = \"report\"\non = { failed = \"*\" }\n[[step]]\ncall = { scenario = \"relay\" }\n";
    let relay = "id = \"relay\"\non = { call = true }\n[[step]]\ncall = { scenario = \"flaky\" }\n";
    let flaky =
        "id = \"flaky\"\non = { call = true }\n[[step]]\nlabel = \"spin\"\ngoto = \"spin\"\n";
    let cfg = ConfigDir::with(&[
        ("boom.toml", &looping("boom", "boom")),
        ("report.toml", report),
        ("relay.toml", relay),
        ("flaky.toml", flaky),
        ("marker.toml", MARKER),
    ]);
    let t = TestApp::spawn(&cfg).await;

    let (_, b) = t.post("boom", json!({})).await;
    let boom = t.runs_of(b["event_id"].as_i64().unwrap()).await[0].id;
    t.status_of(boom, RunStatus::Failed).await;
    // report → relay → flaky, two calls down, and flaky fails.
    let flaky_run = eventually(|| async {
        let ids = runs_of_scenario(&t, "flaky").await;
        ids.first().copied()
    })
    .await;
    let flaky_run = t.status_of(flaky_run, RunStatus::Failed).await;
    assert_eq!(flaky_run.depth, 2);

    let events = events_after_marker(&t).await;
    let failed = failed_events(&events);
    assert_eq!(failed.len(), 1, "{events:?}");
    assert_eq!(failed[0].source, "boom");
    assert_eq!(runs(&t, "report").await.len(), 1);
    assert_eq!(runs(&t, "flaky").await.len(), 1);
}

#[tokio::test]
async fn a_timer_of_a_scenario_that_no_longer_compiles_reports_the_run_failed() {
    let nap = "id = \"nap\"\non = { webhook = \"nap\" }\n[[step]]\nlabel = \"rest\"\nsleep = { for = \"1h\" }\n[[step]]\nsend = { to = \"naps\", template = \"woke\" }\n";
    let cfg = ConfigDir::with(&[("nap.toml", nap), ("alert.toml", ALERT)]);
    let gateway = std::fs::read_to_string(cfg.dir().join("gateway.toml")).unwrap();
    cfg.write(
        "gateway.toml",
        &format!("{gateway}\n[channels.naps]\ntype = \"log\"\n"),
    );
    let t = TestApp::spawn(&cfg).await;
    let (_, b) = t.post("nap", json!({"who": "Ada"})).await;
    let nap_run = t.runs_of(b["event_id"].as_i64().unwrap()).await[0].id;
    t.status_of(nap_run, RunStatus::Sleeping).await;
    let database = t.database.clone();
    t.app.stop().await;

    // The scenario and the channel it sends to are removed while its run sleeps: the run's
    // version no longer compiles. Its timer still fires.
    std::fs::remove_file(cfg.dir().join("nap.toml")).unwrap();
    cfg.write("gateway.toml", &gateway);
    let t = TestApp::spawn_on(&cfg, &database).await;
    t.advance(std::time::Duration::from_secs(2 * 3600));
    let failed = t.status_of(nap_run, RunStatus::Failed).await;
    let reason = failed.error.clone().unwrap();
    assert!(
        reason.contains("of scenario 'nap' does not compile against the current config")
            && reason.contains("naps"),
        "{reason}"
    );
    let alert = eventually(|| async {
        let ids = runs_of_scenario(&t, "alert").await;
        ids.first().copied()
    })
    .await;
    let seen = &t.finished(alert).await.vars["seen"];
    assert_eq!(seen["kind"], "run");
    assert_eq!(seen["run"], nap_run);
    assert_eq!(seen["scenario"], "nap");
    assert_eq!(seen["reason"], reason);
    // Where it stopped, though the step's label went with the file.
    assert_eq!(seen["step"], json!({"index": 0, "label": null}));
    assert_eq!(seen["event"], json!({"who": "Ada"}));
}

#[tokio::test]
async fn a_chat_message_nobody_listens_to_goes_to_a_fallback_for_any_kind() {
    let fake = FakeTelegram::start().await;
    let fallback = "id = \"fallback\"\non = { unmatched = \"*\" }\n[[step]]\nset = { \"run.seen\" = \"event\" }\n";
    let cfg = ConfigDir::with(&[("fallback.toml", fallback)]);
    with_telegram(&cfg, &fake);
    let t = TestApp::spawn(&cfg).await;

    fake.inject(crate::fake_telegram::text_update(500, 7, "en", "hello?"));
    let run = eventually(|| async {
        let ids = runs_of_scenario(&t, "fallback").await;
        ids.first().copied()
    })
    .await;
    let seen = &t.finished(run).await.vars["seen"];
    assert_eq!(seen["text"], "hello?");
    assert_eq!(seen["unmatched"]["kind"], "message");
    assert_eq!(seen["unmatched"]["source"], "tg");
}
