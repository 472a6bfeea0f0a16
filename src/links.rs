//! Trigger links: signed, unguessable tokens that name a scenario, a subject and variables,
//! and may expire or be single-use. `{{ link("approve", subject=…, once=true) }}` makes one;
//! `GET /l/{token}` opens it.

use std::collections::HashSet;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};
use sha2::Sha256;

use crate::clock::Clock;
use crate::lang::expr::{LinkRequest, LinkSigner};

/// What a token carries. Short field names keep links short.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Claims {
    /// Scenario to run.
    pub s: String,
    /// Subject of the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub u: Option<String>,
    /// Variables for the run (`event.*`).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub v: Map<String, Json>,
    /// Expiry, Unix milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e: Option<i64>,
    /// Single use.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub o: bool,
    /// Random nonce: makes every link unguessable and names a single-use link.
    pub n: String,
    /// Where to send the browser afterwards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r: Option<String>,
    /// Ask for a confirming button press (a POST) before running.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub c: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("the link is not valid")]
    Invalid,
    #[error("the link has expired")]
    Expired,
}

pub struct Links {
    key: Vec<u8>,
    public_url: String,
    clock: Clock,
    /// Scenarios with a `link` trigger (replaced by a reload).
    targets: std::sync::RwLock<HashSet<String>>,
}

impl Links {
    pub fn new(key: &[u8], public_url: &str, clock: Clock, targets: HashSet<String>) -> Links {
        Links {
            key: key.to_vec(),
            public_url: public_url.trim_end_matches('/').to_string(),
            clock,
            targets: targets.into(),
        }
    }

    /// The scenarios of `cfg` that have a `link` trigger.
    pub fn targets_of(cfg: &crate::config::Config) -> HashSet<String> {
        cfg.scenarios
            .iter()
            .filter(|s| matches!(s.trigger, crate::config::Trigger::Link))
            .map(|s| s.id.clone())
            .collect()
    }

    pub fn set_targets(&self, targets: HashSet<String>) {
        *self.targets.write().unwrap_or_else(|e| e.into_inner()) = targets;
    }

    /// Links for the scenarios of `cfg` that have a `link` trigger.
    pub fn for_config(
        cfg: &crate::config::Config,
        key: &[u8],
        public_url: &str,
        clock: Clock,
    ) -> Links {
        Links::new(key, public_url, clock, Links::targets_of(cfg))
    }

    /// A fresh random signing key.
    pub fn random_key() -> String {
        B64.encode(rand::random::<[u8; 32]>())
    }

    pub fn nonce() -> String {
        B64.encode(rand::random::<[u8; 16]>())
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    fn mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes keys of any length")
    }

    pub fn token(&self, claims: &Claims) -> Result<String, String> {
        let known = self
            .targets
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&claims.s);
        if !known {
            return Err(format!(
                "scenario '{}' cannot be started by a link (it needs on = {{ link = true }})",
                claims.s
            ));
        }
        let payload = B64.encode(serde_json::to_vec(claims).map_err(|e| e.to_string())?);
        let mut mac = self.mac();
        mac.update(payload.as_bytes());
        let sig = B64.encode(mac.finalize().into_bytes());
        Ok(format!("{payload}.{sig}"))
    }

    pub fn url(&self, claims: &Claims) -> Result<String, String> {
        Ok(format!("{}/l/{}", self.public_url, self.token(claims)?))
    }

    /// Checks the signature, then the expiry.
    pub fn open(&self, token: &str) -> Result<Claims, LinkError> {
        let (payload, sig) = token.split_once('.').ok_or(LinkError::Invalid)?;
        let sig = B64.decode(sig).map_err(|_| LinkError::Invalid)?;
        let mut mac = self.mac();
        mac.update(payload.as_bytes());
        mac.verify_slice(&sig).map_err(|_| LinkError::Invalid)?;
        let bytes = B64.decode(payload).map_err(|_| LinkError::Invalid)?;
        let claims: Claims = serde_json::from_slice(&bytes).map_err(|_| LinkError::Invalid)?;
        if claims.e.is_some_and(|e| self.clock.now_ms() >= e) {
            return Err(LinkError::Expired);
        }
        Ok(claims)
    }
}

/// `link(…)` in templates: the request becomes claims with a fresh nonce and an absolute expiry.
impl LinkSigner for Links {
    fn sign(&self, link: LinkRequest) -> Result<String, String> {
        let claims = Claims {
            s: link.scenario,
            u: link.subject,
            v: link.vars,
            e: link
                .expires_in
                .map(|d| self.now_ms() + d.as_millis() as i64),
            o: link.once,
            n: Links::nonce(),
            r: link.redirect,
            c: link.confirm,
        };
        self.url(&claims)
    }
}

/// Link preview fetchers and mail scanners: they open links to show or check them, and must
/// never fire one.
pub fn is_unfurler(user_agent: &str) -> bool {
    const AGENTS: [&str; 22] = [
        "telegrambot",
        "twitterbot",
        "facebookexternalhit",
        "facebot",
        "slackbot",
        "slack-imgproxy",
        "discordbot",
        "whatsapp",
        "linkedinbot",
        "skypeuripreview",
        "vkshare",
        "viber",
        "embedly",
        "googlebot",
        "bingbot",
        "bingpreview",
        "microsoft office",
        "ms-office",
        "outlook",
        "proofpoint",
        "mimecast",
        "barracuda",
    ];
    let ua = user_agent.to_ascii_lowercase();
    AGENTS.iter().any(|a| ua.contains(a)) || ua.contains("preview") || ua.contains("scanner")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn links() -> Links {
        Links::new(
            b"k",
            "http://x/",
            Clock::default(),
            ["go".to_string()].into(),
        )
    }

    fn claims() -> Claims {
        Claims {
            s: "go".into(),
            u: Some("deal:1".into()),
            v: Map::new(),
            e: None,
            o: true,
            n: Links::nonce(),
            r: None,
            c: false,
        }
    }

    #[test]
    fn a_token_opens_to_what_it_carries() {
        let l = links();
        let c = claims();
        let t = l.token(&c).unwrap();
        assert_eq!(l.open(&t).unwrap(), c);
        assert!(l.url(&c).unwrap().starts_with("http://x/l/"));
    }

    #[test]
    fn forged_truncated_and_expired_tokens_are_refused() {
        let l = links();
        let t = l.token(&claims()).unwrap();
        assert_eq!(l.open(&t[..t.len() - 3]), Err(LinkError::Invalid));
        let other = Links::new(
            b"other",
            "http://x",
            Clock::default(),
            ["go".to_string()].into(),
        );
        assert_eq!(other.open(&t), Err(LinkError::Invalid));
        let (p, s) = t.split_once('.').unwrap();
        let mut forged = B64.decode(p).unwrap();
        forged[5] ^= 1;
        assert_eq!(
            l.open(&format!("{}.{s}", B64.encode(forged))),
            Err(LinkError::Invalid)
        );
        let mut c = claims();
        c.e = Some(l.now_ms() - 1);
        assert_eq!(l.open(&l.token(&c).unwrap()), Err(LinkError::Expired));
    }

    #[test]
    fn only_link_scenarios_get_links() {
        let mut c = claims();
        c.s = "other".into();
        assert!(links().token(&c).is_err());
    }

    #[test]
    fn preview_fetchers_are_recognised() {
        assert!(is_unfurler("TelegramBot (like TwitterBot)"));
        assert!(is_unfurler("facebookexternalhit/1.1"));
        assert!(!is_unfurler("Mozilla/5.0 (X11; Linux x86_64) Chrome/120"));
    }
}
