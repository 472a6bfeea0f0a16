//! Files customers send: Meta gives a media id, downloadable only with the access token.
//! Each media event carries a signed, expiring link on the gateway instead
//! (`GET /whatsapp/{channel}/media/{id}?exp=…&sig=…`), which a scenario can pass on; the
//! gateway fetches the file from Meta when the link is opened and streams it through.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use super::webhook::Hook;
use crate::http::ApiError;

/// How long a media link works.
pub const LINK_LIFETIME_MS: i64 = 7 * 24 * 3600 * 1000;

/// Hosts besides the Graph API's own that Meta serves media from; the access token goes to
/// no other.
const MEDIA_HOSTS: [&str; 3] = [".fbsbx.com", ".facebook.com", ".whatsapp.net"];

fn mac(secret: &[u8], media_id: &str, exp: i64) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key");
    mac.update(format!("{media_id}.{exp}").as_bytes());
    mac
}

/// The link to a media file, valid until `exp` (ms).
pub fn link(base: &str, channel: &str, secret: &[u8], media_id: &str, exp: i64) -> String {
    let sig = hex::encode(mac(secret, media_id, exp).finalize().into_bytes());
    format!(
        "{}/whatsapp/{channel}/media/{media_id}?exp={exp}&sig={sig}",
        base.trim_end_matches('/')
    )
}

#[derive(Deserialize)]
pub struct LinkQuery {
    exp: Option<i64>,
    sig: Option<String>,
}

/// Whether a link is genuine and still valid at `now`.
fn check(secret: &[u8], media_id: &str, q: &LinkQuery, now: i64) -> Result<(), ApiError> {
    let forged = || ApiError::new(StatusCode::FORBIDDEN, "not a link this gateway made");
    let (Some(exp), Some(sig)) = (q.exp, q.sig.as_deref()) else {
        return Err(forged());
    };
    let sig = hex::decode(sig).map_err(|_| forged())?;
    // Compared in constant time by the `hmac` crate.
    mac(secret, media_id, exp)
        .verify_slice(&sig)
        .map_err(|_| forged())?;
    if now > exp {
        return Err(ApiError::new(StatusCode::GONE, "the link has expired"));
    }
    Ok(())
}

/// Whether the access token may go to this media URL.
fn trusted(url: &reqwest::Url, api: &reqwest::Url) -> bool {
    let host = url.host_str().unwrap_or_default();
    host == api.host_str().unwrap_or_default() || MEDIA_HOSTS.iter().any(|h| host.ends_with(h))
}

fn bad_gateway(why: String) -> Response {
    ApiError::new(StatusCode::BAD_GATEWAY, why).into_response()
}

#[tracing::instrument(skip_all, fields(channel = %h.wa.name, media = %media_id))]
pub async fn download(
    State(h): State<Hook>,
    Path(media_id): Path<String>,
    Query(q): Query<LinkQuery>,
) -> Response {
    let wa = &h.wa;
    if let Err(e) = check(
        wa.cfg.app_secret.0.as_bytes(),
        &media_id,
        &q,
        h.clock.now_ms(),
    ) {
        return e.into_response();
    }
    let info = format!(
        "{}/{}/{media_id}",
        wa.cfg.api_url.as_str().trim_end_matches('/'),
        wa.cfg.api_version
    );
    let found = wa.http.get(info).bearer_auth(&wa.cfg.token.0).send().await;
    let found: serde_json::Value = match found {
        Ok(r) if r.status().is_success() => r.json().await.unwrap_or_default(),
        Ok(r) => return bad_gateway(format!("Meta does not give the file: {}", r.status())),
        Err(e) => return bad_gateway(format!("Meta did not answer: {}", e.without_url())),
    };
    let Some(url) = found["url"]
        .as_str()
        .and_then(|u| reqwest::Url::parse(u).ok())
    else {
        return bad_gateway("Meta's answer names no file URL".into());
    };
    if !trusted(&url, &wa.cfg.api_url) {
        return bad_gateway(format!(
            "the file is on {}, not a Meta host",
            url.host_str().unwrap_or("no host")
        ));
    }
    let file = wa
        .http
        .get(url)
        .bearer_auth(&wa.cfg.token.0)
        .timeout(Duration::from_secs(300))
        .send()
        .await;
    let file = match file {
        Ok(r) if r.status().is_success() => r,
        Ok(r) => return bad_gateway(format!("Meta does not give the file: {}", r.status())),
        Err(e) => return bad_gateway(format!("Meta did not answer: {}", e.without_url())),
    };
    let mime = found["mime_type"]
        .as_str()
        .unwrap_or("application/octet-stream")
        .to_string();
    // Streamed through, never held whole.
    let chunks = futures::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        match file.chunk().await {
            Ok(Some(bytes)) => Some((Ok(bytes), Some(file))),
            Ok(None) => None,
            Err(e) => Some((Err(e), None)),
        }
    });
    ([(header::CONTENT_TYPE, mime)], Body::from_stream(chunks)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(link: &str) -> LinkQuery {
        let q = reqwest::Url::parse(link).unwrap();
        let get = |k: &str| {
            q.query_pairs()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.to_string())
        };
        LinkQuery {
            exp: get("exp").and_then(|e| e.parse().ok()),
            sig: get("sig"),
        }
    }

    #[test]
    fn links_are_signed_per_file_and_expire() {
        let l = link("https://gw.example/", "wa", b"s", "m-1", 1_000);
        assert!(l.starts_with("https://gw.example/whatsapp/wa/media/m-1?exp=1000&sig="));
        assert!(check(b"s", "m-1", &query(&l), 999).is_ok());
        assert_eq!(
            check(b"s", "m-1", &query(&l), 1_001).unwrap_err().status,
            StatusCode::GONE
        );
        assert_eq!(
            check(b"s", "m-2", &query(&l), 0).unwrap_err().status,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            check(b"t", "m-1", &query(&l), 0).unwrap_err().status,
            StatusCode::FORBIDDEN
        );
        let later = LinkQuery {
            exp: Some(2_000),
            ..query(&l)
        };
        assert!(check(b"s", "m-1", &later, 0).is_err());
    }

    #[test]
    fn the_token_goes_only_to_meta_hosts() {
        let api = reqwest::Url::parse("https://graph.facebook.com").unwrap();
        let ok = |u: &str| trusted(&reqwest::Url::parse(u).unwrap(), &api);
        assert!(ok(
            "https://lookaside.fbsbx.com/whatsapp_business/attachments/?mid=1"
        ));
        assert!(ok("https://graph.facebook.com/v21.0/1"));
        assert!(!ok("https://evil.example/fbsbx.com"));
        assert!(!ok("https://fbsbx.com.evil.example/"));
    }
}
