//! From raw files to the checked model: every problem is reported with its position and
//! all of them are collected before the load fails.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use super::capabilities::Capabilities;
use super::error::{ConfigError, Position};
use super::expr::{CompileError, Expr, Templates, Tmpl, ValueTmpl};
use super::interpolate::interpolate_with;
use super::model::*;
use super::raw::{self, Sp};

/// What the compiler asks of the rest of the gateway; config loading wires the real ones.
pub struct Host<'a> {
    /// What a configured channel can do.
    pub capabilities: &'a dyn Fn(&Channel) -> Capabilities,
    /// The value of an environment variable, for `${NAME}`.
    pub env: &'a dyn Fn(&str) -> Option<String>,
}

/// The Fluent messages scenarios may name.
pub trait Messages {
    /// Locales that lack the message `id`.
    fn missing_in(&self, id: &str) -> Vec<String>;
}

/// One file being checked: its text (for positions) and the shared problem list.
struct FileCx<'a> {
    file: &'a Path,
    text: &'a str,
    problems: &'a mut Vec<ConfigError>,
    host: &'a Host<'a>,
}

impl FileCx<'_> {
    fn caps(&self, c: &Channel) -> Capabilities {
        (self.host.capabilities)(c)
    }

    fn err(&mut self, span: Range<usize>, msg: impl Into<String>) {
        let pos = Position::of(self.text, span.start);
        self.problems.push(ConfigError::new(self.file, pos, msg));
    }

    /// An error inside a string value: `offset` is a byte offset into the string's content.
    fn err_in(&mut self, span: Range<usize>, offset: usize, msg: impl Into<String>) {
        let raw = self.text.get(span.clone()).unwrap_or("");
        let quote = if raw.starts_with("\"\"\"") || raw.starts_with("'''") {
            3
        } else if raw.starts_with('"') || raw.starts_with('\'') {
            1
        } else {
            0
        };
        self.err(span.start + quote + offset..span.end, msg)
    }

    fn expr(&mut self, t: &Templates, s: &Sp<String>) -> Option<Expr> {
        match t.expr(s.get()) {
            Ok(e) => Some(e),
            Err(CompileError { message, offset }) => {
                self.err_in(s.span(), offset, format!("bad expression: {message}"));
                None
            }
        }
    }

    fn tmpl(&mut self, t: &Templates, s: &Sp<String>) -> Option<Tmpl> {
        self.tmpl_str(t, s.get(), s.span())
    }

    fn tmpl_str(&mut self, t: &Templates, s: &str, span: Range<usize>) -> Option<Tmpl> {
        let s = match interpolate_with(s, self.host.env) {
            Ok(s) => s,
            Err(var) => {
                self.err(span, format!("environment variable {var} is not set"));
                return None;
            }
        };
        match t.tmpl(&s) {
            Ok(x) => Some(x),
            Err(CompileError { message, offset }) => {
                self.err_in(span, offset, format!("bad template: {message}"));
                None
            }
        }
    }

    fn value_tmpl(&mut self, t: &Templates, v: &Sp<serde_json::Value>) -> Option<ValueTmpl> {
        match t.value_tmpl(v.get()) {
            Ok(x) => Some(x),
            Err(CompileError { message, .. }) => {
                self.err(v.span(), format!("bad template: {message}"));
                None
            }
        }
    }

    fn duration(&mut self, s: &Sp<String>) -> Option<Duration> {
        match parse_duration(s.get()) {
            Ok(d) => Some(d),
            Err(e) => {
                self.err(s.span(), e);
                None
            }
        }
    }

    fn env(&mut self, s: &Sp<String>) -> Option<String> {
        match interpolate_with(s.get(), self.host.env) {
            Ok(v) => Some(v),
            Err(var) => {
                self.err(s.span(), format!("environment variable {var} is not set"));
                None
            }
        }
    }
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("'{s}' is not a duration like 30s, 10m, 24h, 7d: {e}"))
}

/// `N/period`, e.g. `1/5s` or `20/1m`.
fn parse_rate(s: &str) -> Option<(u32, Duration)> {
    let (n, d) = s.split_once('/')?;
    let n = n.trim().parse::<u32>().ok().filter(|n| *n > 0)?;
    let d = parse_duration(d).ok().filter(|d| !d.is_zero())?;
    Some((n, d))
}

fn toml_error(file: &Path, text: &str, e: toml::de::Error) -> ConfigError {
    let pos = Position::of(text, e.span().map(|s| s.start).unwrap_or(0));
    ConfigError::new(file, pos, e.message().trim().to_string())
}

/// Parses and compiles the gateway file. The raw file comes back too: loading needs its
/// template fuel and locales folder.
pub fn gateway(
    file: &Path,
    text: &str,
    host: &Host,
    problems: &mut Vec<ConfigError>,
) -> (raw::GatewayFile, Gateway) {
    let raw_gateway = match toml::from_str::<raw::GatewayFile>(text) {
        Ok(g) => g,
        Err(e) => {
            problems.push(toml_error(file, text, e));
            raw::GatewayFile::default()
        }
    };
    let gateway = compile_gateway(
        &raw_gateway,
        &mut FileCx {
            file,
            text,
            problems,
            host,
        },
    );
    (raw_gateway, gateway)
}

/// Parses and compiles scenario files in order: each file's text, or why it could not be
/// read. Ids must be unique and `call`/`cancel` must name one of these scenarios.
pub fn scenarios(
    files: &[(PathBuf, std::io::Result<String>)],
    templates: &Templates,
    gateway: &Gateway,
    i18n: &dyn Messages,
    host: &Host,
    problems: &mut Vec<ConfigError>,
) -> Vec<Arc<Scenario>> {
    let mut scenarios: Vec<Arc<Scenario>> = Vec::new();
    let mut seen_ids: HashMap<String, PathBuf> = HashMap::new();
    let mut cross: Vec<(PathBuf, String, Position, String)> = Vec::new();
    for (file, text) in files {
        let text = match text {
            Ok(t) => t,
            Err(e) => {
                problems.push(ConfigError::at_file(file, format!("cannot read: {e}")));
                continue;
            }
        };
        let raw: raw::ScenarioFile = match toml::from_str(text) {
            Ok(r) => r,
            Err(e) => {
                problems.push(toml_error(file, text, e));
                continue;
            }
        };
        let mut cx = FileCx {
            file,
            text,
            problems,
            host,
        };
        let mut refs = Vec::new();
        if let Some(sc) = compile_scenario(&raw, &mut cx, templates, gateway, i18n, &mut refs) {
            if let Some(other) = seen_ids.get(&sc.id) {
                cx.err(
                    raw.id.span(),
                    format!(
                        "scenario id '{}' is also used by {}",
                        sc.id,
                        other.display()
                    ),
                );
            } else {
                seen_ids.insert(sc.id.clone(), file.clone());
                scenarios.push(Arc::new(sc));
            }
        }
        for (id, span) in refs {
            cross.push((
                file.clone(),
                id,
                Position::of(text, span.start),
                String::new(),
            ));
        }
    }
    for (file, id, pos, _) in cross {
        if !seen_ids.contains_key(&id) {
            problems.push(ConfigError::new(
                &file,
                pos,
                format!("no scenario has id '{id}'"),
            ));
        }
    }
    scenarios
}

