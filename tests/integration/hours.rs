//! Working hours and per-recipient caps, on the controlled clock: messages outside their
//! window wait for it (in order), holidays are skipped, zones come from the event, the
//! recipient or the gateway; the fourth message of a day to one person waits or is dropped.

use std::time::Duration;

use serde_json::{json, Value};
use switchboard::store::{RunRow, RunStatus};

use crate::fake_telegram::{texts_eventually, texts_to, FakeTelegram, TOKEN};
use crate::support::*;

fn gateway(fake: &FakeTelegram, defaults: &str, channel: &str) -> String {
    format!(
        "[defaults]\nretry_delay = \"50ms\"\n{defaults}\n\n[channels.tg]\ntype = \"telegram\"\ntoken = \"{TOKEN}\"\napi_url = \"{}\"\n{channel}\n\n[hooks.notify]\n\n[[staff]]\nid = \"anna\"\nname = \"Anna\"\ntz = \"America/New_York\"\nids = {{ telegram = \"900\" }}\n",
        fake.url
    )
}

const NOTIFY: &str = r#"id = "notify"
on = { webhook = "notify" }
hours = { allow = "Mon-Fri 09:00-20:00", tz = "{{ event.tz }}" }
[[step]]
send = { to = "tg:{{ event.chat }}", template = "{{ event.text }}" }
[[step]]
send = { to = "tg:{{ event.chat }}", template = "{{ event.text }} (2)" }
"#;

/// The run of the event posted to `hook`, once it is held (or has ended).
async fn posted(t: &TestApp, hook: &str, body: Value) -> RunRow {
    let (status, resp) = t.post(hook, body).await;
    assert_eq!(status, 202, "{resp}");
    let id = resp["event_id"].as_i64().expect("an event id");
    let runs = eventually(|| async {
        let r = t.runs_of(id).await;
        (!r.is_empty()).then_some(r)
    })
    .await;
    t.run_when(runs[0].id, |r| r.status != RunStatus::Running)
        .await
}

fn held_until(run: &RunRow) -> String {
    run.journal
        .iter()
        .rev()
        .find_map(|e| e["held_until"].as_str())
        .unwrap_or_else(|| panic!("not held: {:?}", run.journal))
        .to_string()
}

/// Moves the app's clock to `at` (RFC 3339).
fn advance_to(t: &TestApp, at: &str) {
    let at = chrono::DateTime::parse_from_rfc3339(at)
        .unwrap()
        .timestamp_millis();
    let now = t.app.clock.now_ms();
    assert!(at > now, "the clock is already past {at}");
    t.advance(Duration::from_millis((at - now) as u64));
}

#[tokio::test]
async fn friday_evening_messages_wait_for_monday_morning_in_order() {
    let fake = FakeTelegram::start().await;
    let holiday = NOTIFY
        .replace("id = \"notify\"", "id = \"notify-holiday\"")
        .replace("webhook = \"notify\"", "webhook = \"notify-holiday\"")
        .replace(
            "tz = \"{{ event.tz }}\"",
            "tz = \"{{ event.tz }}\", holidays = [\"2026-03-30\"]",
        );
    let cfg = ConfigDir::with(&[("notify.toml", NOTIFY), ("holiday.toml", &holiday)]);
    cfg.write(
        "gateway.toml",
        &format!(
            "{}\n[hooks.notify-holiday]\n",
            gateway(&fake, "timezone = \"Asia/Tokyo\"", "")
        ),
    );
    // Friday 21:30 in Warsaw, the last Friday of winter time.
    let t = TestApp::spawn_at(&cfg, "2026-03-27T21:30:00+01:00").await;
    let warsaw = |text: &str| json!({"chat": 7, "text": text, "tz": "Europe/Warsaw"});
    let first = posted(&t, "notify", warsaw("first")).await;
    let second = posted(&t, "notify", warsaw("second")).await;
    let off = posted(
        &t,
        "notify-holiday",
        json!({"chat": 8, "text": "after the holiday", "tz": "Europe/Warsaw"}),
    )
    .await;
    // No zone in the event: the gateway's (Tokyo, where it is already Saturday morning).
    let tokyo = posted(&t, "notify", json!({"chat": 9, "text": "tokyo"})).await;
    for run in [&first, &second] {
        assert_eq!(run.status, RunStatus::Sleeping);
        // 09:00 on Monday in Warsaw, which is summer time by then.
        assert_eq!(held_until(run), "2026-03-30T07:00:00.000Z");
        assert!(t.messages(run.id).await.is_empty());
    }
    assert_eq!(held_until(&off), "2026-03-31T07:00:00.000Z");
    assert_eq!(held_until(&tokyo), "2026-03-30T00:00:00.000Z");
    let journal = serde_json::to_string(&first.journal).unwrap();
    assert!(journal.contains("held until 2026-03-30T07:00:00.000Z (hours Mon-Fri 09:00-20:00 in Europe/Warsaw: opens Mon 2026-03-30 09:00)"), "{journal}");

    advance_to(&t, "2026-03-30T09:00:01+02:00");
    // Both runs' messages, in the order the runs were held, each run's own in its order.
    assert_eq!(
        texts_eventually(&fake, 7, 4).await,
        ["first", "first (2)", "second", "second (2)"]
    );
    for run in [&first, &second] {
        t.status_of(run.id, RunStatus::Done).await;
    }
    assert_eq!(texts_eventually(&fake, 9, 2).await, ["tokyo", "tokyo (2)"]);
    // The holiday run is still held (its timer is due on Tuesday).
    let off = t.run_when(off.id, |_| true).await;
    assert_eq!(off.status, RunStatus::Sleeping);
    assert!(texts_to(&fake, 8).is_empty());

    advance_to(&t, "2026-03-31T09:00:01+02:00");
    assert_eq!(
        texts_eventually(&fake, 8, 2).await,
        ["after the holiday", "after the holiday (2)"]
    );
    let off = t.status_of(off.id, RunStatus::Done).await;
    assert!(serde_json::to_string(&off.journal)
        .unwrap()
        .contains("released"));
}

