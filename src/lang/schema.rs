//! The JSON Schema of the gateway file and of scenario files (`switchboard schema`), for editors.

use serde_json::{Map, Value as Json};

use super::raw;
use super::schema_examples::{self, EXAMPLES};

/// The JSON Schema of the gateway file and of scenario files, for editors.
pub fn json_schema() -> serde_json::Value {
    let gateway = schemars::schema_for!(raw::GatewayFile);
    let scenario = schemars::schema_for!(raw::ScenarioFile);
    let tests = schemars::schema_for!(raw::TestFile);
    let mut schema = serde_json::json!({
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "Switchboard configuration",
        "description": "gateway.toml follows `gateway`; `*.test.toml` files follow `tests`; every other file in bot-configs/ follows `scenario`.",
        "definitions": { "gateway": gateway, "scenario": scenario, "tests": tests },
        "oneOf": [ { "$ref": "#/definitions/gateway" }, { "$ref": "#/definitions/scenario" }, { "$ref": "#/definitions/tests" } ]
    });
    hoist_definitions(&mut schema);
    add_examples(&mut schema);
    schema
}

/// Sets `examples` of every property that `schema_examples::EXAMPLES` has a value for.
fn add_examples(schema: &mut Json) {
    for_each_properties(schema, "", &mut |definition, properties| {
        for (key, property) in properties.iter_mut() {
            let Json::Object(property) = property else {
                continue;
            };
            let example = EXAMPLES
                .iter()
                .find(|(d, k, _)| *d == definition && *k == key.as_str())
                .and_then(|(_, _, src)| schema_examples::to_json(src).ok());
            if let Some(example) = example {
                property.insert("examples".into(), Json::Array(vec![example]));
            }
        }
    });
}

/// Calls `f` with every `properties` map in `schema` and the name of the definition it
/// belongs to: the key under the nearest enclosing `definitions` (`gateway`, `scenario` and
/// `tests` at the top). Properties may sit directly in a definition, inline in a property,
/// or under `allOf`/`anyOf`; all are found. Example values are not searched.
fn for_each_properties(
    schema: &mut Json,
    definition: &str,
    f: &mut dyn FnMut(&str, &mut Map<String, Json>),
) {
    match schema {
        Json::Object(m) => {
            for (key, child) in m.iter_mut() {
                match (key.as_str(), child) {
                    ("examples" | "default", _) => {}
                    ("properties", Json::Object(properties)) => {
                        f(definition, properties);
                        for property in properties.values_mut() {
                            for_each_properties(property, definition, f);
                        }
                    }
                    ("definitions", Json::Object(definitions)) => {
                        for (name, d) in definitions.iter_mut() {
                            for_each_properties(d, name, f);
                        }
                    }
                    (_, child) => for_each_properties(child, definition, f),
                }
            }
        }
        Json::Array(a) => {
            for child in a {
                for_each_properties(child, definition, f);
            }
        }
        _ => {}
    }
}

