//! Expressions and inline templates: one MiniJinja environment with bounded fuel.
//! Guards, `if`, `set` values are expressions; texts, URLs and bodies are templates.

use std::sync::{Arc, RwLock};

use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, UndefinedBehavior};
use serde_json::Value as Json;

/// What `link(…)` in a template asks for: a signed URL that starts `scenario`.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkRequest {
    pub scenario: String,
    pub subject: Option<String>,
    /// Variables for the run (`event.*`).
    pub vars: serde_json::Map<String, Json>,
    /// How long the link works, from now.
    pub expires_in: Option<std::time::Duration>,
    pub once: bool,
    pub redirect: Option<String>,
    pub confirm: bool,
}

/// Signs trigger links for templates. The language owns the trait so that it needs no key,
/// clock or public URL of its own; `links` implements it.
pub trait LinkSigner: Send + Sync {
    fn sign(&self, link: LinkRequest) -> Result<String, String>;
}

/// Marks the name of a template rendered as HTML.
const HTML_MARK: &str = "\u{0}html\u{0}";
/// Marks the name of a template rendered in WhatsApp's formatting.
const WHATSAPP_MARK: &str = "\u{0}whatsapp\u{0}";
/// Marks a Discord text.
const MARKDOWN_MARK: &str = "\u{0}markdown\u{0}";

/// How a channel marks up rich text. Operator-written templates may use it; values
/// interpolated from events and variables are escaped for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Markup {
    /// Telegram's HTML subset.
    Html,
    /// WhatsApp's `*bold*`, `_italic_`, `~strike~` and `` `code` ``.
    WhatsApp,
    /// Discord's markdown (`**bold**`, `*italic*`, `` `code` ``, `> quote`, `<@id>` mentions).
    Markdown,
    Plain,
}

impl Markup {
    /// `s` as literal text in this markup.
    pub fn escape(self, s: &str) -> String {
        match self {
            Markup::Html => {
                let mut out = String::with_capacity(s.len());
                for c in s.chars() {
                    match c {
                        '&' => out.push_str("&amp;"),
                        '<' => out.push_str("&lt;"),
                        '>' => out.push_str("&gt;"),
                        '"' => out.push_str("&quot;"),
                        c => out.push(c),
                    }
                }
                out
            }
            // WhatsApp has no escape character. Its markers only count at a word's edge, so
            // a word joiner before each one in the data keeps it from opening or closing a
            // span, and the text still reads the same.
            Markup::WhatsApp => {
                let mut out = String::with_capacity(s.len());
                for c in s.chars() {
                    if matches!(c, '*' | '_' | '~' | '`' | '>') {
                        out.push('\u{2060}');
                    }
                    out.push(c);
                }
                out
            }
            // A backslash makes any markdown character (and `<`, which starts a mention)
            // literal; a line break cannot start a heading, list or quote from data either.
            Markup::Markdown => {
                let mut out = String::with_capacity(s.len());
                for c in s.chars() {
                    if matches!(
                        c,
                        '\\' | '*'
                            | '_'
                            | '~'
                            | '`'
                            | '|'
                            | '>'
                            | '<'
                            | '#'
                            | '-'
                            | '['
                            | ']'
                            | '('
                            | ')'
                            | ':'
                            | '@'
                    ) {
                        out.push('\\');
                    }
                    out.push(c);
                }
                out
            }
            Markup::Plain => s.to_string(),
        }
    }
}

/// `{{ event.phone | e164("PL") }}`: a phone number as `+48555123456`; the region is the
/// country of numbers written without their country code. Not a valid number: an error that
/// names it (the step fails, journaled).
fn e164(number: String, region: Option<String>) -> Result<String, minijinja::Error> {
    let bad = |why: String| minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, why);
    let country = match region.as_deref().map(str::trim).filter(|r| !r.is_empty()) {
        Some(r) => Some(
            r.to_ascii_uppercase()
                .parse::<phonenumber::country::Id>()
                .map_err(|_| bad(format!("'{r}' is not a country code such as PL or DE")))?,
        ),
        None => None,
    };
    let parsed = phonenumber::parse(country, number.trim())
        .map_err(|e| bad(format!("'{number}' is not a phone number: {e}")))?;
    if !phonenumber::is_valid(&parsed) {
        return Err(bad(format!("'{number}' is not a valid phone number")));
    }
    Ok(parsed.format().mode(phonenumber::Mode::E164).to_string())
}

