//! Telegram benchmark against the fake Bot API (the tests' one): button clicks under
//! contention (click → callback answered, message edited) and ask/reply round trips with
//! 10,000 runs waiting. `cargo bench --bench telegram`.

#[expect(
    dead_code,
    reason = "shared with the integration tests; the benchmark uses part of it"
)]
#[path = "../tests/integration/support.rs"]
mod support;

#[expect(
    dead_code,
    reason = "shared with the integration tests; the benchmark uses part of it"
)]
#[path = "../tests/integration/fake_telegram.rs"]
mod fake_telegram;

// The support code can start gateways on PostgreSQL.
#[path = "../tests/integration/pg.rs"]
mod pg;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use fake_telegram::{click_update, text_update, FakeTelegram, TOKEN};
use serde_json::json;
use support::{eventually_within, ConfigDir, TestApp};

const OFFERS: usize = 20;
const CLICKS: i64 = 50;
const WAITING: usize = 10_000;
const REPLIES: usize = 2_000;

fn pct(mut v: Vec<Duration>, p: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let fake = FakeTelegram::start().await;
    let cfg = ConfigDir::with(&[
        ("offer.toml", "id = \"offer\"\non = { webhook = \"deal\" }\n[[step]]\noffer = { to = \"tg:{{ event.chat }}\", template = \"deal {{ event.id }}\" }\n"),
        ("ask.toml", "id = \"ask\"\non = { webhook = \"ask\" }\n[[step]]\nask = { to = \"tg:{{ event.chat }}\", template = \"1 or 2?\", choices = [\"1\", \"2\"] }\n[[step]]\nsend = { to = \"tg:{{ event.chat }}\", template = \"got {{ run.answer.value }}\" }\n"),
    ]);
    cfg.write(
        "gateway.toml",
        &format!(
            "[channels.tg]\ntype = \"telegram\"\ntoken = \"{TOKEN}\"\napi_url = \"{}\"\nlimits = {{ chat = \"1000/1s\", group = \"1000/1s\", bot = \"100000/1s\" }}\n",
            fake.url
        ),
    );
    let t = TestApp::spawn(&cfg).await;
    let long = Duration::from_secs(600);

    // Clicks under contention: 50 people press Accept on the same message at once.
    let mut answer_lat = Vec::new();
    let mut edit_lat = Vec::new();
    for k in 0..OFFERS {
        let chat = -(1000 + k as i64);
        t.post("deal", json!({"id": k, "chat": chat})).await;
        let data = eventually_within(long, || async {
            fake.calls("sendMessage")
                .into_iter()
                .find(|c| c.params["chat_id"] == chat)
                .map(|c| {
                    c.params["reply_markup"]["inline_keyboard"][0][0]["callback_data"]
                        .as_str()
                        .unwrap()
                        .to_string()
                })
        })
        .await;
        let before = fake.calls("answerCallbackQuery").len();
        let mut sent_at = HashMap::new();
        let start = Instant::now();
        for u in 0..CLICKS {
            let upd = click_update(chat, 10_000 + u, "U", &data, 1);
            sent_at.insert(
                upd["callback_query"]["id"].as_str().unwrap().to_string(),
                Instant::now(),
            );
            fake.inject(upd);
        }
        let answers = eventually_within(long, || async {
            let a = fake.calls("answerCallbackQuery");
            (a.len() >= before + CLICKS as usize).then_some(a)
        })
        .await;
        for a in &answers[before..] {
            if let Some(at) = sent_at.get(a.params["callback_query_id"].as_str().unwrap()) {
                answer_lat.push(a.at - *at);
            }
        }
        let edit = eventually_within(long, || async {
            fake.calls("editMessageText")
                .into_iter()
                .find(|c| c.params["chat_id"] == chat)
        })
        .await;
        edit_lat.push(edit.at - start);
    }
    println!(
        "clicks: {OFFERS} offers x {CLICKS} simultaneous clicks: callback answered p50 {:.1} ms, p99 {:.1} ms; message edited p50 {:.1} ms, p99 {:.1} ms after the first click",
        pct(answer_lat.clone(), 0.5),
        pct(answer_lat, 0.99),
        pct(edit_lat.clone(), 0.5),
        pct(edit_lat, 0.99)
    );

    // Ask/reply round trips with 10,000 runs waiting.
    let before = fake.calls("sendMessage").len();
    for start in (0..WAITING).step_by(200) {
        let posts = (start..(start + 200).min(WAITING))
            .map(|i| t.post("ask", json!({"chat": 100_000 + i})));
        futures::future::join_all(posts).await;
    }
    eventually_within(long, || async {
        (fake.calls("sendMessage").len() >= before + WAITING).then_some(())
    })
    .await;
    let counts = t.app.store.counts().await.unwrap();
    let waiting = counts.runs_by_status.get("waiting").copied().unwrap_or(0);
    let before = fake.calls("sendMessage").len();
    let start = Instant::now();
    let mut sent_at = HashMap::new();
    for i in 0..REPLIES {
        let chat = 100_000 + i as i64;
        sent_at.insert(chat, Instant::now());
        fake.inject(text_update(chat, chat, "en", "1"));
    }
    let replies = eventually_within(long, || async {
        let s = fake.calls("sendMessage");
        (s.len() >= before + REPLIES).then_some(s)
    })
    .await;
    let took = start.elapsed();
    let lat: Vec<Duration> = replies[before..]
        .iter()
        .filter_map(|c| {
            sent_at
                .get(&c.params["chat_id"].as_i64()?)
                .map(|at| c.at - *at)
        })
        .collect();
    println!(
        "ask/reply: {REPLIES} replies with {waiting} runs waiting: {:.0} round trips/s; reply → confirmation p50 {:.1} ms, p99 {:.1} ms",
        REPLIES as f64 / took.as_secs_f64(),
        pct(lat.clone(), 0.5),
        pct(lat, 0.99)
    );
    t.app.stop().await;
}
