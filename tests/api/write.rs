//! The write engine ([`twilio_receiver::store::write`]), below ingest: batches of any size,
//! duplicates inside one batch and across transactions, conflicts with other writers, and
//! plans that stay on keys.

use crate::helpers::*;
use chrono::{DateTime, Duration, TimeZone, Utc};
use sqlx::PgPool;
use std::{sync::Arc, time::Instant};
use twilio_receiver::{
    ingest::{self, Clock, Grouping, Ingest, IngestError, Outcome, Source, Webhook},
    metrics::Metrics,
    reply::Replier,
    rules::{ConsentCause, ConsentState, Facts, Rules},
    store::{
        StoreError,
        notify::Notifier,
        write::{self, Callback, Inbound, Memory, Options, Origin, Received, Reply, Stored},
    },
    twilio::{InboundMessage, Kind, Params, StatusCallback},
};

const BATCHED: &str = "whatsapp:+14155550002";
const CONTACTS: [&str; 3] = [
    "whatsapp:+15550000001",
    "whatsapp:+15550000002",
    "whatsapp:+15550000003",
];

fn params(sid: &str, business: &str, contact: &str, body: &str) -> Params {
    let mut pairs = whatsapp_text(sid, contact, body);
    for (name, value) in &mut pairs {
        if name == "To" {
            *value = business.to_owned();
        }
    }
    pairs.into_iter().collect()
}

fn inbound(sid: &str, business: &str, contact: &str, body: &str, at: DateTime<Utc>) -> Inbound {
    let params = params(sid, business, contact, body);
    Inbound {
        msg: InboundMessage::parse(&params).unwrap(),
        params: params.to_json(),
        at,
        failure: None,
        spool_record: None,
        origin: Origin::Webhook,
        twilio: Default::default(),
    }
}

fn options() -> Options {
    Options {
        lookback: Duration::zero(),
        archive_media: false,
        enrich: false,
    }
}

/// Writes inbound messages only, and returns what each got.
async fn receive_many(
    conn: &mut sqlx::PgConnection,
    batch: &[Inbound],
    memory: &mut Memory,
    decide: impl FnMut(usize, &Facts) -> Reply,
) -> Result<Vec<Received>, StoreError> {
    let written = write::write(conn, batch, &[], options(), memory, decide).await?;
    Ok(written.inbound.into_iter().map(|s| s.received).collect())
}

/// What the rules saw.
type Seen = (bool, bool, i64, ConsentState, usize, Option<DateTime<Utc>>);

fn seen(facts: &Facts) -> Seen {
    (
        facts.first_contact,
        facts.new_session,
        facts.inbound_count,
        facts.consent,
        facts.recent_replies.len(),
        facts.window_expires_at,
    )
}

/// A stand-in for the rules: STOP opts out, START opts in, every message is answered with
/// what it saw, so a reply replayed to a duplicate shows which decision it came from.
fn reply(msg: &InboundMessage, facts: &Facts) -> Reply {
    let consent = match msg.body.as_str() {
        "STOP" => Some(ConsentState::OptedOut),
        "START" => Some(ConsentState::OptedIn),
        _ => None,
    };
    Reply {
        store: true,
        rule: vec!["echo".to_owned()],
        twiml: format!("<Response><Message>{:?}</Message></Response>", seen(facts)),
        bodies: vec![format!("{}", facts.inbound_count)],
        consent: consent.map(|state| (state, ConsentCause::Rule("echo".to_owned()))),
    }
}

/// A tiny deterministic generator (xorshift), so a test's input is the same on every run.
struct Script(u64);

