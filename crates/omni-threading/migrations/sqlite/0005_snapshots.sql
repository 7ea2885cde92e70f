-- The embedded store folds its journal into the state tables from time to
-- time (a snapshot), so opening the store reads the tables plus a short
-- journal, and the per-message state (event ids threaded, the index of
-- each customer's timeline rows) lives on disk instead of in memory.
-- docs/threading.md, "The embedded store", says how.

-- How far the tables are: every journal row up to `journal_through` is in
-- the state tables (and deleted), every timeline row up to
-- `timeline_through` is in `timeline_by_customer`.
CREATE TABLE state_snapshot (
    id               INTEGER PRIMARY KEY CHECK (id = 1),
    journal_through  INTEGER NOT NULL,
    timeline_through INTEGER NOT NULL
);

-- When each journal row was committed: its event ids are kept for the
-- deduplication window from then.
ALTER TABLE state_journal ADD COLUMN committed_ms INTEGER NOT NULL DEFAULT 0;

-- When each event was threaded, so ids older than the window are pruned
-- (in time order, which this index keeps local).
ALTER TABLE processed_events ADD COLUMN threaded_ms INTEGER NOT NULL DEFAULT 0;
-- Ids threaded before this version count from now: kept a full window.
UPDATE processed_events SET threaded_ms = CAST(strftime('%s', 'now') AS INTEGER) * 1000;
CREATE INDEX processed_events_time ON processed_events (threaded_ms);

-- Each customer's timeline rows, by customer: written by snapshots, in
-- customer order, so a customer's new rows land on the last page of its
-- range instead of a random page per row.
CREATE TABLE timeline_by_customer (
    customer_id TEXT NOT NULL,
    id          INTEGER NOT NULL,
    PRIMARY KEY (customer_id, id)
) WITHOUT ROWID;
INSERT INTO timeline_by_customer (customer_id, id) SELECT customer_id, id FROM timeline;
INSERT INTO state_snapshot (id, journal_through, timeline_through)
    VALUES (1, 0, COALESCE((SELECT MAX(id) FROM timeline), 0));
