-- Jobs not yet over, as the process manager last saw them (in the same transaction as its
-- checkpoint): the lease sweep expires running attempts silent too long, and the dispatcher
-- finds waiting jobs that no queue holds. `since`: the time of the job's latest event.
CREATE TABLE live_jobs
(
    job_id  uuid PRIMARY KEY,
    status  text        NOT NULL,
    attempt integer     NOT NULL,
    since   timestamptz NOT NULL
);
CREATE INDEX live_jobs_status_since_idx ON live_jobs (status, since);
