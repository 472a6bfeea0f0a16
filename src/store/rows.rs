//! What both SQL stores share: JSON columns kept as text, the row mappers (one macro, as
//! the row types differ), and writes buffered until a transaction needs them.

use serde_json::Value as Json;

use super::*;

pub(super) fn parse_json(s: &str) -> Result<Json> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(super) fn opt_json(s: Option<String>) -> Result<Option<Json>> {
    s.map(|s| parse_json(&s)).transpose()
}

pub(super) fn run_status(s: &str) -> Result<RunStatus> {
    RunStatus::parse(s).ok_or_else(|| StoreError::Corrupt(format!("run status '{s}'")))
}

/// Defines `event_row`, `run_row`, `timer_row`, `summary_row`, `offer_row`, `offer_message_row`
/// and `outbox_row`
/// for a driver's row type; both schemas name and type the columns alike.
macro_rules! row_mappers {
    ($row:ty) => {
        fn event_row(r: &$row) -> Result<EventRow> {
            Ok(EventRow {
                id: r.get("id"),
                kind: r.get("kind"),
                source: r.get("source"),
                status: r.get("status"),
                data: parse_json(r.get("data"))?,
                meta: parse_json(r.get("meta"))?,
                outcome: opt_json(r.get("outcome"))?,
                error: r.get("error"),
                received_at: r.get("received_at"),
            })
        }

        fn run_row(r: &$row) -> Result<RunRow> {
            let vars = match parse_json(r.get("vars"))? {
                Json::Object(m) => m,
                _ => Map::new(),
            };
            let journal = match parse_json(r.get("journal"))? {
                Json::Array(a) => a,
                _ => Vec::new(),
            };
            Ok(RunRow {
                id: r.get("id"),
                scenario: r.get("scenario"),
                subject: r.get("subject"),
                status: run_status(r.get("status"))?,
                pc: r.get("pc"),
                vars,
                journal,
                event_id: r.get("event_id"),
                event: parse_json(r.get("event"))?,
                depth: r.get("depth"),
                error: r.get("error"),
                created_at: r.get("created_at"),
                updated_at: r.get("updated_at"),
                version: r.get("version"),
            })
        }

        fn timer_row(r: &$row) -> TimerRow {
            TimerRow {
                id: r.get("id"),
                run_id: r.get("run_id"),
                kind: r.get("kind"),
                due_at: r.get("due_at"),
                scenario: r.get("scenario"),
                subject: r.get("subject"),
                key: r.get("key"),
            }
        }

        fn summary_row(r: &$row) -> Result<RunSummary> {
            Ok(RunSummary {
                id: r.get("id"),
                scenario: r.get("scenario"),
                subject: r.get("subject"),
                status: run_status(r.get("status"))?,
                pc: r.get("pc"),
                event_id: r.get("event_id"),
                error: r.get("error"),
                created_at: r.get("created_at"),
                updated_at: r.get("updated_at"),
            })
        }

        fn offer_row(r: &$row) -> Result<OfferRow> {
            let excluded: String = r.get("excluded");
            Ok(OfferRow {
                id: r.get("id"),
                run_id: r.get("run_id"),
                step: r.get("step"),
                channel: r.get("channel"),
                chat_id: r.get("chat_id"),
                text: r.get("text"),
                status: r.get("status"),
                excluded: serde_json::from_str(&excluded).unwrap_or_default(),
                winner: opt_json(r.get("winner"))?,
            })
        }

        fn offer_message_row(r: &$row) -> OfferMessage {
            OfferMessage {
                channel: r.get("channel"),
                chat_id: r.get("chat_id"),
                message_id: r.get("message_id"),
                outbox_id: r.get("outbox_id"),
                text: r.get("text"),
                lang: r.get("lang"),
            }
        }

        fn outbox_row(r: &$row) -> Result<OutboxRow> {
            Ok(OutboxRow {
                id: r.get("id"),
                run_id: r.get("run_id"),
                step: r.get("step"),
                kind: r.get("kind"),
                channel: r.get("channel"),
                request: parse_json(r.get("request"))?,
                status: r.get("status"),
                attempts: r.get("attempts"),
                max_attempts: r.get("max_attempts"),
                timeout_ms: r.get("timeout_ms"),
                next_attempt_at: r.get("next_attempt_at"),
                resume: r.get::<i64, _>("resume") != 0,
                response: opt_json(r.get("response"))?,
                last_error: r.get("last_error"),
                message_ref: r.get("message_ref"),
                delivery_status: r.get("delivery_status"),
                statuses: match opt_json(r.get("statuses"))? {
                    Some(Json::Array(a)) => a,
                    _ => Vec::new(),
                },
            })
        }
    };
}
pub(super) use row_mappers;

