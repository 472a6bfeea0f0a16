//! Fluent bundles from `locales/<lang>/*.ftl` and language resolution for recipients.

use std::collections::BTreeMap;
use std::path::Path;

use fluent_bundle::concurrent::FluentBundle;
use fluent_bundle::{FluentArgs, FluentResource, FluentValue};
use unic_langid::LanguageIdentifier;

use crate::lang::{ConfigError, Position};

mod builtin;

type Bundle = FluentBundle<FluentResource>;

pub struct I18n {
    default: String,
    bundles: BTreeMap<String, Bundle>,
}

impl I18n {
    /// Loads every `<dir>/<lang>/*.ftl`. Problems (unreadable files, syntax errors,
    /// duplicate ids) are returned with positions; good messages are kept.
    pub fn load(dir: &Path, default: &str, problems: &mut Vec<ConfigError>) -> I18n {
        let mut bundles = BTreeMap::new();
        let mut langs: Vec<_> = match std::fs::read_dir(dir) {
            Ok(rd) => rd.filter_map(|e| e.ok()).map(|e| e.path()).collect(),
            Err(e) => {
                problems.push(ConfigError::at_file(
                    dir,
                    format!("cannot read the locales folder: {e}"),
                ));
                Vec::new()
            }
        };
        langs.sort();
        for lang_dir in langs.into_iter().filter(|p| p.is_dir()) {
            let lang = lang_dir
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .to_string();
            let id: LanguageIdentifier = match lang.parse() {
                Ok(id) => id,
                Err(_) => {
                    problems.push(ConfigError::at_file(
                        &lang_dir,
                        format!("'{lang}' is not a language tag"),
                    ));
                    continue;
                }
            };
            let mut bundle = FluentBundle::new_concurrent(vec![id]);
            bundle.set_use_isolating(false);
            let mut files: Vec<_> = std::fs::read_dir(&lang_dir)
                .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
                .unwrap_or_default();
            files.retain(|p| p.extension().is_some_and(|e| e == "ftl"));
            files.sort();
            for file in files {
                let text = match std::fs::read_to_string(&file) {
                    Ok(t) => t,
                    Err(e) => {
                        problems.push(ConfigError::at_file(&file, format!("cannot read: {e}")));
                        continue;
                    }
                };
                let res = match FluentResource::try_new(text.clone()) {
                    Ok(r) => r,
                    Err((r, errs)) => {
                        for e in errs {
                            let pos = Position::of(&text, e.pos.start);
                            problems.push(ConfigError::new(
                                &file,
                                pos,
                                format!("Fluent syntax: {}", e.kind),
                            ));
                        }
                        r
                    }
                };
                if let Err(errs) = bundle.add_resource(res) {
                    for e in errs {
                        problems.push(ConfigError::at_file(&file, format!("Fluent: {e}")));
                    }
                }
            }
            bundles.insert(lang, bundle);
        }
        I18n {
            default: default.to_string(),
            bundles,
        }
    }

    /// Bundles from texts compiled into the binary, e.g. the gateway's own pages.
    pub fn from_sources(default: &str, sources: &[(&str, &str)]) -> I18n {
        let bundles = sources
            .iter()
            .map(|(lang, text)| (lang.to_string(), compiled_in(lang, text)))
            .collect();
        I18n {
            default: default.to_string(),
            bundles,
        }
    }

    /// The best loaded language for an `Accept-Language` header.
    pub fn from_accept(&self, header: &str) -> String {
        let mut tags: Vec<(f32, &str)> = header
            .split(',')
            .filter_map(|part| {
                let mut it = part.trim().split(';');
                let tag = it.next()?.trim();
                let q = it
                    .find_map(|p| p.trim().strip_prefix("q=")?.parse::<f32>().ok())
                    .unwrap_or(1.0);
                (!tag.is_empty()).then_some((q, tag))
            })
            .collect();
        tags.sort_by(|a, b| b.0.total_cmp(&a.0));
        for (_, tag) in tags {
            let lang = self.resolve(Some(tag));
            if lang != self.default || tag.starts_with(self.default.as_str()) {
                return lang;
            }
        }
        self.default.clone()
    }

