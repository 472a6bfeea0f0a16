//! The checked, compiled model the engine runs: scenarios with resolved labels, compiled
//! expressions and templates, hooks, channels and the staff directory.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::expr::{Expr, Tmpl, ValueTmpl};
pub use super::hours::Hours;

pub struct Gateway {
    pub listen: Option<String>,
    pub public_url: Option<String>,
    pub max_body_bytes: usize,
    pub max_backlog: usize,
    pub backlog_wait: Duration,
    pub language: String,
    /// The zone working hours and local times use when nothing closer names one.
    pub timezone: chrono_tz::Tz,
    pub max_steps: u32,
    pub max_call_depth: u32,
    /// Most runs one fan-out (`call` with `for_each`, a start by hand) may start.
    pub max_fan_out: u32,
    pub http_timeout: Duration,
    pub http_attempts: u32,
    pub retry_delay: Duration,
    pub retry_max_delay: Duration,
    pub retention: Duration,
    pub database: PoolOptions,
    pub http: HttpPolicy,
    pub channels: HashMap<String, Channel>,
    /// Per channel: when its messages may go out, and how many one recipient gets.
    pub rules: HashMap<String, ChannelRules>,
    pub hooks: HashMap<String, Hook>,
    pub staff: Vec<Staff>,
}

/// What outgoing `http` steps may reach beyond public addresses, and how much they read.
#[derive(Debug, Clone)]
pub struct HttpPolicy {
    /// Host names reached whatever they resolve to (lower case).
    pub allow_hosts: Vec<String>,
    pub allow_nets: Vec<ipnet::IpNet>,
    pub max_response_bytes: usize,
}

impl Default for HttpPolicy {
    fn default() -> Self {
        HttpPolicy {
            allow_hosts: Vec::new(),
            allow_nets: Vec::new(),
            max_response_bytes: 1 << 20,
        }
    }
}

/// Connection pool and work-sharing settings (the PostgreSQL store; SQLite keeps its own).
#[derive(Debug, Clone)]
pub struct PoolOptions {
    pub max_connections: u32,
    pub min_connections: u32,
    pub acquire_timeout: std::time::Duration,
    /// How long a replica may go unseen before the others take over its work; also how long
    /// a claimed timer or a named lease lasts.
    pub lease: std::time::Duration,
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions {
            max_connections: 16,
            min_connections: 1,
            acquire_timeout: std::time::Duration::from_secs(10),
            lease: std::time::Duration::from_secs(15),
        }
    }
}

pub use super::channel::Channel;

/// What every channel type takes besides its own settings.
#[derive(Default, Clone)]
pub struct ChannelRules {
    pub hours: Option<Arc<Hours>>,
    pub per_recipient: Option<Cap>,
}

/// At most `n` messages per `per` to one recipient; over it, the message waits for room or
/// (a `send` with `drop`) is not sent.
#[derive(Debug, Clone, Copy)]
pub struct Cap {
    pub n: u32,
    pub per: Duration,
    pub drop: bool,
}

/// A secret string that does not print.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

#[derive(Debug, Clone, Default)]
pub struct Hook {
    pub secret: Option<(String, String)>,
    pub hmac: Option<HmacSpec>,
    pub idempotency_field: Option<String>,
}

#[derive(Debug, Clone)]
pub struct HmacSpec {
    pub header: String,
    pub secret: String,
    pub prefix: String,
    /// Signed time header and how far it may be from now.
    pub timestamp: Option<(String, Duration)>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Staff {
    pub id: String,
    pub name: String,
    pub language: Option<String>,
    #[serde(serialize_with = "tz_name")]
    pub tz: Option<chrono_tz::Tz>,
    pub ids: std::collections::BTreeMap<String, String>,
    pub external: std::collections::BTreeMap<String, String>,
    pub groups: Vec<String>,
}

fn tz_name<S: serde::Serializer>(tz: &Option<chrono_tz::Tz>, s: S) -> Result<S::Ok, S::Error> {
    match tz {
        Some(z) => s.serialize_some(z.name()),
        None => s.serialize_none(),
    }
}

impl Gateway {
    /// Staff members an address names: `elena` or `@supervisors`.
    pub fn staff_named(&self, address: &str) -> Vec<&Staff> {
        match address.strip_prefix('@') {
            Some(group) => self
                .staff
                .iter()
                .filter(|s| s.groups.iter().any(|g| g == group))
                .collect(),
            None => self.staff.iter().filter(|s| s.id == address).collect(),
        }
    }

