-- Build artifacts. artifact_blobs: each stored content once, by SHA-256, with its other
-- digests (MD5 and SHA-512 are computed off the upload path, so NULL for a moment).
-- The bytes live in the blob store (the data dir or an object store).
-- artifacts: a build's manifest, one row per file path, naming its blob.
CREATE TABLE artifact_blobs (
    sha256 TEXT PRIMARY KEY,
    size BIGINT NOT NULL,
    md5 TEXT,
    sha512 TEXT,
    created_at BIGINT NOT NULL
);
CREATE TABLE artifacts (
    build_id BIGINT NOT NULL REFERENCES builds(id),
    path TEXT NOT NULL,
    step TEXT,
    size BIGINT NOT NULL,
    mode BIGINT NOT NULL,
    sha256 TEXT NOT NULL REFERENCES artifact_blobs(sha256),
    created_at BIGINT NOT NULL,
    PRIMARY KEY (build_id, path)
);
CREATE INDEX artifacts_sha256 ON artifacts (sha256);
CREATE INDEX artifact_blobs_undigested ON artifact_blobs (created_at) WHERE md5 IS NULL;
