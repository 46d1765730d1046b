//! Offering held messages again, until each is taken, expires, or its app is gone.
//!
//! A phone is not one inbox: each app on it has its own registration, and a message stuck in one
//! must never hold back another. So held messages queue *per registration* (one app instance of
//! one client, `store/held.rs`): within a queue they go out one at a time, oldest first, each waiting for
//! its answer, so the app sees them in order; across queues nothing waits. A client gets at most
//! [`CLIENT_WINDOW`] queues offered at once, so a phone coming back is not flooded either.
//!
//! When a queue is offered:
//! - as soon as a message is held in it, unless the client is known to be offline, the queue is
//!   waiting after a failure, or its oldest message is still in flight (a push whose sender was
//!   answered while the client may still answer, `xmpp/pending.rs`);
//! - when the client sends available presence (Conversations does at every new session): all its
//!   queues at once, whatever they were waiting for;
//! - on any sign of life (a `result`, a `<register>`; a stream resumed under XEP-0198 sends no new
//!   presence): the queues whose last failure may have been the client's absence, that is, those
//!   whose offer met silence with no sign of life from the client since it went out (an app that
//!   refuses, or stays silent while the client answers for its other apps, waits its backoff);
//! - after a failure, with backoff per queue: [`FIRST_RETRY`], doubling up to
//!   `delivery.retry_interval`;
//! - every `delivery.retry_interval`, each queue that is due (a safety net), and all of them each
//!   time the component link comes back.
//!
//! A client known to be offline (`xmpp/presence.rs`) is offered nothing until it is heard of again.
//!
//! One task owns all of this state; the relay tells it what it held ([`Notice`]), the component link
//! what it learnt ([`LinkEvent`]), and each round (the offers of one queue) reports how it ended.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap, VecDeque},
    sync::Arc,
    time::{Duration, SystemTime},
};

use tokio::{
    sync::{mpsc, watch},
    task::JoinSet,
    time::Instant,
};
use tokio_util::sync::CancellationToken;

use crate::{
    dialects::conversations::relay::{Offered, Relay, Unavailable},
    message::Urgency,
    store::{
        RegistrationKey,
        held::{HeldMessages, Notice},
        registration_key_of,
    },
    xmpp::{
        LinkEvent,
        pending::{Answer, InFlight},
        presence::Presence,
    },
};

/// Queues offered to one client at once: enough that one stuck app never holds back the others,
/// few enough that a phone coming back is not flooded.
pub const CLIENT_WINDOW: usize = 8;

/// The first wait after an offer that was not taken; it doubles at every failure, up to
/// `delivery.retry_interval`.
pub const FIRST_RETRY: Duration = Duration::from_secs(30);

/// Queues being offered at once, over all clients. A retry or a reconnect offers every waiting
/// queue; with many clients offline this spreads the IQs (and the server's bounces) out.
const MAX_ROUNDS_AT_ONCE: usize = 256;

/// How often pushes whose sender stopped waiting are checked for having run out of time.
const EXPIRY_SWEEP: Duration = Duration::from_secs(1);

/// What the deliverer works with.
pub struct Parts {
    pub relay: Arc<Relay>,
    pub held: Arc<HeldMessages>,
    pub in_flight: InFlight,
    pub presence: Arc<Presence>,
    pub link_up: watch::Receiver<bool>,
}

/// What it is told.
pub struct Inputs {
    pub link_events: mpsc::Receiver<LinkEvent>,
    pub notices: mpsc::UnboundedReceiver<Notice>,
}

/// Run until `shutdown`. Whatever a round had not yet offered stays held for the next start.
pub async fn run(
    parts: Parts,
    mut inputs: Inputs,
    retry_interval: Duration,
    shutdown: CancellationToken,
) {
    let mut link_up = parts.link_up.clone();
    let mut deliverer = Deliverer {
        parts,
        retry_interval,
        clients: HashMap::new(),
        rounds: JoinSet::new(),
        due: VecDeque::new(),
        timers: BinaryHeap::new(),
    };
    let mut retry = tokio::time::interval(retry_interval);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sweep = tokio::time::interval(EXPIRY_SWEEP);
    loop {
        let next_timer = deliverer.next_timer();
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(event) = inputs.link_events.recv() => deliverer.on_link_event(event).await,
            Some(notice) = inputs.notices.recv() => deliverer.on_notice(notice),
            Some(round) = deliverer.rounds.join_next() => {
                if let Ok(round) = round {
                    deliverer.on_round_end(round);
                }
            }
            _ = tokio::time::sleep_until(next_timer) => deliverer.on_timers(),
            _ = sweep.tick() => deliverer.expire(),
            _ = retry.tick() => deliverer.everyone(false),
            changed = link_up.changed() => {
                if changed.is_err() {
                    break;
                }
                let up = *link_up.borrow();
                if up {
                    deliverer.everyone(true);
                } else {
                    deliverer.parts.presence.forget_all();
                }
            }
        }
    }
    deliverer.rounds.shutdown().await;
}

