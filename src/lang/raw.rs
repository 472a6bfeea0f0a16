//! The serde shapes of the files in `bot-configs/`, exactly as written, with source spans.
//! Nothing here interprets a value; `compile` turns these into the checked model.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;
use toml::Spanned;

/// A value with its byte span in the file, so that later checks can report `file:line:col`.
#[derive(Debug, Clone, Deserialize)]
#[serde(transparent)]
pub struct Sp<T>(pub Spanned<T>);

impl<T> Sp<T> {
    pub fn get(&self) -> &T {
        self.0.get_ref()
    }
    pub fn span(&self) -> std::ops::Range<usize> {
        self.0.span()
    }
}

impl<T: JsonSchema> JsonSchema for Sp<T> {
    fn schema_name() -> String {
        T::schema_name()
    }
    fn json_schema(gen: &mut schemars::gen::SchemaGenerator) -> schemars::schema::Schema {
        gen.subschema_for::<T>()
    }
    fn is_referenceable() -> bool {
        false
    }
}

/// `bot-configs/gateway.toml`: the server, channels, hooks, staff directory and defaults.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GatewayFile {
    /// Where the gateway listens and how much it takes in: `listen`, `public_url`,
    /// `max_body_bytes`, `max_backlog`, `backlog_wait`.
    #[serde(default)]
    pub server: ServerSection,
    /// Defaults for every scenario: language, time zone, limits of steps and calls, HTTP timeouts
    /// and retries, retention.
    #[serde(default)]
    pub defaults: DefaultsSection,
    /// Connection pool and work sharing on PostgreSQL (SQLite keeps its own settings).
    #[serde(default)]
    pub database: DatabaseSection,
    /// What outgoing `http` steps may reach besides public addresses, and how much of a response
    /// they read.
    #[serde(default)]
    pub http: HttpSection,
    /// Named channels; `log` is built in and always present.
    #[serde(default)]
    pub channels: BTreeMap<String, Sp<ChannelSection>>,
    /// Per-hook settings for `POST /hooks/{name}`: secrets, signatures, idempotency.
    #[serde(default)]
    pub hooks: BTreeMap<String, Sp<HookSection>>,
    /// The staff directory.
    #[serde(default)]
    pub staff: Vec<Sp<StaffEntry>>,
}

/// PostgreSQL pool and replica settings (SQLite ignores them). The database itself is named
/// by `--database` or `DATABASE_URL`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSection {
    /// Most connections this replica opens (default 16).
    pub max_connections: Option<u32>,
    /// Connections kept open when idle (default 1).
    pub min_connections: Option<u32>,
    /// How long a request waits for a free connection (default `10s`).
    pub acquire_timeout: Option<Sp<String>>,
    /// How long a replica may go unseen before the others take over its work, and how long
    /// timer claims and the Telegram polling lease last (default `15s`).
    pub lease: Option<Sp<String>>,
}

