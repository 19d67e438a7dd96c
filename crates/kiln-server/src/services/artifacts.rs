//! Artifacts as a service: an upload started or resumed (limits, paths and manifests
//! checked; a blob already stored is linked at once), its bytes appended and — once all
//! are there and their SHA-256 is the declared one (or, for an upload that declared none,
//! the SHA-256 or CRC-32 its last request confirms) — published to the blob store and the
//! build's manifest; a build's manifest and files; and verification of what is stored against the manifest.

use bytes::Bytes;
use futures_util::Stream;
use kiln_core::artifacts::{ArtifactPath, crc32_hex, is_sha256_hex, parse_crc32_hex};
use kiln_core::{FieldError, StageName};
use kiln_protocol::{
    ArtifactManifest, ArtifactMismatch, ArtifactUpload, ArtifactVerification, StartArtifactUpload,
};
use kiln_store::{ArtifactAdded, ArtifactRecord, BuildRecord};

use crate::AppState;
use crate::blobs::digest::digest_stream;
use crate::blobs::staging::{PendingUpload, Staging, StagingError, is_upload_id};
use crate::blobs::{BlobError, BlobStream};
use crate::config::ArtifactConfig;
use crate::service_error::ServiceError;
use crate::wire::artifact_file;

/// Permission bits a file may carry.
const MODE_BITS: u32 = 0o7777;
const DEFAULT_MODE: u32 = 0o644;

pub(crate) fn config(state: &AppState) -> Result<&ArtifactConfig, ServiceError> {
    state.config.artifacts.as_ref().ok_or_else(|| {
        ServiceError::Unavailable(
            "this server stores no artifacts: start `kiln serve` with a --data-dir (or --artifact-store)".into(),
        )
    })
}

impl From<BlobError> for ServiceError {
    fn from(error: BlobError) -> Self {
        match error {
            BlobError::NotFound(digest) => ServiceError::NotFound(format!(
                "the stored bytes of blob {digest} are missing; verify the build's artifacts"
            )),
            BlobError::Failed(message) => {
                tracing::error!(%message, "artifact storage failed");
                ServiceError::Unavailable(format!(
                    "artifact storage failed ({message}); try again when it is back"
                ))
            }
        }
    }
}

fn storage_failed(context: &str, error: impl std::fmt::Display) -> ServiceError {
    ServiceError::from(BlobError::failed(context, error))
}

fn upload_answer(
    pending: &PendingUpload,
    offset: u64,
    done: Option<&ArtifactRecord>,
) -> ArtifactUpload {
    ArtifactUpload {
        upload_id: pending.upload_id.clone(),
        path: pending.path.clone(),
        size: pending.size,
        offset: if done.is_some() { pending.size } else { offset },
        complete: done.is_some(),
        awaiting_sha256: done.is_none() && offset == pending.size && pending.sha256.is_empty(),
        artifact: done.map(artifact_file),
    }
}

/// What an upload's last `PUT` may confirm the whole file by (`?sha256=`, `?crc32=`, or
/// both): a client that hashed the file names its SHA-256; one that only summed what it
/// sent names the CRC-32 (much cheaper, the same end-to-end check against a corrupted or
/// misplaced byte), and the manifest takes the SHA-256 the server computed.
#[derive(Clone, Debug, Default)]
pub(crate) struct Confirmation {
    pub sha256: Option<String>,
    pub crc32: Option<String>,
}

impl Confirmation {
    /// The SHA-256 and CRC-32 named, each checked (400 naming the malformed one).
    fn checked(&self) -> Result<(Option<&str>, Option<u32>), ServiceError> {
        if let Some(sha256) = &self.sha256 {
            sha256_field(sha256)?;
        }
        let crc32 = self
            .crc32
            .as_deref()
            .map(|text| {
                parse_crc32_hex(text).ok_or_else(|| {
                    FieldError::new(
                        "crc32",
                        "must be 8 hex digits (the file's CRC-32, as zlib and `crc32` compute it)",
                    )
                })
            })
            .transpose()?;
        Ok((self.sha256.as_deref(), crc32))
    }
}

fn sha256_field(value: &str) -> Result<(), ServiceError> {
    if is_sha256_hex(value) {
        return Ok(());
    }
    Err(FieldError::new(
        "sha256",
        "must be 64 lowercase hex digits (the file's SHA-256, as `sha256sum` prints it)",
    )
    .into())
}

