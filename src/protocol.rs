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

/// How long an HTTP request waits for the client's answer to a push. Prosody's module waits 120 s,
/// which ties up application servers' workers for a phone that is simply asleep.
pub const DEFAULT_DELIVERY_TIMEOUT: Duration = Duration::from_secs(15);

/// What `Retry-After` says when a push could not be delivered now: long enough for a phone to wake
/// up or reconnect, short enough that a sender's retry still carries a fresh notification.
pub const RETRY_AFTER_SECS: u64 = 60;

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
