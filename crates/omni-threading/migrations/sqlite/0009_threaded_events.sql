-- The event ids a snapshot moves to disk, found by a 64-bit hash of the id
-- instead of by the id itself (docs/threading.md, "Event ids on disk are
-- found by a hash").
--
-- `processed_events` indexed the ids themselves, at random places, so
-- once that index outgrew the page cache every snapshot rewrote most of
-- its pages, and every lookup read one back. An entry of the hash (and
-- the rowid) takes 18 bytes of index page, one of a 36-character id 50,
-- so the same pages hold almost three times the ids. Rows are appended
-- in rowid order, as the snapshot writes them; a lookup compares the ids
-- of the rows its hashes find, so two ids with one hash stay apart.
--
-- `processed_events` is no longer written. The ids it holds are still
-- looked up there until the deduplication window prunes them, so an
-- upgrade copies nothing.
CREATE TABLE threaded_events (
    id_hash         INTEGER NOT NULL,
    event_id        TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    threaded_ms     INTEGER NOT NULL
);
CREATE INDEX threaded_events_hash ON threaded_events (id_hash);
CREATE INDEX threaded_events_time ON threaded_events (threaded_ms);
