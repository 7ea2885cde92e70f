-- Timeline retention (keep sqlite/ and postgres/ in step): when each row
-- was recorded (the entry's `recorded_at`, ms since the epoch), so rows
-- older than `threading.timeline_retention_days` can go once published.
-- Not indexed: rows are appended in roughly time order and pruned oldest
-- first by id, so each append pays for one integer, not one more index.
ALTER TABLE timeline ADD COLUMN recorded_ms INTEGER;

-- Rows written before this version have no time (NULL): it is in their
-- protobuf payload, which SQL cannot read, and rewriting every row would
-- copy the whole table. They count as recorded at the upgrade, so they
-- are kept a full retention period from it.
CREATE TABLE timeline_upgrade (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    upgraded_ms INTEGER NOT NULL
);
INSERT INTO timeline_upgrade (id, upgraded_ms)
    VALUES (1, CAST(strftime('%s', 'now') AS INTEGER) * 1000);
