-- An operator's cancel of an entry the vehicle already received (docs/POUF.md, "Cancelling"): the
-- entry stays open, left out of the vehicle's targets from then on, until the ECU's own word
-- closes it (cancelled, or installed when the cancel came too late). `withdrawn_at`: when the
-- vehicle fetched targets without it.
ALTER TABLE assignment_ecus ADD COLUMN cancel_requested_at TEXT;
ALTER TABLE assignment_ecus ADD COLUMN withdrawn_at TEXT;
