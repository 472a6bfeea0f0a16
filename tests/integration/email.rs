//! E-mail against real servers on loopback: aiosmtpd records what the gateway sends, dovecot
//! holds the mailbox it reads. Messages with both parts, subjects per language and escaped
//! data; asks answered by replies (quoted text ignored, re-asked, exhausted); replies matched
//! by `References` and by plus address, and not by someone who was not asked; bounces,
//! suppression and one-click unsubscribe; SMTP refusals; a mailbox outage and a killed
//! gateway; an offer by e-mail with simultaneous clicks.

use std::time::Duration;

use serde_json::{json, Value};
use switchboard::channels::email::parse::parse;
use switchboard::store::{EventFilter, EventRow, RunStatus, SqliteStore, Store};

use crate::mail_servers::{Dovecot, SinkMail, SinkOptions, SmtpSink};
use crate::support::*;

/// The mailbox the gateway reads, and where replies are sent (`alice+<token>@example.com`).
const MAILBOX: &str = "alice";

fn gateway(imap: &Dovecot, smtp: &SmtpSink) -> String {
    format!(
        r#"[defaults]
retry_delay = "50ms"
retry_max_delay = "200ms"
http_attempts = 4

[http]
allow = ["127.0.0.1/32"]

[channels.ops]
type = "log"
output = "journal"

[channels.mail]
type = "email"
from = "Acme Support <bot@example.com>"
reply_to = "alice@example.com"
smtp = {{ host = "127.0.0.1", port = {}, security = "none" }}
imap = {{ host = "127.0.0.1", port = {}, security = "none", user = "alice", password = "secret", poll = "1s" }}
limits = {{ mailbox = "1000/1s", domain = "1000/1s" }}
"#,
        smtp.port, imap.port
    )
}

const CONFIRM: &str = r#"id = "confirm"
on = { webhook = "booked" }
subject = "appointment:{{ event.id }}"
[[step]]
ask = { to = "mail:{{ event.email }}", text = "ask-confirm", lang = "{{ event.lang }}", args = { when = "{{ event.time }}" }, retry_text = "confirm-only-digit", choices = ["1", "2", "3"], pattern = '\b([123])\b', retries = 1, timeout = "24h" }
branch = { exhausted = "handover", timeout = "handover" }
[[step]]
send = { to = "mail:{{ event.email }}", template = "got {{ run.answer.value }} after {{ run.answer.attempts }}", reply_to = "{{ run.answer.message }}" }
stop = true
[[step]]
label = "handover"
send = { to = "ops", template = "handover {{ event.id }}: {{ run.answer.text }}" }
"#;

const NOTIFY: &str = r#"id = "notify"
on = { webhook = "rated" }
[[step]]
send = { to = "mail:{{ event.email }}", text = "rating-alert", lang = "{{ event.lang }}", args = { operator = "{{ event.operator }}", rating = "{{ event.rating }}", call = "{{ event.call }}" }, notification = true, cc = ["{{ event.cc }}"] }
"#;

struct Mail {
    imap: Dovecot,
    smtp: SmtpSink,
    cfg: ConfigDir,
    t: TestApp,
}

async fn mail(files: &[(&str, &str)]) -> Mail {
    mail_with(files, SinkOptions::default()).await
}

async fn mail_with(files: &[(&str, &str)], opts: SinkOptions) -> Mail {
    let imap = Dovecot::start().await;
    let smtp = SmtpSink::start_with(opts).await;
    let cfg = ConfigDir::with(files);
    cfg.write("gateway.toml", &gateway(&imap, &smtp));
    let t = TestApp::spawn(&cfg).await;
    ready(&t).await;
    Mail { imap, smtp, cfg, t }
}

/// Once the mailbox reader has read the mailbox to its end.
async fn ready(t: &TestApp) {
    eventually(|| async {
        let r = t.readyz().await;
        (r["channels"]["mail"] == "ok").then_some(())
    })
    .await;
}

/// A reply as a mail client writes it.
fn reply(
    from: &str,
    to: &str,
    in_reply_to: Option<&str>,
    references: &[&str],
    body: &str,
) -> String {
    let id = format!("<{}@client.example.org>", rand_id());
    let mut headers = format!(
        "From: {from}\r\nTo: {to}\r\nSubject: Re: your appointment\r\nDate: Tue, 01 Dec 2026 10:00:00 +0000\r\nMessage-ID: {id}\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
    );
    if let Some(r) = in_reply_to {
        headers.push_str(&format!("In-Reply-To: <{r}>\r\n"));
    }
    if !references.is_empty() {
        let refs: Vec<String> = references.iter().map(|r| format!("<{r}>")).collect();
        headers.push_str(&format!("References: {}\r\n", refs.join(" ")));
    }
    format!("{headers}\r\n{}", body.replace('\n', "\r\n"))
}

