//! Comparing two builds' artifacts as a service: both builds must be readable (404 for
//! either otherwise), their manifests are compared by kiln-core, and the answer names
//! each path's status with sizes and hashes.

use kiln_core::compare::{FileStatus, ManifestFile, compare_manifests};
use kiln_protocol::{ArtifactComparison, ComparedArtifact, ComparedSide};
use kiln_store::BuildRecord;

use crate::AppState;
use crate::auth::Caller;
use crate::service_error::ServiceError;
use crate::services::builds::readable_build;

/// `a` and `b` compared, if the caller may read both.
pub(crate) async fn compare_runs(
    state: &AppState,
    caller: &Caller,
    a: &str,
    b: &str,
) -> Result<ArtifactComparison, ServiceError> {
    let build_a = readable_build(state, caller, a).await?;
    let build_b = readable_build(state, caller, b).await?;
    compare_builds(state, &build_a, &build_b).await
}

/// Two builds' manifests compared.
pub(crate) async fn compare_builds(
    state: &AppState,
    a: &BuildRecord,
    b: &BuildRecord,
) -> Result<ArtifactComparison, ServiceError> {
    let manifest = |build_id| async move {
        let records = state.store.build_artifacts(build_id).await?;
        Ok::<_, ServiceError>(
            records
                .into_iter()
                .map(|record| ManifestFile {
                    path: record.path,
                    size: record.size,
                    sha256: record.sha256,
                })
                .collect::<Vec<_>>(),
        )
    };
    let comparison = compare_manifests(&manifest(a.id).await?, &manifest(b.id).await?);
    let side = |file: &Option<ManifestFile>| {
        file.as_ref().map(|file| ComparedSide {
            size: file.size,
            sha256: file.sha256.clone(),
        })
    };
    Ok(ArtifactComparison {
        a: a.state.run_id.to_string(),
        b: b.state.run_id.to_string(),
        verdict: comparison.verdict.as_str().to_owned(),
        reproducible: comparison.verdict == kiln_core::compare::Verdict::Reproducible,
        identical: comparison.count(FileStatus::Identical) as u64,
        differs: comparison.count(FileStatus::Differs) as u64,
        only_a: comparison.count(FileStatus::OnlyA) as u64,
        only_b: comparison.count(FileStatus::OnlyB) as u64,
        files: comparison
            .files
            .iter()
            .map(|file| ComparedArtifact {
                path: file.path.clone(),
                status: file.status.as_str().to_owned(),
                a: side(&file.a),
                b: side(&file.b),
            })
            .collect(),
    })
}
