//! Hostile and careless senders against the real stack: oversized and slow requests, idle
//! sockets, forged tokens, floods of pushes and of registrations.

use std::{net::IpAddr, time::Instant};

use futures::StreamExt;
use serde_json::json;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::timeout,
};

use crate::harness::*;

/// A second loopback address, so one test can be two senders.
const OTHER_SENDER: [u8; 4] = [127, 0, 0, 2];

/// The path part of `endpoint`, for requests written by hand.
fn path_of(endpoint: &str) -> &str {
    let start = endpoint.find("/push/").expect("an endpoint path");
    &endpoint[start..]
}

async fn connect(stack: &Stack) -> TcpStream {
    TcpStream::connect(("127.0.0.1", stack.settings.http_port))
        .await
        .expect("connect to xup")
}

/// Everything the server sends until it closes the connection or `WAIT` runs out.
async fn read_until_closed(socket: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    let read = timeout(WAIT, async {
        let mut buf = [0u8; 4096];
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "xup kept the connection open for {WAIT:?}");
    String::from_utf8_lossy(&answer).into_owned()
}

/// The status code of the first response in `answer`.
fn status_of(answer: &str) -> u16 {
    answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP response in {answer:?}"))
}

fn client_from(address: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::from(address))
        .build()
        .expect("client")
}

#[tokio::test]
async fn a_huge_or_lying_body_gets_413_before_it_is_read() {
    // A server that waited for these bodies would answer nothing for 60 s, then 408.
    let stack = Stack::start_with(|s| s.http = vec![("body_timeout", json!("60s"))]).await;
    let mut phone = stack.juliet("phone").await;
    let endpoint = phone.register(APP, INSTANCE).await.endpoint;
    let path = path_of(&endpoint);

    // 1 MiB announced: the first 64 KiB is sent, the rest never is.
    let mut socket = connect(&stack).await;
    let head = format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n\r\n");
    socket.write_all(head.as_bytes()).await.expect("write");
    let _ = socket.write_all(&[b'x'; 65536]).await;
    let started = Instant::now();
    let answer = read_until_closed(&mut socket).await;
    assert_eq!(status_of(&answer), 413, "{answer}");
    eprintln!("1 MiB declared: 413 after {:?}", started.elapsed());

    // A length that lies: 10 bytes sent of the 5000 declared.
    let mut socket = connect(&stack).await;
    let head = format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n0123456789");
    socket.write_all(head.as_bytes()).await.expect("write");
    assert_eq!(status_of(&read_until_closed(&mut socket).await), 413);

    // No length at all: a chunked body is cut off once 4096 bytes have come (64 KiB are sent of
    // the 1 MiB it would be).
    let mut socket = connect(&stack).await;
    let head = format!("POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
    socket.write_all(head.as_bytes()).await.expect("write");
    let _ = socket.write_all(b"10000\r\n").await;
    let _ = socket.write_all(&[b'y'; 65536]).await;
    assert_eq!(status_of(&read_until_closed(&mut socket).await), 413);

    assert_eq!(post(&endpoint, vec![b'x'; 4097]).await.status(), 413);
    assert_delivered(&endpoint, &mut phone, b"and a fair one is delivered").await;
}

#[tokio::test]
async fn idle_and_trickling_connections_are_closed() {
    let stack = Stack::start_with(|s| {
        s.http = vec![
            ("header_timeout", json!("1s")),
            ("body_timeout", json!("1s")),
        ];
    })
    .await;
    let mut phone = stack.juliet("phone").await;
    let endpoint = phone.register(APP, INSTANCE).await.endpoint;
    let path = path_of(&endpoint);

    // Says nothing at all.
    let mut silent = connect(&stack).await;
    // Half an HTTP/1.1 head, then nothing.
    let mut half_head = connect(&stack).await;
    half_head
        .write_all(format!("POST {path} HTTP/1.1\r\nHost: x\r\n").as_bytes())
        .await
        .expect("write");
    // Half the HTTP/2 preface, so the server cannot even tell which protocol it is.
    let mut half_preface = connect(&stack).await;
    half_preface
        .write_all(b"PRI * HTTP/2.0\r\n")
        .await
        .expect("write");
    // A whole head, then 10 of the 100 bytes of body it announced.
    let mut slow_body = connect(&stack).await;
    let head = format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789");
    slow_body.write_all(head.as_bytes()).await.expect("write");
    // One request answered, then the kept-alive connection idles.
    let mut kept_alive = connect(&stack).await;
    kept_alive
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .expect("write");

    assert_eq!(read_until_closed(&mut silent).await, "");
    assert_eq!(read_until_closed(&mut half_head).await, "");
    assert_eq!(read_until_closed(&mut half_preface).await, "");
    assert_eq!(status_of(&read_until_closed(&mut slow_body).await), 408);
    assert_eq!(status_of(&read_until_closed(&mut kept_alive).await), 200);
    assert_delivered(&endpoint, &mut phone, b"still serving").await;
}

#[tokio::test]
async fn two_hundred_idle_sockets_do_not_slow_a_normal_push() {
    let stack = Stack::start().await;
    let mut phone = stack.juliet("phone").await;
    let endpoint = phone.register(APP, INSTANCE).await.endpoint;

    let started = Instant::now();
    assert_delivered(&endpoint, &mut phone, b"before").await;
    let alone = started.elapsed();

    let mut idle = Vec::new();
    for _ in 0..200 {
        idle.push(connect(&stack).await);
    }
    let started = Instant::now();
    assert_delivered(&endpoint, &mut phone, b"beside 200 idle sockets").await;
    let beside_idle = started.elapsed();
    // Still open: the push did not get through because the idle ones had been dropped.
    let mut probe = [0u8; 1];
    assert!(
        idle[0].try_read(&mut probe).is_err(),
        "the idle sockets are still open and silent"
    );
    eprintln!("push alone {alone:?}, beside 200 idle sockets {beside_idle:?}");
}

#[tokio::test]
async fn connections_past_the_cap_are_closed_at_once() {
    // Admitted connections would be kept for a minute: only the cap can close one sooner.
    let stack = Stack::start_with(|s| {
        s.http = vec![
            ("max_connections", json!(20)),
            ("header_timeout", json!("60s")),
        ];
    })
    .await;
    let mut phone = stack.juliet("phone").await;
    let endpoint = phone.register(APP, INSTANCE).await.endpoint;

    let mut admitted = Vec::new();
    for _ in 0..20 {
        admitted.push(connect(&stack).await);
    }
    // xup accepts in the order connections arrived, so this one is the 21st.
    let mut over = connect(&stack).await;
    assert_eq!(
        read_until_closed(&mut over).await,
        "",
        "closed without a word"
    );
    // The admitted ones are served.
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        path_of(&endpoint)
    );
    admitted[19]
        .write_all(request.as_bytes())
        .await
        .expect("write");
    assert_eq!(status_of(&read_until_closed(&mut admitted[19]).await), 200);
}

