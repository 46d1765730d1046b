//! Several xup instances on one PostgreSQL store: which one holds the component link, and how the
//! others hand it their pushes.
//!
//! Prosody admits one connection per component JID, so exactly one instance, the *leader*, holds
//! the link; the others serve HTTP and stand by. Leadership is a PostgreSQL advisory lock taken on
//! a session of its own: when the leader dies, or its connection does, PostgreSQL ends the session
//! and releases the lock, and the standby that asks next (each asks every [`TICK`]) takes the lock
//! and then the link. A leader that cannot reach its session within [`SESSION_CHECK`] drops the
//! link before anyone else can take the lock, so there are never two links.
//!
//! The same session carries the instances' messages, as `NOTIFY`s:
//! - a standby hands each push to the leader on [`PUSH_CHANNEL`], and the leader sends the verdict
//!   back on the standby's own channel, so the sender hears what a single instance would say.
//!   When no leader answers in time (there is none, or it died with the push), the standby keeps
//!   the message itself, as a single instance with its link down would, and tells the leader on
//!   [`HELD_CHANNEL`];
//! - a revocation is announced by the store in the transaction that writes it
//!   ([`REVOKED_CHANNEL`]), and every instance's mirror takes it in. The leader also checks every
//!   handed push against its own mirror, and every revocation is made on the leader (they all come
//!   from the link), so no instance relays to an endpoint after its `404`.
//!
//! A new leader reads the revocations and the held messages again before it connects, so what
//! was kept while nobody led is delivered, once, by whoever holds the link.
//!
//! Whoever can connect to the database can listen and speak on these channels too, so nothing
//! heard is taken on its word: pushes, verdicts and held messages cross sealed under a key only
//! the instances hold, and each is taken once ([`notice`]); a revocation notice only says which
//! revocation to read from the table, which only xup's role can write.

mod forward;
mod notice;

pub use forward::{Forward, serve_handed};

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

use crate::{
    message::{Request, Urgency},
    metrics::ClusterRejection,
    store::{
        RegistrationKey, Store, from_micros,
        held::{HeldMessages, Notice},
        key_from_hex, key_to_hex, micros,
        postgres::{REVOKED_CHANNEL, Target, parse_revocation_notice},
    },
    token::{Claims, Dialect, KeyRing},
};
use notice::{Opener, Sealer};

/// Where standbys hand pushes to the leader.
const PUSH_CHANNEL: &str = "xup_push";
/// Where a standby tells the leader it kept a message nobody took from it.
const HELD_CHANNEL: &str = "xup_held";
/// The advisory lock whose holder leads.
const LEADER_LOCK: i64 = 0x7875_7000_0002;

/// How often a standby asks for the lock, and the leader checks its session.
const TICK: Duration = Duration::from_secs(1);
/// A leader whose session does not answer within this drops the link.
const SESSION_CHECK: Duration = Duration::from_secs(3);
/// Bound on making the session.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The wait between attempts to make the session again.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);
/// How much longer than `delivery.answer_within` a standby waits for the leader's verdict: the
/// leader may have had to hold the message first.
const ANSWER_GRACE: Duration = Duration::from_secs(2);
/// PostgreSQL refuses a `NOTIFY` payload of 8000 bytes or more. A sealed push takes its body
/// base64 twice (in the message, then in the token), so a 4 KiB body fits with a JID of a few
/// hundred bytes; a larger one is kept by the standby and delivered from the store.
const MAX_PAYLOAD: usize = 7_900;

/// What the leader said of a handed push: the verdict, in the words that cross the database.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    Delivered { id: String, ttl: u64 },
    Held { id: String, ttl: u64 },
    Dropped { id: String },
    Sent { id: String },
    Gone,
    Revoked,
    Full,
    Busy,
    LinkDown,
    NotText(String),
    Internal,
}

