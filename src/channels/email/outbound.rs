//! A channel message as an e-mail: an HTML part with a plain-text alternative, choices and
//! link buttons as links, files attached, a `Message-ID` of our own (the message's
//! reference), `In-Reply-To`/`References` when it replies in a thread, a tokened
//! `Reply-To`, and `List-Unsubscribe` on notifications.

use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Attachment, Mailbox, MultiPart, SinglePart};
use lettre::{Address, Message};

use super::config::EmailChannel;
use super::parse::html_to_text;
use crate::channels::{OutMessage, SendError};

/// Longest subject made from a message's first line.
const SUBJECT_MAX: usize = 120;

/// A file fetched for a message.
pub struct File {
    pub name: String,
    pub content_type: String,
    pub bytes: Vec<u8>,
}

/// What the channel adds to a message besides its content.
pub struct Envelope<'a> {
    /// The random part of the `Message-ID` and of the `Reply-To` token.
    pub token: &'a str,
    /// Each choice's link, in the order of the choices.
    pub choice_links: Vec<String>,
    /// The one-click unsubscribe link of a notification.
    pub unsubscribe: Option<String>,
    pub files: Vec<File>,
}

pub fn permanent(message: String) -> SendError {
    SendError {
        message,
        retry: false,
    }
}

/// `ada@example.com` (an address as written in `mail:…`); a name is allowed:
/// `Ada Lovelace <ada@example.com>`.
pub fn mailbox(to: &str) -> Result<Mailbox, SendError> {
    to.trim()
        .parse::<Mailbox>()
        .map_err(|e| permanent(format!("'{to}' is not an e-mail address: {e}")))
}

/// The `Message-ID` (without angle brackets) a message with `token` gets.
pub fn message_id(cfg: &EmailChannel, token: &str) -> String {
    format!("sb.{token}@{}", cfg.from.email.domain())
}

/// `reply+<token>@example.com`: replies to it name their message even when the mail client
/// drops `In-Reply-To` and `References`.
pub fn tokened(base: &Address, token: &str) -> Option<Address> {
    Address::new(format!("{}+{token}", base.user()), base.domain()).ok()
}

/// The subject: the step's, else the text's first line.
pub fn subject(m: &OutMessage) -> String {
    if let Some(s) = m
        .subject
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        return one_line(s);
    }
    let text = html_to_text(&m.text.replace('\n', "<br>"));
    let first = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or_default();
    let mut s: String = first.chars().take(SUBJECT_MAX).collect();
    if first.chars().count() > SUBJECT_MAX {
        s.push('…');
    }
    one_line(&s)
}

/// A header value never spans lines of its own.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The HTML body: the message's text (the operator's markup, data escaped) with its line
/// breaks kept, then its choices, buttons and reply options.
pub fn html_body(m: &OutMessage, env: &Envelope) -> String {
    let esc = |s: &str| crate::channels::Markup::Html.escape(s);
    let mut body = m.text.replace("\r\n", "\n").replace('\n', "<br>\n");
    let buttons: Vec<(String, &str)> = m
        .choices
        .iter()
        .zip(&env.choice_links)
        .map(|(c, url)| (c.text.clone(), url.as_str()))
        .chain(m.links.iter().map(|l| (l.text.clone(), l.url.as_str())))
        .collect();
    if !buttons.is_empty() {
        body.push_str("\n<p>");
        for (label, url) in &buttons {
            body.push_str(&format!(
                "\n<a href=\"{}\" style=\"display:inline-block;margin:4px 8px 4px 0;padding:8px 16px;border:1px solid #1a73e8;border-radius:4px;color:#1a73e8;text-decoration:none\">{}</a>",
                esc(url),
                esc(label)
            ));
        }
        body.push_str("\n</p>");
    }
    if !m.keyboard.is_empty() {
        body.push_str(&format!("\n<p>{}</p>", esc(&m.keyboard.join(" · "))));
    }
    let lang = m.lang.as_deref().map(esc).unwrap_or_else(|| "en".into());
    format!(
        "<!DOCTYPE html>\n<html lang=\"{lang}\"><head><meta charset=\"utf-8\"></head>\n<body style=\"font-family:sans-serif;line-height:1.4\">\n{body}\n</body></html>\n"
    )
}

/// The plain-text alternative: the same text without markup, links written out.
pub fn text_body(m: &OutMessage, env: &Envelope) -> String {
    let mut out = html_to_text(&m.text.replace("\r\n", "\n").replace('\n', "<br>"));
    let lines: Vec<String> = m
        .choices
        .iter()
        .zip(&env.choice_links)
        .map(|(c, url)| format!("{}: {url}", c.text))
        .chain(m.links.iter().map(|l| format!("{}: {}", l.text, l.url)))
        .collect();
    if !lines.is_empty() {
        out.push_str("\n\n");
        out.push_str(&lines.join("\n"));
    }
    if !m.keyboard.is_empty() {
        out.push_str("\n\n");
        out.push_str(&m.keyboard.join(" · "));
    }
    out.push('\n');
    out
}

fn header(name: &str, value: String) -> Result<HeaderValue, SendError> {
    let name = HeaderName::new_from_ascii(name.to_string())
        .map_err(|e| permanent(format!("header {name}: {e}")))?;
    Ok(HeaderValue::new(name, value))
}

