//! The inbound side of e-mail without I/O: a raw RFC 5322 message, as fetched over IMAP, turned
//! into an [`InMail`] — who wrote, what thread it belongs to, what the person typed above the
//! quoted text, whether a machine sent it, and what a delivery status notification reports.

use std::sync::LazyLock;

use mail_parser::{
    Address, HeaderValue, Message, MessageParser, MessagePart, MimeHeaders, PartType,
};
use regex::Regex;

/// One address of a header: `address` is lowercased so that lookups compare equal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    pub address: String,
    pub name: Option<String>,
}

/// What is known of an attached file; the bytes stay in the raw message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachmentMeta {
    pub name: Option<String>,
    /// `type/subtype`, lowercased; `application/octet-stream` when the part names none.
    pub content_type: String,
    /// Decoded size in bytes.
    pub size: usize,
}

/// A received message, normalized.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InMail {
    /// Without angle brackets.
    pub message_id: Option<String>,
    pub from: Option<Mailbox>,
    pub to: Vec<Mailbox>,
    pub cc: Vec<Mailbox>,
    /// `Delivered-To` and `X-Original-To`, lowercased, in header order: where a plus-address
    /// survives when `To` was a list or a Bcc.
    pub delivered_to: Vec<String>,
    pub subject: String,
    /// The whole plain text: the text parts, or the HTML part converted with [`html_to_text`].
    pub text: String,
    /// What the person typed: `text` through [`strip_reply`].
    pub answer: String,
    pub html: Option<String>,
    pub attachments: Vec<AttachmentMeta>,
    /// Ids without brackets.
    pub in_reply_to: Vec<String>,
    /// Ids without brackets, in header order (oldest first).
    pub references: Vec<String>,
    /// The first tag of `Content-Language`.
    pub lang: Option<String>,
    /// Sent by a machine (auto-reply, list, bounce): it must never count as an answer.
    pub automatic: bool,
    /// A delivery status notification, standard or a simple non-standard bounce.
    pub report: Option<Report>,
}

/// A delivery status notification (RFC 3464).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// The `Message-ID` of the returned message (its `message/rfc822` or `text/rfc822-headers`
    /// part); failing that, the DSN's `Original-Envelope-Id`, which is only a message id if the
    /// sender gave one as `ENVID` — a lookup that finds nothing is then harmless.
    pub original_message_id: Option<String>,
    pub recipients: Vec<ReportRecipient>,
}

/// One recipient's fate in a [`Report`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReportRecipient {
    /// `Original-Recipient` when given (the address as we sent it, before any alias was
    /// expanded), else `Final-Recipient`; type prefix and brackets stripped, lowercased.
    pub address: String,
    /// `failed`, `delayed`, `delivered`, `relayed` or `expanded`, lowercased.
    pub action: String,
    /// `5.1.1` and the like; empty when the report gives none.
    pub status: String,
    /// `Diagnostic-Code` without its type prefix (`smtp;`).
    pub diagnostic: Option<String>,
}

impl ReportRecipient {
    /// A permanent failure: the address should not be written to again.
    pub fn is_hard(&self) -> bool {
        self.action == "failed" && self.status.starts_with('5')
    }
}

/// Parses a raw message. `Err` only for input that is not a message at all (empty, or no
/// header field); damaged parts are recovered as far as the MIME parser can. Never panics.
pub fn parse(raw: &[u8]) -> Result<InMail, String> {
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Err("empty input: not an e-mail message".into());
    }
    let msg = MessageParser::default()
        .parse(raw)
        .ok_or("no header fields: not an e-mail message")?;
    if msg.headers().is_empty() {
        return Err("no header fields: not an e-mail message".into());
    }
    let text = body_text(&msg);
    let mut mail = InMail {
        message_id: msg.message_id().map(bare_id).filter(|id| !id.is_empty()),
        from: msg.from().and_then(|a| mailboxes(a).into_iter().next()),
        to: msg.all_to().flat_map(|a| mailboxes(a)).collect(),
        cc: msg.all_cc().flat_map(|a| mailboxes(a)).collect(),
        delivered_to: delivered_to(&msg),
        subject: msg.subject().unwrap_or_default().trim().to_string(),
        answer: strip_reply(&text),
        text,
        html: body_html(&msg),
        attachments: attachments(&msg),
        in_reply_to: ids(msg.in_reply_to()),
        references: ids(msg.references()),
        lang: content_language(&msg),
        automatic: is_automatic(&msg),
        report: None,
    };
    mail.report = report(&msg).or_else(|| simple_bounce(&msg, &mail));
    // A bounce is a machine's message even when its headers forget to say so.
    mail.automatic |= mail.report.is_some();
    without_nul(&mut mail);
    Ok(mail)
}

/// The addresses of a header, groups flattened; entries without an address are dropped.
fn mailboxes(addr: &Address<'_>) -> Vec<Mailbox> {
    addr.iter()
        .filter_map(|a| {
            let address = a.address.as_deref()?.trim().to_lowercase();
            let name = a
                .name
                .as_deref()
                .map(str::trim)
                .filter(|n| !n.is_empty() && !n.eq_ignore_ascii_case(&address))
                .map(str::to_string);
            (!address.is_empty()).then_some(Mailbox { address, name })
        })
        .collect()
}

/// An id as written, without the brackets a lenient parser may have left.
fn bare_id(id: &str) -> String {
    id.trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .trim()
        .to_string()
}

/// The ids of `In-Reply-To` or `References`, in header order.
fn ids(value: &HeaderValue<'_>) -> Vec<String> {
    let list: Vec<&str> = match value {
        HeaderValue::Text(t) => vec![t.as_ref()],
        HeaderValue::TextList(l) => l.iter().map(|t| t.as_ref()).collect(),
        _ => Vec::new(),
    };
    list.into_iter()
        .map(bare_id)
        .filter(|id| !id.is_empty())
        .collect()
}

/// The top-level header fields named `name` (any case), unfolded and trimmed. Read raw because
/// the parser keeps unknown fields unparsed anyway, and raw is the same for every field.
fn raw_headers<'m>(msg: &'m Message<'_>, name: &'m str) -> impl Iterator<Item = String> + 'm {
    msg.headers_raw()
        .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.split_whitespace().collect::<Vec<_>>().join(" "))
}

fn delivered_to(msg: &Message<'_>) -> Vec<String> {
    ["Delivered-To", "X-Original-To"]
        .into_iter()
        .flat_map(|h| raw_headers(msg, h).collect::<Vec<_>>())
        .map(|v| bare_id(&v).to_lowercase())
        .filter(|v| !v.is_empty())
        .collect()
}

fn content_language(msg: &Message<'_>) -> Option<String> {
    let v = raw_headers(msg, "Content-Language").next()?;
    let first = v.split(',').next()?.trim();
    (!first.is_empty()).then(|| first.to_string())
}

/// A machine's message by RFC 3834 (`Auto-Submitted`), by the older `Precedence` and
/// `X-Autoreply` conventions, or by a null return path (bounces and most auto-replies).
fn is_automatic(msg: &Message<'_>) -> bool {
    let auto_submitted = raw_headers(msg, "Auto-Submitted").any(|v| {
        let v = v
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_lowercase();
        !v.is_empty() && v != "no"
    });
    let precedence = raw_headers(msg, "Precedence").any(|v| {
        matches!(
            v.trim().to_lowercase().as_str(),
            "bulk" | "junk" | "auto_reply" | "list"
        )
    });
    let autoreply = raw_headers(msg, "X-Autoreply").any(|v| !v.trim().eq_ignore_ascii_case("no"));
    let null_path = raw_headers(msg, "Return-Path").any(|v| v.replace(' ', "") == "<>");
    auto_submitted || precedence || autoreply || null_path
}

