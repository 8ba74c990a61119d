-- Third wave, GET /v1/events: one row per session status change, written
-- in the transaction that made the change. Streams read `id > last sent`,
-- so ids must become visible in their order: every writer takes the
-- event_seq row last and holds it to its commit (one writer at a time,
-- across replicas), and numbers its rows from it.
CREATE TABLE events (
    id BIGINT PRIMARY KEY,
    at BIGINT NOT NULL,
    tenant_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    node_id TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT NOT NULL
);
CREATE INDEX events_tenant_id ON events (tenant_id, id);
CREATE INDEX events_at ON events (at);
CREATE TABLE event_seq (
    id BIGINT PRIMARY KEY,
    last BIGINT NOT NULL
);
INSERT INTO event_seq (id, last) VALUES (1, 0);
