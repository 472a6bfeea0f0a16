-- Message references are opaque strings (a Telegram message id, a WhatsApp wamid, an e-mail
-- Message-ID, a Discord snowflake).
ALTER TABLE offers ADD COLUMN message_ref TEXT;
UPDATE offers SET message_ref = CAST(message_id AS TEXT) WHERE message_id IS NOT NULL;
ALTER TABLE offers DROP COLUMN message_id;
ALTER TABLE offers RENAME COLUMN message_ref TO message_id;

-- Outbox rows carry neutral channel operations (`op`: send, edit, answer) instead of
-- Telegram Bot API calls.
UPDATE outbox SET request = json_object(
        'op', 'answer',
        'click', CAST(json_extract(request, '$.callback_id') AS TEXT),
        'text', coalesce(json_extract(request, '$.text'), ''),
        'alert', json(CASE WHEN json_extract(request, '$.alert') THEN 'true' ELSE 'false' END))
    WHERE kind = 'send' AND json_extract(request, '$.method') = 'answerCallbackQuery';

UPDATE outbox SET request = json_object(
        'op', 'edit',
        'to', CAST(json_extract(request, '$.to') AS TEXT),
        'message', CAST(json_extract(request, '$.message_id') AS TEXT),
        'text', coalesce(json_extract(request, '$.text'), ''))
    WHERE kind = 'send' AND json_extract(request, '$.method') = 'editMessageText';

UPDATE outbox SET request = json_remove(json_set(request,
        '$.op', 'send',
        '$.to', coalesce(CAST(json_extract(request, '$.to') AS TEXT), ''),
        '$.text', coalesce(json_extract(request, '$.text'), ''),
        '$.choices', json(coalesce(json_extract(request, '$.callback_buttons'), '[]')),
        '$.links', json(coalesce(json_extract(request, '$.buttons'), '[]')),
        '$.keyboard', json(coalesce(json_extract(request, '$.reply_keyboard'), '[]')),
        '$.reply_to', CAST(json_extract(request, '$.reply_to') AS TEXT)),
        '$.callback_buttons', '$.buttons', '$.reply_keyboard')
    WHERE kind = 'send' AND json_extract(request, '$.method') IS NULL
      AND json_extract(request, '$.op') IS NULL;