    /// A staff member's id on a channel: under the channel's name, else under its type.
    pub fn staff_id<'a>(&self, s: &'a Staff, channel: &str) -> Option<&'a String> {
        s.ids
            .get(channel)
            .or_else(|| self.channels.get(channel).and_then(|c| s.ids.get(c.kind())))
    }

    /// Where a staff member is reached: the first conversational channel (by name) that
    /// has their id.
    pub fn staff_chat(&self, s: &Staff) -> Option<(String, String)> {
        let mut names: Vec<&String> = self
            .channels
            .iter()
            .filter(|(_, c)| c.caps.replies)
            .map(|(n, _)| n)
            .collect();
        names.sort();
        names
            .into_iter()
            .find_map(|n| self.staff_id(s, n).map(|id| (n.clone(), id.clone())))
    }

    /// The staff member who is `user` on `channel`, if the directory has one.
    pub fn staff_on(&self, channel: &str, user: &str) -> Option<&Staff> {
        self.staff
            .iter()
            // `@<id>` (a Discord user, reached by direct message) is that user.
            .find(|s| {
                self.staff_id(s, channel)
                    .is_some_and(|id| id == user || id.strip_prefix('@') == Some(user))
            })
    }
}

pub struct Scenario {
    pub id: String,
    pub file: PathBuf,
    pub description: Option<String>,
    enabled: AtomicBool,
    /// When the switch last applied was made (ms): an older one read late is ignored.
    switched_at: std::sync::Mutex<i64>,
    pub trigger: Trigger,
    pub when: Option<Expr>,
    pub subject: Option<Tmpl>,
    pub limit: Limits,
    pub steps: Vec<Step>,
    pub uses_subject_vars: bool,
    /// Whether the file mentions `global.` at all (true unless known otherwise).
    pub uses_globals: bool,
    /// When its messages may go out (unless a step says otherwise).
    pub hours: Option<Arc<Hours>>,
    /// Runs wait for a yearly date before their steps.
    pub yearly: Option<Yearly>,
}

impl Scenario {
    #[expect(
        clippy::too_many_arguments,
        reason = "a plain constructor of a data record"
    )]
    pub fn new(
        id: String,
        file: PathBuf,
        description: Option<String>,
        enabled: bool,
        trigger: Trigger,
        when: Option<Expr>,
        subject: Option<Tmpl>,
        limit: Limits,
        steps: Vec<Step>,
        uses_subject_vars: bool,
    ) -> Scenario {
        Scenario {
            id,
            file,
            description,
            enabled: AtomicBool::new(enabled),
            switched_at: std::sync::Mutex::new(i64::MIN),
            trigger,
            when,
            subject,
            limit,
            steps,
            uses_subject_vars,
            uses_globals: true,
            hours: None,
            yearly: None,
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Applies an operator's switch made at `at` (ms), unless a later one is applied
    /// already: replicas read switches periodically, and a read from before a switch must
    /// not undo it.
    pub fn set_enabled(&self, on: bool, at: i64) {
        let mut last = self.switched_at.lock().expect("not poisoned");
        if at >= *last {
            *last = at;
            self.enabled.store(on, Ordering::Relaxed);
        }
    }
}

#[derive(Debug, Clone)]
pub enum Trigger {
    Webhook(String),
    Schedule {
        cron: Box<cron::Schedule>,
        tz: chrono_tz::Tz,
    },
    Call,
    Link,
    /// Messages arriving on a chat channel.
    Message(String),
    /// Clicks on buttons with an id under messages a `send` posted (any button, or one).
    Click {
        channel: String,
        button: Option<String>,
    },
    /// Delivery statuses of messages sent on a channel.
    Status(String),
    /// Failed runs and sends of these scenarios (`None`: of any scenario).
    Failed(Option<Vec<String>>),
    /// Events of this kind that started no run (`None`: of any kind).
    Unmatched(Option<String>),
}

/// The kinds of events an `unmatched` trigger may name.
pub const UNMATCHED_KINDS: &[&str] = &["webhook", "message", "status", "call", "link", "schedule"];

#[derive(Debug, Clone, Default)]
pub struct Limits {
    /// (runs, per period)
    pub per_subject: Option<(u32, Duration)>,
    pub once: bool,
    pub single: bool,
}

pub struct Step {
    pub label: Option<String>,
    pub line: usize,
    pub cond: Option<Expr>,
    pub else_goto: Option<usize>,
    pub action: Action,
    pub stop: bool,
    /// When its message may go out.
    pub hours: Option<Arc<Hours>>,
}

pub enum Action {
    /// Only a label or a condition.
    Nothing,
    Goto(usize),
    Set(Vec<Assign>),
    Incr(VarRef),
    Send(SendSpec),
    Http(Box<HttpSpec>),
    Call(CallSpec),
    Sleep(SleepSpec),
    Cancel(CancelSpec),
    Wait(WaitSpec),
    Ask(Box<AskSpec>),
    Offer(Box<OfferSpec>),
    Edit(Box<EditSpec>),
    Stop,
}

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Action::Nothing => "check",
            Action::Goto(_) => "goto",
            Action::Set(_) => "set",
            Action::Incr(_) => "incr",
            Action::Send(_) => "send",
            Action::Http(_) => "http",
            Action::Call(_) => "call",
            Action::Sleep(_) => "sleep",
            Action::Cancel(_) => "cancel",
            Action::Wait(_) => "wait",
            Action::Ask(_) => "ask",
            Action::Offer(_) => "offer",
            Action::Edit(_) => "edit",
            Action::Stop => "stop",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Run,
    Subject,
    Global,
}

