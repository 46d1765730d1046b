//! The push endpoint that application servers talk to (RFC 8030 §5, UnifiedPush conventions).
//!
//! Every answer is decided in one place, [`PushReply::into_response`], because the status code is
//! the whole message to a sender: Mastodon and most Web Push senders drop a subscription on any
//! 4xx but 408 and 429, so a 4xx is only ever sent for an endpoint that is really dead or a request
//! that is really wrong. A message the client cannot take now is held and answered `201` with the
//! `TTL` it will be kept; `503` with `Retry-After` is left for a store that is full or failing and
//! for too many pushes in flight, and `429` with `Retry-After` for a sender over a rate limit.
//!
//! A request is checked cheapest first, so a flood costs as little as it can: the sender's
//! address against its rate limit, then the token (decrypted in memory; a forgery is counted
//! against its sender and never reaches the store), then revocation, the endpoint's own rate
//! limit, and a slot among the pushes in flight. Only then is the body read, within
//! `http.body_timeout`.
//!
//! Request headers (RFC 8030 §5.2–5.4): `TTL` (missing means `delivery.default_ttl`; capped at
//! `delivery.max_ttl`; the kept value is echoed), `Topic` and `Urgency`. A malformed one is a `400`
//! that names it.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, SystemTime},
};

use axum::{
    Router,
    body::HttpBody,
    extract::{ConnectInfo, Path, Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use ipnet::IpNet;
use tokio::sync::Semaphore;

use crate::{
    limits::{Limits, RetryAfter, address_key},
    metrics::{METRICS, PushOutcome},
    protocol::{self, Urgency},
    relay::{self, Outcome, Relay},
    store::{Store, registration_key},
    token::{Claims, KeyRing, TokenError},
};

/// RFC 8030's `TTL` response header: how long the message is kept.
const TTL: header::HeaderName = header::HeaderName::from_static("ttl");

/// What the handlers share.
pub struct AppState {
    pub keys: Arc<KeyRing>,
    pub store: Arc<Store>,
    pub relay: Arc<Relay>,
    pub limits: Arc<Limits>,
    /// One permit per push waiting for its client: `http.max_in_flight`.
    pub in_flight: Arc<Semaphore>,
    pub body_timeout: Duration,
    pub trusted_proxies: Vec<IpNet>,
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/push/{token}", get(discover).post(push).put(push))
        .with_state(state)
}

/// Every way a push request can end.
#[derive(Debug)]
enum PushReply {
    /// Delivered, held, or (with `TTL: 0`) dropped: `ttl` says which to a sender that cares.
    Accepted {
        id: String,
        ttl: Duration,
        how: PushOutcome,
    },
    /// Unknown, tampered, expired or revoked token.
    Gone,
    /// The client said, just now, that the app is gone.
    Revoked,
    TooLarge,
    Empty,
    Unreadable,
    /// The body did not arrive within `http.body_timeout`.
    SlowBody,
    /// A rate limit: `what` is over it, and may try again after the wait.
    TooMany {
        what: &'static str,
        wait: RetryAfter,
    },
    /// `http.max_in_flight` pushes are already waiting for their clients.
    Busy,
    /// A `TTL`, `Topic` or `Urgency` header that RFC 8030 does not allow; the reason names it.
    BadHeader(&'static str),
    /// The store holds all it may; the sender keeps the message and retries.
    Full,
    Internal,
}

impl PushReply {
    /// What the metrics call this answer.
    fn outcome(&self) -> PushOutcome {
        match self {
            PushReply::Accepted { how, .. } => *how,
            PushReply::Gone => PushOutcome::NotFound,
            PushReply::Revoked => PushOutcome::Revoked,
            PushReply::TooLarge => PushOutcome::TooLarge,
            PushReply::Empty | PushReply::Unreadable | PushReply::BadHeader(_) => {
                PushOutcome::BadRequest
            }
            PushReply::SlowBody => PushOutcome::Timeout,
            PushReply::TooMany { .. } => PushOutcome::RateLimited,
            PushReply::Busy => PushOutcome::Busy,
            PushReply::Full => PushOutcome::Full,
            PushReply::Internal => PushOutcome::Internal,
        }
    }
}

impl IntoResponse for PushReply {
    fn into_response(self) -> Response {
        let retry_after = || {
            (
                header::RETRY_AFTER,
                HeaderValue::from(protocol::RETRY_AFTER_SECS),
            )
        };
        match self {
            PushReply::Accepted { id, ttl, .. } => {
                let location = HeaderValue::from_str(&format!("/message/{id}"))
                    .unwrap_or_else(|_| HeaderValue::from_static("/message/"));
                (
                    StatusCode::CREATED,
                    [
                        (TTL, HeaderValue::from(ttl.as_secs())),
                        (header::LOCATION, location),
                    ],
                )
                    .into_response()
            }
            PushReply::BadHeader(reason) => {
                (StatusCode::BAD_REQUEST, format!("{reason}\n")).into_response()
            }
            PushReply::Gone | PushReply::Revoked => {
                (StatusCode::NOT_FOUND, "no such endpoint\n").into_response()
            }
            PushReply::TooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "push messages are limited to 4096 bytes\n",
            )
                .into_response(),
            PushReply::Empty => {
                (StatusCode::BAD_REQUEST, "a push message needs a body\n").into_response()
            }
            PushReply::Unreadable => (
                StatusCode::BAD_REQUEST,
                "the request body could not be read\n",
            )
                .into_response(),
            PushReply::SlowBody => (
                StatusCode::REQUEST_TIMEOUT,
                "the request body did not arrive in time\n",
            )
                .into_response(),
            PushReply::TooMany { what, wait } => (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, HeaderValue::from(wait.secs()))],
                format!("too many requests {what}; retry in {} s\n", wait.secs()),
            )
                .into_response(),
            PushReply::Busy => (
                StatusCode::SERVICE_UNAVAILABLE,
                [retry_after()],
                "too many pushes are waiting for their clients; retry later\n",
            )
                .into_response(),
            PushReply::Full => (
                StatusCode::SERVICE_UNAVAILABLE,
                [retry_after()],
                "the client is unreachable and no more messages can be held for now; retry later\n",
            )
                .into_response(),
            PushReply::Internal => (
                StatusCode::SERVICE_UNAVAILABLE,
                [retry_after()],
                "internal error; retry later\n",
            )
                .into_response(),
        }
    }
}

