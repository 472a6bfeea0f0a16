//! The `switchboard` command line: parses arguments and calls into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use switchboard::app::{App, Options};
use switchboard::clock::Clock;

// The gateway allocates many small, short-lived JSON values per event; mimalloc handles that
// pattern with less CPU than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "switchboard",
    version,
    about = "Self-hosted chat-bot gateway: webhooks, messages and clicks into durable scenario runs"
)]
struct Cli {
    /// Log as JSON lines instead of text.
    #[arg(long, global = true, env = "SWITCHBOARD_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

const DEFAULT_DB: &str = "sqlite://switchboard.db";

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Run {
        /// The config folder: gateway.toml and one file per scenario.
        #[arg(long, default_value = "bot-configs", env = "SWITCHBOARD_CONFIG")]
        config: PathBuf,
        /// Database URL: a path, sqlite://path, or postgres://user@host/db (migrated on start).
        #[arg(long, default_value = DEFAULT_DB, env = "DATABASE_URL")]
        database: String,
        /// Address to listen on (default: the gateway file's server.listen, else 127.0.0.1:8080).
        #[arg(long, env = "SWITCHBOARD_LISTEN")]
        listen: Option<String>,
        /// Externally reachable base URL (trigger links point here).
        #[arg(long, env = "SWITCHBOARD_PUBLIC_URL")]
        public_url: Option<String>,
        /// Address of the admin API, journal pages and metrics.
        #[arg(
            long,
            default_value = "127.0.0.1:8081",
            env = "SWITCHBOARD_ADMIN_LISTEN"
        )]
        admin_listen: String,
        /// Bearer token for the admin API and the journal pages (unset: switched off).
        #[arg(long, env = "SWITCHBOARD_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: Option<String>,
        /// Key that signs trigger links (unset: generated once and kept in the database).
        #[arg(long, env = "SWITCHBOARD_LINK_KEY", hide_env_values = true)]
        link_key: Option<String>,
        /// Reload when a file in the config folder or its locales changes (SIGHUP and
        /// `POST /api/config/reload` reload too).
        #[arg(long, env = "SWITCHBOARD_WATCH")]
        watch: bool,
    },
    /// Validate a config folder; prints `path:line:col: message` per problem, exit 1 on any.
    Check {
        /// The config folder to check.
        #[arg(default_value = "bot-configs")]
        dir: PathBuf,
    },
    /// Dry-run one scenario on an event: prints each verdict and what it would send.
    Simulate {
        /// The scenario's id.
        scenario: String,
        /// JSON file with the event (the webhook body).
        #[arg(long)]
        event: PathBuf,
        /// The config folder.
        #[arg(long, default_value = "bot-configs")]
        config: PathBuf,
        /// Answer the next wait with this text (or JSON object); repeatable.
        #[arg(long)]
        reply: Vec<String>,
        /// Answer the next wait with a button click; repeatable.
        #[arg(long)]
        click: Vec<String>,
        /// Status the simulated HTTP responses have.
        #[arg(long, default_value_t = 200)]
        http_status: u16,
    },
    /// Run the `[[test]]` tables of the scenario files offline; exit 1 on any failure.
    Test {
        /// The config folder.
        #[arg(default_value = "bot-configs")]
        dir: PathBuf,
        /// Only tests whose name contains this.
        #[arg(long)]
        filter: Option<String>,
        /// Also write the results as JUnit XML to this file.
        #[arg(long)]
        junit: Option<PathBuf>,
    },
    /// Draw a scenario's step graph (labels, branches, ask and offer outcomes, timeouts, calls).
    Graph {
        /// The scenario's id.
        scenario: String,
        /// The config folder.
        #[arg(long, default_value = "bot-configs")]
        config: PathBuf,
        /// `mermaid`, `dot` (Graphviz) or `svg` (laid out here, no Graphviz needed).
        #[arg(long, default_value = "mermaid", value_parser = ["mermaid", "dot", "svg"])]
        format: String,
    },
    /// Create or upgrade the database schema.
    Migrate {
        /// Database URL: a path, sqlite://path, or postgres://user@host/db.
        #[arg(long, default_value = DEFAULT_DB, env = "DATABASE_URL")]
        database: String,
    },
    /// Print the JSON Schema of the config format.
    Schema,
    /// Print recent events with their verdicts and runs with their steps.
    Journal {
        /// Database URL: an existing SQLite file (or sqlite://path), or postgres://….
        #[arg(long, default_value = DEFAULT_DB, env = "DATABASE_URL")]
        database: String,
        /// How many recent events.
        #[arg(long, default_value_t = 10)]
        last: i64,
    },
    /// Load generator: runs a gateway on a fresh database and measures it (see README).
    Bench {
        /// Events for the throughput run.
        #[arg(long, default_value_t = 20_000)]
        events: usize,
        /// Concurrent client connections.
        #[arg(long, default_value_t = 50)]
        connections: usize,
        /// Events per second for a paced latency run (0 skips it).
        #[arg(long, default_value_t = 0)]
        rate: u64,
        /// Runs to park in `wait` for the memory measurement (0 skips it).
        #[arg(long, default_value_t = 0)]
        parked: usize,
        /// The locales folder the bench's gateway loads.
        #[arg(long, default_value = "locales")]
        locales: PathBuf,
        /// A PostgreSQL server (postgres://user@host/db) to run on instead of a SQLite file;
        /// the bench creates a database of its own there and drops it afterwards.
        #[arg(long)]
        postgres: Option<String>,
        /// Gateway processes on the PostgreSQL database, sharing the load.
        #[arg(long, default_value_t = 1)]
        replicas: usize,
        /// The gateway's `server.max_backlog` (work in progress before intake waits).
        #[arg(long)]
        max_backlog: Option<usize>,
    },
}