/// `{{ event.email | email }}`: an e-mail address trimmed and lower-cased; not an address: an
/// error that names it.
fn email(address: String) -> Result<String, minijinja::Error> {
    let a = address.trim().to_lowercase();
    match a.parse::<lettre::Address>() {
        Ok(_) => Ok(a),
        Err(e) => Err(minijinja::Error::new(
            minijinja::ErrorKind::InvalidOperation,
            format!("'{address}' is not an e-mail address: {e}"),
        )),
    }
}

/// The shared template environment. It lives for the whole process: compiled expressions
/// borrow it, and configs are loaded once per process.
#[derive(Clone)]
/// Cheap to clone: a reloaded config keeps the environment (and its compiled templates) when
/// the fuel is the same, so reloads do not leave environments behind.
pub struct Templates {
    env: &'static Environment<'static>,
    links: Arc<RwLock<Option<Arc<dyn LinkSigner>>>>,
    fuel: u64,
}

/// An evaluation failure: a template error, running out of fuel, a bad value.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct EvalError(pub String);

impl From<minijinja::Error> for EvalError {
    fn from(e: minijinja::Error) -> Self {
        let mut msg = e.to_string();
        if let Some(detail) = e.detail() {
            if !msg.contains(detail) {
                msg = format!("{msg}: {detail}");
            }
        }
        EvalError(msg)
    }
}

/// A compile error with its byte range inside the source, for `file:line:col` reports.
#[derive(Debug)]
pub struct CompileError {
    pub message: String,
    pub offset: usize,
}

fn compile_error(e: minijinja::Error) -> CompileError {
    CompileError {
        offset: e.range().map(|r| r.start).unwrap_or(0),
        message: e.detail().unwrap_or("syntax error").to_string(),
    }
}

impl Templates {
    pub fn new(fuel: u64) -> Templates {
        let mut env = Environment::new();
        env.set_fuel(Some(fuel));
        env.set_undefined_behavior(UndefinedBehavior::Chainable);
        // Message texts for a channel with markup are rendered under a marked name: their
        // interpolated values are escaped for the markup, their literal text is not.
        env.set_auto_escape_callback(|name| {
            if name.starts_with(HTML_MARK) {
                minijinja::AutoEscape::Custom("html")
            } else if name.starts_with(WHATSAPP_MARK) {
                minijinja::AutoEscape::Custom("whatsapp")
            } else if name.starts_with(MARKDOWN_MARK) {
                minijinja::AutoEscape::Custom("markdown")
            } else {
                minijinja::AutoEscape::None
            }
        });
        env.set_formatter(|out, state, value| {
            let markup = match state.auto_escape() {
                minijinja::AutoEscape::Custom("html") => Markup::Html,
                minijinja::AutoEscape::Custom("whatsapp") => Markup::WhatsApp,
                minijinja::AutoEscape::Custom("markdown") => Markup::Markdown,
                _ => return minijinja::escape_formatter(out, state, value),
            };
            if value.is_undefined() {
                Ok(())
            } else if value.is_safe() {
                Ok(write!(out, "{value}")?)
            } else {
                Ok(out.write_str(&markup.escape(&value.to_string()))?)
            }
        });
        // Templates are registered by their own source text: the loader hands the name back
        // and MiniJinja compiles and caches it on first use.
        env.set_loader(|name| {
            let src = [HTML_MARK, WHATSAPP_MARK, MARKDOWN_MARK]
                .iter()
                .find_map(|m| name.strip_prefix(m))
                .unwrap_or(name);
            Ok(Some(src.to_string()))
        });
        crate::lang::dates::register(&mut env);
        env.add_filter("e164", e164);
        env.add_filter("email", email);
        let links: Arc<RwLock<Option<Arc<dyn LinkSigner>>>> = Arc::default();
        let signer = links.clone();
        env.add_function("link", move |scenario: String, kwargs: Kwargs| {
            let links = signer
                .read()
                .expect("not poisoned")
                .clone()
                .ok_or_else(|| {
                    minijinja::Error::new(
                        minijinja::ErrorKind::InvalidOperation,
                        "trigger links are not available here",
                    )
                })?;
            make_link(&*links, scenario, &kwargs)
        });
        Templates {
            env: Box::leak(Box::new(env)),
            links,
            fuel,
        }
    }

