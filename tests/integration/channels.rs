//! The channel interface on Telegram: a conversation's messages leave in step order (also
//! across runs and a SIGKILL), data interpolated into HTML is escaped while the operator's
//! markup stays, and click answers come in the clicker's language.

use serde_json::json;

use crate::fake_telegram::{click_update, FakeTelegram, TOKEN};
use crate::support::*;

const FIVE: &str = r#"id = "five"
on = { webhook = "five" }
[[step]]
send = { to = "tg:{{ event.chat }}", template = "{{ event.run }}-1" }
[[step]]
send = { to = "tg:{{ event.chat }}", template = "{{ event.run }}-2" }
[[step]]
send = { to = "tg:{{ event.chat }}", template = "{{ event.run }}-3" }
[[step]]
send = { to = "tg:{{ event.chat }}", template = "{{ event.run }}-4" }
[[step]]
send = { to = "tg:{{ event.chat }}", template = "{{ event.run }}-5" }
"#;

fn gateway(fake: &FakeTelegram) -> String {
    format!(
        "[defaults]\nretry_delay = \"50ms\"\n\n[channels.tg]\ntype = \"telegram\"\ntoken = \"{TOKEN}\"\napi_url = \"{}\"\nlimits = {{ chat = \"1000/1s\", group = \"1000/1s\", bot = \"1000/1s\" }}\n",
        fake.url
    )
}

/// The texts a chat received, in the order the fake received them.
fn received(fake: &FakeTelegram, chat: i64) -> Vec<String> {
    fake.calls("sendMessage")
        .into_iter()
        .filter(|c| c.params["chat_id"] == chat)
        .map(|c| c.params["text"].as_str().unwrap_or_default().to_string())
        .collect()
}

async fn received_eventually(fake: &FakeTelegram, chat: i64, n: usize) -> Vec<String> {
    eventually(|| async {
        let r = received(fake, chat);
        (r.len() >= n).then_some(r)
    })
    .await
}

/// Each run's messages in the order the chat got them (a repeat of the same message right
/// after itself — resent after a crash — counts once).
fn per_run(texts: &[String]) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut out: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for t in texts {
        let (run, step) = t.split_once('-').unwrap();
        let steps = out.entry(run.to_string()).or_default();
        if steps.last().map(String::as_str) != Some(step) {
            steps.push(step.to_string());
        }
    }
    out
}

const STEPS: [&str; 5] = ["1", "2", "3", "4", "5"];

#[tokio::test]
async fn one_run_s_five_messages_reach_the_chat_in_step_order() {
    let fake = FakeTelegram::start().await;
    let cfg = ConfigDir::with(&[("five.toml", FIVE)]);
    cfg.write("gateway.toml", &gateway(&fake));
    let t = TestApp::spawn(&cfg).await;
    for round in 0..3 {
        let run = format!("r{round}");
        t.post("five", json!({"chat": 700 + round, "run": run}))
            .await;
        let got = received_eventually(&fake, 700 + round, 5).await;
        let want: Vec<String> = STEPS.iter().map(|s| format!("{run}-{s}")).collect();
        assert_eq!(got, want);
    }
}

#[tokio::test]
async fn three_runs_writing_to_one_chat_each_keep_their_order() {
    let fake = FakeTelegram::start().await;
    let cfg = ConfigDir::with(&[("five.toml", FIVE)]);
    cfg.write("gateway.toml", &gateway(&fake));
    let t = TestApp::spawn(&cfg).await;
    let posts = (0..3).map(|i| t.post("five", json!({"chat": 800, "run": format!("r{i}")})));
    futures::future::join_all(posts).await;
    let got = received_eventually(&fake, 800, 15).await;
    assert_eq!(got.len(), 15, "{got:?}");
    let runs = per_run(&got);
    assert_eq!(runs.len(), 3, "{got:?}");
    for (run, steps) in runs {
        assert_eq!(steps, STEPS, "run {run}: {got:?}");
    }
    // One at a time: each message was sent only after the previous one was answered.
    let calls = fake.calls("sendMessage");
    assert!(calls.windows(2).all(|w| w[0].at <= w[1].at));
}

