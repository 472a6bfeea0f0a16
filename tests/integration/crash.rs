//! Crash safety: SIGKILL the gateway with runs sleeping, runs waiting and requests pending,
//! restart it on the same database, and check that everything completes exactly once.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;
use switchboard::store::{SqliteStore, Store};

use crate::support::*;

#[tokio::test]
async fn a_killed_gateway_resumes_without_losing_or_repeating_anything() {
    let sink = Sink::start().await;
    let cfg = ConfigDir::with(&[
        ("push.toml", "id = \"push\"\non = { webhook = \"push\" }\n[[step]]\nhttp = { post = \"{{ event.url }}/push/{{ event.n }}\", attempts = 1000 }\n"),
        ("sleepy.toml", "id = \"sleepy\"\non = { webhook = \"sleepy\" }\n[[step]]\nsleep = { for = \"3s\" }\n[[step]]\nhttp = { post = \"{{ event.url }}/woke/{{ event.n }}\", attempts = 1000 }\n"),
        ("ask.toml", "id = \"ask\"\non = { webhook = \"ask\" }\nsubject = \"q:{{ event.n }}\"\n[[step]]\nwait = { webhook = \"answer\", match = \"q:{{ event.n }}\" }\n[[step]]\nhttp = { post = \"{{ event.url }}/answered/{{ event.n }}/{{ run.reply.event.text }}\", attempts = 1000 }\n"),
    ]);
    cfg.write(
        "gateway.toml",
        &format!(
            "[defaults]\nretry_delay = \"100ms\"\nretry_max_delay = \"300ms\"\n{ALLOW_LOOPBACK}"
        ),
    );
    let url = format!("http://{}", sink.addr);
    sink.set_default(503);

    let first = Gateway::start(&cfg).await;
    for n in 0..20 {
        first.post("push", json!({"url": url, "n": n})).await;
    }
    for n in 0..10 {
        first.post("sleepy", json!({"url": url, "n": n})).await;
    }
    for n in 0..5 {
        first.post("ask", json!({"url": url, "n": n})).await;
    }
    // Wait for the mid-way state: pushes failing and retried, sleepers asleep, askers waiting.
    let store = SqliteStore::open(&cfg.db()).await.unwrap();
    eventually(|| async {
        let c = store.counts().await.unwrap();
        let ok = c.runs_by_status.get("sleeping") == Some(&10)
            && c.runs_by_status.get("waiting") == Some(&25)
            && c.waits == 5
            && sink.received().len() >= 40;
        ok.then_some(())
    })
    .await;
    first.kill();

    sink.set_default(200);
    let second = Gateway::start(&cfg).await;
    for n in 0..5 {
        second.post("answer", json!({"n": n, "text": "yes"})).await;
    }
    // Every request committed as delivered: a repeat of one would have been sent before
    // its row was (the sink records a request before answering it).
    eventually(|| async {
        let c = store.counts().await.unwrap();
        let done = c.runs_by_status.get("done") == Some(&35)
            && c.outbox_by_status.get("delivered") == Some(&35);
        done.then_some(())
    })
    .await;
    second.kill();

    let mut delivered: HashMap<String, usize> = HashMap::new();
    for r in sink.received().into_iter().filter(|r| r.status == 200) {
        *delivered.entry(r.path).or_default() += 1;
    }
    let mut want: Vec<String> = (0..20).map(|n| format!("/push/{n}")).collect();
    want.extend((0..10).map(|n| format!("/woke/{n}")));
    want.extend((0..5).map(|n| format!("/answered/{n}/yes")));
    let mut got: Vec<String> = delivered.keys().cloned().collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    assert!(delivered.values().all(|&n| n == 1), "{delivered:?}");
    let c = store.counts().await.unwrap();
    assert_eq!((c.timers, c.waits), (0, 0));
    assert_eq!(c.outbox_by_status.get("delivered"), Some(&35));
}

