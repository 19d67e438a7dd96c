-- Artifact lifecycle. artifact_retention: a project's rule (keep the newest keep_builds
-- builds of each branch and/or those of the last keep_days days, NULL for no such limit).
-- build_pins: builds whose artifacts retention never deletes, with who pinned them.
-- build_verifications: a build rebuilt to verify it is reproducible, and the rebuild.
CREATE TABLE artifact_retention (
    project_id BIGINT PRIMARY KEY REFERENCES projects(id),
    keep_builds BIGINT,
    keep_days BIGINT,
    updated_at BIGINT NOT NULL
);
CREATE TABLE build_pins (
    build_id BIGINT PRIMARY KEY REFERENCES builds(id),
    pinned_by TEXT NOT NULL,
    pinned_at BIGINT NOT NULL
);
CREATE TABLE build_verifications (
    build_id BIGINT NOT NULL REFERENCES builds(id),
    rebuild_id BIGINT NOT NULL REFERENCES builds(id),
    requested_at BIGINT NOT NULL,
    PRIMARY KEY (build_id, rebuild_id)
);
CREATE INDEX builds_project_branch_success ON builds (project_id, status, branch, number)
