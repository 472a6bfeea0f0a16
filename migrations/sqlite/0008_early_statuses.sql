-- Delivery statuses that arrived before the delivery of their message was recorded (an engine
-- backlog, an outage): kept here and applied to the outbox row when it is.
CREATE TABLE early_statuses (
    message_ref TEXT    NOT NULL,
    status      TEXT    NOT NULL,
    channel     TEXT    NOT NULL,
    data        TEXT    NOT NULL,
    event_id    INTEGER NOT NULL,
    at          INTEGER NOT NULL,
    PRIMARY KEY (message_ref, status)
);
CREATE INDEX early_statuses_at ON early_statuses (at);