    /// The most work one evaluation may do.
    pub fn fuel(&self) -> u64 {
        self.fuel
    }

    /// Makes `link(…)` work in templates (it needs the signing key and the public URL).
    pub fn set_links(&self, links: Arc<dyn LinkSigner>) {
        *self.links.write().expect("not poisoned") = Some(links);
    }

    pub fn expr(&self, src: &str) -> Result<Expr, CompileError> {
        let compiled = self
            .env
            .compile_expression_owned(src.to_string())
            .map_err(compile_error)?;
        let mut paths: Vec<String> = compiled.undeclared_variables(true).into_iter().collect();
        paths.sort();
        Ok(Expr {
            src: src.to_string(),
            compiled,
            paths,
        })
    }

    pub fn tmpl(&self, src: &str) -> Result<Tmpl, CompileError> {
        if !src.contains("{{") && !src.contains("{%") && !src.contains("{#") {
            return Ok(Tmpl::Const(src.to_string()));
        }
        self.env.get_template(src).map_err(compile_error)?;
        Ok(Tmpl::Dyn {
            src: src.to_string(),
            env: self.env,
        })
    }

    /// A JSON value whose strings are templates; a string that is only `{{ expr }}` is an
    /// expression, so numbers and objects keep their type.
    pub fn value_tmpl(&self, v: &Json) -> Result<ValueTmpl, CompileError> {
        Ok(match v {
            Json::String(s) => {
                let t = s.trim();
                if t.starts_with("{{")
                    && t.ends_with("}}")
                    && t.matches("{{").count() == 1
                    && !t[2..t.len() - 2].contains("}}")
                {
                    ValueTmpl::Expr(self.expr(&t[2..t.len() - 2])?)
                } else {
                    ValueTmpl::Str(self.tmpl(s)?)
                }
            }
            Json::Array(items) => ValueTmpl::Array(
                items
                    .iter()
                    .map(|i| self.value_tmpl(i))
                    .collect::<Result<_, _>>()?,
            ),
            Json::Object(map) => ValueTmpl::Object(
                map.iter()
                    .map(|(k, v)| Ok((k.clone(), self.value_tmpl(v)?)))
                    .collect::<Result<_, _>>()?,
            ),
            other => ValueTmpl::Const(other.clone()),
        })
    }
}

fn make_link(
    links: &dyn LinkSigner,
    scenario: String,
    kwargs: &Kwargs,
) -> Result<String, minijinja::Error> {
    let bad = |m: String| minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, m);
    let mut link = LinkRequest {
        scenario,
        subject: kwargs.get::<Option<String>>("subject")?,
        vars: serde_json::Map::new(),
        expires_in: None,
        once: kwargs.get::<Option<bool>>("once")?.unwrap_or(false),
        redirect: kwargs.get::<Option<String>>("redirect")?,
        confirm: kwargs.get::<Option<bool>>("confirm")?.unwrap_or(false),
    };
    if let Some(exp) = kwargs.get::<Option<String>>("expires")? {
        let d = humantime::parse_duration(&exp)
            .map_err(|e| bad(format!("expires='{exp}' is not a duration: {e}")))?;
        link.expires_in = Some(d);
    }
    for name in kwargs.args() {
        if !["subject", "once", "redirect", "confirm", "expires"].contains(&name) {
            let v: Value = kwargs.get(name)?;
            link.vars
                .insert(name.to_string(), to_json(&v).map_err(|e| bad(e.0))?);
        }
    }
    links.sign(link).map_err(bad)
}

/// A compiled expression with the variable paths it reads (shown in the journal).
pub struct Expr {
    pub src: String,
    compiled: minijinja::Expression<'static, 'static>,
    pub paths: Vec<String>,
}

impl Expr {
    pub fn eval(&self, ctx: &Value) -> Result<Value, EvalError> {
        Ok(self.compiled.eval(ctx)?)
    }

    pub fn eval_json(&self, ctx: &Value) -> Result<Json, EvalError> {
        to_json(&self.eval(ctx)?)
    }

    pub fn truthy(&self, ctx: &Value) -> Result<bool, EvalError> {
        Ok(self.eval(ctx)?.is_true())
    }

