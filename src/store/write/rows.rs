//! The column arrays the write statement unnests into rows: one struct per table, one
//! element per row. A new column is a field here, a bind and a name in the statement.

use super::{Callback, Inbound, Origin, Output, Recorded, Reply, Resource, contact::Contact};
use crate::twilio::InboundMessage;
use crate::twilio::status;
use chrono::{DateTime, Duration, Utc};
use serde_json::value::RawValue;
use sqlx::types::Json;
use std::collections::HashMap;

/// The column arrays of the messages insert: one element per new SID, in SID order.
#[derive(Default)]
pub(super) struct MessageRows<'a> {
    pub sid: Vec<&'a str>,
    pub account_sid: Vec<&'a str>,
    pub messaging_service_sid: Vec<Option<&'a str>>,
    pub channel: Vec<String>,
    pub business: Vec<&'a str>,
    pub contact: Vec<&'a str>,
    pub body: Vec<&'a str>,
    pub num_media: Vec<Option<i32>>,
    pub num_segments: Vec<Option<i32>>,
    pub profile_name: Vec<Option<&'a str>>,
    pub wa_id: Vec<Option<&'a str>>,
    pub external_user_id: Vec<Option<&'a str>>,
    pub parent_external_user_id: Vec<Option<&'a str>>,
    pub message_type: Vec<Option<&'a str>>,
    pub latitude: Vec<Option<f64>>,
    pub longitude: Vec<Option<f64>>,
    pub location_address: Vec<Option<&'a str>>,
    pub location_label: Vec<Option<&'a str>>,
    pub button_text: Vec<Option<&'a str>>,
    pub button_payload: Vec<Option<&'a str>>,
    pub replied_to_sid: Vec<Option<&'a str>>,
    pub replied_to_sender: Vec<Option<&'a str>>,
    pub forwarded: Vec<Option<bool>>,
    pub frequently_forwarded: Vec<Option<bool>>,
    pub referral_source_type: Vec<Option<&'a str>>,
    pub referral_source_id: Vec<Option<&'a str>>,
    pub referral_source_url: Vec<Option<&'a str>>,
    pub referral_headline: Vec<Option<&'a str>>,
    pub referral_body: Vec<Option<&'a str>>,
    pub referral_ctwa_clid: Vec<Option<&'a str>>,
    pub from_country: Vec<Option<&'a str>>,
    pub to_country: Vec<Option<&'a str>>,
    pub channel_metadata: Vec<Option<&'a serde_json::Value>>,
    pub status: Vec<Option<&'a str>>,
    pub received_at: Vec<DateTime<Utc>>,
    pub params: Vec<Json<&'a RawValue>>,
    pub status_rank: Vec<Option<i16>>,
    pub origin: Vec<&'static str>,
    pub media: MediaRows<'a>,
    pub twilio: TwilioRows<'a>,
}

/// The columns only Twilio's Message resource fills (see [`Resource`]).
#[derive(Default)]
pub(super) struct TwilioRows<'a> {
    pub created_at: Vec<Option<DateTime<Utc>>>,
    pub sent_at: Vec<Option<DateTime<Utc>>>,
    pub price: Vec<Option<&'a str>>,
    pub price_unit: Vec<Option<&'a str>>,
}

impl<'a> TwilioRows<'a> {
    fn push(&mut self, r: Option<&'a Resource>) {
        self.created_at.push(r.and_then(|r| r.created_at));
        self.sent_at.push(r.and_then(|r| r.sent_at));
        self.price.push(r.and_then(|r| r.price.as_deref()));
        self.price_unit
            .push(r.and_then(|r| r.price_unit.as_deref()));
    }
}

/// Media rows: one element per item.
#[derive(Default)]
pub(super) struct MediaRows<'a> {
    pub sid: Vec<&'a str>,
    pub index: Vec<i32>,
    pub url: Vec<&'a str>,
    pub content_type: Vec<Option<&'a str>>,
}

impl<'a> MediaRows<'a> {
    fn push(&mut self, msg: &'a InboundMessage) {
        for m in &msg.media {
            self.sid.push(msg.sid.as_str());
            self.index.push(m.index);
            self.url.push(m.url.as_str());
            self.content_type.push(m.content_type.as_deref());
        }
    }
}

