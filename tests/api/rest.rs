//! The REST client (`twilio_receiver::rest`) against the fake Twilio API: paging and filters,
//! retries (429, 5xx), credentials (rotation, API key, sub-accounts), typed resources, the
//! in-flight limit, metrics, and no secret or personal data in what it prints or logs.
//! Nothing here reaches twilio.com, and no test needs the database.

use crate::{
    fake_twilio::{Failure, FakeMessage, FakeTwilio, rfc2822},
    helpers::{BUSINESS, TOKEN, settings, sid},
};
use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use futures::StreamExt;
use secrecy::SecretString;
use std::{
    sync::Arc,
    time::{Duration, Instant},
};
use twilio_receiver::{
    config::Settings,
    metrics::Metrics,
    rest::{ListFilter, RestClient, RestError, RestSettings},
};

const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";
const SUB_ACCOUNT: &str = "ACfedcba9876543210fedcba9876543210";
const API_KEY: &str = "SK00112233445566778899aabbccddeeff";
const CONTACT: &str = "whatsapp:+15551234567";

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 9, 0, 0).unwrap()
}

/// Message 1: an inbound "hi" from the contact, in the main account.
fn add_hello(fake: &FakeTwilio) {
    fake.add(FakeMessage::inbound(
        ACCOUNT,
        &sid(1),
        CONTACT,
        BUSINESS,
        "hi",
        t0(),
    ));
}

/// Settings as a deployment loads them (TWILIO_AUTH_TOKEN is the test token unless `env`
/// blanks it), for ACCOUNT, with the API at the fake.
fn deployment(fake: &FakeTwilio, env: &[(&str, &str)]) -> Settings {
    let base = fake.base_url();
    let mut vars = vec![
        ("TWILIO_ACCOUNT_SID", ACCOUNT),
        ("TWILIO_RECEIVER__TWILIO__API_BASE_URL", base.as_str()),
        ("TWILIO_RECEIVER__RECONCILE__ENABLED", "true"),
    ];
    vars.extend_from_slice(env);
    let settings = settings(&vars);
    assert!(settings.problems().is_empty(), "{:?}", settings.problems());
    settings
}

/// The client for `settings`, with waits between attempts shortened to milliseconds.
fn connect(
    settings: &Settings,
    adjust: impl FnOnce(&mut RestSettings),
) -> (RestClient, Arc<Metrics>) {
    let mut rest = RestSettings::from_settings(settings).unwrap();
    rest.backoff_base = Duration::from_millis(1);
    rest.backoff_max = Duration::from_millis(5);
    adjust(&mut rest);
    let metrics = Arc::new(Metrics::new());
    (RestClient::new(rest, metrics.clone()).unwrap(), metrics)
}

/// A fake where ACCOUNT accepts the test token, and a client for it.
async fn started() -> (FakeTwilio, RestClient, Arc<Metrics>) {
    let fake = FakeTwilio::start().await;
    fake.accept(ACCOUNT, ACCOUNT, TOKEN);
    let (client, metrics) = connect(&deployment(&fake, &[]), |_| {});
    (fake, client, metrics)
}

fn statuses(fake: &FakeTwilio) -> Vec<u16> {
    fake.requests().iter().map(|r| r.status).collect()
}

