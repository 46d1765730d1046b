//! What xup must remember across restarts, behind one interface with two engines.
//!
//! Tokens are stateless, so the only way to kill an endpoint before it expires is to remember that
//! its registration was revoked. A revocation is keyed by a digest of (full JID, application,
//! instance) and holds the moment of revocation: every token of that triple issued up to then is
//! dead, one issued later (a fresh `<register>` after a reinstall) works. An entry is dropped once
//! every token it can kill has expired, so memory grows with revoked apps, never with live endpoints.
//!
//! An account can also be revoked as a whole (`revoke-all-push-endpoints`): every token issued to
//! any of its resources up to that moment is dead. The XEP-0357 app server's nodes are revoked the
//! same way as registrations, keyed by a digest of the node's id, and its VAPID keys live here too:
//! they must outlive restarts, or every subscription made with the public key would break. So does
//! the per-account index of nodes that listing needs (device id and name, expiry), dropped when a
//! node expires. The messages kept for unreachable clients (`held.rs`) are the rest.
//!
//! Everything goes through [`Engine`]: SQLite in `store.path` (`sqlite.rs`, the default,
//! nothing to run) or PostgreSQL at `store.url` (`postgres.rs`, shared by several xup
//! instances, `cluster/`). Revocations are mirrored in memory so the push path never waits on
//! the database; with PostgreSQL every instance's mirror also hears the others' revocations.
//!
//! The schema is versioned ([`SCHEMA_VERSION`], the same numbering for both engines): a start
//! brings an older database up to date, and refuses one written by a newer xup; `xup check` says
//! which it would be.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use sha2::{Digest, Sha256};

use crate::{message::Urgency, token::Claims};

pub mod copy;
pub mod engines;
pub mod held;
pub mod postgres;
pub mod sqlite;

/// The digest that names one registration triple.
pub type RegistrationKey = [u8; 32];

/// A key as text, for the messages instances send each other (`cluster/`).
pub fn key_to_hex(key: &RegistrationKey) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

/// The key [`key_to_hex`] wrote; `None` for any other text.
pub fn key_from_hex(text: &str) -> Option<RegistrationKey> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(key)
}

/// The key under which a whole account (a bare JID) is revoked: apart from every registration's,
/// whose instance is never "*".
fn account_key(account: &str) -> RegistrationKey {
    registration_key_of(account, "*", "*")
}

/// The key of the registration `claims` belong to. Each part is length-prefixed so that no two
/// different triples can run together into the same bytes.
pub fn registration_key(claims: &Claims) -> RegistrationKey {
    registration_key_of(&claims.subject, &claims.application, &claims.instance)
}

/// The key of the registration of (full JID, application, instance).
pub fn registration_key_of(subject: &str, application: &str, instance: &str) -> RegistrationKey {
    let mut hash = Sha256::new();
    for part in [subject, application, instance] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part.as_bytes());
    }
    hash.finalize().into()
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create store directory {path}: {source}")]
    CreateDir {
        path: String,
        source: std::io::Error,
    },
    #[error("store database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("store database: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// No connection to PostgreSQL within the pool's wait.
    #[error("store database unreachable: {0}")]
    Unreachable(String),
    #[error("TLS to the store database: {0}")]
    Tls(String),
    #[error("store task failed: {0}")]
    Task(String),
    #[error(
        "the store is at schema version {found}, newer than this xup knows ({known}): run the \
         xup that wrote it, or restore a backup"
    )]
    Newer { found: u32, known: u32 },
    #[error(
        "the store is not at this xup's schema ({0:?}): start this xup once to create or \
         upgrade it"
    )]
    NotCurrent(Schema),
}

/// The schema version this xup writes: the number of steps in either engine's migrations.
pub const SCHEMA_VERSION: u32 = 5;

/// Where a store stands against this xup, as `xup check` says it.
#[derive(Debug, PartialEq)]
pub enum Schema {
    /// No database yet: the first start makes it.
    Missing,
    Current,
    /// Made by an older xup: the next start upgrades it.
    Older(u32),
    /// Made by a newer xup: this one refuses to start on it.
    Newer(u32),
}

impl Schema {
    /// Where a database at `found` (`None`: no schema yet) stands.
    pub fn of(found: Option<u32>) -> Schema {
        match found {
            None => Schema::Missing,
            Some(SCHEMA_VERSION) => Schema::Current,
            Some(found) if found < SCHEMA_VERSION => Schema::Older(found),
            Some(found) => Schema::Newer(found),
        }
    }
}

