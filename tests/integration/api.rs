//! The admin API: authentication, parameters, every route, and the OpenAPI document.

use std::time::Duration;

use reqwest::Method;
use serde_json::json;
use switchboard::store::RunStatus;

use crate::support::*;

const FLOWS: &[(&str, &str)] = &[
    (
        "push.toml",
        r#"id = "push"
description = "Posts to the given URL"
on = { webhook = "push" }
subject = "phone:{{ event.phone }}"
[[step]]
http = { post = "{{ event.url }}", json = { phone = "{{ event.phone }}" }, headers = { Authorization = "Bearer sk-live-123" }, attempts = 2 }
[[step]]
send = { to = "ops", template = "pushed {{ event.phone }}" }
"#,
    ),
    (
        "sleepy.toml",
        "id = \"sleepy\"\non = { webhook = \"sleepy\" }\nsubject = \"s:{{ event.n }}\"\nlimit = { single = true }\n[[step]]\nsleep = { for = \"1h\", key = \"k\" }\n",
    ),
    (
        "waiter.toml",
        "id = \"waiter\"\non = { webhook = \"ask\" }\nsubject = \"q:{{ event.n }}\"\n[[step]]\nwait = { webhook = \"answer\", match = \"q:{{ event.n }}\", timeout = \"1h\" }\n",
    ),
    (
        "gated.toml",
        "id = \"gated\"\non = { webhook = \"gated\" }\nwhen = 'global.open == true'\n[[step]]\nstop = true\n",
    ),
];

async fn app() -> (ConfigDir, TestApp) {
    let cfg = ConfigDir::with(FLOWS);
    let t = TestApp::spawn(&cfg).await;
    (cfg, t)
}

