//! An application server's VAPID key (RFC 8292), for the runs whose pushes are signed.

use anyhow::Context;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use web_push_native::jwt_simple::{
    algorithms::{ECDSAP256KeyPairLike, ECDSAP256PublicKeyLike, ES256KeyPair},
    claims::Claims,
    prelude::Duration,
};

/// More distinct headers than xup remembers as verified (4 096): cycled through, every push is a
/// verification.
pub const MORE_THAN_REMEMBERED: usize = 5000;

pub struct Signer(ES256KeyPair);

impl Signer {
    pub fn new() -> Signer {
        Signer(ES256KeyPair::generate())
    }

    /// `Authorization` for pushes to `origin`, valid for an hour. Each call signs anew, so two
    /// headers differ (a JWT's signature is randomised), as two of a sender that signs every push.
    pub fn header(&self, origin: &str) -> anyhow::Result<String> {
        let claims = Claims::create(Duration::from_hours(1))
            .with_audience(origin)
            .with_subject("mailto:bench@localhost");
        let jwt = self.0.sign(claims).context("signing")?;
        let key = URL_SAFE_NO_PAD.encode(self.0.public_key().public_key().to_bytes_uncompressed());
        Ok(format!("vapid t={jwt}, k={key}"))
    }
}
