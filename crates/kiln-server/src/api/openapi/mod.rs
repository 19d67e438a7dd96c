//! The OpenAPI 3.1 document of the JSON API (`GET /api/v1/openapi.json`): built once from
//! the route table (`api::route_list`, every route with its `Access`) and the description
//! of each route (`routes.rs`), with the JSON Schemas (2020-12) of the same `kiln-protocol` types
//! the handlers read and answer, so the document cannot drift from the server.
//!
//! Scope: every route of `api::route_list` (all of `/api/`, and `/healthz`, `/readyz`,
//! `/metrics`). `web::route_list` is the dashboard (HTML pages and forms, the public
//! status page and badges) and is left out; `tests/openapi.rs` holds the rule.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use kiln_protocol as wire;
use schemars::SchemaGenerator;
use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

use crate::auth::Access;

mod routes;

use routes::{Body, Operation, ParamType, describe};

/// `GET /api/v1/openapi.json`.
pub(crate) async fn document() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        document_bytes(),
    )
        .into_response()
}

fn document_bytes() -> &'static [u8] {
    static DOCUMENT: OnceLock<Vec<u8>> = OnceLock::new();
    DOCUMENT.get_or_init(|| serde_json::to_vec(&build()).unwrap_or_default())
}

/// An OpenAPI path template of a route's axum path: `{*path}` becomes `{path}`.
pub(crate) fn openapi_path(path: &str) -> String {
    path.replace("{*", "{")
}

/// The names of a path's parameters, in order.
fn path_parameters(path: &str) -> Vec<&str> {
    path.split('{')
        .skip(1)
        .filter_map(|rest| rest.split('}').next())
        .collect()
}

/// The document's `security` of a route: who may call it, as OpenAPI security schemes.
fn security(access: Access) -> Value {
    match access {
        Access::Public => json!([]),
        Access::Scrape => json!([{}, {"scrapeToken": []}]),
        Access::ProjectIngest => json!([{"bearerToken": []}, {"buildToken": []}]),
        Access::Agent => json!([{"bearerToken": []}]),
        Access::InstanceAdmin
        | Access::ProjectRead
        | Access::ProjectWrite
        | Access::ProjectAdmin
        | Access::User
        | Access::Page
        | Access::PageInstanceAdmin => json!([{"bearerToken": []}, {"sessionCookie": []}]),
    }
}

/// Error statuses a route of its kind may answer, besides its own (`Operation::errors`).
fn common_errors(method: &str, path: &str, access: Access, operation: &Operation) -> Vec<u16> {
    let mut statuses = vec![400];
    if !matches!(access, Access::Public) {
        statuses.extend([401, 403]);
    }
    let has_path_parameters = path.contains('{');
    let has_query = operation.params.iter().any(|param| param.place == "query");
    if has_path_parameters || has_query || !matches!(access, Access::Public) {
        statuses.push(404);
    }
    if method != "GET" {
        statuses.extend([409, 422]);
    }
    if operation.request.is_some() {
        statuses.push(413);
    }
    if !matches!(path, "/healthz" | "/api/v1/openapi.json") {
        statuses.push(503);
    }
    statuses.extend(operation.errors.iter().copied());
    statuses.sort_unstable();
    statuses.dedup();
    statuses
}

fn reason(status: u16) -> &'static str {
    match status {
        400 => "Bad request: a malformed body, field, query or URL (the field is named)",
        401 => "No credential, or one that is unknown, revoked or expired",
        403 => "The credential may not do this",
        404 => "No such thing, or the caller may not see it",
        409 => "Conflicts with the current state",
        413 => "The body is too large",
        422 => "Well-formed, but names something that cannot be used",
        416 => "The Range starts past the end of the file",
        429 => "Too many attempts or streams; wait (Retry-After)",
        503 => "The database is unavailable or busy; retry (Retry-After)",
        _ => "Error",
    }
}

/// The two schema generators: request bodies as the server reads them, answers as it
/// writes them (an `Option` field without a default is required in an answer, where it
/// is `null` when empty).
struct Generators {
    requests: SchemaGenerator,
    answers: SchemaGenerator,
}

fn settings() -> SchemaSettings {
    SchemaSettings::draft2020_12().with(|settings| {
        settings.definitions_path = "/components/schemas".into();
        settings.meta_schema = None;
    })
}

fn content(media_type: &str, schema: Value) -> Value {
    json!({ media_type: { "schema": schema } })
}