impl Script {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

/// Messages of one contact in one batch are applied in arrival order, whatever their order
/// in the batch: each sees what the earlier ones left (first contact, window, consent, the
/// replies that count towards limits), as if stored one after another.
#[sqlx::test]
async fn messages_of_one_contact_in_a_batch_each_see_what_the_earlier_ones_left(pool: PgPool) {
    let at = Utc.with_ymd_and_hms(2026, 3, 1, 9, 0, 0).unwrap();
    let c = CONTACTS[0];
    // Given out of order: the batch sorts by arrival.
    let batch = [
        inbound(&sid(3), BATCHED, c, "later", at + Duration::hours(25)),
        inbound(&sid(1), BATCHED, c, "hello", at),
        inbound(&sid(2), BATCHED, c, "STOP", at + Duration::hours(1)),
    ];
    let mut saw = vec![None; 3];
    let written = write::write(
        &mut pool.acquire().await.unwrap(),
        &batch,
        &[],
        Options {
            lookback: Duration::hours(48),
            archive_media: false,
            enrich: false,
        },
        &mut Memory::default(),
        |i, f| {
            saw[i] = Some(seen(f));
            reply(&batch[i].msg, f)
        },
    )
    .await
    .unwrap();
    assert!(
        written
            .inbound
            .iter()
            .all(|s| matches!(s.received, Received::New { .. }))
    );
    let h = |n| Some(at + Duration::hours(n));
    assert_eq!(
        saw,
        [
            // A new window 24 h after the last message; opted out by the STOP; two earlier
            // replies (one rule each) within the lookback.
            Some((false, true, 3, ConsentState::OptedOut, 2, h(49))),
            Some((true, true, 1, ConsentState::Unknown, 0, h(24))),
            Some((false, false, 2, ConsentState::Unknown, 1, h(25))),
        ]
    );
    let sessions: Vec<(DateTime<Utc>, i32)> =
        sqlx::query_as("select started_at, inbound_count from sessions order by started_at")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(sessions, [(at, 2), (at + Duration::hours(25), 1)]);
    let (state, by): (String, String) = sqlx::query_as("select state, message_sid from consent")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!((state.as_str(), by), ("opted_out", sid(2)));
    let rules: Vec<Vec<String>> =
        sqlx::query_scalar("select rule from replies order by message_sid")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(rules, vec![vec!["echo".to_owned()]; 3], "rules as a text[]");
}

#[sqlx::test]
async fn two_copies_of_one_sid_in_a_batch_store_once_and_share_the_reply(pool: PgPool) {
    let at = Utc.with_ymd_and_hms(2026, 3, 1, 9, 0, 0).unwrap();
    let batch = [
        inbound(&sid(1), BATCHED, CONTACTS[0], "hello", at),
        inbound(&sid(1), BATCHED, CONTACTS[0], "hello", at),
        inbound(
            &sid(2),
            BATCHED,
            CONTACTS[0],
            "again",
            at + Duration::seconds(1),
        ),
    ];
    let mut decisions = 0;
    let mut memory = Memory::default();
    let received = receive_many(
        &mut pool.acquire().await.unwrap(),
        &batch,
        &mut memory,
        |i, f| {
            decisions += 1;
            reply(&batch[i].msg, f)
        },
    )
    .await
    .unwrap();
    assert_eq!(decisions, 2, "one decision per message, not per copy");
    let Received::New { twiml } = &received[0] else {
        panic!("{received:?}")
    };
    assert_eq!(
        received[1],
        Received::Duplicate {
            twiml: Some(twiml.clone())
        }
    );
    assert!(matches!(received[2], Received::New { .. }));
    let count = |sql| sqlx::query_scalar::<_, i64>(sql).fetch_one(&pool);
    assert_eq!(count("select count(*) from messages").await.unwrap(), 2);
    assert_eq!(count("select count(*) from replies").await.unwrap(), 2);
    assert_eq!(
        count("select inbound_count from conversations")
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        count("select sum(inbound_count)::int8 from sessions")
            .await
            .unwrap(),
        2
    );

    // Delivered again in a later batch, to the same writer or to another: the reply on
    // record, nothing new.
    for mut memory in [memory, Memory::default()] {
        let again = receive_many(
            &mut pool.acquire().await.unwrap(),
            &batch[..1],
            &mut memory,
            |_, _| panic!("a stored message is not decided again"),
        )
        .await
        .unwrap();
        assert_eq!(
            again,
            [Received::Duplicate {
                twiml: Some(twiml.clone())
            }]
        );
    }
}

#[sqlx::test]
async fn a_batch_that_waited_for_a_contact_sees_what_was_committed_meanwhile(pool: PgPool) {
    // Read before the other transaction, or remembered from this writer's last batch.
    waits_and_sees_the_commit(&pool, CONTACTS[0], 0, false).await;
    waits_and_sees_the_commit(&pool, CONTACTS[1], 10, true).await;
}

async fn waits_and_sees_the_commit(pool: &PgPool, contact: &'static str, n: u32, remember: bool) {
    let at = Utc.with_ymd_and_hms(2026, 3, 1, 9, 0, 0).unwrap();
    let mut memory = Memory::default();
    let first = inbound(&sid(n + 1), BATCHED, contact, "hello", at);
    store_alone(&mut pool.acquire().await.unwrap(), &mut memory, first).await;
    if !remember {
        memory = Memory::default();
    }

    // Another replica is storing a STOP from the same contact: it holds the conversation.
    let mut other = pool.begin().await.unwrap();
    sqlx::query("update conversations set inbound_count = inbound_count + 1 where contact = $1")
        .bind(contact)
        .execute(&mut *other)
        .await
        .unwrap();
    sqlx::query(
        "insert into consent (business, contact, state, message_sid, changed_at)
         values ($1, $2, 'opted_out', $3, $4)",
    )
    .bind(BATCHED)
    .bind(contact)
    .bind(sid(n + 2))
    .bind(at + Duration::seconds(1))
    .execute(&mut *other)
    .await
    .unwrap();

    let db = pool.clone();
    let batch = tokio::spawn(async move {
        let next = inbound(
            &sid(n + 3),
            BATCHED,
            contact,
            "hello?",
            at + Duration::seconds(2),
        );
        store_alone(&mut db.acquire().await.unwrap(), &mut memory, next).await
    });
    // The batch reaches the conversation row and waits for it.
    wait_for_a_lock(pool).await;
    other.commit().await.unwrap();

    let (first_contact, new_session, count, consent, _, _) = batch.await.unwrap();
    assert_eq!(
        consent,
        ConsentState::OptedOut,
        "the opt-out committed meanwhile (remembered: {remember})"
    );
    assert_eq!(count, 3);
    assert!(!first_contact && !new_session);
}

/// Stores a new message alone in a batch and returns what the rules saw.
async fn store_alone(conn: &mut sqlx::PgConnection, memory: &mut Memory, l: Inbound) -> Seen {
    let batch = [l];
    let mut saw = None;
    receive_many(conn, &batch, memory, |_, f| {
        saw = Some(seen(f));
        reply(&batch[0].msg, f)
    })
    .await
    .unwrap();
    saw.expect("a new message is decided")
}

/// A writer remembers a contact; the contact is erased and writes again through another
/// writer: the conversation row has the count the writer remembers, but it is not the row
/// the writer remembers, and the batch sees the contact as it is now.
#[sqlx::test]
async fn a_remembered_contact_that_was_erased_and_came_back_is_read_again(pool: PgPool) {
    let at = Utc.with_ymd_and_hms(2026, 3, 1, 9, 0, 0).unwrap();
    let mut memory = Memory::default();
    let mut conn = pool.acquire().await.unwrap();
    let stop = inbound(&sid(1), BATCHED, CONTACTS[0], "STOP", at);
    store_alone(&mut conn, &mut memory, stop).await;

    twilio_receiver::store::erase::contact(&pool, CONTACTS[0])
        .await
        .unwrap();
    let hello = inbound(
        &sid(2),
        BATCHED,
        CONTACTS[0],
        "hello",
        at + Duration::hours(1),
    );
    // Stored by another writer, which remembers nothing of the contact.
    store_alone(
        &mut pool.acquire().await.unwrap(),
        &mut Memory::default(),
        hello,
    )
    .await;

    let next = inbound(
        &sid(3),
        BATCHED,
        CONTACTS[0],
        "hello?",
        at + Duration::hours(2),
    );
    let (first_contact, _, count, consent, _, _) = store_alone(&mut conn, &mut memory, next).await;
    assert_eq!(consent, ConsentState::Unknown, "the opt-out was erased");
    assert_eq!(count, 2);
    assert!(!first_contact);
}

/// A redelivery to a writer that remembers its contacts looks up the SIDs only: no
/// conversation, consent or session is read again (a tenth of the deliveries are
/// redeliveries at busy times, and each made its whole batch read every contact). A new
/// message beside one is decided from what the writer remembers.
#[sqlx::test]
async fn a_redelivery_among_remembered_contacts_reads_only_its_sids(pool: PgPool) {
    let at = Utc.with_ymd_and_hms(2026, 3, 1, 9, 0, 0).unwrap();
    let mut memory = Memory::default();
    let mut conn = pool.acquire().await.unwrap();
    let first = [
        inbound(&sid(1), BATCHED, CONTACTS[0], "hello", at),
        inbound(&sid(2), BATCHED, CONTACTS[1], "hello", at),
    ];
    let received = receive_many(&mut conn, &first, &mut memory, |i, f| {
        reply(&first[i].msg, f)
    })
    .await
    .unwrap();
    let Received::New { twiml } = &received[0] else {
        panic!("{received:?}")
    };

    let before = contact_reads(&mut conn).await;
    let again = receive_many(&mut conn, &first, &mut memory, |_, _| {
        panic!("a stored message is not decided again")
    })
    .await
    .unwrap();
    assert_eq!(
        again[0],
        Received::Duplicate {
            twiml: Some(twiml.clone())
        }
    );
    assert_eq!(contact_reads(&mut conn).await, before);

    let mixed = [
        inbound(&sid(1), BATCHED, CONTACTS[0], "hello", at),
        inbound(
            &sid(3),
            BATCHED,
            CONTACTS[0],
            "again",
            at + Duration::minutes(1),
        ),
    ];
    let mut saw = None;
    let received = receive_many(&mut conn, &mixed, &mut memory, |i, f| {
        saw = Some(seen(f));
        reply(&mixed[i].msg, f)
    })
    .await
    .unwrap();
    assert_eq!(
        received[0],
        Received::Duplicate {
            twiml: Some(twiml.clone())
        }
    );
    let (first_contact, new_session, count, ..) = saw.expect("the new message is decided");
    assert_eq!((first_contact, new_session, count), (false, false, 2));
    let stored: i64 =
        sqlx::query_scalar("select inbound_count from conversations where contact = $1")
            .bind(CONTACTS[0])
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(stored, 2);
}

/// Scans of the tables that hold a contact's state, as flushed by the given connection.
async fn contact_reads(conn: &mut sqlx::PgConnection) -> Vec<(String, i64)> {
    flushed_stats(
        conn,
        "select regexp_replace(relname, '_p[0-9]+$', ''),
                sum(seq_scan + coalesce(idx_scan, 0))::int8
         from pg_stat_user_tables
         where relname in ('conversations', 'consent') or relname like 'sessions_p%'
         group by 1 order by 1",
    )
    .await
}

/// `query` on the table statistics, once the connection's own are flushed to them.
async fn flushed_stats(conn: &mut sqlx::PgConnection, query: &'static str) -> Vec<(String, i64)> {
    // Pending statistics reach the view when the backend goes idle after this.
    sqlx::query("select pg_stat_force_next_flush()")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query_as(query).fetch_all(&mut *conn).await.unwrap()
}

/// Returns once a session of the test's database waits for a lock; fails after 30 s.
async fn wait_for_a_lock(pool: &PgPool) {
    wait_for_locks(pool, 1).await;
}

/// Returns once `sessions` sessions of the test's database wait for a lock; fails after 30 s.
async fn wait_for_locks(pool: &PgPool, sessions: i64) {
    let name = pool.connect_options().get_database().unwrap().to_owned();
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "select count(*) from pg_stat_activity where datname = $1 and wait_event_type = 'Lock'",
        )
        .bind(&name)
        .fetch_one(pool)
        .await
        .unwrap();
        if waiting >= sessions {
            break;
        }
        if Instant::now() > deadline {
            let activity: Vec<(Option<String>, Option<String>, Option<String>)> = sqlx::query_as(
                "select state, wait_event_type, left(query, 200) from pg_stat_activity
                 where datname = $1",
            )
            .bind(&name)
            .fetch_all(pool)
            .await
            .unwrap();
            panic!("{sessions} sessions did not wait for a lock within 30 s: {activity:#?}");
        }
        tokio::task::yield_now().await;
    }
}

