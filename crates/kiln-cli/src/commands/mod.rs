//! One module per command family; each parses nothing itself beyond its clap struct.

pub mod admin;
pub mod agent;
pub mod analytics;
pub mod artifacts;
pub mod backup;
pub mod deployments;
pub mod emit;
pub mod lifecycle;
pub mod limits;
pub mod run;
pub mod runs;
pub mod secrets;
pub mod serve;
pub mod test_reports;
pub mod up;
pub mod users;
pub mod watch;
pub mod webhooks;
