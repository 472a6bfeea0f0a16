//! Server-rendered HTML: the journal pages and the trigger-link pages, localized through the
//! gateway's own Fluent messages (en, ru, pl) by `Accept-Language` or `?lang=`.

use std::sync::Arc;

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, State};

use crate::i18n::I18n;

pub struct Pages {
    env: Environment<'static>,
    i18n: Arc<I18n>,
}

impl Default for Pages {
    fn default() -> Self {
        Pages::new()
    }
}

impl Pages {
    pub fn new() -> Pages {
        let i18n = Arc::new(I18n::from_sources(
            "en",
            &[
                ("en", include_str!("ui/en.ftl")),
                ("ru", include_str!("ui/ru.ftl")),
                ("pl", include_str!("ui/pl.ftl")),
            ],
        ));
        let mut env = Environment::new();
        for (name, src) in [
            ("base.html", include_str!("ui/base.html")),
            ("nav.html", include_str!("ui/nav.html")),
            ("message.html", include_str!("ui/message.html")),
            ("login.html", include_str!("ui/login.html")),
            ("runs.html", include_str!("ui/runs.html")),
            ("run.html", include_str!("ui/run.html")),
            ("scenarios.html", include_str!("ui/scenarios.html")),
            ("started.html", include_str!("ui/started.html")),
            ("broadcast.html", include_str!("ui/broadcast.html")),
            (
                "scenario_graph.html",
                include_str!("ui/scenario_graph.html"),
            ),
        ] {
            env.add_template(name, src)
                .expect("built-in templates compile");
        }
        let t = i18n.clone();
        env.add_function(
            "t",
            move |state: &State, id: String, kwargs: Kwargs| -> Result<String, minijinja::Error> {
                let lang = state
                    .lookup("lang")
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_else(|| "en".into());
                let mut args = serde_json::Map::new();
                for name in kwargs.args() {
                    let v: Value = kwargs.get(name)?;
                    args.insert(
                        name.to_string(),
                        serde_json::to_value(&v).unwrap_or_default(),
                    );
                }
                Ok(t.render(&lang, &id, &args).unwrap_or(id))
            },
        );
        Pages { env, i18n }
    }

    /// Pages of a running gateway: the journal pages say when a reload was refused.
    pub fn for_live(live: Arc<crate::config::live::Live>) -> Pages {
        let mut p = Pages::new();
        p.env.add_function("config_refused", move || -> Value {
            match live.refused() {
                Some(r) => Value::from_serialize(&r.errors),
                None => Value::from(()),
            }
        });
        p
    }

    /// The page language: `?lang=` if given and known, else `Accept-Language`.
    pub fn lang(&self, headers: &HeaderMap, wanted: Option<&str>) -> String {
        if let Some(w) = wanted.filter(|w| !w.is_empty()) {
            return self.i18n.resolve(Some(w));
        }
        let accept = headers
            .get(header::ACCEPT_LANGUAGE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        self.i18n.from_accept(accept)
    }

    pub fn render(&self, status: StatusCode, name: &str, ctx: Value) -> Response {
        match self.env.get_template(name).and_then(|t| t.render(ctx)) {
            Ok(html) => (status, Html(html)).into_response(),
            Err(e) => super::ApiError::internal(format!("page {name}: {e:#}")).into_response(),
        }
    }

    /// A small page with a title and a sentence (and optionally a confirming form).
    pub fn message(&self, status: StatusCode, lang: &str, title: &str, text: &str) -> Response {
        self.render(
            status,
            "message.html",
            minijinja::context! { lang, title, text },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use minijinja::context;
    use std::collections::BTreeMap;

    fn html(p: &Pages, name: &str, ctx: Value) -> String {
        p.env.get_template(name).unwrap().render(ctx).unwrap()
    }

    #[test]
    fn every_page_renders_in_every_language() {
        let p = Pages::new();
        for lang in ["en", "ru", "pl"] {
            let run = serde_json::json!({"id": 1, "scenario": "s", "subject": null, "status": "failed",
                "error": "boom", "created": "x", "updated": "y"});
            let step = serde_json::json!({"class": "error", "line": "step 0", "cond": "a", "seen": "{}", "detail": "{}"});
            let out = html(
                &p,
                "run.html",
                context! { lang, here => "runs", run, steps => vec![step],
                requests => Vec::<u8>::new(), event => "{}", notice => "ui-retried", graph => "<svg></svg>" },
            );
            assert!(out.contains("boom") && out.contains("id=\"retry\""));
            assert!(out.contains("<div id=\"graph\" class=\"graph\"><svg></svg></div>"));
            let out = html(
                &p,
                "scenario_graph.html",
                context! { lang, here => "scenarios", scenario => "s", days => 7, runs => 3, graph => "<svg></svg>" },
            );
            assert!(out.contains("graph-runs") && out.contains("?days=30"));
            let scenario = serde_json::json!({"id": "s", "description": null, "enabled": true,
                "stats": {"started": 1, "done": 1, "failed": 0, "active": 0, "limited": 0}, "last_fired": null});
            let scenarios = vec![scenario.clone(), {
                let mut s = scenario;
                s["recent"] = serde_json::json!(["{\n  \"phone\": \"+1\"\n}"]);
                s
            }];
            let out = html(
                &p,
                "scenarios.html",
                context! { lang, here => "scenarios", scenarios },
            );
            assert!(out.contains("start-recent") && out.contains("&quot;phone&quot;"));
            let item = serde_json::json!({"index": 0, "event_id": 1, "started": false, "run": null, "why": "guard false"});
            html(
                &p,
                "started.html",
                context! { lang, here => "scenarios", scenario => "s", test => true, items => vec![item], broadcast => "/ui/broadcast?runs=" },
            );
            let row = serde_json::json!({"run": 2, "status": "done", "replied": true, "messages": [
                {"channel": "ops", "to": "x", "status": "delivered", "statuses": ["delivered", "read"], "failed": false}]});
            let out = html(
                &p,
                "broadcast.html",
                context! { lang, here => "runs", parent => 1, rows => vec![row], total => 1, newer => (), older => () },
            );
            assert!(out.contains("delivered, read"));
            html(
                &p,
                "runs.html",
                context! { lang, here => "runs", runs => Vec::<u8>::new(), older => (),
                scenarios => vec!["s"], statuses => vec!["done"], filter => BTreeMap::<String, String>::new() },
            );
            html(
                &p,
                "login.html",
                context! { lang, next => "/ui/runs", bad => true },
            );
            let done = html(
                &p,
                "message.html",
                context! { lang, title => "link-done-title", text => "link-done" },
            );
            assert!(
                !done.contains("link-done"),
                "untranslated in {lang}: {done}"
            );
        }
    }

    #[test]
    fn page_text_is_escaped() {
        let p = Pages::new();
        let run = serde_json::json!({"id": 1, "scenario": "<script>", "status": "done", "created": "", "updated": ""});
        let out = html(
            &p,
            "run.html",
            context! { lang => "en", run, steps => Vec::<u8>::new(),
            requests => Vec::<u8>::new(), event => "<b>" },
        );
        assert!(!out.contains("<script>") && out.contains("&lt;script&gt;"));
    }
}
