//! A message read from the mailbox as events: a reply or new mail → `message` (with the run
//! whose message it answers, if any), a delivery status notification → `status` per failed
//! recipient (and a hard bounce suppresses the address), an automatic reply or an unreadable
//! message → a journaled rejection.

use serde_json::{json, Value as Json};

use super::parse::{parse, InMail, Mailbox};
use super::Email;
use crate::store::{NewEvent, OutboxRow, Store, StoreError};

/// Where a message was read: its UID within the mailbox's UIDVALIDITY.
#[derive(Debug, Clone, Copy)]
pub struct Seen {
    pub validity: u32,
    pub uid: u32,
}

/// The run message a reply answers: the outbox row that sent it.
struct Thread {
    row: OutboxRow,
    /// Its `Message-ID`.
    reference: String,
}

/// The bare address in `to` (`Ada <ada@example.com>` → `ada@example.com`), lowercased.
fn bare(to: &str) -> String {
    super::outbound::mailbox(to)
        .map(|m| m.email.to_string())
        .unwrap_or_else(|_| to.trim().to_string())
        .to_ascii_lowercase()
}

/// `reply+<token>@example.com`, when `reply@example.com` is the channel's reply address.
fn token_of(mail: &Email, address: &str) -> Option<String> {
    let base = mail.cfg.reply_to.as_ref()?;
    let (local, domain) = address.rsplit_once('@')?;
    let (user, token) = local.split_once('+')?;
    let same = user.eq_ignore_ascii_case(base.user()) && domain.eq_ignore_ascii_case(base.domain());
    (same && !token.is_empty() && token.chars().all(|c| c.is_ascii_alphanumeric()))
        .then(|| token.to_ascii_lowercase())
}

/// The message of ours a reply answers: `In-Reply-To` first, then `References` from the
/// newest (Outlook rewrites `In-Reply-To`, keeps `References`), then a token in the address
/// it was sent to (clients that drop both).
async fn thread(mail: &Email, store: &dyn Store, m: &InMail) -> Result<Option<Thread>, StoreError> {
    let tokens =
        m.to.iter()
            .chain(&m.cc)
            .map(|a| a.address.clone())
            .chain(m.delivered_to.iter().cloned())
            .filter_map(|a| token_of(mail, &a))
            .map(|t| super::outbound::message_id(&mail.cfg, &t));
    let mut candidates: Vec<String> = m
        .in_reply_to
        .iter()
        .chain(m.references.iter().rev())
        .cloned()
        .chain(tokens)
        .collect();
    candidates.dedup();
    for reference in candidates.into_iter().take(50) {
        if let Some(row) = store.outbox_by_ref(&mail.name, &reference).await? {
            return Ok(Some(Thread { row, reference }));
        }
    }
    Ok(None)
}

fn mailbox_json(m: &Mailbox) -> Json {
    json!({"address": m.address, "name": m.name})
}

/// The non-empty lines of the new text, first ones first (an `ask` takes the first that
/// answers it).
fn lines(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .take(20)
        .collect()
}

/// Longest text or HTML kept in an event.
const TEXT_KEPT: usize = 64 * 1024;