/// When a registration (or account, or node) was revoked, and until when that matters. Times in
/// microseconds since the epoch: the resolution of a token's `iat`, so that a revocation compares
/// the same before and after a restart.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Revocation {
    pub revoked_at_us: i64,
    pub forget_at_us: i64,
}

impl Revocation {
    /// Two revocations of one key are one that kills what either kills, kept as long as either.
    fn merge(&mut self, other: Revocation) {
        self.revoked_at_us = self.revoked_at_us.max(other.revoked_at_us);
        self.forget_at_us = self.forget_at_us.max(other.forget_at_us);
    }
}

/// One app-server node in the per-account index, as listing shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct PushNode {
    pub node_id: String,
    pub device_id: Option<String>,
    pub device_name: Option<String>,
    pub expires_at: SystemTime,
}

/// One registration whose endpoint stays the same while the client renews it (`registrar.rs`):
/// the token it was issued, sealed for the store ([`crate::token::Purpose::Kept`]), and until when
/// renewals have kept it alive. Times in microseconds since the epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The bare JID that registered, for listing its registrations.
    pub account: String,
    /// The token's `iat`: a token of an earlier or later series of the same key is not this one.
    pub issued_at_us: i64,
    pub renewed_at_us: i64,
    pub expires_at_us: i64,
    pub kept: String,
}

/// What a prune of held messages dropped: how many, and who the first [`PRUNED_NAMED`] were for,
/// so each user's trace can say that a message expired (`trace.rs`).
#[derive(Debug, Default, PartialEq)]
pub struct Pruned {
    pub count: usize,
    /// (client's full JID, application, message id).
    pub named: Vec<(String, String, String)>,
}

/// How many pruned messages are named at most: more than the traces keep, and a bounded read.
pub const PRUNED_NAMED: usize = 1000;

/// How many messages one registration of one client has held.
#[derive(Debug, PartialEq)]
pub struct HeldCount {
    pub subject: String,
    pub registration: RegistrationKey,
    pub count: usize,
}

/// What a database engine does for xup; the logic above it (mirrors, counts, bounds) is shared.
/// Every write has reached the database's durable storage when its future returns; dropping the
/// future does not undo a write that has started.
#[async_trait::async_trait]
pub trait Engine: Send + Sync {
    /// Every revocation still kept.
    async fn revocations(&self) -> Result<Vec<(RegistrationKey, Revocation)>, StoreError>;
    /// The revocation kept for `key`, if any.
    async fn revocation(&self, key: RegistrationKey) -> Result<Option<Revocation>, StoreError>;
    /// Keep `revocation` of `key`, merged with any earlier one.
    async fn revoke(&self, key: RegistrationKey, revocation: Revocation) -> Result<(), StoreError> {
        self.revoke_all(vec![(key, revocation)]).await
    }
    /// [`Engine::revoke`] for each, in one transaction: copying a store's million revocations
    /// then costs one sync, not a million.
    async fn revoke_all(
        &self,
        revocations: Vec<(RegistrationKey, Revocation)>,
    ) -> Result<(), StoreError>;
    /// [`Engine::revoke`], made at `account`'s request, unless `account` has `cap` other
    /// revocations kept past `revocation.revoked_at_us` already (false: nothing written).
    async fn revoke_within(
        &self,
        key: RegistrationKey,
        revocation: Revocation,
        account: &str,
        cap: usize,
    ) -> Result<bool, StoreError>;
    /// Forget revocations, registrations and nodes that are past mattering at `now_us`.
    async fn prune(&self, now_us: i64) -> Result<(), StoreError>;

    /// The registration kept for `key`, if any, expired or not.
    async fn series(&self, key: RegistrationKey) -> Result<Option<Series>, StoreError>;
    /// Renew the registration of `key` if it is the series issued at `keep` and still alive at
    /// `fresh.renewed_at_us`: it then expires at `fresh.expires_at_us` (or later, if it already
    /// did) and true is returned. Otherwise `fresh` takes the key's place, and false.
    async fn renew(
        &self,
        key: RegistrationKey,
        keep: Option<i64>,
        fresh: Series,
    ) -> Result<bool, StoreError>;
    /// The first `limit` registrations of `account` that live past `now_us`, oldest first.
    async fn series_of(
        &self,
        account: &str,
        now_us: i64,
        limit: usize,
    ) -> Result<Vec<(RegistrationKey, Series)>, StoreError>;
    /// Every registration that lives past `now_us`: for copying a store.
    async fn all_series(&self, now_us: i64) -> Result<Vec<(RegistrationKey, Series)>, StoreError>;

