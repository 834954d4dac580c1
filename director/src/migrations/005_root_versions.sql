-- The root version each vehicle's metadata was signed under: after a rotation of the online
-- keys (a new root), metadata signed under an older root is signed again with the new keys.
ALTER TABLE vehicle_metadata ADD COLUMN root_version INTEGER NOT NULL DEFAULT 1;