/// What outgoing `http` steps may reach. Loopback, private, link-local (cloud metadata) and
/// other special addresses are refused unless a host or range is allowed here.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    /// Host names or address ranges (CIDR) that may be reached although they are special,
    /// e.g. `["crm.internal", "10.0.0.0/8", "127.0.0.1/32"]`.
    #[serde(default)]
    pub allow: Vec<Sp<String>>,
    /// Largest response body read, in bytes (default 1 MiB); a longer one fails the request.
    pub max_response_bytes: Option<usize>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// Address to listen on, e.g. `127.0.0.1:8080` (the `--listen` flag wins).
    pub listen: Option<Sp<String>>,
    /// The externally reachable base URL (the `--public-url` flag wins).
    pub public_url: Option<Sp<String>>,
    /// Largest accepted request body in bytes (default 1 MiB).
    pub max_body_bytes: Option<usize>,
    /// Work queued for the engine (events, delivery results) beyond which new events wait
    /// before they are stored (default 256).
    pub max_backlog: Option<usize>,
    /// How long an incoming event waits for room before it is answered 503 with
    /// `Retry-After` (default `2s`).
    pub backlog_wait: Option<Sp<String>>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DefaultsSection {
    /// Fallback language for messages (default `en`).
    pub language: Option<Sp<String>>,
    /// Folder of Fluent files, relative to the config folder (default `../locales`).
    pub locales: Option<Sp<String>>,
    /// Most steps one run may take while handling one event (default 200).
    pub max_steps: Option<u32>,
    /// Deepest chain of `call` steps (default 8).
    pub max_call_depth: Option<u32>,
    /// Template engine fuel per evaluation (default 20000).
    pub template_fuel: Option<u64>,
    /// Timeout of one outgoing HTTP attempt (default `10s`).
    pub http_timeout: Option<Sp<String>>,
    /// Attempts per outgoing request before it fails (default 5).
    pub http_attempts: Option<u32>,
    /// First retry delay (default `1s`); doubles up to `retry_max_delay`.
    pub retry_delay: Option<Sp<String>>,
    /// Longest retry delay (default `5m`).
    pub retry_max_delay: Option<Sp<String>>,
    /// How long finished runs, events and requests stay in the journal (default `30d`).
    pub retention: Option<Sp<String>>,
    /// The gateway's time zone (IANA name, e.g. `Europe/Warsaw`; default `UTC`): working hours
    /// and local times use it when nothing closer (the step, the recipient) names one.
    pub timezone: Option<Sp<String>>,
    /// Most runs one `call` with `for_each`, or one start through the admin API, may start
    /// (default 1000, at most 10000).
    pub max_fan_out: Option<Sp<u32>>,
}

