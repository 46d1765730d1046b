//! The core: registration, delivery, revocation, reconnection, secrets, and the component's manners.
//!
//! Each test starts its own Prosody and xup on free loopback ports. "No IQ was sent" is proven
//! by order, not by waiting: after the request that must not reach the client, a good push is
//! sent, and it must be the very next thing the client receives.

use std::time::{Duration, Instant, SystemTime};

use crate::harness::*;

#[tokio::test]
async fn a_push_reaches_the_registering_resource_byte_exact_and_only_it() {
    let stack = Stack::start().await;
    let mut phone = stack.juliet("phone").await;
    let mut laptop = stack.juliet("laptop").await;
    let registered = phone.register(APP, INSTANCE).await;
    assert!(
        registered
            .endpoint
            .starts_with(&format!("{}/push/v4.local.", stack.xup.base_url))
    );

    let body: Vec<u8> = (0..=255u8).chain(0..=255u8).collect();
    let response = post(&registered.endpoint, body.clone()).await;
    assert_eq!(response.status(), 201);
    // No TTL in the request: the default day is what xup would have kept it for.
    assert_eq!(response.headers()["ttl"], "86400");
    let location = response.headers()["location"].to_str().expect("ascii");
    assert!(location.starts_with("/message/"), "{location}");

    let push = phone.next_push().await;
    assert_eq!(push.data, body);
    assert_eq!(push.from, COMPONENT);
    assert_eq!(push.to, phone.jid);
    assert_eq!(push.application, APP);
    assert_eq!(push.instance, INSTANCE);

    // The laptop got nothing: the first push it ever sees is one for its own registration.
    let laptop_endpoint = laptop.register(APP, INSTANCE).await.endpoint;
    assert_ne!(laptop_endpoint, registered.endpoint);
    assert_delivered(&laptop_endpoint, &mut laptop, b"for the laptop").await;
}

#[tokio::test]
async fn registration_answers_a_z_timestamp_a_week_ahead() {
    let stack = Stack::start().await;
    let mut phone = stack.juliet("phone").await;
    let registered = phone.register(APP, INSTANCE).await;
    assert!(
        registered.expiration.ends_with('Z'),
        "{}",
        registered.expiration
    );
    let expires = humantime::parse_rfc3339(&registered.expiration).expect("RFC 3339");
    let ahead = expires
        .duration_since(SystemTime::now())
        .expect("in the future");
    let week = Duration::from_secs(7 * 86400);
    assert!(
        ahead > week - Duration::from_secs(60) && ahead <= week,
        "{ahead:?}"
    );
    assert!(registered.endpoint.len() <= 1000);
}

#[tokio::test]
async fn malformed_registrations_are_bad_requests() {
    use base64::Engine;
    let stack = Stack::start().await;
    let mut phone = stack.juliet("phone").await;
    let short = base64::engine::general_purpose::STANDARD.encode([1u8; 31]);
    let unpadded = APP.trim_end_matches('=');
    let cases = [
        (Some(APP), None),
        (None, Some(INSTANCE)),
        (Some(unpadded), Some(INSTANCE)),
        (Some(APP), Some(short.as_str())),
        (
            Some("not base64 at all, but 44 characters long.."),
            Some(INSTANCE),
        ),
        (Some(""), Some(INSTANCE)),
    ];
    for (application, instance) in cases {
        let failure = phone
            .register_raw(application, instance)
            .await
            .expect_err("refused");
        assert_eq!(
            failure,
            IqFailure {
                condition: "bad-request".into(),
                error_type: "modify".into()
            },
            "{application:?} {instance:?}"
        );
    }
}

#[tokio::test]
async fn only_the_access_list_may_register() {
    // Default: the component's parent domain only.
    let stack = Stack::start().await;
    let mut eve = Peer::connect(&stack.server, "eve", OTHER_DOMAIN, "x").await;
    let failure = eve.register_raw(Some(APP), Some(INSTANCE)).await;
    assert_eq!(
        failure.expect_err("refused"),
        IqFailure {
            condition: "forbidden".into(),
            error_type: "auth".into()
        }
    );
    let mut juliet = stack.juliet("phone").await;
    juliet.register(APP, INSTANCE).await;

    // An explicit list of one account.
    let stack = Stack::start_with(|s| s.allow = Some(vec![format!("eve@{OTHER_DOMAIN}")])).await;
    let mut eve = Peer::connect(&stack.server, "eve", OTHER_DOMAIN, "x").await;
    eve.register(APP, INSTANCE).await;
    let mut juliet = stack.juliet("phone").await;
    let failure = juliet.register_raw(Some(APP), Some(INSTANCE)).await;
    assert_eq!(failure.expect_err("refused").condition, "forbidden");
}

