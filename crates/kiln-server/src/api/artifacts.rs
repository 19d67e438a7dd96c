//! Artifacts over HTTP: uploads by project ingest tokens (start or resume, then the bytes
//! from an offset), a build's manifest, one file (ranges, `ETag`) or all of them as a
//! `.tar.gz`, and verification of what is stored. The agent's routes reuse
//! [`blob_response`] and the service.

use axum::body::Body;
use axum::extract::State;

use super::path::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use kiln_protocol::{ArtifactManifest, ArtifactUpload, ArtifactVerification, StartArtifactUpload};
use kiln_store::{ArtifactRecord, BuildRecord};

use super::body::{JsonBody, parse};
use crate::AppState;
use crate::auth::Caller;
use crate::blobs::tarball::{TarEntry, tar_gz};
use crate::error::ApiError;
use crate::params::QueryParams;
use crate::range::{Wanted, wanted};
use crate::services::artifacts;
use crate::services::builds::{ingest_build, readable_build, writable_build};

const UPLOADS: &str = "upload artifacts";

/// An upload's `PUT` query: `offset` (required: the bytes the server holds), and `sha256`
/// or `crc32` (optional: the whole file's, either of which completes an upload declared
/// without a SHA-256).
pub(crate) struct SendQuery {
    pub offset: u64,
    pub confirm: artifacts::Confirmation,
}

impl SendQuery {
    pub(crate) fn of(uri: &Uri) -> Result<Self, ApiError> {
        let params = QueryParams::from_uri(uri.query());
        let offset = params.integer("offset", 0, i64::MAX)?.ok_or_else(|| {
            ApiError::bad_request(
                "invalid_field",
                Some("offset"),
                "offset: is required (the bytes the server holds; POST …/artifacts tells)",
            )
        })?;
        Ok(Self {
            offset: offset as u64,
            confirm: artifacts::Confirmation {
                sha256: params.string("sha256").map(str::to_owned),
                crc32: params.string("crc32").map(str::to_owned),
            },
        })
    }
}

/// `POST /api/v1/builds/{runId}/artifacts`: starts or resumes an upload.
pub(crate) async fn start(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(run_id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Json<ArtifactUpload>, ApiError> {
    let build = ingest_build(&state, &caller, &run_id, UPLOADS).await?;
    let request: StartArtifactUpload = parse(body)?;
    Ok(Json(
        artifacts::start_upload(&state, &build, request, None).await?,
    ))
}

/// `PUT /api/v1/builds/{runId}/artifacts/uploads/{uploadId}?offset=N[&sha256=|&crc32=]`: the
/// file's bytes from `offset`.
pub(crate) async fn send(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((run_id, upload_id)): Path<(String, String)>,
    uri: Uri,
    body: Body,
) -> Result<Json<ArtifactUpload>, ApiError> {
    let query = SendQuery::of(&uri)?;
    let build = ingest_build(&state, &caller, &run_id, UPLOADS).await?;
    Ok(Json(
        artifacts::append(
            &state,
            &build,
            &upload_id,
            query.offset,
            &query.confirm,
            body.into_data_stream(),
        )
        .await?,
    ))
}

/// `GET /api/v1/builds/{runId}/artifacts`: the manifest.
pub(crate) async fn manifest(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(run_id): Path<String>,
) -> Result<Json<ArtifactManifest>, ApiError> {
    let build = readable_build(&state, &caller, &run_id).await?;
    Ok(Json(artifacts::manifest(&state, &build).await?))
}

/// `GET /api/v1/builds/{runId}/artifacts/files/{*path}`: one file.
pub(crate) async fn download(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((run_id, path)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let build = readable_build(&state, &caller, &run_id).await?;
    let record = artifacts::file(&state, &build, &path).await?;
    blob_response(&state, &record, &headers).await
}

/// `GET /api/v1/builds/{runId}/artifacts.tar.gz`: every file, streamed.
pub(crate) async fn archive(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(run_id): Path<String>,
) -> Result<Response, ApiError> {
    let build = readable_build(&state, &caller, &run_id).await?;
    let config = artifacts::config(&state)?;
    let entries = entries(&state, &build).await?;
    let name = format!(
        "{}-{}-artifacts.tar.gz",
        build.project_slug, build.state.run_id
    );
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/gzip"),
            ),
            (header::CONTENT_DISPOSITION, attachment(&name)),
        ],
        // A download like any other: the digester waits while it is sent.
        Body::from_stream(
            config
                .transfers
                .counted(tar_gz(config.blobs.clone(), entries)),
        ),
    )
        .into_response())
}

