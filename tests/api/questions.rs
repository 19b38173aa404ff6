//! The README's "Questions and the SQL that answers them", run as written: against a week of
//! data the server wrote through its own routes (every statement runs and answers), and with
//! EXPLAIN on 100,000 messages (no statement reads the whole `messages` table).

use crate::{helpers::*, status::callback};
use chrono::{DateTime, Duration, Utc};
use sqlx::{AssertSqlSafe, PgPool, Row};
use twilio_receiver::media::Archiver;

const README: &str = include_str!("../../README.md");
const SECTION: &str = "### Questions and the SQL that answers them";

const ANA: &str = "whatsapp:+15551234567";
const BEN: &str = "whatsapp:+15557654321";
const CARLA: &str = "whatsapp:+15550001111";
const DAVID: &str = "whatsapp:+15552223333";
const SMS_CONTACT: &str = "+15559876543";
const SMS_BUSINESS: &str = "+14155238886";

struct Question {
    /// The text after `-- Q: ` on the block's first line.
    text: String,
    sql: String,
}

/// Every ```sql block of the questions section (up to the next heading of its level or
/// above); each must start with `-- Q:`.
fn questions() -> Vec<Question> {
    let start = README
        .find(SECTION)
        .expect("the README has the questions section")
        + SECTION.len();
    let rest = &README[start..];
    let end = rest
        .find("\n## ")
        .into_iter()
        .chain(rest.find("\n### "))
        .min()
        .unwrap_or(rest.len());
    rest[..end]
        .split("```sql\n")
        .skip(1)
        .map(|block| {
            let sql = block.split("```").next().unwrap().trim().to_owned();
            let first = sql.lines().next().unwrap_or_default();
            let text = first
                .strip_prefix("-- Q: ")
                .unwrap_or_else(|| panic!("a block without `-- Q: ` first:\n{sql}"))
                .to_owned();
            Question { text, sql }
        })
        .collect()
}

#[test]
fn the_readme_answers_at_least_twelve_questions() {
    let qs = questions();
    assert!(qs.len() >= 12, "{} questions", qs.len());
    for q in &qs {
        // One statement each: outside comments, a single `;`, at the end.
        let code: String = q
            .sql
            .lines()
            .map(|line| line.split("--").next().unwrap().trim_end())
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(code.matches(';').count(), 1, "{}", q.sql);
        assert!(code.trim_end().ends_with(';'), "{}", q.sql);
    }
    let mut texts: Vec<_> = qs.iter().map(|q| q.text.as_str()).collect();
    texts.sort_unstable();
    texts.dedup();
    assert_eq!(texts.len(), qs.len(), "each question is asked once");
}

// ---------------------------------------------------------------------------------------
// A week of data through the server's routes.

/// The `action` URLs of a TwiML answer (one per `<Message>` we track).
fn actions(twiml: &str) -> Vec<String> {
    twiml
        .split(r#"action=""#)
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap().replace("&amp;", "&"))
        .collect()
}

struct Week {
    app: TestApp,
    /// The database's clock when the data was written: the last message is a few minutes
    /// before it, so the README's `now() - interval ...` ranges see the data.
    now: DateTime<Utc>,
    replies: u32,
}

impl Week {
    /// Posts an inbound message (to `path`) at `at` and returns the action URL of its reply.
    async fn inbound(
        &mut self,
        path: &str,
        at: DateTime<Utc>,
        params: &[(String, String)],
    ) -> Option<String> {
        self.app.set_now(at);
        let r = self.app.post_signed(path, params).await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        let mut actions = actions(&r.body);
        assert!(actions.len() <= 1, "{}", r.body);
        actions.pop()
    }

