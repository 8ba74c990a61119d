-- One schema for SQLite and PostgreSQL: integers and text only (times are
-- Unix milliseconds, flags are 0/1), so the same queries run on both.
CREATE TABLE tenants (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    max_sessions BIGINT NOT NULL,
    max_memory_mb BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    is_admin BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE nodes (
    id TEXT PRIMARY KEY,
    credential_hash TEXT NOT NULL,
    allocatable_mb BIGINT NOT NULL,
    free_mb BIGINT NOT NULL,
    state TEXT NOT NULL,
    cordoned BIGINT NOT NULL,
    last_heartbeat BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE join_tokens (
    hash TEXT PRIMARY KEY,
    expires_at BIGINT NOT NULL,
    used BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    node_id TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT NOT NULL,
    image TEXT NOT NULL,
    memory_mb BIGINT NOT NULL,
    millicpus BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    idle_timeout_ms BIGINT NOT NULL,
    last_activity BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX sessions_node_status ON sessions (node_id, status);
CREATE INDEX sessions_tenant_status ON sessions (tenant_id, status);
CREATE TABLE audit (
    id TEXT PRIMARY KEY,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX audit_tenant_at ON audit (tenant_id, at);
CREATE TABLE signing_keys (
    kid TEXT PRIMARY KEY,
    private_pem TEXT NOT NULL,
    public_x TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
-- One row every scheduling transaction updates first: it serialises
-- placements across control replicas (a row lock on PostgreSQL, the write
-- lock on SQLite), and its version drives agents' watches.
CREATE TABLE sched_lock (
    id BIGINT PRIMARY KEY,
    version BIGINT NOT NULL
);
INSERT INTO sched_lock (id, version) VALUES (1, 0);
