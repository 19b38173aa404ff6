//! History in daily partitions (migration 13): dedupe and status history across days, a
//! missing day as an outage, days made by writers of the past, retention by whole days, and
//! reads by SID that stay on one day.

use crate::{helpers::*, status::callback};
use chrono::{DateTime, Duration, TimeZone, Utc};
use sqlx::{PgConnection, PgPool};
use twilio_receiver::{
    rules::Facts,
    store::{
        self,
        write::{self, Callback, Inbound, Memory, Options, Origin, Received, Reply},
    },
    twilio::{InboundMessage, Params, ReplyLink, StatusCallback},
};

const CONTACT: &str = "whatsapp:+15551234567";

fn utc(y: i32, m: u32, d: u32, h: u32, min: u32, s: u32, ms: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, m, d, h, min, s).unwrap() + Duration::milliseconds(ms)
}

fn app(pool: PgPool) -> TestApp {
    TestApp::with_env(pool, &[("TWILIO_RECEIVER__REPLY__BODY", "Thanks!")])
}

/// The partition each row of `table` with this SID lives in.
async fn days_of(pool: &PgPool, table: &str, sid: &str) -> Vec<String> {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "select tableoid::regclass::text from {table} where message_sid = $1 order by 1"
    )))
    .bind(sid)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// The partitions of `messages` that hold a row.
async fn days_holding_messages(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar("select distinct tableoid::regclass::text from messages order by 1")
        .fetch_all(pool)
        .await
        .unwrap()
}

#[sqlx::test]
async fn a_retry_across_midnight_is_stored_once_and_answered_the_same(pool: PgPool) {
    let app = app(pool);
    let message = whatsapp_text(&sid(1), CONTACT, "hi");
    app.set_now(utc(2026, 3, 1, 23, 59, 59, 700));
    let first = app.post_signed("/twilio/messages", &message).await;
    // Twilio's retry, 0.6 s later: the next day.
    app.set_now(utc(2026, 3, 2, 0, 0, 0, 300));
    let retry = app.post_signed("/twilio/messages", &message).await;

    assert_eq!((first.status.as_u16(), retry.status.as_u16()), (200, 200));
    assert!(first.body.contains("Thanks!"), "{}", first.body);
    assert_eq!(retry.body, first.body, "the same TwiML");
    assert_eq!(
        days_of(&app.pool, "messages", &sid(1)).await,
        ["messages_p20260301"]
    );
    assert_eq!(
        days_of(&app.pool, "replies", &sid(1)).await,
        ["replies_p20260301"]
    );
    assert_eq!(app.count("select count(*) from message_keys").await, 1);
    assert_eq!(
        app.count("select count(*) from conversations where inbound_count = 1")
            .await,
        1
    );
}

#[sqlx::test]
async fn a_status_callback_days_later_updates_its_messages_day(pool: PgPool) {
    let app = app(pool);
    let out = sid(9);
    app.set_now(utc(2026, 3, 1, 9, 0, 0, 0));
    let sent = app
        .post_signed("/twilio/status", &callback(&out, "sent", &[]))
        .await;
    app.set_now(utc(2026, 3, 11, 9, 0, 0, 0));
    let read = app
        .post_signed("/twilio/status", &callback(&out, "read", &[]))
        .await;

    assert_eq!((sent.status.as_u16(), read.status.as_u16()), (204, 204));
    assert_eq!(
        days_of(&app.pool, "messages", &out).await,
        ["messages_p20260301"]
    );
    let status: String = sqlx::query_scalar("select status from messages where message_sid = $1")
        .bind(&out)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(status, "read");
    // Both events live and die with their message's day, whenever they arrived.
    assert_eq!(
        days_of(&app.pool, "message_status_events", &out).await,
        [
            "message_status_events_p20260301",
            "message_status_events_p20260301"
        ]
    );
    let arrived: Vec<DateTime<Utc>> = sqlx::query_scalar(
        "select received_at from message_status_events where message_sid = $1 order by id",
    )
    .bind(&out)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        arrived,
        [utc(2026, 3, 1, 9, 0, 0, 0), utc(2026, 3, 11, 9, 0, 0, 0)]
    );
}

