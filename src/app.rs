//! Building and running the gateway: config, store, engine, workers and the HTTP server,
//! started together and stopped together. Tests start it the same way `switchboard run` does.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::channels::Channels;
use crate::clock::Clock;
use crate::config::live::{Live, Refusal};
use crate::config::{self, Config};
use crate::engine::ingest::Ingest;
use crate::engine::{Engine, Load, Work, WorkSender};
use crate::links::Links;
use crate::reload::Reloader;
use crate::store::{self, Store};

pub struct Options {
    pub config_dir: PathBuf,
    pub database: String,
    /// Overrides the gateway file's `server.listen`; `127.0.0.1:8080` when neither is set.
    pub listen: Option<String>,
    pub public_url: Option<String>,
    /// Where the admin API, journal pages and metrics listen (default `127.0.0.1:8081`).
    pub admin_listen: Option<String>,
    /// Bearer token of the admin API; `None` switches the API and pages off.
    pub admin_token: Option<String>,
    /// Key that signs trigger links; generated once and kept in the database when not given.
    pub link_key: Option<String>,
    pub clock: Clock,
    /// Reload when a file of the config folder or its locales changes.
    pub watch: bool,
}

pub struct App {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub store: Arc<dyn Store>,
    pub clock: Clock,
    pub live: Arc<Live>,
    reloader: Reloader,
    stop: Arc<watch::Sender<bool>>,
    load: Arc<Load>,
    engine_abort: tokio::task::AbortHandle,
    /// Set when the other replicas presumed this one dead.
    fenced: Arc<std::sync::atomic::AtomicBool>,
    server: JoinHandle<()>,
    tasks: Vec<JoinHandle<()>>,
}

