//! `switchboard bench`: a load generator. It starts a gateway process on a fresh SQLite
//! file with a webhook → guard → set → http scenario, a sink on loopback that the scenario
//! calls, and measures throughput, request-to-sink latency and the gateway's memory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

pub struct BenchOptions {
    /// Events for the throughput run.
    pub events: usize,
    /// Concurrent client connections.
    pub connections: usize,
    /// Events per second for the paced latency run (0 skips it).
    pub rate: u64,
    /// Runs to park in `wait` for the memory measurement (0 skips it).
    pub parked: usize,
    /// Folder with the Fluent locales the gateway loads.
    pub locales: PathBuf,
    /// A PostgreSQL server URL: run there (in a database of the bench's own) instead of on a
    /// SQLite file.
    pub postgres: Option<String>,
    /// Gateway processes sharing the load (PostgreSQL only).
    pub replicas: usize,
    /// The gateway's `server.max_backlog`, when not its default.
    pub max_backlog: Option<usize>,
}

const SCENARIO: &str = r#"
id = "bench"
on = { webhook = "bench" }
when = 'event.kind == "order" and event.qty > 0'
[[step]]
set = { "run.total" = "event.qty * event.price" }
[[step]]
http = { post = "{{ event.sink }}", json = { id = "{{ event.id }}", total = "{{ run.total }}" } }
"#;

const PARKED: &str = r#"
id = "parked"
on = { webhook = "park" }
subject = "park:{{ event.n }}"
[[step]]
wait = { webhook = "never", match = "{{ event.n }}", timeout = "30d" }
"#;

struct Sink {
    base: Instant,
    sent: Vec<AtomicU64>,
    latencies: Mutex<Vec<u64>>,
    received: AtomicUsize,
    last: AtomicU64,
}

async fn sink_handler(State(s): State<Arc<Sink>>, Json(v): Json<Value>) -> &'static str {
    let now = s.base.elapsed().as_micros() as u64;
    if let Some(id) = v["id"].as_u64() {
        if let Some(sent) = s.sent.get(id as usize) {
            let at = sent.load(Ordering::Relaxed);
            s.latencies
                .lock()
                .expect("not poisoned")
                .push(now.saturating_sub(at));
        }
    }
    s.received.fetch_add(1, Ordering::Relaxed);
    s.last.store(now, Ordering::Relaxed);
    "ok"
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// CPU time (user + system) the process has used, in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses): utime is the 12th, stime the 13th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// The machine's CPU time so far (`/proc/stat`, in ticks): busy, idle (with I/O wait), and
/// stolen by the hypervisor.
fn machine_ticks() -> [u64; 3] {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let at = |i: usize| f.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal
    [at(0) + at(1) + at(2) + at(5) + at(6), at(3) + at(4), at(7)]
}

