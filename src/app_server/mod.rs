//! The XEP-0357 app server: XMPP servers publish "your user has something new" for clients that are
//! asleep, and xup wakes them through a Web Push or UnifiedPush endpoint of their choosing.
//!
//! A client registers its endpoint with the ad-hoc command `register-push-webpush` and gets back
//! the component's JID, a node and a secret, which it hands its own server in `<enable>`. The node
//! is a sealed token (key ring, lifetime) holding the endpoint, its RFC 8291 keys and the
//! registrant's domain, and the secret is derived from it, so xup keeps nothing per registration.
//! `unregister-push-webpush` revokes a node (or every node of a device), and
//! `list-push-registrations` lists the caller's own, from a small per-account index in the store;
//! the commands are in `commands.rs`, dispatched by the table in `commands/`.
//!
//! A publish is checked (the node opens, is not revoked or expired, comes from the registrant's
//! account or its server with the right secret, within its rate limit), then forwarded
//! (`webpush.rs`). Its answer
//! decides what the XMPP server does, so it follows the push service's: `result` when it took the
//! message; `item-not-found` when the endpoint is gone (the node is then revoked, and the server
//! disables push: ejabberd at once, Prosody after a few); a `wait` error for anything temporary,
//! which both servers shrug off. Several publishes for one node within a second share one POST,
//! and each gets its answer.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use futures::{FutureExt, future::Shared};
use serde::{Deserialize, Serialize};
use xmpp_parsers::{
    data_forms::{DataForm, DataFormType, Field, FieldType},
    disco::Identity,
    jid::{BareJid, Jid},
    minidom::Element,
    pubsub::pubsub::PubSub,
    push::Notification,
    stanza_error::{DefinedCondition, ErrorType, StanzaError},
};

use crate::{
    limits::Limits,
    message::Urgency,
    metrics::{METRICS, PublishOutcome},
    store::{PushNode as IndexedNode, Store, registration_key_of},
    token::{KeyRing, Purpose, TokenError},
};
use webpush::{Keys, Sent, Subscription, WebPush};

pub mod address;
pub mod commands;
pub mod resolve;
pub mod webpush;

pub use commands::{LIST, REGISTER, UNREGISTER};

pub const NS_PUSH: &str = "urn:xmpp:push:0";

/// A node longer than this is refused at registration: servers store it and send it back with
/// every publish.
const MAX_NODE_LEN: usize = 1000;

/// Nodes one account may have in the index at once: many devices with a few push-capable clients
/// each, and not a row more, whoever the access list lets in (even `allow: ["*"]`).
pub const MAX_NODES_PER_ACCOUNT: usize = 64;

/// The longest `device-id` or `device-name` kept in the index.
const MAX_DEVICE_FIELD: usize = 128;

/// Publishes for one node this close together share one POST.
const COALESCE: Duration = Duration::from_secs(1);

/// How long a push service keeps a wake-up for a phone that is off: the next message sends
/// another anyway, but one that comes back within a day should still hear of this one.
const WAKE_TTL: Duration = Duration::from_secs(24 * 3600);

/// What a node holds, inside its token.
#[derive(Serialize, Deserialize, Clone)]
struct NodeClaims {
    /// Random: names the node for revocation, rate limits and coalescing.
    id: String,
    /// The endpoint, and its RFC 8291 keys (base64url) if the client gave them.
    ep: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    k: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    a: Option<String>,
    /// The registrant's domain: its server may publish.
    dom: String,
    /// The registrant's account (bare JID), hashed ([`account_tag`]): it may publish too, and
    /// no other account of its domain. Nodes issued before it was kept lack it, and take any
    /// publisher of the domain until they expire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    acct: Option<String>,
    /// Seconds since the epoch.
    iat: u64,
    exp: u64,
}

impl NodeClaims {
    /// Whether `publisher` may publish to this node: the registrant's server (Prosody and
    /// ejabberd publish as the account's bare JID or as the server), or the registrant.
    fn may_publish(&self, publisher: &Jid) -> bool {
        let domain = publisher.domain().as_str() == self.dom;
        let server = domain && publisher.node().is_none() && publisher.resource().is_none();
        let registrant = match &self.acct {
            Some(acct) => account_tag(publisher.to_bare().as_str()) == *acct,
            None => domain,
        };
        server || registrant
    }
}

/// An account as a node keeps it: 16 bytes of its SHA-256, so a long JID does not make a long node.
fn account_tag(account: &str) -> String {
    use sha2::Digest;
    URL_SAFE_NO_PAD.encode(&sha2::Sha256::digest(account.as_bytes())[..16])
}

