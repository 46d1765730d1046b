//! A phone is not one inbox: one app's stuck message never holds back another app of the same
//! phone, a client known to be offline costs no IQ, a sender never waits longer than
//! `delivery.answer_within`, and a phone that resumes its stream gets what waited, once.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::*;

/// Register juliet's phone for `APP` (the app that will misbehave) and the other app.
async fn phone_with_two_apps(stack: &Stack) -> (Peer, String, String) {
    let mut phone = stack.juliet("phone").await;
    let stuck = phone.register(APP, INSTANCE).await.endpoint;
    let healthy = phone.register(&other_app(), INSTANCE).await.endpoint;
    (phone, stuck, healthy)
}

/// A stack whose senders are answered after 1 s of a client's silence, and whose pushes stay in
/// flight until `timeout`.
async fn answering_within_a_second(timeout: &'static str) -> Stack {
    Stack::start_with(|s| {
        s.timeout = timeout;
        s.delivery = vec![("answer_within", json!("1s"))];
    })
    .await
}

/// `phone` answers again and announces itself, and what it gets next is a fresh push: nothing
/// was held for it any more.
async fn nothing_was_left_held(phone: &mut Peer, endpoint: &str) {
    phone.answer_with("result").await;
    phone.announce().await;
    assert_delivered(endpoint, phone, b"and nothing else").await;
}

/// The push `phone` receives next for `application`, skipping (and returning) others before it.
async fn next_push_for(phone: &mut Peer, application: &str) -> (ReceivedPush, Vec<ReceivedPush>) {
    let mut others = Vec::new();
    loop {
        let push = phone.next_push().await;
        if push.application == application {
            return (push, others);
        }
        others.push(push);
    }
}

#[tokio::test]
async fn an_app_that_never_answers_does_not_hold_back_another_app() {
    let stack = Stack::start_with(|s| s.timeout = "30s").await;
    let (mut phone, stuck, healthy) = phone_with_two_apps(&stack).await;
    phone.answer_for(APP, "silent").await;

    let response = post(&stuck, "never answered").await;
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["ttl"], "86400", "held");

    let posted = Instant::now();
    assert_eq!(post(&healthy, "for the other app").await.status(), 201);
    let (push, _) = next_push_for(&mut phone, &other_app()).await;
    assert_eq!(push.data, b"for the other app");
    assert!(
        posted.elapsed() < Duration::from_secs(2),
        "the other app's push arrived {:?} after its POST",
        posted.elapsed()
    );
}

#[tokio::test]
async fn an_apps_temporary_error_does_not_hold_back_twenty_pushes_to_another_app() {
    let stack = Stack::start().await;
    let (mut phone, stuck, healthy) = phone_with_two_apps(&stack).await;
    phone.answer_for(APP, "service-unavailable").await;
    assert_eq!(post(&stuck, "refused").await.status(), 201);
    assert_eq!(phone.next_push().await.data, b"refused", "offered once");

    let posted = Instant::now();
    let statuses = futures::future::join_all(
        (0..20).map(|i| post_with(&healthy, &[("TTL", "600")], format!("message {i}"))),
    )
    .await;
    for response in statuses {
        assert_eq!(response.status(), 201);
        assert_eq!(response.headers()["ttl"], "600");
    }
    let mut bodies = Vec::new();
    while bodies.len() < 20 {
        let (push, others) = next_push_for(&mut phone, &other_app()).await;
        assert!(
            others.is_empty(),
            "the refused app is not offered again yet"
        );
        bodies.push(String::from_utf8(push.data).expect("utf-8"));
    }
    assert!(
        posted.elapsed() < Duration::from_secs(2),
        "20 pushes took {:?} to arrive",
        posted.elapsed()
    );
    bodies.sort();
    let mut expected: Vec<String> = (0..20).map(|i| format!("message {i}")).collect();
    expected.sort();
    assert_eq!(bodies, expected, "each once");
}

