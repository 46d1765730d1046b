//! The shared engine: a PostgreSQL database at `store.url`, for one or several xup instances.
//!
//! An operator who outgrows one process points every instance at one database (`cluster/` says
//! how they divide the work). Queries go through a pool of connections (`store.pool_size`),
//! statements are prepared once per connection, and every write is a transaction that has
//! committed (PostgreSQL's `synchronous_commit`, on by default, puts it on disk) before its
//! future returns. A revocation is announced on [`REVOKED_CHANNEL`] in the same transaction, so
//! every instance's mirror learns of it the moment it commits.
//!
//! TLS is used when the URL says `sslmode=require`, and then the server's certificate is always
//! verified, against the system's roots and `store.ca_file` (a private CA, or the server's own
//! self-signed certificate). Any other `sslmode` connects in clear, as libpq's `prefer` does with a
//! server that has no TLS: a leader's session and its pool must reach the same server the same way.
//!
//! Migrations run at start in one transaction under an advisory lock, so instances started
//! together neither race nor half-apply a step; `xup_schema` holds the version, numbered as the
//! SQLite engine's.

use std::{path::Path, sync::Arc, time::Duration};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use futures::TryStreamExt;
use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, pem::PemObject},
};
use tokio_postgres::{config::SslMode, types::ToSql};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{
    Engine, HeldCount, PRUNED_NAMED, Pruned, PushNode, RegistrationKey, Revocation, SCHEMA_VERSION,
    Schema, Series, StoreError, from_micros, key_from_hex, key_to_hex, micros,
};
use crate::{
    message::Urgency,
    store::{Bounds, Held, HoldError, Message},
};

/// Where revocations are announced, as `<key in hex> <revoked_at_us> <forget_at_us>`. A listener
/// takes only the key from it and reads the revocation from the table (`Store::take_announced`):
/// anyone who can connect can announce, but only xup's role can write the table.
pub const REVOKED_CHANNEL: &str = "xup_revoked";

/// The advisory lock taken while migrating, apart from the leader's (`cluster/`).
const MIGRATION_LOCK: i64 = 0x7875_7000_0001;

/// The first key of the per-account transaction locks (`revoke_within`); the second is a hash
/// of the account.
const ACCOUNT_LOCK: i32 = 0x7875_7003;

/// How long a query waits for a connection from the pool, or for a new one to be made, before
/// the store counts as unreachable: a push is then answered `503`, not left hanging.
const POOL_WAIT: Duration = Duration::from_secs(5);

const MIGRATIONS: [&str; SCHEMA_VERSION as usize] = [
    // 1: revocations, and the messages held for unreachable clients (`held.rs`).
    "CREATE TABLE revocations (
         registration BYTEA PRIMARY KEY,
         revoked_at_us BIGINT NOT NULL,
         forget_at_us BIGINT NOT NULL
     );
     CREATE TABLE held (
         seq BIGSERIAL PRIMARY KEY,
         id TEXT NOT NULL UNIQUE,
         registration BYTEA NOT NULL,
         subject TEXT NOT NULL,
         application TEXT NOT NULL,
         instance TEXT NOT NULL,
         topic TEXT,
         urgency TEXT NOT NULL,
         body BYTEA NOT NULL,
         expires_at_us BIGINT NOT NULL
     );
     CREATE INDEX held_by_subject ON held (subject, seq);
     CREATE INDEX held_by_registration ON held (registration, seq);",
    // 2: the app server's VAPID keys and its per-account index of nodes.
    "CREATE TABLE vapid_keys (
         generation INTEGER PRIMARY KEY,
         secret BYTEA NOT NULL
     );
     CREATE TABLE push_nodes (
         account TEXT NOT NULL,
         node_id TEXT NOT NULL,
         device_id TEXT,
         device_name TEXT,
         expires_at_us BIGINT NOT NULL,
         seq BIGSERIAL,
         PRIMARY KEY (account, node_id)
     );",
    // 3: when each message was held, for `xup status`.
    "ALTER TABLE held ADD COLUMN held_at_us BIGINT;",
    // 4: whose request a revocation was, where one account's are bounded (sum7's `<unregister>`).
    "ALTER TABLE revocations ADD COLUMN account TEXT;
     CREATE INDEX revocations_by_account ON revocations (account) WHERE account IS NOT NULL;",
    // 5: registrations whose endpoint stays the same when renewed (`registrar.rs`).
    "CREATE TABLE registrations (
         registration BYTEA PRIMARY KEY,
         account TEXT NOT NULL,
         issued_at_us BIGINT NOT NULL,
         renewed_at_us BIGINT NOT NULL,
         expires_at_us BIGINT NOT NULL,
         kept TEXT NOT NULL
     );
     CREATE INDEX registrations_by_account ON registrations (account);",
];

