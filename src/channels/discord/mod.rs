//! Discord: a bot with a gateway session (serenity; one per bot across replicas) or only an
//! HTTP interactions endpoint (`POST /discord/{channel}`, Ed25519-signed), sending markdown
//! messages with buttons through the REST API; and send-only webhooks (`discord-webhook`).
//! A button press is acknowledged at once with a deferred update, so nobody sees "This
//! interaction failed" while the database is slow; its answer follows as an ephemeral
//! message in the clicker's language.

pub mod config;
mod gateway;
mod inbound;
mod interactions;
pub mod outbound;
mod rest;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value as Json};
use tokio::task::JoinHandle;

pub use config::{DiscordChannel, WebhookChannel};
use rest::{Answer, Rest};

use super::pacing::{spacing, Pacer};
use super::{
    Adapter, Capabilities, ChoiceLimits, Context, Delivered, Markup, OutMessage, Outbound,
    SendError,
};
use crate::clock::Clock;
use crate::engine::ingest::Ingest;
use outbound::permanent;

/// How often one message is held for a rate limit before the outbox takes over.
const MAX_PAUSES: u32 = 5;

/// A Discord bot: markdown, up to 25 buttons (5 rows of 5; labels up to 80, ids up to 100
/// bytes), link buttons, edits, ephemeral click answers.
pub const CAPABILITIES: Capabilities = Capabilities {
    replies: true,
    choices: Some(ChoiceLimits {
        max: outbound::ROW * outbound::ROWS,
        label_max: Some(outbound::LABEL_MAX),
        data_max: outbound::CUSTOM_ID_MAX,
    }),
    keyboard: true,
    keyboard_max: Some((outbound::ROW * outbound::ROWS, outbound::LABEL_MAX)),
    links: true,
    edits: true,
    answers: true,
    attachments: true,
    templates: false,
    read_receipts: false,
    mail: false,
    embeds: true,
    markup: Markup::Markdown,
};

/// A webhook only posts: markdown text, links written into it.
pub const WEBHOOK_CAPABILITIES: Capabilities = Capabilities {
    replies: false,
    choices: None,
    keyboard: false,
    keyboard_max: None,
    links: false,
    edits: false,
    answers: false,
    attachments: true,
    templates: false,
    read_receipts: false,
    mail: false,
    embeds: true,
    markup: Markup::Markdown,
};

/// Until when every request of a bot waits (Discord's global rate limit was hit).
#[derive(Default)]
pub struct GlobalHold(Mutex<Option<tokio::time::Instant>>);

impl GlobalHold {
    async fn wait(&self) {
        let until = *self.0.lock().expect("not poisoned");
        if let Some(t) = until {
            tokio::time::sleep_until(t).await;
        }
    }

    fn hold(&self, d: Duration) {
        let until = tokio::time::Instant::now() + d;
        let mut held = self.0.lock().expect("not poisoned");
        if held.is_none_or(|t| t < until) {
            *held = Some(until);
        }
    }
}

/// Holds a conversation's sends for `retry_after` (every send, for a global limit), up to
/// [`MAX_PAUSES`] times.
#[expect(
    clippy::too_many_arguments,
    reason = "one request and where it is paced"
)]
async fn paced(
    rest: &Rest,
    pacer: &Pacer,
    global: &GlobalHold,
    pace: Duration,
    conversation: &str,
    method: Method,
    path: &str,
    body: &Json,
) -> Result<Json, SendError> {
    let mut pauses = 0;
    loop {
        pacer.wait_turn(conversation, pace).await;
        global.wait().await;
        let (answer, bucket) = rest.call(method.clone(), path, Some(body)).await;
        pacer.done(conversation);
        if let Some(d) = bucket {
            pacer.hold(conversation, pace, d);
        }
        match answer {
            Answer::Ok(v) => return Ok(v),
            Answer::Failed(e) => return Err(e),
            Answer::Limited(d, is_global) if pauses < MAX_PAUSES => {
                pauses += 1;
                if is_global {
                    global.hold(d);
                }
                pacer.hold(conversation, pace, d);
            }
            Answer::Limited(d, _) => {
                return Err(SendError {
                    message: format!(
                        "discord: still rate limited after {MAX_PAUSES} pauses (retry after {d:?})"
                    ),
                    retry: true,
                })
            }
        }
    }
}

