-- The media archive: each inbound media item is a job, queued with its message (same
-- transaction) when media.archive is on, and claimed by workers with a lease so any number
-- of replicas can run them and a crashed worker's job is picked up again.
alter table message_media
    -- NULL: not archived (archive off); pending, stored, failed (gave up) or refused (a URL
    -- or redirect to a host that is not allowed: never fetched with credentials)
    add column archive_state text
        check (archive_state in ('pending', 'stored', 'failed', 'refused')),
    add column archive_attempts integer not null default 0,
    -- a pending job is due at this time (exponential backoff after a failure)
    add column archive_next_at timestamptz,
    -- a worker holds the job until then; past it, another worker may take it over
    add column archive_lease_until timestamptz,
    add column stored_at timestamptz,
    -- the object's key: the file under a file:// directory, or the key in the bucket
    -- (prefix included) for s3://
    add column storage_key text,
    add column bytes bigint,
    -- lowercase hex SHA-256 of the stored bytes
    add column sha256 text,
    -- why the last attempt failed, or why the item was refused
    add column archive_error text;

create index message_media_archive_due_idx on message_media (archive_next_at)
    where archive_state = 'pending';
