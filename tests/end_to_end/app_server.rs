//! The XEP-0357 app server: a real client registers a Web Push endpoint with xup and enables push
//! on its real server, which then publishes to xup when the client is away; a receiver here plays
//! the push service and decrypts what arrives with the subscription's private key.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU16, Ordering},
    },
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde_json::Value;
use tokio::sync::mpsc;
use web_push_native::{
    Auth,
    p256::{self, elliptic_curve::rand_core::OsRng},
};

use crate::harness::*;

/// Publishes for one node closer together than this share one POST (`app_server.rs`), and a bit.
const COALESCE_WINDOW: std::time::Duration = std::time::Duration::from_millis(1100);

/// A XEP-0357 publish to `node`, as Prosody and ejabberd send it, with a summary of `count`.
fn publish(node: &str, secret: &str, count: u32) -> String {
    format!(
        "<pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='{node}'><item>\
         <notification xmlns='urn:xmpp:push:0'><x xmlns='jabber:x:data' type='submit'>\
         <field var='FORM_TYPE'><value>urn:xmpp:push:summary</value></field>\
         <field var='message-count'><value>{count}</value></field></x></notification></item>\
         </publish><publish-options><x xmlns='jabber:x:data' type='submit'>\
         <field var='FORM_TYPE'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>\
         <field var='secret'><value>{secret}</value></field></x></publish-options></pubsub>"
    )
}

/// One POST the push service received.
struct Received {
    path: String,
    headers: HeaderMap,
    body: Vec<u8>,
}

/// A push service on loopback: records what it is sent and answers with `status`.
struct PushService {
    base: String,
    received: mpsc::UnboundedReceiver<Received>,
    status: Arc<AtomicU16>,
}

#[derive(Clone)]
struct Service {
    sink: mpsc::UnboundedSender<Received>,
    status: Arc<AtomicU16>,
}

async fn receive(
    State(service): State<Service>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let _ = service.sink.send(Received {
        path: uri.path().to_owned(),
        headers,
        body: body.to_vec(),
    });
    StatusCode::from_u16(service.status.load(Ordering::SeqCst)).expect("status")
}

impl PushService {
    async fn start() -> PushService {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address: SocketAddr = listener.local_addr().expect("address");
        let (sink, received) = mpsc::unbounded_channel();
        let status = Arc::new(AtomicU16::new(201));
        let service = Service {
            sink,
            status: status.clone(),
        };
        let router = Router::new().fallback(receive).with_state(service);
        tokio::spawn(async move { axum::serve(listener, router).await });
        PushService {
            base: format!("http://{address}"),
            received,
            status,
        }
    }

    fn endpoint(&self, name: &str) -> String {
        format!("{}/push/{name}", self.base)
    }

    fn answer_with(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    async fn next(&mut self) -> Received {
        tokio::time::timeout(WAIT, self.received.recv())
            .await
            .expect("a push arrives at the push service in time")
            .expect("the push service runs")
    }
}

/// A subscription's keys, as a browser or a UnifiedPush distributor makes them.
struct SubscriptionKeys {
    secret: p256::SecretKey,
    auth: [u8; 16],
}

impl SubscriptionKeys {
    fn new() -> SubscriptionKeys {
        SubscriptionKeys {
            secret: p256::SecretKey::random(&mut OsRng),
            auth: rand::random(),
        }
    }

    fn p256dh(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.secret.public_key().to_sec1_bytes())
    }

    fn auth(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.auth)
    }

    fn decrypt(&self, body: Vec<u8>) -> Value {
        let plain =
            web_push_native::decrypt(body, &self.secret, &Auth::clone_from_slice(&self.auth))
                .expect("the push decrypts with the subscription's key");
        serde_json::from_slice(&plain).expect("JSON")
    }
}

