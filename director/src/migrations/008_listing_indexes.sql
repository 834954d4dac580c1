-- `director events --vin` and `--security` read a page of the newest matching events: with
-- these, a page is found from the index instead of by scanning the log (issue 19).
CREATE INDEX events_by_vin ON events(vin, id);
CREATE INDEX events_by_severity ON events(severity, id);
