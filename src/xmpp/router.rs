//! Where incoming stanzas go: a table from an IQ request's namespace to the role that answers it.
//!
//! The link knows no role. Each one (a dialect's `<register>`, the ad-hoc commands, the app
//! server's publish) is a [`Handler`] registered under its namespace at start-up; the router
//! answers disco#info from what the handlers say they are, disco#items of a node from the handler
//! that owns it, and ping itself. Every other request gets `service-unavailable`, and an IQ
//! `result` or `error` is never answered (RFC 6120 §8.2.3): it goes to the pushes in flight
//! (`pending.rs`). What the link learns about clients (presence, signs of life, answers nobody
//! waits for any more) goes out as [`LinkEvent`]s, for the deliverer.

use std::{collections::BTreeSet, collections::HashMap, pin::Pin, sync::Arc};

use tokio::sync::mpsc;
use xmpp_parsers::{
    disco::{DiscoInfoResult, DiscoItemsResult, Identity},
    iq::Iq,
    jid::{BareJid, Jid},
    minidom::Element,
    ns,
    presence::Type as PresenceType,
    stanza::Stanza,
    stanza_error::{DefinedCondition, ErrorType, StanzaError},
};

use crate::{
    message::Urgency,
    metrics::METRICS,
    xmpp::pending::{self, Answer, Detached, InFlight, Resolved},
    xmpp::presence::{MinimumUrgency, Presence, URGENCY_NS},
};

/// What an incoming stanza gets back.
pub enum Reply {
    Now(Box<Stanza>),
    /// An answer that waits for something (a store write); it is sent when it is ready, and the
    /// link goes on meanwhile.
    Later(Pin<Box<dyn Future<Output = Stanza> + Send>>),
}

/// A refused IQ request: the stanza error, and a payload for a dialect whose clients read their
/// own element instead.
#[derive(Debug)]
pub struct Refusal {
    pub error: StanzaError,
    pub payload: Option<Element>,
}

impl From<StanzaError> for Box<Refusal> {
    fn from(error: StanzaError) -> Box<Refusal> {
        Box::new(Refusal {
            error,
            payload: None,
        })
    }
}

/// A handler's answer to one request: the result's payload, or why it was refused. Boxed: a
/// stanza error is a few hundred bytes, and most answers are results.
pub type Outcome = Result<Option<Element>, Box<Refusal>>;

/// A handler's answer, now or once something (a store write) is done.
pub enum Handled {
    Now(Outcome),
    Later(Pin<Box<dyn Future<Output = Outcome> + Send>>),
}

/// One role on the component: what it adds to disco, and how it answers the IQ requests in its
/// namespace.
pub trait Handler: Send + Sync {
    /// The disco#info features it adds (XEP-0030 §3.1).
    fn features(&self) -> Vec<&'static str>;

    /// The disco#info identities it adds besides the component's own.
    fn identities(&self) -> Vec<Identity> {
        Vec::new()
    }

    /// The disco#items of `node`, when the node is this role's (the ad-hoc command list).
    fn items(&self, _node: &str) -> Option<DiscoItemsResult> {
        None
    }

    /// Answer an IQ `set` from `from` whose payload is in this role's namespace.
    fn set(&self, from: Option<Jid>, payload: Element) -> Handled;
}

/// What the link learns about clients, for the deliverer.
#[derive(Debug, PartialEq)]
pub enum LinkEvent {
    /// A client's presence towards xup: it came online (`available`) or its session ended.
    Presence { from: Jid, available: bool },
    /// The client answered a push with `result`, or registered: it is there.
    Alive(Jid),
    /// An answer to a push whose sender stopped waiting (`push`, with what it carried), or to one
    /// that is no longer in flight at all (`push` is `None`: a `result` after `delivery.timeout`).
    Unclaimed {
        id: String,
        from: Jid,
        answer: Answer,
        push: Option<Detached>,
    },
}

/// Link events waiting for the deliverer at most. Past it they are dropped and counted
/// (`xup_link_events_dropped_total`): every one is a hint the deliverer would also get later (the
/// next presence, the next answer, the retry), so a flood of stanzas costs bounded memory and
/// at worst a late delivery or a message offered twice.
pub const LINK_EVENTS: usize = 16_384;

/// Where link events are told. Cheap to clone: a handler that learns something of a client (a
/// registration is a sign of life) tells it here too.
#[derive(Clone)]
pub struct Events(mpsc::Sender<LinkEvent>);

impl Events {
    /// The sending half, and the deliverer's receiving half, of a bounded channel.
    pub fn channel() -> (Events, mpsc::Receiver<LinkEvent>) {
        let (sender, receiver) = mpsc::channel(LINK_EVENTS);
        (Events(sender), receiver)
    }

