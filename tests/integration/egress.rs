//! Outgoing `http` steps: special addresses refused unless allowed (checked after
//! resolution; only loopback targets are used here), redirects not followed, response
//! bodies capped.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::response::IntoResponse;
use serde_json::json;

use crate::support::*;

const CALL: &str = r#"id = "call"
on = { webhook = "call" }
[[step]]
http = { get = "{{ event.url }}", attempts = 3 }
"#;

/// A receiver on loopback: `/redirect` answers 302 to `/target`, `/big` a body of 2 MiB;
/// counts what it receives.
async fn receiver() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let (h1, h2, h3) = (hits.clone(), hits.clone(), hits.clone());
    let app = axum::Router::new()
        .route(
            "/redirect",
            axum::routing::get(move || async move {
                h1.fetch_add(1, Ordering::SeqCst);
                (axum::http::StatusCode::FOUND, [("location", "/target")]).into_response()
            }),
        )
        .route(
            "/target",
            axum::routing::get(move || async move {
                h2.fetch_add(1, Ordering::SeqCst);
                "target"
            }),
        )
        .route(
            "/big",
            axum::routing::get(move || async move {
                h3.fetch_add(1, Ordering::SeqCst);
                "x".repeat(2 << 20)
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, hits)
}

/// The failed request of the run an event started: (attempts, error).
async fn failed_request(t: &TestApp, body: &serde_json::Value) -> (i64, String) {
    let runs = t.runs_of(body["event_id"].as_i64().unwrap()).await;
    let run = t.finished(runs[0].id).await;
    let rows = t.app.store.outbox_for_run(run.id).await.unwrap();
    let row = rows.into_iter().find(|r| r.status == "failed").unwrap();
    (row.attempts, row.last_error.unwrap_or_default())
}

#[tokio::test]
async fn special_addresses_are_refused_unless_allowed() {
    let (addr, hits) = receiver().await;
    let cfg = ConfigDir::with(&[("call.toml", CALL)]);
    // No [http] allow: the default gateway file of the tests allows 127.0.0.1, so replace it.
    cfg.write("gateway.toml", "[defaults]\nretry_delay = \"20ms\"\n");
    let t = TestApp::spawn(&cfg).await;
    let port = addr.port();
    for url in [
        format!("http://127.0.0.1:{port}/target"),
        format!("http://[::ffff:127.0.0.1]:{port}/target"),
        format!("http://localhost:{port}/target"),
        format!("http://127.0.0.2:{port}/target"),
    ] {
        let (_, body) = t.post("call", json!({"url": url})).await;
        let (attempts, error) = failed_request(&t, &body).await;
        assert_eq!(attempts, 1, "refusals are not retried: {error}");
        assert!(error.contains("refused"), "{url}: {error}");
        assert!(error.contains("loopback"), "{url}: {error}");
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "nothing reached the receiver"
    );
}

#[tokio::test]
async fn an_allowed_receiver_is_reached_but_its_redirect_is_not_followed() {
    let (addr, hits) = receiver().await;
    let cfg = ConfigDir::with(&[("call.toml", CALL)]);
    let t = TestApp::spawn(&cfg).await;
    let (_, body) = t
        .post("call", json!({"url": format!("http://{addr}/redirect")}))
        .await;
    let runs = t.runs_of(body["event_id"].as_i64().unwrap()).await;
    let run = t.finished(runs[0].id).await;
    assert_eq!(run.vars["http"]["status"], 302);
    assert_eq!(run.vars["http"]["headers"]["location"], "/target");
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "the redirect was not followed"
    );
}

#[tokio::test]
async fn a_response_over_the_cap_fails_the_request() {
    let (addr, _) = receiver().await;
    let cfg = ConfigDir::with(&[("call.toml", CALL)]);
    let t = TestApp::spawn(&cfg).await;
    let (_, body) = t
        .post("call", json!({"url": format!("http://{addr}/big")}))
        .await;
    let (attempts, error) = failed_request(&t, &body).await;
    assert_eq!(attempts, 1);
    assert!(error.contains("response over 1048576 bytes"), "{error}");
}

#[tokio::test]
async fn an_allowed_host_name_is_reached_whatever_it_resolves_to() {
    let (addr, hits) = receiver().await;
    let cfg = ConfigDir::with(&[("call.toml", CALL)]);
    cfg.write(
        "gateway.toml",
        "[defaults]\nretry_delay = \"20ms\"\n\n[http]\nallow = [\"localhost\"]\n",
    );
    let t = TestApp::spawn(&cfg).await;
    let (_, body) = t
        .post(
            "call",
            json!({"url": format!("http://localhost:{}/target", addr.port())}),
        )
        .await;
    let runs = t.runs_of(body["event_id"].as_i64().unwrap()).await;
    let run = t.finished(runs[0].id).await;
    assert_eq!(run.vars["http"]["status"], 200);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    // The name is allowed, not its address.
    let (_, body) = t
        .post("call", json!({"url": format!("http://{addr}/target")}))
        .await;
    let (_, error) = failed_request(&t, &body).await;
    assert!(error.contains("loopback"), "{error}");
}
