-- Belfry hub store: notifications stored once with their targets, per-user state
-- (delivered, read) beside them, per-user topic subscriptions and idempotency keys.
-- Times are Unix milliseconds (UTC).

CREATE TABLE notifications (
    -- AUTOINCREMENT: ids are never reused, even after the newest rows were pruned,
    -- because clients keep them as cursors.
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    event       TEXT    NOT NULL,
    title       TEXT    NOT NULL,
    body        TEXT    NOT NULL,
    priority    INTEGER NOT NULL,
    tags        TEXT    NOT NULL, -- JSON array
    url         TEXT,
    actions     TEXT    NOT NULL, -- JSON array
    data        TEXT    NOT NULL, -- JSON
    topic       TEXT,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL
);
CREATE INDEX notifications_expires_at ON notifications (expires_at);

-- kind: 0 = user, 1 = topic, 2 = all (name '').
CREATE TABLE notification_targets (
    kind            INTEGER NOT NULL,
    name            TEXT    NOT NULL,
    notification_id INTEGER NOT NULL REFERENCES notifications (id) ON DELETE CASCADE,
    PRIMARY KEY (kind, name, notification_id)
) WITHOUT ROWID;
CREATE INDEX notification_targets_by_notification ON notification_targets (notification_id);

CREATE TABLE user_state (
    user_id         TEXT    NOT NULL,
    notification_id INTEGER NOT NULL REFERENCES notifications (id) ON DELETE CASCADE,
    delivered_at    INTEGER,
    read_at         INTEGER,
    PRIMARY KEY (user_id, notification_id)
) WITHOUT ROWID;
CREATE INDEX user_state_by_notification ON user_state (notification_id);

-- Per-user watermarks, so an ack only touches what is new since the last one.
CREATE TABLE users (
    user_id     TEXT    PRIMARY KEY,
    acked_up_to INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

CREATE TABLE subscriptions (
    user_id     TEXT    NOT NULL,
    topic       TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (user_id, topic)
) WITHOUT ROWID;
CREATE INDEX subscriptions_by_topic ON subscriptions (topic);

CREATE TABLE idempotency_keys (
    key             TEXT    PRIMARY KEY,
    notification_id INTEGER NOT NULL,
    created_at      INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);