    /// Twilio's status callbacks for our reply (posted to its action URL), each `(status,
    /// seconds after at, error code)`.
    async fn reply_statuses(
        &mut self,
        action: &str,
        to: &str,
        at: DateTime<Utc>,
        steps: &[(&str, i64, Option<&str>)],
    ) {
        self.replies += 1;
        let reply_sid = format!("SM{:032x}", 0xfeed_0000_u32 + self.replies);
        let from = if to.starts_with("whatsapp:") {
            BUSINESS
        } else {
            SMS_BUSINESS
        };
        let path = action.strip_prefix(BASE).expect("an action under BASE");
        for (status, after, error) in steps {
            self.app.set_now(at + Duration::seconds(*after));
            let mut params = pairs(&[
                ("MessageSid", &reply_sid),
                ("SmsSid", &reply_sid),
                ("AccountSid", "AC00000000000000000000000000000000"),
                ("From", from),
                ("To", to),
                ("MessageStatus", status),
                ("SmsStatus", status),
                ("ApiVersion", "2010-04-01"),
            ]);
            if let Some(code) = error {
                params.extend(pairs(&[("ErrorCode", code)]));
            }
            let r = self
                .app
                .send(signed_post(action, path, &params, TOKEN))
                .await;
            assert_eq!(r.status, 204, "{status}: {}", r.body);
        }
    }

    /// Posts a message with a reply and that reply's status callbacks.
    async fn conversation(
        &mut self,
        n: u32,
        contact: &str,
        body: &str,
        at: DateTime<Utc>,
        steps: &[(&str, i64, Option<&str>)],
    ) {
        let action = self
            .inbound(
                "/twilio/messages",
                at,
                &whatsapp_text(&sid(n), contact, body),
            )
            .await
            .unwrap_or_else(|| panic!("message {n} ({body:?}) is answered"));
        self.reply_statuses(&action, contact, at, steps).await;
    }
}

const DELIVERED_AND_READ: &[(&str, i64, Option<&str>)] = &[
    ("sent", 1, None),
    ("delivered", 3, None),
    ("read", 60, None),
];
const DELIVERED: &[(&str, i64, Option<&str>)] = &[("sent", 1, None), ("delivered", 2, None)];

