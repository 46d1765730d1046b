//! The embedded engine: one SQLite file in `store.path`, for one xup instance.
//!
//! Nothing to install or run, which is what `scripts/try` and a small self-hoster want. Every
//! write runs with `synchronous=FULL` in WAL mode, so a revocation answered `404` or a message
//! answered `201` is on disk before the answer. The connection is used from tokio's blocking
//! pool, so async threads never wait on the disk. SQLite's `user_version` says which schema step
//! the file is at.

use std::{path::Path, sync::Arc};

use rusqlite::{Connection, OptionalExtension, config::DbConfig, params};

use super::{
    Engine, HeldCount, PRUNED_NAMED, Pruned, PushNode, RegistrationKey, Revocation, SCHEMA_VERSION,
    Schema, Series, StoreError, from_micros, micros,
};
use crate::{
    message::Urgency,
    store::{Bounds, Held, HoldError, Message},
};

const DATABASE_FILE: &str = "xup.sqlite3";

/// The schema, a step per version: step `i` takes a database at version `i` to `i + 1`. A
/// database from before versions were counted is at 0 with the first step's tables already
/// there, which `IF NOT EXISTS` lets pass.
const MIGRATIONS: [&str; SCHEMA_VERSION as usize] = [
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
    // 3: when each message was held, for `xup status`.
    "ALTER TABLE held ADD COLUMN held_at_us INTEGER;",
    // 4: whose request a revocation was, where one account's are bounded (sum7's `<unregister>`).
    "ALTER TABLE revocations ADD COLUMN account TEXT;
     CREATE INDEX revocations_by_account ON revocations (account) WHERE account IS NOT NULL;",
    // 5: registrations whose endpoint stays the same when renewed (`registrar.rs`).
    "CREATE TABLE registrations (
         registration BLOB PRIMARY KEY,
         account TEXT NOT NULL,
         issued_at_us INTEGER NOT NULL,
         renewed_at_us INTEGER NOT NULL,
         expires_at_us INTEGER NOT NULL,
         kept TEXT NOT NULL
     );
     CREATE INDEX registrations_by_account ON registrations (account);",
];

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

/// Read the schema version of the store in `dir` without creating or changing anything.
pub fn schema_at(dir: &Path) -> Result<Schema, StoreError> {
    let file = dir.join(DATABASE_FILE);
    if !file.exists() {
        return Ok(Schema::Missing);
    }
    let db = Connection::open_with_flags(&file, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    Ok(Schema::of(Some(schema_version(&db)?)))
}

/// A registrations row, read in the column order every query here selects.
fn series_from(row: &rusqlite::Row) -> rusqlite::Result<Series> {
    Ok(Series {
        account: row.get(0)?,
        issued_at_us: row.get(1)?,
        renewed_at_us: row.get(2)?,
        expires_at_us: row.get(3)?,
        kept: row.get(4)?,
    })
}

/// A registrations row with its key in the sixth column; `None` for a key xup did not write.
fn keyed_series_from(row: &rusqlite::Row) -> rusqlite::Result<Option<(RegistrationKey, Series)>> {
    let key: Vec<u8> = row.get(5)?;
    let Ok(key) = RegistrationKey::try_from(key.as_slice()) else {
        return Ok(None);
    };
    Ok(Some((key, series_from(row)?)))
}

/// The SQLite engine. Cheap to clone.
#[derive(Clone)]
pub struct Sqlite(Arc<tokio::sync::Mutex<Connection>>);

impl Sqlite {
    /// Open (or create) the database in directory `dir` and bring its schema up to date.
    pub fn open(dir: &Path) -> Result<Sqlite, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
            path: dir.display().to_string(),
            source,
        })?;
        let mut db = Connection::open(dir.join(DATABASE_FILE))?;
        // WAL with full sync: a revocation we answered 404 for is on disk before the answer.
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "FULL")?;
        // One plan per statement, whatever is bound to it. Without this, SQLite prepares a
        // statement again at every execution if a bound value could change its plan (a `LIMIT ?`,
        // an `ORDER BY` after an equality on an index), and a stuck app's every hold runs such a
        // statement from the cache: its preparation was a tenth of the hold.
        db.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
        migrate(&mut db)?;
        Ok(Sqlite(Arc::new(tokio::sync::Mutex::new(db))))
    }

    /// Open the database in `dir` to read only, as it is: for `xup status` beside a running xup.
    pub fn open_to_read(dir: &Path) -> Result<Sqlite, StoreError> {
        let db = Connection::open_with_flags(
            dir.join(DATABASE_FILE),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )?;
        Ok(Sqlite(Arc::new(tokio::sync::Mutex::new(db))))
    }

    /// Run `work` on the connection in tokio's blocking pool. Returns once `work` has finished:
    /// with `synchronous=FULL`, a write is then on disk. The connection is waited for here, not
    /// in the pool: a burst of requests waits as tasks, not as a thread each.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let mut db = self.0.clone().lock_owned().await;
        tokio::task::spawn_blocking(move || work(&mut db))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
            .map_err(StoreError::from)
    }
}

