//! Trigger links end to end: made in a message, clicked, and refused when they should be.

use std::time::Duration;

use serde_json::json;
use switchboard::store::{EventFilter, EventRow, RunFilter, RunStatus};

use crate::support::*;

const FLOWS: &[(&str, &str)] = &[
    (
        "offer.toml",
        r#"id = "offer"
on = { webhook = "offer" }
subject = "deal:{{ event.deal }}"
[[step]]
send = { to = "ops", template = "Deal {{ event.deal }}", buttons = [
  { text = "Approve", url = "{{ link('approve', subject=meta.subject, once=true, redirect='https://crm.example/deals/' ~ event.deal, deal=event.deal) }}" },
  { text = "Later", url = "{{ link('approve', subject=meta.subject, expires='1h', deal=event.deal) }}" },
  { text = "Careful", url = "{{ link('approve', subject=meta.subject, confirm=true, deal=event.deal) }}" },
] }
"#,
    ),
    (
        "approve.toml",
        r#"id = "approve"
on = { link = true }
subject = "{{ event.subject }}"
[[step]]
set = { "run.deal" = "event.deal", "run.ip" = "event.link.ip", "run.agent" = "event.link.user_agent", "run.src" = "event.link.query.src" }
"#,
    ),
];

const BROWSER: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120 Safari/537.36";

struct Links {
    t: TestApp,
    _cfg: ConfigDir,
    client: reqwest::Client,
}

impl Links {
    async fn new() -> Links {
        let cfg = ConfigDir::with(FLOWS);
        let t = TestApp::spawn(&cfg).await;
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        Links {
            t,
            _cfg: cfg,
            client,
        }
    }

