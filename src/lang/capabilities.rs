//! What a channel can do, as far as checking a scenario goes. `channels` says which channel
//! has which; the compiler only holds scenarios to them.

pub use super::expr::Markup;

/// Callback buttons a channel can attach to a message.
#[derive(Debug, Clone, Copy)]
pub struct ChoiceLimits {
    /// Buttons on one message.
    pub max: usize,
    /// Characters in a label, if the platform limits them.
    pub label_max: Option<usize>,
    /// Bytes of callback data the platform carries back with a click.
    pub data_max: usize,
}

/// What a channel can do; `check` holds scenarios to it.
#[derive(Debug, Clone, Copy)]
pub struct Capabilities {
    /// Messages come back from conversations: `ask`, `on = { message = … }`.
    pub replies: bool,
    /// Callback buttons: `offer`, `ask` with `buttons = "inline"`, `send` with button ids.
    pub choices: Option<ChoiceLimits>,
    /// Reply keyboards (`ask` with a list of `buttons`).
    pub keyboard: bool,
    /// Reply-keyboard buttons on one message and characters in a label, if the platform
    /// limits them.
    pub keyboard_max: Option<(usize, usize)>,
    /// URL buttons; without them links are written into the text.
    pub links: bool,
    /// Sent messages can be edited (`edit`, an offer's "taken" text).
    pub edits: bool,
    /// Clicks get an answer of their own (a popup, a toast).
    pub answers: bool,
    /// Files by URL with a message (`send` with `attachments`).
    pub attachments: bool,
    /// Pre-approved message templates (`window_template` on `send` and `ask`,
    /// `approved_template` on `send`).
    pub templates: bool,
    /// The platform shows the sender that a received message was read (WhatsApp's blue
    /// ticks): the message an `ask` takes as its answer is marked read.
    pub read_receipts: bool,
    /// Messages have a subject, copies (`cc`, `bcc`) and a one-click unsubscribe for
    /// notifications (e-mail).
    pub mail: bool,
    /// Rich cards under a message (`embed`: Discord).
    pub embeds: bool,
    pub markup: Markup,
}

impl Capabilities {
    /// A channel that only writes (the log channel).
    pub const WRITE_ONLY: Capabilities = Capabilities {
        replies: false,
        choices: None,
        keyboard: false,
        keyboard_max: None,
        links: true,
        edits: false,
        answers: false,
        attachments: true,
        templates: false,
        read_receipts: false,
        mail: false,
        embeds: false,
        markup: Markup::Plain,
    };
}