/// A write that lost its race twice locks its conversations before it reads them. If it then
/// has to wait for a replica's write that is itself waiting for one of those conversations
/// (the replica stores a copy of the same SID: it claimed the SID, then updates the
/// conversation, as every write statement does), it lets go of them within its lock
/// timeout: the replica's write goes through instead of being aborted by Postgres's
/// deadlock detector a second later (seen: two such deadlocks in a row kept a writer busy
/// past the time a webhook may wait for one, and the webhooks behind it got 503).
#[sqlx::test]
async fn a_locked_write_lets_go_of_its_conversations_for_a_replica_it_waits_for(pool: PgPool) {
    let at = Utc.with_ymd_and_hms(2026, 3, 1, 9, 0, 0).unwrap();
    let (x, y) = (CONTACTS[0], CONTACTS[1]);
    let mut memory = Memory::default();
    let mut conn = pool.acquire().await.unwrap();
    store_alone(
        &mut conn,
        &mut memory,
        inbound(&sid(1), BATCHED, x, "hi", at),
    )
    .await;
    store_alone(
        &mut conn,
        &mut memory,
        inbound(&sid(2), BATCHED, y, "hi", at),
    )
    .await;
    drop(conn);

    // This writer's first two claims of sid(3) fail as a lost race does (the write check's
    // error), so that its third attempt locks its conversations first. The replica's claim
    // below draws the sequence's first number.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "create sequence claims_of_3;
         create function lose_twice() returns trigger language plpgsql as $$
         begin
             if new.message_sid = '{}' and nextval('claims_of_3') in (2, 3) then
                 raise exception 'lost a race (test)' using errcode = 'TR409';
             end if;
             return new;
         end $$;
         create trigger lose_twice before insert on message_keys
             for each row execute function lose_twice();",
        sid(3)
    )))
    .execute(&pool)
    .await
    .unwrap();

    // The replica has claimed sid(3) for its copy and not yet committed.
    let mut replica = pool.begin().await.unwrap();
    sqlx::query("insert into message_keys (message_sid, received_at) values ($1, $2)")
        .bind(sid(3))
        .bind(at + Duration::seconds(1))
        .execute(&mut *replica)
        .await
        .unwrap();
    // Someone holds y's conversation, so the locked attempt stops holding x's.
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("select 1 from conversations where contact = $1 for update")
        .bind(y)
        .execute(&mut *holder)
        .await
        .unwrap();

    let db = pool.clone();
    let batch = tokio::spawn(async move {
        let later = at + Duration::seconds(2);
        let batch = [
            inbound(&sid(3), BATCHED, x, "again", later),
            inbound(&sid(4), BATCHED, y, "and you", later),
        ];
        let mut conn = db.acquire().await.unwrap();
        receive_many(&mut conn, &batch, &mut Memory::default(), |i, f| {
            reply(&batch[i].msg, f)
        })
        .await
    });
    wait_for_locks(&pool, 1).await;
    // The replica's write reaches x's conversation, which the batch holds.
    let replica = tokio::spawn(async move {
        let updated = sqlx::query(
            "update conversations set inbound_count = inbound_count + 1 where contact = $1",
        )
        .bind(x)
        .execute(&mut *replica)
        .await;
        (replica, updated)
    });
    wait_for_locks(&pool, 2).await;
    // The batch gets y's conversation, reads, and its write reaches sid(3): it waits for the
    // replica, which waits for it.
    holder.commit().await.unwrap();

    let (replica, updated) = replica.await.unwrap();
    if let Err(e) = updated {
        // The batch's bound (200 ms) must be below the server's deadlock_timeout.
        let detector: String = sqlx::query_scalar("show deadlock_timeout")
            .fetch_one(&pool)
            .await
            .unwrap();
        panic!("the replica's write was aborted: {e} (deadlock_timeout = {detector})");
    }
    replica.commit().await.unwrap();
    let received = batch.await.unwrap().unwrap();
    assert_eq!(received[0], Received::Duplicate { twiml: None });
    assert!(matches!(received[1], Received::New { .. }), "{received:?}");
    let count: i64 =
        sqlx::query_scalar("select inbound_count from conversations where contact = $1")
            .bind(x)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        count, 2,
        "the replica's count; the batch's copy added nothing"
    );
}

