//! WhatsApp through the Cloud API against the fake Graph API: the webhook handshake and
//! signatures, deliveries stored once per wamid, asks answered by a press or a typed digit
//! (and those replies marked read), the 24-hour window and approved templates, statuses as
//! events and on the messages they are about, retries of failed messages, limits and order
//! per customer, and `check`.

use serde_json::{json, Value};
use switchboard::store::{EventFilter, EventRow, OutboxRow, RunStatus, SqliteStore, Store};

use crate::fake_whatsapp::{envelope, sign, FakeWhatsApp, Script, APP_SECRET, VERIFY_TOKEN};
use crate::support::*;

const ECHO: &str = r#"id = "echo"
on = { message = "wa" }
[[step]]
send = { to = "wa:{{ event.chat.id }}", template = "echo: *{{ event.text }}* to {{ event.from.name }}", reply_to = "{{ event.message }}" }
"#;

const CONFIRM: &str = r#"id = "confirm"
on = { webhook = "booked" }
subject = "appointment:{{ event.id }}"
[[step]]
ask = { to = "wa:{{ event.phone }}", template = "Reply 1 to confirm, 2 to reschedule, 3 to cancel", retry_text = "confirm-only-digit", choices = ["1", "2", "3"], buttons = "inline", retries = 2, timeout = "24h" }
branch = { exhausted = "handover", timeout = "handover" }
[[step]]
send = { to = "wa:{{ event.phone }}", template = "got {{ run.answer.value }} after {{ run.answer.attempts }}" }
stop = true
[[step]]
label = "handover"
send = { to = "ops:-", template = "handover {{ event.id }}" }
"#;

/// A scenario that tells a customer on `channel` that their order shipped
/// (`POST /hooks/shipped-<channel>`).
fn notify(channel: &str) -> (String, String) {
    (
        format!("notify-{channel}.toml"),
        format!(
            "id = \"notify-{channel}\"\non = {{ webhook = \"shipped-{channel}\" }}\n[[step]]\nsend = {{ to = \"{channel}:{{{{ event.phone }}}}\", template = \"Order {{{{ event.order }}}} has shipped\" }}\n"
        ),
    )
}

fn gateway(fake: &FakeWhatsApp, extra: &str) -> String {
    format!(
        "[defaults]\nretry_delay = \"50ms\"\nretry_max_delay = \"200ms\"\nhttp_attempts = 4\n\n[channels.ops]\ntype = \"log\"\noutput = \"journal\"\n\n{}",
        fake.channel(&format!("limits = {{ customer = \"20/1s\" }}\n{extra}"))
    )
}

async fn app(fake: &FakeWhatsApp, files: &[(&str, &str)], extra: &str) -> (ConfigDir, TestApp) {
    let cfg = ConfigDir::with(files);
    cfg.write("gateway.toml", &gateway(fake, extra));
    let t = TestApp::spawn(&cfg).await;
    (cfg, t)
}

#[tokio::test]
async fn the_subscription_handshake_echoes_the_challenge_only_for_the_verify_token() {
    let fake = FakeWhatsApp::start().await;
    let (_cfg, t) = app(&fake, &[], "").await;
    let url = format!("{}/whatsapp/wa", t.app.url());
    let get = |token: &str| {
        t.http.get(&url).query(&[
            ("hub.mode", "subscribe"),
            ("hub.verify_token", token),
            ("hub.challenge", "1158201444"),
        ])
    };
    let ok = get(VERIFY_TOKEN).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.text().await.unwrap(), "1158201444");
    assert_eq!(get("guess").send().await.unwrap().status(), 403);
    assert_eq!(t.readyz().await["channels"]["wa"], "ok");
}

#[tokio::test]
async fn unsigned_or_wrongly_signed_deliveries_are_refused_and_journaled_as_rejected() {
    let fake = FakeWhatsApp::start().await;
    let (_cfg, t) = app(&fake, &[("echo.toml", ECHO)], "").await;
    let gw = t.app.url();
    let (forged, forged_id) = fake.text("48555000111", "Mallory", "forged");
    let body = envelope(forged).to_string();
    let wrong = sign("not-the-secret", &body);
    assert_eq!(fake.post_signed(&gw, "wa", &body, Some(&wrong)).await, 401);
    assert_eq!(fake.post_signed(&gw, "wa", &body, None).await, 401);
    // A signature over other bytes (the same JSON reformatted) does not pass either.
    let reformatted =
        serde_json::to_string_pretty(&serde_json::from_str::<Value>(&body).unwrap()).unwrap();
    let other = sign(APP_SECRET, &reformatted);
    assert_eq!(fake.post_signed(&gw, "wa", &body, Some(&other)).await, 401);
    // Signed but not a webhook: a 400 with a reason.
    let junk = r#"{"object":"whatsapp_business_account"}"#;
    assert_eq!(
        fake.post_signed(&gw, "wa", junk, Some(&sign(APP_SECRET, junk)))
            .await,
        400
    );

    let (real, real_id) = fake.text("48555000111", "Ada", "real");
    assert_eq!(fake.deliver(&gw, "wa", real).await, vec![200]);
    let events = processed_through(&t, "wa", "wamid", real_id.as_str()).await;
    let messages: Vec<&EventRow> = events.iter().filter(|e| e.kind == "message").collect();
    assert_eq!(messages.len(), 1, "{events:?}");
    assert!(events.iter().all(|e| e.meta["wamid"] != forged_id.as_str()));
    let rejected: Vec<&EventRow> = events.iter().filter(|e| e.status == "rejected").collect();
    assert_eq!(rejected.len(), 4, "{events:?}");
    assert!(
        rejected
            .iter()
            .any(|e| e.error.as_deref() == Some("missing X-Hub-Signature-256")),
        "{rejected:?}"
    );
    let sent = fake.wait_accepted("48555000111", 1).await;
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].text(), "echo: *real* to Ada");
}

