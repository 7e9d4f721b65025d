-- The store's epoch: a random id made with the store (by the first hub node to start
-- after this migration) and made anew when a node finds the store older than what it had
-- already handed out (a backup restored). The ids of a restored store are issued again, so
-- clients that hold a cursor of another epoch start over (docs/PROTOCOL.md, "Epochs").
CREATE TABLE store_epoch (
    only_row   BOOLEAN PRIMARY KEY DEFAULT true CHECK (only_row),
    epoch      TEXT    COLLATE "C" NOT NULL,
    created_at BIGINT  NOT NULL
);
