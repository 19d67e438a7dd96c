-- Analytics read a project's builds by start time (a range of days), and prediction
-- a pipeline's newest builds: both walk this index instead of the whole project.
CREATE INDEX builds_project_started ON builds (project_id, started_at);
-- Custom metrics a build reported (`metrics: {"bundle_kb": 412}` on its events): the last
-- value of each name, as a JSON object (NULL when it reported none).
ALTER TABLE builds ADD COLUMN metrics TEXT;
