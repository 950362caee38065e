-- Schedules (the reference's schedules table). A schedule defined in an agent's YAML
-- is named after the agent.
CREATE TABLE schedules (
    schedule_name   VARCHAR(255) PRIMARY KEY,
    agent_name      VARCHAR(255) NOT NULL,
    schedule_type   VARCHAR(50) NOT NULL,
    schedule_config JSONB NOT NULL,
    task_data       JSONB,
    enabled         BOOLEAN DEFAULT true,
    created_at      TIMESTAMPTZ DEFAULT CURRENT_TIMESTAMP,
    updated_at      TIMESTAMPTZ DEFAULT CURRENT_TIMESTAMP,
    last_execution  TIMESTAMPTZ
);

CREATE INDEX idx_schedules_agent ON schedules(agent_name);
CREATE INDEX idx_schedules_enabled ON schedules(enabled);
