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
