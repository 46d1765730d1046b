//! Filling a store before xup starts on it, through xup's own store engines: a million held
//! messages or revocations are written in batches of one transaction each, so a point of a
//! growth curve takes seconds to prepare instead of a million syncs.

use std::time::{Duration, SystemTime};

use xup::{
    message::Urgency,
    store::{Bounds, Engine, Message, Revocation, micros},
};

use crate::ledger::MessageId;

/// Rows written in one transaction.
const BATCH: usize = 10_000;

/// Messages held per registration of the filler: a phone's app that was away for a while.
pub const PER_REGISTRATION: usize = 10;

/// Registrations per filler account: apps on one phone.
const PER_ACCOUNT: usize = 10;

/// How long what is seeded stays: far past any run.
const KEPT: Duration = Duration::from_secs(30 * 86_400);

/// The one client whose backlog is timed: its full JID, and what its messages carry.
pub struct Backlog<'a> {
    pub subject: &'a str,
    pub run: u32,
    pub messages: usize,
}

/// Hold `count` messages spread over `count / PER_REGISTRATION` registrations of accounts that do
/// not exist on the XMPP server (so an offer to them bounces at once, as to a phone long gone),
/// then `backlog`'s messages for the client that will come back.
pub async fn held(engine: &dyn Engine, count: usize, backlog: &Backlog<'_>) -> anyhow::Result<()> {
    let registrations = (count / PER_REGISTRATION).max(1);
    let now = SystemTime::now();
    let message = |id: String, subject: String, application: String, body: Vec<u8>| Message {
        id,
        subject,
        application,
        instance: "bench".into(),
        body,
        topic: None,
        urgency: Urgency::default(),
        expires_at: now + KEPT,
        accepted_at: now,
    };
    let filler = (0..count).map(|i| {
        let registration = i % registrations;
        let account = registration / PER_ACCOUNT;
        message(
            format!("filler-{i}"),
            format!("ghost{account}@{}/phone", xup_testbed::DOMAIN),
            format!("app{registration}"),
            vec![0x5a; 256],
        )
    });
    let returning = (0..backlog.messages).map(|seq| {
        let id = MessageId {
            run: backlog.run,
            seq: seq as u64,
        };
        message(
            format!("backlog-{seq}"),
            backlog.subject.to_owned(),
            "backlog".into(),
            id.body(256),
        )
    });
    let mut all = filler.chain(returning).peekable();
    let unbounded = Bounds::only(usize::MAX, usize::MAX);
    while all.peek().is_some() {
        let batch: Vec<Message> = all.by_ref().take(BATCH).collect();
        for outcome in engine.hold_all(batch, unbounded, 0).await? {
            outcome?;
        }
    }
    Ok(())
}

/// Keep `count` revocations of registrations no client holds a token for: the push path's lookups
/// meet a map of that size, and never a hit.
pub async fn revocations(engine: &dyn Engine, count: usize) -> anyhow::Result<()> {
    let now_us = micros(SystemTime::now());
    let revocation = Revocation {
        revoked_at_us: now_us,
        forget_at_us: now_us + KEPT.as_micros() as i64,
    };
    let mut left = count;
    while left > 0 {
        let batch: Vec<_> = (0..left.min(BATCH))
            .map(|_| (rand::random::<[u8; 32]>(), revocation))
            .collect();
        left -= batch.len();
        engine.revoke_all(batch).await?;
    }
    Ok(())
}
