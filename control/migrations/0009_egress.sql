-- Third wave, egress per session: what the session may reach beyond
-- Warren, as warren_proto::egress::Egress writes it ('none', 'internet',
-- or its CIDRs joined by commas), checked before it is stored and handed
-- to the session's agent in the desired state.
ALTER TABLE sessions ADD COLUMN egress TEXT NOT NULL DEFAULT 'none';
