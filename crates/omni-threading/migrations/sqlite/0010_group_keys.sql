-- Which customer group each index key leads to, as two integers instead of
-- two strings (docs/threading.md, "The group index holds integers").
--
-- `state_keys` held the key itself and the survivor's id: 74 bytes of
-- index page an entry, at random places, so once it outgrew the page
-- cache each snapshot rewrote most of its pages. An entry here takes 16. Here `key` is a 64-bit
-- SipHash of the key, seeded by `state_snapshot.key_seed`, and `grp` is
-- the rowid of the group's base row in `state_groups`.
--
-- The index only says which groups to load, so a hash that collides or a
-- rowid that a merged-away group left behind costs a useless load, never
-- a wrong answer. A key it lacks would be wrong: the store therefore
-- moves the rows of `state_keys` here when it opens the file, before it
-- looks anything up, a step at a time (each step's rows are in one table
-- or the other), and then drops `state_keys`. SQL cannot do it here: the
-- hash needs the seed.
CREATE TABLE group_keys (
    key INTEGER NOT NULL,
    grp INTEGER NOT NULL,
    PRIMARY KEY (key, grp)
) WITHOUT ROWID;

-- The file's own seed: without it no one can choose index keys (email
-- addresses, Message-IDs) that collide and make every lookup of one key
-- load many groups.
ALTER TABLE state_snapshot ADD COLUMN key_seed BLOB;
UPDATE state_snapshot SET key_seed = randomblob(16) WHERE id = 1;
