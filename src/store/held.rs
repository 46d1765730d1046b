//! Messages held for clients that could not take them when they arrived.
//!
//! RFC 8030 lets a push service keep a message for its `TTL` while the user agent is away. xup keeps
//! one when the client is offline, answers with a temporary error, has not answered within
//! `delivery.answer_within`, or when the component link is down; it is written to the store
//! **before** the sender gets its `201`, so a crash after the answer loses nothing. Held messages go
//! out again in the order they arrived *per registration* (one app instance of one client), never
//! across registrations, so one app's stuck message never holds back another app of the same phone
//! (`dialects/conversations/deliver.rs` offers them).
//!
//! Bounds: per registration (the oldest is dropped for the newest); per account and per domain, so
//! that one user, or one server's users, cannot take the room everyone else's messages need; and
//! in total. Past any of the last three, new messages are refused with `503`, so the sender keeps
//! them instead. A newer message with the same `Topic` replaces the held one. Expired messages are
//! never sent and are pruned. The account and domain bounds are checked against the counts in
//! memory before a message reaches the writer, so refusing costs no store work.
//!
//! The rows live in the store's database (`store/`, either engine); an in-memory count per
//! registration keeps the push path from asking the database whether a registration has anything
//! waiting. Holds go through one writer task that commits whatever queued up meanwhile in one
//! transaction, so a burst of silent phones (every push answered at `delivery.answer_within` at
//! once) costs one sync, and a steady trickle is grouped by starting batches a few milliseconds
//! apart ([`BATCH_SPACING`]). With several instances on PostgreSQL only the one that holds the link
//! delivers; it counts again when it takes the link over, and hears of what the others hold
//! (`cluster/`).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant, SystemTime},
};

use tokio::sync::{RwLock, mpsc, oneshot};

use crate::{
    store::{
        Bounds, Engine, Held, HoldError, Message, Pruned, RegistrationKey, StoreError, micros,
        registration_key,
    },
    token::Claims,
};

/// What whoever holds a message (the relay, or the cluster for a standby) tells the deliverer,
/// so it can offer the message when its turn comes.
#[derive(Debug)]
pub enum Notice {
    /// Message `id` was held in `registration` of `subject`. `offered` is when it was sent to the
    /// client and not taken (the registration then waits before it is tried again), `None` when it
    /// was held without trying (behind older messages, or the client or the link away).
    Held {
        id: String,
        subject: String,
        registration: RegistrationKey,
        offered: Option<Instant>,
    },
    /// A message held while it was in flight was answered, and the relay has acted on the answer
    /// itself: its registration's queue can go on.
    Settled {
        subject: String,
        registration: RegistrationKey,
    },
}

/// The held messages: durable in the store, counted in memory per registration.
pub struct HeldMessages {
    engine: Arc<dyn Engine>,
    counts: Arc<Mutex<Counts>>,
    /// Changes to the store that adjust the counts by a difference hold it shared across the
    /// write and the adjustment; counting again (a read of the store that replaces the counts)
    /// holds it alone. Otherwise a hold or removal that committed before the read and adjusted
    /// after it would count twice or not at all, and a registration could be left counted empty
    /// with a message waiting, and so without its retry.
    gate: Arc<RwLock<()>>,
    /// To the task that writes holds, in batches.
    writer: mpsc::UnboundedSender<Hold>,
}

/// A message to hold, and who waits to hear it is on disk.
type Hold = (Message, oneshot::Sender<Result<Held, HoldError>>);

/// Holds written in one transaction at most: a bound on one batch's work, far above any burst
/// the HTTP side can bring (`http.max_in_flight`).
const MAX_BATCH: usize = 16_384;

