//! The admin API under `/api` (JSON, bearer token), described by `/api/openapi.json`.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json_;
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::reload::Reloaded;

use super::{ApiError, ApiJson, ApiPath, ApiQuery, AppState};
use crate::config::Trigger;
use crate::engine::admin::{AdminError, AdminOp, AdminReply};
use crate::engine::Work;
use crate::store::{
    EventFilter, EventRow, OutboxRow, RunFilter, RunRow, RunStatus, RunSummary, ScenarioStats,
    Suppression, TimerRow, WaitRow,
};

pub fn router(state: AppState) -> Router<AppState> {
    let protected = Router::new()
        .route("/api/events", get(list_events))
        .route("/api/events/{id}", get(get_event))
        .route("/api/runs", get(list_runs))
        .route("/api/runs/{id}", get(get_run))
        .route("/api/runs/{id}/retry", post(retry_run))
        .route("/api/runs/{id}/cancel", post(cancel_run))
        .route("/api/outbox/{id}/retry", post(retry_outbox))
        .route("/api/scenarios", get(list_scenarios))
        .route("/api/config", get(config_status))
        .route("/api/config/reload", post(reload_config))
        .route("/api/scenarios/{id}/enable", post(enable_scenario))
        .route("/api/scenarios/{id}/disable", post(disable_scenario))
        .route("/api/scenarios/{id}/start", post(start_scenario))
        .route("/api/globals", get(list_globals))
        .route(
            "/api/globals/{name}",
            axum::routing::put(put_global).delete(delete_global),
        )
        .route("/api/timers", get(list_timers))
        .route("/api/suppressions", get(list_suppressions))
        .route(
            "/api/suppressions/{channel}/{address}",
            axum::routing::delete(delete_suppression),
        )
        .layer(axum::middleware::from_fn_with_state(
            state,
            super::auth::require_bearer,
        ));
    Router::new()
        .route("/api/openapi.json", get(openapi))
        .merge(protected)
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Switchboard admin API", description = "Events, runs, scenarios, variables and timers of a Switchboard gateway."),
    paths(list_events, get_event, list_runs, get_run, retry_run, cancel_run, retry_outbox,
          list_scenarios, enable_scenario, disable_scenario, start_scenario, list_globals, put_global,
          delete_global, list_timers, list_suppressions, delete_suppression, config_status,
          reload_config),
    components(schemas(ErrorBody, EventRow, RunRow, RunSummary, RunStatus, OutboxRow, TimerRow,
                        WaitRow, ScenarioStats, ScenarioView, RunPage, EventPage, EventDetail,
                        RunDetail, ActionResult, TimersPage, EventStatus, Suppression,
                        SuppressionsPage, StartResult, StartItem, EventsBody, CsvEvents,
                        Reloaded, ReloadRefused, ConfigStatus, OlderVersion)),
    modifiers(&Bearer),
    security(("bearer" = []))
)]
struct ApiDoc;

struct Bearer;

impl utoipa::Modify for Bearer {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

pub fn openapi_document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(openapi_document())
}

#[derive(Serialize, ToSchema)]
struct ErrorBody {
    /// Why the request was refused.
    error: String,
}

const MAX_LIMIT: i64 = 500;

fn limit(l: Option<i64>) -> Result<i64, ApiError> {
    match l {
        None => Ok(50),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::bad_request(format!(
            "limit must be between 1 and {MAX_LIMIT}, not {n}"
        ))),
    }
}

/// An RFC 3339 time as Unix milliseconds.
fn time(name: &str, v: &Option<String>) -> Result<Option<i64>, ApiError> {
    let Some(v) = v else { return Ok(None) };
    chrono::DateTime::parse_from_rfc3339(v)
        .map(|d| Some(d.timestamp_millis()))
        .map_err(|_| {
            ApiError::bad_request(format!(
                "{name} must be an RFC 3339 time like 2026-01-31T09:00:00Z, not '{v}'"
            ))
        })
}

const SECRET_WORDS: [&str; 5] = ["authorization", "token", "secret", "cookie", "api-key"];

