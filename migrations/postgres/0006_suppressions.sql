-- Addresses a channel no longer sends to: after a hard bounce or an unsubscribe. A `send` to
-- one is skipped and journaled.
CREATE TABLE suppressions (
    channel TEXT   NOT NULL,
    address TEXT   NOT NULL,
    reason  TEXT   NOT NULL,
    at      BIGINT NOT NULL,
    PRIMARY KEY (channel, address)
);