#[tokio::test]
async fn order_holds_across_a_sigkill() {
    let fake = FakeTelegram::start().await;
    let cfg = ConfigDir::with(&[("five.toml", FIVE)]);
    // Slow enough that the kill lands between two messages of each run.
    cfg.write(
        "gateway.toml",
        &gateway(&fake).replace("chat = \"1000/1s\"", "chat = \"4/1s\""),
    );
    let first = Gateway::start(&cfg).await;
    for i in 0..3 {
        first
            .post("five", json!({"chat": 900 + i, "run": format!("r{i}")}))
            .await;
    }
    for i in 0..3 {
        received_eventually(&fake, 900 + i, 2).await;
    }
    first.kill();
    let _second = Gateway::start(&cfg).await;
    for i in 0..3 {
        let chat = 900 + i;
        let got = eventually(|| async {
            let r = received(&fake, chat);
            (r.last().map(String::as_str) == Some(format!("r{i}-5").as_str())).then_some(r)
        })
        .await;
        let runs = per_run(&got);
        assert_eq!(runs[&format!("r{i}")], STEPS, "chat {chat}: {got:?}");
    }
}

const DATA: &str = r#"R&D <Ltd> "Q" 5 > 3"#;
const ESCAPED: &str = "R&amp;D &lt;Ltd&gt; &quot;Q&quot; 5 &gt; 3";

#[tokio::test]
async fn data_is_escaped_in_html_while_the_operators_tags_stay() {
    let fake = FakeTelegram::start().await;
    let cfg = ConfigDir::with(&[(
        "notify.toml",
        r#"id = "notify"
on = { webhook = "notify" }
[[step]]
send = { to = "tg:{{ event.chat }}", template = "<b>Deal</b> {{ event.title }}", buttons = [{ text = "{{ event.title }}", url = "https://crm.example/d?x=1&y=2" }] }
[[step]]
send = { to = "tg:{{ event.chat }}", text = "company-note", args = { company = "{{ event.title }}" } }
[[step]]
offer = { to = "tg:{{ event.chat }}", template = "Offer: {{ event.title }}", buttons = [{ id = "take", text = "Take {{ event.title }}" }] }
"#,
    )]);
    cfg.write("gateway.toml", &gateway(&fake));
    for lang in ["en", "ru", "pl"] {
        std::fs::write(
            cfg.root.path().join("locales").join(lang).join("extra.ftl"),
            "company-note = <b>Company</b>: { $company }\n",
        )
        .unwrap();
    }
    let t = TestApp::spawn(&cfg).await;
    t.post("notify", json!({"chat": -300, "title": DATA})).await;
    let sent = fake.wait_for("sendMessage", 3).await;
    assert!(fake.errors().is_empty(), "{:?}", fake.errors());
    assert_eq!(sent[0].params["text"], format!("<b>Deal</b> {ESCAPED}"));
    // What the chat shows: the data as written, the operator's tag still bold.
    assert_eq!(
        sent[0].shown.as_deref(),
        Some(format!("Deal {DATA}").as_str())
    );
    assert_eq!(sent[0].bold, vec!["Deal"]);
    assert_eq!(
        sent[1].shown.as_deref(),
        Some(format!("Company: {DATA}").as_str())
    );
    assert_eq!(sent[1].bold, vec!["Company"]);
    assert_eq!(
        sent[2].shown.as_deref(),
        Some(format!("Offer: {DATA}").as_str())
    );
    // A button label is plain text on Telegram: it goes as the data is.
    let kb = &sent[0].params["reply_markup"]["inline_keyboard"];
    assert_eq!(kb[0][0]["text"], DATA);
    assert_eq!(kb[0][0]["url"], "https://crm.example/d?x=1&y=2");
    assert_eq!(sent[1].params["text"], format!("<b>Company</b>: {ESCAPED}"));
    assert_eq!(sent[2].params["text"], format!("Offer: {ESCAPED}"));
    let offer_kb = &sent[2].params["reply_markup"]["inline_keyboard"];
    assert_eq!(offer_kb[0][0]["text"], format!("Take {DATA}"));

    // The taker's name is data too.
    let data = offer_kb[0][0]["callback_data"].as_str().unwrap();
    let message = 3; // the fake numbers messages from 1
    fake.inject(click_update(-300, 55, DATA, data, message));
    let edits = fake.wait_for("editMessageText", 1).await;
    assert_eq!(
        edits[0].params["text"],
        format!("Offer: {ESCAPED}\n\n✅ <b>{ESCAPED}</b>")
    );
    assert_eq!(edits[0].bold, vec![DATA]);
}

