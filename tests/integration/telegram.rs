//! Telegram through teloxide against the fake Bot API: polling and webhook inbound, sends
//! with HTML and URL buttons, per-chat and per-bot limits, 429 retry_after.

use std::time::Duration;

use serde_json::json;
use switchboard::store::RunFilter;

use crate::fake_telegram::{text_update, FakeTelegram, TOKEN};
use crate::support::*;

const ECHO: &str = r#"id = "echo"
on = { message = "tg" }
when = 'event.text != ""'
[[step]]
send = { to = "tg:{{ event.chat.id }}", template = "echo: <b>{{ event.text }}</b> ({{ event.lang }}{% if event.start_payload %}, start {{ event.start_payload }}{% endif %})" }
"#;

const NOTIFY: &str = r#"id = "notify"
on = { webhook = "notify" }
[[step]]
send = { to = "tg:{{ event.chat }}", template = "{{ event.text }}", buttons = [{ text = "Open", url = "https://crm.example/{{ event.n }}" }] }
"#;

fn gateway(fake: &FakeTelegram, extra: &str) -> String {
    format!(
        "[defaults]\nretry_delay = \"50ms\"\n\n[channels.tg]\ntype = \"telegram\"\ntoken = \"{TOKEN}\"\napi_url = \"{}\"\n{extra}\n",
        fake.url
    )
}

async fn echo_runs(t: &TestApp) -> usize {
    t.app
        .store
        .list_runs(&RunFilter {
            scenario: Some("echo".into()),
            limit: 500,
            ..Default::default()
        })
        .await
        .unwrap()
        .len()
}

