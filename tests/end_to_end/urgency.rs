//! RFC 8030 §5.3's `Urgency`, carried to the client and followed: a `<push>` says how urgent its
//! message is and names it the same way on every offer, and a client that asked (in its presence)
//! for only urgent messages gets nothing less urgent until it asks otherwise.
//!
//! "Not sent" is proven by order, as in `holding.rs`: a message pushed after the held one, and
//! urgent enough, must be the very next thing the client receives.

use std::time::{Duration, Instant};

use crate::harness::*;

#[tokio::test]
async fn a_push_says_its_urgency_and_keeps_its_id_on_every_offer() {
    let stack = Stack::start().await;
    let mut phone = stack.juliet("phone").await;
    let endpoint = phone.register(APP, INSTANCE).await.endpoint;

    let response = post_with(&endpoint, &[("Urgency", "high")], "urgent").await;
    assert_eq!(response.status(), 201);
    let push = phone.next_push().await;
    assert_eq!(push.urgency.as_deref(), Some("high"));
    assert_eq!(push.message_id.as_deref(), Some(push.id.as_str()));
    let location = response.headers()["location"].to_str().expect("ascii");
    assert_eq!(location, format!("/message/{}", push.id));

    // Normal is left out, as clients that know no urgency expect nothing there.
    post(&endpoint, "ordinary").await;
    assert_eq!(phone.next_push().await.urgency, None);

    // Not taken the first time: offered again later, under the same id.
    phone.answer_with("service-unavailable").await;
    let response = post_with(&endpoint, &[("Urgency", "low")], "again").await;
    assert_eq!(response.status(), 201);
    let first = phone.next_push().await;
    assert_eq!(first.urgency.as_deref(), Some("low"));
    phone.answer_with("result").await;
    phone.announce().await;
    let second = phone.next_push().await;
    assert_eq!(second.data, b"again");
    assert_eq!(second.message_id, first.message_id, "one message, one id");
    assert_eq!(second.urgency.as_deref(), Some("low"));
    assert_delivered(&endpoint, &mut phone, b"and nothing else").await;
}

#[tokio::test]
async fn below_the_minimum_a_message_is_held_until_the_client_lowers_it() {
    let stack = Stack::start().await;
    let mut phone = stack.juliet("phone").await;
    let endpoint = phone.register(APP, INSTANCE).await.endpoint;
    assert!(
        phone
            .disco_features()
            .await
            .contains(&"urn:xup:urgency:0".to_owned()),
        "the extension is advertised"
    );
    phone.announce_minimum_urgency("high").await;

    for (urgency, body) in [("normal", "normal one"), ("very-low", "very low one")] {
        let response = post_with(
            &endpoint,
            &[("Urgency", urgency), ("TTL", "600")],
            body.to_owned(),
        )
        .await;
        assert_eq!(response.status(), 201, "{body}");
        assert_eq!(
            response.headers()["ttl"],
            "600",
            "held, with its TTL: {body}"
        );
    }
    // An urgent message still goes through, before the held ones: they were not sent.
    let response = post_with(&endpoint, &[("Urgency", "high")], "urgent").await;
    assert_eq!(response.status(), 201);
    let push = phone.next_push().await;
    assert_eq!(push.data, b"urgent", "nothing less urgent came first");

    // A lower minimum lets the normal one out, still not the very-low one.
    phone.announce_minimum_urgency("normal").await;
    assert_eq!(phone.next_push().await.data, b"normal one");
    let response = post_with(&endpoint, &[("Urgency", "normal")], "next normal").await;
    assert_eq!(response.status(), 201);
    assert_eq!(
        phone.next_push().await.data,
        b"next normal",
        "the very-low one stays held"
    );

    // A presence without the element takes everything again.
    phone.announce().await;
    assert_eq!(phone.next_push().await.data, b"very low one");
    assert_delivered(&endpoint, &mut phone, b"and nothing else").await;
}

#[tokio::test]
async fn a_minimum_ends_with_the_session() {
    let stack = Stack::start().await;
    let mut phone = stack.juliet("phone").await;
    let endpoint = phone.register(APP, INSTANCE).await.endpoint;
    phone.announce_minimum_urgency("high").await;
    phone.leave(&stack.server).await;
    offline_count_becomes(&stack, 1.0).await;

    // The next session sends no presence at all; registering again says it is there, and xup
    // counts it online again. Had the minimum outlived the session, a normal message would be
    // held now.
    let mut phone = stack.juliet("phone").await;
    phone.register(APP, INSTANCE).await;
    offline_count_becomes(&stack, 0.0).await;
    assert_delivered(&endpoint, &mut phone, b"a normal message").await;
}

/// Wait, a bounded time, until xup counts `count` clients offline: it has acted on the presence
/// and the signs of life that came before.
async fn offline_count_becomes(stack: &Stack, count: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while stack.metric("xup_clients_known_offline").await != count {
        assert!(
            Instant::now() < deadline,
            "xup never counted {count} offline"
        );
        tokio::task::yield_now().await;
    }
}