    pub fn tell(&self, event: LinkEvent) {
        // A stopped deliverer (at shutdown) drops them too.
        if let Err(mpsc::error::TrySendError::Full(_)) = self.0.try_send(event) {
            METRICS.link_event_dropped();
        }
    }
}

/// Where incoming stanzas go.
pub struct Router {
    jid: BareJid,
    handlers: HashMap<&'static str, Arc<dyn Handler>>,
    in_flight: InFlight,
    presence: Arc<Presence>,
    events: Events,
}

impl Router {
    /// A router that knows no role yet: it answers disco and ping, hands IQ answers to
    /// `in_flight`, and records in `presence` the urgency clients ask for.
    pub fn new(
        jid: BareJid,
        in_flight: InFlight,
        presence: Arc<Presence>,
        events: Events,
    ) -> Router {
        Router {
            jid,
            handlers: HashMap::new(),
            in_flight,
            presence,
            events,
        }
    }

    /// Hand IQ requests whose payload is in `namespace` to `handler`.
    pub fn with(mut self, namespace: &'static str, handler: Arc<dyn Handler>) -> Router {
        self.handlers.insert(namespace, handler);
        self
    }

    /// The component's JID.
    pub fn jid(&self) -> &BareJid {
        &self.jid
    }

    /// The pushes in flight, which a broken link fails.
    pub fn in_flight(&self) -> &InFlight {
        &self.in_flight
    }

    /// Handle one incoming stanza; returns the reply to send, if any. Public for the fuzz target.
    pub fn route(&self, stanza: Stanza) -> Option<Reply> {
        let iq = match stanza {
            Stanza::Iq(iq) => iq,
            Stanza::Presence(presence) => {
                // Clients are full JIDs; presence from anything else says nothing about one.
                let available = match presence.type_ {
                    PresenceType::None => true,
                    PresenceType::Unavailable => false,
                    _ => return None,
                };
                if let Some(from) = presence.from
                    && from.resource().is_some()
                {
                    // Recorded here, before the next stanza is read: a push that follows the
                    // presence on the wire finds it in force.
                    let minimum = available
                        .then(|| minimum_urgency(&presence.payloads))
                        .flatten();
                    self.presence.set_minimum_urgency(from.as_str(), minimum);
                    self.events.tell(LinkEvent::Presence { from, available });
                }
                return None;
            }
            Stanza::Message(_) => return None,
        };
        match iq {
            Iq::Result { from, id, .. } => {
                self.answered(id, from, Answer::Result);
                None
            }
            Iq::Error {
                from, id, error, ..
            } => {
                self.answered(id, from, Answer::Error(error.defined_condition));
                None
            }
            Iq::Get {
                from,
                to,
                id,
                payload,
            } => Some(Reply::Now(Box::new(reply(from, to, id, self.get(payload))))),
            Iq::Set {
                from,
                to,
                id,
                payload,
            } => {
                let handler = payload.ns();
                let Some(handler) = self.handlers.get(handler.as_str()) else {
                    let refused = Err(unsupported().into());
                    return Some(Reply::Now(Box::new(reply(from, to, id, refused))));
                };
                match handler.set(from.clone(), payload) {
                    Handled::Now(outcome) => {
                        Some(Reply::Now(Box::new(reply(from, to, id, outcome))))
                    }
                    Handled::Later(outcome) => Some(Reply::Later(Box::pin(async move {
                        reply(from, to, id, outcome.await)
                    }))),
                }
            }
        }
    }

    /// An IQ answer: to the push it belongs to, and what it says about its sender to the deliverer.
    fn answered(&self, id: String, from: Option<Jid>, answer: Answer) {
        let resolved = self.in_flight.resolve(&id, from.as_ref(), answer.clone());
        let Some(from) = from else {
            return;
        };
        match resolved {
            Resolved::Claimed if answer == Answer::Result => {
                self.events.tell(LinkEvent::Alive(from))
            }
            Resolved::Claimed => {}
            Resolved::Detached(push) => self.events.tell(LinkEvent::Unclaimed {
                id,
                from,
                answer,
                push: Some(push),
            }),
            Resolved::Unknown if pending::is_push_id(&id) => {
                self.events.tell(LinkEvent::Unclaimed {
                    id,
                    from,
                    answer,
                    push: None,
                })
            }
            Resolved::Unknown => {}
        }
    }

    fn get(&self, payload: Element) -> Outcome {
        if payload.is("query", ns::DISCO_ITEMS) {
            let node = payload.attr("node");
            let owned = node.and_then(|node| self.handlers.values().find_map(|h| h.items(node)));
            return Ok(Some(
                owned
                    .unwrap_or_else(|| DiscoItemsResult {
                        node: node.map(str::to_owned),
                        items: Vec::new(),
                        rsm: None,
                    })
                    .into(),
            ));
        }
        if payload.is("query", ns::DISCO_INFO) {
            if payload.attr("node").is_some() {
                return Err(StanzaError::new(
                    ErrorType::Cancel,
                    DefinedCondition::ItemNotFound,
                    "en",
                    "no such node",
                )
                .into());
            }
            return Ok(Some(self.disco_info().into()));
        }
        if payload.is("ping", ns::PING) {
            return Ok(None);
        }
        Err(unsupported().into())
    }

