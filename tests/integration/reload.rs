//! Reloading the config folder while the gateway runs: runs keep the version of their
//! scenario they started with (across reloads, restarts and replicas), a broken folder is
//! refused and shown, and SIGHUP does what the API does.

use serde_json::{json, Value};
use switchboard::store::{RunRow, RunStatus};

use crate::fake_telegram::{text_update, texts_eventually, FakeTelegram, TOKEN};
use crate::support::*;

/// Version 1: "1" goes to `confirmed`, "2" to `reschedule`.
const V1: &str = r#"id = "confirm"
on = { webhook = "booked" }
subject = "appointment:{{ event.id }}"
[[step]]
ask = { to = "tg:{{ event.chat }}", template = "Reply 1 to confirm, 2 to reschedule", choices = ["1", "2"], retries = 1, timeout = "24h" }
branch = { "1" = "confirmed", "2" = "reschedule", exhausted = "handover", timeout = "handover" }
[[step]]
label = "confirmed"
send = { to = "tg:{{ event.chat }}", template = "confirmed (v1)" }
stop = true
[[step]]
label = "reschedule"
send = { to = "tg:{{ event.chat }}", template = "rescheduling (v1)" }
stop = true
[[step]]
label = "handover"
send = { to = "tg:{{ event.chat }}", template = "handed over (v1)" }
"#;

/// Version 2 renames the labels, reorders the steps and changes every text.
const V2: &str = r#"id = "confirm"
on = { webhook = "booked" }
subject = "appointment:{{ event.id }}"
[[step]]
set = { "run.asked" = "true" }
[[step]]
ask = { to = "tg:{{ event.chat }}", template = "Answer 1 (yes) or 2 (later)", choices = ["1", "2"], retries = 1, timeout = "24h" }
branch = { "1" = "yes", "2" = "later", exhausted = "staff", timeout = "staff" }
[[step]]
label = "later"
send = { to = "tg:{{ event.chat }}", template = "later (v2)" }
stop = true
[[step]]
label = "yes"
send = { to = "tg:{{ event.chat }}", template = "yes (v2)" }
stop = true
[[step]]
label = "staff"
send = { to = "tg:{{ event.chat }}", template = "staff (v2)" }
"#;

/// Version 3 does not compile: a branch to a label that does not exist.
const V3: &str = r#"id = "confirm"
on = { webhook = "booked" }
[[step]]
ask = { to = "tg:{{ event.chat }}", template = "v3", choices = ["1"] }
branch = { "1" = "nowhere" }
"#;

fn gateway(fake: &FakeTelegram) -> String {
    format!(
        "[defaults]\nretry_delay = \"50ms\"\n\n[channels.tg]\ntype = \"telegram\"\ntoken = \"{TOKEN}\"\napi_url = \"{}\"\n",
        fake.url
    )
}

fn labels(run: &RunRow) -> Vec<String> {
    run.journal
        .iter()
        .filter_map(|e| e["label"].as_str().map(str::to_string))
        .collect()
}

async fn reload(t: &TestApp) -> (u16, Value) {
    t.post_api("/api/config/reload").await
}

/// The one run of the event posted with `body`, once it reaches `status`.
async fn booked(t: &TestApp, body: Value) -> i64 {
    let (s, b) = t.post("booked", body).await;
    assert_eq!(s, 202, "{b}");
    let runs = t.runs_of(b["event_id"].as_i64().unwrap()).await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    runs[0].id
}

