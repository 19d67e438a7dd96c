//! Events: the closed set of core types, custom types, and a validated incoming event.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::{Map, Value};

use crate::ids::{ClientEventId, RunId, StageName};
use crate::limits;

/// A validation failure that names the offending field (as a JSON path such as
/// `[3].runId`), so the API can answer `{"error":{"field": …}}`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The event types whose meaning Kiln knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CoreEventType {
    /// A build Kiln will run was triggered; as a build's first event it creates the build
    /// in status `queued` (its first step's start makes it `running`).
    BuildQueued,
    BuildStarted,
    StageStarted,
    StageCompleted,
    StageFailed,
    BuildProgress,
    Heartbeat,
    BuildCompleted,
    BuildFailed,
    BuildCancelled,
}

impl CoreEventType {
    pub const ALL: [CoreEventType; 10] = [
        Self::BuildQueued,
        Self::BuildStarted,
        Self::StageStarted,
        Self::StageCompleted,
        Self::StageFailed,
        Self::BuildProgress,
        Self::Heartbeat,
        Self::BuildCompleted,
        Self::BuildFailed,
        Self::BuildCancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::BuildQueued => "build_queued",
            Self::BuildStarted => "build_started",
            Self::StageStarted => "stage_started",
            Self::StageCompleted => "stage_completed",
            Self::StageFailed => "stage_failed",
            Self::BuildProgress => "build_progress",
            Self::Heartbeat => "heartbeat",
            Self::BuildCompleted => "build_completed",
            Self::BuildFailed => "build_failed",
            Self::BuildCancelled => "build_cancelled",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == name)
    }

    /// Stage events need a `stage` field.
    pub fn needs_stage(self) -> bool {
        matches!(
            self,
            Self::StageStarted | Self::StageCompleted | Self::StageFailed
        )
    }

    /// Events that end a build.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::BuildCompleted | Self::BuildFailed | Self::BuildCancelled
        )
    }
}

/// An event's type: one of the core types or a custom `snake_case` name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum EventType {
    Core(CoreEventType),
    Custom(String),
}

