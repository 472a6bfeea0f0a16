//! Real mail servers on loopback for the e-mail channel's tests: Debian's dovecot as the IMAP
//! server and aiosmtpd (driven by `smtp_sink.py`) as the SMTP server. Each test starts its own
//! in a temp dir under /tmp; they end with the value, or with the test process if it dies.
//!
//! Waits are bounded and end on a positive signal (a greeting, a `READY` line, a file), so a
//! busy machine makes them slower, not flaky. dovecot needs root (the tests run as root).

use std::io::{self, BufRead, BufReader};
use std::os::unix::fs::{chown, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use base64::Engine as _;
use futures::TryStreamExt;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::{sleep, timeout};

use crate::support::free_port;

/// How long a server may take to come up or go down on a busy machine.
const STARTUP: Duration = Duration::from_secs(30);
/// How long one IMAP step (connect, greeting, a command) may take before it counts as hung.
const STEP: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_millis(50);

/// dovecot's test users; both have the password `secret`.
const USERS: [(&str, &str); 2] = [("alice", "secret"), ("bob", "secret")];
/// `nobody:nogroup` on Debian: mail is never read as root.
const MAIL_UID: u32 = 65534;

static NEXT_DIR: AtomicUsize = AtomicUsize::new(0);

/// A client session on a [`Dovecot`], for tests that need more than the helpers (IDLE, STORE).
pub type ImapSession = async_imap::Session<TcpStream>;

/// A dovecot on `127.0.0.1:port` with the users `alice` and `bob` (password `secret`) and
/// Maildirs under its temp dir.
pub struct Dovecot {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Dovecot {
    /// Starts dovecot on a free port; returns once it greets, or panics with its log.
    pub async fn start() -> Dovecot {
        sweep_stale();
        let dir = PathBuf::from(format!(
            "/tmp/sbdc-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::SeqCst)
        ));
        let mut dovecot = Dovecot {
            port: 0,
            dir,
            child: None,
        };
        if let Err(e) = dovecot.prepare_dir() {
            panic!(
                "cannot set up dovecot's dir {}: {e:#}",
                dovecot.dir.display()
            );
        }
        dovecot.launch(true).await;
        dovecot
    }

    /// The user the tests log in as, with its password.
    pub fn user(&self) -> (&str, &str) {
        USERS[0]
    }

    /// The temp dir holding the config, the log and the Maildirs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// dovecot's own log and whatever it wrote to stderr (config errors go there).
    pub fn log(&self) -> String {
        let read = |name: &str| std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
        format!("{}{}", read("stderr.log"), read("dovecot.log"))
    }

    /// A logged-in session for `user` (`alice` or `bob`).
    pub async fn session(&self, user: &str) -> ImapSession {
        self.check(self.try_session(user).await)
    }

    /// Stores `raw` (an RFC 5322 message) in `user`'s INBOX with IMAP APPEND.
    pub async fn append(&self, user: &str, raw: &[u8]) {
        let result = async {
            let mut s = self.try_session(user).await?;
            step("APPEND", s.append("INBOX", None, None, raw)).await?;
            logout(s).await;
            anyhow::Ok(())
        }
        .await;
        self.check(result.with_context(|| format!("appending to {user}'s INBOX")))
    }

    /// The UIDs in `user`'s INBOX, ascending.
    pub async fn uids(&self, user: &str) -> Vec<u32> {
        self.check(self.search(user, "ALL").await)
    }

    /// The UIDs in `user`'s INBOX that carry `\Seen`, ascending.
    pub async fn seen(&self, user: &str) -> Vec<u32> {
        self.check(self.search(user, "SEEN").await)
    }

    /// Stops dovecot with SIGTERM and returns once it has exited and its port refuses
    /// connections. The mail stays for [`Dovecot::start_again`]. Its mail processes end too,
    /// as in a server restart (dovecot's master leaves logged-in sessions running).
    pub async fn stop(&mut self) {
        let Some(child) = self.child.as_mut() else {
            return;
        };
        let sessions = children_of(child.id());
        terminate(child);
        for pid in sessions {
            // SAFETY: kill(2) on a process this dovecot started.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
        }
        // Left in place if it does not exit, for `Drop` to end it.
        if wait_exit(child, STARTUP).await.is_none() {
            panic!(
                "dovecot did not exit within {STARTUP:?} of SIGTERM\n{}",
                self.log()
            );
        }
        self.child = None;
        let deadline = Instant::now() + STARTUP;
        loop {
            match timeout(STEP, TcpStream::connect(("127.0.0.1", self.port))).await {
                Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => return,
                _ if Instant::now() > deadline => panic!(
                    "port {} still accepts connections after dovecot exited",
                    self.port
                ),
                _ => sleep(POLL).await,
            }
        }
    }

    /// Delivers a message into `user`'s Maildir directly, as a mail server's delivery agent
    /// does, whether dovecot runs or not (mail that arrives while IMAP is down).
    pub fn deliver(&self, user: &str, raw: &[u8]) {
        let dir = self.dir.join("mail").join(user);
        for sub in ["tmp", "new", "cur"] {
            let d = dir.join(sub);
            std::fs::create_dir_all(&d).unwrap();
            chown(&d, Some(MAIL_UID), Some(MAIL_UID)).unwrap();
        }
        chown(&dir, Some(MAIL_UID), Some(MAIL_UID)).unwrap();
        let name = format!(
            "{}.P{}Q{}.switchboard-test",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::SeqCst)
        );
        let tmp = dir.join("tmp").join(&name);
        std::fs::write(&tmp, raw).unwrap();
        chown(&tmp, Some(MAIL_UID), Some(MAIL_UID)).unwrap();
        std::fs::rename(&tmp, dir.join("new").join(&name)).unwrap();
    }

    /// Starts dovecot again on the same port with the same mail, after [`Dovecot::stop`] (or
    /// stops it first). Retries for a while if the port is not free yet.
    pub async fn start_again(&mut self) {
        self.stop().await;
        self.launch(false).await;
    }

    /// Starts the process and waits for its greeting. A process that exits before greeting
    /// (the port was taken, or not released yet) is started again, on a new port if `may_move`.
    async fn launch(&mut self, may_move: bool) {
        let deadline = Instant::now() + STARTUP;
        loop {
            if may_move || self.port == 0 {
                self.port = free_port();
            }
            if let Err(e) = self.write_config() {
                panic!("cannot write dovecot's config: {e:#}");
            }
            let mut child = match self.spawn() {
                Ok(child) => child,
                Err(e) => {
                    panic!("cannot run /usr/sbin/dovecot (apt-get install dovecot-imapd): {e:#}")
                }
            };
            match self.wait_greeting(&mut child, deadline).await {
                Ok(()) => {
                    self.child = Some(child);
                    return;
                }
                Err(NotUp::Exited(status)) if Instant::now() < deadline => {
                    let log = self.log();
                    if !log.contains("in use") {
                        panic!("dovecot exited with {status} before greeting\n{log}");
                    }
                    sleep(Duration::from_millis(200)).await;
                }
                Err(NotUp::Exited(status)) => panic!(
                    "dovecot kept exiting ({status}) for {STARTUP:?} instead of listening on {}\n{}",
                    self.port,
                    self.log()
                ),
                Err(NotUp::NotReady(why)) => {
                    terminate(&mut child);
                    let _ = wait_exit(&mut child, STEP).await;
                    panic!(
                        "dovecot on port {} did not greet within {STARTUP:?}: {why}\n{}",
                        self.port,
                        self.log()
                    );
                }
            }
        }
    }

    fn prepare_dir(&self) -> anyhow::Result<()> {
        let _ = std::fs::remove_dir_all(&self.dir);
        std::fs::create_dir(&self.dir)?;
        // Its processes run as other users and give "Temporary authentication failure" when
        // they cannot enter the dir.
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o755))?;
        let mail = self.dir.join("mail");
        std::fs::create_dir(&mail)?;
        chown(&mail, Some(MAIL_UID), Some(MAIL_UID)).context("chown mail dir (needs root)")?;
        let users: String = USERS
            .iter()
            .map(|(u, p)| format!("{u}:{{PLAIN}}{p}\n"))
            .collect();
        std::fs::write(self.dir.join("users"), users)?;
        Ok(())
    }

    fn write_config(&self) -> anyhow::Result<()> {
        let t = self.dir.display();
        // `protocols` or it never listens; `ssl = no` or it also binds 993; `base_dir` must
        // stay under 82 characters; its own `state_dir` keeps parallel instances apart.
        let config = format!(
            "protocols = imap\n\
             listen = 127.0.0.1\n\
             base_dir = {t}/run\n\
             state_dir = {t}/state\n\
             log_path = {t}/dovecot.log\n\
             ssl = no\n\
             disable_plaintext_auth = no\n\
             mail_location = maildir:{t}/mail/%u\n\
             passdb {{\n  driver = passwd-file\n  args = {t}/users\n}}\n\
             userdb {{\n  driver = static\n  args = uid={MAIL_UID} gid={MAIL_UID}\n}}\n\
             service imap-login {{\n  inet_listener imap {{\n    port = {port}\n  }}\n}}\n",
            port = self.port
        );
        std::fs::write(self.dir.join("dovecot.conf"), config)?;
        Ok(())
    }

    fn spawn(&self) -> anyhow::Result<Child> {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("stderr.log"))?;
        let mut cmd = Command::new("/usr/sbin/dovecot");
        cmd.arg("-F")
            .arg("-c")
            .arg(self.dir.join("dovecot.conf"))
            .stdin(Stdio::null())
            .stdout(stderr.try_clone()?)
            .stderr(stderr);
        Ok(spawn_tied(cmd)?)
    }

    /// Waits until a connection gets dovecot's greeting: accepting TCP is not enough, a broken
    /// login process accepts and never answers.
    async fn wait_greeting(&self, child: &mut Child, deadline: Instant) -> Result<(), NotUp> {
        let mut why = String::from("nothing listened");
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(NotUp::Exited(status));
            }
            if Instant::now() > deadline {
                return Err(NotUp::NotReady(why));
            }
            match timeout(STEP, TcpStream::connect(("127.0.0.1", self.port))).await {
                Ok(Ok(mut stream)) => match read_greeting(&mut stream).await {
                    Ok(()) => return Ok(()),
                    Err(e) => why = format!("{e:#}"),
                },
                Ok(Err(e)) => why = format!("connect: {e}"),
                Err(_) => why = "connect timed out".into(),
            }
            sleep(POLL).await;
        }
    }

    async fn try_session(&self, user: &str) -> anyhow::Result<ImapSession> {
        let Some(&(_, password)) = USERS.iter().find(|(u, _)| *u == user) else {
            bail!("no user {user:?} on this dovecot (there are alice and bob)");
        };
        let mut stream = step("connect", TcpStream::connect(("127.0.0.1", self.port))).await?;
        read_greeting(&mut stream).await?;
        let client = async_imap::Client::new(stream);
        match timeout(STEP, client.login(user, password)).await {
            Ok(Ok(session)) => Ok(session),
            Ok(Err((e, _))) => Err(anyhow!(e).context(format!("LOGIN {user}"))),
            Err(_) => bail!("LOGIN {user} timed out after {STEP:?}"),
        }
    }

    async fn search(&self, user: &str, query: &str) -> anyhow::Result<Vec<u32>> {
        let mut s = self.try_session(user).await?;
        step("EXAMINE INBOX", s.examine("INBOX")).await?;
        let mut uids: Vec<u32> = step("UID SEARCH", s.uid_search(query))
            .await?
            .into_iter()
            .collect();
        uids.sort_unstable();
        logout(s).await;
        Ok(uids)
    }

    fn check<T>(&self, result: anyhow::Result<T>) -> T {
        result.unwrap_or_else(|e| panic!("dovecot on port {}: {e:#}\n{}", self.port, self.log()))
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child);
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            // Only if SIGTERM was not enough: never leave a server behind.
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Why dovecot is not up yet.
enum NotUp {
    Exited(ExitStatus),
    NotReady(String),
}

