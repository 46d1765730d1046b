//! One push, from HTTP body to the client's answer: send the `<push>` IQ, wait for the reply that
//! belongs to it, and decide what happened.
//!
//! The answer decides everything. `result` means the distributor took the message. `item-not-found`
//! and `feature-not-implemented` mean the app is gone: the registration is revoked before we say so.
//! Anything else, including silence, a client that is offline, or a lost component link, is
//! temporary: the phone may be back in a minute, so the sender must be told to retry, never that
//! the endpoint is dead.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use base64::{Engine, engine::general_purpose::STANDARD};
use tokio::sync::oneshot;
use xmpp_parsers::{
    iq::Iq,
    jid::{BareJid, Jid},
    minidom::Element,
    stanza::Stanza,
    stanza_error::DefinedCondition,
};

use crate::{component::Link, protocol::Push, store::Store, token::Claims};

/// How a client answered an IQ we sent it.
#[derive(Debug)]
pub enum Answer {
    Result,
    Error(DefinedCondition),
}

struct Waiting {
    peer: Jid,
    reply: oneshot::Sender<Answer>,
}

/// IQs awaiting an answer, by id. Shared by the relay (which sends) and the component session (which
/// receives), so answers find their waiter whichever connection they arrive on.
#[derive(Clone, Default)]
pub struct Answers {
    waiting: Arc<Mutex<HashMap<String, Waiting>>>,
}

/// A claim on the answer to one IQ. Dropping it (a timeout, or the HTTP client going away) removes
/// the entry, so the map never outgrows the pushes actually in flight.
struct Ticket {
    id: String,
    answers: Answers,
    reply: oneshot::Receiver<Answer>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.answers.lock().remove(&self.id);
    }
}

impl Answers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Waiting>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn expect(&self, id: String, peer: Jid) -> Ticket {
        let (reply, receiver) = oneshot::channel();
        self.lock().insert(id.clone(), Waiting { peer, reply });
        Ticket {
            id,
            answers: self.clone(),
            reply: receiver,
        }
    }

    /// Hand an incoming `result` or `error` to whoever waits for `id`. An answer is only accepted
    /// from the JID the IQ was sent to, so nobody can answer on a client's behalf. Returns whether
    /// it was taken; one nobody waits for is dropped (an IQ answer is never answered).
    pub fn resolve(&self, id: &str, from: Option<&Jid>, answer: Answer) -> bool {
        let mut waiting = self.lock();
        match waiting.get(id) {
            Some(w) if from == Some(&w.peer) => {}
            _ => return false,
        }
        match waiting.remove(id) {
            Some(w) => w.reply.send(answer).is_ok(),
            None => false,
        }
    }

    /// The component link went down: no answer can arrive for what is waiting.
    pub fn fail_all(&self) {
        self.lock().clear();
    }
}

/// What became of one push.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// The client took it; `id` names the message.
    Delivered { id: String },
    /// The client says the app is gone; the registration is now revoked.
    Revoked,
    /// Not delivered now, for a reason that may pass.
    Unavailable(Unavailable),
}

#[derive(Debug, PartialEq)]
pub enum Unavailable {
    /// The component link to the XMPP server is down.
    LinkDown,
    /// The client (or its server on its behalf) answered with a temporary error.
    Refused(String),
    /// No answer within `delivery.timeout`.
    Timeout,
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("could not record the revocation: {0}")]
    Store(#[from] crate::store::StoreError),
}

/// Sends pushes and interprets their answers. One per process, shared by every HTTP request.
pub struct Relay {
    link: Link,
    answers: Answers,
    store: Arc<Store>,
    component: BareJid,
    timeout: Duration,
    lifetime: Duration,
    /// Random per process, so ids stay unique across restarts while late answers may still arrive.
    id_prefix: String,
    next_id: AtomicU64,
}

