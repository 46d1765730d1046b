//! What an operator's monitoring sees: `/health` follows the component link, and `/metrics`
//! counts what happened.

use serde_json::{Value, json};

use crate::harness::*;

#[tokio::test]
async fn health_follows_the_component_link() {
    let mut stack = Stack::start().await;
    let health = format!("{}/health", stack.xup.base_url);
    let (status, body) = get(&health).await;
    let body: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(status, 200);
    assert_eq!(body["component_link"], "up");
    assert!(body["uptime_seconds"].is_u64());

    stack.server.kill().await;
    stack.xup.wait_log("component link down").await;
    let (status, body) = get(&health).await;
    assert_eq!(status, 503);
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("JSON")["component_link"],
        "down"
    );

    stack.server.restart().await;
    stack.xup.wait_log("component link up").await;
    assert_eq!(get(&health).await.0, 200);
    let (_, page) = get(&format!("{}/metrics", stack.xup.base_url)).await;
    assert_eq!(sample(&page, "xup_component_connects_total"), 2.0);
    assert_eq!(sample(&page, "xup_component_link_up"), 1.0);
}

#[tokio::test]
async fn metrics_count_pushes_registrations_and_limits() {
    let stack = Stack::start_with(|s| {
        // Three: the delivered push, the oversized one (counted before its body is read), the held one.
        s.limits = vec![("per_endpoint", json!({ "burst": 3, "every": "1h" }))];
    })
    .await;
    let mut phone = stack.juliet("phone").await;
    let endpoint = phone.register(APP, INSTANCE).await.endpoint;
    let refused = phone.register_raw(Some("bad"), Some(INSTANCE)).await;
    assert!(refused.is_err());

    assert_delivered(&endpoint, &mut phone, b"one").await;
    assert_eq!(post(&format!("{endpoint}x"), "forged").await.status(), 404);
    assert_eq!(post(&endpoint, vec![b'x'; 5000]).await.status(), 413);
    phone.answer_with("service-unavailable").await;
    assert_eq!(post(&endpoint, "held").await.status(), 201);
    assert_eq!(post(&endpoint, "over the limit").await.status(), 429);

    let (status, page) = get(&format!("{}/metrics", stack.xup.base_url)).await;
    assert_eq!(status, 200);
    for (name, value) in [
        (r#"xup_pushes_total{outcome="delivered"}"#, 1.0),
        (r#"xup_pushes_total{outcome="not_found"}"#, 1.0),
        (r#"xup_pushes_total{outcome="too_large"}"#, 1.0),
        (r#"xup_pushes_total{outcome="held"}"#, 1.0),
        (r#"xup_pushes_total{outcome="rate_limited"}"#, 1.0),
        (r#"xup_registrations_total{outcome="registered"}"#, 1.0),
        (r#"xup_registrations_total{outcome="refused"}"#, 1.0),
        (r#"xup_rate_limited_total{limit="per_endpoint"}"#, 1.0),
        ("xup_iq_round_trip_seconds_count", 2.0),
        ("xup_held_messages", 1.0),
        ("xup_pushes_in_flight", 0.0),
        ("xup_component_link_up", 1.0),
    ] {
        assert_eq!(sample(&page, name), value, "{name}");
    }
    assert!(page.ends_with("# EOF\n"), "a complete OpenMetrics page");
}

#[tokio::test]
async fn metrics_listen_moves_health_and_metrics_off_the_public_port() {
    let port = free_port();
    let stack = Stack::start_with(|s| {
        s.metrics = vec![("listen", json!(format!("127.0.0.1:{port}")))];
    })
    .await;
    assert_eq!(get(&format!("{}/metrics", stack.xup.base_url)).await.0, 404);
    assert_eq!(get(&format!("{}/health", stack.xup.base_url)).await.0, 404);
    let (status, page) = get(&format!("http://127.0.0.1:{port}/metrics")).await;
    assert_eq!(status, 200);
    assert_eq!(sample(&page, "xup_component_link_up"), 1.0);
    assert_eq!(get(&format!("http://127.0.0.1:{port}/health")).await.0, 200);
}

/// `xup check --connect` against `prosody` with a config edited by `edit`: exit success and output.
async fn check_connect(server: &Server, edit: impl FnOnce(&mut Value)) -> (bool, String) {
    let store = tempfile::tempdir().expect("store");
    let mut config = XupSettings::new(store.path()).config_json(server.component_port());
    edit(&mut config);
    let file = store.path().join("config.json");
    std::fs::write(&file, config.to_string()).expect("write");
    let output = tokio::process::Command::new(xup_binary())
        .args(["check", "--connect", "--config"])
        .arg(&file)
        .output()
        .await
        .expect("xup runs");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

#[tokio::test]
async fn check_connect_says_plainly_what_is_wrong() {
    let server = Server::start().await;
    let (ok, text) = check_connect(&server, |_| {}).await;
    assert!(
        ok && text.contains("component handshake as up.localhost succeeded"),
        "{text}"
    );

    let (ok, text) = check_connect(&server, |c| c["component"]["secret"] = json!("wrong")).await;
    assert!(
        !ok && text.contains("component.secret does not match"),
        "{text}"
    );

    let (ok, text) = check_connect(&server, |c| {
        c["component"]["jid"] = json!("unknown.localhost");
    })
    .await;
    // Prosody says host-unknown; ejabberd says not-authorized, as for a wrong secret, and the
    // explanation names both causes.
    assert!(
        !ok && text.contains("no component configured for component.jid"),
        "{text}"
    );

    let nobody = format!("127.0.0.1:{}", free_port());
    let (ok, text) = check_connect(&server, |c| c["component"]["server"] = json!(nobody)).await;
    assert!(!ok && text.contains("cannot reach"), "{text}");
}