/// Reads lines up to dovecot's real greeting. While its auth process is starting, dovecot
/// first sends `* OK Waiting for authentication process to respond..`, then the greeting.
/// Reads byte by byte so that nothing after the greeting is taken from the IMAP client.
async fn read_greeting(stream: &mut TcpStream) -> anyhow::Result<()> {
    let read = async {
        let mut line = Vec::new();
        loop {
            let byte = stream.read_u8().await.context("reading the greeting")?;
            line.push(byte);
            if byte != b'\n' {
                if line.len() > 4096 {
                    bail!("a greeting line longer than 4096 bytes");
                }
                continue;
            }
            let text = String::from_utf8_lossy(&line).into_owned();
            line.clear();
            if text.starts_with("* OK Waiting") {
                continue;
            }
            if text.starts_with("* OK") {
                return Ok(());
            }
            bail!("unexpected greeting {:?}", text.trim_end());
        }
    };
    match timeout(STEP, read).await {
        Ok(result) => result,
        Err(_) => bail!("accepted the connection but sent no greeting within {STEP:?}"),
    }
}

/// One IMAP (or connect) step, bounded by [`STEP`].
async fn step<T, E>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, E>>,
) -> anyhow::Result<T>
where
    E: std::error::Error + Send + Sync + 'static,
{
    match timeout(STEP, f).await {
        Ok(result) => result.with_context(|| what.to_owned()),
        Err(_) => bail!("{what} timed out after {STEP:?}"),
    }
}

