//! The registration code alone, in process: how many `<register>` payloads xup's registrar turns
//! into endpoint tokens per second, and how many tokens it opens per second on the push path.
//! No network and no XMPP server, so this is the ceiling the component round trip cannot beat.

use std::{
    hint::black_box,
    sync::Arc,
    time::{Instant, SystemTime},
};

use anyhow::Context;
use serde_json::{Value, json};
use xmpp_parsers::{jid::Jid, minidom::Element};
use xup::{
    config::Config,
    dialects::conversations::{register::register, wire::Register},
    limits::Limits,
    registrar::Registrar,
    token::KeyRing,
};

/// Operations per second for issuing and for opening tokens, each over `iterations`.
pub fn measure(iterations: u64) -> anyhow::Result<Value> {
    let config = Config::parse(
        &json!({
            "component": { "jid": "up.localhost", "server": "127.0.0.1:5347", "secret": "s" },
            "http": { "listen": "127.0.0.1:0", "public_url": "https://push.example.org" },
            "registration": { "secrets": ["a benchmark secret of enough length"] },
            // One account registers over and over here: measure the limit's cost, not its effect.
            "limits": { "registrations_per_account": { "burst": u32::MAX, "every": "1ms" } },
            "store": { "path": "/nonexistent" },
        })
        .to_string(),
    )?;
    let keys = Arc::new(KeyRing::new(
        &config.registration.secrets,
        config.component.jid.as_str(),
    )?);
    let limits = Arc::new(Limits::new(&config.limits));
    let registrar = Registrar::new(&config, keys.clone(), limits);
    let from: Jid = "juliet@localhost/phone".parse()?;
    let payload: Element = Register {
        application: "bK3sdmrbtj3bf6XA2S12b8jJUA5TT1dhPEyeoZfVSRM=".into(),
        instance: "EtD/1XPLmoIph7W73CZ/uyv6FAnhEAXY1GySHX17vAw=".into(),
    }
    .into();

    let now = SystemTime::now();
    let started = Instant::now();
    let mut endpoint = String::new();
    for _ in 0..iterations {
        let registered = register(&registrar, Some(&from), black_box(payload.clone()), now)
            .context("registering")?;
        endpoint = black_box(registered.endpoint);
    }
    let registers_per_second = iterations as f64 / started.elapsed().as_secs_f64();

    let token = endpoint
        .rsplit('/')
        .next()
        .context("an endpoint with a token")?
        .to_owned();
    let started = Instant::now();
    for _ in 0..iterations {
        black_box(keys.open(black_box(&token), now).context("opening")?);
    }
    let opens_per_second = iterations as f64 / started.elapsed().as_secs_f64();

    Ok(json!({
        "kind": "token_code",
        "iterations": iterations,
        "registrations_per_second": registers_per_second,
        "token_opens_per_second": opens_per_second,
    }))
}
