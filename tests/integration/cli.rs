//! The command line: check, simulate, schema, migrate.

use std::process::Command;

use crate::support::*;

/// The command in the repo, with the variable the examples need (as the README sets it).
fn run(args: &[&str]) -> (i32, String, String) {
    run_env(args, &[("PAYMENT_HOOK_SECRET", Some(PAYMENT_HOOK_SECRET))])
}

/// The command in the repo with these variables set (`Some`) or removed (`None`).
fn run_env(args: &[&str], env: &[(&str, Option<&str>)]) -> (i32, String, String) {
    let mut command = Command::new(bin());
    command.args(args).current_dir(repo());
    for (k, v) in env {
        match v {
            Some(v) => command.env(k, v),
            None => command.env_remove(k),
        };
    }
    let out = command.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn check_passes_the_examples() {
    let (code, out, err) = run(&["check", "bot-configs"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("no problems"));
}

#[test]
fn check_needs_the_examples_payment_hook_key_and_says_where() {
    let (code, out, _) = run_env(&["check", "bot-configs"], &[("PAYMENT_HOOK_SECRET", None)]);
    assert_eq!(code, 1, "{out}");
    let gw = std::fs::read_to_string(repo().join("bot-configs/gateway.toml")).unwrap();
    let (line, text) = gw
        .lines()
        .enumerate()
        .find(|(_, l)| l.contains("${PAYMENT_HOOK_SECRET}"))
        .expect("the example's payment hook takes its key from the environment");
    let col = text[..text.find("${").unwrap()].chars().count() + 1;
    assert_eq!(
        out.trim(),
        format!(
            "bot-configs/gateway.toml:{}:{col}: environment variable PAYMENT_HOOK_SECRET is not set",
            line + 1
        )
    );

    // Set but empty, the key is no key either.
    let (code, out, _) = run_env(
        &["check", "bot-configs"],
        &[("PAYMENT_HOOK_SECRET", Some(""))],
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!(
            "bot-configs/gateway.toml:{}:{}: hook 'payment': the secret is empty",
            line + 1,
            col - 1
        )),
        "{out}"
    );
}

#[test]
fn env_references_in_nested_values_are_checked_with_their_positions() {
    let cfg = ConfigDir::with(&[(
        "s.toml",
        "id = \"s\"\non = { webhook = \"${SB_TEST_HOOK}\" }\n[[step]]\n\
         http = { post = \"http://127.0.0.1:9/x\", json = { a = [1, { b = \"${SB_TEST_UNSET_B}\" }] } }\n",
    )]);
    let mut gw = std::fs::read_to_string(cfg.dir().join("gateway.toml")).unwrap();
    gw.push_str(
        "\n[channels.tg]\ntype = \"telegram\"\ntoken = \"1:x\"\nmode = \"webhook\"\n\
         webhook_secret = \"${SB_TEST_TG_SECRET:-}\"\nlimits = { chat = \"${SB_TEST_RATE:-2/1s}\" }\n\
         \n[[staff]]\nid = \"x\"\nname = \"X\"\ngroups = [\"${SB_TEST_UNSET_GROUP}\"]\n",
    );
    cfg.write("gateway.toml", &gw);
    let lines = gw.lines().count();
    let (code, out, _) = run_env(
        &["check", cfg.dir().to_str().unwrap()],
        &[("SB_TEST_HOOK", Some("h"))],
    );
    assert_eq!(code, 1, "{out}");
    let dir = cfg.dir().display().to_string();
    let got: Vec<&str> = out.lines().collect();
    assert_eq!(
        got,
        [
            format!(
                "{dir}/gateway.toml:{lines}:12: environment variable SB_TEST_UNSET_GROUP is not set"
            ),
            format!(
                "{dir}/gateway.toml:{}:18: channel 'tg': `webhook_secret` is empty",
                lines - 6
            ),
            format!("{dir}/s.toml:4:65: environment variable SB_TEST_UNSET_B is not set"),
        ],
        "{out}"
    );
}

/// `run` on a folder, for a gateway that should refuse to start: its exit code and stderr.
/// One that would serve until stopped fails the test after a bounded wait.
async fn refused_run(cfg: &ConfigDir, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let gateway = tokio::process::Command::new(bin())
        .args(["run", "--config", cfg.dir().to_str().unwrap()])
        .args(["--database", &cfg.db()])
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .envs(env.iter().copied())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), gateway)
        .await
        .expect("the gateway should have refused to start")
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn run_refuses_an_empty_admin_token() {
    let cfg = ConfigDir::with(&[]);
    let (code, err) = refused_run(&cfg, &[("SWITCHBOARD_ADMIN_TOKEN", "")]).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("the admin token (--admin-token or SWITCHBOARD_ADMIN_TOKEN) is empty"),
        "{err}"
    );
}

