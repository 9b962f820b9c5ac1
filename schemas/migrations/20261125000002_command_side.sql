-- Idempotency-Key: the first response to a (user, key) is kept, with a hash of the request.
CREATE TABLE idempotency_keys
(
    user_id      uuid        NOT NULL,
    key          text        NOT NULL,
    request_hash text        NOT NULL,
    status       smallint    NOT NULL,
    body         json        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, key)
);

-- Reservations whose job the process manager has not yet seen submitted; the sweeper
-- releases those older than its timeout whose job never appeared.
CREATE TABLE pending_reservations
(
    job_id      uuid PRIMARY KEY,
    usage_id    text        NOT NULL,
    reserved_at timestamptz NOT NULL
);
CREATE INDEX pending_reservations_reserved_at_idx ON pending_reservations (reserved_at);
