//! `GET /api/v1/openapi.json` against the route table: every JSON route is in the
//! document with the access it really requires, the document names no route the table
//! lacks, and every error answer refers to the one `Error` schema. (Its validity against
//! the OpenAPI 3.1 schema and the server's conformance to it are `.ci/schemathesis.sh`'s.)
//! Also what schemathesis found the server answering outside the document, each kept
//! here as a regression test.

mod common;

use std::collections::BTreeSet;

use common::{ADMIN_TOKEN, TestApp, assert_error};
use kiln_store::Engine;
use serde_json::Value;

/// The routes outside `/api/` that the document covers; every other route outside
/// `/api/` is the dashboard's (pages, forms, assets, the public status page and badges),
/// which the document leaves out.
const OPERATIONAL_ROUTES: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// An axum path as an OpenAPI path template: the catch-all `{*path}` is `{path}`.
fn template(path: &str) -> String {
    path.replace("{*", "{")
}

async fn document(app: &TestApp) -> Value {
    let response = app
        .http
        .get(format!("{}/api/v1/openapi.json", app.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    response.json().await.unwrap()
}

fn documented_operations(document: &Value) -> BTreeSet<(String, String)> {
    let mut operations = BTreeSet::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            operations.insert((method.to_ascii_uppercase(), path.clone()));
        }
    }
    operations
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_holds_every_json_route_and_no_other() {
    let app = TestApp::spawn(Engine::Sqlite).await;
    let document = document(&app).await;
    assert_eq!(document["openapi"], "3.1.0");
    let table = kiln_server::route_table();
    let covered: BTreeSet<(String, String)> = table
        .iter()
        .filter(|route| route.path.starts_with("/api/") || OPERATIONAL_ROUTES.contains(&route.path))
        .map(|route| (route.method.to_owned(), template(route.path)))
        .collect();
    let documented = documented_operations(&document);
    let missing: Vec<_> = covered.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "routes missing from the document: {missing:?}"
    );
    let unknown: Vec<_> = documented.difference(&covered).collect();
    assert!(
        unknown.is_empty(),
        "the document names routes the table lacks: {unknown:?}"
    );
    // What the document leaves out is the dashboard, never the API.
    let left_out: Vec<_> = table
        .iter()
        .filter(|route| !covered.contains(&(route.method.to_owned(), template(route.path))))
        .collect();
    assert!(
        left_out
            .iter()
            .all(|route| !route.path.starts_with("/api") && !route.path.starts_with("/metrics")),
        "{left_out:?}"
    );
    assert!(left_out.iter().any(|route| route.path == "/status/{slug}"));
    // Each operation says who may call it, as the table does.
    for route in &table {
        let Some(operation) = document["paths"]
            .get(template(route.path))
            .and_then(|item| item.get(route.method.to_ascii_lowercase()))
        else {
            continue;
        };
        assert_eq!(
            operation["x-kiln-access"], route.access,
            "{} {}",
            route.method, route.path
        );
        let security = operation["security"].as_array().unwrap();
        assert_eq!(
            security.is_empty(),
            route.access == "public",
            "{} {}: {security:?}",
            route.method,
            route.path
        );
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_answer_is_the_error_schema_and_every_reference_resolves() {
    let app = TestApp::spawn(Engine::Sqlite).await;
    let document = document(&app).await;
    let schemas = document["components"]["schemas"].as_object().unwrap();
    // `Error` is error.rs's body: {"error": {"code", "message", "field"?}}.
    let error = &schemas["Error"];
    assert_eq!(error["required"], serde_json::json!(["error"]), "{error}");
    let detail_reference = error["properties"]["error"]["$ref"].as_str().unwrap();
    let detail = &schemas[detail_reference.rsplit('/').next().unwrap()];
    let required: BTreeSet<&str> = detail["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|name| name.as_str().unwrap())
        .collect();
    assert_eq!(required, BTreeSet::from(["code", "message"]));
    assert!(detail["properties"].get("field").is_some());

    let mut error_answers = 0;
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let responses = operation["responses"].as_object().unwrap();
            assert!(
                responses.keys().any(|status| status.starts_with('2')),
                "{method} {path} documents no success"
            );
            assert!(
                responses.contains_key("400"),
                "{method} {path}: every route may refuse a bad URL"
            );
            for (status, response) in responses {
                if status.starts_with('4') || status.starts_with('5') {
                    assert_eq!(
                        response["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/Error",
                        "{method} {path} {status}"
                    );
                    error_answers += 1;
                }
            }
        }
    }
    assert!(error_answers > 300, "{error_answers}");

    // Every link names an operation of the document and parameters it takes.
    let mut operations = std::collections::BTreeMap::new();
    for item in document["paths"].as_object().unwrap().values() {
        for operation in item.as_object().unwrap().values() {
            operations.insert(operation["operationId"].as_str().unwrap(), operation);
        }
    }
    let mut links = 0;
    for operation in operations.values() {
        for response in operation["responses"].as_object().unwrap().values() {
            for link in response["links"]
                .as_object()
                .into_iter()
                .flat_map(|l| l.values())
            {
                let target = operations[link["operationId"].as_str().unwrap()];
                let taken: BTreeSet<&str> = target["parameters"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|parameter| parameter["name"].as_str().unwrap())
                    .collect();
                for name in link["parameters"].as_object().unwrap().keys() {
                    assert!(taken.contains(name.as_str()), "{link}: {name}");
                }
                links += 1;
            }
        }
    }
    assert!(links >= 20, "{links}");

    // Every reference names a schema of the document.
    let mut references = Vec::new();
    collect_references(&document, &mut references);
    for reference in references {
        let name = reference
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("a reference outside the schemas: {reference}"));
        assert!(schemas.contains_key(name), "{reference} does not resolve");
    }
    app.stop().await;
}

fn collect_references(value: &Value, references: &mut Vec<String>) {
    match value {
        Value::Object(object) => {
            for (key, member) in object {
                match (key.as_str(), member) {
                    ("$ref", Value::String(reference)) => references.push(reference.clone()),
                    _ => collect_references(member, references),
                }
            }
        }
        Value::Array(items) => items
            .iter()
            .for_each(|item| collect_references(item, references)),
        _ => {}
    }
}

/// Found by schemathesis: a path parameter the route reads as a number (the agent's job
/// id) answered axum's plain-text 400; it is the error body naming the parameter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_parameter_that_is_not_a_number_is_refused_with_the_error_body() {
    let app = TestApp::spawn(Engine::Sqlite).await;
    let (status, created) = app
        .raw(
            reqwest::Method::POST,
            "/api/v1/agent-tokens",
            Some(ADMIN_TOKEN),
            Some(br#"{"name": "agent"}"#.to_vec()),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let agent_token = created["token"].as_str().unwrap();
    for (method, path, body) in [
        (
            reqwest::Method::POST,
            "/api/v1/agent/jobs/x1/finish",
            Some(b"{}".to_vec()),
        ),
        (
            reqwest::Method::POST,
            "/api/v1/agent/jobs/%C3%A7/log?agentId=1&attempt=1&offset=0",
            Some(b"text".to_vec()),
        ),
        (
            reqwest::Method::GET,
            "/api/v1/agent/jobs/-/artifacts/abc?agentId=1&attempt=1",
            None,
        ),
        (
            reqwest::Method::PUT,
            "/api/v1/agent/jobs/1.5/artifacts/uploads/u1?agentId=1&attempt=1&offset=0",
            Some(Vec::new()),
        ),
    ] {
        let (status, body) = app.raw(method.clone(), path, Some(agent_token), body).await;
        assert_eq!(status, 400, "{method} {path}: {body}");
        assert_error(&body, "invalid_field", Some("id"));
    }
    app.stop().await;
}

/// Found by schemathesis's reading of the handlers it reached: routes that read their
/// body as plain bytes (an optional JSON body, a log chunk) left a body past axum's
/// 2 MiB default to axum's plain-text 413; it is 413 `body_too_large` with the error body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_past_the_limit_is_refused_with_the_error_body_on_every_route_that_reads_bytes() {
    let app = TestApp::spawn(Engine::Sqlite).await;
    let (_, project_token) = app.project_client("web", &["ingest", "read"]).await;
    let big = vec![b' '; 3 * 1024 * 1024];
    for (method, path, token) in [
        (
            reqwest::Method::POST,
            "/api/v1/projects/web/builds",
            ADMIN_TOKEN,
        ),
        (
            reqwest::Method::POST,
            "/api/v1/projects/web/environments/production/deploy",
            ADMIN_TOKEN,
        ),
        (
            reqwest::Method::POST,
            "/api/v1/users/1/password",
            ADMIN_TOKEN,
        ),
        (
            reqwest::Method::POST,
            "/api/v1/builds/r1/log?offset=0",
            project_token.as_str(),
        ),
    ] {
        let (status, body) = refused_upload(&app, method.clone(), path, token, &big).await;
        assert_eq!(status, 413, "{method} {path}: {body}");
        assert_error(&body, "body_too_large", None);
    }
    app.stop().await;
}

/// Sends a body the server refuses before reading it whole: the server answers and
/// closes, and a client still writing may see the connection reset instead of the
/// answer, so a reset is tried again (an answer, when one arrives, is what is checked).
async fn refused_upload(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: &[u8],
) -> (u16, Value) {
    for _ in 0..10 {
        let sent = app
            .http
            .request(method.clone(), format!("{}{path}", app.base_url))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.to_vec())
            .send()
            .await;
        let Ok(response) = sent else { continue };
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let value =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"));
        return (status, value);
    }
    panic!("{method} {path}: the connection was reset ten times");
}
