-- The transaction that wrote each event, so that followers of the log (`director events
-- --follow`) never skip one: with replicas, ids are handed out at insert and committed in
-- another order, so paging by id alone could pass an id whose transaction had not yet
-- committed. Followers page by (tx, id) and read only events whose transactions are older
-- than every transaction of this database still running (events.rs, `events`).
ALTER TABLE events ADD COLUMN tx xid8 NOT NULL DEFAULT pg_current_xact_id();
CREATE INDEX events_by_tx ON events(tx, id);
