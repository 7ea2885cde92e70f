-- What the customer-service rules gave each conversation: its tags (in
-- the order first given) and its priority ('P1' most urgent .. 'P4'; NULL
-- until a rule set covered one of its messages). The embedded store keeps
-- both in its journal (conversations there are JSON), so sqlite/ has no
-- 0006. Adding a column with a constant default rewrites no rows.
ALTER TABLE conversations
    ADD COLUMN tags TEXT[] NOT NULL DEFAULT '{}',
    ADD COLUMN priority TEXT CHECK (priority IN ('P1', 'P2', 'P3', 'P4'));