    async fn index_node(&self, account: &str, node: &PushNode) -> Result<(), StoreError>;
    /// The nodes of `account` that live past `now_us`, oldest first.
    async fn nodes_of(&self, account: &str, now_us: i64) -> Result<Vec<PushNode>, StoreError>;
    async fn unindex_node(&self, account: &str, node_id: &str) -> Result<(), StoreError>;

    /// The VAPID secret of `generation`: the one kept, or `fresh`, kept now, if there is none.
    async fn vapid_key(&self, generation: u32, fresh: Vec<u8>) -> Result<Vec<u8>, StoreError>;
    /// Every VAPID secret kept, by generation: for copying a store.
    async fn vapid_keys(&self) -> Result<Vec<(u32, Vec<u8>)>, StoreError>;
    /// Every account's nodes that live past `now_us`: for copying a store.
    async fn all_nodes(&self, now_us: i64) -> Result<Vec<(String, PushNode)>, StoreError>;

    /// Held messages, counted per client and registration.
    async fn held_counts(&self) -> Result<Vec<HeldCount>, StoreError>;
    /// How many messages are held in `registration`.
    async fn held_in(&self, registration: RegistrationKey) -> Result<usize, StoreError>;
    /// Hold `messages` in one transaction, each on its own: one that cannot be held (the store
    /// holds `bounds.total` already, counting `total` before the batch) changes nothing and costs
    /// the others nothing. One result per message, in order.
    async fn hold_all(
        &self,
        messages: Vec<Message>,
        bounds: Bounds,
        total: usize,
    ) -> Result<Vec<Result<Held, HoldError>>, StoreError>;
    /// The messages held in `registration` that live past `now_us`, oldest first.
    async fn waiting_in(
        &self,
        registration: RegistrationKey,
        now_us: i64,
    ) -> Result<Vec<Message>, StoreError>;
    async fn is_held(&self, id: &str) -> Result<bool, StoreError>;
    /// Forget message `id` if it was held for `subject`; its registration, if it was.
    async fn remove_held(
        &self,
        id: &str,
        subject: &str,
    ) -> Result<Option<RegistrationKey>, StoreError>;
    async fn drop_registration(&self, registration: RegistrationKey) -> Result<usize, StoreError>;
    /// Drop what is held for every resource of `account`, a bare JID.
    async fn drop_account(&self, account: &str) -> Result<usize, StoreError>;
    /// Drop the held messages that expire by `now_us`.
    async fn prune_held(&self, now_us: i64) -> Result<Pruned, StoreError>;

    /// When the oldest message still held was held (`None`: none, or only messages held before
    /// the schema kept the time): for `xup status`.
    async fn oldest_held_at(&self) -> Result<Option<i64>, StoreError>;
    /// The space the store takes, in bytes: for `xup status`.
    async fn size(&self) -> Result<u64, StoreError>;
}

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
    /// When xup accepted it from its sender: a revocation made since (`revoke-all`) keeps it
    /// from being delivered, however it raced the hold (`Relay::offer`).
    pub accepted_at: SystemTime,
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
    /// The client's account or its domain holds all it may; names the setting.
    #[error("the client's account or domain holds {0} messages already")]
    OwnerFull(&'static str),
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

/// The bounds a hold is checked against. The engine keeps the per-registration and total ones in
/// its transaction; the writer checks the account's and domain's first, in memory.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    pub per_registration: usize,
    pub per_account: usize,
    pub per_domain: usize,
    pub total: usize,
}

impl Bounds {
    /// Bounds with no account or domain bound of their own: for copying a store, and for tests.
    pub fn only(per_registration: usize, total: usize) -> Bounds {
        Bounds {
            per_registration,
            per_account: usize::MAX,
            per_domain: usize::MAX,
            total,
        }
    }
}

