-- The embedded default (`runledger dev`): the event store and the command side's tables on
-- SQLite. The events and snapshots tables have sqlite-es's columns; `position` is the rowid,
-- drawn in commit order because SQLite runs one write transaction at a time.
CREATE TABLE events
(
    position       INTEGER PRIMARY KEY AUTOINCREMENT,
    aggregate_type TEXT    NOT NULL,
    aggregate_id   TEXT    NOT NULL,
    sequence       INTEGER NOT NULL CHECK (sequence >= 0),
    event_type     TEXT    NOT NULL,
    event_version  TEXT    NOT NULL,
    payload        TEXT    NOT NULL,
    metadata       TEXT    NOT NULL,
    event_id       TEXT    NOT NULL DEFAULT (lower(hex(randomblob(16)))),
    recorded_at    TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    UNIQUE (aggregate_type, aggregate_id, sequence)
);
CREATE UNIQUE INDEX events_event_id_idx ON events (event_id);

CREATE TABLE snapshots
(
    aggregate_type   TEXT    NOT NULL,
    aggregate_id     TEXT    NOT NULL,
    last_sequence    INTEGER NOT NULL CHECK (last_sequence >= 0),
    current_snapshot INTEGER NOT NULL CHECK (current_snapshot >= 0),
    payload          TEXT    NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id)
);

CREATE TABLE checkpoints
(
    name     TEXT PRIMARY KEY,
    position INTEGER NOT NULL
);

CREATE TABLE idempotency_keys
(
    user_id      TEXT    NOT NULL,
    key          TEXT    NOT NULL,
    request_hash TEXT    NOT NULL,
    status       INTEGER NOT NULL,
    body         TEXT    NOT NULL,
    PRIMARY KEY (user_id, key)
);

-- reserved_at in microseconds since the epoch.
CREATE TABLE pending_reservations
(
    job_id      TEXT PRIMARY KEY,
    usage_id    TEXT    NOT NULL,
    reserved_at INTEGER NOT NULL
);
CREATE INDEX pending_reservations_reserved_at_idx ON pending_reservations (reserved_at);
