//! E-mail: SMTP out through lettre (pooled, TLS, auth), IMAP in through async-imap (IDLE where
//! the server has it, polling otherwise). Messages go as HTML with a plain-text alternative;
//! choices are signed links whose click is confirmed on a page (mail scanners open links,
//! they do not press buttons); replies find their run through `In-Reply-To`, `References`
//! or the token in a `reply+<token>@` address; bounces and unsubscribes put an address on the
//! channel's suppression list.

pub mod config;
mod inbound;
pub mod outbound;
pub mod parse;
mod reader;
mod routes;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::transport::smtp::PoolConfig;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use serde_json::{json, Value as Json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use config::EmailChannel;
use config::Security;

use super::pacing::{spacing, Pacer};
use super::{
    Adapter, Capabilities, ChoiceLimits, Context, Delivered, Markup, OutMessage, Outbound,
    SendError,
};
use crate::clock::Clock;
use crate::engine::ingest::Ingest;
use crate::store::Store;
use outbound::{Envelope, File};

/// Largest file attached to a message, and the longest its download may take.
const ATTACHMENT_MAX: usize = 10 * 1024 * 1024;
const ATTACHMENT_TIMEOUT: Duration = Duration::from_secs(60);

/// E-mail: HTML, choices as signed links (a click is confirmed on a page, which shows the
/// click's answer), link buttons, files, no edits (a closed offer is followed by a short
/// message in the same thread).
pub const CAPABILITIES: Capabilities = Capabilities {
    replies: true,
    choices: Some(ChoiceLimits {
        max: 20,
        label_max: Some(200),
        data_max: 256,
    }),
    keyboard: true,
    keyboard_max: None,
    links: true,
    edits: false,
    answers: true,
    attachments: true,
    templates: false,
    read_receipts: false,
    mail: true,
    embeds: false,
    markup: Markup::Html,
};

/// What the mailbox reader last did, for `/readyz`.
#[derive(Debug, Clone, Default)]
pub struct ReaderState {
    /// The last error, while the reader is failing.
    pub error: Option<String>,
    /// When the mailbox was last read to its end (ms).
    pub last_poll: Option<i64>,
    /// Errors since the last successful poll.
    pub failures: u32,
    /// Waiting while another replica reads the mailbox.
    pub standby: bool,
}

pub struct Email {
    pub name: String,
    pub cfg: EmailChannel,
    smtp: AsyncSmtpTransport<Tokio1Executor>,
    pacer: Pacer,
    /// One send at a time to each recipient domain, at its pace.
    domains: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Set when the channel starts.
    store: OnceLock<Arc<dyn Store>>,
    http: OnceLock<(crate::egress::Guard, reqwest::Client)>,
    public_url: OnceLock<String>,
    /// Signs click and unsubscribe links.
    key: OnceLock<Vec<u8>>,
    /// Click pages waiting for the click's answer, by click id.
    answers: Mutex<HashMap<String, oneshot::Sender<String>>>,
    reader: Mutex<ReaderState>,
}

fn smtp_transport(cfg: &EmailChannel) -> AsyncSmtpTransport<Tokio1Executor> {
    let s = &cfg.smtp;
    let tls = || TlsParameters::new(s.host.clone());
    let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&s.host)
        .port(s.port)
        .timeout(Some(Duration::from_secs(30)))
        .pool_config(PoolConfig::new().max_size(4));
    b = match (s.security, tls()) {
        (Security::None, _) => b.tls(Tls::None),
        (Security::Tls, Ok(p)) => b.tls(Tls::Wrapper(p)),
        (Security::StartTls, Ok(p)) => b.tls(Tls::Required(p)),
        // A host name TLS cannot use: every send fails with the reason (journaled).
        (_, Err(e)) => {
            tracing::warn!(host = %s.host, error = %e, "SMTP TLS parameters");
            b.tls(Tls::None).port(0)
        }
    };
    if !s.user.is_empty() {
        b = b.credentials(Credentials::new(s.user.clone(), s.password.0.clone()));
    }
    b.build()
}

impl Email {
    pub fn new(name: &str, cfg: &EmailChannel, shared: Option<Arc<dyn Store>>) -> Email {
        Email {
            name: name.to_string(),
            cfg: cfg.clone(),
            smtp: smtp_transport(cfg),
            pacer: Pacer::new(&format!("mail:{name}"), cfg.per_mailbox, shared),
            domains: Mutex::new(HashMap::new()),
            store: OnceLock::new(),
            http: OnceLock::new(),
            public_url: OnceLock::new(),
            key: OnceLock::new(),
            answers: Mutex::new(HashMap::new()),
            reader: Mutex::new(ReaderState::default()),
        }
    }

    fn not_started() -> SendError {
        SendError {
            message: "email: the channel has not started yet".into(),
            retry: true,
        }
    }

    fn store(&self) -> Result<&Arc<dyn Store>, SendError> {
        self.store.get().ok_or_else(Email::not_started)
    }