    pub fn languages(&self) -> impl Iterator<Item = &str> {
        self.bundles.keys().map(|s| s.as_str())
    }

    pub fn default_language(&self) -> &str {
        &self.default
    }

    /// Locales that lack the message `id`.
    pub fn missing_in(&self, id: &str) -> Vec<&str> {
        self.bundles
            .iter()
            .filter(|(_, b)| !b.has_message(id))
            .map(|(l, _)| l.as_str())
            .collect()
    }

    /// Whether message `id` exists in `lang` (or, for a language not loaded, the default).
    pub fn has(&self, lang: &str, id: &str) -> bool {
        self.bundles
            .get(lang)
            .or_else(|| self.bundles.get(&self.default))
            .is_some_and(|b| b.has_message(id))
    }

    /// The best loaded language for a requested tag: exact, then its primary subtag
    /// (`ru-RU` → `ru`), then the default.
    pub fn resolve(&self, wanted: Option<&str>) -> String {
        wanted
            .and_then(|w| match_tag(w, |l| self.bundles.contains_key(l)))
            .unwrap_or_else(|| self.default.clone())
    }

    /// Renders message `id` in `lang` with arguments; Fluent errors are reported, not hidden.
    pub fn render(
        &self,
        lang: &str,
        id: &str,
        args: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<String, String> {
        self.render_with(lang, id, args, &|s| s.to_owned())
    }

    /// Like [`I18n::render`], but every non-numeric argument goes through `escape` first, so a
    /// value such as `R&D <Ltd>` can be escaped for a channel's markup while the markup the
    /// operator wrote in the `.ftl` text stays markup. Numbers stay numbers for Fluent.
    pub fn render_with(
        &self,
        lang: &str,
        id: &str,
        args: &serde_json::Map<String, serde_json::Value>,
        escape: &dyn Fn(&str) -> String,
    ) -> Result<String, String> {
        let bundle = self
            .bundles
            .get(lang)
            .or_else(|| self.bundles.get(&self.default))
            .ok_or_else(|| format!("no locale '{lang}' loaded"))?;
        let msg = bundle
            .get_message(id)
            .ok_or_else(|| format!("message '{id}' is missing in locale '{lang}'"))?;
        let pattern = msg
            .value()
            .ok_or_else(|| format!("message '{id}' has no value"))?;
        let fargs = fluent_args(args, escape);
        let mut errors = Vec::new();
        let out = bundle.format_pattern(pattern, Some(&fargs), &mut errors);
        if let Some(e) = errors.first() {
            return Err(format!("message '{id}' in '{lang}': {e}"));
        }
        Ok(out.into_owned())
    }
}

/// The available language for `tag` (`pt_BR` is read as `pt-BR`): the tag itself, else its
/// primary subtag (`ru-RU` → `ru`).
fn match_tag(tag: &str, available: impl Fn(&str) -> bool) -> Option<String> {
    let tag = tag.trim().replace('_', "-");
    if tag.is_empty() {
        return None;
    }
    if available(&tag) {
        return Some(tag);
    }
    let primary = tag.split('-').next().unwrap_or("").to_ascii_lowercase();
    available(&primary).then_some(primary)
}

/// A bundle from a text compiled into the binary. Such texts are constants checked by unit
/// tests, so a failure here is a build defect, not something input can cause.
fn compiled_in(lang: &str, text: &str) -> Bundle {
    let id: LanguageIdentifier = lang.parse().expect("built-in language tags are valid");
    let mut bundle = FluentBundle::new_concurrent(vec![id]);
    bundle.set_use_isolating(false);
    let res = FluentResource::try_new(text.to_string()).expect("built-in messages parse");
    bundle
        .add_resource(res)
        .expect("built-in messages have unique ids");
    bundle
}

/// JSON arguments as Fluent arguments: numbers stay numbers, everything else becomes a string
/// passed through `escape`; nulls are left out, so the message shows the missing variable.
fn fluent_args(
    args: &serde_json::Map<String, serde_json::Value>,
    escape: &dyn Fn(&str) -> String,
) -> FluentArgs<'static> {
    let mut fargs = FluentArgs::new();
    for (k, v) in args {
        let fv = match v {
            serde_json::Value::Number(n) => FluentValue::from(n.as_f64().unwrap_or(0.0)),
            serde_json::Value::String(s) => FluentValue::from(escape(s)),
            serde_json::Value::Bool(b) => FluentValue::from(escape(&b.to_string())),
            serde_json::Value::Null => continue,
            other => FluentValue::from(escape(&other.to_string())),
        };
        fargs.set(k.clone(), fv);
    }
    fargs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (tempfile::TempDir, I18n) {
        let dir = tempfile::tempdir().unwrap();
        for (lang, text) in [
            ("en", "hello = Hello, { $name }!\nonly-en = x\n"),
            ("ru", "hello = Привет, { $name }!\n"),
        ] {
            std::fs::create_dir(dir.path().join(lang)).unwrap();
            std::fs::write(dir.path().join(lang).join("main.ftl"), text).unwrap();
        }
        let mut problems = Vec::new();
        let i = I18n::load(dir.path(), "en", &mut problems);
        assert!(problems.is_empty());
        (dir, i)
    }

