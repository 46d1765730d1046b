//! Token decode: any string at all, opened by a key ring that has sealed a few real tokens (the
//! seeds in corpus/token_open). Nothing may panic, and nothing may open that was not sealed.

#![no_main]

use std::{
    sync::LazyLock,
    time::{Duration, SystemTime},
};

use libfuzzer_sys::fuzz_target;
use xup::token::KeyRing;

use xup_fuzz as seeds;

static KEYS: LazyLock<KeyRing> = LazyLock::new(seeds::key_ring);

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(seeds::NOW);
    if let Ok(claims) = KEYS.open(text, now) {
        assert_eq!(
            claims,
            seeds::claims(),
            "a token opened to claims nobody sealed"
        );
    }
});
