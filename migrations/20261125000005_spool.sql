-- The local spool (spool.dir): webhooks answered while Postgres was away are stored later,
-- from files. Messages and status events are idempotent by their natural keys already; a
-- fallback call's failure row is one row per call, so a record replayed twice (a crash
-- between its commit and the file's removal) needs a key of its own.
alter table webhook_failures
    -- The id of the spool record of this call (given to every call when a spool is
    -- configured, also when it is stored live); NULL without a spool.
    add column spool_record text;

create unique index webhook_failures_spool_record_key on webhook_failures (spool_record);
