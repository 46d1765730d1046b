//! One push, from HTTP body to the client's answer: send the `<push>` IQ, wait for the reply that
//! belongs to it, and decide what happened.
//!
//! The answer decides everything. `result` means the distributor took the message. `item-not-found`
//! and `feature-not-implemented` mean the app is gone: the registration is revoked, and what is
//! held for it dropped, before we say so. Anything else, including silence, a client that is
//! offline, or a lost component link, is temporary: the phone may be back in a minute, so the
//! message is held for its `TTL` (`store/held.rs`) and offered again later (`deliver.rs`), and the
//! sender hears `201` either way. Only `TTL: 0` means "now or never".
//!
//! Two clocks: the sender hears within `delivery.answer_within`, the client's verdict if it came by
//! then; otherwise the message is held and the push stays in flight, detached (`xmpp/pending.rs`), until
//! `delivery.timeout`, so a late answer still counts. A message is not sent at all when the client
//! is known to be offline (`xmpp/presence.rs`) or when its registration has older messages waiting: it
//! is held at once, behind them.
//!
//! The deliverer hears of every message held here through [`Notice`], so it can offer it when its
//! turn comes; nothing here calls back into it.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use base64::{Engine, engine::general_purpose::STANDARD};
use futures::FutureExt;
use tokio::sync::mpsc;
use xmpp_parsers::{
    iq::Iq,
    jid::{BareJid, Jid},
    minidom::Element,
    stanza::Stanza,
    stanza_error::DefinedCondition,
};

use crate::{
    config::Config,
    dialects::conversations::wire::Push,
    message::{Request, Urgency},
    metrics::METRICS,
    metrics::PushOutcome,
    push::{Deliver, Delivery, Verdict},
    store::held::Notice,
    store::{HoldError, Message, Store, held::HeldMessages, registration_key_of},
    token::{Claims, Dialect},
    trace::{Event, Traces},
    xmpp::{
        Link,
        pending::{Answer, Detached, InFlight, MessageIds, Ticket},
        presence::Presence,
    },
};

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
    /// No answer yet: past `delivery.answer_within` for a fresh message (it may still come),
    /// past `delivery.timeout` for a held one.
    Timeout,
}

/// How one offer of a message to its client went.
#[derive(Debug, PartialEq)]
pub enum Offered {
    Taken,
    /// `item-not-found` or `feature-not-implemented`: the app is gone.
    Gone,
    /// Not sent: its registration or account was revoked after it was accepted.
    Revoked,
    NotNow(Unavailable),
}

impl Deliver for Relay {
    fn deliver(&self, claims: Claims, request: Request) -> Delivery<'_> {
        Box::pin(self.push(claims, request).map(verdict_of))
    }
}

