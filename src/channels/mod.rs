//! Channels: one folder or file per platform, each turning inbound updates into events and
//! delivering rendered messages from the outbox. The engine sees channel names and JSON.

pub mod log;
pub mod telegram;

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value as Json;

use crate::config::{Channel, Config};

/// A failed delivery: `retry` when trying again may help.
#[derive(Debug)]
pub struct SendError {
    pub message: String,
    pub retry: bool,
}

/// The live side of the configured channels.
pub struct Channels {
    cfg: Arc<Config>,
    telegram: HashMap<String, Arc<telegram::Telegram>>,
}

impl Channels {
    /// `shared`: the store through which replicas share send pacing (none: in memory).
    pub fn new(cfg: Arc<Config>, shared: Option<Arc<dyn crate::store::Store>>) -> Channels {
        let telegram = cfg
            .gateway
            .channels
            .iter()
            .filter_map(|(name, ch)| match ch {
                // A channel without a token stays off (the examples ship one like that).
                Channel::Telegram(t) if !t.token.0.is_empty() => Some((
                    name.clone(),
                    Arc::new(telegram::Telegram::new(name, t, shared.clone())),
                )),
                _ => None,
            })
            .collect();
        Channels { cfg, telegram }
    }

    /// Each channel's state for `/readyz`: `ok`, `off (no token)`, or what is wrong.
    pub fn status(&self) -> Vec<(String, String, bool)> {
        let mut out: Vec<(String, String, bool)> = self
            .cfg
            .gateway
            .channels
            .iter()
            .map(|(name, ch)| match ch {
                Channel::Log { .. } => (name.clone(), "ok".to_string(), true),
                Channel::Telegram(_) => match self.telegram.get(name) {
                    Some(t) => {
                        let s = t.status();
                        let ok = s == "ok";
                        (name.clone(), s, ok)
                    }
                    None => (name.clone(), "off (no token)".to_string(), true),
                },
            })
            .collect();
        out.sort();
        out
    }

    pub fn telegram(&self) -> impl Iterator<Item = &Arc<telegram::Telegram>> {
        self.telegram.values()
    }

    pub fn telegram_named(&self, name: &str) -> Option<&Arc<telegram::Telegram>> {
        self.telegram.get(name)
    }

    pub async fn deliver(&self, name: &str, request: &Json) -> Result<Json, SendError> {
        match self.cfg.gateway.channels.get(name) {
            Some(Channel::Log { stdout }) => log::deliver(name, *stdout, request),
            Some(Channel::Telegram(_)) => match self.telegram.get(name) {
                Some(t) => t.send(request).await,
                None => Err(SendError {
                    message: format!("channel '{name}' is off: it has no token"),
                    retry: false,
                }),
            },
            None => Err(SendError {
                message: format!("channel '{name}' is not configured"),
                retry: false,
            }),
        }
    }
}
