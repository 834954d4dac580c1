-- As `../011_nonce_retention.sql`: a report's nonce is swept after the retention period, when
-- the ECU's rising report counter alone refuses a replay of it.
ALTER TABLE seen_nonces ADD COLUMN seen_at TEXT COLLATE "C" NOT NULL DEFAULT '';
CREATE INDEX seen_nonces_by_time ON seen_nonces(seen_at);
