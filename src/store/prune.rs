//! Retention: deleting what is older than a cutoff in bounded batches, each its own short
//! transaction, so a prune of millions of rows never holds long locks or one huge
//! transaction while webhooks keep arriving.
//!
//! What goes: messages received before the cutoff (with their media rows, replies and status
//! events), status events and fallback calls received before it, sessions that expired
//! before it, and conversations with no message left and no activity since. Consent rows
//! stay: an opt-out must be honoured however old it is.

use super::StoreError;
use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// What one prune removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pruned {
    pub messages: i64,
    pub status_events: i64,
    pub failures: i64,
    pub sessions: i64,
    pub conversations: i64,
    /// Archived files of deleted messages, to delete from media storage (after the commits).
    pub storage_keys: Vec<String>,
}

/// Deletes everything older than `cutoff`, `batch` rows per statement.
pub async fn older_than(
    pool: &PgPool,
    cutoff: DateTime<Utc>,
    batch: i64,
) -> Result<Pruned, StoreError> {
    // Runs `$delete` (which deletes at most $2 rows older than $1) until a batch comes back
    // short; evaluates to the total. A macro, not a function, so each query stays checked.
    macro_rules! in_batches {
        ($delete:literal) => {{
            let mut total = 0;
            loop {
                let n = sqlx::query_scalar!(
                    "with gone as ("
                        + $delete
                        + r#" returning 1) select count(*) as "n!" from gone"#,
                    cutoff,
                    batch,
                )
                .fetch_one(pool)
                .await?;
                total += n;
                if n < batch {
                    break total;
                }
            }
        }};
    }
    let mut pruned = messages_older_than(pool, cutoff, batch).await?;
    pruned.status_events += in_batches!(
        "delete from message_status_events where id in (
            select id from message_status_events where received_at < $1 limit $2)"
    );
    pruned.failures += in_batches!(
        "delete from webhook_failures where id in (
            select id from webhook_failures where received_at < $1 limit $2)"
    );
    // Expired before the cutoff, so started before it: the index on started_at finds them
    // (expires_at has no index, so its updates stay HOT).
    pruned.sessions += in_batches!(
        "delete from sessions where id in (
            select id from sessions where started_at < $1 and expires_at < $1 limit $2)"
    );
    // A conversation goes only once nothing of it is left: no message, no activity since
    // the cutoff (its remaining sessions, all expired, follow by cascade).
    pruned.conversations += in_batches!(
        "delete from conversations c
        where (c.business, c.contact) in (
            select business, contact from conversations k
            where greatest(k.last_inbound_at, k.last_outbound_at, k.updated_at) < $1
              and not exists (select 1 from messages m
                              where m.business = k.business and m.contact = k.contact)
            limit $2)"
    );
    // Lookups queued for messages now gone: reconciliation must not bring them back.
    sqlx::query!(
        "with jobs as (
            delete from enrichment_jobs j
            where not exists (select 1 from messages m where m.message_sid = j.message_sid))
        delete from stale_checks s
        where not exists (select 1 from messages m where m.message_sid = s.message_sid)"
    )
    .execute(pool)
    .await?;
    Ok(pruned)
}

/// Deletes messages older than `cutoff` with their media and events, a batch at a time.
async fn messages_older_than(
    pool: &PgPool,
    cutoff: DateTime<Utc>,
    batch: i64,
) -> Result<Pruned, StoreError> {
    let mut pruned = Pruned::default();
    loop {
        // Messages first: their own events go with them, whatever their age.
        let r = sqlx::query!(
            r#"
            with old as (
                select message_sid from messages
                where received_at < $1
                order by received_at
                limit $2
                for update skip locked
            ), keys as (
                select storage_key from message_media
                where message_sid in (select message_sid from old) and storage_key is not null
            ), ev as (
                delete from message_status_events
                where message_sid in (select message_sid from old)
                returning 1
            ), gone as (
                -- message_media follows by its foreign key's cascade, replies by the
                -- trigger on messages (migration 7).
                delete from messages where message_sid in (select message_sid from old)
                returning 1
            )
            select (select count(*) from gone) as "messages!",
                   (select count(*) from ev) as "events!",
                   array(select storage_key from keys) as "storage_keys!: Vec<String>"
            "#,
            cutoff,
            batch,
        )
        .fetch_one(pool)
        .await?;
        pruned.messages += r.messages;
        pruned.status_events += r.events;
        pruned.storage_keys.extend(r.storage_keys);
        if r.messages < batch {
            break;
        }
    }
    Ok(pruned)
}

/// Parses an age such as `90d`, `12h`, `30m` or `45s`.
pub fn parse_age(text: &str) -> Result<chrono::Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: i64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a number and a unit, like 90d"))?;
    let seconds = match unit {
        "d" => 86_400,
        "h" => 3_600,
        "m" => 60,
        "s" => 1,
        _ => return Err(format!("{text:?}: the unit must be d, h, m or s")),
    };
    n.checked_mul(seconds)
        .and_then(chrono::Duration::try_seconds)
        .filter(|d| *d > chrono::Duration::zero())
        .ok_or_else(|| format!("{text:?}: out of range"))
}

#[cfg(test)]
mod tests {
    use super::parse_age;

    #[test]
    fn ages_take_a_number_and_a_unit() {
        assert_eq!(parse_age("90d"), Ok(chrono::Duration::days(90)));
        assert_eq!(parse_age("12h"), Ok(chrono::Duration::hours(12)));
        assert_eq!(parse_age(" 30m "), Ok(chrono::Duration::minutes(30)));
        assert_eq!(parse_age("45s"), Ok(chrono::Duration::seconds(45)));
        for bad in [
            "",
            "d",
            "90",
            "90w",
            "-1d",
            "0d",
            "99999999999999999d",
            "1.5d",
        ] {
            assert!(parse_age(bad).is_err(), "{bad}");
        }
    }
}