#[tokio::test]
async fn a_server_wakes_a_client_that_is_away_through_its_web_push_endpoint() {
    let mut stack = Stack::start().await;
    let mut service = PushService::start().await;
    let keys = SubscriptionKeys::new();
    let mut juliet = stack.juliet("phone").await;
    let features = juliet.disco_features().await;
    assert!(
        features.iter().any(|f| f == "urn:xmpp:push:0"),
        "{features:?}"
    );
    let node = juliet
        .register_web_push(
            &service.endpoint("juliet"),
            Some((&keys.p256dh(), &keys.auth())),
        )
        .await
        .expect("registered");
    assert_eq!(node.jid, COMPONENT);
    assert!(node.node.len() < 1000, "{}", node.node.len());
    juliet.enable_push(&node).await;
    juliet.leave(&stack.server).await;

    let mut romeo = Peer::connect(&stack.server, "romeo", DOMAIN, "x").await;
    romeo
        .send_message(&format!("juliet@{DOMAIN}"), "wherefore art thou")
        .await;
    let push = service.next().await;
    assert_eq!(push.headers["content-encoding"], "aes128gcm");
    // A message with a body is important to Prosody: it says so with a placeholder body.
    assert_eq!(push.headers["urgency"], "high");
    assert!(push.headers.contains_key("ttl"));
    let authorization = push.headers["authorization"].to_str().expect("ascii");
    assert!(authorization.starts_with("vapid t="), "{authorization}");
    assert!(
        authorization.ends_with(&format!("k={}", node.vapid_public_key)),
        "{authorization}"
    );
    let wake_up = keys.decrypt(push.body);
    assert_eq!(wake_up["type"], "xmpp-push");
    assert_eq!(wake_up["important"], true);
    // Prosody sends the real body only when told to; xup passes on what it got, and no more.
    assert_ne!(
        wake_up["last-message-body"], "wherefore art thou",
        "{wake_up}"
    );

    // The endpoint is gone: xup says so, and forgets the node. (Publishes within a second of a
    // POST share it; the window is the feature's own clock, so the test waits it out.)
    service.answer_with(410);
    tokio::time::sleep(COALESCE_WINDOW).await;
    romeo
        .send_message(&format!("juliet@{DOMAIN}"), "again")
        .await;
    service.next().await;
    stack.xup.wait_log("app-server node revoked").await;
    let mut juliet = stack.juliet("laptop").await;
    let gone = juliet
        .ad_hoc("unregister-push-webpush", &[("node", &node.node)])
        .await
        .expect_err("the node is gone");
    assert_eq!(gone.condition, "item-not-found");
}

#[tokio::test]
async fn a_hibernated_session_is_woken_too() {
    let stack = Stack::start().await;
    let mut service = PushService::start().await;
    let keys = SubscriptionKeys::new();
    let mut juliet = Peer::connect_resumable(&stack.server, "juliet", DOMAIN, "phone").await;
    let node = juliet
        .register_web_push(
            &service.endpoint("juliet"),
            Some((&keys.p256dh(), &keys.auth())),
        )
        .await
        .expect("registered");
    juliet.enable_push(&node).await;
    juliet.drop_connection().await;

    let mut romeo = Peer::connect(&stack.server, "romeo", DOMAIN, "x").await;
    romeo.send_message(&juliet.jid, "are you there").await;
    let push = service.next().await;
    assert_eq!(keys.decrypt(push.body)["type"], "xmpp-push");
}

#[tokio::test]
async fn registrations_are_checked_and_publishes_must_prove_themselves() {
    let stack = Stack::start().await;
    let service = PushService::start().await;
    let mut juliet = stack.juliet("phone").await;
    for (endpoint, why) in [
        ("https://10.0.0.1/push", "private"),
        ("https://[::ffff:10.0.0.1]/push", "private, inside IPv6"),
        (
            "https://[64:ff9b::a9fe:a9fe]/latest",
            "link local, through NAT64",
        ),
        ("https://[2002:c0a8:101::1]/push", "private, through 6to4"),
        ("http://push.example.org/x", "https"),
        ("not a url", "URL"),
    ] {
        let refused = juliet
            .register_web_push(endpoint, None)
            .await
            .expect_err(endpoint);
        assert_eq!(
            refused,
            IqFailure {
                condition: "bad-request".into(),
                error_type: "modify".into()
            },
            "{why}"
        );
    }
    let long_name = "n".repeat(129);
    let refused = juliet
        .ad_hoc(
            "register-push-webpush",
            &[
                ("endpoint", &service.endpoint("juliet")),
                ("device-name", &long_name),
            ],
        )
        .await
        .expect_err("a device name over 128 bytes");
    assert_eq!(refused.condition, "bad-request");
    let mut eve = Peer::connect(&stack.server, "eve", OTHER_DOMAIN, "x").await;
    let refused = eve
        .register_web_push(&service.endpoint("eve"), None)
        .await
        .expect_err("not on the access list");
    assert_eq!(refused.condition, "forbidden");

    // A publish with the wrong secret, or from another domain, is forbidden; to a node that is
    // no node, item-not-found. (Juliet's client publishes here in her server's stead: its domain
    // is the registrant's, so only the secret tells them apart.)
    let node = juliet
        .register_web_push(&service.endpoint("juliet"), None)
        .await
        .expect("registered");
    let wrong = juliet
        .iq("set", COMPONENT, &publish(&node.node, "not the secret", 1))
        .await;
    assert_eq!(wrong["condition"], "forbidden", "{wrong}");
    let foreign = eve
        .iq("set", COMPONENT, &publish(&node.node, &node.secret, 1))
        .await;
    assert_eq!(foreign["condition"], "forbidden", "{foreign}");
    // Another account of the registrant's own domain, with the node and its secret, is no more
    // the registrant than eve is.
    let mut romeo = Peer::connect(&stack.server, "romeo", DOMAIN, "x").await;
    let neighbour = romeo
        .iq("set", COMPONENT, &publish(&node.node, &node.secret, 1))
        .await;
    assert_eq!(neighbour["condition"], "forbidden", "{neighbour}");
    let unknown = juliet
        .iq(
            "set",
            COMPONENT,
            &publish("v4.local.nothing", &node.secret, 1),
        )
        .await;
    assert_eq!(unknown["condition"], "item-not-found", "{unknown}");
}