#[sqlx::test]
async fn a_status_event_redelivered_after_midnight_is_stored_once(pool: PgPool) {
    let app = app(pool);
    let delivered = callback(&sid(9), "delivered", &[]);
    app.set_now(utc(2026, 3, 1, 23, 59, 59, 0));
    assert_eq!(
        app.post_signed("/twilio/status", &delivered).await.status,
        204
    );
    app.set_now(utc(2026, 3, 2, 0, 0, 1, 0));
    assert_eq!(
        app.post_signed("/twilio/status", &delivered).await.status,
        204
    );

    assert_eq!(
        app.count("select count(*) from message_status_events")
            .await,
        1
    );
    assert_eq!(app.count("select count(*) from messages").await, 1);
}

/// Two servers (each its own writers and memory) get the same webhook at once, one on each
/// side of midnight: the directory lets one of them store it, and both answer the same.
#[sqlx::test]
async fn two_processes_racing_on_one_sid_across_midnight_store_one_row(pool: PgPool) {
    let (one, two) = (app(pool.clone()), app(pool));
    one.set_now(utc(2026, 3, 1, 23, 59, 59, 900));
    two.set_now(utc(2026, 3, 2, 0, 0, 0, 100));
    let message = whatsapp_text(&sid(1), CONTACT, "hi");
    for _ in 0..5 {
        let (a, b) = tokio::join!(
            one.post_signed("/twilio/messages", &message),
            two.post_signed("/twilio/messages", &message)
        );
        assert_eq!((a.status.as_u16(), b.status.as_u16()), (200, 200));
        assert_eq!(a.body, b.body);
    }
    assert_eq!(one.count("select count(*) from messages").await, 1);
    assert_eq!(one.count("select count(*) from replies").await, 1);
    assert_eq!(one.count("select count(*) from message_keys").await, 1);
}

/// Today's partition gone and no way to make it at once: the webhook is an outage (503,
/// spooled), never a 500 or a lost message, and it is stored once the day is back.
#[sqlx::test]
async fn a_missing_day_is_an_outage_and_its_webhooks_are_stored_once_it_is_back(pool: PgPool) {
    let dir = scratch_dir("partition-missing");
    let app = TestApp::with_env(
        pool.clone(),
        &[
            ("TWILIO_RECEIVER__SPOOL__DIR", dir.to_str().unwrap()),
            ("TWILIO_RECEIVER__REPLY__BODY", "Thanks!"),
        ],
    );
    let today = "messages_p20260301";
    sqlx::query("select create_day_partitions('2026-03-01', '2026-03-01')")
        .execute(&pool)
        .await
        .unwrap();
    // Detached (an operator archiving it, a failed maintenance): a table of that name is
    // left, so the server cannot make the day again.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "alter table messages detach partition {today}"
    )))
    .execute(&pool)
    .await
    .unwrap();

    let answer = app.post_text(1).await;
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert_eq!(
        app.state.ingest.spool().unwrap().pending().unwrap().len(),
        1
    );
    assert_eq!(
        app.count("select count(*) from message_keys").await,
        0,
        "nothing partial"
    );

    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "alter table messages attach partition {today} \
         for values from ('2026-03-01 00:00+00') to ('2026-03-02 00:00+00')"
    )))
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(app.replay_spool().await, 1);
    assert_eq!(app.replay_spool().await, 0);
    assert_eq!(days_of(&pool, "messages", &sid(1)).await, [today]);
    std::fs::remove_dir_all(dir).unwrap();
}

