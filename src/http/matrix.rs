//! The Matrix push gateway (`/_matrix/push/v1/notify`), so a Matrix user needs nothing but xup.
//!
//! A UnifiedPush Matrix app (Element, FluffyChat, SchildiChat) registers this gateway's URL with
//! its homeserver, and its xup endpoint as the pushkey. The homeserver (Synapse, Conduit,
//! Dendrite) then POSTs each notification here, and every device whose pushkey is an endpoint of
//! this xup gets it relayed in process, exactly as if it had been POSTed to that endpoint. The
//! body the app gets is what UnifiedPush's own gateways send and the apps parse: the request's
//! `{"notification": {…}}` without its `devices`.
//!
//! The answer lists the pushkeys the homeserver should drop (`rejected`): not ours, unparsable,
//! expired, revoked, or whose client said the app is gone. A client that is merely away is not
//! rejected; its message is held as any push's would be. A pushkey that points anywhere else is
//! never fetched: this is no open relay.

use std::{net::SocketAddr, sync::Arc, time::Duration, time::Instant};

use axum::{
    Router,
    extract::{ConnectInfo, Request, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use ipnet::IpNet;
use serde_json::{Map, Value, json};

use crate::{
    config::{LegacyRoute, LegacyUp},
    http::{BodyError, read_body},
    limits::sender_address,
    message::{self, Request as Message, Urgency},
    metrics::METRICS,
    push::{Pushes, Verdict},
};

/// A notify body larger than this is refused with `413`: a notification with its event content
/// is a few KiB at most.
pub const MAX_NOTIFY_BODY: usize = 64 * 1024;

/// Devices in one notify. Synapse sends one per request; more is someone using us as a fan-out.
pub const MAX_DEVICES: usize = 20;

/// What the discovery `GET` answers, as UnifiedPush's own gateways do.
const DISCOVERY: &str = r#"{"gateway":"matrix","unifiedpush":{"gateway":"matrix"}}"#;

/// The gateway's part of the state.
pub struct Gateway {
    pub pushes: Arc<Pushes>,
    pub body_timeout: Duration,
    pub trusted_proxies: Vec<IpNet>,
    /// `http.public_url` + `/push/`: where a pushkey of ours starts.
    pub endpoint_prefix: String,
    /// Where the Java `up`'s endpoints start, when they are honoured.
    pub legacy: Option<LegacyPrefix>,
}

/// How a pushkey the Java `up` issued is recognised.
pub enum LegacyPrefix {
    Path(String),
    Query(String),
}

impl LegacyPrefix {
    pub fn of(legacy: &LegacyUp) -> LegacyPrefix {
        match &legacy.route {
            LegacyRoute::Path(path) => LegacyPrefix::Path(format!("{}{path}", legacy.origin)),
            LegacyRoute::Query(path) => {
                LegacyPrefix::Query(format!("{}{path}?token=", legacy.origin))
            }
        }
    }
}

pub fn router(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route("/_matrix/push/v1/notify", get(discover).post(notify))
        .with_state(gateway)
}

async fn discover() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], DISCOVERY).into_response()
}

/// Why a notify request was refused as a whole.
#[derive(Debug, PartialEq)]
enum BadNotify {
    TooLarge,
    Slow,
    Unreadable,
    Malformed(String),
}

impl IntoResponse for BadNotify {
    fn into_response(self) -> Response {
        match self {
            BadNotify::TooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "a notify body is limited to 64 KiB\n",
            )
                .into_response(),
            BadNotify::Slow => (
                StatusCode::REQUEST_TIMEOUT,
                "the request body did not arrive in time\n",
            )
                .into_response(),
            BadNotify::Unreadable => (
                StatusCode::BAD_REQUEST,
                "the request body could not be read\n",
            )
                .into_response(),
            BadNotify::Malformed(reason) => {
                (StatusCode::BAD_REQUEST, format!("{reason}\n")).into_response()
            }
        }
    }
}

/// `POST /_matrix/push/v1/notify`.
async fn notify(
    State(gateway): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let received = Instant::now();
    let (parts, body) = request.into_parts();
    let sender = sender_address(peer.ip(), &parts.headers, &gateway.trusted_proxies);
    if let Err(verdict) = gateway.pushes.admit_sender(sender, None) {
        METRICS.push(verdict.outcome());
        return verdict.into_response();
    }
    let notification = match read_notification(body, gateway.body_timeout).await {
        Ok(notification) => notification,
        Err(bad) => return bad.into_response(),
    };
    let Notification {
        pushkeys,
        body,
        urgency,
    } = notification;
    let deliveries = pushkeys.into_iter().map(|pushkey| {
        let gateway = &gateway;
        let body = body.clone();
        async move {
            let request = Message {
                body,
                ttl: None,
                topic: None,
                urgency,
                received,
                sender: None,
            };
            let rejected = gateway.relay(sender, &pushkey, request).await;
            rejected.then_some(pushkey)
        }
    });
    let rejected: Vec<String> = futures::future::join_all(deliveries)
        .await
        .into_iter()
        .flatten()
        .collect();
    (
        [(header::CONTENT_TYPE, "application/json")],
        json!({ "rejected": rejected }).to_string(),
    )
        .into_response()
}

