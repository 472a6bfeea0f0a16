//! A throwaway PostgreSQL server for the tests: one per test process, on a free loopback
//! port, in a temporary directory, run as the unprivileged `postgres` user when the tests
//! run as root. It ends with the test process (parent-death signal); each test gets its
//! own database.

use std::os::unix::fs::chown;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sqlx::Connection;

use crate::support::free_port;

pub struct PgServer {
    pub port: u16,
}

static SERVER: OnceLock<PgServer> = OnceLock::new();
static NEXT_DB: AtomicUsize = AtomicUsize::new(0);

/// The folder with `initdb` and `postgres`: `SWITCHBOARD_PG_BIN`, else the newest under
/// `/usr/lib/postgresql`.
fn bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("SWITCHBOARD_PG_BIN") {
        return d.into();
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries under /usr/lib/postgresql (apt-get install postgresql)")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    found.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    found
        .pop()
        .expect("an initdb under /usr/lib/postgresql/*/bin")
}

/// Uid and gid of `postgres` when running as root (initdb refuses root).
fn run_as() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("id(1)");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("a postgres user (apt-get install postgresql creates it)")
    };
    Some((id("-u"), id("-g")))
}

/// Removes the folders of earlier test processes that are gone.
fn sweep_stale(tmp: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if let Some(pid) = name.strip_prefix("switchboard-pg-") {
            if !PathBuf::from(format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

fn start() -> PgServer {
    let tmp = std::env::temp_dir();
    sweep_stale(&tmp);
    let dir = tmp.join(format!("switchboard-pg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let user = run_as();
    if let Some((uid, gid)) = user {
        chown(&dir, Some(uid), Some(gid)).unwrap();
    }
    let bin = bin_dir();
    let mut initdb = Command::new(bin.join("initdb"));
    initdb
        .arg("-D")
        .arg(dir.join("data"))
        .args(["-A", "trust", "-U", "test", "-E", "UTF8", "--no-sync"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some((uid, gid)) = user {
        initdb.uid(uid).gid(gid);
    }
    let out = initdb.output().expect("initdb runs");
    assert!(
        out.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = free_port();
    let log = std::fs::File::create(dir.join("log")).unwrap();
    if let Some((uid, gid)) = user {
        chown(dir.join("log"), Some(uid), Some(gid)).unwrap();
    }
    let mut postgres = Command::new(bin.join("postgres"));
    postgres
        .arg("-D")
        .arg(dir.join("data"))
        .args(["-p", &port.to_string(), "-k"])
        .arg(&dir)
        .args([
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "max_connections=400",
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "shared_buffers=64MB",
        ])
        .stdout(Stdio::null())
        .stderr(log);
    if let Some((uid, gid)) = user {
        postgres.uid(uid).gid(gid);
    }
    // SAFETY: prctl only sets this process's parent-death signal; nothing else runs between
    // fork and exec here.
    unsafe {
        postgres.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT);
            Ok(())
        });
    }
    // The parent-death signal follows the thread that forked: fork from one that lives as
    // long as the test process.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let child = postgres.spawn();
        let ok = child.is_ok();
        tx.send(child.map(|_| ())).unwrap();
        if ok {
            loop {
                std::thread::park();
            }
        }
    });
    rx.recv().unwrap().expect("postgres starts");
    let deadline = Instant::now() + Duration::from_secs(30);
    let url = format!("postgres://test@127.0.0.1:{port}/postgres");
    // Called from async tests: wait on a runtime of its own, in a thread of its own.
    std::thread::scope(|scope| {
        scope.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(wait_ready(&url, deadline, &dir))
        });
    });
    PgServer { port }
}

async fn wait_ready(url: &str, deadline: Instant, dir: &std::path::Path) {
    loop {
        match sqlx::PgConnection::connect(url).await {
            Ok(c) => {
                let _ = c.close().await;
                break;
            }
            Err(e) if Instant::now() > deadline => {
                let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
                panic!("postgres did not come up: {e}\n{log}");
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

pub fn server() -> &'static PgServer {
    SERVER.get_or_init(start)
}

/// A new, empty database on the shared server; its URL.
pub async fn fresh_db() -> String {
    let s = server();
    let name = format!("t{}", NEXT_DB.fetch_add(1, Ordering::SeqCst));
    let admin = format!("postgres://test@127.0.0.1:{}/postgres", s.port);
    let mut c = sqlx::PgConnection::connect(&admin).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut c)
        .await
        .unwrap();
    let _ = c.close().await;
    format!("postgres://test@127.0.0.1:{}/{name}", s.port)
}
