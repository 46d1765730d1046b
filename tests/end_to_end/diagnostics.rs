//! "Why don't I get notifications?", answered by the user's own XMPP client through ad-hoc
//! commands on the component, for the calling account only.

use crate::harness::*;

/// The caller's trace: every line of `unifiedpush-delivery-trace`.
async fn trace_of(peer: &mut Peer, fields: &[(&str, &str)]) -> Result<Vec<String>, IqFailure> {
    let answer = peer
        .ad_hoc_fields("unifiedpush-delivery-trace", Some("execute"), fields)
        .await?;
    Ok(answer
        .into_iter()
        .find(|(var, _)| var == "events")
        .map(|(_, lines)| lines)
        .unwrap_or_default())
}

#[tokio::test]
async fn the_delivery_trace_tells_a_user_what_became_of_their_pushes() {
    let stack = Stack::start().await;
    let mut phone = stack.juliet("phone").await;
    let endpoint = phone.register(APP, INSTANCE).await.endpoint;
    assert_delivered(&endpoint, &mut phone, b"secret words").await;
    phone.answer_with("service-unavailable").await;
    let response = post_with(&endpoint, &[("Urgency", "high")], "more secret words").await;
    assert_eq!(response.status(), 201);
    let refused = phone.next_push().await;

    // From another of the account's clients, as a user would look.
    let mut laptop = stack.juliet("laptop").await;
    let lines = trace_of(&mut laptop, &[]).await.expect("the trace");
    let taken = lines
        .iter()
        .position(|l| l.contains("offered and taken by the client"))
        .expect("the first push was taken");
    assert!(
        lines[..taken]
            .iter()
            .any(|l| l.contains("accepted (urgency normal"))
    );
    let about_refused: Vec<&String> = lines.iter().filter(|l| l.contains(&refused.id)).collect();
    let said = |what: &str| about_refused.iter().any(|l| l.contains(what));
    assert!(said("accepted (urgency high"), "{about_refused:#?}");
    assert!(
        said("offered, not taken: service-unavailable"),
        "{about_refused:#?}"
    );
    assert!(said("held: to be offered again"), "{about_refused:#?}");
    assert!(
        lines
            .iter()
            .all(|l| l.contains(" phone app ") && l.contains(&APP[..8]))
    );
    assert!(
        lines
            .iter()
            .all(|l| !l.contains("secret") && !l.contains(&APP[..9])),
        "no content, and only a hint of the app: {lines:#?}"
    );
    assert!(lines.len() <= 50);

    // Another account sees nothing of it, and may not ask for it.
    let mut romeo = Peer::connect(&stack.server, "romeo", DOMAIN, "pc").await;
    assert_eq!(
        trace_of(&mut romeo, &[]).await.expect("romeo's own"),
        Vec::<String>::new()
    );
    let juliet = format!("juliet@{DOMAIN}");
    let refused = trace_of(&mut romeo, &[("account", &juliet)]).await;
    assert_eq!(refused.expect_err("forbidden").condition, "forbidden");
}

#[tokio::test]
async fn check_my_push_says_what_xup_knows_of_the_client_without_waking_an_app() {
    let stack = Stack::start().await;
    let mut phone = stack.juliet("phone").await;
    let endpoint = phone.register(APP, INSTANCE).await.endpoint;
    phone.announce_minimum_urgency("high").await;
    let response = post_with(&endpoint, &[("TTL", "600")], "can wait").await;
    assert_eq!(response.status(), 201);

    let answer = phone
        .ad_hoc_fields("check-my-push", Some("execute"), &[])
        .await
        .expect("the check");
    let field = |var: &str| {
        answer
            .iter()
            .find(|(v, _)| v == var)
            .map(|(_, values)| values.clone())
            .unwrap_or_default()
    };
    assert_eq!(field("client"), [phone.jid.clone()]);
    assert_eq!(field("presence"), ["not known to be offline"]);
    assert_eq!(field("minimum-urgency"), ["high"]);
    let ping = field("ping").concat();
    assert!(ping.starts_with("answered in "), "{ping}");
    let held = field("held");
    assert_eq!(held.len(), 1, "{held:#?}");
    assert!(
        held[0].contains(&APP[..8])
            && held[0].contains("1 held (1 below the minimum urgency)")
            && held[0].contains("less urgent than this client takes now"),
        "{held:#?}"
    );

    // Nothing was offered meanwhile: the next push is one urgent enough, sent after the check.
    let response = post_with(&endpoint, &[("Urgency", "high")], "urgent").await;
    assert_eq!(response.status(), 201);
    assert_eq!(phone.next_push().await.data, b"urgent");
}

