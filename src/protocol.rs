//! The wire vocabulary of the unified-push XMPP draft and the protocol constants xup lives by.
//!
//! Every element xup reads or writes on the XMPP side is a Rust type here, parsed and serialised by
//! xso derives the way xmpp-parsers does it for each XEP, so no other module touches raw XML. The
//! numbers that the outside world holds us to (body size, URL length, lifetimes) live here too,
//! each with the reason it has that value.

use std::time::Duration;

use xso::{AsXml, FromXml};

/// The namespace of Daniel Gultsch's unified-push draft, spoken by Conversations and its forks.
pub const NS: &str = "http://gultsch.de/xmpp/drafts/unified-push";

/// RFC 8030 and the UnifiedPush server spec both cap a push message at 4096 bytes; a larger one is
/// refused with 413, never truncated (a truncated encrypted payload is garbage to the app).
pub const MAX_BODY: usize = 4096;

/// UnifiedPush (AND_3.0.0) lets distributors reject endpoint URLs longer than this.
pub const MAX_ENDPOINT_LEN: usize = 1000;

/// Conversations renews an endpoint once less than 24 h remain, checking hourly; anything at or
/// below a day would re-register (and change the URL) every hour, so two days is the floor.
pub const MIN_LIFETIME: Duration = Duration::from_secs(2 * 24 * 3600);

/// A week, as the Java `up` provider uses: few renewals, and a revocation is remembered at most this long.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

/// The longest the Java `up` made its endpoints live (a day in its first releases, a week since):
/// the tokens it issued are honoured until they expire, so their revocations are kept this long.
pub const LEGACY_UP_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

/// How long a push waits for the client's answer at all. A later `result` still removes the held
/// copy; the sender is long gone by then (`DEFAULT_ANSWER_WITHIN`).
pub const DEFAULT_DELIVERY_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a sender waits for the client's verdict before it is answered anyway (`201`, the
/// message held). Mastodon's HTTP client gives up reading after 10 s and Sidekiq then retries the
/// job, so a sender kept waiting longer turns one silent phone into duplicate notifications; a
/// phone that is awake answers in well under a second.
pub const DEFAULT_ANSWER_WITHIN: Duration = Duration::from_secs(3);

/// What `Retry-After` says when a push could not be delivered now: long enough for a phone to wake
/// up or reconnect, short enough that a sender's retry still carries a fresh notification.
pub const RETRY_AFTER_SECS: u64 = 60;

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

/// Open HTTP connections at once. Each costs a file descriptor and hyper's buffers (about 16 KB
/// over HTTP/1.1); systemd's default soft limit on descriptors is 1024.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1000;

/// One address may hold at most this fraction (1/10) of `http.max_connections` unless told
/// otherwise: a busy homeserver needs a few connections (HTTP/2 multiplexes), and no one address
/// can take them all.
pub const CONNECTION_SHARE_OF_ADDRESS: usize = 10;

/// Pushes waiting for a client's answer at once: each keeps its body and a request's state (about
/// 6 KB over HTTP/2, see docs/BENCHMARKS.md), so this bounds the memory a slow client population
/// can pin. Past it a push gets `503` with `Retry-After`.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 10_000;

/// How long a connection may take to send a request's head, and how long an idle HTTP/1.1
/// connection is kept open between requests.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a request may take to send its body (at most 4096 bytes).
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(10);

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

/// How long an app-server node lives. Clients do not renew a node (p2 and mod_push nodes live
/// forever); a month bounds what a leaked node is worth, and a client that enables push at each
/// login registers again long before.
pub const DEFAULT_NODE_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);

/// RFC 8030 §5.4: a `Topic` is at most 32 characters of the URL-safe base64 alphabet.
pub const MAX_TOPIC_LEN: usize = 32;

/// RFC 8030 §5.3 `Urgency`. Stored with a held message and reported; `<push>` has no attribute
/// to carry it to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Urgency {
    VeryLow,
    Low,
    #[default]
    Normal,
    High,
}