fn body_content(body: Body, generator: &mut SchemaGenerator) -> Option<Value> {
    match body {
        Body::Json(schema) => Some(content("application/json", schema(generator).to_value())),
        Body::OneOrMany(schema) => {
            let one = schema(generator).to_value();
            Some(content(
                "application/json",
                json!({"oneOf": [one.clone(), {"type": "array", "items": one, "minItems": 1}]}),
            ))
        }
        Body::Raw(media_type) => Some(content(media_type, json!({}))),
        // OpenAPI 3.1 reads the schema of an event stream as that of each event.
        Body::EventStream => Some(content(
            "text/event-stream",
            json!({
                "type": "object",
                "description": "One server-sent event: `event` names it (a build event's type, `log`, `end`, `shutdown`, …), `data` is its JSON or log text, `id` the cursor to resume from.",
                "properties": {
                    "event": {"type": "string"},
                    "data": {"type": "string"},
                    "id": {"type": "string"},
                    "retry": {"type": "integer", "minimum": 0},
                },
            }),
        )),
        Body::Empty => None,
    }
}

/// What a path parameter may be, as the handlers read it: ids are numbers (anything else
/// is 400 `invalid_field`, `api/path.rs`), a project's slug and a secret's name follow
/// kiln-core's rules; the rest (run ids, user ids or emails, step names) are text.
fn path_parameter_schema(path: &str, name: &str) -> Value {
    match name {
        "id" | "delivery" => json!({"type": "integer", "format": "int64"}),
        "slug" => json!({"type": "string", "pattern": "^[a-z0-9][a-z0-9-]{0,63}$"}),
        "name" if path.contains("/secrets/") => {
            json!({"type": "string", "pattern": "^[A-Z_][A-Z0-9_]{0,127}$"})
        }
        _ => json!({"type": "string"}),
    }
}

fn parameter_schema(schema: ParamType) -> Value {
    match schema {
        ParamType::Text | ParamType::Instant => json!({"type": "string"}),
        ParamType::Integer(minimum) => json!({"type": "integer", "minimum": minimum}),
        ParamType::Range(minimum, maximum) => {
            json!({"type": "integer", "minimum": minimum, "maximum": maximum})
        }
        ParamType::Boolean => json!({"type": "boolean"}),
    }
}

fn operation_object(
    method: &str,
    path: &str,
    access: Access,
    operation: &Operation,
    generators: &mut Generators,
) -> Value {
    let mut parameters: Vec<Value> = path_parameters(path)
        .into_iter()
        .map(|name| {
            let name = name.trim_start_matches('*');
            json!({"name": name, "in": "path", "required": true, "schema": path_parameter_schema(path, name)})
        })
        .collect();
    parameters.extend(operation.params.iter().map(|param| {
        json!({
            "name": param.name,
            "in": param.place,
            "required": param.required,
            "description": param.description,
            "schema": parameter_schema(param.schema),
        })
    }));
    let mut responses = Map::new();
    for (status, description, body) in &operation.answers {
        let mut response = json!({ "description": description });
        if let Some(content) = body_content(*body, &mut generators.answers) {
            response["content"] = content;
        }
        let links: Map<String, Value> = operation
            .links
            .iter()
            .filter(|link| link.status == *status)
            .map(|link| {
                let target = operation_id(link.method, link.path);
                let parameters: Map<String, Value> = link
                    .parameters
                    .iter()
                    .map(|(name, expression)| ((*name).to_owned(), json!(expression)))
                    .collect();
                (
                    target.clone(),
                    json!({"operationId": target, "parameters": parameters}),
                )
            })
            .collect();
        if !links.is_empty() {
            response["links"] = Value::Object(links);
        }
        responses.insert(status.to_string(), response);
    }
    for status in common_errors(method, path, access, operation) {
        responses.insert(
            status.to_string(),
            json!({
                "description": reason(status),
                "content": content("application/json", json!({"$ref": "#/components/schemas/Error"})),
            }),
        );
    }
    let mut object = json!({
        "operationId": operation_id(method, path),
        "summary": operation.summary,
        "tags": [operation.tag],
        "description": format!("Access: {}.", access.as_str()),
        "x-kiln-access": access.as_str(),
        "security": security(access),
        "responses": responses,
    });
    if !parameters.is_empty() {
        object["parameters"] = Value::Array(parameters);
    }
    if let Some((body, required)) = operation.request
        && let Some(content) = body_content(body, &mut generators.requests)
    {
        object["requestBody"] = json!({"required": required, "content": content});
    }
    object
}