pub struct Discord {
    pub name: String,
    pub cfg: DiscordChannel,
    rest: Rest,
    pacer: Pacer,
    status: Mutex<String>,
    /// DM channels by user id (`dc:@<user id>`).
    dms: Mutex<std::collections::HashMap<u64, u64>>,
    global: GlobalHold,
    /// Each user's Discord language, as their last press said (messages carry none).
    locales: Mutex<std::collections::HashMap<String, String>>,
    /// Presses whose acknowledgement is on its way, by interaction token: Discord refuses a
    /// follow-up before it (Unknown Webhook), so an answer waits for it.
    acking: Arc<AckMap>,
}

type AckMap = Mutex<std::collections::HashMap<String, tokio::sync::watch::Receiver<bool>>>;

/// Marks a press's acknowledgement as on its way until dropped (`Discord::acking`).
pub struct Acking {
    map: Arc<AckMap>,
    token: String,
    done: tokio::sync::watch::Sender<bool>,
}

impl Drop for Acking {
    fn drop(&mut self) {
        self.map.lock().expect("not poisoned").remove(&self.token);
        let _ = self.done.send(true);
    }
}

/// Longest an answer waits for its press's acknowledgement (Discord's own deadline).
const ACK_WAIT: Duration = Duration::from_secs(3);

impl Discord {
    pub fn new(
        name: &str,
        cfg: &DiscordChannel,
        shared: Option<Arc<dyn crate::store::Store>>,
    ) -> Discord {
        Discord {
            name: name.to_string(),
            cfg: cfg.clone(),
            rest: Rest::new(&cfg.api_url, Some(&cfg.token.0)),
            pacer: Pacer::new(&format!("dc:{name}"), cfg.per_bot, shared),
            status: Mutex::new("starting".into()),
            dms: Mutex::new(std::collections::HashMap::new()),
            global: GlobalHold::default(),
            locales: Mutex::new(std::collections::HashMap::new()),
            acking: Arc::default(),
        }
    }

    /// Marks the press with this token as being acknowledged until the guard is dropped.
    pub fn acking(&self, token: &str) -> Acking {
        let (done, rx) = tokio::sync::watch::channel(false);
        self.acking
            .lock()
            .expect("not poisoned")
            .insert(token.to_string(), rx);
        Acking {
            map: self.acking.clone(),
            token: token.to_string(),
            done,
        }
    }

    /// Waits (at most `ACK_WAIT`) while the press with this token is being acknowledged.
    async fn acknowledged(&self, token: &str) {
        let pending = self
            .acking
            .lock()
            .expect("not poisoned")
            .get(token)
            .cloned();
        if let Some(mut rx) = pending {
            let _ = tokio::time::timeout(ACK_WAIT, rx.wait_for(|done| *done)).await;
        }
    }

    /// Remembers a user's language from a press; gives it to their messages.
    pub fn locale(&self, ev: &mut crate::store::NewEvent) {
        let Some(user) = ev.data["from"]["id"].as_str().map(str::to_string) else {
            return;
        };
        let mut known = self.locales.lock().expect("not poisoned");
        match ev.data["lang"].as_str() {
            Some(l) if !l.is_empty() => {
                if known.len() > 10_000 {
                    known.clear();
                }
                known.insert(user, l.to_string());
            }
            _ => {
                if let Some(l) = known.get(&user) {
                    ev.data["lang"] = serde_json::Value::String(l.clone());
                }
            }
        }
    }

    /// The channel a conversation is: `123…` is a channel, `@123…` a direct message with that
    /// user (its channel opened once, then remembered).
    async fn channel(&self, to: &str) -> Result<u64, SendError> {
        let Some(user) = to.trim().strip_prefix('@') else {
            return outbound::channel_id(to);
        };
        let user = outbound::channel_id(user)?;
        if let Some(c) = self.dms.lock().expect("not poisoned").get(&user) {
            return Ok(*c);
        }
        let body = json!({"recipient_id": user.to_string()});
        let opened = match self
            .rest
            .call(Method::POST, "/users/@me/channels", Some(&body))
            .await
            .0
        {
            Answer::Ok(v) => v,
            Answer::Failed(e) => return Err(e),
            Answer::Limited(d, _) => {
                return Err(SendError {
                    message: format!("discord: rate limited for {d:?}"),
                    retry: true,
                })
            }
        };
        let channel = opened["id"]
            .as_str()
            .and_then(|c| c.parse::<u64>().ok())
            .ok_or_else(|| {
                permanent(format!("discord: no DM channel for user {user}: {opened}"))
            })?;
        self.dms.lock().expect("not poisoned").insert(user, channel);
        Ok(channel)
    }

    pub fn set_status(&self, s: &str) {
        *self.status.lock().expect("not poisoned") = s.to_string();
    }