/// The whole message.
pub fn compose(cfg: &EmailChannel, m: &OutMessage, env: Envelope) -> Result<Message, SendError> {
    let id = message_id(cfg, env.token);
    let mut b = Message::builder()
        .from(cfg.from.clone())
        .to(mailbox(&m.to)?)
        .subject(subject(m))
        .message_id(Some(format!("<{id}>")))
        .date_now()
        .user_agent(concat!("switchboard/", env!("CARGO_PKG_VERSION")).to_string());
    for cc in &m.cc {
        b = b.cc(mailbox(cc)?);
    }
    for bcc in &m.bcc {
        b = b.bcc(mailbox(bcc)?);
    }
    if let Some(reply) = cfg.reply_to.as_ref().and_then(|a| tokened(a, env.token)) {
        b = b.reply_to(Mailbox::new(cfg.from.name.clone(), reply));
    }
    if let Some(r) = m
        .reply_to
        .as_deref()
        .map(str::trim)
        .filter(|r| !r.is_empty())
    {
        let r = r.trim_start_matches('<').trim_end_matches('>');
        b = b.in_reply_to(format!("<{r}>")).references(format!("<{r}>"));
    }
    if let Some(lang) = &m.lang {
        b = b.raw_header(header("Content-Language", lang.clone())?);
    }
    if let Some(url) = &env.unsubscribe {
        b = b
            .raw_header(header("List-Unsubscribe", format!("<{url}>"))?)
            .raw_header(header(
                "List-Unsubscribe-Post",
                "List-Unsubscribe=One-Click".into(),
            )?)
            // Automatic: out-of-office responders leave it alone (RFC 3834).
            .raw_header(header("Auto-Submitted", "auto-generated".into())?);
    }
    let alternative = MultiPart::alternative()
        .singlepart(SinglePart::plain(text_body(m, &env)))
        .singlepart(SinglePart::html(html_body(m, &env)));
    let body = if env.files.is_empty() {
        alternative
    } else {
        let mut mixed = MultiPart::mixed().multipart(alternative);
        for f in env.files {
            let ct = ContentType::parse(&f.content_type)
                .unwrap_or_else(|_| ContentType::parse("application/octet-stream").expect("valid"));
            mixed = mixed.singlepart(Attachment::new(f.name).body(f.bytes, ct));
        }
        mixed
    };
    b.multipart(body)
        .map_err(|e| permanent(format!("the message cannot be built: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channels::{Choice, LinkButton};

    fn cfg() -> EmailChannel {
        let (problems, gw) = crate::channels::testing::gateway(
            "[channels.mail]\ntype = \"email\"\nfrom = \"Acme <bot@example.com>\"\nreply_to = \"replies@example.com\"\nsmtp = { host = \"h\" }\n",
        );
        assert!(problems.is_empty(), "{problems:?}");
        gw.channels["mail"]
            .settings::<EmailChannel>()
            .unwrap()
            .clone()
    }

    #[test]
    fn a_message_has_both_parts_our_id_a_tokened_reply_to_and_links_for_choices() {
        let m = OutMessage {
            to: "Ada <ada@example.com>".into(),
            lang: Some("en".into()),
            text: "<b>Deal</b> R&amp;D &lt;Ltd&gt;\nTake it?".into(),
            choices: vec![Choice {
                text: "Take".into(),
                data: "o:1:0".into(),
            }],
            links: vec![LinkButton {
                text: "Open".into(),
                url: "https://crm.example.com/d/1?a=1&b=2".into(),
            }],
            reply_to: Some("<prev@example.com>".into()),
            cc: vec!["boss@example.com".into()],
            notification: true,
            ..Default::default()
        };
        let env = Envelope {
            token: "abc123",
            choice_links: vec!["https://sb.example.com/mail/mail/c/T".into()],
            unsubscribe: Some("https://sb.example.com/mail/mail/u/U".into()),
            files: Vec::new(),
        };
        let raw = String::from_utf8(compose(&cfg(), &m, env).unwrap().formatted()).unwrap();
        for needle in [
            "Message-ID: <sb.abc123@example.com>",
            "In-Reply-To: <prev@example.com>",
            "References: <prev@example.com>",
            "Reply-To: Acme <replies+abc123@example.com>",
            "Cc: boss@example.com",
            "Subject: Deal R&D <Ltd>",
            "List-Unsubscribe: <https://sb.example.com/mail/mail/u/U>",
            "List-Unsubscribe-Post: List-Unsubscribe=One-Click",
            "Content-Language: en",
            "multipart/alternative",
            "text/plain",
            "text/html",
        ] {
            assert!(raw.contains(needle), "{needle} missing in\n{raw}");
        }
        let parsed = super::super::parse::parse(raw.as_bytes()).unwrap();
        assert!(
            parsed
                .text
                .contains("Take: https://sb.example.com/mail/mail/c/T"),
            "{}",
            parsed.text
        );
        let html = parsed.html.unwrap();
        assert!(html.contains("R&amp;D &lt;Ltd&gt;"), "{html}");
        assert!(
            html.contains("href=\"https://crm.example.com/d/1?a=1&amp;b=2\""),
            "{html}"
        );
    }

    #[test]
    fn the_subject_is_the_steps_or_the_first_line() {
        let mut m = OutMessage {
            text: "\n  <i>Hello</i> there\nsecond".into(),
            ..Default::default()
        };
        assert_eq!(subject(&m), "Hello there");
        m.subject = Some("Line\r\nInjected: yes".into());
        assert_eq!(subject(&m), "Line Injected: yes");
        m.subject = None;
        m.text = "x".repeat(300);
        assert_eq!(subject(&m).chars().count(), SUBJECT_MAX + 1);
    }

    #[test]
    fn bad_addresses_are_permanent_failures() {
        let e = mailbox("not an address").unwrap_err();
        assert!(!e.retry);
        assert!(e.message.contains("not an e-mail address"), "{}", e.message);
    }
}
