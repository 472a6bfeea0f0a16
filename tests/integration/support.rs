//! Test support: the real app on a random port with a temp SQLite file, a recording HTTP
//! sink on loopback, config folders, and bounded waiting for eventual conditions.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::Value;
use switchboard::app::{App, Options};
use switchboard::clock::Clock;
use switchboard::store::{EventFilter, EventRow, OutboxRow, RunFilter, RunRow, RunStatus};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A config folder in a temp dir, with the repo's locales beside it.
/// The gateway file's section that lets `http` steps reach the tests' loopback receivers.
pub const ALLOW_LOOPBACK: &str = "[http]\nallow = [\"127.0.0.1/32\"]\n";

/// The example gateway file's HMAC key of the payment hook, and what the copies of
/// [`ConfigDir::examples`] have instead.
pub const PAYMENT_HOOK_SECRET_REF: &str = "${PAYMENT_HOOK_SECRET}";
pub const PAYMENT_HOOK_SECRET: &str = "test-payment-secret";

pub struct ConfigDir {
    pub root: tempfile::TempDir,
}

impl ConfigDir {
    pub fn examples() -> ConfigDir {
        let c = ConfigDir::empty();
        for e in std::fs::read_dir(repo().join("bot-configs")).unwrap() {
            let p = e.unwrap().path();
            std::fs::copy(&p, c.dir().join(p.file_name().unwrap())).unwrap();
        }
        // The tests' receivers listen on loopback, which `http` steps may not reach unless
        // the gateway file allows it. The payment hook's key comes from the environment,
        // which the tests leave alone: it is written in.
        let gw = std::fs::read_to_string(c.dir().join("gateway.toml")).unwrap();
        assert!(gw.contains(PAYMENT_HOOK_SECRET_REF), "{gw}");
        let gw = gw.replace(PAYMENT_HOOK_SECRET_REF, PAYMENT_HOOK_SECRET);
        c.write("gateway.toml", &format!("{gw}\n{ALLOW_LOOPBACK}"));
        c
    }

    pub fn empty() -> ConfigDir {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("bot-configs")).unwrap();
        for lang in ["en", "ru", "pl"] {
            let d = root.path().join("locales").join(lang);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::copy(
                repo().join("locales").join(lang).join("main.ftl"),
                d.join("main.ftl"),
            )
            .unwrap();
        }
        ConfigDir { root }
    }

    /// A folder with a quick-retry gateway file and the given scenario files.
    pub fn with(files: &[(&str, &str)]) -> ConfigDir {
        let c = ConfigDir::empty();
        c.write(
            "gateway.toml",
            "[defaults]\nlanguage = \"en\"\nretry_delay = \"20ms\"\nretry_max_delay = \"100ms\"\nhttp_attempts = 4\nmax_steps = 50\n\n[http]\nallow = [\"127.0.0.1/32\"]\n\n[channels.ops]\ntype = \"log\"\noutput = \"journal\"\n",
        );
        for (name, text) in files {
            c.write(name, text);
        }
        c
    }

    pub fn dir(&self) -> PathBuf {
        self.root.path().join("bot-configs")
    }

    pub fn write(&self, name: &str, text: &str) {
        std::fs::write(self.dir().join(name), text).unwrap();
    }

    pub fn db(&self) -> String {
        format!(
            "sqlite://{}",
            self.root.path().join("switchboard.db").display()
        )
    }
}

/// Tests that load the machine on purpose (several gateway processes, thousands of events)
/// take this first, so that they run one at a time and leave the other tests time to run.
pub static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub const ADMIN_TOKEN: &str = "test-admin-token";

pub struct TestApp {
    pub app: App,
    pub http: reqwest::Client,
    /// Its database URL, to start it again on the same one.
    pub database: String,
}

impl TestApp {
    /// The app on the config folder's SQLite file, or, with `SWITCHBOARD_TEST_DATABASE=postgres`,
    /// on a fresh PostgreSQL database (the whole suite can run against either).
    pub async fn spawn(cfg: &ConfigDir) -> TestApp {
        let db = match std::env::var("SWITCHBOARD_TEST_DATABASE").as_deref() {
            Ok("postgres") => crate::pg::fresh_db().await,
            _ => cfg.db(),
        };
        TestApp::spawn_on(cfg, &db).await
    }

    pub async fn spawn_on(cfg: &ConfigDir, database: &str) -> TestApp {
        TestApp::spawn_with_clock(cfg, database, Clock::default()).await
    }

    /// The app with its clock reading `at` (an RFC 3339 time) when it starts.
    pub async fn spawn_at(cfg: &ConfigDir, at: &str) -> TestApp {
        let at = chrono::DateTime::parse_from_rfc3339(at)
            .expect("an RFC 3339 time")
            .timestamp_millis();
        let db = match std::env::var("SWITCHBOARD_TEST_DATABASE").as_deref() {
            Ok("postgres") => crate::pg::fresh_db().await,
            _ => cfg.db(),
        };
        TestApp::spawn_with_clock(cfg, &db, Clock::starting_at(at)).await
    }