/// How far ahead the days go, as upkeep measures it for the gauge and /readyz.
#[sqlx::test]
async fn days_ahead_are_measured_made_and_reported(pool: PgPool) {
    let days = || store::partitions::days_ahead(&pool);
    assert_eq!(
        days().await.unwrap(),
        7,
        "migrate makes today and the week ahead"
    );
    let made = store::partitions::make_ahead(&pool, 10).await.unwrap();
    assert_eq!(
        (made, days().await.unwrap()),
        (18, 10),
        "three more days of six tables"
    );
    assert_eq!(store::partitions::make_ahead(&pool, 10).await.unwrap(), 0);

    // A gap ends the reach: days after it do not count.
    let later = (Utc::now() + Duration::days(5)).format("messages_p%Y%m%d");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "alter table messages detach partition {later}"
    )))
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(days().await.unwrap(), 4);
    let tomorrow = (Utc::now() + Duration::days(1)).format("replies_p%Y%m%d");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "alter table replies detach partition {tomorrow}"
    )))
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(days().await.unwrap(), 0, "one table short is short");
    let today = Utc::now().format("sessions_p%Y%m%d");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "alter table sessions detach partition {today}"
    )))
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(days().await.unwrap(), -1);

    let app = TestApp::new(pool);
    let readyz = || {
        app.send(
            axum::http::Request::get("/readyz")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
    };
    assert_eq!(readyz().await.body, "ready\n", "nothing measured yet");
    app.state.metrics.partitions_checked(1);
    let ready = readyz().await;
    assert_eq!(
        ready.status, 200,
        "an alert, not a reason to stop taking traffic"
    );
    assert!(
        ready
            .body
            .contains("partitions exist for only 1 days after today"),
        "{}",
        ready.body
    );
    app.state.metrics.partitions_checked(-1);
    assert!(readyz().await.body.contains("today has no partition"));
    assert!(
        app.metrics()
            .await
            .contains("twilio_receiver_partition_days_ahead -1")
    );
}

fn inbound(sid: &str, at: DateTime<Utc>, origin: Origin, media: bool) -> Inbound {
    let mut pairs = whatsapp_text(sid, CONTACT, "hi");
    if media {
        pairs.extend(crate::helpers::pairs(&[
            ("MediaUrl0", "https://api.twilio.com/media/1"),
            ("MediaContentType0", "image/jpeg"),
        ]));
        for (name, value) in &mut pairs {
            if name == "NumMedia" {
                *value = "1".into();
            }
        }
    }
    let params: Params = pairs.into_iter().collect();
    Inbound {
        msg: InboundMessage::parse(&params).unwrap(),
        params: params.to_json(),
        at,
        failure: None,
        spool_record: None,
        origin,
        twilio: Default::default(),
    }
}

fn answer(_: usize, _: &Facts) -> Reply {
    Reply {
        store: true,
        rule: vec!["menu".into()],
        twiml: "<Response><Message>Pick one</Message></Response>".into(),
        bodies: vec!["Pick one".into()],
        consent: None,
    }
}

fn options(archive_media: bool) -> Options {
    Options {
        lookback: Duration::zero(),
        archive_media,
        enrich: false,
    }
}

/// A reply message's callback, linked to the inbound message it answers.
fn tracked(reply_sid: &str, inbound: &str, at: DateTime<Utc>) -> Callback {
    let params: Params = callback(reply_sid, "sent", &[]).into_iter().collect();
    Callback {
        cb: StatusCallback::parse(&params).unwrap(),
        link: Some(ReplyLink {
            reply_to: inbound.to_owned(),
            rule: Some("menu".into()),
            part: 0,
        }),
        params: params.to_json(),
        at,
        found: None,
    }
}

