//! `/l/{token}`: trigger links. A valid click stores a `link` event for the linked scenario
//! and redirects or shows "Done"; HEAD requests, link-preview fetchers and mail scanners
//! never fire a link, and a link made with `confirm=true` fires only from its page's button.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Form, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use serde_json::json;

use super::AppState;
use crate::links::{is_unfurler, Claims, LinkError};
use crate::store::{IngestOutcome, NewEvent};

type Params = BTreeMap<String, String>;

fn user_agent(h: &HeaderMap) -> &str {
    h.get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// The claims of a usable link, or the page that says why it is not.
#[expect(
    clippy::result_large_err,
    reason = "the error is the response itself, made once per request"
)]
fn check(st: &AppState, token: &str, lang: &str) -> Result<Claims, Response> {
    let page = |status, title, text| st.pages.message(status, lang, title, text);
    match st.links.open(token) {
        Ok(c) => match st.cfg().scenario(&c.s) {
            Some(sc) if sc.enabled() => Ok(c),
            _ => Err(page(
                StatusCode::NOT_FOUND,
                "link-invalid-title",
                "link-invalid",
            )),
        },
        Err(LinkError::Expired) => {
            Err(page(StatusCode::GONE, "link-expired-title", "link-expired"))
        }
        Err(LinkError::Invalid) => Err(page(
            StatusCode::NOT_FOUND,
            "link-invalid-title",
            "link-invalid",
        )),
    }
}

pub async fn head() -> StatusCode {
    StatusCode::OK
}

#[tracing::instrument(skip_all)]
pub async fn open(
    State(st): State<AppState>,
    Path(token): Path<String>,
    Query(params): Query<Params>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let lang = st
        .pages
        .lang(&headers, params.get("lang").map(String::as_str));
    let claims = match check(&st, &token, &lang) {
        Ok(c) => c,
        Err(page) => return page,
    };
    if is_unfurler(user_agent(&headers)) {
        return st
            .pages
            .message(StatusCode::OK, &lang, "link-confirm-title", "link-preview");
    }
    if claims.c {
        return st.pages.render(
            StatusCode::OK,
            "message.html",
            minijinja::context! {
                lang, title => "link-confirm-title", text => "link-confirm",
                confirm => format!("/l/{token}"), hidden => params,
            },
        );
    }
    fire(&st, claims, params, peer, &headers, &lang).await
}

/// The confirmation page's button.
#[tracing::instrument(skip_all)]
pub async fn confirm(
    State(st): State<AppState>,
    Path(token): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(params): Form<Params>,
) -> Response {
    let lang = st
        .pages
        .lang(&headers, params.get("lang").map(String::as_str));
    match check(&st, &token, &lang) {
        Ok(claims) => fire(&st, claims, params, peer, &headers, &lang).await,
        Err(page) => page,
    }
}

async fn fire(
    st: &AppState,
    claims: Claims,
    params: Params,
    peer: SocketAddr,
    headers: &HeaderMap,
    lang: &str,
) -> Response {
    let now = st.clock.now_ms();
    let mut data = claims.v.clone();
    data.insert("subject".into(), json!(claims.u));
    data.insert(
        "link".into(),
        json!({
            "time": crate::clock::rfc3339(now),
            "ip": peer.ip().to_string(),
            "forwarded_for": headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()),
            "user_agent": user_agent(headers),
            "query": params,
            "language": lang,
        }),
    );
    let ev = NewEvent {
        kind: "link".into(),
        source: claims.s.clone(),
        dedupe_key: claims.o.then(|| format!("link:{}", claims.n)),
        data: serde_json::Value::Object(data),
        // A used single-use link is remembered until it expires, whatever the retention.
        meta: json!({"nonce": claims.n, "once": claims.o, "keep_until": claims.e}),
        rejected: None,
        received_at: now,
    };
    match st.ingest.submit(ev).await {
        Ok(IngestOutcome::Accepted(_)) => match claims
            .r
            .filter(|r| r.starts_with("https://") || r.starts_with("http://"))
        {
            Some(to) => Redirect::to(&to).into_response(),
            None => st
                .pages
                .message(StatusCode::OK, lang, "link-done-title", "link-done"),
        },
        Ok(_) => st
            .pages
            .message(StatusCode::GONE, lang, "link-used-title", "link-used"),
        Err(e) => super::not_stored(&e),
    }
}
