-- Jobs not yet over, as the process manager last saw them (see the Postgres migration of the
-- same name). `since` in microseconds since the epoch.
CREATE TABLE live_jobs
(
    job_id  TEXT PRIMARY KEY,
    status  TEXT    NOT NULL,
    attempt INTEGER NOT NULL,
    since   INTEGER NOT NULL
);
CREATE INDEX live_jobs_status_since_idx ON live_jobs (status, since);