fn init_logs(json: bool, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        b.json().init();
    } else {
        b.init();
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // The gateway journals at info; one-shot commands print their own output.
    let default = match cli.command {
        Command::Run { .. } => "info,sqlx=warn",
        _ => "warn",
    };
    init_logs(cli.log_json, default);
    match run(cli.command).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// `println!` that ends the command quietly when the reader has gone (`… | head`).
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut stdout = std::io::stdout().lock();
        if let Err(e) = writeln!(stdout, $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(ExitCode::SUCCESS);
            }
            return Err(e.into());
        }
    }};
}

async fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Run {
            config,
            database,
            listen,
            public_url,
            admin_listen,
            admin_token,
            link_key,
            watch,
        } => {
            // Set but empty is a token gone missing (`SWITCHBOARD_ADMIN_TOKEN=$UNSET`), not
            // a wish to lock the admin side: that is what leaving it unset does.
            if admin_token.as_deref().is_some_and(|t| t.trim().is_empty()) {
                anyhow::bail!(
                    "the admin token (--admin-token or SWITCHBOARD_ADMIN_TOKEN) is empty; \
                     set one, or leave it unset to keep the admin API and pages locked"
                );
            }
            // SIGHUP reloads once the gateway is up; until then it must not end the process
            // (its default), so it is taken over before anything else.
            #[cfg(unix)]
            let _hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
            let app = App::start(Options {
                config_dir: config,
                database,
                listen,
                public_url,
                admin_listen: Some(admin_listen),
                admin_token,
                // An empty value (an unset variable in a compose file) means none.
                link_key: link_key.filter(|k| !k.is_empty()),
                clock: Clock::default(),
                watch,
            })
            .await?;
            out!(
                "switchboard listening on {} (admin on {})",
                app.url(),
                app.admin_url()
            );
            app.run_until_stopped().await?;
        }
        Command::Check { dir } => match switchboard::config::load(&dir) {
            Ok(cfg) => out!(
                "{}: {} scenarios, no problems",
                dir.display(),
                cfg.scenarios.len()
            ),
            Err(errors) => {
                out!("{errors}");
                eprintln!("{} problem(s)", errors.0.len());
                return Ok(ExitCode::from(1));
            }
        },
        Command::Simulate {
            scenario,
            event,
            config,
            mut reply,
            click,
            http_status,
        } => {
            let text = std::fs::read_to_string(&event)
                .map_err(|e| anyhow::anyhow!("{}: {e}", event.display()))?;
            let event: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
                anyhow::anyhow!(
                    "{}:{}:{}: malformed JSON: {e}",
                    event.display(),
                    e.line(),
                    e.column()
                )
            })?;
            reply.extend(
                click
                    .into_iter()
                    .map(|c| serde_json::json!({"button": c, "text": c}).to_string()),
            );
            let lines = switchboard::simulate::simulate(switchboard::simulate::SimOptions {
                config_dir: &config,
                scenario: &scenario,
                event,
                replies: reply,
                http_status,
            })
            .await?;
            for l in lines {
                out!("{l}");
            }
        }
        Command::Test { dir, filter, junit } => {
            let passed = tokio::task::spawn_blocking(move || {
                let mut stdout = std::io::stdout().lock();
                switchboard::scenario_test::command(
                    &dir,
                    filter.as_deref(),
                    junit.as_deref(),
                    &mut stdout,
                )
            })
            .await??;
            if !passed {
                return Ok(ExitCode::from(1));
            }
        }
        Command::Graph {
            scenario,
            config,
            format,
        } => {
            let cfg = match switchboard::config::load(&config) {
                Ok(cfg) => cfg,
                Err(errors) => {
                    out!("{errors}");
                    eprintln!("{} problem(s)", errors.0.len());
                    return Ok(ExitCode::from(1));
                }
            };
            let Some(sc) = cfg.scenario(&scenario) else {
                let mut ids: Vec<&str> = cfg.scenarios.iter().map(|s| s.id.as_str()).collect();
                ids.sort();
                eprintln!(
                    "error: no scenario '{scenario}' in {} (there are: {})",
                    config.display(),
                    ids.join(", ")
                );
                return Ok(ExitCode::from(1));
            };
            let text = switchboard::lang::graph::render(sc, &format).map_err(anyhow::Error::msg)?;
            out!("{text}");
        }
        Command::Migrate { database } => {
            let shown = switchboard::app::without_password(&database);
            switchboard::store::migrate(&database)
                .await
                .with_context(|| format!("migrating {shown}"))?;
            out!("{shown}: schema is up to date");
        }
        Command::Schema => out!(
            "{}",
            serde_json::to_string_pretty(&switchboard::config::json_schema())?
        ),
        Command::Journal { database, last } => {
            // A reader: a database that is not there is an error, not a new empty file.
            if let Some(path) = switchboard::store::sqlite_file(&database) {
                if !std::path::Path::new(path).exists() {
                    anyhow::bail!("no database at {path}");
                }
            }
            let store =
                switchboard::store::open(&database, &switchboard::store::PoolOptions::default())
                    .await
                    .with_context(|| {
                        format!(
                            "opening the database {}",
                            switchboard::app::without_password(&database)
                        )
                    })?;
            let mut events = store.recent_events(last).await?;
            events.reverse();
            for ev in events {
                out!("{}", switchboard::journal::event_line(&ev));
                for run in store.runs_for_event(ev.id).await? {
                    out!("  {}", switchboard::journal::run_header(&run));
                    for e in &run.journal {
                        out!("    {}", switchboard::journal::step_line(e));
                    }
                }
            }
            // A reader only: leave the replicas table as it was.
            store.retire().await?;
        }
        Command::Bench {
            events,
            connections,
            rate,
            parked,
            locales,
            postgres,
            replicas,
            max_backlog,
        } => {
            let lines = switchboard::bench::bench(switchboard::bench::BenchOptions {
                events,
                connections,
                rate,
                parked,
                locales,
                postgres,
                replicas,
                max_backlog,
            })
            .await?;
            for l in lines {
                out!("{l}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