async fn logout(mut s: ImapSession) {
    let _ = timeout(STEP, s.logout()).await;
}

/// Options for [`SmtpSink::start_with`].
#[derive(Debug, Clone, Default)]
pub struct SinkOptions {
    /// Require AUTH (PLAIN or LOGIN, without TLS) with this user and password; MAIL FROM
    /// before it gets `530`.
    pub auth: Option<(String, String)>,
    /// Always answer RCPT TO of the address with the reply, e.g. `550 5.1.1 No such user`.
    pub refuse: Vec<(String, String)>,
    /// Answer RCPT TO of the address with the reply (a `4xx`) the first `n` times, then accept.
    pub tempfail: Vec<(String, String, u32)>,
}

/// A message the sink accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkMail {
    pub mail_from: String,
    pub rcpt_tos: Vec<String>,
    /// The message as received after DATA (CRLF line ends), as text; invalid UTF-8 becomes U+FFFD.
    pub data: String,
    /// The same, byte for byte.
    pub raw: Vec<u8>,
}

/// An SMTP server on `127.0.0.1:port` that accepts everything it is not told to refuse and
/// keeps each message as a file.
pub struct SmtpSink {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Child,
}

#[derive(serde::Deserialize)]
struct StoredMail {
    mail_from: String,
    rcpt_tos: Vec<String>,
    data_base64: String,
}