#[tokio::test]
async fn dead_tokens_answer_404_and_send_nothing() {
    let stack = Stack::start().await;
    let mut phone = stack.juliet("phone").await;
    let endpoint = phone.register(APP, INSTANCE).await.endpoint;
    let base = format!("{}/push/", stack.xup.base_url);
    let token = endpoint.strip_prefix(&base).expect("our prefix");

    let mut tampered = token.as_bytes().to_vec();
    tampered[30] = if tampered[30] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).expect("ascii");

    let now = SystemTime::now();
    let week = Duration::from_secs(7 * 86400);
    let issue = |secret: &str, issued: SystemTime| {
        xup::token::KeyRing::new(&[secret.to_owned()], COMPONENT)
            .expect("keys")
            .issue(&xup::token::claims_for(
                &phone.jid, APP, INSTANCE, issued, week,
            ))
            .expect("token")
    };
    let expired = issue(SECRET_A, now - week - Duration::from_secs(1));
    let foreign = issue("some other provider's secret", now);

    for dead in ["garbage", "v4.local.AAAA", &tampered, &expired, &foreign] {
        let response = post(&format!("{base}{dead}"), "x").await;
        assert_eq!(response.status(), 404, "{dead:.40}");
        let discovery = reqwest::get(format!("{base}{dead}")).await.expect("GET");
        assert_eq!(discovery.status(), 404, "{dead:.40}");
    }
    assert_delivered(&endpoint, &mut phone, b"the first real one").await;
}

#[tokio::test]
async fn bodies_must_be_1_to_4096_bytes() {
    let stack = Stack::start().await;
    let mut phone = stack.juliet("phone").await;
    let endpoint = phone.register(APP, INSTANCE).await.endpoint;

    assert_eq!(post(&endpoint, vec![b'x'; 4097]).await.status(), 413);
    assert_eq!(post(&endpoint, Vec::new()).await.status(), 400);
    // A chunked body carries no length up front and must be cut off while it is read.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        vec![Ok(vec![b'y'; 3000]), Ok(vec![b'y'; 3000])];
    let chunked = reqwest::Body::wrap_stream(futures::stream::iter(chunks));
    assert_eq!(post(&endpoint, chunked).await.status(), 413);

    assert_delivered(&endpoint, &mut phone, &[b'z'; 4096]).await;
}

#[tokio::test]
async fn discovery_answers_for_a_live_endpoint() {
    let stack = Stack::start().await;
    let mut phone = stack.juliet("phone").await;
    let endpoint = phone.register(APP, INSTANCE).await.endpoint;
    let response = reqwest::get(&endpoint).await.expect("GET");
    assert_eq!(response.status(), 200);
    let json: serde_json::Value = response.json().await.expect("json");
    assert_eq!(json, serde_json::json!({"unifiedpush": {"version": 1}}));
}

/// The client says the app is gone (`condition`): the endpoint answers 404 and sends nothing from
/// then on, also after xup restarts, until the same app registers afresh.
async fn a_gone_app_is_revoked_until_it_registers_again(condition: &str) {
    let mut stack = Stack::start().await;
    let mut phone = stack.juliet("phone").await;
    let endpoint = phone.register(APP, INSTANCE).await.endpoint;
    let other = phone.register(&other_app(), INSTANCE).await.endpoint;

    phone.answer_with(condition).await;
    assert_eq!(post(&endpoint, "gone?").await.status(), 404);
    assert_eq!(phone.next_push().await.data, b"gone?");
    phone.answer_with("result").await;

    assert_eq!(post(&endpoint, "after revocation").await.status(), 404);
    stack.restart_xup(|_| {}).await;
    assert_eq!(post(&endpoint, "after restart").await.status(), 404);
    assert_eq!(reqwest::get(&endpoint).await.expect("GET").status(), 404);

    // Another app of the same client is unaffected, and nothing revoked was sent.
    assert_delivered(&other, &mut phone, b"other app").await;

    // A fresh registration for the same triple works at once.
    let fresh = phone.register(APP, INSTANCE).await.endpoint;
    assert_ne!(fresh, endpoint);
    assert_delivered(&fresh, &mut phone, b"reinstalled").await;
}