async fn entries(state: &AppState, build: &BuildRecord) -> Result<Vec<TarEntry>, ApiError> {
    Ok(state
        .store
        .build_artifacts(build.id)
        .await?
        .into_iter()
        .map(|record| TarEntry {
            mtime: (record.created_at.0.max(0) / 1000) as u64,
            path: record.path,
            sha256: record.sha256,
            size: record.size,
            mode: record.mode,
        })
        .collect())
}

/// `POST /api/v1/builds/{runId}/artifacts/verify`.
pub(crate) async fn verify(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(run_id): Path<String>,
) -> Result<Json<ArtifactVerification>, ApiError> {
    let build = writable_build(&state, &caller, &run_id).await?;
    Ok(Json(artifacts::verify(&state, &build).await?))
}

fn attachment(name: &str) -> HeaderValue {
    let plain: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' {
                c
            } else {
                '_'
            }
        })
        .collect();
    HeaderValue::from_str(&format!("attachment; filename=\"{plain}\""))
        .unwrap_or_else(|_| HeaderValue::from_static("attachment"))
}

/// A stored file as a download: `ETag` is its SHA-256, `If-None-Match` answers 304,
/// one `Range` answers 206 (416 past the end), and the browser saves it rather than
/// rendering it (`attachment`, `application/octet-stream`; `nosniff` is on every answer).
pub(crate) async fn blob_response(
    state: &AppState,
    record: &ArtifactRecord,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let etag = format!("\"{}\"", record.sha256);
    let matches = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|tag| tag.trim() == etag || tag.trim() == "*");
    let etag_value = HeaderValue::from_str(&etag).unwrap_or_else(|_| HeaderValue::from_static(""));
    if matches {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag_value)]).into_response());
    }
    let range = headers
        .get(header::RANGE)
        .and_then(|value| value.to_str().ok());
    let common = [
        (header::ETAG, etag_value),
        (header::ACCEPT_RANGES, HeaderValue::from_static("bytes")),
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        ),
        (
            header::CONTENT_DISPOSITION,
            attachment(record.path.rsplit('/').next().unwrap_or("artifact")),
        ),
    ];
    let size = record.size;
    let (status, start, length, content_range) = match wanted(range, size) {
        Wanted::All => (StatusCode::OK, 0, size, None),
        Wanted::Part { start, end } => (
            StatusCode::PARTIAL_CONTENT,
            start,
            end - start + 1,
            Some(format!("bytes {start}-{end}/{size}")),
        ),
        // Like every 4xx, with the error body (docs/api.md, the OpenAPI document).
        Wanted::Unsatisfiable => {
            let body = kiln_protocol::ErrorBody {
                error: kiln_protocol::ErrorDetail {
                    code: "range_not_satisfiable".into(),
                    message: format!(
                        "the Range starts past the end of the file ({size} bytes); ask for bytes below {size}"
                    ),
                    field: Some("Range".into()),
                },
            };
            return Ok((
                StatusCode::RANGE_NOT_SATISFIABLE,
                [(header::CONTENT_RANGE, format!("bytes */{size}"))],
                axum::Json(body),
            )
                .into_response());
        }
    };
    let stream = artifacts::open(state, &record.sha256, start, Some(length)).await?;
    let mut response = (status, common, Body::from_stream(stream)).into_response();
    let response_headers = response.headers_mut();
    response_headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    if let Some(content_range) = content_range
        && let Ok(value) = HeaderValue::from_str(&content_range)
    {
        response_headers.insert(header::CONTENT_RANGE, value);
    }
    if let Ok(value) = HeaderValue::from_str(&record.sha256) {
        response_headers.insert("x-checksum-sha256", value);
    }
    Ok(response)
}
