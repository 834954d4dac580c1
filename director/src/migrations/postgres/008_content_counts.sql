-- As `../012_content_counts.sql`: each vehicle's count of changes to its assignment entries,
-- and of the entries its targets list, kept by the database on every change.
ALTER TABLE vehicles ADD COLUMN content_changes BIGINT NOT NULL DEFAULT 0;
ALTER TABLE vehicles ADD COLUMN targeted_entries BIGINT NOT NULL DEFAULT 0;
UPDATE vehicles SET targeted_entries = (
    SELECT count(*) FROM assignment_ecus e
    WHERE e.vin = vehicles.vin AND e.status IN ('pending', 'delivered') AND e.cancel_requested_at IS NULL
);
CREATE FUNCTION assignment_entry_counted() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    old_vin TEXT;
    new_vin TEXT;
    old_targeted BIGINT := 0;
    new_targeted BIGINT := 0;
BEGIN
    IF TG_OP <> 'INSERT' THEN
        old_vin := OLD.vin;
        IF OLD.status IN ('pending', 'delivered') AND OLD.cancel_requested_at IS NULL THEN
            old_targeted := 1;
        END IF;
    END IF;
    IF TG_OP <> 'DELETE' THEN
        new_vin := NEW.vin;
        IF NEW.status IN ('pending', 'delivered') AND NEW.cancel_requested_at IS NULL THEN
            new_targeted := 1;
        END IF;
    END IF;
    UPDATE vehicles SET content_changes = content_changes + 1,
        targeted_entries = targeted_entries
            + CASE WHEN vin = new_vin THEN new_targeted ELSE 0 END
            - CASE WHEN vin = old_vin THEN old_targeted ELSE 0 END
    WHERE vin IN (old_vin, new_vin);
    RETURN NULL;
END
$$;
CREATE TRIGGER assignment_entry_counted AFTER INSERT OR UPDATE OR DELETE ON assignment_ecus
    FOR EACH ROW EXECUTE FUNCTION assignment_entry_counted();
