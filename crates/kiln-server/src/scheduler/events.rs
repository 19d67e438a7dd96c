//! The events a Kiln-run build writes, so every view and stream treats it like a build
//! that reports itself. Each has a deterministic `eventId`, so writing it again after a
//! crash or a retried request is acknowledged as a duplicate, not stored twice.

use kiln_core::{ClientEventId, CoreEventType, EventType, NewEvent, RunId, StageName};
use serde_json::Value;

pub(crate) fn event(run_id: &str, kind: CoreEventType, event_id: String) -> Option<NewEvent> {
    let run_id = RunId::parse("runId", run_id).ok()?;
    let mut event = NewEvent::new(run_id, EventType::Core(kind));
    event.client_event_id = ClientEventId::parse("eventId", &event_id).ok();
    event.origin = Some("kiln".into());
    Some(event)
}

pub(crate) fn stage_event(
    run_id: &str,
    kind: CoreEventType,
    step: &str,
    event_id: String,
    message: Option<String>,
    data: Value,
) -> Option<NewEvent> {
    let mut event = event(run_id, kind, event_id)?;
    event.stage = StageName::parse("stage", step).ok();
    event.message = message;
    event.data = Some(data);
    Some(event)
}
