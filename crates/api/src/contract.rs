//! The OpenAPI document as the contract: every request is checked against the document the
//! API serves, before any handler sees it, so the two cannot drift.
//!
//! [`enforce`] looks up the operation of the matched route in [`crate::document::document`], authenticates the
//! caller with the operation's security scheme (401 first), then checks the path, query and
//! header parameters and the JSON body against their schemas. A request that breaks the
//! document is answered `400` naming the field: `missing_<field>` ("<field> is required") for a
//! required field that is absent or `null`, `invalid_<field>` otherwise ("Invalid <field>
//! format" for a pattern), `unknown_field` for a body field the schema does not list, and
//! `invalid_json` for a body that is not a JSON object. Integral JSON numbers written as
//! floats (`42.0`) are integers, as JSON Schema says, and reach the handler as such.
//!
//! The routes a browser may use ([`crate::client::CLIENT_SECRET_ROUTES`]) also accept a
//! client secret with its publishable key, authenticated as their handlers do
//! ([`crate::client::Caller`]).
//!
//! The Click-2-Call-style routes answer in their own always-`200` shape and are not checked
//! here ([`OWN_SHAPE`]); the JustCall-style route answers its errors in its own shape.
//!
//! The validator knows the subset of JSON Schema that the document uses; a unit test walks
//! the whole document and fails on any keyword it does not know.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, MatchedPath, RawPathParams, Request, State};
use axum::http::{header, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use regex::Regex;
use serde_json::{Map, Value};

use crate::client::{Caller, Scope};
use crate::error::{ApiError, JustCallError};
use crate::http::{BearerAccount, JsonBytes, KeyPairAccount};
use crate::state::Shared;

/// Routes that answer every request with `200` in their own shape (SPEC §5, Click-2-Call).
pub const OWN_SHAPE: &[&str] = &["/click2call", "/click2call/status/{request_id}"];

/// How an operation authenticates its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Security {
    None,
    Bearer,
    /// A secret key, or a client secret with its publishable key (the routes a browser may
    /// use, [`crate::client::CLIENT_SECRET_ROUTES`]).
    BearerOrClient,
    KeyPair,
}

#[derive(Debug)]
struct Param {
    name: String,
    required: bool,
    schema: Value,
}

#[derive(Debug)]
struct Operation {
    security: Security,
    path: Vec<Param>,
    query: Vec<Param>,
    headers: Vec<Param>,
    /// The body's schema, when the operation takes one.
    body: Option<Value>,
}

/// The document, its operations by (method, route), its compiled patterns and error codes.
#[derive(Debug)]
pub struct Contract {
    doc: Value,
    ops: HashMap<(Method, String), Operation>,
    patterns: HashMap<String, Regex>,
    codes: HashMap<String, &'static str>,
}

/// The contract of this API, built from [`crate::document::document`] once.
pub fn contract() -> &'static Contract {
    static CONTRACT: OnceLock<Contract> = OnceLock::new();
    CONTRACT.get_or_init(|| Contract::new(crate::document::document().clone()))
}

/// A request that breaks the document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The field, as a path: `user_id`, `devices[0].username`, `limit`, `Idempotency-Key`.
    pub field: String,
    pub kind: ViolationKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ViolationKind {
    /// Required and absent or `null`.
    Missing,
    /// Not a field of the schema.
    Unknown,
    /// Does not match the schema's pattern.
    Format,
    /// Anything else, with the reason (`must be at most 100`).
    Invalid(String),
}

impl Violation {
    fn new(field: &str, kind: ViolationKind) -> Violation {
        Violation {
            field: field.to_owned(),
            kind,
        }
    }

    /// The top-level name of the field (`devices` for `devices[0].username`).
    pub fn top(&self) -> &str {
        let end = self.field.find(['.', '[']).unwrap_or(self.field.len());
        &self.field[..end]
    }

    /// The message of the 400 answer.
    pub fn message(&self) -> String {
        match &self.kind {
            ViolationKind::Missing => format!("{} is required", self.field),
            ViolationKind::Unknown => format!("{} is not a field of this request", self.field),
            ViolationKind::Format => format!("Invalid {} format", self.field),
            ViolationKind::Invalid(why) => format!("{} {why}", self.field),
        }
    }
}

fn code_name(field: &str) -> String {
    field.to_ascii_lowercase().replace('-', "_")
}

