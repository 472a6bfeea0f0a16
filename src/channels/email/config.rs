//! An e-mail channel's section of the gateway file (one mailbox):
//!
//! ```toml
//! [channels.mail]
//! type = "email"
//! from = "Acme Support <support@example.com>"
//! reply_to = "support@example.com"    # replies come back to support+<token>@example.com
//! smtp = { host = "${SMTP_HOST}", port = 587, security = "starttls", user = "${SMTP_USER}", password = "${SMTP_PASSWORD}" }
//! imap = { host = "${IMAP_HOST}", port = 993, security = "tls", user = "${IMAP_USER}", password = "${IMAP_PASSWORD}", mailbox = "INBOX", poll = "1m" }
//! limits = { mailbox = "30/1m", domain = "10/1m" }
//! ```
//!
//! An empty SMTP host turns the channel off; without `imap` it only sends.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value as Json};

use crate::lang::channel::{Channel, Section, SectionCx};
use crate::lang::model::Secret;

/// How a connection to a mail server is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// TLS from the first byte (SMTP 465, IMAP 993).
    Tls,
    /// Plain, then upgraded with STARTTLS (SMTP 587); refused if the server cannot.
    StartTls,
    /// No encryption: for a server on loopback or inside a trusted network only.
    None,
}

impl Security {
    fn parse(s: &str) -> Option<Security> {
        match s {
            "tls" => Some(Security::Tls),
            "starttls" => Some(Security::StartTls),
            "none" => Some(Security::None),
            _ => None,
        }
    }
}

/// One mail server and the account on it.
#[derive(Debug, Clone)]
pub struct Server {
    pub host: String,
    pub port: u16,
    pub security: Security,
    /// Empty: no login (an SMTP relay that trusts the network).
    pub user: String,
    pub password: Secret,
}

/// Where replies and new mail are read from.
#[derive(Debug, Clone)]
pub struct Imap {
    pub server: Server,
    pub mailbox: String,
    /// How often the mailbox is checked when the server has no IDLE (and how long one
    /// IDLE lasts at most before it is renewed).
    pub poll: Duration,
}

#[derive(Debug, Clone)]
pub struct EmailChannel {
    pub from: lettre::message::Mailbox,
    /// Where replies go; a token is added to its local part (`reply+<token>@…`) so that a
    /// reply finds its run even when the mail client drops `In-Reply-To`.
    pub reply_to: Option<lettre::Address>,
    pub smtp: Server,
    pub imap: Option<Imap>,
    /// (messages, per period) from the whole mailbox and to one recipient domain.
    pub per_mailbox: (u32, Duration),
    pub per_domain: (u32, Duration),
}