#[tokio::test]
async fn an_ask_started_on_version_1_keeps_its_branches_after_version_2_renames_them() {
    let fake = FakeTelegram::start().await;
    let cfg = ConfigDir::with(&[("confirm.toml", V1)]);
    cfg.write("gateway.toml", &gateway(&fake));
    let t = TestApp::spawn(&cfg).await;

    let first = booked(&t, json!({"id": 1, "chat": 501})).await;
    assert_eq!(
        texts_eventually(&fake, 501, 1).await,
        ["Reply 1 to confirm, 2 to reschedule"]
    );

    cfg.write("confirm.toml", V2);
    let (s, b) = reload(&t).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["changed"], json!(["confirm"]), "{b}");
    assert_eq!(b["versions_in_use"], 1, "{b}");
    let v1 = switchboard::config::version_hash(V1);
    let v2 = switchboard::config::version_hash(V2);
    assert_eq!(t.app.config().version_of("confirm"), Some(v2.as_str()));

    // A new booking asks version 2's question; the first run still follows version 1.
    let second = booked(&t, json!({"id": 2, "chat": 502})).await;
    assert_eq!(
        texts_eventually(&fake, 502, 1).await,
        ["Answer 1 (yes) or 2 (later)"]
    );
    fake.inject(text_update(501, 7, "en", "1"));
    fake.inject(text_update(502, 8, "en", "2"));
    assert_eq!(texts_eventually(&fake, 501, 2).await[1], "confirmed (v1)");
    assert_eq!(texts_eventually(&fake, 502, 2).await[1], "later (v2)");
    let r1 = t.finished(first).await;
    let r2 = t.finished(second).await;
    assert_eq!(r1.status, RunStatus::Done, "{:?}", r1.journal);
    assert_eq!(labels(&r1), ["confirmed"]);
    assert_eq!(r1.version.as_deref(), Some(v1.as_str()));
    assert_eq!(labels(&r2), ["later"]);
    assert_eq!(r2.version.as_deref(), Some(v2.as_str()));

    // The API and the run page say which version each run used.
    let (_, run) = t.get(&format!("/api/runs/{first}")).await;
    assert_eq!(run["run"]["version"], json!(v1), "{run}");
    let (client, session) = pages_session(&t).await;
    let page = client
        .get(format!("{}/ui/runs/{first}", t.app.admin_url()))
        .header("cookie", &session)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains(&v1[..12]), "{page}");
    assert!(page.contains("an earlier one"), "{page}");
    // The page draws version 1's graph (its labels), not the current one.
    assert!(page.contains("reschedule"), "{page}");
}

#[tokio::test]
async fn a_broken_config_is_refused_shown_and_the_running_one_keeps_serving() {
    let fake = FakeTelegram::start().await;
    let cfg = ConfigDir::with(&[("confirm.toml", V2)]);
    cfg.write("gateway.toml", &gateway(&fake));
    let t = TestApp::spawn(&cfg).await;
    let ready = t.readyz().await;
    assert_eq!(ready["config"]["status"], "ok", "{ready}");

    cfg.write("confirm.toml", V3);
    let (s, b) = reload(&t).await;
    assert_eq!(s, 422, "{b}");
    let errors: Vec<String> = serde_json::from_value(b["errors"].clone()).unwrap();
    let at = format!("{}:5:", cfg.dir().join("confirm.toml").display());
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with(&at) && e.contains("nowhere")),
        "{errors:?}"
    );

    // Version 2 keeps serving.
    booked(&t, json!({"id": 3, "chat": 503})).await;
    assert_eq!(
        texts_eventually(&fake, 503, 1).await,
        ["Answer 1 (yes) or 2 (later)"]
    );

    // The admin listener's /readyz lists the errors, the public one only counts them; the
    // gateway stays ready.
    let admin: Value = t
        .http
        .get(format!("{}/readyz", t.app.admin_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(admin["ready"], true, "{admin}");
    assert_eq!(admin["config"]["status"], "reload refused", "{admin}");
    assert!(admin["config"]["errors"][0]
        .as_str()
        .unwrap()
        .contains("nowhere"));
    let public = t.readyz().await;
    assert_eq!(public["config"]["status"], "reload refused", "{public}");
    assert!(public["config"]["errors"].is_null(), "{public}");
    assert_eq!(public["config"]["error_count"], errors.len());
    let (_, status) = t.get("/api/config").await;
    assert_eq!(status["refused"]["errors"], json!(errors), "{status}");

    // The journal pages say so at the top.
    let (client, session) = pages_session(&t).await;
    let page = client
        .get(format!("{}/ui/runs", t.app.admin_url()))
        .header("cookie", &session)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("id=\"config-refused\""), "{page}");
    assert!(page.contains("nowhere"), "{page}");

    // Channels change only on a restart: such a reload is refused too.
    cfg.write("confirm.toml", V2);
    let gw = gateway(&fake);
    cfg.write(
        "gateway.toml",
        &format!("{gw}\n[channels.ops2]\ntype = \"log\"\n"),
    );
    let (s, b) = reload(&t).await;
    assert_eq!(s, 422, "{b}");
    assert!(
        b["errors"][0]
            .as_str()
            .unwrap()
            .contains("[channels.ops2] added"),
        "{b}"
    );

    // Fixed: the reload goes through and the refusal is gone.
    cfg.write("gateway.toml", &gw);
    let (s, b) = reload(&t).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["changed"], json!([]), "{b}");
    assert_eq!(t.readyz().await["config"]["status"], "ok");
    let page = client
        .get(format!("{}/ui/runs", t.app.admin_url()))
        .header("cookie", &session)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!page.contains("id=\"config-refused\""), "{page}");
}

