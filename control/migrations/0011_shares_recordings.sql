-- Third wave, sharing: a share link opens one session's terminal to its
-- holder (read: watch; write: type too) until it expires or is revoked.
-- The session's worker is told its live links (the watch) and cuts the
-- others' connections.
CREATE TABLE shares (
    id TEXT PRIMARY KEY,
    session_id TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    mode TEXT NOT NULL,
    terminal BIGINT,
    name TEXT,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX shares_session ON shares (session_id);

-- Recordings: each terminal's asciicast v2, in pieces its worker sends as
-- the terminal runs (seq 0 holds the header line). Kept after the session
-- ends, for `recordings.keep_hours`.
CREATE TABLE recordings (
    session_id TEXT NOT NULL,
    terminal BIGINT NOT NULL,
    tenant_id TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    bytes BIGINT NOT NULL DEFAULT 0,
    truncated INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (session_id, terminal)
);
CREATE INDEX recordings_tenant ON recordings (tenant_id);
CREATE TABLE recording_chunks (
    session_id TEXT NOT NULL,
    terminal BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (session_id, terminal, seq)
);