/// 5000 tokens that are not xup's, of every kind, each as its own request.
fn forgeries(token: &str, foreign: &str) -> Vec<String> {
    let (body, footer) = token.rsplit_once('.').expect("a footer");
    let foreign_body = foreign.rsplit_once('.').expect("a footer").0;
    let mut kinds: Vec<Box<dyn Fn(usize) -> String>> = Vec::new();
    // One character of the ciphertext changed, at every position in turn.
    kinds.push(Box::new(move |i| {
        let mut bytes = token.as_bytes().to_vec();
        // Not the last character: some of its bits may be base64 padding that decodes the same.
        let at = "v4.local.".len() + i % (body.len() - "v4.local.".len() - 1);
        bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
        String::from_utf8(bytes).expect("ascii")
    }));
    // Cut short.
    kinds.push(Box::new(move |i| {
        token[..token.len() - 1 - i % 100].to_owned()
    }));
    // Another version or purpose.
    kinds.push(Box::new(move |i| {
        let prefix = ["v3.local.", "v4.public.", "v2.local.", "v4.LOCAL."][i % 4];
        format!("{prefix}{}", &token["v4.local.".len()..])
    }));
    // Encrypted under another key, yet naming ours.
    kinds.push(Box::new(move |_| format!("{foreign_body}.{footer}")));
    // Plain garbage of every length.
    kinds.push(Box::new(|i| "x".repeat(1 + i % 900)));
    (0..5000).map(|i| kinds[i % kinds.len()](i)).collect()
}

