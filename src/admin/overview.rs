//! `xup status`: what an operator asks first of what xup holds, read from the store while xup
//! runs (nothing is written), in words or as JSON for scripts.
//!
//! Registrations are counted, never named: the overview shows how many registrations hold how
//! many messages, not whose they are. Key ids are the ones tokens' footers carry, derived from the
//! secrets and telling nothing about them.

use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::{
    config::{Config, StoreConfig},
    store::{self, StoreError, from_micros},
    token::KeyRing,
};

/// How registrations are grouped by the messages they hold: up to each bound, and past the last.
const BUCKETS: [(usize, &str); 5] = [
    (1, "1"),
    (5, "2-5"),
    (20, "6-20"),
    (100, "21-100"),
    (usize::MAX, "over 100"),
];

#[derive(Debug, thiserror::Error)]
pub enum OverviewError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("registration.secrets: {0}")]
    Keys(#[from] crate::token::TokenError),
}

/// Everything `xup status` reports.
#[derive(Debug, Serialize)]
pub struct Overview {
    pub store: StoreOverview,
    pub held: HeldOverview,
    /// Revocations kept: each keeps a revoked endpoint dead until it would have expired.
    pub revocations: usize,
    pub keys: KeysOverview,
}

#[derive(Debug, Serialize)]
pub struct StoreOverview {
    pub engine: &'static str,
    /// The directory, or PostgreSQL's database and host (never the URL).
    pub location: String,
    pub size_bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct HeldOverview {
    pub total: usize,
    /// How long the oldest held message has waited; `None` when nothing is held (or only
    /// messages from before xup kept the time).
    pub oldest_seconds: Option<u64>,
    /// Registrations by how many messages they hold, in the order of [`BUCKETS`].
    pub registrations_holding: Vec<Bucket>,
}

/// How many registrations hold a number of messages in a range.
#[derive(Debug, Serialize)]
pub struct Bucket {
    /// The range, e.g. `"2-5"`.
    pub messages: &'static str,
    pub registrations: usize,
}

#[derive(Debug, Serialize)]
pub struct KeysOverview {
    /// Every key id that opens endpoints, the issuing one first.
    pub ids: Vec<String>,
    /// The key id new endpoints are sealed with.
    pub issuing: String,
}

/// Read the overview of what the xup configured by `config` holds.
pub async fn gather(config: &Config) -> Result<Overview, OverviewError> {
    let engine = store::engines::open_to_read(&config.store).await?;
    let counts = engine.held_counts().await?;
    let mut registrations_holding: Vec<Bucket> = BUCKETS
        .iter()
        .map(|(_, messages)| Bucket {
            messages,
            registrations: 0,
        })
        .collect();
    for count in &counts {
        if let Some(bucket) = BUCKETS.iter().position(|(bound, _)| count.count <= *bound) {
            registrations_holding[bucket].registrations += 1;
        }
    }
    let oldest_seconds = engine.oldest_held_at().await?.map(|held_at| {
        SystemTime::now()
            .duration_since(from_micros(held_at))
            .unwrap_or(Duration::ZERO)
            .as_secs()
    });
    let keys = KeyRing::new(&config.registration.secrets, config.component.jid.as_str())?;
    let ids: Vec<String> = keys.key_ids().into_iter().map(str::to_owned).collect();
    Ok(Overview {
        store: StoreOverview {
            engine: match config.store {
                StoreConfig::Sqlite { .. } => "sqlite",
                StoreConfig::Postgres { .. } => "postgresql",
            },
            location: config.store.describe(),
            size_bytes: engine.size().await?,
        },
        held: HeldOverview {
            total: counts.iter().map(|c| c.count).sum(),
            oldest_seconds,
            registrations_holding,
        },
        revocations: engine.revocations().await?.len(),
        keys: KeysOverview {
            issuing: ids.first().cloned().unwrap_or_default(),
            ids,
        },
    })
}

impl Overview {
    /// The overview in words, a line or a few per subject.
    pub fn text(&self) -> String {
        let held = &self.held;
        let oldest = match held.oldest_seconds {
            Some(seconds) => format!(
                ", the oldest for {}",
                humantime::format_duration(Duration::from_secs(seconds))
            ),
            None => String::new(),
        };
        let histogram: Vec<String> = held
            .registrations_holding
            .iter()
            .filter(|bucket| bucket.registrations > 0)
            .map(|bucket| format!("{} holding {}", bucket.registrations, bucket.messages))
            .collect();
        let mut text = format!(
            "store: {} ({}), {} bytes\n",
            self.store.location, self.store.engine, self.store.size_bytes
        );
        text += &format!("held messages: {}{oldest}\n", held.total);
        if !histogram.is_empty() {
            text += &format!("  registrations: {}\n", histogram.join(", "));
        }
        text += &format!("revocations kept: {}\n", self.revocations);
        text += &format!(
            "endpoint keys: {} (new endpoints: {})\n",
            self.keys.ids.join(", "),
            self.keys.issuing
        );
        text
    }
}
