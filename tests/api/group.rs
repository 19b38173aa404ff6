//! Group commit: a batch stored in one transaction leaves exactly what storing the same
//! webhooks one at a time leaves, duplicates inside one batch included.
//!
//! Each test runs the same script twice in one database, under two business numbers (or
//! SID prefixes): once through the one-at-a-time path, once through batches, and compares.

use crate::{helpers::*, status::callback};
use chrono::{DateTime, Duration, TimeZone, Utc};
use sqlx::PgPool;
use std::sync::Arc;
use twilio_receiver::{
    metrics::Metrics,
    reply::{ConsentState, Facts, Replier},
    rules::Rules,
    store::{
        self, StoreError,
        group::{Callback, Live, Memory},
        inbound::{Delivery, Received, Reply},
        status::Recorded,
    },
    twilio::{InboundMessage, Params, StatusCallback},
    writer::{Context, Grouping, Writer},
};

const ONE_BY_ONE: &str = "whatsapp:+14155550001";
const BATCHED: &str = "whatsapp:+14155550002";
const OTHER_ONE_BY_ONE: &str = "whatsapp:+14155550003";
const OTHER_BATCHED: &str = "whatsapp:+14155550004";
const CONTACTS: [&str; 3] = [
    "whatsapp:+15550000001",
    "whatsapp:+15550000002",
    "whatsapp:+15550000003",
];

fn live(sid: &str, business: &str, contact: &str, body: &str, at: DateTime<Utc>) -> Live {
    let mut pairs = whatsapp_text(sid, contact, body);
    for (name, value) in &mut pairs {
        if name == "To" {
            *value = business.to_owned();
        }
    }
    let params: Params = pairs.into_iter().collect();
    Live {
        msg: InboundMessage::parse(&params).unwrap(),
        params: params.to_json(),
        at,
    }
}

/// What the rules saw, without the SID (which differs between the two runs).
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
        rule: Some("echo".to_owned()),
        twiml: format!("<Response><Message>{:?}</Message></Response>", seen(facts)),
        bodies: vec![format!("{}", facts.inbound_count)],
        consent,
    }
}

/// A tiny deterministic generator (xorshift), so the script is the same on every run.
struct Script(u64);

