//! `POST /discord/{channel}`: Discord's HTTP interactions endpoint. Each request is checked
//! against the application's Ed25519 public key on the raw bytes (a bad or missing signature
//! gets a 401, as Discord requires); a PING gets a PONG; a button press is stored, then
//! acknowledged with a deferred update — within Discord's 3 s even while the database is
//! slow — and its answer follows as an ephemeral message.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Json;
use serde_json::json;
use serenity::interactions_endpoint::Verifier;
use serenity::model::application::Interaction;

use super::{inbound, Discord};
use crate::clock::Clock;
use crate::engine::ingest::Ingest;
use crate::store::IngestOutcome;

/// How long a press waits to be stored before it is acknowledged anyway (storing goes on).
const STORE_WAIT: Duration = Duration::from_secs(2);

type St = (Arc<Discord>, Ingest, Clock);

pub fn router(dc: Arc<Discord>, ingest: Ingest, clock: Clock) -> axum::Router {
    let path = format!("/discord/{}", dc.name);
    axum::Router::new()
        .route(&path, post(interaction))
        .with_state((dc, ingest, clock))
}

fn refuse(status: StatusCode, why: &str) -> Response {
    (status, Json(json!({"error": why}))).into_response()
}

/// Keeps a press marked as being acknowledged for `ACK_SETTLE` after the handler returns.
struct SettleOnDrop(Option<super::Acking>);

impl Drop for SettleOnDrop {
    fn drop(&mut self) {
        if let Some(acking) = self.0.take() {
            tokio::spawn(async move {
                tokio::time::sleep(ACK_SETTLE).await;
                drop(acking);
            });
        }
    }
}

/// How long after the reply an answer to the press waits (the reply's way to Discord).
const ACK_SETTLE: Duration = Duration::from_millis(100);

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name)?.to_str().ok()
}

async fn interaction(
    State((dc, ingest, clock)): State<St>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(key) = dc.cfg.public_key else {
        return refuse(
            StatusCode::NOT_FOUND,
            "this channel has no public_key: no interactions endpoint",
        );
    };
    let (Some(sig), Some(ts)) = (
        header(&headers, "x-signature-ed25519"),
        header(&headers, "x-signature-timestamp"),
    ) else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "missing X-Signature-Ed25519 or X-Signature-Timestamp",
        );
    };
    let Ok(verifier) = Verifier::try_new(key) else {
        return refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the configured public_key is not an Ed25519 key",
        );
    };
    if verifier.verify(sig, ts, &body).is_err() {
        return refuse(StatusCode::UNAUTHORIZED, "invalid request signature");
    }
    let parsed: Interaction = match serde_json::from_slice(&body) {
        Ok(i) => i,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, &format!("not an interaction: {e}")),
    };
    let press = match parsed {
        Interaction::Ping(_) => return Json(json!({"type": 1})).into_response(),
        Interaction::Component(c) => c,
        // Commands and modals are not ours: a quiet acknowledgement.
        _ => return Json(json!({"type": 6})).into_response(),
    };
    let mut ev = inbound::press(&dc.name, &press, clock.now_ms());
    dc.locale(&mut ev);
    // The reply below is the acknowledgement: an answer waits for it, and for a moment
    // after it leaves, while it reaches Discord.
    let acking = dc.acking(&press.token);
    let _settled = SettleOnDrop(Some(acking));
    let stored = tokio::spawn(async move { ingest.submit(ev).await });
    match tokio::time::timeout(STORE_WAIT, stored).await {
        Ok(Ok(Ok(
            IngestOutcome::Accepted(_) | IngestOutcome::Duplicate(_) | IngestOutcome::Rejected(_),
        ))) => {}
        // Stored in a moment, or it says why not on its own: the press is acknowledged.
        Err(_) => tracing::warn!(channel = %dc.name, "a press is acknowledged before it is stored"),
        Ok(Ok(Err(e))) => return Json(
            json!({"type": 4, "data": {"content": format!("Please try again: {e}"), "flags": 64}}),
        )
        .into_response(),
        Ok(Err(e)) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
    Json(json!({"type": 6})).into_response()
}