    /// The offer's buttons: (label, url).
    async fn buttons(&self, deal: i64) -> Vec<(String, String)> {
        let run = start_one(&self.t, "offer", json!({"deal": deal})).await;
        let msg = self.t.messages(run).await.remove(0);
        msg["links"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| {
                (
                    b["text"].as_str().unwrap().to_string(),
                    b["url"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    async fn click(&self, url: &str, agent: &str, lang: &str) -> (u16, String, Option<String>) {
        let r = self
            .client
            .get(url)
            .header("user-agent", agent)
            .header("accept-language", lang)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let location = r
            .headers()
            .get("location")
            .map(|v| v.to_str().unwrap().to_string());
        (status, r.text().await.unwrap(), location)
    }

    async fn approvals(&self) -> Vec<switchboard::store::RunSummary> {
        self.t
            .app
            .store
            .list_runs(&RunFilter {
                scenario: Some("approve".into()),
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap()
    }
}

async fn start_one(t: &TestApp, hook: &str, body: serde_json::Value) -> i64 {
    let (_, b) = t.post(hook, body).await;
    let id = t.runs_of(b["event_id"].as_i64().unwrap()).await[0].id;
    t.finished(id).await.id
}

#[tokio::test]
async fn a_single_use_link_runs_its_scenario_once_then_says_already_used() {
    let l = Links::new().await;
    let buttons = l.buttons(42).await;
    let (label, url) = &buttons[0];
    assert_eq!(label, "Approve");
    assert!(url.starts_with(&format!("{}/l/", l.t.app.url())), "{url}");

    let (status, _, location) = l.click(&format!("{url}?src=mail"), BROWSER, "en").await;
    assert_eq!(status, 303);
    assert_eq!(location.as_deref(), Some("https://crm.example/deals/42"));
    let runs = eventually(|| async { Some(l.approvals().await).filter(|r| !r.is_empty()) }).await;
    let run = l.t.finished(runs[0].id).await;
    assert_eq!(run.status, RunStatus::Done);
    assert_eq!(run.subject.as_deref(), Some("deal:42"));
    assert_eq!(run.vars["deal"], 42);
    assert_eq!(run.vars["ip"], "127.0.0.1");
    assert_eq!(run.vars["agent"], BROWSER);
    assert_eq!(run.vars["src"], "mail");

    let (status, body, _) = l.click(url, BROWSER, "ru").await;
    assert_eq!(status, 410);
    assert!(body.contains("Эта ссылка уже была использована."), "{body}");
    // A link's event is stored before its page is answered: the second click stored none,
    // and with the first one's processed, no other run can start.
    let events = link_events(&l.t).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].outcome.as_ref().unwrap()[0]["run"], run.id);
    assert_eq!(l.approvals().await.len(), 1);
}

#[tokio::test]
async fn expired_forged_and_truncated_links_run_nothing() {
    let l = Links::new().await;
    let buttons = l.buttons(7).await;
    let later = &buttons[1].1;
    let once = &buttons[0].1;

    let mut forged = once.clone();
    let n = forged.len();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    assert_eq!(forged.len(), n);
    let (status, body, _) = l.click(&forged, BROWSER, "en").await;
    assert_eq!(status, 404);
    assert!(body.contains("This link is not valid."));
    let (status, _, _) = l.click(&once[..once.len() - 10], BROWSER, "en").await;
    assert_eq!(status, 404);
    let (status, _, _) = l
        .click(&format!("{}/l/garbage", l.t.app.url()), BROWSER, "en")
        .await;
    assert_eq!(status, 404);

    l.t.advance(Duration::from_secs(2 * 3600));
    let (status, body, _) = l.click(later, BROWSER, "pl").await;
    assert_eq!(status, 410);
    assert!(body.contains("Ten link wygasł."), "{body}");

    // The genuine single-use link still works: the forged and truncated copies did not use
    // it up. Once its event is processed, its run is the only one.
    let (status, _, _) = l.click(&format!("{once}?src=genuine"), BROWSER, "en").await;
    assert_eq!(status, 303);
    let events = link_events(&l.t).await;
    assert_eq!(events.len(), 1, "refused links store no event");
    let runs = l.approvals().await;
    assert_eq!(runs.len(), 1);
    assert_eq!(l.t.finished(runs[0].id).await.vars["src"], "genuine");
}

#[tokio::test]
async fn previews_and_head_requests_never_fire_a_link() {
    let l = Links::new().await;
    let buttons = l.buttons(9).await;
    let (_, url) = &buttons[1];
    let r = l.client.head(url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    for agent in [
        "TelegramBot (like TwitterBot)",
        "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
        "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
        "Mozilla/5.0 (compatible; Discordbot/2.0; +https://discordapp.com)",
        "WhatsApp/2.23.20.0",
    ] {
        let (status, body, _) = l.click(url, agent, "en").await;
        assert_eq!(status, 200, "{agent}");
        assert!(body.contains("performs an action when it is opened in a browser"));
    }

    // A person's click on the same (reusable) link fires, twice; those are the only events.
    for _ in 0..2 {
        let (status, body, _) = l.click(url, BROWSER, "en").await;
        assert_eq!(status, 200);
        assert!(body.contains("Thank you, it is done."));
    }
    let events = link_events(&l.t).await;
    assert_eq!(events.len(), 2, "previews store no event");
    for e in &events {
        assert_eq!(e.data["link"]["user_agent"], BROWSER);
    }
    assert_eq!(l.approvals().await.len(), 2);
}

#[tokio::test]
async fn a_confirm_link_fires_only_from_its_button() {
    let l = Links::new().await;
    let buttons = l.buttons(5).await;
    let (label, url) = &buttons[2];
    assert_eq!(label, "Careful");
    let (status, page, _) = l.click(&format!("{url}?src=sms"), BROWSER, "en").await;
    assert_eq!(status, 200);
    assert!(page.contains("Press the button to continue."));
    assert!(page.contains("method=\"post\""));

    let r = l
        .client
        .post(url)
        .header("user-agent", BROWSER)
        .form(&[("src", "sms")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("Thank you, it is done."));
    // The button's event is the only one: opening the page stored none.
    let events = link_events(&l.t).await;
    assert_eq!(events.len(), 1);
    let runs = l.approvals().await;
    assert_eq!(runs.len(), 1);
    let run = l.t.finished(runs[0].id).await;
    assert_eq!(run.vars["src"], "sms");
}

/// The `approve` scenario's link events, newest first, once every one has been processed.
/// A link's event is stored before its page is answered, so after a page has been answered
/// this is final for every click made so far.
async fn link_events(t: &TestApp) -> Vec<EventRow> {
    eventually(|| async {
        let events = t
            .app
            .store
            .list_events(&EventFilter {
                source: Some("approve".into()),
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap();
        events
            .iter()
            .all(|e| e.status != "pending")
            .then_some(events)
    })
    .await
}
