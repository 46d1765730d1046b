//! sum7's dialect of UnifiedPush over XMPP (namespace `unifiedpush.org`), spoken by the Go gateway
//! and Linux D-Bus distributor of sum7/genofire, served beside the Conversations one on the same
//! component and the same HTTP endpoints.
//!
//! A distributor names each app by a public token of its own and registers it with
//! `<register><token>…</token></register>`; the endpoint it gets back is an ordinary xup endpoint
//! (a stateless token that says "sum7" inside), so revocation, rate limits and the key ring work as
//! for any other. A push goes out as a `<message type="normal">` with the public token as its
//! subject and the request's body as its text. Nobody answers a message: the sender hears `201`
//! with `TTL: 0` once the stanza is handed to the XMPP server, and what the server then does with
//! a message for a client that is away (store it offline, give it to another resource, bounce it)
//! is its own business; docs/DESIGN.md says what Prosody and ejabberd do. So a body must be text
//! that XML can carry: an encrypted Web Push body cannot go this way, and is refused with `400`.
//!
//! `<unregister>` (which sum7's own gateway never implemented) revokes the app's endpoints as an
//! `item-not-found` would. Its XML is in `wire.rs`.

use std::{future::Future, sync::Arc, time::Duration, time::SystemTime};

use xmpp_parsers::{
    jid::{BareJid, Jid},
    message::{Lang, Message, MessageType},
    minidom::Element,
    stanza::Stanza,
    stanza_error::{DefinedCondition, ErrorType, StanzaError},
};

use crate::{
    message::Request,
    metrics::PushOutcome,
    push::{Deliver, Delivery, Verdict},
    registrar::{self, RegisterError, Registrar, Registration},
    store::Store,
    token::{Claims, Dialect},
    trace::{Event, Traces},
    vapid,
    xmpp::{Handled, Handler, Link, Refusal, pending::MessageIds},
};
use wire::{
    MAX_TOKEN_LEN, Refused, Register, Registered, Success, Unregister, UnregisterRefused,
    Unregistered,
};

pub mod wire;

pub use wire::NS;

/// Answers sum7's `<register>` and `<unregister>`.
pub struct Registry {
    pub registrar: Arc<Registrar>,
    pub store: Arc<Store>,
    /// How long a revocation is kept: as long as the longest token it can kill lives.
    pub revocations_live: Duration,
}

impl Handler for Registry {
    fn features(&self) -> Vec<&'static str> {
        let mut features = vec![NS];
        features.extend(self.registrar.features());
        features
    }

    fn set(&self, from: Option<Jid>, payload: Element) -> Handled {
        if payload.is("register", NS) {
            let answer = self.register(from, payload);
            return Handled::Later(Box::pin(async move {
                let registered = answer.await;
                if let Err(refusal) = &registered {
                    tracing::debug!(error = ?refusal.error, "sum7 register refused");
                }
                registered.map(Some)
            }));
        }
        if payload.is("unregister", NS) {
            let answer = self.unregister(from.as_ref(), payload);
            return Handled::Later(Box::pin(async move { answer.await.map(Some) }));
        }
        Handled::Now(Err(unknown_request().into()))
    }
}

