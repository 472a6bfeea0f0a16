//! Telegram benchmark against the fake Bot API (the tests' one): button clicks under
//! contention (click → callback answered, message edited), 200 people clicking one offer at
//! once, and ask/reply round trips with 10,000 runs waiting. `cargo bench --bench telegram`.

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

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use fake_telegram::{click_update, text_update, FakeTelegram, TOKEN};
use serde_json::json;
use support::{eventually_within, ConfigDir, TestApp};

const OFFERS: usize = 20;
const CLICKS: i64 = 50;
/// People clicking the same offer at the same moment.
const CROWD: i64 = 200;
const WAITING: usize = 10_000;
const REPLIES: usize = 2_000;
/// Replies sent one at a time after the burst, `PACE` apart.
const PACED: usize = 300;
const PACE: Duration = Duration::from_millis(10);
const OFFER: &str = "id = \"offer\"\non = { webhook = \"deal\" }\n[[step]]\noffer = { to = \"tg:{{ event.chat }}\", template = \"deal {{ event.id }}\" }\n";
const LONG: Duration = Duration::from_secs(600);

fn pct(mut v: Vec<Duration>, p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let fake = FakeTelegram::start().await;
    let cfg = ConfigDir::with(&[
        ("offer.toml", OFFER),
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
    // Every click here is injected, so an answer to any other query is an error.
    fake.strict_callbacks();

    // Clicks under contention: 50 people press Accept on the same message at once.
    let mut answer_lat = Vec::new();
    let mut edit_lat = Vec::new();
    for k in 0..OFFERS {
        let chat = -(1000 + k as i64);
        t.post("deal", json!({"id": k, "chat": chat})).await;
        let (data, message) = offer_in(&fake, chat).await;
        let before = fake.calls("answerCallbackQuery").len();
        let mut sent_at = HashMap::new();
        let start = Instant::now();
        for u in 0..CLICKS {
            let upd = click_update(chat, 10_000 + u, "U", &data, message);
            sent_at.insert(
                upd["callback_query"]["id"].as_str().unwrap().to_string(),
                Instant::now(),
            );
            fake.inject(upd);
        }
        let answers = eventually_within(LONG, || async {
            let a = fake.calls("answerCallbackQuery");
            (a.len() >= before + CLICKS as usize).then_some(a)
        })
        .await;
        for a in &answers[before..] {
            if let Some(at) = sent_at.get(a.params["callback_query_id"].as_str().unwrap()) {
                answer_lat.push(a.at - *at);
            }
        }
        let edit = eventually_within(LONG, || async {
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

    // 200 people press Accept on one offer at the same moment, with these limits and with
    // the gateway's own (30 requests a second per bot, callback answers included).
    println!("{}", crowd(&t, &fake, -2000, "limits raised").await);
    let default_fake = FakeTelegram::start().await;
    default_fake.strict_callbacks();
    let default_cfg = ConfigDir::with(&[("offer.toml", OFFER)]);
    default_cfg.write(
        "gateway.toml",
        &format!(
            "[channels.tg]\ntype = \"telegram\"\ntoken = \"{TOKEN}\"\napi_url = \"{}\"\n",
            default_fake.url
        ),
    );
    let default_app = TestApp::spawn(&default_cfg).await;
    println!(
        "{}",
        crowd(&default_app, &default_fake, -2000, "default limits").await
    );
    default_app.app.stop().await;

    // Ask/reply round trips with 10,000 runs waiting.
    let before = fake.calls("sendMessage").len();
    for start in (0..WAITING).step_by(200) {
        let posts = (start..(start + 200).min(WAITING))
            .map(|i| t.post("ask", json!({"chat": 100_000 + i})));
        futures::future::join_all(posts).await;
    }
    eventually_within(LONG, || async {
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
    let replies = eventually_within(LONG, || async {
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

    // One reply at a time, as people answer, while the other runs keep waiting: the
    // interactive latency, without a burst's queue in it.
    let counts = t.app.store.counts().await.unwrap();
    let waiting = counts.runs_by_status.get("waiting").copied().unwrap_or(0);
    let mut lat = Vec::with_capacity(PACED);
    for i in 0..PACED {
        let chat = 100_000 + (REPLIES + i) as i64;
        let before = fake.calls("sendMessage").len();
        let at = Instant::now();
        fake.inject(text_update(chat, chat, "en", "2"));
        let sent = eventually_within(LONG, || async {
            fake.calls("sendMessage")
                .into_iter()
                .skip(before)
                .find(|c| c.params["chat_id"] == chat)
        })
        .await;
        lat.push(sent.at - at);
        tokio::time::sleep(PACE).await;
    }
    println!(
        "ask/reply: {PACED} replies one at a time ({} ms apart) with {waiting} runs waiting: reply → confirmation p50 {:.1} ms, p99 {:.1} ms",
        PACE.as_millis(),
        pct(lat.clone(), 0.5),
        pct(lat, 0.99)
    );
    t.app.stop().await;
}

/// The accept button's callback data and the message id of the offer posted to `chat`.
async fn offer_in(fake: &FakeTelegram, chat: i64) -> (String, i64) {
    eventually_within(LONG, || async {
        fake.calls("sendMessage")
            .into_iter()
            .find(|c| c.params["chat_id"] == chat)
            .map(|c| {
                let data = c.params["reply_markup"]["inline_keyboard"][0][0]["callback_data"]
                    .as_str()
                    .unwrap()
                    .to_string();
                (data, c.message_id.unwrap())
            })
    })
    .await
}

/// 200 people press Accept on one offer at the same moment: every click must be answered and
/// exactly one must win. Returns the figures as a line.
async fn crowd(t: &TestApp, fake: &FakeTelegram, chat: i64, limits: &str) -> String {
    let (_, posted) = t.post("deal", json!({"id": OFFERS, "chat": chat})).await;
    let run = t.runs_of(posted["event_id"].as_i64().unwrap()).await[0].id;
    let (data, message) = offer_in(fake, chat).await;
    let clicks: Vec<_> = (0..CROWD)
        .map(|u| click_update(chat, 20_000 + u, &format!("User{u}"), &data, message))
        .collect();
    let user_of: HashMap<String, String> = clicks
        .iter()
        .map(|c| {
            let q = &c["callback_query"];
            (
                q["id"].as_str().unwrap().to_string(),
                q["from"]["first_name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let delays_before = fake.answer_delays().len();
    for c in clicks {
        fake.inject(c);
    }
    let query = |a: &fake_telegram::Call| {
        a.params["callback_query_id"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    let crowd_answers = || {
        fake.calls("answerCallbackQuery")
            .into_iter()
            .filter(|a| user_of.contains_key(&query(a)))
            .collect::<Vec<_>>()
    };
    // Waits for every answer; a click never answered shows in the count.
    let deadline = Instant::now() + LONG;
    while crowd_answers().len() < CROWD as usize && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    let answers = crowd_answers();
    let answered: HashSet<_> = answers
        .iter()
        .filter(|a| a.error.is_none())
        .map(query)
        .collect();
    let refused = match answers.iter().filter(|a| a.error.is_some()).count() {
        0 => String::new(),
        n => format!(" ({n} answers refused)"),
    };
    let winners: Vec<_> = answers
        .iter()
        .filter(|a| a.error.is_none() && a.params["text"] == "It is yours.")
        .map(|a| user_of[&query(a)].clone())
        .collect();
    let claim = t
        .app
        .store
        .run(run)
        .await
        .unwrap()
        .map_or(String::new(), |r| {
            r.vars["claim"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        });
    let one_winner = match winners.as_slice() {
        [w] if *w == claim => format!("1 winner ({w}, the run's claim)"),
        _ => format!(
            "{} winners {winners:?}, the run's claim: {claim}",
            winners.len()
        ),
    };
    let delays = fake.answer_delays()[delays_before..].to_vec();
    format!(
        "crowd: {CROWD} simultaneous clicks on one offer ({limits}): {}/{CROWD} answered{refused}, {one_winner}; callback answered p50 {:.1} ms, p99 {:.1} ms after the click",
        answered.len(),
        pct(delays.clone(), 0.5),
        pct(delays, 0.99)
    )
}