/// A registrations row, read in the column order every query here selects.
fn series_from(row: &tokio_postgres::Row) -> Series {
    Series {
        account: row.get(0),
        issued_at_us: row.get(1),
        renewed_at_us: row.get(2),
        expires_at_us: row.get(3),
        kept: row.get(4),
    }
}

/// A registrations row with its key in the sixth column; `None` for a key xup did not write.
fn keyed_series_from(row: &tokio_postgres::Row) -> Option<(RegistrationKey, Series)> {
    let key: &[u8] = row.get(5);
    Some((RegistrationKey::try_from(key).ok()?, series_from(row)))
}

/// How xup reaches PostgreSQL: the parsed URL, and TLS for when it asks for it. Cheap to clone.
#[derive(Clone)]
pub struct Target {
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
}

/// What one connection made by [`Target::connect`] is driven by.
pub type Connection = tokio_postgres::Connection<
    tokio_postgres::Socket,
    <MakeRustlsConnect as tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>>::Stream,
>;

impl Target {
    /// The database at `url`; with `sslmode=require`, over TLS, trusting the system's roots and
    /// the certificates in `ca_file`.
    pub fn new(url: &str, ca_file: Option<&Path>) -> Result<Target, StoreError> {
        let mut config: tokio_postgres::Config = url.parse()?;
        let mut roots = RootCertStore::empty();
        if config.get_ssl_mode() == SslMode::Require {
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            if let Some(file) = ca_file {
                let tls_error = |e: &dyn std::fmt::Display| {
                    StoreError::Tls(format!("store.ca_file: {}: {e}", file.display()))
                };
                let mut found = 0;
                for cert in CertificateDer::pem_file_iter(file).map_err(|e| tls_error(&e))? {
                    roots
                        .add(cert.map_err(|e| tls_error(&e))?)
                        .map_err(|e| tls_error(&e))?;
                    found += 1;
                }
                if found == 0 {
                    return Err(tls_error(&"holds no PEM certificate"));
                }
            }
        } else {
            config.ssl_mode(SslMode::Disable);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| StoreError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Target {
            config,
            tls: MakeRustlsConnect::new(tls),
        })
    }

    /// One connection of its own, outside any pool: the cluster's session, `xup check`.
    pub async fn connect(
        &self,
    ) -> Result<(tokio_postgres::Client, Connection), tokio_postgres::Error> {
        self.config.connect(self.tls.clone()).await
    }
}

/// The PostgreSQL engine. Cheap to clone.
#[derive(Clone)]
pub struct Postgres {
    pool: Pool,
}

impl Postgres {
    /// Connect to `target` with a pool of at most `pool_size` connections, and bring the schema
    /// up to date.
    pub async fn connect(target: &Target, pool_size: usize) -> Result<Postgres, StoreError> {
        let engine = Postgres {
            pool: pool(target, pool_size)?,
        };
        engine.migrate().await?;
        Ok(engine)
    }

    /// A pool of one, and no migration: for `xup status` beside running instances.
    pub async fn connect_to_read(target: &Target) -> Result<Postgres, StoreError> {
        Ok(Postgres {
            pool: pool(target, 1)?,
        })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|e| StoreError::Unreachable(with_causes(&e)))
    }

    /// Bring the database to [`SCHEMA_VERSION`]; refuse one from a newer xup.
    async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await?;
        transaction
            .execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        transaction
            .batch_execute("CREATE TABLE IF NOT EXISTS xup_schema (version INTEGER NOT NULL)")
            .await?;
        let found = transaction
            .query_opt("SELECT version FROM xup_schema", &[])
            .await?
            .map_or(0, |row| row.get::<_, i32>(0));
        let found = u32::try_from(found).unwrap_or(0);
        if found > SCHEMA_VERSION {
            return Err(StoreError::Newer {
                found,
                known: SCHEMA_VERSION,
            });
        }
        for step in &MIGRATIONS[found as usize..] {
            transaction.batch_execute(step).await?;
        }
        transaction.execute("DELETE FROM xup_schema", &[]).await?;
        transaction
            .execute(
                "INSERT INTO xup_schema (version) VALUES ($1)",
                &[&(SCHEMA_VERSION as i32)],
            )
            .await?;
        transaction.commit().await?;
        if found < SCHEMA_VERSION {
            tracing::info!(from = found, to = SCHEMA_VERSION, "store schema upgraded");
        }
        Ok(())
    }
}