impl Registry {
    /// Answer a `<register>` from `from`.
    pub fn register(
        &self,
        from: Option<Jid>,
        payload: Element,
    ) -> impl Future<Output = Result<Element, Box<Refusal>>> + Send + 'static {
        let refuse = |e: RegisterError| {
            Box::new(Refusal {
                error: e.to_stanza_error(),
                payload: Some(
                    Refused {
                        error: e.to_string(),
                    }
                    .into(),
                ),
            })
        };
        let request = Register::try_from(payload).ok();
        let vapid = match request.as_ref().map(|r| r.vapid.trim()) {
            None | Some("") => Ok(None),
            Some(key) => vapid::key_digest(key)
                .map(Some)
                .ok_or(RegisterError::BadRequest(
                    "the <vapid> must be the application server's P-256 public key, base64url of \
                 its 65-byte uncompressed point (87 characters)",
                )),
        };
        let token = public_token(request.map(|r| r.token))
            .and_then(|token| Ok((token, vapid?)))
            .inspect_err(|_| registrar::refused());
        let registrar = self.registrar.clone();
        async move {
            let (token, vapid) = token.map_err(refuse)?;
            let registration = Registration {
                dialect: Dialect::Sum7,
                application: token,
                instance: String::new(),
                vapid,
            };
            let issued = registrar
                .issue(from.as_ref(), registration, SystemTime::now())
                .await
                .map_err(refuse)?;
            Ok(Registered {
                endpoint: issued.endpoint,
            }
            .into())
        }
    }

    /// Answer an `<unregister>` from `from`, once the revocation is on disk.
    pub fn unregister(
        &self,
        from: Option<&Jid>,
        payload: Element,
    ) -> impl Future<Output = Result<Element, Box<Refusal>>> + Send + 'static {
        let refuse = |e: RegisterError| {
            Box::new(Refusal {
                error: e.to_stanza_error(),
                payload: Some(
                    UnregisterRefused {
                        error: e.to_string(),
                    }
                    .into(),
                ),
            })
        };
        let admitted =
            public_token(Unregister::try_from(payload).map(|u| u.token).ok()).and_then(|token| {
                let from = self.registrar.admit(from)?;
                Ok((from.to_string(), token))
            });
        let store = self.store.clone();
        let revocations_live = self.revocations_live;
        async move {
            let (subject, token) = admitted.map_err(refuse)?;
            let account = subject.split('/').next().unwrap_or_default().to_owned();
            let now = SystemTime::now();
            let claims = Claims {
                subject,
                application: token,
                instance: String::new(),
                issued_at: now,
                expires_at: now,
                dialect: Dialect::Sum7,
                renewable: false,
                vapid: None,
            };
            let kept = store
                .revoke_within(
                    &claims,
                    now,
                    revocations_live,
                    &account,
                    MAX_UNREGISTERED_PER_ACCOUNT,
                )
                .await
                .map_err(|e| {
                    tracing::error!(error = %e, "cannot revoke a sum7 registration");
                    refuse(RegisterError::Internal)
                })?;
            if !kept {
                return Err(refuse(RegisterError::TooManyUnregistered(
                    MAX_UNREGISTERED_PER_ACCOUNT,
                )));
            }
            tracing::info!("endpoint revoked by its client (sum7 unregister)");
            Ok(Unregistered { success: Success }.into())
        }
    }
}

/// The public token of a request, or why it is unusable. Taken exactly as sent: it comes back
/// as the subject of every push, and the distributor looks it up as it is.
fn public_token(token: Option<String>) -> Result<String, RegisterError> {
    match token {
        None => Err(RegisterError::BadRequest(
            "expected a <token> child holding the distributor's public token, and nothing else",
        )),
        Some(token) if token.trim().is_empty() => Err(RegisterError::BadRequest(
            "the <token> is empty: send the distributor's public token for the app",
        )),
        Some(token) if token.len() > MAX_TOKEN_LEN => Err(RegisterError::BadRequest(
            "the <token> is longer than 256 bytes",
        )),
        Some(token) => Ok(token),
    }
}

/// Why a push could not be handed on.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum SendError {
    #[error(
        "this endpoint's client takes text only: the body {0}, so it cannot be an encrypted \
             Web Push message"
    )]
    NotText(&'static str),
    #[error("the component link is down")]
    LinkDown,
}

/// Unregistered endpoints one account may have kept revoked at once. Each `<unregister>` is a
/// revocation kept until the endpoint would have expired, and a token is whatever string the
/// distributor sends: without a bound, one account (any account, with `allow: ["*"]`) could grow
/// the store by one row per request. A distributor unregisters an app when it is removed; a
/// few hundred in a token's lifetime is far past any phone.
pub const MAX_UNREGISTERED_PER_ACCOUNT: usize = 256;

/// Hands pushes for sum7's clients to the XMPP server.
pub struct Sender {
    link: Link,
    component: BareJid,
    ids: MessageIds,
    traces: Arc<Traces>,
}

impl Sender {
    pub fn new(link: Link, component: BareJid, traces: Arc<Traces>) -> Sender {
        Sender {
            link,
            component,
            ids: MessageIds::default(),
            traces,
        }
    }

