//! Messages for clients that cannot take them now are held and delivered later, once each, in
//! order, within their TTL, whatever happens to xup in between.
//!
//! "Nothing else arrived" is proven by order: after the messages a client must get, a fresh one is
//! pushed, and it must be the very next thing the client receives.

use std::time::{Duration, Instant};

use crate::harness::*;
use serde_json::json;

/// Register juliet's phone, then take it offline; returns the endpoint.
async fn offline_phone(stack: &Stack) -> String {
    let mut phone = stack.juliet("phone").await;
    let endpoint = phone.register(APP, INSTANCE).await.endpoint;
    phone.quit().await;
    endpoint
}

/// Bring juliet's phone back and announce it to xup, as Conversations does.
async fn phone_back(stack: &Stack) -> Peer {
    let mut phone = stack.juliet("phone").await;
    phone.announce().await;
    phone
}

/// POST `body` and check it was accepted and kept for `ttl` seconds.
async fn accepted(endpoint: &str, headers: &[(&str, &str)], body: &str, ttl: &str) {
    let response = post_with(endpoint, headers, body.to_owned()).await;
    assert_eq!(response.status(), 201, "{body}");
    assert_eq!(response.headers()["ttl"], ttl, "{body}");
}

/// The next pushes `phone` receives are exactly `bodies`, in order, and nothing else after them.
async fn receives_exactly(phone: &mut Peer, endpoint: &str, bodies: &[&str]) {
    for body in bodies {
        assert_eq!(
            String::from_utf8(phone.next_push().await.data).expect("utf-8"),
            *body
        );
    }
    assert_delivered(endpoint, phone, b"and nothing else").await;
}

#[tokio::test]
async fn an_offline_client_gets_its_messages_in_order_once_it_announces_itself() {
    let stack = Stack::start_with(|s| s.timeout = "15s").await;
    let endpoint = offline_phone(&stack).await;
    let started = Instant::now();
    accepted(&endpoint, &[], "one", "86400").await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the server's bounce is the answer, not the 15 s timeout: {:?}",
        started.elapsed()
    );
    accepted(&endpoint, &[], "two", "86400").await;
    accepted(&endpoint, &[("TTL", "600")], "three", "600").await;

    let mut phone = phone_back(&stack).await;
    receives_exactly(&mut phone, &endpoint, &["one", "two", "three"]).await;
}

#[tokio::test]
async fn a_temporary_error_holds_the_message_until_the_client_can_take_it() {
    let stack = Stack::start().await;
    let mut phone = stack.juliet("phone").await;
    let endpoint = phone.register(APP, INSTANCE).await.endpoint;
    phone.answer_with("service-unavailable").await;
    accepted(&endpoint, &[], "later", "86400").await;
    assert_eq!(
        phone.next_push().await.data,
        b"later",
        "it was offered once"
    );

    phone.answer_with("result").await;
    phone.announce().await;
    receives_exactly(&mut phone, &endpoint, &["later"]).await;
}

#[tokio::test]
async fn a_new_message_waits_behind_the_held_ones() {
    let stack = Stack::start().await;
    let mut phone = stack.juliet("phone").await;
    let endpoint = phone.register(APP, INSTANCE).await.endpoint;
    phone.answer_with("service-unavailable").await;
    accepted(&endpoint, &[], "first", "86400").await;
    assert_eq!(phone.next_push().await.data, b"first");
    phone.answer_with("result").await;
    // The client is reachable again, yet "second" must not overtake "first".
    accepted(&endpoint, &[], "second", "86400").await;
    receives_exactly(&mut phone, &endpoint, &["first", "second"]).await;
}

#[tokio::test]
async fn a_late_result_removes_the_held_copy() {
    let stack = Stack::start_with(|s| s.timeout = "1s").await;
    let mut phone = stack.juliet("phone").await;
    let endpoint = phone.register(APP, INSTANCE).await.endpoint;
    phone.answer_late(Duration::from_millis(2500)).await;
    let started = Instant::now();
    accepted(&endpoint, &[], "slow", "86400").await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(1) && waited < Duration::from_secs(2),
        "201 once delivery.timeout has passed: {waited:?}"
    );
    let push = phone.next_push().await;
    assert_eq!(push.data, b"slow");
    phone.answered(&push.id).await;

    // Were the held copy still there, announcing would bring it again.
    phone.answer_with("result").await;
    phone.announce().await;
    receives_exactly(&mut phone, &endpoint, &[]).await;
}

#[tokio::test]
async fn ttl_zero_is_now_or_never_and_ttls_are_capped() {
    let stack = Stack::start_with(|s| {
        s.delivery = vec![("max_ttl", json!("1h")), ("default_ttl", json!("30m"))]
    })
    .await;
    let endpoint = offline_phone(&stack).await;
    accepted(&endpoint, &[("TTL", "0")], "now or never", "0").await;
    accepted(&endpoint, &[("TTL", "999999999999")], "capped", "3600").await;
    accepted(&endpoint, &[], "default", "1800").await;

    let mut phone = phone_back(&stack).await;
    receives_exactly(&mut phone, &endpoint, &["capped", "default"]).await;
}

