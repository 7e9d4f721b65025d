-- The desktop's local store: settings, the catch-up cursor, the history, and read marks
-- made offline that still have to reach the hub.

CREATE TABLE settings (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    json TEXT NOT NULL
);

-- The highest id the client may resume from (see the cursor rule in docs/PROTOCOL.md).
CREATE TABLE cursor (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    value INTEGER NOT NULL
);

CREATE TABLE notifications (
    id          INTEGER PRIMARY KEY,      -- the hub's id
    json        TEXT    NOT NULL,         -- the notification as received
    title       TEXT    NOT NULL,
    body        TEXT    NOT NULL,
    topic       TEXT,
    priority    INTEGER NOT NULL,
    received_at INTEGER NOT NULL,         -- Unix ms
    read        INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX notifications_unread ON notifications (id) WHERE read = 0;
CREATE INDEX notifications_topic ON notifications (topic, id);

CREATE TABLE pending_reads (
    seq  INTEGER PRIMARY KEY AUTOINCREMENT,
    json TEXT NOT NULL                    -- a ReadRequest
);
