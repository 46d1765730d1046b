//! One push, from HTTP body to the client's answer: send the `<push>` IQ, wait for the reply that
//! belongs to it, and decide what happened.
//!
//! The answer decides everything. `result` means the distributor took the message. `item-not-found`
//! and `feature-not-implemented` mean the app is gone: the registration is revoked, and what is
//! held for it dropped, before we say so. Anything else, including silence, a client that is
//! offline, or a lost component link, is temporary: the phone may be back in a minute, so the
//! message is held for its `TTL` (`held.rs`) and offered again later (`deliver.rs`), and the
//! sender hears `201` either way. Only `TTL: 0` means "now or never".

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
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

use crate::{
    component::Link,
    config::Config,
    deliver::Wakeups,
    held::{HeldMessages, HoldError, Message},
    metrics::METRICS,
    protocol::{Push, Urgency},
    store::Store,
    token::Claims,
};

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
pub struct Ticket {
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

/// What became of one push request.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// The client took it; `id` names the message, `ttl` is what was granted.
    Delivered { id: String, ttl: Duration },
    /// The client could not take it now; it is held for `ttl` and will be offered again.
    Held { id: String, ttl: Duration },
    /// The client could not take it now and the sender said `TTL: 0`: dropped, as RFC 8030 asks.
    Dropped { id: String },
    /// The client says the app is gone; the registration is now revoked.
    Revoked,
    /// Not deliverable now, and the store holds all it may (`delivery.max_held`).
    Full,
}

/// Why a client did not take a message now.
#[derive(Debug, PartialEq)]
pub enum Unavailable {
    /// The component link to the XMPP server is down.
    LinkDown,
    /// The client (or its server on its behalf) answered with a temporary error.
    Refused(String),
    /// No answer within `delivery.timeout`.
    Timeout,
}

/// How one offer of a message to its client went.
#[derive(Debug, PartialEq)]
pub enum Offered {
    Taken,
    /// `item-not-found` or `feature-not-implemented`: the app is gone.
    Gone,
    NotNow(Unavailable),
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("the store failed: {0}")]
    Store(#[from] crate::store::StoreError),
}

/// What a sender asks for one message, from the request's body and headers.
pub struct Request {
    pub body: Vec<u8>,
    /// `TTL` in seconds; `None` when the sender gave none.
    pub ttl: Option<u64>,
    pub topic: Option<String>,
    pub urgency: Urgency,
}

/// Sends pushes and interprets their answers. One per process, shared by every HTTP request and
/// by the redelivery of held messages.
pub struct Relay {
    link: Link,
    answers: Answers,
    store: Arc<Store>,
    held: Arc<HeldMessages>,
    component: BareJid,
    timeout: Duration,
    lifetime: Duration,
    default_ttl: Duration,
    max_ttl: Duration,
    /// Told which client has messages waiting, so they go out without waiting for a retry.
    wake: Wakeups,
    /// Random per process, so ids stay unique across restarts while late answers may still arrive.
    id_prefix: String,
    next_id: AtomicU64,
}

impl Relay {
    pub fn new(
        link: Link,
        answers: Answers,
        store: Arc<Store>,
        held: Arc<HeldMessages>,
        config: &Config,
        wake: Wakeups,
    ) -> Relay {
        Relay {
            link,
            answers,
            store,
            held,
            component: config.component.jid.clone(),
            timeout: config.delivery.timeout,
            lifetime: config.registration.lifetime,
            default_ttl: config.delivery.default_ttl,
            max_ttl: config.delivery.max_ttl,
            wake,
            id_prefix: format!("{PUSH_ID_PREFIX}{:08x}", rand::random::<u32>()),
            next_id: AtomicU64::new(0),
        }
    }

    /// Deliver one message to the client `claims` name, or hold it for later, and say which. A
    /// message that is held is on disk before this returns.
    pub async fn push(&self, claims: Claims, request: Request) -> Result<Outcome, RelayError> {
        let requested = request.ttl.map_or(self.default_ttl, Duration::from_secs);
        let ttl = requested.min(self.max_ttl);
        let id = format!(
            "{}-{}",
            self.id_prefix,
            self.next_id.fetch_add(1, Ordering::Relaxed)
        );
        let message = Message {
            id: id.clone(),
            subject: claims.subject,
            application: claims.application,
            instance: claims.instance,
            body: request.body,
            topic: request.topic,
            urgency: request.urgency,
            expires_at: SystemTime::now() + ttl,
        };
        // Behind a backlog, or with no link at all, a message waits its turn rather than trying.
        // (The paths that write to the store are boxed: they are rare, and inline they would make
        // every push in flight carry their state; docs/BENCHMARKS.md.)
        if !ttl.is_zero() && (self.held.has_any(&message.subject) || !self.link.is_up()) {
            return Box::pin(self.hold(message, ttl, true)).await;
        }
        let (offered, ticket) = self.offer(&message).await;
        match offered {
            Offered::Taken => Ok(Outcome::Delivered { id, ttl }),
            Offered::Gone => {
                Box::pin(self.forget_registration(&message)).await?;
                Ok(Outcome::Revoked)
            }
            Offered::NotNow(_) if ttl.is_zero() => Ok(Outcome::Dropped { id }),
            Offered::NotNow(why) => {
                tracing::debug!(?why, "holding a push");
                // No immediate retry: the client just could not take it, and a silent client may
                // still answer the first offer late (which then removes the held copy).
                let outcome = Box::pin(self.hold(message.clone(), ttl, false)).await?;
                // An answer that came while the message was being written still counts.
                if let Some(mut ticket) = ticket
                    && let Ok(answer) = ticket.reply.try_recv()
                {
                    return Box::pin(self.late_answer(&message, answer, ttl, outcome)).await;
                }
                Ok(outcome)
            }
        }
    }

