//! The other dialects: sum7's `unifiedpush.org`, the endpoints the Java `up` issued, and the
//! Matrix push gateway, each against the real XMPP server and real HTTP.

use std::time::{Duration, SystemTime};

use base64::Engine;
use serde_json::{Value, json};

use crate::harness::*;

/// A public token as sum7's distributor makes them: a UUID.
const PUBLIC: &str = "0b5bdf3d-5ea5-4bba-9f5c-0ab5a8f3d2d0";

#[tokio::test]
async fn a_sum7_distributor_registers_and_its_push_arrives_as_a_message() {
    let stack = Stack::start().await;
    let mut phone = stack.juliet("phone").await;
    let features = phone.disco_features().await;
    assert!(features.iter().any(|f| f == SUM7_NS), "{features:?}");
    assert!(features.iter().any(|f| f == UP_NS), "{features:?}");

    let endpoint = phone.sum7_register(PUBLIC).await.expect("registered");
    assert!(
        endpoint.starts_with(&format!("{}/push/v4.local.", stack.xup.base_url)),
        "{endpoint}"
    );
    let text = "{\"title\":\"grüße\",\"n\":1}\n\tsecond line";
    let response = post(&endpoint, text).await;
    assert_eq!(response.status(), 201);
    // Nobody answers a message: xup cannot say it will keep it.
    assert_eq!(response.headers()["ttl"], "0");
    let message = phone.next_message().await;
    assert_eq!(message.from, COMPONENT);
    assert_eq!(message.to, phone.jid);
    assert_eq!(message.type_, "normal");
    assert_eq!(message.subject, PUBLIC);
    assert_eq!(message.body, text);
    let location = response.headers()["location"].to_str().expect("ascii");
    assert_eq!(location, format!("/message/{}", message.id));

    // A Conversations registration of the same client is untouched by the other dialect.
    let conversations = phone.register(APP, INSTANCE).await.endpoint;
    assert_delivered(&conversations, &mut phone, b"\x00binary is fine here").await;
}

#[tokio::test]
async fn a_sum7_endpoint_takes_text_only_and_says_so() {
    let stack = Stack::start().await;
    let mut phone = stack.juliet("phone").await;
    let endpoint = phone.sum7_register(PUBLIC).await.expect("registered");
    for body in [vec![0xff, 0xfe, 0x00], b"escape \x1b[0m".to_vec()] {
        let response = post(&endpoint, body).await;
        assert_eq!(response.status(), 400);
        let reason = response.text().await.expect("body");
        assert!(reason.contains("takes text only"), "{reason}");
    }
    // Neither went out: the next message is the good one.
    assert_message_sent(&endpoint, &mut phone, "good").await;
}

#[tokio::test]
async fn a_refused_sum7_request_carries_both_kinds_of_error() {
    let stack = Stack::start().await;
    let mut phone = stack.juliet("phone").await;
    let refused = phone.sum7_register("").await.expect_err("refused");
    assert_eq!(
        refused.failure,
        IqFailure {
            condition: "bad-request".into(),
            error_type: "modify".into()
        }
    );
    assert!(refused.error_text.contains("token"), "{refused:?}");

    let mut eve = Peer::connect(&stack.server, "eve", OTHER_DOMAIN, "x").await;
    let refused = eve.sum7_register(PUBLIC).await.expect_err("refused");
    assert_eq!(
        refused.failure,
        IqFailure {
            condition: "forbidden".into(),
            error_type: "auth".into()
        }
    );
    assert!(!refused.error_text.is_empty());
}

#[tokio::test]
async fn sum7_unregister_revokes_every_endpoint_of_that_token() {
    let stack = Stack::start().await;
    let mut phone = stack.juliet("phone").await;
    let first = phone.sum7_register(PUBLIC).await.expect("registered");
    let second = phone.sum7_register(PUBLIC).await.expect("registered");
    let other = phone
        .sum7_register("another-app")
        .await
        .expect("registered");
    phone.sum7_unregister(PUBLIC).await;
    for endpoint in [&first, &second] {
        assert_eq!(post(endpoint, "x").await.status(), 404);
    }
    // Another app of the same distributor is untouched, and registering again works.
    assert_message_sent(&other, &mut phone, "still here").await;
    let again = phone.sum7_register(PUBLIC).await.expect("registered");
    assert_message_sent(&again, &mut phone, "back").await;
}

