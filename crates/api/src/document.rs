//! The OpenAPI document as served at `/openapi.json` and published as `docs/openapi.json`:
//! what the handlers' annotations say ([`ApiDoc`]), completed with what is the same for
//! every operation — the security schemes, and the error answers each operation can give,
//! with their codes, the shared `Error` schema and the `Retry-After` header.
//!
//! The `400` codes of an operation are derived from its parameters and body schema (the
//! contract layer answers `missing_<field>` / `invalid_<field>`); the other codes are listed
//! per operation in [`ERRORS`].

use std::sync::OnceLock;

use serde_json::{json, Map, Value};
use utoipa::OpenApi;

use crate::contract::OWN_SHAPE;
use crate::routes::meta::ApiDoc;

/// Codes of the refusals of the call path ([`crate::place`]).
const PLACE_422: &[&str] = &[
    "invalid_destination",
    "destination_not_allowed",
    "no_route",
    "unknown_extension",
    "emergency_not_routable",
    "caller_id_not_allowed",
    "invalid_callback_url",
    "invalid_ring_timeout",
];

/// The error answers of each operation beyond 400 (schema), 401, 413, 415, 500 and the
/// store's 503, which [`complete`] adds where they apply.
pub const ERRORS: &[(&str, &str, u16, &[&str])] = &[
    ("post", "/v1/calls", 403, &["user_not_allowed"]),
    ("post", "/v1/calls", 404, &["user_not_found"]),
    ("post", "/v1/calls", 409, &["idempotency_key_in_progress"]),
    ("post", "/v1/calls", 422, &["idempotency_key_reused"]),
    ("post", "/v1/calls", 422, PLACE_422),
    ("post", "/v1/calls", 429, &["rate_limited"]),
    ("post", "/v1/calls", 503, &["unavailable"]),
    ("get", "/v1/calls", 400, &["invalid_cursor", "invalid_time"]),
    ("get", "/v1/calls/{call_id}", 404, &["call_not_found"]),
    (
        "post",
        "/v1/calls/{call_id}/hangup",
        404,
        &["call_not_found"],
    ),
    (
        "post",
        "/v1/calls/{call_id}/hangup",
        409,
        &["call_ended", "call_not_active"],
    ),
    // The node running the call is down or silent (the hang-up is forwarded to it).
    ("post", "/v1/calls/{call_id}/hangup", 503, &["unavailable"]),
    (
        "post",
        "/v1/calls/{call_id}/transfer",
        400,
        &["invalid_mode", "invalid_to"],
    ),
    (
        "post",
        "/v1/calls/{call_id}/transfer",
        404,
        &["call_not_found", "user_not_found"],
    ),
    (
        "post",
        "/v1/calls/{call_id}/transfer",
        409,
        &["call_not_in_progress", "codec_not_mixable"],
    ),
    (
        "post",
        "/v1/calls/{call_id}/transfer",
        422,
        &[
            "invalid_destination",
            "destination_not_allowed",
            "no_route",
            "unknown_extension",
            "target_unavailable",
        ],
    ),
    (
        "post",
        "/v1/calls/{call_id}/transfer/complete",
        404,
        &["call_not_found"],
    ),
    (
        "post",
        "/v1/calls/{call_id}/transfer/complete",
        409,
        &["call_not_in_progress"],
    ),
    (
        "post",
        "/v1/calls/{call_id}/transfer/cancel",
        404,
        &["call_not_found"],
    ),
    (
        "post",
        "/v1/calls/{call_id}/transfer/cancel",
        409,
        &["call_not_in_progress"],
    ),
    ("post", "/v1/calls/{call_id}/hold", 404, &["call_not_found"]),
    (
        "post",
        "/v1/calls/{call_id}/hold",
        409,
        &["call_not_in_progress"],
    ),
    (
        "post",
        "/v1/calls/{call_id}/unhold",
        404,
        &["call_not_found"],
    ),
    (
        "post",
        "/v1/calls/{call_id}/unhold",
        409,
        &["call_not_in_progress"],
    ),
    ("post", "/v1/calls/{call_id}/mute", 400, &["invalid_leg"]),
    ("post", "/v1/calls/{call_id}/mute", 404, &["call_not_found"]),
    (
        "post",
        "/v1/calls/{call_id}/mute",
        409,
        &["call_not_in_progress"],
    ),
    (
        "post",
        "/v1/calls/{call_id}/monitor",
        400,
        &["invalid_mode"],
    ),
    (
        "post",
        "/v1/calls/{call_id}/monitor",
        404,
        &["call_not_found", "user_not_found"],
    ),
    (
        "post",
        "/v1/calls/{call_id}/monitor",
        409,
        &["call_not_in_progress", "codec_not_mixable"],
    ),
    (
        "post",
        "/v1/calls/{call_id}/monitor",
        422,
        &["target_unavailable"],
    ),
    (
        "patch",
        "/v1/calls/{call_id}/monitor/{monitor_id}",
        400,
        &["invalid_mode"],
    ),
    (
        "patch",
        "/v1/calls/{call_id}/monitor/{monitor_id}",
        404,
        &["call_not_found", "monitor_not_found"],
    ),
    (
        "patch",
        "/v1/calls/{call_id}/monitor/{monitor_id}",
        409,
        &["call_not_in_progress"],
    ),
    (
        "delete",
        "/v1/calls/{call_id}/monitor/{monitor_id}",
        404,
        &["call_not_found", "monitor_not_found"],
    ),
    (
        "delete",
        "/v1/calls/{call_id}/monitor/{monitor_id}",
        409,
        &["call_not_in_progress"],
    ),
    (
        "get",
        "/v1/calls/{call_id}/recording",
        404,
        &["call_not_found", "recording_not_found"],
    ),
    (
        "get",
        "/v1/calls/{call_id}/recording",
        409,
        &["recording_not_ready"],
    ),
    ("get", "/v1/lookup/{number}", 422, &["invalid_destination"]),
    ("patch", "/v1/account", 400, &["invalid_field"]),
    ("post", "/v1/users", 400, &["invalid_field"]),
    ("post", "/v1/users", 409, &["already_exists"]),
    ("post", "/v1/users", 422, &["reference_not_found"]),
    ("get", "/v1/users/{user_id}", 404, &["user_not_found"]),
    ("patch", "/v1/users/{user_id}", 400, &["invalid_field"]),
    ("patch", "/v1/users/{user_id}", 404, &["user_not_found"]),
    ("patch", "/v1/users/{user_id}", 409, &["already_exists"]),
    ("delete", "/v1/users/{user_id}", 404, &["user_not_found"]),
    (
        "get",
        "/v1/users/{user_id}/devices",
        404,
        &["user_not_found"],
    ),
    (
        "post",
        "/v1/users/{user_id}/devices",
        400,
        &["invalid_field"],
    ),
    (
        "post",
        "/v1/users/{user_id}/devices",
        404,
        &["user_not_found"],
    ),
    (
        "post",
        "/v1/users/{user_id}/devices",
        409,
        &["already_exists"],
    ),
    (
        "get",
        "/v1/users/{user_id}/registrations",
        404,
        &["user_not_found"],
    ),
    ("patch", "/v1/devices/{username}", 400, &["invalid_field"]),
    (
        "patch",
        "/v1/devices/{username}",
        404,
        &["device_not_found"],
    ),
    (
        "delete",
        "/v1/devices/{username}",
        404,
        &["device_not_found"],
    ),
    ("post", "/v1/numbers", 400, &["invalid_field"]),
    ("post", "/v1/numbers", 409, &["already_exists"]),
    ("post", "/v1/numbers", 422, &["owner_not_found"]),
    ("get", "/v1/numbers/{number}", 404, &["number_not_found"]),
    ("patch", "/v1/numbers/{number}", 400, &["invalid_field"]),
    ("patch", "/v1/numbers/{number}", 404, &["number_not_found"]),
    ("patch", "/v1/numbers/{number}", 422, &["owner_not_found"]),
    ("delete", "/v1/numbers/{number}", 404, &["number_not_found"]),
    ("post", "/v1/trunks", 400, &["invalid_field"]),
    ("post", "/v1/trunks", 409, &["already_exists"]),
    ("post", "/v1/trunks", 422, &["srtp_needs_tls"]),
    ("patch", "/v1/trunks/{name}", 422, &["srtp_needs_tls"]),
    ("get", "/v1/trunks/{name}", 404, &["trunk_not_found"]),
    ("patch", "/v1/trunks/{name}", 400, &["invalid_field"]),
    ("patch", "/v1/trunks/{name}", 403, &["trunk_read_only"]),
    ("patch", "/v1/trunks/{name}", 404, &["trunk_not_found"]),
    (
        "patch",
        "/v1/trunks/{name}",
        409,
        &["credentials_incomplete"],
    ),
    ("delete", "/v1/trunks/{name}", 403, &["trunk_read_only"]),
    ("delete", "/v1/trunks/{name}", 404, &["trunk_not_found"]),
    ("patch", "/v1/account/limits", 400, &["invalid_field"]),
    ("patch", "/v1/account/limits", 404, &["account_not_found"]),
    (
        "post",
        "/v2/calls/make",
        404,
        &["number_not_found", "agent_not_found"],
    ),
    ("post", "/v2/calls/make", 422, &["agent_required"]),
    ("post", "/v2/calls/make", 422, PLACE_422),
    ("post", "/v2/calls/make", 429, &["rate_limited"]),
    ("post", "/v2/calls/make", 503, &["unavailable"]),
    ("post", "/v1/client_sessions", 404, &["user_not_found"]),
    (
        "delete",
        "/v1/client_sessions/{session_id}",
        404,
        &["client_session_not_found"],
    ),
    (
        "delete",
        "/v1/publishable_keys/{key}",
        404,
        &["publishable_key_not_found"],
    ),
    ("get", "/console/{asset}", 404, &["not_found"]),
];

