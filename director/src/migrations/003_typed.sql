-- The attack a security event stopped (AttackKind in snake case), when it names one.
ALTER TABLE events ADD COLUMN attack TEXT;
-- The assignment entries (correlation id and ECU serial, JSON) inside the signed targets
-- version, so serving that version marks exactly those entries delivered.
ALTER TABLE vehicle_metadata ADD COLUMN targets_entries TEXT NOT NULL DEFAULT '[]';
-- Targets signed before this column existed list no entries: re-sign every vehicle's
-- metadata at its next request, so what it is served records what it contains.
UPDATE vehicle_metadata SET content_sha256 = '';