#[tokio::test]
async fn item_not_found_revokes_across_restarts_until_a_fresh_register() {
    a_gone_app_is_revoked_until_it_registers_again("item-not-found").await;
}

#[tokio::test]
async fn feature_not_implemented_revokes_across_restarts_until_a_fresh_register() {
    a_gone_app_is_revoked_until_it_registers_again("feature-not-implemented").await;
}

#[tokio::test]
async fn xup_reconnects_when_the_server_restarts() {
    let mut stack = Stack::start().await;
    let mut phone = stack.juliet("phone").await;
    let endpoint = phone.register(APP, INSTANCE).await.endpoint;
    assert_delivered(&endpoint, &mut phone, b"before").await;

    stack.server.kill().await;
    stack.xup.wait_log("component link down").await;
    // While the link is down the message is held, and the sender hears so at once.
    let started = Instant::now();
    let response = post(&endpoint, "during").await;
    assert_eq!(response.status(), 201);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    stack.server.restart().await;
    stack.xup.wait_reconnected().await;
    let mut phone = stack.juliet("phone").await;
    phone.announce().await;
    assert_eq!(phone.next_push().await.data, b"during");
    assert_delivered(&endpoint, &mut phone, b"after").await;
}

#[tokio::test]
async fn rotated_secrets_keep_old_endpoints_until_the_old_secret_is_removed() {
    let mut stack = Stack::start().await;
    let mut phone = stack.juliet("phone").await;
    let old = phone.register(APP, INSTANCE).await.endpoint;

    stack
        .restart_xup(|s| s.secrets = vec![SECRET_B.into(), SECRET_A.into()])
        .await;
    assert_delivered(&old, &mut phone, b"old endpoint, rotated ring").await;
    let new = phone.register(APP, INSTANCE).await.endpoint;
    assert_ne!(
        new, old,
        "a renewal moves the registration to the new key, once"
    );
    assert_eq!(phone.register(APP, INSTANCE).await.endpoint, new);
    assert_delivered(&new, &mut phone, b"new endpoint").await;

    stack
        .restart_xup(|s| s.secrets = vec![SECRET_B.into()])
        .await;
    assert_eq!(post(&old, "old secret retired").await.status(), 404);
    assert_delivered(&new, &mut phone, b"new endpoint still works").await;
}

#[tokio::test]
async fn disco_ping_and_unknown_requests_are_answered() {
    let stack = Stack::start().await;
    let mut phone = stack.juliet("phone").await;

    let features = phone.disco_features().await;
    assert!(features.iter().any(|f| f == UP_NS), "{features:?}");

    let ping = phone
        .iq("get", COMPONENT, "<ping xmlns='urn:xmpp:ping'/>")
        .await;
    assert_eq!(ping["type"], "result");

    let unknown = phone
        .iq("get", COMPONENT, "<query xmlns='jabber:iq:version'/>")
        .await;
    assert_eq!(unknown["type"], "error");
    assert_eq!(unknown["condition"], "service-unavailable");
}

#[tokio::test]
async fn a_wrong_component_secret_is_explained_and_pushes_are_held() {
    let server = Server::start().await;
    let store = tempfile::tempdir().expect("store dir");
    let mut settings = XupSettings::new(store.path());
    settings.component_secret = "not the secret the server has".into();
    let mut xup = Xup::spawn(xup_binary(), server.component_port(), &settings);
    let line = xup.wait_log("component cannot connect").await;
    assert!(line.contains("component.secret"), "{line}");

    // HTTP is served all the same, and a message for a valid endpoint is held, not refused.
    let token = xup::token::KeyRing::new(&[SECRET_A.to_owned()], COMPONENT)
        .expect("keys")
        .issue(&xup::token::claims_for(
            "juliet@localhost/phone",
            APP,
            INSTANCE,
            SystemTime::now(),
            Duration::from_secs(7 * 86400),
        ))
        .expect("token");
    let response = post(&format!("{}/push/{token}", xup.base_url), "x").await;
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["ttl"], "86400");
}