#[async_trait::async_trait]
impl Engine for Sqlite {
    async fn revocations(&self) -> Result<Vec<(RegistrationKey, Revocation)>, StoreError> {
        self.run(|db| {
            let mut query =
                db.prepare("SELECT registration, revoked_at_us, forget_at_us FROM revocations")?;
            let rows = query.query_map([], |row| {
                let key: Vec<u8> = row.get(0)?;
                let revocation = Revocation {
                    revoked_at_us: row.get(1)?,
                    forget_at_us: row.get(2)?,
                };
                Ok((key, revocation))
            })?;
            let mut kept = Vec::new();
            for row in rows {
                let (key, revocation) = row?;
                // Not a row xup wrote: skipped rather than fatal.
                if let Ok(key) = RegistrationKey::try_from(key.as_slice()) {
                    kept.push((key, revocation));
                }
            }
            Ok(kept)
        })
        .await
    }

    async fn revocation(&self, key: RegistrationKey) -> Result<Option<Revocation>, StoreError> {
        self.run(move |db| {
            let mut query = db.prepare_cached(
                "SELECT revoked_at_us, forget_at_us FROM revocations WHERE registration = ?1",
            )?;
            let mut rows = query.query_map([key.as_slice()], |row| {
                Ok(Revocation {
                    revoked_at_us: row.get(0)?,
                    forget_at_us: row.get(1)?,
                })
            })?;
            rows.next().transpose()
        })
        .await
    }

    async fn revoke_all(
        &self,
        revocations: Vec<(RegistrationKey, Revocation)>,
    ) -> Result<(), StoreError> {
        self.run(move |db| {
            let transaction = db.transaction()?;
            for (key, revocation) in revocations {
                keep_revocation(&transaction, key, revocation, None)?;
            }
            transaction.commit()
        })
        .await
    }

    async fn revoke_within(
        &self,
        key: RegistrationKey,
        revocation: Revocation,
        account: &str,
        cap: usize,
    ) -> Result<bool, StoreError> {
        let account = account.to_owned();
        self.run(move |db| {
            let transaction = db.transaction()?;
            let kept: i64 = transaction.query_row(
                "SELECT COUNT(*) FROM revocations
                 WHERE account = ?1 AND forget_at_us > ?2 AND registration <> ?3",
                params![account, revocation.revoked_at_us, key.as_slice()],
                |row| row.get(0),
            )?;
            if usize::try_from(kept).unwrap_or(usize::MAX) >= cap {
                return Ok(false);
            }
            keep_revocation(&transaction, key, revocation, Some(&account))?;
            transaction.commit()?;
            Ok(true)
        })
        .await
    }

    async fn prune(&self, now_us: i64) -> Result<(), StoreError> {
        self.run(move |db| {
            db.execute(
                "DELETE FROM revocations WHERE forget_at_us <= ?1",
                params![now_us],
            )?;
            db.execute(
                "DELETE FROM registrations WHERE expires_at_us <= ?1",
                params![now_us],
            )?;
            db.execute(
                "DELETE FROM push_nodes WHERE expires_at_us <= ?1",
                params![now_us],
            )
        })
        .await?;
        Ok(())
    }