fn rand_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}.{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The sent mails to `to`, once there are `n`.
async fn mails_to(smtp: &SmtpSink, to: &str, n: usize) -> Vec<SinkMail> {
    eventually(|| async {
        let got: Vec<SinkMail> = smtp
            .messages()
            .into_iter()
            .filter(|m| m.rcpt_tos.iter().any(|r| r == to))
            .collect();
        (got.len() >= n).then_some(got)
    })
    .await
}

fn message_id(m: &SinkMail) -> String {
    parse(m.data.as_bytes())
        .unwrap()
        .message_id
        .expect("every message has a Message-ID")
}

/// `Name: value` of a raw message's header block (unfolded).
fn header(m: &SinkMail, name: &str) -> Option<String> {
    let head = m.data.split("\r\n\r\n").next().unwrap_or_default();
    let unfolded = head.replace("\r\n ", " ").replace("\r\n\t", " ");
    unfolded.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
    })
}

async fn started_run(t: &TestApp, hook: &str, body: Value) -> i64 {
    let (status, b) = t.post(hook, body).await;
    assert_eq!(status, 202, "{b}");
    t.runs_of(b["event_id"].as_i64().unwrap()).await[0].id
}

/// The `message` events of the mail channel.
async fn replies_in(store: &dyn Store) -> Vec<EventRow> {
    let all = store
        .list_events(&EventFilter {
            source: Some("mail".into()),
            limit: 500,
            ..Default::default()
        })
        .await
        .unwrap();
    all.into_iter().filter(|e| e.kind == "message").collect()
}

async fn mail_events(t: &TestApp) -> Vec<EventRow> {
    t.app
        .store
        .list_events(&EventFilter {
            source: Some("mail".into()),
            limit: 500,
            ..Default::default()
        })
        .await
        .unwrap()
}

#[tokio::test]
async fn a_notification_has_both_parts_its_language_escaped_data_and_one_click_unsubscribe() {
    let m = mail(&[("notify.toml", NOTIFY)]).await;
    let body = json!({"email": "qa@example.com", "cc": "lead@example.com", "lang": "ru",
        "operator": "<b>R&D</b>", "rating": 2, "call": "c-1"});
    let run = started_run(&m.t, "rated", body.clone()).await;
    let sent = mails_to(&m.smtp, "qa@example.com", 1).await.remove(0);
    assert!(
        sent.rcpt_tos.contains(&"lead@example.com".to_string()),
        "{:?}",
        sent.rcpt_tos
    );
    let parsed = parse(sent.data.as_bytes()).unwrap();
    assert_eq!(parsed.subject, "Низкая оценка оператора <b>R&D</b>: 2");
    assert_eq!(
        parsed.text.trim(),
        "Оператор <b>R&D</b> получил оценку 2 (звонок c-1)."
    );
    let html = parsed.html.expect("an HTML part");
    assert!(
        html.contains("Оператор &lt;b&gt;R&amp;D&lt;/b&gt; получил"),
        "{html}"
    );
    assert_eq!(header(&sent, "Content-Language").as_deref(), Some("ru"));
    assert_eq!(
        header(&sent, "List-Unsubscribe-Post").as_deref(),
        Some("List-Unsubscribe=One-Click")
    );
    let row = &settled_outbox(&m.t, run).await[0];
    assert_eq!(row.message_ref.as_deref(), Some(message_id(&sent).as_str()));

    // A mail scanner opens the link: nothing happens.
    let unsubscribe = header(&sent, "List-Unsubscribe").unwrap();
    let url = unsubscribe.trim_start_matches('<').trim_end_matches('>');
    let page = m.t.http.get(url).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page
        .text()
        .await
        .unwrap()
        .contains("<form method=\"post\">"));
    started_run(&m.t, "rated", body.clone()).await;
    mails_to(&m.smtp, "qa@example.com", 2).await;

    // The mail client's one-click POST (RFC 8058) unsubscribes.
    let done =
        m.t.http
            .post(url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body("List-Unsubscribe=One-Click")
            .send()
            .await
            .unwrap();
    assert_eq!(done.status(), 200);
    let third = started_run(&m.t, "rated", body).await;
    let row = &settled_outbox(&m.t, third).await[0];
    assert_eq!(row.status, "delivered");
    let skipped = row.response.as_ref().unwrap()["not_sent"].as_str().unwrap();
    assert!(
        skipped.contains("qa@example.com is on the suppression list: unsubscribed"),
        "{skipped}"
    );
    let journal = m.t.finished(third).await.journal;
    assert!(
        journal.iter().any(|e| e["result"]
            .as_str()
            .is_some_and(|r| r.starts_with("not sent: qa@example.com is on the suppression list"))),
        "{journal:?}"
    );
    assert_eq!(mails_to(&m.smtp, "qa@example.com", 2).await.len(), 2);
    // The operator sees the list and takes the address off it: mail goes again.
    let (status, list) = m.t.get("/api/suppressions?channel=mail").await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["suppressions"][0]["address"], "qa@example.com");
    assert_eq!(list["suppressions"][0]["reason"], "unsubscribed");
    let lift = || {
        m.t.api(
            reqwest::Method::DELETE,
            "/api/suppressions/mail/qa@example.com",
            None,
        )
    };
    assert_eq!(lift().await.0, 200);
    assert_eq!(lift().await.0, 404);
    started_run(&m.t, "rated", json!({"email": "qa@example.com", "cc": "", "lang": "en", "operator": "Ann", "rating": 3, "call": "c-2"})).await;
    mails_to(&m.smtp, "qa@example.com", 3).await;
    // A forged link is refused.
    let forged = format!("{}x", &url[..url.len() - 1]);
    assert_eq!(m.t.http.post(&forged).send().await.unwrap().status(), 404);
}