    /// The values of the variables the expression reads, for the journal's "why".
    pub fn seen(&self, ctx: &Value) -> serde_json::Map<String, Json> {
        self.paths
            .iter()
            .map(|p| {
                let mut v = ctx.clone();
                for part in p.split('.') {
                    v = v.get_attr(part).unwrap_or(Value::UNDEFINED);
                }
                let j = if v.is_undefined() {
                    Json::Null
                } else {
                    to_json(&v).unwrap_or(Json::Null)
                };
                (p.clone(), j)
            })
            .collect()
    }
}

#[derive(Clone)]
pub enum Tmpl {
    Const(String),
    Dyn {
        src: String,
        env: &'static Environment<'static>,
    },
}

impl Tmpl {
    /// The template as written.
    pub fn src(&self) -> &str {
        match self {
            Tmpl::Const(s) => s,
            Tmpl::Dyn { src, .. } => src,
        }
    }

    pub fn render(&self, ctx: &Value) -> Result<String, EvalError> {
        match self {
            Tmpl::Const(s) => Ok(s.clone()),
            Tmpl::Dyn { src, env } => Ok(env.get_template(src)?.render(ctx)?),
        }
    }

    /// Renders a message text for a channel's markup: the operator's literal text stays
    /// markup, every interpolated value is escaped (unless marked `| safe`).
    pub fn render_in(&self, ctx: &Value, markup: Markup) -> Result<String, EvalError> {
        match (self, markup) {
            (Tmpl::Dyn { src, env }, Markup::Html) => Ok(env
                .get_template(&format!("{HTML_MARK}{src}"))?
                .render(ctx)?),
            (Tmpl::Dyn { src, env }, Markup::WhatsApp) => Ok(env
                .get_template(&format!("{WHATSAPP_MARK}{src}"))?
                .render(ctx)?),
            (Tmpl::Dyn { src, env }, Markup::Markdown) => Ok(env
                .get_template(&format!("{MARKDOWN_MARK}{src}"))?
                .render(ctx)?),
            _ => self.render(ctx),
        }
    }

    pub fn source(&self) -> &str {
        match self {
            Tmpl::Const(s) => s,
            Tmpl::Dyn { src, .. } => src,
        }
    }
}

pub enum ValueTmpl {
    Const(Json),
    Str(Tmpl),
    Expr(Expr),
    Array(Vec<ValueTmpl>),
    Object(Vec<(String, ValueTmpl)>),
}

impl ValueTmpl {
    pub fn render(&self, ctx: &Value) -> Result<Json, EvalError> {
        Ok(match self {
            ValueTmpl::Const(v) => v.clone(),
            ValueTmpl::Str(t) => Json::String(t.render(ctx)?),
            ValueTmpl::Expr(e) => e.eval_json(ctx)?,
            ValueTmpl::Array(items) => Json::Array(
                items
                    .iter()
                    .map(|i| i.render(ctx))
                    .collect::<Result<_, _>>()?,
            ),
            ValueTmpl::Object(fields) => Json::Object(
                fields
                    .iter()
                    .map(|(k, v)| Ok((k.clone(), v.render(ctx)?)))
                    .collect::<Result<_, EvalError>>()?,
            ),
        })
    }
}

