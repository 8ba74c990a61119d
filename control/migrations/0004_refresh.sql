-- Second wave, terminals that never drop: refresh grants let a browser tab
-- renew its short-lived session token for as long as the session lives.
-- Only a hash of the grant is kept; it dies with its session.
CREATE TABLE refresh_grants (
    hash TEXT PRIMARY KEY,
    session_id TEXT NOT NULL,
    subject TEXT NOT NULL,
    scope TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX refresh_grants_session ON refresh_grants (session_id);