/// Each file kind's schema comes with the definitions its `$ref`s name
/// (`#/definitions/AskDef`), resolved from the document's root: they move up beside the
/// file kinds (the same type in two kinds is one definition).
fn hoist_definitions(schema: &mut Json) {
    let mut found = Map::new();
    if let Some(Json::Object(defs)) = schema.get_mut("definitions") {
        for kind in ["gateway", "scenario", "tests"] {
            if let Some(Json::Object(k)) = defs.get_mut(kind) {
                if let Some(Json::Object(inner)) = k.remove("definitions") {
                    found.extend(inner);
                }
                k.remove("$schema");
            }
        }
        for (name, def) in found {
            defs.entry(name).or_insert(def);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    /// Every `$ref` names a definition at the root of the document (editors resolve them
    /// from there).
    #[test]
    fn every_reference_resolves() {
        fn refs(v: &serde_json::Value, out: &mut Vec<String>) {
            match v {
                serde_json::Value::Object(m) => {
                    if let Some(serde_json::Value::String(r)) = m.get("$ref") {
                        out.push(r.clone());
                    }
                    m.values().for_each(|c| refs(c, out));
                }
                serde_json::Value::Array(a) => a.iter().for_each(|c| refs(c, out)),
                _ => {}
            }
        }
        let schema = crate::lang::schema::json_schema();
        let mut all = Vec::new();
        refs(&schema, &mut all);
        assert!(all.len() > 20, "{all:?}");
        let broken: Vec<&String> = all
            .iter()
            .filter(|r| {
                r.strip_prefix("#/definitions/")
                    .is_none_or(|name| schema["definitions"].get(name).is_none())
            })
            .collect();
        assert!(broken.is_empty(), "unresolved: {broken:?}");
    }

    use std::collections::BTreeSet;

    use serde_json::{json, Value as Json};

    use super::{for_each_properties, raw, schema_examples, EXAMPLES};

    /// Every key of every table has a description (an editor shows it on hover).
    #[test]
    fn every_key_is_described() {
        fn walk(v: &Json, at: &str, missing: &mut Vec<String>) {
            match v {
                Json::Object(m) => {
                    if let Some(Json::Object(props)) = m.get("properties") {
                        for (key, p) in props {
                            let described = p
                                .get("description")
                                .and_then(Json::as_str)
                                .is_some_and(|d| !d.trim().is_empty());
                            if !described {
                                missing.push(format!("{at}.{key}"));
                            }
                        }
                    }
                    for (k, child) in m {
                        walk(child, &format!("{at}/{k}"), missing);
                    }
                }
                Json::Array(a) => {
                    for (i, child) in a.iter().enumerate() {
                        walk(child, &format!("{at}/{i}"), missing);
                    }
                }
                _ => {}
            }
        }
        let mut missing = Vec::new();
        walk(&super::json_schema(), "", &mut missing);
        assert!(
            missing.is_empty(),
            "keys without a description: {missing:#?}"
        );
    }

    /// Every property of the schema as (definition, key, property schema).
    fn properties() -> Vec<(String, String, Json)> {
        let mut out = Vec::new();
        for_each_properties(&mut super::json_schema(), "", &mut |definition, props| {
            for (key, p) in props.iter() {
                out.push((definition.to_string(), key.clone(), p.clone()));
            }
        });
        out
    }

    /// Every key of every table has an example (an editor shows it in completion and hover).
    #[test]
    fn every_key_has_an_example() {
        let missing: Vec<String> = properties()
            .into_iter()
            .filter(|(_, _, p)| {
                p.get("examples")
                    .and_then(Json::as_array)
                    .is_none_or(|e| e.is_empty())
            })
            .map(|(definition, key, _)| format!("{definition}.{key}"))
            .collect();
        assert!(missing.is_empty(), "keys without an example: {missing:#?}");
    }

    /// Every example names a key the schema has, once, and is a TOML value.
    #[test]
    fn every_example_is_of_a_key() {
        let keys: BTreeSet<(String, String)> = properties()
            .into_iter()
            .map(|(definition, key, _)| (definition, key))
            .collect();
        let mut seen = BTreeSet::new();
        let mut problems = Vec::new();
        for (definition, key, src) in EXAMPLES {
            let name = format!("{definition}.{key}");
            if !keys.contains(&(definition.to_string(), key.to_string())) {
                problems.push(format!("{name}: no such key"));
            }
            if !seen.insert(name.clone()) {
                problems.push(format!("{name}: given twice"));
            }
            if let Err(e) = schema_examples::to_json(src) {
                problems.push(format!("{name}: {e}"));
            }
        }
        assert!(problems.is_empty(), "{problems:#?}");
    }

    /// Whether `value` is of the schema's `type` (a name or a list of names), and so are its
    /// items and, for a table whose schema lists its properties, its keys (each one of them).
    /// The config's channel sections are checked with it too.
    pub(crate) fn agrees(schema: &Json, value: &Json) -> Result<(), String> {
        let of = |name: &str| match name {
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            "array" => value.is_array(),
            "object" => value.is_object(),
            "null" => value.is_null(),
            _ => false,
        };
        let ok = match schema.get("type") {
            None => true,
            Some(Json::String(name)) => of(name),
            Some(Json::Array(names)) => names.iter().filter_map(Json::as_str).any(of),
            Some(_) => false,
        };
        if !ok {
            return Err(format!("{value} is not {}", schema["type"]));
        }
        match value {
            Json::Array(items) => match schema.get("items") {
                Some(s) => items.iter().try_for_each(|v| agrees(s, v)),
                None => Ok(()),
            },
            Json::Object(entries) => match schema.get("properties") {
                Some(properties) => entries
                    .iter()
                    .try_for_each(|(k, v)| match properties.get(k) {
                        Some(p) => agrees(p, v).map_err(|e| format!("{k}: {e}")),
                        None => Err(format!("{k}: no such key")),
                    }),
                None => Ok(()),
            },
            _ => Ok(()),
        }
    }

    #[test]
    fn the_type_check_refuses_a_wrong_type() {
        let count = json!({ "type": ["integer", "null"] });
        assert!(agrees(&count, &json!(16)).is_ok());
        assert!(agrees(&count, &json!("16")).is_err());
        assert!(agrees(&count, &json!(1.5)).is_err());
        let list = json!({ "type": "array", "items": { "type": "string" } });
        assert!(agrees(&list, &json!(["a", "b"])).is_ok());
        assert!(agrees(&list, &json!(["a", 2])).is_err());
        assert!(agrees(&list, &json!("a")).is_err());
        assert!(agrees(&json!({ "$ref": "#/definitions/StepDef" }), &json!(1)).is_ok());
    }

    /// Each example is of the type the property declares, where it declares one.
    #[test]
    fn examples_agree_with_the_declared_types() {
        let wrong: Vec<String> = properties()
            .into_iter()
            .filter_map(|(definition, key, p)| {
                let example = p.get("examples")?.get(0)?;
                let e = agrees(&p, example).err()?;
                Some(format!("{definition}.{key}: {e}"))
            })
            .collect();
        assert!(wrong.is_empty(), "examples of the wrong type: {wrong:#?}");
    }

    /// The examples of each definition, written together as one table, are read by the
    /// parser of the config files.
    #[test]
    fn examples_parse_as_the_config_types() {
        fn check<T: serde::de::DeserializeOwned>(definition: &str, problems: &mut Vec<String>) {
            let table: String = EXAMPLES
                .iter()
                .filter(|(d, ..)| *d == definition)
                .map(|(_, key, src)| format!("{key} = {src}\n"))
                .collect();
            if let Err(e) = toml::from_str::<T>(&table) {
                problems.push(format!("{definition}: {e}\n{table}"));
            }
        }
        let mut problems = Vec::new();
        let mut checked = BTreeSet::new();
        macro_rules! check {
            ($($definition:literal => $ty:ty),* $(,)?) => {$(
                check::<$ty>($definition, &mut problems);
                checked.insert($definition);
            )*};
        }
        check! {
            "gateway" => raw::GatewayFile,
            "ServerSection" => raw::ServerSection,
            "DefaultsSection" => raw::DefaultsSection,
            "DatabaseSection" => raw::DatabaseSection,
            "HttpSection" => raw::HttpSection,
            "HookSection" => raw::HookSection,
            "SecretCheck" => raw::SecretCheck,
            "HmacCheck" => raw::HmacCheck,
            "StaffEntry" => raw::StaffEntry,
            "scenario" => raw::ScenarioFile,
            "TriggerDef" => raw::TriggerDef,
            "LimitDef" => raw::LimitDef,
            "HoursDef" => raw::HoursDef,
            "StepDef" => raw::StepDef,
            "SendDef" => raw::SendDef,
            "WindowTemplateDef" => raw::WindowTemplateDef,
            "EmbedDef" => raw::EmbedDef,
            "EmbedFieldDef" => raw::EmbedFieldDef,
            "EditDef" => raw::EditDef,
            "ButtonDef" => raw::ButtonDef,
            "HttpDef" => raw::HttpDef,
            "CallDef" => raw::CallDef,
            "SleepDef" => raw::SleepDef,
            "CancelDef" => raw::CancelDef,
            "WaitDef" => raw::WaitDef,
            "AskDef" => raw::AskDef,
            "OfferDef" => raw::OfferDef,
            "OfferButtonDef" => raw::OfferButtonDef,
            "tests" => raw::TestFile,
            "TestDef" => raw::TestDef,
            "TestInput" => raw::TestInput,
            "TestHttpReply" => raw::TestHttpReply,
            "TestExpect" => raw::TestExpect,
            "TestMessage" => raw::TestMessage,
            "TestRequest" => raw::TestRequest,
        }
        let named: BTreeSet<&str> = EXAMPLES.iter().map(|(d, ..)| *d).collect();
        for definition in named.difference(&checked) {
            problems.push(format!("{definition}: no type to parse its examples as"));
        }
        assert!(problems.is_empty(), "{problems:#?}");
    }
}
