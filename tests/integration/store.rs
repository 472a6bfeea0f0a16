//! One store test suite, run against SQLite (a temp file) and PostgreSQL (a throwaway
//! server on loopback): every test below runs once per backend.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map};
use switchboard::store::{
    self, EventFilter, IngestOutcome, NewEvent, NewOutbox, NewTimer, NewWait, OfferMessage,
    PoolOptions, RunFilter, RunRow, RunStatus, Store, StoreError, SubjectLimit,
};

use crate::pg;

pub async fn sqlite() -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("s.db").display());
    (
        store::open(&url, &PoolOptions::default()).await.unwrap(),
        dir,
    )
}

pub async fn postgres() -> (Arc<dyn Store>, String) {
    let url = pg::fresh_db().await;
    (
        store::open(&url, &PoolOptions::default()).await.unwrap(),
        url,
    )
}

macro_rules! both {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    let (s, _dir) = super::sqlite().await;
                    super::$name(s).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    let (s, _url) = super::postgres().await;
                    super::$name(s).await;
                }
            }
        )*
    };
}

both!(
    ingest_deduplicates,
    a_batch_stores_arriving_events,
    many_small_writes_in_a_row_all_land,
    runs_round_trip,
    outbox_lifecycle,
    timers_fire_once,
    waits_and_offers,
    limits_variables_and_settings,
    prune_keeps_what_is_live,
    prune_keeps_used_single_use_links_until_they_expire,
    one_claim_wins_under_contention,
    read_modify_write_of_a_subject_waits_for_the_writer,
);

/// The ids of the pending events, oldest first.
async fn pending_ids(s: &dyn Store) -> Vec<i64> {
    let events = s.pending_events(0, 10).await.unwrap();
    events.iter().map(|e| e.id).collect()
}

fn event(key: Option<&str>, n: i64) -> NewEvent {
    NewEvent {
        kind: "webhook".into(),
        source: "orders".into(),
        dedupe_key: key.map(str::to_string),
        data: json!({"n": n, "text": format!("order number {n}")}),
        meta: json!({}),
        rejected: None,
        received_at: 1_000 + n,
    }
}

fn run(id: i64, scenario: &str, subject: Option<&str>, status: RunStatus, at: i64) -> RunRow {
    RunRow {
        id,
        scenario: scenario.into(),
        subject: subject.map(str::to_string),
        status,
        pc: 0,
        vars: Map::new(),
        journal: vec![json!({"step": 0})],
        event_id: None,
        event: json!({"customer": "Olga Petrova"}),
        depth: 0,
        error: None,
        created_at: at,
        updated_at: at,
        version: Some(format!("{scenario}-v1")),
    }
}

/// Hundreds of writes one right after another — in one transaction, and as many ingests at
/// once — all land (the driver's command queue never stalls between them).
async fn many_small_writes_in_a_row_all_land(s: Arc<dyn Store>) {
    let mut tx = s.begin().await.unwrap();
    let mut ids = Vec::new();
    for n in 0..300 {
        let key = format!("row-{n}");
        ids.push(
            tx.insert_event(&event(Some(&key), n))
                .await
                .unwrap()
                .unwrap(),
        );
    }
    tx.commit().await.unwrap();
    let ingests = (300..600).map(|n| {
        let s = s.clone();
        async move { s.ingest(&[event(None, n)]).await.unwrap() }
    });
    for o in futures::future::join_all(ingests).await {
        let IngestOutcome::Accepted(id) = o[0] else {
            panic!("{o:?}")
        };
        ids.push(id);
    }
    for id in ids {
        assert!(s.event(id).await.unwrap().is_some(), "event {id} stored");
    }
}

