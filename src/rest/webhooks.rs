//! The resources that hold the URLs Twilio calls when a message arrives or changes status:
//! WhatsApp senders (Messaging v2, `/v2/Channels/Senders`), Messaging Services and their phone
//! numbers (Messaging v1, `/v1/Services`), and phone numbers (2010 API,
//! `IncomingPhoneNumbers`). Read and update only: nothing here creates or deletes, so every
//! POST is an update that may be retried (see [`RestClient::send`]).
//!
//! The Messaging API's paths name no account: its calls are made with the main account's
//! credentials, which choose the account. Its lists page with `meta.next_page_url`, an
//! absolute URL of which only the path and query are followed, on the configured host.
//! Twilio writes an unset URL as null in one API and as `""` in another; both are `None` here.

use super::{
    ACCOUNTS, Host, ListItem, Payload, RestClient, RestError, decode_error, json_error, path_sid,
};
use serde::{Deserialize, Deserializer, Serialize, de::DeserializeOwned};
use serde_json::{Value, value::RawValue};

/// Items asked for per page of a Messaging API list (its largest is 1000; a few pages of a
/// hundred are plenty for senders and a service's numbers).
const MESSAGING_PAGE_SIZE: u32 = 100;
/// A list longer than this many pages is taken as a server that never stops.
const MAX_PAGES: usize = 1000;

/// A Messaging Service (`/v1/Services/{Sid}`): the URLs it holds for every sender in it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct ServiceResource {
    pub sid: String,
    #[serde(default, deserialize_with = "blank_none")]
    pub account_sid: Option<String>,
    #[serde(default, deserialize_with = "blank_none")]
    pub friendly_name: Option<String>,
    /// Called when a message arrives (null: inbound messages are not received at all).
    #[serde(default, deserialize_with = "blank_none")]
    pub inbound_request_url: Option<String>,
    #[serde(default, deserialize_with = "blank_none")]
    pub inbound_method: Option<String>,
    #[serde(default, deserialize_with = "blank_none")]
    pub fallback_url: Option<String>,
    #[serde(default, deserialize_with = "blank_none")]
    pub fallback_method: Option<String>,
    #[serde(default, deserialize_with = "blank_none")]
    pub status_callback: Option<String>,
    /// When true, a message to one of the service's numbers goes to that number's own
    /// `sms_url` (and `sms_fallback_url`), not to the service's inbound and fallback URLs.
    #[serde(default)]
    pub use_inbound_webhook_on_number: Option<bool>,
}

/// What `POST /v1/Services/{Sid}` changes; a `None` field is not sent, and stays as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceUpdate {
    pub inbound_request_url: Option<String>,
    pub inbound_method: Option<String>,
    pub fallback_url: Option<String>,
    pub fallback_method: Option<String>,
    pub status_callback: Option<String>,
    pub use_inbound_webhook_on_number: Option<bool>,
}

/// A phone number in a Messaging Service (`/v1/Services/{Sid}/PhoneNumbers`); its URLs are
/// on the IncomingPhoneNumber of the same SID.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct ServicePhoneNumber {
    /// `PN…`, the IncomingPhoneNumber's SID.
    pub sid: String,
    #[serde(default, deserialize_with = "blank_none")]
    pub account_sid: Option<String>,
    #[serde(default, deserialize_with = "blank_none")]
    pub phone_number: Option<String>,
}

/// A channel sender (`/v2/Channels/Senders`), e.g. a WhatsApp number.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct SenderResource {
    /// `XE…`.
    pub sid: String,
    /// `whatsapp:+14155238886`.
    #[serde(default, deserialize_with = "blank_none")]
    pub sender_id: Option<String>,
    /// `ONLINE`, `OFFLINE`, `CREATING`, … (Twilio adds values).
    #[serde(default, deserialize_with = "blank_none")]
    pub status: Option<String>,
    /// Null in the API reads as every URL unset.
    #[serde(default, deserialize_with = "null_default")]
    pub webhook: SenderWebhook,
}

/// A sender's `webhook` object, as read and as sent in an update (a `None` field is not
/// sent).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SenderWebhook {
    #[serde(
        default,
        deserialize_with = "blank_none",
        skip_serializing_if = "Option::is_none"
    )]
    pub callback_url: Option<String>,
    #[serde(
        default,
        deserialize_with = "blank_none",
        skip_serializing_if = "Option::is_none"
    )]
    pub callback_method: Option<String>,
    #[serde(
        default,
        deserialize_with = "blank_none",
        skip_serializing_if = "Option::is_none"
    )]
    pub fallback_url: Option<String>,
    #[serde(
        default,
        deserialize_with = "blank_none",
        skip_serializing_if = "Option::is_none"
    )]
    pub fallback_method: Option<String>,
    #[serde(
        default,
        deserialize_with = "blank_none",
        skip_serializing_if = "Option::is_none"
    )]
    pub status_callback_url: Option<String>,
    #[serde(
        default,
        deserialize_with = "blank_none",
        skip_serializing_if = "Option::is_none"
    )]
    pub status_callback_method: Option<String>,
}