/// The revocations, mirrored in memory, and the other things kept. Cheap to share behind an `Arc`.
pub struct Store {
    engine: Arc<dyn Engine>,
    revoked: RwLock<HashMap<RegistrationKey, Revocation>>,
    /// What the database said lately about renewed registrations: key → (`iat`, alive until),
    /// both in microseconds. Only ever a lower bound of the truth (a renewal moves the end later,
    /// a new series has another `iat`, a revocation is in `revoked`), so a push trusts it
    /// without asking the database, and asks when it says the registration is over.
    renewed: RwLock<HashMap<RegistrationKey, (i64, i64)>>,
}

/// How many renewed registrations [`Store`] remembers before it starts again from empty: about
/// 3 MiB, after which a lapsed token costs one database read until it is remembered again.
const RENEWED_REMEMBERED: usize = 65_536;

impl Store {
    /// The store on `engine`, with the revocations still in force loaded.
    pub async fn new(engine: Arc<dyn Engine>) -> Result<Store, StoreError> {
        let store = Store {
            engine,
            revoked: RwLock::default(),
            renewed: RwLock::default(),
        };
        store.reload().await?;
        Ok(store)
    }

    /// The engine, for the held messages that live in the same database.
    pub fn engine(&self) -> Arc<dyn Engine> {
        self.engine.clone()
    }

    /// Read every revocation again: another instance may have made some while this one was not
    /// listening (`cluster/`).
    pub async fn reload(&self) -> Result<(), StoreError> {
        let now_us = micros(SystemTime::now());
        self.engine.prune(now_us).await?;
        let kept = self.engine.revocations().await?;
        let mut revoked = self.revoked.write().unwrap_or_else(|e| e.into_inner());
        for (key, revocation) in kept {
            revoked
                .entry(key)
                .and_modify(|r| r.merge(revocation))
                .or_insert(revocation);
        }
        Ok(())
    }

    /// Whether the registration that issued `claims` was revoked after the token was issued.
    /// Memory only; never waits.
    pub fn is_revoked(&self, claims: &Claims) -> bool {
        let (subject, application, instance) =
            (&claims.subject, &claims.application, &claims.instance);
        self.is_revoked_since(subject, application, instance, claims.issued_at)
    }

    /// Whether the registration of (`subject`, `application`, `instance`), or its account, was
    /// revoked at or after `at`: a token issued then, or a message accepted then, is dead.
    /// Memory only.
    pub fn is_revoked_since(
        &self,
        subject: &str,
        application: &str,
        instance: &str,
        at: SystemTime,
    ) -> bool {
        let account = subject.split('/').next().unwrap_or_default();
        self.is_revoked_key(&registration_key_of(subject, application, instance), at)
            || self.is_revoked_key(&account_key(account), at)
    }

    /// Whether whatever `key` names was revoked at or after `issued_at`. Memory only.
    pub fn is_revoked_key(&self, key: &RegistrationKey, issued_at: SystemTime) -> bool {
        let revoked = self.revoked.read().unwrap_or_else(|e| e.into_inner());
        revoked
            .get(key)
            .is_some_and(|r| micros(issued_at) <= r.revoked_at_us)
    }

    /// Revoke every endpoint issued to `account` (a bare JID) up to `now`, durably, and remember
    /// it for `lifetime`, the longest any of them lives.
    pub async fn revoke_account(
        &self,
        account: &str,
        now: SystemTime,
        lifetime: Duration,
    ) -> Result<(), StoreError> {
        self.revoke_key(account_key(account), now, now + lifetime)
            .await
    }

    /// Revoke every token of `claims`' registration issued up to `now`, durably. The entry is
    /// kept until the last token it can kill has expired: one issued at `now` lives `lifetime`.
    pub async fn revoke(
        &self,
        claims: &Claims,
        now: SystemTime,
        lifetime: Duration,
    ) -> Result<(), StoreError> {
        let forget_at = (now + lifetime).max(claims.expires_at);
        self.revoke_key(registration_key(claims), now, forget_at)
            .await
    }

    /// [`Store::revoke`], at `account`'s request, within `cap` revocations kept for it; false
    /// (and nothing revoked) past it.
    pub async fn revoke_within(
        &self,
        claims: &Claims,
        now: SystemTime,
        lifetime: Duration,
        account: &str,
        cap: usize,
    ) -> Result<bool, StoreError> {
        let key = registration_key(claims);
        let revocation = Revocation {
            revoked_at_us: micros(now),
            forget_at_us: micros((now + lifetime).max(claims.expires_at)),
        };
        let kept = self
            .engine
            .revoke_within(key, revocation, account, cap)
            .await?;
        if kept {
            self.mirror(key, revocation);
        }
        Ok(kept)
    }

