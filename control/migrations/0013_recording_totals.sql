-- Each tenant's recorded bytes as one running total: a piece's bound check
-- reads one row instead of summing every recording the tenant keeps (a
-- recorded terminal sends a piece a second, and recordings outlive their
-- sessions for sessions.recording_keep_hours).
CREATE TABLE recording_totals (
    tenant_id TEXT PRIMARY KEY,
    bytes BIGINT NOT NULL DEFAULT 0
);
INSERT INTO recording_totals (tenant_id, bytes)
    SELECT tenant_id, CAST(SUM(bytes) AS BIGINT) FROM recordings GROUP BY tenant_id;
