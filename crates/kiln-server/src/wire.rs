//! Store records to the wire types clients see (kiln-protocol's DTOs and an event's
//! JSON), shared by the JSON API, the live streams, webhooks and the scheduler, so none
//! of them reaches into another's module for it.

use kiln_core::{BuildStatus, Millis, StageStatus};
use kiln_protocol::{BuildDto, BuildStatusDto, ProjectDto, StageDto, TokenDto, UserDto};
use kiln_store::{BuildRecord, Project, StoredEvent, TokenRecord, UserRecord};
use serde_json::Value;

pub(crate) fn project_dto(project: &Project) -> ProjectDto {
    ProjectDto {
        slug: project.slug.clone(),
        name: project.name.clone(),
        created_at: project.created_at.to_rfc3339(),
    }
}

pub(crate) fn user_dto(user: &UserRecord) -> UserDto {
    UserDto {
        id: user.id,
        email: user.email.clone(),
        name: user.name.clone(),
        instance_admin: user.instance_admin,
        created_at: user.created_at.to_rfc3339(),
        disabled: user.disabled_at.is_some(),
    }
}

pub(crate) fn token_dto(token: &TokenRecord, project_slug: Option<&str>) -> TokenDto {
    TokenDto {
        id: token.id,
        name: token.name.clone(),
        kind: token.kind.as_str().into(),
        project: project_slug.map(str::to_owned),
        scopes: token.scopes.iter().map(|s| s.as_str().to_owned()).collect(),
        prefix: token.display_prefix.clone(),
        created_at: token.created_at.to_rfc3339(),
        last_used_at: token.last_used_at.map(Millis::to_rfc3339),
        revoked_at: token.revoked_at.map(Millis::to_rfc3339),
    }
}

pub(crate) fn build_dto(
    build: &BuildRecord,
    default_timeout_secs: i64,
    with_stages: bool,
) -> BuildDto {
    let state = &build.state;
    BuildDto {
        run_id: state.run_id.to_string(),
        project: build.project_slug.clone(),
        number: build.number,
        status: state.status.as_str().into(),
        progress: state.progress,
        current_stage: state.current_stage.as_ref().map(ToString::to_string),
        env: state.env.clone(),
        origin: state.origin.clone(),
        command: state.command.clone(),
        host: state.host.clone(),
        pid: state.pid,
        repo: state.repo.clone(),
        branch: state.branch.clone(),
        commit: state.commit.clone(),
        message: state.message.clone(),
        created_at: state.created_at.to_rfc3339(),
        started_at: state.started_at.to_rfc3339(),
        ended_at: state.ended_at.map(Millis::to_rfc3339),
        duration_ms: state.duration_ms,
        last_event_at: state.last_event_at.to_rfc3339(),
        last_event_id: build.last_event_id,
        heartbeat_timeout_secs: state.heartbeat_timeout_secs.unwrap_or(default_timeout_secs),
        metrics: state.metrics.clone(),
        stages: with_stages.then(|| {
            state
                .stages
                .iter()
                .map(|stage| StageDto {
                    name: stage.name.to_string(),
                    status: stage.status.as_str().into(),
                    started_at: stage.started_at.to_rfc3339(),
                    ended_at: stage.ended_at.map(Millis::to_rfc3339),
                    duration_ms: stage.duration_ms,
                    message: stage.message.clone(),
                })
                .collect()
        }),
    }
}

pub(crate) fn status_dto(build: &BuildRecord) -> BuildStatusDto {
    let state = &build.state;
    BuildStatusDto {
        run_id: state.run_id.to_string(),
        project: build.project_slug.clone(),
        status: state.status.as_str().into(),
        progress: state
            .progress
            .or_else(|| (state.status == BuildStatus::Success).then_some(100.0)),
        current_stage: state.current_stage.as_ref().map(ToString::to_string),
        started_at: state.started_at.to_rfc3339(),
        ended_at: state.ended_at.map(Millis::to_rfc3339),
        duration_ms: state.duration_ms,
        last_event_at: state.last_event_at.to_rfc3339(),
        last_event_id: build.last_event_id,
        stages_total: state.stages.len(),
        stages_completed: state
            .stages
            .iter()
            .filter(|stage| stage.status != StageStatus::Running)
            .count(),
    }
}

