//! Dates and local times: template dates on the controlled clock, sleeping until a local
//! time across a daylight-saving change, and yearly triggers.

use std::time::Duration;

use serde_json::json;
use switchboard::store::{RunRow, RunStatus};

use crate::support::*;

fn ms(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .unwrap()
        .timestamp_millis()
}

/// The due times of a run's pending timers.
async fn timers_of(t: &TestApp, run: i64) -> Vec<i64> {
    let (s, b) = t.get("/api/timers").await;
    assert_eq!(s, 200, "{b}");
    b["timers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["run_id"] == run)
        .map(|x| x["due_at"].as_i64().unwrap())
        .collect()
}

fn entries<'a>(run: &'a RunRow, result: &str) -> Vec<&'a serde_json::Value> {
    run.journal
        .iter()
        .filter(|e| e["result"] == result)
        .collect()
}

const REMINDER: &str = r#"id = "remind"
on = { webhook = "booked" }
subject = "appt:{{ event.id }}"
[[step]]
sleep = { until = "event.appointment | add(days=-1)", at = "10:00", tz = "{{ event.tz }}" }
[[step]]
send = { to = "ops", template = "Tomorrow {{ event.appointment | format_date('%H:%M', tz=event.tz) }}" }
"#;

#[tokio::test]
async fn a_reminder_the_day_before_at_ten_crosses_the_daylight_saving_change() {
    let cfg = ConfigDir::with(&[("remind.toml", REMINDER)]);
    let t = TestApp::spawn_at(&cfg, "2026-03-27T21:30:00+01:00").await;

    // Clocks in Warsaw move forward in the night before the 29th.
    let run = t
        .start_one(
            "booked",
            json!({"id": 1, "appointment": "2026-03-30T08:30:00Z", "tz": "Europe/Warsaw"}),
        )
        .await;
    let sleeping = t.status_of(run, RunStatus::Sleeping).await;
    assert_eq!(timers_of(&t, run).await, [ms("2026-03-29T08:00:00Z")]);
    assert_eq!(
        entries(&sleeping, "sleeping")[0]["note"],
        "sleeping until 2026-03-29T10:00:00+02:00"
    );

    t.advance(Duration::from_secs(36 * 3600));
    let done = t.status_of(run, RunStatus::Done).await;
    let woke = entries(&done, "woke");
    assert_eq!(woke.len(), 1, "{:?}", done.journal);
    assert!(woke[0]["at"].as_i64().unwrap() >= ms("2026-03-29T08:00:00Z"));
    let sent = t.messages(run).await;
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["text"], "Tomorrow 10:30");
    assert!(timers_of(&t, run).await.is_empty());

    // A day already past wakes at once, and the journal says so.
    let late = t
        .start_one(
            "booked",
            json!({"id": 2, "appointment": "2026-03-20", "tz": "Europe/Warsaw"}),
        )
        .await;
    let done = t.status_of(late, RunStatus::Done).await;
    let note = entries(&done, "sleeping")[0]["note"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        note,
        "sleeping until 2026-03-19T10:00:00+01:00: that time is past, waking at once"
    );
}

const BIRTHDAY: &str = r#"id = "bday"
on = { webhook = "crm", yearly = "event.birthday", at = "09:00", tz = "{{ event.tz }}" }
subject = "customer:{{ event.id }}"
[[step]]
send = { to = "ops", template = "Happy birthday, {{ event.name }}! ({{ now(tz=event.tz) | format_date('%Y-%m-%d') }})" }
"#;

