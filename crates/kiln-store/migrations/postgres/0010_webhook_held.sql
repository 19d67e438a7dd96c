ALTER TABLE webhook_endpoints ADD COLUMN dropped_while_disabled BIGINT NOT NULL DEFAULT 0
