//! Test results on the wire (`POST`/`GET /api/v1/builds/{runId}/tests`, a project's
//! flaky and slowest tests and one test's history). Durations are milliseconds.

use serde::{Deserialize, Serialize};

/// Counts of a build's (or one report's) test cases.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TestSummary {
    pub total: u64,
    pub passed: u64,
    pub failed: u64,
    pub errors: u64,
    pub skipped: u64,
    /// The sum of the cases' durations.
    pub duration_ms: i64,
}

/// The answer to an upload: what this report added.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TestReportStored {
    pub run_id: String,
    pub stored: TestSummary,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TestCaseDto {
    /// Suite, class and name: the test's identity across builds.
    pub key: String,
    pub suite: String,
    pub classname: Option<String>,
    pub name: String,
    pub file: Option<String>,
    /// `passed`, `failed`, `error` or `skipped`.
    pub status: String,
    pub duration_ms: Option<i64>,
    pub message: Option<String>,
}

/// `GET /api/v1/builds/{runId}/tests`: failures first.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BuildTests {
    pub run_id: String,
    pub summary: TestSummary,
    pub tests: Vec<TestCaseDto>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FlakyTestDto {
    pub key: String,
    /// The first failure after a pass in the window.
    pub first_seen: String,
    pub last_seen: String,
    /// Passing ↔ failing changes in time order.
    pub flips: u64,
    /// Commits on which it both passed and failed.
    pub same_commit_conflicts: u64,
    pub runs: u64,
    pub failures: u64,
}

/// `GET /api/v1/projects/{slug}/tests/flaky?days=`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FlakyTests {
    pub project: String,
    pub days: i64,
    pub flaky: Vec<FlakyTestDto>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SlowTestDto {
    pub key: String,
    pub runs: u64,
    pub p50_ms: Option<i64>,
    pub p95_ms: Option<i64>,
    pub max_ms: Option<i64>,
}

/// `GET /api/v1/projects/{slug}/tests/slowest?days=&limit=`: by p95, slowest first.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SlowestTests {
    pub project: String,
    pub days: i64,
    pub tests: Vec<SlowTestDto>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TestRunDto {
    pub run_id: String,
    pub commit: Option<String>,
    pub branch: Option<String>,
    pub at: String,
    pub status: String,
    pub duration_ms: Option<i64>,
}

/// `GET /api/v1/projects/{slug}/tests/history?key=&days=`: newest first.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TestHistory {
    pub project: String,
    pub key: String,
    pub runs: Vec<TestRunDto>,
}
