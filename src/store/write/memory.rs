//! What a writer remembers between batches, so a batch of known contacts skips its read.

use super::{Inbound, contact::Contact};
use chrono::Duration;
use std::collections::HashMap;

/// What one writer remembers of the conversations it stored last, so that a batch whose
/// contacts it holds needs no read, and of the SIDs it stored, so that a redelivery still
/// gets one (which finds it stored, and the reply on record). Bounded: two generations of
/// [`MEMORY_CONTACTS`] contacts and [`MEMORY_SIDS`] SIDs.
///
/// Remembering is never trusted blindly: the write's check (see [`super::write`]) rolls it
/// back if another transaction or process touched a contact since, and the batch is then
/// read afresh. Entries are keyed by a 64-bit hash; a collision would be caught the same way.
#[derive(Default)]
pub struct Memory {
    /// The rules' lookback the remembered recent replies cover.
    lookback: Duration,
    contacts: Generations<Contact>,
    sids: Generations<()>,
    /// The days (partitions) this writer has seen exist: it asks only about others.
    pub(super) days: std::collections::BTreeSet<chrono::NaiveDate>,
}

/// Contacts remembered per generation, for each writer (a few hundred bytes each).
const MEMORY_CONTACTS: usize = 4096;
/// SIDs remembered per generation, for each writer (their hash only).
const MEMORY_SIDS: usize = 16_384;

impl Memory {
    /// A memory that knows only which days exist (for a batch of one, whose writer keeps
    /// nothing else between webhooks).
    pub fn with_days(days: std::collections::BTreeSet<chrono::NaiveDate>) -> Self {
        Memory {
            days,
            ..Memory::default()
        }
    }

    /// The days this writer has seen exist.
    pub fn days(&self) -> &std::collections::BTreeSet<chrono::NaiveDate> {
        &self.days
    }

    /// Forgets everything if the rules changed how far back they look (a longer lookback
    /// needs replies that were not kept).
    pub(super) fn rules_look_back(&mut self, lookback: Duration) {
        if lookback != self.lookback {
            *self = Memory {
                lookback,
                ..Memory::default()
            };
        }
    }

    /// What this writer remembers of the batch: each contact in key order (`None`: read
    /// it), and whether it stored one of the batch's SIDs before (then the SIDs are looked
    /// up: the batch holds a redelivery). A contact is not recalled when one of its
    /// messages is older than what is remembered of it (the clock went back: replies it
    /// should count may not have been kept).
    pub(super) fn recall(
        &mut self,
        batch: &[Inbound],
        firsts: &[usize],
        keys: &[(&str, &str)],
    ) -> Recalled {
        let mut contacts: Vec<Option<Contact>> = keys
            .iter()
            .map(|key| self.contacts.take(hash(key)))
            .collect();
        let mut stored_before = false;
        for &i in firsts {
            let msg = &batch[i].msg;
            stored_before |= self.sids.contains(hash(msg.sid.as_str()));
            let k = keys
                .binary_search(&(msg.to.expose(), msg.from.expose()))
                .expect("every contact of the batch has a key");
            if contacts[k]
                .as_ref()
                .is_some_and(|c| c.last.is_some_and(|last| last > batch[i].at))
            {
                contacts[k] = None;
            }
        }
        Recalled {
            contacts,
            stored_before,
        }
    }

    pub(super) fn forget(&mut self, keys: &[(&str, &str)]) {
        for key in keys {
            self.contacts.take(hash(key));
        }
    }

    /// After a write: the contacts as it left them, and its SIDs.
    pub(super) fn remember(
        &mut self,
        keys: &[(&str, &str)],
        contacts: Vec<Contact>,
        firsts: &[usize],
        batch: &[Inbound],
        lookback: Duration,
    ) {
        for (key, contact) in keys.iter().zip(contacts) {
            self.contacts
                .insert(hash(key), contact.settled(lookback), MEMORY_CONTACTS);
        }
        for &i in firsts {
            self.sids
                .insert(hash(batch[i].msg.sid.as_str()), (), MEMORY_SIDS);
        }
    }
}

/// What a writer remembers of a batch (see [`Memory::recall`]).
pub(super) struct Recalled {
    pub contacts: Vec<Option<Contact>>,
    pub stored_before: bool,
}

impl Recalled {
    /// Nothing remembered: every contact and SID is read.
    pub(super) fn nothing(keys: usize) -> Self {
        Recalled {
            contacts: std::iter::repeat_with(|| None).take(keys).collect(),
            stored_before: true,
        }
    }

    /// The batch needs no read: every contact is remembered, and none of its SIDs was
    /// stored by this writer (one stored elsewhere fails the write's claim, and the batch
    /// is read again).
    pub(super) fn is_complete(&self) -> bool {
        !self.stored_before && self.contacts.iter().all(Option::is_some)
    }
}

fn hash(key: impl std::hash::Hash) -> u64 {
    use std::hash::{BuildHasher, RandomState};
    // One fixed seed per process: the same key hashes the same in every batch.
    static SEED: std::sync::OnceLock<RandomState> = std::sync::OnceLock::new();
    SEED.get_or_init(RandomState::new).hash_one(key)
}

/// A map that forgets its oldest half: when the young generation is full it becomes the old
/// one, and the old one is dropped. What is used again moves back to the young generation.
struct Generations<V> {
    young: HashMap<u64, V>,
    old: HashMap<u64, V>,
}

impl<V> Default for Generations<V> {
    fn default() -> Self {
        Generations {
            young: HashMap::new(),
            old: HashMap::new(),
        }
    }
}

impl<V> Generations<V> {
    fn take(&mut self, key: u64) -> Option<V> {
        self.young.remove(&key).or_else(|| self.old.remove(&key))
    }

    fn contains(&self, key: u64) -> bool {
        self.young.contains_key(&key) || self.old.contains_key(&key)
    }

    fn insert(&mut self, key: u64, value: V, capacity: usize) {
        if self.young.len() >= capacity {
            self.old = std::mem::take(&mut self.young);
        }
        self.young.insert(key, value);
    }
}
