//! What xup must remember across restarts: revoked registrations.
//!
//! Tokens are stateless, so the only way to kill an endpoint before it expires is to remember that
//! its registration was revoked. A revocation is keyed by a digest of (full JID, application,
//! instance) and holds the moment of revocation: every token of that triple issued up to then is
//! dead, one issued later (a fresh `<register>` after a reinstall) works. An entry is dropped once
//! every token it can kill has expired, so memory grows with revoked apps, never with live endpoints.
//!
//! An account can also be revoked as a whole (`revoke-all-push-endpoints`): every token issued to
//! any of its resources up to that moment is dead. The XEP-0357 app server's nodes are revoked the
//! same way as registrations, keyed by a digest of the node's id, and
//! its VAPID keys live here too: they must outlive restarts, or every subscription made with the
//! public key would break. So does the per-account index of nodes that listing needs (device id
//! and name, expiry), dropped when a node expires.
//!
//! The schema is versioned ([`SCHEMA_VERSION`]): a start brings an older database up to date, and
//! refuses one written by a newer xup; `xup check` says which it would be.
//!
//! The embedded store is one SQLite file under `store.path`, written with full sync before a
//! revocation is reported, and mirrored in memory so the push path never waits on disk. The same
//! file holds the messages kept for unreachable clients (`held.rs`), through the shared [`Database`].

use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use rusqlite::{Connection, params};
use sha2::{Digest, Sha256};

use crate::token::Claims;

const DATABASE_FILE: &str = "xup.sqlite3";

/// The digest that names one registration triple.
pub type RegistrationKey = [u8; 32];

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
    Database(#[from] rusqlite::Error),
    #[error("store task failed: {0}")]
    Task(String),
    #[error(
        "the store is at schema version {found}, newer than this xup knows ({known}): run the \
         xup that wrote it, or restore a backup"
    )]
    Newer { found: u32, known: u32 },
}

/// The store's schema, a step per version: step `i` takes a database at version `i` to `i + 1`,
/// and SQLite's `user_version` says where a database is. A database from before versions were
/// counted is at 0 with the first step's tables already there, which `IF NOT EXISTS` lets pass.
const MIGRATIONS: [&str; 2] = [
    // 1: revocations, and the messages held for unreachable clients (`held.rs`).
    "CREATE TABLE IF NOT EXISTS revocations (
         registration BLOB PRIMARY KEY,
         revoked_at_us INTEGER NOT NULL,
         forget_at_us INTEGER NOT NULL
     );
     CREATE TABLE IF NOT EXISTS held (
         seq INTEGER PRIMARY KEY AUTOINCREMENT,
         id TEXT NOT NULL UNIQUE,
         registration BLOB NOT NULL,
         subject TEXT NOT NULL,
         application TEXT NOT NULL,
         instance TEXT NOT NULL,
         topic TEXT,
         urgency TEXT NOT NULL,
         body BLOB NOT NULL,
         expires_at_us INTEGER NOT NULL
     );
     CREATE INDEX IF NOT EXISTS held_by_subject ON held (subject, seq);
     CREATE INDEX IF NOT EXISTS held_by_registration ON held (registration, seq);",
    // 2: the app server's VAPID keys and its per-account index of nodes.
    "CREATE TABLE IF NOT EXISTS vapid_keys (
         generation INTEGER PRIMARY KEY,
         secret BLOB NOT NULL
     );
     CREATE TABLE IF NOT EXISTS push_nodes (
         account TEXT NOT NULL,
         node_id TEXT NOT NULL,
         device_id TEXT,
         device_name TEXT,
         expires_at_us INTEGER NOT NULL,
         PRIMARY KEY (account, node_id)
     );",
];

/// The schema version this xup writes.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// Bring `db` to [`SCHEMA_VERSION`], in one transaction; refuse a database from a newer xup.
fn migrate(db: &mut Connection) -> Result<(), StoreError> {
    let found = schema_version(db)?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::Newer {
            found,
            known: SCHEMA_VERSION,
        });
    }
    let transaction = db.transaction()?;
    for step in &MIGRATIONS[found as usize..] {
        transaction.execute_batch(step)?;
    }
    transaction.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    transaction.commit()?;
    if found < SCHEMA_VERSION {
        tracing::info!(from = found, to = SCHEMA_VERSION, "store schema upgraded");
    }
    Ok(())
}

