-- Second wave, scale: the desired-state version at which a node's sessions
-- last changed, so a change wakes only the watches of the nodes it touches.
ALTER TABLE nodes ADD COLUMN desired_version BIGINT NOT NULL DEFAULT 0;