    /// Hold `message`; with `wake`, ask for its client's backlog to be offered now.
    async fn hold(
        &self,
        message: Message,
        ttl: Duration,
        wake: bool,
    ) -> Result<Outcome, RelayError> {
        let (id, subject) = (message.id.clone(), message.subject.clone());
        match self.held.hold(message).await {
            Ok(held) => {
                if held.dropped > 0 {
                    tracing::debug!(
                        dropped = held.dropped,
                        "dropped the oldest held messages of a registration at its bound"
                    );
                }
                if wake && self.link.is_up() {
                    self.wake.wake(subject);
                }
                Ok(Outcome::Held { id, ttl })
            }
            Err(HoldError::Full) => {
                tracing::warn!("not holding a push: delivery.max_held messages are held already");
                Ok(Outcome::Full)
            }
            Err(HoldError::Store(e)) => Err(e.into()),
        }
    }

    /// The answer to a message that was held (the `held` outcome) meanwhile: it may have been
    /// delivered after all.
    async fn late_answer(
        &self,
        message: &Message,
        answer: Answer,
        ttl: Duration,
        held: Outcome,
    ) -> Result<Outcome, RelayError> {
        match answer {
            Answer::Result => {
                self.held.remove(&message.id, &message.subject).await?;
                Ok(Outcome::Delivered {
                    id: message.id.clone(),
                    ttl,
                })
            }
            Answer::Error(condition) if means_gone(&condition) => {
                self.forget_registration(message).await?;
                Ok(Outcome::Revoked)
            }
            Answer::Error(_) => Ok(held),
        }
    }

    /// Send `message` to its client and wait for the verdict, at most `delivery.timeout`. The
    /// ticket is returned while the answer may still come (a timeout), so the caller decides when
    /// to stop listening; dropping it forgets the pending answer.
    pub async fn offer(&self, message: &Message) -> (Offered, Option<Ticket>) {
        let Ok(peer) = message.subject.parse::<Jid>() else {
            // Only a token we issued gets here, and we issued it for a parsed JID.
            return (
                Offered::NotNow(Unavailable::Refused("bad subject".into())),
                None,
            );
        };
        let iq: Box<Stanza> = Box::new(
            Iq::Set {
                from: Some(self.component.clone().into()),
                to: Some(peer.clone()),
                id: message.id.clone(),
                payload: Element::from(Push {
                    application: message.application.clone(),
                    instance: message.instance.clone(),
                    data: STANDARD.encode(&message.body),
                }),
            }
            .into(),
        );
        let mut ticket = self.answers.expect(message.id.clone(), peer);
        let sent = Instant::now();
        // One deadline for queueing and answering alike: a full outgoing queue counts against it.
        let exchange = async {
            self.link.send(iq).await.ok()?;
            (&mut ticket.reply).await.ok()
        };
        let answer = match tokio::time::timeout(self.timeout, exchange).await {
            Err(_) => return (Offered::NotNow(Unavailable::Timeout), Some(ticket)),
            Ok(None) => return (Offered::NotNow(Unavailable::LinkDown), None),
            Ok(Some(answer)) => answer,
        };
        METRICS.iq_answered(sent.elapsed());
        let offered = match answer {
            Answer::Result => Offered::Taken,
            Answer::Error(condition) if means_gone(&condition) => Offered::Gone,
            Answer::Error(condition) => {
                Offered::NotNow(Unavailable::Refused(condition_name(&condition)))
            }
        };
        (offered, None)
    }

    /// The app behind `message` is gone: revoke its registration, durably, and drop what is held
    /// for it.
    pub async fn forget_registration(&self, message: &Message) -> Result<(), RelayError> {
        let now = SystemTime::now();
        let claims = Claims {
            subject: message.subject.clone(),
            application: message.application.clone(),
            instance: message.instance.clone(),
            issued_at: now,
            // Revocations live until every token they kill has expired; none outlives `lifetime`.
            expires_at: now,
        };
        self.store.revoke(&claims, now, self.lifetime).await?;
        let dropped = self.held.drop_registration(&claims).await?;
        tracing::info!(dropped, "endpoint revoked by its client");
        Ok(())
    }
}

/// Every push's IQ id starts so; other ids (keep-alive pings) are no message's.
const PUSH_ID_PREFIX: &str = "p-";

/// Whether an IQ id is one of our pushes'.
pub fn is_push_id(id: &str) -> bool {
    id.starts_with(PUSH_ID_PREFIX)
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