fn capped(s: &str) -> String {
    match s.char_indices().nth(TEXT_KEPT) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

fn event(mail: &Email, kind: &str, key: String, data: Json, seen: Seen, now: i64) -> NewEvent {
    NewEvent {
        kind: kind.into(),
        source: mail.name.clone(),
        dedupe_key: Some(key),
        data,
        meta: json!({"uid": seen.uid, "uidvalidity": seen.validity}),
        rejected: None,
        received_at: now,
    }
}

/// The events of one message read from the mailbox.
pub async fn events(
    mail: &Email,
    store: &dyn Store,
    raw: &[u8],
    seen: Seen,
    now: i64,
) -> Result<Vec<NewEvent>, StoreError> {
    let by_uid = format!("email:{}:uid:{}:{}", mail.name, seen.validity, seen.uid);
    let m = match parse(raw) {
        Ok(m) => m,
        Err(why) => {
            let mut ev = event(mail, "message", by_uid, json!({"uid": seen.uid}), seen, now);
            ev.rejected = Some(format!("an unreadable message (UID {}): {why}", seen.uid));
            return Ok(vec![ev]);
        }
    };
    let key = match &m.message_id {
        Some(id) => format!("email:{}:{id}", mail.name),
        None => by_uid,
    };
    let from = m
        .from
        .as_ref()
        .map(|f| f.address.clone())
        .unwrap_or_default();
    if let Some(report) = &m.report {
        return bounces(mail, store, &m, report, &key, seen, now).await;
    }
    let mut data = json!({
        "chat": {"id": from, "type": "private"},
        "from": {"id": from, "address": from,
            "name": m.from.as_ref().and_then(|f| f.name.clone()),
            "first_name": m.from.as_ref().and_then(|f| f.name.clone())},
        "text": capped(&m.answer),
        "lines": lines(&m.answer),
        "full_text": capped(&m.text),
        "html": m.html.as_deref().map(capped),
        "subject": m.subject,
        "to": m.to.iter().map(mailbox_json).collect::<Vec<_>>(),
        "cc": m.cc.iter().map(mailbox_json).collect::<Vec<_>>(),
        "message": m.message_id,
        "message_id": m.message_id,
        "reply_to": m.in_reply_to.first(),
        "thread": null,
        "attachments": m.attachments.iter().map(|a| json!({
            "name": a.name, "content_type": a.content_type, "size": a.size})).collect::<Vec<_>>(),
        "lang": m.lang,
        "uid": seen.uid,
    });
    // Our own mail read back (a copy to the mailbox, a Bcc to an archive) is no one's reply.
    let ours = match &m.message_id {
        Some(id) => store.outbox_by_ref(&mail.name, id).await?.is_some(),
        None => false,
    } || from == mail.cfg.from.email.to_string().to_ascii_lowercase();
    if ours {
        let mut ev = event(mail, "message", key, data, seen, now);
        ev.rejected = Some("a message this channel sent, read back".into());
        return Ok(vec![ev]);
    }
    if m.automatic {
        let mut ev = event(mail, "message", key, data, seen, now);
        ev.rejected = Some(format!(
            "an automatic reply from {from} (out of office, auto-responder) answers nothing"
        ));
        return Ok(vec![ev]);
    }
    if let Some(t) = thread(mail, store, &m).await? {
        let to = t.row.request["to"].as_str().unwrap_or_default().to_string();
        // The reply's conversation is the address the message went to, as the scenario
        // wrote it, when that is who replied: the `ask` waiting there takes it.
        if bare(&to) == from {
            data["chat"]["id"] = json!(to);
        }
        data["reply_to"] = json!(t.reference);
        data["thread"] = json!({"run": t.row.run_id, "outbox": t.row.id, "to": to});
    }
    Ok(vec![event(mail, "message", key, data, seen, now)])
}

/// A delivery status notification: a `status` event per failed recipient, matched to the
/// message by its `Message-ID`; a permanent failure (5.x.x) suppresses the address.
async fn bounces(
    mail: &Email,
    store: &dyn Store,
    m: &InMail,
    report: &super::parse::Report,
    key: &str,
    seen: Seen,
    now: i64,
) -> Result<Vec<NewEvent>, StoreError> {
    // Only a report about a message this channel sent, and a recipient it was sent to, can
    // suppress an address: anyone can write a report.
    let sent = match &report.original_message_id {
        Some(id) => store.outbox_by_ref(&mail.name, id).await?,
        None => None,
    };
    let recipients: Vec<String> = sent
        .iter()
        .flat_map(|row| {
            let r = &row.request;
            std::iter::once(&r["to"])
                .chain(r["cc"].as_array().into_iter().flatten())
                .chain(r["bcc"].as_array().into_iter().flatten())
                .filter_map(|a| a.as_str().map(bare))
                .collect::<Vec<_>>()
        })
        .collect();
    let mut out = Vec::new();
    for r in report.recipients.iter().filter(|r| r.action == "failed") {
        let reason = r
            .diagnostic
            .clone()
            .unwrap_or_else(|| "delivery failed".into());
        let ours = recipients.contains(&r.address.to_ascii_lowercase());
        if r.is_hard() && ours {
            store
                .suppress(
                    &mail.name,
                    &r.address,
                    &format!("bounced: {} {reason}", r.status),
                    now,
                )
                .await?;
        }
        let mut ev = event(
            mail,
            "status",
            format!("{key}:{}", r.address),
            json!({
                "message": report.original_message_id,
                "status": "failed",
                "recipient": r.address,
                "hard": r.is_hard(),
                "error": {"code": r.status, "title": reason},
                "subject": m.subject,
            }),
            seen,
            now,
        );
        // A report about someone a message of ours did not go to changes nothing.
        if !ours {
            ev.rejected = Some(match &sent {
                Some(row) => format!(
                    "a delivery report about {}, to whom message {} was not sent",
                    r.address,
                    row.message_ref.as_deref().unwrap_or("?")
                ),
                None => format!(
                    "a delivery report about {} for a message this channel did not send",
                    r.address
                ),
            });
        }
        out.push(ev);
    }
    if out.is_empty() {
        let states: Vec<String> = report
            .recipients
            .iter()
            .map(|r| format!("{} {} {}", r.address, r.action, r.status))
            .collect();
        let mut ev = event(
            mail,
            "status",
            key.to_string(),
            json!({"message": report.original_message_id, "subject": m.subject}),
            seen,
            now,
        );
        ev.rejected = Some(format!(
            "a delivery report without failures: {}",
            states.join("; ")
        ));
        out.push(ev);
    }
    Ok(out)
}