/// A channel: `type` (`log`, `telegram`, …) and the keys of that type, e.g. a Telegram
/// bot's `token`, `api_url`, `mode`, `webhook_secret`, `limits`; a log channel's `output`.
pub type ChannelSection = BTreeMap<String, Sp<serde_json::Value>>;

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HookSection {
    /// Require a header with a shared secret.
    pub secret: Option<Sp<SecretCheck>>,
    /// Require an HMAC-SHA256 signature of the raw body.
    pub hmac: Option<Sp<HmacCheck>>,
    /// Dotted path of a body field that identifies a delivery (deduplication).
    pub idempotency_field: Option<Sp<String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretCheck {
    /// Header name (default `X-Hook-Secret`).
    pub header: Option<String>,
    /// The expected header value, e.g. `"${CRM_SECRET}"` (must not be empty).
    pub value: Sp<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HmacCheck {
    /// Header carrying the hex signature (default `X-Signature-256`).
    pub header: Option<String>,
    /// The HMAC-SHA256 key, e.g. `"${CRM_KEY}"` (must not be empty).
    pub secret: Sp<String>,
    /// Text before the hex digest, e.g. `sha256=` (default).
    pub prefix: Option<String>,
    /// Header with the request's Unix time in seconds; the signature then covers
    /// `<time>.<body>`, and older (or later) requests than `tolerance` are refused.
    pub timestamp_header: Option<String>,
    /// How far the timestamp may be from now (default `5m`).
    pub tolerance: Option<Sp<String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StaffEntry {
    /// The member's id in this directory, e.g. `elena`: `to = "staff:elena"` reaches them.
    pub id: Sp<String>,
    /// The name shown to others, e.g. in "Already taken by Elena".
    pub name: String,
    /// The member's language for messages to them, e.g. `ru` (default: `defaults.language`).
    pub language: Option<String>,
    /// The member's time zone (IANA name), for working hours and local times.
    pub tz: Option<Sp<String>>,
    /// Ids on each channel, e.g. `{ telegram = "123" }`.
    #[serde(default)]
    pub ids: BTreeMap<String, String>,
    /// Ids in external systems, e.g. `{ crm = "u-17" }`.
    #[serde(default)]
    pub external: BTreeMap<String, String>,
    /// Groups for `to = "staff:@group"`, e.g. `["supervisors"]`.
    #[serde(default)]
    pub groups: Vec<String>,
}

/// One scenario file.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScenarioFile {
    /// The scenario's unique id: letters, digits, `-` and `_`, e.g. `deal-routing`.
    pub id: Sp<String>,
    /// What the scenario is for, shown in the journal pages.
    pub description: Option<String>,
    /// Disabled scenarios are loaded and checked but never start runs.
    pub enabled: Option<bool>,
    /// What starts the scenario, e.g. `{ webhook = "crm-deal" }`, `{ schedule = "0 9 * * 1-5", tz =
    /// "Europe/Warsaw" }`, `{ message = "tg" }`.
    pub on: Sp<TriggerDef>,
    /// Guard expression; the run starts only when it is true.
    pub when: Option<Sp<String>>,
    /// Template of the subject key, e.g. `deal:{{ event.deal.id }}`.
    pub subject: Option<Sp<String>>,
    /// How often a run may start per subject, e.g. `{ per_subject = "1/5s", single = true }`.
    pub limit: Option<Sp<LimitDef>>,
    /// When this scenario's messages (`send`, `ask`, `offer`) may go out; outside, a step
    /// waits for the next opening. A step's own `hours` take precedence; these take
    /// precedence over the channel's.
    pub hours: Option<Sp<HoursDef>>,
    /// The steps, in order: `[[step]]` tables with one action each.
    #[serde(default, rename = "step")]
    pub steps: Vec<Sp<StepDef>>,
    /// Tests of this scenario, run offline by `switchboard test`.
    #[serde(default, rename = "test")]
    pub tests: Vec<Sp<TestDef>>,
}

/// A `*.test.toml` file: tests of one scenario kept beside it.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestFile {
    /// The id of the scenario the tests are of.
    pub scenario: Sp<String>,
    /// The tests, as in a scenario file's `[[test]]` tables.
    #[serde(default, rename = "test")]
    pub tests: Vec<Sp<TestDef>>,
}

/// A scenario test: the event, what happens next, and what the run is expected to do.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestDef {
    /// The test's name (`switchboard test --filter` picks tests by a part of it).
    pub name: String,
    /// The event that starts the scenario (its `event`), e.g. `{ chat_id = 42 }`.
    #[serde(default)]
    pub event: serde_json::Map<String, serde_json::Value>,
    /// The clock when the event arrives (RFC 3339; default `2026-01-05T10:00:00Z`, a Monday).
    pub at: Option<Sp<String>>,
    /// What happens next, in order: `{ reply = "1" }` (an answer to an `ask`, or to a `wait`),
    /// `{ webhook = { … } }` (the event a `wait` gets), `{ click = "accept", by = "anna" }` (a
    /// press on the waiting offer's button), `{ after = "2h" }` (time passes; sleeps, holds
    /// and timeouts due by then fire at their own times).
    #[serde(default)]
    pub then: Vec<Sp<TestInput>>,
    /// Responses of the run's `http` requests, in order; default `{ status = 200 }`.
    #[serde(default)]
    pub http: Vec<Sp<TestHttpReply>>,
    /// What the run should have done: `status`, `labels`, `vars`, `sent`, `requests`, `error`.
    #[serde(default)]
    pub expect: TestExpect,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestInput {
    /// A reply to the asking run from the chat it asked, or the text a waiting run gets, e.g.
    /// `"1"`.
    pub reply: Option<String>,
    /// The event a waiting run (`wait`) gets, e.g. `{ answer = "1" }`.
    pub webhook: Option<serde_json::Map<String, serde_json::Value>>,
    /// Time that passes, e.g. `"2h"`: sleeps, held messages and timeouts due by then go on, each at
    /// its own time.
    pub after: Option<String>,
    /// A press on a button (its `id`) of the offer a run waits on.
    pub click: Option<String>,
    /// Who presses: a staff member's id (on the channel of their message), else a user id.
    pub by: Option<String>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestHttpReply {
    /// The response's status (default 200).
    pub status: Option<u16>,
    /// The response's JSON body, e.g. `{ id = 7 }`.
    pub json: Option<serde_json::Value>,
    /// The response's body as text (read as JSON too when it is).
    pub body: Option<String>,
}

/// What a test expects; what it leaves out is not checked.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestExpect {
    /// The run's final status: `done`, `failed`, `waiting`, `sleeping`, … or `not started`
    /// (the guard was false or a limit refused it).
    pub status: Option<Sp<String>>,
    /// Labels the run passed through, in this order (others may come between).
    #[serde(default)]
    pub labels: Vec<Sp<String>>,
    /// Run variables by dotted path, e.g. `{ "answer.value" = "1" }`.
    #[serde(default)]
    pub vars: BTreeMap<String, Sp<serde_json::Value>>,
    /// Every message the run sent, in order.
    pub sent: Option<Vec<Sp<TestMessage>>>,
    /// Every `http` request the run made, in order.
    pub requests: Option<Vec<Sp<TestRequest>>>,
    /// A part of the run's error.
    pub error: Option<Sp<String>>,
    /// A part of each answer a press got, in order: "You took it", "already taken by Elena".
    pub answers: Option<Vec<Sp<String>>>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestMessage {
    /// `channel:address`, e.g. `tg:42` (a staff member's message: their channel and id).
    pub to: Option<String>,
    /// A part of the text.
    pub text: Option<String>,
    /// The labels of its buttons (URL and callback), in order.
    pub buttons: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestRequest {
    /// `GET`, `POST`, …
    pub method: Option<String>,
    /// A part of the URL.
    pub url: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TriggerDef {
    /// `POST /hooks/{name}`.
    pub webhook: Option<Sp<String>>,
    /// Cron expression (5 or 6 fields).
    pub schedule: Option<Sp<String>>,
    /// Time zone of `schedule`, e.g. `Europe/Warsaw` (default UTC).
    pub tz: Option<Sp<String>>,
    /// Started only by `call` steps of other scenarios.
    pub call: Option<bool>,
    /// Started by clicks on trigger links made with `link("this-id", …)`.
    pub link: Option<bool>,
    /// Started by messages to a chat channel, e.g. `message = "tg"`.
    pub message: Option<Sp<String>>,
    /// Started by clicks on buttons with an id that `send` steps put under messages, e.g.
    /// `click = "tg"` (with `button = "ack"`: only that button).
    pub click: Option<Sp<String>>,
    /// With `click`: only presses on the button with this id, e.g. `"ack"`.
    pub button: Option<Sp<String>>,
    /// Started by delivery statuses of messages sent on a channel (`sent`, `delivered`,
    /// `read`, `failed`), e.g. `status = "wa"`.
    pub status: Option<Sp<String>>,
    /// Expression giving a date, e.g. `event.birthday`: each event makes a run that sleeps
    /// until the date's next anniversary (at `at` in `tz`, a template here), runs the steps
    /// then and again every year; a newer event for the same subject replaces it. Needs a
    /// `subject`; goes with `webhook`, `message`, `call` or `link`.
    pub yearly: Option<Sp<String>>,
    /// Local time of day of a `yearly` trigger, `HH:MM` (default `00:00`).
    pub at: Option<Sp<String>>,
    /// Started when a run fails or one of its messages cannot be sent: `"*"` for any
    /// scenario, else a scenario id or a list of them (`failed = ["a", "b"]`).
    pub failed: Option<Sp<FailedDef>>,
    /// Started by an event that started no run: `"webhook"`, `"message"`, `"status"`,
    /// `"call"`, `"link"`, `"schedule"`, or `"*"` for any of them but `status`.
    pub unmatched: Option<Sp<String>>,
}

/// The scenarios whose failures a `failed` trigger follows.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum FailedDef {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitDef {
    /// At most N runs per subject per period, e.g. `1/5s`, `3/1h`.
    pub per_subject: Option<Sp<String>>,
    /// Only one run ever per subject.
    pub once: Option<bool>,
    /// At most one active (unfinished) run per subject.
    pub single: Option<bool>,
}

/// Working or quiet hours, e.g. `{ allow = "Mon-Fri 09:00-20:00, Sat 10:00-14:00", tz =
/// "{{ event.tz }}", holidays = ["2026-12-24", "12-25"] }`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HoursDef {
    /// Open times: weekdays (`Mon`, `Mon-Fri`, `Sat/Sun`, `daily`) and time ranges
    /// (`09:00-13:00 14:00-18:00`), groups separated by commas; a range may end after midnight.
    pub allow: Option<Sp<String>>,
    /// Closed times in the same form, e.g. `daily 21:00-08:00`; taken out of `allow` (or out
    /// of the whole week without `allow`).
    pub quiet: Option<Sp<String>>,
    /// The zone the times are read in (template; IANA name). Empty or left out: the
    /// recipient's zone (a staff member's `tz`), else the gateway's `timezone`.
    pub tz: Option<Sp<String>>,
    /// Whole days off: `2026-12-24`, or `12-25` for every year.
    #[serde(default)]
    pub holidays: Vec<Sp<String>>,
}

/// One step: an optional label and condition, and one action.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StepDef {
    /// A name for `goto`, `else` and `branch` to jump to, e.g. `"escalate"`.
    pub label: Option<Sp<String>>,
    /// Expression; when false the step is skipped (or `else` is taken).
    #[serde(rename = "if")]
    pub cond: Option<Sp<String>>,
    /// Label to jump to when `if` is false.
    #[serde(rename = "else")]
    pub else_goto: Option<Sp<String>>,
    /// Jump to the step with this label.
    pub goto: Option<Sp<String>>,
    /// Assignments `"run.x" = "expression"`; namespaces `run`, `subject`, `global`.
    pub set: Option<Sp<BTreeMap<String, Sp<serde_json::Value>>>>,
    /// Adds one to a counter variable, e.g. `"global.deals"`.
    pub incr: Option<Sp<String>>,
    /// Send a message: `{ to = "tg:{{ event.chat }}", text = "fluent-id" }` or `template = "…"`.
    pub send: Option<Sp<SendDef>>,
    /// Make an HTTP request and wait for its response: `{ post = "https://crm/x", json = { … } }`.
    pub http: Option<Sp<HttpDef>>,
    /// Start another scenario (or one run per item with `for_each`) and go on: `{ scenario =
    /// "notify" }`.
    pub call: Option<Sp<CallDef>>,
    /// Wait durably: `{ for = "30m" }`, `{ until = "event.at" }`, `{ until = …, at = "10:00", tz =
    /// … }`.
    pub sleep: Option<Sp<SleepDef>>,
    /// End other sleeping or waiting runs: `{ scenario = "cart-reminder", key = "reminder" }`.
    pub cancel: Option<Sp<CancelDef>>,
    /// Wait for a webhook event that matches: `{ webhook = "reply", match = "order:{{ event.id }}",
    /// timeout = "24h" }`.
    pub wait: Option<Sp<WaitDef>>,
    /// Ask a question on a chat channel and wait for a valid reply, re-asking: `{ to = …, text = …,
    /// choices = ["1", "2"] }`.
    pub ask: Option<Sp<AskDef>>,
    /// Post a message with buttons; the first allowed press wins: `{ to = …, text = …, buttons = [{
    /// id = "accept", text = "Accept" }] }`.
    pub offer: Option<Sp<OfferDef>>,
    /// Change the text and buttons of a message sent before: `{ message = "note", template = "…"
    /// }`.
    pub edit: Option<Sp<EditDef>>,
    /// When this step's message may go out (a `send`, `ask` or `offer`); outside, the run
    /// waits for the next opening.
    pub hours: Option<Sp<HoursDef>>,
    /// Outcome → label, for `http` (`"2xx"`, `"404"`, `error`) and `wait` (`timeout`).
    pub branch: Option<Sp<BTreeMap<String, Sp<String>>>>,
    /// End the run (after this step's action, if any).
    pub stop: Option<bool>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SendDef {
    /// `channel` or `channel:address` (templated), e.g. `log`.
    pub to: Sp<String>,
    /// Fluent message id from `locales/<lang>/*.ftl`.
    pub text: Option<Sp<String>>,
    /// Inline template instead of a Fluent message.
    pub template: Option<Sp<String>>,
    /// Fluent arguments (templates); run variables are passed too.
    pub args: Option<BTreeMap<String, Sp<String>>>,
    /// Recipient's language (template), e.g. `{{ event.lang }}`.
    pub lang: Option<Sp<String>>,
    /// Buttons under the message: URL buttons (`url`, trigger links for example) and, on
    /// channels with callback buttons, buttons with an `id` whose click starts the scenarios
    /// with `on = { click = "<channel>", button = "<id>" }`.
    #[serde(default)]
    pub buttons: Vec<Sp<ButtonDef>>,
    /// Message to reply to (template giving a message reference), e.g. `{{ event.message }}`.
    pub reply_to: Option<Sp<String>>,
    /// Run variable that keeps a reference to the sent message, for a later `edit`.
    pub save: Option<Sp<String>>,
    /// Files sent with the message, by URL (templates), e.g. `["{{ event.invoice_url }}"]`.
    #[serde(default)]
    pub attachments: Vec<Sp<String>>,
    /// On channels with message templates (WhatsApp): the approved template sent instead
    /// when the recipient is outside the 24-hour window.
    pub window_template: Option<Sp<WindowTemplateDef>>,
    /// On channels with message templates (WhatsApp): the approved template sent instead of
    /// the free-form message, inside the 24-hour window too (the text is what the journal
    /// shows, and the template's one body parameter when `params` is empty).
    pub approved_template: Option<Sp<WindowTemplateDef>>,
    /// E-mail: the subject (a template). Default: the Fluent message `<text>-subject` if the
    /// locale has one, else the message's first line.
    pub subject: Option<Sp<String>>,
    /// E-mail: copies to these addresses (templates).
    #[serde(default)]
    pub cc: Vec<Sp<String>>,
    /// E-mail: blind copies to these addresses (templates).
    #[serde(default)]
    pub bcc: Vec<Sp<String>>,
    /// E-mail: a notification, which the recipient can unsubscribe from in one click
    /// (`List-Unsubscribe`); an unsubscribed address gets no more messages from the channel.
    pub notification: Option<bool>,
    /// Discord: a rich card under the text.
    pub embed: Option<Sp<EmbedDef>>,
}

/// A platform's pre-approved message template: `{ name = "appointment_reminder", language =
/// "en", params = ["{{ event.time }}"] }`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WindowTemplateDef {
    /// The approved template's name, e.g. `"appointment_reminder"`.
    pub name: Sp<String>,
    /// Its language code (template; default: the message's language).
    pub language: Option<Sp<String>>,
    /// Its body parameters in order (templates; default: the message's text as the one).
    #[serde(default)]
    pub params: Vec<Sp<String>>,
}

/// A rich card under a message (Discord's embed): `{ title = "Deal {{ event.id }}", description
/// = "…", url = "…", color = "#e67e22", fields = [{ name = "Budget", value = "{{ event.budget }}",
/// inline = true }], footer = "…" }`; the texts are templates.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmbedDef {
    /// The card's title (template).
    pub title: Option<Sp<String>>,
    /// The card's text (template, Discord markdown).
    pub description: Option<Sp<String>>,
    /// Where the title links to (template).
    pub url: Option<Sp<String>>,
    /// `#rrggbb`.
    pub color: Option<Sp<String>>,
    /// Name and value pairs shown in the card, e.g. `[{ name = "Budget", value = "{{ event.budget
    /// }}", inline = true }]`.
    #[serde(default)]
    pub fields: Vec<EmbedFieldDef>,
    /// Small text under the card (template).
    pub footer: Option<Sp<String>>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmbedFieldDef {
    /// The field's name (template).
    pub name: Sp<String>,
    /// The field's value (template).
    pub value: Sp<String>,
    /// Show the field beside the previous one.
    #[serde(default)]
    pub inline: bool,
}

/// Change a message an earlier step sent: its text and buttons are replaced.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EditDef {
    /// The run variable a `send` saved (`save = "note"`), or with `to`, a template giving the
    /// message reference, e.g. `{{ event.message }}`.
    pub message: Sp<String>,
    /// `channel:conversation` of a message named by reference.
    pub to: Option<Sp<String>>,
    /// Fluent message id of the new text.
    pub text: Option<Sp<String>>,
    /// Inline template of the new text instead.
    pub template: Option<Sp<String>>,
    /// Arguments of the Fluent message `text`, e.g. `{ name = "{{ run.claim.name }}" }`.
    pub args: Option<BTreeMap<String, Sp<String>>>,
    /// The language of the new text (template; default: the recipient's).
    pub lang: Option<Sp<String>>,
    /// The new buttons (none: the buttons go away).
    #[serde(default)]
    pub buttons: Vec<Sp<ButtonDef>>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ButtonDef {
    /// Button label (template).
    pub text: Sp<String>,
    /// Target URL (template), e.g. `{{ link("approve", subject=meta.subject) }}`.
    pub url: Option<Sp<String>>,
    /// A callback button's id instead of a URL: its click is an event (`event.button`).
    pub id: Option<Sp<String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpDef {
    /// GET this URL (template).
    pub get: Option<Sp<String>>,
    /// POST to this URL (template).
    pub post: Option<Sp<String>>,
    /// PUT to this URL (template).
    pub put: Option<Sp<String>>,
    /// PATCH this URL (template).
    pub patch: Option<Sp<String>>,
    /// DELETE this URL (template).
    pub delete: Option<Sp<String>>,
    /// With `url`: the method, e.g. `"POST"`.
    pub method: Option<Sp<String>>,
    /// With `method`: the URL (template).
    pub url: Option<Sp<String>>,
    /// Request headers (templates), e.g. `{ Authorization = "Bearer ${CRM_TOKEN}" }`.
    #[serde(default)]
    pub headers: BTreeMap<String, Sp<String>>,
    /// JSON body; strings are templates, `"{{ expr }}"` alone keeps the value's type.
    pub json: Option<Sp<serde_json::Value>>,
    /// Form body (templates).
    pub form: Option<BTreeMap<String, Sp<String>>>,
    /// Raw body template.
    pub body: Option<Sp<String>>,
    /// Per-attempt timeout, e.g. `5s`.
    pub timeout: Option<Sp<String>>,
    /// Attempts before the request fails.
    pub attempts: Option<u32>,
    /// Run variable that receives `{status, headers, json, body}` (default `http`).
    pub save: Option<Sp<String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CallDef {
    /// The id of the scenario to start.
    pub scenario: Sp<String>,
    /// Variables for the called run (expressions).
    #[serde(default)]
    pub vars: BTreeMap<String, Sp<serde_json::Value>>,
    /// Expression giving a list: one run of the scenario per item (at most `max_fan_out`).
    pub for_each: Option<Sp<String>>,
    /// With `for_each`: the name of the item in the called run's event (default `item`);
    /// `event.index` is its position from 0.
    #[serde(rename = "as")]
    pub item_name: Option<Sp<String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SleepDef {
    /// A duration, e.g. `30m`.
    #[serde(rename = "for")]
    pub duration: Option<Sp<String>>,
    /// Expression giving a time (RFC 3339 text or Unix seconds).
    pub until: Option<Sp<String>>,
    /// Template; a new sleep with the same scenario, subject and key replaces the pending one.
    pub key: Option<Sp<String>>,
    /// A local time of day, `HH:MM`: with `until`, that time on the date of `until`; alone,
    /// the next time the clock in `tz` shows it.
    pub at: Option<Sp<String>>,
    /// Time zone of `at` and of an `until` written without one (template giving an IANA
    /// name, e.g. `{{ event.tz }}`; default: the gateway's `timezone`).
    pub tz: Option<Sp<String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelDef {
    /// Scenario whose pending runs to cancel (default: this one).
    pub scenario: Option<Sp<String>>,
    /// Subject template (default: this run's subject).
    pub subject: Option<Sp<String>>,
    /// Only sleeps with this key (template).
    pub key: Option<Sp<String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitDef {
    /// Hook whose events may answer the wait.
    pub webhook: Sp<String>,
    /// Correlation key of the incoming event (template over `event`).
    #[serde(rename = "match")]
    pub match_key: Option<Sp<String>>,
    /// Correlation key of this run (template, default: the run's subject).
    pub key: Option<Sp<String>>,
    /// Extra condition over `event` and `run` for an event to answer the wait.
    pub when: Option<Sp<String>>,
    /// How long to wait, e.g. `24h`; then `branch.timeout`.
    pub timeout: Option<Sp<String>>,
    /// Run variable that receives the answering event (default `reply`).
    pub save: Option<Sp<String>>,
}

/// Ask a contact on a chat channel and wait for a valid reply, re-asking a few times.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AskDef {
    /// `channel:chat` (templated), e.g. `tg:{{ event.chat.id }}`.
    pub to: Sp<String>,
    /// Fluent message id of the question.
    pub text: Option<Sp<String>>,
    /// Inline template of the question instead.
    pub template: Option<Sp<String>>,
    /// Fluent message id sent after an invalid reply (default: the question again).
    pub retry_text: Option<Sp<String>>,
    /// Arguments of the Fluent message `text`, e.g. `{ when = "{{ event.time }}" }`.
    #[serde(default)]
    pub args: BTreeMap<String, Sp<String>>,
    /// The question's language (template, e.g. `"{{ event.lang }}"`).
    pub lang: Option<Sp<String>>,
    /// Accepted answers; a reply matches after trimming, case-folding and dropping a final `.`.
    #[serde(default)]
    pub choices: Vec<String>,
    /// Expression over `reply` (the normalized text) that must be true for other answers.
    pub valid: Option<Sp<String>>,
    /// Regular expression the (trimmed) reply must match, for other answers.
    pub pattern: Option<Sp<String>>,
    /// Buttons for the answers: `"inline"` (the `choices` as callback buttons under the
    /// question; a press answers and the buttons go away), `"keyboard"` (the `choices` as
    /// reply-keyboard buttons), or a list of reply-keyboard labels.
    pub buttons: Option<Sp<serde_json::Value>>,
    /// Re-asks after an invalid reply (default 2); then `branch.exhausted`.
    pub retries: Option<u32>,
    /// How long to wait in all; then `branch.timeout`.
    pub timeout: Option<Sp<String>>,
    /// Run variable that receives `{text, value, attempts, timed_out, exhausted}` (default `answer`).
    pub save: Option<Sp<String>>,
    /// On channels with message templates (WhatsApp): the approved template that asks
    /// instead when the recipient is outside the 24-hour window (its quick-reply buttons
    /// answer with the choices, in order).
    pub window_template: Option<Sp<WindowTemplateDef>>,
    /// E-mail: the question's subject (a template); default as for `send`.
    pub subject: Option<Sp<String>>,
}

/// Post a message with buttons to a chat; the first allowed click wins.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OfferDef {
    /// `channel:chat` (templated), e.g. `tg:-1001234`, `staff:<id>` or `staff:@group` (one
    /// message per member), or a list of these: every recipient gets the buttons.
    pub to: Sp<serde_json::Value>,
    /// The offer's message: a Fluent message id.
    pub text: Option<Sp<String>>,
    /// The offer's message as a template (instead of `text`).
    pub template: Option<Sp<String>>,
    /// Arguments of the Fluent message `text`.
    #[serde(default)]
    pub args: BTreeMap<String, Sp<String>>,
    /// The message's language (template; staff members get their own).
    pub lang: Option<Sp<String>>,
    /// Buttons (default one: `accept`). A `decline` button excludes the clicker and keeps
    /// the offer open.
    #[serde(default)]
    pub buttons: Vec<OfferButtonDef>,
    /// Who may take it: `"any"` (default), `"staff"` (the staff directory), or a list of user ids.
    pub who: Option<Sp<serde_json::Value>>,
    /// Then `branch.timeout`.
    pub timeout: Option<Sp<String>>,
    /// Template the message becomes once taken (sees `claim`); default: the text and the taker.
    pub taken: Option<Sp<String>>,
    /// URL buttons (trigger links, for example) beside the offer's buttons.
    #[serde(default)]
    pub links: Vec<Sp<ButtonDef>>,
    /// E-mail: the offer's subject (a template); default as for `send`.
    pub subject: Option<Sp<String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OfferButtonDef {
    /// The button's id: `branch` names it, `run.claim.button` holds it.
    pub id: Sp<String>,
    /// The button's label (template).
    pub text: Sp<String>,
    /// A press excludes the presser and keeps the offer open.
    pub decline: Option<bool>,
}
