//! An offer to several people (`staff:@sales`) spread over Telegram and WhatsApp: each gets
//! the message with the buttons, the first press across all of them wins, and every other
//! recipient is told, by an edit where the channel edits and by a short message in their
//! language where it cannot. A list of addresses works the same way.

use std::time::Duration;

use serde_json::{json, Value};
use switchboard::store::EventFilter;

use crate::fake_telegram::{click_update, FakeTelegram, TOKEN};
use crate::fake_whatsapp::FakeWhatsApp;
use crate::support::*;

const DISTRIBUTE: &str = r#"id = "distribute"
on = { webhook = "deal" }
subject = "deal:{{ event.id }}"
[[step]]
offer = { to = "staff:@sales", template = "New deal *{{ event.id }}*", buttons = [{ id = "accept", text = "Accept" }], who = "staff", timeout = "10m" }
branch = { timeout = "escalate" }
[[step]]
send = { to = "ops", template = "{{ run.claim.name }} took deal {{ event.id }}" }
stop = true
[[step]]
label = "escalate"
send = { to = "ops", template = "nobody took deal {{ event.id }}" }
"#;

/// The sales team: two on Telegram (private chats with the bot), three on WhatsApp; two
/// read Russian, one on each channel.
const TELEGRAM_STAFF: [(&str, i64, Option<&str>); 2] =
    [("Elena", 101, Some("ru")), ("Marek", 102, None)];
const WHATSAPP_STAFF: [(&str, &str, Option<&str>); 3] = [
    ("Olga", "48555000701", Some("ru")),
    ("Piotr", "48555000702", None),
    ("Zofia", "48555000703", None),
];

fn gateway(tg: &FakeTelegram, wa: &FakeWhatsApp) -> String {
    let mut g = format!(
        "[defaults]\nretry_delay = \"50ms\"\nretry_max_delay = \"200ms\"\n\n[channels.tg]\ntype = \"telegram\"\ntoken = \"{TOKEN}\"\napi_url = \"{}\"\n\n[channels.ops]\ntype = \"log\"\noutput = \"journal\"\n\n{}",
        tg.url,
        wa.channel("")
    );
    let lang = |l: Option<&str>| {
        l.map(|l| format!("language = \"{l}\"\n"))
            .unwrap_or_default()
    };
    for (name, id, l) in TELEGRAM_STAFF {
        g += &format!(
            "\n[[staff]]\nid = \"{}\"\nname = \"{name}\"\n{}ids = {{ telegram = \"{id}\" }}\ngroups = [\"sales\"]\n",
            name.to_lowercase(),
            lang(l)
        );
    }
    for (name, phone, l) in WHATSAPP_STAFF {
        g += &format!(
            "\n[[staff]]\nid = \"{}\"\nname = \"{name}\"\n{}ids = {{ whatsapp = \"+{phone}\" }}\ngroups = [\"sales\"]\n",
            name.to_lowercase(),
            lang(l)
        );
    }
    // Staff, but not in the group the offer goes to.
    g += "\n[[staff]]\nid = \"ivan\"\nname = \"Ivan\"\nids = { whatsapp = \"+48555000799\" }\n";
    g
}

struct Offered {
    t: TestApp,
    _cfg: ConfigDir,
    tg: FakeTelegram,
    wa: FakeWhatsApp,
    run: i64,
    /// Per Telegram recipient: the chat, the button's callback data, the message id.
    telegram: Vec<(i64, String, i64)>,
    /// Per WhatsApp recipient: the number, the button's (id, title), the message's wamid.
    whatsapp: Vec<(String, (String, String), String)>,
}