/// An outbox row as the operator sees it: secret headers replaced.
fn redacted(mut row: OutboxRow) -> OutboxRow {
    if let Some(headers) = row.request.get_mut("headers").and_then(Json_::as_array_mut) {
        for h in headers {
            let secret = h[0]
                .as_str()
                .map(|k| k.to_ascii_lowercase())
                .is_some_and(|k| SECRET_WORDS.iter().any(|w| k.contains(w)));
            if secret {
                h[1] = Json_::String("***".into());
            }
        }
    }
    row
}

/// Hands an operator action to the engine and waits until it committed.
pub(super) async fn admin_action(st: &AppState, op: AdminOp) -> Result<Json_, ApiError> {
    let (reply, rx) = AdminReply::new();
    st.engine
        .send(Work::Admin(op, reply))
        .map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the gateway is stopping"))?;
    match rx.await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(AdminError::NotFound(m))) => Err(ApiError::new(StatusCode::NOT_FOUND, m)),
        Ok(Err(AdminError::Conflict(m))) => Err(ApiError::new(StatusCode::CONFLICT, m)),
        Ok(Err(AdminError::Invalid(m))) => Err(ApiError::bad_request(m)),
        Err(_) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the action was not committed; try again",
        )),
    }
}

async fn admin(st: &AppState, op: AdminOp) -> Result<Json<ActionResult>, ApiError> {
    Ok(Json(ActionResult {
        result: admin_action(st, op).await?,
    }))
}

#[derive(Serialize, ToSchema)]
struct ActionResult {
    /// What the action did.
    #[schema(value_type = Object)]
    result: Json_,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct EventQuery {
    /// Hook name or scenario id.
    source: Option<String>,
    status: Option<EventStatus>,
    /// Text searched in the event data.
    q: Option<String>,
    /// Only events with a smaller id.
    before: Option<i64>,
    /// 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
}

#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
enum EventStatus {
    Pending,
    Done,
    Rejected,
}

impl EventStatus {
    fn as_str(self) -> &'static str {
        match self {
            EventStatus::Pending => "pending",
            EventStatus::Done => "done",
            EventStatus::Rejected => "rejected",
        }
    }
}

#[derive(Serialize, ToSchema)]
struct EventPage {
    events: Vec<EventRow>,
}