#[tokio::test]
async fn a_restart_keeps_unfinished_runs_on_their_version() {
    let fake = FakeTelegram::start().await;
    let cfg = ConfigDir::with(&[("confirm.toml", V1)]);
    cfg.write("gateway.toml", &gateway(&fake));
    let t = TestApp::spawn(&cfg).await;
    let db = t.database.clone();
    let run = booked(&t, json!({"id": 4, "chat": 504})).await;
    texts_eventually(&fake, 504, 1).await;
    // Stopped once the question is recorded as sent (else it would go again at the start).
    settled_outbox(&t, run).await;
    t.app.stop().await;

    // Changed while the gateway was down: the waiting run is compiled from its stored text.
    cfg.write("confirm.toml", V2);
    let t = TestApp::spawn_on(&cfg, &db).await;
    fake.inject(text_update(504, 9, "en", "2"));
    assert_eq!(
        texts_eventually(&fake, 504, 2).await[1],
        "rescheduling (v1)"
    );
    let r = t.finished(run).await;
    assert_eq!(labels(&r), ["reschedule"]);
    assert_eq!(r.version.unwrap(), switchboard::config::version_hash(V1));
}

/// Sends whatever `hook` receives to the log channel, with a version mark.
fn echo(mark: &str) -> String {
    format!(
        "id = \"echo\"\non = {{ webhook = \"echo\" }}\n[[step]]\nsend = {{ to = \"ops\", template = \"{mark}\" }}\n"
    )
}

