//! `POST /hooks/{name}`: checks the secret or signature on the raw bytes, parses JSON or a
//! form, deduplicates by idempotency key, and stores the event before answering. Rejected
//! deliveries are journaled with their reason.

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use hmac::{Hmac, Mac};
use serde_json::{json, Map, Value};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::{ApiError, AppState};
use crate::config::Hook;
use crate::store::{IngestOutcome, NewEvent};

/// How much of a rejected body the journal keeps.
const EXCERPT: usize = 2048;

#[tracing::instrument(skip_all, fields(hook = %name))]
pub async fn receive(
    State(st): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(hook) = st.live.hook(&name) else {
        return ApiError::new(StatusCode::NOT_FOUND, format!("unknown hook '{name}'"))
            .into_response();
    };
    let limit = st.cfg().gateway.max_body_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let too_big = || format!("body is larger than the limit of {limit} bytes");
    let bytes = if declared.is_some_and(|n| n > limit) {
        Err(too_big())
    } else {
        axum::body::to_bytes(body, limit)
            .await
            .map_err(|_| too_big())
    };
    let bytes = match bytes {
        Ok(b) => b,
        Err(reason) => {
            return reject(
                &st,
                &name,
                StatusCode::PAYLOAD_TOO_LARGE,
                reason,
                &Bytes::new(),
                declared,
            )
            .await;
        }
    };
    if let Err(reason) = verify(&hook, &headers, &bytes, st.clock.now_ms()) {
        return reject(&st, &name, StatusCode::UNAUTHORIZED, reason, &bytes, None).await;
    }
    let data = match parse(&headers, &bytes) {
        Ok(d) => d,
        Err(reason) => {
            return reject(&st, &name, StatusCode::BAD_REQUEST, reason, &bytes, None).await
        }
    };
    // PostgreSQL cannot store it, and no sender means it.
    if crate::engine::ingest::has_nul(&data) {
        return reject(
            &st,
            &name,
            StatusCode::BAD_REQUEST,
            "the body holds a NUL character (\\u0000), which is not accepted".into(),
            &bytes,
            None,
        )
        .await;
    }
    let key = match idempotency_key(&hook, &headers, &data, &bytes) {
        Ok(k) => k,
        Err(reason) => {
            return reject(&st, &name, StatusCode::BAD_REQUEST, reason, &bytes, None).await
        }
    };
    let ev = NewEvent {
        kind: "webhook".into(),
        source: name.clone(),
        dedupe_key: key
            .as_ref()
            .map(|k| format!("webhook:{name}:{}", k.stored())),
        meta: json!({"idempotency_key": key, "content_type": content_type(&headers)}),
        data,
        rejected: None,
        received_at: st.clock.now_ms(),
    };
    let sent = ev.data.clone();
    match st.ingest.submit(ev).await {
        Ok(IngestOutcome::Accepted(id)) => (
            StatusCode::ACCEPTED,
            Json(json!({"status": "accepted", "event_id": id})),
        )
            .into_response(),
        Ok(IngestOutcome::Duplicate(id)) | Ok(IngestOutcome::Rejected(id)) => {
            // A key names one request: reused for another body, it is a client's mistake,
            // not a repeat (the body is compared as parsed, so formatting does not matter).
            if let Ok(Some(first)) = st.store.event(id).await {
                if first.data != sent {
                    return ApiError::new(
                        StatusCode::CONFLICT,
                        format!("idempotency key already used by event {id} with a different body"),
                    )
                    .into_response();
                }
            }
            (
                StatusCode::OK,
                Json(json!({"status": "duplicate", "event_id": id})),
            )
                .into_response()
        }
        Err(e) => super::not_stored(&e),
    }
}

/// Longest idempotency key taken.
const KEY_MAX: usize = 255;

/// Where a delivery's idempotency key came from: the `Idempotency-Key` header, or the
/// hook's `idempotency_field` in the body (a string and a number that print alike are
/// different keys).
#[derive(Debug, PartialEq)]
enum Key {
    Header(String),
    Field(Value),
    /// A signed body without a key field: its digest.
    Body(String),
}

impl Key {
    /// The key as stored: the header and body fields never collide.
    fn stored(&self) -> String {
        match self {
            Key::Header(k) => format!("h:{k}"),
            Key::Body(digest) => format!("b:{digest}"),
            Key::Field(Value::String(s)) => format!("f:s:{s}"),
            Key::Field(other) => format!("f:j:{other}"),
        }
    }
}

impl serde::Serialize for Key {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Key::Header(k) | Key::Body(k) => s.serialize_str(k),
            Key::Field(v) => v.serialize(s),
        }
    }
}

fn idempotency_key(
    hook: &Hook,
    headers: &HeaderMap,
    data: &Value,
    body: &[u8],
) -> Result<Option<Key>, String> {
    // A signed request is identified by what is signed: a fresh header would let a
    // captured request be replayed.
    if hook.hmac.is_some() {
        return match field_key(hook, data)? {
            Some(k) => Ok(Some(k)),
            None => Ok(Some(Key::Body(hex::encode(
                <Sha256 as sha2::Digest>::digest(body),
            )))),
        };
    }
    if let Some(v) = headers.get("idempotency-key") {
        let k = v
            .to_str()
            .map_err(|_| "Idempotency-Key must be printable ASCII".to_string())?
            .trim();
        if k.is_empty() {
            return Err("Idempotency-Key is empty".into());
        }
        if k.len() > KEY_MAX {
            return Err(format!(
                "Idempotency-Key is longer than {KEY_MAX} characters"
            ));
        }
        return Ok(Some(Key::Header(k.to_string())));
    }
    field_key(hook, data)
}