#[sqlx::test]
async fn a_message_stored_by_another_transaction_meanwhile_is_a_duplicate(pool: PgPool) {
    let at = Utc.with_ymd_and_hms(2026, 3, 1, 9, 0, 0).unwrap();
    // Another process is storing the same SID (its first delivery), not yet committed: it
    // claimed the SID in the directory first, as every write does.
    sqlx::query("select create_day_partitions($1, $1)")
        .bind(at.date_naive())
        .execute(&pool)
        .await
        .unwrap();
    let mut other = pool.begin().await.unwrap();
    sqlx::query(
        "with key as (insert into message_keys (message_sid, received_at) values ($1, $4))
         insert into messages (message_sid, account_sid, direction, channel, business,
                               contact, received_at, updated_at, params)
         values ($1, 'AC1', 'inbound', 'whatsapp', $2, $3, $4, $4, '{}')",
    )
    .bind(sid(1))
    .bind(BATCHED)
    .bind(CONTACTS[0])
    .bind(at)
    .execute(&mut *other)
    .await
    .unwrap();

    let db = pool.clone();
    let batch = tokio::spawn(async move {
        let copy = [inbound(&sid(1), BATCHED, CONTACTS[0], "hello", at)];
        let mut conn = db.acquire().await.unwrap();
        receive_many(&mut conn, &copy, &mut Memory::default(), |_, f| {
            reply(&copy[0].msg, f)
        })
        .await
        .unwrap()
    });
    // The batch's insert reaches the SID and waits for the other transaction.
    wait_for_a_lock(&pool).await;
    other.commit().await.unwrap();

    assert_eq!(
        batch.await.unwrap(),
        [Received::Duplicate { twiml: None }],
        "stored once, by the other transaction"
    );
    let count = |sql| sqlx::query_scalar::<_, i64>(sql).fetch_one(&pool);
    assert_eq!(count("select count(*) from replies").await.unwrap(), 0);
    assert_eq!(
        count("select count(*) from conversations").await.unwrap(),
        0
    );
}

