-- TRUNCATE skips row triggers: the event log and the retention cutoff refuse it too.
CREATE FUNCTION no_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: it cannot be truncated', TG_TABLE_NAME;
END $$;
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION no_truncate();
CREATE TRIGGER retention_no_truncate BEFORE TRUNCATE ON retention
    FOR EACH STATEMENT EXECUTE FUNCTION no_truncate();