impl<'a> MessageRows<'a> {
    pub(super) fn new(batch: &'a [Inbound], order: &[usize]) -> Self {
        let mut rows = MessageRows::default();
        for &i in order {
            let Inbound {
                msg,
                params,
                at,
                origin,
                twilio,
                ..
            } = &batch[i];
            rows.twilio.push(Some(twilio));
            rows.origin.push(origin.as_str());
            rows.sid.push(msg.sid.as_str());
            rows.account_sid.push(msg.account_sid.as_str());
            rows.messaging_service_sid
                .push(msg.messaging_service_sid.as_deref());
            rows.channel.push(msg.to.channel());
            rows.business.push(msg.to.expose());
            rows.contact.push(msg.from.expose());
            rows.body.push(msg.body.as_str());
            rows.num_media.push(msg.num_media);
            rows.num_segments.push(msg.num_segments);
            rows.profile_name.push(msg.profile_name.as_deref());
            rows.wa_id.push(msg.wa_id.as_deref());
            rows.external_user_id.push(msg.external_user_id.as_deref());
            rows.parent_external_user_id
                .push(msg.parent_external_user_id.as_deref());
            rows.message_type.push(msg.message_type.as_deref());
            rows.latitude.push(msg.latitude);
            rows.longitude.push(msg.longitude);
            rows.location_address.push(msg.location_address.as_deref());
            rows.location_label.push(msg.location_label.as_deref());
            rows.button_text.push(msg.button_text.as_deref());
            rows.button_payload.push(msg.button_payload.as_deref());
            rows.replied_to_sid.push(msg.replied_to_sid.as_deref());
            rows.replied_to_sender
                .push(msg.replied_to_sender.as_deref());
            rows.forwarded.push(msg.forwarded);
            rows.frequently_forwarded.push(msg.frequently_forwarded);
            rows.referral_source_type
                .push(msg.referral.source_type.as_deref());
            rows.referral_source_id
                .push(msg.referral.source_id.as_deref());
            rows.referral_source_url
                .push(msg.referral.source_url.as_deref());
            rows.referral_headline
                .push(msg.referral.headline.as_deref());
            rows.referral_body.push(msg.referral.body.as_deref());
            rows.referral_ctwa_clid
                .push(msg.referral.ctwa_clid.as_deref());
            rows.from_country.push(msg.from_geo.country.as_deref());
            rows.to_country.push(msg.to_geo.country.as_deref());
            rows.channel_metadata.push(msg.channel_metadata.as_ref());
            rows.status.push(msg.status.as_deref());
            rows.received_at.push(*at);
            rows.params.push(Json(params));
            rows.status_rank
                .push(msg.status.as_deref().and_then(status::rank));
            rows.media.push(msg);
        }
        rows
    }
}

/// What a batch leaves in each conversation, session and consent row it touched.
#[derive(Default)]
pub(super) struct ContactUpdates<'a> {
    pub business: Vec<&'a str>,
    pub contact: Vec<&'a str>,
    pub channel: Vec<String>,
    pub first: Vec<Option<DateTime<Utc>>>,
    pub last: Vec<Option<DateTime<Utc>>>,
    pub expires: Vec<Option<DateTime<Utc>>>,
    pub started: Vec<Option<DateTime<Utc>>>,
    /// Inbound messages the batch adds, and the count expected after them.
    pub added: Vec<i64>,
    pub count: Vec<i64>,
    /// The row's `created_at` as read (or remembered): the row must still be that one.
    /// NULL for a contact the batch found no row for.
    pub created: Vec<Option<DateTime<Utc>>>,
    pub session_business: Vec<&'a str>,
    pub session_contact: Vec<&'a str>,
    pub session_started: Vec<DateTime<Utc>>,
    pub session_last: Vec<DateTime<Utc>>,
    pub session_expires: Vec<DateTime<Utc>>,
    pub session_count: Vec<i32>,
    pub session_channel: Vec<String>,
    /// The ad or post a session's first message came from (Click-to-WhatsApp).
    pub session_referral_type: Vec<Option<&'a str>>,
    pub session_referral_id: Vec<Option<&'a str>>,
    pub session_ctwa_clid: Vec<Option<&'a str>>,
    pub consent_business: Vec<&'a str>,
    pub consent_contact: Vec<&'a str>,
    pub consent_state: Vec<&'static str>,
    pub consent_sid: Vec<&'a str>,
    pub consent_at: Vec<DateTime<Utc>>,
    /// Every consent change, for `consent_events`.
    pub event_business: Vec<&'a str>,
    pub event_contact: Vec<&'a str>,
    pub event_state: Vec<&'static str>,
    pub event_sid: Vec<&'a str>,
    pub event_cause: Vec<&'static str>,
    pub event_rule: Vec<Option<String>>,
    pub event_at: Vec<DateTime<Utc>>,
}