impl Gateway {
    /// Relay one device's notification; `true` when the homeserver should drop the pushkey.
    async fn relay(&self, sender: std::net::IpAddr, pushkey: &str, request: Message) -> bool {
        let Some(token) = token_in(pushkey, &self.endpoint_prefix, self.legacy.as_ref()) else {
            tracing::debug!("a pushkey that is not an endpoint of ours");
            return true;
        };
        let pushes = &self.pushes;
        // A homeserver signs nothing: an endpoint bound to an application server's key is no
        // pushkey for it.
        let opened = match pushes.open(sender, token).await {
            Ok(claims) => pushes.authorize(&claims, None).map(|()| claims),
            Err(verdict) => Err(verdict),
        };
        let verdict = match opened {
            Ok(claims) => match pushes.admit(claims) {
                Ok(admitted) => pushes.deliver(admitted, request).await,
                Err(verdict) => verdict,
            },
            // Dead, or forged (and maybe past the sender's budget for forgeries): either way the
            // pushkey will never work.
            Err(verdict) => {
                METRICS.push(verdict.outcome());
                return true;
            }
        };
        METRICS.push(verdict.outcome());
        verdict == Verdict::Revoked
    }
}

/// The token inside `pushkey`, if it is an endpoint of this xup: one of its own (under
/// `endpoint_prefix`) or one the Java `up` issued (`legacy`). Tokens are PASETO, so anything but
/// the URL-safe base64 alphabet and dots is no token.
fn token_in<'a>(
    pushkey: &'a str,
    endpoint_prefix: &str,
    legacy: Option<&LegacyPrefix>,
) -> Option<&'a str> {
    let token = match (pushkey.strip_prefix(endpoint_prefix), legacy) {
        (Some(token), _) => token,
        (None, Some(LegacyPrefix::Path(prefix) | LegacyPrefix::Query(prefix))) => {
            pushkey.strip_prefix(prefix.as_str())?
        }
        (None, None) => return None,
    };
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_.".contains(c);
    (!token.is_empty() && token.chars().all(plain)).then_some(token)
}

/// What a notify asks for.
struct Notification {
    pushkeys: Vec<String>,
    /// What every device gets: `{"notification": {…}}` without `devices`, within 4096 bytes.
    body: Vec<u8>,
    urgency: Urgency,
}

async fn read_notification(
    body: axum::body::Body,
    body_timeout: Duration,
) -> Result<Notification, BadNotify> {
    let bytes = match read_body(body, MAX_NOTIFY_BODY, body_timeout).await {
        Ok(bytes) => bytes,
        Err(BodyError::TooLarge) => return Err(BadNotify::TooLarge),
        Err(BodyError::Unreadable) => return Err(BadNotify::Unreadable),
        Err(BodyError::Slow) => return Err(BadNotify::Slow),
    };
    parse_notification(&bytes)
}

