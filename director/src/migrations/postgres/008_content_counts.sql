-- As `../012_content_counts.sql`: each vehicle's count of changes to its assignment entries,
-- and of the entries its targets list, kept by the database on every change. The entries are
-- locked against writes (a replica not yet upgraded) from before they are counted until the
-- trigger that counts from then on is in place.
LOCK TABLE assignment_ecus IN SHARE ROW EXCLUSIVE MODE;
CREATE TABLE vehicle_contents (
    vin TEXT PRIMARY KEY,
    changes BIGINT NOT NULL DEFAULT 0,
    targeted BIGINT NOT NULL DEFAULT 0 CHECK (targeted >= 0)
);
INSERT INTO vehicle_contents (vin, changes, targeted)
    SELECT vin, 0, COUNT(*) FILTER (
        WHERE status IN ('pending', 'delivered') AND cancel_requested_at IS NULL)
    FROM assignment_ecus GROUP BY vin;
CREATE FUNCTION assignment_entry_counted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        UPDATE vehicle_contents SET changes = changes + 1,
            targeted = targeted - CASE WHEN OLD.status IN ('pending', 'delivered')
                                        AND OLD.cancel_requested_at IS NULL THEN 1 ELSE 0 END
        WHERE vin = OLD.vin;
    END IF;
    IF TG_OP <> 'DELETE' THEN
        INSERT INTO vehicle_contents AS c (vin, changes, targeted)
        VALUES (NEW.vin, 1, CASE WHEN NEW.status IN ('pending', 'delivered')
                                  AND NEW.cancel_requested_at IS NULL THEN 1 ELSE 0 END)
        ON CONFLICT (vin) DO UPDATE SET changes = c.changes + 1,
            targeted = c.targeted + EXCLUDED.targeted;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER assignment_entry_counted AFTER INSERT OR UPDATE OR DELETE ON assignment_ecus
    FOR EACH ROW EXECUTE FUNCTION assignment_entry_counted();
