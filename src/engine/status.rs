//! Delivery statuses of sent messages: a `status` event (channel, message reference,
//! status, and the platform's error when it failed) is recorded on the outbox row that sent
//! the message and in the journal of the run that sent it. Nothing here knows a platform:
//! WhatsApp's statuses use it today, e-mail bounces can tomorrow.

use serde_json::{json, Value as Json};

use super::steps::note;
use super::{Engine, EventItem};
use crate::store::{DeliveryStatus, StoreError, Tx};

/// A platform's error on a status (`{code, title, details}`) as one line:
/// `131026 Message Undeliverable — Unable to deliver message.`
pub fn status_error(e: &Json) -> Option<String> {
    if !e.is_object() {
        return None;
    }
    let code = match &e["code"] {
        Json::Null => String::new(),
        Json::String(s) => format!("{s} "),
        other => format!("{other} "),
    };
    let title = e["title"]
        .as_str()
        .or(e["message"].as_str())
        .unwrap_or("no reason given");
    let mut line = format!("{code}{title}");
    if let Some(d) = e["details"]
        .as_str()
        .filter(|d| !d.is_empty() && *d != title)
    {
        line.push_str(&format!(" — {d}"));
    }
    Some(line)
}

impl Engine {
    /// Records a `status` event on the row that sent its message and in that run's journal.
    /// A status of a message sent from elsewhere, or one already recorded, changes nothing.
    pub(super) async fn record_status(
        &mut self,
        tx: &mut dyn Tx,
        ev: &EventItem,
        outcome: &mut Vec<Json>,
    ) -> Result<(), StoreError> {
        let (Some(message), Some(status)) =
            (ev.data["message"].as_str(), ev.data["status"].as_str())
        else {
            return Ok(());
        };
        let now = self.now();
        let error = status_error(&ev.data["error"])
            .or_else(|| (status == "failed").then(|| "no reason given".to_string()));
        let entry = json!({"status": status, "at": now, "timestamp": ev.data["timestamp"],
            "error": ev.data["error"], "event_id": ev.id});
        let row_error = error.as_ref().map(|e| format!("{status}: {e}"));
        let row = tx
            .outbox_status(&DeliveryStatus {
                channel: &ev.source,
                message_ref: message,
                status,
                entry: &entry,
                error: row_error.as_deref(),
            })
            .await?;
        let Some(row) = row else {
            outcome.push(json!({"status": status, "message": message,
                "verdict": "no message sent from here has this reference, or the status is known"}));
            return Ok(());
        };
        outcome.push(
            json!({"status": status, "outbox": row.id, "run": row.run_id,
            "verdict": "recorded on the message"}),
        );
        let Some(mut run) = (match row.run_id {
            Some(id) => tx.load_run(id).await?,
            None => None,
        }) else {
            return Ok(());
        };
        let result = match &error {
            Some(e) => format!("{status}: {e}"),
            None => status.to_string(),
        };
        note(
            &mut run,
            json!({"step": row.step, "action": "status", "result": result, "outbox_id": row.id,
                "message": message, "error": ev.data["error"], "event_id": ev.id, "at": now}),
        );
        // A copy kept for an http response would write over this entry.
        self.http_parked.remove(&run.id);
        tx.save_run(&run).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_platform_error_reads_as_code_title_and_details() {
        let e = json!({"code": 131026, "title": "Message Undeliverable",
            "details": "Unable to deliver message."});
        assert_eq!(
            status_error(&e).unwrap(),
            "131026 Message Undeliverable — Unable to deliver message."
        );
        assert_eq!(
            status_error(&json!({"title": "Bounced"})).unwrap(),
            "Bounced"
        );
        assert_eq!(status_error(&Json::Null), None);
    }
}