#[sqlx::test]
async fn a_backfill_of_a_day_long_past_makes_that_day_only(pool: PgPool) {
    let long_ago = utc(2025, 1, 2, 12, 0, 0, 0);
    let written = write::write(
        &mut pool.acquire().await.unwrap(),
        &[inbound(&sid(1), long_ago, Origin::Backfill, false)],
        &[],
        options(false),
        &mut Memory::default(),
        answer,
    )
    .await
    .unwrap();
    assert!(matches!(written.inbound[0].received, Received::New { .. }));
    let days: Vec<String> = sqlx::query_scalar(
        "select distinct partition from day_partitions where upper <= '2026-01-01' order by 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        days,
        [
            "message_media_p20250102",
            "message_status_events_p20250102",
            "messages_p20250102",
            "replies_p20250102",
            "sessions_p20250102",
            "webhook_failures_p20250102",
        ]
    );
}

/// A transaction on a connection of its own: the statistics below count what a backend did
/// since it last reported them (Postgres 15), so a pooled connection would carry earlier
/// work.
async fn fresh(pool: &PgPool) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let own = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with((*pool.connect_options()).clone())
        .await
        .unwrap();
    own.begin().await.unwrap()
}

/// The partitions of `table` this transaction has read so far.
async fn touched(conn: &mut PgConnection, table: &str) -> Vec<String> {
    sqlx::query_scalar(
        "select relname::text from pg_stat_xact_user_tables
         where (relname like $1 || '\\_p%' or relname = $1 || '_legacy')
           and seq_scan + coalesce(idx_scan, 0) > 0
         order by 1",
    )
    .bind(table)
    .fetch_all(&mut *conn)
    .await
    .unwrap()
}

/// The partitions of `table` this transaction holds a lock on: every one a statement
/// planned or started a scan of, read or not.
async fn locked(conn: &mut PgConnection, table: &str) -> Vec<String> {
    sqlx::query_scalar(
        "select distinct c.relname::text from pg_locks l
         join pg_class c on c.oid = l.relation
         join pg_inherits i on i.inhrelid = c.oid
         where l.pid = pg_backend_pid() and i.inhparent = $1::regclass
         order by 1",
    )
    .bind(table)
    .fetch_all(&mut *conn)
    .await
    .unwrap()
}

