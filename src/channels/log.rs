//! The built-in `log` channel: prints the rendered message (and the journal keeps it).
//! Examples and tests use it where a real platform would receive the message.

use std::io::Write;

use serde_json::{json, Value as Json};

use super::SendError;

pub fn deliver(name: &str, stdout: bool, request: &Json) -> Result<Json, SendError> {
    let to = request.get("to").and_then(Json::as_str).unwrap_or("-");
    let lang = request.get("lang").and_then(Json::as_str).unwrap_or("-");
    let mut text = request
        .get("text")
        .and_then(Json::as_str)
        .unwrap_or("")
        .to_string();
    for b in request["buttons"].as_array().into_iter().flatten() {
        text.push_str(&format!(
            " [{}]({})",
            b["text"].as_str().unwrap_or(""),
            b["url"].as_str().unwrap_or("")
        ));
    }
    let text = text.as_str();
    tracing::info!(target: "journal", channel = name, to, lang, text, "message");
    if stdout {
        let line = format!("[{name}] to={to} lang={lang}: {text}\n");
        let mut out = std::io::stdout().lock();
        out.write_all(line.as_bytes()).map_err(|e| SendError {
            message: format!("cannot write to stdout: {e}"),
            retry: true,
        })?;
    }
    Ok(json!({"channel": name, "logged": true}))
}
