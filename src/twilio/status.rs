//! Status callbacks (TWILIO.md §4): parsing, and the precedence that decides a message's
//! current status.
//!
//! Callbacks arrive out of order and twice, so the current status is the furthest one by
//! rank, never the latest by arrival:
//! `scheduled < accepted < queued < sending < sent < undelivered < delivered < read`, and
//! `failed` / `canceled` above everything.
//!
//! `undelivered` sits below `delivered` and `read` on purpose: a carrier report of
//! non-delivery can disagree with a later delivery receipt (multi-segment SMS), and a WhatsApp
//! read receipt is proof the user saw the message, so positive evidence wins. `failed` (never
//! left Twilio) and `canceled` are final: nothing moves a message out of them.

use super::{Address, MissingParam, Params};

/// The rank of a status; `None` for values this version does not know (stored as history,
/// never replacing a known status).
pub fn rank(status: &str) -> Option<i16> {
    Some(match status.to_ascii_lowercase().as_str() {
        "receiving" => 1,
        "received" => 2,
        "scheduled" => 10,
        "accepted" => 20,
        "queued" => 30,
        "sending" => 40,
        "sent" => 50,
        "undelivered" => 60,
        "partially_delivered" => 65,
        "delivered" => 70,
        "read" => 80,
        "failed" | "canceled" => 90,
        _ => return None,
    })
}

/// Statuses whose `ErrorCode` / `ErrorMessage` describe the message's current state.
pub fn is_failure(status: &str) -> bool {
    matches!(
        status.to_ascii_lowercase().as_str(),
        "failed" | "undelivered"
    )
}

/// A delivery status callback for one message.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusCallback {
    pub sid: String,
    pub account_sid: String,
    pub messaging_service_sid: Option<String>,
    /// Our sender.
    pub from: Address,
    /// The recipient.
    pub to: Address,
    /// `MessageStatus` (or `SmsStatus`), as sent.
    pub status: String,
    /// `ErrorCode` when it is an integer; the raw value stays in `params`.
    pub error_code: Option<i32>,
    /// `ErrorCode` as sent: two different non-numeric codes are two different events.
    pub error_code_raw: Option<String>,
    pub error_message: Option<String>,
    pub raw_dlr_done_date: Option<String>,
}

impl StatusCallback {
    pub fn parse(p: &Params) -> Result<Self, MissingParam> {
        Ok(StatusCallback {
            sid: p.required("MessageSid")?,
            account_sid: p.required("AccountSid")?,
            from: Address::parse(&p.required("From")?),
            to: Address::parse(&p.required("To")?),
            status: p
                .text("MessageStatus")
                .or_else(|| p.text("SmsStatus"))
                .ok_or(MissingParam("MessageStatus"))?,
            messaging_service_sid: p.text("MessagingServiceSid"),
            error_code: p.get("ErrorCode").and_then(|v| v.trim().parse().ok()),
            error_code_raw: p.text("ErrorCode"),
            error_message: p.text("ErrorMessage"),
            raw_dlr_done_date: p.text("RawDlrDoneDate"),
        })
    }
}

/// Where a reply we answered with TwiML came from, carried in its `action` URL's query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyLink {
    /// The inbound message the reply answered.
    pub reply_to: String,
    pub rule: Option<String>,
    /// The position of the `<Message>` within the reply, from 0.
    pub part: i32,
}

impl ReplyLink {
    pub fn from_query(query: &Params) -> Option<Self> {
        Some(ReplyLink {
            reply_to: query.non_empty("reply_to")?.to_owned(),
            rule: query.text("rule"),
            // Only a position we could have written (the store indexes the reply's bodies
            // with part + 1, which must not overflow); anything else means the first.
            part: query
                .get("part")
                .and_then(|v| v.parse::<u16>().ok())
                .map_or(0, i32::from),
        })
    }

