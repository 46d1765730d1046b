//! Pushes in flight: `<push>` IQs sent to a client and not answered yet.
//!
//! Whoever sends a push (the relay for a fresh message, the deliverer for a held one) registers it
//! here by IQ id, which is the message's id; the component link hands every incoming IQ answer
//! here. An answer finds its push only if it comes from the full JID the push went to, so nobody
//! can answer on a client's behalf.
//!
//! A sender of a fresh message hears within `delivery.answer_within`, but the phone may answer
//! later. Such a push stays here, *detached* from any waiter, until `delivery.timeout`: its answer
//! still counts (a late `result` removes the held copy, a late `item-not-found` revokes), and while
//! it is here the message is in flight and is not offered again. One offer of a message at a time
//! is what keeps a client from getting it twice.
//!
//! An answered push stays in the table until whoever handles the answer is done with it (the
//! ticket is dropped, or [`InFlight::settle`] is called), so a message whose `result` has arrived
//! but whose held copy is not yet removed is never taken for one that can be offered again.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
    time::Instant,
};

use tokio::sync::oneshot;
use xmpp_parsers::{jid::Jid, stanza_error::DefinedCondition};

/// Every push's IQ id starts so; other ids (keep-alive pings) are no message's.
pub const PUSH_ID_PREFIX: &str = "p-";

/// Whether an IQ id is one of our pushes'.
pub fn is_push_id(id: &str) -> bool {
    id.starts_with(PUSH_ID_PREFIX)
}

/// Names messages: the id of a push's IQ, of a sum7 `<message>`, and of `Location`. Random per
/// process, so ids stay unique across restarts while late answers may still arrive.
pub struct MessageIds {
    prefix: String,
    next: std::sync::atomic::AtomicU64,
}

impl Default for MessageIds {
    fn default() -> Self {
        MessageIds {
            prefix: format!("{PUSH_ID_PREFIX}{:08x}", rand::random::<u32>()),
            next: Default::default(),
        }
    }
}

impl MessageIds {
    pub fn next(&self) -> String {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{}-{n}", self.prefix)
    }
}

/// How a client answered a push.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Result,
    Error(DefinedCondition),
}

impl Answer {
    /// `item-not-found` or `feature-not-implemented`: the distributor's "no such app here any more".
    pub fn means_gone(&self) -> bool {
        matches!(
            self,
            Answer::Error(DefinedCondition::ItemNotFound | DefinedCondition::FeatureNotImplemented)
        )
    }
}

/// A push whose sender stopped waiting, with what is needed to act on its answer or its silence.
#[derive(Debug, Clone, PartialEq)]
pub struct Detached {
    /// The message id, which is also the IQ id.
    pub id: String,
    /// The full JID it went to.
    pub subject: String,
    pub application: String,
    pub instance: String,
    /// When the push was sent.
    pub sent: Instant,
}

/// What became of an incoming answer.
#[derive(Debug, PartialEq)]
pub enum Resolved {
    /// Handed to the push's waiter.
    Claimed,
    /// The push's sender had stopped waiting: the answer is the caller's to act on.
    Detached(Detached),
    /// No push of ours waits for it from that JID (an answer after `delivery.timeout`, a forged
    /// one, or one to a keep-alive ping).
    Unknown,
}

struct Entry {
    peer: Jid,
    state: State,
}

enum State {
    /// A ticket waits for the answer.
    Waiting(oneshot::Sender<Answer>),
    /// Nobody waits; the answer is reported, or the push expires at `until`. Boxed: every entry
    /// is as large as its largest state, and most entries are `Waiting` (ten thousand in a burst).
    Detached { push: Box<Detached>, until: Instant },
    /// Answered; kept until the answer has been acted on. `until` is when a detached push would
    /// have expired: a safety net should nobody settle it.
    Answered { until: Option<Instant> },
}

