-- Events a consumer could not decode: parked (and skipped) instead of halting it for every
-- user. `retry`: an operator asked for another try (`runledger events retry`).
CREATE TABLE parked_events
(
    consumer       text        NOT NULL,
    position       bigint      NOT NULL,
    event_id       uuid        NOT NULL,
    aggregate_type text        NOT NULL,
    aggregate_id   text        NOT NULL,
    event_type     text        NOT NULL,
    error          text        NOT NULL,
    parked_at      timestamptz NOT NULL DEFAULT now(),
    retry          boolean     NOT NULL DEFAULT false,
    PRIMARY KEY (consumer, position)
);
