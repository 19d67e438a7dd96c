//! Test results as a service: a JUnit report parsed (off the async threads) and stored
//! for a build, a build's tests, and a project's flaky tests, slowest tests and one
//! test's history (the API's test routes, `kiln test-report` and the build page).

use std::collections::BTreeMap;

use kiln_core::junit::{self, PastResult, TestCase, TestStatus};
use kiln_core::{FieldError, Millis};
use kiln_protocol::{
    BuildTests, FlakyTestDto, FlakyTests, SlowTestDto, SlowestTests, TestCaseDto, TestHistory,
    TestReportStored, TestRunDto, TestSummary,
};
use kiln_store::{BuildRecord, Project, TestResultRecord};

use crate::AppState;
use crate::service_error::ServiceError;

/// The largest JUnit report one request may carry.
pub(crate) const MAX_REPORT_BYTES: usize = 25 * 1024 * 1024;
/// Flaky and slowest tests look at the newest this many results of their window.
const HISTORY_ROWS: i64 = 200_000;
const DAY_MS: i64 = 86_400_000;

pub(crate) fn summary<'a>(cases: impl Iterator<Item = &'a TestCase>) -> TestSummary {
    let mut summary = TestSummary::default();
    for case in cases {
        summary.total += 1;
        match case.status {
            TestStatus::Passed => summary.passed += 1,
            TestStatus::Failed => summary.failed += 1,
            TestStatus::Error => summary.errors += 1,
            TestStatus::Skipped => summary.skipped += 1,
        }
        summary.duration_ms += case.duration_ms.unwrap_or(0);
    }
    summary
}

/// Parses a report and stores its cases for the build (all or nothing).
pub(crate) async fn store_report(
    state: &AppState,
    build: &BuildRecord,
    report: axum::body::Bytes,
) -> Result<TestReportStored, ServiceError> {
    let cases = tokio::task::spawn_blocking(move || junit::parse(&report))
        .await
        .map_err(|e| ServiceError::Unavailable(format!("the report parser stopped: {e}")))?
        .map_err(|error| {
            FieldError::new(
                "body",
                format!(
                    "is not a JUnit XML report Kiln can read: {error} (send the file jest-junit, pytest --junitxml or cargo nextest wrote)"
                ),
            )
        })?;
    state
        .store
        .add_test_results(build.id, build.project_id, &cases, state.clock.now())
        .await?;
    Ok(TestReportStored {
        run_id: build.state.run_id.to_string(),
        stored: summary(cases.iter()),
    })
}

fn case_dto(record: &TestResultRecord) -> TestCaseDto {
    let case = &record.case;
    TestCaseDto {
        key: record.key.clone(),
        suite: case.suite.clone(),
        classname: case.classname.clone(),
        name: case.name.clone(),
        file: case.file.clone(),
        status: case.status.as_str().into(),
        duration_ms: case.duration_ms,
        message: case.message.clone(),
    }
}

/// A build's test cases, failures first (`failures`: only the first so many failed or
/// errored ones), with the counts of all of them.
pub(crate) async fn build_tests(
    state: &AppState,
    build: &BuildRecord,
    failures: Option<i64>,
) -> Result<BuildTests, ServiceError> {
    let mut summary = TestSummary::default();
    for (status, count, duration_ms) in state.store.build_test_counts(build.id).await? {
        summary.total += count;
        summary.duration_ms += duration_ms;
        *match status {
            TestStatus::Passed => &mut summary.passed,
            TestStatus::Failed => &mut summary.failed,
            TestStatus::Error => &mut summary.errors,
            TestStatus::Skipped => &mut summary.skipped,
        } += count;
    }
    let records = state
        .store
        .build_test_results(build.id, failures.is_some(), failures.unwrap_or(i64::MAX))
        .await?;
    Ok(BuildTests {
        run_id: build.state.run_id.to_string(),
        summary,
        tests: records.iter().map(case_dto).collect(),
    })
}