/// Row counts per multi-row statement: few distinct statements, so they stay prepared.
pub(super) const CHUNKS: [usize; 4] = [64, 16, 4, 1];

/// Splits `rows` into chunks of the sizes in `CHUNKS`.
pub(super) fn chunks<T>(mut rows: &[T]) -> impl Iterator<Item = &[T]> {
    std::iter::from_fn(move || {
        let size = CHUNKS.into_iter().find(|c| *c <= rows.len())?;
        let (head, tail) = rows.split_at(size);
        rows = tail;
        Some(head)
    })
}

/// A run as it will be written: its JSON columns already serialized.
pub(super) struct SavedRun {
    pub(super) id: i64,
    pub(super) scenario: String,
    pub(super) subject: Option<String>,
    pub(super) status: RunStatus,
    pub(super) pc: i64,
    pub(super) vars: String,
    pub(super) journal: String,
    pub(super) event_id: Option<i64>,
    pub(super) event: String,
    pub(super) depth: i64,
    pub(super) error: Option<String>,
    pub(super) created_at: i64,
    pub(super) updated_at: i64,
    pub(super) version: Option<String>,
}

impl SavedRun {
    pub(super) fn new(r: &RunRow) -> SavedRun {
        SavedRun {
            id: r.id,
            scenario: r.scenario.clone(),
            subject: r.subject.clone(),
            status: r.status,
            pc: r.pc,
            vars: serde_json::to_string(&r.vars).unwrap_or_else(|_| "{}".into()),
            journal: serde_json::to_string(&r.journal).unwrap_or_else(|_| "[]".into()),
            event_id: r.event_id,
            event: r.event.to_string(),
            depth: r.depth,
            error: r.error.clone(),
            created_at: r.created_at,
            updated_at: r.updated_at,
            version: r.version.clone(),
        }
    }

    pub(super) fn row(&self) -> Result<RunRow> {
        Ok(RunRow {
            id: self.id,
            scenario: self.scenario.clone(),
            subject: self.subject.clone(),
            status: self.status,
            pc: self.pc,
            vars: serde_json::from_str(&self.vars)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            journal: serde_json::from_str(&self.journal)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            event_id: self.event_id,
            event: parse_json(&self.event)?,
            depth: self.depth,
            error: self.error.clone(),
            created_at: self.created_at,
            updated_at: self.updated_at,
            version: self.version.clone(),
        })
    }
}

/// An event stored by a batch's transaction, written at its commit with the status it has
/// by then: one that the batch also processed goes in finished, not pending and then updated.
pub(super) struct ArrivedEvent {
    pub(super) id: i64,
    pub(super) kind: String,
    pub(super) source: String,
    pub(super) status: String,
    pub(super) data: String,
    pub(super) meta: String,
    pub(super) error: Option<String>,
    pub(super) outcome: Option<String>,
    pub(super) received_at: i64,
    pub(super) processed_at: Option<i64>,
}

impl ArrivedEvent {
    pub(super) fn new(id: i64, ev: &NewEvent) -> ArrivedEvent {
        ArrivedEvent {
            id,
            kind: ev.kind.clone(),
            source: ev.source.clone(),
            status: ev.status().to_string(),
            data: ev.data.to_string(),
            meta: ev.meta.to_string(),
            error: ev.rejected.clone(),
            outcome: None,
            received_at: ev.received_at,
            processed_at: None,
        }
    }
}

pub(super) struct FinishedEvent {
    pub(super) id: i64,
    pub(super) status: String,
    pub(super) outcome: String,
    pub(super) now: i64,
}

pub(super) struct FinishedOutbox {
    pub(super) id: i64,
    pub(super) status: String,
    pub(super) attempts: i64,
    pub(super) response: Option<String>,
    pub(super) error: Option<String>,
    pub(super) now: i64,
    /// The reference of the message a delivered row sent.
    pub(super) message_ref: Option<String>,
}