#[tokio::test]
async fn channel_quiet_hours_follow_the_staff_members_zone() {
    let fake = FakeTelegram::start().await;
    let staff = r#"id = "page"
on = { webhook = "notify" }
[[step]]
send = { to = "staff:anna", template = "page: {{ event.text }}" }
[[step]]
send = { to = "tg:{{ event.chat }}", template = "{{ event.text }}" }
"#;
    let cfg = ConfigDir::with(&[("page.toml", staff)]);
    cfg.write(
        "gateway.toml",
        &gateway(&fake, "", "hours = { quiet = \"daily 21:00-08:00\" }"),
    );
    // 15:00 UTC = 10:00 in New York (Anna) and 15:00 for the chat (the gateway's UTC).
    let t = TestApp::spawn_at(&cfg, "2026-06-01T15:00:00Z").await;
    let day = posted(&t, "notify", json!({"chat": 5, "text": "day"})).await;
    assert_eq!(day.status, RunStatus::Done);
    assert_eq!(texts_eventually(&fake, 900, 1).await, ["page: day"]);
    // 22:30 UTC: 18:30 for Anna, but quiet for the chat until 08:00 UTC.
    advance_to(&t, "2026-06-01T22:30:00Z");
    let evening = posted(&t, "notify", json!({"chat": 5, "text": "evening"})).await;
    assert_eq!(held_until(&evening), "2026-06-02T08:00:00.000Z");
    assert_eq!(
        texts_eventually(&fake, 900, 2).await,
        ["page: day", "page: evening"]
    );
    // 02:00 UTC: 22:00 for Anna — quiet for her now.
    advance_to(&t, "2026-06-02T02:00:00Z");
    let night = posted(&t, "notify", json!({"chat": 6, "text": "night"})).await;
    assert_eq!(held_until(&night), "2026-06-02T12:00:00.000Z");
    advance_to(&t, "2026-06-02T08:00:01Z");
    t.status_of(evening.id, RunStatus::Done).await;
    assert_eq!(texts_eventually(&fake, 5, 2).await, ["day", "evening"]);
    advance_to(&t, "2026-06-02T12:00:01Z");
    t.status_of(night.id, RunStatus::Done).await;
    assert_eq!(
        texts_eventually(&fake, 900, 3).await,
        ["page: day", "page: evening", "page: night"]
    );
}

const ONE: &str = r#"id = "one"
on = { webhook = "notify" }
[[step]]
send = { to = "tg:{{ event.chat }}", template = "{{ event.text }}" }
"#;

#[tokio::test]
async fn the_fourth_message_of_a_day_to_one_person_is_dropped_and_journaled() {
    let fake = FakeTelegram::start().await;
    let cfg = ConfigDir::with(&[("one.toml", ONE)]);
    cfg.write(
        "gateway.toml",
        &gateway(
            &fake,
            "",
            "limits = { per_recipient = \"3/1d\", over = \"drop\" }",
        ),
    );
    let t = TestApp::spawn_at(&cfg, "2026-06-01T10:00:00Z").await;
    for n in 1..=3 {
        let run = posted(&t, "notify", json!({"chat": 3, "text": format!("m{n}")})).await;
        assert_eq!(run.status, RunStatus::Done);
    }
    let fourth = posted(&t, "notify", json!({"chat": 3, "text": "m4"})).await;
    assert_eq!(fourth.status, RunStatus::Done);
    let journal = serde_json::to_string(&fourth.journal).unwrap();
    assert!(
        journal.contains("dropped: 3 on tg already had 3 messages in 1day"),
        "{journal}"
    );
    assert!(t.messages(fourth.id).await.is_empty());
    // Someone else is not affected.
    let other = posted(&t, "notify", json!({"chat": 4, "text": "other"})).await;
    assert_eq!(texts_eventually(&fake, 4, 1).await, ["other"]);
    assert_eq!(other.status, RunStatus::Done);
    assert_eq!(texts_eventually(&fake, 3, 3).await, ["m1", "m2", "m3"]);
    // A day later there is room again.
    t.advance(Duration::from_secs(24 * 3600 + 1));
    posted(&t, "notify", json!({"chat": 3, "text": "m5"})).await;
    assert_eq!(
        texts_eventually(&fake, 3, 4).await,
        ["m1", "m2", "m3", "m5"]
    );
}