#[tokio::test]
async fn a_message_telegram_refuses_fails_with_telegrams_own_words() {
    let fake = FakeTelegram::start().await;
    let cfg = ConfigDir::with(&[(
        "bad.toml",
        r#"id = "bad"
on = { webhook = "bad" }
[[step]]
send = { to = "tg:{{ event.chat }}", template = "<blink>{{ event.text }}</blink>" }
"#,
    )]);
    cfg.write("gateway.toml", &gateway(&fake));
    let t = TestApp::spawn(&cfg).await;
    let (_, body) = t.post("bad", json!({"chat": 630, "text": "hi"})).await;
    let runs = t.runs_of(body["event_id"].as_i64().unwrap()).await;
    let failed = eventually(|| async {
        let rows = t.app.store.outbox_for_run(runs[0].id).await.unwrap();
        rows.into_iter().find(|r| r.status == "failed")
    })
    .await;
    // Not retried: Telegram will refuse it again.
    assert_eq!(failed.attempts, 1);
    let error = failed.last_error.unwrap();
    assert!(error.contains("can't parse entities"), "{error}");
    assert!(error.contains("blink"), "{error}");
    assert_eq!(fake.errors().len(), 1);
}

#[tokio::test]
async fn a_click_on_a_taken_offer_is_answered_in_the_clickers_language() {
    let (fake, _cfg, _t, data, _) = posted_offer(-400).await;
    let message = fake.calls("sendMessage")[0].message_id.unwrap();
    fake.inject(click_update(-400, 1, "Elena", &data, message));
    let answers = fake.wait_for("answerCallbackQuery", 1).await;
    assert_eq!(answers[0].params["text"], "It is yours.");
    let mut late = click_update(-400, 2, "Oleg", &data, message);
    late["callback_query"]["from"]["language_code"] = json!("ru");
    fake.inject(late);
    let mut polish = click_update(-400, 3, "Ola", &data, message);
    polish["callback_query"]["from"]["language_code"] = json!("pl-PL");
    fake.inject(polish);
    let answers = fake.wait_for("answerCallbackQuery", 3).await;
    let texts: Vec<&str> = answers[1..]
        .iter()
        .map(|a| a.params["text"].as_str().unwrap())
        .collect();
    assert!(texts.contains(&"Уже занято: Elena."), "{texts:?}");
    assert!(texts.contains(&"Już zajęte przez Elena."), "{texts:?}");
    assert!(answers[1..].iter().all(|a| a.params["show_alert"] == true));
}

#[tokio::test]
async fn an_ask_with_inline_buttons_is_answered_by_a_press_and_loses_its_buttons() {
    let fake = FakeTelegram::start().await;
    let cfg = ConfigDir::with(&[(
        "confirm.toml",
        r#"id = "confirm"
on = { webhook = "confirm" }
[[step]]
ask = { to = "tg:{{ event.chat }}", template = "Come on {{ event.day }}?", choices = ["Yes", "No"], buttons = "inline", timeout = "1h" }
branch = { "yes" = "yes" }
[[step]]
send = { to = "tg:{{ event.chat }}", template = "Pity." }
stop = true
[[step]]
label = "yes"
send = { to = "tg:{{ event.chat }}", template = "See you, answer {{ run.answer.value }} after {{ run.answer.attempts }}." }
"#,
    )]);
    cfg.write("gateway.toml", &gateway(&fake));
    let t = TestApp::spawn(&cfg).await;
    let (_, body) = t
        .post("confirm", json!({"chat": 610, "day": "Monday"}))
        .await;
    let question = fake.wait_for("sendMessage", 1).await.remove(0);
    let kb = &question.params["reply_markup"]["inline_keyboard"][0];
    assert_eq!(kb[0]["text"], "Yes");
    assert_eq!(kb[1]["text"], "No");
    // A press from another chat answers nothing.
    let yes = kb[0]["callback_data"].as_str().unwrap();
    fake.inject(click_update(-611, 5, "Eve", yes, 1));
    let answers = fake.wait_for("answerCallbackQuery", 1).await;
    assert_eq!(
        answers[0].params["text"],
        "This button is no longer active."
    );

    let mut press = click_update(610, 5, "Ann", yes, 1);
    press["callback_query"]["message"]["chat"] =
        json!({"id": 610, "type": "private", "first_name": "Ann"});
    fake.inject(press);
    let answers = fake.wait_for("answerCallbackQuery", 2).await;
    assert_eq!(
        answers[1].params["text"],
        "Thank you, your answer is recorded."
    );
    let texts = received_eventually(&fake, 610, 2).await;
    assert_eq!(texts[1], "See you, answer yes after 1.");
    let removed = fake.wait_for("editMessageReplyMarkup", 1).await;
    assert_eq!(removed[0].params["chat_id"], 610);
    assert_eq!(removed[0].params["message_id"], 1);
    assert!(removed[0].params.get("reply_markup").is_none());
    let runs = t.runs_of(body["event_id"].as_i64().unwrap()).await;
    let run = t.finished(runs[0].id).await;
    assert_eq!(run.vars["answer"]["value"], "yes");
}

