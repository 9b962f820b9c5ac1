-- Per-user memory of the agent: each finished run, with its embedding. No vector extension is
-- installable here, so similarity is computed in the worker over one user's rows.
CREATE TABLE IF NOT EXISTS agent_memories (
    id uuid PRIMARY KEY,
    user_id uuid NOT NULL,
    text text NOT NULL,
    embedding real[] NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS agent_memories_user ON agent_memories (user_id, created_at DESC);