impl EventType {
    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldError> {
        if let Some(core) = CoreEventType::from_name(raw) {
            return Ok(Self::Core(core));
        }
        let snake_case = raw.chars().next().is_some_and(|c| c.is_ascii_lowercase())
            && raw
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            && !raw.ends_with('_')
            && !raw.contains("__");
        if raw.len() > limits::MAX_EVENT_TYPE_LEN || !snake_case {
            return Err(FieldError::new(
                field,
                format!(
                    "'{}' is not a valid event type: use one of {} or a custom snake_case name of at most {} characters (e.g. plan_generated)",
                    truncate_for_message(raw),
                    CoreEventType::ALL.map(CoreEventType::as_str).join(", "),
                    limits::MAX_EVENT_TYPE_LEN
                ),
            ));
        }
        Ok(Self::Custom(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        match self {
            Self::Core(core) => core.as_str(),
            Self::Custom(name) => name,
        }
    }

    pub fn core(&self) -> Option<CoreEventType> {
        match self {
            Self::Core(core) => Some(*core),
            Self::Custom(_) => None,
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn truncate_for_message(raw: &str) -> String {
    raw.chars().take(60).collect()
}

/// One validated incoming event. Optional descriptive fields are copied onto the build
/// (latest non-empty value wins); the whole event is stored as JSON.
#[derive(Clone, Debug, PartialEq)]
pub struct NewEvent {
    pub run_id: RunId,
    pub event_type: EventType,
    pub client_event_id: Option<ClientEventId>,
    pub env: Option<String>,
    pub origin: Option<String>,
    pub command: Option<String>,
    pub host: Option<String>,
    pub pid: Option<i64>,
    pub stage: Option<StageName>,
    pub message: Option<String>,
    pub duration_ms: Option<i64>,
    pub repo: Option<String>,
    pub branch: Option<String>,
    pub commit: Option<String>,
    pub progress: Option<f64>,
    pub data: Option<Value>,
    pub heartbeat_timeout_secs: Option<i64>,
    /// Custom metrics (`{"bundle_kb": 412, "tests": 1200}`): the build keeps the last
    /// value of each name.
    pub metrics: Option<BTreeMap<String, f64>>,
}

impl NewEvent {
    /// A bare event of the given type; callers fill in the optional fields.
    pub fn new(run_id: RunId, event_type: EventType) -> Self {
        Self {
            run_id,
            event_type,
            client_event_id: None,
            env: None,
            origin: None,
            command: None,
            host: None,
            pid: None,
            stage: None,
            message: None,
            duration_ms: None,
            repo: None,
            branch: None,
            commit: None,
            progress: None,
            data: None,
            heartbeat_timeout_secs: None,
            metrics: None,
        }
    }

    /// Validates one JSON event (the seed's payload plus `progress`, `data`, `eventId`,
    /// `heartbeatTimeout`). `path` prefixes field names in errors, e.g. `[3].`.
    /// Unknown fields are ignored so that newer emitters keep working.
    pub fn from_json(value: &Value, path: &str) -> Result<Self, FieldError> {
        let object = value.as_object().ok_or_else(|| {
            FieldError::new(
                if path.is_empty() {
                    "body"
                } else {
                    path.trim_end_matches('.')
                },
                "each event must be a JSON object",
            )
        })?;
        let reader = FieldReader { object, path };

        let run_id_raw = reader
            .string("runId", limits::MAX_RUN_ID_LEN)?
            .ok_or_else(|| reader.error("runId", "is required (a UUID per build)"))?;
        let run_id = RunId::parse(&reader.name("runId"), &run_id_raw)?;
        let event_raw = reader
            .string("event", limits::MAX_EVENT_TYPE_LEN.max(64))?
            .ok_or_else(|| reader.error("event", "is required (e.g. build_started)"))?;
        let event_type = EventType::parse(&reader.name("event"), &event_raw)?;

        let mut event = NewEvent::new(run_id, event_type);
        event.client_event_id = reader
            .string("eventId", limits::MAX_CLIENT_EVENT_ID_LEN)?
            .map(|raw| ClientEventId::parse(&reader.name("eventId"), &raw))
            .transpose()?;
        event.env = reader.string("env", limits::MAX_SHORT_FIELD_LEN)?;
        event.origin = reader.string("origin", limits::MAX_SHORT_FIELD_LEN)?;
        event.command = reader.string("command", limits::MAX_COMMAND_LEN)?;
        event.host = reader.string("host", limits::MAX_SHORT_FIELD_LEN)?;
        event.pid = reader.integer("pid", 0, i64::from(u32::MAX))?;
        event.stage = reader
            .string("stage", limits::MAX_STAGE_LEN * 4)?
            .map(|raw| StageName::parse(&reader.name("stage"), &raw))
            .transpose()?;
        event.message = reader.string("message", limits::MAX_MESSAGE_LEN)?;
        event.duration_ms = reader.integer("durationMs", 0, limits::MAX_DURATION_MS)?;
        event.repo = reader.string("repo", limits::MAX_SHORT_FIELD_LEN)?;
        event.branch = reader.string("branch", limits::MAX_SHORT_FIELD_LEN)?;
        event.commit = reader.string("commit", limits::MAX_COMMIT_LEN)?;
        event.progress = reader.number("progress", 0.0, 100.0)?;
        event.heartbeat_timeout_secs = reader.integer(
            "heartbeatTimeout",
            limits::MIN_HEARTBEAT_TIMEOUT_SECS,
            limits::MAX_HEARTBEAT_TIMEOUT_SECS,
        )?;
        event.data = match object.get("data") {
            None | Some(Value::Null) => None,
            Some(data @ Value::Object(_)) => {
                let size = serde_json::to_string(data)
                    .map(|s| s.len())
                    .unwrap_or(usize::MAX);
                if size > limits::MAX_DATA_BYTES {
                    return Err(reader.error(
                        "data",
                        format!(
                            "is {size} bytes as JSON; the limit is {}",
                            limits::MAX_DATA_BYTES
                        ),
                    ));
                }
                Some(data.clone())
            }
            Some(_) => return Err(reader.error("data", "must be a JSON object")),
        };

        event.metrics = reader.metrics()?;

        if let EventType::Core(core) = &event.event_type
            && core.needs_stage()
            && event.stage.is_none()
        {
            return Err(reader.error("stage", format!("is required for {} events", core.as_str())));
        }
        Ok(event)
    }

    /// The event as stored and served: the wire field names, without server-assigned
    /// ids (those live in their own columns).
    pub fn to_json(&self) -> Value {
        let mut object = Map::new();
        object.insert("runId".into(), Value::from(self.run_id.as_str()));
        object.insert("event".into(), Value::from(self.event_type.as_str()));
        let mut put = |key: &str, value: Option<Value>| {
            if let Some(value) = value {
                object.insert(key.into(), value);
            }
        };
        put(
            "eventId",
            self.client_event_id.as_ref().map(|v| v.as_str().into()),
        );
        put("env", self.env.clone().map(Value::from));
        put("origin", self.origin.clone().map(Value::from));
        put("command", self.command.clone().map(Value::from));
        put("host", self.host.clone().map(Value::from));
        put("pid", self.pid.map(Value::from));
        put("stage", self.stage.as_ref().map(|v| v.as_str().into()));
        put("message", self.message.clone().map(Value::from));
        put("durationMs", self.duration_ms.map(Value::from));
        put("repo", self.repo.clone().map(Value::from));
        put("branch", self.branch.clone().map(Value::from));
        put("commit", self.commit.clone().map(Value::from));
        put("progress", self.progress.map(Value::from));
        put(
            "heartbeatTimeout",
            self.heartbeat_timeout_secs.map(Value::from),
        );
        put("data", self.data.clone());
        put(
            "metrics",
            self.metrics.as_ref().map(|metrics| {
                Value::Object(
                    metrics
                        .iter()
                        .map(|(name, value)| (name.clone(), Value::from(*value)))
                        .collect(),
                )
            }),
        );
        Value::Object(object)
    }

    /// The `data.reason` string, if any (`"stale"` marks the reaper's failure).
    pub fn data_reason(&self) -> Option<&str> {
        self.data.as_ref()?.get("reason")?.as_str()
    }
}

struct FieldReader<'a> {
    object: &'a Map<String, Value>,
    path: &'a str,
}

impl FieldReader<'_> {
    fn name(&self, key: &str) -> String {
        format!("{}{}", self.path, key)
    }

    fn error(&self, key: &str, message: impl Into<String>) -> FieldError {
        FieldError::new(self.name(key), message)
    }

    /// A string field; `null` and absent are `None`, an empty string is `None` too.
    fn string(&self, key: &str, max_chars: usize) -> Result<Option<String>, FieldError> {
        match self.object.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => {
                if s.chars().count() > max_chars {
                    Err(self.error(key, format!("is longer than {max_chars} characters")))
                } else {
                    Ok(Some(s.clone()))
                }
            }
            Some(Value::Number(n)) if key == "commit" || key == "branch" => Ok(Some(n.to_string())),
            Some(_) => Err(self.error(key, "must be a string")),
        }
    }

    fn integer(&self, key: &str, min: i64, max: i64) -> Result<Option<i64>, FieldError> {
        match self.object.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => {
                let value = n
                    .as_i64()
                    .or_else(|| {
                        n.as_f64()
                            .filter(|f| f.fract() == 0.0 && f.abs() < 9e15)
                            .map(|f| f as i64)
                    })
                    .ok_or_else(|| self.error(key, "must be a whole number"))?;
                if value < min || value > max {
                    Err(self.error(key, format!("must be between {min} and {max}")))
                } else {
                    Ok(Some(value))
                }
            }
            Some(_) => Err(self.error(key, "must be a number")),
        }
    }

    fn number(&self, key: &str, min: f64, max: f64) -> Result<Option<f64>, FieldError> {
        match self.object.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => {
                let value = n.as_f64().unwrap_or(f64::NAN);
                if !(min..=max).contains(&value) {
                    Err(self.error(key, format!("must be between {min} and {max}")))
                } else {
                    Ok(Some(value))
                }
            }
            Some(_) => Err(self.error(key, "must be a number")),
        }
    }