    fn pace(&self) -> Duration {
        spacing(self.cfg.per_channel)
    }

    /// A deferred update: the press is acknowledged, the message stays as it is.
    pub async fn acknowledge(&self, interaction: u64, token: &str) -> Result<(), SendError> {
        let _acking = self.acking(token);
        let path = format!("/interactions/{interaction}/{token}/callback");
        match self
            .rest
            .call(Method::POST, &path, Some(&json!({"type": 6})))
            .await
            .0
        {
            Answer::Ok(_) => Ok(()),
            Answer::Failed(e) => Err(e),
            Answer::Limited(d, _) => Err(SendError {
                message: format!("discord: rate limited for {d:?}"),
                retry: true,
            }),
        }
    }

    async fn send(&self, m: &OutMessage) -> Result<Delivered, SendError> {
        let channel = self.channel(&m.to).await?;
        let body = serde_json::to_value(outbound::message(m, channel)?)
            .map_err(|e| permanent(format!("discord: {e}")))?;
        let sent = paced(
            &self.rest,
            &self.pacer,
            &self.global,
            self.pace(),
            &m.to,
            Method::POST,
            &format!("/channels/{channel}/messages"),
            &body,
        )
        .await?;
        let id = sent["id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| permanent(format!("discord: the answer names no message id: {sent}")))?;
        Ok(Delivered {
            message: Some(id.clone()),
            detail: json!({"channel": self.name, "to": m.to, "message_id": id}),
        })
    }

    async fn edit(&self, e: &super::OutEdit) -> Result<Delivered, SendError> {
        let channel = self.channel(&e.to).await?;
        let message = outbound::message_id(&e.message)?;
        let body = serde_json::to_value(outbound::edit(e)?)
            .map_err(|err| permanent(format!("discord: {err}")))?;
        paced(
            &self.rest,
            &self.pacer,
            &self.global,
            self.pace(),
            &e.to,
            Method::PATCH,
            &format!("/channels/{channel}/messages/{message}"),
            &body,
        )
        .await?;
        Ok(Delivered {
            message: Some(e.message.clone()),
            detail: json!({"channel": self.name, "to": e.to, "edited": e.message}),
        })
    }

    /// The answer to a press, as an ephemeral follow-up (the press was acknowledged when it
    /// came). A silent answer sends nothing.
    async fn answer(&self, a: &super::OutAnswer) -> Result<Delivered, SendError> {
        if a.text.is_empty() {
            return Ok(Delivered {
                message: None,
                detail: json!({"channel": self.name, "answer": "silent"}),
            });
        }
        let (app, token) = a
            .click
            .split_once(':')
            .ok_or_else(|| permanent(format!("discord: '{}' is not a press", a.click)))?;
        self.acknowledged(token).await;
        // Not a message to a conversation: only the bot's budget applies.
        let sent = paced(
            &self.rest,
            &self.pacer,
            &self.global,
            Duration::ZERO,
            &format!("answer:{token}"),
            Method::POST,
            &format!("/webhooks/{app}/{token}"),
            &json!({"content": a.text, "flags": 64, "allowed_mentions": {"parse": []}}),
        )
        .await
        .map_err(|mut e| {
            // The press's acknowledgement (the interactions endpoint's reply) may not have
            // reached Discord yet: try again in a moment.
            if e.message.contains("(code 10015)") {
                e.retry = true;
            }
            e
        })?;
        Ok(Delivered {
            message: None,
            detail: json!({"channel": self.name, "answered": sent["id"], "ephemeral": true}),
        })
    }
}

#[async_trait::async_trait]
impl Adapter for Discord {
    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
    }

    fn status(&self) -> (String, bool) {
        let s = self.status.lock().expect("not poisoned").clone();
        let ok = s.starts_with("ok");
        (s, ok)
    }

    async fn deliver(&self, op: &Outbound) -> Result<Delivered, SendError> {
        match op {
            Outbound::Send(m) => self.send(m).await,
            Outbound::Edit(e) => self.edit(e).await,
            Outbound::Answer(a) => self.answer(a).await,
            Outbound::Read(_) => Ok(Delivered::skipped(
                &self.name,
                None,
                "Discord has no read receipts",
            )),
        }
    }

    fn routes(self: Arc<Self>, ingest: Ingest, clock: Clock) -> Option<axum::Router> {
        Some(interactions::router(self, ingest, clock))
    }

