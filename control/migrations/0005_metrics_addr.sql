-- Second wave, operations: where a node's agent serves /metrics.
ALTER TABLE nodes ADD COLUMN metrics_addr TEXT NOT NULL DEFAULT '';
