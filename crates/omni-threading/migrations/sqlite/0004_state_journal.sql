-- The embedded store keeps its threading state in memory and journals it
-- (SQLite only: PostgreSQL keeps the state in its tables, so postgres/
-- has no 0004). Why, with the figures: docs/benchmarks.md, "Fourth look".

-- One row per committed batch or command, written in the same transaction
-- as the timeline rows it produced: its state changes (JSON, in order).
-- Opening the store reads the state tables (what an older version wrote)
-- and then applies the journal in id order; a writer first applies the
-- rows another process committed since it last looked.
CREATE TABLE state_journal (
    id     INTEGER PRIMARY KEY,
    writes TEXT NOT NULL
);

-- The timeline without its UNIQUE (customer_id, sequence) index: every
-- append touched a random page of it, which cost more than the rest of
-- a batch's writes together. The store assigns each customer's sequence
-- from its state under the write lock, and finds a customer's rows
-- through an index it keeps in memory, loaded from `timeline_customers`:
-- an index by row id, so appends only ever touch its last page.
CREATE TABLE timeline_journaled (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    customer_id       TEXT NOT NULL,
    sequence          INTEGER NOT NULL,
    timeline_event_id TEXT NOT NULL,
    payload           BLOB NOT NULL,
    published         BOOLEAN NOT NULL DEFAULT FALSE
);
INSERT INTO timeline_journaled (id, customer_id, sequence, timeline_event_id, payload, published)
    SELECT id, customer_id, sequence, timeline_event_id, payload, published FROM timeline;
DROP TABLE timeline;
ALTER TABLE timeline_journaled RENAME TO timeline;
CREATE INDEX timeline_pending ON timeline (id) WHERE NOT published;
CREATE INDEX timeline_customers ON timeline (id, customer_id);
