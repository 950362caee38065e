-- Execution history (the reference's execution_history table) plus what the HTTP
-- contract returns: input, data, usage, mode-specific details, the parent execution
-- (agent → agent calls, event chains) and the idempotency key, unique per agent so
-- that concurrent submissions with one key yield one execution.
-- duration_seconds is fractional: most executions take well under a second.
CREATE TABLE execution_history (
    execution_id        VARCHAR(255) PRIMARY KEY,
    agent_name          VARCHAR(255) NOT NULL,
    task_type           VARCHAR(100),
    status              VARCHAR(50),
    started_at          TIMESTAMPTZ,
    completed_at        TIMESTAMPTZ,
    duration_seconds    DOUBLE PRECISION,
    result              JSONB,
    error_message       TEXT,
    trace_id            VARCHAR(255),
    created_at          TIMESTAMPTZ NOT NULL DEFAULT CURRENT_TIMESTAMP,
    input               JSONB,
    data                JSONB,
    usage               JSONB,
    details             JSONB,
    attempts            INTEGER NOT NULL DEFAULT 0,
    idempotency_key     VARCHAR(255),
    parent_execution_id VARCHAR(255),
    CONSTRAINT uq_execution_idempotency UNIQUE (agent_name, idempotency_key)
);

CREATE INDEX idx_execution_agent ON execution_history(agent_name);
CREATE INDEX idx_execution_status ON execution_history(status);
CREATE INDEX idx_execution_started ON execution_history(started_at);
CREATE INDEX idx_execution_created ON execution_history(created_at, execution_id);
CREATE INDEX idx_execution_parent ON execution_history(parent_execution_id)
    WHERE parent_execution_id IS NOT NULL;
