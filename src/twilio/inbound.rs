//! An inbound message webhook parsed into typed values (TWILIO.md §3), once, at the edge.
//!
//! A signed webhook is Twilio's word: only a missing `MessageSid`, `AccountSid`, `From` or `To`
//! rejects it (DESIGN.md §9). Every other value that does not parse becomes `None` here and
//! stays, as received, in the stored `params`.

use super::{address::Address, params::Params};
use serde_json::Value;

/// A required parameter was missing or blank.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("missing required parameter {0}")]
pub struct MissingParam(pub &'static str);

/// One media item: `MediaUrl{N}` with its `MediaContentType{N}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Media {
    pub index: i32,
    pub url: String,
    pub content_type: Option<String>,
}

/// Click-to-WhatsApp ad attribution, sent once on the message that followed an ad click.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Referral {
    pub source_type: Option<String>,
    pub source_id: Option<String>,
    pub source_url: Option<String>,
    pub headline: Option<String>,
    pub body: Option<String>,
    pub ctwa_clid: Option<String>,
    pub media_id: Option<String>,
    pub media_content_type: Option<String>,
    pub media_url: Option<String>,
    pub num_media: Option<i32>,
}

/// Geographic lookups Twilio adds for phone numbers (SMS), when available.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Geo {
    pub city: Option<String>,
    pub state: Option<String>,
    pub zip: Option<String>,
    pub country: Option<String>,
}

/// An inbound WhatsApp or SMS message.
#[derive(Debug, Clone, PartialEq)]
pub struct InboundMessage {
    pub sid: String,
    pub account_sid: String,
    pub messaging_service_sid: Option<String>,
    /// The user who wrote.
    pub from: Address,
    /// Our sender (the business number).
    pub to: Address,
    /// Empty for media-only, location and contact messages.
    pub body: String,
    pub num_media: Option<i32>,
    /// Every `MediaUrl{N}` present, ordered by N, whatever `NumMedia` says.
    pub media: Vec<Media>,
    pub num_segments: Option<i32>,
    /// `SmsStatus`, `received` on inbound webhooks.
    pub status: Option<String>,
    pub api_version: Option<String>,
    pub profile_name: Option<String>,
    pub wa_id: Option<String>,
    pub external_user_id: Option<String>,
    /// `ParentExternalUserId`, when sent with a business-scoped user ID.
    pub parent_external_user_id: Option<String>,
    /// `OptOutType` (`STOP`, `START`, `HELP`): Twilio's own opt-out handling (a Messaging
    /// Service's Advanced Opt-Out) recognised the keyword and answered it.
    pub opt_out_type: Option<String>,
    pub message_type: Option<String>,
    pub channel_metadata: Option<Value>,
    pub forwarded: Option<bool>,
    pub frequently_forwarded: Option<bool>,
    pub button_text: Option<String>,
    pub button_payload: Option<String>,
    pub replied_to_sid: Option<String>,
    pub replied_to_sender: Option<String>,
    pub latitude: Option<f64>,
    pub longitude: Option<f64>,
    pub location_address: Option<String>,
    pub location_label: Option<String>,
    pub referral: Referral,
    pub from_geo: Geo,
    pub to_geo: Geo,
    pub add_ons: Option<Value>,
}

/// `MediaUrl{N}` indexes above this are not media items but noise; they stay in `params`.
const MAX_MEDIA_INDEX: u32 = 100;

impl InboundMessage {
    pub fn parse(p: &Params) -> Result<Self, MissingParam> {
        // Counts: a negative or out-of-range number is no count (NULL; raw in params).
        let count = |name: &str| {
            p.get(name)
                .and_then(|v| v.trim().parse::<u32>().ok())
                .and_then(|n| i32::try_from(n).ok())
        };
        let coordinate = |name: &str, limit: f64| {
            p.get(name)
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|v| v.is_finite() && v.abs() <= limit)
        };
        let flag = |name: &str| match p.get(name).map(str::trim) {
            Some(v) if v.eq_ignore_ascii_case("true") => Some(true),
            Some(v) if v.eq_ignore_ascii_case("false") => Some(false),
            _ => None,
        };
        let json = |name: &str| {
            p.non_empty(name)
                .and_then(|v| serde_json::from_str::<Value>(v).ok())
                .map(scrub_nul)
        };
        let geo = |prefix: &str| Geo {
            city: p.text(&format!("{prefix}City")),
            state: p.text(&format!("{prefix}State")),
            zip: p.text(&format!("{prefix}Zip")),
            country: p.text(&format!("{prefix}Country")),
        };

