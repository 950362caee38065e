-- Agent state (the reference's agent_state table). Timestamps carry a time zone so
-- instances in different zones agree; `version` lets writers detect a lost update.
CREATE TABLE agent_state (
    agent_name           VARCHAR(255) PRIMARY KEY,
    state_data           JSONB NOT NULL,
    conversation_history JSONB,
    metadata             JSONB,
    version              BIGINT NOT NULL DEFAULT 0,
    created_at           TIMESTAMPTZ DEFAULT CURRENT_TIMESTAMP,
    updated_at           TIMESTAMPTZ DEFAULT CURRENT_TIMESTAMP,
    last_activity        TIMESTAMPTZ
);

CREATE INDEX idx_agent_state_updated ON agent_state(updated_at);
CREATE INDEX idx_agent_state_last_activity ON agent_state(last_activity);