/// What DESIGN.md says the XMPP server does with a sum7 push for a client that is away: with no
/// other resource online it is stored offline and delivered when the account comes back (on a
/// new resource too); with another resource online, that one gets it.
#[tokio::test]
async fn a_sum7_push_for_a_client_that_is_away_is_the_servers_to_keep() {
    let stack = Stack::start().await;
    let mut romeo = Peer::connect(&stack.server, "romeo", DOMAIN, "x").await;
    let romeos = romeo.sum7_register(PUBLIC).await.expect("registered");
    let mut phone = stack.juliet("phone").await;
    let endpoint = phone.sum7_register(PUBLIC).await.expect("registered");
    phone.leave(&stack.server).await;
    let response = post(&endpoint, "while away").await;
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["ttl"], "0");
    // The server routes what comes over xup's link in order, so once Romeo has the push sent
    // after Juliet's, hers is in the server's offline store. Otherwise it could still be on its
    // way when her next session is between binding and its first presence, and ejabberd would
    // store it after that presence has fetched what was stored: kept for the session after.
    assert_message_sent(&romeos, &mut romeo, "after juliet's").await;
    let mut back = stack.juliet("phone-again").await;
    let message = back.next_message().await;
    assert_eq!(
        (message.subject.as_str(), message.body.as_str()),
        (PUBLIC, "while away")
    );

    let mut laptop = stack.juliet("laptop").await;
    back.quit().await;
    assert_message_sent(&endpoint, &mut laptop, "to whoever is there").await;
}

/// The Java `up`'s `registration.sharedSecret`, as its config holds it.
const UP_SECRET: [u8; 32] = [42; 32];

/// A token as the Java `up` issues it: PASETO v2.local under its secret, no footer, the claims
/// `sub`, `application`, `instance`, and `exp` in epoch milliseconds.
fn up_token(subject: &str, expires: SystemTime) -> String {
    let key =
        pasetors::keys::SymmetricKey::<pasetors::version2::V2>::from(&UP_SECRET).expect("key");
    let exp = expires
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after the epoch")
        .as_millis() as u64;
    let claims = json!({ "sub": subject, "exp": exp, "application": APP, "instance": INSTANCE });
    pasetors::version2::LocalToken::encrypt(&key, claims.to_string().as_bytes(), None)
        .expect("token")
}

fn with_up_secret(settings: &mut XupSettings) {
    let secret = base64::engine::general_purpose::STANDARD.encode(UP_SECRET);
    settings.registration = vec![("legacy_up_secret", json!(secret))];
}

#[tokio::test]
async fn an_endpoint_the_java_up_issued_still_reaches_its_client() {
    let stack = Stack::start_with(|s| {
        with_up_secret(s);
        s.limits = vec![(
            "forged_tokens_per_address",
            json!({ "burst": 1, "every": "1h" }),
        )];
    })
    .await;
    let mut phone = stack.juliet("phone").await;
    let base = format!("{}/push/", stack.xup.base_url);
    let week = Duration::from_secs(7 * 86400);
    let token = up_token(&phone.jid, SystemTime::now() + week);
    assert!(token.starts_with("v2.local."));

    let response = post(&format!("{base}{token}"), "from before the switch").await;
    assert_eq!(response.status(), 201);
    let push = phone.next_push().await;
    assert_eq!(push.data, b"from before the switch");
    assert_eq!(
        (push.application.as_str(), push.instance.as_str()),
        (APP, INSTANCE)
    );

    // Expired: dead, but no forgery.
    let expired = up_token(&phone.jid, SystemTime::now() - Duration::from_secs(1));
    assert_eq!(post(&format!("{base}{expired}"), "x").await.status(), 404);
    // Tampered: dead, and a forgery: the budget of one is spent by it, so the next is 429.
    let mut tampered = token.clone().into_bytes();
    tampered[20] = if tampered[20] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).expect("ascii");
    assert_eq!(post(&format!("{base}{tampered}"), "x").await.status(), 404);
    assert_eq!(post(&format!("{base}{tampered}"), "x").await.status(), 429);

    // A revocation from the client holds for the old token too.
    phone.answer_with("item-not-found").await;
    let fresh = phone.register(APP, INSTANCE).await.endpoint;
    assert_eq!(post(&fresh, "gone").await.status(), 404);
    assert_eq!(post(&format!("{base}{token}"), "x").await.status(), 404);
}

#[tokio::test]
async fn without_the_secret_the_java_ups_tokens_are_dead() {
    let stack = Stack::start().await;
    let phone = stack.juliet("phone").await;
    let token = up_token(&phone.jid, SystemTime::now() + Duration::from_secs(86400));
    let response = post(&format!("{}/push/{token}", stack.xup.base_url), "x").await;
    assert_eq!(response.status(), 404);
}