    pub fn reader_state(&self) -> ReaderState {
        self.reader.lock().expect("not poisoned").clone()
    }

    fn set_reader(&self, f: impl FnOnce(&mut ReaderState)) {
        f(&mut self.reader.lock().expect("not poisoned"));
    }

    /// A page waits for the answer to its click.
    fn await_answer(&self, click: &str) -> oneshot::Receiver<String> {
        let (tx, rx) = oneshot::channel();
        let mut answers = self.answers.lock().expect("not poisoned");
        // Pages that gave up leave closed senders behind.
        answers.retain(|_, tx| !tx.is_closed());
        answers.insert(click.to_string(), tx);
        rx
    }

    /// The address on the suppression list, with why; `None`: it may get mail.
    async fn suppression(&self, address: &str) -> Result<Option<String>, SendError> {
        let found = self
            .store()?
            .suppressed(&self.name, &address.to_ascii_lowercase())
            .await
            .map_err(|e| SendError {
                message: format!("email: the suppression list cannot be read: {e}"),
                retry: true,
            })?;
        Ok(found.map(|(reason, at)| format!("{reason} (since {})", crate::clock::rfc3339(at))))
    }

    /// A file by URL, through the same guard as `http` steps.
    async fn fetch(&self, url: &str) -> Result<File, SendError> {
        let (guard, http) = self.http.get().ok_or_else(Email::not_started)?;
        let failed = |why: String, retry| SendError {
            message: format!("attachment {url}: {why}"),
            retry,
        };
        let parsed = reqwest::Url::parse(url).map_err(|e| failed(e.to_string(), false))?;
        guard
            .check_url(&parsed)
            .map_err(|e| failed(e.to_string(), false))?;
        let resp = http
            .get(parsed)
            .timeout(ATTACHMENT_TIMEOUT)
            .send()
            .await
            .map_err(|e| failed(e.without_url().to_string(), true))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(failed(format!("HTTP {status}"), status.is_server_error()));
        }
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/octet-stream")
            .to_string();
        let name = reqwest::Url::parse(url)
            .ok()
            .and_then(|u| u.path_segments()?.next_back().map(str::to_string))
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "attachment".into());
        let mut bytes = Vec::new();
        let mut resp = resp;
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| failed(e.without_url().to_string(), true))?
        {
            bytes.extend_from_slice(&chunk);
            if bytes.len() > ATTACHMENT_MAX {
                return Err(failed(format!("larger than {ATTACHMENT_MAX} bytes"), false));
            }
        }
        Ok(File {
            name,
            content_type,
            bytes,
        })
    }

    async fn send(&self, m: &OutMessage) -> Result<Delivered, SendError> {
        let to = outbound::mailbox(&m.to)?;
        let address = to.email.to_string().to_ascii_lowercase();
        if let Some(why) = self.suppression(&address).await? {
            return Ok(Delivered {
                message: None,
                detail: json!({"channel": self.name, "to": address,
                    "not_sent": format!("{address} is on the suppression list: {why}")}),
            });
        }
        // Copies to suppressed addresses are left out; the message still goes.
        let mut m = m.clone();
        let mut left_out = Vec::new();
        for list in [&mut m.cc, &mut m.bcc] {
            let mut kept = Vec::new();
            for a in list.drain(..) {
                let addr = outbound::mailbox(&a)?.email.to_string();
                match self.suppression(&addr).await? {
                    Some(why) => left_out.push(json!({"address": addr, "why": why})),
                    None => kept.push(a),
                }
            }
            *list = kept;
        }
        let key = self.key.get().ok_or_else(Email::not_started)?;
        // Every attempt at one message has one Message-ID: a repeat after a crash between
        // the server's "250" and its recording is recognised by mail clients.
        let token = match &m.idempotency_key {
            Some(k) => {
                use sha2::Digest;
                hex::encode(
                    &sha2::Sha256::new()
                        .chain_update(key)
                        .chain_update(k)
                        .finalize()[..12],
                )
            }
            None => hex::encode(rand::random::<[u8; 12]>()),
        };
        let id = outbound::message_id(&self.cfg, &token);
        let base = self.public_url.get().ok_or_else(Email::not_started)?;
        let choice_links = m
            .choices
            .iter()
            .map(|c| routes::click_url(base, &self.name, key, &m.to, &id, c))
            .collect();
        let unsubscribe = m
            .notification
            .then(|| routes::unsubscribe_url(base, &self.name, key, &address));
        let mut files = Vec::with_capacity(m.attachments.len());
        for a in &m.attachments {
            files.push(self.fetch(&a.url).await?);
        }
        let env = Envelope {
            token: &token,
            choice_links,
            unsubscribe,
            files,
        };
        let message = outbound::compose(&self.cfg, &m, env)?;
        let domain = to.email.domain().to_ascii_lowercase();
        let answer = self.paced(&domain, message).await?;
        Ok(Delivered {
            message: Some(id.clone()),
            detail: json!({"channel": self.name, "to": address, "message_id": id,
                "subject": outbound::subject(&m), "cc": m.cc, "bcc": m.bcc,
                "left_out": left_out, "smtp": answer}),
        })
    }

    /// One message through SMTP at the mailbox's pace and its recipient domain's.
    async fn paced(&self, domain: &str, message: lettre::Message) -> Result<Json, SendError> {
        let lock = self
            .domains
            .lock()
            .expect("not poisoned")
            .entry(domain.to_string())
            .or_default()
            .clone();
        let _turn = lock.lock().await;
        self.pacer
            .wait_turn(domain, spacing(self.cfg.per_domain))
            .await;
        let sent = self.smtp.send(message).await;
        self.pacer.done(domain);
        match sent {
            Ok(r) => Ok(
                json!({"code": r.code().to_string(), "message": r.message().collect::<Vec<_>>().join(" ")}),
            ),
            Err(e) => {
                let code = e.status().map(|c| c.to_string());
                metrics::counter!("switchboard_platform_errors_total",
                    "channel" => self.name.clone(), "code" => code.clone().unwrap_or_else(|| "connection".into()))
                .increment(1);
                // 5xx: the server refuses this message for good; 4xx, a dropped connection or
                // a timeout: later may work.
                Err(SendError {
                    message: format!("smtp: {e}"),
                    retry: !e.is_permanent() && !e.is_client(),
                })
            }
        }
    }

    /// A click page's answer.
    fn answer(&self, click: &str, text: &str) -> Delivered {
        let waiting = self.answers.lock().expect("not poisoned").remove(click);
        let shown = waiting.is_some_and(|tx| tx.send(text.to_string()).is_ok());
        Delivered {
            message: None,
            detail: json!({"channel": self.name, "click": click, "shown": shown}),
        }
    }
}