/// The value of the sample `series` (name and labels) in the text exposition.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn three_pages_are_listed_to_the_end_with_the_filters() {
    let (fake, client, _) = started().await;
    let minutes = |n: i64| t0() + TimeDelta::minutes(n);
    for i in 0..7 {
        let at = minutes(i64::from(i) * 5);
        fake.add(FakeMessage::inbound(
            ACCOUNT,
            &sid(i),
            CONTACT,
            BUSINESS,
            "hi",
            at,
        ));
    }
    // Outside the filters: sent before and after the window, and to another number.
    fake.add(FakeMessage::inbound(
        ACCOUNT,
        &sid(100),
        CONTACT,
        BUSINESS,
        "early",
        minutes(-1),
    ));
    fake.add(FakeMessage::inbound(
        ACCOUNT,
        &sid(101),
        CONTACT,
        BUSINESS,
        "late",
        minutes(61),
    ));
    fake.add(FakeMessage::outbound_api(
        ACCOUNT,
        &sid(102),
        BUSINESS,
        CONTACT,
        "out",
        minutes(3),
    ));
    let filter = ListFilter {
        date_sent_after: Some(t0()),
        date_sent_before: Some(minutes(60)),
        to: Some(BUSINESS.into()),
        page_size: Some(3),
        ..ListFilter::default()
    };

    let mut pages = client.list_messages(ACCOUNT, &filter);
    let (mut sizes, mut listed) = (Vec::new(), Vec::new());
    while let Some(page) = pages.next_page().await {
        let page = page.unwrap();
        assert_eq!((page.page as usize, page.page_size), (sizes.len(), 3));
        sizes.push(page.items.len());
        listed.extend(page.items.into_iter().map(|m| m.sid));
    }
    assert!(
        pages.next_page().await.is_none(),
        "nothing after the last page"
    );

    assert_eq!(sizes, [3, 3, 1]);
    let newest_first: Vec<String> = (0..7).rev().map(sid).collect();
    assert_eq!(listed, newest_first);
    let requests = fake.requests();
    assert_eq!(requests.len(), 3);
    let path = format!("/2010-04-01/Accounts/{ACCOUNT}/Messages.json");
    for (page, r) in requests.iter().enumerate() {
        assert_eq!(r.path, path);
        assert_eq!(r.user.as_deref(), Some(ACCOUNT));
        assert!(r.authenticated);
        assert_eq!(r.param("To"), Some(BUSINESS), "page {page}");
        assert_eq!(r.param("DateSent>"), Some("2026-03-01T09:00:00Z"));
        assert_eq!(r.param("DateSent<"), Some("2026-03-01T10:00:00Z"));
        assert_eq!(r.param("PageSize"), Some("3"));
        assert_eq!(r.param("From"), None);
    }
    assert_eq!(
        requests[0].query.len(),
        4,
        "the first page is the filter alone"
    );
    // Later pages are exactly the next_page_uri served: Page and its PageToken.
    assert_eq!(requests[1].param("Page"), Some("1"));
    assert_eq!(
        requests[1].param("PageToken"),
        Some(format!("PA{}", sid(4)).as_str())
    );
    assert_eq!(requests[2].param("Page"), Some("2"));
    assert_eq!(
        requests[2].param("PageToken"),
        Some(format!("PA{}", sid(1)).as_str())
    );
}

#[tokio::test]
async fn the_pages_are_a_stream_too() {
    let (fake, client, _) = started().await;
    for i in 0..5 {
        fake.add(FakeMessage::outbound_reply(
            ACCOUNT,
            &sid(i),
            BUSINESS,
            CONTACT,
            "ok",
            t0(),
        ));
    }
    let filter = ListFilter {
        page_size: Some(2),
        ..ListFilter::default()
    };

    let streamed: Vec<usize> = client
        .list_messages(ACCOUNT, &filter)
        .into_stream()
        .map(|page| page.unwrap().items.len())
        .collect()
        .await;

    assert_eq!(streamed, [2, 2, 1]);
    assert_eq!(
        fake.requests()[0].query,
        [("PageSize".to_owned(), "2".to_owned())]
    );
}

#[tokio::test]
async fn a_rate_limited_request_waits_for_retry_after_then_succeeds() {
    let (fake, client, _) = started().await;
    add_hello(&fake);
    fake.fail_next(1, Failure::RateLimited(Some(1)));

    let started = Instant::now();
    let message = client.fetch_message(ACCOUNT, &sid(1)).await.unwrap();

    assert_eq!(message.sid, sid(1));
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "answered after {:?}, before Retry-After ran out",
        started.elapsed()
    );
    assert_eq!(statuses(&fake), [429, 200]);
}

#[tokio::test]
async fn rate_limits_without_retry_after_back_off_and_are_given_up_after_max_attempts() {
    let (fake, client, _) = started().await;
    add_hello(&fake);
    fake.fail_next(2, Failure::RateLimited(None));
    client.fetch_message(ACCOUNT, &sid(1)).await.unwrap();
    assert_eq!(statuses(&fake), [429, 429, 200]);

    let fake = FakeTwilio::start().await;
    fake.accept(ACCOUNT, ACCOUNT, TOKEN);
    fake.fail_next(100, Failure::RateLimited(Some(0)));
    let (client, _) = connect(&deployment(&fake, &[]), |r| r.max_attempts = 3);
    let err = client.fetch_message(ACCOUNT, &sid(1)).await.unwrap_err();
    assert!(
        matches!(&err, RestError::RateLimited { attempts: 3, problem } if problem.code == Some(20429)),
        "{err:?}"
    );
    assert_eq!(statuses(&fake), [429, 429, 429]);
}

