//! `xup copy-store`: everything one store keeps, written into another, so an operator can move
//! from the embedded SQLite file to PostgreSQL (and several instances, `docs/SCALING.md`) without
//! reviving a revoked endpoint or losing a held message.
//!
//! Revocations merge with whatever the target has; held messages keep their ids and their order
//! per registration (a message already in the target is counted, not copied twice); VAPID keys are
//! kept where the target has none for that generation, and a different one there is reported, since
//! the subscriptions made with the source's key would break. Registrations (stable endpoints) take
//! the place of the target's for the same key. Expired entries are left behind.

use std::time::SystemTime;

use super::{Engine, StoreError, micros};
use crate::store::{Bounds, HoldError};

/// Revocations written in one transaction: a million is a hundred syncs, and no batch holds the
/// target's write lock for long.
const REVOCATIONS_AT_ONCE: usize = 10_000;

/// What a copy wrote.
#[derive(Debug, Default, PartialEq)]
pub struct Copied {
    pub revocations: usize,
    pub held: usize,
    /// Held messages the target already had (same id).
    pub held_already: usize,
    pub vapid_keys: usize,
    /// Generations whose VAPID key differs in the target, which keeps its own.
    pub vapid_conflicts: Vec<u32>,
    pub nodes: usize,
    /// Registrations whose endpoint stays the same when renewed.
    pub registrations: usize,
}

/// Copy what `from` keeps into `to`. Run it while no xup uses `from`, or what changes meanwhile
/// may be missed.
pub async fn copy(from: &dyn Engine, to: &dyn Engine) -> Result<Copied, StoreError> {
    let now_us = micros(SystemTime::now());
    let mut copied = Copied::default();
    let live: Vec<_> = from
        .revocations()
        .await?
        .into_iter()
        .filter(|(_, revocation)| revocation.forget_at_us > now_us)
        .collect();
    for batch in live.chunks(REVOCATIONS_AT_ONCE) {
        to.revoke_all(batch.to_vec()).await?;
        copied.revocations += batch.len();
    }
    // The source's bounds were enforced when the messages came; the copy takes them all.
    let unbounded = Bounds::only(usize::MAX, usize::MAX);
    for count in from.held_counts().await? {
        let mut messages = Vec::new();
        for message in from.waiting_in(count.registration, now_us).await? {
            match to.is_held(&message.id).await? {
                true => copied.held_already += 1,
                false => messages.push(message),
            }
        }
        for outcome in to.hold_all(messages, unbounded, 0).await? {
            match outcome {
                Ok(_) => copied.held += 1,
                Err(HoldError::Store(e)) => return Err(e),
                // Not with these bounds (the engine checks no account or domain bound).
                Err(HoldError::Full | HoldError::OwnerFull(_)) => {}
            }
        }
    }
    for (generation, secret) in from.vapid_keys().await? {
        if to.vapid_key(generation, secret.clone()).await? == secret {
            copied.vapid_keys += 1;
        } else {
            copied.vapid_conflicts.push(generation);
        }
    }
    for (account, node) in from.all_nodes(now_us).await? {
        to.index_node(&account, &node).await?;
        copied.nodes += 1;
    }
    // Without them, every renewed endpoint would die at the end of its first lifetime.
    for (key, series) in from.all_series(now_us).await? {
        to.renew(key, None, series).await?;
        copied.registrations += 1;
    }
    Ok(copied)
}
