-- Schedule tick claims: with several schedulers running, each inserts
-- (schedule_name, fire_time) before firing a tick, and only the one whose INSERT
-- wins the primary key fires it. No foreign key: a schedule defined in YAML may fire
-- before it is stored, and deleting a schedule must not wait for its claims.
-- Old claims are only needed while schedulers race for a tick; they can be pruned.
CREATE TABLE schedule_runs (
    schedule_name VARCHAR(255) NOT NULL,
    fire_time     TIMESTAMPTZ  NOT NULL,
    claimed_at    TIMESTAMPTZ  NOT NULL DEFAULT CURRENT_TIMESTAMP,
    PRIMARY KEY (schedule_name, fire_time)
);

CREATE INDEX idx_schedule_runs_fire_time ON schedule_runs(fire_time);
