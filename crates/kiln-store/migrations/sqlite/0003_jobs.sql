ALTER TABLE projects ADD COLUMN repo TEXT;
ALTER TABLE projects ADD COLUMN default_branch TEXT NOT NULL DEFAULT 'main';
ALTER TABLE projects ADD COLUMN max_concurrency BIGINT;
CREATE TABLE branches (
    project_id BIGINT NOT NULL REFERENCES projects(id),
    name TEXT NOT NULL,
    priority BIGINT,
    auto_build BIGINT NOT NULL DEFAULT 0,
    last_commit TEXT,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (project_id, name)
);
CREATE TABLE agents (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    token_id BIGINT,
    labels TEXT NOT NULL,
    concurrency BIGINT NOT NULL,
    executor TEXT NOT NULL,
    hostname TEXT,
    version TEXT,
    registered_at BIGINT NOT NULL,
    last_seen_at BIGINT NOT NULL,
    metrics TEXT
);
CREATE TABLE jobs (
    id INTEGER PRIMARY KEY,
    build_id BIGINT NOT NULL REFERENCES builds(id),
    project_id BIGINT NOT NULL,
    step TEXT NOT NULL,
    position BIGINT NOT NULL,
    state TEXT NOT NULL,
    priority BIGINT NOT NULL,
    depends_on TEXT NOT NULL,
    labels TEXT NOT NULL,
    spec TEXT NOT NULL,
    attempt BIGINT NOT NULL DEFAULT 0,
    agent_id BIGINT,
    lease_expires_at BIGINT,
    cancel_requested BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    queued_at BIGINT,
    started_at BIGINT,
    finished_at BIGINT,
    exit_code BIGINT,
    reason TEXT,
    log_size BIGINT NOT NULL DEFAULT 0,
    UNIQUE (build_id, step)
);
CREATE INDEX jobs_state ON jobs (state, priority, queued_at);
CREATE INDEX jobs_agent ON jobs (agent_id, state);
CREATE TABLE job_logs (
    job_id BIGINT NOT NULL REFERENCES jobs(id),
    offset_bytes BIGINT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (job_id, offset_bytes)
)
