-- Dead letters (GET /dlq): a task that exhausted its retries, what was sent (routing key
-- and payload) and why it failed. `id` is the item's id in the API; redelivering the same
-- item replaces its row. Listed newest first.
CREATE TABLE dead_letters (
    id            VARCHAR(255) PRIMARY KEY,
    execution_id  VARCHAR(255) NOT NULL,
    agent_name    VARCHAR(255) NOT NULL,
    routing_key   VARCHAR(255) NOT NULL,
    payload       JSONB NOT NULL,
    error_message TEXT NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    failed_at     TIMESTAMPTZ NOT NULL DEFAULT CURRENT_TIMESTAMP
);

CREATE INDEX idx_dead_letters_failed ON dead_letters(failed_at, id);
CREATE INDEX idx_dead_letters_agent ON dead_letters(agent_name);