/// A week of a small business's WhatsApp (and one SMS), written only through the server's
/// routes and its media archive, with the shipped rules (STOP / START) and a default reply.
async fn a_week(pool: PgPool) -> Week {
    let now: DateTime<Utc> = sqlx::query_scalar("select now()")
        .fetch_one(&pool)
        .await
        .unwrap();
    let rules = concat!(env!("CARGO_MANIFEST_DIR"), "/config/rules.toml");
    let media_dir = scratch_dir("questions-media");
    let storage = format!("file://{}", media_dir.display());
    let settings = settings(&[
        ("TWILIO_RECEIVER__RULES__PATH", rules),
        (
            "TWILIO_RECEIVER__REPLY__BODY",
            "Thanks, we will answer soon.",
        ),
        ("TWILIO_RECEIVER__MEDIA__ARCHIVE", "true"),
        ("TWILIO_RECEIVER__MEDIA__STORAGE", storage.as_str()),
    ]);
    let archiver =
        Archiver::new(pool.clone(), settings.media.clone(), settings.verifier()).unwrap();
    let mut w = Week {
        app: TestApp::with_settings(pool, settings),
        now,
        replies: 0,
    };
    let ago = |d: i64, h: i64, m: i64| {
        now - Duration::days(d) - Duration::hours(h) - Duration::minutes(m)
    };

    // Ana says hi six days ago; our reply is delivered and read.
    w.conversation(1, ANA, "hi", ago(6, 0, 0), DELIVERED_AND_READ)
        .await;
    // Ben writes; the reply is delivered.
    w.conversation(2, BEN, "hello, do you deliver?", ago(5, 0, 0), DELIVERED)
        .await;
    // Another system sends Ana a message through the API; the carrier cannot deliver it.
    let api_sid = "SMa0000000000000000000000000000001";
    for (status, error) in [
        ("queued", None),
        ("sent", None),
        ("undelivered", Some("30008")),
    ] {
        w.app.set_now(ago(4, 23, 0));
        let extra: Vec<(&str, &str)> = error.map(|e| ("ErrorCode", e)).into_iter().collect();
        let r = w
            .app
            .post_signed("/twilio/status", &callback(api_sid, status, &extra))
            .await;
        assert_eq!(r.status, 204);
    }
    // Carla sends a photo from a host the archive must not send credentials to; our reply
    // fails (63018: rate limit exceeded).
    let mut photo = whatsapp_text(&sid(3), CARLA, "");
    photo.retain(|(k, _)| k != "NumMedia" && k != "MessageType");
    photo.extend(pairs(&[
        ("NumMedia", "1"),
        ("MessageType", "image"),
        ("MediaUrl0", "https://media.example.invalid/photo.jpg"),
        ("MediaContentType0", "image/jpeg"),
    ]));
    let at = ago(4, 22, 0);
    let action = w.inbound("/twilio/messages", at, &photo).await.unwrap();
    w.reply_statuses(&action, CARLA, at, &[("failed", 1, Some("63018"))])
        .await;
    assert!(archiver.run_once().await, "the photo's archive job ran");
    // Ana opts out, and back in two days later.
    w.conversation(4, ANA, "STOP", ago(4, 0, 0), DELIVERED_AND_READ)
        .await;
    // The primary URL fails for Ben's message: Twilio calls the fallback URL.
    let mut lost = whatsapp_text(&sid(5), BEN, "is anyone there?");
    lost.extend(pairs(&[
        ("ErrorCode", "11200"),
        ("ErrorUrl", "https://hooks.example.test/twilio/messages"),
    ]));
    let at = ago(3, 0, 0);
    let action = w.inbound("/twilio/fallback", at, &lost).await.unwrap();
    w.reply_statuses(&action, BEN, at, DELIVERED).await;
    w.conversation(6, ANA, "START", ago(2, 0, 0), DELIVERED)
        .await;
    // David opts out and stays out.
    w.conversation(7, DAVID, "stop", ago(1, 23, 0), DELIVERED_AND_READ)
        .await;
    // An SMS from San Francisco.
    let sms = pairs(&[
        ("MessageSid", &sid(8)),
        ("SmsSid", &sid(8)),
        ("SmsMessageSid", &sid(8)),
        ("AccountSid", "AC00000000000000000000000000000000"),
        ("From", SMS_CONTACT),
        ("To", SMS_BUSINESS),
        ("Body", "Are you open on Sunday?"),
        ("NumMedia", "0"),
        ("NumSegments", "1"),
        ("SmsStatus", "received"),
        ("FromCity", "SAN FRANCISCO"),
        ("FromState", "CA"),
        ("FromZip", "94103"),
        ("FromCountry", "US"),
        ("ToCity", "SAN FRANCISCO"),
        ("ToState", "CA"),
        ("ToCountry", "US"),
        ("ApiVersion", "2010-04-01"),
    ]);
    let at = ago(1, 22, 0);
    let action = w.inbound("/twilio/messages", at, &sms).await.unwrap();
    w.reply_statuses(&action, SMS_CONTACT, at, DELIVERED).await;
    // Carla writes again 23½ hours ago: her window closes within the hour.
    w.conversation(9, CARLA, "are you open today?", ago(0, 23, 30), DELIVERED)
        .await;
    // Ana thanks us ten minutes ago; WhatsApp reports our answer read, never delivered.
    w.conversation(
        10,
        ANA,
        "thanks!",
        ago(0, 0, 10),
        &[("sent", 1, None), ("read", 40, None)],
    )
    .await;
    w
}

/// What each question must answer with the week's data: at least one row (exactly `rows`
/// when given), each needle somewhere in the rows (as JSON).
struct Expect {
    question: &'static str,
    rows: Option<usize>,
    needles: &'static [&'static str],
}