/// A push handed to the leader.
#[derive(Debug, Serialize, Deserialize)]
pub struct Handoff {
    /// The standby's instance id, whose channel the answer goes to, and its number for the push.
    pub reply_to: String,
    pub ticket: u64,
    claims: WireClaims,
    /// Base64.
    body: String,
    ttl: Option<u64>,
    topic: Option<String>,
    urgency: String,
    /// How long the standby had the request already: `delivery.answer_within` counts from its
    /// arrival there.
    waited_ms: u64,
    /// The VAPID contact of its sender; missing from an older instance's hand-off.
    #[serde(default)]
    sender: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct WireClaims {
    subject: String,
    application: String,
    instance: String,
    issued_at_us: i64,
    expires_at_us: i64,
    sum7: bool,
}

impl Handoff {
    /// The push as the leader's relay takes it.
    pub fn into_push(self) -> Option<(Claims, Request)> {
        let body = STANDARD.decode(&self.body).ok()?;
        let claims = Claims {
            subject: self.claims.subject,
            application: self.claims.application,
            instance: self.claims.instance,
            issued_at: from_micros(self.claims.issued_at_us),
            expires_at: from_micros(self.claims.expires_at_us),
            dialect: if self.claims.sum7 {
                Dialect::Sum7
            } else {
                Dialect::Conversations
            },
            // The standby found it alive, renewed or not; the leader only delivers.
            renewable: false,
            vapid: None,
        };
        let waited = Duration::from_millis(self.waited_ms);
        let now = tokio::time::Instant::now();
        let request = Request {
            body,
            ttl: self.ttl,
            topic: self.topic,
            urgency: Urgency::parse(&self.urgency).unwrap_or_default(),
            received: now.checked_sub(waited).unwrap_or(now).into_std(),
            sender: self.sender,
        };
        Some((claims, request))
    }
}

/// The leader's verdict on one handed push, on the standby's own channel.
#[derive(Serialize, Deserialize)]
struct AnswerNotice {
    ticket: u64,
    answer: Answer,
}

/// A message a standby kept, announced on [`HELD_CHANNEL`].
#[derive(Serialize, Deserialize)]
struct HeldNotice {
    id: String,
    subject: String,
    registration: String,
}

/// Why a push could not be handed over; the standby then keeps it itself.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum HandOverError {
    #[error("no instance leads")]
    NoLeader,
    #[error("no connection to PostgreSQL")]
    NoSession,
    #[error("the push does not fit in a notification")]
    TooLarge,
    #[error("the leader did not answer in time")]
    NoAnswer,
}

/// Why a notice could not be sent.
enum NotifyError {
    NoSession,
    TooLarge,
}

/// This instance's part in the cluster. Cheap to share behind an `Arc`.
pub struct Cluster {
    id: String,
    database: Target,
    /// Opens what other instances sealed; the sealer seals what this one says.
    keys: Arc<KeyRing>,
    sealer: Sealer,
    leads: watch::Sender<bool>,
    /// Whether another instance held the lock when this one last asked.
    other_leads: AtomicBool,
    /// While in session: where notifications go out, several to a statement ([`send_forever`]).
    outbox: Mutex<Option<mpsc::UnboundedSender<Notification>>>,
    waiting: Mutex<HashMap<u64, oneshot::Sender<Answer>>>,
    tickets: AtomicU64,
    answer_within: Duration,
}

/// What the cluster's task works with.
pub struct Parts {
    pub store: Arc<Store>,
    pub held: Arc<HeldMessages>,
    /// To tell the deliverer of messages a standby kept.
    pub notices: mpsc::UnboundedSender<Notice>,
    /// Pushes handed to this instance while it leads.
    pub handed: mpsc::UnboundedSender<Handoff>,
}

impl Cluster {
    /// This instance, not yet leading; [`Cluster::run`] makes it a member. Its notices are
    /// sealed under `keys`, which every instance shares (`registration.secrets`).
    pub fn new(database: Target, answer_within: Duration, keys: Arc<KeyRing>) -> Cluster {
        let id = format!("{:016x}", rand::random::<u64>());
        Cluster {
            sealer: Sealer::new(keys.clone(), id.clone()),
            keys,
            id,
            database,
            leads: watch::channel(false).0,
            other_leads: AtomicBool::new(false),
            outbox: Mutex::new(None),
            waiting: Mutex::new(HashMap::new()),
            tickets: AtomicU64::new(0),
            answer_within,
        }
    }

    /// Whether this instance holds the lock: the link's permit.
    pub fn leads(&self) -> bool {
        *self.leads.borrow()
    }