#[derive(Debug, Clone)]
pub struct VarRef {
    pub scope: Scope,
    pub path: Vec<String>,
}

impl VarRef {
    pub fn display(&self) -> String {
        let scope = match self.scope {
            Scope::Run => "run",
            Scope::Subject => "subject",
            Scope::Global => "global",
        };
        format!("{scope}.{}", self.path.join("."))
    }
}

pub struct Assign {
    pub target: VarRef,
    pub value: ValueTmpl,
}

pub struct SendSpec {
    pub channel: String,
    pub address: Option<Tmpl>,
    pub body: SendBody,
    pub lang: Option<Tmpl>,
    pub buttons: Vec<ButtonSpec>,
    pub reply_to: Option<Tmpl>,
    /// URLs of files sent with the message.
    pub attachments: Vec<Tmpl>,
    /// Run variable that keeps the sent message's reference.
    pub save: Option<String>,
    /// The approved template sent outside the recipient's 24-hour window (WhatsApp).
    pub window_template: Option<WindowTemplateSpec>,
    /// The approved template sent instead of the free-form message (WhatsApp).
    pub approved_template: Option<WindowTemplateSpec>,
    /// E-mail: the subject, copies, and whether it is a notification (one-click unsubscribe).
    pub subject: Option<Tmpl>,
    pub cc: Vec<Tmpl>,
    pub bcc: Vec<Tmpl>,
    pub notification: bool,
    /// Discord: a rich card under the text (boxed: most messages have none).
    pub embed: Option<Box<EmbedSpec>>,
}

pub struct EmbedSpec {
    pub title: Option<Tmpl>,
    pub description: Option<Tmpl>,
    pub url: Option<Tmpl>,
    pub color: Option<u32>,
    /// (name, value, inline)
    pub fields: Vec<(Tmpl, Tmpl, bool)>,
    pub footer: Option<Tmpl>,
}

pub struct WindowTemplateSpec {
    pub name: String,
    pub language: Option<Tmpl>,
    pub params: Vec<Tmpl>,
}

pub enum ButtonSpec {
    Link {
        label: Tmpl,
        url: Tmpl,
    },
    /// A callback button; its click is a `click` event with `event.button` = `id`.
    Choice {
        id: String,
        label: Tmpl,
    },
}

/// Which message an `edit` changes.
pub enum EditTarget {
    /// The run variable a `send` saved.
    Saved(String),
    /// A reference (template) in the conversation of `message.address`.
    Ref(Tmpl),
}