/// Starts (or resumes) an upload of one file to `build`. `step` is the step the file
/// comes from when the agent uploads it (a later attempt of a step replaces what an
/// earlier one stored at the same path); otherwise the request may name one.
pub(crate) async fn start_upload(
    state: &AppState,
    build: &BuildRecord,
    request: StartArtifactUpload,
    step: Option<String>,
) -> Result<ArtifactUpload, ServiceError> {
    let replaces_attempt = step.is_some();
    let config = config(state)?;
    let path = ArtifactPath::parse(&request.path).map_err(ServiceError::invalid_field)?;
    // Without a SHA-256 the client confirms it with the last `PUT` (empty here).
    let declared = request.sha256.clone().unwrap_or_default();
    if request.sha256.is_some() {
        sha256_field(&declared)?;
    }
    let mode = request.mode.unwrap_or(DEFAULT_MODE);
    if mode > MODE_BITS {
        return Err(FieldError::new(
            "mode",
            "must be Unix permission bits (at most 0o7777, i.e. 4095)",
        )
        .into());
    }
    let step = match step {
        Some(step) => Some(step),
        None => request
            .step
            .as_deref()
            .map(|step| StageName::parse("step", step).map(|name| name.as_str().to_owned()))
            .transpose()
            .map_err(ServiceError::invalid_field)?,
    };
    if request.size > config.max_file_bytes {
        return Err(ServiceError::PayloadTooLarge(format!(
            "size: {} bytes is over this server's {}-byte limit per artifact file (--artifact-max-file-bytes)",
            request.size, config.max_file_bytes
        )));
    }
    let pending = PendingUpload {
        upload_id: Staging::upload_id(build.id, path.as_str(), &declared, request.size),
        build_id: build.id,
        path: path.as_str().to_owned(),
        step,
        size: request.size,
        mode,
        sha256: declared.clone(),
    };
    if let Some(existing) = state.store.build_artifact(build.id, path.as_str()).await? {
        if existing.sha256 == declared {
            return Ok(upload_answer(&pending, request.size, Some(&existing)));
        }
        // Content not declared yet: the confirmation decides (the same content again is
        // accepted then, other content refused), unless a later attempt replaces it.
        let undeclared = declared.is_empty();
        // A later attempt of the step that made it replaces it (a retried step need
        // not make the same bytes); nothing else changes a manifest.
        if replaces_attempt
            && existing.step.is_some()
            && existing.step == pending.step
            && state.store.remove_artifact(build.id, path.as_str()).await?
        {
            tracing::info!(path = %path, step = ?pending.step, "artifact replaced by a later attempt of its step");
        } else if !undeclared {
            return Err(ServiceError::Conflict {
                code: "artifact_exists",
                message: format!(
                    "path: build already has '{}' with other content (SHA-256 {}); artifacts do not change once stored — use another path",
                    path, existing.sha256
                ),
                field: Some("path".into()),
            });
        }
    }
    let (count, bytes) = state.store.build_artifact_totals(build.id).await?;
    if count as usize >= config.max_files_per_build {
        return Err(ServiceError::PayloadTooLarge(format!(
            "the build already has {count} artifact files, the most one build may hold; pack small files into an archive"
        )));
    }
    // Uploads in progress count too, so declaring many never stages more than the limit.
    let staged = config.staging.staged_bytes(build.id, &pending.upload_id);
    let total = bytes.saturating_add(staged).saturating_add(request.size);
    if total > config.max_build_bytes {
        return Err(ServiceError::PayloadTooLarge(format!(
            "size: the build's artifacts would take {total} bytes ({bytes} stored, {staged} being uploaded), over this server's {}-byte limit per build (--artifact-max-build-bytes)",
            config.max_build_bytes
        )));
    }
    // Content Kiln already holds needs no bytes: link it. Retention does not delete a
    // blob while this holds the gate (`services::retention::sweep_blobs`).
    let gate = config.blob_gate.read().await;
    if !declared.is_empty()
        && let Some(blob) = state.store.artifact_blob(&declared).await?
        && blob.size == request.size
        && config.blobs.size(&declared).await? == Some(blob.size)
    {
        let record = ArtifactRecord {
            build_id: build.id,
            path: pending.path.clone(),
            step: pending.step.clone(),
            size: blob.size,
            mode,
            md5: blob.md5,
            sha256: blob.sha256,
            sha512: blob.sha512,
            created_at: state.clock.now(),
        };
        let stored = publish_record(state, record).await?;
        return Ok(upload_answer(&pending, request.size, Some(&stored)));
    }
    drop(gate);
    config.staging.sweep_now_and_then();
    let offset = config
        .staging
        .begin(&pending)
        .await
        .map_err(|e| storage_failed("staging the upload", e))?;
    Ok(upload_answer(&pending, offset, None))
}

