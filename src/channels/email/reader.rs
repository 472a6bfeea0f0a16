//! The mailbox reader: one per mailbox across replicas (the shared leader). It logs in,
//! reads every message after the last UID it stored (no "last 10 only" after an outage),
//! stores each message's events before it moves the stored UID on (a restart neither loses
//! nor repeats one: events are deduplicated by `Message-ID`), then waits in IDLE where the
//! server has it and polls otherwise. A dropped connection, a refused login or a restarted
//! server is retried with backoff forever, and shown on `/readyz`, in metrics and in the
//! journal.

use std::sync::Arc;
use std::time::Duration;

use async_imap::extensions::idle::IdleResponse;
use futures::TryStreamExt;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::config::{Imap, Security};
use super::inbound::{events, Seen};
use super::Email;
use crate::channels::leader::{Leader, Turn};
use crate::channels::Context;
use crate::engine::ingest::SubmitError;
use crate::store::{IngestOutcome, NewEvent};

/// Longest wait for the server to answer one command (a login process that accepts the
/// connection and never greets must not hang the reader).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// Messages fetched per command.
const BATCH: usize = 20;
/// Longest pause between attempts while the mailbox cannot be read.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

type Result<T> = std::result::Result<T, String>;

/// A byte stream to the IMAP server, plain or TLS.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send + std::fmt::Debug {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + std::fmt::Debug> Stream for T {}
type Session = async_imap::Session<Box<dyn Stream>>;

/// The stored position: the mailbox's UIDVALIDITY and the last UID whose events are stored.
fn state_key(mail: &Email) -> String {
    format!("email_uid:{}", mail.name)
}

/// `validity:uid[:last poll ms]`.
fn parse_state(v: &str) -> Option<(u32, u32, Option<i64>)> {
    let mut parts = v.split(':');
    let validity = parts.next()?.parse().ok()?;
    let uid = parts.next()?.parse().ok()?;
    let polled = parts.next().and_then(|p| p.parse().ok());
    Some((validity, uid, polled))
}

async fn timed<T, E: std::fmt::Display>(
    what: &str,
    f: impl std::future::Future<Output = std::result::Result<T, E>>,
) -> Result<T> {
    match tokio::time::timeout(COMMAND_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!(
            "{what}: no answer in {}s",
            COMMAND_TIMEOUT.as_secs()
        )),
    }
}

async fn connect(imap: &Imap) -> Result<Session> {
    let s = &imap.server;
    let addr = format!("{}:{}", s.host, s.port);
    let tcp = timed("connecting", TcpStream::connect(&addr)).await?;
    let stream: Box<dyn Stream> = match s.security {
        Security::None | Security::StartTls => Box::new(tcp),
        Security::Tls => {
            let mut roots = tokio_rustls::rustls::RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            let config = tokio_rustls::rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth();
            let name = tokio_rustls::rustls::pki_types::ServerName::try_from(s.host.clone())
                .map_err(|e| format!("'{}' is not a TLS server name: {e}", s.host))?;
            let tls = tokio_rustls::TlsConnector::from(Arc::new(config));
            Box::new(timed("TLS", tls.connect(name, tcp)).await?)
        }
    };
    let mut client = async_imap::Client::new(stream);
    match timed("greeting", client.read_response()).await? {
        Some(_) => {}
        None => return Err("the server closed the connection before greeting".into()),
    }
    timed("login", async {
        client
            .login(&s.user, &s.password.0)
            .await
            .map_err(|(e, _)| e)
    })
    .await
}