fn compile_gateway(g: &raw::GatewayFile, cx: &mut FileCx) -> Gateway {
    let d = &g.defaults;
    let dur = |cx: &mut FileCx, v: &Option<Sp<String>>, dflt: u64| {
        v.as_ref()
            .and_then(|s| cx.duration(s))
            .unwrap_or(Duration::from_secs(dflt))
    };
    let mut channels = HashMap::new();
    channels.insert("log".to_string(), Channel::Log { stdout: true });
    for (name, ch) in &g.channels {
        let c = ch.get();
        match c.kind.get().as_str() {
            "log" => {
                let stdout = match c.output.as_ref().map(|o| o.get().as_str()) {
                    None | Some("stdout") => true,
                    Some("journal") => false,
                    Some(other) => {
                        cx.err(
                            c.output.as_ref().map(|o| o.span()).unwrap_or(ch.span()),
                            format!("unknown log output '{other}' (expected stdout or journal)"),
                        );
                        true
                    }
                };
                channels.insert(name.clone(), Channel::Log { stdout });
            }
            "telegram" => {
                let token = match &c.token {
                    Some(t) => cx.env(t),
                    None => {
                        cx.err(
                            ch.span(),
                            "a telegram channel needs `token` (e.g. \"${TELEGRAM_TOKEN}\")",
                        );
                        None
                    }
                };
                let api_url = c.api_url.as_ref().and_then(|u| {
                    let v = cx.env(u)?;
                    match reqwest::Url::parse(&v) {
                        Ok(url) => Some(url),
                        Err(e) => {
                            cx.err(u.span(), format!("'{v}' is not a URL: {e}"));
                            None
                        }
                    }
                });
                let webhook = match c.mode.as_ref().map(|m| m.get().as_str()) {
                    None | Some("polling") => false,
                    Some("webhook") => true,
                    Some(other) => {
                        cx.err(
                            c.mode.as_ref().map(|m| m.span()).unwrap_or(ch.span()),
                            format!("unknown mode '{other}' (polling or webhook)"),
                        );
                        false
                    }
                };
                let webhook_secret = c
                    .webhook_secret
                    .as_ref()
                    .and_then(|w| cx.env(w))
                    .map(Secret);
                if webhook && webhook_secret.is_none() {
                    cx.err(
                        ch.span(),
                        "webhook mode needs `webhook_secret` (1-256 of A-Z a-z 0-9 _ -)",
                    );
                }
                let mut limit = |key: &str, dflt: (u32, Duration)| match c.limits.get(key) {
                    None => dflt,
                    Some(v) => parse_rate(v.get()).unwrap_or_else(|| {
                        cx.err(
                            v.span(),
                            format!("{key} limit must look like 1/1s or 20/1m"),
                        );
                        dflt
                    }),
                };
                let per_chat = limit("chat", (1, Duration::from_secs(1)));
                let per_group = limit("group", (20, Duration::from_secs(60)));
                let per_bot = limit("bot", (30, Duration::from_secs(1)));
                for (k, v) in &c.limits {
                    if !["chat", "group", "bot"].contains(&k.as_str()) {
                        cx.err(v.span(), format!("unknown limit '{k}' (chat, group, bot)"));
                    }
                }
                if let Some(token) = token {
                    channels.insert(
                        name.clone(),
                        Channel::Telegram(Box::new(TelegramChannel {
                            token: Secret(token),
                            api_url,
                            webhook,
                            webhook_secret,
                            per_chat,
                            per_group,
                            per_bot,
                        })),
                    );
                }
            }
            other => cx.err(
                c.kind.span(),
                format!("unknown channel type '{other}' (supported: log, telegram)"),
            ),
        }
    }
    let mut hooks = HashMap::new();
    for (name, h) in &g.hooks {
        let h = h.get();
        let secret = h.secret.as_ref().and_then(|s| {
            let s = s.get();
            Some((
                s.header.clone().unwrap_or_else(|| "X-Hook-Secret".into()),
                cx.env(&s.value)?,
            ))
        });
        let hmac = h.hmac.as_ref().and_then(|s| {
            let s = s.get();
            Some(HmacSpec {
                header: s.header.clone().unwrap_or_else(|| "X-Signature-256".into()),
                secret: cx.env(&s.secret)?,
                prefix: s.prefix.clone().unwrap_or_else(|| "sha256=".into()),
            })
        });
        hooks.insert(
            name.clone(),
            Hook {
                secret,
                hmac,
                idempotency_field: h.idempotency_field.as_ref().map(|f| f.get().clone()),
            },
        );
    }
    let mut staff = Vec::new();
    let mut staff_ids = HashMap::new();
    for s in &g.staff {
        let e = s.get();
        if staff_ids.insert(e.id.get().clone(), ()).is_some() {
            cx.err(
                e.id.span(),
                format!("staff id '{}' appears twice", e.id.get()),
            );
        }
        staff.push(Staff {
            id: e.id.get().clone(),
            name: e.name.clone(),
            language: e.language.clone(),
            ids: e.ids.clone(),
            external: e.external.clone(),
            groups: e.groups.clone(),
        });
    }
    Gateway {
        listen: g.server.listen.as_ref().and_then(|l| cx.env(l)),
        public_url: g.server.public_url.as_ref().and_then(|l| cx.env(l)),
        max_body_bytes: g.server.max_body_bytes.unwrap_or(1 << 20),
        language: d
            .language
            .as_ref()
            .map(|l| l.get().clone())
            .unwrap_or_else(|| "en".into()),
        max_steps: d.max_steps.unwrap_or(200),
        max_call_depth: d.max_call_depth.unwrap_or(8),
        http_timeout: dur(cx, &d.http_timeout, 10),
        http_attempts: d.http_attempts.unwrap_or(5).max(1),
        retry_delay: dur(cx, &d.retry_delay, 1),
        retry_max_delay: dur(cx, &d.retry_max_delay, 300),
        retention: dur(cx, &d.retention, 30 * 24 * 3600),
        database: {
            let db = &g.database;
            let dflt = PoolOptions::default();
            PoolOptions {
                max_connections: db.max_connections.unwrap_or(dflt.max_connections).max(2),
                min_connections: db.min_connections.unwrap_or(dflt.min_connections),
                acquire_timeout: dur(cx, &db.acquire_timeout, dflt.acquire_timeout.as_secs()),
                lease: dur(cx, &db.lease, dflt.lease.as_secs()).max(Duration::from_secs(1)),
            }
        },
        channels,
        hooks,
        staff,
    }
}