impl Relay {
    pub fn new(
        link: Link,
        answers: Answers,
        store: Arc<Store>,
        component: BareJid,
        timeout: Duration,
        lifetime: Duration,
    ) -> Relay {
        Relay {
            link,
            answers,
            store,
            component,
            timeout,
            lifetime,
            id_prefix: format!("p-{:08x}", rand::random::<u32>()),
            next_id: AtomicU64::new(0),
        }
    }

    /// Deliver `body` to the client `claims` name and wait for its verdict, at most
    /// `delivery.timeout`. Dropping the future forgets the pending answer; the IQ may still reach
    /// the client.
    pub async fn push(&self, claims: &Claims, body: &[u8]) -> Result<Outcome, RelayError> {
        let Ok(peer) = claims.subject.parse::<Jid>() else {
            // Only a token we issued gets here, and we issued it for a parsed JID.
            return Ok(Outcome::Unavailable(Unavailable::Refused(
                "bad subject".into(),
            )));
        };
        let id = format!(
            "{}-{}",
            self.id_prefix,
            self.next_id.fetch_add(1, Ordering::Relaxed)
        );
        let iq: Box<Stanza> = Box::new(
            Iq::Set {
                from: Some(self.component.clone().into()),
                to: Some(peer.clone()),
                id: id.clone(),
                payload: Element::from(Push {
                    application: claims.application.clone(),
                    instance: claims.instance.clone(),
                    data: STANDARD.encode(body),
                }),
            }
            .into(),
        );
        let mut ticket = self.answers.expect(id.clone(), peer);
        // One deadline for queueing and answering alike: a full outgoing queue counts against it.
        let exchange = async {
            self.link.send(iq).await.ok()?;
            (&mut ticket.reply).await.ok()
        };
        let answer = match tokio::time::timeout(self.timeout, exchange).await {
            Err(_) => return Ok(Outcome::Unavailable(Unavailable::Timeout)),
            Ok(None) => return Ok(Outcome::Unavailable(Unavailable::LinkDown)),
            Ok(Some(answer)) => answer,
        };
        match answer {
            Answer::Result => Ok(Outcome::Delivered { id }),
            Answer::Error(condition) if means_gone(&condition) => {
                self.store
                    .revoke(claims, SystemTime::now(), self.lifetime)
                    .await?;
                Ok(Outcome::Revoked)
            }
            Answer::Error(condition) => Ok(Outcome::Unavailable(Unavailable::Refused(
                condition_name(&condition),
            ))),
        }
    }
}

/// The distributor's way of saying "no such app here any more".
fn means_gone(condition: &DefinedCondition) -> bool {
    matches!(
        condition,
        DefinedCondition::ItemNotFound | DefinedCondition::FeatureNotImplemented
    )
}

fn condition_name(condition: &DefinedCondition) -> String {
    xmpp_parsers::minidom::Element::from(condition.clone())
        .name()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jid(s: &str) -> Jid {
        s.parse().expect("jid")
    }

    #[tokio::test]
    async fn an_answer_from_another_jid_is_not_taken() {
        let answers = Answers::default();
        let mut ticket = answers.expect("p-1".into(), jid("juliet@example.org/phone"));
        assert!(!answers.resolve("p-1", Some(&jid("eve@example.org/x")), Answer::Result));
        assert!(!answers.resolve("p-1", None, Answer::Result));
        assert!(answers.resolve(
            "p-1",
            Some(&jid("juliet@example.org/phone")),
            Answer::Result
        ));
        assert!(matches!(ticket.reply.try_recv(), Ok(Answer::Result)));
    }

    #[test]
    fn a_dropped_ticket_leaves_nothing_behind() {
        let answers = Answers::default();
        drop(answers.expect("p-1".into(), jid("juliet@example.org/phone")));
        assert!(answers.lock().is_empty());
        assert!(!answers.resolve(
            "p-1",
            Some(&jid("juliet@example.org/phone")),
            Answer::Result
        ));
    }

    #[test]
    fn conditions_have_their_xml_names() {
        assert_eq!(
            condition_name(&DefinedCondition::ServiceUnavailable),
            "service-unavailable"
        );
    }
}
