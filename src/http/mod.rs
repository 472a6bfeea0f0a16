//! The HTTP side: `/hooks/{name}` for inbound webhooks and `/healthz`. One error type turns
//! itself into a JSON response in one place and never leaks internals.

mod hooks;

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::clock::Clock;
use crate::config::Config;
use crate::engine::ingest::Ingest;

#[derive(Clone)]
pub struct AppState {
    pub cfg: Arc<Config>,
    pub ingest: Ingest,
    pub clock: Clock,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/hooks/{name}", post(hooks::receive))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route") })
        .with_state(state)
}

/// A client-facing error: a status and a reason.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response()
    }
}