#[tokio::test]
async fn a_burst_of_publishes_is_one_post_and_every_publish_is_answered() {
    let stack = Stack::start().await;
    let mut service = PushService::start().await;
    let mut juliet = stack.juliet("phone").await;
    let node = juliet
        .register_web_push(&service.endpoint("juliet"), None)
        .await
        .expect("registered");
    // Without keys the wake-up goes out in clear, and says only what the summary counts.
    for count in [1, 2, 3] {
        let answer = juliet
            .iq("set", COMPONENT, &publish(&node.node, &node.secret, count))
            .await;
        assert_eq!(answer["type"], "result", "{answer}");
    }
    let first = service.next().await;
    assert!(first.headers.get("content-encoding").is_none());
    let body: Value = serde_json::from_slice(&first.body).expect("JSON");
    assert_eq!(
        body,
        serde_json::json!({ "type": "xmpp-push", "message-count": 1, "important": false })
    );
    tokio::time::sleep(COALESCE_WINDOW).await;
    let answer = juliet
        .iq("set", COMPONENT, &publish(&node.node, &node.secret, 4))
        .await;
    assert_eq!(answer["type"], "result", "{answer}");
    // The next POST is the fourth publish's: the second and third shared the first's.
    let next: Value = serde_json::from_slice(&service.next().await.body).expect("JSON");
    assert_eq!(next["message-count"], 4);
}

#[tokio::test]
async fn the_push_services_answer_decides_the_publishs() {
    let stack = Stack::start().await;
    let service = PushService::start().await;
    let mut juliet = stack.juliet("phone").await;
    for (status, condition, error_type) in [
        (503, "remote-server-timeout", "wait"),
        (429, "resource-constraint", "wait"),
        (400, "not-acceptable", "cancel"),
        (404, "item-not-found", "cancel"),
    ] {
        service.answer_with(status);
        let node = juliet
            .register_web_push(&service.endpoint(&status.to_string()), None)
            .await
            .expect("registered");
        let answer = juliet
            .iq("set", COMPONENT, &publish(&node.node, &node.secret, 1))
            .await;
        assert_eq!(
            (answer["condition"].as_str(), answer["error_type"].as_str()),
            (Some(condition), Some(error_type)),
            "{status}: {answer}"
        );
    }
}

/// The value of `var` in a command's answer.
fn value_of(answer: &[(String, String)], var: &str) -> String {
    answer
        .iter()
        .find(|(v, _)| v == var)
        .map(|(_, value)| value.clone())
        .unwrap_or_else(|| panic!("no {var} in {answer:?}"))
}