#[tokio::test]
async fn five_thousand_forged_tokens_get_404_send_nothing_and_a_real_push_gets_through() {
    let stack = Stack::start_with(|s| {
        // This test is about what a forgery costs and causes, not about limiting its sender.
        s.limits = vec![
            ("per_address", json!({ "burst": 100_000, "every": "1ms" })),
            (
                "forged_tokens_per_address",
                json!({ "burst": 100_000, "every": "1ms" }),
            ),
        ];
    })
    .await;
    let mut phone = stack.juliet("phone").await;
    let endpoint = phone.register(APP, INSTANCE).await.endpoint;
    let base = format!("{}/push/", stack.xup.base_url);
    let token = endpoint.strip_prefix(&base).expect("our prefix").to_owned();
    let foreign = xup::token::KeyRing::new(&["another provider's secret".to_owned()], COMPONENT)
        .expect("keys")
        .issue(&xup::token::claims_for(
            &phone.jid,
            APP,
            INSTANCE,
            std::time::SystemTime::now(),
            std::time::Duration::from_secs(7 * 86400),
        ))
        .expect("token");
    let forged = forgeries(&token, &foreign);

    let client = reqwest::Client::new();
    let flood = futures::stream::iter(forged.iter().map(|fake| {
        let request = client.post(format!("{base}{fake}")).body("forged");
        async move { request.send().await.map(|r| r.status().as_u16()) }
    }))
    .buffer_unordered(32)
    .collect::<Vec<_>>();
    let real = async {
        let response = post(&endpoint, "real, during the flood").await;
        assert_eq!(response.status(), 201);
        phone.next_push().await
    };
    let (statuses, delivered) = tokio::join!(flood, real);
    assert_eq!(delivered.data, b"real, during the flood");

    let not_404: Vec<_> = statuses.iter().filter(|s| !matches!(s, Ok(404))).collect();
    assert!(
        not_404.is_empty(),
        "{} of 5000 were not 404: {:?}",
        not_404.len(),
        &not_404[..not_404.len().min(5)]
    );
    // No forgery reached the client: the next push it sees is this one.
    assert_delivered(&endpoint, &mut phone, b"after the flood").await;
}

#[tokio::test]
async fn forgeries_past_the_budget_get_429_for_their_sender_only() {
    let stack = Stack::start_with(|s| {
        s.limits = vec![(
            "forged_tokens_per_address",
            json!({ "burst": 5, "every": "1h" }),
        )];
    })
    .await;
    let mut phone = stack.juliet("phone").await;
    let endpoint = phone.register(APP, INSTANCE).await.endpoint;
    let base = format!("{}/push/", stack.xup.base_url);
    let guesser = client_from(OTHER_SENDER);

    for i in 0..5 {
        let response = guesser
            .post(format!("{base}v4.local.guess{i}"))
            .body("x")
            .send()
            .await;
        assert_eq!(
            response.expect("answer").status(),
            404,
            "guess {i} is within the budget"
        );
    }
    let response = guesser
        .post(format!("{base}v4.local.guess5"))
        .body("x")
        .send()
        .await;
    let response = response.expect("answer");
    assert_eq!(response.status(), 429);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .ok()
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in seconds");
    assert!((3000..=3600).contains(&retry_after), "{retry_after}");
    // The guesser's real endpoint still works: only forgeries are counted and refused.
    let response = guesser
        .post(&endpoint)
        .body("from the guesser")
        .send()
        .await;
    assert_eq!(response.expect("answer").status(), 201);
    assert_eq!(phone.next_push().await.data, b"from the guesser");
    // Another sender's forgery is still a plain 404.
    assert_eq!(
        post(&format!("{base}v4.local.guess6"), "x").await.status(),
        404
    );
}

