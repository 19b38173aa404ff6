//! Two server processes on one database, as replicas behind a load balancer: Twilio's
//! retries and the fallback call may land on either, status callbacks arrive in any order on
//! both. Postgres alone keeps the guarantees.

use crate::{
    helpers::*,
    shutdown::{Server, spawn_server, warnings},
    status::callback,
};
use sqlx::PgPool;
use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

/// Every answer is a reply that names its message (the tracked `<Message>`'s action URL
/// carries the SID) and the contact's count: a duplicate answered with another message's
/// reply, or with a reply decided afresh, shows.
const RULES: &str = r#"
[[rules]]
name = "welcome"
when = { first_contact = true }
reply = { body = "Welcome, {{ profile_name }}" }
[[rules]]
name = "count"
reply = { body = "Message {{ inbound_count }} from you" }
"#;

/// POSTs and returns the status and the body.
async fn post(
    client: &reqwest::Client,
    addr: &str,
    path: &str,
    params: &[(String, String)],
) -> (u16, String) {
    let response = post_over_http(client, addr, path, params).await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// Delivers `message` to both processes at the same moment (a retry racing the original) and
/// returns both answers.
async fn deliver_to_both(
    client: &reqwest::Client,
    (a, b): (&str, &str),
    message: &[(String, String)],
) -> [(u16, String); 2] {
    let (first, second) = tokio::join!(
        post(client, a, "/twilio/messages", message),
        post(client, b, "/twilio/messages", message),
    );
    [first, second]
}

/// The stored reply of every message, by SID.
async fn stored_replies(pool: &PgPool) -> HashMap<String, String> {
    sqlx::query_as::<_, (String, String)>("select message_sid, twiml from replies")
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

/// `twilio_receiver_duplicate_deliveries_total` on a server's admin listener.
async fn duplicates(client: &reqwest::Client, admin: &str) -> u64 {
    let metrics = client
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("twilio_receiver_duplicate_deliveries_total "))
        .unwrap_or_else(|| panic!("no duplicate counter in:\n{metrics}"))
        .trim()
        .parse()
        .unwrap()
}

#[sqlx::test]
async fn two_processes_on_one_database_store_everything_once(pool: PgPool) {
    let rules = crate::rules::rules_file("scaling", RULES);
    let env = [("TWILIO_RECEIVER__RULES__PATH", rules.to_str().unwrap())];
    let Server {
        child: first,
        addr: a,
        admin: admin_a,
        logs: logs_a,
    } = spawn_server(&pool, &env);
    let _first = Stop(first);
    let Server {
        child: second,
        addr: b,
        admin: admin_b,
        logs: logs_b,
    } = spawn_server(&pool, &env);
    let _second = Stop(second);
    let client = reqwest::Client::new();
    const MESSAGES: u32 = 200;
    // 64 requests in flight at a time, as in the benchmark (far more would be shed with 503).
    let load = std::sync::Arc::new(tokio::sync::Semaphore::new(64));

    // Every message is delivered to both processes at once (a retry racing the original),
    // and each outbound message's four callbacks are spread over both, newest first on one.
    let mut inbound = Vec::new();
    let mut callbacks = Vec::new();
    for n in 0..MESSAGES {
        let contact = format!("whatsapp:+1555{:07}", n % 20);
        let message = whatsapp_text(&sid(n), &contact, "hi");
        inbound.push(tokio::spawn({
            let (client, a, b, slots) = (client.clone(), a.clone(), b.clone(), load.clone());
            async move {
                let _slots = slots.acquire_many(2).await.unwrap();
                (sid(n), deliver_to_both(&client, (&a, &b), &message).await)
            }
        }));
        let outbound = format!("SM{:032x}", u64::from(n) + (1 << 40));
        for (i, status) in ["read", "delivered", "sent", "queued"]
            .into_iter()
            .enumerate()
        {
            let addr = if i % 2 == 0 { a.clone() } else { b.clone() };
            let (client, params) = (client.clone(), callback(&outbound, status, &[]));
            let slot = load.clone();
            callbacks.push(tokio::spawn(async move {
                let _slot = slot.acquire().await.unwrap();
                post(&client, &addr, "/twilio/status", &params).await
            }));
        }
    }
    let mut answers = Vec::new();
    let mut refused = Vec::new();
    for request in inbound {
        let (sid, both) = request.await.unwrap();
        for (status, body) in &both {
            if *status != 200 || !body.contains("<Response>") {
                refused.push(format!("{sid}: {status} {body}"));
            }
        }
        answers.push((sid, both.map(|(_, body)| body)));
    }
    for request in callbacks {
        let (status, body) = request.await.unwrap();
        if (status, body.as_str()) != (204, "") {
            refused.push(format!("a callback: {status} {body}"));
        }
    }
    drop(load);
    // Why, if a delivery was refused: what the servers logged (a 503 is spooled, not lost,
    // but nothing here should make one).
    assert!(
        refused.is_empty(),
        "{refused:#?}\nthe servers' warnings:\n{:#?}\n{:#?}",
        warnings(&logs_a),
        warnings(&logs_b)
    );

    // Both deliveries of a SID, whichever process took which, got the reply stored for it,
    // byte for byte.
    let replies = stored_replies(&pool).await;
    for (sid, bodies) in &answers {
        let stored = replies
            .get(sid)
            .unwrap_or_else(|| panic!("no reply for {sid}"));
        assert!(stored.contains(sid.as_str()), "{sid}: {stored}");
        for body in bodies {
            assert_eq!(body, stored, "{sid}");
        }
    }

    let count = |sql: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let messages = i64::from(MESSAGES);
    assert_eq!(
        count("select count(*) from messages where direction = 'inbound'").await,
        messages
    );
    assert_eq!(count("select count(*) from replies").await, messages);
    assert_eq!(
        count("select count(*) from message_status_events").await,
        4 * messages
    );
    // No status went backwards, whichever process stored which callback.
    assert_eq!(
        count("select count(*) from messages where direction = 'outbound' and status = 'read'")
            .await,
        messages
    );
    // Windows: one session per contact, counting every message once.
    assert_eq!(count("select count(*) from sessions").await, 20);
    assert_eq!(
        count("select sum(inbound_count)::int8 from sessions").await,
        messages
    );
    assert_eq!(
        count("select sum(inbound_count)::int8 from conversations").await,
        messages
    );
    // Each SID was new to one process and a duplicate to the other.
    assert_eq!(
        duplicates(&client, &admin_a).await + duplicates(&client, &admin_b).await,
        u64::from(MESSAGES)
    );

    // Copies that are certainly in flight together, in two transactions: the table every
    // inbound write takes is held until both processes' writes wait for it, so each decides
    // its reply before the other's commit, and one of them must find the other's.
    const RACES: u32 = 4;
    for round in 0..RACES {
        let n = MESSAGES + round;
        // A contact seen before, and (in the last round) a first contact.
        let contact = format!(
            "whatsapp:+1555{:07}",
            if round + 1 == RACES { 99 } else { round }
        );
        let message = whatsapp_text(&sid(n), &contact, "hi");
        let mut lock = pool.begin().await.unwrap();
        sqlx::query("lock table conversations in exclusive mode")
            .execute(&mut *lock)
            .await
            .unwrap();
        let race = tokio::spawn({
            let (client, a, b) = (client.clone(), a.clone(), b.clone());
            async move { deliver_to_both(&client, (&a, &b), &message).await }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // Nothing else is in flight: two statements waiting for a lock are one write
            // from each process.
            let waiting: i64 = sqlx::query_scalar(
                "select count(*) from pg_stat_activity
                 where datname = current_database() and wait_event_type = 'Lock'",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            if waiting >= 2 {
                break;
            }
            assert!(
                !race.is_finished(),
                "round {round}: answered while the lock was held"
            );
            assert!(
                Instant::now() < deadline,
                "round {round}: the two writes never reached the database together"
            );
        }
        lock.commit().await.unwrap();
        let bodies = race.await.unwrap().map(|(status, body)| {
            assert_eq!(
                status,
                200,
                "round {round}: {body}\nthe servers' warnings:\n{:#?}\n{:#?}",
                warnings(&logs_a),
                warnings(&logs_b)
            );
            body
        });
        let stored = stored_replies(&pool).await.remove(&sid(n)).unwrap();
        assert!(stored.contains(&sid(n)), "{stored}");
        assert_eq!(bodies[0], stored, "round {round}");
        assert_eq!(bodies[1], stored, "round {round}");
    }
    assert!(
        stored_replies(&pool)
            .await
            .get(&sid(MESSAGES + RACES - 1))
            .unwrap()
            .contains("Welcome, Ana"),
        "the racing first contact is welcomed (both copies got that one reply)"
    );
    assert_eq!(
        count("select count(*) from messages where direction = 'inbound'").await,
        messages + i64::from(RACES)
    );
    assert_eq!(
        count("select sum(inbound_count)::int8 from conversations").await,
        messages + i64::from(RACES)
    );
    assert_eq!(
        duplicates(&client, &admin_a).await + duplicates(&client, &admin_b).await,
        u64::from(MESSAGES + RACES)
    );
}

/// Stops a server process when the test ends, whether it passed or not.
struct Stop(std::process::Child);

impl Drop for Stop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
