//! Webhooks end to end on the example configs: callbacks, guards and branches,
//! deduplication, and bad input.

use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;
use switchboard::store::RunStatus;

use crate::support::*;

#[tokio::test]
async fn a_form_webhook_calls_back_its_url_with_a_rendered_body() {
    let cfg = ConfigDir::examples();
    let t = TestApp::spawn(&cfg).await;
    let sink = Sink::start().await;

    let (status, body) = t
        .post(
            "form-submitted",
            json!({"first_name": "Ada", "last_name": "Lovelace", "email": "ada@example.com",
                   "form_id": 7, "callback_url": sink.url("/crm/leads")}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let runs = t.runs_of(body["event_id"].as_i64().unwrap()).await;
    assert_eq!(runs.len(), 1);
    let run = t.finished(runs[0].id).await;

    let got = sink.wait_for(1).await;
    assert_eq!(got[0].path, "/crm/leads");
    assert_eq!(
        got[0].body,
        json!({"name": "Ada Lovelace", "email": "ada@example.com", "source": "switchboard", "form_id": 7})
    );
    assert!(got[0].headers.get("idempotency-key").is_some());
    assert_eq!(run.status, RunStatus::Done);
    assert_eq!(run.vars["http"]["status"], 200);
    assert_eq!(run.vars["http"]["json"]["id"], "r-1");
    let msgs = t.messages(run.id).await;
    assert_eq!(msgs[0]["text"], "Callback delivered for Ada Lovelace.");
}

#[tokio::test]
async fn a_guard_picks_one_of_two_branches_and_records_what_it_saw() {
    let cfg = ConfigDir::examples();
    let t = TestApp::spawn(&cfg).await;

    let (_, small) = t
        .post(
            "crm-deal",
            json!({"deal": {"id": 1, "stage": "new", "title": "Pump", "budget": 900}}),
        )
        .await;
    let (_, big) = t
        .post(
            "crm-deal",
            json!({"deal": {"id": 2, "stage": "new", "title": "Boiler", "budget": 25000}}),
        )
        .await;
    let (_, old) = t
        .post(
            "crm-deal",
            json!({"deal": {"id": 3, "stage": "won", "title": "Old", "budget": 5}}),
        )
        .await;

    let small = t.runs_of(small["event_id"].as_i64().unwrap()).await;
    let big = t.runs_of(big["event_id"].as_i64().unwrap()).await;
    assert_eq!(
        t.messages(small[0].id).await[0]["text"],
        "New deal “Pump” with a budget of 900."
    );
    let big_msg = &t.messages(big[0].id).await[0];
    assert_eq!(big_msg["lang"], "pl");
    assert_eq!(
        big_msg["text"],
        "Duża transakcja „Boiler”: budżet 25000. Proszę zająć się nią osobiście."
    );

    // The big deal's message carries a single-use "Take it" link to the take-deal scenario.
    // The example gateway file names the public URL; the link's path is what the gateway serves.
    let take = big_msg["links"][0]["url"].as_str().unwrap();
    let path = take
        .strip_prefix("http://127.0.0.1:8080")
        .expect("the configured public URL");
    assert!(path.starts_with("/l/"), "{take}");
    let page = t
        .http
        .get(format!("{}{path}", t.app.url()))
        .header("user-agent", "Mozilla/5.0 Firefox/120")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let taken = eventually(|| async {
        let filter = switchboard::store::RunFilter {
            scenario: Some("take-deal".into()),
            limit: 5,
            ..Default::default()
        };
        let runs = t.app.store.list_runs(&filter).await.unwrap();
        runs.first().map(|r| r.id)
    })
    .await;
    let run = t.finished(taken).await;
    assert_eq!(run.subject.as_deref(), Some("deal:2"));
    assert_eq!(
        t.messages(taken).await[0]["text"],
        "The deal “Boiler” was taken (from 127.0.0.1)."
    );

    let old_id = old["event_id"].as_i64().unwrap();
    assert!(t.runs_of(old_id).await.is_empty());
    let ev = t.app.store.event(old_id).await.unwrap().unwrap();
    let verdict = &ev.outcome.unwrap()[0];
    assert_eq!(verdict["verdict"], "guard false");
    assert_eq!(verdict["seen"]["event.deal.stage"], "won");

    // The counter is a persisted global.
    let globals = eventually(|| async {
        let g = t.app.store.globals().await.unwrap();
        (g.get("deals_seen") == Some(&json!(2))).then_some(g)
    })
    .await;
    assert_eq!(globals["deals_seen"], 2);
}

#[tokio::test]
async fn the_same_delivery_twice_makes_one_run() {
    let cfg = ConfigDir::examples();
    let t = TestApp::spawn(&cfg).await;
    let body = json!({"deal": {"id": 9, "stage": "new", "title": "T", "budget": 1}}).to_string();

    let (s1, b1) = t
        .post_with("crm-deal", &body, &[("Idempotency-Key", "abc-1")])
        .await;
    let (s2, b2) = t
        .post_with("crm-deal", &body, &[("Idempotency-Key", "abc-1")])
        .await;
    assert_eq!((s1, s2), (202, 200));
    assert_eq!(b2["status"], "duplicate");
    assert_eq!(b1["event_id"], b2["event_id"]);
    assert_eq!(t.runs_of(b1["event_id"].as_i64().unwrap()).await.len(), 1);

    // The hook's configured body field deduplicates too.
    let with_id = json!({"event_id": "crm-77", "deal": {"id": 10, "stage": "new", "title": "T", "budget": 1}});
    let (a, _) = t.post("crm-deal", with_id.clone()).await;
    let (b, dup) = t.post("crm-deal", with_id).await;
    assert_eq!((a, b), (202, 200));
    assert_eq!(dup["status"], "duplicate");
    let counts = t.app.store.counts().await.unwrap();
    assert_eq!(counts.events, 2);
}

#[tokio::test]
async fn bad_input_gets_a_reason_and_is_journaled() {
    let cfg = ConfigDir::examples();
    let t = TestApp::spawn(&cfg).await;

    let (s, b) = t.post_with("crm-deal", r#"{"deal": {"id": 1,"#, &[]).await;
    assert_eq!(s, 400);
    assert!(
        b["error"].as_str().unwrap().starts_with("malformed JSON"),
        "{b}"
    );
    let ev = t
        .app
        .store
        .event(b["event_id"].as_i64().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ev.status, "rejected");
    assert!(ev.error.unwrap().contains("malformed JSON"));

    let (s, b) = t.post_with("crm-deal", "[1, 2]", &[]).await;
    assert_eq!(
        (s, b["error"].as_str().unwrap()),
        (400, "the body must be a JSON object")
    );

    let huge = format!(r#"{{"pad": "{}"}}"#, "x".repeat(2 << 20));
    let (s, b) = t.post_with("crm-deal", &huge, &[]).await;
    assert_eq!(s, 413);
    assert!(
        b["error"]
            .as_str()
            .unwrap()
            .contains("larger than the limit"),
        "{b}"
    );
    let ev = t
        .app
        .store
        .event(b["event_id"].as_i64().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ev.status, "rejected");

    let (s, b) = t.post("no-such-hook", json!({})).await;
    assert_eq!(
        (s, b["error"].as_str().unwrap()),
        (404, "unknown hook 'no-such-hook'")
    );

    // The payment hook needs an HMAC-SHA256 signature of the raw body.
    let body = json!({"cart_id": 5, "amount": 12}).to_string();
    let (s, b) = t
        .post_with("payment", &body, &[("X-Signature-256", "sha256=00ff")])
        .await;
    assert_eq!(s, 401);
    assert_eq!(
        b["error"],
        "signature in X-Signature-256 does not match the body"
    );
    let ev = t
        .app
        .store
        .event(b["event_id"].as_i64().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ev.status, "rejected");

    let mut mac = Hmac::<Sha256>::new_from_slice(PAYMENT_HOOK_SECRET.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    let sig = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    let (s, b) = t
        .post_with("payment", &body, &[("X-Signature-256", &sig)])
        .await;
    assert_eq!(s, 202, "{b}");
    let runs = t.runs_of(b["event_id"].as_i64().unwrap()).await;
    assert_eq!(t.finished(runs[0].id).await.status, RunStatus::Done);
}

#[tokio::test]
async fn a_hook_secret_header_is_checked() {
    let cfg = ConfigDir::with(&[(
        "s.toml",
        "id = \"s\"\non = { webhook = \"h\" }\n[[step]]\nstop = true\n",
    )]);
    cfg.write(
        "gateway.toml",
        "[hooks.h]\nsecret = { header = \"X-Token\", value = \"s3cret\" }\n",
    );
    let t = TestApp::spawn(&cfg).await;
    let (s, b) = t.post_with("h", "{}", &[]).await;
    assert_eq!(
        (s, b["error"].as_str().unwrap()),
        (401, "missing X-Token header")
    );
    let (s, b) = t.post_with("h", "{}", &[("X-Token", "guess")]).await;
    assert_eq!(
        (s, b["error"].as_str().unwrap()),
        (401, "wrong secret in X-Token")
    );
    let (s, _) = t.post_with("h", "{}", &[("X-Token", "s3cret")]).await;
    assert_eq!(s, 202);
}

#[tokio::test]
async fn form_bodies_become_event_fields() {
    let cfg = ConfigDir::with(&[(
        "s.toml",
        "id = \"s\"\non = { webhook = \"h\" }\nwhen = 'event.name == \"Ada\"'\n[[step]]\nset = { \"run.n\" = \"event.name\" }\n",
    )]);
    let t = TestApp::spawn(&cfg).await;
    let resp = t
        .http
        .post(format!("{}/hooks/h", t.app.url()))
        .form(&[("name", "Ada"), ("city", "London")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let b: serde_json::Value = resp.json().await.unwrap();
    let runs = t.runs_of(b["event_id"].as_i64().unwrap()).await;
    assert_eq!(t.finished(runs[0].id).await.vars["n"], "Ada");
}

#[tokio::test]
async fn the_example_telegram_channel_stays_off_without_a_token() {
    let cfg = ConfigDir::examples();
    let t = TestApp::spawn(&cfg).await;
    let r = t.readyz().await;
    assert_eq!(r["channels"]["tg"], "off (no token)");
    assert_eq!(r["channels"]["wa"], "off (no token)");
    assert_eq!(r["ready"], true);
    // A message for it fails at once, with the reason in the journal.
    let (_, b) = t
        .post(
            "call-rated",
            json!({"call_id": "c9", "operator": "Olga", "rating": 3}),
        )
        .await;
    let run = t.runs_of(b["event_id"].as_i64().unwrap()).await[0].id;
    let failed = eventually(|| async {
        let rows = t.app.store.outbox_for_run(run).await.unwrap();
        rows.into_iter()
            .find(|o| o.channel == "tg" && o.status == "failed")
    })
    .await;
    assert_eq!(
        failed.last_error.as_deref(),
        Some("channel 'tg' is off: no token")
    );
}

#[tokio::test]
async fn idempotency_keys_name_one_request() {
    let cfg = ConfigDir::with(&[(
        "order.toml",
        "id = \"order\"\non = { webhook = \"order\" }\n[[step]]\nstop = true\n",
    )]);
    let mut gw = std::fs::read_to_string(cfg.dir().join("gateway.toml")).unwrap();
    gw.push_str("\n[hooks.order]\nidempotency_field = \"id\"\n");
    cfg.write("gateway.toml", &gw);
    let t = TestApp::spawn(&cfg).await;

    // An empty or non-ASCII key is refused, not taken as a key.
    for bad in ["", " ", "clé"] {
        let (status, body) = t
            .post_with("order", r#"{"n": 1}"#, &[("Idempotency-Key", bad)])
            .await;
        assert_eq!(status, 400, "{bad:?}: {body}");
        assert!(body["error"].as_str().unwrap().contains("Idempotency-Key"));
    }
    let long = "k".repeat(300);
    let (status, _) = t
        .post_with("order", r#"{"n": 1}"#, &[("Idempotency-Key", &long)])
        .await;
    assert_eq!(status, 400);

    // The same key with the same body is a repeat; with another body, a conflict.
    let key = [("Idempotency-Key", "k-1")];
    assert_eq!(t.post_with("order", r#"{"n": 1}"#, &key).await.0, 202);
    let (status, body) = t.post_with("order", r#"{ "n" : 1 }"#, &key).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("duplicate")));
    let (status, body) = t.post_with("order", r#"{"n": 2}"#, &key).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("different body"));

    // A header key and a body field never collide, nor do 5 and "5".
    assert_eq!(
        t.post_with("order", r#"{"x": 1}"#, &[("Idempotency-Key", "5")])
            .await
            .0,
        202
    );
    assert_eq!(t.post("order", json!({"id": 5})).await.0, 202);
    assert_eq!(t.post("order", json!({"id": "5"})).await.0, 202);
    assert_eq!(t.post("order", json!({"id": "5"})).await.0, 200);
    let (status, body) = t.post("order", json!({"id": ""})).await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test]
async fn a_flood_of_bad_requests_is_journaled_only_up_to_a_budget() {
    let cfg = ConfigDir::with(&[(
        "order.toml",
        "id = \"order\"\non = { webhook = \"order\" }\n[[step]]\nstop = true\n",
    )]);
    let t = TestApp::spawn(&cfg).await;
    let started = std::time::Instant::now();
    let mut journaled = 0u64;
    for _ in 0..400 {
        let (status, body) = t.post_with("order", "{\"broken\": ", &[]).await;
        assert_eq!(status, 400);
        assert!(body["error"].as_str().unwrap().contains("malformed JSON"));
        if body["event_id"].is_i64() {
            journaled += 1;
        }
    }
    // The budget: a burst, then a steady rate for the time the flood took.
    let budget = switchboard::http::RejectionBudget::BURST as u64
        + switchboard::http::RejectionBudget::PER_SECOND as u64 * (started.elapsed().as_secs() + 1);
    assert!(journaled >= switchboard::http::RejectionBudget::BURST as u64);
    assert!(
        journaled <= budget,
        "{journaled} journaled, budget {budget}"
    );
    assert!(journaled < 400, "the rest are only counted");
    let (_, page) = t.get("/api/events?status=rejected&limit=500").await;
    assert_eq!(
        page["events"].as_array().map(Vec::len),
        Some(journaled as usize)
    );
}

fn signed(secret: &str, signed_text: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(signed_text.as_bytes());
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[tokio::test]
async fn a_captured_signed_request_cannot_be_replayed() {
    let cfg = ConfigDir::with(&[(
        "pay.toml",
        "id = \"pay\"\non = { webhook = \"pay\" }\n[[step]]\nstop = true\n",
    )]);
    let mut gw = std::fs::read_to_string(cfg.dir().join("gateway.toml")).unwrap();
    gw.push_str("\n[hooks.pay]\nhmac = { secret = \"k3y\", timestamp_header = \"X-Timestamp\", tolerance = \"5m\" }\n");
    cfg.write("gateway.toml", &gw);
    let t = TestApp::spawn(&cfg).await;
    let body = r#"{"cart": 1, "amount": 5}"#;
    let now = t.app.clock.now_ms() / 1000;
    let ts = now.to_string();
    let sig = signed("k3y", &format!("{ts}.{body}"));
    let send = |key: &'static str, ts: String, sig: String| {
        let t = &t;
        async move {
            t.post_with(
                "pay",
                body,
                &[
                    ("X-Signature-256", &sig),
                    ("X-Timestamp", &ts),
                    ("Idempotency-Key", key),
                ],
            )
            .await
        }
    };
    let (status, first) = send("a", ts.clone(), sig.clone()).await;
    assert_eq!(status, 202, "{first}");
    // The same signed request with a fresh Idempotency-Key is the same request.
    let (status, again) = send("b", ts.clone(), sig.clone()).await;
    assert_eq!((status, again["status"].as_str()), (200, Some("duplicate")));
    assert_eq!(again["event_id"], first["event_id"]);
    // A changed timestamp breaks the signature; an old one is refused even if signed.
    let (status, r) = send("c", (now + 1).to_string(), sig.clone()).await;
    assert_eq!(status, 401, "{r}");
    let old = (now - 3600).to_string();
    let (status, r) = send("d", old.clone(), signed("k3y", &format!("{old}.{body}"))).await;
    assert_eq!(status, 401, "{r}");
    assert!(r["error"].as_str().unwrap().contains("X-Timestamp"), "{r}");
}
