-- A job is either run by an agent ('agent') or reported by a `kiln run` that wraps a
-- command outside Kiln ('reported'): the latter holds the command's output as the
-- build's log and is never queued, claimed or leased.
ALTER TABLE jobs ADD COLUMN kind TEXT NOT NULL DEFAULT 'agent'