    pub async fn spawn_with_clock(cfg: &ConfigDir, database: &str, clock: Clock) -> TestApp {
        let app = App::start(Options {
            config_dir: cfg.dir(),
            database: database.to_string(),
            listen: Some("127.0.0.1:0".into()),
            public_url: None,
            admin_listen: Some("127.0.0.1:0".into()),
            admin_token: Some(ADMIN_TOKEN.into()),
            link_key: Some("test-link-key".into()),
            clock,
            watch: false,
        })
        .await
        .expect("the app starts");
        TestApp {
            app,
            http: reqwest::Client::new(),
            database: database.to_string(),
        }
    }

    pub async fn post(&self, hook: &str, body: Value) -> (u16, Value) {
        self.post_with(hook, &body.to_string(), &[]).await
    }

    pub async fn post_with(
        &self,
        hook: &str,
        body: &str,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let mut req = self
            .http
            .post(format!("{}/hooks/{hook}", self.app.url()))
            .header("content-type", "application/json")
            .body(body.to_string());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Posts an event to a hook; the one run it started.
    pub async fn start_one(&self, hook: &str, body: Value) -> i64 {
        let (s, b) = self.post(hook, body).await;
        assert_eq!(s, 202, "{b}");
        let runs = self.runs_of(b["event_id"].as_i64().unwrap()).await;
        assert_eq!(runs.len(), 1, "one run expected");
        runs[0].id
    }

    /// Runs the event started, once the engine has processed it.
    pub async fn runs_of(&self, event_id: i64) -> Vec<RunRow> {
        let store = self.app.store.clone();
        eventually(|| {
            let store = store.clone();
            async move {
                let ev = store.event(event_id).await.unwrap()?;
                (ev.status != "pending").then_some(())?;
                Some(store.runs_for_event(event_id).await.unwrap())
            }
        })
        .await
    }

    pub async fn run_when(&self, id: i64, pred: impl Fn(&RunRow) -> bool) -> RunRow {
        let store = self.app.store.clone();
        let pred = &pred;
        eventually(|| {
            let store = store.clone();
            async move { store.run(id).await.unwrap().filter(|r| pred(r)) }
        })
        .await
    }

    pub async fn finished(&self, id: i64) -> RunRow {
        self.run_when(id, |r| !r.status.is_active()).await
    }

    pub async fn status_of(&self, id: i64, status: RunStatus) -> RunRow {
        self.run_when(id, |r| r.status == status).await
    }

    /// Messages delivered to log channels for a run, in order.
    pub async fn messages(&self, run_id: i64) -> Vec<Value> {
        self.app
            .store
            .outbox_for_run(run_id)
            .await
            .unwrap()
            .into_iter()
            .filter(|o| o.kind == "send")
            .map(|o| o.request)
            .collect()
    }

    /// A request to the admin listener with the admin token.
    pub async fn api(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.app.admin_url()))
            .bearer_auth(ADMIN_TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.api(reqwest::Method::GET, path, None).await
    }

    pub async fn post_api(&self, path: &str) -> (u16, Value) {
        self.api(reqwest::Method::POST, path, None).await
    }

    pub fn advance(&self, by: Duration) {
        self.app.clock.advance(by)
    }

    /// `GET /readyz` on the public listener.
    pub async fn readyz(&self) -> Value {
        self.http
            .get(format!("{}/readyz", self.app.url()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

/// The channel's events, newest first, once the event whose `meta[key]` is `id` and every
/// event stored before it have been processed.
pub async fn processed_through(
    t: &TestApp,
    channel: &str,
    key: &str,
    id: impl Into<Value>,
) -> Vec<EventRow> {
    let id = id.into();
    eventually(|| async {
        let events = t
            .app
            .store
            .list_events(&EventFilter {
                source: Some(channel.into()),
                limit: 500,
                ..Default::default()
            })
            .await
            .unwrap();
        let ev = events.iter().find(|e| e.meta[key] == id)?;
        let done = ev.status == "done"
            && events
                .iter()
                .filter(|e| e.id < ev.id)
                .all(|e| e.status != "pending");
        done.then_some(events)
    })
    .await
}

/// The ids of a scenario's runs, newest first.
pub async fn runs_of_scenario(t: &TestApp, scenario: &str) -> Vec<i64> {
    t.app
        .store
        .list_runs(&RunFilter {
            scenario: Some(scenario.into()),
            limit: 500,
            ..Default::default()
        })
        .await
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect()
}

/// The run's outbox rows once each has been delivered or given up on.
pub async fn settled_outbox(t: &TestApp, run: i64) -> Vec<OutboxRow> {
    eventually(|| async {
        let rows = t.app.store.outbox_for_run(run).await.unwrap();
        rows.iter().all(|o| o.status != "pending").then_some(rows)
    })
    .await
}

/// Polls until `f` yields a value; gives up (panics) after 20 s so no test hangs.
pub async fn eventually<T, F, Fut>(f: F) -> T
where
    F: Fn() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    eventually_within(Duration::from_secs(20), f).await
}

/// `eventually` with another bound, for work that is large on purpose.
pub async fn eventually_within<T, F, Fut>(limit: Duration, f: F) -> T
where
    F: Fn() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not reached within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
}

#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Value,
    /// The status the sink answered with.
    pub status: u16,
}

/// An HTTP server on loopback that records every request and answers with scripted statuses.
#[derive(Clone)]
pub struct Sink {
    pub addr: SocketAddr,
    inner: Arc<SinkState>,
}

#[derive(Default)]
struct SinkState {
    received: Mutex<Vec<Received>>,
    script: Mutex<VecDeque<u16>>,
    default_status: Mutex<u16>,
    /// While true, requests are recorded but not answered.
    held: tokio::sync::watch::Sender<bool>,
}

impl Sink {
    pub async fn start() -> Sink {
        Sink::start_on("127.0.0.1:0").await
    }