/// The `401` codes of a client secret ([`crate::client::Caller`]), beside `unauthorized`.
const CLIENT_SECRET_401: &[&str] = &[
    "client_secret_invalid",
    "client_secret_expired",
    "publishable_key_invalid",
];

/// Routes that do not touch the store (no `500` / `503 store_unavailable`).
const NO_STORE: &[&str] = &[
    "/metrics",
    "/openapi.json",
    "/healthz",
    "/console",
    "/console/{asset}",
];

fn reason(status: u16) -> &'static str {
    match status {
        400 => "The request breaks this document (the message names the field)",
        401 => "Missing or wrong credentials",
        403 => "Not allowed",
        404 => "Not found",
        409 => "Conflicts with the object's state",
        413 => "The body is larger than 64 KiB",
        415 => "The body is not `application/json`",
        422 => "Well-formed but refused",
        429 => "A limit of the account was hit; retry after `Retry-After` seconds",
        500 => "Internal error",
        503 => "Unavailable for now; retry after `Retry-After` seconds",
        _ => "Error",
    }
}

/// The document as served: [`ApiDoc`] completed.
pub fn document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or(Value::Null);
        complete(&mut doc);
        doc
    })
}

fn security_schemes() -> Value {
    json!({
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "`Authorization: Bearer <secret>`: one of the account's API secrets. Native and admin API."
        },
        "key_pair": {
            "type": "http",
            "scheme": "basic",
            "description": "The account's API key and secret: HTTP Basic with the key as user name and the secret as password, or the JustCall form `Authorization: <key>:<secret>`. JustCall-style API."
        },
        "client_secret": {
            "type": "http",
            "scheme": "bearer",
            "description": "`Authorization: Bearer cs_…`: a client secret from `POST /v1/client_sessions`, always with `publishable_key`. Reaches one user's calls only: places, watches and hangs them up. Browser side."
        },
        "publishable_key": {
            "type": "apiKey",
            "in": "header",
            "name": "Dialbridge-Publishable-Key",
            "description": "`Dialbridge-Publishable-Key: pk_…`: a publishable key of the client secret's account; public, grants nothing on its own."
        },
        "c2c_api_key": {
            "type": "apiKey",
            "in": "query",
            "name": "api_key",
            "description": "One of the account's API secrets. Click-2-Call-style API."
        }
    })
}