struct Deliverer {
    parts: Parts,
    retry_interval: Duration,
    /// Clients with messages held, by full JID.
    clients: HashMap<String, Client>,
    /// The rounds offering now, at most [`MAX_ROUNDS_AT_ONCE`].
    rounds: JoinSet<Round>,
    /// Queues started (counted as running) that wait for a place among the rounds, oldest first.
    due: VecDeque<(String, RegistrationKey)>,
    /// When a queue that failed may be tried again; stale entries are skipped when they come due.
    timers: BinaryHeap<Reverse<(Instant, String, RegistrationKey)>>,
}

#[derive(Default)]
struct Client {
    /// Rounds running for this client, one per queue, at most [`CLIENT_WINDOW`].
    running: usize,
    /// The last sign of life from it.
    alive_at: Option<Instant>,
    /// When it last came back (available presence, the link made anew): an offer sent before
    /// that which fails is tried again at once, not after a backoff.
    back_at: Option<Instant>,
    queues: HashMap<RegistrationKey, Queue>,
}

/// One registration's queue, as the deliverer sees it (the messages are in the store).
#[derive(Default)]
struct Queue {
    running: bool,
    /// Its oldest message is in flight: only that push's answer or expiry (or the client coming
    /// back) starts the queue again.
    parked: bool,
    /// What it holds is less urgent than its client takes now: a new message, the client's next
    /// presence, or the retry starts the queue again.
    below_minimum: bool,
    /// Run again when the running round ends: a message was held meanwhile.
    again: bool,
    /// When the last offer that was not taken went out, and whether it met silence (rather than
    /// an error).
    offered: Option<Instant>,
    silent: bool,
    /// After a failure: the current wait, and when it ends.
    backoff: Option<Duration>,
    not_before: Option<Instant>,
}

/// How the offers of one queue ended.
struct Round {
    subject: String,
    registration: RegistrationKey,
    end: End,
}

enum End {
    /// Everything was taken (or had expired).
    Emptied,
    /// The app is gone; the registration is revoked.
    Gone,
    /// The oldest message is in flight already: its answer, or its silence, continues the queue.
    InFlight,
    /// What is left is less urgent than the client takes now.
    BelowMinimum,
    /// An offer that went out at `offered` was not taken (or the store failed); `silent` when no
    /// answer came.
    Failed { offered: Instant, silent: bool },
}

impl Deliverer {
    /// Offer `registration` of `subject` now, if nothing stands in the way: something happened to
    /// it (a message held, an answer acted on, its time come). If a round is offering it already,
    /// that round is followed by another, as what happened may have come too late for it.
    fn start(&mut self, subject: &str, registration: RegistrationKey) {
        self.start_queue(subject, registration, true);
    }

    /// [`Deliverer::start`]; `again` says whether a running round is to be followed by another.
    fn start_queue(&mut self, subject: &str, registration: RegistrationKey, again: bool) {
        if !*self.parts.link_up.borrow() || self.parts.presence.is_offline(subject) {
            return;
        }
        let now = Instant::now();
        let client = self.clients.entry(subject.to_owned()).or_default();
        let queue = client.queues.entry(registration).or_default();
        if queue.running {
            queue.again |= again;
            return;
        }
        // Something happened to it (a message held): that message may be urgent enough.
        if again {
            queue.below_minimum = false;
        }
        if queue.parked
            || queue.below_minimum
            || queue.not_before.is_some_and(|t| t > now)
            || client.running >= CLIENT_WINDOW
        {
            // Its timer, or the end of one of the client's rounds, starts it.
            return;
        }
        queue.running = true;
        client.running += 1;
        self.due.push_back((subject.to_owned(), registration));
        self.launch();
    }

