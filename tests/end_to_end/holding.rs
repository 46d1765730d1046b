//! Messages for clients that cannot take them now are held and delivered later, once each, in
//! order, within their TTL, whatever happens to xup in between.
//!
//! "Nothing else arrived" is proven by order: after the messages a client must get, a fresh one is
//! pushed, and it must be the very next thing the client receives.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use serde_json::json;
use tokio::{sync::watch, time::timeout};

use crate::harness::*;

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
    // The app takes messages again, yet "second" must not overtake "first": it is held behind it,
    // and both go out, in order, once the client is heard of.
    accepted(&endpoint, &[], "second", "86400").await;
    phone.announce().await;
    receives_exactly(&mut phone, &endpoint, &["first", "second"]).await;
}

#[tokio::test]
async fn a_late_result_removes_the_held_copy() {
    let stack = Stack::start_with(|s| s.timeout = "1s").await;
    let mut phone = stack.juliet("phone").await;
    let endpoint = phone.register(APP, INSTANCE).await.endpoint;
    phone.answer_late(Duration::from_secs(4)).await;
    let started = Instant::now();
    accepted(&endpoint, &[], "slow", "86400").await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(1) && waited < Duration::from_secs(3),
        "201 once delivery.timeout has passed, before the answer: {waited:?}"
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
    let stack = Stack::start_with(|s| {
        s.delivery = vec![
            ("max_held", json!(2)),
            ("max_held_per_account", json!(2)),
            ("max_held_per_domain", json!(2)),
        ]
    })
    .await;
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

/// One account, then one domain, that holds all it may is refused with `503`; everyone else's
/// messages are still held.
#[tokio::test]
async fn a_full_account_or_domain_answers_503_and_others_are_still_held() {
    let stack = Stack::start_with(|s| {
        s.allow = Some(vec![DOMAIN.into(), OTHER_DOMAIN.into()]);
        s.delivery = vec![
            ("max_held_per_account", json!(3)),
            ("max_held_per_domain", json!(5)),
        ];
    })
    .await;
    let away = |user: &'static str, domain: &'static str, app: String| {
        let stack = &stack;
        async move {
            let mut phone = Peer::connect(&stack.server, user, domain, "phone").await;
            let endpoint = phone.register(&app, INSTANCE).await.endpoint;
            phone.leave(&stack.server).await;
            endpoint
        }
    };
    let refused = |endpoint: String| async move {
        let response = post(&endpoint, "no room").await;
        assert_eq!(response.status(), 503, "{endpoint}");
        assert!(response.headers().contains_key("retry-after"));
    };
    // Juliet's two apps share her account's three places.
    let juliet_one = away("juliet", DOMAIN, APP.into()).await;
    let juliet_two = away("juliet", DOMAIN, other_app()).await;
    accepted(&juliet_one, &[], "j1", "86400").await;
    accepted(&juliet_two, &[], "j2", "86400").await;
    accepted(&juliet_one, &[], "j3", "86400").await;
    refused(juliet_two.clone()).await;
    // Romeo, on her domain, has his own account's places, up to the domain's five.
    let romeo = away("romeo", DOMAIN, APP.into()).await;
    accepted(&romeo, &[], "r1", "86400").await;
    accepted(&romeo, &[], "r2", "86400").await;
    refused(romeo.clone()).await;
    // Eve's domain is another.
    let eve = away("eve", OTHER_DOMAIN, APP.into()).await;
    accepted(&eve, &[], "e1", "86400").await;
    // What was held is delivered (one app's after the other's, in either order), and nothing else.
    let mut phone = phone_back(&stack).await;
    let mut delivered = Vec::new();
    for _ in 0..3 {
        delivered.push(String::from_utf8(phone.next_push().await.data).expect("utf-8"));
    }
    delivered.sort();
    assert_eq!(delivered, ["j1", "j2", "j3"]);
    assert_delivered(&juliet_two, &mut phone, b"and nothing else").await;
}

#[tokio::test]
async fn held_messages_survive_kill_9() {
    let mut stack = Stack::start().await;
    let endpoint = offline_phone(&stack).await;
    for body in ["1", "2", "3"] {
        accepted(&endpoint, &[], body, "86400").await;
    }
    stack.xup.kill().await;
    stack.xup = Xup::start(xup_binary(), stack.server.component_port(), &stack.settings).await;
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

#[tokio::test]
async fn held_messages_go_out_when_the_component_link_comes_up() {
    let mut stack = Stack::start().await;
    let mut phone = stack.juliet("phone").await;
    let endpoint = phone.register(APP, INSTANCE).await.endpoint;
    phone.answer_with("service-unavailable").await;
    accepted(&endpoint, &[], "held", "86400").await;
    assert_eq!(phone.next_push().await.data, b"held");
    phone.answer_with("result").await;
    // No presence from the phone: the new link alone brings the message.
    stack.restart_xup(|_| {}).await;
    receives_exactly(&mut phone, &endpoint, &["held"]).await;
}

#[tokio::test]
async fn a_client_that_never_announces_itself_gets_its_messages_on_the_retry() {
    let stack = Stack::start_with(|s| s.delivery = vec![("retry_interval", json!("10s"))]).await;
    let endpoint = offline_phone(&stack).await;
    accepted(&endpoint, &[], "while you were out", "86400").await;
    // Back online, but silent towards xup: only the periodic retry can bring the message.
    let mut phone = stack.juliet("phone").await;
    let push = timeout(Duration::from_secs(15), phone.next_push())
        .await
        .expect("the retry (every 10 s) delivers it");
    assert_eq!(push.data, b"while you were out");
    receives_exactly(&mut phone, &endpoint, &[]).await;
}

/// POST `count` numbered messages, `concurrency` at a time; returns (body, status) per message,
/// status 0 when the request failed below HTTP. `done` counts finished requests.
async fn load(
    endpoint: String,
    count: usize,
    concurrency: usize,
    done: watch::Sender<usize>,
) -> Vec<(String, u16)> {
    use futures::StreamExt;
    futures::stream::iter(0..count)
        .map(|i| {
            let (endpoint, done) = (endpoint.clone(), done.clone());
            async move {
                let body = format!("message {i}");
                let status = reqwest::Client::new()
                    .post(&endpoint)
                    .body(body.clone())
                    .send()
                    .await
                    .map_or(0, |r| r.status().as_u16());
                done.send_modify(|n| *n += 1);
                (body, status)
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await
}

/// Bodies of the pushes in `pushes`, counted.
fn tally(pushes: &[ReceivedPush]) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for push in pushes {
        let body = String::from_utf8(push.data.clone()).expect("utf-8");
        *seen.entry(body).or_insert(0) += 1;
    }
    seen
}

#[tokio::test]
async fn the_server_killed_mid_load_loses_nothing_that_was_answered_201() {
    const COUNT: usize = 300;
    const CONCURRENCY: usize = 8;
    // The outage may hold every message for this one registration: no bound may drop any here,
    // and no rate limit may refuse them.
    let mut stack = Stack::start_with(|s| {
        s.delivery = vec![("max_held_per_registration", json!(COUNT))];
        s.without_rate_limits();
    })
    .await;
    let mut phone = stack.juliet("phone").await;
    let endpoint = phone.register(APP, INSTANCE).await.endpoint;
    let (done, mut progress) = watch::channel(0);
    let firing = tokio::spawn(load(endpoint.clone(), COUNT, CONCURRENCY, done));

    progress.wait_for(|n| *n >= 50).await.expect("load running");
    stack.server.kill().await;
    stack.xup.wait_log("component link down").await;
    stack.server.restart().await;
    stack.xup.wait_reconnected().await;
    let mut phone_again = stack.juliet("phone").await;
    phone_again.announce().await;
    let results = firing.await.expect("load finished");

    for (body, status) in &results {
        assert!(
            *status == 201 || *status == 503,
            "{body}: senders see only 201 or 503, got {status}"
        );
    }
    let accepted: Vec<&String> = results
        .iter()
        .filter(|(_, status)| *status == 201)
        .map(|(body, _)| body)
        .collect();
    let mut received = phone.pushes_so_far();
    let mut seen = tally(&received);
    while let Some(missing) = accepted.iter().find(|b| !seen.contains_key(b.as_str())) {
        let push = timeout(WAIT, phone_again.next_push())
            .await
            .unwrap_or_else(|_| panic!("{missing} was answered 201 but never arrived"));
        received.push(push);
        seen = tally(&received);
    }
    // A message can reach the client twice only if Prosody died after handing it over and before
    // passing back the client's result: at most the pushes in flight at that moment.
    let twice = seen.values().filter(|n| **n > 1).count();
    assert!(
        twice <= CONCURRENCY,
        "{twice} messages arrived more than once"
    );
    eprintln!(
        "{} of {COUNT} answered 201, all delivered; {twice} delivered twice",
        accepted.len()
    );
}

#[tokio::test]
async fn sigterm_under_load_exits_0_and_loses_nothing_that_was_answered_201() {
    const COUNT: usize = 300;
    let mut stack = Stack::start_with(XupSettings::without_rate_limits).await;
    let mut phone = stack.juliet("phone").await;
    let endpoint = phone.register(APP, INSTANCE).await.endpoint;
    let (done, mut progress) = watch::channel(0);
    let firing = tokio::spawn(load(endpoint.clone(), COUNT, 8, done));

    progress.wait_for(|n| *n >= 50).await.expect("load running");
    assert!(stack.xup.stop().await.success(), "xup exits 0 on SIGTERM");
    let results = firing.await.expect("load finished");
    for (body, status) in &results {
        // Once xup has stopped listening, connections are refused (status 0): the sender retries.
        assert!(
            [0, 201].contains(status),
            "{body}: a stopping xup answers 201 or not at all, got {status}"
        );
    }
    stack.xup = Xup::start(xup_binary(), stack.server.component_port(), &stack.settings).await;
    phone.announce().await;
    let accepted: Vec<&String> = results
        .iter()
        .filter(|(_, status)| *status == 201)
        .map(|(body, _)| body)
        .collect();
    let mut received = Vec::new();
    let mut seen = tally(&received);
    while let Some(missing) = accepted.iter().find(|b| !seen.contains_key(b.as_str())) {
        let push = timeout(WAIT, phone.next_push())
            .await
            .unwrap_or_else(|_| panic!("{missing} was answered 201 but never arrived"));
        received.push(push);
        seen = tally(&received);
    }
    assert!(seen.values().all(|n| *n == 1), "nothing arrives twice");
}