/// The app with the offer for deal 42 posted to all five.
async fn offered() -> Offered {
    let (tg, wa) = (FakeTelegram::start().await, FakeWhatsApp::start().await);
    let cfg = ConfigDir::with(&[("distribute.toml", DISTRIBUTE)]);
    cfg.write("gateway.toml", &gateway(&tg, &wa));
    let t = TestApp::spawn(&cfg).await;
    // Each WhatsApp recipient wrote first: the 24-hour window is open.
    for (name, phone, _) in WHATSAPP_STAFF
        .iter()
        .chain([&("Ivan", "48555000799", None)])
    {
        let (hi, _) = wa.text(phone, name, "hi");
        assert_eq!(wa.deliver(&t.app.url(), "wa", hi).await, vec![200]);
    }
    let (_, b) = t.post("deal", json!({"id": 42})).await;
    let run = t.runs_of(b["event_id"].as_i64().unwrap()).await[0].id;

    let sent = tg.wait_for("sendMessage", TELEGRAM_STAFF.len()).await;
    let mut telegram = Vec::new();
    for (_, chat, _) in TELEGRAM_STAFF {
        let m = sent
            .iter()
            .find(|c| c.params["chat_id"] == chat)
            .expect("each Telegram recipient gets the offer");
        assert_eq!(m.params["text"], "New deal *42*");
        let data = m.params["reply_markup"]["inline_keyboard"][0][0]["callback_data"]
            .as_str()
            .unwrap()
            .to_string();
        telegram.push((chat, data, m.message_id.unwrap()));
    }
    let mut whatsapp = Vec::new();
    for (_, phone, _) in WHATSAPP_STAFF {
        let m = wa.wait_accepted(phone, 1).await.remove(0);
        assert_eq!(m.text(), "New deal *42*");
        let b = &m.body["interactive"]["action"]["buttons"][0]["reply"];
        let button = (
            b["id"].as_str().unwrap().to_string(),
            b["title"].as_str().unwrap().to_string(),
        );
        whatsapp.push((phone.to_string(), button, m.wamid.unwrap()));
    }
    assert!(wa.accepted_to("48555000799").is_empty());
    Offered {
        t,
        _cfg: cfg,
        tg,
        wa,
        run,
        telegram,
        whatsapp,
    }
}

/// Every click event once `n` of them are stored and processed.
async fn clicks_processed(t: &TestApp, n: usize) -> Vec<switchboard::store::EventRow> {
    eventually_within(Duration::from_secs(60), || async {
        let events = t
            .app
            .store
            .list_events(&EventFilter {
                limit: 500,
                ..Default::default()
            })
            .await
            .unwrap();
        let clicks: Vec<_> = events.into_iter().filter(|e| e.kind == "click").collect();
        (clicks.len() == n && clicks.iter().all(|e| e.status != "pending")).then_some(clicks)
    })
    .await
}

