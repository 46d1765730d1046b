//! What the fuzz targets share: the keys, the one registration ever sealed with them, and the
//! moment the targets pretend it is. `cargo +nightly run --example seeds` (see README.md) writes the
//! seed corpus from these.

use std::time::{Duration, SystemTime};

use xup::token::{Claims, KeyRing, claims_for};

pub const COMPONENT: &str = "up.localhost";
pub const SECRETS: [&str; 2] = [
    "a fuzzing secret, never a real one",
    "an older fuzzing secret",
];
pub const SUBJECT: &str = "juliet@localhost/phone";
pub const APP: &str = "bK3sdmrbtj3bf6XA2S12b8jJUA5TT1dhPEyeoZfVSRM=";
pub const INSTANCE: &str = "EtD/1XPLmoIph7W73CZ/uyv6FAnhEAXY1GySHX17vAw=";
/// Seeds are issued at this moment, with a lifetime of ten years.
pub const ISSUED: u64 = 1_700_000_000;
/// And opened at this one.
pub const NOW: u64 = 1_800_000_000;

pub fn key_ring() -> KeyRing {
    let secrets: Vec<String> = SECRETS.iter().map(|s| s.to_string()).collect();
    KeyRing::new(&secrets, COMPONENT).expect("keys")
}

pub fn claims() -> Claims {
    claims_for(
        SUBJECT,
        APP,
        INSTANCE,
        SystemTime::UNIX_EPOCH + Duration::from_secs(ISSUED),
        Duration::from_secs(10 * 365 * 86400),
    )
}