/// The least time between the starts of two batches. A burst groups by itself (it queues while
/// one batch is written), but a steady trickle, such as the pushes to one stuck app among busy
/// healthy ones, arrives slower than a sync takes and would be one sync per hold; waiting this
/// long at most groups it, and bounds the syncs to a few hundred a second whatever comes. A hold
/// that comes after a quiet spell is written at once. The price: a sender that pushes strictly
/// one at a time to phones that are away gets its holds written at 200 a second at most.
const BATCH_SPACING: Duration = Duration::from_millis(5);

/// Held messages per client (full JID) and, within it, per registration; and per account (bare
/// JID) and domain, for their bounds.
#[derive(Default)]
struct Counts {
    by_subject: HashMap<String, HashMap<RegistrationKey, usize>>,
    by_account: HashMap<String, usize>,
    by_domain: HashMap<String, usize>,
    total: usize,
}

/// The account (bare JID) and the domain of a full JID.
fn owners_of(subject: &str) -> (&str, &str) {
    let account = subject.split('/').next().unwrap_or(subject);
    let domain = account
        .rsplit_once('@')
        .map_or(account, |(_, domain)| domain);
    (account, domain)
}

impl HeldMessages {
    /// Forget what expired while xup was stopped, and count the rest (the table is the store's
    /// schema's, `store/`). Starts the writer task, so it must be called within a Tokio runtime.
    pub async fn open(engine: Arc<dyn Engine>, bounds: Bounds) -> Result<HeldMessages, StoreError> {
        engine.prune_held(micros(SystemTime::now())).await?;
        let counts = Arc::new(Mutex::new(Counts::of(engine.held_counts().await?)));
        let (writer, queue) = mpsc::unbounded_channel();
        let gate = Arc::new(RwLock::new(()));
        tokio::spawn(write_forever(
            engine.clone(),
            counts.clone(),
            gate.clone(),
            bounds,
            queue,
        ));
        Ok(HeldMessages {
            engine,
            counts,
            gate,
            writer,
        })
    }

    /// Count everything again: another instance may have held messages while this one was not
    /// listening (`cluster/`).
    pub async fn recount(&self) -> Result<(), StoreError> {
        let _alone = self.gate.write().await;
        let counts = Counts::of(self.engine.held_counts().await?);
        *self.counts() = counts;
        Ok(())
    }

