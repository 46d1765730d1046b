//! Stable endpoints (UnifiedPush AND_3: "SHOULD NOT create a new endpoint if a valid registration
//! exists"): registering again returns the same URL, in both dialects and across restarts, until
//! the registration ends; an endpoint past its first lifetime lives exactly as long as renewals
//! keep its registration alive.
//!
//! A token's first lifetime is a week, which no test can wait for: the tests that need one past
//! it make the token themselves, under the secret xup runs with, and write the registration row a
//! renewal would have left.

use std::time::{Duration, SystemTime};

use crate::harness::*;

const WEEK: Duration = Duration::from_secs(7 * 86400);
const DAY: Duration = Duration::from_secs(86400);

/// A token xup could have issued to `subject` for `instance` at `issued`, renewable.
fn token_issued(subject: &str, instance: &str, issued: SystemTime) -> String {
    xup::token::KeyRing::new(&[SECRET_A.to_owned()], COMPONENT)
        .expect("keys")
        .issue(&xup::token::claims_for(
            subject, APP, instance, issued, WEEK,
        ))
        .expect("token")
}

/// The registrations row a renewal leaves, for the series issued at `issued` that lives until
/// `until`, in either engine's SQL. Its sealed copy of the token is not needed to push.
fn renewed_row(subject: &str, instance: &str, issued: SystemTime, until: SystemTime) -> String {
    let key = xup::store::key_to_hex(&xup::store::registration_key_of(subject, APP, instance));
    let key = match on_postgres() {
        true => format!("decode('{key}', 'hex')"),
        false => format!("X'{key}'"),
    };
    let (issued, until) = (xup::store::micros(issued), xup::store::micros(until));
    let account = subject.split('/').next().expect("a JID");
    format!(
        "INSERT INTO registrations
         (registration, account, issued_at_us, renewed_at_us, expires_at_us, kept)
         VALUES ({key}, '{account}', {issued}, {issued}, {until}, 'not needed');"
    )
}

#[tokio::test]
async fn registering_again_returns_the_same_endpoint_until_the_registration_ends() {
    let mut stack = Stack::start().await;
    let mut phone = stack.juliet("phone").await;
    let first = phone.register(APP, INSTANCE).await;
    let again = phone.register(APP, INSTANCE).await;
    assert_eq!(again.endpoint, first.endpoint, "byte-identical");
    assert!(
        again.expiration >= first.expiration,
        "{} then {}",
        first.expiration,
        again.expiration
    );
    let other = phone.register(APP, &other_app()).await.endpoint;
    assert_ne!(other, first.endpoint, "another instance has its own");
    assert_delivered(&first.endpoint, &mut phone, b"renewed").await;

    stack.restart_xup(|_| {}).await;
    let mut phone = stack.juliet("phone").await;
    let after_restart = phone.register(APP, INSTANCE).await.endpoint;
    assert_eq!(after_restart, first.endpoint, "the store kept it");
    assert_delivered(&first.endpoint, &mut phone, b"after restart").await;

    // The account revokes everything: the next registration is a new endpoint, the old one dead.
    phone
        .ad_hoc("revoke-all-push-endpoints", &[])
        .await
        .expect("revoked");
    assert_eq!(post(&first.endpoint, "revoked").await.status(), 404);
    let fresh = phone.register(APP, INSTANCE).await.endpoint;
    assert_ne!(fresh, first.endpoint);
    assert_eq!(post(&first.endpoint, "still revoked").await.status(), 404);
    assert_delivered(&fresh, &mut phone, b"fresh").await;
    assert_eq!(phone.register(APP, INSTANCE).await.endpoint, fresh);

    // So does a client's item-not-found.
    phone.answer_with("item-not-found").await;
    assert_eq!(post(&fresh, "gone?").await.status(), 404);
    assert_eq!(phone.next_push().await.data, b"gone?");
    phone.answer_with("result").await;
    let reinstalled = phone.register(APP, INSTANCE).await.endpoint;
    assert_ne!(reinstalled, fresh);
    assert_eq!(post(&fresh, "after").await.status(), 404);
    assert_delivered(&reinstalled, &mut phone, b"reinstalled").await;
}

#[tokio::test]
async fn a_sum7_registration_is_stable_until_it_is_unregistered() {
    let stack = Stack::start().await;
    let mut laptop = stack.juliet("laptop").await;
    let first = laptop
        .sum7_register("public-token")
        .await
        .expect("endpoint");
    let again = laptop
        .sum7_register("public-token")
        .await
        .expect("endpoint");
    assert_eq!(again, first);
    assert_message_sent(&first, &mut laptop, "renewed").await;

    laptop.sum7_unregister("public-token").await;
    assert_eq!(post(&first, "unregistered").await.status(), 404);
    let fresh = laptop
        .sum7_register("public-token")
        .await
        .expect("endpoint");
    assert_ne!(fresh, first);
    assert_eq!(post(&first, "still").await.status(), 404);
    assert_message_sent(&fresh, &mut laptop, "fresh").await;
}

#[tokio::test]
async fn an_endpoint_past_its_first_lifetime_lives_only_while_its_registration_is_renewed() {
    let mut stack = Stack::start().await;
    let mut phone = stack.juliet("phone").await;
    let now = SystemTime::now();
    let issued = now - WEEK - DAY;
    let base = format!("{}/push/", stack.xup.base_url);

    // Renewed until tomorrow: alive, also after a restart (the store, not memory, says so).
    let renewed = format!("{base}{}", token_issued(&phone.jid, INSTANCE, issued));
    assert_eq!(
        post(&renewed, "not renewed").await.status(),
        404,
        "no registration kept: dead at the end of its first lifetime"
    );
    stack.store_sql(&renewed_row(&phone.jid, INSTANCE, issued, now + DAY));
    assert_delivered(&renewed, &mut phone, b"renewed").await;
    stack.restart_xup(|_| {}).await;
    let mut phone = stack.juliet("phone").await;
    assert_delivered(&renewed, &mut phone, b"after restart").await;

    // A registration that ended, and one kept for a later series of the same triple.
    let ended_instance = other_app();
    let ended = format!(
        "{base}{}",
        token_issued(&phone.jid, &ended_instance, issued)
    );
    stack.store_sql(&renewed_row(
        &phone.jid,
        &ended_instance,
        issued,
        now - Duration::from_secs(1),
    ));
    let replaced_instance = "cmVwbGFjZWQgcmVwbGFjZWQgcmVwbGFjZWQgcmVwbGE=";
    let replaced = format!(
        "{base}{}",
        token_issued(&phone.jid, replaced_instance, issued)
    );
    stack.store_sql(&renewed_row(
        &phone.jid,
        replaced_instance,
        issued + Duration::from_secs(1),
        now + DAY,
    ));
    for dead in [&ended, &replaced] {
        assert_eq!(post(dead, "dead").await.status(), 404, "{dead:.60}");
    }
    assert_delivered(&renewed, &mut phone, b"nothing else was sent").await;
}