/// The JSON Schema of an e-mail channel's section.
pub fn schema() -> Json {
    let mut smtp = server_schema(
        "SMTP",
        "The server mail is sent through.",
        "The SMTP server's host name. Empty: the channel is off (its messages fail, journaled).",
        "`starttls` (the default: plain, then upgraded; refused if the server cannot), `tls` (TLS from the first byte) or `none` (a relay on loopback or a trusted network).",
        "default 465 with `tls`, 587 with `starttls`, 25 with `none`",
    );
    smtp["examples"] = serde_json::json!([{
        "host": "${SMTP_HOST}", "port": 587, "security": "starttls",
        "user": "${SMTP_USER}", "password": "${SMTP_PASSWORD}"
    }]);
    let mut imap = server_schema(
        "IMAP",
        "The server replies and new mail are read from (one reader per mailbox). Without it the channel only sends and `check` refuses an `ask` on it.",
        "The IMAP server's host name. Empty: nothing is read yet.",
        "`tls` (the default: TLS from the first byte) or `none` (a server on loopback or a trusted network); `starttls` is refused.",
        "default 993 with `tls`, 143 with `none`",
    );
    imap["properties"]["mailbox"] = serde_json::json!({
        "description": "The folder read for new mail (default `INBOX`).",
        "type": "string",
        "examples": ["INBOX"]
    });
    imap["properties"]["poll"] = serde_json::json!({
        "description": "How often the mailbox is checked when the server has no IDLE, and the longest one IDLE lasts before it is renewed (default `1m`, at least `100ms`).",
        "type": "string",
        "examples": ["1m"]
    });
    imap["examples"] = serde_json::json!([{
        "host": "${IMAP_HOST}", "port": 993, "security": "tls", "user": "${IMAP_USER}",
        "password": "${IMAP_PASSWORD}", "mailbox": "INBOX", "poll": "1m"
    }]);
    crate::channels::section_schema(
        "email",
        "A mailbox: sends by SMTP and, with `imap`, reads replies and new mail.",
        serde_json::json!({
            "from": {
                "description": "The sender of every message: an address, with a name if wanted.",
                "type": "string",
                "examples": ["Acme Support <support@example.com>"]
            },
            "reply_to": {
                "description": "Where replies go, as a plain address without a `+tag`: replies go to support+<token>@example.com, which finds the run even when a mail client drops the thread headers (the mail server must deliver +tagged addresses to the mailbox). Empty or left out: no `Reply-To`.",
                "type": "string",
                "examples": ["support@example.com"]
            },
            "smtp": smtp,
            "imap": imap,
            "limits": {
                "description": "Send rates as `count/period`: `mailbox` for the whole mailbox (default `30/1m`), `domain` for one recipient domain (default `10/1m`).",
                "type": "object",
                "additionalProperties": false,
                "properties": {
                    "mailbox": {
                        "description": "Messages from the whole mailbox (default `30/1m`).",
                        "type": "string",
                        "examples": ["30/1m"]
                    },
                    "domain": {
                        "description": "Messages to one recipient domain (default `10/1m`).",
                        "type": "string",
                        "examples": ["10/1m"]
                    }
                },
                "examples": [{ "mailbox": "30/1m", "domain": "10/1m" }]
            }
        }),
        &["from", "smtp"],
    )
}

/// The JSON Schema of a server table, `{ host, port, security, user, password }`, with the
/// descriptions of the table, its host and its security and the default ports.
fn server_schema(what: &str, description: &str, host: &str, security: &str, ports: &str) -> Json {
    let var = |key: &str| format!("${{{what}_{key}}}");
    serde_json::json!({
        "description": description,
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "host": {
                "description": host,
                "type": "string",
                "examples": [var("HOST")]
            },
            "port": {
                "description": format!("The {what} port, a number or a text (`\"${{{what}_PORT}}\"`); {ports}."),
                "type": ["integer", "string"],
                "examples": [if what == "SMTP" { 587 } else { 993 }]
            },
            "security": {
                "description": security,
                "type": "string",
                "examples": [if what == "SMTP" { "starttls" } else { "tls" }]
            },
            "user": {
                "description": if what == "SMTP" {
                    "The SMTP login. Empty: mail is sent without login (a relay that trusts the network).".to_string()
                } else {
                    "The IMAP login.".to_string()
                },
                "type": "string",
                "examples": [var("USER")]
            },
            "password": {
                "description": format!("The {what} password."),
                "type": "string",
                "examples": [var("PASSWORD")]
            }
        }
    })
}

