//! Which clients are known to be offline, from the presence the XMPP server forwards to xup.
//!
//! A client that sends xup directed presence when it comes online (Conversations does, at every
//! new session) is sent an `unavailable` presence on its behalf when that session ends (RFC 6121
//! §4.6.3). Until it is back, a push for it is held at once, without an IQ that its server would
//! only bounce. Nothing else is known: a client that never sent xup presence is simply tried.
//!
//! The table is memory only, bounded, and forgotten whenever the component link drops, because the
//! server forgets its directed-presence bookkeeping for a component that goes away. Past the bound
//! a client is not recorded, which costs an IQ and a bounce, never a message.

use std::{
    collections::HashSet,
    sync::{Mutex, MutexGuard},
};

/// Clients recorded as offline at most; about 100 bytes each.
const MAX_KNOWN_OFFLINE: usize = 100_000;

/// The full JIDs known to be offline. Shared by the relay (reads) and the deliverer (writes).
#[derive(Default)]
pub struct Presence {
    offline: Mutex<HashSet<String>>,
}

impl Presence {
    fn lock(&self) -> MutexGuard<'_, HashSet<String>> {
        self.offline.lock().unwrap_or_else(|e| e.into_inner())
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
    fn the_table_is_bounded() {
        let presence = Presence::default();
        for i in 0..MAX_KNOWN_OFFLINE + 10 {
            presence.went_offline(format!("user{i}@example.org/phone"));
        }
        assert_eq!(presence.offline_count(), MAX_KNOWN_OFFLINE);
    }
}
