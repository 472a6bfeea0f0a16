//! The admin token: a bearer header for the API; for the journal pages, a sign-in with the
//! token that opens a session (a random id in a cookie, kept server-side, expiring), and
//! actions that must come from the pages' own origin.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use subtle::ConstantTimeEq;

use super::{ApiError, AppState};

pub const COOKIE: &str = "switchboard_admin";
/// How long a session lasts.
pub const SESSION_MS: i64 = 12 * 3600 * 1000;

/// Open sessions of the journal pages: id → expiry (ms).
#[derive(Default)]
pub struct Sessions(std::sync::Mutex<std::collections::HashMap<String, i64>>);

impl Sessions {
    /// A new session's id.
    pub fn open(&self, now: i64) -> String {
        use rand::RngCore;
        let mut id = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut id);
        let id = hex::encode(id);
        let mut all = self.0.lock().expect("not poisoned");
        all.retain(|_, until| *until > now);
        all.insert(id.clone(), now + SESSION_MS);
        id
    }

    fn valid(&self, id: &str, now: i64) -> bool {
        self.0
            .lock()
            .expect("not poisoned")
            .iter()
            .any(|(k, until)| *until > now && bool::from(k.as_bytes().ct_eq(id.as_bytes())))
    }
}

fn matches(st: &AppState, given: &str) -> bool {
    st.admin_token
        .as_deref()
        .is_some_and(|t| bool::from(t.as_bytes().ct_eq(given.as_bytes())))
}

/// Whether the request carries an open session in the `switchboard_admin` cookie.
pub fn cookie_ok(st: &AppState, headers: &HeaderMap) -> bool {
    if st.admin_token.is_none() {
        return false;
    }
    let now = st.clock.now_ms();
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .any(|(k, v)| k == COOKIE && st.sessions.valid(v, now))
}

/// Whether a form was posted from the pages themselves: its `Origin` (or, without one,
/// its `Referer`) names the host the request was sent to.
pub fn same_origin(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let from = headers
        .get(header::ORIGIN)
        .or_else(|| headers.get(header::REFERER))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| reqwest::Url::parse(v).ok());
    from.is_some_and(|u| {
        let authority = match (u.host_str(), u.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            _ => return false,
        };
        authority.eq_ignore_ascii_case(host)
    })
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
