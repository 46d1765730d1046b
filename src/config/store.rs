//! `store`: where xup keeps what it remembers, SQLite in a directory or a PostgreSQL database.

use std::path::PathBuf;

use serde::Deserialize;

use crate::config::{ConfigError, invalid, secret};

/// Where xup keeps what it remembers (`store/`). Its `Debug` never shows the URL, which may
/// hold a password.
#[derive(Clone)]
pub enum StoreConfig {
    /// `store.path`: a directory; xup keeps its SQLite file inside. One instance.
    Sqlite { path: PathBuf },
    /// `store.url`: a PostgreSQL database, which several instances may share (`cluster/`);
    /// `ca_file` is trusted besides the system's roots when the URL asks for TLS.
    Postgres {
        url: String,
        pool_size: usize,
        ca_file: Option<PathBuf>,
    },
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl StoreConfig {
    /// The store in words for an operator: the directory, or PostgreSQL's host and database
    /// (never the URL, which may hold a password).
    pub fn describe(&self) -> String {
        match self {
            StoreConfig::Sqlite { path } => path.display().to_string(),
            StoreConfig::Postgres { url, .. } => {
                let Ok(config) = url.parse::<tokio_postgres::Config>() else {
                    return "PostgreSQL".into();
                };
                let hosts: Vec<String> = config
                    .get_hosts()
                    .iter()
                    .map(|host| match host {
                        tokio_postgres::config::Host::Tcp(name) => name.clone(),
                        tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
                    })
                    .collect();
                format!(
                    "PostgreSQL database {} on {}",
                    config.get_dbname().unwrap_or("(default)"),
                    hosts.join(",")
                )
            }
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    pub path: Option<PathBuf>,
    pub url: Option<String>,
    pub url_file: Option<PathBuf>,
    pub pool_size: Option<usize>,
    pub ca_file: Option<PathBuf>,
}

/// A PostgreSQL URL, which holds a password: a secret like the others.
const STORE_URL_ENV: &str = "XUP_STORE_URL";

/// Connections to PostgreSQL per instance, unless `store.pool_size` says otherwise.
const DEFAULT_POOL_SIZE: usize = 16;

/// `store.path` (SQLite) or `store.url` (PostgreSQL, also from `url_file` or the environment).
pub(super) fn validate(
    raw: RawStore,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<StoreConfig, ConfigError> {
    let from_env = env(STORE_URL_ENV);
    let url_given = raw.url.is_some() || raw.url_file.is_some() || from_env.is_some();
    if !url_given {
        for (field, given) in [
            ("store.pool_size", raw.pool_size.is_some()),
            ("store.ca_file", raw.ca_file.is_some()),
        ] {
            if given {
                return Err(invalid(
                    field,
                    "is for PostgreSQL: give store.url with it, or leave it out",
                ));
            }
        }
        return match raw.path {
            Some(path) if !path.as_os_str().is_empty() => Ok(StoreConfig::Sqlite { path }),
            _ => Err(invalid(
                "store.path",
                format!(
                    "must name a directory (or give store.url, or {STORE_URL_ENV}, for PostgreSQL)"
                ),
            )),
        };
    }
    if raw.path.is_some() {
        return Err(invalid(
            "store",
            "both store.path (SQLite) and store.url (PostgreSQL) are given; keep the one xup \
             should use",
        ));
    }
    let url = secret(
        "store.url",
        raw.url,
        raw.url_file.as_deref(),
        from_env,
        STORE_URL_ENV,
    )?;
    let parsed = url.parse::<tokio_postgres::Config>().map_err(|e| {
        invalid(
            "store.url",
            format!(
                "is not a PostgreSQL connection URL ({e}); write \
                 postgres://user:password@host/database"
            ),
        )
    })?;
    if let Some(file) = &raw.ca_file {
        if parsed.get_ssl_mode() != tokio_postgres::config::SslMode::Require {
            return Err(invalid(
                "store.ca_file",
                "is used only with TLS: add ?sslmode=require to store.url, or leave it out",
            ));
        }
        if let Err(e) = std::fs::File::open(file) {
            return Err(invalid(
                "store.ca_file",
                format!("cannot read {}: {e}", file.display()),
            ));
        }
    }
    let pool_size = raw.pool_size.unwrap_or(DEFAULT_POOL_SIZE);
    if pool_size == 0 {
        return Err(invalid("store.pool_size", "must be at least 1"));
    }
    Ok(StoreConfig::Postgres {
        url,
        pool_size,
        ca_file: raw.ca_file,
    })
}