impl<'a> ContactUpdates<'a> {
    pub(super) fn new(
        keys: &[(&'a str, &'a str)],
        contacts: &[Contact],
        batch: &'a [Inbound],
    ) -> Self {
        let mut u = ContactUpdates::default();
        for (&(business, contact), c) in keys.iter().zip(contacts).filter(|(_, c)| c.changed) {
            u.business.push(business);
            u.contact.push(contact);
            u.channel.push(batch[c.latest].msg.to.channel());
            u.first.push(c.first);
            u.last.push(c.last);
            u.expires.push(c.expires);
            u.started.push(c.started);
            u.added.push(c.count - c.read);
            u.count.push(c.count);
            u.created.push(c.created);
            for s in &c.sessions {
                u.session_business.push(business);
                u.session_contact.push(contact);
                u.session_started.push(s.started_at);
                u.session_last.push(s.last_inbound_at);
                u.session_expires
                    .push(s.last_inbound_at + Duration::hours(24));
                u.session_count.push(s.added);
                u.session_channel.push(batch[c.latest].msg.to.channel());
                let referral = s.opened_by.map(|i| &batch[i].msg.referral);
                u.session_referral_type
                    .push(referral.and_then(|r| r.source_type.as_deref()));
                u.session_referral_id
                    .push(referral.and_then(|r| r.source_id.as_deref()));
                u.session_ctwa_clid
                    .push(referral.and_then(|r| r.ctwa_clid.as_deref()));
            }
            for (state, i, cause) in &c.consent_events {
                u.event_business.push(business);
                u.event_contact.push(contact);
                u.event_state.push(state.as_str());
                u.event_sid.push(batch[*i].msg.sid.as_str());
                u.event_cause.push(cause.as_str());
                u.event_rule.push(cause.rule().map(str::to_owned));
                u.event_at.push(batch[*i].at);
            }
            if let Some((state, i)) = c.consent_change {
                u.consent_business.push(business);
                u.consent_contact.push(contact);
                u.consent_state.push(state.as_str());
                u.consent_sid.push(batch[i].msg.sid.as_str());
                u.consent_at.push(batch[i].at);
            }
        }
        u
    }
}

/// The replies insert: one element per new message that is answered. Each reply's rules
/// and bodies are slices (1-based, inclusive; empty when `to < from`) of one flat array
/// each: Postgres has no array of arrays, and a slice costs less than parsing one.
#[derive(Default)]
pub(super) struct ReplyRows {
    pub sid: Vec<String>,
    pub twiml: Vec<String>,
    pub at: Vec<DateTime<Utc>>,
    pub rules: Vec<String>,
    pub rule_from: Vec<i32>,
    pub rule_to: Vec<i32>,
    pub bodies: Vec<String>,
    pub body_from: Vec<i32>,
    pub body_to: Vec<i32>,
}

impl ReplyRows {
    pub(super) fn push(&mut self, sid: &str, reply: &Reply, at: DateTime<Utc>) {
        self.sid.push(sid.to_owned());
        self.twiml.push(reply.twiml.clone());
        self.at.push(at);
        let (from, to) = slice(&mut self.rules, &reply.rule);
        self.rule_from.push(from);
        self.rule_to.push(to);
        let (from, to) = slice(&mut self.bodies, &reply.bodies);
        self.body_from.push(from);
        self.body_to.push(to);
    }
}

/// Appends `items` to `flat` and returns their 1-based inclusive bounds in it.
fn slice(flat: &mut Vec<String>, items: &[String]) -> (i32, i32) {
    let from = flat.len() as i32 + 1;
    flat.extend_from_slice(items);
    (from, flat.len() as i32)
}

/// The fallback calls insert: one element per call in the batch.
#[derive(Default)]
pub(super) struct FailureRows<'a> {
    pub sid: Vec<&'a str>,
    pub error_code: Vec<Option<i32>>,
    pub error_url: Vec<Option<&'a str>>,
    pub at: Vec<DateTime<Utc>>,
    pub params: Vec<Json<&'a RawValue>>,
    pub spool_record: Vec<Option<&'a str>>,
}

impl<'a> FailureRows<'a> {
    pub(super) fn new(batch: &'a [Inbound]) -> Self {
        let mut rows = FailureRows::default();
        for item in batch {
            let Some(failure) = &item.failure else {
                continue;
            };
            rows.sid.push(&item.msg.sid);
            rows.error_code.push(failure.error_code);
            rows.error_url.push(failure.error_url.as_deref());
            rows.at.push(item.at);
            rows.params.push(Json(&item.params));
            rows.spool_record.push(item.spool_record.as_deref());
        }
        rows
    }

