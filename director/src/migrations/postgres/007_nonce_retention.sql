-- As `../011_nonce_retention.sql`: a report's nonce is swept after the retention period, when
-- the ECU's rising report counter alone refuses a replay of it; nonces kept before have no
-- time and count as seen when this migration ran.
ALTER TABLE seen_nonces ADD COLUMN seen_at TEXT COLLATE "C" NOT NULL DEFAULT '';
ALTER TABLE retention ADD COLUMN nonces_timed_from TEXT COLLATE "C" NOT NULL DEFAULT '';
UPDATE retention SET nonces_timed_from = to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') WHERE id = 1;
CREATE INDEX seen_nonces_by_time ON seen_nonces(seen_at);
-- The retention sweep asks, of each old manifest, whether its vehicle has a newer one: one
-- probe of this index once it holds the id, as SQLite's holds the rowid.
DROP INDEX manifests_by_vin;
CREATE INDEX manifests_by_vin ON manifests(vin, id);
