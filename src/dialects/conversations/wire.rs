//! The wire vocabulary of Daniel Gultsch's unified-push draft (Conversations and its forks): every
//! element this dialect reads or writes is a Rust type here, parsed and serialised by xso derives
//! the way xmpp-parsers does it for each XEP, so no other file touches its raw XML.

use xso::{AsXml, FromXml};

/// The namespace of Daniel Gultsch's unified-push draft, spoken by Conversations and its forks.
pub const NS: &str = "http://gultsch.de/xmpp/drafts/unified-push";

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
    /// The application server's VAPID public key (base64url, 87 characters), to bind the
    /// endpoint to (RFC 8292 §4; UnifiedPush AND_3's `vapid`). xup's own extension of the draft.
    #[xml(attribute(default))]
    pub vapid: Option<String>,
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
    /// The message's id, the same on every offer of it, so a client can drop one it has taken
    /// already (an offer whose `result` was lost with the link). xup's own; clients that do not
    /// know it ignore it (Conversations reads `application`, `instance` and the text only).
    #[xml(attribute(default))]
    pub id: Option<String>,
    /// RFC 8030 §5.3's `Urgency` (`very-low`, `low`, `high`), left out for `normal`; xup's own, and
    /// ignored like `id` by clients that do not know it.
    #[xml(attribute(default))]
    pub urgency: Option<String>,
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
            id: Some("p-1".into()),
            urgency: Some("high".into()),
            data: "AAEC/w==".into(),
        };
        let elem = Element::from(push.clone());
        assert_eq!(elem.text(), "AAEC/w==");
        assert_eq!(elem.attr("urgency"), Some("high"));
        assert_eq!(Push::try_from(elem).expect("parses"), push);
        let plain = Push {
            id: None,
            urgency: None,
            ..push
        };
        let elem = Element::from(plain);
        assert_eq!(elem.attr("urgency"), None, "normal is left out");
        assert_eq!(elem.attr("id"), None);
    }
}
