//! What an operator's monitoring sees: `/health` follows the component link, and `/metrics`
//! counts what happened; and a log collector that dies takes nothing down with it.

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
    stack.xup.wait_reconnected().await;
    assert_eq!(get(&health).await.0, 200);
    let (_, page) = get(&format!("{}/metrics", stack.xup.base_url)).await;
    assert_eq!(sample(&page, "xup_component_connects_total"), 2.0);
    assert_eq!(sample(&page, "xup_component_link_up"), 1.0);
}

#[tokio::test]
async fn a_dead_log_collector_takes_nothing_down_with_it() {
    // systemd's journal restarting, or the far end of `xup 2>&1 | logger` exiting: from then on
    // every line xup writes fails. Each step below writes lines from a task of its own.
    let mut stack = Stack::start_with(|s| s.log_filter = "info").await;
    let mut phone = stack.juliet("phone").await;
    let endpoint = phone.register(APP, INSTANCE).await.endpoint;
    stack.xup.close_logs().await;

    // A push's handler, logging the revocation its client asked for.
    phone.answer_with("item-not-found").await;
    assert_eq!(post(&endpoint, "gone?").await.status(), 404);
    assert_eq!(phone.next_push().await.data, b"gone?");
    phone.answer_with("result").await;

    // The component link's task, logging that the server went and that it is back.
    stack.server.restart().await;
    // No log line can be awaited now: the link's own counter says when it is back. The bound is
    // the reconnect backoff's cap (30 s) and more.
    let metrics = format!("{}/metrics", stack.xup.base_url);
    let deadline = tokio::time::Instant::now() + WAIT * 3;
    loop {
        let (_, page) = get(&metrics).await;
        if sample(&page, "xup_component_connects_total") >= 2.0
            && sample(&page, "xup_component_link_up") == 1.0
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the component link never came back:\n{page}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let mut phone = stack.juliet("phone").await;
    let endpoint = phone.register(APP, INSTANCE).await.endpoint;
    assert_delivered(&endpoint, &mut phone, b"after the restart").await;

    // The signal's task, logging that xup shuts down.
    assert!(stack.xup.stop().await.success(), "xup exits 0 on SIGTERM");
}

#[tokio::test]
async fn metrics_count_pushes_registrations_and_limits() {
    let stack = Stack::start_with(|s| {
        // Two: the delivered push and the held one. The oversized one is refused as its body is
        // read, before the endpoint's limit (and a slot in flight) are taken.
        s.limits = vec![("per_endpoint", json!({ "burst": 2, "every": "1h" }))];
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

/// `xup status` with `args`, beside the running xup of `stack`: whether it succeeded, and stdout.
async fn status(stack: &Stack, args: &[&str]) -> (bool, String) {
    let output = tokio::process::Command::new(xup_binary())
        .arg("status")
        .args(args)
        .arg("--config")
        .arg(stack.xup.config_path())
        .output()
        .await
        .expect("xup runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.is_empty() || !output.status.success(), "{stderr}");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned() + &stderr,
    )
}

#[tokio::test]
async fn status_counts_what_a_running_xup_holds_without_naming_anyone() {
    let stack = Stack::start().await;
    let mut phone = stack.juliet("phone").await;
    let one = phone.register(APP, INSTANCE).await.endpoint;
    let three = phone.register(&other_app(), INSTANCE).await.endpoint;
    let gone_app = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode([9u8; 32])
    };
    let gone = phone.register(&gone_app, INSTANCE).await.endpoint;
    phone.answer_for(&gone_app, "item-not-found").await;
    assert_eq!(post(&gone, "gone?").await.status(), 404);
    phone.quit().await;
    for (endpoint, count) in [(&one, 1), (&three, 3)] {
        for i in 0..count {
            let response = post_with(endpoint, &[("TTL", "600")], format!("m{i}")).await;
            assert_eq!(response.status(), 201);
        }
    }

    let (ok, json) = status(&stack, &["--json"]).await;
    assert!(ok, "{json}");
    let overview: Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(overview["held"]["total"], 4, "{overview}");
    assert!(
        overview["held"]["oldest_seconds"].as_u64().is_some(),
        "{overview}"
    );
    let holding = |range: &str| {
        overview["held"]["registrations_holding"]
            .as_array()
            .expect("buckets")
            .iter()
            .find(|bucket| bucket["messages"] == range)
            .map(|bucket| bucket["registrations"].clone())
    };
    assert_eq!(holding("1"), Some(json!(1)), "{overview}");
    assert_eq!(holding("2-5"), Some(json!(1)), "{overview}");
    assert_eq!(overview["revocations"], 1, "{overview}");
    let ids = overview["keys"]["ids"].as_array().expect("key ids");
    assert_eq!(ids.len(), 1, "one secret, one key: {overview}");
    assert_eq!(ids[0], overview["keys"]["issuing"], "{overview}");
    assert!(overview["store"]["size_bytes"].as_u64().expect("size") > 0);

    let (ok, text) = status(&stack, &[]).await;
    assert!(ok, "{text}");
    assert!(text.contains("held messages: 4, the oldest for"), "{text}");
    assert!(text.contains("1 holding 1, 1 holding 2-5"), "{text}");
    assert!(text.contains("revocations kept: 1"), "{text}");
    // Counted, never named.
    assert!(
        !text.contains("juliet") && !json.contains("juliet"),
        "{text}{json}"
    );
    // xup went on running all along.
    assert_eq!(get(&format!("{}/health", stack.xup.base_url)).await.0, 200);
}