#[sqlx::test]
async fn a_batch_that_cannot_be_stored_whole_is_stored_one_webhook_at_a_time(pool: PgPool) {
    let metrics = Arc::new(Metrics::new());
    let ingest = Ingest::start(ingest::Parts {
        db: pool.clone(),
        replier: Arc::new(Replier::new(
            Rules::parse("", "test").unwrap(),
            Some("Thanks!".to_owned()),
            None,
            false,
        )),
        metrics: metrics.clone(),
        notifier: Notifier::spawn(pool.clone()),
        spool: None,
        clock: Clock::system(),
        schema_ready: tokio::sync::watch::channel(true).1,
        deadline: std::time::Duration::from_secs(10),
        archive_media: false,
        enrich: false,
        grouping: Some(Grouping {
            writers: 1,
            size: 16,
        }),
    });
    let at = Utc.with_ymd_and_hms(2026, 3, 1, 9, 0, 0).unwrap();
    // A sender address longer than an index entry may be: Postgres refuses the whole batch.
    // (Random letters, which Postgres cannot compress below that.)
    let mut rng = Script(7);
    let huge: String = (0..3000)
        .map(|_| char::from(b'a' + rng.next(26) as u8))
        .collect();
    let send = |n, contact: &str| {
        ingest.receive(Webhook {
            kind: Kind::Inbound,
            params: params(&sid(n), BATCHED, contact, "hi"),
            query: Params::default(),
            base: BASE.to_owned(),
            at,
            source: Source::Live {
                arrived: Instant::now(),
            },
        })
    };
    // Queued in one poll, before the writer runs (the test runtime has one thread): one batch.
    let (first, bad, last) =
        tokio::join!(send(1, CONTACTS[0]), send(2, &huge), send(3, CONTACTS[1]));
    assert!(matches!(first, Ok(Outcome::Reply(_))), "{first:?}");
    assert!(matches!(last, Ok(Outcome::Reply(_))), "{last:?}");
    assert!(matches!(bad, Err(IngestError::TooLarge(_))), "{bad:?}");
    let rendered = metrics.render(&pool);
    assert!(
        rendered.contains("twilio_receiver_group_commit_size_count 1\n"),
        "{rendered}"
    );
    assert!(
        rendered.contains("twilio_receiver_group_commit_size_sum 3.0\n"),
        "{rendered}"
    );
    let stored: i64 = sqlx::query_scalar("select count(*) from replies")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored, 2);
}