    pub(super) fn is_empty(&self) -> bool {
        self.sid.is_empty()
    }
}

/// The rows a batch of status callbacks writes: every event, and per SID the callback the
/// message row is offered.
pub(super) struct StatusRows<'a> {
    pub batch: &'a [Callback],
    pub events: EventRows<'a>,
    pub winners: MessageUpserts<'a>,
    /// Per SID, the callback offered to the message row.
    pub winner_of: HashMap<&'a str, usize>,
    /// Per (business, contact), the earliest callback.
    pub first_at: HashMap<(&'a str, &'a str), DateTime<Utc>>,
}

impl<'a> StatusRows<'a> {
    pub(super) fn new(batch: &'a [Callback]) -> Self {
        // Events in SID order; per SID, the callback the message row is offered.
        let mut order: Vec<usize> = (0..batch.len()).collect();
        order.sort_by(|&a, &b| batch[a].cb.sid.cmp(&batch[b].cb.sid).then(a.cmp(&b)));
        let mut rows = StatusRows {
            batch,
            events: EventRows::default(),
            winners: MessageUpserts::default(),
            winner_of: HashMap::new(),
            first_at: HashMap::new(),
        };
        for c in batch {
            rows.first_at
                .entry((c.cb.from.expose(), c.cb.to.expose()))
                .and_modify(|at| *at = (*at).min(c.at))
                .or_insert(c.at);
        }
        for group in order.chunk_by(|&a, &b| batch[a].cb.sid == batch[b].cb.sid) {
            // Highest rank wins; an unknown status (no rank) only if nothing else is known.
            let winner = group
                .iter()
                .copied()
                .max_by(|&a, &b| {
                    status::rank(&batch[a].cb.status)
                        .cmp(&status::rank(&batch[b].cb.status))
                        // max_by keeps the last of equals: prefer the earlier callback.
                        .then(b.cmp(&a))
                })
                .unwrap_or(group[0]);
            rows.winners.push(batch, group, winner);
            rows.winner_of.insert(&batch[winner].cb.sid, winner);
            for &i in group {
                rows.events.push(&batch[i]);
            }
        }
        rows
    }

    /// What each callback changed, in the order given.
    pub(super) fn recorded(&self, written: &Output) -> Vec<Recorded> {
        // Which callbacks stored a new event: the first of each key that came back.
        type EventKey<'k> = (&'k str, &'k str, Option<&'k str>, Option<&'k str>);
        let mut inserted: HashMap<EventKey<'_>, bool> = (0..written.event_sid.len())
            .map(|k| {
                let key = (
                    written.event_sid[k].as_str(),
                    written.event_status[k].as_str(),
                    written.event_error_code[k].as_deref(),
                    written.event_dlr_done[k].as_deref(),
                );
                (key, true)
            })
            .collect();
        let messages: HashMap<&str, (bool, Option<&str>, DateTime<Utc>)> = written
            .message_sid
            .iter()
            .enumerate()
            .map(|(k, sid)| {
                let current = (
                    written.created[k],
                    written.status[k].as_deref(),
                    written.message_received_at[k],
                );
                (sid.as_str(), current)
            })
            .collect();
        self.batch
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let key = (
                    c.cb.sid.as_str(),
                    c.cb.status.as_str(),
                    c.cb.error_code_raw.as_deref(),
                    c.cb.raw_dlr_done_date.as_deref(),
                );
                // Taken by the first callback with this key; a copy in the batch finds it
                // gone.
                let new_event = inserted.insert(key, false).unwrap_or(false);
                let winner = self.winner_of.get(c.cb.sid.as_str()) == Some(&i);
                let (created, current, day) = messages
                    .get(c.cb.sid.as_str())
                    .map_or((false, None, None), |&(created, status, day)| {
                        (created, status, Some(day))
                    });
                Recorded {
                    new_event,
                    created_message: created && winner,
                    advanced: new_event && winner && current == Some(c.cb.status.as_str()),
                    message_received_at: day,
                }
            })
            .collect()
    }
}

/// The events insert: one element per callback, in SID order.
#[derive(Default)]
pub(super) struct EventRows<'a> {
    pub sid: Vec<&'a str>,
    pub status: Vec<&'a str>,
    pub error_code: Vec<Option<i32>>,
    pub error_message: Vec<Option<&'a str>>,
    pub raw_dlr_done_date: Vec<Option<&'a str>>,
    pub at: Vec<DateTime<Utc>>,
    pub params: Vec<Json<&'a RawValue>>,
    pub error_code_raw: Vec<Option<&'a str>>,
    pub source: Vec<&'static str>,
}