fn parse_var(s: &str) -> Result<VarRef, String> {
    let mut parts = s.split('.');
    let scope = match parts.next() {
        Some("run") => Scope::Run,
        Some("subject") => Scope::Subject,
        Some("global") => Scope::Global,
        _ => {
            return Err(format!(
                "'{s}' must start with run., subject. or global. (e.g. run.{s})"
            ))
        }
    };
    let path: Vec<String> = parts.map(str::to_string).collect();
    let ident = |p: &String| {
        !p.is_empty()
            && p.chars().all(|c| c.is_alphanumeric() || c == '_')
            && !p.starts_with(|c: char| c.is_ascii_digit())
    };
    if path.is_empty() || !path.iter().all(ident) {
        return Err(format!("'{s}' is not a variable name like run.total"));
    }
    Ok(VarRef { scope, path })
}

fn compile_scenario(
    raw: &raw::ScenarioFile,
    cx: &mut FileCx,
    t: &Templates,
    gw: &Gateway,
    i18n: &dyn Messages,
    scenario_refs: &mut Vec<(String, Range<usize>)>,
) -> Option<Scenario> {
    let before = cx.problems.len();
    let id = raw.id.get().clone();
    if id.is_empty()
        || !id
            .chars()
            .all(|c| c.is_alphanumeric() || c == '-' || c == '_')
    {
        cx.err(raw.id.span(), "scenario id must be letters, digits, - or _");
    }
    let on = raw.on.get();
    let given = [
        on.webhook.is_some(),
        on.schedule.is_some(),
        on.call == Some(true),
        on.link == Some(true),
        on.message.is_some(),
        on.click.is_some(),
    ];
    if let (Some(b), None) = (&on.button, &on.click) {
        cx.err(b.span(), "`button` belongs to a `click` trigger");
    }
    let trigger = match given.iter().filter(|b| **b).count() {
        1 => {
            if let Some(h) = &on.webhook {
                Some(Trigger::Webhook(h.get().clone()))
            } else if let Some(s) = &on.schedule {
                let tz = match &on.tz {
                    Some(tz) => match chrono_tz::Tz::from_str(tz.get()) {
                        Ok(z) => z,
                        Err(_) => {
                            cx.err(tz.span(), format!("unknown time zone '{}'", tz.get()));
                            chrono_tz::UTC
                        }
                    },
                    None => chrono_tz::UTC,
                };
                let text = s.get().trim();
                let six = if text.split_whitespace().count() == 5 {
                    format!("0 {text}")
                } else {
                    text.to_string()
                };
                match cron::Schedule::from_str(&six) {
                    Ok(c) => Some(Trigger::Schedule {
                        cron: Box::new(c),
                        tz,
                    }),
                    Err(e) => {
                        cx.err(s.span(), format!("bad cron expression: {e}"));
                        None
                    }
                }
            } else if on.link == Some(true) {
                Some(Trigger::Link)
            } else if let Some(ch) = &on.click {
                match gw.channels.get(ch.get()) {
                    Some(c) if cx.caps(c).choices.is_some() => {
                        if let Some(b) = &on.button {
                            check_choice(cx, gw, ch.get(), b, None);
                        }
                        Some(Trigger::Click {
                            channel: ch.get().clone(),
                            button: on.button.as_ref().map(|b| b.get().clone()),
                        })
                    }
                    Some(c) => {
                        cx.err(
                            ch.span(),
                            format!(
                                "channel '{}' ({}) has no callback buttons",
                                ch.get(),
                                c.kind()
                            ),
                        );
                        None
                    }
                    None => {
                        cx.err(ch.span(), format!("unknown channel '{}'", ch.get()));
                        None
                    }
                }
            } else if let Some(ch) = &on.message {
                match gw.channels.get(ch.get()) {
                    Some(c) if cx.caps(c).replies => Some(Trigger::Message(ch.get().clone())),
                    Some(c) => {
                        cx.err(
                            ch.span(),
                            format!("channel '{}' ({}) receives no messages", ch.get(), c.kind()),
                        );
                        None
                    }
                    None => {
                        cx.err(ch.span(), format!("unknown channel '{}'", ch.get()));
                        None
                    }
                }
            } else {
                Some(Trigger::Call)
            }
        }
        _ => {
            cx.err(
                raw.on.span(),
                "`on` needs exactly one of webhook = \"name\", schedule = \"cron\", call = true, link = true, message = \"channel\", click = \"channel\"",
            );
            None
        }
    };
    let when = raw.when.as_ref().and_then(|w| cx.expr(t, w));
    let subject = raw.subject.as_ref().and_then(|s| cx.tmpl(t, s));
    let mut limit = Limits::default();
    if let Some(l) = &raw.limit {
        let l = l.get();
        limit.once = l.once.unwrap_or(false);
        limit.single = l.single.unwrap_or(false);
        if let Some(p) = &l.per_subject {
            match parse_rate(p.get()) {
                Some(r) => limit.per_subject = Some(r),
                None => cx.err(p.span(), "per_subject must look like 1/5s or 3/1h"),
            }
        }
        if raw.subject.is_none() {
            cx.err(
                raw.limit.as_ref().unwrap().span(),
                "limits need a `subject`",
            );
        }
    }

    // Labels first, so that gotos can point forward.
    let mut labels: HashMap<String, usize> = HashMap::new();
    for (i, st) in raw.steps.iter().enumerate() {
        if let Some(l) = &st.get().label {
            if labels.insert(l.get().clone(), i).is_some() {
                cx.err(l.span(), format!("label '{}' is defined twice", l.get()));
            }
        }
    }
    let target = |cx: &mut FileCx, l: &Sp<String>| -> Option<usize> {
        match labels.get(l.get()) {
            Some(&i) => Some(i),
            None => {
                cx.err(l.span(), format!("goto to a missing label '{}'", l.get()));
                None
            }
        }
    };

    // Messages `send` steps keep for a later `edit`: name → where they go.
    let saved: HashMap<String, Sp<String>> = raw
        .steps
        .iter()
        .filter_map(|s| {
            let sd = s.get().send.as_ref()?.get();
            Some((sd.save.as_ref()?.get().clone(), sd.to.clone()))
        })
        .collect();
    let mut steps = Vec::new();
    for st_sp in &raw.steps {
        let st = st_sp.get();
        let span = st_sp.span();
        let line = Position::of(cx.text, span.start).line;
        let mut actions: Vec<&'static str> = Vec::new();
        for (present, name) in [
            (st.goto.is_some(), "goto"),
            (st.set.is_some(), "set"),
            (st.incr.is_some(), "incr"),
            (st.send.is_some(), "send"),
            (st.http.is_some(), "http"),
            (st.call.is_some(), "call"),
            (st.sleep.is_some(), "sleep"),
            (st.cancel.is_some(), "cancel"),
            (st.wait.is_some(), "wait"),
            (st.ask.is_some(), "ask"),
            (st.offer.is_some(), "offer"),
            (st.edit.is_some(), "edit"),
        ] {
            if present {
                actions.push(name);
            }
        }
        if actions.len() > 1 {
            cx.err(
                span.clone(),
                format!(
                    "a step has one action, this one has {}",
                    actions.join(" and ")
                ),
            );
            continue;
        }
        let cond = st.cond.as_ref().and_then(|c| cx.expr(t, c));
        let else_goto = match &st.else_goto {
            Some(e) if st.cond.is_none() => {
                cx.err(e.span(), "`else` needs an `if`");
                None
            }
            Some(e) => target(cx, e),
            None => None,
        };
        if let Some(b) = &st.branch {
            if st.http.is_none() && st.wait.is_none() && st.ask.is_none() && st.offer.is_none() {
                cx.err(
                    b.span(),
                    "`branch` belongs to an `http`, `wait`, `ask` or `offer` step",
                );
            }
        }
        let branch_map: BTreeMap<String, Sp<String>> = st
            .branch
            .as_ref()
            .map(|b| b.get().clone())
            .unwrap_or_default();
        let action = if let Some(g) = &st.goto {
            target(cx, g).map(Action::Goto)
        } else if let Some(set) = &st.set {
            let mut assigns = Vec::new();
            for (k, v) in set.get() {
                let tgt = match parse_var(k) {
                    Ok(t) => t,
                    Err(e) => {
                        cx.err(v.span(), e);
                        continue;
                    }
                };
                if let Some(value) = literal_or_expr(cx, t, v) {
                    assigns.push(Assign { target: tgt, value });
                }
            }
            Some(Action::Set(assigns))
        } else if let Some(i) = &st.incr {
            match parse_var(i.get()) {
                Ok(v) => Some(Action::Incr(v)),
                Err(e) => {
                    cx.err(i.span(), e);
                    None
                }
            }
        } else if let Some(s) = &st.send {
            compile_send(s, cx, t, gw, i18n).map(Action::Send)
        } else if let Some(h) = &st.http {
            compile_http(h, &branch_map, cx, t, gw, &target).map(|h| Action::Http(Box::new(h)))
        } else if let Some(c) = &st.call {
            let c = c.get();
            scenario_refs.push((c.scenario.get().clone(), c.scenario.span()));
            let vars = c
                .vars
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), literal_or_expr(cx, t, v)?)))
                .collect();
            Some(Action::Call(CallSpec {
                scenario: c.scenario.get().clone(),
                vars,
            }))
        } else if let Some(s) = &st.sleep {
            let sd = s.get();
            let time = match (&sd.duration, &sd.until) {
                (Some(d), None) => cx.duration(d).map(SleepTime::For),
                (None, Some(u)) => cx.expr(t, u).map(SleepTime::Until),
                _ => {
                    cx.err(s.span(), "sleep needs exactly one of `for` or `until`");
                    None
                }
            };
            let key = sd.key.as_ref().and_then(|k| cx.tmpl(t, k));
            if raw.subject.is_none() && sd.key.is_some() {
                cx.err(s.span(), "a sleep `key` replaces pending sleeps of the same subject: the scenario needs a `subject`");
            }
            time.map(|time| Action::Sleep(SleepSpec { time, key }))
        } else if let Some(c) = &st.cancel {
            let c = c.get();
            if let Some(s) = &c.scenario {
                scenario_refs.push((s.get().clone(), s.span()));
            }
            Some(Action::Cancel(CancelSpec {
                scenario: c.scenario.as_ref().map(|s| s.get().clone()),
                subject: c.subject.as_ref().and_then(|s| cx.tmpl(t, s)),
                key: c.key.as_ref().and_then(|k| cx.tmpl(t, k)),
            }))
        } else if let Some(w) = &st.wait {
            compile_wait(w, &branch_map, raw, cx, t, &target).map(Action::Wait)
        } else if let Some(o) = &st.offer {
            compile_offer(o, &branch_map, cx, t, gw, i18n, &target)
                .map(|o| Action::Offer(Box::new(o)))
        } else if let Some(e) = &st.edit {
            compile_edit(e, &saved, cx, t, gw, i18n).map(|e| Action::Edit(Box::new(e)))
        } else if let Some(a) = &st.ask {
            compile_ask(a, &branch_map, cx, t, gw, i18n, &target).map(|a| Action::Ask(Box::new(a)))
        } else if st.stop == Some(true) {
            Some(Action::Stop)
        } else {
            Some(Action::Nothing)
        };
        if let Some(action) = action {
            steps.push(Step {
                label: st.label.as_ref().map(|l| l.get().clone()),
                line,
                cond,
                else_goto,
                action,
                stop: st.stop == Some(true),
            });
        }
    }
    if raw.steps.is_empty() {
        cx.err(raw.id.span(), "a scenario needs at least one [[step]]");
    }
    if cx.problems.len() > before {
        return None;
    }
    let uses_subject_vars = uses_subject_vars(cx.text);
    let mut scenario = Scenario::new(
        id,
        cx.file.to_path_buf(),
        raw.description.clone(),
        raw.enabled.unwrap_or(true),
        trigger?,
        when,
        subject,
        limit,
        steps,
        uses_subject_vars,
    );
    scenario.uses_globals = cx.text.contains("global.");
    Some(scenario)
}