fn checked_days(days: Option<i64>) -> Result<i64, ServiceError> {
    match days {
        None => Ok(30),
        Some(days) if (1..=366).contains(&days) => Ok(days),
        Some(_) => Err(FieldError::new("days", "must be between 1 and 366").into()),
    }
}

fn since(state: &AppState, days: i64) -> Millis {
    Millis(state.clock.now().0.saturating_sub(days * DAY_MS))
}

/// Tests that both passed and failed on one commit, or flipped twice, in the last `days`.
pub(crate) async fn flaky_tests(
    state: &AppState,
    project: &Project,
    days: Option<i64>,
) -> Result<FlakyTests, ServiceError> {
    let days = checked_days(days)?;
    let rows = state
        .store
        .test_history(project.id, since(state, days), None, HISTORY_ROWS)
        .await?;
    let results: Vec<PastResult> = rows
        .into_iter()
        .map(|row| PastResult {
            key: row.key,
            at: row.at,
            commit: row.commit,
            status: row.status,
        })
        .collect();
    Ok(FlakyTests {
        project: project.slug.clone(),
        days,
        flaky: junit::flaky(&results)
            .into_iter()
            .map(|test| FlakyTestDto {
                key: test.key,
                first_seen: test.first_seen.to_rfc3339(),
                last_seen: test.last_seen.to_rfc3339(),
                flips: test.flips,
                same_commit_conflicts: test.same_commit_conflicts,
                runs: test.runs,
                failures: test.failures,
            })
            .collect(),
    })
}

/// The slowest tests of the last `days` by their p95 duration.
pub(crate) async fn slowest_tests(
    state: &AppState,
    project: &Project,
    days: Option<i64>,
    limit: Option<i64>,
) -> Result<SlowestTests, ServiceError> {
    let days = checked_days(days)?;
    let limit = match limit {
        None => 20,
        Some(limit) if (1..=1000).contains(&limit) => limit as usize,
        Some(_) => return Err(FieldError::new("limit", "must be between 1 and 1000").into()),
    };
    let rows = state
        .store
        .test_history(project.id, since(state, days), None, HISTORY_ROWS)
        .await?;
    let mut durations: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for row in rows {
        if row.status == TestStatus::Skipped {
            continue;
        }
        if let Some(ms) = row.duration_ms {
            durations.entry(row.key).or_default().push(ms);
        }
    }
    let mut tests: Vec<SlowTestDto> = durations
        .into_iter()
        .map(|(key, values)| {
            let max_ms = values.iter().copied().max();
            let q = kiln_core::analytics::Quantiles::of(values);
            SlowTestDto {
                key,
                runs: q.count,
                p50_ms: q.p50,
                p95_ms: q.p95,
                max_ms,
            }
        })
        .collect();
    tests.sort_by(|a, b| b.p95_ms.cmp(&a.p95_ms).then_with(|| a.key.cmp(&b.key)));
    tests.truncate(limit);
    Ok(SlowestTests {
        project: project.slug.clone(),
        days,
        tests,
    })
}

/// One test's results in the last `days`, newest first.
pub(crate) async fn test_history(
    state: &AppState,
    project: &Project,
    key: &str,
    days: Option<i64>,
) -> Result<TestHistory, ServiceError> {
    let days = checked_days(days)?;
    if key.is_empty() || key.len() > 4 * junit::MAX_NAME_BYTES {
        return Err(FieldError::new(
            "key",
            "is required: a test's key as GET …/builds/{runId}/tests lists it",
        )
        .into());
    }
    let rows = state
        .store
        .test_history(project.id, since(state, days), Some(key), 1000)
        .await?;
    Ok(TestHistory {
        project: project.slug.clone(),
        key: key.to_owned(),
        runs: rows
            .into_iter()
            .map(|row| TestRunDto {
                run_id: row.run_id,
                commit: row.commit,
                branch: row.branch,
                at: row.at.to_rfc3339(),
                status: row.status.as_str().into(),
                duration_ms: row.duration_ms,
            })
            .collect(),
    })
}
