//! Several `switchboard run` processes on one PostgreSQL database: work is shared and done
//! once, a replica killed mid-load has its work finished by the others, the first click wins
//! across replicas, and the Telegram polling leader is replaced from the stored offset.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use sqlx::Row;

use crate::fake_telegram::{click_update, text_update, FakeTelegram, TOKEN};
use crate::pg;
use crate::support::*;

const PUSH: &str = r#"id = "push"
on = { webhook = "push" }
[[step]]
http = { post = "{{ event.url }}/push/{{ event.n }}", attempts = 1000 }
"#;

const SLEEPY: &str = r#"id = "sleepy"
on = { webhook = "sleepy" }
[[step]]
sleep = { for = "2s" }
[[step]]
http = { post = "{{ event.url }}/woke/{{ event.n }}", attempts = 1000 }
"#;

const HOURLY: &str = r#"id = "hourly"
on = { webhook = "hourly" }
subject = "client:{{ event.client }}"
limit = { per_subject = "1/1h" }
[[step]]
http = { post = "{{ event.url }}/hourly/{{ event.client }}/{{ event.n }}" }
"#;

const COUNT: &str = r#"id = "count"
on = { webhook = "count" }
subject = "client:{{ event.client }}"
[[step]]
incr = "global.seen"
[[step]]
incr = "subject.visits"
"#;

const ONCE: &str = r#"id = "once"
on = { webhook = "once" }
subject = "client:{{ event.client }}"
limit = { once = true }
[[step]]
http = { post = "{{ event.url }}/once/{{ event.client }}/{{ event.n }}" }
"#;

/// Replicas here notice a dead one after two seconds.
const GATEWAY: &str = "[database]\nlease = \"2s\"\nmax_connections = 8\n\n[defaults]\nretry_delay = \"100ms\"\nretry_max_delay = \"1s\"\n\n[http]\nallow = [\"127.0.0.1/32\"]\n";

async fn replicas(cfg: &ConfigDir, db: &str, n: usize) -> Vec<Gateway> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(Gateway::start_on(cfg, db).await);
    }
    out
}

async fn pool(db: &str) -> sqlx::PgPool {
    sqlx::PgPool::connect(db).await.unwrap()
}

async fn scalar(db: &sqlx::PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(db).await.unwrap()
}