    /// Start rounds for the queues in [`Deliverer::due`] while fewer than [`MAX_ROUNDS_AT_ONCE`]
    /// run. A waiting queue is a line in a list rather than a task of its own: at a reconnect with
    /// tens of thousands of queues due, a task each was most of xup's memory (BENCHMARKS.md).
    fn launch(&mut self) {
        while self.rounds.len() < MAX_ROUNDS_AT_ONCE {
            let Some((subject, registration)) = self.due.pop_front() else {
                return;
            };
            let relay = self.parts.relay.clone();
            let held = self.parts.held.clone();
            let in_flight = self.parts.in_flight.clone();
            // Read when the round starts, not when it was queued: the client may have said since.
            let minimum = self.parts.presence.minimum_urgency(&subject);
            self.rounds.spawn(async move {
                let end =
                    offer_queue(&subject, registration, minimum, &relay, &held, &in_flight).await;
                Round {
                    subject,
                    registration,
                    end,
                }
            });
        }
    }

    /// Offer every queue of `subject` that is due and not being offered already (filling the
    /// client's window; nothing happened to the running ones).
    fn start_client(&mut self, subject: &str) {
        for registration in self.parts.held.registrations_of(subject) {
            self.start_queue(subject, registration, false);
        }
    }

    /// Offer every queue of `subject` now, whatever it was waiting for; a queue whose offer is
    /// still out is offered again as soon as that one fails, and one being offered is offered
    /// again when that round ends (it may have left what the client did not take before).
    fn force_client(&mut self, subject: &str) {
        let client = self.clients.entry(subject.to_owned()).or_default();
        client.back_at = Some(Instant::now());
        for queue in client.queues.values_mut() {
            queue.clear_backoff();
            queue.parked = false;
            queue.below_minimum = false;
            queue.again |= queue.running;
        }
        self.start_client(subject);
        self.forget_if_idle(subject);
    }

    /// Every client with messages held: the queues that are due, or (`force`) all of them. A
    /// queue parked behind a push in flight is looked at again too (it parks again if that push
    /// is still out), so no lost event can leave one parked for good.
    fn everyone(&mut self, force: bool) {
        for client in self.clients.values_mut() {
            for queue in client.queues.values_mut() {
                queue.parked = false;
                queue.below_minimum = false;
            }
        }
        for subject in self.parts.held.subjects() {
            if force {
                self.force_client(&subject);
            } else {
                self.start_client(&subject);
            }
        }
    }

    /// A sign of life from `subject`: restart the queues that failed with no sign of life since
    /// their offer went out, as the client may simply have been away.
    fn alive(&mut self, subject: &str) {
        self.parts.presence.came_back(subject);
        let Some(client) = self.clients.get_mut(subject) else {
            return;
        };
        let previous = client.alive_at.replace(Instant::now());
        let mut restart = Vec::new();
        for (registration, queue) in &mut client.queues {
            let unheard_since_offer = queue
                .offered
                .is_some_and(|offered| previous.is_none_or(|alive| offered > alive));
            if queue.not_before.is_some() && queue.silent && unheard_since_offer {
                queue.clear_backoff();
                restart.push(*registration);
            }
        }
        for registration in restart {
            self.start(subject, registration);
        }
    }

    /// An offer that went out at `offered` was not taken (`silent`: no answer came): the queue
    /// waits before it is tried again, unless the client came back since that offer went out.
    fn failed(
        &mut self,
        subject: &str,
        registration: RegistrationKey,
        offered: Instant,
        silent: bool,
    ) {
        if !self.parts.held.has_backlog(subject, &registration) {
            return;
        }
        let now = Instant::now();
        let client = self.clients.entry(subject.to_owned()).or_default();
        let back_since_offer = client.back_at.is_some_and(|back| offered < back);
        let queue = client.queues.entry(registration).or_default();
        queue.parked = false;
        if back_since_offer {
            queue.clear_backoff();
            self.start(subject, registration);
            return;
        }
        let backoff = queue
            .backoff
            .map_or(FIRST_RETRY, |wait| wait * 2)
            .min(self.retry_interval);
        queue.offered = Some(offered);
        queue.silent = silent;
        queue.backoff = Some(backoff);
        queue.not_before = Some(now + backoff);
        self.timers
            .push(Reverse((now + backoff, subject.to_owned(), registration)));
    }

