//! Property tests: arbitrary config text, webhook bodies, Telegram updates and WhatsApp
//! deliveries never panic;
//! configs yield positioned problems, requests a 2xx or a 4xx with a reason.

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use switchboard::channels::Registry;
use switchboard::lang::compile::{self, Host, Messages};
use switchboard::lang::expr::Templates;

use crate::support::*;

/// Every Fluent id exists.
struct AnyMessage;

impl Messages for AnyMessage {
    fn missing_in(&self, _: &str) -> Vec<String> {
        Vec::new()
    }
}

fn compile_all(gateway: &str, scenario: &str) -> Vec<switchboard::lang::ConfigError> {
    let host = Host {
        kinds: &Registry,
        env: &|name| (name != "UNSET").then(|| "v".to_string()),
    };
    let mut problems = Vec::new();
    let (raw, gw) = compile::gateway(Path::new("gateway.toml"), gateway, &host, &mut problems);
    let templates = Templates::new(raw.defaults.template_fuel.unwrap_or(20_000).min(20_000));
    let files = [(PathBuf::from("s.toml"), Ok(scenario.to_string()))];
    compile::scenarios(&files, &templates, &gw, &AnyMessage, &host, &mut problems);
    problems
}

fn example(name: &str) -> String {
    std::fs::read_to_string(repo().join("bot-configs").join(name)).unwrap()
}

