//! Inbound Telegram updates: normalized into events (`message`, `click`) that are stored,
//! deduplicated by `update_id`, before the polling offset moves on or the webhook answers.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value as Json};
use teloxide::payloads::GetUpdatesSetters;
use teloxide::requests::Requester;
use teloxide::types::{AllowedUpdate, Chat, Update, UpdateKind, User};
use tokio::sync::watch;

use super::Telegram;
use crate::channels::leader::{Leader, Turn};
use crate::clock::Clock;
use crate::engine::ingest::Ingest;
use crate::store::{IngestOutcome, NewEvent, Store};

fn user(u: &User) -> Json {
    json!({
        "id": u.id.0, "first_name": u.first_name, "last_name": u.last_name,
        "username": u.username, "language_code": u.language_code, "is_bot": u.is_bot,
    })
}

fn chat(c: &Chat) -> Json {
    let kind = if c.is_private() {
        "private"
    } else if c.is_supergroup() {
        "supergroup"
    } else if c.is_group() {
        "group"
    } else {
        "channel"
    };
    json!({"id": c.id.0, "type": kind, "title": c.title()})
}

/// The event for an update; `None` for kinds the gateway does not handle.
pub fn normalize(channel: &str, u: &Update, now: i64) -> Option<NewEvent> {
    let (kind, data) = match &u.kind {
        UpdateKind::Message(m) => {
            let text = m.text().or(m.caption()).unwrap_or_default();
            let start_payload = text
                .strip_prefix("/start")
                .filter(|rest| rest.is_empty() || rest.starts_with(' '))
                .map(|rest| rest.trim().to_string());
            let from = m.from.as_ref();
            (
                "message",
                json!({
                    "update_id": u.id.0,
                    "message_id": m.id.0,
                    "chat": chat(&m.chat),
                    "from": from.map(user),
                    "text": text,
                    "lang": from.and_then(|f| f.language_code.clone()),
                    "message": m.id.0.to_string(),
                    "reply_to": m.reply_to_message().map(|r| r.id.0.to_string()),
                    "start_payload": start_payload,
                }),
            )
        }
        UpdateKind::CallbackQuery(q) => (
            "click",
            json!({
                "update_id": u.id.0,
                "click": q.id.0,
                "data": q.data,
                "from": user(&q.from),
                "lang": q.from.language_code,
                "chat": q.message.as_ref().map(|m| chat(m.chat())),
                "message_id": q.message.as_ref().map(|m| m.id().0),
                "message": q.message.as_ref().map(|m| m.id().0.to_string()),
            }),
        ),
        _ => return None,
    };
    Some(NewEvent {
        kind: kind.into(),
        source: channel.to_string(),
        dedupe_key: Some(format!("telegram:{channel}:{}", u.id.0)),
        data,
        meta: json!({"update_id": u.id.0}),
        rejected: None,
        received_at: now,
    })
}

/// Stores the events of a batch of updates; true when every one is stored (or was already).
pub async fn store_updates(tg: &Telegram, ingest: &Ingest, updates: &[Update], now: i64) -> bool {
    let submits = updates
        .iter()
        .filter_map(|u| normalize(&tg.name, u, now))
        .map(|ev| ingest.submit(ev));
    let results = futures::future::join_all(submits).await;
    let mut ok = true;
    for r in results {
        match r {
            Ok(IngestOutcome::Accepted(_) | IngestOutcome::Duplicate(_)) => {}
            Ok(IngestOutcome::Rejected(_)) => {}
            Err(e) => {
                tracing::warn!(channel = %tg.name, error = %e, "storing updates failed");
                ok = false;
            }
        }
    }
    ok
}

/// Long polling: one request at a time; the offset moves on only after the updates are
/// stored, and is kept in the database so a restart continues where it stopped.
pub async fn poll(
    tg: Arc<Telegram>,
    store: Arc<dyn Store>,
    ingest: Ingest,
    clock: Clock,
    mut stop: watch::Receiver<bool>,
) {
    let key = format!("telegram_offset:{}", tg.name);
    let mut offset: i32 = match store.setting(&key).await {
        Ok(Some(v)) => v.parse().unwrap_or(0),
        _ => 0,
    };
    // Ready as soon as Telegram answers, not after the first long poll returns.
    match tg.bot.get_me().await {
        Ok(_) => tg.set_status("ok"),
        Err(e) => tg.set_status(&format!("getMe failed: {e}")),
    }
    if let Err(e) = tg.bot.delete_webhook().await {
        tracing::warn!(channel = %tg.name, error = %e, "deleteWebhook failed");
    }
    let mut failures = 0u32;
    // With replicas one of them polls (Telegram allows one poller per bot); the others wait
    // and take over from the stored offset when its lease runs out.
    let mut leader = Leader::new(
        store.clone(),
        &format!("telegram_poll:{}", tg.name),
        "Telegram polling",
    );
    let long_poll = if leader.shared() {
        (store.lease().as_secs() / 2).clamp(1, 25) as u32
    } else {
        25
    };
    loop {
        match leader.turn(&mut stop).await {
            Turn::Stop => return,
            Turn::Lead { fresh: true } => {
                offset = match store.setting(&key).await {
                    Ok(Some(v)) => v.parse().unwrap_or(offset),
                    _ => offset,
                };
                tracing::info!(channel = %tg.name, offset, "polling from the stored offset");
            }
            Turn::Lead { fresh: false } => {}
        }
        let request = tg
            .bot
            .get_updates()
            .offset(offset)
            .timeout(long_poll)
            .allowed_updates(vec![AllowedUpdate::Message, AllowedUpdate::CallbackQuery]);
        let updates = tokio::select! {
            r = request => r,
            _ = stop.changed() => return,
        };
        match updates {
            Ok(updates) => {
                failures = 0;
                tg.set_status("ok");
                if updates.is_empty() {
                    continue;
                }
                if !store_updates(&tg, &ingest, &updates, clock.now_ms()).await {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                let next = updates
                    .iter()
                    .map(|u| u.id.0 as i32)
                    .max()
                    .unwrap_or(offset - 1)
                    + 1;
                offset = offset.max(next);
                if let Err(e) = store.put_setting(&key, &offset.to_string()).await {
                    tracing::warn!(channel = %tg.name, error = %e, "saving the polling offset failed");
                }
            }
            Err(e) => {
                failures += 1;
                tg.set_status(&format!("getUpdates failed: {e}"));
                tracing::warn!(channel = %tg.name, error = %e, "getUpdates failed");
                let wait = Duration::from_millis(200 * 2u64.pow(failures.min(6)));
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.changed() => return,
                }
            }
        }
    }
}