/// Read a Push Gateway API body (Matrix spec, `POST /_matrix/push/v1/notify`).
fn parse_notification(bytes: &[u8]) -> Result<Notification, BadNotify> {
    let malformed = |reason: &str| BadNotify::Malformed(reason.to_owned());
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| BadNotify::Malformed(format!("the body is not JSON: {e}")))?;
    let Some(Value::Object(mut notification)) = value.get("notification").cloned() else {
        return Err(malformed("expected an object {\"notification\": {…}}"));
    };
    let Some(Value::Array(devices)) = notification.remove("devices") else {
        return Err(malformed("notification.devices must be a list"));
    };
    if devices.is_empty() {
        return Err(malformed("notification.devices is empty"));
    }
    if devices.len() > MAX_DEVICES {
        return Err(BadNotify::Malformed(format!(
            "notification.devices holds more than {MAX_DEVICES} devices"
        )));
    }
    let pushkeys = devices
        .iter()
        .enumerate()
        .map(|(i, device)| {
            device["pushkey"]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| {
                    BadNotify::Malformed(format!(
                        "notification.devices[{i}].pushkey must be a string"
                    ))
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let urgency = match notification.get("prio").and_then(Value::as_str) {
        Some("low") => Urgency::Low,
        Some("high") => Urgency::High,
        _ => Urgency::Normal,
    };
    Ok(Notification {
        pushkeys,
        body: app_body(notification),
        urgency,
    })
}

/// What the fields of an `event_id_only` notification are: enough for an app to fetch the event
/// itself when the whole notification does not fit.
const ESSENTIAL: [&str; 4] = ["event_id", "room_id", "counts", "prio"];

/// `{"notification": …}` within [`message::MAX_BODY`]: whole if it fits; else without its
/// `content`; else only its [`ESSENTIAL`] fields.
fn app_body(mut notification: Map<String, Value>) -> Vec<u8> {
    let encode = |n: &Map<String, Value>| json!({ "notification": n }).to_string().into_bytes();
    let whole = encode(&notification);
    if whole.len() <= message::MAX_BODY {
        return whole;
    }
    notification.remove("content");
    let trimmed = encode(&notification);
    if trimmed.len() <= message::MAX_BODY {
        return trimmed;
    }
    notification.retain(|key, _| ESSENTIAL.contains(&key.as_str()));
    encode(&notification)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A notify as Synapse sends it (its `HttpPusher`, format unset).
    fn synapse(devices: Value, content_len: usize) -> Vec<u8> {
        json!({
            "notification": {
                "id": "$3957tyerfgewrf384",
                "event_id": "$3957tyerfgewrf384",
                "room_id": "!slw48wfj34rtnrf:example.org",
                "type": "m.room.message",
                "sender": "@exampleuser:matrix.org",
                "sender_display_name": "Major Tom",
                "room_name": "Mission Control",
                "prio": "high",
                "content": { "msgtype": "m.text", "body": "x".repeat(content_len) },
                "counts": { "unread": 2, "missed_calls": 1 },
                "devices": devices,
            }
        })
        .to_string()
        .into_bytes()
    }

    fn device(pushkey: &str) -> Value {
        json!({ "app_id": "im.vector.app.android.data", "pushkey": pushkey,
                "pushkey_ts": 12345678, "data": {}, "tweaks": { "sound": "bing" } })
    }

    #[test]
    fn the_app_gets_the_notification_without_devices() {
        let parsed =
            parse_notification(&synapse(json!([device("https://a/push/x")]), 10)).expect("parses");
        assert_eq!(parsed.pushkeys, ["https://a/push/x"]);
        assert_eq!(parsed.urgency, Urgency::High);
        let body: Value = serde_json::from_slice(&parsed.body).expect("json");
        assert!(body["notification"].get("devices").is_none());
        assert_eq!(body["notification"]["content"]["body"], "xxxxxxxxxx");
        assert_eq!(body["notification"]["counts"]["unread"], 2);
    }

    #[test]
    fn a_large_content_is_left_out_and_the_rest_kept() {
        let parsed = parse_notification(&synapse(json!([device("https://a/push/x")]), 5000))
            .expect("parses");
        assert!(parsed.body.len() <= message::MAX_BODY);
        let body: Value = serde_json::from_slice(&parsed.body).expect("json");
        assert!(body["notification"].get("content").is_none());
        assert_eq!(body["notification"]["sender_display_name"], "Major Tom");
    }

    #[test]
    fn a_huge_notification_keeps_only_what_fetches_the_event() {
        let mut notification = Map::new();
        notification.insert("event_id".into(), json!("$e"));
        notification.insert("room_name".into(), json!("r".repeat(5000)));
        let body: Value = serde_json::from_slice(&app_body(notification)).expect("json");
        assert_eq!(body, json!({ "notification": { "event_id": "$e" } }));
    }

    #[test]
    fn only_our_own_endpoints_are_pushkeys_we_relay() {
        let ours = "https://up.example.org/push/";
        let path = LegacyPrefix::Path("https://old.example.org/push/".into());
        let query = LegacyPrefix::Query("https://old.example.org/up?token=".into());
        let token_in = |pushkey, legacy| token_in(pushkey, ours, legacy);
        assert_eq!(
            token_in("https://up.example.org/push/v4.local.a-b_c", None),
            Some("v4.local.a-b_c")
        );
        assert_eq!(token_in("https://up.example.org/push/", None), None);
        assert_eq!(
            token_in("https://up.example.org/push/a/../../x", None),
            None
        );
        assert_eq!(
            token_in("https://up.example.org.evil/push/v4.local.a", None),
            None
        );
        assert_eq!(
            token_in("https://old.example.org/push/v2.local.a", None),
            None
        );
        assert_eq!(
            token_in("https://old.example.org/push/v2.local.a", Some(&path)),
            Some("v2.local.a")
        );
        assert_eq!(
            token_in("https://old.example.org/up?token=v2.local.a", Some(&query)),
            Some("v2.local.a")
        );
        assert_eq!(
            token_in(
                "https://old.example.org/up?token=v2.local.a&x=1",
                Some(&query)
            ),
            None
        );
    }

    #[test]
    fn malformed_bodies_say_what_is_wrong() {
        let reason = |bytes: &[u8]| match parse_notification(bytes) {
            Err(BadNotify::Malformed(reason)) => reason,
            _ => panic!("accepted"),
        };
        assert!(reason(b"{").starts_with("the body is not JSON"));
        assert!(reason(b"{}").contains("notification"));
        assert!(reason(br#"{"notification":{}}"#).contains("devices"));
        assert!(reason(br#"{"notification":{"devices":[{"pushkey":1}]}}"#).contains("devices[0]"));
        let many = json!((0..=MAX_DEVICES).map(|_| device("k")).collect::<Vec<_>>());
        assert!(reason(&synapse(many, 1)).contains("more than"));
    }
}
