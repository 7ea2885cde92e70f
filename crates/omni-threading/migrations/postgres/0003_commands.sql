-- Helpdesk commands and the relay lease (keep sqlite/ and postgres/ in
-- step).

-- Every command id applied, so a retried command applies once.
CREATE TABLE applied_commands (
    command_id    TEXT PRIMARY KEY NOT NULL,
    -- The command's issued_at, for operators reading the table.
    issued_at_ms  BIGINT NOT NULL
);

-- One row per lease (today only the timeline relay's): several daemons on
-- one store run one relay at a time, so the timeline topic gets each
-- customer's rows once and in order. A holder renews before each round;
-- another takes over only once `expires_at_ms` has passed.
CREATE TABLE leases (
    name          TEXT PRIMARY KEY NOT NULL,
    holder        TEXT NOT NULL,
    expires_at_ms BIGINT NOT NULL
);