    /// Revoke whatever `key` names as of `now`, durably, and remember it until `forget_at`.
    pub async fn revoke_key(
        &self,
        key: RegistrationKey,
        now: SystemTime,
        forget_at: SystemTime,
    ) -> Result<(), StoreError> {
        let revocation = Revocation {
            revoked_at_us: micros(now),
            forget_at_us: micros(forget_at),
        };
        self.engine.revoke(key, revocation).await?;
        self.mirror(key, revocation);
        Ok(())
    }

    /// Take in the revocation of `key` that another instance announced, as the database has it:
    /// the announcement only says where to look, since anyone who can connect may announce
    /// (`cluster/`). False when the database keeps no revocation of `key`.
    pub async fn take_announced(&self, key: RegistrationKey) -> Result<bool, StoreError> {
        let Some(revocation) = self.engine.revocation(key).await? else {
            return Ok(false);
        };
        self.mirror(key, revocation);
        Ok(true)
    }

    /// Take in a revocation that is already in the database: one this instance just wrote, or
    /// one another instance announced.
    pub fn mirror(&self, key: RegistrationKey, revocation: Revocation) {
        let mut revoked = self.revoked.write().unwrap_or_else(|e| e.into_inner());
        revoked
            .entry(key)
            .and_modify(|r| r.merge(revocation))
            .or_insert(revocation);
    }

    /// The registration kept for `key`, expired or not.
    pub async fn series(&self, key: RegistrationKey) -> Result<Option<Series>, StoreError> {
        self.engine.series(key).await
    }

    /// Renew the series of `key` issued at `keep`, or start `fresh` in its place; true when
    /// renewed ([`Engine::renew`]).
    pub async fn renew(
        &self,
        key: RegistrationKey,
        keep: Option<i64>,
        fresh: Series,
    ) -> Result<bool, StoreError> {
        let (fresh_iat_us, expires_at_us) = (fresh.issued_at_us, fresh.expires_at_us);
        let renewed = self.engine.renew(key, keep, fresh).await?;
        let issued_at_us = match (renewed, keep) {
            (true, Some(kept_iat_us)) => kept_iat_us,
            _ => fresh_iat_us,
        };
        self.remember_renewal(key, issued_at_us, expires_at_us);
        Ok(renewed)
    }

    /// Until when a renewable token past its first lifetime lives: the end of its series, if the
    /// series it was issued in is still the one kept and has not ended by `now`.
    pub async fn renewed_until(
        &self,
        claims: &Claims,
        now: SystemTime,
    ) -> Result<Option<SystemTime>, StoreError> {
        let key = registration_key(claims);
        let (issued_at_us, now_us) = (micros(claims.issued_at), micros(now));
        let remembered = self
            .renewed
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .copied();
        if let Some((iat, until_us)) = remembered
            && iat == issued_at_us
            && until_us > now_us
        {
            return Ok(Some(from_micros(until_us)));
        }
        let Some(series) = self.engine.series(key).await? else {
            return Ok(None);
        };
        if series.issued_at_us != issued_at_us || series.expires_at_us <= now_us {
            return Ok(None);
        }
        self.remember_renewal(key, series.issued_at_us, series.expires_at_us);
        Ok(Some(from_micros(series.expires_at_us)))
    }

    fn remember_renewal(&self, key: RegistrationKey, issued_at_us: i64, until_us: i64) {
        let mut renewed = self.renewed.write().unwrap_or_else(|e| e.into_inner());
        if renewed.len() >= RENEWED_REMEMBERED && !renewed.contains_key(&key) {
            renewed.clear();
        }
        renewed.insert(key, (issued_at_us, until_us));
    }

    /// The first `limit` registrations of `account` (a bare JID) alive at `now`, oldest first.
    pub async fn series_of(
        &self,
        account: &str,
        now: SystemTime,
        limit: usize,
    ) -> Result<Vec<(RegistrationKey, Series)>, StoreError> {
        self.engine.series_of(account, micros(now), limit).await
    }

