//! What a notification says: its kind, title and body, from the event and its build.

use kiln_core::StageStatus;
use kiln_store::{BuildRecord, NewNotification, NotificationKind, StoredEvent};

/// Whether events of this type can notify (the build's start and end only).
pub(super) fn notifies(event_type: &str) -> bool {
    matches!(
        event_type,
        "build_started" | "build_completed" | "build_failed"
    )
}

/// The notification for one event, or `None` for events that notify no one.
pub(super) fn notification(event: &StoredEvent, build: &BuildRecord) -> Option<NewNotification> {
    let payload = &event.payload;
    let text = |key: &str| payload.get(key).and_then(|v| v.as_str());
    let name = format!("{} #{}", build.project_slug, build.number);
    let state = &build.state;
    let mut details = Vec::new();
    if let Some(branch) = &state.branch {
        details.push(format!("Branch: {branch}"));
    }
    if let Some(commit) = &state.commit {
        details.push(format!("Commit: {commit}"));
    }
    details.push(format!("Run: {}", state.run_id.as_str()));

    let (kind, title, mut body) = match event.event_type.as_str() {
        "build_started" => (
            NotificationKind::BuildStarted,
            format!("{name} started"),
            vec![format!("Build {name} started.")],
        ),
        "build_completed" => {
            let duration_ms = payload
                .get("durationMs")
                .and_then(|v| v.as_i64())
                .or(state.duration_ms)
                .unwrap_or(0);
            let duration = human_duration(duration_ms);
            (
                NotificationKind::BuildCompleted,
                format!("{name} completed in {duration}"),
                vec![
                    format!("Build {name} completed successfully."),
                    format!("Duration: {duration} ({duration_ms} ms)"),
                ],
            )
        }
        "build_failed" => {
            let stale = payload
                .get("data")
                .and_then(|data| data.get("reason"))
                .and_then(|reason| reason.as_str())
                == Some("stale");
            let message = text("message").or(state.message.as_deref());
            let stage = text("stage")
                .map(str::to_owned)
                .or_else(|| failed_stage(build));
            let mut lines = Vec::new();
            let (kind, title) = if stale {
                lines.push(format!("Build {name} went silent; Kiln marked it stale."));
                (NotificationKind::BuildStale, format!("{name} is stale"))
            } else {
                lines.push(format!("Build {name} failed."));
                let title = match &stage {
                    Some(stage) => format!("{name} failed in stage {stage}"),
                    None => format!("{name} failed"),
                };
                (NotificationKind::BuildFailed, title)
            };
            if let Some(stage) = &stage {
                lines.push(format!("Stage: {stage}"));
            }
            if let Some(message) = message {
                lines.push(format!("Message: {message}"));
            }
            if let Some(duration_ms) = state.duration_ms {
                lines.push(format!(
                    "Duration: {} ({duration_ms} ms)",
                    human_duration(duration_ms)
                ));
            }
            (kind, title, lines)
        }
        _ => return None,
    };
    body.extend(details);
    Some(NewNotification {
        project_id: event.project_id,
        build_id: event.build_id,
        run_id: state.run_id.as_str().to_owned(),
        event_id: event.id,
        kind,
        title,
        body: body.join("\n"),
        created_at: event.received_at,
    })
}

/// The stage a failure happened in: the last stage that ended failed (the build's end
/// fails the stages still running).
fn failed_stage(build: &BuildRecord) -> Option<String> {
    build
        .state
        .stages
        .iter()
        .filter(|stage| stage.status == StageStatus::Failed)
        .max_by_key(|stage| (stage.ended_at, stage.position))
        .map(|stage| stage.name.as_str().to_owned())
}

/// `850 ms`, `12.3 s`, `4 min 05 s`, `2 h 03 min`.
pub(super) fn human_duration(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 1000 {
        return format!("{ms} ms");
    }
    if ms < 60_000 {
        return format!("{:.1} s", ms as f64 / 1000.0);
    }
    let seconds = ms / 1000;
    if seconds < 3600 {
        return format!("{} min {:02} s", seconds / 60, seconds % 60);
    }
    format!("{} h {:02} min", seconds / 3600, seconds / 60 % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human_duration(850), "850 ms");
        assert_eq!(human_duration(12_345), "12.3 s");
        assert_eq!(human_duration(245_000), "4 min 05 s");
        assert_eq!(human_duration(7_380_000), "2 h 03 min");
    }

    #[test]
    fn only_start_and_end_notify() {
        for event_type in ["build_started", "build_completed", "build_failed"] {
            assert!(notifies(event_type));
        }
        for event_type in [
            "stage_started",
            "stage_completed",
            "stage_failed",
            "heartbeat",
            "build_progress",
            "build_queued",
            "deploy",
        ] {
            assert!(!notifies(event_type));
        }
    }
}