    /// `metrics`: an object of names to finite numbers.
    fn metrics(&self) -> Result<Option<BTreeMap<String, f64>>, FieldError> {
        let object = match self.object.get("metrics") {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::Object(object)) => object,
            Some(_) => {
                return Err(self.error(
                    "metrics",
                    "must be an object of names to numbers, e.g. {\"bundle_kb\": 412}",
                ));
            }
        };
        if object.len() > limits::MAX_METRICS_PER_EVENT {
            return Err(self.error(
                "metrics",
                format!(
                    "has {} names; one event may carry at most {}",
                    object.len(),
                    limits::MAX_METRICS_PER_EVENT
                ),
            ));
        }
        let mut metrics = BTreeMap::new();
        for (name, value) in object {
            let field = format!("metrics.{name}");
            if !valid_metric_name(name) {
                return Err(self.error(
                    "metrics",
                    format!(
                        "'{}' is not a metric name: use 1-{} characters of letters, digits, _ . : -",
                        name.chars().take(120).collect::<String>(),
                        limits::MAX_METRIC_NAME_LEN
                    ),
                ));
            }
            let number = value
                .as_f64()
                .filter(|v| v.is_finite() && v.abs() <= limits::MAX_METRIC_VALUE)
                .ok_or_else(|| {
                    self.error(
                        &field,
                        format!(
                            "must be a number between -{0:e} and {0:e}",
                            limits::MAX_METRIC_VALUE
                        ),
                    )
                })?;
            metrics.insert(name.clone(), number);
        }
        Ok(Some(metrics))
    }
}