#[tokio::test]
async fn a_flooded_endpoint_gets_429_and_others_are_unaffected() {
    let stack = Stack::start_with(|s| {
        s.limits = vec![("per_endpoint", json!({ "burst": 5, "every": "1h" }))];
    })
    .await;
    let mut phone = stack.juliet("phone").await;
    let flooded = phone.register(APP, INSTANCE).await.endpoint;
    let other = phone.register(&other_app(), INSTANCE).await.endpoint;
    // Another token of the same registration (a re-register returns the same endpoint now, but
    // an endpoint issued before stable endpoints, or at an earlier renewal, is another) shares
    // its bucket.
    let token = xup::token::KeyRing::new(&[SECRET_A.to_owned()], COMPONENT)
        .expect("keys")
        .issue(&xup::token::claims_for(
            &phone.jid,
            APP,
            INSTANCE,
            std::time::SystemTime::now(),
            std::time::Duration::from_secs(86400),
        ))
        .expect("token");
    let flooded_again = format!("{}/push/{token}", stack.xup.base_url);
    assert_ne!(flooded, flooded_again);

    for i in 0..5 {
        assert_delivered(&flooded, &mut phone, format!("burst {i}").as_bytes()).await;
    }
    for endpoint in [&flooded, &flooded_again] {
        let response = post(endpoint, "one too many").await;
        assert_eq!(response.status(), 429);
        assert!(response.headers().contains_key("retry-after"));
    }
    assert_delivered(&other, &mut phone, b"the other app is unaffected").await;
}

#[tokio::test]
async fn a_flooding_address_gets_429_and_others_are_unaffected() {
    let stack = Stack::start_with(|s| {
        s.limits = vec![("per_address", json!({ "burst": 5, "every": "1h" }))];
    })
    .await;
    let mut phone = stack.juliet("phone").await;
    let endpoint = phone.register(APP, INSTANCE).await.endpoint;
    let flooder = client_from(OTHER_SENDER);
    for i in 0..5 {
        let response = flooder.post(&endpoint).body(format!("{i}")).send().await;
        assert_eq!(response.expect("answer").status(), 201);
        phone.next_push().await;
    }
    let response = flooder.get(&endpoint).send().await.expect("answer");
    assert_eq!(response.status(), 429, "discovery counts too");
    assert_delivered(&endpoint, &mut phone, b"from another address").await;
}

#[tokio::test]
async fn a_register_flood_from_one_account_is_limited_and_others_are_not() {
    let stack = Stack::start_with(|s| {
        s.limits = vec![(
            "registrations_per_account",
            json!({ "burst": 3, "every": "1h" }),
        )];
    })
    .await;
    let mut phone = stack.juliet("phone").await;
    let mut laptop = stack.juliet("laptop").await;
    for _ in 0..3 {
        phone.register(APP, INSTANCE).await;
    }
    for peer in [&mut phone, &mut laptop] {
        let refused = peer
            .register_raw(Some(APP), Some(INSTANCE))
            .await
            .expect_err("over the account's limit, whichever of its clients asks");
        assert_eq!(
            refused,
            IqFailure {
                condition: "resource-constraint".into(),
                error_type: "wait".into()
            }
        );
    }
    let mut romeo = Peer::connect(&stack.server, "romeo", DOMAIN, "phone").await;
    let endpoint = romeo.register(APP, INSTANCE).await.endpoint;
    assert_delivered(&endpoint, &mut romeo, b"romeo is unaffected").await;
}

#[tokio::test]
async fn info_logs_name_no_account_and_no_token() {
    let mut stack = Stack::start_with(|s| s.log_filter = "info").await;
    let mut phone = stack.juliet("phone").await;
    let endpoint = phone.register(APP, INSTANCE).await.endpoint;
    let token = endpoint.rsplit('/').next().expect("a token").to_owned();
    // A delivery, a forgery, a held message, and a revocation: each logs what it logs.
    assert_delivered(&endpoint, &mut phone, b"delivered").await;
    assert_eq!(post(&format!("{endpoint}x"), "forged").await.status(), 404);
    phone.answer_with("service-unavailable").await;
    assert_eq!(post(&endpoint, "held").await.status(), 201);
    phone.answer_with("item-not-found").await;
    phone.announce().await;
    stack.xup.wait_log("endpoint revoked by its client").await;
    assert!(stack.xup.stop().await.success());
    stack.xup.wait_log("component link closed").await;

    let lines = stack.xup.logs_so_far();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("endpoint revoked by its client")),
        "every line was kept: {lines:?}"
    );
    // The token's ciphertext, less the fixed prefix: any 16 characters of it would identify it.
    let secret_part = &token["v4.local.".len()..];
    for line in &lines {
        assert!(!line.contains("juliet"), "a JID in an info line: {line}");
        assert!(
            !secret_part
                .as_bytes()
                .windows(16)
                .any(|w| line.as_bytes().windows(16).any(|l| l == w)),
            "part of a token in an info line: {line}"
        );
    }
}