/// Every read by SID finds its message's day first (in the directory) and reads that day's
/// partition alone: duplicate replay, the reply on record, the body of a tracked reply, the
/// media worker's account, reconciliation's "stored already". (Counted per partition in
/// the transaction's own statistics, with many days present.)
#[sqlx::test]
async fn reads_by_sid_touch_one_partition(pool: PgPool) {
    let day = utc(2026, 3, 1, 9, 0, 0, 0);
    for offset in [-2, -1, 1, 2] {
        // Neighbouring days with rows of their own.
        let n = (100 + offset) as u32;
        let other = inbound(&sid(n), day + Duration::days(offset), Origin::Webhook, true);
        write::write(
            &mut pool.acquire().await.unwrap(),
            &[other],
            &[],
            options(true),
            &mut Memory::default(),
            answer,
        )
        .await
        .unwrap();
    }
    let first = inbound(&sid(1), day, Origin::Webhook, true);
    write::write(
        &mut pool.acquire().await.unwrap(),
        &[first],
        &[],
        options(true),
        &mut Memory::default(),
        answer,
    )
    .await
    .unwrap();
    let later = day + Duration::days(3);
    // Made beforehand: making a day reads its new (empty) partitions.
    sqlx::query("select create_day_partitions($1, $1)")
        .bind(later.date_naive())
        .execute(&pool)
        .await
        .unwrap();

    // A duplicate is answered from its day's reply.
    let mut tx = fresh(&pool).await;
    let again = write::write(
        &mut tx,
        &[inbound(&sid(1), later, Origin::Webhook, false)],
        &[],
        options(false),
        &mut Memory::default(),
        answer,
    )
    .await
    .unwrap();
    assert_eq!(
        again.inbound[0].received,
        Received::Duplicate {
            twiml: Some("<Response><Message>Pick one</Message></Response>".into())
        }
    );
    assert_eq!(touched(&mut tx, "replies").await, ["replies_p20260301"]);
    assert_eq!(
        touched(&mut tx, "messages").await,
        Vec::<String>::new(),
        "the directory said"
    );
    // Nor does it plan or open the other days (a lookup whose day is known only as the
    // statement runs would lock and start a scan of every day kept): of sessions, only the
    // day of the contact's current one (opened by its last message, two days later).
    assert_eq!(locked(&mut tx, "replies").await, ["replies_p20260301"]);
    assert_eq!(locked(&mut tx, "sessions").await, ["sessions_p20260303"]);
    tx.rollback().await.unwrap();

    // A tracked reply's body comes from the reply of the message it answers.
    let mut tx = fresh(&pool).await;
    write::write(
        &mut tx,
        &[],
        &[tracked(&sid(50), &sid(1), later)],
        options(false),
        &mut Memory::default(),
        answer,
    )
    .await
    .unwrap();
    assert_eq!(touched(&mut tx, "replies").await, ["replies_p20260301"]);
    assert_eq!(locked(&mut tx, "replies").await, ["replies_p20260301"]);
    let body: Option<String> =
        sqlx::query_scalar("select body from messages where message_sid = $1")
            .bind(sid(50))
            .fetch_one(&mut *tx)
            .await
            .unwrap();
    assert_eq!(body.as_deref(), Some("Pick one"));
    tx.rollback().await.unwrap();

    let mut tx = fresh(&pool).await;
    let on_record = store::replies::reply_on_record(&mut *tx, &sid(1))
        .await
        .unwrap();
    assert!(on_record.is_some());
    assert_eq!(touched(&mut tx, "replies").await, ["replies_p20260301"]);
    tx.rollback().await.unwrap();

    // The lookups keep to their day on a generic plan too, which the plan cache may
    // choose for them after five calls: such a plan locks every day on each call and
    // keeps the scan it chose for a day that was empty when it was made (migration 15).
    let mut tx = fresh(&pool).await;
    sqlx::query("set local plan_cache_mode = force_generic_plan")
        .execute(&mut *tx)
        .await
        .unwrap();
    for _ in 0..6 {
        sqlx::query(
            "select (reply_of($1)).rule, (reply_in($3, $1)).rule,
                    session_inbound_count('b', $2, $3)",
        )
        .bind(sid(1))
        .bind(CONTACT)
        .bind(day)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    }
    assert_eq!(locked(&mut tx, "replies").await, ["replies_p20260301"]);
    assert_eq!(locked(&mut tx, "sessions").await, ["sessions_p20260301"]);
    tx.rollback().await.unwrap();

    // The media worker reads the account of its job's message.
    sqlx::query("update message_media set archive_next_at = now() + interval '1 hour' where message_sid <> $1")
        .bind(sid(1))
        .execute(&pool)
        .await
        .unwrap();
    let mut tx = fresh(&pool).await;
    let job = store::media::claim(&mut *tx, std::time::Duration::from_secs(60))
        .await
        .unwrap()
        .expect("a due job");
    assert_eq!(job.message_sid, sid(1));
    assert_eq!(touched(&mut tx, "messages").await, ["messages_p20260301"]);
    tx.rollback().await.unwrap();

    let mut tx = fresh(&pool).await;
    let triage = store::reconcile::triage(&mut *tx, &[sid(1).as_str()], &[CONTACT])
        .await
        .unwrap();
    assert_eq!(triage.len(), 1);
    assert_eq!(touched(&mut tx, "messages").await, ["messages_p20260301"]);
    tx.rollback().await.unwrap();
}

fn pace(batch: i64) -> store::prune::Pace {
    store::prune::Pace { batch, rest: 0 }
}