/// The run a yearly run scheduled for the next year when it woke.
fn next_year(run: &RunRow) -> i64 {
    let e = run
        .journal
        .iter()
        .rev()
        .find(|e| e["next"].is_string())
        .unwrap_or_else(|| panic!("no next year's run in {:?}", run.journal));
    e["next"]
        .as_str()
        .unwrap()
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_yearly_trigger_fires_on_the_date_every_year_and_a_new_date_replaces_the_old() {
    let cfg = ConfigDir::with(&[("bday.toml", BIRTHDAY)]);
    let t = TestApp::spawn_at(&cfg, "2026-03-27T21:30:00+01:00").await;
    let customer =
        |day: &str| json!({"id": 7, "name": "Ada", "birthday": day, "tz": "Europe/Warsaw"});

    let first = t.start_one("crm", customer("1990-04-02")).await;
    t.status_of(first, RunStatus::Sleeping).await;
    assert_eq!(timers_of(&t, first).await, [ms("2026-04-02T07:00:00Z")]);
    // The birthday was corrected: the new date's run replaces the first one.
    let second = t.start_one("crm", customer("1990-04-05")).await;
    let replaced = t.status_of(first, RunStatus::Cancelled).await;
    assert_eq!(
        replaced.journal.last().unwrap()["why"],
        format!("replaced by run {second}")
    );
    let sleeping = t.status_of(second, RunStatus::Sleeping).await;
    assert_eq!(
        entries(&sleeping, "sleeping")[0]["note"],
        "sleeping until 2026-04-05T09:00:00+02:00 (yearly)"
    );
    assert_eq!(timers_of(&t, second).await, [ms("2026-04-05T07:00:00Z")]);

    // 2026-04-05.
    t.advance(Duration::from_secs(9 * 24 * 3600));
    let done = t.status_of(second, RunStatus::Done).await;
    let sent = t.messages(second).await;
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["text"], "Happy birthday, Ada! (2026-04-05)");
    assert!(t.messages(first).await.is_empty());
    let third = next_year(&done);
    t.status_of(third, RunStatus::Sleeping).await;
    assert_eq!(timers_of(&t, third).await, [ms("2027-04-05T07:00:00Z")]);

    // 2027-04-05.
    t.advance(Duration::from_secs(365 * 24 * 3600));
    let done = t.status_of(third, RunStatus::Done).await;
    assert_eq!(
        t.messages(third).await[0]["text"],
        "Happy birthday, Ada! (2027-04-05)"
    );
    let fourth = next_year(&done);
    assert_eq!(timers_of(&t, fourth).await, [ms("2028-04-05T07:00:00Z")]);

    // Disabled on the day: that year is skipped, the next one still comes.
    let (s, b) = t.post_api("/api/scenarios/bday/disable").await;
    assert_eq!(s, 200, "{b}");
    t.advance(Duration::from_secs(366 * 24 * 3600));
    let skipped = t.status_of(fourth, RunStatus::Cancelled).await;
    assert_eq!(
        entries(&skipped, "skipped")[0]["why"],
        "the scenario is disabled"
    );
    assert!(t.messages(fourth).await.is_empty());
    let fifth = next_year(&skipped);
    assert_eq!(timers_of(&t, fifth).await, [ms("2029-04-05T07:00:00Z")]);
}

#[tokio::test]
async fn template_dates_read_the_controlled_clock_and_the_language() {
    let cfg = ConfigDir::with(&[
        (
            "show.toml",
            "id = \"show\"\non = { webhook = \"show\" }\n[[step]]\nsend = { to = \"ops\", template = \"{{ now(tz='Europe/Warsaw') | format_date('%Y-%m-%d %H:%M %:z') }} | {{ event.day | format_date('long', lang='pl') }} | {{ event.day | format_date('long', lang='en') }} | {{ event.day | weekday }}\" }\n",
        ),
        (
            "bad.toml",
            "id = \"bad\"\non = { webhook = \"bad\" }\n[[step]]\nsend = { to = \"ops\", template = \"{{ event.day | add(days=1) }}\" }\n",
        ),
    ]);
    let t = TestApp::spawn_at(&cfg, "2026-03-27T21:30:00+01:00").await;

    let run = t.start_one("show", json!({"day": "2026-12-01"})).await;
    t.status_of(run, RunStatus::Done).await;
    assert_eq!(
        t.messages(run).await[0]["text"],
        "2026-03-27 21:30 +01:00 | 1 grudnia 2026 | December 1, 2026 | 2"
    );

    let run = t.start_one("bad", json!({"day": "soon"})).await;
    let failed = t.status_of(run, RunStatus::Failed).await;
    let error = failed.error.unwrap();
    assert!(error.contains("'soon' is not a date"), "{error}");
}
