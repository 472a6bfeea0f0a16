//! The channel interface. The engine and the outbox speak one neutral language — `send`,
//! `edit`, `answer` (a click), `read` (a received message) — stored in outbox rows as such; each channel folder translates
//! it to its platform, says what it can do through its capabilities, and owns its routes and
//! workers. Nothing outside a channel's folder knows its platform's wire format.

pub mod discord;
pub mod email;
pub mod leader;
pub mod log;
pub mod pacing;
pub mod telegram;
pub mod whatsapp;

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::clock::Clock;
use crate::config::Config;
use crate::engine::ingest::Ingest;
use crate::lang::channel::{Channel, ChannelKinds, Section, SectionCx};
use crate::store::Store;

pub use crate::lang::capabilities::{Capabilities, ChoiceLimits, Markup};

/// A channel type: parses its section of the gateway file and starts its channels.
pub struct Kind {
    /// As written in `type = "…"`.
    pub name: &'static str,
    /// The channel a section describes; problems are reported with their positions.
    pub parse: fn(&Section, &mut dyn SectionCx) -> Option<Channel>,
    /// The live channel; `None` if `ch` is not of this type.
    pub start: StartFn,
    /// The JSON Schema of its section (see [`section_schema`]), for editors.
    pub schema: fn() -> Json,
}

/// Starts a channel by its name and configuration (with the shared store, on replicas).
pub type StartFn = fn(&str, &Channel, Option<Arc<dyn Store>>) -> Option<Arc<dyn Adapter>>;

/// The JSON Schema of a section of type `name`: an object whose `type` is `name`, with the
/// type's own `properties` (each with a description and an example) and the keys its parser
/// requires besides `type`. Other keys are refused, as [`Section::finish`] reports them.
pub fn section_schema(name: &str, description: &str, properties: Json, required: &[&str]) -> Json {
    let mut properties = match properties {
        Json::Object(p) => p,
        _ => serde_json::Map::new(),
    };
    properties.insert(
        "type".into(),
        serde_json::json!({
            "description": "The channel type.",
            "type": "string",
            "const": name,
            "examples": [name]
        }),
    );
    let required: Vec<&str> = std::iter::once("type")
        .chain(required.iter().copied())
        .collect();
    serde_json::json!({
        "description": description,
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false
    })
}

/// Every channel type. A new platform is a folder beside `telegram/` and one line here.
pub static REGISTRY: &[&Kind] = &[
    &log::KIND,
    &telegram::KIND,
    &whatsapp::KIND,
    &email::KIND,
    &discord::KIND,
    &discord::WEBHOOK_KIND,
];

/// The registry as the scenario language sees it.
pub struct Registry;

impl ChannelKinds for Registry {
    fn names(&self) -> Vec<&'static str> {
        REGISTRY.iter().map(|k| k.name).collect()
    }

    fn parse(
        &self,
        kind: &str,
        section: &Section,
        cx: &mut dyn SectionCx,
    ) -> Option<Option<Channel>> {
        REGISTRY
            .iter()
            .find(|k| k.name == kind)
            .map(|k| (k.parse)(section, cx))
    }
}

/// A callback button: its label and the data its click carries back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    pub text: String,
    pub data: String,
}

/// A URL button.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkButton {
    pub text: String,
    pub url: String,
}

/// A file sent with a message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attachment {
    pub url: String,
}

