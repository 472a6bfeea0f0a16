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
    let script = repo().join("tests/browser/journal.py");
    let admin = t.app.admin_url();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(script)
            .args([admin.as_str(), ADMIN_TOKEN, shots.to_str().unwrap()])
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
    assert_eq!(
        t.app.store.run(failed).await.unwrap().unwrap().status,
        RunStatus::Done
    );
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    for name in [
        "runs.png",
        "run-failed.png",
        "run-retried.png",
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
