-- Deployments. environments: a project's named targets and the deployment each serves
-- now (current_deployment_id), switched by one row update, with version bumped at every
-- switch so readers' caches notice. deployments: one row per deployment of a build to an
-- environment (its status follows the build) and one per rollback (rollback_of names
-- the deployment whose build it serves again), each naming the deployment it replaced.
CREATE TABLE environments (
    id BIGSERIAL PRIMARY KEY,
    project_id BIGINT NOT NULL REFERENCES projects(id),
    name TEXT NOT NULL,
    current_deployment_id BIGINT,
    version BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (project_id, name)
);
CREATE TABLE deployments (
    id BIGSERIAL PRIMARY KEY,
    project_id BIGINT NOT NULL REFERENCES projects(id),
    environment_id BIGINT NOT NULL REFERENCES environments(id),
    build_id BIGINT NOT NULL REFERENCES builds(id),
    step TEXT NOT NULL,
    publish_dir TEXT,
    url TEXT,
    status TEXT NOT NULL,
    message TEXT,
    requested_by TEXT,
    rollback_of BIGINT,
    replaces BIGINT,
    created_at BIGINT NOT NULL,
    finished_at BIGINT
);
CREATE UNIQUE INDEX deployments_of_build ON deployments (build_id, environment_id) WHERE rollback_of IS NULL;
CREATE INDEX deployments_of_environment ON deployments (environment_id, id);
CREATE INDEX deployments_active ON deployments (status) WHERE status IN ('queued', 'cloning', 'building', 'uploading')