/// A pool of at most `size` connections to `target`, each made or waited for within
/// [`POOL_WAIT`].
fn pool(target: &Target, size: usize) -> Result<Pool, StoreError> {
    let manager = Manager::from_config(
        target.config.clone(),
        target.tls.clone(),
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .wait_timeout(Some(POOL_WAIT))
        .create_timeout(Some(POOL_WAIT))
        .recycle_timeout(Some(POOL_WAIT))
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| StoreError::Unreachable(with_causes(&e)))
}

/// An error with every cause under it: "error performing TLS handshake" alone does not say that
/// the certificate was not trusted.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        let inner_text = inner.to_string();
        // Some errors repeat their cause's words in their own.
        if !text.ends_with(&inner_text) {
            text = format!("{text}: {inner_text}");
        }
        cause = inner.source();
    }
    text
}

/// Read the schema version of the database at `target` without changing anything.
pub async fn schema_at(target: &Target) -> Result<Schema, StoreError> {
    let (client, connection) = target.connect().await?;
    let connection = tokio::spawn(connection);
    let found = match client
        .query_one("SELECT to_regclass('xup_schema') IS NOT NULL", &[])
        .await?
        .get::<_, bool>(0)
    {
        false => None,
        true => client
            .query_opt("SELECT version FROM xup_schema", &[])
            .await?
            .map(|row| u32::try_from(row.get::<_, i32>(0)).unwrap_or(0)),
    };
    drop(client);
    let _ = connection.await;
    Ok(Schema::of(found))
}

/// How a revocation is announced on [`REVOKED_CHANNEL`].
pub fn revocation_notice(key: &RegistrationKey, revocation: Revocation) -> String {
    format!(
        "{} {} {}",
        key_to_hex(key),
        revocation.revoked_at_us,
        revocation.forget_at_us
    )
}

/// The key whose revocation a notice announces; `None` for anything xup did not write. The
/// times in it are not taken: the table is the authority.
pub fn parse_revocation_notice(notice: &str) -> Option<RegistrationKey> {
    let mut parts = notice.split(' ');
    let key = key_from_hex(parts.next()?)?;
    let _revoked_at_us: i64 = parts.next()?.parse().ok()?;
    let _forget_at_us: i64 = parts.next()?.parse().ok()?;
    parts.next().is_none().then_some(key)
}

/// Keep `revocation` of `key` (merged with any earlier one; `account`, when one asked for it) and
/// announce it, within `transaction`: the announcement goes out when, and only if, it commits.
async fn keep_revocation(
    transaction: &deadpool_postgres::Transaction<'_>,
    key: RegistrationKey,
    revocation: Revocation,
    account: Option<&str>,
) -> Result<(), StoreError> {
    let upsert = transaction
        .prepare_cached(
            "INSERT INTO revocations (registration, revoked_at_us, forget_at_us, account)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (registration) DO UPDATE SET
                 revoked_at_us = GREATEST(revocations.revoked_at_us, EXCLUDED.revoked_at_us),
                 forget_at_us = GREATEST(revocations.forget_at_us, EXCLUDED.forget_at_us),
                 account = COALESCE(EXCLUDED.account, revocations.account)",
        )
        .await?;
    transaction
        .execute(
            &upsert,
            &[
                &key.as_slice(),
                &revocation.revoked_at_us,
                &revocation.forget_at_us,
                &account,
            ],
        )
        .await?;
    transaction
        .execute(
            "SELECT pg_notify($1, $2)",
            &[&REVOKED_CHANNEL, &revocation_notice(&key, revocation)],
        )
        .await?;
    Ok(())
}

fn registration_of(bytes: Vec<u8>) -> Option<RegistrationKey> {
    RegistrationKey::try_from(bytes).ok()
}