#[tokio::test]
async fn the_java_ups_query_template_is_served_where_it_put_the_token() {
    let stack = Stack::start_with(|s| {
        with_up_secret(s);
        let uri = format!("http://127.0.0.1:{}/up{{?token}}", s.http_port);
        s.registration.push(("legacy_up_uri", json!(uri)));
    })
    .await;
    let mut phone = stack.juliet("phone").await;
    let token = up_token(&phone.jid, SystemTime::now() + Duration::from_secs(86400));
    let url = format!("{}/up?token={token}", stack.xup.base_url);
    assert_eq!(post(&url, "by query").await.status(), 201);
    assert_eq!(phone.next_push().await.data, b"by query");
    assert_eq!(
        post(&format!("{}/up", stack.xup.base_url), "x")
            .await
            .status(),
        404
    );
}

/// A notify as Synapse's `HttpPusher` sends it, for `pushkeys`.
fn synapse_notify(pushkeys: &[&str]) -> Value {
    let devices: Vec<Value> = pushkeys
        .iter()
        .map(|pushkey| {
            json!({
                "app_id": "im.vector.app.android.data",
                "pushkey": pushkey,
                "pushkey_ts": 1700000000,
                "data": { "url": "https://up.localhost/_matrix/push/v1/notify" },
                "tweaks": { "sound": "default" }
            })
        })
        .collect();
    json!({
        "notification": {
            "event_id": "$3957tyerfgewrf384",
            "room_id": "!slw48wfj34rtnrf:example.org",
            "type": "m.room.message",
            "sender": "@exampleuser:matrix.org",
            "sender_display_name": "Major Tom",
            "room_name": "Mission Control",
            "prio": "high",
            "content": { "msgtype": "m.text", "body": "I'm floating in a most peculiar way." },
            "counts": { "unread": 2, "missed_calls": 1 },
            "devices": devices
        }
    })
}

#[tokio::test]
async fn a_matrix_homeserver_notifies_through_xup_and_hears_which_pushkeys_to_drop() {
    let stack = Stack::start().await;
    let mut phone = stack.juliet("phone").await;
    let ours = phone.register(APP, INSTANCE).await.endpoint;
    // One the client revoked earlier, and one whose client answers "gone" during this notify.
    let gone_app = other_app();
    phone.answer_for(&gone_app, "item-not-found").await;
    let revoked = phone.register(&gone_app, INSTANCE).await.endpoint;
    assert_eq!(post(&revoked, "x").await.status(), 404);
    assert_eq!(phone.next_push().await.application, gone_app);
    let third_app = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
    phone.answer_for(&third_app, "item-not-found").await;
    let refusing = phone.register(&third_app, INSTANCE).await.endpoint;
    let foreign = "https://push.example.net/push/v4.local.AAAA";
    let unparsable = format!("{}/push/not%20a%20token", stack.xup.base_url);

    let gateway = format!("{}/_matrix/push/v1/notify", stack.xup.base_url);
    let notify = synapse_notify(&[&ours, foreign, &revoked, &refusing, &unparsable]);
    let response = reqwest::Client::new()
        .post(&gateway)
        .json(&notify)
        .send()
        .await
        .expect("notify");
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.expect("JSON");
    let mut rejected: Vec<&str> = answer["rejected"]
        .as_array()
        .expect("rejected")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    rejected.sort();
    let mut expected = vec![
        foreign,
        revoked.as_str(),
        refusing.as_str(),
        unparsable.as_str(),
    ];
    expected.sort();
    assert_eq!(rejected, expected);

    // Our device got the notification without its devices, as UnifiedPush's gateways send it.
    let mut pushes = [phone.next_push().await, phone.next_push().await];
    pushes.sort_by_key(|p| p.application != APP);
    assert_eq!(pushes[0].application, APP);
    let body: Value = serde_json::from_slice(&pushes[0].data).expect("JSON");
    let mut want = notify.clone();
    want["notification"]
        .as_object_mut()
        .expect("object")
        .remove("devices");
    assert_eq!(body, want);
    // The refusing app was offered it too, and said it is gone: its endpoint is dead now.
    assert_eq!(pushes[1].application, third_app);
    assert_eq!(post(&refusing, "x").await.status(), 404);

    let (status, discovery) = get(&gateway).await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&discovery).expect("JSON"),
        json!({ "gateway": "matrix", "unifiedpush": { "gateway": "matrix" } })
    );
}