#[tokio::test]
async fn the_api_needs_the_admin_token() {
    let (_c, t) = app().await;
    let url = format!("{}/api/runs", t.app.admin_url());
    let r = t.http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let b: serde_json::Value = r.json().await.unwrap();
    assert_eq!(b["error"], "missing Authorization: Bearer token");
    let r = t.http.get(&url).bearer_auth("guess").send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["error"],
        "wrong admin token"
    );
    let r = t
        .http
        .get(&url)
        .header("Authorization", "Basic eDp5")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    for path in [
        "/api/events",
        "/api/scenarios",
        "/api/globals",
        "/api/timers",
        "/api/runs/1",
    ] {
        let r = t
            .http
            .get(format!("{}{path}", t.app.admin_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path}");
    }
    let r = t
        .http
        .post(format!("{}/api/runs/1/retry", t.app.admin_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // The document itself is public.
    let r = t
        .http
        .get(format!("{}/api/openapi.json", t.app.admin_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let doc: serde_json::Value = r.json().await.unwrap();
    assert!(doc["paths"]["/api/runs"]["get"].is_object());
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
}

#[tokio::test]
async fn an_unset_token_switches_the_api_off() {
    let cfg = ConfigDir::with(FLOWS);
    let app = switchboard::app::App::start(switchboard::app::Options {
        config_dir: cfg.dir(),
        database: cfg.db(),
        listen: Some("127.0.0.1:0".into()),
        public_url: None,
        admin_listen: Some("127.0.0.1:0".into()),
        admin_token: None,
        link_key: None,
        clock: Default::default(),
        watch: false,
    })
    .await
    .unwrap();
    let r = reqwest::Client::new()
        .get(format!("{}/api/runs", app.admin_url()))
        .bearer_auth("")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let b: serde_json::Value = r.json().await.unwrap();
    assert!(b["error"]
        .as_str()
        .unwrap()
        .contains("SWITCHBOARD_ADMIN_TOKEN"));
    app.stop().await;
}

#[tokio::test]
async fn bad_parameters_get_a_reason() {
    let (_c, t) = app().await;
    for (path, want) in [
        (
            "/api/runs?limit=0",
            "limit must be between 1 and 500, not 0",
        ),
        ("/api/runs?limit=abc", "limit"),
        ("/api/runs?status=sleepy", "status"),
        ("/api/runs?from=yesterday", "from must be an RFC 3339 time"),
        ("/api/events?status=odd", "status"),
        ("/api/runs/abc", "Cannot parse"),
        ("/api/timers?limit=501", "limit must be between 1 and 500"),
    ] {
        let (s, b) = t.get(path).await;
        assert_eq!(s, 400, "{path}: {b}");
        assert!(b["error"].as_str().unwrap().contains(want), "{path}: {b}");
    }
    let (s, b) = t
        .api(Method::PUT, "/api/globals/9lives", Some(json!(1)))
        .await;
    assert_eq!(s, 400, "{b}");
    let r = t
        .http
        .put(format!("{}/api/globals/x", t.app.admin_url()))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let (s, _) = t.get("/api/runs/999999").await;
    assert_eq!(s, 404);
    let (s, _) = t.get("/api/events/999999").await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn runs_and_events_are_listed_filtered_searched_and_shown_in_full() {
    let (_c, t) = app().await;
    let sink = Sink::start().await;
    let before = chrono::Utc::now().to_rfc3339();
    let mut ids = Vec::new();
    for phone in ["+48111", "+48222", "+48333"] {
        let (_, b) = t
            .post("push", json!({"url": sink.url("/crm"), "phone": phone}))
            .await;
        let run = t.runs_of(b["event_id"].as_i64().unwrap()).await[0].id;
        ids.push(t.finished(run).await.id);
    }
    let (_, b) = t.post("sleepy", json!({"n": 1})).await;
    let sleeping = t.runs_of(b["event_id"].as_i64().unwrap()).await[0].id;
    t.status_of(sleeping, RunStatus::Sleeping).await;

    let (s, page) = t.get("/api/runs?scenario=push").await;
    assert_eq!(s, 200);
    let listed: Vec<i64> = page["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert_eq!(listed, ids.iter().rev().copied().collect::<Vec<_>>());

    let (_, page) = t.get("/api/runs?q=%2B48222").await;
    assert_eq!(page["runs"].as_array().unwrap().len(), 1);
    assert_eq!(page["runs"][0]["subject"], "phone:+48222");

    let (_, page) = t.get("/api/runs?status=sleeping").await;
    assert_eq!(page["runs"][0]["id"], sleeping);
    let (_, page) = t
        .get(&format!("/api/runs?from={}", urlencode(&before)))
        .await;
    assert_eq!(page["runs"].as_array().unwrap().len(), 4);
    let (_, page) = t.get(&format!("/api/runs?to={}", urlencode(&before))).await;
    assert!(page["runs"].as_array().unwrap().is_empty());
    let (_, page) = t.get("/api/runs?limit=2").await;
    assert_eq!(page["runs"].as_array().unwrap().len(), 2);
    let next = page["next_before"].as_i64().unwrap();
    let (_, older) = t.get(&format!("/api/runs?limit=2&before={next}")).await;
    assert_eq!(older["runs"].as_array().unwrap().len(), 2);

    let (s, detail) = t.get(&format!("/api/runs/{}", ids[0])).await;
    assert_eq!(s, 200);
    assert_eq!(detail["run"]["status"], "done");
    let journal = detail["run"]["journal"].as_array().unwrap();
    assert!(journal
        .iter()
        .any(|e| e["action"] == "http" && e["status"] == 200));
    let http = &detail["requests"][0];
    assert_eq!(http["kind"], "http");
    assert_eq!(http["status"], "delivered");
    assert_eq!(http["response"]["status"], 200);
    assert!(http["response"]["duration_ms"].is_u64());
    assert!(journal
        .iter()
        .any(|e| e["action"] == "send" && e["ms"].is_f64()));
    // Secrets never reach the journal or the API.
    assert_eq!(
        http["request"]["headers"][0],
        json!(["Authorization", "***"])
    );
    assert!(!detail.to_string().contains("sk-live-123"));
    assert_eq!(detail["requests"][1]["request"]["text"], "pushed +48111");
    assert_eq!(detail["event"]["data"]["phone"], "+48111");

    let (_, events) = t.get("/api/events?source=push&q=%2B48333").await;
    assert_eq!(events["events"].as_array().unwrap().len(), 1);
    let eid = events["events"][0]["id"].as_i64().unwrap();
    let (_, ev) = t.get(&format!("/api/events/{eid}")).await;
    assert_eq!(ev["runs"][0]["id"], ids[2]);
    let (_, rejected) = t.get("/api/events?status=rejected").await;
    assert!(rejected["events"].as_array().unwrap().is_empty());
}

fn urlencode(s: &str) -> String {
    s.replace('+', "%2B").replace(':', "%3A")
}

#[tokio::test]
async fn a_failed_run_and_a_failed_request_can_be_retried() {
    let (_c, t) = app().await;
    let sink = Sink::start().await;
    sink.set_default(503);
    let (_, b) = t
        .post("push", json!({"url": sink.url("/x"), "phone": "+1"}))
        .await;
    let run = t.runs_of(b["event_id"].as_i64().unwrap()).await[0].id;
    let failed = t.status_of(run, RunStatus::Failed).await;
    assert!(failed.error.unwrap().contains("after 2 attempts"));

    let (s, b) = t.post_api(&format!("/api/runs/{run}/cancel")).await;
    assert_eq!(s, 409, "{b}");
    sink.set_default(200);
    let (s, b) = t.post_api(&format!("/api/runs/{run}/retry")).await;
    assert_eq!(s, 200, "{b}");
    let done = t.status_of(run, RunStatus::Done).await;
    assert!(done
        .journal
        .iter()
        .any(|e| e["result"] == "retried by an operator"));
    let (s, _) = t.post_api(&format!("/api/runs/{run}/retry")).await;
    assert_eq!(s, 409);
    let (s, _) = t.post_api("/api/runs/424242/retry").await;
    assert_eq!(s, 404);

    // The same through the request itself.
    sink.set_default(503);
    let (_, b) = t
        .post("push", json!({"url": sink.url("/y"), "phone": "+2"}))
        .await;
    let run = t.runs_of(b["event_id"].as_i64().unwrap()).await[0].id;
    t.status_of(run, RunStatus::Failed).await;
    let (_, detail) = t.get(&format!("/api/runs/{run}")).await;
    let outbox = detail["requests"][0]["id"].as_i64().unwrap();
    assert_eq!(detail["requests"][0]["status"], "failed");
    sink.set_default(200);
    let (s, b) = t.post_api(&format!("/api/outbox/{outbox}/retry")).await;
    assert_eq!(s, 200, "{b}");
    t.status_of(run, RunStatus::Done).await;
    let (s, _) = t.post_api(&format!("/api/outbox/{outbox}/retry")).await;
    assert_eq!(s, 409);
    let (s, _) = t.post_api("/api/outbox/424242/retry").await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn scenarios_show_counters_and_can_be_switched_off_and_on() {
    let (cfg, t) = app().await;
    for _ in 0..2 {
        t.post("sleepy", json!({"n": 7})).await;
    }
    eventually(|| async {
        let (_, list) = t.get("/api/scenarios").await;
        let s = list
            .as_array()?
            .iter()
            .find(|s| s["id"] == "sleepy")?
            .clone();
        (s["stats"]["started"] == 1 && s["stats"]["limited"] == 1).then_some(s)
    })
    .await;
    let (_, list) = t.get("/api/scenarios").await;
    let sleepy = list
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "sleepy")
        .unwrap();
    assert_eq!(sleepy["stats"]["active"], 1);
    assert_eq!(sleepy["trigger"], "webhook:sleepy");
    assert!(sleepy["stats"]["last_fired"].as_i64().is_some());

    let (s, _) = t.post_api("/api/scenarios/gated/disable").await;
    assert_eq!(s, 200);
    t.api(Method::PUT, "/api/globals/open", Some(json!(true)))
        .await;
    let (_, b) = t.post("gated", json!({})).await;
    let id = b["event_id"].as_i64().unwrap();
    assert!(t.runs_of(id).await.is_empty());
    assert_eq!(
        t.app
            .store
            .event(id)
            .await
            .unwrap()
            .unwrap()
            .outcome
            .unwrap()[0]["verdict"],
        "disabled"
    );
    let (s, _) = t.post_api("/api/scenarios/nope/disable").await;
    assert_eq!(s, 404);

    // The switch survives a restart.
    let db = t.database.clone();
    t.app.stop().await;
    let t = TestApp::spawn_on(&cfg, &db).await;
    let (_, list) = t.get("/api/scenarios").await;
    let gated = list
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "gated")
        .unwrap();
    assert_eq!(gated["enabled"], false);
    t.post_api("/api/scenarios/gated/enable").await;
    let (_, b) = t.post("gated", json!({})).await;
    assert_eq!(t.runs_of(b["event_id"].as_i64().unwrap()).await.len(), 1);
}

#[tokio::test]
async fn globals_are_read_written_and_seen_by_guards() {
    let (_c, t) = app().await;
    let (_, b) = t.post("gated", json!({})).await;
    assert!(t.runs_of(b["event_id"].as_i64().unwrap()).await.is_empty());

    let (s, b) = t
        .api(Method::PUT, "/api/globals/open", Some(json!(true)))
        .await;
    assert_eq!(s, 200, "{b}");
    let (_, g) = t.get("/api/globals").await;
    assert_eq!(g["open"], true);
    let (_, b) = t.post("gated", json!({})).await;
    assert_eq!(t.runs_of(b["event_id"].as_i64().unwrap()).await.len(), 1);

    let (s, _) = t.api(Method::DELETE, "/api/globals/open", None).await;
    assert_eq!(s, 200);
    let (s, _) = t.api(Method::DELETE, "/api/globals/open", None).await;
    assert_eq!(s, 404);
    let (_, b) = t.post("gated", json!({})).await;
    assert!(t.runs_of(b["event_id"].as_i64().unwrap()).await.is_empty());
}

#[tokio::test]
async fn pending_timers_and_waits_are_listed_and_cancellable() {
    let (_c, t) = app().await;
    let (_, b) = t.post("sleepy", json!({"n": 1})).await;
    let sleeper = t.runs_of(b["event_id"].as_i64().unwrap()).await[0].id;
    let (_, b) = t.post("ask", json!({"n": 2})).await;
    let waiter = t.runs_of(b["event_id"].as_i64().unwrap()).await[0].id;
    t.status_of(sleeper, RunStatus::Sleeping).await;
    t.status_of(waiter, RunStatus::Waiting).await;

    let (_, page) = t.get("/api/timers").await;
    let timers = page["timers"].as_array().unwrap();
    assert_eq!(timers.len(), 2);
    assert!(timers
        .iter()
        .any(|x| x["run_id"] == sleeper && x["kind"] == "sleep" && x["key"] == "k"));
    assert!(timers
        .iter()
        .any(|x| x["run_id"] == waiter && x["kind"] == "wait_timeout"));
    assert_eq!(page["waits"][0]["run_id"], waiter);
    assert_eq!(page["waits"][0]["match_key"], "q:2");

    for id in [sleeper, waiter] {
        let (s, b) = t.post_api(&format!("/api/runs/{id}/cancel")).await;
        assert_eq!(s, 200, "{b}");
        t.status_of(id, RunStatus::Cancelled).await;
    }
    let (_, page) = t.get("/api/timers").await;
    assert!(page["timers"].as_array().unwrap().is_empty());
    assert!(page["waits"].as_array().unwrap().is_empty());
    t.advance(Duration::from_secs(7200));
    let (_, b) = t.post("answer", json!({"n": 2})).await;
    assert!(t.runs_of(b["event_id"].as_i64().unwrap()).await.is_empty());
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let (_c, t) = app().await;
    let (_, b) = t.post("sleepy", json!({"n": 3})).await;
    t.runs_of(b["event_id"].as_i64().unwrap()).await;
    t.post_with("push", "{oops", &[]).await;
    for base in [t.app.url(), t.app.admin_url()] {
        let r = t.http.get(format!("{base}/healthz")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let r = t.http.get(format!("{base}/readyz")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let b: serde_json::Value = r.json().await.unwrap();
        assert_eq!(
            (b["ready"].as_bool(), b["database"].as_str()),
            (Some(true), Some("ok"))
        );
    }
    let text = t
        .http
        .get(format!("{}/metrics", t.app.admin_url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for want in [
        "switchboard_events_total{kind=\"webhook\",outcome=\"accepted\"}",
        "switchboard_events_total{kind=\"webhook\",outcome=\"rejected\"}",
        "switchboard_runs{status=\"sleeping\"}",
        "switchboard_step_duration_seconds_bucket{action=\"sleep\"",
        "switchboard_outbox_depth",
    ] {
        assert!(text.contains(want), "missing {want} in\n{text}");
    }
    // The admin side is not on the public listener.
    let r = t
        .http
        .get(format!("{}/api/openapi.json", t.app.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn old_journal_rows_are_pruned_in_the_background() {
    let cfg = ConfigDir::with(FLOWS);
    cfg.write(
        "gateway.toml",
        "[defaults]\nretention = \"1h\"\n\n[channels.ops]\ntype = \"log\"\noutput = \"journal\"\n",
    );
    let t = TestApp::spawn(&cfg).await;
    let sink = Sink::start().await;
    let (_, b) = t
        .post("push", json!({"url": sink.url("/x"), "phone": "+9"}))
        .await;
    let old_event = b["event_id"].as_i64().unwrap();
    let done = t.finished(t.runs_of(old_event).await[0].id).await;
    let (_, b) = t.post("sleepy", json!({"n": 9})).await;
    let sleeping = t.runs_of(b["event_id"].as_i64().unwrap()).await[0].id;

    t.advance(Duration::from_secs(2 * 3600 + 60));
    eventually(|| async {
        t.app
            .store
            .run(done.id)
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    assert!(t.app.store.event(old_event).await.unwrap().is_none());
    assert!(t
        .app
        .store
        .outbox_for_run(done.id)
        .await
        .unwrap()
        .is_empty());
    // Unfinished work is never pruned: the sleeper woke up and finished instead.
    assert!(t.app.store.run(sleeping).await.unwrap().is_some());
}

#[tokio::test]
async fn the_journal_pages_keep_a_session_not_the_token_and_take_actions_only_from_themselves() {
    let cfg = ConfigDir::with(&[]);
    let t = TestApp::spawn(&cfg).await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let admin = t.app.admin_url();
    let r = client
        .post(format!("{admin}/ui/login"))
        .form(&[("token", ADMIN_TOKEN), ("next", "/ui/runs")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    let session = cookie
        .split(';')
        .next()
        .unwrap()
        .strip_prefix("switchboard_admin=")
        .unwrap()
        .to_string();
    assert_ne!(session, ADMIN_TOKEN);
    assert!(session.len() >= 32);
    assert!(
        cookie.contains("HttpOnly") && !cookie.contains("Secure"),
        "{cookie}"
    );
    let page = |value: String| {
        let client = client.clone();
        let admin = admin.clone();
        async move {
            client
                .get(format!("{admin}/ui/runs"))
                .header("cookie", format!("switchboard_admin={value}"))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(page(session.clone()).await, 200);
    // The raw token is no session.
    assert_eq!(page(ADMIN_TOKEN.to_string()).await, 303);
    // An action posted from elsewhere is refused; from the pages it goes through.
    let action = |origin: String| {
        let client = client.clone();
        let admin = admin.clone();
        let session = session.clone();
        async move {
            client
                .post(format!("{admin}/ui/scenarios/nothing/disable"))
                .header("cookie", format!("switchboard_admin={session}"))
                .header("origin", origin)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(action("https://evil.example".into()).await, 403);
    let own = action(admin.clone()).await;
    assert_ne!(own, 403, "from the pages' own origin");
}

#[tokio::test]
async fn session_cookies_are_secure_when_the_gateway_is_reached_over_https() {
    let cfg = ConfigDir::with(&[]);
    let mut gw = std::fs::read_to_string(cfg.dir().join("gateway.toml")).unwrap();
    gw = format!("[server]\npublic_url = \"https://switchboard.example\"\n\n{gw}");
    cfg.write("gateway.toml", &gw);
    let t = TestApp::spawn(&cfg).await;
    let r = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(format!("{}/ui/login", t.app.admin_url()))
        .form(&[("token", ADMIN_TOKEN)])
        .send()
        .await
        .unwrap();
    let cookie = r.headers()["set-cookie"].to_str().unwrap();
    assert!(cookie.contains("; Secure"), "{cookie}");
}