/// The table of pushes in flight. Cheap to clone; every clone is the same table.
#[derive(Clone, Default)]
pub struct InFlight {
    entries: Arc<Mutex<HashMap<String, Entry>>>,
}

/// A claim on the answer to one push. Dropping it forgets the push, so the table never outgrows
/// the pushes actually in flight; [`Ticket::detach`] keeps it without a waiter instead.
pub struct Ticket {
    id: String,
    table: InFlight,
    reply: oneshot::Receiver<Answer>,
    detached: bool,
}

impl InFlight {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Expect an answer from `peer` to the push with IQ id `id`.
    pub fn expect(&self, id: String, peer: Jid) -> Ticket {
        let (reply, receiver) = oneshot::channel();
        let entry = Entry {
            peer,
            state: State::Waiting(reply),
        };
        self.lock().insert(id.clone(), entry);
        Ticket {
            id,
            table: self.clone(),
            reply: receiver,
            detached: false,
        }
    }

    /// Whether the message with this id is being offered right now.
    pub fn contains(&self, id: &str) -> bool {
        self.lock().contains_key(id)
    }

    /// How many pushes are in flight, waited for or detached.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Hand an incoming `result` or `error` to the push it answers. An answer is never itself
    /// answered (RFC 6120 §8.2.3), so one that belongs to nobody is only reported. A detached
    /// push's answer must be [`settle`](InFlight::settle)d once acted on.
    pub fn resolve(&self, id: &str, from: Option<&Jid>, answer: Answer) -> Resolved {
        let mut entries = self.lock();
        let Some(entry) = entries.get_mut(id).filter(|e| from == Some(&e.peer)) else {
            return Resolved::Unknown;
        };
        let state = std::mem::replace(&mut entry.state, State::Answered { until: None });
        match state {
            State::Waiting(reply) => match reply.send(answer) {
                Ok(()) => Resolved::Claimed,
                Err(_) => Resolved::Unknown,
            },
            State::Detached { push, until } => {
                entry.state = State::Answered { until: Some(until) };
                Resolved::Detached(*push)
            }
            answered @ State::Answered { .. } => {
                entry.state = answered;
                Resolved::Unknown
            }
        }
    }

    /// The answer to detached push `id` has been acted on: it is no longer in flight.
    pub fn settle(&self, id: &str) {
        let mut entries = self.lock();
        if let Some(Entry {
            state: State::Answered { until: Some(_) },
            ..
        }) = entries.get(id)
        {
            entries.remove(id);
        }
    }

    /// Forget the detached pushes whose time ran out by `now`, and return those never answered:
    /// each was offered and not taken.
    pub fn expire(&self, now: Instant) -> Vec<Detached> {
        let mut expired = Vec::new();
        self.lock().retain(|_, entry| match &entry.state {
            State::Detached { push, until } if *until <= now => {
                expired.push(Detached::clone(push));
                false
            }
            State::Answered { until: Some(until) } => *until > now,
            _ => true,
        });
        expired
    }

    /// The component link went down: nothing in flight can be answered any more.
    pub fn clear(&self) {
        self.lock().clear();
    }
}

impl Ticket {
    /// The client's answer; `None` if the push was forgotten (the link went down). No internal
    /// timeout: the caller bounds the wait, and may then detach or drop the ticket.
    pub async fn answer(&mut self) -> Option<Answer> {
        (&mut self.reply).await.ok()
    }