impl Contract {
    fn new(doc: Value) -> Contract {
        let mut c = Contract {
            doc,
            ops: HashMap::new(),
            patterns: HashMap::new(),
            codes: HashMap::new(),
        };
        let mut patterns = Vec::new();
        collect_patterns(&c.doc, &mut patterns);
        for p in patterns {
            if let Ok(re) = Regex::new(&p) {
                c.patterns.insert(p, re);
            }
        }
        let mut names = vec!["query".to_owned(), "path".to_owned()];
        collect_field_names(&c.doc, &mut names);
        for n in names {
            let n = code_name(&n);
            for code in [format!("missing_{n}"), format!("invalid_{n}")] {
                c.codes
                    .entry(code)
                    .or_insert_with_key(|k| Box::leak(k.clone().into_boxed_str()));
            }
        }
        let paths = c.doc["paths"].as_object().cloned().unwrap_or_default();
        for (route, item) in paths {
            let Some(item) = item.as_object() else {
                continue;
            };
            for (method, op) in item {
                let Ok(m) = method.to_ascii_uppercase().parse::<Method>() else {
                    continue;
                };
                let operation = c.operation(op);
                c.ops.insert((m, route.clone()), operation);
            }
        }
        c
    }

    /// The document as served.
    pub fn document(&self) -> &Value {
        &self.doc
    }

    fn resolve<'a>(&'a self, schema: &'a Value) -> &'a Value {
        let mut s = schema;
        for _ in 0..8 {
            match s.get("$ref").and_then(Value::as_str) {
                Some(r) => match r.strip_prefix("#/components/schemas/") {
                    Some(name) => s = &self.doc["components"]["schemas"][name],
                    None => return s,
                },
                None => return s,
            }
        }
        s
    }

    fn operation(&self, op: &Value) -> Operation {
        let security = match op["security"].as_array() {
            Some(reqs) if reqs.iter().any(|r| r.get("client_secret").is_some()) => {
                Security::BearerOrClient
            }
            Some(reqs) if reqs.iter().any(|r| r.get("bearer").is_some()) => Security::Bearer,
            Some(reqs) if reqs.iter().any(|r| r.get("key_pair").is_some()) => Security::KeyPair,
            _ => Security::None,
        };
        let mut o = Operation {
            security,
            path: Vec::new(),
            query: Vec::new(),
            headers: Vec::new(),
            body: None,
        };
        for p in op["parameters"].as_array().into_iter().flatten() {
            let param = Param {
                name: p["name"].as_str().unwrap_or_default().to_owned(),
                required: p["required"].as_bool().unwrap_or(false),
                schema: p["schema"].clone(),
            };
            match p["in"].as_str() {
                Some("path") => o.path.push(param),
                Some("query") => o.query.push(param),
                Some("header") => o.headers.push(param),
                _ => {}
            }
        }
        if let Some(schema) = op["requestBody"]["content"]["application/json"].get("schema") {
            o.body = Some(schema.clone());
        }
        o
    }

