//! The journal pages: runs with filters and search, a run's timeline (each step green, red
//! or grey with its "why"), requests and responses, retry and cancel buttons, scenarios with
//! their counters. Signed in with the admin token, kept in a cookie.

use std::collections::BTreeMap;

use axum::extract::{Form, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use minijinja::context;
use serde_json::Value as Json;

use super::api::{admin_action, find_runs, run_detail, scenarios, RunQuery};
use super::{auth, ApiError, ApiPath, AppState};
use crate::engine::admin::AdminOp;

type Params = BTreeMap<String, String>;

pub fn router(_state: AppState) -> Router<AppState> {
    Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/runs") }))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/runs", get(runs_page))
        .route("/ui/runs/{id}", get(run_page))
        .route("/ui/runs/{id}/retry", post(retry_run))
        .route("/ui/runs/{id}/cancel", post(cancel_run))
        .route("/ui/outbox/{id}/retry", post(retry_outbox))
        .route("/ui/scenarios", get(scenarios_page))
        .route("/ui/scenarios/{id}/graph", get(scenario_graph_page))
        .route("/ui/scenarios/{id}/{action}", post(switch_scenario))
        .route(
            "/ui/scenarios/{id}/start",
            post(super::broadcast::start_page),
        )
        .route("/ui/broadcast", get(super::broadcast::broadcast_page))
}

fn fmt_time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|d| d.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

/// The page language, or a redirect to the sign-in page.
#[expect(
    clippy::result_large_err,
    reason = "the error is the response itself, made once per request"
)]
pub(super) fn guard(
    st: &AppState,
    headers: &HeaderMap,
    params: &Params,
    here: &str,
) -> Result<String, Response> {
    let lang = st
        .pages
        .lang(headers, params.get("lang").map(String::as_str));
    if auth::cookie_ok(st, headers) {
        Ok(lang)
    } else {
        let next: String = url_escape(here);
        Err(Redirect::to(&format!("/ui/login?next={next}")).into_response())
    }
}

fn url_escape(s: &str) -> String {
    serde_urlencoded::to_string([("x", s)])
        .map(|v| v[2..].to_string())
        .unwrap_or_default()
}

async fn login_page(
    State(st): State<AppState>,
    headers: HeaderMap,
    Query(p): Query<Params>,
) -> Response {
    let lang = st.pages.lang(&headers, p.get("lang").map(String::as_str));
    let next = p.get("next").cloned().unwrap_or_else(|| "/ui/runs".into());
    st.pages.render(
        StatusCode::OK,
        "login.html",
        context! { lang, next, bad => false },
    )
}

async fn login(State(st): State<AppState>, headers: HeaderMap, Form(f): Form<Params>) -> Response {
    let lang = st.pages.lang(&headers, None);
    let token = f.get("token").map(String::as_str).unwrap_or("");
    let next = f
        .get("next")
        .filter(|n| n.starts_with("/ui") && !n.starts_with("//"))
        .cloned()
        .unwrap_or_else(|| "/ui/runs".into());
    if !auth::token_ok(&st, token) {
        return st.pages.render(
            StatusCode::UNAUTHORIZED,
            "login.html",
            context! { lang, next, bad => true },
        );
    }
    // The cookie names a session, not the token: it can expire and never reveals it.
    let session = st.sessions.open(st.clock.now_ms());
    let cookie = format!(
        "{}={session}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        auth::COOKIE,
        auth::SESSION_MS / 1000,
        if st.secure_cookies { "; Secure" } else { "" }
    );
    ([(header::SET_COOKIE, cookie)], Redirect::to(&next)).into_response()
}

async fn runs_page(
    State(st): State<AppState>,
    headers: HeaderMap,
    Query(p): Query<Params>,
) -> Response {
    let lang = match guard(&st, &headers, &p, "/ui/runs") {
        Ok(l) => l,
        Err(r) => return r,
    };
    let page = match find_runs(&st, RunQuery::from_form(&p)).await {
        Ok(page) => page,
        Err(e) => return e.into_response(),
    };
    let mut runs: Vec<Json> = Vec::with_capacity(page.runs.len());
    for r in &page.runs {
        let test = match r.event_id {
            Some(e) => started_as_test(&st, e).await,
            None => false,
        };
        runs.push(
            serde_json::json!({"id": r.id, "scenario": r.scenario, "subject": r.subject,
            "status": r.status, "created": fmt_time(r.created_at), "error": r.error, "test": test}),
        );
    }
    let older = page.next_before.map(|b| {
        let mut q = p.clone();
        q.insert("before".into(), b.to_string());
        format!(
            "/ui/runs?{}",
            serde_urlencoded::to_string(&q).unwrap_or_default()
        )
    });
    let cfg = st.cfg();
    let scenarios: Vec<&str> = cfg.scenarios.iter().map(|s| s.id.as_str()).collect();
    let statuses = [
        "running",
        "waiting",
        "sleeping",
        "done",
        "failed",
        "cancelled",
    ];
    st.pages.render(
        StatusCode::OK,
        "runs.html",
        context! { lang, here => "runs", runs, older, scenarios, statuses, filter => p },
    )
}