#[tokio::test]
async fn an_edit_step_changes_a_saved_message_and_a_button_click_starts_a_scenario() {
    let fake = FakeTelegram::start().await;
    let cfg = ConfigDir::with(&[
        (
            "notify.toml",
            r#"id = "notify"
on = { webhook = "notify" }
[[step]]
send = { to = "tg:{{ event.chat }}", template = "Ticket {{ event.n }} is open", buttons = [{ id = "ack", text = "Got it" }, { text = "Open", url = "https://crm.example/t/{{ event.n }}" }], save = "note" }
[[step]]
send = { to = "tg:{{ event.chat }}", template = "Another message" }
[[step]]
edit = { message = "note", template = "Ticket {{ event.n }} is <i>assigned</i>", buttons = [{ id = "ack", text = "Got it" }] }
"#,
        ),
        (
            "ack.toml",
            r#"id = "ack"
on = { click = "tg", button = "ack" }
[[step]]
edit = { to = "tg:{{ event.chat.id }}", message = "{{ event.message }}", template = "Seen by {{ event.from.first_name }} ({{ event.button }})" }
"#,
        ),
    ]);
    cfg.write("gateway.toml", &gateway(&fake));
    let t = TestApp::spawn(&cfg).await;
    t.post("notify", json!({"chat": 620, "n": 7})).await;
    let sent = fake.wait_for("sendMessage", 2).await;
    let kb = &sent[0].params["reply_markup"]["inline_keyboard"];
    assert_eq!(kb[0][0]["text"], "Got it");
    assert_eq!(kb[1][0]["url"], "https://crm.example/t/7");
    let edits = fake.wait_for("editMessageText", 1).await;
    assert_eq!(
        edits[0].params["message_id"], 1,
        "the saved message, not the later one"
    );
    assert_eq!(edits[0].params["text"], "Ticket 7 is <i>assigned</i>");
    assert_eq!(
        edits[0].params["reply_markup"]["inline_keyboard"][0][0]["text"],
        "Got it"
    );

    let data = kb[0][0]["callback_data"].as_str().unwrap();
    let mut click = click_update(620, 9, "Olga", data, 1);
    click["callback_query"]["message"]["chat"] =
        json!({"id": 620, "type": "private", "first_name": "Olga"});
    fake.inject(click);
    let edits = fake.wait_for("editMessageText", 2).await;
    assert_eq!(edits[1].params["message_id"], 1);
    assert_eq!(edits[1].params["text"], "Seen by Olga (ack)");
    // The click is answered without a text: it only stops the spinner.
    let answers = fake.wait_for("answerCallbackQuery", 1).await;
    assert!(answers[0].params.get("text").is_none());
    // A button nobody listens to is answered as inactive.
    fake.inject(click_update(620, 9, "Olga", "b:other", 1));
    let answers = fake.wait_for("answerCallbackQuery", 2).await;
    assert_eq!(
        answers[1].params["text"],
        "This button is no longer active."
    );
    let ack = t
        .app
        .store
        .list_runs(&switchboard::store::RunFilter {
            scenario: Some("ack".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ack.len(), 1);
}

#[tokio::test]
async fn attachments_follow_their_message_as_documents() {
    let fake = FakeTelegram::start().await;
    let cfg = ConfigDir::with(&[(
        "invoice.toml",
        r#"id = "invoice"
on = { webhook = "invoice" }
[[step]]
send = { to = "tg:{{ event.chat }}", template = "Your invoice", attachments = ["{{ event.pdf }}"] }
[[step]]
send = { to = "tg:{{ event.chat }}", template = "Thanks" }
"#,
    )]);
    cfg.write("gateway.toml", &gateway(&fake));
    let t = TestApp::spawn(&cfg).await;
    t.post(
        "invoice",
        json!({"chat": 640, "pdf": "https://files.example/inv-7.pdf"}),
    )
    .await;
    let docs = fake.wait_for("sendDocument", 1).await;
    assert_eq!(docs[0].params["chat_id"], "640");
    assert_eq!(
        docs[0].params["document"],
        "https://files.example/inv-7.pdf"
    );
    let texts = received_eventually(&fake, 640, 2).await;
    assert_eq!(texts, vec!["Your invoice", "Thanks"]);
    // In order: the text, its document, then the next message.
    let at = |m: &str| fake.calls(m).iter().map(|c| c.at).collect::<Vec<_>>();
    let (texts_at, docs_at) = (at("sendMessage"), at("sendDocument"));
    assert!(texts_at[0] <= docs_at[0] && docs_at[0] <= texts_at[1]);
}

/// An offer posted to `chat` whose message is recorded as delivered (so its reference is
/// known): the fake, the config, the app, the button's callback data and the run.
async fn posted_offer(chat: i64) -> (FakeTelegram, ConfigDir, TestApp, String, i64) {
    let fake = FakeTelegram::start().await;
    let cfg = ConfigDir::with(&[(
        "offer.toml",
        r#"id = "offer"
on = { webhook = "offer" }
[[step]]
offer = { to = "tg:{{ event.chat }}", template = "New deal", buttons = [{ id = "take", text = "Take" }] }
"#,
    )]);
    cfg.write("gateway.toml", &gateway(&fake));
    let t = TestApp::spawn(&cfg).await;
    let (_, body) = t.post("offer", json!({"chat": chat})).await;
    let sent = fake.wait_for("sendMessage", 1).await;
    let data = sent[0].params["reply_markup"]["inline_keyboard"][0][0]["callback_data"]
        .as_str()
        .unwrap()
        .to_string();
    let run = t.runs_of(body["event_id"].as_i64().unwrap()).await[0].id;
    eventually(|| async {
        let rows = t.app.store.outbox_for_run(run).await.unwrap();
        rows.iter().any(|r| r.status == "delivered").then_some(())
    })
    .await;
    (fake, cfg, t, data, run)
}

#[tokio::test]
async fn a_click_forged_from_another_chat_or_message_claims_nothing() {
    let (fake, _cfg, t, data, run) = posted_offer(-450).await;
    fake.inject(click_update(-999, 66, "Mallory", &data, 1));
    fake.inject(click_update(-450, 66, "Mallory", &data, 77));
    let answers = fake.wait_for("answerCallbackQuery", 2).await;
    assert!(answers
        .iter()
        .all(|a| a.params["text"] == "This button is no longer active."));
    fake.inject(click_update(-450, 67, "Elena", &data, 1));
    let answers = fake.wait_for("answerCallbackQuery", 3).await;
    assert_eq!(answers[2].params["text"], "It is yours.");
    let run = t.finished(run).await;
    assert_eq!(run.vars["claim"]["name"], "Elena");
}

#[tokio::test]
async fn a_cancelled_offer_closes_and_a_later_click_wins_nothing() {
    let (fake, _cfg, t, data, run) = posted_offer(-460).await;
    let (status, _) = t.post_api(&format!("/api/runs/{run}/cancel")).await;
    assert_eq!(status, 200);
    let edits = fake.wait_for("editMessageText", 1).await;
    assert_eq!(edits[0].params["text"], "New deal\n\n⌛");
    fake.inject(click_update(-460, 70, "Elena", &data, 1));
    let answers = fake.wait_for("answerCallbackQuery", 1).await;
    assert_eq!(answers[0].params["text"], "This offer has expired.");
    let run = t.app.store.run(run).await.unwrap().unwrap();
    assert_eq!(run.status, switchboard::store::RunStatus::Cancelled);
    assert!(run.vars.get("claim").is_none());
}
