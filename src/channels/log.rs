//! The built-in `log` channel: prints the rendered message (and the journal keeps it).
//! Examples and tests use it where a real platform would receive the message.

use std::io::Write;

use serde_json::json;

use super::{Adapter, Capabilities, Delivered, Outbound, SendError};

pub struct Log {
    name: String,
    stdout: bool,
}

impl Log {
    pub fn new(name: &str, stdout: bool) -> Log {
        Log {
            name: name.to_string(),
            stdout,
        }
    }
}

#[async_trait::async_trait]
impl Adapter for Log {
    fn capabilities(&self) -> Capabilities {
        Capabilities::WRITE_ONLY
    }

    fn status(&self) -> (String, bool) {
        ("ok".into(), true)
    }

    async fn deliver(&self, op: &Outbound) -> Result<Delivered, SendError> {
        let Outbound::Send(m) = op else {
            return Err(SendError {
                message: format!("the log channel '{}' only sends messages", self.name),
                retry: false,
            });
        };
        let lang = m.lang.as_deref().unwrap_or("-");
        let to = if m.to.is_empty() { "-" } else { m.to.as_str() };
        let mut text = m.text.clone();
        for b in &m.links {
            text.push_str(&format!(" [{}]({})", b.text, b.url));
        }
        for a in &m.attachments {
            text.push_str(&format!(" [attachment]({})", a.url));
        }
        let text = text.as_str();
        tracing::info!(target: "journal", channel = %self.name, to, lang, text, "message");
        if self.stdout {
            let line = format!("[{}] to={to} lang={lang}: {text}\n", self.name);
            let mut out = std::io::stdout().lock();
            out.write_all(line.as_bytes()).map_err(|e| SendError {
                message: format!("cannot write to stdout: {e}"),
                retry: true,
            })?;
        }
        Ok(Delivered {
            message: None,
            detail: json!({"channel": self.name, "logged": true}),
        })
    }
}

/// A log channel's settings: `output = "stdout"` (default) or `"journal"` (kept in the
/// database only).
pub struct LogSettings {
    pub stdout: bool,
}

/// The `log` channel type.
pub static KIND: super::Kind = super::Kind {
    name: "log",
    parse,
    start: |name, ch, _shared| {
        let s = ch.settings::<LogSettings>()?;
        Some(std::sync::Arc::new(Log::new(name, s.stdout)))
    },
    schema,
};

/// The JSON Schema of a log channel's section.
pub fn schema() -> serde_json::Value {
    super::section_schema(
        "log",
        "A log channel: prints each message it sends, or only keeps it in the journal.",
        json!({
            "output": {
                "description": "Where messages go: `stdout` (the default) prints them; `journal` keeps them in the database only.",
                "type": "string",
                "examples": ["stdout"]
            }
        }),
        &[],
    )
}

fn parse(
    section: &crate::lang::channel::Section,
    cx: &mut dyn crate::lang::channel::SectionCx,
) -> Option<crate::lang::channel::Channel> {
    let stdout = match section.text("output", cx) {
        None => true,
        Some(o) => match o.get().as_str() {
            "stdout" => true,
            "journal" => false,
            other => {
                cx.err(
                    o.span(),
                    format!("unknown log output '{other}' (expected stdout or journal)"),
                );
                true
            }
        },
    };
    section.finish("log", cx);
    Some(crate::lang::channel::Channel {
        kind: "log",
        caps: Capabilities::WRITE_ONLY,
        settings: std::sync::Arc::new(LogSettings { stdout }),
        off: None,
    })
}
