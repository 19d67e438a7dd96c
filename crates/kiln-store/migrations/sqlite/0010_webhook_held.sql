ALTER TABLE webhook_endpoints ADD COLUMN dropped_while_disabled INTEGER NOT NULL DEFAULT 0