    /// The error code for a violation: `missing_<field>` / `invalid_<field>` (interned when
    /// the contract was built), `unknown_field`.
    fn code(&self, v: &Violation) -> &'static str {
        let name = code_name(v.top());
        let code = match v.kind {
            ViolationKind::Unknown => return "unknown_field",
            // A field inside a top-level one makes the top-level one invalid.
            ViolationKind::Missing if v.top() == v.field => format!("missing_{name}"),
            _ => format!("invalid_{name}"),
        };
        self.codes.get(&code).copied().unwrap_or("invalid_request")
    }

    fn bad_request(&self, v: &Violation) -> ApiError {
        ApiError::bad_request(self.code(v), v.message())
    }

    /// Checks `value` against `schema`; the first violation found, by field.
    pub fn validate(&self, schema: &Value, value: &Value, field: &str) -> Result<(), Violation> {
        let schema = self.resolve(schema);
        let Some(s) = schema.as_object() else {
            return Ok(());
        };
        let invalid = |why: String| Err(Violation::new(field, ViolationKind::Invalid(why)));
        if let Some(all) = s.get("allOf").and_then(Value::as_array) {
            for sub in all {
                self.validate(sub, value, field)?;
            }
        }
        for (key, exactly_one) in [("oneOf", true), ("anyOf", false)] {
            let Some(options) = s.get(key).and_then(Value::as_array) else {
                continue;
            };
            let results: Vec<Result<(), Violation>> = options
                .iter()
                .map(|sub| self.validate(sub, value, field))
                .collect();
            let passed = results.iter().filter(|r| r.is_ok()).count();
            if passed == 0 || (exactly_one && passed > 1) {
                // The reason of the alternative that is not `null` (for `T | null`).
                let not_null = options
                    .iter()
                    .zip(results)
                    .filter(|(o, _)| o.get("type") != Some(&Value::String("null".into())))
                    .find_map(|(_, r)| r.err());
                return Err(not_null.unwrap_or(Violation::new(
                    field,
                    ViolationKind::Invalid("does not match the schema".to_owned()),
                )));
            }
        }
        if let Some(ty) = s.get("type") {
            let types: Vec<&str> = match ty {
                Value::String(t) => vec![t.as_str()],
                Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
                _ => Vec::new(),
            };
            if !types.iter().any(|t| has_type(value, t)) {
                // (A required field given as null is "missing": see `validate_object`.)
                let not = if value.is_null() { ", not null" } else { "" };
                return invalid(format!("must be {}{not}", describe_types(&types)));
            }
        }
        if value.is_null() {
            return Ok(());
        }
        if let Some(options) = s.get("enum").and_then(Value::as_array) {
            let listed = options.contains(value)
                || (value.is_number() && options.iter().any(|o| same_number(o, value)));
            if !listed {
                let listed: Vec<String> = options.iter().map(|o| o.to_string()).collect();
                return invalid(if listed.len() <= 12 {
                    format!("must be one of {}", listed.join(", "))
                } else {
                    format!(
                        "is {value}, which is not one of the {} values the API document lists",
                        listed.len()
                    )
                });
            }
        }
        match value {
            Value::String(text) => self.validate_string(s, text, field)?,
            Value::Number(_) => validate_number(s, value, field)?,
            Value::Array(items) => {
                let n = items.len() as u64;
                if let Some(min) = s.get("minItems").and_then(Value::as_u64) {
                    if n < min {
                        return invalid(format!("must have at least {min} items"));
                    }
                }
                if let Some(max) = s.get("maxItems").and_then(Value::as_u64) {
                    if n > max {
                        return invalid(format!("must have at most {max} items"));
                    }
                }
                if let Some(item_schema) = s.get("items") {
                    for (i, item) in items.iter().enumerate() {
                        self.validate(item_schema, item, &format!("{field}[{i}]"))?;
                    }
                }
            }
            Value::Object(map) => self.validate_object(s, map, field)?,
            _ => {}
        }
        Ok(())
    }

    fn validate_string(
        &self,
        s: &Map<String, Value>,
        text: &str,
        field: &str,
    ) -> Result<(), Violation> {
        let invalid = |why: String| Err(Violation::new(field, ViolationKind::Invalid(why)));
        let chars = text.chars().count() as u64;
        if let Some(min) = s.get("minLength").and_then(Value::as_u64) {
            if chars < min {
                if min == 1 {
                    return invalid("must not be empty".to_owned());
                }
                return invalid(format!("must be at least {min} characters long"));
            }
        }
        if let Some(max) = s.get("maxLength").and_then(Value::as_u64) {
            if chars > max {
                return invalid(format!("must be at most {max} characters long"));
            }
        }
        if let Some(p) = s.get("pattern").and_then(Value::as_str) {
            // A pattern that did not compile matches nothing (a unit test forbids it).
            if !self.patterns.get(p).is_some_and(|re| re.is_match(text)) {
                return Err(Violation::new(field, ViolationKind::Format));
            }
        }
        Ok(())
    }

    fn validate_object(
        &self,
        s: &Map<String, Value>,
        map: &Map<String, Value>,
        field: &str,
    ) -> Result<(), Violation> {
        let at = |key: &str| {
            if field.is_empty() {
                key.to_owned()
            } else {
                format!("{field}.{key}")
            }
        };
        let props = s.get("properties").and_then(Value::as_object);
        for req in s
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(name) = req.as_str() {
                if map.get(name).is_none_or(Value::is_null) {
                    return Err(Violation::new(&at(name), ViolationKind::Missing));
                }
            }
        }
        if let Some(deps) = s.get("dependentRequired").and_then(Value::as_object) {
            for (key, needs) in deps {
                if map.get(key).is_none_or(Value::is_null) {
                    continue;
                }
                for need in needs
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                {
                    if map.get(need).is_none_or(Value::is_null) {
                        return Err(Violation::new(
                            &at(need),
                            ViolationKind::Invalid(format!("is required when {key} is given")),
                        ));
                    }
                }
            }
        }
        let closed = s.get("additionalProperties") == Some(&Value::Bool(false));
        for (key, v) in map {
            match props.and_then(|p| p.get(key)) {
                Some(prop) => self.validate(prop, v, &at(key))?,
                None if closed => return Err(Violation::new(&at(key), ViolationKind::Unknown)),
                None => {}
            }
        }
        Ok(())
    }

    /// Checks a request's path, query and header parameters against `op`.
    fn check_parts(
        &self,
        op: &Operation,
        path: &[(String, String)],
        query: Option<&str>,
        headers: &axum::http::HeaderMap,
    ) -> Result<(), Violation> {
        for p in &op.path {
            let Some((_, raw)) = path.iter().find(|(n, _)| *n == p.name) else {
                return Err(Violation::new(&p.name, ViolationKind::Missing));
            };
            self.validate(&p.schema, &typed(self.resolve(&p.schema), raw), &p.name)?;
        }
        let pairs: Vec<(String, String)> = match query {
            None | Some("") => Vec::new(),
            Some(q) => axum::extract::Query::<Vec<(String, String)>>::try_from_uri(
                &format!("/?{q}").parse().map_err(|_| {
                    Violation::new(
                        "query",
                        ViolationKind::Invalid("is not a valid query string".into()),
                    )
                })?,
            )
            .map(|q| q.0)
            .map_err(|_| {
                Violation::new(
                    "query",
                    ViolationKind::Invalid("is not a valid query string".into()),
                )
            })?,
        };
        for p in &op.query {
            let mut given = pairs.iter().filter(|(n, _)| *n == p.name);
            match (given.next(), given.next()) {
                (None, _) if p.required => {
                    return Err(Violation::new(&p.name, ViolationKind::Missing))
                }
                (None, _) => {}
                (Some(_), Some(_)) => {
                    return Err(Violation::new(
                        &p.name,
                        ViolationKind::Invalid("is given more than once".to_owned()),
                    ))
                }
                (Some((_, raw)), None) => {
                    self.validate(&p.schema, &typed(self.resolve(&p.schema), raw), &p.name)?
                }
            }
        }
        for p in &op.headers {
            match headers.get(p.name.as_str()) {
                None if p.required => return Err(Violation::new(&p.name, ViolationKind::Missing)),
                None => {}
                Some(v) => {
                    let Ok(text) = v.to_str() else {
                        return Err(Violation::new(&p.name, ViolationKind::Format));
                    };
                    self.validate(&p.schema, &typed(self.resolve(&p.schema), text), &p.name)?;
                }
            }
        }
        Ok(())
    }

    /// Checks a JSON body against `op`'s schema; the body as handed on.
    pub fn check_body(&self, schema: &Value, bytes: &[u8]) -> Result<Vec<u8>, ApiError> {
        let not_object =
            || ApiError::bad_request("invalid_json", "Request body must be a JSON object");
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(not_object());
        }
        let mut value: Value = serde_json::from_slice(bytes).map_err(|e| {
            ApiError::bad_request("invalid_json", format!("Invalid JSON body: {e}"))
        })?;
        if !value.is_object() {
            return Err(not_object());
        }
        self.validate(schema, &value, "")
            .map_err(|v| self.bad_request(&v))?;
        integral_floats_as_integers(&mut value);
        Ok(value.to_string().into_bytes())
    }
}

