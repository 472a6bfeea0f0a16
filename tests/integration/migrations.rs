//! Upgrades of a database written by an earlier version: outbox rows that carried Telegram
//! Bot API calls become channel operations, offer message ids become string references, sent
//! messages get their reference as a column of its own, and an offer's one message becomes the
//! first of its recipients' messages, on both stores.

use sqlx::Connection;
use switchboard::channels::{OutAnswer, OutEdit, Outbound};
use switchboard::store::{self, PoolOptions, Store};

use crate::pg;
use crate::support::repo;

/// The repository's migrations for `kind` up to `last`, in a folder of their own.
fn migrations_until(kind: &str, last: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut files: Vec<_> = std::fs::read_dir(repo().join("migrations").join(kind))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for f in files {
        let name = f.file_name().unwrap().to_str().unwrap().to_string();
        if name.as_str() <= last {
            std::fs::copy(&f, dir.path().join(&name)).unwrap();
        }
    }
    dir
}

/// A SQLite file (`old.db` in the folder returned) migrated up to `last`, and a connection.
async fn old_sqlite(last: &str) -> (tempfile::TempDir, sqlx::SqliteConnection) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("old.db").display());
    let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let old = migrations_until("sqlite", last);
    sqlx::migrate::Migrator::new(old.path())
        .await
        .unwrap()
        .run(&mut c)
        .await
        .unwrap();
    (dir, c)
}

/// A fresh PostgreSQL database migrated up to `last`: its URL and a connection.
async fn old_postgres(last: &str) -> (String, sqlx::PgConnection) {
    let url = pg::fresh_db().await;
    let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
    let old = migrations_until("postgres", last);
    sqlx::migrate::Migrator::new(old.path())
        .await
        .unwrap()
        .run(&mut c)
        .await
        .unwrap();
    (url, c)
}

/// Outbox rows as the earlier version wrote them: a message with buttons, a reply keyboard
/// and a reply, an edit, and a callback answer.
const LEGACY: [(i64, &str); 3] = [
    (
        1,
        r#"{"to":"-100","lang":"en","text":"Deal","buttons":[{"text":"Open","url":"https://crm.example/1"}],"callback_buttons":[{"text":"Take","data":"o:1:0"}],"reply_keyboard":["1","2"],"reply_to":17,"run_id":5,"scenario":"s","offer_id":1}"#,
    ),
    (
        2,
        r#"{"method":"editMessageText","to":"-100","message_id":42,"text":"Taken"}"#,
    ),
    (
        3,
        r#"{"method":"answerCallbackQuery","callback_id":"cb-9","text":"It is yours.","alert":true}"#,
    ),
];

const INSERT_OUTBOX: &str = "INSERT INTO outbox (id, run_id, step, kind, channel, request, status, max_attempts, timeout_ms, next_attempt_at, resume, created_at, updated_at) VALUES ($1, 5, 0, 'send', 'tg', $2, 'pending', 3, 1000, 0, 0, 0, 0)";
const INSERT_OFFER: &str = "INSERT INTO offers (id, run_id, step, channel, chat_id, message_id, text, status, created_at) VALUES (1, 5, 0, 'tg', '-100', 42, 'Deal', 'open', 0)";

async fn check_converted(s: &dyn Store) {
    let op = |id: i64| async move {
        let row = s.outbox(id).await.unwrap().unwrap();
        Outbound::from_json(&row.request).unwrap()
    };
    let Outbound::Send(m) = op(1).await else {
        panic!("a message stays a message")
    };
    assert_eq!((m.to.as_str(), m.text.as_str()), ("-100", "Deal"));
    assert_eq!(m.links[0].url, "https://crm.example/1");
    assert_eq!(m.choices[0].data, "o:1:0");
    assert_eq!(m.keyboard, vec!["1", "2"]);
    assert_eq!(m.reply_to.as_deref(), Some("17"));
    assert_eq!(m.offer_id, Some(1));
    assert_eq!(
        op(2).await,
        Outbound::Edit(OutEdit {
            to: "-100".into(),
            message: "42".into(),
            text: Some("Taken".into()),
            ..Default::default()
        })
    );
    assert_eq!(
        op(3).await,
        Outbound::Answer(OutAnswer {
            click: "cb-9".into(),
            text: "It is yours.".into(),
            alert: true,
            to: None,
        })
    );
    let mut tx = s.begin().await.unwrap();
    let offer = tx.load_offer(1).await.unwrap().unwrap();
    assert_eq!(
        (offer.channel.as_str(), offer.chat_id.as_str()),
        ("tg", "-100")
    );
    // The one message of an earlier offer is its only recipient's, and its reference is
    // still set by the delivery of the row that sends it.
    let messages = tx.offer_messages(1).await.unwrap();
    assert_eq!(messages.len(), 1);
    let m = &messages[0];
    assert_eq!(
        (
            m.channel.as_str(),
            m.chat_id.as_str(),
            m.message_id.as_deref()
        ),
        ("tg", "-100", Some("42"))
    );
    assert_eq!((m.text.as_str(), m.outbox_id), ("Deal", None));
    tx.set_offer_message(1, 1, "43").await.unwrap();
    let m = tx.offer_messages(1).await.unwrap().remove(0);
    assert_eq!(m.message_id.as_deref(), Some("43"));
}

