//! Starting a scenario by hand: the events of a request body (one JSON object, a JSON list
//! of objects, or CSV with a header row), checked before any of them reaches the engine.

use axum::http::StatusCode;
use serde_json::{Map, Value as Json};

use super::ApiError;

/// How the events were sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Format {
    Json,
    Csv,
}

impl Format {
    /// From a `Content-Type`; `None` for one that is neither JSON nor CSV.
    pub(super) fn of(content_type: Option<&str>) -> Option<Format> {
        let Some(ct) = content_type else {
            return Some(Format::Json);
        };
        let mime = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match mime.as_str() {
            "text/csv" => Some(Format::Csv),
            "application/json" | "" => Some(Format::Json),
            m if m.ends_with("+json") => Some(Format::Json),
            _ => None,
        }
    }
}

/// The events in `body`, at most `max`.
pub(super) fn events(body: &[u8], format: Format, max: usize) -> Result<Vec<Json>, ApiError> {
    let events = match format {
        Format::Json => from_json(body)?,
        Format::Csv => from_csv(body)?,
    };
    if events.is_empty() {
        return Err(ApiError::bad_request("no events to start"));
    }
    if events.len() > max {
        return Err(ApiError::bad_request(format!(
            "{} events; max_fan_out is {max}",
            events.len()
        )));
    }
    Ok(events)
}

fn from_json(body: &[u8]) -> Result<Vec<Json>, ApiError> {
    let v: Json = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))?;
    match v {
        Json::Object(_) => Ok(vec![v]),
        Json::Array(items) => {
            if let Some(i) = items.iter().position(|e| !e.is_object()) {
                return Err(ApiError::bad_request(format!(
                    "item {i} of the list is not an object: each event is a JSON object"
                )));
            }
            Ok(items)
        }
        _ => Err(ApiError::bad_request(
            "the body must be an event (a JSON object) or a list of them",
        )),
    }
}

/// One event per row, the header row naming the fields; every value is a text.
fn from_csv(body: &[u8]) -> Result<Vec<Json>, ApiError> {
    // Spreadsheets in languages that write decimal commas separate fields by semicolons:
    // the header row tells which.
    let first = body.split(|b| *b == b'\n').next().unwrap_or_default();
    let count = |c: u8| first.iter().filter(|b| **b == c).count();
    let delimiter = if count(b';') > count(b',') {
        b';'
    } else {
        b','
    };
    let mut r = csv::ReaderBuilder::new()
        .has_headers(true)
        .delimiter(delimiter)
        .from_reader(body);
    let headers: Vec<String> = r
        .headers()
        .map_err(csv_error)?
        .iter()
        .map(|h| h.trim().to_string())
        .collect();
    if let Some(i) = headers.iter().position(String::is_empty) {
        return Err(ApiError::bad_request(format!(
            "CSV line 1: column {} has no name",
            i + 1
        )));
    }
    for (i, h) in headers.iter().enumerate() {
        if headers[..i].contains(h) {
            return Err(ApiError::bad_request(format!(
                "CSV line 1: the column '{h}' appears twice"
            )));
        }
    }
    let mut events = Vec::new();
    for rec in r.records() {
        let rec = rec.map_err(csv_error)?;
        let mut ev = Map::new();
        for (h, v) in headers.iter().zip(rec.iter()) {
            ev.insert(h.clone(), Json::String(v.to_string()));
        }
        events.push(Json::Object(ev));
    }
    Ok(events)
}

fn csv_error(e: csv::Error) -> ApiError {
    let line = e.position().map(|p| p.line());
    let what = match e.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!("{len} fields, but the header row has {expected_len}"),
        csv::ErrorKind::Utf8 { .. } => "not UTF-8 text".to_string(),
        _ => e.to_string(),
    };
    ApiError::new(
        StatusCode::BAD_REQUEST,
        match line {
            Some(l) => format!("CSV line {l}: {what}"),
            None => format!("CSV: {what}"),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(r: Result<Vec<Json>, ApiError>) -> String {
        r.expect_err("refused").message
    }

    #[test]
    fn csv_rows_become_events_and_a_bad_row_names_its_line() {
        let ok = events(b"phone,name\n+1,Ada\n+2,Bob\n", Format::Csv, 10).unwrap();
        assert_eq!(
            ok,
            vec![
                json!({"phone": "+1", "name": "Ada"}),
                json!({"phone": "+2", "name": "Bob"})
            ]
        );
        let bad = err(events(b"phone,name\n+1,Ada\n+2\n", Format::Csv, 10));
        assert_eq!(bad, "CSV line 3: 1 fields, but the header row has 2");
        assert!(err(events(b"a,,b\n1,2,3\n", Format::Csv, 10)).contains("line 1"));
        assert!(err(events(b"a\n", Format::Csv, 10)).contains("no events"));
        // Semicolons, as spreadsheets in Polish or Russian write them; commas inside stay.
        let semi = events(b"phone;name\n+1;Kowalski, Jan\n", Format::Csv, 10).unwrap();
        assert_eq!(semi, vec![json!({"phone": "+1", "name": "Kowalski, Jan"})]);
    }

    #[test]
    fn json_takes_an_object_or_a_list_of_objects_up_to_the_limit() {
        assert_eq!(events(b"{\"a\":1}", Format::Json, 1).unwrap().len(), 1);
        assert_eq!(events(b"[{},{}]", Format::Json, 2).unwrap().len(), 2);
        assert!(err(events(b"[{},{}]", Format::Json, 1)).contains("max_fan_out is 1"));
        assert!(err(events(b"[{},3]", Format::Json, 5)).contains("item 1"));
        assert!(err(events(b"\"x\"", Format::Json, 5)).contains("JSON object"));
        assert!(err(events(b"{", Format::Json, 5)).contains("not JSON"));
        assert_eq!(
            Format::of(Some("text/csv; charset=utf-8")),
            Some(Format::Csv)
        );
        assert_eq!(Format::of(Some("text/plain")), None);
    }
}
