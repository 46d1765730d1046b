//! Properties over any JID RFC 7622 allows: its token opens to exactly what was sealed, and its
//! endpoint is at most 1000 bytes or refused, never cut.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use proptest::prelude::*;
use xmpp_parsers::{jid::Jid, minidom::Element};
use xup::{
    config::Config,
    dialects::conversations::{register::register, wire::Register},
    limits::Limits,
    registrar::{MAX_ENDPOINT_LEN, RegisterError, Registrar},
    store::{Store, sqlite::Sqlite},
    token::{KeyRing, claims_for},
};

const APP: &str = "bK3sdmrbtj3bf6XA2S12b8jJUA5TT1dhPEyeoZfVSRM=";
const INS: &str = "EtD/1XPLmoIph7W73CZ/uyv6FAnhEAXY1GySHX17vAw=";
const COMPONENT: &str = "up.example.org";

/// RFC 7622 §3: each part of a JID is at most 1023 bytes.
const MAX_PART: usize = 1023;

/// Characters of every width, none of them forbidden in a localpart.
fn part_char() -> impl Strategy<Value = char> {
    prop_oneof![
        proptest::char::range('a', 'z'),
        proptest::char::range('0', '9'),
        Just('.'),
        Just('-'),
        proptest::char::range('à', 'ÿ'),
        proptest::char::range('α', 'ω'),
        proptest::char::range('一', '龥'),
    ]
}

/// A resource may also hold what a localpart may not, JSON's own quote and backslash included.
fn resource_char() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => part_char(),
        1 => prop_oneof![Just('"'), Just('\\'), Just(' '), Just('/'), Just('@'), Just('<'), Just('&')],
    ]
}

/// Up to `max_chars` of `chars`, cut to at most [`MAX_PART`] bytes.
fn part(chars: impl Strategy<Value = char>, max_chars: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(chars, 1..=max_chars).prop_map(|chars| {
        let mut text = String::new();
        for c in chars {
            if text.len() + c.len_utf8() > MAX_PART {
                break;
            }
            text.push(c);
        }
        text
    })
}

/// Domains of one to many labels, up to the 1023-byte limit.
fn domain() -> impl Strategy<Value = String> {
    let labels = prop_oneof![
        proptest::collection::vec("[a-z0-9]{1,10}", 1..=3),
        proptest::collection::vec("[a-z0-9]{1,63}", 1..=20),
    ];
    labels.prop_map(|labels| {
        let mut domain = labels.join(".");
        domain.truncate(MAX_PART);
        domain.trim_end_matches('.').to_owned()
    })
}

/// Full JIDs, short and long, that the JID parser accepts.
fn full_jid() -> impl Strategy<Value = Jid> {
    // Short parts too, or nearly every endpoint would be too long and the round trip through
    // registration would rarely be taken.
    let local = prop_oneof![part(part_char(), 12), part(part_char(), MAX_PART)];
    let resource = prop_oneof![part(resource_char(), 12), part(resource_char(), MAX_PART)];
    (local, domain(), resource).prop_filter_map(
        "the JID parser refuses some strings (e.g. after normalisation)",
        |(local, domain, resource)| {
            Jid::new(&format!("{local}@{domain}/{resource}"))
                .ok()
                .filter(|jid| jid.resource().is_some())
        },
    )
}

/// A registrar on a store in a fresh directory, which lives as long as the returned one, and the
/// runtime its registrations run on.
fn registrar() -> (
    Registrar,
    Arc<KeyRing>,
    tokio::runtime::Runtime,
    tempfile::TempDir,
) {
    let config = Config::parse(&format!(
        r#"{{
          "component":    {{ "jid": "{COMPONENT}", "secret": "s" }},
          "http":         {{ "listen": "127.0.0.1:8080", "public_url": "https://up.example.org" }},
          "registration": {{ "secrets": ["0123456789abcdef"], "allow": ["*"] }},
          "limits":       {{ "registrations_per_account": {{ "burst": 4000000000, "every": "1ms" }} }},
          "store":        {{ "path": "/nonexistent" }}
        }}"#
    ))
    .expect("config");
    let keys = Arc::new(KeyRing::new(&config.registration.secrets, COMPONENT).expect("keys"));
    let limits = Arc::new(Limits::new(&config.limits));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Sqlite::open(dir.path()).expect("sqlite");
    let store = runtime
        .block_on(Store::new(Arc::new(engine)))
        .expect("store");
    let registrar = Registrar::new(&config, keys.clone(), limits, Arc::new(store));
    (registrar, keys, runtime, dir)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(100))]

    #[test]
    fn a_token_opens_to_exactly_what_was_sealed(jid in full_jid()) {
        let (_, keys, _, _) = registrar();
        // Whole seconds: a token keeps its times to the microsecond or millisecond, not below.
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(
            SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).expect("after 1970").as_secs(),
        );
        let claims = claims_for(jid.as_str(), APP, INS, now, Duration::from_secs(7 * 86400));
        let token = keys.issue(&claims).expect("issued");
        prop_assert_eq!(keys.open(&token, now).expect("opened"), claims);
    }

    #[test]
    fn an_endpoint_is_at_most_1000_bytes_or_refused(jid in full_jid()) {
        let (registrar, keys, runtime, _dir) = registrar();
        let request = Element::from(Register { application: APP.into(), instance: INS.into(), vapid: None });
        match runtime.block_on(register(&registrar, Some(&jid), request, SystemTime::now())) {
            Ok(registered) => {
                prop_assert!(registered.endpoint.len() <= MAX_ENDPOINT_LEN);
                let token = registered.endpoint.rsplit('/').next().expect("a token");
                let claims = keys.open(token, SystemTime::now()).expect("opened");
                prop_assert_eq!(claims.subject, jid.to_string());
            }
            Err(e) => prop_assert_eq!(e, RegisterError::EndpointTooLong),
        }
    }
}

#[test]
fn tokens_of_one_registration_are_unlinkable() {
    // Two endpoints for the same JID, app and instance, issued in the same microsecond, share
    // nothing but the fixed prefix and the key id: a sender holding both cannot tell they are
    // one user's without the key.
    let (_, keys, _, _) = registrar();
    let now = SystemTime::now();
    let claims = claims_for(
        "juliet@example.org/phone",
        APP,
        INS,
        now,
        Duration::from_secs(60),
    );
    let a = keys.issue(&claims).expect("issued");
    let b = keys.issue(&claims).expect("issued");
    let body = |t: &str| t["v4.local.".len()..t.rfind('.').expect("footer")].to_owned();
    let (a, b) = (body(&a), body(&b));
    assert_ne!(a, b);
    let common = a
        .as_bytes()
        .windows(8)
        .filter(|w| b.as_bytes().windows(8).any(|v| v == *w))
        .count();
    assert_eq!(
        common, 0,
        "the two ciphertexts share {common} 8-character runs"
    );
}