/// A sender that opens pushes and trickles their bodies, 200 of them over HTTP/2, ties up its own
/// streams and nothing else: no slot among the pushes in flight, so a normal push still gets `201`
/// (with the slots taken first, as before, the 150 slots were all theirs and it got `503`).
#[tokio::test]
async fn two_hundred_trickled_bodies_take_no_slot_from_a_normal_push() {
    let stack = Stack::start_with(|s| {
        s.http = vec![
            ("max_in_flight", json!(150)),
            ("body_timeout", json!("60s")),
        ];
    })
    .await;
    let mut phone = stack.juliet("phone").await;
    let endpoint = phone.register(APP, INSTANCE).await.endpoint;
    let mut trickles = tokio::task::JoinSet::new();
    // HTTP/2 allows 128 streams a connection (`listener.rs`): two connections, 100 each.
    for _ in 0..2 {
        let client = reqwest::Client::builder()
            .http2_prior_knowledge()
            .build()
            .expect("client");
        for _ in 0..100 {
            let (client, endpoint) = (client.clone(), endpoint.clone());
            trickles.spawn(async move {
                // One byte of the hundred announced, and then nothing.
                let body = futures::stream::once(async { Ok::<_, std::io::Error>(vec![b'x']) })
                    .chain(futures::stream::pending());
                let _ = client
                    .post(&endpoint)
                    .header("content-length", "100")
                    .body(reqwest::Body::wrap_stream(body))
                    .send()
                    .await;
            });
        }
    }
    let deadline = Instant::now() + WAIT;
    while stack.metric("xup_request_bodies_being_read").await < 200.0 {
        assert!(
            Instant::now() < deadline,
            "xup never read 200 bodies at once"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(stack.metric("xup_pushes_in_flight").await, 0.0);
    assert_delivered(&endpoint, &mut phone, b"a normal push among trickles").await;
    trickles.abort_all();
}

/// A connection from `address` to xup.
async fn connect_from(stack: &Stack, address: [u8; 4]) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind((IpAddr::from(address), 0).into())
        .expect("bind a loopback address");
    socket
        .connect(([127, 0, 0, 1], stack.settings.http_port).into())
        .await
        .expect("connect to xup")
}

/// One address cannot take every connection: past its share the next is closed without a word,
/// while another address, and a trusted proxy's, are still served.
#[tokio::test]
async fn one_address_holds_at_most_its_share_of_the_connections() {
    let stack = Stack::start_with(|s| {
        s.http = vec![
            ("max_connections", json!(50)),
            ("max_connections_per_address", json!(5)),
            ("header_timeout", json!("60s")),
        ];
    })
    .await;
    let mut phone = stack.juliet("phone").await;
    let endpoint = phone.register(APP, INSTANCE).await.endpoint;
    let discover = format!(
        "GET {} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        path_of(&endpoint)
    );

    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(connect_from(&stack, OTHER_SENDER).await);
    }
    // Accepted in the order they arrived, so this is the sixth; it would be answered 200 if
    // it had been let in.
    let mut over = connect_from(&stack, OTHER_SENDER).await;
    let _ = over.write_all(discover.as_bytes()).await;
    assert_eq!(
        read_until_closed(&mut over).await,
        "",
        "closed without a word"
    );
    // Another address, and 127.0.0.1 (a trusted proxy by default), are served meanwhile.
    let mut other = connect_from(&stack, [127, 0, 0, 3]).await;
    other.write_all(discover.as_bytes()).await.expect("write");
    assert_eq!(status_of(&read_until_closed(&mut other).await), 200);
    assert_delivered(&endpoint, &mut phone, b"from the trusted proxy").await;
    // The ones it holds are served; once one is closed, its address may connect again.
    held[0].write_all(discover.as_bytes()).await.expect("write");
    assert_eq!(status_of(&read_until_closed(&mut held[0]).await), 200);
    drop(held.remove(0));
    let mut again = connect_from(&stack, OTHER_SENDER).await;
    again.write_all(discover.as_bytes()).await.expect("write");
    assert_eq!(status_of(&read_until_closed(&mut again).await), 200);
}
