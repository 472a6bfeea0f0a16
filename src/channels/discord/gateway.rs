//! The gateway session (serenity): one per bot across replicas (the shared leader). Each
//! message and button press is stored (deduplicated by its id) before it is handled; a press
//! is acknowledged at once with a deferred update. serenity resumes a dropped session
//! itself; a session that ends is started again with backoff.

use std::sync::Arc;
use std::time::Duration;

use serenity::all::{
    Client, Context as SerenityContext, EventHandler, GatewayIntents, HttpBuilder, Interaction,
    Message, Ready, ResumedEvent,
};

use super::{inbound, Discord};
use crate::channels::leader::{Leader, Turn};
use crate::channels::Context;
use crate::engine::ingest::SubmitError;
use crate::store::NewEvent;

/// The real API, where serenity's own rate limiter is used.
const DISCORD: &str = "https://discord.com";

struct Handler {
    dc: Arc<Discord>,
    cx: Context,
}

impl Handler {
    /// Stores an event, waiting while the gateway is busy or the database away: the platform
    /// sends a gateway event once.
    async fn store(&self, ev: NewEvent) {
        let mut pause = Duration::from_millis(100);
        for _ in 0..40 {
            match self.cx.ingest.submit(ev.clone()).await {
                Ok(_) => return,
                Err(SubmitError::Busy) | Err(SubmitError::Unavailable(_)) => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
            }
        }
        tracing::error!(channel = %self.dc.name, "a Discord event could not be stored");
    }
}

#[serenity::async_trait]
impl EventHandler for Handler {
    async fn ready(&self, _ctx: SerenityContext, r: Ready) {
        tracing::info!(channel = %self.dc.name, user = %r.user.name, "Discord session ready");
        self.dc.set_status("ok");
    }

    async fn resume(&self, _ctx: SerenityContext, _r: ResumedEvent) {
        self.dc.set_status("ok");
    }

    async fn message(&self, _ctx: SerenityContext, m: Message) {
        if let Some(mut ev) = inbound::message(&self.dc.name, &m, self.cx.clock.now_ms()) {
            self.dc.locale(&mut ev);
            self.store(ev).await;
        }
    }

    async fn interaction_create(&self, _ctx: SerenityContext, i: Interaction) {
        let Interaction::Component(press) = i else {
            return;
        };
        let mut ev = inbound::press(&self.dc.name, &press, self.cx.clock.now_ms());
        self.dc.locale(&mut ev);
        // Acknowledged before it is stored: Discord wants an answer within 3 s.
        let (acked, ()) = tokio::join!(
            self.dc.acknowledge(press.id.get(), &press.token),
            self.store(ev)
        );
        if let Err(e) = acked {
            tracing::warn!(channel = %self.dc.name, error = %e.message, "acknowledging a press failed");
        }
    }
}

async fn client(dc: &Arc<Discord>, cx: &Context) -> Result<Client, String> {
    let cfg = &dc.cfg;
    let mut http = HttpBuilder::new(&cfg.token.0);
    if cfg.api_url != DISCORD {
        // serenity's rate limiter ignores a proxy: our pacing keeps to the limits instead.
        http = http.proxy(cfg.api_url.clone()).ratelimiter_disabled(true);
    }
    if cfg.application_id > 0 {
        http = http.application_id(cfg.application_id.into());
    }
    let http = http.build();
    let gateway = http
        .get_gateway()
        .await
        .map_err(|e| format!("GET /gateway: {e}"))?;
    let intents = GatewayIntents::GUILDS
        | GatewayIntents::GUILD_MESSAGES
        | GatewayIntents::DIRECT_MESSAGES
        | GatewayIntents::MESSAGE_CONTENT;
    let client = serenity::all::ClientBuilder::new_with_http(http, intents)
        .event_handler(Handler {
            dc: dc.clone(),
            cx: cx.clone(),
        })
        .await
        .map_err(|e| format!("starting the session: {e}"))?;
    *client.ws_url.lock().await = gateway.url;
    Ok(client)
}

/// Runs until the process stops.
pub async fn run(dc: Arc<Discord>, cx: Context) {
    let mut stop = cx.stop.clone();
    let lease = format!("discord_gateway:{}", dc.name);
    let mut leader = Leader::new(cx.store.clone(), &lease, "the Discord session");
    let mut backoff = Duration::from_secs(1);
    loop {
        dc.set_status(if leader.shared() {
            "ok (another replica holds the session)"
        } else {
            "connecting"
        });
        if let Turn::Stop = leader.turn(&mut stop).await {
            return;
        }
        dc.set_status("connecting");
        let mut session = match client(&dc, &cx).await {
            Ok(c) => c,
            Err(e) => {
                dc.set_status(&format!("gateway failed (retrying): {e}"));
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(60));
                continue;
            }
        };
        let shards = session.shard_manager.clone();
        let mut running = tokio::spawn(async move { session.start().await });
        let renew = (cx.store.lease() / 3).max(Duration::from_millis(200));
        loop {
            tokio::select! {
                ended = &mut running => {
                    let why = match ended {
                        Ok(Ok(())) => "the session ended".to_string(),
                        Ok(Err(e)) => e.to_string(),
                        Err(e) => e.to_string(),
                    };
                    dc.set_status(&format!("gateway failed (retrying): {why}"));
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.changed() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                    break;
                }
                _ = stop.changed() => {
                    shards.shutdown_all().await;
                    return;
                }
                _ = tokio::time::sleep(renew), if leader.shared() => {
                    // Another replica took the lease (this one was cut off): it runs the
                    // session now.
                    if !cx.store.hold_lease(&lease).await.unwrap_or(false) {
                        shards.shutdown_all().await;
                        break;
                    }
                    backoff = Duration::from_secs(1);
                }
            }
        }
    }
}
