//! `limits`: the rate limits, each a token bucket.

use std::{num::NonZeroU32, time::Duration};

use serde::Deserialize;

use crate::config::{ConfigError, duration, invalid};

/// Per endpoint: what FCM allows one device (240 a minute; about 5 000 an hour), and never less: a
/// burst of 240, then four a second (14 400 an hour). A busy Matrix room or a Mastodon thread
/// pushes a message per event, and a chat app must never meet this limit.
pub const DEFAULT_PER_ENDPOINT: (u32, Duration) = (240, Duration::from_millis(250));

/// Per sender address: generous, because one Matrix homeserver or Mastodon instance pushes for
/// thousands of users from one address. 500 a second, after a burst of 2000.
pub const DEFAULT_PER_ADDRESS: (u32, Duration) = (2000, Duration::from_millis(2));

/// Per sender address, tokens that fail to decrypt: a sender only ever has tokens xup issued, so
/// forgeries mean someone is guessing. 100, then one every 10 s.
pub const DEFAULT_FORGED_PER_ADDRESS: (u32, Duration) = (100, Duration::from_secs(10));

/// Per account, `<register>` requests: a distributor registering every app after a reinstall,
/// then one every 20 s.
pub const DEFAULT_REGISTRATIONS_PER_ACCOUNT: (u32, Duration) = (30, Duration::from_secs(20));

/// Per app-server node, XEP-0357 publishes: a busy chat wakes the phone once a message, and the
/// server coalesces; one a second after a burst of 60.
pub const DEFAULT_PUBLISHES_PER_NODE: (u32, Duration) = (60, Duration::from_secs(1));

/// Rate limits, each a token bucket: `burst` at once, then one more every `every`.
pub struct LimitsConfig {
    /// Pushes to one endpoint (one registration).
    pub per_endpoint: Rate,
    /// Requests from one sender address (an IPv4 address or an IPv6 /64).
    pub per_address: Rate,
    /// Tokens from one sender address that fail to decrypt.
    pub forged_tokens_per_address: Rate,
    /// `<register>` requests from one account (bare JID).
    pub registrations_per_account: Rate,
    /// XEP-0357 publishes to one app-server node.
    pub publishes_per_node: Rate,
    /// Application servers refused whatever they sign: the digests of their VAPID keys.
    pub blocked_vapid_keys: Vec<crate::vapid::KeyDigest>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub burst: NonZeroU32,
    /// Never zero.
    pub every: Duration,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub per_endpoint: Option<RawRate>,
    pub per_address: Option<RawRate>,
    pub forged_tokens_per_address: Option<RawRate>,
    pub registrations_per_account: Option<RawRate>,
    pub publishes_per_node: Option<RawRate>,
    pub blocked_vapid_keys: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRate {
    pub burst: u32,
    pub every: String,
}

pub(super) fn validate(limits: RawLimits) -> Result<LimitsConfig, ConfigError> {
    Ok(LimitsConfig {
        per_endpoint: rate(
            "limits.per_endpoint",
            limits.per_endpoint,
            DEFAULT_PER_ENDPOINT,
        )?,
        per_address: rate(
            "limits.per_address",
            limits.per_address,
            DEFAULT_PER_ADDRESS,
        )?,
        forged_tokens_per_address: rate(
            "limits.forged_tokens_per_address",
            limits.forged_tokens_per_address,
            DEFAULT_FORGED_PER_ADDRESS,
        )?,
        registrations_per_account: rate(
            "limits.registrations_per_account",
            limits.registrations_per_account,
            DEFAULT_REGISTRATIONS_PER_ACCOUNT,
        )?,
        publishes_per_node: rate(
            "limits.publishes_per_node",
            limits.publishes_per_node,
            DEFAULT_PUBLISHES_PER_NODE,
        )?,
        blocked_vapid_keys: limits
            .blocked_vapid_keys
            .unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(i, key)| {
                crate::vapid::key_digest(key.trim()).ok_or_else(|| {
                    invalid(
                        format!("limits.blocked_vapid_keys[{i}]"),
                        "expected an application server's VAPID public key as it sends it in \
                         k=: base64url of a P-256 point, 87 characters",
                    )
                })
            })
            .collect::<Result<_, _>>()?,
    })
}

fn rate(field: &str, raw: Option<RawRate>, default: (u32, Duration)) -> Result<Rate, ConfigError> {
    let (burst, every) = match raw {
        Some(raw) => (raw.burst, duration(&format!("{field}.every"), &raw.every)?),
        None => default,
    };
    let burst = NonZeroU32::new(burst)
        .ok_or_else(|| invalid(format!("{field}.burst"), "must be at least 1"))?;
    if every.is_zero() {
        return Err(invalid(format!("{field}.every"), "must be more than 0s"));
    }
    Ok(Rate { burst, every })
}
