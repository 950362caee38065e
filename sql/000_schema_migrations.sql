-- Migration tracking: one row per applied migration file (agentrunner db migrate).
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER PRIMARY KEY,
    name       VARCHAR(255) NOT NULL,
    checksum   VARCHAR(64)  NOT NULL,
    applied_at TIMESTAMPTZ  NOT NULL DEFAULT CURRENT_TIMESTAMP
);
