//! Which engine a config names, and opening it: for xup itself (the schema brought up to date),
//! and read-only for the operator's tools (`xup check`, `xup overview`). The only file that knows
//! both engines; the URL of a PostgreSQL store is parsed here, once per opening.

use std::sync::Arc;

use crate::{
    config::StoreConfig,
    store::{Engine, Schema, StoreError, postgres, sqlite},
};

/// Read the schema version of the store `config` names without creating or changing anything.
pub async fn schema_of(config: &StoreConfig) -> Result<Schema, StoreError> {
    match config {
        StoreConfig::Sqlite { path } => sqlite::schema_at(path),
        StoreConfig::Postgres { url, ca_file, .. } => {
            postgres::schema_at(&postgres::Target::new(url, ca_file.as_deref())?).await
        }
    }
}

/// The engine `config` names, to read only: nothing is created or changed, which makes it safe
/// beside a running xup. The schema must be this xup's.
pub async fn open_to_read(config: &StoreConfig) -> Result<Arc<dyn Engine>, StoreError> {
    match schema_of(config).await? {
        Schema::Current => {}
        other => return Err(StoreError::NotCurrent(other)),
    }
    Ok(match config {
        StoreConfig::Sqlite { path } => Arc::new(sqlite::Sqlite::open_to_read(path)?),
        StoreConfig::Postgres { url, ca_file, .. } => {
            let target = postgres::Target::new(url, ca_file.as_deref())?;
            Arc::new(postgres::Postgres::connect_to_read(&target).await?)
        }
    })
}

/// The engine `config` names, its schema brought up to date, and, with PostgreSQL, where the
/// database is (parsed here once; the cluster connects there too).
pub async fn open(config: &StoreConfig) -> Result<Opened, StoreError> {
    Ok(match config {
        StoreConfig::Sqlite { path } => Opened {
            engine: Arc::new(sqlite::Sqlite::open(path)?),
            shared: None,
        },
        StoreConfig::Postgres {
            url,
            pool_size,
            ca_file,
        } => {
            let target = postgres::Target::new(url, ca_file.as_deref())?;
            Opened {
                engine: Arc::new(postgres::Postgres::connect(&target, *pool_size).await?),
                shared: Some(target),
            }
        }
    })
}

/// An open store.
pub struct Opened {
    pub engine: Arc<dyn Engine>,
    /// The PostgreSQL database that several instances may share; `None` for SQLite, which one
    /// instance has to itself.
    pub shared: Option<postgres::Target>,
}