/// The plain text: every text body part in order, HTML-only parts converted.
fn body_text(msg: &Message<'_>) -> String {
    let texts: Vec<String> = msg
        .text_body
        .iter()
        .filter_map(|&id| msg.part(id))
        .filter_map(|p| match &p.body {
            PartType::Text(t) => Some(t.to_string()),
            PartType::Html(h) => Some(html_to_text(h)),
            _ => None,
        })
        .collect();
    texts.join("\n").replace("\r\n", "\n").trim().to_string()
}

/// The first HTML body part, as sent (the parser invents HTML for plain text; that is not kept).
fn body_html(msg: &Message<'_>) -> Option<String> {
    msg.html_body
        .iter()
        .filter_map(|&id| msg.part(id))
        .find_map(|p| match &p.body {
            PartType::Html(h) => Some(h.to_string()),
            _ => None,
        })
}

/// Every part that is not the body: files, inline images, attached messages.
fn attachments(msg: &Message<'_>) -> Vec<AttachmentMeta> {
    msg.attachments
        .iter()
        .filter_map(|&id| msg.part(id))
        .map(|p| AttachmentMeta {
            name: p.attachment_name().map(|n| n.trim().to_string()),
            content_type: part_type(p).unwrap_or_else(|| "application/octet-stream".into()),
            size: part_size(p),
        })
        .collect()
}

/// `type/subtype`, lowercased.
fn part_type(p: &MessagePart<'_>) -> Option<String> {
    let ct = p.content_type()?;
    Some(match ct.subtype() {
        Some(sub) => format!("{}/{}", ct.ctype(), sub).to_lowercase(),
        None => ct.ctype().to_lowercase(),
    })
}

fn part_size(p: &MessagePart<'_>) -> usize {
    match &p.body {
        PartType::Message(m) => m.raw_message.len(),
        _ => p.len(),
    }
}

/// The store refuses NUL; U+FFFD keeps the position visible.
fn without_nul(mail: &mut InMail) {
    let fix = |s: &mut String| {
        if s.contains('\0') {
            *s = s.replace('\0', "\u{FFFD}");
        }
    };
    for s in [&mut mail.subject, &mut mail.text, &mut mail.answer] {
        fix(s);
    }
    for s in mail.message_id.iter_mut().chain(mail.html.iter_mut()) {
        fix(s);
    }
    for s in mail.in_reply_to.iter_mut().chain(&mut mail.references) {
        fix(s);
    }
    for s in mail.delivered_to.iter_mut().chain(mail.lang.iter_mut()) {
        fix(s);
    }
    for m in mail.from.iter_mut().chain(&mut mail.to).chain(&mut mail.cc) {
        fix(&mut m.address);
        m.name.iter_mut().for_each(fix);
    }
    for a in &mut mail.attachments {
        a.name.iter_mut().for_each(fix);
    }
    if let Some(r) = &mut mail.report {
        r.original_message_id.iter_mut().for_each(fix);
        for rr in &mut r.recipients {
            for s in [&mut rr.address, &mut rr.action, &mut rr.status] {
                fix(s);
            }
            rr.diagnostic.iter_mut().for_each(fix);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Delivery status notifications

/// A `multipart/report; report-type=delivery-status` message's report. mail-parser 0.11 keeps a
/// `message/delivery-status` part as binary (it is neither text nor an RFC 822 message), so its
/// fields are read here; the returned message is a nested message or a text part of headers.
fn report(msg: &Message<'_>) -> Option<Report> {
    let status = msg.parts.iter().find_map(|p| {
        let ct = part_type(p)?;
        if ct != "message/delivery-status" && ct != "message/global-delivery-status" {
            return None;
        }
        Some(match &p.body {
            PartType::Binary(b) | PartType::InlineBinary(b) => {
                String::from_utf8_lossy(b).into_owned()
            }
            PartType::Text(t) | PartType::Html(t) => t.to_string(),
            _ => return None,
        })
    })?;
    let (envelope_id, recipients) = delivery_status(&status);
    Some(Report {
        original_message_id: returned_message_id(msg).or(envelope_id),
        recipients,
    })
}

/// The per-message `Original-Envelope-Id` and the per-recipient groups of a delivery-status
/// body: field groups separated by blank lines, the first one about the message.
fn delivery_status(body: &str) -> (Option<String>, Vec<ReportRecipient>) {
    let body = body.replace("\r\n", "\n");
    let mut groups = body.split("\n\n").map(fields).filter(|g| !g.is_empty());
    let envelope_id = groups
        .next()
        .and_then(|g| field(&g, "original-envelope-id").map(bare_id))
        .filter(|id| !id.is_empty());
    let recipients = groups.filter_map(|g| recipient(&g)).collect();
    (envelope_id, recipients)
}

/// `Name: value` fields of a group, continuation lines unfolded, names lowercased.
fn fields(group: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in group.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = out.last_mut() {
                v.push(' ');
                v.push_str(line.trim());
            }
        } else if let Some((n, v)) = line.split_once(':') {
            out.push((n.trim().to_lowercase(), v.trim().to_string()));
        }
    }
    out
}

fn field<'g>(group: &'g [(String, String)], name: &str) -> Option<&'g str> {
    group
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// One recipient group; `None` without an address or an action (not a recipient group).
fn recipient(group: &[(String, String)]) -> Option<ReportRecipient> {
    let address = field(group, "original-recipient")
        .map(typed_address)
        .filter(|a| a.contains('@'))
        .or_else(|| field(group, "final-recipient").map(typed_address))
        .filter(|a| !a.is_empty())?;
    let action = field(group, "action")?.trim().to_lowercase();
    let status = field(group, "status")
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_default()
        .to_string();
    let diagnostic = field(group, "diagnostic-code")
        .map(strip_type)
        .filter(|d| !d.is_empty())
        .map(str::to_string);
    Some(ReportRecipient {
        address,
        action,
        status,
        diagnostic,
    })
}

/// `rfc822; <User@Example.com>` → `user@example.com`.
fn typed_address(v: &str) -> String {
    bare_id(strip_type(v)).to_lowercase()
}

/// Drops an RFC 3464 type prefix (`rfc822;`, `smtp;`, `X-Postfix;`): a leading token ending in
/// `;` that has no space in it.
fn strip_type(v: &str) -> &str {
    match v.split_once(';') {
        Some((t, rest)) if !t.trim().is_empty() && !t.trim().contains(char::is_whitespace) => {
            rest.trim()
        }
        _ => v.trim(),
    }
}

/// The `Message-ID` of the message a report returns.
fn returned_message_id(msg: &Message<'_>) -> Option<String> {
    msg.parts
        .iter()
        .find_map(|p| match &p.body {
            PartType::Message(m) => m.message_id().map(bare_id),
            PartType::Text(t) if part_type(p).is_some_and(|ct| ct.ends_with("rfc822-headers")) => {
                message_id_field(t)
            }
            _ => None,
        })
        .filter(|id| !id.is_empty())
}

/// The first `Message-ID:` field of a block of header text.
fn message_id_field(text: &str) -> Option<String> {
    static ID: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"(?im)^message-id:[ \t]*(?:\r?\n[ \t]+)?<?([^>\s]+)>?").unwrap()
    });
    ID.captures(text).map(|c| c[1].to_string())
}