/// What a push's outcome means to its sender.
fn verdict_of(outcome: Result<Outcome, RelayError>) -> Verdict {
    match outcome {
        Ok(Outcome::Delivered { id, ttl }) => Verdict::Accepted {
            id,
            ttl,
            how: PushOutcome::Delivered,
        },
        Ok(Outcome::Held { id, ttl }) => Verdict::Accepted {
            id,
            ttl,
            how: PushOutcome::Held,
        },
        Ok(Outcome::Dropped { id }) => Verdict::Accepted {
            id,
            ttl: Duration::ZERO,
            how: PushOutcome::Dropped,
        },
        Ok(Outcome::Revoked) => Verdict::Revoked,
        Ok(Outcome::Full) => Verdict::Full,
        Err(e) => {
            tracing::error!(error = %e, "push failed");
            Verdict::Internal
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("the store failed: {0}")]
    Store(#[from] crate::store::StoreError),
}

/// How a push begins, decided before its future starts ([`Relay::push`]).
enum Start {
    /// `TTL: 0`, and the client cannot take it now.
    Drop,
    /// Held at once, for the reason given (for its trace).
    Hold(&'static str),
    /// Offered to the client.
    Offer,
}

/// Sends pushes and interprets their answers. One per process, shared by every HTTP request and
/// by the redelivery of held messages.
pub struct Relay {
    link: Link,
    in_flight: InFlight,
    presence: Arc<Presence>,
    store: Arc<Store>,
    held: Arc<HeldMessages>,
    traces: Arc<Traces>,
    component: BareJid,
    answer_within: Duration,
    timeout: Duration,
    lifetime: Duration,
    default_ttl: Duration,
    max_ttl: Duration,
    notices: mpsc::UnboundedSender<Notice>,
    ids: MessageIds,
}

/// The parts a [`Relay`] works with.
pub struct Parts {
    pub link: Link,
    pub in_flight: InFlight,
    pub presence: Arc<Presence>,
    pub store: Arc<Store>,
    pub held: Arc<HeldMessages>,
    /// What each account's user may read of what happened to its pushes.
    pub traces: Arc<Traces>,
}

impl Relay {
    /// A relay, and the receiving end of what it tells the deliverer.
    pub fn new(parts: Parts, config: &Config) -> (Relay, mpsc::UnboundedReceiver<Notice>) {
        let (notices, receiver) = mpsc::unbounded_channel();
        let relay = Relay {
            link: parts.link,
            in_flight: parts.in_flight,
            presence: parts.presence,
            store: parts.store,
            held: parts.held,
            traces: parts.traces,
            component: config.component.jid.clone(),
            answer_within: config.delivery.answer_within,
            timeout: config.delivery.timeout,
            lifetime: config.registration.longest_token_life(),
            default_ttl: config.delivery.default_ttl,
            max_ttl: config.delivery.max_ttl,
            notices,
            ids: MessageIds::default(),
        };
        (relay, receiver)
    }

    /// Where the deliverer hears of held messages, for those this relay did not hold itself
    /// (`cluster/`: a standby's).
    pub fn notices(&self) -> mpsc::UnboundedSender<Notice> {
        self.notices.clone()
    }

    /// Deliver one message to the client `claims` name, or hold it for later, and say which,
    /// within `delivery.answer_within` of the request's arrival (plus a store write). A message
    /// that is held is on disk before the future ends.
    ///
    /// Not an `async fn`: what can be decided at once is decided before the future starts, and
    /// the future keeps the message alone, not also the claims and the request it was made of
    /// (an `async fn` keeps its arguments for as long as it runs, and a push may wait for its
    /// client for all of `delivery.answer_within`, ten thousand at once; docs/BENCHMARKS.md).
    pub fn push(
        &self,
        claims: Claims,
        request: Request,
    ) -> impl Future<Output = Result<Outcome, RelayError>> + Send + '_ {
        let requested = request.ttl.map_or(self.default_ttl, Duration::from_secs);
        let ttl = requested.min(self.max_ttl);
        let received = request.received;
        let message = Message {
            id: self.ids.next(),
            subject: claims.subject,
            application: claims.application,
            instance: claims.instance,
            body: request.body,
            topic: request.topic,
            urgency: request.urgency,
            expires_at: SystemTime::now() + ttl,
            accepted_at: SystemTime::now(),
        };
        self.trace(
            &message,
            Event::Accepted {
                urgency: message.urgency,
                ttl,
                sender: request.sender,
            },
        );
        // No IQ for a client known to be away, for one that takes only more urgent messages now,
        // or with no link to reach it; and a message waits its turn behind older ones of its
        // registration rather than overtake them. (The paths that write to the store are boxed:
        // they are rare, and inline they would make every push in flight carry their state.)
        let unreachable = if !self.link.is_up() {
            Some("the XMPP server is unreachable")
        } else if self.presence.is_offline(&message.subject) {
            Some("the client is offline")
        } else if message.urgency < self.presence.minimum_urgency(&message.subject) {
            Some("less urgent than the client takes now")
        } else {
            None
        };
        let start = if unreachable.is_some() && ttl.is_zero() {
            self.trace(
                &message,
                Event::Dropped("TTL 0 and the client cannot take it now"),
            );
            Start::Drop
        } else if let Some(why) = unreachable {
            Start::Hold(why)
        } else if !ttl.is_zero()
            && self
                .held
                .has_backlog(&message.subject, &message.registration())
        {
            Start::Hold("waiting behind older messages")
        } else {
            Start::Offer
        };
        async move {
            match start {
                Start::Drop => return Ok(Outcome::Dropped { id: message.id }),
                Start::Hold(why) => return Box::pin(self.hold(message, ttl, None, why)).await,
                Start::Offer => {}
            }
            let offered_at = Instant::now();
            let wait = (received + self.answer_within).saturating_duration_since(offered_at);
            let (offered, ticket) = self.offer(&message, wait).await;
            match offered {
                Offered::Taken => Ok(Outcome::Delivered {
                    id: message.id,
                    ttl,
                }),
                Offered::Revoked => Ok(Outcome::Revoked),
                Offered::Gone => {
                    Box::pin(self.forget_registration(&message)).await?;
                    Ok(Outcome::Revoked)
                }
                Offered::NotNow(why) => {
                    tracing::debug!(?why, "holding a push");
                    // Boxed: inline, what this step keeps would widen every push that waits.
                    Box::pin(self.not_taken(message, ticket, offered_at, ttl)).await
                }
            }
        }
    }

    /// The client did not take `message` within `delivery.answer_within`: hold it, and keep
    /// listening (the ticket) for an answer until `delivery.timeout`.
    async fn not_taken(
        &self,
        message: Message,
        ticket: Option<Ticket>,
        offered_at: Instant,
        ttl: Duration,
    ) -> Result<Outcome, RelayError> {
        // What the push still needs of its message once the message is held: the message itself
        // goes to the store rather than being copied, as a burst of silent phones holds ten
        // thousand at once.
        let push = Detached {
            id: message.id.clone(),
            subject: message.subject.clone(),
            application: message.application.clone(),
            instance: message.instance.clone(),
            sent: offered_at,
        };
        let outcome = if ttl.is_zero() {
            self.trace(
                &message,
                Event::Dropped("TTL 0 and the client did not take it"),
            );
            Outcome::Dropped { id: message.id }
        } else {
            let why = "to be offered again";
            Box::pin(self.hold(message, ttl, Some(offered_at), why)).await?
        };
        // Silent so far: the client may still answer, up to `delivery.timeout`.
        let Some(mut ticket) = ticket else {
            return Ok(outcome);
        };
        match ticket.detach(push.clone(), offered_at + self.timeout) {
            None => Ok(outcome),
            // It answered while the message was being written; the message stays in flight (the
            // ticket) until that answer has been acted on.
            Some(answer) => {
                let outcome = Box::pin(self.late_answer(&push, answer, ttl, outcome)).await;
                drop(ticket);
                let _ = self.notices.send(Notice::Settled {
                    registration: registration_key_of(
                        &push.subject,
                        &push.application,
                        &push.instance,
                    ),
                    subject: push.subject,
                });
                outcome
            }
        }
    }

    /// Hold `message` (`why`, for its trace), and tell the deliverer. `offered` is when the
    /// client was just offered it.
    ///
    /// Not an `async fn`, like [`Relay::push`]: a burst of silent phones holds ten thousand
    /// messages at once, and each of these futures would keep its own copy of its message.
    fn hold(
        &self,
        message: Message,
        ttl: Duration,
        offered: Option<Instant>,
        why: &'static str,
    ) -> impl Future<Output = Result<Outcome, RelayError>> + Send + '_ {
        let notice = Notice::Held {
            id: message.id.clone(),
            subject: message.subject.clone(),
            registration: message.registration(),
            offered,
        };
        let id = message.id.clone();
        let traced = (message.subject.clone(), message.application.clone());
        let holding = self.held.hold(message);
        async move {
            let trace = |event| self.traces.record(&traced.0, &traced.1, &id, event);
            match holding.await {
                Ok(held) => {
                    trace(Event::Held(why));
                    if held.dropped > 0 {
                        tracing::debug!(
                            dropped = held.dropped,
                            "dropped the oldest held messages of a registration at its bound"
                        );
                    }
                    let _ = self.notices.send(notice);
                    Ok(Outcome::Held { id, ttl })
                }
                Err(HoldError::Full) => {
                    tracing::warn!(
                        "not holding a push: delivery.max_held messages are held already"
                    );
                    trace(Event::Dropped(
                        "the provider holds all it may; the sender retries",
                    ));
                    Ok(Outcome::Full)
                }
                Err(HoldError::OwnerFull(setting)) => {
                    trace(Event::Dropped(
                        "your account holds all it may; the sender retries",
                    ));
                    tracing::debug!(
                        setting,
                        "not holding a push: the client's account or domain is full"
                    );
                    Ok(Outcome::Full)
                }
                Err(HoldError::Store(e)) => Err(e.into()),
            }
        }
    }

    /// The answer to `push`, whose message was held (the `held` outcome) meanwhile: it may have
    /// been delivered after all.
    async fn late_answer(
        &self,
        push: &Detached,
        answer: Answer,
        ttl: Duration,
        held: Outcome,
    ) -> Result<Outcome, RelayError> {
        self.traces.record(
            &push.subject,
            &push.application,
            &push.id,
            answered(&answer),
        );
        match answer {
            Answer::Result => {
                self.held.remove(&push.id, &push.subject).await?;
                Ok(Outcome::Delivered {
                    id: push.id.clone(),
                    ttl,
                })
            }
            answer if answer.means_gone() => {
                self.revoke(&push.subject, &push.application, &push.instance)
                    .await?;
                Ok(Outcome::Revoked)
            }
            Answer::Error(_) => Ok(held),
        }
    }

    /// Send `message` to its client and wait for the verdict, at most `wait`. The ticket is
    /// returned while the answer may still come (no answer yet), so the caller decides whether to
    /// keep listening; dropping it forgets the push.
    pub async fn offer(&self, message: &Message, wait: Duration) -> (Offered, Option<Ticket>) {
        // A message accepted before its registration or account was revoked is never delivered
        // after: a push that raced `revoke-all` (held just after the account's messages were
        // dropped), or one held since and offered again.
        let (subject, application, instance) =
            (&message.subject, &message.application, &message.instance);
        if self
            .store
            .is_revoked_since(subject, application, instance, message.accepted_at)
        {
            self.trace(message, Event::Revoked);
            return (Offered::Revoked, None);
        }
        // Within a block of its own, so that the parsed JID is not kept while the push waits.
        let (iq, mut ticket) = {
            let Ok(peer) = message.subject.parse::<Jid>() else {
                // Only a token we issued gets here, and we issued it for a parsed JID.
                return (
                    Offered::NotNow(Unavailable::Refused("bad subject".into())),
                    None,
                );
            };
            // Built only once the outgoing queue has room for it (`Link::send`): in a burst, the
            // pushes waiting for room hold no stanza.
            let to = peer.clone();
            let iq = move || -> Box<Stanza> {
                Box::new(
                    Iq::Set {
                        from: Some(self.component.clone().into()),
                        to: Some(to),
                        id: message.id.clone(),
                        payload: Element::from(Push {
                            application: message.application.clone(),
                            instance: message.instance.clone(),
                            id: Some(message.id.clone()),
                            urgency: (message.urgency != Urgency::Normal)
                                .then(|| message.urgency.as_str().to_owned()),
                            data: STANDARD.encode(&message.body),
                        }),
                    }
                    .into(),
                )
            };
            (iq, self.in_flight.expect(message.id.clone(), peer))
        };
        let sent = Instant::now();
        // One deadline for queueing and answering alike: a full outgoing queue counts against it.
        let exchange = async {
            self.link.send(iq).await.ok()?;
            METRICS.push_iq_sent();
            ticket.answer().await
        };
        let answer = match tokio::time::timeout(wait, exchange).await {
            Err(_) => {
                self.trace(message, Event::NotTaken("no answer yet".into()));
                return (Offered::NotNow(Unavailable::Timeout), Some(ticket));
            }
            Ok(None) => {
                let why = "not sent, or unanswered: the XMPP link is down";
                self.trace(message, Event::NotTaken(why.into()));
                return (Offered::NotNow(Unavailable::LinkDown), None);
            }
            Ok(Some(answer)) => answer,
        };
        METRICS.iq_answered(sent.elapsed());
        let offered = match answer {
            Answer::Result => Offered::Taken,
            answer if answer.means_gone() => Offered::Gone,
            Answer::Error(condition) => {
                Offered::NotNow(Unavailable::Refused(condition_name(&condition)))
            }
        };
        self.trace(
            message,
            match &offered {
                Offered::Taken => Event::Taken,
                Offered::Gone => Event::Revoked,
                Offered::NotNow(Unavailable::Refused(condition)) => {
                    Event::NotTaken(condition.clone())
                }
                Offered::NotNow(_) | Offered::Revoked => Event::NotTaken("no answer".into()),
            },
        );
        (offered, None)
    }

    /// The answer to `push` that came after its sender had heard (the deliverer acts on it).
    pub fn trace_late(&self, push: &Detached, answer: &Answer) {
        self.traces
            .record(&push.subject, &push.application, &push.id, answered(answer));
    }

    fn trace(&self, message: &Message, event: Event) {
        self.traces
            .record(&message.subject, &message.application, &message.id, event);
    }

    /// How long a held message's offer waits for its answer: the whole `delivery.timeout`, as
    /// nobody else waits for it.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The app behind `message` is gone: revoke its registration, durably, and drop what is held
    /// for it.
    pub async fn forget_registration(&self, message: &Message) -> Result<(), RelayError> {
        self.revoke(&message.subject, &message.application, &message.instance)
            .await
    }

    /// The app `application`/`instance` of client `subject` is gone: revoke its registration,
    /// durably, and drop what is held for it.
    pub async fn revoke(
        &self,
        subject: &str,
        application: &str,
        instance: &str,
    ) -> Result<(), RelayError> {
        let now = SystemTime::now();
        let claims = Claims {
            subject: subject.to_owned(),
            application: application.to_owned(),
            instance: instance.to_owned(),
            issued_at: now,
            // Revocations live until every token they kill has expired; none outlives `lifetime`.
            expires_at: now,
            dialect: Dialect::Conversations,
            renewable: false,
            vapid: None,
        };
        self.store.revoke(&claims, now, self.lifetime).await?;
        let dropped = self.held.drop_registration(&claims).await?;
        tracing::info!(dropped, "endpoint revoked by its client");
        Ok(())
    }
}

/// What a client's answer says, in a trace.
fn answered(answer: &Answer) -> Event {
    match answer {
        Answer::Result => Event::Taken,
        answer if answer.means_gone() => Event::Revoked,
        Answer::Error(condition) => Event::NotTaken(condition_name(condition)),
    }
}

fn condition_name(condition: &DefinedCondition) -> String {
    xmpp_parsers::minidom::Element::from(condition.clone())
        .name()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_have_their_xml_names() {
        assert_eq!(
            condition_name(&DefinedCondition::ServiceUnavailable),
            "service-unavailable"
        );
    }
}