        Ok(InboundMessage {
            sid: p.required("MessageSid")?,
            account_sid: p.required("AccountSid")?,
            from: Address::parse(&p.required("From")?),
            to: Address::parse(&p.required("To")?),
            messaging_service_sid: p.text("MessagingServiceSid"),
            body: p.get("Body").unwrap_or_default().to_owned(),
            num_media: count("NumMedia"),
            media: media(p),
            num_segments: count("NumSegments"),
            status: p.text("SmsStatus"),
            api_version: p.text("ApiVersion"),
            profile_name: p.text("ProfileName"),
            wa_id: p.text("WaId"),
            external_user_id: p.text("ExternalUserId"),
            parent_external_user_id: p.text("ParentExternalUserId"),
            opt_out_type: p.text("OptOutType"),
            message_type: p.text("MessageType"),
            channel_metadata: json("ChannelMetadata"),
            forwarded: flag("Forwarded"),
            frequently_forwarded: flag("FrequentlyForwarded"),
            button_text: p.text("ButtonText"),
            button_payload: p.text("ButtonPayload"),
            replied_to_sid: p.text("OriginalRepliedMessageSid"),
            replied_to_sender: p.text("OriginalRepliedMessageSender"),
            latitude: coordinate("Latitude", 90.0),
            longitude: coordinate("Longitude", 180.0),
            location_address: p.text("Address"),
            location_label: p.text("Label"),
            referral: Referral {
                source_type: p.text("ReferralSourceType"),
                source_id: p.text("ReferralSourceId"),
                source_url: p.text("ReferralSourceUrl"),
                headline: p.text("ReferralHeadline"),
                body: p.text("ReferralBody"),
                ctwa_clid: p.text("ReferralCtwaClid"),
                media_id: p.text("ReferralMediaId"),
                media_content_type: p.text("ReferralMediaContentType"),
                media_url: p.text("ReferralMediaUrl"),
                num_media: count("ReferralNumMedia"),
            },
            from_geo: geo("From"),
            to_geo: geo("To"),
            add_ons: json("AddOns"),
        })
    }
}

/// A JSON `\u0000` decodes to NUL, which Postgres refuses in jsonb: it becomes U+FFFD, as in
/// every other stored text (DESIGN.md §9).
fn scrub_nul(value: Value) -> Value {
    let clean = |s: String| {
        if s.contains('\0') {
            s.replace('\0', "\u{FFFD}")
        } else {
            s
        }
    };
    match value {
        Value::String(s) => Value::String(clean(s)),
        Value::Array(items) => Value::Array(items.into_iter().map(scrub_nul).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (clean(k), scrub_nul(v)))
                .collect(),
        ),
        other => other,
    }
}

