//! How a standby's push reaches the leader, and the leader's verdict comes back: the cluster's
//! side of the seam between the doors and XMPP. It knows [`Deliver`] and [`Verdict`], never a
//! dialect: what the leader does with a handed push is whatever its own dialects do.

use std::{sync::Arc, time::Duration};

use tokio::{sync::mpsc, task::JoinSet};

use crate::{
    cluster::{Answer, Cluster, Handoff},
    message::Request,
    metrics::PushOutcome,
    push::{Deliver, Delivery, Pushes, Verdict},
    store::registration_key,
    token::Claims,
};

/// In front of this instance's dialects (`here`): while this instance leads, a push goes to them;
/// while it stands by, to the leader.
pub struct Forward {
    pub cluster: Arc<Cluster>,
    pub here: Arc<dyn Deliver>,
}

impl Deliver for Forward {
    fn deliver(&self, claims: Claims, request: Request) -> Delivery<'_> {
        if self.cluster.leads() {
            return self.here.deliver(claims, request);
        }
        Box::pin(self.hand_over(claims, request))
    }
}

impl Forward {
    /// A standby's push: the leader's verdict, or, when no leader takes it in time, what this
    /// instance does without a link (it holds the message, or says the link is down), and the
    /// leader is told of what it held.
    async fn hand_over(&self, claims: Claims, request: Request) -> Verdict {
        match self.cluster.hand_over(&claims, &request).await {
            Ok(answer) => verdict_of(answer),
            Err(why) => {
                tracing::debug!(%why, "keeping a push on a standby");
                let (subject, registration) = (claims.subject.clone(), registration_key(&claims));
                let verdict = self.here.deliver(claims, request).await;
                if let Verdict::Accepted {
                    id,
                    how: PushOutcome::Held,
                    ..
                } = &verdict
                {
                    self.cluster.announce_held(id, &subject, &registration);
                }
                verdict
            }
        }
    }
}

/// Deliver, while this instance leads, the pushes standbys hand it (to `here`, its own dialects),
/// and answer each. A handed push passed every check on its standby but revocation is checked
/// again here, where every revocation is made; each takes a slot among the pushes in flight, as
/// one of this instance's own would. Returns when the cluster stops handing, once every push it
/// took is answered.
pub async fn serve_handed(
    pushes: Arc<Pushes>,
    here: Arc<dyn Deliver>,
    cluster: Arc<Cluster>,
    mut handed: mpsc::UnboundedReceiver<Handoff>,
) {
    let mut serving = JoinSet::new();
    loop {
        let push = tokio::select! {
            push = handed.recv() => match push {
                Some(push) => push,
                None => break,
            },
            Some(_) = serving.join_next() => continue,
        };
        let (reply_to, ticket) = (push.reply_to.clone(), push.ticket);
        let (pushes, here, cluster) = (pushes.clone(), here.clone(), cluster.clone());
        serving.spawn(async move {
            let verdict = match push.into_push() {
                None => Verdict::Unreadable,
                Some((claims, _)) if pushes.store.is_revoked(&claims) => Verdict::Gone,
                Some((claims, request)) => match pushes.in_flight.clone().try_acquire_owned() {
                    Err(_) => Verdict::Busy,
                    Ok(_slot) => here.deliver(claims, request).await,
                },
            };
            cluster.answer(&reply_to, ticket, answer_of(verdict));
        });
    }
    while serving.join_next().await.is_some() {}
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
