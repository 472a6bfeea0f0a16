//! The channel's public pages: `/mail/{channel}/c/{token}`, a choice's link, and
//! `/mail/{channel}/u/{token}`, a notification's one-click unsubscribe (RFC 8058). Opening a
//! link (GET) only shows a page with a button: mail scanners and link previews open every
//! link in a message, and must not take a deal or unsubscribe anyone. The button (POST) does
//! it; a choice's page then shows the click's answer.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::Sha256;

use super::Email;
use crate::channels::{Choice, Markup};
use crate::clock::Clock;
use crate::engine::ingest::Ingest;
use crate::store::{IngestOutcome, NewEvent};

/// How long a choice's page waits for the click's answer.
const ANSWER_WAIT: Duration = Duration::from_secs(10);

/// What a link's token carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "k")]
enum Claims {
    /// A choice: the address it was sent to, the message, the choice's data and label.
    #[serde(rename = "c")]
    Click {
        t: String,
        m: String,
        d: String,
        x: String,
    },
    /// Unsubscribe an address.
    #[serde(rename = "u")]
    Unsubscribe { a: String },
}

fn mac(key: &[u8]) -> Hmac<Sha256> {
    Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length")
}

fn sign(key: &[u8], claims: &Claims) -> String {
    let payload = B64.encode(serde_json::to_vec(claims).expect("claims serialize"));
    let mut m = mac(key);
    m.update(payload.as_bytes());
    format!("{payload}.{}", B64.encode(m.finalize().into_bytes()))
}

fn open(key: &[u8], token: &str) -> Option<Claims> {
    let (payload, sig) = token.split_once('.')?;
    let mut m = mac(key);
    m.update(payload.as_bytes());
    m.verify_slice(&B64.decode(sig).ok()?).ok()?;
    serde_json::from_slice(&B64.decode(payload).ok()?).ok()
}

/// The link of a choice in a message to `to`.
pub fn click_url(
    base: &str,
    channel: &str,
    key: &[u8],
    to: &str,
    message: &str,
    c: &Choice,
) -> String {
    let claims = Claims::Click {
        t: to.to_string(),
        m: message.to_string(),
        d: c.data.clone(),
        x: c.text.clone(),
    };
    format!("{base}/mail/{channel}/c/{}", sign(key, &claims))
}

/// The one-click unsubscribe link of `address`.
pub fn unsubscribe_url(base: &str, channel: &str, key: &[u8], address: &str) -> String {
    let claims = Claims::Unsubscribe {
        a: address.to_string(),
    };
    format!("{base}/mail/{channel}/u/{}", sign(key, &claims))
}

type St = (Arc<Email>, Ingest, Clock);

pub fn router(mail: Arc<Email>, ingest: Ingest, clock: Clock) -> axum::Router {
    let name = mail.name.clone();
    axum::Router::new()
        .route(
            &format!("/mail/{name}/c/{{token}}"),
            get(click_page).post(click),
        )
        .route(
            &format!("/mail/{name}/u/{{token}}"),
            get(unsubscribe_page).post(unsubscribe),
        )
        .with_state((mail, ingest, clock))
}

fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let esc = |s: &str| Markup::Html.escape(s);
    let html = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\"><meta name=\"robots\" content=\"noindex\"><title>{}</title></head>\n<body style=\"font-family:sans-serif;max-width:32em;margin:3em auto;padding:0 1em\">\n<h1 style=\"font-size:1.3em\">{}</h1>\n{body}\n</body></html>\n",
        esc(title),
        esc(title)
    );
    (status, Html(html)).into_response()
}

fn button(label: &str) -> String {
    format!(
        "<form method=\"post\"><button type=\"submit\" style=\"font-size:1.1em;padding:.5em 1.5em\">{}</button></form>",
        Markup::Html.escape(label)
    )
}

fn invalid() -> Response {
    page(
        StatusCode::NOT_FOUND,
        "This link is not valid",
        "<p>It may have been copied incompletely.</p>",
    )
}

/// The claims of a token, once the channel knows its key.
#[expect(
    clippy::result_large_err,
    reason = "the error is the response itself, made once per request"
)]
fn claims(mail: &Email, token: &str) -> Result<Claims, Response> {
    let Some(key) = mail.key.get() else {
        return Err(page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Starting",
            "<p>Please try again in a moment.</p>",
        ));
    };
    open(key, token).ok_or_else(invalid)
}

async fn click_page(State((mail, _, _)): State<St>, Path(token): Path<String>) -> Response {
    match claims(&mail, &token) {
        Ok(Claims::Click { x, .. }) => page(StatusCode::OK, &x, &button(&x)),
        Ok(_) => invalid(),
        Err(r) => r,
    }
}

/// The browser's first language (`Accept-Language: pl-PL,pl;q=0.9,en;q=0.8` → `pl-PL`): the
/// click's answer comes in it.
fn browser_language(headers: &HeaderMap) -> Option<String> {
    let first = headers
        .get(header::ACCEPT_LANGUAGE)?
        .to_str()
        .ok()?
        .split(',')
        .next()?
        .split(';')
        .next()?
        .trim();
    (!first.is_empty() && first != "*").then(|| first.to_string())
}