fn schema_version(db: &Connection) -> rusqlite::Result<u32> {
    db.pragma_query_value(None, "user_version", |row| row.get(0))
}

/// Where the store at `store.path` stands against this xup, as `xup check` says it.
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

/// Read the schema version of the store in `dir` without creating or changing anything.
pub fn schema_at(dir: &Path) -> Result<Schema, StoreError> {
    let file = dir.join(DATABASE_FILE);
    if !file.exists() {
        return Ok(Schema::Missing);
    }
    let db = Connection::open_with_flags(&file, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    Ok(match schema_version(&db)? {
        SCHEMA_VERSION => Schema::Current,
        found if found < SCHEMA_VERSION => Schema::Older(found),
        found => Schema::Newer(found),
    })
}

/// Times in microseconds since the epoch: the resolution of a token's `iat`, so that a revocation
/// compares the same before and after a restart.
#[derive(Clone, Copy)]
struct Revocation {
    revoked_at_us: i64,
    forget_at_us: i64,
}

/// The SQLite connection, shared by the revocations and the held messages. Cheap to clone.
#[derive(Clone)]
pub struct Database(Arc<Mutex<Connection>>);

impl Database {
    /// Run `work` on the connection in tokio's blocking pool, so the async threads never wait on
    /// disk. Returns once `work` has finished: with `synchronous=FULL`, a write is then on disk.
    /// Dropping the future does not undo work that has started.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.0.clone();
        tokio::task::spawn_blocking(move || {
            let mut db = db.lock().unwrap_or_else(|e| e.into_inner());
            work(&mut db)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
        .map_err(StoreError::from)
    }

    /// The connection, for work at startup before anything else runs.
    pub fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The revocation store. Cheap to share behind an `Arc`.
pub struct Store {
    db: Database,
    revoked: RwLock<HashMap<RegistrationKey, Revocation>>,
}

/// One app-server node in the per-account index, as listing shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct PushNode {
    pub node_id: String,
    pub device_id: Option<String>,
    pub device_name: Option<String>,
    pub expires_at: SystemTime,
}

impl Store {
    /// Open (or create) the database in directory `dir` and load the revocations still in force.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
            path: dir.display().to_string(),
            source,
        })?;
        let mut db = Connection::open(dir.join(DATABASE_FILE))?;
        // WAL with full sync: a revocation we answered 404 for is on disk before the answer.
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "FULL")?;
        migrate(&mut db)?;
        db.execute(
            "DELETE FROM push_nodes WHERE expires_at_us <= ?1",
            params![micros(SystemTime::now())],
        )?;
        let now_us = micros(SystemTime::now());
        db.execute(
            "DELETE FROM revocations WHERE forget_at_us <= ?1",
            params![now_us],
        )?;
        let mut revoked = HashMap::new();
        {
            let mut rows =
                db.prepare("SELECT registration, revoked_at_us, forget_at_us FROM revocations")?;
            let mut rows = rows.query([])?;
            while let Some(row) = rows.next()? {
                let key: Vec<u8> = row.get(0)?;
                let Ok(key) = RegistrationKey::try_from(key.as_slice()) else {
                    continue;
                };
                revoked.insert(
                    key,
                    Revocation {
                        revoked_at_us: row.get(1)?,
                        forget_at_us: row.get(2)?,
                    },
                );
            }
        }
        Ok(Store {
            db: Database(Arc::new(Mutex::new(db))),
            revoked: RwLock::new(revoked),
        })
    }

    /// The database, for the other tables that live in the same file.
    pub fn database(&self) -> Database {
        self.db.clone()
    }

    /// Whether the registration that issued `claims` was revoked after the token was issued.
    /// Memory only; never waits.
    pub fn is_revoked(&self, claims: &Claims) -> bool {
        let account = claims.subject.split('/').next().unwrap_or_default();
        self.is_revoked_key(&registration_key(claims), claims.issued_at)
            || self.is_revoked_key(&account_key(account), claims.issued_at)
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

    /// Note an app-server node of `account`, for listing and unregistering by device.
    pub async fn index_node(&self, account: &str, node: PushNode) -> Result<(), StoreError> {
        let account = account.to_owned();
        self.db
            .run(move |db| {
                db.execute(
                    "INSERT OR REPLACE INTO push_nodes
                     (account, node_id, device_id, device_name, expires_at_us)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![
                        account,
                        node.node_id,
                        node.device_id,
                        node.device_name,
                        micros(node.expires_at)
                    ],
                )
            })
            .await?;
        Ok(())
    }

    /// The app-server nodes of `account` that have not expired, oldest first.
    pub async fn nodes_of(&self, account: &str) -> Result<Vec<PushNode>, StoreError> {
        let account = account.to_owned();
        let now_us = micros(SystemTime::now());
        self.db
            .run(move |db| {
                let mut query = db.prepare(
                    "SELECT node_id, device_id, device_name, expires_at_us FROM push_nodes
                     WHERE account = ?1 AND expires_at_us > ?2 ORDER BY rowid",
                )?;
                let rows = query.query_map(params![account, now_us], |row| {
                    Ok(PushNode {
                        node_id: row.get(0)?,
                        device_id: row.get(1)?,
                        device_name: row.get(2)?,
                        expires_at: UNIX_EPOCH
                            + Duration::from_micros(
                                u64::try_from(row.get::<_, i64>(3)?).unwrap_or(0),
                            ),
                    })
                })?;
                rows.collect()
            })
            .await
    }

    /// Take `node_id` out of `account`'s index.
    pub async fn unindex_node(&self, account: &str, node_id: &str) -> Result<(), StoreError> {
        let (account, node_id) = (account.to_owned(), node_id.to_owned());
        self.db
            .run(move |db| {
                db.execute(
                    "DELETE FROM push_nodes WHERE account = ?1 AND node_id = ?2",
                    params![account, node_id],
                )
            })
            .await?;
        Ok(())
    }

    /// Whether whatever `key` names was revoked at or after `issued_at`. Memory only.
    pub fn is_revoked_key(&self, key: &RegistrationKey, issued_at: SystemTime) -> bool {
        let revoked = self.revoked.read().unwrap_or_else(|e| e.into_inner());
        revoked
            .get(key)
            .is_some_and(|r| micros(issued_at) <= r.revoked_at_us)
    }

    /// Revoke every token of `claims`' registration issued up to `now`, durably. The entry is kept
    /// until the last token it can kill has expired: one issued at `now` lives `lifetime`. Returns once the revocation is on disk;
    /// dropping the future does not undo a write that has started.
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
        self.db
            .run(move |db| {
                db.execute(
                    "INSERT INTO revocations (registration, revoked_at_us, forget_at_us)
                 VALUES (?1, ?2, ?3)
                 ON CONFLICT (registration) DO UPDATE SET
                     revoked_at_us = max(revoked_at_us, excluded.revoked_at_us),
                     forget_at_us = max(forget_at_us, excluded.forget_at_us)",
                    params![
                        key.as_slice(),
                        revocation.revoked_at_us,
                        revocation.forget_at_us
                    ],
                )
            })
            .await?;
        let mut revoked = self.revoked.write().unwrap_or_else(|e| e.into_inner());
        let entry = revoked.entry(key).or_insert(revocation);
        entry.revoked_at_us = entry.revoked_at_us.max(revocation.revoked_at_us);
        entry.forget_at_us = entry.forget_at_us.max(revocation.forget_at_us);
        Ok(())
    }

    /// The VAPID private key of `generation`, made by `make` and kept the first time it is asked
    /// for: a key once used must never change, or the subscriptions made with it break. Blocks;
    /// for start-up.
    pub fn vapid_key(
        &self,
        generation: u32,
        make: impl FnOnce() -> Vec<u8>,
    ) -> Result<Vec<u8>, StoreError> {
        let mut db = self.db.lock();
        let transaction = db.transaction()?;
        let existing: Option<Vec<u8>> = transaction
            .query_row(
                "SELECT secret FROM vapid_keys WHERE generation = ?1",
                params![generation],
                |row| row.get(0),
            )
            .ok();
        let secret = match existing {
            Some(secret) => secret,
            None => {
                let secret = make();
                transaction.execute(
                    "INSERT INTO vapid_keys (generation, secret) VALUES (?1, ?2)",
                    params![generation, secret],
                )?;
                secret
            }
        };
        transaction.commit()?;
        Ok(secret)
    }

    /// Forget revocations that can no longer kill any token.
    pub async fn prune(&self, now: SystemTime) -> Result<usize, StoreError> {
        let now_us = micros(now);
        self.db
            .run(move |db| {
                db.execute(
                    "DELETE FROM revocations WHERE forget_at_us <= ?1",
                    params![now_us],
                )?;
                db.execute(
                    "DELETE FROM push_nodes WHERE expires_at_us <= ?1",
                    params![now_us],
                )
            })
            .await?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::claims_for;

    const WEEK: Duration = Duration::from_secs(7 * 86400);

    fn claims(at: SystemTime) -> Claims {
        claims_for("juliet@example.org/phone", "app", "ins", at, WEEK)
    }

    #[tokio::test]
    async fn revocation_kills_older_tokens_and_spares_newer_ones_across_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t0 = SystemTime::now();
        let revoked_at = t0 + Duration::from_secs(10);
        {
            let store = Store::open(dir.path()).expect("open");
            assert!(!store.is_revoked(&claims(t0)));
            store
                .revoke(&claims(t0), revoked_at, WEEK)
                .await
                .expect("revoke");
            assert!(store.is_revoked(&claims(t0)));
        }
        let store = Store::open(dir.path()).expect("reopen");
        assert!(store.is_revoked(&claims(t0)));
        assert!(store.is_revoked(&claims(revoked_at)));
        assert!(!store.is_revoked(&claims(revoked_at + Duration::from_micros(1))));
    }

    #[tokio::test]
    async fn other_instances_are_not_affected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let t0 = SystemTime::now();
        store.revoke(&claims(t0), t0, WEEK).await.expect("revoke");
        let other = claims_for("juliet@example.org/phone", "app", "other", t0, WEEK);
        assert!(!store.is_revoked(&other));
    }

    #[tokio::test]
    async fn entries_are_forgotten_once_every_token_they_kill_expired() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let t0 = SystemTime::now();
        store.revoke(&claims(t0), t0, WEEK).await.expect("revoke");
        let almost = t0 + WEEK - Duration::from_secs(1);
        assert_eq!(store.prune(almost).await.expect("prune"), 0);
        let forgotten = store.prune(t0 + WEEK).await;
        assert_eq!(forgotten.expect("prune"), 1);
    }

    #[test]
    fn an_older_store_is_upgraded_and_a_newer_one_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(schema_at(dir.path()).expect("read"), Schema::Missing);
        {
            // A store as the first xup left it: version 0, only its own tables.
            let db = Connection::open(dir.path().join(DATABASE_FILE)).expect("db");
            db.execute_batch(MIGRATIONS[0]).expect("old tables");
            db.execute(
                "INSERT INTO revocations VALUES (?1, 1, ?2)",
                params![[7u8; 32].as_slice(), i64::MAX],
            )
            .expect("a revocation");
        }
        assert_eq!(schema_at(dir.path()).expect("read"), Schema::Older(0));
        let store = Store::open(dir.path()).expect("upgraded");
        assert!(
            store.is_revoked_key(&[7u8; 32], UNIX_EPOCH),
            "kept across the upgrade"
        );
        drop(store);
        assert_eq!(schema_at(dir.path()).expect("read"), Schema::Current);
        {
            let db = Connection::open(dir.path().join(DATABASE_FILE)).expect("db");
            db.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
                .expect("from the future");
        }
        assert_eq!(
            schema_at(dir.path()).expect("read"),
            Schema::Newer(SCHEMA_VERSION + 1)
        );
        assert!(matches!(
            Store::open(dir.path()),
            Err(StoreError::Newer { found, .. }) if found == SCHEMA_VERSION + 1
        ));
    }
}