fn verdicts(events: &[switchboard::store::EventRow]) -> Vec<String> {
    events
        .iter()
        .flat_map(|e| e.outcome.iter())
        .flat_map(|o| o.as_array().cloned().unwrap_or_else(|| vec![o.clone()]))
        .filter_map(|o| o["verdict"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test]
async fn fifty_presses_from_five_recipients_on_two_channels_have_one_winner() {
    let o = offered().await;
    let (t, tg, wa) = (&o.t, &o.tg, &o.wa);

    // Presses from people the offer was not sent to: a staff member outside the group on
    // WhatsApp quoting a recipient's message, and a stranger on Telegram with a recipient's
    // callback data.
    let (_, button, wamid) = &o.whatsapp[0];
    let (press, _) = wa.press("48555000799", wamid, &button.0, &button.1, false);
    assert_eq!(wa.deliver(&t.app.url(), "wa", press).await, vec![200]);
    let (_, data, mid) = &o.telegram[0];
    let stranger = click_update(999, 999, "Stranger", data, *mid);
    let stranger_id = stranger["callback_query"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    tg.inject(stranger);
    let refused = clicks_processed(t, 2).await;
    assert_eq!(
        verdicts(&refused),
        vec!["a click from another message"; 2],
        "{refused:?}"
    );
    let answers = tg.wait_for("answerCallbackQuery", 1).await;
    assert_eq!(answers[0].params["callback_query_id"], stranger_id.as_str());
    assert_eq!(
        answers[0].params["text"],
        "This button is no longer active."
    );
    assert!(t
        .app
        .store
        .run(o.run)
        .await
        .unwrap()
        .unwrap()
        .status
        .is_active());

    // 50 presses at once, ten from each recipient.
    let url = t.app.url();
    let mut deliveries = Vec::new();
    for round in 0..10 {
        for (chat, data, mid) in &o.telegram {
            let name = format!("Press{round}");
            tg.inject(click_update(*chat, *chat, &name, data, *mid));
        }
        for (phone, (id, title), wamid) in &o.whatsapp {
            let (press, _) = wa.press(phone, wamid, id, title, false);
            deliveries.push(wa.deliver(&url, "wa", press));
        }
    }
    for answer in futures::future::join_all(deliveries).await {
        assert_eq!(answer, vec![200]);
    }
    let events = clicks_processed(t, 52).await;
    let verdicts = verdicts(&events);
    assert_eq!(verdicts.iter().filter(|v| *v == "won").count(), 1);
    let done = t.finished(o.run).await;
    let winner = done.vars["claim"]["name"].as_str().unwrap().to_string();
    let staff = done.vars["claim"]["staff"]["id"].as_str().unwrap();
    assert_eq!(staff, winner.to_lowercase());
    assert_eq!(
        verdicts
            .iter()
            .filter(|v| **v == format!("already taken by {winner}"))
            .count(),
        49,
        "{verdicts:?}"
    );
    let rows = settled_outbox(t, o.run).await;
    let log: Vec<&Value> = rows
        .iter()
        .filter(|r| r.channel == "ops")
        .map(|r| &r.request)
        .collect();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0]["text"], format!("{winner} took deal 42"));

    // Telegram: every press answered, each recipient's message edited once, buttons gone.
    let answers = tg.wait_for("answerCallbackQuery", 21).await;
    let yours = answers
        .iter()
        .filter(|a| a.params["text"] == "It is yours.")
        .count();
    let telegram_won = TELEGRAM_STAFF.iter().any(|(n, _, _)| *n == winner);
    assert_eq!(yours, usize::from(telegram_won));
    let edits = tg.wait_for("editMessageText", TELEGRAM_STAFF.len()).await;
    for (chat, _, mid) in &o.telegram {
        let mine: Vec<_> = edits
            .iter()
            .filter(|e| e.params["chat_id"] == *chat)
            .collect();
        assert_eq!(mine.len(), 1, "one edit in chat {chat}");
        assert_eq!(mine[0].params["message_id"], *mid);
        assert_eq!(
            mine[0].params["text"],
            format!("New deal *42*\n\n✅ <b>{winner}</b>")
        );
        assert!(mine[0].params.get("reply_markup").is_none());
    }
    assert_eq!(tg.calls("editMessageText").len(), TELEGRAM_STAFF.len());

    // WhatsApp: no edits there; the winner's message is followed by the taken text, every
    // other recipient gets one short message in their language, quoting the offer.
    for ((name, phone, lang), (_, _, wamid)) in WHATSAPP_STAFF.iter().zip(&o.whatsapp) {
        let sent = wa.accepted_to(phone);
        assert_eq!(sent.len(), 2, "{name}: the offer and one more: {sent:?}");
        let expected = if *name == winner {
            format!("New deal *42*\n\n✅ *{winner}*")
        } else if *lang == Some("ru") {
            format!("Уже занято: {winner}.")
        } else {
            format!("Already taken by {winner}.")
        };
        assert_eq!(sent[1].text(), expected, "{name}");
        assert_eq!(sent[1].body["context"]["message_id"], wamid.as_str());
    }
    assert!(wa.accepted_to("48555000799").is_empty());
}

#[tokio::test]
async fn a_timeout_closes_every_recipients_message() {
    let o = offered().await;
    let (t, tg, wa) = (&o.t, &o.tg, &o.wa);
    t.advance(Duration::from_secs(11 * 60));
    let done = t.finished(o.run).await;
    assert_eq!(done.vars["claim"]["timed_out"], true);
    let rows = settled_outbox(t, o.run).await;
    assert!(rows
        .iter()
        .any(|r| r.request["text"] == "nobody took deal 42"));

    let edits = tg.wait_for("editMessageText", TELEGRAM_STAFF.len()).await;
    for (chat, _, mid) in &o.telegram {
        let e = edits
            .iter()
            .find(|e| e.params["chat_id"] == *chat)
            .expect("each Telegram message is closed");
        assert_eq!(e.params["message_id"], *mid);
        assert_eq!(e.params["text"], "New deal *42*\n\n⌛");
        assert!(e.params.get("reply_markup").is_none());
    }
    for ((name, phone, lang), (_, _, wamid)) in WHATSAPP_STAFF.iter().zip(&o.whatsapp) {
        let sent = wa.wait_accepted(phone, 2).await;
        let expected = match lang {
            Some("ru") => "Срок этого предложения истёк.",
            _ => "This offer has expired.",
        };
        assert_eq!(sent[1].text(), expected, "{name}");
        assert_eq!(sent[1].body["context"]["message_id"], wamid.as_str());
    }

    // A press after the timeout is refused as expired; nothing more is sent.
    let (_, data, mid) = &o.telegram[1];
    tg.inject(click_update(102, 102, "Marek", data, *mid));
    let answers = tg.wait_for("answerCallbackQuery", 1).await;
    assert_eq!(answers[0].params["text"], "This offer has expired.");
    for (_, phone, _) in WHATSAPP_STAFF {
        assert_eq!(wa.accepted_to(phone).len(), 2);
    }
}

#[test]
fn check_holds_an_offer_to_staff_to_every_members_channel() {
    let cfg = ConfigDir::empty();
    cfg.write(
        "gateway.toml",
        "[channels.tg]\ntype = \"telegram\"\ntoken = \"${SB_UNSET_TG_TOKEN:-}\"\n\n[channels.wa]\ntype = \"whatsapp\"\ntoken = \"${SB_UNSET_WA_TOKEN:-}\"\nphone_number_id = \"1\"\napp_secret = \"s\"\nverify_token = \"v\"\n\n[channels.ops]\ntype = \"log\"\n\n[[staff]]\nid = \"elena\"\nname = \"Elena\"\nids = { telegram = \"101\" }\ngroups = [\"sales\"]\n\n[[staff]]\nid = \"olga\"\nname = \"Olga\"\nids = { whatsapp = \"+48555000701\" }\ngroups = [\"sales\"]\n\n[[staff]]\nid = \"ivan\"\nname = \"Ivan\"\nids = { ops = \"ivan\" }\ngroups = [\"night\"]\n",
    );
    cfg.write(
        "offer.toml",
        "id = \"offer\"\non = { webhook = \"h\" }\n[[step]]\noffer = { to = \"staff:@sales\", template = \"Deal\", buttons = [{ id = \"a\", text = \"A title of twenty-five ch\" }, { id = \"b\", text = \"B\" }, { id = \"c\", text = \"C\" }, { id = \"d\", text = \"D\" }] }\n[[step]]\noffer = { to = \"staff:@night\", template = \"Deal\" }\n[[step]]\noffer = { to = \"staff:@nobody\", template = \"Deal\" }\n[[step]]\noffer = { to = [\"tg:1\", 2], template = \"Deal\" }\n",
    );
    let out = std::process::Command::new(bin())
        .args(["check", cfg.dir().to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let file = cfg.dir().join("offer.toml").display().to_string();
    for want in [
        format!("{file}:4:9: 4 buttons; channel 'wa' (whatsapp) shows at most 3 on a message"),
        format!(
            "{file}:4:81: button label is 25 characters; channel 'wa' (whatsapp) shows at most 20"
        ),
        format!("{file}:6:16: staff member 'ivan' has no id on a chat channel"),
        format!("{file}:8:16: no staff member or group '@nobody' in the staff directory"),
        format!("{file}:10:16: offer `to` is an address (tg:-1001, staff:@sales) or a list of addresses"),
    ] {
        assert!(text.contains(&want), "missing «{want}» in:\n{text}");
    }
    assert!(!text.contains("channel 'tg'"), "{text}");
}

const LISTED: &str = r#"id = "listed"
on = { webhook = "listed" }
[[step]]
offer = { to = ["tg:{{ event.chat }}", "wa:+{{ event.phone }}"], template = "Shift *{{ event.id }}*", buttons = [{ id = "take", text = "Take" }], timeout = "10m" }
[[step]]
send = { to = "ops", template = "{{ run.claim.name }} took shift {{ event.id }}" }
"#;

#[tokio::test]
async fn an_offer_to_a_list_reaches_each_address_and_the_first_press_wins() {
    let (tg, wa) = (FakeTelegram::start().await, FakeWhatsApp::start().await);
    let cfg = ConfigDir::with(&[("listed.toml", LISTED)]);
    cfg.write("gateway.toml", &gateway(&tg, &wa));
    let t = TestApp::spawn(&cfg).await;
    let phone = "48555000704";
    let (hi, _) = wa.text(phone, "Hanna", "hi");
    assert_eq!(wa.deliver(&t.app.url(), "wa", hi).await, vec![200]);
    let (_, b) = t
        .post("listed", json!({"id": 5, "chat": -700, "phone": phone}))
        .await;
    let run = t.runs_of(b["event_id"].as_i64().unwrap()).await[0].id;
    let posted = tg.wait_for("sendMessage", 1).await;
    assert_eq!(posted[0].params["chat_id"], -700);
    let offer = wa.wait_accepted(phone, 1).await.remove(0);
    assert_eq!(offer.text(), "Shift *5*");
    let reply = &offer.body["interactive"]["action"]["buttons"][0]["reply"];
    let (press, _) = wa.press(
        phone,
        offer.wamid.as_deref().unwrap(),
        reply["id"].as_str().unwrap(),
        reply["title"].as_str().unwrap(),
        false,
    );
    assert_eq!(wa.deliver(&t.app.url(), "wa", press).await, vec![200]);
    let done = t.finished(run).await;
    assert_eq!(done.vars["claim"]["user_id"], format!("+{phone}"));
    let edits = tg.wait_for("editMessageText", 1).await;
    assert_eq!(edits[0].params["chat_id"], -700);
    assert_eq!(edits[0].params["text"], "Shift *5*\n\n✅ <b>Customer</b>");
}
