//! Discord against the fake Discord (REST and gateway, driven through serenity): messages
//! start scenarios and get markdown replies with data escaped; an offer with 200 presses at
//! once has one winner, every press acknowledged within 3 s and the others told in their
//! language; an ask answered in a thread; the interactions endpoint's signatures; a dropped
//! gateway connection resumed without losing or repeating an event; a 429 obeyed; webhooks.

use serde_json::{json, Value};

use crate::fake_discord::{interaction_keys, sign, FakeDiscord, APP_ID, TOKEN};
use crate::support::*;

const GUILD: &str = "900000000000000001";
const CHANNEL: &str = "910000000000000001";

fn gateway(fake: &FakeDiscord, extra: &str) -> String {
    let (public_key, _) = interaction_keys();
    format!(
        "[defaults]\nretry_delay = \"50ms\"\nretry_max_delay = \"200ms\"\nhttp_attempts = 4\n\n[channels.ops]\ntype = \"log\"\noutput = \"journal\"\n\n[channels.dc]\ntype = \"discord\"\ntoken = \"{TOKEN}\"\napplication_id = \"{APP_ID}\"\npublic_key = \"{public_key}\"\napi_url = \"{}\"\nlimits = {{ channel = \"100/1s\", bot = \"1000/1s\" }}\n{extra}",
        fake.api_url()
    )
}

async fn app(fake: &FakeDiscord, files: &[(&str, &str)], extra: &str) -> (ConfigDir, TestApp) {
    let cfg = ConfigDir::with(files);
    cfg.write("gateway.toml", &gateway(fake, extra));
    let t = TestApp::spawn(&cfg).await;
    (cfg, t)
}

/// Once the session is ready.
async fn ready(t: &TestApp, fake: &FakeDiscord) {
    fake.wait_ready().await;
    eventually(|| async { (t.readyz().await["channels"]["dc"] == "ok").then_some(()) }).await;
}

const ECHO: &str = r#"id = "echo"
on = { message = "dc" }
[[step]]
send = { to = "dc:{{ event.chat.id }}", template = "echo **{{ event.text }}** from {{ event.from.username }}", reply_to = "{{ event.message }}" }
"#;

#[tokio::test]
async fn a_message_in_a_channel_starts_a_scenario_and_gets_an_escaped_reply() {
    let fake = FakeDiscord::start().await;
    let (_cfg, t) = app(&fake, &[("echo.toml", ECHO)], "").await;
    ready(&t, &fake).await;
    let m = fake.message_create(
        CHANNEL,
        Some(GUILD),
        "7001",
        "ada_l",
        "*hi* @everyone",
        None,
    );
    fake.dispatch("MESSAGE_CREATE", m.clone());
    let sent = fake
        .wait_for(&format!("/channels/{CHANNEL}/messages"), 1)
        .await;
    assert_eq!(sent[0].status, 200, "{:?}", sent[0]);
    assert_eq!(
        sent[0].body["content"],
        "echo **\\*hi\\* \\@everyone** from ada\\_l"
    );
    assert_eq!(sent[0].body["message_reference"]["message_id"], m["id"]);
    assert_eq!(
        sent[0].body["allowed_mentions"]["parse"],
        json!(["users", "roles"])
    );
}