#[tokio::test]
async fn an_ask_is_answered_by_a_reply_re_asked_on_a_wrong_one_and_exhausted() {
    let m = mail(&[("confirm.toml", CONFIRM)]).await;
    let ada = started_run(
        &m.t,
        "booked",
        json!({"id": 1, "email": "ada@example.com", "lang": "en", "time": "Friday 10:00"}),
    )
    .await;
    let bob = started_run(
        &m.t,
        "booked",
        json!({"id": 2, "email": "bob@example.com", "lang": "pl", "time": "piątek"}),
    )
    .await;
    let asked = mails_to(&m.smtp, "ada@example.com", 1).await.remove(0);
    let parsed = parse(asked.data.as_bytes()).unwrap();
    assert_eq!(
        parsed.subject,
        "Please confirm your appointment on Friday 10:00"
    );
    assert!(
        parsed.text.contains("Reply 1 to confirm"),
        "{}",
        parsed.text
    );
    let to_bob = mails_to(&m.smtp, "bob@example.com", 1).await.remove(0);
    assert_eq!(
        parse(to_bob.data.as_bytes()).unwrap().subject,
        "Potwierdź wizytę piątek"
    );

    // Not an answer, with the question quoted below: asked again.
    let first = message_id(&asked);
    let quoted = "maybe later\n\nOn Tue, 1 Dec 2026 at 09:00, Acme Support <bot@example.com> wrote:\n> Your appointment is on Friday 10:00. Reply 1 to confirm, 2 to reschedule, 3 to cancel.\n";
    m.imap
        .append(
            MAILBOX,
            reply(
                "Ada <ada@example.com>",
                "alice@example.com",
                Some(&first),
                &[&first],
                quoted,
            )
            .as_bytes(),
        )
        .await;
    let again = mails_to(&m.smtp, "ada@example.com", 2).await.remove(1);
    assert!(
        parse(again.data.as_bytes())
            .unwrap()
            .text
            .contains("Please answer with just one digit"),
        "{}",
        again.data
    );
    let second = message_id(&again);
    m.imap
        .append(
            MAILBOX,
            reply(
                "ada@example.com",
                "alice@example.com",
                Some(&second),
                &[&first, &second],
                "Yes, 2 please\n\n> Please answer with just one digit: 1, 2 or 3.\n",
            )
            .as_bytes(),
        )
        .await;
    let done = m.t.finished(ada).await;
    assert_eq!(done.status, RunStatus::Done);
    assert_eq!(done.vars["answer"]["value"], "2");
    assert_eq!(done.vars["answer"]["attempts"], 2);
    let thanks = mails_to(&m.smtp, "ada@example.com", 3).await.remove(2);
    assert!(parse(thanks.data.as_bytes())
        .unwrap()
        .text
        .contains("got 2 after 2"));
    // The answer is threaded under the reply it answers.
    assert!(header(&thanks, "In-Reply-To")
        .unwrap()
        .contains("@client.example.org"));
    let journal = serde_json::to_string(&done.journal).unwrap();
    assert!(journal.contains("\"reply\":\"maybe later\""), "{journal}");

    // Bob never gives a digit: the retries run out.
    let q = message_id(&to_bob);
    for text in ["nie wiem", "może"] {
        m.imap
            .append(
                MAILBOX,
                reply("bob@example.com", "alice@example.com", Some(&q), &[], text).as_bytes(),
            )
            .await;
        if text == "nie wiem" {
            mails_to(&m.smtp, "bob@example.com", 2).await;
        }
    }
    let out = m.t.finished(bob).await;
    assert_eq!(out.vars["answer"]["exhausted"], true);
    let ops = m.t.messages(bob).await;
    assert_eq!(ops.last().unwrap()["text"], "handover 2: może");
}

