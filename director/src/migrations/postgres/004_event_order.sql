-- The transaction that wrote each event, so that followers of the log (`director events
-- --follow`) never skip one: with replicas, ids are handed out at insert and committed in
-- another order, so paging by id alone could pass an id whose transaction had not yet
-- committed. Followers page by (tx, id) and read only events whose transactions are older
-- than every transaction of this database still running (events.rs, `events`).
-- Events from before this migration sort first (tx 0, then id); the default applies to events
-- inserted from then on, also by a replica of the previous version whose transaction began
-- before the migration.
ALTER TABLE events ADD COLUMN tx xid8 NOT NULL DEFAULT '0';
ALTER TABLE events ALTER COLUMN tx SET DEFAULT pg_current_xact_id();
CREATE INDEX events_by_tx ON events(tx, id);
