//! What a push message is, whichever door it came in by and whichever dialect carries it: the
//! sender's request (body, `TTL`, `Topic`, `Urgency`) and the bounds RFC 8030 and UnifiedPush put
//! on it. Knows no transport: the doors fill a [`Request`], the dialects carry it, the store keeps
//! its [`Urgency`] with a held message.

use std::time::Instant;

/// RFC 8030 and the UnifiedPush server spec both cap a push message at 4096 bytes; a larger one is
/// refused with 413, never truncated (a truncated encrypted payload is garbage to the app).
pub const MAX_BODY: usize = 4096;

/// RFC 8030 §5.4: a `Topic` is at most 32 characters of the URL-safe base64 alphabet.
pub const MAX_TOPIC_LEN: usize = 32;

/// RFC 8030 §5.3 `Urgency`, least urgent first (the order compares them). Stored with a held
/// message, carried to the client on `<push urgency=…>`, and held back from a client that asked
/// for a higher minimum (`xmpp/presence.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
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

/// What a sender asks for one message, from the request's body and headers.
pub struct Request {
    pub body: Vec<u8>,
    /// `TTL` in seconds; `None` when the sender gave none.
    pub ttl: Option<u64>,
    pub topic: Option<String>,
    pub urgency: Urgency,
    /// When xup began to handle the request: `delivery.answer_within` counts from then.
    pub received: Instant,
    /// The contact (`sub`) of the application server that signed the push with VAPID, if it
    /// did and said one: for the user's own diagnostics.
    pub sender: Option<String>,
}

#[cfg(test)]
mod tests {
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