fn count(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

#[async_trait::async_trait]
impl Engine for Postgres {
    async fn revocations(&self) -> Result<Vec<(RegistrationKey, Revocation)>, StoreError> {
        let client = self.client().await?;
        // Streamed, not `query`: a million rows collected first cost twice the memory of the
        // table xup keeps, at start-up, and the allocator keeps that peak for the process's life.
        let no_parameters: [&(dyn ToSql + Sync); 0] = [];
        let rows = client
            .query_raw(
                "SELECT registration, revoked_at_us, forget_at_us FROM revocations",
                no_parameters,
            )
            .await?;
        let mut rows = std::pin::pin!(rows);
        let mut kept = Vec::new();
        while let Some(row) = rows.try_next().await? {
            // Not a row xup wrote: skipped rather than fatal.
            if let Some(key) = registration_of(row.get(0)) {
                let revocation = Revocation {
                    revoked_at_us: row.get(1),
                    forget_at_us: row.get(2),
                };
                kept.push((key, revocation));
            }
        }
        Ok(kept)
    }

    async fn revocation(&self, key: RegistrationKey) -> Result<Option<Revocation>, StoreError> {
        let client = self.client().await?;
        let query = client
            .prepare_cached(
                "SELECT revoked_at_us, forget_at_us FROM revocations WHERE registration = $1",
            )
            .await?;
        let row = client.query_opt(&query, &[&key.as_slice()]).await?;
        Ok(row.map(|row| Revocation {
            revoked_at_us: row.get(0),
            forget_at_us: row.get(1),
        }))
    }

    async fn revoke_all(
        &self,
        revocations: Vec<(RegistrationKey, Revocation)>,
    ) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await?;
        for (key, revocation) in revocations {
            keep_revocation(&transaction, key, revocation, None).await?;
        }
        transaction.commit().await?;
        Ok(())
    }

    async fn revoke_within(
        &self,
        key: RegistrationKey,
        revocation: Revocation,
        account: &str,
        cap: usize,
    ) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await?;
        // One account's requests one after the other, so two at once cannot both pass the cap.
        transaction
            .execute(
                "SELECT pg_advisory_xact_lock($1, hashtext($2))",
                &[&ACCOUNT_LOCK, &account],
            )
            .await?;
        let kept: i64 = transaction
            .query_one(
                "SELECT COUNT(*) FROM revocations
                 WHERE account = $1 AND forget_at_us > $2 AND registration <> $3",
                &[&account, &revocation.revoked_at_us, &key.as_slice()],
            )
            .await?
            .get(0);
        if usize::try_from(kept).unwrap_or(usize::MAX) >= cap {
            return Ok(false);
        }
        keep_revocation(&transaction, key, revocation, Some(account)).await?;
        transaction.commit().await?;
        Ok(true)
    }

    async fn prune(&self, now_us: i64) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "DELETE FROM revocations WHERE forget_at_us <= $1",
                &[&now_us],
            )
            .await?;
        client
            .execute(
                "DELETE FROM registrations WHERE expires_at_us <= $1",
                &[&now_us],
            )
            .await?;
        client
            .execute(
                "DELETE FROM push_nodes WHERE expires_at_us <= $1",
                &[&now_us],
            )
            .await?;
        Ok(())
    }

    async fn series(&self, key: RegistrationKey) -> Result<Option<Series>, StoreError> {
        let client = self.client().await?;
        let query = client
            .prepare_cached(
                "SELECT account, issued_at_us, renewed_at_us, expires_at_us, kept
                 FROM registrations WHERE registration = $1",
            )
            .await?;
        let row = client.query_opt(&query, &[&key.as_slice()]).await?;
        Ok(row.map(|row| series_from(&row)))
    }

    async fn renew(
        &self,
        key: RegistrationKey,
        keep: Option<i64>,
        fresh: Series,
    ) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await?;
        let key = key.as_slice();
        let renewed = match keep {
            Some(issued_at_us) => {
                transaction
                    .execute(
                        "UPDATE registrations
                         SET renewed_at_us = $3, expires_at_us = GREATEST(expires_at_us, $4)
                         WHERE registration = $1 AND issued_at_us = $2 AND expires_at_us > $3",
                        &[
                            &key,
                            &issued_at_us,
                            &fresh.renewed_at_us,
                            &fresh.expires_at_us,
                        ],
                    )
                    .await?
                    == 1
            }
            None => false,
        };
        if !renewed {
            transaction
                .execute(
                    "INSERT INTO registrations
                     (registration, account, issued_at_us, renewed_at_us, expires_at_us, kept)
                     VALUES ($1, $2, $3, $4, $5, $6)
                     ON CONFLICT (registration) DO UPDATE SET
                         account = EXCLUDED.account,
                         issued_at_us = EXCLUDED.issued_at_us,
                         renewed_at_us = EXCLUDED.renewed_at_us,
                         expires_at_us = EXCLUDED.expires_at_us,
                         kept = EXCLUDED.kept",
                    &[
                        &key,
                        &fresh.account,
                        &fresh.issued_at_us,
                        &fresh.renewed_at_us,
                        &fresh.expires_at_us,
                        &fresh.kept,
                    ],
                )
                .await?;
        }
        transaction.commit().await?;
        Ok(renewed)
    }

    async fn series_of(
        &self,
        account: &str,
        now_us: i64,
        limit: usize,
    ) -> Result<Vec<(RegistrationKey, Series)>, StoreError> {
        let client = self.client().await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = client
            .query(
                "SELECT account, issued_at_us, renewed_at_us, expires_at_us, kept, registration
                 FROM registrations WHERE account = $1 AND expires_at_us > $2
                 ORDER BY issued_at_us LIMIT $3",
                &[&account, &now_us, &limit],
            )
            .await?;
        Ok(rows.iter().filter_map(keyed_series_from).collect())
    }

    async fn all_series(&self, now_us: i64) -> Result<Vec<(RegistrationKey, Series)>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT account, issued_at_us, renewed_at_us, expires_at_us, kept, registration
                 FROM registrations WHERE expires_at_us > $1",
                &[&now_us],
            )
            .await?;
        Ok(rows.iter().filter_map(keyed_series_from).collect())
    }

    async fn index_node(&self, account: &str, node: &PushNode) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO push_nodes (account, node_id, device_id, device_name, expires_at_us)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (account, node_id) DO UPDATE SET
                     device_id = EXCLUDED.device_id,
                     device_name = EXCLUDED.device_name,
                     expires_at_us = EXCLUDED.expires_at_us",
                &[
                    &account,
                    &node.node_id,
                    &node.device_id,
                    &node.device_name,
                    &micros(node.expires_at),
                ],
            )
            .await?;
        Ok(())
    }

    async fn nodes_of(&self, account: &str, now_us: i64) -> Result<Vec<PushNode>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT node_id, device_id, device_name, expires_at_us FROM push_nodes
                 WHERE account = $1 AND expires_at_us > $2 ORDER BY seq",
                &[&account, &now_us],
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|row| PushNode {
                node_id: row.get(0),
                device_id: row.get(1),
                device_name: row.get(2),
                expires_at: from_micros(row.get(3)),
            })
            .collect())
    }

    async fn unindex_node(&self, account: &str, node_id: &str) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "DELETE FROM push_nodes WHERE account = $1 AND node_id = $2",
                &[&account, &node_id],
            )
            .await?;
        Ok(())
    }

    async fn vapid_key(&self, generation: u32, fresh: Vec<u8>) -> Result<Vec<u8>, StoreError> {
        let generation = i32::try_from(generation).unwrap_or(i32::MAX);
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO vapid_keys (generation, secret) VALUES ($1, $2)
                 ON CONFLICT (generation) DO NOTHING",
                &[&generation, &fresh],
            )
            .await?;
        let row = client
            .query_one(
                "SELECT secret FROM vapid_keys WHERE generation = $1",
                &[&generation],
            )
            .await?;
        Ok(row.get(0))
    }

    async fn vapid_keys(&self) -> Result<Vec<(u32, Vec<u8>)>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query("SELECT generation, secret FROM vapid_keys", &[])
            .await?;
        Ok(rows
            .into_iter()
            .map(|row| (u32::try_from(row.get::<_, i32>(0)).unwrap_or(0), row.get(1)))
            .collect())
    }

    async fn all_nodes(&self, now_us: i64) -> Result<Vec<(String, PushNode)>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT account, node_id, device_id, device_name, expires_at_us FROM push_nodes
                 WHERE expires_at_us > $1 ORDER BY seq",
                &[&now_us],
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|row| {
                let node = PushNode {
                    node_id: row.get(1),
                    device_id: row.get(2),
                    device_name: row.get(3),
                    expires_at: from_micros(row.get(4)),
                };
                (row.get(0), node)
            })
            .collect())
    }

    async fn held_counts(&self) -> Result<Vec<HeldCount>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT subject, registration, COUNT(*) FROM held GROUP BY subject, registration",
                &[],
            )
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|row| {
                Some(HeldCount {
                    subject: row.get(0),
                    registration: registration_of(row.get(1))?,
                    count: usize::try_from(row.get::<_, i64>(2)).unwrap_or(0),
                })
            })
            .collect())
    }

    async fn held_in(&self, registration: RegistrationKey) -> Result<usize, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT COUNT(*) FROM held WHERE registration = $1",
                &[&registration.as_slice()],
            )
            .await?;
        Ok(usize::try_from(row.get::<_, i64>(0)).unwrap_or(0))
    }

    async fn hold_all(
        &self,
        messages: Vec<Message>,
        bounds: Bounds,
        mut total: usize,
    ) -> Result<Vec<Result<Held, HoldError>>, StoreError> {
        let mut client = self.client().await?;
        let mut transaction = client.transaction().await?;
        let mut outcomes = Vec::with_capacity(messages.len());
        for message in messages {
            let one = transaction.savepoint("hold").await?;
            let outcome = match hold_one(&one, message, bounds, total).await {
                Ok(Some(held)) => {
                    one.commit().await?;
                    total = (total + 1).saturating_sub(held.replaced + held.dropped);
                    Ok(held)
                }
                Ok(None) => {
                    one.rollback().await?;
                    Err(HoldError::Full)
                }
                Err(e) => {
                    one.rollback().await?;
                    Err(HoldError::Store(e.into()))
                }
            };
            outcomes.push(outcome);
        }
        transaction.commit().await?;
        Ok(outcomes)
    }

    async fn waiting_in(
        &self,
        registration: RegistrationKey,
        now_us: i64,
    ) -> Result<Vec<Message>, StoreError> {
        let client = self.client().await?;
        let query = client
            .prepare_cached(
                "SELECT id, subject, application, instance, body, topic, urgency, expires_at_us,
                        held_at_us
                 FROM held WHERE registration = $1 AND expires_at_us > $2 ORDER BY seq",
            )
            .await?;
        let rows = client
            .query(&query, &[&registration.as_slice(), &now_us])
            .await?;
        Ok(rows
            .into_iter()
            .map(|row| Message {
                id: row.get(0),
                subject: row.get(1),
                application: row.get(2),
                instance: row.get(3),
                body: row.get(4),
                topic: row.get(5),
                urgency: Urgency::parse(row.get(6)).unwrap_or_default(),
                expires_at: from_micros(row.get(7)),
                // Held before schema 3 kept the time: as old as can be.
                accepted_at: from_micros(row.get::<_, Option<i64>>(8).unwrap_or(0)),
            })
            .collect())
    }

    async fn is_held(&self, id: &str) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let query = client
            .prepare_cached("SELECT 1 FROM held WHERE id = $1")
            .await?;
        Ok(client.query_opt(&query, &[&id]).await?.is_some())
    }

    async fn remove_held(
        &self,
        id: &str,
        subject: &str,
    ) -> Result<Option<RegistrationKey>, StoreError> {
        let client = self.client().await?;
        let query = client
            .prepare_cached(
                "DELETE FROM held WHERE id = $1 AND subject = $2 RETURNING registration",
            )
            .await?;
        let row = client.query_opt(&query, &[&id, &subject]).await?;
        Ok(row.and_then(|row| registration_of(row.get(0))))
    }

    async fn drop_registration(&self, registration: RegistrationKey) -> Result<usize, StoreError> {
        let client = self.client().await?;
        let dropped = client
            .execute(
                "DELETE FROM held WHERE registration = $1",
                &[&registration.as_slice()],
            )
            .await?;
        Ok(count(dropped))
    }

    async fn drop_account(&self, account: &str) -> Result<usize, StoreError> {
        let client = self.client().await?;
        // `starts_with` rather than `LIKE`: exact, with no wildcards to escape.
        let dropped = client
            .execute(
                "DELETE FROM held WHERE starts_with(subject, $1)",
                &[&format!("{account}/")],
            )
            .await?;
        Ok(count(dropped))
    }

    async fn oldest_held_at(&self) -> Result<Option<i64>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one("SELECT MIN(held_at_us) FROM held", &[])
            .await?;
        Ok(row.get(0))
    }

    async fn size(&self) -> Result<u64, StoreError> {
        let client = self.client().await?;
        // xup's own tables with their indexes, not the whole database it may share.
        let row = client
            .query_one(
                "SELECT COALESCE(SUM(pg_total_relation_size(to_regclass(name))), 0)::BIGINT
                 FROM unnest(ARRAY['revocations', 'held', 'vapid_keys', 'push_nodes',
                                   'xup_schema']) AS tables (name)",
                &[],
            )
            .await?;
        Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
    }

    async fn prune_held(&self, now_us: i64) -> Result<Pruned, StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await?;
        let named = transaction
            .query(
                "SELECT subject, application, id FROM held WHERE expires_at_us <= $1
                 ORDER BY seq LIMIT $2",
                &[&now_us, &(PRUNED_NAMED as i64)],
            )
            .await?
            .iter()
            .map(|row| (row.get(0), row.get(1), row.get(2)))
            .collect();
        let pruned = transaction
            .execute("DELETE FROM held WHERE expires_at_us <= $1", &[&now_us])
            .await?;
        transaction.commit().await?;
        Ok(Pruned {
            count: count(pruned),
            named,
        })
    }
}

