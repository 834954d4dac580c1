-- The time model (docs/SECURITY.md, "Time"): an operator's time reset per vehicle, signed
-- into its Director targets as `timeReset`, and the latest time each ECU's accepted reports
-- stated, so a report whose time goes back is recorded as a security event.
ALTER TABLE vehicles ADD COLUMN time_reset INTEGER NOT NULL DEFAULT 0;
ALTER TABLE ecus ADD COLUMN last_report_time TEXT;