pub struct EditSpec {
    pub target: EditTarget,
    /// The new text and buttons; its channel and address name the conversation for `Ref`.
    pub message: SendSpec,
}

pub enum SendBody {
    Fluent {
        id: String,
        args: Vec<(String, Tmpl)>,
    },
    Template(Tmpl),
}

pub struct HttpSpec {
    pub method: String,
    pub url: Tmpl,
    pub headers: Vec<(String, Tmpl)>,
    pub body: HttpBody,
    pub timeout: Duration,
    pub attempts: u32,
    pub save: String,
    /// (outcome pattern, step index): `"200"`, `"2xx"`, `"error"`.
    pub branches: Vec<(String, usize)>,
}

pub enum HttpBody {
    None,
    Json(ValueTmpl),
    Form(Vec<(String, Tmpl)>),
    Raw(Tmpl),
}

pub struct CallSpec {
    pub scenario: String,
    pub vars: Vec<(String, ValueTmpl)>,
    /// One run per item of this list, the item under `event.<name>`.
    pub for_each: Option<(Expr, String)>,
}

pub enum SleepTime {
    For(Duration),
    Until(Expr),
    /// The next time the clock shows `at`.
    Next,
}

pub struct SleepSpec {
    pub time: SleepTime,
    pub key: Option<Tmpl>,
    /// A local time of day: on the date of `until`, or the next one.
    pub at: Option<chrono::NaiveTime>,
    /// The zone of `at` and of a time without one (default: the gateway's).
    pub tz: Option<Tmpl>,
}

/// A yearly trigger: runs sleep until the next anniversary of `date` at `at` in `tz`.
pub struct Yearly {
    pub date: Expr,
    pub at: chrono::NaiveTime,
    /// Default: the gateway's zone.
    pub tz: Option<Tmpl>,
}

pub struct CancelSpec {
    pub scenario: Option<String>,
    pub subject: Option<Tmpl>,
    pub key: Option<Tmpl>,
}

pub struct WaitSpec {
    pub hook: String,
    pub match_key: Tmpl,
    pub key: Option<Tmpl>,
    pub when: Option<Expr>,
    pub timeout: Option<Duration>,
    pub save: String,
    pub on_timeout: Option<usize>,
}

pub struct AskSpec {
    pub question: SendSpec,
    /// Sent after an invalid reply; the question again when `None`.
    pub retry: Option<SendBody>,
    /// Normalized accepted answers.
    pub choices: Vec<String>,
    pub valid: Option<Expr>,
    pub pattern: Option<regex::Regex>,
    /// Reply-keyboard buttons.
    pub reply_buttons: Vec<String>,
    /// The choices as written: labels of inline buttons.
    pub labels: Vec<String>,
    /// Show the choices as callback buttons under the question.
    pub inline: bool,
    pub retries: u32,
    pub timeout: Option<Duration>,
    pub save: String,
    /// choice, `exhausted` or `timeout` → step index.
    pub branches: Vec<(String, usize)>,
}

impl AskSpec {
    pub fn branch(&self, key: &str) -> Option<usize> {
        self.branches
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, i)| *i)
    }
}

/// How replies are compared with choices: trimmed, lower case, without a final period.
pub fn normalize_reply(s: &str) -> String {
    s.trim().trim_end_matches('.').trim().to_lowercase()
}

pub struct OfferSpec {
    /// The message, to its first recipient (a chat, or staff).
    pub message: SendSpec,
    /// The same message to the other recipients of a list.
    pub also: Vec<SendSpec>,
    pub buttons: Vec<OfferButton>,
    pub who: Who,
    pub timeout: Option<Duration>,
    pub taken: Option<Tmpl>,
    /// button id or `timeout` → step index.
    pub branches: Vec<(String, usize)>,
}

impl OfferSpec {
    pub fn branch(&self, key: &str) -> Option<usize> {
        self.branches
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, i)| *i)
    }
}

pub struct OfferButton {
    pub id: String,
    pub label: Tmpl,
    pub decline: bool,
}

pub enum Who {
    Any,
    Staff,
    Users(Vec<String>),
}