impl App {
    pub async fn start(opts: Options) -> anyhow::Result<App> {
        let cfg = Arc::new(config::load(&opts.config_dir)?);
        let store = store::open_writer(&opts.database, &cfg.gateway.database)
            .await
            .with_context(|| {
                format!("opening the database {}", without_password(&opts.database))
            })?;
        let clock = opts.clock.clone();
        crate::reload::prepare(&cfg, &store, clock.now_ms()).await?;
        let live = Arc::new(Live::new(cfg.clone(), clock.now_ms()));
        // Unfinished runs that started on other versions go on with them.
        crate::reload::load_versions(&live, &store, &store.versions_in_use().await?).await;
        let (stop, stop_rx) = watch::channel(false);
        let stop = Arc::new(stop);
        let fenced = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (work_tx, work_rx, outbox_tx, outbox_rx) = crate::engine::intake::channels();
        let load = work_tx.load().clone();
        let timer_wake = Arc::new(Notify::new());
        let listen = opts
            .listen
            .or_else(|| cfg.gateway.listen.clone())
            .unwrap_or_else(|| "127.0.0.1:8080".into());
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .with_context(|| format!("listening on {listen}"))?;
        let addr = listener.local_addr()?;
        let public_url = opts
            .public_url
            .or_else(|| cfg.gateway.public_url.clone())
            .unwrap_or_else(|| format!("http://{addr}"));
        let admin_listen = opts.admin_listen.unwrap_or_else(|| "127.0.0.1:8081".into());
        let admin_listener = tokio::net::TcpListener::bind(&admin_listen)
            .await
            .with_context(|| format!("listening on {admin_listen} (admin)"))?;
        let admin_addr = admin_listener.local_addr()?;
        let link_key = match opts.link_key {
            Some(k) => k,
            None => {
                store
                    .setting_or_put("link_key", &Links::random_key())
                    .await?
            }
        };
        let links = Arc::new(Links::for_config(
            &cfg,
            link_key.as_bytes(),
            &public_url,
            clock.clone(),
        ));
        cfg.templates.set_links(links.clone());

        let reloader = Reloader {
            live: live.clone(),
            store: store.clone(),
            clock: clock.clone(),
            links: links.clone(),
            lock: Arc::default(),
        };
        let engine = Engine::new(
            live.clone(),
            store.clone(),
            clock.clone(),
            outbox_tx.clone(),
            timer_wake.clone(),
            work_tx.clone(),
            public_url.clone(),
        )
        .await?;
        // Whatever a previous process left unfinished (events, outbox rows) is found by a
        // rescan, which reads events from the database as the queue has room for them; so
        // is anything a database outage stranded later.
        let _ = work_tx.send(Work::Rescan);
        let engine_task = tokio::spawn(engine.run(work_rx, stop_rx.clone()));
        let engine_abort = engine_task.abort_handle();
        let mut tasks = vec![supervise(engine_task, stop.clone(), load.clone())];
        tasks.push(tokio::spawn(rescans(work_tx.clone(), stop_rx.clone())));
        if !store.exclusive() {
            tasks.push(tokio::spawn(crate::replicas::upkeep(
                live.clone(),
                store.clone(),
                work_tx.clone(),
                outbox_tx.clone(),
                stop.clone(),
                fenced.clone(),
            )));
        }
        let (ingest, ingest_task) = Ingest::start(
            store.clone(),
            work_tx.clone(),
            crate::engine::ingest::Backlog {
                max: cfg.gateway.max_backlog,
                wait: cfg.gateway.backlog_wait,
            },
        );
        tasks.push(ingest_task);

        // With replicas, send pacing is shared through the database.
        let pacing = (!store.exclusive()).then(|| store.clone());
        let channels = Arc::new(Channels::new(cfg.clone(), pacing));
        tasks.push(tokio::spawn(crate::outbox::worker(
            live.clone(),
            clock.clone(),
            work_tx.clone(),
            channels.clone(),
            store.clone(),
            outbox_rx,
        )));
        // What channels fetch by URL passes the same guard as `http` steps.
        let egress = crate::egress::Guard::new(cfg.gateway.http.clone());
        tasks.extend(channels.start(&crate::channels::Context {
            store: store.clone(),
            ingest: ingest.clone(),
            clock: clock.clone(),
            public_url: public_url.clone(),
            egress: egress.clone(),
            http: egress.client(4),
            stop: stop_rx.clone(),
        }));
        tasks.push(tokio::spawn(crate::timers::timer_worker(
            store.clone(),
            clock.clone(),
            work_tx.clone(),
            timer_wake,
            stop_rx.clone(),
        )));
        tasks.push(crate::timers::schedules(
            live.clone(),
            store.clone(),
            clock.clone(),
            ingest.clone(),
            stop_rx.clone(),
        ));

        tasks.push(tokio::spawn(crate::timers::retention_worker(
            live.clone(),
            store.clone(),
            clock.clone(),
            stop_rx.clone(),
        )));
        tasks.push(tokio::spawn(crate::telemetry::upkeep(stop_rx.clone())));
        if opts.watch {
            tasks.push(crate::reload::watch(reloader.clone(), stop_rx.clone())?);
        }
        let state = crate::http::AppState {
            live: live.clone(),
            reloader: reloader.clone(),
            ingest,
            clock: clock.clone(),
            store: store.clone(),
            engine: work_tx.clone(),
            links,
            admin_token: opts.admin_token.filter(|t| !t.is_empty()).map(Into::into),
            pages: Arc::new(crate::http::pages::Pages::for_live(live.clone())),
            channels,
            rejections: Arc::new(crate::http::RejectionBudget::new()),
            sessions: Arc::default(),
            secure_cookies: public_url.starts_with("https://"),
        };
        let public = crate::http::public_router(state.clone())
            .into_make_service_with_connect_info::<SocketAddr>();
        let admin = crate::http::admin_router(state);
        let mut admin_stop = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            let shutdown = async move {
                let _ = admin_stop.wait_for(|s| *s).await;
            };
            if let Err(e) = axum::serve(admin_listener, admin)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::error!(error = %e, "admin HTTP server failed");
            }
        }));
        let mut server_stop = stop_rx.clone();
        let server = tokio::spawn(async move {
            let shutdown = async move {
                let _ = server_stop.wait_for(|s| *s).await;
            };
            if let Err(e) = axum::serve(listener, public)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::error!(error = %e, "HTTP server failed");
            }
        });
        tracing::info!(%addr, %admin_addr, scenarios = cfg.scenarios.len(), "switchboard is up");
        Ok(App {
            addr,
            admin_addr,
            store,
            clock,
            live,
            reloader,
            stop,
            load,
            engine_abort,
            fenced,
            server,
            tasks,
        })
    }

    /// The config new events are served with.
    pub fn config(&self) -> Arc<Config> {
        self.live.config()
    }

    /// Loads the config folder again (what SIGHUP and `POST /api/config/reload` do).
    pub async fn reload(&self) -> Result<crate::reload::Reloaded, Refusal> {
        self.reloader.reload().await
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin_addr)
    }

    /// Ends the engine task as a crash would (for tests of the supervision).
    #[doc(hidden)]
    pub fn crash_engine(&self) {
        self.engine_abort.abort();
    }

    /// Whether the gateway stopped itself (the engine ended, or the replicas fenced it off).
    pub fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    /// Serves until SIGINT or SIGTERM, then stops; SIGHUP reloads the config folder.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        let mut stopped = self.stop.subscribe();
        let stopped = async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        tokio::pin!(stopped);
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let mut term = signal(SignalKind::terminate())?;
            let mut hup = signal(SignalKind::hangup())?;
            loop {
                tokio::select! {
                    _ = &mut ctrl_c => break,
                    _ = term.recv() => break,
                    _ = &mut stopped => break,
                    _ = hup.recv() => {
                        tracing::info!("SIGHUP: reloading the config");
                        // A refusal is logged and shown on /readyz and the journal pages.
                        let _ = self.reload().await;
                    }
                }
            }
        }
        #[cfg(not(unix))]
        tokio::select! {
            _ = ctrl_c => {}
            _ = stopped => {}
        }
        tracing::info!("stopping");
        let fenced = self.fenced.clone();
        let load = self.load.clone();
        self.stop().await;
        if load.engine_down() {
            anyhow::bail!(
                "the engine stopped unexpectedly (see the log above); restart the gateway"
            );
        }
        if fenced.load(std::sync::atomic::Ordering::SeqCst) {
            anyhow::bail!(
                "this replica was presumed dead by the others (a long pause?); restart it"
            );
        }
        Ok(())
    }

    /// Stops accepting requests, lets in-flight work finish briefly, then ends the workers.
    /// Everything unfinished is durable and continues at the next start.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.server).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        for t in self.tasks {
            t.abort();
        }
        if !self.fenced.load(std::sync::atomic::Ordering::SeqCst) {
            // A transaction cut short above may hold its locks a moment longer; if leaving
            // takes too long, the others take over after the lease instead.
            match tokio::time::timeout(Duration::from_secs(3), self.store.retire()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "leaving the replicas failed"),
                Err(_) => tracing::warn!("leaving the replicas timed out"),
            }
        }
    }
}