/// A new message to a conversation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OutMessage {
    /// The conversation on the channel: a chat id, a phone number, an address.
    pub to: String,
    #[serde(default)]
    pub lang: Option<String>,
    /// Rich text in the channel's markup, data already escaped.
    pub text: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub choices: Vec<Choice>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<LinkButton>,
    /// Reply-keyboard buttons: pressing one sends its text as a reply.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keyboard: Vec<String>,
    /// Files sent with the message, by URL.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
    /// Quotes this message (a reference the channel gave out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// The offer this message carries, if any (bookkeeping; not sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offer_id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scenario: Option<String>,
    /// The approved template to send instead outside the recipient's 24-hour window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_template: Option<OutTemplate>,
    /// The approved template to send instead of the free-form message, window or not
    /// (boxed: most messages have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_template: Option<Box<OutTemplate>>,
    /// E-mail: the subject line (plain text); `None`: the text's first line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// E-mail: copies and blind copies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cc: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bcc: Vec<String>,
    /// A notification: the recipient can unsubscribe in one click (e-mail).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub notification: bool,
    /// A rich card under the text (Discord), rendered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embed: Option<Box<OutEmbed>>,
    /// The same for every attempt to deliver this message, and unique to it (set by the
    /// outbox, not stored): a channel that can, names the message by it, so a repeat after a
    /// crash is recognised as the same message (e-mail: its `Message-ID`).
    #[serde(skip)]
    pub idempotency_key: Option<String>,
}

/// A rich card, rendered: its texts in the channel's markup (data escaped).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OutEmbed {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub color: Option<u32>,
    /// (name, value, inline)
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<(String, String, bool)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub footer: Option<String>,
}

/// A platform's pre-approved message template, rendered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutTemplate {
    pub name: String,
    /// Its language code; `None`: the message's language.
    #[serde(default)]
    pub language: Option<String>,
    /// Its body parameters; empty: the message's text as the one.
    #[serde(default)]
    pub params: Vec<String>,
}

/// A change to a message sent earlier: its text (if given) and its buttons are replaced
/// (no buttons: they go away).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OutEdit {
    pub to: String,
    /// The message's reference; empty while it is known only as `of_outbox`.
    #[serde(default)]
    pub message: String,
    /// The outbox row that sent the message: its reference is looked up at delivery (the
    /// row goes out first, being earlier in the same conversation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub of_outbox: Option<i64>,
    /// The new text; `None` keeps the text and changes only the buttons.
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub choices: Vec<Choice>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<LinkButton>,
}

impl OutEdit {
    /// For a channel that cannot change a sent message: the new text as a new message
    /// quoting (replying to) the old one; `None` when only the buttons change.
    pub fn as_new_message(&self) -> Option<OutMessage> {
        let text = self.text.clone()?;
        Some(OutMessage {
            to: self.to.clone(),
            text,
            reply_to: (!self.message.is_empty()).then(|| self.message.clone()),
            ..Default::default()
        })
    }
}

/// The answer to a click: a short plain text, as a popup (`alert`) or a toast.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OutAnswer {
    /// The click's id on the platform.
    pub click: String,
    pub text: String,
    #[serde(default)]
    pub alert: bool,
    /// The conversation the click came from (journal only).
    #[serde(default)]
    pub to: Option<String>,
}

/// Marks a message the bot received as read, where the platform shows that to its sender.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OutRead {
    /// The conversation the message came from (journal only).
    pub to: String,
    /// The received message's reference.
    pub message: String,
}

/// One outbound operation, as stored in an outbox row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
#[expect(
    clippy::large_enum_variant,
    reason = "one operation per outbox row, made once and delivered by reference"
)]
pub enum Outbound {
    Send(OutMessage),
    Edit(OutEdit),
    Answer(OutAnswer),
    Read(OutRead),
}

impl Outbound {
    pub fn from_json(v: &Json) -> Result<Outbound, SendError> {
        Outbound::deserialize(v).map_err(|e| SendError {
            message: format!("not a channel operation: {e}"),
            retry: false,
        })
    }

    pub fn to_json(&self) -> Json {
        serde_json::to_value(self).expect("operations serialize")
    }

    /// The conversation whose messages this one must follow; `None` for what is not a
    /// message (a click answer, a read receipt go out at once).
    pub fn conversation(&self) -> Option<&str> {
        match self {
            Outbound::Send(m) => Some(&m.to),
            Outbound::Edit(e) => Some(&e.to),
            Outbound::Answer(_) | Outbound::Read(_) => None,
        }
    }
}