fn has_type(value: &Value, ty: &str) -> bool {
    match ty {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "string" => value.is_string(),
        "object" => value.is_object(),
        "array" => value.is_array(),
        "number" => value.is_number(),
        "integer" => is_integral(value),
        _ => false,
    }
}

fn is_integral(value: &Value) -> bool {
    match value {
        Value::Number(n) => {
            n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0)
        }
        _ => false,
    }
}

fn same_number(a: &Value, b: &Value) -> bool {
    matches!((a.as_f64(), b.as_f64()), (Some(x), Some(y)) if x == y)
}

fn describe_types(types: &[&str]) -> String {
    let words: Vec<&str> = types
        .iter()
        .map(|t| match *t {
            "null" => "null",
            "boolean" => "a boolean",
            "string" => "a string",
            "object" => "an object",
            "array" => "an array",
            "number" => "a number",
            "integer" => "an integer",
            other => other,
        })
        .collect();
    words.join(" or ")
}

fn validate_number(s: &Map<String, Value>, value: &Value, field: &str) -> Result<(), Violation> {
    let invalid = |why: String| Err(Violation::new(field, ViolationKind::Invalid(why)));
    let x = value.as_f64().unwrap_or(f64::NAN);
    let fmt = |b: &Value| b.to_string();
    let low = s
        .get("minimum")
        .filter(|m| m.as_f64().is_some_and(|m| x < m));
    let high = s
        .get("maximum")
        .filter(|m| m.as_f64().is_some_and(|m| x > m));
    if low.is_some() || high.is_some() {
        return invalid(match (s.get("minimum"), s.get("maximum")) {
            (Some(lo), Some(hi)) => format!("must be between {} and {}", fmt(lo), fmt(hi)),
            (Some(lo), None) => format!("must be at least {}", fmt(lo)),
            (None, Some(hi)) => format!("must be at most {}", fmt(hi)),
            (None, None) => "is out of range".to_owned(),
        });
    }
    if let Some(min) = s.get("exclusiveMinimum") {
        if min.as_f64().is_some_and(|m| x <= m) {
            return invalid(match s.get("maximum") {
                Some(hi) => format!("must be above {} and at most {}", fmt(min), fmt(hi)),
                None => format!("must be above {}", fmt(min)),
            });
        }
    }
    if let Some(max) = s.get("exclusiveMaximum") {
        if max.as_f64().is_some_and(|m| x >= m) {
            return invalid(format!("must be below {}", fmt(max)));
        }
    }
    let (lo, hi) = match s.get("format").and_then(Value::as_str) {
        Some("int32") => (f64::from(i32::MIN), f64::from(i32::MAX)),
        Some("uint32") => (0.0, f64::from(u32::MAX)),
        Some("int64") => (i64::MIN as f64, i64::MAX as f64),
        Some("uint64") => (0.0, u64::MAX as f64),
        _ => (f64::NEG_INFINITY, f64::INFINITY),
    };
    if x < lo || x > hi || !x.is_finite() {
        return invalid("is out of range".to_owned());
    }
    Ok(())
}

