//! Who the application server is (RFC 8292, VAPID): its `Authorization: vapid t=JWT, k=KEY`
//! header, checked, and the key an endpoint may be bound to.
//!
//! A client that knows its app's server key (UnifiedPush's `vapid`) registers with it, and the
//! endpoint is then bound to it: only a push signed with that key's private half is taken
//! (RFC 8292 §4). Any push may carry the header; a valid one makes the key the sender's identity,
//! which gets its own rate limit instead of its address's, and which an operator can block. A
//! header that does not verify is refused whatever the endpoint, since its sender claims to be
//! someone it cannot prove to be. Verifying costs one ECDSA P-256 check, so a bad signature is
//! counted against its address like a forged token (`push/`).
//!
//! What is checked: the scheme and its two parameters; `k`, a P-256 public key (base64url of its
//! 65-byte uncompressed point, 87 characters); `t`, a JWT signed ES256 with it, whose `aud` is the
//! origin of `http.public_url`, and whose `exp` is in the future and at most 24 hours ahead
//! (RFC 8292 §2), each with a minute of clock skew. `sub`, the sender's contact, is kept for the
//! client's own diagnostics, never checked.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use sha2::{Digest, Sha256};
use web_push_native::jwt_simple::{
    self, JWTError,
    algorithms::{ECDSAP256PublicKeyLike, ES256PublicKey},
    prelude::{HashSet, NoCustomClaims, VerificationOptions},
};

/// The digest an endpoint is bound by: SHA-256 of the key's uncompressed point. Shorter than the
/// key in a token, and it names the key as surely.
pub type KeyDigest = [u8; 32];

/// RFC 8292 §2: "MUST NOT be more than 24 hours from the time of the request".
const LONGEST_EXPIRY: Duration = Duration::from_secs(24 * 3600);
/// The clocks of xup and of an application server may disagree by this much.
const SKEW: Duration = Duration::from_secs(60);
/// A JWT longer than this is no VAPID token (they are about 250 bytes); refused before any work.
const MAX_JWT_LEN: usize = 2048;
/// The length of a P-256 key in base64url: 65 bytes.
pub const KEY_B64_LEN: usize = 87;

/// Why an `Authorization` header is not a valid VAPID identity; each is a `401` whose reason
/// says which.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum VapidError {
    #[error(
        "this endpoint is bound to its application server's key: sign the push with it \
         (Authorization: vapid t=JWT, k=KEY; RFC 8292)"
    )]
    Missing,
    #[error("Authorization must be \"vapid t=JWT, k=KEY\" (RFC 8292 §3)")]
    Malformed,
    #[error("k must be a P-256 public key, base64url of its 65-byte uncompressed point")]
    BadKey,
    #[error("the JWT's signature does not verify with k (RFC 8292 §2: ES256)")]
    BadSignature,
    #[error("the JWT's aud must be the origin of the endpoint's URL (scheme, host and port)")]
    WrongAudience,
    #[error("the JWT has expired, or says no exp")]
    Expired,
    #[error("the JWT's exp must be at most 24 hours ahead (RFC 8292 §2)")]
    TooFarAhead,
}

/// A sender that proved it holds the private half of its key.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    pub key: KeyDigest,
    /// The JWT's `sub` (a `mailto:` or `https:` contact), when it says one.
    pub contact: Option<String>,
}

/// The digest of a key given as base64url, if it is a P-256 public key: for a client's
/// registration, for the block list, and for `k`.
pub fn key_digest(key: &str) -> Option<KeyDigest> {
    let bytes = parse_key(key)?.1;
    Some(Sha256::digest(bytes).into())
}

