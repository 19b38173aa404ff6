//! `connect` and the "what Twilio holds" judgement against the fake Twilio API (one address
//! serving both the 2010 API and the Messaging API): `connect` run as a user runs it, and
//! `setup::twilio::{held, judge}` called as `doctor` calls them. No database needed.

use crate::{
    fake_twilio::{Failure, FakeNumber, FakeSender, FakeService, FakeTwilio, fake_sid},
    helpers::{BASE, TOKEN, settings},
};
use std::{process::Output, sync::Arc, time::Duration};
use twilio_receiver::{
    metrics::Metrics,
    rest::{RestClient, RestSettings},
    setup::{
        Check, Resource, Routes, Verdict, connect,
        twilio::{Role, held, judge},
    },
};

const ACCOUNT: &str = "AC00000000000000000000000000000000";
const SENDER: &str = "whatsapp:+15550001111";
const NUMBER: &str = "+15550002222";
const OLD: &str = "https://old.example.test";

/// A fake where ACCOUNT accepts the test token.
async fn fake() -> FakeTwilio {
    let fake = FakeTwilio::start().await;
    fake.accept(ACCOUNT, ACCOUNT, TOKEN);
    fake
}

/// This server's routes under the test's public URL.
fn routes() -> Routes {
    Routes::under(BASE)
}