#[tokio::test]
async fn server_errors_are_tried_again_then_given_up() {
    let (fake, client, _) = started().await;
    add_hello(&fake);
    fake.fail_next(1, Failure::ServerError);
    assert_eq!(
        client.fetch_message(ACCOUNT, &sid(1)).await.unwrap().sid,
        sid(1)
    );
    assert_eq!(statuses(&fake), [500, 200]);

    fake.fail_next(100, Failure::ServerError);
    let err = client.fetch_message(ACCOUNT, &sid(1)).await.unwrap_err();
    assert!(
        matches!(
            err,
            RestError::Server {
                status: 500,
                attempts: 5,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        fake.requests().len(),
        2 + 5,
        "max_attempts (5 by default), no more"
    );
}

#[tokio::test]
async fn a_refused_token_gives_way_to_the_accounts_next_one() {
    let fake = FakeTwilio::start().await;
    add_hello(&fake);
    // Twilio already promoted the new token; this deployment still lists the old one first.
    fake.accept(ACCOUNT, ACCOUNT, "new-token");
    let settings = deployment(
        &fake,
        &[
            ("TWILIO_AUTH_TOKEN", ""),
            (
                "TWILIO_RECEIVER__TWILIO__AUTH_TOKENS",
                "old-token,new-token",
            ),
        ],
    );
    let (client, _) = connect(&settings, |_| {});

    client.fetch_message(ACCOUNT, &sid(1)).await.unwrap();
    let seen: Vec<_> = fake
        .requests()
        .iter()
        .map(|r| (r.status, r.authenticated))
        .collect();
    assert_eq!(seen, [(401, false), (200, true)]);
    assert!(
        fake.requests()
            .iter()
            .all(|r| r.user.as_deref() == Some(ACCOUNT))
    );

    // The token that worked is tried first from now on.
    client.fetch_message(ACCOUNT, &sid(1)).await.unwrap();
    assert_eq!(statuses(&fake), [401, 200, 200]);
}

#[tokio::test]
async fn unauthorized_with_every_credential_is_an_error_not_a_loop() {
    let fake = FakeTwilio::start().await;
    fake.accept(ACCOUNT, ACCOUNT, "a-token-nobody-has");
    let settings = deployment(
        &fake,
        &[
            ("TWILIO_AUTH_TOKEN", ""),
            (
                "TWILIO_RECEIVER__TWILIO__AUTH_TOKENS",
                "old-token,new-token",
            ),
        ],
    );
    let (client, metrics) = connect(&settings, |_| {});

    let err = client.fetch_message(ACCOUNT, &sid(1)).await.unwrap_err();

    match &err {
        RestError::Unauthorized {
            account,
            tried,
            problem,
        } => {
            assert_eq!((account.as_str(), *tried), (ACCOUNT, 2));
            assert_eq!(problem.code, Some(20003));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(statuses(&fake), [401, 401], "each credential once");
    let shown = format!("{err} {err:?}");
    assert!(
        !shown.contains("old-token") && !shown.contains("new-token"),
        "{shown}"
    );
    assert_eq!(
        sample(
            &metrics.encode(),
            "twilio_receiver_rest_responses_total{status=\"401\"}"
        ),
        Some(2.0)
    );

    // A 403 is final at once.
    fake.accept(ACCOUNT, ACCOUNT, "new-token");
    fake.fail_next(1, Failure::Forbidden);
    let err = client.fetch_message(ACCOUNT, &sid(1)).await.unwrap_err();
    assert!(
        matches!(&err, RestError::Forbidden { problem, .. } if problem.code == Some(20403)),
        "{err:?}"
    );
    assert_eq!(fake.requests().len(), 3);
}

#[tokio::test]
async fn the_api_key_is_used_for_the_main_account_and_tokens_for_sub_accounts() {
    let fake = FakeTwilio::start().await;
    fake.accept(ACCOUNT, API_KEY, "key-secret");
    fake.accept(SUB_ACCOUNT, SUB_ACCOUNT, "sub-token");
    add_hello(&fake);
    fake.add(FakeMessage::inbound(
        SUB_ACCOUNT,
        &sid(2),
        CONTACT,
        BUSINESS,
        "hi",
        t0(),
    ));
    let mut settings = deployment(
        &fake,
        &[
            ("TWILIO_API_KEY", API_KEY),
            ("TWILIO_API_SECRET", "key-secret"),
        ],
    );
    // As the config crate hands a [twilio.accounts] table over: lower-cased keys.
    settings.twilio.accounts.insert(
        SUB_ACCOUNT.to_ascii_lowercase(),
        vec![SecretString::from("sub-token")],
    );
    let (client, _) = connect(&settings, |_| {});
    assert_eq!(client.account_sids(), [ACCOUNT, SUB_ACCOUNT]);

    client.fetch_message(ACCOUNT, &sid(1)).await.unwrap();
    client
        .fetch_message(&SUB_ACCOUNT.to_ascii_uppercase(), &sid(2))
        .await
        .unwrap();

    let requests = fake.requests();
    assert_eq!(requests[0].user.as_deref(), Some(API_KEY));
    assert_eq!(requests[1].user.as_deref(), Some(SUB_ACCOUNT));
    assert_eq!(
        requests[1].path,
        format!(
            "/2010-04-01/Accounts/{SUB_ACCOUNT}/Messages/{}.json",
            sid(2)
        )
    );
    assert!(requests.iter().all(|r| r.authenticated && r.status == 200));

    let unknown = "AC99999999999999999999999999999999";
    let err = client.fetch_message(unknown, &sid(1)).await.unwrap_err();
    assert!(matches!(err, RestError::NoCredentials { .. }), "{err:?}");
    let err = client
        .fetch_message(ACCOUNT, "SM1/../../x")
        .await
        .unwrap_err();
    assert!(matches!(err, RestError::InvalidSid { .. }), "{err:?}");
    assert_eq!(fake.requests().len(), 2, "neither was sent");
}

#[tokio::test]
async fn fetched_messages_have_every_field_typed() {
    let (fake, client, _) = started().await;
    let sent = undelivered_with_media();
    let mut pending =
        FakeMessage::outbound_reply(ACCOUNT, &sid(2), BUSINESS, CONTACT, "Thanks", t0());
    pending.status = "queued".into();
    pending.price = None;
    pending.price_unit = None;
    pending.date_sent = None;
    pending.messaging_service_sid = None;
    pending.body = None;
    fake.add(sent.clone());
    fake.add(pending);

    let m = client.fetch_message(ACCOUNT, &sid(1)).await.unwrap();
    assert_eq!(
        (m.sid.as_str(), m.account_sid.as_str()),
        (sid(1).as_str(), ACCOUNT)
    );
    assert_eq!(m.messaging_service_sid, sent.messaging_service_sid);
    assert_eq!(
        (m.from.as_deref(), m.to.as_deref()),
        (Some(BUSINESS), Some(CONTACT))
    );
    assert_eq!(m.body.as_deref(), Some("Your order shipped"));
    assert_eq!(
        (m.direction.as_str(), m.status.as_str()),
        ("outbound-api", "undelivered")
    );
    assert_eq!(
        (m.error_code, m.error_message.as_deref()),
        (Some(30008), Some("Unknown error"))
    );
    assert_eq!((m.num_segments, m.num_media), (Some(2), Some(2)));
    assert_eq!(
        (m.price.as_deref(), m.price_unit.as_deref()),
        (Some("-0.00750"), Some("USD"))
    );
    assert_eq!(m.date_created, Some(t0() - TimeDelta::seconds(1)));
    assert_eq!(m.date_sent, Some(t0()));
    assert_eq!(m.date_updated, Some(t0() + TimeDelta::seconds(2)));
    assert_eq!(
        m.raw.get(),
        sent.json().to_string(),
        "the JSON exactly as served"
    );
    assert!(
        m.raw
            .get()
            .contains(&format!("\"date_sent\":\"{}\"", rfc2822(t0())))
    );
    assert!(m.raw.get().contains("\"num_segments\":\"2\""));

    let p = client.fetch_message(ACCOUNT, &sid(2)).await.unwrap();
    assert_eq!(
        (p.direction.as_str(), p.status.as_str()),
        ("outbound-reply", "queued")
    );
    assert_eq!((p.price, p.price_unit, p.date_sent), (None, None, None));
    assert_eq!(
        (p.messaging_service_sid, p.body, p.error_code),
        (None, None, None)
    );
    assert_eq!(p.num_media, Some(0));

    let err = client.fetch_message(ACCOUNT, &sid(3)).await.unwrap_err();
    match err {
        RestError::NotFound { path, problem } => {
            assert_eq!(
                path,
                format!("/2010-04-01/Accounts/{ACCOUNT}/Messages/{}.json", sid(3))
            );
            assert_eq!(problem.code, Some(20404));
        }
        other => panic!("{other:?}"),
    }
}

/// A message sent through the API that failed to arrive, with two media items.
fn undelivered_with_media() -> FakeMessage {
    let mut sent = FakeMessage::outbound_api(
        ACCOUNT,
        &sid(1),
        BUSINESS,
        CONTACT,
        "Your order shipped",
        t0(),
    )
    .with_media("image/jpeg", b"jpeg bytes")
    .with_media("application/pdf", b"%PDF-1.7");
    sent.status = "undelivered".into();
    sent.error_code = Some(30008);
    sent.error_message = Some("Unknown error".into());
    sent.num_segments = 2;
    sent.price = Some("-0.00750".into());
    sent
}

#[tokio::test]
async fn listed_media_have_every_field_and_their_content_on_the_api_host() {
    let (fake, client, _) = started().await;
    let sent = undelivered_with_media();
    fake.add(sent.clone());
    fake.add(FakeMessage::inbound(
        ACCOUNT,
        &sid(2),
        CONTACT,
        BUSINESS,
        "no media",
        t0(),
    ));

    let media = client.list_media(ACCOUNT, &sid(1)).await.unwrap();
    assert_eq!(media.len(), 2);
    for (item, served) in media.iter().zip(&sent.media) {
        assert_eq!(item.sid, served.sid);
        assert_eq!(item.parent_sid, sid(1));
        assert_eq!(
            item.content_type.as_deref(),
            Some(served.content_type.as_str())
        );
        assert_eq!(item.uri.as_deref(), Some(sent.media_uri(served).as_str()));
        assert_eq!(item.date_created, Some(t0() - TimeDelta::seconds(1)));
        // The content is the resource's URI without `.json`, on the API's host.
        let url = client.media_url(item).unwrap();
        assert_eq!(
            url,
            format!(
                "{}{}",
                fake.base_url(),
                sent.media_uri(served).trim_end_matches(".json")
            )
        );
        let content = reqwest::Client::new()
            .get(&url)
            .basic_auth(ACCOUNT, Some(TOKEN))
            .send()
            .await
            .unwrap();
        assert_eq!(
            content.headers()["content-type"],
            served.content_type.as_str()
        );
        assert_eq!(content.bytes().await.unwrap(), served.content.as_slice());
    }
    assert!(
        client
            .list_media(ACCOUNT, &sid(2))
            .await
            .unwrap()
            .is_empty()
    );
    let paths: Vec<_> = fake.requests().into_iter().map(|r| r.path).collect();
    let listing = format!(
        "/2010-04-01/Accounts/{ACCOUNT}/Messages/{}/Media.json",
        sid(1)
    );
    assert_eq!(paths[0], listing);
}

#[tokio::test]
async fn at_most_max_in_flight_requests_run_at_once_per_account() {
    let (fake, _, _) = started().await;
    add_hello(&fake);
    fake.set_delay(Duration::from_millis(50));
    let (client, _) = connect(&deployment(&fake, &[]), |r| r.max_in_flight = 2);

    let one = sid(1);
    let fetches = (0..6).map(|_| client.fetch_message(ACCOUNT, &one));
    let results = futures::future::join_all(fetches).await;

    assert!(results.iter().all(Result::is_ok));
    assert_eq!(fake.max_in_flight(ACCOUNT), 2);
}

#[tokio::test]
async fn every_answer_is_counted_by_status() {
    let (fake, client, metrics) = started().await;
    add_hello(&fake);
    fake.fail_next(1, Failure::ServerError);
    fake.fail_next(1, Failure::RateLimited(Some(0)));
    client.fetch_message(ACCOUNT, &sid(1)).await.unwrap();
    client.fetch_message(ACCOUNT, &sid(9)).await.unwrap_err();

    // No answer at all: port 9 (discard), where nothing listens here and no test's server
    // can bind (a port freed by this test could be taken by another's server meanwhile).
    let dead = "http://127.0.0.1:9".to_owned();
    let settings = settings(&[
        ("TWILIO_ACCOUNT_SID", ACCOUNT),
        ("TWILIO_RECEIVER__TWILIO__API_BASE_URL", &dead),
    ]);
    let mut rest = RestSettings::from_settings(&settings).unwrap();
    rest.backoff_base = Duration::from_millis(1);
    rest.max_attempts = 2;
    let unreachable = RestClient::new(rest, metrics.clone()).unwrap();
    let err = unreachable
        .fetch_message(ACCOUNT, &sid(1))
        .await
        .unwrap_err();
    assert!(
        matches!(err, RestError::Transport { attempts: 2, .. }),
        "{err:?}"
    );

    let text = metrics.encode();
    let count = |status: &str| {
        sample(
            &text,
            &format!("twilio_receiver_rest_responses_total{{status=\"{status}\"}}"),
        )
    };
    assert_eq!(count("500"), Some(1.0), "{text}");
    assert_eq!(count("429"), Some(1.0), "{text}");
    assert_eq!(count("200"), Some(1.0), "{text}");
    assert_eq!(count("404"), Some(1.0), "{text}");
    assert_eq!(count("error"), Some(2.0), "{text}");
}

#[tokio::test]
async fn no_credential_or_personal_data_is_printed_or_logged() {
    let (logs, _guard) = crate::logs::capture("trace");
    let fake = FakeTwilio::start().await;
    fake.accept(ACCOUNT, ACCOUNT, "new-t0ken");
    fake.accept(SUB_ACCOUNT, SUB_ACCOUNT, "sub-t0ken");
    fake.add(
        FakeMessage::inbound(ACCOUNT, &sid(1), CONTACT, BUSINESS, "private words", t0())
            .with_media("image/png", b"png"),
    );
    let mut settings = deployment(
        &fake,
        &[
            ("TWILIO_AUTH_TOKEN", ""),
            (
                "TWILIO_RECEIVER__TWILIO__AUTH_TOKENS",
                "old-t0ken,new-t0ken",
            ),
        ],
    );
    settings.twilio.accounts.insert(
        SUB_ACCOUNT.to_ascii_lowercase(),
        vec![SecretString::from("sub-t0ken")],
    );
    let rest = RestSettings::from_settings(&settings).unwrap();
    let printed_settings = format!("{rest:?}");
    let (client, _) = connect(&settings, |_| {});

    // A listing filtered by phone numbers (after a refused token), a fetch, a media list,
    // a server error tried again, and a final error.
    let filter = ListFilter {
        to: Some(BUSINESS.into()),
        from: Some(CONTACT.into()),
        date_sent_after: Some(t0() - TimeDelta::hours(1)),
        ..ListFilter::default()
    };
    let mut pages = client.list_messages(ACCOUNT, &filter);
    let page = pages.next_page().await.unwrap().unwrap();
    assert_eq!(page.items.len(), 1);
    fake.fail_next(1, Failure::ServerError);
    let message = client.fetch_message(ACCOUNT, &sid(1)).await.unwrap();
    client.list_media(ACCOUNT, &sid(1)).await.unwrap();
    fake.fail_next(1, Failure::Unauthorized);
    let err = client
        .fetch_message(SUB_ACCOUNT, &sid(1))
        .await
        .unwrap_err();

    let printed = format!(
        "{printed_settings}\n{client:?}\n{err}\n{err:?}\n{filter:?}\n{page:?}\n{message:?}"
    );
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.contains(&format!("/2010-04-01/Accounts/{ACCOUNT}/Messages.json")),
        "request paths are logged at debug:\n{text}"
    );
    assert!(text.contains("trying the account's next one"), "{text}");
    for needle in [
        "old-t0ken",
        "new-t0ken",
        "sub-t0ken",
        "5551234567",
        "4155238886",
        "private words",
        "DateSent",
        "Basic ",
    ] {
        assert!(!printed.contains(needle), "{needle:?} printed:\n{printed}");
        assert!(!text.contains(needle), "{needle:?} logged:\n{text}");
    }
}