#[derive(serde::Deserialize)]
struct StoredRefusal {
    rcpt: String,
    reply: String,
}

const SINK_SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/integration/smtp_sink.py"
);

impl SmtpSink {
    pub async fn start() -> SmtpSink {
        Self::start_with(SinkOptions::default()).await
    }

    /// Starts the sink on a free port; returns once it listens, or panics with its stderr.
    pub async fn start_with(opts: SinkOptions) -> SmtpSink {
        sweep_stale();
        let dir = tempfile::Builder::new()
            .prefix(&format!("sb-smtp-{}-", std::process::id()))
            .tempdir_in("/tmp")
            .unwrap_or_else(|e| panic!("a temp dir for the SMTP sink: {e}"));
        let deadline = Instant::now() + STARTUP;
        loop {
            let port = free_port();
            let (mut child, ready) = match spawn_sink(&opts, port, dir.path()) {
                Ok(started) => started,
                Err(e) => panic!("cannot run python3 {SINK_SCRIPT}: {e:#}"),
            };
            let stderr =
                || std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default();
            let left = deadline.saturating_duration_since(Instant::now());
            match timeout(left, ready).await {
                Ok(Ok(())) => return SmtpSink { port, dir, child },
                outcome => {
                    let _ = child.kill();
                    let status = child.wait().ok();
                    let log = stderr();
                    // Another process took the free port first: try another.
                    if outcome.is_ok() && log.contains("in use") && Instant::now() < deadline {
                        continue;
                    }
                    panic!(
                        "the SMTP sink did not print READY within {STARTUP:?} (exit: {status:?}); \
                         aiosmtpd 1.4.6 installed? (.ci/install-test-deps)\n{log}"
                    );
                }
            }
        }
    }