/// A stored event as served: the payload plus `id`, `seq` and `receivedAt`.
pub(crate) fn event_json(event: &StoredEvent) -> Value {
    let mut value = event.payload.clone();
    if let Value::Object(object) = &mut value {
        object.insert("id".into(), event.id.into());
        object.insert("seq".into(), event.seq.into());
        object.insert("receivedAt".into(), event.received_at.to_rfc3339().into());
    }
    value
}

pub(crate) fn job_dto(job: &kiln_store::JobRecord) -> kiln_protocol::JobDto {
    kiln_protocol::JobDto {
        id: job.id,
        run_id: job.run_id.clone(),
        build_number: job.build_number,
        project: job.project_slug.clone(),
        step: job.step.clone(),
        state: job.state.as_str().into(),
        priority: job.priority,
        depends_on: job.depends_on.clone(),
        labels: job.labels.clone(),
        attempt: job.attempt,
        agent: job.agent_name.clone(),
        queued_at: job.queued_at.map(Millis::to_rfc3339),
        started_at: job.started_at.map(Millis::to_rfc3339),
        finished_at: job.finished_at.map(Millis::to_rfc3339),
        exit_code: job.exit_code,
        reason: job.reason.clone(),
        log_size: job.log_size,
        reported: job.reported,
        waiting_for: None,
        recommended_agent: None,
        recommendation: None,
    }
}

/// An outbound webhook endpoint as served: never its secret, only its first characters.
pub(crate) fn webhook_dto(
    endpoint: &kiln_store::WebhookEndpoint,
    project_slug: &str,
) -> kiln_protocol::WebhookDto {
    kiln_protocol::WebhookDto {
        id: endpoint.id,
        project: project_slug.to_owned(),
        url: endpoint.url.clone(),
        events: endpoint.events.clone(),
        format: endpoint.format.as_str().to_owned(),
        active: endpoint.active,
        disabled_reason: endpoint.disabled_reason.clone(),
        dropped_while_disabled: endpoint.dropped_while_disabled,
        secret_prefix: endpoint.secret.chars().take(10).collect(),
        previous_secret_until: endpoint.previous_secret_until.map(Millis::to_rfc3339),
        created_at: endpoint.created_at.to_rfc3339(),
        updated_at: endpoint.updated_at.to_rfc3339(),
    }
}

/// A notification as its user sees it.
pub(crate) fn notification_dto(
    record: &kiln_store::NotificationRecord,
) -> kiln_protocol::NotificationDto {
    kiln_protocol::NotificationDto {
        id: record.id,
        kind: record.kind.as_str().to_owned(),
        title: record.title.clone(),
        body: record.body.clone(),
        project: record.project_slug.clone(),
        run_id: record.run_id.clone(),
        event_id: record.event_id,
        unread: record.read_at.is_none(),
        created_at: record.created_at.to_rfc3339(),
        read_at: record.read_at.map(Millis::to_rfc3339),
        archived_at: record.archived_at.map(Millis::to_rfc3339),
    }
}

/// A notification mute.
pub(crate) fn mute_dto(mute: &kiln_store::NotificationMute) -> kiln_protocol::MuteDto {
    kiln_protocol::MuteDto {
        id: mute.id,
        project: mute.project_slug.clone(),
        kind: mute.kind.map(|kind| kind.as_str().to_owned()),
        created_at: mute.created_at.to_rfc3339(),
    }
}

/// A manifest row as the API shows it.
pub(crate) fn artifact_file(record: &kiln_store::ArtifactRecord) -> kiln_protocol::ArtifactFile {
    kiln_protocol::ArtifactFile {
        path: record.path.clone(),
        size: record.size,
        mode: record.mode,
        md5: record.md5.clone(),
        sha256: record.sha256.clone(),
        sha512: record.sha512.clone(),
        step: record.step.clone(),
        created_at: record.created_at.to_rfc3339(),
    }
}