/// A bounce that is not a `multipart/report`: only when it is unmistakable — from
/// `MAILER-DAEMON` or `postmaster`, with a failure subject some MTA uses, and naming exactly one
/// other address in its text. Anything less stays a normal (automatic) message: guessing the
/// failed recipient of a prose bounce that names several addresses could mark the wrong one.
fn simple_bounce(msg: &Message<'_>, mail: &InMail) -> Option<Report> {
    const SUBJECTS: [&str; 5] = [
        "undelivered mail returned to sender",
        "delivery status notification (failure)",
        "mail delivery failed",
        "undeliverable:",
        "failure notice",
    ];
    static ADDRESS: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+").unwrap()
    });
    static STATUS: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"\b([245]\.\d{1,3}\.\d{1,3})\b").unwrap());
    let from = mail.from.as_ref()?.address.as_str();
    let local = from.split('@').next().unwrap_or_default();
    if local != "mailer-daemon" && local != "postmaster" {
        return None;
    }
    let subject = mail.subject.to_lowercase();
    if !SUBJECTS.iter().any(|s| subject.starts_with(s)) {
        return None;
    }
    let (own, copy) = split_returned_copy(&mail.text);
    let ours: Vec<&str> = mail
        .to
        .iter()
        .map(|m| m.address.as_str())
        .chain(mail.delivered_to.iter().map(String::as_str))
        .chain([from])
        .collect();
    let mut found: Vec<String> = ADDRESS
        .find_iter(own)
        .map(|m| m.as_str().trim_end_matches('.').to_lowercase())
        .filter(|a| !ours.contains(&a.as_str()))
        .collect();
    found.sort();
    found.dedup();
    let [address] = <[String; 1]>::try_from(found).ok()?;
    let status = STATUS
        .captures(own)
        .map(|c| c[1].to_string())
        .unwrap_or_default();
    Some(Report {
        original_message_id: returned_message_id(msg).or_else(|| message_id_field(copy)),
        recipients: vec![ReportRecipient {
            address,
            action: "failed".into(),
            status,
            diagnostic: None,
        }],
    })
}

/// A prose bounce's own text and the copy of the returned message below it, which starts at a
/// rule announcing it ("------ This is a copy of the message…") or at its first header field.
fn split_returned_copy(text: &str) -> (&str, &str) {
    static COPY: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"(?im)^(?:-{3,}.*(?:copy|original|returned|below this line).*|(?:received|return-path|message-id|from|to|subject|date):.*)$").unwrap()
    });
    match COPY.find(text) {
        Some(m) => (&text[..m.start()], &text[m.start()..]),
        None => (text, ""),
    }
}

// ---------------------------------------------------------------------------------------------
// Reply stripping

/// The new part of a reply: quoted lines (`>`), the attribution line above the quote
/// ("On …, X wrote:", also wrapped over two lines), Outlook's original-message block, a
/// signature after `-- ` and mobile footers removed, and the rest trimmed.
///
/// An attribution with the person's text above it (top-posting) ends the reply, quoted lines or
/// not; one with nothing above (bottom-posting) is dropped with its quote and reading goes on,
/// so that an answer typed below the quote is found. A forwarded message ("Begin forwarded
/// message:") is not a quote and is kept.
///
/// When nothing is left — the person only quoted — the whole text is returned trimmed: the
/// engine then sees the quote, which matches no answer, rather than an empty reply that
/// looks like a deliberate blank.
pub fn strip_reply(text: &str) -> String {
    let text = text.replace("\r\n", "\n");
    let lines: Vec<&str> = text.lines().collect();
    let forward = lines
        .iter()
        .position(|l| is_forward_marker(l))
        .unwrap_or(lines.len());
    let end = (0..lines.len())
        .find(|&i| ends_reply(&lines, i, i > forward))
        .unwrap_or(lines.len());
    let mut kept: Vec<&str> = Vec::new();
    let mut i = 0;
    while i < end {
        if let Some(len) = attribution_at(&lines[..end], i) {
            if has_text(&kept) {
                break;
            }
            i += len;
            continue;
        }
        if !is_quoted(lines[i]) {
            kept.push(lines[i].trim_end());
        }
        i += 1;
    }
    let out = squeeze_blank_lines(&kept);
    if out.is_empty() {
        text.trim().to_string()
    } else {
        out
    }
}

fn has_text(lines: &[&str]) -> bool {
    lines.iter().any(|l| !l.trim().is_empty())
}

fn is_quoted(line: &str) -> bool {
    line.trim_start().starts_with('>')
}

/// Whether line `i` starts what follows the reply: a signature, an Outlook original message,
/// a mobile footer. In a forwarded message (`forwarded`: below its marker) a header block is
/// the forwarded message's own and is kept.
fn ends_reply(lines: &[&str], i: usize, forwarded: bool) -> bool {
    let line = lines[i];
    line == "-- "
        || line.trim_end() == "--"
        || is_original_message(line)
        || is_mobile_footer(line)
        || !forwarded && (is_rule(line) || is_header_block(lines, i))
}

/// Apple Mail's "Begin forwarded message:" and Gmail's "---------- Forwarded message ---------".
fn is_forward_marker(line: &str) -> bool {
    let l = line.trim().to_lowercase();
    l == "begin forwarded message:" || l.starts_with("-----") && l.contains("forwarded message")
}

/// Outlook's "-----Original Message-----" and its translations.
fn is_original_message(line: &str) -> bool {
    let l = line.trim().trim_matches('-').trim().to_lowercase();
    line.trim().starts_with("-----")
        && [
            "original message",
            "ursprüngliche nachricht",
            "message d'origine",
            "исходное сообщение",
            "oryginalna wiadomość",
            "mensaje original",
        ]
        .contains(&l.as_str())
}

/// Outlook's separator above the quoted headers: a line of underscores.
fn is_rule(line: &str) -> bool {
    let l = line.trim();
    l.len() >= 20 && l.chars().all(|c| c == '_')
}

/// Outlook's quoted header block: `From:` followed within a few lines by `Sent:`/`Date:` and
/// `To:`/`Subject:` (bold markers from converted HTML ignored), in the languages we meet.
fn is_header_block(lines: &[&str], i: usize) -> bool {
    const FROM: [&str; 6] = ["from:", "от:", "od:", "von:", "de:", "de :"];
    const SENT: [&str; 8] = [
        "sent:",
        "date:",
        "отправлено:",
        "дата:",
        "wysłano:",
        "data:",
        "gesendet:",
        "envoyé :",
    ];
    const TO: [&str; 8] = [
        "to:",
        "subject:",
        "кому:",
        "тема:",
        "do:",
        "temat:",
        "an:",
        "betreff:",
    ];
    let starts = |line: &str, keys: &[&str]| {
        let l = line.trim().trim_start_matches('*').to_lowercase();
        keys.iter().any(|k| l.starts_with(k))
    };
    if !starts(lines[i], &FROM) {
        return false;
    }
    let next = &lines[i + 1..lines.len().min(i + 6)];
    next.iter().any(|l| starts(l, &SENT)) && next.iter().any(|l| starts(l, &TO))
}

fn is_mobile_footer(line: &str) -> bool {
    const FOOTERS: [&str; 9] = [
        "sent from my ",
        "sent from outlook",
        "sent from mail for windows",
        "get outlook for ",
        "отправлено с ",
        "отправлено из ",
        "wysłane z ",
        "von meinem ",
        "envoyé de mon ",
    ];
    let l = line.trim().to_lowercase();
    l.len() < 80 && FOOTERS.iter().any(|f| l.starts_with(f))
}