/// Posts the events to the replicas in turn, 32 at a time, each with its own
/// `Idempotency-Key`. A post that fails (its replica was killed) goes to the next replica,
/// as a load balancer would retry it; the key keeps a retry of a stored event from
/// counting twice.
async fn post_spread(urls: Arc<Vec<String>>, hook: &str, events: Vec<serde_json::Value>) {
    let client = reqwest::Client::new();
    let hook = hook.to_string();
    let mut tasks = Vec::new();
    let events = Arc::new(tokio::sync::Mutex::new(events.into_iter().enumerate()));
    for _ in 0..32 {
        let (client, urls, hook, events) =
            (client.clone(), urls.clone(), hook.clone(), events.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let Some((i, body)) = events.lock().await.next() else {
                    return;
                };
                let mut k = i;
                loop {
                    let url = format!("{}/hooks/{hook}", urls[k % urls.len()]);
                    let post = client
                        .post(&url)
                        .header("Idempotency-Key", format!("{hook}-{i}"))
                        .json(&body);
                    match post.send().await {
                        // Stored now, or stored before by a replica that died before it
                        // could answer.
                        Ok(r) if r.status() == 202 || r.status() == 200 => break,
                        _ => {
                            k += 1;
                            assert!(k < i + 100, "no replica takes event {i}");
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Paths the sink answered with 200, with how often each came.
fn delivered(sink: &Sink) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for r in sink.received().into_iter().filter(|r| r.status == 200) {
        *out.entry(r.path).or_default() += 1;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_process_3000_webhooks_once_each() {
    let _heavy = HEAVY.lock().await;
    let db = pg::fresh_db().await;
    let sink = Sink::start().await;
    let cfg = ConfigDir::with(&[
        ("push.toml", PUSH),
        ("once.toml", ONCE),
        ("count.toml", COUNT),
        ("hourly.toml", HOURLY),
    ]);
    cfg.write("gateway.toml", GATEWAY);
    let gws = replicas(&cfg, &db, 3).await;
    let urls = Arc::new(gws.iter().map(|g| g.url.clone()).collect::<Vec<_>>());
    let url = format!("http://{}", sink.addr);
    let events = (0..3000).map(|n| json!({"url": url, "n": n})).collect();
    post_spread(urls.clone(), "push", events).await;
    // "Only once" per client, however many replicas the same client's events hit at once.
    let once = (0..60)
        .map(|n| json!({"url": url, "client": n % 3, "n": n}))
        .collect();
    post_spread(urls.clone(), "once", once).await;
    // "Once per hour" likewise.
    let hourly = (0..60)
        .map(|n| json!({"url": url, "client": n % 3, "n": n}))
        .collect();
    post_spread(urls.clone(), "hourly", hourly).await;
    // Read-modify-write of a global and of subject variables from three replicas at once.
    let count = (0..300).map(|n| json!({"client": n % 2})).collect();
    post_spread(urls, "count", count).await;

    let seen = eventually_within(Duration::from_secs(120), || async {
        let d = delivered(&sink);
        let push = d.keys().filter(|p| p.starts_with("/push/")).count();
        let once = d.keys().filter(|p| p.starts_with("/once/")).count();
        let hourly = d.keys().filter(|p| p.starts_with("/hourly/")).count();
        (push == 3000 && once >= 3 && hourly >= 3).then_some(d)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let d = delivered(&sink);
    assert_eq!(d.len(), seen.len());
    assert!(d.values().all(|n| *n == 1), "a request was delivered twice");
    let once: Vec<_> = d.keys().filter(|p| p.starts_with("/once/")).collect();
    assert_eq!(once.len(), 3, "one run per client: {once:?}");
    let hourly: Vec<_> = d.keys().filter(|p| p.starts_with("/hourly/")).collect();
    assert_eq!(hourly.len(), 3, "one run per client and hour: {hourly:?}");

    let db = pool(&db).await;
    // Responses are committed a moment after the sink saw the requests.
    eventually(|| async {
        let sql = "SELECT count(*) FROM runs WHERE status = 'done' AND scenario = ";
        let push = scalar(&db, &format!("{sql} 'push'")).await;
        let count = scalar(&db, &format!("{sql} 'count'")).await;
        (push == 3000 && count == 300).then_some(())
    })
    .await;
    assert_eq!(
        scalar(&db, "SELECT value::BIGINT FROM globals WHERE name = 'seen'").await,
        300,
        "no increment lost"
    );
    for client in ["client:0", "client:1"] {
        let vars: String = sqlx::query_scalar("SELECT vars FROM subject_vars WHERE subject = $1")
            .bind(client)
            .fetch_one(&db)
            .await
            .unwrap();
        let vars: serde_json::Value = serde_json::from_str(&vars).unwrap();
        assert_eq!(vars["visits"], 150);
    }
    assert_eq!(
        scalar(&db, "SELECT count(*) FROM events WHERE status <> 'done'").await,
        0
    );
    // Each replica processed what it received.
    let owners = sqlx::query("SELECT owner, count(*) AS n FROM events WHERE kind = 'webhook' AND source = 'push' GROUP BY owner")
        .fetch_all(&db)
        .await
        .unwrap();
    assert_eq!(owners.len(), 3);
    for o in owners {
        assert_eq!(o.get::<i64, _>("n"), 1000);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_load_has_its_work_finished_by_the_others() {
    let _heavy = HEAVY.lock().await;
    let db_url = pg::fresh_db().await;
    let sink = Sink::start().await;
    // Nothing gets through at first: every replica holds requests it has not delivered.
    sink.set_default(503);
    let cfg = ConfigDir::with(&[("push.toml", PUSH), ("sleepy.toml", SLEEPY)]);
    cfg.write("gateway.toml", GATEWAY);
    let mut gws = replicas(&cfg, &db_url, 3).await;
    let urls = Arc::new(gws.iter().map(|g| g.url.clone()).collect::<Vec<_>>());
    let url = format!("http://{}", sink.addr);
    let db = pool(&db_url).await;
    let victim = gws.remove(0);
    let victim_id: String = sqlx::query_scalar("SELECT id FROM replicas WHERE id LIKE $1")
        .bind(format!("%-{}-%", victim.pid()))
        .fetch_one(&db)
        .await
        .unwrap();

    // Runs asleep on every replica, the victim's among them: their timers are the
    // database's, and whichever replica is alive fires them.
    let sleepy = (0..60).map(|n| json!({"url": url, "n": n})).collect();
    post_spread(urls.clone(), "sleepy", sleepy).await;
    let events: Vec<_> = (0..600).map(|n| json!({"url": url, "n": n})).collect();
    let load = tokio::spawn(post_spread(urls, "push", events));
    // Mid-load: once the victim holds undelivered requests, SIGKILL it.
    eventually(|| async {
        let held: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM outbox WHERE owner = $1 AND status = 'pending'",
        )
        .bind(&victim_id)
        .fetch_one(&db)
        .await
        .unwrap();
        (held >= 50).then_some(())
    })
    .await;
    victim.kill();
    // Read at once: after a lease the others take these over, and the rest of the load may
    // take longer than that on a busy machine.
    let held: i64 = scalar(
        &db,
        &format!("SELECT count(*) FROM outbox WHERE owner = '{victim_id}' AND status = 'pending'"),
    )
    .await;
    assert!(held > 0);
    load.await.unwrap();
    sink.set_default(200);

    eventually_within(Duration::from_secs(60), || async {
        (delivered(&sink).len() == 660).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let d = delivered(&sink);
    assert_eq!(d.len(), 660);
    assert_eq!(d.keys().filter(|p| p.starts_with("/woke/")).count(), 60);
    let twice: Vec<_> = d.iter().filter(|(_, n)| **n > 1).collect();
    if !twice.is_empty() {
        for r in sink.received() {
            if twice.iter().any(|(p, _)| **p == r.path) {
                eprintln!(
                    "{} {} {:?}",
                    r.path,
                    r.status,
                    r.headers.get("idempotency-key")
                );
            }
        }
    }
    assert!(twice.is_empty(), "delivered twice: {twice:?}");
    assert_eq!(
        scalar(
            &db,
            &format!("SELECT count(*) FROM outbox WHERE owner = '{victim_id}'")
        )
        .await,
        0,
        "every row of the dead replica was taken over"
    );
    assert_eq!(
        scalar(&db, "SELECT count(*) FROM runs WHERE status = 'done'").await,
        660
    );
    assert_eq!(scalar(&db, "SELECT count(*) FROM timers").await, 0);
    assert_eq!(
        scalar(&db, "SELECT count(*) FROM replicas").await,
        2,
        "the dead replica was removed"
    );
}

const DISTRIBUTE: &str = r#"id = "distribute"
on = { webhook = "deal" }
subject = "deal:{{ event.id }}"
[[step]]
offer = { to = "tg:-500", template = "New deal <b>{{ event.id }}</b>", buttons = [{ id = "accept", text = "Accept" }], who = "any", timeout = "10m" }
branch = { timeout = "escalate" }
[[step]]
send = { to = "ops", template = "{{ run.claim.name }} took deal {{ event.id }}" }
stop = true
[[step]]
label = "escalate"
send = { to = "tg:777", template = "nobody took deal {{ event.id }}" }
"#;

fn telegram_gateway(fake: &FakeTelegram, extra: &str) -> String {
    format!(
        "{GATEWAY}\n[channels.tg]\ntype = \"telegram\"\ntoken = \"{TOKEN}\"\napi_url = \"{}\"\n{extra}\n\n[channels.ops]\ntype = \"log\"\noutput = \"journal\"\n",
        fake.url
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_of_200_clicks_spread_over_three_replicas_wins() {
    let _heavy = HEAVY.lock().await;
    let db = pg::fresh_db().await;
    let fake = FakeTelegram::start().await;
    let cfg = ConfigDir::with(&[("distribute.toml", DISTRIBUTE)]);
    cfg.write(
        "gateway.toml",
        &telegram_gateway(&fake, "mode = \"webhook\"\nwebhook_secret = \"s3cret\"\n"),
    );
    let gws = replicas(&cfg, &db, 3).await;
    gws[0].post("deal", json!({"id": 42})).await;
    let sent = fake.wait_for("sendMessage", 1).await;
    let data = sent[0].params["reply_markup"]["inline_keyboard"][0][0]["callback_data"]
        .as_str()
        .unwrap()
        .to_string();
    let message_id = 1;
    let client = reqwest::Client::new();
    let posts = (0..200).map(|u| {
        let mut c = click_update(-500, 10_000 + u, &format!("User{u}"), &data, message_id);
        c["update_id"] = json!(5000 + u);
        let req = client
            .post(format!("{}/telegram/tg", gws[u as usize % 3].url))
            .header("X-Telegram-Bot-Api-Secret-Token", "s3cret")
            .json(&c);
        async move { req.send().await.unwrap().status().as_u16() }
    });
    let statuses = futures::future::join_all(posts).await;
    assert!(statuses.iter().all(|s| *s == 200));
    fake.wait_for("answerCallbackQuery", 200).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let answers = fake.calls("answerCallbackQuery");
    assert_eq!(answers.len(), 200, "every click answered once");
    let ids: HashSet<_> = answers
        .iter()
        .map(|a| a.params["callback_query_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 200);
    let won = answers
        .iter()
        .filter(|a| a.params["text"] == "It is yours.")
        .count();
    assert_eq!(won, 1);
    let taken = answers
        .iter()
        .filter(|a| {
            a.params["text"]
                .as_str()
                .is_some_and(|t| t.starts_with("Already taken by User"))
        })
        .count();
    let odd: Vec<_> = answers
        .iter()
        .filter(|a| {
            a.params["text"] != "It is yours."
                && !a.params["text"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("Already taken by User"))
        })
        .map(|a| a.params.clone())
        .collect();
    assert_eq!(taken, 199, "{odd:?}");
    // The edit keeps the group's pace (20 a minute) after the offer went out.
    fake.wait_for("editMessageText", 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(fake.calls("editMessageText").len(), 1);
    // The clicks really were spread: each replica stored some.
    let db = pool(&db).await;
    let owners = scalar(
        &db,
        "SELECT count(DISTINCT owner) FROM events WHERE kind = 'click'",
    )
    .await;
    assert_eq!(owners, 3);
}

const ECHO: &str = r#"id = "echo"
on = { message = "tg" }
[[step]]
send = { to = "tg:{{ event.chat.id }}", template = "echo {{ event.text }}" }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_replica_takes_over_polling_from_the_stored_offset() {
    let _heavy = HEAVY.lock().await;
    let db_url = pg::fresh_db().await;
    let fake = FakeTelegram::start().await;
    let cfg = ConfigDir::with(&[("echo.toml", ECHO)]);
    cfg.write("gateway.toml", &telegram_gateway(&fake, ""));
    let mut gws = replicas(&cfg, &db_url, 3).await;
    let db = pool(&db_url).await;
    for i in 0..20 {
        fake.inject(text_update(100 + i % 4, 1, "en", &format!("m{i}")));
    }
    fake.wait_for("sendMessage", 20).await;
    // Sends finished and recorded: what is checked below is the updates, not a message
    // whose sending a SIGKILL interrupts (delivery is at least once).
    eventually(|| async {
        (scalar(
            &db,
            "SELECT count(*) FROM outbox WHERE status = 'delivered'",
        )
        .await
            == 20)
            .then_some(())
    })
    .await;
    let leader: String =
        sqlx::query_scalar("SELECT owner FROM leases WHERE name = 'telegram_poll:tg'")
            .fetch_one(&db)
            .await
            .unwrap();
    let at = gws
        .iter()
        .position(|g| leader.contains(&format!("-{}-", g.pid())))
        .expect("the leader is one of ours");
    gws.remove(at).kill();
    let offset_then: i64 = scalar(
        &db,
        "SELECT value::BIGINT FROM settings WHERE name = 'telegram_offset:tg'",
    )
    .await;
    for i in 20..40 {
        fake.inject(text_update(100 + i % 4, 1, "en", &format!("m{i}")));
    }
    fake.wait_for("sendMessage", 40).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let sent: Vec<String> = fake
        .calls("sendMessage")
        .iter()
        .map(|c| c.params["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(sent.len(), 40, "no update processed twice");
    let distinct: HashSet<_> = sent.iter().collect();
    assert_eq!(distinct.len(), 40, "no update lost");
    let new_leader: String =
        sqlx::query_scalar("SELECT owner FROM leases WHERE name = 'telegram_poll:tg'")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_ne!(new_leader, leader);
    // The new leader asked from the stored offset on.
    let polls = fake.calls("getUpdates");
    assert!(polls
        .iter()
        .any(|p| p.params["offset"].as_i64() == Some(offset_then)));
    assert_eq!(
        scalar(&db, "SELECT count(*) FROM events WHERE kind = 'message'").await,
        40
    );
}

const NOTIFY: &str = r#"id = "notify"
on = { webhook = "notify" }
[[step]]
send = { to = "tg:{{ event.chat }}", template = "{{ event.text }}" }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_and_bot_send_limits_hold_across_replicas() {
    let _heavy = HEAVY.lock().await;
    let db = pg::fresh_db().await;
    let fake = FakeTelegram::start().await;
    let cfg = ConfigDir::with(&[("notify.toml", NOTIFY)]);
    cfg.write(
        "gateway.toml",
        &telegram_gateway(
            &fake,
            "limits = { chat = \"1/200ms\", group = \"4/1s\", bot = \"20/1s\" }\n",
        ),
    );
    let gws = replicas(&cfg, &db, 3).await;
    let urls = Arc::new(gws.iter().map(|g| g.url.clone()).collect::<Vec<_>>());
    // 12 messages to one group and 12 to each of three private chats, posted to all three
    // replicas at once.
    let mut events = Vec::new();
    for n in 0..12 {
        events.push(json!({"chat": -100, "text": format!("g{n}")}));
        for c in 1..=3 {
            events.push(json!({"chat": c, "text": format!("p{c}-{n}")}));
        }
    }
    let total = events.len();
    post_spread(urls, "notify", events).await;
    let calls = eventually_within(Duration::from_secs(60), || async {
        let c = fake.calls("sendMessage");
        (c.len() >= total).then_some(c)
    })
    .await;
    let by_chat = |chat: i64| -> Vec<std::time::Instant> {
        let mut at: Vec<_> = calls
            .iter()
            .filter(|c| c.params["chat_id"] == chat)
            .map(|c| c.at)
            .collect();
        at.sort();
        at
    };
    // What the shared pace guarantees is the spacing of reservations (on the database's
    // clock; see the store test): each send waits for its slot, so the k-th message of a
    // chat arrives no sooner than k paces after the first slot. A sender delayed on its way
    // may land closer to the next one, so pairwise gaps at the receiver prove nothing; the
    // span of a chain does, less the first message's own delivery time (bounded here by a
    // generous half second).
    let late = Duration::from_millis(500);
    for (chat, pace) in [(1, 200), (2, 200), (3, 200), (-100, 250)] {
        let at = by_chat(chat);
        assert_eq!(at.len(), 12);
        let span = at[11] - at[0];
        let chain = Duration::from_millis(11 * pace);
        assert!(
            span + late >= chain,
            "chat {chat}: 12 messages within {span:?}"
        );
    }
    // The bot: 48 messages at 20 a second.
    let mut all: Vec<_> = calls.iter().map(|c| c.at).collect();
    all.sort();
    let span = all[all.len() - 1] - all[0];
    let chain = Duration::from_millis(50 * (all.len() as u64 - 1));
    assert!(
        span + late >= chain,
        "{} messages within {span:?}",
        all.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scenario_switched_off_on_one_replica_is_off_on_all() {
    let _heavy = HEAVY.lock().await;
    let db_url = pg::fresh_db().await;
    let sink = Sink::start().await;
    let cfg = ConfigDir::with(&[("push.toml", PUSH)]);
    cfg.write("gateway.toml", GATEWAY);
    let gws = replicas(&cfg, &db_url, 2).await;
    let client = reqwest::Client::new();
    let r = client
        .post(format!("{}/api/scenarios/push/disable", gws[0].admin))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let db = pool(&db_url).await;
    let url = format!("http://{}", sink.addr);
    // Within a heartbeat or two the other replica refuses to start the scenario too.
    let verdict = eventually(|| async {
        gws[1].post("push", json!({"url": url, "n": 1})).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let outcome: Option<String> = sqlx::query_scalar(
            "SELECT outcome FROM events WHERE status = 'done' ORDER BY received_at DESC, id DESC LIMIT 1",
        )
        .fetch_optional(&db)
        .await
        .unwrap()
        .flatten();
        outcome.filter(|o| o.contains("disabled"))
    })
    .await;
    assert!(verdict.contains("disabled"));
}

const WAITER: &str = r#"id = "waiter"
on = { webhook = "start" }
subject = "order:{{ event.id }}"
[[step]]
wait = { webhook = "answer", match = "order:{{ event.id }}", timeout = "1h" }
[[step]]
http = { post = "{{ event.url }}/resumed/{{ run.reply.event.n }}", attempts = 1000 }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_run_is_resumed_once_by_simultaneous_answers_on_three_replicas() {
    let _heavy = HEAVY.lock().await;
    let db_url = pg::fresh_db().await;
    let sink = Sink::start().await;
    let cfg = ConfigDir::with(&[("waiter.toml", WAITER)]);
    cfg.write("gateway.toml", GATEWAY);
    let gws = replicas(&cfg, &db_url, 3).await;
    let db = pool(&db_url).await;
    let url = format!("http://{}", sink.addr);
    gws[0].post("start", json!({"id": 1, "url": url})).await;
    eventually_within(Duration::from_secs(60), || async {
        let waiting = scalar(
            &db,
            "SELECT count(*) FROM runs WHERE status = 'waiting' AND scenario = 'waiter'",
        )
        .await;
        (waiting == 1).then_some(())
    })
    .await;
    // 50 matching answers at once, spread over the replicas.
    let urls = Arc::new(gws.iter().map(|g| g.url.clone()).collect::<Vec<_>>());
    let answers = (0..50).map(|n| json!({"id": 1, "n": n})).collect();
    post_spread(urls, "answer", answers).await;
    // Every answer processed, and the run's request settled.
    eventually_within(Duration::from_secs(60), || async {
        let pending = scalar(
            &db,
            "SELECT count(*) FROM events WHERE source = 'answer' AND status <> 'done'",
        )
        .await;
        let open = scalar(&db, "SELECT count(*) FROM outbox WHERE status = 'pending'").await;
        let done = scalar(&db, "SELECT count(*) FROM runs WHERE status = 'done'").await;
        (pending == 0 && open == 0 && done == 1).then_some(())
    })
    .await;
    assert_eq!(
        scalar(&db, "SELECT count(*) FROM runs").await,
        1,
        "no run started"
    );
    let resumed: Vec<_> = sink
        .received()
        .into_iter()
        .filter(|r| r.path.starts_with("/resumed/"))
        .collect();
    assert_eq!(resumed.len(), 1, "{resumed:?}");
}
