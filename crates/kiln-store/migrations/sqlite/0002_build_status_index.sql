DROP INDEX builds_running;
CREATE INDEX builds_status ON builds (status)