const fn expect(question: &'static str, needles: &'static [&'static str]) -> Expect {
    Expect {
        question,
        rows: None,
        needles,
    }
}

const EXPECTED: &[Expect] = &[
    expect(
        "What did this contact and we say to each other",
        &[
            "\"STOP\"",
            "\"START\"",
            "You are subscribed again",
            "\"read\"",
        ],
    ),
    expect("What are this contact's last 20 messages", &["thanks!"]),
    expect("Who can still get a free-form reply", &[ANA, CARLA]),
    Expect {
        question: "Whose window closes within the next hour",
        rows: Some(1),
        needles: &[CARLA],
    },
    expect(
        "How many new contacts wrote to us",
        &["\"sms\"", "\"whatsapp\""],
    ),
    expect(
        "How many messages per day, per channel and direction",
        &["\"inbound\"", "\"outbound\"", "\"sms\""],
    ),
    expect("Of the messages we sent each day", &["\"read\": 1"]),
    expect(
        "Which error codes made our messages fail",
        &["63018", "30008"],
    ),
    expect("Why did Twilio call the fallback URL", &["11200"]),
    expect(
        "Which rules answered how often",
        &["\"opt-out\"", "\"opt-in\""],
    ),
    expect(
        "How many of each rule's replies",
        &["\"opt-out\"", "\"opt-in\"", "(no rule)"],
    ),
    // Ana's first reply: delivered three seconds after her message, the only one that day.
    expect("How long from a customer's message", &["\"00:00:03\""]),
    Expect {
        question: "Who is opted out now",
        rows: Some(1),
        needles: &[DAVID],
    },
    expect("How many 24-hour windows opened", &["\"whatsapp\""]),
    expect("Which media could not be archived", &["refused", CARLA]),
    expect(
        "Which US states and cities did SMS come from",
        &["SAN FRANCISCO"],
    ),
    expect(
        "How many messages per day, in Madrid time",
        &["\"inbound\""],
    ),
    expect("Who opted out this week", &[ANA, DAVID, "\"STOP\""]),
    expect(
        "How did this contact's consent change",
        &["\"opted_out\"", "\"opted_in\""],
    ),
];

#[sqlx::test]
async fn every_question_runs_and_answers_a_week_written_through_the_routes(pool: PgPool) {
    let week = a_week(pool).await;
    let db = &week.app.pool;
    assert!(week.now <= Utc::now());

    let qs = questions();
    for e in EXPECTED {
        let n = qs.iter().filter(|q| q.text.starts_with(e.question)).count();
        assert_eq!(n, 1, "{:?} names one README question", e.question);
    }
    for q in &qs {
        // As written, then each row as JSON to look into.
        let rows = sqlx::query(AssertSqlSafe(q.sql.clone()))
            .fetch_all(db)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}\n{}", q.text, q.sql));
        let json: Vec<String> = sqlx::query_scalar(AssertSqlSafe(format!(
            "select to_jsonb(answer)::text from ({}) as answer",
            q.sql.trim_end_matches(';')
        )))
        .fetch_all(db)
        .await
        .unwrap();
        assert_eq!(json.len(), rows.len(), "{}", q.text);
        let expected = EXPECTED.iter().find(|e| q.text.starts_with(e.question));
        assert!(!rows.is_empty(), "{} answered nothing", q.text);
        if let Some(e) = expected {
            if let Some(n) = e.rows {
                assert_eq!(rows.len(), n, "{}: {json:#?}", q.text);
            }
            for needle in e.needles {
                assert!(
                    json.iter().any(|row| row.contains(needle)),
                    "{}: no {needle:?} in {json:#?}",
                    q.text
                );
            }
        }
        // Rows decode as rows: the first column of each is readable.
        let _ = rows[0].try_column(0).unwrap();
    }
}

// ---------------------------------------------------------------------------------------
// Plans on 100,000 messages.

/// 100,000 messages over the last 30 days in arrival order, from 2,000 contacts (one in ten
/// on SMS; the README's example contact is one of them): three in four inbound, most of the
/// rest our replies (with their status callbacks, a `replies` row per inbound message and
/// rule names on some), a few sent through the API; media on one inbound message in ten, a
/// few of them failed or refused; fallback calls; sessions and conversations as the server
/// keeps them; STOP now and then, START after some.
const FIXTURE: &str = r#"
select create_day_partitions(((now() - interval '31 days') at time zone 'UTC')::date,
                             (now() at time zone 'UTC')::date);

