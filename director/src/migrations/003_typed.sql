-- The attack a security event stopped (AttackKind in snake case), when it names one.
ALTER TABLE events ADD COLUMN attack TEXT;
-- The assignment entries (correlation id and ECU serial, JSON) inside the signed targets
-- version, so serving that version marks exactly those entries delivered.
ALTER TABLE vehicle_metadata ADD COLUMN targets_entries TEXT NOT NULL DEFAULT '[]';