/// The endpoint `token` names, for a request from `sender`, or the reply that refuses it: the
/// sender over its rate limit, or a dead endpoint. A token that does not decrypt is counted
/// against its sender, who is refused with `429` once past `limits.forged_tokens_per_address`.
fn open_endpoint(state: &AppState, sender: IpAddr, token: &str) -> Result<Claims, PushReply> {
    let sender = address_key(sender);
    state
        .limits
        .per_address
        .check(&sender)
        .map_err(|wait| PushReply::TooMany {
            what: "from this address",
            wait,
        })?;
    let claims = match state.keys.open(token, SystemTime::now()) {
        Ok(claims) => claims,
        Err(e @ (TokenError::Malformed | TokenError::Forged)) => {
            tracing::debug!(error = %e, "forged endpoint");
            state
                .limits
                .forged_tokens
                .check(&sender)
                .map_err(|wait| PushReply::TooMany {
                    what: "with invalid endpoints from this address",
                    wait,
                })?;
            return Err(PushReply::Gone);
        }
        Err(e) => {
            tracing::debug!(error = %e, "dead endpoint");
            return Err(PushReply::Gone);
        }
    };
    if state.store.is_revoked(&claims) {
        tracing::debug!("revoked endpoint");
        return Err(PushReply::Gone);
    }
    Ok(claims)
}