insert into messages (message_sid, account_sid, direction, channel, business, contact, body,
                      num_media, profile_name, message_type, status, error_code,
                      in_reply_to, rule, reply_part, received_at, updated_at, params)
select 'SM' || lpad(to_hex(n), 32, '0'),
       'AC00000000000000000000000000000000',
       case when n % 4 = 0 then 'outbound' else 'inbound' end,
       case when c % 10 = 9 then 'sms' else 'whatsapp' end,
       case when c % 10 = 9 then '+14155238886' else 'whatsapp:+14155238886' end,
       case when c % 10 = 9 then '' else 'whatsapp:' end || '+1555' || (1234567 + c),
       case when n % 4 = 0 then 'Thanks, we will answer soon.' else 'message ' || n end,
       case when n % 4 <> 0 and n % 10 = 1 then 1 else 0 end,
       'Contact ' || c,
       case when n % 4 = 0 then null when n % 10 = 1 then 'image' else 'text' end,
       case when n % 4 <> 0 then 'received'
            when n % 50 = 0 then 'undelivered'
            when n % 36 = 0 then 'failed'
            when n % 3 = 0 then 'delivered'
            else 'read' end,
       case when n % 4 <> 0 then null when n % 50 = 0 then 30008 when n % 36 = 0 then 63016 end,
       case when n % 4 = 0 and n % 20 <> 0 then 'SM' || lpad(to_hex(n - 1), 32, '0') end,
       case when n % 4 = 0 and n % 20 <> 0 and n % 3 = 1 then 'menu' end,
       case when n % 4 = 0 and n % 20 <> 0 then 0 end,
       at, at,
       case when c % 10 = 9 then '{"FromCity": "SAN FRANCISCO", "FromState": "CA"}'
            else '{}' end::jsonb
from generate_series(1, 100000) as n
cross join lateral (
    select abs(hashint4(case when n % 4 = 0 and n % 20 <> 0 then n - 1 else n end)) % 2000 as c,
           now() - interval '30 days' + n * interval '25.92 seconds' as at) as x;

insert into message_keys (message_sid, received_at) select message_sid, received_at from messages;

insert into message_status_events (message_received_at, message_sid, status, error_code,
                                   error_code_raw, received_at, params)
select m.received_at, m.message_sid, s.status,
       case when s.status = m.status then m.error_code end,
       case when s.status = m.status then m.error_code::text end,
       m.received_at + s.after, '{}'::jsonb
from messages m
cross join lateral (values ('sent', interval '0'), ('delivered', interval '2 seconds'),
                           ('read', interval '3 minutes'), ('failed', interval '1 second'),
                           ('undelivered', interval '5 seconds')) as s(status, after)
where m.direction = 'outbound'
  and case m.status when 'read' then s.status in ('sent', 'delivered', 'read')
                    when 'delivered' then s.status in ('sent', 'delivered')
                    when 'undelivered' then s.status in ('sent', 'undelivered')
                    else s.status = 'failed' end;

insert into replies (message_received_at, message_sid, rule, twiml, bodies, created_at)
select i.received_at, i.message_sid, case when o.rule is not null then array[o.rule] end,
       case when o.message_sid is null then '<Response/>'
            else '<Response><Message/></Response>' end,
       case when o.message_sid is null then '{}' else array[o.body] end,
       i.received_at
from messages i
left join messages o on o.in_reply_to = i.message_sid
where i.direction = 'inbound';

insert into message_media (message_received_at, message_sid, index, url, content_type,
                           archive_state, archive_attempts)
select received_at, message_sid, 0, 'https://api.twilio.com/media/' || message_sid, 'image/jpeg',
       case when abs(hashtext(message_sid || 'm')) % 100 = 0 then 'failed'
            when abs(hashtext(message_sid || 'r')) % 200 = 0 then 'refused'
            else 'stored' end,
       1
from messages
where direction = 'inbound' and num_media = 1;

