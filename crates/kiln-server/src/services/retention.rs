//! Artifact retention as a service: a project's rule read and set, builds pinned and
//! unpinned (audited), and a retention run — kiln-core chooses the builds, the store
//! deletes their manifests in one transaction, then the blobs no manifest names are
//! deleted from the blob store and forgotten. A dry run answers the same and deletes
//! nothing. The periodic task (`crate::retention`) calls `apply_rule` and `sweep_blobs`.

use std::collections::HashSet;

use kiln_core::Millis;
use kiln_core::retention::{RetentionCandidate, RetentionPolicy, expired_builds};
use kiln_protocol::{
    ArtifactRetention, BuildPin, RetentionBuild, RetentionRun, SetArtifactRetention,
};
use kiln_store::{BuildRecord, Project, Store};

use crate::AppState;
use crate::auth::Caller;
use crate::config::ArtifactConfig;
use crate::service_error::ServiceError;
use crate::services::accounts::audit;

/// The most builds one run deletes the artifacts of; the rest wait for the next run.
pub(crate) const MAX_BUILDS_PER_RUN: usize = 1000;
/// Blobs deleted per batch of a sweep (uploads wait only for one batch).
const SWEEP_BATCH: i64 = 200;

fn settings(project: &Project, record: Option<kiln_store::RetentionRecord>) -> ArtifactRetention {
    ArtifactRetention {
        project: project.slug.clone(),
        keep_builds: record.as_ref().and_then(|r| r.keep_builds),
        keep_days: record.as_ref().and_then(|r| r.keep_days),
        updated_at: record.map(|r| r.updated_at.to_rfc3339()),
    }
}

/// A project's rule as stored (none set: everything is kept).
pub(crate) async fn policy_of(
    store: &dyn Store,
    project_id: i64,
) -> Result<RetentionPolicy, ServiceError> {
    let record = store.artifact_retention(project_id).await?;
    Ok(RetentionPolicy {
        keep_builds: record.as_ref().and_then(|r| r.keep_builds),
        keep_days: record.as_ref().and_then(|r| r.keep_days),
    })
}

/// `GET …/artifact-retention`.
pub(crate) async fn show(
    state: &AppState,
    project: &Project,
) -> Result<ArtifactRetention, ServiceError> {
    let record = state.store.artifact_retention(project.id).await?;
    Ok(settings(project, record))
}

/// `PUT …/artifact-retention`: checked by kiln-core, stored, audited.
pub(crate) async fn set(
    state: &AppState,
    caller: &Caller,
    project: &Project,
    request: SetArtifactRetention,
) -> Result<ArtifactRetention, ServiceError> {
    let policy = RetentionPolicy::new(request.keep_builds, request.keep_days)
        .map_err(ServiceError::invalid_field)?;
    let record = state
        .store
        .set_artifact_retention(
            project.id,
            policy.keep_builds,
            policy.keep_days,
            state.clock.now(),
        )
        .await?;
    let detail = format!(
        "keepBuilds={:?} keepDays={:?}",
        policy.keep_builds, policy.keep_days
    );
    audit(
        state,
        caller,
        "artifact_retention.set",
        Some(project.id),
        Some(&detail),
    )
    .await;
    Ok(settings(project, Some(record)))
}

async fn pin_answer(state: &AppState, build: &BuildRecord) -> Result<BuildPin, ServiceError> {
    let pin = state.store.build_pin(build.id).await?;
    Ok(BuildPin {
        run_id: build.state.run_id.to_string(),
        pinned: pin.is_some(),
        pinned_by: pin.as_ref().map(|p| p.pinned_by.clone()),
        pinned_at: pin.map(|p| p.pinned_at.to_rfc3339()),
    })
}

/// `POST …/builds/{runId}/pin`: retention keeps its artifacts. Pinning again changes
/// nothing.
pub(crate) async fn pin(
    state: &AppState,
    caller: &Caller,
    build: &BuildRecord,
) -> Result<BuildPin, ServiceError> {
    let run_id = build.state.run_id.to_string();
    if state
        .store
        .pin_build(build.id, &caller.actor(), state.clock.now())
        .await?
    {
        audit(
            state,
            caller,
            "build.pin",
            Some(build.project_id),
            Some(&run_id),
        )
        .await;
    }
    pin_answer(state, build).await
}

/// `DELETE …/builds/{runId}/pin`.
pub(crate) async fn unpin(
    state: &AppState,
    caller: &Caller,
    build: &BuildRecord,
) -> Result<BuildPin, ServiceError> {
    let run_id = build.state.run_id.to_string();
    if state.store.unpin_build(build.id).await? {
        audit(
            state,
            caller,
            "build.unpin",
            Some(build.project_id),
            Some(&run_id),
        )
        .await;
    }
    pin_answer(state, build).await
}

