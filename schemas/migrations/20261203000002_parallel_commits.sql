-- Global order without serializing commits (docs/adr/0015). Inserting transactions take the
-- position lock SHARED: they no longer wait for each other's commit. A reader instead waits
-- for the writers in flight: `events_horizon` reads the last position drawn, then which
-- transactions hold the lock; once those have ended, every position at or below it is
-- committed or will never be (a writer draws only while holding the lock, so any position
-- drawn before the read belongs to a transaction that held it then).
CREATE OR REPLACE FUNCTION events_assign_position() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(7245037261);
    NEW.position := nextval('events_position_seq');
    RETURN NEW;
END
$$;

-- The transactions of this database holding the position lock now, but the caller's. A
-- bigint advisory key shows as classid = its high half, objid = its low half, objsubid = 1.
CREATE FUNCTION events_position_writers() RETURNS text[]
    LANGUAGE sql VOLATILE AS
$$
SELECT coalesce(array_agg(virtualtransaction), '{}')
  FROM pg_locks
 WHERE locktype = 'advisory'
   AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
   AND classid = 1::oid AND objid = 2950069965::bigint::oid AND objsubid = 1
   AND granted AND pid <> pg_backend_pid()
$$;

-- The last position drawn and, read after it, the writers that may still hold one below it.
CREATE FUNCTION events_horizon(OUT drawn bigint, OUT writers text[])
    LANGUAGE plpgsql VOLATILE AS
$$
BEGIN
    SELECT CASE WHEN is_called THEN last_value ELSE 0 END INTO drawn FROM events_position_seq;
    writers := events_position_writers();
END
$$;