#[async_trait::async_trait]
impl Adapter for Email {
    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
    }

    fn status(&self) -> (String, bool) {
        if self.cfg.imap.is_none() {
            return ("ok (sending only)".into(), true);
        }
        let r = self.reader_state();
        let last = r
            .last_poll
            .map(crate::clock::rfc3339)
            .unwrap_or_else(|| "never".into());
        match r.error {
            None if r.last_poll.is_some() => ("ok".into(), true),
            None if r.standby => ("ok (another replica reads the mailbox)".into(), true),
            None => ("starting".into(), false),
            Some(e) => (
                format!(
                    "mailbox reader failing ({} errors, retrying; last successful poll: {last}): {e}",
                    r.failures
                ),
                false,
            ),
        }
    }

    async fn deliver(&self, op: &Outbound) -> Result<Delivered, SendError> {
        match op {
            Outbound::Send(m) => self.send(m).await,
            Outbound::Answer(a) => Ok(self.answer(&a.click, &a.text)),
            Outbound::Read(_) => Ok(Delivered::skipped(
                &self.name,
                None,
                "e-mail has no read receipts",
            )),
            // A new text goes as a reply in the message's thread.
            Outbound::Edit(e) => match e.as_new_message() {
                Some(m) => self.send(&m).await,
                None => Ok(Delivered::skipped(
                    &self.name,
                    Some(e.message.clone()),
                    "a sent e-mail cannot be changed",
                )),
            },
        }
    }

    fn routes(self: Arc<Self>, ingest: Ingest, clock: Clock) -> Option<axum::Router> {
        Some(routes::router(self, ingest, clock))
    }

    fn start(self: Arc<Self>, cx: &Context) -> Vec<JoinHandle<()>> {
        let _ = self.store.set(cx.store.clone());
        let _ = self.http.set((cx.egress.clone(), cx.http.clone()));
        let _ = self
            .public_url
            .set(cx.public_url.trim_end_matches('/').to_string());
        let me = self.clone();
        let cx = cx.clone();
        vec![tokio::spawn(async move {
            // The link key is shared by replicas through the database.
            let fresh = hex::encode(rand::random::<[u8; 32]>());
            let mut wait = Duration::from_millis(200);
            loop {
                match cx
                    .store
                    .setting_or_put(&format!("email_key:{}", me.name), &fresh)
                    .await
                {
                    Ok(k) => {
                        let _ = me.key.set(k.into_bytes());
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(channel = %me.name, error = %e, "reading the link key failed");
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(Duration::from_secs(10));
                    }
                }
            }
            if me.cfg.imap.is_some() {
                reader::run(me, cx).await;
            }
        })]
    }
}

/// The `email` channel type.
pub static KIND: super::Kind = super::Kind {
    name: "email",
    parse: config::parse,
    schema: config::schema,
    start: |name, ch, shared| {
        let cfg = ch.settings::<EmailChannel>()?;
        Some(Arc::new(Email::new(name, cfg, shared)))
    },
};
