//! A load generator for a running server: pre-signs realistic WhatsApp webhooks, replays them
//! over a fixed number of keep-alive connections for a fixed time, and prints one results line
//! per run, including acknowledged webhooks versus rows stored (they must be equal).
//!
//!     cargo bench --bench load -- --addr 127.0.0.1:8080 --workload mixed \
//!         --database-url postgres://postgres@127.0.0.1:5432/twr_bench
//!
//! `bench/run.sh` starts a fresh database and the release server and runs every workload.
//! Requests are signed up front and written as raw HTTP/1.1 bytes, so the generator spends its
//! CPU on sockets, not on HMAC or an HTTP library.

use clap::{Parser, ValueEnum};
use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use twilio_receiver::twilio::signature;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Workload {
    /// New inbound text messages only.
    Inbound,
    /// Status callbacks only: queued, sent, delivered, read for each outbound SID.
    Status,
    /// 60 % inbound, 40 % status callbacks.
    Mixed,
    /// Inbound where one request in ten redelivers an earlier message.
    Duplicates,
}

#[derive(Parser, Debug)]
struct Args {
    /// The server's address; several, comma-separated, spread the connections over replicas.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: String,
    /// With several addresses: send each contact's webhooks to one replica only, as a load
    /// balancer hashing on `From`/`To` would (otherwise any request goes to any replica).
    #[arg(long)]
    affinity: bool,
    /// The public URL the server verifies against (server.public_url).
    #[arg(long, default_value = "https://hooks.example.com")]
    public_url: String,
    #[arg(long, default_value = "bench-token")]
    token: String,
    #[arg(long, value_enum, default_value = "inbound")]
    workload: Workload,
    #[arg(long, default_value_t = 64)]
    connections: usize,
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Requests prepared (the run also stops when they are used up).
    #[arg(long, default_value_t = 200_000)]
    requests: usize,
    #[arg(long, default_value_t = 1_000)]
    contacts: usize,
    /// The server's database, to count stored rows; skipped when empty.
    #[arg(long, default_value = "")]
    database_url: String,
    /// Extra text for the results line (e.g. the rules file used).
    #[arg(long, default_value = "")]
    label: String,
    /// Also print `started_unix_ms=` when the clock starts, and before the results line one
    /// line per second of the run: 2xx answers completed in it and the slowest of them.
    #[arg(long)]
    per_second: bool,
    /// With --per-second: the same per tenth of a second as well (`tenth=` lines), to line
    /// a short stall up with what the database logged at the time.
    #[arg(long)]
    tenths: bool,
    // `cargo bench` passes --bench to every bench binary.
    #[arg(long, hide = true)]
    bench: bool,
}

/// What a request stores when it is acknowledged.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    Message(String),
    Status(String, &'static str),
}

struct Prepared {
    bytes: Vec<u8>,
    key: Key,
    /// The conversation's contact number (0..contacts), for `--affinity`.
    contact: usize,
}