    /// Told when this instance starts or stops leading.
    pub fn watch_leads(&self) -> watch::Receiver<bool> {
        self.leads.subscribe()
    }

    /// Whether this instance has its session to PostgreSQL.
    pub fn in_session(&self) -> bool {
        self.outbox().is_some()
    }

    fn outbox(&self) -> Option<mpsc::UnboundedSender<Notification>> {
        self.outbox
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Seal `message` for `channel` and queue it.
    fn notify<T: Serialize>(&self, channel: String, message: &T) -> Result<(), NotifyError> {
        let payload = self
            .sealer
            .seal(&channel, message)
            .filter(|payload| payload.len() <= MAX_PAYLOAD)
            .ok_or(NotifyError::TooLarge)?;
        let outbox = self.outbox().ok_or(NotifyError::NoSession)?;
        outbox
            .send(Notification { channel, payload })
            .map_err(|_| NotifyError::NoSession)
    }

    fn answer_channel(id: &str) -> String {
        format!("xup_answer_{id}")
    }

    /// Hand a push to the leader and wait for its verdict.
    pub async fn hand_over(
        &self,
        claims: &Claims,
        request: &Request,
    ) -> Result<Answer, HandOverError> {
        if !self.other_leads.load(Ordering::Relaxed) {
            return Err(HandOverError::NoLeader);
        }
        let ticket = self.tickets.fetch_add(1, Ordering::Relaxed);
        let waited = request.received.elapsed();
        let handoff = Handoff {
            reply_to: self.id.clone(),
            ticket,
            claims: WireClaims {
                subject: claims.subject.clone(),
                application: claims.application.clone(),
                instance: claims.instance.clone(),
                issued_at_us: micros(claims.issued_at),
                expires_at_us: micros(claims.expires_at),
                sum7: claims.dialect == Dialect::Sum7,
            },
            body: STANDARD.encode(&request.body),
            ttl: request.ttl,
            topic: request.topic.clone(),
            urgency: request.urgency.as_str().to_owned(),
            waited_ms: u64::try_from(waited.as_millis()).unwrap_or(u64::MAX),
            sender: request.sender.clone(),
        };
        let (answer, answered) = oneshot::channel();
        self.waiting().insert(ticket, answer);
        let wait = self.answer_within.saturating_sub(waited) + ANSWER_GRACE;
        // A session lost after this fails the waiters at once (`leave`): none waits it out.
        let outcome = match self.notify(PUSH_CHANNEL.into(), &handoff) {
            Err(NotifyError::NoSession) => Err(HandOverError::NoSession),
            Err(NotifyError::TooLarge) => Err(HandOverError::TooLarge),
            Ok(()) => match tokio::time::timeout(wait, answered).await {
                Ok(Ok(answer)) => Ok(answer),
                Ok(Err(_)) => Err(HandOverError::NoSession),
                Err(_) => Err(HandOverError::NoAnswer),
            },
        };
        self.waiting().remove(&ticket);
        outcome
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<Answer>>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Send the verdict on a handed push back to the standby that asked.
    pub fn answer(&self, reply_to: &str, ticket: u64, answer: Answer) {
        // Without a session the standby hears nothing, and keeps the message itself.
        let _ = self.notify(
            Cluster::answer_channel(reply_to),
            &AnswerNotice { ticket, answer },
        );
    }

    /// Tell the leader of a message this standby kept because nobody took it.
    pub fn announce_held(&self, id: &str, subject: &str, registration: &RegistrationKey) {
        let notice = HeldNotice {
            id: id.to_owned(),
            subject: subject.to_owned(),
            registration: key_to_hex(registration),
        };
        // Without a session, whoever leads next counts it when it takes the link.
        let _ = self.notify(HELD_CHANNEL.into(), &notice);
    }

    /// Be a member until `shutdown`: keep a session, stand by or lead, and pass on what the
    /// session hears.
    pub async fn run(self: Arc<Self>, parts: Parts, shutdown: CancellationToken) {
        loop {
            match self.serve_session(&parts, &shutdown).await {
                Ok(()) => break,
                Err(reason) => tracing::warn!(%reason, "lost the PostgreSQL session; reconnecting"),
            }
            self.leave();
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(RECONNECT_DELAY) => {}
            }
        }
        self.leave();
    }

    /// Give up leadership (if held) and the session, and fail the pushes waiting for answers.
    fn leave(&self) {
        if self.leads.send_replace(false) {
            tracing::warn!("no longer leading: the component link closes");
        }
        self.other_leads.store(false, Ordering::Relaxed);
        *self.outbox.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.waiting().clear();
    }

    /// One session, from connecting until it breaks (`Err`) or xup shuts down (`Ok`).
    async fn serve_session(
        &self,
        parts: &Parts,
        shutdown: &CancellationToken,
    ) -> Result<(), String> {
        let (client, mut connection) =
            tokio::time::timeout(CONNECT_TIMEOUT, self.database.connect())
                .await
                .map_err(|_| "no answer from PostgreSQL".to_owned())?
                .map_err(|e| e.to_string())?;
        let (heard, mut hearing) = mpsc::unbounded_channel();
        let driver = tokio::spawn(async move {
            let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(Ok(message)) = messages.next().await {
                if let AsyncMessage::Notification(n) = message {
                    let _ = heard.send((n.channel().to_owned(), n.payload().to_owned()));
                }
            }
        });
        let client = Arc::new(client);
        let served = self.listen(&client, parts, &mut hearing, shutdown).await;
        if served.is_ok() && self.leads() {
            let _ = client
                .execute("SELECT pg_advisory_unlock($1)", &[&LEADER_LOCK])
                .await;
        }
        drop(client);
        driver.abort();
        served
    }

    async fn listen(
        &self,
        client: &Arc<tokio_postgres::Client>,
        parts: &Parts,
        hearing: &mut mpsc::UnboundedReceiver<(String, String)>,
        shutdown: &CancellationToken,
    ) -> Result<(), String> {
        let mut opener = Opener::new(self.keys.clone(), SystemTime::now());
        // A leader whose host dies without closing its connection must lose the lock in seconds,
        // not after the kernel's two-hour keepalive: these bound how long PostgreSQL trusts a
        // silent session. A `NOTIFY` commits a transaction; nothing this session writes needs
        // to wait for the disk, so it does not.
        client
            .batch_execute(&format!(
                "SET tcp_keepalives_idle = 2; SET tcp_keepalives_interval = 1;
                 SET tcp_keepalives_count = 3; SET tcp_user_timeout = 5000;
                 SET synchronous_commit = off;
                 LISTEN {REVOKED_CHANNEL}; LISTEN {};",
                Cluster::answer_channel(&self.id)
            ))
            .await
            .map_err(|e| e.to_string())?;
        // Revocations made while this instance was not listening.
        parts.store.reload().await.map_err(|e| e.to_string())?;
        let (outbox, queued) = mpsc::unbounded_channel();
        // Ends when the outbox is replaced (the next session) or dropped; aborted with the session.
        let _sending = AbortOnDrop(tokio::spawn(send_forever(client.clone(), queued)));
        *self.outbox.lock().unwrap_or_else(|e| e.into_inner()) = Some(outbox);
        tracing::info!(instance = %self.id, "in session with PostgreSQL; standing by");
        let mut tick = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                heard = hearing.recv() => match heard {
                    None => return Err("the connection closed".into()),
                    Some((channel, payload)) => {
                        self.hear(&channel, &payload, parts, &mut opener).await;
                    }
                },
                _ = tick.tick() => {
                    // Only the question is bounded: taking over reads the whole store, which may
                    // take longer on a big one.
                    match tokio::time::timeout(SESSION_CHECK, self.ask(client)).await {
                        Err(_) => return Err("the session did not answer".into()),
                        Ok(Err(e)) => return Err(e.to_string()),
                        Ok(Ok(false)) => {}
                        Ok(Ok(true)) => {
                            self.take_over(client, parts).await?;
                            // What standbys sealed for the last leader was never heard here, so
                            // this session cannot tell it from a recording: it hears only what
                            // is sealed from now on.
                            opener = Opener::new(self.keys.clone(), SystemTime::now());
                        }
                    }
                }
            }
        }
    }

    /// A leader proves its session still answers; a standby asks for the lock, and says whether
    /// it got it.
    async fn ask(&self, client: &tokio_postgres::Client) -> Result<bool, tokio_postgres::Error> {
        if self.leads() {
            client.execute("SELECT 1", &[]).await?;
            return Ok(false);
        }
        let row = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&LEADER_LOCK])
            .await?;
        let got = row.get::<_, bool>(0);
        self.other_leads.store(!got, Ordering::Relaxed);
        Ok(got)
    }

    /// The lock is this instance's: read what it must know, then take the link.
    async fn take_over(
        &self,
        client: &tokio_postgres::Client,
        parts: &Parts,
    ) -> Result<(), String> {
        client
            .batch_execute(&format!("LISTEN {PUSH_CHANNEL}; LISTEN {HELD_CHANNEL};"))
            .await
            .map_err(|e| e.to_string())?;
        // What the last leader revoked, and what was kept while nobody led.
        parts.store.reload().await.map_err(|e| e.to_string())?;
        parts.held.recount().await.map_err(|e| e.to_string())?;
        tracing::info!(instance = %self.id, held = parts.held.total(), "leading: taking the component link");
        self.leads.send_replace(true);
        // Whatever this instance handed to the last leader will not be answered: deliver it here.
        self.waiting().clear();
        Ok(())
    }

    async fn hear(&self, channel: &str, payload: &str, parts: &Parts, opener: &mut Opener) {
        let now = SystemTime::now();
        if channel == REVOKED_CHANNEL {
            let Some(key) = parse_revocation_notice(payload) else {
                return opener.reject(ClusterRejection::Forged);
            };
            match parts.store.take_announced(key).await {
                Ok(true) => {}
                Ok(false) => opener.reject(ClusterRejection::Unfounded),
                Err(e) => tracing::warn!(error = %e, "cannot read an announced revocation"),
            }
        } else if channel == PUSH_CHANNEL {
            let Some(push) = opener.open::<Handoff>(channel, payload, now) else {
                return;
            };
            // A standby since? The sender keeps the message itself.
            if self.leads() {
                let _ = parts.handed.send(push);
            }
        } else if channel == HELD_CHANNEL {
            let Some(notice) = opener.open::<HeldNotice>(channel, payload, now) else {
                return;
            };
            let Some(registration) = key_from_hex(&notice.registration) else {
                return;
            };
            if let Err(e) = parts.held.count_again(&notice.subject, registration).await {
                tracing::warn!(error = %e, "cannot count held messages");
                return;
            }
            let _ = parts.notices.send(Notice::Held {
                id: notice.id,
                subject: notice.subject,
                registration,
                offered: None,
            });
        } else if let Some(reply) = opener.open::<AnswerNotice>(channel, payload, now)
            && let Some(waiter) = self.waiting().remove(&reply.ticket)
        {
            let _ = waiter.send(reply.answer);
        }
    }
}