#[tokio::test]
async fn replies_find_their_run_by_references_or_plus_address_and_not_from_someone_else() {
    let m = mail(&[("confirm.toml", CONFIRM)]).await;
    let first = started_run(
        &m.t,
        "booked",
        json!({"id": 1, "email": "ada@example.com", "time": "Mon"}),
    )
    .await;
    let asked1 = mails_to(&m.smtp, "ada@example.com", 1).await.remove(0);
    let second = started_run(
        &m.t,
        "booked",
        json!({"id": 2, "email": "ada@example.com", "time": "Tue"}),
    )
    .await;
    let asked2 = mails_to(&m.smtp, "ada@example.com", 2).await.remove(1);
    let (id1, id2) = (message_id(&asked1), message_id(&asked2));

    // Someone the run did not ask replies to its message: it answers nothing.
    m.imap
        .append(
            MAILBOX,
            reply(
                "carol@example.com",
                "alice@example.com",
                Some(&id1),
                &[&id1],
                "1",
            )
            .as_bytes(),
        )
        .await;
    let events = eventually(|| async {
        let evs = mail_events(&m.t).await;
        evs.into_iter()
            .find(|e| e.data["from"]["address"] == "carol@example.com" && e.status == "done")
    })
    .await;
    let outcome = events.outcome.unwrap().to_string();
    assert!(outcome.contains("someone it is not asking"), "{outcome}");

    // Outlook rewrote In-Reply-To but kept References: the second run gets it, though the
    // first asked the same person earlier.
    m.imap
        .append(
            MAILBOX,
            reply(
                "ada@example.com",
                "alice@example.com",
                Some("rewritten@outlook.example"),
                &["unrelated@example.net", &id2],
                "Hi,\n\n1\n\nThanks, Ada",
            )
            .as_bytes(),
        )
        .await;
    let done = m.t.finished(second).await;
    assert_eq!(done.vars["answer"]["value"], "1");
    assert_eq!(
        m.t.app.store.run(first).await.unwrap().unwrap().status,
        RunStatus::Waiting
    );

    // Without any thread header or token, a sender is only a claim: it answers nothing.
    m.imap
        .append(
            MAILBOX,
            reply("ada@example.com", "alice@example.com", None, &[], "2").as_bytes(),
        )
        .await;
    let forged = eventually(|| async {
        mail_events(&m.t).await.into_iter().find(|e| {
            e.data["from"]["address"] == "ada@example.com"
                && e.data["thread"].is_null()
                && e.status == "done"
        })
    })
    .await;
    assert!(
        forged
            .outcome
            .unwrap()
            .to_string()
            .contains("replies to none of ours"),
        "answers no ask"
    );
    assert_eq!(
        m.t.app.store.run(first).await.unwrap().unwrap().status,
        RunStatus::Waiting
    );
    // A client that dropped both headers: the token in the reply address finds the run.
    let reply_to = header(&asked1, "Reply-To").unwrap();
    let tokened = reply_to
        .split('<')
        .nth(1)
        .unwrap()
        .trim_end_matches('>')
        .to_string();
    assert!(tokened.starts_with("alice+"), "{tokened}");
    m.imap
        .append(
            MAILBOX,
            reply("ada@example.com", &tokened, None, &[], "3").as_bytes(),
        )
        .await;
    let done = m.t.finished(first).await;
    assert_eq!(done.vars["answer"]["value"], "3");
}

#[tokio::test]
async fn a_bounce_fails_the_message_raises_a_status_event_and_suppresses_the_address() {
    let m = mail(&[("notify.toml", NOTIFY)]).await;
    let body = json!({"email": "gone@example.com", "cc": "", "lang": "en", "operator": "Ann", "rating": 3, "call": "c-9"});
    let run = started_run(&m.t, "rated", body.clone()).await;
    let sent = mails_to(&m.smtp, "gone@example.com", 1).await.remove(0);
    let original = message_id(&sent);
    let dsn = |recipient: &str| {
        format!(
        "From: MAILER-DAEMON@mx.example.com (Mail Delivery System)\r\nTo: bot@example.com\r\nSubject: Undelivered Mail Returned to Sender\r\nDate: Tue, 01 Dec 2026 10:00:00 +0000\r\nMessage-ID: <bounce.{}@mx.example.com>\r\nAuto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"B\"\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nI could not deliver your message.\r\n\r\n--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.com\r\n\r\nFinal-Recipient: rfc822; {recipient}\r\nAction: failed\r\nStatus: 5.1.1\r\nDiagnostic-Code: smtp; 550 5.1.1 <{recipient}>: Recipient address rejected: User unknown\r\n\r\n--B\r\nContent-Type: text/rfc822-headers\r\n\r\nMessage-ID: <{original}>\r\nFrom: Acme Support <bot@example.com>\r\nTo: gone@example.com\r\n\r\n--B--\r\n",
        rand_id()
    )
    };
    // A report about someone the message did not go to suppresses no one (anyone can
    // write a report).
    m.imap
        .append(MAILBOX, dsn("ceo@example.com").as_bytes())
        .await;
    m.imap
        .append(MAILBOX, dsn("gone@example.com").as_bytes())
        .await;
    let row = eventually(|| async {
        let rows = m.t.app.store.outbox_for_run(run).await.unwrap();
        rows.into_iter()
            .find(|r| r.delivery_status.as_deref() == Some("failed"))
    })
    .await;
    let error = row.last_error.unwrap();
    assert!(
        error.contains("5.1.1") && error.contains("User unknown"),
        "{error}"
    );
    let statuses: Vec<EventRow> = mail_events(&m.t)
        .await
        .into_iter()
        .filter(|e| e.kind == "status")
        .collect();
    assert_eq!(statuses.len(), 2, "{statuses:?}");
    let forged = statuses
        .iter()
        .find(|e| e.data["recipient"] == "ceo@example.com")
        .unwrap();
    assert_eq!(forged.status, "rejected", "{forged:?}");
    assert!(
        m.t.app
            .store
            .suppressed("mail", "ceo@example.com")
            .await
            .unwrap()
            .is_none(),
        "a report about someone else suppresses no one"
    );
    let journal =
        serde_json::to_string(&m.t.app.store.run(run).await.unwrap().unwrap().journal).unwrap();
    assert!(journal.contains("failed: 5.1.1"), "{journal}");
    let (why, _) =
        m.t.app
            .store
            .suppressed("mail", "gone@example.com")
            .await
            .unwrap()
            .expect("a hard bounce suppresses the address");
    assert!(why.starts_with("bounced: 5.1.1"), "{why}");

    let next = started_run(&m.t, "rated", body).await;
    let row = &settled_outbox(&m.t, next).await[0];
    assert!(
        row.response.as_ref().unwrap()["not_sent"]
            .as_str()
            .unwrap()
            .contains("suppression list: bounced"),
        "{row:?}"
    );
    assert_eq!(m.smtp.messages().len(), 1);
}

