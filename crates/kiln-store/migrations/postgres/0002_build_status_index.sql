DROP INDEX builds_running;
CREATE INDEX builds_status ON builds (status);
ALTER TABLE builds SET (fillfactor = 50);
ALTER TABLE stages SET (fillfactor = 70)
