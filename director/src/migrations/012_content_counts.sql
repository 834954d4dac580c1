-- What each vehicle's Director targets are made of, counted by the database itself on every
-- change to its assignment entries, whatever statement makes it (`service/metadata.rs`):
-- `changes` rises with each inserted, updated or deleted entry of the vehicle, so the writer
-- storing metadata signed on a read connection tells in one read whether anything it was made
-- of changed meanwhile; `targeted` is how many entries its targets list (open and not
-- cancelled), so signing for a vehicle with none reads no entries. A table of its own, not
-- columns of `vehicles`: on PostgreSQL an entry's write then locks no vehicle row, so it takes
-- no lock a manifest or a cancel takes first. A vehicle without a row never had an entry.
CREATE TABLE vehicle_contents (
    vin TEXT PRIMARY KEY,
    changes INTEGER NOT NULL DEFAULT 0,
    targeted INTEGER NOT NULL DEFAULT 0 CHECK (targeted >= 0)
);
INSERT INTO vehicle_contents (vin, changes, targeted)
    SELECT vin, 0, SUM(status IN ('pending', 'delivered') AND cancel_requested_at IS NULL)
    FROM assignment_ecus GROUP BY vin;
CREATE TRIGGER assignment_entry_added AFTER INSERT ON assignment_ecus BEGIN
    INSERT OR IGNORE INTO vehicle_contents (vin) VALUES (NEW.vin);
    UPDATE vehicle_contents SET changes = changes + 1,
        targeted = targeted
            + (NEW.status IN ('pending', 'delivered') AND NEW.cancel_requested_at IS NULL)
    WHERE vin = NEW.vin;
END;
CREATE TRIGGER assignment_entry_changed AFTER UPDATE ON assignment_ecus BEGIN
    INSERT OR IGNORE INTO vehicle_contents (vin) VALUES (NEW.vin);
    UPDATE vehicle_contents SET changes = changes + 1,
        targeted = targeted
            + (vin = NEW.vin AND NEW.status IN ('pending', 'delivered') AND NEW.cancel_requested_at IS NULL)
            - (vin = OLD.vin AND OLD.status IN ('pending', 'delivered') AND OLD.cancel_requested_at IS NULL)
    WHERE vin IN (OLD.vin, NEW.vin);
END;
CREATE TRIGGER assignment_entry_removed AFTER DELETE ON assignment_ecus BEGIN
    UPDATE vehicle_contents SET changes = changes + 1,
        targeted = targeted
            - (OLD.status IN ('pending', 'delivered') AND OLD.cancel_requested_at IS NULL)
    WHERE vin = OLD.vin;
END;