/// A parameter's text as the JSON value its schema types it as (a number for an integer
/// parameter, when it parses as one); left a string otherwise, for the type check to refuse.
fn typed(schema: &Value, raw: &str) -> Value {
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if types.contains(&"string") {
        return Value::String(raw.to_owned());
    }
    if types.contains(&"integer") || types.contains(&"number") {
        if let Ok(n) = raw.parse::<i64>() {
            return Value::from(n);
        }
        if types.contains(&"number") {
            if let Some(n) = raw
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
            {
                return Value::Number(n);
            }
        }
    }
    if types.contains(&"boolean") {
        match raw {
            "true" => return Value::Bool(true),
            "false" => return Value::Bool(false),
            _ => {}
        }
    }
    Value::String(raw.to_owned())
}

/// `42.0` -> `42`, everywhere in `v`, so that integer fields deserialize.
fn integral_floats_as_integers(v: &mut Value) {
    match v {
        Value::Number(n) if !n.is_i64() && !n.is_u64() => {
            if let Some(f) = n.as_f64() {
                if f.fract() == 0.0 && f >= i64::MIN as f64 && f < i64::MAX as f64 {
                    *v = Value::from(f as i64);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_floats_as_integers),
        Value::Object(map) => map.values_mut().for_each(integral_floats_as_integers),
        _ => {}
    }
}

fn collect_patterns(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            if let Some(Value::String(p)) = map.get("pattern") {
                out.push(p.clone());
            }
            map.values().for_each(|x| collect_patterns(x, out));
        }
        Value::Array(items) => items.iter().for_each(|x| collect_patterns(x, out)),
        _ => {}
    }
}

/// Every property and parameter name of the document (for the error codes).
fn collect_field_names(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            if let Some(Value::Object(props)) = map.get("properties") {
                out.extend(props.keys().cloned());
            }
            if let (Some(Value::String(name)), Some(Value::String(_))) =
                (map.get("name"), map.get("in"))
            {
                out.push(name.clone());
            }
            map.values().for_each(|x| collect_field_names(x, out));
        }
        Value::Array(items) => items.iter().for_each(|x| collect_field_names(x, out)),
        _ => {}
    }
}

