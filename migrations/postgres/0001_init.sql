-- The PostgreSQL schema: the same tables as the SQLite one (JSON kept as text), plus what
-- several replicas on one database need to share work: a registry of live replicas,
-- owners on queued rows, timer claims, named leases and shared send pacing.

-- Milliseconds since the epoch by the database's clock, which every replica agrees on.
CREATE FUNCTION sb_now_ms() RETURNS BIGINT
    LANGUAGE sql VOLATILE
    AS $$ SELECT (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT $$;

-- Live replicas: each one updates `seen_at` every second or so. A replica not seen for a
-- lease period is removed by another one, which takes over its queued rows.
CREATE TABLE replicas (
    id         TEXT PRIMARY KEY,
    host       TEXT   NOT NULL,
    started_at BIGINT NOT NULL,
    seen_at    BIGINT NOT NULL
);

-- Row ids of events, runs and outbox rows are handed out in blocks of 100: a replica takes a
-- block from the sequence and numbers rows itself, so a batch of rows goes in with one statement.
CREATE SEQUENCE event_ids INCREMENT BY 100;
CREATE SEQUENCE run_ids INCREMENT BY 100;
CREATE SEQUENCE outbox_ids INCREMENT BY 100;

-- Events: everything that arrived, stored (and deduplicated) before it is acknowledged.
-- `owner` is the replica that processes a pending event.
CREATE TABLE events (
    id           BIGINT PRIMARY KEY,
    kind         TEXT   NOT NULL,
    source       TEXT   NOT NULL,
    dedupe_key   TEXT   UNIQUE,
    status       TEXT   NOT NULL,
    data         TEXT   NOT NULL,
    meta         TEXT   NOT NULL,
    outcome      TEXT,
    error        TEXT,
    received_at  BIGINT NOT NULL,
    processed_at BIGINT,
    owner        TEXT
);
CREATE INDEX events_pending ON events (owner, id) WHERE status = 'pending';
CREATE INDEX events_received ON events (received_at);
CREATE INDEX events_source ON events (source, id);


-- Runs: step pointer, variables and the step journal, saved after every step batch.
CREATE TABLE runs (
    id         BIGINT PRIMARY KEY,
    scenario   TEXT   NOT NULL,
    subject    TEXT,
    status     TEXT   NOT NULL,
    pc         BIGINT NOT NULL,
    vars       TEXT   NOT NULL,
    journal    TEXT   NOT NULL,
    event_id   BIGINT,
    event      TEXT   NOT NULL,
    depth      BIGINT NOT NULL DEFAULT 0,
    error      TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX runs_subject ON runs (scenario, subject, status);
CREATE INDEX runs_created ON runs (created_at);
CREATE INDEX runs_status ON runs (status, id);
CREATE INDEX runs_scenario ON runs (scenario, id);
CREATE INDEX runs_updated ON runs (updated_at);
CREATE INDEX runs_event ON runs (event_id);

-- Outgoing requests and messages, delivered with retries by their `owner` replica.
CREATE TABLE outbox (
    id              BIGINT PRIMARY KEY,
    run_id          BIGINT,
    step            BIGINT,
    kind            TEXT   NOT NULL,
    channel         TEXT   NOT NULL,
    request         TEXT   NOT NULL,
    status          TEXT   NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    max_attempts    BIGINT NOT NULL,
    timeout_ms      BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    resume          BIGINT NOT NULL,
    response        TEXT,
    last_error      TEXT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    owner           TEXT
);
CREATE INDEX outbox_open ON outbox (owner, id) WHERE status = 'pending';
CREATE INDEX outbox_run ON outbox (run_id);

-- Durable timers: sleeps and wait timeouts. A replica claims due timers for a while
-- (`claimed_until`, database clock) so that the others skip them.
CREATE TABLE timers (
    id            BIGSERIAL PRIMARY KEY,
    run_id        BIGINT NOT NULL,
    kind          TEXT   NOT NULL,
    due_at        BIGINT NOT NULL,
    scenario      TEXT   NOT NULL,
    subject       TEXT,
    key           TEXT,
    claimed_until BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX timers_due ON timers (due_at);
CREATE INDEX timers_key ON timers (scenario, subject, key);
CREATE INDEX timers_run ON timers (run_id);

-- Runs parked until a matching event arrives.
CREATE TABLE waits (
    id         BIGSERIAL PRIMARY KEY,
    run_id     BIGINT NOT NULL UNIQUE,
    hook       TEXT   NOT NULL,
    scenario   TEXT   NOT NULL,
    step       BIGINT NOT NULL,
    match_key  TEXT   NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX waits_lookup ON waits (hook, scenario, step, match_key, id);
CREATE INDEX waits_by_key ON waits (hook, match_key, id);

CREATE TABLE subject_limits (
    scenario     TEXT   NOT NULL,
    subject      TEXT   NOT NULL,
    total        BIGINT NOT NULL,
    window_start BIGINT NOT NULL,
    window_count BIGINT NOT NULL,
    PRIMARY KEY (scenario, subject)
);

CREATE TABLE subject_vars (
    subject TEXT PRIMARY KEY,
    vars    TEXT NOT NULL
);

CREATE TABLE globals (
    name       TEXT PRIMARY KEY,
    value      TEXT   NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE schedules (
    scenario  TEXT PRIMARY KEY,
    last_fire BIGINT NOT NULL
);

-- Per-scenario counters the journal shows beside the run counts.
CREATE TABLE scenario_counters (
    scenario   TEXT PRIMARY KEY,
    limited    BIGINT NOT NULL DEFAULT 0,
    last_fired BIGINT
);

-- Scenarios switched on or off by an operator (wins over the file's `enabled`).
CREATE TABLE scenario_state (
    scenario   TEXT PRIMARY KEY,
    enabled    BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- Generated settings that must survive restarts (the link-signing key, polling offsets).
CREATE TABLE settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- Messages with buttons where the first allowed click wins.
CREATE TABLE offers (
    id         BIGSERIAL PRIMARY KEY,
    run_id     BIGINT NOT NULL,
    step       BIGINT NOT NULL,
    channel    TEXT   NOT NULL,
    chat_id    TEXT   NOT NULL,
    message_id BIGINT,
    text       TEXT   NOT NULL,
    status     TEXT   NOT NULL,
    excluded   TEXT   NOT NULL DEFAULT '[]',
    winner     TEXT,
    created_at BIGINT NOT NULL
);
CREATE INDEX offers_run ON offers (run_id);

-- Named leases (database clock): one holder at a time, e.g. the Telegram long poller of a bot.
CREATE TABLE leases (
    name     TEXT PRIMARY KEY,
    owner    TEXT   NOT NULL,
    until_at BIGINT NOT NULL
);

-- Shared send pacing: the earliest time (database clock) the next message under a key may go.
CREATE TABLE send_slots (
    key     TEXT PRIMARY KEY,
    next_at BIGINT NOT NULL
);