    async fn series(&self, key: RegistrationKey) -> Result<Option<Series>, StoreError> {
        self.run(move |db| {
            db.prepare_cached(
                "SELECT account, issued_at_us, renewed_at_us, expires_at_us, kept
                 FROM registrations WHERE registration = ?1",
            )?
            .query_row([key.as_slice()], series_from)
            .optional()
        })
        .await
    }

    async fn renew(
        &self,
        key: RegistrationKey,
        keep: Option<i64>,
        fresh: Series,
    ) -> Result<bool, StoreError> {
        self.run(move |db| {
            let transaction = db.transaction()?;
            let renewed = match keep {
                Some(issued_at_us) => {
                    transaction.execute(
                        "UPDATE registrations
                     SET renewed_at_us = ?3, expires_at_us = MAX(expires_at_us, ?4)
                     WHERE registration = ?1 AND issued_at_us = ?2 AND expires_at_us > ?3",
                        params![
                            key.as_slice(),
                            issued_at_us,
                            fresh.renewed_at_us,
                            fresh.expires_at_us
                        ],
                    )? == 1
                }
                None => false,
            };
            if !renewed {
                transaction.execute(
                    "INSERT OR REPLACE INTO registrations
                     (registration, account, issued_at_us, renewed_at_us, expires_at_us, kept)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![
                        key.as_slice(),
                        fresh.account,
                        fresh.issued_at_us,
                        fresh.renewed_at_us,
                        fresh.expires_at_us,
                        fresh.kept
                    ],
                )?;
            }
            transaction.commit()?;
            Ok(renewed)
        })
        .await
    }

    async fn series_of(
        &self,
        account: &str,
        now_us: i64,
        limit: usize,
    ) -> Result<Vec<(RegistrationKey, Series)>, StoreError> {
        let account = account.to_owned();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(move |db| {
            let mut query = db.prepare(
                "SELECT account, issued_at_us, renewed_at_us, expires_at_us, kept, registration
                 FROM registrations WHERE account = ?1 AND expires_at_us > ?2
                 ORDER BY issued_at_us LIMIT ?3",
            )?;
            let rows = query.query_map(params![account, now_us, limit], keyed_series_from)?;
            rows.filter_map(Result::transpose).collect()
        })
        .await
    }

    async fn all_series(&self, now_us: i64) -> Result<Vec<(RegistrationKey, Series)>, StoreError> {
        self.run(move |db| {
            let mut query = db.prepare(
                "SELECT account, issued_at_us, renewed_at_us, expires_at_us, kept, registration
                 FROM registrations WHERE expires_at_us > ?1",
            )?;
            let rows = query.query_map(params![now_us], keyed_series_from)?;
            rows.filter_map(Result::transpose).collect()
        })
        .await
    }