/// The authenticated caller, put in the request by [`enforce`] for the extractors.
#[derive(Debug, Clone)]
pub(crate) enum Authenticated {
    Bearer(store::Account),
    /// A client secret: the account of its publishable key, and the session's user.
    Client(store::Account, String),
    KeyPair(store::Account),
}

fn answer(security: Security, e: ApiError) -> Response {
    match security {
        Security::KeyPair => JustCallError(e).into_response(),
        _ => e.into_response(),
    }
}

/// The middleware: authenticates, then checks the request against the document.
pub async fn enforce(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let c = contract();
    let Some(route) = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
    else {
        return next.run(req).await;
    };
    if OWN_SHAPE.contains(&route.as_str()) {
        return next.run(req).await;
    }
    let Some(op) = c.ops.get(&(req.method().clone(), route)) else {
        return next.run(req).await;
    };
    let (mut parts, body) = req.into_parts();
    match op.security {
        Security::None => {}
        Security::Bearer => match BearerAccount::from_request_parts(&mut parts, &shared).await {
            Ok(BearerAccount(a)) => {
                parts.extensions.insert(Authenticated::Bearer(a));
            }
            Err(e) => return answer(op.security, e),
        },
        Security::BearerOrClient => match Caller::from_request_parts(&mut parts, &shared).await {
            Ok(Caller {
                account,
                scope: Scope::Account,
            }) => {
                parts.extensions.insert(Authenticated::Bearer(account));
            }
            Ok(Caller {
                account,
                scope: Scope::User(user),
            }) => {
                parts
                    .extensions
                    .insert(Authenticated::Client(account, user));
            }
            Err(e) => return answer(op.security, e),
        },
        Security::KeyPair => match KeyPairAccount::from_request_parts(&mut parts, &shared).await {
            Ok(KeyPairAccount(a)) => {
                parts.extensions.insert(Authenticated::KeyPair(a));
            }
            Err(e) => return e.into_response(),
        },
    }
    let path: Vec<(String, String)> = match RawPathParams::from_request_parts(&mut parts, &shared)
        .await
    {
        Ok(params) => params
            .iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        Err(_) => {
            return answer(
                op.security,
                ApiError::bad_request("invalid_path", "The path is not valid UTF-8 once decoded"),
            )
        }
    };
    if let Err(v) = c.check_parts(op, &path, parts.uri.query(), &parts.headers) {
        return answer(op.security, c.bad_request(&v));
    }
    let Some(schema) = &op.body else {
        return next.run(Request::from_parts(parts, body)).await;
    };
    // The body, read under the API's content-type and size rules (415, 413).
    let mut tmp = Request::new(body);
    *tmp.headers_mut() = parts.headers.clone();
    *tmp.extensions_mut() = parts.extensions.clone();
    let bytes = match JsonBytes::from_request(tmp, &shared).await {
        Ok(JsonBytes(b)) => b,
        Err(e) => return answer(op.security, e),
    };
    match c.check_body(schema, &bytes) {
        Ok(checked) => {
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(checked.len()));
            next.run(Request::from_parts(parts, Body::from(checked)))
                .await
        }
        Err(e) => answer(op.security, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Every keyword of every schema in the document is one the validator applies or one
    /// that only annotates.
    #[test]
    fn the_validator_knows_every_keyword_of_the_document() {
        const APPLIED: &[&str] = &[
            "type",
            "enum",
            "properties",
            "required",
            "additionalProperties",
            "items",
            "minItems",
            "maxItems",
            "minLength",
            "maxLength",
            "pattern",
            "minimum",
            "maximum",
            "exclusiveMinimum",
            "exclusiveMaximum",
            "dependentRequired",
            "$ref",
            "format",
            "oneOf",
            "anyOf",
            "allOf",
        ];
        const ANNOTATIONS: &[&str] = &[
            "description",
            "title",
            "example",
            "examples",
            "default",
            "deprecated",
            "readOnly",
            "writeOnly",
        ];
        fn walk(schema: &Value, at: &str, bad: &mut Vec<String>) {
            let Some(map) = schema.as_object() else {
                return;
            };
            for (k, v) in map {
                if !APPLIED.contains(&k.as_str()) && !ANNOTATIONS.contains(&k.as_str()) {
                    bad.push(format!("{at}: {k}"));
                }
                match k.as_str() {
                    "properties" => {
                        for (name, p) in v.as_object().into_iter().flatten() {
                            walk(p, &format!("{at}.{name}"), bad);
                        }
                    }
                    "items" => walk(v, &format!("{at}[]"), bad),
                    "oneOf" | "anyOf" | "allOf" => {
                        for sub in v.as_array().into_iter().flatten() {
                            walk(sub, at, bad);
                        }
                    }
                    "format"
                        if !["int32", "int64", "uint32", "uint64", "double", "float"]
                            .contains(&v.as_str().unwrap_or("")) =>
                    {
                        bad.push(format!("{at}: format {v}"));
                    }
                    _ => {}
                }
            }
        }
        let c = contract();
        let mut bad = Vec::new();
        for ((m, route), _) in c.ops.iter() {
            let op = &c.doc["paths"][route][m.as_str().to_ascii_lowercase()];
            for p in op["parameters"].as_array().into_iter().flatten() {
                walk(
                    &p["schema"],
                    &format!("{m} {route} {}", p["name"]),
                    &mut bad,
                );
            }
            if let Some(s) = op["requestBody"]["content"]["application/json"].get("schema") {
                walk(s, &format!("{m} {route} body"), &mut bad);
            }
        }
        for (name, s) in c.doc["components"]["schemas"]
            .as_object()
            .into_iter()
            .flatten()
        {
            walk(s, name, &mut bad);
        }
        assert!(
            bad.is_empty(),
            "keywords the validator does not apply: {bad:#?}"
        );
        // Every pattern compiles.
        let mut patterns = Vec::new();
        collect_patterns(&c.doc, &mut patterns);
        for p in patterns {
            assert!(c.patterns.contains_key(&p), "pattern does not compile: {p}");
        }
    }

    #[test]
    fn violations_name_the_field() {
        let c = contract();
        let body = json!({"$ref": "#/components/schemas/CreateCall"});
        let check = |v: Value| {
            c.validate(&body, &v, "")
                .map_err(|v| (c.code(&v), v.message()))
        };
        assert_eq!(
            check(json!({"dial_string": "+14155550100"})),
            Err(("missing_user_id", "user_id is required".to_owned()))
        );
        assert_eq!(
            check(json!({"user_id": null, "dial_string": "+14155550100"})),
            Err(("missing_user_id", "user_id is required".to_owned()))
        );
        assert_eq!(
            check(json!({"user_id": "alice", "dial_string": "1"})),
            Err(("invalid_user_id", "Invalid user_id format".to_owned()))
        );
        assert_eq!(
            check(
                json!({"user_id": "user_01h2xcejqtf2nbrexx3vqjhp42", "dial_string": "1", "ring_timeout": 0})
            ),
            Err((
                "invalid_ring_timeout",
                "ring_timeout must be between 1 and 300".to_owned()
            ))
        );
        assert_eq!(
            check(
                json!({"user_id": "user_01h2xcejqtf2nbrexx3vqjhp42", "dial_string": "1", "x": 1})
            ),
            Err((
                "unknown_field",
                "x is not a field of this request".to_owned()
            ))
        );
        assert_eq!(
            check(
                json!({"user_id": "user_01h2xcejqtf2nbrexx3vqjhp42", "dial_string": "1", "ring_timeout": 30.0})
            ),
            Ok(())
        );
        let user = json!({"$ref": "#/components/schemas/CreateUser"});
        assert_eq!(
            c.validate(
                &user,
                &json!({"name": "A", "devices": [{"username": "a b", "password": "x"}]}),
                ""
            )
            .map_err(|v| (c.code(&v), v.message())),
            Err((
                "invalid_devices",
                "Invalid devices[0].username format".to_owned()
            ))
        );
    }

    #[test]
    fn integral_floats_reach_the_handler_as_integers() {
        let c = contract();
        let body = json!({"$ref": "#/components/schemas/MakeCall"});
        let out = c
            .check_body(
                &body,
                br#"{"from": "+14155551234", "to": "+14155550100", "agent_id": 42.0}"#,
            )
            .unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["agent_id"], json!(42));
        assert!(v["agent_id"].is_i64());
    }
}