#[tokio::test]
async fn a_user_lists_and_unregisters_their_own_registrations_only() {
    let stack = Stack::start().await;
    let service = PushService::start().await;
    let mut juliet = stack.juliet("phone").await;
    let (phone_endpoint, laptop_endpoint) = (service.endpoint("phone"), service.endpoint("laptop"));
    let mut nodes = Vec::new();
    for (endpoint, device) in [(&phone_endpoint, "phone"), (&laptop_endpoint, "laptop")] {
        let answer = juliet
            .ad_hoc(
                "register-push-webpush",
                &[
                    ("endpoint", endpoint),
                    ("device-id", device),
                    ("device-name", &format!("Juliet's {device}")),
                ],
            )
            .await
            .expect("registered");
        nodes.push((value_of(&answer, "node"), value_of(&answer, "secret")));
    }
    // Conversations' newer code says `complete`, some clients no action at all; all are one step.
    for action in [Some("complete"), None] {
        let listed = juliet
            .ad_hoc_as("list-push-registrations", action, &[])
            .await
            .expect("listed");
        assert_eq!(value_of(&listed, "count"), "2", "{action:?}");
    }
    let refused = juliet
        .ad_hoc_as("list-push-registrations", Some("next"), &[])
        .await
        .expect_err("a second step");
    assert_eq!(refused.condition, "bad-request");
    let listed = juliet
        .ad_hoc("list-push-registrations", &[])
        .await
        .expect("listed");
    assert_eq!(value_of(&listed, "count"), "2");
    let lines = value_of(&listed, "registrations");
    assert!(lines.contains("Juliet's phone (device phone"), "{listed:?}");

    // Romeo, on the same server, can neither see nor remove Juliet's.
    let mut romeo = Peer::connect(&stack.server, "romeo", DOMAIN, "x").await;
    let listed = romeo
        .ad_hoc("list-push-registrations", &[])
        .await
        .expect("listed");
    assert_eq!(value_of(&listed, "count"), "0");
    let refused = romeo
        .ad_hoc("unregister-push-webpush", &[("node", &nodes[0].0)])
        .await
        .expect_err("not his");
    assert_eq!(refused.condition, "item-not-found");

    let done = juliet
        .ad_hoc("unregister-push-webpush", &[("device-id", "laptop")])
        .await
        .expect("unregistered");
    assert_eq!(value_of(&done, "unregistered"), "1");
    let listed = juliet
        .ad_hoc("list-push-registrations", &[])
        .await
        .expect("listed");
    assert_eq!(value_of(&listed, "count"), "1");
    let (laptop_node, laptop_secret) = &nodes[1];
    let gone = juliet
        .iq("set", COMPONENT, &publish(laptop_node, laptop_secret, 1))
        .await;
    assert_eq!(gone["condition"], "item-not-found", "{gone}");
}

#[tokio::test]
async fn revoke_all_kills_every_endpoint_of_the_account_and_no_other() {
    let stack = Stack::start().await;
    let mut phone = stack.juliet("phone").await;
    let mut laptop = stack.juliet("laptop").await;
    let mut romeo = Peer::connect(&stack.server, "romeo", DOMAIN, "x").await;
    let on_phone = phone.register(APP, INSTANCE).await.endpoint;
    let on_laptop = laptop.register(APP, INSTANCE).await.endpoint;
    let romeos = romeo.register(APP, INSTANCE).await.endpoint;
    // A message held for the laptop, which has gone away.
    laptop.quit().await;
    assert_eq!(post(&on_laptop, "held").await.status(), 201);
    assert_eq!(stack.metric("xup_held_messages").await, 1.0);

    let answer = phone
        .ad_hoc("revoke-all-push-endpoints", &[])
        .await
        .expect("revoked");
    assert_eq!(value_of(&answer, "dropped-messages"), "1");
    assert_eq!(stack.metric("xup_held_messages").await, 0.0);
    for dead in [&on_phone, &on_laptop] {
        assert_eq!(post(dead, "x").await.status(), 404);
    }
    assert_delivered(&romeos, &mut romeo, b"romeo is unaffected").await;
    // A fresh registration works at once.
    let fresh = phone.register(APP, INSTANCE).await.endpoint;
    assert_delivered(&fresh, &mut phone, b"registered again").await;
}