    /// The accepted messages, in the order they arrived.
    pub fn messages(&self) -> Vec<SinkMail> {
        read_json::<StoredMail>(self.dir.path())
            .into_iter()
            .filter_map(|m| {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(m.data_base64)
                    .ok()?;
                Some(SinkMail {
                    mail_from: m.mail_from,
                    rcpt_tos: m.rcpt_tos,
                    data: String::from_utf8_lossy(&raw).into_owned(),
                    raw,
                })
            })
            .collect()
    }

    /// Waits until at least `n` messages came (at most 30 s) and returns them all.
    pub async fn wait_for(&self, n: usize) -> Vec<SinkMail> {
        let deadline = Instant::now() + STARTUP;
        loop {
            let got = self.messages();
            if got.len() >= n {
                return got;
            }
            if Instant::now() > deadline {
                let summary: Vec<String> = got
                    .iter()
                    .map(|m| format!("from {} to {:?}", m.mail_from, m.rcpt_tos))
                    .collect();
                panic!(
                    "expected {n} messages at the SMTP sink within {STARTUP:?}, {} came: {summary:?}\n{}",
                    got.len(),
                    self.log()
                );
            }
            sleep(POLL).await;
        }
    }

    /// The refused RCPT TOs (address, reply), in order, from `refuse` and `tempfail`.
    pub fn attempts(&self) -> Vec<(String, String)> {
        read_json::<StoredRefusal>(&self.dir.path().join("refused"))
            .into_iter()
            .map(|r| (r.rcpt, r.reply))
            .collect()
    }

    /// What aiosmtpd wrote to stderr.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        // std signals only a child it has not reaped, so this never hits a reused pid.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the script; the receiver resolves when it prints READY, or fails when its stdout
/// closes first.
fn spawn_sink(
    opts: &SinkOptions,
    port: u16,
    dir: &Path,
) -> anyhow::Result<(Child, tokio::sync::oneshot::Receiver<()>)> {
    let mut cmd = Command::new("python3");
    cmd.arg(SINK_SCRIPT)
        .arg("--port")
        .arg(port.to_string())
        .arg("--dir")
        .arg(dir);
    if let Some((user, password)) = &opts.auth {
        cmd.arg("--auth").arg(format!("{user}:{password}"));
    }
    for (addr, reply) in &opts.refuse {
        cmd.arg("--refuse").arg(format!("{addr}={reply}"));
    }
    for (addr, reply, times) in &opts.tempfail {
        cmd.arg("--tempfail").arg(format!("{addr}={reply}:{times}"));
    }
    let stderr = std::fs::File::create(dir.join("stderr.log"))?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr);
    let mut child = spawn_tied(cmd)?;
    let stdout = child.stdout.take().context("the sink's stdout")?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    // Reads to the end, so the script never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.trim() == "READY" {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(());
                }
            }
        }
    });
    Ok((child, rx))
}

/// The `*.json` files of `dir` that parse, by name (the sink numbers them by arrival).
fn read_json<T: serde::de::DeserializeOwned>(dir: &Path) -> Vec<T> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "json")
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    paths.sort();
    paths
        .iter()
        .filter_map(|p| serde_json::from_slice(&std::fs::read(p).ok()?).ok())
        .collect()
}

