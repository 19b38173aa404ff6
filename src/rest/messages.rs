//! The Messages resources of the 2010 API: an account's messages page by page, one message,
//! a message's media. Dates are RFC 2822 strings, `num_segments`, `num_media` and `price` are
//! strings, `error_code` is an integer or null.

use super::{
    ACCOUNTS, MAX_PAGE_SIZE, RestClient, RestError, decode_error, integer, json_error, path_sid,
};
use chrono::{DateTime, TimeDelta, Utc};
use futures_util::Stream;
use serde::Deserialize;
use serde_json::{Value, value::RawValue};
use std::{collections::HashMap, fmt, marker::PhantomData};

/// Which messages to list: Twilio's `DateSent>`, `DateSent<`, `To`, `From` and `PageSize`.
#[derive(Clone, Default)]
pub struct ListFilter {
    /// Messages sent at or after this time (whole seconds, rounded down).
    pub date_sent_after: Option<DateTime<Utc>>,
    /// Messages sent at or before this time (whole seconds, rounded up).
    pub date_sent_before: Option<DateTime<Utc>>,
    pub to: Option<String>,
    pub from: Option<String>,
    /// Messages per page, 1 to 1000; unset, Twilio's default (50).
    pub page_size: Option<u32>,
}

impl fmt::Debug for ListFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |v: &Option<String>| v.as_ref().map(|_| "[redacted]");
        f.debug_struct("ListFilter")
            .field("date_sent_after", &self.date_sent_after)
            .field("date_sent_before", &self.date_sent_before)
            .field("to", &redacted(&self.to))
            .field("from", &redacted(&self.from))
            .field("page_size", &self.page_size)
            .finish()
    }
}

impl ListFilter {
    /// The query string (form-encoded, as Twilio writes its own: `DateSent%3E=…`).
    fn query(&self) -> String {
        const SECONDS: &str = "%Y-%m-%dT%H:%M:%SZ";
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        if let Some(to) = &self.to {
            q.append_pair("To", to);
        }
        if let Some(from) = &self.from {
            q.append_pair("From", from);
        }
        // Twilio compares whole seconds: round outwards, so the window is never narrower
        // than asked for.
        if let Some(after) = self.date_sent_after {
            q.append_pair("DateSent>", &after.format(SECONDS).to_string());
        }
        if let Some(before) = self.date_sent_before {
            let up = if before.timestamp_subsec_nanos() > 0 {
                before + TimeDelta::seconds(1)
            } else {
                before
            };
            q.append_pair("DateSent<", &up.format(SECONDS).to_string());
        }
        if let Some(size) = self.page_size {
            q.append_pair("PageSize", &size.clamp(1, MAX_PAGE_SIZE).to_string());
        }
        q.finish()
    }
}

/// A Message resource as the API gave it.
#[derive(Clone)]
pub struct MessageResource {
    pub sid: String,
    pub account_sid: String,
    pub messaging_service_sid: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub body: Option<String>,
    /// `inbound`, `outbound-api`, `outbound-call`, `outbound-reply`, or whatever Twilio adds.
    pub direction: String,
    pub status: String,
    pub error_code: Option<i32>,
    pub error_message: Option<String>,
    /// From Twilio's string; `None` when absent or not a number.
    pub num_segments: Option<i32>,
    pub num_media: Option<i32>,
    /// The decimal exactly as Twilio wrote it (negative: a charge); `None` while pending.
    pub price: Option<String>,
    pub price_unit: Option<String>,
    pub date_created: Option<DateTime<Utc>>,
    pub date_sent: Option<DateTime<Utc>>,
    pub date_updated: Option<DateTime<Utc>>,
    /// The resource's JSON exactly as received.
    pub raw: Box<RawValue>,
}

impl fmt::Debug for MessageResource {
    /// Without the addresses, the body or the raw JSON: they are personal data.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageResource")
            .field("sid", &self.sid)
            .field("account_sid", &self.account_sid)
            .field("direction", &self.direction)
            .field("status", &self.status)
            .field("error_code", &self.error_code)
            .field("num_segments", &self.num_segments)
            .field("num_media", &self.num_media)
            .field("date_sent", &self.date_sent)
            .finish_non_exhaustive()
    }
}

/// A media item of a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MediaResource {
    pub sid: String,
    /// The message it belongs to.
    pub parent_sid: String,
    pub content_type: Option<String>,
    /// The resource's path on the API (`…/Media/ME….json`); see [`RestClient::media_url`].
    pub uri: Option<String>,
    pub date_created: Option<DateTime<Utc>>,
}

