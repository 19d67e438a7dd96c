//! Test results on both engines: a report's cases inserted in batches of fixed shape
//! inside one transaction, and read by build or by project along their indexes.

use async_trait::async_trait;
use kiln_core::Millis;
use kiln_core::junit::{TestCase, TestStatus};

use super::db;
use super::rows::corrupt;
use super::{SqlStore, trusted};
use crate::{StoreResult, TestHistoryRow, TestResultRecord, TestResultStore};

/// Rows per INSERT: 11 values each stays far under both engines' parameter limits.
const BATCH: usize = 500;
const COLUMNS: usize = 11;

fn status_of(name: &str) -> StoreResult<TestStatus> {
    TestStatus::from_name(name).ok_or_else(|| corrupt("test result", name))
}

#[async_trait]
impl TestResultStore for SqlStore {
    async fn add_test_results(
        &self,
        build_id: i64,
        project_id: i64,
        cases: &[TestCase],
        now: Millis,
    ) -> StoreResult<u64> {
        let mut transaction = self.pool.begin().await?;
        for chunk in cases.chunks(BATCH) {
            let rows = (0..chunk.len())
                .map(|row| {
                    let values = (1..=COLUMNS)
                        .map(|column| format!("${}", row * COLUMNS + column))
                        .collect::<Vec<_>>()
                        .join(", ");
                    format!("({values})")
                })
                .collect::<Vec<_>>()
                .join(", ");
            let mut query = db::query(trusted(format!(
                "INSERT INTO test_results (build_id, project_id, test_key, suite, classname, name, file, \
                 status, duration_ms, message, created_at) VALUES {rows}"
            )));
            for case in chunk {
                query = query
                    .bind(build_id)
                    .bind(project_id)
                    .bind(case.key())
                    .bind(case.suite.clone())
                    .bind(case.classname.clone())
                    .bind(case.name.clone())
                    .bind(case.file.clone())
                    .bind(case.status.as_str())
                    .bind(case.duration_ms)
                    .bind(case.message.clone())
                    .bind(now.0);
            }
            query.execute(&mut *transaction).await?;
        }
        transaction.commit().await?;
        Ok(cases.len() as u64)
    }

    async fn build_test_counts(&self, build_id: i64) -> StoreResult<Vec<(TestStatus, u64, i64)>> {
        let rows = db::query(
            "SELECT status, CAST(COUNT(*) AS BIGINT) AS n, CAST(COALESCE(SUM(duration_ms), 0) AS BIGINT) AS ms \
             FROM test_results WHERE build_id = $1 GROUP BY status",
        )
        .bind(build_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let status: String = row.try_get("status")?;
                let count: i64 = row.try_get("n")?;
                Ok((status_of(&status)?, count as u64, row.try_get("ms")?))
            })
            .collect()
    }

    async fn build_test_results(
        &self,
        build_id: i64,
        failures_only: bool,
        limit: i64,
    ) -> StoreResult<Vec<TestResultRecord>> {
        let failures = if failures_only {
            " AND status IN ('failed', 'error')"
        } else {
            ""
        };
        let rows = db::query(trusted(format!(
            "SELECT id, build_id, test_key, suite, classname, name, file, status, duration_ms, message, created_at \
             FROM test_results WHERE build_id = $1{failures} \
             ORDER BY CASE status WHEN 'failed' THEN 0 WHEN 'error' THEN 1 WHEN 'skipped' THEN 3 ELSE 2 END, test_key, id \
             LIMIT $2"
        )))
        .bind(build_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let status: String = row.try_get("status")?;
                Ok(TestResultRecord {
                    id: row.try_get("id")?,
                    build_id: row.try_get("build_id")?,
                    key: row.try_get("test_key")?,
                    created_at: Millis(row.try_get("created_at")?),
                    case: TestCase {
                        suite: row.try_get("suite")?,
                        classname: row.try_get("classname")?,
                        name: row.try_get("name")?,
                        file: row.try_get("file")?,
                        duration_ms: row.try_get("duration_ms")?,
                        status: status_of(&status)?,
                        message: row.try_get("message")?,
                    },
                })
            })
            .collect()
    }

    async fn test_history(
        &self,
        project_id: i64,
        since: Millis,
        key: Option<&str>,
        limit: i64,
    ) -> StoreResult<Vec<TestHistoryRow>> {
        let key_clause = if key.is_some() {
            " AND t.test_key = $4"
        } else {
            ""
        };
        let mut query = db::query(trusted(format!(
            "SELECT b.run_id, b.commit_sha, b.branch, t.created_at, t.test_key, t.status, t.duration_ms \
             FROM test_results t JOIN builds b ON b.id = t.build_id \
             WHERE t.project_id = $1 AND t.created_at >= $2{key_clause} \
             ORDER BY t.created_at DESC, t.id DESC LIMIT $3"
        )))
        .bind(project_id)
        .bind(since.0)
        .bind(limit);
        if let Some(key) = key {
            query = query.bind(key);
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter()
            .map(|row| {
                let status: String = row.try_get("status")?;
                Ok(TestHistoryRow {
                    run_id: row.try_get("run_id")?,
                    commit: row.try_get("commit_sha")?,
                    branch: row.try_get("branch")?,
                    at: Millis(row.try_get("created_at")?),
                    key: row.try_get("test_key")?,
                    status: status_of(&status)?,
                    duration_ms: row.try_get("duration_ms")?,
                })
            })
            .collect()
    }
}