/// An example file with some bytes replaced, inserted or removed.
fn mutated(text: String) -> impl Strategy<Value = String> {
    let len = text.len();
    proptest::collection::vec((0..len.max(1), any::<u8>(), 0u8..3), 1..8).prop_map(move |edits| {
        let mut bytes = text.clone().into_bytes();
        for (at, b, how) in edits {
            let at = at.min(bytes.len());
            match how {
                0 if at < bytes.len() => bytes[at] = b,
                1 => bytes.insert(at, b),
                _ if at < bytes.len() => {
                    bytes.remove(at);
                }
                _ => {}
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

fn check_problems(problems: &[switchboard::lang::ConfigError]) -> Result<(), TestCaseError> {
    for p in problems {
        prop_assert!(p.pos.line >= 1 && p.pos.col >= 1, "{p:?}");
        prop_assert!(!p.message.trim().is_empty());
        prop_assert!(
            !p.message.contains('\n'),
            "one line per problem: {:?}",
            p.message
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_scenario_text_yields_positioned_problems(
        text in "[a-z_\\[\\]={}\"'.:, \n0-9$#{}%-]{0,400}"
    ) {
        check_problems(&compile_all("", &text))?;
    }

    #[test]
    fn mutated_examples_yield_positioned_problems(
        gateway in mutated(example("gateway.toml")),
        scenario in mutated(example("deal-distribution.toml")),
    ) {
        check_problems(&compile_all(&gateway, &scenario))?;
        check_problems(&compile_all(&example("gateway.toml"), &scenario))?;
    }
}

/// A running gateway with a plain hook, a signed hook, a Telegram webhook and a WhatsApp
/// channel.
fn gateway_for_requests() -> (tokio::runtime::Runtime, ConfigDir, TestApp) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cfg = ConfigDir::with(&[(
        "order.toml",
        "id = \"order\"\non = { webhook = \"order\" }\n[[step]]\nstop = true\n",
    )]);
    let mut gw = std::fs::read_to_string(cfg.dir().join("gateway.toml")).unwrap();
    gw.push_str(
        "\n[hooks.order]\nidempotency_field = \"id\"\n\n[channels.tg]\ntype = \"telegram\"\ntoken = \"1:x\"\napi_url = \"http://127.0.0.1:9\"\nmode = \"webhook\"\nwebhook_secret = \"s3cret\"\n",
    );
    gw.push_str(&format!(
        "\n[channels.wa]\ntype = \"whatsapp\"\ntoken = \"t\"\nphone_number_id = \"1\"\napp_secret = \"{}\"\nverify_token = \"v\"\napi_url = \"http://127.0.0.1:9\"\n",
        crate::fake_whatsapp::APP_SECRET
    ));
    cfg.write("gateway.toml", &gw);
    let t = rt.block_on(TestApp::spawn(&cfg));
    (rt, cfg, t)
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        "[^\u{0}]{0,20}".prop_map(serde_json::Value::from),
        "\\PC{0,8}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            proptest::collection::btree_map(
                prop_oneof![
                    Just("id".to_string()),
                    Just("message".to_string()),
                    Just("callback_query".to_string()),
                    Just("update_id".to_string()),
                    Just("chat".to_string()),
                    Just("entry".to_string()),
                    Just("changes".to_string()),
                    Just("value".to_string()),
                    Just("messages".to_string()),
                    Just("statuses".to_string()),
                    Just("from".to_string()),
                    Just("type".to_string()),
                    Just("interactive".to_string()),
                    Just("context".to_string()),
                    "[a-z_]{1,8}"
                ],
                inner,
                0..5
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

#[test]
fn arbitrary_webhook_bodies_get_an_answer_with_a_reason() {
    let (rt, _cfg, t) = gateway_for_requests();
    let bodies = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..200),
        json_value().prop_map(|v| v.to_string().into_bytes()),
    ];
    let content_types = prop_oneof![
        Just("application/json"),
        Just("application/x-www-form-urlencoded"),
        Just("text/plain"),
    ];
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 150,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    runner
        .run(
            &(bodies, content_types, "[ -~]{0,40}"),
            |(body, ct, key)| {
                let resp = rt.block_on(
                    t.http
                        .post(format!("{}/hooks/order", t.app.url()))
                        .header("content-type", ct)
                        .header("idempotency-key", key)
                        .body(body)
                        .send(),
                );
                let resp = resp.map_err(|e| TestCaseError::fail(e.to_string()))?;
                let status = resp.status().as_u16();
                let text = rt.block_on(resp.text()).unwrap_or_default();
                prop_assert!(status < 500, "{status}: {text}");
                if status >= 400 {
                    let v: serde_json::Value = serde_json::from_str(&text)
                        .map_err(|e| TestCaseError::fail(format!("{e}: {text}")))?;
                    prop_assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{text}");
                }
                Ok(())
            },
        )
        .unwrap();
}

#[test]
fn arbitrary_telegram_updates_are_stored_or_refused() {
    let (rt, _cfg, t) = gateway_for_requests();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 150,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    runner
        .run(&json_value(), |update| {
            let resp = rt
                .block_on(
                    t.http
                        .post(format!("{}/telegram/tg", t.app.url()))
                        .header("x-telegram-bot-api-secret-token", "s3cret")
                        .json(&update)
                        .send(),
                )
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let status = resp.status().as_u16();
            prop_assert!(status == 200 || status == 400, "{status} for {update}");
            Ok(())
        })
        .unwrap();
}

#[test]
fn arbitrary_whatsapp_deliveries_are_stored_or_refused_with_a_reason() {
    let (rt, _cfg, t) = gateway_for_requests();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 150,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let bodies = prop_oneof![
        json_value(),
        json_value().prop_map(crate::fake_whatsapp::envelope),
    ];
    runner
        .run(&bodies, |body| {
            let body = body.to_string();
            let sig = crate::fake_whatsapp::sign(crate::fake_whatsapp::APP_SECRET, &body);
            let resp = rt
                .block_on(
                    t.http
                        .post(format!("{}/whatsapp/wa", t.app.url()))
                        .header("x-hub-signature-256", sig)
                        .body(body.clone())
                        .send(),
                )
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let status = resp.status().as_u16();
            let text = rt.block_on(resp.text()).unwrap_or_default();
            prop_assert!(
                status == 200 || status == 400,
                "{status} for {body}: {text}"
            );
            if status == 400 {
                let v: serde_json::Value = serde_json::from_str(&text)
                    .map_err(|e| TestCaseError::fail(format!("{e}: {text}")))?;
                prop_assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{text}");
            }
            Ok(())
        })
        .unwrap();
}
