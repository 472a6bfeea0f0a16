//! Texts the gateway itself says in chats (answers to button clicks), shipped in the binary
//! in en, ru and pl. An operator's `locales/<lang>/*.ftl` may override any of them by id.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use super::{compiled_in, fluent_args, match_tag, Bundle, I18n};

/// The language used when nothing else is available; every built-in id is defined in it.
const FALLBACK: &str = "en";

const SOURCES: [(&str, &str); 3] = [
    ("en", include_str!("builtin/en.ftl")),
    ("ru", include_str!("builtin/ru.ftl")),
    ("pl", include_str!("builtin/pl.ftl")),
];

/// Parsed once per process: clicks are answered on a hot path.
static BUILTIN: LazyLock<BTreeMap<&'static str, Bundle>> = LazyLock::new(|| {
    SOURCES
        .iter()
        .map(|(lang, text)| (*lang, compiled_in(lang, text)))
        .collect()
});

impl I18n {
    /// Text `id` for a chat, in the first `wanted` language that the operator's locales or the
    /// built-in texts know, else the operator's default, else English. The operator's message
    /// wins over the built-in one in that language; English built-in texts are the last resort.
    /// Never fails: a formatting problem is logged and the text Fluent produced is returned,
    /// and an id defined nowhere comes back as itself.
    pub fn builtin(
        &self,
        wanted: &[Option<&str>],
        id: &str,
        args: &serde_json::Map<String, serde_json::Value>,
    ) -> String {
        let lang = self.builtin_language(wanted);
        // An operator's `ru-RU` folder still gets the built-in Russian texts.
        let shipped =
            match_tag(&lang, |l| BUILTIN.contains_key(l)).and_then(|l| BUILTIN.get(l.as_str()));
        let candidates = [self.bundles.get(&lang), shipped, BUILTIN.get(FALLBACK)];
        let fargs = fluent_args(args, &|s| s.to_owned());
        for bundle in candidates.into_iter().flatten() {
            let Some(pattern) = bundle.get_message(id).and_then(|m| m.value()) else {
                continue;
            };
            let mut errors = Vec::new();
            let text = bundle.format_pattern(pattern, Some(&fargs), &mut errors);
            if !errors.is_empty() {
                tracing::warn!(id, lang = %lang, ?errors, "formatting a built-in text");
            }
            return text.into_owned();
        }
        tracing::warn!(id, lang = %lang, "no text for a built-in id");
        id.to_owned()
    }

    fn builtin_language(&self, wanted: &[Option<&str>]) -> String {
        let available = |l: &str| self.bundles.contains_key(l) || BUILTIN.contains_key(l);
        wanted
            .iter()
            .flatten()
            .find_map(|w| match_tag(w, available))
            .or_else(|| match_tag(&self.default, available))
            .unwrap_or_else(|| FALLBACK.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn no_args() -> serde_json::Map<String, serde_json::Value> {
        serde_json::Map::new()
    }

    fn name(n: &str) -> serde_json::Map<String, serde_json::Value> {
        let mut args = serde_json::Map::new();
        args.insert("name".into(), n.into());
        args
    }

    /// Operator locales as `(lang, ftl)` pairs, loaded from disk like the real ones.
    fn operator(default: &str, locales: &[(&str, &str)]) -> (tempfile::TempDir, I18n) {
        let dir = tempfile::tempdir().unwrap();
        for (lang, text) in locales {
            std::fs::create_dir(dir.path().join(lang)).unwrap();
            std::fs::write(dir.path().join(lang).join("main.ftl"), text).unwrap();
        }
        let mut problems = Vec::new();
        let i = I18n::load(dir.path(), default, &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        (dir, i)
    }

    /// Message ids of a source, read from the lines that start a message.
    fn ids(source: &str) -> BTreeSet<&str> {
        source
            .lines()
            .filter(|l| l.starts_with(|c: char| c.is_ascii_alphabetic()))
            .filter_map(|l| l.split_once('='))
            .map(|(id, _)| id.trim())
            .collect()
    }

    #[test]
    fn a_russian_click_on_a_taken_offer_names_the_taker() {
        let (_d, i) = operator("en", &[("en", "hello = Hello\n")]);
        assert_eq!(
            i.builtin(&[Some("ru")], "switchboard-click-taken-by", &name("Elena")),
            "Уже занято: Elena."
        );
        assert_eq!(
            i.builtin(&[Some("ru-RU")], "switchboard-click-taken", &no_args()),
            "Уже занято."
        );
        assert_eq!(
            i.builtin(
                &[Some("pt_BR"), Some("ru_RU")],
                "switchboard-click-taken",
                &no_args()
            ),
            "Уже занято."
        );
    }

    #[test]
    fn an_unknown_language_falls_back_to_the_operator_default_then_english() {
        let (_d, pl) = operator("pl", &[("pl", "hello = Cześć\n")]);
        assert_eq!(
            pl.builtin(&[None, Some("de")], "switchboard-click-expired", &no_args()),
            "Ta oferta wygasła."
        );
        // A default the operator names but nobody ships is skipped for English.
        let (_d, fr) = operator("fr", &[]);
        assert_eq!(
            fr.builtin(&[Some("de")], "switchboard-click-expired", &no_args()),
            "This offer has expired."
        );
        assert_eq!(
            fr.builtin(&[], "switchboard-click-expired", &no_args()),
            "This offer has expired."
        );
    }

    #[test]
    fn the_operators_text_wins_in_its_own_language_only() {
        let (_d, i) = operator(
            "en",
            &[
                ("en", "hello = Hello\n"),
                ("pl", "switchboard-click-yours = Bierzesz to, { $name }!\n"),
            ],
        );
        assert_eq!(
            i.builtin(&[Some("pl")], "switchboard-click-yours", &name("Ola")),
            "Bierzesz to, Ola!"
        );
        assert_eq!(
            i.builtin(&[Some("pl")], "switchboard-click-taken", &no_args()),
            "Już zajęte."
        );
        assert_eq!(
            i.builtin(&[Some("ru")], "switchboard-click-yours", &no_args()),
            "Закреплено за вами."
        );
    }

    #[test]
    fn an_operators_language_without_built_in_texts_gets_english() {
        let (_d, i) = operator("en", &[("de", "hello = Hallo\n")]);
        assert_eq!(
            i.builtin(&[Some("de-AT")], "switchboard-click-inactive", &no_args()),
            "This button is no longer active."
        );
    }

    #[test]
    fn never_fails() {
        let (_d, i) = operator("en", &[]);
        assert_eq!(
            i.builtin(&[Some("en")], "switchboard-click-taken-by", &no_args()),
            "Already taken by {$name}."
        );
        assert_eq!(
            i.builtin(&[Some("ru")], "no-such-text", &no_args()),
            "no-such-text"
        );
    }

    #[test]
    fn every_built_in_language_parses_and_defines_the_same_ids() {
        let english = ids(SOURCES[0].1);
        assert_eq!(english.len(), 9, "{english:?}");
        for (lang, source) in SOURCES {
            assert_eq!(ids(source), english, "ids of '{lang}'");
            let bundle = &BUILTIN[lang];
            for id in &english {
                let msg = bundle.get_message(id);
                assert!(
                    msg.is_some_and(|m| m.value().is_some()),
                    "'{id}' in '{lang}'"
                );
            }
        }
    }
}
