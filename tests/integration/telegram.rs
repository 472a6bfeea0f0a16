//! Telegram through teloxide against the fake Bot API: polling and webhook inbound, sends
//! with HTML and URL buttons, per-chat and per-bot limits, 429 retry_after.

use std::time::Duration;

use serde_json::json;
use switchboard::store::{EventRow, RunStatus};

use crate::fake_telegram::{text_update, texts_eventually, texts_to, FakeTelegram, TOKEN};
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
    let ready = t.readyz().await;
    assert_eq!(
        (ready["channels"]["tg"].as_str(), ready["ready"].as_bool()),
        (Some("ok"), Some(true))
    );

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
    // The repeated update, had it been stored, came before the second one: once the engine
    // is through the second, every run has started, and once their messages are delivered,
    // none goes out again.
    let events = processed_through(&t, "tg", "update_id", second).await;
    assert_eq!(events.len(), 2, "the repeated update is stored once");
    let runs = runs_of_scenario(&t, "echo").await;
    assert_eq!(runs.len(), 2);
    for run in runs {
        settled_outbox(&t, run).await;
    }
    assert_eq!(fake.calls("sendMessage").len(), 2);

    // A restart continues after the last stored update.
    let db = t.database.clone();
    t.app.stop().await;
    let polls_before = fake.calls("getUpdates").len();
    let t = TestApp::spawn_on(&cfg, &db).await;
    let polls = eventually(|| async {
        let p = fake.calls("getUpdates");
        (p.len() > polls_before).then_some(p)
    })
    .await;
    assert_eq!(polls[polls_before].params["offset"], second + 1);
    let third = fake.inject(text_update(502, 9, "pl", "after"));
    fake.wait_for("sendMessage", 3).await;
    let events = processed_through(&t, "tg", "update_id", third).await;
    assert_eq!(
        events.len(),
        3,
        "no update is stored again after the restart"
    );
    let runs = runs_of_scenario(&t, "echo").await;
    assert_eq!(runs.len(), 3);
    for run in runs {
        settled_outbox(&t, run).await;
    }
    assert_eq!(fake.calls("sendMessage").len(), 3);
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
    // Each post was answered once its update was stored: when that event is processed, every
    // run the two posts could start has started.
    let events = processed_through(&t, "tg", "update_id", 77).await;
    assert_eq!(events.len(), 1, "the repeated update is stored once");
    assert_eq!(runs_of_scenario(&t, "echo").await.len(), 1);
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
            "limits = { chat = \"1/100ms\", group = \"20/1s\", bot = \"100/1s\" }\n",
        ),
    );
    let t = TestApp::spawn(&cfg).await;
    fake.throttle_next(7, 1);
    // 100 messages to one group, 100 to 50 private chats, 3 to the throttled chat.
    let mut posts = Vec::new();
    for n in 0..100 {
        posts.push(json!({"chat": -100, "text": format!("g{n}"), "n": n}));
    }
    for c in 1..=50 {
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
    for chat in [-100, 1001, 1050] {
        for w in by_chat(chat).windows(2) {
            assert!(
                w[1] - w[0] >= Duration::from_millis(90),
                "chat {chat} too fast: {:?}",
                w[1] - w[0]
            );
        }
    }
    // The group: at most 20 in any one second.
    let group = by_chat(-100);
    assert_eq!(group.len(), 100);
    for (i, start) in group.iter().enumerate() {
        let in_window = group[i..]
            .iter()
            .filter(|t| **t - *start < Duration::from_millis(990))
            .count();
        assert!(
            in_window <= 20,
            "{in_window} group messages within a second"
        );
    }
    // The bot: at most 100 in any one second. The bot-wide pace is taken when a send starts,
    // so one request delayed on its way may land in the next second's window.
    let all: Vec<_> = ok.iter().map(|c| c.at).collect();
    for (i, start) in all.iter().enumerate() {
        let in_window = all[i..]
            .iter()
            .filter(|t| **t - *start < Duration::from_millis(990))
            .count();
        assert!(in_window <= 101, "{in_window} messages within a second");
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

const CONFIRM: &str = r#"id = "confirm"
on = { webhook = "booked" }
subject = "appointment:{{ event.id }}"
[[step]]
ask = { to = "tg:{{ event.chat }}", template = "Reply 1 to confirm, 2 to reschedule, 3 to cancel", retry_text = "confirm-only-digit", choices = ["1", "2", "3"], retries = 2, timeout = "24h" }
branch = { "1" = "confirmed", "2" = "reschedule", exhausted = "handover", timeout = "no-answer" }
[[step]]
send = { to = "tg:{{ event.chat }}", template = "cancelled" }
stop = true
[[step]]
label = "confirmed"
send = { to = "tg:{{ event.chat }}", template = "confirmed after {{ run.answer.attempts }} tries" }
stop = true
[[step]]
label = "reschedule"
send = { to = "tg:{{ event.chat }}", template = "rescheduling" }
stop = true
[[step]]
label = "handover"
send = { to = "tg:{{ event.owner }}", template = "please take over {{ meta.subject }} (last reply: {{ run.answer.text }})" }
stop = true
[[step]]
label = "no-answer"
send = { to = "tg:{{ event.owner }}", template = "no answer for {{ meta.subject }}" }
"#;

async fn ask_app(fake: &FakeTelegram) -> (ConfigDir, TestApp) {
    let cfg = ConfigDir::with(&[("confirm.toml", CONFIRM)]);
    cfg.write("gateway.toml", &gateway(fake, ""));
    let t = TestApp::spawn(&cfg).await;
    (cfg, t)
}

#[tokio::test]
async fn ask_re_asks_after_wrong_answers_then_takes_the_right_one() {
    let fake = FakeTelegram::start().await;
    let (_cfg, t) = ask_app(&fake).await;
    t.post("booked", json!({"id": 1, "chat": 301, "owner": 900}))
        .await;
    texts_eventually(&fake, 301, 1).await;
    fake.inject(text_update(301, 5, "en", "yes, I think so"));
    texts_eventually(&fake, 301, 2).await;
    fake.inject(text_update(301, 5, "en", "maybe"));
    texts_eventually(&fake, 301, 3).await;
    fake.inject(text_update(301, 5, "en", " 1. "));
    let texts = texts_eventually(&fake, 301, 4).await;
    assert_eq!(
        texts,
        vec![
            "Reply 1 to confirm, 2 to reschedule, 3 to cancel",
            "Please answer with just one digit: 1, 2 or 3.",
            "Please answer with just one digit: 1, 2 or 3.",
            "confirmed after 3 tries",
        ]
    );
    assert!(texts_to(&fake, 900).is_empty());
}

#[tokio::test]
async fn ask_hands_over_after_the_retries_and_on_timeout() {
    let fake = FakeTelegram::start().await;
    let (_cfg, t) = ask_app(&fake).await;
    t.post("booked", json!({"id": 2, "chat": 302, "owner": 900}))
        .await;
    t.post("booked", json!({"id": 3, "chat": 303, "owner": 901}))
        .await;
    texts_eventually(&fake, 302, 1).await;
    texts_eventually(&fake, 303, 1).await;
    for (n, reply) in ["a", "b", "c"].iter().enumerate() {
        fake.inject(text_update(302, 6, "en", reply));
        texts_eventually(&fake, 302, (n + 2).min(3)).await;
        if n == 2 {
            break;
        }
    }
    let owner = texts_eventually(&fake, 900, 1).await;
    assert_eq!(
        owner,
        vec!["please take over appointment:2 (last reply: c)"]
    );
    assert_eq!(texts_to(&fake, 302).len(), 3);

    // Chat 303 never answers: a day later its owner hears about it.
    t.advance(Duration::from_secs(25 * 3600));
    let owner = texts_eventually(&fake, 901, 1).await;
    assert_eq!(owner, vec!["no answer for appointment:3"]);
}

#[tokio::test]
async fn replies_go_to_the_oldest_asking_run_of_that_chat() {
    let fake = FakeTelegram::start().await;
    let (_cfg, t) = ask_app(&fake).await;
    let mut runs = Vec::new();
    for (n, id) in [10, 11, 12].into_iter().enumerate() {
        let (_, b) = t
            .post("booked", json!({"id": id, "chat": 304, "owner": 900}))
            .await;
        runs.push(t.runs_of(b["event_id"].as_i64().unwrap()).await[0].id);
        texts_eventually(&fake, 304, n + 1).await;
    }
    let elsewhere = fake.inject(text_update(999, 1, "en", "2"));

    // Each reply goes to the oldest run still asking; the younger ones keep waiting.
    let replies = [
        ("2", "rescheduling"),
        ("3", "cancelled"),
        ("1", "confirmed after 1 tries"),
    ];
    for (n, (reply, _)) in replies.iter().enumerate() {
        let update = fake.inject(text_update(304, 6, "en", reply));
        let events = processed_through(&t, "tg", "update_id", update).await;
        let verdict = &update_event(&events, update).outcome.as_ref().unwrap()[0];
        assert_eq!(verdict["verdict"], "answered an ask", "{verdict}");
        assert_eq!(verdict["run"], runs[n], "reply {reply:?}");
        let done = t.finished(runs[n]).await;
        assert_eq!(done.status, RunStatus::Done);
        assert_eq!(done.vars["answer"]["text"], *reply);
        assert_eq!(done.vars["answer"]["attempts"], 1);
        for younger in &runs[n + 1..] {
            let r = t.app.store.run(*younger).await.unwrap().unwrap();
            assert_eq!(r.status, RunStatus::Waiting, "run {younger}");
            assert_eq!(r.vars["answer"]["attempts"], 0, "run {younger}");
            assert!(r.vars["answer"].get("text").is_none(), "run {younger}");
        }
    }
    let texts = texts_eventually(&fake, 304, 6).await;
    let mut want = vec!["Reply 1 to confirm, 2 to reschedule, 3 to cancel"; 3];
    want.extend(replies.iter().map(|(_, outcome)| *outcome));
    assert_eq!(texts, want);

    // The message from a chat nobody asked went nowhere.
    let events = processed_through(&t, "tg", "update_id", elsewhere).await;
    assert_eq!(
        update_event(&events, elsewhere).outcome,
        Some(json!([{"verdict": "no scenario listens to this event"}]))
    );
    assert!(texts_to(&fake, 999).is_empty());
}

const DISTRIBUTE: &str = r#"id = "distribute"
on = { webhook = "deal" }
subject = "deal:{{ event.id }}"
[[step]]
offer = { to = "tg:-500", template = "New deal <b>{{ event.id }}</b>", buttons = [{ id = "accept", text = "Accept" }, { id = "decline", text = "Decline", decline = true }], who = "{{ event.who }}", timeout = "10m", links = [{ text = "Open in CRM", url = "https://crm.example/deals/{{ event.id }}" }] }
branch = { timeout = "escalate" }
[[step]]
send = { to = "ops", template = "{{ run.claim.name }} took deal {{ event.id }}" }
stop = true
[[step]]
label = "escalate"
send = { to = "tg:777", template = "nobody took deal {{ event.id }}" }
"#;

async fn offer_app(fake: &FakeTelegram, who: &str, extra: &str) -> (ConfigDir, TestApp) {
    let cfg = ConfigDir::with(&[(
        "distribute.toml",
        &DISTRIBUTE.replace("\"{{ event.who }}\"", who),
    )]);
    cfg.write(
        "gateway.toml",
        &format!(
            "{}\n[channels.ops]\ntype = \"log\"\noutput = \"journal\"\n\n[[staff]]\nid = \"elena\"\nname = \"Elena\"\nids = {{ telegram = \"42\" }}\n\n[[staff]]\nid = \"marek\"\nname = \"Marek\"\nids = {{ telegram = \"43\" }}\n",
            gateway(fake, extra)
        ),
    );
    let t = TestApp::spawn(&cfg).await;
    (cfg, t)
}

/// The offer message's callback data for each button, and its message id.
async fn posted_offer(fake: &FakeTelegram) -> (Vec<String>, i64) {
    let sent = fake.wait_for("sendMessage", 1).await;
    // The offer's buttons on the first row, its links below.
    let link = &sent[0].params["reply_markup"]["inline_keyboard"][1][0];
    assert!(link["url"]
        .as_str()
        .unwrap()
        .starts_with("https://crm.example/deals/"));
    let kb = &sent[0].params["reply_markup"]["inline_keyboard"][0];
    let data = kb
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["callback_data"].as_str().unwrap().to_string())
        .collect();
    (data, sent[0].message_id.unwrap())
}

async fn contended_clicks(webhook: bool) {
    let fake = FakeTelegram::start().await;
    let extra = if webhook {
        "mode = \"webhook\"\nwebhook_secret = \"s3cret\"\n"
    } else {
        ""
    };
    let (_cfg, t) = offer_app(&fake, "\"any\"", extra).await;
    let (_, b) = t.post("deal", json!({"id": 42})).await;
    let run = t.runs_of(b["event_id"].as_i64().unwrap()).await[0].id;
    let (data, message_id) = posted_offer(&fake).await;
    assert!(data[0].len() <= 64);

    let clicks: Vec<_> = (1..=200)
        .map(|u| {
            crate::fake_telegram::click_update(
                -500,
                10_000 + u,
                &format!("User{u}"),
                &data[0],
                message_id,
            )
        })
        .collect();
    // A message after the clicks, delivered the same way: once the engine is through it, it
    // is through every click, and through the repeated update had that been stored.
    let marker = text_update(1, 1, "en", "after the clicks");
    let marker = if webhook {
        let url = format!("{}/telegram/tg", t.app.url());
        let post = |update: serde_json::Value| {
            let req = t
                .http
                .post(&url)
                .header("X-Telegram-Bot-Api-Secret-Token", "s3cret")
                .json(&update);
            async move { req.send().await.unwrap().status().as_u16() }
        };
        let posts = clicks.iter().enumerate().map(|(i, c)| {
            let mut c = c.clone();
            c["update_id"] = json!(5000 + i);
            post(c)
        });
        let statuses = futures::future::join_all(posts).await;
        assert!(statuses.iter().all(|s| *s == 200));
        let id = 5000 + clicks.len() as i64;
        let mut marker = marker;
        marker["update_id"] = json!(id);
        assert_eq!(post(marker).await, 200);
        id
    } else {
        let first = fake.inject(clicks[0].clone());
        for c in &clicks[1..] {
            fake.inject(c.clone());
        }
        // The same update twice is one click.
        let mut dup = clicks[0].clone();
        dup["update_id"] = json!(first);
        fake.inject(dup);
        fake.inject(marker)
    };
    fake.wait_for("answerCallbackQuery", 200).await;
    let events = processed_through(&t, "tg", "update_id", marker).await;
    assert_eq!(
        events.iter().filter(|e| e.kind == "click").count(),
        200,
        "one event per click"
    );
    // Every answer is delivered or given up on: none goes out again.
    let rows = settled_outbox(&t, run).await;
    assert_eq!(
        rows.iter().filter(|o| o.request["op"] == "answer").count(),
        200
    );
    let answers = fake.calls("answerCallbackQuery");
    assert_eq!(answers.len(), 200, "every click answered once");
    let mut ids: Vec<_> = answers
        .iter()
        .map(|a| a.params["callback_query_id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 200);
    let won: Vec<_> = answers
        .iter()
        .filter(|a| a.params["text"] == "It is yours.")
        .collect();
    assert_eq!(won.len(), 1);
    let done = t.finished(run).await;
    let winner = done.vars["claim"]["name"].as_str().unwrap().to_string();
    let taken = answers
        .iter()
        .filter(|a| a.params["text"] == format!("Already taken by {winner}."))
        .count();
    assert_eq!(taken, 199);
    // The offer's message is edited once, at the group's pace after it was posted.
    let edits = fake.wait_for("editMessageText", 1).await;
    let queued = t.messages(run).await;
    assert_eq!(queued.iter().filter(|m| m["op"] == "edit").count(), 1);
    assert_eq!(
        edits[0].params["text"],
        format!("New deal <b>42</b>\n\n✅ <b>{winner}</b>")
    );
    assert!(edits[0].params.get("reply_markup").is_none());
    let messages = t.messages(run).await;
    assert!(messages
        .iter()
        .any(|m| m["text"] == format!("{winner} took deal 42")));
}

#[tokio::test]
async fn the_first_of_200_clicks_wins_when_polling() {
    contended_clicks(false).await;
}

#[tokio::test]
async fn the_first_of_200_clicks_wins_through_the_webhook() {
    contended_clicks(true).await;
}

#[tokio::test]
async fn staff_only_offers_refuse_others_and_decline_keeps_them_open() {
    let fake = FakeTelegram::start().await;
    let (_cfg, t) = offer_app(&fake, "\"staff\"", "").await;
    let (_, b) = t.post("deal", json!({"id": 7})).await;
    let run = t.runs_of(b["event_id"].as_i64().unwrap()).await[0].id;
    let (data, mid) = posted_offer(&fake).await;
    // Each click is processed before the next one is sent; answers go out in parallel, so
    // they are matched to their clicks by callback id.
    let clicks = [
        (99, "Stranger", data[0].clone(), "You cannot take this."),
        (42, "Elena", data[1].clone(), "Declined."),
        (42, "Elena", data[0].clone(), "You declined this offer."),
        (43, "Marek", data[0].clone(), "It is yours."),
    ];
    let mut expected = Vec::new();
    for (user, name, d, answer) in &clicks {
        let u = crate::fake_telegram::click_update(-500, *user, name, d, mid);
        expected.push((
            u["callback_query"]["id"].as_str().unwrap().to_string(),
            *answer,
        ));
        let update = fake.inject(u);
        processed_through(&t, "tg", "update_id", update).await;
    }
    let answer_of = |answers: &[crate::fake_telegram::Call], id: &str| {
        answers
            .iter()
            .find(|a| a.params["callback_query_id"] == id)
            .map(|a| a.params.clone())
            .unwrap()
    };
    let answers = fake.wait_for("answerCallbackQuery", 4).await;
    for (id, want) in &expected {
        assert_eq!(answer_of(&answers, id)["text"], *want, "answer to {id}");
    }
    assert_eq!(answer_of(&answers, &expected[0].0)["show_alert"], true);
    let done = t.finished(run).await;
    assert_eq!(done.vars["claim"]["name"], "Marek");
    assert_eq!(done.vars["claim"]["staff"]["id"], "marek");
    assert_eq!(done.vars["claim"]["button"], "accept");
    // Clicks on a finished offer or an unknown button are still answered.
    let late = [
        (data[0].clone(), "Already taken by Marek."),
        ("o:999999:0".to_string(), "This button is no longer active."),
        ("garbage".to_string(), "This button is no longer active."),
    ];
    let mut ids = Vec::new();
    for (d, want) in &late {
        let u = crate::fake_telegram::click_update(-500, 42, "Elena", d, mid);
        ids.push((
            u["callback_query"]["id"].as_str().unwrap().to_string(),
            *want,
        ));
        fake.inject(u);
    }
    let answers = fake.wait_for("answerCallbackQuery", 7).await;
    for (id, want) in &ids {
        assert_eq!(answer_of(&answers, id)["text"], *want);
    }
}

#[tokio::test]
async fn an_offer_nobody_takes_escalates_after_its_timeout() {
    let fake = FakeTelegram::start().await;
    let (_cfg, t) = offer_app(&fake, "\"any\"", "").await;
    let (_, b) = t.post("deal", json!({"id": 8})).await;
    let run = t.runs_of(b["event_id"].as_i64().unwrap()).await[0].id;
    let (data, mid) = posted_offer(&fake).await;
    t.advance(Duration::from_secs(11 * 60));
    let texts = texts_eventually(&fake, 777, 1).await;
    assert_eq!(texts, vec!["nobody took deal 8"]);
    let done = t.finished(run).await;
    assert_eq!(done.vars["claim"]["timed_out"], true);
    let edits = fake.wait_for("editMessageText", 1).await;
    assert_eq!(edits[0].params["text"], "New deal <b>8</b>\n\n⌛");
    fake.inject(crate::fake_telegram::click_update(
        -500, 5, "Late", &data[0], mid,
    ));
    let answers = fake.wait_for("answerCallbackQuery", 1).await;
    assert_eq!(answers[0].params["text"], "This offer has expired.");
}

/// The example configs with their Telegram channel pointed at the fake.
async fn examples_on(fake: &FakeTelegram) -> (ConfigDir, TestApp) {
    let cfg = ConfigDir::examples();
    let gw = std::fs::read_to_string(cfg.dir().join("gateway.toml")).unwrap();
    let gw = gw
        .replace("${TELEGRAM_TOKEN:-}", TOKEN)
        .replace("${TELEGRAM_API_URL:-https://api.telegram.org}", &fake.url);
    cfg.write("gateway.toml", &gw);
    let t = TestApp::spawn(&cfg).await;
    (cfg, t)
}

#[tokio::test]
async fn example_deal_distribution_first_click_wins_and_tells_the_crm() {
    let fake = FakeTelegram::start().await;
    let (_cfg, t) = examples_on(&fake).await;
    let crm = Sink::start().await;
    let (_, b) = t
        .post(
            "crm-deal",
            json!({"deal": {"id": 42, "stage": "distribution", "title": "Boiler", "budget": 25000},
            "callback_url": crm.url("/owner")}),
        )
        .await;
    let run = t.runs_of(b["event_id"].as_i64().unwrap()).await[0].id;
    let sent = fake.wait_for("sendMessage", 1).await;
    assert_eq!(sent[0].params["chat_id"], -1001);
    assert_eq!(
        sent[0].params["text"],
        "New deal “Boiler”, budget 25000. Who takes it?"
    );
    let accept = sent[0].params["reply_markup"]["inline_keyboard"][0][0]["callback_data"]
        .as_str()
        .unwrap()
        .to_string();
    fake.inject(crate::fake_telegram::click_update(
        -1001, 99, "Stranger", &accept, 1,
    ));
    fake.wait_for("answerCallbackQuery", 1).await;
    fake.inject(crate::fake_telegram::click_update(
        -1001, 1001, "Лена", &accept, 1,
    ));
    let done = t.finished(run).await;
    assert_eq!(done.vars["claim"]["name"], "Elena");
    let got = crm.wait_for(1).await;
    assert_eq!(got[0].body, json!({"deal": 42, "owner": "u-17"}));
    assert!(t
        .messages(run)
        .await
        .iter()
        .any(|m| m["text"] == "The deal “Boiler” went to Elena."));
    let answers = fake.wait_for("answerCallbackQuery", 2).await;
    assert!(answers
        .iter()
        .any(|a| a.params["text"] == "You cannot take this."));
}

#[tokio::test]
async fn example_deal_distribution_escalates_to_the_head_of_sales_in_polish() {
    let fake = FakeTelegram::start().await;
    let (_cfg, t) = examples_on(&fake).await;
    t.post(
        "crm-deal",
        json!({"deal": {"id": 43, "stage": "distribution", "title": "Kiln", "budget": 10}}),
    )
    .await;
    fake.wait_for("sendMessage", 1).await;
    t.advance(Duration::from_secs(11 * 60));
    let dm = texts_eventually(&fake, 1002, 1).await;
    assert_eq!(
        dm,
        vec!["Przez 10 minut nikt nie wziął transakcji „Kiln”; proszę ją przydzielić."]
    );
}

#[tokio::test]
async fn example_appointment_confirmation_hands_over_to_the_owner_after_two_retries() {
    let fake = FakeTelegram::start().await;
    let (_cfg, t) = examples_on(&fake).await;
    t.post(
        "appointment-telegram",
        json!({"id": 9, "chat_id": 555, "lang": "ru", "time": "пт 10:00", "owner": "elena"}),
    )
    .await;
    let q = texts_eventually(&fake, 555, 1).await;
    assert_eq!(
        q[0],
        "Ваша запись на пт 10:00. Ответьте 1 для подтверждения, 2 чтобы перенести, 3 для отмены."
    );
    for (n, reply) in ["да", "наверное", "?"].iter().enumerate() {
        fake.inject(text_update(555, 77, "ru", reply));
        if n < 2 {
            let texts = texts_eventually(&fake, 555, n + 2).await;
            assert_eq!(
                texts[n + 1],
                "Пожалуйста, ответьте одной цифрой: 1, 2 или 3."
            );
        }
    }
    let owner = texts_eventually(&fake, 1001, 1).await;
    assert_eq!(
        owner,
        vec!["Нет понятного ответа по записи 9 (последний ответ: «?»); возьмите чат на себя."]
    );
}

#[tokio::test]
async fn example_rating_alert_reaches_each_supervisor_in_their_language() {
    let fake = FakeTelegram::start().await;
    let (_cfg, t) = examples_on(&fake).await;
    let (_, high) = t
        .post(
            "call-rated",
            json!({"call_id": "c1", "operator": "Olga", "rating": 5}),
        )
        .await;
    assert!(t
        .runs_of(high["event_id"].as_i64().unwrap())
        .await
        .is_empty());
    t.post(
        "call-rated",
        json!({"call_id": "c2", "operator": "Olga", "rating": 2}),
    )
    .await;
    assert_eq!(
        texts_eventually(&fake, 1003, 1).await,
        vec!["Operator Olga got a rating of 2 (call c2)."]
    );
    assert_eq!(
        texts_eventually(&fake, 1002, 1).await,
        vec!["Operator Olga dostał ocenę 2 (rozmowa c2)."]
    );
    assert!(texts_to(&fake, 1001).is_empty());
}

#[tokio::test]
async fn ask_shows_reply_buttons_and_accepts_a_pattern_and_replies_quote_the_message() {
    let fake = FakeTelegram::start().await;
    let flow = r#"id = "code"
on = { webhook = "code" }
[[step]]
ask = { to = "tg:{{ event.chat }}", template = "Your booking code?", buttons = ["Skip"], pattern = '^[A-Z]-\d+$', choices = ["skip"], retries = 1 }
[[step]]
send = { to = "tg:{{ event.chat }}", template = "code {{ run.answer.text }}" }
"#;
    let echo = r#"id = "quote"
on = { message = "tg" }
when = 'event.text == "quote me"'
[[step]]
send = { to = "tg:{{ event.chat.id }}", template = "quoted", reply_to = "{{ event.message_id }}" }
"#;
    let cfg = ConfigDir::with(&[("code.toml", flow), ("quote.toml", echo)]);
    cfg.write("gateway.toml", &gateway(&fake, ""));
    let t = TestApp::spawn(&cfg).await;
    t.post("code", json!({"chat": 410})).await;
    let q = fake.wait_for("sendMessage", 1).await;
    assert_eq!(
        q[0].params["reply_markup"]["keyboard"],
        json!([[{"text": "Skip"}]])
    );
    assert_eq!(q[0].params["reply_markup"]["one_time_keyboard"], true);
    fake.inject(text_update(410, 1, "en", "B-77"));
    assert_eq!(texts_eventually(&fake, 410, 2).await[1], "code B-77");

    fake.inject(text_update(411, 1, "en", "quote me"));
    let quoted = eventually(|| async {
        fake.calls("sendMessage")
            .into_iter()
            .find(|c| c.params["chat_id"] == 411)
    })
    .await;
    assert_eq!(
        quoted.params["reply_parameters"]["message_id"], 1,
        "{}",
        quoted.params
    );
}

#[tokio::test]
async fn an_offer_that_times_out_before_its_message_is_sent_is_closed_once_it_is() {
    let fake = FakeTelegram::start().await;
    let (_cfg, t) = offer_app(&fake, "\"any\"", "").await;
    // The offer's first send is refused with retry_after = 2 s; its time runs out meanwhile.
    fake.throttle_next(-500, 2);
    let (_, b) = t.post("deal", json!({"id": 9})).await;
    let run = t.runs_of(b["event_id"].as_i64().unwrap()).await[0].id;
    fake.wait_for("sendMessage", 1).await;
    t.advance(Duration::from_secs(11 * 60));
    let done = t.finished(run).await;
    assert_eq!(done.vars["claim"]["timed_out"], true);
    // Once the message goes out and its id is known, the buttons are taken away.
    let edits = fake.wait_for("editMessageText", 1).await;
    assert_eq!(edits[0].params["text"], "New deal <b>9</b>\n\n⌛");
    let sent = fake.calls("sendMessage");
    let offers: Vec<_> = sent
        .iter()
        .filter(|c| c.params["chat_id"] == -500)
        .collect();
    assert_eq!(offers.len(), 2, "refused once, then sent");
    assert!(edits[0].params["message_id"].as_i64().is_some());
}

/// The event of an update among the channel's events.
fn update_event(events: &[EventRow], update_id: i64) -> &EventRow {
    events
        .iter()
        .find(|e| e.meta["update_id"] == update_id)
        .unwrap_or_else(|| panic!("no event for update {update_id}"))
}
