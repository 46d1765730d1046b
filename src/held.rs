//! Messages held for clients that could not take them when they arrived.
//!
//! RFC 8030 lets a push service keep a message for its `TTL` while the user agent is away. xup keeps
//! one when the client is offline, answers with a temporary error, has not answered within
//! `delivery.answer_within`, or when the component link is down; it is written to the store
//! **before** the sender gets its `201`, so a crash after the answer loses nothing. Held messages go
//! out again in the order they arrived *per registration* (one app instance of one client), never
//! across registrations, so one app's stuck message never holds back another app of the same phone
//! (`deliver.rs` offers them).
//!
//! Bounds: per registration (the oldest is dropped for the newest), and in total (past it, new
//! messages are refused with `503`, so the sender keeps them instead). A newer message with the same
//! `Topic` replaces the held one. Expired messages are never sent and are pruned.
//!
//! The rows live in the same SQLite file as the revocations; an in-memory count per registration
//! keeps the push path from asking the disk whether a registration has anything waiting. Holds go
//! through one writer task that commits whatever queued up meanwhile in one transaction, so a
//! burst of silent phones (every push answered at `delivery.answer_within` at once) costs one sync.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use rusqlite::params;
use tokio::sync::{mpsc, oneshot};

use crate::{
    protocol::Urgency,
    store::{Database, RegistrationKey, StoreError, micros, registration_key, registration_key_of},
    token::Claims,
};

/// One message as the sender gave it, with what xup needs to deliver it later.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Names the message in `Location` and is the id of every `<push>` IQ that carries it, so a
    /// late answer to an earlier attempt still finds it.
    pub id: String,
    /// The full JID that registered, and the app instance: the `<push>`'s addressee and attributes.
    pub subject: String,
    pub application: String,
    pub instance: String,
    pub body: Vec<u8>,
    pub topic: Option<String>,
    pub urgency: Urgency,
    pub expires_at: SystemTime,
}