#[tokio::test]
async fn sqlite_rows_of_the_earlier_version_are_converted() {
    let (dir, mut c) = old_sqlite("0004_owner.sql").await;
    let path = dir.path().join("old.db");
    for (id, request) in LEGACY {
        sqlx::query(INSERT_OUTBOX)
            .bind(id)
            .bind(request)
            .execute(&mut c)
            .await
            .unwrap();
    }
    sqlx::query(INSERT_OFFER).execute(&mut c).await.unwrap();
    c.close().await.unwrap();

    let s = store::open(
        &format!("sqlite://{}", path.display()),
        &PoolOptions::default(),
    )
    .await
    .unwrap();
    check_converted(&*s).await;
}

#[tokio::test]
async fn postgres_rows_of_the_earlier_version_are_converted() {
    let (url, mut c) = old_postgres("0001_init.sql").await;
    for (id, request) in LEGACY {
        sqlx::query(INSERT_OUTBOX)
            .bind(id)
            .bind(request)
            .execute(&mut c)
            .await
            .unwrap();
    }
    sqlx::query(INSERT_OFFER).execute(&mut c).await.unwrap();
    c.close().await.unwrap();

    let s = store::open(&url, &PoolOptions::default()).await.unwrap();
    check_converted(&*s).await;
}

/// A delivered message, a delivered HTTP request and a failed message, as stored before
/// outbox rows had their message reference.
const SENT: [(i64, &str, &str, Option<&str>); 3] = [
    (
        11,
        "send",
        "delivered",
        Some(r#"{"channel":"wa","wamid":"wamid.OLD","message":"wamid.OLD"}"#),
    ),
    (
        12,
        "http",
        "delivered",
        Some(r#"{"status":200,"json":null}"#),
    ),
    (13, "send", "failed", None),
];

const INSERT_SENT: &str = "INSERT INTO outbox (id, run_id, step, kind, channel, request, status, max_attempts, timeout_ms, next_attempt_at, resume, response, created_at, updated_at) VALUES ($1, 5, 0, $2, 'wa', '{\"op\":\"send\",\"to\":\"+1\",\"text\":\"x\"}', $3, 3, 1000, 0, 0, $4, 0, 0)";

async fn check_message_refs(s: &dyn Store) {
    let reference = |id: i64| async move { s.outbox(id).await.unwrap().unwrap().message_ref };
    assert_eq!(reference(11).await.as_deref(), Some("wamid.OLD"));
    assert_eq!(reference(12).await, None);
    assert_eq!(reference(13).await, None);
}

#[tokio::test]
async fn sqlite_sent_messages_of_the_earlier_version_get_their_reference() {
    let (dir, mut c) = old_sqlite("0005_channel_operations.sql").await;
    let path = dir.path().join("old.db");
    for (id, kind, status, response) in SENT {
        sqlx::query(INSERT_SENT)
            .bind(id)
            .bind(kind)
            .bind(status)
            .bind(response)
            .execute(&mut c)
            .await
            .unwrap();
    }
    c.close().await.unwrap();
    let s = store::open(
        &format!("sqlite://{}", path.display()),
        &PoolOptions::default(),
    )
    .await
    .unwrap();
    check_message_refs(&*s).await;
}

#[tokio::test]
async fn postgres_sent_messages_of_the_earlier_version_get_their_reference() {
    let (url, mut c) = old_postgres("0002_channel_operations.sql").await;
    for (id, kind, status, response) in SENT {
        sqlx::query(INSERT_SENT)
            .bind(id)
            .bind(kind)
            .bind(status)
            .bind(response)
            .execute(&mut c)
            .await
            .unwrap();
    }
    c.close().await.unwrap();
    let s = store::open(&url, &PoolOptions::default()).await.unwrap();
    check_message_refs(&*s).await;
}
