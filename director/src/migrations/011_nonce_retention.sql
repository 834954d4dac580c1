-- A report's nonce is kept for the retention period, then swept (`service/retention.rs`):
-- past it, the ECU's report counter, which must rise with every report the Director accepts,
-- refuses a replay of that report on its own. Nonces kept before this column existed have no
-- time (''): they count as seen when this migration ran (`nonces_timed_from`), so the first
-- sweeps after an upgrade do not remove years of them at once.
ALTER TABLE seen_nonces ADD COLUMN seen_at TEXT NOT NULL DEFAULT '';
ALTER TABLE retention ADD COLUMN nonces_timed_from TEXT NOT NULL DEFAULT '';
UPDATE retention SET nonces_timed_from = strftime('%Y-%m-%dT%H:%M:%SZ', 'now') WHERE id = 1;
CREATE INDEX seen_nonces_by_time ON seen_nonces(seen_at);