fn inbound(args: &Args, run: &str, n: usize) -> (String, Vec<(String, String)>) {
    let sid = format!("SM{run}{n:024x}");
    let contact = n % args.contacts;
    let wa_id = format!("1555{contact:07}");
    let params = [
        ("SmsMessageSid", sid.as_str()),
        ("NumMedia", "0"),
        ("ProfileName", "Ana María"),
        ("MessageType", "text"),
        ("SmsSid", sid.as_str()),
        ("WaId", wa_id.as_str()),
        ("SmsStatus", "received"),
        ("Body", "Hola! ¿A qué hora abren mañana? Quiero pedir 2 cafés & 1 tostada"),
        ("To", "whatsapp:+14155238886"),
        ("NumSegments", "1"),
        ("ReferralNumMedia", "0"),
        ("MessageSid", sid.as_str()),
        ("AccountSid", "AC0123456789abcdef0123456789abcdef"),
        (
            "ChannelMetadata",
            &format!(
                r#"{{"type":"whatsapp","data":{{"context":{{"ProfileName":"Ana María","WaId":"{wa_id}"}}}}}}"#
            ),
        ),
        ("From", &format!("whatsapp:+{wa_id}")),
        ("ApiVersion", "2010-04-01"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    (sid, params)
}

const STATUSES: [&str; 4] = ["queued", "sent", "delivered", "read"];

fn status(args: &Args, run: &str, n: usize) -> (String, &'static str, Vec<(String, String)>) {
    // Four callbacks per outbound message, in Twilio's order.
    let sid = format!("SM{run}f{:023x}", n / 4);
    let status = STATUSES[n % 4];
    let contact = format!("whatsapp:+1555{:07}", (n / 4) % args.contacts);
    let params = [
        ("MessageSid", sid.as_str()),
        ("SmsSid", sid.as_str()),
        ("AccountSid", "AC0123456789abcdef0123456789abcdef"),
        ("MessagingServiceSid", "MG0123456789abcdef0123456789abcdef"),
        ("From", "whatsapp:+14155238886"),
        ("To", contact.as_str()),
        ("MessageStatus", status),
        ("SmsStatus", status),
        ("ChannelPrefix", "whatsapp"),
        ("ChannelInstallSid", "XE0123456789abcdef0123456789abcdef"),
        ("StructuredMessage", "false"),
        ("ApiVersion", "2010-04-01"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    (sid, status, params)
}

fn http_request(args: &Args, path: &str, params: &[(String, String)]) -> Vec<u8> {
    let body = serde_urlencoded::to_string(params).unwrap();
    let signature = signature::compute(
        args.token.as_bytes(),
        &format!("{}{path}", args.public_url),
        params,
    );
    format!(
        "POST {path} HTTP/1.1\r\nHost: hooks.example.com\r\nContent-Type: application/x-www-form-urlencoded\r\nX-Twilio-Signature: {signature}\r\nUser-Agent: TwilioProxy/1.1\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Inbound message number `n` (a redelivery of it has the same bytes).
fn message(args: &Args, run: &str, n: usize) -> Prepared {
    let (sid, params) = inbound(args, run, n);
    Prepared {
        bytes: http_request(args, "/twilio/messages", &params),
        key: Key::Message(sid),
        contact: n % args.contacts,
    }
}

fn prepare(args: &Args, run: &str) -> Vec<Prepared> {
    let (mut messages, mut statuses) = (0, 0);
    let mut next_message = |args: &Args| {
        messages += 1;
        message(args, run, messages - 1)
    };
    let mut next_status = |args: &Args| {
        let (sid, status, params) = status(args, run, statuses);
        statuses += 1;
        Prepared {
            bytes: http_request(args, "/twilio/status", &params),
            key: Key::Status(sid, status),
            contact: (statuses - 1) / 4 % args.contacts,
        }
    };
    (0..args.requests)
        .map(|i| match args.workload {
            Workload::Inbound => next_message(args),
            Workload::Status => next_status(args),
            // I S I S I: three in five are inbound.
            Workload::Mixed if i % 5 % 2 == 0 => next_message(args),
            Workload::Mixed => next_status(args),
            // A redelivery of a message sent a little earlier (same bytes, same SID).
            Workload::Duplicates if i % 10 == 9 => message(args, run, i * 9 / 10 - 7),
            Workload::Duplicates => next_message(args),
        })
        .collect()
}

/// The requests one group of connections takes from, in order, and the next one to take.
struct Queue {
    requests: Vec<usize>,
    next: AtomicUsize,
}

/// One answer: which request, its status code, and when it completed (µs into the run).
struct Answer {
    request: usize,
    code: u16,
    at_us: u64,
}

/// One keep-alive connection: send, read the answer, repeat until time or requests run out.
async fn connection(
    addr: String,
    requests: Arc<Vec<Prepared>>,
    queue: Arc<Queue>,
    started: Instant,
    until: Instant,
) -> (Vec<u32>, Vec<Answer>) {
    let mut stream = TcpStream::connect(&addr).await.expect("the server accepts");
    stream.set_nodelay(true).unwrap();
    let mut latencies = Vec::new();
    let mut answers = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while Instant::now() < until {
        let Some(&i) = queue
            .requests
            .get(queue.next.fetch_add(1, Ordering::Relaxed))
        else {
            break;
        };
        let request = &requests[i];
        let sent = Instant::now();
        stream.write_all(&request.bytes).await.unwrap();
        let code = read_response(&mut stream, &mut buf).await;
        let done = Instant::now();
        latencies.push((done - sent).as_micros() as u32);
        answers.push(Answer {
            request: i,
            code,
            at_us: (done - started).as_micros() as u64,
        });
    }
    (latencies, answers)
}

/// Reads one response (status line, headers, Content-Length body) and returns its status.
async fn read_response(stream: &mut TcpStream, buf: &mut [u8]) -> u16 {
    let mut len = 0;
    loop {
        let n = stream.read(&mut buf[len..]).await.unwrap();
        assert!(n > 0, "the server closed the connection");
        len += n;
        let Some(end) = buf[..len].windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = std::str::from_utf8(&buf[..end]).unwrap();
        let code = head[9..12].parse().unwrap();
        let body = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0);
        let mut have = len - end - 4;
        while have < body {
            let n = stream.read(&mut buf[..]).await.unwrap();
            assert!(n > 0, "the server closed the connection mid-body");
            have += n;
        }
        return code;
    }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    f64::from(sorted[((sorted.len() - 1) as f64 * p).round() as usize]) / 1000.0
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let run = format!(
        "{:08x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            & 0xffff_ffff
    );
    let requests = Arc::new(prepare(&args, &run));
    let addrs: Vec<&str> = args.addr.split(',').map(str::trim).collect();
    // One queue for all connections, or with --affinity one per replica holding its contacts.
    let queues: Vec<Arc<Queue>> = if args.affinity {
        (0..addrs.len())
            .map(|replica| Queue {
                requests: (0..requests.len())
                    .filter(|&i| requests[i].contact % addrs.len() == replica)
                    .collect(),
                next: AtomicUsize::new(0),
            })
            .map(Arc::new)
            .collect()
    } else {
        vec![Arc::new(Queue {
            requests: (0..requests.len()).collect(),
            next: AtomicUsize::new(0),
        })]
    };
    let started = Instant::now();
    if args.per_second {
        let unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis();
        // Flushed at once: a script waits for this line to time what it runs beside the load.
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        writeln!(out, "started_unix_ms={unix_ms}").unwrap();
        out.flush().unwrap();
    }
    let until = started + Duration::from_secs_f64(args.seconds);
    let tasks: Vec<_> = (0..args.connections)
        .map(|i| {
            tokio::spawn(connection(
                addrs[i % addrs.len()].to_owned(),
                requests.clone(),
                queues[i % addrs.len() % queues.len()].clone(),
                started,
                until,
            ))
        })
        .collect();
    let mut latencies = Vec::new();
    let mut answers = Vec::new();
    for task in tasks {
        let (l, a) = task.await.unwrap();
        latencies.extend(l);
        answers.extend(a);
    }
    let elapsed = started.elapsed().as_secs_f64();
    if args.per_second {
        print_per(&answers, &latencies, 1_000_000, "second");
        if args.tenths {
            print_per(&answers, &latencies, 100_000, "tenth");
        }
    }
    latencies.sort_unstable();
    let ok = |a: &&Answer| (200..300).contains(&a.code);
    let non_2xx = answers.iter().filter(|a| !ok(a)).count();
    let acknowledged: HashSet<&Key> = answers
        .iter()
        .filter(ok)
        .map(|a| &requests[a.request].key)
        .collect();
    let stored = if args.database_url.is_empty() {
        "not counted".to_owned()
    } else {
        count_stored(&args.database_url, &acknowledged)
            .await
            .to_string()
    };
    println!(
        "workload={:?} connections={} seconds={elapsed:.1} requests={} rps={:.0} p50_ms={:.2} p90_ms={:.2} p99_ms={:.2} p99.9_ms={:.2} non_2xx={non_2xx} acknowledged={} stored={stored}{}",
        args.workload,
        args.connections,
        answers.len(),
        answers.len() as f64 / elapsed,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.9),
        percentile(&latencies, 0.99),
        percentile(&latencies, 0.999),
        acknowledged.len(),
        if args.label.is_empty() {
            String::new()
        } else {
            format!(" {}", args.label)
        },
    );
}

/// One line per `slice_us` of the run: the 2xx answers completed in it, and the slowest of
/// them (`latencies` in the order of `answers`).
fn print_per(answers: &[Answer], latencies: &[u32], slice_us: u64, name: &str) {
    let slices = answers.iter().map(|a| a.at_us / slice_us + 1).max();
    let mut per_slice = vec![(0u64, 0u32); slices.unwrap_or(0) as usize];
    for (a, &latency) in answers.iter().zip(latencies) {
        if (200..300).contains(&a.code) {
            let s = &mut per_slice[(a.at_us / slice_us) as usize];
            s.0 += 1;
            s.1 = s.1.max(latency);
        }
    }
    for (slice, (n, max)) in per_slice.iter().enumerate() {
        println!(
            "{name}={slice} acknowledged={n} max_ms={:.1}",
            f64::from(*max) / 1000.0
        );
    }
}

/// How many of the acknowledged webhooks have their rows: the message, or the status event.
async fn count_stored(url: &str, acknowledged: &HashSet<&Key>) -> i64 {
    let db = sqlx::PgPool::connect(url)
        .await
        .expect("the bench database");
    let (mut sids, mut status_sids, mut statuses) = (Vec::new(), Vec::new(), Vec::new());
    for key in acknowledged {
        match key {
            Key::Message(sid) => sids.push(sid.clone()),
            Key::Status(sid, status) => {
                status_sids.push(sid.clone());
                statuses.push((*status).to_owned());
            }
        }
    }
    // The SIDs as one unnest joined to the table, not `message_sid = any($1)`: on daily
    // partitions that array is copied into the scan of every partition, and a parallel plan
    // of 100,000 SIDs over 98 days outgrew Postgres's 1 GB limit ("out of memory").
    let messages: i64 = sqlx::query_scalar(
        "select count(*) from messages m
         join (select distinct unnest($1::text[])) as a (sid) on m.message_sid = a.sid",
    )
    .bind(&sids)
    .fetch_one(&db)
    .await
    .unwrap();
    let events: i64 = sqlx::query_scalar(
        "select count(*) from (select distinct e.message_sid, e.status
         from message_status_events e
         join unnest($1::text[], $2::text[]) as a (sid, status)
           on e.message_sid = a.sid and e.status = a.status) as found",
    )
    .bind(&status_sids)
    .bind(&statuses)
    .fetch_one(&db)
    .await
    .unwrap();
    messages + events
}