#[tokio::test]
async fn the_fourth_message_of_a_day_to_one_person_waits_for_room() {
    let fake = FakeTelegram::start().await;
    let cfg = ConfigDir::with(&[("one.toml", ONE)]);
    cfg.write(
        "gateway.toml",
        &gateway(&fake, "", "limits = { per_recipient = \"3/1d\" }"),
    );
    let t = TestApp::spawn_at(&cfg, "2026-06-01T10:00:00Z").await;
    let mut first = None;
    for n in 1..=3 {
        let before = t.app.clock.now_ms();
        posted(&t, "notify", json!({"chat": 3, "text": format!("m{n}")})).await;
        // When the first message was counted: between these two readings.
        first.get_or_insert((before, t.app.clock.now_ms()));
        t.advance(Duration::from_secs(3600));
    }
    let fourth = posted(&t, "notify", json!({"chat": 3, "text": "m4"})).await;
    assert_eq!(fourth.status, RunStatus::Sleeping);
    // The day counts from the first message.
    let until = chrono::DateTime::parse_from_rfc3339(&held_until(&fourth))
        .unwrap()
        .timestamp_millis();
    let (earliest, latest) = first.unwrap();
    const DAY: i64 = 24 * 3600 * 1000;
    assert!((earliest + DAY..=latest + DAY).contains(&until), "{until}");
    assert_eq!(texts_eventually(&fake, 3, 3).await, ["m1", "m2", "m3"]);
    t.advance(Duration::from_millis(
        (until - t.app.clock.now_ms()).max(0) as u64 + 1,
    ));
    t.status_of(fourth.id, RunStatus::Done).await;
    assert_eq!(
        texts_eventually(&fake, 3, 4).await,
        ["m1", "m2", "m3", "m4"]
    );
}

const TEAM: &str = "\n[[staff]]\nid = \"bob\"\nname = \"Bob\"\ntz = \"Asia/Tokyo\"\nids = { telegram = \"901\" }\ngroups = [\"team\"]\n";

#[tokio::test]
async fn a_recipient_over_the_cap_is_left_out_and_the_others_get_theirs() {
    let fake = FakeTelegram::start().await;
    let direct = "id = \"direct\"\non = { webhook = \"direct\" }\n[[step]]\nsend = { to = \"tg:900\", template = \"to Anna\" }\n";
    let team = "id = \"team\"\non = { webhook = \"notify\" }\n[[step]]\nsend = { to = \"staff:@team\", template = \"to the team\" }\n";
    let cfg = ConfigDir::with(&[("direct.toml", direct), ("team.toml", team)]);
    let gw = gateway(
        &fake,
        "",
        "limits = { per_recipient = \"1/1d\", over = \"drop\" }",
    )
    .replace(
        "ids = { telegram = \"900\" }",
        "ids = { telegram = \"900\" }\ngroups = [\"team\"]",
    );
    cfg.write("gateway.toml", &format!("{gw}\n[hooks.direct]\n{TEAM}"));
    let t = TestApp::spawn_at(&cfg, "2026-06-01T10:00:00Z").await;
    posted(&t, "direct", json!({})).await;
    let run = posted(&t, "notify", json!({})).await;
    assert_eq!(run.status, RunStatus::Done);
    assert_eq!(texts_eventually(&fake, 901, 1).await, ["to the team"]);
    assert_eq!(texts_eventually(&fake, 900, 1).await, ["to Anna"]);
    let journal = serde_json::to_string(&run.journal).unwrap();
    assert!(
        journal.contains("dropped: 900 on tg already had 1 messages in 1day"),
        "{journal}"
    );
    let sent: Vec<String> = t
        .messages(run.id)
        .await
        .iter()
        .map(|m| m["to"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(sent, ["901"]);
}

#[tokio::test]
async fn recipients_whose_hours_never_meet_fail_the_step_with_the_reason() {
    let fake = FakeTelegram::start().await;
    let team = "id = \"team\"\non = { webhook = \"notify\" }\nhours = { allow = \"Mon-Fri 09:00-10:00\" }\n[[step]]\nsend = { to = \"staff:@team\", template = \"to the team\" }\n";
    let cfg = ConfigDir::with(&[("team.toml", team)]);
    let gw = gateway(&fake, "", "").replace(
        "ids = { telegram = \"900\" }",
        "ids = { telegram = \"900\" }\ngroups = [\"team\"]",
    );
    cfg.write("gateway.toml", &format!("{gw}{TEAM}"));
    let t = TestApp::spawn_at(&cfg, "2026-06-01T10:00:00Z").await;
    let run = posted(&t, "notify", json!({})).await;
    assert_eq!(run.status, RunStatus::Failed);
    let error = run.error.unwrap_or_default();
    assert!(
        error.contains("the recipients' working hours are never open at the same time (Mon-Fri 09:00-10:00 in America/New_York; Mon-Fri 09:00-10:00 in Asia/Tokyo)"),
        "{error}"
    );
}