/// The number of lines of an attribution starting at `i` (1, or 2 when wrapped), if any.
///
/// A line ending in "wrote:" or a translation is one; so is a line ending in `>:` with an
/// address (Russian Gmail writes "…, Name <a@b>:") when a quote follows. Wrapped: a two-line
/// paragraph whose first line has a digit (the date) and whose second ends so.
fn attribution_at(lines: &[&str], i: usize) -> Option<usize> {
    let quote_follows = |j: usize| {
        lines[j..]
            .iter()
            .find(|l| !l.trim().is_empty())
            .is_some_and(|l| is_quoted(l))
    };
    let ends = |j: usize| {
        lines
            .get(j)
            .is_some_and(|l| attribution_end(l, || quote_follows(j + 1)))
    };
    if is_quoted(lines[i]) || lines[i].trim().is_empty() {
        return None;
    }
    if ends(i) {
        return Some(1);
    }
    let paragraph_start = i == 0 || lines[i - 1].trim().is_empty();
    let wrapped = paragraph_start
        && lines[i].chars().any(|c| c.is_ascii_digit())
        && lines
            .get(i + 1)
            .is_some_and(|l| !is_quoted(l) && !l.trim().is_empty())
        && ends(i + 1)
        && lines
            .get(i + 2)
            .is_none_or(|l| l.trim().is_empty() || is_quoted(l));
    wrapped.then_some(2)
}

fn attribution_end(line: &str, quote_follows: impl Fn() -> bool) -> bool {
    const WROTE: [&str; 11] = [
        "wrote:",
        "пишет:",
        "написал:",
        "написала:",
        "написал(а):",
        "napisał(a):",
        "napisał:",
        "napisała:",
        "schrieb:",
        "a écrit :",
        "escribió:",
    ];
    /// Where the verb is not last: "Am 30.11.26 um 18:00 schrieb Bot:", "Le …, Bot a écrit :".
    const STEMS: [&str; 7] = [
        "wrote",
        "schrieb",
        "écrit",
        "пишет",
        "написал",
        "napisał",
        "escribió",
    ];
    let l = line.trim().to_lowercase();
    WROTE.iter().any(|w| l.ends_with(w))
        || (l.ends_with(':')
            && (l.contains('@') || STEMS.iter().any(|s| l.contains(s)))
            && quote_follows())
}

/// Lines joined, runs of blank lines made one, trimmed.
fn squeeze_blank_lines(lines: &[&str]) -> String {
    let mut out = String::new();
    let mut blank = false;
    for line in lines {
        if line.trim().is_empty() {
            blank = true;
            continue;
        }
        if !out.is_empty() {
            out.push_str(if blank { "\n\n" } else { "\n" });
        }
        blank = false;
        out.push_str(line);
    }
    out.trim().to_string()
}

// ---------------------------------------------------------------------------------------------
// Addresses

/// The token of a plus-address: `plus_token("reply+abc123@example.com", "reply")` is
/// `Some("abc123")`. `local` is the local part only, compared case-insensitively; the domain is
/// the caller's to check (it knows which domains are its own), which keeps this usable for
/// several domains and for the `Delivered-To` of a catch-all. `None` without a token.
pub fn plus_token(address: &str, local: &str) -> Option<String> {
    let address = bare_id(address);
    let (local_part, _domain) = address.rsplit_once('@')?;
    let (base, token) = local_part.split_once('+')?;
    (base.eq_ignore_ascii_case(local) && !token.is_empty()).then(|| token.to_string())
}

// ---------------------------------------------------------------------------------------------
// HTML to text

/// HTML as plain text, for the text alternative of an outgoing HTML message and for reading an
/// HTML-only reply: `<br>` and block ends become line breaks, list items get `- `, a blockquote
/// gets `> ` (so that [`strip_reply`] sees it as a quote), `<a href="u">t</a>` becomes `t (u)`
/// unless `t` is `u`, entities are decoded, and no tag is left. mail-parser's own converter is
/// public but keeps no link targets and breaks lines only at `<br>` and `</p>`, hence this one.
pub fn html_to_text(html: &str) -> String {
    let mut out = TextOut::default();
    let mut rest = html;
    let mut skip_until: Option<&'static str> = None;
    while !rest.is_empty() {
        let Some(lt) = rest.find('<') else {
            if skip_until.is_none() {
                out.text(rest);
            }
            break;
        };
        if skip_until.is_none() {
            out.text(&rest[..lt]);
        }
        rest = &rest[lt..];
        if let Some(after) = rest.strip_prefix("<!--") {
            rest = after.find("-->").map_or("", |e| &after[e + 3..]);
            continue;
        }
        let Some((tag, after)) = Tag::read(rest) else {
            if looks_like_tag(rest) {
                // A tag cut off by the end of the text.
                break;
            }
            // A lone `<` is text.
            if skip_until.is_none() {
                out.text("<");
            }
            rest = &rest[1..];
            continue;
        };
        rest = after;
        if let Some(until) = skip_until {
            if tag.closing && tag.name == until {
                skip_until = None;
            }
            continue;
        }
        if !tag.closing && !tag.self_closing {
            skip_until = ["head", "style", "script", "title", "template"]
                .into_iter()
                .find(|s| *s == tag.name);
            if skip_until.is_some() {
                continue;
            }
        }
        out.tag(&tag);
    }
    out.finish()
}

/// A tag as read: lowercased name, whether it closes, and its `href`/`alt`.
struct Tag {
    name: String,
    closing: bool,
    self_closing: bool,
    href: Option<String>,
    alt: Option<String>,
}

impl Tag {
    /// The tag at the start of `s` (which starts with `<`) and what follows it; `None` when
    /// it is no tag (`a < b`).
    fn read(s: &str) -> Option<(Tag, &str)> {
        let body = &s[1..];
        let closing = body.starts_with('/');
        let body = body.trim_start_matches('/');
        if !body.starts_with(|c: char| c.is_ascii_alphabetic() || c == '!' || c == '?') {
            return None;
        }
        let end = tag_end(body)?;
        let inner = &body[..end];
        let name_len = inner
            .find(|c: char| c.is_whitespace() || c == '/' || c == '>')
            .unwrap_or(inner.len());
        let tag = Tag {
            name: inner[..name_len].to_ascii_lowercase(),
            closing,
            self_closing: inner.trim_end().ends_with('/'),
            href: attribute(&inner[name_len..], "href"),
            alt: attribute(&inner[name_len..], "alt"),
        };
        Some((tag, &body[end + 1..]))
    }
}

/// `<` followed by what starts a tag name, a closing slash or a declaration.
fn looks_like_tag(s: &str) -> bool {
    s[1..].starts_with(|c: char| c.is_ascii_alphabetic() || c == '/' || c == '!' || c == '?')
}

/// The position of the `>` that ends a tag, skipping quoted attribute values.
fn tag_end(s: &str) -> Option<usize> {
    let mut quote: Option<char> = None;
    for (i, c) in s.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '>') => return Some(i),
            _ => {}
        }
    }
    None
}

/// An attribute's value, entities decoded.
fn attribute(attrs: &str, name: &str) -> Option<String> {
    static ATTR: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r#"(?i)([a-z_:][-a-z0-9_:.]*)\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'>]+))"#)
            .unwrap()
    });
    ATTR.captures_iter(attrs).find_map(|c| {
        c[1].eq_ignore_ascii_case(name).then(|| {
            let v = c
                .get(2)
                .or(c.get(3))
                .or(c.get(4))
                .map_or("", |m| m.as_str());
            decode_entities(v.trim())
        })
    })
}

/// `&amp;`, `&#233;`, `&#xE9;` and every named entity mail-parser knows; an unknown one stays.
fn decode_entities(s: &str) -> String {
    static ENTITY: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"&(?:#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});").unwrap()
    });
    let mut out = String::with_capacity(s.len());
    let mut last = 0;
    for m in ENTITY.find_iter(s) {
        out.push_str(&s[last..m.start()]);
        mail_parser::decoders::html::add_html_token(&mut out, m.as_str().as_bytes(), false);
        last = m.end();
    }
    out.push_str(&s[last..]);
    out.replace('\u{a0}', " ")
}

