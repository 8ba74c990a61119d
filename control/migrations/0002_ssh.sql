-- SSH public keys users register; a key opens every session of its tenant.
CREATE TABLE ssh_keys (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    api_key_id TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    public_key TEXT NOT NULL,
    comment TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX ssh_keys_tenant_fingerprint ON ssh_keys (tenant_id, fingerprint);
-- Relays' SSH host keys, published so users can pin them.
CREATE TABLE ssh_host_keys (
    fingerprint TEXT PRIMARY KEY,
    public_key TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
