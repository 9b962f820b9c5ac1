-- Read models. Each projection stores its checkpoint (table checkpoints) in the same
-- transaction as its rows. A rebuild fills copies of its tables and swaps them in.

-- Projection `jobs`: the latest view of each job ...
CREATE TABLE job_views
(
    id             uuid PRIMARY KEY,
    user_id        uuid        NOT NULL,
    task_type      text        NOT NULL,
    status         text        NOT NULL,
    attempts       integer     NOT NULL,
    correlation_id text        NOT NULL,
    created_at     timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL,
    result         jsonb,
    error          text,
    position       bigint      NOT NULL
);
CREATE INDEX job_views_user_created_idx ON job_views (user_id, created_at DESC, id DESC);
CREATE INDEX job_views_user_status_idx ON job_views (user_id, status, created_at DESC, id DESC);

-- ... every visible change, which the SSE stream replays after Last-Event-ID ...
CREATE TABLE job_changes
(
    position   bigint PRIMARY KEY,
    user_id    uuid        NOT NULL,
    job_id     uuid        NOT NULL,
    status     text        NOT NULL,
    attempts   integer     NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE INDEX job_changes_user_position_idx ON job_changes (user_id, position);

-- ... and each user's last change, so a notice can name the one before it.
CREATE TABLE job_streams
(
    user_id       uuid PRIMARY KEY,
    last_position bigint NOT NULL
);

-- Projection `usage`: units per user and billing period.
CREATE TABLE usage_periods
(
    user_id      uuid        NOT NULL,
    period_start timestamptz NOT NULL,
    period_end   timestamptz NOT NULL,
    plan         text        NOT NULL,
    unit_limit   bigint,
    reserved     bigint      NOT NULL,
    consumed     bigint      NOT NULL,
    released     bigint      NOT NULL,
    chain_head   text        NOT NULL,
    closed       boolean     NOT NULL,
    position     bigint      NOT NULL,
    PRIMARY KEY (user_id, period_start)
);

-- Projection `subscriptions`: each user's paid subscription, if any.
CREATE TABLE subscription_views
(
    user_id         uuid PRIMARY KEY,
    plan            text        NOT NULL,
    status          text        NOT NULL,
    period_start    timestamptz NOT NULL,
    period_end      timestamptz NOT NULL,
    customer_id     text        NOT NULL,
    subscription_id text        NOT NULL,
    position        bigint      NOT NULL
);
