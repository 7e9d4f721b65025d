-- Belfry hub store on PostgreSQL: the same tables and meaning as the SQLite store (see
-- ../sqlite), shared by every hub node. Times are Unix milliseconds (UTC). Text compares
-- byte by byte (COLLATE "C"), as in SQLite, so names sort and match the same way.

-- The highest notification id ever assigned. A publishing transaction increments it
-- (which locks the row until it commits), so ids are assigned and committed in the same
-- order on every node: whoever sees id n committed also sees every id below n that will
-- ever exist. Ids are never reused, even after the newest rows were pruned.
CREATE TABLE notification_head (
    only_row BOOLEAN PRIMARY KEY DEFAULT true CHECK (only_row),
    id       BIGINT  NOT NULL
);
INSERT INTO notification_head (only_row, id) VALUES (true, 0);

CREATE TABLE notifications (
    id          BIGINT  PRIMARY KEY,
    event       TEXT    COLLATE "C" NOT NULL,
    title       TEXT    NOT NULL,
    body        TEXT    NOT NULL,
    priority    BIGINT  NOT NULL,
    tags        TEXT    NOT NULL, -- JSON array
    url         TEXT,
    actions     TEXT    NOT NULL, -- JSON array
    data        TEXT    NOT NULL, -- JSON
    topic       TEXT    COLLATE "C",
    created_at  BIGINT  NOT NULL,
    expires_at  BIGINT  NOT NULL
);
CREATE INDEX notifications_expires_at ON notifications (expires_at);

-- kind: 0 = user, 1 = topic, 2 = all (name '').
CREATE TABLE notification_targets (
    kind            BIGINT NOT NULL,
    name            TEXT   COLLATE "C" NOT NULL,
    notification_id BIGINT NOT NULL REFERENCES notifications (id) ON DELETE CASCADE,
    PRIMARY KEY (kind, name, notification_id)
);
CREATE INDEX notification_targets_by_notification ON notification_targets (notification_id);

CREATE TABLE user_state (
    notification_id BIGINT NOT NULL REFERENCES notifications (id) ON DELETE CASCADE,
    user_id         TEXT   COLLATE "C" NOT NULL,
    delivered_at    BIGINT,
    read_at         BIGINT,
    PRIMARY KEY (notification_id, user_id)
);

-- Per-user watermarks, so an ack or a "read up to" only touches what is new since the
-- last one.
CREATE TABLE users (
    user_id            TEXT   COLLATE "C" PRIMARY KEY,
    acked_up_to        BIGINT NOT NULL DEFAULT 0,
    read_scanned_up_to BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE subscriptions (
    user_id     TEXT   COLLATE "C" NOT NULL,
    topic       TEXT   COLLATE "C" NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (user_id, topic)
);
CREATE INDEX subscriptions_by_topic ON subscriptions (topic);

CREATE TABLE idempotency_keys (
    key             TEXT   COLLATE "C" PRIMARY KEY,
    notification_id BIGINT NOT NULL,
    created_at      BIGINT NOT NULL
);
CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);