async fn click(
    State((mail, ingest, clock)): State<St>,
    Path(token): Path<String>,
    headers: HeaderMap,
) -> Response {
    let (to, message, data, label) = match claims(&mail, &token) {
        Ok(Claims::Click { t, m, d, x }) => (t, m, d, x),
        Ok(_) => return invalid(),
        Err(r) => return r,
    };
    let id = format!("mail-{}", hex::encode(rand::random::<[u8; 12]>()));
    let address = super::outbound::mailbox(&to)
        .map(|m| m.email.to_string().to_ascii_lowercase())
        .unwrap_or_else(|_| to.clone());
    let answer = mail.await_answer(&id);
    let ev = NewEvent {
        kind: "click".into(),
        source: mail.name.clone(),
        // The same link posted twice (a double click) is one click.
        dedupe_key: Some(format!(
            "email:{}:click:{}",
            mail.name,
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(token.as_bytes()))
        )),
        data: json!({
            "click": id, "data": data, "text": label,
            "chat": {"id": to, "type": "private"},
            "from": {"id": address, "address": address},
            "message": message, "message_id": message,
            "lang": browser_language(&headers),
        }),
        meta: json!({"link": true}),
        rejected: None,
        received_at: clock.now_ms(),
    };
    match ingest.submit(ev).await {
        Ok(IngestOutcome::Accepted(_)) => {}
        Ok(IngestOutcome::Duplicate(_)) => {
            return page(StatusCode::OK, &label, "<p>Your choice was received.</p>")
        }
        Ok(IngestOutcome::Rejected(_)) => return invalid(),
        Err(e) => {
            tracing::warn!(channel = %mail.name, error = %e, "a click was not stored");
            return page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Please try again",
                "<p>Your choice could not be recorded just now.</p>",
            );
        }
    }
    match tokio::time::timeout(ANSWER_WAIT, answer).await {
        Ok(Ok(text)) if !text.is_empty() => page(
            StatusCode::OK,
            &label,
            &format!("<p>{}</p>", Markup::Html.escape(&text)),
        ),
        _ => page(StatusCode::OK, &label, "<p>Your choice was received.</p>"),
    }
}

async fn unsubscribe_page(State((mail, _, _)): State<St>, Path(token): Path<String>) -> Response {
    match claims(&mail, &token) {
        Ok(Claims::Unsubscribe { a }) => page(
            StatusCode::OK,
            "Unsubscribe",
            &format!(
                "<p>{} will get no more notifications.</p>{}",
                Markup::Html.escape(&a),
                button("Unsubscribe")
            ),
        ),
        Ok(_) => invalid(),
        Err(r) => r,
    }
}

/// RFC 8058: the mail client posts `List-Unsubscribe=One-Click`; a person posts the page's
/// form. Either way the address is suppressed.
async fn unsubscribe(
    State((mail, ingest, clock)): State<St>,
    Path(token): Path<String>,
) -> Response {
    let address = match claims(&mail, &token) {
        Ok(Claims::Unsubscribe { a }) => a,
        Ok(_) => return invalid(),
        Err(r) => return r,
    };
    let Some(store) = mail.store.get() else {
        return invalid();
    };
    let now = clock.now_ms();
    if let Err(e) = store
        .suppress(&mail.name, &address, "unsubscribed", now)
        .await
    {
        tracing::warn!(channel = %mail.name, error = %e, "an unsubscribe was not stored");
        return page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Please try again",
            "<p>The unsubscribe could not be recorded just now.</p>",
        );
    }
    // Journaled: who left, and when.
    let _ = ingest
        .submit(NewEvent {
            kind: "status".into(),
            source: mail.name.clone(),
            dedupe_key: Some(format!("email:{}:unsubscribe:{address}", mail.name)),
            data: json!({"status": "unsubscribed", "address": address}),
            meta: json!({}),
            rejected: None,
            received_at: now,
        })
        .await;
    page(
        StatusCode::OK,
        "Unsubscribed",
        &format!(
            "<p>{} will get no more notifications.</p>",
            Markup::Html.escape(&address)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_open_to_their_claims_and_forgeries_do_not() {
        let c = Claims::Click {
            t: "ada@example.com".into(),
            m: "sb.1@example.com".into(),
            d: "o:1:0".into(),
            x: "Take".into(),
        };
        let t = sign(b"k", &c);
        assert_eq!(open(b"k", &t), Some(c));
        assert_eq!(open(b"other", &t), None);
        assert_eq!(open(b"k", &t[..t.len() - 2]), None);
        assert_eq!(open(b"k", "garbage"), None);
        let u = unsubscribe_url("https://x", "mail", b"k", "ada@example.com");
        let token = u.rsplit('/').next().unwrap();
        assert_eq!(
            open(b"k", token),
            Some(Claims::Unsubscribe {
                a: "ada@example.com".into()
            })
        );
    }
}