async fn publish_record(
    state: &AppState,
    record: ArtifactRecord,
) -> Result<ArtifactRecord, ServiceError> {
    match state.store.add_artifact(&record).await? {
        ArtifactAdded::Added | ArtifactAdded::Unchanged => Ok(record),
        ArtifactAdded::Conflict(existing) => Err(ServiceError::Conflict {
            code: "artifact_exists",
            message: format!(
                "path: build already has '{}' with other content (SHA-256 {existing})",
                record.path
            ),
            field: Some("path".into()),
        }),
    }
}

/// Appends a request's bytes at `offset`; when the file is whole and its SHA-256 is the
/// declared one (or, for an upload that declared none, the one this request confirms
/// with `?sha256=`, or the CRC-32 it confirms with `?crc32=`), publishes it. A CRC-32
/// named beside a SHA-256 is checked too.
pub(crate) async fn append<S, E>(
    state: &AppState,
    build: &BuildRecord,
    upload_id: &str,
    offset: u64,
    confirmation: &Confirmation,
    body: S,
) -> Result<ArtifactUpload, ServiceError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let config = config(state)?;
    let (confirm, confirm_crc32) = confirmation.checked()?;
    let missing = || {
        ServiceError::NotFound(format!(
            "upload '{upload_id}' not found for this build; start it (again) with POST …/artifacts"
        ))
    };
    if !is_upload_id(upload_id) {
        return Err(missing());
    }
    let staging = &config.staging;
    let pending = staging
        .pending(upload_id)
        .await
        .map_err(|e| storage_failed("reading the upload", e))?
        .filter(|pending| pending.build_id == build.id)
        .ok_or_else(missing)?;
    if !pending.sha256.is_empty()
        && let Some(confirm) = confirm
        && confirm != pending.sha256
    {
        return Err(ServiceError::bad_request(
            "invalid_field",
            Some("sha256"),
            format!(
                "sha256: the upload declared {}; confirm that one or start another upload (nothing of this request was kept)",
                pending.sha256
            ),
        ));
    }
    let guard = staging
        .hold(upload_id)
        .map_err(|_| ServiceError::Conflict {
            code: "upload_busy",
            message:
                "another request is sending this upload; wait for it or send from its offset later"
                    .into(),
            field: None,
        })?;
    let transfer = config.transfers.begin();
    let appended = staging
        .append(&guard, upload_id, offset, pending.size, body)
        .await;
    drop(transfer);
    let appended = match appended {
        Ok(appended) => appended,
        Err(StagingError::Offset(held)) => {
            return Err(ServiceError::Conflict {
                code: "upload_offset",
                message: format!(
                    "offset: the upload holds {held} bytes; send the rest from offset {held}"
                ),
                field: Some("offset".into()),
            });
        }
        Err(StagingError::TooLong(size)) => {
            return Err(ServiceError::bad_request(
                "invalid_field",
                Some("body"),
                format!(
                    "body: goes past the {size} bytes the upload declared; nothing of it was kept"
                ),
            ));
        }
        Err(StagingError::Busy) => unreachable!("held above"),
        Err(StagingError::Body(message)) => {
            return Err(ServiceError::bad_request(
                "upload_interrupted",
                Some("body"),
                format!(
                    "body: broke off ({message}); what arrived is kept: resume from the upload's offset"
                ),
            ));
        }
        Err(StagingError::Io(error)) => return Err(storage_failed("writing the upload", error)),
    };
    if appended.length < pending.size {
        return Ok(upload_answer(&pending, appended.length, None));
    }
    let (digest, size) = match appended.digest {
        Some(digest) => (digest, appended.length),
        None => match staging.remembered_digest(upload_id, pending.size).await {
            Some(digest) => (digest, pending.size),
            None => staging
                .digest(upload_id)
                .await
                .map_err(|e| storage_failed("hashing the upload", e))?,
        },
    };
    if let Some(expected) = confirm_crc32
        && digest.crc32 != expected
    {
        staging.discard(upload_id).await;
        return Err(ServiceError::Unprocessable {
            code: "checksum_mismatch",
            message: format!(
                "crc32: the {size} bytes received have CRC-32 {}, not the confirmed {}; nothing was stored — upload the file again (did it change while it was sent?)",
                crc32_hex(digest.crc32),
                crc32_hex(expected)
            ),
            field: Some("crc32".into()),
        });
    }
    // The SHA-256 the bytes must have: the declared one, else the confirmed one; with
    // neither, a CRC-32 that matched above lets the manifest take the one computed here.
    let expected = Some(pending.sha256.as_str())
        .filter(|declared| !declared.is_empty())
        .or(confirm);
    if expected.is_none() && confirm_crc32.is_none() {
        // Every byte is here; the client confirms the SHA-256 (or CRC-32) next.
        staging
            .remember_digest(upload_id, &digest)
            .await
            .map_err(|e| storage_failed("staging the upload", e))?;
        return Ok(upload_answer(&pending, size, None));
    }
    let sha256 = digest.sha256;
    if let Some(expected) = expected
        && sha256 != expected
    {
        staging.discard(upload_id).await;
        return Err(ServiceError::Unprocessable {
            code: "checksum_mismatch",
            message: format!(
                "sha256: the {size} bytes received have SHA-256 {sha256}, not the declared {expected}; nothing was stored — upload the file again (did it change while it was sent?)"
            ),
            field: Some("sha256".into()),
        });
    }
    // Held until the manifest names the blob, so retention cannot delete it between.
    let gate = config.blob_gate.read().await;
    config
        .blobs
        .put_file(&sha256, &staging.part_path(upload_id), size)
        .await?;
    // MD5 and SHA-512 come from the digester, off the upload's path.
    let known = state.store.artifact_blob(&sha256).await?;
    let record = ArtifactRecord {
        build_id: build.id,
        path: pending.path.clone(),
        step: pending.step.clone(),
        size,
        mode: pending.mode,
        md5: known.as_ref().and_then(|blob| blob.md5.clone()),
        sha256,
        sha512: known.and_then(|blob| blob.sha512),
        created_at: state.clock.now(),
    };
    let stored = publish_record(state, record).await;
    drop(gate);
    staging.discard(upload_id).await;
    drop(guard);
    config.digester.notify_one();
    Ok(upload_answer(&pending, pending.size, Some(&stored?)))
}