#[tokio::test]
async fn a_matrix_client_that_is_away_is_not_rejected_and_its_notification_is_held() {
    let stack = Stack::start().await;
    let mut phone = stack.juliet("phone").await;
    let endpoint = phone.register(APP, INSTANCE).await.endpoint;
    phone.answer_with("service-unavailable").await;
    let gateway = format!("{}/_matrix/push/v1/notify", stack.xup.base_url);
    let response = reqwest::Client::new()
        .post(&gateway)
        .json(&synapse_notify(&[&endpoint]))
        .send()
        .await
        .expect("notify");
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.expect("JSON");
    assert_eq!(answer, json!({ "rejected": [] }));
    phone.next_push().await;
    assert_eq!(stack.metric("xup_held_messages").await, 1.0);
}

#[tokio::test]
async fn a_malformed_or_huge_notify_is_refused_with_a_reason() {
    let stack = Stack::start().await;
    let gateway = format!("{}/_matrix/push/v1/notify", stack.xup.base_url);
    let response = post(&gateway, "{\"notification\": ").await;
    assert_eq!(response.status(), 400);
    let reason = response.text().await.expect("text");
    assert!(reason.contains("not JSON"), "{reason}");
    let response = post(&gateway, "{\"notification\": {\"devices\": 3}}").await;
    assert_eq!(response.status(), 400);
    assert!(response.text().await.expect("text").contains("devices"));
    let response = post(&gateway, vec![b' '; 70 * 1024]).await;
    assert_eq!(response.status(), 413);
}

#[tokio::test]
async fn a_matrix_pushkey_the_java_up_issued_is_relayed_too() {
    let stack = Stack::start_with(with_up_secret).await;
    let mut phone = stack.juliet("phone").await;
    let token = up_token(&phone.jid, SystemTime::now() + Duration::from_secs(86400));
    let pushkey = format!("{}/push/{token}", stack.xup.base_url);
    let response = reqwest::Client::new()
        .post(format!("{}/_matrix/push/v1/notify", stack.xup.base_url))
        .json(&synapse_notify(&[&pushkey]))
        .send()
        .await
        .expect("notify");
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.expect("JSON");
    assert_eq!(answer, json!({ "rejected": [] }));
    let push = phone.next_push().await;
    let body: Value = serde_json::from_slice(&push.data).expect("JSON");
    assert_eq!(body["notification"]["event_id"], "$3957tyerfgewrf384");
}

/// One account cannot grow the store by unregistering tokens it makes up, whoever the access list
/// admits: past its share of kept revocations the next `<unregister>` is refused (the endpoint then
/// expires by itself), and another account's are not.
#[tokio::test]
async fn one_account_keeps_at_most_its_share_of_unregistrations() {
    let stack = Stack::start_with(|s| {
        s.allow = Some(vec!["*".into()]);
        s.without_rate_limits();
    })
    .await;
    let mut phone = stack.juliet("phone").await;
    for n in 0..xup::dialects::sum7::MAX_UNREGISTERED_PER_ACCOUNT {
        phone.sum7_unregister(&format!("made-up-{n}")).await;
    }
    // The same token again changes nothing that is counted.
    phone.sum7_unregister("made-up-0").await;
    let refused = phone
        .sum7_try_unregister("one too many")
        .await
        .expect_err("past the share");
    assert_eq!(
        refused.failure,
        IqFailure {
            condition: "resource-constraint".into(),
            error_type: "wait".into()
        }
    );
    let mut romeo = Peer::connect(&stack.server, "romeo", DOMAIN, "x").await;
    romeo.sum7_unregister("made-up-0").await;
}

/// A component link that runs through the test. It passes both ways until told to `hold` (take
/// nothing more of what xup writes), and then to `cut`: as a server that ends the stream, it sends
/// xup the stream's footer, takes everything xup wrote until xup closes, hands it all to the
/// server, and closes. Connections after that pass through.
struct LinkProxy {
    port: u16,
    hold: tokio::sync::watch::Sender<bool>,
    cut: std::sync::Arc<tokio::sync::Notify>,
}

impl LinkProxy {
    async fn start(server_port: u16) -> LinkProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("address").port();
        let (hold, holding) = tokio::sync::watch::channel(false);
        let cut = std::sync::Arc::new(tokio::sync::Notify::new());
        let cutting = cut.clone();
        tokio::spawn(async move {
            while let Ok((xup, _)) = listener.accept().await {
                let server = tokio::net::TcpStream::connect(("127.0.0.1", server_port))
                    .await
                    .expect("the server's component port");
                tokio::spawn(pass(xup, server, holding.clone(), cutting.clone()));
            }
        });
        LinkProxy { port, hold, cut }
    }
}