/// One `NOTIFY` waiting to go out.
struct Notification {
    channel: String,
    payload: String,
}

/// Notifications sent in one statement at most: a bound on one round trip's work.
const MAX_NOTIFY_BATCH: usize = 256;

/// Send the session's notifications as they are queued, those that queued up meanwhile in one
/// statement: one transaction (and one wake-up of each listener) for a burst, where a statement
/// each would cost PostgreSQL a commit each. Ends with the session (its outbox is dropped).
async fn send_forever(
    client: Arc<tokio_postgres::Client>,
    mut queued: mpsc::UnboundedReceiver<Notification>,
) {
    while let Some(first) = queued.recv().await {
        let (mut channels, mut payloads) = (vec![first.channel], vec![first.payload]);
        while channels.len() < MAX_NOTIFY_BATCH
            && let Ok(next) = queued.try_recv()
        {
            channels.push(next.channel);
            payloads.push(next.payload);
        }
        let sent = client
            .execute(
                "SELECT pg_notify(channel, payload)
                 FROM unnest($1::text[], $2::text[]) AS queued (channel, payload)",
                &[&channels, &payloads],
            )
            .await;
        if let Err(e) = sent {
            // The session is failing; its loop notices and fails whoever waits.
            tracing::warn!(error = %e, lost = channels.len(), "cannot send notifications");
        }
    }
}

/// A task that belongs to the scope holding this: it is aborted when the scope ends, however it
/// ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