#[tokio::test]
async fn polled_messages_start_runs_once_and_polling_resumes_from_the_stored_offset() {
    let fake = FakeTelegram::start().await;
    let cfg = ConfigDir::with(&[("echo.toml", ECHO)]);
    cfg.write("gateway.toml", &gateway(&fake, ""));
    let t = TestApp::spawn(&cfg).await;

    let first = fake.inject(text_update(500, 7, "ru", "hello"));
    let sent = fake.wait_for("sendMessage", 1).await;
    assert_eq!(sent[0].params["chat_id"], 500);
    assert_eq!(sent[0].params["text"], "echo: <b>hello</b> (ru)");
    assert_eq!(sent[0].params["parse_mode"], "HTML");
    assert!(!fake.calls("deleteWebhook").is_empty());

    // The same update again (Telegram redelivers after a lost acknowledgement): one run.
    let mut again = text_update(500, 7, "ru", "hello");
    again["update_id"] = json!(first);
    fake.inject(again);
    let second = fake.inject(text_update(501, 8, "en", "/start deal-42"));
    let sent = fake.wait_for("sendMessage", 2).await;
    assert_eq!(
        sent[1].params["text"],
        "echo: <b>/start deal-42</b> (en, start deal-42)"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(echo_runs(&t).await, 2);
    assert_eq!(fake.calls("sendMessage").len(), 2);

    // A restart continues after the last stored update.
    t.app.stop().await;
    let polls_before = fake.calls("getUpdates").len();
    let t = TestApp::spawn(&cfg).await;
    let polls = eventually(|| async {
        let p = fake.calls("getUpdates");
        (p.len() > polls_before).then_some(p)
    })
    .await;
    assert_eq!(polls[polls_before].params["offset"], second + 1);
    fake.inject(text_update(502, 9, "pl", "after"));
    fake.wait_for("sendMessage", 3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(echo_runs(&t).await, 3);
}

#[tokio::test]
async fn webhook_mode_checks_the_secret_and_stores_updates() {
    let fake = FakeTelegram::start().await;
    let cfg = ConfigDir::with(&[("echo.toml", ECHO)]);
    cfg.write(
        "gateway.toml",
        &gateway(&fake, "mode = \"webhook\"\nwebhook_secret = \"s3cret_1\"\n"),
    );
    let t = TestApp::spawn(&cfg).await;

    let set = fake.wait_for("setWebhook", 1).await;
    assert!(set[0].params["url"]
        .as_str()
        .unwrap()
        .ends_with("/telegram/tg"));
    assert_eq!(set[0].params["secret_token"], "s3cret_1");
    assert!(fake.calls("getUpdates").is_empty());

    let url = format!("{}/telegram/tg", t.app.url());
    let mut update = text_update(600, 1, "en", "via webhook");
    update["update_id"] = json!(77);
    let wrong = t
        .http
        .post(&url)
        .header("X-Telegram-Bot-Api-Secret-Token", "nope")
        .json(&update)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let missing = t.http.post(&url).json(&update).send().await.unwrap();
    assert_eq!(missing.status(), 401);
    let garbage = t
        .http
        .post(&url)
        .header("X-Telegram-Bot-Api-Secret-Token", "s3cret_1")
        .body("{\"update_id\": \"x\"")
        .send()
        .await
        .unwrap();
    assert_eq!(garbage.status(), 400);
    for _ in 0..2 {
        let ok = t
            .http
            .post(&url)
            .header("X-Telegram-Bot-Api-Secret-Token", "s3cret_1")
            .json(&update)
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status(), 200);
    }
    let sent = fake.wait_for("sendMessage", 1).await;
    assert_eq!(sent[0].params["text"], "echo: <b>via webhook</b> (en)");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(echo_runs(&t).await, 1);
    let r = t
        .http
        .post(format!("{}/telegram/other", t.app.url()))
        .json(&update)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn messages_carry_url_buttons() {
    let fake = FakeTelegram::start().await;
    let cfg = ConfigDir::with(&[("notify.toml", NOTIFY)]);
    cfg.write("gateway.toml", &gateway(&fake, ""));
    let t = TestApp::spawn(&cfg).await;
    t.post("notify", json!({"chat": -100, "text": "New deal", "n": 5}))
        .await;
    let sent = fake.wait_for("sendMessage", 1).await;
    assert_eq!(sent[0].params["chat_id"], -100);
    assert_eq!(
        sent[0].params["reply_markup"]["inline_keyboard"][0][0],
        json!({"text": "Open", "url": "https://crm.example/5"})
    );
}

#[tokio::test]
async fn sends_stay_within_chat_group_and_bot_limits_and_honour_retry_after() {
    let fake = FakeTelegram::start().await;
    let cfg = ConfigDir::with(&[("notify.toml", NOTIFY)]);
    cfg.write(
        "gateway.toml",
        &gateway(
            &fake,
            "limits = { chat = \"1/100ms\", group = \"5/1s\", bot = \"20/1s\" }\n",
        ),
    );
    let t = TestApp::spawn(&cfg).await;
    fake.throttle_next(7, 1);
    // 12 messages to one group, 2 to each of 15 private chats, 3 to the throttled chat.
    let mut posts = Vec::new();
    for n in 0..12 {
        posts.push(json!({"chat": -100, "text": format!("g{n}"), "n": n}));
    }
    for c in 1..=15 {
        for n in 0..2 {
            posts.push(json!({"chat": 1000 + c, "text": format!("p{n}"), "n": n}));
        }
    }
    for n in 0..3 {
        posts.push(json!({"chat": 7, "text": format!("t{n}"), "n": n}));
    }
    let total = posts.len();
    for p in posts {
        t.post("notify", p).await;
    }
    let calls = fake.wait_for("sendMessage", total + 1).await;
    let ok: Vec<_> = calls
        .iter()
        .filter(|c| c.params["chat_id"] != 7 || !fake_was_throttled(c, &calls))
        .collect();
    let at = |c: &crate::fake_telegram::Call| c.at;
    let by_chat = |chat: i64| -> Vec<std::time::Instant> {
        calls
            .iter()
            .filter(|c| c.params["chat_id"] == chat)
            .map(at)
            .collect()
    };
    // Per chat: at least 100 ms apart (a little slack for timer granularity).
    for chat in [-100, 1001, 1015] {
        for w in by_chat(chat).windows(2) {
            assert!(
                w[1] - w[0] >= Duration::from_millis(90),
                "chat {chat} too fast: {:?}",
                w[1] - w[0]
            );
        }
    }
    // The group: at most 5 in any one second.
    let group = by_chat(-100);
    for (i, start) in group.iter().enumerate() {
        let in_window = group[i..]
            .iter()
            .filter(|t| **t - *start < Duration::from_millis(950))
            .count();
        assert!(in_window <= 5, "{in_window} group messages within a second");
    }
    // The bot: at most 20 in any one second (plus the burst it starts with).
    let all: Vec<_> = ok.iter().map(|c| c.at).collect();
    for (i, start) in all.iter().enumerate() {
        let in_window = all[i..]
            .iter()
            .filter(|t| **t - *start < Duration::from_millis(950))
            .count();
        assert!(in_window <= 21, "{in_window} messages within a second");
    }
    // Private chats were not starved behind the group: all done before the group's last.
    let last_private = calls
        .iter()
        .filter(|c| c.params["chat_id"].as_i64().unwrap() > 1000)
        .map(at)
        .max()
        .unwrap();
    assert!(last_private < *group.last().unwrap());
    // The throttled chat waited at least retry_after after its 429, and lost nothing.
    let throttled = by_chat(7);
    assert_eq!(throttled.len(), 4);
    assert!(throttled[1] - throttled[0] >= Duration::from_millis(990));
    let texts: Vec<_> = calls
        .iter()
        .filter(|c| c.params["chat_id"] == 7)
        .map(|c| c.params["text"].clone())
        .collect();
    assert_eq!(
        texts,
        vec![json!("t0"), json!("t0"), json!("t1"), json!("t2")]
    );
}

fn fake_was_throttled(
    c: &crate::fake_telegram::Call,
    calls: &[crate::fake_telegram::Call],
) -> bool {
    // The first call to the throttled chat is the one answered 429.
    calls
        .iter()
        .find(|x| x.params["chat_id"] == 7)
        .is_some_and(|x| x.at == c.at)
}
