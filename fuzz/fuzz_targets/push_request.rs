//! The push request path: any method, token, headers and body, sent through xup's real router
//! (store, limits, relay) with the component link down, as a sender on the internet could, to an
//! endpoint or to the Matrix gateway. Nothing may panic, every answer is one the protocol allows,
//! a `201` only ever accepts a body of 1 to 4096 bytes, and the gateway's `200` always lists what
//! it rejected.

#![no_main]

use std::{
    net::SocketAddr,
    sync::LazyLock,
    time::{Duration, SystemTime},
};

use arbitrary::Arbitrary;
use axum::{
    body::Body,
    extract::ConnectInfo,
    http::{HeaderName, HeaderValue, Method, Request},
};
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;
use xup::config::Config;

use xup_fuzz as seeds;

const MATRIX: &str = "/_matrix/push/v1/notify";

#[derive(Arbitrary, Debug)]
enum Token {
    /// The live endpoint.
    Live,
    /// The live endpoint with one byte replaced.
    Mangled {
        at: u16,
        byte: u8,
    },
    Raw(String),
}

/// Where the request goes.
#[derive(Arbitrary, Debug)]
enum Door {
    /// `/push/{token}`.
    Endpoint,
    /// The Matrix gateway, the body as it is.
    MatrixRaw,
    /// The Matrix gateway, a notify with the token's endpoint as the one pushkey and the body as
    /// the notification's content.
    Matrix,
}

#[derive(Arbitrary, Debug)]
struct Input {
    method: u8,
    door: Door,
    token: Token,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    peer: [u8; 4],
}

struct World {
    runtime: tokio::runtime::Runtime,
    router: axum::Router,
    live: String,
}

static WORLD: LazyLock<World> = LazyLock::new(|| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // On tmpfs where there is one, as every held message is an fsync. One fixed directory, emptied
    // at each start: libFuzzer exits without running destructors, so a temporary one would stay.
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        std::path::PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let store = base.join("xup-fuzz-push-request");
    let _ = std::fs::remove_dir_all(&store);
    let unlimited = r#"{ "burst": 4000000000, "every": "1ms" }"#;
    let config = Config::parse(&format!(
        r#"{{
          "component":    {{ "jid": "{}", "server": "127.0.0.1:9", "secret": "s" }},
          "http":         {{ "listen": "127.0.0.1:8080", "public_url": "https://up.localhost",
                            "body_timeout": "1s" }},
          "registration": {{ "secrets": {:?} }},
          "limits":       {{ "per_endpoint": {unlimited}, "per_address": {unlimited},
                            "forged_tokens_per_address": {unlimited} }},
          "store":        {{ "path": {:?} }}
        }}"#,
        seeds::COMPONENT,
        seeds::SECRETS,
        store.display().to_string(),
    ))
    .expect("config");
    let router = runtime.block_on(async { xup::start(&config).await.expect("xup starts").router });
    // Live now, unlike the seeds, which are sealed for a fixed moment.
    let now = SystemTime::now();
    let claims = xup::token::claims_for(
        seeds::SUBJECT,
        seeds::APP,
        seeds::INSTANCE,
        now,
        Duration::from_secs(7 * 86400),
    );
    let live = seeds::key_ring().issue(&claims).expect("token");
    World {
        runtime,
        router,
        live,
    }
});

fuzz_target!(|input: Input| {
    let world = &*WORLD;
    let token = match input.token {
        Token::Live => world.live.clone(),
        Token::Mangled { at, byte } => {
            let mut bytes = world.live.clone().into_bytes();
            let at = usize::from(at) % bytes.len();
            bytes[at] = byte;
            String::from_utf8_lossy(&bytes).into_owned()
        }
        Token::Raw(raw) => raw,
    };
    let methods = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::HEAD,
    ];
    let method = methods[usize::from(input.method) % methods.len()].clone();
    let (uri, body) = match input.door {
        Door::Endpoint => (format!("/push/{token}"), input.body),
        Door::MatrixRaw => (MATRIX.to_owned(), input.body),
        Door::Matrix => {
            let notify = serde_json::json!({ "notification": {
                "devices": [{ "pushkey": format!("https://up.localhost/push/{token}") }],
                "content": String::from_utf8_lossy(&input.body),
            }});
            (MATRIX.to_owned(), notify.to_string().into_bytes())
        }
    };
    let gateway = uri == MATRIX;
    let mut request = Request::builder().method(method.clone()).uri(uri);
    for (name, value) in &input.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value),
        ) {
            request = request.header(name, value);
        }
    }
    let body_len = body.len();
    let Ok(mut request) = request.body(Body::from(body)) else {
        return; // not a request hyper would ever hand over
    };
    let peer = SocketAddr::from((input.peer, 40000));
    request.extensions_mut().insert(ConnectInfo(peer));

    let response = world
        .runtime
        .block_on(world.router.clone().oneshot(request))
        .expect("the router is infallible");
    let status = response.status().as_u16();
    if gateway {
        assert!(
            [200, 400, 405, 408, 413, 429].contains(&status),
            "{status} is not an answer the gateway gives"
        );
        if status == 200 && method == Method::POST {
            let body = world
                .runtime
                .block_on(http_body_util::BodyExt::collect(response.into_body()))
                .expect("body")
                .to_bytes();
            let answer: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
            assert!(answer["rejected"].is_array(), "{answer}");
        }
        return;
    }
    assert!(
        [200, 201, 400, 404, 405, 408, 413, 429, 503].contains(&status),
        "{status} is not an answer xup gives"
    );
    if status == 201 {
        assert!(matches!(method, Method::POST | Method::PUT));
        assert!(
            (1..=4096).contains(&body_len),
            "201 for a body of {body_len} bytes"
        );
    }
});