const OFFER: &str = r#"id = "deal"
on = { webhook = "deal" }
[[step]]
offer = { to = "dc:{{ event.channel }}", template = "New deal **{{ event.title }}**", buttons = [{ id = "take", text = "Take it" }], timeout = "1h" }
[[step]]
send = { to = "ops", template = "{{ run.claim.name }} took it" }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_presses_on_an_offer_have_one_winner_and_each_is_acknowledged_in_time() {
    let _heavy = HEAVY.lock().await;
    let fake = FakeDiscord::start().await;
    let (_cfg, t) = app(&fake, &[("deal.toml", OFFER)], "").await;
    ready(&t, &fake).await;
    let (_, b) = t
        .post("deal", json!({"channel": CHANNEL, "title": "Boiler"}))
        .await;
    let run = t.runs_of(b["event_id"].as_i64().unwrap()).await[0].id;
    let posted = fake
        .wait_for(&format!("/channels/{CHANNEL}/messages"), 1)
        .await;
    let message: Value = fake.messages(CHANNEL)[0].clone();
    assert_eq!(message["content"], "New deal **Boiler**");
    let custom_id = message["components"][0]["components"][0]["custom_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(posted.len(), 1);
    let n = 200;
    // Two hundred people press before any of them sees the message change.
    let presses: Vec<Value> = (0..n)
        .map(|i| {
            let locale = if i % 2 == 0 { "en-US" } else { "pl" };
            fake.button_interaction(
                &message,
                Some(GUILD),
                &format!("80{i:04}"),
                &format!("user{i}"),
                locale,
                &custom_id,
            )
            .0
        })
        .collect();
    for press in presses {
        fake.dispatch("INTERACTION_CREATE", press);
    }
    let done = t.finished(run).await;
    let winner = done.vars["claim"]["name"].as_str().unwrap().to_string();
    // Every press was acknowledged within Discord's 3 s; nobody saw "This interaction failed".
    let outcomes = eventually(|| async {
        let o = fake.interaction_outcomes();
        let answered = o.iter().filter(|o| o.content.is_some()).count();
        (o.len() == n && answered == n).then_some(o)
    })
    .await;
    assert!(outcomes.iter().all(|o| !o.failed), "{outcomes:?}");
    assert!(outcomes.iter().all(|o| o.acknowledged_after.is_some()));
    let yours: Vec<_> = outcomes
        .iter()
        .filter(|o| {
            let c = o.content.as_deref().unwrap_or_default();
            c == "It is yours." || c == "Przypisano do Ciebie."
        })
        .collect();
    assert_eq!(yours.len(), 1, "one winner");
    assert!(
        outcomes.iter().all(|o| o.ephemeral),
        "answers only the clicker sees"
    );
    assert!(outcomes
        .iter()
        .any(|o| o.content.as_deref() == Some(&format!("Już zajęte przez {winner}.")[..])));
    assert!(outcomes
        .iter()
        .any(|o| o.content.as_deref() == Some(&format!("Already taken by {winner}.")[..])));
    // The offer's message is changed in place: the taker, and no buttons.
    let closed = eventually(|| async {
        let m = fake.messages(CHANNEL)[0].clone();
        m["content"].as_str().unwrap().contains('✅').then_some(m)
    })
    .await;
    assert_eq!(
        closed["content"],
        format!("New deal **Boiler**\n\n✅ **{winner}**")
    );
    assert_eq!(closed["components"], json!([]));
}

const THREAD_ASK: &str = r#"id = "confirm"
on = { webhook = "booked" }
[[step]]
ask = { to = "dc:{{ event.thread }}", template = "Confirm? Reply 1 or 2", choices = ["1", "2"], retries = 1, timeout = "1h" }
[[step]]
send = { to = "dc:{{ event.thread }}", template = "got {{ run.answer.value }}" }
"#;

#[tokio::test]
async fn an_ask_is_answered_in_a_thread() {
    let fake = FakeDiscord::start().await;
    let (_cfg, t) = app(&fake, &[("confirm.toml", THREAD_ASK)], "").await;
    ready(&t, &fake).await;
    let thread = "920000000000000001";
    let (_, b) = t.post("booked", json!({"thread": thread})).await;
    let run = t.runs_of(b["event_id"].as_i64().unwrap()).await[0].id;
    let asked = fake
        .wait_for(&format!("/channels/{thread}/messages"), 1)
        .await;
    assert_eq!(asked[0].body["content"], "Confirm? Reply 1 or 2");
    let question = fake.messages(thread)[0].clone();
    // A message elsewhere answers nothing; the reply in the thread does.
    fake.dispatch(
        "MESSAGE_CREATE",
        fake.message_create(CHANNEL, Some(GUILD), "7002", "bob", "2", None),
    );
    fake.dispatch(
        "MESSAGE_CREATE",
        fake.message_create(thread, Some(GUILD), "7001", "ada", "1", Some(&question)),
    );
    let done = t.finished(run).await;
    assert_eq!(done.vars["answer"]["value"], "1");
    let sent = fake
        .wait_for(&format!("/channels/{thread}/messages"), 2)
        .await;
    assert_eq!(sent[1].body["content"], "got 1");
}

#[tokio::test]
async fn the_interactions_endpoint_checks_signatures_answers_pings_and_takes_presses() {
    let fake = FakeDiscord::start().await;
    let (_cfg, t) = app(&fake, &[("deal.toml", OFFER)], "mode = \"interactions\"\n").await;
    eventually(|| async { (t.readyz().await["ready"] == true).then_some(()) }).await;
    let url = format!("{}/discord/dc", t.app.url());
    let (_, key) = interaction_keys();
    let post = |body: String, sig: Option<String>, ts: &str| {
        let mut r = t
            .http
            .post(&url)
            .header("content-type", "application/json")
            .header("x-signature-timestamp", ts);
        if let Some(s) = sig {
            r = r.header("x-signature-ed25519", s);
        }
        r.body(body).send()
    };
    let ping = json!({"id": "1", "application_id": APP_ID, "type": 1, "token": "t", "version": 1})
        .to_string();
    let ts = "1764583200";
    let good = sign(&key, ts, ping.as_bytes());
    let r = post(ping.clone(), Some(good.clone()), ts).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"type": 1}));
    // A signature of other bytes, another timestamp, or none: 401.
    assert_eq!(
        post(ping.clone(), Some(good.clone()), "1764583201")
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        post(format!("{ping} "), Some(good), ts)
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(post(ping.clone(), None, ts).await.unwrap().status(), 401);
    let forged = sign(
        &ed25519_dalek::SigningKey::from_bytes(&[9; 32]),
        ts,
        ping.as_bytes(),
    );
    assert_eq!(post(ping, Some(forged), ts).await.unwrap().status(), 401);

    // A press through the endpoint: stored, acknowledged in the response, answered after.
    let (_, b) = t
        .post("deal", json!({"channel": CHANNEL, "title": "Kiln"}))
        .await;
    let run = t.runs_of(b["event_id"].as_i64().unwrap()).await[0].id;
    fake.wait_for(&format!("/channels/{CHANNEL}/messages"), 1)
        .await;
    let message = fake.messages(CHANNEL)[0].clone();
    let custom_id = message["components"][0]["components"][0]["custom_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (press, _) =
        fake.button_interaction(&message, Some(GUILD), "7001", "ada", "en-US", &custom_id);
    let body = press.to_string();
    let r = post(body.clone(), Some(sign(&key, ts, body.as_bytes())), ts)
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"type": 6}));
    let done = t.finished(run).await;
    assert_eq!(done.vars["claim"]["name"], "ada");
}

