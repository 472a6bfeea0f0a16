-- Message references are opaque strings (a Telegram message id, a WhatsApp wamid, an e-mail
-- Message-ID, a Discord snowflake).
ALTER TABLE offers ALTER COLUMN message_id TYPE TEXT USING message_id::text;

-- Outbox rows carry neutral channel operations (`op`: send, edit, answer) instead of
-- Telegram Bot API calls.
UPDATE outbox SET request = jsonb_build_object(
        'op', 'answer',
        'click', request::jsonb->>'callback_id',
        'text', coalesce(request::jsonb->>'text', ''),
        'alert', coalesce(request::jsonb->'alert' = 'true'::jsonb, false))::text
    WHERE kind = 'send' AND request::jsonb->>'method' = 'answerCallbackQuery';

UPDATE outbox SET request = jsonb_build_object(
        'op', 'edit',
        'to', request::jsonb->>'to',
        'message', request::jsonb->>'message_id',
        'text', coalesce(request::jsonb->>'text', ''))::text
    WHERE kind = 'send' AND request::jsonb->>'method' = 'editMessageText';

UPDATE outbox SET request = (
        (request::jsonb - 'callback_buttons' - 'buttons' - 'reply_keyboard' - 'reply_to' - 'to')
        || jsonb_build_object(
            'op', 'send',
            'to', coalesce(request::jsonb->>'to', ''),
            'choices', coalesce(request::jsonb->'callback_buttons', '[]'::jsonb),
            'links', coalesce(request::jsonb->'buttons', '[]'::jsonb),
            'keyboard', coalesce(request::jsonb->'reply_keyboard', '[]'::jsonb),
            'reply_to', request::jsonb->>'reply_to'))::text
    WHERE kind = 'send' AND NOT (request::jsonb ? 'method') AND NOT (request::jsonb ? 'op');
