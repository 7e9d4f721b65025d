-- Epochs of the hub's store (docs/PROTOCOL.md, "Epochs"). Ids only compare within one
-- epoch: when the hub's store starts a new one (a backup restored), the history of the
-- old one is kept as an earlier era, and the new era's ids may repeat the old ones.

-- The hub's epoch this device follows, and the era its history is in now.
CREATE TABLE hub_epoch (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    epoch TEXT,                           -- NULL until a hub told it
    era   INTEGER NOT NULL
);
INSERT INTO hub_epoch (id, epoch, era) VALUES (1, NULL, 0);

CREATE TABLE history (
    era         INTEGER NOT NULL,         -- the local era it arrived in
    id          INTEGER NOT NULL,         -- the hub's id, within its era
    created_at  TEXT    NOT NULL,         -- as the hub sent it: with the id, what it is
    json        TEXT    NOT NULL,         -- the notification as received
    title       TEXT    NOT NULL,
    body        TEXT    NOT NULL,
    topic       TEXT,
    priority    INTEGER NOT NULL,
    received_at INTEGER NOT NULL,         -- Unix ms
    read        INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (era, id)
);
INSERT INTO history (era, id, created_at, json, title, body, topic, priority, received_at, read)
    SELECT 0, id, coalesce(json_extract(json, '$.created_at'), ''), json, title, body, topic,
           priority, received_at, read
    FROM notifications;
DROP TABLE notifications;
CREATE INDEX history_unread ON history (era, id) WHERE read = 0;
CREATE INDEX history_topic ON history (topic, era, id);
-- A notification of an earlier era found again in a new one (the same id and time).
CREATE INDEX history_by_id ON history (id, created_at);
