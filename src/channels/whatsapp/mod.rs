//! WhatsApp through the Cloud API (Graph API over HTTPS): the channel operations as message
//! payloads — text in WhatsApp's formatting, reply buttons or a list for choices, files by
//! URL, an approved template where the step names one or outside the 24-hour window, read
//! receipts — paced per number and per customer, and Meta's signed webhooks turned into
//! `message`, `click` and `status` events.

pub mod config;
mod inbound;
mod media;
pub mod outbound;
mod webhook;
mod window;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde_json::{json, Value as Json};
use tokio::task::JoinHandle;

pub use config::WhatsAppChannel;
pub use inbound::normalize;
pub use webhook::signature_ok;

use super::pacing::{spacing, Pacer};
use super::{
    Adapter, Capabilities, ChoiceLimits, Context, Delivered, Markup, OutMessage, OutTemplate,
    Outbound, SendError,
};
use crate::clock::Clock;
use crate::engine::ingest::Ingest;
use outbound::{permanent, recipient, Refusal};
use window::{Open, Window};

/// How often one message is paused for a throughput limit before the outbox takes over.
const MAX_PAUSES: u32 = 5;

/// WhatsApp: its own formatting, up to 3 reply buttons with titles of 20 characters (longer
/// lists of reply texts go as a list message), files by URL. No edits, no click answers,
/// no URL buttons (links are written into the text).
pub const CAPABILITIES: Capabilities = Capabilities {
    replies: true,
    choices: Some(ChoiceLimits {
        max: outbound::MAX_BUTTONS,
        label_max: Some(outbound::BUTTON_TITLE_MAX),
        data_max: 256,
    }),
    // Up to 3 short ones are reply buttons, more go as a list.
    keyboard: true,
    keyboard_max: Some((outbound::MAX_ROWS, outbound::ROW_TITLE_MAX)),
    links: false,
    edits: false,
    answers: false,
    attachments: true,
    templates: true,
    read_receipts: true,
    mail: false,
    embeds: false,
    markup: Markup::WhatsApp,
};

pub struct WhatsApp {
    pub name: String,
    pub cfg: WhatsAppChannel,
    http: reqwest::Client,
    pacer: Pacer,
    window: Window,
    /// The gateway's public URL, for links to media (set when the channel starts).
    public_url: OnceLock<String>,
    status: Mutex<String>,
}

impl WhatsApp {
    pub fn new(
        name: &str,
        cfg: &WhatsAppChannel,
        shared: Option<Arc<dyn crate::store::Store>>,
    ) -> WhatsApp {
        WhatsApp {
            name: name.to_string(),
            cfg: cfg.clone(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap_or_default(),
            pacer: Pacer::new(&format!("wa:{name}"), cfg.per_number, shared),
            window: Window::new(name),
            public_url: OnceLock::new(),
            status: Mutex::new("starting".into()),
        }
    }

    fn messages_url(&self) -> String {
        format!(
            "{}/{}/{}/messages",
            self.cfg.api_url.as_str().trim_end_matches('/'),
            self.cfg.api_version,
            self.cfg.phone_number_id
        )
    }

    /// One payload to Meta; the sent message's wamid.
    async fn post(&self, payload: &Json) -> Result<String, Refusal> {
        let body = self.call(payload).await?;
        body["messages"][0]["id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| {
                Refusal::Failed(permanent(format!(
                    "whatsapp: the answer names no message id: {body}"
                )))
            })
    }

    /// One payload to the messages endpoint; Meta's answer.
    async fn call(&self, payload: &Json) -> Result<Json, Refusal> {
        let sent = self
            .http
            .post(self.messages_url())
            .bearer_auth(&self.cfg.token.0)
            .json(payload)
            .send()
            .await;
        let resp = sent.map_err(|e| {
            Refusal::Failed(SendError {
                message: format!("whatsapp: {}", e.without_url()),
                retry: true,
            })
        })?;
        let status = resp.status().as_u16();
        let body: Json = resp.json().await.unwrap_or(Json::Null);
        if (200..300).contains(&status) {
            return Ok(body);
        }
        Err(outbound::refusal(
            status,
            &body,
            spacing(self.cfg.per_customer),
        ))
    }

    /// One message to a customer at their pace and the number's; a throughput refusal holds
    /// the customer and tries again.
    async fn paced(&self, to: &str, payload: &Json) -> Result<String, SendError> {
        let pace = spacing(self.cfg.per_customer);
        let mut pauses = 0;
        loop {
            self.pacer.wait_turn(to, pace).await;
            let sent = self.post(payload).await;
            self.pacer.done(to);
            match sent {
                Ok(wamid) => return Ok(wamid),
                Err(Refusal::Pause { code, for_ }) => {
                    metrics::counter!("switchboard_platform_errors_total",
                        "channel" => self.name.clone(), "code" => code.to_string())
                    .increment(1);
                    if pauses >= MAX_PAUSES {
                        return Err(SendError {
                            message: format!(
                                "whatsapp: still over a throughput limit ({code}) after {MAX_PAUSES} pauses"
                            ),
                            retry: true,
                        });
                    }
                    pauses += 1;
                    self.pacer.hold(to, pace, for_);
                }
                Err(Refusal::Failed(e)) => {
                    metrics::counter!("switchboard_platform_errors_total",
                        "channel" => self.name.clone(), "code" => if e.retry { "retry" } else { "permanent" })
                    .increment(1);
                    return Err(e);
                }
            }
        }
    }