/// Retention drops whole days, files first, and the directory's keys only after their
/// rows: a day whose files could not be deleted stays, keys and all.
#[sqlx::test]
async fn prune_drops_whole_days_and_never_a_key_before_its_rows(pool: PgPool) {
    let first = utc(2026, 3, 1, 9, 0, 0, 0);
    for (n, at) in [
        (1, first),
        (2, first + Duration::days(1)),
        (3, first + Duration::days(9)),
    ] {
        write::write(
            &mut pool.acquire().await.unwrap(),
            &[inbound(&sid(n), at, Origin::Webhook, false)],
            &[tracked(&sid(10 + n), &sid(n), at + Duration::minutes(1))],
            options(false),
            &mut Memory::default(),
            answer,
        )
        .await
        .unwrap();
    }
    let keys = || async {
        sqlx::query_scalar::<_, String>("select message_sid from message_keys order by 1")
            .fetch_all(&pool)
            .await
            .unwrap()
    };
    assert_eq!(keys().await.len(), 6);
    let cutoff = first + Duration::days(2) + Duration::hours(5);
    // The second day's files cannot be deleted (the first day has none to delete).
    let mut asked = 0;
    let stopped = store::prune::older_than(&pool, cutoff, pace(1), |files| {
        asked += 1;
        async move { if asked == 2 { files.len().max(1) } else { 0 } }
    })
    .await;
    assert!(stopped.is_err(), "{stopped:?}");
    assert_eq!(
        keys().await,
        [sid(2), sid(3), sid(12), sid(13)],
        "the first day's keys went with it"
    );
    let pruned = store::prune::older_than(&pool, cutoff, pace(1), |_| async { 0 })
        .await
        .unwrap();
    assert_eq!(
        (pruned.messages, pruned.status_events, pruned.keys),
        (2, 1, 2)
    );
    assert_eq!(keys().await, [sid(3), sid(13)]);
    assert_eq!(days_holding_messages(&pool).await, ["messages_p20260310"]);
    // Nothing is left to do.
    assert_eq!(
        store::prune::older_than(&pool, cutoff, pace(1), |_| async { 0 })
            .await
            .unwrap()
            .partitions,
        0
    );
}

#[sqlx::test]
async fn erase_takes_a_contacts_rows_from_every_day(pool: PgPool) {
    let app = app(pool.clone());
    for (n, day) in [(1, 1), (2, 5), (3, 9)] {
        app.set_now(utc(2026, 3, day, 9, 0, 0, 0));
        assert_eq!(app.post_text(n).await.status, 200);
    }
    app.set_now(utc(2026, 3, 9, 10, 0, 0, 0));
    let bob = whatsapp_text(&sid(7), "whatsapp:+15557654321", "hello");
    assert_eq!(app.post_signed("/twilio/messages", &bob).await.status, 200);

    let erased = store::erase::contact(&pool, CONTACT).await.unwrap();
    assert_eq!((erased.messages, erased.replies), (3, 3));
    assert_eq!(
        app.count("select count(*) from message_keys").await,
        1,
        "Bob's key stays"
    );
    assert_eq!(app.count("select count(*) from messages").await, 1);
    assert_eq!(app.count("select count(*) from replies").await, 1);
    // The tombstone keeps the contact out of reconciliation.
    let triage = store::reconcile::triage(&pool, &[sid(1).as_str()], &[CONTACT])
        .await
        .unwrap();
    assert_eq!(triage, [store::reconcile::Triage::Erased]);
}