impl Urgency {
    pub fn as_str(self) -> &'static str {
        match self {
            Urgency::VeryLow => "very-low",
            Urgency::Low => "low",
            Urgency::Normal => "normal",
            Urgency::High => "high",
        }
    }

    pub fn parse(text: &str) -> Option<Urgency> {
        [
            Urgency::VeryLow,
            Urgency::Low,
            Urgency::Normal,
            Urgency::High,
        ]
        .into_iter()
        .find(|u| u.as_str() == text)
    }
}

/// RFC 8030 §5.2 `TTL`: delta-seconds, digits only.
pub fn parse_ttl(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // More digits than fit mean "a very long time", which the cap shortens anyway.
    Some(text.parse().unwrap_or(u64::MAX))
}

/// RFC 8030 §5.4 `Topic`: 1 to 32 characters of the URL-safe base64 alphabet.
pub fn is_topic(text: &str) -> bool {
    (1..=MAX_TOPIC_LEN).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `application` and `instance` are padded standard base64 of a SHA-256 digest.
pub const DIGEST_B64_LEN: usize = 44;

/// A client asks for an endpoint for one app instance.
#[derive(FromXml, AsXml, Debug, Clone, PartialEq)]
#[xml(namespace = NS, name = "register")]
pub struct Register {
    #[xml(attribute)]
    pub application: String,
    #[xml(attribute)]
    pub instance: String,
}

/// xup's answer to [`Register`]: where to POST, and until when.
#[derive(FromXml, AsXml, Debug, Clone, PartialEq)]
#[xml(namespace = NS, name = "registered")]
pub struct Registered {
    /// RFC 3339 in UTC ending in a literal `Z`: Conversations drops `+00:00`.
    #[xml(attribute)]
    pub expiration: String,
    #[xml(attribute)]
    pub endpoint: String,
}

/// One push message, relayed to the full JID that registered.
#[derive(FromXml, AsXml, Debug, Clone, PartialEq)]
#[xml(namespace = NS, name = "push")]
pub struct Push {
    #[xml(attribute)]
    pub application: String,
    #[xml(attribute)]
    pub instance: String,
    /// Standard base64 of the HTTP body, on one line.
    #[xml(text)]
    pub data: String,
}

/// sum7's "UnifiedPush over XMPP" (its Go gateway and Linux D-Bus distributor): the client names
/// each registration by a public token of its own, and pushes arrive as `<message>`s.
// xso's derive converts each extracted text `String` into itself, which clippy flags.
#[allow(clippy::useless_conversion)]
pub mod sum7 {
    use xso::{AsXml, FromXml};

    pub const NS: &str = "unifiedpush.org";

    /// The longest public token accepted. The distributor sends a UUID (36 characters); the token
    /// travels inside the endpoint, which must stay under [`super::MAX_ENDPOINT_LEN`].
    pub const MAX_TOKEN_LEN: usize = 256;

    /// `<register><token>PUBLIC</token></register>`: an endpoint for one app of the distributor.
    #[derive(FromXml, AsXml, Debug, Clone, PartialEq)]
    #[xml(namespace = NS, name = "register")]
    pub struct Register {
        #[xml(extract(default, name = "token", fields(text)))]
        pub token: String,
    }

    /// The answer to [`Register`]: `<register><endpoint>URL</endpoint></register>`.
    #[derive(FromXml, AsXml, Debug, Clone, PartialEq)]
    #[xml(namespace = NS, name = "register")]
    pub struct Registered {
        #[xml(extract(name = "endpoint", fields(text)))]
        pub endpoint: String,
    }

    /// Inside a refusal of [`Register`], beside the stanza error: `<register><error>why</error>`,
    /// which is all sum7's distributor reads.
    #[derive(FromXml, AsXml, Debug, Clone, PartialEq)]
    #[xml(namespace = NS, name = "register")]
    pub struct Refused {
        #[xml(extract(name = "error", fields(text)))]
        pub error: String,
    }

    /// `<unregister><token>PUBLIC</token></unregister>`: every endpoint of that app is revoked.
    #[derive(FromXml, AsXml, Debug, Clone, PartialEq)]
    #[xml(namespace = NS, name = "unregister")]
    pub struct Unregister {
        #[xml(extract(default, name = "token", fields(text)))]
        pub token: String,
    }

    /// Inside a refusal of [`Unregister`], beside the stanza error.
    #[derive(FromXml, AsXml, Debug, Clone, PartialEq)]
    #[xml(namespace = NS, name = "unregister")]
    pub struct UnregisterRefused {
        #[xml(extract(name = "error", fields(text)))]
        pub error: String,
    }

    /// The answer to [`Unregister`]: `<unregister><success/></unregister>`.
    #[derive(FromXml, AsXml, Debug, Clone, PartialEq)]
    #[xml(namespace = NS, name = "unregister")]
    pub struct Unregistered {
        #[xml(child)]
        pub success: Success,
    }

    #[derive(FromXml, AsXml, Debug, Clone, PartialEq, Default)]
    #[xml(namespace = NS, name = "success")]
    pub struct Success;
}

/// XEP-0050 ad-hoc commands, as far as the app server's commands use them.
pub mod commands {
    use xmpp_parsers::data_forms::DataForm;
    use xso::{AsXml, FromXml};

    pub const NS: &str = "http://jabber.org/protocol/commands";

    /// A command request (`action` `execute`, `complete` or none, maybe with a submitted form), or
    /// its answer (`status`, maybe with a result form).
    #[derive(FromXml, AsXml, Debug, Clone, PartialEq)]
    #[xml(namespace = NS, name = "command")]
    pub struct Command {
        #[xml(attribute)]
        pub node: String,
        #[xml(attribute(default))]
        pub action: Option<String>,
        #[xml(attribute(default, name = "sessionid"))]
        pub session_id: Option<String>,
        #[xml(attribute(default))]
        pub status: Option<String>,
        #[xml(child(default))]
        pub form: Option<DataForm>,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xmpp_parsers::minidom::Element;

    #[test]
    fn register_round_trips() {
        let xml = format!("<register xmlns='{NS}' application='a' instance='i'/>");
        let elem: Element = xml.parse().expect("valid xml");
        let register = Register::try_from(elem.clone()).expect("parses");
        assert_eq!(register.application, "a");
        assert_eq!(register.instance, "i");
        assert_eq!(Element::from(register), elem);
    }

    #[test]
    fn register_without_instance_is_refused() {
        let elem: Element = format!("<register xmlns='{NS}' application='a'/>")
            .parse()
            .expect("valid xml");
        assert!(Register::try_from(elem).is_err());
    }

    #[test]
    fn registered_round_trips() {
        let registered = Registered {
            expiration: "2026-11-29T12:54:54.036Z".into(),
            endpoint: "https://up.example.org/push/v4.local.x".into(),
        };
        let elem = Element::from(registered.clone());
        assert_eq!(elem.attr("expiration"), Some("2026-11-29T12:54:54.036Z"));
        assert_eq!(Registered::try_from(elem).expect("parses"), registered);
    }

    #[test]
    fn push_round_trips_with_text() {
        let push = Push {
            application: "a".into(),
            instance: "i".into(),
            data: "AAEC/w==".into(),
        };
        let elem = Element::from(push.clone());
        assert_eq!(elem.text(), "AAEC/w==");
        assert_eq!(Push::try_from(elem).expect("parses"), push);
    }
}

#[cfg(test)]
mod header_tests {
    use super::*;

    #[test]
    fn ttl_is_digits_only_and_saturates() {
        assert_eq!(parse_ttl("0"), Some(0));
        assert_eq!(parse_ttl("86400"), Some(86400));
        assert_eq!(parse_ttl("99999999999999999999999"), Some(u64::MAX));
        for bad in ["", "-1", "1.5", " 60", "60s", "abc"] {
            assert_eq!(parse_ttl(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn topics_are_short_url_safe_base64() {
        assert!(is_topic("new-mail_42"));
        assert!(is_topic(&"a".repeat(32)));
        for bad in ["", "has space", "slash/", "plus+", "pad=", &"a".repeat(33)] {
            assert!(!is_topic(bad), "{bad:?}");
        }
    }

    #[test]
    fn urgency_has_four_words() {
        for u in [
            Urgency::VeryLow,
            Urgency::Low,
            Urgency::Normal,
            Urgency::High,
        ] {
            assert_eq!(Urgency::parse(u.as_str()), Some(u));
        }
        assert_eq!(Urgency::parse("urgent"), None);
        assert_eq!(Urgency::parse("HIGH"), None);
    }
}