    #[test]
    fn renders_in_the_resolved_language() {
        let (_d, i) = sample();
        let mut args = serde_json::Map::new();
        args.insert("name".into(), "Elena".into());
        assert_eq!(
            i.render(&i.resolve(Some("ru-RU")), "hello", &args).unwrap(),
            "Привет, Elena!"
        );
        assert_eq!(
            i.render(&i.resolve(Some("de")), "hello", &args).unwrap(),
            "Hello, Elena!"
        );
    }

    #[test]
    fn accept_language_picks_the_best_loaded_language() {
        let (_d, i) = sample();
        assert_eq!(i.from_accept("de-DE,ru;q=0.8,en;q=0.5"), "ru");
        assert_eq!(i.from_accept("fr"), "en");
        assert_eq!(i.from_accept(""), "en");
    }

    #[test]
    fn reports_locales_lacking_a_message() {
        let (_d, i) = sample();
        assert_eq!(i.missing_in("only-en"), vec!["ru"]);
        assert!(i.missing_in("hello").is_empty());
    }

    #[test]
    fn render_with_escapes_values_but_not_the_operators_markup() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("en")).unwrap();
        std::fs::write(
            dir.path().join("en").join("main.ftl"),
            "deal = <b>{ $title }</b>: { $count ->\n    [one] one seat\n   *[other] { $count } seats\n}\n",
        )
        .unwrap();
        let mut problems = Vec::new();
        let i = I18n::load(dir.path(), "en", &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        let html = |s: &str| {
            s.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
        };
        let mut args = serde_json::Map::new();
        args.insert("title".into(), "R&D <Ltd>".into());
        args.insert("count".into(), 1.into());
        assert_eq!(
            i.render_with("en", "deal", &args, &html).unwrap(),
            "<b>R&amp;D &lt;Ltd&gt;</b>: one seat"
        );
        args.insert("count".into(), 1500.into());
        assert_eq!(
            i.render_with("en", "deal", &args, &html).unwrap(),
            "<b>R&amp;D &lt;Ltd&gt;</b>: 1500 seats"
        );
        // Plain `render` is the same path with no escaping.
        assert_eq!(
            i.render("en", "deal", &args).unwrap(),
            "<b>R&D <Ltd></b>: 1500 seats"
        );
    }
}
