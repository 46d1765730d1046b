//! What clients say in the presence the XMPP server forwards to xup: which are offline, and which
//! take only messages of some urgency for now.
//!
//! A client that sends xup directed presence when it comes online (Conversations does, at every
//! new session) is sent an `unavailable` presence on its behalf when that session ends (RFC 6121
//! §4.6.3). Until it is back, a push for it is held at once, without an IQ that its server would
//! only bounce. Nothing else is known: a client that never sent xup presence is simply tried.
//!
//! A client may also put `<urgency xmlns="urn:xup:urgency:0" minimum="high"/>` in that presence
//! (RFC 8030 §5.3's words: `very-low`, `low`, `normal`, `high`): a phone on a low battery, or in
//! do-not-disturb, takes only messages at least that urgent until it says otherwise. The others
//! are held, not sent, and go out once a presence without the element (or with a lower minimum)
//! comes, or they expire. The sender hears `201` with its `TTL`, as for any held message. A
//! presence without the element, and the end of the session (the `unavailable` the server sends
//! for it), mean "everything" again.
//!
//! The tables are memory only, bounded, and forgotten whenever the component link drops, because
//! the server forgets its directed-presence bookkeeping for a component that goes away. Past the
//! bound a client is not recorded, which costs an IQ and a bounce (or, for a minimum, a message
//! sent that the client asked to wait), never a message.

use std::{
    collections::{HashMap, HashSet},
    sync::{Mutex, MutexGuard},
};

use xso::{AsXml, FromXml};

use crate::message::Urgency;

/// The namespace of the minimum-urgency element, advertised in disco#info.
pub const URGENCY_NS: &str = "urn:xup:urgency:0";

/// `<urgency minimum="…"/>`, in a client's presence to xup.
#[derive(FromXml, AsXml, Debug, Clone, PartialEq)]
#[xml(namespace = URGENCY_NS, name = "urgency")]
pub struct MinimumUrgency {
    #[xml(attribute)]
    pub minimum: String,
}

/// Clients recorded at most in each table; about 100 bytes each.
const MAX_KNOWN_OFFLINE: usize = 100_000;

/// The full JIDs known to be offline (written by the deliverer), and the minimum urgency of those
/// that asked for one (written by the router, as each presence is read). The relay reads both.
#[derive(Default)]
pub struct Presence {
    offline: Mutex<HashSet<String>>,
    minimum: Mutex<HashMap<String, Urgency>>,
}

impl Presence {
    fn lock(&self) -> MutexGuard<'_, HashSet<String>> {
        self.offline.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn minimums(&self) -> MutexGuard<'_, HashMap<String, Urgency>> {
        self.minimum.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The least urgent message `subject` takes now: [`Urgency::VeryLow`] (everything) unless it
    /// said otherwise.
    pub fn minimum_urgency(&self, subject: &str) -> Urgency {
        self.minimums()
            .get(subject)
            .copied()
            .unwrap_or(Urgency::VeryLow)
    }

    /// `subject` said, in its latest presence, which messages it takes (`None`: all of them).
    pub fn set_minimum_urgency(&self, subject: &str, minimum: Option<Urgency>) {
        let mut minimums = self.minimums();
        match minimum {
            Some(Urgency::VeryLow) | None => {
                minimums.remove(subject);
            }
            Some(minimum)
                if minimums.len() < MAX_KNOWN_OFFLINE || minimums.contains_key(subject) =>
            {
                minimums.insert(subject.to_owned(), minimum);
            }
            Some(_) => {}
        }
    }

    /// Whether `subject` (a full JID) said it went away and has not been heard of since.
    pub fn is_offline(&self, subject: &str) -> bool {
        self.lock().contains(subject)
    }

    /// `subject`'s session ended.
    pub fn went_offline(&self, subject: String) {
        let mut offline = self.lock();
        if offline.len() < MAX_KNOWN_OFFLINE {
            offline.insert(subject);
        }
    }

    /// `subject` is there: it sent presence, answered a push or registered.
    pub fn came_back(&self, subject: &str) {
        self.lock().remove(subject);
    }

    /// The link to the server dropped: what it told us no longer holds.
    pub fn forget_all(&self) {
        self.lock().clear();
        self.minimums().clear();
    }

    /// How many clients are known to be offline.
    pub fn offline_count(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offline_until_heard_of_and_forgotten_with_the_link() {
        let presence = Presence::default();
        let phone = "juliet@example.org/phone";
        assert!(!presence.is_offline(phone), "unknown is not offline");
        presence.went_offline(phone.into());
        assert!(presence.is_offline(phone));
        assert!(!presence.is_offline("juliet@example.org/laptop"));
        presence.came_back(phone);
        assert!(!presence.is_offline(phone));
        presence.went_offline(phone.into());
        presence.forget_all();
        assert_eq!(presence.offline_count(), 0);
    }

    #[test]
    fn a_minimum_holds_until_the_client_says_otherwise_or_leaves() {
        let presence = Presence::default();
        let phone = "juliet@example.org/phone";
        assert_eq!(presence.minimum_urgency(phone), Urgency::VeryLow);
        presence.set_minimum_urgency(phone, Some(Urgency::High));
        assert_eq!(presence.minimum_urgency(phone), Urgency::High);
        assert_eq!(
            presence.minimum_urgency("juliet@example.org/laptop"),
            Urgency::VeryLow
        );
        presence.set_minimum_urgency(phone, None);
        assert_eq!(presence.minimum_urgency(phone), Urgency::VeryLow);
        presence.set_minimum_urgency(phone, Some(Urgency::Normal));
        presence.forget_all();
        assert_eq!(presence.minimum_urgency(phone), Urgency::VeryLow);
    }

    #[test]
    fn the_table_is_bounded() {
        let presence = Presence::default();
        for i in 0..MAX_KNOWN_OFFLINE + 10 {
            presence.went_offline(format!("user{i}@example.org/phone"));
        }
        assert_eq!(presence.offline_count(), MAX_KNOWN_OFFLINE);
    }
}
