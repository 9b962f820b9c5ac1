-- Events a consumer could not decode (see the Postgres migration of the same name).
-- parked_at in microseconds since the epoch.
CREATE TABLE parked_events
(
    consumer       TEXT    NOT NULL,
    position       INTEGER NOT NULL,
    event_id       TEXT    NOT NULL,
    aggregate_type TEXT    NOT NULL,
    aggregate_id   TEXT    NOT NULL,
    event_type     TEXT    NOT NULL,
    error          TEXT    NOT NULL,
    parked_at      INTEGER NOT NULL,
    retry          INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (consumer, position)
);
