//! The gateway file: server, defaults, database, channels, hooks and the staff directory.

use std::collections::HashMap;
use std::time::Duration;

use super::cx::FileCx;
use super::values::parse_rate;
use crate::lang::model::*;
use crate::lang::raw::{self, Sp};

pub(super) fn compile_gateway(g: &raw::GatewayFile, cx: &mut FileCx) -> Gateway {
    let d = &g.defaults;
    let dur = |cx: &mut FileCx, v: &Option<Sp<String>>, dflt: u64| {
        v.as_ref()
            .and_then(|s| cx.duration(s))
            .unwrap_or(Duration::from_secs(dflt))
    };
    let mut channels = HashMap::new();
    channels.insert("log".to_string(), Channel::Log { stdout: true });
    for (name, ch) in &g.channels {
        let c = ch.get();
        match c.kind.get().as_str() {
            "log" => {
                let stdout = match c.output.as_ref().map(|o| o.get().as_str()) {
                    None | Some("stdout") => true,
                    Some("journal") => false,
                    Some(other) => {
                        cx.err(
                            c.output.as_ref().map(|o| o.span()).unwrap_or(ch.span()),
                            format!("unknown log output '{other}' (expected stdout or journal)"),
                        );
                        true
                    }
                };
                channels.insert(name.clone(), Channel::Log { stdout });
            }
            "telegram" => {
                let token = match &c.token {
                    Some(t) => cx.env(t),
                    None => {
                        cx.err(
                            ch.span(),
                            "a telegram channel needs `token` (e.g. \"${TELEGRAM_TOKEN}\")",
                        );
                        None
                    }
                };
                let api_url = c.api_url.as_ref().and_then(|u| {
                    let v = cx.env(u)?;
                    match reqwest::Url::parse(&v) {
                        Ok(url) => Some(url),
                        Err(e) => {
                            cx.err(u.span(), format!("'{v}' is not a URL: {e}"));
                            None
                        }
                    }
                });
                let webhook = match c.mode.as_ref().map(|m| m.get().as_str()) {
                    None | Some("polling") => false,
                    Some("webhook") => true,
                    Some(other) => {
                        cx.err(
                            c.mode.as_ref().map(|m| m.span()).unwrap_or(ch.span()),
                            format!("unknown mode '{other}' (polling or webhook)"),
                        );
                        false
                    }
                };
                let webhook_secret = c
                    .webhook_secret
                    .as_ref()
                    .and_then(|w| cx.env(w))
                    .map(Secret);
                if webhook && webhook_secret.is_none() {
                    cx.err(
                        ch.span(),
                        "webhook mode needs `webhook_secret` (1-256 of A-Z a-z 0-9 _ -)",
                    );
                }
                let mut limit = |key: &str, dflt: (u32, Duration)| match c.limits.get(key) {
                    None => dflt,
                    Some(v) => parse_rate(v.get()).unwrap_or_else(|| {
                        cx.err(
                            v.span(),
                            format!("{key} limit must look like 1/1s or 20/1m"),
                        );
                        dflt
                    }),
                };
                let per_chat = limit("chat", (1, Duration::from_secs(1)));
                let per_group = limit("group", (20, Duration::from_secs(60)));
                let per_bot = limit("bot", (30, Duration::from_secs(1)));
                for (k, v) in &c.limits {
                    if !["chat", "group", "bot"].contains(&k.as_str()) {
                        cx.err(v.span(), format!("unknown limit '{k}' (chat, group, bot)"));
                    }
                }
                if let Some(token) = token {
                    channels.insert(
                        name.clone(),
                        Channel::Telegram(Box::new(TelegramChannel {
                            token: Secret(token),
                            api_url,
                            webhook,
                            webhook_secret,
                            per_chat,
                            per_group,
                            per_bot,
                        })),
                    );
                }
            }
            other => cx.err(
                c.kind.span(),
                format!("unknown channel type '{other}' (supported: log, telegram)"),
            ),
        }
    }
    let mut hooks = HashMap::new();
    for (name, h) in &g.hooks {
        let h = h.get();
        let secret = h.secret.as_ref().and_then(|s| {
            let s = s.get();
            Some((
                s.header.clone().unwrap_or_else(|| "X-Hook-Secret".into()),
                cx.env(&s.value)?,
            ))
        });
        let hmac = h.hmac.as_ref().and_then(|s| {
            let s = s.get();
            Some(HmacSpec {
                header: s.header.clone().unwrap_or_else(|| "X-Signature-256".into()),
                secret: cx.env(&s.secret)?,
                prefix: s.prefix.clone().unwrap_or_else(|| "sha256=".into()),
            })
        });
        hooks.insert(
            name.clone(),
            Hook {
                secret,
                hmac,
                idempotency_field: h.idempotency_field.as_ref().map(|f| f.get().clone()),
            },
        );
    }
    let mut staff = Vec::new();
    let mut staff_ids = HashMap::new();
    for s in &g.staff {
        let e = s.get();
        if staff_ids.insert(e.id.get().clone(), ()).is_some() {
            cx.err(
                e.id.span(),
                format!("staff id '{}' appears twice", e.id.get()),
            );
        }
        staff.push(Staff {
            id: e.id.get().clone(),
            name: e.name.clone(),
            language: e.language.clone(),
            ids: e.ids.clone(),
            external: e.external.clone(),
            groups: e.groups.clone(),
        });
    }
    Gateway {
        listen: g.server.listen.as_ref().and_then(|l| cx.env(l)),
        public_url: g.server.public_url.as_ref().and_then(|l| cx.env(l)),
        max_body_bytes: g.server.max_body_bytes.unwrap_or(1 << 20),
        language: d
            .language
            .as_ref()
            .map(|l| l.get().clone())
            .unwrap_or_else(|| "en".into()),
        max_steps: d.max_steps.unwrap_or(200),
        max_call_depth: d.max_call_depth.unwrap_or(8),
        http_timeout: dur(cx, &d.http_timeout, 10),
        http_attempts: d.http_attempts.unwrap_or(5).max(1),
        retry_delay: dur(cx, &d.retry_delay, 1),
        retry_max_delay: dur(cx, &d.retry_max_delay, 300),
        retention: dur(cx, &d.retention, 30 * 24 * 3600),
        database: {
            let db = &g.database;
            let dflt = PoolOptions::default();
            PoolOptions {
                max_connections: db.max_connections.unwrap_or(dflt.max_connections).max(2),
                min_connections: db.min_connections.unwrap_or(dflt.min_connections),
                acquire_timeout: dur(cx, &db.acquire_timeout, dflt.acquire_timeout.as_secs()),
                lease: dur(cx, &db.lease, dflt.lease.as_secs()).max(Duration::from_secs(1)),
            }
        },
        http: {
            let mut policy = HttpPolicy::default();
            for a in &g.http.allow {
                let Some(v) = cx.env(a) else { continue };
                let v = v.trim().to_ascii_lowercase();
                if let Ok(net) = v.parse::<ipnet::IpNet>() {
                    policy.allow_nets.push(net);
                } else if let Ok(ip) = v.parse::<std::net::IpAddr>() {
                    policy.allow_nets.push(ipnet::IpNet::from(ip));
                } else if !v.is_empty()
                    && v.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
                {
                    policy.allow_hosts.push(v);
                } else {
                    cx.err(
                        a.span(),
                        format!(
                            "'{v}' is neither a host name nor an address range like 10.0.0.0/8"
                        ),
                    );
                }
            }
            if let Some(n) = g.http.max_response_bytes {
                policy.max_response_bytes = n;
            }
            policy
        },
        channels,
        hooks,
        staff,
    }
}
