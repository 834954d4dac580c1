-- What each vehicle's Director targets are made of, counted by the database itself on every
-- change to its assignment entries, whatever statement makes it (`service/metadata.rs`):
-- `content_changes` rises with each inserted, updated or deleted entry of the vehicle, so the
-- writer storing metadata signed on a read connection tells in one read whether anything it
-- was made of changed meanwhile; `targeted_entries` is how many entries its targets list
-- (open and not cancelled), so signing for a vehicle with none reads no entries.
ALTER TABLE vehicles ADD COLUMN content_changes INTEGER NOT NULL DEFAULT 0;
ALTER TABLE vehicles ADD COLUMN targeted_entries INTEGER NOT NULL DEFAULT 0;
UPDATE vehicles SET targeted_entries = (
    SELECT count(*) FROM assignment_ecus e
    WHERE e.vin = vehicles.vin AND e.status IN ('pending', 'delivered') AND e.cancel_requested_at IS NULL
);
CREATE TRIGGER assignment_entry_added AFTER INSERT ON assignment_ecus BEGIN
    UPDATE vehicles SET content_changes = content_changes + 1,
        targeted_entries = targeted_entries
            + (NEW.status IN ('pending', 'delivered') AND NEW.cancel_requested_at IS NULL)
    WHERE vin = NEW.vin;
END;
CREATE TRIGGER assignment_entry_changed AFTER UPDATE ON assignment_ecus BEGIN
    UPDATE vehicles SET content_changes = content_changes + 1,
        targeted_entries = targeted_entries
            + (vin = NEW.vin AND NEW.status IN ('pending', 'delivered') AND NEW.cancel_requested_at IS NULL)
            - (vin = OLD.vin AND OLD.status IN ('pending', 'delivered') AND OLD.cancel_requested_at IS NULL)
    WHERE vin IN (OLD.vin, NEW.vin);
END;
CREATE TRIGGER assignment_entry_removed AFTER DELETE ON assignment_ecus BEGIN
    UPDATE vehicles SET content_changes = content_changes + 1,
        targeted_entries = targeted_entries
            - (OLD.status IN ('pending', 'delivered') AND OLD.cancel_requested_at IS NULL)
    WHERE vin = OLD.vin;
END;
