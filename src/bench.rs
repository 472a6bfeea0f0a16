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

async fn start_gateway(dir: &Path) -> anyhow::Result<Gateway> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let child = Command::new(std::env::current_exe()?)
        .arg("run")
        .arg("--config")
        .arg(dir.join("bot-configs"))
        .arg("--database")
        .arg(format!("sqlite://{}", dir.join("bench.db").display()))
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

/// Where the load goes: the gateway, and the sink the scenario calls.
struct Target<'a> {
    url: &'a str,
    sink: &'a Arc<Sink>,
    sink_url: &'a str,
    conns: usize,
}

/// Sends `n` events (ids from `first`) to `hook`, paced at `rate`/s if non-zero.
async fn fire(t: &Target<'_>, hook: &str, first: usize, n: usize, rate: u64) -> anyhow::Result<()> {
    let (url, sink, sink_url, conns) = (t.url, t.sink, t.sink_url, t.conns);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(conns)
        .build()?;
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (client, next, sink) = (client.clone(), next.clone(), sink.clone());
        let target = format!("{url}/hooks/{hook}");
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
            "[defaults]\nlanguage = \"en\"\nlocales = \"{}\"\n",
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

    let gw = start_gateway(dir.path()).await?;
    let pid = gw.child.id();
    let target = Target {
        url: &gw.url,
        sink: &sink,
        sink_url: &sink_url,
        conns: o.connections,
    };
    let mut out = vec![format!(
        "gateway pid {pid}, SQLite in {}",
        dir.path().display()
    )];

    out.push(format!(
        "RSS at start: {:.1} MiB",
        rss_kib(pid) as f64 / 1024.0
    ));
    // Warm-up: connections, statement caches.
    fire(&target, "bench", 0, 1000, 0).await?;
    wait_received(&sink, 1000, Duration::from_secs(60)).await?;
    latency_report(&sink);
    let idle = rss_kib(pid);
    out.push(format!(
        "RSS idle after warm-up: {:.1} MiB",
        idle as f64 / 1024.0
    ));

    // Throughput: as fast as the clients can send.
    let cpu_before = cpu_secs(pid);
    let start_us = sink.base.elapsed().as_micros() as u64;
    fire(&target, "bench", 1000, o.events, 0).await?;
    wait_received(&sink, 1000 + o.events, Duration::from_secs(600)).await?;
    let secs = (sink.last.load(Ordering::Relaxed) - start_us) as f64 / 1e6;
    let cpu = cpu_secs(pid) - cpu_before;
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
    out.push(format!(
        "RSS after the throughput run: {:.1} MiB",
        rss_kib(pid) as f64 / 1024.0
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
        let before = rss_kib(pid);
        fire(&target, "park", 0, o.parked, 0).await?;
        let store = crate::store::SqliteStore::open(&format!(
            "sqlite://{}",
            dir.path().join("bench.db").display()
        ))
        .await?;
        let until = Instant::now() + Duration::from_secs(600);
        loop {
            let c = crate::store::Store::counts(&store).await?;
            if c.waits as usize >= o.parked {
                break;
            }
            if Instant::now() > until {
                bail!("only {} of {} runs parked", c.waits, o.parked);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = rss_kib(pid);
        out.push(format!(
            "{} parked runs: RSS {:.1} MiB (was {:.1} MiB), {:.0} bytes of RSS per parked run",
            o.parked,
            after as f64 / 1024.0,
            before as f64 / 1024.0,
            (after.saturating_sub(before) * 1024) as f64 / o.parked as f64
        ));
    }
    drop(gw); // stops the gateway process
    Ok(out)
}
