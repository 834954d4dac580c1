-- Text that is sorted or compared compares byte by byte, as on SQLite, whatever locale the
-- database was created with: the order of a vehicle's assignment entries is part of what its
-- signed metadata is derived from (an order that changed would re-sign every vehicle), and a
-- collation changed by an operating system upgrade cannot corrupt these indexes.
ALTER TABLE vehicles ALTER COLUMN vin TYPE TEXT COLLATE "C";
ALTER TABLE ecus ALTER COLUMN serial TYPE TEXT COLLATE "C";
ALTER TABLE ecus ALTER COLUMN vin TYPE TEXT COLLATE "C";
ALTER TABLE ecus ALTER COLUMN hardware_id TYPE TEXT COLLATE "C";
ALTER TABLE seen_nonces ALTER COLUMN ecu_serial TYPE TEXT COLLATE "C";
ALTER TABLE seen_nonces ALTER COLUMN nonce TYPE TEXT COLLATE "C";
ALTER TABLE manifests ALTER COLUMN vin TYPE TEXT COLLATE "C";
ALTER TABLE manifests ALTER COLUMN received_at TYPE TEXT COLLATE "C";
ALTER TABLE assignments ALTER COLUMN correlation_id TYPE TEXT COLLATE "C";
ALTER TABLE assignment_ecus ALTER COLUMN vin TYPE TEXT COLLATE "C";
ALTER TABLE assignment_ecus ALTER COLUMN ecu_serial TYPE TEXT COLLATE "C";
ALTER TABLE assignment_ecus ALTER COLUMN filename TYPE TEXT COLLATE "C";
ALTER TABLE assignment_ecus ALTER COLUMN status TYPE TEXT COLLATE "C";
ALTER TABLE vehicle_metadata ALTER COLUMN vin TYPE TEXT COLLATE "C";
ALTER TABLE api_tokens ALTER COLUMN sha256 TYPE TEXT COLLATE "C";
ALTER TABLE provisioning_tokens ALTER COLUMN sha256 TYPE TEXT COLLATE "C";
ALTER TABLE events ALTER COLUMN at TYPE TEXT COLLATE "C";
ALTER TABLE events ALTER COLUMN vin TYPE TEXT COLLATE "C";
ALTER TABLE events ALTER COLUMN severity TYPE TEXT COLLATE "C";
ALTER TABLE retention ALTER COLUMN events_before TYPE TEXT COLLATE "C";
