//! `delivery`: how long a sender waits, how long a message is held, how much is held, and how
//! often a held message is offered again.

use std::time::Duration;

use serde::Deserialize;

use crate::config::{ConfigError, duration, invalid};

/// How long a push waits for the client's answer at all. A later `result` still removes the held
/// copy; the sender is long gone by then (`DEFAULT_ANSWER_WITHIN`).
pub const DEFAULT_DELIVERY_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a sender waits for the client's verdict before it is answered anyway (`201`, the
/// message held). Mastodon's HTTP client gives up reading after 10 s and Sidekiq then retries the
/// job, so a sender kept waiting longer turns one silent phone into duplicate notifications; a
/// phone that is awake answers in well under a second.
pub const DEFAULT_ANSWER_WITHIN: Duration = Duration::from_secs(3);

/// How long a message is held for an unreachable client when the sender sent no `TTL`: RFC 8030
/// makes the header mandatory, but UnifiedPush application servers often omit it (a 400 would
/// lose their notifications), and a day covers a phone that is off overnight.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);

/// The longest xup holds any message, whatever the sender asks: a week-old notification is stale.
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Held messages per registration: a chat app's backlog after a weekend offline, not a mailbox.
pub const DEFAULT_MAX_HELD_PER_REGISTRATION: usize = 100;

/// Held messages in all, so a flood for phones that never come back cannot fill the disk.
pub const DEFAULT_MAX_HELD: usize = 100_000;

/// One account may hold at most this fraction (1/25: 4 %) of `delivery.max_held` unless told
/// otherwise: a flood for one user never fills what every other user's messages need.
pub const HELD_SHARE_OF_ACCOUNT: usize = 25;

/// One domain may hold at most half of `delivery.max_held` unless told otherwise, so a server
/// whose users all stay away (or one that registers for a domain it invents, under `allow: ["*"]`)
/// leaves room for the others. A provider for one domain alone raises it to `max_held`.
pub const HELD_SHARE_OF_DOMAIN: usize = 2;

/// The longest a held message that was not taken waits before it is offered again, and how often
/// every registration that is due is looked at.
pub const DEFAULT_RETRY_INTERVAL: Duration = Duration::from_secs(300);

/// Retries more often than this would mostly bounce off clients that are still offline.
const MIN_RETRY_INTERVAL: Duration = Duration::from_secs(10);

/// No HTTP request should wait longer than this for a phone; senders time out around here.
const MAX_DELIVERY_TIMEOUT: Duration = Duration::from_secs(120);

pub struct DeliveryConfig {
    /// How long a push waits for the client's answer before the sender is answered anyway (the
    /// message held, `201`); at most `timeout`.
    pub answer_within: Duration,
    /// How long the client's answer to a push is awaited at all; a later one still counts if it
    /// is a `result`.
    pub timeout: Duration,
    /// How long a message is held for an unreachable client when the sender gave no `TTL`.
    pub default_ttl: Duration,
    /// The longest a message is ever held, whatever the sender asked for.
    pub max_ttl: Duration,
    /// Held messages per registration; past it the oldest is dropped for the newest.
    pub max_held_per_registration: usize,
    /// Held messages in all; past it new ones are refused (`503`) rather than held.
    pub max_held: usize,
    /// Held messages for one account (bare JID), over all its resources and apps; past it, `503`.
    pub max_held_per_account: usize,
    /// Held messages for one domain's accounts; past it, `503`.
    pub max_held_per_domain: usize,
    /// The longest wait before a held message that was not taken is offered again (the wait
    /// starts at 30 s and doubles), and how often every registration that is due is looked at.
    pub retry_interval: Duration,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawDelivery {
    pub answer_within: Option<String>,
    pub timeout: Option<String>,
    pub default_ttl: Option<String>,
    pub max_ttl: Option<String>,
    pub max_held_per_registration: Option<usize>,
    pub max_held: Option<usize>,
    pub max_held_per_account: Option<usize>,
    pub max_held_per_domain: Option<usize>,
    pub retry_interval: Option<String>,
}

pub(super) fn validate(raw: RawDelivery) -> Result<DeliveryConfig, ConfigError> {
    let timeout = match &raw.timeout {
        Some(text) => duration("delivery.timeout", text)?,
        None => DEFAULT_DELIVERY_TIMEOUT,
    };
    if timeout.is_zero() || timeout > MAX_DELIVERY_TIMEOUT {
        return Err(invalid(
            "delivery.timeout",
            "must be more than 0s and at most 120s",
        ));
    }

    // Left out, it follows a shorter `timeout` down rather than make that config invalid.
    let answer_within = match &raw.answer_within {
        Some(text) => duration("delivery.answer_within", text)?,
        None => DEFAULT_ANSWER_WITHIN.min(timeout),
    };
    if answer_within.is_zero() || answer_within > timeout {
        return Err(invalid(
            "delivery.answer_within",
            "must be more than 0s and at most delivery.timeout",
        ));
    }

    let default_ttl = match &raw.default_ttl {
        Some(text) => duration("delivery.default_ttl", text)?,
        None => DEFAULT_TTL,
    };
    let max_ttl = match &raw.max_ttl {
        Some(text) => duration("delivery.max_ttl", text)?,
        None => DEFAULT_MAX_TTL,
    };
    if default_ttl > max_ttl {
        return Err(invalid(
            "delivery.default_ttl",
            "must not be longer than delivery.max_ttl",
        ));
    }
    let max_held_per_registration = raw
        .max_held_per_registration
        .unwrap_or(DEFAULT_MAX_HELD_PER_REGISTRATION);
    if max_held_per_registration == 0 {
        return Err(invalid(
            "delivery.max_held_per_registration",
            "must be at least 1 (set delivery.max_ttl to 0s to hold nothing)",
        ));
    }
    let max_held = raw.max_held.unwrap_or(DEFAULT_MAX_HELD);
    let share = |field: &str, given: Option<usize>, divisor: usize| match given {
        None => Ok((max_held / divisor).max(1)),
        Some(n) if (1..=max_held).contains(&n) => Ok(n),
        Some(_) => Err(invalid(
            field,
            "must be at least 1 and at most delivery.max_held",
        )),
    };
    let max_held_per_account = share(
        "delivery.max_held_per_account",
        raw.max_held_per_account,
        HELD_SHARE_OF_ACCOUNT,
    )?;
    let max_held_per_domain = share(
        "delivery.max_held_per_domain",
        raw.max_held_per_domain,
        HELD_SHARE_OF_DOMAIN,
    )?;
    let retry_interval = match &raw.retry_interval {
        Some(text) => duration("delivery.retry_interval", text)?,
        None => DEFAULT_RETRY_INTERVAL,
    };
    if retry_interval < MIN_RETRY_INTERVAL {
        return Err(invalid(
            "delivery.retry_interval",
            "must be at least 10s: every retry offers each waiting client a message",
        ));
    }

    Ok(DeliveryConfig {
        answer_within,
        timeout,
        default_ttl,
        max_ttl,
        max_held_per_registration,
        max_held,
        max_held_per_account,
        max_held_per_domain,
        retry_interval,
    })
}
