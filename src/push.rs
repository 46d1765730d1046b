//! One push, whichever door it came in by (an RFC 8030 request to an endpoint, a Matrix
//! homeserver's notify): the checks every push passes, and the hand-off to the dialect its
//! endpoint speaks.
//!
//! Checks run cheapest first, so a flood costs as little as it can: the sender's address against
//! its rate limit, then the token (decrypted in memory; a forgery is counted against its sender
//! and never reaches the store), then revocation. The door then reads the body, and only a push
//! whose body has come passes the endpoint's own rate limit and takes a slot among the pushes in
//! flight ([`Pushes::admit`]): a slow body holds no slot. Then the endpoint's dialect
//! decides: a Conversations client gets the relay (`relay.rs`: an IQ, its answer, holding), a
//! sum7 client a `<message>` (`sum7.rs`).
//!
//! Every way a push can end is a [`Verdict`]; each door says it in its own words (an HTTP status
//! in `http.rs`, a rejected pushkey in `matrix.rs`).

use std::{
    net::IpAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::{
    cluster::{Answer, Cluster, Handoff},
    limits::{Limits, RetryAfter, address_key},
    metrics::PushOutcome,
    relay::{self, Outcome, Relay},
    store::{Store, registration_key},
    sum7,
    token::{Claims, Dialect, KeyRing, TokenError},
};

/// What every door shares.
pub struct Pushes {
    pub keys: Arc<KeyRing>,
    pub store: Arc<Store>,
    pub relay: Arc<Relay>,
    pub sum7: sum7::Sender,
    pub limits: Arc<Limits>,
    /// One permit per push waiting for its client: `http.max_in_flight`.
    pub in_flight: Arc<Semaphore>,
    /// With PostgreSQL: the other instances, one of which may hold the link.
    pub cluster: Option<Arc<Cluster>>,
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
    /// Whether `sender` is within its rate limit: once per request, however many pushes it holds.
    pub fn admit_sender(&self, sender: IpAddr) -> Result<(), Verdict> {
        self.limits
            .per_address
            .check(&address_key(sender))
            .map_err(|wait| Verdict::TooMany {
                what: "from this address",
                wait,
            })
    }

    /// The live endpoint `token` names, or why it is dead to `sender`. A token that does not
    /// decrypt is counted against its sender, who is refused with `429` once past
    /// `limits.forged_tokens_per_address`.
    pub fn open(&self, sender: IpAddr, token: &str) -> Result<Claims, Verdict> {
        let claims = match self.keys.open(token, SystemTime::now()) {
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

    /// Hand an admitted push to its endpoint's dialect, here or (on a standby) at the instance
    /// that holds the link, and say how it went.
    pub async fn deliver(&self, push: Admitted, request: relay::Request) -> Verdict {
        let Admitted { claims, _slot } = push;
        match &self.cluster {
            Some(cluster) if !cluster.leads() => self.hand_over(cluster, claims, request).await,
            _ => self.deliver_here(claims, request).await,
        }
    }

    /// A standby's push: the leader's verdict, or, when no leader takes it in time, what this
    /// instance does without a link (it holds the message, or says the link is down), and the
    /// leader is told of what it held.
    async fn hand_over(
        &self,
        cluster: &Cluster,
        claims: Claims,
        request: relay::Request,
    ) -> Verdict {
        match cluster.hand_over(&claims, &request).await {
            Ok(answer) => verdict_of(answer),
            Err(why) => {
                tracing::debug!(%why, "keeping a push on a standby");
                let (subject, registration) = (claims.subject.clone(), registration_key(&claims));
                let verdict = self.deliver_here(claims, request).await;
                if let Verdict::Accepted {
                    id,
                    how: PushOutcome::Held,
                    ..
                } = &verdict
                {
                    cluster.announce_held(id, &subject, &registration);
                }
                verdict
            }
        }
    }

    /// Deliver through this instance's own link (which may be down: the relay then holds).
    async fn deliver_here(&self, claims: Claims, request: relay::Request) -> Verdict {
        match claims.dialect {
            Dialect::Conversations => self.relay_push(claims, request).await,
            Dialect::Sum7 => match self.sum7.send(&claims, &request.body).await {
                Ok(id) => Verdict::Accepted {
                    id,
                    ttl: Duration::ZERO,
                    how: PushOutcome::Sent,
                },
                Err(e @ sum7::SendError::NotText(_)) => Verdict::NotText(e.to_string()),
                Err(sum7::SendError::LinkDown) => Verdict::LinkDown,
            },
        }
    }

    async fn relay_push(&self, claims: Claims, request: relay::Request) -> Verdict {
        match self.relay.push(claims, request).await {
            Ok(Outcome::Delivered { id, ttl }) => Verdict::Accepted {
                id,
                ttl,
                how: PushOutcome::Delivered,
            },
            Ok(Outcome::Held { id, ttl }) => Verdict::Accepted {
                id,
                ttl,
                how: PushOutcome::Held,
            },
            Ok(Outcome::Dropped { id }) => Verdict::Accepted {
                id,
                ttl: Duration::ZERO,
                how: PushOutcome::Dropped,
            },
            Ok(Outcome::Revoked) => Verdict::Revoked,
            Ok(Outcome::Full) => Verdict::Full,
            Err(e) => {
                tracing::error!(error = %e, "push failed");
                Verdict::Internal
            }
        }
    }
}

/// Deliver, while this instance leads, the pushes standbys hand it, and answer each. A handed
/// push passed every check on its standby but revocation is checked again here, where every
/// revocation is made; each takes a slot among the pushes in flight, as one of this instance's
/// own would.
pub async fn serve_handed(
    pushes: Arc<Pushes>,
    cluster: Arc<Cluster>,
    mut handed: tokio::sync::mpsc::UnboundedReceiver<Handoff>,
) {
    while let Some(push) = handed.recv().await {
        let (reply_to, ticket) = (push.reply_to.clone(), push.ticket);
        let (pushes, cluster) = (pushes.clone(), cluster.clone());
        tokio::spawn(async move {
            let verdict = match push.into_push() {
                None => Verdict::Unreadable,
                Some((claims, _)) if pushes.store.is_revoked(&claims) => Verdict::Gone,
                Some((claims, request)) => match pushes.in_flight.clone().try_acquire_owned() {
                    Err(_) => Verdict::Busy,
                    Ok(_slot) => pushes.deliver_here(claims, request).await,
                },
            };
            cluster.answer(&reply_to, ticket, answer_of(verdict));
        });
    }
}

/// A verdict as it crosses to the standby that asked.
fn answer_of(verdict: Verdict) -> Answer {
    let secs = |ttl: Duration| ttl.as_secs();
    match verdict {
        Verdict::Accepted { id, ttl, how } => match how {
            PushOutcome::Delivered => Answer::Delivered { id, ttl: secs(ttl) },
            PushOutcome::Held => Answer::Held { id, ttl: secs(ttl) },
            PushOutcome::Sent => Answer::Sent { id },
            _ => Answer::Dropped { id },
        },
        Verdict::Gone => Answer::Gone,
        Verdict::Revoked => Answer::Revoked,
        Verdict::Full => Answer::Full,
        Verdict::Busy => Answer::Busy,
        Verdict::LinkDown => Answer::LinkDown,
        Verdict::NotText(why) => Answer::NotText(why),
        _ => Answer::Internal,
    }
}

/// The verdict the leader's answer stands for.
fn verdict_of(answer: Answer) -> Verdict {
    let accepted = |id, ttl, how| Verdict::Accepted {
        id,
        ttl: Duration::from_secs(ttl),
        how,
    };
    match answer {
        Answer::Delivered { id, ttl } => accepted(id, ttl, PushOutcome::Delivered),
        Answer::Held { id, ttl } => accepted(id, ttl, PushOutcome::Held),
        Answer::Dropped { id } => accepted(id, 0, PushOutcome::Dropped),
        Answer::Sent { id } => accepted(id, 0, PushOutcome::Sent),
        Answer::Gone => Verdict::Gone,
        Answer::Revoked => Verdict::Revoked,
        Answer::Full => Verdict::Full,
        Answer::Busy => Verdict::Busy,
        Answer::LinkDown => Verdict::LinkDown,
        Answer::NotText(why) => Verdict::NotText(why),
        Answer::Internal => Verdict::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_verdict_a_leader_can_give_crosses_unchanged() {
        let accepted = |how, ttl| Verdict::Accepted {
            id: "m1".into(),
            ttl: Duration::from_secs(ttl),
            how,
        };
        for verdict in [
            accepted(PushOutcome::Delivered, 60),
            accepted(PushOutcome::Held, 60),
            accepted(PushOutcome::Dropped, 0),
            accepted(PushOutcome::Sent, 0),
            Verdict::Gone,
            Verdict::Revoked,
            Verdict::Full,
            Verdict::Busy,
            Verdict::LinkDown,
            Verdict::NotText("text only".into()),
            Verdict::Internal,
        ] {
            let wire = serde_json::to_string(&answer_of(clone(&verdict))).expect("json");
            let back: Answer = serde_json::from_str(&wire).expect("parses");
            assert_eq!(verdict_of(back), verdict, "{wire}");
        }
    }

    fn clone(verdict: &Verdict) -> Verdict {
        match verdict {
            Verdict::Accepted { id, ttl, how } => Verdict::Accepted {
                id: id.clone(),
                ttl: *ttl,
                how: *how,
            },
            Verdict::NotText(why) => Verdict::NotText(why.clone()),
            Verdict::Gone => Verdict::Gone,
            Verdict::Revoked => Verdict::Revoked,
            Verdict::Full => Verdict::Full,
            Verdict::Busy => Verdict::Busy,
            Verdict::LinkDown => Verdict::LinkDown,
            _ => Verdict::Internal,
        }
    }
}
