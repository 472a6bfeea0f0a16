//! The HTTP side. The public listener serves `/hooks/{name}` and `/l/{token}`; the admin
//! listener (loopback by default) serves `/api`, the journal pages under `/ui` and
//! `/metrics`. Both answer `/healthz` and `/readyz`. One error type turns itself into a JSON
//! response in one place and never leaks internals.

mod api;
mod auth;
mod broadcast;
mod hooks;
mod links;
mod ops;
pub mod pages;
mod start;
mod ui;

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;

use crate::clock::Clock;
use crate::config::live::Live;
use crate::config::Config;
use crate::engine::ingest::Ingest;
use crate::engine::WorkSender;
use crate::links::Links;
use crate::store::Store;

#[derive(Clone)]
pub struct AppState {
    /// The config being served; a reload replaces it (read it once per request).
    pub live: Arc<Live>,
    pub reloader: crate::reload::Reloader,
    pub ingest: Ingest,
    pub clock: Clock,
    pub store: Arc<dyn Store>,
    pub engine: WorkSender,
    pub links: Arc<Links>,
    /// `None`: the admin API and pages are switched off.
    pub admin_token: Option<Arc<str>>,
    pub pages: Arc<pages::Pages>,
    pub channels: Arc<crate::channels::Channels>,
    /// How many rejected requests are journaled: a flood must not fill the disk.
    pub rejections: Arc<RejectionBudget>,
    /// Signed-in sessions of the journal pages.
    pub sessions: Arc<auth::Sessions>,
    /// Session cookies are `Secure` (the gateway is reached over https).
    pub secure_cookies: bool,
}

impl AppState {
    pub fn cfg(&self) -> Arc<Config> {
        self.live.config()
    }
}

/// Rejected requests journaled per second (after a burst); the rest are only counted in
/// `switchboard_rejected_unjournaled_total`.
pub struct RejectionBudget(governor::DefaultDirectRateLimiter);

impl RejectionBudget {
    /// Bursts of 100, then 10 a second.
    pub const BURST: u32 = 100;
    pub const PER_SECOND: u32 = 10;

    pub fn new() -> RejectionBudget {
        let quota = governor::Quota::per_second(
            std::num::NonZeroU32::new(Self::PER_SECOND).expect("non-zero"),
        )
        .allow_burst(std::num::NonZeroU32::new(Self::BURST).expect("non-zero"));
        RejectionBudget(governor::RateLimiter::direct(quota))
    }

    /// Whether this rejection is journaled.
    pub fn journal(&self) -> bool {
        self.0.check().is_ok()
    }
}

impl Default for RejectionBudget {
    fn default() -> Self {
        Self::new()
    }
}

/// Hooks, trigger links and health: what the outside world reaches.
pub fn public_router(state: AppState) -> Router {
    // Platform webhooks are mounted by their channels.
    let channels = state.channels.routes(&state.ingest, &state.clock);
    Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz_public))
        .route("/hooks/{name}", post(hooks::receive))
        .route(
            "/l/{token}",
            get(links::open).head(links::head).post(links::confirm),
        )
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route") })
        .with_state(state)
        .merge(channels)
}

/// The operator's side: admin API, journal pages, metrics.
pub fn admin_router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz_admin))
        .route("/metrics", get(ops::metrics))
        .merge(api::router(state.clone()))
        .merge(ui::router(state.clone()))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route") })
        .with_state(state)
}

/// A client-facing error: a status and a reason.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

/// A 503 for an event that was not stored, with `Retry-After`.
pub fn not_stored(e: &crate::engine::ingest::SubmitError) -> Response {
    let after = match e {
        crate::engine::ingest::SubmitError::Busy => "1",
        crate::engine::ingest::SubmitError::Unavailable(_) => "5",
    };
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(axum::http::header::RETRY_AFTER, after)],
        Json(serde_json::json!({ "error": e.to_string() })),
    )
        .into_response()
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// An internal failure: logged in full, answered without details.
    pub fn internal(e: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %e, "request failed");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the gateway could not complete the request; try again",
        )
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

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        ApiError::internal(e)
    }
}

/// `Query` whose rejections are JSON errors with the reason.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|e: QueryRejection| ApiError::bad_request(e.body_text()))
    }
}

/// `Path` whose rejections are JSON errors with the reason.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|e: PathRejection| ApiError::bad_request(e.body_text()))
    }
}

/// `Json` whose rejections are JSON errors with the reason.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        Json::<T>::from_request(req, state)
            .await
            .map(|j| ApiJson(j.0))
            .map_err(|e: JsonRejection| ApiError::bad_request(e.body_text()))
    }
}