/// Sequential scans of the tables a batch writes, as flushed by the given connection.
async fn seq_scans(conn: &mut sqlx::PgConnection) -> Vec<(String, i64)> {
    flushed_stats(
        conn,
        "select relname::text, seq_scan from pg_stat_user_tables
         where relname in ('messages', 'message_media', 'conversations', 'sessions',
                           'consent', 'replies')
         order by relname",
    )
    .await
}

/// A statement's plan is cached per connection after a few runs, while the tables are still
/// small, and kept as they grow: a plan that scans a whole table gets slower with every row
/// (seen: every batch read every reply). Batches find their rows by key only.
#[sqlx::test]
async fn batches_never_scan_whole_tables(pool: PgPool) {
    let mut conn = pool.acquire().await.unwrap();
    let at = Utc.with_ymd_and_hms(2026, 3, 1, 9, 0, 0).unwrap();
    let store = async |round: u32, conn: &mut sqlx::PgConnection| {
        // New messages of several contacts, and a redelivery of the last round's first one.
        let mut batch: Vec<Inbound> = (0..8)
            .map(|n| {
                let contact = format!("whatsapp:+1555000{:04}", (round * 8 + n) % 24);
                let when = at + Duration::seconds(i64::from(round * 8 + n));
                inbound(&sid(round * 8 + n + 1), BATCHED, &contact, "hi", when)
            })
            .collect();
        if round > 0 {
            let first = (round - 1) * 8;
            let contact = format!("whatsapp:+1555000{:04}", first % 24);
            batch.push(inbound(&sid(first + 1), BATCHED, &contact, "hi", at));
        }
        receive_many(conn, &batch, &mut Memory::default(), |i, f| {
            reply(&batch[i].msg, f)
        })
        .await
        .unwrap();
    };
    // Past the runs after which Postgres may settle on a generic plan.
    for round in 0..10 {
        store(round, &mut conn).await;
    }
    let before = seq_scans(&mut conn).await;
    for round in 10..30 {
        store(round, &mut conn).await;
    }
    assert_eq!(seq_scans(&mut conn).await, before);
}

