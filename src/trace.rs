//! What happened to an account's pushes lately, for its user: the answer to "why don't I get
//! notifications?" that `unifiedpush-delivery-trace` (`commands/trace.rs`) reads out.
//!
//! Each account keeps its last [`EVENTS_PER_ACCOUNT`] events: a message accepted, offered to a
//! client and answered (and with what; one event, as every push is), held (and why), dropped, or
//! its app gone. Two events for a push delivered at once keep the push path's cost small. An event names the
//! message by its id and the app by the first characters of its hashed name, never the content,
//! and is memory only: a restart forgets it, as it forgets nothing anyone relies on.
//!
//! Memory is bounded twice: per account, and in accounts. The accounts live in two generations;
//! when the current one is full it becomes the previous one and the previous one is dropped, so an
//! account heard of recently is always there and the table never holds more than
//! [`MAX_ACCOUNTS`], at a cost of one hash lookup or two per event.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Mutex, MutexGuard},
    time::{Duration, SystemTime},
};

use crate::message::Urgency;

/// Events kept per account: enough for a day of a chat app's notifications, small enough to read
/// on a phone.
pub const EVENTS_PER_ACCOUNT: usize = 50;

/// Accounts traced at most, over both generations; at about 100 bytes an event, a few MiB.
pub const MAX_ACCOUNTS: usize = 2048;

/// How many characters of an app's hashed name an event shows: enough to tell a user's apps
/// apart, not enough to matter to anyone else.
const APP_HINT: usize = 8;

/// Something that happened to one message.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A sender's push was accepted for the client.
    Accepted {
        urgency: Urgency,
        ttl: Duration,
        /// Its sender's VAPID contact, when it signed and said one.
        sender: Option<String>,
    },
    /// Handed to the XMPP server as a `<message>` (sum7's dialect), which nobody answers.
    Sent { sender: Option<String> },
    /// Held until its `TTL` ran out, and never taken.
    Expired,
    /// Offered to the client (an IQ), and it took it.
    Taken,
    /// Offered to the client, and it did not take it now: the condition it answered, or no answer.
    NotTaken(String),
    /// Kept for later, and why.
    Held(&'static str),
    /// Not kept: the sender said `TTL: 0`, or the store holds all it may.
    Dropped(&'static str),
    /// The client said the app is gone, or it was revoked since: its endpoint is dead.
    Revoked,
}

/// One event, with when it happened and what it was about.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub at: SystemTime,
    /// The client's resource.
    pub resource: String,
    pub app: String,
    pub message: String,
    pub event: Event,
}

impl Entry {
    /// One line a user can read.
    pub fn line(&self) -> String {
        let what = match &self.event {
            Event::Accepted { urgency, ttl, .. } => format!(
                "accepted (urgency {}, kept up to {} s)",
                urgency.as_str(),
                ttl.as_secs()
            ),
            Event::Sent { .. } => "handed to your server as a message (no answer comes)".into(),
            Event::Expired => "expired: its TTL ran out before the client took it".into(),
            Event::Taken => "offered and taken by the client".into(),
            Event::NotTaken(why) => format!("offered, not taken: {why}"),
            Event::Held(why) => format!("held: {why}"),
            Event::Dropped(why) => format!("dropped: {why}"),
            Event::Revoked => "not delivered: the app's endpoint is revoked".into(),
        };
        format!(
            "{} {} app {} message {}: {what}",
            humantime::format_rfc3339_seconds(self.at),
            self.resource,
            self.app,
            self.message
        )
    }
}

/// How an event names an app: the first characters of its hashed name.
pub fn app_hint(application: &str) -> String {
    match application.get(..APP_HINT) {
        Some(hint) => hint.to_owned(),
        None => application.chars().take(APP_HINT).collect(),
    }
}

type Accounts = HashMap<String, VecDeque<Entry>>;

/// The accounts' events. Shared by whoever records (the dialects) and the command that reads.
#[derive(Default)]
pub struct Traces {
    generations: Mutex<(Accounts, Accounts)>,
}

