-- The store's epoch: a random id made with the store (by the hub, on the first start
-- after this migration) and made anew when the hub finds the store older than what it
-- had already handed out (a backup restored). The ids of a restored store are issued
-- again, so clients that hold a cursor of another epoch start over (docs/PROTOCOL.md,
-- "Epochs").
CREATE TABLE store_epoch (
    only_row   INTEGER PRIMARY KEY CHECK (only_row = 1),
    epoch      TEXT    NOT NULL,
    created_at INTEGER NOT NULL
);