/// A metric name: 1-100 characters of `A-Z a-z 0-9 _ . : -`.
pub fn valid_metric_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= limits::MAX_METRIC_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn parses_the_seed_payload() {
        let event = NewEvent::from_json(
            &json!({"runId":"r1","event":"stage_started","env":"prod","origin":"server",
                    "command":"npm run build:deploy","host":"h1","pid":123,"stage":"Backend Clean",
                    "message":"go","durationMs":1234,"repo":"app","branch":"main","commit":"abc1234",
                    "progress":40,"data":{"k":1},"eventId":"e-1","unknownField":true}),
            "",
        )
        .unwrap();
        assert_eq!(
            event.event_type,
            EventType::Core(CoreEventType::StageStarted)
        );
        assert_eq!(event.stage.as_ref().unwrap().as_str(), "Backend Clean");
        assert_eq!(event.pid, Some(123));
        assert_eq!(event.progress, Some(40.0));
        assert_eq!(event.client_event_id.as_ref().unwrap().as_str(), "e-1");
        let round_trip = NewEvent::from_json(&event.to_json(), "").unwrap();
        assert_eq!(round_trip, event);
    }

    #[test]
    fn names_the_bad_field() {
        let cases = [
            (json!({"event":"heartbeat"}), "[2].runId"),
            (json!({"runId":"r"}), "[2].event"),
            (json!({"runId":"r","event":"Bad-Type"}), "[2].event"),
            (json!({"runId":"r","event":"stage_started"}), "[2].stage"),
            (
                json!({"runId":"r","event":"heartbeat","progress":101}),
                "[2].progress",
            ),
            (
                json!({"runId":"r","event":"heartbeat","pid":"12"}),
                "[2].pid",
            ),
            (
                json!({"runId":"r","event":"heartbeat","data":[1]}),
                "[2].data",
            ),
            (
                json!({"runId":"r","event":"heartbeat","durationMs":-1}),
                "[2].durationMs",
            ),
            (
                json!({"runId":"r","event":"heartbeat","host":"h".repeat(256)}),
                "[2].host",
            ),
            (json!({"runId":"r","event":"x".repeat(51)}), "[2].event"),
        ];
        for (value, field) in cases {
            let error = NewEvent::from_json(&value, "[2].").unwrap_err();
            assert_eq!(error.field, field, "{value}");
        }
        assert_eq!(
            NewEvent::from_json(&json!(3), "").unwrap_err().field,
            "body"
        );
    }

    /// Every length and range limit of an event (docs/operations.md's limits table):
    /// accepted at the limit, refused one past it naming the field.
    #[test]
    fn every_field_limit_holds_at_the_limit_and_one_past_it() {
        let with = |key: &str, value: Value| {
            let mut event = json!({"runId": "r", "event": "stage_started", "stage": "s"});
            event[key] = value;
            NewEvent::from_json(&event, "")
        };
        let text = |n: usize| Value::from("a".repeat(n));
        let cases: Vec<(&str, Value, Value)> = vec![
            (
                "runId",
                text(limits::MAX_RUN_ID_LEN),
                text(limits::MAX_RUN_ID_LEN + 1),
            ),
            (
                "event",
                text(limits::MAX_EVENT_TYPE_LEN),
                text(limits::MAX_EVENT_TYPE_LEN + 1),
            ),
            (
                "eventId",
                text(limits::MAX_CLIENT_EVENT_ID_LEN),
                text(limits::MAX_CLIENT_EVENT_ID_LEN + 1),
            ),
            (
                "stage",
                text(limits::MAX_STAGE_LEN),
                text(limits::MAX_STAGE_LEN + 1),
            ),
            (
                "env",
                text(limits::MAX_SHORT_FIELD_LEN),
                text(limits::MAX_SHORT_FIELD_LEN + 1),
            ),
            (
                "origin",
                text(limits::MAX_SHORT_FIELD_LEN),
                text(limits::MAX_SHORT_FIELD_LEN + 1),
            ),
            (
                "host",
                text(limits::MAX_SHORT_FIELD_LEN),
                text(limits::MAX_SHORT_FIELD_LEN + 1),
            ),
            (
                "repo",
                text(limits::MAX_SHORT_FIELD_LEN),
                text(limits::MAX_SHORT_FIELD_LEN + 1),
            ),
            (
                "branch",
                text(limits::MAX_SHORT_FIELD_LEN),
                text(limits::MAX_SHORT_FIELD_LEN + 1),
            ),
            (
                "command",
                text(limits::MAX_COMMAND_LEN),
                text(limits::MAX_COMMAND_LEN + 1),
            ),
            (
                "commit",
                text(limits::MAX_COMMIT_LEN),
                text(limits::MAX_COMMIT_LEN + 1),
            ),
            (
                "message",
                text(limits::MAX_MESSAGE_LEN),
                text(limits::MAX_MESSAGE_LEN + 1),
            ),
            (
                "data",
                json!({"k": "x".repeat(limits::MAX_DATA_BYTES - 8)}),
                json!({"k": "x".repeat(limits::MAX_DATA_BYTES - 7)}),
            ),
            ("progress", json!(100), json!(100.01)),
            (
                "durationMs",
                json!(limits::MAX_DURATION_MS),
                json!(limits::MAX_DURATION_MS + 1),
            ),
            (
                "heartbeatTimeout",
                json!(limits::MAX_HEARTBEAT_TIMEOUT_SECS),
                json!(limits::MAX_HEARTBEAT_TIMEOUT_SECS + 1),
            ),
            (
                "heartbeatTimeout",
                json!(limits::MIN_HEARTBEAT_TIMEOUT_SECS),
                json!(limits::MIN_HEARTBEAT_TIMEOUT_SECS - 1),
            ),
        ];
        for (key, at, past) in cases {
            assert!(with(key, at).is_ok(), "{key} at its limit is accepted");
            let error = with(key, past).unwrap_err();
            assert_eq!(error.field, key, "{key} past its limit names the field");
        }
    }

    #[test]
    fn custom_types() {
        assert!(EventType::parse("event", "plan_generated").is_ok());
        assert!(EventType::parse("event", &"a".repeat(50)).is_ok());
        for bad in [
            "",
            "Plan",
            "plan-generated",
            "_plan",
            "plan_",
            "1plan",
            "plan__x",
        ] {
            assert!(EventType::parse("event", bad).is_err(), "{bad}");
        }
    }
}
