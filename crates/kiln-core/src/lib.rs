//! Kiln's domain model: validated identifiers, events, builds and their state machine, and
//! the pipeline file that says what a build runs.
//!
//! This crate performs no I/O and knows nothing of HTTP, SQL or processes. Values are
//! parsed once at the boundary into the newtypes defined here; past that point an invalid
//! run id, event type or stage name cannot exist.

pub mod analytics;
pub mod artifacts;
pub mod backup;
pub mod build;
pub mod cache_key;
pub mod compare;
pub mod deployments;
pub mod eta;
pub mod event;
pub mod glob;
pub mod ids;
pub mod jobs;
pub mod junit;
pub mod limits;
pub mod net;
pub mod pipeline;
pub mod predict;
pub mod public_status;
pub mod recommend;
pub mod retention;
pub mod roles;
pub mod time;
pub mod token;

pub use build::{Applied, BuildState, BuildStatus, Rejection, StageState, StageStatus};
pub use event::{CoreEventType, EventType, FieldError, NewEvent};
pub use ids::{AgentLabel, ClientEventId, ProjectSlug, RunId, SecretName, StageName};
pub use jobs::JobState;
pub use pipeline::{Pipeline, PipelineError};
pub use roles::Role;
pub use time::Millis;