#[tokio::test]
async fn smtp_refusals_are_retried_when_temporary_and_journaled_when_permanent() {
    let opts = SinkOptions {
        refuse: vec![(
            "nobody@example.com".into(),
            "550 5.1.1 No such user here".into(),
        )],
        tempfail: vec![(
            "busy@example.com".into(),
            "451 4.3.0 Try again later".into(),
            2,
        )],
        ..Default::default()
    };
    let m = mail_with(&[("notify.toml", NOTIFY)], opts).await;
    let body = |email: &str| json!({"email": email, "cc": "", "lang": "en", "operator": "Ann", "rating": 3, "call": "c"});
    let busy = started_run(&m.t, "rated", body("busy@example.com")).await;
    let nobody = started_run(&m.t, "rated", body("nobody@example.com")).await;
    let row = &settled_outbox(&m.t, busy).await[0];
    assert_eq!(
        (row.status.as_str(), row.attempts),
        ("delivered", 3),
        "{row:?}"
    );
    let row = &settled_outbox(&m.t, nobody).await[0];
    assert_eq!(
        (row.status.as_str(), row.attempts),
        ("failed", 1),
        "{row:?}"
    );
    let error = row.last_error.as_deref().unwrap();
    assert!(
        error.contains("550") && error.contains("No such user here"),
        "{error}"
    );
    assert_eq!(mails_to(&m.smtp, "busy@example.com", 1).await.len(), 1);
}