/// A string is an expression; other TOML values are literal.
fn literal_or_expr(cx: &mut FileCx, t: &Templates, v: &Sp<serde_json::Value>) -> Option<ValueTmpl> {
    match v.get() {
        serde_json::Value::String(s) => {
            let sp = Sp(toml::Spanned::new(v.span(), s.clone()));
            cx.expr(t, &sp).map(ValueTmpl::Expr)
        }
        other => Some(ValueTmpl::Const(other.clone())),
    }
}

/// Whether any expression or target mentions `subject.` (subject variables are then loaded).
fn uses_subject_vars(text: &str) -> bool {
    text.match_indices("subject.").any(|(i, _)| {
        !text[..i]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '.')
    })
}

fn compile_send(
    s: &Sp<raw::SendDef>,
    cx: &mut FileCx,
    t: &Templates,
    gw: &Gateway,
    i18n: &dyn Messages,
) -> Option<SendSpec> {
    let sd = s.get();
    let to = sd.to.get();
    let (channel, address) = match to.split_once(':') {
        Some((c, a)) => (c.to_string(), Some(a.to_string())),
        None => (to.clone(), None),
    };
    if channel == "staff" {
        // `staff:<id>` or `staff:@group`: checked here when it is written out.
        match &address {
            Some(a) if !a.contains("{{") && gw.staff_named(a).is_empty() => cx.err(
                sd.to.span(),
                format!("no staff member or group '{a}' in the staff directory"),
            ),
            None => cx.err(sd.to.span(), "staff needs an id or @group: staff:elena"),
            _ => {}
        }
    } else if !gw.channels.contains_key(&channel) {
        let mut known: Vec<_> = gw.channels.keys().cloned().collect();
        known.sort();
        cx.err(
            sd.to.span(),
            format!(
                "unknown channel '{channel}' (configured: {})",
                known.join(", ")
            ),
        );
    }
    let address = address.and_then(|a| cx.tmpl_str(t, &a, sd.to.span()));
    let body = match (&sd.text, &sd.template) {
        (Some(id), None) => {
            let missing = i18n.missing_in(id.get());
            if !missing.is_empty() {
                cx.err(
                    id.span(),
                    format!(
                        "unknown Fluent message '{}': missing in locale {}",
                        id.get(),
                        missing.join(", ")
                    ),
                );
            }
            let args = sd
                .args
                .iter()
                .flatten()
                .filter_map(|(k, v)| Some((k.clone(), cx.tmpl(t, v)?)))
                .collect();
            SendBody::Fluent {
                id: id.get().clone(),
                args,
            }
        }
        (None, Some(tm)) => SendBody::Template(cx.tmpl(t, tm)?),
        _ => {
            cx.err(
                s.span(),
                "send needs exactly one of `text` (a Fluent message id) or `template`",
            );
            return None;
        }
    };
    let buttons = compile_buttons(&sd.buttons, &channel, cx, t, gw);
    let save = match &sd.save {
        Some(_) if channel == "staff" => {
            cx.err(
                sd.to.span(),
                "`save` keeps one message: send to one conversation, not staff",
            );
            None
        }
        Some(v) => var_name(cx, Some(v), ""),
        None => None,
    };
    Some(SendSpec {
        channel,
        address,
        body,
        lang: sd.lang.as_ref().and_then(|l| cx.tmpl(t, l)),
        buttons,
        reply_to: sd.reply_to.as_ref().and_then(|r| cx.tmpl(t, r)),
        save,
    })
}