    /// Send `body` to the client `claims` name as a `<message>`; returns the message's id once the
    /// stanza is written to the link. Nobody answers a `<message>`, so this is all the sender's
    /// `201` can say: a message still queued when the link breaks is dropped with the queue, and
    /// its sender hears `503`, not `201`.
    pub async fn send(
        &self,
        claims: &Claims,
        body: &[u8],
        sender: Option<String>,
    ) -> Result<String, SendError> {
        let text = text_of(body)?;
        // Only a token we issued gets here, and we issued it for a parsed JID.
        let to: Jid = claims
            .subject
            .parse()
            .map_err(|_| SendError::NotText("names no client"))?;
        let id = self.ids.next();
        // `normal` is the default type, which xmpp-parsers leaves unwritten (RFC 6121 §5.2.2).
        // sum7's gateway wrote it out; its distributor matches a message without a type, and
        // treats both alike, so leaving it out is the form it surely takes.
        let mut message = Message::new_with_type(MessageType::Normal, Some(to));
        message.from = Some(self.component.clone().into());
        message.id = Some(xmpp_parsers::message::Id(id.clone()));
        message
            .subjects
            .insert(Lang::default(), claims.application.clone());
        message.bodies.insert(Lang::default(), text.to_owned());
        self.link
            .send_written(Box::new(Stanza::Message(message)))
            .await
            .map_err(|_| SendError::LinkDown)?;
        self.traces.record(
            &claims.subject,
            &claims.application,
            &id,
            Event::Sent { sender },
        );
        Ok(id)
    }
}

impl Deliver for Sender {
    fn deliver(&self, claims: Claims, request: Request) -> Delivery<'_> {
        Box::pin(async move {
            match self.send(&claims, &request.body, request.sender).await {
                Ok(id) => Verdict::Accepted {
                    id,
                    ttl: Duration::ZERO,
                    how: PushOutcome::Sent,
                },
                Err(e @ SendError::NotText(_)) => Verdict::NotText(e.to_string()),
                Err(SendError::LinkDown) => Verdict::LinkDown,
            }
        })
    }
}

/// `body` as text XML can carry (XML 1.0 §2.2), or what is wrong with it.
fn text_of(body: &[u8]) -> Result<&str, SendError> {
    let text = std::str::from_utf8(body).map_err(|_| SendError::NotText("is not UTF-8"))?;
    let carried = |c: char| {
        matches!(c, '\t' | '\n' | '\r') || (c >= ' ' && c != '\u{FFFE}' && c != '\u{FFFF}')
    };
    if !text.chars().all(carried) {
        return Err(SendError::NotText(
            "holds control characters XML cannot carry",
        ));
    }
    Ok(text)
}

/// The stanza error for a request in this namespace that xup does not know.
pub fn unknown_request() -> StanzaError {
    StanzaError::new(
        ErrorType::Cancel,
        DefinedCondition::FeatureNotImplemented,
        "en",
        "unifiedpush.org knows <register> and <unregister>",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_utf8_that_xml_can_carry() {
        assert_eq!(text_of(b"hello\tworld\n"), Ok("hello\tworld\n"));
        assert_eq!(text_of("grüße 🎉".as_bytes()), Ok("grüße 🎉"));
        assert_eq!(
            text_of(&[0xff, 0xfe]),
            Err(SendError::NotText("is not UTF-8"))
        );
        assert!(matches!(text_of(b"a\0b"), Err(SendError::NotText(_))));
        assert!(matches!(text_of(b"\x1b[0m"), Err(SendError::NotText(_))));
        assert!(matches!(
            text_of("\u{FFFF}".as_bytes()),
            Err(SendError::NotText(_))
        ));
    }

    #[test]
    fn a_token_must_be_there_not_blank_and_not_huge() {
        assert!(public_token(None).is_err());
        assert!(public_token(Some(" ".into())).is_err());
        assert!(public_token(Some("x".repeat(MAX_TOKEN_LEN + 1))).is_err());
        let uuid = "0b5bdf3d-5ea5-4bba-9f5c-0ab5a8f3d2d0".to_owned();
        assert_eq!(public_token(Some(uuid.clone())), Ok(uuid));
    }

    #[test]
    fn a_message_says_normal_and_carries_subject_and_body() {
        let mut message = Message::new_with_type(
            MessageType::Normal,
            Some("juliet@example.org/phone".parse::<Jid>().expect("jid")),
        );
        message.subjects.insert(Lang::default(), "public".into());
        message.bodies.insert(Lang::default(), "content".into());
        let element = Element::from(message);
        // RFC 6121 §5.2.2: a message without a type is `normal`; see `Sender::send`.
        assert_eq!(element.attr("type"), None);
        let xml = String::from(&element);
        assert!(xml.contains("<subject>public</subject>"), "{xml}");
        assert!(xml.contains("<body>content</body>"), "{xml}");
    }
}