#[tokio::test]
async fn a_redelivered_message_is_stored_once_and_statuses_are_not_messages() {
    let fake = FakeWhatsApp::start().await;
    let (_cfg, t) = app(&fake, &[("echo.toml", ECHO)], "").await;
    let gw = t.app.url();
    let (first, first_id) = fake.text("48555000222", "Bo_b *VIP*", "hello");
    assert_eq!(fake.deliver(&gw, "wa", first.clone()).await, vec![200]);
    let echo = fake.wait_accepted("48555000222", 1).await;
    // Data cannot open WhatsApp formatting; the reply quotes the customer's message.
    assert_eq!(
        echo[0].text(),
        "echo: *hello* to Bo\u{2060}_b \u{2060}*VIP\u{2060}*"
    );
    assert_eq!(echo[0].body["context"]["message_id"], first_id.as_str());
    let echo_id = echo[0].wamid.clone().unwrap();

    // Meta delivers the message again, and statuses of our echo separately.
    assert_eq!(fake.deliver(&gw, "wa", first).await, vec![200]);
    for s in ["sent", "delivered", "read", "read"] {
        let status = fake.status(&echo_id, "48555000222", s, None);
        assert_eq!(fake.deliver(&gw, "wa", status).await, vec![200]);
    }
    let (second, second_id) = fake.text("48555000222", "Bob", "again");
    assert_eq!(fake.deliver(&gw, "wa", second).await, vec![200]);
    let events = processed_through(&t, "wa", "wamid", second_id.as_str()).await;
    let kinds = |k: &str| events.iter().filter(|e| e.kind == k).count();
    assert_eq!((kinds("message"), kinds("status")), (2, 3), "{events:?}");
    assert!(events.iter().any(|e| e.meta["wamid"] == first_id.as_str()));
    let runs = runs_of_scenario(&t, "echo").await;
    assert_eq!(runs.len(), 2);
    for r in runs {
        settled_outbox(&t, r).await;
    }
    assert_eq!(fake.accepted_to("48555000222").len(), 2);
}

/// Opens the customer's window with a message and books an appointment for them; the
/// question as the fake received it.
async fn asked(fake: &FakeWhatsApp, t: &TestApp, phone: &str, id: i64) -> fake_question::Question {
    let (hi, _) = fake.text(phone, "Cara", "hi");
    assert_eq!(fake.deliver(&t.app.url(), "wa", hi).await, vec![200]);
    let (status, _) = t
        .post("booked", json!({"id": id, "phone": format!("+{phone}")}))
        .await;
    assert_eq!(status, 202);
    let q = fake.wait_accepted(phone, 1).await.remove(0);
    fake_question::Question::from(q)
}

mod fake_question {
    use crate::fake_whatsapp::Sent;

    pub struct Question {
        pub wamid: String,
        /// (id, title) of its reply buttons.
        pub buttons: Vec<(String, String)>,
        pub text: String,
    }

    impl From<Sent> for Question {
        fn from(s: Sent) -> Question {
            let buttons = s.body["interactive"]["action"]["buttons"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|b| {
                    (
                        b["reply"]["id"].as_str().unwrap().to_string(),
                        b["reply"]["title"].as_str().unwrap().to_string(),
                    )
                })
                .collect();
            Question {
                text: s.text(),
                wamid: s.wamid.unwrap(),
                buttons,
            }
        }
    }
}

#[tokio::test]
async fn an_ask_is_answered_by_a_button_press() {
    let fake = FakeWhatsApp::start().await;
    let (_cfg, t) = app(&fake, &[("confirm.toml", CONFIRM)], "").await;
    let q = asked(&fake, &t, "48555000333", 1).await;
    assert_eq!(q.text, "Reply 1 to confirm, 2 to reschedule, 3 to cancel");
    let titles: Vec<&str> = q.buttons.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(titles, vec!["1", "2", "3"]);
    let (id, title) = q.buttons[1].clone();
    let (press, _) = fake.press("48555000333", &q.wamid, &id, &title, false);
    assert_eq!(fake.deliver(&t.app.url(), "wa", press).await, vec![200]);
    let sent = fake.wait_accepted("48555000333", 2).await;
    assert_eq!(sent[1].text(), "got 2 after 1");
    let run = runs_of_scenario(&t, "confirm").await[0];
    t.status_of(run, RunStatus::Done).await;
}

#[tokio::test]
async fn an_ask_takes_a_typed_digit_after_re_asking() {
    let fake = FakeWhatsApp::start().await;
    let (_cfg, t) = app(&fake, &[("confirm.toml", CONFIRM)], "").await;
    let q = asked(&fake, &t, "48555000444", 2).await;
    let (maybe, _) = fake.text("48555000444", "Cara", "yes, I think so");
    assert_eq!(fake.deliver(&t.app.url(), "wa", maybe).await, vec![200]);
    let sent = fake.wait_accepted("48555000444", 2).await;
    assert_eq!(
        sent[1].text(),
        "Please answer with just one digit: 1, 2 or 3."
    );
    // The re-ask carries the buttons again; the first question's are answered by typing.
    assert_eq!(
        sent[1].body["interactive"]["action"]["buttons"]
            .as_array()
            .map(Vec::len),
        Some(3)
    );
    assert_ne!(sent[1].wamid.as_deref(), Some(q.wamid.as_str()));
    let (two, _) = fake.text("48555000444", "Cara", " 2. ");
    assert_eq!(fake.deliver(&t.app.url(), "wa", two).await, vec![200]);
    let sent = fake.wait_accepted("48555000444", 3).await;
    assert_eq!(sent[2].text(), "got 2 after 2");
}

