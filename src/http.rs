//! The push endpoint that application servers talk to (RFC 8030 §5, UnifiedPush conventions).
//!
//! Every answer is decided in one place, [`PushReply::into_response`], because the status code is
//! the whole message to a sender: Mastodon and most Web Push senders drop a subscription on any
//! 4xx but 408 and 429, so a 4xx is only ever sent for an endpoint that is really dead or a request
//! that is really wrong. A message the client cannot take now is held and answered `201` with the
//! `TTL` it will be kept; `503` with `Retry-After` is left for a store that is full or failing.
//!
//! Request headers (RFC 8030 §5.2–5.4): `TTL` (missing means `delivery.default_ttl`; capped at
//! `delivery.max_ttl`; the kept value is echoed), `Topic` and `Urgency`. A malformed one is a `400`
//! that names it.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use axum::{
    Router,
    body::HttpBody,
    extract::{Path, Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    protocol::{self, Urgency},
    relay::{self, Outcome, Relay},
    store::Store,
    token::{Claims, KeyRing},
};

/// RFC 8030's `TTL` response header: how long the message is kept.
const TTL: header::HeaderName = header::HeaderName::from_static("ttl");

/// What the handlers share.
pub struct AppState {
    pub keys: Arc<KeyRing>,
    pub store: Arc<Store>,
    pub relay: Arc<Relay>,
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/push/{token}", get(discover).post(push).put(push))
        .with_state(state)
}

/// Serve `router` on `listener` until `shutdown` is cancelled, then finish in-flight requests.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// Every way a push request can end.
#[derive(Debug)]
enum PushReply {
    /// Delivered, held, or (with `TTL: 0`) dropped: `ttl` says which to a sender that cares.
    Accepted {
        id: String,
        ttl: Duration,
    },
    /// Unknown, tampered, expired or revoked token, or the client says the app is gone.
    Gone,
    TooLarge,
    Empty,
    Unreadable,
    /// A `TTL`, `Topic` or `Urgency` header that RFC 8030 does not allow; the reason names it.
    BadHeader(&'static str),
    /// The store holds all it may; the sender keeps the message and retries.
    Full,
    Internal,
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
            PushReply::Accepted { id, ttl } => {
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
            PushReply::Gone => (StatusCode::NOT_FOUND, "no such endpoint\n").into_response(),
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

/// Open a token and check it was not revoked; `None` means the endpoint is dead.
fn live_claims(state: &AppState, token: &str) -> Option<Claims> {
    let claims = state
        .keys
        .open(token, SystemTime::now())
        .inspect_err(|e| tracing::debug!(error = %e, "dead endpoint"))
        .ok()?;
    if state.store.is_revoked(&claims) {
        tracing::debug!("revoked endpoint");
        return None;
    }
    Some(claims)
}

/// `GET /push/{token}`: lets UnifiedPush apps check that the endpoint speaks UnifiedPush.
async fn discover(State(state): State<Arc<AppState>>, Path(token): Path<String>) -> Response {
    match live_claims(&state, &token) {
        Some(_) => (
            [(header::CONTENT_TYPE, "application/json")],
            r#"{"unifiedpush":{"version":1}}"#,
        )
            .into_response(),
        None => PushReply::Gone.into_response(),
    }
}

/// `POST`/`PUT /push/{token}`: deliver one message or hold it, and say which.
async fn push(
    State(state): State<Arc<AppState>>,
    Path(token): Path<String>,
    request: Request,
) -> PushReply {
    let Some(claims) = live_claims(&state, &token) else {
        return PushReply::Gone;
    };
    // What a push in flight keeps is kept for up to `delivery.timeout`, so the token and the
    // request head (headers, URI) are let go of as soon as they have been read.
    drop(token);
    let (ttl, topic, urgency, body) = {
        let (parts, body) = request.into_parts();
        match rfc8030_headers(&parts.headers) {
            Ok((ttl, topic, urgency)) => (ttl, topic, urgency, body),
            Err(reason) => return PushReply::BadHeader(reason),
        }
    };
    // A declared length (Content-Length, as hyper reports it in the body's size hint) over the
    // limit is refused before a byte of it is read.
    if HttpBody::size_hint(&body).lower() > protocol::MAX_BODY as u64 {
        return PushReply::TooLarge;
    }
    let body = match Limited::new(body, protocol::MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => return PushReply::TooLarge,
        Err(_) => return PushReply::Unreadable,
    };
    if body.is_empty() {
        return PushReply::Empty;
    }
    let request = relay::Request {
        body: Vec::from(body),
        ttl,
        topic,
        urgency,
    };
    match state.relay.push(claims, request).await {
        Ok(Outcome::Delivered { id, ttl } | Outcome::Held { id, ttl }) => {
            PushReply::Accepted { id, ttl }
        }
        Ok(Outcome::Dropped { id }) => PushReply::Accepted {
            id,
            ttl: Duration::ZERO,
        },
        Ok(Outcome::Revoked) => PushReply::Gone,
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