/// Runs until the process stops.
pub async fn run(mail: Arc<Email>, cx: Context) {
    let Some(imap) = mail.cfg.imap.clone() else {
        return;
    };
    let mut stop = cx.stop.clone();
    let mut leader = Leader::new(
        cx.store.clone(),
        &format!("email_read:{}", mail.name),
        "mailbox reading",
    );
    let mut backoff = Duration::from_secs(1);
    loop {
        // Ready meanwhile: the mailbox is read, by the replica holding the lease.
        mail.set_reader(|r| r.standby = leader.shared() && r.last_poll.is_none());
        if let Turn::Stop = leader.turn(&mut stop).await {
            return;
        }
        mail.set_reader(|r| r.standby = false);
        let outcome = tokio::select! {
            r = read(&mail, &imap, &cx, &mut leader) => r,
            _ = stop.changed() => return,
        };
        match outcome {
            // Another replica reads now.
            Ok(()) => backoff = Duration::from_secs(1),
            Err(e) => {
                failed(&mail, &cx, &e).await;
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => return,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Records a failure: `/readyz`, metrics, and the journal when the reader starts failing.
async fn failed(mail: &Email, cx: &Context, error: &str) {
    metrics::counter!("switchboard_mailbox_errors_total", "channel" => mail.name.clone())
        .increment(1);
    let mut first = false;
    mail.set_reader(|r| {
        first = r.error.is_none();
        r.failures += 1;
        r.error = Some(error.to_string());
    });
    tracing::warn!(channel = %mail.name, error, "reading the mailbox failed; retrying");
    if first {
        journal(
            mail,
            cx,
            &format!("the mailbox reader failed and retries: {error}"),
        )
        .await;
    }
}

/// A journal entry about the reader itself (it runs no scenario).
async fn journal(mail: &Email, cx: &Context, what: &str) {
    let now = cx.clock.now_ms();
    let _ = cx
        .ingest
        .submit(NewEvent {
            kind: "mailbox".into(),
            source: mail.name.clone(),
            dedupe_key: None,
            data: json!({"channel": mail.name, "state": what}),
            meta: json!({}),
            rejected: Some(what.to_string()),
            received_at: now,
        })
        .await;
}

/// Records a successful read to the end of the mailbox.
async fn polled(mail: &Email, cx: &Context) {
    let now = cx.clock.now_ms();
    let mut recovered = None;
    mail.set_reader(|r| {
        if r.error.is_some() {
            recovered = Some((r.failures, r.error.take().unwrap_or_default()));
        }
        r.failures = 0;
        r.last_poll = Some(now);
    });
    metrics::gauge!("switchboard_mailbox_last_poll_seconds", "channel" => mail.name.clone())
        .set(now as f64 / 1000.0);
    if let Some((n, e)) = recovered {
        tracing::info!(channel = %mail.name, failures = n, "reading the mailbox again");
        journal(
            mail,
            cx,
            &format!("the mailbox reader reads again after {n} failed attempts (last: {e})"),
        )
        .await;
    }
}

/// One connection: log in, read what is new, wait for more; returns when another replica
/// took the lease, or with the error that ended the connection.
async fn read(mail: &Email, imap: &Imap, cx: &Context, leader: &mut Leader) -> Result<()> {
    let mut session = connect(imap).await?;
    let selected = timed("select", session.select(&imap.mailbox)).await?;
    let validity = selected.uid_validity.unwrap_or(0);
    let uid_next = selected.uid_next.unwrap_or(1);
    let mut last = start_position(mail, cx, &mut session, validity, uid_next).await?;
    let idle = timed("capabilities", session.capabilities())
        .await?
        .has_str("IDLE");
    // With replicas the lease is renewed between waits shorter than it.
    let wait = if leader.shared() {
        imap.poll.min(cx.store.lease() / 2)
    } else {
        imap.poll
    };
    let mut stop = cx.stop.clone();
    loop {
        let lease = leader.shared().then(|| format!("email_read:{}", mail.name));
        last = read_new(mail, cx, &mut session, validity, last, lease.as_deref()).await?;
        polled(mail, cx).await;
        // The lease was lost and taken again meanwhile: another replica may have read on.
        if let Turn::Stop | Turn::Lead { fresh: true } = leader.turn(&mut stop).await {
            return Ok(());
        }
        session = if idle {
            wait_idle(session, wait).await?
        } else {
            tokio::time::sleep(wait).await;
            timed("noop", session.noop()).await?;
            session
        };
    }
}

/// Waits in IDLE until the server reports a change or `wait` passes.
async fn wait_idle(session: Session, wait: Duration) -> Result<Session> {
    let mut handle = session.idle();
    timed("idle", handle.init()).await?;
    let (done, _interrupt) = handle.wait_with_timeout(wait);
    match done.await {
        Ok(IdleResponse::NewData(_) | IdleResponse::Timeout | IdleResponse::ManualInterrupt) => {}
        Err(e) => return Err(format!("idle: {e}")),
    }
    timed("idle done", handle.done()).await
}

/// The last UID whose events are stored: the stored one; at the first start, the newest
/// message (older mail is not new); after the mailbox was rebuilt (its UIDVALIDITY changed),
/// just before the messages that arrived since a day before the last stored poll.
async fn start_position(
    mail: &Email,
    cx: &Context,
    session: &mut Session,
    validity: u32,
    uid_next: u32,
) -> Result<u32> {
    let key = state_key(mail);
    let stored = cx
        .store
        .setting(&key)
        .await
        .map_err(|e| format!("reading the stored UID: {e}"))?
        .as_deref()
        .and_then(parse_state);
    let last = match stored {
        Some((v, uid, _)) if v == validity => return Ok(uid),
        None => {
            journal(
                mail,
                cx,
                &format!("reading mail that arrives from now on (UID {uid_next} on); older mail is left alone"),
            )
            .await;
            uid_next.saturating_sub(1)
        }
        Some((old, _, polled)) => {
            // From a day before the last read stored (the mail of a longer outage too).
            let since = polled
                .or(mail.reader_state().last_poll)
                .unwrap_or(cx.clock.now_ms())
                - 86_400_000;
            let date = chrono::DateTime::from_timestamp_millis(since)
                .unwrap_or_default()
                .format("%d-%b-%Y");
            let uids = timed("search", session.uid_search(format!("SINCE {date}"))).await?;
            let first = uids.iter().min().copied().unwrap_or(uid_next);
            journal(
                mail,
                cx,
                &format!("the mailbox was rebuilt (UIDVALIDITY {old} → {validity}): reading again from {date} (UID {first} on); messages already handled are recognised by Message-ID"),
            )
            .await;
            first.saturating_sub(1)
        }
    };
    save(mail, cx, validity, last).await?;
    Ok(last)
}

async fn save(mail: &Email, cx: &Context, validity: u32, uid: u32) -> Result<()> {
    cx.store
        .put_setting(
            &state_key(mail),
            &format!("{validity}:{uid}:{}", cx.clock.now_ms()),
        )
        .await
        .map_err(|e| format!("storing the last UID: {e}"))
}

/// Largest message read whole; a larger one is journaled with its headers only.
const MESSAGE_MAX: u32 = 25 * 1024 * 1024;

/// The body of message `uid` (only it: a server may slip other FETCH responses in, such as a
/// flag someone changed in their mail client); `None` if it is gone.
async fn fetch_one(session: &mut Session, uid: u32, what: &str) -> Result<Option<Vec<u8>>> {
    let wanted = uid;
    let items: Vec<Vec<u8>> = timed("fetch", async {
        let stream = session.uid_fetch(uid.to_string(), what).await?;
        stream
            .try_filter_map(|f| async move {
                Ok((f.uid == Some(wanted))
                    .then(|| f.body().or(f.header()).map(<[u8]>::to_vec))
                    .flatten())
            })
            .try_collect()
            .await
    })
    .await?;
    Ok(items.into_iter().next())
}

/// Each message's size, by UID.
async fn sizes(session: &mut Session, uids: &[u32]) -> Result<Vec<(u32, u32)>> {
    let set = uids
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let wanted: std::collections::HashSet<u32> = uids.iter().copied().collect();
    let wanted = &wanted;
    timed("fetch sizes", async {
        let stream = session.uid_fetch(&set, "(UID RFC822.SIZE)").await?;
        stream
            .try_filter_map(|f| async move {
                Ok(f.uid
                    .filter(|u| wanted.contains(u))
                    .map(|u| (u, f.size.unwrap_or(0))))
            })
            .try_collect()
            .await
    })
    .await
}

/// Reads every message after `last`, oldest first, one at a time; returns the new last UID.
/// With replicas the lease is renewed between messages, and reading stops if it was lost.
async fn read_new(
    mail: &Email,
    cx: &Context,
    session: &mut Session,
    validity: u32,
    mut last: u32,
    lease: Option<&str>,
) -> Result<u32> {
    let found = timed(
        "search",
        session.uid_search(format!("UID {}:*", last.saturating_add(1))),
    )
    .await?;
    // `n:*` names the newest message even when it is older than n.
    let mut uids: Vec<u32> = found.into_iter().filter(|u| *u > last).collect();
    uids.sort_unstable();
    for batch in uids.chunks(BATCH) {
        let mut batch_sizes = sizes(session, batch).await?;
        batch_sizes.sort_unstable();
        for (uid, size) in batch_sizes {
            let seen = Seen { validity, uid };
            if size > MESSAGE_MAX {
                let head = fetch_one(session, uid, "(UID BODY.PEEK[HEADER])").await?;
                store_too_large(mail, cx, head.as_deref().unwrap_or_default(), size, seen).await?;
            } else if let Some(raw) = fetch_one(session, uid, "(UID BODY.PEEK[])").await? {
                store_message(mail, cx, &raw, seen).await?;
            }
            metrics::counter!("switchboard_mailbox_messages_total", "channel" => mail.name.clone())
                .increment(1);
            last = uid;
            save(mail, cx, validity, last).await?;
            if let Some(name) = lease {
                if !cx.store.hold_lease(name).await.unwrap_or(false) {
                    return Err("the mailbox lease went to another replica".into());
                }
            }
        }
    }
    Ok(last)
}

/// A message over [`MESSAGE_MAX`]: journaled with its sender and subject, not read.
async fn store_too_large(
    mail: &Email,
    cx: &Context,
    head: &[u8],
    size: u32,
    seen: Seen,
) -> Result<()> {
    let parsed = super::parse::parse(head).ok();
    let from = parsed
        .as_ref()
        .and_then(|m| m.from.as_ref())
        .map(|f| f.address.clone());
    let subject = parsed.as_ref().map(|m| m.subject.clone());
    let ev = NewEvent {
        kind: "message".into(),
        source: mail.name.clone(),
        dedupe_key: Some(format!(
            "email:{}:uid:{}:{}",
            mail.name, seen.validity, seen.uid
        )),
        data: json!({"from": {"address": from}, "subject": subject, "size": size, "uid": seen.uid}),
        meta: json!({"uid": seen.uid, "uidvalidity": seen.validity}),
        rejected: Some(format!(
            "a message of {size} bytes, over the {MESSAGE_MAX} read: left in the mailbox"
        )),
        received_at: cx.clock.now_ms(),
    };
    submit(cx, ev, seen).await
}

/// Stores one message's events; waits while the gateway is busy.
async fn store_message(mail: &Email, cx: &Context, raw: &[u8], seen: Seen) -> Result<()> {
    let now = cx.clock.now_ms();
    let evs = events(mail, cx.store.as_ref(), raw, seen, now)
        .await
        .map_err(|e| format!("matching UID {} to a run: {e}", seen.uid))?;
    for ev in evs {
        submit(cx, ev, seen).await?;
    }
    Ok(())
}

/// Stores one event; waits while the gateway is busy.
async fn submit(cx: &Context, ev: NewEvent, seen: Seen) -> Result<()> {
    let mut pause = Duration::from_millis(100);
    loop {
        match cx.ingest.submit(ev.clone()).await {
            Ok(
                IngestOutcome::Accepted(_)
                | IngestOutcome::Duplicate(_)
                | IngestOutcome::Rejected(_),
            ) => return Ok(()),
            Err(SubmitError::Busy) => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            Err(SubmitError::Unavailable(e)) => {
                return Err(format!("storing UID {}: {e}", seen.uid))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stored_position_reads_back() {
        assert_eq!(parse_state("17:42"), Some((17, 42, None)));
        assert_eq!(parse_state("17:42:1700"), Some((17, 42, Some(1700))));
        assert_eq!(parse_state("x"), None);
        assert_eq!(parse_state("1:"), None);
    }
}