    /// Count `registration` of `subject` again: another instance has held a message in it.
    pub async fn count_again(
        &self,
        subject: &str,
        registration: RegistrationKey,
    ) -> Result<(), StoreError> {
        let _alone = self.gate.write().await;
        let count = self.engine.held_in(registration).await?;
        let mut counts = self.counts();
        let known = counts
            .by_subject
            .get(subject)
            .and_then(|registrations| registrations.get(&registration))
            .copied()
            .unwrap_or(0);
        let delta = isize::try_from(count).unwrap_or(isize::MAX)
            - isize::try_from(known).unwrap_or(isize::MAX);
        counts.add(subject, registration, delta);
        Ok(())
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

    /// Keep `message` durably; the future ends once it is on disk. Holds that arrive together
    /// are written in one transaction (group commit): a burst of thousands costs one sync, not
    /// thousands. The message goes to the writer at once, so the future holds only the wait for
    /// its answer, and dropping it does not undo the write.
    pub fn hold(&self, message: Message) -> impl Future<Output = Result<Held, HoldError>> + Send {
        let (reply, held) = oneshot::channel();
        let queued = self.writer.send((message, reply)).is_ok();
        async move {
            let stopped = || StoreError::Task("the held-message writer has stopped".into());
            if !queued {
                return Err(stopped().into());
            }
            held.await.map_err(|_| stopped())?
        }
    }

    /// The messages waiting in `registration` that have not expired by `now`, oldest first.
    pub async fn waiting_in(
        &self,
        registration: RegistrationKey,
        now: SystemTime,
    ) -> Result<Vec<Message>, StoreError> {
        self.engine.waiting_in(registration, micros(now)).await
    }

    /// Whether message `id` is still held.
    pub async fn contains(&self, id: &str) -> Result<bool, StoreError> {
        self.engine.is_held(id).await
    }

    /// The client took message `id`: forget it. Only `subject` (who it was for) can have taken it.
    /// Returns whether there was such a message. A subject that holds nothing (in memory) costs
    /// the store nothing: anyone can send the component results with made-up ids.
    pub async fn remove(&self, id: &str, subject: &str) -> Result<bool, StoreError> {
        if !self.counts().by_subject.contains_key(subject) {
            return Ok(false);
        }
        let _changing = self.gate.read().await;
        let Some(registration) = self.engine.remove_held(id, subject).await? else {
            return Ok(false);
        };
        self.counts().add(subject, registration, -1);
        Ok(true)
    }

    /// The app is gone: drop everything held for its registration.
    pub async fn drop_registration(&self, claims: &Claims) -> Result<usize, StoreError> {
        let registration = registration_key(claims);
        let _changing = self.gate.read().await;
        let dropped = self.engine.drop_registration(registration).await?;
        let delta = -isize::try_from(dropped).unwrap_or(isize::MAX);
        self.counts().add(&claims.subject, registration, delta);
        Ok(dropped)
    }

    /// Drop every message held for any resource of `account` (a bare JID); returns how many.
    pub async fn drop_account(&self, account: &str) -> Result<usize, StoreError> {
        let dropped = self.engine.drop_account(account).await?;
        self.recount().await?;
        Ok(dropped)
    }

    /// Forget messages whose TTL has run out.
    pub async fn prune(&self, now: SystemTime) -> Result<Pruned, StoreError> {
        let pruned = self.engine.prune_held(micros(now)).await?;
        self.recount().await?;
        Ok(pruned)
    }
}

impl Counts {
    fn of(rows: Vec<crate::store::HeldCount>) -> Counts {
        let mut counts = Counts::default();
        for row in rows {
            let count = isize::try_from(row.count).unwrap_or(isize::MAX);
            counts.add(&row.subject, row.registration, count);
        }
        counts
    }

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
        let (account, domain) = owners_of(subject);
        add_to(&mut self.by_account, account, delta);
        add_to(&mut self.by_domain, domain, delta);
    }

    /// Why a message for `subject` may not be held now, `queued` more being on their way for the
    /// same account and domain: the setting its account or domain is at.
    fn owner_full(
        &self,
        subject: &str,
        queued: &(HashMap<String, usize>, HashMap<String, usize>),
        bounds: Bounds,
    ) -> Option<&'static str> {
        let (account, domain) = owners_of(subject);
        let count = |counts: &HashMap<String, usize>, queued: &HashMap<String, usize>, key| {
            counts.get(key).copied().unwrap_or(0) + queued.get(key).copied().unwrap_or(0)
        };
        if count(&self.by_account, &queued.0, account) >= bounds.per_account {
            Some("delivery.max_held_per_account")
        } else if count(&self.by_domain, &queued.1, domain) >= bounds.per_domain {
            Some("delivery.max_held_per_domain")
        } else {
            None
        }
    }
}

fn add_to(counts: &mut HashMap<String, usize>, key: &str, delta: isize) {
    let count = counts.entry(key.to_owned()).or_default();
    *count = count.saturating_add_signed(delta);
    if *count == 0 {
        counts.remove(key);
    }
}

fn lock(counts: &Mutex<Counts>) -> MutexGuard<'_, Counts> {
    counts.lock().unwrap_or_else(|e| e.into_inner())
}