    /// Stop waiting but keep the push in flight until `until`, as `push` (with the message's
    /// application and instance) for whoever handles its answer or its silence later. If the
    /// answer came in the meantime it is returned instead, for the caller to act on before it
    /// drops the ticket.
    pub fn detach(&mut self, push: Detached, until: Instant) -> Option<Answer> {
        let mut entries = self.table.lock();
        match entries.get_mut(&self.id) {
            Some(entry) if matches!(entry.state, State::Waiting(_)) => {
                entry.state = State::Detached {
                    push: Box::new(push),
                    until,
                };
                self.detached = true;
                None
            }
            // Answers are handed over under the same lock, so one that came is in the channel.
            _ => self.reply.try_recv().ok(),
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.detached {
            self.table.lock().remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn jid(s: &str) -> Jid {
        s.parse().expect("jid")
    }

    fn detached(id: &str, sent: Instant) -> Detached {
        Detached {
            id: id.into(),
            subject: "juliet@example.org/phone".into(),
            application: "app".into(),
            instance: "i".into(),
            sent,
        }
    }

    #[tokio::test]
    async fn an_answer_from_another_jid_is_not_taken() {
        let table = InFlight::default();
        let mut ticket = table.expect("p-1".into(), jid("juliet@example.org/phone"));
        let eve = jid("eve@example.org/x");
        assert_eq!(
            table.resolve("p-1", Some(&eve), Answer::Result),
            Resolved::Unknown
        );
        assert_eq!(
            table.resolve("p-1", None, Answer::Result),
            Resolved::Unknown
        );
        let juliet = jid("juliet@example.org/phone");
        assert_eq!(
            table.resolve("p-1", Some(&juliet), Answer::Result),
            Resolved::Claimed
        );
        assert_eq!(ticket.answer().await, Some(Answer::Result));
    }

    #[test]
    fn a_dropped_ticket_leaves_nothing_behind() {
        let table = InFlight::default();
        drop(table.expect("p-1".into(), jid("juliet@example.org/phone")));
        assert!(table.is_empty());
        let juliet = jid("juliet@example.org/phone");
        assert_eq!(
            table.resolve("p-1", Some(&juliet), Answer::Result),
            Resolved::Unknown
        );
    }

    #[test]
    fn a_detached_push_stays_in_flight_until_answered_or_expired() {
        let table = InFlight::default();
        let juliet = jid("juliet@example.org/phone");
        let now = Instant::now();
        let later = now + Duration::from_secs(10);
        for id in ["p-1", "p-2"] {
            let mut ticket = table.expect(id.into(), juliet.clone());
            assert_eq!(ticket.detach(detached(id, now), later), None);
        }
        assert!(table.contains("p-1") && table.contains("p-2"));
        assert_eq!(
            table.resolve("p-1", Some(&juliet), Answer::Result),
            Resolved::Detached(detached("p-1", now))
        );
        assert_eq!(
            table.resolve("p-1", Some(&juliet), Answer::Result),
            Resolved::Unknown,
            "answered once"
        );
        assert!(
            table.contains("p-1"),
            "in flight until its answer is acted on"
        );
        table.settle("p-1");
        assert!(!table.contains("p-1"));
        assert!(table.expire(now).is_empty(), "not yet");
        assert_eq!(table.expire(later), vec![detached("p-2", now)]);
        assert!(table.is_empty());
    }

    #[test]
    fn an_answer_that_beat_the_detach_is_handed_back() {
        let table = InFlight::default();
        let juliet = jid("juliet@example.org/phone");
        let mut ticket = table.expect("p-1".into(), juliet.clone());
        assert_eq!(
            table.resolve("p-1", Some(&juliet), Answer::Result),
            Resolved::Claimed
        );
        let now = Instant::now();
        assert_eq!(
            ticket.detach(detached("p-1", now), now),
            Some(Answer::Result)
        );
        assert!(table.contains("p-1"), "in flight until the ticket goes");
        drop(ticket);
        assert!(table.is_empty());
    }

    #[test]
    fn gone_means_item_not_found_or_feature_not_implemented() {
        assert!(Answer::Error(DefinedCondition::ItemNotFound).means_gone());
        assert!(Answer::Error(DefinedCondition::FeatureNotImplemented).means_gone());
        assert!(!Answer::Error(DefinedCondition::ServiceUnavailable).means_gone());
        assert!(!Answer::Result.means_gone());
    }
}
