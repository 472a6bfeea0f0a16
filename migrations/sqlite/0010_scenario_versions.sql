-- Each version of a scenario file the gateway has loaded, by the SHA-256 of its text. A run
-- keeps the version it started with until it ends, across reloads and restarts.
CREATE TABLE scenario_versions (
    hash       TEXT    PRIMARY KEY,
    scenario   TEXT    NOT NULL,
    source     TEXT    NOT NULL,
    first_seen INTEGER NOT NULL
);
CREATE INDEX scenario_versions_seen ON scenario_versions (first_seen);
ALTER TABLE runs ADD COLUMN version TEXT;
