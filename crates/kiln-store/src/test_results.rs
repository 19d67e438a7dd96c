//! Test results from JUnit reports: a build's cases stored in one transaction, read back
//! per build, and a project's history of them for flaky and slow tests
//! (`sql/test_results.rs`).

use async_trait::async_trait;
use kiln_core::Millis;
use kiln_core::junit::{TestCase, TestStatus};

use crate::StoreResult;

/// A stored test case of a build.
#[derive(Clone, Debug, PartialEq)]
pub struct TestResultRecord {
    pub id: i64,
    pub build_id: i64,
    pub key: String,
    pub case: TestCase,
    pub created_at: Millis,
}

/// One past result of a project's test with its build (for history, flaky and slow
/// tests).
#[derive(Clone, Debug, PartialEq)]
pub struct TestHistoryRow {
    pub run_id: String,
    pub commit: Option<String>,
    pub branch: Option<String>,
    pub at: Millis,
    pub key: String,
    pub status: TestStatus,
    pub duration_ms: Option<i64>,
}

#[async_trait]
pub trait TestResultStore: Send + Sync {
    /// Stores the cases of one report for a build, all in one transaction (nothing
    /// partial); returns how many were stored.
    async fn add_test_results(
        &self,
        build_id: i64,
        project_id: i64,
        cases: &[TestCase],
        now: Millis,
    ) -> StoreResult<u64>;
    /// A build's test cases, failures first, then by key: all of them, or only the
    /// first `limit` failed or errored ones.
    async fn build_test_results(
        &self,
        build_id: i64,
        failures_only: bool,
        limit: i64,
    ) -> StoreResult<Vec<TestResultRecord>>;
    /// A build's cases counted by status, with the sum of their durations.
    async fn build_test_counts(&self, build_id: i64) -> StoreResult<Vec<(TestStatus, u64, i64)>>;
    /// A project's results stored since `since` (one test when `key` is set), the
    /// newest `limit`, newest first.
    async fn test_history(
        &self,
        project_id: i64,
        since: Millis,
        key: Option<&str>,
        limit: i64,
    ) -> StoreResult<Vec<TestHistoryRow>>;
}
