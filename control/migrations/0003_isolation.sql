-- Second wave, isolation: a session's disk limit (0 = the agent's default),
-- and what each node says about how it isolates sessions.
ALTER TABLE sessions ADD COLUMN disk_mb BIGINT NOT NULL DEFAULT 0;
ALTER TABLE nodes ADD COLUMN security_profile TEXT NOT NULL DEFAULT '';
ALTER TABLE nodes ADD COLUMN disk_limits BIGINT NOT NULL DEFAULT 0;