/// Who sent a request: the peer, or, when the peer is a trusted proxy, the nearest address in
/// `X-Forwarded-For` that is not itself a trusted proxy. Entries further left were written by the
/// sender and are not believed; an entry that is not an address ends the walk.
fn sender_address(peer: IpAddr, headers: &HeaderMap, trusted_proxies: &[IpNet]) -> IpAddr {
    let trusted = |ip: &IpAddr| trusted_proxies.iter().any(|net| net.contains(ip));
    let mut sender = peer.to_canonical();
    if !trusted(&sender) {
        return sender;
    }
    let forwarded: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .collect();
    for entry in forwarded.iter().rev() {
        let Ok(ip) = entry.trim().parse::<IpAddr>() else {
            break;
        };
        sender = ip.to_canonical();
        if !trusted(&sender) {
            break;
        }
    }
    sender
}

/// `GET /push/{token}`: lets UnifiedPush apps check that the endpoint speaks UnifiedPush.
async fn discover(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(token): Path<String>,
    headers: HeaderMap,
) -> Response {
    let sender = sender_address(peer.ip(), &headers, &state.trusted_proxies);
    match open_endpoint(&state, sender, &token) {
        Ok(_) => (
            [(header::CONTENT_TYPE, "application/json")],
            r#"{"unifiedpush":{"version":1}}"#,
        )
            .into_response(),
        Err(reply) => reply.into_response(),
    }
}

/// `POST`/`PUT /push/{token}`: deliver one message or hold it, and say which.
async fn push(
    state: State<Arc<AppState>>,
    peer: ConnectInfo<SocketAddr>,
    token: Path<String>,
    request: Request,
) -> PushReply {
    let reply = accept_push(state, peer, token, request).await;
    METRICS.push(reply.outcome());
    reply
}

async fn accept_push(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(token): Path<String>,
    request: Request,
) -> PushReply {
    // `delivery.answer_within` counts from here, not from when the client is offered the message.
    let received = std::time::Instant::now();
    // What a push in flight keeps is kept for up to `delivery.answer_within`, so the token and
    // the request head (headers, URI) are let go of as soon as they have been read.
    let (ttl, topic, urgency, claims, body) = {
        let (parts, body) = request.into_parts();
        let sender = sender_address(peer.ip(), &parts.headers, &state.trusted_proxies);
        let claims = match open_endpoint(&state, sender, &token) {
            Ok(claims) => claims,
            Err(reply) => return reply,
        };
        drop(token);
        match rfc8030_headers(&parts.headers) {
            Ok((ttl, topic, urgency)) => (ttl, topic, urgency, claims, body),
            Err(reason) => return PushReply::BadHeader(reason),
        }
    };
    if let Err(wait) = state.limits.per_endpoint.check(&registration_key(&claims)) {
        return PushReply::TooMany {
            what: "for this endpoint",
            wait,
        };
    }
    let Ok(_in_flight) = state.in_flight.try_acquire() else {
        return PushReply::Busy;
    };
    // A declared length (Content-Length, as hyper reports it in the body's size hint) over the
    // limit is refused before a byte of it is read.
    if HttpBody::size_hint(&body).lower() > protocol::MAX_BODY as u64 {
        return PushReply::TooLarge;
    }
    let read = Limited::new(body, protocol::MAX_BODY).collect();
    let body = match tokio::time::timeout(state.body_timeout, read).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return PushReply::TooLarge;
        }
        Ok(Err(_)) => return PushReply::Unreadable,
        Err(_) => return PushReply::SlowBody,
    };
    if body.is_empty() {
        return PushReply::Empty;
    }
    let request = relay::Request {
        body: Vec::from(body),
        ttl,
        topic,
        urgency,
        received,
    };
    match state.relay.push(claims, request).await {
        Ok(Outcome::Delivered { id, ttl }) => PushReply::Accepted {
            id,
            ttl,
            how: PushOutcome::Delivered,
        },
        Ok(Outcome::Held { id, ttl }) => PushReply::Accepted {
            id,
            ttl,
            how: PushOutcome::Held,
        },
        Ok(Outcome::Dropped { id }) => PushReply::Accepted {
            id,
            ttl: Duration::ZERO,
            how: PushOutcome::Dropped,
        },
        Ok(Outcome::Revoked) => PushReply::Revoked,
        Ok(Outcome::Full) => PushReply::Full,
        Err(e) => {
            tracing::error!(error = %e, "push failed");
            PushReply::Internal
        }
    }
}

