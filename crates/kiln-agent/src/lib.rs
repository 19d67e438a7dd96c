//! The build agent's parts: executors that run one step (`executor`), the checkout of
//! the exact commit (`checkout`), the dependency cache keyed by lockfile contents
//! (`cache`) and the log shipper (`logs`). The agent loop that claims jobs from the
//! server and drives these parts lives in `agent`.

pub mod agent;
pub mod artifacts;
pub mod cache;
pub mod checkout;
pub mod executor;
pub mod logs;
pub mod mask;
pub mod output;
pub mod test_reports;