/// An installation with history: today's tables become legacy partitions, and nothing
/// stored before is lost or stored twice afterwards.
#[sqlx::test(migrations = false)]
async fn the_migration_keeps_every_row_and_every_dedupe(pool: PgPool) {
    let all = sqlx::migrate!();
    let before = sqlx::migrate::Migrator {
        migrations: std::borrow::Cow::Owned(
            all.iter()
                .filter(|m| m.version <= 20261206000011)
                .cloned()
                .collect(),
        ),
        ..sqlx::migrate!()
    };
    before.run(&pool).await.unwrap();
    let at = utc(2026, 3, 1, 9, 0, 0, 0);
    let app = app(pool.clone());
    // What today's server stored: an inbound message with its reply and media, our reply
    // to it with a status event, a fallback call kept from the spool, its session.
    for sql in [
        "insert into conversations (business, contact, channel, inbound_count, first_inbound_at, last_inbound_at, window_expires_at, session_started_at, created_at, updated_at)
         values ('whatsapp:+14155238886', 'whatsapp:+15551234567', 'whatsapp', 1, $1, $1, $1 + interval '1 day', $1, $1, $1)",
        "insert into messages (message_sid, account_sid, direction, channel, business, contact, body, received_at, updated_at, params, status, status_rank)
         values ('SM00000000000000000000000000000001', 'AC1', 'inbound', 'whatsapp', 'whatsapp:+14155238886', 'whatsapp:+15551234567', 'hi', $1, $1, '{}', 'received', 2)",
        "insert into replies (message_sid, twiml, bodies, created_at)
         values ('SM00000000000000000000000000000001', '<Response><Message>Before</Message></Response>', '{Before}', $1)",
        "insert into message_media (message_sid, index, url) values ('SM00000000000000000000000000000001', 0, 'https://api.twilio.com/m')",
        "insert into messages (message_sid, account_sid, direction, channel, business, contact, received_at, updated_at, params, status, status_rank)
         values ('SM00000000000000000000000000000009', 'AC1', 'outbound', 'whatsapp', 'whatsapp:+14155238886', 'whatsapp:+15551234567', $1, $1, '{}', 'sent', 4)",
        "insert into message_status_events (message_sid, status, received_at, params)
         values ('SM00000000000000000000000000000009', 'sent', $1, '{}')",
        "insert into webhook_failures (message_sid, error_code, received_at, params, spool_record)
         values ('SM00000000000000000000000000000001', 11200, $1, '{}', 'r1')",
        "insert into sessions (business, contact, started_at, last_inbound_at, expires_at, inbound_count)
         values ('whatsapp:+14155238886', 'whatsapp:+15551234567', $1, $1, $1 + interval '1 day', 1)",
    ] {
        sqlx::query(sql).bind(at).execute(&pool).await.unwrap();
    }

    store::migrate_pool(&pool).await.unwrap();

    let legacy: Vec<(String, String)> = sqlx::query_as(
        "select parent, partition from day_partitions where lower = '-infinity' order by 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(legacy.len(), 6, "{legacy:?}");
    for (table, rows) in [
        ("messages", 2),
        ("replies", 1),
        ("message_media", 1),
        ("message_status_events", 1),
        ("webhook_failures", 1),
        ("sessions", 1),
        ("message_keys", 2),
    ] {
        assert_eq!(
            app.count(&format!("select count(*) from {table}")).await,
            rows,
            "{table}"
        );
    }
    // A retry of the old message is a duplicate, answered with the reply on record.
    app.set_now(at + Duration::hours(2));
    let retry = app
        .post_signed("/twilio/messages", &whatsapp_text(&sid(1), CONTACT, "hi"))
        .await;
    assert_eq!(retry.status, 200);
    assert!(retry.body.contains("Before"), "{}", retry.body);
    // An old event redelivered is stored once; a new one moves the old message on.
    for status in ["sent", "delivered"] {
        let cb = callback(&sid(9), status, &[]);
        assert_eq!(app.post_signed("/twilio/status", &cb).await.status, 204);
    }
    assert_eq!(
        app.count("select count(*) from message_status_events")
            .await,
        2
    );
    assert_eq!(app.count("select count(*) from messages").await, 2);
    let status: String = sqlx::query_scalar("select status from messages where message_sid = $1")
        .bind(sid(9))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(status, "delivered");
    // New days begin where the legacy partitions end.
    assert!(store::partitions::days_ahead(&pool).await.unwrap() >= 7);
}

/// `serve` keeps `database.partition_days_ahead` days made from its start, and its gauge
/// says how far they go.
#[sqlx::test]
async fn the_server_makes_the_coming_days_and_reports_them(pool: PgPool) {
    let url = database_url(&pool);
    let settings = settings(&[
        ("TWILIO_RECEIVER__SERVER__LISTEN", "127.0.0.1:0"),
        ("TWILIO_RECEIVER__DATABASE__URL", &url),
        ("TWILIO_RECEIVER__DATABASE__PARTITION_DAYS_AHEAD", "12"),
    ]);
    let app = twilio_receiver::startup::Application::build(&settings)
        .await
        .unwrap();
    let admin_port = app.admin_port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    // Upkeep runs as the server starts: wait for its first report.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let scraped = loop {
        let scraped = scrape_metrics(admin_port).await;
        if scraped.contains("twilio_receiver_partition_days_ahead 12") {
            break scraped;
        }
        assert!(std::time::Instant::now() < deadline, "{scraped}");
        tokio::task::yield_now().await;
    };
    assert!(scraped.contains("# HELP twilio_receiver_partition_days_ahead"));
    assert_eq!(store::partitions::days_ahead(&pool).await.unwrap(), 12);

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

/// A contact who writes every day keeps the window their first message opened: its day of
/// sessions stays until every window in it has closed, while the day's messages go.
#[sqlx::test]
async fn prune_keeps_a_day_of_sessions_while_one_of_its_windows_is_open(pool: PgPool) {
    let app = app(pool.clone());
    let day = |d: u32, h: u32| utc(2026, 3, d, h, 0, 0, 0);
    for (n, at) in [(1, day(1, 9)), (2, day(2, 8)), (3, day(3, 7))] {
        app.set_now(at);
        assert_eq!(app.post_text(n).await.status, 200);
    }
    let cutoff = day(3, 5);
    let pruned = store::prune::older_than(&pool, cutoff, pace(100), |_| async { 0 })
        .await
        .unwrap();
    assert_eq!((pruned.messages, pruned.sessions), (2, 0));
    assert_eq!(app.count("select count(*) from messages").await, 1);

    app.set_now(day(3, 23));
    assert_eq!(app.post_text(4).await.status, 200);
    let sessions: Vec<(DateTime<Utc>, i32)> =
        sqlx::query_as("select started_at, inbound_count from sessions")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(sessions, [(day(1, 9), 4)], "one window since the first day");
}

/// A report holding `messages` open: prune's detach waits for it without queueing a single
/// writer behind it (a plain `DETACH` or `DROP` would hold up every writer until the
/// report ends), and prune finishes once the report ends.
#[sqlx::test]
async fn prune_never_queues_writers_behind_a_long_report(pool: PgPool) {
    let app = app(pool.clone());
    let day = |d: u32, h: u32| utc(2026, 3, d, h, 0, 0, 0);
    app.set_now(day(1, 9));
    assert_eq!(app.post_text(1).await.status, 200);
    app.set_now(day(3, 9));
    assert_eq!(app.post_text(2).await.status, 200);

    let mut report = pool.begin().await.unwrap();
    sqlx::query("select count(*) from messages")
        .execute(&mut *report)
        .await
        .unwrap();
    let prune = tokio::spawn({
        let pool = pool.clone();
        async move { store::prune::older_than(&pool, day(2, 5), pace(100), |_| async { 0 }).await }
    });
    let waiting = async {
        loop {
            let waits: bool = sqlx::query_scalar(
                "select exists (select 1 from pg_stat_activity
                                where wait_event_type = 'Lock' and query ilike '%detach partition%')",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            if waits {
                break;
            }
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), waiting)
        .await
        .expect("prune waits for the report");
    // A writer while prune waits: answered, not queued behind it.
    let answer = tokio::time::timeout(std::time::Duration::from_secs(30), app.post_text(3))
        .await
        .expect("a writer is not held up by prune waiting for a report");
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(!prune.is_finished(), "prune waits for the report to end");

    report.commit().await.unwrap();
    let pruned = prune.await.unwrap().unwrap();
    assert_eq!(pruned.messages, 1);
    assert_eq!(days_holding_messages(&pool).await, ["messages_p20260303"]);
    assert_eq!(app.count("select count(*) from messages").await, 2);
}
