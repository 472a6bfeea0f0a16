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
    /// A status that comes before its message's delivery is recorded is kept until it is (a
    /// status of a message sent from elsewhere stays there until retention removes it); one
    /// already recorded changes nothing.
    pub(super) async fn record_status(
        &mut self,
        tx: &mut dyn Tx,
        ev: &EventItem,
        outcome: &mut Vec<Json>,
    ) -> Result<(), StoreError> {
        self.apply_status(tx, &ev.source, &ev.data, ev.id, true, outcome)
            .await
    }

    /// Applies the statuses that came before the delivery of `message_ref` was recorded.
    pub(super) async fn apply_early_statuses(
        &mut self,
        tx: &mut dyn Tx,
        message_ref: &str,
    ) -> Result<(), StoreError> {
        for (channel, data, event_id) in tx.take_early_statuses(message_ref).await? {
            self.apply_status(tx, &channel, &data, event_id, false, &mut Vec::new())
                .await?;
        }
        Ok(())
    }

    async fn apply_status(
        &mut self,
        tx: &mut dyn Tx,
        channel: &str,
        data: &Json,
        event_id: i64,
        keep_if_early: bool,
        outcome: &mut Vec<Json>,
    ) -> Result<(), StoreError> {
        let (Some(message), Some(status)) = (data["message"].as_str(), data["status"].as_str())
        else {
            return Ok(());
        };
        let now = self.now();
        let error = status_error(&data["error"])
            .or_else(|| (status == "failed").then(|| "no reason given".to_string()));
        let entry = json!({"status": status, "at": now, "timestamp": data["timestamp"],
            "error": data["error"], "event_id": event_id});
        let row_error = error.as_ref().map(|e| format!("{status}: {e}"));
        let ds = DeliveryStatus {
            channel,
            message_ref: message,
            status,
            entry: &entry,
            error: row_error.as_deref(),
        };
        let Some(row) = tx.outbox_status(&ds).await? else {
            if keep_if_early {
                tx.keep_early_status(&ds, data, event_id, now).await?;
            }
            outcome.push(json!({"status": status, "message": message,
                "verdict": "no recorded delivery has this reference yet (kept until one does), or the status is known"}));
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
                "message": message, "error": data["error"], "event_id": event_id, "at": now}),
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
