//! `POST /telegram/{channel}`: Telegram's webhook, mounted by a channel in webhook mode. The
//! secret-token header is checked in constant time before the body is read as an update;
//! the update is stored before Telegram gets its 200.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use subtle::ConstantTimeEq;
use teloxide::types::Update;

use super::{store_updates, Telegram};
use crate::clock::Clock;
use crate::engine::ingest::Ingest;
use crate::http::ApiError;

#[derive(Clone)]
struct Hook {
    tg: Arc<Telegram>,
    ingest: Ingest,
    clock: Clock,
}

pub fn router(tg: Arc<Telegram>, ingest: Ingest, clock: Clock) -> axum::Router {
    let path = format!("/telegram/{}", tg.name);
    axum::Router::new()
        .route(&path, post(receive))
        .with_state(Hook { tg, ingest, clock })
}

fn secret_ok(tg: &Telegram, given: Option<&str>) -> bool {
    match (&tg.cfg.webhook_secret, given) {
        (Some(want), Some(got)) => bool::from(want.0.as_bytes().ct_eq(got.as_bytes())),
        _ => false,
    }
}

async fn receive(State(h): State<Hook>, headers: HeaderMap, body: Bytes) -> Response {
    let given = headers
        .get("x-telegram-bot-api-secret-token")
        .and_then(|v| v.to_str().ok());
    if !secret_ok(&h.tg, given) {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "wrong or missing X-Telegram-Bot-Api-Secret-Token",
        )
        .into_response();
    }
    let update: Update = match serde_json::from_slice(&body) {
        Ok(u) => u,
        Err(e) => {
            return ApiError::bad_request(format!("not a Telegram update: {e}")).into_response()
        }
    };
    if store_updates(
        &h.tg,
        &h.ingest,
        std::slice::from_ref(&update),
        h.clock.now_ms(),
    )
    .await
    {
        StatusCode::OK.into_response()
    } else {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "could not store the update; Telegram will retry",
        )
        .into_response()
    }
}
