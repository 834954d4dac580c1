-- Retention (docs/SECURITY.md, "Limits"): events stay append-only, except that rows older
-- than the retention cutoff may be deleted. Only the retention sweep moves the cutoff, and
-- only forward, so nothing recent can be deleted by anyone.
CREATE TABLE retention (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    events_before TEXT NOT NULL
);
INSERT INTO retention (id, events_before) VALUES (1, '0000-01-01T00:00:00Z');
CREATE TRIGGER retention_forward BEFORE UPDATE ON retention
    WHEN NEW.events_before < OLD.events_before
    BEGIN SELECT RAISE(ABORT, 'the retention cutoff only moves forward'); END;
CREATE TRIGGER retention_no_delete BEFORE DELETE ON retention
    BEGIN SELECT RAISE(ABORT, 'the retention cutoff is kept'); END;
DROP TRIGGER events_no_delete;
CREATE TRIGGER events_no_delete BEFORE DELETE ON events
    WHEN OLD.at >= (SELECT events_before FROM retention WHERE id = 1)
    BEGIN SELECT RAISE(ABORT, 'events are append-only until their retention ends'); END;
CREATE INDEX events_by_time ON events(at);
CREATE INDEX manifests_by_time ON manifests(received_at);