/// How the machine's CPU time went between two `machine_ticks` readings, as a line.
fn machine_report(before: [u64; 3], after: [u64; 3]) -> String {
    let d: Vec<f64> = (0..3)
        .map(|i| after[i].saturating_sub(before[i]) as f64)
        .collect();
    let total = d.iter().sum::<f64>().max(1.0);
    format!(
        "machine during the run: busy {:.0} %, idle {:.0} %, stolen by the host {:.0} % (a VM whose host takes CPU back measures lower)",
        100.0 * d[0] / total,
        100.0 * d[1] / total,
        100.0 * d[2] / total
    )
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

struct Gateway {
    child: Child,
    url: String,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_gateway(dir: &Path, database: &str) -> anyhow::Result<Gateway> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let child = Command::new(std::env::current_exe()?)
        .arg("run")
        .arg("--config")
        .arg(dir.join("bot-configs"))
        .arg("--database")
        .arg(database)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--admin-listen")
        .arg("127.0.0.1:0")
        // The gateway logs warnings to the bench's stderr; SWITCHBOARD_BENCH_LOG overrides.
        .env(
            "RUST_LOG",
            std::env::var("SWITCHBOARD_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .spawn()
        .context("starting the gateway")?;
    let gw = Gateway {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let client = reqwest::Client::new();
    for _ in 0..200 {
        if let Ok(r) = client.get(format!("{}/healthz", gw.url)).send().await {
            if r.status().is_success() {
                return Ok(gw);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("the gateway did not come up")
}

/// Where the load goes: the gateways (connections spread over them), and the sink the
/// scenario calls.
struct Target<'a> {
    urls: &'a [String],
    sink: &'a Arc<Sink>,
    sink_url: &'a str,
    conns: usize,
}

/// Sends `n` events (ids from `first`) to `hook`, paced at `rate`/s if non-zero.
async fn fire(t: &Target<'_>, hook: &str, first: usize, n: usize, rate: u64) -> anyhow::Result<()> {
    let (sink, sink_url, conns) = (t.sink, t.sink_url, t.conns);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(conns)
        .build()?;
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..conns {
        let (client, next, sink) = (client.clone(), next.clone(), sink.clone());
        let target = format!("{}/hooks/{hook}", t.urls[c % t.urls.len()]);
        let sink_url = sink_url.to_string();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, anyhow::Error>(());
                }
                if rate > 0 {
                    let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
                    tokio::time::sleep_until(due.into()).await;
                }
                let id = first + i;
                if let Some(slot) = sink.sent.get(id) {
                    slot.store(sink.base.elapsed().as_micros() as u64, Ordering::Relaxed);
                }
                let body = json!({"id": id, "n": id, "kind": "order", "qty": 2, "price": 21.5, "sink": sink_url});
                let r = client.post(&target).json(&body).send().await?;
                if r.status().as_u16() != 202 {
                    bail!("the gateway answered {}", r.status());
                }
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

async fn wait_received(sink: &Sink, n: usize, limit: Duration) -> anyhow::Result<()> {
    let until = Instant::now() + limit;
    while sink.received.load(Ordering::Relaxed) < n {
        if Instant::now() > until {
            bail!(
                "only {} of {n} requests reached the sink",
                sink.received.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

fn latency_report(sink: &Sink) -> (f64, f64, f64) {
    let mut l = std::mem::take(&mut *sink.latencies.lock().expect("not poisoned"));
    l.sort_unstable();
    (
        percentile(&l, 0.5),
        percentile(&l, 0.99),
        percentile(&l, 1.0),
    )
}

pub async fn bench(o: BenchOptions) -> anyhow::Result<Vec<String>> {
    let dir = tempfile::tempdir()?;
    let cfg = dir.path().join("bot-configs");
    std::fs::create_dir_all(&cfg)?;
    std::fs::write(
        cfg.join("gateway.toml"),
        format!(
            // The sink listens on loopback: allowed explicitly.
            "{}[defaults]\nlanguage = \"en\"\nlocales = \"{}\"\n\n[http]\nallow = [\"127.0.0.1/32\"]\n",
            o.max_backlog
                .map(|n| format!("[server]\nmax_backlog = {n}\n\n"))
                .unwrap_or_default(),
            std::fs::canonicalize(&o.locales)
                .context("the locales folder")?
                .display()
        ),
    )?;
    std::fs::write(cfg.join("bench.toml"), SCENARIO)?;
    std::fs::write(cfg.join("parked.toml"), PARKED)?;

    let total = o.events + if o.rate > 0 { o.events } else { 0 } + 1000;
    let sink = Arc::new(Sink {
        base: Instant::now(),
        sent: (0..total).map(|_| AtomicU64::new(0)).collect(),
        latencies: Mutex::new(Vec::new()),
        received: AtomicUsize::new(0),
        last: AtomicU64::new(0),
    });
    let app = axum::Router::new()
        .route("/sink", axum::routing::post(sink_handler))
        .with_state(sink.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let sink_url = format!("http://{}/sink", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });

    let pg = match &o.postgres {
        Some(url) => Some(PgBench::create(url).await?),
        None if o.replicas > 1 => bail!("several replicas need --postgres"),
        None => None,
    };
    let database = match &pg {
        Some(pg) => pg.url.clone(),
        None => format!("sqlite://{}", dir.path().join("bench.db").display()),
    };
    let mut gws = Vec::new();
    for _ in 0..o.replicas.max(1) {
        gws.push(start_gateway(dir.path(), &database).await?);
    }
    let pids: Vec<u32> = gws.iter().map(|g| g.child.id()).collect();
    let urls: Vec<String> = gws.iter().map(|g| g.url.clone()).collect();
    let rss = || pids.iter().map(|p| rss_kib(*p)).sum::<u64>();
    let cpu = || pids.iter().map(|p| cpu_secs(*p)).sum::<f64>();
    let target = Target {
        urls: &urls,
        sink: &sink,
        sink_url: &sink_url,
        conns: o.connections,
    };
    let mut out = vec![match &pg {
        Some(pg) => format!(
            "{} gateway process(es) {pids:?} on PostgreSQL database {}",
            pids.len(),
            pg.name
        ),
        None => format!("gateway pid {pids:?}, SQLite in {}", dir.path().display()),
    }];

    out.push(format!("RSS at start: {:.1} MiB", rss() as f64 / 1024.0));
    // Warm-up: connections, statement caches.
    fire(&target, "bench", 0, 1000, 0).await?;
    wait_received(&sink, 1000, Duration::from_secs(60)).await?;
    latency_report(&sink);
    let idle = rss();
    out.push(format!(
        "RSS idle after warm-up: {:.1} MiB",
        idle as f64 / 1024.0
    ));

    // Throughput: as fast as the clients can send.
    let db_before = match &pg {
        Some(pg) => Some(pg.counters().await?),
        None => None,
    };
    let cpu_before = cpu();
    let machine_before = machine_ticks();
    let start_us = sink.base.elapsed().as_micros() as u64;
    fire(&target, "bench", 1000, o.events, 0).await?;
    wait_received(&sink, 1000 + o.events, Duration::from_secs(600)).await?;
    let machine = machine_report(machine_before, machine_ticks());
    let secs = (sink.last.load(Ordering::Relaxed) - start_us) as f64 / 1e6;
    let cpu = cpu() - cpu_before;
    let (p50, p99, max) = latency_report(&sink);
    out.push(format!(
        "gateway CPU: {:.0} µs per event ({:.2} CPU-seconds for {} events; the load generator and sink share the machine)",
        cpu * 1e6 / o.events as f64,
        cpu,
        o.events
    ));
    out.push(format!(
        "throughput: {} events in {secs:.2} s = {:.0} events/s end to end ({} connections); request→sink latency p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms",
        o.events,
        o.events as f64 / secs,
        o.connections
    ));
    if let (Some(pg), Some(before)) = (&pg, db_before) {
        // The server publishes its counters with a delay of up to a second.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let after = pg.counters().await?;
        let per = |a: i64, b: i64| (a - b) as f64 / o.events as f64;
        out.push(format!(
            "database: {:.2} transactions per event{}",
            per(after.0, before.0),
            match (after.1, before.1) {
                (Some(a), Some(b)) =>
                    format!(", {:.2} statements (round trips) per event", per(a, b)),
                _ => " (statements per event need pg_stat_statements in shared_preload_libraries)"
                    .to_string(),
            }
        ));
    }
    out.push(machine);
    out.push(format!(
        "RSS after the throughput run: {:.1} MiB",
        rss() as f64 / 1024.0
    ));

    if o.rate > 0 {
        let first = 1000 + o.events;
        fire(&target, "bench", first, o.events, o.rate).await?;
        wait_received(&sink, first + o.events, Duration::from_secs(600)).await?;
        let (p50, p99, max) = latency_report(&sink);
        out.push(format!(
            "paced at {} events/s: request→sink latency p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms",
            o.rate
        ));
    }

    if o.parked > 0 {
        let before = rss();
        fire(&target, "park", 0, o.parked, 0).await?;
        // Counted straight from the database, without joining as a replica: on PostgreSQL
        // through the bench's own connection, on SQLite through one opened for this.
        const WAITS: &str = "SELECT count(*) FROM waits";
        let sqlite = match &pg {
            Some(_) => None,
            None => Some(sqlx::SqlitePool::connect(&database).await?),
        };
        let until = Instant::now() + Duration::from_secs(600);
        loop {
            let waits: i64 = match (&pg, &sqlite) {
                (Some(pg), _) => sqlx::query_scalar(WAITS).fetch_one(&pg.db).await?,
                (None, Some(db)) => sqlx::query_scalar(WAITS).fetch_one(db).await?,
                (None, None) => unreachable!("one of the two is open"),
            };
            if waits as usize >= o.parked {
                break;
            }
            if Instant::now() > until {
                bail!("only {waits} of {} runs parked", o.parked);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = rss();
        out.push(format!(
            "{} parked runs: RSS {:.1} MiB (was {:.1} MiB), {:.0} bytes of RSS per parked run",
            o.parked,
            after as f64 / 1024.0,
            before as f64 / 1024.0,
            (after.saturating_sub(before) * 1024) as f64 / o.parked as f64
        ));
    }
    drop(gws); // stops the gateway processes
    if let Some(pg) = pg {
        pg.drop_database().await?;
    }
    Ok(out)
}

/// The bench's own database on a PostgreSQL server, and the server's counters for it.
struct PgBench {
    server: sqlx::PgPool,
    /// A connection to the bench database itself (pg_stat_statements is read there).
    db: sqlx::PgPool,
    name: String,
    url: String,
}

impl PgBench {
    async fn create(server_url: &str) -> anyhow::Result<PgBench> {
        let server = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(server_url)
            .await
            .context("connecting to the PostgreSQL server")?;
        let name = format!("switchboard_bench_{}", std::process::id());
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&server)
            .await
            .context("creating the bench database")?;
        let mut url = reqwest::Url::parse(server_url)?;
        url.set_path(&format!("/{name}"));
        let db = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(url.as_str())
            .await?;
        // Statement counts, where the server loads pg_stat_statements.
        let _ = sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            .execute(&db)
            .await;
        Ok(PgBench {
            server,
            db,
            name,
            url: url.to_string(),
        })
    }

    /// Transactions, and statements when pg_stat_statements is loaded, in the bench database.
    async fn counters(&self) -> anyhow::Result<(i64, Option<i64>)> {
        let xacts: i64 = sqlx::query_scalar(
            "SELECT (xact_commit + xact_rollback)::BIGINT FROM pg_stat_database WHERE datname = $1",
        )
        .bind(&self.name)
        .fetch_one(&self.server)
        .await?;
        let statements: Option<i64> = sqlx::query_scalar(
            "SELECT coalesce(sum(calls), 0)::BIGINT FROM pg_stat_statements
             WHERE dbid = (SELECT oid FROM pg_database WHERE datname = $1)",
        )
        .bind(&self.name)
        .fetch_one(&self.db)
        .await
        .ok();
        Ok((xacts, statements))
    }

    async fn drop_database(self) -> anyhow::Result<()> {
        self.db.close().await;
        sqlx::query(&format!("DROP DATABASE {} WITH (FORCE)", self.name))
            .execute(&self.server)
            .await?;
        Ok(())
    }
}
