//! The journal pages of starting by hand and of broadcasts: the start form's post (a JSON
//! event or an uploaded CSV file), the page of the runs it started, and the broadcast view,
//! one row per child run (or started run) with its messages' delivery statuses.

use axum::extract::{Multipart, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use minijinja::context;
use serde_json::{json, Value as Json};

use super::api::{known_scenario, start_runs};
use super::start::{events, Format};
use super::{auth, ApiError, ApiPath, AppState};
use crate::store::{OutboxRow, RunRow};

type Params = std::collections::BTreeMap<String, String>;

/// Rows of the broadcast view per page.
const PAGE: usize = 100;

/// The start form: `event` (JSON text), `csv` (a file; wins when not empty), `test`.
pub(super) async fn start_page(
    State(st): State<AppState>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
    multipart: Multipart,
) -> Response {
    let lang = match super::ui::guard(&st, &headers, &Params::new(), "/ui/scenarios") {
        Ok(l) => l,
        Err(r) => return r,
    };
    if !auth::same_origin(&headers) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "this action must be posted from the journal pages (Origin does not match)",
        )
        .into_response();
    }
    match start_from_form(&st, &id, multipart).await {
        Ok(result) => {
            let runs: Vec<String> = result.runs.iter().flatten().map(i64::to_string).collect();
            let broadcast = format!("/ui/broadcast?runs={}", runs.join(","));
            st.pages.render(
                StatusCode::OK,
                "started.html",
                context! { lang, here => "scenarios", scenario => id, test => result.test,
                items => result.items.iter().map(|i| json!(i)).collect::<Vec<_>>(), broadcast },
            )
        }
        Err(e) => {
            let status = e.status;
            st.pages.render(
                status,
                "message.html",
                context! { lang, title => "ui-start-failed", text => e.message },
            )
        }
    }
}

async fn start_from_form(
    st: &AppState,
    id: &str,
    mut multipart: Multipart,
) -> Result<super::api::StartResult, ApiError> {
    known_scenario(st, id)?;
    let mut event = String::new();
    let mut csv = Vec::new();
    let mut test = false;
    let mut once = None;
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|e| ApiError::bad_request(format!("the form could not be read: {e}")))?
    {
        let name = field.name().unwrap_or("").to_string();
        let bytes = field
            .bytes()
            .await
            .map_err(|e| ApiError::bad_request(format!("the form could not be read: {e}")))?;
        match name.as_str() {
            "event" => event = String::from_utf8_lossy(&bytes).into_owned(),
            "csv" => csv = bytes.to_vec(),
            "test" => test = true,
            "once" => once = Some(String::from_utf8_lossy(&bytes).into_owned()),
            _ => {}
        }
    }
    let max = st.cfg().gateway.max_fan_out as usize;
    let list = if csv.iter().any(|b| !b.is_ascii_whitespace()) {
        events(&csv, Format::Csv, max)?
    } else {
        events(event.as_bytes(), Format::Json, max)?
    };
    // The form's one-time token: sending the same form again (a reload, a double click)
    // starts nothing new.
    start_runs(st, id, list, test, once.filter(|o| !o.is_empty())).await
}

/// `?run=<id>`: the runs a run's `call … for_each` started; `?runs=1,2,3`: those runs.
pub(super) async fn broadcast_page(
    State(st): State<AppState>,
    headers: HeaderMap,
    Query(p): Query<Params>,
) -> Response {
    let here = format!(
        "/ui/broadcast?{}",
        serde_urlencoded::to_string(&p).unwrap_or_default()
    );
    let lang = match super::ui::guard(&st, &headers, &p, &here) {
        Ok(l) => l,
        Err(r) => return r,
    };
    // Past the last page is the last page's neighbour: nothing, not an overflow.
    let page: usize = p
        .get("page")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
        .min(1_000_000);
    match broadcast_rows(&st, &p, page).await {
        Ok((parent, rows, total)) => {
            let pages = total.div_ceil(PAGE);
            let link = |n: usize| {
                let mut q = p.clone();
                q.insert("page".into(), n.to_string());
                format!(
                    "/ui/broadcast?{}",
                    serde_urlencoded::to_string(&q).unwrap_or_default()
                )
            };
            let newer = (page > 0).then(|| link(page - 1));
            let older = (page + 1 < pages).then(|| link(page + 1));
            st.pages.render(
                StatusCode::OK,
                "broadcast.html",
                context! { lang, here => "runs", parent, rows, total, newer, older },
            )
        }
        Err(e) => e.into_response(),
    }
}

/// One row per event the parent called, or per listed run.
enum Member {
    Event(i64),
    Run(i64),
}

async fn broadcast_rows(
    st: &AppState,
    p: &Params,
    page: usize,
) -> Result<(Option<i64>, Vec<Json>, usize), ApiError> {
    let (parent, members): (Option<i64>, Vec<Member>) = if let Some(run) = p.get("run") {
        let id: i64 = run
            .parse()
            .map_err(|_| ApiError::bad_request(format!("run must be a number, not '{run}'")))?;
        let parent = st
            .store
            .run(id)
            .await?
            .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no run {id}")))?;
        (
            Some(id),
            fanned_out(&parent).into_iter().map(Member::Event).collect(),
        )
    } else {
        let list = p.get("runs").map(String::as_str).unwrap_or("");
        let mut runs = Vec::new();
        for r in list.split(',').filter(|r| !r.trim().is_empty()) {
            runs.push(Member::Run(r.trim().parse().map_err(|_| {
                ApiError::bad_request(format!(
                    "runs must be run ids separated by commas, not '{r}'"
                ))
            })?));
        }
        (None, runs)
    };
    let total = members.len();
    let mut rows = Vec::new();
    for m in members.iter().skip(page * PAGE).take(PAGE) {
        let run = match m {
            Member::Run(id) => st.store.run(*id).await?,
            Member::Event(e) => st.store.runs_for_event(*e).await?.into_iter().next(),
        };
        rows.push(match run {
            Some(run) => {
                let messages = st.store.outbox_for_run(run.id).await?;
                row(&run, &messages)
            }
            None => json!({"run": null, "status": "not started"}),
        });
    }
    Ok((parent, rows, total))
}

/// The child events a run's fan-outs stored, in order.
pub(super) fn fanned_out(run: &RunRow) -> Vec<i64> {
    run.journal
        .iter()
        .filter(|e| e["action"] == "call")
        .filter_map(|e| e["event_ids"].as_array())
        .flatten()
        .filter_map(Json::as_i64)
        .collect()
}

fn row(run: &RunRow, messages: &[OutboxRow]) -> Json {
    let messages: Vec<Json> = messages
        .iter()
        .filter(|o| o.kind == "send")
        .map(|o| {
            let mut seen: Vec<&str> = vec![o.status.as_str()];
            for s in &o.statuses {
                if let Some(s) = s["status"].as_str() {
                    if !seen.contains(&s) {
                        seen.push(s);
                    }
                }
            }
            json!({"channel": o.channel, "to": o.request["to"], "status": o.status,
                "delivery": o.delivery_status, "statuses": seen,
                "failed": o.status == "failed" || o.delivery_status.as_deref() == Some("failed")})
        })
        .collect();
    let replied = run
        .journal
        .iter()
        .any(|e| e["result"] == "answered" || e["reply"].is_string());
    json!({"run": run.id, "scenario": run.scenario, "subject": run.subject,
        "status": run.status, "error": run.error, "messages": messages, "replied": replied})
}