#[utoipa::path(get, path = "/api/events", params(EventQuery),
    responses((status = 200, body = EventPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn list_events(
    State(st): State<AppState>,
    ApiQuery(q): ApiQuery<EventQuery>,
) -> Result<Json<EventPage>, ApiError> {
    let events = st
        .store
        .list_events(&EventFilter {
            source: q.source,
            status: q.status.map(|s| s.as_str().to_string()),
            q: q.q.filter(|t| !t.is_empty()),
            before: q.before,
            limit: limit(q.limit)?,
        })
        .await?;
    Ok(Json(EventPage { events }))
}

#[derive(Serialize, ToSchema)]
struct EventDetail {
    event: EventRow,
    runs: Vec<RunRow>,
}

#[utoipa::path(get, path = "/api/events/{id}", params(("id" = i64, Path, description = "Event id")),
    responses((status = 200, body = EventDetail), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_event(
    State(st): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<EventDetail>, ApiError> {
    let event = st
        .store
        .event(id)
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no event {id}")))?;
    let runs = st.store.runs_for_event(id).await?;
    Ok(Json(EventDetail { event, runs }))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct RunQuery {
    scenario: Option<String>,
    status: Option<RunStatus>,
    /// Started at or after this time.
    #[param(value_type = Option<String>, format = DateTime)]
    from: Option<String>,
    /// Started before this time.
    #[param(value_type = Option<String>, format = DateTime)]
    to: Option<String>,
    /// Text searched in the event data and the subject (a phone number, a deal id).
    q: Option<String>,
    /// Only runs with a smaller id.
    before: Option<i64>,
    /// 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub(super) struct RunPage {
    pub(super) runs: Vec<RunSummary>,
    /// Pass as `before` for the next page.
    pub(super) next_before: Option<i64>,
}

pub(super) async fn find_runs(st: &AppState, q: RunQuery) -> Result<RunPage, ApiError> {
    let limit = limit(q.limit)?;
    let runs = st
        .store
        .list_runs(&RunFilter {
            scenario: q.scenario.filter(|s| !s.is_empty()),
            status: q.status,
            from: time("from", &q.from)?,
            to: time("to", &q.to)?,
            q: q.q.filter(|t| !t.is_empty()),
            before: q.before,
            limit,
        })
        .await?;
    let next_before = (runs.len() as i64 == limit)
        .then(|| runs.last().map(|r| r.id))
        .flatten();
    Ok(RunPage { runs, next_before })
}

impl RunQuery {
    pub(super) fn from_form(f: &BTreeMap<String, String>) -> RunQuery {
        let get = |k: &str| f.get(k).cloned().filter(|v| !v.is_empty());
        RunQuery {
            scenario: get("scenario"),
            status: get("status").and_then(|s| RunStatus::parse(&s)),
            from: get("from"),
            to: get("to"),
            q: get("q"),
            before: get("before").and_then(|b| b.parse().ok()),
            limit: get("limit").and_then(|b| b.parse().ok()),
        }
    }
}

#[utoipa::path(get, path = "/api/runs", params(RunQuery),
    responses((status = 200, body = RunPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn list_runs(
    State(st): State<AppState>,
    ApiQuery(q): ApiQuery<RunQuery>,
) -> Result<Json<RunPage>, ApiError> {
    Ok(Json(find_runs(&st, q).await?))
}

#[derive(Serialize, ToSchema)]
pub(super) struct RunDetail {
    /// The run with its step journal: each step's verdict with the values its condition saw.
    pub(super) run: RunRow,
    /// Messages and requests the run sent, with responses (secret headers redacted).
    pub(super) requests: Vec<OutboxRow>,
    pub(super) event: Option<EventRow>,
}

pub(super) async fn run_detail(st: &AppState, id: i64) -> Result<RunDetail, ApiError> {
    let run = st
        .store
        .run(id)
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no run {id}")))?;
    let requests = st
        .store
        .outbox_for_run(id)
        .await?
        .into_iter()
        .map(redacted)
        .collect();
    let event = match run.event_id {
        Some(e) => st.store.event(e).await?,
        None => None,
    };
    Ok(RunDetail {
        run,
        requests,
        event,
    })
}

#[utoipa::path(get, path = "/api/runs/{id}", params(("id" = i64, Path, description = "Run id")),
    responses((status = 200, body = RunDetail), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_run(
    State(st): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<RunDetail>, ApiError> {
    Ok(Json(run_detail(&st, id).await?))
}

#[utoipa::path(post, path = "/api/runs/{id}/retry", params(("id" = i64, Path, description = "Run id")),
    responses((status = 200, body = ActionResult, description = "The failed step (or its request) runs again"),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn retry_run(
    State(st): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<ActionResult>, ApiError> {
    admin(&st, AdminOp::RetryRun(id)).await
}

#[utoipa::path(post, path = "/api/runs/{id}/cancel", params(("id" = i64, Path, description = "Run id")),
    responses((status = 200, body = ActionResult), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn cancel_run(
    State(st): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<ActionResult>, ApiError> {
    admin(&st, AdminOp::CancelRun(id)).await
}

#[utoipa::path(post, path = "/api/outbox/{id}/retry", params(("id" = i64, Path, description = "Outbox row id")),
    responses((status = 200, body = ActionResult), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn retry_outbox(
    State(st): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<ActionResult>, ApiError> {
    admin(&st, AdminOp::RetryOutbox(id)).await
}

#[derive(Serialize, ToSchema)]
pub(super) struct ScenarioView {
    id: String,
    description: Option<String>,
    enabled: bool,
    /// `webhook:<name>`, `schedule:<cron>`, `call` or `link`.
    trigger: String,
    file: String,
    /// The SHA-256 of the file's text that new runs start with.
    version: Option<String>,
    stats: ScenarioStats,
}

pub(super) async fn scenarios(st: &AppState) -> Result<Vec<ScenarioView>, ApiError> {
    let mut stats: BTreeMap<String, ScenarioStats> = st
        .store
        .scenario_stats()
        .await?
        .into_iter()
        .map(|s| (s.scenario.clone(), s))
        .collect();
    let cfg = st.cfg();
    Ok(cfg
        .scenarios
        .iter()
        .map(|sc| ScenarioView {
            version: cfg.version_of(&sc.id).map(str::to_string),
            id: sc.id.clone(),
            description: sc.description.clone(),
            enabled: sc.enabled(),
            trigger: match &sc.trigger {
                Trigger::Webhook(h) => format!("webhook:{h}"),
                Trigger::Schedule { cron, tz } => format!("schedule:{cron} ({tz})"),
                Trigger::Call => "call".into(),
                Trigger::Link => "link".into(),
                Trigger::Message(c) => format!("message:{c}"),
                Trigger::Status(c) => format!("status:{c}"),
                Trigger::Failed(ids) => format!(
                    "failed:{}",
                    ids.as_deref().unwrap_or(&["*".into()]).join(",")
                ),
                Trigger::Unmatched(kind) => format!("unmatched:{}", kind.as_deref().unwrap_or("*")),
                Trigger::Click { channel, button } => match button {
                    Some(b) => format!("click:{channel}:{b}"),
                    None => format!("click:{channel}"),
                },
            },
            file: sc.file.display().to_string(),
            stats: stats.remove(&sc.id).unwrap_or_else(|| ScenarioStats {
                scenario: sc.id.clone(),
                ..Default::default()
            }),
        })
        .collect())
}

/// The config being served and the last refused reload.
#[derive(Serialize, ToSchema)]
struct ConfigStatus {
    /// The config folder.
    dir: String,
    /// When the served config was loaded (RFC 3339).
    loaded_at: Option<String>,
    scenarios: usize,
    /// Earlier versions of scenarios that unfinished runs follow, as compiled here.
    older_versions: Vec<OlderVersion>,
    /// The last reload refused since then: its errors (`file:line:col: message`).
    refused: Option<ReloadRefused>,
}

#[derive(Serialize, ToSchema)]
struct OlderVersion {
    scenario: String,
    /// The SHA-256 of the file's text.
    version: String,
}

/// A reload that was refused: the running config stays.
#[derive(Serialize, ToSchema)]
struct ReloadRefused {
    error: String,
    /// RFC 3339.
    refused_at: Option<String>,
    errors: Vec<String>,
}

fn rfc3339(ms: i64) -> Option<String> {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

fn refused_body(r: crate::config::live::Refusal) -> ReloadRefused {
    ReloadRefused {
        error: "the config was not reloaded; the running one stays".into(),
        refused_at: rfc3339(r.at_ms),
        errors: r.errors,
    }
}

#[utoipa::path(get, path = "/api/config",
    responses((status = 200, body = ConfigStatus), (status = 401, body = ErrorBody)))]
async fn config_status(State(st): State<AppState>) -> Json<ConfigStatus> {
    let cfg = st.cfg();
    Json(ConfigStatus {
        dir: cfg.dir.display().to_string(),
        loaded_at: rfc3339(st.live.loaded_at()),
        scenarios: cfg.scenarios.len(),
        older_versions: st
            .live
            .older_versions()
            .into_iter()
            .map(|(version, scenario)| OlderVersion { scenario, version })
            .collect(),
        refused: st.live.refused().map(refused_body),
    })
}

/// Loads the config folder again (as SIGHUP does). A broken config is refused with its
/// errors and the running one stays; runs keep the version of their scenario they started
/// with.
#[utoipa::path(post, path = "/api/config/reload",
    responses((status = 200, body = Reloaded), (status = 401, body = ErrorBody),
              (status = 422, body = ReloadRefused)))]
async fn reload_config(State(st): State<AppState>) -> axum::response::Response {
    use axum::response::IntoResponse;
    match st.reloader.reload().await {
        Ok(r) => Json(r).into_response(),
        Err(r) => (
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            Json(refused_body(r)),
        )
            .into_response(),
    }
}

#[utoipa::path(get, path = "/api/scenarios",
    responses((status = 200, body = Vec<ScenarioView>), (status = 401, body = ErrorBody)))]
async fn list_scenarios(State(st): State<AppState>) -> Result<Json<Vec<ScenarioView>>, ApiError> {
    Ok(Json(scenarios(&st).await?))
}

#[utoipa::path(post, path = "/api/scenarios/{id}/enable", params(("id" = String, Path, description = "Scenario id")),
    responses((status = 200, body = ActionResult), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn enable_scenario(
    State(st): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<ActionResult>, ApiError> {
    admin(&st, AdminOp::SetEnabled(id, true)).await
}

#[utoipa::path(post, path = "/api/scenarios/{id}/disable", params(("id" = String, Path, description = "Scenario id")),
    responses((status = 200, body = ActionResult), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn disable_scenario(
    State(st): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<ActionResult>, ApiError> {
    admin(&st, AdminOp::SetEnabled(id, false)).await
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct StartQuery {
    /// A test start: said in the run's journal and the runs list, `meta.test` in templates.
    test: Option<bool>,
}

/// One event (an object) or a non-empty list of them.
struct EventsBody;

impl utoipa::PartialSchema for EventsBody {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Type};
        let one = ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some("One event"));
        let many = ArrayBuilder::new()
            .items(ObjectBuilder::new().schema_type(Type::Object))
            .min_items(Some(1))
            .description(Some("Events, each a run"));
        OneOfBuilder::new().item(one).item(many).into()
    }
}

impl ToSchema for EventsBody {}

/// CSV: a header row naming the fields, then one event per row (at least one).
struct CsvEvents;

impl utoipa::PartialSchema for CsvEvents {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(
                r#"^[^,\n\r"]*[^,\n\r"\s][^,\n\r"]*(\n[^,\n\r"]+)+\n?$"#,
            ))
            .description(Some(
                "A header row naming the fields, then one event per row",
            ))
            .into()
    }
}

impl ToSchema for CsvEvents {}

/// The runs a start by hand began, in the order of its events.
#[derive(Serialize, Deserialize, ToSchema)]
pub(super) struct StartResult {
    pub(super) scenario: String,
    pub(super) test: bool,
    /// Per event, its run's id, or null where none started.
    pub(super) runs: Vec<Option<i64>>,
    pub(super) items: Vec<StartItem>,
}

/// What became of one event.
#[derive(Serialize, Deserialize, ToSchema)]
pub(super) struct StartItem {
    /// Its position in the body (0 = the first event or CSV row).
    pub(super) index: usize,
    /// The stored event; none when an earlier request with the same `Idempotency-Key`
    /// stored it.
    #[serde(default)]
    pub(super) event_id: Option<i64>,
    pub(super) started: bool,
    pub(super) run: Option<i64>,
    /// The run's status once the request was answered.
    #[serde(default)]
    pub(super) status: Option<RunStatus>,
    /// Why no run started: the guard was false, a limit, the scenario is off.
    #[serde(default)]
    pub(super) why: Option<String>,
}

/// Starts `scenario` once per event, answered once committed.
pub(super) async fn start_runs(
    st: &AppState,
    scenario: &str,
    events: Vec<Json_>,
    test: bool,
    key: Option<String>,
) -> Result<StartResult, ApiError> {
    let op = AdminOp::Start {
        scenario: scenario.to_string(),
        events,
        test,
        key,
    };
    serde_json::from_value(admin_action(st, op).await?).map_err(ApiError::internal)
}

pub(super) fn known_scenario(st: &AppState, id: &str) -> Result<(), ApiError> {
    match st.cfg().scenario(id) {
        Some(_) => Ok(()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no scenario '{id}'"),
        )),
    }
}

#[utoipa::path(post, path = "/api/scenarios/{id}/start",
    params(("id" = String, Path, description = "Scenario id"), StartQuery,
        ("Idempotency-Key" = Option<String>, Header, description = "Sent again with the same key, the request starts nothing new (its items say so)")),
    request_body(description = "One event (a JSON object), a list of events (a JSON array of objects, at most `max_fan_out`) or CSV (`text/csv`: a header row naming the fields, one event per row)",
        content((EventsBody = "application/json"), (CsvEvents = "text/csv"))),
    responses((status = 200, body = StartResult, description = "The runs, in the order of the events; guards and limits apply as to any event"),
              (status = 400, body = ErrorBody, description = "A malformed body (a bad CSV row is named by its line) or too many events"),
              (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 415, body = ErrorBody)))]
async fn start_scenario(
    State(st): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<StartQuery>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<StartResult>, ApiError> {
    known_scenario(&st, &id)?;
    let ct = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let format = super::start::Format::of(ct).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send events as JSON (application/json) or CSV (text/csv)",
        )
    })?;
    let events = super::start::events(&body, format, st.cfg().gateway.max_fan_out as usize)?;
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(String::from);
    Ok(Json(
        start_runs(&st, &id, events, q.test.unwrap_or(false), key).await?,
    ))
}

#[utoipa::path(get, path = "/api/globals",
    responses((status = 200, description = "Global variables by name", body = Object), (status = 401, body = ErrorBody)))]
async fn list_globals(
    State(st): State<AppState>,
) -> Result<Json<serde_json::Map<String, Json_>>, ApiError> {
    Ok(Json(st.store.globals().await?))
}

fn check_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "'{name}' is not a variable name (letters, digits and _, not starting with a digit, at most 64)"
        )))
    }
}