#[tokio::test]
async fn a_client_known_offline_costs_no_iq_and_gets_its_messages_when_back() {
    let mut stack = Stack::start().await;
    let mut phone = stack.juliet("phone").await;
    let endpoint = phone.register(APP, INSTANCE).await.endpoint;
    phone.announce().await;
    stack.xup.wait_log("a client announced itself").await;
    phone.quit().await;
    // The server tells xup on the phone's behalf (RFC 6121 §4.6.3).
    stack.xup.wait_log("a client went offline").await;
    assert_eq!(stack.metric("xup_clients_known_offline").await, 1.0);

    let iqs = stack.metric("xup_push_iqs_sent_total").await;
    for body in ["one", "two"] {
        let response = post(&endpoint, body).await;
        assert_eq!(response.status(), 201);
        assert_eq!(response.headers()["ttl"], "86400");
    }
    assert_eq!(
        stack.metric("xup_push_iqs_sent_total").await,
        iqs,
        "no IQ left xup for a client known to be offline"
    );

    let mut phone = stack.juliet("phone").await;
    phone.announce().await;
    for body in ["one", "two"] {
        assert_eq!(phone.next_push().await.data, body.as_bytes());
    }
    assert_eq!(stack.metric("xup_clients_known_offline").await, 0.0);
    assert_delivered(&endpoint, &mut phone, b"and nothing else").await;
}

#[tokio::test]
async fn a_silent_client_is_answered_within_answer_within_and_a_late_result_counts() {
    let stack = answering_within_a_second("20s").await;
    let mut phone = stack.juliet("phone").await;
    let endpoint = phone.register(APP, INSTANCE).await.endpoint;
    phone.answer_late(Duration::from_secs(3)).await;

    let started = Instant::now();
    let response = post(&endpoint, "slow").await;
    let waited = started.elapsed();
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["ttl"], "86400", "held");
    assert!(
        waited >= Duration::from_secs(1) && waited < Duration::from_millis(1900),
        "201 once answer_within has passed, long before the answer: {waited:?}"
    );
    assert_eq!(
        stack.metric("xup_pushes_awaiting_answer").await,
        1.0,
        "still in flight, its answer 2 s away"
    );
    let push = phone.next_push().await;
    assert_eq!(push.data, b"slow");
    phone.answered(&push.id).await;

    // The late result removed the held copy.
    nothing_was_left_held(&mut phone, &endpoint).await;
}

#[tokio::test]
async fn ttl_zero_to_a_silent_client_is_answered_at_answer_within_and_not_kept() {
    let stack = answering_within_a_second("20s").await;
    let mut phone = stack.juliet("phone").await;
    let endpoint = phone.register(APP, INSTANCE).await.endpoint;
    phone.answer_with("silent").await;
    let started = Instant::now();
    let response = post_with(&endpoint, &[("TTL", "0")], "now or never").await;
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["ttl"], "0");
    assert!(started.elapsed() < Duration::from_millis(1900));
    assert_eq!(phone.next_push().await.data, b"now or never");
    nothing_was_left_held(&mut phone, &endpoint).await;
}

#[tokio::test]
async fn a_burst_to_a_slow_app_arrives_whole_once_its_answers_come() {
    let stack = answering_within_a_second("20s").await;
    let mut phone = stack.juliet("phone").await;
    let endpoint = phone.register(APP, INSTANCE).await.endpoint;
    // Every push is answered 1.5 s after it arrives: after the senders were answered (1 s).
    phone.answer_late(Duration::from_millis(1500)).await;
    let bodies: Vec<String> = (0..10).map(|i| format!("burst {i}")).collect();
    // The first six go out at once; the next four come once those are held, and wait behind them.
    for wave in [&bodies[..6], &bodies[6..]] {
        let responses = futures::future::join_all(wave.iter().map(|b| post(&endpoint, b.clone())));
        for response in responses.await {
            assert_eq!(response.status(), 201);
            assert_eq!(response.headers()["ttl"], "86400", "held");
        }
    }
    // No presence, no retry: the late answers alone bring out what waited, each once.
    let mut seen = Vec::new();
    while seen.len() < bodies.len() {
        let push = phone.next_push_within(Duration::from_secs(15)).await;
        seen.push(String::from_utf8(push.data).expect("utf-8"));
    }
    seen.sort();
    let mut expected = bodies.clone();
    expected.sort();
    assert_eq!(seen, expected, "each once");
    phone.answer_with("result").await;
    assert_delivered(&endpoint, &mut phone, b"and nothing else").await;
}