#[tokio::test]
async fn the_reader_comes_back_after_a_mailbox_outage_and_reads_every_reply_once() {
    let mut m = mail(&[("confirm.toml", CONFIRM)]).await;
    let people = ["p1@example.com", "p2@example.com", "p3@example.com"];
    let mut runs = Vec::new();
    let mut questions = Vec::new();
    for (i, p) in people.iter().enumerate() {
        runs.push(started_run(&m.t, "booked", json!({"id": i, "email": p, "time": "Mon"})).await);
        questions.push(message_id(&mails_to(&m.smtp, p, 1).await[0]));
    }
    m.imap.stop().await;
    eventually(|| async {
        let r = m.t.readyz().await;
        let s = r["channels"]["mail"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        s.starts_with("mailbox reader failing").then_some(())
    })
    .await;
    // The replies arrive while IMAP is down.
    for (p, q) in people.iter().zip(&questions) {
        m.imap.deliver(
            MAILBOX,
            reply(p, "alice@example.com", Some(q), &[q], "1").as_bytes(),
        );
    }
    m.imap.start_again().await;
    // The reader's pause between attempts grows while the server is away (up to 30 s).
    for run in &runs {
        let done = eventually_within(Duration::from_secs(90), || async {
            m.t.app
                .store
                .run(*run)
                .await
                .unwrap()
                .filter(|r| r.status == RunStatus::Done)
        })
        .await;
        assert_eq!(done.vars["answer"]["value"], "1");
    }
    let journal = eventually(|| async {
        let events = mail_events(&m.t).await;
        let journal: Vec<String> = events
            .iter()
            .filter(|e| e.kind == "mailbox")
            .filter_map(|e| e.error.clone())
            .collect();
        journal
            .iter()
            .any(|e| e.starts_with("the mailbox reader reads again"))
            .then_some(journal)
    })
    .await;
    assert!(
        journal
            .iter()
            .any(|e| e.starts_with("the mailbox reader failed and retries")),
        "{journal:?}"
    );
    let replies = replies_in(m.t.app.store.as_ref()).await;
    assert_eq!(replies.len(), 3, "{replies:?}");
    let metrics =
        m.t.http
            .get(format!("{}/metrics", m.t.app.admin_url()))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
    for name in [
        "switchboard_mailbox_errors_total{channel=\"mail\"}",
        "switchboard_mailbox_last_poll_seconds{channel=\"mail\"}",
    ] {
        assert!(metrics.contains(name), "{name} missing in\n{metrics}");
    }
}

#[tokio::test]
async fn a_killed_gateway_loses_no_reply_and_handles_none_twice() {
    let _heavy = HEAVY.lock().await;
    let imap = Dovecot::start().await;
    let smtp = SmtpSink::start().await;
    let cfg = ConfigDir::with(&[("confirm.toml", CONFIRM)]);
    cfg.write("gateway.toml", &gateway(&imap, &smtp));
    let first = Gateway::start(&cfg).await;
    let n = 6;
    for i in 0..n {
        first
            .post(
                "booked",
                json!({"id": i, "email": format!("c{i}@example.com"), "time": "Mon"}),
            )
            .await;
    }
    let mut questions = Vec::new();
    for i in 0..n {
        questions.push(message_id(
            &mails_to(&smtp, &format!("c{i}@example.com"), 1).await[0],
        ));
    }
    let store = SqliteStore::open(&cfg.db()).await.unwrap();
    for (i, q) in questions.iter().enumerate() {
        imap.append(
            MAILBOX,
            reply(
                &format!("c{i}@example.com"),
                "alice@example.com",
                Some(q),
                &[],
                "2",
            )
            .as_bytes(),
        )
        .await;
    }
    // Killed once it has read some of the replies, perhaps in the middle of the others.
    eventually(|| async {
        let evs = replies_in(&store).await;
        (!evs.is_empty()).then_some(())
    })
    .await;
    first.kill();
    let second = Gateway::start(&cfg).await;
    eventually(|| async {
        let c = store.counts().await.unwrap();
        let sent = c.outbox_by_status.get("delivered") == Some(&(2 * n as i64));
        (c.runs_by_status.get("done") == Some(&(n as i64)) && sent).then_some(())
    })
    .await;
    second.kill();
    let evs = replies_in(&store).await;
    assert_eq!(evs.len(), n, "each reply stored once: {evs:?}");
    for i in 0..n {
        // The question and the answer's confirmation. One the first process sent without
        // recording it went again, as the same message (one Message-ID).
        let sent = mails_to(&smtp, &format!("c{i}@example.com"), 2).await;
        let mut ids: Vec<String> = sent.iter().map(message_id).collect();
        ids.dedup();
        assert_eq!(ids.len(), 2, "{ids:?}");
    }
}

const OFFER: &str = r#"id = "deal"
on = { webhook = "deal" }
[[step]]
offer = { to = ["mail:a@example.com", "mail:b@example.com", "mail:c@example.com"], template = "Deal <b>{{ event.title }}</b>", buttons = [{ id = "take", text = "Take it" }], timeout = "1h" }
[[step]]
send = { to = "ops", template = "{{ run.claim.user_id }} took {{ event.title }}" }
"#;

/// The link of the choice labelled `label` in a sent message's text part.
fn choice_link(m: &SinkMail, label: &str) -> String {
    let text = parse(m.data.as_bytes()).unwrap().text;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{label}: ")))
        .unwrap_or_else(|| panic!("no {label} link in {text}"))
        .trim()
        .to_string()
}

#[tokio::test]
async fn an_offer_by_email_to_three_people_has_one_winner_among_twenty_clicks() {
    let m = mail(&[("deal.toml", OFFER)]).await;
    let run = started_run(&m.t, "deal", json!({"title": "R&D <Ltd>"})).await;
    let mut links = Vec::new();
    for who in ["a@example.com", "b@example.com", "c@example.com"] {
        let sent = mails_to(&m.smtp, who, 1).await.remove(0);
        let html = parse(sent.data.as_bytes()).unwrap().html.unwrap();
        assert!(html.contains("Deal <b>R&amp;D &lt;Ltd&gt;</b>"), "{html}");
        links.push(choice_link(&sent, "Take it"));
    }
    // Scanners open every link: the offer stays open.
    for l in &links {
        let page =
            m.t.http
                .get(l)
                .header("user-agent", "Mimecast")
                .send()
                .await
                .unwrap();
        assert_eq!(page.status(), 200);
    }
    assert_eq!(
        m.t.app.store.run(run).await.unwrap().unwrap().status,
        RunStatus::Waiting
    );

    // Twenty clicks on the three links at once; the second person reads Polish. A link
    // posted again (a double click) is the same click.
    let clicks = (0..20).map(|i| {
        let http = m.t.http.clone();
        let url = links[i % 3].clone();
        async move {
            let lang = if i % 3 == 1 {
                "pl-PL,pl;q=0.9"
            } else {
                "en-GB,en;q=0.9"
            };
            let r = http
                .post(&url)
                .header("accept-language", lang)
                .send()
                .await
                .unwrap();
            (i % 3, r.status().as_u16(), r.text().await.unwrap())
        }
    });
    let pages = futures::future::join_all(clicks).await;
    assert!(pages.iter().all(|(_, s, _)| *s == 200), "{pages:?}");
    let answered: Vec<&(usize, u16, String)> = pages
        .iter()
        .filter(|(_, _, p)| !p.contains("Your choice was received."))
        .collect();
    assert_eq!(answered.len(), 3, "one answer per person: {pages:?}");
    let winners = answered
        .iter()
        .filter(|(_, _, p)| p.contains("It is yours.") || p.contains("Przypisano do Ciebie."))
        .count();
    assert_eq!(winners, 1, "{pages:?}");
    for (link, _, p) in &answered {
        let polish = p.contains("Przypisano do Ciebie.") || p.contains("Już zajęte przez");
        assert_eq!(
            *link == 1,
            polish,
            "answered in the clicker's language: {p}"
        );
    }
    let done = m.t.finished(run).await;
    let winner = done.vars["claim"]["user_id"].as_str().unwrap().to_string();
    assert!(winner.ends_with("@example.com"), "{winner}");
    let ops = m.t.messages(run).await;
    let took: Vec<&Value> = ops
        .iter()
        .filter(|o| o["text"].as_str().unwrap().contains(" took "))
        .collect();
    assert_eq!(took.len(), 1, "{ops:?}");
    assert_eq!(took[0]["text"], format!("{winner} took R&D <Ltd>"));
    // The others are told in the same thread, as e-mail cannot change a sent message.
    for who in ["a@example.com", "b@example.com", "c@example.com"] {
        let sent = mails_to(&m.smtp, who, 2).await;
        assert!(header(&sent[1], "In-Reply-To")
            .unwrap()
            .contains(&message_id(&sent[0])));
    }
    drop(m.cfg);
}

const INVOICE: &str = r#"id = "invoice"
on = { webhook = "invoice" }
[[step]]
send = { to = "mail:{{ event.email }}", subject = "Invoice {{ event.n }}", template = "Your invoice is attached.", attachments = ["{{ event.file }}"] }
"#;

#[tokio::test]
async fn files_are_fetched_by_url_and_attached_and_a_missing_one_fails_the_message() {
    let files = axum::Router::new().route(
        "/invoice-7.pdf",
        axum::routing::get(|| async { ([("content-type", "application/pdf")], "%PDF-1.4 seven") }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, files).await.unwrap() });
    let m = mail(&[("invoice.toml", INVOICE)]).await;
    let file = format!("{base}/invoice-7.pdf");
    started_run(
        &m.t,
        "invoice",
        json!({"email": "ada@example.com", "n": 7, "file": file}),
    )
    .await;
    let sent = mails_to(&m.smtp, "ada@example.com", 1).await.remove(0);
    let parsed = parse(sent.data.as_bytes()).unwrap();
    assert_eq!(parsed.subject, "Invoice 7");
    assert_eq!(parsed.attachments.len(), 1, "{:?}", parsed.attachments);
    let a = &parsed.attachments[0];
    assert_eq!(
        (a.name.as_deref(), a.content_type.as_str(), a.size),
        (
            Some("invoice-7.pdf"),
            "application/pdf",
            "%PDF-1.4 seven".len()
        )
    );
    let missing = format!("{base}/invoice-8.pdf");
    let run = started_run(
        &m.t,
        "invoice",
        json!({"email": "ada@example.com", "n": 8, "file": missing}),
    )
    .await;
    let row = &settled_outbox(&m.t, run).await[0];
    assert_eq!(row.status, "failed", "{row:?}");
    assert!(
        row.last_error
            .as_deref()
            .unwrap()
            .contains("invoice-8.pdf: HTTP 404"),
        "{row:?}"
    );
}