insert into webhook_failures (message_sid, error_code, error_url, received_at, params)
select message_sid, case when abs(hashtext(message_sid)) % 3 = 0 then 11205 else 11200 end,
       'https://hooks.example.test/twilio/messages', received_at, '{}'::jsonb
from messages
where direction = 'inbound' and abs(hashtext(message_sid || 'f')) % 300 = 0;

insert into conversations (business, contact, channel, first_inbound_at, last_inbound_at,
                           last_outbound_at, window_expires_at, inbound_count, outbound_count)
select business, contact, min(channel),
       min(received_at) filter (where direction = 'inbound'),
       max(received_at) filter (where direction = 'inbound'),
       max(received_at) filter (where direction = 'outbound'),
       max(received_at) filter (where direction = 'inbound') + interval '24 hours',
       count(*) filter (where direction = 'inbound'),
       count(*) filter (where direction = 'outbound')
from messages
group by business, contact;

insert into sessions (business, contact, channel, started_at, last_inbound_at, expires_at,
                      inbound_count)
select business, contact, min(channel), min(received_at), max(received_at),
       max(received_at) + interval '24 hours', count(*)
from (select *, count(*) filter (where gap is null or gap >= interval '24 hours')
                    over (partition by business, contact order by received_at) as window_no
      from (select business, contact, channel, received_at,
                   received_at - lag(received_at) over (partition by business, contact
                                                        order by received_at) as gap
            from messages
            where direction = 'inbound') as i) as w
group by business, contact, window_no;

update conversations c set session_started_at = s.started_at
from (select business, contact, max(started_at) as started_at
      from sessions group by 1, 2) as s
where s.business = c.business and s.contact = c.contact;

insert into consent_events (business, contact, state, message_sid, cause, rule, at)
select business, contact, s.state, message_sid, 'rule', s.rule, received_at + s.after
from messages
cross join lateral (values ('opted_out', 'opt-out', interval '0'),
                           ('opted_in', 'opt-in', interval '2 days')) as s(state, rule, after)
where direction = 'inbound' and abs(hashtext(message_sid || 'c')) % 150 = 0
  and (s.state = 'opted_out' or abs(hashtext(message_sid || 'i')) % 3 = 0)
  and received_at + s.after < now();

insert into consent (business, contact, state, message_sid, changed_at)
select distinct on (business, contact) business, contact, state, message_sid, at
from consent_events
order by business, contact, at desc;

analyze;
"#;

/// The scans of `relation` anywhere in an EXPLAIN (FORMAT JSON) plan, by node type.
fn scans_of(plan: &serde_json::Value, relation: &str, found: &mut Vec<String>) {
    if plan["Relation Name"] == relation {
        found.push(plan["Node Type"].as_str().unwrap_or_default().to_owned());
    }
    for child in plan["Plans"].as_array().into_iter().flatten() {
        scans_of(child, relation, found);
    }
}

/// Every question, not only those naming a contact or a recent time range (which must
/// reach `messages` through an index), reads `messages` through an index if at all.
#[sqlx::test]
async fn no_question_scans_every_message_of_100_000(pool: PgPool) {
    sqlx::raw_sql(FIXTURE).execute(&pool).await.unwrap();
    let (messages, contacts): (i64, i64) =
        sqlx::query_as("select count(*), count(distinct contact) from messages")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((messages, contacts), (100_000, 2_000));

    let mut names_contact_or_range = 0;
    for q in questions() {
        if q.sql.contains(ANA) || q.sql.contains("now()") {
            names_contact_or_range += 1;
        }
        let plan: serde_json::Value =
            sqlx::query_scalar(AssertSqlSafe(format!("explain (format json) {}", q.sql)))
                .fetch_one(&pool)
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", q.text));
        let mut scans = Vec::new();
        scans_of(&plan[0]["Plan"], "messages", &mut scans);
        assert!(
            !scans.iter().any(|s| s == "Seq Scan"),
            "{} reads every message: {scans:?}\n{plan:#}",
            q.text
        );
    }
    assert!(names_contact_or_range >= 10, "{names_contact_or_range}");
}