/// `POST …/artifact-retention/run[?dryRun=true]`.
pub(crate) async fn run_now(
    state: &AppState,
    project: &Project,
    dry_run: bool,
) -> Result<RetentionRun, ServiceError> {
    let artifacts = crate::services::artifacts::config(state)?;
    let policy = policy_of(state.store.as_ref(), project.id).await?;
    let run = apply_rule(
        state.store.as_ref(),
        project,
        &policy,
        state.clock.now(),
        dry_run,
    )
    .await?;
    if !dry_run {
        sweep_blobs(state.store.as_ref(), artifacts).await?;
    }
    Ok(run)
}

/// Chooses the builds of `project` whose artifacts `policy` lets go at `now` and, unless
/// `dry_run`, deletes their manifests (one transaction). Their blobs are deleted by
/// `sweep_blobs`, which the caller runs next.
pub(crate) async fn apply_rule(
    store: &dyn Store,
    project: &Project,
    policy: &RetentionPolicy,
    now: Millis,
    dry_run: bool,
) -> Result<RetentionRun, ServiceError> {
    let usage = store.builds_with_artifacts(project.id).await?;
    let protected: HashSet<i64> = store
        .protected_builds(project.id)
        .await?
        .into_iter()
        .collect();
    let candidates: Vec<RetentionCandidate> = usage
        .iter()
        .map(|build| RetentionCandidate {
            build_id: build.build_id,
            branch: build.branch.clone(),
            number: build.number,
            // A build that has not ended (or never reported its end) is kept.
            ended_at: build.ended_at,
            protected: protected.contains(&build.build_id),
        })
        .collect();
    let mut expired = expired_builds(policy, &candidates, now);
    expired.sort_unstable();
    let remaining = expired.len().saturating_sub(MAX_BUILDS_PER_RUN) as u64;
    expired.truncate(MAX_BUILDS_PER_RUN);
    let chosen: HashSet<i64> = expired.iter().copied().collect();
    let builds: Vec<RetentionBuild> = usage
        .iter()
        .filter(|build| chosen.contains(&build.build_id))
        .map(|build| RetentionBuild {
            run_id: build.run_id.clone(),
            number: build.number,
            branch: build.branch.clone(),
            ended_at: build.ended_at.map(|at| at.to_rfc3339()),
            files: build.files,
            bytes: build.bytes,
        })
        .collect();
    let freed = store.blobs_only_named_by(&expired).await?;
    let run = RetentionRun {
        project: project.slug.clone(),
        dry_run,
        files: builds.iter().map(|b| b.files).sum(),
        builds,
        blobs: freed.len() as u64,
        bytes_freed: freed.iter().map(|blob| blob.size).sum(),
        protected: usage
            .iter()
            .filter(|build| protected.contains(&build.build_id))
            .map(|build| build.run_id.clone())
            .collect(),
        remaining,
    };
    if !dry_run && !expired.is_empty() {
        let rows = store.delete_build_artifacts(&expired).await?;
        tracing::info!(
            project = %project.slug,
            builds = expired.len(),
            files = rows,
            blobs = run.blobs,
            bytes = run.bytes_freed,
            "artifact retention deleted build manifests"
        );
    }
    Ok(run)
}

/// Deletes every blob no manifest row names: first from the blob store, then its row
/// (only if still unnamed). A crash between the two leaves a row without bytes that no
/// manifest names, which the next sweep finds and finishes; a manifest row never names a
/// deleted blob, because uploads in this process hold `blob_gate` shared while they link
/// or publish a blob and this holds it exclusively per batch. Answers the blobs and bytes
/// deleted.
pub(crate) async fn sweep_blobs(
    store: &dyn Store,
    artifacts: &ArtifactConfig,
) -> Result<(u64, u64), ServiceError> {
    let (mut blobs, mut bytes) = (0u64, 0u64);
    loop {
        let gate = artifacts.blob_gate.write().await;
        let batch = store.unreferenced_blobs(SWEEP_BATCH).await?;
        for blob in &batch {
            artifacts.blobs.delete(&blob.sha256).await?;
            if store.forget_blob(&blob.sha256).await? {
                blobs += 1;
                bytes += blob.size;
            }
        }
        drop(gate);
        if (batch.len() as i64) < SWEEP_BATCH {
            break;
        }
    }
    if blobs > 0 {
        tracing::info!(blobs, bytes, "artifact retention deleted unused blobs");
    }
    Ok((blobs, bytes))
}