const INBOX: &str = r#"id = "inbox"
on = { message = "mail" }
[[step]]
send = { to = "ops", template = "from {{ event.from.address }}: {{ event.subject }} / {{ event.text }} / {{ event.attachments | length }} file(s)" }
"#;

#[tokio::test]
async fn new_mail_starts_a_scenario_and_automatic_replies_answer_nothing() {
    let m = mail(&[("inbox.toml", INBOX)]).await;
    let out_of_office = "From: Ann <ann@example.com>\r\nTo: alice@example.com\r\nSubject: Out of office\r\nMessage-ID: <ooo.1@example.com>\r\nAuto-Submitted: auto-replied\r\nContent-Type: text/plain\r\n\r\nI am away until Monday.\r\n";
    m.imap.append(MAILBOX, out_of_office.as_bytes()).await;
    let mail = "From: Ada <ada@example.com>\r\nTo: alice@example.com\r\nSubject: =?UTF-8?B?0JfQsNC60LDQtw==?= 42\r\nMessage-ID: <new.1@example.com>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"M\"\r\n\r\n--M\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nPlease call me back.\r\n-- \r\nAda, ACME\r\n--M\r\nContent-Type: application/pdf; name=\"order.pdf\"\r\nContent-Disposition: attachment; filename=\"order.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQ=\r\n--M--\r\n";
    m.imap.append(MAILBOX, mail.as_bytes()).await;
    let run = eventually(|| async { runs_of_scenario(&m.t, "inbox").await.first().copied() }).await;
    let ops = m.t.messages(run).await;
    assert_eq!(
        ops[0]["text"],
        "from ada@example.com: Заказ 42 / Please call me back. / 1 file(s)"
    );
    let events = mail_events(&m.t).await;
    let auto = events
        .iter()
        .find(|e| e.data["from"]["address"] == "ann@example.com")
        .expect("the automatic reply is journaled");
    assert_eq!(auto.status, "rejected");
    assert!(
        auto.error.as_deref().unwrap().contains("automatic reply"),
        "{auto:?}"
    );
    assert_eq!(runs_of_scenario(&m.t, "inbox").await.len(), 1);
}