    /// What the component is: a UnifiedPush provider, and whatever its roles add.
    fn disco_info(&self) -> DiscoInfoResult {
        let mut identities = vec![Identity::new(
            "component",
            "generic",
            "en",
            "xup UnifiedPush provider",
        )];
        let mut features =
            BTreeSet::from([ns::DISCO_INFO, ns::DISCO_ITEMS, ns::PING].map(str::to_owned));
        for handler in self.handlers.values() {
            identities.extend(handler.identities());
            features.extend(handler.features().into_iter().map(str::to_owned));
        }
        // The handlers are a map: put the identities in one order whatever its order is.
        identities.sort_by(|a, b| (&a.category, &a.type_).cmp(&(&b.category, &b.type_)));
        DiscoInfoResult {
            node: None,
            identities,
            features,
            extensions: vec![],
        }
    }
}

/// The minimum urgency a presence asks for; an element that does not parse, or names no urgency
/// RFC 8030 knows, asks for nothing.
fn minimum_urgency(payloads: &[Element]) -> Option<Urgency> {
    let element = payloads.iter().find(|p| p.is("urgency", URGENCY_NS))?;
    let asked = MinimumUrgency::try_from(element.clone()).ok()?;
    let minimum = Urgency::parse(&asked.minimum);
    if minimum.is_none() {
        tracing::debug!("a presence asked for an urgency RFC 8030 does not know");
    }
    minimum
}

/// The answer to IQ request `id`. It comes from the address the client wrote to, as clients match
/// on it.
fn reply(from: Option<Jid>, to: Option<Jid>, id: String, outcome: Outcome) -> Stanza {
    match outcome {
        Ok(payload) => Iq::Result {
            from: to,
            to: from,
            id,
            payload,
        },
        Err(refusal) => Iq::Error {
            from: to,
            to: from,
            id,
            error: refusal.error,
            payload: refusal.payload,
        },
    }
    .into()
}

/// The refusal of a request nobody here answers.
pub fn unsupported() -> StanzaError {
    StanzaError::new(
        ErrorType::Cancel,
        DefinedCondition::ServiceUnavailable,
        "en",
        "not supported by this service",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Role(&'static str);

    impl Handler for Role {
        fn features(&self) -> Vec<&'static str> {
            vec![self.0]
        }

        fn set(&self, _: Option<Jid>, _: Element) -> Handled {
            Handled::Now(Ok(None))
        }
    }

    fn router() -> Router {
        let (events, _) = Events::channel();
        Router::new(
            "up.example.org".parse().expect("jid"),
            InFlight::default(),
            Arc::default(),
            events,
        )
        .with("urn:example:a", Arc::new(Role("urn:example:a")))
    }

    fn iq(type_: &str, payload: &str) -> Stanza {
        let xml = format!(
            "<iq xmlns='jabber:component:accept' type='{type_}' id='x' \
             from='juliet@example.org/phone' to='up.example.org'>{payload}</iq>"
        );
        let element: Element = xml.parse().expect("xml");
        Stanza::Iq(Iq::try_from(element).expect("iq"))
    }

    fn answer(router: &Router, stanza: Stanza) -> Iq {
        match router.route(stanza) {
            Some(Reply::Now(reply)) => match *reply {
                Stanza::Iq(iq) => iq,
                other => panic!("not an IQ: {other:?}"),
            },
            _ => panic!("no answer now"),
        }
    }

    #[test]
    fn disco_info_lists_every_role_and_ping() {
        let Iq::Result {
            payload: Some(payload),
            ..
        } = answer(
            &router(),
            iq(
                "get",
                "<query xmlns='http://jabber.org/protocol/disco#info'/>",
            ),
        )
        else {
            panic!("no disco#info");
        };
        let features: Vec<&str> = payload
            .children()
            .filter(|c| c.is("feature", ns::DISCO_INFO))
            .filter_map(|c| c.attr("var"))
            .collect();
        assert!(features.contains(&"urn:example:a"), "{features:?}");
        assert!(features.contains(&ns::PING));
    }

    #[test]
    fn a_set_goes_to_its_namespace_and_others_are_unavailable() {
        let router = router();
        assert!(matches!(
            answer(&router, iq("set", "<x xmlns='urn:example:a'/>")),
            Iq::Result { .. }
        ));
        let Iq::Error { error, .. } = answer(&router, iq("set", "<x xmlns='urn:example:b'/>"))
        else {
            panic!("not refused");
        };
        assert_eq!(
            error.defined_condition,
            DefinedCondition::ServiceUnavailable
        );
    }
}
