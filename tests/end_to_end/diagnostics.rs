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
        .position(|l| l.contains("taken by the client"))
        .expect("the first push was taken");
    assert!(
        lines[..taken]
            .iter()
            .any(|l| l.contains("offered to the client"))
    );
    let about_refused: Vec<&String> = lines.iter().filter(|l| l.contains(&refused.id)).collect();
    let said = |what: &str| about_refused.iter().any(|l| l.contains(what));
    assert!(said("accepted (urgency high"), "{about_refused:#?}");
    assert!(said("not taken: service-unavailable"), "{about_refused:#?}");
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
