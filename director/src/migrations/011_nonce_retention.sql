-- A report's nonce is kept for the retention period, then swept with the manifests that carried
-- it (`service/retention.rs`): past it, the ECU's report counter, which must rise with every
-- report the Director accepts, refuses a replay of that report on its own. Nonces kept before
-- this column existed count as seen at the start of time.
ALTER TABLE seen_nonces ADD COLUMN seen_at TEXT NOT NULL DEFAULT '';
CREATE INDEX seen_nonces_by_time ON seen_nonces(seen_at);
