-- An offer to several recipients posts one message to each of them: each message is recorded
-- with its conversation, its reference once the channel gives it out, and what it said, so
-- that every one of them can be closed when the offer is taken or expires.
CREATE TABLE offer_messages (
    id         BIGSERIAL PRIMARY KEY,
    offer_id   BIGINT NOT NULL,
    channel    TEXT   NOT NULL,
    chat_id    TEXT   NOT NULL,
    message_id TEXT,
    -- The outbox row that sends it: its delivery names the message reference.
    outbox_id  BIGINT,
    text       TEXT   NOT NULL,
    lang       TEXT
);
CREATE INDEX offer_messages_offer ON offer_messages (offer_id);

-- Offers of the earlier version had one message, in the offer's own columns.
INSERT INTO offer_messages (offer_id, channel, chat_id, message_id, text)
    SELECT id, channel, chat_id, message_id, text FROM offers ORDER BY id;
ALTER TABLE offers DROP COLUMN message_id;
