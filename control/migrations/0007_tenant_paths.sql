-- Third wave, the hostile tenant's second round.
-- Disk is placed and counted like memory: what a node offers (0: it does
-- not limit session disks, so they are not counted there) and the most
-- one session may have there; a tenant's disk quota (0: control's default).
ALTER TABLE nodes ADD COLUMN disk_capacity_mb BIGINT NOT NULL DEFAULT 0;
ALTER TABLE nodes ADD COLUMN disk_max_mb BIGINT NOT NULL DEFAULT 0;
ALTER TABLE tenants ADD COLUMN max_disk_mb BIGINT NOT NULL DEFAULT 0;
-- Refresh grants end after an idle time: when each was last used.
ALTER TABLE refresh_grants ADD COLUMN last_used BIGINT NOT NULL DEFAULT 0;
-- Revoking a session's grants also refuses new grants for tokens minted
-- before (ms; 0: never revoked), so a token held from then cannot mint one.
ALTER TABLE sessions ADD COLUMN grants_revoked_at BIGINT NOT NULL DEFAULT 0;
