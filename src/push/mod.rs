//! One push, whichever door it came in by (an RFC 8030 request to an endpoint, a Matrix
//! homeserver's notify): the checks every push passes, and the hand-off to the dialect its
//! endpoint speaks.
//!
//! Checks run cheapest first, so a flood costs as little as it can: the sender against its rate
//! limit (its address, or the application server's key if it signs with VAPID, `vapid.rs`; a
//! signature is verified only for an address not refused for bad ones), then the token (decrypted in memory; a forgery is counted against its sender
//! and never reaches the store; only a genuine token past its first lifetime may, to learn
//! whether it was renewed), then revocation, then the endpoint's binding to a key. The door then reads the body, and only a push
//! whose body has come passes the endpoint's own rate limit and takes a slot among the pushes in
//! flight ([`Pushes::admit`]): a slow body holds no slot. Then it crosses the one seam between the
//! doors and XMPP, [`Deliver`]: the endpoint's dialect decides (`dialects/`), or, on a standby
//! of several instances, the leader does (`cluster/`).
//!
//! Every way a push can end is a [`Verdict`]. This folder knows no door and no dialect: the doors
//! (`http/`) call it and say a verdict in their own words, the dialects implement [`Deliver`].

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    pin::Pin,
    sync::Arc,
    time::{Duration, SystemTime},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::{
    limits::{Limits, RetryAfter, address_key},
    message::Request,
    metrics::PushOutcome,
    store::{Store, registration_key},
    token::{Claims, Dialect, KeyRing, Opened, TokenError},
    vapid::{self, Identity, KeyDigest, Vapid, VapidError},
};

/// What every door shares.
pub struct Pushes {
    pub keys: Arc<KeyRing>,
    /// What the tokens pushed to lately opened to.
    pub opened: Opened,
    pub store: Arc<Store>,
    pub limits: Arc<Limits>,
    /// Checks the senders' VAPID headers.
    pub vapid: Vapid,
    /// `limits.blocked_vapid_keys`.
    pub blocked: HashSet<KeyDigest>,
    /// One permit per push waiting for its client: `http.max_in_flight`.
    pub in_flight: Arc<Semaphore>,
    /// Where an admitted push goes: the dialects, or the cluster in front of them.
    pub route: Arc<dyn Deliver>,
}