/// Spawns `cmd` from a thread that lives as long as the test process, with SIGTERM as its
/// parent-death signal, so a server outlives neither the test process nor a SIGKILL of it.
/// The signal follows the thread that forked: forking from a test's own thread would stop
/// the server when that thread ends.
fn spawn_tied(mut cmd: Command) -> io::Result<Child> {
    type Request = (Command, mpsc::Sender<io::Result<Child>>);
    static SPAWNER: OnceLock<mpsc::Sender<Request>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        let spawned = std::thread::Builder::new()
            .name("mail-server-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            });
        if let Err(e) = spawned {
            eprintln!("no thread to spawn mail servers from: {e}");
        }
        tx
    });
    // SAFETY: prctl only sets the child's parent-death signal; it allocates nothing and
    // takes no lock between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (tx, rx) = mpsc::channel();
    let gone = || io::Error::other("the spawner thread is gone");
    spawner.send((cmd, tx)).map_err(|_| gone())?;
    rx.recv().map_err(|_| gone())?
}

/// SIGTERM to `child`, unless it was already reaped (then its pid may belong to another).
fn terminate(child: &mut Child) {
    if matches!(child.try_wait(), Ok(None)) {
        if let Ok(pid) = libc::pid_t::try_from(child.id()) {
            // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
    }
}

async fn wait_exit(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => sleep(POLL).await,
            _ => return None,
        }
    }
}

/// Removes the temp dirs of earlier test processes that are gone (killed before cleaning up).
fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir("/tmp") else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name
            .strip_prefix("sbdc-")
            .or_else(|| name.strip_prefix("sb-smtp-"))
        else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or_default();
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// The harness's own tests.
mod tests {
    use lettre::message::Mailbox;
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

    use super::*;

    const RAW: &[u8] = b"From: Carol <carol@example.test>\r\n\
        To: alice@example.test\r\n\
        Subject: Re: run 7\r\n\
        Message-ID: <reply-1@example.test>\r\n\
        In-Reply-To: <run-7@switchboard.test>\r\n\
        \r\n\
        Approved.\r\n";

    #[tokio::test]
    async fn dovecot_keeps_appended_mail_across_a_restart() {
        let mut dovecot = Dovecot::start().await;
        let (alice, _) = dovecot.user();
        let alice = alice.to_owned();

        dovecot.append(&alice, RAW).await;

        assert_eq!(dovecot.uids(&alice).await, vec![1]);
        assert_eq!(dovecot.seen(&alice).await, Vec::<u32>::new());
        assert_eq!(dovecot.uids("bob").await, Vec::<u32>::new());
        let mut s = dovecot.session(&alice).await;
        s.select("INBOX").await.unwrap();
        let fetched: Vec<_> = s
            .uid_fetch("1", "BODY[]")
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        assert_eq!(fetched[0].body(), Some(RAW));
        s.logout().await.unwrap();
        // A FETCH of BODY[] (not BODY.PEEK[]) sets \Seen.
        assert_eq!(dovecot.seen(&alice).await, vec![1]);

        dovecot.stop().await;
        let refused = TcpStream::connect(("127.0.0.1", dovecot.port)).await;
        assert_eq!(
            refused.err().map(|e| e.kind()),
            Some(io::ErrorKind::ConnectionRefused)
        );

        // Someone holds the port for a moment: starting again waits it out.
        let squatter = std::net::TcpListener::bind(("127.0.0.1", dovecot.port)).unwrap();
        let release = tokio::spawn(async move {
            sleep(Duration::from_millis(500)).await;
            drop(squatter);
        });
        dovecot.start_again().await;
        release.await.unwrap();
        assert_eq!(dovecot.uids(&alice).await, vec![1]);
        assert_eq!(dovecot.seen(&alice).await, vec![1]);

        let dir = dovecot.dir().to_owned();
        drop(dovecot);
        assert!(!dir.exists());
    }

