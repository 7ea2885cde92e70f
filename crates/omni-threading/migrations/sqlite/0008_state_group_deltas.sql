-- A snapshot appends a changed customer group's new writes as a delta row
-- instead of rewriting the whole group, until the deltas outgrow the base
-- row in `state_groups`; then the group is written whole again and its
-- deltas go (docs/threading.md). Loading a group applies its base row,
-- then its deltas in rowid order.
--
-- Rows are appended in rowid order, so the data pages fill at the end of
-- the table; only the small index entry lands at a random place.
CREATE TABLE state_group_deltas (
    survivor TEXT NOT NULL,
    writes   BLOB NOT NULL
);
CREATE INDEX state_group_deltas_survivor ON state_group_deltas (survivor);
