ALTER TABLE projects ADD COLUMN github_secret TEXT