/// How often the engine looks in the database for work nobody holds.
const RESCAN_EVERY: Duration = Duration::from_secs(60);

async fn rescans(engine: WorkSender, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(RESCAN_EVERY) => {}
            _ = stop.changed() => return,
        }
        if engine.send(Work::Rescan).is_err() {
            return;
        }
    }
}

/// Watches the engine task: if it ends while the gateway is meant to run (a panic), the
/// gateway stops with an error instead of accepting events nobody will process.
fn supervise(
    engine: JoinHandle<()>,
    stop: Arc<watch::Sender<bool>>,
    load: Arc<Load>,
) -> JoinHandle<()> {
    struct AbortOnDrop(JoinHandle<()>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    tokio::spawn(async move {
        let mut engine = AbortOnDrop(engine);
        let ended = (&mut engine.0).await;
        if *stop.borrow() {
            return;
        }
        match ended {
            Err(e) if e.is_panic() => tracing::error!(error = %e, "the engine panicked; stopping"),
            _ => tracing::error!("the engine stopped unexpectedly; stopping"),
        }
        load.set_engine_down();
        let _ = stop.send(true);
    })
}

/// A database URL fit for messages: its password replaced by `***`.
pub fn without_password(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn database_urls_lose_their_password_in_messages() {
        assert_eq!(
            super::without_password("postgres://sb:s3cret@db.internal:5432/sb"),
            "postgres://sb:***@db.internal:5432/sb"
        );
        assert_eq!(super::without_password("switchboard.db"), "switchboard.db");
    }
}
