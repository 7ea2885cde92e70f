-- Threading state of the production deployment (PostgreSQL). Mirrors
-- ../sqlite/0001_threading.sql; keep the two in step.

-- A customer; `merged_into` points at the surviving customer (always one
-- hop: merges repoint earlier losers too), so old ids stay resolvable.
CREATE TABLE customers (
    id            TEXT PRIMARY KEY NOT NULL,
    merged_into   TEXT,
    next_sequence BIGINT NOT NULL
);

-- Handle -> customer. One owner per handle.
CREATE TABLE identities (
    kind        TEXT NOT NULL,
    scope       TEXT NOT NULL,
    value       TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    confirmed   BOOLEAN NOT NULL,
    PRIMARY KEY (kind, scope, value)
);
CREATE INDEX identities_customer ON identities (customer_id);

-- Unproven claims: shown to agents, never merged.
CREATE TABLE suggested_links (
    customer_id TEXT NOT NULL,
    kind        TEXT NOT NULL,
    scope       TEXT NOT NULL,
    value       TEXT NOT NULL,
    PRIMARY KEY (customer_id, kind, scope, value)
);

CREATE TABLE conversations (
    id               TEXT PRIMARY KEY NOT NULL,
    customer_id      TEXT NOT NULL,
    channel_id       TEXT NOT NULL,
    thread_key       TEXT NOT NULL,
    email            BOOLEAN NOT NULL,
    subject          TEXT NOT NULL,
    open             BOOLEAN NOT NULL,
    last_activity_ms BIGINT NOT NULL
);
CREATE INDEX conversations_customer ON conversations (customer_id, open);
CREATE INDEX conversations_subject ON conversations (customer_id, subject) WHERE email;

-- Email Message-ID -> conversation, for In-Reply-To / References.
CREATE TABLE message_refs (
    message_id      TEXT NOT NULL,
    customer_id     TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    PRIMARY KEY (message_id, conversation_id)
);
CREATE INDEX message_refs_customer ON message_refs (customer_id, message_id);

-- Every event id threaded, for deduplication and edits.
CREATE TABLE processed_events (
    event_id        TEXT PRIMARY KEY NOT NULL,
    customer_id     TEXT NOT NULL,
    conversation_id TEXT NOT NULL
);

-- The timeline and its transactional outbox in one: rows are written in
-- the threading transaction, published by the relay, and kept for the
-- query API.
CREATE TABLE timeline (
    id                BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id       TEXT NOT NULL,
    sequence          BIGINT NOT NULL,
    timeline_event_id TEXT NOT NULL,
    payload           BYTEA NOT NULL,
    published         BOOLEAN NOT NULL DEFAULT FALSE,
    UNIQUE (customer_id, sequence)
);
CREATE INDEX timeline_pending ON timeline (id) WHERE NOT published;