/// A global variable's name.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
struct GlobalName {
    /// Letters, digits and `_`, not starting with a digit.
    #[param(pattern = "^[A-Za-z_][A-Za-z0-9_]{0,63}$")]
    name: String,
}

#[utoipa::path(put, path = "/api/globals/{name}", params(GlobalName),
    request_body(content = serde_json::Value, description = "The new value (any JSON)"),
    responses((status = 200, body = ActionResult), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn put_global(
    State(st): State<AppState>,
    ApiPath(GlobalName { name }): ApiPath<GlobalName>,
    ApiJson(value): ApiJson<Json_>,
) -> Result<Json<ActionResult>, ApiError> {
    check_name(&name)?;
    admin(&st, AdminOp::SetGlobal(name, value)).await
}

#[utoipa::path(delete, path = "/api/globals/{name}", params(GlobalName),
    responses((status = 200, body = ActionResult), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn delete_global(
    State(st): State<AppState>,
    ApiPath(GlobalName { name }): ApiPath<GlobalName>,
) -> Result<Json<ActionResult>, ApiError> {
    check_name(&name)?;
    admin(&st, AdminOp::DeleteGlobal(name)).await
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct TimerQuery {
    /// 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
}

#[derive(Serialize, ToSchema)]
struct TimersPage {
    /// Pending sleeps and wait timeouts, soonest first.
    timers: Vec<TimerRow>,
    /// Runs parked until a matching event arrives.
    waits: Vec<WaitRow>,
}

#[utoipa::path(get, path = "/api/timers", params(TimerQuery),
    responses((status = 200, body = TimersPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn list_timers(
    State(st): State<AppState>,
    ApiQuery(q): ApiQuery<TimerQuery>,
) -> Result<Json<TimersPage>, ApiError> {
    let limit = limit(q.limit)?;
    Ok(Json(TimersPage {
        timers: st.store.list_timers(limit).await?,
        waits: st.store.list_waits(limit).await?,
    }))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct SuppressionQuery {
    /// Only this channel's list.
    channel: Option<String>,
    /// 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
}

#[derive(Serialize, ToSchema)]
struct SuppressionsPage {
    /// Addresses the channels no longer send to (a hard bounce, an unsubscribe), newest first.
    suppressions: Vec<Suppression>,
}

#[utoipa::path(get, path = "/api/suppressions", params(SuppressionQuery),
    responses((status = 200, body = SuppressionsPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn list_suppressions(
    State(st): State<AppState>,
    ApiQuery(q): ApiQuery<SuppressionQuery>,
) -> Result<Json<SuppressionsPage>, ApiError> {
    let limit = limit(q.limit)?;
    Ok(Json(SuppressionsPage {
        suppressions: st
            .store
            .list_suppressions(q.channel.as_deref(), limit)
            .await?,
    }))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
struct SuppressionKey {
    /// The channel's name.
    channel: String,
    /// The address, as the list shows it.
    address: String,
}

#[utoipa::path(delete, path = "/api/suppressions/{channel}/{address}", params(SuppressionKey),
    responses((status = 200, body = ActionResult), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn delete_suppression(
    State(st): State<AppState>,
    ApiPath(SuppressionKey { channel, address }): ApiPath<SuppressionKey>,
) -> Result<Json<ActionResult>, ApiError> {
    if st.store.unsuppress(&channel, &address).await? {
        tracing::info!(%channel, %address, "taken off the suppression list");
        Ok(Json(ActionResult {
            result: serde_json::json!({"channel": channel, "address": address, "suppressed": false}),
        }))
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("{address} is not on channel '{channel}''s suppression list"),
        ))
    }
}