impl Message {
    /// The registration this message is for, as revocations name it.
    pub fn registration(&self) -> RegistrationKey {
        registration_key_of(&self.subject, &self.application, &self.instance)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    #[error("the store holds delivery.max_held messages already")]
    Full,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What holding a message did besides keeping it.
#[derive(Debug, Default, PartialEq)]
pub struct Held {
    /// Older messages with the same topic that it replaced.
    pub replaced: usize,
    /// Oldest messages of the registration dropped to stay within the per-registration bound.
    pub dropped: usize,
}

/// The held messages: durable in the store, counted in memory per registration.
pub struct HeldMessages {
    db: Database,
    counts: Arc<Mutex<Counts>>,
    /// To the task that writes holds, in batches.
    writer: mpsc::UnboundedSender<Hold>,
}

/// A message to hold, and who waits to hear it is on disk.
type Hold = (Message, oneshot::Sender<Result<Held, HoldError>>);

/// Holds written in one transaction at most: a bound on one batch's work, far above any burst
/// the HTTP side can bring (`http.max_in_flight`).
const MAX_BATCH: usize = 16_384;

/// The bounds a hold is checked against.
#[derive(Clone, Copy)]
struct Bounds {
    per_registration: usize,
    total: usize,
}

/// Held messages per client (full JID) and, within it, per registration.
#[derive(Default)]
struct Counts {
    by_subject: HashMap<String, HashMap<RegistrationKey, usize>>,
    total: usize,
}

impl HeldMessages {
    /// Forget what expired while xup was stopped, and count the rest (the table is the store's
    /// schema's, `store.rs`). Starts the writer task, so it must be called within a Tokio runtime.
    pub fn open(
        db: Database,
        per_registration: usize,
        max_total: usize,
    ) -> Result<HeldMessages, StoreError> {
        let counts = {
            let conn = db.lock();
            conn.execute(
                "DELETE FROM held WHERE expires_at_us <= ?1",
                params![micros(SystemTime::now())],
            )?;
            count_all(&conn)?
        };
        let counts = Arc::new(Mutex::new(counts));
        let (writer, queue) = mpsc::unbounded_channel();
        let bounds = Bounds {
            per_registration,
            total: max_total,
        };
        tokio::spawn(write_forever(db.clone(), counts.clone(), bounds, queue));
        Ok(HeldMessages { db, counts, writer })
    }

    fn counts(&self) -> MutexGuard<'_, Counts> {
        lock(&self.counts)
    }

    /// Whether anything waits for the registration `registration` of `subject`; memory only. A
    /// new message for a registration with a backlog is held behind it rather than sent ahead.
    pub fn has_backlog(&self, subject: &str, registration: &RegistrationKey) -> bool {
        self.counts()
            .by_subject
            .get(subject)
            .is_some_and(|registrations| registrations.contains_key(registration))
    }

    /// Every client with messages waiting.
    pub fn subjects(&self) -> Vec<String> {
        self.counts().by_subject.keys().cloned().collect()
    }

    /// The registrations of `subject` that have messages waiting.
    pub fn registrations_of(&self, subject: &str) -> Vec<RegistrationKey> {
        self.counts()
            .by_subject
            .get(subject)
            .map(|registrations| registrations.keys().copied().collect())
            .unwrap_or_default()
    }

    /// How many messages are held in all.
    pub fn total(&self) -> usize {
        self.counts().total
    }

    /// Keep `message` durably; returns once it is on disk. Holds that arrive together are
    /// written in one transaction (group commit): a burst of thousands costs one sync, not
    /// thousands. Dropping the future does not undo the write.
    pub async fn hold(&self, message: Message) -> Result<Held, HoldError> {
        let (reply, held) = oneshot::channel();
        self.writer
            .send((message, reply))
            .map_err(|_| StoreError::Task("the held-message writer has stopped".into()))?;
        held.await
            .map_err(|_| StoreError::Task("the held-message writer has stopped".into()))?
    }

    /// The messages waiting in `registration` that have not expired by `now`, oldest first.
    pub async fn waiting_in(
        &self,
        registration: RegistrationKey,
        now: SystemTime,
    ) -> Result<Vec<Message>, StoreError> {
        self.db
            .run(move |conn| {
                let mut query = conn.prepare(
                    "SELECT id, subject, application, instance, body, topic, urgency,
                            expires_at_us
                     FROM held WHERE registration = ?1 AND expires_at_us > ?2 ORDER BY seq",
                )?;
                let rows =
                    query.query_map(params![registration.as_slice(), micros(now)], |row| {
                        let urgency: String = row.get(6)?;
                        Ok(Message {
                            id: row.get(0)?,
                            subject: row.get(1)?,
                            application: row.get(2)?,
                            instance: row.get(3)?,
                            body: row.get(4)?,
                            topic: row.get(5)?,
                            urgency: Urgency::parse(&urgency).unwrap_or_default(),
                            expires_at: from_micros(row.get(7)?),
                        })
                    })?;
                rows.collect()
            })
            .await
    }

    /// Whether message `id` is still held.
    pub async fn contains(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.db
            .run(move |conn| {
                use rusqlite::OptionalExtension;
                conn.query_row("SELECT 1 FROM held WHERE id = ?1", params![id], |_| Ok(()))
                    .optional()
                    .map(|row| row.is_some())
            })
            .await
    }

    /// The client took message `id`: forget it. Only `subject` (who it was for) can have taken it.
    /// Returns whether there was such a message.
    pub async fn remove(&self, id: &str, subject: &str) -> Result<bool, StoreError> {
        let (id, owned_subject) = (id.to_owned(), subject.to_owned());
        let removed = self
            .db
            .run(move |conn| {
                use rusqlite::OptionalExtension;
                let registration: Option<Vec<u8>> = conn
                    .query_row(
                        "DELETE FROM held WHERE id = ?1 AND subject = ?2 RETURNING registration",
                        params![id, owned_subject],
                        |row| row.get(0),
                    )
                    .optional()?;
                Ok(registration.and_then(|r| RegistrationKey::try_from(r).ok()))
            })
            .await?;
        let Some(registration) = removed else {
            return Ok(false);
        };
        self.counts().add(subject, registration, -1);
        Ok(true)
    }

    /// The app is gone: drop everything held for its registration.
    pub async fn drop_registration(&self, claims: &Claims) -> Result<usize, StoreError> {
        let registration = registration_key(claims);
        let dropped = self
            .db
            .run(move |conn| {
                conn.execute(
                    "DELETE FROM held WHERE registration = ?1",
                    params![registration.as_slice()],
                )
            })
            .await?;
        let delta = -isize::try_from(dropped).unwrap_or(isize::MAX);
        self.counts().add(&claims.subject, registration, delta);
        Ok(dropped)
    }

    /// Drop every message held for any resource of `account` (a bare JID); returns how many.
    pub async fn drop_account(&self, account: &str) -> Result<usize, StoreError> {
        let prefix = format!("{account}/");
        let subjects: Vec<String> = self
            .subjects()
            .into_iter()
            .filter(|s| s.starts_with(&prefix))
            .collect();
        let (dropped, counts) = self
            .db
            .run(move |conn| {
                let mut dropped = 0;
                for subject in subjects {
                    dropped +=
                        conn.execute("DELETE FROM held WHERE subject = ?1", params![subject])?;
                }
                Ok((dropped, count_all(conn)?))
            })
            .await?;
        *self.counts() = counts;
        Ok(dropped)
    }

    /// Forget messages whose TTL has run out.
    pub async fn prune(&self, now: SystemTime) -> Result<usize, StoreError> {
        let (pruned, counts) = self
            .db
            .run(move |conn| {
                let pruned = conn.execute(
                    "DELETE FROM held WHERE expires_at_us <= ?1",
                    params![micros(now)],
                )?;
                Ok((pruned, count_all(conn)?))
            })
            .await?;
        *self.counts() = counts;
        Ok(pruned)
    }
}

impl Counts {
    /// `delta` more messages in `registration` of `subject`. Every change is applied as a
    /// difference, so changes that finish in any order add up to the same counts.
    fn add(&mut self, subject: &str, registration: RegistrationKey, delta: isize) {
        self.total = self.total.saturating_add_signed(delta);
        let registrations = self.by_subject.entry(subject.to_owned()).or_default();
        let count = registrations.entry(registration).or_default();
        *count = count.saturating_add_signed(delta);
        if *count == 0 {
            registrations.remove(&registration);
        }
        if registrations.is_empty() {
            self.by_subject.remove(subject);
        }
    }
}

fn lock(counts: &Mutex<Counts>) -> MutexGuard<'_, Counts> {
    counts.lock().unwrap_or_else(|e| e.into_inner())
}