    /// The status callback URL for part `part` of the reply to `reply_to`, under `base`.
    pub fn action_url(base: &str, reply_to: &str, rule: Option<&str>, part: usize) -> String {
        let part = part.to_string();
        let mut query = vec![("reply_to", reply_to), ("part", part.as_str())];
        if let Some(rule) = rule {
            query.push(("rule", rule));
        }
        let query = serde_urlencoded::to_string(query).unwrap_or_default();
        format!("{base}/twilio/status?{query}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The status a message ends in after `events` arrive in this order.
    fn current(events: &[&str]) -> Option<String> {
        let mut best: Option<(&str, i16)> = None;
        for e in events {
            if let Some(r) = rank(e)
                && best.is_none_or(|(_, b)| r > b)
            {
                best = Some((e, r));
            }
        }
        best.map(|(s, _)| s.to_owned())
    }

    fn permutations(items: &[&'static str]) -> Vec<Vec<&'static str>> {
        if items.len() <= 1 {
            return vec![items.to_vec()];
        }
        let mut out = Vec::new();
        for i in 0..items.len() {
            let mut rest = items.to_vec();
            let first = rest.remove(i);
            for mut p in permutations(&rest) {
                p.insert(0, first);
                out.push(p);
            }
        }
        out
    }

    #[test]
    fn the_forward_path_is_ordered() {
        let path = [
            "scheduled",
            "accepted",
            "queued",
            "sending",
            "sent",
            "delivered",
            "read",
        ];
        for pair in path.windows(2) {
            assert!(rank(pair[0]) < rank(pair[1]), "{pair:?}");
        }
    }

    #[test]
    fn every_order_of_queued_sent_delivered_read_ends_read() {
        for order in permutations(&["queued", "sent", "delivered", "read"]) {
            assert_eq!(current(&order).as_deref(), Some("read"), "{order:?}");
        }
    }

    #[test]
    fn failures_before_or_after_success() {
        for order in permutations(&["queued", "sent", "failed"]) {
            assert_eq!(current(&order).as_deref(), Some("failed"), "{order:?}");
        }
        for order in permutations(&["sent", "undelivered", "delivered"]) {
            assert_eq!(current(&order).as_deref(), Some("delivered"), "{order:?}");
        }
        for order in permutations(&["queued", "sent", "undelivered"]) {
            assert_eq!(current(&order).as_deref(), Some("undelivered"), "{order:?}");
        }
        assert_eq!(current(&["read", "failed"]).as_deref(), Some("failed"));
        assert_eq!(current(&["canceled", "sent"]).as_deref(), Some("canceled"));
    }

    #[test]
    fn unknown_statuses_never_replace_known_ones() {
        assert_eq!(rank("teleported"), None);
        assert_eq!(current(&["sent", "teleported"]).as_deref(), Some("sent"));
        assert_eq!(rank("DELIVERED"), rank("delivered"));
    }

    #[test]
    fn a_callback_parses_its_error_code_only_when_numeric() {
        let p = Params::of(&[
            ("MessageSid", "SM1"),
            ("AccountSid", "AC1"),
            ("From", "whatsapp:+14155238886"),
            ("To", "whatsapp:+15551234567"),
            ("MessageStatus", "undelivered"),
            ("ErrorCode", "30003"),
            ("ErrorMessage", "Unreachable"),
        ]);
        let cb = StatusCallback::parse(&p).unwrap();
        assert_eq!(
            (cb.status.as_str(), cb.error_code),
            ("undelivered", Some(30003))
        );
        let p = Params::of(&[
            ("MessageSid", "SM1"),
            ("AccountSid", "AC1"),
            ("From", "a"),
            ("To", "b"),
            ("SmsStatus", "failed"),
            ("ErrorCode", "E42"),
        ]);
        let cb = StatusCallback::parse(&p).unwrap();
        assert_eq!((cb.status.as_str(), cb.error_code), ("failed", None));
        let p = Params::of(&[
            ("MessageSid", "SM1"),
            ("AccountSid", "AC1"),
            ("From", "a"),
            ("To", "b"),
        ]);
        assert_eq!(
            StatusCallback::parse(&p),
            Err(MissingParam("MessageStatus"))
        );
    }

    #[test]
    fn reply_links_round_trip_through_the_action_url() {
        let url = ReplyLink::action_url("https://h.example/p", "SM1", Some("after-hours"), 1);
        assert_eq!(
            url,
            "https://h.example/p/twilio/status?reply_to=SM1&part=1&rule=after-hours"
        );
        let query: Params =
            serde_urlencoded::from_str::<Vec<(String, String)>>(url.split_once('?').unwrap().1)
                .unwrap()
                .into_iter()
                .collect();
        assert_eq!(
            ReplyLink::from_query(&query),
            Some(ReplyLink {
                reply_to: "SM1".into(),
                rule: Some("after-hours".into()),
                part: 1
            })
        );
        assert_eq!(ReplyLink::from_query(&Params::default()), None);
        for absurd in ["-1", "2147483647", "99999999999999999999", "x", ""] {
            let query = Params::of(&[("reply_to", "SM1"), ("part", absurd)]);
            assert_eq!(ReplyLink::from_query(&query).unwrap().part, 0, "{absurd}");
        }
    }
}