type SharedSend = Shared<futures::future::BoxFuture<'static, Arc<Sent>>>;

/// The app server. One per process.
pub struct AppServer {
    parts: Parts,
    /// The POST each recently published node shares, and when it started.
    recent: Mutex<HashMap<String, (Instant, SharedSend)>>,
}

/// A failed request, as the stanza error its sender gets.
fn error(kind: ErrorType, condition: DefinedCondition, text: impl Into<String>) -> StanzaError {
    StanzaError::new(kind, condition, "en", text.into())
}

fn bad_request(text: impl Into<String>) -> StanzaError {
    error(ErrorType::Modify, DefinedCondition::BadRequest, text)
}

fn item_not_found(text: &str) -> StanzaError {
    error(ErrorType::Cancel, DefinedCondition::ItemNotFound, text)
}

fn forbidden(text: &str) -> StanzaError {
    error(ErrorType::Auth, DefinedCondition::Forbidden, text)
}

fn internal(text: &str) -> StanzaError {
    error(ErrorType::Wait, DefinedCondition::InternalServerError, text)
}

/// A time in a node's claims: seconds since the epoch.
fn at(seconds: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(seconds)
}

impl AppServer {
    pub fn new(parts: Parts) -> AppServer {
        AppServer {
            parts,
            recent: Mutex::default(),
        }
    }

    /// What disco#info adds for this role.
    pub fn identity() -> Identity {
        Identity::new("pubsub", "push", "en", "xup push app server (Web Push)")
    }

