-- What a user marked read since a moment: after a Redis outage, each node re-sends its
-- devices the read marks made on other nodes meanwhile (see server/src/cluster.rs).
CREATE INDEX user_state_read_by_user ON user_state (user_id, read_at) WHERE read_at IS NOT NULL;
