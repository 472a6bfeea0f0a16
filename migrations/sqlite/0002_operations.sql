-- Per-scenario counters the journal shows beside the run counts.
CREATE TABLE scenario_counters (
    scenario   TEXT PRIMARY KEY,
    limited    INTEGER NOT NULL DEFAULT 0,
    last_fired INTEGER
);

-- Scenarios switched on or off by an operator (wins over the file's `enabled`).
CREATE TABLE scenario_state (
    scenario   TEXT PRIMARY KEY,
    enabled    INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

-- Generated settings that must survive restarts (the link-signing key when none is given).
CREATE TABLE settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE INDEX runs_status ON runs (status, id);
CREATE INDEX runs_scenario ON runs (scenario, id);
CREATE INDEX runs_updated ON runs (updated_at);

-- Replies to `ask` steps are looked up by chat, whatever run or step waits.
CREATE INDEX waits_by_key ON waits (hook, match_key, id);