    /// Marks a customer's message read (the blue ticks). Not a message: no pacing.
    async fn mark_read(&self, message: &str) -> Result<Delivered, SendError> {
        match self.call(&outbound::read(message)).await {
            Ok(answer) => Ok(Delivered {
                message: None,
                detail: json!({"channel": self.name, "read": message, "answer": answer}),
            }),
            Err(Refusal::Failed(e)) => Err(e),
            Err(Refusal::Pause { code, .. }) => Err(SendError {
                message: format!("whatsapp: over a throughput limit ({code})"),
                retry: true,
            }),
        }
    }

    /// A new message: the step's approved template if it names one; else free-form inside
    /// the customer's window, and a template outside it.
    async fn send(&self, m: &OutMessage) -> Result<Delivered, SendError> {
        let to = recipient(&m.to)?;
        if let Some(t) = &m.approved_template {
            return self
                .deliver_payload(&to, m, outbound::template(&to, t, m), "template")
                .await;
        }
        let open = self.window.open(&to).await.map_err(|e| SendError {
            message: format!("whatsapp: {e}"),
            retry: true,
        })?;
        // The step's template, else the channel's.
        let template = m.window_template.clone().or_else(|| {
            self.cfg.window_template.as_ref().map(|t| OutTemplate {
                name: t.name.clone(),
                language: Some(t.language.clone()),
                params: Vec::new(),
            })
        });
        let (payload, sent_as) = match (open, template) {
            (Open::Yes, _) => (outbound::message(&to, m)?, "message"),
            (Open::No(_), Some(t)) => (outbound::template(&to, &t, m), "template"),
            (Open::No(last), None) => {
                let last = match last {
                    Some(t) => format!("last wrote at {}", crate::clock::rfc3339(t)),
                    None => "has never written to this number".to_string(),
                };
                return Err(permanent(format!(
                    "outside WhatsApp's 24-hour window: +{to} {last}, and neither the step nor channel '{}' has a window_template to send instead",
                    self.name
                )));
            }
        };
        self.deliver_payload(&to, m, payload, sent_as).await
    }

    /// The message's payload, then its files.
    async fn deliver_payload(
        &self,
        to: &str,
        m: &OutMessage,
        payload: Json,
        sent_as: &str,
    ) -> Result<Delivered, SendError> {
        let wamid = self.paced(to, &payload).await?;
        let mut files = Vec::new();
        for a in &m.attachments {
            // The text went out: trying the whole message again would repeat it.
            let file = self
                .paced(to, &outbound::media(to, &a.url))
                .await
                .map_err(|e| {
                    permanent(format!(
                        "the message was sent; attachment {} failed: {}",
                        a.url, e.message
                    ))
                })?;
            files.push(file);
        }
        Ok(Delivered {
            message: Some(wamid.clone()),
            detail: json!({"channel": self.name, "to": format!("+{to}"), "wamid": wamid,
                "sent_as": sent_as, "attachments": files}),
        })
    }

    /// A signed link through which a media file a customer sent can be downloaded.
    fn media_link(&self, media_id: &str, now: i64) -> Option<String> {
        let base = self.public_url.get()?;
        Some(media::link(
            base,
            &self.name,
            self.cfg.app_secret.0.as_bytes(),
            media_id,
            now + media::LINK_LIFETIME_MS,
        ))
    }

    pub fn set_status(&self, s: &str) {
        *self.status.lock().expect("not poisoned") = s.to_string();
    }
}

#[async_trait::async_trait]
impl Adapter for WhatsApp {
    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
    }

    fn status(&self) -> (String, bool) {
        let s = self.status.lock().expect("not poisoned").clone();
        let ok = s == "ok";
        (s, ok)
    }

    async fn deliver(&self, op: &Outbound) -> Result<Delivered, SendError> {
        match op {
            Outbound::Send(m) => self.send(m).await,
            Outbound::Read(r) => self.mark_read(&r.message).await,
            // WhatsApp cannot answer a press or change a sent message's buttons: an old
            // button pressed later is refused by the engine, as on any channel.
            Outbound::Answer(_) => Ok(Delivered::skipped(
                &self.name,
                None,
                "WhatsApp has no click answers",
            )),
            // A new text goes as a new message quoting the old one.
            Outbound::Edit(e) => match e.as_new_message() {
                Some(m) => self.send(&m).await,
                None => Ok(Delivered::skipped(
                    &self.name,
                    Some(e.message.clone()),
                    "WhatsApp cannot change a sent message's buttons",
                )),
            },
        }
    }

    fn routes(self: Arc<Self>, ingest: Ingest, clock: Clock) -> Option<axum::Router> {
        Some(webhook::router(self, ingest, clock))
    }

    fn start(self: Arc<Self>, cx: &Context) -> Vec<JoinHandle<()>> {
        self.window.attach(cx.store.clone(), cx.clock.clone());
        let _ = self.public_url.set(cx.public_url.clone());
        self.set_status("ok");
        Vec::new()
    }
}

/// The `whatsapp` channel type.
pub static KIND: super::Kind = super::Kind {
    name: "whatsapp",
    parse: config::parse,
    schema: config::schema,
    start: |name, ch, shared| {
        let cfg = ch.settings::<WhatsAppChannel>()?;
        Some(Arc::new(WhatsApp::new(name, cfg, shared)))
    },
};