    fn on_round_end(&mut self, round: Round) {
        let Round {
            subject,
            registration,
            end,
        } = round;
        // A place among the rounds is free.
        self.launch();
        let Some(client) = self.clients.get_mut(&subject) else {
            return;
        };
        client.running -= 1;
        let again = match client.queues.get_mut(&registration) {
            Some(queue) => {
                let again = std::mem::take(&mut queue.again);
                queue.running = false;
                // Parked only if nothing happened to it meanwhile; else it is looked at again.
                queue.parked = matches!(end, End::InFlight) && !again;
                queue.below_minimum = matches!(end, End::BelowMinimum) && !again;
                if matches!(end, End::Emptied | End::Gone) {
                    queue.clear_backoff();
                }
                again
            }
            None => false,
        };
        match end {
            // Something happened to the queue while the round ran: the message it found in
            // flight may have been answered meanwhile.
            End::Emptied | End::Gone | End::InFlight | End::BelowMinimum if again => {
                self.start(&subject, registration);
            }
            // Its answer or its expiry continues a queue whose message is in flight; the client's
            // next presence one that holds only what it does not take now.
            End::Emptied | End::Gone | End::InFlight | End::BelowMinimum => {}
            End::Failed { offered, silent } => self.failed(&subject, registration, offered, silent),
        }
        // A place in the client's window is free.
        self.start_client(&subject);
        self.forget_if_idle(&subject);
    }

    /// Drop what is kept about `subject` once nothing of it is held or running.
    fn forget_if_idle(&mut self, subject: &str) {
        let held = &self.parts.held;
        if let Some(client) = self.clients.get_mut(subject) {
            client.queues.retain(|registration, queue| {
                queue.running || held.has_backlog(subject, registration)
            });
            if client.queues.is_empty() && client.running == 0 {
                self.clients.remove(subject);
            }
        }
    }

    fn on_notice(&mut self, notice: Notice) {
        match notice {
            Notice::Held {
                subject,
                registration,
                offered: None,
                ..
            } => self.start(&subject, registration),
            // Still in flight: its answer or its expiry will say.
            Notice::Held { id, .. } if self.parts.in_flight.contains(&id) => {}
            Notice::Held {
                subject,
                registration,
                offered: Some(offered),
                ..
            } => self.failed(&subject, registration, offered.into(), false),
            Notice::Settled {
                subject,
                registration,
            } => {
                self.unpark(&subject, registration);
                self.start(&subject, registration);
            }
        }
    }

    async fn on_link_event(&mut self, event: LinkEvent) {
        match event {
            LinkEvent::Presence {
                from,
                available: true,
            } => {
                let subject = from.to_string();
                tracing::debug!("a client announced itself");
                self.alive(&subject);
                self.force_client(&subject);
            }
            LinkEvent::Presence {
                from,
                available: false,
            } => {
                tracing::debug!("a client went offline");
                self.parts.presence.went_offline(from.to_string());
            }
            LinkEvent::Alive(from) => self.alive(&from.to_string()),
            LinkEvent::Unclaimed {
                id,
                from,
                answer,
                push,
            } => {
                let subject = from.to_string();
                if let Some(push) = &push {
                    self.parts.relay.trace_late(push, &answer);
                }
                match (push, answer) {
                    (push, Answer::Result) => {
                        match self.parts.held.remove(&id, &subject).await {
                            Ok(true) => tracing::debug!("a late result removed a held message"),
                            Ok(false) => {}
                            Err(e) => tracing::warn!(error = %e, "cannot remove a held message"),
                        }
                        self.parts.in_flight.settle(&id);
                        self.alive(&subject);
                        match push {
                            Some(push) => {
                                let registration = registration_key_of(
                                    &subject,
                                    &push.application,
                                    &push.instance,
                                );
                                self.unpark(&subject, registration);
                                self.start(&subject, registration);
                            }
                            None => self.start_client(&subject),
                        }
                    }
                    (Some(push), answer) if answer.means_gone() => {
                        let revoked = self
                            .parts
                            .relay
                            .revoke(&subject, &push.application, &push.instance)
                            .await;
                        if let Err(e) = revoked {
                            tracing::warn!(error = %e, "cannot revoke a registration");
                        }
                        self.parts.in_flight.settle(&id);
                    }
                    (Some(push), Answer::Error(_)) => {
                        self.parts.in_flight.settle(&id);
                        let registration =
                            registration_key_of(&subject, &push.application, &push.instance);
                        self.failed(&subject, registration, push.sent.into(), false);
                    }
                    // A late error to a push long forgotten: its held copy is tried again anyway.
                    (None, Answer::Error(_)) => {}
                }
                self.forget_if_idle(&subject);
            }
        }
    }