/// RFC 8030's request headers: `TTL` (seconds, `None` if absent), `Topic`, `Urgency`.
fn rfc8030_headers(
    headers: &HeaderMap,
) -> Result<(Option<u64>, Option<String>, Urgency), &'static str> {
    let text = |name: &str, reason: &'static str| -> Result<Option<&str>, &'static str> {
        headers
            .get(name)
            .map(|v| v.to_str().map_err(|_| reason))
            .transpose()
    };
    const BAD_TTL: &str = "TTL must be a number of seconds (RFC 8030 §5.2)";
    const BAD_TOPIC: &str =
        "Topic must be 1 to 32 characters of the URL-safe base64 alphabet (RFC 8030 §5.4)";
    const BAD_URGENCY: &str = "Urgency must be very-low, low, normal or high (RFC 8030 §5.3)";
    let ttl = text("ttl", BAD_TTL)?
        .map(|t| protocol::parse_ttl(t.trim()).ok_or(BAD_TTL))
        .transpose()?;
    let topic = text("topic", BAD_TOPIC)?
        .map(|t| {
            protocol::is_topic(t.trim())
                .then(|| t.trim().to_owned())
                .ok_or(BAD_TOPIC)
        })
        .transpose()?;
    let urgency = text("urgency", BAD_URGENCY)?
        .map(|u| Urgency::parse(u.trim()).ok_or(BAD_URGENCY))
        .transpose()?
        .unwrap_or_default();
    Ok((ttl, topic, urgency))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    fn forwarded(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_str(value).expect("value"),
        );
        headers
    }

    #[test]
    fn forwarded_for_is_believed_only_from_a_trusted_proxy() {
        let proxies = [
            "127.0.0.1/32".parse().expect("net"),
            "10.0.0.0/8".parse().expect("net"),
        ];
        let headers = forwarded("203.0.113.9");
        assert_eq!(
            sender_address(ip("127.0.0.1"), &headers, &proxies),
            ip("203.0.113.9")
        );
        assert_eq!(
            sender_address(ip("198.51.100.1"), &headers, &proxies),
            ip("198.51.100.1")
        );
        assert_eq!(
            sender_address(ip("127.0.0.1"), &HeaderMap::new(), &proxies),
            ip("127.0.0.1"),
            "a proxy that sends no header is the sender"
        );
    }

    #[test]
    fn the_nearest_untrusted_hop_is_the_sender_and_what_it_wrote_is_ignored() {
        let proxies = [
            "127.0.0.1/32".parse().expect("net"),
            "10.0.0.0/8".parse().expect("net"),
        ];
        // The sender claims 192.0.2.1; 203.0.113.9 reached the outer proxy 10.0.0.5.
        let headers = forwarded("192.0.2.1, 203.0.113.9, 10.0.0.5");
        assert_eq!(
            sender_address(ip("127.0.0.1"), &headers, &proxies),
            ip("203.0.113.9")
        );
        let headers = forwarded("garbage, 10.0.0.5");
        assert_eq!(
            sender_address(ip("127.0.0.1"), &headers, &proxies),
            ip("10.0.0.5")
        );
        assert_eq!(
            sender_address(ip("::ffff:127.0.0.1"), &forwarded("203.0.113.9"), &proxies),
            ip("203.0.113.9"),
            "an IPv4 peer on an IPv6 socket is still the trusted proxy"
        );
    }
}
