-- The embedded store keeps its threading state on disk one customer group
-- at a time (a surviving customer with those merged into it and all their
-- rows) and holds in memory only the groups in use; docs/threading.md
-- says how. A snapshot writes the groups that changed and deletes the
-- journal it has folded in.

-- One row per group: the writes that rebuild its rows (JSON, in order).
CREATE TABLE state_groups (
    survivor TEXT PRIMARY KEY NOT NULL,
    writes   TEXT NOT NULL
);

-- Which group a key leads to: `u` customer ids, `h` handle owners, `s`
-- suggestions, `c` conversations, `m` Message-IDs, and `t` the groups
-- with SLA timers (loaded on open). Only a hint of what to load: a row
-- whose key has moved to another group since costs a useless load.
CREATE TABLE state_keys (
    key      TEXT NOT NULL,
    survivor TEXT NOT NULL,
    PRIMARY KEY (key, survivor)
) WITHOUT ROWID;

-- 1 once the state is in groups. A file written by an earlier version
-- (its state in the journal and the old tables) is converted on open.
ALTER TABLE state_snapshot ADD COLUMN grouped INTEGER NOT NULL DEFAULT 0;
UPDATE state_snapshot SET grouped = 1
    WHERE NOT EXISTS (SELECT 1 FROM state_journal) AND NOT EXISTS (SELECT 1 FROM customers);