    async fn index_node(&self, account: &str, node: &PushNode) -> Result<(), StoreError> {
        let (account, node) = (account.to_owned(), node.clone());
        self.run(move |db| {
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

    async fn nodes_of(&self, account: &str, now_us: i64) -> Result<Vec<PushNode>, StoreError> {
        let account = account.to_owned();
        self.run(move |db| {
            let mut query = db.prepare(
                "SELECT node_id, device_id, device_name, expires_at_us FROM push_nodes
                 WHERE account = ?1 AND expires_at_us > ?2 ORDER BY rowid",
            )?;
            let rows = query.query_map(params![account, now_us], |row| {
                Ok(PushNode {
                    node_id: row.get(0)?,
                    device_id: row.get(1)?,
                    device_name: row.get(2)?,
                    expires_at: from_micros(row.get(3)?),
                })
            })?;
            rows.collect()
        })
        .await
    }

    async fn unindex_node(&self, account: &str, node_id: &str) -> Result<(), StoreError> {
        let (account, node_id) = (account.to_owned(), node_id.to_owned());
        self.run(move |db| {
            db.execute(
                "DELETE FROM push_nodes WHERE account = ?1 AND node_id = ?2",
                params![account, node_id],
            )
        })
        .await?;
        Ok(())
    }

    async fn vapid_key(&self, generation: u32, fresh: Vec<u8>) -> Result<Vec<u8>, StoreError> {
        self.run(move |db| {
            let transaction = db.transaction()?;
            transaction.execute(
                "INSERT OR IGNORE INTO vapid_keys (generation, secret) VALUES (?1, ?2)",
                params![generation, fresh],
            )?;
            let secret = transaction.query_row(
                "SELECT secret FROM vapid_keys WHERE generation = ?1",
                params![generation],
                |row| row.get(0),
            )?;
            transaction.commit()?;
            Ok(secret)
        })
        .await
    }

    async fn vapid_keys(&self) -> Result<Vec<(u32, Vec<u8>)>, StoreError> {
        self.run(|db| {
            let mut query = db.prepare("SELECT generation, secret FROM vapid_keys")?;
            let rows = query.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
            rows.collect()
        })
        .await
    }

    async fn all_nodes(&self, now_us: i64) -> Result<Vec<(String, PushNode)>, StoreError> {
        self.run(move |db| {
            let mut query = db.prepare(
                "SELECT account, node_id, device_id, device_name, expires_at_us FROM push_nodes
                 WHERE expires_at_us > ?1 ORDER BY rowid",
            )?;
            let rows = query.query_map(params![now_us], |row| {
                let node = PushNode {
                    node_id: row.get(1)?,
                    device_id: row.get(2)?,
                    device_name: row.get(3)?,
                    expires_at: from_micros(row.get(4)?),
                };
                Ok((row.get(0)?, node))
            })?;
            rows.collect()
        })
        .await
    }

    async fn held_counts(&self) -> Result<Vec<HeldCount>, StoreError> {
        self.run(|db| {
            let mut query = db.prepare(
                "SELECT subject, registration, COUNT(*) FROM held GROUP BY subject, registration",
            )?;
            let rows = query.query_map([], |row| {
                let registration: Vec<u8> = row.get(1)?;
                let count: i64 = row.get(2)?;
                Ok((row.get::<_, String>(0)?, registration, count))
            })?;
            let mut counts = Vec::new();
            for row in rows {
                let (subject, registration, count) = row?;
                let Ok(registration) = RegistrationKey::try_from(registration) else {
                    continue; // not a row xup wrote
                };
                counts.push(HeldCount {
                    subject,
                    registration,
                    count: usize::try_from(count).unwrap_or(0),
                });
            }
            Ok(counts)
        })
        .await
    }

    async fn held_in(&self, registration: RegistrationKey) -> Result<usize, StoreError> {
        self.run(move |db| {
            db.query_row(
                "SELECT COUNT(*) FROM held WHERE registration = ?1",
                params![registration.as_slice()],
                |row| row.get::<_, i64>(0),
            )
        })
        .await
        .map(|n| usize::try_from(n).unwrap_or(0))
    }

    async fn hold_all(
        &self,
        messages: Vec<Message>,
        bounds: Bounds,
        total: usize,
    ) -> Result<Vec<Result<Held, HoldError>>, StoreError> {
        self.run(move |db| hold_all(db, messages, bounds, total))
            .await
    }

    async fn waiting_in(
        &self,
        registration: RegistrationKey,
        now_us: i64,
    ) -> Result<Vec<Message>, StoreError> {
        self.run(move |db| {
            let mut query = db.prepare(
                "SELECT id, subject, application, instance, body, topic, urgency, expires_at_us,
                        held_at_us
                 FROM held WHERE registration = ?1 AND expires_at_us > ?2 ORDER BY seq",
            )?;
            let rows = query.query_map(params![registration.as_slice(), now_us], |row| {
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
                    // Held before schema 3 kept the time: as old as can be.
                    accepted_at: from_micros(row.get::<_, Option<i64>>(8)?.unwrap_or(0)),
                })
            })?;
            rows.collect()
        })
        .await
    }

    async fn is_held(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.run(move |db| {
            db.query_row("SELECT 1 FROM held WHERE id = ?1", params![id], |_| Ok(()))
                .optional()
                .map(|row| row.is_some())
        })
        .await
    }

    async fn remove_held(
        &self,
        id: &str,
        subject: &str,
    ) -> Result<Option<RegistrationKey>, StoreError> {
        let (id, subject) = (id.to_owned(), subject.to_owned());
        self.run(move |db| {
            let registration: Option<Vec<u8>> = db
                .query_row(
                    "DELETE FROM held WHERE id = ?1 AND subject = ?2 RETURNING registration",
                    params![id, subject],
                    |row| row.get(0),
                )
                .optional()?;
            Ok(registration.and_then(|r| RegistrationKey::try_from(r).ok()))
        })
        .await
    }

    async fn drop_registration(&self, registration: RegistrationKey) -> Result<usize, StoreError> {
        self.run(move |db| {
            db.execute(
                "DELETE FROM held WHERE registration = ?1",
                params![registration.as_slice()],
            )
        })
        .await
    }

    async fn drop_account(&self, account: &str) -> Result<usize, StoreError> {
        let prefix = format!("{account}/");
        self.run(move |db| {
            // `substr` rather than `LIKE`: exact bytes, no wildcards to escape, case kept.
            db.execute(
                "DELETE FROM held WHERE substr(subject, 1, length(?1)) = ?1",
                params![prefix],
            )
        })
        .await
    }

    async fn oldest_held_at(&self) -> Result<Option<i64>, StoreError> {
        self.run(|db| db.query_row("SELECT MIN(held_at_us) FROM held", [], |row| row.get(0)))
            .await
    }

    async fn size(&self) -> Result<u64, StoreError> {
        self.run(|db| {
            // The database file, and the write-ahead log beside it.
            let file: String = db.query_row("PRAGMA database_list", [], |row| row.get(2))?;
            let length = |path: &str| std::fs::metadata(path).map_or(0, |m| m.len());
            Ok(length(&file) + length(&format!("{file}-wal")))
        })
        .await
    }

    async fn prune_held(&self, now_us: i64) -> Result<Pruned, StoreError> {
        self.run(move |db| {
            let transaction = db.transaction()?;
            let named = transaction
                .prepare(
                    "SELECT subject, application, id FROM held WHERE expires_at_us <= ?1
                     ORDER BY seq LIMIT ?2",
                )?
                .query_map(params![now_us, PRUNED_NAMED as i64], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                })?
                .collect::<rusqlite::Result<_>>()?;
            let count = transaction.execute(
                "DELETE FROM held WHERE expires_at_us <= ?1",
                params![now_us],
            )?;
            transaction.commit()?;
            Ok(Pruned { count, named })
        })
        .await
    }
}