/// Write holds as they come, each batch that queued up meanwhile in one transaction, and tell
/// each waiter how its hold went once the batch is on disk. Ends when [`HeldMessages`] is dropped.
async fn write_forever(
    db: Database,
    counts: Arc<Mutex<Counts>>,
    bounds: Bounds,
    mut queue: mpsc::UnboundedReceiver<Hold>,
) {
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH
            && let Ok(next) = queue.try_recv()
        {
            batch.push(next);
        }
        let (messages, replies): (Vec<Message>, Vec<_>) = batch.into_iter().unzip();
        let total = lock(&counts).total;
        let written = db
            .run(move |conn| hold_all(conn, messages, bounds, total))
            .await;
        match written {
            Ok(outcomes) => {
                let mut results = Vec::with_capacity(outcomes.len());
                {
                    let mut counts = lock(&counts);
                    for (subject, registration, outcome) in outcomes {
                        if let Ok(held) = &outcome {
                            let gone = isize::try_from(held.replaced + held.dropped).unwrap_or(0);
                            counts.add(&subject, registration, 1 - gone);
                        }
                        results.push(outcome);
                    }
                }
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(result);
                }
            }
            Err(e) => {
                let e = e.to_string();
                for reply in replies {
                    let _ = reply.send(Err(HoldError::Store(StoreError::Task(e.clone()))));
                }
            }
        }
    }
}