/// The browser side (SPEC §9.3): the routes a client secret may use take it, with a
/// publishable key, as an alternative to a secret key; every operation with a secret key
/// takes `Dialbridge-Account` (a platform acting for a connected account); the console's
/// assets.
fn browser_side(doc: &mut Value) {
    let Some(paths) = doc["paths"].as_object_mut() else {
        return;
    };
    for (route, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for (_, op) in item.iter_mut() {
            let bearer = op["security"]
                .as_array()
                .is_some_and(|reqs| reqs.iter().any(|r| r.get("bearer").is_some()));
            if !bearer {
                continue;
            }
            if crate::client::CLIENT_SECRET_ROUTES.contains(&route.as_str()) {
                if let Some(reqs) = op["security"].as_array_mut() {
                    reqs.push(json!({"client_secret": [], "publishable_key": []}));
                }
            }
            let header = json!({
                "name": "Dialbridge-Account",
                "in": "header",
                "required": false,
                "description": "With a platform's secret key: the connected account (`acct_…`) to act for; `403 account_not_connected` for any other account",
                "schema": {"type": "string", "pattern": crate::schemas::ACCOUNT_ID}
            });
            match op["parameters"].as_array_mut() {
                Some(params) => params.push(header),
                None => op["parameters"] = json!([header]),
            }
        }
    }
    let assets = &mut doc["paths"]["/console/{asset}"]["get"];
    if assets.is_object() {
        for p in assets["parameters"].as_array_mut().into_iter().flatten() {
            if p["name"] == "asset" {
                p["schema"] = json!({"type": "string", "enum": ["console.js", "console.css", "sdk.js", "index.html", "phone.html", "phone", "phone.js", "jssip.js"]});
            }
        }
        assets["responses"]["200"]["content"] = json!({
            "text/javascript": {"schema": {"type": "string"}},
            "text/css": {"schema": {"type": "string"}},
            "text/html": {"schema": {"type": "string"}}
        });
    }
}

