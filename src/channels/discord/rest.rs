//! Discord's REST API for what the channel sends: payloads are serenity's builders, requests
//! go through our own client so that every answer's rate-limit state is seen — a 429's
//! `retry_after` and a bucket's `X-RateLimit-Remaining: 0` / `X-RateLimit-Reset-After` hold
//! the conversation until then (serenity's own rate limiter cannot be pointed at a proxy).

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value as Json;

use crate::channels::SendError;

/// What Discord answered.
pub enum Answer {
    Ok(Json),
    /// Over a limit: wait this long, then the same request may go again; `true` when the
    /// limit is the bot's global one (every request waits).
    Limited(Duration, bool),
    Failed(SendError),
}

#[derive(Clone)]
pub struct Rest {
    http: reqwest::Client,
    /// `https://discord.com/api/v10`
    base: String,
    /// `Bot <token>`; none for webhooks (their URL is their secret).
    auth: Option<String>,
}

/// A bucket that is used up: how long until it refills.
fn exhausted(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let get = |name: &str| headers.get(name)?.to_str().ok()?.parse::<f64>().ok();
    (get("x-ratelimit-remaining")? <= 0.0)
        .then(|| get("x-ratelimit-reset-after"))
        .flatten()
        .map(Duration::from_secs_f64)
}

impl Rest {
    pub fn new(api_url: &str, token: Option<&str>) -> Rest {
        Rest {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .user_agent(concat!(
                    "DiscordBot (https://github.com/switchboard, ",
                    env!("CARGO_PKG_VERSION"),
                    ")"
                ))
                .build()
                .unwrap_or_default(),
            base: format!("{}/api/v10", api_url.trim_end_matches('/')),
            auth: token.map(|t| format!("Bot {t}")),
        }
    }

    /// `path` under the API (`/channels/1/messages`), or a whole URL (a webhook's).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Json>,
    ) -> (Answer, Option<Duration>) {
        let url = if path.starts_with("http") {
            path.to_string()
        } else {
            format!("{}{path}", self.base)
        };
        let mut req = self.http.request(method, &url);
        if let Some(a) = &self.auth {
            req = req.header(reqwest::header::AUTHORIZATION, a);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                return (
                    Answer::Failed(SendError {
                        message: format!("discord: {}", e.without_url()),
                        retry: true,
                    }),
                    None,
                )
            }
        };
        let status = resp.status();
        let bucket = exhausted(resp.headers());
        let header_wait = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok()?.parse::<f64>().ok());
        let text = resp.text().await.unwrap_or_default();
        let json: Json = serde_json::from_str(&text).unwrap_or(Json::Null);
        let answer = match status {
            s if s.is_success() => Answer::Ok(json),
            StatusCode::TOO_MANY_REQUESTS => {
                let secs = json["retry_after"].as_f64().or(header_wait).unwrap_or(1.0);
                Answer::Limited(
                    Duration::from_secs_f64(secs.clamp(0.0, 600.0)),
                    json["global"].as_bool().unwrap_or(false),
                )
            }
            s => Answer::Failed(SendError {
                message: format!(
                    "discord: {} {}{}",
                    s.as_u16(),
                    json["message"]
                        .as_str()
                        .unwrap_or(s.canonical_reason().unwrap_or("")),
                    match &json["code"] {
                        Json::Number(c) => format!(" (code {c})"),
                        _ => String::new(),
                    }
                ) + &match &json["errors"] {
                    Json::Null => String::new(),
                    e => format!(": {e}"),
                },
                // Discord's 5xx pass; a refused payload or a missing channel does not.
                retry: s.is_server_error(),
            }),
        };
        (answer, bucket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_used_up_bucket_says_how_long_it_lasts() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("x-ratelimit-remaining", "0".parse().unwrap());
        h.insert("x-ratelimit-reset-after", "1.5".parse().unwrap());
        assert_eq!(exhausted(&h), Some(Duration::from_millis(1500)));
        h.insert("x-ratelimit-remaining", "3".parse().unwrap());
        assert_eq!(exhausted(&h), None);
    }
}