const BLOCKS: [&str; 27] = [
    "p",
    "div",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "ul",
    "ol",
    "li",
    "tr",
    "table",
    "pre",
    "hr",
    "section",
    "article",
    "header",
    "footer",
    "address",
    "dl",
    "dt",
    "dd",
    "center",
    "form",
    "fieldset",
    "blockquote",
];

/// The text being written: whitespace collapsed, line breaks not doubled, quote depth and open
/// links tracked.
#[derive(Default)]
struct TextOut {
    buf: String,
    /// A space is owed before the next word.
    space: bool,
    quote: usize,
    pre: usize,
    /// Open links: their target and where their text starts in `buf`.
    links: Vec<(Option<String>, usize)>,
}

impl TextOut {
    fn at_line_start(&self) -> bool {
        self.buf.is_empty() || self.buf.ends_with('\n')
    }

    fn start_line(&mut self) {
        if self.at_line_start() {
            self.buf.push_str(&"> ".repeat(self.quote));
        }
    }

    fn text(&mut self, raw: &str) {
        let text = decode_entities(raw);
        if self.pre > 0 {
            for (n, line) in text.split('\n').enumerate() {
                if n > 0 {
                    self.buf.push('\n');
                }
                self.start_line();
                self.buf.push_str(line);
            }
            return;
        }
        for (n, word) in text.split(char::is_whitespace).enumerate() {
            if n > 0 {
                self.space = true;
            }
            if word.is_empty() {
                continue;
            }
            if self.space && !self.at_line_start() && !self.buf.ends_with(' ') {
                self.buf.push(' ');
            }
            self.space = false;
            self.start_line();
            self.buf.push_str(word);
        }
    }

    fn newline(&mut self) {
        self.start_line();
        self.buf.push('\n');
        self.space = false;
    }

    /// A line break unless one was just made.
    fn block_break(&mut self) {
        if !self.at_line_start() {
            self.newline();
        }
    }