/// Write holds as they come, each batch that queued up meanwhile in one transaction, and tell
/// each waiter how its hold went once the batch is on disk. Ends when [`HeldMessages`] is dropped.
async fn write_forever(
    engine: Arc<dyn Engine>,
    counts: Arc<Mutex<Counts>>,
    gate: Arc<RwLock<()>>,
    bounds: Bounds,
    mut queue: mpsc::UnboundedReceiver<Hold>,
) {
    let mut last_batch: Option<tokio::time::Instant> = None;
    while let Some(first) = queue.recv().await {
        if let Some(last) = last_batch {
            tokio::time::sleep_until(last + BATCH_SPACING).await;
        }
        last_batch = Some(tokio::time::Instant::now());
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH
            && let Ok(next) = queue.try_recv()
        {
            batch.push(next);
        }
        // The account and domain bounds, from memory: a message over them never reaches the store.
        let batch: Vec<Hold> = {
            let counts = lock(&counts);
            let mut queued = (HashMap::new(), HashMap::new());
            batch
                .into_iter()
                .filter_map(|(message, reply)| {
                    if let Some(setting) = counts.owner_full(&message.subject, &queued, bounds) {
                        let _ = reply.send(Err(HoldError::OwnerFull(setting)));
                        return None;
                    }
                    let (account, domain) = owners_of(&message.subject);
                    *queued.0.entry(account.to_owned()).or_default() += 1;
                    *queued.1.entry(domain.to_owned()).or_default() += 1;
                    Some((message, reply))
                })
                .collect()
        };
        if batch.is_empty() {
            continue;
        }
        let (messages, replies): (Vec<Message>, Vec<_>) = batch.into_iter().unzip();
        let owners: Vec<(String, RegistrationKey)> = messages
            .iter()
            .map(|m| (m.subject.clone(), m.registration()))
            .collect();
        let changing = gate.read().await;
        let total = lock(&counts).total;
        match engine.hold_all(messages, bounds, total).await {
            Ok(outcomes) => {
                {
                    let mut counts = lock(&counts);
                    for ((subject, registration), outcome) in owners.iter().zip(&outcomes) {
                        if let Ok(held) = outcome {
                            let gone = isize::try_from(held.replaced + held.dropped).unwrap_or(0);
                            counts.add(subject, *registration, 1 - gone);
                        }
                    }
                }
                drop(changing);
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    let _ = reply.send(outcome);
                }
            }
            Err(e) => {
                drop(changing);
                let e = e.to_string();
                for reply in replies {
                    let _ = reply.send(Err(HoldError::Store(StoreError::Task(e.clone()))));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use crate::{
        message::Urgency,
        store::{from_micros, sqlite::Sqlite},
    };

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
            accepted_at: SystemTime::now(),
        }
    }

    async fn open(dir: &std::path::Path, per_registration: usize, max: usize) -> HeldMessages {
        let engine = Sqlite::open(dir).expect("store");
        HeldMessages::open(Arc::new(engine), Bounds::only(per_registration, max))
            .await
            .expect("held")
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
            let held = open(dir.path(), 100, 1000).await;
            held.hold(first.clone()).await.expect("hold");
            for id in ["m2", "m3"] {
                held.hold(message(id, "i", None)).await.expect("hold");
            }
        }
        let held = open(dir.path(), 100, 1000).await;
        assert!(held.has_backlog("juliet@example.org/phone", &registration_i()));
        let waiting = held
            .waiting_in(registration_i(), SystemTime::now())
            .await
            .expect("read");
        // Microseconds are what the store keeps.
        let mut expected = first;
        expected.expires_at = from_micros(micros(expected.expires_at));
        expected.accepted_at = from_micros(micros(expected.accepted_at));
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
        let held = open(dir.path(), 3, 1000).await;
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
        let held = open(dir.path(), 10, 2).await;
        held.hold(message("a", "i", None)).await.expect("hold");
        held.hold(message("b", "i", None)).await.expect("hold");
        assert!(matches!(
            held.hold(message("c", "i", None)).await,
            Err(HoldError::Full)
        ));
        assert!(!held.contains("c").await.expect("query"));
        assert_eq!(held.total(), 2);
    }

    /// An engine that counts what reaches the store: removals, and batches of holds.
    struct Counting {
        inner: Sqlite,
        removals: std::sync::atomic::AtomicUsize,
        batches: std::sync::atomic::AtomicUsize,
    }

    #[async_trait::async_trait]
    impl Engine for Counting {
        async fn remove_held(
            &self,
            id: &str,
            subject: &str,
        ) -> Result<Option<RegistrationKey>, StoreError> {
            self.removals
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.inner.remove_held(id, subject).await
        }
        async fn held_counts(&self) -> Result<Vec<crate::store::HeldCount>, StoreError> {
            self.inner.held_counts().await
        }
        async fn prune_held(&self, now_us: i64) -> Result<Pruned, StoreError> {
            self.inner.prune_held(now_us).await
        }
        async fn hold_all(
            &self,
            messages: Vec<Message>,
            bounds: Bounds,
            total: usize,
        ) -> Result<Vec<Result<Held, HoldError>>, StoreError> {
            self.batches
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.inner.hold_all(messages, bounds, total).await
        }
        // Nothing else is asked of the store here.
        async fn revocations(
            &self,
        ) -> Result<Vec<(RegistrationKey, crate::store::Revocation)>, StoreError> {
            unreachable!()
        }
        async fn revocation(
            &self,
            _: RegistrationKey,
        ) -> Result<Option<crate::store::Revocation>, StoreError> {
            unreachable!()
        }
        async fn revoke_all(
            &self,
            _: Vec<(RegistrationKey, crate::store::Revocation)>,
        ) -> Result<(), StoreError> {
            unreachable!()
        }
        async fn revoke_within(
            &self,
            _: RegistrationKey,
            _: crate::store::Revocation,
            _: &str,
            _: usize,
        ) -> Result<bool, StoreError> {
            unreachable!()
        }
        async fn prune(&self, _: i64) -> Result<(), StoreError> {
            unreachable!()
        }
        async fn series(
            &self,
            _: RegistrationKey,
        ) -> Result<Option<crate::store::Series>, StoreError> {
            unreachable!()
        }
        async fn renew(
            &self,
            _: RegistrationKey,
            _: Option<i64>,
            _: crate::store::Series,
        ) -> Result<bool, StoreError> {
            unreachable!()
        }
        async fn series_of(
            &self,
            _: &str,
            _: i64,
            _: usize,
        ) -> Result<Vec<(RegistrationKey, crate::store::Series)>, StoreError> {
            unreachable!()
        }
        async fn all_series(
            &self,
            _: i64,
        ) -> Result<Vec<(RegistrationKey, crate::store::Series)>, StoreError> {
            unreachable!()
        }
        async fn index_node(&self, _: &str, _: &crate::store::PushNode) -> Result<(), StoreError> {
            unreachable!()
        }
        async fn nodes_of(
            &self,
            _: &str,
            _: i64,
        ) -> Result<Vec<crate::store::PushNode>, StoreError> {
            unreachable!()
        }
        async fn unindex_node(&self, _: &str, _: &str) -> Result<(), StoreError> {
            unreachable!()
        }
        async fn vapid_key(&self, _: u32, _: Vec<u8>) -> Result<Vec<u8>, StoreError> {
            unreachable!()
        }
        async fn vapid_keys(&self) -> Result<Vec<(u32, Vec<u8>)>, StoreError> {
            unreachable!()
        }
        async fn all_nodes(
            &self,
            _: i64,
        ) -> Result<Vec<(String, crate::store::PushNode)>, StoreError> {
            unreachable!()
        }
        async fn held_in(&self, _: RegistrationKey) -> Result<usize, StoreError> {
            unreachable!()
        }
        async fn waiting_in(&self, _: RegistrationKey, _: i64) -> Result<Vec<Message>, StoreError> {
            unreachable!()
        }
        async fn is_held(&self, _: &str) -> Result<bool, StoreError> {
            unreachable!()
        }
        async fn drop_registration(&self, _: RegistrationKey) -> Result<usize, StoreError> {
            unreachable!()
        }
        async fn drop_account(&self, _: &str) -> Result<usize, StoreError> {
            unreachable!()
        }
        async fn oldest_held_at(&self) -> Result<Option<i64>, StoreError> {
            unreachable!()
        }
        async fn size(&self) -> Result<u64, StoreError> {
            unreachable!()
        }
    }

    #[tokio::test]
    async fn results_with_made_up_ids_cost_the_store_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = Arc::new(Counting {
            inner: Sqlite::open(dir.path()).expect("store"),
            removals: Default::default(),
            batches: Default::default(),
        });
        let held = HeldMessages::open(engine.clone(), Bounds::only(100, 1000))
            .await
            .expect("held");
        held.hold(message("m1", "i", None)).await.expect("hold");
        let removals = || engine.removals.load(std::sync::atomic::Ordering::Relaxed);
        // Another account's client, answering pushes it never had: nothing held, no store work.
        for n in 0..1000 {
            let removed = held.remove(&format!("p{n}"), "eve@example.org/x").await;
            assert!(!removed.expect("remove"));
        }
        assert_eq!(removals(), 0);
        // Juliet's result for her held message is taken to the store, and removes it.
        assert!(
            held.remove("m1", "juliet@example.org/phone")
                .await
                .expect("remove")
        );
        assert_eq!(removals(), 1);
        assert_eq!(held.total(), 0);
    }

    /// What memory says is held, per registration, against what the store holds.
    async fn counted_and_kept(
        held: &HeldMessages,
    ) -> (Vec<(RegistrationKey, usize)>, Vec<(RegistrationKey, usize)>) {
        let mut counted: Vec<_> = lock(&held.counts)
            .by_subject
            .values()
            .flat_map(|registrations| registrations.iter().map(|(k, n)| (*k, *n)))
            .collect();
        let mut kept: Vec<_> = held
            .engine
            .held_counts()
            .await
            .expect("counts")
            .into_iter()
            .map(|row| (row.registration, row.count))
            .collect();
        counted.sort();
        kept.sort();
        (counted, kept)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn counting_again_never_races_holds_and_removals() {
        let dir = tempfile::tempdir().expect("tempdir");
        let held = Arc::new(open(dir.path(), 10_000, 100_000).await);
        for round in 0..20 {
            let holding = {
                let held = held.clone();
                tokio::spawn(async move {
                    let holds = (0..200).map(|i| {
                        held.hold(message(
                            &format!("{round}-{i}"),
                            &format!("app {}", i % 8),
                            None,
                        ))
                    });
                    futures::future::join_all(holds).await
                })
            };
            let removing = {
                let held = held.clone();
                tokio::spawn(async move {
                    for i in (0..200).step_by(3) {
                        let _ = held
                            .remove(&format!("{round}-{i}"), "juliet@example.org/phone")
                            .await;
                    }
                })
            };
            let recounting = {
                let held = held.clone();
                tokio::spawn(async move {
                    for _ in 0..20 {
                        held.recount().await.expect("recount");
                    }
                })
            };
            let (holds, removed, recounted) = tokio::join!(holding, removing, recounting);
            assert!(holds.expect("holds").iter().all(Result::is_ok));
            removed.expect("removals");
            recounted.expect("recounts");
            let (counted, kept) = counted_and_kept(&held).await;
            assert_eq!(
                counted, kept,
                "round {round}: memory and the store disagree"
            );
        }
    }

    #[tokio::test]
    async fn an_account_and_a_domain_hold_their_share_even_when_their_holds_come_together() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = Arc::new(Sqlite::open(dir.path()).expect("store"));
        let bounds = Bounds {
            per_registration: 100,
            per_account: 3,
            per_domain: 5,
            total: 100,
        };
        let held = HeldMessages::open(engine, bounds).await.expect("held");
        let for_whom = |subject: &str, id: usize| Message {
            subject: subject.into(),
            ..message(&format!("{subject} {id}"), &format!("app {id}"), None)
        };
        // Ten for juliet's two resources at once: three are hers to keep.
        let outcomes = futures::future::join_all((0..10).map(|i| {
            let resource = ["phone", "laptop"][i % 2];
            held.hold(for_whom(&format!("juliet@example.org/{resource}"), i))
        }))
        .await;
        let kept = outcomes.iter().filter(|o| o.is_ok()).count();
        let refused = outcomes
            .iter()
            .filter(|o| {
                matches!(
                    o,
                    Err(HoldError::OwnerFull("delivery.max_held_per_account"))
                )
            })
            .count();
        assert_eq!((kept, refused), (3, 7));
        // Romeo shares her domain's five; eve's domain is another.
        let romeo: Vec<_> = futures::future::join_all(
            (0..3).map(|i| held.hold(for_whom("romeo@example.org/x", i))),
        )
        .await;
        assert_eq!(romeo.iter().filter(|o| o.is_ok()).count(), 2);
        assert!(matches!(
            held.hold(for_whom("romeo@example.org/x", 9)).await,
            Err(HoldError::OwnerFull("delivery.max_held_per_domain"))
        ));
        assert!(held.hold(for_whom("eve@example.net/x", 0)).await.is_ok());
        assert_eq!(held.total(), 6);
    }

    #[tokio::test]
    async fn holds_that_arrive_together_share_a_transaction_and_each_gets_its_own_answer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let held = open(dir.path(), 100, 5).await;
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
    async fn a_steady_trickle_of_holds_is_grouped_too() {
        // One stuck app among busy ones: its pushes come a millisecond apart, each on its own
        // (none waits for another), slower than a sync takes on a fast disk.
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = Arc::new(Counting {
            inner: Sqlite::open(dir.path()).expect("store"),
            removals: Default::default(),
            batches: Default::default(),
        });
        let held = Arc::new(
            HeldMessages::open(engine.clone(), Bounds::only(1000, 1000))
                .await
                .expect("held"),
        );
        const HOLDS: usize = 40;
        let started = std::time::Instant::now();
        let mut holds = tokio::task::JoinSet::new();
        for n in 0..HOLDS {
            let held = held.clone();
            holds.spawn(async move { held.hold(message(&format!("m{n}"), "i", None)).await });
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let span = started.elapsed();
        while let Some(outcome) = holds.join_next().await {
            outcome.expect("task").expect("held");
        }
        assert_eq!(held.total(), HOLDS);
        // Batches start at least BATCH_SPACING apart, except that the last may wait for a slow
        // commit: however slow this machine, no more than this many fit in the span.
        let most = (span.as_micros() / BATCH_SPACING.as_micros()) as usize + 2;
        let batches = engine.batches.load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            batches <= most,
            "{batches} batches for {HOLDS} holds over {span:?}"
        );
    }

    #[tokio::test]
    async fn expired_messages_are_never_offered_and_are_pruned() {
        let dir = tempfile::tempdir().expect("tempdir");
        let held = open(dir.path(), 10, 10).await;
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
        let pruned = held.prune(later).await.expect("prune");
        assert_eq!(pruned.count, 1);
        assert_eq!(pruned.named[0].2, "old", "named, for the client's trace");
        assert_eq!(held.total(), 1);
    }

    #[tokio::test]
    async fn a_gone_app_takes_its_messages_with_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let held = open(dir.path(), 10, 10).await;
        held.hold(message("a", "i", None)).await.expect("hold");
        held.hold(message("b", "other", None)).await.expect("hold");
        let claims = Claims {
            subject: "juliet@example.org/phone".into(),
            application: "app".into(),
            instance: "i".into(),
            issued_at: SystemTime::now(),
            expires_at: SystemTime::now() + DAY,
            dialect: Default::default(),
            renewable: false,
            vapid: None,
        };
        assert_eq!(held.drop_registration(&claims).await.expect("drop"), 1);
        assert!(ids(&held).await.is_empty());
        let other = message("", "other", None).registration();
        assert_eq!(held.registrations_of("juliet@example.org/phone"), [other]);
    }
}