async fn pass(
    xup: tokio::net::TcpStream,
    server: tokio::net::TcpStream,
    mut hold: tokio::sync::watch::Receiver<bool>,
    cut: std::sync::Arc<tokio::sync::Notify>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut from_xup, mut to_xup) = xup.into_split();
    let (mut from_server, mut to_server) = server.into_split();
    let (mut up, mut down) = (vec![0u8; 65536], vec![0u8; 65536]);
    let mut cutting = false;
    loop {
        let held = *hold.borrow();
        tokio::select! {
            read = from_server.read(&mut down), if !cutting => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => if to_xup.write_all(&down[..n]).await.is_err() { return },
            },
            read = from_xup.read(&mut up), if !held || cutting => match read {
                Ok(0) | Err(_) => {
                    let _ = to_server.shutdown().await;
                    // The server reads it all, then sees the end.
                    let _ = from_server.read_to_end(&mut Vec::new()).await;
                    return;
                }
                Ok(n) => if to_server.write_all(&up[..n]).await.is_err() { return },
            },
            () = cut.notified(), if !cutting => {
                cutting = true;
                let _ = to_xup.write_all(b"</stream:stream>").await;
            }
            _ = hold.changed() => {}
        }
    }
}

/// A sum7 push is answered `201` only once its `<message>` is written to the link. Pushes pile up
/// behind a link that takes nothing more, and then the server ends the stream (everything xup
/// wrote still reaches it): every push answered `201` reaches the client, and those still queued
/// are answered `503`, for their senders to send again. (Before, a push was `201` once queued,
/// and the queue was dropped with the link.)
#[tokio::test]
async fn a_sum7_push_answered_201_is_not_lost_with_the_link() {
    // Enough to fill the sockets' buffers (about 4 MB on loopback) and queue the rest.
    const PUSHES: usize = 3000;
    let server = Server::start().await;
    let proxy = LinkProxy::start(server.component_port()).await;
    let store = tempfile::tempdir().expect("store dir");
    let mut settings = XupSettings::new(store.path());
    settings.without_rate_limits();
    let _xup = Xup::start(xup_binary(), proxy.port, &settings).await;
    let mut phone = Peer::connect(&server, "juliet", DOMAIN, "phone").await;
    let endpoint = phone.sum7_register(PUBLIC).await.expect("registered");

    proxy.hold.send_replace(true);
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut pushes = tokio::task::JoinSet::new();
    // HTTP/2 allows 128 streams a connection: a client (and a connection) per 125 pushes.
    let clients: Vec<reqwest::Client> = (0..PUSHES.div_ceil(125))
        .map(|_| {
            reqwest::Client::builder()
                .http2_prior_knowledge()
                .build()
                .expect("client")
        })
        .collect();
    for n in 0..PUSHES {
        let (client, endpoint, answered) =
            (clients[n / 125].clone(), endpoint.clone(), answered.clone());
        pushes.spawn(async move {
            let body = format!("{n:04} {}", "x".repeat(3800));
            let status = client
                .post(&endpoint)
                .body(body)
                .send()
                .await
                .map(|response| response.status().as_u16())
                .unwrap_or(0);
            answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            (n, status)
        });
    }
    // The link takes nothing more: wait until the answers stop coming.
    let deadline = std::time::Instant::now() + WAIT;
    let mut seen = usize::MAX;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = answered.load(std::sync::atomic::Ordering::Relaxed);
        if now == seen || std::time::Instant::now() > deadline {
            break;
        }
        seen = now;
    }
    assert!(
        seen < PUSHES,
        "every push was answered while the link was held"
    );
    proxy.cut.notify_one();
    proxy.hold.send_replace(false);
    let mut sent = std::collections::BTreeSet::new();
    let mut refused = 0;
    while let Some(push) = pushes.join_next().await {
        match push.expect("push task") {
            (n, 201) => {
                sent.insert(n);
            }
            (_, 503) => refused += 1,
            (n, status) => panic!("push {n}: {status}"),
        }
    }
    assert!(
        refused > 0,
        "some pushes were still queued when the link broke"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut received = std::collections::BTreeSet::new();
    while !sent.is_subset(&received) {
        assert!(
            std::time::Instant::now() < deadline,
            "{} pushes answered 201 never arrived",
            sent.difference(&received).count()
        );
        let message = phone.next_message().await;
        let n: usize = message.body[..4].parse().expect("a numbered push");
        received.insert(n);
    }
    eprintln!(
        "{} answered 201, all received; {refused} answered 503",
        sent.len()
    );
}
