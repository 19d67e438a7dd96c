CREATE TABLE kiln_counters (
    name TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
INSERT INTO kiln_counters (name, value) VALUES ('event_id', 0);
CREATE TABLE projects (
    id BIGSERIAL PRIMARY KEY,
    slug TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    last_build_number BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE tokens (
    id BIGSERIAL PRIMARY KEY,
    project_id BIGINT REFERENCES projects(id),
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    scopes TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    display_prefix TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    last_used_at BIGINT,
    revoked_at BIGINT
);
CREATE INDEX tokens_project ON tokens (project_id);
CREATE TABLE builds (
    id BIGSERIAL PRIMARY KEY,
    project_id BIGINT NOT NULL REFERENCES projects(id),
    run_id TEXT NOT NULL UNIQUE,
    number BIGINT NOT NULL,
    status TEXT NOT NULL,
    progress_hundredths BIGINT,
    current_stage TEXT,
    env TEXT,
    origin TEXT,
    command TEXT,
    host TEXT,
    pid BIGINT,
    repo TEXT,
    branch TEXT,
    commit_sha TEXT,
    message TEXT,
    created_at BIGINT NOT NULL,
    started_at BIGINT NOT NULL,
    ended_at BIGINT,
    duration_ms BIGINT,
    last_event_at BIGINT NOT NULL,
    last_event_id BIGINT NOT NULL,
    last_seq BIGINT NOT NULL,
    heartbeat_timeout_secs BIGINT
);
CREATE INDEX builds_project ON builds (project_id, id);
CREATE INDEX builds_running ON builds (status, last_event_at);
CREATE TABLE stages (
    build_id BIGINT NOT NULL REFERENCES builds(id),
    name TEXT NOT NULL,
    position BIGINT NOT NULL,
    status TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    ended_at BIGINT,
    duration_ms BIGINT,
    message TEXT,
    PRIMARY KEY (build_id, name)
);
CREATE TABLE events (
    id BIGINT PRIMARY KEY,
    build_id BIGINT NOT NULL REFERENCES builds(id),
    project_id BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    event_type TEXT NOT NULL,
    client_event_id TEXT,
    received_at BIGINT NOT NULL,
    payload TEXT NOT NULL,
    UNIQUE (build_id, seq),
    UNIQUE (build_id, client_event_id)
);
CREATE INDEX events_project ON events (project_id, id);