/// Whether the event was a test start by hand.
async fn started_as_test(st: &AppState, event_id: i64) -> bool {
    matches!(st.store.event(event_id).await, Ok(Some(e))
        if e.kind == crate::engine::admin::MANUAL && e.meta["test"] == true)
}

fn step_class(e: &Json) -> &'static str {
    match e["result"].as_str().unwrap_or("") {
        "error" | "failed" => "error",
        // A sent message the platform reported failed.
        r if r.starts_with("failed:") => "error",
        "skipped" | "cancelled" => "skipped",
        "waiting" | "sleeping" | "sent, awaiting the response" => "parked",
        _ => "ok",
    }
}

async fn run_page(
    State(st): State<AppState>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<i64>,
    Query(p): Query<Params>,
) -> Response {
    let lang = match guard(&st, &headers, &p, &format!("/ui/runs/{id}")) {
        Ok(l) => l,
        Err(r) => return r,
    };
    let d = match run_detail(&st, id).await {
        Ok(d) => d,
        Err(e) => return e.into_response(),
    };
    let pretty = |v: &Json| serde_json::to_string_pretty(v).unwrap_or_default();
    let steps: Vec<Json> = d
        .run
        .journal
        .iter()
        .map(|e| {
            serde_json::json!({
                "class": step_class(e),
                "line": crate::journal::step_line(e),
                "cond": e["if"],
                "seen": e.get("seen").filter(|s| s.as_object().is_some_and(|m| !m.is_empty())).map(pretty),
                "detail": pretty(e),
            })
        })
        .collect();
    let requests: Vec<Json> = d
        .requests
        .iter()
        .map(|o| {
            let failed = o.status == "failed" || o.delivery_status.as_deref() == Some("failed");
            let statuses: Vec<String> = o
                .statuses
                .iter()
                .map(|s| {
                    let at = s["at"].as_i64().map(fmt_time).unwrap_or_default();
                    format!("{} {at}", s["status"].as_str().unwrap_or("?"))
                })
                .collect();
            serde_json::json!({
                "id": o.id, "kind": o.kind, "channel": o.channel, "status": o.status,
                "attempts": o.attempts, "max_attempts": o.max_attempts, "error": o.last_error,
                "delivery": o.delivery_status, "statuses": statuses, "failed": failed,
                "class": match (failed, o.status.as_str()) { (true, _) => "error", (_, "pending") => "parked", _ => "ok" },
                "request": pretty(&o.request),
                "response": o.response.as_ref().map(pretty),
            })
        })
        .collect();
    let current = st.cfg().version_of(&d.run.scenario).map(str::to_string);
    let version = d.run.version.as_deref().map(|h| {
        serde_json::json!({"short": crate::config::live::short(h), "hash": h,
                           "current": current.as_deref() == Some(h)})
    });
    let run = serde_json::json!({
        "id": d.run.id, "scenario": d.run.scenario, "subject": d.run.subject,
        "status": d.run.status, "error": d.run.error, "version": version,
        "created": fmt_time(d.run.created_at), "updated": fmt_time(d.run.updated_at),
    });
    let event = pretty(&d.run.event);
    let notice = p.get("notice").filter(|n| n.starts_with("ui-")).cloned();
    let fanned_out = super::broadcast::fanned_out(&d.run).len();
    // The graph of the version this run follows, with its way through it.
    let sc = crate::reload::scenario_of_run(&st.live, &st.store, &d.run).await;
    let graph = sc.and_then(|sc| {
        use crate::lang::graph;
        let done = d.run.status == crate::store::RunStatus::Done;
        let path = graph::path_of(&d.run.journal, done);
        graph::svg(&graph::graph(&sc), Some(&path)).ok()
    });
    st.pages.render(
        StatusCode::OK,
        "run.html",
        context! { lang, here => "runs", run, steps, requests, event, notice, fanned_out, graph },
    )
}

/// Most recent runs a scenario's graph counts.
const GRAPH_RUNS: i64 = 500;