pub fn to_json(v: &Value) -> Result<Json, EvalError> {
    if v.is_undefined() {
        return Ok(Json::Null);
    }
    serde_json::to_value(v).map_err(|e| EvalError(format!("value cannot be stored: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    use serde_json::json;

    fn ctx(j: Json) -> Value {
        Value::from_serialize(&j)
    }

    #[test]
    fn expressions_read_nested_fields_and_report_what_they_saw() {
        let t = Templates::new(10_000);
        let e = t
            .expr(r#"event.deal.stage == "new" and event.deal.budget > 10"#)
            .unwrap();
        let c = ctx(serde_json::json!({"event": {"deal": {"stage": "new", "budget": 5}}}));
        assert!(!e.truthy(&c).unwrap());
        let seen = e.seen(&c);
        assert_eq!(seen["event.deal.stage"], "new");
        assert_eq!(seen["event.deal.budget"], 5);
    }

    #[test]
    fn missing_fields_are_falsy_not_errors() {
        let t = Templates::new(10_000);
        let e = t.expr(r#"event.deal.stage == "new""#).unwrap();
        assert!(!e.truthy(&ctx(serde_json::json!({"event": {}}))).unwrap());
    }

    #[test]
    fn fuel_bounds_runaway_templates() {
        let t = Templates::new(1_000);
        let tm = t.tmpl("{% for i in range(100000) %}x{% endfor %}").unwrap();
        let err = tm.render(&ctx(serde_json::json!({}))).unwrap_err();
        assert!(err.0.contains("fuel"), "{}", err.0);
    }

    #[test]
    fn lone_expressions_keep_their_type_in_json_bodies() {
        let t = Templates::new(10_000);
        let v = t
            .value_tmpl(&serde_json::json!({"n": "{{ event.n * 2 }}", "s": "id-{{ event.n }}"}))
            .unwrap();
        let out = v
            .render(&ctx(serde_json::json!({"event": {"n": 21}})))
            .unwrap();
        assert_eq!(out, serde_json::json!({"n": 42, "s": "id-21"}));
    }

    #[test]
    fn html_texts_escape_values_but_not_the_operators_markup() {
        let t = Templates::new(10_000);
        let tmpl = t
            .tmpl("<b>{{ event.title }}</b> {{ event.n }} {{ event.tag | safe }}")
            .unwrap();
        let c =
            ctx(json!({"event": {"title": "R&D <Ltd> \"Q\" 5 > 3", "n": 5, "tag": "<i>x</i>"}}));
        assert_eq!(
            tmpl.render_in(&c, Markup::Html).unwrap(),
            "<b>R&amp;D &lt;Ltd&gt; &quot;Q&quot; 5 &gt; 3</b> 5 <i>x</i>"
        );
        assert_eq!(
            tmpl.render_in(&c, Markup::Plain).unwrap(),
            "<b>R&D <Ltd> \"Q\" 5 > 3</b> 5 <i>x</i>"
        );
        // The same source still renders plain where it is not a message (a URL, a body).
        assert_eq!(
            tmpl.render(&c).unwrap(),
            "<b>R&D <Ltd> \"Q\" 5 > 3</b> 5 <i>x</i>"
        );
    }

    #[test]
    fn whatsapp_texts_keep_data_from_forming_markers() {
        let t = Templates::new(10_000);
        let tmpl = t.tmpl("*{{ event.name }}* {{ event.n }}").unwrap();
        let c = ctx(json!({"event": {"name": "_VIP_ *Ada*", "n": 5}}));
        assert_eq!(
            tmpl.render_in(&c, Markup::WhatsApp).unwrap(),
            "*\u{2060}_VIP\u{2060}_ \u{2060}*Ada\u{2060}** 5"
        );
        assert_eq!(Markup::WhatsApp.escape("a_b"), "a\u{2060}_b");
    }

    #[test]
    fn phone_numbers_and_addresses_are_normalized_or_refused() {
        let t = Templates::new(10_000);
        let phone = t.tmpl("{{ event.p | e164('PL') }}").unwrap();
        let ok = |p: &str| phone.render(&ctx(json!({"event": {"p": p}})));
        assert_eq!(ok("555 123 456").unwrap(), "+48555123456");
        assert_eq!(ok("+49 30 901820").unwrap(), "+4930901820");
        assert!(ok("12")
            .unwrap_err()
            .0
            .contains("'12' is not a valid phone number"));
        assert!(ok("call me").is_err());
        let bad_region = t.tmpl("{{ '555 123 456' | e164('XX') }}").unwrap();
        assert!(bad_region
            .render(&ctx(json!({})))
            .unwrap_err()
            .0
            .contains("'XX' is not a country code"));
        let mail = t.tmpl("{{ event.m | email }}").unwrap();
        let m = |a: &str| mail.render(&ctx(json!({"event": {"m": a}})));
        assert_eq!(m(" Ada@Example.COM ").unwrap(), "ada@example.com");
        assert!(m("ada at example")
            .unwrap_err()
            .0
            .contains("is not an e-mail address"));
    }

    #[test]
    fn discord_texts_keep_data_literal() {
        let t = Templates::new(10_000);
        let tmpl = t.tmpl("**{{ event.name }}** <@1>").unwrap();
        let c = ctx(json!({"event": {"name": "*x* <@2> @here [a](b)"}}));
        assert_eq!(
            tmpl.render_in(&c, Markup::Markdown).unwrap(),
            "**\\*x\\* \\<\\@2\\> \\@here \\[a\\]\\(b\\)** <@1>"
        );
    }

    #[test]
    fn syntax_errors_carry_an_offset() {
        let t = Templates::new(10_000);
        let err = t.expr("event.a ==").err().unwrap();
        assert!(!err.message.is_empty());
    }
}
