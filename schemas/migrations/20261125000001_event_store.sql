-- The postgres-es event and snapshot tables, with three added columns. postgres-es's INSERT
-- names its columns, so the added ones take their defaults.
CREATE TABLE events
(
    aggregate_type text                         NOT NULL,
    aggregate_id   text                         NOT NULL,
    sequence       bigint CHECK (sequence >= 0) NOT NULL,
    event_type     text                         NOT NULL,
    event_version  text                         NOT NULL,
    payload        json                         NOT NULL,
    metadata       json                         NOT NULL,
    event_id       uuid                         NOT NULL DEFAULT gen_random_uuid(),
    recorded_at    timestamptz                  NOT NULL DEFAULT now(),
    position       bigint                       NOT NULL DEFAULT 0,
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
);

-- Global order (docs/adr/0002): every inserting transaction takes one transaction-scoped
-- advisory lock before it draws a position, and holds it until it commits. Positions are
-- therefore drawn in commit order, and a reader that has seen position p can never later
-- find a committed event below p. Rolled-back draws leave harmless holes.
CREATE SEQUENCE events_position_seq;

CREATE FUNCTION events_assign_position() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    PERFORM pg_advisory_xact_lock(7245037261);
    NEW.position := nextval('events_position_seq');
    RETURN NEW;
END
$$;

CREATE TRIGGER events_position
    BEFORE INSERT ON events
    FOR EACH ROW EXECUTE FUNCTION events_assign_position();

CREATE UNIQUE INDEX events_position_idx ON events (position);
CREATE UNIQUE INDEX events_event_id_idx ON events (event_id);

CREATE TABLE snapshots
(
    aggregate_type   text                                 NOT NULL,
    aggregate_id     text                                 NOT NULL,
    last_sequence    bigint CHECK (last_sequence >= 0)    NOT NULL,
    current_snapshot bigint CHECK (current_snapshot >= 0) NOT NULL,
    payload          json                                 NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, last_sequence)
);
CREATE UNIQUE INDEX snapshots_aggregate_idx ON snapshots (aggregate_type, aggregate_id);

-- Where each reader of the global order has got to.
CREATE TABLE checkpoints
(
    name       text PRIMARY KEY,
    position   bigint      NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