/// URL buttons and callback buttons (with an `id`), the latter checked against the channel.
fn compile_buttons(
    defs: &[Sp<raw::ButtonDef>],
    channel: &str,
    cx: &mut FileCx,
    t: &Templates,
    gw: &Gateway,
) -> Vec<ButtonSpec> {
    let mut out = Vec::new();
    let mut choices = 0;
    let mut first_choice = None;
    for b in defs {
        let bd = b.get();
        match (&bd.url, &bd.id) {
            (Some(url), None) => {
                if let (Some(label), Some(url)) = (cx.tmpl(t, &bd.text), cx.tmpl(t, url)) {
                    out.push(ButtonSpec::Link { label, url });
                }
            }
            (None, Some(id)) => {
                choices += 1;
                first_choice.get_or_insert(b.span());
                let caps = gw.channels.get(channel).map(|c| (c.kind(), cx.caps(c)));
                if let Some((kind, c)) = caps.filter(|(_, c)| c.choices.is_none()) {
                    let _ = c;
                    cx.err(
                        b.span(),
                        format!("channel '{channel}' ({kind}) has no callback buttons: give this button a `url`"),
                    );
                } else if channel == "staff" {
                    cx.err(
                        b.span(),
                        "callback buttons go to one conversation, not staff",
                    );
                }
                check_choice(cx, gw, channel, id, Some(&bd.text));
                if let Some(label) = cx.tmpl(t, &bd.text) {
                    out.push(ButtonSpec::Choice {
                        id: id.get().clone(),
                        label,
                    });
                }
            }
            _ => cx.err(b.span(), "a button has either a `url` or an `id`"),
        }
    }
    if let Some(span) = first_choice {
        check_choice_count(cx, gw, channel, choices, span);
    }
    out
}

fn compile_edit(
    e: &Sp<raw::EditDef>,
    saved: &HashMap<String, Sp<String>>,
    cx: &mut FileCx,
    t: &Templates,
    gw: &Gateway,
    i18n: &dyn Messages,
) -> Option<EditSpec> {
    let ed = e.get();
    let (to, target) = match &ed.to {
        Some(to) => (to.clone(), EditTarget::Ref(cx.tmpl(t, &ed.message)?)),
        None => {
            let name = var_name(cx, Some(&ed.message), "")?;
            let Some(to) = saved.get(&name) else {
                cx.err(
                    ed.message.span(),
                    format!("no `send` in this scenario saves '{name}' (send = {{ …, save = \"{name}\" }}); or give `to` and a message reference"),
                );
                return None;
            };
            (to.clone(), EditTarget::Saved(name))
        }
    };
    let def = raw::SendDef {
        to,
        text: ed.text.clone(),
        template: ed.template.clone(),
        args: ed.args.clone(),
        lang: ed.lang.clone(),
        buttons: ed.buttons.clone(),
        reply_to: None,
        save: None,
    };
    let message = compile_send(&Sp(toml::Spanned::new(e.span(), def)), cx, t, gw, i18n)?;
    {
        if let Some(c) = gw.channels.get(&message.channel) {
            if !cx.caps(c).edits {
                cx.err(
                    e.span(),
                    format!(
                        "channel '{}' ({}) cannot edit messages",
                        message.channel,
                        c.kind()
                    ),
                );
            }
        }
    }
    Some(EditSpec { target, message })
}

fn compile_http(
    h: &Sp<raw::HttpDef>,
    branches: &BTreeMap<String, Sp<String>>,
    cx: &mut FileCx,
    t: &Templates,
    gw: &Gateway,
    target: &dyn Fn(&mut FileCx, &Sp<String>) -> Option<usize>,
) -> Option<HttpSpec> {
    let hd = h.get();
    let mut forms: Vec<(String, &Sp<String>)> = Vec::new();
    for (m, u) in [
        ("GET", &hd.get),
        ("POST", &hd.post),
        ("PUT", &hd.put),
        ("PATCH", &hd.patch),
        ("DELETE", &hd.delete),
    ] {
        if let Some(u) = u {
            forms.push((m.to_string(), u));
        }
    }
    if let Some(u) = &hd.url {
        let m = hd
            .method
            .as_ref()
            .map(|m| m.get().to_ascii_uppercase())
            .unwrap_or_else(|| {
                if hd.json.is_some() || hd.form.is_some() || hd.body.is_some() {
                    "POST".into()
                } else {
                    "GET".into()
                }
            });
        if reqwest::Method::from_bytes(m.as_bytes()).is_err() {
            cx.err(
                hd.method.as_ref().unwrap().span(),
                format!("bad HTTP method '{m}'"),
            );
        }
        forms.push((m, u));
    }
    if forms.len() != 1 {
        cx.err(
            h.span(),
            "http needs one URL: `post = \"…\"` (or get/put/patch/delete), or `url` with `method`",
        );
        return None;
    }
    let (method, url_sp) = forms.pop().unwrap();
    let url = cx.tmpl(t, url_sp);
    if let Tmpl::Const(u) = url.as_ref()? {
        if reqwest::Url::parse(u).is_err() {
            cx.err(url_sp.span(), format!("'{u}' is not an absolute URL"));
        }
    }
    let headers = hd
        .headers
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), cx.tmpl(t, v)?)))
        .collect();
    let bodies = [hd.json.is_some(), hd.form.is_some(), hd.body.is_some()];
    let body = if bodies.iter().filter(|b| **b).count() > 1 {
        cx.err(h.span(), "http takes one of `json`, `form` or `body`");
        HttpBody::None
    } else if let Some(j) = &hd.json {
        HttpBody::Json(cx.value_tmpl(t, j)?)
    } else if let Some(f) = &hd.form {
        HttpBody::Form(
            f.iter()
                .filter_map(|(k, v)| Some((k.clone(), cx.tmpl(t, v)?)))
                .collect(),
        )
    } else if let Some(b) = &hd.body {
        HttpBody::Raw(cx.tmpl(t, b)?)
    } else {
        HttpBody::None
    };
    let mut out_branches = Vec::new();
    for (k, l) in branches {
        let valid = k == "error"
            || (k.len() == 3
                && (k.chars().all(|c| c.is_ascii_digit())
                    || (k.as_bytes()[0].is_ascii_digit() && &k[1..] == "xx")));
        if !valid {
            cx.err(
                l.span(),
                format!("unknown http branch '{k}' (use a status like \"404\", a class like \"2xx\", or error)"),
            );
        }
        if let Some(i) = target(cx, l) {
            out_branches.push((k.clone(), i));
        }
    }
    // Exact statuses are tried before classes.
    out_branches.sort_by_key(|(k, _)| k.ends_with("xx"));
    Some(HttpSpec {
        method,
        url: url?,
        headers,
        body,
        timeout: hd
            .timeout
            .as_ref()
            .and_then(|d| cx.duration(d))
            .unwrap_or(gw.http_timeout),
        attempts: hd.attempts.unwrap_or(gw.http_attempts).max(1),
        save: var_name(cx, hd.save.as_ref(), "http")?,
        branches: out_branches,
    })
}

