//! Tools outside Rust against a live gateway: the journal pages in headless Chromium
//! (Playwright), and schemathesis fuzzing the admin API from its OpenAPI document.
//! `.ci/install-test-deps` installs both.

use std::process::Command;

use serde_json::json;
use switchboard::store::RunStatus;

use crate::support::*;

const PUSH: &str = r#"id = "push"
on = { webhook = "push" }
subject = "phone:{{ event.phone }}"
[[step]]
if = "event.phone != ''"
http = { post = "{{ event.url }}", json = { phone = "{{ event.phone }}" }, headers = { Authorization = "Bearer sk-live-123" }, attempts = 2 }
[[step]]
send = { to = "ops", template = "pushed {{ event.phone }}" }
"#;

const NAP: &str = "id = \"nap\"\non = { webhook = \"nap\" }\nsubject = \"n:{{ event.n }}\"\n[[step]]\nsleep = { for = \"1h\" }\n";

fn need(tool: &str, probe: &[&str]) {
    let ok = Command::new(probe[0])
        .args(&probe[1..])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "{tool} is missing: run `bash .ci/install-test-deps` first"
    );
}

/// Runs a script of tests/browser with these arguments; it must succeed.
async fn browser_script(name: &str, args: Vec<String>) {
    let script = repo().join("tests/browser").join(name);
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(script)
            .args(args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two good runs, one failed run (the sink answered 503), one sleeping run.
async fn with_history() -> (ConfigDir, TestApp, Sink, i64) {
    let cfg = ConfigDir::with(&[("push.toml", PUSH), ("nap.toml", NAP)]);
    let t = TestApp::spawn(&cfg).await;
    let sink = Sink::start().await;
    for phone in ["+1", "+2"] {
        let (_, b) = t
            .post("push", json!({"url": sink.url("/ok"), "phone": phone}))
            .await;
        let id = t.runs_of(b["event_id"].as_i64().unwrap()).await[0].id;
        t.status_of(id, RunStatus::Done).await;
    }
    sink.set_default(503);
    let (_, b) = t
        .post("push", json!({"url": sink.url("/down"), "phone": "+3"}))
        .await;
    let failed = t.runs_of(b["event_id"].as_i64().unwrap()).await[0].id;
    t.status_of(failed, RunStatus::Failed).await;
    sink.set_default(200);
    (cfg, t, sink, failed)
}

#[tokio::test]
async fn the_journal_pages_work_in_a_real_browser() {
    need("chromium", &["chromium", "--version"]);
    need("playwright", &["python3", "-c", "import playwright"]);
    let (_cfg, t, _sink, failed) = with_history().await;
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let args = [
        t.app.admin_url(),
        ADMIN_TOKEN.into(),
        shots.display().to_string(),
    ];
    browser_script("journal.py", args.to_vec()).await;
    assert_eq!(
        t.app.store.run(failed).await.unwrap().unwrap().status,
        RunStatus::Done
    );
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    for name in [
        "runs.png",
        "run-failed.png",
        "run-retried.png",
        "run-graph.png",
        "scenario-graph.png",
        "scenarios.png",
        "runs-ru.png",
    ] {
        assert!(shots.join(name).metadata().unwrap().len() > 1000, "{name}");
    }
}

#[tokio::test]
async fn schemathesis_finds_no_server_error_or_schema_violation() {
    need("schemathesis", &["schemathesis", "--version"]);
    let (_cfg, t, _sink, _) = with_history().await;
    let (_, b) = t.post("nap", json!({"n": 1})).await;
    t.runs_of(b["event_id"].as_i64().unwrap()).await;
    let url = format!("{}/api/openapi.json", t.app.admin_url());
    // schemathesis keeps a cache in its working directory: not in the repository.
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("schemathesis")
            .current_dir(dir)
            .args([
                "run",
                &url,
                "--checks",
                "all",
                "--max-examples",
                "40",
                "--seed",
                "7",
            ])
            .args(["--header", &format!("Authorization: Bearer {ADMIN_TOKEN}")])
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.contains("passed"), "{report}");
}

const GREET: &str = r#"id = "greet"
on = { webhook = "greet" }
subject = "phone:{{ event.phone }}"
[[step]]
send = { to = "ops:{{ event.phone }}", template = "hi {{ event.name }}{% if meta.test %} (test){% endif %}" }
"#;

const BLAST: &str = r#"id = "blast"
on = { webhook = "blast" }
[[step]]
call = { scenario = "notify", for_each = "event.contacts", as = "contact" }
"#;

const NOTIFY: &str = r#"id = "notify"
on = { call = true }
subject = "contact:{{ event.contact }}"
[[step]]
send = { to = "ops:{{ event.contact }}", template = "news #{{ event.index }}" }
"#;

#[tokio::test]
async fn a_csv_upload_starts_runs_and_the_broadcast_view_follows_them() {
    need("chromium", &["chromium", "--version"]);
    need("playwright", &["python3", "-c", "import playwright"]);
    let cfg = ConfigDir::with(&[
        ("greet.toml", GREET),
        ("blast.toml", BLAST),
        ("notify.toml", NOTIFY),
    ]);
    let t = TestApp::spawn(&cfg).await;
    let (_, b) = t
        .post("blast", json!({"contacts": ["a", "b", "c", "d"]}))
        .await;
    let parent = t.runs_of(b["event_id"].as_i64().unwrap()).await[0].id;
    t.status_of(parent, RunStatus::Done).await;
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let csv = cfg.root.path().join("people.csv");
    std::fs::write(
        &csv,
        "name,phone\nAda,+48100\nBob,+48101\n\"Cy, Jr.\",+48102\n",
    )
    .unwrap();
    let args = [
        t.app.admin_url(),
        ADMIN_TOKEN.to_string(),
        shots.display().to_string(),
        csv.display().to_string(),
        parent.to_string(),
    ];
    browser_script("broadcast.py", args.to_vec()).await;
    // The uploaded rows became events with their fields, and test runs said so.
    let runs = runs_of_scenario(&t, "greet").await;
    assert_eq!(runs.len(), 4);
    let first = t
        .app
        .store
        .run(*runs.last().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.event, json!({"name": "Ada", "phone": "+48100"}));
    assert_eq!(t.messages(first.id).await[0]["text"], "hi Ada (test)");
    for name in ["started.png", "broadcast.png", "fan-out.png"] {
        assert!(shots.join(name).metadata().unwrap().len() > 1000, "{name}");
    }
}