    /// `register-push-webpush` from `from` (admitted by the caller): a node, its secret, and
    /// xup's VAPID key.
    pub async fn register(&self, from: &Jid, form: &DataForm) -> Result<DataForm, StanzaError> {
        let value = |var: &str| field(form, var);
        let endpoint = value("endpoint").ok_or_else(|| bad_request("endpoint: required"))?;
        for var in ["device-id", "device-name"] {
            if value(var).is_some_and(|v| v.len() > MAX_DEVICE_FIELD) {
                return Err(bad_request(format!("{var}: at most 128 bytes")));
            }
        }
        let account = from.to_bare().to_string();
        let indexed = self.parts.store.nodes_of(&account).await.map_err(|e| {
            tracing::error!(error = %e, "cannot read an account's app-server nodes");
            internal("cannot register the node now")
        })?;
        if indexed.len() >= MAX_NODES_PER_ACCOUNT {
            return Err(error(
                ErrorType::Cancel,
                DefinedCondition::ResourceConstraint,
                format!(
                    "this account has {MAX_NODES_PER_ACCOUNT} push registrations already; \
                     unregister one (unregister-push-webpush) first"
                ),
            ));
        }
        let subscription = self
            .parts
            .web_push
            .check(endpoint, value("p256dh"), value("auth"))
            .await
            .map_err(|e| bad_request(e.to_string()))?;
        let now = SystemTime::now();
        let seconds = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        };
        let claims = NodeClaims {
            id: base64_id(),
            ep: subscription.endpoint.to_string(),
            k: value("p256dh").map(str::to_owned),
            a: value("auth").map(str::to_owned),
            dom: from.domain().to_string(),
            acct: Some(account_tag(from.to_bare().as_str())),
            iat: seconds(now),
            exp: seconds(now + self.parts.node_lifetime),
        };
        let sealed = serde_json::to_vec(&claims)
            .map_err(|e| e.to_string())
            .and_then(|payload| {
                self.parts
                    .keys
                    .seal(Purpose::Node, &payload)
                    .map_err(|e| e.to_string())
            });
        let node = sealed.map_err(|e| {
            tracing::error!(error = %e, "cannot seal an app-server node");
            internal("cannot issue a node")
        })?;
        if node.len() > MAX_NODE_LEN {
            return Err(bad_request(
                "endpoint: too long, the node would exceed 1000 bytes",
            ));
        }
        let secret = self.parts.keys.secret_of(&node).map_err(|e| {
            tracing::error!(error = %e, "cannot derive a node's secret");
            internal("cannot issue a node")
        })?;
        let indexed = self
            .parts
            .store
            .index_node(
                from.to_bare().as_str(),
                IndexedNode {
                    node_id: claims.id.clone(),
                    device_id: value("device-id").map(str::to_owned),
                    device_name: value("device-name").map(str::to_owned),
                    expires_at: now + self.parts.node_lifetime,
                },
            )
            .await;
        if let Err(e) = indexed {
            tracing::error!(error = %e, "cannot index an app-server node");
            return Err(internal("cannot register the node now"));
        }
        tracing::info!("app-server node registered");
        // A form, as p2 and mod_push answer: Conversations reads the three fields from it.
        Ok(DataForm {
            type_: DataFormType::Form,
            title: None,
            instructions: None,
            fields: vec![
                Field::text_single("jid", self.parts.component.as_str()),
                Field::text_single("node", &node),
                Field::text_single("secret", &secret),
                Field::text_single("vapid-public-key", &self.parts.web_push.public_key()),
            ],
        })
    }

    /// `unregister-push-webpush` from `from`: by `node`, or every node of `device-id`; only the
    /// caller's own (by the per-account index).
    pub async fn unregister(&self, from: &Jid, form: &DataForm) -> Result<DataForm, StanzaError> {
        let account = from.to_bare().to_string();
        let own = self.parts.store.nodes_of(&account).await.map_err(|e| {
            tracing::error!(error = %e, "cannot read the app-server index");
            internal("cannot unregister now")
        })?;
        let targets: Vec<(String, SystemTime)> =
            match (field(form, "node"), field(form, "device-id")) {
                (Some(node), _) => {
                    let claims = self
                        .open(node)
                        .map_err(|_| item_not_found("no such node"))?;
                    if !own.iter().any(|n| n.node_id == claims.id) {
                        return Err(item_not_found("no such node of yours"));
                    }
                    vec![(claims.id, at(claims.exp))]
                }
                (None, Some(device)) => own
                    .iter()
                    .filter(|n| n.device_id.as_deref() == Some(device))
                    .map(|n| (n.node_id.clone(), n.expires_at))
                    .collect(),
                (None, None) => return Err(bad_request("node or device-id: required")),
            };
        if targets.is_empty() {
            return Err(item_not_found("no registration of yours for that device"));
        }
        for (node_id, expires_at) in &targets {
            self.revoke(node_id, *expires_at).await?;
            if let Err(e) = self.parts.store.unindex_node(&account, node_id).await {
                tracing::warn!(error = %e, "cannot take a node out of the index");
            }
        }
        Ok(DataForm {
            type_: DataFormType::Result_,
            title: None,
            instructions: Some(format!("unregistered {}", targets.len())),
            fields: vec![Field::text_single(
                "unregistered",
                &targets.len().to_string(),
            )],
        })
    }

    /// `list-push-registrations`: the caller's own nodes, by device.
    pub async fn list(&self, from: &Jid) -> Result<DataForm, StanzaError> {
        let nodes = self
            .parts
            .store
            .nodes_of(from.to_bare().as_str())
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "cannot read the app-server index");
                internal("cannot list now")
            })?;
        let lines: Vec<String> = nodes
            .iter()
            .map(|n| {
                format!(
                    "{} (device {}, until {})",
                    n.device_name.as_deref().unwrap_or("unnamed"),
                    n.device_id.as_deref().unwrap_or("-"),
                    humantime::format_rfc3339_seconds(n.expires_at)
                )
            })
            .collect();
        let mut registrations = Field::new("registrations", FieldType::TextMulti);
        registrations.values = lines;
        Ok(DataForm {
            type_: DataFormType::Result_,
            title: Some("Push registrations".into()),
            instructions: None,
            fields: vec![
                Field::text_single("count", &nodes.len().to_string()),
                registrations,
            ],
        })
    }

    /// Answer a `<pubsub><publish>` from `from`.
    pub async fn publish(
        self: Arc<Self>,
        from: Option<Jid>,
        payload: Element,
    ) -> Result<(), StanzaError> {
        let (outcome, answer) = match self.forward(from, payload).await {
            Ok(outcome) => (outcome, Ok(())),
            Err((outcome, error)) => (outcome, Err(error)),
        };
        METRICS.publish(outcome);
        tracing::debug!(?outcome, "app-server publish");
        answer
    }

    /// Check a publish and forward it; how it ended, and the error its sender gets if any.
    async fn forward(
        &self,
        from: Option<Jid>,
        payload: Element,
    ) -> Result<PublishOutcome, (PublishOutcome, StanzaError)> {
        use PublishOutcome as O;
        let (publish, options) = match PubSub::try_from(payload) {
            Ok(PubSub::Publish {
                publish,
                publish_options,
            }) => (publish, publish_options),
            _ => {
                return Err((
                    O::Rejected,
                    bad_request("expected <pubsub><publish node=…>"),
                ));
            }
        };
        let claims = self.open(&publish.node.0).map_err(|_| {
            (
                O::UnknownNode,
                item_not_found("no such node, or it expired or was unregistered"),
            )
        })?;
        if !from.as_ref().is_some_and(|from| claims.may_publish(from)) {
            return Err((
                O::Forbidden,
                forbidden("only the registrant or its server may publish to this node"),
            ));
        }
        let secret = options
            .and_then(|o| o.form)
            .and_then(|form| field(&form, "secret").map(str::to_owned));
        let expected = self.parts.keys.secret_of(&publish.node.0).ok();
        // In constant time: how long a wrong guess takes must not say how much of it was right.
        let proven = match (secret, expected) {
            (Some(secret), Some(expected)) => bool::from(subtle::ConstantTimeEq::ct_eq(
                secret.as_bytes(),
                expected.as_bytes(),
            )),
            _ => false,
        };
        if !proven {
            return Err((
                O::Forbidden,
                forbidden("wrong or missing secret in publish-options"),
            ));
        }
        if let Err(wait) = self.parts.limits.publishes.check(&claims.id) {
            let text = format!(
                "too many publishes to this node; retry in {} s",
                wait.secs()
            );
            return Err((
                O::Rejected,
                error(ErrorType::Wait, DefinedCondition::ResourceConstraint, text),
            ));
        }
        let summary = publish
            .items
            .into_iter()
            .find_map(|item| item.payload)
            .and_then(|payload| Notification::try_from(payload).ok())
            .and_then(|notification| notification.form);
        let sent = self.send(claims.clone(), summary).await;
        let failed =
            |text: String| error(ErrorType::Wait, DefinedCondition::RemoteServerTimeout, text);
        match &*sent {
            Sent::Taken => Ok(O::Delivered),
            Sent::Gone => {
                self.revoke(&claims.id, at(claims.exp))
                    .await
                    .map_err(|e| (O::Gone, e))?;
                Err((O::Gone, item_not_found("the push endpoint is gone")))
            }
            Sent::Throttled => Err((
                O::Failed,
                error(
                    ErrorType::Wait,
                    DefinedCondition::ResourceConstraint,
                    "the push service asks to slow down",
                ),
            )),
            Sent::Failed(why) => {
                Err((O::Failed, failed(format!("the push service failed: {why}"))))
            }
            Sent::Refused(status) => Err((
                O::Refused,
                error(
                    ErrorType::Cancel,
                    DefinedCondition::NotAcceptable,
                    format!("the push service refused the message: {status}"),
                ),
            )),
        }
    }

    /// The POST for `claims`' node: a new one, or the one started for it less than a second ago.
    fn send(&self, claims: NodeClaims, summary: Option<DataForm>) -> SharedSend {
        let now = Instant::now();
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.retain(|_, (started, _)| now.duration_since(*started) < COALESCE);
        if let Some((_, sending)) = recent.get(&claims.id) {
            return sending.clone();
        }
        let web_push = self.parts.web_push.clone();
        let id = claims.id.clone();
        let sending = async move {
            let (subscription, encrypted) = match subscription_of(&claims) {
                Some(subscription) => {
                    let encrypted = subscription.keys.is_some();
                    (subscription, encrypted)
                }
                None => return Arc::new(Sent::Refused(reqwest::StatusCode::BAD_REQUEST)),
            };
            let (body, urgency) = wake_up(summary.as_ref(), encrypted);
            Arc::new(web_push.send(&subscription, body, urgency, WAKE_TTL).await)
        }
        .boxed()
        .shared();
        recent.insert(id, (now, sending.clone()));
        sending
    }

    fn open(&self, node: &str) -> Result<NodeClaims, TokenError> {
        let payload = self.parts.keys.unseal(Purpose::Node, node)?;
        let claims: NodeClaims =
            serde_json::from_str(&payload).map_err(|_| TokenError::Malformed)?;
        let now = SystemTime::now();
        if at(claims.exp) <= now {
            return Err(TokenError::Expired);
        }
        if self
            .parts
            .store
            .is_revoked_key(&node_key(&claims.id), at(claims.iat))
        {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }

    /// Revoke node `id`, durably, until it would have expired anyway.
    async fn revoke(&self, id: &str, expires_at: SystemTime) -> Result<(), StanzaError> {
        let now = SystemTime::now();
        self.parts
            .store
            .revoke_key(node_key(id), now, expires_at.max(now))
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "cannot revoke an app-server node");
                internal("cannot revoke the node now")
            })?;
        tracing::info!("app-server node revoked");
        Ok(())
    }
}