/// `GET /readyz` of a gateway process.
async fn readyz_of(g: &Gateway) -> Value {
    reqwest::get(format!("{}/readyz", g.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_reads_the_mailbox_and_another_takes_over_from_the_stored_uid() {
    let _heavy = HEAVY.lock().await;
    let db_url = crate::pg::fresh_db().await;
    let imap = Dovecot::start().await;
    let smtp = SmtpSink::start().await;
    let cfg = ConfigDir::with(&[("confirm.toml", CONFIRM)]);
    cfg.write(
        "gateway.toml",
        &format!("[database]\nlease = \"2s\"\n\n{}", gateway(&imap, &smtp)),
    );
    let mut gws = vec![
        Gateway::start_on(&cfg, &db_url).await,
        Gateway::start_on(&cfg, &db_url).await,
    ];
    // Both are ready: one reads, the other stands by.
    for g in &gws {
        eventually(|| async {
            let r = readyz_of(g).await;
            (r["ready"] == true).then_some(())
        })
        .await;
    }
    let store = switchboard::store::open(&db_url, &Default::default())
        .await
        .unwrap();
    let n = 6;
    let mut questions = Vec::new();
    for i in 0..n {
        gws[i % 2]
            .post(
                "booked",
                json!({"id": i, "email": format!("r{i}@example.com"), "time": "Mon"}),
            )
            .await;
    }
    for i in 0..n {
        questions.push(message_id(
            &mails_to(&smtp, &format!("r{i}@example.com"), 1).await[0],
        ));
    }
    let answer = |i: usize| {
        reply(
            &format!("r{i}@example.com"),
            "alice@example.com",
            Some(&questions[i]),
            &[],
            "1",
        )
    };
    for i in 0..3 {
        imap.append(MAILBOX, answer(i).as_bytes()).await;
    }
    eventually(|| async { (replies_in(store.as_ref()).await.len() == 3).then_some(()) }).await;
    let owner: String =
        sqlx::query_scalar("SELECT owner FROM leases WHERE name = 'email_read:mail'")
            .fetch_one(&sqlx::PgPool::connect(&db_url).await.unwrap())
            .await
            .unwrap();
    let at = gws
        .iter()
        .position(|g| owner.contains(&format!("-{}-", g.pid())))
        .expect("the reader is one of ours");
    gws.remove(at).kill();
    for i in 3..n {
        imap.append(MAILBOX, answer(i).as_bytes()).await;
    }
    eventually(|| async {
        let c = store.counts().await.unwrap();
        (c.runs_by_status.get("done") == Some(&(n as i64))).then_some(())
    })
    .await;
    assert_eq!(
        replies_in(store.as_ref()).await.len(),
        n,
        "each reply stored once"
    );
}

#[tokio::test]
async fn an_attachment_on_a_private_address_is_refused_unless_allowed() {
    let imap = Dovecot::start().await;
    let smtp = SmtpSink::start().await;
    let cfg = ConfigDir::with(&[("invoice.toml", INVOICE)]);
    cfg.write(
        "gateway.toml",
        &gateway(&imap, &smtp).replace("allow = [\"127.0.0.1/32\"]", "allow = []"),
    );
    let t = TestApp::spawn(&cfg).await;
    ready(&t).await;
    let file = "http://169.254.169.254/latest/meta-data/iam/security-credentials/x";
    let run = started_run(
        &t,
        "invoice",
        json!({"email": "ada@example.com", "n": 1, "file": file}),
    )
    .await;
    let row = &settled_outbox(&t, run).await[0];
    assert_eq!(
        (row.status.as_str(), row.attempts),
        ("failed", 1),
        "{row:?}"
    );
    let error = row.last_error.as_deref().unwrap();
    assert!(error.contains("link-local"), "{error}");
    assert!(smtp.messages().is_empty());
}

const TWO_QUESTIONS: &str = r#"id = "two"
on = { webhook = "two" }
[[step]]
ask = { to = "mail:ada@example.com", template = "Confirm?", choices = ["Yes", "No"], buttons = "inline", timeout = "1h" }
[[step]]
ask = { to = "mail:ada@example.com", template = "Rate us", choices = ["Good", "Bad"], buttons = "inline", timeout = "1h", save = "rating" }
"#;

#[tokio::test]
async fn a_choice_link_of_an_earlier_question_answers_nothing() {
    let m = mail(&[("two.toml", TWO_QUESTIONS)]).await;
    let run = started_run(&m.t, "two", json!({})).await;
    let first = mails_to(&m.smtp, "ada@example.com", 1).await.remove(0);
    let (yes, no) = (choice_link(&first, "Yes"), choice_link(&first, "No"));
    let page =
        m.t.http
            .post(&yes)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
    assert!(
        page.contains("Thank you, your answer is recorded."),
        "{page}"
    );
    // The second question is out; the first one's other link comes late.
    mails_to(&m.smtp, "ada@example.com", 2).await;
    let stale =
        m.t.http
            .post(&no)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
    assert!(
        stale.contains("This button is no longer active."),
        "{stale}"
    );
    let r = m.t.app.store.run(run).await.unwrap().unwrap();
    assert_eq!((r.pc, r.status), (1, RunStatus::Waiting), "{:?}", r.journal);
    assert_eq!(r.vars["answer"]["value"], "yes");
    assert!(r.vars.get("rating").is_some_and(|v| v["value"].is_null()));
}
