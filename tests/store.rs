//! The two store engines keep the same promises: the same operations on the embedded SQLite file
//! and on a real PostgreSQL (a throwaway cluster from the testbed) give the same answers.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use xup::{
    message::Urgency,
    store::{
        Bounds, Engine, Held, HoldError, Message, PushNode, Revocation, Store,
        held::HeldMessages,
        postgres::{Postgres, Target},
        sqlite::Sqlite,
    },
    token::claims_for,
};

const DAY: Duration = Duration::from_secs(86400);

fn message(id: &str, subject: &str, topic: Option<&str>) -> Message {
    Message {
        id: id.into(),
        subject: subject.into(),
        application: "app".into(),
        instance: "ins".into(),
        body: id.as_bytes().to_vec(),
        topic: topic.map(str::to_owned),
        urgency: Urgency::Normal,
        expires_at: SystemTime::now() + DAY,
        accepted_at: SystemTime::now(),
    }
}

async fn ids(held: &HeldMessages, subject: &str) -> Vec<String> {
    let registration = message("", subject, None).registration();
    held.waiting_in(registration, SystemTime::now())
        .await
        .expect("read")
        .into_iter()
        .map(|m| m.id)
        .collect()
}

/// Everything the rest of xup asks of an engine, with the answers it relies on.
async fn keeps_its_promises(engine: Arc<dyn Engine>) {
    let juliet = "juliet@example.org/phone";
    let romeo = "romeo@example.org/laptop";

    // Held messages: order, topics, the per-registration bound, the total bound.
    let held = HeldMessages::open(engine.clone(), Bounds::only(3, 5))
        .await
        .expect("held");
    held.hold(message("a", juliet, Some("t")))
        .await
        .expect("hold");
    held.hold(message("b", juliet, None)).await.expect("hold");
    let replaced = held.hold(message("c", juliet, Some("t"))).await;
    assert_eq!(
        replaced.expect("hold"),
        Held {
            replaced: 1,
            dropped: 0
        }
    );
    held.hold(message("d", juliet, None)).await.expect("hold");
    let dropped = held.hold(message("e", juliet, None)).await;
    assert_eq!(
        dropped.expect("hold"),
        Held {
            replaced: 0,
            dropped: 1
        }
    );
    assert_eq!(ids(&held, juliet).await, ["c", "d", "e"]);
    held.hold(message("r1", romeo, None)).await.expect("hold");
    held.hold(message("r2", romeo, None)).await.expect("hold");
    assert!(matches!(
        held.hold(message("r3", romeo, None)).await,
        Err(HoldError::Full)
    ));
    assert!(
        !held.contains("r3").await.expect("query"),
        "a refused hold left nothing"
    );
    assert!(matches!(
        held.hold(message("c", romeo, None)).await,
        Err(HoldError::Full | HoldError::Store(_))
    ));
    assert_eq!(held.total(), 5);

    // Taking and dropping.
    assert!(
        !held.remove("d", romeo).await.expect("remove"),
        "only its client takes it"
    );
    assert!(held.remove("d", juliet).await.expect("remove"));
    assert_eq!(
        held.drop_account("juliet@example.org").await.expect("drop"),
        2
    );
    assert_eq!(ids(&held, juliet).await, Vec::<String>::new());
    assert_eq!(held.total(), 2, "romeo's are untouched");
    let later = HeldMessages::open(engine.clone(), Bounds::only(3, 5))
        .await
        .expect("reopen");
    assert_eq!(later.total(), 2, "counted again from the database");
    let pruned = held
        .prune(SystemTime::now() + 2 * DAY)
        .await
        .expect("prune");
    assert_eq!((pruned.count, pruned.named.len()), (2, 2));

    // Revocations, through the mirror, and read back by a second store on the same database.
    let store = Store::new(engine.clone()).await.expect("store");
    let t0 = SystemTime::now();
    let claims = claims_for(juliet, "app", "ins", t0, DAY);
    store.revoke(&claims, t0, DAY).await.expect("revoke");
    assert!(store.is_revoked(&claims));
    store
        .revoke_account("romeo@example.org", t0, DAY)
        .await
        .expect("revoke all");
    let other = Store::new(engine.clone()).await.expect("another instance");
    assert!(other.is_revoked(&claims));
    assert!(other.is_revoked(&claims_for(romeo, "any", "thing", t0, DAY)));
    let newer = claims_for(juliet, "app", "ins", t0 + Duration::from_secs(1), DAY);
    assert!(!other.is_revoked(&newer));
    // Revocations at an account's request are bounded per account: another key past the cap is
    // refused and changes nothing; the same key again is no new one; another account has its own.
    let mine = |n: u32| claims_for("eve@example.org/x", &format!("t{n}"), "", t0, DAY);
    for n in 0..2 {
        let kept = store
            .revoke_within(&mine(n), t0, DAY, "eve@example.org", 2)
            .await;
        assert!(kept.expect("revoke"), "{n}");
    }
    let over = store
        .revoke_within(&mine(2), t0, DAY, "eve@example.org", 2)
        .await;
    assert!(!over.expect("revoke"));
    assert!(!store.is_revoked(&mine(2)));
    let again = store
        .revoke_within(&mine(0), t0, DAY, "eve@example.org", 2)
        .await;
    assert!(again.expect("revoke"));
    let other = store
        .revoke_within(&mine(2), t0, DAY, "mallory@example.org", 2)
        .await;
    assert!(other.expect("revoke"));
    // An announcement is taken only for a revocation the database keeps.
    let bob = claims_for("bob@example.org/tablet", "app", "ins", t0, DAY);
    let third = Store::new(engine.clone()).await.expect("a third instance");
    let announced = |claims| xup::store::registration_key(claims);
    assert!(!third.take_announced(announced(&bob)).await.expect("read"));
    assert!(!third.is_revoked(&bob));
    store.revoke(&bob, t0, DAY).await.expect("revoke");
    assert!(!third.is_revoked(&bob), "not yet heard of");
    assert!(third.take_announced(announced(&bob)).await.expect("read"));
    assert!(third.is_revoked(&bob));
    // Many at once, each merged with what is kept: the later of the two times wins.
    let many: Vec<_> = (0..500u16)
        .map(|n| {
            let mut key = [7; 32];
            key[..2].copy_from_slice(&n.to_le_bytes());
            let revocation = Revocation {
                revoked_at_us: 1_000 + i64::from(n),
                forget_at_us: i64::MAX,
            };
            (key, revocation)
        })
        .collect();
    engine.revoke_all(many.clone()).await.expect("revoke many");
    let (key, first) = many[3];
    let earlier = Revocation {
        revoked_at_us: 1,
        ..first
    };
    engine
        .revoke_all(vec![(key, earlier)])
        .await
        .expect("again");
    assert_eq!(engine.revocation(key).await.expect("read"), Some(first));
    let kept = engine.revocations().await.expect("read all");
    assert!(many.iter().all(|one| kept.contains(one)));

    // The VAPID key is made once, and the node index lists, expires and forgets.
    let key = store.vapid_key(1, || vec![1; 32]).await.expect("key");
    assert_eq!(store.vapid_key(1, || vec![2; 32]).await.expect("key"), key);
    let node = |id: &str, expires_at| PushNode {
        node_id: id.into(),
        device_id: Some("dev".into()),
        device_name: None,
        expires_at,
    };
    store
        .index_node("juliet@example.org", node("n1", t0 + DAY))
        .await
        .expect("index");
    store
        .index_node("juliet@example.org", node("n2", t0 + DAY))
        .await
        .expect("index");
    store
        .index_node("juliet@example.org", node("old", t0))
        .await
        .expect("index");
    let listed: Vec<_> = store
        .nodes_of("juliet@example.org")
        .await
        .expect("list")
        .into_iter()
        .map(|n| n.node_id)
        .collect();
    assert_eq!(listed, ["n1", "n2"]);
    store
        .unindex_node("juliet@example.org", "n1")
        .await
        .expect("unindex");
    assert_eq!(
        store
            .nodes_of("juliet@example.org")
            .await
            .expect("list")
            .len(),
        1
    );
}

#[tokio::test]
async fn sqlite_keeps_the_store_promises() {
    let dir = tempfile::tempdir().expect("tempdir");
    keeps_its_promises(Arc::new(Sqlite::open(dir.path()).expect("sqlite"))).await;
}

#[tokio::test]
async fn postgresql_keeps_the_store_promises() {
    let postgres = xup_testbed::Postgres::start().await;
    let engine = Postgres::connect(&Target::new(&postgres.url(), None).expect("target"), 4)
        .await
        .expect("postgres");
    keeps_its_promises(Arc::new(engine)).await;
}
