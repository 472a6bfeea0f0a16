//! `POST /telegram/{channel}`: Telegram's webhook. The secret-token header is checked before
//! the body is read as an update; the update is stored before Telegram gets its 200.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use teloxide::types::Update;

use super::{ApiError, AppState};
use crate::channels::telegram::{store_updates, WebhookCheck};

pub async fn receive(
    State(st): State<AppState>,
    Path(channel): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(tg) = st
        .channels
        .telegram_named(&channel)
        .filter(|t| t.cfg.webhook)
    else {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no telegram webhook '{channel}'"),
        )
        .into_response();
    };
    let given = headers
        .get("x-telegram-bot-api-secret-token")
        .and_then(|v| v.to_str().ok());
    if !tg.secret_ok(given) {
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
        tg,
        &st.ingest,
        std::slice::from_ref(&update),
        st.clock.now_ms(),
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