/// Hold `messages` in one transaction, each in a savepoint of its own so that one that cannot be
/// held (the store full, a failed write) changes nothing and costs the others nothing. `total`
/// is how many are held before the batch.
/// Keep `revocation` of `key`, merged with any earlier one (and `account`, when one asked for it).
fn keep_revocation(
    db: &Connection,
    key: RegistrationKey,
    revocation: Revocation,
    account: Option<&str>,
) -> rusqlite::Result<()> {
    db.execute(
        "INSERT INTO revocations (registration, revoked_at_us, forget_at_us, account)
         VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (registration) DO UPDATE SET
             revoked_at_us = max(revoked_at_us, excluded.revoked_at_us),
             forget_at_us = max(forget_at_us, excluded.forget_at_us),
             account = coalesce(excluded.account, account)",
        params![
            key.as_slice(),
            revocation.revoked_at_us,
            revocation.forget_at_us,
            account
        ],
    )?;
    Ok(())
}

fn hold_all(
    db: &mut Connection,
    messages: Vec<Message>,
    bounds: Bounds,
    mut total: usize,
) -> rusqlite::Result<Vec<Result<Held, HoldError>>> {
    let mut transaction = db.transaction()?;
    let mut outcomes = Vec::with_capacity(messages.len());
    for message in messages {
        let mut one = transaction.savepoint()?;
        let outcome = match hold_one(&one, message, bounds, total) {
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
        outcomes.push(outcome);
    }
    transaction.commit()?;
    Ok(outcomes)
}

/// Hold one message: replace its topic, make room within its registration's bound, and insert
/// it, unless the store already holds `bounds.total` messages (`None`; the caller rolls back).
/// The statements are cached on the connection: a stuck app brings a steady trickle of holds,
/// each of which would otherwise parse its statements again.
fn hold_one(
    db: &Connection,
    message: Message,
    bounds: Bounds,
    total: usize,
) -> rusqlite::Result<Option<Held>> {
    let registration = message.registration();
    let mut held = Held::default();
    if let Some(topic) = &message.topic {
        held.replaced = db
            .prepare_cached("DELETE FROM held WHERE registration = ?1 AND topic = ?2")?
            .execute(params![registration.as_slice(), topic])?;
    }
    let mine: i64 = db
        .prepare_cached("SELECT COUNT(*) FROM held WHERE registration = ?1")?
        .query_row(params![registration.as_slice()], |row| row.get(0))?;
    let mine = usize::try_from(mine).unwrap_or(0);
    if mine >= bounds.per_registration {
        held.dropped = db
            .prepare_cached(
                "DELETE FROM held WHERE seq IN (SELECT seq FROM held
                     WHERE registration = ?1 ORDER BY seq LIMIT ?2)",
            )?
            .execute(params![
                registration.as_slice(),
                (mine + 1 - bounds.per_registration) as i64
            ])?;
    }
    if total.saturating_sub(held.replaced + held.dropped) >= bounds.total {
        return Ok(None);
    }
    db.prepare_cached(
        "INSERT INTO held (id, registration, subject, application, instance, topic,
                           urgency, body, expires_at_us, held_at_us)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        message.id,
        registration.as_slice(),
        message.subject,
        message.application,
        message.instance,
        message.topic,
        message.urgency.as_str(),
        message.body,
        micros(message.expires_at),
        micros(message.accepted_at),
    ])?;
    Ok(Some(held))
}

