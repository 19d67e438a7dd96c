-- Script deployments' rollbacks and rebuilds on another agent.
-- deployments.follows_build: 1 for a deployment whose status follows its build's jobs (a
-- deploy step's, including the re-run of an earlier build's deploy step that rolls a
-- script deployment back), 0 for a rollback that only switches a site to an earlier
-- build's files. One deployment per (build, environment) follows a build, rollbacks of
-- either kind name rollback_of.
-- jobs.avoid_agent_id: an agent a claim leaves the job to others for a while (a rebuild
-- to verify avoids the agent that ran the step in the original build).
ALTER TABLE deployments ADD COLUMN follows_build BIGINT NOT NULL DEFAULT 1;
UPDATE deployments SET follows_build = 0 WHERE rollback_of IS NOT NULL;
DROP INDEX deployments_of_build;
CREATE UNIQUE INDEX deployments_of_build ON deployments (build_id, environment_id) WHERE follows_build = 1;
ALTER TABLE jobs ADD COLUMN avoid_agent_id BIGINT