/// What became of one message of a batch, with the registration it counts against.
type Outcome = (String, RegistrationKey, Result<Held, HoldError>);

/// Hold `messages` in one transaction, each in a savepoint of its own so that one that cannot be
/// held (the store full, a failed write) changes nothing and costs the others nothing. `total`
/// is how many are held before the batch.
fn hold_all(
    conn: &mut rusqlite::Connection,
    messages: Vec<Message>,
    bounds: Bounds,
    mut total: usize,
) -> rusqlite::Result<Vec<Outcome>> {
    let mut tx = conn.transaction()?;
    let mut outcomes = Vec::with_capacity(messages.len());
    for message in messages {
        let registration = message.registration();
        let subject = message.subject.clone();
        let mut one = tx.savepoint()?;
        let outcome = match hold_one(&one, message, registration, bounds, total) {
            Ok(Some(held)) => {
                one.commit()?;
                total = (total + 1).saturating_sub(held.replaced + held.dropped);
                Ok(held)
            }
            Ok(None) => {
                one.rollback()?;
                Err(HoldError::Full)
            }
            Err(e) => {
                one.rollback()?;
                Err(HoldError::Store(e.into()))
            }
        };
        outcomes.push((subject, registration, outcome));
    }
    tx.commit()?;
    Ok(outcomes)
}

/// Hold one message: replace its topic, make room within its registration's bound, and insert
/// it, unless the store already holds `bounds.total` messages (`None`; the caller rolls back).
fn hold_one(
    conn: &rusqlite::Connection,
    message: Message,
    registration: RegistrationKey,
    bounds: Bounds,
    total: usize,
) -> rusqlite::Result<Option<Held>> {
    let mut held = Held::default();
    if let Some(topic) = &message.topic {
        held.replaced = conn.execute(
            "DELETE FROM held WHERE registration = ?1 AND topic = ?2",
            params![registration.as_slice(), topic],
        )?;
    }
    let mine = count_registration(conn, &registration)?;
    if mine >= bounds.per_registration {
        held.dropped = conn.execute(
            "DELETE FROM held WHERE seq IN (SELECT seq FROM held
                 WHERE registration = ?1 ORDER BY seq LIMIT ?2)",
            params![
                registration.as_slice(),
                (mine + 1 - bounds.per_registration) as i64
            ],
        )?;
    }
    if total.saturating_sub(held.replaced + held.dropped) >= bounds.total {
        return Ok(None);
    }
    conn.execute(
        "INSERT INTO held (id, registration, subject, application, instance, topic,
                           urgency, body, expires_at_us)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            message.id,
            registration.as_slice(),
            message.subject,
            message.application,
            message.instance,
            message.topic,
            message.urgency.as_str(),
            message.body,
            micros(message.expires_at),
        ],
    )?;
    Ok(Some(held))
}