/// The platform's answer to a delivered operation.
#[derive(Debug, Clone)]
pub struct Delivered {
    /// The reference of the message sent (for later edits and replies).
    pub message: Option<String>,
    /// What the journal keeps.
    pub detail: Json,
}

impl Delivered {
    /// An operation the channel cannot do and leaves out, saying why (`message`: the
    /// reference the operation was about, if any).
    pub fn skipped(channel: &str, message: Option<String>, why: &str) -> Delivered {
        Delivered {
            message,
            detail: serde_json::json!({"channel": channel, "skipped": why}),
        }
    }

    pub fn to_json(&self) -> Json {
        let mut d = self.detail.clone();
        if let (Some(m), Some(o)) = (&self.message, d.as_object_mut()) {
            o.insert("message".into(), Json::String(m.clone()));
        }
        d
    }
}

/// A failed delivery: `retry` when trying again may help.
#[derive(Debug)]
pub struct SendError {
    pub message: String,
    pub retry: bool,
}

/// What a channel's background workers get.
#[derive(Clone)]
pub struct Context {
    pub store: Arc<dyn Store>,
    pub ingest: Ingest,
    pub clock: Clock,
    pub public_url: String,
    /// The guard and HTTP client of `http` steps (no private address unless allowed), for
    /// what a channel fetches by URL: check the URL with the guard first (a literal address
    /// is not resolved, so the client alone does not see it).
    pub egress: crate::egress::Guard,
    pub http: reqwest::Client,
    pub stop: watch::Receiver<bool>,
}

/// One live channel.
#[async_trait::async_trait]
pub trait Adapter: Send + Sync {
    fn capabilities(&self) -> Capabilities;
    /// Performs one operation. Operations of one conversation come one at a time, in order.
    async fn deliver(&self, op: &Outbound) -> Result<Delivered, SendError>;
    /// `(state, ready)` for `/readyz`.
    fn status(&self) -> (String, bool);
    /// The channel's public routes (platform webhooks), state included.
    fn routes(self: Arc<Self>, _ingest: Ingest, _clock: Clock) -> Option<axum::Router> {
        None
    }
    /// Starts the channel's workers (polling, sessions).
    fn start(self: Arc<Self>, _cx: &Context) -> Vec<JoinHandle<()>> {
        Vec::new()
    }
}

/// The live side of the configured channels.
pub struct Channels {
    live: HashMap<String, Arc<dyn Adapter>>,
    /// Channels configured but off, with the reason.
    off: HashMap<String, String>,
}

impl Channels {
    /// `shared`: the store through which replicas share send pacing (none: in memory).
    pub fn new(cfg: Arc<Config>, shared: Option<Arc<dyn Store>>) -> Channels {
        let mut live: HashMap<String, Arc<dyn Adapter>> = HashMap::new();
        let mut off = HashMap::new();
        for (name, ch) in &cfg.gateway.channels {
            if let Some(why) = &ch.off {
                off.insert(name.clone(), why.clone());
                continue;
            }
            // Every parsed channel has a type in the registry.
            let started = REGISTRY
                .iter()
                .filter(|k| k.name == ch.kind)
                .find_map(|k| (k.start)(name, ch, shared.clone()));
            match started {
                Some(adapter) => {
                    live.insert(name.clone(), adapter);
                }
                None => {
                    off.insert(name.clone(), format!("no {} channel type", ch.kind));
                }
            }
        }
        Channels { live, off }
    }

    /// Each channel's state for `/readyz`: `ok`, `off (no token)`, or what is wrong.
    pub fn status(&self) -> Vec<(String, String, bool)> {
        let mut out: Vec<(String, String, bool)> = self
            .live
            .iter()
            .map(|(name, ch)| {
                let (s, ok) = ch.status();
                (name.clone(), s, ok)
            })
            .chain(
                self.off
                    .iter()
                    .map(|(name, why)| (name.clone(), format!("off ({why})"), true)),
            )
            .collect();
        out.sort();
        out
    }