fn var_name(cx: &mut FileCx, s: Option<&Sp<String>>, dflt: &str) -> Option<String> {
    match s {
        None => Some(dflt.to_string()),
        Some(s) => {
            let v = s.get();
            if !v.is_empty() && v.chars().all(|c| c.is_alphanumeric() || c == '_') {
                Some(v.clone())
            } else {
                cx.err(s.span(), format!("'{v}' is not a variable name"));
                None
            }
        }
    }
}

/// Bytes a choice's callback data adds to its id (`b:`).
const CHOICE_DATA_PREFIX: usize = 2;

/// A callback button against its channel's limits: the id travels in the callback data, a
/// literal label is checked against the label limit.
fn check_choice(
    cx: &mut FileCx,
    gw: &Gateway,
    channel: &str,
    id: &Sp<String>,
    label: Option<&Sp<String>>,
) {
    let Some(c) = gw.channels.get(channel) else {
        return;
    };
    let Some(limits) = cx.caps(c).choices else {
        return;
    };
    let room = limits.data_max.saturating_sub(CHOICE_DATA_PREFIX);
    if id.get().is_empty() || id.get().len() > room {
        cx.err(
            id.span(),
            format!(
                "button id '{}' is {} bytes; channel '{channel}' ({}) carries ids of 1 to {room} bytes ({} bytes of callback data)",
                id.get(),
                id.get().len(),
                c.kind(),
                limits.data_max
            ),
        );
    }
    if let (Some(max), Some(label)) = (limits.label_max, label) {
        let n = label.get().chars().count();
        if !label.get().contains("{{") && n > max {
            cx.err(
                label.span(),
                format!(
                    "button label is {n} characters; channel '{channel}' ({}) shows at most {max}",
                    c.kind()
                ),
            );
        }
    }
}

/// The number of callback buttons on one message against the channel's limit.
fn check_choice_count(cx: &mut FileCx, gw: &Gateway, channel: &str, n: usize, span: Range<usize>) {
    let Some(c) = gw.channels.get(channel) else {
        return;
    };
    if let Some(limits) = cx.caps(c).choices {
        if n > limits.max {
            cx.err(
                span,
                format!(
                    "{n} buttons; channel '{channel}' ({}) shows at most {} on a message",
                    c.kind(),
                    limits.max
                ),
            );
        }
    }
}

/// The message of an `ask` or `offer`: it must go to a chat on a chat channel, which is where
/// replies and clicks come from.
fn compile_chat_message(
    what: &str,
    def: raw::SendDef,
    span: Range<usize>,
    cx: &mut FileCx,
    t: &Templates,
    gw: &Gateway,
    i18n: &dyn Messages,
) -> Option<SendSpec> {
    let to = def.to.get().clone();
    let channel = to.split(':').next().unwrap_or_default();
    let caps = gw.channels.get(channel).map(|c| (c.kind(), cx.caps(c)));
    let lacks = match (what, caps) {
        ("ask", Some((_, c))) if !c.replies => Some("replies"),
        ("offer", Some((_, c))) if c.choices.is_none() => Some("callback buttons"),
        _ => None,
    };
    match (caps, lacks) {
        (Some((kind, _)), Some(lacks)) => cx.err(
            def.to.span(),
            format!("{what} needs a channel with {lacks}; channel '{channel}' ({kind}) has none"),
        ),
        (Some(_), None) if to.contains(':') => {}
        _ => cx.err(
            def.to.span(),
            format!("{what} needs `channel:conversation` on a configured channel, e.g. tg:{{{{ event.chat.id }}}}, not '{to}'"),
        ),
    }
    compile_send(&Sp(toml::Spanned::new(span, def)), cx, t, gw, i18n)
}