/// Every property, parameter and header name that a 400 of `op` can name, as codes.
fn validation_codes(doc: &Value, op: &Value) -> Vec<String> {
    let mut fields = Vec::new();
    let mut required = Vec::new();
    for p in op["parameters"].as_array().into_iter().flatten() {
        if let Some(n) = p["name"].as_str() {
            let n = n.to_ascii_lowercase().replace('-', "_");
            if p["required"].as_bool() == Some(true) {
                required.push(n.clone());
            }
            fields.push(n);
        }
    }
    let mut body = false;
    if let Some(schema) = op["requestBody"]["content"]["application/json"].get("schema") {
        body = true;
        let mut s = schema;
        if let Some(name) = s["$ref"]
            .as_str()
            .and_then(|r| r.strip_prefix("#/components/schemas/"))
        {
            s = &doc["components"]["schemas"][name];
        }
        for k in s["properties"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, _)| k)
        {
            fields.push(k.clone());
        }
        for r in s["required"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            required.push(r.to_owned());
        }
        for deps in s["dependentRequired"]
            .as_object()
            .into_iter()
            .flat_map(|m| m.values())
        {
            for d in deps
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                fields.push(d.to_owned());
            }
        }
    }
    let mut codes: Vec<String> = Vec::new();
    for r in &required {
        codes.push(format!("missing_{r}"));
    }
    for f in &fields {
        codes.push(format!("invalid_{f}"));
    }
    if body {
        codes.push("unknown_field".to_owned());
        codes.push("invalid_json".to_owned());
    }
    let params = || op["parameters"].as_array().into_iter().flatten();
    if params().any(|p| p["in"] == "path") {
        codes.push("invalid_path".to_owned());
    }
    // A query string that does not decode, or a parameter the operation does not take.
    if params().any(|p| p["in"] == "query") {
        codes.push("invalid_query".to_owned());
    }
    codes
}

