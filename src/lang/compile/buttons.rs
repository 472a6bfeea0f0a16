//! Callback buttons against their channel's limits: id length in the callback data, label
//! length, buttons on one message.

use std::ops::Range;

use super::cx::FileCx;
use crate::lang::model::*;
use crate::lang::raw::Sp;

/// Bytes a choice's callback data adds to its id (`b:`).
pub(super) const CHOICE_DATA_PREFIX: usize = 2;

/// A callback button against its channel's limits: the id travels in the callback data, a
/// literal label is checked against the label limit.
pub(super) fn check_choice(
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
pub(super) fn check_choice_count(
    cx: &mut FileCx,
    gw: &Gateway,
    channel: &str,
    n: usize,
    span: Range<usize>,
) {
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

#[cfg(test)]
mod tests {
    use super::super::testing::errors_on_telegram;

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
}