/// A push accepted just before `revoke-all-push-endpoints` is never delivered after it, even when
/// its hold lands after the account's messages were dropped: before a held message is offered,
/// its revocation is checked again. (The race is made here by putting the message back into the
/// store after the revocation, and restarting xup so that it counts it.)
#[tokio::test]
async fn a_message_accepted_before_revoke_all_is_never_delivered_after_it() {
    let mut stack = Stack::start().await;
    let mut phone = stack.juliet("phone").await;
    let endpoint = phone.register(APP, INSTANCE).await.endpoint;
    phone.leave(&stack.server).await;
    assert_eq!(post(&endpoint, "accepted before").await.status(), 201);
    stack.store_sql("CREATE TABLE raced AS SELECT * FROM held");
    let mut laptop = stack.juliet("laptop").await;
    let answer = laptop
        .ad_hoc("revoke-all-push-endpoints", &[])
        .await
        .expect("revoked");
    assert_eq!(value_of(&answer, "dropped-messages"), "1");
    stack.store_sql("INSERT INTO held SELECT * FROM raced; DROP TABLE raced");
    // Counted again at the start; the deliverer may drop it at once, unoffered.
    stack.restart_xup(|_| {}).await;

    let mut phone = stack.juliet("phone").await;
    phone.announce().await;
    let fresh = phone.register(APP, INSTANCE).await.endpoint;
    assert_delivered(&fresh, &mut phone, b"registered again").await;
    assert!(
        phone.pushes_so_far().is_empty(),
        "nothing accepted before the revocation arrived"
    );
}

/// How many publishes xup counted with `outcome` (none counted yet is 0).
async fn publishes(stack: &Stack, outcome: &str) -> f64 {
    let (_, page) = get(&format!("{}/metrics", stack.xup.base_url)).await;
    let name = format!("xup_app_server_publishes_total{{outcome=\"{outcome}\"}} ");
    page.lines()
        .find_map(|line| line.strip_prefix(&name))
        .map_or(0.0, |value| value.trim().parse().expect("a number"))
}

/// What each server does with xup's answers, which is why they must be right: after a `wait`
/// error both keep publishing; after `item-not-found` ejabberd drops the registration at once, and
/// Prosody after `push_max_errors` errors (2 in the testbed), which xup answers from the
/// revocation, without a POST.
#[tokio::test]
async fn a_wait_error_keeps_the_registration_and_item_not_found_ends_it() {
    let mut stack = Stack::start().await;
    let mut service = PushService::start().await;
    let mut kate = Peer::connect(&stack.server, "kate", DOMAIN, "k").await;
    let kates = kate
        .register_web_push(&service.endpoint("kate"), None)
        .await
        .expect("registered");
    kate.enable_push(&kates).await;
    kate.leave(&stack.server).await;
    let mut juliet = stack.juliet("phone").await;
    let node = juliet
        .register_web_push(&service.endpoint("juliet"), None)
        .await
        .expect("registered");
    juliet.enable_push(&node).await;
    juliet.leave(&stack.server).await;
    let mut romeo = Peer::connect(&stack.server, "romeo", DOMAIN, "x").await;
    let to_juliet = format!("juliet@{DOMAIN}");

    service.answer_with(503);
    romeo.send_message(&to_juliet, "one").await;
    assert_eq!(service.next().await.path, "/push/juliet");
    tokio::time::sleep(COALESCE_WINDOW).await;
    service.answer_with(201);
    romeo.send_message(&to_juliet, "two").await;
    assert_eq!(
        service.next().await.path,
        "/push/juliet",
        "kept after a wait error"
    );

    tokio::time::sleep(COALESCE_WINDOW).await;
    service.answer_with(410);
    romeo.send_message(&to_juliet, "three").await;
    assert_eq!(service.next().await.path, "/push/juliet");
    service.answer_with(201);
    // A publish that comes while the revocation is still being written shares the POST already
    // made for the node (and its `410`); the next one is to be answered from the revocation.
    stack.xup.wait_log("app-server node revoked").await;
    match stack.server {
        Server::Ejabberd(_) => {
            stack.server.wait_log("disabling push").await;
        }
        Server::Prosody(_) => {
            // The first error counted; the next publish is the second, answered from the
            // revocation, and Prosody gives up.
            romeo.send_message(&to_juliet, "four").await;
            stack
                .server
                .wait_log("Disabling push notifications for identifier")
                .await;
        }
    }
    let unknown_before = publishes(&stack, "unknown_node").await;
    // The server handles Romeo's messages in order, so once Kate's wake-up arrives, whatever the
    // message to Juliet made the server publish has reached xup: nothing.
    romeo.send_message(&to_juliet, "five").await;
    romeo
        .send_message(&format!("kate@{DOMAIN}"), "for kate")
        .await;
    assert_eq!(service.next().await.path, "/push/kate");
    assert_eq!(publishes(&stack, "unknown_node").await, unknown_before);
    assert_eq!(publishes(&stack, "gone").await, 1.0);
    assert_eq!(publishes(&stack, "failed").await, 1.0);
    assert_eq!(publishes(&stack, "delivered").await, 2.0);
}

