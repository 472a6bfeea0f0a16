//! The gateway file: server, defaults, database, channels, hooks and the staff directory.

use std::collections::HashMap;
use std::time::Duration;

use super::cx::FileCx;
use crate::lang::channel::Section;
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
    let mut rules_of = HashMap::new();
    let kinds = cx.host.kinds;
    if let Some(Some(log)) = kinds.parse("log", &Section::empty("log"), cx) {
        channels.insert("log".to_string(), log);
    }
    for (name, ch) in &g.channels {
        let entries = ch.get();
        let Some(kind) = entries.get("type") else {
            cx.err(
                ch.span(),
                format!(
                    "channel '{name}' needs a `type` ({})",
                    kinds.names().join(", ")
                ),
            );
            continue;
        };
        let serde_json::Value::String(kind_name) = kind.get() else {
            cx.err(kind.span(), "`type` must be a text");
            continue;
        };
        // Whatever the type, a `…secret` setting is one: empty, it would match an empty
        // header. (An empty `token` is how a channel is left off.)
        for (key, v) in entries {
            if key.ends_with("secret") && v.get().as_str() == Some("") {
                cx.err(v.span(), format!("channel '{name}': `{key}` is empty"));
            }
        }
        let mut entries = entries.clone();
        let rules = super::hours::channel_rules(name, &mut entries, cx);
        let entries = &entries;
        let section = Section::new(name, ch.span(), entries);
        match kinds.parse(kind_name, &section, cx) {
            Some(Some(c)) => {
                channels.insert(name.clone(), c);
                rules_of.insert(name.clone(), rules);
            }
            Some(None) => {}
            None => cx.err(
                kind.span(),
                format!(
                    "unknown channel type '{kind_name}' (supported: {})",
                    kinds.names().join(", ")
                ),
            ),
        }
    }
    let mut hooks = HashMap::new();
    for (name, h) in &g.hooks {
        let h = h.get();
        // An empty secret would let anyone in (HMAC takes an empty key).
        let non_empty = |cx: &mut FileCx, v: &Sp<String>| {
            if v.get().is_empty() {
                cx.err(v.span(), format!("hook '{name}': the secret is empty"));
                return None;
            }
            Some(v.get().clone())
        };
        let secret = h.secret.as_ref().and_then(|s| {
            let s = s.get();
            Some((
                s.header.clone().unwrap_or_else(|| "X-Hook-Secret".into()),
                non_empty(cx, &s.value)?,
            ))
        });
        let hmac = h.hmac.as_ref().and_then(|s| {
            let s = s.get();
            let tolerance = dur(cx, &s.tolerance, 300);
            Some(HmacSpec {
                header: s.header.clone().unwrap_or_else(|| "X-Signature-256".into()),
                secret: non_empty(cx, &s.secret)?,
                prefix: s.prefix.clone().unwrap_or_else(|| "sha256=".into()),
                timestamp: s.timestamp_header.clone().map(|h| (h, tolerance)),
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
            tz: e.tz.as_ref().and_then(|z| cx.zone(z)),
            ids: e.ids.clone(),
            external: e.external.clone(),
            groups: e.groups.clone(),
        });
    }
    Gateway {
        listen: g.server.listen.as_ref().map(|l| l.get().clone()),
        public_url: g.server.public_url.as_ref().map(|l| l.get().clone()),
        max_body_bytes: g.server.max_body_bytes.unwrap_or(1 << 20),
        max_backlog: g.server.max_backlog.unwrap_or(256).max(1),
        backlog_wait: dur(cx, &g.server.backlog_wait, 2),
        language: d
            .language
            .as_ref()
            .map(|l| l.get().clone())
            .unwrap_or_else(|| "en".into()),
        timezone: d
            .timezone
            .as_ref()
            .and_then(|z| cx.zone(z))
            .unwrap_or(chrono_tz::UTC),
        max_steps: d.max_steps.unwrap_or(200),
        max_call_depth: d.max_call_depth.unwrap_or(8),
        max_fan_out: match &d.max_fan_out {
            Some(n) if !(1..=10_000).contains(n.get()) => {
                cx.err(
                    n.span(),
                    format!("max_fan_out is {}; it must be between 1 and 10000", n.get()),
                );
                1000
            }
            n => n.as_ref().map_or(1000, |n| *n.get()),
        },
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
                let v = a.get().trim().to_ascii_lowercase();
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
        rules: rules_of,
        hooks,
        staff,
    }
}
