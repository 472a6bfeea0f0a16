-- Events: everything that arrived, stored (and deduplicated) before it is acknowledged.
CREATE TABLE events (
    id           INTEGER PRIMARY KEY,
    kind         TEXT    NOT NULL,
    source       TEXT    NOT NULL,
    dedupe_key   TEXT    UNIQUE,
    status       TEXT    NOT NULL,
    data         TEXT    NOT NULL,
    meta         TEXT    NOT NULL,
    outcome      TEXT,
    error        TEXT,
    received_at  INTEGER NOT NULL,
    processed_at INTEGER
);
CREATE INDEX events_pending ON events (id) WHERE status = 'pending';
CREATE INDEX events_received ON events (received_at);

-- Runs: step pointer, variables and the step journal, saved after every step batch.
CREATE TABLE runs (
    id         INTEGER PRIMARY KEY,
    scenario   TEXT    NOT NULL,
    subject    TEXT,
    status     TEXT    NOT NULL,
    pc         INTEGER NOT NULL,
    vars       TEXT    NOT NULL,
    journal    TEXT    NOT NULL,
    event_id   INTEGER,
    event      TEXT    NOT NULL,
    depth      INTEGER NOT NULL DEFAULT 0,
    error      TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX runs_subject ON runs (scenario, subject, status);
CREATE INDEX runs_created ON runs (created_at);

-- Outgoing requests and messages, delivered with retries.
CREATE TABLE outbox (
    id              INTEGER PRIMARY KEY,
    run_id          INTEGER,
    step            INTEGER,
    kind            TEXT    NOT NULL,
    channel         TEXT    NOT NULL,
    request         TEXT    NOT NULL,
    status          TEXT    NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    max_attempts    INTEGER NOT NULL,
    timeout_ms      INTEGER NOT NULL,
    next_attempt_at INTEGER NOT NULL,
    resume          INTEGER NOT NULL,
    response        TEXT,
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);
CREATE INDEX outbox_open ON outbox (next_attempt_at) WHERE status = 'pending';
CREATE INDEX outbox_run ON outbox (run_id);

-- Durable timers: sleeps and wait timeouts.
CREATE TABLE timers (
    id       INTEGER PRIMARY KEY,
    run_id   INTEGER NOT NULL,
    kind     TEXT    NOT NULL,
    due_at   INTEGER NOT NULL,
    scenario TEXT    NOT NULL,
    subject  TEXT,
    key      TEXT
);
CREATE INDEX timers_due ON timers (due_at);
CREATE INDEX timers_key ON timers (scenario, subject, key);
CREATE INDEX timers_run ON timers (run_id);

-- Runs parked until a matching event arrives.
CREATE TABLE waits (
    id         INTEGER PRIMARY KEY,
    run_id     INTEGER NOT NULL UNIQUE,
    hook       TEXT    NOT NULL,
    scenario   TEXT    NOT NULL,
    step       INTEGER NOT NULL,
    match_key  TEXT    NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX waits_lookup ON waits (hook, scenario, step, match_key, id);

CREATE TABLE subject_limits (
    scenario     TEXT    NOT NULL,
    subject      TEXT    NOT NULL,
    total        INTEGER NOT NULL,
    window_start INTEGER NOT NULL,
    window_count INTEGER NOT NULL,
    PRIMARY KEY (scenario, subject)
);

CREATE TABLE subject_vars (
    subject TEXT PRIMARY KEY,
    vars    TEXT NOT NULL
);

CREATE TABLE globals (
    name       TEXT PRIMARY KEY,
    value      TEXT    NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE TABLE schedules (
    scenario  TEXT PRIMARY KEY,
    last_fire INTEGER NOT NULL
);
