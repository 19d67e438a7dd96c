-- Agent recommendation (which agent is expected to finish a queued job soonest).
-- agent_caches: the cache keys each agent saved or restored, written when a job with a
-- cache passes on it (its cache entry for the key exists then), for cache warmth.
-- jobs_step_history: an agent's recent successful runs of a project's step.
CREATE TABLE agent_caches (
    agent_id BIGINT NOT NULL,
    cache_key TEXT NOT NULL,
    project_id BIGINT NOT NULL,
    step TEXT NOT NULL,
    used_at BIGINT NOT NULL,
    PRIMARY KEY (agent_id, cache_key)
);
CREATE INDEX agent_caches_step ON agent_caches (project_id, step, used_at);
CREATE INDEX agent_caches_used ON agent_caches (used_at);
CREATE INDEX jobs_step_history ON jobs (project_id, step, state, finished_at)