async fn scenario_version(client: &reqwest::Client, admin: &str, id: &str) -> Option<String> {
    let list: Value = client
        .get(format!("{admin}/api/scenarios"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    list.as_array()?
        .iter()
        .find(|s| s["id"] == id)?
        .get("version")?
        .as_str()
        .map(str::to_string)
}

#[tokio::test]
async fn sighup_reloads_the_gateway_process() {
    let cfg = ConfigDir::with(&[("echo.toml", &echo("one"))]);
    let gw = Gateway::start(&cfg).await;
    let client = reqwest::Client::new();
    let v1 = switchboard::config::version_hash(&echo("one"));
    assert_eq!(scenario_version(&client, &gw.admin, "echo").await, Some(v1));

    let two = echo("two");
    cfg.write("echo.toml", &two);
    let pid = gw.pid() as libc::pid_t;
    // SAFETY: a signal to the gateway process this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    let v2 = switchboard::config::version_hash(&two);
    eventually(|| async {
        (scenario_version(&client, &gw.admin, "echo")
            .await
            .as_deref()
            == Some(v2.as_str()))
        .then_some(())
    })
    .await;

    // A broken folder: SIGHUP refuses it and says so on /readyz.
    cfg.write(
        "echo.toml",
        "id = \"echo\"\non = { webhook = \"echo\" }\n[[step]]\nsend = 3\n",
    );
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    let ready = eventually(|| async {
        let r: Value = client
            .get(format!("{}/readyz", gw.admin))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (r["config"]["status"] == "reload refused").then_some(r)
    })
    .await;
    assert_eq!(ready["ready"], true, "{ready}");
    assert!(ready["config"]["errors"][0]
        .as_str()
        .unwrap()
        .contains("echo.toml:4:"));
    assert_eq!(scenario_version(&client, &gw.admin, "echo").await, Some(v2));
    // The process is still serving.
    gw.post("echo", json!({})).await;
}

const WAITER_V1: &str = r#"id = "waiter"
on = { webhook = "start" }
subject = "order:{{ event.id }}"
[[step]]
wait = { webhook = "answer", match = "order:{{ event.id }}", timeout = "1h" }
[[step]]
send = { to = "ops", template = "resumed (v1)" }
"#;

/// Version 2 waits one step later, and says so.
const WAITER_V2: &str = r#"id = "waiter"
on = { webhook = "start" }
subject = "order:{{ event.id }}"
[[step]]
set = { "run.version" = "2" }
[[step]]
wait = { webhook = "answer", match = "order:{{ event.id }}", timeout = "1h" }
[[step]]
send = { to = "ops", template = "resumed (v{{ run.version }})" }
"#;

const REPLICA_GATEWAY: &str =
    "[database]\nlease = \"1s\"\n\n[channels.ops]\ntype = \"log\"\noutput = \"journal\"\n";

#[tokio::test]
async fn a_replica_follows_a_version_another_replica_loaded() {
    let db = crate::pg::fresh_db().await;
    let (cfg_a, cfg_b) = (
        ConfigDir::with(&[("waiter.toml", WAITER_V1)]),
        ConfigDir::with(&[("waiter.toml", WAITER_V1)]),
    );
    cfg_a.write("gateway.toml", REPLICA_GATEWAY);
    cfg_b.write("gateway.toml", REPLICA_GATEWAY);
    let a = TestApp::spawn_on(&cfg_a, &db).await;
    let b = TestApp::spawn_on(&cfg_b, &db).await;

    // Only replica A reloads.
    cfg_a.write("waiter.toml", WAITER_V2);
    let (s, r) = a.post_api("/api/config/reload").await;
    assert_eq!(s, 200, "{r}");
    let v2 = switchboard::config::version_hash(WAITER_V2);
    let (s, ev) = a.post("start", json!({"id": 1})).await;
    assert_eq!(s, 202, "{ev}");
    let run = a.runs_of(ev["event_id"].as_i64().unwrap()).await[0].clone();
    assert_eq!(run.version.as_deref(), Some(v2.as_str()));
    a.status_of(run.id, RunStatus::Waiting).await;

    // Replica B still starts runs on version 1, and learns version 2 from the database.
    let (_, ev) = b.post("start", json!({"id": 2})).await;
    let other = b.runs_of(ev["event_id"].as_i64().unwrap()).await[0].clone();
    assert_eq!(
        other.version.unwrap(),
        switchboard::config::version_hash(WAITER_V1)
    );
    eventually(|| async {
        let (_, c) = b.get("/api/config").await;
        c["older_versions"]
            .as_array()?
            .iter()
            .any(|v| v["version"] == v2.as_str())
            .then_some(())
    })
    .await;

    // The answer reaches B: the run goes on with version 2's steps there.
    let (s, _) = b.post("answer", json!({"id": 1})).await;
    assert_eq!(s, 202);
    let done = b.finished(run.id).await;
    assert_eq!(done.status, RunStatus::Done, "{:?}", done.journal);
    let sent = b.messages(run.id).await;
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(sent[0].to_string().contains("resumed (v2)"), "{sent:?}");
}

#[tokio::test]
async fn a_watched_folder_reloads_when_a_file_changes() {
    let cfg = ConfigDir::with(&[("echo.toml", &echo("one"))]);
    let app = switchboard::app::App::start(switchboard::app::Options {
        config_dir: cfg.dir(),
        database: cfg.db(),
        listen: Some("127.0.0.1:0".into()),
        public_url: None,
        admin_listen: Some("127.0.0.1:0".into()),
        admin_token: Some(ADMIN_TOKEN.into()),
        link_key: Some("test-link-key".into()),
        clock: switchboard::clock::Clock::default(),
        watch: true,
    })
    .await
    .unwrap();
    let live = app.live.clone();
    let version = || {
        live.config()
            .version_of("echo")
            .map(str::to_string)
            .unwrap_or_default()
    };

    let two = echo("two");
    cfg.write("echo.toml", &two);
    let v2 = switchboard::config::version_hash(&two);
    eventually(|| async { (version() == v2).then_some(()) }).await;

    // A new scenario file is picked up too; a broken one is refused and shown.
    cfg.write(
        "other.toml",
        "id = \"other\"\non = { webhook = \"other\" }\n[[step]]\nstop = true\n",
    );
    eventually(|| async { app.config().scenario("other").map(|_| ()) }).await;
    cfg.write(
        "other.toml",
        "id = \"other\"\non = { webhook = \"other\" }\n[[step]]\nstop = 1\n",
    );
    let refused = eventually(|| async { app.live.refused() }).await;
    assert!(refused.errors[0].contains("other.toml:4:"), "{refused:?}");
    assert_eq!(version(), v2);
    app.stop().await;
}

#[tokio::test]
async fn a_removed_scenario_s_runs_finish_as_they_began() {
    let nap = "id = \"nap\"\non = { webhook = \"nap\" }\n[[step]]\nsleep = { for = \"1h\" }\n[[step]]\nsend = { to = \"ops\", template = \"woke\" }\n";
    let cfg = ConfigDir::with(&[("nap.toml", nap)]);
    let t = TestApp::spawn(&cfg).await;
    let (_, b) = t.post("nap", json!({})).await;
    let run = t.runs_of(b["event_id"].as_i64().unwrap()).await[0].id;
    t.status_of(run, RunStatus::Sleeping).await;

    std::fs::remove_file(cfg.dir().join("nap.toml")).unwrap();
    let (s, r) = t.post_api("/api/config/reload").await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["removed"], json!(["nap"]), "{r}");
    assert_eq!(r["versions_in_use"], 1, "{r}");
    // New events find no scenario; the sleeping run wakes and sends as version 1 said.
    let (s, _) = t.post("nap", json!({})).await;
    assert_eq!(s, 404);
    t.advance(std::time::Duration::from_secs(2 * 3600));
    let done = t.finished(run).await;
    assert_eq!(done.status, RunStatus::Done, "{:?}", done.journal);
    assert!(t.messages(run).await[0].to_string().contains("woke"));
}

#[tokio::test]
async fn a_hook_only_an_earlier_version_waits_for_still_reaches_its_runs() {
    let cfg = ConfigDir::with(&[("waiter.toml", WAITER_V1)]);
    let gateway = std::fs::read_to_string(cfg.dir().join("gateway.toml")).unwrap();
    cfg.write(
        "gateway.toml",
        &format!(
            "{gateway}\n[hooks.answer]\nsecret = {{ header = \"X-Token\", value = \"s3cret\" }}\n"
        ),
    );
    let t = TestApp::spawn(&cfg).await;
    let (_, ev) = t.post("start", json!({"id": 7})).await;
    let run = t.runs_of(ev["event_id"].as_i64().unwrap()).await[0].id;
    t.status_of(run, RunStatus::Waiting).await;

    // Version 2 no longer waits for `answer`, and the gateway file no longer names the hook:
    // it is still open for version 1's run, with its secret still checked.
    cfg.write(
        "waiter.toml",
        "id = \"waiter\"\non = { webhook = \"start\" }\n[[step]]\nstop = true\n",
    );
    cfg.write("gateway.toml", &gateway);
    let (s, r) = t.post_api("/api/config/reload").await;
    assert_eq!(s, 200, "{r}");
    let (s, b) = t.post("answer", json!({"id": 7})).await;
    assert_eq!(s, 401, "{b}");
    let body = json!({"id": 7}).to_string();
    let (s, b) = t.post_with("answer", &body, &[("X-Token", "s3cret")]).await;
    assert_eq!(s, 202, "{b}");
    let done = t.finished(run).await;
    assert_eq!(done.status, RunStatus::Done, "{:?}", done.journal);
    assert!(t.messages(run).await[0]
        .to_string()
        .contains("resumed (v1)"));
    // Once no run waits for it, the hook is unknown again.
    let (s, r) = t.post_api("/api/config/reload").await;
    assert_eq!(s, 200, "{r}");
    let (s, _) = t.post("answer", json!({"id": 8})).await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn a_reply_to_a_run_whose_version_no_longer_compiles_fails_it_with_the_reason() {
    let fake = FakeTelegram::start().await;
    let asking = "id = \"confirm\"\non = { webhook = \"booked\" }\n[[step]]\nask = { to = \"tg:{{ event.chat }}\", template = \"Reply 1\", choices = [\"1\"] }\n[[step]]\nsend = { to = \"tg:{{ event.chat }}\", text = \"order-resumed\" }\n";
    let cfg = ConfigDir::with(&[("confirm.toml", asking)]);
    cfg.write("gateway.toml", &gateway(&fake));
    let locales = cfg.root.path().join("locales");
    for lang in ["en", "ru", "pl"] {
        std::fs::write(
            locales.join(lang).join("orders.ftl"),
            "order-resumed = Resumed.\n",
        )
        .unwrap();
    }
    let t = TestApp::spawn(&cfg).await;
    let run = booked(&t, json!({"chat": 505})).await;
    texts_eventually(&fake, 505, 1).await;
    settled_outbox(&t, run).await;
    let db = t.database.clone();
    t.app.stop().await;

    // While it is down the scenario stops using the message and the message goes.
    cfg.write("confirm.toml", V2);
    for lang in ["en", "ru", "pl"] {
        std::fs::remove_file(locales.join(lang).join("orders.ftl")).unwrap();
    }
    let t = TestApp::spawn_on(&cfg, &db).await;
    fake.inject(text_update(505, 10, "en", "1"));
    let failed = t.status_of(run, RunStatus::Failed).await;
    let why = failed.error.unwrap_or_default();
    assert!(
        why.contains("does not compile against the current config")
            && why.contains("order-resumed"),
        "{why}"
    );
}

#[tokio::test]
async fn a_schedule_a_reload_adds_fires() {
    let cfg = ConfigDir::with(&[]);
    let t = TestApp::spawn(&cfg).await;
    cfg.write(
        "tick.toml",
        "id = \"tick\"\non = { schedule = \"*/5 * * * *\" }\n[[step]]\nincr = \"global.ticks\"\n",
    );
    let (s, r) = t.post_api("/api/config/reload").await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["added"], json!(["tick"]), "{r}");
    // The clock moves five minutes at a time until the new schedule has fired.
    eventually(|| async {
        t.advance(std::time::Duration::from_secs(300));
        t.app.store.globals().await.unwrap().get("ticks").cloned()
    })
    .await;
}
