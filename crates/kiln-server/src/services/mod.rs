//! What a request does, independent of HTTP: one module per area, each function taking
//! the state, the caller and a typed request (kiln-protocol's wire types) and answering
//! records or refusals in Kiln's words. The JSON API (`api/`) and the dashboard (`web/`)
//! are adapters over these; nothing here imports either (`tests/layers.rs`).

pub(crate) mod accounts;
pub(crate) mod analytics;
pub(crate) mod artifacts;
pub(crate) mod builds;
pub(crate) mod compare;
pub(crate) mod deployments;
pub(crate) mod fleet;
pub(crate) mod members;
pub(crate) mod metrics;
pub(crate) mod notifications;
pub(crate) mod projects;
pub(crate) mod public_status;
pub(crate) mod reports;
pub(crate) mod repos;
pub(crate) mod retention;
pub(crate) mod test_results;
pub(crate) mod verification;
pub(crate) mod webhooks;
