//! One conversation as a batch applies its messages: the 24-hour window arithmetic, done
//! here once for every write (the statement stores what this computed).

use super::Inbound;
use crate::rules::{ConsentCause, ConsentState, Facts};
use chrono::{DateTime, Duration, Utc};
use std::collections::HashMap;

/// The read's keys: the batch's contacts in key order, and its SIDs.
pub(super) struct Reads<'a> {
    pub keys: Vec<(&'a str, &'a str)>,
    pub business: Vec<&'a str>,
    pub contact: Vec<&'a str>,
    /// Replies after this count towards limits: the contact's earliest arrival less the
    /// rules' longest lookback.
    pub since: Vec<DateTime<Utc>>,
    pub sid: Vec<&'a str>,
}

impl<'a> Reads<'a> {
    pub(super) fn new(batch: &'a [Inbound], firsts: &[usize], lookback: Duration) -> Self {
        let mut since: HashMap<(&str, &str), DateTime<Utc>> = HashMap::new();
        for &i in firsts {
            let msg = &batch[i].msg;
            let at = batch[i].at - lookback;
            since
                .entry((msg.to.expose(), msg.from.expose()))
                .and_modify(|s| *s = (*s).min(at))
                .or_insert(at);
        }
        let mut keys: Vec<(&str, &str)> = since.keys().copied().collect();
        keys.sort_unstable();
        Reads {
            business: keys.iter().map(|k| k.0).collect(),
            contact: keys.iter().map(|k| k.1).collect(),
            since: keys.iter().map(|k| since[k]).collect(),
            sid: firsts.iter().map(|&i| batch[i].msg.sid.as_str()).collect(),
            keys,
        }
    }
}

/// A session row as a batch leaves it, and how many of the batch's messages it gained.
pub(super) struct Session {
    pub started_at: DateTime<Utc>,
    pub last_inbound_at: DateTime<Utc>,
    pub added: i32,
    /// The batch index of the message that opened it, when this batch opened it.
    pub opened_by: Option<usize>,
}

/// One conversation during a batch: its row as read (or remembered), then as each message
/// leaves it.
#[derive(Default)]
pub(super) struct Contact {
    /// The row's `created_at`; `None` before the row exists.
    pub created: Option<DateTime<Utc>>,
    pub first: Option<DateTime<Utc>>,
    pub last: Option<DateTime<Utc>>,
    pub expires: Option<DateTime<Utc>>,
    pub started: Option<DateTime<Utc>>,
    pub count: i64,
    /// `count` as read.
    pub read: i64,
    /// Inbound messages in the session that starts at `started`.
    pub session_count: i64,
    /// The sessions this batch touched, oldest first.
    pub sessions: Vec<Session>,
    pub consent: ConsentState,
    /// The last consent change this batch made, and the message that made it.
    pub consent_change: Option<(ConsentState, usize)>,
    /// Every consent change this batch made, in order: the message and what made it.
    pub consent_events: Vec<(ConsentState, usize, ConsentCause)>,
    pub recent: Vec<(String, DateTime<Utc>)>,
    /// A message of this batch was applied: the row is written back.
    pub changed: bool,
    /// The batch index of the last message applied.
    pub latest: usize,
}

impl Contact {
    /// The row's `created_at` once this batch is written (a new row takes its first message's
    /// time).
    pub(super) fn created_at(&self) -> DateTime<Utc> {
        self.created.or(self.first).unwrap_or_default()
    }

    /// The contact as the next batch starts from it: this one's changes are on record.
    pub(super) fn settled(mut self, lookback: Duration) -> Self {
        // A row this batch did not create or read stays unknown (its next batch reads it).
        self.created = self.created.or(self.first);
        self.read = self.count;
        self.sessions.clear();
        self.consent_change = None;
        self.consent_events.clear();
        self.changed = false;
        // Replies this old count towards no limit of any later message (see `recall`).
        let horizon = self.last.map(|last| last - lookback);
        self.recent
            .retain(|(_, at)| lookback > Duration::zero() && horizon.is_none_or(|h| *at > h));
        self
    }

    /// Applies one inbound message received `at`: at or after the window's end it opens a
    /// new window, earlier it extends the current one. Returns what the rules see.
    pub(super) fn receive(&mut self, at: DateTime<Utc>, lookback: Duration) -> Facts {
        self.first = Some(self.first.map_or(at, |f| f.min(at)));
        if self.expires.is_none_or(|expires| at >= expires) {
            self.started = Some(at);
            self.session_count = 0;
        }
        let last = self.last.map_or(at, |l| l.max(at));
        self.last = Some(last);
        self.expires = Some(last + Duration::hours(24));
        self.count += 1;
        self.session_count += 1;
        self.changed = true;
        let started = self.started.unwrap_or(at);
        match self.sessions.last_mut() {
            Some(s) if s.started_at == started => {
                s.last_inbound_at = last;
                s.added += 1;
            }
            _ => self.sessions.push(Session {
                started_at: started,
                last_inbound_at: last,
                added: 1,
                opened_by: None,
            }),
        }
        let since = at - lookback;
        Facts {
            first_contact: self.count == 1,
            new_session: self.session_count == 1,
            inbound_count: self.count,
            window_expires_at: self.expires,
            consent: self.consent,
            recent_replies: self
                .recent
                .iter()
                .filter(|(_, when)| *when > since)
                .cloned()
                .collect(),
            now: at,
        }
    }
}