/// Runs `twilio-receiver connect` against `fake` with `env` on top of a deployment's.
async fn connect_command(fake: &FakeTwilio, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut vars = vec![
        (
            "TWILIO_RECEIVER__TWILIO__API_BASE_URL".to_owned(),
            fake.base_url(),
        ),
        (
            "TWILIO_RECEIVER__TWILIO__MESSAGING_BASE_URL".to_owned(),
            fake.base_url(),
        ),
        ("TWILIO_RECEIVER__SERVER__PUBLIC_URL".into(), BASE.into()),
        ("TWILIO_ACCOUNT_SID".into(), ACCOUNT.into()),
        ("TWILIO_AUTH_TOKEN".into(), TOKEN.into()),
        ("PATH".into(), std::env::var("PATH").unwrap_or_default()),
    ];
    for (key, value) in env {
        vars.retain(|(k, _)| k != key);
        if !value.is_empty() {
            vars.push(((*key).to_owned(), (*value).to_owned()));
        }
    }
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_twilio-receiver"));
    command.arg("connect").args(args).env_clear().envs(vars);
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A client for `fake`, as `doctor` builds one, with short waits between attempts.
fn client(fake: &FakeTwilio) -> RestClient {
    let base = fake.base_url();
    let settings = settings(&[
        ("TWILIO_ACCOUNT_SID", ACCOUNT),
        ("TWILIO_RECEIVER__TWILIO__API_BASE_URL", &base),
        ("TWILIO_RECEIVER__TWILIO__MESSAGING_BASE_URL", &base),
    ]);
    let mut rest = RestSettings::from_settings(&settings).unwrap();
    rest.backoff_base = Duration::from_millis(1);
    rest.backoff_max = Duration::from_millis(5);
    RestClient::new(rest, Arc::new(Metrics::new())).unwrap()
}

fn old_sender() -> FakeSender {
    FakeSender::new(ACCOUNT, 1, SENDER).pointing_at(
        &format!("{OLD}/sms"),
        &format!("{OLD}/fallback"),
        &format!("{OLD}/status"),
    )
}

/// What the fake holds for the sender, as (incoming, fallback, status) URL and method.
fn sender_urls(fake: &FakeTwilio) -> [(Option<String>, Option<String>); 3] {
    let s = fake.sender(SENDER);
    [
        (s.callback_url, s.callback_method),
        (s.fallback_url, s.fallback_method),
        (s.status_callback_url, s.status_callback_method),
    ]
}

fn ours(url: &str) -> (Option<String>, Option<String>) {
    (Some(url.to_owned()), Some("POST".to_owned()))
}

fn verdicts(checks: &[Check]) -> Vec<(String, Verdict)> {
    checks.iter().map(|c| (c.name.clone(), c.verdict)).collect()
}

#[tokio::test]
async fn connect_points_a_sender_at_this_server_and_a_second_run_writes_nothing() {
    let fake = fake().await;
    fake.add_sender(FakeSender::new(ACCOUNT, 9, "whatsapp:+15559999999"));
    fake.add_sender(old_sender());
    let r = routes();

    let first = connect_command(&fake, &["--sender", SENDER], &[]).await;
    let (out, err) = text(&first);
    assert_eq!(first.status.code(), Some(0), "{out}{err}");
    assert_eq!(
        sender_urls(&fake),
        [ours(&r.incoming), ours(&r.fallback), ours(&r.status)]
    );
    let sid = fake_sid("XE", 1);
    assert_eq!(
        out,
        format!(
            "sender {SENDER} ({sid})
  webhook.callback_url: {OLD}/sms -> {BASE}/twilio/messages
  webhook.callback_method: POST (unchanged)
  webhook.fallback_url: {OLD}/fallback -> {BASE}/twilio/fallback
  webhook.fallback_method: POST (unchanged)
  webhook.status_callback_url: {OLD}/status -> {BASE}/twilio/status
  webhook.status_callback_method: POST (unchanged)
after (as Twilio now holds it):
  webhook.callback_url: {BASE}/twilio/messages
  webhook.callback_method: POST
  webhook.fallback_url: {BASE}/twilio/fallback
  webhook.fallback_method: POST
  webhook.status_callback_url: {BASE}/twilio/status
  webhook.status_callback_method: POST
updated 3 of 6 fields
"
        )
    );
    // One update, as JSON, with all six values, to the sender found by its id.
    let writes = fake.writes();
    assert_eq!(writes.len(), 1, "{writes:?}");
    assert_eq!(writes[0].path, format!("/v2/Channels/Senders/{sid}"));
    assert_eq!(writes[0].content_type.as_deref(), Some("application/json"));
    assert_eq!(
        writes[0].json().unwrap()["webhook"],
        serde_json::json!({
            "callback_url": r.incoming, "callback_method": "POST",
            "fallback_url": r.fallback, "fallback_method": "POST",
            "status_callback_url": r.status, "status_callback_method": "POST",
        })
    );
    // The Messaging API's calls name no account: the main account's credentials choose it.
    assert!(
        fake.requests()
            .iter()
            .all(|q| q.user.as_deref() == Some(ACCOUNT) && q.authenticated)
    );

    let second = connect_command(&fake, &["--sender", SENDER], &[]).await;
    let (out, err) = text(&second);
    assert_eq!(second.status.code(), Some(0), "{out}{err}");
    assert!(
        out.ends_with("nothing to change: Twilio already holds these values\n"),
        "{out}"
    );
    assert!(out.contains(&format!(
        "  webhook.callback_url: {BASE}/twilio/messages (unchanged)\n"
    )));
    assert_eq!(fake.writes().len(), 1, "the second run wrote");
}

#[tokio::test]
async fn connect_points_a_messaging_service_at_this_server_and_stops_it_deferring_to_numbers() {
    let fake = fake().await;
    let mut service = FakeService::new(ACCOUNT, 1);
    service.inbound_request_url = Some(format!("{OLD}/sms"));
    service.inbound_method = "GET".into();
    service.use_inbound_webhook_on_number = true;
    fake.add_service(service);
    let sid = fake_sid("MG", 1);
    let r = routes();

    let first = connect_command(&fake, &["--messaging-service", &sid], &[]).await;
    let (out, err) = text(&first);
    assert_eq!(first.status.code(), Some(0), "{out}{err}");
    let held = fake.service(&sid);
    assert_eq!(
        (
            held.inbound_request_url.as_deref(),
            held.inbound_method.as_str(),
            held.fallback_url.as_deref(),
            held.fallback_method.as_str(),
            held.status_callback.as_deref(),
            held.use_inbound_webhook_on_number,
        ),
        (
            Some(r.incoming.as_str()),
            "POST",
            Some(r.fallback.as_str()),
            "POST",
            Some(r.status.as_str()),
            false
        )
    );
    for line in [
        format!("Messaging Service {sid}\n  inbound_request_url"),
        format!("  inbound_request_url: {OLD}/sms -> {BASE}/twilio/messages\n"),
        "  inbound_method: GET -> POST\n".into(),
        format!("  fallback_url: (unset) -> {BASE}/twilio/fallback\n"),
        "  use_inbound_webhook_on_number: true -> false\n".into(),
        "note: use_inbound_webhook_on_number = false: Twilio calls the service's URLs for every number in it, not each number's own sms_url\n".into(),
        "after (as Twilio now holds it):\n".into(),
        format!("  status_callback: {BASE}/twilio/status\n"),
        "  use_inbound_webhook_on_number: false\n".into(),
        "updated 5 of 6 fields\n".into(),
    ] {
        assert!(out.contains(&line), "{line:?} not in:\n{out}");
    }
    let writes = fake.writes();
    assert_eq!(writes.len(), 1, "{writes:?}");
    assert_eq!(writes[0].path, format!("/v1/Services/{sid}"));
    assert_eq!(
        writes[0].form(),
        [
            ("InboundRequestUrl", r.incoming.as_str()),
            ("InboundMethod", "POST"),
            ("FallbackUrl", r.fallback.as_str()),
            ("FallbackMethod", "POST"),
            ("StatusCallback", r.status.as_str()),
            ("UseInboundWebhookOnNumber", "false"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
    );

    let second = connect_command(&fake, &["--messaging-service", &sid], &[]).await;
    let (out, _) = text(&second);
    assert_eq!(second.status.code(), Some(0), "{out}");
    assert!(out.contains("nothing to change"), "{out}");
    assert_eq!(fake.writes().len(), 1, "the second run wrote");
}

#[tokio::test]
async fn connect_points_a_phone_numbers_sms_urls_here_and_leaves_its_voice_status_callback() {
    let fake = fake().await;
    // Twilio's PhoneNumber filter matches partial numbers: this one comes back too.
    fake.add_number(FakeNumber::new(ACCOUNT, 7, &format!("{NUMBER}9")).sms_url(OLD));
    let mut number = FakeNumber::new(ACCOUNT, 1, NUMBER).sms_url(&format!("{OLD}/sms"));
    number.sms_application_sid = fake_sid("AP", 3);
    fake.add_number(number);
    let r = routes();

    let first = connect_command(&fake, &["--phone-number", NUMBER], &[]).await;
    let (out, err) = text(&first);
    assert_eq!(first.status.code(), Some(0), "{out}{err}");
    let held = fake.number(NUMBER);
    assert_eq!(
        (
            held.sms_url.as_str(),
            held.sms_method.as_str(),
            held.sms_fallback_url.as_str(),
            held.sms_fallback_method.as_str(),
            held.sms_application_sid.as_str(),
        ),
        (r.incoming.as_str(), "POST", r.fallback.as_str(), "POST", "")
    );
    // The voice status callback, and the other number, are untouched.
    assert_eq!(held.status_callback, "https://voice.example.test/status");
    assert_eq!(fake.number(&format!("{NUMBER}9")).sms_url, OLD);
    let app = fake_sid("AP", 3);
    for line in [
        format!("phone number {NUMBER} ({})\n", fake_sid("PN", 1)),
        format!("  sms_url: {OLD}/sms -> {BASE}/twilio/messages\n"),
        format!("  sms_fallback_url: (unset) -> {BASE}/twilio/fallback\n"),
        format!("  sms_application_sid: {app} -> (unset)\n"),
        "note: the number's TwiML App (sms_application_sid) is removed".into(),
        "note: a phone number has no status callback URL for messages: statuses come to the URL a message is sent with (StatusCallback), or to its Messaging Service's status_callback".into(),
        "  sms_application_sid: (unset)\n".into(),
        "updated 3 of 5 fields\n".into(),
    ] {
        assert!(out.contains(&line), "{line:?} not in:\n{out}");
    }
    let writes = fake.writes();
    assert_eq!(writes.len(), 1, "{writes:?}");
    assert_eq!(
        writes[0].path,
        format!(
            "/2010-04-01/Accounts/{ACCOUNT}/IncomingPhoneNumbers/{}.json",
            fake_sid("PN", 1)
        )
    );
    assert!(
        writes[0]
            .form()
            .contains(&("SmsApplicationSid".into(), String::new()))
    );

    let second = connect_command(&fake, &["--phone-number", NUMBER], &[]).await;
    let (out, _) = text(&second);
    assert_eq!(second.status.code(), Some(0), "{out}");
    assert!(out.contains("nothing to change"), "{out}");
    assert_eq!(fake.writes().len(), 1, "the second run wrote");
}

#[tokio::test]
async fn connect_dry_run_prints_the_changes_and_writes_nothing() {
    let fake = fake().await;
    fake.add_sender(old_sender());
    let before = sender_urls(&fake);

    let run = connect_command(&fake, &["--sender", SENDER, "--dry-run"], &[]).await;
    let (out, err) = text(&run);
    assert_eq!(run.status.code(), Some(0), "{out}{err}");
    assert!(
        out.contains(&format!(
            "  webhook.callback_url: {OLD}/sms -> {BASE}/twilio/messages\n"
        )),
        "{out}"
    );
    assert!(out.ends_with("dry run: nothing was written\n"), "{out}");
    assert!(!out.contains("after"), "{out}");
    assert!(fake.writes().is_empty(), "{:?}", fake.writes());
    assert_eq!(sender_urls(&fake), before);
}

#[tokio::test]
async fn connect_refuses_an_http_public_url_without_allow_http() {
    let fake = fake().await;
    fake.add_sender(old_sender());
    let http = [(
        "TWILIO_RECEIVER__SERVER__PUBLIC_URL",
        "http://abc.tunnel.test",
    )];

    let refused = connect_command(&fake, &["--sender", SENDER], &http).await;
    let (out, err) = text(&refused);
    assert_eq!(refused.status.code(), Some(2), "{out}{err}");
    assert!(err.contains("not https"), "{err}");
    assert!(err.contains("--allow-http"), "{err}");
    assert!(
        fake.requests().is_empty(),
        "nothing is read before refusing"
    );

    let allowed = connect_command(&fake, &["--sender", SENDER, "--allow-http"], &http).await;
    let (out, err) = text(&allowed);
    assert_eq!(allowed.status.code(), Some(0), "{out}{err}");
    assert_eq!(
        fake.sender(SENDER).callback_url.as_deref(),
        Some("http://abc.tunnel.test/twilio/messages")
    );
}

#[tokio::test]
async fn connect_refuses_without_a_public_url_or_credentials() {
    let fake = fake().await;
    fake.add_sender(old_sender());

    let unset = connect_command(
        &fake,
        &["--sender", SENDER],
        &[("TWILIO_RECEIVER__SERVER__PUBLIC_URL", "")],
    )
    .await;
    let (_, err) = text(&unset);
    assert_eq!(unset.status.code(), Some(1), "{err}");
    assert!(err.contains("server.public_url is not set"), "{err}");

    let anonymous =
        connect_command(&fake, &["--sender", SENDER], &[("TWILIO_ACCOUNT_SID", "")]).await;
    let (_, err) = text(&anonymous);
    assert_eq!(anonymous.status.code(), Some(1), "{err}");
    assert!(err.contains("no REST API credentials"), "{err}");
    assert!(err.contains("TWILIO_ACCOUNT_SID"), "{err}");
    assert!(fake.requests().is_empty());
    assert!(!err.contains(TOKEN));
}

#[tokio::test]
async fn connect_needs_exactly_one_well_formed_resource() {
    let fake = fake().await;
    for args in [
        &[][..],
        &["--sender", SENDER, "--phone-number", NUMBER][..],
        &["--sender", "+15550001111"][..],
        &["--messaging-service", "MG123"][..],
        &["--phone-number", "5550002222"][..],
    ] {
        let run = connect_command(&fake, args, &[]).await;
        assert_eq!(run.status.code(), Some(2), "{args:?}: {:?}", text(&run));
    }
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn connect_to_the_sandbox_says_what_to_paste_where() {
    let fake = fake().await;
    let run = connect_command(&fake, &["--sender", "whatsapp:+14155238886"], &[]).await;
    let (out, err) = text(&run);
    assert_eq!(run.status.code(), Some(1), "{out}{err}");
    assert!(err.contains("is the WhatsApp Sandbox"), "{err}");
    assert!(
        err.contains(&format!(
            "\"When a message comes in\" to {BASE}/twilio/messages (POST)"
        )),
        "{err}"
    );
    assert!(fake.writes().is_empty());
}

#[tokio::test]
async fn connect_writes_basic_auth_credentials_into_the_urls_and_never_prints_the_password() {
    let fake = fake().await;
    fake.add_sender(old_sender());
    let auth = [
        ("TWILIO_RECEIVER__SERVER__BASIC_AUTH__USER", "twilio"),
        ("TWILIO_RECEIVER__SERVER__BASIC_AUTH__PASSWORD", "s3cret/pw"),
    ];
    let run = connect_command(&fake, &["--sender", SENDER], &auth).await;
    let (out, err) = text(&run);
    assert_eq!(run.status.code(), Some(0), "{out}{err}");
    assert_eq!(
        fake.sender(SENDER).callback_url.as_deref(),
        Some("https://twilio:s3cret%2Fpw@hooks.example.test/twilio/messages")
    );
    assert!(
        out.contains("https://twilio:***@hooks.example.test/twilio/messages"),
        "{out}"
    );
    assert!(!format!("{out}{err}").contains("s3cret"));
    // Judged, the URL with credentials is this server's route.
    let checks = judge(
        &held(&client(&fake), &Resource::Sender(SENDER.into()))
            .await
            .unwrap(),
        Some(&routes()),
    );
    assert!(
        checks.iter().all(|c| c.verdict == Verdict::Pass),
        "{checks:?}"
    );
}

#[tokio::test]
async fn a_sender_pointing_elsewhere_is_flagged_even_on_a_later_page() {
    let fake = fake().await;
    // More senders than one page holds: the one asked for is on the second.
    for n in 100..210 {
        fake.add_sender(FakeSender::new(
            ACCOUNT,
            n,
            &format!("whatsapp:+1555{n:07}"),
        ));
    }
    let r = routes();
    fake.add_sender(FakeSender::new(ACCOUNT, 1, SENDER).pointing_at(
        &format!("{OLD}/sms"),
        &r.fallback,
        &r.status,
    ));
    let client = client(&fake);
    let resource = Resource::Sender(SENDER.into());

    let held = held(&client, &resource).await.unwrap();
    let checks = judge(&held, Some(&r));
    assert_eq!(
        verdicts(&checks),
        [
            (format!("sender {SENDER} incoming URL"), Verdict::Fail),
            (format!("sender {SENDER} fallback URL"), Verdict::Pass),
            (
                format!("sender {SENDER} status callback URL"),
                Verdict::Pass
            ),
        ]
    );
    assert_eq!(
        checks[0].detail,
        format!("webhook.callback_url is {OLD}/sms: not this server's {BASE}/twilio/messages")
    );
    assert_eq!(
        checks[0].fix.as_deref(),
        Some("twilio-receiver connect --sender whatsapp:+15550001111")
    );
    let lists: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|q| q.path == "/v2/Channels/Senders")
        .collect();
    assert_eq!(lists.len(), 2, "{lists:?}");
    assert_eq!(lists[0].param("Channel"), Some("whatsapp"));
    // The second page is the one the first named (its token, on the configured host).
    assert!(lists[1].param("PageToken").is_some(), "{lists:?}");
    // doctor probes the URLs ending in one of this server's routes.
    let probes: Vec<_> = held.iter().filter_map(|h| h.probe_url()).collect();
    assert_eq!(probes, [r.fallback.as_str(), r.status.as_str()]);
}

#[tokio::test]
async fn a_method_other_than_post_or_get_is_flagged() {
    let fake = fake().await;
    let r = routes();
    let mut sender =
        FakeSender::new(ACCOUNT, 1, SENDER).pointing_at(&r.incoming, &r.fallback, &r.status);
    sender.callback_method = Some("PUT".into());
    fake.add_sender(sender);

    let held = held(&client(&fake), &Resource::Sender(SENDER.into()))
        .await
        .unwrap();
    let checks = judge(&held, Some(&r));
    assert_eq!(checks[0].verdict, Verdict::Fail, "{checks:?}");
    assert!(
        checks[0]
            .detail
            .contains("its method is PUT, and this server answers POST and GET only"),
        "{checks:?}"
    );
    assert_eq!(
        (checks[1].verdict, checks[2].verdict),
        (Verdict::Pass, Verdict::Pass)
    );
}

#[tokio::test]
async fn a_phone_number_with_a_twiml_app_is_flagged() {
    let fake = fake().await;
    let r = routes();
    let mut number = FakeNumber::new(ACCOUNT, 1, NUMBER).sms_url(&r.incoming);
    number.sms_fallback_url = r.fallback.clone();
    number.sms_application_sid = fake_sid("AP", 3);
    fake.add_number(number);

    let held = held(&client(&fake), &Resource::PhoneNumber(NUMBER.into()))
        .await
        .unwrap();
    let checks = judge(&held, Some(&r));
    assert_eq!(
        verdicts(&checks),
        [
            (format!("phone number {NUMBER} incoming URL"), Verdict::Fail),
            (format!("phone number {NUMBER} fallback URL"), Verdict::Fail),
        ]
    );
    assert!(
        checks[0].detail.contains(&format!(
            "sms_application_sid {} is set: Twilio calls that TwiML App's SMS URLs instead",
            fake_sid("AP", 3)
        )),
        "{checks:?}"
    );
    assert!(held.iter().all(|h| h.probe_url().is_none()));
}

/// A service that defers to its numbers (`use_inbound_webhook_on_number = true`), whose own
/// inbound URL points elsewhere, with two numbers: the first at `first`, the second here.
async fn deferring_service(fake: &FakeTwilio, first: &str) -> String {
    let r = routes();
    let mut service = FakeService::new(ACCOUNT, 1);
    service.inbound_request_url = Some(format!("{OLD}/service"));
    service.fallback_url = Some(format!("{OLD}/service-fallback"));
    service.status_callback = Some(r.status.clone());
    service.use_inbound_webhook_on_number = true;
    for (n, url) in [(1, first), (2, r.incoming.as_str())] {
        let mut number = FakeNumber::new(ACCOUNT, n, &format!("+1555000000{n}")).sms_url(url);
        number.sms_fallback_url = r.fallback.clone();
        service.phone_numbers.push(number.sid.clone());
        fake.add_number(number);
    }
    fake.add_service(service);
    fake_sid("MG", 1)
}

#[tokio::test]
async fn a_service_deferring_to_numbers_that_point_elsewhere_is_flagged() {
    let fake = fake().await;
    let sid = deferring_service(&fake, &format!("{OLD}/sms")).await;

    let held = held(&client(&fake), &Resource::MessagingService(sid.clone()))
        .await
        .unwrap();
    let checks = judge(&held, Some(&routes()));
    let in_service = |n: u32, role: &str| {
        format!("phone number +1555000000{n} in Messaging Service {sid} {role}")
    };
    assert_eq!(
        verdicts(&checks),
        [
            (in_service(1, "incoming URL"), Verdict::Fail),
            (in_service(1, "fallback URL"), Verdict::Pass),
            (in_service(2, "incoming URL"), Verdict::Pass),
            (in_service(2, "fallback URL"), Verdict::Pass),
            (
                format!("Messaging Service {sid} status callback URL"),
                Verdict::Pass
            ),
        ]
    );
    assert!(
        checks[0].detail.starts_with(&format!(
            "sms_url is {OLD}/sms: not this server's {BASE}/twilio/messages (Messaging Service {sid} has use_inbound_webhook_on_number = true"
        )),
        "{checks:?}"
    );
    assert_eq!(
        checks[0].fix,
        Some(format!("twilio-receiver connect --messaging-service {sid}"))
    );
    // Each number was read from the 2010 API, the service and its list from the Messaging API.
    let paths: Vec<_> = fake.requests().into_iter().map(|q| q.path).collect();
    assert_eq!(
        paths
            .iter()
            .filter(|p| p.contains("/IncomingPhoneNumbers/"))
            .count(),
        2,
        "{paths:?}"
    );
    assert!(paths.contains(&format!("/v1/Services/{sid}/PhoneNumbers")));

    // connect makes the service's own URLs the ones Twilio calls; judged again, all pass.
    let client = client(&fake);
    let resource = Resource::MessagingService(sid.clone());
    let plan = connect::plan(&client, &resource, &routes()).await.unwrap();
    plan.apply(&client).await.unwrap();
    let checks = judge(&held_now(&client, &resource).await, Some(&routes()));
    assert_eq!(
        verdicts(&checks),
        [
            (
                format!("Messaging Service {sid} incoming URL"),
                Verdict::Pass
            ),
            (
                format!("Messaging Service {sid} fallback URL"),
                Verdict::Pass
            ),
            (
                format!("Messaging Service {sid} status callback URL"),
                Verdict::Pass
            ),
        ]
    );
}

async fn held_now(
    client: &RestClient,
    resource: &Resource,
) -> Vec<twilio_receiver::setup::twilio::Held> {
    held(client, resource).await.unwrap()
}

#[tokio::test]
async fn a_service_deferring_to_numbers_that_point_here_is_not_flagged() {
    let fake = fake().await;
    let sid = deferring_service(&fake, &routes().incoming).await;

    let held = held(&client(&fake), &Resource::MessagingService(sid))
        .await
        .unwrap();
    let checks = judge(&held, Some(&routes()));
    assert!(
        checks.iter().all(|c| c.verdict == Verdict::Pass),
        "{checks:#?}"
    );
    // The service's own inbound URL, which Twilio does not call, is not judged.
    assert!(held.iter().all(|h| h.field != "inbound_request_url"));
    assert_eq!(held.iter().filter(|h| h.role == Role::Incoming).count(), 2);
}

#[tokio::test]
async fn an_update_retried_after_a_server_error_leaves_what_one_would() {
    let fake = fake().await;
    fake.add_number(FakeNumber::new(ACCOUNT, 1, NUMBER).sms_url(OLD));
    let client = client(&fake);
    let resource = Resource::PhoneNumber(NUMBER.into());
    let plan = connect::plan(&client, &resource, &routes()).await.unwrap();

    fake.fail_next(1, Failure::ServerError);
    let applied = plan.apply(&client).await.unwrap();
    assert_eq!(
        applied[0].after.as_deref(),
        Some(routes().incoming.as_str())
    );
    let writes = fake.writes();
    assert_eq!(
        writes.iter().map(|w| w.status).collect::<Vec<_>>(),
        [500, 200]
    );
    assert_eq!(
        writes[0].body, writes[1].body,
        "the same update, sent again"
    );
    assert_eq!(fake.number(NUMBER).sms_url, routes().incoming);
}