#[tokio::test]
async fn an_ask_hands_over_once_its_retries_are_used_up() {
    let fake = FakeWhatsApp::start().await;
    let (_cfg, t) = app(&fake, &[("confirm.toml", CONFIRM)], "").await;
    asked(&fake, &t, "48555000445", 3).await;
    for (n, reply) in ["a", "b", "c"].iter().enumerate() {
        let (m, _) = fake.text("48555000445", "Cara", reply);
        assert_eq!(fake.deliver(&t.app.url(), "wa", m).await, vec![200]);
        if n < 2 {
            fake.wait_accepted("48555000445", n + 2).await;
        }
    }
    let run = runs_of_scenario(&t, "confirm").await[0];
    let run = t.finished(run).await;
    assert_eq!(run.vars["answer"]["exhausted"], true);
    let rows = settled_outbox(&t, run.id).await;
    let last = rows.iter().rev().find(|o| o.channel == "ops").unwrap();
    assert_eq!(last.request["text"], "handover 3");
    assert_eq!(fake.accepted_to("48555000445").len(), 3);
}

#[tokio::test]
async fn example_confirmation_goes_as_a_template_and_its_quick_reply_answers() {
    let fake = FakeWhatsApp::start().await;
    let cfg = ConfigDir::examples();
    let gw = std::fs::read_to_string(cfg.dir().join("gateway.toml")).unwrap();
    let gw = gw
        .replace("${WHATSAPP_TOKEN:-}", crate::fake_whatsapp::TOKEN)
        .replace(
            "# phone_number_id = \"${WHATSAPP_PHONE_NUMBER_ID}\"",
            &format!("phone_number_id = \"{}\"", crate::fake_whatsapp::PHONE_ID),
        )
        .replace(
            "# app_secret = \"${WHATSAPP_APP_SECRET}\"",
            &format!("app_secret = \"{APP_SECRET}\""),
        )
        .replace(
            "# verify_token = \"${WHATSAPP_VERIFY_TOKEN}\"",
            &format!("verify_token = \"{VERIFY_TOKEN}\""),
        )
        .replace(
            "\"${WHATSAPP_API_URL:-https://graph.facebook.com}\"",
            &format!("\"{}\"\nlimits = {{ customer = \"20/1s\" }}", fake.url),
        );
    cfg.write("gateway.toml", &gw);
    let t = TestApp::spawn(&cfg).await;
    let (status, _) = t
        .post(
            "appointment-whatsapp",
            json!({"id": 12, "phone": "+48555000999", "lang": "en", "time": "Fri 10:00", "owner": "elena"}),
        )
        .await;
    assert_eq!(status, 202);
    // The customer has not written: the question is the template, its choices the payloads
    // of the template's quick-reply buttons.
    let q = fake.wait_accepted("48555000999", 1).await.remove(0);
    assert_eq!(q.body["template"]["name"], "appointment_confirmation");
    assert_eq!(q.body["template"]["language"]["code"], "en");
    assert_eq!(q.text(), "Fri 10:00");
    let components = q.body["template"]["components"].as_array().unwrap();
    assert_eq!(components.len(), 4);
    let payload = components[1]["parameters"][0]["payload"].as_str().unwrap();
    let (press, _) = fake.quick_reply("48555000999", q.wamid.as_deref().unwrap(), payload, "1");
    assert_eq!(fake.deliver(&t.app.url(), "wa", press).await, vec![200]);
    // The press opened the window: the thanks go as a plain text.
    let sent = fake.wait_accepted("48555000999", 2).await;
    assert_eq!(
        (sent[1].body["type"].as_str(), sent[1].text()),
        (
            Some("text"),
            "Thank you, your appointment is confirmed.".into()
        )
    );
}

#[tokio::test]
async fn outside_the_window_a_send_uses_the_template_or_fails_with_the_reason() {
    let fake = FakeWhatsApp::start().await;
    let (wa, bare) = (notify("wa"), notify("bare"));
    let cfg = ConfigDir::with(&[(&wa.0, &wa.1), (&bare.0, &bare.1), ("remind.toml", REMIND)]);
    let bare = fake.channel("").replace("[channels.wa]", "[channels.bare]");
    cfg.write(
        "gateway.toml",
        &format!(
            "{}\n{bare}",
            gateway(
                &fake,
                "window_template = { name = \"order_update\", language = \"en_US\" }"
            )
        ),
    );
    let t = TestApp::spawn(&cfg).await;

    // Never wrote: the template carries the text.
    let rows = ship(&t, "wa", "+48555000555", "A-1").await;
    let sent = fake.wait_accepted("48555000555", 1).await;
    assert_eq!(sent[0].body["type"], "template");
    assert_eq!(sent[0].body["template"]["name"], "order_update");
    assert_eq!(sent[0].body["template"]["language"]["code"], "en_US");
    assert_eq!(sent[0].text(), "Order A-1 has shipped");
    assert_eq!(rows[0].status, "delivered");
    assert_eq!(rows[0].response.as_ref().unwrap()["sent_as"], "template");

    // Without a template the send fails at once, with the reason, and Meta never sees it.
    let rows = ship(&t, "bare", "+48555000556", "A-2").await;
    assert_eq!((rows[0].status.as_str(), rows[0].attempts), ("failed", 1));
    let error = rows[0].last_error.clone().unwrap();
    assert!(
        error.contains(
            "outside WhatsApp's 24-hour window: +48555000556 has never written to this number, and neither the step nor channel 'bare' has a window_template"
        ),
        "{error}"
    );
    assert!(fake.sent().iter().all(|s| s.to != "48555000556"));

    // Once the customer writes, a free-form message goes.
    let (hi, _) = fake.text("48555000556", "Dee", "hi");
    assert_eq!(fake.deliver(&t.app.url(), "bare", hi).await, vec![200]);
    t.post(
        "shipped-bare",
        json!({"phone": "+48555000556", "order": "A-3"}),
    )
    .await;
    let sent = fake.wait_accepted("48555000556", 1).await;
    assert_eq!(
        (sent[0].body["type"].as_str(), sent[0].text()),
        (Some("text"), "Order A-3 has shipped".into())
    );

    // A step's own template goes where the channel has none, with its parameters.
    let (status, _) = t
        .post(
            "remind",
            json!({"phone": "+48555000557", "lang": "pl", "time": "Fri 10:00"}),
        )
        .await;
    assert_eq!(status, 202);
    let sent = fake.wait_accepted("48555000557", 1).await;
    let template = &sent[0].body["template"];
    assert_eq!(template["name"], "appointment_reminder");
    assert_eq!(template["language"]["code"], "pl");
    assert_eq!(
        template["components"][0]["parameters"][0]["text"],
        "Fri 10:00"
    );
    assert_eq!(
        template["components"][0]["parameters"][1]["text"],
        "Dentist *Ada*"
    );

    // A day later the window has closed again.
    t.advance(std::time::Duration::from_secs(25 * 3600));
    let rows = ship(&t, "bare", "+48555000556", "A-4").await;
    assert_eq!(rows[0].status, "failed");
    assert!(rows[0]
        .last_error
        .as_deref()
        .unwrap()
        .contains("last wrote at"));
}