#[test]
fn check_reports_each_problem_with_its_position() {
    let cfg = ConfigDir::empty();
    cfg.write("gateway.toml", "[server]\nlisten = \"127.0.0.1:1\"\n");
    cfg.write(
        "broken.toml",
        "id = \"broken\"\non = { webhook = \"h\" }\nwhen = 'event.a =='\n\n[[step]]\ngoto = \"nowhere\"\n\n[[step]]\nsend = { to = \"telegram:1\", text = \"no-such-message\" }\n",
    );
    cfg.write("typo.toml", "id = \"typo\"\non = { webhook = \"h\" }\n[[step]]\nsleep = { for = \"10m\", kee = \"x\" }\n");
    let dir = cfg.dir();
    let (code, out, _) = run(&["check", dir.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    let broken = dir.join("broken.toml").display().to_string();
    let typo = dir.join("typo.toml").display().to_string();
    for want in [
        format!("{broken}:3:17: bad expression"),
        format!("{broken}:6:8: goto to a missing label 'nowhere'"),
        format!("{broken}:9:15: unknown channel 'telegram'"),
        format!("{broken}:9:36: unknown Fluent message 'no-such-message'"),
        format!("{typo}:4:24: unknown field `kee`"),
    ] {
        assert!(out.contains(&want), "missing «{want}» in:\n{out}");
    }
}

#[test]
fn simulate_prints_verdicts_and_what_would_be_sent() {
    let dir = tempfile::tempdir().unwrap();
    let ev = dir.path().join("deal.json");
    std::fs::write(
        &ev,
        r#"{"deal": {"id": 4, "stage": "new", "title": "Kiln", "budget": 50000}}"#,
    )
    .unwrap();
    let (code, out, err) = run(&["simulate", "deal-routing", "--event", ev.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("when if event.deal.stage == \"new\" → true (event.deal.stage = \"new\")"),
        "{out}"
    );
    assert!(
        out.contains("if event.deal.budget > 10000 → true (event.deal.budget = 50000)"),
        "{out}"
    );
    assert!(
        out.contains("would send to log:head-of-sales [pl]: Duża transakcja „Kiln”"),
        "{out}"
    );

    let ev = dir.path().join("appt.json");
    std::fs::write(
        &ev,
        r#"{"id": 3, "phone": "+48", "time": "Fri", "lang": "en"}"#,
    )
    .unwrap();
    let (_, out, _) = run(&[
        "simulate",
        "appointment-confirmation",
        "--event",
        ev.to_str().unwrap(),
    ]);
    assert!(out.contains("would wait here"), "{out}");
    let (_, out, _) = run(&[
        "simulate",
        "appointment-confirmation",
        "--event",
        ev.to_str().unwrap(),
        "--reply",
        r#"{"answer": "1"}"#,
    ]);
    assert!(
        out.contains("would send to log:+48 [en]: Thank you, your appointment is confirmed."),
        "{out}"
    );

    // Nothing was written anywhere.
    assert!(!dir.path().join("switchboard.db").exists());
}

#[test]
fn simulate_answers_an_ask_with_replies() {
    let dir = tempfile::tempdir().unwrap();
    let ev = dir.path().join("appt.json");
    std::fs::write(
        &ev,
        r#"{"id": 9, "chat_id": 555, "lang": "en", "time": "Fri", "owner": "elena"}"#,
    )
    .unwrap();
    let (code, out, err) = run(&[
        "simulate",
        "confirm-appointment",
        "--event",
        ev.to_str().unwrap(),
        "--reply",
        "yes",
        "--reply",
        " 1. ",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("would send to tg:555 [en]: Please answer with just one digit: 1, 2 or 3."),
        "{out}"
    );
    assert!(
        out.contains("would send to tg:555 [en]: Thank you, your appointment is confirmed."),
        "{out}"
    );
    assert!(out.contains("[done]"), "{out}");
}

#[test]
fn simulate_reports_a_broken_event_file() {
    let dir = tempfile::tempdir().unwrap();
    let ev = dir.path().join("bad.json");
    std::fs::write(&ev, "{\"deal\": ").unwrap();
    let (code, _, err) = run(&["simulate", "deal-routing", "--event", ev.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("bad.json:1:"), "{err}");
}

#[test]
fn schema_describes_every_file_kind() {
    let (code, out, _) = run(&["schema"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["definitions"]["scenario"]["properties"]["step"].is_object());
    assert!(v["definitions"]["scenario"]["properties"]["test"].is_object());
    assert!(v["definitions"]["gateway"]["properties"]["hooks"].is_object());
    assert!(v["definitions"]["tests"]["properties"]["scenario"].is_object());
}

/// What an editor checks against the schema: every example file follows it, and a misspelt
/// channel key or a step of the wrong shape does not (Python's `jsonschema`, draft 7, which the
/// test dependencies bring with schemathesis).
#[test]
fn the_example_files_follow_the_schema_and_mistakes_do_not() {
    let (code, out, _) = run(&["schema"]);
    assert_eq!(code, 0);
    let dir = tempfile::tempdir().unwrap();
    let schema = dir.path().join("schema.json");
    std::fs::write(&schema, out).unwrap();
    let wrong = dir.path().join("wrong");
    std::fs::create_dir(&wrong).unwrap();
    let gw = std::fs::read_to_string(repo().join("bot-configs/gateway.toml")).unwrap();
    std::fs::write(
        wrong.join("gateway.toml"),
        gw.replacen("token = \"${TELEGRAM_TOKEN:-}\"", "tokn = \"x\"", 1),
    )
    .unwrap();
    std::fs::write(
        wrong.join("flow.toml"),
        "id = \"flow\"\non = { webhook = \"x\" }\n[[step]]\nsend = 3\n",
    )
    .unwrap();
    let script = r#"
import glob, json, sys, tomllib
import jsonschema
schema = json.load(open(sys.argv[1]))
jsonschema.Draft7Validator.check_schema(schema)
v = jsonschema.Draft7Validator(schema)
for pattern in sys.argv[2:]:
    for f in sorted(glob.glob(pattern)):
        errors = list(v.iter_errors(tomllib.load(open(f, "rb"))))
        print(f, "ok" if not errors else "invalid")
"#;
    let out = Command::new("python3")
        .args(["-c", script, schema.to_str().unwrap()])
        .arg(repo().join("bot-configs/*.toml"))
        .arg(wrong.join("*.toml"))
        .output()
        .expect("python3 runs");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    let examples = lines.iter().filter(|l| l.contains("/bot-configs/")).count();
    assert!(examples >= 10, "{text}");
    for l in &lines {
        let wants = if l.contains("/wrong/") {
            "invalid"
        } else {
            "ok"
        };
        assert!(l.ends_with(wants), "{l}\n{text}");
    }
    assert_eq!(lines.iter().filter(|l| l.contains("/wrong/")).count(), 2);
}

#[test]
fn migrate_creates_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("x.db");
    let (code, out, err) = run(&[
        "migrate",
        "--database",
        &format!("sqlite://{}", db.display()),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("schema is up to date"));
    assert!(db.exists());
}

#[tokio::test]
async fn migrate_and_journal_work_on_postgres_without_leaving_a_replica_behind() {
    let db = crate::pg::fresh_db().await;
    let url = db.clone();
    let (code, out, err) =
        tokio::task::spawn_blocking(move || run(&["migrate", "--database", &url]))
            .await
            .unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("schema is up to date"));
    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables
         WHERE table_name IN ('events', 'runs', 'outbox', 'replicas', 'leases', 'send_slots')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(tables, 6);

    let url = db.clone();
    let (code, _, err) =
        tokio::task::spawn_blocking(move || run(&["journal", "--database", &url, "--last", "5"]))
            .await
            .unwrap();
    assert_eq!(code, 0, "{err}");
    // A reader is not a replica: nobody has to take over from it later.
    let replicas: i64 = sqlx::query_scalar("SELECT count(*) FROM replicas")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(replicas, 0);

    // A server that is not there: a clear error, no panic.
    let (code, _, err) = tokio::task::spawn_blocking(|| {
        run(&["migrate", "--database", "postgres://nobody@127.0.0.1:1/x"])
    })
    .await
    .unwrap();
    assert_eq!(code, 2, "a failure, not a config problem (1)");
    assert!(err.contains("Connection refused"), "{err}");
}

#[tokio::test]
async fn a_second_gateway_on_the_same_sqlite_file_refuses_to_start() {
    let cfg = ConfigDir::with(&[(
        "ping.toml",
        "id = \"ping\"\non = { webhook = \"ping\" }\n[[step]]\nstop = true\n",
    )]);
    let first = Gateway::start(&cfg).await;
    // A second writer would serve until stopped.
    let (code, err) = refused_run(&cfg, &[]).await;
    assert_ne!(code, Some(0));
    assert!(err.contains("another gateway is running on"), "{err}");
    // The first one is unharmed, and a reader still reads.
    first.post("ping", serde_json::json!({})).await;
    let (code, _, err) = run(&["journal", "--database", &cfg.db(), "--last", "1"]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn journal_on_a_missing_database_is_an_error_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("missing.db");
    let (code, _, err) = run(&["journal", "--database", db.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("no database at"), "{err}");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "nothing created"
    );
}

#[test]
fn a_gateway_file_that_does_not_parse_is_one_problem_on_one_line() {
    let cfg = ConfigDir::examples();
    let mut gw = std::fs::read_to_string(cfg.dir().join("gateway.toml")).unwrap();
    gw.push_str("\n[channels.tg]\ntype = \"telegram\"\n");
    cfg.write("gateway.toml", &gw);
    let (code, out, _) = run(&["check", cfg.dir().to_str().unwrap()]);
    assert_eq!(code, 1);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "{out}");
    assert!(lines[0].contains("gateway.toml:"), "{out}");
    assert!(lines[0].contains("duplicate key `tg`"), "{out}");
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    // `switchboard schema | head -1`: the reader is gone before the writer is done.
    let mut child = Command::new(bin())
        .arg("schema")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {err}", out.status);
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn an_empty_hook_secret_is_a_problem_with_its_position() {
    let cfg = ConfigDir::with(&[]);
    let mut gw = std::fs::read_to_string(cfg.dir().join("gateway.toml")).unwrap();
    gw.push_str("\n[hooks.pay]\nhmac = { secret = \"${SB_UNSET_SECRET:-}\" }\n");
    cfg.write("gateway.toml", &gw);
    let lines = gw.lines().count();
    let (code, out, _) = run(&["check", cfg.dir().to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        out.contains(&format!(
            "gateway.toml:{lines}:19: hook 'pay': the secret is empty"
        )),
        "{out}"
    );
}

/// item 7: secrets out of logs — a database password never reaches the command's output
#[tokio::test]
async fn a_database_password_stays_out_of_the_output() {
    const PASSWORD: &str = "s3cret-pw";
    // The test server trusts loopback, so a password in the URL is accepted and ignored.
    let db = crate::pg::fresh_db().await.replacen(
        "postgres://test@",
        &format!("postgres://test:{PASSWORD}@"),
        1,
    );
    let away = format!("postgres://sb:{PASSWORD}@127.0.0.1:1/x");
    let cases: Vec<Vec<String>> = vec![
        vec!["migrate".into(), "--database".into(), db.clone()],
        vec!["journal".into(), "--database".into(), db.clone()],
        vec!["migrate".into(), "--database".into(), away.clone()],
        vec!["journal".into(), "--database".into(), away.clone()],
        vec![
            "run".into(),
            "--config".into(),
            "bot-configs".into(),
            "--database".into(),
            away.clone(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--admin-listen".into(),
            "127.0.0.1:0".into(),
        ],
    ];
    for args in cases {
        let shown = args.join(" ");
        let (code, out, err) = tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run(&args)
        })
        .await
        .unwrap();
        let text = format!("{out}{err}");
        assert!(!text.contains(PASSWORD), "{shown}: {text}");
        if shown.contains("127.0.0.1:1/") {
            assert_eq!(code, 2, "{shown}: {text}");
            assert!(text.contains(":***@"), "{shown}: {text}");
        } else {
            assert_eq!(code, 0, "{shown}: {text}");
        }
    }
}

const FLOW: &str = r#"id = "flow"
on = { webhook = "flow" }
[[step]]
ask = { to = "tg:{{ event.who }}", template = "1 or 2?", choices = ["1", "2"], retries = 1, timeout = "1h" }
branch = { "2" = "two", timeout = "late" }
[[step]]
http = { post = "https://crm.example/x", json = { a = 1 } }
branch = { "2xx" = "done", error = "late" }
[[step]]
label = "two"
if = "run.answer.value == '2'"
call = { scenario = "other", vars = { x = "1" } }
[[step]]
label = "late"
send = { to = "ops", template = "late" }
[[step]]
label = "done"
stop = true
"#;

const OTHER: &str =
    "id = \"other\"\non = { call = true }\n[[step]]\nsend = { to = \"ops\", template = \"hi\" }\n";

#[test]
fn graph_draws_branches_outcomes_and_calls() {
    let cfg = ConfigDir::with(&[("flow.toml", FLOW), ("other.toml", OTHER)]);
    cfg.write(
        "gateway.toml",
        "[channels.tg]\ntype = \"telegram\"\ntoken = \"\"\n\n[channels.ops]\ntype = \"log\"\n",
    );
    let dir = cfg.dir();
    let dir = dir.to_str().unwrap();
    let (code, out, err) = run(&["graph", "flow", "--config", dir]);
    assert_eq!(code, 0, "{out}{err}");
    for line in [
        "trigger([\"webhook flow\"])",
        "s0[\"ask tg:{{ event.who }}\"]",
        "s0 -->|\"2\"| s2",
        "s0 -->|\"timeout\"| s3",
        "s0 -->|\"answer / exhausted\"| s1",
        "s1 -->|\"2xx\"| s4",
        "s1 -->|\"error\"| s3",
        "s1 -->|\"other\"| s2",
        "s2[\"two: call other<br/>if run.answer.value == '2'\"]",
        "s2 -.->|\"starts\"| call_other",
        "s2 --> s3",
        "s4 --> finish",
        "call_other[[\"scenario other\"]]",
    ] {
        assert!(out.contains(line), "{line} not in\n{out}");
    }
    let (code, dot, _) = run(&["graph", "flow", "--config", dir, "--format", "dot"]);
    assert_eq!(code, 0);
    assert!(dot.starts_with("digraph \"flow\" {"), "{dot}");
    assert!(
        dot.contains("s2 -> call_other [label=\"starts\", style=dashed];"),
        "{dot}"
    );
    let (code, svg, _) = run(&["graph", "flow", "--config", dir, "--format", "svg"]);
    assert_eq!(code, 0);
    assert!(
        svg.contains("<svg") && svg.contains("two: call other"),
        "{svg}"
    );
    assert!(svg.trim_end().ends_with("</svg>"));

    let (code, _, err) = run(&["graph", "nope", "--config", dir]);
    assert_eq!(code, 1);
    assert!(
        err.contains("no scenario 'nope'") && err.contains("flow, other"),
        "{err}"
    );
    let (code, _, err) = run(&["graph", "flow", "--config", dir, "--format", "png"]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn scenario_tests_of_the_examples_pass_and_a_wrong_expectation_says_where() {
    let (code, out, err) = run(&["test", "bot-configs"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("ok    confirm-appointment › a typed 1 confirms"),
        "{out}"
    );
    assert!(out.contains(" 0 failed"), "{out}");

    // The same tests next to the same gateway, one of them expecting the wrong things.
    let cfg = ConfigDir::examples();
    let path = cfg.dir().join("confirm-appointment.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let wrong = text
        .replacen("\"answer.value\" = \"1\"", "\"answer.value\" = \"2\"", 1)
        .replacen(
            "text = \"Thank you, your appointment is confirmed.\"",
            "text = \"Thanks!\"",
            1,
        );
    std::fs::write(&path, &wrong).unwrap();
    let line_of = |needle: &str| wrong.lines().position(|l| l.contains(needle)).unwrap() + 1;
    let dir = cfg.dir();
    let dir = dir.to_str().unwrap();
    let junit = cfg.dir().join("results.xml");
    let (code, out, _) = run(&["test", dir, "--junit", junit.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("FAIL  confirm-appointment › a typed 1 confirms"),
        "{out}"
    );
    let vars = line_of("\"answer.value\" = \"2\"");
    assert!(
        out.contains(&format!(
            "confirm-appointment.toml:{vars}:79: run.answer.value: expected \"2\", got \"1\""
        )),
        "{out}"
    );
    let thanks = line_of("text = \"Thanks!\"");
    assert!(
        out.contains(&format!(
            "confirm-appointment.toml:{thanks}:5: sent: message 2 expected a text containing \"Thanks!\", got \"Thank you, your appointment is confirmed.\""
        )),
        "{out}"
    );
    assert!(out.contains(" passed, 1 failed"), "{out}");
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(
        xml.contains("failures=\"1\"") && xml.contains("<failure message="),
        "{xml}"
    );

    let (code, out, _) = run(&["test", dir, "--filter", "silence"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("1 passed, 0 failed"), "{out}");
}

#[test]
fn scenario_tests_press_a_sent_message_s_button_and_say_where_a_press_has_no_target() {
    let cfg = ConfigDir::with(&[
        (
            "quote.toml",
            r#"id = "quote"
on = { webhook = "quote" }
[[step]]
send = { to = "tg:42", template = "Your quote: {{ event.price }}", buttons = [{ id = "call-me", text = "Call me" }] }

[[test]]
name = "a press on Call me reaches the sales team"
event = { price = 120 }
then = [{ click = "call-me", by = "42" }]
expect = { status = "done", sent = [
    { to = "tg:42", text = "120", buttons = ["Call me"] },
    { to = "ops", text = "call 42 back" },
] }

[[test]]
name = "a press on a button nobody sent"
event = { price = 5 }
then = [{ click = "email-me" }]
expect = { status = "done" }
"#,
        ),
        (
            "call-back.toml",
            r#"id = "call-back"
on = { click = "tg", button = "call-me" }
[[step]]
send = { to = "ops", template = "call {{ event.from.id }} back" }
"#,
        ),
    ]);
    let gw = std::fs::read_to_string(cfg.dir().join("gateway.toml")).unwrap();
    cfg.write(
        "gateway.toml",
        &format!("{gw}\n[channels.tg]\ntype = \"telegram\"\ntoken = \"123:abc\"\n"),
    );
    let dir = cfg.dir();
    let (code, out, err) = run(&["test", dir.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("ok    quote › a press on Call me reaches the sales team"),
        "{out}"
    );
    assert!(
        out.contains("quote.toml:18:9: click \"email-me\": no offer waits, no question asks with such a button, and no message was sent with one"),
        "{out}"
    );
}