    fn start(self: Arc<Self>, cx: &Context) -> Vec<JoinHandle<()>> {
        if !self.cfg.gateway {
            self.set_status("ok (interactions endpoint)");
            return Vec::new();
        }
        vec![tokio::spawn(gateway::run(self, cx.clone()))]
    }
}

/// A Discord webhook: posts only.
pub struct Webhook {
    pub name: String,
    url: String,
    rest: Rest,
    pacer: Pacer,
    global: GlobalHold,
    pace: Duration,
}

#[async_trait::async_trait]
impl Adapter for Webhook {
    fn capabilities(&self) -> Capabilities {
        WEBHOOK_CAPABILITIES
    }

    fn status(&self) -> (String, bool) {
        ("ok".into(), true)
    }

    async fn deliver(&self, op: &Outbound) -> Result<Delivered, SendError> {
        let Outbound::Send(m) = op else {
            return Ok(Delivered::skipped(&self.name, None, "a webhook only posts"));
        };
        let mut text = m.text.clone();
        for l in &m.links {
            text.push_str(&format!("\n[{}]({})", l.text, l.url));
        }
        let files: Vec<String> = m.attachments.iter().map(|a| a.url.clone()).collect();
        let mut body = json!({
            "content": outbound::content(&text, &files)?,
            "allowed_mentions": {"parse": ["users", "roles"]},
        });
        if let Some(e) = &m.embed {
            body["embeds"] = json!([serde_json::to_value(outbound::embed(e)?)
                .map_err(|err| permanent(format!("discord: {err}")))?]);
        }
        let sep = if self.url.contains('?') { '&' } else { '?' };
        let sent = paced(
            &self.rest,
            &self.pacer,
            &self.global,
            self.pace,
            "webhook",
            Method::POST,
            &format!("{}{sep}wait=true", self.url),
            &body,
        )
        .await
        // The URL holds the webhook's token: errors name the channel instead.
        .map_err(|e| SendError {
            message: e
                .message
                .replace(&self.url, &format!("<webhook of '{}'>", self.name)),
            retry: e.retry,
        })?;
        let id = sent["id"].as_str().map(str::to_string);
        Ok(Delivered {
            message: id.clone(),
            detail: json!({"channel": self.name, "message_id": id}),
        })
    }
}

/// The `discord` channel type.
pub static KIND: super::Kind = super::Kind {
    name: "discord",
    parse: config::parse,
    schema: config::schema,
    start: |name, ch, shared| {
        let cfg = ch.settings::<DiscordChannel>()?;
        Some(Arc::new(Discord::new(name, cfg, shared)))
    },
};

/// The `discord-webhook` channel type.
pub static WEBHOOK_KIND: super::Kind = super::Kind {
    name: "discord-webhook",
    parse: config::parse_webhook,
    schema: config::webhook_schema,
    start: |name, ch, shared| {
        let cfg = ch.settings::<WebhookChannel>()?;
        Some(Arc::new(Webhook {
            name: name.to_string(),
            url: cfg.url.0.clone(),
            rest: Rest::new("https://discord.com", None),
            pacer: Pacer::new(&format!("dcw:{name}"), cfg.per_webhook, shared),
            global: GlobalHold::default(),
            pace: spacing(cfg.per_webhook),
        }))
    },
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::NewEvent;

    fn event(user: &str, lang: Option<&str>) -> NewEvent {
        NewEvent {
            kind: "message".into(),
            source: "dc".into(),
            dedupe_key: None,
            data: json!({"from": {"id": user}, "lang": lang}),
            meta: json!({}),
            rejected: None,
            received_at: 0,
        }
    }

    #[test]
    fn a_users_messages_take_the_language_their_last_press_had() {
        let (_, gw) = crate::channels::testing::gateway(
            "[channels.dc]\ntype = \"discord\"\ntoken = \"t\"\napplication_id = \"1\"\n",
        );
        let dc = Discord::new("dc", gw.channels["dc"].settings().unwrap(), None);
        let mut before = event("7", None);
        dc.locale(&mut before);
        assert_eq!(before.data["lang"], Json::Null);
        dc.locale(&mut event("7", Some("pl")));
        let (mut after, mut other) = (event("7", None), event("8", None));
        dc.locale(&mut after);
        dc.locale(&mut other);
        assert_eq!(
            (after.data["lang"].as_str(), other.data["lang"].as_str()),
            (Some("pl"), None)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_global_limit_holds_every_request() {
        let hold = GlobalHold::default();
        let start = tokio::time::Instant::now();
        hold.hold(Duration::from_secs(2));
        hold.hold(Duration::from_secs(1));
        hold.wait().await;
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }
}
