-- The reference of the message an outbox row sent (a wamid, a Telegram message id), so that
-- a delivery status can find its row; and what the statuses said: `delivery_status` is the
-- furthest one (sent < delivered < read; failed ends it), `statuses` every one as it came.
ALTER TABLE outbox ADD COLUMN message_ref TEXT;
ALTER TABLE outbox ADD COLUMN delivery_status TEXT;
ALTER TABLE outbox ADD COLUMN statuses TEXT;
UPDATE outbox SET message_ref = CAST(json_extract(response, '$.message') AS TEXT)
    WHERE status = 'delivered' AND response IS NOT NULL AND json_valid(response)
      AND json_extract(response, '$.message') IS NOT NULL;
CREATE INDEX outbox_message_ref ON outbox (channel, message_ref) WHERE message_ref IS NOT NULL;