/// What the app server works with.
pub struct Parts {
    pub component: BareJid,
    pub keys: Arc<KeyRing>,
    pub store: Arc<Store>,
    pub limits: Arc<Limits>,
    pub web_push: Arc<WebPush>,
    pub node_lifetime: Duration,
}

/// The revocation key of a node: apart from every endpoint registration's.
fn node_key(id: &str) -> crate::store::RegistrationKey {
    registration_key_of("xep-0357", id, "")
}

fn base64_id() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>())
}

/// The first value of field `var`, if it is there and not empty.
fn field<'a>(form: &'a DataForm, var: &str) -> Option<&'a str> {
    form.fields
        .iter()
        .find(|f| f.var.as_deref() == Some(var))
        .and_then(|f| f.values.first())
        .map(String::as_str)
        .filter(|v| !v.is_empty())
}

/// The subscription a node holds. It was checked when it was registered; it is read again here
/// because it travels as text.
fn subscription_of(claims: &NodeClaims) -> Option<Subscription> {
    Some(Subscription {
        endpoint: claims.ep.parse().ok()?,
        keys: match (&claims.k, &claims.a) {
            (Some(p256dh), Some(auth)) => Some(Keys::parse(p256dh, auth).ok()?),
            _ => None,
        },
    })
}

/// The message that wakes the client: the summary's counts, and its sender and body only when the
/// server sent them and the message is encrypted. `Urgency: high` when the server says the message
/// matters (`last-message-body` present).
fn wake_up(summary: Option<&DataForm>, encrypted: bool) -> (Vec<u8>, Urgency) {
    let value = |var: &str| summary.and_then(|form| field(form, var));
    let important = value("last-message-body").is_some();
    let mut body = serde_json::Map::new();
    body.insert("type".into(), "xmpp-push".into());
    for count in ["message-count", "pending-subscription-count"] {
        if let Some(n) = value(count).and_then(|v| v.parse::<u64>().ok()) {
            body.insert(count.into(), n.into());
        }
    }
    body.insert("important".into(), important.into());
    if encrypted {
        for text in ["last-message-sender", "last-message-body"] {
            if let Some(v) = value(text) {
                body.insert(text.into(), v.into());
            }
        }
    }
    let urgency = if important {
        Urgency::High
    } else {
        Urgency::Normal
    };
    (
        serde_json::Value::Object(body).to_string().into_bytes(),
        urgency,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(fields: &[(&str, &str)]) -> DataForm {
        let mut form = DataForm::new(
            DataFormType::Submit,
            "urn:xmpp:push:summary",
            fields
                .iter()
                .map(|(var, value)| Field::text_single(var, value))
                .collect(),
        );
        form.type_ = DataFormType::Submit;
        form
    }

    #[test]
    fn only_the_registrant_and_its_server_may_publish() {
        let node = |acct: Option<&str>| NodeClaims {
            id: "n".into(),
            ep: "https://push.example.net/x".into(),
            k: None,
            a: None,
            dom: "example.org".into(),
            acct: acct.map(account_tag),
            iat: 0,
            exp: 1,
        };
        let jid = |text: &str| Jid::new(text).expect(text);
        let node = node(Some("juliet@example.org"));
        for allowed in [
            "example.org",
            "juliet@example.org",
            "juliet@example.org/phone",
        ] {
            assert!(node.may_publish(&jid(allowed)), "{allowed}");
        }
        for refused in [
            "romeo@example.org",
            "romeo@example.org/juliet@example.org",
            "example.org/resource",
            "juliet@example.net",
            "example.net",
            "juliet.example.org",
        ] {
            assert!(!node.may_publish(&jid(refused)), "{refused}");
        }
    }

    #[test]
    fn a_wake_up_tells_the_body_only_when_encrypted() {
        let form = summary(&[
            ("message-count", "1"),
            ("last-message-sender", "romeo@example.org/x"),
            ("last-message-body", "wherefore art thou"),
        ]);
        let (clear, urgency) = wake_up(Some(&form), false);
        assert_eq!(urgency, Urgency::High);
        let clear: serde_json::Value = serde_json::from_slice(&clear).expect("json");
        assert_eq!(
            clear,
            serde_json::json!({"type": "xmpp-push", "message-count": 1, "important": true})
        );
        let (sealed, _) = wake_up(Some(&form), true);
        let sealed: serde_json::Value = serde_json::from_slice(&sealed).expect("json");
        assert_eq!(sealed["last-message-body"], "wherefore art thou");
        let (empty, urgency) = wake_up(None, true);
        assert_eq!(urgency, Urgency::Normal);
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&empty).expect("json"),
            serde_json::json!({"type": "xmpp-push", "important": false})
        );
    }
}
