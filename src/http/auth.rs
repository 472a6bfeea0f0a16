//! The admin token: a bearer header for the API, a cookie for the journal pages.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use subtle::ConstantTimeEq;

use super::{ApiError, AppState};

pub const COOKIE: &str = "switchboard_admin";

fn matches(st: &AppState, given: &str) -> bool {
    st.admin_token
        .as_deref()
        .is_some_and(|t| bool::from(t.as_bytes().ct_eq(given.as_bytes())))
}

/// Whether the request carries the admin token in the `switchboard_admin` cookie.
pub fn cookie_ok(st: &AppState, headers: &HeaderMap) -> bool {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .any(|(k, v)| k == COOKIE && matches(st, v))
}

pub fn token_ok(st: &AppState, given: &str) -> bool {
    matches(st, given)
}

/// Middleware for `/api`: `Authorization: Bearer <SWITCHBOARD_ADMIN_TOKEN>`.
pub async fn require_bearer(
    State(st): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, m);
    if st.admin_token.is_none() {
        return Err(unauthorized(
            "the admin API is switched off: start the gateway with SWITCHBOARD_ADMIN_TOKEN set",
        ));
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| unauthorized("missing Authorization: Bearer token"))?;
    let token = given
        .strip_prefix("Bearer ")
        .ok_or_else(|| unauthorized("the Authorization header must be `Bearer <token>`"))?;
    if !matches(&st, token.trim()) {
        return Err(unauthorized("wrong admin token"));
    }
    Ok(next.run(req).await)
}