fn parse_key(key: &str) -> Option<(ES256PublicKey, Vec<u8>)> {
    if key.len() != KEY_B64_LEN {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(key).ok()?;
    let public = ES256PublicKey::from_bytes(&bytes).ok()?;
    // Only the uncompressed point, as RFC 8292 §3.2 and every sender give it.
    (bytes.first() == Some(&4)).then_some((public, bytes))
}

/// Checks the VAPID header of pushes to this provider.
pub struct Vapid {
    /// The origin of `http.public_url`, as `aud` must say it.
    audience: String,
}

impl Vapid {
    /// `audience`: the origin (scheme, host and port) endpoints are served at.
    pub fn new(audience: String) -> Vapid {
        Vapid { audience }
    }

    /// The identity `header` (an `Authorization` value) proves at `now`.
    pub fn verify(&self, header: &str, now: SystemTime) -> Result<Identity, VapidError> {
        let (jwt, key) = parse_header(header).ok_or(VapidError::Malformed)?;
        if jwt.len() > MAX_JWT_LEN {
            return Err(VapidError::Malformed);
        }
        let (public, bytes) = parse_key(key).ok_or(VapidError::BadKey)?;
        let options = VerificationOptions {
            allowed_audiences: Some(HashSet::from([self.audience.clone()])),
            time_tolerance: Some(SKEW.into()),
            max_token_length: Some(MAX_JWT_LEN),
            artificial_time: Some(unix(now).into()),
            ..Default::default()
        };
        let claims = public
            .verify_token::<NoCustomClaims>(jwt, Some(options))
            .map_err(|e| reason(&e))?;
        let expires = claims.expires_at.ok_or(VapidError::Expired)?;
        if Duration::from(expires) > unix(now) + LONGEST_EXPIRY + SKEW {
            return Err(VapidError::TooFarAhead);
        }
        Ok(Identity {
            key: Sha256::digest(bytes).into(),
            contact: claims.subject,
        })
    }
}

/// What jwt-simple's refusal means to the sender.
fn reason(e: &jwt_simple::Error) -> VapidError {
    match e.downcast_ref::<JWTError>() {
        Some(JWTError::TokenHasExpired) => VapidError::Expired,
        Some(
            JWTError::RequiredAudienceMissing
            | JWTError::RequiredAudienceMismatch
            | JWTError::TooManyAudiences,
        ) => VapidError::WrongAudience,
        Some(JWTError::InvalidSignature) => VapidError::BadSignature,
        _ => VapidError::Malformed,
    }
}

/// Whether an `Authorization` header is meant as VAPID (any other scheme, such as the `WebPush`
/// of RFC 8292's drafts, is no identity at all).
pub fn is_vapid(header: &str) -> bool {
    header
        .trim_start()
        .get(..6)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("vapid "))
}

/// `vapid t=JWT, k=KEY` (RFC 8292 §3): the scheme, case-insensitive, then both parameters in
/// either order, separated by a comma and optional spaces.
fn parse_header(header: &str) -> Option<(&str, &str)> {
    let (scheme, params) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("vapid") {
        return None;
    }
    let (mut jwt, mut key) = (None, None);
    for param in params.split(',') {
        let (name, value) = param.trim().split_once('=')?;
        let slot = match name.trim() {
            "t" => &mut jwt,
            "k" => &mut key,
            _ => return None,
        };
        if slot.replace(value.trim()).is_some() {
            return None;
        }
    }
    Some((jwt?, key?))
}

fn unix(t: SystemTime) -> Duration {
    t.duration_since(UNIX_EPOCH).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use web_push_native::jwt_simple::{
        algorithms::{ECDSAP256KeyPairLike, ES256KeyPair},
        claims::Claims,
        prelude::Duration as JwtDuration,
    };

    const ORIGIN: &str = "https://up.example.org";

    fn header(pair: &ES256KeyPair, audience: &str, valid: u64) -> String {
        let claims = Claims::create(JwtDuration::from_secs(valid))
            .with_audience(audience)
            .with_subject("mailto:ops@example.net");
        let jwt = pair.sign(claims).expect("signed");
        let key = URL_SAFE_NO_PAD.encode(pair.public_key().public_key().to_bytes_uncompressed());
        format!("vapid t={jwt}, k={key}")
    }

    #[test]
    fn a_good_header_names_its_key_and_contact() {
        let pair = ES256KeyPair::generate();
        let identity = Vapid::new(ORIGIN.into())
            .verify(&header(&pair, ORIGIN, 3600), SystemTime::now())
            .expect("verified");
        let key = URL_SAFE_NO_PAD.encode(pair.public_key().public_key().to_bytes_uncompressed());
        assert_eq!(Some(identity.key), key_digest(&key));
        assert_eq!(identity.contact.as_deref(), Some("mailto:ops@example.net"));
    }

    #[test]
    fn each_flaw_has_its_reason() {
        let vapid = Vapid::new(ORIGIN.into());
        let now = SystemTime::now();
        let (pair, other) = (ES256KeyPair::generate(), ES256KeyPair::generate());
        let good = header(&pair, ORIGIN, 3600);
        let swapped_key = format!(
            "{}k={}",
            good.split("k=").next().expect("t"),
            header(&other, ORIGIN, 60).split("k=").nth(1).expect("k")
        );
        for (header, error) in [
            (String::new(), VapidError::Malformed),
            (good.replacen("vapid", "WebPush", 1), VapidError::Malformed),
            (format!("{good}, t=again"), VapidError::Malformed),
            (good.replace("k=", "k=x"), VapidError::BadKey),
            (swapped_key, VapidError::BadSignature),
            (
                header(&pair, "https://elsewhere.example", 3600),
                VapidError::WrongAudience,
            ),
            (header(&pair, ORIGIN, 2 * 86400), VapidError::TooFarAhead),
        ] {
            assert_eq!(vapid.verify(&header, now), Err(error), "{header:.60}");
        }
        let later = now + Duration::from_secs(3600) + 2 * SKEW;
        assert_eq!(vapid.verify(&good, later), Err(VapidError::Expired));
        assert!(
            vapid
                .verify(&good.to_uppercase().replacen("VAPID", "vapid", 1), now)
                .is_err()
        );
        assert!(
            vapid
                .verify(&good.replacen("vapid", "Vapid", 1), now)
                .is_ok()
        );
    }
}
