-- Analytics of closed days, kept so a long range does not re-read every build of it.
-- A row holds the samples of the builds of one project started on one UTC day (data, in
-- the day encoding of kiln-store) as of the event id computed_through. A write that changes
-- an ended build of that day raises changed_at to its event id, which makes the row
-- stale until it is computed again (a row with only changed_at is such a mark).
CREATE TABLE analytics_days (
    project_id BIGINT NOT NULL REFERENCES projects(id),
    day BIGINT NOT NULL,
    data BLOB,
    computed_through BIGINT NOT NULL DEFAULT 0,
    changed_at BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (project_id, day)
);
