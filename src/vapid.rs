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
//! client's own diagnostics, never checked. A header that verified is remembered until its JWT
//! expires (a bounded map), so a sender that reuses its JWT costs one verification, not one a push.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use web_push_native::jwt_simple::algorithms::ES256PublicKey;

/// The digest an endpoint is bound by: SHA-256 of the key's uncompressed point. Shorter than the
/// key in a token, and it names the key as surely.
pub type KeyDigest = [u8; 32];

/// RFC 8292 §2: "MUST NOT be more than 24 hours from the time of the request".
const LONGEST_EXPIRY: Duration = Duration::from_secs(24 * 3600);
/// The clocks of xup and of an application server may disagree by this much.
const SKEW: Duration = Duration::from_secs(60);
/// A JWT longer than this is no VAPID token (they are about 250 bytes); refused before any work.
const MAX_JWT_LEN: usize = 2048;
/// The longest contact (`sub`) kept: a `mailto:` or `https:` URI is far shorter.
const MAX_CONTACT: usize = 128;
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
/// registration and for the block list, where a key that is no point on the curve is refused at
/// once rather than at the first push.
pub fn key_digest(key: &str) -> Option<KeyDigest> {
    let bytes = point(key)?;
    ES256PublicKey::from_bytes(&bytes).ok()?;
    Some(Sha256::digest(bytes).into())
}

/// The bytes of a key given as base64url, if they can be an uncompressed P-256 point (as RFC 8292
/// §3.2 and every sender give it); whether it is on the curve, the verification finds out.
fn point(key: &str) -> Option<Vec<u8>> {
    if key.len() != KEY_B64_LEN {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(key).ok()?;
    (bytes.len() == 65 && bytes[0] == 4).then_some(bytes)
}

/// The claims xup reads from the JWT; `aud` is checked by the validation.
#[derive(Deserialize)]
struct VapidClaims {
    exp: u64,
    sub: Option<String>,
}

/// Checks the VAPID header of pushes to this provider.
pub struct Vapid {
    /// The origin of `http.public_url`, as `aud` must say it.
    audience: String,
    /// Headers that verified lately, by their SHA-256, with what they proved and when their JWT
    /// expires: a sender that keeps its JWT (RFC 8292 lets it, for up to a day) pays for one
    /// verification, not one a push. Emptied when full.
    verified: Mutex<HashMap<[u8; 32], (Identity, Duration)>>,
}

/// How many verified headers [`Vapid`] remembers: a few hundred bytes each.
const VERIFIED_REMEMBERED: usize = 4096;

impl Vapid {
    /// `audience`: the origin (scheme, host and port) endpoints are served at.
    pub fn new(audience: String) -> Vapid {
        Vapid {
            audience,
            verified: Mutex::default(),
        }
    }

    /// The identity `header` (an `Authorization` value) proves at `now`.
    pub fn verify(&self, header: &str, now: SystemTime) -> Result<Identity, VapidError> {
        let digest: [u8; 32] = Sha256::digest(header.as_bytes()).into();
        let remembered = self.remembered().get(&digest).cloned();
        if let Some((identity, expires)) = remembered {
            check_expiry(expires, now)?;
            return Ok(identity);
        }
        let (identity, expires) = self.verify_signature(header, now)?;
        let mut verified = self.remembered();
        if verified.len() >= VERIFIED_REMEMBERED {
            verified.clear();
        }
        verified.insert(digest, (identity.clone(), expires));
        Ok(identity)
    }

    fn remembered(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], (Identity, Duration)>> {
        self.verified.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// [`Vapid::verify`] without memory: the header's identity, and when its JWT expires.
    fn verify_signature(
        &self,
        header: &str,
        now: SystemTime,
    ) -> Result<(Identity, Duration), VapidError> {
        let (jwt, key) = parse_header(header).ok_or(VapidError::Malformed)?;
        if jwt.len() > MAX_JWT_LEN {
            return Err(VapidError::Malformed);
        }
        let bytes = point(key).ok_or(VapidError::BadKey)?;
        // ring, which verifies, takes the uncompressed point as it is, whatever the name says.
        let public = DecodingKey::from_ec_der(&bytes);
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["aud", "exp"]);
        // `exp` is checked below, against `now` and both of RFC 8292's bounds.
        validation.validate_exp = false;
        let claims = jsonwebtoken::decode::<VapidClaims>(jwt, &public, &validation)
            .map_err(|e| reason(e.kind()))?
            .claims;
        let expires = Duration::from_secs(claims.exp);
        check_expiry(expires, now)?;
        if expires > unix(now) + LONGEST_EXPIRY + SKEW {
            return Err(VapidError::TooFarAhead);
        }
        let identity = Identity {
            key: Sha256::digest(bytes).into(),
            // A contact is for reading; a longer one is cut rather than kept whole.
            contact: claims
                .sub
                .map(|sub| sub.chars().take(MAX_CONTACT).collect()),
        };
        Ok((identity, expires))
    }
}

/// A JWT that expires at `expires` (since the epoch) is still good at `now`.
fn check_expiry(expires: Duration, now: SystemTime) -> Result<(), VapidError> {
    match expires + SKEW <= unix(now) {
        true => Err(VapidError::Expired),
        false => Ok(()),
    }
}

/// What the JWT library's refusal means to the sender.
fn reason(e: &ErrorKind) -> VapidError {
    match e {
        ErrorKind::InvalidAudience => VapidError::WrongAudience,
        ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => VapidError::WrongAudience,
        ErrorKind::MissingRequiredClaim(_) => VapidError::Expired,
        ErrorKind::InvalidSignature => VapidError::BadSignature,
        ErrorKind::InvalidEcdsaKey => VapidError::BadKey,
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
        algorithms::{ECDSAP256KeyPairLike, ECDSAP256PublicKeyLike, ES256KeyPair},
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
    fn a_remembered_header_still_expires() {
        let vapid = Vapid::new(ORIGIN.into());
        let now = SystemTime::now();
        let good = header(&ES256KeyPair::generate(), ORIGIN, 3600);
        assert!(vapid.verify(&good, now).is_ok());
        assert!(vapid.verify(&good, now).is_ok(), "remembered");
        let later = now + Duration::from_secs(3600) + 2 * SKEW;
        assert_eq!(vapid.verify(&good, later), Err(VapidError::Expired));
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