    pub async fn start_on(addr: &str) -> Sink {
        let inner = Arc::new(SinkState {
            default_status: Mutex::new(200),
            ..Default::default()
        });
        let app = axum::Router::new()
            .fallback(record)
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Sink { addr, inner }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The next responses' statuses, then the default.
    pub fn script(&self, statuses: &[u16]) {
        self.inner.script.lock().unwrap().extend(statuses);
    }

    pub fn set_default(&self, status: u16) {
        *self.inner.default_status.lock().unwrap() = status;
    }

    /// Requests from now on are recorded at once but answered only after `release`.
    pub fn hold(&self) {
        self.inner.held.send_replace(true);
    }

    pub fn release(&self) {
        self.inner.held.send_replace(false);
    }

    pub fn received(&self) -> Vec<Received> {
        self.inner.received.lock().unwrap().clone()
    }

    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        eventually(|| async {
            let r = self.received();
            (r.len() >= n).then_some(r)
        })
        .await
    }
}

async fn record(
    State(st): State<Arc<SinkState>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let status = st
        .script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or(*st.default_status.lock().unwrap());
    let body = serde_json::from_slice(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).to_string()));
    st.received.lock().unwrap().push(Received {
        path: uri.path().to_string(),
        headers,
        body,
        status,
    });
    let _ = st.held.subscribe().wait_for(|held| !held).await;
    (
        StatusCode::from_u16(status).unwrap(),
        r#"{"ok":true,"id":"r-1"}"#.to_string(),
    )
}

pub fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_switchboard"))
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The gateway binary as a child process (tests that SIGKILL it, or run several).
pub struct Gateway {
    pub child: Child,
    pub url: String,
    /// The admin listener (token `ADMIN_TOKEN`).
    pub admin: String,
}

impl Gateway {
    pub async fn start(cfg: &ConfigDir) -> Gateway {
        Gateway::start_on(cfg, &cfg.db()).await
    }

    /// On another database (a PostgreSQL URL for replicas).
    pub async fn start_on(cfg: &ConfigDir, database: &str) -> Gateway {
        let port = free_port();
        let admin_port = free_port();
        let mut command = Command::new(bin());
        command
            .args([
                "run",
                "--config",
                cfg.dir().to_str().unwrap(),
                "--database",
                database,
            ])
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--admin-listen",
                &format!("127.0.0.1:{admin_port}"),
                "--admin-token",
                ADMIN_TOKEN,
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null());
        // SAFETY: prctl only sets the child's parent-death signal between fork and exec, so
        // that a gateway never outlives a test process that was killed.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = command.spawn().unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        eventually(|| async {
            client
                .get(format!("{url}/healthz"))
                .send()
                .await
                .ok()
                .filter(|r| r.status() == 200)
        })
        .await;
        Gateway {
            child,
            url,
            admin: format!("http://127.0.0.1:{admin_port}"),
        }
    }

    pub async fn post(&self, hook: &str, body: serde_json::Value) {
        let r = reqwest::Client::new()
            .post(format!("{}/hooks/{hook}", self.url))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, and reaped.
    pub fn kill(self) {
        drop(self)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A journal-pages session: (client that does not follow redirects, cookie header).
pub async fn pages_session(t: &TestApp) -> (reqwest::Client, String) {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = client
        .post(format!("{}/ui/login", t.app.admin_url()))
        .form(&[("token", ADMIN_TOKEN), ("next", "/ui/runs")])
        .send()
        .await
        .unwrap();
    let cookie = r.headers()["set-cookie"].to_str().unwrap();
    let session = cookie.split(';').next().unwrap().to_string();
    (client, session)
}