/// A resource that comes in pages: the key its items sit under in the page, and how one is
/// read.
pub trait ListItem: Sized {
    /// `messages`, `media_list`.
    const KEY: &'static str;
    fn decode(raw: Box<RawValue>) -> Result<Self, serde_json::Error>;
}

impl ListItem for MessageResource {
    const KEY: &'static str = "messages";

    fn decode(raw: Box<RawValue>) -> Result<Self, serde_json::Error> {
        #[derive(Deserialize)]
        struct Wire {
            sid: String,
            account_sid: String,
            messaging_service_sid: Option<String>,
            from: Option<String>,
            to: Option<String>,
            body: Option<String>,
            direction: String,
            status: String,
            error_code: Option<Value>,
            error_message: Option<String>,
            num_segments: Option<Value>,
            num_media: Option<Value>,
            price: Option<Value>,
            price_unit: Option<String>,
            date_created: Option<String>,
            date_sent: Option<String>,
            date_updated: Option<String>,
        }
        let w: Wire = serde_json::from_str(raw.get())?;
        let small = |v: Option<Value>| v.as_ref().and_then(integer).and_then(|n| n.try_into().ok());
        Ok(MessageResource {
            sid: w.sid,
            account_sid: w.account_sid,
            messaging_service_sid: w.messaging_service_sid,
            from: w.from,
            to: w.to,
            body: w.body,
            direction: w.direction,
            status: w.status,
            error_code: small(w.error_code),
            error_message: w.error_message,
            num_segments: small(w.num_segments),
            num_media: small(w.num_media),
            price: w.price.and_then(decimal),
            price_unit: w.price_unit,
            date_created: w.date_created.as_deref().and_then(rfc2822),
            date_sent: w.date_sent.as_deref().and_then(rfc2822),
            date_updated: w.date_updated.as_deref().and_then(rfc2822),
            raw,
        })
    }
}

impl ListItem for MediaResource {
    const KEY: &'static str = "media_list";

    fn decode(raw: Box<RawValue>) -> Result<Self, serde_json::Error> {
        #[derive(Deserialize)]
        struct Wire {
            sid: String,
            parent_sid: String,
            content_type: Option<String>,
            uri: Option<String>,
            date_created: Option<String>,
        }
        let w: Wire = serde_json::from_str(raw.get())?;
        Ok(MediaResource {
            sid: w.sid,
            parent_sid: w.parent_sid,
            content_type: w.content_type,
            uri: w.uri,
            date_created: w.date_created.as_deref().and_then(rfc2822),
        })
    }
}