pub fn parse(section: &Section, cx: &mut dyn SectionCx) -> Option<Channel> {
    let from = match section.text("from", cx) {
        Some(f) => cx
            .env(&f)
            .and_then(|v| match v.parse::<lettre::message::Mailbox>() {
                Ok(m) => Some(m),
                Err(e) => {
                    cx.err(
                        f.span(),
                        format!("'{v}' is not an address like \"Acme <bot@example.com>\": {e}"),
                    );
                    None
                }
            }),
        None => {
            cx.err(
                section.span.clone(),
                "an email channel needs `from` (e.g. \"Acme Support <support@example.com>\")"
                    .into(),
            );
            None
        }
    };
    let reply_to = section.text("reply_to", cx).and_then(|r| {
        let v = cx.env(&r)?;
        if v.is_empty() {
            return None;
        }
        match v.parse::<lettre::Address>() {
            Ok(a) if a.user().contains('+') => {
                cx.err(
                    r.span(),
                    format!("'{v}' already has a +tag: give the plain address, the gateway adds one per message"),
                );
                None
            }
            Ok(a) => Some(a),
            Err(e) => {
                cx.err(r.span(), format!("'{v}' is not an e-mail address: {e}"));
                None
            }
        }
    });
    let smtp = match section.table("smtp", cx) {
        Some((span, t)) => server(
            "smtp",
            span,
            &t,
            &["host", "port", "security", "user", "password"],
            cx,
        ),
        None => {
            cx.err(
                section.span.clone(),
                "an email channel needs `smtp = { host = \"${SMTP_HOST}\", port = 587, security = \"starttls\", user = \"${SMTP_USER}\", password = \"${SMTP_PASSWORD}\" }`".into(),
            );
            None
        }
    };
    // Without an `imap` section nothing comes back: `check` refuses an `ask` on the channel.
    let reads = section.table("imap", cx);
    let replies = reads.is_some();
    let imap = reads.and_then(|(span, t)| {
        let server = server(
            "imap",
            span.clone(),
            &t,
            &[
                "host", "port", "security", "user", "password", "mailbox", "poll",
            ],
            cx,
        )?;
        if server.security == Security::StartTls {
            cx.err(
                span.clone(),
                "imap security is \"tls\" (port 993) or \"none\"".into(),
            );
        }
        let mailbox = text(&t, "mailbox", &span, cx).unwrap_or_else(|| "INBOX".into());
        let poll = match text(&t, "poll", &span, cx) {
            None => Duration::from_secs(60),
            Some(p) => match crate::lang::compile::values::parse_duration(&p) {
                Ok(d) if d >= Duration::from_millis(100) => d,
                _ => {
                    cx.err(
                        span.clone(),
                        format!("imap poll '{p}' should look like 30s or 2m"),
                    );
                    Duration::from_secs(60)
                }
            },
        };
        // An IMAP section without a host reads nothing (the examples ship one like that).
        (!server.host.is_empty()).then_some(Imap {
            server,
            mailbox,
            poll,
        })
    });
    let limits = section.rates(
        "limits",
        &[
            ("mailbox", (30, Duration::from_secs(60))),
            ("domain", (10, Duration::from_secs(60))),
        ],
        cx,
    );
    section.finish("email", cx);
    // The problems are reported; a channel is still made, so that the scenarios using it are
    // checked against it rather than reported as using an unknown channel.
    let from = from.unwrap_or_else(|| {
        lettre::message::Mailbox::new(None, "invalid@invalid.invalid".parse().expect("an address"))
    });
    let smtp = smtp.unwrap_or(Server {
        host: String::new(),
        port: 25,
        security: Security::None,
        user: String::new(),
        password: Secret(String::new()),
    });
    let off = smtp.host.is_empty().then(|| "no SMTP host".to_string());
    Some(Channel {
        kind: "email",
        caps: crate::channels::Capabilities {
            replies,
            ..super::CAPABILITIES
        },
        settings: Arc::new(EmailChannel {
            from,
            reply_to,
            smtp,
            imap,
            per_mailbox: limits[0],
            per_domain: limits[1],
        }),
        off,
    })
}

/// A text value of a server table (`${NAME}` already expanded).
fn text(
    t: &Map<String, Json>,
    key: &str,
    span: &Range<usize>,
    cx: &mut dyn SectionCx,
) -> Option<String> {
    match t.get(key)? {
        Json::String(s) => Some(s.clone()),
        _ => {
            cx.err(span.clone(), format!("`{key}` must be a text"));
            None
        }
    }
}

