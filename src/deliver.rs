//! Offering held messages again, until each is taken, expires, or its app is gone.
//!
//! A client's held messages go out when it sends xup a directed presence (Conversations does so
//! when it comes online), when a new message for it is held while the link is up, on a periodic
//! retry (`delivery.retry_interval`) for clients that never announce themselves, and whenever the
//! component link comes back. They go out one at a time, oldest first, each waiting for its answer,
//! so the client sees them in order; the first one it cannot take ends the round for that client.
//!
//! An answer that arrives after its push stopped waiting (a `result` later than
//! `delivery.timeout`) is a late answer: the held copy is removed, so the client never gets the
//! message twice.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use tokio::{
    sync::{Semaphore, mpsc, watch},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;
use xmpp_parsers::jid::Jid;

use crate::{
    held::HeldMessages,
    relay::{Offered, Relay, RelayError},
};

/// What the deliverer is told.
#[derive(Debug)]
pub enum Event {
    /// Offer this client (a full JID) what is held for it.
    Wake(String),
    /// A `result` from `from` for push `id`, after nobody waited for it any more.
    LateResult { id: String, from: Jid },
}

/// The sending side, for the relay and the component link. Cheap to clone.
#[derive(Clone)]
pub struct Wakeups(mpsc::UnboundedSender<Event>);

impl Wakeups {
    pub fn channel() -> (Wakeups, mpsc::UnboundedReceiver<Event>) {
        let (sender, receiver) = mpsc::unbounded_channel();
        (Wakeups(sender), receiver)
    }

    pub fn wake(&self, subject: String) {
        let _ = self.0.send(Event::Wake(subject));
    }

    pub fn late_result(&self, id: String, from: Jid) {
        let _ = self.0.send(Event::LateResult { id, from });
    }
}

/// Clients being offered their messages right now, and whether another round was asked for
/// meanwhile (a wake-up during a round must not be lost, nor start a second round beside it).
type Busy = Arc<Mutex<HashMap<String, bool>>>;

/// Clients being offered messages at once. A retry offers every waiting client; with many
/// offline, this spreads the IQs (and the server's bounces) instead of sending them in one burst.
const MAX_ROUNDS_AT_ONCE: usize = 256;

/// Run until `shutdown`: react to events, retry every `retry_interval`, and offer everything
/// again each time `link_up` turns true.
pub async fn run(
    relay: Arc<Relay>,
    held: Arc<HeldMessages>,
    mut link_up: watch::Receiver<bool>,
    mut events: mpsc::UnboundedReceiver<Event>,
    retry_interval: Duration,
    shutdown: CancellationToken,
) {
    let busy: Busy = Arc::default();
    let offering = Arc::new(Semaphore::new(MAX_ROUNDS_AT_ONCE));
    let mut rounds = JoinSet::new();
    let mut retry = tokio::time::interval(retry_interval);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let everyone = tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(event) = events.recv() => {
                match event {
                    Event::Wake(subject) => {
                        start_round(subject, &relay, &held, &busy, &offering, &mut rounds);
                    }
                    Event::LateResult { id, from } => {
                        match held.remove(&id, &from.to_string()).await {
                            Ok(true) => tracing::debug!("a late result removed a held message"),
                            Ok(false) => {}
                            Err(e) => tracing::warn!(error = %e, "cannot remove a held message"),
                        }
                    }
                }
                false
            }
            _ = retry.tick() => true,
            changed = link_up.changed() => changed.is_ok() && *link_up.borrow(),
            // Reap finished rounds so the set does not grow.
            Some(_) = rounds.join_next() => false,
        };
        if everyone && *link_up.borrow() {
            for subject in held.subjects() {
                start_round(subject, &relay, &held, &busy, &offering, &mut rounds);
            }
        }
    }
    // Whatever a round had not yet offered stays held for the next start.
    rounds.shutdown().await;
}

fn start_round(
    subject: String,
    relay: &Arc<Relay>,
    held: &Arc<HeldMessages>,
    busy: &Busy,
    offering: &Arc<Semaphore>,
    rounds: &mut JoinSet<()>,
) {
    if !held.has_any(&subject) {
        return;
    }
    {
        let mut busy = busy.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(again) = busy.get_mut(&subject) {
            *again = true;
            return;
        }
        busy.insert(subject.clone(), false);
    }
    let (relay, held, busy, offering) =
        (relay.clone(), held.clone(), busy.clone(), offering.clone());
    rounds.spawn(async move {
        let Ok(_turn) = offering.acquire_owned().await else {
            return; // never closed
        };
        loop {
            offer_all(&subject, &relay, &held).await;
            let mut busy = busy.lock().unwrap_or_else(|e| e.into_inner());
            if busy.get(&subject) == Some(&true) {
                busy.insert(subject.clone(), false);
                continue;
            }
            busy.remove(&subject);
            return;
        }
    });
}

/// Offer `subject` its held messages in order, until one is not taken.
async fn offer_all(subject: &str, relay: &Relay, held: &HeldMessages) {
    let waiting = match held.waiting_for(subject, SystemTime::now()).await {
        Ok(waiting) => waiting,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read held messages");
            return;
        }
    };
    // Apps found gone during this round: their other messages were dropped with the registration.
    let mut gone = Vec::new();
    for message in waiting {
        if gone.contains(&(message.application.clone(), message.instance.clone())) {
            continue;
        }
        let (offered, _ticket) = relay.offer(&message).await;
        let done = match offered {
            Offered::Taken => held
                .remove(&message.id, subject)
                .await
                .map(|_| ())
                .map_err(RelayError::from),
            Offered::Gone => {
                gone.push((message.application.clone(), message.instance.clone()));
                relay.forget_registration(&message).await
            }
            Offered::NotNow(why) => {
                tracing::debug!(?why, "a client with held messages is still unreachable");
                return;
            }
        };
        if let Err(e) = done {
            tracing::warn!(error = %e, "cannot update held messages");
            return;
        }
    }
}