    /// Note an app-server node of `account`, for listing and unregistering by device.
    pub async fn index_node(&self, account: &str, node: PushNode) -> Result<(), StoreError> {
        self.engine.index_node(account, &node).await
    }

    /// The app-server nodes of `account` that have not expired, oldest first.
    pub async fn nodes_of(&self, account: &str) -> Result<Vec<PushNode>, StoreError> {
        self.engine
            .nodes_of(account, micros(SystemTime::now()))
            .await
    }

    /// Take `node_id` out of `account`'s index.
    pub async fn unindex_node(&self, account: &str, node_id: &str) -> Result<(), StoreError> {
        self.engine.unindex_node(account, node_id).await
    }

    /// The VAPID private key of `generation`, made by `make` and kept the first time it is asked
    /// for: a key once used must never change, or the subscriptions made with it break. When
    /// several instances start at once, all get the one that was kept first.
    pub async fn vapid_key(
        &self,
        generation: u32,
        make: impl FnOnce() -> Vec<u8>,
    ) -> Result<Vec<u8>, StoreError> {
        self.engine.vapid_key(generation, make()).await
    }

    /// Forget revocations that can no longer kill any token, and nodes that expired.
    pub async fn prune(&self, now: SystemTime) -> Result<usize, StoreError> {
        let now_us = micros(now);
        self.engine.prune(now_us).await?;
        let mut revoked = self.revoked.write().unwrap_or_else(|e| e.into_inner());
        let before = revoked.len();
        revoked.retain(|_, r| r.forget_at_us > now_us);
        Ok(before - revoked.len())
    }
}

/// Microseconds since the epoch, the store's one time format.
pub fn micros(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// The moment `micros` names.
pub fn from_micros(us: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(u64::try_from(us).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::claims_for;

    const WEEK: Duration = Duration::from_secs(7 * 86400);

    fn claims(at: SystemTime) -> Claims {
        claims_for("juliet@example.org/phone", "app", "ins", at, WEEK)
    }

    async fn open(dir: &std::path::Path) -> Store {
        let engine = sqlite::Sqlite::open(dir).expect("open");
        Store::new(Arc::new(engine)).await.expect("load")
    }

    #[tokio::test]
    async fn revocation_kills_older_tokens_and_spares_newer_ones_across_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t0 = SystemTime::now();
        let revoked_at = t0 + Duration::from_secs(10);
        {
            let store = open(dir.path()).await;
            assert!(!store.is_revoked(&claims(t0)));
            store
                .revoke(&claims(t0), revoked_at, WEEK)
                .await
                .expect("revoke");
            assert!(store.is_revoked(&claims(t0)));
        }
        let store = open(dir.path()).await;
        assert!(store.is_revoked(&claims(t0)));
        assert!(store.is_revoked(&claims(revoked_at)));
        assert!(!store.is_revoked(&claims(revoked_at + Duration::from_micros(1))));
    }

    #[tokio::test]
    async fn other_instances_are_not_affected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path()).await;
        let t0 = SystemTime::now();
        store.revoke(&claims(t0), t0, WEEK).await.expect("revoke");
        let other = claims_for("juliet@example.org/phone", "app", "other", t0, WEEK);
        assert!(!store.is_revoked(&other));
    }

    #[tokio::test]
    async fn entries_are_forgotten_once_every_token_they_kill_expired() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path()).await;
        let t0 = SystemTime::now();
        store.revoke(&claims(t0), t0, WEEK).await.expect("revoke");
        let almost = t0 + WEEK - Duration::from_secs(1);
        assert_eq!(store.prune(almost).await.expect("prune"), 0);
        let forgotten = store.prune(t0 + WEEK).await;
        assert_eq!(forgotten.expect("prune"), 1);
    }

    #[tokio::test]
    async fn a_revocation_heard_from_elsewhere_is_merged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path()).await;
        let t0 = SystemTime::now();
        let key = registration_key(&claims(t0));
        store.mirror(
            key,
            Revocation {
                revoked_at_us: micros(t0),
                forget_at_us: i64::MAX,
            },
        );
        assert!(store.is_revoked(&claims(t0)));
        // An older one heard later does not bring newer tokens back to life.
        store.mirror(
            key,
            Revocation {
                revoked_at_us: 0,
                forget_at_us: 1,
            },
        );
        assert!(store.is_revoked(&claims(t0)));
    }
}
