//! The push path's cryptography alone, in process: how many endpoint tokens xup issues and opens
//! per second, and how many VAPID headers (RFC 8292) it verifies. No network, no store and no
//! XMPP server, so these are the ceilings the rest cannot beat, and the VAPID figure is what a
//! signed push costs over an unsigned one.

use std::{
    hint::black_box,
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context;
use serde_json::{Value, json};
use xup::{
    token::{KeyRing, claims_for},
    vapid::Vapid,
};

use crate::vapid::Signer;

/// Operations per second for issuing and opening tokens and verifying VAPID headers, each over
/// `iterations`.
pub fn measure(iterations: u64) -> anyhow::Result<Value> {
    let keys = KeyRing::new(
        &["a benchmark secret of enough length".to_owned()],
        "up.localhost",
    )?;
    let now = SystemTime::now();
    let claims = claims_for(
        "juliet@localhost/phone",
        "bK3sdmrbtj3bf6XA2S12b8jJUA5TT1dhPEyeoZfVSRM=",
        "EtD/1XPLmoIph7W73CZ/uyv6FAnhEAXY1GySHX17vAw=",
        now,
        Duration::from_secs(7 * 86400),
    );

    let started = Instant::now();
    let mut token = String::new();
    for _ in 0..iterations {
        token = black_box(keys.issue(black_box(&claims)).context("issuing")?);
    }
    let issues_per_second = iterations as f64 / started.elapsed().as_secs_f64();

    let started = Instant::now();
    for _ in 0..iterations {
        black_box(keys.open(black_box(&token), now).context("opening")?);
    }
    let opens_per_second = iterations as f64 / started.elapsed().as_secs_f64();

    let origin = "https://push.example.org";
    let header = Signer::new().header(origin)?;
    let vapid = Vapid::new(origin.to_owned());
    let started = Instant::now();
    for _ in 0..iterations {
        black_box(vapid.verify(black_box(&header), now).context("verifying")?);
    }
    let verifications_per_second = iterations as f64 / started.elapsed().as_secs_f64();

    Ok(json!({
        "kind": "token_code",
        "iterations": iterations,
        "token_issues_per_second": issues_per_second,
        "token_opens_per_second": opens_per_second,
        "vapid_verifications_per_second": verifications_per_second,
    }))
}
