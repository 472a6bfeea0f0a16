//! Health, readiness and Prometheus metrics.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;

use super::AppState;

pub async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready when the database answers and every channel is connected.
/// On the public listener a refused reload is only mentioned: its errors name files and
/// keys of the config.
pub async fn readyz_public(State(st): State<AppState>) -> impl IntoResponse {
    readyz(st, false).await
}

/// On the admin listener a refused reload comes with its errors.
pub async fn readyz_admin(State(st): State<AppState>) -> impl IntoResponse {
    readyz(st, true).await
}

/// The config being served, and the last refused reload (readiness does not depend on it:
/// the running config goes on serving).
fn config_status(st: &AppState, detailed: bool) -> serde_json::Value {
    let loaded_at = chrono::DateTime::from_timestamp_millis(st.live.loaded_at())
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    match st.live.refused() {
        None => json!({"status": "ok", "loaded_at": loaded_at}),
        Some(r) => {
            let at = chrono::DateTime::from_timestamp_millis(r.at_ms)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
            let mut v = json!({
                "status": "reload refused",
                "loaded_at": loaded_at,
                "refused_at": at,
                "error_count": r.errors.len(),
            });
            if detailed {
                v["errors"] = json!(r.errors);
            }
            v
        }
    }
}

async fn readyz(st: AppState, detailed: bool) -> impl IntoResponse {
    // The reason stays in the log: `/readyz` is public, and database errors can name
    // hosts, users and tables.
    let db = match st.store.ping().await {
        Ok(()) => "ok".to_string(),
        Err(e) => {
            tracing::warn!(error = %e, "readiness: the database is unreachable");
            "unreachable".to_string()
        }
    };
    let mut channels_ok = true;
    let channels: serde_json::Map<String, serde_json::Value> = st
        .channels
        .status()
        .into_iter()
        .map(|(name, status, ok)| {
            channels_ok &= ok;
            (name, json!(status))
        })
        .collect();
    let engine = if st.engine.load().engine_down() {
        "stopped"
    } else {
        "ok"
    };
    let ok = db == "ok" && channels_ok && engine == "ok";
    (
        if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        Json(
            json!({"ready": ok, "database": db, "engine": engine, "channels": channels,
                    "config": config_status(&st, detailed)}),
        ),
    )
}

/// Prometheus text format. Gauges of stored state are read at scrape time.
pub async fn metrics(State(st): State<AppState>) -> impl IntoResponse {
    if let Ok(c) = st.store.counts().await {
        for (status, n) in &c.runs_by_status {
            metrics::gauge!("switchboard_runs", "status" => status.clone()).set(*n as f64);
        }
        let pending = c.outbox_by_status.get("pending").copied().unwrap_or(0);
        metrics::gauge!("switchboard_outbox_depth").set(pending as f64);
        metrics::gauge!("switchboard_timers").set(c.timers as f64);
        metrics::gauge!("switchboard_waits").set(c.waits as f64);
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::telemetry::handle().render(),
    )
}