/// Hold one message within its savepoint: replace its topic, make room within its
/// registration's bound, and insert it, unless the store already holds `bounds.total` messages
/// (`None`; the caller rolls back).
async fn hold_one(
    transaction: &deadpool_postgres::Transaction<'_>,
    message: Message,
    bounds: Bounds,
    total: usize,
) -> Result<Option<Held>, tokio_postgres::Error> {
    let registration = message.registration();
    let registration = registration.as_slice();
    let mut held = Held::default();
    if let Some(topic) = &message.topic {
        let replace = transaction
            .prepare_cached("DELETE FROM held WHERE registration = $1 AND topic = $2")
            .await?;
        held.replaced = count(
            transaction
                .execute(&replace, &[&registration, topic])
                .await?,
        );
    }
    let mine = transaction
        .prepare_cached("SELECT COUNT(*) FROM held WHERE registration = $1")
        .await?;
    let mine: i64 = transaction.query_one(&mine, &[&registration]).await?.get(0);
    let mine = usize::try_from(mine).unwrap_or(0);
    if mine >= bounds.per_registration {
        let oldest = transaction
            .prepare_cached(
                "DELETE FROM held WHERE seq IN (SELECT seq FROM held
                     WHERE registration = $1 ORDER BY seq LIMIT $2)",
            )
            .await?;
        let excess = i64::try_from(mine + 1 - bounds.per_registration).unwrap_or(i64::MAX);
        held.dropped = count(
            transaction
                .execute(&oldest, &[&registration, &excess])
                .await?,
        );
    }
    if total.saturating_sub(held.replaced + held.dropped) >= bounds.total {
        return Ok(None);
    }
    let insert = transaction
        .prepare_cached(
            "INSERT INTO held (id, registration, subject, application, instance, topic,
                               urgency, body, expires_at_us, held_at_us)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .await?;
    transaction
        .execute(
            &insert,
            &[
                &message.id,
                &registration,
                &message.subject,
                &message.application,
                &message.instance,
                &message.topic,
                &message.urgency.as_str(),
                &message.body,
                &micros(message.expires_at),
                &micros(message.accepted_at),
            ],
        )
        .await?;
    Ok(Some(held))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revocation_notices_read_back_and_strangers_are_ignored() {
        let key = [0xa5; 32];
        let revocation = Revocation {
            revoked_at_us: 17,
            forget_at_us: 99,
        };
        let notice = revocation_notice(&key, revocation);
        assert_eq!(parse_revocation_notice(&notice), Some(key));
        for stranger in ["", "zz 1 2", &notice[2..], "é".repeat(32).as_str()] {
            assert_eq!(parse_revocation_notice(stranger), None, "{stranger:?}");
        }
    }
}
