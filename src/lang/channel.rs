//! Channel sections of the gateway file. The language knows only that a channel has a type,
//! capabilities and settings of its own; each channel type parses its section (with
//! positions) through [`ChannelKinds`], which the gateway's channel registry implements.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::sync::Arc;

use serde_json::Value as Json;

use super::capabilities::Capabilities;
use super::raw::Sp;

/// A configured channel.
#[derive(Clone)]
pub struct Channel {
    /// Its type, as written in `type = "…"`.
    pub kind: &'static str,
    pub caps: Capabilities,
    /// Its type's own settings (the channel folder knows their type).
    pub settings: Arc<dyn std::any::Any + Send + Sync>,
    /// Why it is off, when it is configured but cannot run (no token, say).
    pub off: Option<String>,
}

impl Channel {
    /// The channel's type as written in `type = "…"`.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// Its settings, if they are a `T`.
    pub fn settings<T: 'static>(&self) -> Option<&T> {
        self.settings.downcast_ref::<T>()
    }
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Settings hold secrets: only the type and state are shown.
        f.debug_struct("Channel")
            .field("kind", &self.kind)
            .field("off", &self.off)
            .finish()
    }
}

/// Where a channel type reports problems.
pub trait SectionCx {
    fn err(&mut self, span: Range<usize>, msg: String);
    /// The value of a text setting. `${NAME}` references in every string of the file are
    /// expanded (or reported) when it is read, so this is the text itself.
    fn env(&mut self, value: &Sp<String>) -> Option<String>;
}

/// One `[channels.<name>]` section: its keys with their positions. Keys a type reads are
/// marked; [`Section::finish`] reports the others.
pub struct Section<'a> {
    pub name: &'a str,
    pub span: Range<usize>,
    entries: Option<&'a BTreeMap<String, Sp<Json>>>,
    read: RefCell<BTreeSet<String>>,
}

impl<'a> Section<'a> {
    pub fn new(name: &'a str, span: Range<usize>, entries: &'a BTreeMap<String, Sp<Json>>) -> Self {
        Section {
            name,
            span,
            entries: Some(entries),
            read: RefCell::default(),
        }
    }

    /// A section with no keys (the built-in `log` channel).
    pub fn empty(name: &'a str) -> Self {
        Section {
            name,
            span: 0..0,
            entries: None,
            read: RefCell::default(),
        }
    }

    fn entry(&self, key: &str) -> Option<&'a Sp<Json>> {
        self.read.borrow_mut().insert(key.to_string());
        self.entries?.get(key)
    }

    /// A text value.
    pub fn text(&self, key: &str, cx: &mut dyn SectionCx) -> Option<Sp<String>> {
        let v = self.entry(key)?;
        match v.get() {
            Json::String(s) => Some(Sp(toml::Spanned::new(v.span(), s.clone()))),
            _ => {
                cx.err(v.span(), format!("`{key}` must be a text"));
                None
            }
        }
    }

    /// A table of texts, e.g. `limits = { chat = "1/1s" }` (positions are the table's).
    pub fn texts(&self, key: &str, cx: &mut dyn SectionCx) -> BTreeMap<String, Sp<String>> {
        let Some(v) = self.entry(key) else {
            return BTreeMap::new();
        };
        let Json::Object(map) = v.get() else {
            cx.err(v.span(), format!("`{key}` must be a table"));
            return BTreeMap::new();
        };
        let mut out = BTreeMap::new();
        for (k, item) in map {
            match item {
                Json::String(s) => {
                    out.insert(k.clone(), Sp(toml::Spanned::new(v.span(), s.clone())));
                }
                _ => cx.err(v.span(), format!("`{key}.{k}` must be a text")),
            }
        }
        out
    }

    /// A table of any values, e.g. `smtp = { host = "…", port = 587 }`, with the table's
    /// position (its values have none of their own).
    pub fn table(
        &self,
        key: &str,
        cx: &mut dyn SectionCx,
    ) -> Option<(Range<usize>, serde_json::Map<String, Json>)> {
        let v = self.entry(key)?;
        match v.get() {
            Json::Object(map) => Some((v.span(), map.clone())),
            _ => {
                cx.err(v.span(), format!("`{key}` must be a table"));
                None
            }
        }
    }

    /// A table of rates, e.g. `limits = { chat = "1/1s", bot = "30/1s" }`: one per name in
    /// `defaults` (its default when not given); bad and unknown ones are reported.
    pub fn rates(
        &self,
        key: &str,
        defaults: &[(&str, (u32, std::time::Duration))],
        cx: &mut dyn SectionCx,
    ) -> Vec<(u32, std::time::Duration)> {
        let given = self.texts(key, cx);
        let names: Vec<&str> = defaults.iter().map(|(n, _)| *n).collect();
        for (k, v) in &given {
            if !names.contains(&k.as_str()) {
                cx.err(
                    v.span(),
                    format!("unknown limit '{k}' ({})", names.join(", ")),
                );
            }
        }
        defaults
            .iter()
            .map(|(name, dflt)| match given.get(*name) {
                None => *dflt,
                Some(v) => super::compile::values::parse_rate(v.get()).unwrap_or_else(|| {
                    cx.err(
                        v.span(),
                        format!("{name} limit must look like 1/1s or 20/1m"),
                    );
                    *dflt
                }),
            })
            .collect()
    }

    /// Reports the keys no one read.
    pub fn finish(&self, kind: &str, cx: &mut dyn SectionCx) {
        let read = self.read.borrow();
        for (k, v) in self.entries.into_iter().flatten() {
            if k != "type" && !read.contains(k) {
                let known: Vec<&str> = read.iter().map(String::as_str).collect();
                cx.err(
                    v.span(),
                    format!(
                        "unknown key `{k}` in a {kind} channel (it takes: {})",
                        known.join(", ")
                    ),
                );
            }
        }
    }
}

/// The channel types the gateway has.
pub trait ChannelKinds {
    /// Their names, for messages.
    fn names(&self) -> Vec<&'static str>;
    /// A section of type `kind`: `None` when no such type exists; `Some(None)` when the
    /// section has problems (reported).
    fn parse(
        &self,
        kind: &str,
        section: &Section,
        cx: &mut dyn SectionCx,
    ) -> Option<Option<Channel>>;
}
