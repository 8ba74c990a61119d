-- Third wave, snapshots: a session's filesystem committed as an image on
-- its worker (`warren-snapshot/<id>` in the engine), owned by a tenant and
-- named uniquely in it. `ready` is 0 while the agent commits it; its
-- worker keeps the images of every row naming it and removes the rest.
CREATE TABLE snapshots (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    name TEXT NOT NULL,
    session_id TEXT NOT NULL,
    node_id TEXT NOT NULL,
    ready INTEGER NOT NULL DEFAULT 0,
    size_bytes BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    UNIQUE (tenant_id, name)
);
CREATE INDEX snapshots_node ON snapshots (node_id);