fn media(p: &Params) -> Vec<Media> {
    let mut items: Vec<Media> = p
        .pairs()
        .iter()
        .filter_map(|(k, v)| {
            let n: u32 = k.strip_prefix("MediaUrl")?.parse().ok()?;
            // "MediaUrl01" is not index 1: only canonical numbers pair with a content type.
            (n <= MAX_MEDIA_INDEX
                && n.to_string().len() == k.len() - "MediaUrl".len()
                && !v.is_empty())
            .then(|| Media {
                index: n as i32,
                url: v.clone(),
                content_type: p.text(&format!("MediaContentType{n}")),
            })
        })
        .collect();
    items.sort_by_key(|m| m.index);
    // A repeated MediaUrl{N} keeps its first value; all values stay in params.
    items.dedup_by_key(|m| m.index);
    items
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Params {
        Params::of(pairs)
    }

    fn base() -> Vec<(&'static str, &'static str)> {
        vec![
            ("MessageSid", "SM11111111111111111111111111111111"),
            ("AccountSid", "AC11111111111111111111111111111111"),
            ("From", "whatsapp:+15551234567"),
            ("To", "whatsapp:+14155238886"),
        ]
    }

    #[test]
    fn each_required_parameter_is_required() {
        for missing in ["MessageSid", "AccountSid", "From", "To"] {
            let without: Vec<_> = base().into_iter().filter(|(k, _)| *k != missing).collect();
            assert_eq!(
                InboundMessage::parse(&params(&without)),
                Err(MissingParam(missing))
            );
            let blank: Vec<_> = base()
                .into_iter()
                .map(|(k, v)| if k == missing { (k, "") } else { (k, v) })
                .collect();
            assert_eq!(
                InboundMessage::parse(&params(&blank)),
                Err(MissingParam(missing))
            );
        }
    }

    #[test]
    fn a_whatsapp_location_button_reply_parses_into_typed_fields() {
        let mut p = base();
        p.extend([
            ("Body", ""),
            ("NumMedia", "0"),
            ("ProfileName", "Ana"),
            ("WaId", "15551234567"),
            ("MessageType", "location"),
            ("Latitude", "40.4168"),
            ("Longitude", "-3.7038"),
            ("Address", "Puerta del Sol"),
            ("Label", "Home"),
            ("ButtonText", "Yes"),
            ("ButtonPayload", "confirm-1"),
            ("Forwarded", "true"),
            ("FrequentlyForwarded", "false"),
            (
                "ChannelMetadata",
                r#"{"type":"whatsapp","data":{"context":{"WaId":"15551234567"}}}"#,
            ),
            ("ReferralNumMedia", "0"),
        ]);
        let m = InboundMessage::parse(&params(&p)).unwrap();
        assert_eq!(m.from.channel(), "whatsapp");
        assert_eq!(m.profile_name.as_deref(), Some("Ana"));
        assert_eq!(m.message_type.as_deref(), Some("location"));
        assert_eq!((m.latitude, m.longitude), (Some(40.4168), Some(-3.7038)));
        assert_eq!(m.location_label.as_deref(), Some("Home"));
        assert_eq!(m.button_payload.as_deref(), Some("confirm-1"));
        assert_eq!(
            (m.forwarded, m.frequently_forwarded),
            (Some(true), Some(false))
        );
        assert_eq!(m.channel_metadata.unwrap()["type"], "whatsapp");
        assert_eq!(m.referral.num_media, Some(0));
        assert_eq!(m.num_media, Some(0));
    }

    #[test]
    fn values_that_do_not_parse_become_none() {
        let mut p = base();
        p.extend([
            ("NumMedia", "99999999999999"),
            ("NumSegments", "one"),
            ("ReferralNumMedia", "-1"),
            ("Latitude", "NaN"),
            ("Longitude", "500"),
            ("Forwarded", "maybe"),
            ("ChannelMetadata", "{not json"),
            ("ProfileName", ""),
        ]);
        let m = InboundMessage::parse(&params(&p)).unwrap();
        assert_eq!(m.num_media, None);
        assert_eq!(m.num_segments, None);
        assert_eq!(m.referral.num_media, None);
        assert_eq!((m.latitude, m.longitude), (None, None));
        assert_eq!(m.forwarded, None);
        assert_eq!(m.channel_metadata, None);
        assert_eq!(m.profile_name, None);
    }

    #[test]
    fn nul_inside_json_parameters_is_replaced() {
        let mut p = base();
        p.push(("ChannelMetadata", r#"{"a\u0000":["x\u0000y"]}"#));
        let m = InboundMessage::parse(&params(&p)).unwrap();
        assert_eq!(
            m.channel_metadata,
            Some(serde_json::json!({"a\u{FFFD}": ["x\u{FFFD}y"]}))
        );
    }

    #[test]
    fn media_items_pair_by_index_whatever_num_media_says() {
        let mut p = base();
        p.extend([
            ("NumMedia", "1"),
            ("MediaUrl1", "https://api.twilio.com/m1"),
            ("MediaContentType1", "application/pdf"),
            ("MediaUrl0", "https://api.twilio.com/m0"),
            ("MediaContentType0", "image/jpeg"),
            ("MediaUrl01", "https://not-an-index"),
            ("MediaUrl9999", "https://too-far"),
            ("MediaUrl0", "https://second-copy"),
        ]);
        let m = InboundMessage::parse(&params(&p)).unwrap();
        let got: Vec<_> = m
            .media
            .iter()
            .map(|x| (x.index, x.url.as_str(), x.content_type.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                (0, "https://api.twilio.com/m0", Some("image/jpeg")),
                (1, "https://api.twilio.com/m1", Some("application/pdf")),
            ]
        );
    }
}