async fn ingest_deduplicates(s: Arc<dyn Store>) {
    let mut rejected = event(None, 3);
    rejected.rejected = Some("bad signature".into());
    let out = s
        .ingest(&[
            event(Some("a"), 1),
            event(Some("a"), 2),
            rejected,
            event(None, 4),
        ])
        .await
        .unwrap();
    let IngestOutcome::Accepted(first) = out[0] else {
        panic!("{out:?}")
    };
    assert_eq!(out[1], IngestOutcome::Duplicate(first));
    assert!(matches!(out[2], IngestOutcome::Rejected(_)));
    let IngestOutcome::Accepted(fourth) = out[3] else {
        panic!("{out:?}")
    };
    // A later batch repeating the key is a duplicate of the first delivery too.
    let again = s.ingest(&[event(Some("a"), 5)]).await.unwrap();
    assert_eq!(again, vec![IngestOutcome::Duplicate(first)]);

    let pending: Vec<i64> = s
        .pending_events(0, 100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(pending, vec![first, fourth]);
    let ev = s.event(first).await.unwrap().unwrap();
    assert_eq!(ev.data["n"], 1);
    assert_eq!(ev.status, "pending");

    let mut tx = s.begin().await.unwrap();
    tx.finish_event(first, "done", &json!([{"verdict": "ok"}]), 2_000)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let ev = s.event(first).await.unwrap().unwrap();
    assert_eq!(
        (ev.status.as_str(), ev.outcome),
        ("done", Some(json!([{"verdict": "ok"}])))
    );
    assert_eq!(s.pending_events(0, 100).await.unwrap().len(), 1);

    let found = s
        .list_events(&EventFilter {
            q: Some("number 4".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(found.iter().map(|e| e.id).collect::<Vec<_>>(), vec![fourth]);
    assert_eq!(s.counts().await.unwrap().events, 3);
}

/// A batch's transaction stores arriving events: one it also finishes is written once,
/// finished; the others go in pending; a repeated key is a duplicate of the stored event;
/// nothing of a batch that rolls back is stored.
async fn a_batch_stores_arriving_events(s: Arc<dyn Store>) {
    let stored = s.ingest(&[event(Some("k1"), 1)]).await.unwrap();
    let IngestOutcome::Accepted(k1) = stored[0] else {
        panic!("{stored:?}")
    };
    let mut tx = s.begin().await.unwrap();
    let dropped = tx
        .ingest(&[event(None, 2), event(Some("k2"), 3)])
        .await
        .unwrap();
    drop(tx);
    for o in &dropped {
        let IngestOutcome::Accepted(id) = o else {
            panic!("{dropped:?}")
        };
        assert!(s.event(*id).await.unwrap().is_none(), "rolled back: {id}");
    }

    let mut tx = s.begin().await.unwrap();
    let out = tx
        .ingest(&[
            event(None, 4),
            event(Some("k1"), 5),
            event(None, 6),
            event(Some("k2"), 7),
        ])
        .await
        .unwrap();
    let [IngestOutcome::Accepted(done), IngestOutcome::Duplicate(dup), IngestOutcome::Accepted(left), IngestOutcome::Accepted(keyed)] =
        out[..]
    else {
        panic!("{out:?}")
    };
    assert_eq!(dup, k1);
    assert!(tx.event_pending(done).await.unwrap());
    tx.finish_event(done, "done", &json!([{"verdict": "started"}]), 9_000)
        .await
        .unwrap();
    tx.finish_event(keyed, "done", &json!([]), 9_000)
        .await
        .unwrap();
    assert!(!tx.event_pending(done).await.unwrap());
    assert!(tx.event_pending(left).await.unwrap());
    let (kind, _) = tx.event_origin(left).await.unwrap().unwrap();
    assert_eq!(kind, "webhook");
    tx.commit().await.unwrap();

    let row = s.event(done).await.unwrap().unwrap();
    assert_eq!(row.status, "done");
    assert_eq!(row.outcome, Some(json!([{"verdict": "started"}])));
    assert_eq!(row.data, event(None, 4).data);
    assert_eq!(row.received_at, 1_004);
    assert_eq!(s.event(keyed).await.unwrap().unwrap().status, "done");
    assert_eq!(s.event(left).await.unwrap().unwrap().status, "pending");
    let pending = pending_ids(&*s).await;
    assert_eq!(pending, vec![k1, left]);
    // The key stored by the batch deduplicates later arrivals.
    let again = s.ingest(&[event(Some("k2"), 8)]).await.unwrap();
    assert!(
        matches!(again[0], IngestOutcome::Duplicate(id) if id == keyed),
        "{again:?}"
    );
}

async fn runs_round_trip(s: Arc<dyn Store>) {
    let mut tx = s.begin().await.unwrap();
    let a = tx.new_run_id().await.unwrap();
    let b = tx.new_run_id().await.unwrap();
    assert_ne!(a, b);
    let mut r = run(a, "callback", Some("client:1"), RunStatus::Running, 10);
    tx.save_run(&r).await.unwrap();
    // A transaction reads its own writes.
    assert_eq!(tx.load_run(a).await.unwrap().unwrap().scenario, "callback");
    assert!(tx.active_run_exists("callback", "client:1").await.unwrap());
    r.status = RunStatus::Waiting;
    r.pc = 2;
    r.vars.insert("attempt".into(), json!(2));
    tx.save_run(&r).await.unwrap();
    tx.save_run(&run(b, "payment", None, RunStatus::Done, 20))
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let got = s.run(a).await.unwrap().unwrap();
    assert_eq!((got.status, got.pc), (RunStatus::Waiting, 2));
    assert_eq!(got.vars["attempt"], 2);
    assert_eq!(got.event["customer"], "Olga Petrova");

    let waiting = s
        .list_runs(&RunFilter {
            status: Some(RunStatus::Waiting),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(waiting.iter().map(|r| r.id).collect::<Vec<_>>(), vec![a]);
    let by_text = s
        .list_runs(&RunFilter {
            q: Some("Petrova".into()),
            scenario: Some("payment".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(by_text.iter().map(|r| r.id).collect::<Vec<_>>(), vec![b]);
    let mut tx = s.begin().await.unwrap();
    assert_eq!(tx.parked_runs("callback", None).await.unwrap(), vec![a]);
    assert!(tx.parked_runs("payment", None).await.unwrap().is_empty());
    tx.commit().await.unwrap();
    let stats = s.scenario_stats().await.unwrap();
    let cb = stats.iter().find(|x| x.scenario == "callback").unwrap();
    assert_eq!((cb.started, cb.active), (1, 1));
}

async fn outbox_lifecycle(s: Arc<dyn Store>) {
    let mut tx = s.begin().await.unwrap();
    let row = |n: i64| NewOutbox {
        run_id: Some(7),
        step: Some(n),
        kind: "http".into(),
        channel: "http".into(),
        request: json!({"url": "http://127.0.0.1:9/", "n": n}),
        max_attempts: 3,
        timeout_ms: 1000,
        resume: true,
        now: 100,
    };
    let a = tx.insert_outbox(&row(1)).await.unwrap();
    let b = tx.insert_outbox(&row(2)).await.unwrap();
    assert_ne!(a, b);
    tx.commit().await.unwrap();
    let open: Vec<i64> = s
        .open_outbox()
        .await
        .unwrap()
        .iter()
        .map(|o| o.id)
        .collect();
    assert_eq!(open, vec![a, b]);

    let mut tx = s.begin().await.unwrap();
    tx.outbox_attempt(a, 1, 500, "connection refused", 200)
        .await
        .unwrap();
    tx.outbox_finish(b, "delivered", 1, Some(&json!({"status": 200})), None, 300)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let ra = s.outbox(a).await.unwrap().unwrap();
    assert_eq!((ra.attempts, ra.next_attempt_at), (1, 500));
    assert_eq!(ra.last_error.as_deref(), Some("connection refused"));
    let rb = s.outbox(b).await.unwrap().unwrap();
    assert_eq!(rb.status, "delivered");
    assert_eq!(rb.response, Some(json!({"status": 200})));

    let mut tx = s.begin().await.unwrap();
    tx.outbox_finish(a, "failed", 3, None, Some("gave up"), 400)
        .await
        .unwrap();
    // Only a failed row can be reset.
    assert!(tx.reset_outbox(b, 450).await.unwrap().is_none());
    let reset = tx.reset_outbox(a, 450).await.unwrap().unwrap();
    assert_eq!((reset.status.as_str(), reset.attempts), ("pending", 0));
    assert_eq!(tx.last_outbox_of(7, 2).await.unwrap().unwrap().id, b);
    tx.commit().await.unwrap();
    assert_eq!(s.outbox_for_run(7).await.unwrap().len(), 2);
    let c = s.counts().await.unwrap();
    assert_eq!(c.outbox_by_status.get("pending"), Some(&1));
    assert_eq!(c.outbox_by_status.get("delivered"), Some(&1));
}

async fn timers_fire_once(s: Arc<dyn Store>) {
    let now = chrono::Utc::now().timestamp_millis();
    let mut tx = s.begin().await.unwrap();
    let timer = |run_id: i64, due_at: i64, key: Option<&str>| NewTimer {
        run_id,
        kind: "sleep".into(),
        due_at,
        scenario: "reminder".into(),
        subject: Some("client:1".into()),
        key: key.map(str::to_string),
    };
    let soon = tx.insert_timer(&timer(1, now - 10, None)).await.unwrap();
    tx.insert_timer(&timer(2, now + 60_000, Some("remind")))
        .await
        .unwrap();
    tx.insert_timer(&timer(3, now + 120_000, None))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert!(s.next_timer_due().await.unwrap().unwrap() <= now);
    let due = s.due_timers(now, 10).await.unwrap();
    assert_eq!(due.iter().map(|t| t.id).collect::<Vec<_>>(), vec![soon]);

    let mut tx = s.begin().await.unwrap();
    assert!(tx.delete_timer(soon).await.unwrap());
    assert!(!tx.delete_timer(soon).await.unwrap(), "a timer fires once");
    let keyed = tx
        .take_keyed_timers("reminder", Some("client:1"), "remind")
        .await
        .unwrap();
    assert_eq!(keyed, vec![2]);
    tx.clear_parks(3).await.unwrap();
    tx.commit().await.unwrap();
    assert!(s.list_timers(10).await.unwrap().is_empty());
    assert_eq!(s.next_timer_due().await.unwrap(), None);
}

async fn waits_and_offers(s: Arc<dyn Store>) {
    let mut tx = s.begin().await.unwrap();
    for (run_id, step) in [(11, 1), (12, 1), (13, 4)] {
        tx.insert_wait(&NewWait {
            run_id,
            hook: "telegram:tg".into(),
            scenario: "confirm".into(),
            step,
            match_key: "chat:42".into(),
            now: run_id,
        })
        .await
        .unwrap();
    }
    assert_eq!(
        tx.find_waits("telegram:tg", "confirm", 1, "chat:42")
            .await
            .unwrap(),
        vec![11, 12]
    );
    assert_eq!(
        tx.find_waits_any("telegram:tg", "chat:42").await.unwrap(),
        vec![11, 12, 13]
    );
    tx.clear_parks(11).await.unwrap();

    let offer = tx
        .insert_offer(12, 1, "tg", "-100", "New deal: 120,000", 50)
        .await
        .unwrap();
    for (chat, outbox) in [("-100", 70), ("+48555", 71)] {
        let m = OfferMessage {
            channel: "tg".into(),
            chat_id: chat.into(),
            message_id: None,
            outbox_id: Some(outbox),
            text: "New deal: 120,000".into(),
            lang: Some("ru".into()),
        };
        tx.add_offer_message(offer, &m).await.unwrap();
    }
    tx.set_offer_message(offer, 71, "wamid.1").await.unwrap();
    tx.exclude_from_offer(offer, "501").await.unwrap();
    tx.exclude_from_offer(offer, "502").await.unwrap();
    let open = tx.open_offer_of(12).await.unwrap().unwrap();
    let refs: Vec<_> = tx.offer_messages(open.id).await.unwrap();
    let refs: Vec<_> = refs
        .iter()
        .map(|m| {
            (
                m.chat_id.as_str(),
                m.message_id.as_deref(),
                m.lang.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        refs,
        vec![
            ("-100", None, Some("ru")),
            ("+48555", Some("wamid.1"), Some("ru"))
        ]
    );
    assert_eq!(open.excluded, vec!["501", "502"]);
    assert!(tx.claim_offer(offer, &json!({"id": 503})).await.unwrap());
    assert!(!tx.claim_offer(offer, &json!({"id": 504})).await.unwrap());
    assert!(!tx.expire_offer(offer).await.unwrap());
    tx.commit().await.unwrap();

    let mut tx = s.begin().await.unwrap();
    let taken = tx.load_offer(offer).await.unwrap().unwrap();
    assert_eq!(taken.status, "taken");
    assert_eq!(taken.winner, Some(json!({"id": 503})));
    assert!(tx.open_offer_of(12).await.unwrap().is_none());
    tx.commit().await.unwrap();
    assert_eq!(s.list_waits(10).await.unwrap().len(), 2);
}

async fn limits_variables_and_settings(s: Arc<dyn Store>) {
    let mut tx = s.begin().await.unwrap();
    assert!(tx
        .subject_limit("rating", "client:1")
        .await
        .unwrap()
        .is_none());
    let l = SubjectLimit {
        total: 1,
        window_start: 100,
        window_count: 1,
    };
    tx.put_subject_limit("rating", "client:1", &l)
        .await
        .unwrap();
    assert_eq!(tx.subject_vars("client:1").await.unwrap(), Map::new());
    let mut vars = Map::new();
    vars.insert("visits".into(), json!(3));
    tx.put_subject_vars("client:1", &vars).await.unwrap();
    tx.put_global("deals", &json!({"today": 5}), 10)
        .await
        .unwrap();
    tx.put_global("gone", &json!(1), 10).await.unwrap();
    assert!(tx.delete_global("gone").await.unwrap());
    tx.bump_counter("rating", false, 500).await.unwrap();
    tx.bump_counter("rating", true, 600).await.unwrap();
    tx.bump_counter("rating", true, 700).await.unwrap();
    tx.set_enabled("rating", false, 10).await.unwrap();
    tx.commit().await.unwrap();

    let mut tx = s.begin().await.unwrap();
    let got = tx
        .subject_limit("rating", "client:1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((got.total, got.window_start, got.window_count), (1, 100, 1));
    assert_eq!(tx.subject_vars("client:1").await.unwrap()["visits"], 3);
    tx.commit().await.unwrap();
    let globals = s.globals().await.unwrap();
    assert_eq!(globals.len(), 1);
    assert_eq!(globals["deals"]["today"], 5);
    let stats = s.scenario_stats().await.unwrap();
    let rating = stats.iter().find(|x| x.scenario == "rating").unwrap();
    assert_eq!((rating.limited, rating.last_fired), (2, Some(500)));
    assert_eq!(
        s.scenario_states().await.unwrap(),
        vec![("rating".to_string(), false, 10)]
    );
    assert_eq!(s.setting("link_key").await.unwrap(), None);
    s.put_setting("link_key", "k1").await.unwrap();
    s.put_setting("link_key", "k2").await.unwrap();
    assert_eq!(s.setting("link_key").await.unwrap().as_deref(), Some("k2"));
    assert_eq!(s.setting_or_put("link_key", "k3").await.unwrap(), "k2");
    assert_eq!(s.setting_or_put("fresh", "k4").await.unwrap(), "k4");
    s.ping().await.unwrap();
}

async fn prune_keeps_what_is_live(s: Arc<dyn Store>) {
    let out = s
        .ingest(&[event(Some("old"), 1), event(Some("new"), 2)])
        .await
        .unwrap();
    let (IngestOutcome::Accepted(old), IngestOutcome::Accepted(new)) = (out[0], out[1]) else {
        panic!("{out:?}")
    };
    let mut tx = s.begin().await.unwrap();
    tx.finish_event(old, "done", &json!([]), 1_500)
        .await
        .unwrap();
    let (a, b) = (
        tx.new_run_id().await.unwrap(),
        tx.new_run_id().await.unwrap(),
    );
    tx.save_run(&run(a, "x", None, RunStatus::Done, 100))
        .await
        .unwrap();
    tx.save_run(&run(b, "x", None, RunStatus::Waiting, 100))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let mut removed = 0;
    loop {
        let n = s.prune(5_000, 1).await.unwrap();
        if n == 0 {
            break;
        }
        removed += n;
    }
    assert_eq!(removed, 2, "the finished run and the processed event");
    assert!(s.run(a).await.unwrap().is_none());
    assert!(s.run(b).await.unwrap().is_some(), "a waiting run stays");
    assert!(s.event(old).await.unwrap().is_none());
    assert!(
        s.event(new).await.unwrap().is_some(),
        "a pending event stays"
    );
}

async fn one_claim_wins_under_contention(s: Arc<dyn Store>) {
    let mut tx = s.begin().await.unwrap();
    let offer = tx
        .insert_offer(1, 0, "tg", "-1", "Accept?", 1)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let mut tasks = Vec::new();
    for user in 0..40 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let attempt = async {
                    let mut tx = s.begin().await?;
                    let won = tx.claim_offer(offer, &json!({"id": user})).await?;
                    tx.commit().await?;
                    Ok::<bool, StoreError>(won)
                };
                match attempt.await {
                    Ok(won) => return won,
                    // SQLite may answer "busy" under this much contention: try again.
                    Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                }
            }
        }));
    }
    let mut winners = 0;
    for t in tasks {
        winners += t.await.unwrap() as usize;
    }
    assert_eq!(winners, 1);
}

/// Two replicas on one PostgreSQL database with a one-second lease.
async fn two_replicas() -> (Arc<dyn Store>, Arc<dyn Store>) {
    let url = pg::fresh_db().await;
    let opts = PoolOptions {
        lease: Duration::from_secs(1),
        ..PoolOptions::default()
    };
    let a = store::open(&url, &opts).await.unwrap();
    let b = store::open(&url, &opts).await.unwrap();
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_work_of_a_silent_replica_goes_to_a_live_one_and_the_silent_one_is_fenced() {
    let (a, b) = two_replicas().await;
    assert_ne!(a.replica(), b.replica());
    let out = a
        .ingest(&[event(Some("x"), 1), event(Some("y"), 2)])
        .await
        .unwrap();
    let mut tx = a.begin().await.unwrap();
    let row = tx
        .insert_outbox(&NewOutbox {
            run_id: None,
            step: None,
            kind: "http".into(),
            channel: "http".into(),
            request: json!({}),
            max_attempts: 1,
            timeout_ms: 1000,
            resume: false,
            now: 1,
        })
        .await
        .unwrap();
    tx.commit().await.unwrap();
    // A is alive: nothing to take, and B does not see A's work as its own.
    assert!(b.take_over().await.unwrap().0.is_empty());
    assert!(b.pending_events(0, 10).await.unwrap().is_empty());
    assert_eq!(a.pending_events(0, 10).await.unwrap().len(), 2);

    // A falls silent for longer than the lease; B keeps beating.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(b.heartbeat().await.unwrap());
    }
    let (events, rows) = b.take_over().await.unwrap();
    let ids: Vec<i64> = out
        .iter()
        .map(|o| match o {
            IngestOutcome::Accepted(id) => *id,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(events.iter().map(|e| e.id).collect::<Vec<_>>(), ids);
    assert_eq!(rows.iter().map(|r| r.id).collect::<Vec<_>>(), vec![row]);
    assert_eq!(b.pending_events(0, 10).await.unwrap().len(), 2);
    // Taken once: a second look finds nothing.
    assert!(b.take_over().await.unwrap().0.is_empty());

    // A wakes up: it learns it was presumed dead and can commit nothing more.
    assert!(!a.heartbeat().await.unwrap());
    assert!(matches!(a.begin().await, Err(StoreError::Fenced)));
    assert!(matches!(
        a.ingest(&[event(Some("z"), 3)]).await,
        Err(StoreError::Fenced)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_named_lease_has_one_holder_at_a_time() {
    let (a, b) = two_replicas().await;
    assert!(a.hold_lease("telegram_poll:tg").await.unwrap());
    assert!(!b.hold_lease("telegram_poll:tg").await.unwrap());
    assert!(a.hold_lease("telegram_poll:tg").await.unwrap(), "renewed");
    assert!(b.hold_lease("other").await.unwrap());
    a.release_lease("telegram_poll:tg").await.unwrap();
    assert!(b.hold_lease("telegram_poll:tg").await.unwrap());
    assert!(!a.hold_lease("telegram_poll:tg").await.unwrap());
    // Not renewed for a lease period: free for the other.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(a.hold_lease("telegram_poll:tg").await.unwrap());
    // A clean stop frees what a replica held.
    a.retire().await.unwrap();
    assert!(b.hold_lease("telegram_poll:tg").await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_send_slots_keep_the_pace_across_replicas() {
    let url = pg::fresh_db().await;
    let opts = PoolOptions {
        lease: Duration::from_secs(1),
        ..PoolOptions::default()
    };
    let a = store::open(&url, &opts).await.unwrap();
    let b = store::open(&url, &opts).await.unwrap();
    let db = sqlx::PgPool::connect(&url).await.unwrap();
    // The slot each reservation took, on the database's clock: what the pace guarantees is
    // the spacing of reservations; a sender that is late for its slot may land closer to
    // the next one, which no receiver-side clock can tell apart.
    let slot = |key: &'static str, spacing: i64| {
        let db = db.clone();
        async move {
            let next: i64 = sqlx::query_scalar("SELECT next_at FROM send_slots WHERE key = $1")
                .bind(key)
                .fetch_one(&db)
                .await
                .unwrap();
            next - spacing
        }
    };
    let mut slots = Vec::new();
    for i in 0..8 {
        let s = if i % 2 == 0 { &a } else { &b };
        let keys = [("tg:bot".to_string(), 10), ("tg:chat:42".to_string(), 100)];
        s.reserve_send(&keys).await.unwrap();
        slots.push(slot("tg:chat:42", 100).await);
    }
    for w in slots.windows(2) {
        assert!(w[1] - w[0] >= 100, "slots too close: {slots:?}");
    }
    // Another chat is not held back by this one's pace, only by the bot's: its slot is the
    // bot's next one (or the database's now, if that has passed since), long before chat
    // 42's last.
    a.reserve_send(&[("tg:bot".to_string(), 10), ("tg:chat:43".to_string(), 100)])
        .await
        .unwrap();
    let other = slot("tg:chat:43", 100).await;
    let bot = slot("tg:bot", 10).await;
    assert!(
        other >= bot,
        "chat 43 keeps the bot's pace: {other} < {bot}"
    );
    assert!(
        other < slots[7],
        "chat 43 ({other}) is not held back to chat 42's last slot ({})",
        slots[7]
    );
}

/// A second transaction reading a subject's limit and variables waits until the first one,
/// which read and wrote them, has committed, then sees what it wrote (on SQLite the write
/// transactions themselves take turns; on PostgreSQL a lock per scenario and subject).
async fn read_modify_write_of_a_subject_waits_for_the_writer(s: Arc<dyn Store>) {
    let mut first = s.begin().await.unwrap();
    assert!(first
        .subject_limit("once", "client:1")
        .await
        .unwrap()
        .is_none());
    let mut vars = first.subject_vars("client:1").await.unwrap();
    vars.insert("visits".into(), json!(1));
    first.put_subject_vars("client:1", &vars).await.unwrap();
    let l = SubjectLimit {
        total: 1,
        window_start: 0,
        window_count: 1,
    };
    first
        .put_subject_limit("once", "client:1", &l)
        .await
        .unwrap();

    let s2 = s.clone();
    let second = tokio::spawn(async move {
        let mut tx = s2.begin().await.unwrap();
        let limit = tx.subject_limit("once", "client:1").await.unwrap();
        let vars = tx.subject_vars("client:1").await.unwrap();
        tx.commit().await.unwrap();
        (limit.map(|l| l.total), vars.get("visits").cloned())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!second.is_finished(), "the second read did not wait");
    first.commit().await.unwrap();
    assert_eq!(second.await.unwrap(), (Some(1), Some(json!(1))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_global_write_waits_for_the_previous_writer() {
    let (s, _url) = postgres().await;
    let mut first = s.begin().await.unwrap();
    assert_eq!(first.lock_globals().await.unwrap(), Some(Map::new()));
    first.put_global("seen", &json!(1), 1).await.unwrap();
    let s2 = s.clone();
    let second = tokio::spawn(async move {
        let mut tx = s2.begin().await.unwrap();
        let globals = tx.lock_globals().await.unwrap().unwrap();
        tx.commit().await.unwrap();
        globals
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!second.is_finished(), "the second writer did not wait");
    first.commit().await.unwrap();
    assert_eq!(second.await.unwrap()["seen"], 1);
}

#[tokio::test]
async fn sqlite_ids_never_repeat_after_pruning_and_the_database_has_a_name() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("s.db").display());
    let open = || async { store::open(&url, &PoolOptions::default()).await.unwrap() };
    let s = open().await;
    let name = s.database_id().await.unwrap();
    let IngestOutcome::Accepted(first) = s.ingest(&[event(Some("a"), 1)]).await.unwrap()[0] else {
        panic!("stored")
    };
    let mut tx = s.begin().await.unwrap();
    tx.finish_event(first, "done", &json!([]), 2).await.unwrap();
    tx.commit().await.unwrap();
    while s.prune(i64::MAX, 100).await.unwrap() > 0 {}
    assert!(s.event(first).await.unwrap().is_none(), "pruned");
    drop(s);

    let s = open().await;
    let IngestOutcome::Accepted(second) = s.ingest(&[event(Some("b"), 3)]).await.unwrap()[0] else {
        panic!("stored")
    };
    assert!(second > first, "{second} after {first}");
    assert_eq!(s.database_id().await.unwrap(), name, "the name stays");
    let (other, _dir) = sqlite().await;
    assert_ne!(other.database_id().await.unwrap(), name);
}

async fn prune_keeps_used_single_use_links_until_they_expire(s: Arc<dyn Store>) {
    let link = |n: &str, keep_until: serde_json::Value| NewEvent {
        kind: "link".into(),
        source: "approve".into(),
        dedupe_key: Some(format!("link:{n}")),
        data: json!({}),
        meta: json!({"nonce": n, "once": true, "keep_until": keep_until}),
        rejected: None,
        received_at: 1,
    };
    let out = s
        .ingest(&[
            link("expires-late", json!(100_000)),
            link("never-expires", json!(null)),
            link("expired", json!(10)),
        ])
        .await
        .unwrap();
    let ids: Vec<i64> = out
        .iter()
        .map(|o| match o {
            IngestOutcome::Accepted(id) => *id,
            other => panic!("{other:?}"),
        })
        .collect();
    let mut tx = s.begin().await.unwrap();
    for id in &ids {
        tx.finish_event(*id, "done", &json!([]), 2).await.unwrap();
    }
    tx.commit().await.unwrap();
    // Retention reaches far past all three events.
    while s.prune(50_000, 100).await.unwrap() > 0 {}
    assert!(s.event(ids[0]).await.unwrap().is_some(), "not expired yet");
    assert!(s.event(ids[1]).await.unwrap().is_some(), "kept for good");
    assert!(s.event(ids[2]).await.unwrap().is_none(), "expired: pruned");
    // The kept ones still make a second click a duplicate.
    let again = s
        .ingest(&[link("expires-late", json!(100_000))])
        .await
        .unwrap();
    assert!(matches!(again[0], IngestOutcome::Duplicate(_)), "{again:?}");
}

/// A SQLite batch transaction takes the database at its first statement, not when it is
/// opened: while the engine works out a batch (its writes buffered), events are still stored.
/// Once it writes, another write transaction waits for its commit and then goes in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_batch_holds_the_database_only_from_its_first_statement() {
    let (s, _dir) = sqlite().await;
    let stored = s.ingest(&[event(None, 1)]).await.unwrap();
    let IngestOutcome::Accepted(first) = stored[0] else {
        panic!("{stored:?}")
    };
    let mut tx = s.begin().await.unwrap();
    tx.finish_event(first, "done", &json!([]), 2_000)
        .await
        .unwrap();
    // Only buffered so far: this ingest is not held up (a transaction begun at once would
    // keep it waiting until SQLite's busy timeout refused it).
    let during = tokio::time::timeout(Duration::from_secs(60), s.ingest(&[event(None, 2)]))
        .await
        .expect("the ingest is not held up by a batch that has not written")
        .unwrap();
    assert!(matches!(during[0], IngestOutcome::Accepted(_)));
    // A read makes the batch take the database; an ingest now queues behind its commit.
    assert!(tx.load_run(first + 1_000).await.unwrap().is_none());
    let late = tokio::spawn({
        let s = s.clone();
        async move { s.ingest(&[event(None, 3)]).await }
    });
    tx.commit().await.unwrap();
    let late = late.await.unwrap().unwrap();
    assert!(matches!(late[0], IngestOutcome::Accepted(_)));
    assert_eq!(s.event(first).await.unwrap().unwrap().status, "done");
    let pending = pending_ids(&*s).await;
    assert_eq!(pending.len(), 2, "{pending:?}");
}