impl<'a> EventRows<'a> {
    fn push(&mut self, c: &'a Callback) {
        self.sid.push(&c.cb.sid);
        self.status.push(&c.cb.status);
        self.error_code.push(c.cb.error_code);
        self.error_message.push(c.cb.error_message.as_deref());
        self.raw_dlr_done_date
            .push(c.cb.raw_dlr_done_date.as_deref());
        self.at.push(c.at);
        self.params.push(Json(&c.params));
        self.error_code_raw.push(c.cb.error_code_raw.as_deref());
        self.source.push(if c.found.is_some() {
            "reconcile"
        } else {
            "callback"
        });
    }
}

/// The messages upsert: one element per SID.
#[derive(Default)]
pub(super) struct MessageUpserts<'a> {
    pub sid: Vec<&'a str>,
    pub account_sid: Vec<&'a str>,
    pub messaging_service_sid: Vec<Option<&'a str>>,
    pub channel: Vec<String>,
    pub business: Vec<&'a str>,
    pub contact: Vec<&'a str>,
    pub status: Vec<&'a str>,
    pub status_rank: Vec<Option<i16>>,
    pub error_code: Vec<Option<i32>>,
    pub error_message: Vec<Option<&'a str>>,
    pub in_reply_to: Vec<Option<&'a str>>,
    pub rule: Vec<Option<&'a str>>,
    pub reply_part: Vec<Option<i32>>,
    pub received_at: Vec<DateTime<Utc>>,
    pub updated_at: Vec<DateTime<Utc>>,
    pub params: Vec<Json<&'a RawValue>>,
    /// What a message read from Twilio's API brings (NULL for a status callback).
    pub body: Vec<Option<&'a str>>,
    pub num_media: Vec<Option<i32>>,
    pub num_segments: Vec<Option<i32>>,
    pub twilio: TwilioRows<'a>,
    pub origin: Vec<&'static str>,
    pub media: MediaRows<'a>,
}

impl<'a> MessageUpserts<'a> {
    /// `group`: the callbacks of one SID in arrival order; `winner`: the one whose status is
    /// offered. A new row takes the rest from the first callback, as one-by-one would; the
    /// reply link fields from the first that has them (they are only ever filled in).
    fn push(&mut self, batch: &'a [Callback], group: &[usize], winner: usize) {
        let first = &batch[group[0]];
        let best = &batch[winner];
        let link = group.iter().find_map(|&i| batch[i].link.as_ref());
        let found = group.iter().find_map(|&i| batch[i].found.as_deref());
        let failure = status::is_failure(&best.cb.status);
        self.sid.push(&first.cb.sid);
        self.account_sid.push(&first.cb.account_sid);
        self.messaging_service_sid.push(
            group
                .iter()
                .find_map(|&i| batch[i].cb.messaging_service_sid.as_deref()),
        );
        self.channel.push(first.cb.from.channel());
        self.business.push(first.cb.from.expose());
        self.contact.push(first.cb.to.expose());
        self.status.push(&best.cb.status);
        self.status_rank.push(status::rank(&best.cb.status));
        self.error_code
            .push(if failure { best.cb.error_code } else { None });
        self.error_message
            .push(best.cb.error_message.as_deref().filter(|_| failure));
        self.in_reply_to.push(link.map(|l| l.reply_to.as_str()));
        self.rule.push(link.and_then(|l| l.rule.as_deref()));
        self.reply_part.push(link.map(|l| l.part));
        // A message read from the API was created at Twilio's time, not at its last update.
        let created = found.and_then(|f| f.twilio.created_at);
        self.received_at.push(created.unwrap_or(first.at));
        self.updated_at
            .push(group.iter().map(|&i| batch[i].at).max().unwrap_or(first.at));
        self.params.push(Json(&first.params));
        self.body.push(found.map(|f| f.msg.body.as_str()));
        self.num_media.push(found.and_then(|f| f.msg.num_media));
        self.num_segments
            .push(found.and_then(|f| f.msg.num_segments));
        self.twilio.push(found.map(|f| &f.twilio));
        self.origin
            .push(found.map_or(Origin::Webhook, |f| f.origin).as_str());
        if let Some(f) = found {
            self.media.push(&f.msg);
        }
    }
}
