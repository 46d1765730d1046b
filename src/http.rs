//! The push endpoint that application servers talk to (RFC 8030 §5, UnifiedPush conventions).
//!
//! Every answer is decided in one place, [`PushReply::into_response`], because the status code is
//! the whole message to a sender: Mastodon and most Web Push senders drop a subscription on any
//! 4xx but 408 and 429, so a 4xx is only ever sent for an endpoint that is really dead or a request
//! that is really wrong, and every temporary failure is a 503 with `Retry-After`.

use std::{sync::Arc, time::SystemTime};

use axum::{
    Router,
    body::{Body, HttpBody},
    extract::{Path, State},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    protocol,
    relay::{Outcome, Relay, Unavailable},
    store::Store,
    token::{Claims, KeyRing},
};

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
    Delivered {
        id: String,
    },
    /// Unknown, tampered, expired or revoked token, or the client says the app is gone.
    Gone,
    TooLarge,
    Empty,
    Unreadable,
    Unavailable(Unavailable),
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
            PushReply::Delivered { id } => {
                let location = HeaderValue::from_str(&format!("/message/{id}"))
                    .unwrap_or_else(|_| HeaderValue::from_static("/message/"));
                (
                    StatusCode::CREATED,
                    [
                        (header::HeaderName::from_static("ttl"), HeaderValue::from(0)),
                        (header::LOCATION, location),
                    ],
                )
                    .into_response()
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
            PushReply::Unavailable(why) => {
                let reason = match why {
                    Unavailable::LinkDown => "the push service is reconnecting to XMPP".to_owned(),
                    Unavailable::Refused(condition) => {
                        format!("the client is unreachable right now ({condition})")
                    }
                    Unavailable::Timeout => "the client did not answer in time".to_owned(),
                };
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [retry_after()],
                    format!("{reason}; retry later\n"),
                )
                    .into_response()
            }
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

/// `POST`/`PUT /push/{token}`: relay one message and answer from the client's verdict.
async fn push(
    State(state): State<Arc<AppState>>,
    Path(token): Path<String>,
    body: Body,
) -> PushReply {
    let Some(claims) = live_claims(&state, &token) else {
        return PushReply::Gone;
    };
    // A declared length (Content-Length, as hyper reports it in the body's size hint) over the
    // limit is refused before a byte of it is read. The headers themselves are not extracted:
    // axum would copy them for every push in flight.
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
    match state.relay.push(&claims, &body).await {
        Ok(Outcome::Delivered { id }) => PushReply::Delivered { id },
        Ok(Outcome::Revoked) => {
            tracing::info!("endpoint revoked by its client");
            PushReply::Gone
        }
        Ok(Outcome::Unavailable(why)) => {
            tracing::debug!(?why, "push not delivered");
            PushReply::Unavailable(why)
        }
        Err(e) => {
            tracing::error!(error = %e, "push failed");
            PushReply::Internal
        }
    }
}