#[tokio::test]
async fn a_dropped_gateway_connection_resumes_and_no_event_is_lost_or_repeated() {
    let fake = FakeDiscord::start().await;
    let (_cfg, t) = app(&fake, &[("echo.toml", ECHO)], "").await;
    ready(&t, &fake).await;
    fake.dispatch(
        "MESSAGE_CREATE",
        fake.message_create(CHANNEL, Some(GUILD), "7001", "ada", "one", None),
    );
    fake.wait_for(&format!("/channels/{CHANNEL}/messages"), 1)
        .await;
    fake.drop_connection();
    // Sent while the connection is down: replayed on RESUME.
    fake.dispatch(
        "MESSAGE_CREATE",
        fake.message_create(CHANNEL, Some(GUILD), "7001", "ada", "two", None),
    );
    fake.wait_resumed(1).await;
    fake.dispatch(
        "MESSAGE_CREATE",
        fake.message_create(CHANNEL, Some(GUILD), "7001", "ada", "three", None),
    );
    let sent = fake
        .wait_for(&format!("/channels/{CHANNEL}/messages"), 3)
        .await;
    let mut texts: Vec<String> = sent
        .iter()
        .map(|c| c.body["content"].as_str().unwrap().to_string())
        .collect();
    texts.sort();
    assert_eq!(
        texts,
        vec![
            "echo **one** from ada",
            "echo **three** from ada",
            "echo **two** from ada"
        ]
    );
    assert_eq!(fake.identifies(), 1, "resumed, not identified again");
    let events = processed_through(&t, "dc", "discord", true).await;
    assert_eq!(events.iter().filter(|e| e.kind == "message").count(), 3);
}

const NOTIFY: &str = r##"id = "notify"
on = { webhook = "notify" }
[[step]]
send = { to = "dc:{{ event.channel }}", template = "{{ event.text }}", embed = { title = "Rating {{ event.rating }}", description = "Operator **{{ event.operator }}**", color = "#e67e22", fields = [{ name = "Call", value = "{{ event.call }}", inline = true }], footer = "call centre" } }
[[step]]
send = { to = "alerts", template = "alert: {{ event.text }}", buttons = [{ text = "Open", url = "https://crm.example.com/1" }], embed = { title = "Rating {{ event.rating }}" } }
"##;