/// Every way a push can end.
#[derive(Debug, PartialEq)]
pub enum Verdict {
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
    /// No valid VAPID identity where one is needed, or one that does not verify: the reason says
    /// which (RFC 8292 §4.2).
    Unauthorized(VapidError),
    /// A VAPID key the endpoint is not bound to, or one the operator blocked; the reason says which.
    Forbidden(&'static str),
    /// A `TTL`, `Topic` or `Urgency` header that RFC 8030 does not allow; the reason names it.
    BadHeader(&'static str),
    /// The endpoint's client takes text only (sum7's dialect); the reason says what is wrong.
    NotText(String),
    /// The store holds all it may; the sender keeps the message and retries.
    Full,
    /// The component link is down, and the endpoint's dialect cannot hold the message.
    LinkDown,
    Internal,
}

impl Verdict {
    /// What the metrics call this answer.
    pub fn outcome(&self) -> PushOutcome {
        match self {
            Verdict::Accepted { how, .. } => *how,
            Verdict::Gone => PushOutcome::NotFound,
            Verdict::Revoked => PushOutcome::Revoked,
            Verdict::TooLarge => PushOutcome::TooLarge,
            Verdict::Empty | Verdict::Unreadable | Verdict::BadHeader(_) | Verdict::NotText(_) => {
                PushOutcome::BadRequest
            }
            Verdict::SlowBody => PushOutcome::Timeout,
            Verdict::TooMany { .. } => PushOutcome::RateLimited,
            Verdict::Unauthorized(_) => PushOutcome::Unauthorized,
            Verdict::Forbidden(_) => PushOutcome::Forbidden,
            Verdict::Busy => PushOutcome::Busy,
            Verdict::Full => PushOutcome::Full,
            Verdict::LinkDown => PushOutcome::LinkDown,
            Verdict::Internal => PushOutcome::Internal,
        }
    }
}

/// A push that passed every check and holds a slot among the pushes in flight until it is done.
pub struct Admitted {
    claims: Claims,
    _slot: OwnedSemaphorePermit,
}

impl Pushes {
    /// Who sent a request, and whether it is within its rate limit: once per request, however
    /// many pushes it holds. A sender that signs with VAPID (`authorization`, the header) is its
    /// key, which has a rate limit of its own and may be blocked; any other is its address. A
    /// signature that does not verify is counted against the address like a forged token, and an
    /// address over that limit is refused before its next signature costs a verification.
    pub fn admit_sender(
        &self,
        sender: IpAddr,
        authorization: Option<&str>,
    ) -> Result<Option<Identity>, Verdict> {
        let Some(header) = authorization.filter(|h| vapid::is_vapid(h)) else {
            self.limits
                .per_address
                .check(&address_key(sender))
                .map_err(|wait| Verdict::TooMany {
                    what: "from this address",
                    wait,
                })?;
            return Ok(None);
        };
        let address = address_key(sender);
        let forged = |wait| Verdict::TooMany {
            what: "with invalid endpoints or signatures from this address",
            wait,
        };
        if let Some(wait) = self.limits.forged_tokens.refusing(&address) {
            return Err(forged(wait));
        }
        let identity = match self.vapid.verify(header, SystemTime::now()) {
            Ok(identity) => identity,
            Err(e) => {
                tracing::debug!(error = %e, "a VAPID header that does not verify");
                self.limits.forged_tokens.check(&address).map_err(forged)?;
                return Err(Verdict::Unauthorized(e));
            }
        };
        if self.blocked.contains(&identity.key) {
            return Err(Verdict::Forbidden(
                "this application server's key is blocked by the push provider",
            ));
        }
        self.limits
            .per_vapid_key
            .check(&identity.key)
            .map_err(|wait| Verdict::TooMany {
                what: "from this application server key",
                wait,
            })?;
        Ok(Some(identity))
    }

    /// Whether a push from `identity` may go to the endpoint of `claims`: any may, unless the
    /// endpoint is bound to an application server's key (RFC 8292 §4.2).
    pub fn authorize(&self, claims: &Claims, identity: Option<&Identity>) -> Result<(), Verdict> {
        match (claims.vapid, identity) {
            (None, _) => Ok(()),
            (Some(_), None) => Err(Verdict::Unauthorized(VapidError::Missing)),
            (Some(bound), Some(identity)) if bound == identity.key => Ok(()),
            (Some(_), Some(_)) => Err(Verdict::Forbidden(
                "this endpoint is bound to another application server's key",
            )),
        }
    }

    /// The live endpoint `token` names, or why it is dead to `sender`. A token that does not
    /// decrypt is counted against its sender, who is refused with `429` once past
    /// `limits.forged_tokens_per_address`. Memory only, but for a renewable token past its first
    /// lifetime that xup has not seen renewed lately: the store then says whether it was.
    pub async fn open(&self, sender: IpAddr, token: &str) -> Result<Claims, Verdict> {
        let now = SystemTime::now();
        let claims = match self.opened.open(&self.keys, token, now) {
            Ok(claims) => claims,
            Err(e @ (TokenError::Malformed | TokenError::Forged)) => {
                tracing::debug!(error = %e, "forged endpoint");
                self.limits
                    .forged_tokens
                    .check(&address_key(sender))
                    .map_err(|wait| Verdict::TooMany {
                        what: "with invalid endpoints from this address",
                        wait,
                    })?;
                return Err(Verdict::Gone);
            }
            // Boxed: rare, and inline its store query would widen every push's future.
            Err(TokenError::Lapsed(claims)) => Box::pin(self.renewed(*claims, now)).await?,
            Err(e) => {
                tracing::debug!(error = %e, "dead endpoint");
                return Err(Verdict::Gone);
            }
        };
        if self.store.is_revoked(&claims) {
            tracing::debug!("revoked endpoint");
            return Err(Verdict::Gone);
        }
        Ok(claims)
    }

    /// `claims` of a token past its first lifetime, alive until its registration's end if the
    /// client has renewed it since.
    async fn renewed(&self, mut claims: Claims, now: SystemTime) -> Result<Claims, Verdict> {
        match self.store.renewed_until(&claims, now).await {
            Ok(Some(until)) => {
                claims.expires_at = until;
                Ok(claims)
            }
            Ok(None) => {
                tracing::debug!("endpoint not renewed");
                Err(Verdict::Gone)
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot read a registration's renewal");
                Err(Verdict::Internal)
            }
        }
    }

    /// The endpoint's own rate limit, and a slot among the pushes in flight.
    pub fn admit(&self, claims: Claims) -> Result<Admitted, Verdict> {
        if let Err(wait) = self.limits.per_endpoint.check(&registration_key(&claims)) {
            return Err(Verdict::TooMany {
                what: "for this endpoint",
                wait,
            });
        }
        let slot = self
            .in_flight
            .clone()
            .try_acquire_owned()
            .map_err(|_| Verdict::Busy)?;
        Ok(Admitted {
            claims,
            _slot: slot,
        })
    }

    /// Hand an admitted push to its endpoint's dialect, and say how it went. Not an `async fn`:
    /// that would keep its own copy of the claims and the request for as long as the push waits
    /// for its client; this keeps only the slot and the dialect's future.
    pub fn deliver(
        &self,
        push: Admitted,
        request: Request,
    ) -> impl Future<Output = Verdict> + Send + '_ {
        let Admitted {
            claims,
            _slot: slot,
        } = push;
        let delivering = self.route.deliver(claims, request);
        async move {
            let verdict = delivering.await;
            drop(slot);
            verdict
        }
    }
}

/// A push on its way to its client, and then its verdict. Boxed, and passed on as it is: a layer
/// that only chooses where a push goes (the cluster, the table of dialects) returns the future of
/// the one it chose instead of awaiting it in a future of its own. Each such wrapper kept its own
/// copy of the claims and the request for as long as the push waited for its client, and 10 000
/// pushes can wait at once (docs/BENCHMARKS.md).
pub type Delivery<'a> = Pin<Box<dyn Future<Output = Verdict> + Send + 'a>>;

/// The one way from a door to the XMPP side: whatever delivers a push (a dialect, the table of
/// dialects, or on one of several instances the cluster in front of them) says how it went.
pub trait Deliver: Send + Sync {
    fn deliver(&self, claims: Claims, request: Request) -> Delivery<'_>;
}

/// Each dialect's deliverer, by the dialect its endpoints' tokens name.
#[derive(Default)]
pub struct Dialects {
    table: HashMap<Dialect, Arc<dyn Deliver>>,
}

impl Dialects {
    pub fn with(mut self, dialect: Dialect, deliver: Arc<dyn Deliver>) -> Dialects {
        self.table.insert(dialect, deliver);
        self
    }
}

impl Deliver for Dialects {
    fn deliver(&self, claims: Claims, request: Request) -> Delivery<'_> {
        match self.table.get(&claims.dialect) {
            Some(dialect) => dialect.deliver(claims, request),
            None => {
                tracing::error!(dialect = ?claims.dialect, "no deliverer for this dialect");
                Box::pin(std::future::ready(Verdict::Internal))
            }
        }
    }
}
