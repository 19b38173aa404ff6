-- Complete history from Twilio's REST API: what the Message resource says that no webhook
-- carries, the state of reconciliation, and the contacts it must never bring back.

-- Twilio's own times and price. NULL for rows only webhooks have seen (a webhook carries
-- none of them); filled when the Message resource is read (reconcile, backfill).
alter table messages
    add column twilio_created_at timestamptz,
    add column twilio_sent_at timestamptz,
    add column price numeric,
    add column price_unit text;
comment on column messages.twilio_created_at is
    'Twilio''s date_created (the REST API''s, NULL until the message resource is read)';
comment on column messages.twilio_sent_at is
    'Twilio''s date_sent (the REST API''s, NULL until read, or when Twilio never sent it)';
comment on column messages.price is
    'what Twilio charged (negative: a cost), NULL until Twilio prices it and reconcile reads it';
comment on column messages.price_unit is 'the currency of price (ISO 4217, e.g. USD)';

-- One checkpoint per account: each gap-fill pass lists from it (less reconcile.overlap_ms)
-- and moves it to the time the pass started.
create table reconcile_checkpoints (
    account_sid  text primary key,
    checkpoint   timestamptz not null,
    updated_at   timestamptz not null default now()
);
comment on table reconcile_checkpoints is
    'how far gap-fill has read each account''s message log';

-- Outbound messages first seen in a status callback (no body, no media): each is fetched
-- once from the API. Queued in the transaction that creates the row, claimed by workers with
-- SKIP LOCKED, deleted when done.
create table enrichment_jobs (
    message_sid  text primary key,
    account_sid  text not null,
    attempts     integer not null default 0,
    next_at      timestamptz not null default now(),
    last_error   text
);
create index enrichment_jobs_next_at_idx on enrichment_jobs (next_at);
comment on table enrichment_jobs is
    'outbound messages whose body and media are still to be read from Twilio''s API';

-- Outbound messages whose status stopped short of final: how often each was looked up.
create table stale_checks (
    message_sid  text primary key,
    checks       smallint not null,
    checked_at   timestamptz not null
);
comment on table stale_checks is
    'outbound messages whose status reconcile looked up because no callback came';

-- Contacts erased with `erase --contact`: reconcile and backfill skip their messages. Only a
-- hash of the address is kept, never the address or any content.
create table erased_contacts (
    contact_sha256  text primary key,
    erased_at       timestamptz not null default now()
);
comment on table erased_contacts is
    'SHA-256 (hex) of each erased contact address; reconcile and backfill skip these contacts';

-- Backfill reads its range an hour at a time, oldest first: each hour read and stored whole
-- is recorded, so a rerun of an interrupted backfill reads only the hours left.
create table backfill_chunks (
    key      text primary key,
    done_at  timestamptz not null default now()
);
comment on table backfill_chunks is
    'the hours of each backfill (account, senders, hour) read and stored whole';