    fn tag(&mut self, tag: &Tag) {
        let name = tag.name.as_str();
        match name {
            "br" => self.newline(),
            "a" if tag.closing => self.close_link(),
            "a" => {
                let start = self.buf.len();
                self.links.push((tag.href.clone(), start));
            }
            "img" => {
                if let Some(alt) = tag.alt.as_deref().filter(|a| !a.is_empty()) {
                    self.text(alt);
                }
            }
            "td" | "th" if tag.closing => self.space = true,
            _ if BLOCKS.contains(&name) => {
                self.block_break();
                match (name, tag.closing) {
                    ("blockquote", false) => self.quote += 1,
                    ("blockquote", true) => self.quote = self.quote.saturating_sub(1),
                    ("pre", false) => self.pre += 1,
                    ("pre", true) => self.pre = self.pre.saturating_sub(1),
                    ("li", false) => {
                        self.start_line();
                        self.buf.push_str("- ");
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }

    /// `text (url)` unless the text is the url (or the address of a `mailto:`).
    fn close_link(&mut self) {
        let Some((href, start)) = self.links.pop() else {
            return;
        };
        let Some(href) = href.filter(|h| !h.is_empty() && !h.starts_with('#')) else {
            return;
        };
        if href.to_ascii_lowercase().starts_with("javascript:") {
            return;
        }
        let shown = self.buf.get(start..).unwrap_or_default().trim();
        let bare = href.strip_prefix("mailto:").unwrap_or(&href);
        if shown == href || shown == bare {
            return;
        }
        if shown.is_empty() {
            self.text(&href);
        } else {
            self.buf.push_str(&format!(" ({href})"));
        }
    }

    /// Lines trimmed at their end, at most one blank line in a row, no blank start or end.
    fn finish(self) -> String {
        let mut out = String::new();
        let mut blanks = 0;
        for line in self.buf.lines().map(str::trim_end) {
            if line.is_empty() {
                blanks += 1;
                continue;
            }
            if !out.is_empty() {
                out.push_str(if blanks > 0 { "\n\n" } else { "\n" });
            }
            blanks = 0;
            out.push_str(line);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A literal with `\n` line ends as the wire's `\r\n`.
    fn crlf(s: &str) -> Vec<u8> {
        s.replace('\n', "\r\n").into_bytes()
    }

    const GMAIL: &str = r#"Delivered-To: reply+r42k9@bot.example.com
Received: by 2002:a05:6402:1d4e with SMTP id dd14csp123;
        Tue, 1 Dec 2026 02:04:11 -0800 (PST)
Return-Path: <anna.berg@gmail.com>
MIME-Version: 1.0
References: <run-42.1@bot.example.com>
In-Reply-To: <run-42.1@bot.example.com>
From: Anna Berg <Anna.Berg@gmail.com>
Date: Tue, 1 Dec 2026 11:04:00 +0100
Message-ID: <CAHk9x=abc123@mail.gmail.com>
Subject: Re: Which slot suits you?
To: Switchboard <reply+r42k9@bot.example.com>
Content-Type: multipart/alternative; boundary="000000000000a1b2c3"

--000000000000a1b2c3
Content-Type: text/plain; charset="UTF-8"
Content-Transfer-Encoding: quoted-printable

Yes, 1 please =E2=80=94 Tuesday works.

On Mon, Nov 30, 2026 at 6:00=E2=80=AFPM Switchboard <reply+r42k9@bot.exampl=
e.com>
wrote:

> Which slot suits you?
> 1. Tuesday
> 2. Wednesday
>

--000000000000a1b2c3
Content-Type: text/html; charset="UTF-8"
Content-Transfer-Encoding: quoted-printable

<div dir=3D"ltr">Yes, 1 please =E2=80=94 Tuesday works.</div><br><div class=
=3D"gmail_quote"><div dir=3D"ltr" class=3D"gmail_attr">On Mon, Nov 30, 2026=
 at 6:00 PM Switchboard &lt;<a href=3D"mailto:reply+r42k9@bot.example.com">=
reply+r42k9@bot.example.com</a>&gt; wrote:<br></div><blockquote class=3D"gm=
ail_quote">Which slot suits you?<br>1. Tuesday<br>2. Wednesday</blockquote>=
</div>

--000000000000a1b2c3--
"#;

    #[test]
    fn a_gmail_reply_keeps_only_what_was_typed() {
        let m = parse(&crlf(GMAIL)).unwrap();
        assert_eq!(
            m.message_id.as_deref(),
            Some("CAHk9x=abc123@mail.gmail.com")
        );
        assert_eq!(
            m.from,
            Some(Mailbox {
                address: "anna.berg@gmail.com".into(),
                name: Some("Anna Berg".into())
            })
        );
        assert_eq!(m.to[0].address, "reply+r42k9@bot.example.com");
        assert_eq!(m.delivered_to, ["reply+r42k9@bot.example.com"]);
        assert_eq!(m.subject, "Re: Which slot suits you?");
        assert_eq!(m.in_reply_to, ["run-42.1@bot.example.com"]);
        assert_eq!(m.references, ["run-42.1@bot.example.com"]);
        assert_eq!(m.answer, "Yes, 1 please — Tuesday works.");
        assert!(m.text.contains("> 2. Wednesday"));
        assert!(m.html.as_deref().unwrap().contains("gmail_quote"));
        assert!(m.attachments.is_empty());
        assert!(!m.automatic);
        assert_eq!(m.report, None);
        assert_eq!(
            plus_token(&m.to[0].address, "reply").as_deref(),
            Some("r42k9")
        );
        assert_eq!(
            plus_token(&m.delivered_to[0], "REPLY").as_deref(),
            Some("r42k9")
        );
    }

    #[test]
    fn an_html_only_reply_is_read_through_its_blockquote() {
        let raw = "From: a@example.com\nTo: reply+t1@bot.example.com\nSubject: Re: x\nContent-Type: text/html; charset=utf-8\n\n<div>2</div><div><br></div><div class=\"gmail_quote\">On Mon, Nov 30, 2026 at 6:00 PM Bot &lt;bot@example.com&gt; wrote:<br><blockquote>Pick 1 or 2</blockquote></div>";
        let m = parse(raw.as_bytes()).unwrap();
        assert_eq!(
            m.text,
            "2\n\nOn Mon, Nov 30, 2026 at 6:00 PM Bot <bot@example.com> wrote:\n> Pick 1 or 2"
        );
        assert_eq!(m.answer, "2");
    }

    const OUTLOOK: &str = r#"Received: from AM0PR10MB1234.EURPRD10.PROD.OUTLOOK.COM
From: "Kowalski, Jan" <Jan.Kowalski@contoso.com>
To: "reply+q7@bot.example.com" <reply+q7@bot.example.com>
Subject: RE: Approve invoice 2026-118?
Thread-Topic: Approve invoice 2026-118?
Date: Tue, 1 Dec 2026 09:12:45 +0000
Message-ID: <AM0PR10MB1234ABCD@AM0PR10MB1234.EURPRD10.PROD.OUTLOOK.COM>
References: <run-7.3@bot.example.com>
Content-Language: en-US, pl-PL
Content-Type: text/plain; charset="us-ascii"
Content-Transfer-Encoding: quoted-printable
MIME-Version: 1.0

Approved.

Jan Kowalski
Finance

________________________________
From: Switchboard <reply+q7@bot.example.com>
Sent: Monday, November 30, 2026 6:00 PM
To: Kowalski, Jan <Jan.Kowalski@contoso.com>
Subject: Approve invoice 2026-118?

Invoice 2026-118 for 1 200 EUR is waiting. Reply "approve" or "reject".
"#;

    #[test]
    fn an_outlook_reply_loses_the_quoted_header_block() {
        let m = parse(&crlf(OUTLOOK)).unwrap();
        assert!(m.in_reply_to.is_empty());
        assert_eq!(m.references, ["run-7.3@bot.example.com"]);
        assert_eq!(m.lang.as_deref(), Some("en-US"));
        assert_eq!(m.answer, "Approved.\n\nJan Kowalski\nFinance");
        assert_eq!(m.from.unwrap().name.as_deref(), Some("Kowalski, Jan"));
    }

    #[test]
    fn an_outlook_html_only_reply_loses_the_quoted_header_block() {
        let raw = "From: jan@contoso.com\nTo: reply+q7@bot.example.com\nSubject: RE: x\nContent-Type: text/html; charset=\"us-ascii\"\n\n<html><head><style>p.MsoNormal{margin:0}</style></head><body lang=EN-US><div class=WordSection1><p class=MsoNormal>reject<o:p></o:p></p><p class=MsoNormal><o:p>&nbsp;</o:p></p><div style='border:none;border-top:solid #E1E1E1 1.0pt'><p class=MsoNormal><b>From:</b> Switchboard &lt;reply+q7@bot.example.com&gt;<br><b>Sent:</b> Monday, November 30, 2026 6:00 PM<br><b>To:</b> Jan<br><b>Subject:</b> x</p></div><p class=MsoNormal>Approve or reject?</p></div></body></html>";
        let m = parse(raw.as_bytes()).unwrap();
        assert_eq!(m.answer, "reject");
        assert!(m.text.contains("Subject: x\nApprove or reject?"));
    }

    #[test]
    fn outlook_original_message_marker_ends_the_reply() {
        let text = "reject\r\n\r\n-----Original Message-----\r\nFrom: Bot\r\nSent: Monday\r\nTo: me\r\nSubject: x\r\n\r\nApprove?";
        assert_eq!(strip_reply(text), "reject");
    }

    const THUNDERBIRD: &str = r#"Message-ID: <5e1c2d3a-77f2-4a5b-9d1e-0c9f1a2b3c4d@posteo.de>
Date: Tue, 1 Dec 2026 10:30:12 +0100
MIME-Version: 1.0
User-Agent: Mozilla Thunderbird
Subject: Re: Your order #5531
To: Shop Bot <bot@example.com>
Cc: Team <TEAM@Example.com>, orders@example.com
References: <run-1.1@example.com> <run-1.2@example.com>
In-Reply-To: <run-1.2@example.com>
From: Max Mustermann <max@posteo.de>
Content-Type: text/plain; charset=UTF-8; format=flowed
Content-Transfer-Encoding: 8bit

Am 30.11.26 um 18:00 schrieb Shop Bot:
> Your order #5531 is ready. Deliver or pick up?
> 1 - deliver
> 2 - pick up

2, I will come on Friday.

>
> Reply with the number.

Thanks!

-- 
Max Mustermann
Berlin
"#;

    #[test]
    fn a_bottom_posted_thunderbird_reply_keeps_the_text_under_the_quote() {
        let m = parse(THUNDERBIRD.as_bytes()).unwrap();
        assert_eq!(m.answer, "2, I will come on Friday.\n\nThanks!");
        assert_eq!(m.references, ["run-1.1@example.com", "run-1.2@example.com"]);
        assert_eq!(m.cc.len(), 2);
        assert_eq!(m.cc[0].address, "team@example.com");
        assert_eq!(m.cc[1].name, None);
    }

    #[test]
    fn top_posting_ends_at_the_attribution_and_signatures_go() {
        let text = "1\n\n--\nAnna\n\nOn Mon, Nov 30, 2026, Bot wrote:\n> Pick one";
        assert_eq!(strip_reply(text), "1");
        let text = "Yes, 1 please\n\nSent from my iPhone\n\n> On 30 Nov 2026, at 18:00, Bot <b@x.io> wrote:\n> Pick";
        assert_eq!(strip_reply(text), "Yes, 1 please");
        let text = "2\nOn Mon, Nov 30, 2026 at 6:00 PM Bot wrote:\nPick one (quoted without marks)";
        assert_eq!(strip_reply(text), "2");
    }

    #[test]
    fn attributions_in_other_languages() {
        let ru = "Да, 2\n\n30.11.2026 18:00, Бот пишет:\n> Выберите вариант";
        assert_eq!(strip_reply(ru), "Да, 2");
        let ru_gmail = "1\n\nпн, 30 нояб. 2026 г. в 18:00, Бот <bot@example.com>:\n> Выберите";
        assert_eq!(strip_reply(ru_gmail), "1");
        let pl = "Tak\n\nW dniu 30.11.2026 o 18:00, Bot\n<bot@example.com> napisał(a):\n> Wybierz";
        assert_eq!(strip_reply(pl), "Tak");
    }

    #[test]
    fn a_forward_is_not_a_quote_and_only_quoting_keeps_everything() {
        let fwd = "See below.\n\nBegin forwarded message:\n\nFrom: Bot <bot@example.com>\nSubject: Hi\nDate: 30 Nov 2026\nTo: me@example.com\n\nHello";
        assert_eq!(strip_reply(fwd), fwd);
        let gmail_fwd = "FYI\n\n---------- Forwarded message ---------\nFrom: Bot <bot@example.com>\nDate: Mon, Nov 30, 2026\nSubject: Hi\nTo: <me@example.com>\n\nHello";
        assert_eq!(strip_reply(gmail_fwd), gmail_fwd);
        assert_eq!(strip_reply("> just a quote\n"), "> just a quote");
        assert_eq!(strip_reply(""), "");
        assert_eq!(strip_reply("-- \n"), "--");
    }

    #[test]
    fn a_russian_reply_in_windows_1251_with_an_encoded_subject() {
        let mut raw = crlf("From: =?windows-1251?B?yOLg7SDP5fLw7uI=?= <ivan@mail.ru>\nTo: bot@example.ru\nSubject: =?windows-1251?B?UmU6INDg8e/o8eDt6OU=?=\nMessage-ID: <1234567890.20261201@mail.ru>\nIn-Reply-To: <run-9.1@example.ru>\nContent-Language: ru\nContent-Type: text/plain; charset=windows-1251\nContent-Transfer-Encoding: 8bit\n\n");
        // "Да, подходит." and an attribution, in windows-1251.
        raw.extend_from_slice(b"\xc4\xe0, \xef\xee\xe4\xf5\xee\xe4\xe8\xf2.\r\n\r\n30.11.2026 18:00, \xc1\xee\xf2 \xef\xe8\xf8\xe5\xf2:\r\n> \xc2\xfb\xe1\xe5\xf0\xe8\xf2\xe5\r\n");
        let m = parse(&raw).unwrap();
        assert_eq!(m.subject, "Re: Расписание");
        assert_eq!(
            m.from.as_ref().unwrap().name.as_deref(),
            Some("Иван Петров")
        );
        assert_eq!(m.answer, "Да, подходит.");
        assert_eq!(m.lang.as_deref(), Some("ru"));
        assert_eq!(m.in_reply_to, ["run-9.1@example.ru"]);
    }

    #[test]
    fn an_out_of_office_reply_is_automatic() {
        let raw = "Return-Path: <jan@contoso.com>\nFrom: Jan <jan@contoso.com>\nTo: reply+q7@bot.example.com\nSubject: Automatic reply: Approve invoice 2026-118?\nAuto-Submitted: auto-replied\nX-Auto-Response-Suppress: All\nIn-Reply-To: <run-7.3@bot.example.com>\nContent-Type: text/plain\n\nI am out of office until 7 December. 1 urgent matters: call +48 123.\n";
        let m = parse(raw.as_bytes()).unwrap();
        assert!(m.automatic);
        assert_eq!(m.report, None);
        for extra in ["Precedence: bulk", "X-Autoreply: yes", "Return-Path: <>"] {
            let raw = format!("{extra}\nFrom: a@b.c\nSubject: x\n\nhi\n");
            assert!(parse(raw.as_bytes()).unwrap().automatic, "{extra}");
        }
        let raw = "Auto-Submitted: no\nPrecedence: first-class\nFrom: a@b.c\nSubject: x\n\nhi\n";
        assert!(!parse(raw.as_bytes()).unwrap().automatic);
    }

    const POSTFIX_DSN: &str = r#"Return-Path: <>
Delivered-To: bounces@bot.example.com
Date: Tue,  1 Dec 2026 10:00:03 +0000 (UTC)
From: MAILER-DAEMON@mx.bot.example.com (Mail Delivery System)
Subject: Undelivered Mail Returned to Sender
To: bounces@bot.example.com
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
	boundary="8A3C2120E1.1764583203/mx.bot.example.com"
Message-Id: <20261201100003.5F1A9120E2@mx.bot.example.com>

This is a MIME-encapsulated message.

--8A3C2120E1.1764583203/mx.bot.example.com
Content-Description: Notification
Content-Type: text/plain; charset=us-ascii

This is the mail system at host mx.bot.example.com.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients.

<nobody@example.org>: host mx.example.org[203.0.113.5] said: 550 5.1.1
    <nobody@example.org>: Recipient address rejected: User unknown (in reply to
    RCPT TO command)

--8A3C2120E1.1764583203/mx.bot.example.com
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.bot.example.com
X-Postfix-Queue-ID: 8A3C2120E1
X-Postfix-Sender: rfc822; bounces@bot.example.com
Arrival-Date: Tue,  1 Dec 2026 10:00:01 +0000 (UTC)

Final-Recipient: rfc822; nobody@example.org
Original-Recipient: rfc822;Nobody@Example.org
Action: failed
Status: 5.1.1
Remote-MTA: dns; mx.example.org
Diagnostic-Code: smtp; 550 5.1.1 <nobody@example.org>: Recipient address
    rejected: User unknown

Final-Recipient: rfc822; slow@example.net
Action: delayed
Status: 4.4.1
Diagnostic-Code: X-Postfix; connect to mx.example.net[198.51.100.7]:25:
    Connection timed out

--8A3C2120E1.1764583203/mx.bot.example.com
Content-Description: Undelivered Message Headers
Content-Type: text/rfc822-headers

Return-Path: <bounces@bot.example.com>
From: Switchboard <bot@bot.example.com>
To: nobody@example.org
Subject: Which slot suits you?
Message-ID: <run-42.1@bot.example.com>
Date: Tue, 1 Dec 2026 10:00:00 +0000

--8A3C2120E1.1764583203/mx.bot.example.com--
"#;

    #[test]
    fn a_postfix_dsn_reports_a_hard_failure_and_a_delay() {
        let m = parse(&crlf(POSTFIX_DSN)).unwrap();
        assert!(m.automatic);
        let r = m.report.expect("a report");
        assert_eq!(
            r.original_message_id.as_deref(),
            Some("run-42.1@bot.example.com")
        );
        assert_eq!(
            r.recipients,
            [
                ReportRecipient {
                    address: "nobody@example.org".into(),
                    action: "failed".into(),
                    status: "5.1.1".into(),
                    diagnostic: Some(
                        "550 5.1.1 <nobody@example.org>: Recipient address rejected: User unknown"
                            .into()
                    ),
                },
                ReportRecipient {
                    address: "slow@example.net".into(),
                    action: "delayed".into(),
                    status: "4.4.1".into(),
                    diagnostic: Some(
                        "connect to mx.example.net[198.51.100.7]:25: Connection timed out".into()
                    ),
                },
            ]
        );
        assert!(r.recipients[0].is_hard());
        assert!(!r.recipients[1].is_hard());
    }

    const GMAIL_DSN: &str = r#"Delivered-To: bot@example.com
Return-Path: <>
From: Mail Delivery Subsystem <mailer-daemon@googlemail.com>
To: bot@example.com
Auto-Submitted: auto-replied
Subject: Delivery Status Notification (Failure)
Message-ID: <6749a1b2.050a0220.3c1.abcdGMR@mx.google.com>
Date: Tue, 01 Dec 2026 02:00:04 -0800 (PST)
MIME-Version: 1.0
Content-Type: multipart/report; boundary="000000000000f0e1d2"; report-type=delivery-status

--000000000000f0e1d2
Content-Type: multipart/related; boundary="000000000000f0e1d3"

--000000000000f0e1d3
Content-Type: multipart/alternative; boundary="000000000000f0e1d4"

--000000000000f0e1d4
Content-Type: text/plain; charset="UTF-8"

Address not found

Your message wasn't delivered to gone@example.com because the address couldn't be found.

--000000000000f0e1d4
Content-Type: text/html; charset="UTF-8"

<html><body><h2>Address not found</h2><p>Your message wasn't delivered to <a style="color:#212121;text-decoration:none"><b>gone@example.com</b></a></p></body></html>

--000000000000f0e1d4--

--000000000000f0e1d3--

--000000000000f0e1d2
Content-Type: message/delivery-status

Reporting-MTA: dns; googlemail.com
Received-From-MTA: dns; bot@example.com
Arrival-Date: Tue, 01 Dec 2026 02:00:03 -0800 (PST)
X-Original-Message-ID: <run-5.2@example.com>

Final-Recipient: rfc822; gone@example.com
Action: failed
Status: 5.1.1
Remote-MTA: dns; gmail-smtp-in.l.google.com. (2607:f8b0:4864:20::b2a, the
 server for the domain example.com.)
Diagnostic-Code: smtp; 550-5.1.1 The email account that you tried to reach does
 not exist.
Last-Attempt-Date: Tue, 01 Dec 2026 02:00:04 -0800 (PST)

--000000000000f0e1d2
Content-Type: message/rfc822

MIME-Version: 1.0
From: Bot <bot@example.com>
To: gone@example.com
Subject: Your code
Message-ID: <run-5.2@example.com>
Content-Type: text/plain

Your code is 1234.

--000000000000f0e1d2--
"#;

    #[test]
    fn a_gmail_dsn_names_the_returned_message() {
        let m = parse(&crlf(GMAIL_DSN)).unwrap();
        let r = m.report.expect("a report");
        assert_eq!(
            r.original_message_id.as_deref(),
            Some("run-5.2@example.com")
        );
        assert_eq!(r.recipients.len(), 1);
        assert_eq!(r.recipients[0].address, "gone@example.com");
        assert!(r.recipients[0].is_hard());
        assert_eq!(
            r.recipients[0].diagnostic.as_deref(),
            Some("550-5.1.1 The email account that you tried to reach does not exist.")
        );
        assert!(m.text.starts_with("Address not found"));
    }

    #[test]
    fn an_exim_bounce_without_a_report_part_is_read_when_it_names_one_address() {
        let raw = "Return-path: <>\nFrom: Mail Delivery System <Mailer-Daemon@mx.example.net>\nTo: bot@example.com\nSubject: Mail delivery failed: returning message to sender\nAuto-Submitted: auto-replied\n\nThis message was created automatically by mail delivery software.\n\nA message that you sent could not be delivered to one or more of its\nrecipients. This is a permanent error. The following address(es) failed:\n\n  lost@example.net\n    host mx.example.net [192.0.2.1]\n    SMTP error from remote mail server after RCPT TO:<lost@example.net>:\n    550 5.1.1 User unknown\n\n------ This is a copy of the message, including all the headers. ------\n\nMessage-ID: <run-3.1@example.com>\nFrom: bot@example.com\nTo: lost@example.net\nSubject: Hello\n\nHi\n";
        let m = parse(raw.as_bytes()).unwrap();
        let r = m.report.expect("a simple bounce");
        assert_eq!(r.recipients[0].address, "lost@example.net");
        assert_eq!(r.recipients[0].status, "5.1.1");
        assert!(r.recipients[0].is_hard());
        // Several addresses: too vague to say which failed.
        let vague = raw.replace(
            "  lost@example.net\n",
            "  lost@example.net\n  other@example.org\n",
        );
        let m = parse(vague.as_bytes()).unwrap();
        assert_eq!(m.report, None);
        assert!(m.automatic);
    }

    #[test]
    fn an_attachment_is_listed_not_kept() {
        let raw = "From: a@example.com\nTo: bot@example.com\nSubject: Scan\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"b1\"\n\n--b1\nContent-Type: text/plain; charset=utf-8\n\n1 - here is the signed form\n--b1\nContent-Type: application/pdf; name=\"form.pdf\"\nContent-Disposition: attachment; filename=\"form.pdf\"\nContent-Transfer-Encoding: base64\n\nJVBERi0xLjQKJcfsj6IK\n--b1--\n";
        let m = parse(raw.as_bytes()).unwrap();
        assert_eq!(
            m.attachments,
            [AttachmentMeta {
                name: Some("form.pdf".into()),
                content_type: "application/pdf".into(),
                size: 15,
            }]
        );
        assert_eq!(m.answer, "1 - here is the signed form");
    }

    #[test]
    fn plus_tokens() {
        assert_eq!(
            plus_token("reply+abc123@example.com", "reply").as_deref(),
            Some("abc123")
        );
        assert_eq!(
            plus_token("<Reply+AbC@Example.com>", "reply").as_deref(),
            Some("AbC")
        );
        assert_eq!(plus_token("reply@example.com", "reply"), None);
        assert_eq!(plus_token("reply+@example.com", "reply"), None);
        assert_eq!(plus_token("other+abc@example.com", "reply"), None);
        assert_eq!(plus_token("reply+abc", "reply"), None);
        let raw = "Delivered-To: Reply+T9@Bot.example.com\nX-Original-To: reply+t9@bot.example.com\nTo: list@example.org\nFrom: a@b.c\nSubject: x\n\n1\n";
        let m = parse(raw.as_bytes()).unwrap();
        assert_eq!(
            m.delivered_to,
            ["reply+t9@bot.example.com", "reply+t9@bot.example.com"]
        );
        assert_eq!(
            plus_token(&m.delivered_to[0], "reply").as_deref(),
            Some("t9")
        );
    }

    #[test]
    fn garbage_and_nul() {
        assert!(parse(b"").is_err());
        assert!(parse(b" \r\n ").is_err());
        let _ = parse(b"\xff\xfe\x00\x01garbage without any header\x00");
        let m = parse(b"From: a@b.c\r\nSubject: a\x00b\r\n\r\n1\x00 2\r\n").unwrap();
        assert_eq!(m.subject, "a\u{FFFD}b");
        assert_eq!(m.text, "1\u{FFFD} 2");
        assert_eq!(m.answer, "1\u{FFFD} 2");
    }

    #[test]
    fn html_to_text_keeps_structure_and_links() {
        let html = r#"<html><head><title>T</title><style>p{color:red}</style></head><body>
            <p>Hello&nbsp;<b>Anna</b>,</p><p>Pick one:</p>
            <ul><li>Tuesday</li><li>Wednesday &amp; later</li></ul>
            <a href="https://ex.com/a?x=1&amp;y=2">Book</a> or
            <a href="https://ex.com">https://ex.com</a> or <a href="mailto:a@b.c">a@b.c</a><br/>
            <!-- hidden <b>x</b> --><script>alert(1)</script>5 &lt; 6 &#233;&#xE9; &unknown; a < b
            </body></html>"#;
        assert_eq!(
            html_to_text(html),
            "Hello Anna,\nPick one:\n- Tuesday\n- Wednesday & later\nBook (https://ex.com/a?x=1&y=2) or https://ex.com or a@b.c\n5 < 6 éé &unknown; a < b"
        );
        assert_eq!(html_to_text("a<br>b<br><br>c"), "a\nb\n\nc");
        assert_eq!(
            html_to_text("<div>x<blockquote>q<br>r</blockquote></div>"),
            "x\n> q\n> r"
        );
        assert_eq!(
            html_to_text("<a href=\"https://u\"><img alt=\"\"></a>"),
            "https://u"
        );
        assert_eq!(html_to_text("<pre>a  b\n c</pre>"), "a  b\n c");
        assert_eq!(html_to_text("<unclosed attr=\"x"), "");
    }

    proptest! {
        #[test]
        fn parse_never_panics(raw in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let _ = parse(&raw);
        }

        #[test]
        fn parse_never_panics_on_mime_like_text(
            body in "(From: a@b\\.c\r\n|Content-Type: multipart/(mixed|report); boundary=x\r\n|--x\r\n|Content-Type: message/(rfc822|delivery-status)\r\n|\r\n|> q\r\n|-- \r\n|<b>&amp;|[ -~]{0,20}\r\n){0,40}"
        ) {
            let _ = parse(body.as_bytes());
        }

        #[test]
        fn text_helpers_never_panic(s in "\\PC{0,300}") {
            let _ = strip_reply(&s);
            let _ = html_to_text(&s);
            let _ = plus_token(&s, "reply");
        }
    }
}
