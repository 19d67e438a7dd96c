//! Artifacts on the wire: starting and resuming an upload, a build's manifest, one
//! file's entry, and what a verification found (`/api/v1/builds/{runId}/artifacts…` and
//! the agent's artifact routes). Sizes are bytes; digests lowercase hex.

use serde::{Deserialize, Serialize};

/// `POST …/artifacts`: the file about to be sent. An upload with the same build, path,
/// size and SHA-256 (or the same build, path and size, with none) resumes where the last
/// one stopped.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StartArtifactUpload {
    /// Relative, `/`-separated; no `..`, `.`, empty segment, NUL or backslash.
    pub path: String,
    pub size: u64,
    /// The SHA-256 of the whole file; the server checks the bytes against it. Left out,
    /// the client sends first and confirms the SHA-256 (`?sha256=`) or the CRC-32
    /// (`?crc32=`) with the last `PUT`, so it need not read the file before sending it;
    /// content the server already holds is then still stored once, but its bytes are sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Unix permission bits (default `0o644`, i.e. 420).
    #[serde(default)]
    pub mode: Option<u32>,
    /// The step that made the file (ignored on the agent's route, which knows it).
    #[serde(default)]
    pub step: Option<String>,
}

/// Where an upload stands: send the bytes from `offset` with `PUT …/uploads/{uploadId}`
/// until `complete`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactUpload {
    pub upload_id: String,
    pub path: String,
    pub size: u64,
    /// Bytes the server holds.
    pub offset: u64,
    /// Stored and in the manifest (`artifact` says how).
    pub complete: bool,
    /// Every byte is there and the upload declared no SHA-256: a `PUT` at `offset` (an
    /// empty body will do) with `?sha256=` (the file's SHA-256) or `?crc32=` (its CRC-32)
    /// completes it.
    #[serde(default)]
    pub awaiting_sha256: bool,
    pub artifact: Option<ArtifactFile>,
}

/// One file of a build's manifest.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactFile {
    pub path: String,
    pub size: u64,
    pub mode: u32,
    /// `null` for a moment after the upload: MD5 and SHA-512 are computed off its path.
    pub md5: Option<String>,
    pub sha256: String,
    /// `null` for a moment after the upload, like `md5`.
    pub sha512: Option<String>,
    /// The step that made it; absent for a file a script uploaded.
    pub step: Option<String>,
    pub created_at: String,
}

/// `GET …/builds/{runId}/artifacts`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactManifest {
    pub run_id: String,
    pub count: u64,
    pub total_bytes: u64,
    pub files: Vec<ArtifactFile>,
}

/// A stored file that is not what its manifest says.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactMismatch {
    pub path: String,
    /// `missing` (no stored bytes), `size`, `md5`, `sha256`, `sha512`, or `unreadable`.
    pub problem: String,
    pub expected: Option<String>,
    pub actual: Option<String>,
}

/// `POST …/builds/{runId}/artifacts/verify`: every stored file re-hashed.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactVerification {
    pub run_id: String,
    /// Files checked and bytes read.
    pub checked: u64,
    pub bytes: u64,
    /// No mismatch.
    pub ok: bool,
    pub mismatches: Vec<ArtifactMismatch>,
}