/// The caller's registrations: every line of `list-unifiedpush-registrations`, after it has
/// unregistered what `fields` name.
async fn registrations_of(
    peer: &mut Peer,
    fields: &[(&str, &str)],
) -> Result<Vec<String>, IqFailure> {
    let answer = peer
        .ad_hoc_fields("list-unifiedpush-registrations", Some("execute"), fields)
        .await?;
    Ok(answer
        .into_iter()
        .find(|(var, _)| var == "registrations")
        .map(|(_, lines)| lines)
        .unwrap_or_default())
}

#[tokio::test]
async fn a_user_lists_their_registrations_and_unregisters_one() {
    let stack = Stack::start().await;
    let mut phone = stack.juliet("phone").await;
    let app_server = VapidSigner::new();
    let signed = phone
        .register_vapid(APP, INSTANCE, &app_server.key)
        .await
        .expect("registered")
        .endpoint;
    let other = phone.register(&other_app(), INSTANCE).await.endpoint;
    let mut laptop = stack.juliet("laptop").await;
    laptop
        .sum7_register("public-token")
        .await
        .expect("registered");

    let header = app_server.header(&signed, 600);
    let response = post_with(&signed, &[("Authorization", header.as_str())], "hi").await;
    assert_eq!(response.status(), 201);
    assert_eq!(phone.next_push().await.data, b"hi");
    phone.announce_minimum_urgency("high").await;
    assert_eq!(post(&other, "waits").await.status(), 201);

    let lines = registrations_of(&mut laptop, &[]).await.expect("the list");
    assert_eq!(lines.len(), 3, "{lines:#?}");
    let line_of = |app: &str| {
        lines
            .iter()
            .find(|l| l.contains(&format!("app {} ", &app[..8])))
            .unwrap_or_else(|| panic!("no {app} in {lines:#?}"))
            .clone()
    };
    let signed_line = line_of(APP);
    for what in [
        " on phone: registered ",
        "by mailto:ops@app.example",
        "0 held",
        "only for its application server's key",
    ] {
        assert!(signed_line.contains(what), "{what}: {signed_line}");
    }
    let other_line = line_of(&other_app());
    assert!(other_line.contains("1 held"), "{other_line}");
    assert!(other_line.contains("not pushed lately") || other_line.contains("last pushed"));
    assert!(
        lines
            .iter()
            .any(|l| l.contains("(unifiedpush.org) on laptop")),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .all(|l| !l.contains("waits") && !l.contains("hi;"))
    );

    // Unregistering one kills its endpoint and drops what it held; the next registration of the
    // app is a new endpoint.
    let id = other_line.split(':').next().expect("an id");
    let after = registrations_of(&mut laptop, &[("unregister", id)])
        .await
        .expect("unregistered");
    assert_eq!(after.len(), 2, "{after:#?}");
    assert_eq!(post(&other, "gone").await.status(), 404);
    let refused = registrations_of(&mut laptop, &[("unregister", id)]).await;
    assert_eq!(
        refused.expect_err("no longer listed").condition,
        "bad-request"
    );
    phone.announce_minimum_urgency("very-low").await;
    let fresh = phone.register(&other_app(), INSTANCE).await.endpoint;
    assert_ne!(fresh, other);
    assert_delivered(&fresh, &mut phone, b"registered again").await;

    // Another account sees none of it, and may not ask for it.
    let mut romeo = Peer::connect(&stack.server, "romeo", DOMAIN, "pc").await;
    assert!(
        registrations_of(&mut romeo, &[])
            .await
            .expect("romeo's own")
            .is_empty()
    );
    let juliet = format!("juliet@{DOMAIN}");
    let refused = registrations_of(&mut romeo, &[("account", &juliet)]).await;
    assert_eq!(refused.expect_err("forbidden").condition, "forbidden");
    let refused = registrations_of(&mut romeo, &[("unregister", id)]).await;
    assert_eq!(refused.expect_err("not romeo's").condition, "bad-request");
}
