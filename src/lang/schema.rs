//! The JSON Schema of the gateway file and of scenario files (`switchboard schema`), for editors.

use super::raw;

/// The JSON Schema of the gateway file and of scenario files, for editors.
pub fn json_schema() -> serde_json::Value {
    let gateway = schemars::schema_for!(raw::GatewayFile);
    let scenario = schemars::schema_for!(raw::ScenarioFile);
    let tests = schemars::schema_for!(raw::TestFile);
    serde_json::json!({
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "Switchboard configuration",
        "description": "gateway.toml follows `gateway`; `*.test.toml` files follow `tests`; every other file in bot-configs/ follows `scenario`.",
        "definitions": { "gateway": gateway, "scenario": scenario, "tests": tests },
        "oneOf": [ { "$ref": "#/definitions/gateway" }, { "$ref": "#/definitions/scenario" }, { "$ref": "#/definitions/tests" } ]
    })
}

#[cfg(test)]
mod tests {
    use serde_json::Value as Json;

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
}
