//! `check-my-push`: what xup knows of the calling client, checked for the user there and then,
//! without waking any app. Whether xup counts the client offline and which urgency it asked for
//! (`xmpp/presence.rs`); a ping (XEP-0199) from the component to the client, with its round
//! trip, which proves the path pushes take; and which of the client's registrations hold messages,
//! how many, and why they wait.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use xmpp_parsers::{
    data_forms::{DataForm, DataFormType, Field, FieldType},
    iq::Iq,
    jid::{BareJid, Jid},
    ping::Ping,
    stanza::Stanza,
};

use crate::{
    commands::AdHoc,
    store::held::HeldMessages,
    trace::app_hint,
    xmpp::{
        Link,
        pending::{Answer, InFlight},
        presence::Presence,
    },
};

/// The command's node.
pub const NODE: &str = "check-my-push";

/// How long the ping waits for the client: a phone that is reachable answers in well under this.
const PING_WAIT: Duration = Duration::from_secs(5);

pub struct CheckMyPush {
    pub component: BareJid,
    pub link: Link,
    pub awaiting: InFlight,
    pub presence: Arc<Presence>,
    pub held: Arc<HeldMessages>,
    pings: AtomicU64,
}

impl CheckMyPush {
    pub fn new(
        component: BareJid,
        link: Link,
        awaiting: InFlight,
        presence: Arc<Presence>,
        held: Arc<HeldMessages>,
    ) -> CheckMyPush {
        CheckMyPush {
            component,
            link,
            awaiting,
            presence,
            held,
            pings: AtomicU64::new(0),
        }
    }

    /// Ping `client` from the component; how it went, in words.
    async fn ping(&self, client: &Jid) -> String {
        // Not a push's id (those start `p-`): an answer after the wait is nobody's.
        let id = format!("check-{}", self.pings.fetch_add(1, Ordering::Relaxed));
        let mut ticket = self.awaiting.expect(id.clone(), client.clone());
        let ping = Iq::Get {
            from: Some(self.component.clone().into()),
            to: Some(client.clone()),
            id,
            payload: Ping.into(),
        };
        let sent = Instant::now();
        if self.link.send(|| Box::new(Stanza::Iq(ping))).await.is_err() {
            return "not sent: xup's link to the XMPP server is down".into();
        }
        match tokio::time::timeout(PING_WAIT, ticket.answer()).await {
            Ok(Some(Answer::Result)) => {
                format!("answered in {} ms", sent.elapsed().as_millis())
            }
            Ok(Some(Answer::Error(condition))) => format!(
                "answered with an error in {} ms: {}",
                sent.elapsed().as_millis(),
                xmpp_parsers::minidom::Element::from(condition).name()
            ),
            Ok(None) => "no answer: xup's link to the XMPP server went down".into(),
            Err(_) => format!("no answer within {} s", PING_WAIT.as_secs()),
        }
    }
}

#[async_trait::async_trait]
impl AdHoc for CheckMyPush {
    fn node(&self) -> &'static str {
        NODE
    }

    fn name(&self) -> &'static str {
        "Check that this client can get push notifications"
    }

    async fn run(
        &self,
        from: &Jid,
        _: &DataForm,
    ) -> Result<DataForm, xmpp_parsers::stanza_error::StanzaError> {
        let subject = from.as_str();
        let offline = self.presence.is_offline(subject);
        let minimum = self.presence.minimum_urgency(subject);
        let ping = self.ping(from).await;
        let mut held = Field::new("held", FieldType::TextMulti);
        let now = SystemTime::now();
        for registration in self.held.registrations_of(subject) {
            let Ok(waiting) = self.held.waiting_in(registration, now).await else {
                held.values.push("cannot read the held messages now".into());
                continue;
            };
            let Some(first) = waiting.first() else {
                continue;
            };
            let below = waiting.iter().filter(|m| m.urgency < minimum).count();
            let why = if !self.link.is_up() {
                "xup's link to the XMPP server is down"
            } else if offline {
                "xup counts this client offline until it sends presence or registers"
            } else if below == waiting.len() {
                "all are less urgent than this client takes now"
            } else {
                "waiting for the next offer, after one that was not taken"
            };
            let app = app_hint(&first.application);
            held.values.push(format!(
                "app {app}: {} held ({below} below the minimum urgency): {why}",
                waiting.len()
            ));
        }
        let presence = match offline {
            true => "offline: its server said the session ended; pushes are held until it is back",
            false => "not known to be offline",
        };
        Ok(DataForm {
            type_: DataFormType::Result_,
            title: Some("Push check".into()),
            instructions: Some(format!(
                "What xup knows of {subject}. No app was woken to find out."
            )),
            fields: vec![
                Field::text_single("client", subject),
                Field::text_single("presence", presence),
                Field::text_single("minimum-urgency", minimum.as_str()),
                Field::text_single("ping", &ping),
                Field::text_single("held-registrations", &held.values.len().to_string()),
                held,
            ],
        })
    }
}
