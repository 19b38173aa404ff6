//! Erasing everything stored about one contact (a data-protection request).

use super::StoreError;
use sqlx::PgPool;

/// What was removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Erased {
    pub messages: i64,
    pub media: i64,
    pub status_events: i64,
    pub failures: i64,
    pub replies: i64,
    pub sessions: i64,
    pub conversations: i64,
    pub consent: i64,
    /// Archived files to delete from media storage (after the commit).
    pub storage_keys: Vec<String>,
}

/// Deletes every row about `contact` (both directions of every conversation with it, its
/// consent history included) in one
/// statement, so it either all goes or nothing does, and leaves a tombstone (a hash of the
/// address) so that reconciliation never brings the contact back from Twilio's log.
pub async fn contact(pool: &PgPool, contact: &str) -> Result<Erased, StoreError> {
    let r = sqlx::query!(
        r#"
        with m as (
            select received_at, message_sid from messages where contact = $1
        ), keys as (
            select storage_key from message_media
            where (message_received_at, message_sid) in (select * from m)
              and storage_key is not null
        ), ev as (
            delete from message_status_events
            where (message_received_at, message_sid) in (select * from m)
            returning 1
        ), f as (
            delete from webhook_failures where message_sid in (select message_sid from m)
            returning 1
        ), r as (
            delete from replies where (message_received_at, message_sid) in (select * from m)
            returning 1
        ), mm as (
            delete from message_media
            where (message_received_at, message_sid) in (select * from m)
            returning 1
        ), msg as (
            delete from messages where contact = $1 returning 1
        ), directory as (
            -- Its SIDs leave the directory with their rows: a retry of one of them would
            -- be new again (and the tombstone keeps reconciliation from bringing it back).
            delete from message_keys where message_sid in (select message_sid from m)
        ), s as (
            delete from sessions where contact = $1 returning 1
        ), c as (
            delete from conversations where contact = $1 returning 1
        ), k as (
            delete from consent where contact = $1 returning 1
        ), history as (
            delete from consent_events where contact = $1
        ), jobs as (
            delete from enrichment_jobs where message_sid in (select message_sid from m)
        ), checks as (
            delete from stale_checks where message_sid in (select message_sid from m)
        ), tomb as (
            -- Reconcile and backfill skip this contact from now on: only a hash is kept.
            insert into erased_contacts (contact_sha256)
            values (encode(sha256(convert_to($1, 'UTF8')), 'hex'))
            on conflict do nothing
        )
        select (select count(*) from msg) as "messages!",
               (select count(*) from mm) as "media!",
               (select count(*) from ev) as "status_events!",
               (select count(*) from f) as "failures!",
               (select count(*) from r) as "replies!",
               (select count(*) from s) as "sessions!",
               (select count(*) from c) as "conversations!",
               (select count(*) from k) as "consent!",
               array(select storage_key from keys) as "storage_keys!: Vec<String>"
        "#,
        contact,
    )
    .fetch_one(pool)
    .await?;
    Ok(Erased {
        messages: r.messages,
        media: r.media,
        status_events: r.status_events,
        failures: r.failures,
        replies: r.replies,
        sessions: r.sessions,
        conversations: r.conversations,
        consent: r.consent,
        storage_keys: r.storage_keys,
    })
}
