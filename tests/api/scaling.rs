//! Two server processes on one database, as replicas behind a load balancer: Twilio's
//! retries and the fallback call may land on either, status callbacks arrive in any order on
//! both. Postgres alone keeps the guarantees.

use crate::{
    helpers::*,
    shutdown::{Server, spawn_server},
    status::callback,
};
use sqlx::PgPool;

async fn post(
    client: &reqwest::Client,
    addr: &str,
    path: &str,
    params: &[(String, String)],
) -> u16 {
    let response = post_over_http(client, addr, path, params).await.unwrap();
    response.status().as_u16()
}

#[sqlx::test]
async fn two_processes_on_one_database_store_everything_once(pool: PgPool) {
    let Server {
        child: first,
        addr: a,
        ..
    } = spawn_server(&pool, &[]);
    let _first = Stop(first);
    let Server {
        child: second,
        addr: b,
        ..
    } = spawn_server(&pool, &[]);
    let _second = Stop(second);
    let client = reqwest::Client::new();
    const MESSAGES: u32 = 200;
    // 64 requests in flight at a time, as in the benchmark (far more would be shed with 503).
    let load = std::sync::Arc::new(tokio::sync::Semaphore::new(64));

    // Every message is delivered to both processes at once (a retry racing the original),
    // and each outbound message's four callbacks are spread over both, newest first on one.
    let mut requests = Vec::new();
    for n in 0..MESSAGES {
        let contact = format!("whatsapp:+1555{:07}", n % 20);
        let message = whatsapp_text(&sid(n), &contact, "hi");
        for addr in [&a, &b] {
            let (client, addr, message) = (client.clone(), addr.clone(), message.clone());
            let slot = load.clone();
            requests.push(tokio::spawn(async move {
                let _slot = slot.acquire().await.unwrap();
                post(&client, &addr, "/twilio/messages", &message).await
            }));
        }
        let outbound = format!("SM{:032x}", u64::from(n) + (1 << 40));
        for (i, status) in ["read", "delivered", "sent", "queued"]
            .into_iter()
            .enumerate()
        {
            let addr = if i % 2 == 0 { a.clone() } else { b.clone() };
            let (client, params) = (client.clone(), callback(&outbound, status, &[]));
            let slot = load.clone();
            requests.push(tokio::spawn(async move {
                let _slot = slot.acquire().await.unwrap();
                post(&client, &addr, "/twilio/status", &params).await
            }));
        }
    }
    for request in requests {
        let code = request.await.unwrap();
        assert!(code == 200 || code == 204, "{code}");
    }
    drop(load);

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
}

/// Stops a server process when the test ends, whether it passed or not.
struct Stop(std::process::Child);

impl Drop for Stop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