#[tokio::test]
async fn an_offer_and_an_ask_survive_a_kill_and_nothing_is_sent_twice() {
    use crate::fake_telegram::{click_update, text_update, FakeTelegram, TOKEN};
    let fake = FakeTelegram::start().await;
    let cfg = ConfigDir::with(&[
        (
            "offer.toml",
            "id = \"offer\"\non = { webhook = \"deal\" }\n[[step]]\noffer = { to = \"tg:-500\", template = \"deal {{ event.id }}\" }\n[[step]]\nsend = { to = \"tg:-500\", template = \"{{ run.claim.name }} has it\" }\n",
        ),
        (
            "ask.toml",
            "id = \"ask\"\non = { webhook = \"ask\" }\n[[step]]\nask = { to = \"tg:{{ event.chat }}\", template = \"1 or 2?\", choices = [\"1\", \"2\"] }\n[[step]]\nsend = { to = \"tg:{{ event.chat }}\", template = \"got {{ run.answer.value }}\" }\n",
        ),
    ]);
    cfg.write(
        "gateway.toml",
        &format!(
            "[channels.tg]\ntype = \"telegram\"\ntoken = \"{TOKEN}\"\napi_url = \"{}\"\n",
            fake.url
        ),
    );
    let first = Gateway::start(&cfg).await;
    first.post("deal", json!({"id": 5})).await;
    first.post("ask", json!({"chat": 321})).await;
    let sent = fake.wait_for("sendMessage", 2).await;
    let offer = sent.iter().find(|c| c.params["chat_id"] == -500).unwrap();
    let data = offer.params["reply_markup"]["inline_keyboard"][0][0]["callback_data"]
        .as_str()
        .unwrap()
        .to_string();
    // The two messages go to two chats at once: either may have been sent first.
    let message = offer.message_id.unwrap();
    // Let the delivery results (the offer's message id) be committed, then kill.
    let store = SqliteStore::open(&cfg.db()).await.unwrap();
    eventually(|| async {
        let c = store.counts().await.unwrap();
        (c.outbox_by_status.get("delivered") == Some(&2)).then_some(())
    })
    .await;
    first.kill();

    let second = Gateway::start(&cfg).await;
    fake.inject(click_update(-500, 7, "Ann", &data, message));
    fake.inject(text_update(321, 8, "en", "2."));
    let answers = fake.wait_for("answerCallbackQuery", 1).await;
    assert_eq!(answers[0].params["text"], "It is yours.");
    fake.wait_for("editMessageText", 1).await;
    let sent = fake.wait_for("sendMessage", 4).await;
    // Everything the second process had to send is settled: nothing more can go out.
    eventually(|| async {
        let c = store.counts().await.unwrap();
        (c.outbox_by_status.get("pending").copied().unwrap_or(0) == 0).then_some(())
    })
    .await;
    second.kill();
    let texts: Vec<_> = fake
        .calls("sendMessage")
        .iter()
        .map(|c| c.params["text"].as_str().unwrap().to_string())
        .collect();
    let mut sorted = texts.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        vec!["1 or 2?", "Ann has it", "deal 5", "got 2"],
        "{sent:?}"
    );
    assert_eq!(fake.calls("editMessageText").len(), 1);
}

/// SIGKILL while events pour in over many connections: every event the gateway accepted (a
/// `202`) is delivered after the restart; each stored event got one run and one request, and a
/// request sent again (answered but not yet committed when the process died) carries the same
/// `Idempotency-Key`, never a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_under_load_loses_and_doubles_nothing() {
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    const CONNECTIONS: usize = 20;
    const MOST: usize = 6_000;
    let sink = Sink::start().await;
    let cfg = ConfigDir::with(&[(
        "load.toml",
        "id = \"load\"\non = { webhook = \"load\" }\nwhen = 'event.n >= 0'\n[[step]]\nset = { \"run.n\" = \"event.n\" }\n[[step]]\nhttp = { post = \"{{ event.url }}/got/{{ event.n }}\", attempts = 1000 }\n",
    )]);
    cfg.write(
        "gateway.toml",
        &format!(
            "[defaults]\nretry_delay = \"100ms\"\nretry_max_delay = \"300ms\"\n{ALLOW_LOOPBACK}"
        ),
    );
    let url = format!("http://{}", sink.addr);
    let first = Gateway::start(&cfg).await;
    let next = Arc::new(AtomicUsize::new(0));
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let client = reqwest::Client::new();
    let senders: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let (next, accepted, client) = (next.clone(), accepted.clone(), client.clone());
            let (hook, url) = (format!("{}/hooks/load", first.url), url.clone());
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= MOST {
                        return;
                    }
                    match client
                        .post(&hook)
                        .json(&json!({"url": url, "n": n}))
                        .send()
                        .await
                    {
                        Ok(r) if r.status() == 202 => accepted.lock().unwrap().push(n),
                        Ok(_) => {}       // busy: not accepted, not counted
                        Err(_) => return, // the gateway is gone
                    }
                }
            })
        })
        .collect();
    // The kill lands in full flow: events arriving, runs starting, requests going out.
    eventually_within(Duration::from_secs(120), || async {
        (sink.received().len() >= 300).then_some(())
    })
    .await;
    first.kill();
    for s in senders {
        s.await.unwrap();
    }
    let accepted: Vec<usize> = accepted.lock().unwrap().clone();
    assert!(accepted.len() >= 300, "{} accepted", accepted.len());

    let second = Gateway::start(&cfg).await;
    let store = SqliteStore::open(&cfg.db()).await.unwrap();
    let stored = eventually_within(Duration::from_secs(120), || async {
        let c = store.counts().await.unwrap();
        let done = c.runs_by_status.get("done").copied().unwrap_or(0);
        let delivered = c.outbox_by_status.get("delivered").copied().unwrap_or(0);
        (done == c.events && delivered == c.events).then_some(c.events)
    })
    .await;
    second.kill();

    let mut keys: HashMap<usize, HashSet<String>> = HashMap::new();
    for r in sink.received().into_iter().filter(|r| r.status == 200) {
        let n: usize = r.path.trim_start_matches("/got/").parse().unwrap();
        let key = r.headers["idempotency-key"].to_str().unwrap().to_string();
        keys.entry(n).or_default().insert(key);
    }
    let lost: Vec<&usize> = accepted.iter().filter(|n| !keys.contains_key(n)).collect();
    assert!(lost.is_empty(), "accepted but never delivered: {lost:?}");
    let doubled: Vec<_> = keys.iter().filter(|(_, k)| k.len() > 1).collect();
    assert!(
        doubled.is_empty(),
        "sent as different requests: {doubled:?}"
    );
    // One run and one request per stored event, and every stored event reached the sink.
    assert_eq!(keys.len() as i64, stored);
    let c = store.counts().await.unwrap();
    let runs: i64 = c.runs_by_status.values().sum();
    assert_eq!(runs, stored);
}