impl Script {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

fn duplicate_or_new(r: &Received) -> (&'static str, Option<String>) {
    match r {
        Received::New { twiml } => ("new", Some(twiml.clone())),
        Received::Duplicate { twiml } => ("duplicate", twiml.clone()),
    }
}

/// Stores `l` through the one-at-a-time path: what it got, and what the rules saw.
async fn receive_one(
    pool: &PgPool,
    l: &Live,
    lookback: Duration,
) -> ((&'static str, Option<String>), Option<Seen>) {
    let mut saw = None;
    let stored = store::inbound::receive(
        pool,
        Delivery {
            msg: &l.msg,
            params: l.params.clone(),
            at: l.at,
            failure: None,
            lookback,
            archive_media: false,
            spool_record: None,
        },
        |facts| {
            saw = Some(seen(facts));
            reply(&l.msg, facts)
        },
    )
    .await
    .unwrap();
    (duplicate_or_new(&stored.received), saw)
}

#[sqlx::test]
async fn a_batch_leaves_what_storing_one_at_a_time_leaves(pool: PgPool) {
    // Without reply limits (the facts are read with the messages' insert) and with them
    // (recent replies are read in a statement of their own).
    same_rows(&pool, Duration::zero(), ONE_BY_ONE, BATCHED, 'a', 'b').await;
    same_rows(
        &pool,
        Duration::hours(2),
        OTHER_ONE_BY_ONE,
        OTHER_BATCHED,
        'c',
        'd',
    )
    .await;
}

async fn same_rows(
    pool: &PgPool,
    lookback: Duration,
    one_by_one_business: &str,
    batched_business: &str,
    one_by_one_prefix: char,
    batched_prefix: char,
) {
    // Two days of three contacts: windows that close, STOP and START, and redeliveries of
    // earlier SIDs, some of them into the same batch as the first copy.
    let mut rng = Script(0x2545_f491_4f6c_dd1d);
    let mut at = Utc.with_ymd_and_hms(2026, 3, 1, 9, 0, 0).unwrap();
    let mut script: Vec<(u64, &str, &str)> = Vec::new();
    let mut times = Vec::new();
    for n in 0..150u64 {
        at += Duration::seconds(rng.next(40 * 60) as i64);
        if rng.next(20) == 0 {
            at += Duration::hours(25);
        }
        let entry = if n > 3 && rng.next(8) == 0 {
            // A redelivery: an earlier message again, usually a recent one.
            script[script.len() - 1 - rng.next(4) as usize]
        } else {
            let body = match rng.next(10) {
                0 => "STOP",
                1 => "START",
                _ => "hello",
            };
            (n, CONTACTS[rng.next(3) as usize], body)
        };
        script.push(entry);
        times.push(at);
    }

    let mut one_by_one = Vec::new();
    for (&(n, contact, body), &at) in script.iter().zip(&times) {
        let l = live(
            &format!("SM{one_by_one_prefix}{n:031x}"),
            one_by_one_business,
            contact,
            body,
            at,
        );
        one_by_one.push(receive_one(pool, &l, lookback).await);
    }

    // One writer's memory across the whole script: most batches are written without a read.
    let mut memory = Memory::default();
    let mut batched = Vec::new();
    let mut rest: &[(u64, &str, &str)] = &script;
    let mut rest_times: &[DateTime<Utc>] = &times;
    while !rest.is_empty() {
        let take = (1 + rng.next(12) as usize).min(rest.len());
        let batch: Vec<Live> = rest[..take]
            .iter()
            .zip(&rest_times[..take])
            .map(|(&(n, contact, body), &at)| {
                live(
                    &format!("SM{batched_prefix}{n:031x}"),
                    batched_business,
                    contact,
                    body,
                    at,
                )
            })
            .collect();
        let mut saw = vec![None; take];
        let received = store::group::receive_many(
            &mut pool.acquire().await.unwrap(),
            &batch,
            lookback,
            false,
            &mut memory,
            |i, facts| {
                saw[i] = Some(seen(facts));
                reply(&batch[i].msg, facts)
            },
        )
        .await
        .unwrap();
        batched.extend(received.iter().map(duplicate_or_new).zip(saw));
        rest = &rest[take..];
        rest_times = &rest_times[take..];
    }

    // Same answers, same facts behind each decision, in the same order.
    assert!(one_by_one.iter().any(|((kind, _), _)| *kind == "duplicate"));
    for (i, (a, b)) in one_by_one.iter().zip(&batched).enumerate() {
        assert_eq!(a, b, "webhook {i}: {:?}", script[i]);
    }

    // Same rows.
    let conversations = |business| {
        sqlx::query_as::<
            _,
            (
                String,
                Option<DateTime<Utc>>,
                Option<DateTime<Utc>>,
                Option<DateTime<Utc>>,
                Option<DateTime<Utc>>,
                i64,
            ),
        >(
            "select contact, first_inbound_at, last_inbound_at, window_expires_at,
                    session_started_at, inbound_count
             from conversations where business = $1 order by contact",
        )
        .bind(business)
        .fetch_all(pool)
    };
    let a = conversations(one_by_one_business).await.unwrap();
    assert_eq!(a.len(), 3);
    assert_eq!(a, conversations(batched_business).await.unwrap());

    let sessions = |business| {
        sqlx::query_as::<_, (String, DateTime<Utc>, DateTime<Utc>, DateTime<Utc>, i32)>(
            "select contact, started_at, last_inbound_at, expires_at, inbound_count
             from sessions where business = $1 order by contact, started_at",
        )
        .bind(business)
        .fetch_all(pool)
    };
    let a = sessions(one_by_one_business).await.unwrap();
    assert!(a.len() > 3, "the script closes some windows: {a:?}");
    assert_eq!(a, sessions(batched_business).await.unwrap());

    let consent = |business| {
        sqlx::query_as::<_, (String, String, String, DateTime<Utc>)>(
            "select contact, state, substr(message_sid, 4), changed_at
             from consent where business = $1 order by contact",
        )
        .bind(business)
        .fetch_all(pool)
    };
    let a = consent(one_by_one_business).await.unwrap();
    assert!(!a.is_empty());
    assert_eq!(a, consent(batched_business).await.unwrap());

    let messages = |business| {
        sqlx::query_as::<_, (String, String, Option<String>, String, Vec<String>)>(
            "select substr(m.message_sid, 4), m.contact, m.body, r.twiml, r.bodies
             from messages m join replies r using (message_sid)
             where m.business = $1 order by m.message_sid",
        )
        .bind(business)
        .fetch_all(pool)
    };
    let a = messages(one_by_one_business).await.unwrap();
    assert_eq!(
        a.len(),
        one_by_one.iter().filter(|((k, _), _)| *k == "new").count()
    );
    assert_eq!(a, messages(batched_business).await.unwrap());
    // Reply limits only matter if the rules saw earlier replies.
    if lookback > Duration::zero() {
        assert!(
            one_by_one
                .iter()
                .any(|(_, saw)| saw.is_some_and(|s| s.4 > 0))
        );
    }
}

#[sqlx::test]
async fn two_copies_of_one_sid_in_a_batch_store_once_and_share_the_reply(pool: PgPool) {
    let at = Utc.with_ymd_and_hms(2026, 3, 1, 9, 0, 0).unwrap();
    let batch = [
        live(&sid(1), BATCHED, CONTACTS[0], "hello", at),
        live(&sid(1), BATCHED, CONTACTS[0], "hello", at),
        live(
            &sid(2),
            BATCHED,
            CONTACTS[0],
            "again",
            at + Duration::seconds(1),
        ),
    ];
    let mut decisions = 0;
    let mut memory = Memory::default();
    let received = store::group::receive_many(
        &mut pool.acquire().await.unwrap(),
        &batch,
        Duration::zero(),
        false,
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
        let again = store::group::receive_many(
            &mut pool.acquire().await.unwrap(),
            &batch[..1],
            Duration::zero(),
            false,
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
    let first = live(&sid(n + 1), BATCHED, contact, "hello", at);
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
        let next = live(
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
async fn store_alone(conn: &mut sqlx::PgConnection, memory: &mut Memory, l: Live) -> Seen {
    let batch = [l];
    let mut saw = None;
    store::group::receive_many(conn, &batch, Duration::zero(), false, memory, |_, f| {
        saw = Some(seen(f));
        reply(&batch[0].msg, f)
    })
    .await
    .unwrap();
    saw.expect("a new message is decided")
}

/// A writer remembers a contact; the contact is erased and writes again through another
/// path (a fallback call): the conversation row has the count the writer remembers, but it
/// is not the row the writer remembers, and the batch sees the contact as it is now.
#[sqlx::test]
async fn a_remembered_contact_that_was_erased_and_came_back_is_read_again(pool: PgPool) {
    let at = Utc.with_ymd_and_hms(2026, 3, 1, 9, 0, 0).unwrap();
    let mut memory = Memory::default();
    let mut conn = pool.acquire().await.unwrap();
    let stop = live(&sid(1), BATCHED, CONTACTS[0], "STOP", at);
    store_alone(&mut conn, &mut memory, stop).await;

    twilio_receiver::store::erase::contact(&pool, CONTACTS[0])
        .await
        .unwrap();
    let hello = live(
        &sid(2),
        BATCHED,
        CONTACTS[0],
        "hello",
        at + Duration::hours(1),
    );
    store::inbound::receive(
        &pool,
        Delivery {
            msg: &hello.msg,
            params: hello.params.clone(),
            at: hello.at,
            failure: None,
            lookback: Duration::zero(),
            archive_media: false,
            spool_record: None,
        },
        |f| reply(&hello.msg, f),
    )
    .await
    .unwrap();

    let next = live(
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

/// Returns once a session of the test's database waits for a lock.
async fn wait_for_a_lock(pool: &PgPool) {
    let name = pool.connect_options().get_database().unwrap().to_owned();
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "select count(*) from pg_stat_activity where datname = $1 and wait_event_type = 'Lock'",
        )
        .bind(&name)
        .fetch_one(pool)
        .await
        .unwrap();
        if waiting > 0 {
            break;
        }
        tokio::task::yield_now().await;
    }
}

#[sqlx::test]
async fn a_message_stored_by_another_transaction_meanwhile_is_a_duplicate(pool: PgPool) {
    let at = Utc.with_ymd_and_hms(2026, 3, 1, 9, 0, 0).unwrap();
    // Another process is storing the same SID (its first delivery), not yet committed.
    let mut other = pool.begin().await.unwrap();
    sqlx::query(
        "insert into messages (message_sid, account_sid, direction, channel, business,
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
        let copy = [live(&sid(1), BATCHED, CONTACTS[0], "hello", at)];
        let mut conn = db.acquire().await.unwrap();
        store::group::receive_many(
            &mut conn,
            &copy,
            Duration::zero(),
            false,
            &mut Memory::default(),
            |_, f| reply(&copy[0].msg, f),
        )
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
    let writer = Writer::spawn(
        Context {
            db: pool.clone(),
            replier: Arc::new(Replier::new(
                Rules::parse("", "test").unwrap(),
                Some("Thanks!".to_owned()),
                None,
                false,
            )),
            metrics: metrics.clone(),
            archive_media: false,
        },
        Grouping {
            writers: 1,
            size: 16,
        },
    );
    let rules = Arc::new(Rules::parse("", "test").unwrap());
    let at = Utc.with_ymd_and_hms(2026, 3, 1, 9, 0, 0).unwrap();
    // A sender address longer than an index entry may be: Postgres refuses the whole batch.
    // (Random letters, which Postgres cannot compress below that.)
    let mut rng = Script(7);
    let huge: String = (0..3000)
        .map(|_| char::from(b'a' + rng.next(26) as u8))
        .collect();
    let send = |n, contact: &str| {
        writer.receive(
            live(&sid(n), BATCHED, contact, "hi", at),
            BASE.to_owned(),
            rules.clone(),
        )
    };
    // Queued in one poll, before the writer runs (the test runtime has one thread): one batch.
    let (first, bad, last) =
        tokio::join!(send(1, CONTACTS[0]), send(2, &huge), send(3, CONTACTS[1]));
    assert!(matches!(first, Ok(Received::New { .. })), "{first:?}");
    assert!(matches!(last, Ok(Received::New { .. })), "{last:?}");
    assert!(matches!(bad, Err(StoreError::TooLarge(_))), "{bad:?}");
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
    // Pending statistics reach the view when the backend goes idle after this.
    sqlx::query("select pg_stat_force_next_flush()")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query_as(
        "select relname::text, seq_scan from pg_stat_user_tables
         where relname in ('messages', 'message_media', 'conversations', 'sessions',
                           'consent', 'replies')
         order by relname",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap()
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
        let mut batch: Vec<Live> = (0..8)
            .map(|n| {
                let contact = format!("whatsapp:+1555000{:04}", (round * 8 + n) % 24);
                let when = at + Duration::seconds(i64::from(round * 8 + n));
                live(&sid(round * 8 + n + 1), BATCHED, &contact, "hi", when)
            })
            .collect();
        if round > 0 {
            let first = (round - 1) * 8;
            let contact = format!("whatsapp:+1555000{:04}", first % 24);
            batch.push(live(&sid(first + 1), BATCHED, &contact, "hi", at));
        }
        store::group::receive_many(
            conn,
            &batch,
            Duration::zero(),
            false,
            &mut Memory::default(),
            |i, f| reply(&batch[i].msg, f),
        )
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

fn status(sid: &str, status: &str, error: Option<&str>, at: DateTime<Utc>) -> Callback {
    let extra: Vec<(&str, &str)> = error.map(|e| ("ErrorCode", e)).into_iter().collect();
    let params: Params = callback(sid, status, &extra).into_iter().collect();
    Callback {
        cb: StatusCallback::parse(&params).unwrap(),
        link: None,
        params: params.to_json(),
        at,
    }
}

#[sqlx::test]
async fn status_callbacks_in_batches_leave_what_one_at_a_time_leaves(pool: PgPool) {
    // Callbacks for five SIDs in any order, failures among them, many delivered twice.
    let statuses = [
        ("queued", None),
        ("sent", None),
        ("delivered", None),
        ("read", None),
        ("failed", Some("63016")),
        ("undelivered", Some("30008")),
        ("accepted", None),
        ("something-new", None),
    ];
    let mut rng = Script(0x9e37_79b9_7f4a_7c15);
    let at = Utc.with_ymd_and_hms(2026, 3, 1, 9, 0, 0).unwrap();
    let script: Vec<(u64, usize)> = (0..120)
        .map(|_| (rng.next(5), rng.next(statuses.len() as u64) as usize))
        .collect();

    let callback_for = |prefix: char, (n, s): (u64, usize), i: usize| {
        let (name, error) = statuses[s];
        status(
            &format!("SM{prefix}{n:031x}"),
            name,
            error,
            at + Duration::seconds(i as i64),
        )
    };
    let mut one_by_one = Vec::new();
    for (i, &step) in script.iter().enumerate() {
        let c = callback_for('a', step, i);
        let r = store::status::record(&pool, &c.cb, None, c.params, c.at)
            .await
            .unwrap();
        one_by_one.push(r.new_event);
    }
    let mut batched: Vec<bool> = Vec::new();
    let mut i = 0;
    while i < script.len() {
        let take = (1 + rng.next(16) as usize).min(script.len() - i);
        let batch: Vec<Callback> = (i..i + take)
            .map(|j| callback_for('b', script[j], j))
            .collect();
        let recorded: Vec<Recorded> =
            store::group::record_many(&mut pool.acquire().await.unwrap(), &batch)
                .await
                .unwrap();
        batched.extend(recorded.iter().map(|r| r.new_event));
        i += take;
    }
    assert!(one_by_one.contains(&false), "the script redelivers events");
    assert_eq!(one_by_one, batched, "which callbacks were new events");

    let messages = |prefix: &'static str| {
        sqlx::query_as::<
            _,
            (
                String,
                Option<String>,
                Option<i16>,
                Option<i32>,
                DateTime<Utc>,
                DateTime<Utc>,
            ),
        >(
            "select substr(message_sid, 4), status, status_rank, error_code, received_at,
                    updated_at
             from messages where message_sid like $1 order by message_sid",
        )
        .bind(prefix)
        .fetch_all(&pool)
    };
    let a = messages("SMa%").await.unwrap();
    assert_eq!(a.len(), 5);
    assert_eq!(a, messages("SMb%").await.unwrap());
    let events = |prefix: &'static str| {
        sqlx::query_as::<_, (String, String, Option<i32>, DateTime<Utc>)>(
            "select substr(message_sid, 4), status, error_code, received_at
             from message_status_events where message_sid like $1
             order by message_sid, received_at",
        )
        .bind(prefix)
        .fetch_all(&pool)
    };
    assert_eq!(events("SMa%").await.unwrap(), events("SMb%").await.unwrap());
    let outbound: (i64, Option<DateTime<Utc>>) = sqlx::query_as(
        "select outbound_count, last_outbound_at from conversations where business = $1",
    )
    .bind(BUSINESS)
    .fetch_one(&pool)
    .await
    .unwrap();
    // Five outbound messages created by each run, counted once each.
    assert_eq!(outbound.0, 10);
}

/// A callback for an outbound message from `business` to `contact`.
fn sent(sid: &str, business: &str, contact: &str, status: &str, at: DateTime<Utc>) -> Callback {
    let mut pairs = callback(sid, status, &[]);
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
    }
}

/// One webhook of a mixed script: an inbound message (its number, contact and body) or a
/// callback (its outbound message's number, contact and status).
#[derive(Clone, Copy, Debug)]
enum Step {
    In(u64, &'static str, &'static str),
    Out(u64, &'static str, &'static str),
}

/// A step of the script as the store takes it.
#[allow(clippy::large_enum_variant)]
enum Hook {
    In(Live),
    Out(Callback),
}

#[sqlx::test]
async fn inbound_and_status_in_one_write_leave_what_one_at_a_time_leaves(pool: PgPool) {
    // Three contacts new to both runs. Inbound messages (STOP among them, some delivered
    // twice) and callbacks for outbound messages to the same contacts (any order, some
    // twice), interleaved, so most batches hold both kinds for one contact. It opens with
    // a contact whose first webhook is a callback, and one whose callback comes just before
    // its first message, in the same batch.
    let statuses = ["queued", "sent", "delivered", "read", "failed"];
    let mut rng = Script(0x1234_5678_9abc_def1);
    let mut at = Utc.with_ymd_and_hms(2026, 3, 1, 9, 0, 0).unwrap();
    let mut script = vec![
        Step::Out(1, CONTACTS[1], "queued"),
        Step::In(0, CONTACTS[1], "hello"),
        Step::Out(0, CONTACTS[0], "sent"),
        Step::In(1, CONTACTS[2], "hello"),
    ];
    for n in 2..200u64 {
        let step = match rng.next(10) {
            0 => script[script.len() - 1 - rng.next(4) as usize],
            1..=5 => {
                // Outbound messages keep starting: the latest few get callbacks.
                let sid = n / 8 + rng.next(4);
                let status = statuses[rng.next(statuses.len() as u64) as usize];
                Step::Out(sid, CONTACTS[sid as usize % 3], status)
            }
            6 => Step::In(n, CONTACTS[rng.next(3) as usize], "STOP"),
            _ => Step::In(n, CONTACTS[rng.next(3) as usize], "hello"),
        };
        script.push(step);
    }
    let times: Vec<DateTime<Utc>> = script
        .iter()
        .map(|_| {
            at += Duration::seconds(rng.next(40 * 60) as i64);
            if rng.next(25) == 0 {
                at += Duration::hours(25);
            }
            at
        })
        .collect();
    let webhook = |step: Step, prefix: char, business: &str, at| match step {
        Step::In(n, contact, body) => Hook::In(live(
            &format!("SM{prefix}{n:031x}"),
            business,
            contact,
            body,
            at,
        )),
        Step::Out(n, contact, status) => Hook::Out(sent(
            &format!("SM{prefix}f{n:030x}"),
            business,
            contact,
            status,
            at,
        )),
    };
    // What each webhook got: the inbound answer (and what the rules saw), or whether a
    // callback was a new event.
    type Outcome = Result<((&'static str, Option<String>), Option<Seen>), bool>;

    let mut one_by_one: Vec<Outcome> = Vec::new();
    for (&step, &at) in script.iter().zip(&times) {
        one_by_one.push(match webhook(step, 'a', ONE_BY_ONE, at) {
            Hook::In(l) => Ok(receive_one(&pool, &l, Duration::hours(2)).await),
            Hook::Out(c) => {
                let r = store::status::record(&pool, &c.cb, None, c.params, c.at)
                    .await
                    .unwrap();
                Err(r.new_event)
            }
        });
    }

    let mut memory = Memory::default();
    let mut batched: Vec<Outcome> = Vec::new();
    let mut start = 0;
    while start < script.len() {
        let take = if start == 0 {
            4
        } else {
            1 + rng.next(16) as usize
        };
        let end = (start + take).min(script.len());
        let (mut lives, mut callbacks, mut kinds) = (Vec::new(), Vec::new(), Vec::new());
        for i in start..end {
            match webhook(script[i], 'b', BATCHED, times[i]) {
                Hook::In(l) => {
                    kinds.push(true);
                    lives.push(l);
                }
                Hook::Out(c) => {
                    kinds.push(false);
                    callbacks.push(c);
                }
            }
        }
        let mut saw = vec![None; lives.len()];
        let (received, recorded) = store::group::store_many(
            &mut pool.acquire().await.unwrap(),
            &lives,
            &callbacks,
            Duration::hours(2),
            false,
            &mut memory,
            |i, facts| {
                saw[i] = Some(seen(facts));
                reply(&lives[i].msg, facts)
            },
        )
        .await
        .unwrap();
        let (mut received, mut recorded) = (received.iter().zip(saw), recorded.iter());
        for inbound in kinds {
            batched.push(if inbound {
                let (r, saw) = received.next().unwrap();
                Ok((duplicate_or_new(r), saw))
            } else {
                Err(recorded.next().unwrap().new_event)
            });
        }
        start = end;
    }

    assert!(one_by_one.contains(&Err(false)), "redelivered events");
    assert!(
        one_by_one
            .iter()
            .any(|o| matches!(o, Ok((("duplicate", _), _)))),
        "redelivered messages"
    );
    for (i, (a, b)) in one_by_one.iter().zip(&batched).enumerate() {
        assert_eq!(a, b, "webhook {i}: {:?}", script[i]);
    }

    type Conversation = (
        String,
        String,
        Option<DateTime<Utc>>,
        Option<DateTime<Utc>>,
        Option<DateTime<Utc>>,
        Option<DateTime<Utc>>,
        i64,
        Option<DateTime<Utc>>,
        i64,
        DateTime<Utc>,
        DateTime<Utc>,
    );
    let conversations = |business| {
        sqlx::query_as::<_, Conversation>(
            "select contact, channel, first_inbound_at, last_inbound_at, window_expires_at,
                    session_started_at, inbound_count, last_outbound_at, outbound_count,
                    created_at, updated_at
             from conversations where business = $1 order by contact",
        )
        .bind(business)
        .fetch_all(&pool)
    };
    let a = conversations(ONE_BY_ONE).await.unwrap();
    assert_eq!(a.len(), 3);
    // The contact whose first webhook was a callback: its row dates from that callback.
    assert_eq!(a[1].9, times[0]);
    assert_eq!(a, conversations(BATCHED).await.unwrap());

    let sessions = |business| {
        sqlx::query_as::<_, (String, DateTime<Utc>, DateTime<Utc>, DateTime<Utc>, i32)>(
            "select contact, started_at, last_inbound_at, expires_at, inbound_count
             from sessions where business = $1 order by contact, started_at",
        )
        .bind(business)
        .fetch_all(&pool)
    };
    let a = sessions(ONE_BY_ONE).await.unwrap();
    assert!(a.len() > 3, "the script closes some windows: {a:?}");
    assert_eq!(a, sessions(BATCHED).await.unwrap());

    let consent = |business| {
        sqlx::query_as::<_, (String, String, String, DateTime<Utc>)>(
            "select contact, state, substr(message_sid, 4), changed_at
             from consent where business = $1 order by contact",
        )
        .bind(business)
        .fetch_all(&pool)
    };
    let a = consent(ONE_BY_ONE).await.unwrap();
    assert!(!a.is_empty());
    assert_eq!(a, consent(BATCHED).await.unwrap());

    type Message = (
        String,
        String,
        String,
        Option<String>,
        Option<i16>,
        Option<i32>,
        DateTime<Utc>,
        DateTime<Utc>,
        Option<String>,
    );
    let messages = |business| {
        sqlx::query_as::<_, Message>(
            "select substr(m.message_sid, 4), m.direction, m.contact, m.status, m.status_rank,
                    m.error_code, m.received_at, m.updated_at, r.twiml
             from messages m left join replies r using (message_sid)
             where m.business = $1 order by m.message_sid",
        )
        .bind(business)
        .fetch_all(&pool)
    };
    let a = messages(ONE_BY_ONE).await.unwrap();
    assert!(a.iter().any(|m| m.1 == "outbound") && a.iter().any(|m| m.1 == "inbound"));
    assert_eq!(a, messages(BATCHED).await.unwrap());

    let events = |prefix: &'static str| {
        sqlx::query_as::<_, (String, String, DateTime<Utc>)>(
            "select substr(message_sid, 4), status, received_at
             from message_status_events where message_sid like $1
             order by message_sid, received_at, status",
        )
        .bind(prefix)
        .fetch_all(&pool)
    };
    let a = events("SMa%").await.unwrap();
    assert!(a.len() > 20);
    assert_eq!(a, events("SMb%").await.unwrap());
}

/// Twilio sends no callbacks for inbound messages, but a callback that names one in the same
/// batch must not make the write touch its row twice: both are stored.
#[sqlx::test]
async fn a_callback_for_an_inbound_message_of_the_same_batch_is_stored(pool: PgPool) {
    let at = Utc.with_ymd_and_hms(2026, 3, 1, 9, 0, 0).unwrap();
    let sid = "SM0000000000000000000000000000000c";
    let lives = [live(sid, BATCHED, CONTACTS[0], "hello", at)];
    let callbacks = [sent(sid, BATCHED, CONTACTS[0], "delivered", at)];
    let (received, recorded) = store::group::store_many(
        &mut pool.acquire().await.unwrap(),
        &lives,
        &callbacks,
        Duration::zero(),
        false,
        &mut Memory::default(),
        |i, facts| reply(&lives[i].msg, facts),
    )
    .await
    .unwrap();
    assert!(matches!(received[..], [Received::New { .. }]));
    assert!(recorded[0].new_event);
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