#[cfg(test)]
mod tests {
    use std::time::{SystemTime, UNIX_EPOCH};

    use super::*;
    use crate::store::Store;

    #[tokio::test]
    async fn an_older_store_is_upgraded_and_a_newer_one_refused() {
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
        let engine = Sqlite::open(dir.path()).expect("upgraded");
        let store = Store::new(Arc::new(engine)).await.expect("load");
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
            Sqlite::open(dir.path()),
            Err(StoreError::Newer { found, .. }) if found == SCHEMA_VERSION + 1
        ));
    }

    #[tokio::test]
    async fn a_cached_statement_is_prepared_once_whatever_is_bound_to_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = Sqlite::open(dir.path()).expect("store");
        let db = engine.0.lock().await;
        let message = |i: usize| Message {
            id: format!("m{i}"),
            subject: "juliet@example.org/phone".into(),
            application: "app".into(),
            instance: format!("i{}", i % 2),
            body: vec![0; 16],
            topic: None,
            urgency: Urgency::Normal,
            expires_at: SystemTime::now() + std::time::Duration::from_secs(86400),
            accepted_at: SystemTime::now(),
        };
        // Two registrations, each at its bound of three: every hold past the sixth drops one.
        for i in 0..12 {
            let held = hold_one(&db, message(i), Bounds::only(3, 1000), i.min(6)).expect("held");
            assert_eq!(
                held.map(|h| h.dropped),
                Some(usize::from(i >= 6)),
                "hold {i}"
            );
        }
        // The kind of statement hold_one runs to drop the oldest, with a new value bound each
        // time: without the planner's stability guarantee, SQLite prepares it again each time.
        let mut oldest = db
            .prepare("SELECT seq FROM held WHERE registration = ?1 ORDER BY seq LIMIT ?2")
            .expect("query");
        for i in 0..4 {
            let registration = message(i).registration();
            let mut rows = oldest
                .query(params![registration.as_slice(), i as i64 + 1])
                .expect("runs");
            assert!(rows.next().expect("a row").is_some());
        }
        assert_eq!(
            oldest.get_status(rusqlite::StatementStatus::RePrepare),
            0,
            "four executions, one preparation"
        );
    }
}