/// The key from the hook's `idempotency_field` in the body, if it names one.
fn field_key(hook: &Hook, data: &Value) -> Result<Option<Key>, String> {
    let Some(path) = hook.idempotency_field.as_deref() else {
        return Ok(None);
    };
    let mut cur = data;
    for p in path.split('.') {
        match cur.get(p) {
            Some(v) => cur = v,
            None => return Ok(None),
        }
    }
    let printed = match cur {
        Value::Null => return Ok(None),
        Value::String(s) => s.clone(),
        Value::Number(_) | Value::Bool(_) => cur.to_string(),
        _ => {
            return Err(format!(
                "{path} must be a string or a number to identify the delivery"
            ))
        }
    };
    if printed.is_empty() {
        return Err(format!("{path} is empty"));
    }
    if printed.len() > KEY_MAX || printed.contains('\0') {
        return Err(format!(
            "{path} must be at most {KEY_MAX} bytes without NUL characters"
        ));
    }
    Ok(Some(Key::Field(cur.clone())))
}

fn content_type(h: &HeaderMap) -> String {
    h.get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

fn verify(hook: &Hook, headers: &HeaderMap, body: &[u8], now_ms: i64) -> Result<(), String> {
    if let Some((name, want)) = &hook.secret {
        let got = headers
            .get(name.as_str())
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if got.is_empty() {
            return Err(format!("missing {name} header"));
        }
        if !bool::from(got.ct_eq(want.as_bytes())) {
            return Err(format!("wrong secret in {name}"));
        }
    }
    if let Some(h) = &hook.hmac {
        let got = headers
            .get(h.header.as_str())
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| format!("missing {} header", h.header))?;
        let hexsig = got.strip_prefix(h.prefix.as_str()).unwrap_or(got);
        let sig = hex::decode(hexsig.trim())
            .map_err(|_| format!("{} is not a hex signature", h.header))?;
        let mut mac = Hmac::<Sha256>::new_from_slice(h.secret.as_bytes())
            .map_err(|_| "the hook's HMAC secret is unusable".to_string())?;
        if let Some((header, tolerance)) = &h.timestamp {
            let ts = headers
                .get(header.as_str())
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| format!("missing {header} header"))?
                .trim();
            let secs: i64 = ts
                .parse()
                .map_err(|_| format!("{header} is not a Unix time in seconds"))?;
            let age = (now_ms / 1000 - secs).abs();
            if age > tolerance.as_secs() as i64 {
                return Err(format!(
                    "{header} is {age} s from now, more than the {} s allowed",
                    tolerance.as_secs()
                ));
            }
            // The time is signed with the body, so it cannot be changed to replay it.
            mac.update(ts.as_bytes());
            mac.update(b".");
        }
        mac.update(body);
        mac.verify_slice(&sig)
            .map_err(|_| format!("signature in {} does not match the body", h.header))?;
    }
    Ok(())
}

fn parse(headers: &HeaderMap, body: &[u8]) -> Result<Value, String> {
    let ct = content_type(headers);
    if body.is_empty() {
        return Ok(Value::Object(Map::new()));
    }
    // `curl -d '{…}'` sends JSON labelled as a form: a body that opens like JSON is JSON.
    let looks_json = matches!(
        body.iter().find(|b| !b.is_ascii_whitespace()),
        Some(b'{' | b'[')
    );
    if ct.starts_with("application/x-www-form-urlencoded") && !looks_json {
        let pairs: Vec<(String, String)> =
            serde_urlencoded::from_bytes(body).map_err(|e| format!("malformed form body: {e}"))?;
        return Ok(Value::Object(
            pairs
                .into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect(),
        ));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err("the body must be a JSON object".into()),
        Err(e) => Err(format!("malformed JSON: {e}")),
    }
}

async fn reject(
    st: &AppState,
    hook: &str,
    status: StatusCode,
    reason: String,
    body: &[u8],
    declared: Option<usize>,
) -> Response {
    tracing::warn!(hook, %reason, "webhook rejected");
    if !st.rejections.journal() {
        metrics::counter!("switchboard_rejected_unjournaled_total", "hook" => hook.to_string())
            .increment(1);
        return (status, Json(json!({"error": reason, "event_id": null}))).into_response();
    }
    let excerpt = String::from_utf8_lossy(&body[..body.len().min(EXCERPT)]).to_string();
    let ev = NewEvent {
        kind: "webhook".into(),
        source: hook.to_string(),
        dedupe_key: None,
        data: json!({"body_excerpt": excerpt, "body_bytes": declared.unwrap_or(body.len())}),
        meta: json!({"status": status.as_u16()}),
        rejected: Some(reason.clone()),
        received_at: st.clock.now_ms(),
    };
    let event_id = match st.ingest.submit(ev).await {
        Ok(IngestOutcome::Rejected(id)) => Some(id),
        _ => None,
    };
    (status, Json(json!({"error": reason, "event_id": event_id}))).into_response()
}
