-- Each version of a scenario file the gateway has loaded, by the SHA-256 of its text, and when
-- a gateway last loaded it (kept fresh while one serves it). A run keeps the version it
-- started with until it ends, across reloads and restarts.
CREATE TABLE scenario_versions (
    hash       TEXT    PRIMARY KEY,
    scenario   TEXT    NOT NULL,
    source     TEXT    NOT NULL,
    seen_at BIGINT NOT NULL
);
CREATE INDEX scenario_versions_seen ON scenario_versions (seen_at);
ALTER TABLE runs ADD COLUMN version TEXT;
CREATE INDEX runs_version ON runs (version);