    fn transport(
        port: u16,
        credentials: Option<(&str, &str)>,
    ) -> AsyncSmtpTransport<Tokio1Executor> {
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
            .port(port)
            .timeout(Some(STEP));
        if let Some((user, password)) = credentials {
            builder = builder.credentials(Credentials::new(user.into(), password.into()));
        }
        builder.build()
    }

    fn message(to: &str) -> Message {
        Message::builder()
            .from("Switchboard <bot@example.test>".parse::<Mailbox>().unwrap())
            .to(to.parse::<Mailbox>().unwrap())
            .subject("Run 7 needs approval")
            .body(String::from("Reply to approve.\r\n"))
            .unwrap()
    }

    fn code(e: &lettre::transport::smtp::Error) -> Option<u16> {
        e.status().map(u16::from)
    }

    #[tokio::test]
    async fn smtp_sink_keeps_what_lettre_sends() {
        let sink = SmtpSink::start().await;

        transport(sink.port, None)
            .send(message("dana@example.test"))
            .await
            .unwrap();

        let got = sink.wait_for(1).await;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].mail_from, "bot@example.test");
        assert_eq!(got[0].rcpt_tos, vec!["dana@example.test".to_owned()]);
        assert!(
            got[0].data.contains("Subject: Run 7 needs approval\r\n"),
            "{}",
            got[0].data
        );
        assert!(got[0].data.contains("Reply to approve."), "{}", got[0].data);
        assert_eq!(got[0].raw, got[0].data.as_bytes());
    }

    #[tokio::test]
    async fn smtp_sink_requires_auth_when_asked() {
        let sink = SmtpSink::start_with(SinkOptions {
            auth: Some(("relay".into(), "pw".into())),
            ..SinkOptions::default()
        })
        .await;

        let anonymous = transport(sink.port, None)
            .send(message("dana@example.test"))
            .await;
        let wrong = transport(sink.port, Some(("relay", "nope")))
            .send(message("dana@example.test"))
            .await;
        transport(sink.port, Some(("relay", "pw")))
            .send(message("dana@example.test"))
            .await
            .unwrap();

        let anonymous = anonymous.unwrap_err();
        assert_eq!(code(&anonymous), Some(530), "{anonymous}");
        let wrong = wrong.unwrap_err();
        assert!(wrong.is_permanent(), "{wrong}");
        assert_eq!(code(&wrong), Some(535), "{wrong}");
        assert_eq!(sink.wait_for(1).await.len(), 1);
    }

    #[tokio::test]
    async fn smtp_sink_refuses_and_tempfails_recipients() {
        let sink = SmtpSink::start_with(SinkOptions {
            refuse: vec![("ghost@example.test".into(), "550 5.1.1 No such user".into())],
            tempfail: vec![("later@example.test".into(), "451 4.3.0 Try later".into(), 2)],
            ..SinkOptions::default()
        })
        .await;
        let smtp = transport(sink.port, None);

        let refused = smtp.send(message("ghost@example.test")).await.unwrap_err();
        let first = smtp.send(message("later@example.test")).await.unwrap_err();
        let second = smtp.send(message("later@example.test")).await.unwrap_err();
        smtp.send(message("later@example.test")).await.unwrap();

        assert!(refused.is_permanent(), "{refused}");
        assert_eq!(code(&refused), Some(550));
        for e in [&first, &second] {
            assert!(e.is_transient(), "{e}");
            assert_eq!(code(e), Some(451));
        }
        let got = sink.wait_for(1).await;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].rcpt_tos, vec!["later@example.test".to_owned()]);
        assert_eq!(
            sink.attempts(),
            vec![
                ("ghost@example.test".into(), "550 5.1.1 No such user".into()),
                ("later@example.test".into(), "451 4.3.0 Try later".into()),
                ("later@example.test".into(), "451 4.3.0 Try later".into()),
            ]
        );
    }
}

/// The processes whose parent is `pid` (dovecot's login and mail processes).
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    // `pid (comm) state ppid …`: comm may hold spaces, so split after ')'.
                    let rest = s.rsplit_once(')')?.1;
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}
