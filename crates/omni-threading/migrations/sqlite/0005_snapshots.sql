-- The embedded store moves what grows with every message (event ids
-- threaded, the index of each customer's timeline rows) from memory to
-- these tables from time to time (a snapshot), and rewrites its journal
-- as a dump of the state once it has grown well past it. docs/threading.md
-- says how.

-- How far the tables are: the event ids of journal rows up to
-- `journal_through` are in `processed_events`, timeline rows up to
-- `timeline_through` in `timeline_by_customer`; `event_ids` counts the
-- rows of `processed_events` (kept here: counting them is a full scan);
-- `generation` counts journal rewrites (a store that missed one reloads)
-- and `dump_bytes` is the size of the last one.
CREATE TABLE state_snapshot (
    id               INTEGER PRIMARY KEY CHECK (id = 1),
    journal_through  INTEGER NOT NULL,
    timeline_through INTEGER NOT NULL,
    event_ids        INTEGER NOT NULL,
    generation       INTEGER NOT NULL,
    dump_bytes       INTEGER NOT NULL
);

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
INSERT INTO state_snapshot (id, journal_through, timeline_through, event_ids, generation, dump_bytes)
    VALUES (1, 0, COALESCE((SELECT MAX(id) FROM timeline), 0),
            (SELECT COUNT(*) FROM processed_events), 0, 0);
