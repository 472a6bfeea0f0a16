//! One scenario, four channels: the deal offer with a follow-up question, as one file whose
//! copies differ only in `to`, runs on Telegram, WhatsApp, e-mail and Discord (each a fake or
//! a real server on loopback). On each the first click takes the deal, a wrong answer is asked
//! again, and the right one finishes the run.

use serde_json::{json, Value};

use crate::fake_discord::{self, FakeDiscord};
use crate::fake_telegram::{self, click_update, text_update, FakeTelegram};
use crate::fake_whatsapp::FakeWhatsApp;
use crate::mail_servers::{Dovecot, SmtpSink};
use crate::support::*;

/// The scenario; `CH` and `TO` differ between the copies.
const DEAL: &str = r#"id = "deal-CH"
on = { webhook = "deal-CH" }
[[step]]
offer = { to = "TO", template = "New deal {{ event.id }}", buttons = [{ id = "take", text = "Take it" }], timeout = "1h" }
[[step]]
ask = { to = "TO", template = "Budget of deal {{ event.id }} confirmed? 1 yes, 2 no", choices = ["1", "2"], retries = 1, timeout = "1h" }
[[step]]
send = { to = "ops", template = "deal {{ event.id }}: taken, answered {{ run.answer.value }} after {{ run.answer.attempts }}" }
"#;

const TG_CHAT: i64 = -700;
const WA_PHONE: &str = "48555000704";
const MAIL_TO: &str = "ada@example.com";
const DC_CHANNEL: &str = "910000000000000009";

fn scenario(ch: &str, to: &str) -> (String, String) {
    (
        format!("deal-{ch}.toml"),
        DEAL.replace("CH", ch).replace("TO", to),
    )
}

struct Fakes {
    tg: FakeTelegram,
    wa: FakeWhatsApp,
    imap: Dovecot,
    smtp: SmtpSink,
    dc: FakeDiscord,
}

fn gateway(f: &Fakes) -> String {
    format!(
        r#"[defaults]
retry_delay = "50ms"
retry_max_delay = "200ms"

[http]
allow = ["127.0.0.1/32"]

[channels.ops]
type = "log"
output = "journal"

[channels.tg]
type = "telegram"
token = "{tg_token}"
api_url = "{tg}"
limits = {{ chat = "50/1s", group = "50/1s" }}

{wa}

[channels.mail]
type = "email"
from = "Deals <bot@example.com>"
smtp = {{ host = "127.0.0.1", port = {smtp}, security = "none" }}
imap = {{ host = "127.0.0.1", port = {imap}, security = "none", user = "alice", password = "secret", poll = "1s" }}

[channels.dc]
type = "discord"
token = "{dc_token}"
application_id = "{dc_app}"
api_url = "{dc}"
"#,
        tg_token = fake_telegram::TOKEN,
        tg = f.tg.url,
        wa = f.wa.channel("limits = { customer = \"50/1s\" }\n"),
        smtp = f.smtp.port,
        imap = f.imap.port,
        dc_token = fake_discord::TOKEN,
        dc_app = fake_discord::APP_ID,
        dc = f.dc.api_url(),
    )
}

/// Starts a deal on one channel; its run.
async fn deal(t: &TestApp, ch: &str, id: u32) -> i64 {
    let (status, b) = t.post(&format!("deal-{ch}"), json!({"id": id})).await;
    assert_eq!(status, 202, "{b}");
    t.runs_of(b["event_id"].as_i64().unwrap()).await[0].id
}

/// The run once it waits for the answer (the offer was taken).
async fn asking(t: &TestApp, run: i64) {
    t.run_when(run, |r| {
        r.pc == 1 && r.status.is_active() && r.vars.contains_key("claim")
    })
    .await;
}

/// The run finished: taken, asked twice, answered `1`.
async fn finished_well(t: &TestApp, run: i64, id: u32) {
    let done = t.finished(run).await;
    let ops = t.messages(run).await;
    let last = ops.last().unwrap()["text"].as_str().unwrap().to_string();
    assert_eq!(
        last,
        format!("deal {id}: taken, answered 1 after 2"),
        "{done:?}"
    );
}

