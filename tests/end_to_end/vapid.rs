//! VAPID (RFC 8292) at the push endpoint, with a real signer (py_vapid, as a Python application
//! server signs): an endpoint bound to an application server's key takes only what that key
//! signs; a valid signature makes the key its sender's identity, with a rate limit of its own and
//! a block list; a provider may require every registration to name a key.
//!
//! "Nothing was delivered" is proven by order: after the refused requests a good push is sent, and
//! it must be the very next thing the client receives.

use serde_json::json;

use crate::harness::*;

const VAPID_FEATURE: &str = "urn:xup:vapid:0";

/// POST `body` to `endpoint` with `authorization`.
async fn signed(endpoint: &str, authorization: &str, body: &str) -> reqwest::Response {
    post_with(
        endpoint,
        &[("Authorization", authorization)],
        body.to_owned(),
    )
    .await
}

/// The status of `response` and its reason text.
async fn refusal(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

#[tokio::test]
async fn a_bound_endpoint_takes_only_what_its_key_signs() {
    let stack = Stack::start().await;
    let mut phone = stack.juliet("phone").await;
    let features = phone.disco_features().await;
    assert!(features.iter().any(|f| f == VAPID_FEATURE), "{features:?}");
    assert!(!features.iter().any(|f| f.ends_with("#required")));

    let (app_server, stranger) = (VapidSigner::new(), VapidSigner::new());
    let refused = phone
        .register_vapid(APP, INSTANCE, "not-a-key")
        .await
        .expect_err("refused");
    assert_eq!(refused["condition"], "bad-request", "{refused}");
    let bound = phone
        .register_vapid(APP, INSTANCE, &app_server.key)
        .await
        .expect("registered")
        .endpoint;

    let response = post(&bound, "unsigned").await;
    assert_eq!(response.headers()["www-authenticate"], "vapid");
    let (status, reason) = refusal(response).await;
    assert_eq!(status, 401);
    assert!(reason.contains("bound"), "{reason}");

    let good = app_server.header(&bound, 3600);
    let other_origin = app_server.header_for("https://elsewhere.example", 3600);
    let expired = app_server.header(&bound, -3600);
    let too_long = app_server.header(&bound, 2 * 86400);
    let forged = format!(
        "{},k={}",
        good.split(",k=").next().expect("t"),
        stranger.key
    );
    for (header, status, why) in [
        (&other_origin, 401, "aud"),
        (&expired, 401, "expired"),
        (&too_long, 401, "24 hours"),
        (&forged, 401, "signature"),
        (
            &stranger.header(&bound, 3600),
            403,
            "another application server",
        ),
    ] {
        let (got, reason) = refusal(signed(&bound, header, "refused").await).await;
        assert_eq!(
            (got, reason.contains(why)),
            (status, true),
            "{why}: {reason}"
        );
    }
    let response = signed(&bound, &good, "signed").await;
    assert_eq!(response.status(), 201);
    assert_eq!(
        phone.next_push().await.data,
        b"signed",
        "nothing refused was sent"
    );

    // The same registration again is the same endpoint; with another key, another endpoint.
    let again = phone.register_vapid(APP, INSTANCE, &app_server.key).await;
    assert_eq!(again.expect("registered").endpoint, bound);
    let rebound = phone
        .register_vapid(APP, INSTANCE, &stranger.key)
        .await
        .expect("registered")
        .endpoint;
    assert_ne!(rebound, bound);
    let response = signed(&rebound, &stranger.header(&rebound, 3600), "rebound").await;
    assert_eq!(response.status(), 201);
    assert_eq!(phone.next_push().await.data, b"rebound");

    // An unbound endpoint takes any valid signature, or none, but never a bad one.
    let unbound = phone.register(&other_app(), INSTANCE).await.endpoint;
    let (status, reason) = refusal(signed(&unbound, &expired, "bad").await).await;
    assert_eq!(status, 401, "{reason}");
    let response = signed(&unbound, &stranger.header(&unbound, 3600), "any key").await;
    assert_eq!(response.status(), 201);
    assert_eq!(phone.next_push().await.data, b"any key");
    assert_delivered(&unbound, &mut phone, b"unsigned").await;
}

#[tokio::test]
async fn a_provider_may_require_a_key_and_block_one() {
    let (app_server, blocked) = (VapidSigner::new(), VapidSigner::new());
    let blocked_key = blocked.key.clone();
    let stack = Stack::start_with(move |settings| {
        settings.registration = vec![("require_vapid", json!(true))];
        settings.limits = vec![("blocked_vapid_keys", json!([blocked_key]))];
    })
    .await;
    let mut phone = stack.juliet("phone").await;
    let features = phone.disco_features().await;
    assert!(
        features.iter().any(|f| f == "urn:xup:vapid:0#required"),
        "{features:?}"
    );

    let xml = format!("<register xmlns='{UP_NS}' application='{APP}' instance='{INSTANCE}'/>");
    let refused = phone.iq("set", COMPONENT, &xml).await;
    assert_eq!(
        (&refused["condition"], &refused["error_type"]),
        (&json!("not-acceptable"), &json!("modify")),
        "{refused}"
    );
    let text = refused["text"].as_str().expect("a reason");
    assert!(text.starts_with("VAPID_REQUIRED: "), "{text}");
    let mut laptop = stack.juliet("laptop").await;
    let sum7 = laptop.sum7_register("public").await.expect_err("refused");
    assert!(
        sum7.error_text.starts_with("VAPID_REQUIRED"),
        "{}",
        sum7.error_text
    );

    let endpoint = phone
        .register_vapid(APP, INSTANCE, &app_server.key)
        .await
        .expect("registered")
        .endpoint;
    let response = signed(&endpoint, &app_server.header(&endpoint, 600), "bound").await;
    assert_eq!(response.status(), 201);
    assert_eq!(phone.next_push().await.data, b"bound");

    let text = laptop
        .sum7_register_vapid("public", &app_server.key)
        .await
        .expect("registered");
    let response = signed(&text, &app_server.header(&text, 600), "to sum7").await;
    assert_eq!(response.status(), 201);
    assert_eq!(laptop.next_message().await.body, "to sum7");

    // A blocked key is refused whatever it signs, even for the endpoint bound to it.
    let to_blocked = phone
        .register_vapid(&other_app(), INSTANCE, &blocked.key)
        .await
        .expect("registered")
        .endpoint;
    let (status, reason) =
        refusal(signed(&to_blocked, &blocked.header(&to_blocked, 600), "x").await).await;
    assert_eq!(
        (status, reason.contains("blocked")),
        (403, true),
        "{reason}"
    );
    let response = signed(&endpoint, &app_server.header(&endpoint, 600), "after").await;
    assert_eq!(response.status(), 201);
    assert_eq!(
        phone.next_push().await.data,
        b"after",
        "nothing blocked was sent"
    );
}

#[tokio::test]
async fn a_signing_sender_is_limited_by_its_key_and_bad_signatures_by_address() {
    let stack = Stack::start_with(|settings| {
        settings.limits = vec![
            ("per_address", json!({ "burst": 2, "every": "1h" })),
            (
                "forged_tokens_per_address",
                json!({ "burst": 2, "every": "1h" }),
            ),
        ];
    })
    .await;
    let mut phone = stack.juliet("phone").await;
    let endpoint = phone.register(APP, INSTANCE).await.endpoint;
    let (one, two) = (VapidSigner::new(), VapidSigner::new());

    // The address's bucket is spent by unsigned pushes; each key has its own.
    for body in ["1", "2"] {
        assert_delivered(&endpoint, &mut phone, body.as_bytes()).await;
    }
    assert_eq!(post(&endpoint, "3").await.status(), 429);
    for body in ["one 1", "one 2"] {
        let response = signed(&endpoint, &one.header(&endpoint, 600), body).await;
        assert_eq!(response.status(), 201);
        assert_eq!(phone.next_push().await.data, body.as_bytes());
    }
    let (status, reason) = refusal(signed(&endpoint, &one.header(&endpoint, 600), "x").await).await;
    assert_eq!((status, reason.contains("key")), (429, true), "{reason}");
    let response = signed(&endpoint, &two.header(&endpoint, 600), "two").await;
    assert_eq!(response.status(), 201);
    assert_eq!(phone.next_push().await.data, b"two");

    // Bad signatures are counted against the address; past its limit even a good one is turned
    // away before it costs a verification.
    let expired = two.header(&endpoint, -3600);
    for _ in 0..2 {
        assert_eq!(signed(&endpoint, &expired, "x").await.status(), 401);
    }
    assert_eq!(signed(&endpoint, &expired, "x").await.status(), 429);
    let good = two.header(&endpoint, 600);
    assert_eq!(signed(&endpoint, &good, "x").await.status(), 429);
    assert!(phone.pushes_so_far().is_empty(), "nothing refused was sent");
}