fn compile_offer(
    o: &Sp<raw::OfferDef>,
    branches: &BTreeMap<String, Sp<String>>,
    cx: &mut FileCx,
    t: &Templates,
    gw: &Gateway,
    i18n: &dyn Messages,
    target: &dyn Fn(&mut FileCx, &Sp<String>) -> Option<usize>,
) -> Option<OfferSpec> {
    let od = o.get();
    let message = raw::SendDef {
        to: od.to.clone(),
        text: od.text.clone(),
        template: od.template.clone(),
        args: Some(od.args.clone()),
        lang: od.lang.clone(),
        buttons: od.links.clone(),
        reply_to: None,
        save: None,
    };
    let message = compile_chat_message("offer", message, o.span(), cx, t, gw, i18n)?;
    let ch = message.channel.clone();
    let mut buttons = Vec::new();
    for b in &od.buttons {
        check_choice(cx, gw, &ch, &b.id, Some(&b.text));
        if let Some(label) = cx.tmpl(t, &b.text) {
            buttons.push(OfferButton {
                id: b.id.get().clone(),
                label,
                decline: b.decline.unwrap_or(false),
            });
        }
    }
    check_choice_count(cx, gw, &ch, od.buttons.len(), o.span());
    if od.buttons.is_empty() {
        buttons.push(OfferButton {
            id: "accept".into(),
            label: Tmpl::Const("Accept".into()),
            decline: false,
        });
    }
    let who = match od.who.as_ref().map(|w| (w, w.get())) {
        None => Who::Any,
        Some((_, serde_json::Value::String(s))) if s == "any" => Who::Any,
        Some((_, serde_json::Value::String(s))) if s == "staff" => Who::Staff,
        Some((_, serde_json::Value::Array(ids))) => Who::Users(
            ids.iter()
                .map(|v| match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect(),
        ),
        Some((w, _)) => {
            cx.err(
                w.span(),
                "who must be \"any\", \"staff\" or a list of user ids",
            );
            Who::Any
        }
    };
    let mut out = Vec::new();
    for (k, l) in branches {
        if k != "timeout" && !buttons.iter().any(|b| &b.id == k) {
            cx.err(
                l.span(),
                format!("unknown offer branch '{k}' (a button id or timeout)"),
            );
        }
        if let Some(i) = target(cx, l) {
            out.push((k.clone(), i));
        }
    }
    Some(OfferSpec {
        message,
        buttons,
        who,
        timeout: od.timeout.as_ref().and_then(|d| cx.duration(d)),
        taken: od.taken.as_ref().and_then(|tk| cx.tmpl(t, tk)),
        branches: out,
    })
}

fn compile_ask(
    a: &Sp<raw::AskDef>,
    branches: &BTreeMap<String, Sp<String>>,
    cx: &mut FileCx,
    t: &Templates,
    gw: &Gateway,
    i18n: &dyn Messages,
    target: &dyn Fn(&mut FileCx, &Sp<String>) -> Option<usize>,
) -> Option<AskSpec> {
    let ad = a.get();
    let question = raw::SendDef {
        to: ad.to.clone(),
        text: ad.text.clone(),
        template: ad.template.clone(),
        args: Some(ad.args.clone()),
        lang: ad.lang.clone(),
        buttons: Vec::new(),
        reply_to: None,
        save: None,
    };
    let question = compile_chat_message("ask", question, a.span(), cx, t, gw, i18n)?;
    let retry = ad.retry_text.as_ref().map(|id| {
        let missing = i18n.missing_in(id.get());
        if !missing.is_empty() {
            cx.err(
                id.span(),
                format!(
                    "unknown Fluent message '{}': missing in locale {}",
                    id.get(),
                    missing.join(", ")
                ),
            );
        }
        let args = match &question.body {
            SendBody::Fluent { args, .. } => {
                args.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
            }
            SendBody::Template(_) => Vec::new(),
        };
        SendBody::Fluent {
            id: id.get().clone(),
            args,
        }
    });
    let choices: Vec<String> = ad.choices.iter().map(|c| normalize_reply(c)).collect();
    let (mut inline, mut reply_buttons) = (false, Vec::new());
    match ad.buttons.as_ref().map(|b| (b, b.get())) {
        None => {}
        Some((_, serde_json::Value::String(s))) if s == "inline" => inline = true,
        Some((_, serde_json::Value::String(s))) if s == "keyboard" => {
            reply_buttons = ad.choices.clone()
        }
        Some((b, serde_json::Value::Array(items))) => {
            for i in items {
                match i {
                    serde_json::Value::String(s) => reply_buttons.push(s.clone()),
                    other => cx.err(b.span(), format!("a reply button is a text, not {other}")),
                }
            }
        }
        Some((b, _)) => cx.err(
            b.span(),
            "buttons must be \"inline\", \"keyboard\" or a list of reply-button texts",
        ),
    }
    let ch = question.channel.clone();
    if let (Some(b), Some(c)) = (&ad.buttons, gw.channels.get(&ch)) {
        let caps = cx.caps(c);
        if inline && caps.choices.is_none() {
            cx.err(
                b.span(),
                format!("channel '{ch}' ({}) has no callback buttons", c.kind()),
            );
        } else if inline && ad.choices.is_empty() {
            cx.err(b.span(), "inline buttons show the `choices`: list them");
        } else if inline {
            for (i, label) in ad.choices.iter().enumerate() {
                // The callback data is the run and the choice's index.
                let id = Sp(toml::Spanned::new(b.span(), i.to_string()));
                let label = Sp(toml::Spanned::new(b.span(), label.clone()));
                check_choice(cx, gw, &ch, &id, Some(&label));
            }
            check_choice_count(cx, gw, &ch, ad.choices.len(), b.span());
        } else if !reply_buttons.is_empty() && !caps.keyboard {
            cx.err(
                b.span(),
                format!("channel '{ch}' ({}) has no reply buttons", c.kind()),
            );
        }
    }
    let mut out = Vec::new();
    for (k, l) in branches {
        let known = k == "exhausted" || k == "timeout" || choices.contains(&normalize_reply(k));
        if !known {
            cx.err(
                l.span(),
                format!("unknown ask branch '{k}' (a choice, exhausted or timeout)"),
            );
        }
        if let Some(i) = target(cx, l) {
            out.push((normalize_reply(k), i));
        }
    }
    Some(AskSpec {
        question,
        retry,
        choices,
        valid: ad.valid.as_ref().and_then(|v| cx.expr(t, v)),
        pattern: ad
            .pattern
            .as_ref()
            .and_then(|p| match regex::Regex::new(p.get()) {
                Ok(r) => Some(r),
                Err(e) => {
                    cx.err(p.span(), format!("bad pattern: {e}"));
                    None
                }
            }),
        reply_buttons,
        labels: ad.choices.clone(),
        inline,
        retries: ad.retries.unwrap_or(2),
        timeout: ad.timeout.as_ref().and_then(|d| cx.duration(d)),
        save: var_name(cx, ad.save.as_ref(), "answer")?,
        branches: out,
    })
}

fn compile_wait(
    w: &Sp<raw::WaitDef>,
    branches: &BTreeMap<String, Sp<String>>,
    sc: &raw::ScenarioFile,
    cx: &mut FileCx,
    t: &Templates,
    target: &dyn Fn(&mut FileCx, &Sp<String>) -> Option<usize>,
) -> Option<WaitSpec> {
    let wd = w.get();
    let same_hook = sc
        .on
        .get()
        .webhook
        .as_ref()
        .is_some_and(|h| h.get() == wd.webhook.get());
    let match_key = match (
        &wd.match_key,
        same_hook.then_some(()).and(sc.subject.as_ref()),
    ) {
        (Some(m), _) => cx.tmpl(t, m),
        (None, Some(subject)) => cx.tmpl(t, subject),
        (None, None) => {
            cx.err(
                w.span(),
                "wait needs `match`: a template over the incoming event giving the key to compare with this run's key",
            );
            None
        }
    };
    if wd.key.is_none() && sc.subject.is_none() {
        cx.err(
            w.span(),
            "wait needs `key` (a template over the run) when the scenario has no `subject`",
        );
    }
    let mut on_timeout = None;
    for (k, l) in branches {
        if k == "timeout" {
            on_timeout = target(cx, l);
        } else {
            cx.err(l.span(), format!("unknown wait branch '{k}' (use timeout)"));
        }
    }
    if on_timeout.is_some() && wd.timeout.is_none() {
        cx.err(w.span(), "branch.timeout needs a `timeout` on the wait");
    }
    Some(WaitSpec {
        hook: wd.webhook.get().clone(),
        match_key: match_key?,
        key: wd.key.as_ref().and_then(|k| cx.tmpl(t, k)),
        when: wd.when.as_ref().and_then(|e| cx.expr(t, e)),
        timeout: wd.timeout.as_ref().and_then(|d| cx.duration(d)),
        save: var_name(cx, wd.save.as_ref(), "reply")?,
        on_timeout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::lang::capabilities::{ChoiceLimits, Markup};

    /// The locale `en` has one message, `hello`.
    struct OnlyHello;

    impl Messages for OnlyHello {
        fn missing_in(&self, id: &str) -> Vec<String> {
            if id == "hello" {
                vec![]
            } else {
                vec!["en".into()]
            }
        }
    }

    /// Log channels only write; Telegram channels have what Telegram has.
    fn caps(c: &Channel) -> Capabilities {
        match c {
            Channel::Log { .. } => Capabilities::WRITE_ONLY,
            Channel::Telegram(_) => Capabilities {
                replies: true,
                choices: Some(ChoiceLimits {
                    max: 100,
                    label_max: None,
                    data_max: 64,
                }),
                keyboard: true,
                links: true,
                edits: true,
                answers: true,
                markup: Markup::Html,
            },
        }
    }

    /// Problems of one scenario file next to a gateway file, as `line:col: message`.
    fn check(gateway_text: &str, scenario: &str) -> Vec<String> {
        let host = Host {
            capabilities: &caps,
            env: &|_| None,
        };
        let mut problems = Vec::new();
        let (raw, gw) = gateway(
            Path::new("gateway.toml"),
            gateway_text,
            &host,
            &mut problems,
        );
        let templates = Templates::new(raw.defaults.template_fuel.unwrap_or(20_000));
        let files = [(PathBuf::from("s.toml"), Ok(scenario.to_string()))];
        scenarios(&files, &templates, &gw, &OnlyHello, &host, &mut problems);
        problems
            .iter()
            .map(|e| format!("{}:{}: {}", e.pos.line, e.pos.col, e.message))
            .collect()
    }

    fn errors(scenario: &str) -> Vec<String> {
        check("[defaults]\nlanguage = \"en\"\n", scenario)
    }

    /// Problems of a scenario next to a gateway file with a Telegram channel `tg`.
    fn errors_on_telegram(scenario: &str) -> Vec<String> {
        check(
            "[defaults]\nlanguage = \"en\"\n[channels.tg]\ntype = \"telegram\"\ntoken = \"1:x\"\n",
            scenario,
        )
    }

    #[test]
    fn scenarios_are_held_to_their_channels_capabilities() {
        let all = errors_on_telegram(
            r#"id = "a"
on = { webhook = "h" }
[[step]]
ask = { to = "log:x", template = "Yes?", choices = ["1"] }
[[step]]
offer = { to = "tg:1", template = "Deal", buttons = [{ id = "take-it-now-before-someone-else-does-it-please-quickly-thank-you-again", text = "Take" }] }
[[step]]
send = { to = "log:x", template = "Hi", buttons = [{ id = "ack", text = "OK" }] }
"#,
        )
        .join("\n");
        assert!(
            all.contains("4:14: ask needs a channel with replies; channel 'log' (log) has none"),
            "{all}"
        );
        assert!(
            all.contains("6:61: button id 'take-it-now-before-someone-else-does-it-please-quickly-thank-you-again' is 70 bytes; channel 'tg' (telegram) carries ids of 1 to 62 bytes (64 bytes of callback data)"),
            "{all}"
        );
        assert!(
            all.contains("8:52: channel 'log' (log) has no callback buttons"),
            "{all}"
        );
        assert_eq!(all.lines().count(), 3, "{all}");
    }

    #[test]
    fn asks_offers_edits_and_clicks_load_on_a_channel_that_has_them() {
        let all = errors_on_telegram(
            r#"id = "a"
on = { click = "tg", button = "ack" }
[[step]]
ask = { to = "tg:{{ event.chat.id }}", template = "Yes?", choices = ["Yes", "No"], buttons = "inline" }
[[step]]
send = { to = "tg:1", template = "Hi", buttons = [{ id = "ack", text = "OK" }], save = "note" }
[[step]]
edit = { message = "note", template = "Done" }
[[step]]
edit = { to = "tg:{{ event.chat.id }}", message = "{{ event.message }}", template = "Seen" }
"#,
        );
        assert!(all.is_empty(), "{all:?}");
        let all = errors_on_telegram(
            r#"id = "a"
on = { click = "log" }
[[step]]
edit = { message = "nothing", template = "Done" }
"#,
        )
        .join("\n");
        assert!(
            all.contains("2:16: channel 'log' (log) has no callback buttons"),
            "{all}"
        );
        assert!(
            all.contains("4:20: no `send` in this scenario saves 'nothing'"),
            "{all}"
        );
    }

    #[test]
    fn a_good_scenario_loads() {
        let errs = errors(
            r#"id = "a"
on = { webhook = "h" }
when = 'event.x > 1'
subject = "x:{{ event.id }}"
[[step]]
set = { "run.y" = "event.x * 2", "global.n" = 3 }
[[step]]
send = { to = "log", text = "hello", args = { name = "{{ run.y }}" } }
"#,
        );
        assert!(errs.is_empty(), "{errs:?}");
    }

    #[test]
    fn unknown_keys_report_their_position() {
        let errs =
            errors("id = \"a\"\non = { webhook = \"h\" }\n[[step]]\nsnd = { to = \"log\" }\n");
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].starts_with("4:1: unknown field `snd`"), "{errs:?}");
    }

    #[test]
    fn missing_labels_bad_expressions_channels_and_messages_are_reported() {
        let errs = errors(
            r#"id = "a"
on = { webhook = "h" }
when = 'event.x >'
[[step]]
goto = "nowhere"
[[step]]
send = { to = "telegram:1", text = "nope" }
"#,
        );
        let all = errs.join("\n");
        assert!(all.contains("3:17: bad expression"), "{all}");
        assert!(
            all.contains("5:8: goto to a missing label 'nowhere'"),
            "{all}"
        );
        assert!(all.contains("7:15: unknown channel 'telegram'"), "{all}");
        assert!(all.contains("7:36: unknown Fluent message 'nope'"), "{all}");
    }

    #[test]
    fn one_action_per_step() {
        let errs = errors(
            "id = \"a\"\non = { webhook = \"h\" }\n[[step]]\nstop = true\nincr = \"run.a\"\ngoto = \"x\"\nlabel = \"x\"\n",
        );
        assert!(errs[0].contains("one action"), "{errs:?}");
    }

    #[test]
    fn subject_variable_use_is_detected() {
        assert!(uses_subject_vars("if = 'subject.tries > 2'"));
        assert!(!uses_subject_vars("x = '{{ meta.subject }}'"));
    }
}