#[tokio::test]
async fn a_429_is_waited_out_and_webhooks_post_notifications() {
    let fake = FakeDiscord::start().await;
    fake.add_webhook("930000000000000001", "hooktoken", CHANNEL);
    let extra = format!(
        "\n[channels.alerts]\ntype = \"discord-webhook\"\nurl = \"{}/api/v10/webhooks/930000000000000001/hooktoken\"\n",
        fake.api_url()
    );
    let (_cfg, t) = app(&fake, &[("notify.toml", NOTIFY)], &extra).await;
    ready(&t, &fake).await;
    fake.rate_limit_next(&format!("/channels/{CHANNEL}/messages"), 0.5);
    let (_, b) = t
        .post(
            "notify",
            json!({"channel": CHANNEL, "text": "R&D *now*", "rating": 2, "operator": "*Olga*", "call": "c-1"}),
        )
        .await;
    let run = t.runs_of(b["event_id"].as_i64().unwrap()).await[0].id;
    let rows = settled_outbox(&t, run).await;
    assert!(rows.iter().all(|r| r.status == "delivered"), "{rows:?}");
    let calls = fake.calls(&format!("/channels/{CHANNEL}/messages"));
    assert_eq!(
        calls.iter().map(|c| c.status).collect::<Vec<_>>(),
        vec![429, 200]
    );
    assert_eq!(fake.too_early(), 0, "retry_after obeyed");
    let embed = &calls[1].body["embeds"][0];
    assert_eq!(embed["title"], "Rating 2");
    assert_eq!(embed["description"], "Operator **\\*Olga\\***");
    assert_eq!(embed["color"], 0xe67e22);
    assert_eq!(
        embed["fields"][0],
        json!({"name": "Call", "value": "c\\-1", "inline": true})
    );
    assert_eq!(embed["footer"]["text"], "call centre");
    let hooked = fake.wait_for("/webhooks/930000000000000001", 1).await;
    assert_eq!(
        hooked[0].body["content"],
        "alert: R&D \\*now\\*\n[Open](https://crm.example.com/1)"
    );
    assert_eq!(hooked[0].body["embeds"][0]["title"], "Rating 2");
    assert_eq!(t.readyz().await["channels"]["alerts"], "ok");
}

#[test]
fn check_holds_scenarios_to_discords_component_limits_with_positions() {
    let buttons: Vec<String> = (0..26)
        .map(|i| format!("{{ id = \"b{i}\", text = \"B{i}\" }}"))
        .collect();
    let cfg = ConfigDir::with(&[(
        "big.toml",
        &format!(
            "id = \"big\"\non = {{ webhook = \"big\" }}\n[[step]]\noffer = {{ to = \"dc:1\", template = \"Deal\", buttons = [{}] }}\n[[step]]\nsend = {{ to = \"alerts\", template = \"x\", buttons = [{{ id = \"ack\", text = \"OK\" }}] }}\n[[step]]\nsend = {{ to = \"dc:1\", template = \"x\", buttons = [{{ id = \"{}\", text = \"{}\" }}] }}\n[[step]]\nsend = {{ to = \"ops\", template = \"x\", embed = {{ title = \"T\" }} }}\n[[step]]\nsend = {{ to = \"dc:1\", template = \"x\", embed = {{ color = \"red\" }} }}\n",
            buttons.join(", "),
            "i".repeat(99),
            "L".repeat(81)
        ),
    )]);
    let gw = std::fs::read_to_string(cfg.dir().join("gateway.toml")).unwrap();
    cfg.write(
        "gateway.toml",
        &format!("{gw}\n[channels.dc]\ntype = \"discord\"\ntoken = \"t\"\napplication_id = \"1\"\n\n[channels.alerts]\ntype = \"discord-webhook\"\nurl = \"\"\n"),
    );
    let out = std::process::Command::new(bin())
        .args(["check", cfg.dir().to_str().unwrap()])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    let file = cfg.dir().join("big.toml").display().to_string();
    for wanted in [
        format!("{file}:4:"),
        "at most 25".to_string(),
        "channel 'alerts' (discord-webhook) has no callback buttons".to_string(),
        format!("{file}:10:46: channel 'ops' (log) has no embeds"),
        format!("{file}:12:57: color 'red' should look like #e67e22"),
        "80".to_string(),
    ] {
        assert!(text.contains(&wanted), "{wanted} missing in\n{text}");
    }
}

const DM: &str = r#"id = "dm"
on = { webhook = "dm" }
[[step]]
send = { to = "staff:elena", template = "Deal {{ event.id }} is yours" }
[[step]]
send = { to = "dc:@{{ event.user }}", template = "and again" }
"#;

