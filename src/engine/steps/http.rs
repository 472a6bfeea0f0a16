//! `http`: the request goes out through the outbox and the run waits at the step; the
//! response (or the final failure) picks a branch by status and resumes it.

use minijinja::value::Value;
use serde_json::{json, Value as Json};

use super::{fail, note, Flow};
use crate::config::{Action, HttpBody, HttpSpec};
use crate::engine::{After, Delivery, Engine};
use crate::store::{RunRow, RunStatus, StoreError, Tx};

const SECRET_HEADERS: [&str; 4] = [
    "authorization",
    "x-api-key",
    "cookie",
    "proxy-authorization",
];

fn redact_headers(h: &[(String, String)]) -> Json {
    Json::Object(
        h.iter()
            .map(|(k, v)| {
                let secret = SECRET_HEADERS.contains(&k.to_ascii_lowercase().as_str())
                    || k.to_ascii_lowercase().contains("secret")
                    || k.to_ascii_lowercase().contains("token");
                (k.clone(), json!(if secret { "***" } else { v.as_str() }))
            })
            .collect(),
    )
}

/// The branch for an HTTP outcome: an exact status first, then a class, then `error`.
fn http_branch(
    branches: &[(String, usize)],
    status: Option<u64>,
    failed: bool,
) -> Option<&(String, usize)> {
    if let Some(s) = status {
        let exact = s.to_string();
        let class = format!("{}xx", s / 100);
        if let Some(b) = branches.iter().find(|(k, _)| *k == exact || *k == class) {
            return Some(b);
        }
    }
    if failed {
        return branches.iter().find(|(k, _)| k == "error");
    }
    None
}

impl Engine {
    #[expect(
        clippy::too_many_arguments,
        reason = "the interpreter's working set for one step"
    )]
    pub(super) async fn start_http(
        &mut self,
        tx: &mut dyn Tx,
        run: &mut RunRow,
        h: &HttpSpec,
        pc: usize,
        ctx: &Value,
        entry: &mut Json,
        after: &mut After,
    ) -> Result<Result<Flow, String>, StoreError> {
        let url = tryv!(h.url.render(ctx));
        if let Err(e) = reqwest::Url::parse(&url) {
            return Ok(Err(format!("'{url}' is not a URL: {e}")));
        }
        let mut headers = Vec::new();
        for (k, t) in &h.headers {
            headers.push((k.clone(), tryv!(t.render(ctx))));
        }
        let body = match &h.body {
            HttpBody::None => Json::Null,
            HttpBody::Json(v) => json!({"json": tryv!(v.render(ctx))}),
            HttpBody::Form(fields) => {
                let mut out = Vec::new();
                for (k, t) in fields {
                    out.push(json!([k, tryv!(t.render(ctx))]));
                }
                json!({"form": out})
            }
            HttpBody::Raw(t) => json!({"raw": tryv!(t.render(ctx))}),
        };
        let request = json!({"method": h.method, "url": url, "headers": headers, "body": body});
        // Secrets travel in query strings too: the journal keeps the URL without them.
        let shown = reqwest::Url::parse(&url)
            .map(|u| crate::outbox::redact(&u))
            .unwrap_or_else(|_| url.clone());
        entry["request"] = json!({"method": h.method, "url": shown,
            "headers": redact_headers(&headers), "body": body});
        let id = self
            .enqueue(
                tx, run, pc, "http", "http", request, h.attempts, h.timeout, true, after,
            )
            .await?;
        entry["outbox_id"] = json!(id);
        entry["result"] = json!("sent, awaiting the response");
        run.status = RunStatus::Waiting;
        Ok(Ok(Flow::Park))
    }

    /// The response to a run's request, or its final failure: saved, journaled, and the run
    /// goes on at the branch it picks.
    #[expect(
        clippy::too_many_arguments,
        reason = "the delivery and what it brought back"
    )]
    pub(in crate::engine) async fn on_http_response(
        &mut self,
        tx: &mut dyn Tx,
        run_id: i64,
        d: &Delivery,
        response: Option<Json>,
        error: Option<String>,
        now: i64,
        after: &mut After,
    ) -> Result<(), StoreError> {
        let cached = self.http_parked.remove(&run_id);
        let Some(mut run) = (match cached {
            Some(r) => Some(r),
            None => tx.load_run(run_id).await?,
        }) else {
            return Ok(());
        };
        if run.status != RunStatus::Waiting || Some(run.pc) != d.step {
            return Ok(()); // the run moved on (cancelled, or this is a repeated result)
        }
        let sc = match self.scenario_of(tx, &run).await? {
            Ok(sc) => sc,
            Err(why) => {
                fail(&mut run, &why, now);
                self.run_failed(tx, &mut run, after).await?;
                return tx.save_run(&run).await;
            }
        };
        let Some((Action::Http(h), stop_after)) =
            sc.steps.get(run.pc as usize).map(|s| (&s.action, s.stop))
        else {
            fail(&mut run, "the http step moved: the scenario changed", now);
            self.run_failed(tx, &mut run, after).await?;
            return tx.save_run(&run).await;
        };
        let status = response
            .as_ref()
            .and_then(|r| r.get("status"))
            .and_then(Json::as_u64);
        let mut saved = response.clone().unwrap_or_else(|| json!({}));
        if let Some(e) = &error {
            saved["error"] = json!(e);
        }
        run.vars.insert(h.save.clone(), saved);
        let branch = http_branch(&h.branches, status, error.is_some());
        {
            let entry = json!({"step": run.pc, "action": "http", "result": if error.is_some() {"failed"} else {"response"},
            "status": status, "error": error, "outbox_id": d.outbox_id, "attempts": d.attempts,
            "branch": branch.map(|b| b.0.clone()), "at": now});
            note(&mut run, entry);
        }
        run.status = RunStatus::Running;
        match (branch, &error) {
            (Some((_, to)), _) => run.pc = *to as i64,
            (None, Some(e)) => {
                fail(&mut run, &format!("request failed: {e}"), now);
            }
            (None, None) => run.pc += 1,
        }
        if run.status == RunStatus::Running && stop_after && branch.is_none() {
            run.status = RunStatus::Done;
        }
        self.execute(tx, &mut run, &sc, after).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_status_beats_class_and_error_is_last() {
        let b = vec![
            ("404".to_string(), 1),
            ("4xx".to_string(), 2),
            ("error".to_string(), 3),
        ];
        assert_eq!(http_branch(&b, Some(404), false).unwrap().1, 1);
        assert_eq!(http_branch(&b, Some(400), false).unwrap().1, 2);
        assert_eq!(http_branch(&b, Some(503), true).unwrap().1, 3);
        assert!(http_branch(&b, Some(200), false).is_none());
    }

    #[test]
    fn secret_headers_are_redacted() {
        let h = redact_headers(&[
            ("Authorization".into(), "Bearer x".into()),
            ("X-Id".into(), "1".into()),
        ]);
        assert_eq!(h["Authorization"], "***");
        assert_eq!(h["X-Id"], "1");
    }
}