/// A build's manifest.
pub(crate) async fn manifest(
    state: &AppState,
    build: &BuildRecord,
) -> Result<ArtifactManifest, ServiceError> {
    let records = state.store.build_artifacts(build.id).await?;
    Ok(ArtifactManifest {
        run_id: build.state.run_id.to_string(),
        count: records.len() as u64,
        total_bytes: records.iter().map(|r| r.size).sum(),
        files: records.iter().map(artifact_file).collect(),
    })
}

/// One file of a build's manifest.
pub(crate) async fn file(
    state: &AppState,
    build: &BuildRecord,
    path: &str,
) -> Result<ArtifactRecord, ServiceError> {
    state
        .store
        .build_artifact(build.id, path)
        .await?
        .ok_or_else(|| {
            ServiceError::NotFound(format!(
                "build '{}' has no artifact '{path}'; `kiln artifact list {}` shows what it has",
                build.state.run_id, build.state.run_id
            ))
        })
}

/// The stored bytes of a blob, from `offset`, at most `len`.
pub(crate) async fn open(
    state: &AppState,
    sha256: &str,
    offset: u64,
    len: Option<u64>,
) -> Result<BlobStream, ServiceError> {
    let config = config(state)?;
    let stream = config.blobs.read(sha256, offset, len).await?;
    Ok(config.transfers.counted(stream))
}

/// Re-hashes every stored file of a build and names each that is not what the manifest
/// says.
pub(crate) async fn verify(
    state: &AppState,
    build: &BuildRecord,
) -> Result<ArtifactVerification, ServiceError> {
    let config = config(state)?;
    let records = state.store.build_artifacts(build.id).await?;
    let mut mismatches = Vec::new();
    let mut bytes = 0u64;
    for record in &records {
        let mismatch =
            |problem: &str, expected: Option<String>, actual: Option<String>| ArtifactMismatch {
                path: record.path.clone(),
                problem: problem.to_owned(),
                expected,
                actual,
            };
        let stream = match config.blobs.read(&record.sha256, 0, None).await {
            Ok(stream) => stream,
            Err(BlobError::NotFound(_)) => {
                mismatches.push(mismatch("missing", Some(record.sha256.clone()), None));
                continue;
            }
            Err(error) => return Err(error.into()),
        };
        let digests = match digest_stream(stream).await {
            Ok(digests) => digests,
            Err(error) => {
                mismatches.push(mismatch("unreadable", None, Some(error.to_string())));
                continue;
            }
        };
        bytes += digests.size;
        // MD5 and SHA-512 are compared once the digester recorded them.
        for (problem, expected, actual) in [
            (
                "size",
                Some(record.size.to_string()),
                digests.size.to_string(),
            ),
            ("md5", record.md5.clone(), digests.md5.clone()),
            (
                "sha256",
                Some(record.sha256.clone()),
                digests.sha256.clone(),
            ),
            ("sha512", record.sha512.clone(), digests.sha512.clone()),
        ] {
            if let Some(expected) = expected
                && expected != actual
            {
                mismatches.push(mismatch(problem, Some(expected), Some(actual)));
            }
        }
    }
    Ok(ArtifactVerification {
        run_id: build.state.run_id.to_string(),
        checked: records.len() as u64,
        bytes,
        ok: mismatches.is_empty(),
        mismatches,
    })
}