const REMIND: &str = r#"id = "remind"
on = { webhook = "remind" }
[[step]]
send = { to = "bare:{{ event.phone }}", template = "Your visit is on {{ event.time }}", window_template = { name = "appointment_reminder", language = "{{ event.lang }}", params = ["{{ event.time }}", "Dentist *Ada*"] } }
"#;

/// Posts a `shipped` event; its run's outbox rows once they are settled.
async fn ship(t: &TestApp, channel: &str, phone: &str, order: &str) -> Vec<OutboxRow> {
    let (_, r) = t
        .post(
            &format!("shipped-{channel}"),
            json!({"phone": phone, "order": order}),
        )
        .await;
    let run = t.runs_of(r["event_id"].as_i64().unwrap()).await[0].id;
    settled_outbox(t, run).await
}

const ON_FAILED: &str = r#"id = "on-failed"
on = { status = "wa" }
when = 'event.status == "failed"'
[[step]]
send = { to = "ops:-", template = "{{ event.chat.id }}: {{ event.error.code }} {{ event.error.title }}" }
"#;

#[tokio::test]
async fn a_failed_status_starts_a_scenario_and_permanent_errors_are_not_retried() {
    let fake = FakeWhatsApp::start().await;
    let (_cfg, t) = app(
        &fake,
        &[
            (&notify("wa").0, &notify("wa").1),
            ("on-failed.toml", ON_FAILED),
        ],
        "window_template = { name = \"order_update\", language = \"en\" }",
    )
    .await;
    ship(&t, "wa", "+48555000777", "B-1").await;
    let wamid = fake.accepted_to("48555000777")[0].wamid.clone().unwrap();
    // Meta accepted it, then says it could not be delivered.
    let delivered = fake.status(&wamid, "48555000777", "sent", None);
    assert_eq!(fake.deliver(&t.app.url(), "wa", delivered).await, vec![200]);
    let failed = fake.status(&wamid, "48555000777", "failed", Some(131026));
    assert_eq!(
        fake.deliver(&t.app.url(), "wa", failed.clone()).await,
        vec![200]
    );
    assert_eq!(fake.deliver(&t.app.url(), "wa", failed).await, vec![200]);
    let runs = eventually(|| async {
        let r = runs_of_scenario(&t, "on-failed").await;
        (!r.is_empty()).then_some(r)
    })
    .await;
    let rows = settled_outbox(&t, runs[0]).await;
    assert_eq!(
        rows[0].request["text"],
        "+48555000777: 131026 Message Undeliverable"
    );
    // The `sent` status ran no scenario past its guard, the repeated `failed` none at all.
    let events = t
        .app
        .store
        .list_events(&EventFilter {
            source: Some("wa".into()),
            limit: 50,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(events.iter().filter(|e| e.kind == "status").count(), 2);

    // A synchronous refusal: 131047 fails at once with Meta's title; a 5xx is tried again.
    fake.script("48555000777", &[Script::Meta(131026)]);
    let rows = ship(&t, "wa", "+48555000777", "B-2").await;
    assert_eq!((rows[0].status.as_str(), rows[0].attempts), ("failed", 1));
    assert!(
        rows[0]
            .last_error
            .as_deref()
            .unwrap()
            .contains("(#131026) Message Undeliverable"),
        "{:?}",
        rows[0].last_error
    );
    fake.script("48555000777", &[Script::Http(503), Script::Meta(131000)]);
    let rows = ship(&t, "wa", "+48555000777", "B-3").await;
    assert_eq!(
        (rows[0].status.as_str(), rows[0].attempts),
        ("delivered", 3)
    );
}

const BURST: &str = r#"id = "burst"
on = { webhook = "burst" }
[[step]]
send = { to = "wa:{{ event.phone }}", template = "one" }
[[step]]
send = { to = "wa:{{ event.phone }}", template = "two" }
[[step]]
send = { to = "wa:{{ event.phone }}", template = "three" }
[[step]]
send = { to = "wa:{{ event.phone }}", template = "four" }
"#;

#[tokio::test]
async fn a_customers_messages_keep_their_order_through_pair_and_throughput_limits() {
    let fake = FakeWhatsApp::start().await;
    let (_cfg, t) = app(&fake, &[("burst.toml", BURST)], "").await;
    for phone in ["48555000881", "48555000882"] {
        let (hi, _) = fake.text(phone, "Eve", "hi");
        assert_eq!(fake.deliver(&t.app.url(), "wa", hi).await, vec![200]);
    }
    fake.script("48555000881", &[Script::Meta(131056)]);
    fake.script("48555000882", &[Script::Meta(130429), Script::Meta(131056)]);
    for phone in ["48555000881", "48555000882"] {
        let (s, _) = t.post("burst", json!({"phone": format!("+{phone}")})).await;
        assert_eq!(s, 202);
    }
    for phone in ["48555000881", "48555000882"] {
        let sent = fake.wait_accepted(phone, 4).await;
        let texts: Vec<String> = sent.iter().map(|s| s.text()).collect();
        assert_eq!(texts, vec!["one", "two", "three", "four"], "{phone}");
    }
    let mut refused: Vec<i64> = fake.sent().iter().filter_map(|s| s.error).collect();
    refused.sort();
    assert_eq!(refused, vec![130429, 131056, 131056]);
    for r in runs_of_scenario(&t, "burst").await {
        let rows = settled_outbox(&t, r).await;
        assert!(rows.iter().all(|o| o.status == "delivered"), "{rows:?}");
    }
}

#[test]
fn check_holds_asks_and_buttons_to_whatsapps_limits_with_positions() {
    let cfg = ConfigDir::empty();
    cfg.write(
        "gateway.toml",
        "[channels.wa]\ntype = \"whatsapp\"\ntoken = \"${SB_UNSET_WA_TOKEN:-}\"\nphone_number_id = \"1\"\napp_secret = \"s\"\nverify_token = \"v\"\n",
    );
    cfg.write(
        "four.toml",
        "id = \"four\"\non = { webhook = \"h\" }\n[[step]]\nask = { to = \"wa:+48555\", template = \"Pick\", choices = [\"1\", \"2\", \"3\", \"4\"], buttons = \"inline\" }\n[[step]]\nsend = { to = \"wa:+48555\", template = \"Hi\", buttons = [{ id = \"ok\", text = \"A title of twenty-five ch\" }] }\n[[step]]\nask = { to = \"wa:+48555\", template = \"Which?\", choices = [\"a\"], buttons = [\"1\", \"2\", \"3\", \"4\", \"5\", \"6\", \"7\", \"8\", \"9\", \"10\", \"11\", \"A row title of twenty-five\"] }\n[[step]]\nsend = { to = \"log:x\", template = \"Hi\", window_template = { name = \"hello\" } }\n[[step]]\nsend = { to = \"wa:+48555\", template = \"Hi\", approved_template = { name = \"hello\" } }\n[[step]]\nsend = { to = \"log:x\", template = \"Hi\", approved_template = { name = \"hello\" } }\n",
    );
    let out = std::process::Command::new(bin())
        .args(["check", cfg.dir().to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let file = cfg.dir().join("four.toml").display().to_string();
    for want in [
        format!("{file}:4:88: 4 buttons; channel 'wa' (whatsapp) shows at most 3 on a message"),
        format!(
            "{file}:6:76: button label is 25 characters; channel 'wa' (whatsapp) shows at most 20"
        ),
        format!("{file}:8:75: 12 reply buttons; channel 'wa' (whatsapp) shows at most 10"),
        format!("{file}:8:75: reply button 'A row title of twenty-five' is 26 characters; channel 'wa' (whatsapp) shows at most 24"),
        format!("{file}:10:59: channel 'log' (log) has no message templates"),
        format!("{file}:14:61: channel 'log' (log) has no message templates"),
    ] {
        assert!(text.contains(&want), "missing «{want}» in:\n{text}");
    }
    // An approved template on WhatsApp is fine.
    assert_eq!(
        text.matches("has no message templates").count(),
        2,
        "{text}"
    );
}

#[tokio::test]
async fn an_ask_pending_across_a_sigkill_resolves_after_the_restart_without_sending_twice() {
    let fake = FakeWhatsApp::start().await;
    let cfg = ConfigDir::with(&[("confirm.toml", CONFIRM)]);
    cfg.write("gateway.toml", &gateway(&fake, ""));
    let phone = "48555000990";
    let first = Gateway::start(&cfg).await;
    let (hi, _) = fake.text(phone, "Cara", "hi");
    assert_eq!(fake.deliver(&first.url, "wa", hi).await, vec![200]);
    first
        .post("booked", json!({"id": 5, "phone": format!("+{phone}")}))
        .await;
    let q = fake_question::Question::from(fake.wait_accepted(phone, 1).await.remove(0));
    // Killed once the question is recorded as sent and the run waits for the answer.
    let store = SqliteStore::open(&cfg.db()).await.unwrap();
    eventually(|| async {
        let c = store.counts().await.unwrap();
        let ok = c.runs_by_status.get("waiting") == Some(&1)
            && c.outbox_by_status.get("delivered") == Some(&1);
        ok.then_some(())
    })
    .await;
    first.kill();

    let second = Gateway::start(&cfg).await;
    let (id, title) = q.buttons[0].clone();
    let (press, _) = fake.press(phone, &q.wamid, &id, &title, false);
    assert_eq!(fake.deliver(&second.url, "wa", press).await, vec![200]);
    let sent = fake.wait_accepted(phone, 2).await;
    assert_eq!(sent[1].text(), "got 1 after 1");
    eventually(|| async {
        let c = store.counts().await.unwrap();
        let settled =
            c.runs_by_status.get("done") == Some(&1) && !c.outbox_by_status.contains_key("pending");
        settled.then_some(())
    })
    .await;
    assert_eq!(fake.accepted_to(phone).len(), 2);
    second.kill();
}

const OFFER: &str = r#"id = "distribute"
on = { webhook = "deal" }
subject = "deal:{{ event.id }}"
[[step]]
offer = { to = "wa:{{ event.phone }}", template = "New deal *{{ event.id }}*", buttons = [{ id = "accept", text = "Accept" }, { id = "decline", text = "Decline", decline = true }], who = "any", timeout = "10m", links = [{ text = "Open in CRM", url = "https://crm.example/deals/{{ event.id }}" }] }
[[step]]
send = { to = "ops", template = "{{ run.claim.name }} took deal {{ event.id }}" }
"#;

#[tokio::test]
async fn an_offer_is_taken_by_a_press_and_the_taken_text_follows_as_a_reply() {
    let fake = FakeWhatsApp::start().await;
    let (_cfg, t) = app(&fake, &[("distribute.toml", OFFER)], "").await;
    let phone = "48555000660";
    let (hi, _) = fake.text(phone, "Fay", "hi");
    assert_eq!(fake.deliver(&t.app.url(), "wa", hi).await, vec![200]);
    let (_, b) = t
        .post("deal", json!({"id": 7, "phone": format!("+{phone}")}))
        .await;
    let run = t.runs_of(b["event_id"].as_i64().unwrap()).await[0].id;
    let offer = fake_question::Question::from(fake.wait_accepted(phone, 1).await.remove(0));
    assert_eq!(
        offer.text,
        "New deal *7*\nOpen in CRM: https://crm.example/deals/7"
    );
    let titles: Vec<&str> = offer.buttons.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(titles, vec!["Accept", "Decline"]);
    let (id, title) = offer.buttons[0].clone();
    let (press, _) = fake.press(phone, &offer.wamid, &id, &title, false);
    assert_eq!(fake.deliver(&t.app.url(), "wa", press).await, vec![200]);
    let run = t.finished(run).await;
    assert_eq!(run.vars["claim"]["name"], "Customer");
    let sent = fake.wait_accepted(phone, 2).await;
    assert_eq!(sent[1].text(), "New deal *7*\n\n✅ *Customer*");
    assert_eq!(sent[1].body["context"]["message_id"], offer.wamid.as_str());
}

const MEDIA: &str = r#"id = "media"
on = { message = "wa" }
when = 'event.media'
[[step]]
send = { to = "ops", template = "{{ event.media.kind }} {{ event.media.mime_type }} {{ event.text }} {{ event.media.url }}" }
"#;

#[tokio::test]
async fn a_customers_file_comes_with_a_signed_link_that_expires() {
    let fake = FakeWhatsApp::start().await;
    let (_cfg, t) = app(&fake, &[("media.toml", MEDIA)], "").await;
    let (image, _) = fake.image(
        "48555000770",
        "media-77",
        b"\xff\xd8 jpeg bytes",
        "my receipt",
    );
    assert_eq!(fake.deliver(&t.app.url(), "wa", image).await, vec![200]);
    let run = eventually(|| async { runs_of_scenario(&t, "media").await.first().copied() }).await;
    let rows = settled_outbox(&t, run).await;
    let text = rows[0].request["text"].as_str().unwrap().to_string();
    let (head, url) = text.rsplit_once(' ').unwrap();
    assert_eq!(head, "image image/jpeg my receipt");
    assert!(
        url.starts_with(&format!("{}/whatsapp/wa/media/media-77?exp=", t.app.url())),
        "{url}"
    );

    let got = t.http.get(url).send().await.unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(got.headers()["content-type"], "image/jpeg");
    assert_eq!(&got.bytes().await.unwrap()[..], b"\xff\xd8 jpeg bytes");
    // Another file under the same signature, or a changed expiry, is refused.
    let other = url.replace("media-77", "media-78");
    assert_eq!(t.http.get(&other).send().await.unwrap().status(), 403);
    let longer = url.replace("exp=", "exp=9");
    assert_eq!(t.http.get(&longer).send().await.unwrap().status(), 403);
    // A week later the link has expired.
    t.advance(std::time::Duration::from_secs(8 * 24 * 3600));
    assert_eq!(t.http.get(url).send().await.unwrap().status(), 410);
}

/// The gateway with the `notify-wa` scenario, on a channel whose window template is
/// `order_update`.
async fn notifying(fake: &FakeWhatsApp) -> (ConfigDir, TestApp) {
    let (file, text) = notify("wa");
    let template = "window_template = { name = \"order_update\", language = \"en\" }";
    app(fake, &[(&file, &text)], template).await
}

/// The outbox row `id` once `pred` holds for it.
async fn row_when(t: &TestApp, id: i64, pred: impl Fn(&OutboxRow) -> bool) -> OutboxRow {
    eventually(|| async {
        let row = t.app.store.outbox(id).await.unwrap()?;
        pred(&row).then_some(row)
    })
    .await
}

/// The results of a run's `status` journal entries.
async fn status_entries(t: &TestApp, run: i64) -> Vec<String> {
    let run = t.app.store.run(run).await.unwrap().unwrap();
    run.journal
        .iter()
        .filter(|e| e["action"] == "status")
        .map(|e| e["result"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test]
async fn statuses_are_recorded_on_the_message_and_in_the_journal_of_the_run_that_sent_it() {
    let fake = FakeWhatsApp::start().await;
    let (_cfg, t) = notifying(&fake).await;
    let rows = ship(&t, "wa", "+48555000701", "C-1").await;
    let (row, run) = (rows[0].id, rows[0].run_id.unwrap());
    let wamid = fake.accepted_to("48555000701")[0].wamid.clone().unwrap();
    assert_eq!(rows[0].message_ref.as_deref(), Some(wamid.as_str()));

    // Delivered, delivered again (Meta retries), then read.
    for s in ["delivered", "delivered", "read"] {
        let status = fake.status(&wamid, "48555000701", s, None);
        assert_eq!(fake.deliver(&t.app.url(), "wa", status).await, vec![200]);
    }
    let seen = row_when(&t, row, |r| r.statuses.len() >= 2).await;
    let kinds: Vec<&str> = seen
        .statuses
        .iter()
        .map(|s| s["status"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, vec!["delivered", "read"]);
    assert_eq!(
        (seen.status.as_str(), seen.delivery_status.as_deref()),
        ("delivered", Some("read"))
    );
    assert_eq!(status_entries(&t, run).await, vec!["delivered", "read"]);

    // A status of a message the gateway never sent changes nothing and fails nothing.
    let stray = fake.status("wamid.NOT-OURS", "48555000701", "read", None);
    assert_eq!(fake.deliver(&t.app.url(), "wa", stray).await, vec![200]);
    let events = processed_through(&t, "wa", "wamid", "wamid.NOT-OURS").await;
    let stray = events
        .iter()
        .find(|e| e.meta["wamid"] == "wamid.NOT-OURS")
        .unwrap();
    assert_eq!(stray.status, "done");
    let after = t.app.store.outbox(row).await.unwrap().unwrap();
    assert_eq!(after.statuses.len(), 2);

    // The admin API's view of the run shows them on the message.
    let (code, detail) = t.get(&format!("/api/runs/{run}")).await;
    assert_eq!(code, 200);
    assert_eq!(detail["requests"][0]["delivery_status"], "read");
    assert_eq!(detail["requests"][0]["message_ref"], wamid.as_str());
    assert_eq!(detail["requests"][0]["statuses"][1]["status"], "read");
}

#[tokio::test]
async fn a_status_that_overtakes_its_delivery_is_recorded_once_the_delivery_is() {
    let fake = FakeWhatsApp::start().await;
    let (_cfg, t) = notifying(&fake).await;
    fake.hold_answers();
    let (_, r) = t
        .post(
            "shipped-wa",
            json!({"phone": "+48555000709", "order": "E-1"}),
        )
        .await;
    let run = t.runs_of(r["event_id"].as_i64().unwrap()).await[0].id;
    // Meta accepted the message and reports it delivered before the gateway has its answer.
    let sent = fake.wait_accepted("48555000709", 1).await;
    let wamid = sent[0].wamid.clone().unwrap();
    let status = fake.status(&wamid, "48555000709", "delivered", None);
    assert_eq!(fake.deliver(&t.app.url(), "wa", status).await, vec![200]);
    let events = processed_through(&t, "wa", "wamid", wamid.as_str()).await;
    let ev = events.iter().find(|e| e.kind == "status").unwrap();
    assert!(ev
        .outcome
        .as_ref()
        .unwrap()
        .to_string()
        .contains("kept until"));

    fake.release_answers();
    let rows = settled_outbox(&t, run).await;
    let row = row_when(&t, rows[0].id, |r| r.delivery_status.is_some()).await;
    assert_eq!(row.delivery_status.as_deref(), Some("delivered"));
    assert_eq!(row.statuses.len(), 1);
    assert_eq!(status_entries(&t, run).await, vec!["delivered"]);
}

#[tokio::test]
async fn a_message_meta_reports_failed_shows_its_error_and_retry_sends_it_again() {
    let fake = FakeWhatsApp::start().await;
    let (_cfg, t) = notifying(&fake).await;
    let rows = ship(&t, "wa", "+48555000702", "C-2").await;
    let (row, run) = (rows[0].id, rows[0].run_id.unwrap());
    let wamid = rows[0].message_ref.clone().unwrap();
    let failed = fake.status(&wamid, "48555000702", "failed", Some(131026));
    assert_eq!(fake.deliver(&t.app.url(), "wa", failed).await, vec![200]);
    let seen = row_when(&t, row, |r| r.delivery_status.as_deref() == Some("failed")).await;
    assert_eq!(
        seen.last_error.as_deref(),
        Some("failed: 131026 Message Undeliverable — Unable to deliver message.")
    );
    assert_eq!(seen.statuses[0]["error"]["code"], 131026);
    assert_eq!(
        status_entries(&t, run).await,
        vec!["failed: 131026 Message Undeliverable — Unable to deliver message."]
    );
    let (_, detail) = t.get(&format!("/api/runs/{run}")).await;
    assert_eq!(detail["requests"][0]["delivery_status"], "failed");
    assert!(detail["requests"][0]["last_error"]
        .as_str()
        .unwrap()
        .contains("131026 Message Undeliverable"));

    // The journal page shows Meta's error on the message, with a Retry that sends it again.
    let (client, session) = pages_session(&t).await;
    let admin = t.app.admin_url();
    let page = client
        .get(format!("{admin}/ui/runs/{run}"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("131026 Message Undeliverable") && page.contains("retry-request"),
        "{page}"
    );
    let r = client
        .post(format!("{admin}/ui/outbox/{row}/retry?run={run}"))
        .header("cookie", &session)
        .header("origin", &admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let sent = fake.wait_accepted("48555000702", 2).await;
    assert_eq!(sent[1].text(), "Order C-2 has shipped");
    let again = row_when(&t, row, |r| {
        r.status == "delivered" && r.message_ref.as_deref() != Some(wamid.as_str())
    })
    .await;
    assert_eq!(again.message_ref, sent[1].wamid);
    assert_eq!((again.delivery_status, again.statuses.len()), (None, 0));
}

#[tokio::test]
async fn a_send_meta_refused_for_good_is_sent_again_by_retry() {
    let fake = FakeWhatsApp::start().await;
    let (_cfg, t) = notifying(&fake).await;
    fake.script("48555000703", &[Script::Meta(131026)]);
    let rows = ship(&t, "wa", "+48555000703", "C-3").await;
    assert_eq!((rows[0].status.as_str(), rows[0].attempts), ("failed", 1));
    assert!(rows[0]
        .last_error
        .as_deref()
        .unwrap()
        .contains("(#131026) Message Undeliverable"));
    assert!(fake.accepted_to("48555000703").is_empty());

    let (code, body) = t
        .post_api(&format!("/api/outbox/{}/retry", rows[0].id))
        .await;
    assert_eq!(code, 200, "{body}");
    let sent = fake.wait_accepted("48555000703", 1).await;
    assert_eq!(sent[0].text(), "Order C-3 has shipped");
    let row = row_when(&t, rows[0].id, |r| r.status == "delivered").await;
    assert_eq!(row.message_ref, sent[0].wamid);
    let tries: Vec<Option<i64>> = fake
        .sent()
        .iter()
        .filter(|s| s.to == "48555000703")
        .map(|s| s.error)
        .collect();
    assert_eq!(tries, vec![Some(131026), None]);
    // A delivered message cannot be retried.
    let (code, _) = t
        .post_api(&format!("/api/outbox/{}/retry", rows[0].id))
        .await;
    assert_eq!(code, 409);
}

#[tokio::test]
async fn the_replies_an_ask_takes_are_marked_read() {
    let fake = FakeWhatsApp::start().await;
    let (_cfg, t) = app(&fake, &[("confirm.toml", CONFIRM)], "").await;
    let q = asked(&fake, &t, "48555000704", 4).await;
    let (maybe, maybe_id) = fake.text("48555000704", "Cara", "maybe");
    assert_eq!(fake.deliver(&t.app.url(), "wa", maybe).await, vec![200]);
    fake.wait_accepted("48555000704", 2).await;
    let (id, title) = q.buttons[2].clone();
    let (press, press_id) = fake.press("48555000704", &q.wamid, &id, &title, false);
    assert_eq!(fake.deliver(&t.app.url(), "wa", press).await, vec![200]);
    let mut read = fake.wait_read(2).await;
    read.sort();
    let mut want = vec![maybe_id, press_id];
    want.sort();
    assert_eq!(read, want);
    let run = runs_of_scenario(&t, "confirm").await[0];
    t.finished(run).await;
    // The customer's first message answered no ask: it stays unread.
    assert_eq!(fake.read().len(), 2);
}

/// A scenario that sends the approved template `name` (`POST /hooks/approved-<name>`, with
/// dashes for underscores).
fn approved(name: &str) -> (String, String) {
    let hook = name.replace('_', "-");
    (
        format!("approved-{hook}.toml"),
        format!(
            "id = \"approved-{hook}\"\non = {{ webhook = \"approved-{hook}\" }}\n[[step]]\nsend = {{ to = \"wa:{{{{ event.phone }}}}\", template = \"Order {{{{ event.order }}}} is ready\", approved_template = {{ name = \"{name}\", language = \"en\", params = [\"{{{{ event.order }}}}\"] }} }}\n"
        ),
    )
}

#[tokio::test]
async fn an_approved_template_goes_as_such_inside_the_window_and_meta_checks_its_params() {
    let fake = FakeWhatsApp::start().await;
    let files: Vec<(String, String)> = ["order_update", "appointment_reminder", "no_such"]
        .iter()
        .map(|n| approved(n))
        .collect();
    let files: Vec<(&str, &str)> = files
        .iter()
        .map(|(f, s)| (f.as_str(), s.as_str()))
        .collect();
    let (_cfg, t) = app(&fake, &files, "").await;
    let phone = "48555000705";
    let (hi, _) = fake.text(phone, "Gus", "hi");
    assert_eq!(fake.deliver(&t.app.url(), "wa", hi).await, vec![200]);
    let approve = |order: &str| json!({"phone": format!("+{phone}"), "order": order});
    let (_, b) = t.post("approved-order-update", approve("D-1")).await;
    let run = t.runs_of(b["event_id"].as_i64().unwrap()).await[0].id;
    let rows = settled_outbox(&t, run).await;
    assert_eq!(rows[0].status, "delivered");
    assert_eq!(rows[0].response.as_ref().unwrap()["sent_as"], "template");
    let sent = fake.wait_accepted(phone, 1).await;
    assert_eq!(sent[0].body["type"], "template");
    assert_eq!(sent[0].body["template"]["name"], "order_update");
    assert_eq!(sent[0].text(), "D-1");

    // A template with two body parameters, given one: Meta refuses it, for good.
    let (_, b) = t
        .post("approved-appointment-reminder", approve("D-2"))
        .await;
    let run = t.runs_of(b["event_id"].as_i64().unwrap()).await[0].id;
    let rows = settled_outbox(&t, run).await;
    assert_eq!((rows[0].status.as_str(), rows[0].attempts), ("failed", 1));
    assert!(
        rows[0].last_error.as_deref().unwrap().contains("(#132000)"),
        "{:?}",
        rows[0].last_error
    );
    // An unknown template name is refused too.
    let (_, b) = t.post("approved-no-such", approve("D-3")).await;
    let run = t.runs_of(b["event_id"].as_i64().unwrap()).await[0].id;
    let rows = settled_outbox(&t, run).await;
    assert!(rows[0].last_error.as_deref().unwrap().contains("(#132001)"));
    assert_eq!(fake.accepted_to(phone).len(), 1);
}