/// A proxy in xup's environment, as a shell or a unit file may leave one, is not used: it would
/// resolve and connect behind xup's address check. The publish goes straight to the push service.
#[tokio::test]
async fn a_proxy_in_the_environment_is_never_used() {
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let proxy_url = format!("http://{}", proxy.local_addr().expect("address"));
    let (connected, mut connections) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((socket, _)) = proxy.accept().await {
            let _ = connected.send(());
            drop(socket);
        }
    });
    let stack = Stack::start_with(|settings| {
        for name in [
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
            "http_proxy",
            "https_proxy",
            "all_proxy",
        ] {
            settings.env.push((name, proxy_url.clone()));
        }
    })
    .await;
    let mut service = PushService::start().await;
    let mut juliet = stack.juliet("phone").await;
    let node = juliet
        .register_web_push(&service.endpoint("juliet"), None)
        .await
        .expect("registered");
    let answer = juliet
        .iq("set", COMPONENT, &publish(&node.node, &node.secret, 1))
        .await;
    assert_eq!(answer["type"], "result", "{answer}");
    assert_eq!(service.next().await.path, "/push/juliet");
    assert!(
        connections.try_recv().is_err(),
        "xup connected to the proxy from its environment"
    );
}

/// A push service that cannot be reached gets a `wait` error whose text, and xup's log, say what
/// failed but never the endpoint: it is the user's, and its path may be a secret.
#[tokio::test]
async fn a_failed_send_never_shows_the_endpoint() {
    let stack = Stack::start().await;
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = closed.local_addr().expect("address").port();
    drop(closed);
    let secret_path = "capability-0123456789abcdef";
    let endpoint = format!("http://127.0.0.1:{port}/push/{secret_path}");
    let mut juliet = stack.juliet("phone").await;
    let node = juliet
        .register_web_push(&endpoint, None)
        .await
        .expect("registered");
    let answer = juliet
        .iq("set", COMPONENT, &publish(&node.node, &node.secret, 1))
        .await;
    assert_eq!(
        (answer["condition"].as_str(), answer["error_type"].as_str()),
        (Some("remote-server-timeout"), Some("wait")),
        "{answer}"
    );
    let text = answer["text"].as_str().unwrap_or_default();
    assert!(text.contains("connect"), "says what failed: {text}");
    for shown in [text.to_owned(), stack.xup.logs_so_far().join("\n")] {
        assert!(!shown.contains(secret_path), "{shown}");
        assert!(!shown.contains(&format!("127.0.0.1:{port}")), "{shown}");
    }
}

/// One account cannot grow the node index without bound, whoever the access list admits: past
/// its share the next registration is refused, others' are not, and unregistering makes room.
#[tokio::test]
async fn one_account_keeps_at_most_its_share_of_registrations() {
    let stack = Stack::start_with(|s| {
        s.allow = Some(vec!["*".into()]);
        s.without_rate_limits();
    })
    .await;
    let service = PushService::start().await;
    let mut juliet = stack.juliet("phone").await;
    let mut first = None;
    for n in 0..xup::app_server::MAX_NODES_PER_ACCOUNT {
        let node = juliet
            .register_web_push(&service.endpoint(&format!("juliet-{n}")), None)
            .await
            .expect("within the share");
        first.get_or_insert(node);
    }
    let refused = juliet
        .register_web_push(&service.endpoint("one too many"), None)
        .await
        .expect_err("past the share");
    assert_eq!(
        (refused.condition.as_str(), refused.error_type.as_str()),
        ("resource-constraint", "cancel")
    );
    let mut romeo = Peer::connect(&stack.server, "romeo", DOMAIN, "x").await;
    romeo
        .register_web_push(&service.endpoint("romeo"), None)
        .await
        .expect("another account is unaffected");
    let first = first.expect("a first node");
    juliet
        .ad_hoc("unregister-push-webpush", &[("node", &first.node)])
        .await
        .expect("unregistered");
    juliet
        .register_web_push(&service.endpoint("in its place"), None)
        .await
        .expect("room again");
}
