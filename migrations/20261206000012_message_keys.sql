-- The SID directory. Once the message tables are split by day (migration 13), no index of
-- theirs can hold a bare SID unique: Postgres requires a partitioned table's unique keys to
-- hold its partition key. This narrow table is the one place a SID is unique, for as long
-- as its message is kept. Every write claims the SID here first, in the same statement, and
-- its received_at is the day of every row about that message: the day status callbacks,
-- redeliveries and late finds look their message up in.
create table message_keys (
    message_sid  text primary key,
    received_at  timestamptz not null
);
-- Retention deletes a dropped day's keys by time.
create index message_keys_received_at_idx on message_keys (received_at);

comment on table message_keys is
    'one row per stored message SID: the day (received_at) its rows are kept under';
comment on column message_keys.message_sid is 'Twilio''s message SID';
comment on column message_keys.received_at is
    'messages.received_at of the message: the partition key of its message, media, reply and status events';

-- Set by `twilio-receiver migrate` when it prepares an installation with history for
-- migration 13: today's tables become one partition each, holding rows up to this time.
-- Migration 13 reads it and drops it.
create table legacy_cutover (cutover timestamptz not null);
comment on table legacy_cutover is 'while migrating: where the legacy partitions end';
comment on column legacy_cutover.cutover is 'the upper bound of every legacy partition';
