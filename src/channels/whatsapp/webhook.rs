//! `GET/POST /whatsapp/{channel}`: Meta's subscription handshake and its webhook deliveries.
//! A delivery's `X-Hub-Signature-256` is checked on the raw bytes before they are read; its
//! messages and statuses are stored (once per wamid) before Meta gets its 200.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hmac::{Hmac, Mac};
use serde_json::{json, Value as Json};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::inbound::normalize;
use super::WhatsApp;
use crate::clock::Clock;
use crate::engine::ingest::Ingest;
use crate::http::{ApiError, RejectionBudget};
use crate::store::NewEvent;

/// How much of a rejected body the journal keeps.
const EXCERPT: usize = 2048;

#[derive(Clone)]
pub(super) struct Hook {
    pub(super) wa: Arc<WhatsApp>,
    ingest: Ingest,
    pub(super) clock: Clock,
    rejections: Arc<RejectionBudget>,
}

pub fn router(wa: Arc<WhatsApp>, ingest: Ingest, clock: Clock) -> axum::Router {
    let path = format!("/whatsapp/{}", wa.name);
    axum::Router::new()
        .route(&path, get(verify).post(receive))
        .route(&format!("{path}/media/{{id}}"), get(super::media::download))
        .with_state(Hook {
            wa,
            ingest,
            clock,
            rejections: Arc::new(RejectionBudget::new()),
        })
}

/// The subscription handshake: the challenge back when the verify token matches.
async fn verify(State(h): State<Hook>, Query(q): Query<HashMap<String, String>>) -> Response {
    let want = h.wa.cfg.verify_token.0.as_bytes();
    let given = q.get("hub.verify_token").map(String::as_bytes);
    let ok = q.get("hub.mode").map(String::as_str) == Some("subscribe")
        && given.is_some_and(|g| bool::from(want.ct_eq(g)));
    match (ok, q.get("hub.challenge")) {
        (true, Some(challenge)) => challenge.clone().into_response(),
        (true, None) => ApiError::bad_request("no hub.challenge to echo").into_response(),
        (false, _) => ApiError::new(
            StatusCode::FORBIDDEN,
            "wrong hub.verify_token or hub.mode is not subscribe",
        )
        .into_response(),
    }
}

/// Whether `header` is `sha256=<hex HMAC-SHA256 of body under secret>` (compared in
/// constant time by the `hmac` crate).
pub fn signature_ok(secret: &[u8], header: Option<&str>, body: &[u8]) -> bool {
    let Some(sig) = header
        .and_then(|h| h.trim().strip_prefix("sha256="))
        .and_then(|hex_sig| hex::decode(hex_sig).ok())
    else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

#[tracing::instrument(skip_all, fields(channel = %h.wa.name))]
async fn receive(State(h): State<Hook>, headers: HeaderMap, body: Bytes) -> Response {
    let sig = headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok());
    if !signature_ok(h.wa.cfg.app_secret.0.as_bytes(), sig, &body) {
        let reason = match sig {
            None => "missing X-Hub-Signature-256",
            Some(_) => "wrong X-Hub-Signature-256",
        };
        return reject(&h, StatusCode::UNAUTHORIZED, reason.into(), &body).await;
    }
    let now = h.clock.now_ms();
    let delivery = match serde_json::from_slice::<Json>(&body)
        .map_err(|e| format!("not JSON: {e}"))
        .and_then(|v| normalize(&h.wa.name, &v, now, &|id| h.wa.media_link(id, now)))
    {
        Ok(d) => d,
        Err(reason) => return reject(&h, StatusCode::BAD_REQUEST, reason, &body).await,
    };
    // The window opens before the messages are stored: a reply they start may go at once.
    h.wa.window.opened(&delivery.writers, now).await;
    let submits = delivery.events.into_iter().map(|ev| h.ingest.submit(ev));
    let results = futures::future::join_all(submits).await;
    // What was stored stays stored; Meta delivers the whole again and the rest dedupes.
    match results.into_iter().find_map(Result::err) {
        Some(e) => {
            tracing::warn!(error = %e, "storing a WhatsApp delivery failed");
            crate::http::not_stored(&e)
        }
        None => StatusCode::OK.into_response(),
    }
}

/// A refused delivery: journaled (within the budget) and answered with the reason.
async fn reject(h: &Hook, status: StatusCode, reason: String, body: &[u8]) -> Response {
    tracing::warn!(%reason, "WhatsApp delivery rejected");
    if h.rejections.journal() {
        let excerpt = String::from_utf8_lossy(&body[..body.len().min(EXCERPT)]).to_string();
        let ev = NewEvent {
            kind: "webhook".into(),
            source: h.wa.name.clone(),
            dedupe_key: None,
            data: json!({"body_excerpt": excerpt, "body_bytes": body.len()}),
            meta: json!({"status": status.as_u16(), "channel": "whatsapp"}),
            rejected: Some(reason.clone()),
            received_at: h.clock.now_ms(),
        };
        if let Err(e) = h.ingest.submit(ev).await {
            tracing::warn!(error = %e, "journaling a rejected delivery failed");
        }
    } else {
        metrics::counter!("switchboard_rejected_unjournaled_total", "hook" => h.wa.name.clone())
            .increment(1);
    }
    ApiError::new(status, reason).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hmac_sha256_of_the_raw_body() {
        let mut mac = Hmac::<Sha256>::new_from_slice(b"s3cret").unwrap();
        mac.update(b"{}");
        let good = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        assert!(signature_ok(b"s3cret", Some(&good), b"{}"));
        assert!(!signature_ok(b"s3cret", Some(&good), b"{ }"));
        assert!(!signature_ok(b"other", Some(&good), b"{}"));
        assert!(!signature_ok(b"s3cret", None, b"{}"));
        assert!(!signature_ok(b"s3cret", Some("sha256=zz"), b"{}"));
        assert!(!signature_ok(b"s3cret", Some(&good[7..]), b"{}"));
    }
}