    /// Pushes whose sender stopped waiting and whose client stayed silent to the end: not taken.
    fn expire(&mut self) {
        for push in self.parts.in_flight.expire(Instant::now().into()) {
            let registration =
                registration_key_of(&push.subject, &push.application, &push.instance);
            self.failed(&push.subject, registration, push.sent.into(), true);
        }
    }

    /// The in-flight push a queue waited for has been answered.
    fn unpark(&mut self, subject: &str, registration: RegistrationKey) {
        if let Some(queue) = self
            .clients
            .get_mut(subject)
            .and_then(|client| client.queues.get_mut(&registration))
        {
            queue.parked = false;
        }
    }

    /// When the earliest timer is due; far off when there is none.
    fn next_timer(&self) -> Instant {
        match self.timers.peek() {
            Some(Reverse((at, _, _))) => *at,
            None => Instant::now() + self.retry_interval,
        }
    }

    fn on_timers(&mut self) {
        let now = Instant::now();
        while let Some(Reverse((at, _, _))) = self.timers.peek()
            && *at <= now
        {
            let Some(Reverse((_, subject, registration))) = self.timers.pop() else {
                break;
            };
            let due = self
                .clients
                .get(&subject)
                .and_then(|client| client.queues.get(&registration))
                .is_some_and(|queue| queue.not_before.is_some_and(|t| t <= now));
            if due {
                self.start(&subject, registration);
            }
        }
    }
}

impl Queue {
    fn clear_backoff(&mut self) {
        self.backoff = None;
        self.not_before = None;
    }
}

/// Offer one queue's messages at least as urgent as `minimum`, in order, until one is not taken.
async fn offer_queue(
    subject: &str,
    registration: RegistrationKey,
    minimum: Urgency,
    relay: &Relay,
    held: &HeldMessages,
    in_flight: &InFlight,
) -> End {
    let waiting = match held.waiting_in(registration, SystemTime::now()).await {
        Ok(waiting) => waiting,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read held messages");
            let offered = Instant::now();
            return End::Failed {
                offered,
                silent: false,
            };
        }
    };
    let all = waiting.len();
    let waiting: Vec<_> = waiting
        .into_iter()
        .filter(|message| message.urgency >= minimum)
        .collect();
    let held_back = all - waiting.len();
    for message in waiting {
        if in_flight.contains(&message.id) {
            return End::InFlight;
        }
        // What was read may be stale: an answer acted on since (the held copy removed, then the
        // push let go of) must not bring the message out again.
        match held.contains(&message.id).await {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read held messages");
                return End::Failed {
                    offered: Instant::now(),
                    silent: false,
                };
            }
        }
        let offered = Instant::now();
        tracing::debug!(id = message.id, "offering a held message");
        let (result, _ticket) = relay.offer(&message, relay.timeout()).await;
        match result {
            Offered::Taken => {
                if let Err(e) = held.remove(&message.id, subject).await {
                    tracing::warn!(error = %e, "cannot remove a delivered message");
                    return End::Failed {
                        offered,
                        silent: false,
                    };
                }
            }
            // Dead since it was accepted; newer messages of a registration made since may follow.
            Offered::Revoked => {
                tracing::debug!("not offering a message whose registration was revoked since");
                if let Err(e) = held.remove(&message.id, subject).await {
                    tracing::warn!(error = %e, "cannot remove a revoked message");
                    return End::Failed {
                        offered,
                        silent: false,
                    };
                }
            }
            Offered::Gone => {
                if let Err(e) = relay.forget_registration(&message).await {
                    tracing::warn!(error = %e, "cannot revoke a registration");
                }
                return End::Gone;
            }
            Offered::NotNow(why) => {
                tracing::debug!(?why, "a held message was not taken");
                let silent = matches!(why, Unavailable::Timeout | Unavailable::LinkDown);
                return End::Failed { offered, silent };
            }
        }
    }
    if held_back > 0 {
        return End::BelowMinimum;
    }
    End::Emptied
}
