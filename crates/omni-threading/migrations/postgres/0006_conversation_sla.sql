-- SLA timers: whether an agent has answered in the conversation (its next
-- customer message gets the next-response target), the customer message
-- awaiting an answer with its deadline (JSON text, read only with its
-- row; NULL when nothing is awaited), and the instant its timer fires
-- next, which the daemon's clock looks up by the index. The embedded
-- store keeps them in its journal. Constant defaults rewrite no rows.
ALTER TABLE conversations
    ADD COLUMN agent_replied BOOLEAN NOT NULL DEFAULT false,
    ADD COLUMN awaiting TEXT,
    ADD COLUMN sla_timer_ms BIGINT;

CREATE INDEX conversations_sla_timer ON conversations (sla_timer_ms)
    WHERE sla_timer_ms IS NOT NULL;