/// `{ host, port, security, user, password }`; the keys a table may have are `known`.
fn server(
    what: &str,
    span: Range<usize>,
    t: &Map<String, Json>,
    known: &[&str],
    cx: &mut dyn SectionCx,
) -> Option<Server> {
    for k in t.keys() {
        if !known.contains(&k.as_str()) {
            cx.err(
                span.clone(),
                format!(
                    "unknown key `{k}` in `{what}` (it takes: {})",
                    known.join(", ")
                ),
            );
        }
    }
    let host = text(t, "host", &span, cx).unwrap_or_default();
    let security = match text(t, "security", &span, cx) {
        None if what == "smtp" => Security::StartTls,
        None => Security::Tls,
        Some(s) => match Security::parse(&s) {
            Some(sec) => sec,
            None => {
                cx.err(
                    span.clone(),
                    format!("unknown {what} security '{s}' (tls, starttls or none)"),
                );
                return None;
            }
        },
    };
    let default_port = match (what, security) {
        ("smtp", Security::Tls) => 465,
        ("smtp", Security::StartTls) => 587,
        ("smtp", Security::None) => 25,
        (_, Security::None) => 143,
        _ => 993,
    };
    let port = match t.get("port") {
        None => default_port,
        Some(Json::Number(n)) => match n.as_u64().and_then(|p| u16::try_from(p).ok()) {
            Some(p) if p > 0 => p,
            _ => {
                cx.err(span.clone(), format!("{what} port {n} is not a port"));
                return None;
            }
        },
        // `port = "${SMTP_PORT:-587}"`
        Some(Json::String(s)) if s.is_empty() => default_port,
        Some(Json::String(s)) => match s.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => {
                cx.err(span.clone(), format!("{what} port '{s}' is not a port"));
                return None;
            }
        },
        Some(_) => {
            cx.err(span.clone(), format!("{what} port must be a number"));
            return None;
        }
    };
    Some(Server {
        host,
        port,
        security,
        user: text(t, "user", &span, cx).unwrap_or_default(),
        password: Secret(text(t, "password", &span, cx).unwrap_or_default()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> (Vec<String>, Option<Channel>) {
        let (problems, gw) = crate::channels::testing::gateway(text);
        (problems, gw.channels.get("mail").cloned())
    }

    #[test]
    fn a_mailbox_with_smtp_and_imap() {
        let (problems, ch) = parsed(
            "[channels.mail]\ntype = \"email\"\nfrom = \"Acme <bot@example.com>\"\nreply_to = \"replies@example.com\"\nsmtp = { host = \"smtp.example.com\", security = \"tls\", user = \"bot\", password = \"pw\" }\nimap = { host = \"imap.example.com\", port = \"1993\", user = \"bot\", password = \"pw\", poll = \"30s\" }\nlimits = { domain = \"5/1m\" }\n",
        );
        assert!(problems.is_empty(), "{problems:?}");
        let ch = ch.unwrap();
        assert_eq!(ch.off, None);
        let m = ch.settings::<EmailChannel>().unwrap();
        assert_eq!(m.from.email.to_string(), "bot@example.com");
        assert_eq!(m.from.name.as_deref(), Some("Acme"));
        assert_eq!((m.smtp.port, m.smtp.security), (465, Security::Tls));
        let imap = m.imap.as_ref().unwrap();
        assert_eq!((imap.server.port, imap.mailbox.as_str()), (1993, "INBOX"));
        assert_eq!(imap.poll, Duration::from_secs(30));
        assert_eq!(m.per_domain, (5, Duration::from_secs(60)));
        assert!(!format!("{m:?}").contains("pw"), "secrets never printed");
    }

    #[test]
    fn an_empty_host_is_off_and_mistakes_have_positions() {
        let (problems, ch) = parsed(
            "[channels.mail]\ntype = \"email\"\nfrom = \"bot@example.com\"\nsmtp = { host = \"\" }\n",
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(ch.unwrap().off.as_deref(), Some("no SMTP host"));
        let (problems, _) = parsed(
            "[channels.mail]\ntype = \"email\"\nfrom = \"not an address\"\nreply_to = \"a+b@example.com\"\nsmtp = { host = \"h\", port = 70000, tls = true }\nimap = { host = \"h\", security = \"starttls\" }\n",
        );
        assert_eq!(
            problems,
            vec![
                "3:8: 'not an address' is not an address like \"Acme <bot@example.com>\": Invalid input",
                "4:12: 'a+b@example.com' already has a +tag: give the plain address, the gateway adds one per message",
                "5:8: unknown key `tls` in `smtp` (it takes: host, port, security, user, password)",
                "5:8: smtp port 70000 is not a port",
                "6:8: imap security is \"tls\" (port 993) or \"none\"",
            ]
        );
    }
}
