//! Outbound channels. Each one delivers a rendered message from the outbox; the engine only
//! ever sees channel names and JSON requests.

pub mod log;

use serde_json::Value as Json;

use crate::config::Channel;

/// A failed delivery: `retry` when trying again may help.
#[derive(Debug)]
pub struct SendError {
    pub message: String,
    pub retry: bool,
}

pub async fn deliver(channel: &Channel, name: &str, request: &Json) -> Result<Json, SendError> {
    match channel {
        Channel::Log { stdout } => log::deliver(name, *stdout, request),
    }
}