/// A phone number of an account (2010 API `IncomingPhoneNumbers`): the SMS URLs it holds.
/// Its `status_callback` is for voice calls and is not read.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct IncomingPhoneNumber {
    /// `PN…`.
    pub sid: String,
    #[serde(default, deserialize_with = "blank_none")]
    pub account_sid: Option<String>,
    /// E.164, `+14155238886`.
    #[serde(default, deserialize_with = "blank_none")]
    pub phone_number: Option<String>,
    #[serde(default, deserialize_with = "blank_none")]
    pub sms_url: Option<String>,
    #[serde(default, deserialize_with = "blank_none")]
    pub sms_method: Option<String>,
    #[serde(default, deserialize_with = "blank_none")]
    pub sms_fallback_url: Option<String>,
    #[serde(default, deserialize_with = "blank_none")]
    pub sms_fallback_method: Option<String>,
    /// A TwiML App (`AP…`) whose SMS URLs Twilio uses instead of `sms_url` and
    /// `sms_fallback_url`.
    #[serde(default, deserialize_with = "blank_none")]
    pub sms_application_sid: Option<String>,
}

/// What `POST …/IncomingPhoneNumbers/{Sid}.json` changes; a `None` field is not sent.
/// `sms_application_sid: Some("")` removes the number's TwiML App.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NumberUpdate {
    pub sms_url: Option<String>,
    pub sms_method: Option<String>,
    pub sms_fallback_url: Option<String>,
    pub sms_fallback_method: Option<String>,
    pub sms_application_sid: Option<String>,
}

impl ListItem for IncomingPhoneNumber {
    const KEY: &'static str = "incoming_phone_numbers";

    fn decode(raw: Box<RawValue>) -> Result<Self, serde_json::Error> {
        serde_json::from_str(raw.get())
    }
}

impl RestClient {
    /// One Messaging Service.
    pub async fn fetch_service(&self, service_sid: &str) -> Result<ServiceResource, RestError> {
        let path = format!("/v1/Services/{}", path_sid(service_sid, "service SID")?);
        let body = self.messaging(&path, None).await?;
        decode(&path, &body)
    }

    /// Sets a Messaging Service's fields: the service as it is afterwards.
    pub async fn update_service(
        &self,
        service_sid: &str,
        update: &ServiceUpdate,
    ) -> Result<ServiceResource, RestError> {
        let path = format!("/v1/Services/{}", path_sid(service_sid, "service SID")?);
        let flag = update
            .use_inbound_webhook_on_number
            .map(|on| if on { "true" } else { "false" });
        let fields = [
            ("InboundRequestUrl", update.inbound_request_url.as_deref()),
            ("InboundMethod", update.inbound_method.as_deref()),
            ("FallbackUrl", update.fallback_url.as_deref()),
            ("FallbackMethod", update.fallback_method.as_deref()),
            ("StatusCallback", update.status_callback.as_deref()),
            ("UseInboundWebhookOnNumber", flag),
        ];
        let payload = Payload::form(fields.into_iter().filter_map(|(k, v)| Some((k, v?))));
        let body = self.messaging(&path, Some(&payload)).await?;
        decode(&path, &body)
    }

    /// Every phone number in a Messaging Service, every page.
    pub async fn list_service_phone_numbers(
        &self,
        service_sid: &str,
    ) -> Result<Vec<ServicePhoneNumber>, RestError> {
        let first = format!(
            "/v1/Services/{}/PhoneNumbers?PageSize={MESSAGING_PAGE_SIZE}",
            path_sid(service_sid, "service SID")?
        );
        self.meta_list("phone_numbers", first, |_: &ServicePhoneNumber| false)
            .await
    }