#[tokio::test]
async fn malformed_rfc8030_headers_are_400_and_name_the_header() {
    let stack = Stack::start().await;
    let mut phone = stack.juliet("phone").await;
    let endpoint = phone.register(APP, INSTANCE).await.endpoint;
    for (name, value) in [
        ("TTL", "-1"),
        ("TTL", "1.5"),
        ("TTL", "soon"),
        ("Topic", "has spaces"),
        ("Topic", "thirty-three-characters-long-topic"),
        ("Urgency", "urgent"),
    ] {
        let response = post_with(&endpoint, &[(name, value)], "x").await;
        assert_eq!(response.status(), 400, "{name}: {value}");
        let text = response.text().await.expect("body");
        assert!(text.starts_with(name), "{name}: {value} -> {text}");
    }
    assert_delivered(&endpoint, &mut phone, b"good headers still work").await;
}

#[tokio::test]
async fn an_expired_message_is_never_delivered() {
    let stack = Stack::start().await;
    let endpoint = offline_phone(&stack).await;
    accepted(&endpoint, &[("TTL", "1")], "short-lived", "1").await;
    // The feature under test is time itself: the TTL has to run out.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut phone = phone_back(&stack).await;
    receives_exactly(&mut phone, &endpoint, &[]).await;
}

#[tokio::test]
async fn a_newer_message_with_the_same_topic_replaces_the_held_one() {
    let stack = Stack::start().await;
    let endpoint = offline_phone(&stack).await;
    accepted(&endpoint, &[("Topic", "inbox")], "3 unread", "86400").await;
    accepted(&endpoint, &[("Urgency", "high")], "call", "86400").await;
    accepted(&endpoint, &[("Topic", "inbox")], "4 unread", "86400").await;
    let mut phone = phone_back(&stack).await;
    receives_exactly(&mut phone, &endpoint, &["call", "4 unread"]).await;
}

#[tokio::test]
async fn past_its_bound_a_registration_keeps_its_newest_messages() {
    let stack =
        Stack::start_with(|s| s.delivery = vec![("max_held_per_registration", json!(2))]).await;
    let endpoint = offline_phone(&stack).await;
    for body in ["a", "b", "c"] {
        accepted(&endpoint, &[], body, "86400").await;
    }
    let mut phone = phone_back(&stack).await;
    receives_exactly(&mut phone, &endpoint, &["b", "c"]).await;
}

#[tokio::test]
async fn a_full_store_answers_503_and_keeps_what_it_has() {
    let stack = Stack::start_with(|s| s.delivery = vec![("max_held", json!(2))]).await;
    let endpoint = offline_phone(&stack).await;
    accepted(&endpoint, &[], "kept", "86400").await;
    accepted(&endpoint, &[], "kept too", "86400").await;
    let response = post(&endpoint, "no room").await;
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    // A message that could be delivered at once needs no room.
    accepted(&endpoint, &[("TTL", "0")], "no room either", "0").await;
    let mut phone = phone_back(&stack).await;
    receives_exactly(&mut phone, &endpoint, &["kept", "kept too"]).await;
}

#[tokio::test]
async fn held_messages_survive_kill_9() {
    let mut stack = Stack::start().await;
    let endpoint = offline_phone(&stack).await;
    for body in ["1", "2", "3"] {
        accepted(&endpoint, &[], body, "86400").await;
    }
    stack.xup.kill().await;
    stack.xup = Xup::start(xup_binary(), &stack.prosody, &stack.settings).await;
    let mut phone = phone_back(&stack).await;
    receives_exactly(&mut phone, &endpoint, &["1", "2", "3"]).await;
}

#[tokio::test]
async fn a_gone_app_takes_its_held_messages_with_it() {
    let mut stack = Stack::start().await;
    let endpoint = offline_phone(&stack).await;
    accepted(&endpoint, &[], "first", "86400").await;
    accepted(&endpoint, &[], "second", "86400").await;
    let mut phone = stack.juliet("phone").await;
    phone.answer_with("item-not-found").await;
    phone.announce().await;
    assert_eq!(phone.next_push().await.data, b"first");
    stack.xup.wait_log("endpoint revoked by its client").await;
    phone.answer_with("result").await;
    assert_eq!(post(&endpoint, "after").await.status(), 404);
    let other = phone.register(&other_app(), INSTANCE).await.endpoint;
    // "second" was dropped with the registration: the other app's push comes next.
    assert_delivered(&other, &mut phone, b"for the other app").await;
}
