CREATE TABLE notifications (
    id BIGSERIAL PRIMARY KEY,
    user_id BIGINT NOT NULL REFERENCES users(id),
    project_id BIGINT NOT NULL REFERENCES projects(id),
    build_id BIGINT NOT NULL REFERENCES builds(id),
    run_id TEXT NOT NULL,
    event_id BIGINT NOT NULL,
    kind TEXT NOT NULL,
    title TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    read_at BIGINT,
    archived_at BIGINT,
    UNIQUE (user_id, event_id),
    UNIQUE (user_id, build_id, kind)
);
CREATE INDEX notifications_user ON notifications (user_id, id);
CREATE INDEX notifications_unarchived ON notifications (created_at) WHERE archived_at IS NULL;
CREATE TABLE notification_mutes (
    id BIGSERIAL PRIMARY KEY,
    user_id BIGINT NOT NULL REFERENCES users(id),
    project_id BIGINT REFERENCES projects(id),
    kind TEXT,
    created_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX notification_mutes_unique ON notification_mutes (user_id, COALESCE(project_id, 0), COALESCE(kind, ''));
CREATE TABLE notification_emails (
    id BIGSERIAL PRIMARY KEY,
    notification_id BIGINT NOT NULL UNIQUE REFERENCES notifications(id),
    recipient TEXT NOT NULL,
    subject TEXT NOT NULL,
    body TEXT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    sent_at BIGINT,
    failed_at BIGINT,
    last_error TEXT,
    created_at BIGINT NOT NULL
);
CREATE INDEX notification_emails_due ON notification_emails (next_attempt_at) WHERE sent_at IS NULL AND failed_at IS NULL;
INSERT INTO kiln_counters (name, value) SELECT 'notifier_cursor', value FROM kiln_counters WHERE name = 'event_id'
