-- Messages with buttons where the first allowed click wins.
CREATE TABLE offers (
    id         INTEGER PRIMARY KEY,
    run_id     INTEGER NOT NULL,
    step       INTEGER NOT NULL,
    channel    TEXT    NOT NULL,
    chat_id    TEXT    NOT NULL,
    message_id INTEGER,
    text       TEXT    NOT NULL,
    status     TEXT    NOT NULL,
    excluded   TEXT    NOT NULL DEFAULT '[]',
    winner     TEXT,
    created_at INTEGER NOT NULL
);
CREATE INDEX offers_run ON offers (run_id);
