//! A Message resource as ingest takes it: the parameters a webhook for it would carry (so the
//! webhooks' own parsers read it) and what only the resource says.

use crate::{
    ingest::Found,
    rest::MessageResource,
    store::write::{Origin, Resource},
    twilio::Params,
};
use chrono::{DateTime, Utc};

/// One media item of a message: where its content is, and its type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundMedia {
    pub url: String,
    pub content_type: Option<String>,
}

/// Why a resource cannot be stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("message {sid} has no {missing} address")]
pub struct Unusable {
    pub sid: String,
    pub missing: &'static str,
}

/// Whether Twilio sent the message for the business (`outbound-api`, `outbound-reply`,
/// `outbound-call`) rather than received it.
pub fn is_outbound(m: &MessageResource) -> bool {
    m.direction.starts_with("outbound")
}

/// The contact of a message: who sent it (inbound) or who it was sent to (outbound).
pub fn contact(m: &MessageResource) -> Option<&str> {
    if is_outbound(m) {
        m.to.as_deref()
    } else {
        m.from.as_deref()
    }
}

/// The message as ingest stores it. `now` stands in for a missing `date_updated`.
pub fn found(
    m: &MessageResource,
    media: &[FoundMedia],
    origin: Origin,
    now: DateTime<Utc>,
) -> Result<Found, Unusable> {
    let unusable = |missing| Unusable {
        sid: m.sid.clone(),
        missing,
    };
    let from = m.from.as_deref().filter(|a| !a.is_empty());
    let to = m.to.as_deref().filter(|a| !a.is_empty());
    let mut p: Vec<(String, String)> = Vec::with_capacity(12 + 2 * media.len());
    let mut put = |name: &str, value: &str| p.push((name.to_owned(), value.to_owned()));
    put("MessageSid", &m.sid);
    put("AccountSid", &m.account_sid);
    if let Some(service) = &m.messaging_service_sid {
        put("MessagingServiceSid", service);
    }
    put("From", from.ok_or_else(|| unusable("from"))?);
    put("To", to.ok_or_else(|| unusable("to"))?);
    put("Body", m.body.as_deref().unwrap_or(""));
    // Status callbacks say MessageStatus, inbound webhooks SmsStatus: both parsers read it.
    put("MessageStatus", &m.status);
    put("SmsStatus", &m.status);
    if let Some(n) = m.num_segments {
        put("NumSegments", &n.to_string());
    }
    // The media list is what there is; `num_media` may count items since deleted.
    put("NumMedia", &media.len().to_string());
    if let Some(code) = m.error_code {
        put("ErrorCode", &code.to_string());
    }
    if let Some(message) = &m.error_message {
        put("ErrorMessage", message);
    }
    for (i, item) in media.iter().enumerate() {
        put(&format!("MediaUrl{i}"), &item.url);
        if let Some(t) = &item.content_type {
            put(&format!("MediaContentType{i}"), t);
        }
    }
    Ok(Found {
        params: p.into_iter().collect::<Params>(),
        resource: m.raw.clone(),
        outbound: is_outbound(m),
        origin,
        twilio: Resource {
            created_at: m.date_created,
            sent_at: m.date_sent,
            price: m.price.clone(),
            price_unit: m.price_unit.clone(),
        },
        updated_at: m
            .date_updated
            .or(m.date_sent)
            .or(m.date_created)
            .unwrap_or(now),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    fn resource(direction: &str) -> MessageResource {
        let raw = RawValue::from_string(r#"{"sid":"SM1"}"#.to_owned()).unwrap();
        MessageResource {
            sid: "SM1".into(),
            account_sid: "AC1".into(),
            messaging_service_sid: None,
            from: Some("whatsapp:+15550001".into()),
            to: Some("whatsapp:+15550002".into()),
            body: Some("hello".into()),
            direction: direction.into(),
            status: "delivered".into(),
            error_code: None,
            error_message: None,
            num_segments: Some(2),
            num_media: Some(1),
            price: Some("-0.00500".into()),
            price_unit: Some("USD".into()),
            date_created: DateTime::from_timestamp(1_000, 0),
            date_sent: DateTime::from_timestamp(1_001, 0),
            date_updated: DateTime::from_timestamp(1_005, 0),
            raw,
        }
    }

    #[test]
    fn a_resource_becomes_the_parameters_its_webhook_would_carry() {
        let media = [FoundMedia {
            url: "https://api.twilio.com/m".into(),
            content_type: Some("image/jpeg".into()),
        }];
        let f = found(&resource("inbound"), &media, Origin::Reconcile, Utc::now()).unwrap();
        assert!(!f.outbound);
        let get = |k| f.params.get(k).map(str::to_owned);
        assert_eq!(get("From").as_deref(), Some("whatsapp:+15550001"));
        assert_eq!(get("Body").as_deref(), Some("hello"));
        assert_eq!(get("NumSegments").as_deref(), Some("2"));
        assert_eq!(
            get("MediaUrl0").as_deref(),
            Some("https://api.twilio.com/m")
        );
        assert_eq!(get("MediaContentType0").as_deref(), Some("image/jpeg"));
        assert_eq!(f.twilio.price.as_deref(), Some("-0.00500"));
        assert_eq!(f.updated_at, DateTime::from_timestamp(1_005, 0).unwrap());
        assert_eq!(f.resource.get(), r#"{"sid":"SM1"}"#);
    }

    #[test]
    fn outbound_directions_and_their_contact() {
        for d in ["outbound-api", "outbound-reply", "outbound-call"] {
            let m = resource(d);
            assert!(is_outbound(&m));
            assert_eq!(contact(&m), Some("whatsapp:+15550002"));
        }
        assert_eq!(contact(&resource("inbound")), Some("whatsapp:+15550001"));
    }

    #[test]
    fn a_resource_without_an_address_is_unusable() {
        let mut m = resource("inbound");
        m.from = None;
        let e = found(&m, &[], Origin::Backfill, Utc::now()).unwrap_err();
        assert_eq!(e.missing, "from");
    }
}
