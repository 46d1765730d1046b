//! The HTTP side of xup: the doors application servers and homeservers knock on, and what an
//! operator's monitoring reads.
//!
//! - `rfc8030.rs`: the push endpoints (RFC 8030 §5, UnifiedPush conventions), xup's own and the
//!   Java `up`'s;
//! - `matrix.rs`: the Matrix push gateway (`/_matrix/push/v1/notify`);
//! - `status.rs`: `/health` and `/metrics`;
//! - `listener.rs`: the accept loop and its connection bounds, shared by all of them.
//!
//! Every door checks a push through `push/` and reaches XMPP only through its seam
//! ([`crate::push::Deliver`]); nothing here knows a dialect or the link. A [`Verdict`] becomes an
//! HTTP answer here, in one place, because the status code is the whole message to a sender:
//! Mastodon and most Web Push senders drop a subscription on any 4xx but 408 and 429, so a 4xx is
//! only ever sent for an endpoint that is really dead or a request that is really wrong. A message
//! the client cannot take now is held and answered `201` with the `TTL` it will be kept; `503`
//! with `Retry-After` is left for a store that is full or failing and for too many pushes in
//! flight, and `429` with `Retry-After` for a sender over a rate limit.

use std::time::Duration;

use axum::{
    body::HttpBody,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use http_body_util::{BodyExt, LengthLimitError, Limited};

use crate::{metrics::METRICS, push::Verdict};

pub mod listener;
pub mod matrix;
pub mod rfc8030;
pub mod status;

/// What `Retry-After` says when a push could not be delivered now: long enough for a phone to wake
/// up or reconnect, short enough that a sender's retry still carries a fresh notification.
pub const RETRY_AFTER_SECS: u64 = 60;

/// RFC 8030's `TTL` response header: how long the message is kept.
const TTL: header::HeaderName = header::HeaderName::from_static("ttl");

impl IntoResponse for Verdict {
    fn into_response(self) -> Response {
        let retry_after = || (header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        match self {
            Verdict::Accepted { id, ttl, .. } => {
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
            Verdict::BadHeader(reason) => {
                (StatusCode::BAD_REQUEST, format!("{reason}\n")).into_response()
            }
            Verdict::Unauthorized(reason) => (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, HeaderValue::from_static("vapid"))],
                format!("{reason}\n"),
            )
                .into_response(),
            Verdict::Forbidden(reason) => {
                (StatusCode::FORBIDDEN, format!("{reason}\n")).into_response()
            }
            Verdict::NotText(reason) => {
                (StatusCode::BAD_REQUEST, format!("{reason}\n")).into_response()
            }
            Verdict::Gone | Verdict::Revoked => {
                (StatusCode::NOT_FOUND, "no such endpoint\n").into_response()
            }
            Verdict::TooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "push messages are limited to 4096 bytes\n",
            )
                .into_response(),
            Verdict::Empty => {
                (StatusCode::BAD_REQUEST, "a push message needs a body\n").into_response()
            }
            Verdict::Unreadable => (
                StatusCode::BAD_REQUEST,
                "the request body could not be read\n",
            )
                .into_response(),
            Verdict::SlowBody => (
                StatusCode::REQUEST_TIMEOUT,
                "the request body did not arrive in time\n",
            )
                .into_response(),
            Verdict::TooMany { what, wait } => (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, HeaderValue::from(wait.secs()))],
                format!("too many requests {what}; retry in {} s\n", wait.secs()),
            )
                .into_response(),
            Verdict::Busy => (
                StatusCode::SERVICE_UNAVAILABLE,
                [retry_after()],
                "too many pushes are waiting for their clients; retry later\n",
            )
                .into_response(),
            Verdict::Full => (
                StatusCode::SERVICE_UNAVAILABLE,
                [retry_after()],
                "the client is unreachable and no more messages can be held for now; retry later\n",
            )
                .into_response(),
            Verdict::LinkDown => (
                StatusCode::SERVICE_UNAVAILABLE,
                [retry_after()],
                "the XMPP server is unreachable; retry later\n",
            )
                .into_response(),
            Verdict::Internal => (
                StatusCode::SERVICE_UNAVAILABLE,
                [retry_after()],
                "internal error; retry later\n",
            )
                .into_response(),
        }
    }
}

/// Why a request's body could not be had.
#[derive(Debug, PartialEq)]
pub enum BodyError {
    /// Over the door's limit, declared or sent.
    TooLarge,
    Unreadable,
    /// Not all there within `http.body_timeout`.
    Slow,
}

/// A request's whole body, at most `limit` bytes, within `timeout`: how both doors read one. A
/// declared length (Content-Length, as hyper reports it in the body's size hint) over the limit is
/// refused before a byte of it is read. While it is read, it counts in
/// `xup_request_bodies_being_read`.
pub async fn read_body(
    body: axum::body::Body,
    limit: usize,
    timeout: Duration,
) -> Result<axum::body::Bytes, BodyError> {
    if HttpBody::size_hint(&body).lower() > limit as u64 {
        return Err(BodyError::TooLarge);
    }
    let _reading = METRICS.reading_body();
    let read = Limited::new(body, limit).collect();
    match tokio::time::timeout(timeout, read).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(BodyError::TooLarge),
        Ok(Err(_)) => Err(BodyError::Unreadable),
        Err(_) => Err(BodyError::Slow),
    }
}
