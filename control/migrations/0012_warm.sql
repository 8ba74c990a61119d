-- Fourth wave, warm pools: the warm containers each node reported ready,
-- per pool (JSON list of {pool, ready}); placement prefers a node where one
-- waits for the session's image and size.
ALTER TABLE nodes ADD COLUMN warm TEXT NOT NULL DEFAULT '';