fn mail_reply(question: &str, body: &str) -> String {
    format!(
        "From: {MAIL_TO}\r\nTo: bot@example.com\r\nSubject: Re: deal\r\nMessage-ID: <{}.{}@client.example.org>\r\nIn-Reply-To: <{question}>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n",
        std::process::id(),
        body.len()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_deal_offer_runs_on_every_channel_with_only_to_changed() {
    let _heavy = HEAVY.lock().await;
    let f = Fakes {
        tg: FakeTelegram::start().await,
        wa: FakeWhatsApp::start().await,
        imap: Dovecot::start().await,
        smtp: SmtpSink::start().await,
        dc: FakeDiscord::start().await,
    };
    let files = [
        scenario("tg", &format!("tg:{TG_CHAT}")),
        scenario("wa", &format!("wa:+{WA_PHONE}")),
        scenario("mail", &format!("mail:{MAIL_TO}")),
        scenario("dc", &format!("dc:{DC_CHANNEL}")),
    ];
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();
    let cfg = ConfigDir::with(&refs);
    cfg.write("gateway.toml", &gateway(&f));
    let t = TestApp::spawn(&cfg).await;
    f.dc.wait_ready().await;
    eventually(|| async { (t.readyz().await["ready"] == true).then_some(()) }).await;

    // Telegram: a manager in the group presses, then answers in the group.
    let run = deal(&t, "tg", 1).await;
    let offer = f.tg.wait_for("sendMessage", 1).await.remove(0);
    assert_eq!(offer.params["text"], "New deal 1");
    let data = offer.params["reply_markup"]["inline_keyboard"][0][0]["callback_data"]
        .as_str()
        .unwrap()
        .to_string();
    f.tg.inject(click_update(
        TG_CHAT,
        501,
        "Marek",
        &data,
        offer.message_id.unwrap(),
    ));
    asking(&t, run).await;
    f.tg.inject(text_update(TG_CHAT, 501, "en", "maybe"));
    f.tg.wait_for("sendMessage", 3).await;
    f.tg.inject(text_update(TG_CHAT, 501, "en", "1"));
    finished_well(&t, run, 1).await;

    // WhatsApp: the customer wrote first (the 24-hour window), presses, answers.
    let (hi, _) = f.wa.text(WA_PHONE, "Hanna", "hi");
    assert_eq!(f.wa.deliver(&t.app.url(), "wa", hi).await, vec![200]);
    let run = deal(&t, "wa", 2).await;
    let offer = f.wa.wait_accepted(WA_PHONE, 1).await.remove(0);
    assert_eq!(offer.text(), "New deal 2");
    let b = &offer.body["interactive"]["action"]["buttons"][0]["reply"];
    let (press, _) = f.wa.press(
        WA_PHONE,
        offer.wamid.as_deref().unwrap(),
        b["id"].as_str().unwrap(),
        b["title"].as_str().unwrap(),
        false,
    );
    assert_eq!(f.wa.deliver(&t.app.url(), "wa", press).await, vec![200]);
    asking(&t, run).await;
    let (wrong, _) = f.wa.text(WA_PHONE, "Hanna", "maybe");
    f.wa.deliver(&t.app.url(), "wa", wrong).await;
    f.wa.wait_accepted(WA_PHONE, 4).await;
    let (right, _) = f.wa.text(WA_PHONE, "Hanna", "1");
    f.wa.deliver(&t.app.url(), "wa", right).await;
    finished_well(&t, run, 2).await;

    // E-mail: the link's page button takes it; replies answer.
    let run = deal(&t, "mail", 3).await;
    let sent = f.smtp.wait_for(1).await;
    let offer = switchboard::channels::email::parse::parse(sent[0].data.as_bytes()).unwrap();
    assert_eq!(offer.subject, "New deal 3");
    let link = offer
        .text
        .lines()
        .find_map(|l| l.strip_prefix("Take it: "))
        .unwrap()
        .trim()
        .to_string();
    let page = t
        .http
        .post(&link)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("It is yours."), "{page}");
    asking(&t, run).await;
    let question = |n: usize| {
        let f = &f;
        async move {
            let all = f.smtp.wait_for(n).await;
            let q = switchboard::channels::email::parse::parse(all[n - 1].data.as_bytes()).unwrap();
            assert!(q.text.contains("confirmed?"), "{}", q.text);
            q.message_id.unwrap()
        }
    };
    // The offer, its "taken" notice, the question.
    let q = question(3).await;
    f.imap
        .append("alice", mail_reply(&q, "maybe").as_bytes())
        .await;
    let again = question(4).await;
    f.imap
        .append("alice", mail_reply(&again, "1").as_bytes())
        .await;
    finished_well(&t, run, 3).await;

    // Discord: a button press in the channel, answers in the channel.
    let run = deal(&t, "dc", 4).await;
    let path = format!("/channels/{DC_CHANNEL}/messages");
    f.dc.wait_for(&path, 1).await;
    let message: Value = f.dc.messages(DC_CHANNEL)[0].clone();
    assert_eq!(message["content"], "New deal 4");
    let custom_id = message["components"][0]["components"][0]["custom_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (press, _) = f.dc.button_interaction(
        &message,
        Some("900000000000000001"),
        "7001",
        "ada",
        "en-US",
        &custom_id,
    );
    f.dc.dispatch("INTERACTION_CREATE", press);
    asking(&t, run).await;
    // Messages posted to the channel (edits are PATCHes to the same path).
    let posted = |n: usize| {
        let (f, path) = (&f, &path);
        async move {
            eventually(|| async {
                let p: Vec<_> =
                    f.dc.calls(path)
                        .into_iter()
                        .filter(|c| c.method == "POST")
                        .collect();
                (p.len() >= n).then_some(p)
            })
            .await
        }
    };
    let asked = posted(2).await;
    assert!(asked[1].body["content"]
        .as_str()
        .unwrap()
        .contains("confirmed?"));
    let say = |text: &str| {
        f.dc.message_create(
            DC_CHANNEL,
            Some("900000000000000001"),
            "7001",
            "ada",
            text,
            None,
        )
    };
    f.dc.dispatch("MESSAGE_CREATE", say("maybe"));
    posted(3).await;
    f.dc.dispatch("MESSAGE_CREATE", say("1"));
    finished_well(&t, run, 4).await;
}