fn error_response(status: u16, codes: &[String], justcall: bool) -> Value {
    let mut codes = codes.to_vec();
    codes.sort();
    codes.dedup();
    let listed = codes
        .iter()
        .map(|c| format!("`{c}`"))
        .collect::<Vec<_>>()
        .join(", ");
    let base = if justcall { "JustCallError" } else { "Error" };
    let mut r = json!({
        "description": format!("{}. Codes: {listed}", reason(status)),
        "content": {"application/json": {"schema": {
            "allOf": [
                {"$ref": format!("#/components/schemas/{base}")},
                {"type": "object", "properties": {"error": {"type": "object", "properties": {
                    "code": {"type": "string", "enum": codes}
                }}}}
            ]
        }}},
    });
    if status == 429 || status == 503 {
        r["headers"] = json!({"Retry-After": {
            "description": "Seconds to wait before trying again",
            "required": true,
            "schema": {"type": "integer", "minimum": 1}
        }});
    }
    r
}

/// Adds the security schemes, the `JustCallError` schema, the constraints JSON Schema
/// expresses between fields, and every operation's error answers.
/// An object schema that names no properties is a free-form object (metadata, legs, stats):
/// say so with `additionalProperties: true`, so that generated clients take any members
/// instead of none.
fn free_form_objects(v: &mut Value) {
    match v {
        Value::Object(map) => {
            let is_object = match map.get("type") {
                Some(Value::String(t)) => t == "object",
                Some(Value::Array(ts)) => ts.iter().any(|t| t == "object"),
                _ => false,
            };
            if is_object
                && !map.contains_key("properties")
                && !map.contains_key("additionalProperties")
                && !map.contains_key("$ref")
            {
                map.insert("additionalProperties".to_owned(), Value::Bool(true));
            }
            for child in map.values_mut() {
                free_form_objects(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(free_form_objects),
        _ => {}
    }
}

pub fn complete(doc: &mut Value) {
    let comps = &mut doc["components"];
    comps["securitySchemes"] = security_schemes();
    browser_side(doc);
    let comps = &mut doc["components"];
    comps["schemas"]["JustCallError"] = json!({
        "type": "object",
        "description": "An error of the JustCall-style API: the shared `Error` plus JustCall's `status` and `message`.",
        "required": ["status", "message", "error"],
        "properties": {
            "status": {"type": "string", "enum": ["error"]},
            "message": {"type": "string"},
            "error": {"$ref": "#/components/schemas/ErrorDetail"}
        }
    });
    comps["schemas"]["CreateTrunk"]["dependentRequired"] =
        json!({"username": ["password"], "password": ["username"]});
    // A failover code is a SIP final failure status (as the store checks it).
    for schema in ["CreateTrunk", "UpdateTrunk"] {
        let items = &mut comps["schemas"][schema]["properties"]["failover_codes"]["items"];
        if items.is_object() {
            items["minimum"] = json!(300);
            items["maximum"] = json!(699);
        }
    }
    let retry_after = json!({"Retry-After": {
        "description": "Seconds to wait before trying again",
        "required": true,
        "schema": {"type": "integer", "minimum": 1}
    }});
    doc["paths"]["/healthz"]["get"]["responses"]["503"]["headers"] = retry_after;
    doc["paths"]["/v1/calls"]["post"]["responses"]["202"]["headers"] = json!({
        "Idempotent-Replayed": {
            "description": "`true` when this is the stored answer to an earlier request with the same `Idempotency-Key` and body",
            "required": false,
            "schema": {"type": "string", "enum": ["true"]}
        }
    });
    doc["components"]["schemas"]["CallDetail"] = json!({
        "description": "A call with its legs, outcome, media stats, timeline and callbacks.",
        "allOf": [
            {"$ref": "#/components/schemas/Call"},
            {"$ref": "#/components/schemas/CallDetailParts"}
        ]
    });
    // The success answers, by the view that builds them (`crate::views`).
    for (method, route, status, schema) in [
        ("get", "/v1/calls/{call_id}", "200", "CallDetail"),
        ("get", "/v1/calls", "200", "CallList"),
        (
            "post",
            "/v1/calls/{call_id}/hangup",
            "202",
            "HangupRequested",
        ),
        ("get", "/v1/account", "200", "Account"),
        ("patch", "/v1/account", "200", "Account"),
        ("get", "/v1/users", "200", "UserList"),
        ("post", "/v1/users", "201", "User"),
        ("get", "/v1/users/{user_id}", "200", "User"),
        ("patch", "/v1/users/{user_id}", "200", "User"),
        ("get", "/v1/users/{user_id}/devices", "200", "DeviceList"),
        ("post", "/v1/users/{user_id}/devices", "201", "Device"),
        ("patch", "/v1/devices/{username}", "200", "Device"),
        (
            "get",
            "/v1/users/{user_id}/registrations",
            "200",
            "RegistrationList",
        ),
        ("get", "/v1/numbers", "200", "NumberList"),
        ("post", "/v1/numbers", "201", "Number"),
        ("get", "/v1/numbers/{number}", "200", "Number"),
        ("patch", "/v1/numbers/{number}", "200", "Number"),
        ("get", "/v1/trunks", "200", "TrunkList"),
        ("post", "/v1/trunks", "201", "Trunk"),
        ("get", "/v1/trunks/{name}", "200", "Trunk"),
        ("patch", "/v1/trunks/{name}", "200", "Trunk"),
    ] {
        let r = &mut doc["paths"][route][method]["responses"][status];
        if r.is_object() {
            r["content"] = json!({"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}});
        }
    }
    let snapshot = doc.clone();
    let Some(paths) = doc["paths"].as_object_mut() else {
        return;
    };
    for (route, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for (method, op) in item.iter_mut() {
            if OWN_SHAPE.contains(&route.as_str()) {
                continue;
            }
            let security: Vec<&str> = op["security"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_object)
                .flat_map(|m| m.keys().map(String::as_str))
                .collect();
            let justcall = security.contains(&"key_pair");
            let mut by_status: Map<String, Value> = Map::new();
            let mut add = |status: u16, codes: Vec<String>| {
                let e = by_status
                    .entry(status.to_string())
                    .or_insert_with(|| json!([]));
                if let Some(list) = e.as_array_mut() {
                    list.extend(codes.into_iter().map(Value::String));
                }
            };
            let v400 = validation_codes(&snapshot, op);
            if !v400.is_empty() {
                add(400, v400);
            }
            if !security.is_empty() {
                add(401, vec!["unauthorized".to_owned()]);
            }
            if security.contains(&"client_secret") {
                add(
                    401,
                    CLIENT_SECRET_401.iter().map(|c| (*c).to_owned()).collect(),
                );
            }
            if security.contains(&"bearer") {
                let mut codes = vec!["account_not_connected".to_owned()];
                if !security.contains(&"client_secret") {
                    codes.push("client_secret_not_allowed".to_owned());
                }
                add(403, codes);
            }
            if op.get("requestBody").is_some() {
                add(413, vec!["payload_too_large".to_owned()]);
                add(415, vec!["unsupported_media_type".to_owned()]);
            }
            if !NO_STORE.contains(&route.as_str()) {
                add(500, vec!["internal_error".to_owned()]);
                add(503, vec!["store_unavailable".to_owned()]);
            }
            for (m, r, status, codes) in ERRORS {
                if m == method && r == route {
                    add(*status, codes.iter().map(|c| (*c).to_owned()).collect());
                }
            }
            let responses = &mut op["responses"];
            for (status, codes) in by_status {
                let codes: Vec<String> = codes
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|c| c.as_str().map(str::to_owned))
                    .collect();
                let code: u16 = status.parse().unwrap_or(500);
                responses[status] = error_response(code, &codes, justcall);
            }
        }
    }
    free_form_objects(doc);
}

/// A short description of a schema: its type, reference or constraints.
fn summary(s: &Value) -> String {
    if let Some(r) = s["$ref"].as_str() {
        let name = r.rsplit('/').next().unwrap_or(r);
        return format!("[{name}](#{})", name.to_ascii_lowercase());
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(options) = s[key].as_array() {
            return options.iter().map(summary).collect::<Vec<_>>().join(" or ");
        }
    }
    if let Some(all) = s["allOf"].as_array() {
        return all.first().map(summary).unwrap_or_default();
    }
    let mut out = match &s["type"] {
        Value::String(t) => t.clone(),
        Value::Array(ts) => ts
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(" or "),
        _ => "any".to_owned(),
    };
    if s["type"] == "array"
        || s["type"]
            .as_array()
            .is_some_and(|t| t.contains(&json!("array")))
    {
        out = format!("array of {}", summary(&s["items"]));
    }
    let mut facts = Vec::new();
    if let Some(values) = s["enum"].as_array() {
        let listed: Vec<String> = values
            .iter()
            .map(|v| {
                format!(
                    "`{}`",
                    v.as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| v.to_string())
                )
            })
            .collect();
        facts.push(if listed.len() > 16 {
            format!("one of {} values (see the JSON document)", listed.len())
        } else {
            format!("one of {}", listed.join(", "))
        });
    }
    if let Some(p) = s["pattern"].as_str() {
        let long = p.chars().count() > 80;
        facts.push(if long {
            "pattern: see the JSON document".to_owned()
        } else {
            format!("pattern `{p}`")
        });
    }
    for (k, word) in [
        ("minLength", "min length"),
        ("maxLength", "max length"),
        ("minimum", "min"),
        ("maximum", "max"),
        ("exclusiveMinimum", "above"),
        ("minItems", "min items"),
        ("maxItems", "max items"),
    ] {
        if let Some(v) = s.get(k) {
            facts.push(format!("{word} {v}"));
        }
    }
    if !facts.is_empty() {
        out = format!("{out}; {}", facts.join("; "));
    }
    out
}

fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// The document rendered as Markdown (`docs/api.md`): operations with their parameters,
/// bodies, answers and error codes, then the schemas. Generated with `docs/openapi.json`.
pub fn markdown(doc: &Value) -> String {
    let mut md = String::new();
    md.push_str("# dialbridge REST API\n\n");
    md.push_str("<!-- Generated from the code with docs/openapi.json by the test `published_openapi_document_is_current` (crates/api/tests/api/meta.rs); do not edit. -->\n\n");
    md.push_str(&format!(
        "{}\n\nThe machine-readable document is [`openapi.json`](openapi.json) (OpenAPI {}), also served at `GET /openapi.json`. \
         Every request is checked against it before it is handled: a request that breaks it is answered `400` with the field named.\n\n",
        doc["info"]["description"].as_str().unwrap_or(""),
        doc["openapi"].as_str().unwrap_or("3")
    ));
    md.push_str("## Authentication\n\n| Scheme | How |\n|---|---|\n");
    for (name, s) in doc["components"]["securitySchemes"]
        .as_object()
        .into_iter()
        .flatten()
    {
        md.push_str(&format!(
            "| `{name}` | {} |\n",
            cell(s["description"].as_str().unwrap_or(""))
        ));
    }
    md.push_str("\n## Operations\n\n");
    let methods = ["get", "post", "patch", "put", "delete"];
    for (route, item) in doc["paths"].as_object().into_iter().flatten() {
        for m in methods {
            let Some(op) = item.get(m) else { continue };
            md.push_str(&format!("### `{} {route}`\n\n", m.to_ascii_uppercase()));
            if let Some(d) = op["description"].as_str().or(op["summary"].as_str()) {
                md.push_str(&format!("{d}\n\n"));
            }
            let security: Vec<String> = op["security"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_object)
                .flat_map(|o| o.keys().map(|k| format!("`{k}`")))
                .collect();
            if !security.is_empty() {
                md.push_str(&format!("Authentication: {}\n\n", security.join(", ")));
            }
            if let Some(params) = op["parameters"].as_array().filter(|p| !p.is_empty()) {
                md.push_str(
                    "| Parameter | In | Required | Schema | Description |\n|---|---|---|---|---|\n",
                );
                for p in params {
                    md.push_str(&format!(
                        "| `{}` | {} | {} | {} | {} |\n",
                        p["name"].as_str().unwrap_or(""),
                        p["in"].as_str().unwrap_or(""),
                        if p["required"] == true { "yes" } else { "no" },
                        cell(&summary(&p["schema"])),
                        cell(p["description"].as_str().unwrap_or("")),
                    ));
                }
                md.push('\n');
            }
            if let Some(body) = op["requestBody"]["content"]["application/json"].get("schema") {
                md.push_str(&format!("Body (`application/json`): {}\n\n", summary(body)));
            }
            md.push_str("| Status | Answer |\n|---|---|\n");
            for (status, r) in op["responses"].as_object().into_iter().flatten() {
                let mut text = cell(r["description"].as_str().unwrap_or(""));
                if let Some(h) = r["headers"].as_object() {
                    let names: Vec<String> = h.keys().map(|k| format!("`{k}`")).collect();
                    text.push_str(&format!(" (headers: {})", names.join(", ")));
                }
                md.push_str(&format!("| {status} | {text} |\n"));
            }
            md.push('\n');
        }
    }
    md.push_str("## Schemas\n\n");
    for (name, s) in doc["components"]["schemas"]
        .as_object()
        .into_iter()
        .flatten()
    {
        md.push_str(&format!("### {name}\n\n"));
        if let Some(d) = s["description"].as_str() {
            md.push_str(&format!("{d}\n\n"));
        }
        match s["properties"].as_object() {
            Some(props) => {
                let required: Vec<&str> = s["required"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                md.push_str("| Field | Required | Schema | Description |\n|---|---|---|---|\n");
                for (field, p) in props {
                    let desc = p["description"]
                        .as_str()
                        .or_else(|| {
                            p["oneOf"]
                                .as_array()
                                .and_then(|o| o.iter().find_map(|x| x["description"].as_str()))
                        })
                        .unwrap_or("");
                    md.push_str(&format!(
                        "| `{field}` | {} | {} | {} |\n",
                        if required.contains(&field.as_str()) {
                            "yes"
                        } else {
                            "no"
                        },
                        cell(&summary(p)),
                        cell(desc),
                    ));
                }
                if s["additionalProperties"] == false {
                    md.push_str("\nNo other fields are accepted.\n");
                }
                if let Some(deps) = s["dependentRequired"].as_object() {
                    for (k, v) in deps {
                        md.push_str(&format!(
                            "\n`{k}` requires {}.\n",
                            v.as_array()
                                .into_iter()
                                .flatten()
                                .filter_map(Value::as_str)
                                .map(|x| format!("`{x}`"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ));
                    }
                }
                md.push('\n');
            }
            None => md.push_str(&format!("{}\n\n", summary(s))),
        }
    }
    md
}