    /// The sender whose `sender_id` is `sender_id` (`whatsapp:+14155238886`; the channel is
    /// the part before the colon), reading pages until it is found.
    pub async fn find_sender(&self, sender_id: &str) -> Result<Option<SenderResource>, RestError> {
        let (channel, _) = sender_id.split_once(':').ok_or_else(|| {
            decode_error("/v2/Channels/Senders", "a sender id is channel:address")
        })?;
        // The channel goes into a query string: letters only.
        if channel.is_empty() || !channel.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(decode_error(
                "/v2/Channels/Senders",
                "a sender's channel is letters only",
            ));
        }
        let channel = channel.to_ascii_lowercase();
        let first =
            format!("/v2/Channels/Senders?Channel={channel}&PageSize={MESSAGING_PAGE_SIZE}");
        let is_it = |s: &SenderResource| {
            s.sender_id
                .as_deref()
                .is_some_and(|id| id.eq_ignore_ascii_case(sender_id))
        };
        let senders = self.meta_list("senders", first, is_it).await?;
        Ok(senders.into_iter().find(is_it))
    }

    /// Sets a sender's webhook fields (the ones given): the sender as Twilio answered
    /// (`202 Accepted`).
    pub async fn update_sender_webhook(
        &self,
        sender_sid: &str,
        webhook: &SenderWebhook,
    ) -> Result<SenderResource, RestError> {
        let path = format!(
            "/v2/Channels/Senders/{}",
            path_sid(sender_sid, "sender SID")?
        );
        let payload = Payload::json(&serde_json::json!({ "webhook": webhook }));
        let body = self.messaging(&path, Some(&payload)).await?;
        decode(&path, &body)
    }

    /// The account's phone number `phone_number` (E.164), if it has it. Twilio's filter
    /// also matches partial numbers, so only an exact match counts.
    pub async fn find_incoming_phone_number(
        &self,
        account_sid: &str,
        phone_number: &str,
    ) -> Result<Option<IncomingPhoneNumber>, RestError> {
        let account = self.account(account_sid)?.sid.clone();
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        query.append_pair("PhoneNumber", phone_number);
        let first = format!(
            "{ACCOUNTS}/{account}/IncomingPhoneNumbers.json?{}",
            query.finish()
        );
        let mut pages = self.pages::<IncomingPhoneNumber>(&account, Ok(first));
        while let Some(page) = pages.next_page().await {
            if let Some(found) = page?
                .items
                .into_iter()
                .find(|n| n.phone_number.as_deref() == Some(phone_number))
            {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    /// One phone number of an account, by its SID (`PN…`).
    pub async fn fetch_incoming_phone_number(
        &self,
        account_sid: &str,
        number_sid: &str,
    ) -> Result<IncomingPhoneNumber, RestError> {
        let path = self.number_path(account_sid, number_sid)?;
        let body = self.get(account_sid, &path).await?;
        decode(&path, &body)
    }

    /// Sets a phone number's SMS fields: the number as it is afterwards.
    pub async fn update_incoming_phone_number(
        &self,
        account_sid: &str,
        number_sid: &str,
        update: &NumberUpdate,
    ) -> Result<IncomingPhoneNumber, RestError> {
        let path = self.number_path(account_sid, number_sid)?;
        let fields = [
            ("SmsUrl", update.sms_url.as_deref()),
            ("SmsMethod", update.sms_method.as_deref()),
            ("SmsFallbackUrl", update.sms_fallback_url.as_deref()),
            ("SmsFallbackMethod", update.sms_fallback_method.as_deref()),
            ("SmsApplicationSid", update.sms_application_sid.as_deref()),
        ];
        let payload = Payload::form(fields.into_iter().filter_map(|(k, v)| Some((k, v?))));
        let body = self
            .send(account_sid, Host::Api, &path, Some(&payload))
            .await?;
        decode(&path, &body)
    }

    fn number_path(&self, account_sid: &str, number_sid: &str) -> Result<String, RestError> {
        let account = &self.account(account_sid)?.sid;
        let sid = path_sid(number_sid, "phone number SID")?;
        Ok(format!(
            "{ACCOUNTS}/{account}/IncomingPhoneNumbers/{sid}.json"
        ))
    }

    /// A GET (or a POST of `payload`) on the Messaging API, as the main account.
    async fn messaging(&self, path: &str, payload: Option<&Payload>) -> Result<Vec<u8>, RestError> {
        let main = self.main_account()?.to_owned();
        self.send(&main, Host::Messaging, path, payload).await
    }

    /// The items under `key` of a Messaging API list, page by page from `first`, until the
    /// last page or until a page holds an item `found` accepts.
    async fn meta_list<T: DeserializeOwned>(
        &self,
        key: &str,
        first: String,
        found: impl Fn(&T) -> bool,
    ) -> Result<Vec<T>, RestError> {
        #[derive(Deserialize)]
        struct Meta {
            next_page_url: Option<String>,
        }
        let mut items = Vec::new();
        let mut path = first;
        for _ in 0..MAX_PAGES {
            let body = self.messaging(&path, None).await?;
            let mut page: serde_json::Map<String, Value> =
                serde_json::from_slice(&body).map_err(|e| json_error(&path, &e))?;
            let list = page
                .remove(key)
                .ok_or_else(|| decode_error(&path, &format!("no `{key}` in the page")))?;
            let list: Vec<T> = serde_json::from_value(list).map_err(|e| json_error(&path, &e))?;
            let done = list.iter().any(&found);
            items.extend(list);
            let meta: Option<Meta> = page
                .remove("meta")
                .map(serde_json::from_value)
                .transpose()
                .map_err(|e| json_error(&path, &e))?;
            let next = match meta.and_then(|m| m.next_page_url) {
                Some(next) if !done => next,
                _ => return Ok(items),
            };
            let next = self.own_path(url_path(&next), &path)?.to_owned();
            // A server that points at the page it just served would be followed forever.
            if next == path {
                return Err(decode_error(
                    &path,
                    "next_page_url names the same page again",
                ));
            }
            path = next;
        }
        Err(decode_error(&path, &format!("more than {MAX_PAGES} pages")))
    }
}

/// The path and query of an absolute URL (`https://host/v1/…?…` → `/v1/…?…`), or the text
/// as it is when it has no scheme; the host is never followed (credentials stay on the
/// configured one).
fn url_path(url: &str) -> &str {
    match url.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("", |i| &rest[i..]),
        None => url,
    }
}

fn decode<T: DeserializeOwned>(path: &str, body: &[u8]) -> Result<T, RestError> {
    serde_json::from_slice(body).map_err(|e| json_error(path, &e))
}

/// A string that is null, absent or blank is `None`.
fn blank_none<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<String>::deserialize(d)?.filter(|s| !s.trim().is_empty()))
}

