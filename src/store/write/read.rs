//! The read before a write: what the rules need of each contact, and which SIDs are stored.

use super::contact::{Contact, Reads};
use crate::{rules::ConsentState, store::StoreError};
use chrono::{DateTime, Duration, Utc};
use sqlx::PgConnection;

/// A SID of the batch that is stored already: its message's day, and the TwiML it was
/// answered with, if any.
pub(super) struct StoredSid {
    pub sid: String,
    pub day: DateTime<Utc>,
    pub twiml: Option<String>,
}

/// Locks the batch's existing conversation rows, in key order (the order every write locks
/// them in), until the transaction ends; from then on, the transaction waits at most
/// `then_wait` for any other lock.
///
/// Why the bound: every write statement claims its SIDs (and updates its messages) before it
/// updates conversations, but a locked attempt holds its conversations before its write
/// claims anything. A replica's write that claimed a SID of this batch, or updates one of its
/// outbound messages, and then reaches one of these conversations waits for this transaction
/// while this one's write waits for it. Postgres breaks such a deadlock only after
/// `deadlock_timeout` (1 s by default), by aborting one of them; bounded, this attempt lets
/// go first (a conflict, tried again) and the replica's write goes through.
pub(super) async fn lock(
    conn: &mut PgConnection,
    reads: &Reads<'_>,
    then_wait: std::time::Duration,
) -> Result<(), StoreError> {
    // One round trip: the count consumes every locked row before the timeout is set, so the
    // locks themselves are waited for as long as it takes.
    sqlx::query!(
        r#"
        with locked as (
            select 1 from conversations c
            where (c.business, c.contact) in (select * from unnest($1::text[], $2::text[]))
            order by c.business, c.contact
            for update
        )
        select set_config('lock_timeout', $3, true) as "bounded!"
        from (select count(*) from locked) as every_row
        "#,
        &reads.business as &[&str],
        &reads.contact as &[&str],
        format!("{}ms", then_wait.as_millis()),
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok(())
}

/// Reads what the rules need of each contact of the batch, and which of its SIDs are
/// stored already (with the reply on record).
///
/// Only the contacts marked `needed` are read (the writer remembers the others); the row of
/// any other is empty. The SIDs are always looked up.
pub(super) async fn read(
    conn: &mut PgConnection,
    reads: &Reads<'_>,
    needed: &[bool],
    lookback: Duration,
) -> Result<(Vec<Contact>, Vec<StoredSid>), StoreError> {
    // Every lookup below probes a unique index once per key: a plan cached while a table was
    // small stays in use as it grows, so no statement here leaves the planner a join it could
    // turn into a scan of a whole table (seen: every batch reading every reply).
    let read = sqlx::query!(
        r#"
        with keyed as materialized (
            -- The directory: one probe of one index, whatever the number of days kept.
            -- Its day is where the reply on record is (`reply_in`, migration 16).
            select d.sid, d.n,
                   (select k.received_at from message_keys k where k.message_sid = d.sid)
                       as day
            from unnest($5::text[]) with ordinality as d (sid, n)
        ),
        stored as (select * from keyed x where x.day is not null)
        select c.created_at as "created_at?", c.first_inbound_at, c.last_inbound_at,
               c.window_expires_at,
               c.session_started_at, c.inbound_count as "inbound_count?",
               (select o.state from consent o
                where k.needed and o.business = k.business and o.contact = k.contact)
                   as consent,
               -- Lookups in a day known only per row are functions (migration 14):
               -- inline, they would plan and open every day kept. (Strict: not called
               -- for a contact not read, whose `c` is null.)
               session_inbound_count(k.business, k.contact, c.session_started_at)
                   as session_count,
               coalesce(recent.rules, '{}') as "recent_rules!",
               coalesce(recent.times, '{}') as "recent_times!",
               -- Not correlated: computed once, the same in every row. (Scalar subqueries,
               -- not `exists`, which the planner may turn into a join.)
               array(select x.sid from stored x order by x.n) as "stored!",
               array(select x.day from stored x order by x.n) as "stored_day!: Vec<DateTime<Utc>>",
               array(select (reply_in(x.day, x.sid)).twiml from stored x order by x.n)
                   as "stored_twiml!: Vec<Option<String>>"
        from unnest($1::text[], $2::text[], $3::timestamptz[], $7::bool[]) with ordinality
            as k (business, contact, since, needed, n)
        -- `limit 1` keeps this a lookup per contact: the planner cannot make it a join.
        left join lateral (select * from conversations c
                           where k.needed and c.business = k.business
                             and c.contact = k.contact
                           limit 1) as c on true
        -- Each rule that answered a recent message, with the message's time: two
        -- aggregates over the same rows, fed in the same order, so the arrays pair up
        -- element by element. (An ORDER BY or DISTINCT must go on both or neither.)
        left join lateral (select array_agg(u.rule) as rules, array_agg(x.received_at) as times
                           from (select m.received_at,
                                        (select r.rule from replies r
                                         where r.message_received_at = m.received_at
                                           and r.message_sid = m.message_sid
                                           -- Implied; stated so that only these days
                                           -- of replies are planned and opened.
                                           and r.message_received_at > $6) as rule
                                 from messages m
                                 where $4::bool and k.needed and m.business = k.business
                                   and m.contact = k.contact and m.received_at > k.since
                                   -- The batch's earliest bound, known when the statement
                                   -- starts: only the days since then are opened, not
                                   -- every day kept.
                                   and m.received_at > $6) as x
                           cross join unnest(x.rule) as u (rule)) as recent on true
        order by k.n
        "#,
        &reads.business as &[&str],
        &reads.contact as &[&str],
        &reads.since,
        lookback > Duration::zero(),
        &reads.sid as &[&str],
        // No lookback, or no contact to read: no day at all.
        reads
            .since
            .iter()
            .zip(needed)
            .filter_map(|(since, &needed)| needed.then_some(since))
            .min()
            .copied()
            .filter(|_| lookback > Duration::zero())
            .unwrap_or(DateTime::<Utc>::MAX_UTC),
        needed,
    )
    .fetch_all(&mut *conn)
    .await?;

    // The same in every row (not correlated): taken from the first.
    let stored = read.first().map_or_else(Vec::new, |row| {
        row.stored
            .iter()
            .zip(&row.stored_day)
            .zip(&row.stored_twiml)
            .map(|((sid, day), twiml)| StoredSid {
                sid: sid.clone(),
                day: *day,
                twiml: twiml.clone(),
            })
            .collect()
    });
    let contacts: Vec<Contact> = read
        .into_iter()
        .map(|row| {
            let count = row.inbound_count.unwrap_or(0);
            Contact {
                created: row.created_at,
                first: row.first_inbound_at,
                last: row.last_inbound_at,
                expires: row.window_expires_at,
                started: row.session_started_at,
                count,
                read: count,
                session_count: row.session_count.unwrap_or(0).into(),
                consent: ConsentState::from_db(row.consent.as_deref()),
                recent: row.recent_rules.into_iter().zip(row.recent_times).collect(),
                ..Contact::default()
            }
        })
        .collect();
    // One row per contact, always: `unnest` of the keys drives the read.
    debug_assert_eq!(contacts.len(), reads.keys.len());
    Ok((contacts, stored))
}