    /// Every channel's public routes.
    pub fn routes(&self, ingest: &Ingest, clock: &Clock) -> axum::Router {
        let mut router = axum::Router::new();
        for ch in self.live.values() {
            if let Some(r) = ch.clone().routes(ingest.clone(), clock.clone()) {
                router = router.merge(r);
            }
        }
        router
    }

    /// Starts every channel's workers.
    pub fn start(&self, cx: &Context) -> Vec<JoinHandle<()>> {
        self.live
            .values()
            .flat_map(|ch| ch.clone().start(cx))
            .collect()
    }

    pub async fn deliver(&self, name: &str, op: &Outbound) -> Result<Delivered, SendError> {
        match self.live.get(name) {
            Some(ch) => ch.deliver(op).await,
            None => Err(SendError {
                message: match self.off.get(name) {
                    Some(why) => format!("channel '{name}' is off: {why}"),
                    None => format!("channel '{name}' is not configured"),
                },
                retry: false,
            }),
        }
    }
}

/// Channel sections parsed through the real registry, for the channel types' tests.
#[cfg(test)]
pub(crate) mod testing {
    /// The problems of a gateway file, as `line:col: message`, and what it configures.
    pub fn gateway(text: &str) -> (Vec<String>, crate::lang::model::Gateway) {
        let host = crate::lang::compile::Host {
            kinds: &super::Registry,
            env: &|_| None,
        };
        let mut problems = Vec::new();
        let (_, gw) = crate::lang::compile::gateway(
            std::path::Path::new("g.toml"),
            text,
            &host,
            &mut problems,
        );
        let all = problems
            .iter()
            .map(|e| format!("{}:{}: {}", e.pos.line, e.pos.col, e.message))
            .collect();
        (all, gw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn html_escaping_keeps_data_literal() {
        assert_eq!(
            Markup::Html.escape(r#"R&D <Ltd> "Q" 5 > 3"#),
            "R&amp;D &lt;Ltd&gt; &quot;Q&quot; 5 &gt; 3"
        );
        assert_eq!(Markup::Plain.escape("a & b"), "a & b");
    }

    #[test]
    fn each_type_parses_its_own_section_with_positions() {
        let text = "[channels.tg]\ntype = \"telegram\"\ntoken = \"1:x\"\nmode = \"hook\"\ntokn = 1\n\n[channels.fax]\ntype = \"fax\"\n\n[channels.quiet]\ntype = \"log\"\noutput = \"journal\"\n";
        let (all, gw) = testing::gateway(text);
        assert_eq!(
            all,
            vec![
                "8:8: unknown channel type 'fax' (supported: log, telegram, whatsapp, email, discord, discord-webhook)",
                "4:8: unknown mode 'hook' (polling or webhook)",
                "5:8: unknown key `tokn` in a telegram channel (it takes: api_url, limits, mode, token, webhook_secret)",
            ]
        );
        assert_eq!(gw.channels["tg"].kind(), "telegram");
        assert!(gw.channels["tg"].caps.edits);
        let quiet = gw.channels["quiet"].settings::<log::LogSettings>().unwrap();
        assert!(!quiet.stdout);
        assert!(
            gw.channels["log"]
                .settings::<log::LogSettings>()
                .unwrap()
                .stdout
        );
    }

    #[test]
    fn operations_round_trip_through_their_stored_form() {
        let op = Outbound::Send(OutMessage {
            to: "-100".into(),
            text: "hi".into(),
            choices: vec![Choice {
                text: "Take".into(),
                data: "o:1:0".into(),
            }],
            reply_to: Some("42".into()),
            ..Default::default()
        });
        let stored = op.to_json();
        assert_eq!(stored["op"], "send");
        assert_eq!(stored["reply_to"], "42");
        assert_eq!(Outbound::from_json(&stored).unwrap(), op);
        assert_eq!(op.conversation(), Some("-100"));
        let answer = Outbound::from_json(&json!({"op": "answer", "click": "c1", "text": "ok"}));
        assert_eq!(answer.unwrap().conversation(), None);
        assert!(Outbound::from_json(&json!({"method": "sendMessage"})).is_err());
    }
}
