-- Up to which id a "mark read up to" has already marked everything visible, so the next
-- one only scans what is newer (a read up to the head used to rescan a user's whole
-- history inside the writer).
ALTER TABLE users ADD COLUMN read_scanned_up_to INTEGER NOT NULL DEFAULT 0;
