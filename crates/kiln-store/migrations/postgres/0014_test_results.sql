-- Test results from JUnit reports (POST …/builds/{runId}/tests, the agent's
-- test_reports): one row per test case of a build. test_key (suite, class and name)
-- names a test across builds, for its history and flaky detection.
CREATE TABLE test_results (
    id BIGSERIAL PRIMARY KEY,
    build_id BIGINT NOT NULL REFERENCES builds(id),
    project_id BIGINT NOT NULL,
    test_key TEXT NOT NULL,
    suite TEXT NOT NULL,
    classname TEXT,
    name TEXT NOT NULL,
    file TEXT,
    status TEXT NOT NULL,
    duration_ms BIGINT,
    message TEXT,
    created_at BIGINT NOT NULL
);
CREATE INDEX test_results_build ON test_results (build_id);
CREATE INDEX test_results_project ON test_results (project_id, created_at);
CREATE INDEX test_results_key ON test_results (project_id, test_key, created_at)