/// A callback for an outbound message from `business` to `contact`.
fn sent(sid: &str, business: &str, contact: &str, status: &str, at: DateTime<Utc>) -> Callback {
    let mut pairs = crate::status::callback(sid, status, &[]);
    for (name, value) in &mut pairs {
        match name.as_str() {
            "From" => *value = business.to_owned(),
            "To" => *value = contact.to_owned(),
            _ => {}
        }
    }
    let params: Params = pairs.into_iter().collect();
    Callback {
        cb: StatusCallback::parse(&params).unwrap(),
        link: None,
        params: params.to_json(),
        at,
        found: None,
    }
}

/// Callbacks of one SID in one batch: every distinct event is stored once, the status ends
/// at the highest rank, and only the callback that set it counts as having advanced it.
#[sqlx::test]
async fn callbacks_of_one_sid_in_a_batch_keep_every_event_and_the_highest_status(pool: PgPool) {
    let at = Utc.with_ymd_and_hms(2026, 3, 1, 9, 0, 0).unwrap();
    let s = "SM000000000000000000000000000000b1";
    let batch = [
        sent(
            s,
            BATCHED,
            CONTACTS[0],
            "delivered",
            at + Duration::seconds(2),
        ),
        sent(s, BATCHED, CONTACTS[0], "sent", at),
        sent(
            s,
            BATCHED,
            CONTACTS[0],
            "delivered",
            at + Duration::seconds(3),
        ),
        sent(s, BATCHED, CONTACTS[0], "read", at + Duration::seconds(4)),
        sent(s, BATCHED, CONTACTS[0], "sent", at + Duration::seconds(1)),
    ];
    let written = write::write(
        &mut pool.acquire().await.unwrap(),
        &[],
        &batch,
        options(),
        &mut Memory::default(),
        |_, _| panic!("no inbound message"),
    )
    .await
    .unwrap();
    let new: Vec<bool> = written.callbacks.iter().map(|r| r.new_event).collect();
    assert_eq!(new, [true, true, false, true, false]);
    let advanced: Vec<bool> = written.callbacks.iter().map(|r| r.advanced).collect();
    assert_eq!(advanced, [false, false, false, true, false]);
    let created = written
        .callbacks
        .iter()
        .filter(|r| r.created_message)
        .count();
    assert_eq!(created, 1, "one outbound row, created once");
    let (status, events, outbound): (String, i64, i64) = sqlx::query_as(
        "select m.status,
                (select count(*) from message_status_events e where e.message_sid = m.message_sid),
                (select outbound_count from conversations)
         from messages m",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((status.as_str(), events, outbound), ("read", 3, 1));
}

/// Twilio sends no callbacks for inbound messages, but a callback that names one in the same
/// batch must not make the write touch its row twice: both are stored.
#[sqlx::test]
async fn a_callback_for_an_inbound_message_of_the_same_batch_is_stored(pool: PgPool) {
    let at = Utc.with_ymd_and_hms(2026, 3, 1, 9, 0, 0).unwrap();
    let sid = "SM0000000000000000000000000000000c";
    let lives = [inbound(sid, BATCHED, CONTACTS[0], "hello", at)];
    let callbacks = [sent(sid, BATCHED, CONTACTS[0], "delivered", at)];
    let written = write::write(
        &mut pool.acquire().await.unwrap(),
        &lives,
        &callbacks,
        options(),
        &mut Memory::default(),
        |i, facts| reply(&lives[i].msg, facts),
    )
    .await
    .unwrap();
    assert!(matches!(
        written.inbound[..],
        [Stored {
            received: Received::New { .. },
            failure_recorded: false,
            ..
        }]
    ));
    assert!(written.callbacks[0].new_event);
    let (direction, events): (String, i64) = sqlx::query_as(
        "select m.direction, (select count(*) from message_status_events e
                              where e.message_sid = m.message_sid)
         from messages m where m.message_sid = $1",
    )
    .bind(sid)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((direction.as_str(), events), ("inbound", 1));
}