/// `GET /api/v1/builds/{run_id}` → `get_api_v1_builds_run_id`.
fn operation_id(method: &str, path: &str) -> String {
    let mut id = method.to_ascii_lowercase();
    for character in path.chars() {
        if character.is_ascii_alphanumeric() {
            id.push(character);
        } else if !id.ends_with('_') {
            id.push('_');
        }
    }
    id.trim_end_matches('_').to_owned()
}

/// The whole document. A route without a description is left out (and fails
/// `tests/openapi.rs`).
fn build() -> Value {
    let mut generators = Generators {
        requests: settings().for_deserialize().into_generator(),
        answers: settings().for_serialize().into_generator(),
    };
    // The one error shape, for every 4xx and 5xx answer.
    generators.answers.subschema_for::<wire::ErrorBody>();
    let mut paths = Map::new();
    for (method, path, access, _) in super::route_list() {
        let Some(operation) = describe(method, &openapi_path(path)) else {
            continue;
        };
        let item = paths.entry(openapi_path(path)).or_insert_with(|| json!({}));
        item[method.to_ascii_lowercase()] = operation_object(
            method,
            &openapi_path(path),
            access,
            &operation,
            &mut generators,
        );
    }
    let schemas = merged_schemas(
        generators.answers.take_definitions(true),
        generators.requests.take_definitions(true),
        &mut paths,
    );
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Kiln",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Kiln's HTTP API. Errors answer {\"error\":{\"code\",\"message\",\"field\"}} (the Error schema). docs/api.md describes each route in words.",
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearerToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A Kiln token (`kiln_…`): an instance admin's, a user's personal token, a project token or an agent token.",
                },
                "sessionCookie": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": crate::auth::SESSION_COOKIE,
                    "description": "The dashboard session (POST /api/v1/session). Unsafe methods must also send the session's CSRF token as X-CSRF-Token.",
                },
                "buildToken": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-OM-BUILD-TOKEN",
                    "description": "A project token in the seed's header.",
                },
                "scrapeToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The --metrics-token; without one set, loopback clients need none.",
                },
            },
        },
    })
}

/// The answers' and the requests' schemas in one `components/schemas`. A type whose two
/// schemas differ (an `Option` field required in answers, optional in requests) keeps its
/// name for answers and is `…Request` for requests, its references in request bodies
/// rewritten.
fn merged_schemas(
    answers: Map<String, Value>,
    requests: Map<String, Value>,
    paths: &mut Map<String, Value>,
) -> Map<String, Value> {
    let mut schemas = answers;
    let renamed: Vec<String> = requests
        .iter()
        .filter(|(name, schema)| schemas.get(*name).is_some_and(|other| other != *schema))
        .map(|(name, _)| name.clone())
        .collect();
    let rename = |value: &mut Value| rename_references(value, &renamed);
    for (name, mut schema) in requests {
        rename(&mut schema);
        let name = if renamed.contains(&name) {
            format!("{name}Request")
        } else {
            name
        };
        schemas.insert(name, schema);
    }
    for item in paths.values_mut() {
        if let Some(operations) = item.as_object_mut() {
            for operation in operations.values_mut() {
                if let Some(body) = operation.get_mut("requestBody") {
                    rename(body);
                }
            }
        }
    }
    // The error body is `Error` in the document (one name for every error answer).
    if let Some(error) = schemas.remove("ErrorBody") {
        schemas.insert("Error".into(), error);
    }
    schemas
}

fn rename_references(value: &mut Value, renamed: &[String]) {
    match value {
        Value::Object(object) => {
            for (key, member) in object.iter_mut() {
                if key == "$ref"
                    && let Value::String(reference) = member
                    && let Some(name) = reference.strip_prefix("#/components/schemas/")
                    && renamed.iter().any(|renamed| renamed == name)
                {
                    *reference = format!("{reference}Request");
                } else {
                    rename_references(member, renamed);
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                rename_references(item, renamed);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_of_the_api_is_described() {
        let missing: Vec<String> = super::super::route_list()
            .into_iter()
            .filter(|(method, path, _, _)| describe(method, &openapi_path(path)).is_none())
            .map(|(method, path, _, _)| format!("{method} {path}"))
            .collect();
        assert!(
            missing.is_empty(),
            "routes without a description: {missing:?}"
        );
    }

    #[test]
    fn the_error_schema_is_the_error_body() {
        let document = build();
        let error = &document["components"]["schemas"]["Error"];
        assert_eq!(error["required"], json!(["error"]), "{error}");
        assert!(document["components"]["schemas"].get("ErrorBody").is_none());
    }
}
