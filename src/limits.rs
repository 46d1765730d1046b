//! Rate limits: how much one endpoint, one sender address and one account may ask of xup, and
//! who the sender of an HTTP request is (behind trusted proxies).
//!
//! Each limit is a token bucket per key (GCRA, from `governor`): `burst` requests at once, then one
//! more every `every`. A request over its limit is refused at once with the time until it would
//! be allowed, which becomes `Retry-After` on HTTP (`429`) and the text of a `resource-constraint`
//! IQ error on XMPP. Nothing is queued. Buckets that have filled up again are forgotten every
//! minute, so the memory a limit holds follows the number of keys active in the last minutes,
//! not every address ever seen.

use std::{
    collections::HashMap,
    hash::Hash,
    net::{IpAddr, Ipv6Addr},
    sync::Mutex,
    time::{Duration, Instant},
};

use axum::http::HeaderMap;
use ipnet::IpNet;

use governor::{
    DefaultKeyedRateLimiter, Quota, RateLimiter,
    clock::{Clock, DefaultClock},
};
use xmpp_parsers::jid::BareJid;

use crate::{
    config::{LimitsConfig, Rate},
    metrics::{self, METRICS},
    store::RegistrationKey,
    vapid::KeyDigest,
};

/// How often buckets that are full again are dropped.
pub const FORGET_INTERVAL: Duration = Duration::from_secs(60);

/// Every rate limit xup keeps.
pub struct Limits {
    /// Pushes per registration (every token of it shares one bucket).
    pub per_endpoint: Limiter<RegistrationKey>,
    /// Requests per sender, keyed by [`address_key`].
    pub per_address: Limiter<IpAddr>,
    /// Tokens that fail to decrypt, and VAPID signatures that fail to verify, per sender.
    pub forged_tokens: Limiter<IpAddr>,
    /// Pushes per application server that signed them (RFC 8292), by its key's digest: in place
    /// of its address's limit, with the same quota.
    pub per_vapid_key: Limiter<KeyDigest>,
    /// `<register>` requests per account.
    pub registrations: Limiter<BareJid>,
    /// XEP-0357 publishes per app-server node (by its id).
    pub publishes: Limiter<String>,
}

impl Limits {
    pub fn new(config: &LimitsConfig) -> Limits {
        Limits {
            per_endpoint: Limiter::new(metrics::Limit::PerEndpoint, config.per_endpoint),
            per_address: Limiter::new(metrics::Limit::PerAddress, config.per_address),
            per_vapid_key: Limiter::new(metrics::Limit::PerVapidKey, config.per_address),
            forged_tokens: Limiter::new(
                metrics::Limit::ForgedTokens,
                config.forged_tokens_per_address,
            ),
            registrations: Limiter::new(
                metrics::Limit::Registrations,
                config.registrations_per_account,
            ),
            publishes: Limiter::new(metrics::Limit::Publishes, config.publishes_per_node),
        }
    }

    /// Drop every bucket that is full again: a key seen now and then costs nothing between visits.
    pub fn forget_idle(&self) {
        self.per_endpoint.forget_idle();
        self.per_address.forget_idle();
        self.per_vapid_key.forget_idle();
        self.forged_tokens.forget_idle();
        self.registrations.forget_idle();
        self.publishes.forget_idle();
    }
}

/// One keyed limit.
pub struct Limiter<K: Hash + Eq + Clone> {
    /// Which limit this is, for the metrics.
    limit: metrics::Limit,
    buckets: DefaultKeyedRateLimiter<K>,
    /// Keys refused lately, and until when: so that costly work (a signature to verify) can be
    /// turned away before it is done. As many as the keys over their limit now.
    refused: Mutex<HashMap<K, Instant>>,
}

impl<K: Hash + Eq + Clone> Limiter<K> {
    pub fn new(limit: metrics::Limit, rate: Rate) -> Limiter<K> {
        // `every` is never zero (config validation), so the fallback is never taken.
        let quota = Quota::with_period(rate.every)
            .unwrap_or_else(|| Quota::per_second(rate.burst))
            .allow_burst(rate.burst);
        Limiter {
            limit,
            buckets: RateLimiter::keyed(quota),
            refused: Mutex::default(),
        }
    }

    /// Take one request from `key`'s bucket, or say how long until one is there.
    pub fn check(&self, key: &K) -> Result<(), RetryAfter> {
        self.buckets.check_key(key).map_err(|not_until| {
            METRICS.rate_limited(self.limit);
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            let mut refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
            refused.insert(key.clone(), Instant::now() + wait);
            RetryAfter(wait)
        })
    }

    /// How long `key` still waits, if it was refused lately, without taking from its bucket.
    pub fn refusing(&self, key: &K) -> Option<RetryAfter> {
        let refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        let wait = refused.get(key)?.checked_duration_since(Instant::now())?;
        Some(RetryAfter(wait))
    }

    fn forget_idle(&self) {
        self.buckets.retain_recent();
        self.buckets.shrink_to_fit();
        let now = Instant::now();
        let mut refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        refused.retain(|_, until| *until > now);
        refused.shrink_to_fit();
    }
}

