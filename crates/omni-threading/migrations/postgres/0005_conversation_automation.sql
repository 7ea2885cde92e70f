-- What the customer-service rules sent each conversation, for their rate
-- limits: when it was last acknowledged (the customer message's event
-- time, ms since the epoch; NULL if never), and its latest keyword
-- auto-replies (at most 16, oldest first) as two arrays of equal length,
-- the templates and their times. The embedded store keeps them in its
-- journal. Constant defaults rewrite no rows.
ALTER TABLE conversations
    ADD COLUMN last_acknowledgement_ms BIGINT,
    ADD COLUMN auto_reply_templates TEXT[] NOT NULL DEFAULT '{}',
    ADD COLUMN auto_reply_at_ms BIGINT[] NOT NULL DEFAULT '{}';