/// A decimal kept as written: a string as it is, a number as its JSON text.
fn decimal(v: Value) -> Option<String> {
    match v {
        Value::String(s) if !s.trim().is_empty() => Some(s),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// `Thu, 24 Aug 2023 05:01:45 +0000`; anything else is `None` (the raw JSON keeps it), as
/// the receiver leaves unparsable webhook values NULL rather than refusing the message.
fn rfc2822(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc2822(s.trim())
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// One page of a list.
pub struct Page<T> {
    pub items: Vec<T>,
    /// Twilio's page index, from 0.
    pub page: u32,
    pub page_size: u32,
    /// Kept out of `Debug`: its query string holds the filter's phone numbers.
    next_page_uri: Option<String>,
}

impl<T> Page<T> {
    /// Whether this is the last page (`next_page_uri` was null).
    pub fn is_last(&self) -> bool {
        self.next_page_uri.is_none()
    }
}

impl<T: fmt::Debug> fmt::Debug for Page<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Page")
            .field("items", &self.items)
            .field("page", &self.page)
            .field("page_size", &self.page_size)
            .field("is_last", &self.is_last())
            .finish()
    }
}

/// The pages of a list, fetched one at a time as they are asked for, following
/// `next_page_uri` to the end. After an error there are no more pages.
pub struct Pages<T> {
    client: RestClient,
    account: String,
    /// The path and query of the next page, or why there is none.
    next: Option<Result<String, RestError>>,
    _item: PhantomData<fn() -> T>,
}

impl<T: ListItem> Pages<T> {
    /// The next page; `None` after the last one (or after an error).
    pub async fn next_page(&mut self) -> Option<Result<Page<T>, RestError>> {
        let path = match self.next.take()? {
            Ok(path) => path,
            Err(e) => return Some(Err(e)),
        };
        let page = self.client.page::<T>(&self.account, &path).await;
        if let Ok(page) = &page {
            self.next = page.next_page_uri.as_deref().map(|next| {
                // A server that points at the page it just served would be followed forever.
                if next == path {
                    Err(decode_error(
                        &path,
                        "next_page_uri names the same page again",
                    ))
                } else {
                    self.client.own_path(next, &path).map(str::to_owned)
                }
            });
        }
        Some(page)
    }

    /// The pages as a stream.
    pub fn into_stream(self) -> impl Stream<Item = Result<Page<T>, RestError>> {
        futures_util::stream::unfold(self, |mut pages| async move {
            pages.next_page().await.map(|page| (page, pages))
        })
    }
}

impl RestClient {
    /// An account's messages matching `filter`, newest first, as Twilio lists them. Nothing
    /// is requested until the first page is asked for.
    pub fn list_messages(&self, account_sid: &str, filter: &ListFilter) -> Pages<MessageResource> {
        let first = self.account(account_sid).map(|account| {
            let query = filter.query();
            let path = format!("{ACCOUNTS}/{}/Messages.json", account.sid);
            if query.is_empty() {
                path
            } else {
                format!("{path}?{query}")
            }
        });
        self.pages(account_sid, first)
    }

    /// One message.
    pub async fn fetch_message(
        &self,
        account_sid: &str,
        message_sid: &str,
    ) -> Result<MessageResource, RestError> {
        let sid = path_sid(message_sid, "message SID")?;
        let path = format!(
            "{ACCOUNTS}/{}/Messages/{sid}.json",
            self.account(account_sid)?.sid
        );
        let body = self.get(account_sid, &path).await?;
        serde_json::from_slice::<Box<RawValue>>(&body)
            .and_then(MessageResource::decode)
            .map_err(|e| json_error(&path, &e))
    }

    /// A message's media items, every page.
    pub async fn list_media(
        &self,
        account_sid: &str,
        message_sid: &str,
    ) -> Result<Vec<MediaResource>, RestError> {
        let sid = path_sid(message_sid, "message SID")?;
        let first = format!(
            "{ACCOUNTS}/{}/Messages/{sid}/Media.json",
            self.account(account_sid)?.sid
        );
        let mut pages = self.pages::<MediaResource>(account_sid, Ok(first));
        let mut media = Vec::new();
        while let Some(page) = pages.next_page().await {
            media.extend(page?.items);
        }
        Ok(media)
    }

    /// Where a media item's content is: its resource URI without `.json`, on the configured
    /// API host. Twilio answers there, given the account's credentials, with the file or a
    /// redirect to its CDN (the credentials must not follow the redirect).
    pub fn media_url(&self, media: &MediaResource) -> Option<String> {
        let uri = media.uri.as_deref()?;
        let path = self
            .own_path(uri.strip_suffix(".json").unwrap_or(uri), "")
            .ok()?;
        Some(format!("{}{path}", self.inner.base))
    }

    pub(super) fn pages<T: ListItem>(
        &self,
        account_sid: &str,
        first: Result<String, RestError>,
    ) -> Pages<T> {
        Pages {
            client: self.clone(),
            account: account_sid.to_owned(),
            next: Some(first),
            _item: PhantomData,
        }
    }

    /// One page at `path` (with its query).
    async fn page<T: ListItem>(&self, account_sid: &str, path: &str) -> Result<Page<T>, RestError> {
        let body = self.get(account_sid, path).await?;
        // A map of raw values keeps every item's JSON exactly as it came.
        let mut fields: HashMap<String, Box<RawValue>> =
            serde_json::from_slice(&body).map_err(|e| json_error(path, &e))?;
        let items: Vec<Box<RawValue>> = match fields.remove(T::KEY) {
            Some(raw) => serde_json::from_str(raw.get()).map_err(|e| json_error(path, &e))?,
            None => return Err(decode_error(path, &format!("no `{}` in the page", T::KEY))),
        };
        let field = |name: &str| fields.get(name).map(|raw| raw.get());
        let number = |name: &str| field(name).and_then(|v| v.parse::<u32>().ok()).unwrap_or(0);
        let next_page_uri = match field("next_page_uri") {
            None | Some("null") => None,
            Some(raw) => {
                Some(serde_json::from_str::<String>(raw).map_err(|e| json_error(path, &e))?)
            }
        };
        Ok(Page {
            items: items
                .into_iter()
                .map(T::decode)
                .collect::<Result<_, _>>()
                .map_err(|e| json_error(path, &e))?,
            page: number("page"),
            page_size: number("page_size"),
            next_page_uri,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        metrics::Metrics,
        rest::{Credential, RestSettings},
    };
    use chrono::TimeZone;
    use secrecy::SecretString;
    use std::sync::Arc;

    const SID: &str = "AC0123456789abcdef0123456789abcdef";

    /// A message as the API writes one (the shape of twilio-oai's fetch example).
    const MESSAGE: &str = r#"{"account_sid":"AC0123456789abcdef0123456789abcdef","api_version":"2010-04-01","body":"Hola, ¿qué tal?","date_created":"Thu, 24 Aug 2023 05:01:44 +0000","date_sent":"Thu, 24 Aug 2023 05:01:45 +0000","date_updated":"Thu, 24 Aug 2023 05:01:47 +0000","direction":"outbound-reply","error_code":30008,"error_message":"Unknown error","from":"whatsapp:+14155238886","messaging_service_sid":"MG0123456789abcdef0123456789abcdef","num_media":"1","num_segments":"2","price":"-0.00750","price_unit":"USD","sid":"MM0123456789abcdef0123456789abcdef","status":"undelivered","subresource_uris":{"media":"/2010-04-01/Accounts/AC0123456789abcdef0123456789abcdef/Messages/MM0123456789abcdef0123456789abcdef/Media.json"},"to":"whatsapp:+15551234567","uri":"/2010-04-01/Accounts/AC0123456789abcdef0123456789abcdef/Messages/MM0123456789abcdef0123456789abcdef.json"}"#;

    fn raw(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.to_owned()).unwrap()
    }

    #[test]
    fn rest_message_fields_are_typed_and_the_json_kept_exactly() {
        let m = MessageResource::decode(raw(MESSAGE)).unwrap();
        let at = |s| Some(Utc.with_ymd_and_hms(2023, 8, 24, 5, 1, s).unwrap());
        assert_eq!(m.sid, "MM0123456789abcdef0123456789abcdef");
        assert_eq!(m.account_sid, SID);
        assert_eq!(
            m.messaging_service_sid.as_deref(),
            Some("MG0123456789abcdef0123456789abcdef")
        );
        assert_eq!(m.from.as_deref(), Some("whatsapp:+14155238886"));
        assert_eq!(m.to.as_deref(), Some("whatsapp:+15551234567"));
        assert_eq!(m.body.as_deref(), Some("Hola, ¿qué tal?"));
        assert_eq!(m.direction, "outbound-reply");
        assert_eq!(m.status, "undelivered");
        assert_eq!(m.error_code, Some(30008));
        assert_eq!(m.error_message.as_deref(), Some("Unknown error"));
        assert_eq!((m.num_segments, m.num_media), (Some(2), Some(1)));
        assert_eq!(m.price.as_deref(), Some("-0.00750"));
        assert_eq!(m.price_unit.as_deref(), Some("USD"));
        assert_eq!(
            (m.date_created, m.date_sent, m.date_updated),
            (at(44), at(45), at(47))
        );
        assert_eq!(m.raw.get(), MESSAGE);
    }

    #[test]
    fn rest_message_nulls_and_odd_values_stay_none() {
        let json = r#"{"sid":"SM1","account_sid":"AC1","direction":"inbound","status":"received","from":null,"to":"+15551234567","body":null,"messaging_service_sid":null,"error_code":null,"error_message":null,"num_segments":"many","num_media":"0","price":null,"price_unit":null,"date_created":"yesterday","date_sent":null,"date_updated":"Fri, 24 May 2019 17:44:50 -0000","extra":[1,2]}"#;
        let m = MessageResource::decode(raw(json)).unwrap();
        assert_eq!(
            (m.from, m.body, m.messaging_service_sid),
            (None, None, None)
        );
        assert_eq!(
            (m.error_code, m.num_segments, m.num_media),
            (None, None, Some(0))
        );
        assert_eq!((m.price, m.price_unit), (None, None));
        assert_eq!((m.date_created, m.date_sent), (None, None));
        assert_eq!(
            m.date_updated,
            Some(Utc.with_ymd_and_hms(2019, 5, 24, 17, 44, 50).unwrap())
        );
        // A number where Twilio writes a string is read all the same.
        let m = MessageResource::decode(raw(
            r#"{"sid":"SM1","account_sid":"AC1","direction":"inbound","status":"received","num_segments":3,"price":-0.5,"error_code":"63016"}"#,
        ))
        .unwrap();
        assert_eq!(
            (m.num_segments, m.price.as_deref(), m.error_code),
            (Some(3), Some("-0.5"), Some(63016))
        );
        // Without a SID there is nothing to store.
        assert!(MessageResource::decode(raw(r#"{"account_sid":"AC1"}"#)).is_err());
    }

    #[test]
    fn rest_media_fields_are_typed() {
        let m = MediaResource::decode(raw(
            r#"{"account_sid":"AC1","content_type":"image/jpeg","date_created":"Sun, 16 Aug 2015 15:53:54 +0000","date_updated":"Sun, 16 Aug 2015 15:53:55 +0000","parent_sid":"MM1","sid":"ME1","uri":"/2010-04-01/Accounts/AC1/Messages/MM1/Media/ME1.json"}"#,
        ))
        .unwrap();
        assert_eq!(
            m,
            MediaResource {
                sid: "ME1".into(),
                parent_sid: "MM1".into(),
                content_type: Some("image/jpeg".into()),
                uri: Some("/2010-04-01/Accounts/AC1/Messages/MM1/Media/ME1.json".into()),
                date_created: Some(Utc.with_ymd_and_hms(2015, 8, 16, 15, 53, 54).unwrap()),
            }
        );
    }

    #[test]
    fn rest_list_filter_is_twilios_query_rounded_outwards() {
        let filter = ListFilter {
            date_sent_after: Some(
                Utc.with_ymd_and_hms(2026, 3, 1, 9, 0, 0).unwrap() + TimeDelta::milliseconds(900),
            ),
            date_sent_before: Some(
                Utc.with_ymd_and_hms(2026, 3, 1, 10, 0, 0).unwrap() + TimeDelta::milliseconds(1),
            ),
            to: Some("whatsapp:+14155238886".into()),
            from: Some("+1 555".into()),
            page_size: Some(5000),
        };
        assert_eq!(
            filter.query(),
            "To=whatsapp%3A%2B14155238886&From=%2B1+555\
             &DateSent%3E=2026-03-01T09%3A00%3A00Z&DateSent%3C=2026-03-01T10%3A00%3A01Z&PageSize=1000"
        );
        let exact = ListFilter {
            date_sent_before: Some(Utc.with_ymd_and_hms(2026, 3, 1, 10, 0, 0).unwrap()),
            page_size: Some(0),
            ..ListFilter::default()
        };
        assert_eq!(
            exact.query(),
            "DateSent%3C=2026-03-01T10%3A00%3A00Z&PageSize=1"
        );
        assert_eq!(ListFilter::default().query(), "");
        let shown = format!("{filter:?}");
        assert!(
            !shown.contains("4155238886") && !shown.contains("555"),
            "{shown}"
        );
    }

    #[test]
    fn rest_uris_from_an_answer_must_stay_on_the_api_host() {
        let client = RestClient::new(RestSettings::default(), Arc::new(Metrics::new())).unwrap();
        for ok in [
            "/2010-04-01/Accounts/AC1/Messages.json?Page=1&PageToken=PA1",
            "/x",
        ] {
            assert!(client.own_path(ok, "/p").is_ok(), "{ok}");
        }
        for bad in [
            "https://evil.example/2010-04-01",
            "//evil.example/x",
            "/\\evil.example",
            "2010-04-01/Accounts",
            "/x\n",
            "/x#y",
        ] {
            assert!(client.own_path(bad, "/p").is_err(), "{bad:?}");
        }
        let media = |uri: Option<&str>| MediaResource {
            sid: "ME1".into(),
            parent_sid: "MM1".into(),
            content_type: None,
            uri: uri.map(str::to_owned),
            date_created: None,
        };
        assert_eq!(
            client.media_url(&media(Some(
                "/2010-04-01/Accounts/AC1/Messages/MM1/Media/ME1.json"
            ))),
            Some("https://api.twilio.com/2010-04-01/Accounts/AC1/Messages/MM1/Media/ME1".into())
        );
        assert_eq!(
            client.media_url(&media(Some("https://evil.example/ME1.json"))),
            None
        );
        assert_eq!(client.media_url(&media(None)), None);
    }

    #[test]
    fn rest_message_debug_leaves_out_the_person() {
        let m = MessageResource::decode(raw(MESSAGE)).unwrap();
        let shown = format!("{m:?}");
        assert!(
            shown.contains("MM0123456789abcdef0123456789abcdef"),
            "{shown}"
        );
        for personal in ["5551234567", "4155238886", "Hola"] {
            assert!(!shown.contains(personal), "{shown}");
        }
        let credential = Credential {
            user: SID.into(),
            secret: SecretString::from("tok3n"),
        };
        assert!(!format!("{credential:?}").contains("tok3n"));
    }
}