#[tokio::test]
async fn a_silent_client_that_comes_back_gets_the_message_once() {
    let stack = answering_within_a_second("3s").await;
    let mut phone = stack.juliet("phone").await;
    let endpoint = phone.register(APP, INSTANCE).await.endpoint;
    phone.answer_with("silent").await;
    assert_eq!(post(&endpoint, "waited").await.status(), 201);
    assert_eq!(phone.next_push().await.data, b"waited", "first offer");
    phone.quit().await;

    // A new session; while the first offer is still out, the message is not offered twice, and
    // once that offer has run out it goes out at once, not after a backoff.
    let mut phone = stack.juliet("phone").await;
    phone.announce().await;
    // Delivered after the first offer ran out.
    let push = phone.next_push_within(Duration::from_secs(10)).await;
    assert_eq!(push.data, b"waited");
    assert_delivered(&endpoint, &mut phone, b"and nothing else").await;
}

#[tokio::test]
async fn a_refused_registration_is_retried_on_its_own_schedule() {
    // retry_interval is far off, so only the registration's own backoff (30 s at first) brings
    // the message: no presence, no sign of life, no global retry.
    let stack = Stack::start_with(|s| s.delivery = vec![("retry_interval", json!("1h"))]).await;
    let mut phone = stack.juliet("phone").await;
    let endpoint = phone.register(APP, INSTANCE).await.endpoint;
    phone.answer_with("service-unavailable").await;
    assert_eq!(post(&endpoint, "retried").await.status(), 201);
    let first = phone.next_push().await;
    assert_eq!(first.data, b"retried");
    let refused = Instant::now();
    phone.answer_with("result").await;
    let again = phone.next_push_within(Duration::from_secs(45)).await;
    assert_eq!(again.data, b"retried");
    assert_eq!(again.id, first.id, "the same message, by the same IQ id");
    let waited = refused.elapsed();
    assert!(
        waited >= Duration::from_secs(25),
        "not before the backoff: {waited:?}"
    );
    assert_delivered(&endpoint, &mut phone, b"and nothing else").await;
}

#[tokio::test]
async fn a_resumed_stream_gets_what_waited_once_and_in_order_per_app() {
    let stack = answering_within_a_second("30s").await;
    let mut phone = Peer::connect_resumable(&stack.server, "juliet", DOMAIN, "phone").await;
    let first = phone.register(APP, INSTANCE).await.endpoint;
    let second = phone.register(&other_app(), INSTANCE).await.endpoint;
    phone.announce().await;

    phone.drop_connection().await;
    // Sent while the phone is away: its server keeps the session, and queues what comes for it.
    for (endpoint, body) in [
        (&first, "a1"),
        (&second, "b1"),
        (&first, "a2"),
        (&second, "b2"),
        (&first, "a3"),
    ] {
        let response = post(endpoint, body).await;
        assert_eq!(response.status(), 201, "{body}");
        assert_eq!(response.headers()["ttl"], "86400", "{body}");
    }

    phone.resume().await;
    let resumed = Instant::now();
    let mut per_app: [Vec<String>; 2] = Default::default();
    while per_app[0].len() + per_app[1].len() < 5 {
        // Everything arrives within 5 s of the resumption.
        let push = phone.next_push_within(Duration::from_secs(5)).await;
        let app = usize::from(push.application != APP);
        per_app[app].push(String::from_utf8(push.data).expect("utf-8"));
    }
    assert!(resumed.elapsed() < Duration::from_secs(5));
    assert_eq!(per_app[0], ["a1", "a2", "a3"]);
    assert_eq!(per_app[1], ["b1", "b2"]);
    // Exactly once: the next push is a fresh one, for either app.
    assert_delivered(&first, &mut phone, b"and nothing else").await;
    assert_delivered(&second, &mut phone, b"nor here").await;
}