/// How long a refused caller should wait before it is allowed again.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryAfter(pub Duration);

impl RetryAfter {
    /// Whole seconds, rounded up and at least 1, as `Retry-After` takes them.
    pub fn secs(self) -> u64 {
        let secs = self.0.as_secs() + u64::from(self.0.subsec_nanos() > 0);
        secs.max(1)
    }
}

/// The key a sender is limited by: an IPv4 address, or the /64 an IPv6 address is in, because a
/// single host is routinely given a whole /64 and could otherwise pick a fresh address per request.
pub fn address_key(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(v6.to_bits() & !u128::from(u64::MAX))),
        },
    }
}

/// Who sent a request: the peer, or, when the peer is a trusted proxy, the nearest address in
/// `X-Forwarded-For` that is not itself a trusted proxy. Entries further left were written by the
/// sender and are not believed; an entry that is not an address ends the walk.
pub fn sender_address(peer: IpAddr, headers: &HeaderMap, trusted_proxies: &[IpNet]) -> IpAddr {
    let trusted = |ip: &IpAddr| trusted_proxies.iter().any(|net| net.contains(ip));
    let mut sender = peer.to_canonical();
    if !trusted(&sender) {
        return sender;
    }
    let forwarded: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .collect();
    for entry in forwarded.iter().rev() {
        let Ok(ip) = entry.trim().parse::<IpAddr>() else {
            break;
        };
        sender = ip.to_canonical();
        if !trusted(&sender) {
            break;
        }
    }
    sender
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;

    fn rate(burst: u32, every: Duration) -> Rate {
        Rate {
            burst: NonZeroU32::new(burst).expect("non-zero"),
            every,
        }
    }

    #[test]
    fn a_burst_is_allowed_then_refused_with_the_wait() {
        let limiter = Limiter::new(
            metrics::Limit::PerEndpoint,
            rate(3, Duration::from_secs(10)),
        );
        for _ in 0..3 {
            assert_eq!(limiter.check(&1), Ok(()));
        }
        let wait = limiter.check(&1).expect_err("over the burst");
        assert!(
            wait.0 > Duration::from_secs(9) && wait.secs() <= 10,
            "{wait:?}"
        );
        assert_eq!(limiter.check(&2), Ok(()), "another key has its own bucket");
    }

    #[test]
    fn retry_after_rounds_up_to_a_whole_second() {
        assert_eq!(RetryAfter(Duration::from_millis(1)).secs(), 1);
        assert_eq!(RetryAfter(Duration::from_millis(1500)).secs(), 2);
        assert_eq!(RetryAfter(Duration::from_secs(3)).secs(), 3);
        assert_eq!(RetryAfter(Duration::ZERO).secs(), 1);
    }

    #[test]
    fn ipv6_senders_are_limited_by_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().expect("ip");
        let c: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().expect("ip");
        assert_eq!(
            address_key(mapped),
            "192.0.2.7".parse::<IpAddr>().expect("ip")
        );
    }
}

#[cfg(test)]
mod sender_tests {
    use super::*;
    use axum::http::{HeaderMap, HeaderValue};

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    fn forwarded(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_str(value).expect("value"),
        );
        headers
    }

    #[test]
    fn forwarded_for_is_believed_only_from_a_trusted_proxy() {
        let proxies = [
            "127.0.0.1/32".parse().expect("net"),
            "10.0.0.0/8".parse().expect("net"),
        ];
        let headers = forwarded("203.0.113.9");
        assert_eq!(
            sender_address(ip("127.0.0.1"), &headers, &proxies),
            ip("203.0.113.9")
        );
        assert_eq!(
            sender_address(ip("198.51.100.1"), &headers, &proxies),
            ip("198.51.100.1")
        );
        assert_eq!(
            sender_address(ip("127.0.0.1"), &HeaderMap::new(), &proxies),
            ip("127.0.0.1"),
            "a proxy that sends no header is the sender"
        );
    }

    #[test]
    fn the_nearest_untrusted_hop_is_the_sender_and_what_it_wrote_is_ignored() {
        let proxies = [
            "127.0.0.1/32".parse().expect("net"),
            "10.0.0.0/8".parse().expect("net"),
        ];
        // The sender claims 192.0.2.1; 203.0.113.9 reached the outer proxy 10.0.0.5.
        let headers = forwarded("192.0.2.1, 203.0.113.9, 10.0.0.5");
        assert_eq!(
            sender_address(ip("127.0.0.1"), &headers, &proxies),
            ip("203.0.113.9")
        );
        let headers = forwarded("garbage, 10.0.0.5");
        assert_eq!(
            sender_address(ip("127.0.0.1"), &headers, &proxies),
            ip("10.0.0.5")
        );
        assert_eq!(
            sender_address(ip("::ffff:127.0.0.1"), &forwarded("203.0.113.9"), &proxies),
            ip("203.0.113.9"),
            "an IPv4 peer on an IPv6 socket is still the trusted proxy"
        );
    }
}