/// A scenario's graph with how many of its runs took each edge over the last `days` (1, 7 or
/// 30; the latest 500 runs at most).
async fn scenario_graph_page(
    State(st): State<AppState>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
    Query(p): Query<Params>,
) -> Response {
    let lang = match guard(&st, &headers, &p, &format!("/ui/scenarios/{id}/graph")) {
        Ok(l) => l,
        Err(r) => return r,
    };
    let Some(sc) = st.cfg().scenario(&id).cloned() else {
        return ApiError::new(StatusCode::NOT_FOUND, format!("no scenario '{id}'")).into_response();
    };
    let days: i64 = match p.get("days").map(String::as_str) {
        Some("1") => 1,
        Some("30") => 30,
        _ => 7,
    };
    let from = st.clock.now_ms() - days * 24 * 3600 * 1000;
    let filter = crate::store::RunFilter {
        scenario: Some(id.clone()),
        from: Some(from),
        limit: GRAPH_RUNS,
        ..Default::default()
    };
    let runs = match st.store.list_runs(&filter).await {
        Ok(r) => r,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let mut total = crate::lang::graph::Path::default();
    for r in &runs {
        if let Ok(Some(run)) = st.store.run(r.id).await {
            let done = run.status == crate::store::RunStatus::Done;
            total.count(&crate::lang::graph::path_of(&run.journal, done));
        }
    }
    let graph =
        crate::lang::graph::svg(&crate::lang::graph::graph(&sc), Some(&total)).unwrap_or_default();
    st.pages.render(
        StatusCode::OK,
        "scenario_graph.html",
        context! { lang, here => "scenarios", scenario => id, days, runs => runs.len(), graph },
    )
}

/// Signed in: do the action, then go back to `back`.
async fn act(st: &AppState, headers: &HeaderMap, op: AdminOp, back: &str) -> Response {
    if let Err(r) = guard(st, headers, &Params::new(), back) {
        return r;
    }
    if !auth::same_origin(headers) {
        return super::ApiError::new(
            StatusCode::FORBIDDEN,
            "this action must be posted from the journal pages (Origin does not match)",
        )
        .into_response();
    }
    match admin_action(st, op).await {
        Ok(_) => Redirect::to(back).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn retry_run(
    State(st): State<AppState>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<i64>,
) -> Response {
    let back = format!("/ui/runs/{id}?notice=ui-retried");
    act(&st, &headers, AdminOp::RetryRun(id), &back).await
}

async fn cancel_run(
    State(st): State<AppState>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<i64>,
) -> Response {
    act(
        &st,
        &headers,
        AdminOp::CancelRun(id),
        &format!("/ui/runs/{id}"),
    )
    .await
}

async fn retry_outbox(
    State(st): State<AppState>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<i64>,
    Query(p): Query<Params>,
) -> Response {
    let back = match p.get("run").and_then(|r| r.parse::<i64>().ok()) {
        Some(run) => format!("/ui/runs/{run}?notice=ui-retried"),
        None => "/ui/runs".into(),
    };
    act(&st, &headers, AdminOp::RetryOutbox(id), &back).await
}

async fn scenarios_page(
    State(st): State<AppState>,
    headers: HeaderMap,
    Query(p): Query<Params>,
) -> Response {
    let lang = match guard(&st, &headers, &p, "/ui/scenarios") {
        Ok(l) => l,
        Err(r) => return r,
    };
    let list = match scenarios(&st).await {
        Ok(l) => l,
        Err(e) => return e.into_response(),
    };
    let mut scenarios: Vec<Json> = Vec::with_capacity(list.len());
    for s in &list {
        let mut v = serde_json::to_value(s).unwrap_or_default();
        v["last_fired"] = serde_json::json!(s_last(&v).map(fmt_time));
        let id = v["id"].as_str().unwrap_or_default().to_string();
        v["recent"] = serde_json::json!(recent_events(&st, &id).await);
        scenarios.push(v);
    }
    st.pages.render(
        StatusCode::OK,
        "scenarios.html",
        // A fresh token per page: a start form sent twice starts its runs once.
        context! { lang, here => "scenarios", scenarios, once => crate::links::Links::nonce() },
    )
}

/// Events that started the scenario's latest runs, as JSON texts for the start form's picker.
async fn recent_events(st: &AppState, scenario: &str) -> Vec<String> {
    const RECENT: i64 = 5;
    let filter = crate::store::RunFilter {
        scenario: Some(scenario.to_string()),
        limit: RECENT,
        ..Default::default()
    };
    let mut out = Vec::new();
    for r in st.store.list_runs(&filter).await.unwrap_or_default() {
        let Some(Ok(Some(e))) = (match r.event_id {
            Some(id) => Some(st.store.event(id).await),
            None => None,
        }) else {
            continue;
        };
        let text = serde_json::to_string_pretty(&e.data).unwrap_or_default();
        if !out.contains(&text) {
            out.push(text);
        }
    }
    out
}

fn s_last(v: &Json) -> Option<i64> {
    v["stats"]["last_fired"].as_i64()
}

async fn switch_scenario(
    State(st): State<AppState>,
    headers: HeaderMap,
    ApiPath((id, action)): ApiPath<(String, String)>,
) -> Response {
    let on = match action.as_str() {
        "enable" => true,
        "disable" => false,
        _ => return ApiError::new(StatusCode::NOT_FOUND, "no such action").into_response(),
    };
    act(&st, &headers, AdminOp::SetEnabled(id, on), "/ui/scenarios").await
}
