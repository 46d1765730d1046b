//! The push endpoint that application servers talk to (RFC 8030 §5, UnifiedPush conventions).
//!
//! Every answer is a [`Verdict`], said in HTTP in one place (`http/mod.rs`).
//!
//! A request is checked cheapest first (`push/`), then its body is read, within
//! `http.body_timeout`, and only a push whose body has come takes one of the `http.max_in_flight`
//! slots: a sender who trickles bodies ties up connections (bounded per address by the listener),
//! never the slots everyone else's pushes need. Endpoints the Java `up` issued are served on the route its URI template
//! gave them, when `registration.legacy_up_secret` is set; the Matrix gateway (`matrix.rs`) shares
//! the listener.
//!
//! Request headers (RFC 8030 §5.2–5.4): `TTL` (missing means `delivery.default_ttl`; capped at
//! `delivery.max_ttl`; the kept value is echoed), `Topic` and `Urgency`. A malformed one is a `400`
//! that names it.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    Router,
    extract::{ConnectInfo, Path, Query, Request, State, rejection::QueryRejection},
    http::{HeaderMap, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use ipnet::IpNet;

use crate::{
    config::LegacyRoute,
    http::{BodyError, read_body},
    limits::sender_address,
    message::{self, Request as Message, Urgency},
    metrics::METRICS,
    push::{Admitted, Pushes, Verdict},
};

/// What the handlers share.
pub struct AppState {
    pub pushes: Arc<Pushes>,
    pub body_timeout: Duration,
    pub trusted_proxies: Vec<IpNet>,
}

/// The push endpoints: xup's own at `/push/{token}`, and the Java `up`'s where its template put
/// them (`legacy`).
pub fn router(state: Arc<AppState>, legacy: Option<&LegacyRoute>) -> Router {
    let mut router = Router::new().route("/push/{token}", get(discover).post(push).put(push));
    match legacy {
        Some(LegacyRoute::Path(prefix)) if prefix != "/push/" => {
            router = router.route(&format!("{prefix}{{token}}"), post(push).put(push));
        }
        Some(LegacyRoute::Query(path)) => {
            router = router.route(path, post(push_by_query).put(push_by_query));
        }
        _ => {}
    }
    router.with_state(state)
}

/// `GET /push/{token}`: lets UnifiedPush apps check that the endpoint speaks UnifiedPush.
async fn discover(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(token): Path<String>,
    headers: HeaderMap,
) -> Response {
    let sender = sender_address(peer.ip(), &headers, &state.trusted_proxies);
    let pushes = &state.pushes;
    // Discovery is no push: it needs no signature, and costs no verification.
    let opened = match pushes.admit_sender(sender, None) {
        Ok(_) => pushes.open(sender, &token).await,
        Err(verdict) => Err(verdict),
    };
    match opened {
        Ok(_) => (
            [(header::CONTENT_TYPE, "application/json")],
            r#"{"unifiedpush":{"version":1}}"#,
        )
            .into_response(),
        Err(verdict) => verdict.into_response(),
    }
}

/// `POST`/`PUT /push/{token}`: deliver one message or hold it, and say which.
fn push(
    state: State<Arc<AppState>>,
    peer: ConnectInfo<SocketAddr>,
    Path(token): Path<String>,
    request: Request,
) -> impl Future<Output = Verdict> + Send {
    accept_push(state, peer, token, request)
}

/// The token as the Java `up`'s `{?token}` template put it.
#[derive(serde::Deserialize)]
struct TokenQuery {
    token: String,
}

/// `POST`/`PUT /…?token=…`: [`push`], for endpoints the Java `up` made that way.
fn push_by_query(
    state: State<Arc<AppState>>,
    peer: ConnectInfo<SocketAddr>,
    query: Result<Query<TokenQuery>, QueryRejection>,
    request: Request,
) -> impl Future<Output = Verdict> + Send {
    let accepting = match query {
        Ok(Query(TokenQuery { token })) => Some(accept_push(state, peer, token, request)),
        Err(_) => None,
    };
    async move {
        match accepting {
            Some(accepting) => accepting.await,
            None => {
                METRICS.push(Verdict::Gone.outcome());
                Verdict::Gone
            }
        }
    }
}

/// Take a push in, hand it on, and count its verdict.
///
/// None of these is an `async fn`, on purpose: a push waits here for its client for up to
/// `delivery.answer_within`, and an `async fn` keeps its arguments (the whole request head) for
/// as long as it runs, even after it has handed them on. Taking the request in (opening the
/// token, perhaps asking the store whether it was renewed, reading the body) is boxed and over
/// before the wait begins, so its state is gone by then too; what waits is the slot and the
/// dialect's future (docs/BENCHMARKS.md, "Clients that never answer").
fn accept_push(
    state: State<Arc<AppState>>,
    peer: ConnectInfo<SocketAddr>,
    token: String,
    request: Request,
) -> impl Future<Output = Verdict> + Send {
    let app = Arc::clone(&state.0);
    let taking = Box::pin(take_in(state, peer, token, request));
    async move {
        let delivering = match taking.await {
            Ok((admitted, message)) => app.pushes.deliver(admitted, message),
            Err(verdict) => {
                METRICS.push(verdict.outcome());
                return verdict;
            }
        };
        let verdict = delivering.await;
        METRICS.push(verdict.outcome());
        verdict
    }
}

/// Everything a push is checked for, cheapest first, and its body: the push, admitted.
async fn take_in(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    token: String,
    request: Request,
) -> Result<(Admitted, Message), Verdict> {
    // `delivery.answer_within` counts from here, not from when the client is offered the message.
    let received = std::time::Instant::now();
    let pushes = &state.pushes;
    // What a push in flight keeps is kept for up to `delivery.answer_within`, so the token and
    // the request head (headers, URI) are let go of as soon as they have been read.
    let (ttl, topic, urgency, claims, body, sender) = {
        let (parts, body) = request.into_parts();
        let sender = sender_address(peer.ip(), &parts.headers, &state.trusted_proxies);
        let authorization = parts.headers.get(header::AUTHORIZATION);
        let identity = pushes.admit_sender(sender, authorization.and_then(|h| h.to_str().ok()))?;
        let claims = pushes.open(sender, &token).await?;
        pushes.authorize(&claims, identity.as_ref())?;
        drop(token);
        let (ttl, topic, urgency) = rfc8030_headers(&parts.headers).map_err(Verdict::BadHeader)?;
        let sender = identity.and_then(|identity| identity.contact);
        (ttl, topic, urgency, claims, body, sender)
    };
    let body = match read_body(body, message::MAX_BODY, state.body_timeout).await {
        Ok(body) => body,
        Err(BodyError::TooLarge) => return Err(Verdict::TooLarge),
        Err(BodyError::Unreadable) => return Err(Verdict::Unreadable),
        Err(BodyError::Slow) => return Err(Verdict::SlowBody),
    };
    if body.is_empty() {
        return Err(Verdict::Empty);
    }
    let admitted = pushes.admit(claims)?;
    let message = Message {
        body: Vec::from(body),
        ttl,
        topic,
        urgency,
        received,
        sender,
    };
    Ok((admitted, message))
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
        .map(|t| message::parse_ttl(t.trim()).ok_or(BAD_TTL))
        .transpose()?;
    let topic = text("topic", BAD_TOPIC)?
        .map(|t| {
            message::is_topic(t.trim())
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
