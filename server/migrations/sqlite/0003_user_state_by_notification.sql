-- User state keyed by notification first. Every ack of a notification sent to many users
-- (a topic, everyone) inserts one row per user: keyed by user first, those rows landed on
-- as many pages as there were users, each one rewritten in the WAL; keyed by notification
-- first, they are appended together on a few pages. Every lookup names both columns or
-- only the notification, so the separate index by notification is no longer needed.
CREATE TABLE user_state_new (
    notification_id INTEGER NOT NULL REFERENCES notifications (id) ON DELETE CASCADE,
    user_id         TEXT    NOT NULL,
    delivered_at    INTEGER,
    read_at         INTEGER,
    PRIMARY KEY (notification_id, user_id)
) WITHOUT ROWID;

INSERT INTO user_state_new (notification_id, user_id, delivered_at, read_at)
    SELECT notification_id, user_id, delivered_at, read_at FROM user_state;

DROP TABLE user_state;
ALTER TABLE user_state_new RENAME TO user_state;