/// Null reads as the default.
fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_webhook_resources_read_blank_and_null_as_unset() {
        // The shape of twilio-oai's IncomingPhoneNumber fetch example: unset URLs are "".
        let number: IncomingPhoneNumber = serde_json::from_str(
            r#"{"account_sid":"ACaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","phone_number":"+18089255327","sid":"PNaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","sms_application_sid":"","sms_fallback_method":"POST","sms_fallback_url":"","sms_method":"POST","sms_url":"","status_callback":"","trunk_sid":null,"voice_url":null}"#,
        )
        .unwrap();
        assert_eq!(
            (
                number.sms_url,
                number.sms_fallback_url,
                number.sms_application_sid
            ),
            (None, None, None)
        );
        assert_eq!(number.sms_method.as_deref(), Some("POST"));

        let sender: SenderResource = serde_json::from_str(
            r#"{"sid":"XEaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","status":"ONLINE","sender_id":"whatsapp:+15017122661","webhook":null}"#,
        )
        .unwrap();
        assert_eq!(sender.webhook, SenderWebhook::default());
        let sender: SenderResource = serde_json::from_str(
            r#"{"sid":"XEaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","webhook":{"callback_url":"https://callback.example.com","callback_method":"POST","fallback_url":null,"status_callback_url":""}}"#,
        )
        .unwrap();
        assert_eq!(
            sender.webhook,
            SenderWebhook {
                callback_url: Some("https://callback.example.com".into()),
                callback_method: Some("POST".into()),
                ..SenderWebhook::default()
            }
        );

        let service: ServiceResource = serde_json::from_str(
            r#"{"sid":"MGaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","inbound_request_url":"https://www.example.com/","inbound_method":"POST","fallback_url":null,"fallback_method":"POST","status_callback":"https://www.example.com","use_inbound_webhook_on_number":true}"#,
        )
        .unwrap();
        assert_eq!(service.fallback_url, None);
        assert_eq!(service.use_inbound_webhook_on_number, Some(true));
    }

    #[test]
    fn rest_sender_update_sends_only_the_fields_given() {
        let webhook = SenderWebhook {
            callback_url: Some("https://x.test/twilio/messages".into()),
            callback_method: Some("POST".into()),
            ..SenderWebhook::default()
        };
        assert_eq!(
            serde_json::json!({ "webhook": webhook }).to_string(),
            r#"{"webhook":{"callback_method":"POST","callback_url":"https://x.test/twilio/messages"}}"#
        );
    }

    #[test]
    fn rest_next_page_urls_keep_only_their_path_and_query() {
        assert_eq!(
            url_path("https://messaging.twilio.com/v2/Channels/Senders?PageSize=10&Page=1"),
            "/v2/Channels/Senders?PageSize=10&Page=1"
        );
        assert_eq!(url_path("http://127.0.0.1:9/v1/Services"), "/v1/Services");
        assert_eq!(url_path("https://evil.example"), "");
        assert_eq!(url_path("/v1/x"), "/v1/x");
    }
}