/// `database.group_commit = false`: each webhook is a batch of one, written in its own
/// request through the same engine, and every guarantee holds.
#[sqlx::test]
async fn without_group_commit_each_webhook_is_a_batch_of_one(pool: PgPool) {
    let app = TestApp::with_env(
        pool,
        &[
            ("TWILIO_RECEIVER__DATABASE__GROUP_COMMIT", "false"),
            ("TWILIO_RECEIVER__REPLY__BODY", "Thanks"),
        ],
    );
    let first = app.post_text(1).await;
    assert_eq!(first.status, 200);
    assert!(first.body.contains("<Body>Thanks</Body>"), "{}", first.body);
    assert_eq!(
        app.post_text(1).await.body,
        first.body,
        "a retry, the same TwiML"
    );
    // Two copies at once, each in its own transaction: one row, one reply for both.
    let (a, b) = tokio::join!(app.post_text(2), app.post_text(2));
    assert_eq!((a.status.as_u16(), b.status.as_u16()), (200, 200));
    assert_eq!(a.body, b.body);
    // A fallback call for a stored message: its failure row, the reply on record.
    let mut call = whatsapp_text(&sid(2), "whatsapp:+15551234567", "hi");
    call.extend(pairs(&[("ErrorCode", "11200")]));
    let fallback = app.post_signed("/twilio/fallback", &call).await;
    assert_eq!((fallback.status.as_u16(), fallback.body), (200, a.body));
    // Status callbacks out of order: the status never goes back.
    for status in ["delivered", "sent"] {
        let r = app
            .post_signed(
                "/twilio/status",
                &crate::status::callback(&sid(9), status, &[]),
            )
            .await;
        assert_eq!(r.status, 204);
    }
    assert_eq!(
        app.count("select count(*) from messages where direction = 'inbound'")
            .await,
        2
    );
    assert_eq!(app.count("select count(*) from replies").await, 2);
    assert_eq!(app.count("select count(*) from webhook_failures").await, 1);
    assert_eq!(
        app.count("select count(*) from messages where status = 'delivered'")
            .await,
        1
    );
    assert!(
        app.metrics()
            .await
            .contains("twilio_receiver_group_commit_size_count 0\n"),
        "no writer task formed a batch"
    );
}

/// Many webhooks of one contact at once, each in its own transaction (group commit off: an
/// album of photos arrives as one webhook per photo): they take turns on the contact's
/// conversation instead of failing each other, and every one is stored and answered.
#[sqlx::test]
async fn concurrent_messages_of_one_contact_each_alone_are_all_stored(pool: PgPool) {
    let app = TestApp::with_env(
        pool,
        &[("TWILIO_RECEIVER__DATABASE__GROUP_COMMIT", "false")],
    );
    let sends = (1..=12).map(|n| app.post_text(n));
    let answers = futures::future::join_all(sends).await;
    let statuses: Vec<u16> = answers.iter().map(|r| r.status.as_u16()).collect();
    assert_eq!(statuses, [200; 12]);
    assert_eq!(app.count("select count(*) from messages").await, 12);
    assert_eq!(
        app.count("select inbound_count::int8 from conversations")
            .await,
        12
    );
}

/// A replay of a request answered 503 records no reply; a copy of its SID in the same batch
/// (the fallback call, arriving as the replay runs) must not take that unrecorded answer as
/// the one on record: it finds none, so the fallback call can answer it.
#[sqlx::test]
async fn a_copy_of_an_unanswered_replay_in_one_batch_finds_no_answer(pool: PgPool) {
    let at = Utc.with_ymd_and_hms(2026, 3, 1, 9, 0, 0).unwrap();
    let batch = [
        inbound(&sid(1), BATCHED, CONTACTS[0], "hello", at),
        inbound(&sid(1), BATCHED, CONTACTS[0], "hello", at),
    ];
    let received = receive_many(
        &mut pool.acquire().await.unwrap(),
        &batch,
        &mut Memory::default(),
        |i, f| Reply {
            store: false,
            ..reply(&batch[i].msg, f)
        },
    )
    .await
    .unwrap();
    assert!(matches!(received[0], Received::New { .. }), "{received:?}");
    assert_eq!(received[1], Received::Duplicate { twiml: None });
    let replies: i64 = sqlx::query_scalar("select count(*) from replies")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(replies, 0);
}