impl Traces {
    fn lock(&self) -> MutexGuard<'_, (Accounts, Accounts)> {
        self.generations.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Record `event` for message `message` of app `application`, sent to client `subject` (a
    /// full JID).
    pub fn record(&self, subject: &str, application: &str, message: &str, event: Event) {
        let (account, resource) = subject.split_once('/').unwrap_or((subject, ""));
        let entry = Entry {
            at: SystemTime::now(),
            resource: resource.to_owned(),
            app: app_hint(application),
            message: message.to_owned(),
            event,
        };
        let mut generations = self.lock();
        let (current, previous) = &mut *generations;
        // On the push path: an account already traced costs no allocation for its key.
        let events = match current.get_mut(account) {
            Some(events) => events,
            None => {
                let moved = previous.remove(account).unwrap_or_default();
                if current.len() >= MAX_ACCOUNTS / 2 {
                    *previous = std::mem::take(current);
                }
                current.entry(account.to_owned()).or_insert(moved)
            }
        };
        if events.len() == EVENTS_PER_ACCOUNT {
            events.pop_front();
        }
        events.push_back(entry);
    }

    /// `account`'s events (a bare JID), oldest first.
    pub fn of(&self, account: &str) -> Vec<Entry> {
        let generations = self.lock();
        let (current, previous) = &*generations;
        current
            .get(account)
            .or_else(|| previous.get(account))
            .map(|events| events.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// When `account`'s client `resource` was last pushed a message for `application`, and by
    /// whom (a VAPID contact), as far as the trace still tells.
    pub fn last_push(
        &self,
        account: &str,
        resource: &str,
        application: &str,
    ) -> Option<(SystemTime, Option<String>)> {
        let app = app_hint(application);
        self.of(account).into_iter().rev().find_map(|entry| {
            let sender = match entry.event {
                Event::Accepted { sender, .. } | Event::Sent { sender } => sender,
                _ => return None,
            };
            (entry.resource == resource && entry.app == app).then_some((entry.at, sender))
        })
    }

    /// How many accounts are traced now.
    pub fn accounts(&self) -> usize {
        let generations = self.lock();
        generations.0.len() + generations.1.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_account_keeps_its_latest_events_and_no_one_elses() {
        let traces = Traces::default();
        for n in 0..EVENTS_PER_ACCOUNT + 5 {
            traces.record(
                "juliet@example.org/phone",
                "bK3sdmrbtj3bf6XA2S12b8jJUA5TT1dhPEyeoZfVSRM=",
                &format!("p-{n}"),
                Event::Taken,
            );
        }
        traces.record("romeo@example.org/pc", "app", "p-x", Event::Taken);
        let juliet = traces.of("juliet@example.org");
        assert_eq!(juliet.len(), EVENTS_PER_ACCOUNT);
        assert_eq!(juliet[0].message, "p-5", "the oldest went first");
        assert_eq!(juliet[0].resource, "phone");
        assert_eq!(juliet[0].app, "bK3sdmrb", "only a hint of the app");
        assert_eq!(traces.of("romeo@example.org").len(), 1);
        assert!(traces.of("nobody@example.org").is_empty());
    }

    #[test]
    fn the_accounts_are_bounded_and_the_recent_ones_kept() {
        let traces = Traces::default();
        traces.record("kept@example.org/phone", "app", "p-0", Event::Taken);
        for n in 0..MAX_ACCOUNTS * 3 {
            traces.record(
                &format!("user{n}@example.org/phone"),
                "app",
                "p",
                Event::Taken,
            );
            // An account that keeps being heard of is never forgotten.
            traces.record("kept@example.org/phone", "app", "p", Event::Taken);
        }
        assert!(traces.accounts() <= MAX_ACCOUNTS, "{}", traces.accounts());
        assert!(!traces.of("kept@example.org").is_empty());
        assert!(traces.of("user0@example.org").is_empty(), "long forgotten");
    }

    #[test]
    fn a_line_says_when_which_client_which_message_and_what() {
        let entry = Entry {
            at: SystemTime::UNIX_EPOCH + Duration::from_secs(86400),
            resource: "phone".into(),
            app: "bK3sdmrb".into(),
            message: "p-1".into(),
            event: Event::NotTaken("service-unavailable".into()),
        };
        assert_eq!(
            entry.line(),
            "1970-01-02T00:00:00Z phone app bK3sdmrb message p-1: offered, not taken: \
             service-unavailable"
        );
    }
}