/// The one number a `SELECT COUNT(*) …` query returns.
fn count(
    conn: &rusqlite::Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> rusqlite::Result<usize> {
    let n: i64 = conn.query_row(sql, params, |row| row.get(0))?;
    Ok(usize::try_from(n).unwrap_or(0))
}

fn count_registration(
    conn: &rusqlite::Connection,
    registration: &RegistrationKey,
) -> rusqlite::Result<usize> {
    count(
        conn,
        "SELECT COUNT(*) FROM held WHERE registration = ?1",
        params![registration.as_slice()],
    )
}

fn count_all(conn: &rusqlite::Connection) -> rusqlite::Result<Counts> {
    let mut counts = Counts::default();
    let mut query = conn.prepare(
        "SELECT subject, registration, COUNT(*) FROM held GROUP BY subject, registration",
    )?;
    let mut rows = query.query([])?;
    while let Some(row) = rows.next()? {
        let registration: Vec<u8> = row.get(1)?;
        let Ok(registration) = RegistrationKey::try_from(registration) else {
            continue; // not a row xup wrote
        };
        let n = usize::try_from(row.get::<_, i64>(2)?).unwrap_or(0);
        counts.total += n;
        let registrations = counts.by_subject.entry(row.get(0)?).or_default();
        registrations.insert(registration, n);
    }
    Ok(counts)
}

fn from_micros(us: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(u64::try_from(us).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    const DAY: Duration = Duration::from_secs(86400);

    fn message(id: &str, instance: &str, topic: Option<&str>) -> Message {
        Message {
            id: id.into(),
            subject: "juliet@example.org/phone".into(),
            application: "app".into(),
            instance: instance.into(),
            body: id.as_bytes().to_vec(),
            topic: topic.map(str::to_owned),
            urgency: Urgency::High,
            expires_at: SystemTime::now() + DAY,
        }
    }

    fn open(dir: &std::path::Path, per_registration: usize, max: usize) -> HeldMessages {
        let store = Store::open(dir).expect("store");
        HeldMessages::open(store.database(), per_registration, max).expect("held")
    }

    /// The registration of `message(_, "i", _)`.
    fn registration_i() -> RegistrationKey {
        message("", "i", None).registration()
    }

    async fn ids(held: &HeldMessages) -> Vec<String> {
        held.waiting_in(registration_i(), SystemTime::now())
            .await
            .expect("read")
            .into_iter()
            .map(|m| m.id)
            .collect()
    }

    #[tokio::test]
    async fn messages_come_back_in_order_across_a_reopen_and_leave_when_taken() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = message("m1", "i", None);
        {
            let held = open(dir.path(), 100, 1000);
            held.hold(first.clone()).await.expect("hold");
            for id in ["m2", "m3"] {
                held.hold(message(id, "i", None)).await.expect("hold");
            }
        }
        let held = open(dir.path(), 100, 1000);
        assert!(held.has_backlog("juliet@example.org/phone", &registration_i()));
        let waiting = held
            .waiting_in(registration_i(), SystemTime::now())
            .await
            .expect("read");
        // Microseconds are what the store keeps.
        let mut expected = first;
        expected.expires_at = from_micros(micros(expected.expires_at));
        assert_eq!(waiting[0], expected);
        assert_eq!(ids(&held).await, ["m1", "m2", "m3"]);

        assert!(
            !held
                .remove("m2", "eve@example.org/x")
                .await
                .expect("remove")
        );
        assert!(
            held.remove("m2", "juliet@example.org/phone")
                .await
                .expect("remove")
        );
        assert_eq!(ids(&held).await, ["m1", "m3"]);
        held.remove("m1", "juliet@example.org/phone")
            .await
            .expect("remove");
        held.remove("m3", "juliet@example.org/phone")
            .await
            .expect("remove");
        assert!(!held.has_backlog("juliet@example.org/phone", &registration_i()));
        assert!(held.subjects().is_empty());
        assert_eq!(held.total(), 0);
    }

    #[tokio::test]
    async fn a_topic_replaces_and_the_oldest_goes_past_the_bound() {
        let dir = tempfile::tempdir().expect("tempdir");
        let held = open(dir.path(), 3, 1000);
        held.hold(message("a", "i", Some("t"))).await.expect("hold");
        held.hold(message("b", "i", None)).await.expect("hold");
        let replaced = held.hold(message("c", "i", Some("t"))).await.expect("hold");
        assert_eq!(
            replaced,
            Held {
                replaced: 1,
                dropped: 0
            }
        );
        assert_eq!(ids(&held).await, ["b", "c"]);
        held.hold(message("d", "i", None)).await.expect("hold");
        let dropped = held.hold(message("e", "i", None)).await.expect("hold");
        assert_eq!(
            dropped,
            Held {
                replaced: 0,
                dropped: 1
            }
        );
        assert_eq!(ids(&held).await, ["c", "d", "e"]);
        // Another instance of the same client has a bound of its own, and a backlog of its own.
        held.hold(message("x", "other", None)).await.expect("hold");
        assert_eq!(held.total(), 4);
        assert_eq!(
            held.registrations_of("juliet@example.org/phone").len(),
            2,
            "two registrations wait"
        );
    }

    #[tokio::test]
    async fn a_full_store_refuses_and_changes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let held = open(dir.path(), 10, 2);
        held.hold(message("a", "i", None)).await.expect("hold");
        held.hold(message("b", "i", None)).await.expect("hold");
        assert!(matches!(
            held.hold(message("c", "i", None)).await,
            Err(HoldError::Full)
        ));
        assert!(!held.contains("c").await.expect("query"));
        assert_eq!(held.total(), 2);
    }

    #[tokio::test]
    async fn holds_that_arrive_together_share_a_transaction_and_each_gets_its_own_answer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let held = open(dir.path(), 100, 5);
        let names: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
        let outcomes =
            futures::future::join_all(names.iter().map(|id| held.hold(message(id, "i", None))))
                .await;
        let full = outcomes
            .iter()
            .filter(|o| matches!(o, Err(HoldError::Full)))
            .count();
        assert_eq!((outcomes.len() - full, full), (5, 5));
        // The first five, in order; the others changed nothing.
        assert_eq!(ids(&held).await, ["m0", "m1", "m2", "m3", "m4"]);
        assert_eq!(held.total(), 5);
        // A duplicate id fails alone, the rest of its batch is kept.
        held.remove("m4", "juliet@example.org/phone")
            .await
            .expect("remove");
        let (dup, fresh) = futures::future::join(
            held.hold(message("m0", "i", None)),
            held.hold(message("m9", "i", None)),
        )
        .await;
        assert!(matches!(dup, Err(HoldError::Store(_))));
        assert!(fresh.is_ok());
        assert_eq!(ids(&held).await, ["m0", "m1", "m2", "m3", "m9"]);
        assert_eq!(held.total(), 5);
    }

    #[tokio::test]
    async fn expired_messages_are_never_offered_and_are_pruned() {
        let dir = tempfile::tempdir().expect("tempdir");
        let held = open(dir.path(), 10, 10);
        let mut stale = message("old", "i", None);
        stale.expires_at = SystemTime::now() + Duration::from_secs(1);
        held.hold(stale).await.expect("hold");
        held.hold(message("new", "i", None)).await.expect("hold");
        let later = SystemTime::now() + Duration::from_secs(2);
        let waiting = held
            .waiting_in(registration_i(), later)
            .await
            .expect("read");
        assert_eq!(waiting.len(), 1);
        assert_eq!(held.prune(later).await.expect("prune"), 1);
        assert_eq!(held.total(), 1);
    }

    #[tokio::test]
    async fn a_gone_app_takes_its_messages_with_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let held = open(dir.path(), 10, 10);
        held.hold(message("a", "i", None)).await.expect("hold");
        held.hold(message("b", "other", None)).await.expect("hold");
        let claims = Claims {
            subject: "juliet@example.org/phone".into(),
            application: "app".into(),
            instance: "i".into(),
            issued_at: SystemTime::now(),
            expires_at: SystemTime::now() + DAY,
            dialect: Default::default(),
        };
        assert_eq!(held.drop_registration(&claims).await.expect("drop"), 1);
        assert!(ids(&held).await.is_empty());
        let other = message("", "other", None).registration();
        assert_eq!(held.registrations_of("juliet@example.org/phone"), [other]);
    }
}