#[tokio::test]
async fn a_user_is_reached_by_direct_message_and_staff_by_their_discord_id() {
    let fake = FakeDiscord::start().await;
    let staff = "\n[[staff]]\nid = \"elena\"\nname = \"Elena\"\nids = { discord = \"@7005\" }\n";
    let (_cfg, t) = app(&fake, &[("dm.toml", DM)], staff).await;
    ready(&t, &fake).await;
    let (_, b) = t.post("dm", json!({"id": 9, "user": "7005"})).await;
    let run = t.runs_of(b["event_id"].as_i64().unwrap()).await[0].id;
    let rows = settled_outbox(&t, run).await;
    assert!(rows.iter().all(|r| r.status == "delivered"), "{rows:?}");
    // The DM channel is opened once and used for both.
    assert_eq!(fake.calls("/users/@me/channels").len(), 1);
    let texts: Vec<Value> = fake
        .messages("7006")
        .iter()
        .map(|m| m["content"].clone())
        .collect();
    assert_eq!(texts, vec![json!("Deal 9 is yours"), json!("and again")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_holds_the_gateway_session_and_another_takes_it_over() {
    let _heavy = HEAVY.lock().await;
    let db = crate::pg::fresh_db().await;
    let fake = FakeDiscord::start().await;
    let cfg = ConfigDir::with(&[("echo.toml", ECHO)]);
    cfg.write(
        "gateway.toml",
        &format!("[database]\nlease = \"2s\"\n\n{}", gateway(&fake, "")),
    );
    let mut gws = vec![
        Gateway::start_on(&cfg, &db).await,
        Gateway::start_on(&cfg, &db).await,
    ];
    let state = |g: &Gateway| {
        let url = format!("{}/readyz", g.url);
        async move {
            let r: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
            r["channels"]["dc"].as_str().unwrap_or_default().to_string()
        }
    };
    // One holds the session, the other stands by; both are ready.
    let leader = eventually(|| async {
        let (a, b) = (state(&gws[0]).await, state(&gws[1]).await);
        let standby = "ok (another replica holds the session)";
        match (a.as_str(), b.as_str()) {
            ("ok", s) if s == standby => Some(0),
            (s, "ok") if s == standby => Some(1),
            _ => None,
        }
    })
    .await;
    assert_eq!(fake.identifies(), 1, "one session for the bot");
    gws.remove(leader).kill();
    // The other takes the lease over and opens the session.
    eventually_within(std::time::Duration::from_secs(60), || async {
        (fake.identifies() == 2 && state(&gws[0]).await == "ok").then_some(())
    })
    .await;
    fake.wait_ready().await;
    fake.dispatch(
        "MESSAGE_CREATE",
        fake.message_create(CHANNEL, Some(GUILD), "7001", "ada", "after", None),
    );
    let sent = fake
        .wait_for(&format!("/channels/{CHANNEL}/messages"), 1)
        .await;
    assert_eq!(sent[0].body["content"], "echo **after** from ada");
}

const ACK: &str = r#"id = "notice"
on = { webhook = "notice" }
[[step]]
send = { to = "dc:{{ event.channel }}", template = "Server {{ event.host }} is down", buttons = [{ id = "ack", text = "On it" }], save = "note" }
"#;

const ACKED: &str = r#"id = "acked"
on = { click = "dc", button = "ack" }
[[step]]
edit = { to = "dc:{{ event.chat.id }}", message = "{{ event.message }}", template = "Taken by {{ event.from.username }}" }
"#;

#[tokio::test]
async fn a_button_of_a_send_starts_a_click_scenario_that_edits_the_message() {
    let fake = FakeDiscord::start().await;
    let (_cfg, t) = app(&fake, &[("notice.toml", ACK), ("acked.toml", ACKED)], "").await;
    ready(&t, &fake).await;
    t.post("notice", json!({"channel": CHANNEL, "host": "db1"}))
        .await;
    fake.wait_for(&format!("/channels/{CHANNEL}/messages"), 1)
        .await;
    let message = fake.messages(CHANNEL)[0].clone();
    assert_eq!(message["content"], "Server db1 is down");
    let (press, _) =
        fake.button_interaction(&message, Some(GUILD), "7003", "olga", "en-US", "b:ack");
    fake.dispatch("INTERACTION_CREATE", press);
    let edited = eventually(|| async {
        let m = fake.messages(CHANNEL)[0].clone();
        (m["content"] == "Taken by olga").then_some(m)
    })
    .await;
    assert_eq!(edited["components"], json!([]));
    // The press was acknowledged in time and needed no words.
    let outcomes = fake.interaction_outcomes();
    assert!(
        outcomes
            .iter()
            .all(|o| o.acknowledged_after.is_some() && !o.failed),
        "{outcomes:?}"
    );
}
